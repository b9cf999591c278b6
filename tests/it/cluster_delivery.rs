//! Webhook delivery in cluster mode: two broker processes on a real 3-node
//! nats-server cluster, a real receiver. An endpoint created on one broker
//! is seen by the other; events published to either are delivered once
//! each, by the one broker that holds the delivery lease; calls that move
//! the endpoint's consumer on the other broker name the deliverer; when the
//! deliverer is SIGKILLed the other takes delivery over and every event
//! acknowledged after the kill still arrives.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use stevedore::pb::{
    admin_client::AdminClient, publisher_client::PublisherClient, replay_endpoint_request,
    DeliveryState, ReplayEndpointRequest,
};
use tonic::{transport::Channel, Code};

use crate::support::{
    connect, create, endpoint, get_endpoint, list_deliveries, nats::NatsCluster, pick,
    publish_answer, Receiver, Server,
};

/// Loopback receivers over plain HTTP, as every broker test allows.
const EGRESS: [(&str, &str); 2] = [
    ("STEVEDORE_ALLOW_HTTP", "true"),
    ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
];

/// The distinct `webhook-id`s (event ids) `rx` received.
fn received(rx: &Receiver) -> BTreeSet<String> {
    rx.requests()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

/// Waits (up to `within`) until `rx` received every id in `want`.
async fn receives_all(rx: &Receiver, want: &BTreeSet<String>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = received(rx);
        if want.is_subset(&got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered within {within:?}: {:?}",
            want.difference(&got).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `ids` through `channel`; each is acknowledged.
async fn publish_all(channel: &Channel, ids: &[String]) {
    let mut publisher = PublisherClient::new(channel.clone());
    for id in ids {
        publish_answer(&mut publisher, pick(id, "SO-1")).await;
    }
}

/// ReplayEndpoint from `head` (nothing to send again) on `channel`: taken
/// by the deliverer, refused by the other broker.
async fn replay_from_head(channel: &Channel, id: &str, head: u64) -> Result<(), tonic::Status> {
    AdminClient::new(channel.clone())
        .replay_endpoint(ReplayEndpointRequest {
            endpoint_id: id.to_owned(),
            start: Some(replay_endpoint_request::Start::Offset(head)),
            dry_run: false,
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_webhooks_go_out_once_and_move_over_when_the_deliverer_is_killed() {
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = cluster.start_broker(dir.path(), 1, "wh", &EGRESS).await;
    let b = cluster.start_broker(dir.path(), 2, "wh", &EGRESS).await;
    let mut brokers: Vec<Server> = vec![
        a.unwrap_or_else(|e| panic!("broker A: {e}")),
        b.unwrap_or_else(|e| panic!("broker B: {e}")),
    ];
    let mut channels = Vec::new();
    for broker in &brokers {
        channels.push(connect(&broker.addr).await.expect("connecting to a broker"));
    }
    let rx = Receiver::start().await;

    // Created on A, seen on B.
    let (ep, _secret) = create(
        &mut AdminClient::new(channels[0].clone()),
        endpoint(&rx.url),
    )
    .await;
    let seen = get_endpoint(&mut AdminClient::new(channels[1].clone()), &ep.id).await;
    assert_eq!(seen.url, rx.url);

    // Published to both: each delivered, once.
    let before: Vec<String> = (0..20).map(|i| format!("wh-{i}")).collect();
    publish_all(&channels[0], &before[..10]).await;
    publish_all(&channels[1], &before[10..]).await;
    let want: BTreeSet<String> = before.iter().cloned().collect();
    receives_all(&rx, &want, Duration::from_secs(60)).await;
    let got = rx.expect_no_more_than(20, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 20, "one request per event, from one broker");

    // One broker delivers; the other names it.
    let mut deliverer = None;
    for (i, channel) in channels.iter().enumerate() {
        match replay_from_head(channel, &ep.id, 21).await {
            Ok(()) => {
                assert!(deliverer.is_none(), "both brokers deliver");
                deliverer = Some(i);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    status.message().contains("send it to http://127.0.0.1:"),
                    "{status:?}"
                );
            }
        }
    }
    let deliverer = deliverer.expect("one broker delivers");
    let survivor = 1 - deliverer;

    // The deliverer dies; what the survivor acknowledges afterwards still
    // goes out, once the lease has expired.
    brokers[deliverer].kill();
    let after: Vec<String> = (0..10).map(|i| format!("wh-after-{i}")).collect();
    publish_all(&channels[survivor], &after).await;
    let want: BTreeSet<String> = after.iter().cloned().collect();
    receives_all(&rx, &want, Duration::from_secs(60)).await;
    // Every delivery recorded as delivered (the record follows the
    // receiver's answer by a moment).
    let mut admin = AdminClient::new(channels[survivor].clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = list_deliveries(&mut admin, &ep.id, DeliveryState::Delivered)
            .await
            .unwrap();
        if delivered.len() == 30 {
            break;
        }
        assert!(Instant::now() < deadline, "{delivered:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The survivor now takes the calls that move the consumer.
    replay_from_head(&channels[survivor], &ep.id, 31)
        .await
        .expect("the survivor delivers now");
}
