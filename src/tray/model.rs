//! What the tray shows, computed from the daemon's [`LocalStatus`] (pure: no GTK, no I/O),
//! and which events become desktop notifications (with de-duplication).

use crate::daemon::protocol::{Event, LinkState, LocalStatus, Outcome};
use crate::proto::EndpointState;

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
    pub set_latest: Entry,
    pub set_latest_confirm: Entry,
    pub revert: Entry,
    pub pause: Entry,
    pub history: Entry,
}

fn icon_for(s: &LocalStatus) -> IconKind {
    match (s.operation.is_some(), s.state, s.link) {
        (true, _, _) | (_, EndpointState::Syncing, _) => IconKind::Syncing,
        (_, EndpointState::Error, _) => IconKind::Error,
        (_, _, LinkState::Offline) => IconKind::Offline,
        (_, EndpointState::InSync, _) => IconKind::InSync,
        (_, EndpointState::Behind, _) => IconKind::Behind,
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
    pub fn of(daemon: &Daemon) -> View {
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
                    set_latest_confirm: Entry::off("Confirm"),
                    revert: Entry::off("Revert to previous (pacpoold not running)"),
                    pause: Entry::off("Pause auto-sync (pacpoold not running)"),
                    history: Entry::off("History… (pacpoold not running)"),
                };
            }
            Daemon::Up(s) => s,
        };
        let icon = icon_for(s);
        let pool = s.pool.as_deref().unwrap_or("no pool");
        let mut status_line = format!("pacpool: {} — {pool}", state_words(icon));
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
        let detail_line = format!("{target_text}; {last_sync}");
        let mut tooltip = vec![status_line.clone(), target_text.clone()];
        tooltip.push(format!("pending: {}", s.counts.summary()));
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
            (Some(_), true) => gated(format!("Sync to latest — {}", s.counts.summary()), None),
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
        let packages = s.current.as_ref().map_or(0, |c| c.package_count);
        let set_latest = gated("Set as latest…".into(), offline);
        let others = match s.pool_endpoints.map(|n| n.saturating_sub(1)) {
            None => "every other machine in it becomes behind".to_owned(),
            Some(0) => "no other machine is in it yet".to_owned(),
            Some(1) => "the 1 other machine in it becomes behind".to_owned(),
            Some(n) => format!("the {n} other machines in it become behind"),
        };
        let set_latest_confirm = gated(
            format!("Confirm: set pool {pool} to this machine ({packages} packages); {others}"),
            offline,
        );
        let revert = match &s.previous {
            Some(p) => {
                let changes = match s.revert_changes {
                    Some(c) if c.total() > 0 => c.summary(),
                    Some(_) => "no package changes".to_owned(),
                    // An older daemon: the snapshot's size instead.
                    None => format!("{} packages", p.package_count),
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
            set_latest_confirm,
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
}

impl Notifier {
    pub fn on_event(&mut self, event: &Event) -> Option<Note> {
        match event {
            Event::TargetChanged { target, summary } => {
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
                Some(Note {
                    summary: format!("{pool}: new target from {}", target.set_by),
                    body: if summary.total() == 0 {
                        format!(
                            "{} set revision {} ({} packages).",
                            target.set_by, target.revision, target.package_count
                        )
                    } else {
                        format!(
                            "{} set revision {} ({} packages); against the previous target: {}.",
                            target.set_by,
                            target.revision,
                            target.package_count,
                            summary.summary()
                        )
                    },
                    critical: false,
                    sync_now: self.last.as_ref().is_some_and(|s| s.can_act),
                })
            }
            Event::OperationStarted { kind } => {
                if self.running.as_deref() == Some(kind) {
                    return None;
                }
                self.running = Some(kind.clone());
                Some(Note {
                    summary: format!("{} started", kind_title(kind)),
                    body: String::new(),
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
                s.counts.summary()
            ),
            critical: false,
            sync_now: s.can_act,
        })
    }
}

pub fn finished_note(o: &Outcome) -> Note {
    let title = kind_title(&o.kind);
    let mut body = o.message.clone();
    for f in o.failures.iter().take(5) {
        body.push_str(&format!("\n{}: {}", f.name, f.reason));
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
    fn utc_formats_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_763_771_400), "2025-11-22 00:30 UTC");
    }

    #[test]
    fn view_labels_counts_and_reasons() {
        let v = View::of(&Daemon::Up(status(EndpointState::Behind, Some(4))));
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
        assert!(
            v.set_latest_confirm
                .label
                .contains("set pool lab to this machine"),
            "{}",
            v.set_latest_confirm.label
        );
        assert!(
            v.set_latest_confirm
                .label
                .ends_with("; the 3 other machines in it become behind"),
            "{}",
            v.set_latest_confirm.label
        );
        let mut back = status(EndpointState::Ahead, Some(4));
        back.previous = Some(crate::store::HistoryEntry {
            id: 1,
            hash: Snapshot::default().hash(),
            taken_at: 1_763_771_400,
            trigger: "hook".into(),
            package_count: 7,
        });
        back.revert_changes = Some(Counts {
            install: 1,
            remove: 2,
            ..Default::default()
        });
        assert_eq!(
            View::of(&Daemon::Up(back.clone())).revert,
            Entry::on("Revert to previous (2025-11-22 00:30 UTC: 1 install, 2 removals)")
        );
        back.revert_changes = None;
        assert_eq!(
            View::of(&Daemon::Up(back)).revert.label,
            "Revert to previous (2025-11-22 00:30 UTC: 7 packages)"
        );
        let mut alone = status(EndpointState::Ahead, Some(4));
        alone.pool_endpoints = Some(1);
        let v = View::of(&Daemon::Up(alone));
        assert!(
            v.set_latest_confirm
                .label
                .ends_with("no other machine is in it yet")
        );

        let mut s = status(EndpointState::Behind, Some(4));
        s.can_act = false;
        s.why_not = Some("not in group wheel".into());
        let v = View::of(&Daemon::Up(s));
        assert!(!v.sync.enabled);
        assert!(
            v.sync.label.ends_with("(not allowed: not in group wheel)"),
            "{}",
            v.sync.label
        );
        assert!(!v.pause.enabled && v.preview.enabled);

        let v = View::of(&Daemon::NotRunning("connection refused".into()));
        assert_eq!(v.icon, IconKind::NotRunning);
        assert!(!v.sync.enabled);

        let mut s = status(EndpointState::InSync, Some(4));
        s.counts = Counts::default();
        s.link = LinkState::Offline;
        let v = View::of(&Daemon::Up(s));
        assert_eq!(v.icon, IconKind::Offline);
        assert!(!v.sync.enabled && !v.set_latest.enabled);
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
        };
        let note = n.on_event(&changed).expect("announced");
        assert_eq!(note.summary, "lab: new target from alice");
        assert!(note.sync_now, "offers Sync now to a user who may act");
        assert!(
            note.body
                .contains("revision 4 (12 packages); against the previous target: 2 upgrades"),
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
        assert_eq!(n.on_event(&start).unwrap().summary, "Sync started");
        assert!(n.on_event(&start).is_none());
        let done = Event::OperationFinished {
            outcome: Outcome {
                kind: "sync".into(),
                ok: false,
                message: "pacman failed".into(),
                counts: Counts::default(),
                failures: Vec::new(),
                snapshot: None,
            },
        };
        let note = n.on_event(&done).unwrap();
        assert_eq!(
            (note.summary.as_str(), note.body.as_str()),
            ("Sync failed", "pacman failed")
        );

        // A target set by this machine is not announced.
        let mut mine = target(5);
        mine.set_by = "bob".into();
        assert!(
            n.on_event(&Event::TargetChanged {
                target: mine,
                summary: Counts::default()
            })
            .is_none()
        );
    }
}
