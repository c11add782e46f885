//! A small JSON client of the server's REST API. Responses stay `serde_json::Value`: the CLI
//! only picks a few fields and prints the rest as it came, so new server fields never break it.

use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::Value;

use super::ClientArgs;

/// A failure on the server's side of the conversation; the CLI exits with code 4 on it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{message} ({code})")]
    Api { code: String, message: String },
    #[error("cannot reach the server at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("unexpected answer from the server at {url}: {detail}")]
    Unexpected { url: String, detail: String },
}

pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// Checks `--url` up front, so that a typo is a usage error rather than a failed request.
pub fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err("only http:// URLs are supported".into());
    }
    Ok(url)
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Every call is a short request; long waits are done by polling.
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Client {
            base: args.url.clone(),
            token: args.token.clone(),
            http,
        })
    }

    /// `GET /api/<path>?<query>`.
    pub async fn get(&self, path: &[&str], query: &[(&str, String)]) -> Result<Value, Failure> {
        self.send(Method::GET, path, query, None).await
    }

    pub async fn post(&self, path: &[&str], body: &Value) -> Result<Value, Failure> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &[&str]) -> Result<Value, Failure> {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// Sends one request; a success yields its JSON body (`Null` when empty).
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut request = self.http.request(method, self.url(path, query));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        let json = if text.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str::<Value>(&text)
        };
        match json {
            Ok(value) if status.is_success() => Ok(value),
            Ok(value) if value["error"]["code"].is_string() => Err(Failure::Api {
                code: value["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }),
            _ => Err(Failure::Unexpected {
                url: self.base_str().to_owned(),
                detail: format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ),
            }),
        }
    }

    /// The base URL with `/api/<path>` appended; segments are percent-encoded, so ids from the
    /// command line cannot change the route.
    fn url(&self, path: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http URLs have a path")
            .pop_if_empty()
            .push("api")
            .extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The WebSocket endpoint: the base URL with `ws`/`wss` for `http`/`https` and `/ws`
    /// appended to its path.
    pub fn ws_url(&self) -> Url {
        let mut url = self.base.clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .expect("http(s) and ws(s) are both special schemes");
        url.path_segments_mut()
            .expect("http URLs have a path")
            .pop_if_empty()
            .push("ws");
        url
    }

    /// The API key, for requests made outside this client (the WebSocket upgrade).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base_str(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        // reqwest's own message is "error sending request for url (...)"; the innermost
        // cause ("Connection refused", "operation timed out") is what tells the user something.
        let mut cause: &dyn std::error::Error = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        Failure::Unreachable {
            url: self.base_str().to_owned(),
            cause: cause.to_string(),
        }
    }
}
