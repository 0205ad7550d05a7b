//! Hostile input on pacpoold's local socket and its authorization, against a real pacpoold
//! on a sandbox pacman root (real pacman 6, real CLI processes, real peer credentials).
//!
//! Each row sends one raw request line and expects an error `code`; after every row the
//! sandbox root is unchanged: `pacman -Q` and every file under the root (path, size,
//! modification time; the local database and pacman's log included).
//!
//! Authorization: `nobody` outside the socket group reads status but every action is refused
//! with a clear message; `nobody` with the group as a supplementary or primary group (given
//! by `setpriv`, no user is created) may act; one unprivileged user cannot hold every
//! connection slot. `tests/daemon_local.rs` has the first refusal and four malformed lines;
//! these tables extend it.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use pacpool::daemon::protocol::MAX_REQUEST_LINE;
use pacpool::daemon::socket::MAX_CLIENTS_PER_UID;
use support::coordinator::Coordinator;
use support::daemon::{Daemon, cli_as, write_config};
use support::{PkgSpec, Sandbox, host_arch};

/// The socket group of these tests: a group every Debian system has, that `nobody` is not in.
const GROUP: &str = "users";

fn group_id(name: &str) -> u32 {
    let text = std::fs::read_to_string("/etc/group").unwrap();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("group {name} missing from /etc/group"))
}

/// What must not change: pacman's view of the packages and every file under the root.
fn root_state(sb: &Sandbox) -> (String, Vec<String>) {
    let q = String::from_utf8(sb.pacman(&["-Q"]).stdout).unwrap();
    let mut files = Vec::new();
    let mut stack = vec![sb.root()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            files.push(format!(
                "{} {} {} {}",
                e.path().strip_prefix(sb.root()).unwrap().display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            ));
        }
    }
    files.sort();
    (q, files)
}

fn setup(name: &str) -> (Sandbox, Daemon) {
    setup_with(name, None)
}

/// A sandbox with alpha and beta installed, a daemon (of `coordinator`'s pool when given)
/// whose socket group is [`GROUP`], and two recorded states (alpha 1.0, then 2.0).
fn setup_with(name: &str, coordinator: Option<(&str, &str)>) -> (Sandbox, Daemon) {
    let sb = Sandbox::new();
    let pkg = |n: &str, v: &str| sb.build_package(&PkgSpec::new(n, v).arch(&host_arch()));
    sb.publish(&[pkg("alpha", "1.0-1"), pkg("beta", "1.0-1")]);
    sb.pacman_ok(&["-Sy", "alpha", "beta"]);
    let config = write_config(&sb, name, coordinator);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "socket_group = \"pacpool-test-nonexistent\"",
        &format!("socket_group = \"{GROUP}\""),
    );
    assert!(text.contains(GROUP));
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start(&config);
    // A second recorded state, so that revert has somewhere to go.
    sb.publish(&[pkg("alpha", "2.0-1")]);
    sb.pacman_ok(&["-Syu"]);
    d.cli_code(&["notify"], 0);
    (sb, d)
}

/// Sends one raw line on a new connection; the first reply line as JSON, and whether the
/// daemon then closed the connection.
fn raw(socket: &Path, line: &[u8]) -> (serde_json::Value, bool) {
    let mut s = UnixStream::connect(socket).unwrap();
    // Only turns a hang into a failure.
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    // The daemon may answer and close before a too-long line is written in full.
    let _ = s.write_all(line);
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut reply = String::new();
    reader.read_line(&mut reply).expect("a reply line");
    let v = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    // Closed: EOF on the next read (after shutting our side, an open connection would wait).
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let closed = reader.read_to_end(&mut rest).is_ok() && rest.is_empty();
    (v, closed)
}

fn line(json: &str) -> Vec<u8> {
    format!("{json}\n").into_bytes()
}

#[test]
fn hostile_request_lines_are_refused_and_change_nothing() {
    let (sb, d) = setup("rows");
    // Status padded with spaces to exactly the longest line accepted (newline included).
    let status = br#"{"v":1,"cmd":"status"}"#;
    let mut longest = status.to_vec();
    longest.resize(MAX_REQUEST_LINE - 1, b' ');
    longest.push(b'\n');
    let mut too_long = longest.clone();
    too_long.insert(0, b' ');
    let rows: Vec<(&str, Vec<u8>, &str)> = vec![
        // (what, line, expected reply: an error code, or a reply type)
        (
            "100k [",
            [vec![b'['; 100_000], b"\n".to_vec()].concat(),
            "invalid-request",
        ),
        (
            "100k { in a field",
            line(&format!(
                r#"{{"v":1,"cmd":"revert","to":{}"#,
                r#"{"a":"#.repeat(100_000)
            )),
            "invalid-request",
        ),
        (
            "invalid UTF-8",
            b"{\"v\":1,\"cmd\":\"snapshot\",\"id\":\"\xff\xfe\"}\n".to_vec(),
            "invalid-request",
        ),
        ("empty line", b"\n".to_vec(), "invalid-request"),
        (
            "v is a string",
            line(r#"{"v":"1","cmd":"status"}"#),
            "invalid-request",
        ),
        (
            "limit negative",
            line(r#"{"v":1,"cmd":"history","limit":-1}"#),
            "invalid-request",
        ),
        (
            "to is a number",
            line(r#"{"v":1,"cmd":"revert","to":5}"#),
            "invalid-request",
        ),
        (
            "confirm_removals is a string",
            line(r#"{"v":1,"cmd":"sync","confirm_removals":"yes"}"#),
            "invalid-request",
        ),
        (
            "paused missing",
            line(r#"{"v":1,"cmd":"pause-auto-sync"}"#),
            "invalid-request",
        ),
        (
            "cmd twice (status, then revert)",
            line(r#"{"v":1,"cmd":"status","cmd":"revert"}"#),
            "invalid-request",
        ),
        (
            "two requests on one line",
            line(r#"{"v":1,"cmd":"status"}{"v":1,"cmd":"revert"}"#),
            "invalid-request",
        ),
        (
            "NUL after the request",
            b"{\"v\":1,\"cmd\":\"revert\"}\0\n".to_vec(),
            "invalid-request",
        ),
        (
            "cmd in another case",
            line(r#"{"v":1,"cmd":"Revert"}"#),
            "invalid-request",
        ),
        (
            "revert to -Syu",
            line(r#"{"v":1,"cmd":"revert","to":"-Syu"}"#),
            "not-found",
        ),
        (
            "revert to ../x",
            line(r#"{"v":1,"cmd":"revert","to":"../x"}"#),
            "not-found",
        ),
        (
            "revert to a;b",
            line(r#"{"v":1,"cmd":"revert","to":"a;b"}"#),
            "not-found",
        ),
        (
            "revert to NUL",
            line(r#"{"v":1,"cmd":"revert","to":"\u0000"}"#),
            "not-found",
        ),
        (
            "revert to newline",
            line(r#"{"v":1,"cmd":"revert","to":"1\n"}"#),
            "not-found",
        ),
        (
            "revert to an empty id",
            line(r#"{"v":1,"cmd":"revert","to":""}"#),
            "not-found",
        ),
        (
            "revert to a huge id",
            line(r#"{"v":1,"cmd":"revert","to":"99999999999999999999"}"#),
            "not-found",
        ),
        (
            "revert to an absent hash prefix",
            line(r#"{"v":1,"cmd":"revert","to":"0000"}"#),
            "not-found",
        ),
        (
            "snapshot ../../etc/passwd",
            line(r#"{"v":1,"cmd":"snapshot","id":"../../etc/passwd"}"#),
            "not-found",
        ),
        (
            "snapshot %",
            line(r#"{"v":1,"cmd":"snapshot","id":"%"}"#),
            "not-found",
        ),
        (
            "history limit u64::MAX (bounded)",
            line(r#"{"v":1,"cmd":"history","limit":18446744073709551615}"#),
            "history",
        ),
        ("the longest line accepted", longest, "status"),
        ("one byte more", too_long, "invalid-request"),
    ];
    let mut failures = Vec::new();
    for (what, bytes, expect) in &rows {
        let before = root_state(&sb);
        let (reply, closed) = raw(&d.socket, bytes);
        let got = match reply["type"].as_str() {
            Some("error") => reply["code"].as_str().unwrap_or("?"),
            other => other.unwrap_or("?"),
        };
        if got != *expect {
            failures.push(format!("{what}: got {reply}, expected {expect}"));
        }
        if reply["type"] == "error" && reply["message"].as_str().is_none_or(str::is_empty) {
            failures.push(format!("{what}: no message in {reply}"));
        }
        if *what == "one byte more" && !closed {
            failures.push(format!("{what}: the connection stayed open"));
        }
        if root_state(&sb) != before {
            failures.push(format!("{what}: the sandbox root changed"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}\n--- daemon log\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n"),
        d.log()
    );
    // Still serving.
    assert_eq!(d.status()["link"], "not-configured");
    eprintln!("{} socket rows refused, sandbox unchanged", rows.len());
}

/// The CLI run as `nobody`, with the given group settings for `setpriv`.
fn as_nobody(d: &Daemon, groups: &[&str], args: &[&str]) -> std::process::Output {
    let exe = env!("CARGO_BIN_EXE_pacpool");
    Command::new("setpriv")
        .arg("--reuid=nobody")
        .args(groups)
        .arg(exe)
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn shown(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const ACTIONS: &[&[&str]] = &[
    &["sync", "--yes"],
    &["set-latest", "--yes"],
    &["revert", "--yes"],
    &["cancel"],
    &["pause-auto-sync"],
    &["resume-auto-sync"],
];

#[test]
fn only_root_and_the_socket_group_may_act() {
    // The binaries must be reachable by `nobody` (cargo's target directory and its parents).
    let exe = env!("CARGO_BIN_EXE_pacpool");
    let probe = cli_as(
        Path::new("/nonexistent"),
        &["--version"],
        Some(("nobody", "nogroup")),
    );
    assert!(
        probe.status.success(),
        "nobody cannot run {exe}: every directory above it must be world-executable\n{}",
        shown(&probe)
    );
    let cdir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&cdir.path().join("c.db"), None);
    let pool = c.admin(
        "POST",
        "/pools",
        Some(serde_json::json!({ "name": "auth" })),
    );
    let join = c.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let url = c.url();
    let (sb, d) = setup_with("auth", Some((&url, join["token"].as_str().unwrap())));
    d.wait_status("connected", |s| s["link"] == "connected");
    let gid = group_id(GROUP);
    let outsider = ["--regid=nogroup", "--clear-groups"];
    let groups_arg = format!("--groups={gid}");
    let member = ["--regid=nogroup", groups_arg.as_str()];
    let alpha = || String::from_utf8(sb.pacman(&["-Q", "alpha"]).stdout).unwrap();

    // Root makes alpha 2.0 the pool target, then goes back to 1.0: the machine is behind,
    // so every action has something to do.
    d.cli_code(&["set-latest", "--yes"], 0);
    d.cli_code(&["revert", "--yes"], 0);
    assert!(alpha().contains("alpha 1.0-1"));

    // Outside the group: status is readable and says why actions are not possible.
    let out = as_nobody(&d, &outsider, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["can_act"], false);
    assert_eq!(status["state"], "behind");
    let operations = || d.cli_code(&["history", "--json"], 0);
    let (before, ops_before) = (root_state(&sb), operations());
    for action in ACTIONS {
        let out = as_nobody(&d, &outsider, action);
        assert_eq!(out.status.code(), Some(4), "{action:?}: {}", shown(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("may not change packages") && err.contains("socket group"),
            "{action:?}: {}",
            shown(&out)
        );
        assert_eq!(root_state(&sb), before, "{action:?} changed the root");
    }
    // The same requests sent raw (no CLI in between) are refused by the daemon itself.
    for cmd in [
        r#""sync""#,
        r#""set-latest""#,
        r#""revert""#,
        r#""cancel""#,
        r#""pause-auto-sync","paused":true"#,
    ] {
        let out = raw_as_nobody(&d, &outsider, &format!(r#"{{"v":1,"cmd":{cmd}}}"#));
        assert_eq!(out["code"], "refused", "{cmd}: {out}");
    }
    assert_eq!(operations(), ops_before, "no operation was recorded");
    assert_eq!(root_state(&sb), before);
    let target =
        c.admin("GET", &format!("/pools/{}", pool["id"]), None)["target"]["revision"].clone();
    assert_eq!(target, 1, "the pool target did not move");

    // A supplementary group member may act: pause, resume and cancel are not refused, and a
    // real sync, revert and set-latest go through.
    let out = as_nobody(&d, &member, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["can_act"], true, "{}", shown(&out));
    for action in [&["pause-auto-sync"][..], &["resume-auto-sync"], &["cancel"]] {
        let out = as_nobody(&d, &member, action);
        assert_ne!(out.status.code(), Some(4), "{action:?}: {}", shown(&out));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("may not change"),
            "{action:?}: {}",
            shown(&out)
        );
    }
    for (action, expect) in [
        (&["sync", "--yes"][..], "alpha 2.0-1"),
        (&["revert", "--yes"], "alpha 1.0-1"),
        // Back at alpha 1.0-1, the pool (alpha 2.0-1) would go back: told so explicitly.
        (&["set-latest", "--yes", "--allow-older"], "alpha 1.0-1"),
    ] {
        let out = as_nobody(&d, &member, action);
        assert_eq!(out.status.code(), Some(0), "{action:?}: {}", shown(&out));
        assert!(alpha().contains(expect), "{action:?}: {}", alpha());
    }
    let target =
        c.admin("GET", &format!("/pools/{}", pool["id"]), None)["target"]["revision"].clone();
    assert_eq!(target, 2, "the member's set-latest moved the pool target");

    // The group as the primary group counts too.
    let regid_arg = format!("--regid={gid}");
    let primary = [regid_arg.as_str(), "--clear-groups"];
    for action in ["pause-auto-sync", "resume-auto-sync"] {
        let out = as_nobody(&d, &primary, &[action]);
        assert_eq!(out.status.code(), Some(0), "{action}: {}", shown(&out));
    }
}

/// One raw request line sent by `nobody` (through the test binary's helper mode); the reply.
fn raw_as_nobody(d: &Daemon, groups: &[&str], request: &str) -> serde_json::Value {
    let out = Command::new("setpriv")
        .arg("--reuid=nobody")
        .args(groups)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "send_line_helper", "--ignored", "--nocapture"])
        .env("PACPOOL_SEND_SOCKET", &d.socket)
        .env("PACPOOL_SEND_LINE", request)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reply = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPLY "))
        .unwrap_or_else(|| panic!("no reply from the helper: {}", shown(&out)));
    serde_json::from_str(reply).unwrap()
}

/// Helper process for `raw_as_nobody`: sends `PACPOOL_SEND_LINE` to `PACPOOL_SEND_SOCKET`
/// and prints the reply line.
#[test]
#[ignore = "helper process, started by only_root_and_the_socket_group_may_act"]
fn send_line_helper() {
    let (Ok(socket), Ok(request)) = (
        std::env::var("PACPOOL_SEND_SOCKET"),
        std::env::var("PACPOOL_SEND_LINE"),
    ) else {
        return;
    };
    let (reply, _) = raw(Path::new(&socket), &line(&request));
    println!("REPLY {reply}");
}

/// Helper process for `one_user_cannot_hold_every_connection`: run as `nobody`, opens
/// `PACPOOL_HOLD_N` connections to `PACPOOL_HOLD_SOCKET`, reports on stdout what the last
/// one got, and holds them until stdin closes.
#[test]
#[ignore = "helper process, started by one_user_cannot_hold_every_connection"]
fn hold_connections_helper() {
    let (Ok(socket), Ok(n)) = (
        std::env::var("PACPOOL_HOLD_SOCKET"),
        std::env::var("PACPOOL_HOLD_N"),
    ) else {
        return;
    };
    let n: usize = n.parse().unwrap();
    let mut held: Vec<UnixStream> = (0..n)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    // The last connection is over the cap: it gets an error line and is closed.
    let last = held.pop().unwrap();
    // Only turns a missing answer into a failure.
    last.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut reply = String::new();
    if let Err(e) = BufReader::new(last).read_line(&mut reply) {
        reply = serde_json::json!({ "type": "no answer", "error": e.to_string() }).to_string();
    }
    println!("LAST {}", reply.trim());
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
}

#[test]
fn one_user_cannot_hold_every_connection() {
    let (_sb, d) = setup("flood");
    let mut helper = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_connections_helper",
            "--ignored",
            "--nocapture",
        ])
        .env("PACPOOL_HOLD_SOCKET", &d.socket)
        .env("PACPOOL_HOLD_N", (MAX_CLIENTS_PER_UID + 1).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(helper.stdout.take().unwrap());
    let last = loop {
        let mut l = String::new();
        assert_ne!(out.read_line(&mut l).unwrap(), 0, "helper ended early");
        if let Some(r) = l.strip_prefix("LAST ") {
            break serde_json::from_str::<serde_json::Value>(r.trim()).unwrap();
        }
    };
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["code"], "busy", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("connections to pacpoold open"),
        "{last}"
    );
    // While nobody holds its whole share: nobody is refused, root and others are served.
    let refused = cli_as(&d.socket, &["status"], Some(("nobody", "nogroup")));
    assert_ne!(refused.status.code(), Some(0), "{}", shown(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("connections"),
        "{}",
        shown(&refused)
    );
    d.cli_code(&["status"], 0);
    d.cli_code(&["notify"], 0);
    let other = Command::new("setpriv")
        .args(["--reuid=daemon", "--regid=daemon", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_pacpool"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(0), "{}", shown(&other));
    // Released: nobody is served again.
    drop(helper.stdin.take());
    helper.wait().unwrap();
    let out = cli_as(&d.socket, &["status"], Some(("nobody", "nogroup")));
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
}

/// Text that reaches `pacpool status` and the daemon's log from elsewhere (issue 12, item
/// 10b) cannot drive the terminal: here a local database entry whose directory name carries
/// an escape sequence (the read error names that path), shown with control characters
/// escaped.
#[test]
fn text_from_elsewhere_reaches_terminals_and_the_log_escaped() {
    let sb = Sandbox::new();
    sb.publish(&[sb.build_package(&PkgSpec::new("alpha", "1.0-1").arch(&host_arch()))]);
    sb.pacman_ok(&["-Sy", "alpha"]);
    let evil = sb
        .dbpath()
        .join("local/evil\u{1b}]0;pwned\u{7}\u{1b}[2J-1.0-1");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(evil.join("desc"), "%NAME%\nother\n\n%VERSION%\n1.0-1\n\n").unwrap();
    let d = Daemon::start(&write_config(&sb, "evil", None));
    let out = d.cli(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("last error:"), "{stdout}");
    assert!(
        stdout.contains("\\u{1b}]0;pwned"),
        "shown escaped: {stdout}"
    );
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "raw control characters reached the terminal: {stdout:?}"
    );
    let log = d.log();
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{7}'),
        "raw control characters reached the log: {log:?}"
    );
}
