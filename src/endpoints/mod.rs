//! Webhook endpoints: their stored records and every operation on them.
//!
//! [`Endpoints`] is the broker's one handle on its webhook endpoints. It
//! owns the endpoint records (over the typed state, `Store::endpoints`),
//! each endpoint's durable consumer (created and removed with it), and,
//! through the [`Supervisor`], the endpoint's delivery worker: every change
//! to an endpoint holds the supervisor's lock while it writes the record and
//! starts, restarts or stops the worker, so endpoint changes are serialised.
//!
//! The operations are split by job:
//! - [`lifecycle`]: create, get, list, update, delete, rotate the secret,
//!   replay; [`edits`]: header edits by name (the update mask is merged at
//!   the edge, `convert::endpoint::mask`);
//! - [`probe`]: a signed test request, and why an event was (not) sent;
//! - [`queries`]: listing deliveries and attempts;
//! - [`resend`]: retrying one delivery, re-sending one event, rendering the
//!   request a delivery sends; [`recovery`]: retrying many, counting a replay;
//! - [`reports`]: acting on what the workers report (disable, failing,
//!   recovered, dead-lettered) and the broker's own events about it;
//! - [`erasure`]: tenant erasure on the delivery side;
//! - [`gauges`]: the per-endpoint gauges for `/metrics`.
//!
//! Retention's part (recording expired events dead, pruning records) is in
//! `crate::retention`.

mod edits;
pub mod erasure;
mod following;
pub mod gauges;
mod lifecycle;
mod primary;
mod probe;
pub mod queries;
pub mod recovery;
mod reports;
mod resend;
mod sharing;

pub use edits::HeaderEdits;
pub use queries::DeliveryQuery;
pub use recovery::{Recovered, RECOVER_LIMIT};

use std::{sync::Arc, time::SystemTime};

use crate::{
    config::Config,
    consumer::Consumers,
    delivery::{
        endpoint::{self, consumer_name, EndpointRecord, EndpointSpec},
        ops,
        supervisor::{DeliveryDeps, Supervisor},
    },
    error::{Error, Result},
    metrics::Metrics,
    model::{
        delivery::DeliveryRecord,
        endpoint::{Endpoint, EndpointView},
        EndpointId, EventFilter, Offset,
    },
    store::{StateWrites, Store},
    tenant::Scope,
};

/// The endpoints of this broker, their consumers and their workers.
pub struct Endpoints {
    store: Store,
    consumers: Arc<Consumers>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Starts and stops the workers; its lock serialises endpoint changes.
    supervisor: Supervisor,
    /// This broker's gRPC address, its name in the leases it holds.
    broker: String,
}

impl Endpoints {
    /// Loads every endpoint and starts the enabled ones' workers; the
    /// workers' reports are handled until `deps.shutdown`, then every
    /// worker is stopped.
    pub async fn start(deps: DeliveryDeps) -> Result<Arc<Self>> {
        let (store, consumers, config, metrics) = (
            deps.store.clone(),
            deps.consumers.clone(),
            deps.config.clone(),
            deps.metrics.clone(),
        );
        let broker = deps.broker.clone();
        let (supervisor, mut control_rx) = Supervisor::new(deps);
        let this = Arc::new(Self {
            store,
            consumers,
            config,
            metrics,
            supervisor,
            broker,
        });
        if !this.store.is_cluster() {
            let n = this.start_workers().await?;
            tracing::info!(endpoints = n, "webhook delivery started");
        }
        // The dead-letter gauges start from what is on disk.
        for (id, dead) in this.store.deliveries().dead_per_endpoint()? {
            this.metrics.dead.add(&id, dead);
        }
        let manager = this.clone();
        let shutdown = this.supervisor.shutdown().clone();
        this.supervisor.tasks().spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(msg) = control_rx.recv() => manager.handle(msg).await,
                }
            }
            manager.supervisor.stop_all().await;
        });
        if this.store.is_cluster() {
            // Workers run where their shard's lease is held; named
            // consumers and retention where the primary lease is.
            let tasks = this.supervisor.tasks();
            tasks.spawn(sharing::share_delivery(this.clone()));
            tasks.spawn(primary::serve_while_leased(this.clone()));
        }
        Ok(this)
    }

    /// Loads every endpoint and starts the enabled ones' workers; returns
    /// how many endpoints there are.
    async fn start_workers(&self) -> Result<usize> {
        let records = self.load().await?;
        let mut misfits = Vec::new();
        {
            let mut workers = self.supervisor.lock().await;
            for r in &records {
                match EndpointSpec::validate(&r.endpoint, &self.config) {
                    Ok(spec) if spec.enabled => {
                        self.supervisor.start(&mut workers, r, spec).await?
                    }
                    Ok(_) => {}
                    // Stored under another configuration (allow_http since
                    // turned off, max_endpoint_headers lowered, ...): the
                    // broker still starts, with the endpoint disabled and
                    // the setting named, so it can be fixed through the
                    // Admin API (UpdateEndpoint, then enable).
                    Err(Error::InvalidArgument { field, message }) => {
                        let id = r.endpoint.id.clone();
                        let reason = format!(
                            "endpoint {id} does not fit the broker's configuration: {field}: \
                             {message}; fix it with UpdateEndpoint, then enable it"
                        );
                        tracing::warn!(
                            endpoint = %id,
                            %reason,
                            "endpoint disabled at start: it does not fit the configuration"
                        );
                        let e = &r.endpoint;
                        if e.enabled || e.disabled_reason != reason {
                            self.modify(&id, |r| {
                                r.endpoint.enabled = false;
                                r.endpoint.disabled_reason = reason.clone();
                                Ok(())
                            })
                            .await?;
                            misfits.push((id, endpoint::origin_of(&e.url), reason));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for (id, origin, reason) in misfits {
            self.publish_ops(
                ops::ENDPOINT_DISABLED,
                &id,
                ops::fields([
                    ("endpointId", ops::s(id.as_str())),
                    ("url", ops::s(&origin)),
                    ("reason", ops::s(&reason)),
                    ("disabledAt", ops::time(SystemTime::now())),
                ]),
            )
            .await?;
        }
        Ok(records.len())
    }

    /// Every stored endpoint record. With a master key, records still in
    /// the clear (written before it was configured) are sealed now, before
    /// delivery starts.
    async fn load(&self) -> Result<Vec<EndpointRecord>> {
        let key = self.config.master_key.as_ref();
        let mut records = Vec::new();
        let mut to_seal = StateWrites::new();
        for v in self.store.endpoints().all() {
            let v = v?;
            // Fails, naming master_key_file, when a record is sealed and
            // the configured key (or its absence) cannot open it.
            let r = EndpointRecord::from_stored(&v, key)?;
            if key.is_some() && !EndpointRecord::is_sealed(&v) {
                to_seal.put_endpoint(&r.endpoint.id, r.to_stored(key));
            }
            records.push(r);
        }
        if !to_seal.is_empty() {
            let n = to_seal.len();
            self.store.write_state(to_seal).await?;
            tracing::warn!(
                endpoints = n,
                "encrypted stored endpoint secrets with the master key; their old plaintext \
                 copies may remain in the state store's files until `stevedore reseal` is run \
                 with the broker stopped"
            );
        } else if key.is_none() && !records.is_empty() {
            tracing::warn!(
                endpoints = records.len(),
                "endpoint signing secrets and custom header values are stored unencrypted; \
                 set master_key_file (or STEVEDORE_MASTER_KEY) to encrypt them at rest"
            );
        }
        Ok(records)
    }

    /// The delivery record after every attempt from now on, on every
    /// endpoint. A slow listener misses records (`Lagged`), never slows
    /// delivery.
    pub fn watch_outcomes(&self) -> tokio::sync::broadcast::Receiver<DeliveryRecord> {
        self.supervisor.watch_outcomes()
    }

    /// Every endpoint id.
    pub(crate) fn ids(&self) -> Result<Vec<EndpointId>> {
        Ok(self
            .store
            .endpoints()
            .ids()?
            .into_iter()
            .map(EndpointId::new)
            .collect())
    }

    /// Whether this broker runs endpoint `id`'s worker: always in embedded
    /// mode; in cluster mode while it holds the lease of the endpoint's
    /// delivery shard.
    pub fn delivers(&self, id: &EndpointId) -> bool {
        self.supervisor.delivers(id)
    }

    /// Whether this broker runs what one broker at a time runs (named
    /// durable consumers, retention): always in embedded mode; in cluster
    /// mode while it holds the primary lease.
    pub fn is_primary(&self) -> bool {
        self.consumers.is_serving()
    }

    /// Every durable consumer, for retention.
    pub(crate) fn consumers(&self) -> &Consumers {
        &self.consumers
    }

    /// The broker's metrics, for retention.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The one lookup of an endpoint: another tenant's is `NOT_FOUND`,
    /// exactly like one that does not exist.
    fn record(&self, scope: &Scope, id: &EndpointId) -> Result<EndpointRecord> {
        if id.as_str().is_empty() {
            return Err(Error::invalid("id", "required"));
        }
        let not_found = || Error::NotFound(format!("endpoint {id:?} does not exist"));
        let bytes = self.store.endpoints().get(id)?.ok_or_else(not_found)?;
        let record = self.decode_record(&bytes)?;
        scope.check(&record.endpoint.tenant, not_found)?;
        Ok(record)
    }

    fn decode_record(&self, bytes: &[u8]) -> Result<EndpointRecord> {
        EndpointRecord::from_stored(bytes, self.config.master_key.as_ref())
    }

    /// Writes `r`, sealed when a master key is configured.
    async fn put_record(&self, r: &EndpointRecord) -> Result<()> {
        self.store
            .endpoints()
            .put(&r.endpoint.id, r.to_stored(self.config.master_key.as_ref()))
            .await
    }

    /// Changes the stored record of `id` with `f` (any scope: callers
    /// checked it) and stamps `updated_at`.
    async fn modify(
        &self,
        id: &EndpointId,
        f: impl FnOnce(&mut EndpointRecord) -> Result<()>,
    ) -> Result<EndpointRecord> {
        let mut r = self.record(&Scope::Global, id)?;
        f(&mut r)?;
        r.endpoint.updated_at = Some(SystemTime::now());
        self.put_record(&r).await?;
        Ok(r)
    }

    /// An endpoint as the API shows it: header values and other secrets
    /// redacted (they are often credentials), its backlog, and while a
    /// rotated-out secret is still accepted, until when.
    fn view(&self, record: &EndpointRecord) -> EndpointView {
        let e = &record.endpoint;
        EndpointView {
            endpoint: e.redacted(),
            backlog: self.backlog(e, self.store.head()),
            previous_secret_expires_at: record
                .keys()
                .previous
                .map(|(_, until)| until)
                .filter(|until| *until > SystemTime::now()),
        }
    }

    /// What `e` has still to deliver below `head` (0 if that cannot be
    /// read): its consumer's unfinished events that its types and
    /// attribute filters pass (whether or not it is paused). On a broker
    /// that does not deliver `e` (cluster mode), read from the state each
    /// time: the deliverer moves the consumer.
    fn backlog(&self, e: &Endpoint, head: Offset) -> u64 {
        let filter = match EndpointSpec::validate(e, &self.config) {
            Ok(spec) => spec.filter,
            Err(_) => EventFilter::default(),
        };
        let name = consumer_name(&e.id);
        let backlog = if self.delivers(&e.id) {
            self.consumers
                .get(&name)
                .and_then(|c| c.backlog(head, &filter))
        } else {
            // Delivered by another broker (cluster mode): its position as
            // this broker's copy of the state has it now.
            self.consumers
                .snapshot(&name)
                .and_then(|c| c.ok_or_else(|| Error::NotFound(name.clone())))
                .and_then(|c| c.backlog(head, &filter))
        };
        backlog.unwrap_or(0)
    }
}
