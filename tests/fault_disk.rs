//! Fault injection: a full disk and a read-only state directory, on real tmpfs mounts.
//!
//! pacpoold's state directory lives on a small tmpfs (mounted by the test, as root) that is
//! filled to the last byte: recording a new package state fails with an error that says what
//! failed and what to do (CLI and `status`), an operation refuses to start rather than run
//! pacman without a record, nothing is corrupted (`PRAGMA integrity_check`), and once space
//! returns the next snapshot is recorded and reported to the coordinator. The same directory
//! remounted read-only: pacpoold refuses to start with a clear message, and starts again once
//! it is writable. The coordinator's database on a full tmpfs: writes fail with a clear
//! error, reads keep working, and writes work again once space returns.
//!
//! Every mount is undone by a guard on drop, also when an assertion fails.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::coordinator::{ADMIN, Coordinator};
use support::daemon::{Daemon, write_config};
use support::{PkgSpec, Sandbox, host_arch};

/// A tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pacpool-tmpfs-")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (run the tests as root, as tests/run.sh does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, opts: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {opts}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fills the file system to the last byte; returns the filler file.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x55u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..512]).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it open: detach it now, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn local_hash(sb: &Sandbox) -> String {
    sb.pacman_paths().read().unwrap().snapshot.hash().to_hex()
}

/// `config` with its `state_dir` moved to `dir`.
fn with_state_dir(config: &Path, dir: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("state_dir = ") {
                format!("state_dir = \"{}\"\n", dir.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(config, text).unwrap();
}

#[test]
fn daemon_state_dir_full_then_read_only() {
    let sb = Sandbox::new();
    let arch = host_arch();
    let extra: Vec<String> = (0..12).map(|i| format!("extra{i:02}")).collect();
    let mut pkgs = vec![sb.build_package(&PkgSpec::new("alpha", "1.0-1").arch(&arch))];
    pkgs.extend(
        extra
            .iter()
            .map(|n| sb.build_package(&PkgSpec::new(n, "1.0-1").arch(&arch))),
    );
    sb.publish(&pkgs);
    sb.pacman_ok(&["-Sy", "alpha"]);

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("coordinator.db"), None);
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({"name": "disk"})));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let config = write_config(
        &sb,
        "disk",
        Some((&coord.url(), join["token"].as_str().unwrap())),
    );
    let fs = Tmpfs::new("2m");
    let state = fs.path().join("state");
    with_state_dir(&config, &state);
    let store = state.join("state.db");

    let mut d = Daemon::start(&config);
    wait_until("the daemon to connect", Duration::from_secs(30), || {
        d.status()["link"] == "connected"
    });
    assert!(d.status()["last_error"].is_null());

    // Disk full: the next new state cannot be recorded. The first few may still fit in space
    // SQLite already holds, so change packages until the record fails.
    let filler = fs.fill();
    let mut failed = None;
    for name in &extra {
        sb.pacman_ok(&["-S", name]);
        let out = d.cli(&["notify"]);
        if !out.status.success() {
            failed = Some(out);
            break;
        }
    }
    let out = failed.expect("recording states never failed on a full disk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "the disk holding {} is full: free some space",
        store.display()
    );
    assert!(
        stderr.contains("cannot record the package state") && stderr.contains(&expected),
        "notify on a full disk: {stderr}"
    );
    let status = d.status();
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("cannot record the package state") && last_error.contains(&expected),
        "status on a full disk: {status}"
    );
    let human = d.cli_code(&["status"], 0);
    assert!(human.contains(&expected), "{human}");
    // An operation refuses to start: no pacman transaction without a record of it.
    let log_before = sb.log_text();
    let snaps: serde_json::Value =
        serde_json::from_str(&d.cli_code(&["snapshots", "--json"], 0)).unwrap();
    let first = snaps.as_array().unwrap().last().unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = d.cli(&["revert", "--yes", "--to", &first]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is full: free some space"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.log_text(), log_before, "pacman ran on a full disk");

    // Space returns: nothing is corrupted, the next snapshot is recorded and reported.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(integrity(&store), "ok");
    d.cli_code(&["notify"], 0);
    let status = d.status();
    assert!(status["last_error"].is_null(), "{status}");
    let now = local_hash(&sb);
    assert_eq!(status["current"]["hash"], now.as_str());
    wait_until(
        "the coordinator to receive the state",
        Duration::from_secs(30),
        || {
            let eps = coord.admin("GET", &format!("/pools/{}/endpoints", pool["id"]), None);
            eps[0]["current"] == now.as_str()
        },
    );

    // Read-only: pacpoold refuses to start and says why; it starts once writable again.
    assert!(d.stop().success());
    fs.remount("ro");
    let out = Command::new(env!("CARGO_BIN_EXE_pacpoold"))
        .arg("--config")
        .arg(&config)
        .env("PACPOOL_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "pacpoold ran on a read-only state dir"
    );
    assert!(
        stderr.contains(&format!(
            "state database {} is on a read-only file system: remount it read-write, or set state_dir in pacpoold.toml to a writable directory",
            store.display()
        )),
        "pacpoold on a read-only state dir: {stderr}"
    );
    fs.remount("rw");
    assert_eq!(integrity(&store), "ok");
    let d = Daemon::start(&config);
    sb.pacman_ok(&["-R", &extra[0]]);
    d.cli_code(&["notify"], 0);
    assert_eq!(d.status()["current"]["hash"], local_hash(&sb).as_str());
    drop(d);
    assert_eq!(integrity(&store), "ok");
}

/// A request to the coordinator: status and JSON body.
fn request(
    rt: &tokio::runtime::Runtime,
    c: &Coordinator,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}/api/v1{path}", c.url()))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    })
}

#[test]
fn coordinator_database_on_a_full_disk() {
    let fs = Tmpfs::new("4m");
    let db = fs.path().join("coordinator.db");
    let c = Coordinator::start(&db, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, _) = request(
        &rt,
        &c,
        reqwest::Method::POST,
        "/pools",
        Some(serde_json::json!({"name": "before"})),
    );
    assert_eq!(code, 201);
    let filler = fs.fill();
    // Writes fail with a clear error (the first may still fit in space SQLite holds).
    let mut refused = None;
    for i in 0..50 {
        let (code, body) = request(
            &rt,
            &c,
            reqwest::Method::POST,
            "/pools",
            Some(serde_json::json!({"name": format!("full-{i}")})),
        );
        if code >= 400 {
            refused = Some((code, body));
            break;
        }
    }
    let (code, body) = refused.expect("the coordinator never refused a write on a full disk");
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    eprintln!("coordinator on a full disk: {code} {body}");
    assert!(
        code >= 500 && message.to_lowercase().contains("full"),
        "a write on a full disk: {code} {body}"
    );
    // Reads still work.
    let (code, _) = request(&rt, &c, reqwest::Method::GET, "/pools", None);
    assert_eq!(code, 200);
    std::fs::remove_file(&filler).unwrap();
    let (code, body) = request(
        &rt,
        &c,
        reqwest::Method::POST,
        "/pools",
        Some(serde_json::json!({"name": "after"})),
    );
    assert_eq!(code, 201, "a write after space returned: {body}");
    drop(c);
    assert_eq!(integrity(&db), "ok");
}
