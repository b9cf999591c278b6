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
        nats::{jetstream_of, leader_claim, patiently, NatsCluster},
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
        leader_claim(&client, "I1_IDS", "x").await,
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
        leader_claim(&client, "I2_IDS", "a").await,
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
        leader_claim(&client, "I2_IDS", "b").await,
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

/// A batch's claims are read with one direct get and written as one
/// atomic batch of creates: every new id is claimed at its offset, so a
/// later batch of the same ids, after the stream's deduplication window,
/// answers the stored offsets; an id whose claim was deleted (retention
/// forgets purged ids) is written anew and claimed again over the delete
/// marker, still in one batch.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_batches_claim_their_ids_in_one_batch() {
    const N: u64 = 20;
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let stream = StreamConfig {
        duplicate_window: Duration::from_secs(1),
        ..StreamConfig::with_prefix("i4")
    };
    let ids = open(&cluster, &client, "i4", stream).await;
    let raw = ids.log().clone();
    let batch = |names: &[String]| -> Vec<_> {
        names
            .iter()
            .map(|id| new_event(pick(id, "SO-1"), "SO-1"))
            .collect()
    };
    let first: Vec<String> = (0..N).map(|i| format!("b-{i}")).collect();
    let appended = ids.append_batch(&batch(&first)).await.expect("the batch");
    let offsets: Vec<_> = appended
        .iter()
        .map(|a| (a.offset.get(), a.duplicate))
        .collect();
    assert_eq!(offsets, (1..=N).map(|o| (o, false)).collect::<Vec<_>>());
    for (i, id) in first.iter().enumerate() {
        let want = Claim::Stored(Offset::new(i as u64 + 1));
        assert_eq!(leader_claim(&client, "I4_IDS", id).await, Some(want));
    }
    assert_eq!(ids.claim_batches_refused(), 0, "the claims went one by one");

    // Past the window: the stream no longer knows the ids, the claims do.
    let probe = new_event(pick("probe", "SO-2"), "SO-2");
    assert_eq!(raw.append(&probe).await.unwrap().offset, Offset::new(N + 1));
    let mut forgotten = false;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !raw.append(&probe).await.expect("probe again").duplicate {
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "the stream's deduplication window never passed");
    let head = raw.head().await.unwrap().get();

    // b-3's claim deleted, as retention does.
    jetstream_of(&client)
        .get_key_value("I4_IDS")
        .await
        .expect("the claims bucket")
        .delete(encode_key("b-3"))
        .await
        .expect("delete b-3's claim");
    let mut again = first.clone();
    again.extend((0..3).map(|i| format!("n-{i}")));
    let answered = ids.append_batch(&batch(&again)).await.expect("again");
    for (i, a) in answered.iter().enumerate().take(N as usize) {
        if i == 3 {
            assert_eq!((a.offset.get(), a.duplicate), (head + 1, false), "b-3");
        } else {
            assert_eq!((a.offset.get(), a.duplicate), (i as u64 + 1, true), "b-{i}");
        }
    }
    let new: Vec<_> = answered[N as usize..]
        .iter()
        .map(|a| (a.offset.get(), a.duplicate))
        .collect();
    assert_eq!(
        new,
        (head + 2..=head + 4)
            .map(|o| (o, false))
            .collect::<Vec<_>>()
    );
    for (id, offset) in [("b-3", head + 1), ("n-0", head + 2), ("n-2", head + 4)] {
        let want = Claim::Stored(Offset::new(offset));
        assert_eq!(
            leader_claim(&client, "I4_IDS", id).await,
            Some(want),
            "{id}"
        );
    }
    assert_eq!(ids.claim_batches_refused(), 0, "the claims went one by one");
    assert_eq!(raw.head().await.unwrap(), Offset::new(head + 4));
}

/// Two brokers appending batches of the same ids at once: one offset per
/// id, one `duplicate = false` per id, and every id claimed at it, whether
/// a batch of claims went through or lost the race and went one by one.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_batches_racing_get_one_offset_per_id() {
    const IDS: usize = 200;
    let cluster = NatsCluster::start().await;
    let (c1, c2) = (cluster.connect().await, cluster.connect().await);
    let one = open(&cluster, &c1, "i5", StreamConfig::with_prefix("i5")).await;
    let two = open(&cluster, &c2, "i5", StreamConfig::with_prefix("i5")).await;
    let events: Vec<_> = (0..IDS)
        .map(|i| new_event(pick(&format!("rb-{i}"), "SO-1"), "SO-1"))
        .collect();
    // In batches of 10, in the same order: the two meet on every batch,
    // and whichever claims second sees its batch of claims refused (or,
    // reading after the other's claims, answers duplicates at once).
    let run = |log: IdempotentLog, events: Vec<_>| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            for chunk in events.chunks(10) {
                out.extend(log.append_batch(chunk).await.expect("a batch"));
            }
            out
        })
    };
    let (a, b) = tokio::join!(run(one.clone(), events.clone()), run(two.clone(), events));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut offsets = Vec::new();
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(a.offset, b.offset, "id rb-{i}");
        assert!(a.duplicate != b.duplicate, "id rb-{i}: {a:?} {b:?}");
        offsets.push(a.offset.get());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=IDS as u64).collect::<Vec<_>>());
    for (i, a) in a.iter().enumerate().step_by(7) {
        let want = Claim::Stored(a.offset);
        let id = format!("rb-{i}");
        assert_eq!(leader_claim(&c1, "I5_IDS", &id).await, Some(want), "{id}");
    }
    eprintln!(
        "claim batches refused: {} and {}",
        one.claim_batches_refused(),
        two.claim_batches_refused()
    );
}

/// A batch of claims that loses a race for one key (written between the
/// read and the batch) is refused as a whole by the server; its claims then
/// go one by one: the others are recorded, the raced key keeps the
/// winner's offset.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_a_refused_batch_of_claims_goes_one_by_one() {
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let ids = open(&cluster, &client, "i6", StreamConfig::with_prefix("i6")).await;
    jetstream_of(&client)
        .get_key_value("I6_IDS")
        .await
        .expect("the claims bucket")
        .create(encode_key("c-1"), Claim::Stored(Offset::new(5)).encode())
        .await
        .expect("the winner's claim");
    let o = Offset::new;
    ids.record_new_claims(&[("c-0", o(1)), ("c-1", o(2)), ("c-2", o(3))])
        .await;
    assert_eq!(ids.claim_batches_refused(), 1);
    for (id, offset) in [("c-0", 1), ("c-1", 5), ("c-2", 3)] {
        let want = Claim::Stored(o(offset));
        assert_eq!(
            leader_claim(&client, "I6_IDS", id).await,
            Some(want),
            "{id}"
        );
    }
    ids.record_new_claims(&[("c-3", o(6)), ("c-4", o(7))]).await;
    assert_eq!(ids.claim_batches_refused(), 1, "a batch with no race");
}
