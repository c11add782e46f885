//! A client that follows an execution over `/ws` from its first event and remembers every
//! event it saw, and the check that matters after any fault: everything a client saw is
//! stored, once, in order, and the execution ended with a cause.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

pub struct Witness {
    seen: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl Witness {
    /// Subscribes to execution `id` on the server at `url` (`http://…`) from the start.
    pub async fn follow(url: &str, id: &str) -> Witness {
        let ws_url = format!("{}/ws", url.replace("http://", "ws://"));
        let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let subscribe = json!({"type": "subscribe", "executionId": id});
        socket
            .send(Message::text(subscribe.to_string()))
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                // Until the final status event, or until the connection goes (a killed server).
                while let Some(Ok(frame)) = socket.next().await {
                    let Message::Text(text) = frame else {
                        continue;
                    };
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if !matches!(message["type"].as_str(), Some("log" | "metrics" | "status")) {
                        continue;
                    }
                    let end = is_final(&message);
                    seen.lock().unwrap().push(message);
                    if end {
                        return;
                    }
                }
            }
        });
        Witness { seen, task }
    }

    /// What it has seen so far.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until it has seen `count` log lines (or `within` passes).
    pub async fn wait_lines(&self, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while super::log_lines(&self.seen()).len() < count {
            assert!(
                Instant::now() < deadline,
                "the client saw fewer than {count} lines within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything it saw, once its stream ended (final status or lost connection).
    pub async fn finish(self, within: Duration) -> Vec<Value> {
        tokio::time::timeout(within, self.task)
            .await
            .expect("the stream ends")
            .unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

fn is_final(event: &Value) -> bool {
    event["type"] == "status"
        && matches!(
            event["data"]["status"].as_str(),
            Some("COMPLETED" | "FAILED" | "CANCELLED")
        )
}

/// Every event a client saw is stored, once, in order (at its seq, unchanged); the stored
/// stream is gapless and ends with exactly one final status, which names a cause unless it is
/// COMPLETED. Returns that final status event.
pub fn assert_seen_stored_and_ended(seen: &[Value], stored: &[Value]) -> Value {
    super::assert_gapless(stored);
    for event in seen {
        let seq = event["seq"].as_u64().expect("a seq") as usize;
        assert!(
            seq >= 1 && seq <= stored.len(),
            "seen but not stored: {event}"
        );
        let kept = &stored[seq - 1];
        for field in ["seq", "type", "data", "timestamp"] {
            assert_eq!(event[field], kept[field], "seen {event}, stored {kept}");
        }
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the client saw a gap or a duplicate: {seqs:?}"
    );
    let last = stored.last().expect("events").clone();
    assert!(
        is_final(&last),
        "the stream does not end with a final status: {last}"
    );
    assert_eq!(
        stored.iter().filter(|e| is_final(e)).count(),
        1,
        "more than one final status"
    );
    if last["data"]["status"] != "COMPLETED" {
        let kind = last["data"]["error"]["kind"].as_str().unwrap_or_default();
        assert!(!kind.is_empty(), "the end names no cause: {last}");
    }
    last
}

/// The numbers of the `<prefix> N` log lines, asserting they are 1, 2, 3, … without a hole:
/// what is stored of the agent's output is a prefix of it.
pub fn assert_counted_lines(events: &[Value], prefix: &str) -> usize {
    let numbers: Vec<usize> = super::log_lines(events)
        .iter()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect();
    let expected: Vec<usize> = (1..=numbers.len()).collect();
    assert_eq!(numbers, expected, "the stored lines have a hole");
    numbers.len()
}
