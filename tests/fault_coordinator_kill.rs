//! Fault injection: the real `pacpool-coordinator` binary killed with SIGKILL under load and
//! restarted on the same port and SQLite file, several times.
//!
//! Load: simulated endpoints (real WebSockets and REST, the daemon's wire protocol) report
//! states, set pool targets, take requested operations and send their results; an admin
//! requests operations with idempotency keys; two real pacpoold processes (sandbox pacman
//! roots) run requested sync and set-latest operations and deliver results from their outbox.
//!
//! Every acknowledgement received before a kill is recorded. After each restart, before any
//! client speaks again: every acknowledged target revision, operation and result is stored,
//! and every endpoint's state is the last acknowledged report (or the one in flight at the
//! kill). Then clients re-send what was not acknowledged (results, operation requests with
//! the same idempotency key), the daemons flush their outboxes, and at the end every
//! idempotency key names exactly one operation and every operation was finished exactly once
//! (one terminal transition in the audit log).
//!
//! The seed is printed; `PACPOOL_SEED=N` replays the kill timings, `PACPOOL_LONG=1` runs more
//! kill cycles.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pacpool::localdb::Reason;
use pacpool::proto::{
    EndpointMsg, OperationResult, OperationState, PROTOCOL_VERSION, ReportAck, ServerMsg,
    StateReport,
};
use pacpool::snapshot::{PackageState, Snapshot};
use sha2::Digest;
use support::daemon::{Daemon, write_config};
use support::rng::{Rng, seed};
use support::{PkgSpec, Sandbox, host_arch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN: &str = "fault-admin-token-0123456789abcdef0123";
const SIM_ENDPOINTS: usize = 12;

/// The real coordinator binary as a child process.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, addr: SocketAddr) -> Self {
        let config = dir.join("coordinator.toml");
        let hash = hex::encode(sha2::Sha256::digest(ADMIN.as_bytes()));
        // Every acknowledged target revision is checked after each restart, and retention
        // runs at every start: keep all revisions (a run sets well over the default 1,000).
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndatabase = \"{}\"\nadmin_token_sha256 = \"{hash}\"\n\
                 rate_limit_per_minute = 0\nanonymous_rate_limit_per_minute = 0\n\
                 retention_interval_secs = 86400\nmax_target_history = 0\n",
                dir.join("coordinator.db").display()
            ),
        )
        .unwrap();
        let mut s = Self {
            child: None,
            addr,
            config,
            log: dir.join("coordinator.log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pacpool-coordinator"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pacpool-coordinator");
        self.child = Some(child);
        let url = format!("http://{}/api/v1/health/live", self.addr);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = std::net::TcpStream::connect(self.addr).is_ok()
                && blocking_get(&url).is_some_and(|s| s == 200);
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "the coordinator exited ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < end, "the coordinator did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain GET over a raw socket (no runtime needed): the status code.
fn blocking_get(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Everything the clients saw acknowledged, and what they sent without an answer.
#[derive(Default)]
struct Ledger {
    /// Per simulated endpoint: the last report acknowledged, and one sent without an answer.
    reports: HashMap<i64, (Option<String>, Option<String>)>,
    reports_acked: u64,
    /// Acknowledged target revisions.
    targets: BTreeMap<u64, String>,
    /// Idempotency key → operation id, acknowledged.
    creates: HashMap<String, i64>,
    /// (endpoint, key) of requests without an answer.
    creates_unacked: Vec<(i64, String)>,
    /// Operation → terminal state, acknowledged (stored, or found already finished).
    results: HashMap<i64, String>,
    /// Results sent without an answer, per endpoint: (operation, result).
    results_unacked: HashMap<i64, Vec<(i64, OperationResult)>>,
    resent_results: u64,
    resent_creates: u64,
}

#[derive(Clone)]
struct Shared {
    base: String,
    http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
    hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }
    /// A request: `Ok((status, json))` when answered, `Err` when the connection failed.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    }
    fn paused(&self) -> bool {
        self.hold.load(Ordering::SeqCst)
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn snapshot(endpoint: i64, seq: u64) -> Snapshot {
    let pkgs = (0..20)
        .map(|i| PackageState {
            name: format!("sim{i:02}").parse().unwrap(),
            version: format!("{}.{}-1", 1 + (seq + i) % 7, endpoint)
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

/// Sends a result over REST; records it as acknowledged or as unacknowledged.
async fn send_result(sh: &Shared, ep: i64, token: &str, op: i64, result: OperationResult) {
    let body = serde_json::to_value(&result).unwrap();
    let path = format!("/endpoint/operations/{op}/result");
    match sh
        .call(reqwest::Method::POST, &path, token, Some(body))
        .await
    {
        Ok((200, v)) => {
            sh.ledger()
                .results
                .insert(op, v["state"].as_str().unwrap().to_owned());
        }
        Ok((409, v)) if v["code"] == "invalid_transition" => {
            // Already finished: what the coordinator holds is the answer.
            let state = v["detail"]["state"].as_str().unwrap_or_default().to_owned();
            if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
                sh.ledger().results.insert(op, state);
            }
        }
        Ok((code, v)) => panic!("result for operation {op}: {code} {v}"),
        Err(_) => sh
            .ledger()
            .results_unacked
            .entry(ep)
            .or_default()
            .push((op, result)),
    }
}

/// Takes an operation: progress (pending → in progress), then the result.
async fn take_operation(sh: &Shared, ep: i64, token: &str, op: i64) {
    let progress = serde_json::json!({"stage": "working", "percent": 50});
    let path = format!("/endpoint/operations/{op}/progress");
    match sh
        .call(reqwest::Method::POST, &path, token, Some(progress))
        .await
    {
        Ok((200, _)) => {}
        // Already finished (taken twice): nothing to do.
        Ok((409, _)) => return,
        Ok((code, v)) => panic!("progress for operation {op}: {code} {v}"),
        Err(_) => return, // taken again after the reconnect
    }
    let result = OperationResult {
        state: OperationState::Completed,
        message: format!("simulated endpoint {ep} did it"),
        failures: Vec::new(),
        snapshot: None,
    };
    send_result(sh, ep, token, op, result).await;
}

/// One simulated endpoint: reconnects until stopped; reports, sets targets, takes operations.
async fn sim_endpoint(sh: Shared, ep: i64, token: String) {
    while !sh.stopped() {
        if sh.paused() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        // Re-send results that got no answer, then pick up what is still ours to do.
        let unacked = sh.ledger().results_unacked.remove(&ep).unwrap_or_default();
        for (op, result) in unacked {
            sh.ledger().resent_results += 1;
            send_result(&sh, ep, &token, op, result).await;
        }
        if let Ok((200, page)) = sh
            .call(
                reqwest::Method::GET,
                "/endpoint/operations?limit=20",
                &token,
                None,
            )
            .await
        {
            for op in page["items"].as_array().unwrap() {
                if matches!(op["state"].as_str(), Some("pending" | "in_progress")) {
                    take_operation(&sh, ep, &token, op["id"].as_i64().unwrap()).await;
                }
            }
        }
        let mut req = format!("ws://{}/api/v1/endpoints/ws", &sh.base[7..])
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let hello = EndpointMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "fault-sim".into(),
            acked_state: None,
        };
        if ws
            .send(Message::text(serde_json::to_string(&hello).unwrap()))
            .await
            .is_err()
        {
            continue;
        }
        let mut n = 0u64;
        'session: while !sh.stopped() && !sh.paused() {
            let seq = sh.seq.fetch_add(1, Ordering::SeqCst);
            let snap = snapshot(ep, seq);
            let hash = snap.hash().to_hex();
            let report = EndpointMsg::Report {
                report: StateReport::Full { snapshot: snap },
                source: None,
            };
            sh.ledger().reports.entry(ep).or_default().1 = Some(hash.clone());
            if ws
                .send(Message::text(serde_json::to_string(&report).unwrap()))
                .await
                .is_err()
            {
                break;
            }
            // Until the ack: handle what else arrives.
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                let text = match frame {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(Message::Close(_)))) => break 'session,
                    Ok(Some(Ok(_))) => continue,
                    _ => break 'session,
                };
                match serde_json::from_str::<ServerMsg>(&text) {
                    Ok(ServerMsg::ReportAck {
                        ack: ReportAck::Accepted { state },
                    }) => {
                        assert_eq!(state.to_hex(), hash);
                        let mut l = sh.ledger();
                        let e = l.reports.entry(ep).or_default();
                        *e = (Some(hash.clone()), None);
                        l.reports_acked += 1;
                        break;
                    }
                    Ok(ServerMsg::OperationRequested { operation }) => {
                        take_operation(&sh, ep, &token, operation.id).await;
                    }
                    Ok(ServerMsg::Error { error }) => panic!("endpoint {ep}: {error:?}"),
                    _ => {}
                }
            }
            n += 1;
            if n % 4 == 0 {
                // Set as latest: expect the current revision.
                let current = match sh
                    .call(reqwest::Method::GET, "/endpoint/target", &token, None)
                    .await
                {
                    Ok((200, t)) => t["revision"].as_u64().unwrap_or(0),
                    Ok(_) => 0,
                    Err(_) => break,
                };
                let body = serde_json::json!({"expected_revision": current, "snapshot": hash});
                match sh
                    .call(
                        reqwest::Method::POST,
                        "/endpoint/target",
                        &token,
                        Some(body),
                    )
                    .await
                {
                    Ok((200, t)) => {
                        sh.ledger()
                            .targets
                            .insert(t["revision"].as_u64().unwrap(), hash.clone());
                    }
                    Ok((409, _)) => {}
                    Ok((code, v)) => panic!("set target: {code} {v}"),
                    Err(_) => break,
                }
            }
        }
        let _ = ws.close(None).await;
    }
}

/// The admin: requests operations on simulated endpoints with idempotency keys.
async fn sim_admin(sh: Shared, endpoints: Vec<i64>, mut rng: Rng) {
    let mut n = 0u64;
    while !sh.stopped() {
        if sh.paused() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        // Re-send requests that got no answer, with the same key.
        let unacked = std::mem::take(&mut sh.ledger().creates_unacked);
        for (ep, key) in unacked {
            sh.ledger().resent_creates += 1;
            create(&sh, ep, key).await;
        }
        let ep = endpoints[(rng.next() % endpoints.len() as u64) as usize];
        n += 1;
        create(&sh, ep, format!("k{n}")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn create(sh: &Shared, ep: i64, key: String) {
    let body = serde_json::json!({"kind": "sync-to-latest", "idempotency_key": key});
    let path = format!("/endpoints/{ep}/operations");
    match sh
        .call(reqwest::Method::POST, &path, ADMIN, Some(body))
        .await
    {
        Ok((200 | 201, op)) => {
            let id = op["id"].as_i64().unwrap();
            if let Some(old) = sh.ledger().creates.insert(key.clone(), id) {
                assert_eq!(old, id, "idempotency key {key} named two operations");
            }
        }
        // Another operation is active on that endpoint: refused, nothing stored.
        Ok((409, v)) if v["code"] == "operation_active" => {}
        Ok((code, v)) => panic!("create operation: {code} {v}"),
        Err(_) => sh.ledger().creates_unacked.push((ep, key)),
    }
}

/// Requested operations on the real daemons: one at a time per daemon, waiting for its end.
async fn real_admin(sh: Shared, endpoint: i64, done: Arc<Mutex<Vec<i64>>>) {
    let mut n = 0u64;
    while !sh.stopped() {
        n += 1;
        let kind = if n % 3 == 0 {
            "set-as-latest"
        } else {
            "sync-to-latest"
        };
        let key = format!("real-{endpoint}-{n}");
        let body = serde_json::json!({"kind": kind, "idempotency_key": key});
        let path = format!("/endpoints/{endpoint}/operations");
        // Retry with the same key until answered (the coordinator may be down).
        let id = loop {
            match sh
                .call(reqwest::Method::POST, &path, ADMIN, Some(body.clone()))
                .await
            {
                Ok((200 | 201, op)) => break Some(op["id"].as_i64().unwrap()),
                Ok((409, v)) if v["code"] == "operation_active" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok((409, v)) if v["code"] == "no_target" => break None,
                Ok((code, v)) => panic!("create operation on a daemon: {code} {v}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            if sh.stopped() {
                return;
            }
        };
        let Some(id) = id else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        done.lock().unwrap().push(id);
        // Wait for its end (the daemon delivers the result, perhaps after a restart).
        while !sh.stopped() {
            if let Ok((200, op)) = sh
                .call(
                    reqwest::Method::GET,
                    &format!("/operations/{id}"),
                    ADMIN,
                    None,
                )
                .await
                && matches!(
                    op["state"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// Reads all pages of `path` (admin).
async fn all_pages(sh: &Shared, path: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let p = match cursor {
            Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
            None => format!("{path}{sep}limit=1000"),
        };
        let (code, page) = sh
            .call(reqwest::Method::GET, &p, ADMIN, None)
            .await
            .unwrap();
        assert_eq!(code, 200, "{p}: {page}");
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// After a restart, before clients speak: everything acknowledged is there.
async fn verify_acked(sh: &Shared, sim_pool: i64) -> (usize, usize, usize, usize) {
    let (reports, targets, creates, results) = {
        let l = sh.ledger();
        (
            l.reports.clone(),
            l.targets.clone(),
            l.creates.clone(),
            l.results.clone(),
        )
    };
    let (_, eps) = sh
        .call(
            reqwest::Method::GET,
            &format!("/pools/{sim_pool}/endpoints"),
            ADMIN,
            None,
        )
        .await
        .unwrap();
    let current: HashMap<i64, Option<String>> = eps
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["current"].as_str().map(str::to_owned),
            )
        })
        .collect();
    for (ep, (acked, in_flight)) in &reports {
        let have = current.get(ep).cloned().flatten();
        assert!(
            have.is_some() && (have == *acked || have == *in_flight),
            "endpoint {ep}: the coordinator has state {have:?}, the last acknowledged report was {acked:?} (in flight: {in_flight:?})"
        );
    }
    let (_, stored) = sh
        .call(
            reqwest::Method::GET,
            &format!("/pools/{sim_pool}/targets"),
            ADMIN,
            None,
        )
        .await
        .unwrap();
    let stored: HashMap<u64, String> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["revision"].as_u64().unwrap(),
                t["snapshot"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (rev, snap) in &targets {
        assert_eq!(
            stored.get(rev),
            Some(snap),
            "acknowledged target revision {rev} lost or changed"
        );
    }
    let ops: HashMap<i64, serde_json::Value> =
        all_pages(sh, &format!("/operations?pool={sim_pool}"))
            .await
            .into_iter()
            .map(|o| (o["id"].as_i64().unwrap(), o))
            .collect();
    for (key, id) in &creates {
        let op = ops
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged operation {id} ({key}) lost"));
        assert_eq!(op["idempotency_key"], key.as_str());
    }
    for (id, state) in &results {
        let op = ops
            .get(id)
            .unwrap_or_else(|| panic!("operation {id} with an acknowledged result lost"));
        assert_eq!(
            op["state"],
            state.as_str(),
            "acknowledged result of operation {id} lost: {op}"
        );
    }
    (reports.len(), targets.len(), creates.len(), results.len())
}

#[test]
fn coordinator_killed_under_load_loses_nothing_acknowledged() {
    let started = Instant::now();
    let mut rng = Rng(seed("fault_coordinator_kill", "PACPOOL_SEED"));
    let cycles = if std::env::var("PACPOOL_LONG").is_ok_and(|v| v == "1") {
        20
    } else {
        5
    };
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = Server::start(dir.path(), addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sh = Shared {
        base: server.url(),
        http: reqwest::Client::new(),
        ledger: Arc::default(),
        hold: Arc::default(),
        stop: Arc::default(),
        seq: Arc::default(),
    };

    // Two pools: simulated endpoints, and the real daemons.
    let (sim_pool, sim_join, real_pool, real_join) = rt.block_on(async {
        let mut ids = Vec::new();
        for name in ["sim", "real"] {
            let (_, pool) = sh
                .call(
                    reqwest::Method::POST,
                    "/pools",
                    ADMIN,
                    Some(serde_json::json!({"name": name})),
                )
                .await
                .unwrap();
            let id = pool["id"].as_i64().unwrap();
            let (_, join) = sh
                .call(
                    reqwest::Method::POST,
                    &format!("/pools/{id}/join-tokens"),
                    ADMIN,
                    Some(serde_json::json!({})),
                )
                .await
                .unwrap();
            ids.push((id, join["token"].as_str().unwrap().to_owned()));
        }
        (ids[0].0, ids[0].1.clone(), ids[1].0, ids[1].1.clone())
    });
    let sims: Vec<(i64, String)> = rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..SIM_ENDPOINTS {
            let resp = sh
                .http
                .post(sh.url("/register"))
                .json(&serde_json::json!({"join_token": sim_join, "name": format!("sim{i}")}))
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = resp.json().await.unwrap();
            out.push((
                v["endpoint_id"].as_i64().unwrap(),
                v["endpoint_token"].as_str().unwrap().to_owned(),
            ));
        }
        // A first target, so that sync requests are accepted.
        let (ep, token) = &out[0];
        let snap = snapshot(*ep, 0);
        let hash = snap.hash().to_hex();
        let (code, _) = sh
            .call(
                reqwest::Method::POST,
                "/endpoint/report",
                token,
                Some(serde_json::to_value(StateReport::Full { snapshot: snap }).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(code, 200);
        let (code, t) = sh
            .call(
                reqwest::Method::POST,
                "/endpoint/target",
                token,
                Some(serde_json::json!({"expected_revision": 0, "snapshot": hash})),
            )
            .await
            .unwrap();
        assert_eq!(code, 200, "{t}");
        out
    });

    // Two real daemons on sandboxes with one package each.
    let boxes: Vec<Sandbox> = (0..2).map(|_| Sandbox::new()).collect();
    let mut daemons = Vec::new();
    for (i, sb) in boxes.iter().enumerate() {
        let pkg = sb.build_package(&PkgSpec::new("tool", "1.0-1").arch(&host_arch()));
        sb.publish(&[pkg]);
        sb.pacman_ok(&["-Sy", "tool"]);
        let name = format!("real{i}");
        let d = Daemon::start(&write_config(sb, &name, Some((&server.url(), &real_join))));
        let end = Instant::now() + Duration::from_secs(30);
        while d.status()["link"] != "connected" {
            assert!(Instant::now() < end, "daemon {name} did not connect");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemons.push(d);
    }
    daemons[0].cli_code(&["set-latest", "--yes"], 0);
    let real_eps: Vec<i64> = rt.block_on(async {
        let (_, eps) = sh
            .call(
                reqwest::Method::GET,
                &format!("/pools/{real_pool}/endpoints"),
                ADMIN,
                None,
            )
            .await
            .unwrap();
        eps.as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    });

    // Load.
    let real_ops: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut tasks = Vec::new();
    for (ep, token) in &sims {
        tasks.push(rt.spawn(sim_endpoint(sh.clone(), *ep, token.clone())));
    }
    tasks.push(rt.spawn(sim_admin(
        sh.clone(),
        sims.iter().map(|(e, _)| *e).collect(),
        Rng(rng.next()),
    )));
    for ep in &real_eps {
        tasks.push(rt.spawn(real_admin(sh.clone(), *ep, real_ops.clone())));
    }

    let mut acked_at_kills = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(rng.between(800, 2500)));
        let (reports, targets, creates, results) = {
            let l = sh.ledger();
            (
                l.reports_acked,
                l.targets.len(),
                l.creates.len(),
                l.results.len(),
            )
        };
        server.kill();
        sh.hold.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(rng.between(100, 700)));
        server.spawn();
        // Let requests that were answered just before the kill finish recording.
        std::thread::sleep(Duration::from_millis(100));
        let checked = rt.block_on(verify_acked(&sh, sim_pool));
        acked_at_kills.push((cycle, reports, targets, creates, results, checked));
        sh.hold.store(false, Ordering::SeqCst);
    }
    std::thread::sleep(Duration::from_millis(1500));
    sh.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });

    // Drain: unacknowledged results and requests, re-sent until answered.
    rt.block_on(async {
        let left: Vec<(i64, Vec<(i64, OperationResult)>)> =
            sh.ledger().results_unacked.drain().collect();
        for (ep, items) in left {
            let token = &sims.iter().find(|(e, _)| *e == ep).unwrap().1;
            for (op, r) in items {
                sh.ledger().resent_results += 1;
                send_result(&sh, ep, token, op, r).await;
            }
        }
        let left = std::mem::take(&mut sh.ledger().creates_unacked);
        for (ep, key) in left {
            sh.ledger().resent_creates += 1;
            create(&sh, ep, key).await;
        }
    });
    rt.block_on(verify_acked(&sh, sim_pool));

    // The real daemons deliver every result from their outbox: every operation ends.
    let real_ops = real_ops.lock().unwrap().clone();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let open: Vec<i64> = rt.block_on(async {
            let mut open = Vec::new();
            for id in &real_ops {
                let (_, op) = sh
                    .call(
                        reqwest::Method::GET,
                        &format!("/operations/{id}"),
                        ADMIN,
                        None,
                    )
                    .await
                    .unwrap();
                if !matches!(
                    op["state"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                ) {
                    open.push(*id);
                }
            }
            open
        });
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "operations on real daemons never ended: {open:?}\n--- daemon 0\n{}\n--- daemon 1\n{}",
            daemons[0].log(),
            daemons[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Exactly once: one operation per idempotency key; one terminal transition per operation.
    let (ops, audit) = rt.block_on(async {
        (
            all_pages(&sh, "/operations").await,
            all_pages(&sh, "/audit").await,
        )
    });
    let mut keys: HashMap<String, usize> = HashMap::new();
    for op in &ops {
        if let Some(k) = op["idempotency_key"].as_str() {
            *keys.entry(k.to_owned()).or_default() += 1;
        }
    }
    let dup_keys: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup_keys.is_empty(), "duplicate operations: {dup_keys:?}");
    let mut finished: HashMap<String, usize> = HashMap::new();
    for e in &audit {
        let terminal = e["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with("-> completed") || d.ends_with("-> failed"));
        if e["action"] == "operation.update" && terminal {
            *finished
                .entry(e["subject"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let twice: Vec<_> = finished.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "operations finished more than once: {twice:?}"
    );
    let terminal_ops = ops
        .iter()
        .filter(|o| matches!(o["state"].as_str(), Some("completed" | "failed")))
        .count();
    assert_eq!(
        finished.len(),
        terminal_ops,
        "every finished operation has exactly one terminal transition"
    );
    for id in &real_ops {
        assert_eq!(
            finished.get(&format!("operation:{id}")),
            Some(&1),
            "real operation {id}"
        );
    }
    let l = sh.ledger();
    let real_set: HashSet<i64> = real_ops.iter().copied().collect();
    eprintln!(
        "fault_coordinator_kill: {cycles} kills in {:.1} s; acknowledged before each kill \
         (reports, targets, operations, results) → verified after restart: {:?}; totals: {} reports, \
         {} target revisions, {} operations requested, {} results acknowledged; re-sent {} results and \
         {} requests (stored once); real daemons: {} operations, all ended once; lost: 0, duplicates: 0",
        started.elapsed().as_secs_f64(),
        acked_at_kills,
        l.reports_acked,
        l.targets.len(),
        l.creates.len(),
        l.results.len(),
        l.resent_results,
        l.resent_creates,
        real_set.len(),
    );
    assert!(l.reports_acked > 0 && !l.targets.is_empty() && !l.results.is_empty());
    drop(l);
    drop(daemons);
    server.kill();
}
