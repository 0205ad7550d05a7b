//! The daemon's state and operations.
//!
//! One operation (sync, set-latest, revert) runs at a time; a second request gets "busy".
//! Every operation re-reads pacman's state before planning and after applying, records the
//! result in the local history, and verifies that the machine reached the state it aimed for.

use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast, watch};

use super::config::DaemonConfig;
use super::protocol::{
    ErrorCode, Event, LinkState, LocalStatus, Outcome, PoolLoss, Preview, RunningOperation,
    SetLatestPreview,
};
use crate::localdb::Fingerprint;
use crate::machine::MachineState;
use crate::manifest::Manifest;
use crate::plan::{
    Action, Conflict, Counts, Plan, Skipped, Source, SyncStatus, kept_by_policy, plan, status,
};
use crate::proto::{AutoSyncMode, EndpointState, PackageFailure, PoolPolicy, Progress, TargetInfo};
use crate::snapshot::{Snapshot, SnapshotHash};
use crate::store::{HistoryEntry, LocalOperation, Store};

/// Keys of the daemon's small settings in the store.
pub(crate) mod keys {
    pub const TARGET_INFO: &str = "target_info";
    pub const TARGET_SNAPSHOT: &str = "target_snapshot";
    /// The pool target's manifest (JSON), `""` when the coordinator has none.
    pub const TARGET_MANIFEST: &str = "target_manifest";
    pub const POOL_POLICY: &str = "pool_policy";
    pub const POOL_NAME: &str = "pool_name";
    pub const ENDPOINT_NAME: &str = "endpoint_name";
    pub const ENDPOINT_ID: &str = "endpoint_id";
    pub const ACKED_STATE: &str = "acked_state";
    pub const LAST_SYNC: &str = "last_sync";
    pub const AUTO_SYNC_PAUSED: &str = "auto_sync_paused";
    /// pacman.log's length when pacman's state was last read: the runs after it explain the
    /// next change.
    pub const PACMAN_LOG_OFFSET: &str = "pacman_log_offset";
    /// Who moved the machine off the target (JSON `OffTarget`), while it is off.
    pub const OFF_TARGET: &str = "off_target";
}

/// Why an action did not run or did not finish; the socket turns it into an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    pub code: ErrorCode,
    pub message: String,
}

impl ActionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, e.to_string())
    }
}

#[derive(Debug, Default)]
struct State {
    machine: Option<MachineState>,
    fingerprint: Option<Fingerprint>,
    current: Option<HistoryEntry>,
    target: Option<(TargetInfo, Snapshot)>,
    /// The pool target's manifest (what each package file is), when the coordinator has one.
    manifest: Option<std::sync::Arc<crate::manifest::Manifest>>,
    pool_policy: Option<PoolPolicy>,
    pool_name: Option<String>,
    /// Endpoints in the pool (from the coordinator's welcome; not persisted).
    pool_endpoints: Option<u64>,
    /// This machine's place in its pool's rollout (pools with rings; not persisted).
    rollout: Option<crate::proto::RolloutPosition>,
    /// What "revert to previous" would change, for (current, previous) snapshot hashes.
    revert_counts: Option<((SnapshotHash, SnapshotHash), Counts)>,
    /// Whether a sync from the current state to the target must refresh the sync databases
    /// first, for (current, target) hashes; cleared whenever pacman's state is read again
    /// (the databases may have changed).
    refresh_needed: Option<((SnapshotHash, SnapshotHash), bool)>,
    endpoint_name: Option<String>,
    link: Option<LinkState>,
    running: Option<RunningOperation>,
    last_error: Option<String>,
    /// Why the last package state could not be recorded (disk full, read-only…); cleared by
    /// the next successful record. Shown before `last_error`.
    storage_error: Option<String>,
    /// Why pacman's state could not be read (a damaged local database entry…); cleared by
    /// the next successful read. Shown first.
    read_error: Option<String>,
    last_sync: Option<i64>,
    paused: bool,
    /// The last [`Daemon::sync_status`], for (current, target, policy).
    status_cache: Option<(StatusKey, StatusValue)>,
    /// What pacman.conf's `IgnorePkg` (globs) and `IgnoreGroup` (the installed members of
    /// those groups) hold back, read with pacman's state: added to the policy's `ignore`.
    held_globs: Vec<String>,
    /// The operation applying changes now: every state recorded meanwhile is its doing.
    applying: Option<crate::proto::ChangeSource>,
    /// See [`keys::PACMAN_LOG_OFFSET`].
    log_offset: Option<u64>,
    /// pacman's log file, as of the last read of pacman.conf.
    log_path: Option<std::path::PathBuf>,
    /// See [`keys::OFF_TARGET`].
    off_target: Option<super::protocol::OffTarget>,
}

type StatusKey = (SnapshotHash, SnapshotHash, crate::plan::Policy);
type StatusValue = (EndpointState, Counts, Vec<Skipped>);

pub struct Daemon {
    config: DaemonConfig,
    store: Mutex<Store>,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    operation: tokio::sync::Mutex<()>,
    cancel: watch::Sender<bool>,
    /// Woken whenever the local state changes, so the link reports it.
    pub(crate) state_changed: Notify,
    /// Woken when a result is queued in the outbox, so the link delivers it.
    pub(crate) outbox_changed: Notify,
    /// Coordinator operations this process has taken on (never run twice).
    requested: Mutex<std::collections::BTreeSet<i64>>,
    /// Which packages need a reboot after they change (`reboot_packages`).
    reboot: crate::preflight::RebootRules,
    /// Held while a prefetch runs: one at a time, so two never write the same `.part` file.
    prefetching: tokio::sync::Mutex<()>,
}

/// Where pacman writes, resolved as pacman does (flags, then pacman.conf, then defaults).
struct PacmanFiles {
    cache: std::path::PathBuf,
    root: std::path::PathBuf,
    log: std::path::PathBuf,
    /// Every directory pacman reads hooks from: `ROOT/usr/share/libalpm/hooks` and the
    /// `HookDir`s (`--hookdir` adds one).
    hook_dirs: Vec<std::path::PathBuf>,
    ignore_pkg: Vec<String>,
    ignore_group: Vec<String>,
}

/// How many coordinator operation ids one process remembers having taken on.
const REQUESTED_REMEMBERED: usize = 4096;

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Daemon {
    /// Opens the state directory and store, marks operations a previous run left behind as
    /// interrupted, loads the cached pool target and takes the first snapshot.
    pub async fn open(mut config: DaemonConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        config.resolve()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .with_context(|| {
                format!(
                    "cannot create the state directory {}",
                    config.state_dir.display()
                )
            })?;
        let store = Store::open(&config.store_path())?;
        let mut state = State::default();
        for op in store.interrupt_running(now())? {
            tracing::warn!(operation = op.id, kind = %op.kind, "operation was interrupted by a daemon stop");
            state.last_error = Some(format!(
                "{} (operation {}) was interrupted when the daemon stopped; the state below is what pacman recorded",
                op.kind, op.id
            ));
        }
        if let (Some(info), Some(text)) = (
            store.get(keys::TARGET_INFO)?,
            store.get(keys::TARGET_SNAPSHOT)?,
        ) {
            match (
                serde_json::from_str::<TargetInfo>(&info),
                Snapshot::decode(&text),
            ) {
                (Ok(info), Ok(snap)) if snap.hash() == info.snapshot => {
                    state.target = Some((info, snap));
                    state.manifest = store
                        .get(keys::TARGET_MANIFEST)?
                        .and_then(|m| serde_json::from_str::<Manifest>(&m).ok())
                        .filter(|m| m.validate().is_ok())
                        .map(std::sync::Arc::new);
                }
                _ => tracing::warn!("ignoring an unreadable cached pool target"),
            }
        }
        state.pool_policy = store
            .get(keys::POOL_POLICY)?
            .and_then(|p| serde_json::from_str(&p).ok());
        state.pool_name = store.get(keys::POOL_NAME)?;
        state.endpoint_name = store.get(keys::ENDPOINT_NAME)?;
        state.last_sync = store.get(keys::LAST_SYNC)?.and_then(|s| s.parse().ok());
        state.paused = store.get(keys::AUTO_SYNC_PAUSED)?.as_deref() == Some("true");
        state.log_offset = store
            .get(keys::PACMAN_LOG_OFFSET)?
            .and_then(|v| v.parse().ok());
        state.off_target = store
            .get(keys::OFF_TARGET)?
            .and_then(|v| serde_json::from_str(&v).ok());
        let reboot = crate::preflight::RebootRules::new(&config.reboot_packages)
            .context("fix reboot_packages in pacpoold.toml")?;
        let (events, _) = broadcast::channel(256);
        let daemon = Self {
            config,
            store: Mutex::new(store),
            state: Mutex::new(state),
            events,
            operation: tokio::sync::Mutex::new(()),
            cancel: watch::channel(false).0,
            state_changed: Notify::new(),
            outbox_changed: Notify::new(),
            requested: Mutex::default(),
            reboot,
            prefetching: tokio::sync::Mutex::new(()),
        };
        // A full or read-only disk must not keep the daemon from serving its status (which
        // says what failed): it retries on every notify and timer tick.
        // Nor a damaged pacman database (a transaction cut short by a power cut): the status
        // says which entry and how to repair it, instead of a daemon that does not start.
        if let Err(e) = daemon.refresh("start", true).await {
            let s = daemon.state();
            if s.storage_error.is_none() && s.read_error.is_none() {
                return Err(e);
            }
            tracing::error!("{e:#}");
        }
        Ok(daemon)
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, event: Event) {
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    fn emit_status(&self) {
        self.emit(Event::Status {
            status: Box::new(self.status(true, None)),
        });
    }

    /// Re-reads pacman's state when it changed (or always, with `force`), records it in the
    /// history and tells the link. Returns whether a new history entry was added.
    pub async fn refresh(&self, trigger: &str, force: bool) -> anyhow::Result<bool> {
        let paths = self.config.paths.clone();
        let dbpath = paths
            .dbpath
            .clone()
            .unwrap_or_else(|| self.config.pacman.dbpath());
        let (previous, reuse, log_offset, log) = {
            let s = self.state();
            let reuse = s
                .machine
                .as_ref()
                .map(|m| (m.sources.clone(), m.availability.clone()));
            (s.fingerprint, reuse, s.log_offset, s.log_path.clone())
        };
        // pacman.conf is read again only with the state (an unchanged tick costs two `stat`s).
        let log = log.unwrap_or_else(|| self.pacman_files().log);
        let read = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let fp = Fingerprint::of(&dbpath)?;
            if !force && previous == Some(fp) {
                return Ok(None);
            }
            // What pacman.log gained since the last read, read before the state (pacman logs
            // its command line before it changes anything). A run that starts between the two
            // reads may go unexplained (`unknown`); the pacman hook's `notify` after each
            // transaction makes that window rare.
            let gained = match log_offset {
                Some(offset) => crate::drift::read_since(&log, offset)
                    .inspect_err(|e| tracing::debug!(error = %e, log = %log.display(), "pacman.log not read"))
                    .ok(),
                None => Some((
                    String::new(),
                    std::fs::metadata(&log).map_or(0, |m| m.len()),
                )),
            };
            let reuse = reuse.as_ref().map(|(f, a)| (f, a));
            Ok(Some((fp, paths.read_reusing(reuse)?, gained)))
        })
        .await?;
        let read = match read {
            Ok(r) => {
                let cleared = if r.is_some() {
                    let mut s = self.state();
                    let old = s.read_error.take();
                    // An operation refused for that reason is no longer the news.
                    if old.is_some() && s.last_error == old {
                        s.last_error = None;
                    }
                    old.is_some()
                } else {
                    false
                };
                if cleared {
                    tracing::info!("pacman's state is readable again");
                    self.emit_status();
                }
                r
            }
            Err(e) => {
                let message = read_error_message(&e);
                let changed = {
                    let mut s = self.state();
                    let changed = s.read_error.as_deref() != Some(message.as_str());
                    s.read_error = Some(message);
                    changed
                };
                if changed {
                    self.emit_status();
                }
                return Err(e);
            }
        };
        let Some((fingerprint, machine, gained)) = read else {
            return Ok(false);
        };
        let applying = self.state().applying.clone();
        let source = |previous: Option<&HistoryEntry>| {
            // The first state recorded has no "before".
            previous?;
            if applying.is_some() {
                return applying;
            }
            Some(match (&gained, log_offset) {
                (Some((text, _)), Some(_)) => {
                    crate::drift::pacman_runs(text).unwrap_or(crate::proto::ChangeSource::Unknown)
                }
                _ => crate::proto::ChangeSource::Unknown,
            })
        };
        let recorded = {
            let mut store = self.store();
            store
                .record(&machine.snapshot, trigger, now(), source)
                .and_then(|r| {
                    if matches!(r, crate::store::Recorded::New(_)) {
                        store.apply_retention(self.config.history_keep)?;
                    }
                    Ok(r)
                })
        };
        let recorded = match recorded {
            Ok(r) => {
                let cleared = {
                    let mut s = self.state();
                    let old = s.storage_error.take();
                    if old.is_some() && s.last_error == old {
                        s.last_error = None;
                    }
                    old.is_some()
                };
                if cleared {
                    tracing::info!("recording package states works again");
                    self.emit_status();
                }
                r
            }
            Err(e) => {
                let message = format!("cannot record the package state: {e}");
                let changed = {
                    let mut s = self.state();
                    let changed = s.storage_error.as_deref() != Some(message.as_str());
                    s.storage_error = Some(message.clone());
                    changed
                };
                if changed {
                    self.emit_status();
                }
                return Err(anyhow::Error::new(e).context("cannot record the package state"));
            }
        };
        let new = matches!(recorded, crate::store::Recorded::New(_));
        if let Some((_, len)) = gained
            && log_offset != Some(len)
        {
            self.state().log_offset = Some(len);
            if let Err(e) = self.store().set(keys::PACMAN_LOG_OFFSET, &len.to_string()) {
                tracing::warn!(error = %e, "cannot record how far pacman.log was read");
            }
        }
        // Whether the machine was in sync with the target before this state.
        let was_in_sync = new && self.sync_status().0 == EndpointState::InSync;
        let files = self.pacman_files();
        self.state().log_path = Some(files.log.clone());
        let mut held_globs = files.ignore_pkg;
        held_globs.extend(
            machine
                .local
                .iter()
                .filter(|p| p.groups.iter().any(|g| files.ignore_group.contains(g)))
                .map(|p| p.name.to_string()),
        );
        {
            let mut s = self.state();
            s.fingerprint = Some(fingerprint);
            s.held_globs = held_globs;
            s.machine = Some(machine);
            s.refresh_needed = None;
            s.current = Some(recorded.entry().clone());
        }
        if new {
            self.note_off_target(was_in_sync, recorded.entry());
            tracing::info!(trigger, hash = %recorded.entry().hash.short(), packages = recorded.entry().package_count, source = ?recorded.entry().source, "recorded a new package state");
            self.state_changed.notify_one();
            self.emit_status();
        }
        Ok(new)
    }

    /// Records snapper snapshot `number` as the file system of the current state (a pre
    /// snapshot: the state before the operation; a post snapshot: the state it made).
    fn note_snapper(&self, config: &str, number: u64) {
        let Some(current) = self.state().current.as_ref().map(|c| c.id) else {
            return;
        };
        let r = crate::snapper::SnapperRef {
            config: config.to_owned(),
            number,
        };
        if let Err(e) = self.store().set_snapper(current, &r) {
            tracing::warn!(error = %e, "cannot record the snapper snapshot of state {current}");
        }
    }

    /// After a new state `entry`: remembers who moved the machine off the target when it was
    /// in sync and now is ahead or diverged; forgets it once the machine is in sync or behind.
    fn note_off_target(&self, was_in_sync: bool, entry: &HistoryEntry) {
        let now_state = self.sync_status().0;
        let off = match now_state {
            EndpointState::Ahead | EndpointState::Diverged if was_in_sync => {
                Some(super::protocol::OffTarget {
                    at: entry.taken_at,
                    revision: self.state().target.as_ref().map(|(t, _)| t.revision),
                    source: entry.source.clone(),
                })
            }
            // Still off the same target: the change that moved it off is the news.
            EndpointState::Ahead | EndpointState::Diverged => {
                let s = self.state();
                let revision = s.target.as_ref().map(|(t, _)| t.revision);
                if s.off_target
                    .as_ref()
                    .is_some_and(|o| o.revision == revision)
                {
                    return;
                }
                None
            }
            EndpointState::Unknown => return,
            _ => None,
        };
        if self.state().off_target == off {
            return;
        }
        if let Some(o) = &off {
            tracing::warn!(revision = ?o.revision, source = ?o.source, "{o}");
        }
        let stored = match &off {
            Some(o) => self.store().set(
                keys::OFF_TARGET,
                &serde_json::to_string(o).unwrap_or_default(),
            ),
            None => self.store().unset(keys::OFF_TARGET),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "cannot record who moved the machine off the target");
        }
        self.state().off_target = off;
    }

    /// The error an operation reports when re-reading or recording the state failed: what
    /// the status shows (with what to do), else the cause chain.
    pub(crate) fn refresh_failed(&self, e: anyhow::Error) -> ActionError {
        let s = self.state();
        let message = s
            .read_error
            .clone()
            .or_else(|| s.storage_error.clone())
            .unwrap_or_else(|| format!("{e:#}"));
        ActionError::new(ErrorCode::Internal, message)
    }

    /// Where the current state came from (see [`crate::drift`]).
    pub(crate) fn current_source(&self) -> Option<crate::proto::ChangeSource> {
        self.state().current.as_ref().and_then(|c| c.source.clone())
    }

    /// The current snapshot (after the last refresh).
    pub fn current_snapshot(&self) -> Option<Snapshot> {
        self.state().machine.as_ref().map(|m| m.snapshot.clone())
    }

    /// The policy this machine plans with: the pool's, to which the local `[policy]` only adds
    /// (its globs join the pool's, its removal cap is a ceiling: [`Policy::with_local`]); the
    /// local one alone until the pool's arrives.
    ///
    /// [`Policy::with_local`]: crate::plan::Policy::with_local
    fn policy(&self, s: &State) -> crate::plan::Policy {
        let mut policy = match &s.pool_policy {
            Some(p) => p.plan.with_local(&self.config.policy),
            None => self.config.policy.clone(),
        };
        // pacman would install an `IgnorePkg` package named on its command line anyway
        // (`--noconfirm` answers its question "yes"): leave them alone, as pacman -Syu does.
        for g in &s.held_globs {
            if !policy.ignore.contains(g) {
                policy.ignore.push(g.clone());
            }
        }
        policy
    }

    /// This machine against the target: state, pending changes and what the policy keeps.
    /// Cached per (state, target, policy), and computed without holding the state lock, so
    /// that status requests (anyone may send them) never make an operation wait.
    fn sync_status(&self) -> StatusValue {
        let (key, current, target) = {
            let s = self.state();
            let (Some(m), Some((info, target))) = (&s.machine, &s.target) else {
                return (EndpointState::Unknown, Counts::default(), Vec::new());
            };
            let key = (m.snapshot.hash(), info.snapshot, self.policy(&s));
            if let Some((k, v)) = &s.status_cache
                && *k == key
            {
                return v.clone();
            }
            (key, m.snapshot.clone(), target.clone())
        };
        let value = match key.2.compile() {
            Ok(policy) => {
                let (st, counts) = status(&current, &target, &policy);
                let state = match st {
                    SyncStatus::InSync => EndpointState::InSync,
                    SyncStatus::Behind => EndpointState::Behind,
                    SyncStatus::Ahead => EndpointState::Ahead,
                    SyncStatus::Diverged => EndpointState::Diverged,
                };
                (state, counts, kept_by_policy(&current, &target, &policy))
            }
            Err(_) => (EndpointState::Error, Counts::default(), Vec::new()),
        };
        self.state().status_cache = Some((key, value.clone()));
        value
    }

    /// The status as a peer sees it; `can_act` / `why_not` describe that peer's rights.
    pub fn status(&self, can_act: bool, why_not: Option<String>) -> LocalStatus {
        let (mut state, counts, kept) = self.sync_status();
        let mut s = self.state();
        if s.running.is_some() {
            state = EndpointState::Syncing;
        }
        let link = s.link.unwrap_or(if self.config.coordinator_url.is_some() {
            LinkState::Connecting
        } else {
            LinkState::NotConfigured
        });
        let previous = self.store().previous_entry().ok().flatten();
        let revert_changes = previous
            .as_ref()
            .and_then(|p| self.revert_counts(&mut s, p.hash));
        let needs_refresh = counts.total() > 0 && self.refresh_needed(&mut s);
        let rollout = s.rollout.clone();
        // On hold while the pool moved on: behind on purpose.
        if let Some(r) = &rollout
            && r.hold.is_some()
            && s.target
                .as_ref()
                .is_none_or(|(t, _)| t.revision < r.revision)
            && !matches!(state, EndpointState::Syncing | EndpointState::Error)
        {
            state = EndpointState::Held;
        }
        let auto_sync_window = s
            .pool_policy
            .as_ref()
            .and_then(|p| p.auto_sync_window.clone());
        LocalStatus {
            state,
            counts,
            kept,
            endpoint: s.endpoint_name.clone(),
            pool: s.pool_name.clone(),
            pool_endpoints: s.pool_endpoints,
            link,
            target: s.target.as_ref().map(|(t, _)| t.clone()),
            current: s.current.clone(),
            previous,
            operation: s.running.clone(),
            last_error: s
                .read_error
                .clone()
                .or_else(|| s.storage_error.clone())
                .or_else(|| s.last_error.clone()),
            last_sync: s.last_sync,
            auto_sync: self.auto_sync_mode_locked(&s),
            auto_sync_paused: s.paused,
            can_act,
            why_not,
            revert_changes,
            needs_refresh,
            auto_sync_window,
            off_target: s
                .off_target
                .clone()
                .filter(|_| matches!(state, EndpointState::Ahead | EndpointState::Diverged)),
            rollout,
        }
    }

    /// Whether syncing to the target needs a database refresh first (cached per pair of
    /// hashes until pacman's state is read again).
    fn refresh_needed(&self, s: &mut State) -> bool {
        let (Some(m), Some((_, target))) = (&s.machine, &s.target) else {
            return false;
        };
        let key = (m.snapshot.hash(), target.hash());
        if let Some((k, v)) = &s.refresh_needed
            && *k == key
        {
            return *v;
        }
        let Ok(policy) = self.policy(s).compile() else {
            return false;
        };
        let v = needs_database_refresh(&plan(
            &m.snapshot,
            target,
            &m.local,
            &m.availability,
            &policy,
        ));
        s.refresh_needed = Some((key, v));
        v
    }

    fn auto_sync_mode_locked(&self, s: &State) -> AutoSyncMode {
        self.config
            .auto_sync
            .or(s.pool_policy.as_ref().map(|p| p.auto_sync))
            .unwrap_or_default()
    }

    /// What a sync to the pool target would do.
    /// What a sync would do. `fresh`: re-read pacman's database in full first (for peers
    /// that may act); otherwise the two-`stat` unchanged check decides, so an unprivileged
    /// user cannot keep the daemon busy re-reading it.
    pub async fn preview(&self, fresh: bool) -> Result<Preview, ActionError> {
        self.refresh("preview", fresh)
            .await
            .map_err(|e| self.refresh_failed(e))?;
        let (target, info) = self.target()?;
        let plan = self.plan_to(&target)?;
        let mut preview = preview_of(&plan, Some(info.revision));
        let (sizes, space) = self.preflight(&plan).await;
        preview.sizes = Some(sizes);
        preview.space = space;
        preview.reboot = self.reboot.needs_reboot(&plan);
        let files = self.pacman_files();
        preview.held_back = {
            let s = self.state();
            let ignored = plan.skipped.iter().filter_map(|k| match k {
                Skipped::Ignored { name } => Some(name),
                Skipped::Protected { .. } => None,
            });
            let local = s
                .machine
                .as_ref()
                .map(|m| m.local.as_slice())
                .unwrap_or_default();
            crate::preflight::held_back(ignored, &files.ignore_pkg, &files.ignore_group, local)
        };
        if preview.needs_refresh {
            // The sync refreshes first and then makes the whole difference: the same numbers
            // as the status (and the tray's menu).
            preview.counts = self.status(true, None).counts;
        }
        Ok(preview)
    }

    fn target(&self) -> Result<(Snapshot, TargetInfo), ActionError> {
        let s = self.state();
        match &s.target {
            Some((info, snap)) => Ok((snap.clone(), info.clone())),
            None => Err(ActionError::new(
                ErrorCode::NotFound,
                match self.config.coordinator_url {
                    None => {
                        "no pool target: this daemon has no coordinator configured (set coordinator_url in pacpoold.toml)"
                    }
                    Some(_) => {
                        "no pool target yet: run `pacpool set-latest` on the machine whose packages the pool should follow, or wait for the coordinator connection"
                    }
                },
            )),
        }
    }

    /// Fetches into the cache, in the background, the files a sync to the pool target would
    /// download (pool repository, archive), each checked with the trust rule before it is
    /// kept, so that a sync later (at the pool's window, or offline) does not wait on them.
    /// Skipped when `prefetch` is off, while an operation runs, and when auto-sync is about
    /// to apply the target anyway.
    pub(crate) async fn prefetch_target(&self) {
        if !self.config.prefetch || self.auto_sync_wanted() || self.state().running.is_some() {
            return;
        }
        // One at a time; a prefetch already running covers this request (the timer retries).
        let Ok(_one) = self.prefetching.try_lock() else {
            return;
        };
        let Some(target) = self.state().target.as_ref().map(|(_, t)| t.clone()) else {
            return;
        };
        let (Ok(plan), Ok(trust)) = (self.plan_to(&target), self.trust_rule()) else {
            return;
        };
        // Downloads that would fill the disk are not started (the sync would refuse anyway).
        let (_, space) = self.preflight(&plan).await;
        if let Err(e) = crate::preflight::check_space(&space) {
            tracing::info!("no prefetch: {e}");
            return;
        }
        let opts = crate::apply::ApplyOptions {
            confirm_removals: true,
            archive_dir: None,
            max_download_size: Some(self.config.max_download_size),
            ca_file: self.config.coordinator_ca_file.clone(),
            pool_token: super::link::pool_repo(self).map(|(_, token)| token),
        };
        match crate::apply::prefetch(
            &plan,
            &self.config.pacman,
            &opts,
            &trust,
            &self.cancel.subscribe(),
        )
        .await
        {
            Ok(r) if r.fetched.is_empty() && r.failed.is_empty() => {}
            Ok(r) => tracing::info!(
                fetched = r.fetched.len(),
                present = r.present,
                failed = r.failed.len(),
                "prefetched the pool target's files{}",
                r.failed
                    .first()
                    .map(|(n, why)| format!(" (first failure: {n}: {why})"))
                    .unwrap_or_default()
            ),
            Err(e) => tracing::debug!(error = %e, "no prefetch"),
        }
    }

    /// What this machine's sync databases and caches offer (as last read).
    pub(crate) fn availability(&self) -> Option<std::sync::Arc<crate::plan::Availability>> {
        self.state()
            .machine
            .as_ref()
            .map(|m| m.availability.clone())
    }

    /// The manifest of this machine's current state: what each package file is, from its own
    /// sync databases and cache (hashes only cache files no database describes).
    pub(crate) async fn record_manifest(&self) -> Option<Manifest> {
        let (snapshot, availability) = {
            let s = self.state();
            let m = s.machine.as_ref()?;
            (m.snapshot.clone(), m.availability.clone())
        };
        tokio::task::spawn_blocking(move || Manifest::record(&snapshot, &availability))
            .await
            .ok()
    }

    /// The trust rule for installing package files: this machine's pacman.conf (the one pacman
    /// runs with), what its sync databases offer, and the pool target's manifest.
    fn trust_rule(&self) -> Result<crate::trust::TrustRule, ActionError> {
        let conf_path = self
            .config
            .pacman
            .config
            .clone()
            .or_else(|| self.config.paths.config.clone())
            .unwrap_or_else(|| std::path::PathBuf::from("/etc/pacman.conf"));
        let conf = crate::pacman_conf::PacmanConf::load(&conf_path).map_err(|e| {
            ActionError::new(
                ErrorCode::Internal,
                format!("cannot read pacman's configuration to check package signatures: {e}"),
            )
        })?;
        let s = self.state();
        let availability = s
            .machine
            .as_ref()
            .map(|m| m.availability.clone())
            .ok_or_else(|| {
                ActionError::new(ErrorCode::Internal, "pacman's state has not been read yet")
            })?;
        Ok(crate::trust::TrustRule::new(
            Some(&conf),
            availability,
            s.manifest.clone(),
            self.config.allow_unsigned_foreign,
        ))
    }

    /// Where pacman writes (package cache, root, log) and what its pacman.conf holds back.
    fn pacman_files(&self) -> PacmanFiles {
        let settings = &self.config.pacman;
        let conf = crate::pacman_conf::PacmanConf::load(&settings.config_path())
            .inspect_err(|e| tracing::debug!(error = %e, "pacman.conf not read for the preflight"))
            .ok();
        let root = settings
            .root
            .clone()
            .or_else(|| conf.as_ref().and_then(|c| c.root_dir.clone()))
            .unwrap_or_else(|| std::path::PathBuf::from("/"));
        let mut hook_dirs = vec![root.join("usr/share/libalpm/hooks")];
        match conf
            .as_ref()
            .map(|c| c.hook_dirs.clone())
            .unwrap_or_default()
        {
            dirs if dirs.is_empty() => hook_dirs.push(root.join("etc/pacman.d/hooks")),
            dirs => hook_dirs.extend(dirs),
        }
        hook_dirs.extend(settings.hookdir.clone());
        PacmanFiles {
            hook_dirs,
            cache: settings
                .cachedir
                .clone()
                .or_else(|| self.config.paths.cache_dirs.first().cloned())
                .unwrap_or_else(|| std::path::PathBuf::from(crate::apply::DEFAULT_ARCHIVE_DIR)),
            log: settings
                .logfile
                .clone()
                .or_else(|| conf.as_ref().map(|c| c.log_file()))
                .unwrap_or_else(|| std::path::PathBuf::from("/var/log/pacman.log")),
            ignore_pkg: conf
                .as_ref()
                .map(|c| c.ignore_pkg.clone())
                .unwrap_or_default(),
            ignore_group: conf.map(|c| c.ignore_group).unwrap_or_default(),
            root,
        }
    }

    /// What `plan` downloads and how it changes the installed size, and the free space on
    /// the file systems pacman writes to (empty when `statvfs` fails: pacman checks then).
    async fn preflight(
        &self,
        plan: &Plan,
    ) -> (crate::preflight::Sizes, Vec<crate::preflight::Space>) {
        let sizes = {
            let s = self.state();
            match s.machine.as_ref() {
                Some(m) => {
                    crate::preflight::sizes(plan, &m.availability, &m.local, s.manifest.as_deref())
                }
                None => Default::default(),
            }
        };
        let files = self.pacman_files();
        let measured = {
            let sizes = sizes.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let cache = crate::preflight::free_space(&files.cache)?;
                let root = crate::preflight::free_space(&files.root)?;
                Ok(crate::preflight::spaces(
                    &sizes,
                    (&files.cache, cache),
                    (&files.root, root),
                ))
            })
            .await
        };
        let space = match measured {
            Ok(Ok(space)) => space,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot measure free space; pacman will check it");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure free space; pacman will check it");
                Vec::new()
            }
        };
        (sizes, space)
    }

    fn plan_to(&self, target: &Snapshot) -> Result<Plan, ActionError> {
        let s = self.state();
        let policy = self
            .policy(&s)
            .compile()
            .map_err(|e| ActionError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        // The pool's repository has the pool target's files (not those of older local states).
        let pool_target = s
            .target
            .as_ref()
            .is_some_and(|(_, t)| t.hash() == target.hash());
        let pool_repo = if pool_target {
            drop(s);
            super::link::pool_repo(self).map(|(url, _)| url)
        } else {
            drop(s);
            None
        };
        let s = self.state();
        let machine = s.machine.as_ref().ok_or_else(|| {
            ActionError::new(ErrorCode::Internal, "pacman's state has not been read yet")
        })?;
        let availability = machine.availability.with_pool_repo(pool_repo);
        Ok(plan(
            &machine.snapshot,
            target,
            &machine.local,
            &availability,
            &policy,
        ))
    }

    /// Sync to the pool's target.
    /// `requested`: the coordinator's operation id, when it asked for this sync.
    pub async fn sync(
        &self,
        confirm_removals: bool,
        requested: Option<i64>,
        progress: impl FnMut(Progress) + Send,
    ) -> Result<Outcome, ActionError> {
        let (target, _) = self.target()?;
        self.run_to("sync", target, confirm_removals, true, requested, progress)
            .await
    }

    /// Go back to a recorded state: `to` is a history id or a hash prefix; default the
    /// previous entry.
    pub async fn revert(
        &self,
        to: Option<&str>,
        confirm_removals: bool,
        requested: Option<i64>,
        progress: impl FnMut(Progress) + Send,
    ) -> Result<Outcome, ActionError> {
        let entry = match to {
            Some(id) => self.find_entry(id)?,
            None => self
                .store()
                .previous_entry()
                .map_err(ActionError::internal)?
                .ok_or_else(|| {
                    ActionError::new(
                        ErrorCode::NothingToDo,
                        "there is no previous state to revert to: the history has one entry",
                    )
                })?,
        };
        let snap = self
            .store()
            .snapshot(&entry.hash)
            .map_err(ActionError::internal)?
            .ok_or_else(|| {
                ActionError::new(ErrorCode::NotFound, "that snapshot is no longer stored")
            })?;
        // The file system as it was in that state, when snapper kept it.
        let snapper_match = self.store().snapper_for(&entry.hash).ok().flatten();
        let mut outcome = self
            .run_to("revert", snap, confirm_removals, false, requested, progress)
            .await?;
        outcome.snapper_match = snapper_match;
        Ok(outcome)
    }

    /// Finds a history entry by id or by (unique) hash prefix.
    pub fn find_entry(&self, id: &str) -> Result<HistoryEntry, ActionError> {
        let store = self.store();
        let entries = store.history(100_000).map_err(ActionError::internal)?;
        let found: Vec<&HistoryEntry> = match id.parse::<i64>() {
            Ok(n) if id.len() < 12 => entries.iter().filter(|e| e.id == n).collect(),
            _ if id.len() >= 4 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                let mut seen = std::collections::BTreeSet::new();
                entries
                    .iter()
                    .filter(|e| e.hash.to_hex().starts_with(&id.to_ascii_lowercase()))
                    .filter(|e| seen.insert(e.hash))
                    .collect()
            }
            _ => Vec::new(),
        };
        match found[..] {
            [one] => Ok(one.clone()),
            [] => Err(ActionError::new(
                ErrorCode::NotFound,
                format!("no recorded state {id:?}: see `pacpool history`"),
            )),
            _ => Err(ActionError::new(
                ErrorCode::InvalidRequest,
                format!("{id:?} matches several states: give more of the hash"),
            )),
        }
    }

    /// The common path of sync and revert: plan to `target`, apply, verify, record.
    async fn run_to(
        &self,
        kind: &str,
        target: Snapshot,
        confirm_removals: bool,
        may_refresh_databases: bool,
        requested: Option<i64>,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Outcome, ActionError> {
        let _guard = self.begin(kind)?;
        let op = self
            .store()
            .operation_begin(kind, now())
            .map_err(ActionError::internal)?;
        // `send_replace`, not `send`: `send` leaves the value alone when nobody holds a
        // receiver, which is the case between operations, so a cancel would outlive its
        // operation and cancel the next one at once.
        self.cancel.send_replace(false);
        let source = crate::proto::ChangeSource::Pacpool {
            operation: kind.to_owned(),
            local_id: Some(op),
            requested,
        };
        let result = self
            .plan_apply_verify(
                kind,
                &target,
                confirm_removals,
                may_refresh_databases,
                source,
                &mut progress,
            )
            .await;
        self.state().applying = None;
        self.finish(op, kind, &result);
        result
    }

    async fn plan_apply_verify(
        &self,
        kind: &str,
        target: &Snapshot,
        confirm_removals: bool,
        may_refresh_databases: bool,
        source: crate::proto::ChangeSource,
        progress: &mut (impl FnMut(Progress) + Send),
    ) -> Result<Outcome, ActionError> {
        let mut report = |p: Progress| {
            self.state().running = Some(RunningOperation {
                kind: kind.to_owned(),
                progress: Some(p.clone()),
            });
            self.emit(Event::Progress {
                progress: p.clone(),
            });
            progress(p);
        };
        report(stage("planning", 0, None));
        // Forced: the cache or sync databases may have changed without pacman writing its
        // local database (a cleaned cache, a download). Unchanged sources are reused.
        self.refresh(kind, true)
            .await
            .map_err(|e| self.refresh_failed(e))?;
        let mut plan = self.plan_to(target)?;
        // A version missing from the sync databases may just be newer than they are: refresh
        // them before giving up or fetching from the archive (which only has what was).
        let refreshed = may_refresh_databases && needs_database_refresh(&plan);
        if refreshed {
            report(stage("refreshing databases", 5, None));
            actions::refresh_databases(&self.config.pacman, self.cancel.subscribe()).await?;
            self.refresh(kind, true)
                .await
                .map_err(|e| self.refresh_failed(e))?;
            plan = self.plan_to(target)?;
        }
        if !plan.conflicts.is_empty() {
            let list: Vec<String> = plan.conflicts.iter().map(|c| c.to_string()).collect();
            return Err(ActionError::new(
                ErrorCode::Conflict,
                format!("cannot {kind}: {}", list.join("; ")),
            ));
        }
        if let Some(cap) = &plan.needs_confirmation
            && !confirm_removals
        {
            return Err(ActionError::new(
                ErrorCode::NeedsConfirmation,
                format!(
                    "{kind} would remove {}, more than the cap of {}: confirm to go ahead",
                    crate::words::packages(cap.removals),
                    cap.cap
                ),
            ));
        }
        let counts = plan.counts();
        if plan.actions.is_empty() {
            return Ok(Outcome {
                kind: kind.to_owned(),
                ok: true,
                message: "nothing to do: already at the target state".into(),
                counts,
                failures: Vec::new(),
                snapshot: self.state().current.as_ref().map(|c| c.hash),
                ..Default::default()
            });
        }
        let (sizes, space) = self.preflight(&plan).await;
        if let Err(e) = crate::preflight::check_space(&space) {
            tracing::warn!(
                download = sizes.download,
                installed_change = sizes.installed_change,
                "{e}"
            );
            return Err(ActionError::new(
                ErrorCode::NotEnoughSpace,
                format!("cannot {kind}: {e}"),
            ));
        }
        let reboot = self.reboot.needs_reboot(&plan);
        let files = self.pacman_files();
        let log = files.log.clone();
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let trust = self.trust_rule()?;
        // A snapper pre snapshot, when snapper is configured for the root; never fatal.
        let description = source.to_string();
        let snapper = match crate::snapper::Snapper::detect(
            &self.config.snapper,
            &files.root,
            &files.hook_dirs,
        ) {
            Ok(snapper) => Some(snapper),
            Err(why) => {
                tracing::debug!(%why, "no snapper snapshots");
                None
            }
        };
        let pre = match &snapper {
            Some(snapper) => match snapper.pre(&description).await {
                Ok(n) => {
                    self.note_snapper(snapper.config(), n);
                    Some(n)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no snapper snapshot before the {kind}; going on without");
                    None
                }
            },
            None => None,
        };
        // From here every state recorded (this operation's, or the pacman hook's `notify`
        // while pacman runs) is this operation's doing.
        self.state().applying = Some(source);
        let applied = actions::apply(
            &plan,
            &self.config,
            &trust,
            super::link::pool_repo(self).map(|(_, token)| token),
            confirm_removals,
            self.cancel.subscribe(),
            &mut report,
        )
        .await;
        report(stage("verifying", 95, None));
        // Whatever happened, record what pacman's database now says.
        self.refresh(kind, true)
            .await
            .map_err(|e| self.refresh_failed(e))?;
        let snapper = match (&snapper, pre) {
            (Some(snapper), Some(pre)) => Some(crate::snapper::SnapperPair {
                config: snapper.config().to_owned(),
                pre,
                post: match snapper.post(pre, &description).await {
                    Ok(n) => {
                        self.note_snapper(snapper.config(), n);
                        Some(n)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no snapper snapshot after the {kind}");
                        None
                    }
                },
            }),
            _ => None,
        };
        let config_files = config_files_since(&log, log_start);
        let root = files.root.clone();
        let release_file = self.config.kernel_release_file.clone();
        let (restart, kernel) = tokio::task::spawn_blocking(move || {
            let kernel = crate::preflight::running_kernel(&release_file)
                .and_then(|release| crate::preflight::kernel_mismatch(&root, &release));
            (crate::preflight::stale_processes(&root), kernel)
        })
        .await
        .unwrap_or_default();
        let mut failures = applied?;
        let after = self.current_snapshot().unwrap_or_default();
        failures.extend(differences(&after, target, &self.policy(&self.state())));
        failures.sort_by(|a, b| a.name.cmp(&b.name));
        failures.dedup_by(|a, b| a.name == b.name);
        let ok = failures.is_empty();
        if ok && kind == "sync" {
            let t = now();
            self.state().last_sync = Some(t);
            let _ = self.store().set(keys::LAST_SYNC, &t.to_string());
        }
        let mut message = if ok {
            format!(
                "{kind} done{}: {}",
                if refreshed {
                    " after a database refresh"
                } else {
                    ""
                },
                counts.summary()
            )
        } else {
            format!(
                "{kind} finished, but {} {} from the target",
                crate::words::packages(failures.len()),
                crate::words::plural(failures.len(), "differs", "differ")
            )
        };
        // In the message too, so `pacpool history` and the coordinator's record carry them.
        message.push_str(&after_note(
            &config_files,
            &reboot,
            kernel.as_ref(),
            &restart,
            snapper.as_ref(),
        ));
        Ok(Outcome {
            kind: kind.to_owned(),
            ok,
            message,
            counts,
            failures,
            snapshot: Some(after.hash()),
            config_files,
            reboot,
            restart,
            kernel,
            snapper,
            ..Default::default()
        })
    }

    /// Takes the one-operation lock or says which operation holds it.
    pub(crate) fn begin(&self, kind: &str) -> Result<OperationGuard<'_>, ActionError> {
        let guard = self.operation.try_lock().map_err(|_| {
            let running = self
                .state()
                .running
                .as_ref()
                .map_or_else(|| "another operation".to_owned(), |r| r.kind.clone());
            ActionError::new(
                ErrorCode::Busy,
                format!("busy with {running}: wait for it to finish (or `pacpool cancel`)"),
            )
        })?;
        self.state().running = Some(RunningOperation {
            kind: kind.to_owned(),
            progress: None,
        });
        self.emit(Event::OperationStarted {
            kind: kind.to_owned(),
        });
        Ok(OperationGuard {
            daemon: self,
            _guard: guard,
        })
    }

    pub(crate) fn finish(&self, op: i64, kind: &str, result: &Result<Outcome, ActionError>) {
        let (state, message) = match result {
            Ok(o) if o.ok => ("completed", o.message.clone()),
            Ok(o) => ("failed", o.message.clone()),
            Err(e) if e.code == ErrorCode::Cancelled => ("cancelled", e.message.clone()),
            Err(e) => ("failed", e.message.clone()),
        };
        if let Err(e) = self.store().operation_end(op, state, &message, now()) {
            tracing::error!(error = %e, "cannot record the end of operation {op}");
        }
        self.state().last_error = (state == "failed").then(|| message.clone());
        let outcome = match result {
            Ok(o) => o.clone(),
            Err(e) => Outcome {
                kind: kind.to_owned(),
                ok: false,
                message: e.message.clone(),
                counts: Counts::default(),
                failures: Vec::new(),
                snapshot: self.state().current.as_ref().map(|c| c.hash),
                ..Default::default()
            },
        };
        tracing::info!(kind, state, message = %outcome.message, "operation finished");
        self.emit(Event::OperationFinished { outcome });
    }

    /// Waits until no operation runs (for shutdown: a pacman transaction is never cut short).
    pub async fn wait_idle(&self) {
        let _idle = self.operation.lock().await;
    }

    /// Asks the running operation to stop; honoured until pacman starts.
    pub fn cancel(&self) -> Result<(), ActionError> {
        if self.state().running.is_none() {
            return Err(ActionError::new(
                ErrorCode::NothingToDo,
                "no operation is running",
            ));
        }
        // Also while no step holds a receiver (between pacman runs): the next step sees it.
        self.cancel.send_replace(true);
        Ok(())
    }

    pub fn set_paused(&self, paused: bool) -> Result<(), ActionError> {
        self.store()
            .set(
                keys::AUTO_SYNC_PAUSED,
                if paused { "true" } else { "false" },
            )
            .map_err(ActionError::internal)?;
        self.state().paused = paused;
        self.emit_status();
        Ok(())
    }

    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, ActionError> {
        self.store().history(limit).map_err(ActionError::internal)
    }

    pub fn operations(&self, limit: usize) -> Result<Vec<LocalOperation>, ActionError> {
        self.store()
            .operations(limit)
            .map_err(ActionError::internal)
    }

    pub fn snapshot_text(&self, id: &str) -> Result<(HistoryEntry, String), ActionError> {
        let entry = self.find_entry(id)?;
        let snap = self
            .store()
            .snapshot(&entry.hash)
            .map_err(ActionError::internal)?
            .ok_or_else(|| {
                ActionError::new(ErrorCode::NotFound, "that snapshot is no longer stored")
            })?;
        Ok((entry, snap.encode()))
    }

    // ---- called by the link ----

    /// Takes on coordinator operation `id`; `false` if this process already did.
    pub(crate) fn claim_requested(&self, id: i64) -> bool {
        let mut seen = self.requested.lock().unwrap_or_else(|p| p.into_inner());
        let new = seen.insert(id);
        // Bounded: the coordinator numbers operations upwards, so the oldest ids go first.
        while seen.len() > REQUESTED_REMEMBERED {
            seen.pop_first();
        }
        new
    }

    /// Whether an operation runs now.
    pub(crate) fn operation_running(&self) -> bool {
        self.state().running.is_some()
    }

    /// Whether this process has taken on coordinator operation `id`.
    pub(crate) fn requested_seen(&self, id: i64) -> bool {
        self.requested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    pub(crate) fn set_link_state(&self, link: LinkState) {
        let changed = {
            let mut s = self.state();
            let changed = s.link != Some(link);
            s.link = Some(link);
            changed
        };
        if changed {
            self.emit_status();
        }
    }

    /// Names from the coordinator, kept with control characters escaped: they reach the
    /// journal, the status and the terminals that show it.
    pub(crate) fn set_identity(&self, endpoint: &str, pool: &str) {
        let (endpoint, pool) = (
            &crate::display::clean(endpoint),
            &crate::display::clean(pool),
        );
        let store = self.store();
        let _ = store.set(keys::ENDPOINT_NAME, endpoint);
        let _ = store.set(keys::POOL_NAME, pool);
        drop(store);
        let mut s = self.state();
        s.endpoint_name = Some(endpoint.to_owned());
        s.pool_name = Some(pool.to_owned());
    }

    /// The changes reverting from `current` to the recorded snapshot `previous` would make
    /// (under the effective policy), cached per pair of hashes.
    fn revert_counts(&self, s: &mut State, previous: SnapshotHash) -> Option<Counts> {
        let key = (s.current.as_ref()?.hash, previous);
        if let Some((k, c)) = &s.revert_counts
            && *k == key
        {
            return Some(*c);
        }
        let before = self.store().snapshot(&previous).ok().flatten()?;
        let policy = self.policy(s).compile().ok()?;
        let (_, counts) = status(&s.machine.as_ref()?.snapshot, &before, &policy);
        s.revert_counts = Some((key, counts));
        Some(counts)
    }

    /// Shows `message` as the status's `last_error` (until the next operation ends).
    pub(crate) fn note_error(&self, message: String) {
        self.state().last_error = Some(message);
        self.emit_status();
    }

    pub(crate) fn set_pool_endpoints(&self, count: Option<u64>) {
        self.state().pool_endpoints = count;
    }

    /// This machine's rollout position, as the coordinator computed it.
    pub(crate) fn set_rollout(&self, position: Option<crate::proto::RolloutPosition>) {
        self.state().rollout = position;
        self.emit_status();
    }

    pub(crate) fn set_pool_policy(&self, policy: PoolPolicy) {
        if let Ok(json) = serde_json::to_string(&policy) {
            let _ = self.store().set(keys::POOL_POLICY, &json);
        }
        self.state().pool_policy = Some(policy);
        self.emit_status();
    }

    /// The local part of set-latest's confirmation: this machine's state (after the last
    /// read), how it relates to the cached pool target and what the pool would lose;
    /// `others` is left for the coordinator's what-if.
    pub(crate) fn set_latest_local(&self) -> Result<(Snapshot, SetLatestPreview), ActionError> {
        let s = self.state();
        let machine = s.machine.as_ref().ok_or_else(|| {
            ActionError::new(ErrorCode::Internal, "pacman's state has not been read yet")
        })?;
        let uncompiled = self.policy(&s);
        let policy = uncompiled
            .compile()
            .map_err(|e| ActionError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let current = machine.snapshot.clone();
        let (relation, losses) = match &s.target {
            Some((_, target)) => {
                let relation = match status(&current, target, &policy).0 {
                    SyncStatus::InSync => EndpointState::InSync,
                    SyncStatus::Behind => EndpointState::Behind,
                    SyncStatus::Ahead => EndpointState::Ahead,
                    SyncStatus::Diverged => EndpointState::Diverged,
                };
                (
                    relation,
                    pool_losses(&current, target, &policy, uncompiled.scope),
                )
            }
            None => (EndpointState::Unknown, Vec::new()),
        };
        let preview = SetLatestPreview {
            pool: s.pool_name.clone(),
            state: current.hash(),
            packages: current.len(),
            target_revision: s.target.as_ref().map(|(t, _)| t.revision),
            relation,
            losses,
            others: None,
            others_error: None,
        };
        Ok((current, preview))
    }

    /// The cached pool target.
    pub(crate) fn target_info(&self) -> Option<TargetInfo> {
        self.state().target.as_ref().map(|(t, _)| t.clone())
    }

    /// Stores a new pool target (its snapshot already verified against its hash) and tells
    /// subscribers; returns the change summary against the previous target.
    pub(crate) fn set_target(
        &self,
        info: TargetInfo,
        snap: Snapshot,
        manifest: Option<Manifest>,
    ) -> Result<Counts, ActionError> {
        if snap.hash() != info.snapshot {
            return Err(ActionError::new(
                ErrorCode::Internal,
                "the coordinator sent a target snapshot that does not match its hash",
            ));
        }
        {
            let store = self.store();
            let json = serde_json::to_string(&info).map_err(ActionError::internal)?;
            store
                .set(keys::TARGET_SNAPSHOT, &snap.encode())
                .map_err(ActionError::internal)?;
            store
                .set(keys::TARGET_INFO, &json)
                .map_err(ActionError::internal)?;
            let manifest_json = match &manifest {
                Some(m) => serde_json::to_string(m).map_err(ActionError::internal)?,
                None => String::new(),
            };
            store
                .set(keys::TARGET_MANIFEST, &manifest_json)
                .map_err(ActionError::internal)?;
        }
        let (summary, this_machine) = {
            let mut s = self.state();
            let policy = self.policy(&s).compile();
            let summary = match (&s.target, &policy) {
                (Some((_, old)), Ok(policy)) => status(old, &snap, policy).1,
                _ => Counts::default(),
            };
            let this_machine = match (&s.machine, &policy) {
                (Some(m), Ok(policy)) => Some(status(&m.snapshot, &snap, policy).1),
                _ => None,
            };
            s.target = Some((info.clone(), snap));
            s.manifest = manifest.map(std::sync::Arc::new);
            (summary, this_machine)
        };
        self.emit(Event::TargetChanged {
            target: info,
            summary,
            this_machine,
        });
        self.emit_status();
        Ok(summary)
    }

    /// Whether an automatic sync may run now: mode `apply`, not paused, inside the pool's
    /// window (if any).
    pub(crate) fn auto_sync_wanted(&self) -> bool {
        let s = self.state();
        if s.paused || self.auto_sync_mode_locked(&s) != AutoSyncMode::Apply {
            return false;
        }
        // With rings the coordinator starts automatic syncs (as operations), inside the
        // ring's windows and slots.
        if s.pool_policy
            .as_ref()
            .is_some_and(|p| !p.rollout.rings.is_empty())
        {
            return false;
        }
        match s
            .pool_policy
            .as_ref()
            .and_then(|p| p.auto_sync_window.as_deref())
        {
            None => true,
            Some(w) => in_window(w, now()).unwrap_or_else(|e| {
                tracing::warn!(window = w, "ignoring the auto-sync window: {e}");
                true
            }),
        }
    }

    /// Runs an automatic sync when wanted and the machine is behind the target.
    pub(crate) async fn maybe_auto_sync(&self, why: &str) {
        let behind = matches!(
            self.status(true, None).state,
            EndpointState::Behind | EndpointState::Diverged
        );
        if !behind || !self.auto_sync_wanted() {
            return;
        }
        match self.sync(false, None, |_| {}).await {
            Ok(o) => tracing::info!(why, message = %o.message, "automatic sync"),
            Err(e) => tracing::warn!(why, error = %e, "automatic sync did not run"),
        }
    }
}

/// What the status says when pacman's state cannot be read: the cause, and for a damaged
/// local database entry (what a transaction cut short by a crash or power cut leaves) how to
/// repair it.
fn read_error_message(e: &anyhow::Error) -> String {
    use crate::localdb::LocalDbError;
    use crate::machine::MachineError;
    let entry = match e.downcast_ref::<MachineError>() {
        Some(MachineError::LocalDb(
            LocalDbError::Entry { path, .. }
            | LocalDbError::NameMismatch { path, .. }
            | LocalDbError::BadReason { path, .. },
        )) => Some(path),
        // An entry directory without its `desc` (pacman stopped right after creating it).
        Some(MachineError::LocalDb(LocalDbError::Io { path, .. }))
            if path.file_name().is_some_and(|f| f == "desc") =>
        {
            Some(path)
        }
        _ => None,
    };
    let damaged = entry.and_then(|path| {
        let dir = if path.file_name().is_some_and(|f| f == "desc") {
            path.parent()?
        } else {
            path.as_path()
        };
        let mut parts = dir.file_name()?.to_str()?.rsplitn(3, '-');
        let (_rel, _ver, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some((dir.to_owned(), name.to_owned()))
    });
    let cause = crate::display::error_line(e);
    match damaged {
        // `pacman -S NAME` alone fails on an entry whose `desc` or `files` is missing, and
        // the package's files are still on disk: the entry goes, the reinstall takes them over.
        Some((dir, name)) => format!(
            "cannot read pacman's state: {cause}; a pacman transaction was probably cut short: \
             move {} out of pacman's database, reinstall the package \
             (`pacman -S --overwrite '*' {name}`), then run `pacpool notify`",
            dir.display()
        ),
        None => format!("cannot read pacman's state: {cause}"),
    }
}

/// Whether `now` (Unix seconds) falls in the daily UTC window `HH:MM-HH:MM`, which may wrap
/// past midnight (`22:00-06:00`).
pub fn in_window(window: &str, now: i64) -> Result<bool, String> {
    let minutes = |hm: &str| -> Result<i64, String> {
        let (h, m) = hm
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{hm:?} is not HH:MM"))?;
        let (h, m): (i64, i64) = (
            h.parse().map_err(|_| format!("{hm:?} is not HH:MM"))?,
            m.parse().map_err(|_| format!("{hm:?} is not HH:MM"))?,
        );
        if !(0..24).contains(&h) || !(0..60).contains(&m) {
            return Err(format!("{hm:?} is not a time of day"));
        }
        Ok(h * 60 + m)
    };
    let (from, to) = window
        .split_once('-')
        .ok_or_else(|| format!("{window:?} is not HH:MM-HH:MM"))?;
    let (from, to) = (minutes(from)?, minutes(to)?);
    let at = now.rem_euclid(86_400) / 60;
    Ok(if from <= to {
        (from..to).contains(&at)
    } else {
        at >= from || at < to
    })
}

/// Holds the one-operation lock; clears the running marker when dropped.
pub(crate) struct OperationGuard<'a> {
    daemon: &'a Daemon,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for OperationGuard<'_> {
    fn drop(&mut self) {
        self.daemon.state().running = None;
        self.daemon.emit_status();
    }
}

fn stage(name: &str, percent: u8, current: Option<String>) -> Progress {
    Progress {
        stage: name.to_owned(),
        percent,
        current,
    }
}

/// The `.pacnew` / `.pacsave` files pacman's log names after byte `start` (where it ended
/// before this operation's transactions).
fn config_files_since(log: &std::path::Path, start: u64) -> Vec<crate::preflight::ConfigFile> {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    let read = std::fs::File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(start))?;
        // A run's lines are a few KiB; bound what a huge log could make us hold.
        f.take(16 << 20).read_to_end(&mut text)
    });
    if let Err(e) = read {
        tracing::warn!(log = %log.display(), error = %e, "cannot read pacman's log for .pacnew files");
        return Vec::new();
    }
    crate::preflight::config_files_in_log(&String::from_utf8_lossy(&text))
}

/// "; new config files: /etc/x.pacnew; reboot needed (linux)", or "".
fn after_note(
    config_files: &[crate::preflight::ConfigFile],
    reboot: &[crate::names::PkgName],
    kernel: Option<&crate::preflight::KernelMismatch>,
    restart: &[crate::preflight::StaleProcess],
    snapper: Option<&crate::snapper::SnapperPair>,
) -> String {
    let mut note = String::new();
    if !config_files.is_empty() {
        let list: Vec<&str> = config_files.iter().map(|c| c.saved_as.as_str()).collect();
        note.push_str(&format!("; to merge: {}", list.join(", ")));
    }
    if !reboot.is_empty() {
        let list: Vec<&str> = reboot.iter().map(|n| n.as_str()).collect();
        note.push_str(&format!("; reboot needed ({})", list.join(", ")));
    }
    if let Some(k) = kernel {
        note.push_str(&format!("; {k}"));
    }
    if !restart.is_empty() {
        let list: Vec<String> = restart
            .iter()
            .map(|p| match &p.unit {
                Some(u) => format!("{u} (pid {})", p.pid),
                None => format!("{} (pid {})", p.command, p.pid),
            })
            .collect();
        note.push_str(&format!(
            "; still running replaced files: {}",
            list.join(", ")
        ));
    }
    if let Some(p) = snapper {
        match p.post {
            Some(post) => note.push_str(&format!(
                "; snapper snapshots {} (pre) and {post} (post), config {}",
                p.pre, p.config
            )),
            None => note.push_str(&format!(
                "; snapper snapshot {} (pre), config {}",
                p.pre, p.config
            )),
        }
    }
    note
}

pub(crate) fn preview_of(plan: &Plan, target_revision: Option<u64>) -> Preview {
    Preview {
        target_revision,
        counts: plan.counts(),
        actions: plan.actions.clone(),
        conflicts: plan.conflicts.clone(),
        skipped: plan.skipped.clone(),
        needs_confirmation: plan.needs_confirmation.clone(),
        needs_refresh: needs_database_refresh(plan),
        sizes: None,
        space: Vec::new(),
        reboot: Vec::new(),
        held_back: Vec::new(),
    }
}

/// What the pool target would lose if `current` replaced `target`: packages the target has
/// at a newer version than `current`, or that `current` lacks. Packages the policy ignores are
/// left out, and in explicit-only scope so are dependencies neither side installed explicitly.
pub(crate) fn pool_losses(
    current: &Snapshot,
    target: &Snapshot,
    policy: &crate::plan::CompiledPolicy,
    scope: crate::plan::Scope,
) -> Vec<PoolLoss> {
    use crate::localdb::Reason;
    let mut out = Vec::new();
    for want in target.packages() {
        let name = want.name.as_str();
        if policy.is_ignored(name) {
            continue;
        }
        let have = current.get(name);
        if scope == crate::plan::Scope::ExplicitOnly
            && want.reason != Reason::Explicit
            && have.is_none_or(|h| h.reason != Reason::Explicit)
        {
            continue;
        }
        match have {
            None => out.push(PoolLoss {
                name: name.to_owned(),
                from: want.version.to_string(),
                to: None,
            }),
            Some(h)
                if crate::version::vercmp(h.version.as_str(), want.version.as_str())
                    == std::cmp::Ordering::Less =>
            {
                out.push(PoolLoss {
                    name: name.to_owned(),
                    from: want.version.to_string(),
                    to: Some(h.version.to_string()),
                })
            }
            Some(_) => {}
        }
    }
    out
}

/// Whether a sync refreshes the sync databases before applying `plan`: a target version is
/// missing from them (it may just be newer than they are), or would come from the archive
/// (which only has what was).
pub(crate) fn needs_database_refresh(plan: &Plan) -> bool {
    plan.conflicts.iter().any(|c| {
        matches!(
            c,
            Conflict::VersionUnavailable { .. } | Conflict::RepositoryUnavailable { .. }
        )
    }) || plan.actions.iter().any(|a| {
        matches!(
            a,
            Action::Install {
                source: Source::Archive { .. } | Source::Pool { .. },
                ..
            } | Action::Upgrade {
                source: Source::Archive { .. } | Source::Pool { .. },
                ..
            } | Action::Downgrade {
                source: Source::Archive { .. } | Source::Pool { .. },
                ..
            }
        )
    })
}

/// Packages where `after` still differs from `target` under `policy`, with the reason.
fn differences(
    after: &Snapshot,
    target: &Snapshot,
    policy: &crate::plan::Policy,
) -> Vec<PackageFailure> {
    let Ok(policy) = policy.compile() else {
        return Vec::new();
    };
    let empty = crate::plan::Availability::default();
    let residual = plan(after, target, &[], &empty, &policy);
    let mut out: Vec<PackageFailure> = residual
        .actions
        .iter()
        .map(|a| PackageFailure {
            name: a.name().to_string(),
            reason: format!(
                "still differs from the target: {}",
                serde_json::to_value(a)
                    .map(|v| v["action"].to_string())
                    .unwrap_or_default()
            ),
        })
        .collect();
    out.extend(residual.conflicts.iter().map(|c| PackageFailure {
        name: match c {
            Conflict::VersionUnavailable { name, .. }
            | Conflict::MissingPackage { name }
            | Conflict::RepositoryUnavailable { name, .. }
            | Conflict::DependencyConflict { name, .. } => name.to_string(),
        },
        reason: c.to_string(),
    }));
    out
}

/// The safety-net timer: a cheap unchanged check every `check_interval`, and a forced full
/// read every tenth tick (catches anything the fingerprint could miss).
pub async fn timer(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(daemon.config().check_interval());
    // A late tick after a suspend should not fire a burst of catch-up checks.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        if let Err(e) = daemon.refresh("timer", n % 10 == 0).await {
            tracing::warn!(error = %e, "periodic check of pacman's state failed");
        }
        // A target that arrived outside the auto-sync window is applied once it opens.
        daemon.maybe_auto_sync("timer").await;
        // Files a prefetch could not get (pool repository or network down, cache cleaned)
        // are tried again; with everything in the cache this only plans and checks files.
        daemon.prefetch_target().await;
    }
}

/// The only place the daemon reaches pacman: through `crate::apply` and `crate::exec`.
mod actions {
    use super::*;
    use crate::apply::{ApplyError, ApplyEvent, ApplyOptions};
    use crate::exec::{ExecError, PacmanEvent, PacmanOp, PacmanSettings};

    /// `pacman -Sy` alone: the caller re-plans against the fresh databases and then applies
    /// the whole target state, so nothing is left partially upgraded.
    pub(super) async fn refresh_databases(
        settings: &PacmanSettings,
        cancel: watch::Receiver<bool>,
    ) -> Result<(), ActionError> {
        crate::exec::run(&PacmanOp::RefreshDatabases, settings, &mut |_| {}, &cancel)
            .await
            .map(drop)
            .map_err(exec_error)
    }

    /// Applies `plan`; returns the packages that did not reach their target.
    pub(super) async fn apply(
        plan: &Plan,
        config: &crate::daemon::config::DaemonConfig,
        trust: &crate::trust::TrustRule,
        pool_token: Option<String>,
        confirm_removals: bool,
        cancel: watch::Receiver<bool>,
        report: &mut (impl FnMut(Progress) + Send),
    ) -> Result<Vec<PackageFailure>, ActionError> {
        let settings = &config.pacman;
        let opts = ApplyOptions {
            confirm_removals,
            archive_dir: None,
            max_download_size: Some(config.max_download_size),
            ca_file: config.coordinator_ca_file.clone(),
            pool_token,
        };
        // Transactions share 10–90 %; within one, pacman's own counter moves the bar.
        let (mut index, mut total) = (0usize, 1usize);
        let mut on_event = |e: ApplyEvent| {
            let at = |i: usize, total: usize, within: u8| {
                (10 + 80 * (i * 100 + usize::from(within.min(100))) / (total.max(1) * 100)) as u8
            };
            let p = match e {
                ApplyEvent::Fetching { name, .. } => {
                    stage("downloading", 8, Some(name.to_string()))
                }
                // One line per transaction: "transaction 2 of 3" (4 packages); pacman's own
                // "starting" adds nothing to it.
                ApplyEvent::Transaction {
                    index: i,
                    total: t,
                    command,
                } => {
                    (index, total) = (i, t);
                    stage(
                        &format!("transaction {} of {t}", i + 1),
                        at(i, t, 0),
                        Some(transaction_summary(plan, &command)),
                    )
                }
                ApplyEvent::Pacman {
                    event:
                        PacmanEvent::Progress(crate::exec::Progress {
                            stage: crate::exec::Stage::Starting,
                            ..
                        }),
                    ..
                } => return,
                ApplyEvent::Pacman {
                    event: PacmanEvent::Progress(p),
                    ..
                } => {
                    let name = serde_json::to_value(p.stage)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    stage(
                        &name,
                        at(index, total, p.percent.unwrap_or(0)),
                        p.package.map(|n| n.to_string()),
                    )
                }
                ApplyEvent::Pacman {
                    event: PacmanEvent::WaitingForLock { .. },
                    ..
                } => stage("waiting for pacman's lock", at(index, total, 0), None),
                ApplyEvent::Pacman { .. } => return,
            };
            report(p);
        };
        let failures =
            match crate::apply::apply(plan, settings, &opts, trust, &mut on_event, &cancel).await {
                Ok(r) => r.failures,
                Err(ApplyError::Failed { report }) => report.failures,
                Err(ApplyError::NotStarted { source }) => return Err(exec_error(source)),
                Err(e @ ApplyError::Conflicts(_)) => {
                    return Err(ActionError::new(ErrorCode::Conflict, e.to_string()));
                }
                Err(e @ ApplyError::Untrusted(_)) => {
                    return Err(ActionError::new(ErrorCode::UntrustedPackage, e.to_string()));
                }
                Err(e @ ApplyError::NeedsConfirmation(_)) => {
                    return Err(ActionError::new(
                        ErrorCode::NeedsConfirmation,
                        e.to_string(),
                    ));
                }
                Err(e) => return Err(ActionError::new(ErrorCode::PacmanFailed, e.to_string())),
            };
        Ok(failures
            .into_iter()
            .map(|(name, reason)| PackageFailure {
                name: name.to_string(),
                reason,
            })
            .collect())
    }

    /// What one transaction of `plan` does, from its command line: "2 upgrades, 1 install".
    /// Its targets (after `--`) are `repo/name=version`, package files or names; each
    /// counts the plan's action of that kind for that name.
    pub(super) fn transaction_summary(plan: &Plan, command: &str) -> String {
        let op = command.split_whitespace().nth(1).unwrap_or_default();
        let names: Vec<String> = command
            .split(" -- ")
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .map(|t| {
                let t = t.trim_matches('\'');
                let t = t.rsplit('/').next().unwrap_or(t);
                match t.split_once(".pkg.tar") {
                    // name-version-rel-arch.pkg.tar.*
                    Some((stem, _)) => stem.rsplitn(4, '-').nth(3).unwrap_or(stem).to_owned(),
                    None => t.split('=').next().unwrap_or(t).to_owned(),
                }
            })
            .collect();
        let mut c = Counts::default();
        for a in &plan.actions {
            if !names.iter().any(|n| n == a.name().as_str()) {
                continue;
            }
            match (op, a) {
                ("-S" | "-U", Action::Install { .. }) => c.install += 1,
                ("-S" | "-U", Action::Upgrade { .. }) => c.upgrade += 1,
                ("-S" | "-U", Action::Downgrade { .. }) => c.downgrade += 1,
                ("-R", Action::Remove { .. }) => c.remove += 1,
                ("-D", Action::MarkDependency { .. } | Action::MarkExplicit { .. }) => {
                    c.reason += 1
                }
                _ => {}
            }
        }
        if c.total() > 0 {
            c.summary()
        } else {
            crate::words::packages(names.len())
        }
    }

    fn exec_error(e: ExecError) -> ActionError {
        let code = match &e {
            ExecError::Busy { .. } => ErrorCode::Busy,
            ExecError::Cancelled => ErrorCode::Cancelled,
            ExecError::Invalid { .. } => ErrorCode::InvalidRequest,
            _ => ErrorCode::PacmanFailed,
        };
        ActionError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::in_window;

    #[test]
    fn a_damaged_entry_names_the_package_to_reinstall() {
        use crate::localdb::LocalDbError;
        use crate::machine::MachineError;
        let e = anyhow::Error::new(MachineError::LocalDb(LocalDbError::NameMismatch {
            path: "/var/lib/pacman/local/lib32-foo-bar-1:2.0-3/desc".into(),
            expected: "x".into(),
        }));
        let m = super::read_error_message(&e);
        assert!(
            m.contains(
                "move /var/lib/pacman/local/lib32-foo-bar-1:2.0-3 out of pacman's database, reinstall the package (`pacman -S --overwrite '*' lib32-foo-bar`)"
            ),
            "{m}"
        );
        let e = anyhow::Error::new(MachineError::LocalDb(LocalDbError::Io {
            path: "/var/lib/pacman/local/pkg08-2.0-1/desc".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }));
        let m = super::read_error_message(&e);
        assert!(
            m.contains(
                "move /var/lib/pacman/local/pkg08-2.0-1 out of pacman's database, reinstall the package (`pacman -S --overwrite '*' pkg08`)"
            ),
            "{m}"
        );
        let other = anyhow::anyhow!("no local pacman database");
        assert_eq!(
            super::read_error_message(&other),
            "cannot read pacman's state: no local pacman database"
        );
    }

    #[test]
    fn a_transaction_says_what_it_does() {
        use super::actions::transaction_summary;
        use crate::plan::{Action, Plan, Source};
        let name = |n: &str| n.parse().unwrap();
        let version = |v: &str| v.parse().unwrap();
        let plan = Plan {
            actions: vec![
                Action::Upgrade {
                    name: name("editor"),
                    from: version("1.0-1"),
                    to: version("1.1-1"),
                    arch: "x86_64".parse().unwrap(),
                    source: Source::Cache {
                        path: "/c/editor-1.1-1-x86_64.pkg.tar.zst".into(),
                    },
                },
                Action::Remove {
                    name: name("oldtool"),
                    version: version("1.0-1"),
                },
                Action::MarkDependency {
                    name: name("editor"),
                },
            ],
            conflicts: Vec::new(),
            skipped: Vec::new(),
            needs_confirmation: None,
        };
        assert_eq!(
            transaction_summary(
                &plan,
                "pacman -U --noconfirm -- /c/editor-1.1-1-x86_64.pkg.tar.zst"
            ),
            "1 upgrade"
        );
        assert_eq!(
            transaction_summary(&plan, "pacman -S --needed -- core/editor=1.1-1"),
            "1 upgrade"
        );
        assert_eq!(
            transaction_summary(&plan, "pacman -R --noconfirm -- oldtool"),
            "1 removal"
        );
        assert_eq!(
            transaction_summary(&plan, "pacman -D --asdeps -- editor"),
            "1 reason change"
        );
        assert_eq!(
            transaction_summary(&plan, "pacman -S -- core/x=1 core/y=2"),
            "2 packages"
        );
    }

    #[test]
    fn pool_losses_list_older_and_missing_packages() {
        use crate::snapshot::Snapshot;
        let snap = |text: &str| {
            Snapshot::decode(&format!("pacpool-snapshot 1\n{text}")).expect("valid snapshot")
        };
        let target = snap(
            "a 2.0-1 x86_64 e -\nb 1.0-1 x86_64 e -\nc 1.0-1 x86_64 e -\nd 1.0-1 x86_64 e -\n",
        );
        let current = snap(
            "a 1.5-1 x86_64 e -\nc 1.1-1 x86_64 e -\nd 1.0-1 x86_64 e -\ne 1.0-1 x86_64 e -\n",
        );
        let policy = crate::plan::Policy::default().compile().unwrap();
        let losses = super::pool_losses(&current, &target, &policy, crate::plan::Scope::Full);
        let text: Vec<String> = losses.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["a 2.0-1 → 1.5-1", "b 1.0-1 → removed"]);
    }

    #[test]
    fn auto_sync_windows() {
        let at = |h: i64, m: i64| 86_400 * 20_000 + h * 3600 + m * 60;
        assert_eq!(in_window("02:00-05:00", at(3, 0)), Ok(true));
        assert_eq!(in_window("02:00-05:00", at(5, 0)), Ok(false));
        assert_eq!(in_window("02:00-05:00", at(1, 59)), Ok(false));
        assert_eq!(in_window("22:00-06:00", at(23, 30)), Ok(true));
        assert_eq!(in_window("22:00-06:00", at(5, 59)), Ok(true));
        assert_eq!(in_window("22:00-06:00", at(12, 0)), Ok(false));
        assert!(in_window("25:00-06:00", 0).is_err());
        assert!(in_window("soon", 0).is_err());
    }
}
