//! What an event filter looks at (type, attributes, tenant), read from a
//! stored [`super::event_record::EventRecord`] without decoding the payload.

use super::{decode_offset, offset_key};
use crate::{
    error::{Error, Result},
    model::{EventMeta, EventType, Offset, TYPED_EVENT_TYPES},
};

/// What a filter looks at, decoded without the payload's contents: prost
/// skips the fields of the `Empty` payload messages without allocating, so
/// this costs a fraction of [`super::decode_event`]. Field numbers mirror
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

/// Decodes the type, attributes and tenant of the event stored at the
/// offset `key` encodes ([`offset_key`]).
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

/// [`decode_meta`] for a record whose offset is known.
pub fn decode_meta_record(offset: Offset, record: &[u8]) -> Result<EventMeta> {
    decode_meta(&offset_key(offset), record)
}
