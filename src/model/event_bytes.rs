//! The event's own protobuf encoding, for the store: the stored record
//! holds the event as these bytes (what Subscribe also forwards to its
//! clients unchanged), so the store frames and splits records without
//! knowing the event's message type. The domain event is the prost
//! message `pb::Event` (see `model.rs`); this is the one place that turns
//! it into bytes and back for storage.

use prost::Message as _;

use super::{upgrade_legacy_fields, NewEvent};
use crate::pb;

impl NewEvent {
    /// Appends the event, encoded, as field `tag` of an enclosing message
    /// (the stored record's field 1).
    pub fn encode_as_field(&self, tag: u32, buf: &mut Vec<u8>) {
        buf.reserve(self.event.encoded_len() + 16);
        prost::encoding::message::encode(tag, &self.event, buf);
    }
}

/// The event encoded in `bytes`, with the fields older versions stored
/// elsewhere moved to where the event has them now.
pub fn decode_event(bytes: &[u8]) -> Result<pb::Event, prost::DecodeError> {
    let mut event = pb::Event::decode(bytes)?;
    upgrade_legacy_fields(&mut event);
    Ok(event)
}

/// What an erased event keeps: its id and tenant, encoded.
pub fn erased_event(id: String, tenant: String) -> Vec<u8> {
    pb::Event {
        id,
        tenant,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Whether two encoded events carry the same content: payload, attributes
/// and ordering key (the id is the same by construction; `occurred_at`
/// defaults to the publish time, so a retry without it differs there).
pub fn same_content(a: &[u8], b: &[u8]) -> Result<bool, prost::DecodeError> {
    let (a, b) = (decode_event(a)?, decode_event(b)?);
    Ok(a.payload == b.payload && a.attributes == b.attributes && a.ordering_key == b.ordering_key)
}
