//! A delivery shard moving between live brokers (one joins and takes its
//! half from the one that delivered everything) sends nothing twice: the
//! broker giving shards up lets the attempts it has on the wire finish and
//! be recorded before it gives their leases up, and the broker taking them
//! reads the positions and delivery records after its copy of the state
//! caught up.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::{collections::BTreeSet, time::Duration};

use stevedore::pb::{self, admin_client::AdminClient, publisher_client::PublisherClient};

use crate::{
    cluster_delivery::{join_b, lone_broker, receives_all},
    support::{
        create, endpoint, leases::deliverer_of, nats::NatsCluster, pick, Behavior, Receiver,
    },
};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_shards_moving_to_a_joining_broker_send_nothing_twice() {
    const ENDPOINTS: usize = 8;
    const BATCHES: usize = 100;
    const PER_BATCH: usize = 3;
    let (cluster, dir) = (NatsCluster::start().await, tempfile::tempdir().unwrap());
    let (leases, mut brokers, ca) = lone_broker(&cluster, dir.path(), "move").await;

    // Slow receivers: each endpoint has several deliveries on the wire at
    // any moment (every event its own ordering key).
    let mut endpoints = Vec::new();
    for _ in 0..ENDPOINTS {
        let rx = Receiver::start().await;
        rx.set_default(Behavior::Delay(Duration::from_millis(150), 200));
        let mut e = endpoint(&rx.url);
        e.max_in_flight = 16;
        let (ep, _) = create(&mut AdminClient::new(ca.clone()), e).await;
        endpoints.push((ep.id, rx));
    }

    // A steady flow through A for about ten seconds ...
    let publishing = {
        let ca = ca.clone();
        tokio::spawn(async move {
            let mut publisher = PublisherClient::new(ca);
            let mut ids = Vec::new();
            for batch in 0..BATCHES {
                let events: Vec<pb::Event> = (0..PER_BATCH)
                    .map(|i| pick(&format!("mv-{batch}-{i}"), &format!("SO-{batch}-{i}")))
                    .collect();
                ids.extend(events.iter().map(|e| e.id.clone()));
                publisher
                    .publish_batch(pb::PublishBatchRequest { events })
                    .await
                    .expect("the batch is acked");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        })
    };
    // ... during which B starts and takes its half of the shards.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = join_b(&cluster, dir.path(), "move", &leases, &mut brokers).await;
    assert!(
        !publishing.is_finished(),
        "the shards moved only after the publishing ended ({settled:?} after B started): \
         nothing was in flight to hand over"
    );
    let ids = publishing.await.unwrap();

    let mut moved = 0;
    for (id, _) in &endpoints {
        moved += usize::from(deliverer_of(&cluster, "move", &brokers, id).await == 1);
    }
    assert!(moved > 0, "none of the {ENDPOINTS} endpoints went to B");
    println!("{moved} of {ENDPOINTS} endpoints went to B");

    let want: BTreeSet<String> = ids.into_iter().collect();
    for (_, rx) in &endpoints {
        receives_all(rx, &want, Duration::from_secs(120)).await;
    }
    // Anything sent again would come within a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, rx) in &endpoints {
        let mut seen = BTreeSet::new();
        let requests = rx.requests();
        let twice: Vec<&str> = requests
            .iter()
            .filter_map(|r| r.header("webhook-id"))
            .filter(|w| !seen.insert(*w))
            .collect();
        assert!(
            twice.is_empty(),
            "endpoint {id} got {} of {} events twice: {twice:?}",
            twice.len(),
            want.len()
        );
    }
}
