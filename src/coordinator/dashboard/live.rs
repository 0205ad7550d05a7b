//! `GET /dashboard/pools/{id}/events`: a server-sent events stream that says "something in
//! this pool changed" (an endpoint's status, an operation's state or progress, a new
//! target). The page then fetches its own live part again, rendered by the same view as the
//! full page: one renderer, no client-side templates, nothing from an endpoint ever put
//! together into HTML by script.
//!
//! It subscribes to the pool's admin channel of the hub, like the admin WebSocket; events
//! already queued are coalesced into one message (a target change brings one status event
//! per endpoint). The stream ends at shutdown, so graceful shutdown is not held up.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::super::AppState;
use super::session::Session;

/// A comment line this often keeps proxies and the coordinator's idle limit from closing a
/// quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn events(
    _: Session,
    State(state): State<AppState>,
    Path(pool_id): Path<i64>,
) -> Result<Response, super::views::Refused> {
    // A pool that does not exist is a 404, not an endless quiet stream.
    super::load_pool(&state, pool_id).await?;
    let (rx, guard) = state.hub.subscribe_admin(pool_id);
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, guard, shutdown),
        |(mut rx, guard, mut shutdown)| async move {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        while let Ok(_) | Err(TryRecvError::Lagged(_)) = rx.try_recv() {}
                        let ev = Event::default().event("change").data("pool");
                        Some((Ok::<_, Infallible>(ev), (rx, guard, shutdown)))
                    }
                    Err(RecvError::Closed) => None,
                },
                _ = super::super::stopped(&mut shutdown) => None,
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}
