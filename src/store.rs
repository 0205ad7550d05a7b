//! The endpoint's local store: a SQLite file (WAL) holding the snapshot history.
//!
//! Snapshot bodies are stored once per hash however often the machine returns to that
//! state; the history table records when each state was seen and why it was taken.
//! Schema changes are numbered migrations tracked in `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::snapshot::{Snapshot, SnapshotError, SnapshotHash};

/// Each entry upgrades the schema by one version; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 1: snapshot bodies and the history of states.
    "CREATE TABLE snapshots (
        hash TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL,
        package_count INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        hash TEXT NOT NULL REFERENCES snapshots(hash),
        taken_at INTEGER NOT NULL,
        trigger TEXT NOT NULL
     ) STRICT;
     CREATE INDEX history_hash ON history(hash);",
    // 2: daemon state: small settings, the outbox of unsent messages, local operations.
    "CREATE TABLE kv (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
     ) STRICT;
     CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE operations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        started_at INTEGER NOT NULL,
        finished_at INTEGER
     ) STRICT;",
    // 3: where each recorded state came from (`ChangeSource` as JSON; NULL for older rows
    // and the first state recorded), and the snapper snapshot of the file system in that
    // state (`SnapperRef` as JSON), when one was taken.
    "ALTER TABLE history ADD COLUMN source TEXT;
     ALTER TABLE history ADD COLUMN snapper TEXT;",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path} is locked by another process: is another pacpoold running?")]
    Locked { path: PathBuf },
    #[error(
        "state database {path} is read-only: check the file and directory permissions and free space"
    )]
    ReadOnly { path: PathBuf },
    #[error(
        "state database {path} is corrupt ({detail}): move it aside and restart to begin a new history"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state database {path} has schema version {found}, newer than this pacpool ({supported}): upgrade pacpool"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("the disk holding {path} is full: free some space")]
    Full { path: PathBuf },
    #[error(
        "state database {path} is on a read-only file system: remount it read-write, or set state_dir in pacpoold.toml to a writable directory"
    )]
    ReadOnlyFs { path: PathBuf },
    #[error(
        "cannot open state database {path} ({detail}): check that its directory exists and pacpoold may write there"
    )]
    CantOpen { path: PathBuf, detail: String },
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path} holds an unreadable snapshot {hash}: {source}")]
    BadSnapshot {
        path: PathBuf,
        hash: String,
        #[source]
        source: SnapshotError,
    },
}

/// One row of the snapshot history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub hash: SnapshotHash,
    /// Unix seconds.
    pub taken_at: i64,
    /// Why the snapshot was taken: `start`, `hook`, `timer`, `sync`, `revert`, …
    pub trigger: String,
    pub package_count: i64,
    /// Where the change to this state came from: a pacpool operation, pacman run on the
    /// machine (its command lines from pacman.log), or unknown. None for the first state and
    /// states recorded by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::proto::ChangeSource>,
    /// The snapper snapshot of the file system in this state (a sync's or revert's `pre`
    /// snapshot for the state it left, its `post` snapshot for the state it made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapper: Option<crate::snapper::SnapperRef>,
}

/// Whether recording a snapshot added a history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The state differs from the newest entry: a new entry was added.
    New(HistoryEntry),
    /// The state equals the newest entry: nothing was written.
    Unchanged(HistoryEntry),
}

impl Recorded {
    pub fn entry(&self) -> &HistoryEntry {
        match self {
            Recorded::New(e) | Recorded::Unchanged(e) => e,
        }
    }
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
        let mut store = Self {
            conn,
            path: path.to_owned(),
        };
        store.init().map_err(|e| classify(path, e))?;
        store.migrate()?;
        Ok(store)
    }

    fn init(&mut self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(Duration::from_secs(5))?;
        // Reading the mode forces SQLite to read the header, so a corrupt file fails here.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %self.path.display(), %mode, "state database is not in WAL mode");
        }
        self.conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA trusted_schema = OFF;",
        )
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| classify(&self.path, e)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let found: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(&path, e))?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StoreError::NewerSchema {
                path,
                found,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction().map_err(|e| classify(&path, e))?;
            tx.execute_batch(sql).map_err(|e| classify(&path, e))?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(|e| classify(&path, e))?;
            tx.commit().map_err(|e| classify(&path, e))?;
            tracing::info!(path = %path.display(), version = i + 1, "migrated state database");
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `snap` as the state seen at `taken_at` (Unix seconds), unless it equals the
    /// newest entry. `source` is asked only for a new entry, with the newest entry before it.
    pub fn record(
        &mut self,
        snap: &Snapshot,
        trigger: &str,
        taken_at: i64,
        source: impl FnOnce(Option<&HistoryEntry>) -> Option<crate::proto::ChangeSource>,
    ) -> Result<Recorded, StoreError> {
        let hash = snap.hash();
        let latest = self.latest_entry()?;
        if let Some(latest) = &latest
            && latest.hash == hash
        {
            return Ok(Recorded::Unchanged(latest.clone()));
        }
        let source = source(latest.as_ref());
        let source_json = source
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        let path = self.path.clone();
        let e = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute(
            "INSERT OR IGNORE INTO snapshots (hash, body, package_count) VALUES (?1, ?2, ?3)",
            params![hash.to_hex(), snap.encode(), snap.len() as i64],
        )
        .map_err(e)?;
        tx.execute(
            "INSERT INTO history (hash, taken_at, trigger, source) VALUES (?1, ?2, ?3, ?4)",
            params![hash.to_hex(), taken_at, trigger, source_json],
        )
        .map_err(e)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(e)?;
        Ok(Recorded::New(HistoryEntry {
            id,
            hash,
            taken_at,
            trigger: trigger.to_owned(),
            package_count: snap.len() as i64,
            source,
            snapper: None,
        }))
    }

    /// History entries, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT h.id, h.hash, h.taken_at, h.trigger, s.package_count, h.source, h.snapper
                 FROM history h JOIN snapshots s ON s.hash = h.hash
                 ORDER BY h.id DESC LIMIT ?1",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, hash, taken_at, trigger, package_count, source, snapper) =
                row.map_err(self.err())?;
            out.push(HistoryEntry {
                id,
                hash: self.parse_hash(&hash)?,
                taken_at,
                trigger,
                package_count,
                source: source.and_then(|s| serde_json::from_str(&s).ok()),
                snapper: snapper.and_then(|s| serde_json::from_str(&s).ok()),
            });
        }
        Ok(out)
    }

    fn parse_hash(&self, hash: &str) -> Result<SnapshotHash, StoreError> {
        hash.parse().map_err(|source| StoreError::BadSnapshot {
            path: self.path.clone(),
            hash: hash.chars().take(64).collect(),
            source,
        })
    }

    pub fn latest_entry(&self) -> Result<Option<HistoryEntry>, StoreError> {
        Ok(self.history(1)?.into_iter().next())
    }

    /// The entry before the newest one: what "revert to previous" goes back to.
    pub fn previous_entry(&self) -> Result<Option<HistoryEntry>, StoreError> {
        Ok(self.history(2)?.into_iter().nth(1))
    }

    /// The history entry with this id.
    pub fn entry(&self, id: i64) -> Result<Option<HistoryEntry>, StoreError> {
        // History is small (retention keeps it bounded), and one query shape keeps it simple.
        Ok(self
            .history(usize::MAX >> 1)?
            .into_iter()
            .find(|e| e.id == id))
    }

    /// Loads a snapshot body by hash.
    pub fn snapshot(&self, hash: &SnapshotHash) -> Result<Option<Snapshot>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT body FROM snapshots WHERE hash = ?1",
                [hash.to_hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        body.map(|b| {
            let snap = Snapshot::decode(&b).map_err(|source| StoreError::BadSnapshot {
                path: self.path.clone(),
                hash: hash.to_hex(),
                source,
            })?;
            if snap.hash() != *hash {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("snapshot {} does not match its hash", hash.short()),
                });
            }
            Ok(snap)
        })
        .transpose()
    }

    /// Keeps the newest `keep` history entries (at least one) and deletes the rest, then every
    /// snapshot body no entry refers to. Returns the number of history entries deleted.
    pub fn apply_retention(&mut self, keep: usize) -> Result<usize, StoreError> {
        let keep = keep.max(1) as i64;
        let path = self.path.clone();
        let e = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        let deleted = tx
            .execute(
                "DELETE FROM history WHERE id NOT IN (SELECT id FROM history ORDER BY id DESC LIMIT ?1)",
                [keep],
            )
            .map_err(e)?;
        tx.execute(
            "DELETE FROM snapshots WHERE NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = snapshots.hash)",
            [],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(deleted)
    }

    /// Number of distinct snapshot bodies stored.
    pub fn snapshot_count(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
            .map_err(self.err())
    }
}

/// A message waiting to be delivered to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub kind: String,
    /// JSON.
    pub body: String,
    pub created_at: i64,
}

/// A local operation (sync, set-latest, revert) as the daemon recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalOperation {
    pub id: i64,
    pub kind: String,
    /// `running`, `completed`, `failed`, `cancelled` or `interrupted`.
    pub state: String,
    pub message: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

impl Store {
    /// Records `snapshot` as the snapper snapshot of history entry `id`, unless it has one.
    pub fn set_snapper(
        &self,
        id: i64,
        snapshot: &crate::snapper::SnapperRef,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(snapshot).unwrap_or_default();
        self.conn
            .execute(
                "UPDATE history SET snapper = ?1 WHERE id = ?2 AND snapper IS NULL",
                params![json, id],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// The newest snapper snapshot recorded for a state with this hash.
    pub fn snapper_for(
        &self,
        hash: &SnapshotHash,
    ) -> Result<Option<crate::snapper::SnapperRef>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT snapper FROM history WHERE hash = ?1 AND snapper IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                [hash.to_hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// A small named value (endpoint id, cached target, acknowledged state…).
    pub fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    pub fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
            .map_err(self.err())
    }

    pub fn unset(&self, key: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM kv WHERE key = ?1", [key])
            .map(drop)
            .map_err(self.err())
    }

    /// Queues a message for the coordinator; it stays until [`Store::outbox_done`].
    pub fn outbox_push(&self, kind: &str, body: &str, now: i64) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO outbox (kind, body, created_at) VALUES (?1, ?2, ?3)",
                params![kind, body, now],
            )
            .map_err(self.err())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// How many messages wait in the outbox.
    pub fn outbox_len(&self) -> Result<usize, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(self.err())
    }

    /// The oldest queued messages, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, kind, body, created_at FROM outbox ORDER BY id LIMIT ?1")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(OutboxItem {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    body: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Replaces a queued message's kind and body (a running marker becoming its result).
    pub fn outbox_update(&self, id: i64, kind: &str, body: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE outbox SET kind = ?2, body = ?3 WHERE id = ?1",
                params![id, kind, body],
            )
            .map(drop)
            .map_err(self.err())
    }

    pub fn outbox_done(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map(drop)
            .map_err(self.err())
    }

    /// Records the start of a local operation.
    pub fn operation_begin(&self, kind: &str, now: i64) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO operations (kind, state, started_at) VALUES (?1, 'running', ?2)",
                params![kind, now],
            )
            .map_err(self.err())?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn operation_end(
        &self,
        id: i64,
        state: &str,
        message: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE operations SET state = ?2, message = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, state, message, now],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Marks operations left `running` by a daemon that died as `interrupted`, and returns them.
    pub fn interrupt_running(&self, now: i64) -> Result<Vec<LocalOperation>, StoreError> {
        let running: Vec<LocalOperation> = self
            .operations(1000)?
            .into_iter()
            .filter(|o| o.state == "running")
            .collect();
        for o in &running {
            self.operation_end(
                o.id,
                "interrupted",
                "the daemon stopped while this operation ran",
                now,
            )?;
        }
        Ok(running)
    }

    /// Local operations, newest first.
    pub fn operations(&self, limit: usize) -> Result<Vec<LocalOperation>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, kind, state, message, started_at, finished_at
                 FROM operations ORDER BY id DESC LIMIT ?1",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(LocalOperation {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    state: r.get(2)?,
                    message: r.get(3)?,
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

/// Maps SQLite's error codes to the errors a user can act on.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_owned();
    let code = e.sqlite_error_code();
    // A read-only mount shows up as "read-only", "cannot open" or an I/O error depending on
    // what SQLite tried first; the file system's flag says which it really is.
    if matches!(
        code,
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::SystemIoFailure)
    ) && on_read_only_fs(&path)
    {
        return StoreError::ReadOnlyFs { path };
    }
    match code {
        Some(ErrorCode::CannotOpen) => StoreError::CantOpen {
            path,
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked { path },
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path },
        Some(ErrorCode::DiskFull) => StoreError::Full { path },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path,
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite { path, source: e },
    }
}

/// Whether the file system holding `path` (or its directory) is mounted read-only.
fn on_read_only_fs(path: &Path) -> bool {
    let probe = if path.exists() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    rustix::fs::statvfs(probe)
        .is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localdb::Reason;
    use crate::snapshot::PackageState;

    fn snap(versions: &[(&str, &str)]) -> Snapshot {
        Snapshot::new(
            versions
                .iter()
                .map(|(n, v)| PackageState {
                    name: n.parse().unwrap(),
                    version: v.parse().unwrap(),
                    arch: "any".parse().unwrap(),
                    reason: Reason::Explicit,
                    repo: None,
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn records_dedups_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let a = snap(&[("a", "1-1")]);
        let b = snap(&[("a", "2-1")]);
        {
            let mut s = Store::open(&path).unwrap();
            assert!(matches!(
                s.record(&a, "start", 10, |_| None).unwrap(),
                Recorded::New(_)
            ));
            assert!(matches!(
                s.record(&a, "timer", 11, |_| None).unwrap(),
                Recorded::Unchanged(_)
            ));
            assert!(matches!(
                s.record(&b, "hook", 12, |_| None).unwrap(),
                Recorded::New(_)
            ));
            assert!(matches!(
                s.record(&a, "revert", 13, |_| None).unwrap(),
                Recorded::New(_)
            ));
            assert_eq!(s.snapshot_count().unwrap(), 2, "one body per hash");
        }
        let s = Store::open(&path).unwrap();
        let h = s.history(10).unwrap();
        assert_eq!(
            h.iter().map(|e| e.trigger.as_str()).collect::<Vec<_>>(),
            ["revert", "hook", "start"]
        );
        assert_eq!(s.previous_entry().unwrap().unwrap().hash, b.hash());
        assert_eq!(s.snapshot(&b.hash()).unwrap().unwrap(), b);
        assert_eq!(s.entry(h[2].id).unwrap().unwrap().taken_at, 10);
    }

    #[test]
    fn retention_keeps_referenced_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("state.db")).unwrap();
        for i in 0..10 {
            s.record(&snap(&[("a", &format!("{i}-1"))]), "timer", i, |_| None)
                .unwrap();
        }
        assert_eq!(s.apply_retention(3).unwrap(), 7);
        assert_eq!(s.history(100).unwrap().len(), 3);
        assert_eq!(s.snapshot_count().unwrap(), 3);
        for e in s.history(100).unwrap() {
            assert!(s.snapshot(&e.hash).unwrap().is_some());
        }
    }

    #[test]
    fn kv_outbox_and_operations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.set("endpoint_id", "7").unwrap();
            s.set("endpoint_id", "8").unwrap();
            let a = s.outbox_push("report", "{}", 1).unwrap();
            s.outbox_push("result", "{\"x\":1}", 2).unwrap();
            s.outbox_done(a).unwrap();
            let op = s.operation_begin("sync", 5).unwrap();
            let done = s.operation_begin("revert", 6).unwrap();
            s.operation_end(done, "completed", "ok", 7).unwrap();
            assert_eq!(s.operations(10).unwrap()[1].id, op);
        }
        // After a crash: the outbox survives, the running operation becomes interrupted.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get("endpoint_id").unwrap().as_deref(), Some("8"));
        assert!(s.get("nothing").unwrap().is_none());
        let items = s.outbox(10).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].kind, "result");
        let interrupted = s.interrupt_running(9).unwrap();
        assert_eq!(interrupted.len(), 1);
        assert_eq!(interrupted[0].kind, "sync");
        let ops = s.operations(10).unwrap();
        assert_eq!(ops[1].state, "interrupted");
        assert_eq!(ops[0].state, "completed");
        assert!(s.interrupt_running(10).unwrap().is_empty());
    }

    #[test]
    fn clear_errors_for_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let corrupt = dir.path().join("corrupt.db");
        std::fs::write(&corrupt, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&corrupt).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("move it aside"));

        let newer = dir.path().join("newer.db");
        Store::open(&newer)
            .unwrap()
            .conn
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&newer),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));

        // A second writer holding the write lock: the first gets Locked, not a hang.
        let shared = dir.path().join("shared.db");
        let mut s = Store::open(&shared).unwrap();
        s.conn.busy_timeout(Duration::from_millis(10)).unwrap();
        let other = Connection::open(&shared).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = s
            .record(&snap(&[("a", "1-1")]), "t", 1, |_| None)
            .unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    }
}
