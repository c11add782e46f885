//! `agentnexus serve`: load the configuration, run the server until SIGTERM or ctrl-c, then
//! shut down gracefully.

use std::path::PathBuf;
use std::process::ExitCode;

use agentnexus::config::{Config, DatabaseUrl, Overrides};
use agentnexus::server::Server;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use super::USAGE;
use super::output::{error, stderr_styled};

#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration file
    #[arg(long, value_name = "FILE", env = "AGENTNEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the configuration (port 0 picks a free one)
    #[arg(long, value_name = "ADDR:PORT")]
    bind: Option<std::net::SocketAddr>,
    /// Directory for the database and execution scratch space, overriding the configuration
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// NATS server carrying live events between replicas (nats:// or tls://), overriding the
    /// configuration
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// PostgreSQL database to keep everything in (postgres://user:password@host/db), instead
    /// of the embedded SQLite in the data directory; overrides the configuration
    #[arg(
        long,
        value_name = "URL",
        env = "AGENTNEXUS_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// This replica's name among those sharing one database (default: the host name plus a
    /// random suffix); overrides the configuration
    #[arg(long, value_name = "NAME", env = "AGENTNEXUS_REPLICA_ID")]
    replica_id: Option<String>,
}

pub fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        bind: args.bind,
        data_dir: args.data_dir,
        nats_url: args.nats_url,
        replica_id: args.replica_id,
        database_url: args.database_url.map(DatabaseUrl::new),
    };
    let config = match Config::load(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            error(e);
            return ExitCode::from(USAGE);
        }
    };
    // Logs go to stderr, leaving stdout free; colour only for a person at a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(stderr_styled())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            error(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                error(e);
                return ExitCode::FAILURE;
            }
        };
        let code = match stop_requested().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error(format_args!("cannot wait for signals, shutting down: {e}"));
                ExitCode::FAILURE
            }
        };
        tokio::select! {
            () = server.shutdown() => code,
            _ = tokio::signal::ctrl_c() => {
                error("interrupted again, exiting without finishing the shutdown");
                // Not a return: dropping the runtime would wait for the store's blocking thread.
                std::process::exit(130)
            }
        }
    })
}

/// Resolves on the first SIGTERM or SIGINT.
async fn stop_requested() -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
