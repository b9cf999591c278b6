//! How an event is stored: one [`EventRecord`] per offset in the segment
//! log, its tombstone once its payload is erased, and the reads that take
//! a record apart without decoding the event.

use std::time::{Duration, UNIX_EPOCH};

use super::{decode_meta_record, decode_offset};
use crate::{
    error::{Error, Result},
    model::{event_bytes, event_type_of, NewEvent, Offset, StoredEvent},
};

/// How an event is stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventRecord {
    /// The event with id, occurred_at and ordering_key filled in, encoded
    /// ([`event_bytes`]: the store does not look inside).
    #[prost(bytes = "vec", tag = "1")]
    pub event: Vec<u8>,
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
/// (by the rule of [`super::event_meta::decode_meta`], so scoping still applies), the type
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
        event: event_bytes::erased_event(decode_event_id(offset, record)?, meta.tenant),
        published_at_nanos,
        erased: Some(ErasedRecord {
            event_type: meta.event_type.to_string(),
            erased_at_nanos,
            reason: reason.to_owned(),
        }),
    }
    .encode_to_vec())
}

/// `tombstone` with its publish time set to `published_at_nanos`: the copy
/// that cluster mode's erasure publishes at a new offset to keep the id
/// claimed ([`crate::store::jetstream`]), stamped with the erasure's time.
pub fn restamped(tombstone: &[u8], published_at_nanos: u64) -> Result<Vec<u8>> {
    use prost::Message as _;
    let mut r = EventRecord::decode(tombstone)
        .map_err(|e| Error::Corrupt(format!("a tombstone to restamp: {e}")))?;
    r.published_at_nanos = published_at_nanos;
    Ok(r.encode_to_vec())
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
    let corrupt = |e: prost::DecodeError| Error::Corrupt(format!("event at offset {offset}: {e}"));
    let r = EventRecord::decode(record).map_err(corrupt)?;
    Ok(match r.erased {
        Some(erased) => {
            let e = event_bytes::decode_event(&r.event).map_err(corrupt)?;
            Some((e.id, e.tenant, erased))
        }
        None => None,
    })
}

/// The [`EventRecord`] bytes of `event`: its first part
/// ([`encode_event_field`]) and its second ([`encode_published_field`]).
#[cfg(test)]
pub fn encode_event_record(event: &NewEvent, published_at_nanos: u64) -> Vec<u8> {
    let mut buf = encode_event_field(event);
    encode_published_field(published_at_nanos, &mut buf);
    buf
}

/// The first part of an [`EventRecord`]: the event as field 1.
pub fn encode_event_field(event: &NewEvent) -> Vec<u8> {
    let mut buf = Vec::new();
    event.encode_as_field(1, &mut buf);
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
    let ((ea, _), (eb, _)) = (split_event_record(a)?, split_event_record(b)?);
    event_bytes::same_content(&a[ea], &b[eb])
        .map_err(|e| Error::Corrupt(format!("event record: {e}")))
}

/// Decodes the event stored at the offset `key` encodes
/// ([`super::offset_key`]): its [`EventRecord`] bytes from the log.
pub fn decode_event(key: &[u8], value: &[u8]) -> Result<StoredEvent> {
    let offset = decode_offset(key)?;
    let corrupt =
        |e: &dyn std::fmt::Display| Error::Corrupt(format!("event at offset {offset}: {e}"));
    // The event is decoded from the record's bytes in place, not copied out
    // of an `EventRecord` first.
    let parts = walk_event_record(value).map_err(|e| corrupt(&e))?;
    let range = parts
        .event
        .filter(|r| !r.is_empty())
        .ok_or_else(|| corrupt(&"empty"))?;
    let event = event_bytes::decode_event(&value[range]).map_err(|e| corrupt(&e))?;
    let event_type = event_type_of(event.payload.as_ref()).ok_or_else(|| corrupt(&"no payload"))?;
    Ok(StoredEvent {
        offset,
        published_at: UNIX_EPOCH + Duration::from_nanos(parts.published),
        event_type,
        event,
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
