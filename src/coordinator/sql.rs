//! One SQL interface over the coordinator's two databases: SQLite (embedded, the default)
//! and PostgreSQL (several coordinator replicas on one database).
//!
//! The coordinator's queries are written once, in the SQL both databases accept (`?N`
//! placeholders, `INSERT … ON CONFLICT`, `RETURNING`, row values); the few statements that
//! differ ask [`Connection::dialect`]. Every rule (a revision only moves forward, one active
//! operation per endpoint, idempotency keys …) therefore exists once, in the closure that a
//! [`super::db::Db::write`] runs, and both databases run that same closure atomically:
//! SQLite on its one writer connection, PostgreSQL in a `SERIALIZABLE` transaction that is
//! retried when the database reports a conflict with a concurrent one (see `db.rs`).
//!
//! The API follows rusqlite's (`query_row`, `prepare_cached`, `query_map`, `optional`,
//! `params!`), so the query code reads like plain rusqlite code; values cross as [`Value`],
//! which converts to whatever type PostgreSQL inferred for a parameter (a `BIGINT` column
//! compared with `?1` gets an `i64`, an `INTEGER` an `i32`, a `BOOLEAN` a `bool`).
//!
//! PostgreSQL's client is async (tokio-postgres) and the closures are not: a PostgreSQL
//! [`Connection`] lives on a blocking thread (`spawn_blocking`) and waits for each statement
//! with `Handle::block_on`, while the connection's I/O runs on the runtime's workers.

use std::borrow::Cow;
use std::cell::Cell;

use tokio_postgres::types::{IsNull, ToSql as PgToSql, Type, to_sql_checked};

/// Result of one statement.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which SQL a connection speaks, for the few statements that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What failed in a statement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the query returned no rows")]
    NoRows,
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("column {column}: {detail}")]
    Type { column: usize, detail: String },
    #[error("a statement of this change failed, so the change was rolled back")]
    Aborted,
}

impl Error {
    /// A `UNIQUE` constraint refused the statement (a name already taken, …).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            Error::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }

    /// PostgreSQL gave up the transaction because of a concurrent one (serialization failure
    /// or deadlock): running it again is correct.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Postgres(e) => is_pg_retryable(e),
            _ => false,
        }
    }
}

/// Serialization failures and deadlocks: the unit conflicted with a concurrent one.
pub(crate) fn is_pg_retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// A value crossing into or out of a statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(Cow<'a, [u8]>),
}

impl Value<'_> {
    fn into_owned(self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Int(i) => Value::Int(i),
            Value::Real(f) => Value::Real(f),
            Value::Text(t) => Value::Text(Cow::Owned(t.into_owned())),
            Value::Blob(b) => Value::Blob(Cow::Owned(b.into_owned())),
        }
    }
}

/// A Rust value usable as a statement parameter.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, i8, u32, u16, u8, u64, usize);

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}
impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Value::Null => Value::Null,
            Value::Int(i) => Value::Int(*i),
            Value::Real(f) => Value::Real(*f),
            Value::Text(t) => Value::Text(Cow::Borrowed(t)),
            Value::Blob(b) => Value::Blob(Cow::Borrowed(b)),
        }
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}
impl<T: ToValue + ?Sized> ToValue for std::sync::Arc<T> {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}
impl<T: ToValue + ?Sized> ToValue for Box<T> {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

/// The parameters of one statement: `params![a, b]`, `[a]` (one type), `[]` (none), or
/// [`params_from_iter`].
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl Params for [&dyn ToValue; 0] {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(&self) -> Vec<Value<'_>> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
        impl<T: ToValue> Params for &[T; $n] {
            fn values(&self) -> Vec<Value<'_>> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters from an iterator (a statement whose parameter count depends on the request).
pub struct ParamsFromIter(Vec<Value<'static>>);

pub fn params_from_iter<I, T>(it: I) -> ParamsFromIter
where
    I: IntoIterator<Item = T>,
    T: ToValue,
{
    ParamsFromIter(it.into_iter().map(|v| v.to_value().into_owned()).collect())
}

impl Params for ParamsFromIter {
    fn values(&self) -> Vec<Value<'_>> {
        self.0.iter().map(ToValue::to_value).collect()
    }
}

/// `params![a, b, …]`, as rusqlite's.
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::coordinator::sql::ToValue]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::coordinator::sql::ToValue),+] as &[&dyn $crate::coordinator::sql::ToValue]
    };
}
pub(crate) use params;

/// A Rust value readable from a result column.
pub trait FromValue: Sized {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String>;
}

fn int_of(v: Value<'_>) -> std::result::Result<i64, String> {
    match v {
        Value::Int(i) => Ok(i),
        Value::Null => Err("is NULL, expected an integer".into()),
        other => Err(format!("expected an integer, found {other:?}")),
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
                let i = int_of(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
int_from_value!(i32, u32, u64, usize, u16);

impl FromValue for i64 {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
        int_of(v)
    }
}
impl FromValue for bool {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
        Ok(int_of(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Text(t) => Ok(t.into_owned()),
            Value::Null => Err("is NULL, expected text".into()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.into_owned()),
            Value::Text(t) => Ok(t.into_owned().into_bytes()),
            Value::Null => Err("is NULL, expected bytes".into()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl FromValue for Value<'static> {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
        Ok(v.into_owned())
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column index (rusqlite's `get::<_, T>(i)` shape).
pub trait ColumnIndex {
    fn index(self) -> usize;
}
impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One result row.
pub struct Row<'a> {
    inner: RowInner<'a>,
}

enum RowInner<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a tokio_postgres::Row),
}

impl Row<'_> {
    pub fn get<I: ColumnIndex, T: FromValue>(&self, idx: I) -> Result<T> {
        let column = idx.index();
        let v = match &self.inner {
            RowInner::Sqlite(r) => sqlite_value(r.get_ref(column)?),
            RowInner::Postgres(r) => pg_value(r, column)?,
        };
        T::from_value(v).map_err(|detail| Error::Type { column, detail })
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value<'_> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => Value::Blob(Cow::Borrowed(b)),
    }
}

fn pg_value(r: &tokio_postgres::Row, i: usize) -> Result<Value<'static>> {
    let ty = r
        .columns()
        .get(i)
        .map(|c| c.type_().clone())
        .ok_or_else(|| Error::Type {
            column: i,
            detail: "no such column".into(),
        })?;
    Ok(match ty {
        Type::INT8 => r
            .try_get::<_, Option<i64>>(i)?
            .map_or(Value::Null, Value::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::OID => r
            .try_get::<_, Option<u32>>(i)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::FLOAT8 => r
            .try_get::<_, Option<f64>>(i)?
            .map_or(Value::Null, Value::Real),
        Type::FLOAT4 => r
            .try_get::<_, Option<f32>>(i)?
            .map_or(Value::Null, |v| Value::Real(v.into())),
        Type::BYTEA => r
            .try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Value::Null, |v| Value::Blob(Cow::Owned(v))),
        Type::NUMERIC => {
            return Err(Error::Type {
                column: i,
                detail: "NUMERIC is not read: cast it to BIGINT in the query".into(),
            });
        }
        _ => r
            .try_get::<_, Option<String>>(i)?
            .map_or(Value::Null, |v| Value::Text(Cow::Owned(v))),
    })
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

type BoxErr = Box<dyn std::error::Error + Sync + Send>;

/// Types whose binary form is their UTF-8 text.
fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

fn unsupported(ty: &Type) -> BoxErr {
    format!("a parameter of type {ty} is not supported: cast it in the query (CAST(?N AS BIGINT), ?N::text)")
        .into()
}

impl PgToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> std::result::Result<IsNull, BoxErr> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::OID => u32::try_from(*i)?.to_sql(ty, out),
                _ if is_text(ty) => i.to_string().as_str().to_sql(&Type::TEXT, out),
                _ => Err(unsupported(ty)),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::FLOAT8 => f.to_sql(ty, out),
                _ if is_text(ty) => f.to_string().as_str().to_sql(&Type::TEXT, out),
                _ => Err(unsupported(ty)),
            },
            Value::Text(t) => match *ty {
                Type::INT8 => t.parse::<i64>()?.to_sql(ty, out),
                Type::INT4 => t.parse::<i32>()?.to_sql(ty, out),
                Type::BYTEA => t.as_bytes().to_sql(ty, out),
                _ if is_text(ty) => t.as_ref().to_sql(&Type::TEXT, out),
                _ => Err(unsupported(ty)),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_ref().to_sql(ty, out),
                _ if is_text(ty) => std::str::from_utf8(b)?.to_sql(&Type::TEXT, out),
                _ => Err(unsupported(ty)),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Rewrites `?N` (and bare `?`) placeholders to PostgreSQL's `$N`, leaving string literals,
/// quoted identifiers and comments alone.
pub(crate) fn pg_text(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    // SQLite numbers a bare `?` one past the largest number so far.
    let mut largest = 0u32;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push('$');
                if n.is_empty() {
                    largest += 1;
                    out.push_str(&largest.to_string());
                } else {
                    largest = largest.max(n.parse().unwrap_or(0));
                    out.push_str(&n);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// A PostgreSQL connection taken from the pool for one unit of work, on a blocking thread.
///
/// Architecture Invariant: a connection goes back to the pool only outside a transaction.
/// One dropped inside one (a panicking closure, a failed `COMMIT` or `ROLLBACK`) is
/// detached from the pool and closed, so its locks end with it and the next unit never
/// finds a half-done transaction.
pub struct PgSession {
    client: Option<deadpool_postgres::Object>,
    handle: tokio::runtime::Handle,
    /// A statement failed in a way that makes the whole unit worth running again.
    pub(crate) retry: Cell<bool>,
    /// A foreign key check failed (worth a rerun in an endpoint-row unit only).
    pub(crate) broken_reference: Cell<bool>,
    /// A statement failed since `BEGIN` (PostgreSQL then refuses the rest of the
    /// transaction, and would answer `COMMIT` with a rollback).
    failed: Cell<bool>,
    /// Between `BEGIN` and a successful `COMMIT` or `ROLLBACK`.
    in_transaction: Cell<bool>,
}

impl Drop for PgSession {
    fn drop(&mut self) {
        if self.in_transaction.get()
            && let Some(obj) = self.client.take()
        {
            tracing::warn!("a database connection was left inside a transaction; closing it");
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

impl PgSession {
    pub(crate) fn new(client: deadpool_postgres::Object, handle: tokio::runtime::Handle) -> Self {
        Self {
            client: Some(client),
            handle,
            retry: Cell::new(false),
            broken_reference: Cell::new(false),
            failed: Cell::new(false),
            in_transaction: Cell::new(false),
        }
    }

    fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("a session keeps its connection until dropped")
    }

    fn note(&self, e: tokio_postgres::Error) -> Error {
        use tokio_postgres::error::SqlState;
        self.failed.set(true);
        if is_pg_retryable(&e) {
            self.retry.set(true);
        }
        if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
            self.broken_reference.set(true);
        }
        Error::Postgres(e)
    }

    fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        let text = pg_text(sql);
        self.handle
            .block_on(self.client().prepare_cached(&text))
            .map_err(|e| self.note(e))
    }

    fn query(
        &self,
        stmt: &tokio_postgres::Statement,
        params: &dyn Params,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let values = params.values();
        let refs: Vec<&(dyn PgToSql + Sync)> =
            values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
        self.handle
            .block_on(self.client().query(stmt, &refs))
            .map_err(|e| self.note(e))
    }

    fn execute(&self, stmt: &tokio_postgres::Statement, params: &dyn Params) -> Result<usize> {
        let values = params.values();
        let refs: Vec<&(dyn PgToSql + Sync)> =
            values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
        self.handle
            .block_on(self.client().execute(stmt, &refs))
            .map(|n| n as usize)
            .map_err(|e| self.note(e))
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        self.handle
            .block_on(self.client().batch_execute(sql))
            .map_err(|e| self.note(e))
    }

    /// Starts a transaction (`begin`: `BEGIN …`), with the failure flags cleared.
    pub(crate) fn begin(&self, begin: &str) -> Result<()> {
        self.retry.set(false);
        self.broken_reference.set(false);
        self.failed.set(false);
        self.in_transaction.set(true);
        self.batch(begin)
    }

    /// Commits; a transaction in which a statement failed is rolled back instead and
    /// answered [`Error::Aborted`] (PostgreSQL would "commit" it as a rollback).
    pub(crate) fn commit(&self) -> Result<()> {
        if self.failed.get() {
            self.rollback();
            return Err(Error::Aborted);
        }
        match self.batch("COMMIT") {
            Ok(()) => {
                self.in_transaction.set(false);
                Ok(())
            }
            Err(e) => {
                // A serialization failure at commit ends the transaction; anything else
                // (a lost connection) leaves it unknown: the connection is closed on drop.
                if e.is_retryable() {
                    self.in_transaction.set(false);
                }
                Err(e)
            }
        }
    }

    /// Rolls back (a connection that cannot is closed when the session is dropped).
    pub(crate) fn rollback(&self) {
        match self.batch("ROLLBACK") {
            Ok(()) => self.in_transaction.set(false),
            Err(e) => tracing::warn!(error = %e, "cannot roll back a database transaction"),
        }
    }
}

/// A connection (inside a transaction) that a unit of work runs its statements on.
pub enum Connection {
    Sqlite(rusqlite::Connection),
    Postgres(PgSession),
}

impl Connection {
    pub fn dialect(&self) -> Dialect {
        match self {
            Connection::Sqlite(_) => Dialect::Sqlite,
            Connection::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement {
            inner: match self {
                Connection::Sqlite(c) => StatementInner::Sqlite(c.prepare_cached(sql)?),
                Connection::Postgres(s) => StatementInner::Postgres(s, s.prepare(sql)?),
            },
        })
    }

    /// Statements are cached on both databases; kept for rusqlite's spelling.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare_cached(sql)
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    /// Several statements without parameters.
    #[cfg(test)]
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Connection::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Connection::Postgres(s) => s.batch(sql),
        }
    }
}

/// A prepared statement.
pub struct Statement<'c> {
    inner: StatementInner<'c>,
}

enum StatementInner<'c> {
    Sqlite(rusqlite::CachedStatement<'c>),
    Postgres(&'c PgSession, tokio_postgres::Statement),
}

impl Statement<'_> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        match &mut self.inner {
            StatementInner::Sqlite(s) => {
                let values = params.values();
                Ok(s.execute(rusqlite::params_from_iter(values.iter()))?)
            }
            StatementInner::Postgres(session, s) => session.execute(s, &params),
        }
    }

    /// Every row, each mapped by `f` (collected: a statement's rows never outlive it).
    pub fn query_map<T, P, F>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let mut out = Vec::new();
        match &mut self.inner {
            StatementInner::Sqlite(s) => {
                let values = params.values();
                let mut rows = s.query(rusqlite::params_from_iter(values.iter()))?;
                while let Some(r) = rows.next()? {
                    out.push(f(&Row {
                        inner: RowInner::Sqlite(r),
                    }));
                }
            }
            StatementInner::Postgres(session, s) => {
                for r in session.query(s, &params)? {
                    out.push(f(&Row {
                        inner: RowInner::Postgres(&r),
                    }));
                }
            }
        }
        Ok(out.into_iter())
    }

    /// The first row mapped by `f`; [`Error::NoRows`] when there is none.
    pub fn query_row<T, P, F>(&mut self, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        match &mut self.inner {
            StatementInner::Sqlite(s) => {
                let values = params.values();
                let mut rows = s.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(r) => f(&Row {
                        inner: RowInner::Sqlite(r),
                    }),
                    None => Err(Error::NoRows),
                }
            }
            StatementInner::Postgres(session, s) => {
                let rows = session.query(s, &params)?;
                match rows.first() {
                    Some(r) => f(&Row {
                        inner: RowInner::Postgres(r),
                    }),
                    None => Err(Error::NoRows),
                }
            }
        }
    }
}

/// `.optional()` on a single-row result, as rusqlite's.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollar_numbers_outside_literals() {
        assert_eq!(
            pg_text(
                "SELECT a FROM t WHERE x = ?1 AND y IN (?2, ?10) AND z = '?3' -- ?4\n AND w = ?"
            ),
            "SELECT a FROM t WHERE x = $1 AND y IN ($2, $10) AND z = '?3' -- ?4\n AND w = $11"
        );
        assert_eq!(pg_text("SELECT \"?1\", ?1"), "SELECT \"?1\", $1");
    }

    #[test]
    fn sqlite_round_trip_through_values() {
        let c = Connection::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB)")
            .unwrap();
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            params![42i64, "x", vec![1u8, 2]],
        )
        .unwrap();
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            params![None::<i64>, "y", None::<Vec<u8>>],
        )
        .unwrap();
        let rows: Vec<(Option<i64>, String, Option<Vec<u8>>)> = c
            .prepare_cached("SELECT i, s, b FROM t ORDER BY s")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (Some(42), "x".into(), Some(vec![1, 2])),
                (None, "y".into(), None)
            ]
        );
        let none = c
            .query_row("SELECT i FROM t WHERE s = ?1", ["z"], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .unwrap();
        assert_eq!(none, None);
        let err = c.query_row("SELECT s FROM t WHERE s = 'x'", [], |r| r.get::<_, i64>(0));
        assert!(matches!(err, Err(Error::Type { column: 0, .. })), "{err:?}");
    }
}
