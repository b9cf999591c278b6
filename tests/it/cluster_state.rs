//! Typed state buckets (`store::jetstream::State`) on a real 3-node
//! nats-server cluster: endpoint and delivery records written with CAS on
//! their revision, and a watch of the endpoints bucket that reports puts
//! and deletes.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::time::Duration;

use bytes::Bytes;
use stevedore::store::jetstream::{Change, State, StateConfig, Watch, Written};

use crate::support::nats::{patiently, NatsCluster};

/// The next change of `watch`, within a bound.
async fn next(watch: &mut Watch) -> Change {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("a change within 20s")
        .expect("the watch goes on")
        .expect("a change, not an error")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_state_records_are_written_by_cas_and_watched() {
    let cluster = NatsCluster::start().await;
    let config = StateConfig::with_prefix("s1");
    // Two clients, as two brokers: one writes, the other watches.
    let (writer_client, watcher_client) = (cluster.connect().await, cluster.connect().await);
    let writer = patiently(|| State::open(&writer_client, &config))
        .await
        .expect("open");
    let watcher = patiently(|| State::open(&watcher_client, &config))
        .await
        .expect("open again");
    let mut watch = watcher.endpoints.watch().await.expect("watch");

    let eps = &writer.endpoints;
    let id = "ep 1/ä.";
    let Written::Done(r1) = eps.create(id, Bytes::from_static(b"v1")).await.unwrap() else {
        panic!("the first create writes");
    };
    assert_eq!(
        eps.create(id, Bytes::from_static(b"other")).await.unwrap(),
        Written::Conflict
    );
    let Written::Done(r2) = eps.update(id, Bytes::from_static(b"v2"), r1).await.unwrap() else {
        panic!("an update at the current revision writes");
    };
    assert!(r2 > r1);
    assert_eq!(
        eps.update(id, Bytes::from_static(b"stale"), r1)
            .await
            .unwrap(),
        Written::Conflict,
        "an update at a stale revision is refused"
    );
    assert_eq!(eps.delete(id, r1).await.unwrap(), Written::Conflict);
    assert_eq!(eps.delete(id, r2).await.unwrap(), Written::Done(r2));
    assert_eq!(
        eps.update(id, Bytes::from_static(b"late"), r2)
            .await
            .unwrap(),
        Written::Conflict,
        "a deleted record is not updated at its old revision"
    );

    assert_eq!(
        next(&mut watch).await,
        Change::Put {
            id: id.into(),
            value: Bytes::from_static(b"v1"),
            revision: r1
        }
    );
    assert_eq!(
        next(&mut watch).await,
        Change::Put {
            id: id.into(),
            value: Bytes::from_static(b"v2"),
            revision: r2
        }
    );
    assert!(matches!(
        next(&mut watch).await,
        Change::Deleted { id: d, revision } if d == id && revision > r2
    ));

    // Delivery records: their own bucket, the same CAS.
    let dl = &writer.deliveries;
    let Written::Done(d1) = dl
        .create("ep1/7", Bytes::from_static(b"attempt 1"))
        .await
        .unwrap()
    else {
        panic!("create a delivery record");
    };
    let Written::Done(d2) = dl
        .update("ep1/7", Bytes::from_static(b"attempt 2"), d1)
        .await
        .unwrap()
    else {
        panic!("update a delivery record");
    };
    assert_eq!(
        dl.update("ep1/7", Bytes::from_static(b"attempt 2'"), d1)
            .await
            .unwrap(),
        Written::Conflict
    );
    // Read back by the other broker (a replica may lag a moment).
    let mut seen = None;
    for _ in 0..20 {
        seen = watcher.deliveries.get("ep1/7").await.unwrap();
        if seen.as_ref().map(|v| v.revision) == Some(d2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.expect("the record");
    assert_eq!(
        (seen.value.as_ref(), seen.revision),
        (&b"attempt 2"[..], d2)
    );
    assert!(writer.endpoints.get("ep1/7").await.unwrap().is_none());
}
