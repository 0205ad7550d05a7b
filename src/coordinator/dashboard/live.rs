//! `GET /dashboard/pools/{id}/events`: a server-sent events stream that says "something in
//! this pool changed" (an endpoint's status, an operation's state or progress, a new
//! target). The page then fetches its own live part again, rendered by the same view as the
//! full page: one renderer, no client-side templates, nothing from an endpoint ever put
//! together into HTML by script.
//!
//! It subscribes to the pool's admin channel of the hub, like the admin WebSocket; events
//! already queued are coalesced into one message (a target change brings one status event
//! per endpoint). The stream ends at shutdown, so graceful shutdown is not held up.
//! `GET /dashboard/events` does the same for every pool at once (the pools page).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::super::AppState;
use super::super::hub::{AdminGuard, Event as HubEvent};
use super::session::Session;

/// A comment line this often keeps proxies and the coordinator's idle limit from closing a
/// quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A pool's changes as a stream: one item per burst of events (those already queued are
/// coalesced). Holds the admin subscription (and so keeps the pool's statuses computed) as
/// long as the stream lives.
fn changes(
    (rx, guard): (broadcast::Receiver<HubEvent>, AdminGuard),
) -> impl Stream<Item = ()> + Send {
    futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        match rx.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {
                while let Ok(_) | Err(TryRecvError::Lagged(_)) = rx.try_recv() {}
                Some(((), (rx, guard)))
            }
            Err(RecvError::Closed) => None,
        }
    })
}

/// Counts an open stream in `pacpool_dashboard_streams` while alive.
struct Counted(AppState);

impl Counted {
    fn new(state: &AppState) -> Self {
        state
            .metrics
            .dashboard_streams
            .fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .metrics
            .dashboard_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// `changes` as server-sent events, ending at shutdown.
fn sse(state: &AppState, changes: impl Stream<Item = ()> + Send + 'static) -> Response {
    let mut shutdown = state.shutdown.clone();
    let stop = async move { super::super::stopped(&mut shutdown).await };
    let counted = Counted::new(state);
    let events = changes
        .map(move |()| {
            let _alive = &counted;
            Ok::<_, Infallible>(Event::default().event("change").data("pool"))
        })
        .take_until(Box::pin(stop));
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// `GET /dashboard/pools/{id}/events`: the pool page's and the endpoint page's stream.
pub(super) async fn pool_events(
    _: Session,
    State(state): State<AppState>,
    Path(pool_id): Path<i64>,
) -> Result<Response, super::views::Refused> {
    // A pool that does not exist is a 404, not an endless quiet stream.
    super::load_pool(&state, pool_id).await?;
    let stream = changes(state.hub.subscribe_admin(pool_id));
    Ok(sse(&state, stream))
}

/// `GET /dashboard/events`: the pools page's stream, every pool's changes together (a pool
/// created later shows at the next reload).
pub(super) async fn all_events(
    _: Session,
    State(state): State<AppState>,
) -> Result<Response, super::views::Refused> {
    let pools = state.pools().await?;
    let streams: Vec<_> = pools
        .iter()
        .map(|p| Box::pin(changes(state.hub.subscribe_admin(p.id))))
        .collect();
    Ok(sse(&state, futures_util::stream::select_all(streams)))
}
