//! Webhook bodies: one event → the exact JSON a receiver gets.
//!
//! [`render_body`] is the single dispatch point; each event type's shape lives
//! in its own file as a straight list of keys in the order the source
//! documents show them (`serde_json`'s `preserve_order` keeps insertion
//! order). The shapers share the small helpers below: an `Object` builder
//! that leaves absent values out (WMS shapes) or writes `null` for them
//! (the channel-inventory shape), the ISO 8601 date formatter and the number
//! helpers.
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
    pub(super) fn new() -> Self {
        let mut out = Vec::with_capacity(256);
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
pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
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

const SECONDS_PER_DAY: i64 = 86_400;
const NANOS_PER_SECOND: i32 = 1_000_000_000;

/// A timestamp as ISO 8601 UTC: `2026-02-02T10:30:00Z`, with 3, 6 or 9
/// sub-second digits when it has them (`2026-02-04T14:32:15.123Z`).
pub fn iso8601(ts: &Timestamp) -> String {
    // Normalise out-of-range nanos (validation rejects them; be total anyway).
    // Saturating: `seconds` near i64::MAX would overflow (found by fuzzing).
    let seconds = ts
        .seconds
        .saturating_add(i64::from(ts.nanos.div_euclid(NANOS_PER_SECOND)));
    let nanos = ts.nanos.rem_euclid(NANOS_PER_SECOND);

    let (year, month, day) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    );
    let mut out = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if nanos != 0 {
        let (fraction, digits) = if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000, 3)
        } else if nanos % 1_000 == 0 {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        out.push_str(&format!(".{fraction:0digits$}"));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01: Howard Hinnant's `civil_from_days`, in 400-year eras of
/// 146 097 days, with years starting on March 1 so the leap day is last.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year, [0, 365]
    let mp = (5 * doy + 2) / 153; // March-based month, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// The inverse of [`civil_from_days`] (Hinnant's `days_from_civil`).
#[cfg(test)]
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400); // [0, 399]
    let mp = if month > 2 { month - 3 } else { month + 9 }; // [0, 11]
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> String {
        let mut out = Vec::new();
        write_number(&mut out, n);
        String::from_utf8(out).unwrap()
    }

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    fn days(year: i64, month: u32, day: u32) -> i64 {
        days_from_civil(year, month, day)
    }

    #[test]
    fn civil_dates_of_known_days() {
        for (d, civil) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (59, (1970, 3, 1)),
            (10_957, (2000, 1, 1)),
            (11_016, (2000, 2, 29)), // 2000 is a leap year (divisible by 400)
            (11_017, (2000, 3, 1)),
            (47_540, (2100, 2, 28)), // 2100 is not (divisible by 100)
            (47_541, (2100, 3, 1)),
            (19_416, (2023, 2, 28)),
            (19_417, (2023, 3, 1)),
            (19_782, (2024, 2, 29)),
            (-719_162, (1, 1, 1)),
            (2_932_896, (9999, 12, 31)),
        ] {
            assert_eq!(civil_from_days(d), civil, "day {d}");
            assert_eq!(days(civil.0, civil.1, civil.2), d, "{civil:?}");
        }
    }

    #[test]
    fn every_day_from_0001_to_9999_round_trips_and_advances_by_one() {
        let (first, last) = (days(1, 1, 1), days(9999, 12, 31));
        let mut prev = civil_from_days(first - 1);
        assert_eq!(prev, (0, 12, 31));
        for d in first..=last {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days(y, m, day), d);
            let next_of_prev = if prev.2 < month_len(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, day), next_of_prev);
            prev = (y, m, day);
        }
        assert_eq!(prev, (9999, 12, 31));
    }

    fn month_len(y: i64, m: u32) -> u32 {
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    #[test]
    fn iso8601_whole_seconds() {
        assert_eq!(iso8601(&ts(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(&ts(1_770_028_200, 0)), "2026-02-02T10:30:00Z");
        assert_eq!(iso8601(&ts(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(&ts(4_107_542_399, 0)), "2100-02-28T23:59:59Z");
        assert_eq!(iso8601(&ts(4_107_542_400, 0)), "2100-03-01T00:00:00Z");
        assert_eq!(iso8601(&ts(-1, 0)), "1969-12-31T23:59:59Z");
        // The range convert.rs accepts.
        assert_eq!(iso8601(&ts(-62_135_596_800, 0)), "0001-01-01T00:00:00Z");
        assert_eq!(
            iso8601(&ts(253_402_300_799, 999_999_999)),
            "9999-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn iso8601_sub_seconds_in_groups_of_three() {
        let t = 1_770_215_535; // 2026-02-04T14:32:15Z
        assert_eq!(iso8601(&ts(t, 0)), "2026-02-04T14:32:15Z");
        assert_eq!(iso8601(&ts(t, 123_000_000)), "2026-02-04T14:32:15.123Z");
        assert_eq!(iso8601(&ts(t, 100_000_000)), "2026-02-04T14:32:15.100Z");
        assert_eq!(iso8601(&ts(t, 1_000_000)), "2026-02-04T14:32:15.001Z");
        assert_eq!(iso8601(&ts(t, 123_456_000)), "2026-02-04T14:32:15.123456Z");
        assert_eq!(iso8601(&ts(t, 1_000)), "2026-02-04T14:32:15.000001Z");
        assert_eq!(
            iso8601(&ts(t, 123_456_789)),
            "2026-02-04T14:32:15.123456789Z"
        );
        assert_eq!(iso8601(&ts(t, 1)), "2026-02-04T14:32:15.000000001Z");
        // Before the epoch the fraction still counts forward from the second.
        assert_eq!(iso8601(&ts(-1, 500_000_000)), "1969-12-31T23:59:59.500Z");
    }

    #[test]
    fn numbers() {
        assert_eq!(number(5.0).to_string(), "5");
        assert_eq!(number(95.0).to_string(), "95");
        assert_eq!(number(-3.0).to_string(), "-3");
        assert_eq!(number(-0.0).to_string(), "0");
        assert_eq!(number(25.5).to_string(), "25.5");
        assert_eq!(number(0.1).to_string(), "0.1");
        assert_eq!(number(1e20).to_string(), "1e+20");
        assert_eq!(number(f64::NAN), "null");
    }

    #[test]
    fn prices_keep_at_most_six_decimals() {
        for (p, want) in [
            (29.99, "29.99"),
            (29.999999, "29.999999"),
            (1.23456789, "1.234568"),
            (0.0000004, "0"),
            (0.0078125, "0.007812"), // 1/128: an exact tie, to even
            (0.0234375, "0.023438"),
            // serde_json writes very small magnitudes with an exponent.
            (0.0000006, "1e-6"),
            // 0.0000005 is stored just below the tie, so it rounds down.
            (0.0000005, "0"),
            (-1.23456789, "-1.234568"),
            (12.0, "12"),
            (123_456_789.123_456_7, "123456789.123457"),
            (1e300, "1e+300"),
        ] {
            assert_eq!(number(round_price(p)), want, "{p}");
        }
    }

    #[test]
    fn object_omits_absent_values() {
        let v = Object::new()
            .str("a", "")
            .str("b", "x")
            .int("c", None::<i32>)
            .int("d", Some(0_i64))
            .num("e", None)
            .num("f", Some(0.0))
            .date("g", None)
            .label("h", pb::PickStatus::Unspecified)
            .label("i", pb::PickStatus::Short)
            .list("j", vec![])
            .build();
        assert_eq!(v.to_string(), r#"{"b":"x","d":0,"f":0,"i":"SHORT"}"#);
    }

    #[test]
    fn object_or_null_keeps_every_key_in_order() {
        let v = Object::new()
            .str_or_null("z", None)
            .str_or_null("y", Some(""))
            .int_or_null("x", None)
            .num_or_null("w", Some(1.5))
            .bool_or_null("v", Some(false))
            .date_or_null("u", None)
            .object("t", Object::new())
            .build();
        assert_eq!(
            v.to_string(),
            r#"{"z":null,"y":"","x":null,"w":1.5,"v":false,"u":null,"t":{}}"#
        );
    }

    /// Every value of every enum: the label is the proto name without the
    /// prefix, and only 0 (`UNSPECIFIED`) is absent.
    #[test]
    fn enum_labels_strip_their_prefix() {
        fn check<E: Label + TryFrom<i32>>() {
            let values: Vec<E> = (0..).map_while(|i| E::try_from(i).ok()).collect();
            assert!(values.len() > 1, "{}", E::PREFIX);
            for (i, value) in values.into_iter().enumerate() {
                let name = value.proto_name();
                assert!(name.starts_with(E::PREFIX), "{name} lacks {}", E::PREFIX);
                let want = (i > 0).then(|| &name[E::PREFIX.len()..]);
                assert_eq!(value.label(), want, "{name}");
            }
        }
        check::<pb::TrackingStatus>();
        check::<pb::ShipmentStatus>();
        check::<pb::SignatureRequired>();
        check::<pb::PickStatus>();
        check::<pb::InventoryReason>();
        check::<pb::OrderStatus>();
        check::<pb::ReturnCondition>();
        check::<pb::ReturnDisposition>();
        assert_eq!(pb::TrackingStatus::Shipped.label(), Some("SHIPPED"));
        assert_eq!(pb::PickStatus::Short.label(), Some("SHORT"));
        assert_eq!(pb::InventoryReason::CycleCount.label(), Some("CYCLE_COUNT"));
        assert_eq!(
            pb::ReturnDisposition::ReturnToVendor.label(),
            Some("RETURN_TO_VENDOR")
        );
    }

    #[test]
    fn missing_payload_is_an_error() {
        let err = render_body(&pb::Event::default()).unwrap_err();
        assert!(matches!(err, RenderError::NoPayload));
    }
}
