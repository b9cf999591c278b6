//! The cluster backend's durability check against a real 3-node nats-server
//! cluster: it accepts nodes that sync every write, refuses (saying how to
//! fix it) nodes on the server's default periodic sync, and refuses a check
//! that left a cluster member out.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster`.

use stevedore::store::jetstream::{check_durability, PreflightError};

use crate::support::nats::{NatsCluster, Sync};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_preflight_accepts_sync_always_and_wants_every_node() {
    let cluster = NatsCluster::start().await;
    let urls = cluster.monitoring_urls();

    let durability = check_durability(&urls)
        .await
        .expect("a synced cluster passes");
    let mut names: Vec<_> = durability
        .nodes
        .iter()
        .map(|n| n.server_name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert!(durability.nodes.iter().all(|n| n.sync_always));

    // A node left out could run without syncing: the check says which.
    match check_durability(&urls[..2]).await {
        Err(PreflightError::Unchecked { missing }) => assert_eq!(missing, ["n3"]),
        other => panic!("two of three nodes checked: {other:?}"),
    }
    match check_durability(&[]).await {
        Err(PreflightError::NoMonitoringUrls) => {}
        other => panic!("no URL: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_preflight_refuses_periodic_sync_and_says_how_to_fix_it() {
    let cluster = NatsCluster::start_with(Sync::Default).await;

    let err = check_durability(&cluster.monitoring_urls())
        .await
        .expect_err("a cluster on the default sync is refused");
    let PreflightError::Unsynced { nodes } = &err else {
        panic!("expected Unsynced, got {err:?}");
    };
    let mut names: Vec<_> = nodes.iter().map(|n| n.server_name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let text = err.to_string();
    assert!(
        text.contains("set `sync_interval: always` in the `jetstream { }` block"),
        "{text}"
    );
    // The server's default interval is reported as it is (two minutes).
    assert!(text.contains("(every 2m)"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_preflight_names_a_node_it_cannot_reach() {
    let mut cluster = NatsCluster::start().await;
    let urls = cluster.monitoring_urls();
    cluster.kill("n2");

    match check_durability(&urls).await {
        Err(PreflightError::Unreachable { url, .. }) => assert_eq!(url, urls[1]),
        other => panic!("n2 is down: {other:?}"),
    }
}
