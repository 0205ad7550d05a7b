//! `pacpool admin` end to end: a real coordinator on 127.0.0.1:0 (in-process, as in
//! `e2e_pool.rs`), the real `pacpool` binary, and plain HTTP where an endpoint has to act
//! (registration, its own status).

mod support;

use std::process::Command;

use pacpool::localdb::Reason;
use pacpool::snapshot::{PackageState, Snapshot};
use serde_json::{Value, json};
use support::coordinator::ADMIN;

/// The shared test coordinator, with its database directory and the CLI helpers.
struct Coordinator {
    server: support::coordinator::Coordinator,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server =
            support::coordinator::Coordinator::start(&dir.path().join("coordinator.db"), None);
        Self { server, _dir: dir }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// The CLI with the right URL and admin token.
    fn admin(&self, args: &[&str]) -> Out {
        let mut all = vec!["--token", ADMIN];
        all.extend_from_slice(args);
        run_admin(&self.url(), &all, &[])
    }

    /// The CLI, expecting exit code `code`; returns its stdout.
    fn admin_code(&self, args: &[&str], code: i32) -> String {
        let out = self.admin(args);
        out.expect(code, args);
        out.stdout
    }

    /// A plain HTTP request under /api/v1 (for what endpoints do).
    fn http(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let url = format!("{}/api/v1{path}", self.url());
            let mut req = match method {
                "POST" => client.post(url).json(&body),
                _ => client.get(url),
            };
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        })
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn expect(&self, code: i32, args: &[&str]) {
        assert_eq!(
            self.code, code,
            "pacpool admin {args:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Runs `pacpool --url URL admin ARGS` with a clean environment for the admin options (the
/// host's PACPOOL_ADMIN_* and proxy variables must not leak in) plus `env`.
fn run_admin(url: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pacpool"));
    cmd.arg("admin").arg("--url").arg(url).args(args);
    for var in [
        "PACPOOL_ADMIN_URL",
        "PACPOOL_ADMIN_TOKEN",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run pacpool");
    Out {
        code: out.status.code().expect("pacpool exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// The first table row whose cells include `cell`, split into cells.
fn row_with<'a>(table: &'a str, cell: &str) -> Vec<&'a str> {
    row_with_all(table, &[cell])
}

/// The first table row whose cells include every one of `wanted`.
fn row_with_all<'a>(table: &'a str, wanted: &[&str]) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| wanted.iter().all(|w| cells.contains(w)))
        .unwrap_or_else(|| panic!("no row with {wanted:?} in:\n{table}"))
}

#[test]
fn pools_join_tokens_endpoints_targets_operations_and_audit() {
    let coord = Coordinator::start();

    // Pools: create, refuse a duplicate as a conflict, list as a table and as JSON.
    let out = coord.admin_code(&["pools", "create", "lab"], 0);
    assert!(out.contains("created pool lab (1)"), "{out}");
    let dup = coord.admin(&["pools", "create", "lab"]);
    dup.expect(5, &["pools", "create", "lab (again)"]);
    assert!(
        dup.stderr.contains("name_taken") && dup.stderr.contains("already exists"),
        "{}",
        dup.stderr
    );

    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        "auto_sync = \"apply\"\nauto_sync_window = \"02:00-05:00\"\n[plan]\nscope = \"explicit-only\"\nignore = [\"linux*\"]\n",
    )
    .unwrap();
    let policy_path = policy.path().to_str().unwrap();
    coord.admin_code(
        &["pools", "create", "desk", "--policy-file", policy_path],
        0,
    );

    let table = coord.admin_code(&["pools", "list"], 0);
    let head = table.lines().next().unwrap();
    assert!(
        head.starts_with("ID  NAME") && head.contains("ENDPOINTS"),
        "{table}"
    );
    assert_eq!(row_with(&table, "lab")[..3], ["1", "lab", "0"], "{table}");
    assert_eq!(row_with(&table, "desk")[..3], ["2", "desk", "0"], "{table}");
    let pools = json_of(&coord.admin_code(&["--json", "pools", "list"], 0));
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lab", "desk"]);
    assert_eq!(pools[1]["policy"]["plan"]["scope"], "explicit-only");
    assert_eq!(pools[1]["policy"]["auto_sync_window"], "02:00-05:00");

    // `show` prints the policy as TOML that set-policy takes back; a bad file names itself.
    let shown = coord.admin_code(&["pools", "show", "desk"], 0);
    assert!(shown.contains("scope = \"explicit-only\""), "{shown}");
    std::fs::write(policy.path(), "[plan]\nscop = \"full\"\n").unwrap();
    let bad = coord.admin(&["pools", "set-policy", "desk", "--file", policy_path]);
    bad.expect(1, &["pools", "set-policy (bad file)"]);
    assert!(
        bad.stderr.contains(policy_path) && bad.stderr.contains("scop"),
        "{}",
        bad.stderr
    );
    std::fs::write(policy.path(), "[plan]\nscope = \"full\"\n").unwrap();
    coord.admin_code(&["pools", "set-policy", "2", "--file", policy_path], 0);
    let desk = json_of(&coord.admin_code(&["--json", "pools", "show", "2"], 0));
    assert_eq!(desk["policy"]["plan"]["scope"], "full");
    coord.admin_code(&["pools", "rename", "desk", "office"], 0);

    // A join token is printed once on stdout (the explanation goes to stderr); an endpoint
    // registers with it and shows up in `endpoints list`.
    let out = coord.admin(&["join-token", "create", "lab", "--max-uses", "2"]);
    out.expect(0, &["join-token", "create"]);
    let join = out.stdout.trim();
    assert!(
        join.starts_with("ppj_") && !join.contains(char::is_whitespace),
        "{join:?}"
    );
    assert!(
        out.stderr.contains("up to 2 registrations"),
        "{}",
        out.stderr
    );
    let (status, reg) = coord.http(
        "POST",
        "/register",
        None,
        json!({"join_token": join, "name": "alpha"}),
    );
    assert_eq!(status, 201, "{reg}");
    let endpoint_id = reg["endpoint_id"].as_i64().unwrap();
    let endpoint_token = reg["endpoint_token"].as_str().unwrap().to_owned();
    let id = endpoint_id.to_string();

    let table = coord.admin_code(&["endpoints", "list", "lab"], 0);
    assert!(
        table.lines().next().unwrap().contains("LAST SEEN"),
        "{table}"
    );
    assert_eq!(
        row_with(&table, "alpha")[..3],
        [id.as_str(), "alpha", "unknown"],
        "{table}"
    );
    let list = json_of(&coord.admin_code(&["--json", "endpoints", "list", "1"], 0));
    assert_eq!(list[0]["name"], "alpha");
    let shown = coord.admin_code(&["endpoints", "show", &id, "--diff"], 0);
    assert!(
        shown.contains("never reported") && shown.contains("no diff"),
        "{shown}"
    );

    // An operation started by the admin: listed, shown, cancelled once, then a conflict.
    let (status, op) = coord.http(
        "POST",
        &format!("/endpoints/{id}/operations"),
        Some(ADMIN),
        json!({"kind": "revert"}),
    );
    assert_eq!(status, 201, "{op}");
    let op_id = op["id"].to_string();
    let table = coord.admin_code(&["operations", "list", "lab"], 0);
    assert_eq!(
        row_with(&table, "revert")[..5],
        [op_id.as_str(), id.as_str(), "1", "revert", "pending"],
        "{table}"
    );
    let page = json_of(&coord.admin_code(&["--json", "operations", "list", "--endpoint", &id], 0));
    assert_eq!(page["items"][0]["id"], op["id"]);
    let other = json_of(&coord.admin_code(&["--json", "operations", "list", "office"], 0));
    assert_eq!(other["items"], json!([]));
    assert!(
        coord
            .admin_code(&["operations", "show", &op_id], 0)
            .contains("pending")
    );
    let out = coord.admin_code(&["operations", "cancel", &op_id], 0);
    assert!(
        out.contains(&format!("cancelled operation {op_id}")),
        "{out}"
    );
    let again = coord.admin(&["operations", "cancel", &op_id]);
    again.expect(5, &["operations", "cancel (again)"]);
    assert!(
        again.stderr.contains("operation_finished"),
        "{}",
        again.stderr
    );

    // No target yet: an empty history, and a revert against the wrong revision conflicts.
    let out = coord.admin_code(&["targets", "history", "lab"], 0);
    assert!(out.contains("no target yet"), "{out}");
    assert_eq!(
        json_of(&coord.admin_code(&["--json", "targets", "history", "lab"], 0)),
        json!([])
    );
    let out = coord.admin(&["targets", "revert", "lab", "--to", "1", "--expected", "3"]);
    out.expect(5, &["targets", "revert"]);
    assert!(
        out.stderr.contains("revision_conflict") && out.stderr.contains("--expected"),
        "{}",
        out.stderr
    );

    // A pool with endpoints cannot be deleted; an empty one can.
    let out = coord.admin(&["pools", "delete", "lab"]);
    out.expect(5, &["pools", "delete", "lab"]);
    assert!(out.stderr.contains("pool_not_empty"), "{}", out.stderr);

    // Revoking the endpoint's token locks it out.
    let (status, _) = coord.http(
        "GET",
        "/endpoint/status",
        Some(&endpoint_token),
        Value::Null,
    );
    assert_eq!(status, 200);
    coord.admin_code(&["endpoints", "revoke", &id], 0);
    let (status, body) = coord.http(
        "GET",
        "/endpoint/status",
        Some(&endpoint_token),
        Value::Null,
    );
    assert_eq!(status, 401, "{body}");

    // Moved to the other pool, the endpoint is listed there; then removed, the pool empties.
    coord.admin_code(&["endpoints", "move", &id, "office"], 0);
    assert_eq!(
        row_with(
            &coord.admin_code(&["endpoints", "list", "office"], 0),
            "alpha"
        )[0],
        id
    );
    coord.admin_code(&["endpoints", "remove", &id], 0);
    assert!(
        coord
            .admin_code(&["endpoints", "list", "office"], 0)
            .contains("no endpoints")
    );
    coord.admin_code(&["pools", "delete", "office"], 0);
    let gone = coord.admin(&["pools", "show", "office"]);
    gone.expect(1, &["pools", "show", "office (deleted)"]);
    assert!(
        gone.stderr.contains("no pool named \"office\""),
        "{}",
        gone.stderr
    );

    // The audit log saw all of it, newest first.
    let table = coord.admin_code(&["audit"], 0);
    let create = row_with_all(&table, &["pool.create", "pool:1"]);
    assert_eq!(create[3..5], ["admin", "pool.create"], "{table}");
    assert_eq!(create.last(), Some(&"lab"), "{table}");
    for action in [
        "join_token.create",
        "endpoint.register",
        "endpoint.revoke",
        "operation.cancel",
        "pool.delete",
    ] {
        assert!(table.contains(action), "{action} missing from:\n{table}");
    }
    let page = json_of(&coord.admin_code(&["--json", "audit", "--limit", "2"], 0));
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["action"], "pool.delete");
    assert!(page["next"].is_i64(), "{page}");
}

#[test]
fn tokens_refusals_and_unreachable() {
    let coord = Coordinator::start();
    let url = coord.url();

    // A wrong token is refused (exit 4) with a message saying what to do, and is not echoed.
    let wrong = "ppa_wrong-token-value-42";
    let out = run_admin(&url, &["--token", wrong, "pools", "list"], &[]);
    out.expect(4, &["pools", "list (wrong token)"]);
    assert!(
        out.stderr.contains("did not accept the admin token")
            && out.stderr.contains("--token-file"),
        "{}",
        out.stderr
    );
    // Only the admin's wording: not the endpoints' ("register again with a join token").
    assert!(
        !out.stderr.contains("register again") && !out.stderr.contains("join token"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(wrong) && !out.stdout.contains(wrong),
        "{}",
        out.stderr
    );

    // An endpoint's token is not an admin token either: forbidden is also "refused".
    coord.admin_code(&["pools", "create", "lab"], 0);
    let join = coord.admin_code(&["join-token", "create", "lab"], 0);
    let (_, reg) = coord.http(
        "POST",
        "/register",
        None,
        json!({"join_token": join.trim(), "name": "beta"}),
    );
    let endpoint_token = reg["endpoint_token"].as_str().unwrap();
    let out = run_admin(&url, &["--token", endpoint_token, "pools", "list"], &[]);
    out.expect(4, &["pools", "list (endpoint token)"]);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);

    // The token from a file (trailing newline as written by editors), or from the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let file = file.to_str().unwrap();
    run_admin(&url, &["--token-file", file, "pools", "list"], &[]).expect(0, &["--token-file"]);
    let out = run_admin(&url, &["pools", "list"], &[("PACPOOL_ADMIN_TOKEN", ADMIN)]);
    out.expect(0, &["PACPOOL_ADMIN_TOKEN"]);
    assert!(out.stdout.contains("lab"), "{}", out.stdout);
    let help = run_admin(&url, &["--help"], &[("PACPOOL_ADMIN_TOKEN", ADMIN)]);
    assert!(
        !help.stdout.contains(ADMIN),
        "--help shows the token:\n{}",
        help.stdout
    );

    // An unreadable token file is named, with what to do instead.
    let missing = dir.path().join("nope");
    let missing = missing.to_str().unwrap();
    let out = run_admin(&url, &["--token-file", missing, "pools", "list"], &[]);
    out.expect(1, &["--token-file (missing)"]);
    assert!(
        out.stderr
            .contains(&format!("cannot read the admin token from {missing}"))
            && out.stderr.contains("pass --token-file FILE"),
        "{}",
        out.stderr
    );

    // Nothing listening: unreachable (exit 7). The port was just bound and released.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run_admin(
        &format!("http://{free}"),
        &["--token", ADMIN, "pools", "list"],
        &[],
    );
    out.expect(7, &["pools", "list (unreachable)"]);
    assert!(
        out.stderr.contains("cannot be reached") && out.stderr.contains("--url"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(ADMIN), "{}", out.stderr);
}

fn snapshot(pkgs: &[(&str, &str, Reason)]) -> Snapshot {
    Snapshot::new(
        pkgs.iter()
            .map(|(n, v, reason)| PackageState {
                name: n.parse().unwrap(),
                version: v.parse().unwrap(),
                arch: "x86_64".parse().unwrap(),
                reason: *reason,
                repo: Some("core".parse().unwrap()),
            })
            .collect(),
    )
    .unwrap()
}

#[test]
fn target_history_revert_and_endpoint_diff() {
    use Reason::{Dependency, Explicit};
    let coord = Coordinator::start();
    coord.admin_code(&["pools", "create", "lab"], 0);
    let join = coord.admin_code(&["join-token", "create", "lab"], 0);
    let register = |name: &str| {
        let (status, reg) = coord.http(
            "POST",
            "/register",
            None,
            json!({"join_token": join.trim(), "name": name}),
        );
        assert_eq!(status, 201, "{reg}");
        (
            reg["endpoint_id"].to_string(),
            reg["endpoint_token"].as_str().unwrap().to_owned(),
        )
    };
    let (_, a_token) = register("alpha");
    let (b, b_token) = register("beta");
    let report = |token: &str, snap: &Snapshot| {
        let (status, ack) = coord.http(
            "POST",
            "/endpoint/report",
            Some(token),
            json!({"kind": "full", "snapshot": snap}),
        );
        assert_eq!(status, 200, "{ack}");
    };
    let set_target = |token: &str, expected: u64, snap: &Snapshot| {
        let body = json!({"expected_revision": expected, "snapshot": snap.hash()});
        let (status, target) = coord.http("POST", "/endpoint/target", Some(token), body);
        assert_eq!(status, 200, "{target}");
    };

    // alpha sets revision 1 and then 2; beta differs from both.
    let r1 = snapshot(&[
        ("bash", "5.2-1", Explicit),
        ("editor", "1.0-1", Explicit),
        ("libtext", "1.0-1", Dependency),
    ]);
    let r2 = snapshot(&[
        ("bash", "5.2-1", Explicit),
        ("editor", "1.1-1", Explicit),
        ("libtext", "1.0-1", Dependency),
    ]);
    let beta = snapshot(&[
        ("bash", "5.3-1", Explicit),
        ("editor", "1.0-1", Explicit),
        ("oldtool", "1.0-1", Explicit),
    ]);
    report(&a_token, &r1);
    set_target(&a_token, 0, &r1);
    report(&a_token, &r2);
    set_target(&a_token, 1, &r2);
    report(&b_token, &beta);

    let table = coord.admin_code(&["targets", "history", "lab"], 0);
    let top = row_with(&table, "2");
    assert_eq!(
        (top[0], top[2], top[3], top.last().copied()),
        ("2", "3", "alpha", Some("current")),
        "{table}"
    );
    assert_eq!(top[1], &r2.hash().short(), "{table}");

    // The endpoint list and diff: what a sync would do on beta.
    let table = coord.admin_code(&["endpoints", "list", "lab"], 0);
    let row = row_with(&table, "beta");
    assert_eq!(row[2], "diverged", "{row:?}");
    let shown = coord.admin_code(&["endpoints", "show", &b, "--diff"], 0);
    for line in [
        ["downgrade", "bash", "5.3-1", "5.2-1"],
        ["upgrade", "editor", "1.0-1", "1.1-1"],
        ["install", "libtext", "-", "1.0-1"],
        ["remove", "oldtool", "1.0-1", "-"],
    ] {
        assert_eq!(row_with(&shown, line[1]), line, "{shown}");
    }
    let diff = json_of(&coord.admin_code(&["--json", "endpoints", "show", &b, "--diff"], 0));
    assert_eq!(diff["delta"]["removed"], json!(["oldtool"]), "{diff}");
    assert_eq!(diff["target"]["revision"], 2);

    // Revert to revision 1: a new revision 3 that copies it; a stale --expected conflicts.
    let out = coord.admin(&["targets", "revert", "lab", "--to", "1", "--expected", "1"]);
    out.expect(5, &["targets", "revert (stale)"]);
    let out = coord.admin_code(
        &["targets", "revert", "lab", "--to", "1", "--expected", "2"],
        0,
    );
    assert!(
        out.contains("revision 3") && out.contains("a copy of revision 1"),
        "{out}"
    );
    let history = json_of(&coord.admin_code(&["--json", "targets", "history", "1"], 0));
    assert_eq!(history[0]["revision"], 3);
    assert_eq!(history[0]["reverted_from"], 1);
    assert_eq!(history[0]["snapshot"], history[2]["snapshot"]);
    let table = coord.admin_code(&["targets", "history", "lab"], 0);
    assert!(
        row_with(&table, "3").ends_with(&["current,", "copy", "of", "r1"]),
        "{table}"
    );
}
