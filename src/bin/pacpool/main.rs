//! `pacpool`: the command line. The actions (status, preview, sync, set-latest, revert, …)
//! go through pacpoold's socket; `snapshot`, `plan` and `vercmp` read pacman's files directly
//! and change nothing.

mod admin;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pacpool::daemon::protocol::Request;
use pacpool::machine::PacmanPaths;
use pacpool::plan::{Policy, plan, status};
use pacpool::snapshot::Snapshot;

#[derive(Parser)]
#[command(
    name = "pacpool",
    version,
    about = "Keep pools of Arch Linux machines on the same package versions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// pacpoold's socket, for the commands that talk to this machine's daemon (given before
    /// the command: `pacpool --socket PATH status`); `pacpool admin` does not use it
    #[arg(long, env = "PACPOOL_SOCKET", default_value = pacpool::daemon::config::DEFAULT_SOCKET, value_name = "PATH", help_heading = "Daemon options")]
    socket: PathBuf,
}

#[derive(clap::Args)]
struct PacmanArgs {
    /// pacman.conf to read repositories and paths from [default: /etc/pacman.conf if present]
    #[arg(long, value_name = "FILE")]
    pacman_conf: Option<PathBuf>,
    /// pacman's database directory (default: DBPath from pacman.conf)
    #[arg(long, value_name = "DIR")]
    dbpath: Option<PathBuf>,
    /// package cache directory, repeatable (default: CacheDir from pacman.conf)
    #[arg(long = "cachedir", value_name = "DIR")]
    cache_dirs: Vec<PathBuf>,
    /// Arch Linux Archive style base URL for versions nothing else has
    #[arg(long, value_name = "URL")]
    archive_url: Option<String>,
}

impl PacmanArgs {
    fn paths(&self) -> PacmanPaths {
        PacmanPaths {
            config: self.pacman_conf.clone().or_else(|| {
                let default = Path::new("/etc/pacman.conf");
                default.exists().then(|| default.to_owned())
            }),
            dbpath: self.dbpath.clone(),
            cache_dirs: self.cache_dirs.clone(),
            archive_url: self.archive_url.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show this machine's state against the pool target
    Status {
        #[arg(long)]
        json: bool,
        /// print Waybar custom-module JSON (text, tooltip, class)
        #[arg(long, conflicts_with = "json")]
        waybar: bool,
    },
    /// Show what a sync would do (changes nothing)
    Preview {
        #[arg(long)]
        json: bool,
    },
    /// Install, upgrade, downgrade and remove packages until this machine matches the pool target
    Sync {
        /// don't ask for confirmation
        #[arg(long, short)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make this machine's package state the pool's new target
    SetLatest {
        #[arg(long, short)]
        yes: bool,
        /// go ahead although this machine is behind or diverged: the pool would go back to
        /// older versions or lose packages (they are listed first)
        #[arg(long)]
        allow_older: bool,
        #[arg(long)]
        json: bool,
    },
    /// Go back to the previous recorded package state (works offline)
    Revert {
        /// a recorded state: its id or hash prefix (see `pacpool snapshots`)
        #[arg(long)]
        to: Option<String>,
        #[arg(long, short)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// The local operations: syncs, set-latests, reverts
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// The recorded package states (what revert can go back to)
    Snapshots {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancel the running operation (honoured until pacman starts)
    Cancel,
    /// Pause automatic syncs
    PauseAutoSync,
    /// Resume automatic syncs
    ResumeAutoSync,
    /// Keep this machine at its current target in its pool's rollouts until WHEN (when the
    /// pool lets machines hold themselves; admins use `pacpool admin endpoints hold`)
    Hold {
        /// A UTC date (2026-12-20), a UTC time (2026-12-20T08:00:00Z) or Unix seconds
        #[arg(long, value_name = "WHEN")]
        until: String,
        /// Why (shown in the status: "on hold until 2026-12-20: REASON")
        #[arg(long)]
        reason: String,
    },
    /// Lift a hold this machine set
    Unhold,
    /// Tell pacpoold that pacman changed something (run by the pacman hook)
    Notify,
    /// Administer a coordinator: pools, join tokens, endpoints, targets, operations, audit
    Admin(admin::AdminArgs),
    /// Print this machine's package state as a snapshot (canonical text, or JSON)
    Snapshot {
        #[command(flatten)]
        pacman: PacmanArgs,
        #[arg(long)]
        json: bool,
        /// print only the snapshot hash and package count
        #[arg(long, conflicts_with = "json")]
        hash: bool,
    },
    /// Show what changes between two snapshots: files, or recorded ids / hash prefixes
    Diff {
        from: PathBuf,
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Plan how this machine would reach a target snapshot (changes nothing)
    Plan {
        /// target snapshot file (text or JSON)
        target: PathBuf,
        #[command(flatten)]
        pacman: PacmanArgs,
        /// policy file (TOML: ignore, scope, protected, removal_cap)
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Compare two versions like pacman's vercmp: prints -1, 0 or 1
    Vercmp { a: String, b: String },
}

fn main() -> ExitCode {
    pacpool::logging::init("PACPOOL_LOG", "warn", pacpool::logging::Stream::Stderr);
    let cli = Cli::parse();
    let socket = cli.socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the runtime");
    let remote = match cli.command {
        Command::Status { json, waybar } => {
            Some(rt.block_on(remote::status(&socket, json, waybar)))
        }
        Command::Preview { json } => Some(rt.block_on(remote::preview(&socket, json))),
        Command::Sync { yes, json } => Some(rt.block_on(remote::sync(&socket, yes, json))),
        Command::SetLatest {
            yes,
            allow_older,
            json,
        } => Some(rt.block_on(remote::set_latest(&socket, yes, allow_older, json))),
        Command::Revert { ref to, yes, json } => {
            Some(rt.block_on(remote::revert(&socket, to.clone(), yes, json)))
        }
        Command::History { limit, json } => {
            Some(rt.block_on(remote::history(&socket, limit, json)))
        }
        Command::Snapshots { limit, json } => {
            Some(rt.block_on(remote::snapshots(&socket, limit, json)))
        }
        Command::Cancel => Some(rt.block_on(remote::simple(&socket, Request::Cancel))),
        Command::PauseAutoSync => Some(rt.block_on(remote::simple(
            &socket,
            Request::PauseAutoSync { paused: true },
        ))),
        Command::ResumeAutoSync => Some(rt.block_on(remote::simple(
            &socket,
            Request::PauseAutoSync { paused: false },
        ))),
        // From a pacman hook: never fail the transaction because the daemon is down.
        Command::Notify => Some(
            match rt.block_on(remote::simple(&socket, Request::Notify)) {
                Err(f) if f.code == remote::exit::UNREACHABLE => {
                    tracing::info!("pacpoold is not running: {}", f.message);
                    Ok(remote::exit::SUCCESS)
                }
                other => other,
            },
        ),
        Command::Hold {
            ref until,
            ref reason,
        } => Some(admin::parse_until(until).and_then(|until| {
            rt.block_on(remote::simple(
                &socket,
                Request::Hold {
                    until,
                    reason: reason.clone(),
                },
            ))
        })),
        Command::Unhold => Some(rt.block_on(remote::simple(&socket, Request::Unhold))),
        Command::Admin(ref args) => Some(rt.block_on(admin::run(args))),
        _ => None,
    };
    match remote {
        Some(Ok(code)) => return ExitCode::from(code),
        Some(Err(f)) => {
            pacpool::errln!("pacpool: {}", f.message);
            return ExitCode::from(f.code);
        }
        None => {}
    }
    match rt.block_on(async { run(cli.command, &socket).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            pacpool::errln!("pacpool: {}", pacpool::display::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, socket: &Path) -> anyhow::Result<()> {
    match command {
        Command::Snapshot { pacman, json, hash } => {
            let state = pacman.paths().read()?;
            if hash {
                pacpool::outln!("{} {}", state.snapshot.hash(), state.snapshot.len());
            } else if json {
                pacpool::outln!("{}", serde_json::to_string_pretty(&state.snapshot)?);
            } else {
                pacpool::out!("{}", state.snapshot.encode());
            }
        }
        Command::Diff { from, to, json } => {
            let (a, b) = (
                load_snapshot(&from, socket).await?,
                load_snapshot(&to, socket).await?,
            );
            let delta = a.diff(&b);
            if json {
                pacpool::outln!("{}", serde_json::to_string_pretty(&delta)?);
            } else {
                for p in &delta.added {
                    pacpool::outln!("+ {} {}", p.name, p.version);
                }
                for n in &delta.removed {
                    pacpool::outln!("- {n}");
                }
                for p in &delta.changed {
                    let old = a.get(p.name.as_str()).map_or("?", |o| o.version.as_str());
                    pacpool::outln!("~ {} {} -> {}", p.name, old, p.version);
                }
                for (n, r) in &delta.reason_changed {
                    pacpool::outln!("* {n} now {}", r.as_str());
                }
                pacpool::outln!("{} change(s)", delta.len());
            }
        }
        Command::Plan {
            target,
            pacman,
            policy,
            json,
        } => {
            let target = load_snapshot(&target, socket).await?;
            let policy = match policy {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read policy file {}", p.display()))?;
                    toml::from_str::<Policy>(&text)
                        .with_context(|| format!("invalid policy file {}", p.display()))?
                }
                None => Policy::default(),
            }
            .compile()?;
            let state = pacman.paths().read()?;
            let plan = plan(
                &state.snapshot,
                &target,
                &state.local,
                &state.availability,
                &policy,
            );
            if json {
                pacpool::outln!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                let (s, c) = status(&state.snapshot, &target, &policy);
                pacpool::outln!(
                    "status: {s:?}; {} install, {} upgrade, {} downgrade, {} remove, {} reason",
                    c.install,
                    c.upgrade,
                    c.downgrade,
                    c.remove,
                    c.reason
                );
                for a in &plan.actions {
                    pacpool::outln!("  {}", serde_json::to_string(a)?);
                }
                for c in &plan.conflicts {
                    pacpool::outln!("conflict: {c}");
                }
                for s in &plan.skipped {
                    pacpool::outln!("skipped: {}", serde_json::to_string(s)?);
                }
                if let Some(n) = &plan.needs_confirmation {
                    pacpool::outln!(
                        "needs confirmation: {} removals exceed the cap of {}",
                        n.removals,
                        n.cap
                    );
                }
            }
        }
        Command::Vercmp { a, b } => {
            pacpool::outln!("{}", pacpool::version::vercmp(&a, &b) as i8);
        }
        _ => unreachable!("remote commands are handled in main"),
    }
    Ok(())
}

/// The error and its causes on one line. Library errors already name their cause in their
/// Reads a snapshot from a file holding either the canonical text form or JSON, or, when no
/// such file exists, a recorded state (history id or hash prefix) from pacpoold.
async fn load_snapshot(path: &Path, socket: &Path) -> anyhow::Result<Snapshot> {
    if !path.exists()
        && let Some(id) = path.to_str().filter(|s| !s.contains('/'))
    {
        let text = remote::snapshot_text(socket, id).await.map_err(|f| {
            anyhow::anyhow!(
                "{} is neither a file nor a recorded state: {}",
                path.display(),
                f.message
            )
        })?;
        return Snapshot::decode(&text).context("pacpoold sent an unreadable snapshot");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read snapshot file {}", path.display()))?;
    if text.trim_start().starts_with('{') {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a snapshot in JSON form", path.display()))
    } else {
        Snapshot::decode(&text)
            .with_context(|| format!("{} is not a pacpool snapshot", path.display()))
    }
}
