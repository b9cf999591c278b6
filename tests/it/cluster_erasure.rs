//! Tenant erasure and `tenant_retention` in cluster mode: broker processes
//! on a real 3-node nats-server cluster. EraseTenant sent to the broker
//! that is not the primary (it forwards it) erases a tenant's events
//! published on the other: neither broker serves them (GetEvent says they
//! were erased, Subscribe skips them, a paused endpoint's pending
//! deliveries are dead, `erased`), the other tenant's stay, the messages
//! are gone from the stream and the payloads from every broker's copy on
//! disk; a broker started afterwards copies the stream across the holes
//! and serves the same tombstones; an erased id published again is a
//! duplicate. With a short `tenant_retention` for one tenant, the primary
//! erases that tenant's old events the same way. A primary that stops
//! between storing the tombstones and deleting the messages leaves nothing
//! erased served, and the next primary finishes the job.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use stevedore::pb::{
    self, admin_client::AdminClient, publisher_client::PublisherClient,
    subscriber_client::SubscriberClient,
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    cluster_brokers::serving,
    cluster_delivery::two_brokers,
    cluster_retention::get,
    support::{
        connect, create, endpoint, files_containing,
        leases::{deliverer_of, primary_of},
        next_within, publish_answer, subscribe_earliest,
        tenants::pick_of,
        wait_state, Receiver,
    },
};

/// The marker in tenant `t1`'s payloads (its sales order ids).
const T1_MARK: &str = "T1-PII-c4e1";
/// The marker in tenant `t2`'s.
const T2_MARK: &str = "T2-KEEP-5b0d";
/// How long a change may take to reach every broker.
const SPREAD: Duration = Duration::from_secs(20);

/// An event `id` of `tenant`, its payload marked with the tenant's marker.
fn event(tenant: &str, id: &str) -> pb::Event {
    let mark = if tenant == "t1" { T1_MARK } else { T2_MARK };
    pb::Event {
        id: id.into(),
        ..pick_of(tenant, &format!("{mark}-{id}"))
    }
}

/// EraseTenant of `t1` through `channel`.
async fn erase_t1(channel: &Channel) -> Result<pb::EraseTenantResponse, tonic::Status> {
    AdminClient::new(channel.clone())
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "t1".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Publishes `(tenant, id)`s in order through `channel`; their offsets.
async fn publish_all(channel: &Channel, events: &[(&str, &str)]) -> Vec<u64> {
    let mut publisher = PublisherClient::new(channel.clone());
    let mut offsets = Vec::new();
    for (tenant, id) in events {
        let r = publish_answer(&mut publisher, event(tenant, id)).await;
        assert!(!r.duplicate, "{id}");
        offsets.push(r.offset);
    }
    offsets
}

/// Waits (up to [`SPREAD`]) until GetEvent of every offset in `gone`
/// through `channel` answers NOT_FOUND saying `why`; then checks that
/// every offset in `kept` still reads back, the other tenant's.
async fn erased_on(channel: &Channel, gone: &[u64], kept: &[u64], why: &str) {
    let deadline = Instant::now() + SPREAD;
    for &offset in gone {
        loop {
            match get(channel, offset).await {
                Err(s) if s.code() == Code::NotFound && s.message().contains(why) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "offset {offset} is not {why:?}: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for &offset in kept {
        let kept = get(channel, offset)
            .await
            .expect("the other tenant's event");
        let event = kept.event.expect("an event");
        assert!(format!("{event:?}").contains(T2_MARK), "{event:?}");
    }
}

/// Subscribes from earliest through `channel` until `last`: the offsets
/// read, none of them carrying an erased payload.
async fn subscribed(channel: &Channel, last: u64) -> Vec<u64> {
    let mut stream = subscribe_earliest(&mut SubscriberClient::new(channel.clone())).await;
    let mut read = Vec::new();
    while read.last().is_none_or(|&o| o < last) {
        let m = next_within(&mut stream, 10).await;
        assert!(!format!("{:?}", m.event).contains(T1_MARK), "{m:?}");
        read.push(m.offset);
    }
    read
}

/// The stream's message at `seq`, read from its leader: whether there is
/// one.
async fn stream_holds(client: &async_nats::Client, stream: &str, seq: u64) -> bool {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let stream = async_nats::jetstream::new(client.clone())
        .get_stream(stream)
        .await
        .expect("the events stream");
    match stream.get_raw_message(seq).await {
        Ok(_) => true,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => false,
        Err(e) => panic!("reading sequence {seq}: {e}"),
    }
}

/// Waits (up to [`SPREAD`]) until no file of broker `generation`'s copy
/// of the cluster (under `dir`) holds `T1_MARK`; the other tenant's
/// payloads are there.
async fn copy_forgot(dir: &Path, generation: u64) {
    let copy = dir.join(format!("data-{generation}/cluster-copy"));
    let deadline = Instant::now() + SPREAD;
    loop {
        let holding = files_containing(&copy, T1_MARK.as_bytes());
        if holding.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker {generation}'s copy still holds an erased payload: {holding:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !files_containing(&copy, T2_MARK.as_bytes()).is_empty(),
        "baseline: broker {generation}'s copy holds the other tenant's payloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_erase_tenant_removes_its_payloads_from_the_stream_and_every_copy() {
    let (cluster, dir) = (
        crate::support::nats::NatsCluster::start().await,
        tempfile::tempdir().unwrap(),
    );
    let (brokers, channels) = two_brokers(&cluster, dir.path(), "erase").await;
    // Published on the primary, erased through the other broker, which
    // forwards EraseTenant to the primary.
    let primary = primary_of(&cluster, "erase", &brokers).await;
    let (on, through) = (&channels[primary], &channels[1 - primary]);
    let rx = Receiver::start().await;
    let mut admin = AdminClient::new(on.clone());
    // t1's own endpoint goes with it; a paused global endpoint's pending
    // deliveries of t1's events become dead, `erased`.
    create(
        &mut admin,
        pb::Endpoint {
            tenant: "t1".into(),
            ..endpoint(&rx.url)
        },
    )
    .await;
    // Paused endpoints until one is delivered by each broker (the primary
    // settles its own through its worker's consumer, the other broker's
    // from the state).
    let mut paused: [Option<String>; 2] = [None, None];
    for _ in 0..40 {
        if paused.iter().all(Option::is_some) {
            break;
        }
        let (ep, _) = create(
            &mut admin,
            pb::Endpoint {
                enabled: Some(false),
                ..endpoint(&rx.url)
            },
        )
        .await;
        let at = deliverer_of(&cluster, "erase", &brokers, &ep.id).await;
        paused[at].get_or_insert(ep.id);
    }
    let paused: Vec<String> = paused
        .into_iter()
        .map(|p| p.expect("a paused endpoint on each broker within 40"))
        .collect();
    // And an enabled one the other broker delivers: what it delivered
    // stays recorded delivered (the primary's copy of its consumer is not
    // the deliverer's).
    let mut live = None;
    for _ in 0..40 {
        let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
        if deliverer_of(&cluster, "erase", &brokers, &ep.id).await != primary {
            live = Some(ep.id);
            break;
        }
    }
    let live = live.expect("an endpoint the other broker delivers within 40");
    // t1's events first (the stream's first message), in the middle and
    // last (the stream's last message).
    let offsets = publish_all(
        on,
        &[
            ("t1", "t1-a"),
            ("t2", "t2-a"),
            ("t1", "t1-b"),
            ("t1", "t1-c"),
            ("t2", "t2-b"),
            ("t1", "t1-d"),
        ],
    )
    .await;
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6]);
    let (t1, t2) = ([1, 3, 4, 6], [2, 5]);
    get(through, 6)
        .await
        .expect("the other broker has copied them");
    for generation in [1, 2] {
        let copy = dir.path().join(format!("data-{generation}/cluster-copy"));
        assert!(
            !files_containing(&copy, T1_MARK.as_bytes()).is_empty(),
            "baseline: broker {generation}'s copy holds t1's payloads"
        );
    }

    wait_state(&mut admin, &live, pb::DeliveryState::Delivered, 6).await;

    let erased = erase_t1(through)
        .await
        .expect("EraseTenant through the broker that is not the primary");
    assert_eq!(
        (erased.endpoints, erased.consumers, erased.events),
        (1, 0, 4)
    );

    for channel in &channels {
        erased_on(channel, &t1, &t2, "erased with its tenant's data").await;
        assert_eq!(subscribed(channel, 5).await, t2);
    }
    let client = cluster.connect().await;
    for seq in 1..=6 {
        assert_eq!(
            stream_holds(&client, "ERASE_EVENTS", seq).await,
            t2.contains(&seq),
            "sequence {seq} in the stream"
        );
    }
    for generation in [1, 2] {
        copy_forgot(dir.path(), generation).await;
    }
    let delivered = wait_state(&mut admin, &live, pb::DeliveryState::Delivered, 6).await;
    assert_eq!(delivered.len(), 6, "{delivered:?}");
    for id in &paused {
        let dead = wait_state(&mut admin, id, pb::DeliveryState::Dead, 4).await;
        let mut dead: Vec<(u64, String)> =
            dead.into_iter().map(|d| (d.offset, d.last_error)).collect();
        dead.sort();
        let want: Vec<(u64, String)> = t1.iter().map(|&o| (o, "erased".to_owned())).collect();
        assert_eq!(dead, want, "paused endpoint {id}'s pending deliveries");
    }

    // A broker started now copies the stream across the holes (and past
    // its deleted first and last messages) and serves the same tombstones.
    let late = cluster
        .start_broker(dir.path(), 3, "erase", &[])
        .await
        .unwrap_or_else(|e| panic!("broker C: {e}"));
    let late = connect(&late.addr).await.expect("connecting to broker C");
    erased_on(&late, &t1, &t2, "erased with its tenant's data").await;
    assert_eq!(subscribed(&late, 5).await, t2);
    copy_forgot(dir.path(), 3).await;

    // An erased id published again, on any broker, is a duplicate of the
    // erased event: its content does not come back.
    for channel in [on, through, &late] {
        let again = publish_answer(
            &mut PublisherClient::new(channel.clone()),
            event("t1", "t1-b"),
        )
        .await;
        assert_eq!((again.offset, again.duplicate), (3, true));
    }
    // The erased ids stay claimed by their tombstones' copies, published
    // on their subjects at offsets 7 to 10, which readers skip.
    for seq in 7..=10 {
        assert!(stream_holds(&client, "ERASE_EVENTS", seq).await, "{seq}");
        let status = get(&late, seq).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{seq}: {status:?}");
    }
    // And the log goes on after them, on every broker.
    assert_eq!(publish_all(through, &[("t2", "t2-c")]).await, [11]);
    for channel in [on, through, &late] {
        assert_eq!(subscribed(channel, 11).await, [2, 5, 11]);
        assert_eq!(
            serving(&HealthClient::new(channel.clone())).await,
            ServingStatus::Serving,
            "no broker's copy is stuck at a hole"
        );
    }
    // Erasing again finds nothing more.
    assert_eq!(erase_t1(through).await.unwrap().events, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_tenant_retention_erases_one_tenants_old_events_on_every_broker() {
    const RETENTION: [(&str, &str); 2] = [
        ("STEVEDORE_TENANT_RETENTION", "t1=3s"),
        ("STEVEDORE_RETENTION_INTERVAL", "200ms"),
    ];
    let cluster = crate::support::nats::NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = cluster
        .start_broker(dir.path(), 1, "tret", &RETENTION)
        .await;
    let b = cluster
        .start_broker(dir.path(), 2, "tret", &RETENTION)
        .await;
    let (a, b) = (
        a.unwrap_or_else(|e| panic!("broker A: {e}")),
        b.unwrap_or_else(|e| panic!("broker B: {e}")),
    );
    let channels = [
        connect(&a.addr).await.unwrap(),
        connect(&b.addr).await.unwrap(),
    ];
    // t2's are older still, and stay.
    let offsets = publish_all(
        &channels[0],
        &[
            ("t2", "t2-a"),
            ("t1", "t1-a"),
            ("t1", "t1-b"),
            ("t2", "t2-b"),
        ],
    )
    .await;
    assert_eq!(offsets, [1, 2, 3, 4]);
    for channel in &channels {
        erased_on(
            channel,
            &[2, 3],
            &[1, 4],
            "removed by its tenant's retention",
        )
        .await;
        assert_eq!(subscribed(channel, 4).await, [1, 4]);
    }
    let client = cluster.connect().await;
    for seq in 1..=4 {
        assert_eq!(
            stream_holds(&client, "TRET_EVENTS", seq).await,
            [1, 4].contains(&seq),
            "sequence {seq} in the stream"
        );
    }
    for generation in [1, 2] {
        copy_forgot(dir.path(), generation).await;
    }
}

/// Two NATS users: `held` may not delete messages from streams, `free`
/// may do anything.
const USERS: &str = r#"
authorization {
  users = [
    {user: "held", password: "held-Pa55word", permissions: {publish: {deny: ["$JS.API.STREAM.MSG.DELETE.>"]}}}
    {user: "free", password: "free-Pa55word"}
  ]
}
"#;

/// A primary that dies between storing the tombstones and deleting the
/// messages (here: it may not delete them) leaves nothing erased served,
/// by itself or by a broker started meanwhile, and the next primary
/// deletes the messages at its next retention pass.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_erasure_cut_short_serves_nothing_erased_and_the_next_primary_finishes_it() {
    let cluster = crate::support::nats::NatsCluster::start_with_config(USERS).await;
    let dir = tempfile::tempdir().unwrap();
    let held = [
        ("STEVEDORE_NATS_USER", "held"),
        ("STEVEDORE_NATS_PASSWORD", "held-Pa55word"),
    ];
    let free = [
        ("STEVEDORE_NATS_USER", "free"),
        ("STEVEDORE_NATS_PASSWORD", "free-Pa55word"),
        ("STEVEDORE_RETENTION_INTERVAL", "200ms"),
    ];
    let mut a = cluster
        .start_broker(dir.path(), 1, "ecut", &held)
        .await
        .unwrap_or_else(|e| panic!("broker A: {e}"));
    let ca = connect(&a.addr).await.unwrap();
    let offsets = publish_all(&ca, &[("t1", "t1-a"), ("t2", "t2-a"), ("t1", "t1-b")]).await;
    assert_eq!(offsets, [1, 2, 3]);
    // A, alone, is the primary once it took the lease.
    let deadline = Instant::now() + SPREAD;
    let status = loop {
        match erase_t1(&ca).await {
            Err(s) if s.message().contains("no broker is the primary") => {
                assert!(Instant::now() < deadline, "A never became the primary");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other.expect_err("A cannot delete the messages"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("deleting erased events' messages"),
        "{status:?}"
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("free".into(), "free-Pa55word".into())
            .connect(cluster.client_urls())
            .await
            .expect("connecting as free");
    for seq in [1, 3] {
        assert!(stream_holds(&client, "ECUT_EVENTS", seq).await, "{seq}");
    }
    // Nothing erased is served meanwhile: by A, nor by B, started now,
    // whose copy takes the tombstones in place of the messages.
    erased_on(&ca, &[1, 3], &[2], "erased with its tenant's data").await;
    let b = cluster
        .start_broker(dir.path(), 2, "ecut", &free)
        .await
        .unwrap_or_else(|e| panic!("broker B: {e}"));
    let cb = connect(&b.addr).await.unwrap();
    for channel in [&ca, &cb] {
        erased_on(channel, &[1, 3], &[2], "erased with its tenant's data").await;
        assert_eq!(subscribed(channel, 2).await, [2]);
    }
    for generation in [1, 2] {
        copy_forgot(dir.path(), generation).await;
    }
    // A dies; B takes the primary lease over and finishes the erasure.
    a.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    for seq in [1, 3] {
        while stream_holds(&client, "ECUT_EVENTS", seq).await {
            assert!(
                Instant::now() < deadline,
                "sequence {seq} is still in the stream"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(stream_holds(&client, "ECUT_EVENTS", 2).await);
    erased_on(&cb, &[1, 3], &[2], "erased with its tenant's data").await;
}
