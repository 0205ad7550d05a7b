//! `apply` and `exec` against the real pacman in sandboxes: plans made from real databases,
//! applied by pacpool, and the result compared with the target snapshot by hash.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pacpool::apply::{
    ApplyError, ApplyEvent, ApplyOptions, ApplyReport, TransactionOutcome, apply,
};
use pacpool::exec::{self, ExecError, PacmanEvent, PacmanOp, PacmanSettings, Stage};
use pacpool::machine::{MachineState, PacmanPaths};
use pacpool::plan::{Action, Plan, Policy, Source, plan};
use pacpool::snapshot::Snapshot;
use support::{PkgSpec, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn pkg(sb: &Sandbox, name: &str, version: &str, deps: &[&str]) -> PathBuf {
    sb.build_package(&PkgSpec::new(name, version).depends(deps))
}

/// Publishes the same package files in every sandbox's repository.
fn publish_all(sbs: &[&Sandbox], pkgs: &[PathBuf]) {
    for sb in sbs {
        sb.publish(pkgs);
    }
}

fn read(paths: &PacmanPaths) -> MachineState {
    paths.read().expect("read the sandbox's pacman state")
}

fn plan_to(current: &MachineState, target: &Snapshot, policy: &Policy) -> Plan {
    plan(
        &current.snapshot,
        target,
        &current.local,
        &current.availability,
        &policy.compile().unwrap(),
    )
}

/// A cancel receiver nobody will trigger.
fn never() -> watch::Receiver<bool> {
    watch::channel(false).1
}

async fn run_apply(
    plan: &Plan,
    settings: &PacmanSettings,
    opts: &ApplyOptions,
    cancel: &watch::Receiver<bool>,
) -> (Result<ApplyReport, ApplyError>, Vec<ApplyEvent>) {
    let mut events = Vec::new();
    let trust = trust_rule(settings);
    let r = apply(
        plan,
        settings,
        opts,
        &trust,
        &mut |e| events.push(e),
        cancel,
    )
    .await;
    (r, events)
}

/// The trust rule of the sandbox that `settings` runs pacman on: its pacman.conf (SigLevel
/// Never in these tests) and what its sync databases offer now.
fn trust_rule(settings: &PacmanSettings) -> pacpool::trust::TrustRule {
    let config = settings
        .config
        .clone()
        .expect("sandbox settings name a pacman.conf");
    let conf = pacpool::pacman_conf::PacmanConf::load(&config).unwrap();
    let machine = PacmanPaths {
        config: Some(config),
        ..Default::default()
    }
    .read()
    .expect("read the sandbox's pacman state");
    pacpool::trust::TrustRule::new(Some(&conf), machine.availability, None, false)
}

fn kinds(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| {
            let kind = serde_json::to_value(a).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned();
            let src = match a {
                Action::Install { source, .. }
                | Action::Upgrade { source, .. }
                | Action::Downgrade { source, .. } => match source {
                    Source::Repo { .. } => " repo",
                    Source::Cache { .. } => " cache",
                    Source::Archive { .. } => " archive",
                    Source::Pool { .. } => " pool",
                },
                _ => "",
            };
            format!("{kind} {}{src}", a.name())
        })
        .collect()
}

/// Two machines from the same repository: A moves on (install, upgrade, new dependency,
/// reason change, keeps an old version); B applies the plan to A's snapshot and ends up with
/// exactly A's state.
#[tokio::test]
async fn apply_brings_b_to_a_exactly() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let v1 = [
        pkg(&a, "app", "1.0-1", &["libcore"]),
        pkg(&a, "libcore", "1.0-1", &[]),
        pkg(&a, "tool", "1.0-1", &[]),
        pkg(&a, "down", "1.0-1", &[]),
        pkg(&a, "extra", "1.0-1", &[]),
        pkg(&a, "why", "1.0-1", &[]),
        pkg(&a, "fresh", "1.0-1", &["libfresh"]),
        pkg(&a, "libfresh", "1.0-1", &[]),
        pkg(&a, "newdep", "1.0-1", &[]),
    ];
    publish_all(&[&a, &b], &v1);
    a.pacman_ok(&["-Sy", "app", "tool", "down", "why"]);
    b.pacman_ok(&["-Sy", "app", "tool", "down", "why", "extra"]);
    publish_all(
        &[&a, &b],
        &[pkg(&a, "tool", "2.0-1", &[]), pkg(&a, "down", "2.0-1", &[])],
    );
    a.pacman_ok(&["-Sy"]);
    a.pacman_ok(&["-S", "tool", "fresh"]);
    a.pacman_ok(&["-S", "--asdeps", "newdep"]);
    a.pacman_ok(&["-D", "--asdeps", "why"]);
    b.pacman_ok(&["-Sy"]);
    b.pacman_ok(&["-S", "down"]); // B's cache keeps down 1.0; the repo now offers 2.0.

    let target = read(&a.pacman_paths()).snapshot;
    let before = read(&b.pacman_paths());
    let p = plan_to(&before, &target, &Policy::default());
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    assert_eq!(
        kinds(&p),
        [
            "downgrade down cache",
            "install fresh repo",
            "install libfresh repo",
            "install newdep repo",
            "upgrade tool repo",
            "remove extra",
            "mark-dependency why",
        ]
    );

    let settings = b.pacman_settings();
    let (r, events) = run_apply(&p, &settings, &ApplyOptions::default(), &never()).await;
    let report = r.unwrap_or_else(|e| panic!("apply failed: {e}"));
    assert!(report.succeeded(), "{report:?}");
    let commands: Vec<String> = report
        .transactions
        .iter()
        .map(|t| {
            assert_eq!(t.outcome, TransactionOutcome::Succeeded);
            t.command.split(" --noconfirm").next().unwrap().to_owned()
                + " -- "
                + &t.command
                    .rsplit(" -- ")
                    .next()
                    .unwrap()
                    .replace(b.cachedir().to_str().unwrap(), "CACHE")
        })
        .collect();
    assert_eq!(
        commands,
        [
            "pacman -S --needed -- pacpooltest/fresh=1.0-1 pacpooltest/tool=2.0-1",
            "pacman -S --needed --asdeps -- pacpooltest/libfresh=1.0-1 pacpooltest/newdep=1.0-1",
            "pacman -U -- CACHE/down-1.0-1-any.pkg.tar.zst",
            "pacman -R -- extra",
            "pacman -D --asdeps -- why",
        ]
    );

    let after = read(&b.pacman_paths()).snapshot;
    assert_eq!(
        after.hash(),
        target.hash(),
        "B equals A\n--- B\n{}--- A\n{}",
        after.encode(),
        target.encode()
    );
    assert_eq!(
        after.get("newdep").unwrap().reason,
        pacpool::localdb::Reason::Dependency
    );

    // Progress: every transaction started, and pacman's stages were recognised.
    let stages: Vec<Stage> = events
        .iter()
        .filter_map(|e| match e {
            ApplyEvent::Pacman {
                event: PacmanEvent::Progress(p),
                ..
            } => Some(p.stage),
            _ => None,
        })
        .collect();
    for s in [
        Stage::Resolving,
        Stage::Downloading,
        Stage::Checking,
        Stage::Installing,
        Stage::Upgrading,
        Stage::Downgrading,
        Stage::Removing,
        Stage::SettingReason,
    ] {
        assert!(stages.contains(&s), "{s:?} in {stages:?}");
    }
    let started = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ApplyEvent::Pacman {
                    event: PacmanEvent::Started { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(started, report.transactions.len());
    let upgrading_tool = events.iter().any(|e| {
        matches!(e, ApplyEvent::Pacman { event: PacmanEvent::Progress(p), .. }
            if p.stage == Stage::Upgrading && p.package.as_ref().is_some_and(|n| n.as_str() == "tool")
                && p.percent.is_some())
    });
    assert!(upgrading_tool, "{events:?}");

    // Applying the same target again is a no-op plan.
    let again = plan_to(&read(&b.pacman_paths()), &target, &Policy::default());
    assert!(again.is_noop(), "{:?}", again.actions);
}

/// A machine with down 2.0 whose cache never had 1.0, and the state with down 1.0 as target.
struct Downgrade {
    sb: Sandbox,
    target: Snapshot,
    archive: PathBuf,
    file_name: String,
    /// The archive's signature of the old file, by a packager the keyring fully trusts: the
    /// repository says SigLevel Never, and its database no longer lists 1.0-1, so a download
    /// is installed only with a trusted signature (see tests/trust_real_pacman.rs).
    signature: Vec<u8>,
    _keyring: support::keyring::Keyring,
    _packager: support::keyring::Packager,
}

fn downgrade_setup() -> Downgrade {
    let sb = Sandbox::new();
    let old = pkg(&sb, "down", "1.0-1", &[]);
    let new = pkg(&sb, "down", "2.0-1", &[]);
    sb.publish(std::slice::from_ref(&old));
    sb.pacman_ok(&["-Sy", "down"]);
    let target = read(&sb.pacman_paths()).snapshot;
    sb.publish(&[new]);
    sb.pacman_ok(&["-Sy"]);
    sb.pacman_ok(&["-S", "down"]);
    // Forget 1.0 everywhere but the archive.
    for dir in [sb.cachedir(), sb.repo_dir()] {
        let f = dir.join(old.file_name().unwrap());
        if f.exists() {
            std::fs::remove_file(f).unwrap();
        }
    }
    let archive = sb.base().join("archive");
    let dir = archive.join("d/down");
    std::fs::create_dir_all(&dir).unwrap();
    let file_name = old.file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::copy(&old, dir.join(&file_name)).unwrap();
    let keyring = support::keyring::Keyring::init(&sb);
    let packager = support::keyring::Packager::new("archive");
    keyring.trust(&packager);
    let signature = std::fs::read(packager.sign(&dir.join(&file_name))).unwrap();
    Downgrade {
        sb,
        target,
        archive,
        file_name,
        signature,
        _keyring: keyring,
        _packager: packager,
    }
}

#[tokio::test]
async fn downgrade_from_a_file_archive_when_the_cache_lacks_it() {
    let d = downgrade_setup();
    let paths = PacmanPaths {
        archive_url: Some(format!("file://{}", d.archive.display())),
        ..d.sb.pacman_paths()
    };
    let p = plan_to(&read(&paths), &d.target, &Policy::default());
    assert_eq!(kinds(&p), ["downgrade down archive"]);
    let (r, events) = run_apply(
        &p,
        &d.sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(&events[0], ApplyEvent::Fetching { name, .. } if name.as_str() == "down"));
    assert_eq!(read(&paths).snapshot.hash(), d.target.hash());
    // Fetched into the cache, no partial file left.
    assert!(d.sb.cachedir().join(&d.file_name).is_file());
    assert!(
        !d.sb
            .cachedir()
            .join(format!("{}.part", d.file_name))
            .exists()
    );
}

/// Serves `root` over plain HTTP/1.0 on 127.0.0.1 (one request per connection).
async fn serve(root: PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let root = root.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req);
                let path = req.split(' ').nth(1).unwrap_or("/");
                let resp = match std::fs::read(root.join(path.trim_start_matches('/'))) {
                    Ok(body) => {
                        let mut r =
                            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        r.extend(body);
                        r
                    }
                    Err(_) => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                };
                let _ = s.write_all(&resp).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn downgrade_from_an_http_archive_and_refuse_a_bad_download() {
    let d = downgrade_setup();
    let base = serve(d.archive.clone()).await;
    let paths = PacmanPaths {
        archive_url: Some(base),
        ..d.sb.pacman_paths()
    };
    let before = read(&paths);
    let p = plan_to(&before, &d.target, &Policy::default());
    assert_eq!(kinds(&p), ["downgrade down archive"]);

    // The archive serves garbage: refused by its magic bytes, nothing run.
    let served = d.archive.join("d/down").join(&d.file_name);
    let good = std::fs::read(&served).unwrap();
    std::fs::write(&served, b"<html>not a package</html>").unwrap();
    let log = d.sb.log_text();
    let (r, _) = run_apply(
        &p,
        &d.sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    let err = r.unwrap_err();
    assert!(
        matches!(&err, ApplyError::Fetch { name, .. } if name.as_str() == "down"),
        "{err}"
    );
    assert!(err.to_string().contains("magic"), "{err}");
    assert_eq!(d.sb.log_text(), log, "no pacman transaction ran");
    assert!(!d.sb.cachedir().join(&d.file_name).exists());
    assert!(
        std::fs::read_dir(d.sb.cachedir()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_str()
            .unwrap()
            .ends_with(".part"))
    );

    // A missing file (404) is a clear fetch error too.
    std::fs::remove_file(&served).unwrap();
    let mut sig_name = d.file_name.clone();
    sig_name.push_str(".sig");
    let served_sig = d.archive.join("d/down").join(&sig_name);
    std::fs::remove_file(&served_sig).unwrap();
    let (r, _) = run_apply(
        &p,
        &d.sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    assert!(r.unwrap_err().to_string().contains("404"));

    // The real file: the downgrade goes through, and the archive's signature is stored
    // next to it for pacman to check.
    std::fs::write(&served, good).unwrap();
    std::fs::write(&served_sig, &d.signature).unwrap();
    let (r, _) = run_apply(
        &p,
        &d.sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(&paths).snapshot.hash(), d.target.hash());
    assert_eq!(
        std::fs::read(d.sb.cachedir().join(&sig_name)).unwrap(),
        d.signature
    );
}

#[tokio::test]
async fn cancel_during_a_download_changes_nothing() {
    let d = downgrade_setup();
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stall = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let paths = PacmanPaths {
        archive_url: Some(base),
        ..d.sb.pacman_paths()
    };
    let before = read(&paths);
    let p = plan_to(&before, &d.target, &Policy::default());
    let log = d.sb.log_text();
    let (tx, rx) = watch::channel(false);
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(true).unwrap();
        tx
    });
    let t0 = Instant::now();
    let (r, _) = run_apply(&p, &d.sb.pacman_settings(), &ApplyOptions::default(), &rx).await;
    let _tx = canceller.await.unwrap();
    stall.abort();
    assert!(
        matches!(
            r,
            Err(ApplyError::NotStarted {
                source: ExecError::Cancelled
            })
        ),
        "{r:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_unchanged(&d.sb, &before.snapshot.hash().to_hex(), &log);
    let leftovers: Vec<_> = std::fs::read_dir(d.sb.cachedir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_str().unwrap().contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_vanished_cache_file_is_refused_before_anything_runs() {
    let sb = Sandbox::new();
    sb.publish(&[pkg(&sb, "down", "1.0-1", &[]), pkg(&sb, "x", "1.0-1", &[])]);
    sb.pacman_ok(&["-Sy", "down", "x"]);
    let mut target = read(&sb.pacman_paths()).snapshot.packages().to_vec();
    target.retain(|p| p.name.as_str() != "x");
    let target = Snapshot::new(target).unwrap();
    sb.publish(&[pkg(&sb, "down", "2.0-1", &[])]);
    sb.pacman_ok(&["-Sy", "down"]);
    let before = read(&sb.pacman_paths());
    let p = plan_to(&before, &target, &Policy::default());
    assert_eq!(kinds(&p), ["downgrade down cache", "remove x"]);
    std::fs::remove_file(sb.cachedir().join("down-1.0-1-any.pkg.tar.zst")).unwrap();
    let log = sb.log_text();
    let (r, _) = run_apply(
        &p,
        &sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    let err = r.unwrap_err();
    assert!(matches!(err, ApplyError::InvalidPlan { .. }), "{err:?}");
    assert!(err.to_string().contains("plan again"), "{err}");
    assert_unchanged(&sb, &before.snapshot.hash().to_hex(), &log);
}

/// A machine with one package `a` and a plan that removes it (its snapshot without `a`).
fn removal_setup() -> (Sandbox, Plan) {
    let sb = Sandbox::new();
    sb.publish(&[pkg(&sb, "a", "1.0-1", &[]), pkg(&sb, "b", "1.0-1", &[])]);
    sb.pacman_ok(&["-Sy", "a", "b"]);
    let now = read(&sb.pacman_paths());
    let target = Snapshot::new(
        now.snapshot
            .packages()
            .iter()
            .filter(|p| p.name.as_str() != "a")
            .cloned()
            .collect(),
    )
    .unwrap();
    let p = plan_to(&now, &target, &Policy::default());
    assert_eq!(kinds(&p), ["remove a"]);
    (sb, p)
}

fn assert_unchanged(sb: &Sandbox, hash_before: &str, log_before: &str) {
    assert_eq!(
        read(&sb.pacman_paths()).snapshot.hash().to_hex(),
        hash_before
    );
    assert_eq!(sb.log_text(), log_before, "no pacman transaction ran");
}

#[tokio::test]
async fn a_held_lock_is_busy_and_nothing_changes() {
    let (sb, p) = removal_setup();
    let hash = read(&sb.pacman_paths()).snapshot.hash().to_hex();
    let log = sb.log_text();
    std::fs::write(sb.lock_file(), "").unwrap();
    let settings = PacmanSettings {
        lock_wait: 1,
        ..sb.pacman_settings()
    };
    let t0 = Instant::now();
    let (r, events) = run_apply(&p, &settings, &ApplyOptions::default(), &never()).await;
    let err = r.unwrap_err();
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "waited for the lock"
    );
    assert!(
        matches!(
            &err,
            ApplyError::NotStarted {
                source: ExecError::Busy { .. }
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("pacman is in use"), "{msg}");
    assert!(msg.contains(sb.lock_file().to_str().unwrap()), "{msg}");
    assert!(events.iter().any(|e| matches!(
        e,
        ApplyEvent::Pacman {
            event: PacmanEvent::WaitingForLock { .. },
            ..
        }
    )));
    assert!(sb.lock_file().exists(), "the lock is never removed");
    assert_unchanged(&sb, &hash, &log);

    // The lock goes away while waiting: the transaction runs.
    let lock = sb.lock_file();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::remove_file(lock).unwrap();
    });
    let settings = PacmanSettings {
        lock_wait: 10,
        ..sb.pacman_settings()
    };
    let (r, _) = run_apply(&p, &settings, &ApplyOptions::default(), &never()).await;
    release.await.unwrap();
    r.unwrap_or_else(|e| panic!("{e}"));
    assert!(read(&sb.pacman_paths()).snapshot.get("a").is_none());
}

#[tokio::test]
async fn cancel_before_start_changes_nothing() {
    let (sb, p) = removal_setup();
    let hash = read(&sb.pacman_paths()).snapshot.hash().to_hex();
    let log = sb.log_text();
    let (tx, rx) = watch::channel(true);
    let (r, _) = run_apply(&p, &sb.pacman_settings(), &ApplyOptions::default(), &rx).await;
    assert!(
        matches!(
            r,
            Err(ApplyError::NotStarted {
                source: ExecError::Cancelled
            })
        ),
        "{r:?}"
    );
    assert_unchanged(&sb, &hash, &log);

    // Cancelled while waiting for a lock: returns promptly, long before lock_wait.
    tx.send(false).unwrap();
    std::fs::write(sb.lock_file(), "").unwrap();
    let settings = PacmanSettings {
        lock_wait: 30,
        ..sb.pacman_settings()
    };
    let t0 = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(true).unwrap();
        tx
    });
    let (r, _) = run_apply(&p, &settings, &ApplyOptions::default(), &rx).await;
    let _tx = canceller.await.unwrap();
    assert!(
        matches!(
            r,
            Err(ApplyError::NotStarted {
                source: ExecError::Cancelled
            })
        ),
        "{r:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    std::fs::remove_file(sb.lock_file()).unwrap();
    assert_unchanged(&sb, &hash, &log);
}

#[tokio::test]
async fn conflicts_and_unconfirmed_removals_are_refused() {
    let (sb, _) = removal_setup();
    let now = read(&sb.pacman_paths());
    let hash = now.snapshot.hash().to_hex();
    let log = sb.log_text();

    // A version nobody offers: a conflict; refused even though another action is possible.
    let mut wanted: Vec<_> = now
        .snapshot
        .packages()
        .iter()
        .filter(|p| p.name.as_str() != "a")
        .cloned()
        .collect();
    wanted[0].version = "0.1-1".parse().unwrap();
    let p = plan_to(&now, &Snapshot::new(wanted).unwrap(), &Policy::default());
    assert!(!p.conflicts.is_empty() && !p.actions.is_empty());
    let (r, events) = run_apply(
        &p,
        &sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    let err = r.unwrap_err();
    assert!(matches!(err, ApplyError::Conflicts(_)), "{err:?}");
    assert!(
        err.to_string().contains("b 0.1-1 is not available"),
        "{err}"
    );
    assert!(events.is_empty());
    assert_unchanged(&sb, &hash, &log);

    // Removals over the cap need confirmation.
    let target = Snapshot::new(vec![]).unwrap();
    let policy = Policy {
        removal_cap: 1,
        ..Policy::default()
    };
    let p = plan_to(&now, &target, &policy);
    assert!(p.needs_confirmation.is_some());
    let (r, _) = run_apply(
        &p,
        &sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    let err = r.unwrap_err();
    assert!(matches!(err, ApplyError::NeedsConfirmation(_)), "{err:?}");
    assert!(err.to_string().contains("confirm"), "{err}");
    assert_unchanged(&sb, &hash, &log);

    let confirmed = ApplyOptions {
        confirm_removals: true,
        ..ApplyOptions::default()
    };
    let (r, _) = run_apply(&p, &sb.pacman_settings(), &confirmed, &never()).await;
    r.unwrap_or_else(|e| panic!("{e}"));
    assert!(read(&sb.pacman_paths()).snapshot.is_empty());
}

/// A corrupt cache file: the repository upgrade before it succeeds, the `-U` fails naming
/// the package, the removal after it is not attempted, and the report says so.
#[tokio::test]
async fn a_failing_transaction_is_reported_truthfully() {
    let sb = Sandbox::new();
    sb.publish(&[
        pkg(&sb, "tool", "1.0-1", &[]),
        pkg(&sb, "down", "1.0-1", &[]),
        pkg(&sb, "extra", "1.0-1", &[]),
    ]);
    sb.pacman_ok(&["-Sy", "tool", "down"]);
    let mut target = read(&sb.pacman_paths()).snapshot.packages().to_vec();
    sb.publish(&[
        pkg(&sb, "tool", "2.0-1", &[]),
        pkg(&sb, "down", "2.0-1", &[]),
    ]);
    sb.pacman_ok(&["-Sy", "down", "extra"]);
    for t in &mut target {
        if t.name.as_str() == "tool" {
            t.version = "2.0-1".parse().unwrap();
        }
    }
    let target = Snapshot::new(target).unwrap();
    let before = read(&sb.pacman_paths());
    let p = plan_to(&before, &target, &Policy::default());
    assert_eq!(
        kinds(&p),
        ["downgrade down cache", "upgrade tool repo", "remove extra"]
    );
    let Action::Downgrade {
        source: Source::Cache { path },
        ..
    } = &p.actions[0]
    else {
        unreachable!()
    };
    // A cache file pacman cannot even describe (`pacman -Qp` fails): refused before any
    // transaction, since nothing says which package it holds.
    truncate(path);
    let log = sb.log_text();
    let (r, _) = run_apply(
        &p,
        &sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    let err = r.unwrap_err();
    assert!(
        matches!(&err, ApplyError::Untrusted(u) if u.len() == 1
            && u[0].check == pacpool::trust::TrustCheck::WrongPackage
            && u[0].why.contains("pacman cannot tell which package the file holds")),
        "{err}"
    );
    assert_eq!(sb.log_text(), log, "no pacman transaction ran");

    // The cached file becomes a valid down 1.0-1 that pacman cannot install (it depends on
    // a package nobody offers): the trust rule and `pacman -Qp` accept it, `pacman -U` fails.
    let broken = sb.build_package(&PkgSpec::new("down", "1.0-1").depends(&["nowhere-to-be-found"]));
    std::fs::copy(&broken, path).unwrap();

    let (r, _) = run_apply(
        &p,
        &sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    let err = r.unwrap_err();
    let ApplyError::Failed { report } = &err else {
        panic!("{err:?}")
    };
    let outcomes: Vec<&str> = report
        .transactions
        .iter()
        .map(|t| match t.outcome {
            TransactionOutcome::Succeeded => "ok",
            TransactionOutcome::Failed { .. } => "failed",
            TransactionOutcome::NotRun => "not-run",
        })
        .collect();
    assert_eq!(outcomes, ["ok", "failed", "not-run"]);
    let failures: Vec<(&str, &str)> = report
        .failures
        .iter()
        .map(|(n, why)| (n.as_str(), why.as_str()))
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].0, "down");
    assert!(
        failures[0].1.contains("failed to run: pacman -U")
            && failures[0].1.contains("nowhere-to-be-found"),
        "{}",
        failures[0].1
    );
    assert_eq!(failures[1].0, "extra");
    assert!(failures[1].1.contains("not attempted"));
    let msg = err.to_string();
    assert!(
        msg.contains("transaction 2 of 3 failed") && msg.contains("down, extra"),
        "{msg}"
    );
    // The truth on disk matches the report: tool upgraded, down and extra untouched.
    let after = read(&sb.pacman_paths()).snapshot;
    assert_eq!(after.get("tool").unwrap().version.as_str(), "2.0-1");
    assert_eq!(after.get("down").unwrap().version.as_str(), "2.0-1");
    assert!(after.get("extra").is_some());
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len().min(100)]).unwrap();
}

#[tokio::test]
async fn exec_runs_pacman_and_maps_its_failures() {
    let sb = Sandbox::new();
    sb.publish(&[pkg(&sb, "a", "1.0-1", &[])]);
    let s = sb.pacman_settings();
    let mut events = Vec::new();
    let out = exec::run(
        &PacmanOp::RefreshDatabases,
        &s,
        &mut |e| events.push(e),
        &never(),
    )
    .await
    .unwrap();
    assert!(out.status.success());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PacmanEvent::Progress(p) if p.stage == Stage::Synchronizing))
    );

    // --needed on an installed version: success, "nothing to do".
    sb.pacman_ok(&["-S", "a"]);
    let op = PacmanOp::SyncInstall {
        targets: vec![pacpool::exec::SyncTarget {
            repo: "pacpooltest".parse().unwrap(),
            name: "a".parse().unwrap(),
            version: "1.0-1".parse().unwrap(),
        }],
        reason: None,
    };
    let out = exec::run(&op, &s, &mut |_| {}, &never()).await.unwrap();
    assert!(out.nothing_to_do);

    // pacman's own failure: the command line and its error.
    let op = PacmanOp::Remove {
        names: vec!["notinstalled".parse().unwrap()],
    };
    let err = exec::run(&op, &s, &mut |_| {}, &never()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ExecError::Failed { .. }));
    assert!(
        msg.starts_with("failed to run: pacman -R ")
            && msg.contains("-- notinstalled")
            && msg.contains("target not found: notinstalled"),
        "{msg}"
    );

    // A file left behind by a cut-short transaction (on disk, owned by no package): pacman
    // refuses "conflicting files", and the message says which file and what to do.
    sb.pacman_ok(&["-R", "a"]);
    let left = sb.root().join("usr/share/a/a.txt");
    std::fs::create_dir_all(left.parent().unwrap()).unwrap();
    std::fs::write(&left, "left behind\n").unwrap();
    let install = PacmanOp::SyncInstall {
        targets: vec![pacpool::exec::SyncTarget {
            repo: "pacpooltest".parse().unwrap(),
            name: "a".parse().unwrap(),
            version: "1.0-1".parse().unwrap(),
        }],
        reason: None,
    };
    let err = exec::run(&install, &s, &mut |_| {}, &never())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("conflicting files")
            && msg.contains(&format!("a: {} exists in filesystem", left.display()))
            && msg.contains(&format!("no installed package owns {}", left.display()))
            && msg.contains("`pacman -Qo PATH`"),
        "{msg}"
    );
    std::fs::remove_file(&left).unwrap();
    exec::run(&install, &s, &mut |_| {}, &never())
        .await
        .unwrap();

    // A missing program.
    let bad = PacmanSettings {
        program: sb.base().join("no-such-pacman"),
        ..s.clone()
    };
    let err = exec::run(&op, &bad, &mut |_| {}, &never())
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Spawn { .. }), "{err:?}");

    // pacman's "unable to lock database" (a lock appearing after our check) is Busy too: a
    // fake pacman that fails the way pacman does.
    let fake = fake_pacman(
        &sb,
        "locked-pacman",
        "echo 'error: failed to init transaction (unable to lock database)' >&2\nexit 1\n",
    );
    let fake = PacmanSettings {
        program: fake,
        lock_wait: 1,
        ..s.clone()
    };
    let err = exec::run(&op, &fake, &mut |_| {}, &never())
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Busy { .. }), "{err:?}");
}

#[test]
fn lock_path_matches_pacman() {
    let sb = Sandbox::new();
    // Only the config given: the database path comes from pacman.conf, as pacman finds it.
    let s = PacmanSettings {
        config: Some(sb.config()),
        ..PacmanSettings::default()
    };
    let out = std::process::Command::new("pacman")
        .env("LC_ALL", "C")
        .arg("--config")
        .arg(sb.config())
        .args(["-v", "-T"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lock = text
        .lines()
        .find_map(|l| l.strip_prefix("Lock File : "))
        .expect("pacman -v names its lock file");
    assert_eq!(
        s.lock_path(),
        Path::new(lock.trim()),
        "pacman -v says:\n{text}"
    );
}

#[test]
fn hostile_targets_cannot_reach_a_plan() {
    // Names and versions are validated when a plan or snapshot is deserialized, so a
    // coordinator cannot smuggle an option or a path into pacman's argv.
    for (name, version) in [("-Syu", "1-1"), ("a", "1-1;rm"), ("../x", "1-1")] {
        let json = serde_json::json!({
            "actions": [{"action": "remove", "name": name, "version": version}],
            "conflicts": [], "skipped": [], "needs_confirmation": null
        });
        assert!(
            serde_json::from_value::<Plan>(json).is_err(),
            "{name} {version}"
        );
    }
    let hostile = serde_json::json!({
        "actions": [{"action": "install", "name": "a", "version": "1-1", "arch": "any",
            "reason": "explicit", "source": {"kind": "cache", "path": "--config=/tmp/x"}}],
        "conflicts": [], "skipped": [], "needs_confirmation": null
    });
    // A path is not a name: it deserializes, but apply refuses it before running anything.
    let p: Plan = serde_json::from_value(hostile).unwrap();
    let err = pacpool::apply::transactions(&p, Path::new("/cache")).unwrap_err();
    assert!(
        err.to_string()
            .contains("not an absolute path to a package file"),
        "{err}"
    );
}

/// Writes an executable shell script standing in for pacman.
fn fake_pacman(sb: &Sandbox, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = sb.base().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Once pacman runs it is not interrupted: not by a cancel request, and not by dropping the
/// future (its output keeps being drained, so it does not die of SIGPIPE).
#[tokio::test]
async fn a_running_pacman_is_never_interrupted() {
    let sb = Sandbox::new();
    let marker = sb.base().join("finished");
    let program = fake_pacman(
        &sb,
        "slow-pacman",
        &format!(
            "echo 'removing a...'\nsleep 0.5\ni=0\nwhile [ $i -lt 2000 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); done\necho done > '{}'\n",
            marker.display()
        ),
    );
    let s = PacmanSettings {
        program,
        ..sb.pacman_settings()
    };
    let op = PacmanOp::Remove {
        names: vec!["a".parse().unwrap()],
    };

    // A cancel request after the start is ignored.
    let (tx, rx) = watch::channel(false);
    let mut events = Vec::new();
    let mut record = |e| events.push(e);
    let run = exec::run(&op, &s, &mut record, &rx);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(true).unwrap();
    };
    let (r, ()) = tokio::join!(run, cancel);
    let out = r.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.stdout.contains("line 1999") && out.stderr.contains("err 1999"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PacmanEvent::Progress(p) if p.stage == Stage::Removing))
    );
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();

    // The caller gives up on the future while pacman runs: pacman still finishes.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        exec::run(&op, &s, &mut |_| {}, &never()),
    )
    .await;
    assert!(gave_up.is_err(), "still running when dropped");
    let t0 = Instant::now();
    while !marker.exists() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        marker.exists(),
        "pacman ran to the end after the future was dropped"
    );
}

/// The repository moved on between planning and applying: the pinned `-S` target is not
/// found, and pacman installs nothing rather than another version.
#[tokio::test]
async fn a_repository_that_moved_on_is_not_followed() {
    let sb = Sandbox::new();
    sb.publish(&[pkg(&sb, "tool", "1.0-1", &[])]);
    sb.pacman_ok(&["-Sy"]);
    let target = Snapshot::new(vec![pacpool::snapshot::PackageState {
        name: "tool".parse().unwrap(),
        version: "1.0-1".parse().unwrap(),
        arch: "any".parse().unwrap(),
        reason: pacpool::localdb::Reason::Explicit,
        repo: Some(support::REPO.parse().unwrap()),
    }])
    .unwrap();
    let p = plan_to(&read(&sb.pacman_paths()), &target, &Policy::default());
    assert_eq!(kinds(&p), ["install tool repo"]);
    sb.publish(&[pkg(&sb, "tool", "2.0-1", &[])]);
    sb.pacman_ok(&["-Sy"]);
    let (r, _) = run_apply(
        &p,
        &sb.pacman_settings(),
        &ApplyOptions::default(),
        &never(),
    )
    .await;
    let err = r.unwrap_err();
    assert!(
        err.to_string().contains("target not found: tool=1.0-1"),
        "{err}"
    );
    assert!(read(&sb.pacman_paths()).snapshot.is_empty());
}
