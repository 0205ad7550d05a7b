//! The package view of a pool and the machines running one version.

use axum::response::Response;
use maud::html;

use super::super::super::overview::PackageMatrix;
use super::*;

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
