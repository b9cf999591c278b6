//! Singleton leases (`store::jetstream::Leases`) on a real 3-node
//! nats-server cluster: two contenders, one holds; when it stops renewing
//! the other takes over after the TTL, and the old holder's renewal with
//! its stale revision fails.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::time::Duration;

use stevedore::store::jetstream::{LeaseConfig, Leases, Renewal};

use crate::support::nats::{patiently, NatsCluster};

/// The holder of "retention" as `leases` reads it, waiting a moment for
/// `expected`: reads are direct gets any replica answers, and one may lag.
async fn holder_seen(leases: &Leases, expected: &str) -> String {
    let mut holder = None;
    for _ in 0..20 {
        holder = leases.holder("retention").await.unwrap();
        if holder.as_deref() == Some(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_lease_goes_to_one_contender_and_over_after_the_ttl() {
    let cluster = NatsCluster::start().await;
    let config = LeaseConfig {
        ttl: Duration::from_secs(2),
        ..LeaseConfig::with_prefix("l1")
    };
    // Two clients, as two brokers.
    let (client_a, client_b) = (cluster.connect().await, cluster.connect().await);
    let a = patiently(|| Leases::open(&client_a, config.clone()))
        .await
        .expect("open a");
    let b = patiently(|| Leases::open(&client_b, config.clone()))
        .await
        .expect("open b");

    let (got_a, got_b) = tokio::join!(
        a.try_acquire("retention", "broker-a"),
        b.try_acquire("retention", "broker-b")
    );
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    assert!(
        got_a.is_some() != got_b.is_some(),
        "exactly one wins: {got_a:?} {got_b:?}"
    );
    // From here on, `first` holds it and `second` waits.
    let (first, second, mut held, second_name) = match got_a {
        Some(lease) => (a, b, lease, "broker-b"),
        None => (b, a, got_b.unwrap(), "broker-a"),
    };
    assert_eq!(holder_seen(&second, &held.holder).await, held.holder);
    assert!(second
        .try_acquire("retention", second_name)
        .await
        .unwrap()
        .is_none());
    let before = held.revision;
    assert_eq!(first.renew(&mut held).await.unwrap(), Renewal::Kept);
    assert!(held.revision > before, "a renewal moves the fencing token");

    // The holder stops renewing: the other gets it once the TTL passed.
    let mut taken = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(lease) = second.try_acquire("retention", second_name).await.unwrap() {
            taken = Some(lease);
            break;
        }
    }
    let mut taken = taken.expect("the lease never expired");
    assert!(taken.revision > held.revision, "fencing tokens grow");
    assert_eq!(holder_seen(&first, second_name).await, second_name);

    // The old holder learns it lost the lease; its stale release changes
    // nothing.
    let stale = held.clone();
    assert_eq!(first.renew(&mut held).await.unwrap(), Renewal::Lost);
    assert_eq!(held, stale, "a lost renewal leaves the lease as it was");
    assert!(first.release(stale).await.is_err());
    assert_eq!(second.renew(&mut taken).await.unwrap(), Renewal::Kept);

    // Released, it is free without waiting for the TTL (as soon as the
    // replica answering the contender's read has seen the release).
    second.release(taken).await.expect("release");
    let mut again = None;
    for _ in 0..10 {
        again = first.try_acquire("retention", "again").await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a released lease stays taken");
}
