//! Login sessions: the admin token is exchanged once for a random session id, held by the
//! browser in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` under TLS). Each session has
//! its own CSRF token, which every state-changing form carries back.
//!
//! Sessions are rows of the database (`dashboard_sessions`), keyed by the SHA-256 of the id
//! (the database holds no usable cookie): every coordinator replica knows every session, so
//! a balancer may send each request anywhere, and a restart logs nobody out.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::super::AppState;
use super::super::auth::new_token;
use super::super::db::now;
use super::super::error::ApiErr;
use super::super::sql::{OptionalExtension, params};

/// The session cookie's name.
pub const COOKIE: &str = "pacpool_session";

/// Sessions at most; past it the oldest-expiring are dropped (a login flood cannot grow
/// the table without bound).
const MAX_SESSIONS: i64 = 10_000;

fn key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// A new session lasting `ttl` seconds: (cookie value, CSRF token).
pub async fn create(state: &AppState, ttl: u64) -> Result<(String, String), ApiErr> {
    let id = new_token("pps_")?;
    let csrf = new_token("")?;
    let (hash, token) = (key(&id), csrf.clone());
    state
        .db
        .write(move |tx| {
            let t = now();
            tx.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?1", [t])?;
            let n: i64 =
                tx.query_row("SELECT count(*) FROM dashboard_sessions", [], |r| r.get(0))?;
            if n >= MAX_SESSIONS {
                tx.execute(
                    "DELETE FROM dashboard_sessions WHERE id_hash IN (
                        SELECT id_hash FROM dashboard_sessions ORDER BY expires_at LIMIT ?1)",
                    [n - MAX_SESSIONS + 1],
                )?;
            }
            tx.execute(
                "INSERT INTO dashboard_sessions (id_hash, csrf, expires_at) VALUES (?1, ?2, ?3)",
                params![hash, token, t.saturating_add(ttl as i64)],
            )?;
            Ok(())
        })
        .await?;
    Ok((id, csrf))
}

/// The CSRF token of a live session.
async fn csrf_of(state: &AppState, id: &str) -> Result<Option<String>, ApiErr> {
    let hash = key(id);
    state
        .db
        .read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT csrf FROM dashboard_sessions WHERE id_hash = ?1 AND expires_at > ?2",
                    params![hash, now()],
                    |r| r.get::<_, String>(0),
                )
                .optional()?)
        })
        .await
}

/// Ends a session (logout).
pub async fn remove(state: &AppState, id: &str) -> Result<(), ApiErr> {
    let hash = key(id);
    state
        .db
        .write(move |tx| {
            tx.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?1", [&hash])?;
            Ok(())
        })
        .await
}

/// The session id in a request's cookies.
pub fn cookie_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// `Set-Cookie` for a new session, or (with `None`) one that clears it.
pub fn set_cookie(id: Option<&str>, ttl: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/dashboard; Max-Age={ttl}; HttpOnly; SameSite=Strict{secure}"
        ),
        None => format!("{COOKIE}=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict{secure}"),
    }
}

/// A request from a logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
}

impl Session {
    /// Checks the CSRF token a form sent back: `403` unless it is this session's.
    pub fn check_csrf(&self, sent: &str) -> Result<(), super::views::Refused> {
        // Both are 64 hex digits; comparing their hashes keeps the time independent of where
        // they differ.
        if !sent.is_empty() && key(sent) == key(&self.csrf) {
            Ok(())
        } else {
            Err(super::views::Refused::new(
                StatusCode::FORBIDDEN,
                "This form was refused: its CSRF token is missing or is not this session's. Reload the page and submit it again.",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let found = match cookie_in(&parts.headers) {
            Some(id) => csrf_of(state, id)
                .await
                .map_err(|e| super::views::Refused::from(e).into_response())?
                .map(|csrf| (id, csrf)),
            None => None,
        };
        if let Some((id, csrf)) = found {
            return Ok(Session {
                id: id.to_owned(),
                csrf,
            });
        }
        if parts.method == axum::http::Method::GET {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/dashboard/", |p| p.as_str());
            let next = url_encode(next);
            Err(Redirect::to(&format!("/dashboard/login?next={next}")).into_response())
        } else {
            Err(super::views::error_page(
                StatusCode::UNAUTHORIZED,
                "Not logged in, or the session expired: log in again.",
            ))
        }
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where to go after logging in: only a dashboard path (no open redirect).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/dashboard/")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.bytes().any(|b| b.is_ascii_control()) =>
        {
            n.to_owned()
        }
        _ => "/dashboard/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_redirects() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; pacpool_session=pps_x; c=d".parse().unwrap(),
        );
        assert_eq!(cookie_in(&h), Some("pps_x"));
        let c = set_cookie(Some("pps_x"), 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie(Some("pps_x"), 60, false).contains("Secure"));
        assert_eq!(safe_next(Some("/dashboard/pools/1")), "/dashboard/pools/1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/dashboard//x",
            "/api/v1",
        ] {
            assert_eq!(safe_next(Some(bad)), "/dashboard/", "{bad}");
        }
        assert_eq!(url_encode("/a?b=c&d"), "/a%3Fb%3Dc%26d");
    }
}
