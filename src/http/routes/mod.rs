//! Handlers, one module per family of routes.

pub mod bulk;
pub mod entries;
pub mod lifecycle;
pub mod ops;
pub mod prefetch;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Deserializes a present field as its raw JSON text, so that `null` is `Some("null")` and
/// only a missing field (with `#[serde(default)]`) is `None`.
fn present_raw<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}
