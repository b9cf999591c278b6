//! What runs where: the reads that answer at once (the data directory, or
//! this broker's copy of the cluster), what runs on the embedded backend
//! only, and the cluster's leases (the primary broker).

use super::{jetstream, Backend, Local, Store};
use crate::error::{Error, Result};

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

    /// In cluster mode, the gRPC address of the primary broker (the holder
    /// of [`PRIMARY_LEASE`]), if one holds it; `None` in embedded mode.
    pub async fn primary(&self) -> Result<Option<String>> {
        match self.leases() {
            Some(leases) => Ok(leases.holder(PRIMARY_LEASE).await?),
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

/// What a subsystem that runs on the embedded backend only answers in
/// cluster mode: `what` (e.g. "migrating") names it.
fn not_in_cluster(what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "{what} not available in cluster mode (backend = \"jetstream\"): it runs on the \
         embedded backend only"
    ))
}
