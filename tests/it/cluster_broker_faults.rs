//! Cluster mode under faults, through broker processes: what the brokers
//! acknowledged is compared with what the cluster holds after a node (the
//! stream's leader) or every node is SIGKILLed.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use stevedore::pb::{
    publisher_client::PublisherClient, subscriber_client::SubscriberClient, GetEventRequest,
    PublishBatchRequest, PublishRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::support::{
    connect, inventory,
    nats::{jetstream_of, NatsCluster},
    pick, Server,
};

/// Attempts of one publish before the test gives up on it.
const ATTEMPTS: usize = 40;
/// Events each of the two producers publishes.
const PER_PRODUCER: usize = 120;

async fn channel(server: &Server) -> Channel {
    connect(&server.addr).await.expect("connecting to a broker")
}

/// Publishes event `id` through `brokers`, starting with broker `first` and
/// going to the next one after a failure (the answer lost or refused while
/// the cluster elects a leader), always with the same id, until one answers.
/// Returns its offset and how many attempts failed.
async fn publish_until_acked(brokers: &[Channel], first: usize, id: &str) -> (u64, usize) {
    let mut failed = 0;
    for attempt in 0..ATTEMPTS {
        let mut client = PublisherClient::new(brokers[(first + attempt) % brokers.len()].clone());
        let request = PublishRequest {
            event: Some(pick(id, "SO-fault")),
        };
        match tokio::time::timeout(Duration::from_secs(30), client.publish(request)).await {
            Ok(Ok(answer)) => return (answer.into_inner().offset, failed),
            Ok(Err(_)) | Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("event {id} not acknowledged in {ATTEMPTS} attempts");
}

/// The offset GetEvent answers for `id` on `broker`.
async fn offset_of(broker: &Channel, id: &str) -> u64 {
    let event = SubscriberClient::new(broker.clone())
        .get_event(GetEventRequest {
            event_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("GetEvent {id}: {e}"))
        .into_inner();
    assert_eq!(event.event.as_ref().map(|e| e.id.as_str()), Some(id));
    event.offset
}

/// Two producers publish through two brokers, each retrying a failed
/// publish with the same id on the other broker; the node leading the
/// stream is SIGKILLed while they do. Every acknowledged event is found at
/// the offset it was acknowledged with, on both brokers; each id has one
/// offset and the stream holds one message per id (retries of a publish
/// whose answer was lost were deduplicated, not stored twice).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_brokers_lose_no_acked_event_when_the_stream_leader_is_killed() {
    let mut cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = cluster.start_broker(dir.path(), 1, "lk", &[]).await;
    let b = cluster.start_broker(dir.path(), 2, "lk", &[]).await;
    let a = a.unwrap_or_else(|e| panic!("broker A: {e}"));
    let b = b.unwrap_or_else(|e| panic!("broker B: {e}"));
    let brokers = vec![channel(&a).await, channel(&b).await];

    let producers: Vec<_> = (0..2)
        .map(|p| {
            let brokers = brokers.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut failed = 0;
                for i in 0..PER_PRODUCER {
                    let id = format!("p{p}-{i}");
                    let (offset, f) = publish_until_acked(&brokers, p, &id).await;
                    failed += f;
                    acked.push((id, offset));
                }
                (acked, failed)
            })
        })
        .collect();

    // Kill the stream's leader once some events are in.
    let client = cluster.connect().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let head = jetstream_of(&client)
            .get_stream("LK_EVENTS")
            .await
            .ok()
            .map(|s| s.cached_info().state.messages);
        if head.unwrap_or(0) >= 40 {
            break;
        }
        assert!(Instant::now() < deadline, "the producers got nowhere");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = cluster.stream_leader(&client, "LK_EVENTS").await;
    cluster.kill(&leader);

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0;
    for producer in producers {
        let (events, f) = producer.await.unwrap();
        failed += f;
        acked.extend(events);
    }
    eprintln!("stream leader {leader} killed; {failed} publishes failed and were retried");
    assert_eq!(acked.len(), 2 * PER_PRODUCER);
    let offsets: BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(
        offsets.len(),
        acked.len(),
        "two ids acknowledged at one offset"
    );

    cluster.restart(&leader).await;
    for (id, offset) in &acked {
        for broker in &brokers {
            assert_eq!(offset_of(broker, id).await, *offset, "event {id}");
        }
    }
    let mut stream = jetstream_of(&client).get_stream("LK_EVENTS").await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(
        stored,
        acked.len() as u64,
        "one message per id ({failed} publishes failed and were retried)"
    );
    // And a producer retrying any of them now is told it is stored.
    for (id, offset) in acked.iter().step_by(10) {
        let again = PublisherClient::new(brokers[1].clone())
            .publish(PublishRequest {
                event: Some(pick(id, "SO-fault")),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((again.offset, again.duplicate), (*offset, true), "{id}");
    }
}

/// Events acknowledged by a broker (a batch and single publishes) are all
/// there after every node is SIGKILLed and started again: the broker
/// reconnects and serves each of them at its acknowledged offset.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_keeps_every_acked_event_when_all_nodes_are_killed() {
    let mut cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = cluster
        .start_broker(dir.path(), 1, "all", &[])
        .await
        .unwrap_or_else(|e| panic!("broker: {e}"));
    let ch = channel(&broker).await;
    let mut publisher = PublisherClient::new(ch.clone());
    let batch = PublishBatchRequest {
        events: (0..50)
            .map(|i| inventory(&format!("inv-{i}"), &format!("SKU-{i}"), f64::from(i)))
            .collect(),
    };
    let mut acked: Vec<(String, u64)> = publisher
        .publish_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("inv-{i}"), r.offset))
        .collect();
    for i in 0..20 {
        let id = format!("pick-{i}");
        let r = publisher
            .publish(PublishRequest {
                event: Some(pick(&id, "SO-all")),
            })
            .await
            .unwrap()
            .into_inner();
        acked.push((id, r.offset));
    }

    cluster.kill_all();
    cluster.start_all().await;

    // The broker reconnects by itself; its reads work again once it has.
    let deadline = Instant::now() + Duration::from_secs(60);
    let subscriber = SubscriberClient::new(ch);
    for (id, offset) in &acked {
        loop {
            let answer = subscriber
                .clone()
                .get_event(GetEventRequest {
                    offset: *offset,
                    ..Default::default()
                })
                .await;
            match answer {
                Ok(found) => {
                    let found = found.into_inner();
                    assert_eq!(
                        found.event.map(|e| e.id),
                        Some(id.clone()),
                        "offset {offset}"
                    );
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "offset {offset} ({id}) not served after the restart: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
