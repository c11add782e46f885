//! The `/ws` protocol's messages as types: what a client sends (`ClientMessage`) and what the
//! server sends (`ServerMessage`). The server and the `agentnexus` command-line client both build
//! and read their messages through these types, so a message kind, a field or an error code
//! cannot exist on one side only.
//!
//! The wire format is the spec's — flat JSON objects tagged by `type` — plus additive extensions
//! (`seq`, `since`, `subscribed`, `unsubscribed`, `error`, JSON `ping`/`pong`). The set of event
//! kinds stays open: a client reads any message it does not know as an event if it has the
//! event fields, so kinds added later reach it.

use std::borrow::Cow;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::domain::{EpochMs, Status};

/// Close codes, beyond the standard ones.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum ClientMessage {
    /// Follow an execution: every stored event with a seq above `since` (all without it), then
    /// the live ones, up to the final status event.
    Subscribe {
        execution_id: String,
        #[serde(
            default,
            deserialize_with = "since",
            skip_serializing_if = "Option::is_none"
        )]
        since: Option<u64>,
    },
    Unsubscribe {
        execution_id: String,
    },
    /// Answered with `pong`: browsers cannot send protocol pings.
    Ping,
}

impl ClientMessage {
    /// Reads a client's text frame; the error says what is wrong, for the client.
    pub fn parse(text: &str) -> Result<ClientMessage, String> {
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => format!("invalid message: {e}"),
            _ => format!("invalid JSON: {e}"),
        })
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a client message serializes")
    }
}

/// `since` with an error that says what it is. Read as a `Number`: serde buffers the fields of
/// this internally tagged enum, and a buffered number that is not a `u64` (`2^64`, `1.5`) would
/// otherwise surface as a confusing "invalid type: map".
fn since<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let invalid = |got: &dyn std::fmt::Display| {
        D::Error::custom(format!(
            "`since` must be the last seq seen, an integer from 0 to {}; got {got}",
            u64::MAX
        ))
    };
    match Option::<serde_json::Number>::deserialize(deserializer) {
        Ok(None) => Ok(None),
        Ok(Some(n)) => n.as_u64().map(Some).ok_or_else(|| invalid(&n)),
        Err(e) => Err(invalid(&e)),
    }
}

/// A message from the server. `D` is an event's `data`: the server writes the stored JSON text
/// as it is (`&RawValue`), a client reads it as a `Value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage<'a, D = Value> {
    /// A subscription is in place; its events follow. With a terminal `status` and
    /// `lastSeq` equal to the subscription's `since`, the client has the whole stream already
    /// and nothing follows.
    Subscribed {
        execution_id: Cow<'a, str>,
        data: Subscription,
        timestamp: EpochMs,
    },
    Unsubscribed {
        execution_id: Cow<'a, str>,
        timestamp: EpochMs,
    },
    Pong {
        timestamp: EpochMs,
    },
    /// A problem with a client message, or with a subscription (then `executionId` names it,
    /// and that subscription has ended).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_id: Option<Cow<'a, str>>,
        data: Problem,
        timestamp: EpochMs,
    },
    /// `log`, `status`, `metrics`, and any kind added later.
    #[serde(untagged)]
    Event(EventMessage<'a, D>),
}

/// One event of an execution's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMessage<'a, D = Value> {
    #[serde(rename = "type")]
    pub kind: Cow<'a, str>,
    pub execution_id: Cow<'a, str>,
    pub seq: u64,
    pub data: D,
    pub timestamp: EpochMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The execution's status when the subscription began.
    pub status: Status,
    /// The seq of its last event then.
    pub last_seq: u64,
}

impl Subscription {
    /// Whether a subscriber that has every event up to `since` has the whole stream already.
    pub fn complete_at(&self, since: u64) -> bool {
        self.status.is_terminal() && self.last_seq <= since
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub code: ErrorCode,
    pub message: String,
    /// With `since_beyond_end`: the execution's last seq, where a subscription may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

/// The stable codes of `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is malformed, or names an invalid id; resending it will not help.
    BadRequest,
    /// No such execution (or someone else's).
    NotFound,
    /// `since` is above the execution's last seq: no event the client could have seen.
    SinceBeyondEnd,
    /// The execution has ended, but its final status event could not be stored; its record
    /// (`GET /api/executions/{id}`) has the end. The subscription is over.
    EndNotStored,
    TooManySubscriptions,
    /// Messages come faster than the rate limit; this one was dropped.
    RateLimited,
    /// A failure on the server's side; the subscription it names has ended.
    Internal,
    /// A code added after this client was built.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::SinceBeyondEnd => "since_beyond_end",
            ErrorCode::EndNotStored => "end_not_stored",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl ServerMessage<'_, &serde_json::value::RawValue> {
    pub fn to_text(&self) -> String {
        // Sized once: this runs for every event sent to every follower.
        let data = match self {
            ServerMessage::Event(event) => event.data.get().len(),
            _ => 0,
        };
        let mut text = Vec::with_capacity(data + 128);
        serde_json::to_writer(&mut text, self).expect("a server message serializes");
        String::from_utf8(text).expect("JSON is UTF-8")
    }
}

/// What a client makes of a server's text frame.
#[derive(Debug)]
pub enum Received {
    Message(ServerMessage<'static>),
    /// Valid JSON of a shape this client does not know (a message kind added later).
    Unknown(Value),
    /// Not JSON: the connection is broken.
    Garbled(serde_json::Error),
}

impl ServerMessage<'static> {
    pub fn parse(text: &str) -> Received {
        match serde_json::from_str::<Value>(text) {
            Err(e) => Received::Garbled(e),
            Ok(value) => match ServerMessage::deserialize(&value) {
                Ok(message) => Received::Message(message),
                Err(_) => Received::Unknown(value),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_read_the_spec_shapes_and_explain_bad_ones() {
        let subscribe = ClientMessage::parse(r#"{"type": "subscribe", "executionId": "e"}"#);
        let expected = ClientMessage::Subscribe {
            execution_id: "e".into(),
            since: None,
        };
        assert_eq!(subscribe, Ok(expected));
        let null_since =
            ClientMessage::parse(r#"{"type":"subscribe","executionId":"e","since":null}"#);
        assert!(matches!(
            null_since,
            Ok(ClientMessage::Subscribe { since: None, .. })
        ));
        for bad in ["-1", "1.5", "\"3\"", "1e30", "18446744073709551616"] {
            let text = format!(r#"{{"type":"subscribe","executionId":"e","since":{bad}}}"#);
            let error = ClientMessage::parse(&text).unwrap_err();
            assert!(error.contains("`since` must be"), "{bad}: {error}");
        }
        assert!(
            ClientMessage::parse("{nope")
                .unwrap_err()
                .starts_with("invalid JSON")
        );
        let unknown = ClientMessage::parse(r#"{"type":"dance"}"#).unwrap_err();
        assert!(unknown.contains("dance"), "{unknown}");
    }

    #[test]
    fn server_messages_round_trip_and_unknown_kinds_stay_readable() {
        let data = serde_json::value::RawValue::from_string(r#"{"log":"hi"}"#.into()).unwrap();
        let event = ServerMessage::Event(EventMessage {
            kind: "log".into(),
            execution_id: "e".into(),
            seq: 3,
            data: &*data,
            timestamp: 7,
        });
        let text = event.to_text();
        let value: Value = serde_json::from_str(&text).unwrap();
        let shape =
            json!({"type":"log","executionId":"e","seq":3,"data":{"log":"hi"},"timestamp":7});
        assert_eq!(value, shape);
        let Received::Message(ServerMessage::Event(read)) = ServerMessage::parse(&text) else {
            panic!("{text}");
        };
        assert_eq!(read.data, json!({"log": "hi"}));

        let span = r#"{"type":"span","executionId":"e","seq":4,"data":{},"timestamp":8}"#;
        assert!(matches!(
            ServerMessage::parse(span),
            Received::Message(ServerMessage::Event(EventMessage { seq: 4, .. }))
        ));
        assert!(matches!(
            ServerMessage::parse(r#"{"type":"notice"}"#),
            Received::Unknown(_)
        ));
        assert!(matches!(
            ServerMessage::parse("{nope"),
            Received::Garbled(_)
        ));
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::SinceBeyondEnd,
            ErrorCode::EndNotStored,
            ErrorCode::TooManySubscriptions,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let error = r#"{"type":"error","data":{"code":"new_code","message":"m"},"timestamp":1}"#;
        assert!(matches!(
            ServerMessage::parse(error),
            Received::Message(ServerMessage::Error {
                data: Problem {
                    code: ErrorCode::Unknown,
                    ..
                },
                ..
            })
        ));
    }
}
