//! The stored records read what earlier versions wrote: the public
//! `Delivery`, `Attempt` and `AuditRecord` messages, encoded as they were
//! stored, decode as the store's own records with every field, and the
//! records encode back to the same bytes.

use std::time::{Duration, UNIX_EPOCH};

use prost::Message;

use super::{StoredAttempt, StoredAudit, StoredDelivery};
use crate::{
    model::{
        audit::AuditRecord,
        delivery::{AttemptRecord, DeliveryRecord, DeliveryState},
        EndpointId, EventId, Offset,
    },
    pb,
};

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

/// A delivery as earlier versions stored it: every stored field set, the
/// key fields (endpoint id, offset) and the derived `webhook_id` empty.
fn old_delivery(state: pb::DeliveryState) -> pb::Delivery {
    pb::Delivery {
        event_id: "ev-1".into(),
        event_type: "pick.confirmed".into(),
        state: state as i32,
        attempts: 3,
        next_attempt_at: ts(1_770_000_300, 5),
        last_attempt_at: ts(1_770_000_000, 123_456_789),
        last_status: 503,
        last_error: "HTTP 503 Service Unavailable".into(),
        superseded_by: 42,
        ..Default::default()
    }
}

#[test]
fn old_delivery_messages_decode_as_records_and_encode_back_unchanged() {
    let states = [
        (pb::DeliveryState::Pending, DeliveryState::Pending),
        (pb::DeliveryState::Delivered, DeliveryState::Delivered),
        (pb::DeliveryState::Failed, DeliveryState::Failed),
        (pb::DeliveryState::Dead, DeliveryState::Dead),
        (pb::DeliveryState::Superseded, DeliveryState::Superseded),
    ];
    for (old_state, state) in states {
        let old = old_delivery(old_state);
        let bytes = old.encode_to_vec();
        let stored = StoredDelivery::decode(&*bytes).unwrap();
        let record = stored.into_record(&EndpointId::new("ep1"), Offset::new(7));
        assert_eq!(
            record,
            DeliveryRecord {
                endpoint_id: EndpointId::new("ep1"),
                offset: Offset::new(7),
                event_id: EventId::new("ev-1"),
                event_type: "pick.confirmed".into(),
                state,
                attempts: 3,
                next_attempt_at: Some(UNIX_EPOCH + Duration::new(1_770_000_300, 5)),
                last_attempt_at: Some(UNIX_EPOCH + Duration::new(1_770_000_000, 123_456_789)),
                last_status: 503,
                last_error: "HTTP 503 Service Unavailable".into(),
                superseded_by: Offset::new(42),
            }
        );
        let again = StoredDelivery::from_record(&record).encode_to_vec();
        assert_eq!(again, bytes, "{old_state:?}: same bytes as the old message");
        assert_eq!(pb::Delivery::decode(&*again).unwrap(), old);
    }
}

#[test]
fn sparse_and_unknown_old_deliveries_decode() {
    // What retention writes: no attempt, no times.
    let old = pb::Delivery {
        event_id: "ev-2".into(),
        event_type: "order.status".into(),
        state: pb::DeliveryState::Dead as i32,
        last_error: "expired".into(),
        ..Default::default()
    };
    let bytes = old.encode_to_vec();
    let record = StoredDelivery::decode(&*bytes)
        .unwrap()
        .into_record(&EndpointId::new("ep"), Offset::new(1));
    assert_eq!(record.state, DeliveryState::Dead);
    assert_eq!(
        (record.next_attempt_at, record.last_attempt_at),
        (None, None)
    );
    assert_eq!(StoredDelivery::from_record(&record).encode_to_vec(), bytes);
    // Key and derived fields, had any version stored them, are ignored; an
    // unknown state reads as unspecified, as the old enum read it.
    let odd = pb::Delivery {
        endpoint_id: "other".into(),
        offset: 99,
        webhook_id: "msg_x".into(),
        state: 77,
        ..old
    };
    let record = StoredDelivery::decode(&*odd.encode_to_vec())
        .unwrap()
        .into_record(&EndpointId::new("ep"), Offset::new(1));
    assert_eq!(
        (record.endpoint_id.as_str(), record.offset.get()),
        ("ep", 1)
    );
    assert_eq!(record.state, DeliveryState::Unspecified);
}

#[test]
fn old_attempt_messages_decode_as_records_and_encode_back_unchanged() {
    let old = pb::Attempt {
        attempt: 4,
        started_at: ts(1_770_000_000, 999_999_999),
        latency: Some(prost_types::Duration {
            seconds: 2,
            nanos: 500_000_000,
        }),
        status: 0,
        error: "connection refused".into(),
        response_body: "{\"ok\":false}".into(),
    };
    let bytes = old.encode_to_vec();
    let record = StoredAttempt::decode(&*bytes).unwrap().into_record();
    assert_eq!(
        record,
        AttemptRecord {
            attempt: 4,
            started_at: Some(UNIX_EPOCH + Duration::new(1_770_000_000, 999_999_999)),
            latency: Some(Duration::from_millis(2_500)),
            status: 0,
            error: "connection refused".into(),
            response_body: "{\"ok\":false}".into(),
        }
    );
    let again = StoredAttempt::from_record(&record).encode_to_vec();
    assert_eq!(again, bytes);
    assert_eq!(pb::Attempt::decode(&*again).unwrap(), old);
    // An attempt with nothing but its number (the shortest ever written).
    let bare = pb::Attempt {
        attempt: 1,
        ..Default::default()
    };
    let record = StoredAttempt::decode(&*bare.encode_to_vec())
        .unwrap()
        .into_record();
    assert_eq!(
        StoredAttempt::from_record(&record).encode_to_vec(),
        bare.encode_to_vec()
    );
}

#[test]
fn old_audit_messages_decode_as_records_and_encode_back_unchanged() {
    let old = pb::AuditRecord {
        id: "01JABCDEF".into(),
        at: ts(1_770_000_000, 7),
        token: "ops".into(),
        tenant: "acme".into(),
        action: "endpoint.create".into(),
        target: "ep_1".into(),
        target_tenant: "acme".into(),
    };
    let bytes = old.encode_to_vec();
    let record = StoredAudit::decode(&*bytes).unwrap().into_record();
    assert_eq!(
        record,
        AuditRecord {
            id: "01JABCDEF".into(),
            at: Some(UNIX_EPOCH + Duration::new(1_770_000_000, 7)),
            token: "ops".into(),
            tenant: "acme".into(),
            action: "endpoint.create".into(),
            target: "ep_1".into(),
            target_tenant: "acme".into(),
        }
    );
    let again = StoredAudit::from_record(&record).encode_to_vec();
    assert_eq!(again, bytes);
    assert_eq!(pb::AuditRecord::decode(&*again).unwrap(), old);
}
