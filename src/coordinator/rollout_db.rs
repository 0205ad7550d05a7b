//! The rollouts' SQL: rollout rows, holds, and what rollout gates and slots read from the
//! operations table. Everything a gate counts comes from stored operations, never from
//! counters in memory, so a restarted coordinator (or one answering concurrent reports)
//! computes the same.

use std::collections::HashMap;

use super::sql::{Connection, Dialect, OptionalExtension, params};

use super::db::{enum_from_sql, enum_to_sql};
use super::error::ApiErr;
use super::rollout::RingMatcher;
use crate::proto::{Hold, PoolPolicy, RolloutState};
use crate::snapshot::SnapshotHash;

/// A `rollouts` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    pub pool_id: i64,
    pub revision: u64,
    pub state: RolloutState,
    /// Ring names when the rollout started (for display; membership follows the policy).
    pub rings: Vec<String>,
    pub rings_offered: u32,
    /// When each offered ring was offered.
    pub offered_at: Vec<i64>,
    /// Per ring: failures an admin accepted by resuming a halted rollout.
    pub accepted: Vec<u64>,
    /// The ring whose gate an admin waived by resuming it from a halt.
    pub overridden: Option<u32>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, ApiErr> {
    serde_json::to_string(v).map_err(|e| ApiErr::internal(e.to_string()))
}

fn unjson<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, ApiErr> {
    serde_json::from_str(s).map_err(|e| {
        tracing::error!(error = %e, "unreadable rollout row");
        ApiErr::internal("the coordinator database holds an unreadable rollout: see its log")
    })
}

const COLS: &str = "pool_id, revision, state, rings, rings_offered, offered_at, accepted, \
     overridden, reason, created_at, updated_at";

type RawRow = (
    i64,
    i64,
    String,
    String,
    i64,
    String,
    String,
    Option<i64>,
    Option<String>,
    i64,
    i64,
);

fn raw(r: &super::sql::Row<'_>) -> super::sql::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn finish(r: RawRow) -> Result<RolloutRow, ApiErr> {
    Ok(RolloutRow {
        pool_id: r.0,
        revision: r.1 as u64,
        state: enum_from_sql(&r.2)?,
        rings: unjson(&r.3)?,
        rings_offered: r.4 as u32,
        offered_at: unjson(&r.5)?,
        accepted: unjson(&r.6)?,
        overridden: r.7.map(|v| v as u32),
        reason: r.8,
        created_at: r.9,
        updated_at: r.10,
    })
}

/// The pool's newest rollout.
pub fn latest(conn: &Connection, pool_id: i64) -> Result<Option<RolloutRow>, ApiErr> {
    let sql =
        format!("SELECT {COLS} FROM rollouts WHERE pool_id = ?1 ORDER BY revision DESC LIMIT 1");
    conn.prepare_cached(&sql)?
        .query_row([pool_id], raw)
        .optional()?
        .map(finish)
        .transpose()
}

/// The pool's rollouts, newest first (at most `limit`).
pub fn list(conn: &Connection, pool_id: i64, limit: u32) -> Result<Vec<RolloutRow>, ApiErr> {
    let sql =
        format!("SELECT {COLS} FROM rollouts WHERE pool_id = ?1 ORDER BY revision DESC LIMIT ?2");
    conn.prepare_cached(&sql)?
        .query_map(params![pool_id, limit], raw)?
        .collect::<super::sql::Result<Vec<_>>>()?
        .into_iter()
        .map(finish)
        .collect()
}

/// Starts a rollout of `revision` (ring 1 offered now) and supersedes the pool's earlier
/// ones (the rings they offered keep their revision).
pub fn start(
    conn: &Connection,
    pool_id: i64,
    revision: u64,
    rings: Vec<String>,
    now: i64,
) -> Result<(), ApiErr> {
    supersede(conn, pool_id, now)?;
    let accepted = vec![0u64; rings.len()];
    conn.prepare_cached(
        "INSERT INTO rollouts (pool_id, revision, state, rings, rings_offered, offered_at, accepted,
            overridden, reason, created_at, updated_at)
         VALUES (?1, ?2, 'active', ?3, 1, ?4, ?5, NULL, NULL, ?6, ?6)",
    )?
    .execute(params![
        pool_id,
        revision as i64,
        json(&rings)?,
        json(&vec![now])?,
        json(&accepted)?,
        now
    ])?;
    Ok(())
}

/// Marks every unfinished rollout of the pool superseded (a newer target or a revert).
pub fn supersede(conn: &Connection, pool_id: i64, now: i64) -> Result<u64, ApiErr> {
    Ok(conn
        .prepare_cached(
            "UPDATE rollouts SET state = 'superseded', updated_at = ?2
             WHERE pool_id = ?1 AND state != 'superseded'",
        )?
        .execute(params![pool_id, now])? as u64)
}

/// Writes a rollout's changed fields back.
pub fn update(conn: &Connection, row: &RolloutRow) -> Result<(), ApiErr> {
    conn.prepare_cached(
        "UPDATE rollouts SET state = ?3, rings_offered = ?4, offered_at = ?5, accepted = ?6,
            overridden = ?7, reason = ?8, updated_at = ?9
         WHERE pool_id = ?1 AND revision = ?2",
    )?
    .execute(params![
        row.pool_id,
        row.revision as i64,
        enum_to_sql(&row.state),
        row.rings_offered,
        json(&row.offered_at)?,
        json(&row.accepted)?,
        row.overridden,
        row.reason,
        row.updated_at
    ])?;
    Ok(())
}

/// Retention: a rollout lives exactly as long as its target revision.
pub fn drop_orphans(conn: &Connection) -> Result<u64, ApiErr> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM rollouts WHERE NOT EXISTS (
                SELECT 1 FROM targets t
                WHERE t.pool_id = rollouts.pool_id AND t.revision = rollouts.revision)",
        )?
        .execute([])? as u64)
}

/// Halted rollouts over all pools (the `/metrics` gauge).
pub fn halted_count(conn: &Connection) -> Result<u64, ApiErr> {
    Ok(conn.query_row(
        "SELECT count(*) FROM rollouts WHERE state = 'halted'",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

// ---------------------------------------------------------------------------------------------
// Offers: which revision each ring has been offered.

/// What decides an endpoint's offered revision in a pool with rings: the ring patterns, the
/// revisions and how many rings each one's rollout offered, and the holds.
pub struct Offers {
    matcher: RingMatcher,
    /// (revision, snapshot, rings offered: `None` = every ring, a revision set without a
    /// rollout), newest first.
    targets: Vec<(u64, SnapshotHash, Option<u32>)>,
    /// The newest revision each endpoint set itself (set-latest): it has that state already,
    /// and may set the next one against it.
    set_by: HashMap<i64, u64>,
    /// Active holds by endpoint.
    pub holds: HashMap<i64, Hold>,
}

impl Offers {
    /// `None` when the pool has no rings (every endpoint gets the pool target, as before).
    pub fn load(
        conn: &Connection,
        pool_id: i64,
        policy: &PoolPolicy,
        now: i64,
    ) -> Result<Option<Self>, ApiErr> {
        if policy.rollout.rings.is_empty() {
            return Ok(None);
        }
        let matcher = RingMatcher::new(&policy.rollout).map_err(|e| {
            ApiErr::internal(format!("the pool's stored rollout policy is invalid: {e}"))
        })?;
        let rows = conn
            .prepare_cached(
                "SELECT t.revision, t.snapshot, r.rings_offered, t.set_by_endpoint FROM targets t
                 LEFT JOIN rollouts r ON r.pool_id = t.pool_id AND r.revision = t.revision
                 WHERE t.pool_id = ?1 ORDER BY t.revision DESC",
            )?
            .query_map([pool_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?
            .collect::<super::sql::Result<Vec<_>>>()?;
        let mut targets = Vec::with_capacity(rows.len());
        let mut set_by = HashMap::new();
        for (rev, snap, offered, by) in rows {
            if let Some(by) = by {
                // Newest first: the first seen is the newest.
                set_by.entry(by).or_insert(rev as u64);
            }
            targets.push((
                rev as u64,
                super::db::parse_hash(&snap)?,
                offered.map(|o| o as u32),
            ));
        }
        let holds = conn
            .prepare_cached(
                "SELECT h.endpoint_id, h.reason, h.until, h.set_by, h.revision FROM holds h
                 JOIN endpoints e ON e.id = h.endpoint_id WHERE e.pool_id = ?1 AND h.until > ?2",
            )?
            .query_map(params![pool_id, now], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Hold {
                        reason: r.get(1)?,
                        until: r.get(2)?,
                        set_by: r.get(3)?,
                        revision: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    },
                ))
            })?
            .collect::<super::sql::Result<HashMap<_, _>>>()?;
        Ok(Some(Self {
            matcher,
            targets,
            set_by,
            holds,
        }))
    }

    pub fn ring_of(&self, name: &str) -> usize {
        self.matcher.ring_of(name).unwrap_or(0)
    }

    /// The newest revision ring `ring` has been offered, ignoring holds.
    pub fn ring_revision(&self, ring: usize) -> Option<u64> {
        self.targets
            .iter()
            .find(|(_, _, offered)| offered.is_none_or(|o| o as usize > ring))
            .map(|t| t.0)
    }

    /// The revision endpoint `id` (named `name`) is offered: its ring's, or a newer one it
    /// set itself, but no newer than the revision it was held at while a hold lasts.
    pub fn offered(&self, id: i64, name: &str) -> Option<u64> {
        let ring = self.ring_revision(self.ring_of(name));
        let own = self.set_by.get(&id).copied();
        let rev = ring.max(own)?;
        match self.holds.get(&id) {
            Some(h) => h.revision.map(|held| held.min(rev)),
            None => Some(rev),
        }
    }

    pub fn snapshot_of(&self, revision: u64) -> Option<SnapshotHash> {
        self.targets.iter().find(|t| t.0 == revision).map(|t| t.1)
    }

    pub fn newest(&self) -> Option<u64> {
        self.targets.first().map(|t| t.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Holds

/// Puts an endpoint on hold at `revision` (the one it is offered now), replacing any hold.
pub fn set_hold(conn: &Connection, endpoint_id: i64, hold: &Hold, now: i64) -> Result<(), ApiErr> {
    conn.prepare_cached(
        "INSERT INTO holds (endpoint_id, reason, until, revision, set_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (endpoint_id) DO UPDATE SET reason = ?2, until = ?3, revision = ?4,
            set_by = ?5, created_at = ?6",
    )?
    .execute(params![
        endpoint_id,
        hold.reason,
        hold.until,
        hold.revision.map(|r| r as i64),
        hold.set_by,
        now
    ])?;
    Ok(())
}

/// Lifts a hold; whether there was one.
pub fn clear_hold(conn: &Connection, endpoint_id: i64) -> Result<bool, ApiErr> {
    Ok(conn
        .prepare_cached("DELETE FROM holds WHERE endpoint_id = ?1")?
        .execute([endpoint_id])?
        > 0)
}

// ---------------------------------------------------------------------------------------------
// What gates and slots read from the operations table.

/// The outcome of an endpoint's newest sync to a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Pending or in progress.
    Running,
    /// Completed with no package failure: the daemon verified the result against the target.
    Verified,
    /// Failed, or completed with package failures.
    Failed,
}

/// Per endpoint of the pool: its newest sync-to-latest operation offered `revision`
/// (cancelled ones are not counted: a freed slot or an admin's cancel is not a result).
pub fn outcomes(
    conn: &Connection,
    pool_id: i64,
    revision: u64,
) -> Result<HashMap<i64, SyncOutcome>, ApiErr> {
    let rows = conn
        .prepare_cached(
            "SELECT endpoint_id, state, result FROM operations
             WHERE pool_id = ?1 AND target_revision = ?2 AND kind = 'sync-to-latest'
               AND state != 'cancelled'
             ORDER BY id",
        )?
        .query_map(params![pool_id, revision as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<super::sql::Result<Vec<_>>>()?;
    let mut out = HashMap::new();
    for (endpoint, state, result) in rows {
        let outcome = match state.as_str() {
            "pending" | "in_progress" => SyncOutcome::Running,
            "completed" => {
                let failures = result
                    .as_deref()
                    .and_then(|r| serde_json::from_str::<crate::proto::OperationResult>(r).ok())
                    .is_none_or(|r| !r.failures.is_empty());
                if failures {
                    SyncOutcome::Failed
                } else {
                    SyncOutcome::Verified
                }
            }
            _ => SyncOutcome::Failed,
        };
        // Ordered by id: the newest wins.
        out.insert(endpoint, outcome);
    }
    Ok(out)
}

/// Whether the endpoint already had a sync offered `revision` (any outcome but cancelled):
/// the coordinator starts one automatic sync per endpoint and revision, never a retry loop.
pub fn attempted(conn: &Connection, endpoint_id: i64, revision: u64) -> Result<bool, ApiErr> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM operations WHERE endpoint_id = ?1 AND target_revision = ?2
               AND kind = 'sync-to-latest' AND state != 'cancelled' LIMIT 1",
        )?
        .query_row(params![endpoint_id, revision as i64], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Syncs pending or in progress among `endpoints` (a ring): its slots in use.
pub fn slots_used(conn: &Connection, endpoints: &[i64]) -> Result<u64, ApiErr> {
    let ids = json(&endpoints)?;
    let sql = match conn.dialect() {
        Dialect::Sqlite => {
            "SELECT count(*) FROM operations
             WHERE state IN ('pending', 'in_progress') AND kind = 'sync-to-latest'
               AND endpoint_id IN (SELECT value FROM json_each(?1))"
        }
        Dialect::Postgres => {
            "SELECT count(*) FROM operations
             WHERE state IN ('pending', 'in_progress') AND kind = 'sync-to-latest'
               AND endpoint_id IN (SELECT value::bigint FROM json_array_elements_text(?1::text::json))"
        }
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_row([ids], |r| r.get::<_, i64>(0))? as u64)
}

/// Automatic syncs pending or in progress in the pool, with their endpoint and its last
/// contact.
pub fn running_auto(
    conn: &Connection,
    pool_id: i64,
) -> Result<Vec<(i64, i64, Option<i64>)>, ApiErr> {
    Ok(conn
        .prepare_cached(
            "SELECT o.id, o.endpoint_id, e.last_seen FROM operations o
             JOIN endpoints e ON e.id = o.endpoint_id
             WHERE o.pool_id = ?1 AND o.auto = 1 AND o.state IN ('pending', 'in_progress')",
        )?
        .query_map([pool_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<super::sql::Result<Vec<_>>>()?)
}

/// Marks the operation's offered revision and whether the coordinator started it.
pub fn tag_operation(
    conn: &Connection,
    op_id: i64,
    revision: Option<u64>,
    auto: bool,
) -> Result<(), ApiErr> {
    conn.prepare_cached("UPDATE operations SET target_revision = ?2, auto = ?3 WHERE id = ?1")?
        .execute(params![op_id, revision.map(|r| r as i64), auto])?;
    Ok(())
}
