//! Retention in cluster mode: two broker processes on a real 3-node
//! nats-server cluster with a short `retention_age`. The primary purges
//! the stream's old events (neither broker serves them afterwards), and a
//! broker started after the purge copies the log from the stream's new
//! first offset: it is healthy, and serves and streams what is published
//! next.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::time::{Duration, Instant};

use stevedore::pb::{
    self, admin_client::AdminClient, publisher_client::PublisherClient,
    subscriber_client::SubscriberClient, GetEventRequest,
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    cluster_brokers::serving,
    support::{
        connect, nats::NatsCluster, next_within, pick, publish_answer, subscribe_earliest,
        tenants::pick_of,
    },
};

const RETENTION: [(&str, &str); 2] = [
    ("STEVEDORE_RETENTION_AGE", "3s"),
    ("STEVEDORE_RETENTION_INTERVAL", "200ms"),
];

pub(crate) async fn get(
    channel: &Channel,
    offset: u64,
) -> Result<pb::GetEventResponse, tonic::Status> {
    SubscriberClient::new(channel.clone())
        .get_event(GetEventRequest {
            offset,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_retention_purges_old_events_and_a_later_broker_copies_from_there() {
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = cluster.start_broker(dir.path(), 1, "ret", &RETENTION).await;
    let b = cluster.start_broker(dir.path(), 2, "ret", &RETENTION).await;
    let (_a, _b) = (
        a.unwrap_or_else(|e| panic!("broker A: {e}")),
        b.unwrap_or_else(|e| panic!("broker B: {e}")),
    );
    let ca = connect(&_a.addr).await.unwrap();
    let cb = connect(&_b.addr).await.unwrap();
    let mut publisher = PublisherClient::new(ca.clone());
    for i in 1..=5 {
        let id = format!("old-{i}");
        // old-3 is tenant t1's, erased before retention comes to it.
        let event = match i {
            3 => pb::Event {
                id: id.clone(),
                ..pick_of("t1", "SO-t1")
            },
            _ => pick(&id, "SO-1"),
        };
        let r = publish_answer(&mut publisher, event).await;
        assert_eq!(r.offset, i);
    }
    AdminClient::new(ca.clone())
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "t1".into(),
        })
        .await
        .expect("EraseTenant t1");
    get(&cb, 5).await.expect("served before retention");

    // Older than three seconds: gone from the stream, for both brokers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(&ca, 5).await {
            Err(s) if s.code() == Code::NotFound => break,
            other => assert!(Instant::now() < deadline, "offset 5: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for offset in 1..=5 {
        let status = get(&cb, offset).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "offset {offset}: {status:?}");
    }
    // Erasing old-3 kept its id claimed with a copy of its tombstone on
    // its subject, at offset 6; retention takes that too once it is old
    // enough.
    let stream = async_nats::jetstream::new(cluster.connect().await)
        .get_stream("RET_EVENTS")
        .await
        .expect("the stream");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = stream.get_info().await.expect("stream info").state;
        if state.first_sequence > 6 && state.messages == 0 {
            assert_eq!(state.last_sequence, 6, "the tombstone's copy took offset 6");
            break;
        }
        assert!(Instant::now() < deadline, "still in the stream: {state:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broker started now copies from offset 7 on.
    let c = cluster
        .start_broker(dir.path(), 3, "ret", &RETENTION)
        .await
        .unwrap_or_else(|e| panic!("broker C: {e}"));
    let cc = connect(&c.addr).await.unwrap();
    let r = publish_answer(&mut publisher, pick("new-7", "SO-1")).await;
    assert_eq!((r.offset, r.duplicate), (7, false));
    // The purged events' ids are forgotten with them, as the embedded log
    // forgets its ids at retention: published again, they are stored anew
    // (the erased one too, whose tombstone went with it). A live event's
    // id stays claimed.
    for (id, offset) in [("old-1", 8), ("old-3", 9)] {
        let r = publish_answer(&mut publisher, pick(id, "SO-1")).await;
        assert_eq!((r.offset, r.duplicate), (offset, false), "{id}");
    }
    let r = publish_answer(&mut publisher, pick("new-7", "SO-1")).await;
    assert_eq!((r.offset, r.duplicate), (7, true));
    let mut from_start = subscribe_earliest(&mut SubscriberClient::new(cc.clone())).await;
    assert_eq!(next_within(&mut from_start, 10).await.offset, 7);

    assert_eq!(
        serving(&HealthClient::new(cc.clone())).await,
        ServingStatus::Serving,
        "broker C's copy is not stuck"
    );
}
