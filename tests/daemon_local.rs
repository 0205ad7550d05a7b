//! pacpoold without a coordinator: snapshots on start and on notify, history, revert
//! (offline by design), pacman's lock, authorization by peer credentials, and a crash in
//! the middle of an operation. Real pacman in a sandbox, real daemon and CLI processes.

mod support;

use support::daemon::{Daemon, cli_as, write_config};
use support::{PkgSpec, Sandbox, host_arch};

fn pkg(sb: &Sandbox, name: &str, version: &str) -> std::path::PathBuf {
    sb.build_package(&PkgSpec::new(name, version).arch(&host_arch()))
}

fn local_hash(sb: &Sandbox) -> String {
    sb.pacman_paths().read().unwrap().snapshot.hash().to_hex()
}

#[test]
fn revert_to_previous_works_offline_and_reaches_the_recorded_state() {
    let sb = Sandbox::new();
    sb.publish(&[pkg(&sb, "alpha", "1.0-1"), pkg(&sb, "beta", "1.0-1")]);
    sb.pacman_ok(&["-Sy", "alpha", "beta"]);
    let first = local_hash(&sb);
    let d = Daemon::start(&write_config(&sb, "a", None));

    let status = d.status();
    assert_eq!(status["link"], "not-configured");
    assert_eq!(status["current"]["hash"], first.as_str());
    assert_eq!(
        status["state"], "unknown",
        "no pool target without a coordinator"
    );
    assert!(status["previous"].is_null());
    // Nothing to revert to yet.
    let out = d.cli(&["revert", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The user changes packages outside pacpool; the hook (here: notify) records it.
    sb.publish(&[pkg(&sb, "alpha", "2.0-1"), pkg(&sb, "gamma", "1.0-1")]);
    sb.pacman_ok(&["-Syu"]);
    sb.pacman_ok(&["-S", "gamma"]);
    d.cli_code(&["notify"], 0);
    let snaps = d.cli_code(&["snapshots", "--json"], 0);
    let snaps: serde_json::Value = serde_json::from_str(&snaps).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    assert_eq!(snaps[1]["hash"], first.as_str());
    assert_eq!(snaps[0]["trigger"], "hook");

    // Diff by recorded ids goes through the daemon.
    let first_id = snaps[1]["id"].to_string();
    let second_id = snaps[0]["id"].to_string();
    let diff = d.cli_code(&["diff", &first_id, &second_id], 0);
    assert!(
        diff.contains("+ gamma 1.0-1") && diff.contains("~ alpha 1.0-1 -> 2.0-1"),
        "{diff}"
    );

    // Revert: alpha 1.0 comes from pacman's cache, gamma is removed.
    let out = d.cli_code(&["revert", "--yes", "--json"], 0);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["counts"]["downgrade"], 1);
    assert_eq!(outcome["counts"]["remove"], 1);
    assert_eq!(
        local_hash(&sb),
        first,
        "the machine is back at the first state"
    );
    let history = d.cli_code(&["history", "--json"], 0);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history[0]["kind"], "revert");
    assert_eq!(history[0]["state"], "completed");

    // Revert --to a hash prefix goes forward again.
    let second_hash = snaps[0]["hash"].as_str().unwrap();
    d.cli_code(&["revert", "--yes", "--to", &second_hash[..10]], 0);
    assert_eq!(local_hash(&sb), second_hash);
    // Unknown ids are a clear error.
    let out = d.cli(&["revert", "--yes", "--to", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recorded state"));
}

#[test]
fn pacman_lock_busy_and_authorization() {
    let sb = Sandbox::new();
    sb.publish(&[pkg(&sb, "alpha", "1.0-1")]);
    sb.pacman_ok(&["-Sy", "alpha"]);
    let d = Daemon::start(&write_config(&sb, "b", None));
    sb.publish(&[pkg(&sb, "alpha", "2.0-1")]);
    sb.pacman_ok(&["-Syu"]);
    d.cli_code(&["notify"], 0);
    let before = local_hash(&sb);

    // Another pacman holds the lock: a clear "pacman is in use", nothing changed.
    std::fs::write(sb.lock_file(), "").unwrap();
    let out = d.cli(&["revert", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pacman is in use"));
    assert!(
        sb.lock_file().exists(),
        "pacpool never removes someone else's lock"
    );
    std::fs::remove_file(sb.lock_file()).unwrap();
    assert_eq!(local_hash(&sb), before);

    // An unprivileged user not in the socket group reads status but may not act.
    let out = cli_as(
        &d.socket,
        &["status", "--json"],
        Some(("nobody", "nogroup")),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["can_act"], false);
    let out = cli_as(&d.socket, &["revert", "--yes"], Some(("nobody", "nogroup")));
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not change packages"));
    assert_eq!(local_hash(&sb), before);

    // Waybar output is one JSON line with text, tooltip and class.
    let line = d.cli_code(&["status", "--waybar"], 0);
    let w: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(w["class"], "unknown");
    assert!(w["text"].as_str().unwrap().starts_with("pacpool"));

    // Malformed and hostile requests on the raw socket get errors; the daemon keeps serving.
    use std::io::{BufRead, BufReader, Write};
    let mut raw = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    let mut reader = BufReader::new(raw.try_clone().unwrap());
    for bad in [
        "not json\n",
        "{\"v\":1,\"cmd\":\"rm -rf /\"}\n",
        "{\"v\":99,\"cmd\":\"status\"}\n",
        "{\"v\":1,\"cmd\":\"revert\",\"to\":\"--config=/x\"}\n",
    ] {
        raw.write_all(bad.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["type"], "error", "{bad} -> {line}");
    }
    assert_eq!(local_hash(&sb), before);
    d.cli_code(&["status"], 0);
}

#[test]
fn daemon_killed_mid_operation_reports_the_truth_on_restart() {
    let sb = Sandbox::new();
    sb.publish(&[pkg(&sb, "alpha", "1.0-1")]);
    sb.pacman_ok(&["-Sy", "alpha"]);
    let config = write_config(&sb, "c", None);
    let mut d = Daemon::start(&config);
    sb.publish(&[pkg(&sb, "alpha", "2.0-1")]);
    sb.pacman_ok(&["-Syu"]);
    d.cli_code(&["notify"], 0);
    // Hold pacman's lock so the revert waits inside the daemon, then kill the daemon.
    std::fs::write(sb.lock_file(), "").unwrap();
    let socket = d.socket.clone();
    let waiter = std::thread::spawn(move || cli_as(&socket, &["revert", "--yes"], None));
    // The revert has started once the daemon reports it as running.
    loop {
        let s = d.status();
        if !s["operation"].is_null() {
            break;
        }
        std::thread::yield_now();
    }
    d.kill();
    let out = waiter.join().unwrap();
    assert_ne!(out.status.code(), Some(0));
    std::fs::remove_file(sb.lock_file()).unwrap();

    let d = Daemon::start(&config);
    let history: serde_json::Value =
        serde_json::from_str(&d.cli_code(&["history", "--json"], 0)).unwrap();
    assert_eq!(history[0]["kind"], "revert");
    assert_eq!(history[0]["state"], "interrupted");
    let status = d.status();
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert_eq!(status["current"]["hash"], local_hash(&sb).as_str());
    // And the next revert converges.
    d.cli_code(&["revert", "--yes"], 0);
}
