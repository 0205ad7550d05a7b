//! The local Unix socket: newline-delimited JSON, many clients at once, authorization by the
//! peer's credentials (SO_PEERCRED).
//!
//! Anyone may read status; actions need root, the daemon's own user, or a member of the
//! configured group (default `wheel`). The socket directory is created root-owned 0755, a
//! symlink in its place is refused, and a stale socket is removed only after a connection
//! attempt shows no daemon behind it.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};

use super::protocol::{Envelope, ErrorCode, LOCAL_PROTOCOL, MAX_REQUEST_LINE, Reply, Request};
use super::service::{ActionError, Daemon};

/// Most unprivileged clients served at once; more are refused (root and the daemon's own
/// user are never counted nor refused, so a flood cannot lock them out).
const MAX_CLIENTS: usize = 64;
/// Refused connections being told why at once (each holds its descriptor for up to 1 s).
const MAX_REFUSALS: usize = 32;

/// Most connections one unprivileged user may hold at once (a tray, a status bar and a few
/// commands need far fewer), so that one user cannot take every slot.
pub const MAX_CLIENTS_PER_UID: usize = 16;

/// A bound socket plus the group whose members may act.
pub struct Listener {
    listener: UnixListener,
    group: Option<u32>,
}

/// Creates the socket directory safely and binds the socket.
pub fn bind(path: &Path, group_name: &str) -> anyhow::Result<Listener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .context("the socket path has no directory")?;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!(
                "refusing the socket directory {}: it is a symlink",
                dir.display()
            )
        }
        Ok(m) if !m.is_dir() => bail!("{} is not a directory", dir.display()),
        Ok(m) if m.uid() != rustix::process::geteuid().as_raw() => bail!(
            "refusing the socket directory {}: it is owned by uid {}, not by this daemon",
            dir.display(),
            m.uid()
        ),
        Ok(m) if m.mode() & 0o022 != 0 => bail!(
            "refusing the socket directory {}: others may write to it (mode {:o})",
            dir.display(),
            m.mode() & 0o7777
        ),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another pacpoold is already listening on {}: stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "refusing to replace {}: it exists and is not a socket",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Everyone may connect (to read status); actions are checked per request.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let group = group_id(group_name);
    if group.is_none() {
        tracing::warn!(
            group = group_name,
            "socket group not found: only root may run actions"
        );
    }
    Ok(Listener { listener, group })
}

/// Removes the socket on shutdown.
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The gid of `name` from /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The supplementary groups of process `pid`, from /proc, if that process still runs with
/// effective uid `uid`. The peer may have exited and its pid been reused by another user's
/// process since it connected: then its groups are not the peer's, and none are returned.
fn process_groups(pid: i32, uid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .map(|s| groups_of_status(&s, uid))
        .unwrap_or_default()
}

/// The `Groups:` of a /proc status text whose effective uid (the second `Uid:` field) is
/// `uid`; empty otherwise.
fn groups_of_status(status: &str, uid: u32) -> Vec<u32> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let euid = field("Uid:").and_then(|u| u.split_whitespace().nth(1)?.parse::<u32>().ok());
    if euid != Some(uid) {
        return Vec::new();
    }
    field("Groups:")
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the peer may run actions, and if not, why.
fn authorize(stream: &UnixStream, group: Option<u32>) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the caller's credentials: {e}"))?;
    let me = rustix::process::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == me {
        return Ok(());
    }
    if let Some(g) = group
        && (cred.gid() == g
            || cred
                .pid()
                .is_some_and(|pid| process_groups(pid, cred.uid()).contains(&g)))
    {
        return Ok(());
    }
    Err(format!(
        "uid {} may not change packages: actions need root or membership in the socket group",
        cred.uid()
    ))
}

/// Connections held per unprivileged uid; a [`UidSlot`] gives its place back on drop.
type UidCounts = Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>;

struct UidSlot {
    counts: UidCounts,
    uid: u32,
}

impl UidSlot {
    fn take(counts: &UidCounts, uid: u32) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(uid).or_default();
        if *n >= MAX_CLIENTS_PER_UID {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// Accepts clients until `stop`.
pub async fn serve(daemon: Arc<Daemon>, listener: Listener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    // Refused clients are told why, but only so many at once: past that they are just
    // closed, so a flood of connections cannot exhaust the daemon's file descriptors.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let per_uid = UidCounts::default();
    let me = rustix::process::geteuid().as_raw();
    loop {
        let accepted = tokio::select! {
            a = listener.listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((mut stream, _)) => {
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                let privileged = matches!(uid, Some(u) if u == 0 || u == me);
                let permit = if privileged {
                    None
                } else {
                    let slot = uid.and_then(|u| UidSlot::take(&per_uid, u));
                    match (slot, slots.clone().try_acquire_owned()) {
                        (Some(slot), Ok(permit)) => Some((slot, permit)),
                        (slot, _) => {
                            let why = if uid.is_none() {
                                "pacpoold cannot read this client's credentials: retry".to_owned()
                            } else if slot.is_none() {
                                format!(
                                    "uid {} already has {MAX_CLIENTS_PER_UID} connections to pacpoold open: close some (other pacpool commands or trays) and retry",
                                    uid.map_or_else(|| "?".into(), |u| u.to_string())
                                )
                            } else {
                                format!(
                                    "pacpoold serves at most {MAX_CLIENTS} unprivileged connections at once: retry in a moment"
                                )
                            };
                            tracing::warn!(?uid, "socket client refused: {why}");
                            let Ok(refusing) = refusals.clone().try_acquire_owned() else {
                                drop(stream);
                                continue;
                            };
                            tokio::spawn(async move {
                                let _refusing = refusing;
                                let _ = write(&mut stream, &error(ErrorCode::Busy, why)).await;
                                // Take the client's request line before closing, so that its
                                // write does not fail before it reads the answer; bounded in
                                // size and time, as this client holds no slot.
                                let mut sink = Vec::new();
                                let mut r =
                                    BufReader::new(&mut stream).take(MAX_REQUEST_LINE as u64);
                                let _ = tokio::time::timeout(
                                    std::time::Duration::from_secs(1),
                                    r.read_until(b'\n', &mut sink),
                                )
                                .await;
                            });
                            continue;
                        }
                    }
                };
                let daemon = daemon.clone();
                let group = listener.group;
                let stop = stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(daemon, stream, group, stop).await {
                        tracing::debug!(error = %e, "socket client ended with an error");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a socket client failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialize");
    line.push(b'\n');
    w.write_all(&line).await
}

fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error {
        code,
        message: message.into(),
    }
}

impl From<ActionError> for Reply {
    fn from(e: ActionError) -> Self {
        error(e.code, e.message)
    }
}

/// Serves one client: one request per line, until it disconnects.
async fn handle(
    daemon: Arc<Daemon>,
    stream: UnixStream,
    group: Option<u32>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let auth = authorize(&stream, group);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST_LINE {
            write(
                &mut w,
                &error(ErrorCode::InvalidRequest, "request line too long"),
            )
            .await?;
            return Ok(());
        }
        let envelope: Envelope = match serde_json::from_slice(&line) {
            Ok(e) => e,
            Err(e) => {
                let v = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("v").and_then(|v| v.as_u64()));
                let reply = match v {
                    Some(v) if v != u64::from(LOCAL_PROTOCOL) => error(
                        ErrorCode::ProtocolMismatch,
                        format!(
                            "client speaks local protocol {v}, this pacpoold speaks {LOCAL_PROTOCOL}: use matching pacpool versions"
                        ),
                    ),
                    _ => error(ErrorCode::InvalidRequest, format!("malformed request: {e}")),
                };
                write(&mut w, &reply).await?;
                continue;
            }
        };
        if envelope.v != LOCAL_PROTOCOL {
            write(
                &mut w,
                &error(
                    ErrorCode::ProtocolMismatch,
                    format!(
                        "client speaks local protocol {}, this pacpoold speaks {LOCAL_PROTOCOL}: use matching pacpool versions",
                        envelope.v
                    ),
                ),
            )
            .await?;
            continue;
        }
        let request = envelope.request;
        if request.is_action()
            && let Err(why) = &auth
        {
            write(&mut w, &error(ErrorCode::Refused, why.clone())).await?;
            continue;
        }
        match request {
            Request::Subscribe => return subscribe(&daemon, &mut w, auth, stop).await,
            request => {
                let reply = dispatch(&daemon, request, &auth, &mut w).await?;
                write(&mut w, &reply).await?;
            }
        }
    }
}

/// Streams events until the client goes away or the daemon stops.
async fn subscribe(
    daemon: &Daemon,
    w: &mut (impl AsyncWriteExt + Unpin),
    auth: Result<(), String>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use super::protocol::Event;
    let mut events = daemon.subscribe();
    let (can_act, why_not) = (auth.is_ok(), auth.clone().err());
    let first = Event::Status {
        status: Box::new(daemon.status(can_act, why_not.clone())),
    };
    write(w, &Reply::Event { event: first }).await?;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.changed() => return Ok(()),
        };
        let event = match event {
            // Status events carry the daemon's view; restate the rights of this peer.
            Ok(Event::Status { .. }) => Event::Status {
                status: Box::new(daemon.status(can_act, why_not.clone())),
            },
            Ok(e) => e,
            // A slow client missed events: send the current status instead.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::Status {
                status: Box::new(daemon.status(can_act, why_not.clone())),
            },
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        };
        write(w, &Reply::Event { event }).await?;
    }
}

async fn dispatch(
    daemon: &Arc<Daemon>,
    request: Request,
    auth: &Result<(), String>,
    w: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<Reply> {
    Ok(match request {
        Request::Status => Reply::Status {
            status: Box::new(daemon.status(auth.is_ok(), auth.clone().err())),
        },
        Request::Preview => match daemon.preview(auth.is_ok()).await {
            Ok(preview) => Reply::Preview { preview },
            Err(e) => e.into(),
        },
        Request::History { limit } => match daemon.history(limit.min(10_000)) {
            Ok(entries) => Reply::History { entries },
            Err(e) => e.into(),
        },
        Request::Operations { limit } => match daemon.operations(limit.min(10_000)) {
            Ok(operations) => Reply::Operations { operations },
            Err(e) => e.into(),
        },
        Request::Snapshot { id } => match daemon.snapshot_text(&id) {
            Ok((entry, text)) => Reply::Snapshot { entry, text },
            Err(e) => e.into(),
        },
        // The pacman hook runs as root: a full re-read (a reason change moves no directory).
        // Anyone else gets the two-`stat` unchanged check, so a loop of `notify` from an
        // unprivileged user cannot keep the daemon re-reading pacman's database.
        Request::Notify => match daemon.refresh("hook", auth.is_ok()).await {
            Ok(_) => Reply::Ok,
            // The status's wording: what failed and what to do.
            Err(e) => daemon.refresh_failed(e).into(),
        },
        Request::Cancel => match daemon.cancel() {
            Ok(()) => Reply::Ok,
            Err(e) => e.into(),
        },
        Request::Hold { until, reason } => {
            match super::link::hold(daemon, Some((until, reason))).await {
                Ok(()) => Reply::Ok,
                Err(e) => e.into(),
            }
        }
        Request::Unhold => match super::link::hold(daemon, None).await {
            Ok(()) => Reply::Ok,
            Err(e) => e.into(),
        },
        Request::PauseAutoSync { paused } => match daemon.set_paused(paused) {
            Ok(()) => Reply::Ok,
            Err(e) => e.into(),
        },
        Request::SetLatestPreview => match super::link::set_latest_preview(daemon, true).await {
            Ok(preview) => Reply::SetLatestPreview {
                preview: Box::new(preview),
            },
            Err(e) => e.into(),
        },
        Request::SetLatest {
            allow_older,
            expect_state,
            expect_revision,
        } => {
            let opts = super::link::SetLatestOptions {
                allow_older,
                expect_state,
                expect_revision,
            };
            match super::link::set_latest(daemon, &opts).await {
                Ok(outcome) => Reply::Done { outcome },
                Err(e) => e.into(),
            }
        }
        Request::Sync { confirm_removals } => {
            let (send, rx) = progress_channel();
            with_progress(daemon.sync(confirm_removals, None, send), rx, w).await?
        }
        Request::Revert {
            to,
            confirm_removals,
        } => {
            let (send, rx) = progress_channel();
            with_progress(
                daemon.revert(to.as_deref(), confirm_removals, None, send),
                rx,
                w,
            )
            .await?
        }
        Request::Subscribe => unreachable!("handled by the caller"),
    })
}

/// Progress lines held for a client that reads slowly; past that, lines are dropped (the
/// final answer always comes).
const PROGRESS_BACKLOG: usize = 1024;

/// Runs an action, writing its progress as it comes. The action never waits for the client:
/// it goes on when the client disconnects, and when the client stops reading (a full socket
/// buffer would otherwise hold the operation, and with it pacman and its lock, until the
/// client read again) its progress queues up to [`PROGRESS_BACKLOG`] lines, then is dropped.
async fn with_progress(
    fut: impl std::future::Future<Output = Result<super::protocol::Outcome, ActionError>>,
    mut rx: mpsc::Receiver<crate::proto::Progress>,
    w: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<Reply> {
    // Both run concurrently: a write that blocks stalls only the writer. The sender lives in
    // the action's closure, so the writer ends when the action has ended and the backlog is
    // written (or the client is gone).
    let writer = async {
        while let Some(progress) = rx.recv().await {
            if write(w, &Reply::Progress { progress }).await.is_err() {
                return;
            }
        }
    };
    let (result, ()) = tokio::join!(fut, writer);
    Ok(match result {
        Ok(outcome) => Reply::Done { outcome },
        Err(e) => e.into(),
    })
}

/// A channel for an action's progress whose sending side never waits (see [`with_progress`]).
fn progress_channel() -> (
    impl Fn(crate::proto::Progress) + Send + 'static,
    mpsc::Receiver<crate::proto::Progress>,
) {
    let (tx, rx) = mpsc::channel(PROGRESS_BACKLOG);
    (
        move |p| {
            let _ = tx.try_send(p);
        },
        rx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that asked for a sync and stopped reading must not hold the operation: once
    /// the socket buffer is full, the action must still be polled (pacman's output has to be
    /// read for pacman to go on) and run to its end.
    #[tokio::test]
    async fn a_client_that_stops_reading_does_not_stall_the_operation() {
        use crate::plan::Counts;
        use crate::proto::Progress;
        use std::sync::atomic::{AtomicUsize, Ordering};
        // A 64-byte pipe nobody reads: one progress line fills it.
        let (_client, mut server) = tokio::io::duplex(64);
        let (send, rx) = progress_channel();
        let steps = AtomicUsize::new(0);
        let action = async {
            for i in 0..2000 {
                send(Progress {
                    stage: "installing".into(),
                    percent: (i % 100) as u8,
                    current: Some(format!("package{i}")),
                });
                steps.fetch_add(1, Ordering::Relaxed);
                // An action waits many times (pacman's output arrives in pieces).
                tokio::task::yield_now().await;
            }
            Ok(super::super::protocol::Outcome {
                kind: "sync".into(),
                ok: true,
                message: "sync done".into(),
                counts: Counts::default(),
                failures: Vec::new(),
                snapshot: None,
                ..Default::default()
            })
        };
        // Polled by hand, so that "stalled" is a count, not a time: each poll of a future
        // that does not stall moves the action on.
        let mut answer = std::pin::pin!(with_progress(action, rx, &mut server));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..10_000 {
            if steps.load(Ordering::Relaxed) == 2000 {
                break;
            }
            let _ = answer.as_mut().poll(&mut cx);
        }
        assert_eq!(
            steps.load(Ordering::Relaxed),
            2000,
            "the operation waited for a client that does not read"
        );
    }

    #[test]
    fn groups_count_only_for_the_peer_uid() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t10 100 998 \n";
        assert_eq!(groups_of_status(status, 1000), [10, 100, 998]);
        // The pid now belongs to another user (reused after the peer exited): no groups.
        assert!(groups_of_status(status, 65534).is_empty());
        // Real uid matching is not enough; the effective one counts.
        let setuid = "Uid:\t65534\t1000\t1000\t1000\nGroups:\t10\n";
        assert!(groups_of_status(setuid, 65534).is_empty());
        assert_eq!(groups_of_status(setuid, 1000), [10]);
        assert!(groups_of_status("Groups:\t10\n", 0).is_empty());
    }

    #[test]
    fn connections_per_uid_are_capped_and_given_back() {
        let counts = UidCounts::default();
        let held: Vec<UidSlot> = (0..MAX_CLIENTS_PER_UID)
            .map(|_| UidSlot::take(&counts, 65534).unwrap())
            .collect();
        assert!(UidSlot::take(&counts, 65534).is_none());
        assert!(
            UidSlot::take(&counts, 1000).is_some(),
            "other users are not affected"
        );
        drop(held);
        assert!(UidSlot::take(&counts, 65534).is_some());
        assert!(counts.lock().unwrap().get(&65534).is_none_or(|n| *n == 0));
    }
}
