//! `pacpool-coordinator`: the server every endpoint daemon talks to.
//!
//! Settings come in layers: defaults, the TOML file (`--config`), the environment
//! (`PACPOOL_COORDINATOR_LISTEN`, `PACPOOL_COORDINATOR_DATABASE`,
//! `PACPOOL_COORDINATOR_ADMIN_TOKEN_FILE`, `PACPOOL_COORDINATOR_TLS_CERT`, `PACPOOL_COORDINATOR_TLS_KEY`), then flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pacpool::coordinator::{self, EXAMPLE_CONFIG, Settings, TlsSettings};

#[derive(Debug, Parser)]
#[command(
    name = "pacpool-coordinator",
    version,
    about = "The pacpool coordinator server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT.
    Serve {
        /// TOML configuration file (see `default-config`).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the file and PACPOOL_COORDINATOR_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// SQLite database file or PostgreSQL URL (overrides the file and
        /// PACPOOL_COORDINATOR_DATABASE).
        #[arg(long, value_name = "FILE")]
        database: Option<PathBuf>,
        /// Where the admin token is kept, written on first start (overrides the file and
        /// PACPOOL_COORDINATOR_ADMIN_TOKEN_FILE).
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
        /// Serve TLS with this PEM certificate chain (overrides [tls] cert and
        /// PACPOOL_COORDINATOR_TLS_CERT; needs a key too).
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert (overrides [tls] key and
        /// PACPOOL_COORDINATOR_TLS_KEY).
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
    },
    /// Print a commented example configuration with every default.
    DefaultConfig,
    /// Copy a stopped coordinator's SQLite database into an empty PostgreSQL database (for
    /// several replicas), then check every table's rows and hash on both sides.
    Migrate {
        /// The SQLite database: `sqlite:/var/lib/pacpool-coordinator/coordinator.db`.
        #[arg(long, value_name = "sqlite:PATH")]
        from: String,
        /// The PostgreSQL database: `postgres://USER:PASSWORD@HOST/DATABASE` (or
        /// PACPOOL_MIGRATE_TO, which keeps a password out of the process list).
        #[arg(
            long,
            value_name = "URL",
            env = "PACPOOL_MIGRATE_TO",
            hide_env_values = true
        )]
        to: String,
        /// A CA certificate (PEM) trusted besides the system's for `sslmode=require`.
        #[arg(long, value_name = "FILE")]
        database_ca_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            pacpool::errln!(
                "pacpool-coordinator: error: {}",
                pacpool::display::error_line(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text is already shown
fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::DefaultConfig => {
            pacpool::out!("{EXAMPLE_CONFIG}");
            Ok(())
        }
        Command::Migrate {
            from,
            to,
            database_ca_file,
        } => {
            let path = coordinator::sqlite_path(&from)?;
            let checks = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(coordinator::migrate(&path, &to, database_ca_file))?;
            for c in &checks {
                pacpool::outln!("{:<18} {:>9} rows  sha256 {}", c.table, c.rows, c.sha256);
            }
            pacpool::outln!(
                "migrated {} into PostgreSQL: every table has the same rows and hash on both sides; \
                 point every replica's `database` at the URL",
                path.display()
            );
            Ok(())
        }
        Command::Serve {
            config,
            listen,
            database,
            admin_token_file,
            tls_cert,
            tls_key,
        } => {
            pacpool::logging::init("RUST_LOG", "info", pacpool::logging::Stream::Stdout);
            let mut settings = match &config {
                Some(path) => Settings::load(path)?,
                None => Settings::default(),
            };
            if let Ok(v) = std::env::var("PACPOOL_COORDINATOR_LISTEN") {
                settings.listen = v.parse().with_context(|| {
                    format!(
                        "PACPOOL_COORDINATOR_LISTEN={v:?} is not an address like 127.0.0.1:7300"
                    )
                })?;
            }
            if let Some(v) = std::env::var_os("PACPOOL_COORDINATOR_DATABASE") {
                settings.database = v.into();
            }
            if let Some(v) = std::env::var_os("PACPOOL_COORDINATOR_ADMIN_TOKEN_FILE") {
                settings.admin_token_file = v.into();
            }
            if let Some(f) = admin_token_file {
                settings.admin_token_file = f;
            }
            if let Some(l) = listen {
                settings.listen = l;
            }
            if let Some(d) = database {
                settings.database = d;
            }
            settings.tls = tls_settings(
                settings.tls.take(),
                tls_cert.or_else(|| {
                    std::env::var_os("PACPOOL_COORDINATOR_TLS_CERT").map(PathBuf::from)
                }),
                tls_key
                    .or_else(|| std::env::var_os("PACPOOL_COORDINATOR_TLS_KEY").map(PathBuf::from)),
            )?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(serve(settings))
        }
    }
}

/// `[tls]` from the file, overridden item by item (environment, then flags); a certificate
/// without a key, or a key without a certificate, is an error.
fn tls_settings(
    file: Option<TlsSettings>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsSettings>> {
    let (file_cert, file_key) = match file {
        Some(t) => (Some(t.cert), Some(t.key)),
        None => (None, None),
    };
    match (cert.or(file_cert), key.or(file_key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsSettings { cert, key })),
        (Some(_), None) => anyhow::bail!(
            "a TLS certificate was given without its key: set [tls] key, PACPOOL_COORDINATOR_TLS_KEY or --tls-key too"
        ),
        (None, Some(_)) => anyhow::bail!(
            "a TLS key was given without its certificate: set [tls] cert, PACPOOL_COORDINATOR_TLS_CERT or --tls-cert too"
        ),
    }
}

async fn serve(settings: Settings) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another coordinator running? change `listen` or --listen",
                settings.listen
            )
        })?;
    coordinator::launch(settings, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
