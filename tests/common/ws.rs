//! A WebSocket client of `/ws` for tests: JSON messages in, the close code out.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TestServer;

/// The bound on waiting for any one frame.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Ws(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

/// What reading the socket produced.
#[derive(Debug)]
pub enum Got {
    Message(Value),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn connect(server: &TestServer) -> Ws {
        Ws::try_connect(server, &[]).await.expect("connects")
    }

    pub async fn try_connect(server: &TestServer, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
        Ws::try_connect_to(&server.url, headers).await
    }

    /// Connects to `/ws` of the server at `base` (`http://host:port`).
    pub async fn connect_to(base: &str) -> Ws {
        Ws::try_connect_to(base, &[]).await.expect("connects")
    }

    pub async fn try_connect_to(base: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
        let url = format!("{}/ws", base.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Ws(stream))
    }

    pub async fn send(&mut self, message: Value) {
        self.0
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    pub async fn subscribe(&mut self, id: &str, since: Option<u64>) {
        let mut message = json!({"type": "subscribe", "executionId": id});
        if let Some(since) = since {
            message["since"] = json!(since);
        }
        self.send(message).await;
    }

    /// The next JSON message or the close, skipping protocol pings and pongs.
    pub async fn next(&mut self) -> Got {
        // One deadline for the whole call: the server's pings must not keep a silent stream
        // waiting forever.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .expect("no message in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Got::Message(serde_json::from_str(&text).unwrap());
                }
                Some(Ok(Message::Close(frame))) => {
                    return Got::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Got::Closed(None),
            }
        }
    }

    pub async fn message(&mut self) -> Value {
        match self.next().await {
            Got::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Messages until the final status event of `id` (inclusive), checking acks on the way.
    pub async fn events_until_end(&mut self, id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let m = self.message().await;
            match m["type"].as_str().unwrap() {
                "subscribed" => continue,
                "log" | "metrics" | "status" => {
                    assert_eq!(m["executionId"], id);
                    let end = m["type"] == "status"
                        && matches!(
                            m["data"]["status"].as_str(),
                            Some("COMPLETED" | "FAILED" | "CANCELLED")
                        );
                    events.push(m);
                    if end {
                        return events;
                    }
                }
                other => panic!("unexpected {other}: {m}"),
            }
        }
    }

    pub async fn expect_error(&mut self, code: &str) -> Value {
        let m = self.message().await;
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["data"]["code"], code, "{m}");
        assert!(m["data"]["message"].as_str().is_some_and(|s| !s.is_empty()));
        m
    }

    pub async fn ping_pong(&mut self) {
        self.send(json!({"type": "ping"})).await;
        let m = self.message().await;
        assert_eq!(m["type"], "pong", "{m}");
    }
}
