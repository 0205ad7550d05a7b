//! The dashboard's HTML, written with maud: every `(value)` is escaped by the macro, so a
//! string from an endpoint (its name, an operation's message, a failure reason) is shown as
//! text whatever it holds. No inline script or style: the page loads `dashboard.js` and
//! `dashboard.css` only, as the Content-Security-Policy demands.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::super::db::enum_to_sql;
use super::super::overview::{Cause, Diff, EndpointDetail, PackageMatrix};
use super::session::{Session, url_encode};
use crate::display::utc;
use crate::proto::{
    AuditEntry, EndpointState, EndpointStatus, JoinToken, JoinTokenInfo, Operation, Pool,
    TargetInfo,
};

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

fn diff_block(d: &Diff) -> Markup {
    html! {
        p.diff-summary { (d.counts.summary()) }
        @if !d.lines.is_empty() || !d.kept.is_empty() {
            pre.diff { @for l in &d.lines { "  " (l) "\n" } @for k in &d.kept { (k) "\n" } }
        }
    }
}

fn operations_table(ops: &[Operation]) -> Markup {
    html! {
        div.scroll {
            table #operations-table {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "Kind" } th scope="col" { "State" }
                    th scope="col" { "Created" } th scope="col" { "Progress / result" }
                } }
                tbody {
                    @for op in ops {
                        tr id={ "operation-" (op.id) } data-state=(enum_to_sql(&op.state)) {
                            td { (op.id) }
                            td { (enum_to_sql(&op.kind)) }
                            td { (enum_to_sql(&op.state)) }
                            td { (time(op.created_at)) }
                            td {
                                @if let Some(p) = &op.progress {
                                    @if op.result.is_none() {
                                        (p.stage) " " progress max="100" value=(p.percent) { (p.percent) "%" } " " (p.percent) "%"
                                        @if let Some(c) = &p.current { " (" (c) ")" }
                                    }
                                }
                                @if let Some(res) = &op.result {
                                    span.message { (res.message) }
                                    @if !res.failures.is_empty() {
                                        ul.failures {
                                            @for f in &res.failures { li { strong { (f.name) } ": " (f.reason) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if ops.is_empty() { tr { td colspan="5" { "No operation yet." } } }
                }
            }
        }
    }
}

/// The live part of the endpoint page.
pub fn endpoint_live(d: &EndpointDetail, now: i64) -> Markup {
    let s = &d.status;
    html! {
        dl.facts {
            dt { "Status" } dd #endpoint-state data-state=(state_label(s.state)) { (state_badge(s.state)) }
            dt { "Changes pending" } dd { (pending(s)) }
            dt { "Last seen" } dd { (ago(now, s.last_seen)) }
            dt { "State" } dd { @match &s.current { Some(h) => code { (h.short()) }, None => "never reported" } }
            dt { "Target" } dd { @match &d.target { Some(t) => { "revision " (t.revision) " (" (t.package_count) " packages)" }, None => "none" } }
            dt { "Last change" } dd #last-change {
                @match d.history.first() {
                    None => "no state recorded yet",
                    Some(h) => {
                        (time(h.at)) ": "
                        @match &h.cause {
                            Cause::Operation(id, kind) => { "by pacpool, operation #" (id) " (" (kind) ")" }
                            Cause::Machine => "changed on the machine itself (pacman, not a pacpool operation)",
                            Cause::FirstReport => "its first report to the coordinator",
                        }
                    }
                }
            }
        }
        h2 #diff { "Difference from the target" }
        @match &d.diff {
            Some(diff) => (diff_block(diff)),
            None => p { "No target or no reported state: nothing to compare." },
        }
        p.hint { "Worded as " code { "pacpool preview" } " does, with the pool's policy; the machine's own policy may keep more." }
        h2 #operations { "Operations" }
        (operations_table(&d.operations))
    }
}

pub fn endpoint_page(
    session: &Session,
    d: &EndpointDetail,
    compare: Option<(&str, &str, &Diff)>,
    fragment: &str,
    now: i64,
) -> Response {
    let s = &d.status;
    page(
        &s.name,
        session,
        html! {
            h1 { "Endpoint " span #endpoint-name { (s.name) } }
            p { "In pool " a href={ "/dashboard/pools/" (s.pool_id) } { (d.pool_name) } ". "
                a href={ "/dashboard/endpoints/" (s.id) "/sync" } { "Request a sync…" } }
            p.live-status #live-status aria-live="polite" { "static (JavaScript off: reload to update)" }
            section #live data-events={ "/dashboard/pools/" (s.pool_id) "/events" } data-fragment=(fragment) {
                (endpoint_live(d, now))
            }
            h2 #history { "State history" }
            @if d.history.is_empty() {
                p { "No state recorded yet." }
            } @else {
                form method="get" action={ "/dashboard/endpoints/" (s.id) "#compare" } {
                    div.scroll { table {
                        thead { tr { th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "When" }
                            th scope="col" { "State" } th scope="col" { "Packages" } th scope="col" { "Why" } } }
                        tbody {
                            @for (i, h) in d.history.iter().enumerate() {
                                tr {
                                    td { input type="radio" name="from" value=(h.snapshot.to_hex()) aria-label="compare from" checked[i == 1]; }
                                    td { input type="radio" name="to" value=(h.snapshot.to_hex()) aria-label="compare to" checked[i == 0]; }
                                    td { (time(h.at)) }
                                    td { code { (h.snapshot.short()) } }
                                    td.num { (h.packages) }
                                    td { @match &h.cause {
                                        Cause::Operation(id, kind) => { "operation #" (id) " (" (kind) ")" },
                                        Cause::Machine => "changed on the machine",
                                        Cause::FirstReport => "first report",
                                    } }
                                }
                            }
                        }
                    } }
                    button type="submit" { "Compare the two states" }
                }
            }
            @if let Some((from, to, diff)) = compare {
                h3 #compare { "From " code { (from) } " to " code { (to) } }
                (diff_block(diff))
            }
        },
    )
}

pub fn packages_page(
    session: &Session,
    pool: &Pool,
    m: &PackageMatrix,
    filter: &str,
    only_differing: bool,
) -> Response {
    let shown: Vec<_> = m
        .rows
        .iter()
        .filter(|r| filter.is_empty() || r.name.contains(filter))
        .filter(|r| {
            !only_differing
                || r.versions.len() > 1
                || r.absent > 0
                || r.target.as_deref() != r.versions.first().map(|v| v.0.as_str())
        })
        .collect();
    page(
        &format!("Packages of {}", pool.name),
        session,
        html! {
            h1 { "Packages of pool " (pool.name) }
            (pool_links(pool))
            p { (m.reported) " endpoints reported a state"
                @if m.unreported > 0 { ", " (m.unreported) " never did" }
                ". " @match m.target_revision { Some(r) => { "★ marks the version in target revision " (r) "." }, None => "No target yet." } }
            form.filters method="get" {
                label for="pq" { "Package name contains" }
                input #pq type="search" name="q" value=(filter);
                label { input type="checkbox" name="differ" value="1" checked[only_differing]; " only packages whose machines differ" }
                button type="submit" { "Filter" }
            }
            p { (shown.len()) " packages shown." }
            div.scroll {
                table #packages {
                    thead { tr { th scope="col" { "Package" } th scope="col" { "Versions (machines running each)" } th scope="col" { "Without it" } } }
                    tbody {
                        @for r in &shown {
                            tr {
                                th scope="row" { (r.name) }
                                td {
                                    @for (v, n) in &r.versions {
                                        @let target = r.target.as_deref() == Some(v.as_str());
                                        a class={ "version" @if target { " target" } }
                                            href={ "/dashboard/pools/" (pool.id) "/packages/" (url_encode(&r.name)) "?version=" (url_encode(v)) } {
                                            @if target { "★ " } (v) ": " (n)
                                        }
                                        " "
                                    }
                                    @if let Some(t) = &r.target {
                                        @if !r.versions.iter().any(|(v, _)| v == t) {
                                            span.version.target { "★ " (t) ": 0" }
                                        }
                                    }
                                }
                                td.num {
                                    @if r.absent > 0 {
                                        a href={ "/dashboard/pools/" (pool.id) "/packages/" (url_encode(&r.name)) "?absent=1" } { (r.absent) }
                                    } @else { "0" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn machines_page(
    session: &Session,
    pool: &Pool,
    package: &str,
    version: Option<&str>,
    machines: &[(i64, String)],
) -> Response {
    page(
        package,
        session,
        html! {
            h1 {
                @match version {
                    Some(v) => { "Machines running " (package) " " (v) }
                    None => { "Machines without " (package) }
                }
            }
            (pool_links(pool))
            p { (machines.len()) " of the pool's endpoints." }
            ul #machines { @for (id, name) in machines { li { a href={ "/dashboard/endpoints/" (id) } { (name) } } } }
        },
    )
}

pub fn targets_page(
    session: &Session,
    pool: &Pool,
    history: &[(TargetInfo, Option<Diff>)],
) -> Response {
    let current = pool.target.as_ref().map(|t| t.revision);
    page(
        &format!("Targets of {}", pool.name),
        session,
        html! {
            h1 { "Target revisions of pool " (pool.name) }
            (pool_links(pool))
            @if history.is_empty() { p { "No target yet." } }
            div.scroll {
                table #targets {
                    thead { tr { th scope="col" { "Revision" } th scope="col" { "Set by" } th scope="col" { "Set at" }
                        th scope="col" { "Packages" } th scope="col" { "Change from the revision before" } th scope="col" { "" } } }
                    tbody {
                        @for (t, diff) in history {
                            tr id={ "revision-" (t.revision) } {
                                th scope="row" { (t.revision) @if Some(t.revision) == current { " (current)" } }
                                td { (t.set_by) @if let Some(r) = t.reverted_from { " (revert to " (r) ")" } }
                                td { (time(t.set_at)) }
                                td.num { (t.package_count) }
                                td { @match diff {
                                    Some(d) => details { summary { (d.counts.summary()) } (diff_block(d)) },
                                    None => "first kept revision",
                                } }
                                td { @if Some(t.revision) != current {
                                    a.action href={ "/dashboard/pools/" (pool.id) "/revert?to=" (t.revision) } { "Revert to this…" }
                                } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A confirmation: what will happen and to how many machines, and the form that does it.
pub fn confirm_page(
    session: &Session,
    title: &str,
    what: Markup,
    action: &str,
    fields: &[(&str, String)],
    button: &str,
    back: &str,
) -> Response {
    page(
        title,
        session,
        html! {
            h1 { (title) }
            div.confirm #confirm { (what) }
            form method="post" action=(action) {
                (csrf_field(session))
                @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
                button #confirm-button type="submit" { (button) }
                " "
                a href=(back) { "Cancel" }
            }
        },
    )
}

pub fn message_page(session: &Session, title: &str, body: Markup) -> Response {
    page(title, session, html! { h1 { (title) } (body) })
}

pub fn tokens_page(
    session: &Session,
    pool: &Pool,
    tokens: &[JoinTokenInfo],
    created: Option<&JoinToken>,
    now: i64,
) -> Response {
    page(
        &format!("Join tokens of {}", pool.name),
        session,
        html! {
            h1 { "Join tokens of pool " (pool.name) }
            (pool_links(pool))
            @if let Some(t) = created {
                div.created #created-token role="status" {
                    p { "Join token " (t.id) " created. It is shown " strong { "this once" } ": copy it now." }
                    pre { code #token-secret { (t.token) } }
                    p { "On a machine, set it as " code { "join_token" } " (with " code { "coordinator_url" } ") in "
                        code { "/etc/pacpool/pacpoold.toml" } ", then " code { "systemctl enable --now pacpoold" } "." }
                }
            }
            form.filters method="post" action={ "/dashboard/pools/" (pool.id) "/tokens" } {
                (csrf_field(session))
                label for="days" { "Valid for (days)" }
                input #days type="number" name="days" min="1" max="366" value="7";
                label for="uses" { "Uses (empty: unlimited)" }
                input #uses type="number" name="max_uses" min="1";
                button type="submit" { "Create a join token" }
            }
            div.scroll {
                table #tokens {
                    thead { tr { th scope="col" { "Id" } th scope="col" { "Created" } th scope="col" { "Expires" }
                        th scope="col" { "Uses" } th scope="col" { "" } } }
                    tbody {
                        @for t in tokens {
                            tr id={ "token-" (t.id) } {
                                td { (t.id) }
                                td { (time(t.created_at)) }
                                td { (time(t.expires_at)) @if t.expires_at <= now { " (expired)" } }
                                td { (t.uses) " of " @match t.max_uses { Some(m) => (m), None => "unlimited" } }
                                td { form.inline method="post" action={ "/dashboard/tokens/" (t.id) "/revoke" } {
                                    (csrf_field(session))
                                    button type="submit" { "Revoke" }
                                } }
                            }
                        }
                        @if tokens.is_empty() { tr { td colspan="5" { "No join token." } } }
                    }
                }
            }
        },
    )
}

/// The audit page's query string.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub pool: Option<String>,
    pub subject: Option<String>,
    /// `YYYY-MM-DD` (UTC), inclusive.
    pub since: Option<String>,
    /// `YYYY-MM-DD` (UTC), inclusive.
    pub until: Option<String>,
    pub before: Option<i64>,
}

impl AuditQuery {
    pub fn href(&self, before: Option<i64>) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("pool", &self.pool),
            ("subject", &self.subject),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{k}={}", url_encode(v)));
            }
        }
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        format!("/dashboard/audit?{}", parts.join("&"))
    }
}

pub fn audit_page(
    session: &Session,
    q: &AuditQuery,
    pools: &std::collections::BTreeMap<i64, String>,
    entries: &[AuditEntry],
    next: Option<i64>,
    error: Option<&str>,
) -> Response {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    page(
        "Audit log",
        session,
        html! {
            h1 { "Audit log" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.filters method="get" action="/dashboard/audit" {
                label for="actor" { "Actor" }
                input #actor name="actor" placeholder="admin, endpoint:7" value=(v(&q.actor));
                label for="action" { "Action" }
                input #action name="action" placeholder="target.set" value=(v(&q.action));
                label for="pool" { "Pool" }
                select #pool name="pool" {
                    option value="" { "any" }
                    @for (id, name) in pools {
                        option value=(id) selected[q.pool.as_deref() == Some(id.to_string().as_str())] { (name) }
                    }
                }
                label for="subject" { "Subject" }
                input #subject name="subject" placeholder="endpoint:7" value=(v(&q.subject));
                label for="since" { "From (UTC)" }
                input #since type="date" name="since" value=(v(&q.since));
                label for="until" { "To (UTC)" }
                input #until type="date" name="until" value=(v(&q.until));
                button type="submit" { "Filter" }
            }
            p.hint { "Pool filters entries about the pool itself (its targets, tokens, settings); endpoint and operation entries have their own subject." }
            div.scroll {
                table #audit {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Action" }
                        th scope="col" { "Subject" } th scope="col" { "From" } th scope="col" { "Detail" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (time(e.at)) }
                                td { (e.actor) }
                                td { (e.action) }
                                td { (e.subject.as_deref().unwrap_or("")) }
                                td { (e.peer.as_deref().unwrap_or("")) }
                                td { (e.detail.as_deref().unwrap_or("")) }
                            }
                        }
                        @if entries.is_empty() { tr { td colspan="6" { "No entry matches." } } }
                    }
                }
            }
            nav.pages aria-label="pages" {
                @if q.before.is_some() { a href=(q.href(None)) { "Newest" } " " }
                @if let Some(n) = next { a rel="next" href=(q.href(Some(n))) { "Older →" } }
            }
        },
    )
}

/// What a sync request of one endpoint will do, for its confirmation.
pub fn sync_one_text(s: &EndpointStatus, pool: &Pool) -> Markup {
    html! {
        p { "Ask " strong { (s.name) } " (1 machine) to sync to "
            @match &pool.target { Some(t) => { "target revision " (t.revision) }, None => "the target" }
            " of pool " (pool.name) ": " (pending(s)) "." }
        p { "It is now " (state_label(s.state)) ". pacpoold on the machine plans and applies the change with pacman, under its own policy." }
    }
}

pub fn sync_behind_text(pool: &Pool, behind: &[&EndpointStatus]) -> Markup {
    html! {
        p { "Ask " strong #affected { (behind.len()) } " " (crate::words::plural(behind.len(), "machine", "machines"))
            " of pool " (pool.name) " that are behind its target to sync:" }
        ul { @for s in behind { li { (s.name) ": " (pending(s)) } } }
        p { "Endpoints that are ahead or diverged are not asked: a sync would remove or downgrade packages there." }
    }
}

pub fn revert_text(
    pool: &Pool,
    to: &TargetInfo,
    total: usize,
    counts: &[(EndpointState, u64)],
) -> Markup {
    let not_in_sync: u64 = counts
        .iter()
        .filter(|(s, _)| *s != EndpointState::InSync)
        .map(|(_, n)| n)
        .sum();
    html! {
        p { "Revert the target of pool " strong { (pool.name) } " to revision " (to.revision)
            " (" (to.package_count) " packages, set by " (to.set_by) " at " (time(to.set_at)) "). "
            "It becomes a new revision"
            @if let Some(t) = &pool.target { " " (t.revision + 1) }
            "." }
        @let breakdown: Vec<String> = counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{n} {}", state_label(*s)))
            .collect();
        p { "This affects the pool's " strong #affected { (total) } " machines. Against that revision "
            (not_in_sync) " would not be in sync (" (breakdown.join(", ")) "). "
            "Machines with auto-sync follow it, others when asked to sync." }
    }
}
