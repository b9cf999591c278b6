//! The opt-in signed envelope (#19): an endpoint with `envelope` set gets
//! `{"type": <event type>, "timestamp": <occurred_at>, "data": <body>}`
//! instead of the bare body, so the event type is covered by the
//! signature (`X-Jasci-Event` is a header and is not). `data` is the body
//! the endpoint would get without the option (after its `filter` and
//! `fields`), byte for byte; `timestamp` is the event's `occurred_at` in
//! ISO 8601 UTC, the same on every attempt.

use bytes::Bytes;
use prost_types::Timestamp;

/// Wraps `data` (a JSON document) of an event of type `event_type` that
/// occurred at `occurred_at`.
pub fn wrap(event_type: &str, occurred_at: Option<&Timestamp>, data: &[u8]) -> Bytes {
    let event_type = serde_json::to_string(event_type).expect("a string always serializes");
    let timestamp = occurred_at.map(crate::webhook::iso8601).unwrap_or_default();
    let timestamp = serde_json::to_string(&timestamp).expect("a string always serializes");
    let mut out = Vec::with_capacity(data.len() + event_type.len() + timestamp.len() + 32);
    out.extend_from_slice(b"{\"type\":");
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(timestamp.as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_the_body_byte_for_byte() {
        let data = br#"{"b":1.50,"a":"x"}"#;
        let ts = Timestamp {
            seconds: 1_770_215_535,
            nanos: 123_000_000,
        };
        let out = wrap("pick.confirmed", Some(&ts), data);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"type":"pick.confirmed","timestamp":"2026-02-04T14:32:15.123Z","data":{"b":1.50,"a":"x"}}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"]["a"], "x");
    }
}
