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
/// A body is one buffer: a nested object ([`Object::object`], each item
/// of [`Object::list`]) is written into its parent's buffer in place, not
/// built apart and copied in. Keys are the shapers' literals, which need no
/// escaping (checked in debug builds, where every shaper's tests run), so
/// they are copied as they are.
///
/// The plain methods (`str`, `int`, ...) leave the key out when the value is
/// absent, as the WMS shapes do; the `*_or_null` methods always write the key,
/// with `null` for an absent value, as the channel-inventory shape does.
#[must_use]
pub(super) struct Object {
    out: Vec<u8>,
    /// Where this object's `{` is in `out`.
    start: usize,
}

impl Object {
    /// A body's top-level object: room for a typical body, so that it is
    /// not copied to a larger buffer several times while it grows.
    pub(super) fn body() -> Self {
        Self::within(Vec::with_capacity(2048))
    }

    /// An object on its own (tests).
    #[cfg(test)]
    pub(super) fn new() -> Self {
        Self::within(Vec::new())
    }

    /// An object written at the end of `out`.
    fn within(mut out: Vec<u8>) -> Self {
        let start = out.len();
        out.push(b'{');
        Self { out, start }
    }

    /// Writes `"key":`, after a comma unless it is the first key.
    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(
            !needs_escaping(key.as_bytes()),
            "key {key:?} needs escaping"
        );
        let out = &mut self.out;
        if out.len() > self.start + 1 {
            out.push(b',');
        }
        out.reserve(key.len() + 3);
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out
    }

    fn null(mut self, key: &'static str) -> Self {
        self.key(key).extend_from_slice(b"null");
        self
    }

    /// A string; empty means absent.
    pub(super) fn str(mut self, key: &'static str, value: &str) -> Self {
        if !value.is_empty() {
            write_str(self.key(key), value);
        }
        self
    }

    /// An integer (`int32`/`int64`).
    pub(super) fn int(mut self, key: &'static str, value: Option<impl Into<i64>>) -> Self {
        if let Some(n) = value {
            write_int(self.key(key), n.into());
        }
        self
    }

    /// A double.
    pub(super) fn num(mut self, key: &'static str, value: Option<f64>) -> Self {
        if let Some(n) = value {
            write_number(self.key(key), n);
        }
        self
    }

    /// A unit price: a double rounded to at most 6 decimal places.
    pub(super) fn price(self, key: &'static str, value: Option<f64>) -> Self {
        self.num(key, value.map(round_price))
    }

    /// An ISO 8601 date.
    pub(super) fn date(mut self, key: &'static str, value: Option<&Timestamp>) -> Self {
        if let Some(ts) = value {
            date::write_iso8601_json(self.key(key), ts);
        }
        self
    }

    /// An enum, by its documented spelling (`SHIPPED`); `*_UNSPECIFIED` means
    /// absent.
    pub(super) fn label(mut self, key: &'static str, value: impl Label) -> Self {
        if let Some(label) = value.label() {
            write_str(self.key(key), label);
        }
        self
    }

    /// A list of objects, one per item, each written by `item`; empty
    /// means absent.
    pub(super) fn list<T>(
        mut self,
        key: &'static str,
        items: &[T],
        item: impl Fn(Object, &T) -> Object,
    ) -> Self {
        if items.is_empty() {
            return self;
        }
        self.key(key).push(b'[');
        for (i, t) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.nested(|o| item(o, t));
        }
        self.out.push(b']');
        self
    }

    /// A nested object written by `value`, always written.
    pub(super) fn object(
        mut self,
        key: &'static str,
        value: impl FnOnce(Object) -> Object,
    ) -> Self {
        self.key(key);
        self.nested(value);
        self
    }

    /// Writes the object `value` builds at the end of this one's buffer.
    fn nested(&mut self, value: impl FnOnce(Object) -> Object) {
        let nested = Object::within(std::mem::take(&mut self.out));
        self.out = value(nested).close();
    }

    /// A string or `null`. A set empty string stays `""`: these fields carry
    /// explicit presence, so only unset is `null`.
    pub(super) fn str_or_null(mut self, key: &'static str, value: Option<&str>) -> Self {
        match value {
            Some(s) => {
                write_str(self.key(key), s);
                self
            }
            None => self.null(key),
        }
    }

    /// An integer or `null`.
    pub(super) fn int_or_null(mut self, key: &'static str, value: Option<i64>) -> Self {
        match value {
            Some(n) => {
                write_int(self.key(key), n);
                self
            }
            None => self.null(key),
        }
    }

    /// A double or `null`.
    pub(super) fn num_or_null(mut self, key: &'static str, value: Option<f64>) -> Self {
        match value {
            Some(n) => {
                write_number(self.key(key), n);
                self
            }
            None => self.null(key),
        }
    }

    /// A boolean or `null`.
    pub(super) fn bool_or_null(mut self, key: &'static str, value: Option<bool>) -> Self {
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
    pub(super) fn date_or_null(mut self, key: &'static str, value: Option<&Timestamp>) -> Self {
        match value {
            Some(ts) => {
                date::write_iso8601_json(self.key(key), ts);
                self
            }
            None => self.null(key),
        }
    }

    /// The buffer, with this object closed.
    fn close(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }

    pub(super) fn build(self) -> Json {
        Json(self.close())
    }
}

/// A JSON string, escaped exactly as `serde_json` escapes it.
///
/// `serde_json` escapes only `"`, `\\` and the control characters below
/// U+0020; a string without any (every key, nearly every value) is copied
/// between quotes as it is, which is what `serde_json` writes for it too.
pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escaping(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    serde_json::to_writer(out, s).expect("writing JSON to a Vec cannot fail");
}

/// Whether `s` has a byte `serde_json` escapes: `"`, `\\` or one below
/// 0x20. Eight bytes at a time (a string's every byte is looked at on
/// each delivery): a byte below 0x20 borrows into its own high bit when
/// 0x20 is taken from it, and so does a zero byte, which is what `"` and
/// `\\` become when xored with themselves. Bytes of 0x80 and above (UTF-8
/// sequences) have their high bit set, so `& !x` never counts them.
fn needs_escaping(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let has = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"));
        if below(x, 0x20) | has(x, b'"') | has(x, b'\\') != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// An integer, as `serde_json` writes it (with `itoa`, as it does).
fn write_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
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
