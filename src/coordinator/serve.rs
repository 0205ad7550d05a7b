//! The accept loop: each TCP connection is admitted against the connection limits
//! ([`super::connections`]), optionally put through its TLS handshake, and served by hyper's
//! HTTP/1 connection with the router, WebSocket upgrades included.
//!
//! Why not `axum::serve`: as of axum 0.8.9 it builds hyper's connection itself, without a
//! timer, so hyper's `header_read_timeout` never applies (a client sending headers byte by
//! byte, or nothing, holds its connection forever), and it has no hook to refuse a connection
//! before serving it. This loop is what `axum::serve` does (a task per connection, graceful
//! shutdown by `graceful_shutdown` on each connection, then waiting for them) plus:
//! - hyper's `header_read_timeout` (`header_read_timeout_secs`), which also bounds the wait
//!   for the next request on a kept-alive connection;
//! - an idle limit on the stream itself ([`IdleIo`], `idle_timeout_secs`: no byte either way,
//!   e.g. a client that never reads its answer), lifted once the connection is a WebSocket;
//! - `max_connections` / `max_connections_per_ip`: a connection over a limit is answered with
//!   a 503 (plain HTTP) or closed (TLS) at once, never queued;
//! - TLS handshakes in the connection's own task, limited per address
//!   (`max_tls_handshakes_per_ip`) and in time (`header_read_timeout_secs`), so silent
//!   connections from one address cannot hold up anybody else's accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::connections::{ConnSlot, ConnTable, IdleIo, Refused};
use super::settings::Settings;
use super::stopped;

/// The connection limits and timeouts from the settings.
#[derive(Clone)]
pub(crate) struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub table: Arc<ConnTable>,
}

impl Limits {
    pub(crate) fn from_settings(
        s: &Settings,
        max_connections: usize,
        gauges: Arc<super::connections::Gauges>,
    ) -> Self {
        Self {
            header_read: Duration::from_secs(s.header_read_timeout_secs.max(1)),
            idle: Duration::from_secs(s.idle_timeout_secs),
            table: ConnTable::new(
                max_connections,
                s.max_connections_per_ip,
                s.max_tls_handshakes_per_ip,
                s.trusted_proxies.clone(),
                gauges,
            ),
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true; then stops accepting, lets every
/// connection finish its request in flight, and returns once they are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    // Every connection task holds a sender; all dropped = all connections closed.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let (closing_tx, closing) = watch::channel(false);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Per-connection errors are not fatal; too many open files clears up when
                // connections close.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match limits.table.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                refuse(&tcp, why, acceptor.is_none());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, limits, acceptor) = (app.clone(), limits.clone(), acceptor.clone());
        let (alive, closing) = (alive.clone(), closing.clone());
        tokio::spawn(async move {
            let _alive = alive;
            connection(tcp, peer, slot, acceptor, app, limits, closing).await;
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(alive);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Answers a connection over a limit without reading it (best effort) and closes it.
fn refuse(tcp: &TcpStream, why: Refused, plain: bool) {
    tracing::debug!(?why, "connection refused");
    if plain {
        let body = serde_json::json!({ "code": "too_many_connections", "message": why.message() })
            .to_string();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.try_write(answer.as_bytes());
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    closing: watch::Receiver<bool>,
) {
    // The slot lives in the stream: a WebSocket keeps its place after the upgrade.
    let io = IdleIo::new(tcp, limits.idle).holding(slot);
    let armed = io.armed();
    match acceptor {
        None => http(io, peer, app, &limits, armed, closing).await,
        Some(acceptor) => {
            let Ok(handshake) = limits.table.handshake(peer.ip()) else {
                tracing::debug!(%peer, "too many TLS handshakes from this address; closed");
                return;
            };
            let tls = tokio::time::timeout(limits.header_read, acceptor.accept(io)).await;
            drop(handshake);
            match tls {
                Ok(Ok(tls)) => http(tls, peer, app, &limits, armed, closing).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    armed: Arc<std::sync::atomic::AtomicBool>,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        tower_service::Service::call(&mut app.clone(), req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut closing) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    // Ended, or handed over as a WebSocket, whose task checks its own liveness.
    armed.store(false, Ordering::Relaxed);
}
