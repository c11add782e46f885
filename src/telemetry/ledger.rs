//! An execution's ledger: its tokens, calls and cost counted from the `span` events of its
//! telemetry, by model, checked against its budget.
//!
//! Which spans count, after the OpenTelemetry GenAI semantic conventions:
//! - `gen_ai.operation.name` = `execute_tool`: one tool call, no tokens, never priced.
//! - An inference span, one LLM call whose tokens count: operation `chat`, `text_completion`,
//!   `generate_content` or `embeddings`, or a span without an operation name that carries
//!   `gen_ai.usage.input_tokens` or `output_tokens` (or their older names) and a `gen_ai.system`
//!   or `gen_ai.provider.name`.
//! - `invoke_agent` and `create_agent` spans never count: they may repeat the totals of the
//!   inference spans under them, which are counted already. Any other span is not counted.
//!
//! Tokens: `gen_ai.usage.input_tokens` (or `prompt_tokens`), `gen_ai.usage.output_tokens` (or
//! `completion_tokens`), `gen_ai.usage.cache_read.input_tokens` (or `cache_read_input_tokens`),
//! `gen_ai.usage.cache_creation.input_tokens` (or `cache_creation_input_tokens`) and
//! `gen_ai.usage.reasoning.output_tokens` (or `reasoning_tokens`); the current name wins when both
//! are readable. A count is a whole non-negative JSON number or a string of digits; anything
//! else counts as 0. Input includes the cache parts and output the reasoning part (the OpenAI
//! usage shape), so the parts are never added to the totals again. Counts saturate at `u64::MAX`.
//!
//! The model is `gen_ai.response.model`, else `gen_ai.request.model`, else `unknown`, priced by
//! `PriceTable::lookup`. The cost of an execution is known only when every model it used is
//! priced; otherwise its `costUsd` is null and `maxCostUsd` is checked against the cost of its
//! priced calls alone, the least it can have cost. A cost that would pass the 28 digits an amount
//! holds stays at its last value (a call whose own cost would pass them adds none).
//!
//! Budget: `maxTokens` (input plus output), `maxCostUsd`, `maxLlmCalls` and `maxToolCalls` are
//! checked here (`maxWallSecs` by the run's timer). A limit is reported nearing once, when usage
//! first reaches 80 % of it without passing it; the first limit passed (`used > max`, in that
//! order) is reported exceeded at each check from then on.

mod attributes;

use std::sync::Arc;

use rust_decimal::Decimal;

use self::attributes::{Call, call_of, model_of, operation_of, tokens_of};
use super::prices::PriceTable;
use crate::domain::{Budget, BudgetLimit, ModelUsage, SpanData, TokenCounts, Usage, Usd};

/// Counts one execution's usage. Not shared: its `Recorder` holds it under a lock.
#[derive(Debug)]
pub struct Ledger {
    prices: Arc<PriceTable>,
    budget: Budget,
    usage: Usage,
    /// Limits already reported at 80 %, so that each is said once.
    said_nearing: Vec<BudgetLimit>,
}

/// What one span added to the ledger, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    /// The model as reported (response model, else request model, else `unknown`).
    pub model: String,
    /// The model as the price table names it (the label of the metrics); `None` when unpriced.
    pub priced_as: Option<String>,
    pub tokens: TokenCounts,
    /// `None` when the model is not priced.
    pub cost_usd: Option<Usd>,
    pub llm_call: bool,
    pub tool_call: bool,
    /// `gen_ai.operation.name` (`chat`, `execute_tool`, …).
    pub operation: String,
    pub duration_secs: f64,
}

/// A limit that reached 80 % of its value for the first time.
#[derive(Debug, Clone, PartialEq)]
pub struct Nearing {
    pub limit: BudgetLimit,
    /// What was used and the limit, as they are written (`"8000"`, `"0.4"`).
    pub used: String,
    pub max: String,
}

/// What a `check` found: limits nearing (each reported once) and the first limit exceeded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BudgetCheck {
    pub nearing: Vec<Nearing>,
    /// The limit exceeded and a message saying by how much.
    pub exceeded: Option<(BudgetLimit, String)>,
}

/// One limit of the budget against what was used of it.
struct Level {
    limit: BudgetLimit,
    used: Decimal,
    max: Decimal,
    /// Set when `used` is only a lower bound (some models are not priced).
    at_least: bool,
}

impl Ledger {
    pub fn new(prices: Arc<PriceTable>, budget: Budget) -> Ledger {
        Ledger {
            prices,
            budget,
            usage: Usage::default(),
            said_nearing: Vec::new(),
        }
    }

    /// Counts one span: an LLM call's tokens and cost, or a tool call. `None` for a span that
    /// is neither.
    pub fn record(&mut self, span: &SpanData) -> Option<Counted> {
        let attributes = &span.attributes;
        let call = call_of(attributes)?;
        let model = model_of(attributes);
        let operation = operation_of(attributes);
        // Clocks of another host may put the end before the start: that is no time at all.
        let millis = span.end_time_ms.saturating_sub(span.start_time_ms).max(0);
        let duration_secs = millis as f64 / 1000.0;
        self.usage.reported = true;
        let (tokens, priced_as, cost_usd) = match call {
            Call::Tool => {
                self.usage.tool_calls = self.usage.tool_calls.saturating_add(1);
                (TokenCounts::default(), None, None)
            }
            Call::Llm => {
                let tokens = tokens_of(attributes);
                let (priced_as, cost) = self.count_llm_call(&model, &tokens);
                (tokens, priced_as, cost)
            }
        };
        Some(Counted {
            model,
            priced_as,
            tokens,
            cost_usd,
            llm_call: call == Call::Llm,
            tool_call: call == Call::Tool,
            operation,
            duration_secs,
        })
    }

    /// Adds one LLM call of `model` to the totals and to its model's share; returns the price
    /// table's name of the model and the call's cost, both `None` when it is not priced.
    fn count_llm_call(
        &mut self,
        model: &str,
        tokens: &TokenCounts,
    ) -> (Option<String>, Option<Usd>) {
        let price = self.prices.lookup(model);
        let priced_as = price.map(|p| p.model.clone());
        // `None` also past 28 digits: such a call adds nothing, the cost stays where it was.
        let cost = price.and_then(|p| PriceTable::cost(p, tokens));
        self.usage.tokens.add(tokens);
        self.usage.llm_calls = self.usage.llm_calls.saturating_add(1);
        let share = self
            .usage
            .by_model
            .entry(model.to_owned())
            .or_insert_with(|| ModelUsage {
                // A model is priced or not for the whole execution: the table does not change.
                cost_usd: price.map(|_| Usd::ZERO),
                ..ModelUsage::default()
            });
        share.tokens.add(tokens);
        share.llm_calls = share.llm_calls.saturating_add(1);
        if let (Some(sum), Some(cost)) = (share.cost_usd, cost) {
            share.cost_usd = Some(sum.checked_add(cost).unwrap_or(sum));
        }
        let all_priced = self.usage.by_model.values().all(|m| m.cost_usd.is_some());
        self.usage.cost_usd = all_priced.then(|| self.priced_cost());
        (priced_as, cost)
    }

    /// The cost of the calls of priced models: the execution's cost when all are priced, the
    /// least it cost otherwise.
    fn priced_cost(&self) -> Usd {
        self.usage
            .by_model
            .values()
            .filter_map(|m| m.cost_usd)
            .fold(Usd::ZERO, |sum, cost| sum.checked_add(cost).unwrap_or(sum))
    }

    /// The usage so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Checks the budget (all but `maxWallSecs`, which the run's timer enforces).
    pub fn check(&mut self) -> BudgetCheck {
        let mut check = BudgetCheck::default();
        for level in self.levels() {
            if level.used > level.max {
                if check.exceeded.is_none() {
                    check.exceeded = Some((level.limit, level.exceeded_message()));
                }
                // Past the limit is past 80 % of it too; saying so would only repeat it.
                if !self.said_nearing.contains(&level.limit) {
                    self.said_nearing.push(level.limit);
                }
            } else if level.is_near() && !self.said_nearing.contains(&level.limit) {
                self.said_nearing.push(level.limit);
                check.nearing.push(Nearing {
                    limit: level.limit,
                    used: level.used.to_string(),
                    max: level.max.to_string(),
                });
            }
        }
        check
    }

    /// The limits set, in the order they are checked, with what was used of each.
    fn levels(&self) -> Vec<Level> {
        let (usage, budget) = (&self.usage, &self.budget);
        // Some models unpriced: what the priced ones cost is the least the execution cost.
        let partial = usage.cost_usd.is_none() && usage.llm_calls > 0;
        let cost = self.priced_cost().decimal();
        let whole = Decimal::from;
        [
            (
                BudgetLimit::MaxTokens,
                whole(usage.tokens.total()),
                budget.max_tokens.map(whole),
            ),
            (
                BudgetLimit::MaxCostUsd,
                cost,
                budget.max_cost_usd.map(Usd::decimal),
            ),
            (
                BudgetLimit::MaxLlmCalls,
                whole(usage.llm_calls),
                budget.max_llm_calls.map(whole),
            ),
            (
                BudgetLimit::MaxToolCalls,
                whole(usage.tool_calls),
                budget.max_tool_calls.map(whole),
            ),
        ]
        .into_iter()
        .filter_map(|(limit, used, max)| {
            let at_least = partial && limit == BudgetLimit::MaxCostUsd;
            Some(Level {
                limit,
                used,
                max: max?,
                at_least,
            })
        })
        .collect()
    }
}

impl Level {
    /// Whether at least 80 % of the limit is used.
    fn is_near(&self) -> bool {
        // max × 0.8 only rounds past 28 digits, far beyond any budget.
        self.max
            .checked_mul(Decimal::new(8, 1))
            .is_some_and(|threshold| self.used >= threshold)
    }

    fn exceeded_message(&self) -> String {
        let unit = match self.limit {
            BudgetLimit::MaxTokens => "tokens",
            BudgetLimit::MaxCostUsd => "US dollars",
            BudgetLimit::MaxLlmCalls => "LLM calls",
            BudgetLimit::MaxToolCalls => "tool calls",
            BudgetLimit::MaxWallSecs => "seconds",
        };
        let (at_least, note) = match self.at_least {
            true => ("at least ", " (some of its models are not priced)"),
            false => ("", ""),
        };
        format!(
            "the execution used {at_least}{} {unit}{note}, over its budget of {} ({})",
            self.used, self.max, self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn span(attributes: Value) -> SpanData {
        serde_json::from_value(json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "parentSpanId": null, "name": "span", "kind": "client",
            "startTimeMs": 1000, "endTimeMs": 2500, "status": {"code": "UNSET"},
            "attributes": attributes,
        }))
        .unwrap()
    }

    fn chat(model: &str, input: u64, output: u64) -> SpanData {
        span(json!({
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": input,
            "gen_ai.usage.output_tokens": output,
        }))
    }

    fn ledger(budget: Budget) -> Ledger {
        Ledger::new(Arc::new(PriceTable::new(&[]).unwrap()), budget)
    }

    fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    #[test]
    fn an_openai_chat_span_counts_its_cached_and_reasoning_parts_once() {
        let mut ledger = ledger(Budget::default());
        // What the openai-v2 instrumentation writes: 2000 input of which 1500 cached, 300
        // output of which 200 reasoning.
        let counted = ledger
            .record(&span(json!({
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 2000,
                "gen_ai.usage.output_tokens": 300,
                "gen_ai.usage.cache_read.input_tokens": 1500,
                "gen_ai.usage.reasoning.output_tokens": 200,
            })))
            .unwrap();
        let tokens = TokenCounts {
            input_tokens: 2000,
            output_tokens: 300,
            cache_read_tokens: 1500,
            cache_creation_tokens: 0,
            reasoning_tokens: 200,
        };
        // 500 × 2.50 + 1500 × 1.25 + 100 × 10 + 200 × 10, per million.
        assert_eq!(counted.cost_usd.unwrap().to_string(), "0.006125");
        assert_eq!(counted.model, "gpt-4o-2024-08-06");
        assert_eq!(counted.priced_as.as_deref(), Some("gpt-4o"));
        assert_eq!((counted.tokens, counted.duration_secs), (tokens, 1.5));
        assert_eq!(counted.operation, "chat");
        assert!(counted.llm_call && !counted.tool_call);
        let usage = ledger.usage();
        assert_eq!((usage.tokens, usage.tokens.total()), (tokens, 2300));
        assert_eq!(usage.cost_usd.unwrap().to_string(), "0.006125");
        assert!(usage.reported && usage.llm_calls == 1);
        let share = &usage.by_model["gpt-4o-2024-08-06"];
        assert_eq!((share.llm_calls, share.tokens), (1, tokens));

        // The older attribute names, on a span without an operation name, count the same.
        let older = ledger
            .record(&span(json!({
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.prompt_tokens": 2000,
                "gen_ai.usage.completion_tokens": 300,
                "gen_ai.usage.cache_read_input_tokens": 1500,
                "gen_ai.usage.reasoning_tokens": 200,
            })))
            .unwrap();
        assert_eq!(older.tokens, tokens);
        assert_eq!(older.operation, "other");
        assert_eq!(ledger.usage().cost_usd.unwrap().to_string(), "0.01225");
    }

    #[test]
    fn agent_spans_repeating_their_calls_usage_are_not_counted() {
        let mut ledger = ledger(Budget::default());
        for operation in ["invoke_agent", "create_agent"] {
            let agent = span(json!({
                "gen_ai.operation.name": operation,
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 5000,
                "gen_ai.usage.output_tokens": 1000,
            }));
            assert_eq!(ledger.record(&agent), None, "{operation}");
        }
        // Nor is a span that names no provider, or an HTTP span.
        let bare = span(json!({"gen_ai.usage.input_tokens": 10}));
        assert_eq!(ledger.record(&bare), None);
        assert_eq!(ledger.record(&span(json!({"http.method": "GET"}))), None);
        assert_eq!(*ledger.usage(), Usage::default());
    }

    #[test]
    fn a_tool_span_is_one_tool_call_without_tokens() {
        let mut ledger = ledger(Budget::default());
        let counted = ledger
            .record(&span(json!({
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
            })))
            .unwrap();
        assert!(counted.tool_call && !counted.llm_call);
        assert_eq!(counted.operation, "execute_tool");
        assert_eq!(counted.tokens, TokenCounts::default());
        let usage = ledger.usage();
        assert_eq!((usage.tool_calls, usage.llm_calls), (1, 0));
        assert!(usage.reported);
        assert!(usage.by_model.is_empty());
        assert_eq!(usage.cost_usd, None, "nothing priced is no cost");
    }

    #[test]
    fn an_unknown_model_is_unpriced_and_the_total_unknown() {
        let mut ledger = ledger(Budget::default());
        ledger.record(&chat("gpt-4o", 1000, 0)).unwrap();
        assert_eq!(ledger.usage().cost_usd, Some(usd("0.0025")));
        let counted = ledger.record(&chat("my-local-llama", 1000, 10)).unwrap();
        assert_eq!((counted.cost_usd, counted.priced_as), (None, None));
        assert!(counted.llm_call);
        let usage = ledger.usage();
        assert_eq!(usage.by_model["my-local-llama"].cost_usd, None);
        assert_eq!(usage.by_model["gpt-4o"].cost_usd, Some(usd("0.0025")));
        assert_eq!(usage.cost_usd, None);
        assert_eq!((usage.llm_calls, usage.tokens.total()), (2, 2010));
        // Without any model at all.
        let counted = ledger
            .record(&span(json!({"gen_ai.operation.name": "embeddings"})))
            .unwrap();
        assert_eq!(counted.model, "unknown");
    }

    #[test]
    fn two_models_each_have_their_share_and_the_total_sums_exactly() {
        let mut ledger = ledger(Budget::default());
        ledger.record(&chat("gpt-4o", 1000, 100)).unwrap();
        ledger.record(&chat("gpt-4o", 1000, 100)).unwrap();
        ledger
            .record(&chat("claude-sonnet-4-20250514", 2000, 50))
            .unwrap();
        let usage = ledger.usage();
        assert_eq!(usage.by_model.len(), 2);
        // gpt-4o: 2 × (1000 × 2.50 + 100 × 10) per million = 0.007.
        let gpt = &usage.by_model["gpt-4o"];
        assert_eq!((gpt.llm_calls, gpt.cost_usd), (2, Some(usd("0.007"))));
        // claude-sonnet-4: 2000 × 3 + 50 × 15 per million = 0.00675.
        let claude = &usage.by_model["claude-sonnet-4-20250514"];
        assert_eq!(claude.cost_usd, Some(usd("0.00675")));
        assert_eq!(usage.cost_usd.unwrap().to_string(), "0.01375");
        assert_eq!(usage.llm_calls, 3);
    }

    #[test]
    fn a_limit_at_80_percent_is_reported_once() {
        let mut ledger = ledger(Budget {
            max_tokens: Some(20_000),
            max_cost_usd: Some(usd("0.01")),
            ..Budget::default()
        });
        ledger.record(&chat("my-local-llama", 15_000, 0)).unwrap();
        assert_eq!(ledger.check(), BudgetCheck::default());
        ledger.record(&chat("my-local-llama", 999, 1)).unwrap();
        let check = ledger.check();
        assert_eq!(
            check.nearing,
            vec![Nearing {
                limit: BudgetLimit::MaxTokens,
                used: "16000".into(),
                max: "20000".into(),
            }]
        );
        assert_eq!(check.exceeded, None);
        ledger.record(&chat("my-local-llama", 500, 0)).unwrap();
        assert_eq!(ledger.check(), BudgetCheck::default(), "said once");
        // The cost limit counts the priced calls: 1000 × 2.50 + 600 × 10 per million.
        ledger.record(&chat("gpt-4o", 1000, 600)).unwrap();
        let check = ledger.check();
        assert_eq!(check.nearing.len(), 1);
        assert_eq!(check.nearing[0].limit, BudgetLimit::MaxCostUsd);
        assert_eq!(check.nearing[0].used, "0.0085");
        assert_eq!(check.nearing[0].max, "0.01");
    }

    #[test]
    fn the_first_limit_exceeded_is_named() {
        let mut ledger = ledger(Budget {
            max_tokens: Some(10_000),
            max_llm_calls: Some(5),
            max_wall_secs: Some(1),
            ..Budget::default()
        });
        // The span lasts 1.5 s: over maxWallSecs, which is not the ledger's to check.
        ledger.record(&chat("gpt-4o", 2_000, 0)).unwrap();
        assert_eq!(ledger.check(), BudgetCheck::default());
        ledger.record(&chat("gpt-4o", 6_000, 4_000)).unwrap();
        let check = ledger.check();
        assert_eq!(
            check.exceeded,
            Some((
                BudgetLimit::MaxTokens,
                "the execution used 12000 tokens, over its budget of 10000 (maxTokens)".into()
            ))
        );
        assert!(check.nearing.is_empty(), "exceeded, not nearing");
        assert_eq!(ledger.check().exceeded.unwrap().0, BudgetLimit::MaxTokens);

        let mut calls = self::ledger(Budget {
            max_tool_calls: Some(1),
            ..Budget::default()
        });
        let tool = span(json!({"gen_ai.operation.name": "execute_tool"}));
        calls.record(&tool).unwrap();
        assert_eq!(calls.check().exceeded, None, "at the limit is within it");
        calls.record(&tool).unwrap();
        let (limit, message) = calls.check().exceeded.unwrap();
        assert_eq!(limit, BudgetLimit::MaxToolCalls);
        assert!(message.contains("2 tool calls"), "{message}");
    }

    #[test]
    fn a_cost_partly_unpriced_is_checked_as_at_least_its_priced_part() {
        let mut ledger = ledger(Budget {
            max_cost_usd: Some(usd("0.001")),
            ..Budget::default()
        });
        ledger
            .record(&chat("my-local-llama", 1_000_000, 0))
            .unwrap();
        assert_eq!(ledger.check().exceeded, None);
        ledger.record(&chat("gpt-4o", 1000, 0)).unwrap();
        let (limit, message) = ledger.check().exceeded.unwrap();
        assert_eq!(limit, BudgetLimit::MaxCostUsd);
        assert_eq!(
            message,
            "the execution used at least 0.0025 US dollars (some of its models are not priced), \
             over its budget of 0.001 (maxCostUsd)"
        );
    }

    #[test]
    fn counts_written_as_strings_count_and_garbage_is_zero() {
        let mut ledger = ledger(Budget::default());
        let counted = ledger
            .record(&span(json!({
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": "123",
                "gen_ai.usage.output_tokens": "-5",
                "gen_ai.usage.cache_read.input_tokens": "x",
                "gen_ai.usage.reasoning.output_tokens": -5,
                "gen_ai.usage.cache_creation.input_tokens": 1.5,
            })))
            .unwrap();
        assert_eq!(
            counted.tokens,
            TokenCounts {
                input_tokens: 123,
                ..TokenCounts::default()
            }
        );
        for garbage in [json!("1e3"), json!(""), json!(null), json!([1]), json!({})] {
            let counted = ledger
                .record(&span(json!({
                    "gen_ai.operation.name": "chat",
                    "gen_ai.usage.input_tokens": garbage,
                })))
                .unwrap();
            assert_eq!(counted.tokens.input_tokens, 0, "{garbage}");
        }
        // Huge counts saturate.
        let huge = json!({
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": "99999999999999999999999",
            "gen_ai.usage.output_tokens": 1e30,
        });
        let counted = ledger.record(&span(huge.clone())).unwrap();
        assert_eq!(counted.tokens.input_tokens, u64::MAX);
        assert_eq!(counted.tokens.output_tokens, u64::MAX);
        ledger.record(&span(huge)).unwrap();
        assert_eq!(ledger.usage().tokens.total(), u64::MAX);
    }

    #[test]
    fn a_call_costing_past_28_digits_adds_no_cost_and_its_model_stays_priced() {
        let price = serde_json::from_value(json!({"model": "dear",
            "input_usd_per_mtok": "100000000000000000000", "output_usd_per_mtok": "1"}))
        .unwrap();
        let prices = Arc::new(PriceTable::new(&[price]).unwrap());
        let mut ledger = Ledger::new(prices, Budget::default());
        ledger.record(&chat("dear", 1000, 0)).unwrap();
        let before = Some(usd("100000000000000000"));
        assert_eq!(ledger.usage().cost_usd, before);
        let counted = ledger.record(&chat("dear", u64::MAX, 0)).unwrap();
        assert_eq!(counted.priced_as.as_deref(), Some("dear"));
        assert_eq!(counted.cost_usd, None);
        assert_eq!(ledger.usage().cost_usd, before);
        assert_eq!(ledger.usage().by_model["dear"].cost_usd, before);
    }
}
