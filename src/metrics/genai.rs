//! What agents' telemetry reported: tokens, cost, LLM and tool calls and the GenAI operations'
//! durations by agent and model, and the span intake's own counts. Labels are the agent, the
//! model as the price table names it (`other` for a model not in it, so that a client cannot
//! grow the series) and the token type: never an execution.

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::BudgetLimit;
use crate::telemetry::Counted;

/// GenAI operations last from under a second to many minutes (a long generation, an agent step).
const OPERATION_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The label of a model not in the price table.
pub const OTHER_MODEL: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    agent_id: String,
    model: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    agent_id: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    agent_id: String,
    model: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    agent_id: String,
    budget: &'static str,
}

/// The operations named by the GenAI conventions; any other is counted as `other`.
const OPERATIONS: [&str; 8] = [
    "chat",
    "text_completion",
    "generate_content",
    "embeddings",
    "execute_tool",
    "invoke_agent",
    "create_agent",
    "other",
];

pub struct GenAiSeries {
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    llm_calls: Family<ModelLabels, Counter>,
    unpriced_calls: Family<AgentLabels, Counter>,
    tool_calls: Family<AgentLabels, Counter>,
    duration: Family<OperationLabels, Histogram>,
    budget_exceeded: Family<BudgetLabels, Counter>,
    spans_stored: Counter,
    spans_dropped: Counter,
    attributes_truncated: Counter,
    /// Label sets in use per agent, so that its series can go with it.
    seen: Mutex<BTreeSet<(String, String)>>,
}

impl GenAiSeries {
    pub(super) fn new(registry: &mut Registry) -> GenAiSeries {
        let series = GenAiSeries {
            tokens: Family::default(),
            cost: Family::default(),
            llm_calls: Family::default(),
            unpriced_calls: Family::default(),
            tool_calls: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(OPERATION_BUCKETS)),
            budget_exceeded: Family::default(),
            spans_stored: Counter::default(),
            spans_dropped: Counter::default(),
            attributes_truncated: Counter::default(),
            seen: Mutex::new(BTreeSet::new()),
        };
        registry.register(
            "agentnexus_genai_tokens",
            "Tokens agents' telemetry reported, by agent, model and type (input and output include their cache and reasoning parts)",
            series.tokens.clone(),
        );
        registry.register(
            "agentnexus_genai_cost_usd",
            "Cost of the reported tokens at the price table's prices, US dollars, by agent and model",
            series.cost.clone(),
        );
        registry.register(
            "agentnexus_genai_llm_calls",
            "LLM calls agents' telemetry reported, by agent and model",
            series.llm_calls.clone(),
        );
        registry.register(
            "agentnexus_genai_unpriced_calls",
            "LLM calls of a model missing from the price table (their cost is unknown, not 0)",
            series.unpriced_calls.clone(),
        );
        registry.register(
            "agentnexus_genai_tool_calls",
            "Tool calls agents' telemetry reported",
            series.tool_calls.clone(),
        );
        registry.register(
            "agentnexus_genai_operation_duration_seconds",
            "Duration of GenAI operations (LLM calls, tool calls) from their spans",
            series.duration.clone(),
        );
        registry.register(
            "agentnexus_budget_exceeded",
            "Executions stopped for exceeding a budget, by agent and limit",
            series.budget_exceeded.clone(),
        );
        registry.register(
            "agentnexus_spans_ingested",
            "Spans stored in executions' streams",
            series.spans_stored.clone(),
        );
        registry.register(
            "agentnexus_spans_dropped",
            "Spans counted but not stored, over an execution's span budget",
            series.spans_dropped.clone(),
        );
        registry.register(
            "agentnexus_span_attributes_truncated",
            "Span attribute values cut at the attribute size cap",
            series.attributes_truncated.clone(),
        );
        series
    }

    /// Counts what one span of agent `agent_id` added to its execution's ledger.
    pub fn counted(&self, agent_id: &str, counted: &Counted) {
        let model = counted
            .priced_as
            .clone()
            .unwrap_or_else(|| OTHER_MODEL.to_owned());
        self.seen
            .lock()
            .unwrap()
            .insert((agent_id.to_owned(), model.clone()));
        let t = &counted.tokens;
        for (kind, n) in [
            ("input", t.input_tokens),
            ("output", t.output_tokens),
            ("cache_read", t.cache_read_tokens),
            ("cache_creation", t.cache_creation_tokens),
            ("reasoning", t.reasoning_tokens),
        ] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        agent_id: agent_id.to_owned(),
                        model: model.clone(),
                        r#type: kind,
                    })
                    .inc_by(n);
            }
        }
        let labels = ModelLabels {
            agent_id: agent_id.to_owned(),
            model: model.clone(),
        };
        if let Some(cost) = counted.cost_usd {
            self.cost.get_or_create(&labels).inc_by(cost.to_f64());
        }
        let agent = AgentLabels {
            agent_id: agent_id.to_owned(),
        };
        if counted.llm_call {
            self.llm_calls.get_or_create(&labels).inc();
            if counted.priced_as.is_none() {
                self.unpriced_calls.get_or_create(&agent).inc();
            }
        }
        if counted.tool_call {
            self.tool_calls.get_or_create(&agent).inc();
        }
        let operation = OPERATIONS
            .into_iter()
            .find(|o| *o == counted.operation)
            .unwrap_or("other");
        self.duration
            .get_or_create(&OperationLabels {
                agent_id: agent_id.to_owned(),
                model,
                operation: operation.to_owned(),
            })
            .observe(counted.duration_secs);
    }

    pub fn spans(&self, stored: u64, dropped: u64) {
        self.spans_stored.inc_by(stored);
        self.spans_dropped.inc_by(dropped);
    }

    pub fn attributes_truncated(&self, count: u64) {
        self.attributes_truncated.inc_by(count);
    }

    pub fn budget_exceeded(&self, agent_id: &str, limit: BudgetLimit) {
        self.budget_exceeded
            .get_or_create(&BudgetLabels {
                agent_id: agent_id.to_owned(),
                budget: limit.as_str(),
            })
            .inc();
    }

    /// Removes the series of an agent that is no longer defined.
    pub fn forget_agent(&self, agent_id: &str) {
        let mut seen = self.seen.lock().unwrap();
        let models: Vec<String> = seen
            .iter()
            .filter(|(a, _)| a == agent_id)
            .map(|(_, m)| m.clone())
            .collect();
        for model in models {
            seen.remove(&(agent_id.to_owned(), model.clone()));
            for kind in [
                "input",
                "output",
                "cache_read",
                "cache_creation",
                "reasoning",
            ] {
                self.tokens.remove(&TokenLabels {
                    agent_id: agent_id.to_owned(),
                    model: model.clone(),
                    r#type: kind,
                });
            }
            let labels = ModelLabels {
                agent_id: agent_id.to_owned(),
                model: model.clone(),
            };
            self.cost.remove(&labels);
            self.llm_calls.remove(&labels);
            for operation in OPERATIONS {
                self.duration.remove(&OperationLabels {
                    agent_id: agent_id.to_owned(),
                    model: model.clone(),
                    operation: operation.to_owned(),
                });
            }
        }
        let agent = AgentLabels {
            agent_id: agent_id.to_owned(),
        };
        self.unpriced_calls.remove(&agent);
        self.tool_calls.remove(&agent);
        for limit in [
            BudgetLimit::MaxTokens,
            BudgetLimit::MaxCostUsd,
            BudgetLimit::MaxLlmCalls,
            BudgetLimit::MaxToolCalls,
            BudgetLimit::MaxWallSecs,
        ] {
            self.budget_exceeded.remove(&BudgetLabels {
                agent_id: agent_id.to_owned(),
                budget: limit.as_str(),
            });
        }
    }
}
