//! Wires everything together: starts the runtime, binds the listener and serves the API until
//! told to stop, then shuts down in order (stop accepting, let executions finish or stop them,
//! flush the store).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Auth};
use crate::config::Config;
use crate::runtime::{self, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A server that is up and serving.
pub struct Server {
    addr: SocketAddr,
    runtime: Arc<Runtime>,
    stop_accepting: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    shutdown_grace: Duration,
}

impl Server {
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let started = Instant::now();
        let runtime = Runtime::start(&config).await?;
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let auth = Arc::new(Auth::from_config(&config));
        if auth.is_open() {
            tracing::warn!(
                "no api_keys configured: the API is open to anyone who can reach {addr} (loopback only)"
            );
        }
        let state = AppState {
            runtime: runtime.clone(),
            auth,
            started,
        };
        let app = api::router(state, config.max_body_bytes);
        let stop_accepting = CancellationToken::new();
        let stop = stop_accepting.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        tracing::info!(%addr, data_dir = %config.data_dir.display(), ready_ms = started.elapsed().as_millis() as u64, "agentnexus listening");
        Ok(Server {
            addr,
            runtime,
            stop_accepting,
            http,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Graceful shutdown: stop accepting requests, let running executions finish within the
    /// grace period, stop the rest, and commit everything.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.stop_accepting.cancel();
        self.runtime.shutdown(self.shutdown_grace).await;
        // In-flight requests had the whole grace period; do not wait on them forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        tracing::info!("stopped");
    }
}
