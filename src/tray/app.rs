//! The event loop (main thread): the tray icon and its menu, created at `StartCause::Init`,
//! redrawn on [`UiEvent::Daemon`], menu clicks forwarded to the background thread.
//! `ControlFlow::Wait` throughout: the loop sleeps until an event arrives.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use tao::event::{Event, StartCause};
use tao::event_loop::{ControlFlow, EventLoopBuilder};
use tokio::sync::mpsc;
use tray_icon::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use super::icons::{IconKind, render};
use super::model::{Daemon, Entry, Note, View};
use super::worker::{self, Command, UiEvent, muted_label};

/// Icon size handed to the tray host (it scales to its panel).
pub const ICON_SIZE: u32 = 64;

pub struct Options {
    pub socket: PathBuf,
    pub muted: bool,
}

struct Ui {
    tray: TrayIcon,
    icon: IconKind,
    status: MenuItem,
    detail: MenuItem,
    sync: MenuItem,
    preview: MenuItem,
    set_latest: Submenu,
    set_latest_confirm: MenuItem,
    revert: MenuItem,
    pause: MenuItem,
    history: MenuItem,
    mute: MenuItem,
    muted: bool,
}

fn icon(kind: IconKind) -> Icon {
    Icon::from_rgba(render(kind, ICON_SIZE), ICON_SIZE, ICON_SIZE)
        .expect("rendered icons have the right length")
}

fn apply(item: &MenuItem, e: &Entry) {
    item.set_text(&e.label);
    item.set_enabled(e.enabled);
}

impl Ui {
    fn new(view: &View, muted: bool) -> anyhow::Result<Ui> {
        let item = |id: &str, e: &Entry| MenuItem::with_id(id, &e.label, e.enabled, None);
        let status = MenuItem::with_id("status", &view.status_line, false, None);
        let detail = MenuItem::with_id("detail", &view.detail_line, false, None);
        let sync = item("sync", &view.sync);
        let preview = item("preview", &view.preview);
        let set_latest_confirm = item("set-latest", &view.set_latest_confirm);
        let set_latest = Submenu::with_id_and_items(
            "set-latest-menu",
            &view.set_latest.label,
            view.set_latest.enabled,
            &[&set_latest_confirm],
        )?;
        let revert = item("revert", &view.revert);
        let pause = item("pause", &view.pause);
        let history = item("history", &view.history);
        let mute = MenuItem::with_id("mute", muted_label(muted), true, None);
        let quit = MenuItem::with_id("quit", "Quit", true, None);
        let menu = Menu::with_items(&[
            &status,
            &detail,
            &PredefinedMenuItem::separator(),
            &sync,
            &preview,
            &set_latest,
            &revert,
            &PredefinedMenuItem::separator(),
            &pause,
            &history,
            &mute,
            &PredefinedMenuItem::separator(),
            &quit,
        ])?;
        let tray = TrayIconBuilder::new()
            .with_id("pacpool")
            .with_menu(Box::new(menu))
            .with_icon(icon(view.icon))
            // Linux tray hosts (StatusNotifierItem via libappindicator) show no tooltip; the
            // menu's first two lines carry the same facts there.
            .with_tooltip(&view.tooltip)
            .build()
            .context("create the tray icon (is a StatusNotifierItem host running?)")?;
        Ok(Ui {
            tray,
            icon: view.icon,
            status,
            detail,
            sync,
            preview,
            set_latest,
            set_latest_confirm,
            revert,
            pause,
            history,
            mute,
            muted,
        })
    }

    fn update(&mut self, view: &View) {
        if view.icon != self.icon {
            if let Err(e) = self.tray.set_icon(Some(icon(view.icon))) {
                tracing::warn!(error = %e, "cannot change the tray icon");
            }
            self.icon = view.icon;
        }
        let _ = self.tray.set_tooltip(Some(&view.tooltip));
        self.status.set_text(&view.status_line);
        self.detail.set_text(&view.detail_line);
        apply(&self.sync, &view.sync);
        apply(&self.preview, &view.preview);
        self.set_latest.set_text(&view.set_latest.label);
        self.set_latest.set_enabled(view.set_latest.enabled);
        apply(&self.set_latest_confirm, &view.set_latest_confirm);
        apply(&self.revert, &view.revert);
        apply(&self.pause, &view.pause);
        apply(&self.history, &view.history);
    }
}

/// Shows a freedesktop notification (on a blocking thread: notify-rust's D-Bus call waits
/// for the notification server's answer). A note with `sync_now` gets "Sync now" as its
/// default action when the server supports actions; the thread then waits for the click
/// (or the close) and sends [`Command::Sync`] through `commands`.
fn show_note(note: Note, commands: Option<mpsc::UnboundedSender<Command>>) {
    let spawned = std::thread::Builder::new()
        .name("pacpool-tray-notify".into())
        .spawn(move || {
            let mut n = notify_rust::Notification::new();
            n.appname("pacpool")
                .summary(&note.summary)
                .body(&note.body)
                .icon("software-update-available");
            if note.critical {
                n.urgency(notify_rust::Urgency::Critical);
            }
            let sync = commands.filter(|_| {
                note.sync_now
                    && notify_rust::get_capabilities()
                        .is_ok_and(|caps| caps.iter().any(|c| c == "actions"))
            });
            if sync.is_some() {
                n.action("default", "Sync now");
            }
            match n.show() {
                Ok(handle) => {
                    if let Some(sync) = sync {
                        handle.wait_for_action(|action| {
                            if action == "default" {
                                tracing::info!("\"Sync now\" clicked in a notification");
                                let _ = sync.send(Command::Sync);
                            }
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, summary = %note.summary, "cannot show a notification")
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the notification thread");
    }
}

/// Runs the tray until "Quit". Never returns on success (tao exits the process).
pub fn run(opts: Options) -> anyhow::Result<()> {
    // tao panics when GTK cannot open a display; say what is wrong instead.
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        anyhow::bail!(
            "no graphical session: neither DISPLAY nor WAYLAND_DISPLAY is set; \
             start pacpool-tray from the desktop session (XDG autostart or `systemctl --user`)"
        );
    }
    // tao panics when GTK cannot open the display: turn that into an error.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let built = std::panic::catch_unwind(|| EventLoopBuilder::<UiEvent>::with_user_event().build());
    std::panic::set_hook(hook);
    let event_loop = built.map_err(|_| {
        anyhow::anyhow!(
            "cannot open the display {:?} (GTK failed to initialize)",
            std::env::var_os("DISPLAY").unwrap_or_default()
        )
    })?;
    let proxy = Mutex::new(event_loop.create_proxy());
    let send: worker::UiSink = Arc::new(move |e| {
        // Fails only once the loop has exited.
        let _ = proxy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send_event(e);
    });
    // Notifications may offer "Sync now": their threads need the worker's command channel,
    // which exists only once the worker runs.
    let command_slot: Arc<OnceLock<mpsc::UnboundedSender<Command>>> = Arc::default();
    let slot = command_slot.clone();
    let notes: worker::NoteSink = Arc::new(move |note| show_note(note, slot.get().cloned()));
    let menu_send = send.clone();
    MenuEvent::set_event_handler(Some(move |e: MenuEvent| {
        menu_send(UiEvent::Menu(e.id.0));
    }));
    let worker = worker::spawn(opts.socket, opts.muted, send, notes)
        .context("start the tray's background thread")?;
    let commands = worker.commands.clone();
    let _ = command_slot.set(commands.clone());
    let mut daemon = Daemon::NotRunning("connecting".into());
    let mut ui: Option<Ui> = None;
    let mut muted = opts.muted;
    event_loop.run(move |event, _, control_flow| {
        *control_flow = ControlFlow::Wait;
        match event {
            Event::NewEvents(StartCause::Init) => match Ui::new(&View::of(&daemon), muted) {
                Ok(u) => ui = Some(u),
                Err(e) => {
                    eprintln!("pacpool-tray: error: {e:#}");
                    *control_flow = ControlFlow::ExitWithCode(1);
                }
            },
            Event::UserEvent(UiEvent::Daemon(d)) => {
                daemon = *d;
                if let Some(u) = &mut ui {
                    u.update(&View::of(&daemon));
                }
            }
            Event::UserEvent(UiEvent::Menu(id)) => {
                let cmd = match id.as_str() {
                    "sync" => Command::Sync,
                    "preview" => Command::Preview,
                    "set-latest" => Command::SetLatest,
                    "revert" => Command::Revert,
                    "pause" => Command::TogglePause,
                    "history" => Command::History,
                    "mute" => {
                        muted = !muted;
                        if let Some(u) = &mut ui {
                            u.muted = muted;
                            u.mute.set_text(muted_label(muted));
                        }
                        Command::ToggleMute
                    }
                    "quit" => {
                        let _ = commands.send(Command::Quit);
                        *control_flow = ControlFlow::Exit;
                        return;
                    }
                    _ => return,
                };
                let _ = commands.send(cmd);
            }
            Event::UserEvent(UiEvent::WorkerStopped) => *control_flow = ControlFlow::Exit,
            // Remove the icon before the process exits.
            Event::LoopDestroyed => ui = None,
            _ => {}
        }
    });
}
