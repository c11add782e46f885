//! Whole numbers in JSON. JSON (and JSON Schema) count `5.0` as the integer 5, so it is taken
//! like `5`; a fraction, a negative number or one beyond `u64` is refused, never rounded.

use serde::de::Error;
use serde::{Deserialize, Deserializer};
use serde_json::Number;

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let number = Number::deserialize(d)?;
    from_number(&number).ok_or_else(|| {
        D::Error::custom(format!(
            "invalid value: {number}, expected a whole number from 0 to {}",
            u64::MAX
        ))
    })
}

pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Number>::deserialize(d)? {
        None => Ok(None),
        Some(number) => from_number(&number).map(Some).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid value: {number}, expected a whole number from 0 to {}",
                u64::MAX
            ))
        }),
    }
}

/// Judged on the number as written where serde_json keeps the text, else on its shortest
/// round-trip form: `413308.0` is whole; `1.5` is not, and exponent forms are refused too.
pub(crate) fn from_number(number: &Number) -> Option<u64> {
    if let Some(n) = number.as_u64() {
        return Some(n);
    }
    let text = number.to_string();
    let (whole, fraction) = text.split_once('.')?;
    if !fraction.bytes().all(|b| b == b'0') || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[test]
    fn whole_numbers_may_carry_a_zero_fraction_but_nothing_else() {
        #[derive(Deserialize)]
        struct Count(#[serde(deserialize_with = "super::deserialize")] u64);
        let count = |json: &str| serde_json::from_str::<Count>(json).map(|c| c.0).ok();
        assert_eq!(count("5"), Some(5));
        assert_eq!(count("413308.0"), Some(413308));
        assert_eq!(count("7.000"), Some(7));
        assert_eq!(count("18446744073709551615"), Some(u64::MAX));
        for refused in [
            "5.5",
            "-1",
            "-1.0",
            "18446744073709551616",
            "1e300",
            "\"5\"",
            "null",
        ] {
            assert_eq!(count(refused), None, "{refused}");
        }
    }
}
