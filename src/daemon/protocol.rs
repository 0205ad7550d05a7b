//! The local socket protocol between pacpoold and its clients (the `pacpool` CLI and the
//! tray): one JSON object per line. A client sends an [`Envelope`]; the daemon answers with
//! [`Reply`] lines — one for queries, a stream of `progress` then one `done` for actions, and
//! an endless stream of `event` after `subscribe`.
//!
//! Architecture Invariant: the coordinator's wire types live in `crate::proto`; the local
//! socket's live here. Evolution is additive, as in `proto`.

use serde::{Deserialize, Serialize};

use crate::names::PkgName;
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
    /// Authorized: what set-latest would do to the pool — what the pool would lose against its
    /// current target, and every other machine's status afterwards. Changes nothing, but asks
    /// the coordinator with this endpoint's token (whose rate limit an outsider must not be
    /// able to use up).
    SetLatestPreview,
    /// Authorized: make this machine's state the pool's target.
    SetLatest {
        /// Go ahead although the pool would go back (this machine is behind or diverged:
        /// older versions or missing packages). Without it such a set-latest is refused with
        /// `needs-confirmation` and the list of what the pool would lose.
        #[serde(default)]
        allow_older: bool,
        /// The state the user saw in the confirmation ([`SetLatestPreview::state`]); refused
        /// with `conflict` when this machine's packages changed since (older clients send none).
        #[serde(default)]
        expect_state: Option<SnapshotHash>,
        /// The pool target revision the confirmation was computed against; refused with
        /// `conflict` when the target moved since (older clients send none).
        #[serde(default)]
        expect_revision: Option<u64>,
    },
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
    /// Authorized: put this machine on hold in its pool's rollouts until `until` (Unix
    /// seconds), when the pool lets endpoints hold themselves.
    Hold { until: i64, reason: String },
    /// Authorized: lift a hold this machine set.
    Unhold,
}

fn default_limit() -> usize {
    20
}

impl Request {
    /// Whether the request needs an authorized peer: it changes something, or (set-latest's
    /// preview) spends the endpoint's requests to the coordinator.
    pub fn is_action(&self) -> bool {
        matches!(
            self,
            Request::SetLatestPreview
                | Request::Sync { .. }
                | Request::SetLatest { .. }
                | Request::Revert { .. }
                | Request::Cancel
                | Request::PauseAutoSync { .. }
                | Request::Hold { .. }
                | Request::Unhold
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
    /// A file system pacman writes to would run out of space; nothing was changed.
    NotEnoughSpace,
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
    SetLatestPreview {
        preview: Box<SetLatestPreview>,
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
    /// A sync must refresh the sync databases first: some target versions are not in them
    /// yet (see [`Preview::needs_refresh`]; older daemons send `false`).
    #[serde(default)]
    pub needs_refresh: bool,
    /// The pool's daily auto-sync window (UTC `HH:MM-HH:MM`), if any (older daemons send none).
    #[serde(default)]
    pub auto_sync_window: Option<String>,
    /// While the machine is ahead of or diverged from the target after having been in sync
    /// with it: when it left the target and who moved it (older daemons send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_target: Option<OffTarget>,
    /// In a pool with rollout rings: this machine's wave and when it gets the newest target
    /// (`message`: "your machine gets revision 42 in wave 2, from Saturday 02:00 UTC").
    /// Older daemons send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::proto::RolloutPosition>,
}

/// Who moved an in-sync machine off its pool target, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffTarget {
    /// Unix seconds: when the state that left the target was recorded.
    pub at: i64,
    /// The target revision the machine was in sync with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Where that change came from (none: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::proto::ChangeSource>,
}

impl std::fmt::Display for OffTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "moved off the target")?;
        if let Some(r) = self.revision {
            write!(f, " (revision {r})")?;
        }
        write!(f, " at {} UTC by ", crate::display::utc(self.at))?;
        match &self.source {
            Some(s) => write!(f, "{s}"),
            None => f.write_str("an unknown change"),
        }
    }
}

impl LocalStatus {
    /// What a sync will do (see [`pending_summary`]).
    pub fn pending(&self) -> String {
        pending_summary(&self.counts, self.needs_refresh)
    }
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
    /// Some target versions are not in this machine's sync databases (or only in the
    /// archive): a sync refreshes them first (`pacman -Sy`) and plans again. `counts` is then
    /// what the sync makes after the refresh (the menu's numbers), while `actions` and
    /// `conflicts` are the plan on the databases as they are (older daemons send none).
    #[serde(default)]
    pub needs_refresh: bool,
    /// Download size and installed-size change of `actions` (older daemons send none).
    #[serde(default)]
    pub sizes: Option<crate::preflight::Sizes>,
    /// Free space on the file systems pacman writes to (package cache, root) against what
    /// the sync needs there; a sync refuses when one lacks room (older daemons send none).
    #[serde(default)]
    pub space: Vec<crate::preflight::Space>,
    /// Packages of `actions` that need a reboot afterwards (`reboot_packages`; older daemons
    /// send none).
    #[serde(default)]
    pub reboot: Vec<PkgName>,
    /// Target differences pacman's own `IgnorePkg` / `IgnoreGroup` hold back (older daemons
    /// send none); they also appear in `skipped` as ignored.
    #[serde(default)]
    pub held_back: Vec<crate::preflight::HeldBack>,
}

impl Preview {
    /// The one-line summary every client shows: "2 installs", or "needs a database refresh
    /// first; then 2 installs".
    pub fn summary(&self) -> String {
        pending_summary(&self.counts, self.needs_refresh)
    }

    /// What an Arch user checks before an upgrade, one line each, in the words every client
    /// shows (`pacpool preview`, the tray's preview): download and installed size, free
    /// space (or that it runs out), what needs a reboot, what pacman.conf holds back.
    pub fn preflight_lines(&self) -> Vec<String> {
        use crate::display::clean;
        use crate::preflight::{bytes, signed_bytes};
        let mut lines = Vec::new();
        if let Some(s) = self.sizes.as_ref().filter(|_| !self.actions.is_empty()) {
            let unknown = |names: &[PkgName]| {
                if names.is_empty() {
                    String::new()
                } else {
                    let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
                    format!(" (not counted, size unknown: {})", list.join(", "))
                }
            };
            lines.push(format!(
                "download: {}{}; installed size: {}{}",
                bytes(s.download),
                unknown(&s.download_unknown),
                signed_bytes(s.installed_change),
                unknown(&s.installed_unknown)
            ));
        }
        for sp in self.space.iter().filter(|s| s.needed > 0) {
            if sp.enough() {
                lines.push(format!(
                    "free space: {} on {} ({}), {} needed",
                    bytes(sp.free),
                    clean(&sp.path.display().to_string()),
                    sp.role,
                    bytes(sp.needed)
                ));
            } else {
                lines.push(clean(
                    &crate::preflight::NotEnoughSpace(sp.clone()).to_string(),
                ));
            }
        }
        if !self.reboot.is_empty() {
            let list: Vec<&str> = self.reboot.iter().map(|n| n.as_str()).collect();
            lines.push(format!("reboot needed afterwards: {}", list.join(", ")));
        }
        for h in &self.held_back {
            lines.push(format!("held back: {}", clean(&h.to_string())));
        }
        lines
    }
}

/// What a sync will do, in the words every client uses (status, menu, preview, sync).
pub fn pending_summary(counts: &Counts, needs_refresh: bool) -> String {
    if needs_refresh {
        format!("needs a database refresh first; then {}", counts.summary())
    } else {
        counts.summary()
    }
}

/// What set-latest would do to the pool, for its confirmation (tray and CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLatestPreview {
    pub pool: Option<String>,
    /// This machine's state, which would become the target.
    pub state: SnapshotHash,
    pub packages: usize,
    /// The pool's current target revision (`None`: no target yet).
    pub target_revision: Option<u64>,
    /// This machine against the current target (`unknown` without one).
    pub relation: EndpointState,
    /// What the pool would lose: packages of the current target that this machine has only
    /// at an older version, or not at all. Non-empty means set-latest needs `allow_older`.
    pub losses: Vec<PoolLoss>,
    /// Every other machine of the pool now and afterwards, computed by the coordinator;
    /// `None` when it could not be asked (`others_error` says why).
    pub others: Option<Vec<crate::proto::WhatIfEndpoint>>,
    pub others_error: Option<String>,
}

/// A package the pool target would go back on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolLoss {
    pub name: String,
    /// The version in the current target.
    pub from: String,
    /// This machine's version (`None`: this machine lacks the package, so the pool loses it).
    pub to: Option<String>,
}

impl std::fmt::Display for PoolLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.to {
            Some(to) => write!(f, "{} {} → {to}", self.name, self.from),
            None => write!(f, "{} {} → removed", self.name, self.from),
        }
    }
}

fn state_name(s: EndpointState) -> &'static str {
    match s {
        EndpointState::InSync => "in sync",
        EndpointState::Behind => "behind",
        EndpointState::Ahead => "ahead",
        EndpointState::Diverged => "diverged",
        EndpointState::Syncing => "syncing",
        EndpointState::Error => "in error",
        EndpointState::Offline => "offline",
        EndpointState::Held => "on hold",
        EndpointState::Unknown => "unknown",
    }
}

impl SetLatestPreview {
    /// Whether set-latest would take the pool back (needs `allow_older`).
    pub fn goes_back(&self) -> bool {
        !self.losses.is_empty()
    }

    /// "this machine is behind the target: the pool would go back 3 packages (openssl 3.4.0
    /// → 3.3.1, …)", listing at most `shown` packages; `None` when nothing goes back.
    pub fn loss_line(&self, shown: usize) -> Option<String> {
        let head = self.loss_header()?;
        let mut list: Vec<String> = self
            .losses
            .iter()
            .take(shown)
            .map(|l| l.to_string())
            .collect();
        if self.losses.len() > shown {
            list.push("…".into());
        }
        Some(format!("{head} ({})", list.join(", ")))
    }

    /// [`Self::loss_line`] without the list: "this machine is behind the target: the pool
    /// would go back 3 packages".
    pub fn loss_header(&self) -> Option<String> {
        if self.losses.is_empty() {
            return None;
        }
        Some(format!(
            "this machine is {} the target: the pool would go back {}",
            match self.relation {
                EndpointState::Diverged => "diverged from",
                _ => "behind",
            },
            crate::words::packages(self.losses.len()),
        ))
    }

    /// What happens to the other machines: "alice becomes ahead; bob and carol stay in
    /// sync", from the coordinator's computed statuses.
    pub fn others_line(&self) -> String {
        let Some(others) = &self.others else {
            return format!(
                "the other machines' statuses are unknown ({})",
                self.others_error
                    .as_deref()
                    .unwrap_or("the coordinator was not asked")
            );
        };
        if others.is_empty() {
            return "no other machine is in the pool yet".into();
        }
        // Grouped by (stays, state), in the order first seen.
        let mut groups: Vec<(bool, EndpointState, Vec<&str>)> = Vec::new();
        for o in others {
            let stays = o.now == o.after;
            match groups
                .iter_mut()
                .find(|(s, st, _)| *s == stays && *st == o.after)
            {
                Some(g) => g.2.push(&o.name),
                None => groups.push((stays, o.after, vec![&o.name])),
            }
        }
        groups
            .iter()
            .map(|(stays, state, names)| {
                let who = match names.len() {
                    1 => names[0].to_owned(),
                    n if n <= 3 => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
                    n => format!("{} and {} more", names[..2].join(", "), n - 2),
                };
                let verb = match stays {
                    true => crate::words::plural(names.len(), "stays", "stay"),
                    false => crate::words::plural(names.len(), "becomes", "become"),
                };
                format!("{who} {verb} {}", state_name(*state))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `.pacnew` / `.pacsave` files this operation's pacman transactions created, from
    /// pacman's log (older daemons send none).
    #[serde(default)]
    pub config_files: Vec<crate::preflight::ConfigFile>,
    /// Changed packages that need a reboot to take effect (older daemons send none).
    #[serde(default)]
    pub reboot: Vec<PkgName>,
    /// Processes that still run binaries or libraries the operation replaced: restart them
    /// (older daemons send none).
    #[serde(default)]
    pub restart: Vec<crate::preflight::StaleProcess>,
    /// The running kernel lost its modules directory: reboot (older daemons send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::preflight::KernelMismatch>,
    /// The snapper pre/post pair taken around the operation (older daemons send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapper: Option<crate::snapper::SnapperPair>,
    /// For a revert: the snapper snapshot of the file system as it was in the state reverted
    /// to, when one was taken (older daemons send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapper_match: Option<crate::snapper::SnapperRef>,
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
        /// What a sync of this machine to the new target does (older daemons send none).
        #[serde(default)]
        this_machine: Option<Counts>,
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

    #[test]
    fn set_latest_from_older_clients_does_not_allow_older() {
        let e: Envelope = serde_json::from_str(r#"{"v":1,"cmd":"set-latest"}"#).unwrap();
        assert_eq!(
            e.request,
            Request::SetLatest {
                allow_older: false,
                expect_state: None,
                expect_revision: None
            }
        );
        assert!(e.request.is_action());
        let p: Envelope = serde_json::from_str(r#"{"v":1,"cmd":"set-latest-preview"}"#).unwrap();
        assert!(
            p.request.is_action(),
            "it spends the endpoint's coordinator requests"
        );
    }

    #[test]
    fn others_line_groups_computed_statuses() {
        use crate::proto::WhatIfEndpoint;
        let ep = |name: &str, now, after| WhatIfEndpoint {
            id: 0,
            name: name.into(),
            now,
            after,
            counts_after: Counts::default(),
        };
        let mut p = SetLatestPreview {
            pool: None,
            state: crate::snapshot::Snapshot::default().hash(),
            packages: 0,
            target_revision: None,
            relation: EndpointState::Unknown,
            losses: Vec::new(),
            others: Some(vec![
                ep("alice", EndpointState::InSync, EndpointState::Ahead),
                ep("carol", EndpointState::InSync, EndpointState::Behind),
                ep("dave", EndpointState::Behind, EndpointState::Behind),
                ep("erin", EndpointState::InSync, EndpointState::Behind),
            ]),
            others_error: None,
        };
        assert_eq!(
            p.others_line(),
            "alice becomes ahead; carol and erin become behind; dave stays behind"
        );
        assert_eq!(p.loss_line(3), None);
        p.others = Some(Vec::new());
        assert_eq!(p.others_line(), "no other machine is in the pool yet");
        p.others = None;
        p.others_error = Some("coordinator unreachable".into());
        assert_eq!(
            p.others_line(),
            "the other machines' statuses are unknown (coordinator unreachable)"
        );
    }
}
