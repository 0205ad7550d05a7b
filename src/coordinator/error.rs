//! Errors: [`CoordinatorError`] for starting the server, [`ApiErr`] for a request (always
//! answered as a [`crate::proto::ApiError`] body with a stable code).

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rusqlite::ErrorCode;

use crate::proto::ApiError;

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("coordinator database {path}: {detail}")]
    Database { path: PathBuf, detail: String },
    #[error("coordinator database {url}: {detail}")]
    PostgresDatabase { url: String, detail: String },
    #[error(
        "coordinator database {path} has schema version {found}, newer than this pacpool-coordinator ({supported}): upgrade pacpool-coordinator"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "admin token file {path}: {source}\nto fix: check the path and its directory's permissions, or set admin_token_sha256"
    )]
    AdminToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "admin token file {path} is empty: put a token in it, or delete it to have one generated"
    )]
    EmptyAdminToken { path: PathBuf },
    #[error(
        "admin_token_sha256 is not 64 hex digits: set it to the output of `printf %s TOKEN | sha256sum`"
    )]
    BadAdminHash,
    #[error("serving HTTP failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    PackageStore(#[from] super::pool_repo::StoreError),
    /// `[tls]` is set but its certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A failed request: HTTP status plus the [`ApiError`] body.
#[derive(Debug, Clone)]
pub struct ApiErr {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<serde_json::Value>,
}

impl ApiErr {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl serde::Serialize) -> Self {
        self.detail = serde_json::to_value(detail).ok();
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn body(&self) -> ApiError {
        ApiError {
            code: self.code.to_owned(),
            message: self.message.clone(),
            detail: self.detail.clone(),
        }
    }
}

impl std::fmt::Display for ApiErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<rusqlite::Error> for ApiErr {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                tracing::warn!(error = %e, "database busy");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the coordinator database is busy: retry in a moment",
                )
            }
            Some(ErrorCode::DiskFull) => {
                tracing::error!(error = %e, "database disk full");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the coordinator's disk is full: tell its administrator",
                )
            }
            _ => {
                tracing::error!(error = %e, "database error");
                Self::internal("database error on the coordinator: see its log")
            }
        }
    }
}

impl From<super::sql::Error> for ApiErr {
    fn from(e: super::sql::Error) -> Self {
        use super::sql::Error;
        match e {
            Error::Sqlite(e) => e.into(),
            Error::Postgres(e) => e.into(),
            other => {
                tracing::error!(error = %other, "database error");
                Self::internal("database error on the coordinator: see its log")
            }
        }
    }
}

impl From<tokio_postgres::Error> for ApiErr {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let code = e.code().cloned();
        let unavailable =
            |message: &str| Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        match code {
            Some(c)
                if c == SqlState::T_R_SERIALIZATION_FAILURE
                    || c == SqlState::T_R_DEADLOCK_DETECTED
                    || c == SqlState::LOCK_NOT_AVAILABLE
                    || c == SqlState::QUERY_CANCELED =>
            {
                tracing::warn!(error = %e, "database busy");
                unavailable("the coordinator database is busy: retry in a moment")
            }
            Some(c) if c == SqlState::DISK_FULL => {
                tracing::error!(error = %e, "database disk full");
                unavailable("the coordinator database's disk is full: tell its administrator")
            }
            None if e.is_closed() || e.as_db_error().is_none() => {
                tracing::warn!(error = %e, "database connection failed");
                unavailable("the coordinator cannot reach its database: retry in a moment")
            }
            _ => {
                tracing::error!(error = %e, code = ?e.code(), "database error");
                Self::internal("database error on the coordinator: see its log")
            }
        }
    }
}
