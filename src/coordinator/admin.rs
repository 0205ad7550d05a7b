//! Pool and endpoint administration, registration, and the reads behind the REST handlers,
//! the sockets and the token extractors: every unit of work those call lives here, so the
//! HTTP layer (`api`, `ws`, `auth`) holds no SQL (issue #15).
//!
//! Each write is one unit of work ([`super::db::Db::write`]) with its audit entry. On
//! PostgreSQL a unit may run more than once (a serialization conflict reruns it), so the
//! closures have no effect outside the database: events, kicks and
//! [`super::Inner::pool_membership_changed`] are the callers' job, after the change
//! committed.

use std::net::IpAddr;

use super::sql::{OptionalExtension, params};

use super::AppState;
use super::api::no_pool;
use super::auth::{Caller, EndpointAuth, new_token, token_hash};
use super::db;
use super::error::ApiErr;
use super::service::Actor;
use crate::proto::{
    AuditEntry, CreatePool, Operation, PROTOCOL_VERSION, Pool, PoolPolicy, RegisterRequest,
    RegisterResponse, ServerMsg, StateChange, TargetInfo, UpdateEndpoint, UpdatePool,
};
use crate::snapshot::SnapshotHash;

/// A UNIQUE violation becomes `409 name_taken` with `message`; other errors stay.
fn name_taken(e: super::sql::Error, message: impl FnOnce() -> String) -> ApiErr {
    if e.is_unique_violation() {
        return ApiErr::conflict("name_taken", message());
    }
    e.into()
}

fn pool_name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a pool named {name:?} already exists: choose another name")
}

fn no_endpoint(id: i64) -> ApiErr {
    ApiErr::not_found(format!("no endpoint {id}"))
}

/// Where an endpoint was and is after [`AppState::update_endpoint`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointMove {
    pub old_pool: i64,
    pub new_pool: i64,
}

impl EndpointMove {
    pub(crate) fn moved(self) -> bool {
        self.old_pool != self.new_pool
    }
}

/// An endpoint's pool and name, or 404.
fn endpoint_of(tx: &super::sql::Connection, id: i64) -> Result<(i64, String), ApiErr> {
    tx.query_row(
        "SELECT pool_id, name FROM endpoints WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or_else(|| no_endpoint(id))
}

impl AppState {
    // -----------------------------------------------------------------------------------------
    // Health and metrics

    /// One trivial statement: the database answers.
    pub(crate) async fn ping_database(&self) -> Result<(), ApiErr> {
        self.db
            .read(|conn| {
                conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
                Ok(())
            })
            .await
    }

    /// Rollouts halted and not resumed (from the database: true after a restart too).
    pub(crate) async fn halted_rollouts(&self) -> Result<u64, ApiErr> {
        self.db.read(super::rollout_db::halted_count).await
    }

    // -----------------------------------------------------------------------------------------
    // Pools

    /// A new pool (name and policy already checked).
    pub(crate) async fn create_pool(
        &self,
        req: CreatePool,
        peer: Option<IpAddr>,
    ) -> Result<Pool, ApiErr> {
        let t = self.clock.now();
        self.db
            .write(move |tx| {
                let policy = serde_json::to_string(&req.policy)
                    .map_err(|e| ApiErr::internal(e.to_string()))?;
                let id: i64 = tx
                    .query_row(
                        "INSERT INTO pools (name, policy, created_at) VALUES (?1, ?2, ?3) RETURNING id",
                        params![req.name, policy, t],
                        |r| r.get(0),
                    )
                    .map_err(|e| name_taken(e, pool_name_taken(&req.name)))?;
                db::audit(
                    tx,
                    "admin",
                    "pool.create",
                    Some(format!("pool:{id}")),
                    peer,
                    Some(req.name.clone()),
                )?;
                db::pool(tx, id)?.ok_or_else(|| ApiErr::internal("new pool vanished"))
            })
            .await
    }

    /// Renames a pool and/or replaces its policy (both already checked). Returns the pool
    /// and its new policy when that differs from the old one.
    pub(crate) async fn update_pool(
        &self,
        id: i64,
        req: UpdatePool,
        peer: Option<IpAddr>,
    ) -> Result<(Pool, Option<PoolPolicy>), ApiErr> {
        let new_policy = req.policy.clone();
        let (pool, policy_changed) = self
            .db
            .write(move |tx| {
                let old = db::pool(tx, id)?.ok_or_else(|| no_pool(id))?;
                if let Some(name) = &req.name {
                    tx.execute(
                        "UPDATE pools SET name = ?1 WHERE id = ?2",
                        params![name, id],
                    )
                    .map_err(|e| name_taken(e, pool_name_taken(name)))?;
                }
                let mut policy_changed = false;
                if let Some(policy) = &req.policy {
                    policy_changed = *policy != old.policy;
                    let text = serde_json::to_string(policy)
                        .map_err(|e| ApiErr::internal(e.to_string()))?;
                    tx.execute(
                        "UPDATE pools SET policy = ?1 WHERE id = ?2",
                        params![text, id],
                    )?;
                }
                let mut what = Vec::new();
                if let Some(name) = &req.name {
                    what.push(format!("name={name}"));
                }
                if policy_changed {
                    what.push("policy".to_owned());
                }
                db::audit(
                    tx,
                    "admin",
                    "pool.update",
                    Some(format!("pool:{id}")),
                    peer,
                    Some(what.join(" ")),
                )?;
                Ok((
                    db::pool(tx, id)?.ok_or_else(|| no_pool(id))?,
                    policy_changed,
                ))
            })
            .await?;
        Ok((pool, new_policy.filter(|_| policy_changed)))
    }

    /// Deletes an empty pool (`409 pool_not_empty` otherwise).
    pub(crate) async fn delete_pool(&self, id: i64, peer: Option<IpAddr>) -> Result<(), ApiErr> {
        self.db
            .write(move |tx| {
                let pool = db::pool(tx, id)?.ok_or_else(|| no_pool(id))?;
                if pool.endpoint_count > 0 {
                    return Err(ApiErr::conflict(
                        "pool_not_empty",
                        format!(
                            "pool {id} still has {} endpoints: remove them first (DELETE /api/v1/endpoints/{{id}})",
                            pool.endpoint_count
                        ),
                    ));
                }
                tx.execute("DELETE FROM pools WHERE id = ?1", [id])?;
                db::audit(
                    tx,
                    "admin",
                    "pool.delete",
                    Some(format!("pool:{id}")),
                    peer,
                    Some(pool.name),
                )?;
                Ok(())
            })
            .await
    }

    /// A pool's target revisions, newest first.
    pub(crate) async fn pool_targets(&self, id: i64) -> Result<Vec<TargetInfo>, ApiErr> {
        self.db
            .read(move |conn| {
                if db::policy_of(conn, id)?.is_none() {
                    return Err(no_pool(id));
                }
                db::targets(conn, id)
            })
            .await
    }

    /// Whether pool `id` exists.
    pub(crate) async fn pool_exists(&self, id: i64) -> Result<bool, ApiErr> {
        self.db
            .read(move |conn| Ok(db::policy_of(conn, id)?.is_some()))
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Endpoints

    /// Renames an endpoint and/or moves it to another pool (the name already checked). A
    /// move is refused while an operation is active, and drops the endpoint's hold.
    pub(crate) async fn update_endpoint(
        &self,
        id: i64,
        req: UpdateEndpoint,
        peer: Option<IpAddr>,
    ) -> Result<EndpointMove, ApiErr> {
        self.db
            .write(move |tx| {
                let (old_pool, old_name) = endpoint_of(tx, id)?;
                let new_pool = req.pool_id.unwrap_or(old_pool);
                let name = req.name.clone().unwrap_or(old_name);
                if new_pool != old_pool {
                    if db::policy_of(tx, new_pool)?.is_none() {
                        return Err(no_pool(new_pool));
                    }
                    if let Some(active) = db::active_operation(tx, id)? {
                        return Err(ApiErr::conflict(
                            "operation_active",
                            format!(
                                "endpoint {id} has operation {} active: wait for it or cancel it before moving the endpoint",
                                active.id
                            ),
                        )
                        .with_detail(&active));
                    }
                }
                tx.execute(
                    "UPDATE endpoints SET pool_id = ?1, name = ?2 WHERE id = ?3",
                    params![new_pool, name, id],
                )
                .map_err(|e| {
                    name_taken(e, || {
                        format!("pool {new_pool} already has an endpoint named {name:?}: choose another name")
                    })
                })?;
                if new_pool != old_pool {
                    // A hold keeps a revision of the old pool: it means nothing in the new one.
                    super::rollout_db::clear_hold(tx, id)?;
                }
                db::audit(
                    tx,
                    "admin",
                    "endpoint.update",
                    Some(format!("endpoint:{id}")),
                    peer,
                    Some(format!("name={name} pool:{old_pool} -> pool:{new_pool}")),
                )?;
                Ok(EndpointMove { old_pool, new_pool })
            })
            .await
    }

    /// Deletes an endpoint (its operations and state changes go with it).
    pub(crate) async fn delete_endpoint(
        &self,
        id: i64,
        peer: Option<IpAddr>,
    ) -> Result<(), ApiErr> {
        self.db
            .write(move |tx| {
                let row = endpoint_of(tx, id)?;
                tx.execute("DELETE FROM endpoints WHERE id = ?1", [id])?;
                db::audit(
                    tx,
                    "admin",
                    "endpoint.delete",
                    Some(format!("endpoint:{id}")),
                    peer,
                    Some(row.1),
                )?;
                Ok(())
            })
            .await
    }

    /// Revokes an endpoint's token: the endpoint stays, but must register again to act.
    pub(crate) async fn revoke_endpoint(
        &self,
        id: i64,
        peer: Option<IpAddr>,
    ) -> Result<(), ApiErr> {
        self.db
            .write(move |tx| {
                endpoint_of(tx, id)?;
                tx.execute("UPDATE endpoints SET token_hash = NULL WHERE id = ?1", [id])?;
                db::audit(
                    tx,
                    "admin",
                    "endpoint.revoke",
                    Some(format!("endpoint:{id}")),
                    peer,
                    None,
                )?;
                Ok(())
            })
            .await
    }

    /// The endpoint holding token `token` (unrevoked); `None` when there is none.
    pub(crate) async fn endpoint_by_token(
        &self,
        token: &str,
    ) -> Result<Option<EndpointAuth>, ApiErr> {
        let hash = token_hash(token);
        self.db
            .read(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT id, pool_id, name FROM endpoints WHERE token_hash = ?1",
                    )?
                    .query_row([hash], |r| {
                        Ok(EndpointAuth {
                            id: r.get(0)?,
                            pool_id: r.get(1)?,
                            name: r.get(2)?,
                        })
                    })
                    .optional()?)
            })
            .await
    }

    /// What an endpoint socket is told after `hello`: the target it is offered, the state the
    /// coordinator knows, the policy and the pool's size (`pool_size` when the caller has a
    /// fresh count, counted here otherwise).
    pub(crate) async fn welcome(
        &self,
        id: i64,
        pool_id: i64,
        pool_size: Option<u64>,
    ) -> Result<ServerMsg, ApiErr> {
        let now = self.clock.now();
        self.db
            .read(move |conn| {
                // The target this endpoint is offered (the pool's, without rings).
                let offer = super::rollout_run::offer_in(conn, id, pool_id, now)?;
                let known: Option<String> =
                    conn.query_row("SELECT current FROM endpoints WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })?;
                Ok(ServerMsg::Welcome {
                    protocol: PROTOCOL_VERSION,
                    endpoint_id: id,
                    pool_id,
                    target: offer.target,
                    rollout: offer.rollout,
                    known_state: known.as_deref().map(db::parse_hash).transpose()?,
                    policy: db::policy_of(conn, pool_id)?,
                    pool_endpoints: match pool_size {
                        Some(n) => Some(n),
                        None => Some(
                            conn.query_row(
                                "SELECT COUNT(*) FROM endpoints WHERE pool_id = ?1",
                                [pool_id],
                                |r| r.get::<_, i64>(0),
                            )?
                            .unsigned_abs(),
                        ),
                    },
                })
            })
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Registration

    /// Registers a new endpoint with a join token (the name already checked): always a new
    /// endpoint and token, the name made unique in the pool.
    pub(crate) async fn register(
        &self,
        req: RegisterRequest,
        peer: Option<IpAddr>,
    ) -> Result<RegisterResponse, ApiErr> {
        let join_hash = token_hash(&req.join_token);
        let token = new_token("ppe_")?;
        let endpoint_hash = token_hash(&token);
        let t = self.clock.now();
        self.db
            .write(move |tx| {
                let row: Option<(i64, i64, i64, Option<i64>, i64)> = tx
                    .query_row(
                        "SELECT id, pool_id, expires_at, max_uses, uses FROM join_tokens WHERE token_hash = ?1",
                        [&join_hash],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                    )
                    .optional()?;
                let Some((jt_id, pool_id, expires_at, max_uses, uses)) = row else {
                    return Err(ApiErr::unauthorized(
                        "unknown join token: ask the coordinator's admin for a join token of the pool",
                    ));
                };
                if expires_at <= t {
                    return Err(ApiErr::unauthorized(
                        "this join token has expired: ask the admin for a new one",
                    ));
                }
                if max_uses.is_some_and(|m| uses >= m) {
                    return Err(ApiErr::unauthorized(
                        "this join token is used up: ask the admin for a new one",
                    ));
                }
                tx.execute(
                    "UPDATE join_tokens SET uses = uses + 1 WHERE id = ?1",
                    [jt_id],
                )?;
                // A new endpoint every time: the name is made unique, never matched to an
                // existing endpoint.
                let mut name = req.name.clone();
                let mut n = 1;
                loop {
                    let taken: bool = tx
                        .prepare_cached(
                            "SELECT EXISTS (SELECT 1 FROM endpoints WHERE pool_id = ?1 AND name = ?2)",
                        )?
                        .query_row(params![pool_id, name], |r| r.get(0))?;
                    if !taken {
                        break;
                    }
                    n += 1;
                    let suffix = format!("-{n}");
                    let base: String = req.name.chars().take(64 - suffix.len()).collect();
                    name = format!("{base}{suffix}");
                }
                let id: i64 = tx.query_row(
                    "INSERT INTO endpoints (pool_id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                     RETURNING id",
                    params![pool_id, name, endpoint_hash, t],
                    |r| r.get(0),
                )?;
                let pool_name: String =
                    tx.query_row("SELECT name FROM pools WHERE id = ?1", [pool_id], |r| {
                        r.get(0)
                    })?;
                db::audit(
                    tx,
                    &Actor::Registration.to_string(),
                    "endpoint.register",
                    Some(format!("endpoint:{id}")),
                    peer,
                    Some(format!("{name} in pool:{pool_id} with join token {jt_id}")),
                )?;
                Ok(RegisterResponse {
                    endpoint_id: id,
                    endpoint_token: token.clone(),
                    name,
                    pool_id,
                    pool_name,
                })
            })
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Audit, state changes, operations

    /// A keyset page of the whole audit log, newest first.
    pub(crate) async fn audit_entries(
        &self,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, ApiErr> {
        self.db
            .read(move |conn| db::audit_page(conn, cursor, limit))
            .await
    }

    /// A keyset page of an endpoint's state changes, newest first.
    pub(crate) async fn endpoint_changes(
        &self,
        id: i64,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Vec<StateChange>, ApiErr> {
        self.db
            .read(move |conn| {
                let exists: Option<i64> = conn
                    .prepare_cached("SELECT id FROM endpoints WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))
                    .optional()?;
                if exists.is_none() {
                    return Err(no_endpoint(id));
                }
                db::state_changes(conn, id, cursor, limit)
            })
            .await
    }

    /// One operation, as `caller` may see it: an endpoint only its own.
    pub(crate) async fn operation_for(
        &self,
        caller: &Caller,
        id: i64,
    ) -> Result<Operation, ApiErr> {
        let op = self
            .db
            .read(move |conn| db::operation(conn, id))
            .await?
            .ok_or_else(|| ApiErr::not_found(format!("no operation {id}")))?;
        if let Caller::Endpoint(ep) = caller
            && ep.id != op.endpoint_id
        {
            return Err(ApiErr::forbidden(format!(
                "operation {id} belongs to another endpoint"
            )));
        }
        Ok(op)
    }

    // -----------------------------------------------------------------------------------------
    // Manifests and snapshots (either token)

    /// A target revision's manifest. An endpoint may read its own pool's; an admin any.
    pub(crate) async fn manifest_for(
        &self,
        caller: &Caller,
        pool_id: i64,
        revision: u64,
    ) -> Result<crate::manifest::Manifest, ApiErr> {
        if let Caller::Endpoint(ep) = caller
            && ep.pool_id != pool_id
        {
            return Err(ApiErr::not_found(format!(
                "pool {pool_id} is not this endpoint's pool"
            )));
        }
        let body = self
            .db
            .read(move |conn| {
                db::manifest_body(conn, pool_id, revision)?.ok_or_else(|| {
                    ApiErr::not_found(format!(
                        "pool {pool_id} has no manifest for revision {revision}"
                    ))
                })
            })
            .await?;
        super::service::decode_manifest(&body)
    }

    /// A snapshot's canonical text. An endpoint may read its own current state and any
    /// target revision of its pool; an admin any snapshot.
    pub(crate) async fn snapshot_for(
        &self,
        caller: Caller,
        hash: SnapshotHash,
    ) -> Result<String, ApiErr> {
        self.db
            .read(move |conn| {
                if let Caller::Endpoint(ep) = &caller {
                    let allowed: bool = conn.query_row(
                        "SELECT EXISTS (SELECT 1 FROM endpoints WHERE id = ?1 AND current = ?2)
                             OR EXISTS (SELECT 1 FROM targets WHERE pool_id = ?3 AND snapshot = ?2)",
                        params![ep.id, hash.to_hex(), ep.pool_id],
                        |r| r.get(0),
                    )?;
                    if !allowed {
                        return Err(ApiErr::not_found(format!(
                            "snapshot {hash} is neither this endpoint's state nor a target of its pool"
                        )));
                    }
                }
                db::snapshot_body(conn, &hash)?
                    .ok_or_else(|| ApiErr::not_found(format!("no snapshot {hash}")))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    /// Issue #15: the HTTP layer holds no SQL and opens no unit of work; it calls the
    /// functions above (or `service`, `tokens`, `rollout_run`, `overview`).
    #[test]
    fn http_handlers_hold_no_sql() {
        let files = [
            ("api.rs", include_str!("api.rs")),
            ("ws.rs", include_str!("ws.rs")),
            ("auth.rs", include_str!("auth.rs")),
        ];
        let forbidden = [
            "\"SELECT ",
            "\"INSERT ",
            "\"UPDATE ",
            "DELETE FROM",
            "\"WITH ",
            "state.db",
            ".db\n",
            ".write(",
            ".read(",
            ".execute(",
            "query_row",
            "query_map",
            "prepare_cached",
            "params!",
            "sql::",
            "rusqlite",
            "tokio_postgres",
        ];
        for (file, text) in files {
            for pattern in forbidden {
                assert!(
                    !text.contains(pattern),
                    "{file} contains {pattern:?}: move the SQL into a service function (admin.rs)"
                );
            }
        }
    }
}
