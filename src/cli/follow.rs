//! Following an execution over the WebSocket (`/ws`): subscribe with `since` = the last seq
//! printed, print the events as they arrive, and when the connection drops (server restart,
//! network cut, slow-consumer close) reconnect with exponential backoff and jitter and resume
//! where it stopped. The server replays `seq > since` before going live, so every event is
//! printed exactly once, in order.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use agentnexus::api::ws::protocol::{
    ClientMessage, ErrorCode, EventMessage, Problem, Received, ServerMessage,
};
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

/// How one connection ended.
enum End {
    /// The execution's terminal status was printed (or it had ended at or before `since`).
    Done(Status),
    /// The execution has ended without a final status event; its record has the status.
    EndedUnrecorded,
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
                    End::EndedUnrecorded => return recorded_end(client, id).await,
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

/// The status in the execution's record, for an end that is not in its event stream.
async fn recorded_end(client: &Client, id: &str) -> anyhow::Result<Status> {
    let execution = client.get(&["executions", id], &[]).await?;
    execution["status"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .filter(|s: &Status| s.is_terminal())
        .ok_or_else(|| anyhow!("execution {id} has no final status in its record: {execution}"))
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
    if let Err(e) = socket.send(subscribe(id, *since)).await {
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
        let message = match ServerMessage::parse(&text) {
            Received::Message(message) => message,
            // A message kind added after this client was built.
            Received::Unknown(_) => continue,
            Received::Garbled(_) => {
                return lost(
                    subscribed,
                    "the server sent something that is not JSON".into(),
                );
            }
        };
        match message {
            ServerMessage::Subscribed {
                execution_id, data, ..
            } if execution_id == id => {
                subscribed = true;
                // With `since` at the end of a finished execution nothing more comes.
                if data.complete_at(*since) {
                    return Ok(End::Done(data.status));
                }
            }
            ServerMessage::Error {
                execution_id, data, ..
            } if execution_id.as_deref().is_none_or(|e| e == id) => match on_error(data, since)? {
                OnError::Continue => {}
                OnError::Resubscribe => {
                    if let Err(e) = socket.send(subscribe(id, *since)).await {
                        return lost(subscribed, e.to_string());
                    }
                }
                OnError::Reconnect(why) => return lost(subscribed, why),
                OnError::EndedUnrecorded => return Ok(End::EndedUnrecorded),
            },
            ServerMessage::Event(event) if event.execution_id == id => {
                // After a reconnection the replay starts after `since`; the check only guards
                // against a server that resends.
                if event.seq <= *since {
                    continue;
                }
                *since = event.seq;
                if let Some(status) = print(&rest_shape(event)).filter(|s| s.is_terminal()) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    return Ok(End::Done(status));
                }
            }
            // Pongs, acknowledgements and events of other executions.
            ServerMessage::Subscribed { .. }
            | ServerMessage::Unsubscribed { .. }
            | ServerMessage::Pong { .. }
            | ServerMessage::Error { .. }
            | ServerMessage::Event(_) => {}
        }
    }
}

fn subscribe(id: &str, since: u64) -> Message {
    let message = ClientMessage::Subscribe {
        execution_id: id.to_owned(),
        since: Some(since),
    };
    Message::text(message.to_text())
}

/// What a session does about an `error` concerning its subscription.
enum OnError {
    Continue,
    /// `since` was moved; subscribe again on this connection.
    Resubscribe,
    Reconnect(String),
    /// The execution ended without a final status event.
    EndedUnrecorded,
}

fn on_error(problem: Problem, since: &mut u64) -> anyhow::Result<OnError> {
    let fatal = |problem: Problem| {
        Err(Failure::Api {
            code: problem.code.as_str().to_owned(),
            message: problem.message,
        }
        .into())
    };
    match problem.code {
        // Reconnecting cannot fix these.
        ErrorCode::BadRequest | ErrorCode::NotFound | ErrorCode::TooManySubscriptions => {
            fatal(problem)
        }
        ErrorCode::SinceBeyondEnd => {
            // Nothing after `since` can come; the execution's end, and its status, can.
            let Some(last_seq) = problem.last_seq else {
                return fatal(problem);
            };
            eprintln!(
                "{}",
                dim(&format!(
                    "-- seq {since} is beyond the last event (seq {last_seq}); following from there"
                ))
            );
            *since = last_seq;
            Ok(OnError::Resubscribe)
        }
        ErrorCode::EndNotStored => {
            eprintln!("{}", dim(&format!("-- {}", problem.message)));
            Ok(OnError::EndedUnrecorded)
        }
        // Only the dropped message is lost, and this client sends one.
        ErrorCode::RateLimited => Ok(OnError::Continue),
        ErrorCode::Internal | ErrorCode::Unknown => Ok(OnError::Reconnect(format!(
            "server error {}: {}",
            problem.code.as_str(),
            problem.message
        ))),
    }
}

/// An event as the REST API shows it: without `executionId`.
fn rest_shape(event: EventMessage<'_>) -> Value {
    json!({
        "seq": event.seq,
        "type": event.kind,
        "data": event.data,
        "timestamp": event.timestamp,
    })
}
