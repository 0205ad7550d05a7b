//! The coordinator end to end: the real server on 127.0.0.1:0 (bound before launch, so no
//! waiting for it to start), real HTTP (reqwest) and WebSocket (tokio-tungstenite) clients.
//! Timeouts below only turn a hang into a failure; nothing asserts on timing.
//!
//! One suite, two databases: every test runs on SQLite (`sqlite::name`) and on a real
//! PostgreSQL started for it (`postgres::name`, see `support/pg.rs`).

#[path = "support/pg.rs"]
mod pg;

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pacpool::coordinator::{CoordinatorError, Secret, Settings, launch};
use pacpool::localdb::Reason;
use pacpool::proto::{
    ApiError, EndpointMsg, EndpointState, EndpointStatus, JoinToken, JoinTokenInfo, Operation,
    OperationState, PROTOCOL_VERSION, Page, Pool, RegisterResponse, ReportAck, ServerMsg,
    StateReport, Stats, TargetInfo,
};
use pacpool::snapshot::{PackageState, Snapshot};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const ADMIN: &str = "test-admin-token";
/// Upper bound for any single wait; only there so a bug fails instead of hanging.
const HANG: Duration = Duration::from_secs(20);

struct Server {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), CoordinatorError>>,
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A test's database: a SQLite file in a temporary directory, or a database in a
/// PostgreSQL cluster of its own.
struct TestDb {
    dir: tempfile::TempDir,
    pg: Option<pg::PgCluster>,
    url: Option<String>,
}

impl TestDb {
    fn new(b: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match b {
            Backend::Sqlite => Self {
                dir,
                pg: None,
                url: None,
            },
            Backend::Postgres => {
                let pg = pg::PgCluster::start().unwrap_or_else(|why| {
                    panic!("PostgreSQL is needed for the postgres:: tests: {why}")
                });
                let url = pg.database("pacpool");
                Self {
                    dir,
                    pg: Some(pg),
                    url: Some(url),
                }
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What `Settings::database` gets.
    fn database(&self) -> std::path::PathBuf {
        match &self.url {
            Some(u) => u.into(),
            None => self.dir.path().join("coordinator.db"),
        }
    }

    /// One integer from SQL that both databases accept, read beside the coordinator.
    fn sql_i64(&self, sql: &str) -> i64 {
        match &self.pg {
            Some(pg) => pg.psql("pacpool", sql).parse().unwrap(),
            None => {
                let db = rusqlite::Connection::open(self.database()).unwrap();
                db.busy_timeout(HANG).unwrap();
                db.query_row(sql, [], |r| r.get(0)).unwrap()
            }
        }
    }

    /// Runs SQL that both databases accept, beside the coordinator.
    fn sql_exec(&self, sql: &str) {
        match &self.pg {
            Some(pg) => {
                pg.psql("pacpool", sql);
            }
            None => {
                let db = rusqlite::Connection::open(self.database()).unwrap();
                db.busy_timeout(HANG).unwrap();
                db.execute_batch(sql).unwrap();
            }
        }
    }
}

async fn start(db: &TestDb) -> Server {
    start_with(db, |_| {}).await
}

async fn start_with(db: &TestDb, adjust: impl FnOnce(&mut Settings)) -> Server {
    let dir = db.path();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = Settings {
        database: db.database(),
        admin_token_file: dir.join("admin-token"),
        admin_token: Some(Secret(ADMIN.into())),
        body_limit: 1024 * 1024,
        ws_message_limit: 1024 * 1024,
        ..Settings::default()
    };
    settings.repo.dir = Some(dir.join("packages"));
    adjust(&mut settings);
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(launch(settings, listener, async {
        let _ = rx.await;
    }));
    Server {
        base: format!("http://{addr}/api/v1"),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        stop: Some(tx),
        handle,
    }
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = tokio::time::timeout(HANG, req.send())
            .await
            .expect("request hung")
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn ok<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> T {
        let (status, v) = self.call(method.clone(), path, Some(token), body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        serde_json::from_value(v).unwrap()
    }

    async fn pool(&self, name: &str) -> Pool {
        self.ok(Method::POST, "/pools", ADMIN, Some(json!({ "name": name })))
            .await
    }

    async fn join_token(&self, pool: i64) -> String {
        let jt: JoinToken = self
            .ok(
                Method::POST,
                &format!("/pools/{pool}/join-tokens"),
                ADMIN,
                Some(json!({})),
            )
            .await;
        jt.token
    }

    async fn register(&self, join: &str, name: &str) -> RegisterResponse {
        self.ok(
            Method::POST,
            "/register",
            "unused",
            Some(json!({ "join_token": join, "name": name })),
        )
        .await
    }

    async fn report_full(&self, token: &str, snap: &Snapshot) -> ReportAck {
        let body = serde_json::to_value(StateReport::Full {
            snapshot: snap.clone(),
        })
        .unwrap();
        self.ok(Method::POST, "/endpoint/report", token, Some(body))
            .await
    }

    async fn status(&self, token: &str) -> EndpointStatus {
        self.ok(Method::GET, "/endpoint/status", token, None).await
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(HANG, self.handle)
            .await
            .expect("shutdown hung")
            .unwrap()
            .unwrap();
    }
}

fn err(v: &Value) -> ApiError {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not an ApiError ({e}): {v}"))
}

fn snap(pkgs: &[(&str, &str)]) -> Snapshot {
    Snapshot::new(
        pkgs.iter()
            .map(|(n, v)| PackageState {
                name: n.parse().unwrap(),
                version: v.parse().unwrap(),
                arch: "x86_64".parse().unwrap(),
                reason: Reason::Explicit,
                repo: Some("core".parse().unwrap()),
            })
            .collect(),
    )
    .unwrap()
}

/// A pool with `n` registered endpoints (tokens in order).
async fn pool_with(server: &Server, name: &str, n: usize) -> (Pool, Vec<RegisterResponse>) {
    let pool = server.pool(name).await;
    let join = server.join_token(pool.id).await;
    let mut eps = Vec::new();
    for i in 0..n {
        eps.push(server.register(&join, &format!("host{i}")).await);
    }
    (pool, eps)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(server: &Server, path: &str, token: &str) -> Ws {
    let url = format!("{}{path}", server.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect hung")
        .unwrap();
    ws
}

async fn ws_send(ws: &mut Ws, msg: &EndpointMsg) {
    ws.send(Message::Text(serde_json::to_string(msg).unwrap().into()))
        .await
        .unwrap();
}

/// The next server message; `None` on a close frame (returned in `closed`).
async fn ws_next(ws: &mut Ws) -> Result<ServerMsg, Option<tungstenite::protocol::CloseFrame>> {
    loop {
        let msg = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("socket hung");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return Err(None),
        }
    }
}

async fn endpoint_ws(server: &Server, token: &str) -> (Ws, ServerMsg) {
    let mut ws = ws_connect(server, "/endpoints/ws", token).await;
    ws_send(
        &mut ws,
        &EndpointMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "test".into(),
            acked_state: None,
        },
    )
    .await;
    let welcome = ws_next(&mut ws).await.unwrap();
    assert!(matches!(welcome, ServerMsg::Welcome { .. }), "{welcome:?}");
    (ws, welcome)
}

async fn registration_and_auth_matrix(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;

    // No token, a wrong token, a wrong admin token: 401 with an ApiError.
    let (st, v) = s.call(Method::GET, "/pools", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(err(&v).code, "unauthorized");
    let (st, v) = s.get("/pools", "not-a-token").await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    let (pool, eps) = pool_with(&s, "lab", 0).await;
    let join = s.join_token(pool.id).await;
    // Re-registering with the same name gives a new identity and a unique name.
    let a = s.register(&join, "box").await;
    let b = s.register(&join, "box").await;
    assert!(eps.is_empty());
    assert_ne!(a.endpoint_id, b.endpoint_id);
    assert_ne!(a.endpoint_token, b.endpoint_token);
    assert_eq!((a.name.as_str(), b.name.as_str()), ("box", "box-2"));
    assert!(a.endpoint_token.len() >= 64);
    // Bad join token, bad name.
    let (st, v) = s
        .post(
            "/register",
            "x",
            json!({ "join_token": "nope", "name": "c" }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (st, v) = s
        .post(
            "/register",
            "x",
            json!({ "join_token": join, "name": "a b;rm" }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    // An endpoint token cannot use admin routes; the admin token cannot act as an endpoint.
    for path in [
        "/pools",
        "/audit",
        "/operations",
        &format!("/pools/{}/endpoints", pool.id),
    ] {
        let (st, v) = s.get(path, &a.endpoint_token).await;
        assert_eq!(
            (st, err(&v).code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path}"
        );
    }
    let (st, _) = s
        .post(
            &format!("/endpoints/{}/revoke", b.endpoint_id),
            &a.endpoint_token,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s.get("/endpoint/status", ADMIN).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // A cannot touch B's operation.
    s.report_full(&b.endpoint_token, &snap(&[("bash", "5.2-1")]))
        .await;
    let op: Operation = s
        .ok(
            Method::POST,
            "/endpoint/operations",
            &b.endpoint_token,
            Some(json!({ "kind": "revert" })),
        )
        .await;
    let (st, v) = s
        .post(
            &format!("/endpoint/operations/{}/progress", op.id),
            &a.endpoint_token,
            json!({ "stage": "x", "percent": 1 }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (st, _) = s
        .get(&format!("/operations/{}", op.id), &a.endpoint_token)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // A cannot read B's snapshot (not a target of the pool).
    let b_state = snap(&[("bash", "5.2-1")]).hash();
    let (st, _) = s
        .get(&format!("/snapshots/{b_state}"), &a.endpoint_token)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, body) = s
        .get(&format!("/snapshots/{b_state}"), &b.endpoint_token)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body.as_str().unwrap(), snap(&[("bash", "5.2-1")]).encode());

    // Revoked token: 401 everywhere, including the WebSocket.
    let (st, _) = s
        .post(
            &format!("/endpoints/{}/revoke", a.endpoint_id),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = s.get("/endpoint/status", &a.endpoint_token).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let url = format!("{}/endpoints/ws", s.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", a.endpoint_token).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
        other => panic!("revoked token opened a socket: {other:?}"),
    }
    // The revocation and registrations are audited.
    let audit: Page<pacpool::proto::AuditEntry> = s.ok(Method::GET, "/audit", ADMIN, None).await;
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"endpoint.revoke") && actions.contains(&"endpoint.register"),
        "{actions:?}"
    );
    assert!(
        audit
            .items
            .iter()
            .all(|e| e.peer.as_deref() == Some("127.0.0.1"))
    );
    s.shutdown().await;
}

async fn set_as_latest_race_has_one_winner(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "race", 2).await;
    let (a, b) = (&eps[0], &eps[1]);
    let sa = snap(&[("bash", "5.2-1")]);
    let sb = snap(&[("bash", "5.1-1")]);
    s.report_full(&a.endpoint_token, &sa).await;
    s.report_full(&b.endpoint_token, &sb).await;
    let set = |token: String, hash| {
        let s = &s;
        async move {
            s.post(
                "/endpoint/target",
                &token,
                json!({ "expected_revision": 0, "snapshot": hash }),
            )
            .await
        }
    };
    let (ra, rb) = tokio::join!(
        set(a.endpoint_token.clone(), sa.hash()),
        set(b.endpoint_token.clone(), sb.hash())
    );
    let won = one_winner(ra, rb);
    assert_eq!(won.revision, 1);
    let history: Vec<TargetInfo> = s
        .ok(
            Method::GET,
            &format!("/pools/{}/targets", pool.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(history.len(), 1);
    // The loser retries against the current revision and wins revision 2.
    let loser = if won.set_by_endpoint == Some(a.endpoint_id) {
        b
    } else {
        a
    };
    let loser_hash = if loser.endpoint_id == a.endpoint_id {
        sa.hash()
    } else {
        sb.hash()
    };
    let (st, v) = s
        .post(
            "/endpoint/target",
            &loser.endpoint_token,
            json!({ "expected_revision": 1, "snapshot": loser_hash }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["revision"], 2);
    // Setting a snapshot that is not the endpoint's current state is refused.
    let (st, v) = s
        .post(
            "/endpoint/target",
            &loser.endpoint_token,
            json!({ "expected_revision": 2, "snapshot": snap(&[]).hash() }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::CONFLICT, "snapshot_not_current")
    );
    // Admin revert to revision 1 makes revision 3.
    let t: TargetInfo = s
        .ok(
            Method::POST,
            &format!("/pools/{}/target/revert", pool.id),
            ADMIN,
            Some(json!({ "to_revision": 1, "expected_revision": 2 })),
        )
        .await;
    assert_eq!(
        (t.revision, t.reverted_from, t.snapshot),
        (3, Some(1), won.snapshot)
    );
    s.shutdown().await;
}

/// Two answers to set-latest at one expected revision: exactly one 200, and one 409
/// `revision_conflict` naming the winner's target; returns that target.
fn one_winner(x: (StatusCode, Value), y: (StatusCode, Value)) -> TargetInfo {
    let (win, lose) = if x.0 == StatusCode::OK {
        (x, y)
    } else {
        (y, x)
    };
    assert_eq!(win.0, StatusCode::OK, "{win:?} {lose:?}");
    assert_eq!(lose.0, StatusCode::CONFLICT, "{lose:?}");
    let e = err(&lose.1);
    assert_eq!(e.code, "revision_conflict");
    let current: TargetInfo = serde_json::from_value(e.detail.unwrap()).unwrap();
    let won: TargetInfo = serde_json::from_value(win.1).unwrap();
    assert_eq!(current, won);
    won
}

async fn delta_reports_and_recovery(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (_, eps) = pool_with(&s, "deltas", 1).await;
    let t = &eps[0].endpoint_token;
    let a = snap(&[("bash", "5.2-1"), ("zlib", "1.3-1")]);
    let b = snap(&[("bash", "5.2-2"), ("zlib", "1.3-1")]);
    let c = snap(&[("bash", "5.2-3"), ("zlib", "1.3-1")]);
    let delta = |from: &Snapshot, to: &Snapshot| {
        serde_json::to_value(StateReport::Delta {
            delta: from.diff(to),
        })
        .unwrap()
    };

    // A delta before any full state: need full, nothing known.
    let ack: ReportAck = s
        .ok(Method::POST, "/endpoint/report", t, Some(delta(&a, &b)))
        .await;
    assert_eq!(ack, ReportAck::NeedFull { known: None });
    assert_eq!(
        s.report_full(t, &a).await,
        ReportAck::Accepted { state: a.hash() }
    );
    let ack: ReportAck = s
        .ok(Method::POST, "/endpoint/report", t, Some(delta(&a, &b)))
        .await;
    assert_eq!(ack, ReportAck::Accepted { state: b.hash() });
    assert_eq!(s.status(t).await.current, Some(b.hash()));
    // Against a stale base: need full, and the state stays b.
    let ack: ReportAck = s
        .ok(Method::POST, "/endpoint/report", t, Some(delta(&a, &c)))
        .await;
    assert_eq!(
        ack,
        ReportAck::NeedFull {
            known: Some(b.hash())
        }
    );
    // A tampered delta (right base, result does not hash to its target): refused whole.
    let mut bad = b.diff(&c);
    bad.target = a.hash();
    let body = serde_json::to_value(StateReport::Delta { delta: bad }).unwrap();
    let ack: ReportAck = s.ok(Method::POST, "/endpoint/report", t, Some(body)).await;
    assert_eq!(
        ack,
        ReportAck::NeedFull {
            known: Some(b.hash())
        }
    );
    assert_eq!(s.status(t).await.current, Some(b.hash()));
    let (st, _) = s.get(&format!("/snapshots/{}", c.hash()), ADMIN).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "nothing stored for a refused delta"
    );
    // Recovery: full state, then deltas again.
    assert_eq!(
        s.report_full(t, &c).await,
        ReportAck::Accepted { state: c.hash() }
    );
    let ack: ReportAck = s
        .ok(Method::POST, "/endpoint/report", t, Some(delta(&c, &a)))
        .await;
    assert_eq!(ack, ReportAck::Accepted { state: a.hash() });
    s.shutdown().await;
}

async fn operations_are_idempotent_and_one_at_a_time(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "ops", 1).await;
    let t = &eps[0].endpoint_token;
    s.report_full(t, &snap(&[("bash", "5.2-1")])).await;

    // No target yet: sync-to-latest is refused.
    let (st, v) = s
        .post(
            "/endpoint/operations",
            t,
            json!({ "kind": "sync-to-latest" }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::CONFLICT, "no_target")
    );
    s.post(
        "/endpoint/target",
        t,
        json!({ "expected_revision": 0, "snapshot": snap(&[("bash", "5.2-1")]).hash() }),
    )
    .await;

    let body = json!({ "kind": "sync-to-latest", "idempotency_key": "k1" });
    let (st, first) = s.post("/endpoint/operations", t, body.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let (st, again) = s.post("/endpoint/operations", t, body.clone()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(first, again, "a retry returns the first operation");
    let first: Operation = serde_json::from_value(first).unwrap();

    // A second operation while the first is active: 409 naming it.
    let (st, v) = s
        .post("/endpoint/operations", t, json!({ "kind": "revert" }))
        .await;
    let e = err(&v);
    assert_eq!(
        (st, e.code.as_str()),
        (StatusCode::CONFLICT, "operation_active")
    );
    assert_eq!(e.detail.unwrap()["id"], first.id);
    assert!(e.message.contains(&first.id.to_string()), "{}", e.message);

    // The state machine: progress, then a result, then nothing more.
    let op: Operation = s
        .ok(
            Method::POST,
            &format!("/endpoint/operations/{}/progress", first.id),
            t,
            Some(json!({ "stage": "installing", "percent": 40, "current": "upgrading bash" })),
        )
        .await;
    assert_eq!(op.state, OperationState::InProgress);
    assert_eq!(s.status(t).await.state, EndpointState::Syncing);
    let (st, v) = s
        .post(
            &format!("/endpoint/operations/{}/progress", first.id),
            t,
            json!({ "stage": "x", "percent": 101 }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let op: Operation = s
        .ok(Method::POST, &format!("/endpoint/operations/{}/result", first.id), t, Some(json!({ "state": "failed", "message": "mirror down", "failures": [{ "name": "bash", "reason": "404" }] })))
        .await;
    assert_eq!(op.state, OperationState::Failed);
    assert_eq!(op.result.unwrap().failures.len(), 1);
    assert_eq!(s.status(t).await.state, EndpointState::Error);
    let (st, v) = s
        .post(
            &format!("/endpoint/operations/{}/progress", first.id),
            t,
            json!({ "stage": "x", "percent": 1 }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    // The same key still returns the first (finished) operation, not a new one.
    let (st, v) = s.post("/endpoint/operations", t, body).await;
    assert_eq!((st, v["id"].as_i64()), (StatusCode::OK, Some(first.id)));

    // Now a new one may start; an admin cancels it while pending.
    let back_to = snap(&[("bash", "5.0-1")]).hash();
    let (st, v) = s
        .post(
            "/endpoint/operations",
            t,
            json!({ "kind": "revert", "to_snapshot": back_to }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let second: Operation = serde_json::from_value(v).unwrap();
    assert_eq!(second.to_snapshot, Some(back_to));
    let op: Operation = s
        .ok(
            Method::POST,
            &format!("/operations/{}/cancel", second.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(op.state, OperationState::Cancelled);
    let (st, v) = s
        .post(
            &format!("/operations/{}/cancel", second.id),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::CONFLICT, "operation_finished")
    );

    // History, paginated, newest first.
    let page: Page<Operation> = s
        .ok(
            Method::GET,
            &format!("/operations?pool={}&limit=1", pool.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(page.items[0].id, second.id);
    let next = page.next.unwrap();
    let page: Page<Operation> = s
        .ok(
            Method::GET,
            &format!("/operations?pool={}&limit=1&cursor={next}", pool.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(page.items[0].id, first.id);
    let page: Page<Operation> = s
        .ok(
            Method::GET,
            &format!("/operations?endpoint={}", eps[0].endpoint_id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!((page.items.len(), page.next), (2, None));
    s.shutdown().await;
}

async fn status_is_computed_against_the_target(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "status", 5).await;
    let target = snap(&[("bash", "5.2-1"), ("zlib", "1.3-1")]);
    let states = [
        target.clone(),
        snap(&[("bash", "5.1-1"), ("zlib", "1.3-1")]), // behind: upgrade
        snap(&[("bash", "5.3-1")]),                    // diverged: downgrade + install
        snap(&[("bash", "5.2-1"), ("vim", "9.1-1"), ("zlib", "1.3-1")]), // ahead: remove
    ];
    for (ep, st) in eps.iter().zip(&states) {
        s.report_full(&ep.endpoint_token, st).await;
    }
    // Before any target: unknown.
    assert_eq!(
        s.status(&eps[0].endpoint_token).await.state,
        EndpointState::Unknown
    );
    s.post(
        "/endpoint/target",
        &eps[0].endpoint_token,
        json!({ "expected_revision": 0, "snapshot": target.hash() }),
    )
    .await;
    let all: Vec<EndpointStatus> = s
        .ok(
            Method::GET,
            &format!("/pools/{}/endpoints", pool.id),
            ADMIN,
            None,
        )
        .await;
    let by_state: Vec<EndpointState> = all.iter().map(|e| e.state).collect();
    assert_eq!(
        by_state,
        [
            EndpointState::InSync,
            EndpointState::Behind,
            EndpointState::Diverged,
            EndpointState::Ahead,
            EndpointState::Unknown
        ]
    );
    assert_eq!((all[1].counts.upgrade, all[1].counts.total()), (1, 1));
    assert_eq!((all[2].counts.downgrade, all[2].counts.install), (1, 1));
    assert_eq!(all[3].counts.remove, 1);
    assert!(all.iter().all(|e| e.target_revision == Some(1)));
    assert_eq!(all[4].current, None);
    // Snapshots are stored once per hash: four distinct states, the target among them.
    assert_eq!(db.sql_i64("SELECT count(*) FROM snapshots"), 4);
    // The endpoint sees the same about itself.
    assert_eq!(s.status(&eps[1].endpoint_token).await, all[1]);
    // Its target and the target snapshot are readable by every endpoint of the pool.
    let t: Option<TargetInfo> = s
        .ok(
            Method::GET,
            "/endpoint/target",
            &eps[4].endpoint_token,
            None,
        )
        .await;
    assert_eq!(t.unwrap().snapshot, target.hash());
    let (st, body) = s
        .get(
            &format!("/snapshots/{}", target.hash()),
            &eps[4].endpoint_token,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(Snapshot::decode(body.as_str().unwrap()).unwrap(), target);
    s.shutdown().await;
}

/// Set-latest's what-if: every other endpoint's status with the asker's reported state as
/// the target, equal to what the coordinator reports once that state is the target.
async fn what_if_statuses_are_the_ones_reported_afterwards(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "what-if", 4).await;
    let newest = snap(&[("bash", "5.2-1"), ("zlib", "1.3-1")]);
    let older = snap(&[("bash", "5.1-1"), ("zlib", "1.3-1")]);
    let other = snap(&[("bash", "5.1-1"), ("vim", "9.1-1")]);
    for (ep, st) in eps.iter().zip([&newest, &older, &other]) {
        s.report_full(&ep.endpoint_token, st).await;
    }
    s.post(
        "/endpoint/target",
        &eps[0].endpoint_token,
        json!({ "expected_revision": 0, "snapshot": newest.hash() }),
    )
    .await;
    // host1 (behind) asks what its state as the target would mean for the others.
    let w: pacpool::proto::WhatIf = s
        .ok(
            Method::POST,
            "/endpoint/what-if",
            &eps[1].endpoint_token,
            Some(json!({ "snapshot": older.hash() })),
        )
        .await;
    assert_eq!(w.target_revision, Some(1));
    let seen: Vec<(&str, EndpointState, EndpointState)> = w
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.now, e.after))
        .collect();
    assert_eq!(
        seen,
        [
            ("host0", EndpointState::InSync, EndpointState::Ahead),
            ("host2", EndpointState::Diverged, EndpointState::Diverged),
            ("host3", EndpointState::Unknown, EndpointState::Unknown),
        ]
    );
    // Read-only: the target did not move. Then host1 sets it, and the statuses match.
    s.post(
        "/endpoint/target",
        &eps[1].endpoint_token,
        json!({ "expected_revision": 1, "snapshot": older.hash() }),
    )
    .await;
    let all: Vec<EndpointStatus> = s
        .ok(
            Method::GET,
            &format!("/pools/{}/endpoints", pool.id),
            ADMIN,
            None,
        )
        .await;
    for e in &w.endpoints {
        let now = all.iter().find(|a| a.id == e.id).unwrap();
        assert_eq!(
            (now.state, now.counts, now.target_revision),
            (e.after, e.counts_after, Some(2)),
            "{}",
            e.name
        );
    }
    // Only the asker's own reported state can be asked about.
    let (st, body) = s
        .post(
            "/endpoint/what-if",
            &eps[1].endpoint_token,
            json!({ "snapshot": other.hash() }),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert_eq!(err(&body).code, "state_not_reported");
    s.shutdown().await;
}

async fn websocket_flow_and_target_push(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "ws", 2).await;
    let (a, b) = (&eps[0], &eps[1]);
    let old = snap(&[("bash", "5.1-1")]);
    let new = snap(&[("bash", "5.2-1"), ("zlib", "1.3-1")]);

    // Protocol mismatch: an error naming both versions, then a close frame.
    let mut ws = ws_connect(&s, "/endpoints/ws", &b.endpoint_token).await;
    ws_send(
        &mut ws,
        &EndpointMsg::Hello {
            protocol: 999,
            agent: "future".into(),
            acked_state: None,
        },
    )
    .await;
    match ws_next(&mut ws).await {
        Ok(ServerMsg::Error { error }) => {
            assert_eq!(error.code, "protocol_mismatch");
            assert!(
                error
                    .message
                    .contains(&format!("protocol {PROTOCOL_VERSION}"))
                    && error.message.contains("999"),
                "{}",
                error.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(ws_next(&mut ws).await.is_err(), "closed after the mismatch");

    // B connects properly and reports over the socket.
    let (mut wb, welcome) = endpoint_ws(&s, &b.endpoint_token).await;
    let ServerMsg::Welcome {
        endpoint_id,
        pool_id,
        target,
        known_state,
        ..
    } = welcome
    else {
        unreachable!()
    };
    assert_eq!(
        (endpoint_id, pool_id, target, known_state),
        (b.endpoint_id, pool.id, None, None)
    );
    ws_send(
        &mut wb,
        &EndpointMsg::Report {
            report: StateReport::Full {
                snapshot: old.clone(),
            },
            source: None,
        },
    )
    .await;
    assert_eq!(
        ws_next(&mut wb).await.unwrap(),
        ServerMsg::ReportAck {
            ack: ReportAck::Accepted { state: old.hash() }
        }
    );
    ws_send(&mut wb, &EndpointMsg::Heartbeat).await;
    // A hostile message is an error message, not a dropped connection.
    wb.send(Message::Text(r#"{"type":"report","report":{"kind":"full","snapshot":{"packages":[{"name":"--config=x","version":"1-1","arch":"any","reason":"explicit"}]}}}"#.into())).await.unwrap();
    match ws_next(&mut wb).await {
        Ok(ServerMsg::Error { error }) => assert_eq!(error.code, "invalid_request"),
        other => panic!("{other:?}"),
    }
    // An admin subscribes to the pool.
    let mut admin = ws_connect(&s, &format!("/pools/{}/ws", pool.id), ADMIN).await;

    // A sets the target over REST; B is told, with the change summary.
    s.report_full(&a.endpoint_token, &new).await;
    let set: TargetInfo = s
        .ok(
            Method::POST,
            "/endpoint/target",
            &a.endpoint_token,
            Some(json!({ "expected_revision": 0, "snapshot": new.hash() })),
        )
        .await;
    match ws_next(&mut wb).await.unwrap() {
        ServerMsg::TargetChanged { target, summary } => {
            assert_eq!(target, set);
            assert_eq!(target.set_by_endpoint, Some(a.endpoint_id));
            assert_eq!(summary.install, 2, "{summary:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut saw_target = false;
    let mut saw_b_behind = false;
    while !(saw_target && saw_b_behind) {
        match ws_next(&mut admin).await.unwrap() {
            ServerMsg::TargetChanged { target, .. } => saw_target = target == set,
            ServerMsg::EndpointStatusChanged { status } if status.id == b.endpoint_id => {
                saw_b_behind |= status.state == EndpointState::Behind;
            }
            _ => {}
        }
    }
    // An admin-requested operation reaches B; B reports progress over the socket.
    let op: Operation = s
        .ok(
            Method::POST,
            &format!("/endpoints/{}/operations", b.endpoint_id),
            ADMIN,
            Some(json!({ "kind": "sync-to-latest" })),
        )
        .await;
    match ws_next(&mut wb).await.unwrap() {
        ServerMsg::OperationRequested { operation } => assert_eq!(operation.id, op.id),
        other => panic!("{other:?}"),
    }
    ws_send(
        &mut wb,
        &EndpointMsg::Progress {
            operation: op.id,
            progress: pacpool::proto::Progress {
                stage: "downloading".into(),
                percent: 10,
                current: None,
            },
        },
    )
    .await;
    // Progress over the socket has no ack; the admin subscriber sees it applied.
    loop {
        if let ServerMsg::OperationUpdated { operation } = ws_next(&mut admin).await.unwrap()
            && operation.id == op.id
            && operation.state == OperationState::InProgress
        {
            break;
        }
    }
    s.ok::<Operation>(
        Method::POST,
        &format!("/operations/{}/cancel", op.id),
        ADMIN,
        None,
    )
    .await;
    match ws_next(&mut wb).await.unwrap() {
        ServerMsg::CancelRequested { operation } => assert_eq!(operation, op.id),
        other => panic!("{other:?}"),
    }
    // A running operation stays running until the endpoint confirms, unless forced.
    let (_, v) = s.get(&format!("/operations/{}", op.id), ADMIN).await;
    assert_eq!(v["state"], "in_progress");
    let forced: Operation = s
        .ok(
            Method::POST,
            &format!("/operations/{}/cancel?force=true", op.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(forced.state, OperationState::Cancelled);
    assert!(matches!(
        ws_next(&mut wb).await.unwrap(),
        ServerMsg::CancelRequested { .. }
    ));
    // Policy changes are pushed too.
    let p: Pool = s
        .ok(
            Method::PATCH,
            &format!("/pools/{}", pool.id),
            ADMIN,
            Some(json!({ "policy": { "auto_sync": "apply" } })),
        )
        .await;
    match ws_next(&mut wb).await.unwrap() {
        ServerMsg::PolicyChanged { policy } => assert_eq!(policy, p.policy),
        other => panic!("{other:?}"),
    }
    // Shutdown sends a close frame ("going away") to open sockets.
    let stop = s.shutdown();
    let closed = async {
        match ws_next(&mut wb).await {
            Err(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("{other:?}"),
        }
    };
    tokio::join!(stop, closed);
}

async fn malformed_and_oversized_input_is_refused_and_not_stored(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "bad", 1).await;
    let t = &eps[0].endpoint_token;
    let url = format!("{}/endpoint/report", s.base);
    let send_raw = |body: Vec<u8>, ctype: &'static str| {
        s.http
            .post(&url)
            .bearer_auth(t)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let check = |resp: reqwest::Response, status: StatusCode, code: &'static str| async move {
        assert_eq!(resp.status(), status);
        let e: ApiError = resp.json().await.unwrap();
        assert_eq!(e.code, code, "{}", e.message);
        assert!(!e.message.is_empty());
    };
    check(
        send_raw(b"{not json".to_vec(), "application/json")
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    check(
        send_raw(b"{}".to_vec(), "text/plain").await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
    )
    .await;
    // Hostile package names are refused by the types.
    for name in ["--config=x", "../../etc", "a b", "bash;rm"] {
        let body = json!({ "kind": "full", "snapshot": { "packages": [{ "name": name, "version": "1-1", "arch": "any", "reason": "explicit" }] } });
        let (st, v) = s.post("/endpoint/report", t, body).await;
        assert_eq!(
            (st, err(&v).code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{name}"
        );
    }
    // Duplicate packages, a bad version.
    let body = json!({ "kind": "full", "snapshot": { "packages": [
        { "name": "a", "version": "1-1", "arch": "any", "reason": "explicit" },
        { "name": "a", "version": "2-1", "arch": "any", "reason": "explicit" }] } });
    let (st, _) = s.post("/endpoint/report", t, body).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Oversized (over the 1 MiB limit of this server), with and without a length header.
    let mut big = br#"{"kind":"full","snapshot":{"packages":[],"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
    big.extend(br#""}}"#);
    check(
        send_raw(big.clone(), "application/json").await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // Chunked (no Content-Length): written by hand, as reqwest here has no streaming bodies.
    let addr = s
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/endpoint/report HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for chunk in big.chunks(64 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before the whole body is sent.
        if tcp.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(HANG, tcp.read_to_end(&mut answer))
        .await
        .expect("hung");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    // Bad path and query values, unknown routes and methods: ApiErrors too.
    let (st, v) = s.get("/pools/abc", ADMIN).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (st, v) = s.get("/operations?limit=0", ADMIN).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (st, v) = s.get("/snapshots/xyz", ADMIN).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (st, v) = s.get("/nope", ADMIN).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (st, v) = s.call(Method::PUT, "/pools", Some(ADMIN), None).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let (st, v) = s
        .post(
            "/pools",
            ADMIN,
            json!({ "name": "x", "policy": { "plan": { "ignore": ["[unclosed"] } } }),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (st, v) = s.post("/pools", ADMIN, json!({ "name": "bad" })).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::CONFLICT, "name_taken")
    );

    // Nothing was stored: no state, no report in the audit log, one pool.
    assert_eq!(s.status(t).await.current, None);
    let audit: Page<pacpool::proto::AuditEntry> = s.ok(Method::GET, "/audit", ADMIN, None).await;
    assert!(audit.items.iter().all(|e| e.action != "endpoint.report"));
    let pools: Vec<Pool> = s.ok(Method::GET, "/pools", ADMIN, None).await;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].id, pool.id);
    // Health and metrics.
    let (st, _) = s.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, m) = s.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let m = m.as_str().unwrap().to_owned();
    assert!(
        m.contains(
            r#"pacpool_http_requests_total{route="/api/v1/endpoint/report",status="413"} 2"#
        ),
        "{m}"
    );
    s.shutdown().await;
}

async fn restart_keeps_everything(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "keep", 1).await;
    let t = eps[0].endpoint_token.clone();
    let state = snap(&[("bash", "5.2-1")]);
    s.report_full(&t, &state).await;
    s.post(
        "/endpoint/target",
        &t,
        json!({ "expected_revision": 0, "snapshot": state.hash() }),
    )
    .await;
    s.shutdown().await;

    let s = start(&db).await;
    let p: Pool = s
        .ok(Method::GET, &format!("/pools/{}", pool.id), ADMIN, None)
        .await;
    assert_eq!((p.name.as_str(), p.endpoint_count), ("keep", 1));
    assert_eq!(
        p.target.as_ref().map(|t| (t.revision, t.snapshot)),
        Some((1, state.hash()))
    );
    let st = s.status(&t).await;
    assert_eq!(
        (st.state, st.current),
        (EndpointState::InSync, Some(state.hash()))
    );
    // The delta base survived too.
    let next = snap(&[("bash", "5.2-2")]);
    let body = serde_json::to_value(StateReport::Delta {
        delta: state.diff(&next),
    })
    .unwrap();
    let ack: ReportAck = s.ok(Method::POST, "/endpoint/report", &t, Some(body)).await;
    assert_eq!(ack, ReportAck::Accepted { state: next.hash() });
    s.shutdown().await;
}

async fn offline_detection_uses_last_seen(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "offline", 2).await;
    let state = snap(&[("bash", "5.2-1")]);
    for ep in &eps {
        s.report_full(&ep.endpoint_token, &state).await;
    }
    s.post(
        "/endpoint/target",
        &eps[0].endpoint_token,
        json!({ "expected_revision": 0, "snapshot": state.hash() }),
    )
    .await;
    // Age endpoint 1's last contact past the 90 s default, as if it had been silent.
    db.sql_exec(&format!(
        "UPDATE endpoints SET last_seen = last_seen - 1000 WHERE id = {}",
        eps[1].endpoint_id
    ));
    let all: Vec<EndpointStatus> = s
        .ok(
            Method::GET,
            &format!("/pools/{}/endpoints", pool.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(
        all.iter().map(|e| e.state).collect::<Vec<_>>(),
        [EndpointState::InSync, EndpointState::Offline]
    );
    // Connecting counts as contact (hello refreshes last_seen before the welcome).
    let (_ws, _) = endpoint_ws(&s, &eps[1].endpoint_token).await;
    assert_eq!(
        s.status(&eps[1].endpoint_token).await.state,
        EndpointState::InSync
    );
    s.shutdown().await;
}

async fn endpoints_are_renamed_moved_and_removed(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (a_pool, eps) = pool_with(&s, "a", 2).await;
    let b_pool = s.pool("b").await;
    let ep = &eps[0];
    // Rename onto a taken name: 409.
    let (st, v) = s
        .call(
            Method::PATCH,
            &format!("/endpoints/{}", ep.endpoint_id),
            Some(ADMIN),
            Some(json!({ "name": eps[1].name })),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::CONFLICT, "name_taken")
    );
    // Move while connected: the socket is closed (4004, "moved") so it reconnects into the
    // new pool.
    let (mut ws, _) = endpoint_ws(&s, &ep.endpoint_token).await;
    let moved: EndpointStatus = s
        .ok(
            Method::PATCH,
            &format!("/endpoints/{}", ep.endpoint_id),
            ADMIN,
            Some(json!({ "pool_id": b_pool.id, "name": "moved" })),
        )
        .await;
    assert_eq!((moved.pool_id, moved.name.as_str()), (b_pool.id, "moved"));
    match ws_next(&mut ws).await {
        Err(Some(frame)) => assert_eq!(u16::from(frame.code), 4004),
        other => panic!("{other:?}"),
    }
    let (_ws, welcome) = endpoint_ws(&s, &ep.endpoint_token).await;
    assert!(matches!(welcome, ServerMsg::Welcome { pool_id, .. } if pool_id == b_pool.id));
    // A pool with endpoints cannot be deleted; an empty one can.
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("/pools/{}", a_pool.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::CONFLICT, "pool_not_empty")
    );
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/endpoints/{}", eps[1].endpoint_id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s.get("/endpoint/status", &eps[1].endpoint_token).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/pools/{}", a_pool.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = s.get(&format!("/pools/{}", a_pool.id), ADMIN).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    s.shutdown().await;
}

async fn oversized_websocket_message_ends_the_socket_only(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (_, eps) = pool_with(&s, "big", 1).await;
    let t = &eps[0].endpoint_token;
    let (mut ws, _) = endpoint_ws(&s, t).await;
    let huge = "x".repeat(2 * 1024 * 1024);
    // The server may drop the connection while the frame is still being written.
    let _ = ws.send(Message::Text(huge.into())).await;
    assert!(ws_next(&mut ws).await.is_err(), "socket ended");
    // Nothing else is affected.
    let (_ws, _) = endpoint_ws(&s, t).await;
    assert_eq!(s.status(t).await.current, None);
    s.shutdown().await;
}

/// 1,500 packages, varied by `seed` so every endpoint reports a distinct state.
fn big_state(seed: usize) -> Snapshot {
    let pkgs: Vec<(String, String)> = (0..1500)
        .map(|i| (format!("pkg{i:04}"), format!("1.{}-1", (i * 7 + seed) % 13)))
        .collect();
    let refs: Vec<(&str, &str)> = pkgs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    snap(&refs)
}

async fn concurrent_full_reports_never_fail(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "load", 60).await;
    let bodies: Vec<Value> = (0..eps.len())
        .map(|i| {
            serde_json::to_value(StateReport::Full {
                snapshot: big_state(i),
            })
            .unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    let results = futures_util::stream::iter(eps.iter().zip(&bodies))
        .map(|(ep, body)| s.post("/endpoint/report", &ep.endpoint_token, body.clone()))
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
    let elapsed = started.elapsed();
    for (st, v) in &results {
        assert_eq!(*st, StatusCode::OK, "{v}");
        assert_eq!(v["kind"], "accepted");
    }
    eprintln!(
        "{} full 1,500-package reports at concurrency 50 in {elapsed:?} ({:.0}/s, {} build, client in the same process)",
        results.len(),
        results.len() as f64 / elapsed.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let all: Vec<EndpointStatus> = s
        .ok(
            Method::GET,
            &format!("/pools/{}/endpoints", pool.id),
            ADMIN,
            None,
        )
        .await;
    assert!(all.iter().all(|e| e.current.is_some()));
    s.shutdown().await;
}

async fn silent_sockets_are_closed(b: Backend) {
    let db = TestDb::new(b);
    let s = start_with(&db, |s| s.offline_after_secs = 1).await;
    let (_, eps) = pool_with(&s, "quiet", 1).await;
    let (mut ws, _) = endpoint_ws(&s, &eps[0].endpoint_token).await;
    // No heartbeat: the server closes the socket (policy violation) after the offline time.
    match ws_next(&mut ws).await {
        Err(Some(frame)) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

async fn admins_are_told_when_an_endpoint_goes_offline(b: Backend) {
    let db = TestDb::new(b);
    let s = start_with(&db, |s| s.offline_after_secs = 1).await;
    let (pool, eps) = pool_with(&s, "watch", 1).await;
    let mut admin = ws_connect(&s, &format!("/pools/{}/ws", pool.id), ADMIN).await;
    s.report_full(&eps[0].endpoint_token, &snap(&[("bash", "5.2-1")]))
        .await;
    // Silence after the report: the next status event for it says offline.
    loop {
        if let ServerMsg::EndpointStatusChanged { status } = ws_next(&mut admin).await.unwrap()
            && status.state == EndpointState::Offline
        {
            assert_eq!(status.id, eps[0].endpoint_id);
            break;
        }
    }
    s.shutdown().await;
}

async fn join_tokens_are_listed_without_secrets_and_revoked(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "joins", 1).await;
    let other = s.pool("other").await;
    let keep = s.join_token(pool.id).await;
    let gone: JoinToken = s
        .ok(
            Method::POST,
            &format!("/pools/{}/join-tokens", pool.id),
            ADMIN,
            Some(json!({ "max_uses": 5 })),
        )
        .await;
    s.join_token(other.id).await;
    s.register(&keep, "a").await;

    let (st, v) = s
        .get(&format!("/pools/{}/join-tokens", pool.id), ADMIN)
        .await;
    assert_eq!(st, StatusCode::OK);
    let text = v.to_string();
    assert!(
        !text.contains(&keep) && !text.contains(&gone.token) && !text.contains("\"token\""),
        "no secrets in the list: {text}"
    );
    let list: Vec<JoinTokenInfo> = serde_json::from_value(v).unwrap();
    assert_eq!(list.len(), 3, "only this pool's tokens: {list:?}");
    assert!(list.iter().all(|t| t.pool_id == pool.id));
    let by_id = |id: i64| list.iter().find(|t| t.id == id).unwrap();
    assert_eq!(by_id(gone.id).max_uses, Some(5));
    assert_eq!(by_id(gone.id).uses, 0);
    assert_eq!(list.iter().map(|t| t.uses).sum::<u64>(), 2);

    // Only the admin may list or revoke.
    let t = &eps[0].endpoint_token;
    let (st, _) = s.get(&format!("/pools/{}/join-tokens", pool.id), t).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/join-tokens/{}", gone.id),
            Some(t),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Revoked: registration with it fails; the other token and existing endpoints still work.
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/join-tokens/{}", gone.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = s
        .call(
            Method::POST,
            "/register",
            None,
            Some(json!({ "join_token": gone.token, "name": "late" })),
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    s.register(&keep, "b").await;
    s.status(t).await;
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("/join-tokens/{}", gone.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let list: Vec<JoinTokenInfo> = s
        .ok(
            Method::GET,
            &format!("/pools/{}/join-tokens", pool.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|t| t.id != gone.id));
    let audit: Page<Value> = s.ok(Method::GET, "/audit", ADMIN, None).await;
    assert!(
        audit
            .items
            .iter()
            .any(|a| a["action"] == "join_token.revoke"),
        "revocation is audited"
    );
    let (st, _) = s.get("/pools/999/join-tokens", ADMIN).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

async fn stats_count_pools_endpoints_operations_and_snapshots(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (pool, eps) = pool_with(&s, "stats", 3).await;
    let (empty, _) = pool_with(&s, "empty", 0).await;
    let (t0, t1) = (&eps[0].endpoint_token, &eps[1].endpoint_token);
    let new = snap(&[("bash", "5.2-2")]);
    let old = snap(&[("bash", "5.2-1")]);
    s.report_full(t0, &new).await;
    s.report_full(t1, &old).await;
    // The same state again: accepted, not stored twice.
    s.report_full(t1, &old).await;
    let (st, v) = s
        .post(
            "/endpoint/target",
            t0,
            json!({ "expected_revision": 0, "snapshot": new.hash() }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .post(
            "/endpoint/operations",
            t1,
            json!({ "kind": "sync-to-latest" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    let stats: Stats = s.ok(Method::GET, "/stats", ADMIN, None).await;
    assert_eq!(stats.pools, 2);
    assert_eq!(stats.endpoints, 3);
    assert_eq!(stats.snapshots, 2);
    assert_eq!(
        stats.snapshot_bytes as usize,
        new.encode().len() + old.encode().len()
    );
    assert_eq!(stats.targets, 1);
    assert_eq!(stats.reports_accepted, 3);
    let p = stats
        .per_pool
        .iter()
        .find(|p| p.pool_id == pool.id)
        .unwrap();
    assert_eq!(p.name, "stats");
    assert_eq!(p.endpoints, 3);
    let states: Vec<(&str, u64)> = p
        .endpoints_by_state
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(states, [("behind", 1), ("in-sync", 1), ("unknown", 1)]);
    assert_eq!(stats.endpoints_by_state, p.endpoints_by_state);
    let ops: Vec<(&str, u64)> = p
        .operations_by_state
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(ops, [("pending", 1)]);
    assert_eq!((p.targets, p.target_revision), (1, Some(1)));
    assert_eq!(p.reports_accepted, 3);
    let e = stats
        .per_pool
        .iter()
        .find(|p| p.pool_id == empty.id)
        .unwrap();
    assert_eq!(
        (
            e.endpoints,
            e.targets,
            e.target_revision,
            e.reports_accepted
        ),
        (0, 0, None, 0)
    );
    assert!(e.endpoints_by_state.is_empty() && e.operations_by_state.is_empty());

    let (st, v) = s.get("/stats", t0).await;
    assert_eq!(
        (st, err(&v).code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    s.shutdown().await;
}

async fn requests_are_rate_limited_per_token_and_address(b: Backend) {
    let db = TestDb::new(b);
    let s = start_with(&db, |st| {
        // One request a minute refilled: nothing refills while the test runs.
        st.rate_limit_per_minute = 1;
        st.rate_limit_burst = 3;
        st.anonymous_rate_limit_per_minute = 1;
        st.anonymous_rate_limit_burst = 2;
    })
    .await;
    let get = |path: &str, token: Option<&str>, forwarded: Option<&str>| {
        let mut req = s.http.get(format!("{}{path}", s.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(f) = forwarded {
            req = req.header("x-forwarded-for", f);
        }
        async move {
            tokio::time::timeout(HANG, req.send())
                .await
                .unwrap()
                .unwrap()
        }
    };
    for _ in 0..3 {
        assert_eq!(
            get("/pools", Some(ADMIN), None).await.status(),
            StatusCode::OK
        );
    }
    let limited = get("/pools", Some(ADMIN), None).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=60).contains(&retry), "Retry-After {retry}");
    let e: ApiError = limited.json().await.unwrap();
    assert_eq!(e.code, "rate_limited");
    // An unknown token gets no bucket of its own: it is refused for what it is and counted
    // against the client address, like a request without a token.
    assert_eq!(
        get("/pools", Some("someone-else"), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Without a token: per client address from the socket (one request left of 2); a
    // forwarded header from an untrusted peer does not buy a new bucket.
    assert_eq!(
        get("/health/live", None, Some("203.0.113.1"))
            .await
            .status(),
        StatusCode::OK
    );
    let limited = get("/health/live", None, Some("203.0.113.2")).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    s.shutdown().await;

    // Behind a trusted proxy, each forwarded client has its own bucket and is audited as
    // itself.
    let db = TestDb::new(b);
    let s = start_with(&db, |st| {
        st.anonymous_rate_limit_per_minute = 1;
        st.anonymous_rate_limit_burst = 1;
        st.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let get = |path: &str, forwarded: &str| {
        let req = s
            .http
            .get(format!("{}{path}", s.base))
            .header("x-forwarded-for", forwarded);
        async move {
            tokio::time::timeout(HANG, req.send())
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(
        get("/health/live", "203.0.113.1").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get("/health/live", "203.0.113.1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get("/health/live", "203.0.113.2").await.status(),
        StatusCode::OK
    );
    let pool = s.pool("proxied").await;
    let resp = s
        .http
        .post(format!("{}/pools/{}/join-tokens", s.base, pool.id))
        .bearer_auth(ADMIN)
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let audit: Page<Value> = s.ok(Method::GET, "/audit", ADMIN, None).await;
    assert_eq!(audit.items[0]["action"], "join_token.create");
    assert_eq!(audit.items[0]["peer"], "198.51.100.7");
    assert_eq!(audit.items[1]["peer"], "127.0.0.1");
    s.shutdown().await;
}

/// Where a state came from, as endpoints say it: kept per change (REST and WebSocket
/// reports), bounded and escaped when hostile, listed newest first at
/// `GET /endpoints/{id}/changes` (admin only; 404 for an unknown endpoint).
async fn state_changes_keep_their_source_bounded(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (_pool, eps) = pool_with(&s, "drift", 1).await;
    let ep = &eps[0];
    let first = snap(&[("bash", "5.2-1")]);
    let second = snap(&[("bash", "5.2-2")]);
    let third = snap(&[("bash", "5.2-3")]);
    // A full report over REST with a hostile source: 20 runs, long commands with escapes.
    let runs: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "at": format!("t{i}\u{1b}[2J"),
                "command": format!("pacman -S x\u{1b}]0;owned\u{7}{}", "y".repeat(5000)),
            })
        })
        .collect();
    let body = json!({
        "kind": "full",
        "snapshot": serde_json::to_value(&first).unwrap(),
        "source": {"by": "pacman", "runs": runs},
    });
    let ack: ReportAck = s
        .ok(
            Method::POST,
            "/endpoint/report",
            &ep.endpoint_token,
            Some(body),
        )
        .await;
    assert_eq!(
        ack,
        ReportAck::Accepted {
            state: first.hash()
        }
    );
    // A delta over the WebSocket, from a pacpool operation.
    let (mut ws, _welcome) = endpoint_ws(&s, &ep.endpoint_token).await;
    ws_send(
        &mut ws,
        &EndpointMsg::Report {
            report: StateReport::Delta {
                delta: first.diff(&second),
            },
            source: Some(pacpool::proto::ChangeSource::Pacpool {
                operation: "sync".into(),
                local_id: Some(7),
                requested: Some(3),
            }),
        },
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.unwrap(),
        ServerMsg::ReportAck {
            ack: ReportAck::Accepted {
                state: second.hash()
            }
        }
    );
    // A kind this coordinator does not know, and an older endpoint that says nothing.
    let body = json!({
        "kind": "full",
        "snapshot": serde_json::to_value(&third).unwrap(),
        "source": {"by": "ansible", "playbook": "site.yml"},
    });
    s.ok::<ReportAck>(
        Method::POST,
        "/endpoint/report",
        &ep.endpoint_token,
        Some(body),
    )
    .await;
    s.report_full(&ep.endpoint_token, &first).await;

    let page: Value = s
        .ok(
            Method::GET,
            &format!("/endpoints/{}/changes", ep.endpoint_id),
            ADMIN,
            None,
        )
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{page}");
    assert_eq!(items[0]["source"], Value::Null, "{page}");
    assert_eq!(items[1]["source"], json!({"by": "unknown"}), "{page}");
    assert_eq!(
        items[2]["source"],
        json!({"by": "pacpool", "operation": "sync", "local_id": 7, "requested": 3})
    );
    assert_eq!(items[2]["state"], second.hash().to_hex());
    let hostile = &items[3]["source"];
    let kept = hostile["runs"].as_array().unwrap();
    assert_eq!(kept.len(), pacpool::proto::MAX_PACMAN_RUNS, "{hostile}");
    assert_eq!(hostile["more"], 20 - pacpool::proto::MAX_PACMAN_RUNS);
    for r in kept {
        let (at, cmd) = (r["at"].as_str().unwrap(), r["command"].as_str().unwrap());
        assert!(
            !at.contains('\u{1b}') && !cmd.chars().any(char::is_control),
            "{r}"
        );
        assert!(
            cmd.len() <= 2 * pacpool::proto::MAX_PACMAN_COMMAND,
            "{}",
            cmd.len()
        );
    }
    // Admin only, and an unknown endpoint is 404.
    let (status, _) = s
        .call(
            Method::GET,
            &format!("/endpoints/{}/changes", ep.endpoint_id),
            Some(&ep.endpoint_token),
            None,
        )
        .await;
    assert!(status == 401 || status == 403, "{status}");
    let (status, v) = s
        .call(Method::GET, "/endpoints/999/changes", Some(ADMIN), None)
        .await;
    assert_eq!(status, 404, "{v}");
    s.shutdown().await;
}

/// Runs one test on a runtime of its own (4 workers: some tests race requests).
fn run<F: std::future::Future<Output = ()>>(b: Backend, test: impl FnOnce(Backend) -> F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test(b))
}

/// Every test above, once per database.
macro_rules! on_both {
    ($($t:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $t() { super::run(super::Backend::Sqlite, super::$t) } )*
        }
        mod postgres {
            $( #[test] fn $t() { super::run(super::Backend::Postgres, super::$t) } )*
        }
    };
}

on_both!(
    registration_and_auth_matrix,
    set_as_latest_race_has_one_winner,
    delta_reports_and_recovery,
    operations_are_idempotent_and_one_at_a_time,
    status_is_computed_against_the_target,
    what_if_statuses_are_the_ones_reported_afterwards,
    websocket_flow_and_target_push,
    malformed_and_oversized_input_is_refused_and_not_stored,
    restart_keeps_everything,
    offline_detection_uses_last_seen,
    endpoints_are_renamed_moved_and_removed,
    oversized_websocket_message_ends_the_socket_only,
    concurrent_full_reports_never_fail,
    silent_sockets_are_closed,
    admins_are_told_when_an_endpoint_goes_offline,
    join_tokens_are_listed_without_secrets_and_revoked,
    stats_count_pools_endpoints_operations_and_snapshots,
    requests_are_rate_limited_per_token_and_address,
    state_changes_keep_their_source_bounded,
);

// ---------------------------------------------------------------------------------------------
// Several replicas on one PostgreSQL database (PostgreSQL only: SQLite is one process).

/// The close code the socket ends with (messages before it are skipped).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        if let Err(frame) = ws_next(ws).await {
            return frame.map(|f| u16::from(f.code));
        }
    }
}

/// The next message on `ws` that `want` accepts (others are skipped); panics on a close.
async fn ws_until(ws: &mut Ws, mut want: impl FnMut(&ServerMsg) -> bool) -> ServerMsg {
    loop {
        match ws_next(ws).await {
            Ok(m) if want(&m) => return m,
            Ok(_) => continue,
            Err(frame) => panic!("the socket closed while waiting: {frame:?}"),
        }
    }
}

/// What one replica's endpoint socket sees of changes made through the others: a target set
/// through B, a policy change too large for NOTIFY (read back from `bus_events`) through C,
/// an operation requested through C, a revoke through B (its socket on A closes with 4001),
/// and a registration through B (a hello on A counts it).
async fn changes_reach_endpoints_on_every_replica(b: Backend) {
    let db = TestDb::new(b);
    let (ra, rb, rc) = (start(&db).await, start(&db).await, start(&db).await);
    let (pool, eps) = pool_with(&rb, "replicas", 3).await;
    let state = snap(&[("bash", "5.2-1")]);
    for e in &eps {
        rc.report_full(&e.endpoint_token, &state).await;
    }
    let (mut on_a, welcome) = endpoint_ws(&ra, &eps[0].endpoint_token).await;
    let ServerMsg::Welcome { pool_endpoints, .. } = welcome else {
        unreachable!()
    };
    assert_eq!(pool_endpoints, Some(3));
    let (mut on_c, _) = endpoint_ws(&rc, &eps[1].endpoint_token).await;

    let t0 = std::time::Instant::now();
    let (st, v) = rb
        .post(
            "/endpoint/target",
            &eps[2].endpoint_token,
            json!({ "expected_revision": 0, "snapshot": state.hash() }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    for ws in [&mut on_a, &mut on_c] {
        let m = ws_until(ws, |m| matches!(m, ServerMsg::TargetChanged { .. })).await;
        let ServerMsg::TargetChanged { target, .. } = m else {
            unreachable!()
        };
        assert_eq!((target.revision, target.snapshot), (1, state.hash()));
    }
    eprintln!(
        "a target set through replica B reached sockets on A and C after {:?}",
        t0.elapsed()
    );

    // 120 patterns of 100 bytes: about 12 KB of JSON, past NOTIFY's 8,000-byte limit.
    let ignore: Vec<String> = (0..120)
        .map(|i| format!("{i:03}-{}", "x".repeat(96)))
        .collect();
    let (st, v) = rc
        .call(
            Method::PATCH,
            &format!("/pools/{}", pool.id),
            Some(ADMIN),
            Some(json!({ "policy": { "plan": { "ignore": ignore } } })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let m = ws_until(&mut on_a, |m| matches!(m, ServerMsg::PolicyChanged { .. })).await;
    let ServerMsg::PolicyChanged { policy } = m else {
        unreachable!()
    };
    assert_eq!(policy.plan.ignore, ignore);
    assert!(
        db.sql_i64("SELECT count(*) FROM bus_events") >= 1,
        "the large event went through bus_events"
    );

    let op: Operation = rc
        .ok(
            Method::POST,
            &format!("/endpoints/{}/operations", eps[0].endpoint_id),
            ADMIN,
            Some(json!({ "kind": "sync-to-latest", "idempotency_key": "k1" })),
        )
        .await;
    let m = ws_until(&mut on_a, |m| {
        matches!(m, ServerMsg::OperationRequested { .. })
    })
    .await;
    let ServerMsg::OperationRequested { operation } = m else {
        unreachable!()
    };
    assert_eq!(operation.id, op.id);

    // A registration through B: a new hello on A counts 4 endpoints at once.
    let join = rb.join_token(pool.id).await;
    rb.register(&join, "host3").await;
    let (mut again, welcome) = endpoint_ws(&ra, &eps[1].endpoint_token).await;
    let ServerMsg::Welcome { pool_endpoints, .. } = welcome else {
        unreachable!()
    };
    assert_eq!(pool_endpoints, Some(4));

    // Anyone who can connect to the database can NOTIFY on the replicas' channel. A kick
    // without a valid code is dropped; the same with the code the replicas share (derived
    // from the admin token) is obeyed. NOTIFYs arrive in commit order, so the socket closing
    // as "moved" (4004), not "removed" (4003), shows the forgery was dropped, and the channel
    // name right.
    let pg = db.pg.as_ref().unwrap();
    let key = {
        use sha2::Digest;
        let mut k = sha2::Sha256::new();
        k.update(b"pacpool replica bus v1\0");
        k.update(sha2::Sha256::digest(ADMIN.as_bytes()));
        k.finalize()
    };
    let channel = {
        use sha2::Digest;
        format!(
            "pacpool_bus_{}",
            hex::encode(&sha2::Sha256::digest(key)[..6])
        )
    };
    let notify = |why: &str, signed: bool| {
        use hmac::{KeyInit, Mac};
        let origin = "00000000000000ff";
        let event = json!({ "k": "kick", "endpoint": eps[1].endpoint_id, "why": why }).to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{origin}\n{event}").as_bytes());
        let code = if signed {
            hex::encode(mac.finalize().into_bytes())
        } else {
            "00".repeat(32)
        };
        let payload = json!({ "o": origin, "e": event, "m": code }).to_string();
        pg.psql(
            "pacpool",
            &format!("SELECT pg_notify('{channel}', '{payload}')"),
        );
    };
    notify("removed", false);
    notify("moved", true);
    assert_eq!(close_code(&mut again).await, Some(4004));

    let (st, v) = rb
        .call(
            Method::POST,
            &format!("/endpoints/{}/revoke", eps[0].endpoint_id),
            Some(ADMIN),
            None,
        )
        .await;
    assert!(st.is_success(), "{st} {v}");
    assert_eq!(
        close_code(&mut on_a).await,
        Some(4001),
        "the revoked endpoint's socket on another replica is closed as revoked"
    );
    for s in [ra, rb, rc] {
        s.shutdown().await;
    }
}

/// Two endpoints on two replicas set the target at the same revision, 12 times: each time
/// exactly one wins and the other gets 409 with the winner; the history has each revision
/// once.
async fn set_latest_race_across_replicas_has_one_winner(b: Backend) {
    let db = TestDb::new(b);
    let (ra, rb) = (start(&db).await, start(&db).await);
    let (pool, eps) = pool_with(&ra, "race", 2).await;
    let (x, y) = (&eps[0], &eps[1]);
    let sx = snap(&[("bash", "5.2-1")]);
    let sy = snap(&[("bash", "5.1-1")]);
    ra.report_full(&x.endpoint_token, &sx).await;
    rb.report_full(&y.endpoint_token, &sy).await;
    const ROUNDS: u64 = 12;
    for round in 0..ROUNDS {
        let (rx, ry) = tokio::join!(
            ra.post(
                "/endpoint/target",
                &x.endpoint_token,
                json!({ "expected_revision": round, "snapshot": sx.hash() }),
            ),
            rb.post(
                "/endpoint/target",
                &y.endpoint_token,
                json!({ "expected_revision": round, "snapshot": sy.hash() }),
            )
        );
        assert_eq!(one_winner(rx, ry).revision, round + 1, "round {round}");
    }
    let history: Vec<TargetInfo> = rb
        .ok(
            Method::GET,
            &format!("/pools/{}/targets", pool.id),
            ADMIN,
            None,
        )
        .await;
    let mut revisions: Vec<u64> = history.iter().map(|t| t.revision).collect();
    revisions.sort();
    assert_eq!(revisions, (1..=ROUNDS).collect::<Vec<_>>());
    ra.shutdown().await;
    rb.shutdown().await;
}

/// Offline detection runs on one replica (an advisory lock), and every replica's admins
/// hear of it once.
async fn one_replica_tells_every_admin_once_that_an_endpoint_went_offline(b: Backend) {
    let db = TestDb::new(b);
    let quick = |s: &mut Settings| s.offline_after_secs = 1;
    let (ra, rb) = (start_with(&db, quick).await, start_with(&db, quick).await);
    let (pool, eps) = pool_with(&ra, "watch", 1).await;
    let mut admin_a = ws_connect(&ra, &format!("/pools/{}/ws", pool.id), ADMIN).await;
    let mut admin_b = ws_connect(&rb, &format!("/pools/{}/ws", pool.id), ADMIN).await;
    ra.report_full(&eps[0].endpoint_token, &snap(&[("bash", "5.2-1")]))
        .await;
    let offline = |m: &ServerMsg| matches!(m, ServerMsg::EndpointStatusChanged { status } if status.state == EndpointState::Offline);
    for ws in [&mut admin_a, &mut admin_b] {
        ws_until(ws, offline).await;
    }
    // Three more offline periods: neither socket hears it a second time.
    let more = async {
        let (mut a, mut b) = (0, 0);
        loop {
            tokio::select! {
                m = ws_next(&mut admin_a) => if m.as_ref().is_ok_and(offline) { a += 1 },
                m = ws_next(&mut admin_b) => if m.as_ref().is_ok_and(offline) { b += 1 },
            }
            if a + b > 0 {
                return (a, b);
            }
        }
    };
    let repeated = tokio::time::timeout(Duration::from_secs(3), more).await;
    assert!(
        repeated.is_err(),
        "an offline event came twice: {repeated:?}"
    );
    ra.shutdown().await;
    rb.shutdown().await;
}

/// A dashboard login on one replica is a login on every replica (sessions are rows of the
/// database), and a logout through another replica ends it everywhere.
async fn dashboard_sessions_are_shared_by_replicas(b: Backend) {
    let db = TestDb::new(b);
    let on = |s: &mut Settings| s.dashboard.enabled = true;
    let (ra, rb) = (start_with(&db, on).await, start_with(&db, on).await);
    let root = |s: &Server| s.base.trim_end_matches("/api/v1").to_owned();
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirect
        .post(format!("{}/dashboard/login", root(&ra)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN}&next=%2Fdashboard%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = |s: &Server| {
        no_redirect
            .get(format!("{}/dashboard/", root(s)))
            .header("cookie", &cookie)
            .send()
    };
    let on_b = page(&rb).await.unwrap();
    assert_eq!(
        on_b.status(),
        StatusCode::OK,
        "the session from A is known to B"
    );
    let html = on_b.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's logout form carries the CSRF token")
        .to_owned();
    let out = no_redirect
        .post(format!("{}/dashboard/logout", root(&rb)))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={}",
            csrf.bytes()
                .map(|b| if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let on_a = page(&ra).await.unwrap();
    assert_eq!(
        on_a.status(),
        StatusCode::SEE_OTHER,
        "logged out through B, so A sends the browser to the login page"
    );
    ra.shutdown().await;
    rb.shutdown().await;
}

/// A replica whose connection to the database broke may have missed other replicas'
/// events: after listening again it closes its endpoint sockets (4005), so each endpoint
/// reconnects and learns the current state of things.
async fn a_replica_that_lost_its_listener_closes_its_sockets(b: Backend) {
    let db = TestDb::new(b);
    let s = start(&db).await;
    let (_, eps) = pool_with(&s, "gap", 1).await;
    let (mut ws, _) = endpoint_ws(&s, &eps[0].endpoint_token).await;
    // Every connection of the coordinator ends, as when the database restarts.
    let killed = db.pg.as_ref().unwrap().psql(
        "pacpool",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name LIKE 'pacpool-coordinator %'",
    );
    assert_ne!(killed, "0");
    assert_eq!(close_code(&mut ws).await, Some(4005));
    // The endpoint comes back, and the coordinator works on new connections.
    let (_ws, welcome) = endpoint_ws(&s, &eps[0].endpoint_token).await;
    assert!(matches!(welcome, ServerMsg::Welcome { .. }));
    s.report_full(&eps[0].endpoint_token, &snap(&[("bash", "5.2-1")]))
        .await;
    s.shutdown().await;
}

/// Tests that need several replicas: PostgreSQL only (SQLite is one process).
macro_rules! on_postgres {
    ($m:ident: $($t:ident),* $(,)?) => {
        mod $m {
            $( #[test] fn $t() { super::run(super::Backend::Postgres, super::$t) } )*
        }
    };
}

on_postgres!(replicas:
    a_replica_that_lost_its_listener_closes_its_sockets,
    dashboard_sessions_are_shared_by_replicas,
    changes_reach_endpoints_on_every_replica,
    set_latest_race_across_replicas_has_one_winner,
    one_replica_tells_every_admin_once_that_an_endpoint_went_offline,
);

// ---------------------------------------------------------------------------------------------
// SQLite → PostgreSQL with `pacpool-coordinator migrate`.

/// `pacpool-coordinator migrate`, the URL given as `--to` or (keeping a password out of the
/// process list) in `PACPOOL_MIGRATE_TO`.
fn migrate_cli(from: &Path, to: &str, in_env: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pacpool-coordinator"));
    cmd.arg("migrate")
        .arg("--from")
        .arg(format!("sqlite:{}", from.display()));
    if in_env {
        cmd.env("PACPOOL_MIGRATE_TO", to);
    } else {
        cmd.arg("--to").arg(to);
    }
    cmd.output().unwrap()
}

/// A populated SQLite coordinator moves to PostgreSQL, checked table by table, and its
/// endpoints carry on there without registering again.
#[test]
fn migrate_moves_a_sqlite_coordinator_to_postgres() {
    run(Backend::Postgres, |_| async {
        let sqlite = TestDb::new(Backend::Sqlite);
        let pg = TestDb::new(Backend::Postgres);
        let s = start(&sqlite).await;
        let (pool, eps) = pool_with(&s, "moving", 4).await;
        let (other, _) = pool_with(&s, "other", 1).await;
        let limited: JoinToken = s
            .ok(
                Method::POST,
                &format!("/pools/{}/join-tokens", other.id),
                ADMIN,
                Some(json!({ "max_uses": 3 })),
            )
            .await;
        s.register(&limited.token, "limited").await;
        // Full states, then a chain of deltas (stored as deltas against their bases).
        let mut states = Vec::new();
        for (i, e) in eps.iter().enumerate() {
            let mut st = snap(&[("bash", "5.2-1"), ("zlib", "1.3-1")]);
            s.report_full(&e.endpoint_token, &st).await;
            for round in 0..=i {
                let next = snap(&[("bash", &format!("5.2-{}", round + 2)), ("zlib", "1.3-1")]);
                let ack: ReportAck = s
                    .ok(
                        Method::POST,
                        "/endpoint/report",
                        &e.endpoint_token,
                        Some(
                            serde_json::to_value(StateReport::Delta {
                                delta: st.diff(&next),
                            })
                            .unwrap(),
                        ),
                    )
                    .await;
                assert_eq!(ack, ReportAck::Accepted { state: next.hash() });
                st = next;
            }
            states.push(st);
        }
        // Two targets and a revert; operations pending, in progress and finished.
        for (rev, e) in [(0u64, 0usize), (1, 1)] {
            let (st, v) = s
                .post(
                    "/endpoint/target",
                    &eps[e].endpoint_token,
                    json!({ "expected_revision": rev, "snapshot": states[e].hash() }),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
        }
        let _: TargetInfo = s
            .ok(
                Method::POST,
                &format!("/pools/{}/target/revert", pool.id),
                ADMIN,
                Some(json!({ "to_revision": 1, "expected_revision": 2 })),
            )
            .await;
        let mut ops = Vec::new();
        for (i, e) in eps.iter().take(3).enumerate() {
            let op: Operation = s
                .ok(
                    Method::POST,
                    &format!("/endpoints/{}/operations", e.endpoint_id),
                    ADMIN,
                    Some(
                        json!({ "kind": "sync-to-latest", "idempotency_key": format!("key-{i}") }),
                    ),
                )
                .await;
            ops.push(op);
        }
        let (st, v) = s
            .call(
                Method::POST,
                &format!("/endpoints/{}/revoke", eps[3].endpoint_id),
                Some(ADMIN),
                None,
            )
            .await;
        assert!(st.is_success(), "{st} {v}");
        let before: Vec<EndpointStatus> = s
            .ok(
                Method::GET,
                &format!("/pools/{}/endpoints", pool.id),
                ADMIN,
                None,
            )
            .await;
        s.shutdown().await;

        let file = sqlite.database();
        let url = pg.url.clone().unwrap();
        let out = migrate_cli(&file, &url, true);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for table in [
            "pools",
            "snapshots",
            "endpoints",
            "targets",
            "operations",
            "audit",
        ] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(table) && l.contains("sha256")),
                "{table} is not in the check:\n{stdout}"
            );
        }
        assert!(
            db_count(&pg, "SELECT count(*) FROM snapshots WHERE base IS NOT NULL") > 0,
            "delta-stored snapshots were copied as deltas"
        );

        // The same endpoints, tokens and statuses on PostgreSQL.
        let s = start(&pg).await;
        let after: Vec<EndpointStatus> = s
            .ok(
                Method::GET,
                &format!("/pools/{}/endpoints", pool.id),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(
            after
                .iter()
                .map(|e| (e.id, e.current, e.state))
                .collect::<Vec<_>>(),
            before
                .iter()
                .map(|e| (e.id, e.current, e.state))
                .collect::<Vec<_>>()
        );
        let e0 = &eps[0];
        let (_ws, welcome) = endpoint_ws(&s, &e0.endpoint_token).await;
        let ServerMsg::Welcome { known_state, .. } = welcome else {
            unreachable!()
        };
        assert_eq!(known_state, Some(states[0].hash()));
        // A delta against the known state is accepted: its base came across.
        let next = snap(&[("bash", "9.9-1"), ("zlib", "1.3-1")]);
        let ack: ReportAck = s
            .ok(
                Method::POST,
                "/endpoint/report",
                &e0.endpoint_token,
                Some(
                    serde_json::to_value(StateReport::Delta {
                        delta: states[0].diff(&next),
                    })
                    .unwrap(),
                ),
            )
            .await;
        assert_eq!(ack, ReportAck::Accepted { state: next.hash() });
        // The revoked endpoint stays revoked.
        let (st, _) = s.get("/endpoint/status", &eps[3].endpoint_token).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        // Idempotency keys still name their operations.
        let again: Operation = s
            .ok(
                Method::POST,
                &format!("/endpoints/{}/operations", eps[1].endpoint_id),
                ADMIN,
                Some(json!({ "kind": "sync-to-latest", "idempotency_key": "key-1" })),
            )
            .await;
        assert_eq!(again.id, ops[1].id);
        // Target history with the revert, and the join token's uses.
        let history: Vec<TargetInfo> = s
            .ok(
                Method::GET,
                &format!("/pools/{}/targets", pool.id),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(
            history
                .iter()
                .map(|t| (t.revision, t.reverted_from))
                .collect::<Vec<_>>(),
            [(3, Some(1)), (2, None), (1, None)]
        );
        let tokens: Vec<JoinTokenInfo> = s
            .ok(
                Method::GET,
                &format!("/pools/{}/join-tokens", other.id),
                ADMIN,
                None,
            )
            .await;
        assert!(
            tokens.iter().any(|t| t.max_uses == Some(3) && t.uses == 1),
            "{tokens:?}"
        );
        // New rows get new ids past the copied ones.
        let join = s.join_token(pool.id).await;
        let newcomer = s.register(&join, "newcomer").await;
        let highest = eps.iter().map(|e| e.endpoint_id).max().unwrap();
        assert!(
            newcomer.endpoint_id > highest + 1,
            "{} vs {highest}",
            newcomer.endpoint_id
        );
        s.shutdown().await;

        // Into a database that is no longer empty: refused, nothing changed.
        let endpoints = db_count(&pg, "SELECT count(*) FROM endpoints");
        let out = migrate_cli(&file, &url, false);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not empty"), "{stderr}");
        assert_eq!(db_count(&pg, "SELECT count(*) FROM endpoints"), endpoints);
    })
}

fn db_count(db: &TestDb, sql: &str) -> i64 {
    db.sql_i64(sql)
}
