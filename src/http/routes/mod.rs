//! Handlers, one module per family of routes.

pub mod bulk;
pub mod entries;
pub mod lifecycle;
pub mod ops;
pub mod prefetch;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Number;

pub(super) use crate::engine::entry::present_raw;

/// A whole number however it is written (`5`, `5.0`, `5e0`): JSON has one number type, and a
/// client whose language has only floats sends `5.0` for 5 (JSON Schema counts it an integer too).
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = Number::deserialize(deserializer)?;
    whole(&number).ok_or_else(|| D::Error::custom(format!("expected a whole number of at least 0, got {number}")))
}

/// [`whole_number`] for an optional field: absent or `null` is `None`.
fn optional_whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(number) => whole(&number)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a whole number of at least 0, got {number}"))),
    }
}

fn whole(number: &Number) -> Option<u64> {
    if let Some(whole) = number.as_u64() {
        return Some(whole);
    }
    // 2^64 as f64: floats below it convert exactly when they have no fraction.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    number.as_f64().filter(|float| float.fract() == 0.0 && (0.0..LIMIT).contains(float)).map(|float| float as u64)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Numbers {
        #[serde(deserialize_with = "super::whole_number")]
        count: u64,
        #[serde(default, deserialize_with = "super::optional_whole_number")]
        ttl: Option<u64>,
    }

    fn parse(json: &str) -> Result<(u64, Option<u64>), String> {
        serde_json::from_str::<Numbers>(json).map(|numbers| (numbers.count, numbers.ttl)).map_err(|err| err.to_string())
    }

    #[test]
    fn whole_numbers_are_accepted_however_written() {
        assert_eq!(parse(r#"{"count":5,"ttl":60}"#), Ok((5, Some(60))));
        assert_eq!(parse(r#"{"count":5.0,"ttl":6e1}"#), Ok((5, Some(60))));
        assert_eq!(parse(r#"{"count":0,"ttl":null}"#), Ok((0, None)));
        assert_eq!(parse(r#"{"count":18446744073709551615}"#), Ok((u64::MAX, None)));
    }

    #[test]
    fn fractions_negatives_and_other_types_are_refused() {
        for json in [
            r#"{"count":1.5}"#,
            r#"{"count":-1}"#,
            r#"{"count":-1.0}"#,
            r#"{"count":1e30}"#,
            r#"{"count":"5"}"#,
            r#"{"count":null}"#,
            r#"{"count":1,"ttl":0.5}"#,
            r#"{"count":1,"ttl":true}"#,
        ] {
            assert!(parse(json).is_err(), "{json}");
        }
    }
}
