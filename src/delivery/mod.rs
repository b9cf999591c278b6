//! Webhook delivery: endpoints, their workers, and the operations on them.
//!
//! A webhook endpoint is a durable consumer (`crate::consumer`) whose client
//! is the delivery stack: the consumer keeps the endpoint's position and
//! hands events out and back; [`worker`] turns them into signed HTTP
//! attempts with per-key ordering and a durable retry schedule. This module
//! owns the endpoint records and starts, restarts and stops one worker per
//! enabled endpoint. Endpoint changes are serialised by one lock.

mod admin_ops;
pub mod classify;
pub mod client_auth;
pub mod egress;
pub mod endpoint;
pub mod envelope;
mod erasure;
pub mod limit;
pub mod oauth;
pub(crate) mod ops;
pub mod proxy;
mod recovery;
pub mod request;
pub mod sealing;
pub mod shared;
pub mod signing;
pub mod stack;
pub mod stats;
pub mod worker;

pub use admin_ops::{endpoint_body, DeliveryQuery, HeaderEdits};
pub use recovery::{Recovered, RECOVER_LIMIT};

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Config,
    consumer::{Consumers, CreateSpec},
    convert,
    error::{Error, Result},
    metrics::Metrics,
    model::{EventFilter, Offset},
    pb::{self, DeliveryState},
    store::{StateWrites, Store},
    tenant::{self, Scope},
};
use egress::Guard;
use endpoint::{from_nanos, EndpointRecord, EndpointSpec};
use shared::Shared;
use signing::Secret;
use stack::{Keys, SharedKeys};
use worker::{WorkerContext, WorkerView};

/// Messages from workers to the manager.
#[derive(Debug)]
pub enum Control {
    /// Disable the endpoint (410 Gone, or failing too long).
    Disable {
        /// Which endpoint.
        endpoint_id: String,
        /// Shown as `disabled_reason`.
        reason: String,
    },
    /// The first failure after a success (or ever).
    Failing {
        /// Which endpoint.
        endpoint_id: String,
        /// When it began.
        since: SystemTime,
    },
    /// The first success after failures.
    Recovered {
        /// Which endpoint.
        endpoint_id: String,
        /// When the failures began.
        failing_since: SystemTime,
    },
    /// A delivery failed `failing_event_after` times.
    DeliveryFailing {
        /// Which endpoint.
        endpoint_id: String,
        /// Which event.
        offset: Offset,
        /// Its record after the attempt.
        record: pb::Delivery,
    },
    /// A delivery was dead-lettered.
    Exhausted {
        /// Which endpoint.
        endpoint_id: String,
        /// Which event.
        offset: Offset,
        /// Its final record.
        record: pb::Delivery,
    },
}

struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    keys: SharedKeys,
}

/// The endpoints of this broker and their workers.
pub struct Deliveries {
    store: Store,
    consumers: Arc<Consumers>,
    config: Arc<Config>,
    /// Recently read events with their bodies, for every worker.
    shared: Arc<Shared>,
    /// The SSRF policy every endpoint's client connects under.
    guard: Guard,
    /// TLS settings for HTTPS receivers (roots, ALPN set per client).
    tls: Arc<rustls::ClientConfig>,
    /// What each running worker shows Admin (kept apart from `workers`, so
    /// listing never waits for an endpoint change).
    views: std::sync::Mutex<HashMap<String, Arc<WorkerView>>>,
    /// Endpoint changes hold this while they write and (re)start workers.
    workers: tokio::sync::Mutex<HashMap<String, Running>>,
    control: mpsc::UnboundedSender<Control>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    /// Every finished attempt's delivery record, for live views (the
    /// console); sent only while someone listens.
    outcomes: tokio::sync::broadcast::Sender<pb::Delivery>,
}

/// The consumer behind an endpoint. `@` cannot appear in gRPC consumer
/// names, so the two never collide.
fn consumer_name(endpoint_id: &str) -> String {
    format!("@endpoint:{endpoint_id}")
}

impl Deliveries {
    /// The delivery record after every attempt from now on, on every
    /// endpoint. A slow listener misses records (`Lagged`), never slows
    /// delivery.
    pub fn watch_outcomes(&self) -> tokio::sync::broadcast::Receiver<pb::Delivery> {
        self.outcomes.subscribe()
    }

    /// Loads every endpoint and starts the enabled ones' workers.
    pub async fn start(
        store: Store,
        consumers: Arc<Consumers>,
        config: Arc<Config>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Arc<Self>> {
        let (control, mut control_rx) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            store,
            consumers,
            shared: Arc::new(Shared::new(config.shared_events)),
            guard: Guard::new(&config.allow_networks),
            tls,
            config,
            workers: Default::default(),
            views: Default::default(),
            control,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            metrics,
            outcomes: tokio::sync::broadcast::channel(256).0,
        });
        let key = this.config.master_key.as_ref();
        let mut records = Vec::new();
        // Migration: with a key, records still in the clear (written before
        // it was configured) are sealed now, before delivery starts.
        let mut to_seal = StateWrites::new();
        for v in this.store.endpoints().all() {
            let v = v?;
            // Fails, naming master_key_file, when a record is sealed and
            // the configured key (or its absence) cannot open it.
            let r = EndpointRecord::from_stored(&v, key)?;
            if key.is_some() && !EndpointRecord::is_sealed(&v) {
                to_seal.put_endpoint(&r.endpoint().id, r.to_stored(key));
            }
            records.push(r);
        }
        if !to_seal.is_empty() {
            let n = to_seal.len();
            this.store.write_state(to_seal).await?;
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
        let mut misfits = Vec::new();
        {
            let mut workers = this.workers.lock().await;
            for r in &records {
                match EndpointSpec::from_pb(r.endpoint(), &this.config) {
                    Ok(spec) if spec.enabled => this.spawn_worker(&mut workers, r, spec).await?,
                    Ok(_) => {}
                    // Stored under another configuration (allow_http since
                    // turned off, max_endpoint_headers lowered, ...): the
                    // broker still starts, with the endpoint disabled and
                    // the setting named, so it can be fixed through the
                    // Admin API (UpdateEndpoint, then enable).
                    Err(Error::InvalidArgument { field, message }) => {
                        let id = r.endpoint().id.clone();
                        let reason = format!(
                            "endpoint {id} does not fit the broker's configuration: {field}: \
                             {message}; fix it with UpdateEndpoint, then enable it"
                        );
                        tracing::warn!(
                            endpoint = %id,
                            %reason,
                            "endpoint disabled at start: it does not fit the configuration"
                        );
                        let e = r.endpoint();
                        if e.enabled != Some(false) || e.disabled_reason != reason {
                            this.modify(&id, |r| {
                                let e = r.endpoint.as_mut().expect("stored with endpoint");
                                e.enabled = Some(false);
                                e.disabled_reason = reason.clone();
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
            this.publish_ops(
                ops::ENDPOINT_DISABLED,
                &id,
                ops::fields([
                    ("endpointId", ops::s(&id)),
                    ("url", ops::s(&origin)),
                    ("reason", ops::s(&reason)),
                    ("disabledAt", ops::time(SystemTime::now())),
                ]),
            )
            .await?;
        }
        // The dead-letter gauges start from what is on disk.
        for (id, dead) in this.store.deliveries().dead_per_endpoint()? {
            this.metrics.dead.add(&id, dead);
        }
        tracing::info!(endpoints = records.len(), "webhook delivery started");
        let manager = this.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(msg) = control_rx.recv() => manager.handle(msg).await,
                }
            }
            // Stop every worker: in-flight attempts are aborted and will be
            // sent again after the restart.
            let mut workers = manager.workers.lock().await;
            for (_, running) in workers.drain() {
                running.cancel.cancel();
                let _ = running.handle.await;
            }
        });
        Ok(this)
    }

    async fn handle(&self, msg: Control) {
        let result = match msg {
            Control::Disable {
                endpoint_id,
                reason,
            } => self.disable(&endpoint_id, &reason).await,
            Control::Failing { endpoint_id, since } => {
                let _workers = self.workers.lock().await;
                self.modify(&endpoint_id, |r| {
                    r.endpoint
                        .as_mut()
                        .expect("stored with endpoint")
                        .failing_since = Some(convert::timestamp(since));
                    Ok(())
                })
                .await
                .map(drop)
            }
            Control::Recovered {
                endpoint_id,
                failing_since,
            } => {
                let _workers = self.workers.lock().await;
                match self
                    .modify(&endpoint_id, |r| {
                        r.endpoint
                            .as_mut()
                            .expect("stored with endpoint")
                            .failing_since = None;
                        Ok(())
                    })
                    .await
                {
                    Ok(r) => {
                        let e = r.endpoint();
                        self.publish_ops(
                            ops::ENDPOINT_RECOVERED,
                            &endpoint_id,
                            ops::fields([
                                ("endpointId", ops::s(&endpoint_id)),
                                ("url", ops::s(&endpoint::origin_of(&e.url))),
                                ("failingSince", ops::time(failing_since)),
                                ("recoveredAt", ops::time(SystemTime::now())),
                            ]),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            Control::DeliveryFailing {
                endpoint_id,
                offset,
                record,
            } => {
                self.publish_ops(
                    ops::DELIVERY_FAILING,
                    &endpoint_id,
                    ops::delivery_fields(&endpoint_id, offset, &record),
                )
                .await
            }
            Control::Exhausted {
                endpoint_id,
                offset,
                record,
            } => {
                self.publish_ops(
                    ops::DELIVERY_EXHAUSTED,
                    &endpoint_id,
                    ops::delivery_fields(&endpoint_id, offset, &record),
                )
                .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "handling a worker report failed");
        }
    }

    async fn disable(&self, endpoint_id: &str, reason: &str) -> Result<()> {
        let mut workers = self.workers.lock().await;
        let r = self.record(&Scope::Global, endpoint_id)?;
        if r.endpoint().enabled == Some(false) {
            return Ok(()); // already (reports can race)
        }
        let r = self
            .modify(endpoint_id, |r| {
                let e = r.endpoint.as_mut().expect("stored with endpoint");
                e.enabled = Some(false);
                e.disabled_reason = reason.to_owned();
                Ok(())
            })
            .await?;
        stop_worker(&mut workers, endpoint_id).await;
        tracing::warn!(endpoint = %endpoint_id, %reason, "endpoint disabled");
        drop(workers);
        self.publish_ops(
            ops::ENDPOINT_DISABLED,
            endpoint_id,
            ops::fields([
                ("endpointId", ops::s(endpoint_id)),
                ("url", ops::s(&endpoint::origin_of(&r.endpoint().url))),
                ("reason", ops::s(reason)),
                ("disabledAt", ops::time(SystemTime::now())),
            ]),
        )
        .await
    }

    /// Appends one of the broker's own events to the log.
    async fn publish_ops(
        &self,
        event_type: &'static str,
        endpoint_id: &str,
        data: prost_types::Struct,
    ) -> Result<()> {
        // A tenant's endpoint's events belong to that tenant, so its own
        // subscribers and endpoints can take them.
        let tenant = self
            .record(&Scope::Global, endpoint_id)
            .map(|r| r.endpoint().tenant.clone())
            .unwrap_or_default();
        let event = ops::event(event_type, endpoint_id, &tenant, data);
        self.store.append(vec![event]).await.map(drop)
    }

    async fn spawn_worker(
        &self,
        workers: &mut HashMap<String, Running>,
        record: &EndpointRecord,
        spec: EndpointSpec,
    ) -> Result<()> {
        let id = record.endpoint().id.clone();
        stop_worker(workers, &id).await;
        let consumer = self.consumers.get(&consumer_name(&id))?;
        consumer.set_filter(spec.filter.clone());
        let keys = Arc::new(RwLock::new(keys_of(record)));
        let view = Arc::new(WorkerView::default());
        // One client (connection pool) per endpoint: a slow endpoint's
        // connections never queue another's requests.
        let client = stack::http_client(
            spec.max_in_flight as usize,
            self.guard.clone(),
            &self.tls_for(&spec),
            spec.route.clone(),
        );
        let service = stack::build(
            client,
            spec.max_in_flight,
            spec.rate,
            self.tokens_for(&spec),
        );
        let ctx = WorkerContext {
            endpoint_id: id.clone(),
            spec,
            keys: keys.clone(),
            service,
            consumer,
            store: self.store.clone(),
            shared: self.shared.clone(),
            config: self.config.clone(),
            control: self.control.clone(),
            view: view.clone(),
            failing_since: record
                .endpoint()
                .failing_since
                .as_ref()
                .and_then(|t| convert::system_time("failing_since", t).ok()),
            metrics: self.metrics.clone(),
            broker_shutdown: self.shutdown.clone(),
            outcomes: self.outcomes.clone(),
        };
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), view);
        let cancel = self.shutdown.child_token();
        let handle = self.tasks.spawn(worker::run(ctx, cancel.clone()));
        workers.insert(
            id,
            Running {
                cancel,
                handle,
                keys,
            },
        );
        Ok(())
    }

    /// Creates an endpoint; returns it and its secret (shown only now).
    pub async fn create(
        &self,
        scope: &Scope,
        mut endpoint: pb::Endpoint,
    ) -> Result<(pb::Endpoint, String)> {
        endpoint.tenant = scope.assign("endpoint.tenant", &endpoint.tenant)?;
        tenant::check_known(&self.config.tenants, "endpoint.tenant", &endpoint.tenant)?;
        let spec = EndpointSpec::from_pb(&endpoint, &self.config)?;
        endpoint::refuse_what_never_matches(&endpoint, &|_| true)?;
        endpoint::check_egress(&spec.url, &self.guard)?;
        if let Some(o) = &spec.oauth2 {
            endpoint::check_egress_of("endpoint.oauth2.token_url", &o.token_url, &self.guard)?;
        }
        let mut workers = self.workers.lock().await;
        if self.store.endpoints().count()? >= self.config.max_endpoints {
            return Err(Error::ResourceExhausted(format!(
                "the broker already has max_endpoints ({}) endpoints",
                self.config.max_endpoints
            )));
        }
        self.check_tenant_endpoints(&endpoint.tenant)?;
        let start = match &endpoint.start {
            None | Some(pb::endpoint::Start::StartLatest(_)) => self.store.head(),
            Some(pb::endpoint::Start::StartEarliest(_)) => self.store.first_offset()?,
            Some(pb::endpoint::Start::StartOffset(o)) => {
                convert::start_offset("endpoint.start_offset", *o, self.store.head())?.max(1)
            }
            Some(pb::endpoint::Start::StartTime(t)) => self
                .store
                .offset_at_time(convert::system_time("endpoint.start_time", t)?)?,
        };
        let now = convert::timestamp(SystemTime::now());
        let id = format!("ep_{}", ulid::Ulid::new());
        endpoint.id = id.clone();
        endpoint.enabled = Some(spec.enabled);
        endpoint.created_at = Some(now);
        endpoint.updated_at = Some(now);
        endpoint.disabled_reason.clear();
        endpoint.backlog = 0;
        let secret = Secret::generate();
        let record = EndpointRecord {
            endpoint: Some(endpoint),
            secret: secret.as_bytes().to_vec(),
            ..Default::default()
        };
        // The consumer first: an endpoint record always has its consumer.
        self.consumers
            .open(
                &consumer_name(&id),
                CreateSpec {
                    start,
                    // With its tenant from the start: a disabled endpoint's
                    // consumer (no worker sets its filter) never takes, nor
                    // expires, another tenant's events.
                    filter: spec.filter.clone(),
                    // The endpoint's retry schedule decides when to give up.
                    max_deliveries: 0,
                },
            )
            .await?;
        self.put_record(&record).await?;
        let origin = endpoint::url_origin(&spec.url);
        if spec.enabled {
            self.spawn_worker(&mut workers, &record, spec).await?;
        }
        tracing::info!(endpoint = %id, %origin, start, "endpoint created");
        Ok((self.view(&record), secret.reveal()))
    }

    /// One endpoint (without secrets).
    pub fn get(&self, scope: &Scope, id: &str) -> Result<pb::Endpoint> {
        Ok(self.view(&self.record(scope, id)?))
    }

    /// The scope's endpoints in id order, after `after` (a page token).
    pub fn list(
        &self,
        scope: &Scope,
        page_size: usize,
        after: &str,
    ) -> Result<(Vec<pb::Endpoint>, String)> {
        let mut out = Vec::new();
        for v in self.store.endpoints().after(after) {
            let v = v?;
            let record = self.decode_record(&v)?;
            if !scope.sees(&record.endpoint().tenant) {
                continue;
            }
            out.push(self.view(&record));
            if out.len() > page_size {
                break;
            }
        }
        let next = if out.len() > page_size {
            out.truncate(page_size);
            out.last().map(|e| e.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// Applies `fields` of `update` and restarts the worker with the new
    /// configuration.
    pub async fn update(
        &self,
        scope: &Scope,
        update: pb::Endpoint,
        fields: &[String],
    ) -> Result<pb::Endpoint> {
        self.update_with(scope, update, fields, &HeaderEdits::default())
            .await
    }

    /// [`Deliveries::update`], plus custom header changes by name.
    pub async fn update_with(
        &self,
        scope: &Scope,
        update: pb::Endpoint,
        fields: &[String],
        headers: &HeaderEdits,
    ) -> Result<pb::Endpoint> {
        // Field-mask paths name proto fields; JSON clients write camelCase.
        let fields: Vec<String> = fields.iter().map(|f| snake_case(f)).collect();
        let fields = fields.as_slice();
        let mut workers = self.workers.lock().await;
        let mut record = self.record(scope, &update.id)?;
        let mut e = record.endpoint().clone();
        let was_enabled = e.enabled != Some(false);
        merge(&mut e, update, fields)?;
        if !headers.is_empty() && fields.iter().any(|f| f == "headers") {
            return Err(Error::invalid(
                "set_headers",
                "use either the `headers` path of update_mask or set_headers/remove_headers",
            ));
        }
        headers.apply(&mut e.headers)?;
        let spec = EndpointSpec::from_pb(&e, &self.config)?;
        endpoint::refuse_what_never_matches(&e, &|name| fields.iter().any(|f| f == name))?;
        if spec.enabled && !was_enabled && e.failing_since.is_some() {
            // Re-enabled: still failing until a success (which announces the
            // recovery), but the auto-disable clock starts again.
            e.failing_since = Some(convert::timestamp(SystemTime::now()));
        }
        if fields.iter().any(|f| f == "url") {
            endpoint::check_egress(&spec.url, &self.guard)?;
        }
        if let Some(o) = &spec.oauth2 {
            if fields.iter().any(|f| f.starts_with("oauth2")) {
                endpoint::check_egress_of("endpoint.oauth2.token_url", &o.token_url, &self.guard)?;
            }
        }
        if spec.enabled {
            e.disabled_reason.clear();
        }
        e.enabled = Some(spec.enabled);
        e.updated_at = Some(convert::timestamp(SystemTime::now()));
        record.endpoint = Some(e);
        self.put_record(&record).await?;
        let id = record.endpoint().id.clone();
        if spec.enabled {
            self.spawn_worker(&mut workers, &record, spec).await?;
        } else {
            stop_worker(&mut workers, &id).await;
        }
        tracing::info!(endpoint = %id, "endpoint updated");
        Ok(self.view(&record))
    }

    /// Deletes an endpoint, its consumer and its delivery records.
    pub async fn delete(&self, scope: &Scope, id: &str) -> Result<()> {
        let mut workers = self.workers.lock().await;
        self.record(scope, id)?;
        stop_worker(&mut workers, id).await;
        self.store.endpoints().delete(id).await?;
        self.consumers.remove(&consumer_name(id)).await?;
        self.store.deliveries().delete_endpoint(id).await?;
        self.metrics.dead.remove(id);
        self.metrics.endpoint_stats.remove(id);
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.metrics.deliveries.remove_first(id);
        tracing::info!(endpoint = %id, "endpoint deleted");
        Ok(())
    }

    /// A new secret; the old one keeps signing for `grace`.
    pub async fn rotate_secret(
        &self,
        scope: &Scope,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<(String, SystemTime)> {
        let workers = self.workers.lock().await;
        self.record(scope, id)?;
        let grace = grace.unwrap_or(self.config.secret_rotation_grace);
        let secret = Secret::generate();
        let until = SystemTime::now() + grace;
        let record = self
            .modify(id, |r| {
                r.previous_secret = std::mem::take(&mut r.secret);
                r.previous_expires_nanos = crate::store::unix_nanos(until);
                r.secret = secret.as_bytes().to_vec();
                Ok(())
            })
            .await?;
        if let Some(running) = workers.get(id) {
            *running.keys.write().unwrap_or_else(|p| p.into_inner()) = keys_of(&record);
        }
        tracing::info!(endpoint = %id, ?grace, "endpoint secret rotated");
        Ok((secret.reveal(), until))
    }

    /// Why endpoint `id` did or did not get the event at `offset`.
    pub fn explain(
        &self,
        scope: &Scope,
        id: &str,
        offset: Offset,
    ) -> Result<pb::ExplainEventResponse> {
        let record = self.record(scope, id)?;
        let event = scope.event(&self.store, offset)?;
        let mut out = pb::ExplainEventResponse {
            offset,
            event_type: event.event_type.to_string(),
            ..Default::default()
        };
        let spec = EndpointSpec::from_pb(record.endpoint(), &self.config)?;
        if let Some(why) = spec.filter.exclusion(&event) {
            out.reason = why;
            return Ok(out);
        }
        if let Some(condition) = &spec.condition {
            let body = crate::webhook::render_body(&event.event)
                .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
            let json: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
            if !condition.matches(&json) {
                out.reason = format!(
                    "the filter `{}` does not hold for this event's body",
                    condition.source()
                );
                return Ok(out);
            }
        }
        out.matches = true;
        let delivery = self.store.deliveries().get(id, offset)?;
        let floor = self.consumers.get(&consumer_name(id))?.floor();
        out.reason = match &delivery {
            Some(d) => format!(
                "selected; its delivery is {}",
                d.state()
                    .as_str_name()
                    .trim_start_matches("DELIVERY_STATE_")
            ),
            None if offset < floor => {
                "selected, but the endpoint starts after it (created later, or replayed \
                 from a later offset)"
                    .to_owned()
            }
            None if !spec.enabled => "selected; waiting: the endpoint is disabled".to_owned(),
            None => "selected; waiting to be sent".to_owned(),
        };
        out.delivery = delivery.map(|mut d| {
            d.endpoint_id = id.to_owned();
            d.offset = offset;
            d.webhook_id = signing::webhook_id(&d.event_id).into_owned();
            d
        });
        Ok(out)
    }

    /// Delivery records, newest first, optionally of one state.
    pub fn list_deliveries(
        &self,
        scope: &Scope,
        id: &str,
        state: Option<DeliveryState>,
        page_size: usize,
        before: Option<Offset>,
    ) -> Result<(Vec<pb::Delivery>, Option<Offset>)> {
        let q = DeliveryQuery {
            state,
            ..DeliveryQuery::all()
        };
        self.query_deliveries(scope, id, &q, page_size, before)
    }

    /// Every attempt of one delivery, oldest first.
    pub fn list_attempts(
        &self,
        scope: &Scope,
        id: &str,
        offset: Offset,
    ) -> Result<Vec<pb::Attempt>> {
        self.record(scope, id)?;
        self.store.deliveries().attempts(id, offset)
    }

    /// Sends a failed or dead delivery again now, with a fresh schedule.
    pub async fn retry_delivery(
        &self,
        scope: &Scope,
        id: &str,
        offset: Offset,
    ) -> Result<pb::Delivery> {
        let _workers = self.workers.lock().await;
        self.record(scope, id)?;
        let mut d = self.store.deliveries().get(id, offset)?.ok_or_else(|| {
            Error::NotFound(format!("endpoint {id} has no delivery at offset {offset}"))
        })?;
        match d.state() {
            DeliveryState::Failed | DeliveryState::Dead => {}
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "delivery {offset} is {}; only failed or dead deliveries can be retried",
                    s.as_str_name()
                )))
            }
        }
        let was_dead = d.state() == DeliveryState::Dead;
        if was_dead {
            self.metrics.dead.add(id, -1);
        }
        // A fresh schedule, due now.
        d.state = DeliveryState::Pending as i32;
        d.attempts = 0;
        d.next_attempt_at = None;
        self.store.deliveries().put(id, offset, &d).await?;
        let consumer = self.consumers.get(&consumer_name(id))?;
        if was_dead {
            consumer.reopen(offset).await?;
        } else {
            // Waiting in the consumer: make it due now.
            consumer.nack(&[offset], Duration::ZERO)?;
        }
        d.endpoint_id = id.to_owned();
        d.offset = offset;
        d.webhook_id = signing::webhook_id(&d.event_id).into_owned();
        Ok(d)
    }

    /// Delivers everything from `from` on again.
    pub async fn replay(&self, scope: &Scope, id: &str, from: Offset) -> Result<Offset> {
        let _workers = self.workers.lock().await;
        self.record(scope, id)?;
        let from = convert::start_offset("offset", from, self.store.head())?
            .max(self.store.first_offset()?);
        self.consumers.get(&consumer_name(id))?.rewind(from).await?;
        tracing::info!(endpoint = %id, from, "endpoint replay");
        Ok(from)
    }

    /// The TLS settings of an endpoint's client: the broker's, presenting
    /// the endpoint's client certificate if it has one.
    fn tls_for(&self, spec: &EndpointSpec) -> Arc<rustls::ClientConfig> {
        match &spec.client_auth {
            Some(auth) => Arc::new(auth.apply(&self.tls)),
            None => self.tls.clone(),
        }
    }

    /// The endpoint's OAuth2 tokens, if it has OAuth2: fetched through its
    /// egress (the SSRF guard, its proxy route, its TLS settings) on a
    /// client of their own, cached for as long as its stack runs (an
    /// update or a restart starts afresh).
    fn tokens_for(&self, spec: &EndpointSpec) -> Option<Arc<oauth::Tokens>> {
        let creds = spec.oauth2.clone()?;
        let client = stack::http_client(
            2,
            self.guard.clone(),
            &self.tls_for(spec),
            spec.route.clone(),
        );
        Some(Arc::new(oauth::Tokens::new(creds, client)))
    }

    /// Sends one signed test request now; nothing is stored.
    pub async fn send_test(&self, scope: &Scope, id: &str) -> Result<(String, pb::Attempt, bool)> {
        let record = self.record(scope, id)?;
        let spec = EndpointSpec::from_pb(record.endpoint(), &self.config)?;
        let msg_id = format!("test_{}", ulid::Ulid::new());
        let now = convert::timestamp(SystemTime::now());
        let event = pb::Event {
            id: msg_id.clone(),
            occurred_at: Some(now),
            payload: Some(pb::event::Payload::Custom(pb::CustomEvent {
                r#type: "stevedore.test".into(),
                data: Some(prost_types::Struct {
                    fields: [
                        ("endpointId".to_string(), string_value(id)),
                        ("message".to_string(), string_value("stevedore test event")),
                    ]
                    .into_iter()
                    .collect(),
                }),
            })),
            ..Default::default()
        };
        let body = crate::webhook::render_body(&event)
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        let body = if spec.envelope {
            envelope::wrap("stevedore.test", event.occurred_at.as_ref(), &body).to_vec()
        } else {
            body
        };
        let request = stack::WebhookRequest {
            uri: spec.url.clone(),
            msg_id: msg_id.clone(),
            headers: stack::base_headers("stevedore.test", &msg_id, &spec.headers),
            body: body.into(),
            timeout: spec.timeout_for("stevedore.test", &self.config),
            keys: Arc::new(RwLock::new(keys_of(&record))),
        };
        let client = stack::http_client(
            1,
            self.guard.clone(),
            &self.tls_for(&spec),
            spec.route.clone(),
        );
        let started = SystemTime::now();
        let clock = std::time::Instant::now();
        let service = stack::build(client, 1, None, self.tokens_for(&spec));
        let result = stack::send(service, request).await;
        let latency = clock.elapsed();
        let delivered = classify::classify(&result, self.config.max_retry_after)
            == classify::Verdict::Delivered;
        Ok((
            msg_id,
            worker::attempt_record(1, started, latency, &result),
            delivered,
        ))
    }

    /// Every endpoint id.
    fn endpoint_ids(&self) -> Result<Vec<String>> {
        self.store.endpoints().ids()
    }

    /// Records every undelivered event below `cutoff` as dead (`expired`)
    /// for each endpoint that has not delivered it, before retention
    /// removes them. Events a worker holds are left to the worker.
    pub async fn expire_before(&self, cutoff: Offset) -> Result<()> {
        for id in self.endpoint_ids()? {
            let Ok(consumer) = self.consumers.get(&consumer_name(&id)) else {
                continue;
            };
            if consumer.floor() >= cutoff {
                continue;
            }
            let filter = consumer.filter();
            let expired = consumer.expire_below(cutoff);
            for chunk in expired.chunks(4096) {
                let mut writes = StateWrites::new();
                for &offset in chunk {
                    let Some(event) = self.store.get(offset)? else {
                        continue;
                    };
                    if !filter.matches(&event) {
                        continue;
                    }
                    let record = pb::Delivery {
                        event_id: event.event.id.clone(),
                        event_type: event.event_type.to_string(),
                        state: DeliveryState::Dead as i32,
                        last_error: "expired".into(),
                        ..Default::default()
                    };
                    writes.put_delivery(&id, offset, &record);
                }
                if !writes.is_empty() {
                    let n = writes.len();
                    self.store.write_state(writes).await?;
                    self.metrics.dead.add(&id, n as i64);
                    self.metrics.deliveries.add(&[&id, "expired"], n as u64);
                    tracing::warn!(endpoint = %id, expired = n, "undelivered events expired");
                }
            }
            consumer.save().await?;
        }
        Ok(())
    }

    /// Deletes delivered and superseded records (with their attempts) of
    /// events below `first`, the oldest event still in the log.
    pub async fn prune_records(&self, first: Offset) -> Result<()> {
        for id in self.endpoint_ids()? {
            self.store.deliveries().prune(&id, first).await?;
        }
        Ok(())
    }

    /// Per endpoint: id, backlog, dead records, enabled — for metrics.
    pub fn endpoint_gauges(&self) -> Result<Vec<(String, u64, i64, bool)>> {
        let head = self.store.head();
        self.store
            .endpoints()
            .all()
            .map(|v| {
                let r = self.decode_record(&v?)?;
                let e = r.endpoint();
                let backlog = self.backlog(e, head);
                Ok((
                    e.id.clone(),
                    backlog,
                    self.metrics.dead.get(&e.id),
                    e.enabled != Some(false),
                ))
            })
            .collect()
    }

    /// The one lookup of an endpoint: another tenant's is `NOT_FOUND`,
    /// exactly like one that does not exist.
    fn record(&self, scope: &Scope, id: &str) -> Result<EndpointRecord> {
        if id.is_empty() {
            return Err(Error::invalid("id", "required"));
        }
        let not_found = || Error::NotFound(format!("endpoint {id:?} does not exist"));
        let bytes = self.store.endpoints().get(id)?.ok_or_else(not_found)?;
        let record = self.decode_record(&bytes)?;
        scope.check(&record.endpoint().tenant, not_found)?;
        Ok(record)
    }

    /// Deletes every endpoint of `tenant` with its delivery records and
    /// attempts (tenant erasure); returns how many.
    pub async fn erase_tenant(&self, tenant: &str) -> Result<u64> {
        let mut ids = Vec::new();
        for v in self.store.endpoints().all() {
            let r = self.decode_record(&v?)?;
            if r.endpoint().tenant == tenant {
                ids.push(r.endpoint().id.clone());
            }
        }
        for id in &ids {
            self.delete(&Scope::Global, id).await?;
        }
        Ok(ids.len() as u64)
    }

    /// `tenant_max_endpoints`: refuses one more endpoint for `tenant`.
    fn check_tenant_endpoints(&self, tenant: &str) -> Result<()> {
        let max = self.config.tenant_max_endpoints;
        if tenant.is_empty() || max == 0 {
            return Ok(());
        }
        let mut n = 0;
        for v in self.store.endpoints().all() {
            if self.decode_record(&v?)?.endpoint().tenant == tenant {
                n += 1;
            }
        }
        if n >= max {
            return Err(Error::ResourceExhausted(format!(
                "tenant {tenant:?} already has tenant_max_endpoints ({max}) endpoints"
            )));
        }
        Ok(())
    }

    fn decode_record(&self, bytes: &[u8]) -> Result<EndpointRecord> {
        EndpointRecord::from_stored(bytes, self.config.master_key.as_ref())
    }

    /// Writes `r`, sealed when a master key is configured.
    async fn put_record(&self, r: &EndpointRecord) -> Result<()> {
        self.store
            .endpoints()
            .put(
                &r.endpoint().id,
                r.to_stored(self.config.master_key.as_ref()),
            )
            .await
    }

    async fn modify(
        &self,
        id: &str,
        f: impl FnOnce(&mut EndpointRecord) -> Result<()>,
    ) -> Result<EndpointRecord> {
        let mut r = self.record(&Scope::Global, id)?;
        f(&mut r)?;
        if let Some(e) = r.endpoint.as_mut() {
            e.updated_at = Some(convert::timestamp(SystemTime::now()));
        }
        self.put_record(&r).await?;
        Ok(r)
    }

    /// The endpoint as shown to operators: header values redacted (they are
    /// often credentials), backlog filled in.
    fn with_backlog(&self, mut e: pb::Endpoint) -> pb::Endpoint {
        for v in e.headers.values_mut() {
            *v = REDACTED.to_owned();
        }
        if !e.client_key_pem.is_empty() {
            e.client_key_pem = REDACTED.to_owned();
        }
        if let Some(o) = e.oauth2.as_mut() {
            oauth::redact(o);
        }
        e.backlog = self.backlog(&e, self.store.head());
        e
    }

    /// What `e` has still to deliver below `head` (0 if that cannot be
    /// read): its consumer's unfinished events that its types and
    /// attribute filters pass (whether or not it is paused).
    fn backlog(&self, e: &pb::Endpoint, head: Offset) -> u64 {
        let filter = match EndpointSpec::from_pb(e, &self.config) {
            Ok(spec) => spec.filter,
            Err(_) => EventFilter::default(),
        };
        self.consumers
            .get(&consumer_name(&e.id))
            .and_then(|c| c.backlog(head, &filter))
            .unwrap_or(0)
    }
}

async fn stop_worker(workers: &mut HashMap<String, Running>, id: &str) {
    if let Some(running) = workers.remove(id) {
        running.cancel.cancel();
        let _ = running.handle.await;
    }
}

impl Deliveries {
    /// An endpoint as the API shows it: its backlog, and while a rotated-out
    /// secret is still accepted, until when.
    fn view(&self, record: &EndpointRecord) -> pb::Endpoint {
        let mut e = self.with_backlog(record.endpoint().clone());
        if let Some((_, until)) = keys_of(record).previous {
            if until > SystemTime::now() {
                e.previous_secret_expires_at = Some(convert::timestamp(until));
            }
        }
        e
    }
}

fn keys_of(r: &EndpointRecord) -> Keys {
    Keys {
        current: Secret::from_bytes(r.secret.clone()),
        previous: (!r.previous_secret.is_empty()).then(|| {
            (
                Secret::from_bytes(r.previous_secret.clone()),
                from_nanos(r.previous_expires_nanos),
            )
        }),
    }
}

fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
    }
}

/// For `stevedore reseal`: a stored endpoint record in the clear, sealed
/// with `key` (`None`: already sealed). A sealed record must open with
/// `key`, or the whole reseal stops before anything changes.
pub fn reseal_value(value: &[u8], key: &sealing::MasterKey) -> Result<Option<Vec<u8>>> {
    if EndpointRecord::is_sealed(value) {
        EndpointRecord::from_stored(value, Some(key))?;
        return Ok(None);
    }
    Ok(Some(
        EndpointRecord::from_stored(value, None)?.to_stored(Some(key)),
    ))
}

/// Shown instead of custom header values.
pub const REDACTED: &str = "<redacted>";

/// The settable fields, by field-mask path.
const SETTABLE: &[&str] = &[
    "url",
    "description",
    "event_types",
    "attribute_filters",
    "headers",
    "timeout",
    "retry_schedule",
    "max_in_flight",
    "ordering",
    "enabled",
    "coalesce",
    "filter",
    "fields",
    "rate_limit",
    "rate_burst",
    // #19 egress
    "proxy_url",
    "client_cert_pem",
    "client_key_pem",
    "envelope",
    "oauth2",
    "oauth2.token_url",
    "oauth2.client_id",
    "oauth2.client_secret",
    "oauth2.scopes",
    "oauth2.audience",
];

/// `eventTypes` → `event_types`; snake_case stays as it is.
fn snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Copies the `fields` of `from` into `into`.
fn merge(into: &mut pb::Endpoint, from: pb::Endpoint, fields: &[String]) -> Result<()> {
    let mut oauth2 = oauth::OAuth2Update::default();
    for (i, f) in fields.iter().enumerate() {
        if oauth2.apply(f, &mut into.oauth2, from.oauth2.as_ref(), i)? {
            continue;
        }
        match f.as_str() {
            "url" => into.url = from.url.clone(),
            "description" => into.description = from.description.clone(),
            "event_types" => into.event_types = from.event_types.clone(),
            "attribute_filters" => into.attribute_filters = from.attribute_filters.clone(),
            "headers" => into.headers = from.headers.clone(),
            "timeout" => into.timeout = from.timeout,
            "retry_schedule" => into.retry_schedule = from.retry_schedule.clone(),
            "max_in_flight" => into.max_in_flight = from.max_in_flight,
            "ordering" => into.ordering = from.ordering,
            "enabled" => into.enabled = Some(from.enabled.unwrap_or(true)),
            "coalesce" => into.coalesce = from.coalesce,
            "filter" => into.filter = from.filter.clone(),
            "fields" => into.fields = from.fields.clone(),
            "rate_limit" => into.rate_limit = from.rate_limit,
            "rate_burst" => into.rate_burst = from.rate_burst,
            "tenant" => {
                return Err(Error::invalid(
                    "endpoint.tenant",
                    "is fixed when the endpoint is created and cannot be updated",
                ))
            }
            "proxy_url" => into.proxy_url = from.proxy_url.clone(),
            "client_cert_pem" => into.client_cert_pem = from.client_cert_pem.clone(),
            "client_key_pem" => into.client_key_pem = from.client_key_pem.clone(),
            "envelope" => into.envelope = from.envelope,
            other => {
                return Err(Error::invalid(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{other:?} cannot be updated (settable, in snake_case or camelCase: {}; \
                         to move the start, use ReplayEndpoint)",
                        SETTABLE.join(", ")
                    ),
                ))
            }
        }
    }
    oauth2.finish(&into.oauth2)
}
