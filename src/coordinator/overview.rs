//! Reads behind the dashboard's pages that the REST API has no route for: the package view
//! of a pool, an endpoint's state history, diffs between states, the audit log's filters.
//! Statuses come from [`AppState::pool_statuses`] like everywhere else; no page computes
//! one itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::sql::params;

use super::AppState;
use super::api::no_pool;
use super::db::{self, AuditFilter};
use super::error::ApiErr;
use crate::plan::{self, Action, Availability, Counts, Policy};
use crate::proto::{AuditEntry, EndpointStatus, Operation, PoolPolicy, TargetInfo};
use crate::snapshot::{Snapshot, SnapshotHash};

/// One package of the package view: how many machines run each version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackageRow {
    pub name: String,
    /// (version, machines), newest version first (by `vercmp`).
    pub versions: Vec<(String, u64)>,
    /// The version in the pool's target; `None`: not in the target (or no target).
    pub target: Option<String>,
    /// Machines that reported a state without this package.
    pub absent: u64,
}

/// The package view of a pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct PackageMatrix {
    /// Endpoints that reported a state.
    pub reported: u64,
    /// Endpoints that never did.
    pub unreported: u64,
    pub target_revision: Option<u64>,
    pub rows: Vec<PackageRow>,
}

/// One entry of an endpoint's state history.
#[derive(Debug, Clone)]
pub(crate) struct StateEntry {
    pub at: i64,
    pub snapshot: SnapshotHash,
    pub packages: u64,
    pub cause: Cause,
}

/// Why an endpoint's state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The endpoint's first report to the coordinator.
    FirstReport,
    /// A pacpool operation (id, kind).
    Operation(i64, String),
    /// Changed on the machine itself (pacman by hand, another tool).
    Machine,
}

/// What a sync (or a move between two states) would do, as `pacpool preview` words it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Diff {
    pub counts: Counts,
    /// One line per action, in plan order ([`Action::describe`]).
    pub lines: Vec<String>,
    /// Differences the policy leaves alone (`kept: linux (protected)`).
    pub kept: Vec<String>,
}

/// Everything the endpoint page shows.
#[derive(Debug, Clone)]
pub(crate) struct EndpointDetail {
    pub status: EndpointStatus,
    pub pool_name: String,
    pub target: Option<TargetInfo>,
    /// Against the target, with the pool's policy.
    pub diff: Option<Diff>,
    pub history: Vec<StateEntry>,
    /// The newest state change as the endpoint itself explained it (drift attribution: a
    /// pacpool operation, or pacman run on the machine with its command line).
    pub reported: Option<crate::proto::StateChange>,
    pub operations: Vec<Operation>,
}

/// `from` → `to` as an ordered plan: the actions a sync would take, whatever the sources.
fn diff_of(from: &Snapshot, to: &Snapshot, policy: &plan::CompiledPolicy) -> Diff {
    // Every version counts as available: the page shows the difference, not where the files
    // would come from (the machine's own preview says that).
    let avail = Availability::new(Vec::new(), Vec::new(), Some("archive:".into()));
    let p = plan::plan(from, to, &[], &avail, policy);
    Diff {
        counts: p.counts(),
        lines: p.actions.iter().map(Action::describe).collect(),
        kept: p.skipped.iter().map(|k| format!("kept: {k}")).collect(),
    }
}

/// A policy that manages every package: for diffs between two recorded states.
fn everything() -> Result<plan::CompiledPolicy, ApiErr> {
    Policy {
        protected: Vec::new(),
        ..Policy::default()
    }
    .compile()
    .map_err(|e| ApiErr::internal(e.to_string()))
}

fn compiled(policy: &PoolPolicy) -> Result<plan::CompiledPolicy, ApiErr> {
    policy
        .plan
        .compile()
        .map_err(|e| ApiErr::internal(format!("the pool's policy does not compile: {e}")))
}

impl AppState {
    fn snapshot_of(
        &self,
        conn: &super::sql::Connection,
        hash: &SnapshotHash,
    ) -> Result<Arc<Snapshot>, ApiErr> {
        self.load_snapshot(conn, hash)?
            .ok_or_else(|| ApiErr::not_found(format!("no snapshot {hash}")))
    }

    /// The package view: one row per package of any reported state, with how many machines
    /// run each version. States are read once per distinct state (machines of a pool mostly
    /// share a few), not once per machine.
    pub(crate) async fn package_matrix(&self, pool_id: i64) -> Result<PackageMatrix, ApiErr> {
        let st = self.clone();
        self.db
            .read(move |conn| {
                if db::policy_of(conn, pool_id)?.is_none() {
                    return Err(no_pool(pool_id));
                }
                let groups = conn
                    .prepare_cached(
                        "SELECT current, count(*) FROM endpoints WHERE pool_id = ?1 GROUP BY current",
                    )?
                    .query_map([pool_id], |r| {
                        Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)? as u64))
                    })?
                    .collect::<super::sql::Result<Vec<_>>>()?;
                let target = db::current_target(conn, pool_id)?;
                let mut out = PackageMatrix {
                    target_revision: target.as_ref().map(|t| t.revision),
                    ..PackageMatrix::default()
                };
                let mut counts: HashMap<String, HashMap<String, u64>> = HashMap::new();
                for (hash, n) in groups {
                    let Some(hash) = hash else {
                        out.unreported += n;
                        continue;
                    };
                    out.reported += n;
                    let snap = st.snapshot_of(conn, &db::parse_hash(&hash)?)?;
                    for p in snap.packages() {
                        let versions = match counts.get_mut(p.name.as_str()) {
                            Some(v) => v,
                            None => counts.entry(p.name.as_str().to_owned()).or_default(),
                        };
                        match versions.get_mut(p.version.as_str()) {
                            Some(c) => *c += n,
                            None => {
                                versions.insert(p.version.as_str().to_owned(), n);
                            }
                        }
                    }
                }
                let target_snap = match &target {
                    Some(t) => Some(st.snapshot_of(conn, &t.snapshot)?),
                    None => None,
                };
                let mut names: BTreeMap<String, HashMap<String, u64>> = counts.into_iter().collect();
                if let Some(t) = &target_snap {
                    for p in t.packages() {
                        names.entry(p.name.as_str().to_owned()).or_default();
                    }
                }
                out.rows = names
                    .into_iter()
                    .map(|(name, versions)| {
                        let mut versions: Vec<(String, u64)> = versions.into_iter().collect();
                        versions.sort_by(|a, b| crate::version::vercmp(&b.0, &a.0));
                        let running: u64 = versions.iter().map(|v| v.1).sum();
                        let target = target_snap
                            .as_ref()
                            .and_then(|t| t.get(&name))
                            .map(|p| p.version.as_str().to_owned());
                        PackageRow {
                            absent: out.reported - running,
                            name,
                            versions,
                            target,
                        }
                    })
                    .collect();
                Ok(out)
            })
            .await
    }

    /// The endpoints of a pool whose reported state has `name` at `version` (`None`: that
    /// lack the package), by name.
    pub(crate) async fn machines_running(
        &self,
        pool_id: i64,
        name: String,
        version: Option<String>,
    ) -> Result<Vec<(i64, String)>, ApiErr> {
        let st = self.clone();
        self.db
            .read(move |conn| {
                if db::policy_of(conn, pool_id)?.is_none() {
                    return Err(no_pool(pool_id));
                }
                let rows = conn
                    .prepare_cached(
                        "SELECT id, name, current FROM endpoints
                         WHERE pool_id = ?1 AND current IS NOT NULL ORDER BY name",
                    )?
                    .query_map([pool_id], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })?
                    .collect::<super::sql::Result<Vec<_>>>()?;
                let mut verdicts: HashMap<String, bool> = HashMap::new();
                let mut out = Vec::new();
                for (id, ep, current) in rows {
                    let yes = match verdicts.get(&current) {
                        Some(v) => *v,
                        None => {
                            let snap = st.snapshot_of(conn, &db::parse_hash(&current)?)?;
                            let v = match (snap.get(&name), &version) {
                                (Some(p), Some(want)) => p.version.as_str() == want,
                                (None, None) => true,
                                _ => false,
                            };
                            verdicts.insert(current, v);
                            v
                        }
                    };
                    if yes {
                        out.push((id, ep));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// The endpoint page: status, diff against the target, state history, operations.
    pub(crate) async fn endpoint_detail(&self, id: i64) -> Result<EndpointDetail, ApiErr> {
        let status = self.endpoint_status(id).await?;
        let operations = self.operations_page(Some(id), None, None, 20).await?.items;
        let st = self.clone();
        let pool_id = status.pool_id;
        let current = status.current;
        let (pool_name, target, diff, history, reported) = self
            .db
            .read(move |conn| {
                let pool = db::pool(conn, pool_id)?.ok_or_else(|| no_pool(pool_id))?;
                let diff = match (&current, &pool.target) {
                    (Some(cur), Some(t)) => {
                        let a = st.snapshot_of(conn, cur)?;
                        let b = st.snapshot_of(conn, &t.snapshot)?;
                        Some(diff_of(&a, &b, &compiled(&pool.policy)?))
                    }
                    _ => None,
                };
                let history = conn
                    .prepare_cached(
                        "SELECT h.at, h.snapshot, h.package_count, h.operation_id, o.kind, h.first
                         FROM endpoint_states h LEFT JOIN operations o ON o.id = h.operation_id
                         WHERE h.endpoint_id = ?1 ORDER BY h.id DESC",
                    )?
                    .query_map([id], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, bool>(5)?,
                        ))
                    })?
                    .collect::<super::sql::Result<Vec<_>>>()?
                    .into_iter()
                    .map(|(at, hash, n, op, kind, first)| {
                        let cause = match (first, op) {
                            (true, _) => Cause::FirstReport,
                            // The operation row may be gone (retention): its id stays.
                            (false, Some(o)) => {
                                Cause::Operation(o, kind.unwrap_or_else(|| "operation".into()))
                            }
                            (false, None) => Cause::Machine,
                        };
                        Ok(StateEntry {
                            at,
                            snapshot: db::parse_hash(&hash)?,
                            packages: n as u64,
                            cause,
                        })
                    })
                    .collect::<Result<Vec<_>, ApiErr>>()?;
                let reported = db::state_changes(conn, id, None, 1)?.into_iter().next();
                Ok((pool.name, pool.target, diff, history, reported))
            })
            .await?;
        Ok(EndpointDetail {
            status,
            pool_name,
            target,
            diff,
            history,
            reported,
            operations,
        })
    }

    /// The difference between two stored states (`from` → `to`), every package managed.
    pub(crate) async fn state_diff(
        &self,
        from: SnapshotHash,
        to: SnapshotHash,
    ) -> Result<Diff, ApiErr> {
        let st = self.clone();
        self.db
            .read(move |conn| {
                let a = st.snapshot_of(conn, &from)?;
                let b = st.snapshot_of(conn, &to)?;
                Ok(diff_of(&a, &b, &everything()?))
            })
            .await
    }

    /// A pool's newest `limit` target revisions, each with the diff from the revision
    /// before it (`None` for the first kept one).
    pub(crate) async fn target_history(
        &self,
        pool_id: i64,
        limit: usize,
    ) -> Result<Vec<(TargetInfo, Option<Diff>)>, ApiErr> {
        let st = self.clone();
        self.db
            .read(move |conn| {
                if db::policy_of(conn, pool_id)?.is_none() {
                    return Err(no_pool(pool_id));
                }
                let all = db::targets(conn, pool_id)?;
                let policy = everything()?;
                let mut out = Vec::new();
                for (i, t) in all.iter().enumerate().take(limit) {
                    let diff = match all.get(i + 1) {
                        Some(prev) => {
                            let a = st.snapshot_of(conn, &prev.snapshot)?;
                            let b = st.snapshot_of(conn, &t.snapshot)?;
                            Some(diff_of(&a, &b, &policy))
                        }
                        None => None,
                    };
                    out.push((t.clone(), diff));
                }
                Ok(out)
            })
            .await
    }

    /// One target revision of a pool.
    pub(crate) async fn target(&self, pool_id: i64, revision: u64) -> Result<TargetInfo, ApiErr> {
        self.db
            .read(move |conn| {
                db::target_at(conn, pool_id, revision)?.ok_or_else(|| {
                    ApiErr::not_found(format!("pool {pool_id} has no target revision {revision}"))
                })
            })
            .await
    }

    /// A keyset page of the audit log with filters (see [`db::audit_filtered`]).
    pub(crate) async fn audit_page(
        &self,
        filter: AuditFilter,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, ApiErr> {
        self.db
            .read(move |conn| db::audit_filtered(conn, &filter, cursor, limit))
            .await
    }

    /// Operations by id, in one read (missing ones are left out).
    pub(crate) async fn operations_by_id(&self, ids: Vec<i64>) -> Result<Vec<Operation>, ApiErr> {
        self.db
            .read(move |conn| {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.extend(db::operation(conn, id)?);
                }
                Ok(out)
            })
            .await
    }

    /// Pool names by id (for labels).
    pub(crate) async fn pool_names(&self) -> Result<BTreeMap<i64, String>, ApiErr> {
        self.db
            .read(|conn| {
                let rows = conn
                    .prepare_cached("SELECT id, name FROM pools ORDER BY id")?
                    .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<super::sql::Result<BTreeMap<i64, String>>>()?;
                Ok(rows)
            })
            .await
    }
}
