//! Measuring helpers shared by the coordinator benches (`coordinator_load`, `replicas`):
//! latency statistics, REST report ingest at a fixed concurrency, CPU time and RSS of a
//! process from `/proc`, the open-file limit, readiness, arguments.
//!
//! A standalone file (no `super::`), included with `#[path = "support/measure.rs"]`.
#![allow(dead_code)] // not every bench uses every helper

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use pacpool::proto::ReportAck;

/// What one phase of requests measured: each answered request's latency, the failures among
/// them, and the phase's wall time.
pub struct Stats {
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub wall: Duration,
}

impl Stats {
    /// Another run's figures added to these (latencies, errors and wall time).
    pub fn absorb(&mut self, other: Stats) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.wall += other.wall;
    }
}

/// Percentile `p` (0–1) of sorted latencies, in milliseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    pub fn p99(&self) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        pct(&l, 0.99)
    }

    pub fn line(&self, what: &str) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        format!(
            "{what:<34} {:>8.0}/s  p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms  errors {}",
            self.rate(),
            pct(&l, 0.50),
            pct(&l, 0.95),
            pct(&l, 0.99),
            self.errors
        )
    }
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the ')'.
    // In clock ticks of USER_HZ, which is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU used by this client and by the coordinator over one phase.
pub struct CpuMark {
    client: f64,
    server: f64,
    at: Instant,
}

impl CpuMark {
    pub fn now(server: u32) -> Self {
        Self {
            client: cpu_secs(std::process::id()),
            server: cpu_secs(server),
            at: Instant::now(),
        }
    }

    pub fn since(&self, server: u32) -> String {
        let wall = self.at.elapsed().as_secs_f64();
        let c = cpu_secs(std::process::id()) - self.client;
        let s = cpu_secs(server) - self.server;
        format!(
            "CPU over {wall:.1} s: client {c:.1} s ({:.0}% of a core), coordinator {s:.1} s ({:.0}%)",
            100.0 * c / wall,
            100.0 * s / wall
        )
    }
}

/// Sends `bodies[i]` to the report endpoint with `tokens[i]`, `concurrency` at a time.
pub async fn ingest(
    client: &reqwest::Client,
    url: &str,
    jobs: Vec<(String, Bytes)>,
    concurrency: usize,
) -> Stats {
    let jobs = jobs
        .into_iter()
        .map(|(token, body)| (url.to_owned(), token, body))
        .collect();
    ingest_to(client, jobs, concurrency).await
}

/// [`ingest`] with a URL per request (url, token, body): requests spread over several
/// coordinator replicas.
pub async fn ingest_to(
    client: &reqwest::Client,
    jobs: Vec<(String, String, Bytes)>,
    concurrency: usize,
) -> Stats {
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (jobs, errors, client) = (jobs.clone(), errors.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some((url, token, body)) = jobs.lock().unwrap().next() else {
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

/// Resident set size of a process (`VmRSS` in `/proc/PID/status`), in MiB; 0 when gone.
pub fn rss_mib(pid: u32) -> f64 {
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

/// The value after `name` in the program's arguments, else `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// Raises the open-file limit to its hard limit (10,000 sockets need more than the usual
/// 1,024); the coordinator started by this program inherits it.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(max) = lim.maximum {
        lim.current = Some(max);
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Waits until `{base}/health/ready` answers 200 (`base` ends in `/api/v1`).
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    loop {
        if client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
