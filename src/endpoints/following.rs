//! Endpoint records to workers in cluster mode: each broker looks at the
//! records (written by whichever broker an Admin call reached, followed by
//! every broker's state copy) every tick of `super::sharing`, and starts,
//! restarts or stops the workers of the endpoints it delivers whose
//! configuration changed since they started, that appeared or went, or
//! whose shard came to it or left it. A worker its own Admin call just
//! started is left alone: a restart would send its in-flight events again.
//! Calls that move an endpoint's consumer run on its deliverer only
//! ([`Endpoints::require_delivering`]).

use std::collections::HashSet;

use super::Endpoints;
use crate::{
    delivery::endpoint::{consumer_name, EndpointRecord, EndpointSpec},
    error::{Error, Result},
    model::{endpoint::Endpoint, EndpointId},
};

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

impl Endpoints {
    /// Starts, restarts or stops workers for the endpoint records that
    /// changed since their worker started (on this broker, by an Admin call
    /// or an earlier look), that appeared or went, or whose shard came to
    /// this broker or left it. With `hand_over` (this broker gave the
    /// shards up), the workers of the endpoints that left let their
    /// attempts on the wire finish first ([`crate::delivery::supervisor::Supervisor::hand_over`]);
    /// otherwise (a lease lost: the next deliverer may have started) they
    /// stop at once.
    pub(super) async fn follow_records(&self, hand_over: bool) -> Result<()> {
        let mut workers = self.supervisor.lock().await;
        let mut seen = HashSet::new();
        // Running workers whose shard went to another broker.
        let mut moved = Vec::new();
        for v in self.store.endpoints().all() {
            let r = self.decode_record(&v?)?;
            let id = r.endpoint.id.clone();
            // Enabled, but its shard is another broker's now.
            let mut elsewhere = false;
            let spec = match EndpointSpec::validate(&r.endpoint, &self.config) {
                Ok(spec) if spec.enabled && self.supervisor.delivers(&id) => Some(spec),
                Ok(spec) => {
                    elsewhere = spec.enabled;
                    None
                }
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
                (Some(_), None) if elsewhere && hand_over => moved.push(id.clone()),
                (Some(_), None) => self.supervisor.stop(&mut workers, &id).await,
                (None, None) => {}
            }
            seen.insert(id);
        }
        // All at once: each lets its attempts on the wire finish first.
        self.supervisor.hand_over(&mut workers, &moved).await;
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

    /// Whether this broker may move endpoint `id`'s consumer: always in
    /// embedded mode; in cluster mode only while it delivers the endpoint,
    /// since the delivering broker's worker holds the consumer's position.
    pub(super) async fn require_delivering(&self, id: &EndpointId) -> Result<()> {
        if self.supervisor.delivers(id) {
            return Ok(());
        }
        let holder = self.store.deliverer(id).await.ok().flatten();
        Err(Error::FailedPrecondition(match holder {
            Some(h) => format!(
                "in cluster mode this call runs on the broker that delivers endpoint {id}: send \
                 it to {h}"
            ),
            None => format!(
                "in cluster mode this call runs on the broker that delivers endpoint {id}, and \
                 none does at the moment (a takeover is under way): try again in a few seconds"
            ),
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
