//! A compromised coordinator against a real pacpoold on a sandbox root: it floods the daemon
//! with operation requests (distinct ids, far faster than they can run) and never acknowledges
//! a result. The daemon's store stays bounded (refused requests are answered at once and
//! stored nowhere), it keeps serving its local socket, and no pacman transaction runs.
//!
//! The real coordinator cannot do this (one active operation per endpoint), so the test serves
//! the coordinator's side of the protocol itself: `POST /register`, the endpoint WebSocket
//! (Hello → Welcome, then the flood), and 503 for everything else (results delivered over
//! HTTP are never accepted).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::routing::{any, get, post};
use pacpool::proto::{
    EndpointMsg, Operation, OperationKind, OperationState, PROTOCOL_VERSION, RegisterResponse,
    ServerMsg,
};
use support::Sandbox;
use support::daemon::{Daemon, write_config};

const FLOOD: i64 = 3000;

#[derive(Default)]
struct Seen {
    /// Results received over the WebSocket.
    results: AtomicUsize,
    /// Results refused over HTTP (never acknowledged).
    http_posts: AtomicUsize,
}

async fn endpoint_socket(mut ws: WebSocket, seen: Arc<Seen>) {
    // Hello first.
    let Some(Ok(Message::Text(_hello))) = ws.recv().await else {
        return;
    };
    let welcome = ServerMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        endpoint_id: 1,
        pool_id: 1,
        target: None,
        known_state: None,
        policy: None,
        pool_endpoints: Some(1),
        rollout: None,
    };
    let text = serde_json::to_string(&welcome).unwrap();
    if ws.send(Message::Text(text.into())).await.is_err() {
        return;
    }
    for id in 1..=FLOOD {
        let msg = ServerMsg::OperationRequested {
            operation: Operation {
                id,
                endpoint_id: 1,
                pool_id: 1,
                kind: OperationKind::SyncToLatest,
                state: OperationState::Pending,
                progress: None,
                result: None,
                idempotency_key: None,
                created_at: 0,
                updated_at: 0,
                to_snapshot: None,
                target_revision: None,
            },
        };
        let text = serde_json::to_string(&msg).unwrap();
        if ws.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    while let Some(Ok(m)) = ws.recv().await {
        if let Message::Text(t) = m
            && let Ok(EndpointMsg::Result { .. }) = serde_json::from_str(&t)
        {
            seen.results.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, seen: Arc<Seen>) {
    let ws_seen = seen.clone();
    let app = Router::new()
        .route(
            "/api/v1/register",
            post(|| async {
                axum::Json(RegisterResponse {
                    endpoint_id: 1,
                    endpoint_token: "compromised-coordinator-token-0123456789".into(),
                    name: "victim".into(),
                    pool_id: 1,
                    pool_name: "lab".into(),
                })
            }),
        )
        .route(
            "/api/v1/endpoints/ws",
            get(move |up: WebSocketUpgrade| {
                let seen = ws_seen.clone();
                async move { up.on_upgrade(move |ws| endpoint_socket(ws, seen)) }
            }),
        )
        .fallback(any(move || {
            let seen = seen.clone();
            async move {
                seen.http_posts.fetch_add(1, Ordering::Relaxed);
                StatusCode::SERVICE_UNAVAILABLE
            }
        }));
    axum::serve(listener, app).await.unwrap();
}

fn outbox_rows(state_db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(state_db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_flood_of_operation_requests_stores_nothing_beyond_a_bound() {
    let sb = Sandbox::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = Arc::new(Seen::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    rt.spawn(serve(listener, seen.clone()));

    let config = write_config(
        &sb,
        "victim",
        Some((&format!("http://{addr}"), "join-token-not-checked-here")),
    );
    let log_before = sb.log_text();
    let d = Daemon::start(&config);
    // Every request gets an answer: a queued result (up to the bound) or an immediate refusal.
    let limit = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while seen.results.load(Ordering::Relaxed) < (FLOOD as usize) - 300 {
        assert!(
            std::time::Instant::now() < limit,
            "only {} of {FLOOD} requests answered over the socket; log:\n{}",
            seen.results.load(Ordering::Relaxed),
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let state_db = config.parent().unwrap().join("state").join("state.db");
    let rows = outbox_rows(&state_db);
    assert!(
        rows <= 256 + 8,
        "the outbox holds {rows} messages for a flood of {FLOOD}"
    );
    assert!(
        d.log().contains("too many undelivered results queued"),
        "the bound was reached and said so"
    );
    // The daemon still serves its socket, and nothing ran on the machine.
    let status = d.status();
    assert!(status.is_object(), "{status}");
    assert_eq!(sb.log_text(), log_before, "no pacman transaction ran");
    eprintln!(
        "compromised_coordinator: {FLOOD} requests, {} answered over the WebSocket, {} HTTP calls refused, {rows} messages stored",
        seen.results.load(Ordering::Relaxed),
        seen.http_posts.load(Ordering::Relaxed)
    );
}
