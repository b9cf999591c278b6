//! The primary broker in cluster mode: one broker at a time, the holder of
//! the installation's primary lease, serves the named durable consumers
//! (other brokers forward those calls, `crate::api::forward`) and runs
//! retention. Webhook delivery is shared between all brokers by shard
//! (`super::sharing`), not tied to this lease.
//!
//! Every broker contends for the lease ([`PRIMARY_LEASE`], in the leases
//! bucket, lasting [`LEASE_TTL`](crate::store::LEASE_TTL) past its last
//! renewal). The holder renews it every [`RENEW_EVERY`]; it ends its
//! consumer streams as soon as a renewal says the lease is lost, or when
//! the lease's validity on its own clock is about to run out without a
//! renewal, so two brokers never act as primary at once (as long as clocks
//! run at one rate). At shutdown it gives the lease up, so another broker
//! takes over at once; when the holder dies, another takes over once the
//! lease expired on the cluster: within about `LEASE_TTL` plus a few
//! seconds.

use std::sync::Arc;

use tokio::time::Instant;

use super::{
    sharing::{RENEW_EVERY, TICK},
    Endpoints,
};
use crate::store::{
    jetstream::{Lease, Leases, Renewal},
    PRIMARY_LEASE,
};

/// Contends for the primary lease until shutdown, serving named consumers
/// while this broker holds it.
pub(super) async fn serve_while_leased(this: Arc<Endpoints>) {
    let shutdown = this.supervisor.shutdown().clone();
    let Some(leases) = this.store.leases() else {
        return;
    };
    let holder = this.broker.clone();
    loop {
        let lease = tokio::select! {
            () = shutdown.cancelled() => return,
            lease = acquire(leases, &holder) => lease,
        };
        tracing::info!(%holder, "this broker is the primary now: it serves named durable consumers and runs retention");
        this.consumers.set_serving(true);
        let given_up = hold(leases, lease, &shutdown).await;
        this.consumers.set_serving(false);
        if let Some(lease) = given_up {
            // Shutting down: the next holder need not wait for expiry.
            if let Err(e) = leases.release(lease).await {
                tracing::warn!(error = %e, "could not give the primary lease up; it expires on its own");
            }
            return;
        }
        tracing::warn!("this broker lost the primary lease: its named consumer streams ended");
    }
}

/// Asks for the lease every [`TICK`] until it is this broker's.
async fn acquire(leases: &Leases, holder: &str) -> Lease {
    loop {
        match leases.try_acquire(PRIMARY_LEASE, holder).await {
            Ok(Some(lease)) => return lease,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "asking for the primary lease failed"),
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Renews `lease` until it is lost (`None`) or the broker shuts down (the
/// lease, to give up).
async fn hold(
    leases: &Leases,
    mut lease: Lease,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Lease> {
    loop {
        // Stop before the lease may be another's, on this clock.
        let renew_at = (Instant::now() + RENEW_EVERY).min(lease.valid_until - TICK);
        tokio::select! {
            () = shutdown.cancelled() => return Some(lease),
            () = tokio::time::sleep_until(renew_at) => {}
        }
        if Instant::now() + TICK >= lease.valid_until {
            return None;
        }
        match leases.renew(&mut lease).await {
            Ok(Renewal::Kept) => {}
            Ok(Renewal::Lost) => return None,
            Err(e) => tracing::warn!(error = %e, "renewing the primary lease failed; trying again"),
        }
    }
}
