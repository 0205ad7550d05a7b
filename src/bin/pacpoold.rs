//! `pacpoold`: the endpoint daemon (runs as root under systemd, or in the foreground).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pacpool::daemon::{self, DaemonConfig, config};

#[derive(Parser)]
#[command(name = "pacpoold", version, about = "pacpool endpoint daemon")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file
    #[arg(long, short, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Coordinator URL (overrides the file)
    #[arg(long, global = true)]
    coordinator: Option<String>,
    /// State directory (overrides the file)
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Socket path (overrides the file)
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default)
    Run,
    /// Print a commented example configuration
    DefaultConfig,
    /// Print the configuration in effect (file, environment and flags) and exit
    ShowConfig,
}

fn load(cli: &Cli) -> anyhow::Result<DaemonConfig> {
    let mut c = DaemonConfig::load(&cli.config)?;
    c.apply_env(std::env::vars())?;
    if let Some(u) = &cli.coordinator {
        c.coordinator_url = Some(u.clone());
    }
    if let Some(d) = &cli.state_dir {
        c.state_dir = d.clone();
    }
    if let Some(s) = &cli.socket {
        c.socket = s.clone();
    }
    Ok(c)
}

fn main() -> ExitCode {
    pacpool::logging::init("PACPOOL_LOG", "info", pacpool::logging::Stream::Stderr);
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::DefaultConfig) => {
            pacpool::out!("{}", config::EXAMPLE);
            Ok(())
        }
        Some(Command::ShowConfig) => load(&cli).and_then(|mut c| {
            c.resolve()?;
            pacpool::out!("{}", toml::to_string_pretty(&c.shown())?);
            Ok(())
        }),
        Some(Command::Run) | None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Once, on standard error (the journal under systemd), with each cause said once.
        Err(e) => {
            pacpool::errln!("pacpoold: {}", pacpool::display::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load(cli)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("pacpoold")
        .build()?;
    rt.block_on(daemon::run(config, shutdown_signal()))
}

/// SIGTERM (systemd) or SIGINT (a terminal).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
