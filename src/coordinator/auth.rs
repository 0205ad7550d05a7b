//! Tokens and the request extractors that check them.
//!
//! Every token is 32 random bytes (hex, with a prefix naming its kind: `ppa_` admin, `ppj_`
//! join, `ppe_` endpoint). Only SHA-256 hashes are stored; a presented token is checked by
//! hashing it and looking the hash up, so no stored secret can be replayed.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiErr;

/// A new random token: `prefix` + 64 hex digits (256 bits).
pub fn new_token(prefix: &str) -> Result<String, ApiErr> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "no randomness from the operating system");
        ApiErr::internal("the coordinator could not get random bytes from the OS: see its log")
    })?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// Hex SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_in(&parts.headers)
}

/// The bearer token of a request, if it has a well-formed one.
pub fn bearer_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty() && t.len() <= 256)
}

/// The request carries the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The request carries a valid, unrevoked endpoint token; the endpoint it belongs to.
#[derive(Debug, Clone)]
pub struct EndpointAuth {
    pub id: i64,
    pub pool_id: i64,
    pub name: String,
}

/// Either kind of caller (for routes both may use).
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Endpoint(EndpointAuth),
}

/// Looks an endpoint token up; `None` when unknown or revoked.
pub async fn endpoint_by_token(
    state: &AppState,
    token: &str,
) -> Result<Option<EndpointAuth>, ApiErr> {
    state.endpoint_by_token(token).await
}

/// Who a bearer token belongs to: the admin, an endpoint, or nobody (`None`).
pub async fn caller_of(state: &AppState, token: &str) -> Result<Option<Caller>, ApiErr> {
    if state.is_admin_token(token) {
        return Ok(Some(Caller::Admin));
    }
    Ok(endpoint_by_token(state, token).await?.map(Caller::Endpoint))
}

/// What the rate-limit middleware found out about the request's token (a request
/// extension), so the extractors below do not look it up a second time.
#[derive(Debug, Clone)]
pub struct Resolved(pub Option<Caller>);

fn unknown() -> ApiErr {
    ApiErr::unauthorized(
        "unknown or revoked token: endpoints must register again with a join token",
    )
}

fn missing() -> ApiErr {
    ApiErr::unauthorized(
        "missing bearer token: send `Authorization: Bearer <token>` (the admin token, or the endpoint token from registration)",
    )
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiErr> {
        let token = bearer(parts).ok_or_else(missing)?;
        if let Some(Resolved(found)) = parts.extensions.get::<Resolved>() {
            return found.clone().ok_or_else(unknown);
        }
        caller_of(state, token).await?.ok_or_else(unknown)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiErr> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin => Ok(Admin),
            Caller::Endpoint(_) => Err(ApiErr::forbidden(
                "this route needs the admin token; an endpoint token may only act on its own endpoint under /api/v1/endpoint/",
            )),
        }
    }
}

impl FromRequestParts<AppState> for EndpointAuth {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiErr> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Endpoint(ep) => Ok(ep),
            Caller::Admin => Err(ApiErr::forbidden(
                "this route is for endpoints (their own token); admins use the /pools and /endpoints/{id} routes",
            )),
        }
    }
}
