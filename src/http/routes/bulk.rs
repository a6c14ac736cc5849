//! Routes over many keys: invalidate, batch get/set, evict, clear.

use std::collections::{HashMap, HashSet};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{optional_whole_number, present_raw, whole_number};
use crate::engine::{Invalidation, Key, L2Write, ValidWrite, WriteRequest};
use crate::http::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::render;
use crate::http::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateBody {
    keys: Option<Vec<String>>,
    pattern: Option<String>,
    tags: Option<Vec<String>>,
}

pub async fn invalidate(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<InvalidateBody>,
) -> Result<Response, ApiError> {
    if body.keys.is_none() && body.pattern.is_none() && body.tags.is_none() {
        return Err(ApiError::bad_request("empty_invalidation", "give at least one of keys, pattern or tags"));
    }
    let keys = parse_keys(&state, body.keys.unwrap_or_default())?;
    let invalidation = Invalidation { keys, pattern: body.pattern, tags: body.tags.unwrap_or_default() };
    let invalidated = state.cache.invalidate(&invalidation).await?;
    Ok(Json(json!({ "success": true, "invalidated": invalidated })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGetBody {
    keys: Vec<String>,
}

pub async fn batch_get(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BatchGetBody>,
) -> Result<Response, ApiError> {
    let mut keys = parse_keys(&state, body.keys)?;
    // The L1's hasher: std's SipHash costs more than the rest of a key's answer.
    let mut seen = HashSet::with_capacity_and_hasher(keys.len(), quick_cache::DefaultHashBuilder::default());
    keys.retain(|key| seen.insert(key.clone()));
    let hits = state.cache.read_many(&keys).await;
    let mut found = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for (key, hit) in keys.into_iter().zip(hits) {
        match hit {
            Some(hit) => found.push((key, hit)),
            None => missing.push(key),
        }
    }
    Ok(render::batch_entries(&found, &missing))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSetBody {
    entries: Vec<BatchEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEntry {
    key: String,
    #[serde(default, deserialize_with = "present_raw")]
    value: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "optional_whole_number")]
    ttl: Option<u64>,
    tags: Option<Vec<String>>,
    depends_on: Option<Vec<String>>,
}

/// Checks every entry first, so that a bad one fails the batch before anything is written.
pub async fn batch_set(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BatchSetBody>,
) -> Result<Response, ApiError> {
    let mut writes: Vec<ValidWrite> = Vec::with_capacity(body.entries.len());
    for (idx, entry) in body.entries.into_iter().enumerate() {
        let at = |err: ApiError| prefix_error(err, idx);
        let key = state.cache.parse_key(&entry.key).map_err(|err| at(err.into()))?;
        let value = entry
            .value
            .ok_or_else(|| at(ApiError::bad_request("missing_value", "the entry must have a value field")))?;
        let write = state
            .cache
            .validate(WriteRequest {
                key,
                value: Bytes::copy_from_slice(value.get().as_bytes()),
                ttl_secs: entry.ttl,
                tags: entry.tags.unwrap_or_default(),
                depends_on: entry.depends_on.unwrap_or_default(),
            })
            .map_err(|err| at(err.into()))?;
        writes.push(write);
    }
    let stored = writes.len();
    let outcomes = state.cache.set_many(writes).await?;
    // One pipeline for the batch: every entry has the same L2 outcome, as PUT reports it.
    let nothing_to_store = if state.cache.has_l2() { L2Write::Stored } else { L2Write::Disabled };
    let l2 = outcomes.first().map_or(nothing_to_store, |outcome| outcome.l2);
    Ok(Json(json!({ "success": true, "stored": stored, "l2": l2.as_str() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvictBody {
    #[serde(deserialize_with = "whole_number")]
    count: u64,
    predictions: Option<HashMap<String, f64>>,
}

pub async fn evict(State(state): State<AppState>, JsonBody(body): JsonBody<EvictBody>) -> Result<Response, ApiError> {
    let predictions = match body.predictions {
        None => None,
        Some(raw) => {
            let mut predictions = HashMap::with_capacity(raw.len());
            for (key, probability) in raw {
                if !(0.0..=1.0).contains(&probability) {
                    return Err(ApiError::bad_request(
                        "invalid_prediction",
                        format!("prediction for {key:?} must be in 0..=1"),
                    ));
                }
                predictions.insert(state.cache.parse_key(&key)?, probability);
            }
            Some(predictions)
        }
    };
    let keys = state.cache.evict(usize::try_from(body.count).unwrap_or(usize::MAX), predictions.as_ref());
    let keys: Vec<&str> = keys.iter().map(Key::as_str).collect();
    Ok(Json(json!({ "evicted": keys.len(), "keys": keys })).into_response())
}

pub async fn clear(State(state): State<AppState>) -> Result<Response, ApiError> {
    let cleared = state.cache.clear().await?;
    Ok(Json(json!({ "cleared": cleared })).into_response())
}

fn parse_keys(state: &AppState, raw: Vec<String>) -> Result<Vec<Key>, ApiError> {
    raw.iter().map(|key| state.cache.parse_key(key).map_err(ApiError::from)).collect()
}

/// Says which batch entry an error is about.
fn prefix_error(err: ApiError, idx: usize) -> ApiError {
    err.with_context(&format!("entries[{idx}]"))
}
