//! The coordinator on PostgreSQL: a connection pool (deadpool-postgres over tokio-postgres),
//! the numbered schema of `pg_schema`, and units of work that behave like SQLite's.
//!
//! Architecture Invariant: a unit of work ([`PgDb::write`]) runs in a `SERIALIZABLE`
//! transaction. Any number of coordinator replicas may run the same rule at once (two
//! endpoints setting the target through two replicas); PostgreSQL then aborts all but one
//! with a serialization failure, and the loser's closure runs again on the new state, where
//! the rule answers as it would have on SQLite's one writer (409 for the race's loser). So
//! the rules need no locking of their own, on either database. A unit retried
//! [`MAX_ATTEMPTS`] times is answered 503 "busy: retry".
//!
//! Closures are synchronous (they are SQLite's too); each unit runs on a blocking thread
//! and waits for its statements (`sql::PgSession`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::error::{ApiErr, CoordinatorError};
use super::sql::{Connection, OptionalExtension, PgSession};

/// Times a unit of work runs before a conflicting one is answered 503.
const MAX_ATTEMPTS: u32 = 30;

/// A random key for this schema's migration lock (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x7061_6370_6f6f_6c01;

/// How a unit of work is isolated from concurrent ones.
#[derive(Clone, Copy, Debug)]
enum Isolation {
    /// As if units ran one at a time (any rule, any rows).
    Serializable,
    /// The unit touches only this endpoint's own rows (its reports, its heartbeats): its
    /// row is locked first, so the endpoint's units run one at a time, and other endpoints'
    /// never conflict with it.
    EndpointRow(i64),
}

/// How to connect, beyond the URL.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Connections per replica (0: the default, 16).
    pub pool_size: usize,
    /// A CA certificate (PEM) trusted besides the system's, for `sslmode=require`.
    pub ca_file: Option<std::path::PathBuf>,
    /// What `pg_stat_activity` shows for this replica's connections.
    pub application_name: String,
}

/// The database of a replica.
#[derive(Clone)]
pub struct PgDb {
    pool: Pool,
    config: Arc<tokio_postgres::Config>,
    tls: Tls,
    /// The URL without its password, for messages.
    shown: Arc<str>,
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// TLS to the database (`sslmode=require`, or `prefer`), or none.
#[derive(Clone)]
pub(crate) enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// `url` without its password (`postgres://user:secret@host/db` → `postgres://user:***@host/db`,
/// and `?password=secret` → `?password=***`).
pub fn redact(url: &str) -> String {
    let url = redact_userinfo(url);
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Whether a `database` setting names PostgreSQL rather than a SQLite file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

impl PgDb {
    /// Connects, checks the server, and brings the schema up to date (one replica at a time).
    pub async fn open(url: &str, opts: &PgOptions) -> Result<Self, CoordinatorError> {
        let shown: Arc<str> = redact(url).into();
        let fail = |detail: String| CoordinatorError::PostgresDatabase {
            url: shown.to_string(),
            detail,
        };
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            fail(format!(
                "not a valid PostgreSQL URL ({e}): write postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        if !opts.application_name.is_empty() && config.get_application_name().is_none() {
            config.application_name(&opts.application_name);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // Bounds on the server side: a unit waits at most 10 s for a row lock (then 503,
        // retried by the daemons), a session idle inside a transaction (a stuck replica) is
        // ended after a minute, and a replica that vanished without closing its connections
        // (a host crash, a partition) is noticed within about a minute, so its job locks
        // pass to another replica.
        let server = "-c lock_timeout=10s -c idle_in_transaction_session_timeout=60s \
                      -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3";
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {server}"),
            _ => server.to_owned(),
        };
        config.options(&options);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        // Over the network, TLS is required unless the URL says otherwise: tokio-postgres
        // would otherwise "prefer" it and carry on in plain text when the server (or a
        // machine in between) declines.
        let tcp = config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)));
        if tcp && !url.contains("sslmode=") {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => Tls::None,
            _ => {
                let client = crate::tls::client_config(opts.ca_file.as_deref())
                    .map_err(|e| fail(e.to_string()))?;
                Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (*client).clone(),
                ))
            }
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::None => {
                Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config)
            }
            Tls::Rustls(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
        };
        let size = if opts.pool_size == 0 {
            16
        } else {
            opts.pool_size
        };
        let pool = Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(Duration::from_secs(30)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| fail(format!("cannot build the connection pool: {e}")))?;
        let db = Self {
            pool,
            config: Arc::new(config),
            tls,
            shown: shown.clone(),
        };
        db.migrate().await.map_err(fail)?;
        Ok(db)
    }

    /// A new connection outside the pool (the bus listener), with its I/O task spawned.
    pub(crate) async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.connect_with(|_| {}).await
    }

    /// [`PgDb::connect`], handing every asynchronous message (notifications) to `on_message`.
    pub(crate) async fn connect_with(
        &self,
        on_message: impl FnMut(tokio_postgres::AsyncMessage) + Send + 'static,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        match &self.tls {
            Tls::None => {
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                spawn_connection(conn, on_message);
                Ok(client)
            }
            Tls::Rustls(t) => {
                let (client, conn) = self.config.connect(t.clone()).await?;
                spawn_connection(conn, on_message);
                Ok(client)
            }
        }
    }

    async fn migrate(&self) -> Result<(), String> {
        let mut client = self.pool.get().await.map_err(|e| {
            format!(
                "cannot connect: {}",
                crate::tls::connect_error_text_for(&e, "the database", "database_ca_file")
            )
        })?;
        let version: i32 = client
            .query_one("SHOW server_version_num", &[])
            .await
            .ok()
            .and_then(|r| r.get::<_, String>(0).parse().ok())
            .unwrap_or(0);
        if version < 120_000 {
            return Err(format!(
                "the server is PostgreSQL {}: pacpool needs 12 or newer",
                version / 10_000
            ));
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| format!("cannot start the schema migration: {e}"))?;
        let step = |e: tokio_postgres::Error| format!("schema migration failed: {e}");
        // Another replica may be migrating: wait for it however long it takes.
        tx.batch_execute("SET LOCAL lock_timeout = 0")
            .await
            .map_err(step)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(step)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS pacpool_schema (version BIGINT NOT NULL)")
            .await
            .map_err(step)?;
        let found: i64 = match tx
            .query_opt("SELECT version FROM pacpool_schema", &[])
            .await
            .map_err(step)?
        {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO pacpool_schema (version) VALUES (0)", &[])
                    .await
                    .map_err(step)?;
                0
            }
        };
        let supported = super::pg_schema::PG_MIGRATIONS.len() as i64;
        if found > supported {
            return Err(format!(
                "the database has schema version {found}, newer than this pacpool-coordinator ({supported}): upgrade pacpool-coordinator"
            ));
        }
        for (i, sql) in super::pg_schema::PG_MIGRATIONS
            .iter()
            .enumerate()
            .skip(found as usize)
        {
            tx.batch_execute(sql).await.map_err(step)?;
            tx.execute("UPDATE pacpool_schema SET version = $1", &[&(i as i64 + 1)])
                .await
                .map_err(step)?;
            tracing::info!(database = %self.shown, version = i + 1, "migrated coordinator database");
        }
        tx.commit().await.map_err(step)?;
        Ok(())
    }

    /// A pooled connection as a session for blocking code (the migration tool).
    pub(crate) async fn session(&self) -> Result<Connection, ApiErr> {
        let client = self.connection().await?;
        Ok(Connection::Postgres(PgSession::new(
            client,
            tokio::runtime::Handle::current(),
        )))
    }

    /// A pooled connection, waited for on the runtime (not on a blocking thread: a burst of
    /// units waiting for the pool must not take the blocking threads file I/O needs).
    async fn connection(&self) -> Result<deadpool_postgres::Object, ApiErr> {
        self.pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, database = %self.shown, "no database connection");
            ApiErr::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the coordinator cannot reach its database: retry in a moment",
            )
        })
    }

    /// See `Db::write`.
    pub async fn write<T, F>(&self, f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        self.unit(Isolation::Serializable, f).await
    }

    /// See `Db::write_endpoint`.
    pub async fn write_endpoint<T, F>(&self, endpoint: i64, f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        self.unit(Isolation::EndpointRow(endpoint), f).await
    }

    async fn unit<T, F>(&self, isolation: Isolation, mut f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        let client = self.connection().await?;
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::Postgres(PgSession::new(client, handle));
            let Connection::Postgres(s) = &conn else {
                unreachable!()
            };
            for attempt in 1..=MAX_ATTEMPTS {
                let out = match isolation {
                    Isolation::Serializable => {
                        s.begin("BEGIN ISOLATION LEVEL SERIALIZABLE")?;
                        f(&conn)
                    }
                    Isolation::EndpointRow(id) => {
                        s.begin("BEGIN ISOLATION LEVEL READ COMMITTED")?;
                        // Missing row: the closure's own read says "removed".
                        conn.query_row(
                            "SELECT 1 FROM endpoints WHERE id = ?1 FOR UPDATE",
                            [id],
                            |_| Ok(()),
                        )
                        .optional()
                        .map_err(ApiErr::from)
                        .and_then(|_| f(&conn))
                    }
                };
                match out {
                    Ok(v) => match s.commit() {
                        Ok(()) => return Ok(v),
                        Err(e) if e.is_retryable() => {}
                        Err(e) => return Err(e.into()),
                    },
                    Err(e) => {
                        // A reference broken by a concurrent delete (retention removing a
                        // snapshot a report was about to point to) is worth a rerun only in
                        // an endpoint-row unit; in a serializable one it is a bug to see.
                        let retry = s.retry.get()
                            || (matches!(isolation, Isolation::EndpointRow(_))
                                && s.broken_reference.get());
                        s.rollback();
                        if !retry {
                            return Err(e);
                        }
                    }
                }
                // Conflicting units back off for a short, growing, random time so that
                // they do not collide again in step.
                let jitter = u64::from(rand_u16()) % (attempt as u64 * 4 + 1);
                std::thread::sleep(Duration::from_millis(jitter));
            }
            tracing::warn!(
                attempts = MAX_ATTEMPTS,
                "a database change kept conflicting"
            );
            Err(ApiErr::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the coordinator database is busy: retry in a moment",
            ))
        })
        .await
        .map_err(|e| ApiErr::internal(format!("database task failed: {e}")))?
    }

    /// See `Db::read`.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiErr>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiErr> + Send + 'static,
    {
        let client = self.connection().await?;
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::Postgres(PgSession::new(client, handle));
            let Connection::Postgres(s) = &conn else {
                unreachable!()
            };
            s.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
            let out = f(&conn);
            if out.is_ok() {
                s.commit()?;
            } else {
                s.rollback();
            }
            out
        })
        .await
        .map_err(|e| ApiErr::internal(format!("database task failed: {e}")))?
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    u16::from_le_bytes(b)
}

fn spawn_connection<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    mut on_message: impl FnMut(tokio_postgres::AsyncMessage) + Send + 'static,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(m)) => on_message(m),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "database connection ended");
                    break;
                }
                None => break,
            }
        }
    });
}

#[cfg(test)]
#[path = "../../tests/support/pg.rs"]
mod pg_fixture;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://pacpool:s3cret@db.lan:5432/pacpool?sslmode=require"),
            "postgres://pacpool:***@db.lan:5432/pacpool?sslmode=require"
        );
        assert_eq!(
            redact("postgresql:///pacpool?host=/run/postgresql"),
            "postgresql:///pacpool?host=/run/postgresql"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact("postgresql:///db?host=/run/pg&password=s3cret&user=u"),
            "postgresql:///db?host=/run/pg&password=***&user=u"
        );
        assert!(is_postgres_url("postgresql://x") && !is_postgres_url("/var/lib/x.db"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_or_panicking_unit_never_leaves_a_transaction_open() {
        let cluster = match pg_fixture::PgCluster::start() {
            Ok(c) => c,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        };
        let url = cluster.database("units");
        let db = PgDb::open(
            &url,
            &PgOptions {
                pool_size: 2,
                ..PgOptions::default()
            },
        )
        .await
        .unwrap();
        db.write(|tx| {
            tx.execute(
                "INSERT INTO pools (name, policy, created_at) VALUES ('p', '{}', 0)",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        // A closure that panics while its transaction holds a row lock.
        let panicked = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(|tx| -> Result<(), ApiErr> {
                    tx.execute("UPDATE pools SET name = 'locked' WHERE name = 'p'", [])?;
                    panic!("a bug in a change");
                })
                .await
            }
        })
        .await;
        assert!(panicked.is_err() || panicked.unwrap().is_err());
        // A closure that swallows a failed statement and returns Ok: nothing is committed.
        let swallowed = db
            .write(|tx| {
                tx.execute("UPDATE pools SET name = 'half' WHERE name = 'p'", [])?;
                let _ = tx.execute(
                    "INSERT INTO pools (id, name, policy, created_at) VALUES (1, 'dup', '{}', 0)",
                    [],
                );
                Ok(())
            })
            .await;
        assert!(swallowed.is_err(), "{swallowed:?}");
        // The pool's two connections still work, the row is not locked, nothing half-done
        // was committed, and no session stays inside a transaction.
        for i in 0..6 {
            db.write(move |tx| {
                tx.execute("UPDATE pools SET created_at = ?1 WHERE name = 'p'", [i])?;
                Ok(())
            })
            .await
            .unwrap();
        }
        let names = db
            .read(|conn| {
                let rows = conn
                    .prepare("SELECT name FROM pools ORDER BY id")?
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<crate::coordinator::sql::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(names, ["p"]);
        let idle = cluster.psql(
            "units",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'units' AND state LIKE 'idle in transaction%'",
        );
        assert_eq!(idle, "0");
    }

    #[test]
    fn both_schemas_have_the_same_versions() {
        assert_eq!(
            super::super::pg_schema::PG_MIGRATIONS.len(),
            super::super::db::SCHEMA_VERSION
        );
    }
}
