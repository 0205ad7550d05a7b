//! The coordinator link: registration, one WebSocket owned by one task, reports as deltas
//! against the state the coordinator acknowledged, target changes, and requested operations.
//!
//! Reconnects use exponential backoff with full jitter (1 s doubling to a 60 s cap, each wait
//! drawn uniformly below the bound) so a coordinator restart does not bring every endpoint
//! back at the same instant. While offline everything local keeps working; the current
//! state is reported on reconnect, and results of requested operations wait in the outbox.
//!
//! # Results of requested operations
//! Before a requested operation starts, a `started` row goes into the outbox holding the
//! result "interrupted by a daemon restart"; when the operation ends the row becomes the real
//! result (kind `result`). A daemon that dies in between finds the `started` row on its next
//! start and turns it into a `result` as it is, so the coordinator learns that the operation
//! was interrupted. Results are delivered over REST (`POST …/operations/{id}/result`), and a
//! row leaves the outbox only once the coordinator answered: stored, or already finished
//! (a result re-sent after a lost answer is refused by the operation's state machine, so it
//! is stored exactly once). On every connection the daemon also lists its own operations and
//! picks up a pending one it never received, or marks interrupted one it has no trace of.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::protocol::{ErrorCode, LinkState, Outcome};
use super::service::{ActionError, Daemon, keys, now};
use crate::proto::{
    API_PREFIX, ApiError, EndpointMsg, OperationKind, OperationResult, OperationState,
    PROTOCOL_VERSION, RegisterRequest, RegisterResponse, ReportAck, ServerMsg, SetTargetRequest,
    StateReport, TargetInfo,
};
use crate::snapshot::{Snapshot, SnapshotHash};

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// The wait before reconnect attempt `attempt` (0-based): uniform in [0, min(cap, base·2^n)].
pub fn backoff(attempt: u32, random: u64) -> Duration {
    let bound = BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP);
    let millis = bound.as_millis() as u64;
    Duration::from_millis(if millis == 0 {
        0
    } else {
        random % (millis + 1)
    })
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap_or_default();
    u64::from_le_bytes(b)
}

/// The configured coordinator URL without a trailing `/` and with its scheme in lower case
/// (`HTTPS://host` works for REST but would not map to `wss://`).
fn coordinator_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
        None => url.to_owned(),
    }
}

/// The largest answer read from the coordinator (a snapshot of 100,000 packages is about
/// 10 MB): a broken or hostile coordinator cannot make the daemon buffer without bound.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A response body, refused past `max` bytes.
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, CallError> {
    let too_big = || {
        CallError::Api(ApiError {
            code: "bad_response".into(),
            message: format!(
                "the coordinator sent an answer larger than {} MiB: check that coordinator_url names a pacpool coordinator",
                max >> 20
            ),
            detail: None,
        })
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CallError::Unreachable(connect_error(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error as the coordinator sent it, made safe for the journal, the status and the
/// terminals that show them: control characters (escape sequences, line breaks) escaped.
fn from_coordinator(mut e: ApiError) -> ApiError {
    e.code = crate::display::clean(&e.code);
    e.message = crate::display::clean(&e.message);
    e
}

/// Where and how to reach the coordinator.
struct Endpoint {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Endpoint {
    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn ws_url(&self) -> String {
        let ws = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        format!("{ws}{API_PREFIX}/endpoints/ws")
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(connect_error(&e)))?;
        let status = resp.status();
        let body = read_capped(resp, MAX_RESPONSE).await?;
        if status.is_success() {
            // `204 No Content` reads as JSON `null` (e.g. for `()`).
            let body: &[u8] = if body.is_empty() { b"null" } else { &body };
            serde_json::from_slice(body).map_err(|e| {
                CallError::Api(ApiError {
                    code: "bad_response".into(),
                    message: format!("the coordinator sent an unreadable answer: {e}"),
                    detail: None,
                })
            })
        } else {
            Err(CallError::Api(from_coordinator(
                serde_json::from_slice(&body).unwrap_or(ApiError {
                    code: status.as_str().into(),
                    message: format!(
                        "the coordinator answered {status}: {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    ),
                    detail: None,
                }),
            )))
        }
    }

    /// Fetches a target revision's manifest; `None` when the coordinator has none (an older
    /// coordinator or endpoint) or sends one that does not validate. A manifest only adds
    /// checks (see [`crate::manifest`]), so going without one is safe.
    async fn fetch_manifest(&self, target: &TargetInfo) -> Option<crate::manifest::Manifest> {
        let path = format!(
            "/pools/{}/targets/{}/manifest",
            target.pool_id, target.revision
        );
        let result: Result<crate::manifest::Manifest, CallError> =
            self.call(self.http.get(self.url(&path))).await;
        match result {
            Ok(m) => match m.validate() {
                Ok(()) => Some(m),
                Err(e) => {
                    tracing::warn!(
                        revision = target.revision,
                        "ignoring the target's manifest: {e}"
                    );
                    None
                }
            },
            Err(e) => {
                tracing::debug!(revision = target.revision, error = ?e, "no manifest for the target");
                None
            }
        }
    }

    /// Fetches a snapshot (canonical text) and checks it against its hash; one of more than
    /// `max_packages` packages is refused before it is decoded.
    async fn fetch_snapshot(
        &self,
        hash: &SnapshotHash,
        max_packages: usize,
    ) -> Result<Snapshot, CallError> {
        let resp = self
            .http
            .get(self.url(&format!("/snapshots/{hash}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(connect_error(&e)))?;
        let status = resp.status();
        let body = read_capped(resp, MAX_RESPONSE).await?;
        let body = String::from_utf8(body).map_err(|_| {
            CallError::Api(ApiError {
                code: "bad_response".into(),
                message: "the coordinator sent a snapshot that is not UTF-8".into(),
                detail: None,
            })
        })?;
        let bad = |message: String| {
            CallError::Api(ApiError {
                code: "bad_response".into(),
                message,
                detail: None,
            })
        };
        if !status.is_success() {
            return Err(match serde_json::from_str::<ApiError>(&body) {
                Ok(e) => CallError::Api(from_coordinator(e)),
                Err(_) => bad(format!(
                    "the coordinator answered {status} for snapshot {}",
                    hash.short()
                )),
            });
        }
        // One line per package after the header.
        let packages = body.lines().count().saturating_sub(1);
        if packages > max_packages {
            return Err(bad(too_many_packages(packages, max_packages)));
        }
        let snap = Snapshot::decode(&body)
            .map_err(|e| bad(format!("the coordinator sent an unreadable snapshot: {e}")))?;
        if snap.hash() != *hash {
            return Err(bad(format!(
                "the coordinator sent a snapshot that does not match {}",
                hash.short()
            )));
        }
        Ok(snap)
    }
}

#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Api(ApiError),
}

impl From<CallError> for ActionError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(m) => ActionError::new(
                ErrorCode::Offline,
                format!("the coordinator is unreachable ({m}): try again when it is back"),
            ),
            CallError::Api(a) if a.code == "revision_conflict" => {
                ActionError::new(ErrorCode::Conflict, a.message)
            }
            CallError::Api(a) if a.code == "forbidden" => ActionError::new(
                ErrorCode::Refused,
                format!("the coordinator refused: {}", a.message),
            ),
            CallError::Api(a) => ActionError::new(
                ErrorCode::Internal,
                format!("the coordinator refused: {} ({})", a.message, a.code),
            ),
        }
    }
}

/// How a pacpoold admin gives the coordinator's CA (for certificate error messages).
const CA_HINT: &str = "coordinator_ca_file in pacpoold.toml";

/// The TLS client configuration when the coordinator URL is `https://` (system trust store
/// plus `coordinator_ca_file`); `None` for plain `http://`.
fn coordinator_tls(
    config: &super::config::DaemonConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let https = config
        .coordinator_url
        .as_deref()
        .is_some_and(|u| u.trim_start().to_ascii_lowercase().starts_with("https://"));
    if !https {
        return Ok(None);
    }
    crate::tls::client_config(config.coordinator_ca_file.as_deref())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A failed request or connection to the coordinator, in one line (with what to do about a
/// certificate the daemon does not trust).
fn connect_error(e: &(dyn std::error::Error + 'static)) -> String {
    crate::tls::connect_error_text(e, CA_HINT)
}

fn http_client(config: &super::config::DaemonConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("pacpoold/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = coordinator_tls(config)? {
        builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&tls));
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {}", connect_error(&e)))
}

/// The stored endpoint token, if registered.
/// Largest manifest sent with set-latest (the coordinator's default request limit is 8 MiB).
const MAX_MANIFEST_JSON: usize = 6 << 20;

/// A manifest small enough to send: signatures go first when it is too large (each endpoint
/// then needs `FILE.sig` from its mirror or cache, as without a manifest).
fn fit_manifest(mut m: crate::manifest::Manifest) -> crate::manifest::Manifest {
    let size = serde_json::to_vec(&m).map_or(0, |j| j.len());
    if size > MAX_MANIFEST_JSON {
        tracing::warn!(
            bytes = size,
            "the target's manifest is too large to send whole; sending it without signatures"
        );
        for e in &mut m.entries {
            e.signature = None;
        }
    }
    m
}

/// Uploads the package files of revision `revision` that the pool repository lacks and
/// cannot fetch itself, from this machine's cache, one at a time. Failures are logged: a
/// member that cannot get a file from the pool repository falls back to the archive.
async fn upload_missing(
    ep: &Endpoint,
    pool_id: i64,
    revision: u64,
    availability: &crate::plan::Availability,
) {
    let path = format!("/pools/{pool_id}/repo/{revision}");
    let missing: Vec<String> = match ep.call(ep.http.get(ep.url(&path))).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = ?e, "pool repository: cannot list missing files");
            return;
        }
    };
    let mut sent = 0usize;
    for file in missing {
        let Some((name, version, _)) = crate::cache::parse_package_filename(&file) else {
            continue;
        };
        let Some(local) = availability.cached(&name, &version) else {
            continue;
        };
        if local.file_name().and_then(|f| f.to_str()) != Some(file.as_str()) {
            continue;
        }
        let body = match tokio::fs::File::open(local).await {
            Ok(f) => reqwest::Body::wrap_stream(tokio_util_stream(f)),
            Err(e) => {
                tracing::warn!(
                    file,
                    "pool repository: cannot read {}: {e}",
                    local.display()
                );
                continue;
            }
        };
        let url = ep.url(&format!("{path}/{file}"));
        match ep
            .http
            .put(url)
            .bearer_auth(&ep.token)
            .timeout(Duration::from_secs(3600))
            .body(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => sent += 1,
            Ok(r) => {
                tracing::warn!(file, status = %r.status(), "pool repository refused an upload")
            }
            Err(e) => tracing::warn!(file, "pool repository upload failed: {}", connect_error(&e)),
        }
    }
    if sent > 0 {
        tracing::info!(sent, revision, "pool repository: uploaded files it lacked");
    }
}

/// A file as a stream of chunks, for streaming uploads without reading it whole.
fn tokio_util_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// The pool target's repository on the coordinator (`…/pools/ID/repo/REVISION`) and this
/// endpoint's token for it, when the daemon is registered and knows a target.
pub(crate) fn pool_repo(daemon: &Daemon) -> Option<(String, String)> {
    let base = coordinator_base(daemon.config().coordinator_url.as_deref()?);
    let target = daemon.target_info()?;
    let token = read_token(daemon)?;
    Some((
        format!(
            "{base}{API_PREFIX}/pools/{}/repo/{}",
            target.pool_id, target.revision
        ),
        token,
    ))
}

fn read_token(daemon: &Daemon) -> Option<String> {
    std::fs::read_to_string(daemon.config().token_path())
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Writes the endpoint token with mode 0600, replacing any old one atomically.
fn write_token(daemon: &Daemon, token: &str) -> std::io::Result<()> {
    let path = daemon.config().token_path();
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Registers with the join token if there is no endpoint token yet.
async fn ensure_registered(daemon: &Daemon, base: &str) -> Result<Endpoint, String> {
    let http = http_client(daemon.config())?;
    if let Some(token) = read_token(daemon) {
        return Ok(Endpoint {
            base: base.to_owned(),
            token,
            http,
        });
    }
    let Some(join) = daemon.config().join_token.clone() else {
        return Err(
            "not registered: set join_token in pacpoold.toml (ask the pool admin for one)".into(),
        );
    };
    let name = daemon.config().name.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    let resp = http
        .post(format!("{base}{API_PREFIX}/register"))
        .json(&RegisterRequest {
            join_token: join,
            name,
        })
        .send()
        .await
        .map_err(|e| {
            format!(
                "registration failed, coordinator unreachable: {}",
                connect_error(&e)
            )
        })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<ApiError>(&body)
            .map(|e| from_coordinator(e).message)
            .unwrap_or_else(|_| status.to_string());
        return Err(format!("registration refused: {msg}"));
    }
    let reg: RegisterResponse = serde_json::from_slice(&body)
        .map_err(|e| format!("unreadable registration answer: {e}"))?;
    write_token(daemon, &reg.endpoint_token)
        .map_err(|e| format!("cannot store the endpoint token: {e}"))?;
    let _ = daemon
        .store()
        .set(keys::ENDPOINT_ID, &reg.endpoint_id.to_string());
    daemon.set_identity(&reg.name, &reg.pool_name);
    tracing::info!(endpoint = reg.endpoint_id, name = %reg.name, pool = %reg.pool_name, "registered with the coordinator");
    Ok(Endpoint {
        base: base.to_owned(),
        token: reg.endpoint_token,
        http,
    })
}

/// The link task: registers, then keeps a WebSocket session up until `stop`.
pub async fn run(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    // No requested operation runs yet in this process: every `started` row is left over
    // from a daemon that stopped while running it.
    promote_interrupted(&daemon);
    let Some(base) = daemon
        .config()
        .coordinator_url
        .clone()
        .map(|u| coordinator_base(&u))
    else {
        daemon.set_link_state(LinkState::NotConfigured);
        return;
    };
    let mut attempt = 0u32;
    let endpoint = loop {
        match ensure_registered(&daemon, &base).await {
            Ok(e) => break e,
            Err(why) => {
                tracing::warn!("{why}");
                daemon.set_link_state(LinkState::Unregistered);
                let wait = backoff(attempt, random_u64());
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let endpoint = Arc::new(endpoint);
    tokio::spawn(deliver_results(
        daemon.clone(),
        endpoint.clone(),
        stop.clone(),
    ));
    let mut attempt = 0u32;
    loop {
        daemon.set_link_state(LinkState::Connecting);
        let started = tokio::time::Instant::now();
        match session(&daemon, &endpoint, &mut stop).await {
            SessionEnd::Stopped => return,
            SessionEnd::Lost { was_up, why } => {
                tracing::warn!(%why, "coordinator connection lost");
                // Back to short waits only after a session that lasted: a coordinator that
                // welcomes and then drops every connection must not be hammered.
                if was_up && started.elapsed() > STABLE_SESSION {
                    attempt = 0;
                }
            }
        }
        daemon.set_link_state(LinkState::Offline);
        let wait = backoff(attempt, random_u64());
        attempt = attempt.saturating_add(1);
        tracing::debug!(
            ?wait,
            attempt,
            "reconnecting to the coordinator after a pause"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A session up this long counts as stable: the next reconnect starts with a short wait.
const STABLE_SESSION: Duration = Duration::from_secs(60);

enum SessionEnd {
    Stopped,
    Lost { was_up: bool, why: String },
}

fn lost(was_up: bool, why: impl std::fmt::Display) -> SessionEnd {
    SessionEnd::Lost {
        was_up,
        why: why.to_string(),
    }
}

/// The report that brings the coordinator from `known` to our current state.
fn report_for(daemon: &Daemon, known: Option<SnapshotHash>) -> Option<StateReport> {
    let current = daemon.current_snapshot()?;
    if known == Some(current.hash()) {
        return None;
    }
    let base = known.and_then(|h| daemon.store().snapshot(&h).ok().flatten());
    Some(match base {
        Some(base) => StateReport::Delta {
            delta: base.diff(&current),
        },
        None => StateReport::Full { snapshot: current },
    })
}

/// Reports the current state if the coordinator does not have it: a delta over the socket
/// (its `ReportAck` arrives there), a full state over REST — a WebSocket that once carries a
/// 150 KB message keeps a read buffer that large on both ends for its lifetime, which is
/// 1.5 GB at a coordinator with 10,000 endpoints. After a full state the coordinator's answer
/// is taken at once, and a delta follows if the state moved on meanwhile. A full state the
/// coordinator did not take is not a reason to drop the socket (thousands of endpoints
/// reconnecting and re-uploading at once would follow): `Ok(false)` says "try again later".
async fn report_now(
    daemon: &Daemon,
    endpoint: &Endpoint,
    ws: &mut (impl SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin),
    known: &mut Option<SnapshotHash>,
    send_timeout: Duration,
) -> Result<bool, String> {
    for _ in 0..2 {
        match report_for(daemon, *known) {
            None => return Ok(true),
            Some(report @ StateReport::Delta { .. }) => {
                let source = daemon.current_source();
                send_within(
                    ws,
                    encode(&EndpointMsg::Report { report, source }),
                    send_timeout,
                )
                .await?;
                return Ok(true);
            }
            Some(full) => {
                let sent: Result<ReportAck, CallError> = endpoint
                    .call(endpoint.http.post(endpoint.url("/endpoint/report")).json(
                        &crate::proto::ReportRequest {
                            report: full,
                            source: daemon.current_source(),
                        },
                    ))
                    .await;
                let ack = match sent {
                    Ok(ack) => ack,
                    Err(e) => {
                        let why = match e {
                            CallError::Unreachable(m) => m,
                            CallError::Api(a) => a.message,
                        };
                        tracing::warn!(%why, "cannot report our state; trying again at the next heartbeat");
                        return Ok(false);
                    }
                };
                let ReportAck::Accepted { state } = ack else {
                    return Ok(true);
                };
                *known = Some(state);
                let _ = daemon.store().set(keys::ACKED_STATE, &state.to_hex());
            }
        }
    }
    Ok(true)
}

/// Sends one message, giving up after `limit`: with a partition and a full TCP send buffer a
/// send would otherwise wait until TCP gives up (many minutes), and nothing else in the
/// session loop (the liveness check included) would run meanwhile.
async fn send_within(
    ws: &mut (impl SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin),
    msg: Message,
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, ws.send(msg)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the coordinator took more than {} s to take a message",
            limit.as_secs()
        )),
    }
}

fn encode(msg: &EndpointMsg) -> Message {
    Message::text(serde_json::to_string(msg).expect("messages serialize"))
}

async fn session(
    daemon: &Arc<Daemon>,
    endpoint: &Arc<Endpoint>,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let mut request = match endpoint.ws_url().into_client_request() {
        Ok(r) => r,
        Err(e) => return lost(false, format!("bad coordinator URL: {e}")),
    };
    let auth = format!("Bearer {}", endpoint.token);
    match auth.parse() {
        Ok(v) => {
            request.headers_mut().insert("authorization", v);
        }
        Err(_) => {
            return lost(
                false,
                "the stored endpoint token is not a valid header value",
            );
        }
    }
    let connector = match coordinator_tls(daemon.config()) {
        Ok(tls) => tls.map(tokio_tungstenite::Connector::Rustls),
        Err(e) => return lost(false, e),
    };
    // Liveness: a heartbeat (and a WebSocket ping) every `beat`; a connection that brings
    // nothing back for `patience` is dead (a partition leaves TCP silent for many minutes).
    let beat = daemon.config().heartbeat_interval();
    let patience = beat * 3;
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
    let ws = tokio::select! {
        r = tokio::time::timeout(patience.max(Duration::from_secs(5)), connect) => r,
        _ = stop.changed() => return SessionEnd::Stopped,
    };
    let (mut ws, _) = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return lost(false, connect_error(&e)),
        Err(_) => {
            return lost(
                false,
                "the coordinator did not answer the connection in time",
            );
        }
    };
    let acked: Option<SnapshotHash> = daemon
        .store()
        .get(keys::ACKED_STATE)
        .ok()
        .flatten()
        .and_then(|h| h.parse().ok());
    let hello = EndpointMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent: concat!("pacpoold/", env!("CARGO_PKG_VERSION")).into(),
        acked_state: acked,
    };
    if let Err(e) = ws.send(encode(&hello)).await {
        return lost(false, e);
    }
    let mut known: Option<SnapshotHash> = None;
    let mut welcomed = false;
    let mut heartbeat = tokio::time::interval(beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_heard = tokio::time::Instant::now();
    let (results_tx, mut results_rx) = mpsc::unbounded_channel::<EndpointMsg>();
    // A full state the coordinator did not take yet (retried at every heartbeat).
    let mut report_retry = false;
    loop {
        // Biased: frames that already arrived (a pong among them) are read before the
        // liveness check in the heartbeat arm can count them missing.
        tokio::select! {
            biased;
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return SessionEnd::Stopped;
            }
            frame = ws.next() => {
                last_heard = tokio::time::Instant::now();
                let text = match frame {
                    None => return lost(welcomed, "the coordinator closed the connection"),
                    Some(Err(e)) => return lost(welcomed, e),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return lost(welcomed, "the coordinator closed the connection"),
                    Some(Ok(_)) => continue,
                };
                let msg: ServerMsg = match serde_json::from_str(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring an unreadable message from the coordinator");
                        continue;
                    }
                };
                match msg {
                    ServerMsg::Welcome { target, known_state, policy, pool_endpoints, rollout, .. } => {
                        welcomed = true;
                        known = known_state;
                        daemon.set_pool_endpoints(pool_endpoints);
                        daemon.set_rollout(rollout);
                        if let Some(policy) = policy {
                            daemon.set_pool_policy(policy);
                        }
                        daemon.set_link_state(LinkState::Connected);
                        daemon.outbox_changed.notify_one();
                        // The target first: a pending "sync to latest" must see the newest.
                        if let Some(t) = target {
                            adopt_target(daemon, endpoint, t).await;
                            let d = daemon.clone();
                            tokio::spawn(async move { d.prefetch_target().await });
                        }
                        tokio::spawn(reconcile_operations(
                            daemon.clone(),
                            endpoint.clone(),
                            results_tx.clone(),
                        ));
                        match report_now(daemon, endpoint, &mut ws, &mut known, patience).await {
                            Ok(done) => report_retry = !done,
                            Err(e) => return lost(true, e),
                        }
                    }
                    ServerMsg::ReportAck { ack } => match ack {
                        ReportAck::Accepted { state } => {
                            known = Some(state);
                            let _ = daemon.store().set(keys::ACKED_STATE, &state.to_hex());
                            // Our state may have moved on while the report travelled.
                            match report_now(daemon, endpoint, &mut ws, &mut known, patience).await {
                                Ok(done) => report_retry = !done,
                                Err(e) => return lost(true, e),
                            }
                        }
                        ReportAck::NeedFull { known: k } => {
                            tracing::debug!(coordinator_has = ?k, "the coordinator needs our full state");
                            // Full, whatever it has: a delta on its base just failed.
                            known = None;
                            match report_now(daemon, endpoint, &mut ws, &mut known, patience).await {
                                Ok(done) => report_retry = !done,
                                Err(e) => return lost(true, e),
                            }
                        }
                    },
                    ServerMsg::TargetChanged { target, .. } => {
                        adopt_target(daemon, endpoint, target).await;
                        let d = daemon.clone();
                        tokio::spawn(async move { d.maybe_auto_sync("target changed").await });
                        let d = daemon.clone();
                        tokio::spawn(async move { d.prefetch_target().await });
                    }
                    ServerMsg::OperationRequested { operation } => {
                        let d = daemon.clone();
                        let tx = results_tx.clone();
                        let e = endpoint.clone();
                        tokio::spawn(async move { run_requested(d, e, operation, tx).await });
                    }
                    ServerMsg::CancelRequested { .. } => {
                        let _ = daemon.cancel();
                    }
                    ServerMsg::PolicyChanged { policy } => daemon.set_pool_policy(policy),
                    ServerMsg::RolloutChanged { .. } => {
                        // Our own offer: which target we may have now, and our wave. Every
                        // endpoint of the pool asks at once: spread over up to a second (a
                        // sync the coordinator starts fetches the offer itself first).
                        let (d, e) = (daemon.clone(), endpoint.clone());
                        let spread = Duration::from_millis(random_u64() % OFFER_SPREAD_MS);
                        tokio::spawn(async move {
                            tokio::time::sleep(spread).await;
                            if refresh_offer(&d, &e).await {
                                d.maybe_auto_sync("rollout changed").await;
                            }
                        });
                    }
                    ServerMsg::Error { error } => {
                        let error = from_coordinator(error);
                        tracing::warn!(code = %error.code, message = %error.message, "the coordinator reported an error");
                        if error.code == "protocol_mismatch" || error.code == "unauthorized" {
                            return lost(false, error.message);
                        }
                    }
                    ServerMsg::EndpointStatusChanged { .. } | ServerMsg::OperationUpdated { .. } => {}
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > patience {
                    return lost(
                        welcomed,
                        format!("no answer from the coordinator for {} s", patience.as_secs()),
                    );
                }
                if welcomed && let Err(e) = send_within(&mut ws, encode(&EndpointMsg::Heartbeat), patience).await {
                    return lost(true, e);
                }
                if let Err(e) = send_within(&mut ws, Message::Ping(Default::default()), patience).await {
                    return lost(welcomed, e);
                }
                if welcomed && report_retry {
                    match report_now(daemon, endpoint, &mut ws, &mut known, patience).await {
                        Ok(done) => report_retry = !done,
                        Err(e) => return lost(true, e),
                    }
                }
            }
            _ = daemon.state_changed.notified(), if welcomed => {
                match report_now(daemon, endpoint, &mut ws, &mut known, patience).await {
                    Ok(done) => report_retry = !done,
                    Err(e) => return lost(true, e),
                }
            }
            Some(msg) = results_rx.recv() => {
                // Progress only: results travel through the outbox.
                if let Err(e) = send_within(&mut ws, encode(&msg), patience).await {
                    return lost(true, e);
                }
            }
        }
    }
}

/// Why a pool target is refused for its size.
fn too_many_packages(packages: usize, max: usize) -> String {
    format!(
        "the pool target holds {packages} packages, more than this machine accepts ({max}): \
         it was not adopted; if the pool really is that large, raise max_packages in \
         pacpoold.toml, else set a real machine's state as the pool target"
    )
}

/// Fetches and stores a new pool target unless we already have it.
async fn adopt_target(daemon: &Daemon, endpoint: &Endpoint, target: TargetInfo) {
    if daemon.target_info().as_ref() == Some(&target) {
        return;
    }
    let max = daemon.config().max_packages;
    // Said by the coordinator before the snapshot is fetched; the fetch checks it again.
    if target.package_count > max as u64 {
        let why = too_many_packages(target.package_count as usize, max);
        tracing::warn!(revision = target.revision, "{why}");
        daemon.note_error(why);
        return;
    }
    match endpoint.fetch_snapshot(&target.snapshot, max).await {
        Ok(snap) => {
            let revision = target.revision;
            let manifest = endpoint.fetch_manifest(&target).await;
            match daemon.set_target(target, snap, manifest) {
                Ok(summary) => {
                    tracing::info!(revision, changes = summary.total(), "new pool target")
                }
                Err(e) => tracing::warn!(error = %e, "cannot store the pool target"),
            }
        }
        Err(e) => tracing::warn!(error = ?e, "cannot fetch the pool target's snapshot"),
    }
}

/// Longest wait before asking for the offer after `RolloutChanged` (see there).
const OFFER_SPREAD_MS: u64 = 1000;

/// Asks the coordinator which target this endpoint is offered (pools with rollout rings)
/// and adopts it; `false` when the coordinator could not be asked.
async fn refresh_offer(daemon: &Daemon, endpoint: &Endpoint) -> bool {
    let offer: crate::proto::Offer = match endpoint
        .call(endpoint.http.get(endpoint.url("/endpoint/offer")))
        .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = ?e, "cannot ask the coordinator for this endpoint's offered target");
            return false;
        }
    };
    if let Some(t) = offer.target {
        adopt_target(daemon, endpoint, t).await;
    }
    daemon.set_rollout(offer.rollout);
    true
}

/// The machine's own user puts it on hold (`until` Unix seconds), when its pool allows;
/// `None` lifts a hold it set. The status shows the result at once.
pub async fn hold(daemon: &Daemon, hold: Option<(i64, String)>) -> Result<(), ActionError> {
    let endpoint = endpoint_for(daemon)?;
    let url = endpoint.url("/endpoint/hold");
    match hold {
        Some((until, reason)) => {
            let body = crate::proto::SetHold { reason, until };
            endpoint
                .call::<crate::proto::Hold>(endpoint.http.post(url).json(&body))
                .await?;
        }
        None => endpoint.call::<()>(endpoint.http.delete(url)).await?,
    }
    refresh_offer(daemon, &endpoint).await;
    Ok(())
}

/// What a requested operation reports when the daemon stopped while running it.
const INTERRUPTED: &str = "interrupted: pacpoold stopped (killed, crashed or the machine went down) while this operation ran; a pacman transaction already started was left to finish, and the state pacpoold reported after its restart is what pacman recorded: check the endpoint's status and request the operation again if it is still needed";

fn result_body(operation: i64, result: OperationResult) -> String {
    serde_json::to_string(&EndpointMsg::Result { operation, result }).expect("messages serialize")
}

fn interrupted_result() -> OperationResult {
    OperationResult {
        state: OperationState::Failed,
        message: INTERRUPTED.into(),
        failures: Vec::new(),
        snapshot: None,
    }
}

/// Runs an operation the coordinator asked for, sends its progress over the socket and queues
/// its result in the outbox. An operation already seen by this process is not run twice.
async fn run_requested(
    daemon: Arc<Daemon>,
    endpoint: Arc<Endpoint>,
    operation: crate::proto::Operation,
    tx: mpsc::UnboundedSender<EndpointMsg>,
) {
    let id = operation.id;
    if !daemon.claim_requested(id) {
        tracing::debug!(
            operation = id,
            "operation already taken; not running it twice"
        );
        return;
    }
    // Refused at once, with nothing stored, while another operation runs or when results
    // already wait undelivered: requests sent faster than they can run cost no disk. The
    // count and the marker are one step under the store's lock, so a burst cannot overshoot.
    let marker = if daemon.operation_running() {
        Err("another operation is running on this machine: request it again when it ends")
    } else {
        let store = daemon.store();
        match store.outbox_len() {
            Ok(n) if n >= OUTBOX_RESULTS_MAX => Err(
                "this machine has too many undelivered results queued: request it again later",
            ),
            // The marker: if the daemon dies before the end, this is the result sent after
            // restart.
            _ => Ok(store
                .outbox_push("started", &result_body(id, interrupted_result()), now())
                .inspect_err(|e| {
                    tracing::error!(operation = id, error = %e, "cannot record the start of a requested operation");
                })
                .ok()),
        }
    };
    let marker = match marker {
        Ok(m) => m,
        Err(why) => {
            tracing::info!(operation = id, "refused a requested operation: {why}");
            let _ = tx.send(EndpointMsg::Result {
                operation: id,
                result: OperationResult {
                    state: OperationState::Failed,
                    message: why.into(),
                    failures: Vec::new(),
                    snapshot: None,
                },
            });
            return;
        }
    };
    let progress_tx = tx.clone();
    let progress = move |progress| {
        let _ = progress_tx.send(EndpointMsg::Progress {
            operation: id,
            progress,
        });
    };
    // A sync offered a revision we do not have yet (the rollout moved while the message
    // travelled): adopt it first, so the sync goes exactly where the coordinator counts it.
    if let Some(wanted) = operation.target_revision
        && daemon.target_info().map(|t| t.revision) != Some(wanted)
    {
        refresh_offer(&daemon, &endpoint).await;
    }
    let to = operation.to_snapshot.map(|h| h.to_hex());
    let result = match operation.kind {
        OperationKind::SyncToLatest => daemon.sync(false, Some(id), progress).await,
        OperationKind::Revert => {
            daemon
                .revert(to.as_deref(), false, Some(id), progress)
                .await
        }
        // An administrator asked for it explicitly: no local confirmation to check.
        OperationKind::SetAsLatest => set_latest(&daemon, &SetLatestOptions::requested()).await,
    };
    let body = result_body(id, to_result(result));
    let stored = {
        let store = daemon.store();
        match marker {
            Some(m) => store.outbox_update(m, "result", &body),
            None => store.outbox_push("result", &body, now()).map(drop),
        }
    };
    if let Err(e) = stored {
        tracing::error!(operation = id, error = %e, "cannot queue an operation's result; the coordinator will see it as interrupted or running");
    }
    daemon.outbox_changed.notify_one();
}

/// Above this many queued messages, requested operations are refused without being stored.
const OUTBOX_RESULTS_MAX: usize = 256;

/// The largest result message sent, and the most failures (each reason bounded too): the
/// coordinator refuses results over 64 KiB, and a refused result could never be delivered.
const RESULT_MESSAGE_MAX: usize = 16 * 1024;
const RESULT_FAILURES_MAX: usize = 1000;
const FAILURE_REASON_MAX: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn to_result(r: Result<Outcome, ActionError>) -> OperationResult {
    let mut result = unbounded_result(r);
    result.message = bounded(std::mem::take(&mut result.message), RESULT_MESSAGE_MAX);
    let more = result.failures.len().saturating_sub(RESULT_FAILURES_MAX);
    result.failures.truncate(RESULT_FAILURES_MAX);
    for f in &mut result.failures {
        f.reason = bounded(std::mem::take(&mut f.reason), FAILURE_REASON_MAX);
    }
    if more > 0 {
        result.message = bounded(
            format!(
                "{} ({} not listed)",
                result.message,
                crate::words::count(more, "more package failure", "more package failures")
            ),
            RESULT_MESSAGE_MAX,
        );
    }
    result
}

fn unbounded_result(r: Result<Outcome, ActionError>) -> OperationResult {
    match r {
        Ok(o) => OperationResult {
            state: if o.ok {
                OperationState::Completed
            } else {
                OperationState::Failed
            },
            message: o.message,
            failures: o.failures,
            snapshot: o.snapshot,
        },
        Err(e) => OperationResult {
            state: if e.code == ErrorCode::Cancelled {
                OperationState::Cancelled
            } else {
                OperationState::Failed
            },
            message: e.message,
            failures: Vec::new(),
            snapshot: None,
        },
    }
}

/// Turns `started` rows (operations a previous daemon did not finish) into results.
fn promote_interrupted(daemon: &Daemon) {
    let store = daemon.store();
    for item in store.outbox(10_000).unwrap_or_default() {
        if item.kind == "started" {
            tracing::warn!(
                id = item.id,
                "a requested operation was interrupted by a daemon stop; reporting it as failed"
            );
            if let Err(e) = store.outbox_update(item.id, "result", &item.body) {
                tracing::error!(error = %e, "cannot mark an interrupted operation");
            }
        }
    }
}

/// Operation ids named by the outbox's rows (queued results and running markers).
fn outbox_operations(daemon: &Daemon) -> std::collections::HashSet<i64> {
    daemon
        .store()
        .outbox(10_000)
        .unwrap_or_default()
        .iter()
        .filter_map(
            |item| match serde_json::from_str::<EndpointMsg>(&item.body) {
                Ok(EndpointMsg::Result { operation, .. }) => Some(operation),
                _ => None,
            },
        )
        .collect()
}

/// After a (re)connection: runs a pending operation of ours that never reached us (requested
/// while we were offline, or lost in a crash before its marker was written), and marks
/// interrupted an in-progress one we have no trace of.
async fn reconcile_operations(
    daemon: Arc<Daemon>,
    endpoint: Arc<Endpoint>,
    tx: mpsc::UnboundedSender<EndpointMsg>,
) {
    // At most one operation per endpoint is active: the newest few hold it.
    // What is queued here before asking: a result delivered (and removed) while the list
    // travels is then still known, so its operation is not run twice.
    let known = outbox_operations(&daemon);
    let page: crate::proto::Page<crate::proto::Operation> = match endpoint
        .call(
            endpoint
                .http
                .get(endpoint.url("/endpoint/operations?limit=20")),
        )
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = ?e, "cannot list this endpoint's operations");
            return;
        }
    };
    for op in page.items {
        if known.contains(&op.id) || daemon.requested_seen(op.id) {
            continue;
        }
        match op.state {
            OperationState::Pending => {
                tracing::info!(
                    operation = op.id,
                    "running a requested operation that did not reach us"
                );
                tokio::spawn(run_requested(
                    daemon.clone(),
                    endpoint.clone(),
                    op,
                    tx.clone(),
                ));
            }
            OperationState::InProgress if daemon.claim_requested(op.id) => {
                tracing::warn!(
                    operation = op.id,
                    "the coordinator shows an operation running that this daemon is not running; reporting it interrupted"
                );
                let pushed = daemon.store().outbox_push(
                    "result",
                    &result_body(op.id, interrupted_result()),
                    now(),
                );
                if let Err(e) = pushed {
                    tracing::error!(error = %e, "cannot queue an operation's result");
                }
                daemon.outbox_changed.notify_one();
            }
            _ => {}
        }
    }
}

/// Delivers queued results over REST until `stop`: on start, whenever a result is queued or a
/// connection comes up, and every 5 s while some are left.
async fn deliver_results(
    daemon: Arc<Daemon>,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let left = deliver_once(&daemon, &endpoint).await;
        let retry = async {
            if left {
                tokio::time::sleep(Duration::from_secs(5)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = daemon.outbox_changed.notified() => {}
            _ = retry => {}
            _ = stop.changed() => return,
        }
    }
}

/// One pass over the outbox; returns whether results are left to deliver.
async fn deliver_once(daemon: &Daemon, endpoint: &Endpoint) -> bool {
    let items = daemon.store().outbox(1000).unwrap_or_default();
    let mut left = false;
    for item in items.into_iter().filter(|i| i.kind == "result") {
        let (operation, result) = match serde_json::from_str::<EndpointMsg>(&item.body) {
            Ok(EndpointMsg::Result { operation, result }) => (operation, result),
            _ => {
                tracing::warn!(id = item.id, "dropping an unreadable queued message");
                let _ = daemon.store().outbox_done(item.id);
                continue;
            }
        };
        let url = endpoint.url(&format!("/endpoint/operations/{operation}/result"));
        let sent: Result<crate::proto::Operation, CallError> =
            endpoint.call(endpoint.http.post(&url).json(&result)).await;
        let done = match sent {
            Ok(_) => true,
            Err(CallError::Unreachable(why)) => {
                tracing::debug!(%why, "coordinator unreachable; results stay queued");
                return true;
            }
            Err(CallError::Api(e)) if e.code == "invalid_transition" => {
                let current = e.detail.as_ref().and_then(|d| {
                    serde_json::from_value::<crate::proto::Operation>(d.clone()).ok()
                });
                match current.map(|o| o.state) {
                    // Already finished: an earlier delivery whose answer was lost, or an
                    // admin's forced cancel. Stored once either way.
                    Some(s) if s.is_terminal() => true,
                    // Still pending (no progress arrived yet): move it on, then retry.
                    Some(OperationState::Pending) => {
                        let progress = crate::proto::Progress {
                            stage: "finishing".into(),
                            percent: 100,
                            current: None,
                        };
                        let url =
                            endpoint.url(&format!("/endpoint/operations/{operation}/progress"));
                        let _: Result<crate::proto::Operation, _> = endpoint
                            .call(endpoint.http.post(&url).json(&progress))
                            .await;
                        left = true;
                        false
                    }
                    _ => {
                        left = true;
                        false
                    }
                }
            }
            Err(CallError::Api(e))
                if matches!(
                    e.code.as_str(),
                    "not_found" | "forbidden" | "invalid_request"
                ) =>
            {
                tracing::warn!(operation, code = %e.code, message = %e.message, "the coordinator refused an operation result; dropping it");
                true
            }
            Err(CallError::Api(e)) => {
                tracing::debug!(operation, code = %e.code, "result not stored yet; retrying later");
                left = true;
                false
            }
        };
        if done {
            let _ = daemon.store().outbox_done(item.id);
        }
    }
    left
}

/// What the user confirmed for set-latest (from the local socket's `set-latest` request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetLatestOptions {
    /// The pool may go back (older versions, fewer packages).
    pub allow_older: bool,
    /// The state the confirmation showed; refused when the machine changed since.
    pub expect_state: Option<SnapshotHash>,
    /// The target revision the confirmation was computed against.
    pub expect_revision: Option<u64>,
}

impl SetLatestOptions {
    /// An operation an administrator requested through the coordinator.
    fn requested() -> Self {
        Self {
            allow_older: true,
            ..Self::default()
        }
    }
}

/// "Set as latest": report the current state, then make it the pool target if the target is
/// still the revision we know. On a lost race, say who won. Refused when the pool would go
/// back and `opts.allow_older` is not set, or when the state or target changed since the
/// confirmation.
pub async fn set_latest(daemon: &Daemon, opts: &SetLatestOptions) -> Result<Outcome, ActionError> {
    let _guard = daemon.begin("set-latest")?;
    let op = daemon
        .store()
        .operation_begin("set-latest", now())
        .map_err(|e| ActionError::new(ErrorCode::Internal, e.to_string()))?;
    let result = set_latest_checked(daemon, opts).await;
    // Recorded, and announced to subscribers (the tray), like sync and revert.
    daemon.finish(op, "set-latest", &result);
    result
}

/// What set-latest would do to the pool: the local part (what the pool loses) and every
/// other machine's status afterwards, computed by the coordinator. `fresh`: re-read pacman's
/// state in full first (for peers that may act, as for preview).
pub async fn set_latest_preview(
    daemon: &Daemon,
    fresh: bool,
) -> Result<super::protocol::SetLatestPreview, ActionError> {
    daemon
        .refresh("set-latest-preview", fresh)
        .await
        .map_err(|e| daemon.refresh_failed(e))?;
    let (snapshot, mut preview) = daemon.set_latest_local()?;
    match what_if(daemon, &snapshot).await {
        Ok(w) => preview.others = Some(w.endpoints),
        Err(e) => {
            tracing::debug!(error = %e, "set-latest preview without the coordinator's what-if");
            preview.others_error = Some(e.message);
        }
    }
    Ok(preview)
}

/// The coordinator's what-if for `snapshot`, reporting it first unless the coordinator has
/// already acknowledged it.
async fn what_if(
    daemon: &Daemon,
    snapshot: &Snapshot,
) -> Result<crate::proto::WhatIf, ActionError> {
    let endpoint = endpoint_for(daemon)?;
    let hash = snapshot.hash();
    let acked = daemon.store().get(keys::ACKED_STATE).ok().flatten();
    if acked.as_deref() != Some(hash.to_hex().as_str()) {
        report_full(daemon, &endpoint, snapshot).await?;
    }
    Ok(endpoint
        .call(
            endpoint
                .http
                .post(endpoint.url("/endpoint/what-if"))
                .json(&crate::proto::WhatIfRequest { snapshot: hash }),
        )
        .await?)
}

async fn report_full(
    daemon: &Daemon,
    endpoint: &Endpoint,
    snapshot: &Snapshot,
) -> Result<(), ActionError> {
    let ack: ReportAck = endpoint
        .call(
            endpoint.http.post(endpoint.url("/endpoint/report")).json(
                &crate::proto::ReportRequest {
                    report: StateReport::Full {
                        snapshot: snapshot.clone(),
                    },
                    source: daemon
                        .current_source()
                        .filter(|_| daemon.current_snapshot().as_ref() == Some(snapshot)),
                },
            ),
        )
        .await?;
    if let ReportAck::Accepted { state } = ack {
        let _ = daemon.store().set(keys::ACKED_STATE, &state.to_hex());
    }
    Ok(())
}

async fn set_latest_checked(
    daemon: &Daemon,
    opts: &SetLatestOptions,
) -> Result<Outcome, ActionError> {
    let endpoint = endpoint_for(daemon)?;
    set_latest_inner(daemon, &endpoint, opts).await
}

/// The coordinator connection for one request, or why there is none.
fn endpoint_for(daemon: &Daemon) -> Result<Endpoint, ActionError> {
    let Some(base) = daemon.config().coordinator_url.clone() else {
        return Err(ActionError::new(
            ErrorCode::Offline,
            "no coordinator configured: set coordinator_url in pacpoold.toml",
        ));
    };
    let base = coordinator_base(&base);
    let Some(token) = read_token(daemon) else {
        return Err(ActionError::new(
            ErrorCode::Offline,
            "not registered with the coordinator yet: check join_token and the daemon's log",
        ));
    };
    Ok(Endpoint {
        base,
        token,
        http: http_client(daemon.config()).map_err(|m| ActionError::new(ErrorCode::Offline, m))?,
    })
}

async fn set_latest_inner(
    daemon: &Daemon,
    endpoint: &Endpoint,
    opts: &SetLatestOptions,
) -> Result<Outcome, ActionError> {
    daemon
        .refresh("set-latest", true)
        .await
        .map_err(|e| ActionError::new(ErrorCode::Internal, format!("{e:#}")))?;
    let (snapshot, local) = daemon.set_latest_local()?;
    let hash = snapshot.hash();
    if let Some(seen) = opts.expect_state
        && seen != hash
    {
        return Err(ActionError::new(
            ErrorCode::Conflict,
            format!(
                "this machine's packages changed since the confirmation (it showed state {}, now {}): review `pacpool set-latest` again",
                seen.short(),
                hash.short()
            ),
        ));
    }
    if let Some(seen) = opts.expect_revision
        && Some(seen) != local.target_revision
    {
        return Err(ActionError::new(
            ErrorCode::Conflict,
            format!(
                "the pool target moved since the confirmation (it showed revision {seen}, now {}): review `pacpool set-latest` again",
                local
                    .target_revision
                    .map_or("none".into(), |r| r.to_string())
            ),
        ));
    }
    if !opts.allow_older
        && let Some(line) = local.loss_line(5)
    {
        return Err(ActionError::new(
            ErrorCode::NeedsConfirmation,
            format!(
                "{line}; run `pacpool sync` first to keep them, or `pacpool set-latest --allow-older` to make this state the target anyway"
            ),
        ));
    }
    report_full(daemon, endpoint, &snapshot).await?;
    let expected = daemon.target_info().map_or(0, |t| t.revision);
    let manifest = daemon
        .record_manifest()
        .await
        .filter(|m| m.validate().is_ok())
        .map(fit_manifest);
    let result: Result<TargetInfo, CallError> = endpoint
        .call(
            endpoint
                .http
                .post(endpoint.url("/endpoint/target"))
                .json(&SetTargetRequest {
                    expected_revision: expected,
                    snapshot: hash,
                    manifest: manifest.clone(),
                }),
        )
        .await;
    match result {
        Ok(info) => {
            let revision = info.revision;
            let pool_id = info.pool_id;
            daemon.set_target(info, snapshot.clone(), manifest)?;
            // The files the pool repository cannot fetch itself go up in the background.
            let (base, token, http) = (
                endpoint.base.clone(),
                endpoint.token.clone(),
                endpoint.http.clone(),
            );
            let availability = daemon.availability();
            tokio::spawn(async move {
                let ep = Endpoint { base, token, http };
                if let Some(a) = availability {
                    upload_missing(&ep, pool_id, revision, &a).await;
                }
            });
            Ok(Outcome {
                kind: "set-latest".into(),
                ok: true,
                message: format!(
                    "this machine's {} are now the pool target (revision {revision})",
                    crate::words::packages(snapshot.len())
                ),
                counts: Default::default(),
                failures: Vec::new(),
                snapshot: Some(hash),
                ..Default::default()
            })
        }
        Err(CallError::Api(e)) if e.code == "revision_conflict" => {
            let winner: Option<TargetInfo> = e
                .detail
                .as_ref()
                .and_then(|d| serde_json::from_value(d.get("current").unwrap_or(d).clone()).ok());
            let mut message = format!(
                "the pool target moved while you were deciding: {}",
                e.message
            );
            if let Some(w) = winner {
                message = format!(
                    "the pool target moved: revision {} was set by {} (you expected revision {expected}); review `pacpool preview` and try again",
                    w.revision, w.set_by
                );
                let winner_manifest = endpoint.fetch_manifest(&w).await;
                if let Ok(snap) = endpoint
                    .fetch_snapshot(&w.snapshot, daemon.config().max_packages)
                    .await
                    && daemon.set_target(w, snap, winner_manifest).is_ok()
                {
                    let counts = daemon.status(true, None).counts;
                    message.push_str(&format!("; syncing to it would make {}", counts.summary()));
                }
            }
            Err(ActionError::new(ErrorCode::Conflict, message))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_urls_are_normalised() {
        assert_eq!(
            coordinator_base("HTTPS://Coord.lan:7300/"),
            "https://Coord.lan:7300"
        );
        assert_eq!(
            coordinator_base("http://127.0.0.1:7300"),
            "http://127.0.0.1:7300"
        );
    }

    #[test]
    fn results_fit_what_the_coordinator_accepts() {
        let failures = (0..RESULT_FAILURES_MAX + 5)
            .map(|i| crate::proto::PackageFailure {
                name: format!("p{i}"),
                reason: "é".repeat(FAILURE_REASON_MAX),
            })
            .collect();
        let r = to_result(Ok(Outcome {
            kind: "sync".into(),
            ok: false,
            message: "ü".repeat(RESULT_MESSAGE_MAX),
            counts: Default::default(),
            failures,
            snapshot: None,
            ..Default::default()
        }));
        assert!(r.message.len() <= RESULT_MESSAGE_MAX, "{}", r.message.len());
        assert!(
            r.message.ends_with("(5 more package failures not listed)") || r.message.ends_with('…')
        );
        assert_eq!(r.failures.len(), RESULT_FAILURES_MAX);
        assert!(
            r.failures
                .iter()
                .all(|f| f.reason.len() <= FAILURE_REASON_MAX && f.reason.ends_with('…'))
        );
        let small = to_result(Ok(Outcome {
            kind: "sync".into(),
            ok: true,
            message: "done".into(),
            counts: Default::default(),
            failures: Vec::new(),
            snapshot: None,
            ..Default::default()
        }));
        assert_eq!(small.message, "done");
    }

    #[test]
    fn coordinator_errors_are_made_safe_for_terminals_and_the_journal() {
        let e = from_coordinator(ApiError {
            code: "x\u{1b}[2J".into(),
            message: "busy\u{1b}]0;pwned\u{7}\nforged line".into(),
            detail: None,
        });
        assert_eq!(e.code, "x\\u{1b}[2J");
        assert_eq!(e.message, "busy\\u{1b}]0;pwned\\u{7}\\nforged line");
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        assert!(backoff(0, u64::MAX) <= Duration::from_secs(1));
        assert_eq!(backoff(3, 8_000), Duration::from_millis(8_000));
        assert_eq!(backoff(3, 8_001), Duration::from_millis(0));
        for attempt in [6, 10, 40, u32::MAX] {
            assert!(backoff(attempt, u64::MAX - 1) <= BACKOFF_CAP);
        }
        // Different random draws spread the waits.
        let waits: std::collections::BTreeSet<_> =
            (0..50u64).map(|r| backoff(5, r * 7919)).collect();
        assert!(waits.len() > 40);
    }
}
