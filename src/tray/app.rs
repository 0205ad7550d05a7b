//! The event loop (main thread): the tray icon and its menu, created at `StartCause::Init`,
//! redrawn on [`UiEvent::Daemon`], menu clicks forwarded to the background thread.
//! `ControlFlow::Wait` throughout: the loop sleeps until an event arrives.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use tao::event::{Event, StartCause};
use tao::event_loop::{ControlFlow, EventLoopBuilder};
use tokio::sync::mpsc;
use tray_icon::menu::{IsMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use super::icons::{IconKind, render};
use super::model::{Daemon, Entry, Note, SetLatestAnswer, SetLatestConfirm, View};
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
    items: Items,
    /// The set-latest submenu as built: muda cannot relabel a submenu (its GTK item holds a
    /// box, and the new text never reaches the exported dbusmenu), so a change rebuilds the
    /// whole menu.
    set_latest_shown: SetLatestPart,
    muted: bool,
}

/// The items updated in place.
struct Items {
    status: MenuItem,
    detail: MenuItem,
    sync: MenuItem,
    preview: MenuItem,
    revert: MenuItem,
    pause: MenuItem,
    history: MenuItem,
    mute: MenuItem,
}

/// Everything the set-latest submenu shows, and what its confirmation confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetLatestPart {
    label: Entry,
    info: Vec<String>,
    confirm: Entry,
    confirm_id: String,
}

impl SetLatestPart {
    fn of(view: &View) -> Self {
        Self {
            label: view.set_latest.clone(),
            info: view.set_latest_info.clone(),
            confirm: view.set_latest_confirm.clone(),
            confirm_id: view
                .set_latest_confirms
                .map_or_else(|| "set-latest-pending".to_owned(), |c| c.menu_id()),
        }
    }
}

// `set_title` reads tray-icon's `libappindicator::AppIndicator` as the one raw pointer it
// holds: true only while the wrapper is exactly one pointer wide.
const _: () =
    assert!(std::mem::size_of::<libappindicator::AppIndicator>() == std::mem::size_of::<*mut u8>());

/// Sets the StatusNotifierItem's `Title` property (and emits `NewTitle`): hosts that show
/// a title on hover (KDE Plasma, GNOME's AppIndicator extension) show the state line.
/// tray-icon 0.24 ignores tooltips on Linux and has no title setter (its `set_title` sets the
/// panel label), so this calls libayatana-appindicator's `app_indicator_set_title`.
fn set_title(tray: &TrayIcon, title: &str) {
    let Ok(title) = std::ffi::CString::new(title) else {
        return;
    };
    // SAFETY: on the event loop's thread (GTK's), while `tray` is alive. `app_indicator()`
    // points at tray-icon's `libappindicator::AppIndicator`, whose only field is the
    // indicator's `*mut AppIndicator` (checked by the size assertion above), so reading one
    // pointer from it yields that field; the C call copies the string.
    unsafe {
        let wrapper = tray.app_indicator();
        let raw = *(wrapper as *const *mut _);
        libappindicator::app_indicator_set_title(raw, title.as_ptr());
    }
}

fn icon(kind: IconKind) -> Icon {
    Icon::from_rgba(render(kind, ICON_SIZE), ICON_SIZE, ICON_SIZE)
        .expect("rendered icons have the right length")
}

fn apply(item: &MenuItem, e: &Entry) {
    item.set_text(&e.label);
    item.set_enabled(e.enabled);
}

/// The whole menu for `view`.
fn build_menu(view: &View, muted: bool) -> anyhow::Result<(Menu, Items, SetLatestPart)> {
    let item = |id: &str, e: &Entry| MenuItem::with_id(id, &e.label, e.enabled, None);
    let part = SetLatestPart::of(view);
    let items = Items {
        status: MenuItem::with_id("status", &view.status_line, false, None),
        detail: MenuItem::with_id("detail", &view.detail_line, false, None),
        sync: item("sync", &view.sync),
        preview: item("preview", &view.preview),
        revert: item("revert", &view.revert),
        pause: item("pause", &view.pause),
        history: item("history", &view.history),
        mute: MenuItem::with_id("mute", muted_label(muted), true, None),
    };
    let info: Vec<MenuItem> = part
        .info
        .iter()
        .enumerate()
        .map(|(i, line)| MenuItem::with_id(format!("set-latest-info-{i}"), line, false, None))
        .collect();
    let confirm = MenuItem::with_id(
        part.confirm_id.as_str(),
        &part.confirm.label,
        part.confirm.enabled,
        None,
    );
    let mut children: Vec<&dyn IsMenuItem> = info.iter().map(|i| i as &dyn IsMenuItem).collect();
    children.push(&confirm);
    let set_latest = Submenu::with_id_and_items(
        "set-latest-menu",
        &part.label.label,
        part.label.enabled,
        &children,
    )?;
    let quit = MenuItem::with_id("quit", "Quit", true, None);
    let menu = Menu::with_items(&[
        &items.status,
        &items.detail,
        &PredefinedMenuItem::separator(),
        &items.sync,
        &items.preview,
        &set_latest,
        &items.revert,
        &PredefinedMenuItem::separator(),
        &items.pause,
        &items.history,
        &items.mute,
        &PredefinedMenuItem::separator(),
        &quit,
    ])?;
    Ok((menu, items, part))
}

impl Ui {
    fn new(view: &View, muted: bool) -> anyhow::Result<Ui> {
        let (menu, items, part) = build_menu(view, muted)?;
        let tray = TrayIconBuilder::new()
            .with_id("pacpool")
            .with_menu(Box::new(menu))
            .with_icon(icon(view.icon))
            // StatusNotifierItem hosts (libappindicator) show no tooltip: tray-icon ignores it
            // on Linux; the menu's first two lines carry the same facts there.
            .with_tooltip(&view.tooltip)
            .build()
            .context("create the tray icon (is a StatusNotifierItem host running?)")?;
        set_title(&tray, &view.status_line);
        Ok(Ui {
            tray,
            icon: view.icon,
            items,
            set_latest_shown: part,
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
        set_title(&self.tray, &view.status_line);
        if SetLatestPart::of(view) != self.set_latest_shown {
            match build_menu(view, self.muted) {
                Ok((menu, items, part)) => {
                    self.tray.set_menu(Some(Box::new(menu)));
                    self.items = items;
                    self.set_latest_shown = part;
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot rebuild the tray menu"),
            }
        }
        let i = &self.items;
        i.status.set_text(&view.status_line);
        i.detail.set_text(&view.detail_line);
        apply(&i.sync, &view.sync);
        apply(&i.preview, &view.preview);
        apply(&i.revert, &view.revert);
        apply(&i.pause, &view.pause);
        apply(&i.history, &view.history);
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
                // "default" is a click on the notification; "sync-now" is the button that
                // servers showing actions (GNOME, KDE, dunst's context menu) display.
                n.action("default", "Sync now");
                n.action("sync-now", "Sync now");
            }
            match n.show() {
                Ok(handle) => {
                    if let Some(sync) = sync {
                        handle.wait_for_action(|action| {
                            if action == "default" || action == "sync-now" {
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
    let mut set_latest: Option<SetLatestAnswer> = None;
    let mut ui: Option<Ui> = None;
    let mut muted = opts.muted;
    event_loop.run(move |event, _, control_flow| {
        *control_flow = ControlFlow::Wait;
        match event {
            Event::NewEvents(StartCause::Init) => match Ui::new(&View::of(&daemon, None), muted) {
                Ok(u) => ui = Some(u),
                Err(e) => {
                    eprintln!("pacpool-tray: error: {e:#}");
                    *control_flow = ControlFlow::ExitWithCode(1);
                }
            },
            Event::UserEvent(UiEvent::Daemon(d)) => {
                daemon = *d;
                if let Some(u) = &mut ui {
                    u.update(&View::of(&daemon, set_latest.as_ref()));
                }
            }
            Event::UserEvent(UiEvent::SetLatest(answer)) => {
                set_latest = Some(answer);
                if let Some(u) = &mut ui {
                    u.update(&View::of(&daemon, set_latest.as_ref()));
                }
            }
            Event::UserEvent(UiEvent::Menu(id)) => {
                let cmd = match id.as_str() {
                    "sync" => Command::Sync,
                    "preview" => Command::Preview,
                    other if SetLatestConfirm::from_menu_id(other).is_some() => Command::SetLatest(
                        SetLatestConfirm::from_menu_id(other).expect("checked above"),
                    ),
                    "revert" => Command::Revert,
                    "pause" => Command::TogglePause,
                    "history" => Command::History,
                    "mute" => {
                        muted = !muted;
                        if let Some(u) = &mut ui {
                            u.muted = muted;
                            u.items.mute.set_text(muted_label(muted));
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
