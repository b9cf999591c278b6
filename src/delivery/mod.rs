//! Webhook delivery: endpoints, their workers, and the operations on them.
//!
//! A webhook endpoint is a durable consumer (`crate::consumer`) whose client
//! is the delivery stack: the consumer keeps the endpoint's position and
//! hands events out and back; [`worker`] turns them into signed HTTP
//! attempts with per-key ordering and a durable retry schedule. This module
//! owns the endpoint records and starts, restarts and stops one worker per
//! enabled endpoint. Endpoint changes are serialised by one lock.

pub mod classify;
pub mod endpoint;
pub mod signing;
pub mod stack;
pub mod worker;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use prost::Message;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Config,
    consumer::{Consumers, CreateSpec},
    convert,
    error::{Error, Result},
    model::{EventFilter, Offset},
    pb::{self, DeliveryState},
    store::{scope, scoped_offset_key, Mutation, Store, Table},
};
use endpoint::{from_nanos, EndpointRecord, EndpointSpec};
use signing::Secret;
use stack::{Keys, SharedKeys};
use worker::{WorkerContext, WorkerView};

/// Messages from workers to the manager.
#[derive(Debug)]
pub enum Control {
    /// The receiver answered 410 Gone.
    Disable {
        /// Which endpoint.
        endpoint_id: String,
        /// Shown as `disabled_reason`.
        reason: String,
    },
}

struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    keys: SharedKeys,
    view: Arc<WorkerView>,
}

/// The endpoints of this broker and their workers.
pub struct Deliveries {
    store: Store,
    consumers: Arc<Consumers>,
    config: Arc<Config>,
    /// Endpoint changes hold this while they write and (re)start workers.
    workers: tokio::sync::Mutex<HashMap<String, Running>>,
    control: mpsc::UnboundedSender<Control>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The consumer behind an endpoint. `@` cannot appear in gRPC consumer
/// names, so the two never collide.
fn consumer_name(endpoint_id: &str) -> String {
    format!("@endpoint:{endpoint_id}")
}

impl Deliveries {
    /// Loads every endpoint and starts the enabled ones' workers.
    pub async fn start(
        store: Store,
        consumers: Arc<Consumers>,
        config: Arc<Config>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>> {
        let (control, mut control_rx) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            store,
            consumers,
            config,
            workers: Default::default(),
            control,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        });
        let records: Vec<EndpointRecord> = this
            .store
            .table(Table::Endpoints)
            .iter()
            .values()
            .map(|v| decode_record(&v?))
            .collect::<Result<_>>()?;
        {
            let mut workers = this.workers.lock().await;
            for r in &records {
                let spec = EndpointSpec::from_pb(r.endpoint(), &this.config)?;
                if spec.enabled {
                    this.spawn_worker(&mut workers, r, spec).await?;
                }
            }
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
        match msg {
            Control::Disable {
                endpoint_id,
                reason,
            } => {
                let mut workers = self.workers.lock().await;
                let result = self
                    .modify(&endpoint_id, |r| {
                        let e = r.endpoint.as_mut().expect("stored with endpoint");
                        e.enabled = Some(false);
                        e.disabled_reason = reason.clone();
                        Ok(())
                    })
                    .await;
                match result {
                    Ok(_) => {
                        stop_worker(&mut workers, &endpoint_id).await;
                        tracing::warn!(endpoint = %endpoint_id, %reason, "endpoint disabled");
                    }
                    Err(e) => {
                        tracing::error!(endpoint = %endpoint_id, error = %e, "disabling failed")
                    }
                }
            }
        }
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
        let client = stack::http_client(spec.max_in_flight as usize);
        let service = stack::build(client, spec.max_in_flight as usize);
        let ctx = WorkerContext {
            endpoint_id: id.clone(),
            spec,
            keys: keys.clone(),
            service,
            consumer,
            store: self.store.clone(),
            config: self.config.clone(),
            control: self.control.clone(),
            view: view.clone(),
        };
        let cancel = self.shutdown.child_token();
        let handle = self.tasks.spawn(worker::run(ctx, cancel.clone()));
        workers.insert(
            id,
            Running {
                cancel,
                handle,
                keys,
                view,
            },
        );
        Ok(())
    }

    /// Creates an endpoint; returns it and its secret (shown only now).
    pub async fn create(&self, mut endpoint: pb::Endpoint) -> Result<(pb::Endpoint, String)> {
        let spec = EndpointSpec::from_pb(&endpoint, &self.config)?;
        let mut workers = self.workers.lock().await;
        if self.store.table(Table::Endpoints).len() >= self.config.max_endpoints {
            return Err(Error::ResourceExhausted(format!(
                "the broker already has max_endpoints ({}) endpoints",
                self.config.max_endpoints
            )));
        }
        let start = match &endpoint.start {
            None | Some(pb::endpoint::Start::StartLatest(_)) => self.store.head(),
            Some(pb::endpoint::Start::StartEarliest(_)) => self.store.first_offset()?,
            Some(pb::endpoint::Start::StartOffset(o)) => (*o).max(1),
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
                    filter: EventFilter::default(),
                },
            )
            .await?;
        self.put_record(&record).await?;
        if spec.enabled {
            self.spawn_worker(&mut workers, &record, spec).await?;
        }
        tracing::info!(endpoint = %id, url = %record.endpoint().url, start, "endpoint created");
        Ok((
            self.with_backlog(record.endpoint().clone()),
            secret.reveal(),
        ))
    }

    /// One endpoint (without secrets).
    pub fn get(&self, id: &str) -> Result<pb::Endpoint> {
        Ok(self.with_backlog(self.record(id)?.endpoint().clone()))
    }

    /// Endpoints in id order, after `after` (a page token).
    pub fn list(&self, page_size: usize, after: &str) -> Result<(Vec<pb::Endpoint>, String)> {
        let tree = self.store.table(Table::Endpoints);
        let iter = if after.is_empty() {
            tree.iter()
        } else {
            let mut from = after.as_bytes().to_vec();
            from.push(0);
            tree.range(from..)
        };
        let mut out = Vec::new();
        for kv in iter.take(page_size + 1) {
            let (_, v) = kv?;
            out.push(self.with_backlog(decode_record(&v)?.endpoint().clone()));
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
    pub async fn update(&self, update: pb::Endpoint, fields: &[String]) -> Result<pb::Endpoint> {
        let mut workers = self.workers.lock().await;
        let mut record = self.record(&update.id)?;
        let mut e = record.endpoint().clone();
        merge(&mut e, update, fields)?;
        let spec = EndpointSpec::from_pb(&e, &self.config)?;
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
        Ok(self.with_backlog(record.endpoint().clone()))
    }

    /// Deletes an endpoint, its consumer and its delivery records.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let mut workers = self.workers.lock().await;
        self.record(id)?;
        stop_worker(&mut workers, id).await;
        self.store
            .write(vec![Mutation::delete(Table::Endpoints, id.as_bytes())])
            .await?;
        self.consumers.remove(&consumer_name(id)).await?;
        // Records in chunks, so one huge endpoint cannot make one huge batch.
        for table in [Table::Deliveries, Table::Attempts] {
            loop {
                let keys: Vec<_> = self
                    .store
                    .table(table)
                    .scan_prefix(scope(id))
                    .keys()
                    .take(10_000)
                    .collect::<std::result::Result<_, _>>()?;
                if keys.is_empty() {
                    break;
                }
                self.store
                    .write(
                        keys.into_iter()
                            .map(|k| Mutation::delete(table, k.to_vec()))
                            .collect(),
                    )
                    .await?;
            }
        }
        tracing::info!(endpoint = %id, "endpoint deleted");
        Ok(())
    }

    /// A new secret; the old one keeps signing for `grace`.
    pub async fn rotate_secret(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<(String, SystemTime)> {
        let workers = self.workers.lock().await;
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

    /// Delivery records, newest first, optionally of one state.
    pub fn list_deliveries(
        &self,
        id: &str,
        state: Option<DeliveryState>,
        page_size: usize,
        before: Option<Offset>,
    ) -> Result<(Vec<pb::Delivery>, Option<Offset>)> {
        self.record(id)?;
        let mut out: Vec<pb::Delivery> = Vec::new();
        // Held events not attempted yet have no record: list them as pending.
        let held: HashMap<Offset, worker::HeldView> = self
            .workers
            .try_lock()
            .ok()
            .and_then(|w| {
                w.get(id).map(|r| {
                    r.view
                        .held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                })
            })
            .unwrap_or_default();
        let upper = before.map_or_else(
            || scoped_offset_key(id, u64::MAX),
            |b| scoped_offset_key(id, b),
        );
        let mut seen = std::collections::HashSet::new();
        for kv in self
            .store
            .table(Table::Deliveries)
            .range(scope(id)..upper)
            .rev()
        {
            let (k, v) = kv?;
            let offset = crate::store::decode_offset(&k[k.len() - 8..])?;
            let mut d = pb::Delivery::decode(&*v)
                .map_err(|e| Error::Corrupt(format!("delivery {id}/{offset}: {e}")))?;
            d.endpoint_id = id.to_owned();
            d.offset = offset;
            seen.insert(offset);
            if state.is_none_or(|s| d.state() == s) {
                out.push(d);
                if out.len() > page_size + held.len() {
                    break;
                }
            }
        }
        if state.is_none_or(|s| s == DeliveryState::Pending) {
            for (offset, h) in &held {
                if !seen.contains(offset) && before.is_none_or(|b| *offset < b) {
                    out.push(pb::Delivery {
                        endpoint_id: id.to_owned(),
                        offset: *offset,
                        event_id: h.event_id.clone(),
                        event_type: h.event_type.clone(),
                        state: DeliveryState::Pending as i32,
                        ..Default::default()
                    });
                }
            }
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.offset));
        let next = if out.len() > page_size {
            out.truncate(page_size);
            out.last().map(|d| d.offset)
        } else {
            None
        };
        Ok((out, next))
    }

    /// Every attempt of one delivery, oldest first.
    pub fn list_attempts(&self, id: &str, offset: Offset) -> Result<Vec<pb::Attempt>> {
        self.record(id)?;
        self.store
            .table(Table::Attempts)
            .scan_prefix(scoped_offset_key(id, offset))
            .values()
            .map(|v| {
                pb::Attempt::decode(&*v?)
                    .map_err(|e| Error::Corrupt(format!("attempt {id}/{offset}: {e}")))
            })
            .collect()
    }

    /// Sends a failed or dead delivery again now, with a fresh schedule.
    pub async fn retry_delivery(&self, id: &str, offset: Offset) -> Result<pb::Delivery> {
        let _workers = self.workers.lock().await;
        self.record(id)?;
        let mut d = worker::load_delivery(&self.store, id, offset)?.ok_or_else(|| {
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
        // A fresh schedule, due now.
        d.state = DeliveryState::Pending as i32;
        d.attempts = 0;
        d.next_attempt_at = None;
        self.store
            .write(vec![Mutation::put(
                Table::Deliveries,
                scoped_offset_key(id, offset),
                d.encode_to_vec(),
            )])
            .await?;
        let consumer = self.consumers.get(&consumer_name(id))?;
        if was_dead {
            consumer.reopen(offset).await?;
        } else {
            // Waiting in the consumer: make it due now.
            consumer.nack(&[offset], Duration::ZERO)?;
        }
        d.endpoint_id = id.to_owned();
        d.offset = offset;
        Ok(d)
    }

    /// Delivers everything from `from` on again.
    pub async fn replay(&self, id: &str, from: Offset) -> Result<Offset> {
        let _workers = self.workers.lock().await;
        self.record(id)?;
        let from = from.max(self.store.first_offset()?);
        self.consumers.get(&consumer_name(id))?.rewind(from).await?;
        tracing::info!(endpoint = %id, from, "endpoint replay");
        Ok(from)
    }

    /// Sends one signed test request now; nothing is stored.
    pub async fn send_test(&self, id: &str) -> Result<(String, pb::Attempt, bool)> {
        let record = self.record(id)?;
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
        let request = stack::WebhookRequest {
            uri: spec.url.clone(),
            msg_id: msg_id.clone(),
            headers: stack::base_headers("stevedore.test", &spec.headers),
            body: body.into(),
            timeout: spec.timeout_for("stevedore.test", &self.config),
            keys: Arc::new(RwLock::new(keys_of(&record))),
        };
        let client = stack::http_client(1);
        let started = SystemTime::now();
        let clock = std::time::Instant::now();
        let result = stack::send(stack::build(client, 1), request).await;
        let latency = clock.elapsed();
        let (status, error, excerpt) = worker::describe(&result);
        let delivered = classify::classify(&result, self.config.max_retry_after)
            == classify::Verdict::Delivered;
        Ok((
            msg_id,
            pb::Attempt {
                attempt: 1,
                started_at: Some(convert::timestamp(started)),
                latency: Some(prost_types::Duration {
                    seconds: latency.as_secs() as i64,
                    nanos: latency.subsec_nanos() as i32,
                }),
                status,
                error,
                response_body: excerpt,
            },
            delivered,
        ))
    }

    fn record(&self, id: &str) -> Result<EndpointRecord> {
        if id.is_empty() {
            return Err(Error::invalid("id", "required"));
        }
        let bytes = self
            .store
            .table(Table::Endpoints)
            .get(id.as_bytes())?
            .ok_or_else(|| Error::NotFound(format!("endpoint {id:?} does not exist")))?;
        decode_record(&bytes)
    }

    async fn put_record(&self, r: &EndpointRecord) -> Result<()> {
        self.store
            .write(vec![Mutation::put(
                Table::Endpoints,
                r.endpoint().id.as_bytes(),
                r.encode_to_vec(),
            )])
            .await
    }

    async fn modify(
        &self,
        id: &str,
        f: impl FnOnce(&mut EndpointRecord) -> Result<()>,
    ) -> Result<EndpointRecord> {
        let mut r = self.record(id)?;
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
        if let Ok(c) = self.consumers.get(&consumer_name(&e.id)) {
            e.backlog = self.store.head().saturating_sub(c.floor());
        }
        e
    }
}

async fn stop_worker(workers: &mut HashMap<String, Running>, id: &str) {
    if let Some(running) = workers.remove(id) {
        running.cancel.cancel();
        let _ = running.handle.await;
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

fn decode_record(bytes: &[u8]) -> Result<EndpointRecord> {
    let r = EndpointRecord::decode(bytes).map_err(|e| Error::Corrupt(format!("endpoint: {e}")))?;
    if r.endpoint.is_none() {
        return Err(Error::Corrupt("endpoint record without endpoint".into()));
    }
    Ok(r)
}

fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
    }
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
];

/// Copies the `fields` of `from` into `into`.
fn merge(into: &mut pb::Endpoint, from: pb::Endpoint, fields: &[String]) -> Result<()> {
    for (i, f) in fields.iter().enumerate() {
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
            other => {
                return Err(Error::invalid(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{other:?} cannot be updated (settable: {}; to move the start, use ReplayEndpoint)",
                        SETTABLE.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(())
}
