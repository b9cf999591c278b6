//! Subscribe responses written around stored events' bytes.
//!
//! A stored record's field 1 is the encoded `stevedore.v1.Event`, and
//! `SubscribeResponse.event` is a length-delimited field too (field 2): a
//! response can be written by copying the stored bytes between its small
//! fields, instead of decoding the event into a prost tree only for tonic to
//! encode it again. The bytes are the ones prost writes for the equivalent
//! `SubscribeResponse` (see the tests), so clients, grpcurl and reflection
//! see the ordinary message; only the server's encode side differs, through
//! [`SubscribeCodec`] (wired to `Subscribe` in build.rs).

use std::ops::Range;

use bytes::{BufMut, Bytes};
use prost::{
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, uint32, uint64},
    Message,
};
use prost_types::Timestamp;
use tonic::{
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
    Status,
};
use tonic_prost::ProstDecoder;

use crate::{
    error::Result,
    model::{EventType, Offset},
    pb::{SubscribeRequest, SubscribeResponse},
    store::{split_event_record, RawRecord},
};

/// `SubscribeResponse` field numbers (proto/stevedore/v1/subscriber.proto).
const OFFSET: u32 = 1;
const EVENT: u32 = 2;
const PUBLISHED_AT: u32 = 3;
const DELIVERY_ATTEMPT: u32 = 4;
const EVENT_TYPE: u32 = 5;

/// One `SubscribeResponse` as the server writes it.
#[derive(Debug, Clone)]
pub enum SubscribeFrame {
    /// Around a stored event's bytes (replay and tail).
    Stored(StoredFrame),
    /// A response built from a decoded event (durable consumers, whose
    /// deliveries come decoded).
    Decoded(Box<SubscribeResponse>),
}

/// A `SubscribeResponse` whose event is still the stored bytes.
#[derive(Debug, Clone)]
pub struct StoredFrame {
    offset: Offset,
    event_type: EventType,
    published_at_nanos: u64,
    delivery_attempt: u32,
    /// The stored record; `event` is the encoded `Event` within it.
    record: Bytes,
    event: Range<usize>,
}

impl StoredFrame {
    /// The response for a record read with `Store::read_records`, whose
    /// type the caller has already read (`decode_meta_record`).
    pub fn new(raw: RawRecord, event_type: EventType, delivery_attempt: u32) -> Result<Self> {
        let (event, published_at_nanos) = split_event_record(&raw.record)?;
        Ok(Self {
            offset: raw.offset,
            event_type,
            published_at_nanos,
            delivery_attempt,
            record: raw.record,
            event,
        })
    }

    /// As `convert::timestamp` renders the same instant.
    fn published_at(&self) -> Timestamp {
        Timestamp {
            seconds: (self.published_at_nanos / 1_000_000_000) as i64,
            nanos: (self.published_at_nanos % 1_000_000_000) as i32,
        }
    }

    fn event_bytes(&self) -> &[u8] {
        &self.record[self.event.clone()]
    }

    /// Encoded size, as `SubscribeResponse::encoded_len` counts it.
    pub fn encoded_len(&self) -> usize {
        let event = self.event.len();
        let event_type = self.event_type.as_str().len();
        let mut len = key_len(EVENT) + encoded_len_varint(event as u64) + event;
        len += message::encoded_len(PUBLISHED_AT, &self.published_at());
        if self.offset != Offset::ZERO {
            len += uint64::encoded_len(OFFSET, &self.offset.get());
        }
        if self.delivery_attempt != 0 {
            len += uint32::encoded_len(DELIVERY_ATTEMPT, &self.delivery_attempt);
        }
        if event_type != 0 {
            len += key_len(EVENT_TYPE) + encoded_len_varint(event_type as u64) + event_type;
        }
        len
    }

    /// Writes the fields in tag order, defaults left out, as prost does for
    /// the decoded message (`event` and `published_at` are always set).
    pub fn encode(&self, buf: &mut impl BufMut) {
        use prost::encoding::WireType::LengthDelimited;
        if self.offset != Offset::ZERO {
            uint64::encode(OFFSET, &self.offset.get(), buf);
        }
        let event = self.event_bytes();
        encode_key(EVENT, LengthDelimited, buf);
        encode_varint(event.len() as u64, buf);
        buf.put_slice(event);
        message::encode(PUBLISHED_AT, &self.published_at(), buf);
        if self.delivery_attempt != 0 {
            uint32::encode(DELIVERY_ATTEMPT, &self.delivery_attempt, buf);
        }
        let event_type = self.event_type.as_str();
        if !event_type.is_empty() {
            encode_key(EVENT_TYPE, LengthDelimited, buf);
            encode_varint(event_type.len() as u64, buf);
            buf.put_slice(event_type.as_bytes());
        }
    }
}

impl SubscribeFrame {
    /// Encoded size.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Stored(f) => f.encoded_len(),
            Self::Decoded(m) => m.encoded_len(),
        }
    }

    /// Writes the encoded `SubscribeResponse`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Self::Stored(f) => f.encode(buf),
            Self::Decoded(m) => m.encode_raw(buf),
        }
    }
}

/// `Subscribe`'s codec on the server: [`SubscribeFrame`]s out, requests
/// decoded by prost as usual.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscribeCodec;

impl Codec for SubscribeCodec {
    type Encode = SubscribeFrame;
    type Decode = SubscribeRequest;
    type Encoder = FrameEncoder;
    type Decoder = ProstDecoder<SubscribeRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Writes [`SubscribeFrame`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = SubscribeFrame;
    type Error = Status;

    fn encode(&mut self, item: SubscribeFrame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{
        convert,
        pb::{self, event::Payload},
        store::decode_meta_record,
    };

    /// An encoded `EventRecord` (store/keys.rs), built with prost.
    fn record(event: &pb::Event, published_at_nanos: u64) -> Bytes {
        let mut buf = Vec::new();
        message::encode(1, event, &mut buf);
        if published_at_nanos != 0 {
            uint64::encode(2, &published_at_nanos, &mut buf);
        }
        buf.into()
    }

    fn events() -> Vec<pb::Event> {
        let custom = pb::Event {
            id: "e-2".into(),
            occurred_at: Some(Timestamp {
                seconds: 1_780_000_000,
                nanos: 5,
            }),
            ordering_key: "door-7".into(),
            attributes: [("tenantId".to_owned(), "T1".to_owned())].into(),
            tenant: "T1".into(),
            payload: Some(Payload::Custom(pb::CustomEvent {
                r#type: "dock.door_opened".into(),
                data: None,
            })),
        };
        let typed = pb::Event {
            id: "e-1".into(),
            ordering_key: "SO-1".into(),
            payload: Some(Payload::OrderStatus(pb::OrderStatusChanged {
                sales_order_id: "SO-1".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        // Long enough that the event's length takes a two-byte varint.
        let big = pb::Event {
            id: "x".repeat(300),
            ..typed.clone()
        };
        vec![typed, custom, big]
    }

    /// The decoded path: what `subscribe` sent before splicing.
    fn decoded(offset: Offset, event: &pb::Event, nanos: u64, attempt: u32) -> SubscribeResponse {
        SubscribeResponse {
            offset: offset.get(),
            event: Some(event.clone()),
            published_at: Some(convert::timestamp(UNIX_EPOCH + Duration::from_nanos(nanos))),
            delivery_attempt: attempt,
            event_type: crate::model::event_type_of(event.payload.as_ref())
                .unwrap()
                .to_string(),
        }
    }

    #[test]
    fn spliced_responses_are_the_bytes_prost_writes() {
        for event in events() {
            for nanos in [0, 999_999_999, 1_000_000_000, 1_780_000_000_123_456_789] {
                for (offset, attempt) in [(1, 1), (300_000, 3), (u64::MAX, 0)] {
                    let record = record(&event, nanos);
                    let meta = decode_meta_record(Offset::new(offset), &record).unwrap();
                    let frame = StoredFrame::new(
                        RawRecord {
                            offset: Offset::new(offset),
                            record,
                        },
                        meta.event_type,
                        attempt,
                    )
                    .unwrap();
                    let want = decoded(Offset::new(offset), &event, nanos, attempt);
                    let mut got = Vec::new();
                    frame.encode(&mut got);
                    // At most one attribute, so prost's map order is fixed
                    // and the bytes can be compared too.
                    assert_eq!(got, want.encode_to_vec(), "offset {offset}, {event:?}");
                    assert_eq!(frame.encoded_len(), got.len());
                    assert_eq!(SubscribeResponse::decode(&got[..]).unwrap(), want);
                }
            }
        }
    }

    #[test]
    fn spliced_response_with_many_attributes_decodes_as_the_decoded_path() {
        let mut event = events().remove(1);
        for i in 0..8 {
            event.attributes.insert(format!("k{i}"), format!("v{i}"));
        }
        let record = record(&event, 42);
        let meta = decode_meta_record(Offset::new(7), &record).unwrap();
        let frame = SubscribeFrame::Stored(
            StoredFrame::new(
                RawRecord {
                    offset: Offset::new(7),
                    record,
                },
                meta.event_type,
                1,
            )
            .unwrap(),
        );
        let mut got = Vec::new();
        frame.encode(&mut got);
        assert_eq!(frame.encoded_len(), got.len());
        assert_eq!(
            SubscribeResponse::decode(&got[..]).unwrap(),
            decoded(Offset::new(7), &event, 42, 1)
        );
    }

    #[test]
    fn decoded_frames_encode_as_prost() {
        let want = decoded(Offset::new(9), &events()[0], 17, 2);
        let frame = SubscribeFrame::Decoded(Box::new(want.clone()));
        let mut got = Vec::new();
        frame.encode(&mut got);
        assert_eq!(got, want.encode_to_vec());
        assert_eq!(frame.encoded_len(), got.len());
    }
}
