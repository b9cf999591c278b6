//! The leases brokers hold in cluster mode, read from the cluster as the
//! brokers write them: who delivers an endpoint, how the delivery shards
//! are shared.

use std::time::{Duration, Instant};

use stevedore::{
    model::EndpointId,
    store::{
        delivery_lease, delivery_shard,
        jetstream::{LeaseConfig, Leases},
        DELIVERY_SHARDS, LEASE_TTL, PRIMARY_LEASE,
    },
};

use super::{
    nats::{patiently, NatsCluster},
    Server,
};

/// The leases bucket of installation `prefix`, as the brokers open it.
pub async fn leases_of(cluster: &NatsCluster, prefix: &str) -> Leases {
    let client = cluster.connect().await;
    let config = LeaseConfig {
        ttl: LEASE_TTL,
        ..LeaseConfig::with_prefix(prefix)
    };
    patiently(|| Leases::open(&client, config.clone()))
        .await
        .expect("the leases bucket")
}

/// Which of `brokers` the lease `lease` names, if one holds it.
pub async fn holder_of(leases: &Leases, lease: &str, brokers: &[Server]) -> Option<usize> {
    let url = leases.holder(lease).await.unwrap()?;
    let at = brokers
        .iter()
        .position(|b| url == format!("http://{}", b.addr));
    Some(at.unwrap_or_else(|| panic!("lease {lease} names {url}, not a broker of this test")))
}

/// Which of `brokers` delivers endpoint `id` of installation `prefix`: the
/// one its delivery shard's lease names (waiting up to 30 s for one).
pub async fn deliverer_of(
    cluster: &NatsCluster,
    prefix: &str,
    brokers: &[Server],
    id: &str,
) -> usize {
    let leases = leases_of(cluster, prefix).await;
    let lease = delivery_lease(delivery_shard(&EndpointId::new(id)));
    for _ in 0..300 {
        if let Some(at) = holder_of(&leases, &lease, brokers).await {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no broker took {lease} within 30 s");
}

/// How many delivery shards each of `brokers` holds, once the counts are
/// `want` (waiting up to `within`).
pub async fn shards_become(
    leases: &Leases,
    brokers: &[Server],
    want: &[usize],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let mut counts = vec![0; brokers.len()];
    while start.elapsed() < within {
        counts = vec![0; brokers.len()];
        for shard in 0..DELIVERY_SHARDS {
            if let Some(at) = holder_of(leases, &delivery_lease(shard), brokers).await {
                counts[at] += 1;
            }
        }
        if counts == want {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the brokers hold {counts:?} delivery shards, not {want:?}, after {within:?}");
}

/// Which of `brokers` is the primary of installation `prefix`: the one
/// the primary lease names (waiting up to 10 s for one).
pub async fn primary_of(cluster: &NatsCluster, prefix: &str, brokers: &[Server]) -> usize {
    let leases = leases_of(cluster, prefix).await;
    for _ in 0..100 {
        if let Some(at) = holder_of(&leases, PRIMARY_LEASE, brokers).await {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no broker took the primary lease within 10 s");
}
