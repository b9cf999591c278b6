//! Idempotent publish on the cluster log (`store::jetstream::EventStream`)
//! on a real 3-node nats-server cluster: each event is published on its
//! id's subject, only if that holds no message, so an id answers its
//! offset whenever it comes back (there is no deduplication window); a
//! purge frees the ids it removes; publishers racing on the same ids, one
//! at a time or in batches, get one offset per id.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use stevedore::{
    model::{NewEvent, Offset},
    store::jetstream::{EventStream, StreamConfig},
};

use crate::{
    cluster_log::new_event,
    support::{
        nats::{jetstream_of, patiently, NatsCluster},
        pick,
    },
};

/// The log of `prefix`, once the stream has a leader (on a loaded machine
/// the stream is created before it can take publishes).
async fn open(cluster: &NatsCluster, client: &async_nats::Client, prefix: &str) -> EventStream {
    let config = StreamConfig::with_prefix(prefix);
    let name = config.stream.clone();
    let log = patiently(|| EventStream::open(client.clone(), config.clone()))
        .await
        .expect("open the log");
    cluster.stream_leader(client, &name).await;
    log
}

/// Events with ids `names`.
fn events(names: &[String]) -> Vec<NewEvent> {
    names
        .iter()
        .map(|id| new_event(pick(id, "SO-1"), "SO-1"))
        .collect()
}

/// `(offset, duplicate)` of each answer.
fn answers(appended: &[stevedore::model::Appended]) -> Vec<(u64, bool)> {
    appended
        .iter()
        .map(|a| (a.offset.get(), a.duplicate))
        .collect()
}

/// An id answers its offset however long after it comes back, one at a
/// time or in a batch, and whatever else the batch holds; a changed event
/// under a stored id is flagged. Retention's purge frees the ids it
/// removes: they are stored anew.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_ids_answer_their_offset_until_purged() {
    const N: u64 = 20;
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let log = open(&cluster, &client, "i1").await;

    let x = new_event(pick("x", "SO-1"), "SO-1");
    assert_eq!(answers(&[log.append(&x).await.unwrap()]), [(1, false)]);
    let first: Vec<String> = (0..N).map(|i| format!("b-{i}")).collect();
    let appended = log.append_batch(&events(&first)).await.expect("a batch");
    assert_eq!(
        answers(&appended),
        (2..=N + 1).map(|o| (o, false)).collect::<Vec<_>>()
    );

    // The stream was made with a two-minute deduplication window, which
    // these events do not use: an id is known for as long as its message
    // is kept. Again, one at a time and as a batch with new ids.
    let again = log.append(&x).await.expect("x again");
    assert_eq!(
        (again.offset.get(), again.duplicate, again.payload_differs),
        (1, true, false)
    );
    let changed = log
        .append(&new_event(pick("x", "SO-9"), "SO-9"))
        .await
        .expect("a changed x");
    assert_eq!(
        (
            changed.offset.get(),
            changed.duplicate,
            changed.payload_differs
        ),
        (1, true, true)
    );
    let mut mixed = first.clone();
    mixed.insert(5, "n-0".into());
    mixed.push("n-1".into());
    let answered = log.append_batch(&events(&mixed)).await.expect("mixed");
    let mut want: Vec<(u64, bool)> = (2..=N + 1).map(|o| (o, true)).collect();
    want.insert(5, (N + 2, false));
    want.push((N + 3, false));
    assert_eq!(answers(&answered), want);
    assert_eq!(log.head().await.unwrap(), Offset::new(N + 3));
    assert_eq!(log.offset_of("b-7").await.unwrap(), Some(Offset::new(9)));

    // Retention purges below offset 6 (x, b-0 to b-3): those ids are free
    // again, the rest are not.
    jetstream_of(&client)
        .get_stream("I1_EVENTS")
        .await
        .unwrap()
        .purge()
        .sequence(6)
        .await
        .expect("purge");
    assert_eq!(log.offset_of("b-0").await.unwrap(), None);
    let next = N + 4;
    let answered = log
        .append_batch(&events(&["b-0".into(), "b-4".into(), "x".into()]))
        .await
        .expect("after the purge");
    assert_eq!(
        answers(&answered),
        [(next, false), (6, true), (next + 1, false)]
    );
    assert_eq!(
        answers(&[log
            .append(&new_event(pick("b-1", "SO-1"), "SO-1"))
            .await
            .unwrap()]),
        [(next + 2, false)]
    );
}

/// Two brokers appending the same ids one at a time, at the same moment:
/// one offset per id, exactly one `duplicate = false` per id.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_two_publishers_racing_get_one_offset_per_id() {
    const IDS: usize = 40;
    let cluster = NatsCluster::start().await;
    // Two clients, as two brokers.
    let (c1, c2) = (cluster.connect().await, cluster.connect().await);
    let one = open(&cluster, &c1, "i3").await;
    let two = open(&cluster, &c2, "i3").await;
    let events: Vec<_> = (0..IDS)
        .map(|i| new_event(pick(&format!("race-{i}"), "SO-1"), &format!("SO-{i}")))
        .collect();

    let run = |log: EventStream, events: Vec<_>| {
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
    assert_eq!(one.head().await.unwrap(), Offset::new(IDS as u64));
}

/// Two brokers appending batches of the same ids, and a third appending
/// them one at a time, all at once: one offset per id, one `duplicate =
/// false` per id. (With ids claimed in a bucket beside the stream, a batch
/// racing a single append relied on the stream's deduplication window.)
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_idempotent_batches_and_single_appends_racing_get_one_offset_per_id() {
    const IDS: usize = 200;
    let cluster = NatsCluster::start().await;
    let mut logs = Vec::new();
    for _ in 0..3 {
        let client = cluster.connect().await;
        logs.push(open(&cluster, &client, "i5").await);
    }
    let events: Vec<_> = (0..IDS)
        .map(|i| new_event(pick(&format!("rb-{i}"), "SO-1"), "SO-1"))
        .collect();
    // In batches of 10, in the same order: the two meet on every batch.
    let batches = |log: EventStream, events: Vec<NewEvent>| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            for chunk in events.chunks(10) {
                out.extend(log.append_batch(chunk).await.expect("a batch"));
            }
            out
        })
    };
    let singles = |log: EventStream, events: Vec<NewEvent>| {
        tokio::spawn(async move {
            let all = events.iter().map(|e| log.append(e));
            futures::future::join_all(all)
                .await
                .into_iter()
                .map(|a| a.expect("a single append"))
                .collect::<Vec<_>>()
        })
    };
    let (a, b, c) = tokio::join!(
        batches(logs[0].clone(), events.clone()),
        batches(logs[1].clone(), events.clone()),
        singles(logs[2].clone(), events),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let mut offsets = Vec::new();
    for i in 0..IDS {
        let three = [&a[i], &b[i], &c[i]];
        assert!(
            three.iter().all(|x| x.offset == a[i].offset),
            "id rb-{i}: {three:?}"
        );
        let written = three.iter().filter(|x| !x.duplicate).count();
        assert_eq!(written, 1, "id rb-{i}: {three:?}");
        offsets.push(a[i].offset.get());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=IDS as u64).collect::<Vec<_>>());
    assert_eq!(logs[0].head().await.unwrap(), Offset::new(IDS as u64));
}
