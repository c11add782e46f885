//! The price table: US dollars per million tokens of each kind, per model, as exact decimals.
//! A default table ships with the runtime (see `DEFAULT_PRICES_AS_OF`); `[[prices]]` entries in
//! the configuration replace the default entry of the same model or add models.

use serde::{Deserialize, Serialize};

use crate::domain::{TokenCounts, Usd};

/// One model's prices, as written in the configuration (`[[prices]]`); amounts are decimal
/// strings of US dollars per million tokens. A missing cache-read or cache-creation price is
/// the input price; a missing reasoning price is the output price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub model: String,
    pub input_usd_per_mtok: Usd,
    pub output_usd_per_mtok: Usd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_usd_per_mtok: Option<Usd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_usd_per_mtok: Option<Usd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_usd_per_mtok: Option<Usd>,
}

/// When the default table's prices were read from the providers' published price lists, and
/// where: <https://openai.com/api/pricing/>, <https://www.anthropic.com/pricing#api>,
/// <https://ai.google.dev/gemini-api/docs/pricing> (standard tier, prompts up to 200k tokens,
/// 5-minute cache writes). Prices change: configure `[[prices]]` for the models you use.
pub const DEFAULT_PRICES_AS_OF: &str = "2025-08-15";

/// `(model, input, output, cache read, cache creation)`, US dollars per million tokens.
type PriceRow = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

const DEFAULT_PRICES: &[PriceRow] = &[
    ("gpt-5", "1.25", "10.00", Some("0.125"), None),
    ("gpt-5-mini", "0.25", "2.00", Some("0.025"), None),
    ("gpt-5-nano", "0.05", "0.40", Some("0.005"), None),
    ("gpt-4.1", "2.00", "8.00", Some("0.50"), None),
    ("gpt-4.1-mini", "0.40", "1.60", Some("0.10"), None),
    ("gpt-4.1-nano", "0.10", "0.40", Some("0.025"), None),
    ("gpt-4o", "2.50", "10.00", Some("1.25"), None),
    ("gpt-4o-mini", "0.15", "0.60", Some("0.075"), None),
    ("o3", "2.00", "8.00", Some("0.50"), None),
    ("o4-mini", "1.10", "4.40", Some("0.275"), None),
    ("o1", "15.00", "60.00", Some("7.50"), None),
    (
        "claude-opus-4-1",
        "15.00",
        "75.00",
        Some("1.50"),
        Some("18.75"),
    ),
    (
        "claude-opus-4",
        "15.00",
        "75.00",
        Some("1.50"),
        Some("18.75"),
    ),
    (
        "claude-sonnet-4",
        "3.00",
        "15.00",
        Some("0.30"),
        Some("3.75"),
    ),
    (
        "claude-3-7-sonnet",
        "3.00",
        "15.00",
        Some("0.30"),
        Some("3.75"),
    ),
    (
        "claude-3-5-haiku",
        "0.80",
        "4.00",
        Some("0.08"),
        Some("1.00"),
    ),
    ("gemini-2.5-pro", "1.25", "10.00", Some("0.31"), None),
    ("gemini-2.5-flash", "0.30", "2.50", Some("0.075"), None),
];

/// The prices in force: the default table with the configured entries over it.
#[derive(Debug, Clone)]
pub struct PriceTable {
    prices: Vec<Price>,
}

impl PriceTable {
    /// The default table with `configured` over it (an entry replaces the default one of the
    /// same model). Errors name a model listed twice in `configured` or an empty model name.
    pub fn new(configured: &[Price]) -> Result<PriceTable, String> {
        let mut prices = default_prices();
        for (i, price) in configured.iter().enumerate() {
            if price.model.trim().is_empty() {
                return Err(format!("prices[{i}]: model must not be empty"));
            }
            if configured[..i].iter().any(|p| p.model == price.model) {
                return Err(format!(
                    "prices[{i}]: model {:?} is listed twice",
                    price.model
                ));
            }
            prices.retain(|p| p.model != price.model);
            prices.push(price.clone());
        }
        Ok(PriceTable { prices })
    }

    /// The price of `model`: the entry of that exact name, else the entry named by the model
    /// without a version suffix (`-2024-08-06`, `-20250514`, `-latest`), so that
    /// `gpt-4o-2024-08-06` is priced as `gpt-4o` and `claude-sonnet-4-20250514` as
    /// `claude-sonnet-4`.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        let exact = |name: &str| self.prices.iter().find(|p| p.model == name);
        exact(model).or_else(|| exact(without_version(model)?))
    }

    /// The exact cost of `tokens` at `price` (`None` only past the 28 digits an amount holds).
    /// Input tokens include the cache-read and cache-creation ones, output tokens the reasoning
    /// ones; each part is priced at its own price, the rest at the plain one.
    pub fn cost(price: &Price, tokens: &TokenCounts) -> Option<Usd> {
        let cache_read = tokens.cache_read_tokens;
        let cache_creation = tokens.cache_creation_tokens;
        let plain_input = tokens
            .input_tokens
            .saturating_sub(cache_read)
            .saturating_sub(cache_creation);
        let reasoning = tokens.reasoning_tokens.min(tokens.output_tokens);
        let plain_output = tokens.output_tokens - reasoning;
        let input = price.input_usd_per_mtok;
        let output = price.output_usd_per_mtok;
        [
            (input, plain_input),
            (price.cache_read_usd_per_mtok.unwrap_or(input), cache_read),
            (
                price.cache_creation_usd_per_mtok.unwrap_or(input),
                cache_creation,
            ),
            (output, plain_output),
            (price.reasoning_usd_per_mtok.unwrap_or(output), reasoning),
        ]
        .into_iter()
        .try_fold(Usd::ZERO, |sum, (per_million, n)| {
            sum.checked_add(Usd::per_million_tokens(per_million, n)?)
        })
    }

    pub fn prices(&self) -> &[Price] {
        &self.prices
    }
}

fn default_prices() -> Vec<Price> {
    let usd = |s: &str| s.parse::<Usd>().expect("default prices are decimals");
    DEFAULT_PRICES
        .iter()
        .map(|(model, input, output, cache_read, cache_creation)| Price {
            model: (*model).to_owned(),
            input_usd_per_mtok: usd(input),
            output_usd_per_mtok: usd(output),
            cache_read_usd_per_mtok: cache_read.map(usd),
            cache_creation_usd_per_mtok: cache_creation.map(usd),
            reasoning_usd_per_mtok: None,
        })
        .collect()
}

/// `model` without a trailing version: `-YYYY-MM-DD`, `-YYYYMMDD` or `-latest`.
fn without_version(model: &str) -> Option<&str> {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (base, suffix) = model.rsplit_once('-')?;
    if suffix == "latest" || (suffix.len() == 8 && digits(suffix)) {
        return Some(base);
    }
    // -YYYY-MM-DD: three numeric parts.
    let mut parts = model.rsplitn(4, '-');
    let (day, month, year, base) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (day.len() == 2
        && month.len() == 2
        && year.len() == 4
        && digits(day)
        && digits(month)
        && digits(year))
    .then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(
        input: u64,
        output: u64,
        cache_read: u64,
        cache_creation: u64,
        reasoning: u64,
    ) -> TokenCounts {
        TokenCounts {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_creation_tokens: cache_creation,
            reasoning_tokens: reasoning,
        }
    }

    #[test]
    fn cached_and_reasoning_tokens_are_parts_priced_at_their_own_price() {
        let table = PriceTable::new(&[]).unwrap();
        let gpt4o = table.lookup("gpt-4o").unwrap();
        // 1000 input of which 400 cached, 500 output of which 100 reasoning:
        // 600 × 2.50 + 400 × 1.25 + 400 × 10 + 100 × 10 (reasoning at the output price), per million.
        let cost = PriceTable::cost(gpt4o, &tokens(1000, 500, 400, 0, 100)).unwrap();
        assert_eq!(cost.to_string(), "0.007");
        let sonnet = table.lookup("claude-sonnet-4-20250514").unwrap();
        // 1000 input: 200 cache reads at 0.30, 300 cache writes at 3.75, 500 plain at 3.
        let cost = PriceTable::cost(sonnet, &tokens(1000, 0, 200, 300, 0)).unwrap();
        assert_eq!(cost.to_string(), "0.002685");
    }

    #[test]
    fn versions_are_priced_as_their_model_and_unknown_models_not_at_all() {
        let table = PriceTable::new(&[]).unwrap();
        assert_eq!(table.lookup("gpt-4o-2024-08-06").unwrap().model, "gpt-4o");
        assert_eq!(
            table.lookup("gpt-4o-mini-2024-07-18").unwrap().model,
            "gpt-4o-mini"
        );
        assert_eq!(
            table.lookup("claude-3-5-haiku-latest").unwrap().model,
            "claude-3-5-haiku"
        );
        assert!(table.lookup("gpt-4o-audio-preview").is_none());
        assert!(table.lookup("my-local-llama").is_none());
    }

    #[test]
    fn configured_prices_replace_or_add_and_duplicates_are_refused() {
        let price = |model: &str, input: &str| Price {
            model: model.into(),
            input_usd_per_mtok: input.parse().unwrap(),
            output_usd_per_mtok: "1".parse().unwrap(),
            cache_read_usd_per_mtok: None,
            cache_creation_usd_per_mtok: None,
            reasoning_usd_per_mtok: None,
        };
        let table = PriceTable::new(&[price("gpt-4o", "3"), price("local", "0.01")]).unwrap();
        assert_eq!(
            table
                .lookup("gpt-4o")
                .unwrap()
                .input_usd_per_mtok
                .to_string(),
            "3"
        );
        assert_eq!(
            table
                .lookup("local")
                .unwrap()
                .input_usd_per_mtok
                .to_string(),
            "0.01"
        );
        let err = PriceTable::new(&[price("a", "1"), price("a", "2")]).unwrap_err();
        assert!(err.contains("prices[1]") && err.contains("twice"), "{err}");
    }
}
