//! What runs where: the reads that answer at once (the data directory, or
//! this broker's copy of the cluster), what runs on the embedded backend
//! only, and the cluster's leases (the primary broker, the delivery
//! shards).

use super::{jetstream, Backend, Local, Store};
use crate::{
    error::{Error, Result},
    model::EndpointId,
};

impl Store {
    /// The events and state tables for reads that must answer at once
    /// (under a lock, in a synchronous poll): durable consumers, webhook
    /// delivery, the admin queries, retention and erasure use them. On the
    /// cluster: this broker's copy, up to [`Store::head`].
    pub fn local(&self) -> Result<&Local> {
        match &self.inner.backend {
            Backend::Embedded(local) => Ok(local),
            Backend::Cluster(cluster) => Ok(&cluster.copy),
        }
    }

    /// The embedded backend, for what reads its files directly
    /// (`stevedore migrate`): `what` (e.g. "migrating") does not run on the
    /// cluster, and says so with `FAILED_PRECONDITION`.
    pub(crate) fn embedded(&self, what: &str) -> Result<&Local> {
        match &self.inner.backend {
            Backend::Embedded(local) => Ok(local),
            Backend::Cluster(_) => Err(not_in_cluster(what)),
        }
    }

    /// In cluster mode, the installation's leases: work that one broker
    /// at a time does (webhook delivery) is done by the holder of its
    /// lease, which lasts [`LEASE_TTL`](super::LEASE_TTL) past its last renewal.
    pub fn leases(&self) -> Option<&jetstream::Leases> {
        match &self.inner.backend {
            Backend::Embedded(_) => None,
            Backend::Cluster(cluster) => Some(&cluster.leases),
        }
    }

    /// In cluster mode, waits (up to [`CATCH_UP`]) until this broker's
    /// copy of the state holds every state write the cluster has stored by
    /// now, whichever broker made it; at once in embedded mode.
    pub async fn state_caught_up(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Cluster(cluster) => Ok(cluster.state.caught_up(CATCH_UP).await?),
        }
    }

    /// In cluster mode, waits (up to [`CATCH_UP`]) until this broker's
    /// copy of the log holds every event the stream has stored by now,
    /// whichever broker appended it (an append is answered once the quorum
    /// stored it, a moment before the copy holds it); at once in embedded
    /// mode.
    pub async fn log_caught_up(&self) -> Result<()> {
        let Backend::Cluster(cluster) = &self.inner.backend else {
            return Ok(());
        };
        let target = cluster.log.fresh_head().await?;
        let mut head = self.watch_head();
        let reached = tokio::time::timeout(CATCH_UP, head.wait_for(|h| *h >= target))
            .await
            .map(|r| r.map(|_| ()));
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(crate::error::Error::ShuttingDown),
            Err(_) => Err(crate::error::Error::Unavailable(format!(
                "this broker's copy of the cluster log did not reach offset {target} within \
                 {CATCH_UP:?}"
            ))),
        }
    }

    /// In cluster mode, the gRPC address of the primary broker (the holder
    /// of [`PRIMARY_LEASE`]), if one holds it; `None` in embedded mode.
    pub async fn primary(&self) -> Result<Option<String>> {
        match self.leases() {
            Some(leases) => Ok(leases.holder(PRIMARY_LEASE).await?),
            None => Ok(None),
        }
    }

    /// In cluster mode, the gRPC address of the broker that delivers
    /// endpoint `id`'s webhooks (the holder of its shard's lease,
    /// [`delivery_lease`]), if one holds it; `None` in embedded mode.
    pub async fn deliverer(&self, id: &EndpointId) -> Result<Option<String>> {
        match self.leases() {
            Some(leases) => Ok(leases.holder(&delivery_lease(delivery_shard(id))).await?),
            None => Ok(None),
        }
    }

    /// Whether the events are on a NATS JetStream cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.backend, Backend::Cluster(_))
    }
}

/// The lease whose holder, in cluster mode, is the primary broker: it
/// runs what one broker at a time runs (webhook delivery, named durable
/// consumers).
pub const PRIMARY_LEASE: &str = "primary";

/// How long [`Store::state_caught_up`] waits for the copy of the state.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// In cluster mode the endpoints are split into this many delivery
/// shards; the holder of a shard's lease runs the workers of its
/// endpoints, so each endpoint is delivered by one broker at a time and
/// the brokers share the endpoints between them.
pub const DELIVERY_SHARDS: u32 = 64;

/// The delivery shard of endpoint `id`: FNV-1a (64 bits) of its bytes,
/// modulo [`DELIVERY_SHARDS`]. Fixed, so every broker (of any version)
/// puts an endpoint in the same shard.
pub fn delivery_shard(id: &EndpointId) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_str().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(DELIVERY_SHARDS)) as u32
}

/// The name of delivery shard `shard`'s lease: `delivery-<shard>`.
pub fn delivery_lease(shard: u32) -> String {
    format!("{DELIVERY_LEASE_PREFIX}{shard}")
}

/// The delivery shard a lease name is of, if it is one's.
pub fn shard_of_lease(name: &str) -> Option<u32> {
    let n: u32 = name.strip_prefix(DELIVERY_LEASE_PREFIX)?.parse().ok()?;
    (n < DELIVERY_SHARDS).then_some(n)
}

const DELIVERY_LEASE_PREFIX: &str = "delivery-";

/// The name of the lease that says a broker takes part in delivery:
/// one per broker process (`broker` is its address, `started` tells two
/// runs at one address apart), so brokers can count each other and take
/// their share of the shards.
pub fn member_lease(broker: &str, started: u64) -> String {
    format!("{MEMBER_LEASE_PREFIX}{started}-{broker}")
}

/// Whether a lease name is a [`member_lease`].
pub fn is_member_lease(name: &str) -> bool {
    name.starts_with(MEMBER_LEASE_PREFIX)
}

const MEMBER_LEASE_PREFIX: &str = "member-";

/// What a subsystem that runs on the embedded backend only answers in
/// cluster mode: `what` (e.g. "migrating") names it.
fn not_in_cluster(what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "{what} not available in cluster mode (backend = \"jetstream\"): it runs on the \
         embedded backend only"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_fixed_and_spread() {
        // Fixed values: a broker of another build must agree.
        assert_eq!(delivery_shard(&EndpointId::new("")), 37); // 0xcbf29ce484222325 % 64
        assert_eq!(delivery_shard(&EndpointId::new("a")), 12); // 0xaf63dc4c8601ec8c % 64
        let mut seen = [0u32; DELIVERY_SHARDS as usize];
        for i in 0..6400 {
            seen[delivery_shard(&EndpointId::new(format!("ep-{i}"))) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn lease_names_come_back() {
        for shard in [0, 7, DELIVERY_SHARDS - 1] {
            assert_eq!(shard_of_lease(&delivery_lease(shard)), Some(shard));
        }
        assert_eq!(shard_of_lease(&delivery_lease(DELIVERY_SHARDS)), None);
        assert_eq!(shard_of_lease("delivery-x"), None);
        assert_eq!(shard_of_lease(PRIMARY_LEASE), None);
        let member = member_lease("http://127.0.0.1:5", 9);
        assert!(is_member_lease(&member) && shard_of_lease(&member).is_none());
        assert!(!is_member_lease(&delivery_lease(1)));
    }
}
