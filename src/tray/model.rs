//! What the tray shows, computed from the daemon's [`LocalStatus`] (pure: no GTK, no I/O),
//! and which events become desktop notifications (with de-duplication).

use crate::daemon::protocol::{Event, LinkState, LocalStatus, Outcome, SetLatestPreview};
use crate::proto::{AutoSyncMode, EndpointState};
use crate::snapshot::SnapshotHash;
use crate::words;

use super::icons::IconKind;

/// `2026-11-22 00:40 UTC` from Unix seconds.
pub fn utc(secs: i64) -> String {
    format!("{} UTC", &crate::display::utc(secs)[..16])
}

/// The connection to pacpoold as the tray sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// Not connected yet, or the socket does not answer (with the reason).
    NotRunning(String),
    Up(Box<LocalStatus>),
}

/// A menu entry's label and whether it can be clicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub label: String,
    pub enabled: bool,
}

impl Entry {
    fn on(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            enabled: true,
        }
    }
    fn off(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            enabled: false,
        }
    }
}

/// Everything the tray displays for one state of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub icon: IconKind,
    pub tooltip: String,
    /// First menu line (disabled): state and pool.
    pub status_line: String,
    /// Second menu line (disabled): target and last sync.
    pub detail_line: String,
    pub sync: Entry,
    pub preview: Entry,
    /// The "Set as latest…" submenu's own label.
    pub set_latest: Entry,
    /// Lines in the submenu above the confirmation (disabled): what the pool would lose,
    /// what becomes of the other machines.
    pub set_latest_info: Vec<String>,
    pub set_latest_confirm: Entry,
    /// What clicking the confirmation confirms (`None`: nothing to confirm yet).
    pub set_latest_confirms: Option<SetLatestConfirm>,
    pub revert: Entry,
    pub pause: Entry,
    pub history: Entry,
}

/// The tray's last answer to "what would set-latest do to the pool?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetLatestAnswer {
    Preview(Box<SetLatestPreview>),
    /// pacpoold could not say (why); asked again at the next status change.
    Failed(String),
}

/// What the user confirmed by clicking "Confirm" in the set-latest submenu: exactly the
/// preview the label was made from (carried in the menu item's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetLatestConfirm {
    pub state: SnapshotHash,
    pub target_revision: Option<u64>,
    pub allow_older: bool,
}

impl SetLatestConfirm {
    const PREFIX: &'static str = "set-latest:";

    /// The menu item id: `set-latest:<state>:<revision or ->:<older 0|1>`.
    pub fn menu_id(&self) -> String {
        format!(
            "{}{}:{}:{}",
            Self::PREFIX,
            self.state.to_hex(),
            self.target_revision
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            u8::from(self.allow_older)
        )
    }

    pub fn from_menu_id(id: &str) -> Option<Self> {
        let mut parts = id.strip_prefix(Self::PREFIX)?.split(':');
        let state: SnapshotHash =
            serde_json::from_value(serde_json::Value::String(parts.next()?.to_owned())).ok()?;
        let target_revision = match parts.next()? {
            "-" => None,
            r => Some(r.parse().ok()?),
        };
        let allow_older = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(Self {
            state,
            target_revision,
            allow_older,
        })
    }
}

fn icon_for(s: &LocalStatus) -> IconKind {
    match (s.operation.is_some(), s.state, s.link) {
        (true, _, _) | (_, EndpointState::Syncing, _) => IconKind::Syncing,
        (_, EndpointState::Error, _) => IconKind::Error,
        (_, _, LinkState::Offline) => IconKind::Offline,
        (_, EndpointState::InSync, _) => IconKind::InSync,
        (_, EndpointState::Behind | EndpointState::Held, _) => IconKind::Behind,
        (_, EndpointState::Ahead, _) => IconKind::Ahead,
        (_, EndpointState::Diverged, _) => IconKind::Diverged,
        (_, EndpointState::Offline, _) => IconKind::Offline,
        (_, EndpointState::Unknown, _) => IconKind::Unknown,
    }
}

fn state_words(k: IconKind) -> &'static str {
    match k {
        IconKind::InSync => "in sync",
        IconKind::Behind => "behind",
        IconKind::Ahead => "ahead",
        IconKind::Diverged => "diverged",
        IconKind::Syncing => "syncing",
        IconKind::Offline => "offline (coordinator unreachable)",
        IconKind::NotRunning => "pacpoold not running",
        IconKind::Error => "error",
        IconKind::Unknown => "no pool target",
    }
}

impl View {
    /// What the tray shows for `daemon`; `set_latest` is the last set-latest preview, used
    /// only when it was computed for the state and target the status shows.
    pub fn of(daemon: &Daemon, set_latest_answer: Option<&SetLatestAnswer>) -> View {
        let s = match daemon {
            Daemon::NotRunning(why) => {
                let reason = format!("pacpoold is not running ({why})");
                return View {
                    icon: IconKind::NotRunning,
                    tooltip: format!("pacpool: {reason}"),
                    status_line: "pacpool: pacpoold not running".into(),
                    detail_line: "waiting for pacpoold to start…".into(),
                    sync: Entry::off("Sync to latest (pacpoold not running)"),
                    preview: Entry::off("Preview… (pacpoold not running)"),
                    set_latest: Entry::off("Set as latest… (pacpoold not running)"),
                    set_latest_info: Vec::new(),
                    set_latest_confirm: Entry::off("Confirm"),
                    set_latest_confirms: None,
                    revert: Entry::off("Revert to previous (pacpoold not running)"),
                    pause: Entry::off("Pause auto-sync (pacpoold not running)"),
                    history: Entry::off("History… (pacpoold not running)"),
                };
            }
            Daemon::Up(s) => s,
        };
        let icon = icon_for(s);
        let pool = s.pool.as_deref().unwrap_or("no pool");
        let words = if s.state == EndpointState::Held && icon == IconKind::Behind {
            "on hold"
        } else {
            state_words(icon)
        };
        let mut status_line = format!("pacpool: {words} — {pool}");
        if let Some(op) = &s.operation {
            status_line = format!("pacpool: {} running — {pool}", op.kind);
            if let Some(p) = &op.progress {
                status_line.push_str(&format!(" ({} {}%)", p.stage, p.percent));
            }
        }
        let target_text = match &s.target {
            Some(t) => format!("target revision {} set by {}", t.revision, t.set_by),
            None => "no target yet".to_owned(),
        };
        let last_sync = s.last_sync.map_or_else(
            || "never synced".to_owned(),
            |t| format!("last sync {}", utc(t)),
        );
        // In a pool with rings: which wave, and when ("your machine gets revision 42 in
        // wave 2, from Saturday 02:00 UTC"); a hold says until when and why.
        let detail_line = match &s.rollout {
            Some(r) => crate::display::clean(&r.message),
            None => format!("{target_text}; {last_sync}"),
        };
        let mut tooltip = vec![status_line.clone(), target_text.clone()];
        if let Some(r) = &s.rollout {
            tooltip.push(crate::display::clean(&r.message));
        }
        tooltip.push(format!("pending: {}", s.pending()));
        tooltip.push(last_sync.clone());
        if let Some(e) = &s.last_error {
            tooltip.push(format!("last error: {e}"));
        }

        // Why actions are off, if they are: the peer's rights first, then a running operation.
        let blocked: Option<String> = if !s.can_act {
            Some(format!(
                "not allowed: {}",
                s.why_not
                    .as_deref()
                    .unwrap_or("you may not run actions on this machine")
            ))
        } else {
            s.operation
                .as_ref()
                .map(|op| format!("busy with {}", op.kind))
        };
        let gated = |label: String, also: Option<&str>| match (&blocked, also) {
            (Some(why), _) => Entry::off(format!("{label} ({why})")),
            (None, Some(why)) => Entry::off(format!("{label} ({why})")),
            (None, None) => Entry::on(label),
        };
        let pending = s.counts.total() > 0;
        let sync = match (&s.target, pending) {
            (None, _) => gated("Sync to latest".into(), Some("no pool target yet")),
            (Some(_), false) => Entry::off("Sync to latest — nothing to do"),
            (Some(_), true) => gated(
                if s.needs_refresh {
                    format!(
                        "Sync to latest — {} (after a database refresh)",
                        s.counts.summary()
                    )
                } else {
                    format!("Sync to latest — {}", s.counts.summary())
                },
                None,
            ),
        };
        let preview = if s.target.is_some() {
            Entry::on("Preview…")
        } else {
            Entry::off("Preview… (no pool target yet)")
        };
        let offline = matches!(
            s.link,
            LinkState::Offline | LinkState::NotConfigured | LinkState::Unregistered
        )
        .then_some("coordinator not reachable");
        let set_latest = gated("Set as latest…".into(), offline);
        // The confirmation only from a preview of exactly this state and target.
        let fresh = match set_latest_answer {
            Some(SetLatestAnswer::Preview(p))
                if s.current.as_ref().map(|c| c.hash) == Some(p.state)
                    && s.target.as_ref().map(|t| t.revision) == p.target_revision =>
            {
                Some(p)
            }
            _ => None,
        };
        let (set_latest_info, set_latest_confirm, set_latest_confirms) = match fresh {
            _ if !set_latest.enabled => (Vec::new(), Entry::off("Confirm"), None),
            None if let Some(SetLatestAnswer::Failed(why)) = set_latest_answer => (
                Vec::new(),
                Entry::off(format!("Confirm (cannot tell what it would change: {why})")),
                None,
            ),
            None => (
                Vec::new(),
                Entry::off("Confirm (checking what it would change…)"),
                None,
            ),
            Some(p) => {
                let mut info = Vec::new();
                if let Some(head) = p.loss_header() {
                    // One package a line: a menu is read down, not across.
                    const SHOWN: usize = 4;
                    info.push(format!("Warning: {head}:"));
                    info.extend(p.losses.iter().take(SHOWN).map(|l| format!("    {l}")));
                    if p.losses.len() > SHOWN {
                        info.push(format!("    … and {} more", p.losses.len() - SHOWN));
                    }
                }
                info.push(format!("Then {}", p.others_line()));
                let confirm = if p.goes_back() {
                    "Confirm anyway"
                } else {
                    "Confirm"
                };
                (
                    info,
                    Entry::on(format!(
                        "{confirm}: set pool {pool} to this machine ({})",
                        words::packages(p.packages)
                    )),
                    Some(SetLatestConfirm {
                        state: p.state,
                        target_revision: p.target_revision,
                        allow_older: p.goes_back(),
                    }),
                )
            }
        };
        let revert = match &s.previous {
            Some(p) => {
                let changes = match s.revert_changes {
                    Some(c) if c.total() > 0 => c.summary(),
                    Some(_) => "no package changes".to_owned(),
                    // An older daemon: the snapshot's size instead.
                    None => words::packages(p.package_count),
                };
                gated(
                    format!("Revert to previous ({}: {changes})", utc(p.taken_at)),
                    None,
                )
            }
            None => Entry::off("Revert to previous (no earlier state recorded)"),
        };
        let pause_label = if s.auto_sync_paused {
            "Resume auto-sync"
        } else {
            "Pause auto-sync"
        };
        let pause = match &blocked {
            Some(why) if !s.can_act => Entry::off(format!("{pause_label} ({why})")),
            _ => Entry::on(pause_label),
        };
        View {
            icon,
            tooltip: tooltip.join("\n"),
            status_line,
            detail_line,
            sync,
            preview,
            set_latest,
            set_latest_info,
            set_latest_confirm,
            set_latest_confirms,
            revert,
            pause,
            history: Entry::on("History…"),
        }
    }
}

/// A desktop notification to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub summary: String,
    pub body: String,
    /// Shown with critical urgency (failures).
    pub critical: bool,
    /// Offer "Sync now" as the notification's default action (where the notification server
    /// supports actions); set for "new target" and "behind" when this user may act.
    pub sync_now: bool,
}

fn kind_title(kind: &str) -> String {
    match kind {
        "sync" => "Sync".into(),
        "set-latest" => "Set as latest".into(),
        "revert" => "Revert".into(),
        other => other.to_owned(),
    }
}

/// Turns the daemon's events into notifications, each at most once.
///
/// De-duplication: a target change is announced once per revision (and not at all when this
/// machine set it); "fell behind" once per revision, and not when the target change was
/// announced; an operation's start once until it finishes; a finish once per start. State
/// survives reconnects, so a daemon restart does not repeat anything.
#[derive(Debug, Default)]
pub struct Notifier {
    announced_revision: Option<u64>,
    behind_revision: Option<u64>,
    running: Option<String>,
    last: Option<Box<LocalStatus>>,
    /// When the last announced move off the target was recorded.
    off_target_at: Option<i64>,
}

impl Notifier {
    pub fn on_event(&mut self, event: &Event) -> Option<Note> {
        match event {
            Event::TargetChanged {
                target,
                summary,
                this_machine,
            } => {
                if self
                    .announced_revision
                    .is_some_and(|r| r >= target.revision)
                {
                    return None;
                }
                self.announced_revision = Some(target.revision);
                let me = self.last.as_ref().and_then(|s| s.endpoint.clone());
                if me.as_deref() == Some(target.set_by.as_str()) {
                    return None;
                }
                let pool = self
                    .last
                    .as_ref()
                    .and_then(|s| s.pool.clone())
                    .unwrap_or_else(|| "the pool".into());
                let mut body = format!(
                    "{} set revision {} ({})",
                    target.set_by,
                    target.revision,
                    words::packages(target.package_count)
                );
                if summary.total() > 0 {
                    body.push_str(&format!(
                        "; against the previous target: {}",
                        summary.summary()
                    ));
                }
                body.push('.');
                let needs = this_machine.filter(|c| c.total() > 0);
                match needs {
                    Some(c) => {
                        body.push_str(&format!("\nThis machine: {} to reach it.", c.summary()))
                    }
                    None if this_machine.is_some() => {
                        body.push_str("\nThis machine already matches it.")
                    }
                    None => {}
                }
                let can_act = self.last.as_ref().is_some_and(|s| s.can_act);
                if needs.is_some()
                    && let Some(s) = &self.last
                {
                    body.push('\n');
                    body.push_str(&when_applied(s));
                }
                Some(Note {
                    summary: format!("{pool}: new target from {}", target.set_by),
                    body,
                    critical: false,
                    sync_now: can_act && needs.is_some(),
                })
            }
            Event::OperationStarted { kind } => {
                if self.running.as_deref() == Some(kind) {
                    return None;
                }
                self.running = Some(kind.clone());
                Some(Note {
                    summary: format!("{} started", kind_title(kind)),
                    body: self
                        .last
                        .as_deref()
                        .map_or_else(String::new, |s| started_body(kind, s)),
                    critical: false,
                    sync_now: false,
                })
            }
            Event::OperationFinished { outcome } => {
                self.running = None;
                Some(finished_note(outcome))
            }
            Event::Progress { .. } => None,
            Event::Status { status } => {
                let note = self.on_status(status);
                self.last = Some(status.clone());
                note
            }
        }
    }

    fn on_status(&mut self, s: &LocalStatus) -> Option<Note> {
        if let Some(note) = self.off_target(s) {
            return Some(note);
        }
        let behind = matches!(s.state, EndpointState::Behind | EndpointState::Diverged);
        let rev = s.target.as_ref().map(|t| t.revision)?;
        if !behind || s.operation.is_some() {
            return None;
        }
        if self.behind_revision == Some(rev) || self.announced_revision == Some(rev) {
            return None;
        }
        self.behind_revision = Some(rev);
        Some(Note {
            summary: format!(
                "This machine is behind {}",
                s.pool.as_deref().unwrap_or("its pool")
            ),
            body: format!(
                "Target revision {} (set by {}): {}.",
                rev,
                s.target.as_ref().map_or("?", |t| t.set_by.as_str()),
                s.pending()
            ),
            critical: false,
            sync_now: s.can_act,
        })
    }
}

impl Notifier {
    /// Once per move: the machine was in sync and someone else than pacpool (pacman run by
    /// hand, or an unknown change) moved it ahead or diverged. A pacpool revert is the user's
    /// own request and is not announced again.
    fn off_target(&mut self, s: &LocalStatus) -> Option<Note> {
        let off = s.off_target.as_ref()?;
        if self.off_target_at == Some(off.at)
            || matches!(off.source, Some(crate::proto::ChangeSource::Pacpool { .. }))
        {
            return None;
        }
        self.off_target_at = Some(off.at);
        Some(Note {
            summary: format!(
                "This machine left the target of {}",
                s.pool.as_deref().unwrap_or("its pool")
            ),
            body: format!(
                "It was {off}.\n`pacpool revert` takes it back; Sync returns it to the target."
            ),
            critical: false,
            sync_now: false,
        })
    }
}

/// When a new target reaches this machine, from its auto-sync settings.
fn when_applied(s: &LocalStatus) -> String {
    match (s.auto_sync, s.auto_sync_paused, &s.auto_sync_window) {
        (AutoSyncMode::Apply, false, None) => "Auto-sync applies it now.".into(),
        (AutoSyncMode::Apply, false, Some(w)) => {
            format!("Auto-sync applies it in the next window ({w} UTC), or use Sync now.")
        }
        (AutoSyncMode::Apply, true, _) => "Auto-sync is paused: use Sync now to apply it.".into(),
        (AutoSyncMode::Notify | AutoSyncMode::Off, _, _) => {
            "Nothing changes until you use Sync now.".into()
        }
    }
}

/// What an operation that just started is about to do, from the last status.
fn started_body(kind: &str, s: &LocalStatus) -> String {
    match kind {
        "sync" => match &s.target {
            Some(t) => format!("To target revision {}: {}.", t.revision, s.pending()),
            None => String::new(),
        },
        "revert" => match (&s.previous, s.revert_changes) {
            (Some(p), Some(c)) => format!(
                "Back to the state recorded {}: {}.",
                utc(p.taken_at),
                c.summary()
            ),
            (Some(p), None) => format!("Back to the state recorded {}.", utc(p.taken_at)),
            (None, _) => String::new(),
        },
        "set-latest" => format!(
            "Making this machine's {} the target of {}.",
            words::packages(s.current.as_ref().map_or(0, |c| c.package_count)),
            s.pool.as_deref().unwrap_or("the pool")
        ),
        _ => String::new(),
    }
}

pub fn finished_note(o: &Outcome) -> Note {
    let title = kind_title(&o.kind);
    // `pacpool cancel` is honoured only before pacman starts (the daemon's wording).
    if !o.ok && o.message.starts_with("cancelled") {
        return Note {
            summary: format!("{title} cancelled"),
            body: format!("{}; nothing was changed.", o.message),
            critical: false,
            sync_now: false,
        };
    }
    let mut body = o.message.clone();
    if !body.ends_with('.') {
        body.push('.');
    }
    for f in o.failures.iter().take(5) {
        body.push_str(&format!("\n{}: {}", f.name, f.reason));
    }
    if o.failures.len() > 5 {
        body.push_str(&format!("\n… and {} more", o.failures.len() - 5));
    }
    if !o.ok {
        body.push_str(match o.kind.as_str() {
            "set-latest" => "\nNothing was changed on the pool. Open \"Set as latest…\" again to see why and what it would change.",
            _ if o.failures.is_empty() => "\nNext: fix the cause above, then try again (`pacpool preview` shows what is left).",
            _ => "\nNext: `pacpool preview` shows what is left; `pacpool history` keeps this result.",
        });
    }
    Note {
        summary: if o.ok {
            format!("{title} finished")
        } else {
            format!("{title} failed")
        },
        body,
        critical: !o.ok,
        sync_now: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Counts;
    use crate::proto::{AutoSyncMode, TargetInfo};
    use crate::snapshot::Snapshot;

    fn status(state: EndpointState, rev: Option<u64>) -> Box<LocalStatus> {
        Box::new(LocalStatus {
            state,
            counts: Counts {
                upgrade: 3,
                downgrade: 1,
                ..Default::default()
            },
            kept: Vec::new(),
            endpoint: Some("bob".into()),
            pool: Some("lab".into()),
            pool_endpoints: Some(4),
            link: LinkState::Connected,
            target: rev.map(target),
            current: None,
            previous: None,
            operation: None,
            last_error: None,
            last_sync: Some(1_763_771_400),
            auto_sync: AutoSyncMode::Notify,
            auto_sync_paused: false,
            can_act: true,
            why_not: None,
            revert_changes: None,
            needs_refresh: false,
            auto_sync_window: None,
            off_target: None,
            rollout: None,
        })
    }

    fn target(revision: u64) -> TargetInfo {
        TargetInfo {
            pool_id: 1,
            revision,
            snapshot: Snapshot::default().hash(),
            package_count: 12,
            set_by_endpoint: Some(1),
            set_by: "alice".into(),
            set_at: 0,
            reverted_from: None,
        }
    }

    #[test]
    fn rollout_wave_and_hold_texts() {
        let position = |hold: Option<crate::proto::Hold>, message: &str| {
            Some(crate::proto::RolloutPosition {
                revision: 42,
                offered_revision: Some(41),
                wave: 2,
                waves: 3,
                ring: "early".into(),
                state: Some(crate::proto::RolloutState::Active),
                not_before: None,
                hold,
                message: message.into(),
            })
        };
        let mut s = status(EndpointState::InSync, Some(41));
        s.rollout = position(
            None,
            "your machine gets revision 42 in wave 2, from Saturday 2026-12-12 02:00 UTC",
        );
        let v = View::of(&Daemon::Up(s), None);
        assert_eq!(
            v.detail_line,
            "your machine gets revision 42 in wave 2, from Saturday 2026-12-12 02:00 UTC"
        );
        assert!(v.tooltip.contains("in wave 2"), "{}", v.tooltip);
        let mut s = status(EndpointState::Held, Some(41));
        s.rollout = position(
            Some(crate::proto::Hold {
                reason: "waiting for the driver fix".into(),
                until: 1_797_724_800,
                set_by: "admin".into(),
                revision: Some(41),
            }),
            "on hold until 2026-12-20: waiting for the driver fix",
        );
        let v = View::of(&Daemon::Up(s), None);
        assert_eq!(v.status_line, "pacpool: on hold — lab");
        assert_eq!(
            v.detail_line,
            "on hold until 2026-12-20: waiting for the driver fix"
        );
    }

    #[test]
    fn utc_formats_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_763_771_400), "2025-11-22 00:30 UTC");
    }

    #[test]
    fn view_labels_counts_and_reasons() {
        let v = View::of(&Daemon::Up(status(EndpointState::Behind, Some(4))), None);
        assert_eq!(v.icon, IconKind::Behind);
        assert_eq!(
            v.sync,
            Entry::on("Sync to latest — 3 upgrades, 1 downgrade")
        );
        assert!(
            v.tooltip.contains("target revision 4 set by alice"),
            "{}",
            v.tooltip
        );
        assert!(v.tooltip.contains("last sync 2025-11-22 00:30 UTC"));
        // No preview yet: nothing to confirm.
        assert_eq!(
            v.set_latest_confirm,
            Entry::off("Confirm (checking what it would change…)")
        );
        assert!(v.set_latest_confirms.is_none());
        let mut back = status(EndpointState::Ahead, Some(4));
        back.previous = Some(crate::store::HistoryEntry {
            id: 1,
            hash: Snapshot::default().hash(),
            taken_at: 1_763_771_400,
            trigger: "hook".into(),
            package_count: 7,
            source: None,
            snapper: None,
        });
        back.revert_changes = Some(Counts {
            install: 1,
            remove: 2,
            ..Default::default()
        });
        assert_eq!(
            View::of(&Daemon::Up(back.clone()), None).revert,
            Entry::on("Revert to previous (2025-11-22 00:30 UTC: 1 install, 2 removals)")
        );
        back.revert_changes = None;
        assert_eq!(
            View::of(&Daemon::Up(back), None).revert.label,
            "Revert to previous (2025-11-22 00:30 UTC: 7 packages)"
        );
        let mut needs = status(EndpointState::Behind, Some(4));
        needs.needs_refresh = true;
        assert_eq!(
            View::of(&Daemon::Up(needs), None).sync.label,
            "Sync to latest — 3 upgrades, 1 downgrade (after a database refresh)"
        );

        let mut s = status(EndpointState::Behind, Some(4));
        s.can_act = false;
        s.why_not = Some("not in group wheel".into());
        let v = View::of(&Daemon::Up(s), None);
        assert!(!v.sync.enabled);
        assert!(
            v.sync.label.ends_with("(not allowed: not in group wheel)"),
            "{}",
            v.sync.label
        );
        assert!(!v.pause.enabled && v.preview.enabled);

        let v = View::of(&Daemon::NotRunning("connection refused".into()), None);
        assert_eq!(v.icon, IconKind::NotRunning);
        assert!(!v.sync.enabled);

        let mut s = status(EndpointState::InSync, Some(4));
        s.counts = Counts::default();
        s.link = LinkState::Offline;
        let v = View::of(&Daemon::Up(s), None);
        assert_eq!(v.icon, IconKind::Offline);
        assert!(!v.sync.enabled && !v.set_latest.enabled);
    }

    fn preview(state: SnapshotHash, losses: usize) -> SetLatestPreview {
        use crate::daemon::protocol::PoolLoss;
        use crate::proto::WhatIfEndpoint;
        SetLatestPreview {
            pool: Some("lab".into()),
            state,
            packages: 1,
            target_revision: Some(4),
            relation: EndpointState::Behind,
            losses: (0..losses)
                .map(|i| PoolLoss {
                    name: format!("pkg{i}"),
                    from: "2.0-1".into(),
                    to: (i % 2 == 0).then(|| "1.0-1".into()),
                })
                .collect(),
            others: Some(vec![WhatIfEndpoint {
                id: 1,
                name: "alice".into(),
                now: EndpointState::InSync,
                after: EndpointState::Ahead,
                counts_after: Counts {
                    downgrade: 1,
                    ..Default::default()
                },
            }]),
            others_error: None,
        }
    }

    #[test]
    fn set_latest_confirmation_says_what_the_pool_loses() {
        let mut s = status(EndpointState::Behind, Some(4));
        let hash = Snapshot::default().hash();
        s.current = Some(crate::store::HistoryEntry {
            id: 2,
            hash,
            taken_at: 0,
            trigger: "start".into(),
            package_count: 1,
            source: None,
            snapper: None,
        });
        let p = preview(hash, 4);
        let answer = SetLatestAnswer::Preview(Box::new(p.clone()));
        let v = View::of(&Daemon::Up(s.clone()), Some(&answer));
        assert_eq!(
            v.set_latest_info,
            [
                "Warning: this machine is behind the target: the pool would go back 4 packages:",
                "    pkg0 2.0-1 → 1.0-1",
                "    pkg1 2.0-1 → removed",
                "    pkg2 2.0-1 → 1.0-1",
                "    pkg3 2.0-1 → removed",
                "Then alice becomes ahead"
            ]
        );
        assert_eq!(
            v.set_latest_confirm,
            Entry::on("Confirm anyway: set pool lab to this machine (1 package)")
        );
        let c = v.set_latest_confirms.expect("confirmable");
        assert!(c.allow_older);
        assert_eq!(SetLatestConfirm::from_menu_id(&c.menu_id()), Some(c));
        assert_eq!(SetLatestConfirm::from_menu_id("set-latest"), None);

        // Nothing goes back: no warning, no allow-older.
        let v = View::of(
            &Daemon::Up(s.clone()),
            Some(&SetLatestAnswer::Preview(Box::new(preview(hash, 0)))),
        );
        assert_eq!(v.set_latest_info, ["Then alice becomes ahead"]);
        assert!(!v.set_latest_confirms.unwrap().allow_older);

        // A preview of another state (or target) is not shown.
        let mut moved = s.clone();
        moved.target = Some(target(5));
        let v = View::of(&Daemon::Up(moved), Some(&answer));
        assert!(v.set_latest_confirms.is_none() && !v.set_latest_confirm.enabled);
        // pacpoold could not say: the menu says so instead of "checking" for ever.
        let failed = SetLatestAnswer::Failed("cannot read pacman's state".into());
        assert_eq!(
            View::of(&Daemon::Up(s), Some(&failed)).set_latest_confirm,
            Entry::off("Confirm (cannot tell what it would change: cannot read pacman's state)")
        );
    }

    #[test]
    fn notifications_are_not_repeated() {
        let mut n = Notifier::default();
        assert!(
            n.on_event(&Event::Status {
                status: status(EndpointState::InSync, Some(3))
            })
            .is_none()
        );
        let changed = Event::TargetChanged {
            target: target(4),
            summary: Counts {
                upgrade: 2,
                ..Default::default()
            },
            this_machine: Some(Counts {
                install: 2,
                ..Default::default()
            }),
        };
        let note = n.on_event(&changed).expect("announced");
        assert_eq!(note.summary, "lab: new target from alice");
        assert!(note.sync_now, "offers Sync now to a user who may act");
        assert!(
            note.body
                .contains("revision 4 (12 packages); against the previous target: 2 upgrades.\nThis machine: 2 installs to reach it.\nNothing changes until you use Sync now."),
            "{}",
            note.body
        );
        assert!(n.on_event(&changed).is_none(), "same revision twice");
        // The status that follows says "behind": already announced.
        assert!(
            n.on_event(&Event::Status {
                status: status(EndpointState::Behind, Some(4))
            })
            .is_none()
        );
        // Moved off the target by pacman run by hand: once, with the command line.
        let mut ahead = status(EndpointState::Ahead, Some(4));
        ahead.off_target = Some(crate::daemon::protocol::OffTarget {
            at: 1_763_771_400,
            revision: Some(4),
            source: Some(crate::proto::ChangeSource::Pacman {
                runs: vec![crate::proto::PacmanRun {
                    at: "2025-11-22T00:30:00+0000".into(),
                    command: "pacman -S extra".into(),
                }],
                more: 0,
            }),
        });
        let e = Event::Status {
            status: ahead.clone(),
        };
        let note = n.on_event(&e).expect("announced");
        assert_eq!(note.summary, "This machine left the target of lab");
        assert_eq!(
            note.body,
            "It was moved off the target (revision 4) at 2025-11-22 00:30:00 UTC by pacman: 'pacman -S extra' at 2025-11-22T00:30:00+0000.\n`pacpool revert` takes it back; Sync returns it to the target."
        );
        assert!(n.on_event(&e).is_none(), "once");
        // A pacpool revert that left the target is the user's own doing: not announced.
        let mut fresh = Notifier::default();
        ahead.off_target.as_mut().unwrap().source = Some(crate::proto::ChangeSource::Pacpool {
            operation: "revert".into(),
            local_id: Some(2),
            requested: None,
        });
        assert!(fresh.on_event(&Event::Status { status: ahead }).is_none());
        // Behind without an announcement (e.g. at start): once.
        let mut fresh = Notifier::default();
        let e = Event::Status {
            status: status(EndpointState::Behind, Some(4)),
        };
        assert!(fresh.on_event(&e).unwrap().summary.contains("behind lab"));
        assert!(fresh.on_event(&e).is_none());

        let start = Event::OperationStarted {
            kind: "sync".into(),
        };
        let started = n.on_event(&start).unwrap();
        assert_eq!(
            (started.summary.as_str(), started.body.as_str()),
            (
                "Sync started",
                "To target revision 4: 3 upgrades, 1 downgrade."
            )
        );
        assert!(n.on_event(&start).is_none());
        let done = Event::OperationFinished {
            outcome: Outcome {
                kind: "sync".into(),
                ok: false,
                message: "pacman failed".into(),
                counts: Counts::default(),
                failures: Vec::new(),
                snapshot: None,
                ..Default::default()
            },
        };
        let note = n.on_event(&done).unwrap();
        assert_eq!(note.summary, "Sync failed");
        assert!(
            note.body.starts_with("pacman failed.\nNext: "),
            "{}",
            note.body
        );

        // A target set by this machine is not announced.
        let mut mine = target(5);
        mine.set_by = "bob".into();
        assert!(
            n.on_event(&Event::TargetChanged {
                target: mine,
                summary: Counts::default(),
                this_machine: None,
            })
            .is_none()
        );
    }
}
