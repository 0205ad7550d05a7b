//! Fan-out of server events to WebSocket connections.
//!
//! Per pool with at least one connected socket: one `broadcast` channel for endpoint sockets
//! and one for admin subscribers, so the admin-only flood after a target change (a status per
//! endpoint) never pushes endpoint sockets behind. Every event names its audience; endpoint
//! sockets filter events addressed to one endpoint. Messages are serialized once, however
//! many sockets receive them.
//!
//! Separately, every endpoint socket is registered under its endpoint id from the moment it
//! opens (before `hello`, before it joins a pool channel), so revoking, removing or moving an
//! endpoint closes its sockets at once, whatever phase they are in ([`Hub::kick`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{broadcast, watch};

use crate::proto::ServerMsg;

/// Events a slow endpoint socket may fall behind by before it is disconnected (it then
/// reconnects and gets the current state in `Welcome`).
const ENDPOINT_CAPACITY: usize = 256;
/// The same for admin sockets, which also get one status per endpoint on a target change.
const ADMIN_CAPACITY: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every endpoint of the pool and every admin subscriber.
    All,
    /// Admin subscribers only.
    Admins,
    /// One endpoint (and admin subscribers).
    Endpoint(i64),
}

#[derive(Debug, Clone)]
pub enum EventKind {
    /// A serialized [`ServerMsg`] (reference-counted: every socket sends the same bytes).
    Msg(Utf8Bytes),
}

/// Why an endpoint's sockets are closed by the coordinator; each has its own close code
/// (private range 4000-4999) so the endpoint's log says what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The endpoint's token was revoked: it must register again.
    Revoked,
    /// The endpoint was deleted: it must register again.
    Removed,
    /// The endpoint was moved to another pool: reconnecting gives it the new pool's target.
    Moved,
    /// This replica may have missed events from other replicas (its database connection
    /// broke): reconnecting gives the endpoint the current state of things.
    Resync,
}

impl Kick {
    pub fn close_code(self) -> u16 {
        match self {
            Kick::Revoked => 4001,
            Kick::Removed => 4003,
            Kick::Moved => 4004,
            Kick::Resync => 4005,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Kick::Revoked => "endpoint token revoked: register again with a join token",
            Kick::Removed => "endpoint removed: register again with a join token",
            Kick::Moved => "endpoint moved to another pool: reconnect",
            Kick::Resync => "the coordinator may have missed events: reconnect",
        }
    }
}

/// Open sockets by endpoint: (socket id, the pool it joined, its kick signal).
type Registry = Arc<Mutex<HashMap<i64, Vec<(u64, i64, watch::Sender<Option<Kick>>)>>>>;

/// One open endpoint socket's registration: [`Hub::kick`] sets its value; dropping it
/// unregisters the socket.
pub struct EndpointSocket {
    pub kicked: watch::Receiver<Option<Kick>>,
    endpoint: i64,
    id: u64,
    registry: Registry,
}

impl Drop for EndpointSocket {
    fn drop(&mut self) {
        let mut map = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&self.endpoint) {
            list.retain(|(id, _, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.endpoint);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub to: Audience,
    pub kind: EventKind,
}

impl Event {
    /// Whether an endpoint socket should act on this event.
    pub fn for_endpoint(&self, id: i64) -> bool {
        match self.to {
            Audience::All => true,
            Audience::Admins => false,
            Audience::Endpoint(e) => e == id,
        }
    }

    /// Whether an admin socket should forward this event.
    pub fn for_admin(&self) -> bool {
        matches!(self.kind, EventKind::Msg(_))
    }
}

struct PoolChannel {
    endpoints: broadcast::Sender<Event>,
    admins: broadcast::Sender<Event>,
    admin_count: Arc<AtomicUsize>,
}

#[derive(Default)]
pub struct Hub {
    pools: Mutex<HashMap<i64, PoolChannel>>,
    /// Open endpoint sockets by endpoint id.
    sockets: Registry,
    next_socket: std::sync::atomic::AtomicU64,
    /// The other replicas (PostgreSQL), once started: what is published or kicked here is
    /// also sent to them.
    bus: std::sync::OnceLock<Arc<super::cluster::Bus>>,
}

/// Counts an admin subscriber while alive.
pub struct AdminGuard(Arc<AtomicUsize>);

impl Drop for AdminGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    fn with_pool<T>(&self, pool_id: i64, f: impl FnOnce(&PoolChannel) -> T) -> T {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let ch = pools.entry(pool_id).or_insert_with(|| PoolChannel {
            endpoints: broadcast::channel(ENDPOINT_CAPACITY).0,
            admins: broadcast::channel(ADMIN_CAPACITY).0,
            admin_count: Arc::new(AtomicUsize::new(0)),
        });
        f(ch)
    }

    /// For an endpoint socket: events for every endpoint or one endpoint of the pool.
    pub fn subscribe(&self, pool_id: i64) -> broadcast::Receiver<Event> {
        self.with_pool(pool_id, |ch| ch.endpoints.subscribe())
    }

    /// For an admin socket: every event of the pool.
    pub fn subscribe_admin(&self, pool_id: i64) -> (broadcast::Receiver<Event>, AdminGuard) {
        self.with_pool(pool_id, |ch| {
            ch.admin_count.fetch_add(1, Ordering::Relaxed);
            (ch.admins.subscribe(), AdminGuard(ch.admin_count.clone()))
        })
    }

    /// Whether any admin subscribes to the pool (so admin-only events are worth computing).
    pub fn has_admins(&self, pool_id: i64) -> bool {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .get(&pool_id)
            .is_some_and(|ch| ch.admin_count.load(Ordering::Relaxed) > 0)
    }

    /// Endpoints with an open socket now.
    pub fn connected(&self) -> std::collections::HashSet<i64> {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Whether any pool has an admin subscriber.
    pub fn any_admins(&self) -> bool {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .values()
            .any(|ch| ch.admin_count.load(Ordering::Relaxed) > 0)
    }

    fn send(&self, pool_id: i64, event: Event) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ch) = pools.get(&pool_id) else {
            return;
        };
        if ch.endpoints.receiver_count() == 0 && ch.admins.receiver_count() == 0 {
            // Nobody listens any more: drop the channels (a new subscriber recreates them).
            pools.remove(&pool_id);
            return;
        }
        if event.to != Audience::Admins {
            let _ = ch.endpoints.send(event.clone());
        }
        if event.for_admin() {
            let _ = ch.admins.send(event);
        }
    }

    /// Sends `msg` to this replica's subscribers of the pool, and to the other replicas'.
    pub fn publish(&self, pool_id: i64, to: Audience, msg: &ServerMsg) {
        match serde_json::to_string(msg) {
            Ok(json) => {
                if let Some(bus) = self.bus.get() {
                    bus.send(super::cluster::ClusterEvent::Publish {
                        pool: pool_id,
                        to: to.into(),
                        msg: json.clone(),
                    });
                }
                self.deliver(pool_id, to, json);
            }
            Err(e) => tracing::error!(error = %e, "cannot serialize a server message"),
        }
    }

    /// Sends an already serialized message to this replica's subscribers only (one that
    /// another replica published).
    pub fn deliver(&self, pool_id: i64, to: Audience, json: String) {
        self.send(
            pool_id,
            Event {
                to,
                kind: EventKind::Msg(json.into()),
            },
        );
    }

    /// Connects this hub to the other replicas (once).
    pub fn attach_bus(&self, bus: Arc<super::cluster::Bus>) {
        let _ = self.bus.set(bus);
    }

    /// The bus to the other replicas, if any.
    pub fn bus(&self) -> Option<&Arc<super::cluster::Bus>> {
        self.bus.get()
    }

    /// Every endpoint with a socket open here, with the pool the socket joined.
    pub fn registered(&self) -> Vec<(i64, Option<i64>)> {
        let map = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(e, list)| (*e, list.first().map(|(_, pool, _)| *pool)))
            .collect()
    }

    /// Registers an endpoint socket (of pool `pool`) as soon as it opens (see the module
    /// documentation).
    pub fn register_endpoint(&self, endpoint: i64, pool: i64) -> EndpointSocket {
        let (tx, kicked) = watch::channel(None);
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint)
            .or_default()
            .push((id, pool, tx));
        EndpointSocket {
            kicked,
            endpoint,
            id,
            registry: self.sockets.clone(),
        }
    }

    /// Closes every open socket of `endpoint` (called after the change committed); returns
    /// how many were told.
    pub fn kick(&self, endpoint: i64, why: Kick) -> usize {
        if let Some(bus) = self.bus.get() {
            bus.send(super::cluster::ClusterEvent::Kick {
                endpoint,
                why: why.into(),
            });
        }
        self.deliver_kick(endpoint, why)
    }

    /// [`Hub::kick`] on this replica only (another replica's kick).
    pub fn deliver_kick(&self, endpoint: i64, why: Kick) -> usize {
        let map = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get(&endpoint).map(Vec::as_slice).unwrap_or_default();
        for (_, _, tx) in list {
            tx.send_replace(Some(why));
        }
        list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancel(operation: i64) -> ServerMsg {
        ServerMsg::CancelRequested { operation }
    }

    #[test]
    fn audiences_filter_and_admins_are_counted() {
        let hub = Hub::default();
        let mut ep = hub.subscribe(1);
        assert!(!hub.has_admins(1));
        let (mut admin, guard) = hub.subscribe_admin(1);
        assert!(hub.has_admins(1) && !hub.has_admins(2));
        hub.publish(1, Audience::Endpoint(7), &cancel(3));
        hub.publish(2, Audience::All, &cancel(4));
        hub.publish(1, Audience::Admins, &cancel(5));
        let first = ep.try_recv().unwrap();
        assert!(first.for_endpoint(7) && !first.for_endpoint(8) && first.for_admin());
        assert!(
            ep.try_recv().is_err(),
            "neither pool 2's nor the admin-only event reaches an endpoint socket of pool 1"
        );
        // Admins get the directed message and the admin-only one.
        assert!(admin.try_recv().unwrap().for_endpoint(7));
        assert_eq!(admin.try_recv().unwrap().to, Audience::Admins);
        assert!(admin.try_recv().is_err());
        drop(guard);
        assert!(!hub.has_admins(1));
    }

    #[test]
    fn kicks_reach_every_registered_socket_of_the_endpoint_only() {
        let hub = Hub::default();
        let a1 = hub.register_endpoint(1, 1);
        let a2 = hub.register_endpoint(1, 1);
        let b = hub.register_endpoint(2, 1);
        assert_eq!(hub.kick(1, Kick::Moved), 2);
        assert_eq!(*a1.kicked.borrow(), Some(Kick::Moved));
        assert_eq!(*a2.kicked.borrow(), Some(Kick::Moved));
        assert_eq!(*b.kicked.borrow(), None);
        drop((a1, a2));
        assert_eq!(
            hub.kick(1, Kick::Revoked),
            0,
            "closed sockets are unregistered"
        );
        assert_eq!(hub.kick(2, Kick::Removed), 1);
    }
}
