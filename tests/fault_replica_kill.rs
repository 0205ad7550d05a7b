//! Fault injection: three real `pacpool-coordinator` replicas on one PostgreSQL database,
//! behind a TCP balancer in this test, and one of them (B) killed with SIGKILL under load.
//!
//! Load: 30 simulated endpoints (the daemon's wire protocol) connect through the balancer,
//! each with a WebSocket (hello, Welcome, operation requests) and full state reports over
//! REST; an admin requests one operation per endpoint with an idempotency key; endpoints
//! post progress and a result. Every client retries what got no answer (a transport error)
//! or was refused with 503 `unavailable`: the same report, the same result, the same
//! idempotency key.
//!
//! B is frozen (SIGSTOP) half a second before its SIGKILL at 4 s, so that requests, sockets
//! and new connections are surely in flight on it when it dies.
//!
//! After the kill: every endpoint whose socket was on B opened a new one, through the
//! balancer, to A or C and got a Welcome; every endpoint's state on the coordinator is its
//! last acknowledged report (or the one in flight); in PostgreSQL each idempotency key names
//! one operation, no endpoint has two active operations, every finished operation has its
//! result and exactly one terminal transition; every operation reached its endpoint while
//! the load ran (by an event, or by the endpoint's poll after a Welcome), except one whose
//! creation B stored and died before announcing (see the comment at that check); A and C
//! still answer ready.
//!
//! Timeouts only turn a hang into a failure; nothing asserts on timing. Skipped (with
//! `SKIPPED: <reason>`) where no PostgreSQL server can be started.

#[path = "support/pg.rs"]
mod pg;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pacpool::localdb::Reason;
use pacpool::proto::{
    EndpointMsg, EndpointStatus, OperationResult, OperationState, PROTOCOL_VERSION,
    RegisterResponse, ReportAck, ServerMsg, StateReport,
};
use pacpool::snapshot::{PackageState, Snapshot};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN: &str = "replica-kill-admin-token-0123456789abcdef";
const ENDPOINTS: usize = 30;
const NAMES: [&str; 3] = ["A", "B", "C"];
/// The replica killed.
const B: usize = 1;
const LOAD: Duration = Duration::from_secs(10);
const KILL_AT: Duration = Duration::from_secs(4);
/// B is frozen (SIGSTOP) this long before the SIGKILL, so that requests and sockets are
/// surely in flight on it when it dies (a plain SIGKILL under this load catches few).
const FREEZE: Duration = Duration::from_millis(500);
/// Upper bound for any wait or retry loop; only there so a bug fails instead of hanging.
const HANG: Duration = Duration::from_secs(60);

/// One `pacpool-coordinator serve --config FILE` child process; killed on drop.
struct Replica {
    name: &'static str,
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Replica {
    fn spawn(dir: &Path, name: &'static str, database: &str) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.join(format!("{name}.toml"));
        let hash = hex::encode(sha2::Sha256::digest(ADMIN.as_bytes()));
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndatabase = {:?}\ndatabase_pool_size = 8\n\
                 admin_token_file = {:?}\nadmin_token_sha256 = \"{hash}\"\n\
                 rate_limit_per_minute = 0\nanonymous_rate_limit_per_minute = 0\n\
                 invalid_token_rate_limit_per_minute = 0\nstorage_per_endpoint_mib_per_hour = 0\n\
                 [repo]\ndir = {:?}\n",
                database,
                dir.join(format!("{name}-admin-token")),
                dir.join("packages"),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        // The coordinator logs to stdout.
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pacpool-coordinator"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pacpool-coordinator");
        Self {
            name,
            child: Some(child),
            addr,
            log,
        }
    }

    fn wait_ready(&mut self) {
        let url = format!("http://{}/api/v1/health/ready", self.addr);
        let end = Instant::now() + HANG;
        while blocking_get(&url) != Some(200) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "replica {} exited ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < end,
                "replica {} never answered ready:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    fn freeze(&self) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last lines of its log, without the "database busy" warnings (a serialization
    /// failure retried), which are only counted.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("database busy"))
            .collect();
        format!(
            "{}\n({} \"database busy\" warnings)",
            lines[lines.len().saturating_sub(30)..].join("\n"),
            self.busy_warnings()
        )
    }

    /// Serialization failures it logged (each retried, or answered 503 after the last try).
    fn busy_warnings(&self) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains("database busy")).count()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- replica {} log (tail)\n{}", self.name, self.log_tail());
        }
    }
}

/// A plain GET over a raw socket: the status code.
fn blocking_get(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let (host, path) = url.strip_prefix("http://")?.split_once('/')?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// The TCP balancer: round-robin over the replicas, skipping those that refuse.
#[derive(Clone)]
struct Balancer {
    addr: SocketAddr,
    /// The client-side port of each connection → the replica it got (latest use of a port).
    routes: Arc<Mutex<HashMap<u16, usize>>>,
    /// Per replica: connections given to it, and connection attempts it refused.
    counts: Arc<Mutex<Vec<(u64, u64)>>>,
}

async fn balancer(backends: Vec<SocketAddr>) -> Balancer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = Balancer {
        addr: listener.local_addr().unwrap(),
        routes: Arc::default(),
        counts: Arc::new(Mutex::new(vec![(0, 0); backends.len()])),
    };
    let shared = b.clone();
    tokio::spawn(async move {
        let mut next = 0usize;
        while let Ok((mut client, peer)) = listener.accept().await {
            let (start, backends, sh) = (next, backends.clone(), shared.clone());
            next += 1;
            tokio::spawn(async move {
                for i in 0..backends.len() {
                    let idx = (start + i) % backends.len();
                    let connect = tokio::net::TcpStream::connect(backends[idx]);
                    match tokio::time::timeout(Duration::from_millis(500), connect).await {
                        Ok(Ok(mut server)) => {
                            sh.routes.lock().unwrap().insert(peer.port(), idx);
                            sh.counts.lock().unwrap()[idx].0 += 1;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                        _ => sh.counts.lock().unwrap()[idx].1 += 1,
                    }
                }
            });
        }
    });
    b
}

/// How an endpoint learnt of an operation.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// `OperationRequested` on its socket.
    Event,
    /// `GET /endpoint/operations` right after a Welcome.
    Poll,
    /// The poll after the load: never delivered while it ran.
    Drain,
}

#[derive(Clone, Copy, Debug)]
struct Session {
    replica: usize,
    /// Opened after B was killed.
    after_kill: bool,
    welcomed: bool,
    /// Closed or broken while the load ran.
    ended: bool,
}

/// Everything the clients saw acknowledged, and what they retried.
#[derive(Default)]
struct Ledger {
    /// Per endpoint: the last state acknowledged, and one sent without an answer yet.
    reports: HashMap<i64, (Option<String>, Option<String>)>,
    reports_acked: u64,
    report_retries: u64,
    /// Per endpoint: its WebSockets, in order.
    sessions: HashMap<i64, Vec<Session>>,
    /// WebSocket connections or hellos that failed.
    ws_failures: u64,
    /// Idempotency key → the operation the admin was answered.
    created: HashMap<String, i64>,
    create_retries: u64,
    /// Operations whose retried creation was answered 200: the first attempt had been stored.
    replayed: HashSet<i64>,
    by_event: u64,
    by_poll: u64,
    /// Operations found only by the poll after the load.
    drained: Vec<i64>,
    progress_retries: u64,
    result_retries: u64,
    /// Retried results answered 409 with the operation already finished (stored).
    results_found_stored: u64,
    /// Operation → its terminal state, acknowledged.
    results: HashMap<i64, String>,
    status_retries: u64,
    /// 503 `unavailable` answers (retried): when (seconds from the start) and to what.
    busy: Vec<(f64, String)>,
}

/// A request that got no usable answer: retried.
#[derive(Debug)]
enum Failed {
    /// No answer: the request may or may not have been stored.
    Transport(String),
    /// 503 `unavailable` ("the coordinator database is busy: retry in a moment"): nothing
    /// was stored.
    Busy(Value),
}

impl Failed {
    fn is_transport(&self) -> bool {
        matches!(self, Failed::Transport(_))
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Transport(e) => write!(f, "transport error: {e}"),
            Failed::Busy(v) => write!(f, "503 {v}"),
        }
    }
}

#[derive(Clone)]
struct Shared {
    /// When the test started (times in the ledger are from here).
    epoch: Instant,
    /// `http://BALANCER/api/v1`.
    base: String,
    /// Endpoints: keep-alive connections (each stays on one replica).
    http: reqwest::Client,
    /// The admin: a new connection per request, so requests spread over the replicas.
    admin_http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    balancer: Balancer,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// One request: `Ok((status, json))` when answered; `Err` on a transport error or a 503
    /// `unavailable` (nothing stored: "retry in a moment").
    async fn call(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Failed> {
        let mut req = client
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |e: reqwest::Error| Failed::Transport(e.to_string());
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport)?;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == 503 && v["code"] == "unavailable" {
            let at = self.epoch.elapsed().as_secs_f64();
            self.ledger().busy.push((at, path.to_owned()));
            return Err(Failed::Busy(v));
        }
        Ok((status, v))
    }

    /// A request retried until answered; `retried` counts each retry after a transport error.
    async fn answered(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        retried: fn(&mut Ledger),
    ) -> (u16, Value) {
        let end = Instant::now() + HANG;
        loop {
            match self.call(client, method.clone(), path, token, body).await {
                Ok(answer) => return answer,
                Err(e) => {
                    assert!(Instant::now() < end, "{method} {path}: never answered: {e}");
                    if e.is_transport() {
                        retried(&mut self.ledger());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn snapshot(endpoint: i64, seq: u64) -> Snapshot {
    let pkgs = (0..10)
        .map(|i| PackageState {
            name: format!("pkg{i:02}").parse().unwrap(),
            version: format!("{}.{}-1", 1 + (seq + i) % 5, endpoint)
                .parse()
                .unwrap(),
            arch: "any".parse().unwrap(),
            reason: Reason::Explicit,
            repo: None,
        })
        .chain([PackageState {
            name: "seq".parse().unwrap(),
            version: format!("{seq}-1").parse().unwrap(),
            arch: "any".parse().unwrap(),
            reason: Reason::Explicit,
            repo: None,
        }])
        .collect();
    Snapshot::new(pkgs).unwrap()
}

/// Reports state `seq` over REST, re-sending it until acknowledged.
async fn report(sh: &Shared, ep: i64, token: &str, seq: u64) {
    let snap = snapshot(ep, seq);
    let hash = snap.hash().to_hex();
    let body = serde_json::to_value(StateReport::Full { snapshot: snap }).unwrap();
    sh.ledger().reports.entry(ep).or_default().1 = Some(hash.clone());
    let (code, v) = sh
        .answered(
            &sh.http,
            Method::POST,
            "/endpoint/report",
            Some(token),
            Some(&body),
            |l| l.report_retries += 1,
        )
        .await;
    assert_eq!(code, 200, "report of endpoint {ep}: {v}");
    match serde_json::from_value::<ReportAck>(v.clone()) {
        Ok(ReportAck::Accepted { state }) => {
            assert_eq!(
                state.to_hex(),
                hash,
                "endpoint {ep}: acknowledged another state"
            );
            let mut l = sh.ledger();
            *l.reports.entry(ep).or_default() = (Some(hash), None);
            l.reports_acked += 1;
        }
        _ => panic!("report of endpoint {ep}: {v}"),
    }
}

/// Takes an operation once: progress (pending → in progress), then the result; each re-sent
/// on transport errors.
async fn take(sh: &Shared, ep: i64, token: &str, op: i64, source: Source, done: &mut HashSet<i64>) {
    if !done.insert(op) {
        return;
    }
    {
        let mut l = sh.ledger();
        match source {
            Source::Event => l.by_event += 1,
            Source::Poll => l.by_poll += 1,
            Source::Drain => l.drained.push(op),
        }
    }
    let progress = json!({"stage": "working", "percent": 50});
    let path = format!("/endpoint/operations/{op}/progress");
    let end = Instant::now() + HANG;
    let mut retried = false;
    loop {
        match sh
            .call(&sh.http, Method::POST, &path, Some(token), Some(&progress))
            .await
        {
            Ok((200, _)) => break,
            // A re-sent progress whose first copy was stored.
            Ok((409, v)) if retried && v["detail"]["state"] == "in_progress" => break,
            Ok((code, v)) => panic!("progress of operation {op} (endpoint {ep}): {code} {v}"),
            Err(e) => {
                assert!(
                    Instant::now() < end,
                    "progress of {op}: never answered: {e}"
                );
                if e.is_transport() {
                    retried = true;
                    sh.ledger().progress_retries += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let result = serde_json::to_value(OperationResult {
        state: OperationState::Completed,
        message: format!("simulated endpoint {ep} did it"),
        failures: Vec::new(),
        snapshot: None,
    })
    .unwrap();
    let path = format!("/endpoint/operations/{op}/result");
    let mut retried = false;
    loop {
        match sh
            .call(&sh.http, Method::POST, &path, Some(token), Some(&result))
            .await
        {
            Ok((200, v)) => {
                assert_eq!(v["state"], "completed", "result of {op}: {v}");
                sh.ledger().results.insert(op, "completed".into());
                return;
            }
            // A re-sent result whose first copy was stored.
            Ok((409, v))
                if retried
                    && v["code"] == "invalid_transition"
                    && v["detail"]["state"] == "completed" =>
            {
                let mut l = sh.ledger();
                l.results_found_stored += 1;
                l.results.insert(op, "completed".into());
                return;
            }
            Ok((code, v)) => panic!("result of operation {op} (endpoint {ep}): {code} {v}"),
            Err(e) => {
                assert!(Instant::now() < end, "result of {op}: never answered: {e}");
                if e.is_transport() {
                    retried = true;
                    sh.ledger().result_retries += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The endpoint's active operations (pending or in progress), as the coordinator lists them.
async fn active_operations(sh: &Shared, token: &str) -> Vec<i64> {
    let (code, page) = sh
        .answered(
            &sh.http,
            Method::GET,
            "/endpoint/operations?limit=50",
            Some(token),
            None,
            |l| l.status_retries += 1,
        )
        .await;
    assert_eq!(code, 200, "GET /endpoint/operations: {page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| matches!(o["state"].as_str(), Some("pending" | "in_progress")))
        .map(|o| o["id"].as_i64().unwrap())
        .collect()
}

/// The endpoint's WebSocket: connects through the balancer until stopped; after each
/// Welcome asks for its active operations; passes operation requests to `ops`.
async fn endpoint_socket(
    sh: Shared,
    ep: i64,
    token: String,
    ops: mpsc::UnboundedSender<(i64, Source)>,
) {
    while !sh.stopped() {
        let url = format!("ws://{}/api/v1/endpoints/ws", sh.balancer.addr);
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let connect = tokio_tungstenite::connect_async(req);
        let mut ws = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => ws,
            _ => {
                sh.ledger().ws_failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let port = match ws.get_ref() {
            MaybeTlsStream::Plain(s) => s.local_addr().unwrap().port(),
            _ => unreachable!("plain ws://"),
        };
        let replica = sh.balancer.routes.lock().unwrap()[&port];
        let n = {
            let after_kill = sh.killed.load(Ordering::SeqCst);
            let mut l = sh.ledger();
            let list = l.sessions.entry(ep).or_default();
            list.push(Session {
                replica,
                after_kill,
                welcomed: false,
                ended: false,
            });
            list.len() - 1
        };
        let session = |sh: &Shared, f: &dyn Fn(&mut Session)| {
            f(&mut sh.ledger().sessions.get_mut(&ep).unwrap()[n]);
        };
        let hello = EndpointMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "fault-replica-sim".into(),
            acked_state: None,
        };
        let welcomed = ws
            .send(Message::text(serde_json::to_string(&hello).unwrap()))
            .await
            .is_ok()
            && loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<ServerMsg>(&t) {
                        Ok(ServerMsg::Welcome { endpoint_id, .. }) => {
                            assert_eq!(endpoint_id, ep);
                            break true;
                        }
                        other => panic!("endpoint {ep}: expected a Welcome, got {other:?}"),
                    },
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                        break false;
                    }
                    Ok(Some(Ok(_))) => {}
                }
            };
        if !welcomed {
            sh.ledger().ws_failures += 1;
            session(&sh, &|s| s.ended = true);
            continue;
        }
        session(&sh, &|s| s.welcomed = true);
        // What was requested while this endpoint had no socket (as the daemon does).
        for op in active_operations(&sh, &token).await {
            let _ = ops.send((op, Source::Poll));
        }
        loop {
            if sh.stopped() {
                let _ = ws.close(None).await;
                return;
            }
            match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
                Err(_) => {}
                Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<ServerMsg>(&t) {
                    Ok(ServerMsg::OperationRequested { operation }) => {
                        let _ = ops.send((operation.id, Source::Event));
                    }
                    Ok(ServerMsg::Error { error }) => panic!("endpoint {ep}: {error:?}"),
                    _ => {}
                },
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(_))) => {}
            }
        }
        session(&sh, &|s| s.ended = true);
    }
}

/// The endpoint's REST side: a new state every 100 ms, and the operations it is given.
async fn endpoint_rest(
    sh: Shared,
    ep: i64,
    token: String,
    mut ops: mpsc::UnboundedReceiver<(i64, Source)>,
) {
    let mut done = HashSet::new();
    let mut seq = 0u64;
    while !sh.stopped() {
        while let Ok((op, source)) = ops.try_recv() {
            take(&sh, ep, &token, op, source, &mut done).await;
        }
        seq += 1;
        report(&sh, ep, &token, seq).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until the socket task has ended.
    while let Some((op, source)) = ops.recv().await {
        take(&sh, ep, &token, op, source, &mut done).await;
    }
}

/// The admin: one operation per endpoint, spread over the load, each retried with the same
/// idempotency key until answered.
async fn admin(sh: Shared, endpoints: Vec<i64>) {
    // Spread over the freeze and the kill (one request at a time, each on a new connection:
    // the balancer's round robin sends one in three to B).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ep in endpoints {
        let key = format!("replica-kill-{ep}");
        let body = json!({"kind": "sync-to-latest", "idempotency_key": key});
        let path = format!("/endpoints/{ep}/operations");
        let end = Instant::now() + HANG;
        let mut retried = false;
        let id = loop {
            match sh
                .call(
                    &sh.admin_http,
                    Method::POST,
                    &path,
                    Some(ADMIN),
                    Some(&body),
                )
                .await
            {
                Ok((201, op)) => break op["id"].as_i64().unwrap(),
                Ok((200, op)) if retried => {
                    let id = op["id"].as_i64().unwrap();
                    sh.ledger().replayed.insert(id);
                    break id;
                }
                Ok((code, v)) => panic!("create operation on endpoint {ep}: {code} {v}"),
                Err(e) => {
                    assert!(Instant::now() < end, "create on {ep}: never answered: {e}");
                    if e.is_transport() {
                        retried = true;
                        sh.ledger().create_retries += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        if let Some(old) = sh.ledger().created.insert(key.clone(), id) {
            panic!("idempotency key {key} answered twice: {old} and {id}");
        }
        tokio::time::sleep(Duration::from_millis(130)).await;
    }
}

#[test]
fn replica_killed_under_load_loses_and_doubles_nothing() {
    let started = Instant::now();
    let pg = match pg::PgCluster::start() {
        Ok(pg) => pg,
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let database = pg.database("pacpool");
    let dir = tempfile::tempdir().unwrap();
    // Started together: their schema migrations race on the one database.
    let mut replicas: Vec<Replica> = NAMES
        .iter()
        .map(|name| Replica::spawn(dir.path(), name, &database))
        .collect();
    for r in &mut replicas {
        r.wait_ready();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backends: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let bal = rt.block_on(balancer(backends));
    let sh = Shared {
        epoch: started,
        base: format!("http://{}/api/v1", bal.addr),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        admin_http: reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        ledger: Arc::default(),
        stop: Arc::default(),
        killed: Arc::default(),
        balancer: bal.clone(),
    };

    // A pool, its endpoints, and a target (sync-to-latest needs one).
    let eps: Vec<(i64, String)> = rt.block_on(async {
        let (code, pool) = sh
            .call(
                &sh.admin_http,
                Method::POST,
                "/pools",
                Some(ADMIN),
                Some(&json!({"name": "fleet"})),
            )
            .await
            .unwrap();
        assert_eq!(code, 201, "{pool}");
        let pool = pool["id"].as_i64().unwrap();
        let (code, join) = sh
            .call(
                &sh.admin_http,
                Method::POST,
                &format!("/pools/{pool}/join-tokens"),
                Some(ADMIN),
                Some(&json!({})),
            )
            .await
            .unwrap();
        assert!(code == 200 || code == 201, "{join}");
        let join = join["token"].as_str().unwrap().to_owned();
        let mut eps = Vec::new();
        for i in 0..ENDPOINTS {
            let body = json!({"join_token": join, "name": format!("sim{i}")});
            let (code, v) = sh
                .call(&sh.http, Method::POST, "/register", None, Some(&body))
                .await
                .unwrap();
            assert!(code == 200 || code == 201, "register: {code} {v}");
            let r: RegisterResponse = serde_json::from_value(v).unwrap();
            eps.push((r.endpoint_id, r.endpoint_token));
        }
        let (ep, token) = &eps[0];
        report(&sh, *ep, token, 0).await;
        let hash = snapshot(*ep, 0).hash().to_hex();
        let (code, t) = sh
            .call(
                &sh.http,
                Method::POST,
                "/endpoint/target",
                Some(token),
                Some(&json!({"expected_revision": 0, "snapshot": hash})),
            )
            .await
            .unwrap();
        assert_eq!(code, 200, "set target: {t}");
        eps
    });

    // Load.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (ep, token) in &eps {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.push(rt.spawn(endpoint_socket(sh.clone(), *ep, token.clone(), tx)));
        tasks.push(rt.spawn(endpoint_rest(sh.clone(), *ep, token.clone(), rx)));
    }
    tasks.push(rt.spawn(admin(sh.clone(), eps.iter().map(|(e, _)| *e).collect())));

    std::thread::sleep((KILL_AT - FREEZE).saturating_sub(t0.elapsed()));
    replicas[B].freeze();
    let frozen_at = t0.elapsed();
    std::thread::sleep(KILL_AT.saturating_sub(t0.elapsed()));
    sh.killed.store(true, Ordering::SeqCst);
    let (on_b, sockets_per_replica): (HashSet<i64>, Vec<usize>) = {
        let l = sh.ledger();
        let mut per = vec![0; NAMES.len()];
        let mut on_b = HashSet::new();
        for (ep, list) in &l.sessions {
            if let Some(s) = list.last().filter(|s| !s.ended) {
                per[s.replica] += 1;
                if s.replica == B {
                    on_b.insert(*ep);
                }
            }
        }
        (on_b, per)
    };
    let acked_at_kill = sh.ledger().reports_acked;
    replicas[B].kill();
    let killed_at = t0.elapsed();

    std::thread::sleep(LOAD.saturating_sub(t0.elapsed()));
    sh.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(HANG, t)
                .await
                .expect("a client task hung")
                .unwrap();
        }
    });
    let load_time = t0.elapsed();

    // What was never delivered while the load ran.
    rt.block_on(async {
        for (ep, token) in &eps {
            let mut done = HashSet::new();
            for op in active_operations(&sh, token).await {
                take(&sh, *ep, token, op, Source::Drain, &mut done).await;
            }
        }
    });

    // Sockets: every endpoint whose socket was on B reconnected to A or C and got a Welcome;
    // every endpoint's last socket is on A or C, welcomed, and was open when the load ended.
    let l = sh.ledger();
    for ep in &on_b {
        let list = &l.sessions[ep];
        assert!(
            list.iter()
                .any(|s| s.after_kill && s.replica != B && s.welcomed),
            "endpoint {ep} had its socket on B and never got a Welcome on A or C: {list:?}"
        );
    }
    let mut dropped_elsewhere = 0;
    for (ep, _) in &eps {
        let list = &l.sessions[ep];
        let last = list.last().unwrap();
        assert!(
            last.replica != B && last.welcomed && !last.ended,
            "endpoint {ep}: its last socket is not an open, welcomed one on A or C: {list:?}"
        );
        dropped_elsewhere += list.iter().filter(|s| s.replica != B && s.ended).count();
    }
    let reports = l.reports.clone();
    drop(l);

    rt.block_on(async {
        // Every endpoint's state is its last acknowledged report (or the one in flight).
        for (ep, token) in &eps {
            let (code, v) = sh
                .answered(
                    &sh.http,
                    Method::GET,
                    "/endpoint/status",
                    Some(token),
                    None,
                    |l| l.status_retries += 1,
                )
                .await;
            assert_eq!(code, 200, "status of endpoint {ep}: {v}");
            let status: EndpointStatus = serde_json::from_value(v).unwrap();
            let have = status.current.map(|h| h.to_hex());
            let (acked, in_flight) = &reports[ep];
            assert!(
                have.is_some() && (have == *acked || have == *in_flight),
                "endpoint {ep}: the coordinator has state {have:?}, the last acknowledged report \
                 was {acked:?} (in flight: {in_flight:?})"
            );
        }
    });

    // Nothing stored twice, nothing lost (read from PostgreSQL).
    let sql = |q: &str| pg.psql("pacpool", q);
    assert_eq!(
        sql(
            "SELECT endpoint_id, idempotency_key, count(*) FROM operations \
             GROUP BY endpoint_id, idempotency_key HAVING count(*) > 1"
        ),
        "",
        "an idempotency key names two operations"
    );
    assert_eq!(
        sql("SELECT endpoint_id, count(*) FROM operations \
             WHERE state IN ('pending', 'in_progress') GROUP BY endpoint_id HAVING count(*) > 1"),
        "",
        "an endpoint has two active operations"
    );
    assert_eq!(
        sql("SELECT id FROM operations \
             WHERE state IN ('completed', 'failed', 'cancelled') AND result IS NULL"),
        "",
        "finished operations without their result"
    );
    assert_eq!(
        sql("SELECT o.id, o.state, (SELECT count(*) FROM audit a \
               WHERE a.action = 'operation.update' AND a.subject = 'operation:' || o.id \
               AND a.detail ~ ' -> (completed|failed|cancelled)$') AS n \
             FROM operations o WHERE o.state IN ('completed', 'failed', 'cancelled') \
             AND (SELECT count(*) FROM audit a \
               WHERE a.action = 'operation.update' AND a.subject = 'operation:' || o.id \
               AND a.detail ~ ' -> (completed|failed|cancelled)$') <> 1"),
        "",
        "operations (id|state|terminal transitions) not finished exactly once"
    );
    let l = sh.ledger();
    let mut stored: Vec<String> =
        sql("SELECT idempotency_key || '=' || id || '=' || state FROM operations ORDER BY id")
            .lines()
            .map(str::to_owned)
            .collect();
    stored.sort();
    let mut expected: Vec<String> = l
        .created
        .iter()
        .map(|(k, id)| format!("{k}={id}=completed"))
        .collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "the operations stored are not exactly those the admin was answered, all completed"
    );
    assert_eq!(l.created.len(), ENDPOINTS);
    assert_eq!(l.results.len(), ENDPOINTS, "results acknowledged");
    // Every operation reached its endpoint while the load ran: by an event (from any
    // replica, through NOTIFY), or by the poll after a Welcome on a new socket. A replica
    // that dies between storing an operation and telling the others tells nobody; the
    // admin's retry with the same key then announces the stored, still pending operation
    // again, so it is not lost either.
    assert!(
        l.drained.is_empty(),
        "operations never delivered to their endpoint while the load ran (no event, not found \
         after a Welcome): {:?} (retries answered from a first attempt: {:?})",
        l.drained,
        l.replayed
    );

    // A and C still answer ready.
    for (i, r) in replicas.iter().enumerate().filter(|(i, _)| *i != B) {
        assert_eq!(
            blocking_get(&format!("http://{}/api/v1/health/ready", r.addr)),
            Some(200),
            "replica {} is not ready",
            NAMES[i]
        );
    }

    let counts = bal.counts.lock().unwrap().clone();
    let load_offset = t0.duration_since(started).as_secs_f64();
    let busy_logged: Vec<usize> = replicas.iter().map(Replica::busy_warnings).collect();
    let busy_at = l
        .busy
        .iter()
        .map(|(at, path)| format!("{:.2} s {path}", at - load_offset))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "fault_replica_kill: {:.1} s in all, load {:.1} s; B frozen at {:.1} s, killed at {:.1} s \
         (into the load); sockets at the \
         kill (A, B, C): {sockets_per_replica:?}, {} endpoints on B all reconnected to A or C \
         and welcomed; sockets on A or C that dropped: {dropped_elsewhere}; socket failures: {}; \
         reports acknowledged: {acked_at_kill} before the kill, {} in all, re-sent: {}; \
         operations: {} created, create retries: {} (answered from the first attempt: {}); \
         delivered by event {}, by the poll after a Welcome {}, only after the load {}; \
         progress retries: {}, result retries: {} (found stored: {}); status retries: {}; \
         503 busy answers (retried): {} ({busy_at}); \"database busy\" warnings in the \
         replicas' logs: {busy_logged:?}; balancer connections (given, refused) per replica: {counts:?}; duplicates: 0, lost: 0",
        started.elapsed().as_secs_f64(),
        load_time.as_secs_f64(),
        frozen_at.as_secs_f64(),
        killed_at.as_secs_f64(),
        on_b.len(),
        l.ws_failures,
        l.reports_acked,
        l.report_retries,
        l.created.len(),
        l.create_retries,
        l.replayed.len(),
        l.by_event,
        l.by_poll,
        l.drained.len(),
        l.progress_retries,
        l.result_retries,
        l.results_found_stored,
        l.status_retries,
        l.busy.len(),
    );
    drop(l);
    drop(rt);
    drop(replicas);
}
