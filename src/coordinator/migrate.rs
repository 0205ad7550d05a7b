//! `pacpool-coordinator migrate --from sqlite:PATH --to postgres://…`: copies a stopped
//! coordinator's SQLite database into an empty PostgreSQL database, then proves the copy
//! by counting and hashing every table on both sides.
//!
//! Everything is copied as is, ids and token hashes included, so endpoints keep working
//! without registering again and admins keep their join tokens. The copy is one
//! PostgreSQL transaction: it lands whole or not at all. Tables go in the order their
//! references need (a snapshot stored as a delta after its base), then each identity
//! sequence is moved past the copied ids, so new rows never collide with old ones.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::db::MIGRATIONS;
use super::db_pg::{PgDb, PgOptions};
use super::error::ApiErr;
use super::sql::{self, Connection, Value, params_from_iter};

/// Each table with the order its rows are copied and hashed in, parents before children.
const TABLES: &[(&str, &str)] = &[
    ("pools", "id"),
    ("snapshots", "depth, hash"),
    ("join_tokens", "id"),
    ("endpoints", "id"),
    ("targets", "pool_id, revision"),
    ("target_manifests", "pool_id, revision"),
    ("operations", "id"),
    ("audit", "id"),
    ("endpoint_changes", "id"),
    ("rollouts", "pool_id, revision"),
    ("holds", "endpoint_id"),
    ("endpoint_states", "id"),
    ("dashboard_sessions", "id_hash"),
];

/// Tables whose `id` is an identity column (sequences to move past the copied ids).
const IDENTITY: &[&str] = &[
    "pools",
    "join_tokens",
    "endpoints",
    "operations",
    "audit",
    "endpoint_changes",
    "endpoint_states",
];

/// Rows per INSERT statement.
const BATCH: usize = 200;

/// What the copy found in one table on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    pub table: &'static str,
    pub rows: u64,
    pub sha256: String,
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Refused(String),
    #[error(
        "table {table}: the copy has {to_rows} rows (sha256 {to_sha}), the source {from_rows} (sha256 {from_sha})"
    )]
    Mismatch {
        table: &'static str,
        from_rows: u64,
        from_sha: String,
        to_rows: u64,
        to_sha: String,
    },
    #[error(transparent)]
    Start(#[from] super::error::CoordinatorError),
    #[error("{0}")]
    Database(String),
}

impl From<ApiErr> for MigrateError {
    fn from(e: ApiErr) -> Self {
        Self::Database(e.message)
    }
}

impl From<sql::Error> for MigrateError {
    fn from(e: sql::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// `sqlite:PATH` (or a plain path) → the path.
pub fn sqlite_path(from: &str) -> Result<PathBuf, MigrateError> {
    let path = from.strip_prefix("sqlite:").unwrap_or(from);
    if path.is_empty() || super::db_pg::is_postgres_url(path) {
        return Err(MigrateError::Refused(format!(
            "--from {from:?} is not a SQLite database: write --from sqlite:/var/lib/pacpool-coordinator/coordinator.db"
        )));
    }
    Ok(PathBuf::from(path))
}

/// Copies `from` (a SQLite file of a stopped coordinator) into the empty PostgreSQL
/// database at `to`; returns each table's rows and hash, equal on both sides.
pub async fn migrate(
    from: &Path,
    to: &str,
    ca_file: Option<PathBuf>,
) -> Result<Vec<TableCheck>, MigrateError> {
    if !super::db_pg::is_postgres_url(to) {
        return Err(MigrateError::Refused(format!(
            "--to must be a PostgreSQL URL (postgres://USER:PASSWORD@HOST/DATABASE), not {to:?}"
        )));
    }
    let source = open_source(from)?;
    let target = PgDb::open(
        to,
        &PgOptions {
            pool_size: 2,
            ca_file,
            application_name: "pacpool-coordinator migrate".into(),
        },
    )
    .await?;
    let to = target.session().await?;
    tokio::task::spawn_blocking(move || {
        let Connection::Postgres(session) = &to else {
            unreachable!("the target is PostgreSQL")
        };
        // One transaction: copied and checked, then committed, or nothing at all.
        session.begin("BEGIN ISOLATION LEVEL SERIALIZABLE")?;
        let checked = copy_tables(&source, &to).and_then(|()| check(&source, &to));
        match checked {
            Ok(out) => {
                session.commit()?;
                Ok(out)
            }
            Err(e) => {
                session.rollback();
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| MigrateError::Database(format!("the copy stopped unexpectedly: {e}")))?
}

fn open_source(path: &Path) -> Result<Connection, MigrateError> {
    if !path.is_file() {
        return Err(MigrateError::Refused(format!(
            "{} does not exist: give the coordinator's SQLite database (`database` in its configuration)",
            path.display()
        )));
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| MigrateError::Refused(format!("cannot open {}: {e}", path.display())))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| {
            MigrateError::Refused(format!("{} is not a SQLite database: {e}", path.display()))
        })?;
    if version != MIGRATIONS.len() as i64 {
        return Err(MigrateError::Refused(format!(
            "{} has schema version {version}, this pacpool-coordinator writes {}: start this version of \
             the coordinator on it once (it upgrades the file), stop it, then migrate",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    // One transaction that holds the write lock: the copy and its check see the same state,
    // and a coordinator still writing to the file makes the tool stop here instead of
    // losing what it writes during the copy. Nothing is written.
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(|e| MigrateError::Database(e.to_string()))?;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
        MigrateError::Refused(format!(
            "cannot lock {} ({e}): is the coordinator still running? stop it first",
            path.display()
        ))
    })?;
    Ok(Connection::Sqlite(conn))
}

/// The column names of `table` in the SQLite source (the PostgreSQL twin has the same).
fn columns(source: &Connection, table: &str) -> Result<Vec<String>, MigrateError> {
    let mut stmt = source.prepare(&format!(
        "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
    ))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<sql::Result<Vec<_>>>()?;
    Ok(names)
}

/// Every table's rows and hash, equal on both sides.
fn check(source: &Connection, to: &Connection) -> Result<Vec<TableCheck>, MigrateError> {
    let mut out = Vec::new();
    for (table, order) in TABLES {
        let (from_rows, from_sha) = digest(source, table, order)?;
        let (to_rows, to_sha) = digest(to, table, order)?;
        if (from_rows, &from_sha) != (to_rows, &to_sha) {
            return Err(MigrateError::Mismatch {
                table,
                from_rows,
                from_sha,
                to_rows,
                to_sha,
            });
        }
        out.push(TableCheck {
            table,
            rows: to_rows,
            sha256: to_sha,
        });
    }
    Ok(out)
}

fn copy_tables(source: &Connection, to: &Connection) -> Result<(), MigrateError> {
    for (table, _) in TABLES {
        let n: i64 = to.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        if n > 0 {
            return Err(MigrateError::Refused(format!(
                "the target database is not empty ({table} has {n} rows): migrate into a new, empty database"
            )));
        }
    }
    for (table, order) in TABLES {
        let cols = columns(source, table)?;
        let list = cols.join(", ");
        let mut read = source.prepare(&format!("SELECT {list} FROM {table} ORDER BY {order}"))?;
        let rows = read.query_map([], |r| {
            (0..cols.len())
                .map(|i| r.get::<_, Value<'static>>(i))
                .collect::<sql::Result<Vec<_>>>()
        })?;
        let mut batch: Vec<Vec<Value<'static>>> = Vec::with_capacity(BATCH);
        let flush = |batch: &mut Vec<Vec<Value<'static>>>| -> Result<(), MigrateError> {
            if batch.is_empty() {
                return Ok(());
            }
            let width = cols.len();
            let values = (0..batch.len())
                .map(|r| {
                    let ps: Vec<String> =
                        (1..=width).map(|c| format!("?{}", r * width + c)).collect();
                    format!("({})", ps.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            to.execute(
                &format!("INSERT INTO {table} ({list}) VALUES {values}"),
                params_from_iter(batch.drain(..).flatten()),
            )?;
            Ok(())
        };
        for row in rows {
            batch.push(row?);
            if batch.len() == BATCH {
                flush(&mut batch)?;
            }
        }
        flush(&mut batch)?;
    }
    for table in IDENTITY {
        to.query_row(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 1), max(id) IS NOT NULL) FROM {table}"
            ),
            [],
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// Rows and a SHA-256 over every row of `table` in `order`, each row as one line of
/// canonical values (integers as numbers, text as JSON strings, bytes as hex, NULL).
fn digest(conn: &Connection, table: &str, order: &str) -> Result<(u64, String), MigrateError> {
    let cols = match conn {
        Connection::Sqlite(_) => columns(conn, table)?,
        Connection::Postgres(_) => {
            let mut stmt = conn.prepare(
                "SELECT column_name FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY column_name",
            )?;
            let mut names = stmt
                .query_map([table], |r| r.get::<_, String>(0))?
                .collect::<sql::Result<Vec<_>>>()?;
            names.sort();
            names
        }
    };
    let mut cols = cols;
    cols.sort();
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM {table} ORDER BY {order}",
        cols.join(", ")
    ))?;
    let mut hash = Sha256::new();
    let mut rows = 0u64;
    for line in stmt.query_map([], |r| {
        let mut line = String::new();
        for i in 0..cols.len() {
            match r.get::<_, Value<'static>>(i)? {
                Value::Null => line.push_str("null"),
                Value::Int(v) => line.push_str(&v.to_string()),
                Value::Real(v) => line.push_str(&v.to_string()),
                Value::Text(t) => {
                    line.push_str(&serde_json::Value::String(t.into_owned()).to_string())
                }
                Value::Blob(b) => {
                    line.push('x');
                    line.push_str(&hex::encode(b));
                }
            }
            line.push(',');
        }
        Ok(line)
    })? {
        hash.update(line?.as_bytes());
        hash.update(b"\n");
        rows += 1;
    }
    Ok((rows, hex::encode(hash.finalize())))
}
