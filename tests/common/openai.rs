//! A fake OpenAI-compatible chat server on a loopback port, for agents that call it with the
//! official client: `POST /v1/chat/completions` answers a chat completion whose `usage` is the
//! test's figures, request by request, and counts the requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

/// The model every answer names: a dated snapshot, priced as `gpt-4o`.
pub const MODEL: &str = "gpt-4o-2024-08-06";

/// One answer's `usage`, in the OpenAI shape: `prompt` includes `cached`, `completion`
/// includes `reasoning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatUsage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub reasoning: u64,
}

impl ChatUsage {
    pub fn total(&self) -> u64 {
        self.prompt + self.completion
    }
}

struct Shared {
    /// Request n (from 0) is answered with `usages[n]`, or the last one past the end.
    usages: Vec<ChatUsage>,
    delay: Duration,
    requests: AtomicUsize,
}

/// The running server; it stops when dropped.
pub struct FakeOpenAi {
    /// What the client takes as `base_url`: `http://127.0.0.1:<port>/v1`.
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    /// Answers at once, request n with `usages[n]` (the last one again past the end).
    pub async fn start(usages: Vec<ChatUsage>) -> FakeOpenAi {
        Self::start_with_delay(usages, Duration::ZERO).await
    }

    /// Answers each request after `delay`, as a model takes its time.
    pub async fn start_with_delay(usages: Vec<ChatUsage>, delay: Duration) -> FakeOpenAi {
        assert!(!usages.is_empty(), "at least one answer's usage");
        let shared = Arc::new(Shared {
            usages,
            delay,
            requests: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeOpenAi {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            shared,
            task,
        }
    }

    /// Chat completions answered so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn complete(State(shared): State<Arc<Shared>>, Json(request): Json<Value>) -> Json<Value> {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    let usage = shared.usages[n.min(shared.usages.len() - 1)];
    let question = request["messages"][0]["content"].as_str().unwrap_or("");
    Json(json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": format!("answer to {question}")},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": usage.prompt,
            "completion_tokens": usage.completion,
            "total_tokens": usage.total(),
            "prompt_tokens_details": {"cached_tokens": usage.cached},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
        },
    }))
}
