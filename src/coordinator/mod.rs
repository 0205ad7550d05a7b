//! The coordinator server (`pacpool-coordinator`): pools, endpoints, target revisions,
//! snapshots and operations over REST (`/api/v1`) and WebSocket, stored in SQLite.
//!
//! # Layout
//! - [`settings`]: the TOML configuration and its commented example.
//! - `error`: [`CoordinatorError`] (start-up) and the per-request `ApiErr` (always answered
//!   as a [`crate::proto::ApiError`]).
//! - `db`: the SQLite database (WAL, migrations, one writer path) and row helpers.
//! - `auth`: token generation and hashing; the `Admin` / `EndpointAuth` extractors.
//! - `service`: the operations behind both REST and WebSocket (reports, targets, operations,
//!   computed status), each one transaction plus the events it publishes.
//! - `snaptext`: snapshots as their canonical text (hashing, delta application without
//!   decoding) and the size-bounded snapshot caches.
//! - `hub`: per-pool fan-out of server events to sockets.
//! - `api`: the router, REST handlers, statistics, metrics and health.
//! - `limits`: rate limiting (per token, per client IP, storage per endpoint) and the client
//!   address (trusted proxies).
//! - `serve`: the accept loop (hyper with header-read timeout, TLS handshakes) and
//!   `connections`: connection caps per address and in total, the idle limit.
//! - `retention`: the periodic cleanup of old operations, audit entries, target revisions
//!   and unreferenced snapshots.
//! - `ws`: the endpoint socket and the admin subscription socket.
//! - `clock`: the coordinator's one clock (settable by tests in test mode only).
//! - `rollout` (rules: rings, windows, gates, texts), `rollout_db` (their SQL) and
//!   `rollout_run` (the periodic step, offers, holds, admin actions): targets reaching a pool
//!   in waves.
//! - `tokens`: join tokens and the pool list (used by the API and the dashboard).
//! - `overview`: the dashboard's reads (package view, state history, diffs, audit filters).
//! - `dashboard`: the web dashboard under `/dashboard/` (off unless `[dashboard] enabled`).
//!
//! The entry point is [`launch`]; the binary only parses flags, loads [`Settings`] and waits
//! for a signal.
//!
//! # API (under `/api/v1`; bodies are the [`crate::proto`] types; errors `ApiError`)
//!
//! Admin (`Authorization: Bearer <admin token>`; an endpoint token gets `403 forbidden`):
//! - `POST /pools` (`CreatePool` → 201 `Pool`), `GET /pools`, `GET|PATCH|DELETE /pools/{id}`
//!   (`UpdatePool`; delete refuses a pool with endpoints: `409 pool_not_empty`)
//! - `POST /pools/{id}/join-tokens` (`CreateJoinToken` → 201 `JoinToken`, secret shown once),
//!   `GET /pools/{id}/join-tokens` (`[JoinTokenInfo]`, no secrets), `DELETE /join-tokens/{id}`
//!   (revoke; endpoints registered with it keep working)
//! - `GET /stats` (`Stats`: totals and per pool)
//! - `GET /pools/{id}/endpoints` (`[EndpointStatus]`), `GET /pools/{id}/targets` (history,
//!   newest first), `POST /pools/{id}/target/revert` (`RevertTargetRequest` → `TargetInfo`)
//! - `GET|PATCH|DELETE /endpoints/{id}` (`UpdateEndpoint`: rename / move),
//!   `POST /endpoints/{id}/revoke`, `POST /endpoints/{id}/operations` (`CreateOperation`;
//!   pushes `OperationRequested` to the endpoint), `GET /endpoints/{id}/changes?cursor=&limit=`
//!   (`Page<StateChange>`: its state changes, newest first, each with where the endpoint says
//!   it came from)
//! - `GET /operations?endpoint=&pool=&cursor=&limit=` (`Page<Operation>`, newest first),
//!   `POST /operations/{id}/cancel[?force=true]`, `GET /audit?cursor=&limit=`
//!   (`Page<AuditEntry>`)
//!
//! Every request is rate limited per valid bearer token (its WebSocket messages take from the
//! same bucket), per client IP without one or with an invalid one: over the limit,
//! `429 rate_limited` with `Retry-After`. What one endpoint may store per hour is bounded
//! too (`storage_per_endpoint_mib_per_hour`; also `429 rate_limited`).
//!
//! Registration (no bearer; the join token is in the body): `POST /register`
//! (`RegisterRequest` → 201 `RegisterResponse`, always a new endpoint and token).
//!
//! Endpoint (`Authorization: Bearer <endpoint token>`; acts only on itself):
//! - `POST /endpoint/report` (`ReportRequest`: a `StateReport` and its `ChangeSource` →
//!   `ReportAck`)
//! - `GET /endpoint/target` (`Option<TargetInfo>`), `POST /endpoint/target`
//!   (`SetTargetRequest` → `TargetInfo`; `409 revision_conflict` with the current target in
//!   `detail`, `409 snapshot_not_current` when the snapshot is not its reported state)
//! - `GET /endpoint/status` (`EndpointStatus`)
//! - `POST /endpoint/operations` (`CreateOperation` → 201 new / 200 same idempotency key;
//!   `409 operation_active` with the active operation in `detail`), `GET /endpoint/operations`
//! - `POST /endpoint/operations/{id}/progress` (`Progress`), `.../result` (`OperationResult`),
//!   both → `Operation`; `409 invalid_transition` when the state machine forbids it
//! - `GET /endpoints/ws`: the WebSocket (see `ws`)
//!
//! Either token: `GET /snapshots/{hash}` (the canonical text form; an endpoint may read its
//! own state and its pool's targets), `GET /operations/{id}` (an endpoint: only its own).
//! Admin subscription socket: `GET /pools/{id}/ws` (all pool events plus
//! `EndpointStatusChanged` / `OperationUpdated`). Unauthenticated: `GET /health/live`,
//! `GET /health/ready`, `GET /metrics` (Prometheus text).
//!
//! With `[dashboard] enabled`, the web dashboard's HTML pages are under `/dashboard/` (see
//! `dashboard`; a session cookie from the admin token, not a bearer token).

mod admin;
mod api;
mod auth;
mod blob;
mod clock;
mod cluster;
mod connections;
mod dashboard;
mod db;
mod db_pg;
mod error;
mod hub;
mod limits;
mod migrate;
mod overview;
mod pg_schema;
pub mod pool_repo;
mod retention;
mod rollout;
mod rollout_db;
mod rollout_run;
mod serve;
mod service;
pub mod settings;
mod snaptext;
pub(crate) mod sql;
mod tokens;
mod ws;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub use error::CoordinatorError;
pub use migrate::{MigrateError, TableCheck, migrate, sqlite_path};
pub use settings::{
    DashboardSettings, EXAMPLE_CONFIG, Secret, Settings, SettingsError, TlsSettings,
};

use crate::snapshot::{Snapshot, SnapshotHash};

/// A cached status: (current state, target, policy fingerprint).
type StatusKey = (SnapshotHash, SnapshotHash, u64);

/// Shared state of one running coordinator.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    settings: Settings,
    db: db::Db,
    admin_hash: [u8; 32],
    hub: hub::Hub,
    metrics: Metrics,
    /// Decoded snapshots, so status computation does not re-parse the same target for every
    /// endpoint.
    snapshots: snaptext::SizedCache<Arc<Snapshot>>,
    /// Snapshot texts, so a delta report does not read its base from the database.
    texts: snaptext::SizedCache<snaptext::SnapText>,
    /// `plan::status` results by (current, target, policy fingerprint).
    token_limiter: limits::RateLimiter,
    anonymous_limiter: limits::RateLimiter,
    /// Per client IP, for requests whose token is not valid.
    invalid_token_limiter: limits::RateLimiter,
    /// KiB each endpoint may store per hour.
    storage_limiter: limits::RateLimiter,
    /// Per endpoint: the audit row its state reports are folded into while it is recent
    /// (see `service::REPORT_AUDIT_WINDOW_SECS`).
    report_audits: Mutex<HashMap<i64, service::ReportAudit>>,
    started_at: i64,
    statuses: Mutex<HashMap<StatusKey, (crate::plan::SyncStatus, crate::plan::Counts)>>,
    /// Endpoints per pool for `Welcome` (a count for the tray's confirmation, not worth a
    /// query on every connect of a reconnect storm): (count, when counted).
    pool_sizes: Mutex<HashMap<i64, (u64, std::time::Instant)>>,
    /// The pool repositories' package store.
    pool_repo: pool_repo::PackageStore,
    /// Every time the coordinator stores or compares (settable in test mode only).
    clock: clock::Clock,
    /// Wakes the rollout task before its next tick.
    rollout_wake: tokio::sync::Notify,
    /// Held while rollout steps run (the task's and a clock change's never interleave).
    rollout_running: tokio::sync::Mutex<()>,
    /// The dashboard's login sessions.
    shutdown: watch::Receiver<bool>,
}

impl Inner {
    /// An endpoint joined, moved or left: the cached pool sizes are stale, here and on the
    /// other replicas.
    pub(crate) fn pool_membership_changed(&self) {
        if let Some(bus) = self.hub.bus() {
            bus.send(cluster::ClusterEvent::Membership);
        }
        self.forget_pool_sizes();
    }

    /// Whether this replica runs the periodic `job` now (always, on SQLite: one process).
    pub(crate) async fn leads(&self, job: cluster::Job) -> bool {
        match self.hub.bus() {
            Some(bus) => bus.leads(job).await,
            None => true,
        }
    }

    /// Drops the cached pool sizes (see [`Inner::pool_membership_changed`]).
    pub(crate) fn forget_pool_sizes(&self) {
        self.pool_sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Inner {
    fn is_admin_token(&self, token: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        h == self.admin_hash
    }
}

/// Counters for `GET /metrics`.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    ws_endpoints: AtomicI64,
    ws_admins: AtomicI64,
    /// Open dashboard event streams (`/dashboard/…/events`).
    dashboard_streams: AtomicI64,
    reports_accepted: AtomicU64,
    /// Accepted reports by pool id, for `GET /stats`.
    reports_by_pool: Mutex<HashMap<i64, u64>>,
    reports_need_full: AtomicU64,
    target_changes: AtomicU64,
    operations_created: AtomicU64,
    /// Open connections and connections refused over a limit (shared with `serve`).
    connections: Arc<connections::Gauges>,
}

impl Metrics {
    fn request(&self, route: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_owned(), status)).or_default() += 1;
    }

    fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        out.push_str("# HELP pacpool_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE pacpool_http_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "pacpool_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let gauges = [
            (
                "pacpool_websockets_endpoints",
                "gauge",
                "Connected endpoint WebSockets.",
                self.ws_endpoints.load(Ordering::Relaxed) as u64,
            ),
            (
                "pacpool_websockets_admins",
                "gauge",
                "Connected admin subscription WebSockets.",
                self.ws_admins.load(Ordering::Relaxed) as u64,
            ),
            (
                "pacpool_dashboard_streams",
                "gauge",
                "Open dashboard event streams (live pages).",
                self.dashboard_streams.load(Ordering::Relaxed) as u64,
            ),
            (
                "pacpool_reports_accepted_total",
                "counter",
                "State reports accepted.",
                self.reports_accepted.load(Ordering::Relaxed),
            ),
            (
                "pacpool_reports_need_full_total",
                "counter",
                "Delta reports answered with need_full.",
                self.reports_need_full.load(Ordering::Relaxed),
            ),
            (
                "pacpool_target_changes_total",
                "counter",
                "Pool target revisions created.",
                self.target_changes.load(Ordering::Relaxed),
            ),
            (
                "pacpool_operations_created_total",
                "counter",
                "Operations created.",
                self.operations_created.load(Ordering::Relaxed),
            ),
            (
                "pacpool_connections_open",
                "gauge",
                "Open client connections (WebSockets included).",
                self.connections.open.load(Ordering::Relaxed),
            ),
            (
                "pacpool_connections_refused_total",
                "counter",
                "Connections closed at once for being over max_connections, max_connections_per_ip or max_tls_handshakes_per_ip.",
                self.connections.refused.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// Decoded snapshots (for status computation), bounded by their total package count.
const DECODED_CACHE_PACKAGES: usize = 64 * 1024;
/// Snapshot texts (the bases of deltas), bounded by total bytes.
const TEXT_CACHE_BYTES: usize = 48 << 20;
/// Computed statuses by (current, target, policy), bounded by entry count.
const STATUS_CACHE_ENTRIES: usize = 64 * 1024;

/// How often committed WAL frames are copied into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl AppState {
    /// Checkpoints the WAL passively every [`CHECKPOINT_EVERY`] until shutdown; the writer
    /// itself checkpoints completely only when the WAL passes `wal_checkpoint_mib` (see `db`).
    async fn run_checkpoints(self) {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            if let Err(e) = self.db.checkpoint().await {
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
            }
        }
    }
}

/// Connections kept free for the database, log and other files.
const RESERVED_FILES: u64 = 512;

/// `max_connections`, lowered to what the open-file limit allows (raised to its hard limit
/// first), with a warning when lowered: past the limit `accept` fails with "Too many open
/// files" for everybody.
fn connection_budget(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let allowed = files.saturating_sub(RESERVED_FILES).max(16);
    if wanted as u64 > allowed {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = files,
            using = allowed,
            "max_connections is above what the open-file limit allows: raise LimitNOFILE (systemd) or `ulimit -n`, or lower max_connections"
        );
        return allowed as usize;
    }
    wanted
}

/// Completes when the coordinator shuts down.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Resolves the admin token hash from the settings, creating a token file when needed.
/// What several replicas on one PostgreSQL database must share, checked before start: one
/// admin token (a generated one would differ per replica) and one package directory (the
/// default sits beside a SQLite file, which a URL is not).
fn check_replica_settings(settings: &Settings) -> Result<(), CoordinatorError> {
    let shown = db_pg::redact(&settings.database.to_string_lossy());
    let fail = |detail: &str| CoordinatorError::PostgresDatabase {
        url: shown.clone(),
        detail: detail.to_owned(),
    };
    if settings.admin_token.is_none()
        && settings.admin_token_sha256.is_none()
        && !settings.admin_token_file.exists()
    {
        return Err(fail(
            "with PostgreSQL every replica needs the same admin token: set admin_token_sha256, or \
             write the token to admin_token_file on each replica (not generated per replica)",
        ));
    }
    if settings.repo.dir.is_none() {
        return Err(fail(
            "with PostgreSQL set [repo] dir to a directory every replica reaches (shared storage) \
             for the pool repository's files",
        ));
    }
    Ok(())
}

fn admin_hash(settings: &Settings) -> Result<[u8; 32], CoordinatorError> {
    if let Some(Secret(token)) = &settings.admin_token {
        return Ok(Sha256::digest(token.as_bytes()).into());
    }
    if let Some(hex_hash) = &settings.admin_token_sha256 {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_hash.trim(), &mut out)
            .map_err(|_| CoordinatorError::BadAdminHash)?;
        return Ok(out);
    }
    let path = &settings.admin_token_file;
    let io = |source| CoordinatorError::AdminToken {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(CoordinatorError::EmptyAdminToken { path: path.clone() });
            }
            Ok(Sha256::digest(token.as_bytes()).into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token =
                auth::new_token("ppa_").map_err(|e| io(std::io::Error::other(e.message)))?;
            write_secret_file(path, &token).map_err(io)?;
            tracing::warn!(
                path = %path.display(),
                "generated a new admin token; read it from this file (readable by this user only)"
            );
            Ok(Sha256::digest(token.as_bytes()).into())
        }
        Err(e) => Err(io(e)),
    }
}

/// Creates `path` (mode 0600) holding `token`, atomically: a reader never sees a partial
/// file, and an existing file is never replaced.
fn write_secret_file(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()?;
        // A hard link fails if `path` exists, unlike a rename.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Runs the coordinator on `listener` until `shutdown` completes; then stops accepting,
/// sends a close frame on every WebSocket and waits for in-flight requests.
///
/// With `settings.tls` the listener serves TLS (https, wss); otherwise plain HTTP.
/// The TLS files and the database are read (and migrated) before serving starts, so a bad
/// certificate, key or database fails here rather than on the first request.
pub async fn launch(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let tls_config = match &settings.tls {
        Some(t) => Some(crate::tls::server_config(&t.cert, &t.key)?),
        None => None,
    };
    let postgres = settings
        .database
        .to_str()
        .filter(|d| db_pg::is_postgres_url(d))
        .map(str::to_owned);
    if postgres.is_some() {
        check_replica_settings(&settings)?;
    }
    let admin_hash = admin_hash(&settings)?;
    let replica = cluster::ReplicaId::new();
    let db = match &postgres {
        Some(url) => {
            let opts = db_pg::PgOptions {
                pool_size: settings.database_pool_size,
                ca_file: settings.database_ca_file.clone(),
                application_name: format!("pacpool-coordinator {replica}"),
            };
            db::Db::open_postgres(url, &opts).await?
        }
        None => {
            let db_path = settings.database.clone();
            let wal_limit = settings.wal_checkpoint_mib.saturating_mul(1 << 20);
            tokio::task::spawn_blocking(move || db::Db::open_with(&db_path, wal_limit))
                .await
                .map_err(|e| CoordinatorError::Serve(std::io::Error::other(e)))??
        }
    };
    let pool_repo = pool_repo::PackageStore::open(&settings.repo, &settings.database)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let token_limiter =
        limits::RateLimiter::new(settings.rate_limit_per_minute, settings.rate_limit_burst);
    let anonymous_limiter = limits::RateLimiter::new(
        settings.anonymous_rate_limit_per_minute,
        settings.anonymous_rate_limit_burst,
    );
    let invalid_token_limiter = limits::RateLimiter::new(
        settings.invalid_token_rate_limit_per_minute,
        settings.invalid_token_rate_limit_burst,
    );
    let storage_kib = f64::from(settings.storage_per_endpoint_mib_per_hour) * 1024.0;
    let storage_limiter = limits::RateLimiter::per_hour(storage_kib, storage_kib);
    let test_clock = settings.test_clock;
    let state = AppState(Arc::new(Inner {
        settings,
        db,
        admin_hash,
        hub: hub::Hub::default(),
        metrics: Metrics::default(),
        snapshots: snaptext::SizedCache::new(DECODED_CACHE_PACKAGES),
        texts: snaptext::SizedCache::new(TEXT_CACHE_BYTES),
        statuses: Mutex::new(HashMap::new()),
        pool_sizes: Mutex::new(HashMap::new()),
        pool_repo,
        token_limiter,
        anonymous_limiter,
        invalid_token_limiter,
        storage_limiter,
        report_audits: Mutex::new(HashMap::new()),
        started_at: db::now(),
        clock: clock::Clock::new(test_clock),
        rollout_wake: tokio::sync::Notify::new(),
        rollout_running: tokio::sync::Mutex::new(()),
        shutdown: stop_rx.clone(),
    }));
    if let Some(pg) = state.db.postgres() {
        let key = cluster::BusKey::new(&state.admin_hash);
        let bus = cluster::start(&state, pg, replica, key)
            .await
            .map_err(|e| CoordinatorError::PostgresDatabase {
                url: format!("{pg:?}"),
                detail: format!("cannot listen for the other replicas' events: {e}"),
            })?;
        state.hub.attach_bus(bus);
        tracing::info!(%replica, "coordinator replica on PostgreSQL");
    }
    tokio::spawn(state.clone().watch_offline());
    tokio::spawn(state.clone().run_retention());
    tokio::spawn(state.clone().run_checkpoints());
    tokio::spawn(state.clone().run_rollouts());
    let limits = serve::Limits::from_settings(
        &state.settings,
        connection_budget(state.settings.max_connections),
        state.metrics.connections.clone(),
    );
    let app = api::router(state);
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls_config.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%addr, scheme, "coordinator listening");
    }
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("coordinator shutting down");
        let _ = stop_tx.send(true);
    });
    serve::serve(listener, tls_config, app, limits, stop_rx)
        .await
        .map_err(CoordinatorError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn admin_token_file_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            admin_token_file: dir.path().join("state/admin-token"),
            ..Settings::default()
        };
        let first = admin_hash(&settings).unwrap();
        let path = &settings.admin_token_file;
        let token = std::fs::read_to_string(path).unwrap();
        assert!(token.starts_with("ppa_") && token.ends_with('\n'));
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Read back, not regenerated; the hash is of the token without its newline.
        assert_eq!(admin_hash(&settings).unwrap(), first);
        let expect: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        assert_eq!(first, expect);
        assert_eq!(
            std::fs::read_dir(dir.path().join("state")).unwrap().count(),
            1
        );
        let by_hash = Settings {
            admin_token_sha256: Some(hex::encode(first)),
            admin_token_file: dir.path().join("unused"),
            ..Settings::default()
        };
        assert_eq!(admin_hash(&by_hash).unwrap(), first);
        assert!(!dir.path().join("unused").exists());
    }
}
