//! The primary broker in cluster mode: one broker at a time, the holder of
//! the installation's primary lease, runs every endpoint's worker and
//! serves the named durable consumers (other brokers forward those calls,
//! `crate::api::forward`).
//!
//! Every broker contends for the lease ([`PRIMARY_LEASE`], in the leases
//! bucket, lasting [`LEASE_TTL`](crate::store::LEASE_TTL) past its last
//! renewal). The holder renews it every [`RENEW_EVERY`]; it stops its
//! workers and ends its consumer streams as soon as a renewal says the
//! lease is lost, or when the lease's validity on its own clock is about to
//! run out without a renewal, so two brokers never act as primary at once
//! (as long as clocks run at one rate). At shutdown it gives the lease
//! up, so another broker takes over at once; when the holder dies, another
//! takes over once the lease expired on the cluster: within about
//! `LEASE_TTL` plus a few seconds.
//!
//! Endpoint records are written by whichever broker an Admin call reached;
//! every broker's state copy follows them. The holder looks at them every
//! [`TICK`] and starts, restarts or stops workers whose configuration
//! changed since they started (a worker the holder's own Admin call just
//! started is left alone: a restart would send its in-flight events
//! again). A worker that starts (after a takeover, or a change) reads its
//! consumer's position and its delivery records from the state, as a
//! worker does at a broker's start: what was in flight on the old holder is
//! sent again, with the same `webhook-id`.
//!
//! Calls that move an endpoint's consumer (replay, retry, recover, resend)
//! run on the holder only; another broker answers `FAILED_PRECONDITION`
//! naming it ([`Endpoints::require_delivering`]).

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::Endpoints;
use crate::{
    delivery::endpoint::{consumer_name, EndpointRecord, EndpointSpec},
    error::{Error, Result},
    model::{endpoint::Endpoint, EndpointId},
    store::{
        jetstream::{Lease, Leases, Renewal},
        PRIMARY_LEASE,
    },
};

/// How often a contender asks for the lease, and the holder looks at the
/// endpoint records.
const TICK: Duration = Duration::from_secs(1);
/// How often the holder renews.
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// What of an endpoint record makes its worker restart when it changes:
/// everything but the times and reasons its own worker's reports stamp.
#[derive(PartialEq)]
struct Fingerprint {
    endpoint: Endpoint,
    secret: Vec<u8>,
    previous_secret: Vec<u8>,
    previous_expires_nanos: u64,
}

impl Fingerprint {
    fn of(r: &EndpointRecord) -> Self {
        let mut endpoint = r.endpoint.clone();
        endpoint.updated_at = None;
        endpoint.failing_since = None;
        endpoint.disabled_reason.clear();
        Self {
            endpoint,
            secret: r.secret.clone(),
            previous_secret: r.previous_secret.clone(),
            previous_expires_nanos: r.previous_expires_nanos,
        }
    }
}

/// Contends for the primary lease until shutdown, delivering while this
/// broker holds it.
pub(super) async fn deliver_while_leased(this: Arc<Endpoints>) {
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
        tracing::info!(%holder, "this broker is the primary now: it delivers webhooks and serves named durable consumers");
        this.consumers.set_serving(true);
        this.supervisor.set_active(true);
        let given_up = this.deliver(leases, lease).await;
        this.supervisor.set_active(false);
        this.supervisor.stop_all().await;
        this.consumers.set_serving(false);
        if let Some(lease) = given_up {
            // Shutting down: the next holder need not wait for expiry.
            if let Err(e) = leases.release(lease).await {
                tracing::warn!(error = %e, "could not give the primary lease up; it expires on its own");
            }
            return;
        }
        tracing::warn!(
            "this broker lost the primary lease: its webhook workers and consumer streams stopped"
        );
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

impl Endpoints {
    /// Runs the workers under `lease` until it is lost (`None`) or the
    /// broker shuts down (the lease, to give up).
    async fn deliver(&self, leases: &Leases, mut lease: Lease) -> Option<Lease> {
        let shutdown = self.supervisor.shutdown().clone();
        let mut renew_at = Instant::now() + RENEW_EVERY;
        loop {
            // Stop before the lease may be another's, on this clock.
            if Instant::now() + TICK >= lease.valid_until {
                return None;
            }
            if let Err(e) = self.follow_records().await {
                tracing::warn!(error = %e, "starting webhook workers from the endpoint records");
            }
            tokio::select! {
                () = shutdown.cancelled() => return Some(lease),
                () = tokio::time::sleep(TICK) => {}
            }
            if Instant::now() >= renew_at {
                match leases.renew(&mut lease).await {
                    Ok(Renewal::Kept) => renew_at = Instant::now() + RENEW_EVERY,
                    Ok(Renewal::Lost) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the primary lease failed; trying again")
                    }
                }
            }
        }
    }

    /// Starts, restarts or stops workers for the endpoint records that
    /// changed since their worker started (on this broker, by an Admin call
    /// or an earlier look), or that appeared or went.
    async fn follow_records(&self) -> Result<()> {
        let mut workers = self.supervisor.lock().await;
        let mut seen = HashSet::new();
        for v in self.store.endpoints().all() {
            let r = self.decode_record(&v?)?;
            let id = r.endpoint.id.clone();
            let spec = match EndpointSpec::validate(&r.endpoint, &self.config) {
                Ok(spec) if spec.enabled => Some(spec),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(endpoint = %id, error = %e, "not delivering: the endpoint does not fit this broker's configuration");
                    None
                }
            };
            let running = self
                .supervisor
                .started_with(&workers, &id)
                .map(Fingerprint::of);
            match (running, spec) {
                (Some(old), Some(_)) if old == Fingerprint::of(&r) => {}
                (_, Some(spec)) => self.supervisor.start(&mut workers, &r, spec).await?,
                (Some(_), None) => self.supervisor.stop(&mut workers, &id).await,
                (None, None) => {}
            }
            seen.insert(id);
        }
        let gone: Vec<EndpointId> = workers
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.supervisor.stop(&mut workers, &id).await;
            self.consumers.forget(&consumer_name(&id));
        }
        Ok(())
    }

    /// Whether this broker may move endpoints' consumers: always in
    /// embedded mode; in cluster mode only while it delivers, since the
    /// delivering broker's workers hold the consumers' positions.
    pub(super) async fn require_delivering(&self) -> Result<()> {
        if !self.store.is_cluster() || self.supervisor.is_active() {
            return Ok(());
        }
        let holder = self.store.primary().await.ok().flatten();
        Err(Error::FailedPrecondition(match holder {
            Some(h) => format!(
                "in cluster mode this call runs on the broker that delivers webhooks: send it to \
                 {h}"
            ),
            None => "in cluster mode this call runs on the broker that delivers webhooks, and \
                     none does at the moment (a takeover is under way): try again in a few \
                     seconds"
                .to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_own_reports_do_not_restart_it() {
        let mut r = EndpointRecord::default();
        let before = Fingerprint::of(&r);
        r.endpoint.failing_since = Some(std::time::SystemTime::now());
        r.endpoint.updated_at = Some(std::time::SystemTime::now());
        r.endpoint.disabled_reason = "failing".into();
        assert!(Fingerprint::of(&r) == before);
        r.endpoint.url = "https://example.test/hook".into();
        assert!(Fingerprint::of(&r) != before);
        let rotated = EndpointRecord {
            secret: vec![1],
            ..Default::default()
        };
        assert!(Fingerprint::of(&rotated) != before);
    }
}
