//! Endpoint records read what earlier versions wrote: those stored the
//! public `Endpoint` message itself inside the record. Records encoded that
//! way (in the clear and sealed) decode into the same endpoint (the one the
//! API's message converts to), and encode back to the old message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::{
    record::StoredRecord,
    stored::{endpoint_from_stored, endpoint_to_stored, StoredEndpoint, StoredStart},
    EndpointRecord,
};
use crate::{
    convert::{self, endpoint::endpoint_from_pb},
    delivery::sealing::{MasterKey, Sealed},
    model::endpoint::Endpoint,
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

/// An endpoint with every field set, the output-only ones too.
fn full(start: pb::endpoint::Start) -> pb::Endpoint {
    pb::Endpoint {
        created_at: Some(ts(1_770_000_000, 1)),
        updated_at: Some(ts(1_770_000_100, 2)),
        disabled_reason: "410 Gone".into(),
        backlog: 3,
        failing_since: Some(ts(1_770_000_050, 3)),
        previous_secret_expires_at: Some(ts(1_770_000_200, 4)),
        ..convert::endpoint::tests::full(start, pb::Ordering::Strict)
    }
}

fn at(seconds: u64, nanos: u32) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// The domain endpoint `old` stores: the API message's conversion, with
/// the output-only fields the broker records.
fn domain(old: &pb::Endpoint) -> Endpoint {
    let mut e = endpoint_from_pb(old.clone()).unwrap();
    e.created_at = at(1_770_000_000, 1);
    e.updated_at = at(1_770_000_100, 2);
    e.failing_since = at(1_770_000_050, 3);
    e.disabled_reason = "410 Gone".into();
    e
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
        let (endpoint, unread) = endpoint_from_stored(stored.clone()).unwrap();
        assert_eq!(endpoint, domain(&old), "{start:?}");
        assert_eq!(stored.encode_to_vec(), bytes, "{start:?}");
        assert!(
            endpoint_to_stored(&endpoint, &unread) == stored,
            "{start:?}"
        );
    }
    let bare = pb::Endpoint {
        id: "ep_2".into(),
        url: "https://h/x".into(),
        ..Default::default()
    };
    let stored = StoredEndpoint::decode(&*bare.encode_to_vec()).unwrap();
    assert_eq!(
        endpoint_from_stored(stored.clone()).unwrap().0,
        endpoint_from_pb(bare.clone()).unwrap()
    );
    assert_eq!(stored.encode_to_vec(), bare.encode_to_vec());
}

/// Stored endpoints were validated before they were written: what the
/// domain cannot hold is damage, named by endpoint and field.
#[test]
fn values_the_domain_cannot_hold_are_corrupt() {
    type Change = fn(&mut StoredEndpoint);
    let cases: [(Change, &str); 4] = [
        (|s| s.ordering = 9, "ordering"),
        (|s| s.timeout.as_mut().unwrap().seconds = -1, "timeout"),
        (|s| s.retry_schedule[0].nanos = -1, "retry_schedule"),
        (
            |s| {
                s.start = Some(StoredStart::Time(super::stored::StoredTime {
                    seconds: 0,
                    nanos: 2_000_000_000,
                }))
            },
            "start_time",
        ),
    ];
    for (change, field) in cases {
        let mut s = StoredEndpoint::decode(&*full(starts()[0]).encode_to_vec()).unwrap();
        change(&mut s);
        let err = endpoint_from_stored(s).unwrap_err();
        assert!(
            matches!(&err, crate::error::Error::Corrupt(m) if m.starts_with(&format!("endpoint ep_01J: {field}: "))),
            "{field}: {err}"
        );
    }
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
    assert!(!EndpointRecord::is_sealed(&bytes));
    let r = EndpointRecord::from_stored(&bytes, None).unwrap();
    assert_eq!(r.endpoint, domain(old.endpoint.as_ref().unwrap()));
    assert_eq!(
        (&r.secret, &r.previous_secret, r.previous_expires_nanos),
        (&old.secret, &old.previous_secret, 99)
    );
    assert!(r.sealed.is_none());
    let want = r.clone();
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
