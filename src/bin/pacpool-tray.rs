//! `pacpool-tray`: the tray icon for the desktop session. Parses arguments, takes the
//! single-instance lock and runs the event loop (`pacpool::tray`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes.
mod exit {
    pub const FAILURE: u8 = 1;
    /// Another instance already runs in this session.
    pub const ALREADY_RUNNING: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "pacpool-tray",
    version,
    about = "Tray icon for pacpool: this machine against its pool, the three actions, notifications"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// pacpoold's socket
    #[arg(long, env = "PACPOOL_SOCKET", default_value = pacpool::daemon::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Show no notifications unless asked for (preview, history, failed clicks)
    #[arg(long, env = "PACPOOL_TRAY_MUTE")]
    mute: bool,
    /// The single-instance lock [default: $XDG_RUNTIME_DIR/pacpool-tray.lock]
    #[arg(long)]
    lock_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the icons as SVG and PNG (16–256 px) into DIR (how `assets/` is made)
    ExportIcons { dir: PathBuf },
}

fn main() -> ExitCode {
    pacpool::logging::init("PACPOOL_LOG", "info", pacpool::logging::Stream::Stderr);
    let cli = Cli::parse();
    if let Some(Cmd::ExportIcons { dir }) = &cli.command {
        return match pacpool::tray::icons::export(dir) {
            Ok(files) => {
                pacpool::outln!("wrote {} files into {}", files.len(), dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                pacpool::errln!(
                    "pacpool-tray: error: cannot write icons into {}: {e}",
                    dir.display()
                );
                ExitCode::from(exit::FAILURE)
            }
        };
    }
    let lock_path = cli
        .lock_file
        .clone()
        .unwrap_or_else(pacpool::tray::lock::default_path);
    let _lock = match pacpool::tray::lock::acquire(&lock_path) {
        Ok(l) => l,
        Err(e @ pacpool::tray::lock::LockError::Held(_)) => {
            pacpool::errln!("pacpool-tray: {e}");
            return ExitCode::from(exit::ALREADY_RUNNING);
        }
        Err(e) => {
            pacpool::errln!("pacpool-tray: error: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    tracing::info!(socket = %cli.socket.display(), muted = cli.mute, "pacpool-tray starting");
    let result = pacpool::tray::app::run(pacpool::tray::app::Options {
        socket: cli.socket,
        muted: cli.mute,
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            pacpool::errln!("pacpool-tray: error: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
