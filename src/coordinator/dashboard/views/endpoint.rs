//! The endpoint page: status, difference from the target, operations, state history.

use axum::response::Response;
use maud::{Markup, html};

use super::super::super::overview::{Cause, Diff, EndpointDetail};
use super::*;

pub(super) fn diff_block(d: &Diff) -> Markup {
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
            dt { "Machine says" } dd #reported-change {
                @match &d.reported {
                    None => "nothing yet (no change reported, or an older pacpoold)",
                    Some(c) => {
                        (time(c.at)) ": "
                        @match &c.source {
                            Some(source) => (source.to_string()),
                            None => "no source given",
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
