//! The coordinator's SQLite database: WAL mode, numbered migrations in `PRAGMA user_version`,
//! one writer connection and a small pool of readers.
//!
//! Architecture Invariant: every write goes through [`Db::write`], which hands the change to
//! the one writer thread that owns the writer connection, so writers queue in the process
//! instead of failing with "database is locked"; readers use their own connections and never
//! block the writer (WAL). `busy_timeout` is only a second line of defence. The writer does
//! not checkpoint on commit: a periodic PASSIVE checkpoint on a reader connection copies the
//! WAL into the database file, so that copying and its fsync never delay a write.
//!
//! A PASSIVE checkpoint can never restart the WAL while writes keep coming and readers keep
//! reading (checkpoint starvation): the file then grows without bound. So after a commit that
//! left the WAL file above its limit (`wal_checkpoint_mib`), the writer itself runs a
//! `RESTART` checkpoint between two batches: it waits (busy handler) for readers to move to
//! the newest state, copies everything, and the next write starts the WAL from its
//! beginning; `journal_size_limit` then truncates the file back to the limit. Writes queue
//! meanwhile (the bench in `benches/coordinator_load.rs --wal-minutes` shows the cost).
//!
//! Group commit: the writer thread takes every change queued while it was busy (up to
//! [`MAX_BATCH`]) into one `BEGIN IMMEDIATE` transaction, each change inside its own
//! `SAVEPOINT` (a change that fails is rolled back alone and answered at once), then commits
//! once. A change is answered only after that `COMMIT` returned, so an acknowledged change is
//! in the WAL file (`synchronous = NORMAL`: it survives the coordinator being killed; an OS
//! crash may lose the last transactions, as before). Changes run in arrival order and each
//! sees the ones before it, as with one transaction each; if the `COMMIT` fails, every
//! change of the batch is answered with the error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::OpenFlags;

use super::sql::{self, Connection, OptionalExtension, Row, params};

use super::error::{ApiErr, CoordinatorError};
use super::snaptext::SnapText;
use crate::proto::{AuditEntry, Operation, OperationKind, OperationState, PoolPolicy, TargetInfo};
use crate::snapshot::SnapshotHash;

/// Each entry upgrades the schema by one version; never edit a released entry.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE pools (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        policy TEXT NOT NULL,
        created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE snapshots (
        hash TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL,
        package_count INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE join_tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
        token_hash TEXT NOT NULL UNIQUE,
        expires_at INTEGER NOT NULL,
        max_uses INTEGER,
        uses INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE endpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pool_id INTEGER NOT NULL REFERENCES pools(id),
        name TEXT NOT NULL,
        token_hash TEXT UNIQUE,
        current TEXT REFERENCES snapshots(hash),
        last_seen INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (pool_id, name)
     ) STRICT;
     CREATE TABLE targets (
        pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
        revision INTEGER NOT NULL,
        snapshot TEXT NOT NULL REFERENCES snapshots(hash),
        set_by_endpoint INTEGER,
        set_by TEXT NOT NULL,
        set_at INTEGER NOT NULL,
        reverted_from INTEGER,
        PRIMARY KEY (pool_id, revision)
     ) STRICT;
     CREATE TABLE operations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        endpoint_id INTEGER NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
        pool_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        to_snapshot TEXT,
        progress TEXT,
        result TEXT,
        idempotency_key TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (endpoint_id, idempotency_key)
     ) STRICT;
     CREATE INDEX operations_endpoint ON operations(endpoint_id, id);
     CREATE INDEX operations_pool ON operations(pool_id, id);
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT,
        peer TEXT,
        detail TEXT
     ) STRICT;",
    // 2: a snapshot may be stored as a delta against another stored snapshot (`body` then
    // empty): a one-package change costs a few hundred bytes instead of the whole list.
    "ALTER TABLE snapshots ADD COLUMN base TEXT REFERENCES snapshots(hash);
     ALTER TABLE snapshots ADD COLUMN delta TEXT;
     ALTER TABLE snapshots ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX snapshots_base ON snapshots(base) WHERE base IS NOT NULL;",
    // 3: indexes for the references retention checks before deleting a snapshot; without
    // them each candidate scanned every endpoint, and a retention run over 10,000 endpoints
    // held the writer for seconds.
    "CREATE INDEX endpoints_current ON endpoints(current) WHERE current IS NOT NULL;
     CREATE INDEX targets_snapshot ON targets(snapshot);
     CREATE INDEX operations_to_snapshot ON operations(to_snapshot) WHERE to_snapshot IS NOT NULL;",
    // 4: a target revision's manifest (gzip of its JSON), kept as long as the revision.
    "CREATE TABLE target_manifests (
        pool_id INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (pool_id, revision)
     );",
    // 5: each endpoint's state changes and where the endpoint says they came from (a pacpool
    // operation, or pacman run on the machine: `ChangeSource` as JSON). `state` is not a
    // reference: retention may drop the snapshot before the row.
    "CREATE TABLE endpoint_changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        endpoint_id INTEGER NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        state TEXT NOT NULL,
        package_count INTEGER NOT NULL,
        source TEXT
     ) STRICT;
     CREATE INDEX endpoint_changes_endpoint ON endpoint_changes(endpoint_id, id);
     CREATE INDEX endpoint_changes_at ON endpoint_changes(at);",
    // 6: rollouts (see `rollout_db`): one row per target revision set while the pool had
    // rings; holds; and on operations, the revision a sync was offered (what rollout gates
    // count) and whether the coordinator started it on its own (an automatic sync's slot).
    "CREATE TABLE rollouts (
        pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
        revision INTEGER NOT NULL,
        state TEXT NOT NULL,
        rings TEXT NOT NULL,
        rings_offered INTEGER NOT NULL,
        offered_at TEXT NOT NULL,
        accepted TEXT NOT NULL,
        overridden INTEGER,
        reason TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (pool_id, revision)
     ) STRICT;
     CREATE TABLE holds (
        endpoint_id INTEGER PRIMARY KEY REFERENCES endpoints(id) ON DELETE CASCADE,
        reason TEXT NOT NULL,
        until INTEGER NOT NULL,
        revision INTEGER,
        set_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
     ) STRICT;
     ALTER TABLE operations ADD COLUMN target_revision INTEGER;
     ALTER TABLE operations ADD COLUMN auto INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX operations_target ON operations(pool_id, target_revision)
        WHERE target_revision IS NOT NULL;",
    // 7 (dashboard): each endpoint's recent states, with the operation that was running
    // when the state was reported (NULL: changed on the machine itself), and indexes for the
    // audit log's filters (keyset pages by id within an actor, an action or a subject).
    "CREATE TABLE endpoint_states (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        endpoint_id INTEGER NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        snapshot TEXT NOT NULL REFERENCES snapshots(hash),
        package_count INTEGER NOT NULL,
        operation_id INTEGER,
        first INTEGER NOT NULL DEFAULT 0
     ) STRICT;
     CREATE INDEX endpoint_states_endpoint ON endpoint_states(endpoint_id, id);
     CREATE INDEX endpoint_states_snapshot ON endpoint_states(snapshot);
     CREATE INDEX audit_actor ON audit(actor, id);
     CREATE INDEX audit_action ON audit(action, id);
     CREATE INDEX audit_subject ON audit(subject, id);",
    // 8 (#15): the dashboard's login sessions, in the database so that every coordinator
    // replica knows them (keyed by the SHA-256 of the cookie's id).
    "CREATE TABLE dashboard_sessions (
        id_hash TEXT PRIMARY KEY NOT NULL,
        csrf TEXT NOT NULL,
        expires_at INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX dashboard_sessions_expires ON dashboard_sessions(expires_at);",
];

/// Longest chain of delta-stored snapshots: reading one applies at most this many deltas.
const MAX_DELTA_DEPTH: i64 = 16;

/// Readers kept open between requests. Opening one costs a schema parse and its statement
/// cache, which showed in profiles under load when only 8 were kept.
const MAX_IDLE_READERS: usize = 32;

/// Most changes committed in one transaction by the writer thread.
const MAX_BATCH: usize = 256;

/// What a queued change leaves for after the batch's `COMMIT`: its answer, given the
/// commit's error (if any).
type Deliver = Box<dyn FnOnce(Option<&ApiErr>) + Send>;
/// A change queued for the writer thread: runs inside the batch's transaction.
type Job = Box<dyn FnOnce(&Connection) -> Option<Deliver> + Send>;

/// The default WAL size past which the writer checkpoints (`wal_checkpoint_mib`).
#[cfg(test)]
pub const DEFAULT_WAL_LIMIT: u64 = 64 << 20;

/// The coordinator's database: SQLite (this module) or PostgreSQL (`db_pg`), with one way to
/// run a unit of work on either ([`Db::write`], [`Db::read`]).
#[derive(Clone)]
pub struct Db {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Sqlite(SqliteDb),
    Postgres(super::db_pg::PgDb),
}

#[derive(Clone)]
struct SqliteDb {
    path: Arc<PathBuf>,
    writer: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.engine {
            Engine::Sqlite(s) => f.debug_struct("Db").field("sqlite", &s.path).finish(),
            Engine::Postgres(p) => f.debug_struct("Db").field("postgres", p).finish(),
        }
    }
}

fn open_conn(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "coordinator database is not in WAL mode");
    }
    conn.execute_batch(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA trusted_schema = OFF;",
    )?;
    Ok(conn)
}

/// The schema version this build writes (the same for both databases: see `pg_schema`).
#[cfg(test)]
pub(crate) const SCHEMA_VERSION: usize = MIGRATIONS.len();

impl Db {
    /// Opens (creating if needed) the database and brings its schema up to date.
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<Self, CoordinatorError> {
        Self::open_with(path, DEFAULT_WAL_LIMIT)
    }

    /// Opens the PostgreSQL database at `url` (see `db_pg`).
    pub async fn open_postgres(
        url: &str,
        opts: &super::db_pg::PgOptions,
    ) -> Result<Self, CoordinatorError> {
        Ok(Self {
            engine: Engine::Postgres(super::db_pg::PgDb::open(url, opts).await?),
        })
    }

    /// The PostgreSQL database, for what only replicas need (the bus between them).
    pub(crate) fn postgres(&self) -> Option<&super::db_pg::PgDb> {
        match &self.engine {
            Engine::Postgres(p) => Some(p),
            Engine::Sqlite(_) => None,
        }
    }

    /// [`Db::open`], with the WAL kept near `wal_limit` bytes (0: no limit; see the module
    /// documentation).
    pub fn open_with(path: &Path, wal_limit: u64) -> Result<Self, CoordinatorError> {
        let db_err = |e: rusqlite::Error| CoordinatorError::Database {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| CoordinatorError::Database {
                path: path.to_owned(),
                detail: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let mut conn = open_conn(path).map_err(db_err)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(CoordinatorError::NewerSchema {
                path: path.to_owned(),
                found,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = conn.transaction().map_err(db_err)?;
            tx.execute_batch(sql).map_err(db_err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            tracing::info!(path = %path.display(), version = i + 1, "migrated coordinator database");
        }
        // The writer never checkpoints on commit; `Db::checkpoint` does it off the write path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db_err)?;
        conn.pragma_update(None, "cache_size", -16_384)
            .map_err(db_err)?;
        if wal_limit > 0 {
            conn.query_row(
                &format!("PRAGMA journal_size_limit = {wal_limit}"),
                [],
                |_| Ok(()),
            )
            .map_err(db_err)?;
        }
        let wal = WalLimit {
            path: wal_path(path),
            limit: wal_limit,
        };
        let (writer, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pacpool-db-writer".into())
            .spawn(move || run_writer(Connection::Sqlite(conn), jobs, wal))
            .map_err(|e| CoordinatorError::Database {
                path: path.to_owned(),
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            engine: Engine::Sqlite(SqliteDb {
                path: Arc::new(path.to_owned()),
                writer,
                readers: Arc::new(Mutex::new(Vec::new())),
            }),
        })
    }

    /// Runs `f` as one atomic unit of work and returns after it committed; its changes are
    /// rolled back when `f` returns `Err`.
    ///
    /// SQLite: in a `BEGIN IMMEDIATE` transaction on the writer connection (shared with other
    /// changes queued at the same time: see the module documentation), so `f` never runs
    /// concurrently with another change. PostgreSQL: in a `SERIALIZABLE` transaction; when
    /// the database reports that it conflicted with a concurrent one, `f` runs again (so it
    /// must not have effects outside the database), and the outcome is the same as if every
    /// change had run one at a time, as on SQLite.
    pub async fn write<T, F>(&self, f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        let s = match &self.engine {
            Engine::Sqlite(s) => s,
            Engine::Postgres(p) => return p.write(f).await,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, ApiErr>>();
        let job: Job = Box::new(move |conn: &Connection| -> Option<Deliver> {
            match in_savepoint(conn, f) {
                Ok(v) => Some(Box::new(move |commit: Option<&ApiErr>| {
                    let _ = tx.send(match commit {
                        None => Ok(v),
                        Some(e) => Err(e.clone()),
                    });
                })),
                Err(e) => {
                    // Rolled back alone: the answer does not wait for the batch.
                    let _ = tx.send(Err(e));
                    None
                }
            }
        });
        s.writer
            .send(job)
            .map_err(|_| ApiErr::internal("the database writer has stopped: see the log"))?;
        rx.await.map_err(|_| {
            ApiErr::internal("a database change failed unexpectedly: see the coordinator log")
        })?
    }

    /// [`Db::write`] for a unit that touches only endpoint `endpoint`'s own rows (its state
    /// reports, its heartbeats) and whose rules concern only them. The same on SQLite; on
    /// PostgreSQL it runs `READ COMMITTED` after locking the endpoint's row, so one
    /// endpoint's units still run one at a time while different endpoints' never conflict
    /// (under `SERIALIZABLE`, PostgreSQL's page-level predicate locks made concurrent reports
    /// of different endpoints abort each other).
    pub async fn write_endpoint<T, F>(&self, endpoint: i64, f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        match &self.engine {
            Engine::Postgres(p) => p.write_endpoint(endpoint, f).await,
            Engine::Sqlite(_) => self.write(f).await,
        }
    }

    /// Copies committed WAL frames into the database file (PASSIVE: never waits for, or
    /// blocks, the writer or readers). The writer connection does not checkpoint itself, so
    /// the copying and its fsync stay off the write path; `launch` calls this periodically.
    /// Nothing to do on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), ApiErr> {
        let Engine::Sqlite(s) = &self.engine else {
            return Ok(());
        };
        s.read_plain(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Runs `f` in a read transaction, so all its statements see one consistent state
    /// (PostgreSQL: `REPEATABLE READ`, read only).
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        match &self.engine {
            // One read transaction: every statement in `f` sees the same committed state.
            Engine::Sqlite(s) => {
                s.read_plain(move |conn| in_transaction(conn, "BEGIN", f))
                    .await
            }
            Engine::Postgres(p) => p.read(f).await,
        }
    }
}

impl SqliteDb {
    /// Runs `f` on a reader connection, outside any transaction.
    async fn read_plain<T, F>(&self, f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let idle = readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match idle {
                Some(c) => c,
                None => Connection::Sqlite(open_conn(&path)?),
            };
            let out = f(&conn);
            let mut idle = readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS && raw(&conn).is_autocommit() {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| ApiErr::internal(format!("database task failed: {e}")))?
    }
}

/// The SQLite connection under a [`Connection`] of the SQLite engine.
fn raw(conn: &Connection) -> &rusqlite::Connection {
    match conn {
        Connection::Sqlite(c) => c,
        Connection::Postgres(_) => unreachable!("the SQLite engine only holds SQLite connections"),
    }
}

/// The `-wal` file next to the database.
fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Where the WAL is and the size past which the writer checkpoints it (0: never).
struct WalLimit {
    path: PathBuf,
    limit: u64,
}

impl WalLimit {
    /// After a commit: a `RESTART` checkpoint when the WAL file is past the limit. A
    /// checkpoint that could not finish (a reader stayed past `busy_timeout`) is retried
    /// after the next commit.
    fn check(&self, conn: &rusqlite::Connection) {
        if self.limit == 0 {
            return;
        }
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size <= self.limit {
            return;
        }
        let t = std::time::Instant::now();
        let done = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match done {
            Ok((0, frames, copied)) => tracing::debug!(
                wal_bytes = size,
                frames,
                copied,
                ms = t.elapsed().as_millis() as u64,
                "WAL checkpointed by the writer"
            ),
            Ok((_, frames, copied)) => tracing::info!(
                wal_bytes = size,
                frames,
                copied,
                "WAL checkpoint could not finish (readers stayed); retrying after the next write"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next write")
            }
        }
    }
}

/// Runs one statement without parameters through the statement cache.
fn exec_raw(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([]))?;
    Ok(())
}

/// The writer thread: takes queued changes in batches into one transaction each, until
/// every [`Db`] handle is gone.
fn run_writer(wrapped: Connection, jobs: mpsc::Receiver<Job>, wal: WalLimit) {
    let conn = raw(&wrapped);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut pending: Vec<Deliver> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = exec_raw(conn, "BEGIN IMMEDIATE") {
            let e = ApiErr::from(e);
            // Nothing ran: answer every change with the error (each delivers only on `Ok`,
            // so run none and drop them; their callers see a failed change).
            tracing::error!(error = %e, "cannot begin a write transaction");
            batch.clear();
            continue;
        }
        for job in batch.drain(..) {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&wrapped)));
            match ran {
                Ok(Some(deliver)) => pending.push(deliver),
                Ok(None) => {}
                Err(_) => {
                    // Its savepoint is still open: undo the change alone.
                    tracing::error!("a database change panicked; it was rolled back");
                    if !conn.is_autocommit() {
                        rollback_savepoint(conn);
                    }
                }
            }
            if conn.is_autocommit() {
                // The change's failure ended the whole transaction (SQLite rolls back on
                // some errors): the changes before it are gone too.
                let e = ApiErr::internal("a database transaction was rolled back: retry");
                for d in pending.drain(..) {
                    d(Some(&e));
                }
                if let Err(e) = exec_raw(conn, "BEGIN IMMEDIATE") {
                    // The rest of the batch is dropped unrun: their callers get an error
                    // (a change never runs outside a transaction).
                    tracing::error!(error = %e, "cannot begin a write transaction");
                    break;
                }
            }
        }
        // Changes left unrun by a `break` above are answered with an error when dropped.
        batch.clear();
        if conn.is_autocommit() {
            continue;
        }
        let failure = match exec_raw(conn, "COMMIT") {
            Ok(()) => None,
            Err(e) => {
                let e = ApiErr::from(e);
                if !conn.is_autocommit()
                    && let Err(e) = exec_raw(conn, "ROLLBACK")
                {
                    tracing::error!(error = %e, "cannot roll back a coordinator database transaction");
                }
                Some(e)
            }
        };
        for d in pending.drain(..) {
            d(failure.as_ref());
        }
        wal.check(conn);
    }
}

/// Runs `f` inside a savepoint of the current transaction: released when `f` returns `Ok`,
/// rolled back (alone) otherwise.
fn in_savepoint<T>(
    wrapped: &Connection,
    mut f: impl FnMut(&Connection) -> Result<T, ApiErr>,
) -> Result<T, ApiErr> {
    let conn = raw(wrapped);
    exec_raw(conn, "SAVEPOINT change")?;
    let out = f(wrapped);
    if conn.is_autocommit() {
        // SQLite already rolled the whole transaction back.
        return out.and(Err(ApiErr::internal(
            "a database transaction was rolled back: retry",
        )));
    }
    let out = out.and_then(|v| {
        exec_raw(conn, "RELEASE change")?;
        Ok(v)
    });
    if out.is_err() && !conn.is_autocommit() {
        rollback_savepoint(conn);
    }
    out
}

/// Undoes the innermost open `change` savepoint.
fn rollback_savepoint(conn: &rusqlite::Connection) {
    if let Err(e) =
        exec_raw(conn, "ROLLBACK TO change").and_then(|()| exec_raw(conn, "RELEASE change"))
    {
        tracing::error!(error = %e, "cannot roll back a database change");
    }
}

/// Runs `f` between `begin` and `COMMIT` (`ROLLBACK` when `f` or the commit fails), with
/// the statements cached rather than parsed per transaction.
fn in_transaction<T>(
    wrapped: &Connection,
    begin: &str,
    f: impl FnOnce(&Connection) -> Result<T, ApiErr>,
) -> Result<T, ApiErr> {
    let conn = raw(wrapped);
    exec_raw(conn, begin)?;
    let out = f(wrapped).and_then(|v| {
        exec_raw(conn, "COMMIT")?;
        Ok(v)
    });
    if out.is_err() && !conn.is_autocommit() {
        if let Err(e) = exec_raw(conn, "ROLLBACK") {
            tracing::error!(error = %e, "cannot roll back a coordinator database transaction");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Row helpers shared by the service functions. All take a [`Connection`] inside the
// caller's unit of work, and run on both databases.

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ApiErr {
    tracing::error!(%what, error = %e, "unreadable row in the coordinator database");
    ApiErr::internal(format!(
        "the coordinator database holds an unreadable {what}: see its log"
    ))
}

pub fn parse_hash(s: &str) -> Result<SnapshotHash, ApiErr> {
    s.parse().map_err(|e| corrupt("snapshot hash", e))
}

pub fn enum_to_sql<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => unreachable!("unit enum serializes as a string: {other:?}"),
    }
}

pub fn enum_from_sql<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, ApiErr> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| corrupt("enum", e))
}

pub fn policy_of(conn: &Connection, pool_id: i64) -> Result<Option<PoolPolicy>, ApiErr> {
    let text: Option<String> = conn
        .query_row("SELECT policy FROM pools WHERE id = ?1", [pool_id], |r| {
            r.get(0)
        })
        .optional()?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt("pool policy", e)))
        .transpose()
}

/// Stores a snapshot's canonical text under its hash (once: content-addressed). With
/// `from`, the snapshot came from applying that delta to a stored base: it is stored as the
/// delta (unless the base's chain is already [`MAX_DELTA_DEPTH`] long).
pub fn put_snapshot(
    conn: &Connection,
    snap: &SnapText,
    from: Option<(&SnapshotHash, &str)>,
) -> Result<(), ApiErr> {
    if let Some((base, delta_json)) = from {
        let depth: Option<i64> = conn
            .prepare_cached("SELECT depth FROM snapshots WHERE hash = ?1")?
            .query_row([base.to_hex()], |r| r.get(0))
            .optional()?;
        if let Some(depth) = depth.filter(|d| *d < MAX_DELTA_DEPTH) {
            conn.prepare_cached(
                "INSERT INTO snapshots (hash, body, package_count, created_at, base, delta, depth)
                 VALUES (?1, '', ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                snap.hash.to_hex(),
                snap.packages as i64,
                now(),
                base.to_hex(),
                delta_json,
                depth + 1
            ])?;
            return Ok(());
        }
    }
    conn.prepare_cached(
        "INSERT INTO snapshots (hash, body, package_count, created_at)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        snap.hash.to_hex(),
        &*snap.text,
        snap.packages as i64,
        now()
    ])?;
    Ok(())
}

/// A stored snapshot's text and package count (rebuilt from its base when stored as a
/// delta; every step's result hash is checked).
pub fn snapshot_row(
    conn: &Connection,
    hash: &SnapshotHash,
) -> Result<Option<(String, usize)>, ApiErr> {
    type Row = (String, i64, Option<String>, Option<String>);
    let mut stmt = conn
        .prepare_cached("SELECT body, package_count, base, delta FROM snapshots WHERE hash = ?1")?;
    let mut deltas = Vec::new();
    let mut at = *hash;
    let (body, count) = loop {
        let row: Option<Row> = stmt
            .query_row([at.to_hex()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((body, count, base, delta)) = row else {
            if deltas.is_empty() {
                return Ok(None);
            }
            return Err(corrupt("snapshot chain", format!("base {at} is missing")));
        };
        match (base, delta) {
            (Some(base), Some(delta)) => {
                let delta: crate::snapshot::Delta =
                    serde_json::from_str(&delta).map_err(|e| corrupt("snapshot delta", e))?;
                at = parse_hash(&base)?;
                deltas.push(delta);
                if deltas.len() as i64 > MAX_DELTA_DEPTH {
                    return Err(corrupt("snapshot chain", "longer than the maximum depth"));
                }
            }
            _ => break (body, count),
        }
    };
    let mut text = SnapText::stored(at, body, count as usize);
    for delta in deltas.iter().rev() {
        text =
            super::snaptext::apply_delta(&text, delta).map_err(|e| corrupt("snapshot delta", e))?;
    }
    let packages = text.packages;
    Ok(Some((text.text.to_string(), packages)))
}

pub fn snapshot_body(conn: &Connection, hash: &SnapshotHash) -> Result<Option<String>, ApiErr> {
    Ok(snapshot_row(conn, hash)?.map(|(body, _)| body))
}

const TARGET_COLS: &str = "t.pool_id, t.revision, t.snapshot, s.package_count, t.set_by_endpoint, \
     t.set_by, t.set_at, t.reverted_from";

type TargetRow = (i64, i64, String, i64, Option<i64>, String, i64, Option<i64>);

fn target_row(r: &Row<'_>) -> sql::Result<TargetRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn finish_target(row: TargetRow) -> Result<TargetInfo, ApiErr> {
    let (pool_id, revision, hash, count, set_by_endpoint, set_by, set_at, reverted_from) = row;
    Ok(TargetInfo {
        pool_id,
        revision: revision as u64,
        snapshot: parse_hash(&hash)?,
        package_count: count as u64,
        set_by_endpoint,
        set_by,
        set_at,
        reverted_from: reverted_from.map(|v| v as u64),
    })
}

/// The pool's newest target revision.
pub fn current_target(conn: &Connection, pool_id: i64) -> Result<Option<TargetInfo>, ApiErr> {
    let sql = format!(
        "SELECT {TARGET_COLS} FROM targets t JOIN snapshots s ON s.hash = t.snapshot
         WHERE t.pool_id = ?1 ORDER BY t.revision DESC LIMIT 1"
    );
    conn.prepare_cached(&sql)?
        .query_row([pool_id], target_row)
        .optional()?
        .map(finish_target)
        .transpose()
}

pub fn target_at(
    conn: &Connection,
    pool_id: i64,
    revision: u64,
) -> Result<Option<TargetInfo>, ApiErr> {
    let sql = format!(
        "SELECT {TARGET_COLS} FROM targets t JOIN snapshots s ON s.hash = t.snapshot
         WHERE t.pool_id = ?1 AND t.revision = ?2"
    );
    conn.prepare_cached(&sql)?
        .query_row(params![pool_id, revision as i64], target_row)
        .optional()?
        .map(finish_target)
        .transpose()
}

/// Target history, newest first.
pub fn targets(conn: &Connection, pool_id: i64) -> Result<Vec<TargetInfo>, ApiErr> {
    let sql = format!(
        "SELECT {TARGET_COLS} FROM targets t JOIN snapshots s ON s.hash = t.snapshot
         WHERE t.pool_id = ?1 ORDER BY t.revision DESC"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([pool_id], target_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(finish_target(row?)?);
    }
    Ok(out)
}

pub const OP_COLS: &str = "id, endpoint_id, pool_id, kind, state, progress, result, \
     idempotency_key, created_at, updated_at, to_snapshot, target_revision";

/// An `operations` row before its JSON and enum columns are parsed.
pub struct OpRow {
    id: i64,
    endpoint_id: i64,
    pool_id: i64,
    kind: String,
    state: String,
    progress: Option<String>,
    result: Option<String>,
    idempotency_key: Option<String>,
    created_at: i64,
    updated_at: i64,
    to_snapshot: Option<String>,
    target_revision: Option<i64>,
}

/// Reads the columns of [`OP_COLS`].
pub fn op_row(r: &Row<'_>) -> sql::Result<OpRow> {
    Ok(OpRow {
        id: r.get(0)?,
        endpoint_id: r.get(1)?,
        pool_id: r.get(2)?,
        kind: r.get(3)?,
        state: r.get(4)?,
        progress: r.get(5)?,
        result: r.get(6)?,
        idempotency_key: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        to_snapshot: r.get(10)?,
        target_revision: r.get(11)?,
    })
}

pub fn finish_op(row: OpRow) -> Result<Operation, ApiErr> {
    Ok(Operation {
        id: row.id,
        endpoint_id: row.endpoint_id,
        pool_id: row.pool_id,
        kind: enum_from_sql::<OperationKind>(&row.kind)?,
        state: enum_from_sql::<OperationState>(&row.state)?,
        progress: row
            .progress
            .map(|p| serde_json::from_str(&p).map_err(|e| corrupt("operation progress", e)))
            .transpose()?,
        result: row
            .result
            .map(|p| serde_json::from_str(&p).map_err(|e| corrupt("operation result", e)))
            .transpose()?,
        idempotency_key: row.idempotency_key,
        created_at: row.created_at,
        updated_at: row.updated_at,
        to_snapshot: row.to_snapshot.as_deref().map(parse_hash).transpose()?,
        target_revision: row.target_revision.map(|r| r as u64),
    })
}

pub fn operation(conn: &Connection, id: i64) -> Result<Option<Operation>, ApiErr> {
    let sql = format!("SELECT {OP_COLS} FROM operations WHERE id = ?1");
    conn.prepare_cached(&sql)?
        .query_row([id], op_row)
        .optional()?
        .map(finish_op)
        .transpose()
}

/// The endpoint's pending or in-progress operation, if any.
pub fn active_operation(conn: &Connection, endpoint_id: i64) -> Result<Option<Operation>, ApiErr> {
    let sql = format!(
        "SELECT {OP_COLS} FROM operations
         WHERE endpoint_id = ?1 AND state IN ('pending', 'in_progress') ORDER BY id DESC LIMIT 1"
    );
    conn.prepare_cached(&sql)?
        .query_row([endpoint_id], op_row)
        .optional()?
        .map(finish_op)
        .transpose()
}

/// The endpoint's newest finished operation's state, if any.
pub fn last_finished_state(
    conn: &Connection,
    endpoint_id: i64,
) -> Result<Option<OperationState>, ApiErr> {
    let s: Option<String> = conn
        .prepare_cached(
            "SELECT state FROM operations
             WHERE endpoint_id = ?1 AND state IN ('completed', 'failed', 'cancelled')
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([endpoint_id], |r| r.get(0))
        .optional()?;
    s.map(|s| enum_from_sql(&s)).transpose()
}

/// Appends an audit entry (in the caller's transaction, so it commits with the change);
/// returns its id.
pub fn audit(
    conn: &Connection,
    actor: &str,
    action: &str,
    subject: Option<String>,
    peer: Option<std::net::IpAddr>,
    detail: Option<String>,
) -> Result<i64, ApiErr> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO audit (at, actor, action, subject, peer, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             RETURNING id",
        )?
        .query_row(
            params![now(), actor, action, subject, peer.map(|p| p.to_string()), detail],
            |r| r.get(0),
        )?)
}

/// Records that endpoint `endpoint` moved to `state`, with its `source` (JSON, bounded).
pub(crate) fn insert_state_change(
    conn: &Connection,
    endpoint: i64,
    state: &SnapshotHash,
    package_count: u64,
    source: Option<&str>,
) -> Result<(), ApiErr> {
    conn.prepare_cached(
        "INSERT INTO endpoint_changes (endpoint_id, at, state, package_count, source)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        endpoint,
        now(),
        state.to_hex(),
        package_count as i64,
        source
    ])?;
    // Bounded per endpoint whatever its report rate; retention also drops old rows.
    conn.prepare_cached(
        "DELETE FROM endpoint_changes WHERE endpoint_id = ?1 AND id <= (
            SELECT id FROM endpoint_changes WHERE endpoint_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![endpoint, STATE_CHANGES_KEPT])?;
    Ok(())
}

/// State changes kept per endpoint in `endpoint_changes` (drift attribution history).
pub const STATE_CHANGES_KEPT: i64 = 1000;

/// Endpoint `endpoint`'s recorded state changes, newest first, before `cursor` (an id).
pub(crate) fn state_changes(
    conn: &Connection,
    endpoint: i64,
    cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<crate::proto::StateChange>, ApiErr> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, state, package_count, source FROM endpoint_changes
         WHERE endpoint_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![endpoint, cursor.unwrap_or(i64::MAX), limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, at, state, package_count, source) = row?;
        out.push(crate::proto::StateChange {
            id,
            at,
            state: parse_hash(&state)?,
            package_count: package_count.max(0) as u64,
            // A row written by a newer coordinator reads as unknown rather than failing.
            source: source
                .map(|s| serde_json::from_str(&s).unwrap_or(crate::proto::ChangeSource::Unknown)),
        });
    }
    Ok(out)
}

pub fn audit_page(
    conn: &Connection,
    cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, ApiErr> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor, action, subject, peer, detail FROM audit
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![cursor.unwrap_or(i64::MAX), limit], |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            subject: r.get(4)?,
            peer: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<sql::Result<_>>()?)
}

/// A pool with its policy, current target and endpoint count.
pub fn pool(conn: &Connection, id: i64) -> Result<Option<crate::proto::Pool>, ApiErr> {
    let row: Option<(String, String, i64)> = conn
        .prepare_cached("SELECT name, policy, created_at FROM pools WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((name, policy, created_at)) = row else {
        return Ok(None);
    };
    let policy = serde_json::from_str(&policy).map_err(|e| {
        tracing::error!(pool = id, error = %e, "stored pool policy is unreadable");
        ApiErr::internal("a stored pool policy is unreadable: see the coordinator log")
    })?;
    let endpoint_count: i64 = conn
        .prepare_cached("SELECT count(*) FROM endpoints WHERE pool_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    Ok(Some(crate::proto::Pool {
        id,
        name,
        policy,
        target: current_target(conn, id)?,
        endpoint_count: endpoint_count as u64,
        created_at,
    }))
}

/// What the audit log's filters ask for; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
}

/// A keyset page of the audit log, newest first, below id `cursor`: each filter given adds
/// its condition (so SQLite uses the `audit_actor` / `audit_action` / `audit_subject` index
/// for it), and the page never counts or skips rows, so any page of a million-row log costs
/// about as much as the first.
pub fn audit_filtered(
    conn: &Connection,
    f: &AuditFilter,
    cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, ApiErr> {
    let mut sql = String::from(
        "SELECT id, at, actor, action, subject, peer, detail FROM audit WHERE id < ?1",
    );
    let mut args: Vec<sql::Value<'static>> = vec![sql::Value::Int(cursor.unwrap_or(i64::MAX))];
    let mut add = |cond: &str, v: sql::Value<'static>| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ?{}", args.len()));
    };
    if let Some(a) = &f.actor {
        add("actor =", sql::Value::Text(a.clone().into()));
    }
    if let Some(a) = &f.action {
        add("action =", sql::Value::Text(a.clone().into()));
    }
    if let Some(a) = &f.subject {
        add("subject =", sql::Value::Text(a.clone().into()));
    }
    if let Some(t) = f.since {
        add("at >=", sql::Value::Int(t));
    }
    if let Some(t) = f.until {
        add("at <", sql::Value::Int(t));
    }
    args.push(sql::Value::Int(limit));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(sql::params_from_iter(args), |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            subject: r.get(4)?,
            peer: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<sql::Result<_>>()?)
}

/// States kept per endpoint in `endpoint_states` (the dashboard's state history); older
/// rows are dropped as new ones come, so the history never grows past this.
pub const STATE_HISTORY: i64 = 50;

/// Records an endpoint's new state in its history, with what explains it: its first report
/// (`first`), or one of its operations running now or finished within the last two minutes
/// (the daemon reports the state an operation left just before or after its result), or
/// neither: the state changed on the machine itself (pacman run by hand, or another tool).
pub fn record_state(
    tx: &Connection,
    endpoint: i64,
    hash: &SnapshotHash,
    packages: i64,
    first: bool,
) -> Result<(), ApiErr> {
    let t = now();
    let operation: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM operations WHERE endpoint_id = ?1
               AND (state = 'in_progress' OR (state IN ('completed', 'failed') AND updated_at >= ?2))
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![endpoint, t - 120], |r| r.get(0))
        .optional()?;
    tx.prepare_cached(
        "INSERT INTO endpoint_states (endpoint_id, at, snapshot, package_count, operation_id, first)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![endpoint, t, hash.to_hex(), packages, operation, first])?;
    tx.prepare_cached(
        "DELETE FROM endpoint_states WHERE endpoint_id = ?1 AND id <= (
            SELECT id FROM endpoint_states WHERE endpoint_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![endpoint, STATE_HISTORY])?;
    Ok(())
}

/// Stores `manifest` (already validated) as revision `revision`'s of pool `pool_id`.
pub(crate) fn put_manifest(
    tx: &Connection,
    pool_id: i64,
    revision: u64,
    gzipped_json: &[u8],
) -> sql::Result<()> {
    tx.prepare_cached(
        "INSERT INTO target_manifests (pool_id, revision, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (pool_id, revision) DO UPDATE SET body = excluded.body",
    )?
    .execute(params![pool_id, revision as i64, gzipped_json])?;
    Ok(())
}

/// Copies revision `from`'s manifest (if any) to revision `to` of the same pool.
pub(crate) fn copy_manifest(tx: &Connection, pool_id: i64, from: u64, to: u64) -> sql::Result<()> {
    tx.prepare_cached(
        "INSERT INTO target_manifests (pool_id, revision, body)
         SELECT pool_id, ?3, body FROM target_manifests WHERE pool_id = ?1 AND revision = ?2
         ON CONFLICT (pool_id, revision) DO UPDATE SET body = excluded.body",
    )?
    .execute(params![pool_id, from as i64, to as i64])?;
    Ok(())
}

/// The stored (gzipped JSON) manifest of a pool's revision.
pub(crate) fn manifest_body(
    conn: &Connection,
    pool_id: i64,
    revision: u64,
) -> sql::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT body FROM target_manifests WHERE pool_id = ?1 AND revision = ?2")?
        .query_row(params![pool_id, revision as i64], |r| r.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{PackageState, Snapshot};

    fn state(round: usize) -> Snapshot {
        Snapshot::new(
            (0..50)
                .map(|i| PackageState {
                    name: format!("p{i:02}").parse().unwrap(),
                    version: format!("{}.{i}-1", if i == round % 50 { round } else { 1 })
                        .parse()
                        .unwrap(),
                    arch: "x86_64".parse().unwrap(),
                    reason: crate::localdb::Reason::Explicit,
                    repo: None,
                })
                .collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn state_change_history_is_bounded_per_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.db")).unwrap();
        let hash = state(0).hash();
        let (kept, other) = db
            .write(move |tx| {
                tx.execute_batch(
                    "INSERT INTO pools (id, name, policy, created_at) VALUES (1, 'p', '{}', 0);
                     INSERT INTO endpoints (id, pool_id, name, token_hash, created_at)
                       VALUES (1, 1, 'a', 'h1', 0), (2, 1, 'b', 'h2', 0);",
                )?;
                insert_state_change(tx, 2, &hash, 50, None)?;
                for _ in 0..STATE_CHANGES_KEPT + 25 {
                    insert_state_change(tx, 1, &hash, 50, Some("{\"kind\":\"unknown\"}"))?;
                }
                let count = |e: i64| -> sql::Result<i64> {
                    tx.query_row(
                        "SELECT count(*) FROM endpoint_changes WHERE endpoint_id = ?1",
                        [e],
                        |r| r.get(0),
                    )
                };
                Ok((count(1)?, count(2)?))
            })
            .await
            .unwrap();
        assert_eq!((kept, other), (STATE_CHANGES_KEPT, 1));
    }

    #[tokio::test]
    async fn delta_stored_snapshots_read_back_exactly_and_chains_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.db")).unwrap();
        let states: Vec<Snapshot> = (0..40).map(state).collect();
        let all = states.clone();
        db.write(move |tx| {
            put_snapshot(tx, &SnapText::from_snapshot(&all[0]), None)?;
            for w in all.windows(2) {
                let delta = serde_json::to_string(&w[0].diff(&w[1])).unwrap();
                put_snapshot(
                    tx,
                    &SnapText::from_snapshot(&w[1]),
                    Some((&w[0].hash(), delta.as_str())),
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let rows = db
            .read(move |conn| {
                let mut out = Vec::new();
                for s in &states {
                    let (text, count) = snapshot_row(conn, &s.hash())?.unwrap();
                    assert_eq!(text, s.encode());
                    assert_eq!(count, s.len());
                    let depth: i64 = conn.query_row(
                        "SELECT depth FROM snapshots WHERE hash = ?1",
                        [s.hash().to_hex()],
                        |r| r.get(0),
                    )?;
                    let body_len: i64 = conn.query_row(
                        "SELECT length(body) FROM snapshots WHERE hash = ?1",
                        [s.hash().to_hex()],
                        |r| r.get(0),
                    )?;
                    out.push((depth, body_len > 0));
                }
                Ok(out)
            })
            .await
            .unwrap();
        // Full, then deltas up to the maximum depth, then full again.
        assert_eq!(rows[0], (0, true));
        assert_eq!(rows[1], (1, false));
        assert_eq!(rows[MAX_DELTA_DEPTH as usize], (MAX_DELTA_DEPTH, false));
        assert_eq!(rows[MAX_DELTA_DEPTH as usize + 1], (0, true));
        assert!(rows.iter().all(|(d, _)| *d <= MAX_DELTA_DEPTH));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let db = Db::open(&path).unwrap();
        // 200 changes at once (so batches form); every fifth writes a row and then fails,
        // and must leave nothing behind, while the others commit.
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |tx| {
                    audit(tx, "test", "group", Some(format!("{i}")), None, None)?;
                    if i % 5 == 0 {
                        return Err(ApiErr::invalid("refused"));
                    }
                    Ok(i)
                })
                .await
            }));
        }
        let mut ok = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, i as i64);
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(i % 5, 0);
                    assert_eq!(e.message, "refused");
                }
            }
        }
        assert_eq!(ok, 160);
        // Every acknowledged change is visible to a new connection (committed), and no
        // refused one is.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let subjects: Vec<i64> = conn
            .prepare("SELECT CAST(subject AS INTEGER) FROM audit WHERE action = 'group'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(subjects.len(), 160);
        assert!(subjects.iter().all(|i| i % 5 != 0));
        // A panicking change is rolled back alone and answered with an error.
        let r = db
            .write(|tx| -> Result<(), ApiErr> {
                audit(tx, "test", "panic", None, None, None)?;
                panic!("a bug in a change");
            })
            .await;
        assert!(r.is_err());
        db.write(|tx| audit(tx, "test", "after", None, None, None))
            .await
            .unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM audit WHERE action IN ('panic', 'after')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_bounds_the_wal_while_readers_keep_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let limit = 1 << 20;
        let db = Db::open_with(&path, limit).unwrap();
        // A reader that always has a read transaction open: passive checkpoints alone could
        // never restart the WAL.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let conn = open_conn(&path).unwrap();
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n: i64 = conn
                        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
                        .unwrap();
                    assert!(n >= 0);
                    reads += 1;
                }
                reads
            })
        };
        let mut largest = 0;
        // 24 MiB of rows, 64 KiB per transaction.
        for i in 0..384 {
            db.write(move |tx| {
                for j in 0..16 {
                    audit(
                        tx,
                        "test",
                        "wal",
                        Some(format!("{i}/{j}")),
                        None,
                        Some("x".repeat(4096)),
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
            largest = largest.max(std::fs::metadata(wal_path(&path)).unwrap().len());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert!(
            largest <= 2 * limit,
            "the WAL reached {largest} bytes with a limit of {limit}"
        );
    }

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.db");
        drop(Db::open(&path).unwrap());
        drop(Db::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            Db::open(&path),
            Err(CoordinatorError::NewerSchema { found: 99, .. })
        ));
    }
}
