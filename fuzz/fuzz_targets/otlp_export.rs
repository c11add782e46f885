//! An OTLP export as the intake reads it: protobuf or JSON, gzip or not, decoded, its spans made
//! into `span` events and counted in a ledger with a budget, its log records made into lines.
//! Bad input is an error, never a panic, a hang or memory past the cap.
#![no_main]

use std::sync::{Arc, OnceLock};

use agentnexus::domain::Budget;
use agentnexus::telemetry::otlp::{self, Encoding, LogsRequest, TracesRequest};
use agentnexus::telemetry::{Ledger, PriceTable, spans};
use libfuzzer_sys::fuzz_target;

/// The intake's cap, small so that inflating stays cheap.
const LIMIT: usize = 1 << 20;

fn prices() -> Arc<PriceTable> {
    static PRICES: OnceLock<Arc<PriceTable>> = OnceLock::new();
    PRICES
        .get_or_init(|| Arc::new(PriceTable::new(&[]).expect("the default table")))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let encoding = if mode & 1 == 0 { Encoding::Protobuf } else { Encoding::Json };
    let inflated;
    let body = if mode & 2 == 0 {
        body
    } else {
        match otlp::gunzip(body, LIMIT) {
            Ok(bytes) => {
                inflated = bytes;
                &inflated[..]
            }
            Err(_) => return,
        }
    };
    if mode & 4 == 0 {
        let Ok(request) = otlp::decode::<TracesRequest>(body, encoding) else {
            return;
        };
        let converted = spans::spans(request, "00000000000000aa", 64);
        let budget = Budget {
            max_tokens: Some(1000),
            max_llm_calls: Some(3),
            max_cost_usd: Some("0.01".parse().expect("a decimal")),
            ..Budget::default()
        };
        let mut ledger = Ledger::new(prices(), budget);
        for span in &converted.spans {
            let _ = ledger.record(span);
            let _ = ledger.check();
            serde_json::to_string(span).expect("span data serializes");
        }
        serde_json::to_string(ledger.usage()).expect("usage serializes");
    } else if let Ok(request) = otlp::decode::<LogsRequest>(body, encoding) {
        let _ = spans::log_lines(request, 64);
    }
});
