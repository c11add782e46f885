//! The JSON Schemas of the domain's own value types, for the API's OpenAPI document: each
//! pattern accepts exactly what the matching parser or validator accepts (the tests check this
//! with a real JSON Schema validator).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

use super::{ExecutionId, Wei};

/// A regular expression (unanchored) for the decimal numbers `1..=max` written without leading
/// zeros, built digit by digit from `max` so that a schema states a bound no JSON number can
/// hold exactly.
pub fn positive_decimal_up_to(max: u128) -> String {
    let max = max.to_string();
    let mut alternatives = Vec::new();
    if max.len() > 1 {
        alternatives.push(format!("[1-9][0-9]{{0,{}}}", max.len() - 2));
    }
    for (i, digit) in max.bytes().map(|b| b - b'0').enumerate() {
        let lowest = u8::from(i == 0);
        if digit <= lowest {
            continue;
        }
        let rest = match max.len() - i - 1 {
            0 => String::new(),
            n => format!("[0-9]{{{n}}}"),
        };
        alternatives.push(format!("{}[{lowest}-{}]{rest}", &max[..i], digit - 1));
    }
    alternatives.push(max);
    alternatives.join("|")
}

/// A regular expression for exactly the strings `Wei::from_str` accepts: decimal digits
/// (leading zeros allowed) whose value is at most `u128::MAX`.
pub fn wei_pattern() -> String {
    format!("^(?:0+|0*(?:{}))$", positive_decimal_up_to(u128::MAX))
}

impl PartialSchema for Wei {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(wei_pattern()))
            .description(Some(
                "An exact amount of wei: a non-negative integer up to 2^128 - 1, always a decimal string",
            ))
            .examples([serde_json::json!("1000000000000000000")])
            .into()
    }
}

impl ToSchema for Wei {}

/// The JSON Schema pattern of `validate_agent_id`.
pub const AGENT_ID_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";

/// The schema of an agent id, as `validate_agent_id` checks it.
pub struct AgentId;

impl PartialSchema for AgentId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(AGENT_ID_PATTERN))
            .examples([serde_json::json!("echo")])
            .into()
    }
}

impl ToSchema for AgentId {}

/// The JSON Schema pattern of `is_valid_execution_id`: `exec_` and 26 Crockford base-32 digits.
pub const EXECUTION_ID_PATTERN: &str = "^exec_[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$";

/// The schema of an execution id, as `is_valid_execution_id` checks it.
impl PartialSchema for ExecutionId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(EXECUTION_ID_PATTERN))
            .examples([serde_json::json!("exec_01k6z3y8m4q0c2b7n5v9t1r3x6")])
            .into()
    }
}

impl ToSchema for ExecutionId {}

/// A JSON Schema document: an object or `true`/`false` (`null`: none).
pub fn json_schema_document() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::Object,
            Type::Boolean,
            Type::Null,
        ]))
        .description(Some(
            "A JSON Schema (draft 2020-12 unless it says otherwise) that inputs must satisfy",
        ))
        .build()
}

/// Environment variables: names are not empty and hold neither `=` nor NUL.
pub(super) fn environment() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(String::schema()))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^=\\u0000]+$")),
        ))
        .build()
}

/// Any JSON value, `null` included (an `Option<Value>` that is always present).
pub(super) fn any_or_null() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{is_valid_execution_id, validate_agent_id};

    /// Whether `value` matches the JSON Schema `pattern`, by a real JSON Schema validator.
    fn matches(pattern: &str, value: &str) -> bool {
        let schema = serde_json::json!({ "type": "string", "pattern": pattern });
        jsonschema::validator_for(&schema)
            .unwrap()
            .is_valid(&serde_json::json!(value))
    }

    #[test]
    fn the_wei_pattern_accepts_exactly_what_wei_parses() {
        let pattern = wei_pattern();
        let max = u128::MAX.to_string();
        let mut candidates: Vec<String> = vec![
            "0".into(),
            "000".into(),
            "7".into(),
            "10".into(),
            "1000000000000000000".into(),
            max.clone(),
            format!("000{max}"),
            "340282366920938463463374607431768211456".into(),
            "340282366920938463463374607431768211460".into(),
            "340282366920938463463374607431768211355".into(),
            "339999999999999999999999999999999999999".into(),
            "400000000000000000000000000000000000000".into(),
            "1".repeat(40),
            "9".repeat(38),
            "9".repeat(39),
            String::new(),
            "-1".into(),
            "1.5".into(),
            " 1".into(),
            "1\n".into(),
            "0x10".into(),
        ];
        // Every number one above and below each digit of the maximum.
        for i in 0..max.len() {
            for delta in [1u8, 9] {
                let mut digits = max.clone().into_bytes();
                digits[i] = b'0' + (digits[i] - b'0' + delta) % 10;
                candidates.push(String::from_utf8(digits).unwrap());
            }
        }
        for candidate in candidates {
            assert_eq!(
                matches(&pattern, &candidate),
                candidate.parse::<Wei>().is_ok(),
                "{candidate:?}"
            );
        }
    }

    #[test]
    fn positive_decimal_patterns_stop_at_their_maximum() {
        for max in [1u128, 5, 9, 10, 19, 100, 999, 1000, i64::MAX as u128] {
            let pattern = format!("^0*(?:{})$", positive_decimal_up_to(max));
            for n in [
                0,
                1,
                2,
                9,
                10,
                11,
                99,
                100,
                101,
                max - 1,
                max,
                max + 1,
                max * 10,
            ] {
                assert_eq!(
                    matches(&pattern, &n.to_string()),
                    (1..=max).contains(&n),
                    "{n} against 1..={max}"
                );
            }
        }
    }

    #[test]
    fn id_patterns_accept_exactly_valid_ids() {
        let execution = ExecutionId::generate().to_string();
        for id in [
            execution.as_str(),
            &execution.to_uppercase().replace("EXEC_", "exec_"),
            "exec_123",
            "exec_0000000000000000000000000i",
            "exec_0000000000000000000000000l",
            "exec_0000000000000000000000000u",
            "exec_00000000000000000000000000",
            "exec_zzzzzzzzzzzzzzzzzzzzzzzzzz",
            "exec_000000000000000000000000000",
            "EXEC_00000000000000000000000000",
            "../etc/passwd",
        ] {
            assert_eq!(
                matches(EXECUTION_ID_PATTERN, id),
                is_valid_execution_id(id),
                "{id:?}"
            );
        }
        let long = "a".repeat(65);
        for id in [
            "a",
            "echo",
            "a-b_c.d",
            "",
            "a b",
            "a/b",
            "é",
            &long,
            &long[1..],
        ] {
            assert_eq!(
                matches(AGENT_ID_PATTERN, id),
                validate_agent_id(id).is_ok(),
                "{id:?}"
            );
        }
    }

    #[test]
    fn the_environment_name_pattern_refuses_empty_names_equals_signs_and_nul() {
        let schema = serde_json::json!({ "type": "object", "propertyNames": {
            "type": "string", "pattern": "^[^=\\u0000]+$" } });
        assert_eq!(
            serde_json::to_value(environment()).unwrap()["propertyNames"],
            schema["propertyNames"]
        );
        let validator = jsonschema::validator_for(&schema).unwrap();
        for (name, valid) in [
            ("PATH", true),
            ("a b", true),
            ("", false),
            ("A=B", false),
            ("A\0", false),
        ] {
            let env = serde_json::json!({ name: "x" });
            assert_eq!(validator.is_valid(&env), valid, "{name:?}");
        }
    }
}
