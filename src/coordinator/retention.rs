//! Retention: a periodic task deleting finished operations and audit entries older than
//! `retention_days`, target revisions beyond each pool's newest `max_target_history`, and
//! then every snapshot that nothing references any more.
//!
//! Architecture Invariant: a snapshot referenced by a kept target revision, by an endpoint's
//! current state or by a kept operation is never deleted (the query excludes them, and the
//! foreign keys of `targets` and `endpoints` would refuse it anyway). Each pool's current
//! target revision is always kept.
//!
//! Work is done in small batches, each its own write transaction, so reports are never held
//! behind one long cleanup.

use rusqlite::{Connection, params};

use super::AppState;
use super::db::{self, now};
use super::error::ApiErr;
use super::settings::Settings;
use crate::snapshot::SnapshotHash;

/// Rows deleted per write transaction.
const BATCH: i64 = 500;

/// What one retention run deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub operations: u64,
    pub audit: u64,
    pub targets: u64,
    pub snapshots: Vec<SnapshotHash>,
}

/// One batch of each kind; returns what it deleted (all zero: nothing left to do).
fn batch(tx: &Connection, settings: &Settings, at: i64) -> Result<Removed, ApiErr> {
    let mut out = Removed::default();
    if settings.retention_days > 0 {
        let cutoff = at - (settings.retention_days as i64).saturating_mul(86_400);
        out.operations = tx
            .prepare_cached(
                "DELETE FROM operations WHERE id IN (
                    SELECT id FROM operations
                    WHERE state IN ('completed', 'failed', 'cancelled') AND updated_at < ?1
                    LIMIT ?2)",
            )?
            .execute(params![cutoff, BATCH])? as u64;
        out.audit = tx
            .prepare_cached(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, BATCH])? as u64;
    }
    if settings.max_target_history > 0 {
        // Keeps revisions newer than (newest - max_target_history): at least the current one.
        out.targets = tx
            .prepare_cached(
                "DELETE FROM targets WHERE rowid IN (
                    SELECT t.rowid FROM targets t
                    WHERE t.revision <= (SELECT max(revision) FROM targets m WHERE m.pool_id = t.pool_id) - ?1
                    LIMIT ?2)",
            )?
            .execute(params![settings.max_target_history as i64, BATCH])? as u64;
    }
    let mut stmt = tx.prepare_cached(
        "DELETE FROM snapshots WHERE hash IN (
            SELECT s.hash FROM snapshots s
            WHERE NOT EXISTS (SELECT 1 FROM targets t WHERE t.snapshot = s.hash)
              AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.current = s.hash)
              AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.to_snapshot = s.hash)
            LIMIT ?1)
         RETURNING hash",
    )?;
    let hashes = stmt
        .query_map([BATCH], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for h in hashes {
        out.snapshots.push(db::parse_hash(&h)?);
    }
    Ok(out)
}

impl AppState {
    /// Runs retention until nothing is left to delete, as of `at` (Unix seconds).
    pub(crate) async fn retention_once(&self, at: i64) -> Result<Removed, ApiErr> {
        let mut total = Removed::default();
        loop {
            let settings = self.settings.clone();
            let r = self.db.write(move |tx| batch(tx, &settings, at)).await?;
            for h in &r.snapshots {
                self.texts.remove(h);
                self.snapshots.remove(h);
            }
            let done =
                r.operations == 0 && r.audit == 0 && r.targets == 0 && r.snapshots.is_empty();
            total.operations += r.operations;
            total.audit += r.audit;
            total.targets += r.targets;
            total.snapshots.extend(r.snapshots);
            if done {
                return Ok(total);
            }
            // Let queued writers in between batches.
            tokio::task::yield_now().await;
        }
    }

    /// Runs retention every `retention_interval_secs` until shutdown.
    pub(crate) async fn run_retention(self) {
        let period = std::time::Duration::from_secs(self.settings.retention_interval_secs.max(1));
        let mut tick = tokio::time::interval(period);
        // A missed run is not made up: the next one deletes the same rows.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = super::stopped(&mut shutdown) => return,
            }
            match self.retention_once(now()).await {
                Ok(r) if r != Removed::default() => tracing::info!(
                    operations = r.operations,
                    audit = r.audit,
                    targets = r.targets,
                    snapshots = r.snapshots.len(),
                    "retention deleted old entries"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention run failed; retrying next period"),
            }
        }
    }
}
