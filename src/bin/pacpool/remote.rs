//! The commands that talk to pacpoold over its socket.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use pacpool::daemon::client::Client;
use pacpool::daemon::protocol::{
    ErrorCode, LinkState, LocalStatus, Outcome, Preview, Reply, Request,
};
use pacpool::display::clean;
use pacpool::plan::{Conflict, Counts, Skipped};
use pacpool::proto::{EndpointState, Progress};

/// Exit codes, documented in the README.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const NOTHING_TO_DO: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const PACMAN: u8 = 6;
    pub const UNREACHABLE: u8 = 7;
}

/// A failure with the exit code that says what kind it was.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

fn code_for(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::NothingToDo => exit::NOTHING_TO_DO,
        ErrorCode::Refused | ErrorCode::NeedsConfirmation | ErrorCode::Cancelled => exit::REFUSED,
        ErrorCode::Conflict => exit::CONFLICT,
        ErrorCode::PacmanFailed | ErrorCode::Busy => exit::PACMAN,
        ErrorCode::Offline => exit::UNREACHABLE,
        _ => exit::FAILURE,
    }
}

pub async fn connect(socket: &Path) -> Result<Client, Failure> {
    Client::connect(socket)
        .await
        .map_err(|e| Failure::new(exit::UNREACHABLE, e.to_string()))
}

async fn ask(client: &mut Client, request: Request, quiet: bool) -> Result<Reply, Failure> {
    // One line per step: a new stage, or the same stage on the next package (pacman's
    // percentages within a step are not repeated).
    let mut last: (String, Option<String>) = (String::new(), None);
    let reply = client
        .request(request, |p: &Progress| {
            if !quiet && (&p.stage, &p.current) != (&last.0, &last.1) {
                pacpool::errln!(
                    ":: {}{}",
                    clean(&p.stage),
                    p.current
                        .as_deref()
                        .map(|c| format!(" ({})", clean(c)))
                        .unwrap_or_default()
                );
                last = (p.stage.clone(), p.current.clone());
            }
        })
        .await
        .map_err(|e| Failure::new(exit::UNREACHABLE, e.to_string()))?;
    match reply {
        // The daemon's messages may carry the coordinator's text: no escape sequences reach
        // the terminal.
        Reply::Error { code, message } => Err(Failure::new(code_for(code), clean(&message))),
        other => Ok(other),
    }
}

/// Asks for the status and refuses at once when this user may not run actions (before any
/// preview, so the refusal is what the user sees, not a planning error).
async fn status_for_action(client: &mut Client) -> Result<Box<LocalStatus>, Failure> {
    let Reply::Status { status } = ask(client, Request::Status, true).await? else {
        return Err(Failure::new(
            exit::FAILURE,
            "pacpoold did not answer with a status",
        ));
    };
    if !status.can_act {
        return Err(Failure::new(
            exit::REFUSED,
            status
                .why_not
                .clone()
                .unwrap_or_else(|| "you may not run actions on this machine".into()),
        ));
    }
    Ok(status)
}

fn unexpected(reply: Reply) -> Failure {
    Failure::new(
        exit::FAILURE,
        format!("pacpoold answered unexpectedly: {reply:?}"),
    )
}

pub async fn status(socket: &Path, json: bool, waybar: bool) -> Result<u8, Failure> {
    let mut client = connect(socket).await.inspect_err(|f| {
        if waybar {
            // Waybar shows whatever we print; say the daemon is down instead of failing.
            pacpool::outln!("{}", serde_json::json!({"text": "pacpool: down", "tooltip": f.message, "class": "not-running", "alt": "not-running"}));
        }
    })?;
    let Reply::Status { status } = ask(&mut client, Request::Status, true).await? else {
        return Err(Failure::new(
            exit::FAILURE,
            "pacpoold did not answer with a status",
        ));
    };
    if json {
        pacpool::outln!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
    } else if waybar {
        pacpool::outln!("{}", waybar_line(&status));
    } else {
        print_status(&status);
    }
    Ok(exit::SUCCESS)
}

fn state_word(s: &LocalStatus) -> &'static str {
    match (s.link, s.state) {
        (_, EndpointState::Syncing) => "syncing",
        (_, EndpointState::Error) => "error",
        (LinkState::Offline, _) => "offline",
        (_, EndpointState::InSync) => "in-sync",
        (_, EndpointState::Behind) => "behind",
        (_, EndpointState::Ahead) => "ahead",
        (_, EndpointState::Diverged) => "diverged",
        (_, EndpointState::Offline) => "offline",
        (_, EndpointState::Held) => "held",
        (_, EndpointState::Unknown) => "unknown",
    }
}

pub fn counts_line(c: &Counts) -> String {
    c.summary()
}

fn waybar_line(s: &LocalStatus) -> String {
    let word = state_word(s);
    let text = match s.state {
        EndpointState::Behind | EndpointState::Diverged | EndpointState::Ahead => {
            format!("pacpool: {word} ({})", s.counts.total())
        }
        _ => format!("pacpool: {word}"),
    };
    serde_json::json!({
        "text": text,
        "alt": word,
        "class": word,
        "tooltip": tooltip(s),
    })
    .to_string()
}

fn tooltip(s: &LocalStatus) -> String {
    let mut lines = Vec::new();
    if let Some(pool) = &s.pool {
        lines.push(format!("pool {pool}"));
    }
    if let Some(t) = &s.target {
        lines.push(format!(
            "target revision {} set by {}",
            t.revision, t.set_by
        ));
    }
    if let Some(r) = &s.rollout {
        lines.push(r.message.clone());
    }
    lines.push(s.pending());
    if let Some(o) = &s.off_target {
        lines.push(o.to_string());
    }
    if let Some(e) = &s.last_error {
        lines.push(format!("last error: {e}"));
    }
    lines.join("\n")
}

/// "1 package kept by policy", "2 packages kept by policy".
fn kept_line(kept: &[Skipped]) -> String {
    format!("{} kept by policy", pacpool::words::packages(kept.len()))
}

/// One line per difference the policy leaves alone: `kept: delta (protected)`.
fn print_kept(kept: &[Skipped]) {
    for k in kept {
        pacpool::outln!("kept:        {}", clean(&k.to_string()));
    }
}

fn print_status(s: &LocalStatus) {
    match (s.state, &s.target) {
        (EndpointState::Unknown, None) => pacpool::outln!("state:       no pool target yet"),
        _ if s.kept.is_empty() => pacpool::outln!("state:       {}", state_word(s)),
        _ => pacpool::outln!("state:       {}, {}", state_word(s), kept_line(&s.kept)),
    }
    pacpool::outln!(
        "coordinator: {}",
        match s.link {
            LinkState::NotConfigured => "not configured (local-only)",
            LinkState::Unregistered => "not registered",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Offline => "offline",
        }
    );
    if let Some(pool) = &s.pool {
        pacpool::outln!(
            "pool:        {} (this machine: {})",
            clean(pool),
            clean(s.endpoint.as_deref().unwrap_or("?"))
        );
    }
    match &s.target {
        Some(t) => pacpool::outln!(
            "target:      revision {} set by {} ({})",
            t.revision,
            clean(&t.set_by),
            pacpool::words::packages(t.package_count)
        ),
        None => pacpool::outln!("target:      none yet"),
    }
    if let Some(r) = &s.rollout {
        pacpool::outln!("rollout:     {}", clean(&r.message));
    }
    pacpool::outln!("pending:     {}", s.pending());
    print_kept(&s.kept);
    if let Some(o) = &s.off_target {
        pacpool::outln!("off target:  {}", clean(&o.to_string()));
    }
    if let Some(c) = &s.current {
        pacpool::outln!(
            "current:     {} ({}, recorded #{})",
            c.hash.short(),
            pacpool::words::packages(c.package_count),
            c.id
        );
        if let Some(src) = &c.source {
            pacpool::outln!("changed by:  {}", clean(&src.to_string()));
        }
    }
    if let Some(p) = &s.previous {
        pacpool::outln!(
            "previous:    {} ({}, #{}) — `pacpool revert` goes back to it",
            p.hash.short(),
            pacpool::words::packages(p.package_count),
            p.id
        );
    }
    if let Some(op) = &s.operation {
        pacpool::outln!("running:     {}", clean(&op.kind));
    }
    if let Some(e) = &s.last_error {
        pacpool::outln!("last error:  {}", clean(e));
    }
    if !s.can_act {
        pacpool::outln!(
            "note:        {}",
            clean(s.why_not.as_deref().unwrap_or("you may not run actions"))
        );
    }
}

/// Conflicts a sync resolves on its own by refreshing the package databases first.
fn refreshable(c: &Conflict) -> bool {
    matches!(
        c,
        Conflict::VersionUnavailable { .. } | Conflict::RepositoryUnavailable { .. }
    )
}

pub fn print_preview(p: &Preview) {
    pacpool::outln!("{}", p.summary());
    for a in &p.actions {
        pacpool::outln!("  {}", a.describe());
    }
    let missing: Vec<String> = p
        .conflicts
        .iter()
        .filter(|c| refreshable(c))
        .map(|c| match c {
            Conflict::VersionUnavailable { name, wanted, .. } => format!("{name} {wanted}"),
            Conflict::RepositoryUnavailable { name, repo, .. } => format!("{name} (from {repo})"),
            _ => unreachable!("filtered"),
        })
        .collect();
    if !missing.is_empty() {
        pacpool::outln!(
            "not in this machine's package databases yet: {}\n  sync refreshes the databases (pacman -Sy) first and plans again; if they are still missing there, it stops",
            missing.join(", ")
        );
    }
    for c in p.conflicts.iter().filter(|c| !refreshable(c)) {
        pacpool::outln!("conflict: {c}");
    }
    for line in p.preflight_lines() {
        pacpool::outln!("{line}");
    }
    for k in p
        .skipped
        .iter()
        .filter(|k| !p.held_back.iter().any(|h| h.name == *k.name()))
    {
        pacpool::outln!("kept: {}", clean(&k.to_string()));
    }
    if let Some(n) = &p.needs_confirmation {
        pacpool::outln!(
            "note: {} {} the cap of {}; you will be asked to confirm",
            pacpool::words::count(n.removals, "removal", "removals"),
            pacpool::words::plural(n.removals, "exceeds", "exceed"),
            n.cap
        );
    }
}

pub async fn preview(socket: &Path, json: bool) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let Reply::Preview { preview } = ask(&mut client, Request::Preview, true).await? else {
        return Err(Failure::new(
            exit::FAILURE,
            "pacpoold did not answer with a preview",
        ));
    };
    if json {
        pacpool::outln!(
            "{}",
            serde_json::to_string_pretty(&preview).expect("preview serializes")
        );
    } else {
        print_preview(&preview);
    }
    Ok(if preview.conflicts.iter().any(|c| !refreshable(c)) {
        exit::CONFLICT
    } else if preview.actions.is_empty() && !preview.needs_refresh {
        exit::NOTHING_TO_DO
    } else {
        exit::SUCCESS
    })
}

/// Asks a yes/no question on the terminal; without a terminal, refuses (use --yes).
fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            exit::REFUSED,
            "not confirmed: no terminal to ask on; pass --yes to go ahead without asking",
        ));
    }
    pacpool::err!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(
            exit::REFUSED,
            "cancelled: nothing was changed",
        ))
    }
}

fn finish(outcome: Outcome, json: bool) -> Result<u8, Failure> {
    if json {
        pacpool::outln!(
            "{}",
            serde_json::to_string_pretty(&outcome).expect("outcome serializes")
        );
    } else {
        pacpool::outln!("{}", clean(&outcome.message));
        for f in &outcome.failures {
            pacpool::outln!("  {}: {}", clean(&f.name), clean(&f.reason));
        }
        for c in &outcome.config_files {
            if c.saved_as.ends_with(".pacnew") {
                pacpool::outln!(
                    "  new config file {}: merge it into {} (pacdiff)",
                    clean(&c.saved_as),
                    clean(&c.path)
                );
            } else {
                pacpool::outln!(
                    "  saved config file {} (its package removed {})",
                    clean(&c.saved_as),
                    clean(&c.path)
                );
            }
        }
        if let Some(m) = &outcome.snapper_match {
            pacpool::outln!(
                "  the file system as it was in that state: {} (`snapper -c {} undochange {}..0` takes files back)",
                clean(&m.to_string()),
                clean(&m.config),
                m.number
            );
        }
    }
    Ok(if !outcome.ok {
        exit::FAILURE
    } else if outcome.counts.total() == 0 && outcome.kind != "set-latest" {
        exit::NOTHING_TO_DO
    } else {
        exit::SUCCESS
    })
}

pub async fn sync(socket: &Path, yes: bool, json: bool) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    status_for_action(&mut client).await?;
    let Reply::Preview { preview } = ask(&mut client, Request::Preview, true).await? else {
        return Err(Failure::new(
            exit::FAILURE,
            "pacpoold did not answer with a preview",
        ));
    };
    if preview.conflicts.is_empty() && preview.actions.is_empty() {
        if !json {
            pacpool::outln!("nothing to do: this machine is at the pool target");
            for k in &preview.skipped {
                pacpool::outln!("kept: {}", clean(&k.to_string()));
            }
        }
        return Ok(exit::NOTHING_TO_DO);
    }
    if !json {
        print_preview(&preview);
    }
    // Conflicts are re-checked by the daemon (it may refresh its databases first).
    let confirm_removals = preview.needs_confirmation.is_some();
    confirm(
        &format!(
            "Sync to pool target revision {}?",
            preview.target_revision.unwrap_or(0)
        ),
        yes,
    )?;
    match ask(&mut client, Request::Sync { confirm_removals }, json).await? {
        Reply::Done { outcome } => finish(outcome, json),
        other => Err(unexpected(other)),
    }
}

pub async fn set_latest(
    socket: &Path,
    yes: bool,
    allow_older: bool,
    json: bool,
) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    status_for_action(&mut client).await?;
    let Reply::SetLatestPreview { preview } =
        ask(&mut client, Request::SetLatestPreview, true).await?
    else {
        return Err(Failure::new(
            exit::FAILURE,
            "pacpoold did not answer with a set-latest preview",
        ));
    };
    let pool = preview.pool.clone().unwrap_or_else(|| "the pool".into());
    if let Some(line) = preview.loss_line(3) {
        // Everything the pool would lose, whatever happens next.
        if !json {
            pacpool::outln!("{}:", clean(&line));
            for l in &preview.losses {
                pacpool::outln!("  {}", clean(&l.to_string()));
            }
        }
        if !allow_older {
            return Err(Failure::new(
                exit::REFUSED,
                format!(
                    "refused: {line}; run `pacpool sync` first to keep them, or pass --allow-older to make this state the target anyway"
                ),
            ));
        }
    }
    if !json {
        // Computed by the coordinator from the other machines' reported states.
        pacpool::outln!("then: {}", clean(&preview.others_line()));
    }
    confirm(
        &format!(
            "Make this machine's {} the new target of {pool}{}?",
            pacpool::words::packages(preview.packages),
            if preview.goes_back() {
                format!(
                    " (it goes back {})",
                    pacpool::words::packages(preview.losses.len())
                )
            } else {
                String::new()
            },
        ),
        yes,
    )?;
    let request = Request::SetLatest {
        allow_older,
        expect_state: Some(preview.state),
        expect_revision: preview.target_revision,
    };
    match ask(&mut client, request, json).await? {
        Reply::Done { outcome } => finish(outcome, json),
        other => Err(unexpected(other)),
    }
}

pub async fn revert(
    socket: &Path,
    to: Option<String>,
    yes: bool,
    json: bool,
) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let status = status_for_action(&mut client).await?;
    let what = match &to {
        _ if yes => String::new(),
        Some(id) => format!("recorded state {id}"),
        None => match &status.previous {
            Some(p) => format!(
                "the previous state {} (#{}, {}{})",
                p.hash.short(),
                p.id,
                pacpool::words::packages(p.package_count),
                status
                    .revert_changes
                    .map(|c| format!("; this makes {}", c.summary()))
                    .unwrap_or_default()
            ),
            None => {
                return Err(Failure::new(
                    exit::NOTHING_TO_DO,
                    "there is no previous state to revert to",
                ));
            }
        },
    };
    confirm(&format!("Revert this machine to {what}?"), yes)?;
    // Removals over the cap were confirmed by answering the question above.
    match ask(
        &mut client,
        Request::Revert {
            to,
            confirm_removals: yes,
        },
        json,
    )
    .await?
    {
        Reply::Done { outcome } => finish(outcome, json),
        other => Err(unexpected(other)),
    }
}

pub async fn simple(socket: &Path, request: Request) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    match ask(&mut client, request, true).await? {
        Reply::Ok => Ok(exit::SUCCESS),
        other => Err(unexpected(other)),
    }
}

pub async fn snapshots(socket: &Path, limit: usize, json: bool) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let Reply::History { entries } = ask(&mut client, Request::History { limit }, true).await?
    else {
        return Err(Failure::new(
            exit::FAILURE,
            "pacpoold did not answer with the history",
        ));
    };
    if json {
        pacpool::outln!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("history serializes")
        );
    } else {
        pacpool::outln!(
            "{:>6}  {:<12}  {:>8}  {:<20}  {:<8}  {:>7}  changed by",
            "id",
            "hash",
            "packages",
            "taken (UTC)",
            "trigger",
            "snapper"
        );
        for e in entries {
            pacpool::outln!(
                "{:>6}  {:<12}  {:>8}  {:<20}  {:<8}  {:>7}  {}",
                e.id,
                e.hash.short(),
                e.package_count,
                utc(e.taken_at),
                clean(&e.trigger),
                e.snapper
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |s| s.number.to_string()),
                e.source
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |s| clean(&s.to_string()))
            );
        }
    }
    Ok(exit::SUCCESS)
}

pub async fn history(socket: &Path, limit: usize, json: bool) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let Reply::Operations { operations } =
        ask(&mut client, Request::Operations { limit }, true).await?
    else {
        return Err(Failure::new(
            exit::FAILURE,
            "pacpoold did not answer with the operations",
        ));
    };
    if json {
        pacpool::outln!(
            "{}",
            serde_json::to_string_pretty(&operations).expect("operations serialize")
        );
    } else {
        pacpool::outln!(
            "{:>6}  {:<20}  {:<10}  {:<11}  message",
            "id",
            "started (UTC)",
            "kind",
            "state"
        );
        for o in operations {
            pacpool::outln!(
                "{:>6}  {:<20}  {:<10}  {:<11}  {}",
                o.id,
                utc(o.started_at),
                o.kind,
                o.state,
                clean(&o.message)
            );
        }
    }
    Ok(exit::SUCCESS)
}

/// A recorded snapshot's text, for `diff` with history ids.
pub async fn snapshot_text(socket: &Path, id: &str) -> Result<String, Failure> {
    let mut client = connect(socket).await?;
    match ask(&mut client, Request::Snapshot { id: id.to_owned() }, true).await? {
        Reply::Snapshot { text, .. } => Ok(text),
        other => Err(unexpected(other)),
    }
}

pub use pacpool::display::utc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_wording() {
        let c = Counts {
            upgrade: 3,
            downgrade: 1,
            remove: 1,
            ..Counts::default()
        };
        assert_eq!(counts_line(&c), "3 upgrades, 1 downgrade, 1 removal");
        assert_eq!(counts_line(&Counts::default()), "no changes");
    }
}
