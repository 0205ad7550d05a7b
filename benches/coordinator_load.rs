//! Coordinator load program (loopback only; bounded in count and time).
//!
//! `cargo bench --bench coordinator_load -- [--endpoints N] [--report-rate R] [--seconds S]
//! [--storm M] [--skip-ws] [--full-rounds K] [--wal-minutes W]` (`PACPOOL_BENCH_COORDINATOR=PATH`
//! runs another coordinator binary, e.g. a copy of an earlier build, for before/after
//! comparisons; the settings this version added are then left out of its configuration)
//!
//! `--rollout N` runs only the rollout mode: N endpoints in a pool with three rings and a
//! rollout under way; it prints how long one rollout step of the pool takes and how fast every
//! endpoint fetches its offer (what the daemons do after `rollout_changed`).
//!
//! `--wal-minutes W` runs only the sustained-write mode: the 200 endpoints send new full
//! 1,500-package states at concurrency 50 for W minutes, and every 5 s the program prints the
//! reports accepted in those 5 s and the sizes of the database and its WAL file; at the end,
//! the largest WAL seen and the slowest and fastest 5 s.
//!
//! Starts the real `pacpool-coordinator` binary on 127.0.0.1 with a fresh SQLite database and
//! measures, in one run:
//! 1. 200 endpoints each submitting a full 1,500-package state over REST, at concurrency 1,
//!    10 and 50: throughput, p50/p95/p99 latency, errors; printed next to the figures
//!    recorded in BENCHMARKS.md;
//! 2. one-package delta reports over REST at concurrency 50;
//! 3. N endpoints (default 10,000) on real WebSockets: each reports a full state once
//!    (seeding), then one-package deltas at a steady R reports/s in total (default 1,000)
//!    for S seconds (default 10): throughput, latency percentiles, errors, coordinator RSS;
//! 4. a target change fanned out to all N sockets: time until the last one has it;
//! 5. a reconnect storm: M sockets (default 1,000) connected, the coordinator restarted
//!    (SIGTERM, then started again on the same port and database): every client reconnects
//!    with the daemon's own backoff function (`pacpool::daemon::link::backoff`: exponential,
//!    full jitter), and the program prints a histogram of reconnect times.
//!
//! The load client shares the machine with the coordinator, so every phase also prints the
//! CPU time both processes used, to tell whether the client is the bottleneck. Request
//! bodies are serialized before the clock starts.
//!
//! Baseline for comparison (measured on this kind of machine, recorded in BENCHMARKS.md): the
//! Python server this design came from ingests about 25 full states per second, p99
//! 1.2–1.4 s at concurrency 10, and 4% errors ("database is locked") at concurrency 50.

#[path = "support/api.rs"]
mod api;
#[path = "support/coordinator.rs"]
mod coordinator_proc;
#[path = "support/measure.rs"]
mod measure;
#[path = "support/states.rs"]
mod states;
use coordinator_proc::CoordinatorProc;
use measure::{CpuMark, Stats, arg, ingest, pct, raise_nofile, rss_mib, wait_ready};
use states::package;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use pacpool::localdb::Reason;
use pacpool::proto::{
    EndpointMsg, RegisterResponse, ReportAck, ServerMsg, SetTargetRequest, StateReport,
};
use pacpool::snapshot::{Delta, Snapshot, SnapshotHash};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

// Simulated endpoints over the real protocol, shared with the tests.
#[path = "../tests/support/sim.rs"]
mod sim;
use sim::{Ws, connect};

const STATE_PACKAGES: usize = 1500;
const INGEST_ENDPOINTS: usize = 200;
const ADMIN: &str = "load-admin-token-abcdef0123456789";
/// Full reports in flight at once while seeding the WebSocket endpoints.
const SEED_WINDOW: usize = 50;
/// Figures recorded in BENCHMARKS.md on 2026-11-21 (before group commit), printed next to
/// this run's: (label, reports/s, p99 ms).
const RECORDED: &[(&str, f64, f64)] = &[
    ("full 1,500-pkg states, c=1", 242.0, 8.8),
    ("full 1,500-pkg states, c=10", 678.0, 28.1),
    ("full 1,500-pkg states, c=50", 576.0, 142.9),
    ("one-package deltas, c=50", 2688.0, 43.8),
];

/// Endpoint `seed`'s full state in round `round` (see `states::distinct_state`).
fn state(seed: usize, round: usize) -> Snapshot {
    states::distinct_state(seed, round, STATE_PACKAGES)
}

/// The common state every WebSocket endpoint starts from, as canonical text lines, so that
/// a one-package change is hashed without building a `Snapshot` (checked against
/// `Snapshot::hash` once).
struct Base {
    snap: Snapshot,
    header: String,
    lines: Vec<String>,
}

impl Base {
    fn new() -> Self {
        let snap = Snapshot::new(
            (0..STATE_PACKAGES)
                .map(|i| package(i, format!("1.{i}-1")))
                .collect(),
        )
        .unwrap();
        let text = snap.encode();
        let mut it = text.split_inclusive('\n');
        let header = it.next().unwrap().to_owned();
        let lines: Vec<String> = it.map(str::to_owned).collect();
        assert_eq!(lines.len(), STATE_PACKAGES);
        Self {
            snap,
            header,
            lines,
        }
    }

    /// The hash of the base with package `i` at `version`.
    fn hash_with(&self, i: usize, version: &str) -> SnapshotHash {
        let p = package(i, version);
        let mut text = String::with_capacity(STATE_PACKAGES * 48);
        text.push_str(&self.header);
        for (j, l) in self.lines.iter().enumerate() {
            if j == i {
                text.push_str(&format!(
                    "{} {} {} {} {}\n",
                    p.name.as_str(),
                    p.version.as_str(),
                    p.arch.as_str(),
                    if p.reason == Reason::Explicit {
                        "e"
                    } else {
                        "d"
                    },
                    p.repo.as_ref().unwrap().as_str()
                ));
            } else {
                text.push_str(l);
            }
        }
        SnapshotHash::of_text(&text)
    }
}

/// `--wal-minutes`: sustained full reports at concurrency 50; prints throughput and the
/// database and WAL sizes every 5 s.
async fn wal_run(
    client: &reqwest::Client,
    url: &str,
    endpoints: &[RegisterResponse],
    db: &std::path::Path,
    minutes: f64,
    server: u32,
) {
    const WINDOW: Duration = Duration::from_secs(5);
    // Each body is a template with one package's version left open, so a new state costs
    // the client one string concatenation.
    let templates: Arc<Vec<(String, String, String)>> = Arc::new(
        endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let json = serde_json::to_string(&StateReport::Full {
                    snapshot: state(i, 0),
                })
                .unwrap();
                let needle = format!("9.{i}.0-1");
                let at = json.find(&needle).unwrap();
                (
                    ep.endpoint_token.clone(),
                    json[..at].to_owned(),
                    json[at + needle.len()..].to_owned(),
                )
            })
            .collect(),
    );
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / 1048576.0;
    let wal = {
        let mut p = db.as_os_str().to_owned();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    let accepted = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url, templates) = (client.clone(), url.to_owned(), templates.clone());
        let (accepted, errors, next) = (accepted.clone(), errors.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let i = n % templates.len();
                let (token, pre, post) = &templates[i];
                let body = format!("{pre}9.{i}.{}-1{post}", n / templates.len() + 1);
                let ok = match client
                    .post(&url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                let counter = if ok { &accepted } else { &errors };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    println!(
        "sustained full 1,500-package reports, 200 endpoints, c=50, {minutes} min; every 5 s: reports, database MiB, WAL MiB"
    );
    let (mut max_wal, mut max_db, mut windows) = (0.0f64, 0.0f64, Vec::new());
    let mut last = 0;
    let cpu = CpuMark::now(server);
    while Instant::now() < end {
        tokio::time::sleep(WINDOW).await;
        let now = accepted.load(Ordering::Relaxed);
        let (d, w) = (size(db), size(&wal));
        max_wal = max_wal.max(w);
        max_db = max_db.max(d);
        windows.push(now - last);
        println!(
            "  {:>5.0} s  {:>5} reports  db {:>7.1} MiB  wal {:>7.1} MiB",
            start.elapsed().as_secs_f64(),
            now - last,
            d,
            w
        );
        last = now;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let full = windows;
    let (lo, hi) = (
        full.iter().min().copied().unwrap_or(0),
        full.iter().max().copied().unwrap_or(0),
    );
    let third = full.len() / 3;
    let first: usize = full[..third].iter().sum::<usize>() / third.max(1);
    let lastw: usize = full[full.len() - third..].iter().sum::<usize>() / third.max(1);
    println!(
        "summary: {} reports accepted, {} errors in {:.0} s; largest WAL {max_wal:.1} MiB, largest database {max_db:.1} MiB; per 5 s: min {lo}, max {hi}, first third mean {first}, last third mean {lastw}",
        accepted.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    println!("  {}", cpu.since(server));
}

/// What an endpoint task tells the main task.
enum Note {
    /// A report was answered: latency, accepted.
    Ack(Duration, bool),
    TargetChanged(Instant),
    /// The socket ended: when.
    Closed,
}

/// One connected endpoint: sends the messages it is given, reports every answer.
async fn endpoint_task(
    mut ws: Ws,
    mut cmds: mpsc::UnboundedReceiver<Message>,
    notes: mpsc::UnboundedSender<Note>,
) -> Option<Ws> {
    let mut sent: VecDeque<Instant> = VecDeque::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(m) => {
                    sent.push_back(Instant::now());
                    if ws.send(m).await.is_err() {
                        let _ = notes.send(Note::Closed);
                        return None;
                    }
                }
                // Done with this phase: hand the socket back.
                None => return Some(ws),
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMsg>(&t) {
                    Ok(ServerMsg::ReportAck { ack }) => {
                        let at = sent.pop_front().unwrap_or_else(Instant::now);
                        let _ = notes.send(Note::Ack(
                            at.elapsed(),
                            matches!(ack, ReportAck::Accepted { .. }),
                        ));
                    }
                    Ok(ServerMsg::Error { .. }) => {
                        let at = sent.pop_front().unwrap_or_else(Instant::now);
                        let _ = notes.send(Note::Ack(at.elapsed(), false));
                    }
                    Ok(ServerMsg::TargetChanged { .. }) => {
                        let _ = notes.send(Note::TargetChanged(Instant::now()));
                    }
                    _ => {}
                },
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = notes.send(Note::Closed);
                    return None;
                }
            },
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fanout: usize = arg(&args, "--endpoints", 10_000);
    let report_rate: f64 = arg(&args, "--report-rate", 1000.0);
    let seconds: f64 = arg(&args, "--seconds", 10.0);
    let storm: usize = arg(&args, "--storm", 1000).min(fanout);
    let skip_ws = args.iter().any(|a| a == "--skip-ws");
    let full_rounds: usize = arg(&args, "--full-rounds", 1).clamp(1, 30);
    let wal_minutes: f64 = arg(&args, "--wal-minutes", 0.0f64).clamp(0.0, 60.0);
    let rollout_endpoints: usize = arg(&args, "--rollout", 0usize).min(20_000);
    let nofile = raise_nofile();

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
            "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\nadmin_token_file = \"{}\"\n{}",
            dir.path().join("coordinator.db").display(),
            token_file.display(),
            // All clients are on 127.0.0.1, and the load is the point: no per-address
            // connection cap, no storage budget. An earlier binary does not know these keys.
            if std::env::var_os("PACPOOL_BENCH_COORDINATOR").is_some() {
                ""
            } else {
                "max_connections_per_ip = 1000000\nmax_connections = 1000000\nstorage_per_endpoint_mib_per_hour = 0\n\
                 test_clock = true\nrollout_step_ms = 3600000\n"
            }
        ),
    )
    .unwrap();
    let mut server = CoordinatorProc::start(&config);
    let base = format!("http://127.0.0.1:{}/api/v1", server.port);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    wait_ready(&client, &base).await;
    let (pool_id, join) = api::pool_with_join_token(&client, &base, ADMIN, "load").await;

    let register = |n: usize, prefix: &'static str| {
        let (client, base, join) = (client.clone(), base.clone(), join.clone());
        async move {
            let mut out = Vec::with_capacity(n);
            let mut i = 0;
            while out.len() < n {
                let mut batch = Vec::new();
                for _ in 0..50.min(n - out.len()) {
                    let (client, base, join) = (client.clone(), base.clone(), join.clone());
                    i += 1;
                    let name = format!("{prefix}{i}");
                    batch.push(tokio::spawn(async move {
                        api::register(&client, &base, &join, &name).await
                    }));
                }
                for b in batch {
                    out.push(b.await.unwrap());
                }
            }
            out
        }
    };

    println!(
        "pacpool coordinator load (loopback, coordinator in its own process, 2 cores shared with this client; open files limit {nofile})"
    );

    if rollout_endpoints > 0 {
        let endpoints = register(rollout_endpoints, "host-").await;
        rollout_run(&client, &base, pool_id, &endpoints).await;
        return;
    }

    // 1. Full-state ingest over REST.
    let endpoints = register(INGEST_ENDPOINTS, "ep").await;
    let report_url = format!("{base}/endpoint/report");
    if wal_minutes > 0.0 {
        let db = dir.path().join("coordinator.db");
        wal_run(
            &client,
            &report_url,
            &endpoints,
            &db,
            wal_minutes,
            server.pid(),
        )
        .await;
        return;
    }
    let mut last_states = Vec::new();
    for (round, concurrency) in [1usize, 10, 50].into_iter().enumerate() {
        // `--full-rounds K`: each endpoint reports K new full states in a row (a longer
        // sample than the default single round, for before/after comparisons).
        let mut all = Stats {
            latencies: Vec::new(),
            errors: 0,
            wall: Duration::ZERO,
        };
        let cpu = CpuMark::now(server.pid());
        for k in 0..full_rounds {
            let mut jobs = Vec::new();
            last_states.clear();
            for (i, ep) in endpoints.iter().enumerate() {
                let s = state(i, 3 * k + round);
                jobs.push((
                    ep.endpoint_token.clone(),
                    serde_json::to_vec(&StateReport::Full {
                        snapshot: s.clone(),
                    })
                    .unwrap()
                    .into(),
                ));
                last_states.push(s);
            }
            let stats = ingest(&client, &report_url, jobs, concurrency).await;
            all.absorb(stats);
        }
        let label = format!("full 1,500-pkg states, c={concurrency}");
        print_with_recorded(&all, &label);
        println!("      {}", cpu.since(server.pid()));
    }
    let full_body = serde_json::to_vec(&StateReport::Full {
        snapshot: last_states[0].clone(),
    })
    .unwrap()
    .len();

    // 2. One-package deltas over REST at concurrency 50: several rounds per endpoint, each
    //    against the state the coordinator acknowledged last.
    let rounds = 25;
    let mut jobs: Vec<(String, Bytes)> = Vec::new();
    for r in 0..rounds {
        for (i, ep) in endpoints.iter().enumerate() {
            let next = state(i, 100 + r);
            let delta = last_states[i].diff(&next);
            jobs.push((
                ep.endpoint_token.clone(),
                serde_json::to_vec(&StateReport::Delta { delta })
                    .unwrap()
                    .into(),
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
    let cpu = CpuMark::now(server.pid());
    for chunk in jobs.chunks(INGEST_ENDPOINTS) {
        let s = ingest(&client, &report_url, chunk.to_vec(), 50).await;
        all.absorb(s);
    }
    print_with_recorded(&all, "one-package deltas, c=50");
    println!("      {}", cpu.since(server.pid()));
    println!("  full report body {full_body} bytes; one-package delta body {delta_bytes} bytes");
    if skip_ws {
        return;
    }

    // 3. N endpoints on WebSockets: seeding, then steady delta reports.
    let t = Instant::now();
    let fan_eps = register(fanout, "ws").await;
    let registered = t.elapsed();
    let ws_url = format!("ws://127.0.0.1:{port}/api/v1/endpoints/ws");
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<Note>();
    let mut cmds = Vec::with_capacity(fanout);
    let mut tasks = Vec::with_capacity(fanout);
    let t = Instant::now();
    for chunk in fan_eps.chunks(100) {
        let mut batch = Vec::new();
        for ep in chunk {
            let (url, token) = (ws_url.clone(), ep.endpoint_token.clone());
            batch.push(tokio::spawn(
                async move { connect(&url, &token, None).await },
            ));
        }
        for b in batch {
            let ws = b.await.unwrap().expect("connect a WebSocket endpoint");
            let (tx, rx) = mpsc::unbounded_channel();
            cmds.push(tx);
            tasks.push(tokio::spawn(endpoint_task(ws, rx, notes_tx.clone())));
        }
    }
    let connected = t.elapsed();
    let rss_connected = rss_mib(server.pid());
    println!(
        "  {fanout} WebSocket endpoints: registered in {:.1} s, connected in {:.1} s; coordinator RSS {rss_connected:.0} MiB",
        registered.as_secs_f64(),
        connected.as_secs_f64()
    );

    // Seeding: every endpoint reports the same full state once (the message is built once).
    let common = Base::new();
    let s0 = common.snap.hash();
    assert_eq!(
        common.hash_with(0, "1.0-1"),
        s0,
        "the bench's text form matches Snapshot::encode"
    );
    // Over REST, as pacpoold sends full states (a WebSocket that carried one keeps a buffer
    // that large for its lifetime); the body is built once and shared.
    let full_body: Bytes = serde_json::to_vec(&StateReport::Full {
        snapshot: common.snap.clone(),
    })
    .unwrap()
    .into();
    let jobs: Vec<(String, Bytes)> = fan_eps
        .iter()
        .map(|ep| (ep.endpoint_token.clone(), full_body.clone()))
        .collect();
    let cpu = CpuMark::now(server.pid());
    let seed = ingest(&client, &report_url, jobs, SEED_WINDOW).await;
    println!(
        "  {}",
        seed.line(&format!(
            "seed: full state x{fanout} (REST, {SEED_WINDOW} in flight)"
        ))
    );
    println!(
        "      {}; coordinator RSS after: {:.0} MiB",
        cpu.since(server.pid()),
        rss_mib(server.pid())
    );

    // Steady load: `report_rate` one-package deltas per second in total, round robin over
    // the endpoints, for `seconds`. Endpoint j's k-th report changes package j % 1,500 to
    // version 9.j.k; the messages are built before the clock starts.
    let total = (report_rate * seconds).round() as usize;
    let mut msgs: Vec<Message> = Vec::with_capacity(total);
    let mut cur: Vec<(SnapshotHash, usize)> = vec![(s0, 0); fanout];
    let build = Instant::now();
    for n in 0..total {
        let j = n % fanout;
        let (prev, k) = cur[j];
        let i = j % STATE_PACKAGES;
        let version = format!("9.{j}.{}-1", k + 1);
        let target = common.hash_with(i, &version);
        let delta = Delta {
            base: prev,
            target,
            added: Vec::new(),
            removed: Vec::new(),
            changed: vec![package(i, version)],
            reason_changed: Vec::new(),
        };
        msgs.push(Message::text(
            serde_json::to_string(&EndpointMsg::Report {
                report: StateReport::Delta { delta },
                source: None,
            })
            .unwrap(),
        ));
        cur[j] = (target, k + 1);
    }
    let built = build.elapsed();
    let cpu = CpuMark::now(server.pid());
    let start = Instant::now();
    let mut steady = Stats {
        latencies: Vec::with_capacity(total),
        errors: 0,
        wall: Duration::ZERO,
    };
    let mut sent = 0;
    let mut msgs = msgs.into_iter();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let deadline = start + Duration::from_secs_f64(seconds) + Duration::from_secs(30);
    while steady.latencies.len() < total && Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick(), if sent < total => {
                let due = ((start.elapsed().as_secs_f64() * report_rate) as usize).min(total);
                while sent < due {
                    let _ = cmds[sent % fanout].send(msgs.next().unwrap());
                    sent += 1;
                }
            }
            n = notes.recv() => match n {
                Some(Note::Ack(l, ok)) => {
                    steady.latencies.push(l);
                    steady.errors += usize::from(!ok);
                }
                Some(Note::Closed) => steady.errors += 1,
                _ => {}
            },
        }
    }
    steady.wall = start.elapsed();
    let unanswered = sent - steady.latencies.len();
    steady.errors += unanswered;
    println!(
        "  {}  (asked {report_rate:.0}/s for {seconds:.0} s: {sent} sent, {unanswered} unanswered; messages built in {:.1} s before)",
        steady.line(&format!("steady deltas over {fanout} ws")),
        built.as_secs_f64()
    );
    println!("      {}", cpu.since(server.pid()));
    let rss_steady = rss_mib(server.pid());

    // 4. Fan-out: a target change to all N sockets. Endpoint 0 of the ingest set reported
    //    `last_states[0]`; make it the target.
    let target_start = Instant::now();
    let resp = client
        .post(format!("{base}/endpoint/target"))
        .bearer_auth(&endpoints[0].endpoint_token)
        .json(&SetTargetRequest {
            expected_revision: 0,
            snapshot: last_states[0].hash(),
            manifest: None,
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
    let mut got = 0;
    let fan_deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(fan_deadline);
    while got < fanout {
        tokio::select! {
            n = notes.recv() => match n {
                Some(Note::TargetChanged(at)) => { got += 1; last = last.max(at); }
                Some(_) => {}
                None => break,
            },
            _ = &mut fan_deadline => break,
        }
    }
    let fan_time = last - target_start;
    let rss_after = rss_mib(server.pid());
    println!(
        "  target change reached {got}/{fanout} endpoints; the last after {:.0} ms (goal: 10,000 within 1 s)",
        fan_time.as_secs_f64() * 1e3
    );
    println!(
        "  coordinator RSS: {rss_connected:.0} MiB with {fanout} sockets, {rss_steady:.0} MiB after the steady load, {rss_after:.0} MiB after the fan-out (goal < 300 MB)"
    );

    // 5. Reconnect storm: keep `storm` sockets, close the rest, restart the coordinator.
    drop(cmds);
    let mut kept = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let ws = t.await.unwrap();
        match ws {
            Some(ws) if i < storm => kept.push((ws, fan_eps[i].endpoint_token.clone(), cur[i].0)),
            Some(mut ws) => {
                let _ = ws.close(None).await;
            }
            None => {}
        }
    }
    drop(notes);
    storm_run(&mut server, &client, &base, &ws_url, kept).await;
}

/// `--rollout N`: N registered endpoints (not connected) in a pool with three rings (9
/// canaries `host-?`, 990 `host-??`/`host-???`, the rest), a rollout under way: how long one
/// rollout step of the pool takes (it runs every `rollout_step_ms` and after every result, in
/// the writer), and how fast the whole pool fetches its offers (what every daemon does after
/// `rollout_changed`). Needs a coordinator of this version (`test_clock`).
async fn rollout_run(
    client: &reqwest::Client,
    base: &str,
    pool_id: i64,
    endpoints: &[RegisterResponse],
) {
    let small = |v: usize| {
        Snapshot::new((0..20).map(|i| package(i, format!("{v}.{i}-1"))).collect()).unwrap()
    };
    let (s1, s2) = (small(1), small(2));
    let body = |s: &Snapshot| -> Bytes {
        serde_json::to_vec(&StateReport::Full {
            snapshot: s.clone(),
        })
        .unwrap()
        .into()
    };
    let jobs = endpoints
        .iter()
        .map(|e| (e.endpoint_token.clone(), body(&s1)))
        .collect();
    let seeded = ingest(client, &format!("{base}/endpoint/report"), jobs, 50).await;
    assert_eq!(seeded.errors, 0);
    let admin = |method: reqwest::Method, path: String, body: serde_json::Value| {
        let client = client.clone();
        async move {
            let r = client
                .request(method, path)
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{r:?}");
            r.json::<serde_json::Value>().await.unwrap_or_default()
        }
    };
    let setter = &endpoints[0];
    let set = |s: Snapshot, expected: u64| {
        let client = client.clone();
        let token = setter.endpoint_token.clone();
        let (report, target) = (
            format!("{base}/endpoint/report"),
            format!("{base}/endpoint/target"),
        );
        async move {
            let r = client
                .post(report)
                .bearer_auth(&token)
                .json(&StateReport::Full {
                    snapshot: s.clone(),
                })
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let r = client
                .post(target)
                .bearer_auth(&token)
                .json(&SetTargetRequest {
                    expected_revision: expected,
                    snapshot: s.hash(),
                    manifest: None,
                })
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{r:?}");
        }
    };
    set(s1.clone(), 0).await;
    admin(
        reqwest::Method::PATCH,
        format!("{base}/pools/{pool_id}"),
        serde_json::json!({"policy": {"auto_sync": "apply", "rollout": {"rings": [
            {"name": "canary", "endpoints": ["host-?"], "gate": {"min_success_percent": 50}},
            {"name": "early", "endpoints": ["host-??", "host-???"], "max_concurrent": 50},
            {"name": "rest"}
        ]}}}),
    )
    .await;
    set(s2, 1).await;
    let mut steps = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        admin(
            reqwest::Method::POST,
            format!("{base}/clock"),
            serde_json::json!({}),
        )
        .await;
        steps.push(t.elapsed());
    }
    steps.sort();
    let t = Instant::now();
    let rollout = admin(
        reqwest::Method::GET,
        format!("{base}/pools/{pool_id}/rollout"),
        serde_json::Value::Null,
    )
    .await;
    let show = t.elapsed();
    assert_eq!(rollout["rings_offered"], 1, "{rollout}");
    // Every endpoint asks for its offer at once (concurrency 50).
    let jobs: Vec<String> = endpoints.iter().map(|e| e.endpoint_token.clone()).collect();
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (jobs, client, url) = (
            jobs.clone(),
            client.clone(),
            format!("{base}/endpoint/offer"),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(token) = jobs.lock().unwrap().next() else {
                    return lat;
                };
                let t = Instant::now();
                let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(r.status().is_success());
                let _ = r.bytes().await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    lat.sort();
    println!(
        "rollout, {} endpoints in 3 rings: one step of the pool median {:.1} ms (min {:.1}, max {:.1}, 7 steps, including the HTTP round trip); \
         `rollouts show` {:.1} ms; every endpoint's GET /endpoint/offer at concurrency 50: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
        endpoints.len(),
        steps[3].as_secs_f64() * 1e3,
        steps[0].as_secs_f64() * 1e3,
        steps[6].as_secs_f64() * 1e3,
        show.as_secs_f64() * 1e3,
        lat.len() as f64 / wall.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
    );
}

fn print_with_recorded(stats: &Stats, label: &str) {
    println!("  {}", stats.line(label));
    if let Some((_, rate, p99)) = RECORDED.iter().find(|r| r.0 == label) {
        println!(
            "      recorded in BENCHMARKS.md (2026-11-21): {rate:.0}/s, p99 {p99:.1} ms; this run {:.2}x the rate, p99 {:.1} ms",
            stats.rate() / rate,
            stats.p99()
        );
    }
}

/// Restarts the coordinator under `kept` connected sockets; each client reconnects the way
/// pacpoold's link does (the same `backoff` function and attempt counting: reset after a
/// session that was up, then +1 per failed attempt) and the times are printed as a histogram.
async fn storm_run(
    server: &mut CoordinatorProc,
    client: &reqwest::Client,
    base: &str,
    ws_url: &str,
    kept: Vec<(Ws, String, SnapshotHash)>,
) {
    let n = kept.len();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Instant, u32)>();
    for (mut ws, token, acked) in kept {
        let (tx, url) = (tx.clone(), ws_url.to_owned());
        tokio::spawn(async move {
            // Wait for the connection to drop.
            while let Some(Ok(_)) = ws.next().await {}
            let lost = Instant::now();
            drop(ws);
            // The session was up, so the daemon starts again at attempt 0.
            let mut attempt = 0u32;
            loop {
                let wait = pacpool::daemon::link::backoff(attempt, random_u64());
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
                if let Some(ws) = connect(&url, &token, Some(acked)).await {
                    let _ = tx.send((lost, Instant::now(), attempt));
                    // Hold the connection until the program ends.
                    let _ws = ws;
                    std::future::pending::<()>().await;
                }
                if attempt > 12 {
                    return;
                }
            }
        });
    }
    drop(tx);
    let restart_at = Instant::now();
    let down = server.restart();
    wait_ready(client, base).await;
    let up_after = restart_at.elapsed();
    let mut times: Vec<(Duration, u32)> = Vec::with_capacity(n);
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    while times.len() < n {
        tokio::select! {
            r = rx.recv() => match r {
                Some((_lost, at, attempts)) => {
                    times.push((at - restart_at, attempts));
                }
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    times.sort();
    let secs: Vec<Duration> = times.iter().map(|t| t.0).collect();
    println!(
        "  reconnect storm: {n} connected endpoints, coordinator restarted (SIGTERM: down after {:.0} ms, ready again {:.0} ms after the signal)",
        down.as_secs_f64() * 1e3,
        up_after.as_secs_f64() * 1e3
    );
    println!(
        "    reconnected {}/{n}; time from the restart signal: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, last {:.0} ms; attempts: max {}",
        times.len(),
        pct(&secs, 0.5),
        pct(&secs, 0.9),
        pct(&secs, 0.99),
        secs.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        times.iter().map(|t| t.1).max().unwrap_or(0)
    );
    // Histogram in 250 ms bins.
    let bin = Duration::from_millis(250);
    let bins = secs
        .last()
        .map_or(0, |d| (d.as_millis() / bin.as_millis()) as usize + 1);
    let mut counts = vec![0usize; bins];
    for d in &secs {
        counts[(d.as_millis() / bin.as_millis()) as usize] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    println!(
        "    reconnects per 250 ms after the restart signal (the daemon's backoff: 1 s doubling to 60 s, full jitter):"
    );
    for (i, c) in counts.iter().enumerate() {
        println!(
            "    {:>6.2}-{:<6.2} s {:>5} {}",
            i as f64 * 0.25,
            (i + 1) as f64 * 0.25,
            c,
            "#".repeat((c * 50).div_ceil(peak))
        );
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}
