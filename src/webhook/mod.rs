//! Webhook bodies: one event → the exact JSON a receiver gets.
//!
//! [`render_body`] is the single dispatch point; each event type's shape lives
//! in its own file as a straight list of keys in the order the source
//! documents show them (`serde_json`'s `preserve_order` keeps insertion
//! order). The shapers share the small helpers below: an `Object` builder
//! that leaves absent values out (WMS shapes) or writes `null` for them
//! (the channel-inventory shape), the ISO 8601 date formatter (`date.rs`) and
//! the number helpers.
//!
//! The rules, documented for receivers in `docs/webhook-json.md`:
//! - the envelope's `occurred_at` is the body's `timestamp`, first; the
//!   envelope's id, ordering key and attributes are not in the body;
//! - WMS shapes omit absent fields: an empty string, an unset `optional`, an
//!   `*_UNSPECIFIED` enum, an unset timestamp, an empty list;
//! - enums render without their type prefix (`TRACKING_STATUS_SHIPPED` →
//!   `SHIPPED`);
//! - dates are ISO 8601 UTC, with 3, 6 or 9 sub-second digits when the value
//!   has them;
//! - doubles with an integral value render as integers (`5`, not `5.0`), as
//!   the pick sample writes them; `price` keeps at most 6 decimal places.
//!
//! Inputs have passed `convert::validate_event`: enum values are known,
//! numbers finite, timestamps within years 0001–9999. The helpers still
//! render something sensible for anything else rather than panic.

pub mod catalog;
mod channel_inventory;
mod custom;
mod date;
mod inventory_updated;
mod order_status;
mod pick_confirmed;
mod return_received;
pub mod schema;
mod shipment_closed;

#[cfg(test)]
mod doc_tables;
#[cfg(test)]
mod golden;

use prost_types::Timestamp;

pub use date::{iso8601, iso8601_at};

use crate::pb::{self, event::Payload};

/// Why an event has no body.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The event carries no payload (stored events always do).
    #[error("event has no payload")]
    NoPayload,
    /// The JSON could not be written.
    #[error("encoding the webhook body: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Renders the webhook body of `event`: the JSON bytes that are signed and
/// sent, identical on every attempt.
pub fn render_body(event: &pb::Event) -> Result<Vec<u8>, RenderError> {
    let env = Envelope {
        occurred_at: event.occurred_at.as_ref(),
    };
    let body = match event.payload.as_ref().ok_or(RenderError::NoPayload)? {
        Payload::ShipmentClosed(p) => shipment_closed::body(&env, p),
        Payload::PickConfirmed(p) => pick_confirmed::body(&env, p),
        Payload::InventoryUpdated(p) => inventory_updated::body(&env, p),
        Payload::OrderStatus(p) => order_status::body(&env, p),
        Payload::ReturnReceived(p) => return_received::body(&env, p),
        Payload::ChannelInventoryUpdated(p) => channel_inventory::body(&env, p),
        Payload::Custom(p) => custom::body(&env, p),
    };
    Ok(body.0)
}

/// The envelope fields a body may show. Only `occurred_at` (as `timestamp`)
/// is rendered; the id and attributes travel in headers, never in the body.
pub(super) struct Envelope<'a> {
    /// When the event happened; set on every stored event.
    pub(super) occurred_at: Option<&'a Timestamp>,
}

/// A complete JSON value, as bytes (always UTF-8).
#[must_use]
pub(super) struct Json(Vec<u8>);

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
impl Json {
    /// Parsed, for comparing with `json!` values in tests.
    pub(super) fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0).expect("rendered JSON parses")
    }
}

/// A JSON object written key by key, in call order, straight to bytes.
///
/// The output is exactly what `serde_json` writes for the same keys and
/// values (compact, its string escaping, `itoa`/`ryu` numbers), without
/// building a `serde_json::Value` tree first: that tree (an `IndexMap` per
/// object, a `String` per key) cost more than the rest of a delivery's
/// CPU besides I/O. `tests/it/fuzz.rs` checks that every rendered body is
/// in that canonical form.
///
/// The plain methods (`str`, `int`, ...) leave the key out when the value is
/// absent, as the WMS shapes do; the `*_or_null` methods always write the key,
/// with `null` for an absent value, as the channel-inventory shape does.
#[must_use]
pub(super) struct Object(Vec<u8>);

impl Object {
    /// A nested object (a line, an address): room for a few hundred bytes.
    pub(super) fn new() -> Self {
        Self::with_capacity(512)
    }

    /// A body's top-level object: room for a typical body, so that it is
    /// not copied to a larger buffer several times while it grows.
    pub(super) fn body() -> Self {
        Self::with_capacity(2048)
    }

    fn with_capacity(n: usize) -> Self {
        let mut out = Vec::with_capacity(n);
        out.push(b'{');
        Self(out)
    }

    /// Writes `"key":`, after a comma unless it is the first key.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        write_str(&mut self.0, key);
        self.0.push(b':');
        &mut self.0
    }

    fn null(mut self, key: &str) -> Self {
        self.key(key).extend_from_slice(b"null");
        self
    }

    /// A string; empty means absent.
    pub(super) fn str(mut self, key: &str, value: &str) -> Self {
        if !value.is_empty() {
            write_str(self.key(key), value);
        }
        self
    }

    /// An integer (`int32`/`int64`).
    pub(super) fn int(mut self, key: &str, value: Option<impl Into<i64>>) -> Self {
        if let Some(n) = value {
            write_int(self.key(key), n.into());
        }
        self
    }

    /// A double.
    pub(super) fn num(mut self, key: &str, value: Option<f64>) -> Self {
        if let Some(n) = value {
            write_number(self.key(key), n);
        }
        self
    }

    /// A unit price: a double rounded to at most 6 decimal places.
    pub(super) fn price(self, key: &str, value: Option<f64>) -> Self {
        self.num(key, value.map(round_price))
    }

    /// An ISO 8601 date.
    pub(super) fn date(mut self, key: &str, value: Option<&Timestamp>) -> Self {
        if let Some(ts) = value {
            write_str(self.key(key), &iso8601(ts));
        }
        self
    }

    /// An enum, by its documented spelling (`SHIPPED`); `*_UNSPECIFIED` means
    /// absent.
    pub(super) fn label(mut self, key: &str, value: impl Label) -> Self {
        if let Some(label) = value.label() {
            write_str(self.key(key), label);
        }
        self
    }

    /// A list of objects; empty means absent.
    pub(super) fn list(mut self, key: &str, items: impl IntoIterator<Item = Json>) -> Self {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return self;
        }
        let out = self.key(key);
        out.push(b'[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&item.0);
        }
        out.push(b']');
        self
    }

    /// A nested object, always written.
    pub(super) fn object(mut self, key: &str, value: Object) -> Self {
        let value = value.build();
        self.key(key).extend_from_slice(&value.0);
        self
    }

    /// A string or `null`. A set empty string stays `""`: these fields carry
    /// explicit presence, so only unset is `null`.
    pub(super) fn str_or_null(mut self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(s) => {
                write_str(self.key(key), s);
                self
            }
            None => self.null(key),
        }
    }

    /// An integer or `null`.
    pub(super) fn int_or_null(mut self, key: &str, value: Option<i64>) -> Self {
        match value {
            Some(n) => {
                write_int(self.key(key), n);
                self
            }
            None => self.null(key),
        }
    }

    /// A double or `null`.
    pub(super) fn num_or_null(mut self, key: &str, value: Option<f64>) -> Self {
        match value {
            Some(n) => {
                write_number(self.key(key), n);
                self
            }
            None => self.null(key),
        }
    }

    /// A boolean or `null`.
    pub(super) fn bool_or_null(mut self, key: &str, value: Option<bool>) -> Self {
        match value {
            Some(b) => {
                let text: &[u8] = if b { b"true" } else { b"false" };
                self.key(key).extend_from_slice(text);
                self
            }
            None => self.null(key),
        }
    }

    /// An ISO 8601 date or `null`.
    pub(super) fn date_or_null(mut self, key: &str, value: Option<&Timestamp>) -> Self {
        match value {
            Some(ts) => {
                write_str(self.key(key), &iso8601(ts));
                self
            }
            None => self.null(key),
        }
    }

    pub(super) fn build(mut self) -> Json {
        self.0.push(b'}');
        Json(self.0)
    }
}

/// A JSON string, escaped exactly as `serde_json` escapes it.
///
/// `serde_json` escapes only `"`, `\\` and the control characters below
/// U+0020; a string without any (every key, nearly every value) is copied
/// between quotes as it is, which is what `serde_json` writes for it too.
pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    serde_json::to_writer(out, s).expect("writing JSON to a Vec cannot fail");
}

/// An integer, as `serde_json` writes it.
fn write_int(out: &mut Vec<u8>, n: i64) {
    serde_json::to_writer(out, &n).expect("writing JSON to a Vec cannot fail");
}

/// A generated enum. Protobuf scoping makes every value name carry the type
/// as a prefix (`TRACKING_STATUS_SHIPPED`); the webhook JSON writes the
/// documented spelling without it (`SHIPPED`).
pub(super) trait Label: Copy {
    /// The prefix of every value name.
    const PREFIX: &'static str;

    /// The value's proto name (the generated `as_str_name`).
    fn proto_name(self) -> &'static str;

    /// The name without [`Label::PREFIX`]; `None` for `*_UNSPECIFIED`
    /// (absent). Unknown numbers read as `UNSPECIFIED` through prost's
    /// accessors; validation rejects them before they are stored.
    fn label(self) -> Option<&'static str> {
        let name = self.proto_name();
        // The enum tests check that every value has the prefix.
        let label = name.strip_prefix(Self::PREFIX).unwrap_or(name);
        (label != "UNSPECIFIED").then_some(label)
    }
}

impl Label for pb::TrackingStatus {
    const PREFIX: &'static str = "TRACKING_STATUS_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl Label for pb::ShipmentStatus {
    const PREFIX: &'static str = "SHIPMENT_STATUS_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl Label for pb::SignatureRequired {
    const PREFIX: &'static str = "SIGNATURE_REQUIRED_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl Label for pb::PickStatus {
    const PREFIX: &'static str = "PICK_STATUS_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl Label for pb::InventoryReason {
    const PREFIX: &'static str = "INVENTORY_REASON_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl Label for pb::OrderStatus {
    const PREFIX: &'static str = "ORDER_STATUS_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl Label for pb::ReturnCondition {
    const PREFIX: &'static str = "RETURN_CONDITION_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl Label for pb::ReturnDisposition {
    const PREFIX: &'static str = "RETURN_DISPOSITION_";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
}

/// Largest magnitude below which every integer is exactly representable as
/// a double (2^53).
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// A double as a JSON number. Integral values render as integers (`5`, not
/// `5.0`), as most JSON producers write them; the value is the same number
/// either way.
pub(super) fn write_number(out: &mut Vec<u8>, n: f64) {
    if n.fract() == 0.0 && n.abs() < MAX_EXACT_INT {
        // Exact: integral and within ±2^53. (-0.0 becomes 0.)
        write_int(out, n as i64);
        return;
    }
    // Non-finite numbers have no JSON form (`serde_json` writes `null`);
    // validation keeps them out.
    serde_json::to_writer(out, &n).expect("writing JSON to a Vec cannot fail");
}

/// `p` rounded to at most 6 decimal places: the exact binary value rounded to
/// the nearest 6-place decimal (an exact tie, such as 1/128 = 0.0078125, goes
/// to even), then the nearest double to that, which prints with at most 6
/// decimals (`1.23456789` → `1.234568`, `29.999999` stays).
pub(super) fn round_price(p: f64) -> f64 {
    if !p.is_finite() {
        return p;
    }
    // Formatting rounds the exact value correctly at any magnitude, where
    // `(p * 1e6).round() / 1e6` can overflow or double-round.
    format!("{p:.6}")
        .parse()
        .expect("a formatted finite f64 parses back")
}

#[cfg(test)]
mod tests;
