//! What a span's GenAI attributes say for the ledger: whether it is an LLM call, a tool call or
//! neither, its model, operation and token counts (the rules are in the `ledger` module).

use serde_json::{Map, Value};

use crate::domain::TokenCounts;

type Attributes = Map<String, Value>;

const OPERATION: &str = "gen_ai.operation.name";
const TOOL_OPERATION: &str = "execute_tool";
const INFERENCE_OPERATIONS: [&str; 4] =
    ["chat", "text_completion", "generate_content", "embeddings"];
/// The provider, under its older and its current name: with token counts, what makes a span
/// without an operation name an inference span.
const PROVIDER: [&str; 2] = ["gen_ai.system", "gen_ai.provider.name"];
const MODEL: [&str; 2] = ["gen_ai.response.model", "gen_ai.request.model"];
const UNKNOWN_MODEL: &str = "unknown";
/// The operation of a counted span without an operation name.
const OTHER_OPERATION: &str = "other";

// Each count under its current name first, then its older one.
const INPUT: [&str; 2] = ["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"];
const OUTPUT: [&str; 2] = [
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
];
const CACHE_READ: [&str; 2] = [
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
];
const CACHE_CREATION: [&str; 2] = [
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
];
const REASONING: [&str; 2] = [
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
];

/// What a counted span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Llm,
    Tool,
}

/// Whether `attributes` are those of an LLM call, a tool call, or neither.
pub(super) fn call_of(attributes: &Attributes) -> Option<Call> {
    match attributes.get(OPERATION) {
        Some(Value::String(op)) if op == TOOL_OPERATION => Some(Call::Tool),
        Some(Value::String(op)) if INFERENCE_OPERATIONS.contains(&op.as_str()) => Some(Call::Llm),
        // `invoke_agent`, `create_agent` and any other operation.
        Some(_) => None,
        None => {
            let tokens = INPUT
                .iter()
                .chain(&OUTPUT)
                .any(|name| attributes.contains_key(*name));
            let provider = PROVIDER
                .iter()
                .any(|name| attributes.get(*name).and_then(Value::as_str).is_some());
            (tokens && provider).then_some(Call::Llm)
        }
    }
}

/// `gen_ai.operation.name`, or `other` for a span without one.
pub(super) fn operation_of(attributes: &Attributes) -> String {
    attributes
        .get(OPERATION)
        .and_then(Value::as_str)
        .unwrap_or(OTHER_OPERATION)
        .to_owned()
}

/// The response model, else the request model, else `unknown`.
pub(super) fn model_of(attributes: &Attributes) -> String {
    MODEL
        .iter()
        .filter_map(|name| attributes.get(*name).and_then(Value::as_str))
        .find(|model| !model.trim().is_empty())
        .unwrap_or(UNKNOWN_MODEL)
        .to_owned()
}

/// The token counts of an inference span; a count missing or unreadable is 0.
pub(super) fn tokens_of(attributes: &Attributes) -> TokenCounts {
    let count = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| attributes.get(*name).and_then(whole_count))
            .unwrap_or(0)
    };
    TokenCounts {
        input_tokens: count(&INPUT),
        output_tokens: count(&OUTPUT),
        cache_read_tokens: count(&CACHE_READ),
        cache_creation_tokens: count(&CACHE_CREATION),
        reasoning_tokens: count(&REASONING),
    }
}

/// A count as an attribute carries it: a whole non-negative number, or a string of digits
/// (some exporters write every attribute as a string). Larger than `u64` saturates.
fn whole_count(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            // A whole float (`120.0`) is a count too; `as` saturates the huge ones.
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let digits = s.trim();
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse().unwrap_or(u64::MAX))
        }
        _ => None,
    }
}
