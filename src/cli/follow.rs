//! Following an execution over the WebSocket (`/ws`): subscribe with `since` = the last seq
//! printed, print the events as they arrive, and when the connection drops (server restart,
//! network cut, slow-consumer close) reconnect with exponential backoff and jitter and resume
//! where it stopped. The server replays `seq > since` before going live, so every event is
//! printed exactly once, in order.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use agentnexus::domain::Status;
use anyhow::anyhow;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::client::{Client, Failure};
use super::output::dim;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reconnection delays: the first, doubled after each failure up to the last; each wait is
/// drawn from [d/2, d) so that many followers cut at once do not come back at once.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Connecting (TCP and upgrade) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The client pings this often, whatever the server's heartbeat settings...
const PING_EVERY: Duration = Duration::from_secs(15);
/// ...so a connection with nothing inbound for this long (not even a pong) is dead.
const SILENCE: Duration = Duration::from_secs(45);
/// Reconnecting gives up after failing for this long without a successful subscription.
const GIVE_UP: Duration = Duration::from_secs(300);

/// Server error codes that reconnecting cannot fix.
const FATAL_CODES: &[&str] = &["bad_request", "not_found", "unauthorized", "forbidden"];

/// How one connection ended.
enum End {
    /// The execution's terminal status was printed (or it had ended at or before `since`).
    Done(Status),
    /// The connection is gone; `subscribed` says whether the server had acknowledged us.
    Lost { subscribed: bool, why: String },
}

enum ConnectError {
    /// An answer that reconnecting will not change (401, 404, …).
    Fatal(anyhow::Error),
    /// Nobody answered (refused, timed out, reset).
    Unreachable(String),
    /// The server answered but cannot take us now (503 connection limit, 5xx).
    Busy(String),
}

/// Prints the events of execution `id` with a seq above `since` until its terminal status event,
/// and returns that status. `print` prints one event in the REST shape (`seq`, `type`, `data`,
/// `timestamp`) and returns the status it announces.
pub async fn follow(
    client: &Client,
    id: &str,
    mut since: u64,
    print: &mut dyn FnMut(&Value) -> Option<Status>,
) -> anyhow::Result<Status> {
    let mut delay = FIRST_DELAY;
    let mut connected = false;
    let mut failing_since: Option<Instant> = None;
    loop {
        let why = match connect(client).await {
            Ok(socket) => {
                connected = true;
                match session(socket, id, &mut since, print).await? {
                    End::Done(status) => return Ok(status),
                    End::Lost { subscribed, why } => {
                        if subscribed {
                            delay = FIRST_DELAY;
                            failing_since = None;
                        }
                        why
                    }
                }
            }
            Err(ConnectError::Fatal(e)) => return Err(e),
            // The first connection fails like every other command against a missing server.
            Err(ConnectError::Unreachable(cause)) if !connected => {
                return Err(Failure::Unreachable {
                    url: client.base_str().to_owned(),
                    cause,
                }
                .into());
            }
            Err(ConnectError::Unreachable(why) | ConnectError::Busy(why)) => why,
        };
        let failing = *failing_since.get_or_insert_with(Instant::now);
        if failing.elapsed() >= GIVE_UP {
            return Err(Failure::Unreachable {
                url: client.base_str().to_owned(),
                cause: format!("gave up reconnecting after {GIVE_UP:?}: {why}"),
            }
            .into());
        }
        let wait = jitter(delay);
        eprintln!(
            "{}",
            dim(&format!(
                "-- connection lost ({why}); resuming after seq {since} in {} ms",
                wait.as_millis()
            ))
        );
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// A wait drawn uniformly from [d/2, d).
fn jitter(delay: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    let half = delay.as_micros() as u64 / 2;
    Duration::from_micros(half + random % half.max(1))
}

/// Opens `/ws`, sending the API key as `Authorization: Bearer` on the upgrade.
async fn connect(client: &Client) -> Result<Socket, ConnectError> {
    let url = client.ws_url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Fatal(anyhow!("cannot connect to {url}: {e}")))?;
    if let Some(token) = client.token() {
        let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ConnectError::Fatal(anyhow!("the token is not a valid header value")))?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(ConnectError::Unreachable(format!(
            "no answer within {CONNECT_TIMEOUT:?}"
        ))),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) => Err(refused(client, &response)),
        Ok(Err(tungstenite::Error::Io(e))) => Err(ConnectError::Unreachable(e.to_string())),
        Ok(Err(e)) => Err(ConnectError::Busy(e.to_string())),
    }
}

/// The server refused the upgrade with an HTTP answer, normally a JSON error body.
fn refused(client: &Client, response: &http::Response<Option<Vec<u8>>>) -> ConnectError {
    let status = response.status();
    let body: Value = response
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let error = match body["error"]["code"].as_str() {
        Some(code) => Failure::Api {
            code: code.to_owned(),
            message: body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
        None => Failure::Unexpected {
            url: client.base_str().to_owned(),
            detail: format!("HTTP {status} to the WebSocket upgrade"),
        },
    };
    if status.is_server_error() {
        ConnectError::Busy(error.to_string())
    } else {
        ConnectError::Fatal(error.into())
    }
}

/// Subscribes on one connection and prints until the end of the execution or of the connection.
async fn session(
    mut socket: Socket,
    id: &str,
    since: &mut u64,
    print: &mut dyn FnMut(&Value) -> Option<Status>,
) -> anyhow::Result<End> {
    let lost = |subscribed: bool, why: String| Ok(End::Lost { subscribed, why });
    let subscribe = json!({ "type": "subscribe", "executionId": id, "since": *since });
    if let Err(e) = socket.send(Message::text(subscribe.to_string())).await {
        return lost(false, e.to_string());
    }
    let mut subscribed = false;
    let mut last_inbound = Instant::now();
    let mut pings = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout_at(last_inbound + SILENCE, socket.next()) => frame,
            _ = pings.tick() => {
                if let Err(e) = socket.send(Message::Ping(Default::default())).await {
                    return lost(subscribed, e.to_string());
                }
                continue;
            }
        };
        last_inbound = Instant::now();
        let text = match frame {
            Err(_) => {
                return lost(
                    subscribed,
                    format!("nothing from the server for {SILENCE:?}"),
                );
            }
            Ok(None) => return lost(subscribed, "connection closed".into()),
            Ok(Some(Err(e))) => return lost(subscribed, e.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                let why = match frame {
                    Some(f) if f.reason.is_empty() => format!("closed with code {}", f.code),
                    Some(f) => format!("closed with code {}: {}", f.code, f.reason),
                    None => "closed".to_owned(),
                };
                return lost(subscribed, why);
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
            // Pings are answered by tungstenite itself; nothing else is expected.
            Ok(Some(Ok(_))) => continue,
        };
        let Ok(mut message) = serde_json::from_str::<Value>(&text) else {
            return lost(
                subscribed,
                "the server sent something that is not JSON".into(),
            );
        };
        let about_us = message["executionId"] == id;
        match message["type"].as_str() {
            Some("subscribed") if about_us => {
                subscribed = true;
                // With `since` at or past the end of a finished execution nothing more comes.
                let data = &message["data"];
                let status = data["status"]
                    .as_str()
                    .and_then(|s| s.parse::<Status>().ok());
                if let Some(status) = status.filter(|s| s.is_terminal())
                    && data["lastSeq"].as_u64().is_some_and(|last| last <= *since)
                {
                    return Ok(End::Done(status));
                }
            }
            Some("error") => {
                let code = message["data"]["code"].as_str().unwrap_or_default();
                if FATAL_CODES.contains(&code) {
                    return Err(Failure::Api {
                        code: code.to_owned(),
                        message: message["data"]["message"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    }
                    .into());
                }
                if code != "rate_limited" {
                    return lost(subscribed, format!("server error {code}"));
                }
            }
            Some(_) if about_us => {
                // An event. After a reconnection the replay starts after `since`; the check
                // only guards against a server that resends.
                let Some(seq) = message["seq"].as_u64() else {
                    continue;
                };
                if seq <= *since {
                    continue;
                }
                *since = seq;
                if let Some(object) = message.as_object_mut() {
                    object.remove("executionId");
                }
                if let Some(status) = print(&message).filter(|s| s.is_terminal()) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    return Ok(End::Done(status));
                }
            }
            // pong, unsubscribed, messages about other executions, later additions.
            _ => {}
        }
    }
}
