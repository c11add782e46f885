//! What an agent's telemetry says it used, and the limits it may use: token and call counts,
//! exact US-dollar amounts, the `usage` of an execution and an agent's `budget`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use super::whole;

/// An exact, non-negative amount of US dollars, written as a decimal string in JSON and
/// configuration (`"2.50"`), never as a float. Up to 28 significant digits (`rust_decimal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Usd(Decimal);

impl Usd {
    pub const ZERO: Usd = Usd(Decimal::ZERO);

    pub fn new(amount: Decimal) -> Option<Usd> {
        (!amount.is_sign_negative()).then_some(Usd(amount.normalize()))
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    /// The sum, or `None` past the 28 digits an amount can hold.
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(|d| Usd(d.normalize()))
    }

    /// `tokens` at `per_million` dollars per million tokens, exactly (`None` if it overflows).
    pub fn per_million_tokens(per_million: Usd, tokens: u64) -> Option<Usd> {
        let product = per_million.0.checked_mul(Decimal::from(tokens))?;
        product
            .checked_div(Decimal::from(1_000_000u32))
            .map(|d| Usd(d.normalize()))
    }

    /// As a float, for Prometheus counters only (which are floats anyway).
    pub fn to_f64(self) -> f64 {
        use rust_decimal::prelude::ToPrimitive;
        self.0.to_f64().unwrap_or(f64::MAX)
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Usd {
    type Err = String;
    fn from_str(s: &str) -> Result<Usd, String> {
        let plain = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && s.bytes().filter(|&b| b == b'.').count() <= 1
            && !s.starts_with('.')
            && !s.ends_with('.');
        if !plain {
            return Err(format!(
                "an amount of US dollars must be a non-negative decimal string such as \"2.50\", got {s:?}"
            ));
        }
        let amount = Decimal::from_str_exact(s)
            .map_err(|_| format!("the amount {s:?} has more than 28 significant digits"))?;
        Ok(Usd(amount.normalize()))
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Strings only, as for wei: a JSON or TOML number may already have been a float.
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Token counts and calls, as the OpenTelemetry GenAI conventions count them: `input_tokens`
/// includes the cache-read and cache-creation tokens, `output_tokens` includes the reasoning
/// tokens (the OpenAI usage shape: `prompt_tokens` holds `cached_tokens`, `completion_tokens`
/// holds `reasoning_tokens`). The parts are shown separately, never added again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCounts {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub reasoning_tokens: u64,
}

impl TokenCounts {
    /// Input plus output: what `maxTokens` limits.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    pub fn add(&mut self, other: &TokenCounts) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_creation_tokens = self
            .cache_creation_tokens
            .saturating_add(other.cache_creation_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
    }
}

/// One model's share of an execution's usage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    #[serde(flatten)]
    pub tokens: TokenCounts,
    pub llm_calls: u64,
    /// Exact cost; `null` when the model is not in the price table.
    #[schema(value_type = Option<String>)]
    pub cost_usd: Option<Usd>,
}

/// What an execution's telemetry reported it used (`usage` of the execution JSON, and of its
/// final `status` event). With nothing reported, `reported` is false and `costUsd` null: "not
/// reported" is never shown as a zero cost. `costUsd` is also null when any model used is
/// missing from the price table, since the total is then not known.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(flatten)]
    pub tokens: TokenCounts,
    pub llm_calls: u64,
    pub tool_calls: u64,
    #[schema(value_type = Option<String>)]
    pub cost_usd: Option<Usd>,
    pub reported: bool,
    /// Per model (the response model, else the request model), keyed by its name.
    pub by_model: BTreeMap<String, ModelUsage>,
}

/// Limits on what one execution may use; each is optional. Exceeding one stops the run as a
/// timeout does, and it ends FAILED `budget_exceeded` with `error.budget` naming the limit.
/// JSON keys are camelCase; the snake_case spelling is accepted too (TOML configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// Input plus output tokens.
    #[serde(
        default,
        alias = "max_tokens",
        deserialize_with = "whole::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// US dollars as a decimal string; `"0"` allows no priced call at all.
    #[serde(
        default,
        alias = "max_cost_usd",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]+(\.[0-9]+)?$", max_length = 29)]
    pub max_cost_usd: Option<Usd>,
    #[serde(
        default,
        alias = "max_llm_calls",
        deserialize_with = "whole::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub max_llm_calls: Option<u64>,
    #[serde(
        default,
        alias = "max_tool_calls",
        deserialize_with = "whole::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub max_tool_calls: Option<u64>,
    /// Seconds from the start of the run.
    #[serde(
        default,
        alias = "max_wall_secs",
        deserialize_with = "whole::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 604800)]
    pub max_wall_secs: Option<u64>,
}

/// One limit of a `Budget`, named as in JSON (`error.budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum BudgetLimit {
    MaxTokens,
    MaxCostUsd,
    MaxLlmCalls,
    MaxToolCalls,
    MaxWallSecs,
}

impl BudgetLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetLimit::MaxTokens => "maxTokens",
            BudgetLimit::MaxCostUsd => "maxCostUsd",
            BudgetLimit::MaxLlmCalls => "maxLlmCalls",
            BudgetLimit::MaxToolCalls => "maxToolCalls",
            BudgetLimit::MaxWallSecs => "maxWallSecs",
        }
    }
}

impl fmt::Display for BudgetLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Budget {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Budget::default()
    }

    /// This budget with each limit of `request` that is tighter applied: a submission may
    /// tighten its agent's budget, never loosen it. Errors name the first limit that would be
    /// loosened.
    pub fn tightened_by(&self, request: &Budget) -> Result<Budget, String> {
        fn pick<T: Ord + Copy + fmt::Display>(
            name: BudgetLimit,
            agent: Option<T>,
            asked: Option<T>,
        ) -> Result<Option<T>, String> {
            match (agent, asked) {
                (Some(a), Some(b)) if b > a => Err(format!(
                    "budget.{name} {b} would loosen the agent's limit of {a}: a submission may only tighten it"
                )),
                (a, None) => Ok(a),
                (_, b) => Ok(b),
            }
        }
        Ok(Budget {
            max_tokens: pick(BudgetLimit::MaxTokens, self.max_tokens, request.max_tokens)?,
            max_cost_usd: pick(
                BudgetLimit::MaxCostUsd,
                self.max_cost_usd,
                request.max_cost_usd,
            )?,
            max_llm_calls: pick(
                BudgetLimit::MaxLlmCalls,
                self.max_llm_calls,
                request.max_llm_calls,
            )?,
            max_tool_calls: pick(
                BudgetLimit::MaxToolCalls,
                self.max_tool_calls,
                request.max_tool_calls,
            )?,
            max_wall_secs: pick(
                BudgetLimit::MaxWallSecs,
                self.max_wall_secs,
                request.max_wall_secs,
            )?,
        })
    }

    /// Refuses a limit of zero (nothing could run) with the limit's name.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            (BudgetLimit::MaxTokens, self.max_tokens),
            (BudgetLimit::MaxLlmCalls, self.max_llm_calls),
            (BudgetLimit::MaxToolCalls, self.max_tool_calls),
            (BudgetLimit::MaxWallSecs, self.max_wall_secs),
        ]
        .into_iter()
        .find(|(_, v)| *v == Some(0));
        if let Some((name, _)) = zero {
            return Err(format!("budget.{name} must be at least 1"));
        }
        if self.max_wall_secs.is_some_and(|s| s > 604_800) {
            return Err("budget.maxWallSecs must be at most 604800 (7 days)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact_decimal_strings() {
        let price: Usd = "2.50".parse().unwrap();
        assert_eq!(price.to_string(), "2.5");
        let cost = Usd::per_million_tokens(price, 1_234_567).unwrap();
        assert_eq!(cost.to_string(), "3.0864175");
        assert_eq!(serde_json::to_string(&cost).unwrap(), "\"3.0864175\"");
        for bad in ["", "-1", "1.", ".5", "1e3", "1,5", "0x10", " 1"] {
            assert!(bad.parse::<Usd>().is_err(), "{bad:?}");
        }
        assert!(
            serde_json::from_str::<Usd>("2.5").is_err(),
            "numbers refused"
        );
    }

    #[test]
    fn a_submission_tightens_never_loosens() {
        let agent = Budget {
            max_tokens: Some(1000),
            max_cost_usd: Some("1".parse().unwrap()),
            ..Budget::default()
        };
        let tighter = Budget {
            max_tokens: Some(10),
            max_llm_calls: Some(3),
            ..Budget::default()
        };
        let merged = agent.tightened_by(&tighter).unwrap();
        assert_eq!(merged.max_tokens, Some(10));
        assert_eq!(merged.max_llm_calls, Some(3));
        assert_eq!(merged.max_cost_usd, Some("1".parse().unwrap()));
        let looser = Budget {
            max_cost_usd: Some("1.01".parse().unwrap()),
            ..Budget::default()
        };
        let err = agent.tightened_by(&looser).unwrap_err();
        assert!(err.contains("maxCostUsd"), "{err}");
    }

    #[test]
    fn budgets_read_camel_and_snake_case() {
        let json: Budget = serde_json::from_str(
            r#"{"maxTokens": 5, "max_wall_secs": 60.0, "maxCostUsd": "0.10"}"#,
        )
        .unwrap();
        assert_eq!(json.max_tokens, Some(5));
        assert_eq!(json.max_wall_secs, Some(60));
        assert_eq!(json.max_cost_usd.unwrap().to_string(), "0.1");
        assert!(serde_json::from_str::<Budget>(r#"{"maxTokenz": 5}"#).is_err());
        assert!(serde_json::from_str::<Budget>(r#"{"maxTokens": 1.5}"#).is_err());
    }
}
