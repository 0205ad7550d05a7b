//! The coordinator on SQLite (one process) against PostgreSQL with 1 and 2 replicas, in one
//! run with the same load client (issue #15). Loopback only; bounded in count and time.
//!
//! `cargo bench --bench replicas -- [--endpoints N] [--full-rounds K] [--target-changes T]`
//!
//! For each configuration, in this order: (1) SQLite, one `pacpool-coordinator` process;
//! (2) PostgreSQL, one replica; (3) PostgreSQL, two replicas on one database (each
//! PostgreSQL configuration on a throwaway cluster of its own, `tests/support/pg.rs`):
//! 1. 200 endpoints each POST a full 1,500-package state to `/endpoint/report`, K rounds
//!    (default 3, so 600 reports), at concurrency 50: reports/s, p50/p99, errors;
//! 2. one-package deltas over REST, 25 rounds of the 200 endpoints, at concurrency 50;
//! 3. N endpoints (default 10,000) registered and connected on real WebSockets (the
//!    protocol of `tests/support/sim.rs`), then T target changes (default 3), each by
//!    `POST /endpoint/target` through replica 0: the time until the last socket has
//!    `TargetChanged`, and how many got it;
//! 4. RSS of every replica (after the ingest phases, and with the N sockets open) and the
//!    proportional set size (PSS) of all of PostgreSQL's processes.
//!
//! With two replicas, endpoint i registers, reports and connects through replica i % 2, so
//! half the sockets are on replica 1 and learn each target change (set through replica 0)
//! over PostgreSQL's LISTEN/NOTIFY.
//!
//! Every phase prints the CPU time of the client, each replica and PostgreSQL, the answers
//! that were not 2xx (from each replica's `/metrics`), and every `ERROR`/`FATAL` line
//! PostgreSQL logged meanwhile (a serialization failure is a unit of work the coordinator
//! rolled back and ran again). Rate limits and storage budgets are effectively off, and the
//! connection caps are above N. Request bodies are serialized before the clock starts. A
//! markdown table of all configurations closes the run.
//!
//! The client, PostgreSQL and the replicas share the machine's cores: on a small machine this
//! shows correctness and cross-replica latency, not throughput scale-out.

#[path = "support/api.rs"]
mod api;
#[path = "support/coordinator.rs"]
mod coordinator_proc;
#[path = "support/measure.rs"]
mod measure;
#[path = "../tests/support/pg.rs"]
mod pg;
#[path = "../tests/support/sim.rs"]
mod sim;
#[path = "support/states.rs"]
mod states;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use coordinator_proc::CoordinatorProc;
use futures_util::StreamExt;
use measure::{Stats, arg, cpu_secs, ingest_to, pct, raise_nofile, rss_mib, wait_ready};
use pacpool::proto::{RegisterResponse, ServerMsg, SetTargetRequest, StateReport};
use pacpool::snapshot::Snapshot;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const STATE_PACKAGES: usize = 1500;
const INGEST_ENDPOINTS: usize = 200;
const CONCURRENCY: usize = 50;
const DELTA_ROUNDS: usize = 25;
const ADMIN: &str = "replicas-admin-token-0123456789abcdef";
/// The longest wait for one target change to reach every socket.
const FAN_WAIT: Duration = Duration::from_secs(30);

/// Endpoint `seed`'s full state in round `round` (see `states::distinct_state`).
fn state(seed: usize, round: usize) -> Snapshot {
    states::distinct_state(seed, round, STATE_PACKAGES)
}

/// One configuration under test.
struct Setup {
    label: &'static str,
    postgres: bool,
    replicas: usize,
}

const SETUPS: [Setup; 3] = [
    Setup {
        label: "SQLite, 1 process",
        postgres: false,
        replicas: 1,
    },
    Setup {
        label: "PostgreSQL, 1 replica",
        postgres: true,
        replicas: 1,
    },
    Setup {
        label: "PostgreSQL, 2 replicas",
        postgres: true,
        replicas: 2,
    },
];

/// One target change fanned out.
struct Fan {
    /// Sockets that got it, sockets open when it was set.
    got: usize,
    open: usize,
    /// From just before the POST to the last socket's `TargetChanged`, in ms.
    last_ms: f64,
    /// The same per replica (the sockets connected to it), in ms; `None` if none got it.
    per_replica_ms: Vec<Option<f64>>,
    /// The POST's own answer, in ms.
    post_ms: f64,
}

/// What one configuration measured.
#[derive(Default)]
struct Row {
    skipped: Option<String>,
    full: Option<Stats>,
    delta: Option<Stats>,
    register_rate: f64,
    connected: usize,
    connect_secs: f64,
    fans: Vec<Fan>,
    /// Per replica: RSS after the ingest phases, RSS with the N sockets after the fan-outs.
    rss: Vec<(f64, f64)>,
    /// PostgreSQL: PSS of all its processes (MiB) with the sockets open, and their count.
    pg_pss: Option<(f64, usize)>,
    /// Per phase: non-2xx answers and PostgreSQL's logged errors, as printed.
    problems: Vec<String>,
    /// PostgreSQL serialization failures logged during the two ingest phases.
    ingest_retries: Option<usize>,
    secs: f64,
}

/// The processes of one configuration, to sample their CPU time, RSS and errors.
struct Probe {
    replicas: Vec<u32>,
    bases: Vec<String>,
    /// PostgreSQL's postmaster and its server log.
    pg: Option<(u32, PathBuf)>,
}

/// CPU seconds per process at one moment.
struct CpuSample {
    at: Instant,
    client: f64,
    replicas: Vec<f64>,
    pg: HashMap<u32, f64>,
}

/// Where a phase started: CPU, every replica's request counters, the PostgreSQL log offset.
struct Mark {
    cpu: CpuSample,
    requests: Vec<BTreeMap<(String, u16), u64>>,
    pg_log: u64,
}

impl Probe {
    fn pg_pids(&self) -> Vec<u32> {
        let Some((postmaster, _)) = self.pg else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The parent pid is the second field after the command name's ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    fn cpu(&self) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            client: cpu_secs(std::process::id()),
            replicas: self.replicas.iter().map(|&p| cpu_secs(p)).collect(),
            pg: self
                .pg_pids()
                .into_iter()
                .map(|p| (p, cpu_secs(p)))
                .collect(),
        }
    }

    /// PSS (MiB) summed over PostgreSQL's processes (RSS would count its shared memory once
    /// per process), and how many there are.
    fn pg_pss(&self) -> Option<(f64, usize)> {
        self.pg.as_ref()?;
        let pids = self.pg_pids();
        let kib: f64 = pids
            .iter()
            .filter_map(|p| {
                let s = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
                s.lines()
                    .find_map(|l| l.strip_prefix("Pss:"))?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .sum();
        Some((kib / 1024.0, pids.len()))
    }

    async fn mark(&self, client: &reqwest::Client) -> Mark {
        let mut requests = Vec::new();
        for base in &self.bases {
            requests.push(request_counts(client, base).await);
        }
        Mark {
            cpu: self.cpu(),
            requests,
            pg_log: self
                .pg
                .as_ref()
                .map_or(0, |(_, log)| std::fs::metadata(log).map_or(0, |m| m.len())),
        }
    }

    /// Prints the CPU each process used since `mark`, the answers that were not 2xx and
    /// PostgreSQL's errors; returns the problems (empty: none) and the number of
    /// serialization failures.
    async fn since(
        &self,
        client: &reqwest::Client,
        mark: &Mark,
        phase: &str,
    ) -> (Vec<String>, usize) {
        let now = self.cpu();
        let wall = now.at.duration_since(mark.cpu.at).as_secs_f64();
        let share = |s: f64| format!("{s:.1} s ({:.0}%)", 100.0 * s / wall);
        let mut line = format!(
            "      CPU over {wall:.1} s: client {}",
            share(now.client - mark.cpu.client)
        );
        for (i, (a, b)) in now.replicas.iter().zip(&mark.cpu.replicas).enumerate() {
            line += &format!(", replica {i} {}", share(a - b));
        }
        if self.pg.is_some() {
            let pg: f64 = now
                .pg
                .iter()
                .map(|(pid, s)| s - mark.cpu.pg.get(pid).copied().unwrap_or(0.0))
                .sum();
            line += &format!(", PostgreSQL {}", share(pg));
        }
        println!("{line}");
        let mut problems = Vec::new();
        for (i, base) in self.bases.iter().enumerate() {
            let after = request_counts(client, base).await;
            for ((route, status), n) in &after {
                let before = mark
                    .requests
                    .get(i)
                    .and_then(|m| m.get(&(route.clone(), *status)))
                    .copied()
                    .unwrap_or(0);
                if *status >= 400 && *n > before {
                    problems.push(format!(
                        "{phase}: replica {i} answered {status} to {route} {} times",
                        n - before
                    ));
                }
            }
        }
        let mut serialization = 0;
        if let Some((_, log)) = &self.pg {
            let text = std::fs::read(log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text[(mark.pg_log as usize).min(text.len())..]);
            // An error's DETAIL, HINT and STATEMENT lines follow it (one write per message);
            // grouped by message and the first line of the statement that failed.
            let lines: Vec<&str> = text.lines().collect();
            let mut errors: BTreeMap<(String, String), usize> = BTreeMap::new();
            for (i, l) in lines.iter().enumerate() {
                if let Some(at) = l.find("ERROR:").or_else(|| l.find("FATAL:")) {
                    let msg = l[at..].split_whitespace().collect::<Vec<_>>().join(" ");
                    if msg.contains("could not serialize access") {
                        serialization += 1;
                    }
                    let statement = lines[i + 1..(i + 5).min(lines.len())]
                        .iter()
                        .find_map(|l| Some(l.split_once("STATEMENT:")?.1.trim()))
                        .map(|s| s.chars().take(70).collect())
                        .unwrap_or_default();
                    *errors.entry((msg, statement)).or_default() += 1;
                }
            }
            for ((msg, statement), n) in errors {
                problems.push(format!(
                    "{phase}: PostgreSQL logged {n} x \"{msg}\" (statement: {statement})"
                ));
            }
        }
        for p in &problems {
            println!("      {p}");
        }
        (problems, serialization)
    }
}

/// `pacpool_http_requests_total` from `{base}/metrics`: (route, status) → count.
async fn request_counts(client: &reqwest::Client, base: &str) -> BTreeMap<(String, u16), u64> {
    let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
        return BTreeMap::new();
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pacpool_http_requests_total{route=\"")?;
            let (route, rest) = rest.split_once("\",status=\"")?;
            let (status, rest) = rest.split_once("\"}")?;
            Some((
                (route.to_owned(), status.parse().ok()?),
                rest.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// Registers `n` endpoints named `{prefix}{i}`, endpoint i through `bases[i % len]`, 50 at
/// once.
async fn register_all(
    client: &reqwest::Client,
    bases: &[String],
    join: &str,
    n: usize,
    prefix: &str,
) -> Vec<RegisterResponse> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, base, join) = (
                client.clone(),
                bases[i % bases.len()].clone(),
                join.to_owned(),
            );
            let name = format!("{prefix}{i}");
            async move {
                tokio::spawn(async move { api::register(&client, &base, &join, &name).await })
                    .await
                    .unwrap()
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

/// What a socket task tells the main task.
enum Note {
    /// Replica, target revision, when it arrived.
    Target(usize, u64, Instant),
    Closed,
}

/// Holds one endpoint socket open and reports every `TargetChanged`.
async fn listen(mut ws: sim::Ws, replica: usize, notes: mpsc::UnboundedSender<Note>) {
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && let Ok(ServerMsg::TargetChanged { target, .. }) = serde_json::from_str(&t)
        {
            let _ = notes.send(Note::Target(replica, target.revision, Instant::now()));
        }
    }
    let _ = notes.send(Note::Closed);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Opts {
    fanout: usize,
    full_rounds: usize,
    target_changes: usize,
}

async fn run(setup: &Setup, opts: &Opts) -> Row {
    let started = Instant::now();
    let mut row = Row::default();
    println!("\n== {} (load average {})", setup.label, load_average());
    let dir = tempfile::tempdir().unwrap();
    let cluster = if setup.postgres {
        match pg::PgCluster::start() {
            Ok(c) => Some(c),
            Err(reason) => {
                println!("  SKIPPED: {reason}");
                row.skipped = Some(reason);
                return row;
            }
        }
    } else {
        None
    };
    let database = match &cluster {
        Some(c) => c.database("pacpool"),
        None => dir.path().join("coordinator.db").display().to_string(),
    };
    let admin_hash = hex::encode(sha2::Sha256::digest(ADMIN.as_bytes()));
    let mut procs = Vec::new();
    for r in 0..setup.replicas {
        let config = dir.path().join(format!("replica{r}.toml"));
        // Limits out of the way: every client is on 127.0.0.1 and the load is the point.
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\ndatabase = {database:?}\n\
                 admin_token_file = {:?}\nadmin_token_sha256 = \"{admin_hash}\"\n\
                 rate_limit_per_minute = 1000000000\nrate_limit_burst = 1000000000\n\
                 anonymous_rate_limit_per_minute = 1000000000\nanonymous_rate_limit_burst = 1000000000\n\
                 invalid_token_rate_limit_per_minute = 1000000000\ninvalid_token_rate_limit_burst = 1000000000\n\
                 storage_per_endpoint_mib_per_hour = 1000000\n\
                 max_connections = 1000000\nmax_connections_per_ip = 1000000\n\
                 offline_after_secs = 3600\n\
                 [repo]\ndir = {:?}\n",
                free_port(),
                dir.path().join(format!("admin-token-{r}")),
                dir.path().join("packages"),
            ),
        )
        .unwrap();
        // One after the other: the first migrates an empty PostgreSQL database.
        procs.push(CoordinatorProc::start(&config));
    }
    let bases: Vec<String> = procs
        .iter()
        .map(|p| format!("http://127.0.0.1:{}/api/v1", p.port))
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    for base in &bases {
        wait_ready(&client, base).await;
    }
    let probe = Probe {
        replicas: procs.iter().map(|p| p.pid()).collect(),
        bases: bases.clone(),
        pg: cluster.as_ref().map(|c| {
            let pid = std::fs::read_to_string(c.data_dir().join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok())
                .expect("the postmaster's pid");
            // pg.rs: the server's log is `log` beside its socket.
            (pid, c.socket_dir().join("log"))
        }),
    };
    let (_pool, join) = api::pool_with_join_token(&client, &bases[0], ADMIN, "replicas").await;
    let endpoints = register_all(&client, &bases, &join, INGEST_ENDPOINTS, "ep").await;
    let url = |i: usize| format!("{}/endpoint/report", bases[i % bases.len()]);
    let mut retries = 0;

    // 1. Full states, K rounds, c = 50.
    let mut last_states: Vec<Snapshot> = Vec::new();
    let mut full = Stats {
        latencies: Vec::new(),
        errors: 0,
        wall: Duration::ZERO,
    };
    let mark = probe.mark(&client).await;
    for round in 0..opts.full_rounds {
        last_states.clear();
        let mut jobs = Vec::new();
        for (i, ep) in endpoints.iter().enumerate() {
            let s = state(i, round);
            let body: Bytes = serde_json::to_vec(&StateReport::Full {
                snapshot: s.clone(),
            })
            .unwrap()
            .into();
            jobs.push((url(i), ep.endpoint_token.clone(), body));
            last_states.push(s);
        }
        let s = ingest_to(&client, jobs, CONCURRENCY).await;
        full.absorb(s);
    }
    println!(
        "  {}",
        full.line(&format!(
            "full 1,500-pkg states x{}, c={CONCURRENCY}",
            full.latencies.len()
        ))
    );
    let (p, n) = probe.since(&client, &mark, "full-state ingest").await;
    row.problems.extend(p);
    retries += n;

    // 2. One-package deltas, round by round (an endpoint's deltas go in order).
    let mut rounds = Vec::new();
    for r in 0..DELTA_ROUNDS {
        let mut jobs = Vec::new();
        for (i, ep) in endpoints.iter().enumerate() {
            let next = state(i, 100 + r);
            let delta = last_states[i].diff(&next);
            let body: Bytes = serde_json::to_vec(&StateReport::Delta { delta })
                .unwrap()
                .into();
            jobs.push((url(i), ep.endpoint_token.clone(), body));
            last_states[i] = next;
        }
        rounds.push(jobs);
    }
    let mut delta = Stats {
        latencies: Vec::new(),
        errors: 0,
        wall: Duration::ZERO,
    };
    let mark = probe.mark(&client).await;
    for jobs in rounds {
        let s = ingest_to(&client, jobs, CONCURRENCY).await;
        delta.absorb(s);
    }
    println!(
        "  {}",
        delta.line(&format!(
            "one-package deltas x{}, c={CONCURRENCY}",
            delta.latencies.len()
        ))
    );
    let (p, n) = probe.since(&client, &mark, "delta ingest").await;
    row.problems.extend(p);
    retries += n;
    if setup.postgres {
        row.ingest_retries = Some(retries);
    }
    let rss_ingest: Vec<f64> = probe.replicas.iter().map(|&p| rss_mib(p)).collect();

    // 3. N sockets, spread over the replicas; target changes through replica 0.
    let mark = probe.mark(&client).await;
    let t = Instant::now();
    let fan_eps = register_all(&client, &bases, &join, opts.fanout, "ws").await;
    let registered = t.elapsed().as_secs_f64();
    row.register_rate = opts.fanout as f64 / registered;
    println!(
        "  {} endpoints registered in {registered:.1} s ({:.0}/s, {CONCURRENCY} at once)",
        opts.fanout, row.register_rate
    );
    let (p, _) = probe.since(&client, &mark, "registration").await;
    row.problems.extend(p);

    let mark = probe.mark(&client).await;
    let ws_urls: Vec<String> = bases
        .iter()
        .map(|b| format!("{}/endpoints/ws", b.replacen("http://", "ws://", 1)))
        .collect();
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<Note>();
    let mut tasks = Vec::with_capacity(opts.fanout);
    let mut on_replica = vec![0usize; bases.len()];
    let t = Instant::now();
    let connects: Vec<(usize, Option<sim::Ws>)> =
        futures_util::stream::iter(fan_eps.iter().enumerate())
            .map(|(j, ep)| {
                let replica = j % ws_urls.len();
                let (url, token) = (ws_urls[replica].clone(), ep.endpoint_token.clone());
                async move {
                    let ws = tokio::spawn(async move { sim::connect(&url, &token, None).await })
                        .await
                        .unwrap();
                    (replica, ws)
                }
            })
            .buffer_unordered(100)
            .collect()
            .await;
    row.connect_secs = t.elapsed().as_secs_f64();
    let mut failed = 0;
    for (replica, ws) in connects {
        match ws {
            Some(ws) => {
                on_replica[replica] += 1;
                tasks.push(tokio::spawn(listen(ws, replica, notes_tx.clone())));
            }
            None => failed += 1,
        }
    }
    drop(notes_tx);
    row.connected = tasks.len();
    println!(
        "  {} WebSockets connected in {:.1} s ({failed} failed; per replica {on_replica:?})",
        row.connected, row.connect_secs
    );
    let (p, _) = probe.since(&client, &mark, "connect").await;
    row.problems.extend(p);
    if failed > 0 {
        row.problems
            .push(format!("connect: {failed} sockets could not connect"));
    }

    let mark = probe.mark(&client).await;
    let mut open = row.connected;
    for change in 0..opts.target_changes.min(INGEST_ENDPOINTS) {
        // Endpoint `change` makes its current state the target, through replica 0.
        let revision = change as u64 + 1;
        let t0 = Instant::now();
        let resp = client
            .post(format!("{}/endpoint/target", bases[0]))
            .bearer_auth(&endpoints[change].endpoint_token)
            .json(&SetTargetRequest {
                expected_revision: change as u64,
                snapshot: last_states[change].hash(),
                manifest: None,
            })
            .send()
            .await
            .unwrap();
        let post_ms = t0.elapsed().as_secs_f64() * 1e3;
        if !resp.status().is_success() {
            let msg = format!(
                "target change {revision}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
            println!("  {msg}");
            row.problems.push(msg);
            break;
        }
        let mut per_replica: Vec<Option<Instant>> = vec![None; bases.len()];
        let mut got = 0;
        let deadline = tokio::time::sleep(FAN_WAIT);
        tokio::pin!(deadline);
        while got < open {
            tokio::select! {
                n = notes.recv() => match n {
                    Some(Note::Target(r, rev, at)) if rev == revision => {
                        got += 1;
                        per_replica[r] = Some(per_replica[r].map_or(at, |l| l.max(at)));
                    }
                    Some(Note::Target(..)) => {}
                    Some(Note::Closed) => open -= 1,
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        let ms = |i: Instant| i.duration_since(t0).as_secs_f64() * 1e3;
        let per_replica_ms: Vec<Option<f64>> = per_replica.iter().map(|l| l.map(ms)).collect();
        let last_ms = per_replica_ms.iter().flatten().copied().fold(0.0, f64::max);
        let split = if bases.len() > 1 {
            let parts: Vec<String> = per_replica_ms
                .iter()
                .enumerate()
                .map(|(i, m)| match m {
                    Some(m) => format!("replica {i}'s sockets {m:.0} ms"),
                    None => format!("replica {i}'s sockets none"),
                })
                .collect();
            format!(" ({})", parts.join(", "))
        } else {
            String::new()
        };
        println!(
            "  target change {revision} (POST through replica 0 answered in {post_ms:.0} ms): reached {got}/{open} sockets, the last after {last_ms:.0} ms{split}"
        );
        if got < open {
            row.problems.push(format!(
                "target change {revision}: only {got} of {open} sockets had it after {} s",
                FAN_WAIT.as_secs()
            ));
        }
        row.fans.push(Fan {
            got,
            open,
            last_ms,
            per_replica_ms,
            post_ms,
        });
    }
    let (p, _) = probe.since(&client, &mark, "fan-out").await;
    row.problems.extend(p);

    // 4. Memory, with the sockets still open.
    row.rss = rss_ingest
        .iter()
        .zip(&probe.replicas)
        .map(|(&a, &p)| (a, rss_mib(p)))
        .collect();
    row.pg_pss = probe.pg_pss();
    for (i, (a, b)) in row.rss.iter().enumerate() {
        println!(
            "  replica {i} RSS: {a:.0} MiB after the ingest phases, {b:.0} MiB with {} sockets",
            on_replica[i]
        );
    }
    if let Some((pss, n)) = row.pg_pss {
        println!("  PostgreSQL: {n} processes, PSS {pss:.0} MiB in all");
    }

    for t in tasks {
        t.abort();
    }
    drop(procs);
    drop(cluster);
    row.full = Some(full);
    row.delta = Some(delta);
    row.secs = started.elapsed().as_secs_f64();
    println!("  ({:.0} s for this configuration)", row.secs);
    row
}

fn table(rows: &[(&Setup, Row)], opts: &Opts) {
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |label: String, f: &dyn Fn(&Row) -> String| {
        let cells = rows
            .iter()
            .map(|(_, r)| match &r.skipped {
                Some(_) => "skipped".to_owned(),
                None => f(r),
            })
            .collect();
        lines.push((label, cells));
    };
    let sorted = |s: &Stats| {
        let mut l = s.latencies.clone();
        l.sort();
        l
    };
    let reports = 200 * opts.full_rounds;
    add(
        format!("full-state ingest, c = 50 ({reports} reports): reports/s"),
        &|r| format!("{:.0}", r.full.as_ref().map_or(0.0, Stats::rate)),
    );
    add("  p50 / p99 ms".into(), &|r| {
        let l = r.full.as_ref().map(sorted).unwrap_or_default();
        format!("{:.1} / {:.1}", pct(&l, 0.5), pct(&l, 0.99))
    });
    add("  errors".into(), &|r| {
        r.full.as_ref().map_or(0, |s| s.errors).to_string()
    });
    add(
        format!(
            "one-package deltas over REST, c = 50 ({} reports): reports/s",
            200 * DELTA_ROUNDS
        ),
        &|r| format!("{:.0}", r.delta.as_ref().map_or(0.0, Stats::rate)),
    );
    add("  p99 ms".into(), &|r| {
        format!("{:.1}", r.delta.as_ref().map_or(0.0, Stats::p99))
    });
    add("  errors".into(), &|r| {
        r.delta.as_ref().map_or(0, |s| s.errors).to_string()
    });
    add(
        "PostgreSQL serialization failures (units retried) in both ingest phases".into(),
        &|r| r.ingest_retries.map_or("—".into(), |n| n.to_string()),
    );
    add(
        format!("{} endpoints registered, c = 50: per s", opts.fanout),
        &|r| format!("{:.0}", r.register_rate),
    );
    add(format!("{} WebSockets connected: s", opts.fanout), &|r| {
        format!("{:.1} ({} open)", r.connect_secs, r.connected)
    });
    add(
        "target change → last socket, ms (each change)".into(),
        &|r| {
            r.fans
                .iter()
                .map(|f| format!("{:.0}", f.last_ms))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    add("  sockets that got each change".into(), &|r| {
        r.fans
            .iter()
            .map(|f| format!("{}/{}", f.got, f.open))
            .collect::<Vec<_>>()
            .join(", ")
    });
    add("  last socket on replica 0 / replica 1, ms".into(), &|r| {
        if r.fans.first().is_none_or(|f| f.per_replica_ms.len() < 2) {
            return "—".into();
        }
        r.fans
            .iter()
            .map(|f| {
                let m: Vec<String> = f
                    .per_replica_ms
                    .iter()
                    .map(|m| m.map_or("none".into(), |m| format!("{m:.0}")))
                    .collect();
                m.join(" / ")
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    add("  POST /endpoint/target answered, ms".into(), &|r| {
        r.fans
            .iter()
            .map(|f| format!("{:.0}", f.post_ms))
            .collect::<Vec<_>>()
            .join(", ")
    });
    add(
        format!(
            "RSS per replica, MiB: after ingest → with {} sockets",
            opts.fanout
        ),
        &|r| {
            r.rss
                .iter()
                .map(|(a, b)| format!("{a:.0} → {b:.0}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    add("PostgreSQL, all processes: PSS MiB".into(), &|r| {
        r.pg_pss
            .map_or("—".into(), |(p, n)| format!("{p:.0} ({n} processes)"))
    });
    add("seconds for the configuration".into(), &|r| {
        format!("{:.0}", r.secs)
    });
    println!();
    let head: Vec<&str> = rows.iter().map(|(s, _)| s.label).collect();
    println!("| | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(head.len()));
    for (label, cells) in lines {
        println!("| {label} | {} |", cells.join(" | "));
    }
    let problems: Vec<&String> = rows.iter().flat_map(|(_, r)| &r.problems).collect();
    if problems.is_empty() {
        println!("\nno errors: every answer 2xx, nothing in PostgreSQL's logs");
    } else {
        println!("\nerrors and retries:");
        for (s, r) in rows {
            for p in &r.problems {
                println!("  {}: {p}", s.label);
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nofile = raise_nofile();
    let wanted: usize = arg(&args, "--endpoints", 10_000);
    // The client holds one file per socket; keep room for everything else.
    let fanout = wanted.min((nofile as usize).saturating_sub(1000));
    let opts = Opts {
        fanout,
        full_rounds: arg(&args, "--full-rounds", 3usize).clamp(1, 30),
        target_changes: arg(&args, "--target-changes", 3usize).clamp(1, 20),
    };
    println!(
        "pacpool coordinator: SQLite vs PostgreSQL replicas (loopback; client, coordinators and PostgreSQL on {} cores; open files limit {nofile}; {} sockets{})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.fanout,
        if fanout < wanted {
            format!(", {wanted} asked")
        } else {
            String::new()
        }
    );
    let start = Instant::now();
    let mut rows = Vec::new();
    for setup in &SETUPS {
        let row = run(setup, &opts).await;
        rows.push((setup, row));
    }
    table(&rows, &opts);
    println!(
        "\nwhole run {:.0} s; load average at the end {}",
        start.elapsed().as_secs_f64(),
        load_average()
    );
}
