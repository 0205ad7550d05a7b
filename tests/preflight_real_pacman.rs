//! Before and after an apply (issue #17), with the real pacman in sandbox roots: download
//! and installed sizes from real sync databases, a reboot-needing package named, a keyring
//! upgraded in its own first transaction (order read from pacman.log), `.pacnew` files named
//! from pacman's log, and a sync that would not fit refused by a real pacpoold before pacman
//! runs.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use pacpool::plan::{Policy, plan};
use pacpool::preflight::{self, RebootRules};
use pacpool::snapshot::Snapshot;
use support::Sandbox;
use support::daemon::{Daemon, write_config};

/// Builds `name-version-any.pkg.tar.zst` holding `usr/share/NAME/blob` (`payload` bytes) and,
/// when given, `etc/NAME.conf` listed in `backup`. `.PKGINFO`'s `size` (what repo-add writes
/// as `%ISIZE%` and pacman as `%SIZE%`) is `declared`, else the bytes of the files.
fn build(
    sb: &Sandbox,
    name: &str,
    version: &str,
    payload: usize,
    conf: Option<&str>,
    declared: Option<u64>,
) -> PathBuf {
    let stage = sb.base().join("stage").join(format!("{name}-{version}"));
    let share = stage.join("usr/share").join(name);
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("blob"), vec![b'x'; payload]).unwrap();
    let mut size = payload as u64;
    let mut extra = String::new();
    let mut dirs = vec!["usr"];
    if let Some(text) = conf {
        fs::create_dir_all(stage.join("etc")).unwrap();
        fs::write(stage.join(format!("etc/{name}.conf")), text).unwrap();
        size += text.len() as u64;
        extra = format!("backup = etc/{name}.conf\n");
        dirs.push("etc");
    }
    fs::write(
        stage.join(".PKGINFO"),
        format!(
            "pkgname = {name}\npkgbase = {name}\npkgver = {version}\npkgdesc = test\n\
             url = https://example.invalid\nbuilddate = 1700000000\npackager = tests\n\
             size = {}\narch = any\nlicense = MIT\n{extra}",
            declared.unwrap_or(size)
        ),
    )
    .unwrap();
    let out = sb
        .base()
        .join("pkgs")
        .join(format!("{name}-{version}-any.pkg.tar.zst"));
    let st = Command::new("bsdtar")
        .current_dir(&stage)
        .args(["--zstd", "-cf"])
        .arg(&out)
        .arg(".PKGINFO")
        .args(&dirs)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

fn local_hash(sb: &Sandbox) -> String {
    sb.pacman_paths().read().unwrap().snapshot.hash().to_hex()
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

/// The current state with `changes` (name, version) applied: new names are installed
/// explicitly from the test repository.
fn target_with(current: &Snapshot, changes: &[(&str, &str)]) -> Snapshot {
    let mut pkgs = current.packages().to_vec();
    for (name, version) in changes {
        match pkgs.iter_mut().find(|p| p.name.as_str() == *name) {
            Some(p) => p.version = version.parse().unwrap(),
            None => {
                let mut p = pkgs[0].clone();
                p.name = name.parse().unwrap();
                p.version = version.parse().unwrap();
                pkgs.push(p);
            }
        }
    }
    Snapshot::new(pkgs).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn sizes_reboot_keyring_first_and_pacnew_with_real_pacman() {
    let sb = Sandbox::new();
    let v1 = [
        build(&sb, "tool", "1.0-1", 1000, None, None),
        build(&sb, "archlinux-keyring", "1-1", 200, None, None),
        build(&sb, "conf", "1.0-1", 10, Some("setting = 1\n"), None),
    ];
    sb.publish(&v1);
    sb.pacman_ok(&["-Sy", "tool", "archlinux-keyring", "conf"]);
    // The user edits the configuration file: the next version must not overwrite it.
    fs::write(sb.root().join("etc/conf.conf"), "setting = mine\n").unwrap();
    let v2 = [
        build(&sb, "tool", "2.0-1", 5000, None, None),
        build(&sb, "archlinux-keyring", "2-1", 300, None, None),
        build(&sb, "conf", "2.0-1", 10, Some("setting = 2\n"), None),
        build(&sb, "linux", "6.2-1", 700, None, None),
    ];
    sb.publish(&v2);
    sb.pacman_ok(&["-Sy"]);
    // One new file is in the cache already: it is not downloaded again.
    fs::copy(&v2[3], sb.cachedir().join(v2[3].file_name().unwrap())).unwrap();

    let m = sb.pacman_paths().read().unwrap();
    let target = target_with(
        &m.snapshot,
        &[
            ("tool", "2.0-1"),
            ("archlinux-keyring", "2-1"),
            ("conf", "2.0-1"),
            ("linux", "6.2-1"),
        ],
    );
    let p = plan(
        &m.snapshot,
        &target,
        &m.local,
        &m.availability,
        &Policy::default().compile().unwrap(),
    );
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    assert_eq!(p.actions.len(), 4, "{:?}", p.actions);

    // Download: %CSIZE% of the three files the cache lacks (repo-add wrote their lengths).
    // Installed size: %ISIZE% of the new versions minus the local database's %SIZE%.
    let sizes = preflight::sizes(&p, &m.availability, &m.local, None);
    let expected_download = len(&v2[0]) + len(&v2[1]) + len(&v2[2]);
    assert_eq!(sizes.download, expected_download, "{sizes:?}");
    assert_eq!(
        sizes.installed_change,
        // tool, keyring, linux (conf's size is unchanged).
        (5000 - 1000) + (300 - 200) + 700,
        "{sizes:?}"
    );
    assert!(sizes.download_unknown.is_empty() && sizes.installed_unknown.is_empty());
    // pacman agrees on the installed size it recorded for the old version.
    let qi = sb.pacman_ok(&["-Qi", "tool"]);
    assert!(qi.contains("Installed Size  : 1000.00 B"), "{qi}");
    // Free space of the sandbox's real file systems, and what the plan needs there.
    let cache_fs = preflight::free_space(&sb.cachedir()).unwrap();
    let root_fs = preflight::free_space(&sb.root()).unwrap();
    let spaces = preflight::spaces(&sizes, (&sb.cachedir(), cache_fs), (&sb.root(), root_fs));
    assert_eq!(spaces.len(), 1, "the sandbox is one file system");
    assert_eq!(spaces[0].needed, expected_download + 4800);
    assert!(preflight::check_space(&spaces).is_ok(), "{spaces:?}");

    // A package named like a kernel needs a reboot; the others do not.
    let reboot: Vec<String> = RebootRules::default()
        .needs_reboot(&p)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(reboot, ["linux"]);

    // Apply with the real pacman.
    let log_before = sb.log_text().len();
    let conf = pacpool::pacman_conf::PacmanConf::load(&sb.config()).unwrap();
    let trust = pacpool::trust::TrustRule::new(Some(&conf), m.availability.clone(), None, false);
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let report = pacpool::apply::apply(
        &p,
        &sb.pacman_settings(),
        &Default::default(),
        &trust,
        &mut |_| {},
        &cancel,
    )
    .await
    .unwrap();
    assert!(report.succeeded(), "{report:?}");
    let log = sb.log_text()[log_before..].to_owned();

    // The keyring went first, in a transaction of its own: pacman's log has its command line
    // and its upgrade before anything else of this run.
    let runs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[PACMAN] Running"))
        .collect();
    assert!(runs.len() >= 2, "{log}");
    assert!(
        runs[0].contains("archlinux-keyring") && !runs[0].contains("tool"),
        "{}",
        runs[0]
    );
    let upgraded: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("[ALPM] upgraded ").map(|(_, r)| r))
        .collect();
    assert!(
        upgraded[0].starts_with("archlinux-keyring "),
        "{upgraded:?}"
    );

    // The modified configuration file was kept and the new one installed as .pacnew; the
    // log of this run says so, and that is what the result names.
    let files = preflight::config_files_in_log(&log);
    let root = sb.root();
    let expect_path = root.join("etc/conf.conf");
    assert_eq!(files.len(), 1, "{log}");
    assert_eq!(Path::new(&files[0].path), expect_path);
    assert_eq!(
        files[0].saved_as,
        format!("{}.pacnew", expect_path.display())
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/conf.conf.pacnew")).unwrap(),
        "setting = 2\n"
    );
    assert_eq!(
        fs::read_to_string(&expect_path).unwrap(),
        "setting = mine\n"
    );
}

/// A revert whose package declares more installed size than the file system has is refused
/// by pacpoold before pacman runs: the root and pacman's log are unchanged. Then a revert
/// that downgrades a modified configuration file names the `.pacnew` pacman left.
#[test]
fn pacpoold_refuses_a_sync_that_does_not_fit_and_names_pacnew_files() {
    let sb = Sandbox::new();
    // `huge` says it installs 1 PiB (its .PKGINFO `size`, so the database's %ISIZE%).
    sb.publish(&[
        build(&sb, "huge", "1.0-1", 10, None, Some(1 << 50)),
        build(&sb, "conf", "1.0-1", 10, Some("setting = 1\n"), None),
    ]);
    sb.pacman_ok(&["-Sy", "conf"]);
    let d = Daemon::start(&write_config(&sb, "a", None));

    // State 2: huge installed (the sandbox's pacman.conf has no CheckSpace: pacman lets it).
    sb.pacman_ok(&["-S", "huge"]);
    d.cli_code(&["notify"], 0);
    let with_huge = local_hash(&sb);
    // State 3: huge removed again; revert to state 2 would install it.
    sb.pacman_ok(&["-R", "huge"]);
    d.cli_code(&["notify"], 0);
    let root_before = sb.pacman_ok(&["-Q"]);
    let log_before = sb.log_text();
    let out = d.cli(&["revert", "--to", &with_huge, "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not enough free space on") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(sb.pacman_ok(&["-Q"]), root_before);
    assert_eq!(sb.log_text(), log_before, "pacman never ran");
    let history = d.cli_code(&["history"], 0);
    assert!(history.contains("not enough free space"), "{history}");

    // .pacnew after a revert: conf 2.0 over a modified file, then back to 1.0.
    let conf1 = local_hash(&sb);
    sb.publish(&[build(&sb, "conf", "2.0-1", 10, Some("setting = 2\n"), None)]);
    fs::write(sb.root().join("etc/conf.conf"), "setting = mine\n").unwrap();
    sb.pacman_ok(&["-Sy", "conf"]);
    let _ = fs::remove_file(sb.root().join("etc/conf.conf.pacnew"));
    d.cli_code(&["notify"], 0);
    let out = d.cli_code(&["revert", "--to", &conf1, "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    let files = outcome["config_files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{outcome}");
    let pacnew = sb.root().join("etc/conf.conf.pacnew");
    assert_eq!(files[0]["saved_as"], pacnew.display().to_string());
    assert_eq!(fs::read_to_string(&pacnew).unwrap(), "setting = 1\n");
    let history = d.cli_code(&["history"], 0);
    assert!(
        history.contains(&format!("to merge: {}", pacnew.display())),
        "{history}"
    );
}

/// `pacpool preview` on a machine behind its pool: download size, installed-size change,
/// free space, the reboot a kernel needs, and a package pacman.conf's `IgnorePkg` holds back,
/// in text and JSON (real coordinator, two real pacpoold).
#[test]
fn preview_tells_sizes_space_reboot_and_held_back() {
    use support::coordinator::Coordinator;
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let common = [
        build(&a, "tool", "1.0-1", 1000, None, None),
        build(&a, "linux", "6.2-1", 700, None, None),
        build(&a, "pinned", "1.0-1", 10, None, None),
    ];
    b.publish(&common);
    a.publish(&common);
    a.pacman_ok(&["-Sy", "tool", "linux", "pinned"]);
    a.publish(&[build(&a, "pinned", "2.0-1", 20, None, None)]);
    a.pacman_ok(&["-Syu"]);
    b.pacman_ok(&["-Sy", "pinned"]);
    // B's pacman.conf holds pinned back.
    let conf = fs::read_to_string(b.config()).unwrap();
    fs::write(
        b.config(),
        conf.replace("[options]\n", "[options]\nIgnorePkg = pinned\n"),
    )
    .unwrap();

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("coordinator.db"), None);
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let da = Daemon::start(&write_config(&a, "alice", Some((&coord.url(), &join))));
    let db_ = Daemon::start(&write_config(&b, "bob", Some((&coord.url(), &join))));
    da.wait_status("A connected", |s| s["link"] == "connected");
    db_.wait_status("B connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    db_.wait_status("B sees revision 1", |s| s["target"]["revision"] == 1);

    let json = db_.cli_code(&["preview", "--json"], 0);
    let p: serde_json::Value = serde_json::from_str(&json).unwrap();
    let csize = |f: &str| len(&b.repo_dir().join(f));
    let download = csize("tool-1.0-1-any.pkg.tar.zst") + csize("linux-6.2-1-any.pkg.tar.zst");
    assert_eq!(p["sizes"]["download"], download, "{p}");
    assert_eq!(p["sizes"]["installed_change"], 1700, "{p}");
    assert_eq!(p["reboot"], serde_json::json!(["linux"]), "{p}");
    assert_eq!(p["held_back"][0]["name"], "pinned", "{p}");
    assert_eq!(p["held_back"][0]["by"], "IgnorePkg = pinned", "{p}");
    let space = p["space"].as_array().unwrap();
    assert_eq!(space.len(), 1, "{p}");
    assert_eq!(space[0]["needed"], download + 1700, "{p}");
    assert!(space[0]["free"].as_u64().unwrap() > download + 1700);

    let text = db_.cli_code(&["preview"], 0);
    eprintln!("{text}");
    assert!(text.starts_with("2 installs\n"), "{text}");
    assert!(
        text.contains(&format!(
            "download: {}; installed size: +1.7 KiB\n",
            preflight::bytes(download)
        )),
        "{text}"
    );
    assert!(text.contains("reboot needed afterwards: linux\n"), "{text}");
    assert!(
        text.contains("held back: pinned (IgnorePkg = pinned in pacman.conf)\n")
            && !text.contains("kept: pinned"),
        "{text}"
    );
    assert!(text.contains("free space: "), "{text}");

    // The sync leaves pinned alone (pacman would otherwise install it anyway under
    // --noconfirm) and says a reboot is needed.
    let synced = db_.cli_code(&["sync", "--yes"], 0);
    assert!(
        synced.ends_with("sync done: 2 installs; reboot needed (linux)\n"),
        "{synced}"
    );
    assert!(b.pacman_ok(&["-Q", "pinned"]).contains("1.0-1"));

    // Drift attribution. The state the sync made is the sync operation's doing...
    let snaps: serde_json::Value =
        serde_json::from_str(&db_.cli_code(&["snapshots", "--json"], 0)).unwrap();
    let ops: serde_json::Value =
        serde_json::from_str(&db_.cli_code(&["history", "--json"], 0)).unwrap();
    let sync_id = ops[0]["id"].as_i64().unwrap();
    assert_eq!(ops[0]["kind"], "sync", "{ops}");
    assert_eq!(
        snaps[0]["source"],
        serde_json::json!({"by": "pacpool", "operation": "sync", "local_id": sync_id}),
        "{snaps}"
    );
    db_.wait_status("B in sync", |s| s["state"] == "in-sync");
    // ...and pacman run by hand moves the machine off the target: the status says who, with
    // the command line from pacman.log (the database refresh before it changed nothing).
    b.publish(&[build(&b, "extra", "1.0-1", 10, None, None)]);
    b.pacman_ok(&["-Sy"]);
    b.pacman_ok(&["-S", "extra"]);
    db_.cli_code(&["notify"], 0);
    let st = db_.wait_status("B ahead", |s| s["state"] == "ahead");
    let off = &st["off_target"];
    assert_eq!(off["revision"], 1, "{st}");
    assert_eq!(off["source"]["by"], "pacman", "{st}");
    let runs = off["source"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{st}");
    let cmd = runs[0]["command"].as_str().unwrap().to_owned();
    assert!(
        cmd.starts_with("pacman --noconfirm ") && cmd.ends_with(" -S extra"),
        "{cmd}"
    );
    let text = db_.cli_code(&["status"], 0);
    eprintln!("{text}");
    assert!(
        text.contains("off target:  moved off the target (revision 1) at ")
            && text.contains(&format!(" by pacman: '{cmd}' at ")),
        "{text}"
    );
    let snaps = db_.cli_code(&["snapshots"], 0);
    eprintln!("{snaps}");
    let lines: Vec<&str> = snaps.lines().collect();
    assert!(
        lines[0].ends_with("trigger   snapper  changed by"),
        "{snaps}"
    );
    assert!(
        lines[1].contains(" hook ") && lines[1].contains(&format!("pacman: '{cmd}' at ")),
        "{snaps}"
    );
    assert!(
        lines[2].ends_with(&format!("pacpool sync (operation {sync_id})")),
        "{snaps}"
    );

    // The coordinator keeps the same attribution in the endpoint's history.
    let endpoints = coord.admin("GET", &format!("/pools/{}/endpoints", pool["id"]), None);
    let b_id = endpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "bob")
        .unwrap()["id"]
        .clone();
    let now_hash = local_hash(&b);
    let mut changes = serde_json::Value::Null;
    for _ in 0..200 {
        changes = coord.admin("GET", &format!("/endpoints/{b_id}/changes"), None);
        if changes["items"][0]["state"] == now_hash.as_str() {
            break;
        }
        // The report travels over the WebSocket after the notify; wait for it briefly.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let items = changes["items"].as_array().unwrap();
    assert_eq!(items[0]["state"], now_hash.as_str(), "{changes}");
    assert_eq!(items[0]["source"]["runs"][0]["command"], cmd.as_str());
    assert_eq!(items[1]["source"]["by"], "pacpool", "{changes}");
    assert_eq!(items[1]["source"]["operation"], "sync", "{changes}");
    assert_eq!(items[1]["source"]["local_id"], sync_id, "{changes}");
    let show = Command::new(env!("CARGO_BIN_EXE_pacpool"))
        .args(["admin", "endpoints", "show", &b_id.to_string()])
        .env("PACPOOL_ADMIN_URL", coord.url())
        .env("PACPOOL_ADMIN_TOKEN", support::coordinator::ADMIN)
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    eprintln!("{show}");
    assert!(
        show.contains(&format!("changed by: pacman: '{cmd}' at ")),
        "{show}"
    );

    // A sync the coordinator asks for is attributed to that request too.
    let op = coord.admin(
        "POST",
        &format!("/endpoints/{b_id}/operations"),
        Some(serde_json::json!({"kind": "sync-to-latest"})),
    );
    let st = db_.wait_status("B back in sync", |s| {
        s["state"] == "in-sync" && s["operation"].is_null()
    });
    assert!(st.get("off_target").is_none(), "{st}");
    let snaps: serde_json::Value =
        serde_json::from_str(&db_.cli_code(&["snapshots", "--json"], 0)).unwrap();
    assert_eq!(snaps[0]["source"]["operation"], "sync", "{snaps}");
    assert_eq!(snaps[0]["source"]["requested"], op["id"], "{snaps}");
    assert!(b.pacman(&["-Q", "extra"]).status.code() == Some(1));
}

/// `sleeper-VERSION-any.pkg.tar.zst` holding `usr/bin/sleeper`, a copy of the host's `sleep`.
fn build_sleeper(sb: &Sandbox, version: &str) -> PathBuf {
    let stage = sb.base().join("stage").join(format!("sleeper-{version}"));
    fs::create_dir_all(stage.join("usr/bin")).unwrap();
    let sleep = support::find_in_path("sleep").expect("sleep on PATH");
    fs::copy(&sleep, stage.join("usr/bin/sleeper")).unwrap();
    let size = len(&stage.join("usr/bin/sleeper"));
    fs::write(
        stage.join(".PKGINFO"),
        format!(
            "pkgname = sleeper\npkgbase = sleeper\npkgver = {version}\npkgdesc = test\n\
             url = https://example.invalid\nbuilddate = 1700000000\npackager = tests\n\
             size = {size}\narch = any\nlicense = MIT\n"
        ),
    )
    .unwrap();
    let out = sb
        .base()
        .join("pkgs")
        .join(format!("sleeper-{version}-any.pkg.tar.zst"));
    let st = Command::new("bsdtar")
        .current_dir(&stage)
        .args(["--zstd", "-cf"])
        .arg(&out)
        .args([".PKGINFO", "usr"])
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// Kills the child when the test ends, however it ends.
struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process running a binary that an operation replaces is named in the result as still
/// running replaced files (its `/proc/PID/maps` shows the old file as deleted).
#[test]
fn a_process_running_a_replaced_binary_is_reported() {
    let sb = Sandbox::new();
    sb.publish(&[build_sleeper(&sb, "1.0-1")]);
    sb.pacman_ok(&["-Sy", "sleeper"]);
    let first = local_hash(&sb);
    let d = Daemon::start(&write_config(&sb, "a", None));
    sb.publish(&[build_sleeper(&sb, "2.0-1")]);
    sb.pacman_ok(&["-Sy", "sleeper"]);
    d.cli_code(&["notify"], 0);
    let binary = sb.root().join("usr/bin/sleeper");
    let mut child = Reap(Command::new(&binary).arg("600").spawn().unwrap());
    let pid = child.0.id();
    // Once the process runs the binary, its maps name it (not deleted yet).
    let maps = PathBuf::from(format!("/proc/{pid}/maps"));
    while !fs::read_to_string(&maps)
        .unwrap_or_default()
        .contains(binary.to_str().unwrap())
    {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "{} exited",
            binary.display()
        );
        std::thread::yield_now();
    }

    // Reverting to 1.0 replaces the binary under the running process.
    let out = d.cli_code(&["revert", "--to", &first, "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    let stale = outcome["restart"].as_array().unwrap();
    let ours = stale
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not reported: {outcome}"));
    assert_eq!(
        ours["files"],
        serde_json::json!([binary.display().to_string()])
    );
    assert_eq!(ours["command"], "sleeper");
    assert!(
        outcome["message"].as_str().unwrap().contains(&format!(
            "still running replaced files: sleeper (pid {pid})"
        )) || outcome["message"]
            .as_str()
            .unwrap()
            .contains(&format!(".service (pid {pid})")),
        "{outcome}"
    );
    drop(child);
}

/// `name-version-any.pkg.tar.zst` holding `files` (path under the root, contents).
fn build_files(sb: &Sandbox, name: &str, version: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let stage = sb.base().join("stage").join(format!("{name}-{version}"));
    let mut size = 0;
    let mut tops = std::collections::BTreeSet::new();
    for (path, bytes) in files {
        let p = stage.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        size += bytes.len();
        tops.insert(path.split('/').next().unwrap().to_owned());
    }
    fs::write(
        stage.join(".PKGINFO"),
        format!(
            "pkgname = {name}\npkgbase = {name}\npkgver = {version}\npkgdesc = test\n\
             url = https://example.invalid\nbuilddate = 1700000000\npackager = tests\n\
             size = {size}\narch = any\nlicense = MIT\n"
        ),
    )
    .unwrap();
    let out = sb
        .base()
        .join("pkgs")
        .join(format!("{name}-{version}-any.pkg.tar.zst"));
    let st = Command::new("bsdtar")
        .current_dir(&stage)
        .args(["--zstd", "-cf"])
        .arg(&out)
        .arg(".PKGINFO")
        .args(&tops)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// Adds `line` to the top-level keys of a pacpoold.toml written by `write_config`.
fn config_with(config: &Path, line: &str) {
    let text = fs::read_to_string(config).unwrap();
    fs::write(config, format!("{line}\n{text}")).unwrap();
}

/// After a revert that replaces the kernel package, the running kernel (its release read
/// from the configured file, as `uname -r` would print it) has no modules directory under
/// the root any more: the result says a reboot is needed.
#[test]
fn a_replaced_running_kernel_needs_a_reboot() {
    let sb = Sandbox::new();
    let linux = |version: &str, release: &str| {
        let dep = format!("usr/lib/modules/{release}/modules.dep");
        let ko = format!("usr/lib/modules/{release}/kernel/test.ko");
        build_files(&sb, "linux", version, &[(&dep, b""), (&ko, b"ko")])
    };
    let new = linux("6.2.0-1", "6.2.0-test");
    let old = linux("6.1.0-1", "6.1.0-test");
    sb.publish(&[new]);
    sb.pacman_ok(&["-Sy", "linux"]);
    let with_new = local_hash(&sb);
    let release = sb.base().join("osrelease");
    fs::write(&release, "6.1.0-test\n").unwrap();
    let config = write_config(&sb, "a", None);
    config_with(
        &config,
        &format!("kernel_release_file = \"{}\"", release.display()),
    );
    let d = Daemon::start(&config);
    // The machine runs 6.1 (6.2 was undone and 6.1 booted, say).
    sb.pacman_ok(&["-U", old.to_str().unwrap()]);
    d.cli_code(&["notify"], 0);
    // Running 6.1 with 6.1's modules installed: nothing to say.
    assert!(sb.root().join("usr/lib/modules/6.1.0-test").is_dir());
    let out = d.cli_code(&["revert", "--to", &with_new, "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert!(!sb.root().join("usr/lib/modules/6.1.0-test").exists());
    assert_eq!(
        outcome["kernel"],
        serde_json::json!({"running": "6.1.0-test", "installed": ["6.2.0-test"]}),
        "{outcome}"
    );
    assert!(
        outcome["message"].as_str().unwrap().contains(
            "the running kernel 6.1.0-test has no modules installed any more (installed: 6.2.0-test): reboot"
        ),
        "{outcome}"
    );
    // The reboot rules name the package too (linux is a kernel).
    assert_eq!(outcome["reboot"], serde_json::json!(["linux"]), "{outcome}");
}

/// A mounted file system, unmounted (lazily, so a busy one goes too) when the test ends.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts with `mount ARGS... TARGET`; `None` with mount's complaint when not permitted.
fn mount(args: &[&str], target: &Path) -> Result<Mount, String> {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(Mount(target.to_owned()))
}

/// Recreates what `Sandbox::new` made under the root (hidden by a file system mounted there).
fn renew_root(sb: &Sandbox) {
    fs::create_dir_all(sb.dbpath()).unwrap();
    fs::create_dir_all(sb.root().join("var/log")).unwrap();
}

/// A sync whose packages would not fit on the root's small file system (a tmpfs of 4 MiB; the
/// package installs 8 MiB) is refused by pacpoold before pacman runs, and the root is as it
/// was: same packages, no file of the package, nothing in pacman's log.
#[test]
fn a_sync_that_would_overfill_a_small_file_system_is_refused() {
    use support::coordinator::Coordinator;
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let tmpfs = match mount(&["-t", "tmpfs", "-o", "size=4m", "pacpool-test"], &b.root()) {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED: cannot mount a tmpfs (needs root and mount permission): {why}");
            return;
        }
    };
    renew_root(&b);
    let pkgs = [
        build(&a, "small", "1.0-1", 10, None, None),
        build(&a, "big", "1.0-1", 8 << 20, None, None),
    ];
    a.publish(&pkgs);
    b.publish(&pkgs);
    a.pacman_ok(&["-Sy", "small", "big"]);
    b.pacman_ok(&["-Sy", "small"]);

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("coordinator.db"), None);
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let da = Daemon::start(&write_config(&a, "alice", Some((&coord.url(), &join))));
    let db_ = Daemon::start(&write_config(&b, "bob", Some((&coord.url(), &join))));
    da.wait_status("A connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    db_.wait_status("B behind", |s| {
        s["target"]["revision"] == 1 && s["state"] == "behind"
    });

    let preview: serde_json::Value =
        serde_json::from_str(&db_.cli_code(&["preview", "--json"], 0)).unwrap();
    let root_space = preview["space"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"] == "root")
        .unwrap_or_else(|| panic!("the root is its own file system: {preview}"))
        .clone();
    assert!(root_space["free"].as_u64().unwrap() <= 4 << 20, "{preview}");
    assert_eq!(root_space["needed"], 8 << 20, "{preview}");

    let packages = b.pacman_ok(&["-Q"]);
    let log = b.log_text();
    let out = db_.cli(&["sync", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("not enough free space on {} (root)", b.root().display());
    assert!(
        stderr.contains(&expected) && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(b.pacman_ok(&["-Q"]), packages);
    assert!(!b.root().join("usr/share/big").exists());
    assert_eq!(b.log_text(), log, "pacman never ran");
    drop(db_);
    drop(tmpfs);
}

/// snapper on a loop-mounted btrfs image that is pacman's root: a revert is wrapped in a
/// pre/post pair described with the operation; reverting back names the snapper snapshot of
/// the state it returns to; with snap-pac's hook installed no pair is taken.
///
/// snapper's configuration lives where snapper keeps them (`/etc/snapper/configs`, listed in
/// `/etc/default/snapper`): the test's own, uniquely named, is deleted with
/// `snapper delete-config` when the test ends.
#[test]
fn snapper_pre_and_post_around_a_revert() {
    if support::find_in_path("snapper").is_none() || support::find_in_path("mkfs.btrfs").is_none() {
        println!(
            "SKIPPED: snapper or mkfs.btrfs is not installed (packaging/debian-deps.sh --with-snapper)"
        );
        return;
    }
    let sb = Sandbox::new();
    let image = sb.base().join("btrfs.img");
    fs::File::create(&image)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg(&image)
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "{mkfs:?}");
    let _mounted = match mount(&["-o", "loop", image.to_str().unwrap()], &sb.root()) {
        Ok(m) => m,
        Err(why) => {
            println!(
                "SKIPPED: cannot loop-mount a btrfs image (loop devices not allowed here?): {why}"
            );
            return;
        }
    };
    renew_root(&sb);
    let name = format!("pacpool-test-{}", std::process::id());
    struct Config(String);
    impl Drop for Config {
        fn drop(&mut self) {
            let _ = Command::new("snapper")
                .args(["--no-dbus", "-c", &self.0, "delete-config"])
                .output();
        }
    }
    let created = Command::new("snapper")
        .args(["--no-dbus", "-c", &name, "create-config"])
        .arg(sb.root())
        .output()
        .unwrap();
    let _config = Config(name.clone());
    assert!(created.status.success(), "{created:?}");

    sb.publish(&[build(&sb, "tool", "1.0-1", 100, None, None)]);
    sb.pacman_ok(&["-Sy", "tool"]);
    let first = local_hash(&sb);
    let config = write_config(&sb, "a", None);
    fs::write(
        &config,
        format!(
            "{}\n[snapper]\nconfig = \"{name}\"\n",
            fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let d = Daemon::start(&config);
    sb.publish(&[build(&sb, "tool", "2.0-1", 200, None, None)]);
    sb.pacman_ok(&["-Sy", "tool"]);
    d.cli_code(&["notify"], 0);
    let second = local_hash(&sb);

    let out = d.cli_code(&["revert", "--to", &first, "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    let pair = &outcome["snapper"];
    assert_eq!(pair["config"], name.as_str(), "{outcome}");
    let (pre, post) = (
        pair["pre"].as_u64().unwrap(),
        pair["post"].as_u64().unwrap(),
    );
    assert!(
        outcome["message"].as_str().unwrap().ends_with(&format!(
            "; snapper snapshots {pre} (pre) and {post} (post), config {name}"
        )),
        "{outcome}"
    );
    // snapper itself lists the pair, described with the operation.
    let list = Command::new("snapper")
        .args(["--no-dbus", "-c", &name, "--jsonout", "list"])
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let snaps = list[&name].as_array().unwrap();
    let by_number = |n: u64| snaps.iter().find(|s| s["number"] == n).unwrap().clone();
    let ops: serde_json::Value =
        serde_json::from_str(&d.cli_code(&["history", "--json"], 0)).unwrap();
    let description = format!("pacpool revert (operation {})", ops[0]["id"]);
    assert_eq!(by_number(pre)["type"], "pre", "{list}");
    assert_eq!(by_number(pre)["description"], description.as_str());
    assert_eq!(by_number(post)["type"], "post", "{list}");
    assert_eq!(by_number(post)["pre-number"], pre, "{list}");
    assert_eq!(by_number(post)["description"], description.as_str());

    // Going back to the second state: the pre snapshot above is that state's file system.
    let out = d.cli_code(&["revert", "--to", &second, "--yes"], 0);
    eprintln!("{out}");
    assert!(
        out.contains(&format!(
            "the file system as it was in that state: snapper snapshot {pre} (config {name})"
        )),
        "{out}"
    );
    let snapshots = d.cli_code(&["snapshots"], 0);
    eprintln!("{snapshots}");

    // snap-pac installed: it takes its own pairs, pacpool takes none.
    let hooks = sb.root().join("usr/share/libalpm/hooks");
    fs::create_dir_all(&hooks).unwrap();
    // (A valid hook pacman can parse, for a package that never changes.)
    fs::write(
        hooks.join("05-snap-pac-pre.hook"),
        "[Trigger]\nOperation = Upgrade\nType = Package\nTarget = no-such-package\n\n\
         [Action]\nWhen = PreTransaction\nExec = /usr/bin/true\n",
    )
    .unwrap();
    let out = d.cli_code(&["revert", "--to", &first, "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert!(outcome.get("snapper").is_none(), "{outcome}");
    drop(d);
}

/// A process that maps a library under the root, which a pool sync then replaces, is named in
/// the sync's result as still running replaced files. The library is a copy of the C library
/// this test runs with, loaded by `sleep` through `LD_LIBRARY_PATH`.
#[test]
fn a_process_mapping_a_library_a_sync_replaces_is_reported() {
    use support::coordinator::Coordinator;
    let libc = fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| l.find('/').map(|i| l[i..].to_owned()))
        .find(|p| p.ends_with("/libc.so.6"))
        .expect("this test maps libc.so.6");
    let bytes = fs::read(&libc).unwrap();
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let v1 = build_files(&a, "libcopy", "1.0-1", &[("usr/lib/libc.so.6", &bytes)]);
    let v2 = build_files(&a, "libcopy", "2.0-1", &[("usr/lib/libc.so.6", &bytes)]);
    a.publish(std::slice::from_ref(&v1));
    b.publish(std::slice::from_ref(&v1));
    a.pacman_ok(&["-Sy", "libcopy"]);
    b.pacman_ok(&["-Sy", "libcopy"]);
    a.publish(std::slice::from_ref(&v2));
    b.publish(std::slice::from_ref(&v2));
    a.pacman_ok(&["-Syu"]);

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("coordinator.db"), None);
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let da = Daemon::start(&write_config(&a, "alice", Some((&coord.url(), &join))));
    let db_ = Daemon::start(&write_config(&b, "bob", Some((&coord.url(), &join))));
    da.wait_status("A connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    db_.wait_status("B behind", |s| {
        s["target"]["revision"] == 1 && s["state"] == "behind"
    });

    let lib = b.root().join("usr/lib/libc.so.6");
    let sleep = support::find_in_path("sleep").expect("sleep on PATH");
    let mut child = Reap(
        Command::new(sleep)
            .arg("600")
            .env("LD_LIBRARY_PATH", b.root().join("usr/lib"))
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let maps = PathBuf::from(format!("/proc/{pid}/maps"));
    while !fs::read_to_string(&maps)
        .unwrap_or_default()
        .contains(lib.to_str().unwrap())
    {
        assert!(child.0.try_wait().unwrap().is_none(), "sleep exited");
        std::thread::yield_now();
    }

    let out = db_.cli_code(&["sync", "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert!(b.pacman_ok(&["-Q", "libcopy"]).contains("2.0-1"));
    let ours = outcome["restart"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not reported: {outcome}"))
        .clone();
    assert_eq!(
        ours["files"],
        serde_json::json!([lib.display().to_string()])
    );
    assert_eq!(ours["command"], "sleep");
    drop(child);
}
