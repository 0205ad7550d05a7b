//! The router and the REST handlers under [`crate::proto::API_PREFIX`].
//!
//! Every error, including malformed JSON, unknown routes and oversized bodies, is answered as
//! a [`crate::proto::ApiError`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::Digest;

use super::AppState;
use super::auth::{Admin, Caller, EndpointAuth};
use super::error::ApiErr;
use super::hub::{Audience, Kick};
use super::service::Actor;
use super::snaptext::{FullText, SnapText};
use super::ws;
use crate::proto::{
    AuditEntry, CreateJoinToken, CreateOperation, CreatePool, EndpointStatus, JoinToken,
    JoinTokenInfo, Operation, OperationResult, Page, Pool, PoolPolicy, Progress, RegisterRequest,
    RegisterResponse, ReportAck, RevertTargetRequest, ServerMsg, SetTargetRequest, StateReport,
    Stats, TargetInfo, UpdateEndpoint, UpdatePool,
};
use crate::snapshot::SnapshotHash;

// ---------------------------------------------------------------------------------------------
// Extractors whose rejections are ApiErrors.

/// A JSON body; a malformed one is `400 invalid_request`, an oversized one
/// `413 payload_too_large`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiErr> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiErr {
    match rej.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiErr::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ => ApiErr::invalid(format!("malformed request body: {}", rej.body_text())),
    }
}

fn too_large() -> ApiErr {
    ApiErr::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than the coordinator's body_limit: send a delta instead of a full state, or raise body_limit in the coordinator configuration",
    )
}

/// The body of `POST /endpoint/report`: a [`StateReport`], parsed without the buffering that
/// serde's internally tagged enums do (a full state is the largest and most frequent body:
/// that buffering doubled its parsing time), and a full state straight into its canonical
/// text ([`FullText`]: no per-package allocations, no second encoding pass). The JSON
/// accepted is the same.
pub enum ReportJson {
    Full(SnapText, Option<crate::proto::ChangeSource>),
    Delta(crate::snapshot::Delta, Option<crate::proto::ChangeSource>),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReportKind {
    Full,
    Delta,
}

#[derive(Deserialize)]
struct ReportBody {
    kind: ReportKind,
    #[serde(default)]
    snapshot: Option<FullText>,
    #[serde(default)]
    delta: Option<crate::snapshot::Delta>,
    #[serde(default)]
    source: Option<crate::proto::ChangeSource>,
}

impl<S: Send + Sync> FromRequest<S> for ReportJson {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiErr> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json_type {
            return Err(ApiErr::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rej| match rej.status() {
                StatusCode::PAYLOAD_TOO_LARGE => too_large(),
                _ => ApiErr::invalid(format!("cannot read the request body: {}", rej.body_text())),
            })?;
        // Checking the UTF-8 of the whole body at once is cheaper than string by string (a
        // full state has 6,000 strings); a body that is not UTF-8 is read as bytes, as before.
        let parsed = match std::str::from_utf8(&bytes) {
            Ok(text) => serde_json::from_str::<ReportBody>(text),
            Err(_) => serde_json::from_slice::<ReportBody>(&bytes),
        };
        let body = match parsed {
            Ok(b) => b,
            // The slower parser names the path of the problem in its message.
            Err(e) => {
                return Err(match Json::<StateReport>::from_bytes(&bytes) {
                    Err(rej) => json_rejection(rej),
                    Ok(_) => ApiErr::invalid(format!("malformed request body: {e}")),
                });
            }
        };
        match body {
            ReportBody {
                kind: ReportKind::Full,
                snapshot: Some(snapshot),
                source,
                ..
            } => Ok(Self::Full(snapshot.0, source)),
            ReportBody {
                kind: ReportKind::Delta,
                delta: Some(delta),
                source,
                ..
            } => Ok(Self::Delta(delta, source)),
            ReportBody {
                kind: ReportKind::Full,
                ..
            } => Err(ApiErr::invalid(
                "malformed request body: a full report needs `snapshot`",
            )),
            ReportBody { .. } => Err(ApiErr::invalid(
                "malformed request body: a delta report needs `delta`",
            )),
        }
    }
}

/// A path parameter; a malformed one is `400 invalid_request`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiErr> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|rej: PathRejection| ApiErr::invalid(format!("bad path: {}", rej.body_text())))
    }
}

/// A query string; a malformed one is `400 invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiErr> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|rej: QueryRejection| {
                ApiErr::invalid(format!("bad query string: {}", rej.body_text()))
            })
    }
}

fn peer(ci: &ConnectInfo<SocketAddr>) -> Option<IpAddr> {
    Some(ci.0.ip())
}

type ApiResult<T> = Result<Json<T>, ApiErr>;

// ---------------------------------------------------------------------------------------------
// Router

pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        // admin
        .route("/pools", post(create_pool).get(list_pools))
        .route(
            "/pools/{id}",
            get(get_pool).patch(update_pool).delete(delete_pool),
        )
        .route(
            "/pools/{id}/join-tokens",
            post(create_join_token).get(list_join_tokens),
        )
        .route("/join-tokens/{id}", delete(revoke_join_token))
        .route("/stats", get(stats))
        .route("/pools/{id}/endpoints", get(pool_endpoints))
        .route("/pools/{id}/targets", get(pool_targets))
        .route("/pools/{id}/target/revert", post(revert_target))
        .route("/pools/{id}/ws", get(ws::admin_socket))
        .route(
            "/endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route("/endpoints/{id}/revoke", post(revoke_endpoint))
        .route("/endpoints/{id}/changes", get(endpoint_changes))
        .route("/endpoints/{id}/operations", post(admin_create_operation))
        .route("/audit", get(list_audit))
        .route("/operations", get(list_operations))
        .route("/operations/{id}", get(get_operation))
        .route("/operations/{id}/cancel", post(cancel_operation))
        .route("/pools/{id}/rollout", get(pool_rollout))
        .route("/pools/{id}/rollouts", get(pool_rollouts))
        .route("/pools/{id}/rollout/{action}", post(pool_rollout_action))
        .route(
            "/endpoints/{id}/hold",
            post(admin_set_hold).delete(admin_clear_hold),
        )
        .route("/clock", get(get_clock).post(change_clock))
        // registration
        .route("/register", post(register))
        // endpoint
        .route("/endpoint/report", post(endpoint_report))
        .route(
            "/endpoint/target",
            get(endpoint_target).post(endpoint_set_target),
        )
        .route("/endpoint/status", get(endpoint_status))
        .route("/endpoint/offer", get(endpoint_offer))
        .route(
            "/endpoint/hold",
            post(endpoint_set_hold).delete(endpoint_clear_hold),
        )
        .route("/endpoint/what-if", post(endpoint_what_if))
        .route(
            "/endpoint/operations",
            post(endpoint_create_operation).get(endpoint_operations),
        )
        .route(
            "/endpoint/operations/{id}/progress",
            post(endpoint_progress),
        )
        .route("/endpoint/operations/{id}/result", post(endpoint_result))
        .route("/endpoints/ws", get(ws::endpoint_socket))
        // both
        .route("/snapshots/{hash}", get(get_snapshot))
        .route("/pools/{id}/targets/{revision}/manifest", get(get_manifest))
        .route(
            "/pools/{id}/repo/{revision}",
            get(super::pool_repo::missing),
        )
        .route(
            "/pools/{id}/repo/{revision}/{file}",
            get(super::pool_repo::get_file)
                .put(super::pool_repo::put_file)
                // Uploads are bounded by the manifest's size instead.
                .layer(DefaultBodyLimit::disable()),
        )
        // unauthenticated
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics));
    let body_limit = state.settings.body_limit;
    let mut app = Router::new().nest(crate::proto::API_PREFIX, api);
    if state.settings.dashboard.enabled {
        app = app.merge(super::dashboard::router(state.clone()));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every request by route and status, and bounds non-WebSocket requests in time.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Sockets live long; repository transfers are bounded by size, not time.
    // The dashboard's event streams live as long as the page.
    let response =
        if route.ends_with("/ws") || route.contains("/repo/") || route.ends_with("/events") {
            next.run(req).await
        } else {
            let limit = Duration::from_secs(state.settings.request_timeout_secs.max(1));
            match tokio::time::timeout(limit, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took longer than the coordinator's request_timeout_secs: retry later",
            )
            .into_response(),
        }
        };
    state.metrics.request(&route, response.status().as_u16());
    response
}

/// Rate limits each request (see `limits`) and replaces the socket address in `ConnectInfo`
/// by the client address (different only behind a trusted proxy), so handlers, the audit log
/// and sockets all see the client. A bearer token is looked up here: a valid one is limited
/// by its own bucket, an invalid one (like no token) by the client IP's, and the extractors
/// reuse what was found.
async fn limit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    use super::auth::{Resolved, bearer_in, caller_of};
    use super::limits::Key;
    if let Some(ConnectInfo(sock)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let client =
            super::limits::client_addr(sock, req.headers(), &state.settings.trusted_proxies);
        req.extensions_mut().insert(ConnectInfo(client));
        let now = std::time::Instant::now();
        let by_ip = Key::Ip(client.ip());
        let invalid = |state: &AppState| {
            state
                .invalid_token_limiter
                .check(by_ip, now)
                .and_then(|()| state.anonymous_limiter.check(by_ip, now))
        };
        let checked = match bearer_in(req.headers()).map(str::to_owned) {
            Some(token) => match caller_of(&state, &token).await {
                Ok(Some(caller)) => {
                    req.extensions_mut().insert(Resolved(Some(caller)));
                    let h: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
                    state.token_limiter.check(Key::Token(h), now)
                }
                Ok(None) => {
                    req.extensions_mut().insert(Resolved(None));
                    invalid(&state)
                }
                // The database failed: the handler's own lookup reports it.
                Err(_) => invalid(&state),
            },
            // An Authorization header that is not a usable bearer token.
            None if req.headers().contains_key(header::AUTHORIZATION) => invalid(&state),
            None => state.anonymous_limiter.check(by_ip, now),
        };
        if let Err(wait) = checked {
            let mut resp = super::limits::rate_limited(wait).into_response();
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(super::limits::retry_after_secs(wait)),
            );
            return resp;
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiErr {
    ApiErr::not_found("no such route: the API is under /api/v1 (see the coordinator documentation)")
}

async fn method_not_allowed() -> ApiErr {
    ApiErr::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that HTTP method",
    )
}

// ---------------------------------------------------------------------------------------------
// Health and metrics

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiErr> {
    state
        .ping_database()
        .await
        .map_err(|e| ApiErr::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.message))?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

async fn metrics(State(state): State<AppState>) -> Response {
    // From the database, not a counter: true after a restart too.
    let halted = state.halted_rollouts().await.unwrap_or(0);
    let rollouts = format!(
        "# HELP pacpool_rollouts_halted Rollouts halted (failures over a ring's gate, or by an admin) and not resumed.\n\
         # TYPE pacpool_rollouts_halted gauge\npacpool_rollouts_halted {halted}\n"
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render() + &rollouts + &state.pool_repo.metrics(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Rollouts, holds and the test clock

async fn pool_rollout(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Option<crate::proto::Rollout>> {
    Ok(Json(state.rollout_show(id).await?))
}

async fn pool_rollouts(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Vec<crate::proto::Rollout>> {
    Ok(Json(state.rollouts(id, 20).await?))
}

async fn pool_rollout_action(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath((id, action)): ApiPath<(i64, String)>,
) -> ApiResult<Option<crate::proto::Rollout>> {
    let action = match action.as_str() {
        "pause" => "pause",
        "resume" => "resume",
        "halt" => "halt",
        _ => {
            return Err(ApiErr::not_found(
                "no such rollout action: use pause, resume or halt",
            ));
        }
    };
    Ok(Json(state.rollout_action(id, action, peer(&ci)).await?))
}

async fn admin_set_hold(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<crate::proto::SetHold>,
) -> ApiResult<crate::proto::Hold> {
    Ok(Json(state.set_hold(id, req, "admin", peer(&ci)).await?))
}

async fn admin_clear_hold(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiErr> {
    state.clear_hold(id, "admin", peer(&ci)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn endpoint_offer(
    ep: EndpointAuth,
    State(state): State<AppState>,
) -> ApiResult<crate::proto::Offer> {
    Ok(Json(state.offer(ep.id, ep.pool_id).await?))
}

async fn endpoint_set_hold(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<crate::proto::SetHold>,
) -> ApiResult<crate::proto::Hold> {
    Ok(Json(
        state.set_hold(ep.id, req, "endpoint", peer(&ci)).await?,
    ))
}

async fn endpoint_clear_hold(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
) -> Result<StatusCode, ApiErr> {
    state.clear_hold(ep.id, "endpoint", peer(&ci)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_clock(_: Admin, State(state): State<AppState>) -> ApiResult<crate::proto::ClockNow> {
    Ok(Json(crate::proto::ClockNow {
        now: state.clock.now(),
        adjustable: state.clock.adjustable(),
    }))
}

/// Test mode only: sets or advances the clock, then runs a rollout step for every pool
/// (`{}` only runs the steps: a test's way to wait for them).
async fn change_clock(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<crate::proto::ClockChange>,
) -> ApiResult<crate::proto::ClockNow> {
    if !state.clock.change(req.set, req.advance) {
        return Err(ApiErr::forbidden(
            "this coordinator's clock cannot be changed: test_clock is off (it is for tests only)",
        ));
    }
    // Answered after the rollout steps at the new time committed: a test may check at once.
    state.rollout_step_all().await;
    Ok(Json(crate::proto::ClockNow {
        now: state.clock.now(),
        adjustable: true,
    }))
}

// ---------------------------------------------------------------------------------------------
// Pools (admin)

fn check_name(kind: &str, name: &str) -> Result<(), ApiErr> {
    // The first character is a letter or digit: a name is never taken for a command-line
    // option (`-x`) or a relative path (`.`, `..`) where it is shown or typed.
    let ok = name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ApiErr::invalid(format!(
            "{kind} name {:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 . - _, starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Most patterns in a policy's `ignore` or `protected` list, and the longest pattern.
const MAX_POLICY_PATTERNS: usize = 1000;
const MAX_PATTERN_BYTES: usize = 256;

fn check_policy(policy: &PoolPolicy) -> Result<(), ApiErr> {
    for (list, patterns) in [
        ("ignore", &policy.plan.ignore),
        ("protected", &policy.plan.protected),
    ] {
        if patterns.len() > MAX_POLICY_PATTERNS
            || patterns.iter().any(|p| p.len() > MAX_PATTERN_BYTES)
        {
            return Err(ApiErr::invalid(format!(
                "the policy's {list} list is too large: use at most {MAX_POLICY_PATTERNS} patterns of at most {MAX_PATTERN_BYTES} bytes (globs such as `linux*` cover many packages)"
            )));
        }
    }
    policy
        .plan
        .compile()
        .map_err(|e| ApiErr::invalid(format!("{e}: fix the pattern")))?;
    super::rollout::check(&policy.rollout)
        .map_err(|e| ApiErr::invalid(format!("the rollout policy is invalid: {e}")))?;
    if let Some(w) = &policy.auto_sync_window {
        let valid = w.split_once('-').is_some_and(|(a, b)| hhmm(a) && hhmm(b));
        if !valid {
            return Err(ApiErr::invalid(format!(
                "auto_sync_window {w:?} is invalid: use HH:MM-HH:MM, e.g. 02:00-05:00"
            )));
        }
    }
    Ok(())
}

fn hhmm(s: &str) -> bool {
    let Some((h, m)) = s.split_once(':') else {
        return false;
    };
    h.len() == 2
        && m.len() == 2
        && h.parse::<u8>().is_ok_and(|h| h < 24)
        && m.parse::<u8>().is_ok_and(|m| m < 60)
}

pub(crate) fn no_pool(id: i64) -> ApiErr {
    ApiErr::not_found(format!("no pool {id}: list pools with GET /api/v1/pools"))
}

async fn create_pool(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<CreatePool>,
) -> Result<(StatusCode, Json<Pool>), ApiErr> {
    check_name("pool", &req.name)?;
    check_policy(&req.policy)?;
    let pool = state.create_pool(req, peer(&ci)).await?;
    Ok((StatusCode::CREATED, Json(pool)))
}

async fn list_pools(_: Admin, State(state): State<AppState>) -> ApiResult<Vec<Pool>> {
    Ok(Json(state.pools().await?))
}

async fn get_pool(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Pool> {
    Ok(Json(state.pool(id).await?))
}

async fn update_pool(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<UpdatePool>,
) -> ApiResult<Pool> {
    if let Some(name) = &req.name {
        check_name("pool", name)?;
    }
    if let Some(policy) = &req.policy {
        check_policy(policy)?;
    }
    let (pool, changed_policy) = state.update_pool(id, req, peer(&ci)).await?;
    if let Some(policy) = changed_policy {
        let rings = !policy.rollout.rings.is_empty();
        state
            .hub
            .publish(id, Audience::All, &ServerMsg::PolicyChanged { policy });
        if rings {
            // Ring membership may have changed: endpoints ask for their offer again.
            state.rollout_poke();
            state.rollout_changed(id).await;
        }
        // Status depends on the policy.
        if state.hub.has_admins(id)
            && let Ok(all) = state.pool_statuses(id).await
        {
            for status in all {
                state.hub.publish(
                    id,
                    Audience::Admins,
                    &ServerMsg::EndpointStatusChanged { status },
                );
            }
        }
    }
    Ok(Json(pool))
}

async fn delete_pool(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiErr> {
    state.delete_pool(id, peer(&ci)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_join_token(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(pool_id): ApiPath<i64>,
    ApiJson(req): ApiJson<CreateJoinToken>,
) -> Result<(StatusCode, Json<JoinToken>), ApiErr> {
    let token = state.create_join_token(pool_id, req, peer(&ci)).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

async fn list_join_tokens(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(pool_id): ApiPath<i64>,
) -> ApiResult<Vec<JoinTokenInfo>> {
    Ok(Json(state.join_tokens(pool_id).await?))
}

/// Revokes a join token: registration with it fails from now on; endpoints that registered
/// with it keep their own tokens.
async fn revoke_join_token(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiErr> {
    state.revoke_join_token(id, peer(&ci)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(_: Admin, State(state): State<AppState>) -> ApiResult<Stats> {
    Ok(Json(state.stats().await?))
}

async fn pool_endpoints(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Vec<EndpointStatus>> {
    Ok(Json(state.pool_statuses(id).await?))
}

async fn pool_targets(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Vec<TargetInfo>> {
    Ok(Json(state.pool_targets(id).await?))
}

async fn revert_target(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<RevertTargetRequest>,
) -> ApiResult<TargetInfo> {
    Ok(Json(state.revert_target(id, req, peer(&ci)).await?))
}

// ---------------------------------------------------------------------------------------------
// Endpoints (admin)

async fn get_endpoint(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<EndpointStatus> {
    Ok(Json(state.endpoint_status(id).await?))
}

async fn update_endpoint(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<UpdateEndpoint>,
) -> ApiResult<EndpointStatus> {
    if let Some(name) = &req.name {
        check_name("endpoint", name)?;
    }
    let change = state.update_endpoint(id, req, peer(&ci)).await?;
    if change.moved() {
        state.pool_membership_changed();
        // Its sockets act for the old pool: close them; reconnecting gives the new Welcome.
        state.hub.kick(id, Kick::Moved);
    }
    let status = state.endpoint_status(id).await?;
    state.status_changed(change.new_pool, id).await;
    Ok(Json(status))
}

async fn delete_endpoint(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiErr> {
    state.delete_endpoint(id, peer(&ci)).await?;
    state.pool_membership_changed();
    state.hub.kick(id, Kick::Removed);
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_endpoint(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiErr> {
    state.revoke_endpoint(id, peer(&ci)).await?;
    state.hub.kick(id, Kick::Revoked);
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_create_operation(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<CreateOperation>,
) -> Result<(StatusCode, Json<Operation>), ApiErr> {
    let (op, created) = state
        .create_operation(Actor::Admin, id, req, peer(&ci))
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(op),
    ))
}

// ---------------------------------------------------------------------------------------------
// Audit and operations (admin)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    cursor: Option<i64>,
    limit: Option<i64>,
    endpoint: Option<i64>,
    pool: Option<i64>,
}

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

fn page_limit(q: &PageQuery) -> Result<i64, ApiErr> {
    match q.limit {
        None => Ok(DEFAULT_PAGE),
        Some(l) if (1..=MAX_PAGE).contains(&l) => Ok(l),
        Some(_) => Err(ApiErr::invalid(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

async fn list_audit(
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Page<AuditEntry>> {
    let limit = page_limit(&q)?;
    let items = state.audit_entries(q.cursor, limit).await?;
    Ok(Json(Page::keyset(items, limit, |e| e.id)))
}

/// `GET /endpoints/{id}/changes`: the endpoint's state changes and where each came from.
async fn endpoint_changes(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Page<crate::proto::StateChange>> {
    let limit = page_limit(&q)?;
    let items = state.endpoint_changes(id, q.cursor, limit).await?;
    Ok(Json(Page::keyset(items, limit, |e| e.id)))
}

async fn list_operations(
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Page<Operation>> {
    let limit = page_limit(&q)?;
    Ok(Json(
        state
            .operations_page(q.endpoint, q.pool, q.cursor, limit)
            .await?,
    ))
}

async fn get_operation(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Operation> {
    Ok(Json(state.operation_for(&caller, id).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CancelQuery {
    force: bool,
}

/// `POST /operations/{id}/cancel[?force=true]`.
async fn cancel_operation(
    _: Admin,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<CancelQuery>,
) -> ApiResult<Operation> {
    Ok(Json(state.cancel(id, q.force, peer(&ci)).await?))
}

// ---------------------------------------------------------------------------------------------
// Registration

async fn register(
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiErr> {
    check_name("endpoint", &req.name)?;
    let resp = state.register(req, peer(&ci)).await?;
    state.pool_membership_changed();
    Ok((StatusCode::CREATED, Json(resp)))
}

// ---------------------------------------------------------------------------------------------
// Endpoint (own token)

async fn endpoint_report(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    report: ReportJson,
) -> ApiResult<ReportAck> {
    let peer = peer(&ci);
    Ok(Json(match report {
        ReportJson::Full(text, source) => state.report_full(&ep, text, source, peer).await?,
        ReportJson::Delta(delta, source) => {
            state
                .report(&ep, StateReport::Delta { delta }, source, peer)
                .await?
        }
    }))
}

async fn endpoint_target(
    ep: EndpointAuth,
    State(state): State<AppState>,
) -> ApiResult<Option<TargetInfo>> {
    // The target this endpoint is offered (the pool's when it has no rings).
    Ok(Json(state.offer(ep.id, ep.pool_id).await?.target))
}

async fn endpoint_set_target(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<SetTargetRequest>,
) -> ApiResult<TargetInfo> {
    Ok(Json(state.set_target(&ep, req, peer(&ci)).await?))
}

/// Read-only: the other endpoints' statuses now and if this endpoint's reported state became
/// the target (asked before set-latest).
async fn endpoint_what_if(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<crate::proto::WhatIfRequest>,
) -> ApiResult<crate::proto::WhatIf> {
    Ok(Json(state.what_if(&ep, req.snapshot).await?))
}

async fn endpoint_status(
    ep: EndpointAuth,
    State(state): State<AppState>,
) -> ApiResult<EndpointStatus> {
    Ok(Json(state.endpoint_status(ep.id).await?))
}

async fn endpoint_create_operation(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<CreateOperation>,
) -> Result<(StatusCode, Json<Operation>), ApiErr> {
    let (op, created) = state
        .create_operation(Actor::Endpoint(ep.id), ep.id, req, peer(&ci))
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(op),
    ))
}

async fn endpoint_operations(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Page<Operation>> {
    let limit = page_limit(&q)?;
    Ok(Json(
        state
            .operations_page(Some(ep.id), None, q.cursor, limit)
            .await?,
    ))
}

async fn endpoint_progress(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(progress): ApiJson<Progress>,
) -> ApiResult<Operation> {
    Ok(Json(state.progress(&ep, id, progress, peer(&ci)).await?))
}

async fn endpoint_result(
    ep: EndpointAuth,
    State(state): State<AppState>,
    ci: ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(result): ApiJson<OperationResult>,
) -> ApiResult<Operation> {
    Ok(Json(state.result(&ep, id, result, peer(&ci)).await?))
}

/// A target revision's manifest (what each package file is). An endpoint may read its own
/// pool's; an admin any. 404 when the revision has none (set by an older endpoint, or gone).
async fn get_manifest(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((pool_id, revision)): ApiPath<(i64, u64)>,
) -> ApiResult<crate::manifest::Manifest> {
    Ok(Json(state.manifest_for(&caller, pool_id, revision).await?))
}

/// The canonical text form of a snapshot ([`crate::snapshot::Snapshot::encode`]). An
/// endpoint may fetch its own current state and any target revision of its pool; an admin
/// any snapshot.
async fn get_snapshot(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiErr> {
    let hash: SnapshotHash = hash
        .parse()
        .map_err(|e: crate::snapshot::SnapshotError| ApiErr::invalid(e.to_string()))?;
    let body = state.snapshot_for(caller, hash).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::super::auth::{new_token, token_hash};
    use super::*;

    #[test]
    fn names_and_windows() {
        assert!(check_name("pool", "lab-1.x_y").is_ok());
        for bad in [
            "",
            "a b",
            "--x;",
            "é",
            &"x".repeat(65),
            "-Syu",
            ".",
            "..",
            "_x",
        ] {
            assert!(check_name("pool", bad).is_err(), "{bad:?}");
        }
        assert!(hhmm("02:00") && hhmm("23:59"));
        assert!(!hhmm("24:00") && !hhmm("2:00") && !hhmm("02:60") && !hhmm("0200"));
        let mut policy = PoolPolicy {
            auto_sync_window: Some("02:00-05:30".into()),
            ..PoolPolicy::default()
        };
        assert!(check_policy(&policy).is_ok());
        policy.auto_sync_window = Some("late".into());
        assert!(check_policy(&policy).is_err());
    }

    #[test]
    fn tokens_are_256_bit_and_stored_hashed() {
        let a = new_token("ppe_").unwrap();
        let b = new_token("ppe_").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
