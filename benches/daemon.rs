//! Daemon benchmark: prints our figures next to baselines measured in the same run.
//!
//! `cargo bench --bench daemon` (as root: it runs real pacman transactions in a sandbox).
//! 1. Installing K = 50 packages: `pacpool revert` (plan, one pacman transaction, re-read,
//!    verify, record) vs the same `pacman -S` run directly.
//! 2. pacpoold idle: resident memory and wake-ups (context switches) per minute.
//! 3. Bytes a one-package upgrade costs on the wire: the delta report vs a full report, for
//!    a 2,000-package state.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use pacpool::localdb::Reason;
use pacpool::proto::{EndpointMsg, StateReport};
use pacpool::snapshot::{PackageState, Snapshot};
use support::daemon::{Daemon, write_config};
use support::{PkgSpec, Sandbox, host_arch};

const K: usize = 50;
const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Context switches so far of each thread of `pid`, by thread id.
fn switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let n: u64 = ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
                .iter()
                .filter_map(|key| text.lines().find_map(|l| l.strip_prefix(key)))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum();
            out.insert(t.file_name().to_string_lossy().into_owned(), n);
        }
    }
    out
}

/// Wake-ups between two samples: threads that exited in between are not counted, threads
/// that started count from zero.
fn woken(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

fn main() {
    let sb = Sandbox::new();
    let names: Vec<String> = (0..K).map(|i| format!("benchpkg{i:02}")).collect();
    let pkgs: Vec<_> = names
        .iter()
        .map(|n| sb.build_package(&PkgSpec::new(n, "1.0-1").arch(&host_arch())))
        .collect();
    sb.publish(&pkgs);
    sb.pacman_ok(&["-Sy"]);
    let d = Daemon::start(&write_config(&sb, "bench", None));
    let pid = d.pid();

    // 1. K installs: pacman directly vs pacpool revert (which plans the same -S transaction).
    let mut args = vec!["-S", "--needed"];
    args.extend(names.iter().map(String::as_str));
    let mut remove = vec!["-R"];
    remove.extend(names.iter().map(String::as_str));
    let (mut direct, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        sb.pacman_ok(&args);
        direct.push(t.elapsed());
        d.cli_code(&["notify"], 0);
        sb.pacman_ok(&remove);
        d.cli_code(&["notify"], 0);
        let t = Instant::now();
        d.cli_code(&["revert", "--yes"], 0);
        ours.push(t.elapsed());
        sb.pacman_ok(&remove);
        d.cli_code(&["notify"], 0);
    }
    let (direct, ours) = (median(direct), median(ours));

    // 2. Idle: memory and wake-ups over a quiet window.
    let window = Duration::from_secs(20);
    let before = switches(pid);
    std::thread::sleep(window);
    let woke = woken(&before, &switches(pid));
    let rss_kib = proc_status(pid, "VmRSS:");

    // 3. Wire bytes for a one-package upgrade of a 2,000-package state.
    let state: Vec<PackageState> = (0..2000)
        .map(|i| PackageState {
            name: format!("package-{i:04}").parse().unwrap(),
            version: format!("1.{i}-1").parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            reason: if i % 3 == 0 {
                Reason::Explicit
            } else {
                Reason::Dependency
            },
            repo: Some("extra".parse().unwrap()),
        })
        .collect();
    let a = Snapshot::new(state.clone()).unwrap();
    let mut upgraded = state;
    upgraded[1234].version = "2.0-1".parse().unwrap();
    let b = Snapshot::new(upgraded).unwrap();
    let size = |report: StateReport| {
        serde_json::to_vec(&EndpointMsg::Report {
            report,
            source: None,
        })
        .unwrap()
        .len()
    };
    let delta_bytes = size(StateReport::Delta { delta: a.diff(&b) });
    let full_bytes = size(StateReport::Full { snapshot: b });

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("pacpool daemon benchmark, median of {ROUNDS} rounds");
    println!(
        "  pacman -S {K} packages (baseline)        {:8.1} ms",
        ms(direct)
    );
    println!(
        "  pacpool revert installing the same {K}  {:8.1} ms  overhead {:+.1}% (goal < 10%)",
        ms(ours),
        (ms(ours) / ms(direct) - 1.0) * 100.0
    );
    println!(
        "  pacpoold idle RSS                        {:8.1} MiB (goal < 20 MiB)",
        rss_kib as f64 / 1024.0
    );
    println!(
        "  pacpoold idle wake-ups                   {:8.1} per minute (context switches over {} s)",
        woke as f64 * 60.0 / window.as_secs_f64(),
        window.as_secs()
    );
    println!(
        "  one-package upgrade report, 2,000 pkgs   {delta_bytes:8} bytes (goal < 1 KiB; full report {full_bytes} bytes)"
    );
}
