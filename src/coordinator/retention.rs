//! Retention: a periodic task deleting finished operations, audit entries and endpoints'
//! recorded state changes older than `retention_days`, target revisions beyond each pool's newest `max_target_history`, and
//! then every snapshot that nothing references any more.
//!
//! Architecture Invariant: a snapshot referenced by a kept target revision, by an endpoint's
//! current state, by a kept operation or as the base of another stored snapshot (stored as a
//! delta) is never deleted (the query excludes them, and the
//! foreign keys of `targets` and `endpoints` would refuse it anyway). Each pool's current
//! target revision is always kept.
//!
//! Work is done in small batches, each its own write transaction, so reports are never held
//! behind one long cleanup.

use super::sql::{Connection, params};

use super::AppState;
use super::db;
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
    /// Recorded state changes of endpoints (`endpoint_changes`).
    pub changes: u64,
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
        out.changes = tx
            .prepare_cached(
                "DELETE FROM endpoint_changes WHERE id IN (
                    SELECT id FROM endpoint_changes WHERE at < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, BATCH])? as u64;
    }
    if settings.max_target_history > 0 {
        // Keeps revisions newer than (newest - max_target_history): at least the current one.
        out.targets = tx
            .prepare_cached(
                "DELETE FROM targets WHERE (pool_id, revision) IN (
                    SELECT t.pool_id, t.revision FROM targets t
                    WHERE t.revision <= (SELECT max(revision) FROM targets m WHERE m.pool_id = t.pool_id) - ?1
                    LIMIT ?2)",
            )?
            .execute(params![settings.max_target_history as i64, BATCH])? as u64;
        // A manifest lives exactly as long as its revision.
        tx.prepare_cached(
            "DELETE FROM target_manifests WHERE NOT EXISTS (
                SELECT 1 FROM targets t
                WHERE t.pool_id = target_manifests.pool_id AND t.revision = target_manifests.revision)",
        )?
        .execute([])?;
        super::rollout_db::drop_orphans(tx)?;
    }
    let mut stmt = tx.prepare_cached(
        "DELETE FROM snapshots WHERE hash IN (
            SELECT s.hash FROM snapshots s
            WHERE NOT EXISTS (SELECT 1 FROM targets t WHERE t.snapshot = s.hash)
              AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.current = s.hash)
              AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.to_snapshot = s.hash)
              AND NOT EXISTS (SELECT 1 FROM endpoint_states h WHERE h.snapshot = s.hash)
              AND NOT EXISTS (SELECT 1 FROM snapshots d WHERE d.base = s.hash)
            LIMIT ?1)
         RETURNING hash",
    )?;
    let hashes = stmt
        .query_map([BATCH], |r| r.get::<_, String>(0))?
        .collect::<crate::coordinator::sql::Result<Vec<_>>>()?;
    if tx.dialect() == super::sql::Dialect::Postgres {
        // Events between replicas too large for NOTIFY: read within moments of being sent.
        tx.prepare_cached("DELETE FROM bus_events WHERE at < ?1")?
            .execute([db::now() - 3600])?;
    }
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
            let done = r.operations == 0
                && r.audit == 0
                && r.changes == 0
                && r.targets == 0
                && r.snapshots.is_empty();
            total.operations += r.operations;
            total.audit += r.audit;
            total.changes += r.changes;
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
            if !self.leads(super::cluster::Job::Retention).await {
                self.pool_repo.recount().await;
                continue;
            }
            match self.retention_once(self.clock.now()).await {
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
            match self.pool_repo.collect_garbage(&self).await {
                Ok(0) => {}
                Ok(freed) => tracing::info!(
                    freed,
                    "pool repository: dropped files no kept revision refers to"
                ),
                Err(e) => {
                    tracing::warn!(error = %e.message, "pool repository clean-up failed; retrying next period")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::db::Db;

    fn h(n: u8) -> String {
        hex::encode([n; 32])
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn deletes_old_rows_and_only_unreferenced_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.db")).unwrap();
        let t = 1_000_000_000i64;
        let day = 86_400;
        db.write(move |tx| {
            for n in 1..=11u8 {
                tx.execute(
                    "INSERT INTO snapshots (hash, body, package_count, created_at) VALUES (?1, 'x', 1, 0)",
                    [h(n)],
                )?;
            }
            tx.execute_batch(&format!(
                "INSERT INTO pools (id, name, policy, created_at) VALUES (1, 'p', '{{}}', 0), (2, 'q', '{{}}', 0);
                 -- endpoint 1 is at snapshot 1, which only target revision 1 (to go) also names
                 INSERT INTO endpoints (id, pool_id, name, current, created_at) VALUES (1, 1, 'e', '{h1}', 0);
                 INSERT INTO targets (pool_id, revision, snapshot, set_by, set_at) VALUES
                   (1, 1, '{h1}', 'a', 0), (1, 2, '{h2}', 'a', 0), (1, 3, '{h3}', 'a', 0), (1, 4, '{h4}', 'a', 0),
                   (2, 1, '{h5}', 'a', 0);
                 -- an old finished operation (to go, and with it snapshot 6's last reference),
                 -- an old but still pending one (kept, with snapshot 7), a recent finished one
                 INSERT INTO operations (id, endpoint_id, pool_id, kind, state, to_snapshot, created_at, updated_at) VALUES
                   (1, 1, 1, 'revert', 'completed', '{h6}', 0, {old}),
                   (2, 1, 1, 'revert', 'pending', '{h7}', 0, {old}),
                   (3, 1, 1, 'sync-to-latest', 'failed', NULL, 0, {recent});
                 -- snapshot 10 is stored as a delta on 9 and is endpoint 2's state: 9 stays;
                 -- 11 is a delta on 8 that nothing references: both go
                 UPDATE snapshots SET base = '{h9}', delta = '{{}}', depth = 1 WHERE hash = '{h10}';
                 UPDATE snapshots SET base = '{h8}', delta = '{{}}', depth = 1 WHERE hash = '{h11}';
                 INSERT INTO endpoints (id, pool_id, name, current, created_at) VALUES (2, 2, 'f', '{h10}', 0);
                 INSERT INTO audit (at, actor, action) VALUES ({old}, 'admin', 'old'), ({recent}, 'admin', 'new');",
                h1 = h(1), h2 = h(2), h3 = h(3), h4 = h(4), h5 = h(5), h6 = h(6), h7 = h(7),
                h8 = h(8), h9 = h(9), h10 = h(10), h11 = h(11),
                old = t - 31 * day, recent = t - 29 * day,
            ))?;
            Ok(())
        })
        .await
        .unwrap();
        let settings = Settings {
            retention_days: 30,
            max_target_history: 2,
            ..Settings::default()
        };
        let mut removed = Removed::default();
        loop {
            let s = settings.clone();
            let r = db.write(move |tx| batch(tx, &s, t)).await.unwrap();
            if r == Removed::default() {
                break;
            }
            removed.operations += r.operations;
            removed.audit += r.audit;
            removed.targets += r.targets;
            removed.snapshots.extend(r.snapshots);
        }
        assert_eq!(
            (removed.operations, removed.audit, removed.targets),
            (1, 1, 2)
        );
        let mut gone: Vec<String> = removed.snapshots.iter().map(|s| s.to_hex()).collect();
        gone.sort();
        // 2: only its deleted target revision named it; 6: only the deleted operation;
        // 11: nothing did, and then 8 (only 11's base).
        assert_eq!(gone, [h(2), h(6), h(8), h(11)]);
        let left = db
            .read(|conn| {
                let mut stmt = conn.prepare("SELECT hash FROM snapshots ORDER BY hash")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<crate::coordinator::sql::Result<Vec<_>>>()?)
            })
            .await
            .unwrap();
        // 1, 10: endpoints' states; 3, 4: kept target revisions; 5: pool 2's only revision;
        // 7: a kept operation; 9: the base of 10.
        assert_eq!(left, [h(1), h(3), h(4), h(5), h(7), h(9), h(10)]);
        let (revs, ops, audit) = db
            .read(|conn| {
                let mut stmt = conn
                    .prepare("SELECT pool_id, revision FROM targets ORDER BY pool_id, revision")?;
                let revs = stmt
                    .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                    .collect::<crate::coordinator::sql::Result<Vec<_>>>()?;
                Ok((
                    revs,
                    count(conn, "SELECT count(*) FROM operations WHERE id IN (2, 3)"),
                    count(conn, "SELECT count(*) FROM audit WHERE action = 'new'"),
                ))
            })
            .await
            .unwrap();
        assert_eq!(revs, [(1, 3), (1, 4), (2, 1)], "the newest 2 per pool");
        assert_eq!(
            (ops, audit),
            (2, 1),
            "pending and recent operations, recent audit stay"
        );

        // 0 disables each kind of cleanup: nothing more goes, even with everything old.
        let keep_all = Settings {
            retention_days: 0,
            max_target_history: 0,
            ..Settings::default()
        };
        let r = db
            .write(move |tx| batch(tx, &keep_all, t + 1000 * day))
            .await
            .unwrap();
        assert_eq!(r, Removed::default());
    }
}
