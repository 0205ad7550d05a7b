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
    world_with(|_| {})
}

/// [`world`] with `tune` changing the coordinator's settings first.
fn world_with(
    tune: impl FnOnce(&mut pacpool::coordinator::Settings),
) -> (tempfile::TempDir, tokio::runtime::Runtime, World) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("coordinator.db");
    let c = Coordinator::start_with(&db, None, tune);
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
        row("1,001 ignore patterns", M::POST, "/pools", admin(), Body::Json(json!({"name": "x", "policy": {"plan": {"ignore": vec!["a*"; 1001]}}})), 400, "invalid_request"),
        row("a 300-byte protected pattern", M::POST, "/pools", admin(), Body::Json(json!({"name": "x", "policy": {"plan": {"protected": ["a".repeat(300)]}}})), 400, "invalid_request"),
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
        // Rollouts (issue #14): the clock outside test mode, actions and holds.
        row("admin moves the clock (test_clock off)", M::POST, "/clock", admin(), Body::Json(json!({"advance": 86_400})), 403, "forbidden"),
        row("endpoint moves the clock", M::POST, "/clock", a(), Body::Json(json!({"advance": 86_400})), 403, "forbidden"),
        row("unknown rollout action", M::POST, format!("/pools/{p1}/rollout/explode"), admin(), Body::None, 404, "not_found"),
        row("pause without a rollout", M::POST, format!("/pools/{p1}/rollout/pause"), admin(), Body::None, 409, "no_rollout"),
        row("endpoint halts its pool's rollout", M::POST, format!("/pools/{p1}/rollout/halt"), a(), Body::None, 403, "forbidden"),
        row("hold with a 501-byte reason", M::POST, format!("/endpoints/{}/hold", w.a.0), admin(), Body::Json(json!({"reason": "r".repeat(501), "until": 4_000_000_000_i64})), 400, "invalid_request"),
        row("hold ending in the past", M::POST, format!("/endpoints/{}/hold", w.a.0), admin(), Body::Json(json!({"reason": "x", "until": 1})), 400, "invalid_request"),
        row("A holds B (admin route)", M::POST, format!("/endpoints/{}/hold", w.b.0), a(), Body::Json(json!({"reason": "x", "until": 4_000_000_000_i64})), 403, "forbidden"),
        row("A holds itself in a pool without rings", M::POST, "/endpoint/hold", a(), Body::Json(json!({"reason": "x", "until": 4_000_000_000_i64})), 409, "no_rings"),
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

// ---------------------------------------------------------------------------------------------
// Issue #12: revocation, rate and storage budgets, connection limits. Each test prints the
// figures recorded in RELIABILITY.md.

/// An endpoint socket for `token`, upgraded but without `hello`.
async fn open_socket(w: &World, token: &str) -> Ws {
    let mut req = format!("ws://{}/api/v1/endpoints/ws", w.c.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio::time::timeout(HANG, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect hung")
        .unwrap()
        .0
}

async fn say_hello(ws: &mut Ws) -> Option<ServerMsg> {
    let hello = EndpointMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent: "hostile".into(),
        acked_state: None,
    };
    ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into()))
        .await
        .ok()?;
    next(ws).await
}

/// The code of the close frame that ends `ws` (`None`: it ended without one). Bounded by
/// [`HANG`] only so a bug fails instead of hanging.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("the socket was not closed")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

fn count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Item 1: revoke, remove and move close the endpoint's sockets at once, whether or not they
/// sent `hello`, with a close code that says why. Before: a socket opened before the
/// revocation was welcomed at `hello` and its reports were stored.
#[test]
fn revoke_remove_and_move_close_the_endpoints_sockets_at_once() {
    let (_dir, rt, w) = world();
    rt.block_on(async {
        for (what, code) in [("revoke", 4001), ("remove", 4003), ("move", 4004)] {
            let (id, token) = w.register(&w.join_ok, what).await;
            let mut early = open_socket(&w, &token).await;
            let mut late = open_socket(&w, &token).await;
            assert!(matches!(
                say_hello(&mut late).await,
                Some(ServerMsg::Welcome { .. })
            ));
            let (method, path, body) = match what {
                "revoke" => (
                    Method::POST,
                    format!("/endpoints/{id}/revoke"),
                    Body::Json(json!({})),
                ),
                "remove" => (Method::DELETE, format!("/endpoints/{id}"), Body::None),
                _ => (
                    Method::PATCH,
                    format!("/endpoints/{id}"),
                    Body::Json(json!({"pool_id": w.p2})),
                ),
            };
            let (st, v) = w
                .call(method, &path, &Auth::Bearer(ADMIN.into()), &body)
                .await;
            assert!((200..300).contains(&st), "{what}: {st} {v}");
            let after = dump(&w.db);
            assert_eq!(
                close_code(&mut early).await,
                Some(code),
                "{what}: socket before hello"
            );
            assert_eq!(
                close_code(&mut late).await,
                Some(code),
                "{what}: socket after hello"
            );
            // Nothing the closed sockets could still send reached the database.
            let _ = say_hello(&mut early).await;
            let _ = late
                .send(Message::Text(r#"{"type":"heartbeat"}"#.into()))
                .await;
            assert_eq!(
                dump(&w.db),
                after,
                "{what}: the database changed after the close"
            );
            if what == "move" {
                // Reconnecting lands in the new pool.
                let mut ws = open_socket(&w, &token).await;
                match say_hello(&mut ws).await {
                    Some(ServerMsg::Welcome { pool_id, .. }) => assert_eq!(pool_id, w.p2),
                    other => panic!("no welcome after the move: {other:?}"),
                }
            } else {
                // A new socket with the old token is refused at the upgrade.
                let mut req = format!("ws://{}/api/v1/endpoints/ws", w.c.addr)
                    .into_client_request()
                    .unwrap();
                req.headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                assert!(tokio_tungstenite::connect_async(req).await.is_err());
            }
        }
        eprintln!(
            "revoke / remove / move: sockets before and after hello closed with 4001 / 4003 / 4004"
        );
    });
}

/// Item 2: WebSocket messages take from the token's one rate budget, shared with REST; and
/// (item 3) state changes do not multiply audit rows. Before: 3,000 reports in 1.7 s, all
/// stored and audited.
#[test]
fn websocket_messages_share_the_tokens_rate_budget() {
    let (_dir, rt, w) = world_with(|s| {
        s.rate_limit_per_minute = 60;
        s.rate_limit_burst = 60;
    });
    rt.block_on(async {
        const N: usize = 3000;
        let frames: Vec<String> = (0..N)
            .map(|i| {
                let v = format!("5.{i}-1");
                let s = snap(&[("bash", v.as_str()), ("glibc", "2.40-1")]);
                serde_json::to_string(&EndpointMsg::Report {
                    report: StateReport::Full { snapshot: s },
                    source: None,
                })
                .unwrap()
            })
            .collect();
        let (snaps0, audit0) = (
            count(&w.db, "SELECT count(*) FROM snapshots"),
            count(&w.db, "SELECT count(*) FROM audit"),
        );
        let ws = connect(&w).await;
        let (mut tx, mut rx) = ws.split();
        let t = std::time::Instant::now();
        let sender = tokio::spawn(async move {
            for f in frames {
                tx.send(Message::Text(f.into())).await.unwrap();
            }
            tx
        });
        let (mut accepted, mut limited) = (0, 0);
        while accepted + limited < N {
            let msg = tokio::time::timeout(HANG, rx.next()).await.expect("socket hung");
            match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str(&t).unwrap() {
                    ServerMsg::ReportAck { .. } => accepted += 1,
                    ServerMsg::Error { error } if error.code == "rate_limited" => limited += 1,
                    other => panic!("unexpected answer {other:?}"),
                },
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
        let elapsed = t.elapsed();
        let _tx = sender.await.unwrap();
        let new_snaps = count(&w.db, "SELECT count(*) FROM snapshots") - snaps0;
        let new_audit = count(&w.db, "SELECT count(*) FROM audit") - audit0;
        eprintln!(
            "{N} WS reports in {:.1} s: {accepted} accepted, {limited} refused (rate_limited), {new_snaps} new snapshots, {new_audit} new audit rows",
            elapsed.as_secs_f64()
        );
        // 60 in the bucket plus one a second refilled while the test ran.
        let allowed = 60 + elapsed.as_secs() as usize + 2;
        assert!(accepted <= allowed, "{accepted} accepted, at most {allowed} allowed");
        assert!(new_snaps as usize <= accepted);
        assert!(new_audit <= 1, "{new_audit} audit rows for one endpoint's reports within a minute");
        // The same bucket answers REST (of three requests at once, at most one finds a
        // request refilled meanwhile).
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let (st, _) = w
                .call(Method::GET, "/endpoint/status", &Auth::Bearer(w.a.1.clone()), &Body::None)
                .await;
            statuses.push(st);
        }
        assert!(statuses.iter().filter(|s| **s == 429).count() >= 2, "{statuses:?}");
    });
}

/// Item 3: stored strings are bounded (a result's failure reasons, its message) and one
/// endpoint's storage per hour is bounded. Before: 25 results with 7 failures of 1 MiB
/// grew the database by 183 MB.
#[test]
fn one_endpoint_cannot_fill_the_disk() {
    let (dir, rt, w) = world();
    let size = |dir: &Path| -> u64 {
        ["coordinator.db", "coordinator.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum()
    };
    rt.block_on(async {
        let (_, token) = w.register(&w.join_ok, "filler").await;
        let reason = "x".repeat(1 << 20);
        let failures: Vec<Value> = (0..7)
            .map(|i| json!({"name": format!("pkg{i}"), "reason": reason}))
            .collect();
        let body = json!({"state": "failed", "message": "m".repeat(60_000), "failures": failures});
        let before = size(dir.path());
        let mut last = 0;
        for _ in 0..25 {
            let op = w
                .ok(
                    Method::POST,
                    "/endpoint/operations",
                    &token,
                    json!({"kind": "revert"}),
                )
                .await;
            last = op["id"].as_i64().unwrap();
            w.ok(
                Method::POST,
                &format!("/endpoint/operations/{last}/result"),
                &token,
                body.clone(),
            )
            .await;
        }
        let op = w
            .ok(
                Method::GET,
                &format!("/operations/{last}"),
                ADMIN,
                Value::Null,
            )
            .await;
        let stored = &op["result"];
        assert_eq!(stored["failures"].as_array().unwrap().len(), 7);
        let r = stored["failures"][0]["reason"].as_str().unwrap();
        assert!(
            r.len() <= 1024 && r.ends_with("[cut: too long]"),
            "{}",
            r.len()
        );
        assert!(stored["message"].as_str().unwrap().len() <= 8 * 1024);
        let grown = size(dir.path()).saturating_sub(before);
        eprintln!(
            "25 results with 7 failures of 1 MiB and a 60 KB message: database + WAL grew {} KiB",
            grown / 1024
        );
        assert!(grown < 4 << 20, "grew {grown} bytes");
    });
    drop(w);

    // The storage budget: 1 MiB an hour, distinct 2,000-package states (~80 KB each).
    let (dir, rt, w) = world_with(|s| {
        s.storage_per_endpoint_mib_per_hour = 1;
        s.rate_limit_per_minute = 0;
    });
    rt.block_on(async {
        let (id, token) = w.register(&w.join_ok, "big").await;
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..40 {
            let pkgs: Vec<(String, String)> = (0..2000)
                .map(|i| (format!("package-{i:04}"), format!("1.{i}.{round}-1")))
                .collect();
            let refs: Vec<(&str, &str)> =
                pkgs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let body = serde_json::to_value(StateReport::Full { snapshot: snap(&refs) }).unwrap();
            let (st, v) = w
                .call(Method::POST, "/endpoint/report", &Auth::Bearer(token.clone()), &Body::Json(body))
                .await;
            match st {
                200 => accepted += 1,
                429 => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    refused += 1;
                }
                _ => panic!("{st} {v}"),
            }
        }
        let stored = count(
            &w.db,
            "SELECT coalesce(sum(length(body)), 0) FROM snapshots WHERE package_count = 2000",
        );
        eprintln!(
            "storage budget 1 MiB/h, endpoint {id}: 40 distinct 2,000-package full reports: {accepted} accepted, {refused} refused, {} KiB of snapshots stored",
            stored / 1024
        );
        assert!(refused > 0);
        assert!(stored <= (1 << 20) + (128 << 10), "{stored} bytes stored");
    });
    drop(dir);
}

/// Item 6: a request whose token is not valid is limited per client address, so a fresh
/// random token per request gets no fresh bucket. Before: 2,000 fake-token requests, none
/// refused.
#[test]
fn invalid_tokens_are_limited_per_address() {
    let (_dir, rt, w) = world();
    rt.block_on(async {
        let mut refused = 0;
        let t = std::time::Instant::now();
        for i in 0..2000u32 {
            let fake = format!(
                "ppe_{:064x}",
                u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            );
            let (st, _) = w
                .call(
                    Method::GET,
                    "/endpoint/status",
                    &Auth::Bearer(fake),
                    &Body::None,
                )
                .await;
            match st {
                401 => {}
                429 => refused += 1,
                _ => panic!("{st}"),
            }
        }
        eprintln!(
            "2,000 requests with random fake tokens in {:.1} s: {refused} refused with 429",
            t.elapsed().as_secs_f64()
        );
        assert!(refused >= 1800, "{refused} refused");
        // Registration with a fake bearer token is counted against the address too.
        let (st, _) = w
            .call(
                Method::POST,
                "/register",
                &Auth::Bearer("fake".into()),
                &Body::Json(json!({"join_token": "nope", "name": "x"})),
            )
            .await;
        assert_eq!(st, 429);
        // A valid token from the same address has its own bucket.
        let (st, v) = w
            .call(
                Method::GET,
                "/endpoint/status",
                &Auth::Bearer(w.a.1.clone()),
                &Body::None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
    });
}

/// A TCP connection from `from` (another loopback address than the test's own clients).
async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(HANG, sock.connect(to))
        .await
        .expect("connect hung")
        .unwrap()
}

/// How many of `conns` the server has closed (read gives EOF, an error or an answer)
/// within `wait` each (read concurrently); the rest are still held open.
async fn closed_by_server(conns: Vec<tokio::net::TcpStream>, wait: Duration) -> (usize, usize) {
    use tokio::io::AsyncReadExt;
    let reads = conns.into_iter().map(|mut c| async move {
        let mut buf = [0u8; 512];
        let r = tokio::time::timeout(wait, c.read(&mut buf)).await.is_ok();
        (r, c)
    });
    let results = futures_util::future::join_all(reads).await;
    let closed = results.iter().filter(|(r, _)| *r).count();
    (closed, results.len() - closed)
}

/// Item 4 (slowloris): connections per address are capped, and a client that does not
/// finish its headers is cut off after header_read_timeout_secs. Before: 1,100 connections
/// sending partial headers made every other request time out ("Too many open files").
#[test]
fn slowloris_connections_are_capped_and_timed_out() {
    let (_dir, rt, w) = world_with(|s| {
        s.max_connections_per_ip = 50;
        s.header_read_timeout_secs = 300;
    });
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut held = Vec::new();
        for _ in 0..300 {
            let mut c = connect_from("127.0.0.2", w.c.addr).await;
            let _ = c.write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\nX-a: ").await;
            held.push(c);
        }
        // While they are held, a client from another address is served.
        let (st, _) = w.call(Method::GET, "/health/live", &Auth::None, &Body::None).await;
        assert_eq!(st, 200);
        let (closed, open) = closed_by_server(held, Duration::from_secs(3)).await;
        eprintln!("300 partial-header connections from one address, cap 50: {closed} closed at once, {open} held");
        assert_eq!((closed, open), (250, 50));
        let (_, metrics) = w.call(Method::GET, "/metrics", &Auth::None, &Body::None).await;
        let metrics = metrics.as_str().unwrap_or_default().to_owned();
        assert!(metrics.contains("pacpool_connections_refused_total 250"), "{metrics}");
    });
    drop(w);
    // The header read timeout.
    let (_dir, rt, w) = world_with(|s| s.header_read_timeout_secs = 1);
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = connect_from("127.0.0.2", w.c.addr).await;
        c.write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        // Bounded only so a bug fails instead of hanging.
        let r = tokio::time::timeout(HANG, c.read(&mut buf)).await;
        assert!(
            r.is_ok(),
            "a client that never finished its headers was not cut off"
        );
        // A kept-alive connection waiting for its next request is cut off too.
        let mut c = connect_from("127.0.0.2", w.c.addr).await;
        c.write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let r = tokio::time::timeout(HANG, c.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "an idle kept-alive connection was not closed");
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        eprintln!("partial headers and idle keep-alive: closed after header_read_timeout_secs = 1");
    });
}

/// Item 5: silent connections that never start their TLS handshake are limited per address,
/// so they cannot stall anybody else's. Before: past 1,024 pending handshakes the accept
/// loop waited, and legitimate clients timed out.
#[test]
fn pending_tls_handshakes_from_one_address_do_not_starve_others() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let c = Coordinator::start_with(&dir.path().join("c.db"), None, |s| {
        s.tls = Some(pacpool::coordinator::TlsSettings {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        });
        s.max_tls_handshakes_per_ip = 16;
        s.max_connections_per_ip = 5000;
        s.header_read_timeout_secs = 300;
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..1100 {
            held.push(connect_from("127.0.0.2", c.addr).await);
        }
        let tls = pacpool::tls::client_config(Some(&dir.path().join("ca.pem"))).unwrap();
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
            .build()
            .unwrap();
        let resp = tokio::time::timeout(
            HANG,
            client
                .get(format!("https://127.0.0.1:{}/api/v1/health/live", c.addr.port()))
                .send(),
        )
        .await
        .expect("a legitimate TLS client was starved")
        .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let (closed, open) = closed_by_server(held, Duration::from_secs(3)).await;
        eprintln!(
            "1,100 silent connections from one address, 16 handshakes per address: {closed} closed at once, {open} held; a client from another address was served"
        );
        assert_eq!((closed, open), (1084, 16));
    });
}
