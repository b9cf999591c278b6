//! Moving an embedded broker into a cluster: `stevedore migrate` copies a
//! stopped embedded broker's data directory into a fresh installation on a
//! real 3-node nats-server cluster; a cluster broker started on it answers
//! every event at its old offset, takes a re-publish of an old id as a
//! duplicate, lists the endpoint, and delivers a new event signed with the
//! endpoint's old secret without sending the old events again. A second
//! run, a directory that is not a data directory and a data directory in
//! use are refused, naming what. A log whose first events retention removed
//! keeps its offsets too: the stream starts where the log starts.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use base64::Engine as _;
use stevedore::{
    pb::{
        admin_client::AdminClient, endpoint::Start, publisher_client::PublisherClient,
        subscriber_client::SubscriberClient, DeliveryState, GetEventRequest, ListEndpointsRequest,
    },
    store::jetstream::encode_key,
};

use crate::support::{
    connect, create, endpoint, list_deliveries,
    nats::{jetstream_of, NatsCluster},
    next_within, pick, publish_answer, start_server_with_env, subscribe_earliest, verify_signature,
    Receiver,
};

/// The installation's name on the cluster.
const PREFIX: &str = "moved";
/// Events the embedded broker takes and delivers before the move.
const EVENTS: usize = 12;

/// `stevedore migrate --data-dir <data>` with `env`: whether it succeeded,
/// and what it printed.
fn run_migrate(data: &Path, env: &[(String, String)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stevedore"))
        .args(["migrate", "--data-dir"])
        .arg(data)
        .env("STEVEDORE_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running stevedore migrate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_migrate_keeps_offsets_ids_endpoints_secrets_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("embedded");
    let master_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let env = [
        ("STEVEDORE_ALLOW_HTTP", "true"),
        ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
        ("STEVEDORE_MASTER_KEY", master_key.as_str()),
    ];

    // The embedded broker: an endpoint that starts at the earliest event
    // (so a lost consumer position would send everything again), events
    // published and delivered.
    let mut embedded = start_server_with_env(&data, dir.path(), 1, &env)
        .await
        .unwrap_or_else(|e| panic!("embedded broker: {e}"));
    let channel = connect(&embedded.addr).await.unwrap();
    let rx = Receiver::start().await;
    let mut admin = AdminClient::new(channel.clone());
    let mut e = endpoint(&rx.url);
    e.start = Some(Start::StartEarliest(true));
    let (ep, secret) = create(&mut admin, e).await;
    let mut publisher = PublisherClient::new(channel.clone());
    let mut offsets = BTreeMap::new();
    for i in 0..EVENTS {
        let id = format!("moved-{i}");
        let answer = publish_answer(&mut publisher, pick(&id, &format!("SO-{}", i % 3))).await;
        offsets.insert(id, answer.offset);
    }
    rx.wait_for(EVENTS, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = list_deliveries(&mut admin, &ep.id, DeliveryState::Delivered)
            .await
            .unwrap();
        if delivered.len() == EVENTS {
            break;
        }
        assert!(Instant::now() < deadline, "{delivered:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let cluster = NatsCluster::start().await;
    let cluster_env = cluster.broker_env(PREFIX);
    // While the embedded broker runs: refused, it holds the directory.
    let (ok, out) = run_migrate(&data, &cluster_env);
    assert!(
        !ok && out.contains("another broker (or process) holds the data directory"),
        "{out}"
    );
    drop((admin, publisher, channel));
    assert!(
        embedded.terminate(Duration::from_secs(15)).is_some(),
        "the embedded broker stops"
    );
    // Not a data directory: refused, naming it.
    let (ok, out) = run_migrate(&dir.path().join("elsewhere"), &cluster_env);
    assert!(
        !ok && out.contains("elsewhere is not a stevedore data directory"),
        "{out}"
    );

    let started = Instant::now();
    let (ok, out) = run_migrate(&data, &cluster_env);
    let took = started.elapsed();
    assert!(ok, "{out}");
    eprintln!("migrate took {took:?}:\n{out}");
    assert!(
        out.contains(&format!(
            "copied {EVENTS} event record(s) (offsets 1..={EVENTS}) into stream MOVED_EVENTS"
        )),
        "{out}"
    );
    assert!(out.contains("endpoints 1"), "{out}");
    assert!(out.contains(&format!("deliveries {EVENTS}")), "{out}");
    // Again: the stream holds events now, refused, naming it.
    let (ok, again) = run_migrate(&data, &cluster_env);
    assert!(
        !ok && again.contains(&format!(
            "stream MOVED_EVENTS already holds {EVENTS} event(s)"
        )),
        "{again}"
    );

    // A cluster broker on the installation, with the same master key.
    let broker = cluster
        .start_broker(dir.path(), 2, PREFIX, &env)
        .await
        .unwrap_or_else(|e| panic!("cluster broker: {e}"));
    let channel = connect(&broker.addr).await.unwrap();
    let mut subscriber = SubscriberClient::new(channel.clone());
    for (id, &offset) in &offsets {
        let got = subscriber
            .get_event(GetEventRequest {
                offset,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("GetEvent({offset}): {s:?}"))
            .into_inner();
        assert_eq!(
            got.event.map(|e| e.id).as_ref(),
            Some(id),
            "offset {offset}"
        );
    }
    // Every event is on its id's subject, which holds it last: a
    // re-publish of any id answers its offset, however late it comes.
    let stream = jetstream_of(&cluster.connect().await)
        .get_stream("MOVED_EVENTS")
        .await
        .unwrap();
    for (id, &offset) in &offsets {
        let last = stream
            .get_last_raw_message_by_subject(&format!("moved.events.{}", encode_key(id)))
            .await
            .unwrap_or_else(|e| panic!("{id}'s subject: {e}"));
        assert_eq!(last.sequence, offset, "{id}");
    }
    let mut publisher = PublisherClient::new(channel.clone());
    let old = "moved-3";
    let answer = publish_answer(&mut publisher, pick(old, "SO-0")).await;
    assert!(answer.duplicate, "{answer:?}");
    assert_eq!(answer.offset, offsets[old]);
    let listed = AdminClient::new(channel.clone())
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [ep.id.as_str()]
    );

    // A new event goes out, signed with the endpoint's old secret; the old
    // ones do not go out again (the consumer position moved with them).
    rx.clear();
    let fresh = publish_answer(&mut publisher, pick("moved-new", "SO-9")).await;
    assert_eq!(fresh.offset, EVENTS as u64 + 1);
    rx.wait_for(1, Duration::from_secs(60)).await;
    let got = rx.expect_no_more_than(1, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1, "only the new event is delivered");
    assert_eq!(got[0].header("webhook-id"), Some("moved-new"));
    verify_signature(&secret, &got[0]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_migrate_of_a_log_that_retention_shortened_keeps_its_offsets() {
    const PUBLISHED: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("embedded");
    // Small segments, removed a second after they were written.
    let env = [
        ("STEVEDORE_LOG_SEGMENT_BYTES", "65536"),
        ("STEVEDORE_RETENTION_AGE", "1s"),
        ("STEVEDORE_RETENTION_INTERVAL", "100ms"),
    ];
    let mut embedded = start_server_with_env(&data, dir.path(), 1, &env)
        .await
        .unwrap_or_else(|e| panic!("embedded broker: {e}"));
    let channel = connect(&embedded.addr).await.unwrap();
    let mut publisher = PublisherClient::new(channel.clone());
    for i in 0..PUBLISHED {
        publish_answer(&mut publisher, pick(&format!("short-{i}"), "SO-1")).await;
    }
    // Until retention removed the first segment.
    let mut subscriber = SubscriberClient::new(channel.clone());
    let first_request = GetEventRequest {
        offset: 1,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscriber.get_event(first_request.clone()).await.is_ok() {
        assert!(Instant::now() < deadline, "retention removed nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((publisher, subscriber, channel));
    assert!(embedded.terminate(Duration::from_secs(15)).is_some());

    let cluster = NatsCluster::start().await;
    let cluster_env = cluster.broker_env(PREFIX);
    let (ok, out) = run_migrate(&data, &cluster_env);
    assert!(ok, "{out}");
    let first: u64 = out
        .split("(offsets ")
        .nth(1)
        .and_then(|rest| rest.split("..=").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no first offset in {out}"));
    assert!(first > 1, "{out}");
    assert!(
        out.contains(&format!("..={PUBLISHED}) into stream")),
        "{out}"
    );

    let broker = cluster
        .start_broker(dir.path(), 2, PREFIX, &[])
        .await
        .unwrap_or_else(|e| panic!("cluster broker: {e}"));
    let channel = connect(&broker.addr).await.unwrap();
    let fresh = publish_answer(
        &mut PublisherClient::new(channel.clone()),
        pick("short-new", "SO-2"),
    )
    .await;
    assert_eq!(fresh.offset, PUBLISHED + 1);
    // From the earliest: the first event kept, at its old offset, through
    // this broker's copy of the log.
    let mut stream = subscribe_earliest(&mut SubscriberClient::new(channel)).await;
    let got = next_within(&mut stream, 30).await;
    assert_eq!(got.offset, first);
    assert_eq!(
        got.event.map(|e| e.id),
        Some(format!("short-{}", first - 1))
    );
}
