//! The dashboard's HTML, written with maud: every `(value)` is escaped by the macro, so a
//! string from an endpoint (its name, an operation's message, a failure reason) is shown as
//! text whatever it holds. No inline script or style: the page loads `dashboard.js` and
//! `dashboard.css` only, as the Content-Security-Policy demands.
//!
//! Here: the frame, the login, the pools and pool pages; `endpoint`, `packages` and `admin`
//! (targets, confirmations, join tokens, the audit log) hold the others.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::super::db::enum_to_sql;
use super::session::{Session, url_encode};
use crate::display::utc;
use crate::proto::{EndpointState, EndpointStatus, Operation, Pool};

mod admin;
mod endpoint;
mod packages;

pub use admin::*;
pub use endpoint::*;
pub use packages::*;

/// Every state, in the order pages list them.
pub const STATES: [EndpointState; 8] = [
    EndpointState::InSync,
    EndpointState::Behind,
    EndpointState::Ahead,
    EndpointState::Diverged,
    EndpointState::Syncing,
    EndpointState::Offline,
    EndpointState::Error,
    EndpointState::Unknown,
];

pub fn state_label(s: EndpointState) -> String {
    enum_to_sql(&s)
}

/// Counts of `statuses` per state, in [`STATES`] order.
pub fn count_states(statuses: &[EndpointStatus]) -> Vec<(EndpointState, u64)> {
    STATES
        .iter()
        .map(|s| (*s, statuses.iter().filter(|e| e.state == *s).count() as u64))
        .collect()
}

fn time(t: i64) -> Markup {
    html! { time datetime=(t) { (utc(t)) " UTC" } }
}

fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// The page frame: header with navigation and logout, the body.
pub fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pacpool" }
                link rel="stylesheet" href="/dashboard/static/dashboard.css";
                script src="/dashboard/static/dashboard.js" defer {}
            }
            body {
                header {
                    nav aria-label="main" {
                        a.brand href="/dashboard/" { "pacpool" }
                        @if let Some(s) = session {
                            a href="/dashboard/" { "Pools" }
                            a href="/dashboard/audit" { "Audit log" }
                            form.inline method="post" action="/dashboard/logout" {
                                (csrf_field(s))
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

pub fn page(title: &str, session: &Session, body: Markup) -> Response {
    layout(title, Some(session), body).into_response()
}

/// A refused or failed request: its status and what to do, answered as a page.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl Refused {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<super::super::error::ApiErr> for Refused {
    fn from(e: super::super::error::ApiErr) -> Self {
        Self::new(e.status, e.message)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error_page(self.status, &self.message)
    }
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = html! {
        h1 { "Error " (status.as_u16()) }
        p.error role="alert" { (message) }
        p { a href="/dashboard/" { "Back to the pools" } }
    };
    (status, layout("Error", None, body)).into_response()
}

pub fn login_page(next: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/dashboard/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
            p.hint { "The admin token is in the coordinator's admin_token_file (readable by its user only)." }
        },
    )
}

fn state_badge(s: EndpointState) -> Markup {
    let label = state_label(s);
    html! { span class={ "state state-" (label) } { (label) } }
}

/// The pools table (also served alone for live refreshes).
pub fn pools_table(pools: &[(Pool, Vec<(EndpointState, u64)>)]) -> Markup {
    html! {
        @if pools.is_empty() {
            p { "No pool yet: create one with " code { "pacpool admin pool create NAME" } "." }
        } @else {
            div.scroll {
                table #pools {
                    thead { tr {
                        th scope="col" { "Pool" }
                        th scope="col" { "Endpoints" }
                        @for s in STATES { th scope="col" { (state_label(s)) } }
                        th scope="col" { "Target" }
                        th scope="col" { "Set by" }
                        th scope="col" { "Set at" }
                    } }
                    tbody {
                        @for (p, counts) in pools {
                            tr id={ "pool-" (p.id) } {
                                th scope="row" { a href={ "/dashboard/pools/" (p.id) } { (p.name) } }
                                td.num { (p.endpoint_count) }
                                @for (s, n) in counts {
                                    td.num data-state=(state_label(*s)) { (n) }
                                }
                                @if let Some(t) = &p.target {
                                    td { a href={ "/dashboard/pools/" (p.id) "/targets" } { "revision " span.revision { (t.revision) } } }
                                    td { (t.set_by) }
                                    td { (time(t.set_at)) }
                                } @else {
                                    td colspan="3" { "no target yet" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn pools_page(session: &Session, pools: &[(Pool, Vec<(EndpointState, u64)>)]) -> Response {
    page(
        "Pools",
        session,
        html! {
            h1 { "Pools" }
            p.live-status #live-status aria-live="polite" { "static (JavaScript off: reload to update)" }
            section #live data-events="/dashboard/events" data-fragment="/dashboard/?fragment=1" {
                (pools_table(pools))
            }
        },
    )
}

/// The pool page's query string: filter, sort, page.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct PoolQuery {
    pub state: Option<String>,
    pub q: Option<String>,
    pub sort: Option<String>,
    pub desc: Option<u8>,
    pub page: Option<usize>,
    pub fragment: Option<u8>,
}

impl PoolQuery {
    /// The query string for these settings with `change` applied (links keep the rest).
    pub fn href(&self, pool: i64, change: impl FnOnce(&mut PoolQuery)) -> String {
        let mut q = self.clone();
        q.fragment = None;
        change(&mut q);
        let mut parts = Vec::new();
        if let Some(s) = q.state.as_deref().filter(|s| !s.is_empty()) {
            parts.push(format!("state={}", url_encode(s)));
        }
        if let Some(s) = q.q.as_deref().filter(|s| !s.is_empty()) {
            parts.push(format!("q={}", url_encode(s)));
        }
        if let Some(s) = q.sort.as_deref().filter(|s| !s.is_empty()) {
            parts.push(format!("sort={}", url_encode(s)));
        }
        if q.desc == Some(1) {
            parts.push("desc=1".into());
        }
        if let Some(p) = q.page.filter(|p| *p > 1) {
            parts.push(format!("page={p}"));
        }
        let mut out = format!("/dashboard/pools/{pool}");
        if !parts.is_empty() {
            out.push('?');
            out.push_str(&parts.join("&"));
        }
        out
    }
}

/// One page of the pool's endpoints, with what the table needs.
pub struct PoolRows<'a> {
    pub pool: &'a Pool,
    pub counts: Vec<(EndpointState, u64)>,
    pub rows: Vec<(&'a EndpointStatus, Option<&'a Operation>)>,
    pub matching: usize,
    pub page: usize,
    pub pages: usize,
    pub query: &'a PoolQuery,
    pub now: i64,
}

fn ago(now: i64, t: Option<i64>) -> Markup {
    match t {
        None => html! { "never" },
        Some(t) => {
            let d = (now - t).max(0);
            let text = if d < 120 {
                format!("{d} s ago")
            } else if d < 7200 {
                format!("{} min ago", d / 60)
            } else if d < 172_800 {
                format!("{} h ago", d / 3600)
            } else {
                format!("{} days ago", d / 86_400)
            };
            html! { time datetime=(t) title={ (utc(t)) " UTC" } { (text) } }
        }
    }
}

fn operation_cell(op: &Operation) -> Markup {
    html! {
        a href={ "/dashboard/endpoints/" (op.endpoint_id) "#operations" } {
            (enum_to_sql(&op.kind)) " " (enum_to_sql(&op.state))
        }
        @if let Some(p) = &op.progress {
            ": " (p.stage) " "
            progress max="100" value=(p.percent) { (p.percent) "%" }
            " " (p.percent) "%"
            @if let Some(c) = &p.current { " (" (c) ")" }
        }
    }
}

fn pending(s: &EndpointStatus) -> String {
    match s.state {
        EndpointState::Unknown => "unknown".into(),
        _ => s.counts.summary(),
    }
}

/// The live part of the pool page (also served alone for live refreshes).
pub fn pool_rows(r: &PoolRows<'_>) -> Markup {
    let pool = r.pool;
    let sort_link = |key: &str, label: &str| {
        let current = r.query.sort.as_deref().unwrap_or("name") == key;
        let desc = current && r.query.desc != Some(1);
        let href = r.query.href(pool.id, |q| {
            q.sort = Some(key.to_owned());
            q.desc = desc.then_some(1);
            q.page = None;
        });
        let mark = match (current, r.query.desc == Some(1)) {
            (false, _) => "",
            (true, false) => " ▲",
            (true, true) => " ▼",
        };
        html! { a href=(href) { (label) (mark) } }
    };
    html! {
        p.summary #counts {
            @for (s, n) in &r.counts {
                a class={ "count state-" (state_label(*s)) } data-state=(state_label(*s))
                    href=(r.query.href(pool.id, |q| { q.state = Some(state_label(*s)); q.page = None; })) {
                    (state_label(*s)) ": " span.n { (n) }
                }
                " "
            }
        }
        p {
            @match &pool.target {
                Some(t) => { "Target: revision " span #target-revision { (t.revision) } ", set by " (t.set_by) " at " (time(t.set_at)) "." }
                None => { "No target yet: set one with " code { "pacpool set-latest" } " on a machine." }
            }
        }
        div.scroll {
            table #endpoints {
                thead { tr {
                    th scope="col" { (sort_link("name", "Name")) }
                    th scope="col" { (sort_link("state", "Status")) }
                    th scope="col" { "Changes pending" }
                    th scope="col" { (sort_link("seen", "Last seen")) }
                    th scope="col" { "Operation" }
                } }
                tbody {
                    @for (s, op) in &r.rows {
                        tr id={ "endpoint-" (s.id) } data-state=(state_label(s.state)) {
                            th scope="row" { a href={ "/dashboard/endpoints/" (s.id) } { (s.name) } }
                            td { (state_badge(s.state)) }
                            td { (pending(s)) }
                            td { (ago(r.now, s.last_seen)) }
                            td { @if let Some(op) = op { (operation_cell(op)) } }
                        }
                    }
                    @if r.rows.is_empty() {
                        tr { td colspan="5" { "No endpoint matches." } }
                    }
                }
            }
        }
        nav.pages aria-label="pages" {
            (r.matching) " endpoints match. Page " (r.page) " of " (r.pages) ". "
            @if r.page > 1 {
                a rel="prev" href=(r.query.href(pool.id, |q| q.page = Some(r.page - 1))) { "← Previous" }
                " "
            }
            @if r.page < r.pages {
                a rel="next" href=(r.query.href(pool.id, |q| q.page = Some(r.page + 1))) { "Next →" }
            }
        }
    }
}

fn pool_links(pool: &Pool) -> Markup {
    html! {
        nav.sub aria-label="pool" {
            a href={ "/dashboard/pools/" (pool.id) } { "Endpoints" }
            a href={ "/dashboard/pools/" (pool.id) "/packages" } { "Packages" }
            a href={ "/dashboard/pools/" (pool.id) "/targets" } { "Targets" }
            a href={ "/dashboard/pools/" (pool.id) "/tokens" } { "Join tokens" }
            a href={ "/dashboard/audit?pool=" (pool.id) } { "Audit" }
        }
    }
}

pub fn pool_page(session: &Session, r: &PoolRows<'_>, fragment: &str) -> Response {
    let pool = r.pool;
    let q = r.query;
    page(
        &pool.name,
        session,
        html! {
            h1 { "Pool " (pool.name) }
            (pool_links(pool))
            form.filters method="get" action={ "/dashboard/pools/" (pool.id) } {
                label for="q" { "Name contains" }
                input #q type="search" name="q" value=(q.q.as_deref().unwrap_or(""));
                label for="state" { "Status" }
                select #state name="state" {
                    option value="" { "any" }
                    @for s in STATES {
                        option value=(state_label(s)) selected[q.state.as_deref() == Some(state_label(s).as_str())] { (state_label(s)) }
                    }
                }
                @if let Some(sort) = &q.sort { input type="hidden" name="sort" value=(sort); }
                button type="submit" { "Filter" }
                " "
                a href={ "/dashboard/pools/" (pool.id) "/sync-behind" } { "Request sync of all behind endpoints…" }
            }
            p.live-status #live-status aria-live="polite" { "static (JavaScript off: reload to update)" }
            section #live data-events={ "/dashboard/pools/" (pool.id) "/events" } data-fragment=(fragment) {
                (pool_rows(r))
            }
        },
    )
}
