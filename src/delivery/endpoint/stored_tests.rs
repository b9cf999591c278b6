//! Endpoint records read what earlier versions wrote: those stored the
//! public `Endpoint` message itself inside the record. Records encoded that
//! way (in the clear and sealed) decode into the same endpoint, and the
//! stored form encodes back to the old message.

use std::collections::HashMap;

use prost::Message;

use super::{
    record::StoredRecord,
    stored::{endpoint_from_stored, endpoint_to_stored, StoredEndpoint},
    EndpointRecord,
};
use crate::{
    delivery::sealing::{MasterKey, Sealed},
    pb,
};

/// The record as the first versions declared it: the public message at
/// number 1.
#[derive(Clone, PartialEq, prost::Message)]
struct OldRecord {
    #[prost(message, optional, tag = "1")]
    endpoint: Option<pb::Endpoint>,
    #[prost(bytes = "vec", tag = "2")]
    secret: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    previous_secret: Vec<u8>,
    #[prost(uint64, tag = "4")]
    previous_expires_nanos: u64,
    #[prost(message, optional, tag = "5")]
    sealed: Option<Sealed>,
}

fn ts(seconds: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos }
}

fn dur(seconds: i64, nanos: i32) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos }
}

/// An endpoint with every field set (one entry per map, so the encodings
/// can be compared byte for byte).
fn full(start: pb::endpoint::Start) -> pb::Endpoint {
    pb::Endpoint {
        id: "ep_01J".into(),
        url: "https://erp.example/hooks".into(),
        description: "ERP".into(),
        event_types: vec!["pick.confirmed".into(), "order.status".into()],
        attribute_filters: HashMap::from([("fulfillmentCenterId".into(), "FC1".into())]),
        headers: HashMap::from([("X-Api-Key".into(), "k".into())]),
        timeout: Some(dur(7, 5)),
        retry_schedule: vec![dur(0, 0), dur(5, 0), dur(300, 1)],
        max_in_flight: 8,
        ordering: pb::Ordering::Strict as i32,
        enabled: Some(false),
        start: Some(start),
        created_at: Some(ts(1_770_000_000, 1)),
        updated_at: Some(ts(1_770_000_100, 2)),
        disabled_reason: "410 Gone".into(),
        backlog: 3,
        failing_since: Some(ts(1_770_000_050, 3)),
        previous_secret_expires_at: Some(ts(1_770_000_200, 4)),
        coalesce: true,
        filter: "status == \"SHORT\"".into(),
        fields: vec!["lines.product".into()],
        rate_limit: 2.5,
        rate_burst: 4,
        proxy_url: "none".into(),
        client_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
        client_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        envelope: true,
        oauth2: Some(pb::OAuth2 {
            token_url: "https://auth.example/token".into(),
            client_id: "client".into(),
            client_secret: "oauth-secret".into(),
            scopes: vec!["a".into(), "b".into()],
            audience: "erp".into(),
            client_secret_set: true,
        }),
        tenant: "acme".into(),
    }
}

fn starts() -> [pb::endpoint::Start; 4] {
    use pb::endpoint::Start;
    [
        Start::StartEarliest(true),
        Start::StartLatest(true),
        Start::StartOffset(42),
        Start::StartTime(ts(1_769_999_000, 9)),
    ]
}

#[test]
fn old_endpoint_messages_decode_as_the_stored_form_and_encode_back_unchanged() {
    for start in starts() {
        let old = full(start);
        let bytes = old.encode_to_vec();
        let stored = StoredEndpoint::decode(&*bytes).unwrap();
        assert_eq!(endpoint_from_stored(stored.clone()), old);
        assert_eq!(stored.encode_to_vec(), bytes, "{start:?}");
        assert!(endpoint_to_stored(&old) == stored, "{start:?}");
    }
    let bare = pb::Endpoint {
        id: "ep_2".into(),
        url: "https://h/x".into(),
        ..Default::default()
    };
    let stored = StoredEndpoint::decode(&*bare.encode_to_vec()).unwrap();
    assert_eq!(endpoint_from_stored(stored.clone()), bare);
    assert_eq!(stored.encode_to_vec(), bare.encode_to_vec());
}

#[test]
fn records_written_by_earlier_versions_load_in_the_clear_and_sealed() {
    let old = OldRecord {
        endpoint: Some(full(starts()[2])),
        secret: b"current".to_vec(),
        previous_secret: b"previous".to_vec(),
        previous_expires_nanos: 99,
        sealed: None,
    };
    let bytes = old.encode_to_vec();
    let want = EndpointRecord {
        endpoint: old.endpoint.clone(),
        secret: old.secret.clone(),
        previous_secret: old.previous_secret.clone(),
        previous_expires_nanos: 99,
        sealed: None,
    };
    assert!(!EndpointRecord::is_sealed(&bytes));
    let r = EndpointRecord::from_stored(&bytes, None).unwrap();
    assert_eq!(r, want);
    // Written again, it is the old record's bytes (in the clear).
    assert_eq!(r.to_stored(None), bytes);
    assert_eq!(OldRecord::decode(&*r.to_stored(None)).unwrap(), old);

    // Sealed now, it still reads as the old record declared it, with the
    // secrets taken out, and opens to the same record.
    let key = MasterKey::from_bytes([3; 32]);
    let sealed = r.to_stored(Some(&key));
    let as_old = OldRecord::decode(&*sealed).unwrap();
    let e = as_old.endpoint.as_ref().unwrap();
    assert!(as_old.secret.is_empty() && e.headers.is_empty() && e.client_key_pem.is_empty());
    assert_eq!(e.oauth2.as_ref().unwrap().client_secret, "");
    assert_eq!(e.url, "https://erp.example/hooks");
    assert_eq!(
        EndpointRecord::from_stored(&sealed, Some(&key)).unwrap(),
        want
    );
    // And the stored form agrees with the old one on every sealed byte.
    assert_eq!(
        StoredRecord::decode(&*sealed).unwrap().encode_to_vec(),
        sealed
    );
    assert_eq!(as_old.encode_to_vec(), sealed);
}
