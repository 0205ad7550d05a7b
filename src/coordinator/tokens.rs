//! Join tokens (create, list, revoke) and the pool list: the admin actions and reads that
//! both the REST API and the dashboard call, so their rules live in one place.

use std::net::IpAddr;

use super::sql::{OptionalExtension, params};

use super::AppState;
use super::api::no_pool;
use super::auth::{new_token, token_hash};
use super::db::{self, now};
use super::error::ApiErr;
use crate::proto::{CreateJoinToken, JoinToken, JoinTokenInfo, Pool};

/// Join tokens last a week unless asked otherwise, a year and a day at most.
pub(crate) const DEFAULT_JOIN_TTL: u64 = 7 * 24 * 3600;
const MAX_JOIN_TTL: u64 = 366 * 24 * 3600;

impl AppState {
    /// Every pool, by id.
    pub(crate) async fn pools(&self) -> Result<Vec<Pool>, ApiErr> {
        self.db
            .read(|conn| {
                let ids = conn
                    .prepare_cached("SELECT id FROM pools ORDER BY id")?
                    .query_map([], |r| r.get::<_, i64>(0))?
                    .collect::<super::sql::Result<Vec<_>>>()?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.extend(db::pool(conn, id)?);
                }
                Ok(out)
            })
            .await
    }

    /// One pool.
    pub(crate) async fn pool(&self, id: i64) -> Result<Pool, ApiErr> {
        self.db
            .read(move |conn| db::pool(conn, id)?.ok_or_else(|| no_pool(id)))
            .await
    }

    /// A new join token for `pool_id`; the secret is in the answer only.
    pub(crate) async fn create_join_token(
        &self,
        pool_id: i64,
        req: CreateJoinToken,
        peer: Option<IpAddr>,
    ) -> Result<JoinToken, ApiErr> {
        let ttl = req.expires_in.unwrap_or(DEFAULT_JOIN_TTL);
        if ttl == 0 || ttl > MAX_JOIN_TTL {
            return Err(ApiErr::invalid(format!(
                "expires_in must be 1 to {MAX_JOIN_TTL} seconds"
            )));
        }
        if req.max_uses == Some(0) {
            return Err(ApiErr::invalid(
                "max_uses must be at least 1 (or absent for unlimited)",
            ));
        }
        let token = new_token("ppj_")?;
        let hash = token_hash(&token);
        let expires_at = now() + ttl as i64;
        let max_uses = req.max_uses;
        let id = self
            .db
            .write(move |tx| {
                if db::policy_of(tx, pool_id)?.is_none() {
                    return Err(no_pool(pool_id));
                }
                let id: i64 = tx.query_row(
                    "INSERT INTO join_tokens (pool_id, token_hash, expires_at, max_uses, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                    params![pool_id, hash, expires_at, max_uses, now()],
                    |r| r.get(0),
                )?;
                db::audit(
                    tx,
                    "admin",
                    "join_token.create",
                    Some(format!("pool:{pool_id}")),
                    peer,
                    Some(format!("join token {id}")),
                )?;
                Ok(id)
            })
            .await?;
        Ok(JoinToken {
            id,
            pool_id,
            token,
            expires_at,
            max_uses,
        })
    }

    /// A pool's join tokens (no secrets).
    pub(crate) async fn join_tokens(&self, pool_id: i64) -> Result<Vec<JoinTokenInfo>, ApiErr> {
        self.db
            .read(move |conn| {
                if db::policy_of(conn, pool_id)?.is_none() {
                    return Err(no_pool(pool_id));
                }
                let mut stmt = conn.prepare_cached(
                    "SELECT id, pool_id, created_at, expires_at, max_uses, uses FROM join_tokens
                     WHERE pool_id = ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map([pool_id], |r| {
                    Ok(JoinTokenInfo {
                        id: r.get(0)?,
                        pool_id: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        max_uses: r.get(4)?,
                        uses: r.get::<_, i64>(5)? as u64,
                    })
                })?;
                Ok(rows.collect::<super::sql::Result<Vec<_>>>()?)
            })
            .await
    }

    /// Revokes a join token: registration with it fails from now on; endpoints that
    /// registered with it keep their own tokens. Returns its pool.
    pub(crate) async fn revoke_join_token(
        &self,
        id: i64,
        peer: Option<IpAddr>,
    ) -> Result<i64, ApiErr> {
        self.db
            .write(move |tx| {
                let pool_id: i64 = tx
                    .query_row("SELECT pool_id FROM join_tokens WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .optional()?
                    .ok_or_else(|| {
                        ApiErr::not_found(format!(
                            "no join token {id}: list them with GET /api/v1/pools/{{id}}/join-tokens"
                        ))
                    })?;
                tx.execute("DELETE FROM join_tokens WHERE id = ?1", [id])?;
                db::audit(
                    tx,
                    "admin",
                    "join_token.revoke",
                    Some(format!("pool:{pool_id}")),
                    peer,
                    Some(format!("join token {id}")),
                )?;
                Ok(pool_id)
            })
            .await
    }
}
