use prost::Message as _;

use super::*;
use crate::{model::NewEvent, pb};

/// The record as it was declared while the store named the event's
/// message type: what it encodes is what older versions wrote, and what
/// this one must still write and read.
#[derive(Clone, PartialEq, prost::Message)]
struct DeclaredRecord {
    #[prost(message, optional, tag = "1")]
    event: Option<pb::Event>,
    #[prost(uint64, tag = "2")]
    published_at_nanos: u64,
}

/// `event` ready to append (its type from its payload, else a custom one).
fn new_event(event: pb::Event) -> NewEvent {
    let event_type = crate::model::event_type_of(event.payload.as_ref())
        .unwrap_or_else(|| crate::store::test_event("x").event_type);
    NewEvent {
        event,
        event_type,
        id_assigned: false,
    }
}

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
    let record = DeclaredRecord {
        event: Some(legacy.clone()),
        published_at_nanos: 1,
    }
    .encode_to_vec();
    let stored = decode_event(&offset_key(Offset::new(7)), &record).unwrap();
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
fn event_record_encodes_as_the_declared_record_always_did() {
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
        let want = DeclaredRecord {
            event: Some(event.clone()),
            published_at_nanos: published,
        }
        .encode_to_vec();
        assert_eq!(
            encode_event_record(&new_event(event.clone()), published),
            want
        );
        // And the record type the store decodes reads it back.
        let read = EventRecord::decode(&want[..]).unwrap();
        assert_eq!(read.published_at_nanos, published);
        assert_eq!(pb::Event::decode(&read.event[..]).unwrap(), event);
    }
    let empty = pb::Event::default();
    let record = encode_event_record(&new_event(event.clone()), 42);
    let (range, published) = split_event_record(&record).unwrap();
    assert_eq!(published, 42);
    assert_eq!(pb::Event::decode(&record[range]).unwrap(), event);
    assert_eq!(
        encode_event_record(&new_event(empty.clone()), 0),
        DeclaredRecord {
            event: Some(empty),
            published_at_nanos: 0,
        }
        .encode_to_vec()
    );
}
