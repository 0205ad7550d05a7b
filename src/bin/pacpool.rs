//! `pacpool`: the command line. This build has the local commands that read pacman's state
//! directly; the daemon-backed actions (status, sync, set-latest, revert) come with pacpoold.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Show what changes between two snapshot files
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PACPOOL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pacpool: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Snapshot { pacman, json, hash } => {
            let state = pacman.paths().read()?;
            if hash {
                println!("{} {}", state.snapshot.hash(), state.snapshot.len());
            } else if json {
                println!("{}", serde_json::to_string_pretty(&state.snapshot)?);
            } else {
                print!("{}", state.snapshot.encode());
            }
        }
        Command::Diff { from, to, json } => {
            let (a, b) = (load_snapshot(&from)?, load_snapshot(&to)?);
            let delta = a.diff(&b);
            if json {
                println!("{}", serde_json::to_string_pretty(&delta)?);
            } else {
                for p in &delta.added {
                    println!("+ {} {}", p.name, p.version);
                }
                for n in &delta.removed {
                    println!("- {n}");
                }
                for p in &delta.changed {
                    let old = a.get(p.name.as_str()).map_or("?", |o| o.version.as_str());
                    println!("~ {} {} -> {}", p.name, old, p.version);
                }
                for (n, r) in &delta.reason_changed {
                    println!("* {n} now {}", r.as_str());
                }
                println!("{} change(s)", delta.len());
            }
        }
        Command::Plan {
            target,
            pacman,
            policy,
            json,
        } => {
            let target = load_snapshot(&target)?;
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
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                let (s, c) = status(&state.snapshot, &target, &policy);
                println!(
                    "status: {s:?}; {} install, {} upgrade, {} downgrade, {} remove, {} reason",
                    c.install, c.upgrade, c.downgrade, c.remove, c.reason
                );
                for a in &plan.actions {
                    println!("  {}", serde_json::to_string(a)?);
                }
                for c in &plan.conflicts {
                    println!("conflict: {c}");
                }
                for s in &plan.skipped {
                    println!("skipped: {}", serde_json::to_string(s)?);
                }
                if let Some(n) = &plan.needs_confirmation {
                    println!(
                        "needs confirmation: {} removals exceed the cap of {}",
                        n.removals, n.cap
                    );
                }
            }
        }
        Command::Vercmp { a, b } => {
            println!("{}", pacpool::version::vercmp(&a, &b) as i8);
        }
    }
    Ok(())
}

/// The error and its causes on one line. Library errors already name their cause in their
/// message, so a cause whose text is already there is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out
}

/// Reads a snapshot from a file holding either the canonical text form or JSON.
fn load_snapshot(path: &Path) -> anyhow::Result<Snapshot> {
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
