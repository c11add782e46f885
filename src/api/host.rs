//! Which requests may reach the handlers: the DNS-rebinding and cross-origin defence.
//!
//! With no API keys (open mode) the listener is loopback-only and every request acts as the
//! admin, who may define agents — commands the server runs. A web page the operator opens can
//! still reach it: through DNS rebinding (its own name, re-pointed at 127.0.0.1, so the browser
//! treats the server as the page's own origin) or by sending requests to `localhost` from
//! another origin. So in open mode a request is refused before any handler runs unless
//!
//! - every name it gives for the server (the `Host` header, and the authority of an
//!   absolute-form request URI, which must then agree) is a loopback name or address or is in
//!   `allowed_hosts`: a rebinding page's name is neither (421 `forbidden_host`); and
//! - its `Origin`, if it has one (browsers send it on cross-origin requests, on every
//!   WebSocket upgrade and on same-origin writes), is one of the server's own origins —
//!   `http://<a name it answers to>:<its port>` — or in `websocket.allowed_origins`
//!   (403 `forbidden_origin`). A page on another local port, a sandboxed frame (`null`) or a
//!   `file:` page may not drive the server.
//!
//! With API keys (protected mode) the key is what counts, from any host; the `Origin` of a
//! WebSocket upgrade is still checked the same way (`/ws` does it), never against `Host`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::error::ErrorCode;
use crate::config::Config;
use crate::site::{Authority, Host, Origin, SiteError};

/// Whether API keys guard the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No keys: every caller is the local admin; requests must name the server as local.
    Open,
    /// Keys: a request needs one, from wherever it comes.
    Protected,
}

/// The names and origins one listener accepts.
#[derive(Debug)]
pub struct SitePolicy {
    mode: Mode,
    allowed_hosts: Vec<Host>,
    allowed_origins: Vec<Origin>,
    /// The listener's port: the server's own origins are on it.
    port: u16,
}

impl SitePolicy {
    pub fn new(config: &Config, mode: Mode, port: u16) -> Result<SitePolicy, SiteError> {
        let allowed_hosts = config
            .allowed_hosts
            .iter()
            .map(|h| Host::parse(h))
            .collect::<Result<_, _>>()?;
        let allowed_origins = config
            .websocket
            .allowed_origins
            .iter()
            .map(|o| o.parse())
            .collect::<Result<_, _>>()?;
        Ok(SitePolicy {
            mode,
            allowed_hosts,
            allowed_origins,
            port,
        })
    }

    fn answers_to(&self, host: &Host) -> bool {
        host.is_loopback() || self.allowed_hosts.contains(host)
    }

    /// Every name the request gives for the server, which must be one or two that agree.
    fn check_host(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), &'static str> {
        let mut given = headers.get_all(HOST).iter();
        let header = given.next();
        if given.next().is_some() {
            return Err("the request has more than one Host header");
        }
        let parse = |value: Option<&str>| value.and_then(|v| v.parse::<Authority>().ok());
        let header = match header {
            None => None,
            Some(value) => Some(parse(value.to_str().ok()).ok_or("the Host header is invalid")?),
        };
        let target = match uri.authority() {
            None => None,
            Some(a) => Some(parse(Some(a.as_str())).ok_or("the request URI's host is invalid")?),
        };
        let authority = match (header, target) {
            (None, None) => return Err("the request has no Host header"),
            (Some(h), Some(t)) if h != t => {
                return Err("the request URI names another host than the Host header");
            }
            (Some(a), _) | (None, Some(a)) => a,
        };
        if !self.answers_to(&authority.host) {
            return Err(
                "without API keys this server answers only to a loopback name or address \
                 (localhost, 127.0.0.1, [::1]) or a name in allowed_hosts",
            );
        }
        Ok(())
    }

    /// Non-browser clients send no `Origin`; a browser's must be one of the server's own
    /// origins or in `websocket.allowed_origins`. Compared with configuration only, never with
    /// anything else the request says.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let mut given = headers.get_all(ORIGIN).iter();
        let Some(value) = given.next() else {
            return true;
        };
        if given.next().is_some() {
            return false;
        }
        let Some(origin) = value.to_str().ok().and_then(|v| v.parse::<Origin>().ok()) else {
            return false;
        };
        self.allowed_origins.contains(&origin) || self.is_own(&origin)
    }

    /// A page this server itself would serve: over HTTP, on this listener's port, under a name
    /// it answers to.
    fn is_own(&self, origin: &Origin) -> bool {
        origin.scheme == "http" && origin.port == Some(self.port) && self.answers_to(&origin.host)
    }
}

/// Refuses, in open mode, what does not name this server as local or comes from a foreign
/// page, before routing.
pub async fn admit(
    State(policy): State<Arc<SitePolicy>>,
    request: Request,
    next: Next,
) -> Response {
    if policy.mode == Mode::Open {
        if let Err(why) = policy.check_host(request.headers(), request.uri()) {
            tracing::debug!(why, "refused a request for a foreign host");
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                ErrorCode::ForbiddenHost,
                why,
            )
            .into_response();
        }
        if !policy.origin_allowed(request.headers()) {
            return forbidden_origin().into_response();
        }
    }
    next.run(request).await
}

pub fn forbidden_origin() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::ForbiddenOrigin,
        "requests from this Origin are not allowed: only the server's own origins and \
         websocket.allowed_origins are",
    )
}
