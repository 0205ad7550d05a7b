//! Rollouts at work: the periodic step that offers rings, halts on failures, frees stale
//! slots, lifts expired holds and starts automatic syncs; what an endpoint is offered; the
//! admin actions. Each step of a pool is one write transaction (the single writer orders it
//! with every report and result), reading the gates from stored operations.

use std::net::IpAddr;

use super::sql::{Connection, params};

use super::AppState;
use super::db;
use super::error::ApiErr;
use super::hub::Audience;
use super::rollout::{self, GateCounts};
use super::rollout_db::{self, Offers, RolloutRow, SyncOutcome};
use super::service::compile_keyed;
use crate::plan::SyncStatus;
use crate::proto::{
    AutoSyncMode, Hold, Offer, OperationKind, OperationResult, OperationState, PoolPolicy, Rollout,
    RolloutPosition, RolloutState, ServerMsg, SetHold, Wave,
};

/// Most automatic syncs started in one pool per step: each is an event on the pool's
/// endpoint channel, and a burst past its capacity would disconnect slow sockets.
const MAX_STARTS_PER_STEP: usize = 100;

/// An endpoint as a rollout step sees it.
struct Ep {
    id: i64,
    name: String,
    current: Option<String>,
    last_seen: Option<i64>,
}

fn endpoints(conn: &Connection, pool_id: i64) -> Result<Vec<Ep>, ApiErr> {
    Ok(conn
        .prepare_cached(
            "SELECT id, name, current, last_seen FROM endpoints WHERE pool_id = ?1 ORDER BY id",
        )?
        .query_map([pool_id], |r| {
            Ok(Ep {
                id: r.get(0)?,
                name: r.get(1)?,
                current: r.get(2)?,
                last_seen: r.get(3)?,
            })
        })?
        .collect::<super::sql::Result<Vec<_>>>()?)
}

/// The waves of `row` computed from stored operations.
fn waves(
    conn: &Connection,
    policy: &PoolPolicy,
    offers: &Offers,
    row: &RolloutRow,
    eps: &[Ep],
    online: &dyn Fn(&Ep) -> bool,
) -> Result<Vec<Wave>, ApiErr> {
    let rings = &policy.rollout.rings;
    let outcomes = rollout_db::outcomes(conn, row.pool_id, row.revision)?;
    let target = offers.snapshot_of(row.revision).map(|h| h.to_hex());
    let mut out: Vec<Wave> = rings
        .iter()
        .enumerate()
        .map(|(i, r)| Wave {
            ring: r.name.clone(),
            offered: (i as u32) < row.rings_offered,
            offered_at: row.offered_at.get(i).copied(),
            soak_until: row.offered_at.get(i).map(|t| t + r.soak_secs as i64),
            endpoints: 0,
            online: 0,
            succeeded: 0,
            failed: 0,
            syncing: 0,
            required: 0,
            max_failures: r.gate.max_failures,
            gate_holds: false,
            waived: false,
        })
        .collect();
    for ep in eps {
        let w = &mut out[offers.ring_of(&ep.name)];
        w.endpoints += 1;
        let outcome = outcomes.get(&ep.id).copied();
        match outcome {
            Some(SyncOutcome::Verified) => w.succeeded += 1,
            Some(SyncOutcome::Failed) => w.failed += 1,
            Some(SyncOutcome::Running) => w.syncing += 1,
            None => {}
        }
        // Already at the revision without a sync (e.g. the machine it came from): nothing
        // to prove, so not counted against the gate.
        let there = outcome.is_none() && target.is_some() && ep.current == target;
        if online(ep) && !there {
            w.online += 1;
        }
    }
    for (i, w) in out.iter_mut().enumerate() {
        let gate = &rings[i].gate;
        let accepted = row.accepted.get(i).copied().unwrap_or(0);
        w.required = rollout::required(gate, w.online);
        let counts = GateCounts {
            online: w.online,
            succeeded: w.succeeded,
            failed: w.failed,
        };
        let passes = rollout::gate_holds(gate, counts, accepted);
        w.gate_holds = passes
            || (row.overridden == Some(i as u32) && !rollout::failed_over(gate, counts, accepted));
        w.waived = w.gate_holds && !passes;
    }
    Ok(out)
}

fn summary(row: &RolloutRow, waves: Vec<Wave>) -> Rollout {
    Rollout {
        pool_id: row.pool_id,
        revision: row.revision,
        state: row.state,
        rings_offered: row.rings_offered,
        waves,
        reason: row.reason.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// Where an endpoint stands, with its one-line message.
pub(crate) fn position(
    policy: &PoolPolicy,
    offers: &Offers,
    latest: Option<&RolloutRow>,
    id: i64,
    name: &str,
    now: i64,
) -> Option<RolloutPosition> {
    let rings = &policy.rollout.rings;
    let newest = offers.newest()?;
    let ring = offers.ring_of(name);
    let r = &rings[ring];
    let offered = offers.offered(id, name);
    let hold = offers.holds.get(&id).cloned();
    let latest = latest.filter(|l| l.revision == newest);
    let wave = ring as u32 + 1;
    let mut not_before = None;
    let message = if let Some(h) = &hold {
        format!(
            "on hold until {}: {}",
            rollout::date_utc(h.until),
            crate::display::clean(&h.reason)
        )
    } else if offered == Some(newest)
        && let Some(l) =
            latest.filter(|l| matches!(l.state, RolloutState::Halted | RolloutState::Paused))
    {
        format!(
            "revision {newest} is offered to this machine (wave {wave}), but its rollout is {}: automatic syncs wait for an admin",
            db::enum_to_sql(&l.state)
        )
    } else if offered == Some(newest) {
        match rollout::next_open(r, now) {
            Some(t) if t > now => {
                not_before = Some(t);
                format!(
                    "your machine gets revision {newest} in wave {wave}, from {}",
                    rollout::when(r, t)
                )
            }
            _ => format!("revision {newest} is offered to this machine (wave {wave})"),
        }
    } else {
        match latest {
            Some(l) if l.state == RolloutState::Halted => format!(
                "revision {newest} is halted in wave {}: this machine (wave {wave}) waits for an admin",
                l.rings_offered
            ),
            Some(l) if l.state == RolloutState::Paused => format!(
                "revision {newest} is paused in wave {}: this machine (wave {wave}) waits for an admin",
                l.rings_offered
            ),
            Some(l) if l.rings_offered == wave - 1 => {
                let prev = (wave - 2) as usize;
                let soaked =
                    l.offered_at.get(prev).copied().unwrap_or(now) + rings[prev].soak_secs as i64;
                let t = rollout::next_open(r, soaked.max(now)).unwrap_or(soaked.max(now));
                not_before = Some(t);
                format!(
                    "your machine gets revision {newest} in wave {wave}, from {} at the earliest (once wave {} is healthy)",
                    rollout::when(r, t),
                    wave - 1
                )
            }
            _ => format!(
                "your machine gets revision {newest} in wave {wave} of {}, after wave {}",
                rings.len(),
                wave - 1
            ),
        }
    };
    Some(RolloutPosition {
        revision: newest,
        offered_revision: offered,
        wave,
        waves: rings.len() as u32,
        ring: r.name.clone(),
        state: latest.map(|l| l.state),
        not_before,
        hold,
        message,
    })
}

/// What one step did, for the events published after it committed.
#[derive(Default)]
struct StepOut {
    started: Vec<crate::proto::Operation>,
    freed: Vec<crate::proto::Operation>,
    /// The rollout or a hold changed: endpoints must ask for their offer again.
    changed: bool,
    halted: Option<(u64, String)>,
}

impl AppState {
    /// Wakes the rollout task now (a result arrived, a target or hold changed, the clock moved).
    pub(crate) fn rollout_poke(&self) {
        self.rollout_wake.notify_one();
    }

    /// Runs [`Self::rollout_step`] for every pool with rings, every `rollout_step_ms` and
    /// when poked, until shutdown.
    pub(crate) async fn run_rollouts(self) {
        let period = std::time::Duration::from_millis(self.settings.rollout_step_ms.max(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.rollout_wake.notified() => {}
                _ = super::stopped(&mut shutdown) => return,
            }
            self.rollout_step_all().await;
        }
    }

    /// One [`Self::rollout_step`] for every pool with rings. Steps of one pool never overlap.
    pub(crate) async fn rollout_step_all(&self) {
        let _one = self.rollout_running.lock().await;
        {
            let pools = self
                .db
                .read(|conn| {
                    let rows = conn
                        .prepare_cached("SELECT id, policy FROM pools ORDER BY id")?
                        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                        .collect::<super::sql::Result<Vec<_>>>()?;
                    Ok(rows)
                })
                .await;
            let pools = match pools {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list pools for rollouts");
                    return;
                }
            };
            for (pool_id, policy) in pools {
                // Cheap filter: a pool without rings has nothing to step.
                if !policy.contains("\"rings\"") {
                    continue;
                }
                if let Err(e) = self.rollout_step(pool_id).await {
                    tracing::warn!(pool = pool_id, error = %e, "rollout step failed; retrying");
                }
            }
        }
    }

    /// One step of a pool's rollout (see the module documentation).
    pub(crate) async fn rollout_step(&self, pool_id: i64) -> Result<(), ApiErr> {
        let connected = self.hub.connected();
        let now = self.clock.now();
        let offline_after = self.settings.offline_after_secs as i64;
        let st = self.clone();
        let out = self
            .db
            .write(move |tx| {
                let mut out = StepOut::default();
                let Some(policy) = db::policy_of(tx, pool_id)? else {
                    return Ok(out);
                };
                // Expired holds lift themselves.
                let expired = tx
                    .prepare_cached(
                        "DELETE FROM holds WHERE until <= ?2 AND endpoint_id IN
                           (SELECT id FROM endpoints WHERE pool_id = ?1)",
                    )?
                    .execute(params![pool_id, now])?;
                if expired > 0 {
                    out.changed = true;
                    db::audit(tx, "rollout", "hold.expire", Some(format!("pool:{pool_id}")), None, Some(format!("{expired} holds ended")))?;
                }
                let Some(mut offers) = Offers::load(tx, pool_id, &policy, now)? else {
                    return Ok(out);
                };
                let eps = endpoints(tx, pool_id)?;
                let online = |e: &Ep| {
                    connected.contains(&e.id) || e.last_seen.is_some_and(|t| now - t <= offline_after)
                };
                // Slots of endpoints gone: cancelled (not a result: the gate does not count it).
                let timeout = policy.rollout.slot_timeout_secs as i64;
                for (op, ep, last_seen) in rollout_db::running_auto(tx, pool_id)? {
                    if connected.contains(&ep) || last_seen.is_some_and(|t| now - t <= timeout) {
                        continue;
                    }
                    let result = OperationResult {
                        state: OperationState::Cancelled,
                        message: format!("slot freed: the endpoint was offline for more than {timeout} s"),
                        failures: Vec::new(),
                        snapshot: None,
                    };
                    tx.prepare_cached(
                        "UPDATE operations SET state = 'cancelled', result = ?1, updated_at = ?2 WHERE id = ?3",
                    )?
                    .execute(params![serde_json::to_string(&result).map_err(|e| ApiErr::internal(e.to_string()))?, now, op])?;
                    db::audit(tx, "rollout", "operation.cancel", Some(format!("operation:{op}")), None, Some("slot freed: endpoint offline".into()))?;
                    if let Some(o) = db::operation(tx, op)? {
                        out.freed.push(o);
                    }
                }
                // The rollout: halt on failures, offer the next ring after soak and gate.
                let mut latest = rollout_db::latest(tx, pool_id)?;
                if let Some(row) = latest.as_mut().filter(|r| r.state == RolloutState::Active) {
                    let rings = &policy.rollout.rings;
                    loop {
                        let ws = waves(tx, &policy, &offers, row, &eps, &online)?;
                        // The policy may have fewer rings than when the rollout started.
                        let offered = (row.rings_offered as usize).min(rings.len());
                        let over = (0..offered).find(|&i| {
                            let c = GateCounts { online: ws[i].online, succeeded: ws[i].succeeded, failed: ws[i].failed };
                            rollout::failed_over(&rings[i].gate, c, row.accepted.get(i).copied().unwrap_or(0))
                        });
                        if let Some(i) = over {
                            let why = format!(
                                "wave {} ({}): {} syncs to revision {} failed, more than its gate allows ({})",
                                i + 1, rings[i].name, ws[i].failed, row.revision, rings[i].gate.max_failures
                            );
                            row.state = RolloutState::Halted;
                            row.reason = Some(why.clone());
                            row.updated_at = now;
                            rollout_db::update(tx, row)?;
                            db::audit(tx, "rollout", "rollout.halt", Some(format!("pool:{pool_id}")), None, Some(why.clone()))?;
                            out.halted = Some((row.revision, why));
                            out.changed = true;
                            break;
                        }
                        if offered == 0 || offered >= rings.len() {
                            break;
                        }
                        let i = offered - 1;
                        let soaked = row.offered_at.get(i).is_some_and(|t| now >= t + rings[i].soak_secs as i64);
                        if !(soaked && ws[i].gate_holds) {
                            break;
                        }
                        row.rings_offered += 1;
                        row.offered_at.push(now);
                        row.updated_at = now;
                        rollout_db::update(tx, row)?;
                        db::audit(
                            tx, "rollout", "rollout.offer", Some(format!("pool:{pool_id}")), None,
                            Some(format!("revision {} offered to wave {} ({})", row.revision, i + 2, rings[i + 1].name)),
                        )?;
                        out.changed = true;
                        offers = Offers::load(tx, pool_id, &policy, now)?
                            .ok_or_else(|| ApiErr::internal("rings vanished"))?;
                    }
                }
                // Automatic syncs: the coordinator starts them (windows, slots, one per
                // endpoint and revision).
                if policy.auto_sync != AutoSyncMode::Apply {
                    return Ok(out);
                }
                let blocked = latest
                    .as_ref()
                    .filter(|l| matches!(l.state, RolloutState::Halted | RolloutState::Paused))
                    .map(|l| l.revision);
                let key = compile_keyed(&policy)?;
                let rings = &policy.rollout.rings;
                let mut members: Vec<Vec<i64>> = vec![Vec::new(); rings.len()];
                for ep in &eps {
                    members[offers.ring_of(&ep.name)].push(ep.id);
                }
                for ep in &eps {
                    if out.started.len() >= MAX_STARTS_PER_STEP {
                        break;
                    }
                    if !connected.contains(&ep.id) || offers.holds.contains_key(&ep.id) {
                        continue;
                    }
                    let Some(rev) = offers.offered(ep.id, &ep.name) else { continue };
                    if blocked == Some(rev) {
                        continue;
                    }
                    let (Some(cur), Some(target)) = (ep.current.as_deref(), offers.snapshot_of(rev)) else {
                        continue;
                    };
                    // At the target already (by hash): nothing to sync, no query needed.
                    if cur == target.to_hex() {
                        continue;
                    }
                    let ring = offers.ring_of(&ep.name);
                    if !rollout::in_window(&rings[ring], now)
                        || db::active_operation(tx, ep.id)?.is_some()
                        || rollout_db::attempted(tx, ep.id, rev)?
                    {
                        continue;
                    }
                    let cur = db::parse_hash(cur)?;
                    let behind = matches!(
                        st.sync_status(tx, &cur, &target, &key)?,
                        Some((SyncStatus::Behind | SyncStatus::Diverged, _))
                    );
                    if !behind {
                        continue;
                    }
                    if let Some(max) = rings[ring].max_concurrent
                        && rollout_db::slots_used(tx, &members[ring])? >= u64::from(max)
                    {
                        continue;
                    }
                    let id: i64 = tx
                        .prepare_cached(
                            "INSERT INTO operations (endpoint_id, pool_id, kind, state, created_at, updated_at, target_revision, auto)
                             VALUES (?1, ?2, 'sync-to-latest', 'pending', ?3, ?3, ?4, 1) RETURNING id",
                        )?
                        .query_row(params![ep.id, pool_id, now, rev as i64], |r| r.get(0))?;
                    db::audit(
                        tx, "rollout", "operation.create", Some(format!("operation:{id}")), None,
                        Some(format!("automatic sync-to-latest (revision {rev}) on endpoint:{}", ep.id)),
                    )?;
                    if let Some(o) = db::operation(tx, id)? {
                        out.started.push(o);
                    }
                }
                Ok(out)
            })
            .await?;
        for op in &out.freed {
            self.hub.publish(
                pool_id,
                Audience::Endpoint(op.endpoint_id),
                &ServerMsg::CancelRequested { operation: op.id },
            );
            self.operation_updated(op).await;
        }
        if let Some((revision, why)) = &out.halted {
            tracing::warn!(
                pool = pool_id,
                revision,
                "rollout halted: {why}; later waves are not offered the target: resume it (`pacpool admin rollouts resume`) or revert the target"
            );
        }
        if out.changed {
            self.rollout_changed(pool_id).await;
        }
        for op in &out.started {
            self.metrics
                .operations_created
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.hub.publish(
                pool_id,
                Audience::Endpoint(op.endpoint_id),
                &ServerMsg::OperationRequested {
                    operation: op.clone(),
                },
            );
            self.operation_updated(op).await;
        }
        Ok(())
    }

    /// Tells every socket of the pool that the rollout moved (endpoints then ask for their
    /// offer; admins get the summary) and admins every endpoint's new status.
    pub(crate) async fn rollout_changed(&self, pool_id: i64) {
        let rollout = self.rollout_show(pool_id).await.ok().flatten();
        self.hub.publish(
            pool_id,
            Audience::All,
            &ServerMsg::RolloutChanged { rollout },
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

    /// The pool's newest rollout with its waves computed now (`None`: no rollout yet).
    pub(crate) async fn rollout_show(&self, pool_id: i64) -> Result<Option<Rollout>, ApiErr> {
        Ok(self.rollouts(pool_id, 1).await?.into_iter().next())
    }

    /// The pool's rollouts, newest first, with their waves.
    pub(crate) async fn rollouts(&self, pool_id: i64, limit: u32) -> Result<Vec<Rollout>, ApiErr> {
        let connected = self.hub.connected();
        let now = self.clock.now();
        let offline_after = self.settings.offline_after_secs as i64;
        self.db
            .read(move |conn| {
                let policy = db::policy_of(conn, pool_id)?
                    .ok_or_else(|| ApiErr::not_found(format!("no pool {pool_id}")))?;
                let rows = rollout_db::list(conn, pool_id, limit)?;
                let Some(offers) = Offers::load(conn, pool_id, &policy, now)? else {
                    return Ok(rows.iter().map(|r| summary(r, Vec::new())).collect());
                };
                let eps = endpoints(conn, pool_id)?;
                let online = |e: &Ep| {
                    connected.contains(&e.id)
                        || e.last_seen.is_some_and(|t| now - t <= offline_after)
                };
                rows.iter()
                    .map(|r| Ok(summary(r, waves(conn, &policy, &offers, r, &eps, &online)?)))
                    .collect()
            })
            .await
    }

    /// Admin: pause, resume or halt the pool's newest rollout. Resuming a halted rollout
    /// accepts the failures so far and waives the gate of the ring it halted in (its soak
    /// still applies); resuming a paused one continues where it was.
    pub(crate) async fn rollout_action(
        &self,
        pool_id: i64,
        action: &'static str,
        peer: Option<IpAddr>,
    ) -> Result<Option<Rollout>, ApiErr> {
        let now = self.clock.now();
        let connected = self.hub.connected();
        let offline_after = self.settings.offline_after_secs as i64;
        self.db
            .write(move |tx| {
                let policy = db::policy_of(tx, pool_id)?
                    .ok_or_else(|| ApiErr::not_found(format!("no pool {pool_id}")))?;
                let mut row = rollout_db::latest(tx, pool_id)?.ok_or_else(|| {
                    ApiErr::conflict("no_rollout", format!("pool {pool_id} has no rollout: a rollout starts when a target is set while the pool's policy has rings"))
                })?;
                let wrong = |what: &str| {
                    ApiErr::conflict(
                        "rollout_state",
                        format!("the rollout of revision {} is {}: it cannot be {what}", row.revision, db::enum_to_sql(&row.state)),
                    )
                };
                match (action, row.state) {
                    ("pause", RolloutState::Active) => row.state = RolloutState::Paused,
                    ("halt", RolloutState::Active | RolloutState::Paused) => {
                        row.state = RolloutState::Halted;
                        row.reason = Some("halted by an admin".into());
                    }
                    ("resume", RolloutState::Paused) => row.state = RolloutState::Active,
                    ("resume", RolloutState::Halted) => {
                        let offers = Offers::load(tx, pool_id, &policy, now)?
                            .ok_or_else(|| ApiErr::conflict("no_rings", "the pool's policy has no rings any more: nothing to resume"))?;
                        let eps = endpoints(tx, pool_id)?;
                        let online = |e: &Ep| connected.contains(&e.id) || e.last_seen.is_some_and(|t| now - t <= offline_after);
                        let ws = waves(tx, &policy, &offers, &row, &eps, &online)?;
                        row.accepted = ws.iter().map(|w| w.failed).collect();
                        row.overridden = Some(row.rings_offered - 1);
                        row.state = RolloutState::Active;
                        row.reason = None;
                    }
                    ("pause", _) => return Err(wrong("paused")),
                    ("halt", _) => return Err(wrong("halted")),
                    _ => return Err(wrong("resumed")),
                }
                row.updated_at = now;
                rollout_db::update(tx, &row)?;
                db::audit(tx, "admin", &format!("rollout.{action}"), Some(format!("pool:{pool_id}")), peer, Some(format!("revision {}", row.revision)))?;
                Ok(())
            })
            .await?;
        if action == "halt" {
            tracing::warn!(pool = pool_id, "rollout halted by an admin");
        }
        self.rollout_poke();
        self.rollout_changed(pool_id).await;
        self.rollout_show(pool_id).await
    }

    /// What endpoint `id` is offered: its target and rollout position (the pool target and
    /// no position when the pool has no rings).
    pub(crate) async fn offer(&self, id: i64, pool_id: i64) -> Result<Offer, ApiErr> {
        let now = self.clock.now();
        self.db
            .read(move |conn| offer_in(conn, id, pool_id, now))
            .await
    }

    /// Puts endpoint `id` on hold (by `set_by`: `admin` or `endpoint`), at the revision it is
    /// offered now.
    pub(crate) async fn set_hold(
        &self,
        id: i64,
        req: SetHold,
        set_by: &'static str,
        peer: Option<IpAddr>,
    ) -> Result<Hold, ApiErr> {
        let now = self.clock.now();
        if req.reason.trim().is_empty() || req.reason.len() > 500 {
            return Err(ApiErr::invalid("a hold needs a reason of 1 to 500 bytes"));
        }
        if req.until <= now {
            return Err(ApiErr::invalid(format!(
                "a hold must end in the future (now is {now}, Unix seconds)"
            )));
        }
        let (hold, pool_id) = self
            .db
            .write(move |tx| {
                let (pool_id, name): (i64, String) = tx
                    .query_row("SELECT pool_id, name FROM endpoints WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(|_| ApiErr::not_found(format!("no endpoint {id}")))?;
                let policy = db::policy_of(tx, pool_id)?.unwrap_or_default();
                if policy.rollout.rings.is_empty() {
                    return Err(ApiErr::conflict(
                        "no_rings",
                        "holds work through rollouts, and this pool's policy has no rings: add [[rollout.rings]] to it (a single ring offers each new target to every machine at once)",
                    ));
                }
                if set_by == "endpoint" && !policy.rollout.endpoint_holds {
                    return Err(ApiErr::forbidden(
                        "this pool does not let endpoints hold themselves: ask an admin (`pacpool admin hold`), or set rollout.endpoint_holds in the pool policy",
                    ));
                }
                let revision = match Offers::load(tx, pool_id, &policy, now)? {
                    Some(o) => {
                        // Keep an existing hold's revision: re-holding never moves it forward.
                        let mut o = o;
                        o.holds.retain(|k, _| *k == id);
                        o.offered(id, &name)
                    }
                    None => db::current_target(tx, pool_id)?.map(|t| t.revision),
                };
                let hold = Hold { reason: req.reason.clone(), until: req.until, set_by: set_by.into(), revision };
                rollout_db::set_hold(tx, id, &hold, now)?;
                let actor = if set_by == "admin" { "admin".to_string() } else { format!("endpoint:{id}") };
                db::audit(tx, &actor, "hold.set", Some(format!("endpoint:{id}")), peer, Some(format!("until {}: {}", req.until, req.reason)))?;
                Ok((hold, pool_id))
            })
            .await?;
        self.rollout_changed(pool_id).await;
        Ok(hold)
    }

    /// Lifts endpoint `id`'s hold.
    pub(crate) async fn clear_hold(
        &self,
        id: i64,
        set_by: &'static str,
        peer: Option<IpAddr>,
    ) -> Result<(), ApiErr> {
        let pool_id = self
            .db
            .write(move |tx| {
                let pool_id: i64 = tx
                    .query_row("SELECT pool_id FROM endpoints WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .map_err(|_| ApiErr::not_found(format!("no endpoint {id}")))?;
                if set_by == "endpoint" {
                    let policy = db::policy_of(tx, pool_id)?.unwrap_or_default();
                    let by: Option<String> = tx
                        .query_row(
                            "SELECT set_by FROM holds WHERE endpoint_id = ?1",
                            [id],
                            |r| r.get(0),
                        )
                        .ok();
                    if !policy.rollout.endpoint_holds || by.as_deref() == Some("admin") {
                        return Err(ApiErr::forbidden(
                            "this hold can only be lifted by an admin",
                        ));
                    }
                }
                if !rollout_db::clear_hold(tx, id)? {
                    return Err(ApiErr::not_found(format!("endpoint {id} is not on hold")));
                }
                let actor = if set_by == "admin" {
                    "admin".to_string()
                } else {
                    format!("endpoint:{id}")
                };
                db::audit(
                    tx,
                    &actor,
                    "hold.clear",
                    Some(format!("endpoint:{id}")),
                    peer,
                    None,
                )?;
                Ok(pool_id)
            })
            .await?;
        self.rollout_poke();
        self.rollout_changed(pool_id).await;
        Ok(())
    }
}

/// What endpoint statuses need to show rollout positions (pools with rings only).
pub(crate) struct StatusCtx {
    policy: PoolPolicy,
    offers: Offers,
    latest: Option<RolloutRow>,
    now: i64,
}

impl StatusCtx {
    pub(crate) fn load(
        conn: &Connection,
        pool_id: i64,
        policy: &PoolPolicy,
        now: i64,
    ) -> Result<Option<Self>, ApiErr> {
        let Some(offers) = Offers::load(conn, pool_id, policy, now)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            policy: policy.clone(),
            offers,
            latest: rollout_db::latest(conn, pool_id)?,
            now,
        }))
    }

    pub(crate) fn position(&self, id: i64, name: &str) -> Option<RolloutPosition> {
        position(
            &self.policy,
            &self.offers,
            self.latest.as_ref(),
            id,
            name,
            self.now,
        )
    }
}

/// [`AppState::offer`] on a connection (also for `Welcome`).
pub(crate) fn offer_in(
    conn: &Connection,
    id: i64,
    pool_id: i64,
    now: i64,
) -> Result<Offer, ApiErr> {
    let policy = db::policy_of(conn, pool_id)?.unwrap_or_default();
    let Some(offers) = Offers::load(conn, pool_id, &policy, now)? else {
        return Ok(Offer {
            target: db::current_target(conn, pool_id)?,
            rollout: None,
        });
    };
    let name: String = conn.query_row("SELECT name FROM endpoints WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    let target = match offers.offered(id, &name) {
        Some(rev) => db::target_at(conn, pool_id, rev)?,
        None => None,
    };
    let latest = rollout_db::latest(conn, pool_id)?;
    Ok(Offer {
        target,
        rollout: position(&policy, &offers, latest.as_ref(), id, &name, now),
    })
}

/// For `create_operation`: the revision a sync-to-latest of this endpoint goes to, in a
/// pool with rings (`Ok(None)`: no rings, nothing to tag). Refuses when nothing is offered.
pub(crate) fn offered_for_sync(
    conn: &Connection,
    id: i64,
    pool_id: i64,
    kind: OperationKind,
    now: i64,
) -> Result<Option<u64>, ApiErr> {
    if kind != OperationKind::SyncToLatest {
        return Ok(None);
    }
    let policy = db::policy_of(conn, pool_id)?.unwrap_or_default();
    let Some(offers) = Offers::load(conn, pool_id, &policy, now)? else {
        return Ok(None);
    };
    let name: String = conn.query_row("SELECT name FROM endpoints WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    offers.offered(id, &name).map(Some).ok_or_else(|| {
        ApiErr::conflict(
            "not_offered",
            "no target revision has been offered to this endpoint yet: its rollout wave comes later",
        )
    })
}
