//! The HTTP surface: REST under `/api`, health probes, `/` pointing at them, and the console. The only module that knows HTTP and
//! JSON request shapes; it translates them into calls on the `Runtime` and its errors into
//! `{"error": {"code", "message"}}` responses with stable codes.

mod agents;
mod console;
mod error;
mod executions;
mod health;
mod host;
mod index;
mod metrics;
pub mod openapi;
pub mod otlp;
pub mod ws;

pub use agents::AgentSpec;
pub use console::asset_names as console_asset_names;
pub use error::ApiError;
pub use host::{Mode, SitePolicy};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, MatchedPath, Query, Request};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, HealthConfig, KeyDigest, WebSocketConfig};
use crate::runtime::{Caller, Runtime};

#[derive(Clone)]
pub struct AppState {
    pub runtime: Arc<Runtime>,
    pub auth: Arc<Auth>,
    pub health: Arc<HealthConfig>,
    pub started: Instant,
    /// Cancelled when shutdown begins: readiness fails from then on.
    pub draining: CancellationToken,
    /// Cancelled when the server stops serving: WebSocket clients are told goodbye.
    pub closing: CancellationToken,
    pub websocket: Arc<WebSocketConfig>,
    pub connections: Arc<ws::Connections>,
    /// The names and origins the main listener accepts.
    pub sites: Arc<SitePolicy>,
    /// The bounds of the OTLP intake.
    pub otlp: Arc<otlp::OtlpIngest>,
}

/// API keys and the callers they stand for. With no keys the server is open (loopback only,
/// enforced by the configuration) and every request acts as the local admin.
///
/// Only the keys' SHA-256 digests are held, and a presented token is found by its digest: the
/// lookup compares digests, so how long it takes tells nothing about how much of a real key
/// the token matched.
pub struct Auth {
    keys: HashMap<KeyDigest, Caller>,
}

impl Auth {
    pub fn from_config(config: &Config) -> Result<Auth, ConfigError> {
        let keys = config
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let digest = k
                    .digest()
                    .map_err(|e| ConfigError::Invalid(format!("api_keys[{i}]: {e}")))?;
                let caller = Caller {
                    user_id: k.user.clone(),
                    admin: k.admin,
                };
                Ok((digest, caller))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Auth { keys })
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    fn caller(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::local());
        }
        token
            .and_then(|t| self.keys.get(&KeyDigest::of(t)).cloned())
            .ok_or_else(|| {
                ApiError::unauthorized("a valid API key is required (Authorization: Bearer <key>)")
            })
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Auth>::from_ref(state);
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        // Browsers cannot set headers on a WebSocket upgrade, hence the subprotocol (which
        // keeps the key out of URLs and logs) and `?token=` as well.
        let token = bearer
            .or_else(|| ws::subprotocol_token(&parts.headers))
            .or_else(|| {
                Query::<TokenQuery>::try_from_uri(&parts.uri)
                    .ok()
                    .and_then(|q| q.0.token)
            });
        auth.caller(token.as_deref())
    }
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Arc<Auth> {
        state.auth.clone()
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/agents", get(agents::list).post(agents::create))
        .route("/agents/{id}", get(agents::get).delete(agents::delete))
        .route("/agents/{id}/revenue", get(agents::revenue))
        .route(
            "/executions",
            get(executions::list).post(executions::submit),
        )
        .route("/executions/{id}", get(executions::get))
        .route("/executions/{id}/cancel", post(executions::cancel))
        .route("/executions/{id}/events", get(executions::events))
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .route("/", get(index::index))
        .nest("/api", api)
        .route("/health", get(health::live))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/ws", get(ws::upgrade))
        .merge(otlp_router(state.otlp.max_body_bytes()))
        .merge(metrics_router())
        .merge(console::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Inside the tracking, so that refused requests are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.sites.clone(),
            host::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track_request,
        ))
        .with_state(state)
}

/// What answers while the server waits for its database at start: the probes (alive, not
/// ready), and 503 `store_unavailable` for everything else; under the same host policy.
pub fn starting_router(started: Instant, sites: Arc<SitePolicy>) -> Router {
    Router::new()
        .route("/health", get(health::starting_live))
        .route("/health/live", get(health::starting_live))
        .route("/health/ready", get(health::starting_ready))
        .fallback(error::starting)
        .layer(axum::middleware::from_fn_with_state(sites, host::admit))
        .with_state(started)
}

/// `/metrics` and `/metrics/json` alone, for the optional metrics listener, whose own port
/// `sites` knows.
pub fn metrics_app(state: AppState, sites: Arc<SitePolicy>) -> Router {
    metrics_router()
        .layer(axum::middleware::from_fn_with_state(sites, host::admit))
        .with_state(state)
}

/// The OTLP routes, with their own body cap (checked again once a body is inflated).
fn otlp_router(max_body_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/v1/traces", post(otlp::traces))
        .route("/v1/metrics", post(otlp::metrics))
        .route("/v1/logs", post(otlp::logs))
        .layer(DefaultBodyLimit::max(max_body_bytes))
}

fn metrics_router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics::text))
        .route("/metrics/json", get(metrics::json))
}

/// Counts every request by route template (never the raw path: ids would explode the series)
/// and method, which a client may make up: only the standard ones are named.
async fn track_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(request).await;
    state.runtime.metrics().http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The metric label of a request method: one of a fixed set, whatever the client sent.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}
