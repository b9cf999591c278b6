//! Webhook delivery in cluster mode: two broker processes on a real 3-node
//! nats-server cluster, real receivers. An endpoint created on one broker
//! is seen by the other; events published to either are delivered once
//! each, by the broker holding the endpoint's delivery shard; the brokers
//! share the shards, and one that joins takes half; a call that moves the
//! endpoint's consumer works on either broker (the other forwards it); when
//! the deliverer is SIGKILLed the other takes its shards over and every
//! event acknowledged after the kill still arrives.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use stevedore::pb::{
    self, admin_client::AdminClient, publisher_client::PublisherClient, replay_endpoint_request,
    DeliveryState, ReplayEndpointRequest,
};
use stevedore::store::DELIVERY_SHARDS;
use tonic::transport::Channel;

use stevedore::store::jetstream::Leases;

use crate::support::{
    connect, create, endpoint, get_endpoint,
    leases::{deliverer_of, leases_of, shards_become},
    list_deliveries,
    nats::NatsCluster,
    pick, publish_answer, Behavior, Receiver, Server,
};

/// Loopback receivers over plain HTTP, as every broker test allows.
pub(crate) const EGRESS: [(&str, &str); 2] = [
    ("STEVEDORE_ALLOW_HTTP", "true"),
    ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
];

/// Brokers A and B of installation `prefix` on `cluster` (data and logs
/// under `dir`), loopback receivers allowed, and a channel to each; once
/// they share the delivery shards half and half, so no shard moves (and
/// sends what it had in flight again) during the test.
pub(crate) async fn two_brokers(
    cluster: &NatsCluster,
    dir: &std::path::Path,
    prefix: &str,
) -> (Vec<Server>, Vec<Channel>) {
    let a = cluster.start_broker(dir, 1, prefix, &EGRESS).await;
    let b = cluster.start_broker(dir, 2, prefix, &EGRESS).await;
    let brokers = vec![
        a.unwrap_or_else(|e| panic!("broker A: {e}")),
        b.unwrap_or_else(|e| panic!("broker B: {e}")),
    ];
    let mut channels = Vec::new();
    for broker in &brokers {
        channels.push(connect(&broker.addr).await.expect("connecting to a broker"));
    }
    let half = DELIVERY_SHARDS as usize / 2;
    let leases = leases_of(cluster, prefix).await;
    shards_become(&leases, &brokers, &[half, half], Duration::from_secs(30)).await;
    (brokers, channels)
}

/// Broker A of installation `prefix` alone on `cluster` (data and logs
/// under `dir`), once it holds every delivery shard: the installation's
/// leases (to watch shards move), the brokers (A) and a channel to A.
pub(crate) async fn lone_broker(
    cluster: &NatsCluster,
    dir: &std::path::Path,
    prefix: &str,
) -> (Leases, Vec<Server>, Channel) {
    let leases = leases_of(cluster, prefix).await;
    let a = cluster
        .start_broker(dir, 1, prefix, &EGRESS)
        .await
        .unwrap_or_else(|e| panic!("broker A: {e}"));
    let brokers = vec![a];
    let ca = connect(&brokers[0].addr).await.unwrap();
    let all = DELIVERY_SHARDS as usize;
    shards_become(&leases, &brokers, &[all], Duration::from_secs(30)).await;
    (leases, brokers, ca)
}

/// Starts broker B beside [`lone_broker`]'s A and waits until each holds
/// half the delivery shards; how long that took after B started.
pub(crate) async fn join_b(
    cluster: &NatsCluster,
    dir: &std::path::Path,
    prefix: &str,
    leases: &Leases,
    brokers: &mut Vec<Server>,
) -> Duration {
    let b = cluster
        .start_broker(dir, 2, prefix, &EGRESS)
        .await
        .unwrap_or_else(|e| panic!("broker B: {e}"));
    brokers.push(b);
    let half = DELIVERY_SHARDS as usize / 2;
    shards_become(leases, brokers, &[half, half], Duration::from_secs(30)).await
}

/// The distinct `webhook-id`s (event ids) `rx` received.
pub(crate) fn received(rx: &Receiver) -> BTreeSet<String> {
    rx.requests()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

/// Waits (up to `within`) until `rx` received every id in `want`.
pub(crate) async fn receives_all(rx: &Receiver, want: &BTreeSet<String>, within: Duration) {
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

/// ReplayEndpoint from `head` (nothing to send again) through `channel`.
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
    let (cluster, dir) = (NatsCluster::start().await, tempfile::tempdir().unwrap());
    let (mut brokers, channels) = two_brokers(&cluster, dir.path(), "wh").await;
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
    // Both brokers show the backlog gone, the one that does not deliver
    // the endpoint too (from its copy of the state, not from the consumer
    // as it loaded it when the endpoint was new).
    for (at, channel) in channels.iter().enumerate() {
        let mut admin = AdminClient::new(channel.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let backlog = get_endpoint(&mut admin, &ep.id).await.backlog;
            if backlog == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker {at} still shows a backlog of {backlog} after every delivery"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // One broker delivers the endpoint (its shard's lease names it);
    // replay works on both, the other forwarding it.
    let deliverer = deliverer_of(&cluster, "wh", &brokers, &ep.id).await;
    for channel in &channels {
        replay_from_head(channel, &ep.id, 21)
            .await
            .expect("ReplayEndpoint on either broker");
    }
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
    // The survivor delivers it now.
    assert_eq!(
        deliverer_of(&cluster, "wh", &brokers, &ep.id).await,
        survivor
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_webhooks_survive_killing_the_deliverer_while_it_delivers() {
    const EVENTS: usize = 200;
    const KEYS: usize = 10;
    const IN_FLIGHT: u32 = 4;
    let (cluster, dir) = (NatsCluster::start().await, tempfile::tempdir().unwrap());
    let (mut brokers, channels) = two_brokers(&cluster, dir.path(), "whk").await;
    // A receiver slow enough that deliveries are in flight at the kill.
    let rx = Receiver::start().await;
    rx.set_default(Behavior::Delay(Duration::from_millis(100), 200));
    let mut e = endpoint(&rx.url);
    e.ordering = pb::Ordering::Key as i32;
    e.max_in_flight = IN_FLIGHT;
    let (ep, _) = create(&mut AdminClient::new(channels[0].clone()), e).await;

    // Acked through both brokers (a batch each, the first before the
    // second), ten orders interleaved.
    let ids: Vec<(String, String)> = (0..EVENTS)
        .map(|i| (format!("k-{i}"), format!("SO-{}", i % KEYS)))
        .collect();
    for (half, channel) in ids.chunks(EVENTS / 2).zip(&channels) {
        let events = half
            .iter()
            .map(|(id, order)| pb::Event {
                ordering_key: order.clone(),
                ..pick(id, order)
            })
            .collect();
        PublisherClient::new(channel.clone())
            .publish_batch(pb::PublishBatchRequest { events })
            .await
            .expect("the batch is acked");
    }

    // The endpoint's deliverer dies mid-way.
    let deliverer = deliverer_of(&cluster, "whk", &brokers, &ep.id).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.count() < EVENTS / 5 {
        assert!(Instant::now() < deadline, "delivery did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    brokers[deliverer].kill();
    let before_kill: Vec<String> = rx
        .requests()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    let at_kill = before_kill.len();
    assert!(at_kill < EVENTS, "everything went out before the kill");

    let want: BTreeSet<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    receives_all(&rx, &want, Duration::from_secs(90)).await;
    let requests = rx.requests();
    // Per order, first arrivals in publish order.
    let mut firsts: Vec<&str> = Vec::new();
    for r in &requests {
        let id = r.header("webhook-id").expect("a webhook-id");
        if !firsts.contains(&id) {
            firsts.push(id);
        }
    }
    for key in 0..KEYS {
        let order: Vec<usize> = firsts
            .iter()
            .map(|id| id.trim_start_matches("k-").parse::<usize>().unwrap())
            .filter(|i| i % KEYS == key)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "order SO-{key} arrived as {order:?}"
        );
    }
    // Sent twice: only what the dead deliverer held unfinished, one event per
    // key at most with ordering by key, among the last arrivals before the
    // kill.
    let mut seen = BTreeSet::new();
    let twice: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .filter(|id| !seen.insert(*id))
        .collect();
    assert!(
        twice.len() <= KEYS,
        "{} sent twice, more than the {KEYS} the deliverer could hold at the kill ({at_kill} of \
         {EVENTS} had arrived): {twice:?}",
        twice.len()
    );
    let recent = &before_kill[at_kill.saturating_sub(KEYS)..];
    for id in &twice {
        assert!(
            recent.iter().any(|r| r == id),
            "{id} was sent twice but was not among the last {KEYS} arrivals before the kill \
             ({recent:?}): it was not in flight"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_brokers_share_the_endpoints_and_take_over_a_dead_ones() {
    const SHARDS: usize = DELIVERY_SHARDS as usize;
    let (cluster, dir) = (NatsCluster::start().await, tempfile::tempdir().unwrap());
    // Alone, A delivers every shard.
    let (leases, mut brokers, ca) = lone_broker(&cluster, dir.path(), "share").await;
    let mut endpoints = Vec::new();
    for _ in 0..8 {
        let rx = Receiver::start().await;
        let (ep, _) = create(&mut AdminClient::new(ca.clone()), endpoint(&rx.url)).await;
        endpoints.push((ep.id, rx));
    }
    let first: Vec<String> = (0..5).map(|i| format!("solo-{i}")).collect();
    publish_all(&ca, &first).await;

    // B joins: A gives half the shards up to it.
    let settled = join_b(&cluster, dir.path(), "share", &leases, &mut brokers).await;
    let cb = connect(&brokers[1].addr).await.unwrap();
    println!("B had its half of the delivery shards {settled:?} after it started");
    // Endpoints until each broker delivers at least two.
    let mut on = [0usize; 2];
    for (id, _) in &endpoints {
        on[deliverer_of(&cluster, "share", &brokers, id).await] += 1;
    }
    for _ in 0..40 {
        if on.iter().all(|&n| n >= 2) {
            break;
        }
        let rx = Receiver::start().await;
        let (ep, _) = create(&mut AdminClient::new(cb.clone()), endpoint(&rx.url)).await;
        on[deliverer_of(&cluster, "share", &brokers, &ep.id).await] += 1;
        endpoints.push((ep.id, rx));
    }
    assert!(on.iter().all(|&n| n >= 2), "endpoints per broker: {on:?}");

    // Published to both: every endpoint gets every event, once.
    let second: Vec<String> = (0..10).map(|i| format!("pair-{i}")).collect();
    publish_all(&ca, &second[..5]).await;
    publish_all(&cb, &second[5..]).await;
    for (i, (_, rx)) in endpoints.iter().enumerate() {
        // The first eight were there before the first events.
        let early = if i < 8 { &first[..] } else { &[] };
        let want: BTreeSet<String> = early.iter().chain(&second).cloned().collect();
        receives_all(rx, &want, Duration::from_secs(60)).await;
    }
    for (id, rx) in &endpoints {
        let got = received(rx);
        let n = rx
            .expect_no_more_than(got.len(), Duration::from_millis(500))
            .await;
        assert_eq!(n.len(), got.len(), "endpoint {id} got an event twice");
    }

    // B dies: A takes its shards over, and delivers B's endpoints too.
    brokers[1].kill();
    let killed = Instant::now();
    let third: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    publish_all(&ca, &third).await;
    let want: BTreeSet<String> = third.iter().cloned().collect();
    for (_, rx) in &endpoints {
        receives_all(rx, &want, Duration::from_secs(60)).await;
    }
    println!(
        "every endpoint had the events published after B's kill {:?} after it",
        killed.elapsed()
    );
    shards_become(&leases, &brokers, &[SHARDS, 0], Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_secret_rotation_through_either_broker_signs_with_both_at_once() {
    let (cluster, dir) = (NatsCluster::start().await, tempfile::tempdir().unwrap());
    let (brokers, channels) = two_brokers(&cluster, dir.path(), "rot").await;
    // An endpoint B delivers, created and rotated through A.
    let mut admin = AdminClient::new(channels[0].clone());
    let mut on_b = None;
    for _ in 0..40 {
        let rx = Receiver::start().await;
        let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
        if deliverer_of(&cluster, "rot", &brokers, &ep.id).await == 1 {
            on_b = Some((ep.id, rx));
            break;
        }
    }
    let (id, rx) = on_b.expect("B delivers one of 40 endpoints");
    // B's worker runs (with the first secret) once an event went out.
    publish_all(&channels[0], &["before-1".to_owned()]).await;
    receives_all(
        &rx,
        &BTreeSet::from(["before-1".to_owned()]),
        Duration::from_secs(30),
    )
    .await;
    admin
        .rotate_endpoint_secret(pb::RotateEndpointSecretRequest {
            id: id.clone(),
            grace_period: None,
        })
        .await
        .expect("RotateEndpointSecret through the broker that does not deliver");
    // The very next event is signed with both secrets.
    publish_all(&channels[0], &["rotated-1".to_owned()]).await;
    receives_all(
        &rx,
        &BTreeSet::from(["rotated-1".to_owned()]),
        Duration::from_secs(30),
    )
    .await;
    let requests = rx.requests();
    let signature = requests
        .iter()
        .find(|r| r.header("webhook-id") == Some("rotated-1"))
        .and_then(|r| r.header("webhook-signature"))
        .expect("a signature");
    assert_eq!(
        signature.split(' ').count(),
        2,
        "the old and the new secret's signatures: {signature}"
    );
}
