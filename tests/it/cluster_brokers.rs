//! Cluster mode end to end: two broker processes (the real binary, with
//! `backend = "jetstream"`) on a real 3-node nats-server cluster share one
//! log. What one publishes the other serves (GetEvent, Subscribe replay and
//! live tail); the same ids published to both at once get one offset each
//! and one `duplicate = false`; a batch is all or nothing; a cluster that
//! does not sync every write is refused unless the operator allows it.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::time::{Duration, SystemTime};

use stevedore::pb::{
    self, publisher_client::PublisherClient, subscribe_request::Start,
    subscriber_client::SubscriberClient, GetEventRequest, PublishBatchRequest, PublishRequest,
    SubscribeRequest,
};
use tokio_stream::StreamExt as _;
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::support::{
    connect, inventory,
    nats::NatsCluster,
    nats::Sync,
    nats_auth::{private_file, Operator},
    next_within, pick, publish_answer, read_stderr, Server,
};

/// A broker's channel, failing the test with its stderr if it cannot be had.
async fn channel(server: &Server) -> Channel {
    connect(&server.addr).await.expect("connecting to a broker")
}

/// A 3-node cluster and two brokers on it (names under `prefix`): the
/// processes live as long as this does.
pub(crate) struct Pair {
    /// gRPC channels to broker A and broker B.
    pub(crate) a: Channel,
    pub(crate) b: Channel,
    _brokers: (Server, Server),
    _dir: tempfile::TempDir,
    _cluster: NatsCluster,
}

pub(crate) async fn two_brokers(prefix: &str) -> Pair {
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = cluster.start_broker(dir.path(), 1, prefix, &[]).await;
    let b = cluster.start_broker(dir.path(), 2, prefix, &[]).await;
    let a = a.unwrap_or_else(|e| panic!("broker A: {e}"));
    let b = b.unwrap_or_else(|e| panic!("broker B: {e}"));
    Pair {
        a: channel(&a).await,
        b: channel(&b).await,
        _brokers: (a, b),
        _dir: dir,
        _cluster: cluster,
    }
}

fn subscribe_from(start: Start, types: &[&str]) -> SubscribeRequest {
    SubscribeRequest {
        start: Some(start),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    }
}

/// `broker`, on an empty stream, takes an event and answers offset 1, not
/// a duplicate: it works.
async fn publishes_the_first_event(broker: &Server) {
    let mut publisher = PublisherClient::new(channel(broker).await);
    let r = publish_answer(&mut publisher, pick("p-1", "SO-1")).await;
    assert_eq!((r.offset, r.duplicate), (1, false));
}

/// GetEvent by offset.
async fn get_at(
    client: &SubscriberClient<Channel>,
    offset: u64,
) -> Result<pb::GetEventResponse, tonic::Status> {
    let req = GetEventRequest {
        offset,
        ..Default::default()
    };
    client.clone().get_event(req).await.map(|r| r.into_inner())
}

/// GetEvent by id.
async fn get_id(
    client: &SubscriberClient<Channel>,
    id: &str,
) -> Result<pb::GetEventResponse, tonic::Status> {
    let req = GetEventRequest {
        event_id: id.to_owned(),
        ..Default::default()
    };
    client.clone().get_event(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_brokers_serve_what_the_other_published() {
    let pair = two_brokers("share").await;
    let (ca, cb) = (pair.a.clone(), pair.b.clone());
    let mut pub_a = PublisherClient::new(ca.clone());
    let mut sub_b = SubscriberClient::new(cb.clone());

    // B tails from the head, only inventory updates; nothing is there yet.
    let mut tail = sub_b
        .subscribe(subscribe_from(Start::Latest(true), &["inventory.updated"]))
        .await
        .unwrap()
        .into_inner();
    let before = SystemTime::now() - Duration::from_secs(1);
    let first = publish_answer(&mut pub_a, pick("pick-1", "SO-1")).await;
    assert_eq!((first.offset, first.duplicate), (1, false));
    let second = publish_answer(&mut pub_a, inventory("inv-1", "SKU-1", 7.0)).await;
    assert_eq!(second.offset, 2);

    // Published on A, tailed live on B: the pick is filtered out.
    let m = next_within(&mut tail, 20).await;
    assert_eq!(m.offset, 2);
    assert_eq!(m.event.unwrap().id, "inv-1");

    // GetEvent on B, by offset and by id.
    let by_offset = get_at(&sub_b, 1).await.unwrap();
    assert_eq!(by_offset.event.unwrap().id, "pick-1");
    assert_eq!(by_offset.event_type, "pick.confirmed");
    let by_id = get_id(&sub_b, "inv-1").await.unwrap();
    assert_eq!(by_id.offset, 2);
    let missing = get_at(&sub_b, 3).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // PublishStream on B: acks in order, offsets in the stream's order.
    let requests = (0..5).map(|i| PublishRequest {
        event: Some(pick(&format!("stream-{i}"), "SO-2")),
    });
    let mut acks = PublisherClient::new(cb.clone())
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut offsets = Vec::new();
    while let Some(ack) = acks.next().await {
        let ack = ack.unwrap();
        assert_eq!(ack.event_id, format!("stream-{}", offsets.len()));
        offsets.push(ack.offset);
    }
    assert_eq!(offsets, [3, 4, 5, 6, 7]);

    // Replays on A: from the start, from an offset, from a time.
    let mut sub_a = SubscriberClient::new(ca.clone());
    for (start, want) in [
        (Start::Earliest(true), 1),
        (Start::Offset(4), 4),
        (Start::Time(before.into()), 1),
    ] {
        let mut replay = sub_a
            .subscribe(subscribe_from(start, &[]))
            .await
            .unwrap()
            .into_inner();
        for offset in want..=7 {
            let m = next_within(&mut replay, 20).await;
            assert_eq!(m.offset, offset, "from {start:?}");
        }
    }
    // A time after everything: the head, then what comes next.
    let mut later = sub_a
        .subscribe(subscribe_from(Start::Time(SystemTime::now().into()), &[]))
        .await
        .unwrap()
        .into_inner();
    let next = publish_answer(&mut PublisherClient::new(cb), pick("after", "SO-3")).await;
    assert_eq!(next.offset, 8);
    let m = next_within(&mut later, 20).await;
    assert_eq!((m.offset, m.event.unwrap().id.as_str()), (8, "after"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_brokers_publishing_the_same_ids_at_once_get_one_offset_each() {
    let pair = two_brokers("race").await;
    let (ca, cb) = (pair.a.clone(), pair.b.clone());
    const IDS: usize = 30;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..IDS {
        for (broker, ch) in [("A", ca.clone()), ("B", cb.clone())] {
            tasks.spawn(async move {
                let r = PublisherClient::new(ch)
                    .publish(PublishRequest {
                        event: Some(pick(&format!("same-{i}"), "SO-1")),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("publish same-{i} on {broker}: {s:?}"))
                    .into_inner();
                (i, r.offset, r.duplicate)
            });
        }
    }
    let mut answers = vec![Vec::new(); IDS];
    while let Some(done) = tasks.join_next().await {
        let (i, offset, duplicate) = done.unwrap();
        answers[i].push((offset, duplicate));
    }
    let mut offsets = Vec::new();
    for (i, both) in answers.iter().enumerate() {
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].0, both[1].0, "same-{i}: one offset, got {both:?}");
        let fresh = both.iter().filter(|(_, dup)| !dup).count();
        assert_eq!(fresh, 1, "same-{i}: one duplicate = false, got {both:?}");
        offsets.push(both[0].0);
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(
        offsets,
        (1..=IDS as u64).collect::<Vec<_>>(),
        "one event per id, nothing else"
    );
    // Nothing past them.
    let status = get_at(&SubscriberClient::new(cb), IDS as u64 + 1)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_publish_batch_is_all_or_nothing_across_brokers() {
    let pair = two_brokers("batch").await;
    let (ca, cb) = (pair.a.clone(), pair.b.clone());
    let batch = |ids: &[&str]| PublishBatchRequest {
        events: ids.iter().map(|id| pick(id, "SO-1")).collect(),
    };

    // One invalid event: nothing is written.
    let mut bad = batch(&["b-1", "b-2"]);
    bad.events[1].payload = None;
    let status = PublisherClient::new(ca.clone())
        .publish_batch(bad)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let written = PublisherClient::new(ca.clone())
        .publish_batch(batch(&["b-1", "b-2", "b-3"]))
        .await
        .unwrap()
        .into_inner()
        .results;
    let offsets: Vec<(u64, bool)> = written.iter().map(|r| (r.offset, r.duplicate)).collect();
    assert_eq!(
        offsets,
        [(1, false), (2, false), (3, false)],
        "nothing of the refused batch"
    );

    // The same ids through the other broker: the same offsets, nothing new;
    // a new id in the batch is written after them.
    let again = PublisherClient::new(cb.clone())
        .publish_batch(batch(&["b-2", "b-4", "b-1"]))
        .await
        .unwrap()
        .into_inner()
        .results;
    let offsets: Vec<(u64, bool)> = again.iter().map(|r| (r.offset, r.duplicate)).collect();
    assert_eq!(offsets, [(2, true), (4, false), (1, true)]);
    // A batch id published alone later is a duplicate too (its claim).
    let single = publish_answer(&mut PublisherClient::new(cb.clone()), pick("b-3", "SO-1")).await;
    assert_eq!((single.offset, single.duplicate), (3, true));

    // Larger than the server's atomic batch: refused as a whole, naming
    // the limit.
    let ids: Vec<String> = (0..1001).map(|i| format!("big-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let status = PublisherClient::new(cb.clone())
        .publish_batch(batch(&refs))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("atomic batch limit (1000)"),
        "{status:?}"
    );
    let status = get_at(&SubscriberClient::new(ca), 5).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "nothing of the refused batch: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_refuses_an_unsynced_cluster_unless_allowed() {
    let cluster = NatsCluster::start_with(Sync::Default).await;
    let dir = tempfile::tempdir().unwrap();
    let err = match cluster.start_broker(dir.path(), 1, "unsynced", &[]).await {
        Ok(_) => panic!("a broker started on a cluster that does not sync every write"),
        Err(e) => e,
    };
    assert!(
        err.contains("sync_interval: always") && err.contains("allow_unsynced_cluster"),
        "the refusal says how to fix it: {err}"
    );

    let allowed = [("STEVEDORE_ALLOW_UNSYNCED_CLUSTER", "true")];
    let broker = cluster
        .start_broker(dir.path(), 2, "unsynced", &allowed)
        .await
        .unwrap_or_else(|e| panic!("allowed: {e}"));
    let stderr = read_stderr(dir.path(), 2);
    assert!(
        stderr.contains("allow_unsynced_cluster is on") && stderr.contains("n1 (every 2m)"),
        "a loud warning: {stderr}"
    );
    publishes_the_first_event(&broker).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_is_not_serving_while_the_cluster_is_down() {
    let mut cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = cluster
        .start_broker(dir.path(), 1, "health", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let health = HealthClient::new(channel(&broker).await);
    assert_eq!(serving(&health).await, ServingStatus::Serving);
    cluster.kill_all();
    wait_for(&health, ServingStatus::NotServing).await;
    cluster.start_all().await;
    wait_for(&health, ServingStatus::Serving).await;
    // And it publishes again.
    let mut publisher = PublisherClient::new(channel(&broker).await);
    let r = publish_answer(&mut publisher, pick("back", "SO-1")).await;
    assert_eq!(r.offset, 1);
}

/// The broker's overall health (`Unknown` when it does not answer).
pub(crate) async fn serving(health: &HealthClient<Channel>) -> ServingStatus {
    health
        .clone()
        .check(HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status())
        .unwrap_or(ServingStatus::Unknown)
}

/// Polls health until `want`, for at most 30 s.
async fn wait_for(health: &HealthClient<Channel>, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = serving(health).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health stayed {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// NATS credentials from the broker's config reach the cluster: with the
/// right user and password the broker starts and publishes; with a wrong
/// password or none it refuses to start, naming what to check and never
/// printing the password.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_logs_in_with_nats_user_and_password() {
    const PASSWORD: &str = "s3cret-Pa55word";
    let cluster = NatsCluster::start_with_password("broker", PASSWORD).await;
    let right = [
        ("STEVEDORE_NATS_USER", "broker"),
        ("STEVEDORE_NATS_PASSWORD", PASSWORD),
    ];
    let wrong = [
        ("STEVEDORE_NATS_USER", "broker"),
        ("STEVEDORE_NATS_PASSWORD", "wrong-Pa55word"),
    ];
    logs_in_only_with(&cluster, &right, &wrong).await;
}

/// Brokers and nodes started together (a compose file, a reboot): a broker
/// whose first requests reach the cluster before it has elected its
/// JetStream meta leader asks again instead of giving up, and serves. (The
/// nodes already answer on their ports: a broker started before that is
/// refused by the durability check, which does not wait yet.)
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_started_with_the_cluster_waits_for_its_leader() {
    let cluster = NatsCluster::start_electing().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = cluster
        .start_broker(dir.path(), 1, "together", &[])
        .await
        .unwrap_or_else(|e| panic!("a broker started with its cluster: {e}"));
    publishes_the_first_event(&broker).await;
}

/// A broker started before its nodes listen at all (a compose file
/// starting everything at once, a host rebooting): it keeps asking their
/// monitoring and client ports, then serves once they are up.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_started_before_its_nodes_waits_for_them() {
    let mut cluster = NatsCluster::unstarted();
    let dir = tempfile::tempdir().unwrap();
    let env = cluster.broker_env("early");
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data = dir.path().join("data-1");
    let (broker, ()) = tokio::join!(
        crate::support::start_server_with_env(&data, dir.path(), 1, &vars),
        async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.spawn_all();
        }
    );
    let broker = broker.unwrap_or_else(|e| panic!("a broker started before its nodes: {e}"));
    publishes_the_first_event(&broker).await;
}

/// A client that publishes through one broker and at once subscribes
/// through the other from the offset it was given (a load balancer in
/// front of both) starts there, even when the other broker's head has not
/// caught up yet: a start past a broker's head is checked against the
/// stream's own head before it is refused.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_subscribe_on_one_broker_from_what_the_other_just_acked() {
    let pair = two_brokers("lag").await;
    let mut pub_a = PublisherClient::new(pair.a.clone());
    let mut sub_b = SubscriberClient::new(pair.b.clone());
    for i in 0..30 {
        let id = format!("lag-{i}");
        let acked = publish_answer(&mut pub_a, pick(&id, "SO-lag")).await;
        let mut stream = sub_b
            .subscribe(subscribe_from(Start::Offset(acked.offset), &[]))
            .await
            .unwrap_or_else(|e| panic!("subscribing on B from offset {}: {e}", acked.offset))
            .into_inner();
        let first = next_within(&mut stream, 30).await;
        let event = first.event.expect("an event");
        assert_eq!(
            (first.offset, event.id.as_str()),
            (acked.offset, id.as_str())
        );
    }
}

/// On `cluster`, which wants a login: a broker with the `wrong`
/// credentials or none is refused, naming what to check (the credential
/// keys it was given) and printing no credential; one with the `right` ones
/// starts, prints none, and publishes. A credential is every value but the
/// user name, and for a `*_FILE` key what the file holds (its path is no
/// secret).
async fn logs_in_only_with(cluster: &NatsCluster, right: &[(&str, &str)], wrong: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let secrets: Vec<String> = right
        .iter()
        .chain(wrong)
        .filter(|(k, _)| *k != "STEVEDORE_NATS_USER")
        .flat_map(|(k, v)| match k.ends_with("_FILE") {
            // The seed, the JWT: the file's long words.
            true => std::fs::read_to_string(v)
                .unwrap()
                .split_whitespace()
                .filter(|w| w.len() >= 20 && w.starts_with(char::is_alphanumeric))
                .map(str::to_owned)
                .collect(),
            false => vec![(*v).to_owned()],
        })
        .collect();
    for (generation, env) in [(1, wrong), (2, &[][..])] {
        let err = match cluster
            .start_broker(dir.path(), generation, "creds", env)
            .await
        {
            Ok(_) => panic!("a broker started with {env:?}, which the cluster refuses"),
            Err(e) => e,
        };
        assert!(
            err.contains("nats_url") && err.contains("credentials"),
            "the refusal names what to check: {err}"
        );
        for (var, _) in env {
            let key = var.trim_start_matches("STEVEDORE_").to_lowercase();
            assert!(err.contains(&key), "the refusal names {key}: {err}");
        }
        assert!(
            !secrets.iter().any(|s| err.contains(s)),
            "a credential printed: {err}"
        );
    }
    let broker = cluster
        .start_broker(dir.path(), 3, "creds", right)
        .await
        .unwrap_or_else(|e| panic!("with the right credentials: {e}"));
    let stderr = read_stderr(dir.path(), 3);
    assert!(
        !secrets.iter().any(|s| stderr.contains(s)),
        "a credential logged: {stderr}"
    );
    publishes_the_first_event(&broker).await;
}

/// [`logs_in_only_with`] for `var`, a key naming a file: the `right` and
/// the `wrong` contents each in a private (0600) file.
async fn logs_in_only_with_files(cluster: &NatsCluster, var: &str, right: &str, wrong: &str) {
    let keys = tempfile::tempdir().unwrap();
    let right = private_file(keys.path(), "right", right);
    let wrong = private_file(keys.path(), "wrong", wrong);
    logs_in_only_with(cluster, &[(var, &right)], &[(var, &wrong)]).await;
}

/// A token (`nats_token`) logs in; a wrong one or none is refused.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_logs_in_with_a_nats_token() {
    const TOKEN: &str = "t0ken-for-stevedore";
    let auth = format!("authorization {{\n  token: {TOKEN:?}\n}}\n");
    let cluster = NatsCluster::start_with_config(&auth).await;
    let right = [("STEVEDORE_NATS_TOKEN", TOKEN)];
    let wrong = [("STEVEDORE_NATS_TOKEN", "wrong-t0ken")];
    logs_in_only_with(&cluster, &right, &wrong).await;
}

/// An NKey user seed (`nats_nkey_seed_file`, a 0600 file) logs in to
/// nodes that know the user's public key; another user's seed, or none, is
/// refused, and the seed is never printed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_logs_in_with_a_nats_nkey_seed() {
    let user = nkeys::KeyPair::new_user();
    let auth = format!(
        "authorization {{\n  users: [ {{ nkey: {:?} }} ]\n}}\n",
        user.public_key()
    );
    let cluster = NatsCluster::start_with_config(&auth).await;
    let seed = |key: nkeys::KeyPair| format!("{}\n", key.seed().unwrap());
    let (right, wrong) = (seed(user), seed(nkeys::KeyPair::new_user()));
    let var = "STEVEDORE_NATS_NKEY_SEED_FILE";
    logs_in_only_with_files(&cluster, var, &right, &wrong).await;
}

/// A credentials file (`nats_creds_file`: a user JWT and its seed) logs
/// in to nodes in operator mode that trust the JWT's operator; a user of
/// another operator, or none, is refused, and neither the JWT nor the seed
/// is printed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_logs_in_with_a_nats_creds_file() {
    let operator = Operator::new();
    let cluster = NatsCluster::start_with_config(&operator.server_config()).await;
    let (right, wrong) = (operator.user_creds(), Operator::new().user_creds());
    let var = "STEVEDORE_NATS_CREDS_FILE";
    logs_in_only_with_files(&cluster, var, &right, &wrong).await;
}

/// Nodes that serve their clients over TLS: the broker trusts them through
/// `nats_tls_ca_file` (with `nats_require_tls`), and without that CA it
/// refuses to start (the system roots do not know a private CA).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_reaches_tls_nodes_through_nats_tls_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::self_signed(certs.path());
    let tls = format!("tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n}}\n");
    let cluster = NatsCluster::start_with_config(&tls).await;
    let dir = tempfile::tempdir().unwrap();
    let err = match cluster.start_broker(dir.path(), 1, "tls", &[]).await {
        Ok(_) => panic!("a broker trusted nodes whose CA it was not given"),
        Err(e) => e,
    };
    assert!(
        err.contains("TLS settings"),
        "the refusal says what to check: {err}"
    );

    let ca = cert.to_str().unwrap();
    let trusted = [
        ("STEVEDORE_NATS_TLS_CA_FILE", ca),
        ("STEVEDORE_NATS_REQUIRE_TLS", "true"),
    ];
    let broker = cluster
        .start_broker(dir.path(), 2, "tls", &trusted)
        .await
        .unwrap_or_else(|e| panic!("with the CA: {e}"));
    publishes_the_first_event(&broker).await;
}

/// Nodes that verify their clients' certificates (`verify: true` against
/// a private client CA): a broker without `nats_tls_cert`/`nats_tls_key`
/// is refused, one with a certificate that CA signed connects and
/// publishes.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_broker_presents_its_client_certificate_to_nodes_that_verify() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::self_signed(certs.path());
    let (client_ca, client_cert, client_key) = crate::support::client_certificate(certs.path());
    let tls = format!(
        "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n  ca_file: {client_ca:?}\n  verify: true\n}}\n"
    );
    let cluster = NatsCluster::start_with_config(&tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.to_str().unwrap();
    let without = [("STEVEDORE_NATS_TLS_CA_FILE", ca)];
    let err = match cluster.start_broker(dir.path(), 1, "mtls", &without).await {
        Ok(_) => panic!("nodes that verify client certificates took a broker without one"),
        Err(e) => e,
    };
    assert!(
        err.contains("TLS settings"),
        "the refusal says what to check: {err}"
    );

    let with = [
        ("STEVEDORE_NATS_TLS_CA_FILE", ca),
        ("STEVEDORE_NATS_TLS_CERT", client_cert.to_str().unwrap()),
        ("STEVEDORE_NATS_TLS_KEY", client_key.to_str().unwrap()),
    ];
    let broker = cluster
        .start_broker(dir.path(), 2, "mtls", &with)
        .await
        .unwrap_or_else(|e| panic!("with the client certificate: {e}"));
    publishes_the_first_event(&broker).await;
}
