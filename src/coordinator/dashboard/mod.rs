//! The web dashboard under `/dashboard/` (`[dashboard] enabled = true`): server-rendered
//! HTML (maud), a session cookie from the admin token, CSRF tokens on every form, a strict
//! Content-Security-Policy, and live pages through server-sent events.
//!
//! Handlers only parse, call the coordinator's service functions (the ones behind the REST
//! API: statuses, revert, operations, join tokens, the audit log) and render; they hold no
//! SQL and no rule of their own.
//!
//! - `session`: login sessions and CSRF.
//! - `views`: the pages (`views/endpoint.rs`, `packages.rs`, `admin.rs` for the larger ones).
//! - `live`: the server-sent events stream of a pool.

mod live;
pub mod session;
mod views;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use maud::html;
use serde::Deserialize;

use super::AppState;
use super::db::{AuditFilter, now};
use super::service::Actor;
use crate::proto::{CreateJoinToken, CreateOperation, EndpointState, OperationKind, Pool};
use session::Session;
use views::{AuditQuery, PoolQuery, PoolRows, Refused};

/// Rows per page of the pool's endpoint table.
const PAGE_ROWS: usize = 100;
/// Rows per page of the audit log.
const AUDIT_ROWS: i64 = 100;
/// Target revisions the targets page shows (each with its diff).
const TARGET_ROWS: usize = 50;

/// Every dashboard answer carries these: scripts and styles only from this origin (no
/// inline script), no framing, no referrer, nothing cached.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const SCRIPT: &str = include_str!("static/dashboard.js");
const STYLE: &str = include_str!("static/dashboard.css");

pub(crate) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(pools))
        .route("/dashboard/login", get(login_form).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/static/dashboard.js", get(script))
        .route("/dashboard/static/dashboard.css", get(style))
        .route("/dashboard/pools/{id}", get(pool))
        .route("/dashboard/events", get(live::all_events))
        .route("/dashboard/pools/{id}/events", get(live::pool_events))
        .route("/dashboard/pools/{id}/packages", get(packages))
        .route("/dashboard/pools/{id}/packages/{name}", get(machines))
        .route("/dashboard/pools/{id}/targets", get(targets))
        .route(
            "/dashboard/pools/{id}/revert",
            get(revert_confirm).post(revert),
        )
        .route(
            "/dashboard/pools/{id}/sync-behind",
            get(sync_behind_confirm).post(sync_behind),
        )
        .route(
            "/dashboard/pools/{id}/tokens",
            get(tokens).post(create_token),
        )
        .route("/dashboard/tokens/{id}/revoke", post(revoke_token))
        .route("/dashboard/endpoints/{id}", get(endpoint))
        .route(
            "/dashboard/endpoints/{id}/sync",
            get(sync_one_confirm).post(sync_one),
        )
        .route("/dashboard/audit", get(audit))
        .layer(middleware::map_response(headers))
        .with_state(state)
}

async fn headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

type Page = Result<Response, Refused>;

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Login

#[derive(Deserialize, Default)]
#[serde(default)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(Query(q): Query<NextQuery>) -> Response {
    views::login_page(&session::safe_next(q.next.as_deref()), None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = session::safe_next(f.next.as_deref());
    if !state.is_admin_token(f.token.trim()) {
        // Wrong tokens count against the client address like invalid bearer tokens.
        let key = super::limits::Key::Ip(peer.ip());
        if let Err(wait) = state
            .invalid_token_limiter
            .check(key, std::time::Instant::now())
        {
            return views::error_page(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many wrong tokens from this address: try again in {} s.",
                    super::limits::retry_after_secs(wait)
                ),
            );
        }
        tracing::info!(peer = %peer.ip(), "dashboard login with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            views::login_page(
                &next,
                Some("Wrong token: use the coordinator's admin token."),
            ),
        )
            .into_response();
    }
    let ttl = state.settings.dashboard.session_secs;
    let (id, _) = match session::create(&state, ttl).await {
        Ok(s) => s,
        Err(e) => return Refused::from(e).into_response(),
    };
    let cookie = session::set_cookie(Some(&id), ttl, state.settings.tls.is_some());
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(s: Session, State(state): State<AppState>, Form(f): Form<CsrfForm>) -> Page {
    s.check_csrf(&f.csrf)?;
    session::remove(&state, &s.id).await?;
    let cookie = session::set_cookie(None, 0, state.settings.tls.is_some());
    Ok((
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/dashboard/login"),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// Pools and a pool

#[derive(Deserialize, Default)]
#[serde(default)]
struct FragmentQuery {
    fragment: Option<u8>,
}

async fn pools(s: Session, State(state): State<AppState>, Query(q): Query<FragmentQuery>) -> Page {
    let pools = state.pools().await?;
    let mut rows = Vec::with_capacity(pools.len());
    for p in pools {
        // A pool deleted meanwhile has no statuses: counted empty.
        let statuses = state.pool_statuses(p.id).await.unwrap_or_default();
        rows.push((p, views::count_states(&statuses)));
    }
    if q.fragment == Some(1) {
        return Ok(views::pools_table(&rows).into_response());
    }
    Ok(views::pools_page(&s, &rows))
}

async fn load_pool(state: &AppState, id: i64) -> Result<Pool, Refused> {
    Ok(state.pool(id).await?)
}

async fn pool(
    s: Session,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<PoolQuery>,
) -> Page {
    let pool = load_pool(&state, id).await?;
    let statuses = state.pool_statuses(id).await?;
    let counts = views::count_states(&statuses);
    let needle = q.q.as_deref().unwrap_or("").to_lowercase();
    let wanted_state = q.state.as_deref().filter(|s| !s.is_empty());
    let mut matching: Vec<_> = statuses
        .iter()
        .filter(|e| needle.is_empty() || e.name.to_lowercase().contains(&needle))
        .filter(|e| wanted_state.is_none_or(|w| views::state_label(e.state) == w))
        .collect();
    let rank = |s: EndpointState| views::STATES.iter().position(|x| *x == s);
    match q.sort.as_deref() {
        Some("state") => matching.sort_by(|a, b| {
            rank(a.state)
                .cmp(&rank(b.state))
                .then_with(|| a.name.cmp(&b.name))
        }),
        Some("seen") => {
            matching.sort_by(|a, b| a.last_seen.cmp(&b.last_seen).then(a.id.cmp(&b.id)))
        }
        _ => matching.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id))),
    }
    if q.desc == Some(1) {
        matching.reverse();
    }
    let pages = matching.len().div_ceil(PAGE_ROWS).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let shown: Vec<_> = matching
        .iter()
        .skip((page - 1) * PAGE_ROWS)
        .take(PAGE_ROWS)
        .copied()
        .collect();
    let ops = state
        .operations_by_id(shown.iter().filter_map(|e| e.active_operation).collect())
        .await?;
    let rows = shown
        .iter()
        .map(|e| (*e, ops.iter().find(|o| o.endpoint_id == e.id)))
        .collect();
    let r = PoolRows {
        pool: &pool,
        counts,
        rows,
        matching: matching.len(),
        page,
        pages,
        query: &q,
        now: now(),
    };
    if q.fragment == Some(1) {
        return Ok(views::pool_rows(&r).into_response());
    }
    let fragment = fragment_href(&q.href(id, |_| {}));
    Ok(views::pool_page(&s, &r, &fragment))
}

/// The same page's live part alone.
fn fragment_href(href: &str) -> String {
    let sep = if href.contains('?') { '&' } else { '?' };
    format!("{href}{sep}fragment=1")
}

// ---------------------------------------------------------------------------------------------
// Packages

#[derive(Deserialize, Default)]
#[serde(default)]
struct PackagesQuery {
    q: Option<String>,
    differ: Option<u8>,
}

async fn packages(
    s: Session,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<PackagesQuery>,
) -> Page {
    let pool = load_pool(&state, id).await?;
    let m = state.package_matrix(id).await?;
    Ok(views::packages_page(
        &s,
        &pool,
        &m,
        q.q.as_deref().unwrap_or(""),
        q.differ == Some(1),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MachinesQuery {
    version: Option<String>,
    absent: Option<u8>,
}

async fn machines(
    s: Session,
    State(state): State<AppState>,
    Path((id, name)): Path<(i64, String)>,
    Query(q): Query<MachinesQuery>,
) -> Page {
    let pool = load_pool(&state, id).await?;
    let version = match (q.absent, q.version) {
        (Some(1), _) => None,
        (_, Some(v)) => Some(v),
        _ => {
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                "Say which version (?version=) or ?absent=1.",
            ));
        }
    };
    let list = state
        .machines_running(id, name.clone(), version.clone())
        .await?;
    Ok(views::machines_page(
        &s,
        &pool,
        &name,
        version.as_deref(),
        &list,
    ))
}

// ---------------------------------------------------------------------------------------------
// Endpoint

#[derive(Deserialize, Default)]
#[serde(default)]
struct EndpointQuery {
    from: Option<String>,
    to: Option<String>,
    fragment: Option<u8>,
}

async fn endpoint(
    s: Session,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<EndpointQuery>,
) -> Page {
    let d = state.endpoint_detail(id).await?;
    if q.fragment == Some(1) {
        return Ok(views::endpoint_live(&d, now()).into_response());
    }
    let mut compare = None;
    if let (Some(from), Some(to)) = (&q.from, &q.to) {
        let parse = |h: &str| {
            h.parse::<crate::snapshot::SnapshotHash>()
                .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, format!("Bad state: {e}")))
        };
        let (a, b) = (parse(from)?, parse(to)?);
        // Only states of this endpoint's history.
        if !d.history.iter().any(|h| h.snapshot == a) || !d.history.iter().any(|h| h.snapshot == b)
        {
            return Err(Refused::new(
                StatusCode::NOT_FOUND,
                "Compare two states of this endpoint's history.",
            ));
        }
        let diff = state.state_diff(a, b).await?;
        compare = Some((a.short(), b.short(), diff));
    }
    let fragment = format!("/dashboard/endpoints/{id}?fragment=1");
    Ok(views::endpoint_page(
        &s,
        &d,
        compare
            .as_ref()
            .map(|(a, b, d)| (a.as_str(), b.as_str(), d)),
        &fragment,
        now(),
    ))
}

async fn sync_one_confirm(s: Session, State(state): State<AppState>, Path(id): Path<i64>) -> Page {
    let status = state.endpoint_status(id).await?;
    let pool = load_pool(&state, status.pool_id).await?;
    Ok(views::confirm_page(
        &s,
        &format!("Request a sync of {}", status.name),
        views::sync_one_text(&status, &pool),
        &format!("/dashboard/endpoints/{id}/sync"),
        &[],
        "Request the sync of 1 machine",
        &format!("/dashboard/endpoints/{id}"),
    ))
}

async fn sync_one(
    s: Session,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Page {
    s.check_csrf(&f.csrf)?;
    let req = CreateOperation {
        kind: OperationKind::SyncToLatest,
        to_snapshot: None,
        idempotency_key: None,
    };
    state
        .create_operation(Actor::Admin, id, req, Some(peer.ip()))
        .await?;
    Ok(Redirect::to(&format!("/dashboard/endpoints/{id}#operations")).into_response())
}

// ---------------------------------------------------------------------------------------------
// Targets

async fn targets(s: Session, State(state): State<AppState>, Path(id): Path<i64>) -> Page {
    let pool = load_pool(&state, id).await?;
    let history = state.target_history(id, TARGET_ROWS).await?;
    Ok(views::targets_page(&s, &pool, &history))
}

#[derive(Deserialize)]
struct RevertQuery {
    to: u64,
}

async fn revert_confirm(
    s: Session,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<RevertQuery>,
) -> Page {
    let pool = load_pool(&state, id).await?;
    let statuses = state.pool_statuses_against(id, Some(q.to)).await?;
    let to = state.target(id, q.to).await?;
    let expected = pool.target.as_ref().map_or(0, |t| t.revision);
    Ok(views::confirm_page(
        &s,
        &format!("Revert the target of {}", pool.name),
        views::revert_text(&pool, &to, statuses.len(), &views::count_states(&statuses)),
        &format!("/dashboard/pools/{id}/revert"),
        &[("to", q.to.to_string()), ("expected", expected.to_string())],
        &format!(
            "Revert the target of {} {}",
            statuses.len(),
            crate::words::plural(statuses.len(), "machine", "machines")
        ),
        &format!("/dashboard/pools/{id}/targets"),
    ))
}

#[derive(Deserialize)]
struct RevertForm {
    #[serde(default)]
    csrf: String,
    to: u64,
    expected: u64,
}

async fn revert(
    s: Session,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    Form(f): Form<RevertForm>,
) -> Page {
    s.check_csrf(&f.csrf)?;
    let req = crate::proto::RevertTargetRequest {
        to_revision: f.to,
        expected_revision: f.expected,
    };
    state.revert_target(id, req, Some(peer.ip())).await?;
    Ok(Redirect::to(&format!("/dashboard/pools/{id}")).into_response())
}

async fn sync_behind_confirm(
    s: Session,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Page {
    let pool = load_pool(&state, id).await?;
    let statuses = state.pool_statuses(id).await?;
    let behind: Vec<_> = statuses
        .iter()
        .filter(|e| e.state == EndpointState::Behind)
        .collect();
    Ok(views::confirm_page(
        &s,
        &format!("Request a sync of the behind endpoints of {}", pool.name),
        views::sync_behind_text(&pool, &behind),
        &format!("/dashboard/pools/{id}/sync-behind"),
        &[],
        &format!(
            "Request the sync of {} {}",
            behind.len(),
            crate::words::plural(behind.len(), "machine", "machines")
        ),
        &format!("/dashboard/pools/{id}"),
    ))
}

async fn sync_behind(
    s: Session,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Page {
    s.check_csrf(&f.csrf)?;
    let (created, refused) = state.request_sync_behind(id, Some(peer.ip())).await?;
    Ok(views::message_page(
        &s,
        "Sync requested",
        html! {
            p #requested { "Asked " (created.len()) " " (crate::words::plural(created.len(), "machine", "machines")) " to sync." }
            @if !refused.is_empty() {
                p { "Not asked:" }
                ul { @for (e, why) in &refused { li { (e.name) ": " (why.message) } } }
            }
            p { a href={ "/dashboard/pools/" (id) } { "Back to the pool" } }
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Join tokens

async fn tokens(s: Session, State(state): State<AppState>, Path(id): Path<i64>) -> Page {
    let pool = load_pool(&state, id).await?;
    let list = state.join_tokens(id).await?;
    Ok(views::tokens_page(&s, &pool, &list, None, now()))
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    days: Option<String>,
    #[serde(default)]
    max_uses: Option<String>,
}

async fn create_token(
    s: Session,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    Form(f): Form<TokenForm>,
) -> Page {
    s.check_csrf(&f.csrf)?;
    let number = |v: &Option<String>, what: &str| -> Result<Option<u64>, Refused> {
        match v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Refused::new(
                    StatusCode::BAD_REQUEST,
                    format!("{what} must be a whole number."),
                )
            }),
        }
    };
    let days = number(&f.days, "Days")?;
    let req = CreateJoinToken {
        expires_in: days.map(|d| d.saturating_mul(86_400)),
        max_uses: number(&f.max_uses, "Uses")?.map(|n| n.min(u64::from(u32::MAX)) as u32),
    };
    let pool = load_pool(&state, id).await?;
    let created = state.create_join_token(id, req, Some(peer.ip())).await?;
    let list = state.join_tokens(id).await?;
    Ok(views::tokens_page(&s, &pool, &list, Some(&created), now()))
}

async fn revoke_token(
    s: Session,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Page {
    s.check_csrf(&f.csrf)?;
    let pool = state.revoke_join_token(id, Some(peer.ip())).await?;
    Ok(Redirect::to(&format!("/dashboard/pools/{pool}/tokens")).into_response())
}

// ---------------------------------------------------------------------------------------------
// Audit

/// `YYYY-MM-DD` → Unix seconds at 00:00 UTC.
fn day_start(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

async fn audit(s: Session, State(state): State<AppState>, Query(q): Query<AuditQuery>) -> Page {
    let pools = state.pool_names().await?;
    let nonempty = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut error = None;
    let mut date = |v: &Option<String>, what: &str| match nonempty(v) {
        None => None,
        Some(d) => {
            let t = day_start(&d);
            if t.is_none() {
                error = Some(format!("{what} {d:?} is not a date (YYYY-MM-DD): ignored."));
            }
            t
        }
    };
    let since = date(&q.since, "From");
    let until = date(&q.until, "To").map(|t| t + 86_400);
    let pool_subject = nonempty(&q.pool).map(|p| format!("pool:{p}"));
    let filter = AuditFilter {
        actor: nonempty(&q.actor),
        action: nonempty(&q.action),
        subject: pool_subject.or_else(|| nonempty(&q.subject)),
        since,
        until,
    };
    let entries = state.audit_page(filter, q.before, AUDIT_ROWS).await?;
    let next = (entries.len() as i64 == AUDIT_ROWS)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(views::audit_page(
        &s,
        &q,
        &pools,
        &entries,
        next,
        error.as_deref(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::day_start("1970-01-01"), Some(0));
        assert_eq!(super::day_start("2026-12-05"), Some(1_796_428_800));
        assert_eq!(crate::display::utc(1_796_428_800), "2026-12-05 00:00:00");
        assert!(super::day_start("2026-13-01").is_none() && super::day_start("x").is_none());
    }
}
