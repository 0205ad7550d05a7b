//! Hostile requests against the real coordinator (in process, 127.0.0.1:0, real SQLite),
//! table-driven: each row is a request (REST or a WebSocket frame), the status and error
//! `code` expected, and the promise that NOTHING changed: a dump of every table of the
//! coordinator's SQLite database — the audit log included, since refused requests are not
//! audited — is equal before and after the row.
//!
//! `tests/coordinator_api.rs` covers the basic auth matrix, malformed JSON, oversized bodies
//! and frames, and four hostile package names; the rows here extend those by table.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pacpool::proto::{EndpointMsg, PROTOCOL_VERSION, ServerMsg, StateReport};
use pacpool::snapshot::{PackageState, Snapshot};
use reqwest::Method;
use serde_json::{Value, json};
use support::coordinator::{ADMIN, Coordinator};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Only turns a hang into a failure; nothing asserts on timing.
const HANG: Duration = Duration::from_secs(30);

/// Every row of every table, in rowid order, as text.
type Dump = BTreeMap<String, Vec<Vec<String>>>;

fn dump(db: &Path) -> Dump {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tables.iter().any(|t| t == "audit"), "{tables:?}");
    let mut out = Dump::new();
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                            rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                            rusqlite::types::ValueRef::Real(v) => v.to_string(),
                            rusqlite::types::ValueRef::Text(v) => {
                                String::from_utf8_lossy(v).into_owned()
                            }
                            rusqlite::types::ValueRef::Blob(v) => hex::encode(v),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.insert(t, rows);
    }
    out
}

/// The first difference between two dumps, for a failure message.
fn first_difference(a: &Dump, b: &Dump) -> String {
    for (t, rows) in a {
        let other = b.get(t).cloned().unwrap_or_default();
        if *rows != other {
            let added: Vec<_> = other.iter().filter(|r| !rows.contains(r)).collect();
            let removed: Vec<_> = rows.iter().filter(|r| !other.contains(r)).collect();
            return format!("table {t}: added {added:?}, removed {removed:?}");
        }
    }
    "a table was added".into()
}

fn pkg(name: &str, version: &str) -> PackageState {
    PackageState {
        name: name.parse().unwrap(),
        version: version.parse().unwrap(),
        arch: "x86_64".parse().unwrap(),
        reason: pacpool::localdb::Reason::Explicit,
        repo: Some("core".parse().unwrap()),
    }
}

fn snap(pkgs: &[(&str, &str)]) -> Snapshot {
    Snapshot::new(pkgs.iter().map(|(n, v)| pkg(n, v)).collect()).unwrap()
}

/// A state of one package more than the coordinator accepts by default (issue 12, item 8).
fn oversized() -> Snapshot {
    let n = pacpool::snapshot::DEFAULT_MAX_PACKAGES + 1;
    Snapshot::new((0..n).map(|i| pkg(&format!("p{i:06}"), "1-1")).collect()).unwrap()
}

/// A full report whose one package has `field` set to `value` (bypassing the types).
fn report_with(field: &str, value: Value) -> Value {
    let mut p = json!({ "name": "bash", "version": "5.2-1", "arch": "x86_64", "reason": "explicit", "repo": "core" });
    p[field] = value;
    json!({ "kind": "full", "snapshot": { "packages": [p] } })
}

enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>, &'static str),
}

enum Auth {
    None,
    Bearer(String),
    Header(String),
}

struct Row {
    what: String,
    method: Method,
    path: String,
    auth: Auth,
    body: Body,
    status: u16,
    code: &'static str,
}

fn row(
    what: impl Into<String>,
    method: Method,
    path: impl Into<String>,
    auth: Auth,
    body: Body,
    status: u16,
    code: &'static str,
) -> Row {
    Row {
        what: what.into(),
        method,
        path: path.into(),
        auth,
        body,
        status,
        code,
    }
}

struct World {
    c: Coordinator,
    db: std::path::PathBuf,
    http: reqwest::Client,
    p1: i64,
    p2: i64,
    a: (i64, String),
    b: (i64, String),
    revoked: String,
    join_ok: String,
    join_expired: String,
    join_used_up: String,
    join_revoked: String,
    a_state: Snapshot,
    b_state: Snapshot,
    op_a: i64,
    op_b: i64,
}

impl World {
    async fn call(&self, method: Method, path: &str, auth: &Auth, body: &Body) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.c.url()));
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => req = req.bearer_auth(t),
            Auth::Header(h) => req = req.header("authorization", h.as_str()),
        }
        match body {
            Body::None => {}
            Body::Json(v) => req = req.json(v),
            Body::Raw(bytes, ctype) => {
                req = req.header("content-type", *ctype).body(bytes.clone());
            }
        }
        let resp = tokio::time::timeout(HANG, req.send())
            .await
            .expect("request hung")
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: Method, path: &str, token: &str, body: Value) -> Value {
        let (st, v) = self
            .call(
                method.clone(),
                path,
                &Auth::Bearer(token.into()),
                &if body.is_null() {
                    Body::None
                } else {
                    Body::Json(body)
                },
            )
            .await;
        assert!((200..300).contains(&st), "{method} {path}: {st} {v}");
        v
    }

    async fn join_token(&self, pool: i64, body: Value) -> Value {
        self.ok(
            Method::POST,
            &format!("/pools/{pool}/join-tokens"),
            ADMIN,
            body,
        )
        .await
    }

    async fn register(&self, join: &str, name: &str) -> (i64, String) {
        let v = self
            .ok(
                Method::POST,
                "/register",
                "unused",
                json!({"join_token": join, "name": name}),
            )
            .await;
        (
            v["endpoint_id"].as_i64().unwrap(),
            v["endpoint_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Sets up two pools, endpoints, tokens, states, targets and operations on `c`.
    async fn setup(c: Coordinator, db: std::path::PathBuf) -> Self {
        // No connection reuse: a 413 answered before the body was read closes the connection.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut w = World {
            c,
            db,
            http,
            p1: 0,
            p2: 0,
            a: (0, String::new()),
            b: (0, String::new()),
            revoked: String::new(),
            join_ok: String::new(),
            join_expired: String::new(),
            join_used_up: String::new(),
            join_revoked: String::new(),
            a_state: snap(&[("bash", "5.2-1"), ("glibc", "2.40-1")]),
            b_state: snap(&[("zsh", "5.9-5")]),
            op_a: 0,
            op_b: 0,
        };
        w.p1 = w
            .ok(Method::POST, "/pools", ADMIN, json!({"name": "lab"}))
            .await["id"]
            .as_i64()
            .unwrap();
        w.p2 = w
            .ok(Method::POST, "/pools", ADMIN, json!({"name": "other"}))
            .await["id"]
            .as_i64()
            .unwrap();
        w.join_ok = w.join_token(w.p1, json!({})).await["token"]
            .as_str()
            .unwrap()
            .into();
        let j2 = w.join_token(w.p2, json!({})).await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let expired = w.join_token(w.p1, json!({})).await;
        let used_up = w.join_token(w.p1, json!({"max_uses": 1})).await;
        let revoked = w.join_token(w.p1, json!({})).await;
        w.a = w.register(&w.join_ok, "a").await;
        w.b = w.register(&j2, "b").await;
        let r = w.register(&w.join_ok, "r").await;
        w.register(used_up["token"].as_str().unwrap(), "u").await;
        w.ok(
            Method::POST,
            &format!("/endpoints/{}/revoke", r.0),
            ADMIN,
            json!({}),
        )
        .await;
        w.revoked = r.1;
        w.join_used_up = used_up["token"].as_str().unwrap().into();
        w.join_revoked = revoked["token"].as_str().unwrap().into();
        let (st, _) = w
            .call(
                Method::DELETE,
                &format!("/join-tokens/{}", revoked["id"]),
                &Auth::Bearer(ADMIN.into()),
                &Body::None,
            )
            .await;
        assert!((200..300).contains(&st), "{st}");
        // Expired: its expiry moved into the past in the database (no waiting).
        w.join_expired = expired["token"].as_str().unwrap().into();
        {
            let conn = rusqlite::Connection::open(&w.db).unwrap();
            let n = conn
                .execute(
                    "UPDATE join_tokens SET expires_at = 1 WHERE id = ?1",
                    [expired["id"].as_i64().unwrap()],
                )
                .unwrap();
            assert_eq!(n, 1);
        }
        // States, a target in each pool, one pending operation per endpoint.
        for (ep, s) in [(&w.a, &w.a_state), (&w.b, &w.b_state)] {
            let body = serde_json::to_value(StateReport::Full {
                snapshot: s.clone(),
            })
            .unwrap();
            w.ok(Method::POST, "/endpoint/report", &ep.1, body).await;
            w.ok(
                Method::POST,
                "/endpoint/target",
                &ep.1,
                json!({"expected_revision": 0, "snapshot": s.hash()}),
            )
            .await;
        }
        w.op_a = w
            .ok(
                Method::POST,
                "/endpoint/operations",
                &w.a.1,
                json!({"kind": "revert", "idempotency_key": "k1"}),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        w.op_b = w
            .ok(
                Method::POST,
                "/endpoint/operations",
                &w.b.1,
                json!({"kind": "revert"}),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        w
    }
}

/// Starts a coordinator (it has its own runtime) and sets the world up on a client runtime.
fn world() -> (tempfile::TempDir, tokio::runtime::Runtime, World) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("coordinator.db");
    let c = Coordinator::start(&db, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(World::setup(c, db));
    (dir, rt, w)
}

fn rest_rows(w: &World) -> Vec<Row> {
    use Method as M;
    let admin = || Auth::Bearer(ADMIN.into());
    let a = || Auth::Bearer(w.a.1.clone());
    let (p1, p2) = (w.p1, w.p2);
    let json_raw = |b: Vec<u8>| Body::Raw(b, "application/json");
    let deep = |prefix: &[u8], open: &[u8], n: usize| {
        let mut v = prefix.to_vec();
        for _ in 0..n {
            v.extend_from_slice(open);
        }
        v
    };
    let big = {
        let mut v = br#"{"name":""#.to_vec();
        v.extend(std::iter::repeat_n(b'x', 9 * 1024 * 1024));
        v.extend(br#""}"#);
        v
    };
    let mut rows = vec![
        // Malformed, deep, invalid UTF-8, wrong types, unknown fields.
        row("truncated JSON", M::POST, "/pools", admin(), json_raw(br#"{"name":"#.to_vec()), 400, "invalid_request"),
        row("100k [ as a pool", M::POST, "/pools", admin(), json_raw(deep(b"", b"[", 100_000)), 400, "invalid_request"),
        row("100k { in a policy", M::POST, "/pools", admin(), json_raw(deep(br#"{"name":"x","policy":"#, br#"{"a":"#, 100_000)), 400, "invalid_request"),
        row("100k [ in a report", M::POST, "/endpoint/report", a(), json_raw(deep(br#"{"kind":"full","snapshot":{"packages":"#, b"[", 100_000)), 400, "invalid_request"),
        row("invalid UTF-8 in a string", M::POST, "/pools", admin(), json_raw(b"{\"name\":\"\xff\xfe\"}".to_vec()), 400, "invalid_request"),
        row("invalid UTF-8 in a report", M::POST, "/endpoint/report", a(), json_raw(b"{\"kind\":\"full\",\"snapshot\":{\"packages\":[{\"name\":\"\xc3\x28\",\"version\":\"1-1\",\"arch\":\"any\",\"reason\":\"explicit\"}]}}".to_vec()), 400, "invalid_request"),
        row("name is a number", M::POST, "/pools", admin(), Body::Json(json!({"name": 5})), 400, "invalid_request"),
        row("removal_cap is a string", M::POST, "/pools", admin(), Body::Json(json!({"name": "x", "policy": {"plan": {"removal_cap": "ten"}}})), 400, "invalid_request"),
        row("max_uses negative", M::POST, format!("/pools/{p1}/join-tokens"), admin(), Body::Json(json!({"max_uses": -1})), 400, "invalid_request"),
        row("expires_in 1e30", M::POST, format!("/pools/{p1}/join-tokens"), admin(), Body::Json(json!({"expires_in": 1e30})), 400, "invalid_request"),
        row("expires_in beyond the maximum", M::POST, format!("/pools/{p1}/join-tokens"), admin(), Body::Json(json!({"expires_in": u64::MAX})), 400, "invalid_request"),
        row("unknown field in a pool update", M::PATCH, format!("/pools/{p1}"), admin(), Body::Json(json!({"nmae": "x"})), 400, "invalid_request"),
        row("report kind unknown", M::POST, "/endpoint/report", a(), Body::Json(json!({"kind": "rm -rf", "snapshot": {"packages": []}})), 400, "invalid_request"),
        row("report body is null", M::POST, "/endpoint/report", a(), json_raw(b"null".to_vec()), 400, "invalid_request"),
        row("percent 300", M::POST, format!("/endpoint/operations/{}/progress", w.op_a), a(), Body::Json(json!({"stage": "x", "percent": 300})), 400, "invalid_request"),
        row("operation kind unknown", M::POST, "/endpoint/operations", a(), Body::Json(json!({"kind": "shell", "idempotency_key": "z"})), 400, "invalid_request"),
        // Huge bodies on routes without a token or with the admin token (8 MiB default limit).
        row("9 MiB pool body", M::POST, "/pools", admin(), json_raw(big.clone()), 413, "payload_too_large"),
        row("9 MiB registration", M::POST, "/register", Auth::None, json_raw(big), 413, "payload_too_large"),
        // Identifiers out of range or of something else.
        row("pool id beyond i64", M::GET, "/pools/9223372036854775808", admin(), Body::None, 400, "invalid_request"),
        row("pool id negative", M::GET, "/pools/-1", admin(), Body::None, 404, "not_found"),
        row("snapshot hash with dots", M::GET, "/snapshots/..%2F..%2Fetc%2Fpasswd", admin(), Body::None, 400, "invalid_request"),
        row("limit beyond u64", M::GET, "/operations?limit=99999999999999999999999", admin(), Body::None, 400, "invalid_request"),
        row("limit negative", M::GET, "/operations?limit=-5", admin(), Body::None, 400, "invalid_request"),
        row("move endpoint to a missing pool", M::PATCH, format!("/endpoints/{}", w.a.0), admin(), Body::Json(json!({"pool_id": 999_999})), 404, "not_found"),
        row("revert target to a missing revision", M::POST, format!("/pools/{p1}/target/revert"), admin(), Body::Json(json!({"to_revision": 99, "expected_revision": 1})), 404, "not_found"),
        row("revoke a missing endpoint", M::POST, "/endpoints/0/revoke", admin(), Body::Json(json!({})), 404, "not_found"),
        row("cancel a missing operation", M::POST, "/operations/999999/cancel", admin(), Body::Json(json!({})), 404, "not_found"),
        // Another endpoint's and another pool's ids, with endpoint A's token.
        row("A posts B's operation result", M::POST, format!("/endpoint/operations/{}/result", w.op_b), a(), Body::Json(json!({"state": "completed", "message": "x"})), 403, "forbidden"),
        row("A reads pool 2's endpoints", M::GET, format!("/pools/{p2}/endpoints"), a(), Body::None, 403, "forbidden"),
        row("A cancels B's operation (admin route)", M::POST, format!("/operations/{}/cancel", w.op_b), a(), Body::Json(json!({})), 403, "forbidden"),
        row("A creates an operation for B", M::POST, format!("/endpoints/{}/operations", w.b.0), a(), Body::Json(json!({"kind": "sync-to-latest"})), 403, "forbidden"),
        row("A sets B's state as its pool target", M::POST, "/endpoint/target", a(), Body::Json(json!({"expected_revision": 1, "snapshot": w.b_state.hash()})), 409, "snapshot_not_current"),
        row("A reads B's state", M::GET, format!("/snapshots/{}", w.b_state.hash()), a(), Body::None, 404, "not_found"),
        // Tokens: forged, revoked, malformed, of the wrong kind.
        row("forged endpoint token", M::GET, "/endpoint/status", Auth::Bearer(format!("ppe_{}", "0".repeat(64))), Body::None, 401, "unauthorized"),
        row("admin token plus a byte", M::GET, "/pools", Auth::Bearer(format!("{ADMIN}x")), Body::None, 401, "unauthorized"),
        row("a state of 20,001 packages", M::POST, "/endpoint/report", a(), Body::Json(serde_json::to_value(StateReport::Full { snapshot: oversized() }).unwrap()), 413, "too_many_packages"),
        row("revoked token reports", M::POST, "/endpoint/report", Auth::Bearer(w.revoked.clone()), Body::Json(serde_json::to_value(StateReport::Full { snapshot: snap(&[("x", "1-1")]) }).unwrap()), 401, "unauthorized"),
        row("4 KiB token", M::GET, "/pools", Auth::Bearer("a".repeat(4096)), Body::None, 401, "unauthorized"),
        row("Basic auth", M::GET, "/pools", Auth::Header(format!("Basic {ADMIN}")), Body::None, 401, "unauthorized"),
        row("Bearer without token", M::GET, "/pools", Auth::Header("Bearer ".into()), Body::None, 401, "unauthorized"),
        row("join token as bearer", M::GET, "/endpoint/status", Auth::Bearer(w.join_ok.clone()), Body::None, 401, "unauthorized"),
        row("expired join token", M::POST, "/register", Auth::None, Body::Json(json!({"join_token": w.join_expired, "name": "n1"})), 401, "unauthorized"),
        row("used-up join token", M::POST, "/register", Auth::None, Body::Json(json!({"join_token": w.join_used_up, "name": "n2"})), 401, "unauthorized"),
        row("revoked join token", M::POST, "/register", Auth::None, Body::Json(json!({"join_token": w.join_revoked, "name": "n3"})), 401, "unauthorized"),
        row("endpoint token as join token", M::POST, "/register", Auth::None, Body::Json(json!({"join_token": w.a.1, "name": "n4"})), 401, "unauthorized"),
        // Replayed idempotency keys with a different body.
        row("key k1 replayed for a sync", M::POST, "/endpoint/operations", a(), Body::Json(json!({"kind": "sync-to-latest", "idempotency_key": "k1"})), 409, "idempotency_key_reused"),
        row("key k1 replayed with another to_snapshot", M::POST, "/endpoint/operations", a(), Body::Json(json!({"kind": "revert", "idempotency_key": "k1", "to_snapshot": w.b_state.hash()})), 409, "idempotency_key_reused"),
        row("idempotency key of 129 bytes", M::POST, "/endpoint/operations", a(), Body::Json(json!({"kind": "revert", "idempotency_key": "k".repeat(129)})), 400, "invalid_request"),
    ];
    // Names and versions crafted as pacman options, paths, shell words and control bytes.
    let hostile_names = [
        "-Syu",
        "--config=x",
        "a;b",
        "../x",
        "a/b",
        "a\0b",
        "a\nb",
        "$(id)",
        ".",
    ];
    for n in hostile_names {
        rows.push(row(
            format!("register as {n:?}"),
            M::POST,
            "/register",
            Auth::None,
            Body::Json(json!({"join_token": w.join_ok, "name": n})),
            400,
            "invalid_request",
        ));
        rows.push(row(
            format!("pool named {n:?}"),
            M::POST,
            "/pools",
            admin(),
            Body::Json(json!({"name": n})),
            400,
            "invalid_request",
        ));
        rows.push(row(
            format!("rename pool to {n:?}"),
            M::PATCH,
            format!("/pools/{p1}"),
            admin(),
            Body::Json(json!({"name": n})),
            400,
            "invalid_request",
        ));
        rows.push(row(
            format!("rename endpoint to {n:?}"),
            M::PATCH,
            format!("/endpoints/{}", w.a.0),
            admin(),
            Body::Json(json!({"name": n})),
            400,
            "invalid_request",
        ));
        rows.push(row(
            format!("package named {n:?}"),
            M::POST,
            "/endpoint/report",
            a(),
            Body::Json(report_with("name", json!(n))),
            400,
            "invalid_request",
        ));
    }
    for v in [
        "--config=x",
        "-1",
        "1.0-1;rm",
        "../1",
        "1\n2",
        "1.0-1\0",
        "1 0",
        "1:2:3",
        "a:1",
        "1-x",
        "",
    ] {
        rows.push(row(
            format!("package version {v:?}"),
            M::POST,
            "/endpoint/report",
            a(),
            Body::Json(report_with("version", json!(v))),
            400,
            "invalid_request",
        ));
    }
    for (field, v) in [
        ("arch", "../x"),
        ("arch", "-x"),
        ("arch", "x86-64"),
        ("repo", "local"),
        ("repo", "../r"),
        ("repo", "-r"),
        ("reason", "root"),
    ] {
        rows.push(row(
            format!("package {field} {v:?}"),
            M::POST,
            "/endpoint/report",
            a(),
            Body::Json(report_with(field, json!(v))),
            400,
            "invalid_request",
        ));
    }
    // The same through a delta against A's acknowledged state.
    let base = w.a_state.hash();
    for (what, delta) in [
        (
            "delta removes \"-Syu\"",
            json!({"base": base, "target": base, "removed": ["-Syu"]}),
        ),
        (
            "delta adds \"../x\"",
            json!({"base": base, "target": base, "added": [{"name": "../x", "version": "1-1", "arch": "any", "reason": "explicit"}]}),
        ),
        (
            "delta changes to \"--config=x\"",
            json!({"base": base, "target": base, "changed": [{"name": "bash", "version": "--config=x", "arch": "any", "reason": "explicit"}]}),
        ),
        (
            "delta reason for \"a;b\"",
            json!({"base": base, "target": base, "reason_changed": [["a;b", "dependency"]]}),
        ),
    ] {
        rows.push(row(
            what,
            M::POST,
            "/endpoint/report",
            a(),
            Body::Json(json!({"kind": "delta", "delta": delta})),
            400,
            "invalid_request",
        ));
    }
    rows
}

#[test]
fn hostile_rest_requests_are_refused_and_change_nothing() {
    let (_dir, rt, w) = world();
    rt.block_on(hostile_rest(&w));
}

async fn hostile_rest(w: &World) {
    let rows = rest_rows(w);
    let mut failures = Vec::new();
    for r in &rows {
        let before = dump(&w.db);
        let (status, body) = w.call(r.method.clone(), &r.path, &r.auth, &r.body).await;
        let after = dump(&w.db);
        let code = body["code"].as_str().unwrap_or("");
        let message = body["message"].as_str().unwrap_or("");
        if status != r.status || code != r.code || message.is_empty() {
            failures.push(format!(
                "{}: {} {} -> {status} {code:?} {message:?}, expected {} {:?}",
                r.what,
                r.method,
                r.path.chars().take(80).collect::<String>(),
                r.status,
                r.code
            ));
        }
        if before != after {
            failures.push(format!(
                "{}: the database changed: {}",
                r.what,
                first_difference(&before, &after)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // The coordinator still serves, and the rows left the world as it was set up.
    let status = w
        .ok(
            Method::GET,
            &format!("/endpoints/{}", w.a.0),
            ADMIN,
            Value::Null,
        )
        .await;
    assert_eq!(status["name"], "a");
    assert_eq!(status["current"], json!(w.a_state.hash()));
    eprintln!("{} REST rows refused, database unchanged", rows.len());
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames, on endpoint A's socket after its hello.

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(w: &World) -> Ws {
    let url = format!("ws://{}/api/v1/endpoints/ws", w.c.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", w.a.1).parse().unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect hung")
        .unwrap();
    let hello = EndpointMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent: "hostile".into(),
        acked_state: Some(w.a_state.hash()),
    };
    ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into()))
        .await
        .unwrap();
    match next(&mut ws).await {
        Some(ServerMsg::Welcome { .. }) => ws,
        other => panic!("no welcome: {other:?}"),
    }
}

/// The next server message; `None` when the socket closes.
async fn next(ws: &mut Ws) -> Option<ServerMsg> {
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("socket hung")
        {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// What a frame must get (the socket stays usable after each).
enum WsExpect {
    Error(&'static str),
    /// A report whose base is not what the coordinator has: "send the full state".
    NeedFull,
}

#[test]
fn hostile_websocket_frames_are_refused_and_change_nothing() {
    let (_dir, rt, w) = world();
    rt.block_on(hostile_ws(&w));
}

async fn hostile_ws(w: &World) {
    let text = |s: String| Message::Text(s.into());
    let report = |v: Value| text(json!({"type": "report", "report": v}).to_string());
    let mut rows: Vec<(String, Message, WsExpect)> = vec![
        ("100k [".into(), text("[".repeat(100_000)), WsExpect::Error("invalid_request")),
        ("100k { in a report".into(), text(format!(r#"{{"type":"report","report":{}"#, r#"{"a":"#.repeat(100_000))), WsExpect::Error("invalid_request")),
        ("wrong type tag".into(), text(r#"{"type":"rm -rf /"}"#.into()), WsExpect::Error("invalid_request")),
        ("operation id is a string".into(), text(r#"{"type":"progress","operation":"1","progress":{"stage":"x","percent":1}}"#.into()), WsExpect::Error("invalid_request")),
        ("hello again".into(), text(json!({"type": "hello", "protocol": PROTOCOL_VERSION, "agent": "x", "acked_state": null}).to_string()), WsExpect::Error("invalid_request")),
        ("B's operation result".into(), text(json!({"type": "result", "operation": w.op_b, "result": {"state": "completed", "message": "x"}}).to_string()), WsExpect::Error("forbidden")),
        ("B's operation progress".into(), text(json!({"type": "progress", "operation": w.op_b, "progress": {"stage": "x", "percent": 1}}).to_string()), WsExpect::Error("forbidden")),
        ("a missing operation's progress".into(), text(json!({"type": "progress", "operation": 999_999, "progress": {"stage": "x", "percent": 1}}).to_string()), WsExpect::Error("not_found")),
        ("delta against another base".into(), report(json!({"kind": "delta", "delta": {"base": w.b_state.hash(), "target": w.a_state.hash()}})), WsExpect::NeedFull),
        ("a delta growing the state to 20,001 packages".into(), report(serde_json::to_value(StateReport::Delta { delta: w.a_state.diff(&oversized()) }).unwrap()), WsExpect::Error("too_many_packages")),
        ("invalid UTF-8 as a binary frame".into(), Message::Binary(b"{\"type\":\"heartbeat\xff\"}".to_vec().into()), WsExpect::Error("invalid_request")),
    ];
    for n in ["-Syu", "--config=x", "a;b", "../x", "a\0b", "a\nb"] {
        rows.push((
            format!("report with package {n:?}"),
            report(report_with("name", json!(n))),
            WsExpect::Error("invalid_request"),
        ));
        rows.push((
            format!("report with version {n:?}"),
            report(report_with("version", json!(n))),
            WsExpect::Error("invalid_request"),
        ));
    }
    let mut failures = Vec::new();
    let mut ws = connect(w).await;
    for (what, frame, expect) in rows.iter().map(|(a, b, c)| (a, b.clone(), c)) {
        let before = dump(&w.db);
        let _ = ws.send(frame).await;
        let got = next(&mut ws).await;
        match (expect, &got) {
            (WsExpect::Error(code), Some(ServerMsg::Error { error })) if error.code == *code => {}
            (
                WsExpect::NeedFull,
                Some(ServerMsg::ReportAck {
                    ack: pacpool::proto::ReportAck::NeedFull { .. },
                }),
            ) => {}
            _ => failures.push(format!("{what}: got {got:?}")),
        }
        let after = dump(&w.db);
        if before != after {
            failures.push(format!(
                "{what}: the database changed: {}",
                first_difference(&before, &after)
            ));
        }
        if got.is_none() {
            // Reconnect (its hello is not part of the row).
            ws = connect(w).await;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} frames failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // The socket still works: a heartbeat gets no error and the state is unchanged.
    ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into()))
        .await
        .unwrap();
    let status = w
        .ok(
            Method::GET,
            &format!("/endpoints/{}", w.a.0),
            ADMIN,
            Value::Null,
        )
        .await;
    assert_eq!(status["current"], json!(w.a_state.hash()));
    eprintln!("{} WebSocket rows refused, database unchanged", rows.len());
}
