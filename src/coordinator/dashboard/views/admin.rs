//! Targets, confirmations, join tokens and the audit log.

use axum::response::Response;
use maud::{Markup, html};

use super::super::super::overview::Diff;
use super::endpoint::diff_block;
use super::*;
use crate::proto::{AuditEntry, JoinToken, JoinTokenInfo, TargetInfo};

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
