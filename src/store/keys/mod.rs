//! Key and record encodings of the store, in one place.
//!
//! - Events live in the segment log ([`super::log`]): each offset's record
//!   is an `EventRecord` (prost; `event_record.rs`), replaced by a
//!   tombstone when its payload is erased. What a filter looks at is read
//!   from a record without decoding the payload (`event_meta.rs`). The
//!   log's framing and its id index are its own (`log/format.rs`).
//! - sled keeps state only: the state tables ([`super::Table`]; see each
//!   variant), keyed by big-endian offsets ([`offset_key`], which sort in
//!   offset order) and per-endpoint [`scoped_offset_key`]s; their records
//!   are prost messages defined here ([`ConsumerRecord`]) or in `pb`.
//! - [`LEGACY_EVENTS_TREE`] and [`LEGACY_EVENT_IDS_TREE`] name the sled trees
//!   that held events before the segment log; only the migration at open
//!   reads them, moves their events into the log and drops them.

mod event_meta;
pub(super) mod event_record;

use std::time::{SystemTime, UNIX_EPOCH};

pub use event_meta::decode_meta_record;
pub use event_record::{
    decode_event, decode_event_id, decode_tombstone, encode_event_field, encode_published_field,
    is_tombstone, restamped, same_content, split_event_record, tombstone,
};
#[cfg(test)]
pub use event_record::{encode_event_record, EventRecord};

use crate::{
    error::{Error, Result},
    model::Offset,
};

/// The sled tree events were kept in before the segment log (big-endian
/// offset → `EventRecord`); read only by the migration at open.
pub const LEGACY_EVENTS_TREE: &str = "events";
/// The sled tree of event ids before the segment log (id → big-endian
/// offset); dropped by the migration at open.
pub const LEGACY_EVENT_IDS_TREE: &str = "event_ids";

/// An offset as a key: big-endian, so keys sort in offset order.
pub fn offset_key(offset: Offset) -> [u8; 8] {
    offset.to_be_bytes()
}

/// An offset from a key or value.
pub fn decode_offset(bytes: &[u8]) -> Result<Offset> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("offset of {} bytes", bytes.len())))?;
    Ok(Offset::from_be_bytes(arr))
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
mod fuzz;
#[cfg(test)]
mod tests;
