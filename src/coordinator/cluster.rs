//! Several coordinator replicas on one PostgreSQL database: what one replica tells its
//! sockets, the others tell theirs.
//!
//! Every message a replica sends to its WebSocket subscribers ([`super::hub::Hub::publish`]:
//! a new target, a policy change, an operation request or update, statuses for admins),
//! every kick of an endpoint's sockets (revoked, removed, moved) and every change of pool
//! membership also goes out as a [`ClusterEvent`] on PostgreSQL's `NOTIFY pacpool_bus`,
//! after the change committed; every other replica delivers it to its own sockets. An event
//! larger than NOTIFY's payload limit (8,000 bytes) is stored in `bus_events` and the
//! notification carries its id; the receiver reads it back (NOTIFY is delivered on commit,
//! so the row is visible by then).
//!
//! NOTIFY is at most once: a replica whose listening connection broke misses what was sent
//! meanwhile. After reconnecting the listener it closes every endpoint socket it holds
//! ([`Kick::Resync`]); each endpoint reconnects and learns the current target, policy and
//! pending operations from its Welcome and its operation list, as after any reconnect.
//!
//! Any role that can connect to the database may NOTIFY. So every event carries an
//! HMAC-SHA256 keyed by the admin token's hash (which every replica must share), and the
//! channel name is derived from it too (two pacpool deployments on one database never hear
//! each other); an event without a valid code is dropped.
//!
//! The listening connection also holds the session advisory locks that elect which replica
//! runs each periodic job ([`Job`]); a replica that dies releases them with its connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::AppState;
use super::db_pg::PgDb;
use super::hub::{Audience, Kick};

/// The NOTIFY channel's prefix (the rest comes from the bus key).
const CHANNEL_PREFIX: &str = "pacpool_bus_";
/// Largest event sent inline (PostgreSQL refuses payloads of 8,000 bytes and more).
const INLINE_LIMIT: usize = 7_900;
/// Advisory lock namespace (first key) of the periodic jobs.
const LOCK_SPACE: i32 = 0x7070_6c01;
/// How often the listener proves its connection is alive.
const PING: Duration = Duration::from_secs(5);

/// One replica's id: random per start, in every event it sends (to skip its own) and in
/// `application_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaId(u64);

impl ReplicaId {
    pub(crate) fn new() -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Self(u64::from_le_bytes(b))
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A periodic job that one replica at a time runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Job {
    /// Retention and the pool repository's garbage collection.
    Retention = 1,
    /// Telling admins that endpoints went offline.
    Offline = 2,
}

/// Who a published message is for (the wire form of [`Audience`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireAudience {
    All,
    Admins,
    Endpoint(i64),
}

impl From<Audience> for WireAudience {
    fn from(a: Audience) -> Self {
        match a {
            Audience::All => Self::All,
            Audience::Admins => Self::Admins,
            Audience::Endpoint(e) => Self::Endpoint(e),
        }
    }
}

impl From<WireAudience> for Audience {
    fn from(a: WireAudience) -> Self {
        match a {
            WireAudience::All => Self::All,
            WireAudience::Admins => Self::Admins,
            WireAudience::Endpoint(e) => Self::Endpoint(e),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireKick {
    Revoked,
    Removed,
    Moved,
    Resync,
}

impl From<Kick> for WireKick {
    fn from(k: Kick) -> Self {
        match k {
            Kick::Revoked => Self::Revoked,
            Kick::Removed => Self::Removed,
            Kick::Moved => Self::Moved,
            Kick::Resync => Self::Resync,
        }
    }
}

impl From<WireKick> for Kick {
    fn from(k: WireKick) -> Self {
        match k {
            WireKick::Revoked => Self::Revoked,
            WireKick::Removed => Self::Removed,
            WireKick::Moved => Self::Moved,
            WireKick::Resync => Self::Resync,
        }
    }
}

/// What crosses from one replica to the others.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(crate) enum ClusterEvent {
    /// A message for the pool's sockets (`msg`: the serialized `ServerMsg`, sent as is).
    Publish {
        pool: i64,
        to: WireAudience,
        msg: String,
    },
    /// Close every socket of an endpoint.
    Kick { endpoint: i64, why: WireKick },
    /// An endpoint joined, moved or left a pool (cached pool sizes are stale).
    Membership,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sending replica.
    o: String,
    /// The event (JSON of a [`ClusterEvent`]), inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    /// Or the id of its `bus_events` row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<i64>,
    /// HMAC-SHA256 (hex) of `o`, a newline and the event's JSON.
    m: String,
}

/// The shared secret of the replicas' bus, derived from the admin token's hash.
#[derive(Clone)]
pub(crate) struct BusKey([u8; 32]);

impl BusKey {
    pub(crate) fn new(admin_hash: &[u8; 32]) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"pacpool replica bus v1\0");
        h.update(admin_hash);
        Self(h.finalize().into())
    }

    /// The NOTIFY channel of this deployment.
    fn channel(&self) -> String {
        use sha2::Digest;
        let id = sha2::Sha256::digest(self.0);
        format!("{CHANNEL_PREFIX}{}", hex::encode(&id[..6]))
    }

    fn code(&self, origin: &str, event_json: &str) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(origin.as_bytes());
        mac.update(b"\n");
        mac.update(event_json.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify(&self, origin: &str, event_json: &str, code: &str) -> bool {
        let Ok(code) = hex::decode(code) else {
            return false;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(origin.as_bytes());
        mac.update(b"\n");
        mac.update(event_json.as_bytes());
        mac.verify_slice(&code).is_ok()
    }
}

/// This replica's end of the bus: sends events, and holds the job locks.
pub(crate) struct Bus {
    id: ReplicaId,
    key: BusKey,
    out: mpsc::UnboundedSender<ClusterEvent>,
    /// The listening connection (advisory locks live on it), while it is up.
    listener: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// Jobs whose lock this replica holds on the current listening connection.
    held: [AtomicBool; 3],
}

impl Bus {
    /// Queues `event` for the other replicas; never blocks.
    pub(crate) fn send(&self, event: ClusterEvent) {
        let _ = self.out.send(event);
    }

    /// Whether this replica runs `job` now: it holds, or just took, the job's lock.
    pub(crate) async fn leads(&self, job: Job) -> bool {
        let slot = &self.held[job as usize];
        let guard = self.listener.lock().await;
        let Some(client) = guard.as_ref() else {
            slot.store(false, Ordering::Relaxed);
            return false;
        };
        if slot.load(Ordering::Relaxed) {
            return true;
        }
        let took = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_SPACE, &(job as i32)],
            )
            .await
            .map(|r| r.get::<_, bool>(0));
        match took {
            Ok(true) => {
                tracing::info!(?job, replica = %self.id, "this replica now runs the job");
                slot.store(true, Ordering::Relaxed);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::debug!(error = %e, "cannot take a job lock");
                false
            }
        }
    }
}

/// Starts the bus of a replica on `db`: the sending task and the listening task, which
/// delivers other replicas' events to `state`'s sockets. Returns once listening (so that
/// nothing sent after the start is missed), or with the error of the first connection.
pub(crate) async fn start(
    state: &AppState,
    db: &PgDb,
    id: ReplicaId,
    key: BusKey,
) -> Result<Arc<Bus>, tokio_postgres::Error> {
    let (out, rx) = mpsc::unbounded_channel();
    let bus = Arc::new(Bus {
        id,
        key: key.clone(),
        out,
        listener: tokio::sync::Mutex::new(None),
        held: Default::default(),
    });
    let (incoming_tx, incoming) = mpsc::unbounded_channel::<String>();
    let client = listen(db, &key, incoming_tx.clone()).await?;
    *bus.listener.lock().await = Some(client);
    tokio::spawn(run_sender(db.clone(), id, key, rx, state.shutdown.clone()));
    tokio::spawn(run_receiver(
        state.clone(),
        bus.clone(),
        db.clone(),
        incoming,
        incoming_tx,
    ));
    Ok(bus)
}

/// A connection that LISTENs, forwarding payloads to `incoming`.
async fn listen(
    db: &PgDb,
    key: &BusKey,
    incoming: mpsc::UnboundedSender<String>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let client = db
        .connect_with(move |m| {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = incoming.send(n.payload().to_owned());
            }
        })
        .await?;
    client
        .batch_execute(&format!("LISTEN {}", key.channel()))
        .await?;
    Ok(client)
}

/// Sends queued events, in order, on its own connection, reconnecting after a failure (for
/// about 15 s per event; one that still could not be sent is logged and dropped: the other
/// replicas' endpoints learn it at their next reconnect).
async fn run_sender(
    db: PgDb,
    id: ReplicaId,
    key: BusKey,
    mut rx: mpsc::UnboundedReceiver<ClusterEvent>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let origin = id.to_string();
    let channel = key.channel();
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            _ = super::stopped(&mut shutdown) => return,
        };
        let mut sent = false;
        for attempt in 0..8u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis((100u64 << attempt).min(5_000))).await;
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match db.connect().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to send to other replicas");
                        continue;
                    }
                };
            }
            let Some(c) = client.as_ref() else { continue };
            match send_one(c, &key, &channel, &origin, &event).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot send an event to other replicas");
                    client = None;
                }
            }
        }
        if !sent {
            tracing::error!(
                "an event for the other replicas was dropped: the database stayed unreachable"
            );
        }
    }
}

async fn send_one(
    client: &tokio_postgres::Client,
    key: &BusKey,
    channel: &str,
    origin: &str,
    event: &ClusterEvent,
) -> Result<(), tokio_postgres::Error> {
    let json = serde_json::to_string(event).unwrap_or_default();
    let inline = serde_json::to_string(&Envelope {
        o: origin.to_owned(),
        m: key.code(origin, &json),
        e: Some(json.clone()),
        r: None,
    })
    .unwrap_or_default();
    if inline.len() <= INLINE_LIMIT {
        client
            .execute("SELECT pg_notify($1, $2)", &[&channel, &inline])
            .await?;
        return Ok(());
    }
    let code = key.code(origin, &json);
    client
        .execute(
            "WITH e AS (INSERT INTO bus_events (at, body) VALUES ($1, $2) RETURNING id)
             SELECT pg_notify($3, json_build_object('o', $4::text, 'r', e.id, 'm', $5::text)::text) FROM e",
            &[&super::db::now(), &json, &channel, &origin, &code],
        )
        .await?;
    Ok(())
}

/// Delivers other replicas' events; keeps the listening connection alive, reconnecting
/// (and re-checking this replica's sockets) when it broke.
async fn run_receiver(
    state: AppState,
    bus: Arc<Bus>,
    db: PgDb,
    mut incoming: mpsc::UnboundedReceiver<String>,
    incoming_tx: mpsc::UnboundedSender<String>,
) {
    let mut shutdown = state.shutdown.clone();
    let mut ping = tokio::time::interval(PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let own = bus.id.to_string();
    loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => return,
            payload = incoming.recv() => {
                let Some(payload) = payload else { return };
                deliver(&state, &bus, &own, &payload).await;
            }
            _ = ping.tick() => {
                let alive = {
                    let guard = bus.listener.lock().await;
                    match guard.as_ref() {
                        // Bounded: a partition must not hold the listener (and `leads`).
                        Some(c) => tokio::time::timeout(PING, c.simple_query("SELECT 1"))
                            .await
                            .is_ok_and(|r| r.is_ok()),
                        None => false,
                    }
                };
                if alive {
                    continue;
                }
                tracing::warn!("lost the connection that listens to other replicas; reconnecting");
                *bus.listener.lock().await = None;
                for slot in &bus.held {
                    slot.store(false, Ordering::Relaxed);
                }
                match listen(&db, &bus.key, incoming_tx.clone()).await {
                    Ok(c) => {
                        *bus.listener.lock().await = Some(c);
                        tracing::info!("listening to other replicas again");
                        resync(&state).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot listen to other replicas yet"),
                }
            }
        }
    }
}

async fn deliver(state: &AppState, bus: &Bus, own: &str, payload: &str) {
    let Ok(env) = serde_json::from_str::<Envelope>(payload) else {
        tracing::warn!(
            bytes = payload.len(),
            "an unreadable event on the replicas' channel"
        );
        return;
    };
    if env.o == own {
        return;
    }
    let json = match (env.e, env.r) {
        (Some(e), _) => e,
        (None, Some(id)) => {
            let guard = bus.listener.lock().await;
            let Some(c) = guard.as_ref() else { return };
            match c
                .query_opt("SELECT body FROM bus_events WHERE id = $1", &[&id])
                .await
            {
                Ok(Some(row)) => row.get::<_, String>(0),
                Ok(None) => {
                    tracing::warn!(id, "a stored event is gone before it was read");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, id, "cannot read a stored event");
                    return;
                }
            }
        }
        (None, None) => return,
    };
    if !bus.key.verify(&env.o, &json, &env.m) {
        tracing::warn!(
            origin = %crate::display::clean(&env.o),
            "dropped an event on the replicas' channel that no replica of this deployment sent \
             (its code does not match the shared admin token): check who can connect to the database"
        );
        return;
    }
    let event = match serde_json::from_str::<ClusterEvent>(&json) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "an unreadable event from another replica");
            return;
        }
    };
    match event {
        ClusterEvent::Publish { pool, to, msg } => state.hub.deliver(pool, to.into(), msg),
        ClusterEvent::Kick { endpoint, why } => {
            state.hub.deliver_kick(endpoint, why.into());
        }
        ClusterEvent::Membership => state.forget_pool_sizes(),
    }
}

/// After the listener was down, events of that time are lost: every endpoint socket here is
/// closed ([`Kick::Resync`]), and each endpoint reconnects and learns the current target,
/// policy and pending operations, as after any reconnect (on this replica or another).
async fn resync(state: &AppState) {
    state.forget_pool_sizes();
    let sockets = state.hub.registered();
    for (endpoint, _) in &sockets {
        state.hub.deliver_kick(*endpoint, Kick::Resync);
    }
    if !sockets.is_empty() {
        tracing::info!(
            sockets = sockets.len(),
            "closed the endpoint sockets that may have missed events from other replicas"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_in_their_wire_form() {
        for e in [
            ClusterEvent::Publish {
                pool: 3,
                to: WireAudience::Endpoint(7),
                msg: "{\"type\":\"x\"}".into(),
            },
            ClusterEvent::Kick {
                endpoint: 9,
                why: WireKick::Revoked,
            },
            ClusterEvent::Membership,
        ] {
            let key = BusKey::new(&[7; 32]);
            let json = serde_json::to_string(&e).unwrap();
            let env = Envelope {
                o: "00ff".into(),
                m: key.code("00ff", &json),
                e: Some(json),
                r: None,
            };
            let text = serde_json::to_string(&env).unwrap();
            let back: Envelope = serde_json::from_str(&text).unwrap();
            let json = back.e.unwrap();
            assert!(key.verify(&back.o, &json, &back.m));
            assert_eq!(serde_json::from_str::<ClusterEvent>(&json).unwrap(), e);
            // Another deployment's key, another origin or another event: refused.
            assert!(!BusKey::new(&[8; 32]).verify(&back.o, &json, &back.m));
            assert!(!key.verify("00fe", &json, &back.m));
            let other = r#"{"k":"kick","endpoint":12345,"why":"revoked"}"#;
            assert!(!key.verify(&back.o, other, &back.m));
            assert!(!key.verify(&back.o, &json, "zz"));
        }
        let by_ref: Envelope = serde_json::from_str(r#"{"o":"ab","r":42,"m":""}"#).unwrap();
        assert_eq!((by_ref.e, by_ref.r), (None, Some(42)));
        assert_ne!(
            BusKey::new(&[7; 32]).channel(),
            BusKey::new(&[8; 32]).channel()
        );
    }
}
