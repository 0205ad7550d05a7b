//! `pacpoold`, the endpoint daemon: keeps the local snapshot history, serves the local
//! socket, talks to the coordinator, and runs sync / set-latest / revert through pacman.
//!
//! # Layout
//! - [`config`]: the TOML configuration and its defaults.
//! - [`protocol`]: the local socket's wire types.
//! - [`service`]: the daemon's state and its operations (one at a time).
//! - [`socket`]: the Unix socket server, with peer-credential authorization.
//! - [`link`]: the coordinator connection (registration, WebSocket, reports, targets).
//! - [`client`]: the client side of the socket, used by the CLI and the tray.
//!
//! Architecture Invariant: the socket and the link only call [`service::Daemon`]; all state
//! changes go through it, and only its operations (via `crate::apply`) run pacman.

pub mod client;
pub mod config;
pub mod link;
pub mod protocol;
pub mod service;
pub mod socket;

use std::future::Future;
use std::sync::Arc;

pub use config::DaemonConfig;
pub use service::Daemon;

/// Runs the daemon until `shutdown` resolves: opens the store, takes the first snapshot,
/// starts the coordinator link, the safety-net timer and the socket.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let daemon = Arc::new(Daemon::open(config).await?);
    let listener = socket::bind(&daemon.config().socket, &daemon.config().socket_group)?;
    tracing::info!(socket = %daemon.config().socket.display(), "pacpoold ready");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(link::run(daemon.clone(), stop_rx.clone()));
    tasks.spawn(service::timer(daemon.clone(), stop_rx.clone()));
    tasks.spawn(socket::serve(daemon.clone(), listener, stop_rx.clone()));
    shutdown.await;
    tracing::info!("pacpoold stopping");
    let _ = stop_tx.send(true);
    // Let a running operation finish: its pacman transaction must not lose its reader.
    if tokio::time::timeout(std::time::Duration::from_secs(110), daemon.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("an operation is still running after 110 s; stopping anyway");
    }
    // Every task watches `stop`; give them a bounded time to finish.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    socket::remove(&daemon.config().socket);
    Ok(())
}
