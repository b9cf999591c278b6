//! The cluster event log (`store::jetstream`) on a real 3-node nats-server
//! cluster: append and read back, atomic batches, idempotency by event id.
//! The leader-kill scenario is in `cluster_failover.rs`.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster`.

use async_nats::jetstream;
use stevedore::{
    model::{event_type_of, NewEvent, Offset},
    pb,
    store::jetstream::{
        decode_header, ClusterLog, ClusterOptions, EventStream, JetStreamError, StreamConfig,
        ORDERING_KEY,
    },
};

use crate::support::{
    inventory,
    nats::{create_stream, jetstream_of, patiently, NatsCluster},
    pick,
};

/// `event` as the broker hands it to the log: ordering key and time set.
pub fn new_event(mut event: pb::Event, ordering_key: &str) -> NewEvent {
    event.ordering_key = ordering_key.to_owned();
    event.occurred_at = Some(prost_types::Timestamp {
        seconds: 1_770_000_000,
        nanos: 0,
    });
    let event_type = event_type_of(event.payload.as_ref()).expect("a typed payload");
    NewEvent {
        event,
        event_type,
        id_assigned: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_log_appends_and_reads_back() {
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let log = patiently(|| EventStream::open(client.clone(), StreamConfig::with_prefix("t1")))
        .await
        .expect("open");
    assert_eq!(log.head().await.unwrap(), Offset::ZERO);

    let one = new_event(pick("p-1", "SO-1"), "SO-1");
    let a = log.append(&one).await.expect("append");
    assert_eq!((a.offset.get(), a.duplicate), (1, false));

    let batch = vec![
        new_event(inventory("i-1", "SKU 1", 3.0), "SKU 1"),
        new_event(pick("p-2", "SO-2"), "SO-2"),
        new_event(inventory("i-2", "SKU\r\n2", 4.0), "SKU\r\n2 "),
    ];
    let appended = log.append_batch(&batch).await.expect("batch");
    let offsets: Vec<_> = appended
        .iter()
        .map(|a| (a.offset.get(), a.duplicate))
        .collect();
    assert_eq!(offsets, [(2, false), (3, false), (4, false)]);
    assert_eq!(log.head().await.unwrap(), Offset::new(4));

    let all: Vec<_> = std::iter::once(&one).chain(&batch).collect();
    let read = log
        .read(Offset::new(1), Offset::new(4))
        .await
        .expect("read");
    assert_eq!(read.len(), 4);
    for (stored, sent) in read.iter().zip(&all) {
        assert_eq!(stored.event, sent.event, "offset {}", stored.offset);
        assert_eq!(stored.event_type, sent.event_type);
    }
    assert_eq!(
        read.iter().map(|e| e.offset.get()).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // A sub-range, a range past the head, one event.
    let mid = log.read(Offset::new(2), Offset::new(3)).await.unwrap();
    assert_eq!(
        mid.iter().map(|e| e.offset.get()).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(log.read(Offset::new(5), Offset::new(9)).await.unwrap(), []);
    assert_eq!(
        log.read(Offset::new(1), Offset::new(u64::MAX))
            .await
            .unwrap(),
        read
    );
    assert_eq!(
        log.get(Offset::new(3)).await.unwrap().unwrap().event,
        batch[1].event
    );
    assert!(log.get(Offset::new(9)).await.unwrap().is_none());

    // A subject per event id under the prefix (the id made subject-safe);
    // the ordering key in a header, exactly (it holds CR, LF and a
    // trailing space).
    let stream = jetstream_of(&client).get_stream("T1_EVENTS").await.unwrap();
    let raw = stream.get_raw_message(4).await.unwrap();
    assert_eq!(raw.subject.as_str(), "t1.events.ki-2");
    let header = |name| raw.headers.get(name).map(|v| decode_header(v.as_str()));
    assert_eq!(header(ORDERING_KEY).as_deref(), Some("SKU\r\n2 "));
    assert_eq!(header("Nats-Msg-Id"), None);
    assert_eq!(
        log.offset_of("i-2").await.unwrap(),
        Some(Offset::new(4)),
        "an id's offset is its subject's last message"
    );
    assert_eq!(log.offset_of("i-9").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_log_batch_is_all_or_nothing() {
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let config = StreamConfig::with_prefix("t2");
    // The stream made beforehand with a message size limit, so the server
    // refuses one event of a batch.
    create_stream(
        &jetstream_of(&client),
        jetstream::stream::Config {
            max_message_size: 2_000,
            ..config.server_config()
        },
    )
    .await;
    let log = patiently(|| EventStream::open(client.clone(), config.clone()))
        .await
        .expect("open");
    log.append(&new_event(pick("first", "SO-0"), "SO-0"))
        .await
        .unwrap();

    let big = new_event(inventory("big", &"X".repeat(4_000), 1.0), "big");
    let batch = vec![
        new_event(pick("a", "SO-1"), "SO-1"),
        new_event(pick("b", "SO-2"), "SO-2"),
        big,
        new_event(pick("c", "SO-3"), "SO-3"),
    ];
    let err = log
        .append_batch(&batch)
        .await
        .expect_err("one event is too big");
    assert!(matches!(err, JetStreamError::Rejected { .. }), "{err:?}");
    assert_eq!(
        log.head().await.unwrap(),
        Offset::new(1),
        "nothing of the batch is stored"
    );

    // The refused batch left no ids behind: the others are new, and land
    // right after the head (no gap).
    let mut rest = batch;
    rest.remove(2);
    let appended = log.append_batch(&rest).await.expect("the rest");
    assert_eq!(
        appended
            .iter()
            .map(|a| (a.offset.get(), a.duplicate))
            .collect::<Vec<_>>(),
        [(2, false), (3, false), (4, false)]
    );

    // Too many events for one atomic batch: refused before sending.
    let small = EventStream::open(
        cluster.connect().await,
        StreamConfig {
            max_batch: 2,
            ..config
        },
    )
    .await
    .unwrap();
    let three: Vec<_> = (0..3)
        .map(|i| new_event(pick(&format!("x{i}"), "SO"), "SO"))
        .collect();
    assert!(matches!(
        small.append_batch(&three).await,
        Err(JetStreamError::BatchTooLarge { len: 3, max: 2 })
    ));
    assert_eq!(small.head().await.unwrap(), Offset::new(4));

    // A stream of that name without atomic batches is not taken over.
    let plain = StreamConfig::with_prefix("t5");
    create_stream(
        &jetstream_of(&client),
        jetstream::stream::Config {
            name: plain.stream.clone(),
            subjects: vec![format!("{}.>", plain.subject_prefix)],
            num_replicas: 3,
            ..Default::default()
        },
    )
    .await;
    match EventStream::open(client.clone(), plain).await {
        Err(JetStreamError::Stream { stream, reason }) => {
            assert_eq!(stream, "T5_EVENTS");
            assert!(reason.contains("allow_atomic"), "{reason}");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a stream without atomic batches was accepted"),
    }

    // Nor is one an earlier build made, which kept event ids in a bucket
    // of claims (its stream has no metadata saying otherwise): its events'
    // ids would not be found on their subjects.
    let earlier = StreamConfig::with_prefix("t6");
    create_stream(
        &jetstream_of(&client),
        jetstream::stream::Config {
            metadata: Default::default(),
            ..earlier.server_config()
        },
    )
    .await;
    match EventStream::open(client, earlier).await {
        Err(JetStreamError::Stream { stream, reason }) => {
            assert_eq!(stream, "T6_EVENTS");
            assert!(reason.contains("earlier stevedore build"), "{reason}");
            assert!(reason.contains("nats_prefix"), "{reason}");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a stream of an earlier build was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_log_duplicate_ids_answer_the_first_offset() {
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let log = patiently(|| EventStream::open(client.clone(), StreamConfig::with_prefix("t3")))
        .await
        .unwrap();
    let e1 = new_event(pick("e1", "SO-1"), "SO-1");
    assert_eq!(log.append(&e1).await.unwrap().offset, Offset::new(1));

    // The same event again: the first offset, nothing written.
    let again = log.append(&e1).await.unwrap();
    assert_eq!(
        (again.offset.get(), again.duplicate, again.payload_differs),
        (1, true, false)
    );
    // The id reused for another event: still the first offset, flagged.
    let reused = log
        .append(&new_event(pick("e1", "SO-9"), "SO-9"))
        .await
        .unwrap();
    assert_eq!(
        (
            reused.offset.get(),
            reused.duplicate,
            reused.payload_differs
        ),
        (1, true, true)
    );
    assert_eq!(log.head().await.unwrap(), Offset::new(1));

    // A batch mixing a stored id, a new one and a repeat of the new one:
    // only the new one is written (the server refuses an atomic batch that
    // holds a stored id; the log finds it and sends the rest).
    let e2 = new_event(pick("e2", "SO-2"), "SO-2");
    let mixed = log
        .append_batch(&[e1.clone(), e2.clone(), e2.clone()])
        .await
        .unwrap();
    let got: Vec<_> = mixed
        .iter()
        .map(|a| (a.offset.get(), a.duplicate))
        .collect();
    assert_eq!(got, [(1, true), (2, false), (2, true)]);

    // Repeats of a stored id are each compared with the stored event (not
    // with the batch's first event of that id, which here differs).
    let reused = new_event(pick("e1", "SO-9"), "SO-9");
    let repeats = log.append_batch(&[reused, e1.clone()]).await.unwrap();
    let got: Vec<_> = repeats
        .iter()
        .map(|a| (a.offset.get(), a.duplicate, a.payload_differs))
        .collect();
    assert_eq!(got, [(1, true, true), (1, true, false)]);

    // A retried batch (its answer lost): every offset as before, no writes.
    let batch = vec![
        new_event(inventory("e3", "SKU-3", 1.0), "SKU-3"),
        new_event(inventory("e4", "SKU-4", 1.0), "SKU-4"),
    ];
    let first = log.append_batch(&batch).await.unwrap();
    let retry = log.append_batch(&batch).await.unwrap();
    assert_eq!(
        first.iter().map(|a| a.offset.get()).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(
        retry
            .iter()
            .map(|a| (a.offset.get(), a.duplicate))
            .collect::<Vec<_>>(),
        [(3, true), (4, true)]
    );
    assert_eq!(log.head().await.unwrap(), Offset::new(4));
    let ids: Vec<_> = log
        .read(Offset::new(1), Offset::new(4))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.id)
        .collect();
    assert_eq!(ids, ["e1", "e2", "e3", "e4"]);
}

/// A broker's head follows the stream; when a start offset is past it, the
/// broker asks the stream itself (`ClusterLog::fresh_head`), which knows
/// what another broker appended before this one's follower has seen it.
/// Here the follower is stopped, so the followed head stays behind.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_log_fresh_head_sees_what_another_broker_appended() {
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let config =
        stevedore::config::Config::load(None, cluster.broker_env("fh"), &[("data_dir", data_dir)])
            .unwrap();
    let options = ClusterOptions::from_config(&config).expect("backend = jetstream");
    let opened = ClusterLog::open(&options, Default::default())
        .await
        .expect("open");
    let followed = opened.head.clone();
    let start = *followed.borrow();
    // Its follower stops (so does taking appends): its head no longer moves
    // by itself.
    opened.log.close();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let client = cluster.connect().await;
    let other = patiently(|| EventStream::open(client.clone(), StreamConfig::with_prefix("fh")))
        .await
        .expect("open the stream as another broker");
    let appended = other
        .append(&new_event(pick("fh-1", "SO-1"), "SO-1"))
        .await
        .expect("append");
    assert_eq!(appended.offset, start);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        *followed.borrow(),
        start,
        "the stopped follower did not move"
    );

    let fresh = opened.log.fresh_head().await.expect("fresh head");
    assert_eq!(fresh, start + 1);
    assert_eq!(
        *followed.borrow(),
        start + 1,
        "the followed head is raised too"
    );
}

/// A broker that appends tells the others on the stream's head subject
/// (a core NATS message, not stored), and their followers move their
/// heads; an append that writes nothing (a duplicate) tells nobody.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_log_appends_are_told_to_the_other_brokers() {
    use tokio_stream::StreamExt as _;
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let open = |n: u32| {
        let data_dir = dir.path().join(format!("b{n}")).display().to_string();
        let config = stevedore::config::Config::load(
            None,
            cluster.broker_env("tell"),
            &[("data_dir", data_dir)],
        )
        .unwrap();
        let options = ClusterOptions::from_config(&config).expect("backend = jetstream");
        async move { ClusterLog::open(&options, Default::default()).await }
    };
    let a = open(1).await.expect("broker A");
    let b = open(2).await.expect("broker B");
    let client = cluster.connect().await;
    let mut notices = client
        .subscribe(StreamConfig::with_prefix("tell").head_subject())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let start = *b.head.borrow();

    let event = new_event(pick("tell-1", "SO-1"), "SO-1");
    let appended = a.log.append(vec![event.clone()]).await.expect("append");
    assert_eq!(appended[0].offset, start);
    tokio::time::timeout(std::time::Duration::from_secs(10), notices.next())
        .await
        .expect("a notice within 10 s")
        .expect("the subscription is open");
    let mut head = b.head.clone();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        head.wait_for(|h| *h > start),
    )
    .await
    .expect("B's head follows within 10 s")
    .unwrap();

    let again = a.log.append(vec![event]).await.expect("append again");
    assert!(again[0].duplicate);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), notices.next())
            .await
            .is_err(),
        "a duplicate is no news"
    );
    a.log.close();
    b.log.close();
}
