//! Cross-instance invalidation messages (SPEC §5) and the per-origin sequence check.
//!
//! Every write, delete, invalidation and clear publishes one JSON message on
//! `invalidation.channel`:
//! `{"type":"EVICT"|"PATTERN"|"TAGS"|"CLEAR","keys"?,"pattern"?,"tags"?,"origin","seq"}`.
//! `seq` counts this instance's messages from 1. A receiver that sees an origin skip a number
//! has missed a message and clears its L1; a `seq` of 1 after other numbers is that origin
//! restarting. Messages from other programs (no `origin`, no `seq`) are applied as they are.
//! Everything received is untrusted: a message that does not parse is counted and ignored.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MessageKind {
    Evict,
    Pattern,
    Tags,
    Clear,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: MessageKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl Message {
    pub fn evict(keys: Vec<String>) -> Self {
        Self { kind: MessageKind::Evict, keys: Some(keys), pattern: None, tags: None, origin: None, seq: None }
    }

    pub fn pattern(pattern: String) -> Self {
        Self { kind: MessageKind::Pattern, keys: None, pattern: Some(pattern), tags: None, origin: None, seq: None }
    }

    pub fn tags(tags: Vec<String>) -> Self {
        Self { kind: MessageKind::Tags, keys: None, pattern: None, tags: Some(tags), origin: None, seq: None }
    }

    pub fn clear() -> Self {
        Self { kind: MessageKind::Clear, keys: None, pattern: None, tags: None, origin: None, seq: None }
    }

    /// Parses a received payload; `None` for anything malformed, including a kind without the
    /// field it needs.
    pub fn parse(payload: &[u8]) -> Option<Message> {
        let message: Message = serde_json::from_slice(payload).ok()?;
        let complete = match message.kind {
            MessageKind::Evict => message.keys.is_some(),
            MessageKind::Pattern => message.pattern.is_some(),
            MessageKind::Tags => message.tags.is_some(),
            MessageKind::Clear => true,
        };
        complete.then_some(message)
    }
}

/// Most origins remembered at once; past it the map restarts (costing at most one needless
/// L1 flush per forgotten origin), so a flood of invented origins cannot grow memory.
const MAX_ORIGINS: usize = 4096;

/// The last `seq` seen from each origin.
pub(crate) struct SequenceTracker {
    /// A std mutex: a map lookup per received message, never held across `.await`.
    last_seen: Mutex<HashMap<String, u64>>,
}

impl SequenceTracker {
    pub fn new() -> Self {
        Self { last_seen: Mutex::new(HashMap::new()) }
    }

    /// Records `seq` from `origin`; returns true when messages from it were missed.
    pub fn observe(&self, origin: &str, seq: u64) -> bool {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last_seen.len() >= MAX_ORIGINS && !last_seen.contains_key(origin) {
            last_seen.clear();
        }
        match last_seen.insert(origin.to_string(), seq) {
            None => false,
            Some(last) => seq != last.saturating_add(1) && seq != 1,
        }
    }

    /// Forgets every origin (after this instance cleared its L1 anyway).
    pub fn reset(&self) {
        self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_serialize_as_the_spec_says() {
        let mut message = Message::evict(vec!["a".into()]);
        message.origin = Some("node-1".into());
        message.seq = Some(7);
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"type":"EVICT","keys":["a"],"origin":"node-1","seq":7}"#
        );
        assert_eq!(serde_json::to_string(&Message::clear()).unwrap(), r#"{"type":"CLEAR"}"#);
    }

    #[test]
    fn foreign_messages_without_origin_parse() {
        let message = Message::parse(br#"{"type":"PATTERN","pattern":"user:*"}"#).unwrap();
        assert_eq!(message.kind, MessageKind::Pattern);
        assert_eq!(message.origin, None);
    }

    #[test]
    fn malformed_messages_are_refused() {
        for payload in [
            &b"not json"[..],
            br#"{"type":"EVICT"}"#,
            br#"{"type":"TAGS","tags":"t"}"#,
            br#"{"type":"PATTERN"}"#,
            br#"{"type":"NUKE"}"#,
            br#"{"keys":["a"]}"#,
            br#"{"type":"EVICT","keys":["a"],"seq":-1}"#,
            br#"[1,2]"#,
        ] {
            assert!(Message::parse(payload).is_none(), "{}", String::from_utf8_lossy(payload));
        }
    }

    use proptest::prelude::*;

    /// JSON values of every type, for fields that expect one type.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|n| serde_json::json!(n)),
            "[ -~]{0,12}".prop_map(serde_json::Value::from),
            prop::collection::vec("[ -~]{0,8}", 0..4).prop_map(|items| serde_json::json!(items)),
            prop::collection::vec(any::<i32>(), 0..3).prop_map(|items| serde_json::json!(items)),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(1000))]

        #[test]
        fn fuzz_message_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Some(message) = Message::parse(&bytes) {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(), "only JSON parses");
                let _ = message;
            }
        }

        /// Objects shaped like messages with each field of any type: a message parses exactly
        /// when its kind's field is present with the right type and the others are well typed.
        #[test]
        fn fuzz_message_fields_of_any_type(
            kind in prop_oneof![Just(json_str("EVICT")), Just(json_str("PATTERN")), Just(json_str("TAGS")), Just(json_str("CLEAR")), any_json()],
            keys in prop::option::of(any_json()),
            pattern in prop::option::of(any_json()),
            tags in prop::option::of(any_json()),
            origin in prop::option::of(any_json()),
            seq in prop::option::of(any_json()),
        ) {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), kind);
            for (name, value) in [("keys", keys), ("pattern", pattern), ("tags", tags), ("origin", origin), ("seq", seq)] {
                if let Some(value) = value {
                    object.insert(name.into(), value);
                }
            }
            let payload = serde_json::to_vec(&object).unwrap();
            if let Some(message) = Message::parse(&payload) {
                let complete = match message.kind {
                    MessageKind::Evict => message.keys.is_some(),
                    MessageKind::Pattern => message.pattern.is_some(),
                    MessageKind::Tags => message.tags.is_some(),
                    MessageKind::Clear => true,
                };
                prop_assert!(complete, "{}", String::from_utf8_lossy(&payload));
            }
        }
    }

    fn json_str(text: &str) -> serde_json::Value {
        serde_json::Value::from(text)
    }

    #[test]
    fn a_skipped_sequence_number_is_a_gap() {
        let tracker = SequenceTracker::new();
        assert!(!tracker.observe("a", 5), "the first message from an origin sets its baseline");
        assert!(!tracker.observe("a", 6));
        assert!(tracker.observe("a", 8), "7 was missed");
        assert!(!tracker.observe("a", 9));
        assert!(!tracker.observe("a", 1), "1 is a restart of that origin");
        assert!(!tracker.observe("b", 3), "origins are tracked apart");
    }
}
