//! Command-line interface (placeholder, replaced below).
use agentnexus::config::{Config, Overrides};
use agentnexus::server::Server;
use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "agentnexus", version, about)]
enum Cli {
    Serve {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Cli::Serve {
        config,
        bind,
        data_dir,
    } = Cli::parse();
    let config = match Config::load(config.as_deref(), Overrides { bind, data_dir }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let server = Server::start(config).await.unwrap();
        tokio::signal::ctrl_c().await.unwrap();
        server.shutdown().await;
    });
    ExitCode::SUCCESS
}
