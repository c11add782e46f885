//! The connection to the Docker daemon and its health. A background probe pings the daemon
//! periodically and keeps `agentnexus_docker_healthy` current; readiness asks for a fresh check.
//! The client is created lazily and dropped on failure, so a daemon that comes back (or a
//! socket that reappears) is picked up without a restart. The docker executor borrows the same
//! client through `DockerProbe::client`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio_util::sync::CancellationToken;

use crate::config::DockerConfig;
use crate::metrics::Metrics;

/// Why no Docker client can be had right now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DockerError {
    #[error("Docker is not enabled in this deployment (docker.enabled = false)")]
    NotConfigured,
    #[error("the Docker daemon at {host} is unavailable: {reason}")]
    Unavailable { host: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHealth {
    /// The deployment does not use Docker (`docker.enabled = false`).
    NotConfigured,
    Healthy,
    Unavailable(String),
}

pub struct DockerProbe {
    host: Option<String>,
    client: tokio::sync::Mutex<Option<Docker>>,
    last: Mutex<DockerHealth>,
    metrics: Arc<Metrics>,
}

impl DockerProbe {
    pub fn new(config: &DockerConfig, metrics: Arc<Metrics>) -> DockerProbe {
        let host = config.enabled.then(|| {
            config
                .host
                .clone()
                .or_else(|| std::env::var("DOCKER_HOST").ok())
                .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
        });
        let last = match host {
            Some(_) => DockerHealth::Unavailable("not checked yet".into()),
            None => DockerHealth::NotConfigured,
        };
        DockerProbe {
            host,
            client: tokio::sync::Mutex::new(None),
            last: Mutex::new(last),
            metrics,
        }
    }

    /// The daemon address in use, if Docker is configured.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The outcome of the latest check.
    pub fn last(&self) -> DockerHealth {
        self.last.lock().unwrap().clone()
    }

    /// Pings the daemon (connecting first if needed), within `timeout`.
    pub async fn check(&self, timeout: Duration) -> DockerHealth {
        let Some(host) = &self.host else {
            return DockerHealth::NotConfigured;
        };
        let health = match tokio::time::timeout(timeout, self.ping(host)).await {
            Ok(Ok(())) => DockerHealth::Healthy,
            Ok(Err(e)) => {
                *self.client.lock().await = None;
                DockerHealth::Unavailable(e)
            }
            Err(_) => {
                // Whatever hung may be stuck in the client: start afresh next time.
                if let Ok(mut client) = self.client.try_lock() {
                    *client = None;
                }
                DockerHealth::Unavailable(format!("no answer within {timeout:?}"))
            }
        };
        self.metrics
            .docker_healthy
            .set(i64::from(health == DockerHealth::Healthy));
        *self.last.lock().unwrap() = health.clone();
        health
    }

    async fn ping(&self, host: &str) -> Result<(), String> {
        let mut client = self.client.lock().await;
        let docker = connected(&mut client, host).await?;
        docker.ping().await.map(drop).map_err(|e| e.to_string())
    }

    /// A client with the API version negotiated, connecting first if needed, within `timeout`.
    /// It is not pinged: the caller's first request fails fast enough if the daemon is gone,
    /// and the background probe notices and starts afresh.
    pub async fn client(&self, timeout: Duration) -> Result<Docker, DockerError> {
        let Some(host) = &self.host else {
            return Err(DockerError::NotConfigured);
        };
        let unavailable = |reason: String| DockerError::Unavailable {
            host: host.clone(),
            reason,
        };
        let connect = async {
            let mut client = self.client.lock().await;
            connected(&mut client, host).await.cloned()
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(docker)) => Ok(docker),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(format!("no answer within {timeout:?}"))),
        }
    }

    /// Checks every `interval` until `stop`.
    pub fn spawn_background(
        self: Arc<Self>,
        interval: Duration,
        timeout: Duration,
        stop: CancellationToken,
    ) {
        if self.host.is_none() {
            return;
        }
        tokio::spawn(async move {
            loop {
                let before = self.last();
                let now = self.check(timeout).await;
                if now != before {
                    match &now {
                        DockerHealth::Healthy => {
                            tracing::info!(host = self.host(), "Docker daemon available")
                        }
                        DockerHealth::Unavailable(why) => {
                            tracing::warn!(host = self.host(), reason = %why, "Docker daemon unavailable")
                        }
                        DockerHealth::NotConfigured => {}
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
    }
}

async fn connected<'a>(client: &'a mut Option<Docker>, host: &str) -> Result<&'a Docker, String> {
    if client.is_none() {
        let docker = Docker::connect_with_host(host).map_err(|e| e.to_string())?;
        *client = Some(
            docker
                .negotiate_version()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(client.as_ref().expect("connected above"))
}
