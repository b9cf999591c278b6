//! Key and record encodings of every tree, in one place.
//!
//! - `events`: big-endian offset → [`EventRecord`] (prost). Big-endian keys
//!   sort in offset order, so range scans read the log in order.
//! - `event_ids`: event id (UTF-8) → big-endian offset.
//! - state tables ([`super::Table`]): see each variant; records are prost
//!   messages defined here or in `pb`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    error::{Error, Result},
    model::{event_type_of, EventMeta, EventType, Offset, StoredEvent, TYPED_EVENT_TYPES},
    pb,
};

/// Tree names.
pub const EVENTS: &str = "events";
/// Tree names.
pub const EVENT_IDS: &str = "event_ids";

/// An offset as a tree key.
pub fn offset_key(offset: Offset) -> [u8; 8] {
    offset.to_be_bytes()
}

/// An offset from a tree key or value.
pub fn decode_offset(bytes: &[u8]) -> Result<Offset> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("offset of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// How an event is stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventRecord {
    /// The event with id, occurred_at and ordering_key filled in.
    #[prost(message, optional, tag = "1")]
    pub event: Option<pb::Event>,
    /// Append time, nanoseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub published_at_nanos: u64,
    /// Set on a tombstone: the event's payload was erased (see
    /// [`tombstone`]); `event` then keeps only its id and tenant.
    #[prost(message, optional, tag = "3")]
    pub erased: Option<ErasedRecord>,
}

/// What a tombstone says about the event it replaced.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErasedRecord {
    /// The event's type (its payload, which named it, is gone).
    #[prost(string, tag = "1")]
    pub event_type: String,
    /// When it was erased, nanoseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub erased_at_nanos: u64,
    /// Why: `erased` (EraseTenant) or `expired` (the tenant's retention).
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// The tombstone that replaces the record at `offset` in the log: the
/// same id (so the id index and a re-publish still find it), the tenant
/// (by the rule of [`decode_meta`], so scoping still applies), the type
/// and the publish time (time-based starts binary-search on it). The
/// payload, attributes, ordering key and `occurred_at` are gone.
pub fn tombstone(
    offset: Offset,
    record: &[u8],
    reason: &str,
    erased_at_nanos: u64,
) -> Result<Vec<u8>> {
    use prost::Message as _;
    let meta = decode_meta_record(offset, record)?;
    let (_, published_at_nanos) = split_event_record(record)?;
    Ok(EventRecord {
        event: Some(pb::Event {
            id: decode_event_id(offset, record)?,
            tenant: meta.tenant,
            ..Default::default()
        }),
        published_at_nanos,
        erased: Some(ErasedRecord {
            event_type: meta.event_type.to_string(),
            erased_at_nanos,
            reason: reason.to_owned(),
        }),
    }
    .encode_to_vec())
}

/// Whether `record` is a tombstone: reads only the record's top-level
/// fields (the event is skipped, not decoded).
pub fn is_tombstone(record: &[u8]) -> Result<bool> {
    Ok(walk_event_record(record)?.erased.is_some())
}

/// A tombstone's id, tenant and account, decoded.
pub fn decode_tombstone(
    offset: Offset,
    record: &[u8],
) -> Result<Option<(String, String, ErasedRecord)>> {
    use prost::Message as _;
    let r = EventRecord::decode(record)
        .map_err(|e| Error::Corrupt(format!("event at offset {offset}: {e}")))?;
    Ok(match (r.event, r.erased) {
        (Some(e), Some(erased)) => Some((e.id, e.tenant, erased)),
        _ => None,
    })
}

/// The [`EventRecord`] bytes of `event`, encoded in place: the same bytes
/// as `EventRecord { event: Some(event.clone()), .. }.encode_to_vec()`
/// without copying the event first.
#[cfg(test)]
pub fn encode_event_record(event: &pb::Event, published_at_nanos: u64) -> Vec<u8> {
    let mut buf = encode_event_field(event);
    encode_published_field(published_at_nanos, &mut buf);
    buf
}

/// The first part of an [`EventRecord`]: the event as field 1.
pub fn encode_event_field(event: &pb::Event) -> Vec<u8> {
    use prost::Message as _;
    let len = event.encoded_len();
    let mut buf = Vec::with_capacity(len + 16);
    prost::encoding::message::encode(1, event, &mut buf);
    buf
}

/// The second part of an [`EventRecord`]: the publish time as field 2
/// (nothing for 0, as prost encodes it).
pub fn encode_published_field(published_at_nanos: u64, buf: &mut Vec<u8>) {
    if published_at_nanos != 0 {
        prost::encoding::uint64::encode(2, &published_at_nanos, buf);
    }
}

/// Whether two stored forms of an event (an [`EventRecord`], or its first
/// part) carry the same content: payload, attributes and ordering key. The
/// id is the same by construction; `occurred_at` is not compared, as it
/// defaults to the publish time and a retry without it differs there.
pub fn same_content(a: &[u8], b: &[u8]) -> Result<bool> {
    use prost::Message as _;
    let event = |bytes: &[u8]| {
        EventRecord::decode(bytes)
            .map(|r| {
                let mut event = r.event.unwrap_or_default();
                crate::model::upgrade_legacy_fields(&mut event);
                event
            })
            .map_err(|e| Error::Corrupt(format!("event record: {e}")))
    };
    let (a, b) = (event(a)?, event(b)?);
    Ok(a.payload == b.payload && a.attributes == b.attributes && a.ordering_key == b.ordering_key)
}

/// Decodes an `events` entry.
pub fn decode_event(key: &[u8], value: &[u8]) -> Result<StoredEvent> {
    let offset = decode_offset(key)?;
    let record: EventRecord = prost::Message::decode(value)
        .map_err(|e| Error::Corrupt(format!("event at offset {offset}: {e}")))?;
    let mut event = record
        .event
        .ok_or_else(|| Error::Corrupt(format!("event at offset {offset}: empty")))?;
    crate::model::upgrade_legacy_fields(&mut event);
    let event_type = event_type_of(event.payload.as_ref())
        .ok_or_else(|| Error::Corrupt(format!("event at offset {offset}: no payload")))?;
    Ok(StoredEvent {
        offset,
        published_at: UNIX_EPOCH + Duration::from_nanos(record.published_at_nanos),
        event_type,
        event,
    })
}

/// What a filter looks at, decoded without the payload's contents: prost
/// skips the fields of the `Empty` payload messages without allocating, so
/// this costs a fraction of [`decode_event`]. Field numbers mirror
/// `EventRecord` and `stevedore.v1.Event`.
#[derive(Clone, PartialEq, prost::Message)]
struct MetaRecord {
    #[prost(message, optional, tag = "1")]
    event: Option<MetaEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetaEvent {
    #[prost(map = "string, string", tag = "4")]
    attributes: std::collections::HashMap<String, String>,
    #[prost(string, tag = "5")]
    tenant: String,
    #[prost(oneof = "MetaPayload", tags = "10, 11, 12, 13, 14, 15, 16")]
    payload: Option<MetaPayload>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum MetaPayload {
    #[prost(message, tag = "10")]
    ShipmentClosed(TenantOnly),
    #[prost(message, tag = "11")]
    PickConfirmed(TenantOnly),
    #[prost(message, tag = "12")]
    InventoryUpdated(TenantOnly),
    #[prost(message, tag = "13")]
    OrderStatus(TenantOnly),
    #[prost(message, tag = "14")]
    ReturnReceived(TenantOnly),
    #[prost(message, tag = "15")]
    ChannelInventoryUpdated(Empty),
    #[prost(message, tag = "16")]
    Custom(MetaCustom),
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Empty {}

/// A WMS payload's `tenant_id` (field 1 in each of them); the rest is
/// skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct TenantOnly {
    #[prost(string, tag = "1")]
    tenant_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetaCustom {
    #[prost(string, tag = "1")]
    r#type: String,
}

/// Decodes an `events` entry's type and attributes only.
pub fn decode_meta(key: &[u8], value: &[u8]) -> Result<EventMeta> {
    let offset = decode_offset(key)?;
    let record: MetaRecord = prost::Message::decode(value)
        .map_err(|e| Error::Corrupt(format!("event at offset {offset}: {e}")))?;
    let event = record
        .event
        .ok_or_else(|| Error::Corrupt(format!("event at offset {offset}: empty")))?;
    let typed = |i: usize| Some(EventType::from_static(TYPED_EVENT_TYPES[i]));
    let (event_type, payload_tenant) = match event.payload {
        Some(MetaPayload::ShipmentClosed(t)) => (typed(0), Some(t)),
        Some(MetaPayload::PickConfirmed(t)) => (typed(1), Some(t)),
        Some(MetaPayload::InventoryUpdated(t)) => (typed(2), Some(t)),
        Some(MetaPayload::OrderStatus(t)) => (typed(3), Some(t)),
        Some(MetaPayload::ReturnReceived(t)) => (typed(4), Some(t)),
        Some(MetaPayload::ChannelInventoryUpdated(_)) => (typed(5), None),
        Some(MetaPayload::Custom(c)) => (Some(EventType::from_stored(c.r#type)), None),
        None => (None, None),
    };
    let event_type = event_type
        .ok_or_else(|| Error::Corrupt(format!("event at offset {offset}: no payload")))?;
    // The rule of `crate::model::event_tenant`: the payload's `tenant_id` when
    // set, else the envelope's.
    let tenant = match payload_tenant {
        Some(t) if !t.tenant_id.is_empty() => t.tenant_id,
        _ => event.tenant,
    };
    Ok(EventMeta {
        event_type,
        attributes: event.attributes,
        tenant,
    })
}

/// The parts of an encoded [`EventRecord`] without decoding the event:
/// the encoded `stevedore.v1.Event` (field 1's bytes) and the publish time
/// (field 2).
pub fn split_event_record(record: &[u8]) -> Result<(std::ops::Range<usize>, u64)> {
    let parts = walk_event_record(record)?;
    let event = parts
        .event
        .ok_or_else(|| Error::Corrupt("event record: no event".into()))?;
    Ok((event, parts.published))
}

/// An encoded [`EventRecord`]'s top-level fields.
struct RecordParts {
    event: Option<std::ops::Range<usize>>,
    published: u64,
    erased: Option<std::ops::Range<usize>>,
}

fn walk_event_record(record: &[u8]) -> Result<RecordParts> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let corrupt = |m: &str| Error::Corrupt(format!("event record: {m}"));
    let mut buf = record;
    let mut event = None;
    let mut erased = None;
    let mut published = 0;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| corrupt(&e.to_string()))?;
        match (tag, wire) {
            (1 | 3, WireType::LengthDelimited) => {
                let len = decode_varint(&mut buf).map_err(|e| corrupt(&e.to_string()))? as usize;
                if len > buf.len() {
                    return Err(corrupt("truncated field"));
                }
                let start = record.len() - buf.len();
                let range = Some(start..start + len);
                if tag == 1 {
                    event = range;
                } else {
                    erased = range;
                }
                buf = &buf[len..];
            }
            (2, WireType::Varint) => {
                published = decode_varint(&mut buf).map_err(|e| corrupt(&e.to_string()))?;
            }
            _ => return Err(corrupt(&format!("unexpected field {tag}"))),
        }
    }
    Ok(RecordParts {
        event,
        published,
        erased,
    })
}

/// [`decode_meta`] for a record whose offset is known.
pub fn decode_meta_record(offset: Offset, record: &[u8]) -> Result<EventMeta> {
    decode_meta(&offset_key(offset), record)
}

#[derive(Clone, PartialEq, prost::Message)]
struct IdRecord {
    #[prost(message, optional, tag = "1")]
    event: Option<IdEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IdEvent {
    #[prost(string, tag = "1")]
    id: String,
}

/// The id of a stored event, decoding nothing else.
pub fn decode_event_id(offset: Offset, record: &[u8]) -> Result<String> {
    let record: IdRecord = prost::Message::decode(record)
        .map_err(|e| Error::Corrupt(format!("event at offset {offset}: {e}")))?;
    record
        .event
        .map(|e| e.id)
        .ok_or_else(|| Error::Corrupt(format!("event at offset {offset}: empty")))
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// A durable consumer's persisted state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConsumerRecord {
    /// Every offset below this is done (acked or filtered out).
    #[prost(uint64, tag = "1")]
    pub floor: u64,
    /// The event-type filter the consumer was created with.
    #[prost(string, repeated, tag = "2")]
    pub event_types: Vec<String>,
    /// Done offsets above the floor, as half-open ranges flattened to
    /// `[start0, end0, start1, end1, ...]`.
    #[prost(uint64, repeated, tag = "3")]
    pub done_ranges: Vec<u64>,
    /// Offsets below the floor handed back for redelivery (RetryDelivery).
    #[prost(uint64, repeated, tag = "4")]
    pub reopened: Vec<u64>,
    /// Deliveries before a message is dead-lettered (0: no limit).
    #[prost(uint32, tag = "5")]
    pub max_deliveries: u32,
    /// Dead-lettered offsets, as half-open ranges like `done_ranges`.
    #[prost(uint64, repeated, tag = "6")]
    pub dead_ranges: Vec<u64>,
    /// The tenant it belongs to (empty: global); only that tenant's
    /// events pass its filter.
    #[prost(string, tag = "7")]
    pub tenant: String,
    /// How it orders messages (0: none, 1: by key, 2: strict); the
    /// consumer's own numbering, not the public enum's.
    #[prost(uint32, tag = "8")]
    pub ordering: u32,
}

/// `prefix`, a 0 byte, then `offset` big-endian: per-endpoint keys that
/// sort by offset.
pub fn scoped_offset_key(prefix: &str, offset: Offset) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 9);
    k.extend_from_slice(prefix.as_bytes());
    k.push(0);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// `prefix`, 0, `offset`, then `n` big-endian.
pub fn scoped_offset_n_key(prefix: &str, offset: Offset, n: u32) -> Vec<u8> {
    let mut k = scoped_offset_key(prefix, offset);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Every key of `prefix` (the scope of [`scoped_offset_key`]).
pub fn scope(prefix: &str) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.push(0);
    k
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// A channel-inventory event written by a version before the wrapper
    /// types (values in the `legacy_*` field numbers) reads back with its
    /// values in the current fields, and renders the same body.
    #[test]
    #[allow(deprecated)]
    fn events_stored_with_the_legacy_field_numbers_read_as_current() {
        use prost::Message as _;
        let legacy = pb::Event {
            id: "old".into(),
            occurred_at: Some(prost_types::Timestamp::default()),
            payload: Some(pb::event::Payload::ChannelInventoryUpdated(
                pb::ChannelInventoryUpdated {
                    variant: Some(pb::Variant {
                        legacy_id: Some(10),
                        legacy_inventory_policy: Some("track".into()),
                        ..Default::default()
                    }),
                    channel_variant: Some(pb::ChannelVariant {
                        legacy_external_sku: Some(String::new()),
                        channel: Some(pb::Channel {
                            legacy_free_shipping_threshold: Some(49.5),
                            legacy_hide_when_no_cost_price: Some(false),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    inventory: Some(pb::Inventory {
                        legacy_available: Some(-3),
                        ..Default::default()
                    }),
                },
            )),
            ..Default::default()
        };
        let record = EventRecord {
            event: Some(legacy.clone()),
            published_at_nanos: 1,
            ..Default::default()
        }
        .encode_to_vec();
        let stored = decode_event(&offset_key(7), &record).unwrap();
        let Some(pb::event::Payload::ChannelInventoryUpdated(c)) = &stored.event.payload else {
            panic!("a channel inventory event")
        };
        let (v, cv, i) = (
            c.variant.as_ref().unwrap(),
            c.channel_variant.as_ref().unwrap(),
            c.inventory.as_ref().unwrap(),
        );
        let ch = cv.channel.as_ref().unwrap();
        assert_eq!(
            (v.id, v.inventory_policy.as_deref()),
            (Some(10), Some("track"))
        );
        assert_eq!(cv.external_sku.as_deref(), Some(""));
        assert_eq!(
            (ch.free_shipping_threshold, ch.hide_when_no_cost_price),
            (Some(49.5), Some(false))
        );
        assert_eq!(i.available, Some(-3));
        assert_eq!(
            (v.legacy_id, i.legacy_available),
            (None, None),
            "moved, not copied"
        );

        // Publishing through the legacy fields stores the current ones.
        let mut published = legacy;
        crate::model::upgrade_legacy_fields(&mut published);
        assert_eq!(published, stored.event);
        // And the body is the same either way.
        let body = crate::webhook::render_body(&stored.event).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["variant"]["id"], 10);
        assert_eq!(
            body["channelVariant"]["channel"]["freeShippingThreshold"],
            49.5
        );
        assert_eq!(body["inventory"]["available"], -3);
    }

    #[test]
    fn event_record_encodes_in_place_as_prost_does() {
        let event = pb::Event {
            id: "e-1".into(),
            ordering_key: "k".into(),
            payload: Some(pb::event::Payload::OrderStatus(pb::OrderStatusChanged {
                sales_order_id: "SO-1".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        for published in [0, 1_780_000_000_123_456_789] {
            let want = EventRecord {
                event: Some(event.clone()),
                published_at_nanos: published,
                ..Default::default()
            }
            .encode_to_vec();
            assert_eq!(encode_event_record(&event, published), want);
        }
        let empty = pb::Event::default();
        let record = encode_event_record(&event, 42);
        let (range, published) = split_event_record(&record).unwrap();
        assert_eq!(published, 42);
        assert_eq!(pb::Event::decode(&record[range]).unwrap(), event);
        assert_eq!(
            encode_event_record(&empty, 0),
            EventRecord {
                event: Some(empty.clone()),
                published_at_nanos: 0,
                ..Default::default()
            }
            .encode_to_vec()
        );
    }
}

/// Property tests of the key encodings and the event-record decoder: a few
/// hundred cases under `cargo test`, more with `PROPTEST_CASES` (`.ci/run`).
#[cfg(test)]
mod fuzz {
    use proptest::{collection::vec, prelude::*, test_runner::Config as ProptestConfig};

    use super::*;

    /// 300 cases unless `PROPTEST_CASES` says otherwise; failures are
    /// reported with the minimal input, not written to the source tree.
    fn config() -> ProptestConfig {
        let mut c = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 300;
        }
        c.failure_persistence = None;
        c
    }

    proptest! {
        #![proptest_config(config())]

        /// Offset keys round-trip and sort like the offsets.
        #[test]
        fn fuzz_offset_keys(a in any::<u64>(), b in any::<u64>(), junk in vec(any::<u8>(), 0..16)) {
            prop_assert_eq!(decode_offset(&offset_key(a)).unwrap(), a);
            prop_assert_eq!(a.cmp(&b), offset_key(a).cmp(&offset_key(b)));
            prop_assert_eq!(decode_offset(&junk).is_ok(), junk.len() == 8);
        }

        /// Scoped keys stay inside their scope, sort by offset within it, and
        /// two scopes never share a key (for NUL-free prefixes, as ids are).
        #[test]
        fn fuzz_scoped_keys(
            p in "[^\u{0}]{0,40}",
            q in "[^\u{0}]{0,40}",
            a in any::<u64>(),
            b in any::<u64>(),
        ) {
            let (ka, kb) = (scoped_offset_key(&p, a), scoped_offset_key(&p, b));
            prop_assert!(ka.starts_with(&scope(&p)));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert_eq!(decode_offset(&ka[ka.len() - 8..]).unwrap(), a);
            if p != q {
                prop_assert!(!scoped_offset_key(&q, b).starts_with(&scope(&p)));
            }
        }

        /// Decoding stored records from arbitrary bytes is an error, not a panic.
        #[test]
        fn fuzz_decode_event_record(key in vec(any::<u8>(), 0..12), value in vec(any::<u8>(), 0..512)) {
            let _ = decode_event(&key, &value);
        }
    }
}
