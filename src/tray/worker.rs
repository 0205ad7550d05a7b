//! The tray's background thread: a tokio runtime that holds a `subscribe` connection to
//! pacpoold (reconnecting with backoff when the daemon is down or restarts), runs the menu's
//! actions over their own connections, and decides on notifications.
//!
//! It never touches GTK: it reports to the event loop through a [`UiSink`] (in the binary,
//! the loop's `EventLoopProxy`) and shows notifications through a [`NoteSink`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::daemon::client::Client;
use crate::daemon::protocol::{ErrorCode, Event, LinkState, Reply, Request};
use crate::plan::{Action, Conflict};
use crate::snapshot::SnapshotHash;

use super::model::{Daemon, Note, Notifier, SetLatestAnswer, SetLatestConfirm, finished_note, utc};

/// What the background thread tells the event loop, and what the loop's own handlers forward.
#[derive(Debug, Clone)]
pub enum UiEvent {
    /// The daemon's state changed (or it went away): redraw.
    Daemon(Box<Daemon>),
    /// A new set-latest preview (what the pool would lose, the other machines afterwards),
    /// or why there is none.
    SetLatest(SetLatestAnswer),
    /// A menu item was clicked (its id).
    Menu(String),
    /// The background thread ended.
    WorkerStopped,
}

/// A menu action for the background thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Sync,
    Preview,
    /// Set-latest, as confirmed in the menu (the preview its label was made from).
    SetLatest(SetLatestConfirm),
    Revert,
    /// Pause auto-sync when running, resume when paused.
    TogglePause,
    History,
    ToggleMute,
    Quit,
}

pub type UiSink = Arc<dyn Fn(UiEvent) + Send + Sync>;
pub type NoteSink = Arc<dyn Fn(Note) + Send + Sync>;

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

struct Shared {
    socket: PathBuf,
    ui: UiSink,
    notes: NoteSink,
    muted: AtomicBool,
    state: Mutex<(Daemon, Notifier)>,
    /// The (state, target revision, pool size) the last set-latest preview was asked for.
    set_latest_key: Mutex<Option<PreviewKey>>,
}

type PreviewKey = (SnapshotHash, Option<u64>, Option<u64>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Daemon, Notifier)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows an unsolicited notification unless muted.
    fn announce(&self, note: Note) {
        if !self.muted.load(Ordering::Relaxed) {
            (self.notes)(note);
        }
    }

    /// Shows the answer to something the user asked for (never muted).
    fn answer(&self, summary: impl Into<String>, body: impl Into<String>, critical: bool) {
        (self.notes)(Note {
            summary: summary.into(),
            body: body.into(),
            critical,
            sync_now: false,
        });
    }

    fn set_daemon(&self, d: Daemon) {
        let changed = {
            let mut g = self.lock();
            let changed = g.0 != d;
            g.0 = d.clone();
            changed
        };
        if changed {
            (self.ui)(UiEvent::Daemon(Box::new(d)));
        }
    }
}

/// The handle the event loop keeps: send commands, join at exit.
pub struct Worker {
    pub commands: mpsc::UnboundedSender<Command>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the background thread (named `pacpool-tray-io`).
pub fn spawn(socket: PathBuf, muted: bool, ui: UiSink, notes: NoteSink) -> std::io::Result<Worker> {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        socket,
        ui,
        notes,
        muted: AtomicBool::new(muted),
        state: Mutex::new((Daemon::NotRunning("connecting".into()), Notifier::default())),
        set_latest_key: Mutex::new(None),
    });
    let thread = std::thread::Builder::new()
        .name("pacpool-tray-io".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build the tray's tokio runtime");
            let ui = shared.ui.clone();
            rt.block_on(run(shared, rx));
            ui(UiEvent::WorkerStopped);
        })?;
    Ok(Worker {
        commands: tx,
        thread,
    })
}

async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let sub = tokio::spawn(subscription(shared.clone()));
    while let Some(cmd) = commands.recv().await {
        if cmd == Command::Quit {
            break;
        }
        if cmd == Command::ToggleMute {
            let was = shared.muted.fetch_xor(true, Ordering::Relaxed);
            tracing::info!(muted = !was, "notifications");
            continue;
        }
        tokio::spawn(action(shared.clone(), cmd));
    }
    sub.abort();
}

/// Whether notifications are muted (for the menu's label).
pub fn muted_label(muted: bool) -> &'static str {
    if muted {
        "Unmute notifications"
    } else {
        "Mute notifications"
    }
}

/// Holds a subscription to pacpoold; on any failure shows "not running" and retries with
/// exponential backoff and jitter (so many trays do not reconnect in step after a daemon
/// restart). While connected nothing runs on a timer: every update is pushed by the daemon.
async fn subscription(shared: Arc<Shared>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let why = match Client::connect(&shared.socket).await {
            Err(e) => e.to_string(),
            Ok(mut client) => match client.subscribe().await {
                Err(e) => e.to_string(),
                Ok(()) => loop {
                    match client.next_event().await {
                        Ok(event) => {
                            backoff = BACKOFF_MIN;
                            on_event(&shared, event);
                            refresh_set_latest(&shared);
                        }
                        Err(e) => break e.to_string(),
                    }
                },
            },
        };
        tracing::debug!(reason = %why, "pacpoold not reachable");
        shared.set_daemon(Daemon::NotRunning(why));
        *shared
            .set_latest_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let jitter = Duration::from_millis(u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                % 250,
        ));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn on_event(shared: &Shared, event: Event) {
    let (note, daemon) = {
        let mut g = shared.lock();
        let note = g.1.on_event(&event);
        // Fold operation events into the status copy so the icon and menu follow them
        // (the daemon sends a full status when an operation ends).
        let mut daemon = g.0.clone();
        match (&event, &mut daemon) {
            (Event::Status { status }, d) => *d = Daemon::Up(status.clone()),
            (Event::OperationStarted { kind }, Daemon::Up(s)) => {
                s.operation = Some(crate::daemon::protocol::RunningOperation {
                    kind: kind.clone(),
                    progress: None,
                });
            }
            (Event::Progress { progress }, Daemon::Up(s)) => {
                if let Some(op) = &mut s.operation {
                    op.progress = Some(progress.clone());
                }
            }
            _ => {}
        }
        (note, daemon)
    };
    if let Some(n) = note {
        shared.announce(n);
    }
    shared.set_daemon(daemon);
}

/// Asks pacpoold for a new set-latest preview when this machine's state, the target or the
/// pool's size changed since the last one (only while the user may act and the coordinator
/// is connected: otherwise the menu item is disabled anyway). The preview goes to the menu.
fn refresh_set_latest(shared: &Arc<Shared>) {
    let key = match &shared.lock().0 {
        Daemon::Up(s) if s.can_act && s.link == LinkState::Connected && s.operation.is_none() => {
            s.current.as_ref().map(|c| {
                (
                    c.hash,
                    s.target.as_ref().map(|t| t.revision),
                    s.pool_endpoints,
                )
            })
        }
        _ => None,
    };
    let Some(key) = key else { return };
    {
        let mut last = shared
            .set_latest_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *last == Some(key) {
            return;
        }
        *last = Some(key);
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let reply = match Client::connect(&shared.socket).await {
            Ok(mut c) => c.request(Request::SetLatestPreview, |_| {}).await,
            Err(e) => Err(e),
        };
        let failed = match reply {
            Ok(Reply::SetLatestPreview { preview }) => {
                (shared.ui)(UiEvent::SetLatest(SetLatestAnswer::Preview(preview)));
                return;
            }
            Ok(Reply::Error { message, .. }) => message,
            Ok(other) => format!("unexpected answer from pacpoold: {other:?}"),
            Err(e) => e.to_string(),
        };
        tracing::warn!(reason = %failed, "no set-latest preview");
        // Asked again at the next status change.
        *shared
            .set_latest_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        (shared.ui)(UiEvent::SetLatest(SetLatestAnswer::Failed(failed)));
    });
}

fn title(cmd: Command) -> &'static str {
    match cmd {
        Command::Sync => "Sync",
        Command::Preview => "Preview",
        Command::SetLatest(_) => "Set as latest",
        Command::Revert => "Revert",
        Command::TogglePause => "Auto-sync",
        Command::History => "History",
        Command::ToggleMute | Command::Quit => "",
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Install { name, version, .. } => format!("install {name} {version}"),
        Action::Upgrade { name, from, to, .. } => format!("upgrade {name} {from} → {to}"),
        Action::Downgrade { name, from, to, .. } => format!("downgrade {name} {from} → {to}"),
        Action::Remove { name, version } => format!("remove {name} {version}"),
        Action::MarkDependency { name } => format!("mark {name} as a dependency"),
        Action::MarkExplicit { name } => format!("mark {name} as explicitly installed"),
    }
}

/// Runs one menu action over its own connection and reports the answer.
async fn action(shared: Arc<Shared>, cmd: Command) {
    let request = match cmd {
        Command::Sync => Request::Sync {
            confirm_removals: false,
        },
        Command::Preview => Request::Preview,
        Command::SetLatest(c) => Request::SetLatest {
            allow_older: c.allow_older,
            expect_state: Some(c.state),
            expect_revision: c.target_revision,
        },
        Command::Revert => Request::Revert {
            to: None,
            confirm_removals: false,
        },
        Command::TogglePause => {
            let paused = matches!(&shared.lock().0, Daemon::Up(s) if s.auto_sync_paused);
            Request::PauseAutoSync { paused: !paused }
        }
        Command::History => Request::Operations { limit: 5 },
        Command::ToggleMute | Command::Quit => return,
    };
    tracing::info!(?cmd, "menu action");
    let what = title(cmd);
    let reply = match Client::connect(&shared.socket).await {
        Ok(mut c) => c.request(request, |_| {}).await,
        Err(e) => Err(e),
    };
    match reply {
        Err(e) => shared.answer(format!("{what} failed"), e.to_string(), true),
        // A cancelled operation had started: the subscription announces its end.
        Ok(Reply::Error {
            code: ErrorCode::Cancelled,
            ..
        }) if !matches!(shared.lock().0, Daemon::NotRunning(_)) => {}
        Ok(Reply::Error { code, message }) => {
            let hint = match code {
                ErrorCode::NeedsConfirmation => {
                    "\nRun `pacpool sync` (or `pacpool revert`) in a terminal to confirm."
                }
                _ => "",
            };
            let summary = match code {
                ErrorCode::NothingToDo => format!("{what}: nothing to do"),
                ErrorCode::Refused => format!("{what} refused"),
                _ => format!("{what} failed"),
            };
            shared.answer(
                summary,
                format!("{message}{hint}"),
                code != ErrorCode::NothingToDo,
            );
        }
        Ok(Reply::Preview { preview }) => {
            let mut lines: Vec<String> = preview.actions.iter().take(15).map(describe).collect();
            if preview.actions.len() > 15 {
                lines.push(format!("… and {} more", preview.actions.len() - 15));
            }
            for c in &preview.conflicts {
                lines.push(match c {
                    // Resolved by the refresh the sync makes first, or a conflict then.
                    Conflict::VersionUnavailable { name, wanted, .. } => {
                        format!("after the refresh: {name} {wanted}")
                    }
                    Conflict::RepositoryUnavailable { name, repo, .. } => {
                        format!("after the refresh: {name} (from {repo})")
                    }
                    _ => format!("conflict: {c}"),
                });
            }
            if let Some(n) = &preview.needs_confirmation {
                lines.push(format!(
                    "{} {} the cap of {}: confirm with `pacpool sync` in a terminal",
                    crate::words::count(n.removals, "removal", "removals"),
                    crate::words::plural(n.removals, "exceeds", "exceed"),
                    n.cap
                ));
            }
            // Sizes, free space, reboot, held back: what the CLI's preview says too.
            lines.extend(preview.preflight_lines());
            let rev = preview
                .target_revision
                .map_or_else(String::new, |r| format!(" to revision {r}"));
            if preview.needs_refresh {
                lines.insert(
                    0,
                    "Sync refreshes the package databases (pacman -Sy) first, then plans again:"
                        .into(),
                );
            }
            shared.answer(
                format!("Sync{rev}: {}", preview.summary()),
                lines.join("\n"),
                false,
            );
        }
        Ok(Reply::Operations { operations }) => {
            let lines: Vec<String> = operations
                .iter()
                .map(|o| {
                    format!(
                        "{} {} — {}: {}",
                        utc(o.started_at),
                        o.kind,
                        o.state,
                        o.message
                    )
                })
                .collect();
            let body = if lines.is_empty() {
                "no operations yet".to_owned()
            } else {
                lines.join("\n")
            };
            shared.answer("Recent operations", body, false);
        }
        // The subscription announces the outcome (OperationFinished); say it here only if
        // the subscription is down.
        Ok(Reply::Done { outcome }) => {
            if matches!(shared.lock().0, Daemon::NotRunning(_)) {
                shared.announce(finished_note(&outcome));
            }
        }
        Ok(Reply::Ok) => {}
        Ok(other) => shared.answer(
            format!("{what}: unexpected answer"),
            format!("{other:?}"),
            true,
        ),
    }
}
