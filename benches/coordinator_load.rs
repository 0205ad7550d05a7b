//! Coordinator load program (loopback only; bounded in count and time).
//!
//! `cargo bench --bench coordinator_load` — or with `-- --endpoints N` for the fan-out size
//! (default 10,000). Starts the real `pacpool-coordinator` binary on 127.0.0.1 with a fresh
//! SQLite database and measures, in one run:
//! 1. 200 endpoints each submitting a full 1,500-package state, at concurrency 1, 10 and 50:
//!    throughput, p50/p95/p99 latency, errors;
//! 2. one-package delta reports at concurrency 50;
//! 3. N endpoints connected over WebSocket receiving a target change: time until the last
//!    one has it, and the coordinator's RSS.
//!
//! Baseline for comparison (measured on this kind of machine, recorded in BENCHMARKS.md): the
//! Python server this design came from ingests about 25 full states per second, p99
//! 1.2–1.4 s at concurrency 10, and 4% errors ("database is locked") at concurrency 50.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pacpool::localdb::Reason;
use pacpool::proto::{
    EndpointMsg, PROTOCOL_VERSION, RegisterResponse, ReportAck, ServerMsg, SetTargetRequest,
    StateReport,
};
use pacpool::snapshot::{PackageState, Snapshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const STATE_PACKAGES: usize = 1500;
const INGEST_ENDPOINTS: usize = 200;
const ADMIN: &str = "load-admin-token-abcdef0123456789";

fn state(seed: usize, round: usize) -> Snapshot {
    Snapshot::new(
        (0..STATE_PACKAGES)
            .map(|i| PackageState {
                name: format!("package-{i:04}").parse().unwrap(),
                // Every endpoint differs in one package, so bodies are not deduplicated away.
                version: if i == seed % STATE_PACKAGES {
                    format!("9.{seed}.{round}-1")
                } else {
                    format!("1.{i}-1")
                }
                .parse()
                .unwrap(),
                arch: "x86_64".parse().unwrap(),
                reason: if i % 4 == 0 {
                    Reason::Explicit
                } else {
                    Reason::Dependency
                },
                repo: Some("extra".parse().unwrap()),
            })
            .collect(),
    )
    .unwrap()
}

struct Stats {
    latencies: Vec<Duration>,
    errors: usize,
    wall: Duration,
}

impl Stats {
    fn line(&self, what: &str) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3
        };
        format!(
            "{what:<34} {:>8.0}/s  p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms  errors {}",
            l.len() as f64 / self.wall.as_secs_f64(),
            pct(0.50),
            pct(0.95),
            pct(0.99),
            self.errors
        )
    }
}

/// Sends `bodies[i]` to the report endpoint with `tokens[i]`, `concurrency` at a time.
async fn ingest(
    client: &reqwest::Client,
    url: &str,
    jobs: Vec<(String, Vec<u8>)>,
    concurrency: usize,
) -> Stats {
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (jobs, errors, client, url) =
            (jobs.clone(), errors.clone(), client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some((token, body)) = jobs.lock().unwrap().next() else {
                    return lat;
                };
                let t = Instant::now();
                let ok = match client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        matches!(r.json::<ReportAck>().await, Ok(ReportAck::Accepted { .. }))
                    }
                    _ => false,
                };
                lat.push(t.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Stats {
        latencies,
        errors: errors.load(Ordering::Relaxed),
        wall: start.elapsed(),
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fanout: usize = args
        .iter()
        .position(|a| a == "--endpoints")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(10_000);

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();
    // Find a free port, then let the coordinator bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\nadmin_token_file = \"{}\"\n",
            dir.path().join("coordinator.db").display(),
            token_file.display()
        ),
    )
    .unwrap();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_pacpool-coordinator"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("PACPOOL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the coordinator");
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // Ready when the health check answers.
    loop {
        if client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pool: serde_json::Value = client
        .post(format!("{base}/pools"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "load"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let join: serde_json::Value = client
        .post(format!("{base}/pools/{}/join-tokens", pool["id"]))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let join = join["token"].as_str().unwrap().to_owned();

    let register = |n: usize| {
        let (client, base, join) = (client.clone(), base.clone(), join.clone());
        async move {
            let mut out = Vec::with_capacity(n);
            let mut i = 0;
            while out.len() < n {
                let mut batch = Vec::new();
                for _ in 0..50.min(n - out.len()) {
                    let (client, base, join) = (client.clone(), base.clone(), join.clone());
                    i += 1;
                    let name = format!("ep{i}");
                    batch.push(tokio::spawn(async move {
                        client
                            .post(format!("{base}/register"))
                            .json(&serde_json::json!({"join_token": join, "name": name}))
                            .send()
                            .await
                            .unwrap()
                            .json::<RegisterResponse>()
                            .await
                            .unwrap()
                    }));
                }
                for b in batch {
                    out.push(b.await.unwrap());
                }
            }
            out
        }
    };

    // 1. Full-state ingest.
    let endpoints = register(INGEST_ENDPOINTS).await;
    let report_url = format!("{base}/endpoint/report");
    let mut lines = Vec::new();
    let mut last_states = Vec::new();
    for (round, concurrency) in [1usize, 10, 50].into_iter().enumerate() {
        let mut jobs = Vec::new();
        last_states.clear();
        for (i, ep) in endpoints.iter().enumerate() {
            let s = state(i, round);
            jobs.push((
                ep.endpoint_token.clone(),
                serde_json::to_vec(&StateReport::Full {
                    snapshot: s.clone(),
                })
                .unwrap(),
            ));
            last_states.push(s);
        }
        let stats = ingest(&client, &report_url, jobs, concurrency).await;
        lines.push(stats.line(&format!("full 1,500-pkg states, c={concurrency}")));
    }
    let full_body = serde_json::to_vec(&StateReport::Full {
        snapshot: last_states[0].clone(),
    })
    .unwrap()
    .len();

    // 2. One-package deltas at concurrency 50: several rounds per endpoint, each against the
    //    state the coordinator acknowledged last.
    let rounds = 25;
    let mut jobs = Vec::new();
    for r in 0..rounds {
        for (i, ep) in endpoints.iter().enumerate() {
            let next = state(i, 100 + r);
            let delta = last_states[i].diff(&next);
            jobs.push((
                ep.endpoint_token.clone(),
                serde_json::to_vec(&StateReport::Delta { delta }).unwrap(),
            ));
            last_states[i] = next;
        }
    }
    // Deltas of one endpoint must go in order: send round by round.
    let mut all = Stats {
        latencies: Vec::new(),
        errors: 0,
        wall: Duration::ZERO,
    };
    let delta_bytes = jobs[0].1.len();
    for chunk in jobs.chunks(INGEST_ENDPOINTS) {
        let s = ingest(&client, &report_url, chunk.to_vec(), 50).await;
        all.latencies.extend(s.latencies);
        all.errors += s.errors;
        all.wall += s.wall;
    }
    lines.push(all.line("one-package deltas, c=50"));

    // 3. Fan-out: N endpoints on WebSockets, then a target change.
    let t = Instant::now();
    let mut sockets = Vec::new();
    let fan_eps = register(fanout).await;
    let registered = t.elapsed();
    let ws_url = format!("ws://127.0.0.1:{port}/api/v1/endpoints/ws");
    for chunk in fan_eps.chunks(100) {
        let mut batch = Vec::new();
        for ep in chunk {
            let mut req = ws_url.clone().into_client_request().unwrap();
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {}", ep.endpoint_token).parse().unwrap(),
            );
            batch.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(req)
                    .await
                    .expect("connect");
                let hello = EndpointMsg::Hello {
                    protocol: PROTOCOL_VERSION,
                    agent: "load".into(),
                    acked_state: None,
                };
                ws.send(Message::text(serde_json::to_string(&hello).unwrap()))
                    .await
                    .unwrap();
                // Wait for the welcome.
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && matches!(
                            serde_json::from_str::<ServerMsg>(&t),
                            Ok(ServerMsg::Welcome { .. })
                        )
                    {
                        break;
                    }
                }
                ws
            }));
        }
        for b in batch {
            sockets.push(b.await.unwrap());
        }
    }
    let connected = t.elapsed();
    let rss_connected = rss_mib(pid);
    let received = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    for mut ws in sockets {
        let (received, done_tx) = (received.clone(), done_tx.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m
                    && matches!(
                        serde_json::from_str::<ServerMsg>(&t),
                        Ok(ServerMsg::TargetChanged { .. })
                    )
                {
                    received.fetch_add(1, Ordering::Relaxed);
                    let _ = done_tx.send(Instant::now());
                    break;
                }
            }
            // Keep the socket open until the program ends.
            std::future::pending::<()>().await;
        });
    }
    // Endpoint 0 of the ingest set reported `last_states[0]`; make it the target.
    let target_start = Instant::now();
    let resp = client
        .post(format!("{base}/endpoint/target"))
        .bearer_auth(&endpoints[0].endpoint_token)
        .json(&SetTargetRequest {
            expected_revision: 0,
            snapshot: last_states[0].hash(),
        })
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "set target: {}",
        resp.text().await.unwrap()
    );
    let mut last = target_start;
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    let mut got = 0;
    while got < fanout {
        tokio::select! {
            Some(at) = done_rx.recv() => { got += 1; last = last.max(at); }
            _ = &mut deadline => break,
        }
    }
    let fan_time = last - target_start;
    let rss_after = rss_mib(pid);

    println!(
        "pacpool coordinator load (loopback, coordinator in its own process, 2 cores shared with this client)"
    );
    for l in &lines {
        println!("  {l}");
    }
    println!("  full report body {full_body} bytes; one-package delta body {delta_bytes} bytes");
    println!(
        "  fan-out: {fanout} endpoints registered in {:.1} s, connected in {:.1} s",
        registered.as_secs_f64(),
        (connected - registered).as_secs_f64()
    );
    println!(
        "  target change reached {got}/{fanout} endpoints; the last after {:.0} ms (goal: 10,000 within 1 s)",
        fan_time.as_secs_f64() * 1e3
    );
    println!(
        "  coordinator RSS: {rss_connected:.0} MiB with {fanout} sockets, {rss_after:.0} MiB after the fan-out (goal < 300 MB)"
    );
    println!(
        "  baseline (Python pacsync, same kind of machine): ~25 full states/s, p99 1.2-1.4 s at c=10, 4% errors at c=50"
    );
    let _ = server.kill();
    let _ = server.wait();
}
