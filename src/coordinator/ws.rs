//! WebSockets: the endpoint socket (`GET /api/v1/endpoints/ws`, endpoint token) and the admin
//! subscription socket (`GET /api/v1/pools/{id}/ws`, admin token).
//!
//! Endpoint flow: the endpoint sends [`EndpointMsg::Hello`] first (within 30 s); a protocol
//! mismatch is answered with [`ServerMsg::Error`] (code `protocol_mismatch`, naming both
//! versions) and a close frame; otherwise [`ServerMsg::Welcome`] with the pool target and the
//! state the coordinator knows. Then reports, progress, results and heartbeats are handled by
//! the same service functions as the REST routes (a report is answered with
//! [`ServerMsg::ReportAck`], a failed request with [`ServerMsg::Error`]), while pool events
//! are pushed. One task owns each socket. A socket silent for `offline_after_secs` is closed
//! (code 1008); revocation closes it at once with 4001, removal with 4003, a move to another
//! pool with 4004 (whether or not `hello` was sent: see [`super::hub::Kick`]), falling behind
//! on events with 4002, shutdown with 1001.
//!
//! Every message after `hello` takes one request from the token's rate-limit bucket, the same
//! bucket its REST requests use; over the limit it is answered with `rate_limited` and not
//! processed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use sha2::Digest;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::api::ApiPath;
use super::auth::{self, Admin, EndpointAuth};
use super::error::ApiErr;
use super::hub::{AdminGuard, Event, EventKind, Kick};
use super::limits;
use super::{AppState, stopped};
use crate::proto::{EndpointMsg, PROTOCOL_VERSION, ServerMsg};

const WS_READ_BUFFER: usize = 4096;
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pool's endpoint count (sent in `Welcome`) is reused.
const POOL_SIZE_TTL: Duration = Duration::from_secs(5);
/// Close code for "fell behind on events; reconnect to resynchronise".
const CLOSE_LAGGED: u16 = 4002;

fn upgrade(
    up: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    limit: usize,
) -> Result<WebSocketUpgrade, ApiErr> {
    let up = up.map_err(|e| {
        ApiErr::invalid(format!(
            "this route needs a WebSocket upgrade: {}",
            e.body_text()
        ))
    })?;
    // Small buffers: sockets are many and mostly idle (tungstenite's default is 128 KiB each
    // way, which alone would be over 1 GiB at 10,000 endpoints). Larger messages still work:
    // the read buffer grows in these steps, the write buffer is flushed per message.
    Ok(up
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0))
}

/// Decrements a gauge when the socket task ends.
struct Gauge<'a>(&'a AtomicI64);

impl<'a> Gauge<'a> {
    fn new(g: &'a AtomicI64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Self(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn send(socket: &mut WebSocket, msg: &ServerMsg) -> Result<(), axum::Error> {
    let json = serde_json::to_string(msg).map_err(axum::Error::new)?;
    socket.send(Message::Text(json.into())).await
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

fn error_msg(e: ApiErr) -> ServerMsg {
    ServerMsg::Error { error: e.body() }
}

/// The next text message; `None` when the peer closed or the connection failed.
async fn next_text(socket: &mut WebSocket) -> Option<Result<String, ApiErr>> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => return Some(Ok(t.to_string())),
            Ok(Message::Binary(_)) => {
                return Some(Err(ApiErr::invalid("send JSON text messages, not binary")));
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
        }
    }
}

pub(crate) async fn endpoint_socket(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    up: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiErr> {
    let up = upgrade(up, state.settings.ws_message_limit)?;
    // The extractor above accepted this token, so it is there.
    let token = auth::bearer_in(&headers).unwrap_or_default().to_owned();
    Ok(up.on_upgrade(move |socket| run_endpoint(state, ep, token, addr.ip(), socket)))
}

async fn kicked_close(socket: &mut WebSocket, why: Kick) {
    close(socket, why.close_code(), why.reason()).await;
}

async fn run_endpoint(
    state: AppState,
    ep: EndpointAuth,
    token: String,
    peer: IpAddr,
    mut socket: WebSocket,
) {
    let _gauge = Gauge::new(&state.metrics.ws_endpoints);
    let mut shutdown = state.shutdown.clone();
    // Registered first, then the token is checked again: a revocation, removal or move that
    // committed after the upgrade's check is either seen by this check or kicks this
    // registration.
    let registration = state.hub.register_endpoint(ep.id, ep.pool_id);
    let mut kicked = registration.kicked.clone();
    let ep = match auth::endpoint_by_token(&state, &token).await {
        Ok(Some(now)) if now.id == ep.id => now,
        Ok(_) => return kicked_close(&mut socket, Kick::Revoked).await,
        Err(e) => {
            let _ = send(&mut socket, &error_msg(e)).await;
            close(&mut socket, close_code::ERROR, "internal error").await;
            return;
        }
    };
    let rate_key = limits::Key::Token(sha2::Sha256::digest(token.as_bytes()).into());
    let first = tokio::select! {
        biased;
        _ = kicked.changed() => {
            let why = kicked.borrow().unwrap_or(Kick::Revoked);
            return kicked_close(&mut socket, why).await;
        }
        r = tokio::time::timeout(HELLO_TIMEOUT, next_text(&mut socket)) => r,
        _ = stopped(&mut shutdown) => {
            close(&mut socket, close_code::AWAY, "coordinator shutting down").await;
            return;
        }
    };
    let text = match first {
        Err(_) => {
            close(
                &mut socket,
                close_code::POLICY,
                "no hello within 30 seconds",
            )
            .await;
            return;
        }
        Ok(None) => return,
        Ok(Some(Err(e))) => {
            let _ = send(&mut socket, &error_msg(e)).await;
            close(&mut socket, close_code::PROTOCOL, "expected hello").await;
            return;
        }
        Ok(Some(Ok(t))) => t,
    };
    let protocol = match serde_json::from_str::<EndpointMsg>(&text) {
        Ok(EndpointMsg::Hello { protocol, .. }) => protocol,
        Ok(_) => {
            let e = ApiErr::invalid("the first message must be hello");
            let _ = send(&mut socket, &error_msg(e)).await;
            close(&mut socket, close_code::PROTOCOL, "expected hello").await;
            return;
        }
        Err(e) => {
            let e = ApiErr::invalid(format!("malformed hello: {e}"));
            let _ = send(&mut socket, &error_msg(e)).await;
            close(&mut socket, close_code::PROTOCOL, "expected hello").await;
            return;
        }
    };
    if protocol != PROTOCOL_VERSION {
        let e = ApiErr::conflict(
            "protocol_mismatch",
            format!(
                "this coordinator speaks protocol {PROTOCOL_VERSION}, the endpoint speaks protocol {protocol}: upgrade the older of pacpoold and pacpool-coordinator"
            ),
        )
        .with_detail(serde_json::json!({ "coordinator": PROTOCOL_VERSION, "endpoint": protocol }));
        let _ = send(&mut socket, &error_msg(e)).await;
        close(
            &mut socket,
            close_code::PROTOCOL,
            "protocol version mismatch",
        )
        .await;
        return;
    }
    // Subscribe before reading the target, so no change falls between the two.
    let mut events = state.hub.subscribe(ep.pool_id);
    let welcome = async {
        state.heartbeat(&ep).await?;
        let (id, pool_id) = (ep.id, ep.pool_id);
        // Counted at most every few seconds per pool.
        let cached = state
            .pool_sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pool_id)
            .filter(|(_, at)| at.elapsed() < POOL_SIZE_TTL)
            .map(|(n, _)| *n);
        let welcome = state.welcome(id, pool_id, cached).await?;
        if let (
            None,
            ServerMsg::Welcome {
                pool_endpoints: Some(n),
                ..
            },
        ) = (cached, &welcome)
        {
            state
                .pool_sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pool_id, (*n, std::time::Instant::now()));
        }
        Ok(welcome)
    }
    .await;
    match welcome {
        Ok(w) => {
            if send(&mut socket, &w).await.is_err() {
                return;
            }
        }
        Err(e) => {
            let _ = send(&mut socket, &error_msg(e)).await;
            close(&mut socket, close_code::ERROR, "internal error").await;
            return;
        }
    }
    tracing::debug!(endpoint = ep.id, "endpoint socket connected");
    state.status_changed(ep.pool_id, ep.id).await;
    // An endpoint silent for the offline time is gone (daemons send heartbeats well within
    // it): drop the socket instead of holding it until TCP notices.
    let idle_limit = Duration::from_secs(state.settings.offline_after_secs.max(1));
    let mut deadline = tokio::time::Instant::now() + idle_limit;
    loop {
        tokio::select! {
            // First, so that no message is handled once the endpoint was revoked, removed or
            // moved: every message acts with the endpoint's current identity and pool.
            biased;
            _ = kicked.changed() => {
                let why = kicked.borrow().unwrap_or(Kick::Revoked);
                tracing::info!(endpoint = ep.id, ?why, "closing the endpoint's socket");
                kicked_close(&mut socket, why).await;
                break;
            }
            incoming = next_text(&mut socket) => {
                deadline = tokio::time::Instant::now() + idle_limit;
                let reply = match incoming {
                    None => break,
                    Some(msg) => match state.token_limiter.check(rate_key, std::time::Instant::now()) {
                        Err(wait) => Some(error_msg(limits::rate_limited(wait))),
                        Ok(()) => match msg {
                            Err(e) => Some(error_msg(e)),
                            Ok(text) => handle(&state, &ep, peer, &text).await,
                        },
                    },
                };
                if let Some(reply) = reply
                    && send(&mut socket, &reply).await.is_err()
                {
                    break;
                }
            }
            event = events.recv() => match event {
                Ok(ev) if ev.for_endpoint(ep.id) => match ev.kind {
                    EventKind::Msg(json) => {
                        if socket.send(Message::Text(json)).await.is_err() {
                            break;
                        }
                    }
                },
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(endpoint = ep.id, missed = n, "endpoint socket fell behind; closing it");
                    close(&mut socket, CLOSE_LAGGED, "fell behind on events: reconnect").await;
                    break;
                }
                Err(RecvError::Closed) => break,
            },
            _ = tokio::time::sleep_until(deadline) => {
                close(&mut socket, close_code::POLICY, "no message within the offline time: reconnect").await;
                break;
            }
            _ = stopped(&mut shutdown) => {
                close(&mut socket, close_code::AWAY, "coordinator shutting down").await;
                break;
            }
        }
    }
    drop(registration);
    tracing::debug!(endpoint = ep.id, "endpoint socket closed");
}

/// A report message, parsed without the buffering serde does for internally tagged enums
/// (`EndpointMsg` and `StateReport` both are; buffering a full 1,500-package state doubled
/// its parsing time). Accepts the same JSON as `EndpointMsg::Report`; anything else falls
/// back to the `EndpointMsg` parser.
#[derive(serde::Deserialize)]
struct FastReport {
    #[serde(rename = "type")]
    kind: FastKind,
    report: FastBody,
    #[serde(default)]
    source: Option<crate::proto::ChangeSource>,
}

#[derive(serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FastKind {
    Report,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum FastReportKind {
    Full,
    Delta,
}

#[derive(serde::Deserialize)]
struct FastBody {
    kind: FastReportKind,
    #[serde(default)]
    snapshot: Option<crate::snapshot::Snapshot>,
    #[serde(default)]
    delta: Option<crate::snapshot::Delta>,
}

fn fast_report(
    text: &str,
) -> Option<(
    crate::proto::StateReport,
    Option<crate::proto::ChangeSource>,
)> {
    use crate::proto::StateReport;
    let r = serde_json::from_str::<FastReport>(text).ok()?;
    debug_assert!(r.kind == FastKind::Report);
    let report = match (r.report.kind, r.report.snapshot, r.report.delta) {
        (FastReportKind::Full, Some(snapshot), _) => StateReport::Full { snapshot },
        (FastReportKind::Delta, _, Some(delta)) => StateReport::Delta { delta },
        _ => return None,
    };
    Some((report, r.source))
}

/// One message after hello; the reply to send, if any.
async fn handle(
    state: &AppState,
    ep: &EndpointAuth,
    peer: IpAddr,
    text: &str,
) -> Option<ServerMsg> {
    if text.starts_with("{\"type\":\"report\"")
        && let Some((report, source)) = fast_report(text)
    {
        return Some(match state.report(ep, report, source, Some(peer)).await {
            Ok(ack) => ServerMsg::ReportAck { ack },
            Err(e) => error_msg(e),
        });
    }
    let msg = match serde_json::from_str::<EndpointMsg>(text) {
        Ok(m) => m,
        Err(e) => {
            return Some(error_msg(ApiErr::invalid(format!(
                "malformed message: {e}"
            ))));
        }
    };
    let peer = Some(peer);
    match msg {
        EndpointMsg::Hello { .. } => Some(error_msg(ApiErr::invalid("hello was already sent"))),
        EndpointMsg::Report { report, source } => {
            Some(match state.report(ep, report, source, peer).await {
                Ok(ack) => ServerMsg::ReportAck { ack },
                Err(e) => error_msg(e),
            })
        }
        EndpointMsg::Progress {
            operation,
            progress,
        } => state
            .progress(ep, operation, progress, peer)
            .await
            .err()
            .map(error_msg),
        EndpointMsg::Result { operation, result } => state
            .result(ep, operation, result, peer)
            .await
            .err()
            .map(error_msg),
        EndpointMsg::Heartbeat => state.heartbeat(ep).await.err().map(error_msg),
    }
}

pub(crate) async fn admin_socket(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(pool_id): ApiPath<i64>,
    up: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiErr> {
    let up = upgrade(up, state.settings.ws_message_limit)?;
    if !state.pool_exists(pool_id).await? {
        return Err(ApiErr::not_found(format!("no pool {pool_id}")));
    }
    // Subscribe before answering, so every event after the upgrade response is delivered.
    let subscription = state.hub.subscribe_admin(pool_id);
    Ok(up.on_upgrade(move |socket| run_admin(state, subscription, socket)))
}

async fn run_admin(
    state: AppState,
    (mut events, _guard): (broadcast::Receiver<Event>, AdminGuard),
    mut socket: WebSocket,
) {
    let _gauge = Gauge::new(&state.metrics.ws_admins);
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
            event = events.recv() => match event {
                Ok(ev) if ev.for_admin() => {
                    if let EventKind::Msg(json) = ev.kind
                        && socket.send(Message::Text(json)).await.is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    close(&mut socket, CLOSE_LAGGED, "fell behind on events: reconnect").await;
                    break;
                }
                Err(RecvError::Closed) => break,
            },
            _ = stopped(&mut shutdown) => {
                close(&mut socket, close_code::AWAY, "coordinator shutting down").await;
                break;
            }
        }
    }
}
