//! Protocol-level simulated endpoints: the coordinator's real REST and WebSocket protocol
//! (`pacpool::proto`), without pacman or pacpoold, so a test or bench can run hundreds of them.
//! Used by `benches/coordinator_load.rs` (connect) and `tests/rollout.rs` (endpoints that
//! answer requested syncs).
//!
//! A standalone file (no `super::`), so a bench can include it with `#[path]`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use pacpool::proto::{
    EndpointMsg, Operation, OperationKind, OperationResult, OperationState, PROTOCOL_VERSION,
    PackageFailure, Progress, RegisterResponse, ServerMsg, StateReport,
};
use pacpool::snapshot::{Snapshot, SnapshotHash};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `url` (the endpoint socket) with `token`, sends hello and waits for the
/// welcome; `None` on any failure. Small buffers, as a daemon's link would need at scale.
pub async fn connect(url: &str, token: &str, acked: Option<SnapshotHash>) -> Option<Ws> {
    connect_welcomed(url, token, acked).await.map(|(ws, _)| ws)
}

/// [`connect`], also returning the welcome.
pub async fn connect_welcomed(
    url: &str,
    token: &str,
    acked: Option<SnapshotHash>,
) -> Option<(Ws, ServerMsg)> {
    let mut req = url.into_client_request().ok()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().ok()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), false)
        .await
        .ok()?;
    let hello = EndpointMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent: "sim".into(),
        acked_state: acked,
    };
    ws.send(Message::text(serde_json::to_string(&hello).unwrap()))
        .await
        .ok()?;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && let Ok(w @ ServerMsg::Welcome { .. }) = serde_json::from_str::<ServerMsg>(&t)
        {
            return Some((ws, w));
        }
    }
    None
}

/// Registers an endpoint named `name` with a join token.
pub async fn register(
    client: &reqwest::Client,
    base: &str,
    join: &str,
    name: &str,
) -> RegisterResponse {
    let resp = client
        .post(format!("{base}/api/v1/register"))
        .json(&serde_json::json!({ "join_token": join, "name": name }))
        .send()
        .await
        .expect("register");
    assert!(resp.status().is_success(), "register {name}: {resp:?}");
    resp.json().await.unwrap()
}

/// What a simulated endpoint does with a requested sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSync {
    /// Reports the offered target's state, then `completed` with no failures.
    Succeed,
    /// Reports `failed` with one package failure (a package that cannot be installed).
    Fail,
    /// Reports progress, then never a result (a machine that goes away mid-sync).
    Hang,
}

/// A simulated endpoint: registered, connected, its state reported; it answers every
/// requested sync as `on_sync` says (progress, then the result over REST), and stays
/// connected until dropped.
pub struct SimEndpoint {
    pub id: i64,
    pub name: String,
    pub token: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimEndpoint {
    /// Registers `name`, connects, reports `state`; `states` are the snapshots it may be asked
    /// to reach, by hash (a successful sync reports the target's).
    pub async fn start(
        base: &str,
        join: &str,
        name: &str,
        state: Snapshot,
        states: Arc<HashMap<SnapshotHash, Snapshot>>,
        on_sync: OnSync,
    ) -> Self {
        let client = reqwest::Client::new();
        let reg = register(&client, base, join, name).await;
        Self::connect_as(
            base,
            reg.endpoint_id,
            &reg.name,
            &reg.endpoint_token,
            state,
            states,
            on_sync,
        )
        .await
    }

    /// Connects an endpoint registered before (e.g. after a coordinator restart).
    pub async fn connect_as(
        base: &str,
        id: i64,
        name: &str,
        token: &str,
        state: Snapshot,
        states: Arc<HashMap<SnapshotHash, Snapshot>>,
        on_sync: OnSync,
    ) -> Self {
        let ws_url = format!(
            "{}/api/v1/endpoints/ws",
            base.replacen("http://", "ws://", 1)
        );
        let (ws, _) = connect_welcomed(&ws_url, token, None)
            .await
            .expect("simulated endpoint connects");
        let client = reqwest::Client::new();
        let (base, t) = (base.to_owned(), token.to_owned());
        let task = tokio::spawn(run(ws, client, base, t, state, states, on_sync));
        Self {
            id,
            name: name.to_owned(),
            token: token.to_owned(),
            task,
        }
    }

    /// Whether its task still runs (its socket is open).
    pub fn alive(&self) -> bool {
        !self.task.is_finished()
    }
}

async fn run(
    mut ws: Ws,
    client: reqwest::Client,
    base: String,
    token: String,
    mut state: Snapshot,
    states: Arc<HashMap<SnapshotHash, Snapshot>>,
    on_sync: OnSync,
) {
    let send = |msg: &EndpointMsg| Message::text(serde_json::to_string(msg).unwrap());
    let report = |s: &Snapshot| {
        send(&EndpointMsg::Report {
            report: StateReport::Full {
                snapshot: s.clone(),
            },
            source: None,
        })
    };
    if ws.send(report(&state)).await.is_err() {
        return;
    }
    let post = |path: String, body: serde_json::Value| {
        let (client, url, token) = (
            client.clone(),
            format!("{base}/api/v1{path}"),
            token.clone(),
        );
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .ok()
        }
    };
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        let Ok(ServerMsg::OperationRequested { operation }) = serde_json::from_str(&t) else {
            continue;
        };
        let Operation { id, kind, .. } = operation;
        if kind != OperationKind::SyncToLatest {
            continue;
        }
        // The target it is offered (the coordinator decides, not the endpoint).
        let offer: Option<pacpool::proto::Offer> = match client
            .get(format!("{base}/api/v1/endpoint/offer"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let target = offer
            .and_then(|o| o.target)
            .and_then(|t| states.get(&t.snapshot).cloned());
        let progress = Progress {
            stage: "installing".into(),
            percent: 50,
            current: None,
        };
        post(
            format!("/endpoint/operations/{id}/progress"),
            serde_json::to_value(&progress).unwrap(),
        )
        .await;
        if on_sync == OnSync::Hang {
            continue;
        }
        let result = match (on_sync, target) {
            (OnSync::Succeed, Some(t)) => {
                state = t;
                if ws.send(report(&state)).await.is_err() {
                    return;
                }
                OperationResult {
                    state: OperationState::Completed,
                    message: "synced".into(),
                    failures: Vec::new(),
                    snapshot: Some(state.hash()),
                }
            }
            _ => OperationResult {
                state: OperationState::Failed,
                message: "the sync failed".into(),
                failures: vec![PackageFailure {
                    name: "broken".into(),
                    reason: "cannot be installed".into(),
                }],
                snapshot: Some(state.hash()),
            },
        };
        post(
            format!("/endpoint/operations/{id}/result"),
            serde_json::to_value(&result).unwrap(),
        )
        .await;
    }
}
