//! The local socket protocol between pacpoold and its clients (the `pacpool` CLI and the
//! tray): one JSON object per line. A client sends an [`Envelope`]; the daemon answers with
//! [`Reply`] lines — one for queries, a stream of `progress` then one `done` for actions, and
//! an endless stream of `event` after `subscribe`.
//!
//! Architecture Invariant: the coordinator's wire types live in `crate::proto`; the local
//! socket's live here. Evolution is additive, as in `proto`.

use serde::{Deserialize, Serialize};

use crate::plan::{Action, Conflict, Counts, RemovalCapExceeded, Skipped};
use crate::proto::{AutoSyncMode, EndpointState, PackageFailure, Progress, TargetInfo};
use crate::snapshot::SnapshotHash;
use crate::store::{HistoryEntry, LocalOperation};

/// Bumped on any incompatible change.
pub const LOCAL_PROTOCOL: u32 = 1;

/// Longest request line the daemon reads.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// A request line: the protocol version and the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl Envelope {
    pub fn new(request: Request) -> Self {
        Self {
            v: LOCAL_PROTOCOL,
            request,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Anyone.
    Status,
    /// Anyone: what a sync would do.
    Preview,
    /// Anyone: the local snapshot history.
    History {
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Anyone: local operations, newest first.
    Operations {
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Anyone: a recorded snapshot's canonical text (`id` is a history id or a hash prefix).
    Snapshot { id: String },
    /// Anyone: status events until the client disconnects.
    Subscribe,
    /// Anyone (from the pacman hook): re-read pacman's state now.
    Notify,
    /// Authorized: sync to the pool's target.
    Sync {
        #[serde(default)]
        confirm_removals: bool,
    },
    /// Authorized: make this machine's state the pool's target.
    SetLatest,
    /// Authorized: go back to the previous recorded state, or to `to` (history id or hash prefix).
    Revert {
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        confirm_removals: bool,
    },
    /// Authorized: cancel the running operation (honoured until pacman starts).
    Cancel,
    /// Authorized: pause or resume automatic syncs.
    PauseAutoSync { paused: bool },
}

fn default_limit() -> usize {
    20
}

impl Request {
    /// Whether the request changes anything (and so needs an authorized peer).
    pub fn is_action(&self) -> bool {
        matches!(
            self,
            Request::Sync { .. }
                | Request::SetLatest
                | Request::Revert { .. }
                | Request::Cancel
                | Request::PauseAutoSync { .. }
        )
    }
}

/// Stable error codes; the CLI maps them to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    InvalidRequest,
    ProtocolMismatch,
    /// The peer may not perform actions.
    Refused,
    /// Another operation runs, or pacman is in use.
    Busy,
    /// The plan has conflicts, or the pool target moved (set-latest race).
    Conflict,
    /// Removals above the cap need `confirm_removals`.
    NeedsConfirmation,
    /// A package file failed the trust rule (digest, size or signature, as pacman would check
    /// it for its repository); nothing was installed.
    UntrustedPackage,
    NothingToDo,
    /// The coordinator is needed and unreachable, or not configured.
    Offline,
    NotFound,
    PacmanFailed,
    Cancelled,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Reply {
    Status {
        status: Box<LocalStatus>,
    },
    Preview {
        preview: Preview,
    },
    History {
        entries: Vec<HistoryEntry>,
    },
    Operations {
        operations: Vec<LocalOperation>,
    },
    Snapshot {
        entry: HistoryEntry,
        text: String,
    },
    /// During an action.
    Progress {
        progress: Progress,
    },
    /// The end of an action.
    Done {
        outcome: Outcome,
    },
    Event {
        event: Event,
    },
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The coordinator link as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// No coordinator configured: local-only mode.
    NotConfigured,
    /// Configured but not registered yet (no join token, or registration failed).
    Unregistered,
    Connecting,
    Connected,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStatus {
    /// This machine against the pool target (`unknown` without a target).
    pub state: EndpointState,
    pub counts: Counts,
    /// Differences the policy leaves alone: protected packages the target lacks (kept),
    /// ignored packages that differ (older daemons send none).
    #[serde(default)]
    pub kept: Vec<Skipped>,
    pub endpoint: Option<String>,
    pub pool: Option<String>,
    /// Endpoints in the pool, this one included, as of the last connection to the coordinator
    /// (older daemons send none).
    #[serde(default)]
    pub pool_endpoints: Option<u64>,
    pub link: LinkState,
    pub target: Option<TargetInfo>,
    pub current: Option<HistoryEntry>,
    /// What "revert to previous" goes back to.
    pub previous: Option<HistoryEntry>,
    /// The running operation's kind and progress.
    pub operation: Option<RunningOperation>,
    pub last_error: Option<String>,
    pub last_sync: Option<i64>,
    pub auto_sync: AutoSyncMode,
    pub auto_sync_paused: bool,
    /// Whether the asking peer may run actions, and if not, why.
    pub can_act: bool,
    pub why_not: Option<String>,
    /// What "revert to previous" would change (older daemons send none).
    #[serde(default)]
    pub revert_changes: Option<Counts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningOperation {
    pub kind: String,
    pub progress: Option<Progress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub target_revision: Option<u64>,
    pub counts: Counts,
    pub actions: Vec<Action>,
    pub conflicts: Vec<Conflict>,
    pub skipped: Vec<Skipped>,
    pub needs_confirmation: Option<RemovalCapExceeded>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `sync`, `set-latest` or `revert`.
    pub kind: String,
    pub ok: bool,
    pub message: String,
    pub counts: Counts,
    #[serde(default)]
    pub failures: Vec<PackageFailure>,
    /// The machine's state afterwards.
    pub snapshot: Option<SnapshotHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Status {
        status: Box<LocalStatus>,
    },
    /// Another machine set a new pool target.
    TargetChanged {
        target: TargetInfo,
        summary: Counts,
    },
    OperationStarted {
        kind: String,
    },
    Progress {
        progress: Progress,
    },
    OperationFinished {
        outcome: Outcome,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_actions() {
        let line = serde_json::to_string(&Envelope::new(Request::Revert {
            to: Some("12".into()),
            confirm_removals: false,
        }))
        .unwrap();
        assert_eq!(
            line,
            r#"{"v":1,"cmd":"revert","to":"12","confirm_removals":false}"#
        );
        let back: Envelope = serde_json::from_str(&line).unwrap();
        assert!(back.request.is_action());
        let status: Envelope = serde_json::from_str(r#"{"v":1,"cmd":"status"}"#).unwrap();
        assert!(!status.request.is_action());
        assert!(serde_json::from_str::<Envelope>(r#"{"v":1,"cmd":"rm"}"#).is_err());
        assert!(serde_json::from_str::<Envelope>(r#"{"cmd":"status"}"#).is_err());
        let h: Envelope = serde_json::from_str(r#"{"v":1,"cmd":"history"}"#).unwrap();
        assert_eq!(h.request, Request::History { limit: 20 });
    }
}
