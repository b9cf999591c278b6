//! Idempotent publish beyond the stream's deduplication window
//! (`store::jetstream::IdempotentLog`) on a real 3-node nats-server
//! cluster: ids claimed in a bucket, confirmed with their offset; stale
//! claims taken over; two publishers racing on the same ids.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::time::Duration;

use stevedore::{
    model::Offset,
    store::jetstream::{
        encode_key, Claim, EventStream, IdempotencyConfig, IdempotentLog, StreamConfig,
    },
};

use crate::{
    cluster_log::new_event,
    support::{
        inventory,
        nats::{jetstream_of, patiently, NatsCluster},
        pick,
    },
};

/// The log of `prefix` with its claims, once the stream has a leader (on a
/// loaded machine the stream is created before it can take publishes).
async fn open(
    cluster: &NatsCluster,
    client: &async_nats::Client,
    prefix: &str,
    stream: StreamConfig,
) -> IdempotentLog {
    let name = stream.stream.clone();
    let log = patiently(|| EventStream::open(client.clone(), stream.clone()))
        .await
        .expect("open the log");
    cluster.stream_leader(client, &name).await;
    let config = IdempotencyConfig {
        stale_after: Duration::from_secs(1),
        ..IdempotencyConfig::with_prefix(prefix)
    };
    patiently(|| IdempotentLog::open(log.clone(), config.clone()))
        .await
        .expect("open the claims")
}

/// What the claims bucket holds for `id`, waiting a moment for `expected`:
/// reads are direct gets any replica answers, and one may lag.
async fn claim_of(
    client: &async_nats::Client,
    bucket: &str,
    id: &str,
    expected: Claim,
) -> Option<Claim> {
    let kv = jetstream_of(client)
        .get_key_value(bucket)
        .await
        .expect("the claims bucket");
    let mut claim = None;
    for _ in 0..20 {
        let value = kv.get(encode_key(id)).await.expect("read the claim");
        claim = value.and_then(|v| Claim::decode(&v));
        if claim.as_ref() == Some(&expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    claim
}

/// Plants a pending claim of an attempt that died before confirming.
async fn plant_dead_claim(client: &async_nats::Client, bucket: &str, id: &str) {
    let kv = jetstream_of(client)
        .get_key_value(bucket)
        .await
        .expect("the claims bucket");
    kv.create(encode_key(id), Claim::Pending("dead".into()).encode())
        .await
        .expect("plant the claim");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_append_answers_the_stored_offset_after_the_dedup_window() {
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let stream = StreamConfig {
        duplicate_window: Duration::from_secs(1),
        ..StreamConfig::with_prefix("i1")
    };
    let ids = open(&cluster, &client, "i1", stream).await;
    let raw = ids.log().clone();

    let x = new_event(pick("x", "SO-1"), "SO-1");
    let a = ids.append(&x).await.expect("append x");
    assert_eq!((a.offset.get(), a.duplicate), (1, false));
    assert_eq!(
        claim_of(&client, "I1_IDS", "x", Claim::Stored(Offset::new(1))).await,
        Some(Claim::Stored(Offset::new(1)))
    );

    // y after x, on the plain log: once the stream forgets y, it forgot x.
    let y = new_event(pick("y", "SO-2"), "SO-2");
    assert_eq!(raw.append(&y).await.unwrap().offset, Offset::new(2));
    let mut forgotten = None;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let again = raw.append(&y).await.expect("append y again");
        if !again.duplicate {
            forgotten = Some(again.offset.get());
            break;
        }
        assert_eq!(again.offset, Offset::new(2));
    }
    assert_eq!(
        forgotten,
        Some(3),
        "the stream's deduplication window never passed"
    );

    // The claims still know x: the stored offset, duplicate, same content.
    let again = ids.append(&x).await.expect("append x again");
    assert_eq!(
        (again.offset.get(), again.duplicate, again.payload_differs),
        (1, true, false)
    );
    let changed = new_event(pick("x", "SO-9"), "SO-9");
    let differs = ids.append(&changed).await.expect("append a changed x");
    assert_eq!(
        (
            differs.offset.get(),
            differs.duplicate,
            differs.payload_differs
        ),
        (1, true, true)
    );
    assert_eq!(raw.head().await.unwrap(), Offset::new(3));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_stale_claims_are_taken_over() {
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let ids = open(&cluster, &client, "i2", StreamConfig::with_prefix("i2")).await;
    let raw = ids.log().clone();

    // A claimer died between claim and publish: the claim goes stale, this
    // append takes it over and writes.
    plant_dead_claim(&client, "I2_IDS", "a").await;
    let a = ids
        .append(&new_event(pick("a", "SO-1"), "SO-1"))
        .await
        .expect("append a");
    assert_eq!((a.offset.get(), a.duplicate), (1, false));
    assert_eq!(
        claim_of(&client, "I2_IDS", "a", Claim::Stored(Offset::new(1))).await,
        Some(Claim::Stored(Offset::new(1)))
    );

    // A claimer died between publish and confirm: the taker's publish is
    // deduplicated by the stream, so the id keeps its one offset.
    let b = new_event(inventory("b", "SKU 1", 2.0), "SKU 1");
    assert_eq!(raw.append(&b).await.unwrap().offset, Offset::new(2));
    plant_dead_claim(&client, "I2_IDS", "b").await;
    let again = ids.append(&b).await.expect("append b");
    assert_eq!((again.offset.get(), again.duplicate), (2, true));
    assert_eq!(
        claim_of(&client, "I2_IDS", "b", Claim::Stored(Offset::new(2))).await,
        Some(Claim::Stored(Offset::new(2)))
    );
    assert_eq!(raw.head().await.unwrap(), Offset::new(2));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_two_publishers_racing_get_one_offset_per_id() {
    const IDS: usize = 40;
    let cluster = NatsCluster::start().await;
    // Two clients, as two brokers.
    let (c1, c2) = (cluster.connect().await, cluster.connect().await);
    let one = open(&cluster, &c1, "i3", StreamConfig::with_prefix("i3")).await;
    let two = open(&cluster, &c2, "i3", StreamConfig::with_prefix("i3")).await;
    let events: Vec<_> = (0..IDS)
        .map(|i| new_event(pick(&format!("race-{i}"), "SO-1"), &format!("SO-{i}")))
        .collect();

    let run = |log: IdempotentLog, events: Vec<_>| {
        tokio::spawn(async move {
            let all = events.iter().map(|e| log.append(e));
            futures::future::join_all(all).await
        })
    };
    let (a, b) = tokio::join!(run(one.clone(), events.clone()), run(two, events));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut offsets = Vec::new();
    for (i, (a, b)) in a.into_iter().zip(b).enumerate() {
        let (a, b) = (a.expect("broker one"), b.expect("broker two"));
        assert_eq!(a.offset, b.offset, "id race-{i}");
        assert!(a.duplicate != b.duplicate, "id race-{i}: {a:?} {b:?}");
        assert!(!a.payload_differs && !b.payload_differs);
        offsets.push(a.offset.get());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=IDS as u64).collect::<Vec<_>>());
    assert_eq!(one.log().head().await.unwrap(), Offset::new(IDS as u64));
}
