//! Wire types between the coordinator and its clients (endpoint daemons, admin CLI,
//! dashboards): REST bodies under `/api/v1` and WebSocket messages.
//!
//! Architecture Invariant: only this module defines coordinator wire types. Evolution is
//! additive: a field added later carries `#[serde(default)]` and a doc line saying what older
//! peers send; a message type added later is ignored by older peers (`Unknown` variants).
//! Both sides exchange [`PROTOCOL_VERSION`] first and refuse a mismatch with a message that
//! names both versions.

use serde::{Deserialize, Serialize};

use crate::plan::{Counts, Policy};
use crate::snapshot::{Delta, Snapshot, SnapshotHash};

/// Bumped on any incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every REST path starts with this.
pub const API_PREFIX: &str = "/api/v1";

/// The body of every error response: a stable machine-readable `code` and a human `message`
/// that says what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    /// Extra data for some codes, e.g. the current target on `revision_conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// Pools and policy

/// How a pool resolves a package both sides changed (used when merging, not when syncing to
/// a target).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictStrategy {
    #[default]
    Manual,
    Newest,
    Oldest,
}

/// What an endpoint does when its pool's target changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoSyncMode {
    /// Nothing beyond showing "behind".
    Off,
    /// Tell the desktop user (tray notification).
    #[default]
    Notify,
    /// Sync on its own, inside the window when one is set.
    Apply,
}

/// A pool's policy: the planning policy plus pool-level behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolPolicy {
    /// What a sync manages: scope, ignore and protected globs, removal cap.
    pub plan: Policy,
    pub conflict_strategy: ConflictStrategy,
    pub auto_sync: AutoSyncMode,
    /// Daily window for `apply`, `HH:MM-HH:MM` in UTC (may wrap past midnight); unset means
    /// any time.
    pub auto_sync_window: Option<String>,
    /// Rings a new target goes through (none: every endpoint is offered it at once, as
    /// before). Left out when empty, so a pool without rings looks as it did to older peers.
    #[serde(skip_serializing_if = "RolloutPolicy::is_empty")]
    pub rollout: RolloutPolicy,
}

/// How a new target reaches a pool: ordered rings, each offered it only after the one before
/// soaked and passed its health gate (see `coordinator::rollout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutPolicy {
    /// In order; an endpoint no ring names belongs to the last one.
    pub rings: Vec<Ring>,
    /// A slot (an automatic sync in progress) held by an endpoint that has no connection and
    /// was not seen for this long is freed (its operation cancelled). Default 900.
    pub slot_timeout_secs: u64,
    /// Whether an endpoint may put itself on hold (its own user); admins always may.
    pub endpoint_holds: bool,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            rings: Vec::new(),
            slot_timeout_secs: 900,
            endpoint_holds: false,
        }
    }
}

impl RolloutPolicy {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One ring (wave) of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ring {
    pub name: String,
    /// Endpoint names or globs (`canary-*`).
    pub endpoints: Vec<String>,
    /// Seconds after this ring was offered the target before the next ring may be.
    pub soak_secs: u64,
    pub gate: Gate,
    /// When automatic syncs may start (none: any time).
    pub windows: Vec<Window>,
    /// IANA time zone of the windows (`Europe/Berlin`); default UTC.
    pub timezone: Option<String>,
    /// Most endpoints of this ring syncing automatically at once (none: no limit).
    pub max_concurrent: Option<u32>,
}

/// A ring's health gate: the next ring is offered only when at least `min_success`
/// endpoints and at least `min_success_percent` % of the ring's online endpoints completed a
/// verified sync to the revision, and at most `max_failures` failed (more halts the rollout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gate {
    pub min_success: u32,
    /// Default 100.
    pub min_success_percent: u8,
    pub max_failures: u32,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            min_success: 0,
            min_success_percent: 100,
            max_failures: 0,
        }
    }
}

/// A weekly maintenance window: on `days` (`mon` … `sun`, empty = every day), from `from` to
/// `to` (`HH:MM`, local time in the ring's time zone; may wrap past midnight into the next day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(default)]
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Rings are offered as their gates pass.
    Active,
    /// An admin paused it: no ring is offered and no automatic sync starts until resumed.
    Paused,
    /// Failures passed a ring's gate (or an admin halted it): later rings are not offered
    /// until an admin resumes (or reverts the target).
    Halted,
    /// A newer target (or a revert) replaced it; rings it offered keep that revision.
    Superseded,
}

/// One ring of a rollout as the coordinator sees it now (computed from stored operations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub ring: String,
    pub offered: bool,
    pub offered_at: Option<i64>,
    /// When its soak time ends (offered rings).
    pub soak_until: Option<i64>,
    pub endpoints: u64,
    pub online: u64,
    /// Verified syncs to the revision (completed, no package failure).
    pub succeeded: u64,
    pub failed: u64,
    /// Syncs pending or in progress.
    pub syncing: u64,
    /// Successes the gate needs now.
    pub required: u64,
    pub max_failures: u32,
    pub gate_holds: bool,
    /// The gate holds only because an admin resumed the rollout from a halt in this ring.
    #[serde(default)]
    pub waived: bool,
}

/// A pool's rollout of one target revision (`GET /api/v1/pools/{id}/rollout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub pool_id: i64,
    pub revision: u64,
    pub state: RolloutState,
    /// Rings offered the revision so far (at least 1).
    pub rings_offered: u32,
    pub waves: Vec<Wave>,
    /// Why it halted (failures, or an admin).
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An endpoint on hold: not offered new targets until `until` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub reason: String,
    pub until: i64,
    /// `admin` or `endpoint`.
    pub set_by: String,
    /// The revision it stays at while held.
    pub revision: Option<u64>,
}

/// `POST /api/v1/endpoints/{id}/hold` (admin) or `/endpoint/hold` (the endpoint itself, when
/// the pool allows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetHold {
    pub reason: String,
    /// Unix seconds; must be in the future.
    pub until: i64,
}

/// Where one endpoint is in its pool's rollout, and what it may get when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPosition {
    /// The pool's newest target revision.
    pub revision: u64,
    /// The revision this endpoint is offered (its target), if any.
    pub offered_revision: Option<u64>,
    /// 1-based wave (ring) of this endpoint, of `waves`.
    pub wave: u32,
    pub waves: u32,
    pub ring: String,
    pub state: Option<RolloutState>,
    /// When it may get the newest revision, when known (soak end, window start).
    pub not_before: Option<i64>,
    pub hold: Option<Hold>,
    /// One line for people, e.g. "your machine gets revision 42 in wave 2, from Saturday
    /// 02:00 UTC" or "on hold until 2026-12-20: waiting for the driver fix".
    pub message: String,
}

/// `GET /api/v1/endpoint/offer`: the target this endpoint is offered and its rollout position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub target: Option<TargetInfo>,
    pub rollout: Option<RolloutPosition>,
}

/// Test mode only (`test_clock = true`): `POST /api/v1/clock` sets or advances the
/// coordinator's clock.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockChange {
    /// Unix seconds to set the clock to.
    pub set: Option<i64>,
    /// Seconds to move it forward.
    pub advance: Option<i64>,
}

/// The coordinator's clock (`GET /api/v1/clock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockNow {
    pub now: i64,
    pub adjustable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePool {
    pub name: String,
    #[serde(default)]
    pub policy: PoolPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdatePool {
    pub name: Option<String>,
    pub policy: Option<PoolPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub id: i64,
    pub name: String,
    pub policy: PoolPolicy,
    /// `None` until some endpoint sets the first target.
    pub target: Option<TargetInfo>,
    pub endpoint_count: u64,
    pub created_at: i64,
}

// ---------------------------------------------------------------------------------------------
// Registration and tokens

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Seconds until the token expires; `None` = 7 days.
    pub expires_in: Option<u64>,
    /// How many endpoints may register with it; `None` = unlimited until it expires.
    pub max_uses: Option<u32>,
}

/// A join token as created: the secret is shown only in this response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: i64,
    pub pool_id: i64,
    pub token: String,
    pub expires_at: i64,
    pub max_uses: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub join_token: String,
    /// The name the endpoint wants (its hostname); the coordinator makes it unique in the pool.
    pub name: String,
}

/// The endpoint's own credentials: the token is shown only in this response and stored by
/// the coordinator only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub endpoint_id: i64,
    pub endpoint_token: String,
    pub name: String,
    pub pool_id: i64,
    pub pool_name: String,
}

// ---------------------------------------------------------------------------------------------
// Targets, snapshots and status

/// A pool's target revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pool_id: i64,
    /// Starts at 1 and only grows.
    pub revision: u64,
    pub snapshot: SnapshotHash,
    pub package_count: u64,
    /// The endpoint whose state this is, when set by an endpoint.
    pub set_by_endpoint: Option<i64>,
    /// Who set it: an endpoint's name or `admin`.
    pub set_by: String,
    pub set_at: i64,
    /// For reverts by an admin: the revision this one copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_from: Option<u64>,
}

/// An endpoint's report of its state: a delta against the last state the coordinator
/// acknowledged, or the full state when they disagree (or on first contact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateReport {
    Full { snapshot: Snapshot },
    Delta { delta: Delta },
}

/// Where a change of an endpoint's package state came from ("drift attribution"), as the
/// endpoint recorded it: a pacpool operation, or pacman run on the machine by someone else
/// (command lines and times from `pacman.log`). Sent with state reports; older endpoints
/// send none, and a kind this coordinator does not know reads as `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum ChangeSource {
    /// A pacpool operation on the machine: `sync` or `revert`.
    Pacpool {
        operation: String,
        /// Its id in the machine's `pacpool history`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_id: Option<i64>,
        /// The coordinator's operation id, when the coordinator asked for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested: Option<i64>,
    },
    /// pacman run on the machine outside pacpool: the transactions `pacman.log` recorded since
    /// the previous state (the newest [`MAX_PACMAN_RUNS`]; `more` counts the older ones).
    Pacman {
        runs: Vec<PacmanRun>,
        #[serde(default, skip_serializing_if = "is_zero")]
        more: usize,
    },
    /// Nothing explains it: no pacman transaction in `pacman.log` since the previous state
    /// (another tool wrote the database, or the log is not written).
    #[serde(other)]
    Unknown,
}

/// The most pacman runs one [`ChangeSource::Pacman`] lists.
pub const MAX_PACMAN_RUNS: usize = 8;
/// The longest command line kept of one run (bytes).
pub const MAX_PACMAN_COMMAND: usize = 1024;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One pacman run as `pacman.log` has it: `[TIME] [PACMAN] Running 'COMMAND'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacmanRun {
    /// pacman's own timestamp, e.g. `2026-12-05T03:20:01+0000`.
    pub at: String,
    /// The command line, e.g. `pacman -S firefox`.
    pub command: String,
}

impl ChangeSource {
    /// The same source with every string made terminal-safe and bounded, and at most
    /// [`MAX_PACMAN_RUNS`] runs: what a coordinator stores of what an endpoint sent.
    pub fn bounded(self) -> Self {
        let cut = |s: &str, max: usize| {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            crate::display::clean(&s[..end])
        };
        match self {
            ChangeSource::Pacpool {
                operation,
                local_id,
                requested,
            } => ChangeSource::Pacpool {
                operation: cut(&operation, 32),
                local_id,
                requested,
            },
            ChangeSource::Pacman { mut runs, more } => {
                let extra = runs.len().saturating_sub(MAX_PACMAN_RUNS);
                runs.drain(..extra);
                ChangeSource::Pacman {
                    runs: runs
                        .into_iter()
                        .map(|r| PacmanRun {
                            at: cut(&r.at, 40),
                            command: cut(&r.command, MAX_PACMAN_COMMAND),
                        })
                        .collect(),
                    more: more.saturating_add(extra),
                }
            }
            ChangeSource::Unknown => ChangeSource::Unknown,
        }
    }
}

impl std::fmt::Display for ChangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeSource::Pacpool {
                operation,
                local_id,
                requested,
            } => {
                write!(f, "pacpool {operation}")?;
                match (local_id, requested) {
                    (Some(l), Some(r)) => write!(f, " (operation {l}, coordinator operation {r})"),
                    (Some(l), None) => write!(f, " (operation {l})"),
                    (None, Some(r)) => write!(f, " (coordinator operation {r})"),
                    (None, None) => Ok(()),
                }
            }
            ChangeSource::Pacman { runs, more } => {
                f.write_str("pacman: ")?;
                for (i, r) in runs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "'{}' at {}", r.command, r.at)?;
                }
                if *more > 0 {
                    write!(f, " (and {more} earlier)")?;
                }
                Ok(())
            }
            ChangeSource::Unknown => f.write_str(
                "unknown (no pacman transaction in pacman.log since the previous state)",
            ),
        }
    }
}

/// `POST /endpoint/report`'s body: the report and, from newer endpoints, where the reported
/// state came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    #[serde(flatten)]
    pub report: StateReport,
    /// Older endpoints send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ChangeSource>,
}

/// One recorded change of an endpoint's state at the coordinator
/// (`GET /endpoints/{id}/changes`, newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub id: i64,
    /// Unix seconds, when the coordinator stored it.
    pub at: i64,
    pub state: SnapshotHash,
    pub package_count: u64,
    /// Where the endpoint says the change came from (none from older endpoints).
    #[serde(default)]
    pub source: Option<ChangeSource>,
}

/// The coordinator's answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportAck {
    /// Stored: the coordinator now knows this endpoint's state as `state`.
    Accepted { state: SnapshotHash },
    /// The delta's base is not what the coordinator has for this endpoint: send the full
    /// state. `known` is what it has (if anything).
    NeedFull { known: Option<SnapshotHash> },
}

/// "Set as latest": make `snapshot` (already reported by this endpoint) the pool target, if
/// the target is still at `expected_revision` (0 = the pool has no target yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTargetRequest {
    pub expected_revision: u64,
    pub snapshot: SnapshotHash,
    /// What each package file of the state is, as the setting endpoint's sync databases and
    /// cache say (older endpoints send none). A hint for the installing endpoints, never
    /// trust: see [`crate::manifest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<crate::manifest::Manifest>,
}

/// Admin: point the pool's target at an earlier revision's snapshot (as a new revision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertTargetRequest {
    pub to_revision: u64,
    pub expected_revision: u64,
}

/// An endpoint's state, computed by the coordinator from the last reported snapshot and the
/// pool target; never taken from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    InSync,
    Behind,
    Ahead,
    Diverged,
    /// An operation is running.
    Syncing,
    /// The last operation failed.
    Error,
    /// No heartbeat within the configured time.
    Offline,
    /// Put on hold (by an admin or its user): not offered new targets until the hold ends.
    Held,
    /// Never reported, or the pool has no target.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub id: i64,
    pub name: String,
    pub pool_id: i64,
    pub state: EndpointState,
    /// Changes a sync would make (zero when unknown).
    pub counts: Counts,
    pub current: Option<SnapshotHash>,
    pub target_revision: Option<u64>,
    pub last_seen: Option<i64>,
    pub active_operation: Option<i64>,
    /// In a pool with rollout rings: its wave and when it may get the newest target (older
    /// coordinators send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPosition>,
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    SyncToLatest,
    SetAsLatest,
    Revert,
}

/// pending → in_progress → completed | failed | cancelled (pending may also be cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl OperationState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether the state machine allows `self -> next`.
    pub fn can_become(self, next: OperationState) -> bool {
        use OperationState::*;
        matches!(
            (self, next),
            (Pending, InProgress | Cancelled | Failed)
                | (InProgress, InProgress | Completed | Failed | Cancelled)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOperation {
    pub kind: OperationKind,
    /// For `revert`: the endpoint-local snapshot to go back to (default: the previous one).
    #[serde(default)]
    pub to_snapshot: Option<SnapshotHash>,
    /// A retried request with the same key returns the first result.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Progress of a running operation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// e.g. `planning`, `downloading`, `installing`, `removing`, `verifying`.
    pub stage: String,
    pub percent: u8,
    /// e.g. `upgrading foo`.
    #[serde(default)]
    pub current: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFailure {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationResult {
    pub state: OperationState,
    pub message: String,
    /// Packages that did not reach their target; non-empty with `completed` means partial
    /// success.
    #[serde(default)]
    pub failures: Vec<PackageFailure>,
    /// The endpoint's state afterwards.
    #[serde(default)]
    pub snapshot: Option<SnapshotHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: i64,
    pub endpoint_id: i64,
    pub pool_id: i64,
    pub kind: OperationKind,
    pub state: OperationState,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub result: Option<OperationResult>,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// For `revert`: the snapshot to go back to, as given in [`CreateOperation::to_snapshot`]
    /// (`None`: the endpoint's previous state). Older coordinators send nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_snapshot: Option<SnapshotHash>,
    /// For `sync-to-latest` in a pool with rollout rings: the target revision this endpoint
    /// was offered when the operation was created (the daemon fetches its offer first if it
    /// has another). Older coordinators send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<u64>,
}

/// A page of a list; `next` is the cursor for the following page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<i64>,
}

impl<T> Page<T> {
    /// A keyset page of at most `limit` items, newest first: a full page's last id is the
    /// cursor for the next one; a shorter page is the last.
    pub fn keyset(items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Self {
        let next = (items.len() as i64 == limit)
            .then(|| items.last().map(id))
            .flatten();
        Self { items, next }
    }
}

/// Admin: rename an endpoint or move it to another pool (`PATCH /api/v1/endpoints/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateEndpoint {
    /// A new name, unique in the (new) pool.
    pub name: Option<String>,
    /// Another pool; refused while the endpoint has an active operation.
    pub pool_id: Option<i64>,
}

/// One entry of the coordinator's audit log (`GET /api/v1/audit`, newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// `admin`, `endpoint:<id>` or `registration`.
    pub actor: String,
    /// e.g. `pool.create`, `target.set`, `operation.cancel`.
    pub action: String,
    /// What was acted on, e.g. `pool:3`, `endpoint:7`, `operation:12`.
    #[serde(default)]
    pub subject: Option<String>,
    /// The client's IP address as seen on the socket.
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// A join token as listed (`GET /api/v1/pools/{id}/join-tokens`): never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub id: i64,
    pub pool_id: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; registration refuses the token from then on.
    pub expires_at: i64,
    pub max_uses: Option<u32>,
    /// Endpoints registered with it so far.
    pub uses: u64,
}

/// Counts for one pool (`GET /api/v1/stats`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoolStats {
    pub pool_id: i64,
    pub name: String,
    pub endpoints: u64,
    /// Endpoints by computed state (the `EndpointState` names, e.g. `in-sync`); states with no
    /// endpoint are left out.
    pub endpoints_by_state: std::collections::BTreeMap<String, u64>,
    /// Stored operations by state (`OperationState` names); retention removes old ones.
    pub operations_by_state: std::collections::BTreeMap<String, u64>,
    /// Target revisions stored (after retention), and the current revision.
    pub targets: u64,
    pub target_revision: Option<u64>,
    /// State reports accepted from the pool's endpoints since the coordinator started.
    pub reports_accepted: u64,
}

/// Coordinator statistics (`GET /api/v1/stats`, admin): totals and one entry per pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    pub pools: u64,
    pub endpoints: u64,
    pub endpoints_by_state: std::collections::BTreeMap<String, u64>,
    pub operations_by_state: std::collections::BTreeMap<String, u64>,
    pub targets: u64,
    /// Distinct snapshots stored (content-addressed) and their stored size in bytes (a
    /// snapshot that arrived as a delta is stored as that delta on its base).
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    /// State reports accepted since the coordinator started.
    pub reports_accepted: u64,
    /// Unix seconds when the coordinator started.
    pub started_at: i64,
    pub per_pool: Vec<PoolStats>,
    /// The pool repositories' package store (older coordinators send none).
    #[serde(default)]
    pub repo: RepoStats,
}

/// The pool repositories' content store: bytes held, the quota, and traffic since start.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepoStats {
    pub bytes_stored: u64,
    pub quota_bytes: u64,
    /// Package files served from the store without fetching.
    pub hits: u64,
    /// Files fetched from an upstream mirror or archive.
    pub upstream_fetches: u64,
    /// Files stored from endpoint uploads.
    pub uploads: u64,
    pub bytes_served: u64,
}

// ---------------------------------------------------------------------------------------------
// What-if: `POST /api/v1/endpoint/what-if` (endpoint token, read-only).

/// "What would the pool look like if `snapshot` (a state this endpoint already reported)
/// became its target?" Asked before set-latest, so the confirmation shows computed statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIfRequest {
    pub snapshot: SnapshotHash,
}

/// The coordinator's answer: every other endpoint of the pool, its status now and the
/// status it would have with `snapshot` as the target (computed exactly as
/// `GET /pools/{id}/endpoints` computes statuses, offline and running operations included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIf {
    /// The pool's current target revision (`None`: no target yet).
    pub target_revision: Option<u64>,
    pub endpoints: Vec<WhatIfEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIfEndpoint {
    pub id: i64,
    pub name: String,
    pub now: EndpointState,
    pub after: EndpointState,
    /// What a sync of that endpoint would do afterwards.
    pub counts_after: Counts,
}

// ---------------------------------------------------------------------------------------------
// WebSocket: `GET /api/v1/endpoints/ws` with `Authorization: Bearer <endpoint token>`.

/// Endpoint → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EndpointMsg {
    /// First message: protocol version and the state the endpoint believes the coordinator
    /// has acknowledged.
    Hello {
        protocol: u32,
        agent: String,
        acked_state: Option<SnapshotHash>,
    },
    Report {
        report: StateReport,
        /// Where the reported state came from (older endpoints send none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<ChangeSource>,
    },
    Progress {
        operation: i64,
        progress: Progress,
    },
    Result {
        operation: i64,
        result: OperationResult,
    },
    Heartbeat,
}

/// Coordinator → endpoint (and admin subscribers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `Hello`: what the coordinator knows and whether it needs a report.
    Welcome {
        protocol: u32,
        endpoint_id: i64,
        pool_id: i64,
        target: Option<TargetInfo>,
        /// The state the coordinator has for this endpoint; a report should be a delta
        /// against it, or full when `None` or different from the endpoint's belief.
        known_state: Option<SnapshotHash>,
        /// The pool's policy (older coordinators send none; the endpoint then keeps what it
        /// has, or its local policy).
        #[serde(default)]
        policy: Option<PoolPolicy>,
        /// How many endpoints the pool has, this one included (older coordinators send none;
        /// the tray then leaves the count out of its "Set as latest" confirmation).
        #[serde(default)]
        pool_endpoints: Option<u64>,
        /// In a pool with rollout rings: this endpoint's position (`target` is then the
        /// revision it is offered, not necessarily the pool's newest). Older coordinators
        /// send none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<RolloutPosition>,
    },
    ReportAck {
        ack: ReportAck,
    },
    TargetChanged {
        target: TargetInfo,
        /// What the change did relative to the previous target.
        summary: Counts,
    },
    OperationRequested {
        operation: Operation,
    },
    CancelRequested {
        operation: i64,
    },
    PolicyChanged {
        policy: PoolPolicy,
    },
    /// A rollout moved (a ring offered, halted, paused, resumed) or a hold changed: an
    /// endpoint asks `GET /endpoint/offer` for its own target and position (pools with rings
    /// never get `TargetChanged` on endpoint sockets).
    RolloutChanged {
        rollout: Option<Rollout>,
    },
    /// For admin subscribers: an endpoint's computed status changed.
    EndpointStatusChanged {
        status: EndpointStatus,
    },
    /// For admin subscribers: an operation changed state or progress.
    OperationUpdated {
        operation: Operation,
    },
    Error {
        error: ApiError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        use OperationState::*;
        assert!(Pending.can_become(InProgress));
        assert!(Pending.can_become(Cancelled));
        assert!(InProgress.can_become(Completed));
        assert!(!Completed.can_become(InProgress));
        assert!(!Cancelled.can_become(Completed));
        assert!(!Pending.can_become(Completed));
        assert!(Failed.is_terminal() && !InProgress.is_terminal());
    }

    #[test]
    fn messages_are_tagged() {
        let hello = EndpointMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "pacpoold/0.1".into(),
            acked_state: None,
        };
        let json = serde_json::to_string(&hello).unwrap();
        assert!(json.starts_with(r#"{"type":"hello""#), "{json}");
        assert_eq!(serde_json::from_str::<EndpointMsg>(&json).unwrap(), hello);
        assert!(serde_json::from_str::<EndpointMsg>(r#"{"type":"rm -rf"}"#).is_err());
        let policy: PoolPolicy =
            serde_json::from_str(r#"{"plan":{"scope":"explicit-only"},"auto_sync":"apply"}"#)
                .unwrap();
        assert_eq!(policy.plan.scope, crate::plan::Scope::ExplicitOnly);
        assert_eq!(policy.plan.removal_cap, crate::plan::DEFAULT_REMOVAL_CAP);
        assert!(serde_json::from_str::<PoolPolicy>(r#"{"plan":{"scop":"full"}}"#).is_err());
    }
}
