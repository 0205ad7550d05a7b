//! Login sessions: the admin token is exchanged once for a random session id, held by the
//! browser in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` under TLS). Each session has
//! its own CSRF token, which every state-changing form carries back.
//!
//! Sessions live in memory, keyed by the SHA-256 of the id (a memory dump holds no usable
//! cookie): a restart of the coordinator logs everybody out.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::super::AppState;
use super::super::auth::new_token;
use super::super::db::now;
use super::super::error::ApiErr;

/// The session cookie's name.
pub const COOKIE: &str = "pacpool_session";

/// Sessions at most; past it the oldest-expiring are dropped (a login flood cannot grow
/// memory without bound).
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
struct Entry {
    csrf: String,
    expires: i64,
}

#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A new session lasting `ttl` seconds: (cookie value, CSRF token).
    pub fn create(&self, ttl: u64) -> Result<(String, String), ApiErr> {
        let id = new_token("pps_")?;
        let csrf = new_token("")?;
        let t = now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.expires > t);
        if map.len() >= MAX_SESSIONS
            && let Some(k) = map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k)
        {
            map.remove(&k);
        }
        map.insert(
            key(&id),
            Entry {
                csrf: csrf.clone(),
                expires: t.saturating_add(ttl as i64),
            },
        );
        Ok((id, csrf))
    }

    /// The CSRF token of a live session.
    fn csrf_of(&self, id: &str) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(id);
        match map.get(&k) {
            Some(e) if e.expires > now() => Some(e.csrf.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(id));
    }
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
        if let Some(id) = cookie_in(&parts.headers)
            && let Some(csrf) = state.dashboard_sessions.csrf_of(id)
        {
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
    fn sessions_expire_and_are_removed() {
        let s = Sessions::default();
        let (id, csrf) = s.create(60).unwrap();
        assert_eq!(s.csrf_of(&id).as_deref(), Some(csrf.as_str()));
        assert!(s.csrf_of("pps_other").is_none());
        s.remove(&id);
        assert!(s.csrf_of(&id).is_none());
        let (id, _) = s.create(0).unwrap();
        assert!(
            s.csrf_of(&id).is_none(),
            "a session of 0 s is expired at once"
        );
    }

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
