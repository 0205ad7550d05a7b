//! The product end to end: a real coordinator on 127.0.0.1, two real pacpoold processes on
//! two sandbox pacman roots, the real `pacpool` CLI, real WebSockets and real pacman
//! transactions.
//!
//! A sets latest → B is behind → B syncs and matches A (a protected package B has stays);
//! A upgrades and sets latest → B refreshes its databases and upgrades; A downgrades and
//! changes an install reason → B downgrades from the archive (its cache lacks the file) and
//! changes the reason; B reverts with the coordinator down and reports it when the
//! coordinator returns.

mod support;

use std::path::PathBuf;

use support::coordinator::Coordinator;
use support::daemon::{Daemon, write_config};
use support::keyring::{Keyring, Packager};
use support::{PkgSpec, Sandbox, host_arch};

fn publish_everywhere(boxes: &[&Sandbox], specs: &[(&str, &str, &[&str])]) {
    let built: Vec<PathBuf> = specs
        .iter()
        .map(|(n, v, deps)| {
            boxes[0].build_package(&PkgSpec::new(n, v).arch(&host_arch()).depends(deps))
        })
        .collect();
    for sb in boxes {
        sb.publish(&built);
    }
}

fn local_hash(sb: &Sandbox) -> String {
    sb.pacman_paths().read().unwrap().snapshot.hash().to_hex()
}

/// The hash of the machine's state without `skip` (a protected package only it has).
fn hash_without(sb: &Sandbox, skip: &str) -> String {
    let snap = sb.pacman_paths().read().unwrap().snapshot;
    let kept = snap
        .packages()
        .iter()
        .filter(|p| p.name.as_str() != skip)
        .cloned()
        .collect();
    pacpool::snapshot::Snapshot::new(kept)
        .unwrap()
        .hash()
        .to_hex()
}

#[test]
fn set_latest_sync_upgrade_and_offline_revert() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    publish_everywhere(
        &[&a, &b],
        &[
            ("editor", "1.0-1", &["libtext"]),
            ("libtext", "1.0-1", &[]),
            ("shell", "2.0-1", &[]),
            ("oldtool", "1.0-1", &[]),
            ("linux-demo", "6.1-1", &[]),
        ],
    );
    a.pacman_ok(&["-Sy", "editor", "shell"]);
    b.pacman_ok(&["-Sy", "shell", "oldtool", "linux-demo"]);
    // An archive (Arch Linux Archive layout) that B may fetch old versions from.
    let archive = tempfile::tempdir().unwrap();

    let dbdir = tempfile::tempdir().unwrap();
    let db = dbdir.path().join("coordinator.db");
    let mut coord = Coordinator::start(&db, None);
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();

    let da = Daemon::start(&write_config(&a, "alice", Some((&coord.url(), &join))));
    let b_config = write_config(&b, "bob", Some((&coord.url(), &join)));
    let mut text = std::fs::read_to_string(&b_config).unwrap();
    text.push_str(&format!(
        "archive_url = \"file://{}\"\n",
        archive.path().display()
    ));
    // No background prefetch on B (write_config's default): this test checks that a sync
    // refreshes stale databases first, which a prefetch that finished in time (it races with
    // the sync) would make unnecessary.
    std::fs::write(&b_config, text).unwrap();
    let db_ = Daemon::start(&b_config);
    da.wait_status("A connected", |s| s["link"] == "connected");
    db_.wait_status("B connected", |s| s["link"] == "connected");

    // A sets latest; B learns it is behind (it lacks editor and libtext, has oldtool extra).
    let out = da.cli_code(&["set-latest", "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    let s = db_.wait_status("B sees revision 1", |s| s["target"]["revision"] == 1);
    assert_eq!(
        s["state"], "diverged",
        "B has an extra package and lacks two: {s}"
    );
    assert_eq!(s["target"]["set_by"], "alice");
    assert_eq!(s["counts"]["install"], 2);
    assert_eq!(s["counts"]["remove"], 1);

    // The preview says what a sync does; the sync makes B equal to A.
    let preview = db_.cli_code(&["preview"], 0);
    assert!(
        preview.contains("install   editor 1.0-1") && preview.contains("remove    oldtool"),
        "{preview}"
    );
    db_.cli_code(&["sync", "--yes"], 0);
    assert_eq!(
        hash_without(&b, "linux-demo"),
        local_hash(&a),
        "B's packages equal A's"
    );
    assert!(
        b.pacman_ok(&["-Q", "linux-demo"]).contains("6.1-1"),
        "protected package kept"
    );
    let s = db_.wait_status("B in sync", |s| s["state"] == "in-sync");
    assert_eq!(s["counts"]["install"], 0);
    // The dependency came in as a dependency, as on A.
    let deps = b.pacman_ok(&["-Qqd"]);
    assert_eq!(deps.trim(), "libtext");

    // The coordinator computed the same thing from B's report.
    let endpoints = coord.admin("GET", &format!("/pools/{}/endpoints", pool["id"]), None);
    let states: Vec<String> = endpoints
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["state"].as_str().unwrap()
            )
        })
        .collect();
    assert!(states.contains(&"alice=in-sync".to_string()), "{states:?}");

    // A upgrades (from a newer repo state) and sets latest; B's databases are stale, so its
    // sync refreshes them first and then upgrades.
    publish_everywhere(&[&a, &b], &[("editor", "1.1-1", &["libtext>=1.0"])]);
    a.pacman_ok(&["-Syu"]);
    da.cli_code(&["notify"], 0);
    da.cli_code(&["set-latest", "--yes"], 0);
    let s = db_.wait_status("B sees revision 2", |s| s["target"]["revision"] == 2);
    assert_eq!(s["state"], "behind");
    assert_eq!(s["counts"]["upgrade"], 1);
    // Status, preview, the start of the sync and its result tell the same story.
    assert_eq!(s["needs_refresh"], true);
    assert!(
        db_.cli_code(&["status"], 0)
            .contains("pending:     needs a database refresh first; then 1 upgrade\n")
    );
    let preview = db_.cli_code(&["preview"], 0);
    assert!(
        preview.starts_with("needs a database refresh first; then 1 upgrade\n"),
        "{preview}"
    );
    let synced = db_.cli_code(&["sync", "--yes"], 0);
    assert!(
        synced.starts_with("needs a database refresh first; then 1 upgrade\n")
            && synced.ends_with("sync done after a database refresh: 1 upgrade\n"),
        "{synced}"
    );
    assert_eq!(hash_without(&b, "linux-demo"), local_hash(&a));

    // A goes back to editor 1.0 (from its cache) and marks shell as a dependency. The
    // repository only offers 1.1 and B's cache lost 1.0: B fetches it from the archive.
    let arch = host_arch();
    let old = format!("editor-1.0-1-{arch}.pkg.tar.zst");
    a.pacman_ok(&["-U", a.cachedir().join(&old).to_str().unwrap()]);
    a.pacman_ok(&["-D", "--asdeps", "shell"]);
    da.cli_code(&["notify"], 0);
    // The pool would go back a version: refused until told, with what it would lose.
    let refused = da.cli(&["set-latest", "--yes"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("  editor 1.1-1 → 1.0-1\n"),
        "{refused:?}"
    );
    da.cli_code(&["set-latest", "--yes", "--allow-older"], 0);
    std::fs::remove_file(b.cachedir().join(&old)).unwrap();
    let shelf = archive.path().join("e/editor");
    std::fs::create_dir_all(&shelf).unwrap();
    std::fs::copy(a.cachedir().join(&old), shelf.join(&old)).unwrap();
    // A download that B's repository database no longer lists is installed only with a
    // signature B's keyring fully trusts (see tests/trust_real_pacman.rs). A's copy, which the
    // pool repository serves, is unsigned (so is the manifest); the archive's copy carries its
    // packager's `.sig`, as archive.archlinux.org does: B tries the pool repository first,
    // refuses its copy, and installs the archive's.
    let keyring = Keyring::init(&b);
    let packager = Packager::new("editor");
    keyring.trust(&packager);
    packager.sign(&shelf.join(&old));
    let s = db_.wait_status("B sees revision 3", |s| s["target"]["revision"] == 3);
    // Newer editor (ahead) and a reason to change (behind).
    assert_eq!(s["state"], "diverged", "{s}");
    let out: serde_json::Value =
        serde_json::from_str(&db_.cli_code(&["sync", "--yes", "--json"], 0)).unwrap();
    assert_eq!(out["counts"]["downgrade"], 1, "{out}");
    assert_eq!(out["counts"]["reason"], 1, "{out}");
    assert_eq!(hash_without(&b, "linux-demo"), local_hash(&a));
    assert!(
        b.cachedir().join(&old).is_file(),
        "the archive file landed in B's cache"
    );
    assert!(
        db_.log()
            .contains("refused a download, trying the next source"),
        "the pool repository's unsigned copy was refused first"
    );
    assert!(b.pacman_ok(&["-Qqd"]).lines().any(|l| l == "shell"));
    // Back to revision 2's state for the revert below.
    da.cli_code(&["revert", "--yes"], 0);
    da.cli_code(&["set-latest", "--yes"], 0);
    db_.wait_status("B sees revision 4", |s| s["target"]["revision"] == 4);
    db_.cli_code(&["sync", "--yes"], 0);
    assert_eq!(hash_without(&b, "linux-demo"), local_hash(&a));

    // B reverts to its previous state with the coordinator down...
    let before_revert = local_hash(&b);
    coord.stop();
    db_.wait_status("B offline", |s| s["link"] == "offline");
    db_.cli_code(&["revert", "--yes"], 0);
    let reverted = local_hash(&b);
    assert_ne!(reverted, before_revert);
    assert!(b.pacman_ok(&["-Q", "editor"]).contains("1.0-1"));
    // ...and reports it when the coordinator is back (same address, same database).
    let coord = Coordinator::start(&db, Some(coord.addr));
    db_.wait_status("B reconnected", |s| s["link"] == "connected");
    let b_id = db_.status()["endpoint"].as_str().unwrap().to_owned();
    let mut reported = false;
    for _ in 0..200 {
        let endpoints = coord.admin("GET", &format!("/pools/{}/endpoints", pool["id"]), None);
        let b_row = endpoints
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == b_id.as_str())
            .cloned()
            .unwrap();
        if b_row["current"] == reverted.as_str() {
            assert_eq!(b_row["state"], "behind");
            reported = true;
            break;
        }
        // The report travels over the WebSocket after the welcome; wait for it briefly.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        reported,
        "B's reverted state reached the coordinator\n{}",
        db_.log()
    );
}

#[test]
fn auto_sync_apply_follows_the_target_without_anyone_asking() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    publish_everywhere(
        &[&a, &b],
        &[("tool", "1.0-1", &[]), ("extra", "2.0-1", &[])],
    );
    a.pacman_ok(&["-Sy", "tool", "extra"]);
    b.pacman_ok(&["-Sy", "tool"]);
    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("c.db"), None);
    // The pool's policy says "apply"; the daemons learn it when they connect.
    let pool = coord.admin(
        "POST",
        "/pools",
        Some(serde_json::json!({"name": "auto", "policy": {"auto_sync": "apply"}})),
    );
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let da = Daemon::start(&write_config(&a, "a", Some((&coord.url(), &join))));
    let db_ = Daemon::start(&write_config(&b, "b", Some((&coord.url(), &join))));
    db_.wait_status("B connected", |s| s["link"] == "connected");
    da.wait_status("A connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    let s = db_.wait_status("B synced on its own", |s| {
        s["target"]["revision"] == 1 && s["state"] == "in-sync" && s["operation"].is_null()
    });
    assert_eq!(s["auto_sync"], "apply");
    assert_eq!(local_hash(&b), local_hash(&a));
    let history: serde_json::Value =
        serde_json::from_str(&db_.cli_code(&["history", "--json"], 0)).unwrap();
    assert_eq!(history[0]["kind"], "sync");
    assert_eq!(history[0]["state"], "completed");
}

/// The machine's own `[policy]` adds to the pool's (issue 12, item 7): an automatic sync to a
/// target another machine set neither removes what this machine protects nor more packages
/// than its own removal cap allows; status, preview and sync say what was kept.
#[test]
fn the_machine_policy_adds_to_the_pool_policy() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    publish_everywhere(
        &[&a, &b],
        &[
            ("tool", "1.0-1", &[]),
            ("keepme-sshd", "1.0-1", &[]),
            ("keepme-firewall", "1.0-1", &[]),
            ("stray", "1.0-1", &[]),
            ("newer", "1.0-1", &[]),
        ],
    );
    // A has a package B lacks: B is behind (and ahead), so its automatic sync runs.
    a.pacman_ok(&["-Sy", "tool", "newer"]);
    b.pacman_ok(&["-Sy", "tool", "keepme-sshd", "keepme-firewall", "stray"]);
    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("c.db"), None);
    // The pool's policy is the untouched default, with automatic syncs.
    let pool = coord.admin(
        "POST",
        "/pools",
        Some(serde_json::json!({"name": "auto", "policy": {"auto_sync": "apply"}})),
    );
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let da = Daemon::start(&write_config(&a, "a", Some((&coord.url(), &join))));
    let b_config = write_config(&b, "b", Some((&coord.url(), &join)));
    let mut text = std::fs::read_to_string(&b_config).unwrap();
    text.push_str("\n[policy]\nprotected = [\"keepme-*\"]\nremoval_cap = 0\n");
    std::fs::write(&b_config, text).unwrap();
    let db_ = Daemon::start(&b_config);
    db_.wait_status("B connected", |s| s["link"] == "connected");
    da.wait_status("A connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    // The automatic sync ends one way or the other: refused by B's own cap (1 removal, cap
    // 0), or (what the pool policy alone would do) done.
    let s = db_.wait_status("B's automatic sync ended", |s| {
        s["target"]["revision"] == 1
            && s["operation"].is_null()
            && (s["state"] == "in-sync"
                || s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cap of 0")))
    });
    let installed = b.pacman_ok(&["-Qq"]);
    for p in ["keepme-sshd", "keepme-firewall", "stray"] {
        assert!(
            installed.lines().any(|l| l == p),
            "{p} was removed by the automatic sync: {s}\n{}",
            db_.log()
        );
    }
    assert_eq!(s["state"], "diverged", "{s}");

    // Asked for, the sync removes the stray package and keeps the protected ones, and says so.
    let preview = db_.cli_code(&["preview"], 0);
    assert!(
        preview.contains("remove    stray")
            && preview.contains("install   newer 1.0-1")
            && preview.contains("kept: keepme-firewall (protected)")
            && preview.contains("kept: keepme-sshd (protected)"),
        "{preview}"
    );
    let out = db_.cli(&["sync", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Progress: one line per transaction and per package step, no "starting" repeats.
    let progress = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = progress.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with(":: transaction 1 of ")),
        "{progress}"
    );
    assert!(
        progress.contains(" (1 install)") && progress.contains(" (1 removal)"),
        "each transaction says what it does:\n{progress}"
    );
    assert!(!progress.contains(":: starting"), "{progress}");
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        if l.starts_with(":: transaction ") {
            seen.clear();
        }
        assert!(seen.insert(*l), "a progress line repeats:\n{progress}");
    }
    assert!(
        progress.contains("(newer)") && progress.contains("(stray)"),
        "each package step is named:\n{progress}"
    );
    let installed = b.pacman_ok(&["-Qq"]);
    assert!(!installed.lines().any(|l| l == "stray"), "{installed}");
    assert!(installed.lines().any(|l| l == "keepme-sshd"), "{installed}");
    let status = db_.cli_code(&["status"], 0);
    assert!(
        status.contains("state:       in-sync, 2 packages kept by policy")
            && status.contains("kept:        keepme-sshd (protected)"),
        "{status}"
    );
    let again = db_.cli_code(&["sync", "--yes"], 3);
    assert!(
        again.contains("nothing to do") && again.contains("kept: keepme-firewall (protected)"),
        "{again}"
    );
    let json = db_.status();
    assert_eq!(json["kept"].as_array().unwrap().len(), 2, "{json}");
}

/// A pool target larger than the machine accepts (`max_packages`, issue 12, item 8) is not
/// fetched nor adopted, and the status says why and what to do.
#[test]
fn a_target_larger_than_max_packages_is_refused() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    publish_everywhere(
        &[&a, &b],
        &[
            ("p1", "1.0-1", &[]),
            ("p2", "1.0-1", &[]),
            ("p3", "1.0-1", &[]),
            ("p4", "1.0-1", &[]),
        ],
    );
    a.pacman_ok(&["-Sy", "p1", "p2", "p3", "p4"]);
    b.pacman_ok(&["-Sy", "p1"]);
    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("c.db"), None);
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let da = Daemon::start(&write_config(&a, "a", Some((&coord.url(), &join))));
    let b_config = write_config(&b, "b", Some((&coord.url(), &join)));
    let text = std::fs::read_to_string(&b_config).unwrap();
    std::fs::write(&b_config, format!("max_packages = 3\n{text}")).unwrap();
    let db_ = Daemon::start(&b_config);
    db_.wait_status("B connected", |s| s["link"] == "connected");
    da.wait_status("A connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    let s = db_.wait_status("B refused or adopted the target", |s| {
        !s["target"].is_null()
            || s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("max_packages"))
    });
    let why = s["last_error"].as_str().unwrap();
    assert!(
        why.contains("holds 4 packages, more than this machine accepts (3)")
            && why.contains("max_packages"),
        "{s}"
    );
    assert!(s["target"].is_null(), "{s}");
}
