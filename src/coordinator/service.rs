//! What the coordinator does, independent of transport: REST handlers and the endpoint
//! WebSocket both call these, so the two cannot drift. Each state change is one write
//! transaction (with its audit entry); events are published after it commits.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::sql::{Connection, OptionalExtension, params};

use super::AppState;
use super::auth::EndpointAuth;
use super::db::{self, enum_to_sql};
use super::error::ApiErr;
use super::hub::Audience;
use super::rollout_db;
use super::rollout_run::{self, StatusCtx};
use super::snaptext::{self, SnapText};
use crate::plan::{self, Counts, SyncStatus};
use crate::proto::ChangeSource;
use crate::proto::{
    CreateOperation, EndpointState, EndpointStatus, Operation, OperationKind, OperationResult,
    OperationState, PoolPolicy, PoolStats, Progress, ReportAck, RevertTargetRequest, ServerMsg,
    SetTargetRequest, StateReport, Stats, TargetInfo,
};
use crate::snapshot::{Snapshot, SnapshotHash};

/// Who makes a request, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Admin,
    Endpoint(i64),
    Registration,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Admin => f.write_str("admin"),
            Actor::Endpoint(id) => write!(f, "endpoint:{id}"),
            Actor::Registration => f.write_str("registration"),
        }
    }
}

/// Delta reports against a base text up to this size are applied on the request's task;
/// larger ones on the blocking pool.
const INLINE_APPLY_BYTES: usize = 1 << 20;

/// State changes an endpoint reports within this many seconds of its last audited one are
/// folded into that audit row (its time, state and a count are updated) instead of adding
/// rows: a flapping or hostile endpoint cannot multiply the audit log.
pub(crate) const REPORT_AUDIT_WINDOW_SECS: i64 = 60;

/// What an audit row, an operation or a target row costs against the storage budget, beyond
/// its text.
const ROW_COST_BYTES: usize = 256;

/// Bounds of what an operation result may store (longer text is cut, with a note).
const MAX_RESULT_MESSAGE: usize = 8 * 1024;
const MAX_FAILURE_NAME: usize = 256;
const MAX_FAILURE_REASON: usize = 1024;
/// The failures of one result together (names and reasons).
const MAX_FAILURES_BYTES: usize = 256 * 1024;

/// The audit row an endpoint's reports are currently folded into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReportAudit {
    row: i64,
    since: i64,
    changes: u64,
}

/// `text` cut to at most `max` bytes (on a character boundary), marked when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const MARK: &str = " [cut: too long]";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// A result bounded for storage: long texts are cut, failures past [`MAX_FAILURES_BYTES`]
/// are dropped and counted in the message. Nothing is refused, so a daemon's real result is
/// never lost for being long.
fn bound_result(mut result: OperationResult) -> OperationResult {
    let mut used = 0;
    let mut kept = Vec::new();
    let total = result.failures.len();
    for f in result.failures.drain(..) {
        let f = crate::proto::PackageFailure {
            name: bounded(&f.name, MAX_FAILURE_NAME),
            reason: bounded(&f.reason, MAX_FAILURE_REASON),
        };
        used += f.name.len() + f.reason.len();
        if used > MAX_FAILURES_BYTES {
            break;
        }
        kept.push(f);
    }
    let dropped = total - kept.len();
    result.failures = kept;
    result.message = bounded(&result.message, MAX_RESULT_MESSAGE);
    if dropped > 0 {
        result.message.push_str(&format!(
            " ({dropped} more failures not stored: over the coordinator's limit)"
        ));
    }
    result
}

/// The state the coordinator last acknowledged for an endpoint.
fn known_state(conn: &Connection, id: i64) -> Result<Option<SnapshotHash>, ApiErr> {
    let known: Option<String> = conn
        .prepare_cached("SELECT current FROM endpoints WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .flatten();
    known.as_deref().map(db::parse_hash).transpose()
}

/// An endpoint row as needed for status.
#[derive(Clone)]
struct EndpointRow {
    id: i64,
    name: String,
    pool_id: i64,
    current: Option<String>,
    last_seen: Option<i64>,
}

const ENDPOINT_COLS: &str = "id, name, pool_id, current, last_seen";

fn endpoint_row(r: &super::sql::Row<'_>) -> super::sql::Result<EndpointRow> {
    Ok(EndpointRow {
        id: r.get(0)?,
        name: r.get(1)?,
        pool_id: r.get(2)?,
        current: r.get(3)?,
        last_seen: r.get(4)?,
    })
}

fn compile(policy: &PoolPolicy) -> Result<plan::CompiledPolicy, ApiErr> {
    policy.plan.compile().map_err(|e| {
        tracing::error!(error = %e, "stored pool policy does not compile");
        ApiErr::internal(format!("the pool's stored policy is invalid: {e}"))
    })
}

/// A compiled policy with a fingerprint of its source, the key of cached statuses.
pub(crate) struct PolicyKey {
    compiled: plan::CompiledPolicy,
    fingerprint: u64,
}

pub(crate) fn compile_keyed(policy: &PoolPolicy) -> Result<PolicyKey, ApiErr> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&policy.plan)
        .map_err(|e| ApiErr::internal(e.to_string()))?
        .hash(&mut h);
    Ok(PolicyKey {
        compiled: compile(policy)?,
        fingerprint: h.finish(),
    })
}

/// Whether a change's unit of work has charged the storage budget already.
#[derive(Default)]
struct Charged(bool);

impl AppState {
    /// Takes `bytes` from the endpoint's storage budget (`storage_per_endpoint_mib_per_hour`),
    /// or refuses the change with 429.
    /// [`Self::charge_storage`] at most once per change, however often its unit of work runs
    /// (PostgreSQL runs it again after a conflict with a concurrent one).
    fn charge_once(
        &self,
        charged: &mut Charged,
        endpoint: i64,
        bytes: usize,
    ) -> Result<(), ApiErr> {
        if !charged.0 {
            self.charge_storage(endpoint, bytes)?;
            charged.0 = true;
        }
        Ok(())
    }

    fn charge_storage(&self, endpoint: i64, bytes: usize) -> Result<(), ApiErr> {
        let kib = bytes as f64 / 1024.0;
        let key = super::limits::Key::Endpoint(endpoint);
        self.storage_limiter
            .take(key, kib, std::time::Instant::now())
            .map_err(|wait| {
                let secs = super::limits::retry_after_secs(wait);
                tracing::info!(endpoint, bytes, "endpoint over its storage budget");
                ApiErr::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "this endpoint stored more than storage_per_endpoint_mib_per_hour ({} MiB) recently: retry after {secs} s",
                        self.settings.storage_per_endpoint_mib_per_hour
                    ),
                )
                .with_detail(serde_json::json!({ "retry_after_secs": secs }))
            })
    }

    /// Audits an endpoint's new state, folding it into the endpoint's last report row when
    /// that is recent (see [`REPORT_AUDIT_WINDOW_SECS`]).
    fn audit_report(
        &self,
        tx: &Connection,
        endpoint: i64,
        peer: Option<IpAddr>,
        detail: String,
    ) -> Result<(), ApiErr> {
        let t = self.clock.now();
        let recent = self
            .report_audits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&endpoint)
            .copied()
            .filter(|a| t - a.since < REPORT_AUDIT_WINDOW_SECS);
        if let Some(a) = recent {
            let changes = a.changes + 1;
            let folded = tx
                .prepare_cached(
                    "UPDATE audit SET at = ?1, peer = ?2, detail = ?3 WHERE id = ?4 AND action = 'endpoint.report'",
                )?
                .execute(params![
                    t,
                    peer.map(|p| p.to_string()),
                    format!("{detail}; {changes} state changes since {}", a.since),
                    a.row
                ])?;
            // 0 rows: the row was removed (retention) or its transaction rolled back.
            if folded == 1 {
                self.report_audits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(endpoint, ReportAudit { changes, ..a });
                return Ok(());
            }
        }
        let row = db::audit(
            tx,
            &Actor::Endpoint(endpoint).to_string(),
            "endpoint.report",
            Some(format!("endpoint:{endpoint}")),
            peer,
            Some(detail),
        )?;
        self.report_audits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                endpoint,
                ReportAudit {
                    row,
                    since: t,
                    changes: 1,
                },
            );
        Ok(())
    }

    /// A snapshot by hash, from the cache or the database.
    pub(crate) fn load_snapshot(
        &self,
        conn: &Connection,
        hash: &SnapshotHash,
    ) -> Result<Option<Arc<Snapshot>>, ApiErr> {
        if let Some(s) = self.snapshots.get(hash) {
            return Ok(Some(s));
        }
        let Some(text) = self.load_text(conn, hash)? else {
            return Ok(None);
        };
        let snap = Snapshot::decode(&text.text).map_err(|e| {
            tracing::error!(%hash, error = %e, "stored snapshot does not decode");
            ApiErr::internal(format!(
                "stored snapshot {hash} is unreadable: see the coordinator log"
            ))
        })?;
        let snap = Arc::new(snap);
        self.snapshots
            .insert(*hash, snap.clone(), snap.len().max(1));
        Ok(Some(snap))
    }

    /// A snapshot's canonical text by hash, from the cache or the database.
    pub(crate) fn load_text(
        &self,
        conn: &Connection,
        hash: &SnapshotHash,
    ) -> Result<Option<SnapText>, ApiErr> {
        if let Some(t) = self.texts.get(hash) {
            return Ok(Some(t));
        }
        let Some((body, count)) = db::snapshot_row(conn, hash)? else {
            return Ok(None);
        };
        let text = SnapText::stored(*hash, body, count);
        self.texts.insert(*hash, text.clone(), text.text.len());
        Ok(Some(text))
    }

    /// `plan::status` of two snapshots, cached: it depends only on the two hashes and the
    /// policy, and a target change otherwise recomputes it for every endpoint.
    pub(crate) fn sync_status(
        &self,
        conn: &Connection,
        current: &SnapshotHash,
        target: &SnapshotHash,
        policy: &PolicyKey,
    ) -> Result<Option<(SyncStatus, Counts)>, ApiErr> {
        let key = (*current, *target, policy.fingerprint);
        if let Some(hit) = self
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(*hit));
        }
        let a = self.load_snapshot(conn, current)?;
        let b = self.load_snapshot(conn, target)?;
        let (Some(a), Some(b)) = (a, b) else {
            return Ok(None);
        };
        let out = plan::status(&a, &b, &policy.compiled);
        let mut map = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= super::STATUS_CACHE_ENTRIES {
            // Entries are small and cheap to recompute: start over rather than track age.
            map.clear();
        }
        map.insert(key, out);
        Ok(Some(out))
    }

    fn status_of(
        &self,
        conn: &Connection,
        row: EndpointRow,
        target: Option<&TargetInfo>,
        policy: &PolicyKey,
        rollout: Option<&StatusCtx>,
    ) -> Result<EndpointStatus, ApiErr> {
        let current = row.current.as_deref().map(db::parse_hash).transpose()?;
        let active = db::active_operation(conn, row.id)?;
        let mut counts = Counts::default();
        let mut sync = None;
        if let (Some(cur), Some(t)) = (current, target)
            && let Some((s, c)) = self.sync_status(conn, &cur, &t.snapshot, policy)?
        {
            counts = c;
            sync = Some(s);
        }
        let offline_after = self.settings.offline_after_secs as i64;
        let position = rollout.and_then(|c| c.position(row.id, &row.name));
        let held = position.as_ref().is_some_and(|p| p.hold.is_some());
        let state = if row
            .last_seen
            .is_some_and(|t| self.clock.now() - t > offline_after)
        {
            EndpointState::Offline
        } else if active
            .as_ref()
            .is_some_and(|o| o.state == OperationState::InProgress)
        {
            EndpointState::Syncing
        } else if active.is_none()
            && db::last_finished_state(conn, row.id)? == Some(OperationState::Failed)
        {
            EndpointState::Error
        } else {
            match sync {
                None => EndpointState::Unknown,
                Some(SyncStatus::InSync) => EndpointState::InSync,
                // On hold: behind on purpose.
                Some(SyncStatus::Behind | SyncStatus::Diverged) if held => EndpointState::Held,
                Some(SyncStatus::Behind) => EndpointState::Behind,
                Some(SyncStatus::Ahead) => EndpointState::Ahead,
                Some(SyncStatus::Diverged) => EndpointState::Diverged,
            }
        };
        Ok(EndpointStatus {
            id: row.id,
            name: row.name,
            pool_id: row.pool_id,
            state,
            counts,
            current,
            target_revision: target.map(|t| t.revision),
            last_seen: row.last_seen,
            active_operation: active.map(|o| o.id),
            rollout: position,
        })
    }

    /// One endpoint's computed status.
    pub(crate) async fn endpoint_status(&self, id: i64) -> Result<EndpointStatus, ApiErr> {
        let st = self.clone();
        self.db
            .read(move |conn| {
                let sql = format!("SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = ?1");
                let row = conn
                    .prepare_cached(&sql)?
                    .query_row([id], endpoint_row)
                    .optional()?
                    .ok_or_else(|| ApiErr::not_found(format!("no endpoint {id}")))?;
                let policy = db::policy_of(conn, row.pool_id)?.unwrap_or_default();
                let target = db::current_target(conn, row.pool_id)?;
                let ctx = StatusCtx::load(conn, row.pool_id, &policy, st.clock.now())?;
                st.status_of(
                    conn,
                    row,
                    target.as_ref(),
                    &compile_keyed(&policy)?,
                    ctx.as_ref(),
                )
            })
            .await
    }

    /// Set-latest's what-if: every other endpoint of `ep`'s pool, its status now and with
    /// `snapshot` as the target, computed by [`Self::status_of`] as the statuses the
    /// coordinator reports after the change. Read-only. `snapshot` must be the state `ep`
    /// last reported (what set-latest would make the target), else 409 `state_not_reported`.
    pub(crate) async fn what_if(
        &self,
        ep: &EndpointAuth,
        snapshot: SnapshotHash,
    ) -> Result<crate::proto::WhatIf, ApiErr> {
        let st = self.clone();
        let (me, pool_id) = (ep.id, ep.pool_id);
        self.db
            .read(move |conn| {
                if known_state(conn, me)? != Some(snapshot) {
                    return Err(ApiErr::conflict(
                        "state_not_reported",
                        format!(
                            "state {snapshot} is not this endpoint's last reported state: report it first"
                        ),
                    ));
                }
                let policy = compile_keyed(&db::policy_of(conn, pool_id)?.unwrap_or_default())?;
                let target = db::current_target(conn, pool_id)?;
                let package_count = st
                    .load_snapshot(conn, &snapshot)?
                    .map_or(0, |s| s.len() as u64);
                let candidate = TargetInfo {
                    pool_id,
                    revision: target.as_ref().map_or(1, |t| t.revision + 1),
                    snapshot,
                    package_count,
                    set_by_endpoint: Some(me),
                    set_by: String::new(),
                    set_at: st.clock.now(),
                    reverted_from: None,
                };
                let sql = format!(
                    "SELECT {ENDPOINT_COLS} FROM endpoints WHERE pool_id = ?1 AND id != ?2 ORDER BY id"
                );
                let rows = conn
                    .prepare_cached(&sql)?
                    .query_map(params![pool_id, me], endpoint_row)?
                    .collect::<super::sql::Result<Vec<_>>>()?;
                let mut endpoints = Vec::with_capacity(rows.len());
                for row in rows {
                    let again = row.clone();
                    let now = st.status_of(conn, row, target.as_ref(), &policy, None)?;
                    let after = st.status_of(conn, again, Some(&candidate), &policy, None)?;
                    endpoints.push(crate::proto::WhatIfEndpoint {
                        id: now.id,
                        name: now.name,
                        now: now.state,
                        after: after.state,
                        counts_after: after.counts,
                    });
                }
                Ok(crate::proto::WhatIf {
                    target_revision: target.map(|t| t.revision),
                    endpoints,
                })
            })
            .await
    }

    /// Computed status of every endpoint in a pool, by id.
    pub(crate) async fn pool_statuses(&self, pool_id: i64) -> Result<Vec<EndpointStatus>, ApiErr> {
        self.pool_statuses_against(pool_id, None).await
    }

    /// Computed status of every endpoint in a pool, by id, against the pool's target or,
    /// with `revision`, against that target revision (what reverting to it would show).
    pub(crate) async fn pool_statuses_against(
        &self,
        pool_id: i64,
        revision: Option<u64>,
    ) -> Result<Vec<EndpointStatus>, ApiErr> {
        let st = self.clone();
        self.db
            .read(move |conn| {
                let pool_policy = db::policy_of(conn, pool_id)?
                    .ok_or_else(|| ApiErr::not_found(format!("no pool {pool_id}")))?;
                let policy = compile_keyed(&pool_policy)?;
                let ctx = StatusCtx::load(conn, pool_id, &pool_policy, st.clock.now())?;
                let target = match revision {
                    None => db::current_target(conn, pool_id)?,
                    Some(r) => Some(db::target_at(conn, pool_id, r)?.ok_or_else(|| {
                        ApiErr::not_found(format!("pool {pool_id} has no target revision {r}"))
                    })?),
                };
                let sql =
                    format!("SELECT {ENDPOINT_COLS} FROM endpoints WHERE pool_id = ?1 ORDER BY id");
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt
                    .query_map([pool_id], endpoint_row)?
                    .collect::<super::sql::Result<Vec<_>>>()?;
                rows.into_iter()
                    .map(|row| st.status_of(conn, row, target.as_ref(), &policy, ctx.as_ref()))
                    .collect()
            })
            .await
    }

    /// Statistics: totals and per pool (endpoint states are computed, as for
    /// `GET /pools/{id}/endpoints`).
    pub(crate) async fn stats(&self) -> Result<Stats, ApiErr> {
        type Counted = (
            Vec<(i64, String)>,
            Vec<(i64, String, u64)>,
            Vec<(i64, u64, Option<i64>)>,
            (u64, u64),
        );
        let (pools, ops, targets, (snapshots, snapshot_bytes)): Counted =
            self.db
                .read(|conn| {
                    let pools = conn
                        .prepare_cached("SELECT id, name FROM pools ORDER BY id")?
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<super::sql::Result<Vec<_>>>()?;
                    let ops = conn
                    .prepare_cached(
                        "SELECT pool_id, state, count(*) FROM operations GROUP BY pool_id, state",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?
                    .collect::<super::sql::Result<Vec<_>>>()?;
                    let targets = conn
                        .prepare_cached(
                            "SELECT pool_id, count(*), max(revision) FROM targets GROUP BY pool_id",
                        )?
                        .query_map([], |r| {
                            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
                        })?
                        .collect::<super::sql::Result<Vec<_>>>()?;
                    let snaps = conn.query_row(
                        "SELECT count(*), coalesce(sum(length(body) + coalesce(length(delta), 0)), 0) FROM snapshots",
                        [],
                        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
                    )?;
                    Ok((pools, ops, targets, snaps))
                })
                .await?;
        let reports = self
            .metrics
            .reports_by_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Stats {
            pools: pools.len() as u64,
            snapshots,
            snapshot_bytes,
            reports_accepted: self.metrics.reports_accepted.load(Ordering::Relaxed),
            started_at: self.started_at,
            repo: self.pool_repo.stats(),
            ..Stats::default()
        };
        for (pool_id, name) in pools {
            let mut p = PoolStats {
                pool_id,
                name,
                reports_accepted: reports.get(&pool_id).copied().unwrap_or(0),
                ..PoolStats::default()
            };
            // A pool deleted meanwhile has no statuses; count it empty.
            for st in self.pool_statuses(pool_id).await.unwrap_or_default() {
                p.endpoints += 1;
                *p.endpoints_by_state
                    .entry(enum_to_sql(&st.state))
                    .or_default() += 1;
            }
            for (_, state, n) in ops.iter().filter(|o| o.0 == pool_id) {
                *p.operations_by_state.entry(state.clone()).or_default() += n;
            }
            if let Some((_, n, rev)) = targets.iter().find(|t| t.0 == pool_id) {
                p.targets = *n;
                p.target_revision = rev.map(|r| r as u64);
            }
            out.endpoints += p.endpoints;
            out.targets += p.targets;
            for (k, v) in &p.endpoints_by_state {
                *out.endpoints_by_state.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &p.operations_by_state {
                *out.operations_by_state.entry(k.clone()).or_default() += v;
            }
            out.per_pool.push(p);
        }
        Ok(out)
    }

    /// Tells admin subscribers an endpoint's status changed (only computed when one listens).
    pub(crate) async fn status_changed(&self, pool_id: i64, endpoint_id: i64) {
        if !self.hub.has_admins(pool_id) {
            return;
        }
        match self.endpoint_status(endpoint_id).await {
            Ok(status) => self.hub.publish(
                pool_id,
                Audience::Admins,
                &ServerMsg::EndpointStatusChanged { status },
            ),
            Err(e) => tracing::warn!(endpoint_id, error = %e, "cannot compute endpoint status"),
        }
    }

    /// Tells admin subscribers about endpoints that went offline (no contact for
    /// `offline_after_secs`): nothing else happens at that moment to trigger a status event.
    /// Runs until shutdown.
    pub(crate) async fn watch_offline(self) {
        let offline_after = self.settings.offline_after_secs as i64;
        let period = std::time::Duration::from_secs((self.settings.offline_after_secs / 3).max(1));
        let mut tick = tokio::time::interval(period);
        // A late tick covers a wider window below, so skipped ticks lose nothing.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown = self.shutdown.clone();
        let mut prev = self.clock.now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = super::stopped(&mut shutdown) => return,
            }
            let t = self.clock.now();
            // Offline means `now - last_seen > offline_after`: the endpoints that crossed
            // since the previous tick have `prev - offline_after <= last_seen < t - offline_after`.
            let (lo, hi) = (prev - offline_after, t - offline_after);
            prev = t;
            // One replica tells every replica's admins (through the bus); on SQLite only
            // when someone listens.
            let listened = self.hub.bus().is_some() || self.hub.any_admins();
            if hi <= lo || !listened || !self.leads(super::cluster::Job::Offline).await {
                continue;
            }
            let crossed = self
                .db
                .read(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT id, pool_id FROM endpoints WHERE last_seen >= ?1 AND last_seen < ?2",
                    )?;
                    let rows = stmt
                        .query_map(params![lo, hi], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                        .collect::<super::sql::Result<Vec<_>>>()?;
                    Ok(rows)
                })
                .await;
            match crossed {
                Ok(crossed) => {
                    for (id, pool_id) in crossed {
                        self.status_changed(pool_id, id).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for endpoints gone offline"),
            }
        }
    }

    /// Publishes a new target to the pool (with the change summary) and the new statuses.
    async fn target_changed(&self, target: TargetInfo, previous: Option<TargetInfo>) {
        self.metrics.target_changes.fetch_add(1, Ordering::Relaxed);
        let pool_id = target.pool_id;
        let st = self.clone();
        let new_hash = target.snapshot;
        let (summary, rings) = self
            .db
            .read(move |conn| {
                let pool_policy = db::policy_of(conn, pool_id)?.unwrap_or_default();
                let rings = !pool_policy.rollout.rings.is_empty();
                let policy = compile(&pool_policy)?;
                let new = st
                    .load_snapshot(conn, &new_hash)?
                    .ok_or_else(|| ApiErr::internal("target snapshot vanished"))?;
                let old = match previous {
                    Some(p) => st.load_snapshot(conn, &p.snapshot)?,
                    None => None,
                }
                .unwrap_or_default();
                Ok((plan::status(&old, &new, &policy).1, rings))
            })
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot compute the target change summary");
                (Counts::default(), false)
            });
        if rings {
            // Endpoints learn their own offer (`RolloutChanged`, then `GET /endpoint/offer`):
            // the new target is not theirs until their wave comes.
            self.hub.publish(
                pool_id,
                Audience::Admins,
                &ServerMsg::TargetChanged { target, summary },
            );
            self.rollout_poke();
            self.rollout_changed(pool_id).await;
            return;
        }
        self.hub.publish(
            pool_id,
            Audience::All,
            &ServerMsg::TargetChanged { target, summary },
        );
        if self.hub.has_admins(pool_id)
            && let Ok(all) = self.pool_statuses(pool_id).await
        {
            for status in all {
                self.hub.publish(
                    pool_id,
                    Audience::Admins,
                    &ServerMsg::EndpointStatusChanged { status },
                );
            }
        }
    }

    /// Marks the endpoint as seen now.
    pub(crate) async fn heartbeat(&self, ep: &EndpointAuth) -> Result<(), ApiErr> {
        let id = ep.id;
        let t = self.clock.now();
        self.db
            .write_endpoint(id, move |tx| {
                tx.prepare_cached("UPDATE endpoints SET last_seen = ?1 WHERE id = ?2")?
                    .execute(params![t, id])?;
                Ok(())
            })
            .await
    }

    /// Stores a state report. A delta is applied only to the endpoint's currently known
    /// snapshot (checked again in the write transaction); anything else is answered with
    /// `NeedFull` and nothing is stored.
    ///
    /// The CPU work (encoding and hashing a full state, applying a delta to its base's text
    /// and hashing the result) runs before the write transaction, so the single writer only
    /// does the SQL.
    pub(crate) async fn report(
        &self,
        ep: &EndpointAuth,
        report: StateReport,
        source: Option<ChangeSource>,
        peer: Option<IpAddr>,
    ) -> Result<ReportAck, ApiErr> {
        match report {
            StateReport::Full { snapshot } => {
                let text = tokio::task::spawn_blocking(move || SnapText::from_snapshot(&snapshot))
                    .await
                    .map_err(|e| ApiErr::internal(format!("encoding task failed: {e}")))?;
                self.report_full(ep, text, source, peer).await
            }
            StateReport::Delta { delta } => self.report_delta(ep, delta, source, peer).await,
        }
    }

    /// Stores a full state already in canonical text form (the REST endpoint parses a full
    /// report's JSON straight into it, see [`snaptext::FullText`]).
    pub(crate) async fn report_full(
        &self,
        ep: &EndpointAuth,
        text: SnapText,
        source: Option<ChangeSource>,
        peer: Option<IpAddr>,
    ) -> Result<ReportAck, ApiErr> {
        self.store_report(ep, text, None, source, peer).await
    }

    /// Applies a delta to the endpoint's known state and stores the result (see
    /// [`Self::report`]).
    async fn report_delta(
        &self,
        ep: &EndpointAuth,
        delta: crate::snapshot::Delta,
        source: Option<ChangeSource>,
        peer: Option<IpAddr>,
    ) -> Result<ReportAck, ApiErr> {
        let id = ep.id;
        let (new, base) = {
            let wanted = delta.base;
            // The base text: cached (content-addressed, so whoever reported it), or read
            // together with the endpoint's known state.
            let base_text = match self.texts.get(&wanted) {
                Some(t) => Some(t),
                None => {
                    let st = self.clone();
                    self.db
                        .read(move |conn| {
                            if known_state(conn, id)? != Some(wanted) {
                                return Ok(None);
                            }
                            st.load_text(conn, &wanted)
                        })
                        .await?
                }
            };
            let apply = move |base_text: SnapText| {
                let new = snaptext::apply_delta(&base_text, &delta)?;
                // Stored as this delta when the base is stored (see `db::put_snapshot`).
                let json = serde_json::to_string(&delta).unwrap_or_default();
                Ok::<_, snaptext::ApplyError>((new, json))
            };
            let refused = |e: snaptext::ApplyError| tracing::info!(endpoint = id, error = %e, "delta refused");
            let applied = match base_text {
                // A usual state (a few thousand packages) takes about 0.1 ms, mostly
                // hashing its changed part: less than a hop to the blocking pool.
                Some(base_text) if base_text.text.len() <= INLINE_APPLY_BYTES => {
                    apply(base_text).map_err(refused).ok()
                }
                Some(base_text) => tokio::task::spawn_blocking(move || apply(base_text))
                    .await
                    .map_err(|e| ApiErr::internal(format!("delta task failed: {e}")))?
                    .map_err(refused)
                    .ok(),
                None => None,
            };
            match applied {
                Some((new, json)) => (new, Some((wanted, json))),
                None => {
                    self.metrics
                        .reports_need_full
                        .fetch_add(1, Ordering::Relaxed);
                    let known = self.db.read(move |conn| known_state(conn, id)).await?;
                    return Ok(ReportAck::NeedFull { known });
                }
            }
        };
        self.store_report(ep, new, base, source, peer).await
    }

    /// Stores a report's resulting state `new` (for a delta, `base` is its base and the
    /// delta's JSON), unless the endpoint's state moved away from `base` meanwhile.
    async fn store_report(
        &self,
        ep: &EndpointAuth,
        new: SnapText,
        base: Option<(SnapshotHash, String)>,
        source: Option<ChangeSource>,
        peer: Option<IpAddr>,
    ) -> Result<ReportAck, ApiErr> {
        // What the endpoint says about where the state came from: stored bounded and
        // terminal-safe, never interpreted.
        let source = source.map(ChangeSource::bounded);
        let source_json = source
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        // Every state (full, or built from deltas) passes here, and targets are only made
        // of stored states: this bounds them too.
        if new.packages > self.settings.max_packages {
            return Err(ApiErr::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_packages",
                format!(
                    "this state holds {} packages, more than this coordinator accepts ({}): \
                     raise max_packages in its configuration if machines really have that many",
                    new.packages, self.settings.max_packages
                ),
            ));
        }
        let id = ep.id;
        let hash = new.hash;
        let stored = new.clone();
        let st = self.clone();
        // Only this endpoint's rows and its rule (the base must be its current state).
        let mut charged = Charged::default();
        let outcome = self
            .db
            .write_endpoint(id, move |tx| {
                let known: Option<String> = tx
                    .prepare_cached("SELECT current FROM endpoints WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| ApiErr::unauthorized("this endpoint was removed"))?;
                let known = known.as_deref().map(db::parse_hash).transpose()?;
                // The endpoint's state may have moved since the delta was checked (or, with
                // a cached base, was never checked).
                if let Some((base, _)) = &base
                    && known != Some(*base)
                {
                    return Ok(Err(known));
                }
                let changed = known != Some(hash);
                if changed {
                    let size = match &base {
                        Some((_, json)) if !json.is_empty() => json.len(),
                        _ => stored.text.len(),
                    };
                    let source_len = source_json.as_ref().map_or(0, String::len);
                    st.charge_once(&mut charged, id, size + source_len + 2 * ROW_COST_BYTES)?;
                    let from = base.as_ref().map(|(h, json)| (h, json.as_str()));
                    db::put_snapshot(tx, &stored, from.filter(|(_, j)| !j.is_empty()))?;
                }
                tx.prepare_cached(
                    "UPDATE endpoints SET current = ?1, last_seen = ?2 WHERE id = ?3",
                )?
                .execute(params![hash.to_hex(), st.clock.now(), id])?;
                if changed {
                    db::insert_state_change(
                        tx,
                        id,
                        &hash,
                        stored.packages as u64,
                        source_json.as_deref(),
                    )?;
                    db::record_state(tx, id, &hash, stored.packages as i64, known.is_none())?;
                    st.audit_report(
                        tx,
                        id,
                        peer,
                        format!(
                            "state {hash} ({}){}",
                            crate::words::packages(stored.packages),
                            source
                                .as_ref()
                                .map(|s| format!(" by {s}"))
                                .unwrap_or_default()
                        ),
                    )?;
                }
                Ok(Ok(changed))
            })
            .await?;
        match outcome {
            Ok(changed) => {
                let size = new.text.len();
                self.texts.insert(hash, new, size);
                self.metrics
                    .reports_accepted
                    .fetch_add(1, Ordering::Relaxed);
                *self
                    .metrics
                    .reports_by_pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(ep.pool_id)
                    .or_default() += 1;
                if changed {
                    self.status_changed(ep.pool_id, id).await;
                }
                Ok(ReportAck::Accepted { state: hash })
            }
            Err(known) => {
                self.metrics
                    .reports_need_full
                    .fetch_add(1, Ordering::Relaxed);
                Ok(ReportAck::NeedFull { known })
            }
        }
    }

    /// "Set as latest": the endpoint's current state becomes the pool target, if the target
    /// is still at the expected revision.
    pub(crate) async fn set_target(
        &self,
        ep: &EndpointAuth,
        req: SetTargetRequest,
        peer: Option<IpAddr>,
    ) -> Result<TargetInfo, ApiErr> {
        let ep = ep.clone();
        let st = self.clone();
        let manifest = req
            .manifest
            .as_ref()
            .map(encode_manifest)
            .transpose()?
            .map(|body| (req.manifest.as_ref().map_or(0, |m| m.entries.len()), body));
        let mut charged = Charged::default();
        let (info, previous) = self
            .db
            .write(move |tx| {
                let current: Option<String> = tx
                    .prepare_cached("SELECT current FROM endpoints WHERE id = ?1")?
                    .query_row([ep.id], |r| r.get(0))
                    .optional()?
                    .flatten();
                if current.as_deref() != Some(req.snapshot.to_hex().as_str()) {
                    return Err(ApiErr::conflict(
                        "snapshot_not_current",
                        format!(
                            "snapshot {} is not this endpoint's current reported state: report the state first, then set it",
                            req.snapshot.short()
                        ),
                    ));
                }
                let previous = db::current_target(tx, ep.pool_id)?;
                let revision = previous.as_ref().map_or(0, |t| t.revision);
                if revision != req.expected_revision {
                    return Err(ApiErr::conflict(
                        "revision_conflict",
                        format!(
                            "the pool target is at revision {revision}, not {}: someone set it meanwhile; review the new target and retry with expected_revision {revision}",
                            req.expected_revision
                        ),
                    )
                    .with_detail(&previous));
                }
                let next = revision + 1;
                let manifest_bytes = manifest.as_ref().map_or(0, |(_, body)| body.len());
                st.charge_once(&mut charged, ep.id, 2 * ROW_COST_BYTES + manifest_bytes)?;
                tx.prepare_cached(
                    "INSERT INTO targets (pool_id, revision, snapshot, set_by_endpoint, set_by, set_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![ep.pool_id, next as i64, req.snapshot.to_hex(), ep.id, ep.name, st.clock.now()])?;
                let pool_policy = db::policy_of(tx, ep.pool_id)?.unwrap_or_default();
                if !pool_policy.rollout.rings.is_empty() {
                    let rings = pool_policy.rollout.rings.iter().map(|r| r.name.clone()).collect();
                    rollout_db::start(tx, ep.pool_id, next, rings, st.clock.now())?;
                }
                db::audit(
                    tx,
                    &Actor::Endpoint(ep.id).to_string(),
                    "target.set",
                    Some(format!("pool:{}", ep.pool_id)),
                    peer,
                    Some(format!("revision {next} = {}", req.snapshot)),
                )?;
                let info = db::target_at(tx, ep.pool_id, next)?
                    .ok_or_else(|| ApiErr::internal("new target vanished"))?;
                if let Some((entries, body)) = &manifest {
                    if *entries as u64 > info.package_count {
                        return Err(ApiErr::invalid(format!(
                            "the manifest describes {entries} packages, the state has {}: send one entry per package at most",
                            info.package_count
                        )));
                    }
                    db::put_manifest(tx, ep.pool_id, next, body)?;
                }
                Ok((info, previous))
            })
            .await?;
        self.target_changed(info.clone(), previous).await;
        Ok(info)
    }

    /// Admin: a new revision copying an earlier one's snapshot.
    pub(crate) async fn revert_target(
        &self,
        pool_id: i64,
        req: RevertTargetRequest,
        peer: Option<IpAddr>,
    ) -> Result<TargetInfo, ApiErr> {
        let t = self.clock.now();
        let (info, previous) = self
            .db
            .write(move |tx| {
                if db::policy_of(tx, pool_id)?.is_none() {
                    return Err(ApiErr::not_found(format!("no pool {pool_id}")));
                }
                let previous = db::current_target(tx, pool_id)?;
                let revision = previous.as_ref().map_or(0, |t| t.revision);
                if revision != req.expected_revision {
                    return Err(ApiErr::conflict(
                        "revision_conflict",
                        format!(
                            "the pool target is at revision {revision}, not {}: review it and retry with expected_revision {revision}",
                            req.expected_revision
                        ),
                    )
                    .with_detail(&previous));
                }
                let old = db::target_at(tx, pool_id, req.to_revision)?.ok_or_else(|| {
                    ApiErr::not_found(format!(
                        "pool {pool_id} has no target revision {}: list them with GET /api/v1/pools/{pool_id}/targets",
                        req.to_revision
                    ))
                })?;
                let next = revision + 1;
                tx.prepare_cached(
                    "INSERT INTO targets (pool_id, revision, snapshot, set_by_endpoint, set_by, set_at, reverted_from)
                     VALUES (?1, ?2, ?3, NULL, 'admin', ?4, ?5)",
                )?
                .execute(params![pool_id, next as i64, old.snapshot.to_hex(), t, req.to_revision as i64])?;
                db::audit(
                    tx,
                    "admin",
                    "target.revert",
                    Some(format!("pool:{pool_id}")),
                    peer,
                    Some(format!("revision {next} = revision {}", req.to_revision)),
                )?;
                // A revert goes to every ring at once: it is how a bad rollout is undone.
                rollout_db::supersede(tx, pool_id, t)?;
                db::copy_manifest(tx, pool_id, req.to_revision, next)?;
                let info = db::target_at(tx, pool_id, next)?
                    .ok_or_else(|| ApiErr::internal("new target vanished"))?;
                Ok((info, previous))
            })
            .await?;
        self.target_changed(info.clone(), previous).await;
        Ok(info)
    }

    /// Creates an operation for `endpoint_id` (by itself or by an admin). Returns the
    /// operation and whether it is new (`false`: an earlier request had the same key).
    pub(crate) async fn create_operation(
        &self,
        actor: Actor,
        endpoint_id: i64,
        req: CreateOperation,
        peer: Option<IpAddr>,
    ) -> Result<(Operation, bool), ApiErr> {
        if let Some(key) = &req.idempotency_key
            && (key.is_empty() || key.len() > 128)
        {
            return Err(ApiErr::invalid(
                "idempotency_key must be 1 to 128 characters",
            ));
        }
        let st = self.clone();
        let mut charged = Charged::default();
        let (op, created) = self
            .db
            .write(move |tx| {
                let pool_id: i64 = tx
                    .prepare_cached("SELECT pool_id FROM endpoints WHERE id = ?1")?
                    .query_row([endpoint_id], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| ApiErr::not_found(format!("no endpoint {endpoint_id}")))?;
                if let Some(key) = &req.idempotency_key {
                    let sql = format!(
                        "SELECT {} FROM operations WHERE endpoint_id = ?1 AND idempotency_key = ?2",
                        db::OP_COLS
                    );
                    if let Some(row) = tx
                        .prepare_cached(&sql)?
                        .query_row(params![endpoint_id, key], db::op_row)
                        .optional()?
                    {
                        let op = db::finish_op(row)?;
                        if op.kind != req.kind || op.to_snapshot != req.to_snapshot {
                            return Err(ApiErr::conflict(
                                "idempotency_key_reused",
                                format!(
                                    "idempotency key {key:?} was used for operation {} with another kind or snapshot: use a new key",
                                    op.id
                                ),
                            )
                            .with_detail(&op));
                        }
                        return Ok((op, false));
                    }
                }
                if let Some(active) = db::active_operation(tx, endpoint_id)? {
                    return Err(ApiErr::conflict(
                        "operation_active",
                        format!(
                            "operation {} ({}, {}) is still active on this endpoint: wait for it to finish or cancel it",
                            active.id,
                            enum_to_sql(&active.kind),
                            enum_to_sql(&active.state)
                        ),
                    )
                    .with_detail(&active));
                }
                if req.kind == OperationKind::SyncToLatest && db::current_target(tx, pool_id)?.is_none() {
                    return Err(ApiErr::conflict(
                        "no_target",
                        "the pool has no target yet: set one (set as latest) before syncing to it",
                    ));
                }
                let offered = rollout_run::offered_for_sync(tx, endpoint_id, pool_id, req.kind, st.clock.now())?;
                if actor == Actor::Endpoint(endpoint_id) {
                    st.charge_once(&mut charged, endpoint_id, 2 * ROW_COST_BYTES)?;
                }
                let t = st.clock.now();
                let id: i64 = tx
                    .prepare_cached(
                    "INSERT INTO operations (endpoint_id, pool_id, kind, state, to_snapshot, idempotency_key, created_at, updated_at)
                     VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?6) RETURNING id",
                )?
                .query_row(params![
                    endpoint_id,
                    pool_id,
                    enum_to_sql(&req.kind),
                    req.to_snapshot.map(|h| h.to_hex()),
                    req.idempotency_key,
                    t
                ], |r| r.get(0))?;
                if offered.is_some() {
                    rollout_db::tag_operation(tx, id, offered, false)?;
                }
                db::audit(
                    tx,
                    &actor.to_string(),
                    "operation.create",
                    Some(format!("operation:{id}")),
                    peer,
                    Some(format!("{} on endpoint:{endpoint_id}", enum_to_sql(&req.kind))),
                )?;
                let op = db::operation(tx, id)?.ok_or_else(|| ApiErr::internal("new operation vanished"))?;
                Ok((op, true))
            })
            .await?;
        if created {
            self.metrics
                .operations_created
                .fetch_add(1, Ordering::Relaxed);
            if actor != Actor::Endpoint(endpoint_id) {
                self.hub.publish(
                    op.pool_id,
                    Audience::Endpoint(endpoint_id),
                    &ServerMsg::OperationRequested {
                        operation: op.clone(),
                    },
                );
            }
            self.operation_updated(&op).await;
        } else if op.state == OperationState::Pending && actor != Actor::Endpoint(endpoint_id) {
            // A retried request (same idempotency key) for an operation still pending: the
            // first announcement may never have reached the endpoint (the replica that
            // stored it died between its commit and telling the others, or the socket was
            // down). Announced again; the daemon runs an operation id once.
            self.hub.publish(
                op.pool_id,
                Audience::Endpoint(endpoint_id),
                &ServerMsg::OperationRequested {
                    operation: op.clone(),
                },
            );
        }
        Ok((op, created))
    }

    /// Admin: asks every endpoint of the pool that is `behind` its target to sync (one
    /// [`Self::create_operation`] each). Returns the operations created and the endpoints
    /// refused (an operation already active, or gone), with the reason.
    pub(crate) async fn request_sync_behind(
        &self,
        pool_id: i64,
        peer: Option<IpAddr>,
    ) -> Result<(Vec<Operation>, Vec<(EndpointStatus, ApiErr)>), ApiErr> {
        let mut created = Vec::new();
        let mut refused = Vec::new();
        for status in self.pool_statuses(pool_id).await? {
            if status.state != EndpointState::Behind {
                continue;
            }
            let req = CreateOperation {
                kind: OperationKind::SyncToLatest,
                to_snapshot: None,
                idempotency_key: None,
            };
            match self
                .create_operation(Actor::Admin, status.id, req, peer)
                .await
            {
                Ok((op, _)) => created.push(op),
                Err(e) => refused.push((status, e)),
            }
        }
        Ok((created, refused))
    }

    /// A page of operations, newest first (`cursor`: below this id), of one endpoint and/or
    /// one pool.
    pub(crate) async fn operations_page(
        &self,
        endpoint: Option<i64>,
        pool: Option<i64>,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<crate::proto::Page<Operation>, ApiErr> {
        let items = self
            .db
            .read(move |conn| {
                let sql = format!(
                    "SELECT {} FROM operations
                     WHERE id < ?1 AND (CAST(?2 AS BIGINT) IS NULL OR endpoint_id = ?2)
                       AND (CAST(?3 AS BIGINT) IS NULL OR pool_id = ?3)
                     ORDER BY id DESC LIMIT ?4",
                    db::OP_COLS
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt
                    .query_map(
                        params![cursor.unwrap_or(i64::MAX), endpoint, pool, limit],
                        db::op_row,
                    )?
                    .collect::<super::sql::Result<Vec<_>>>()?;
                rows.into_iter()
                    .map(db::finish_op)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(crate::proto::Page::keyset(items, limit, |o| o.id))
    }

    pub(crate) async fn operation_updated(&self, op: &Operation) {
        self.hub.publish(
            op.pool_id,
            Audience::Admins,
            &ServerMsg::OperationUpdated {
                operation: op.clone(),
            },
        );
        self.status_changed(op.pool_id, op.endpoint_id).await;
    }

    /// Moves an endpoint's own operation to `next` (checked by the state machine).
    async fn transition(
        &self,
        ep: &EndpointAuth,
        op_id: i64,
        next: OperationState,
        progress: Option<Progress>,
        result: Option<OperationResult>,
        peer: Option<IpAddr>,
    ) -> Result<Operation, ApiErr> {
        let endpoint_id = ep.id;
        let st = self.clone();
        let mut charged = Charged::default();
        let op = self
            .db
            .write(move |tx| {
                let op = db::operation(tx, op_id)?
                    .ok_or_else(|| ApiErr::not_found(format!("no operation {op_id}")))?;
                if op.endpoint_id != endpoint_id {
                    return Err(ApiErr::forbidden(format!(
                        "operation {op_id} belongs to another endpoint: an endpoint may only update its own operations"
                    )));
                }
                if !op.state.can_become(next) {
                    return Err(ApiErr::conflict(
                        "invalid_transition",
                        format!(
                            "operation {op_id} is {}; it cannot become {}",
                            enum_to_sql(&op.state),
                            enum_to_sql(&next)
                        ),
                    )
                    .with_detail(&op));
                }
                let progress_json = match &progress {
                    Some(p) => Some(serde_json::to_string(p).map_err(|e| ApiErr::internal(e.to_string()))?),
                    None => None,
                };
                let result_json = match &result {
                    Some(r) => Some(serde_json::to_string(r).map_err(|e| ApiErr::internal(e.to_string()))?),
                    None => None,
                };
                let size = progress_json.as_ref().map_or(0, String::len)
                    + result_json.as_ref().map_or(0, String::len);
                st.charge_once(&mut charged, endpoint_id, size + ROW_COST_BYTES)?;
                tx.prepare_cached(
                    "UPDATE operations SET state = ?1, progress = COALESCE(?2, progress),
                     result = COALESCE(?3, result), updated_at = ?4 WHERE id = ?5",
                )?
                .execute(params![enum_to_sql(&next), progress_json, result_json, st.clock.now(), op_id])?;
                tx.prepare_cached("UPDATE endpoints SET last_seen = ?1 WHERE id = ?2")?
                    .execute(params![st.clock.now(), endpoint_id])?;
                if op.state != next {
                    db::audit(
                        tx,
                        &Actor::Endpoint(endpoint_id).to_string(),
                        "operation.update",
                        Some(format!("operation:{op_id}")),
                        peer,
                        Some(format!("{} -> {}", enum_to_sql(&op.state), enum_to_sql(&next))),
                    )?;
                }
                db::operation(tx, op_id)?.ok_or_else(|| ApiErr::internal("operation vanished"))
            })
            .await?;
        self.operation_updated(&op).await;
        if op.state.is_terminal() {
            // A result may pass or fail a rollout gate, and frees a slot.
            self.rollout_poke();
        }
        Ok(op)
    }

    pub(crate) async fn progress(
        &self,
        ep: &EndpointAuth,
        op_id: i64,
        progress: Progress,
        peer: Option<IpAddr>,
    ) -> Result<Operation, ApiErr> {
        if progress.percent > 100 || progress.stage.is_empty() || progress.stage.len() > 64 {
            return Err(ApiErr::invalid(
                "progress needs a stage of 1 to 64 characters and a percent from 0 to 100",
            ));
        }
        if progress.current.as_ref().is_some_and(|c| c.len() > 1024) {
            return Err(ApiErr::invalid(
                "progress.current is longer than 1024 bytes",
            ));
        }
        self.transition(
            ep,
            op_id,
            OperationState::InProgress,
            Some(progress),
            None,
            peer,
        )
        .await
    }

    pub(crate) async fn result(
        &self,
        ep: &EndpointAuth,
        op_id: i64,
        result: OperationResult,
        peer: Option<IpAddr>,
    ) -> Result<Operation, ApiErr> {
        if !result.state.is_terminal() {
            return Err(ApiErr::invalid(
                "a result's state must be completed, failed or cancelled; report progress with /progress",
            ));
        }
        if result.failures.len() > 100_000 {
            return Err(ApiErr::invalid(
                "a result lists more than 100,000 failures: send at most one per package",
            ));
        }
        let result = bound_result(result);
        self.transition(ep, op_id, result.state, None, Some(result), peer)
            .await
    }

    /// Admin: cancels a pending operation at once; asks the endpoint to stop a running one
    /// (it then reports `cancelled` as its result). `force` also marks a running operation
    /// cancelled without waiting for the endpoint (for an endpoint that is gone).
    pub(crate) async fn cancel(
        &self,
        op_id: i64,
        force: bool,
        peer: Option<IpAddr>,
    ) -> Result<Operation, ApiErr> {
        let t = self.clock.now();
        let op = self
            .db
            .write(move |tx| {
                let op = db::operation(tx, op_id)?
                    .ok_or_else(|| ApiErr::not_found(format!("no operation {op_id}")))?;
                if op.state.is_terminal() {
                    return Err(ApiErr::conflict(
                        "operation_finished",
                        format!("operation {op_id} is already {}", enum_to_sql(&op.state)),
                    )
                    .with_detail(&op));
                }
                if op.state == OperationState::Pending || force {
                    let message = if op.state == OperationState::Pending {
                        "cancelled by an admin before it started"
                    } else {
                        "cancelled by an admin without the endpoint's confirmation (forced)"
                    };
                    let result = OperationResult {
                        state: OperationState::Cancelled,
                        message: message.into(),
                        failures: Vec::new(),
                        snapshot: None,
                    };
                    tx.prepare_cached(
                        "UPDATE operations SET state = 'cancelled', result = ?1, updated_at = ?2 WHERE id = ?3",
                    )?
                    .execute(params![
                        serde_json::to_string(&result).map_err(|e| ApiErr::internal(e.to_string()))?,
                        t,
                        op_id
                    ])?;
                }
                db::audit(
                    tx,
                    "admin",
                    "operation.cancel",
                    Some(format!("operation:{op_id}")),
                    peer,
                    Some(format!(
                        "was {}{}",
                        enum_to_sql(&op.state),
                        if force { ", forced" } else { "" }
                    )),
                )?;
                db::operation(tx, op_id)?.ok_or_else(|| ApiErr::internal("operation vanished"))
            })
            .await?;
        self.hub.publish(
            op.pool_id,
            Audience::Endpoint(op.endpoint_id),
            &ServerMsg::CancelRequested { operation: op.id },
        );
        self.operation_updated(&op).await;
        Ok(op)
    }
}

/// Checks a manifest received from an endpoint and encodes it for storage (gzip of JSON).
fn encode_manifest(m: &crate::manifest::Manifest) -> Result<Vec<u8>, ApiErr> {
    use std::io::Write as _;
    m.validate()
        .map_err(|e| ApiErr::invalid(format!("{e}: nothing was stored")))?;
    let json = serde_json::to_vec(m).map_err(|e| ApiErr::internal(e.to_string()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&json)
        .map_err(|e| ApiErr::internal(e.to_string()))?;
    gz.finish().map_err(|e| ApiErr::internal(e.to_string()))
}

/// Decodes a stored manifest (gzip of JSON), reading at most 64 MiB of JSON.
pub(crate) fn decode_manifest(body: &[u8]) -> Result<crate::manifest::Manifest, ApiErr> {
    use std::io::Read as _;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(64 << 20)
        .read_to_end(&mut json)
        .map_err(|e| ApiErr::internal(format!("a stored manifest is unreadable: {e}")))?;
    serde_json::from_slice(&json)
        .map_err(|e| ApiErr::internal(format!("a stored manifest is unreadable: {e}")))
}
