//! The cluster event log through node failures on a real 3-node
//! nats-server cluster: a producer appends (single events and atomic
//! batches, retrying with the same ids when the outcome is unknown) while
//! the stream's leader is SIGKILLed; every acknowledged event must be in the
//! log once, at its acknowledged offset, also after all three nodes are
//! SIGKILLed and restarted.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster`.

use std::{
    collections::HashMap,
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use stevedore::{
    model::Offset,
    store::jetstream::{EventStream, JetStreamError, StreamConfig},
};

use crate::{
    cluster_log::new_event,
    support::{
        inventory,
        nats::{patiently, NatsCluster},
        pick,
    },
};

/// Rounds of the producer: one single append and one batch of three each.
const ROUNDS: usize = 90;
/// Attempts of one append before the test gives up (each retriable failure
/// waits [`RETRY_PAUSE`]; a leader election takes a few seconds).
const ATTEMPTS: usize = 100;
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Retriable failures seen (reported, not asserted: how many appends the
/// kill catches in flight depends on timing).
static RETRIES: AtomicUsize = AtomicUsize::new(0);

/// Runs `append` until it is acknowledged, retrying what may succeed.
async fn until_acked<T, F, Fut>(what: &str, mut append: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, JetStreamError>>,
{
    for _ in 0..ATTEMPTS {
        match append().await {
            Ok(v) => return v,
            Err(e) if e.is_retriable() => {
                RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: not acknowledged after {ATTEMPTS} attempts");
}

/// Every acked id is in the log once, at its acked offset, and the log holds
/// nothing else.
async fn assert_all_present(log: &EventStream, acked: &[(String, Offset)]) {
    let head = log.head().await.expect("head");
    let events = log.read(Offset::new(1), head).await.expect("read the log");
    let mut seen: HashMap<&str, Offset> = HashMap::new();
    for e in &events {
        assert!(
            seen.insert(e.event.id.as_str(), e.offset).is_none(),
            "id {} stored twice (second at {})",
            e.event.id,
            e.offset
        );
    }
    for (id, offset) in acked {
        assert_eq!(seen.get(id.as_str()), Some(offset), "acked event {id}");
    }
    assert_eq!(events.len(), acked.len(), "events nobody acked");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_log_keeps_every_acked_event_when_the_stream_leader_is_killed() {
    let mut cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let config = StreamConfig::with_prefix("t4");
    let log = patiently(|| EventStream::open(client.clone(), config.clone()))
        .await
        .unwrap();
    let leader = cluster.stream_leader(&client, &config.stream).await;

    let (progress, mut rounds_done) = tokio::sync::watch::channel(0usize);
    let producer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..ROUNDS {
                let single = new_event(pick(&format!("s{round}"), "SO-1"), "SO-1");
                let a = until_acked("append", || log.append(&single)).await;
                acked.push((single.event.id.clone(), a.offset));
                let batch: Vec<_> = (0..3)
                    .map(|k| {
                        let sku = format!("SKU-{k}");
                        new_event(
                            inventory(&format!("b{round}-{k}"), &sku, round as f64),
                            &sku,
                        )
                    })
                    .collect();
                let answers = until_acked("batch", || log.append_batch(&batch)).await;
                for (e, a) in batch.iter().zip(answers) {
                    acked.push((e.event.id.clone(), a.offset));
                }
                progress.send_replace(round + 1);
            }
            acked
        })
    };

    rounds_done
        .wait_for(|&n| n >= ROUNDS / 3)
        .await
        .expect("the producer runs");
    cluster.kill(&leader);
    let acked = producer.await.expect("the producer finished");
    eprintln!(
        "appends retried after the leader kill: {}",
        RETRIES.load(Ordering::Relaxed)
    );
    assert_eq!(acked.len(), ROUNDS * 4);
    let new_leader = cluster.stream_leader(&client, &config.stream).await;
    assert_ne!(
        new_leader, leader,
        "the killed node is no longer the leader"
    );

    cluster.restart(&leader).await;
    assert_all_present(&log, &acked).await;

    // Acked means on disk on every node: SIGKILL all three, start them
    // again, and everything is still there.
    cluster.kill_all();
    cluster.start_all().await;
    let client = cluster.connect().await;
    // The stream answers once its replicas have elected a leader.
    cluster.stream_leader(&client, &config.stream).await;
    let log = patiently(|| EventStream::open(client.clone(), config.clone()))
        .await
        .unwrap();
    assert_all_present(&log, &acked).await;
}
