//! Fault injection: pacpoold killed with SIGKILL at random points of a sync (requested by the
//! coordinator or run from the CLI), a revert and a set-latest, on a real sandbox pacman root
//! with a real coordinator on 127.0.0.1.
//!
//! After every kill: the orphaned pacman (if any) finishes on its own — pacpoold starts it
//! with SIGPIPE ignored, so losing its reader does not kill it — and leaves no `db.lck`; the
//! daemon's SQLite store passes `PRAGMA integrity_check`; `pacman -Dk` and `-Qk` pass; the
//! restarted daemon records the operation as `interrupted` (local history) and the
//! coordinator's operation ends (completed, or failed "interrupted"), never stuck; the next
//! operation converges to its aim. Some trials also kill pacman itself (a power cut): the
//! stale lock is then refused with the documented message until it is removed by hand.
//!
//! Kill points come from a seeded RNG (printed; `PACPOOL_SEED=N` replays a run) or from an
//! observable moment (pacman's process appears). `PACPOOL_LONG=1` runs four times the trials.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::coordinator::Coordinator;
use support::daemon::{Daemon, cli_as, write_config};
use support::rng::{Rng, seed};
use support::{PkgSpec, Sandbox, host_arch};

/// Packages switched between versions by every operation.
const PACKAGES: usize = 12;

fn local_hash(sb: &Sandbox) -> String {
    sb.pacman_paths().read().unwrap().snapshot.hash().to_hex()
}

/// Polls `cond` every 20 ms; panics with `what` after `limit` (a liveness bound, not a timing
/// assertion).
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Process ids of pacman processes working on this sandbox.
fn pacman_pids(sb: &Sandbox) -> Vec<i32> {
    let needle = sb.dbpath().display().to_string();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmd.split(|b| *b == 0).map(String::from_utf8_lossy);
        let is_pacman = args
            .next()
            .is_some_and(|a0| Path::new(a0.as_ref()).file_name() == Some("pacman".as_ref()));
        if is_pacman && args.any(|a| a.contains(&needle)) {
            out.push(pid);
        }
    }
    out
}

fn integrity(state_dir: &Path) -> String {
    let conn = rusqlite::Connection::open(state_dir.join("state.db")).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A sync the coordinator requested (an operation in its database).
    RequestedSync,
    /// `pacpool sync --yes`.
    CliSync,
    /// `pacpool revert --to HASH --yes`.
    Revert,
    /// `pacpool set-latest --yes`.
    SetLatest,
}

#[derive(Default, Debug)]
struct Figures {
    trials: usize,
    orphaned_pacman: usize,
    pacman_killed_too: usize,
    stale_lock_refused: usize,
    stale_lock_nothing_to_do: usize,
    damaged_entries_repaired: usize,
    unowned_files_removed: usize,
    local_interrupted: usize,
    coordinator_interrupted: usize,
    coordinator_completed: usize,
    max_converge: Duration,
    total_converge: Duration,
}

struct World {
    sb: Sandbox,
    _dbdir: tempfile::TempDir,
    coord: Coordinator,
    pool: i64,
    endpoint: i64,
    config: PathBuf,
    /// Hashes of the two states A (…-1.0) and B (…-2.0).
    a: String,
    b: String,
}

impl World {
    fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        self.coord.admin(method, path, body)
    }

    fn current_target(&self) -> serde_json::Value {
        let targets = self.admin("GET", &format!("/pools/{}/targets", self.pool), None);
        targets
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|t| t["revision"].as_u64().unwrap())
            .cloned()
            .unwrap()
    }

    /// Moves the pool target to a copy of the newest revision whose snapshot is `hash`.
    fn target_to(&self, hash: &str) -> u64 {
        let targets = self.admin("GET", &format!("/pools/{}/targets", self.pool), None);
        let current = self.current_target();
        if current["snapshot"] == hash {
            return current["revision"].as_u64().unwrap();
        }
        let to = targets
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["snapshot"] == hash)
            .map(|t| t["revision"].as_u64().unwrap())
            .max()
            .expect("a revision with that state");
        let t = self.admin(
            "POST",
            &format!("/pools/{}/target/revert", self.pool),
            Some(serde_json::json!({"to_revision": to, "expected_revision": current["revision"]})),
        );
        t["revision"].as_u64().unwrap()
    }
}

fn start_daemon(w: &World) -> Daemon {
    let d = Daemon::start(&w.config);
    wait_until("the daemon to connect", Duration::from_secs(30), || {
        d.status()["link"] == "connected"
    });
    d
}

/// Builds the sandbox (states A and B of `PACKAGES` packages, both in pacman's cache), the
/// coordinator, the pool with revisions for A and B, and the daemon's configuration.
fn setup() -> World {
    let sb = Sandbox::new();
    let arch = host_arch();
    let names: Vec<String> = (0..PACKAGES).map(|i| format!("pkg{i:02}")).collect();
    let build = |sb: &Sandbox, v: &str, extra: &str| -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| n.as_str())
            .chain([extra])
            .map(|n| sb.build_package(&PkgSpec::new(n, v).arch(&arch)))
            .collect()
    };
    let v1 = build(&sb, "1.0-1", "only-a");
    sb.publish(&v1);
    let mut install: Vec<&str> = vec!["-Sy"];
    install.extend(names.iter().map(|s| s.as_str()));
    install.push("only-a");
    sb.pacman_ok(&install);
    let a = local_hash(&sb);

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("coordinator.db"), None);
    let pool = coord.admin(
        "POST",
        "/pools",
        Some(serde_json::json!({"name": "faults"})),
    );
    let pool = pool["id"].as_i64().unwrap();
    let join = coord.admin("POST", &format!("/pools/{pool}/join-tokens"), None);
    let config = write_config(
        &sb,
        "victim",
        Some((&coord.url(), join["token"].as_str().unwrap())),
    );
    let mut w = World {
        sb,
        _dbdir: dbdir,
        coord,
        pool,
        endpoint: 0,
        config,
        a,
        b: String::new(),
    };
    let d = start_daemon(&w);
    d.cli_code(&["set-latest", "--yes"], 0);
    let v2 = build(&w.sb, "2.0-1", "only-b");
    w.sb.publish(&v2);
    w.sb.pacman_ok(&["-Syu"]);
    w.sb.pacman_ok(&["-Rns", "only-a"]);
    w.sb.pacman_ok(&["-S", "only-b"]);
    d.cli_code(&["notify"], 0);
    // State B lacks only-a: the pool goes back, which set-latest only does when told.
    d.cli_code(&["set-latest", "--yes", "--allow-older"], 0);
    w.b = local_hash(&w.sb);
    let eps = w.admin("GET", &format!("/pools/{pool}/endpoints"), None);
    w.endpoint = eps[0]["id"].as_i64().unwrap();
    w
}

/// The checks after a kill, before the restart: pacman finished or is gone, the lock, the
/// store, pacman's database. Returns whether a stale lock is left (pacman was killed too).
fn after_kill(w: &World, d: &Daemon, kill_pacman: bool, f: &mut Figures) -> bool {
    let orphans = pacman_pids(&w.sb);
    if !orphans.is_empty() {
        f.orphaned_pacman += 1;
        if kill_pacman {
            f.pacman_killed_too += 1;
            for pid in &orphans {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(*pid).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
        }
    }
    // Left alone, the orphaned transaction runs to its end and releases the lock.
    wait_until("pacman to finish", Duration::from_secs(60), || {
        pacman_pids(&w.sb).is_empty()
    });
    let stale = w.sb.lock_file().exists();
    assert!(
        !stale || (kill_pacman && !orphans.is_empty()),
        "db.lck left behind although no pacman was killed (orphans {orphans:?})\n{}",
        d.log()
    );
    assert_eq!(integrity(&d.state_dir), "ok", "state.db after the kill");
    if !stale {
        check_pacman_db(w);
    }
    stale
}

fn check_pacman_db(w: &World) {
    for check in [["-Dk"], ["-Qk"]] {
        let out = w.sb.pacman(&check);
        assert!(
            out.status.success(),
            "pacman {check:?} after the kill:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// After the restart: no operation is left `running`; returns the newest one's state.
fn local_operation_state(d: &Daemon) -> String {
    let ops: serde_json::Value =
        serde_json::from_str(&d.cli_code(&["history", "--json"], 0)).unwrap();
    let ops = ops.as_array().unwrap();
    assert!(
        ops.iter().all(|o| o["state"] != "running"),
        "an operation is still marked running after the restart: {ops:?}"
    );
    ops.first()
        .map(|o| o["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Runs `args` to completion; with a stale lock, first asserts the documented refusal and
/// removes the lock as the README says. Returns the exit code.
fn converge(w: &World, d: &Daemon, args: &[&str], stale: bool, f: &mut Figures) -> i32 {
    if stale {
        // pacman killed mid-transaction may also leave a damaged local database entry (an
        // empty `desc`): the daemon still starts, and says which package to reinstall.
        let damaged = d.status()["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("a pacman transaction was probably cut short"));
        let out = d.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lock = w.sb.lock_file();
        match out.status.code() {
            Some(1) if damaged => {
                assert!(stderr.contains("cannot read pacman's state"), "{stderr}");
            }
            Some(6) => {
                let expected = format!(
                    "pacman is in use (lock {} exists): wait for the other pacman to finish; if none is running, remove the stale lock",
                    lock.display()
                );
                assert!(stderr.contains(&expected), "{stderr}");
                f.stale_lock_refused += 1;
            }
            // pacman was killed after its last change (hooks, cleanup): nothing is left to do,
            // so no pacman runs and the lock is not in the way yet.
            Some(3) => f.stale_lock_nothing_to_do += 1,
            code => panic!(
                "{args:?} with a stale lock: {code:?}\n{}{stderr}",
                String::from_utf8_lossy(&out.stdout)
            ),
        }
        assert!(lock.exists(), "pacpool never removes a lock itself");
        std::fs::remove_file(&lock).unwrap();
        // Repair as the status says: reinstall the named package, then notify.
        for _ in 0..PACKAGES + 2 {
            let Some(e) = d.status()["last_error"].as_str().map(str::to_owned) else {
                break;
            };
            let Some(command) = e
                .split_once("reinstall the package (`pacman ")
                .and_then(|(_, rest)| rest.split_once('`'))
                .map(|(command, _)| command.to_owned())
            else {
                break;
            };
            // "move DIR out of pacman's database" first, when the message says so.
            if let Some((_, rest)) = e.split_once("probably cut short: move ")
                && let Some((dir, _)) = rest.split_once(" out of pacman's database")
            {
                let aside =
                    w.sb.base()
                        .join(format!("aside-{n}", n = f.damaged_entries_repaired));
                std::fs::rename(dir, aside).unwrap();
            }
            let args: Vec<&str> = command
                .split_whitespace()
                .map(|a| a.trim_matches('\''))
                .collect();
            f.damaged_entries_repaired += 1;
            w.sb.pacman_ok(&args);
            let _ = d.cli(&["notify"]);
        }
        assert!(
            d.status()["last_error"]
                .as_str()
                .is_none_or(|e| !e.contains("cannot read pacman's state")),
            "still unreadable after the repair: {}",
            d.status()
        );
    }
    let mut out = d.cli(args);
    // pacman killed between extracting a package's files and recording it leaves files that
    // no package owns: the next transaction refuses them ("conflicting files"), and the
    // message names them and says to check and remove them. Follow it, as a user would.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stale && stderr.contains("no installed package owns") {
        let unowned: std::collections::BTreeSet<&str> =
            pacpool::exec::unowned_files(&stderr).into_iter().collect();
        assert!(!unowned.is_empty(), "{stderr}");
        for path in unowned {
            let owner = w.sb.pacman(&["-Qo", path]);
            assert!(!owner.status.success(), "{path} has an owner: {owner:?}");
            std::fs::remove_file(path).unwrap();
            f.unowned_files_removed += 1;
        }
        out = d.cli(args);
    }
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "{args:?} after the restart: {code}\n{}{}\n--- daemon log\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    code
}

fn trial(w: &World, kind: Kind, rng: &mut Rng, budget: Duration, f: &mut Figures, n: usize) {
    let before = local_hash(&w.sb);
    let other = if before == w.a { &w.b } else { &w.a };
    let mut d = start_daemon(w);
    // The aim of the operation, and what the coordinator's target is before it.
    let aim = match kind {
        Kind::RequestedSync | Kind::CliSync => {
            let rev = w.target_to(other);
            wait_until(
                "the daemon to adopt the target",
                Duration::from_secs(30),
                || d.status()["target"]["revision"] == rev,
            );
            other.clone()
        }
        Kind::Revert => other.clone(),
        Kind::SetLatest => before.clone(),
    };
    let target_before = w.current_target();
    let at_pacman =
        matches!(kind, Kind::RequestedSync | Kind::CliSync | Kind::Revert) && rng.below(2) == 0;
    let delay = Duration::from_micros(rng.between(0, budget.as_micros() as u64));
    let kill_pacman = kind != Kind::SetLatest && n % 6 == 5;

    let socket = d.socket.clone();
    let args: Vec<String> = match kind {
        Kind::CliSync => vec!["sync".into(), "--yes".into()],
        Kind::Revert => vec!["revert".into(), "--yes".into(), "--to".into(), aim.clone()],
        Kind::SetLatest => vec!["set-latest".into(), "--yes".into(), "--allow-older".into()],
        Kind::RequestedSync => Vec::new(),
    };
    let mut op_id = None;
    let started = Instant::now();
    let client = if kind == Kind::RequestedSync {
        let op = w.admin(
            "POST",
            &format!("/endpoints/{}/operations", w.endpoint),
            Some(serde_json::json!({"kind": "sync-to-latest"})),
        );
        op_id = op["id"].as_i64();
        None
    } else {
        Some(std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            cli_as(&socket, &args, None)
        }))
    };
    if at_pacman {
        // The observable moment: pacman's process exists (or the operation ended first).
        while pacman_pids(&w.sb).is_empty() && started.elapsed() < budget * 3 {
            std::hint::spin_loop();
        }
        std::thread::sleep(delay / 8);
    } else {
        std::thread::sleep(delay.saturating_sub(started.elapsed()));
    }
    d.kill();
    if let Some(c) = client {
        let _ = c.join().unwrap();
    }
    let stale = after_kill(w, &d, kill_pacman, f);
    drop(d);

    let restarted = Instant::now();
    let d = start_daemon(w);
    if let Some(id) = op_id {
        // The coordinator's operation ends: completed, or failed as interrupted.
        let mut op = serde_json::Value::Null;
        wait_until(
            "the requested operation to end at the coordinator",
            Duration::from_secs(30),
            || {
                op = w.admin("GET", &format!("/operations/{id}"), None);
                matches!(op["state"].as_str(), Some("completed" | "failed"))
            },
        );
        match op["state"].as_str() {
            Some("completed") => f.coordinator_completed += 1,
            _ => {
                let msg = op["result"]["message"].as_str().unwrap_or_default();
                assert!(
                    msg.starts_with("interrupted"),
                    "trial {n}: operation {id} failed for another reason: {op}\n{}",
                    d.log()
                );
                f.coordinator_interrupted += 1;
            }
        }
    }
    // A requested operation that never reached the killed daemon is run by the new one:
    // let it finish before reading the history.
    wait_until("the daemon to be idle", Duration::from_secs(60), || {
        d.status()["operation"].is_null()
    });
    let state = local_operation_state(&d);
    if state == "interrupted" {
        f.local_interrupted += 1;
    }
    match kind {
        Kind::RequestedSync | Kind::CliSync => {
            converge(w, &d, &["sync", "--yes"], stale, f);
            assert_eq!(local_hash(&w.sb), aim, "trial {n}: sync converged");
        }
        Kind::Revert => {
            converge(w, &d, &["revert", "--yes", "--to", &aim], stale, f);
            assert_eq!(local_hash(&w.sb), aim, "trial {n}: revert converged");
        }
        Kind::SetLatest => {
            // The target either moved to this machine's state or stayed; never anything else.
            let t = w.current_target();
            assert!(
                t["snapshot"] == aim.as_str() || t == target_before,
                "trial {n}: target after an interrupted set-latest: {t}"
            );
            // And set-latest again converges: the pool follows this machine.
            d.cli_code(&["set-latest", "--yes", "--allow-older"], 0);
            assert_eq!(w.current_target()["snapshot"], aim.as_str());
        }
    }
    let took = restarted.elapsed();
    f.total_converge += took;
    f.max_converge = f.max_converge.max(took);
    check_pacman_db(w);
    assert_eq!(integrity(&d.state_dir), "ok");
    f.trials += 1;
}

#[test]
fn daemon_killed_at_random_points_recovers_and_converges() {
    let started = Instant::now();
    let mut rng = Rng(seed("fault_daemon_kill", "PACPOOL_SEED"));
    let w = setup();
    // Calibrate: how long a full sync takes here; kill delays are drawn below 1.5× that.
    let d = start_daemon(&w);
    let rev = w.target_to(&w.a);
    wait_until(
        "the daemon to adopt the target",
        Duration::from_secs(30),
        || d.status()["target"]["revision"] == rev,
    );
    let t = Instant::now();
    d.cli_code(&["sync", "--yes"], 0);
    let budget = t.elapsed() * 3 / 2;
    assert_eq!(local_hash(&w.sb), w.a);
    drop(d);

    let rounds = if std::env::var("PACPOOL_LONG").is_ok_and(|v| v == "1") {
        52
    } else {
        13
    };
    let mut f = Figures::default();
    let kinds = [
        Kind::RequestedSync,
        Kind::CliSync,
        Kind::Revert,
        Kind::SetLatest,
    ];
    let mut n = 0;
    for _ in 0..rounds {
        for kind in kinds {
            trial(&w, kind, &mut rng, budget, &mut f, n);
            n += 1;
        }
    }
    eprintln!(
        "fault_daemon_kill: {} trials in {:.1} s (kill window {} ms): {} orphaned pacman finished on its own, \
         {} also killed (stale lock refused {} times, nothing to do {} times, damaged entries reinstalled {}, unowned files removed {}, converged), {} local operations interrupted, \
         coordinator operations: {} completed, {} failed as interrupted; restart-to-converged mean {} ms, max {} ms",
        f.trials,
        started.elapsed().as_secs_f64(),
        budget.as_millis(),
        f.orphaned_pacman,
        f.pacman_killed_too,
        f.stale_lock_refused,
        f.stale_lock_nothing_to_do,
        f.damaged_entries_repaired,
        f.unowned_files_removed,
        f.local_interrupted,
        f.coordinator_completed,
        f.coordinator_interrupted,
        (f.total_converge / f.trials.max(1) as u32).as_millis(),
        f.max_converge.as_millis(),
    );
    assert_eq!(f.trials, rounds * kinds.len());
    // The kill points must actually land inside operations, or this test tests nothing.
    assert!(
        f.local_interrupted * 4 >= f.trials,
        "too few kills landed inside an operation: {f:?}"
    );
    assert!(
        f.orphaned_pacman > 0,
        "no kill landed while pacman ran: {f:?}"
    );
}

/// What a pacman killed while writing its database leaves (seen in the random trials above,
/// rarely): an empty `desc` and the lock. pacman itself tolerates the entry; pacpoold starts,
/// says which package to reinstall, refuses operations until then, and recovers after it.
#[test]
fn damaged_local_entry_after_a_power_cut_is_explained_and_repaired() {
    let sb = Sandbox::new();
    let arch = host_arch();
    sb.publish(&[
        sb.build_package(&PkgSpec::new("alpha", "1.0-1").arch(&arch)),
        sb.build_package(&PkgSpec::new("beta", "1.0-1").arch(&arch)),
    ]);
    sb.pacman_ok(&["-Sy", "alpha", "beta"]);
    let config = write_config(&sb, "damaged", None);
    let mut d = Daemon::start(&config);
    sb.publish(&[sb.build_package(&PkgSpec::new("alpha", "2.0-1").arch(&arch))]);
    sb.pacman_ok(&["-Syu"]);
    d.cli_code(&["notify"], 0);
    let upgraded = local_hash(&sb);
    d.kill();

    // The power cut: alpha's desc is empty, db.lck stays.
    std::fs::write(sb.dbpath().join("local/alpha-2.0-1/desc"), "").unwrap();
    std::fs::write(sb.lock_file(), "").unwrap();
    let d = Daemon::start(&config);
    let status = d.status();
    let e = status["last_error"].as_str().unwrap_or_default();
    assert!(
        e.contains("cannot read pacman's state: corrupt package entry")
            && e.contains("reinstall the package (`pacman -S --overwrite '*' alpha`)"),
        "{status}"
    );
    let log = sb.log_text();
    let out = d.cli(&["revert", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt package entry"));
    assert_eq!(sb.log_text(), log, "no pacman ran on a damaged database");

    // The repair the message asks for (the lock first, as the README says).
    assert!(
        !sb.pacman(&["-S", "alpha"]).status.success(),
        "the lock holds"
    );
    std::fs::remove_file(sb.lock_file()).unwrap();
    std::fs::rename(
        sb.dbpath().join("local/alpha-2.0-1"),
        sb.base().join("alpha-entry-aside"),
    )
    .unwrap();
    sb.pacman_ok(&["-S", "--overwrite", "*", "alpha"]);
    d.cli_code(&["notify"], 0);
    let status = d.status();
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(local_hash(&sb), upgraded);
    d.cli_code(&["revert", "--yes"], 0);
    assert!(sb.pacman_ok(&["-Q", "alpha"]).contains("1.0-1"));

    // Cut earlier: the entry directory exists without its desc. pacman cannot load it
    // either; the message says to move the entry away and reinstall over the files.
    let entry = sb.dbpath().join("local/beta-1.0-1");
    std::fs::remove_file(entry.join("desc")).unwrap();
    let out = d.cli(&["notify"]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "move {} out of pacman's database, reinstall the package (`pacman -S --overwrite '*' beta`), then run `pacpool notify`",
        entry.display()
    );
    let status = d.status();
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&expected)),
        "{status}"
    );
    std::fs::rename(&entry, sb.base().join("beta-entry-aside")).unwrap();
    sb.pacman_ok(&["-S", "--overwrite", "*", "beta"]);
    d.cli_code(&["notify"], 0);
    assert!(d.status()["last_error"].is_null());
    for check in [["-Dk"], ["-Qk"]] {
        assert!(sb.pacman(&check).status.success());
    }
}
