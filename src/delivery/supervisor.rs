//! Worker supervision: one delivery worker per enabled endpoint.
//!
//! The [`Supervisor`] owns what every worker shares (the store, the
//! consumers, the ring of recently read events, the SSRF guard, the TLS
//! settings, the metrics) and the running workers themselves. It builds an
//! endpoint's client and delivery stack, starts its worker, restarts it
//! with a new configuration and stops it; it does not decide when: the
//! endpoint manager (`crate::endpoints`) does, holding the lock returned by
//! [`Supervisor::lock`] while it writes the endpoint and (re)starts or
//! stops its worker, so endpoint changes are serialised.
//!
//! Workers report back on the [`Control`] channel that [`Supervisor::new`]
//! returns (health changes, dead-lettered deliveries); the endpoint manager
//! reads it, because acting on a report means changing the endpoint.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc, RwLock,
    },
    time::SystemTime,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    egress::Guard,
    endpoint::{consumer_name, EndpointRecord, EndpointSpec},
    event_cache::EventCache,
    oauth,
    stack::{self, SharedKeys},
    worker::{self, HeldView, WorkerContext, WorkerView},
};
use crate::{
    config::Config,
    consumer::Consumers,
    error::Result,
    metrics::Metrics,
    model::{delivery::DeliveryRecord, EndpointId, Offset},
    store::{delivery_shard, Store},
};

/// What webhook delivery needs from the rest of the broker.
pub struct DeliveryDeps {
    /// The log and the state.
    pub store: Store,
    /// Every durable consumer; each endpoint's worker reads through one.
    pub consumers: Arc<Consumers>,
    /// Broker configuration.
    pub config: Arc<Config>,
    /// Workers (and the manager's report loop) run on this tracker, so
    /// shutdown waits for them.
    pub tasks: TaskTracker,
    /// Cancelled when the broker shuts down; every worker stops then.
    pub shutdown: CancellationToken,
    /// Metrics the workers update.
    pub metrics: Arc<Metrics>,
    /// TLS settings for HTTPS receivers (roots, ALPN set per client).
    pub tls: Arc<rustls::ClientConfig>,
    /// Where other brokers reach this one's gRPC service, as a URL (in
    /// cluster mode the leases name their holder by it, and other brokers
    /// forward calls there).
    pub broker: String,
}

/// Messages from workers to the endpoint manager.
#[derive(Debug)]
pub enum Control {
    /// Disable the endpoint (410 Gone, or failing too long).
    Disable {
        /// Which endpoint.
        endpoint_id: EndpointId,
        /// Shown as `disabled_reason`.
        reason: String,
    },
    /// The first failure after a success (or ever).
    Failing {
        /// Which endpoint.
        endpoint_id: EndpointId,
        /// When it began.
        since: SystemTime,
    },
    /// The first success after failures.
    Recovered {
        /// Which endpoint.
        endpoint_id: EndpointId,
        /// When the failures began.
        failing_since: SystemTime,
    },
    /// A delivery failed `failing_event_after` times.
    DeliveryFailing {
        /// Which endpoint.
        endpoint_id: EndpointId,
        /// Which event.
        offset: Offset,
        /// Its delivery record after the attempt.
        record: DeliveryRecord,
    },
    /// A delivery was dead-lettered.
    Exhausted {
        /// Which endpoint.
        endpoint_id: EndpointId,
        /// Which event.
        offset: Offset,
        /// Its final delivery record.
        record: DeliveryRecord,
    },
}

/// A started worker.
pub struct Running {
    cancel: CancellationToken,
    /// Cancelled first when the endpoint goes to another broker
    /// ([`Supervisor::hand_over`]).
    hand_over: CancellationToken,
    handle: JoinHandle<()>,
    keys: SharedKeys,
    /// The endpoint record it was started with.
    record: EndpointRecord,
}

/// The running workers by endpoint id. Only reachable through
/// [`Supervisor::lock`].
pub type Workers = HashMap<EndpointId, Running>;

/// Starts, restarts and stops the endpoints' workers.
pub struct Supervisor {
    store: Store,
    consumers: Arc<Consumers>,
    config: Arc<Config>,
    /// Recently read events with their bodies, for every worker.
    events: Arc<EventCache>,
    /// The SSRF policy every endpoint's client connects under.
    guard: Guard,
    /// TLS settings for HTTPS receivers (roots, ALPN set per client).
    tls: Arc<rustls::ClientConfig>,
    /// What each running worker shows Admin (kept apart from `workers`, so
    /// listing never waits for an endpoint change).
    views: std::sync::Mutex<HashMap<EndpointId, Arc<WorkerView>>>,
    /// Endpoint changes hold this while they write and (re)start workers.
    workers: tokio::sync::Mutex<Workers>,
    control: mpsc::UnboundedSender<Control>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    /// Every finished attempt's delivery record, for live views (the
    /// console); sent only while someone listens.
    outcomes: tokio::sync::broadcast::Sender<DeliveryRecord>,
    /// In cluster mode, the delivery shards whose endpoints' workers run
    /// on this broker, one bit each (`endpoints::sharing` sets them);
    /// [`Supervisor::start`] starts no other endpoint's worker. `None` in
    /// embedded mode: every endpoint's.
    shards: Option<AtomicU64>,
}

impl Supervisor {
    /// A supervisor with no workers yet, and the receiving end of the
    /// workers' reports.
    pub fn new(deps: DeliveryDeps) -> (Self, mpsc::UnboundedReceiver<Control>) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let this = Self {
            consumers: deps.consumers,
            events: Arc::new(EventCache::new(deps.config.shared_events)),
            guard: Guard::new(&deps.config.allow_networks),
            tls: deps.tls,
            config: deps.config,
            views: Default::default(),
            workers: Default::default(),
            control,
            tasks: deps.tasks,
            shutdown: deps.shutdown,
            metrics: deps.metrics,
            outcomes: tokio::sync::broadcast::channel(256).0,
            shards: deps.store.is_cluster().then(|| AtomicU64::new(0)),
            store: deps.store,
        };
        (this, control_rx)
    }

    /// The SSRF policy endpoints are checked against.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The tracker workers run on.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Cancelled when the broker shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The running workers; endpoint changes hold this while they write
    /// the endpoint and start or stop its worker.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Workers> {
        self.workers.lock().await
    }

    /// The delivery record after every attempt from now on, on every
    /// endpoint. A slow listener misses records (`Lagged`), never slows
    /// delivery.
    pub fn watch_outcomes(&self) -> tokio::sync::broadcast::Receiver<DeliveryRecord> {
        self.outcomes.subscribe()
    }

    /// Whether endpoint `id`'s worker runs on this broker (see `shards`).
    pub fn delivers(&self, id: &EndpointId) -> bool {
        match &self.shards {
            None => true,
            Some(mask) => mask.load(SeqCst) & (1u64 << delivery_shard(id)) != 0,
        }
    }

    /// In cluster mode, the delivery shards this broker delivers from now
    /// on, one bit each (then start and stop workers to match).
    pub fn set_shards(&self, mask: u64) {
        if let Some(shards) = &self.shards {
            shards.store(mask, SeqCst);
        }
    }

    /// Starts endpoint `record`'s worker with `spec`, stopping the one
    /// running before (only that, when the endpoint is delivered by
    /// another broker).
    pub async fn start(
        &self,
        workers: &mut Workers,
        record: &EndpointRecord,
        spec: EndpointSpec,
    ) -> Result<()> {
        let id = record.endpoint.id.clone();
        let restart = stop(workers, &id).await;
        if !self.delivers(&id) {
            return Ok(());
        }
        if !restart && self.shards.is_some() {
            // The endpoint may have been delivered elsewhere since this
            // broker loaded its consumer: read its position again.
            self.consumers.forget(&consumer_name(&id));
        }
        let consumer = self.consumers.get(&consumer_name(&id))?;
        consumer.set_filter(spec.filter.clone());
        let keys = Arc::new(RwLock::new(record.keys()));
        let view = Arc::new(WorkerView::default());
        let hand_over = CancellationToken::new();
        // One client (connection pool) per endpoint: a slow endpoint's
        // connections never queue another's requests.
        let client = self.client_for(&spec, spec.max_in_flight as usize);
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
            shared: self.events.clone(),
            config: self.config.clone(),
            control: self.control.clone(),
            view: view.clone(),
            failing_since: record.endpoint.failing_since,
            metrics: self.metrics.clone(),
            broker_shutdown: self.shutdown.clone(),
            hand_over: hand_over.clone(),
            outcomes: self.outcomes.clone(),
        };
        self.views_lock().insert(id.clone(), view);
        let cancel = self.shutdown.child_token();
        let handle = self.tasks.spawn(worker::run(ctx, cancel.clone()));
        workers.insert(
            id,
            Running {
                cancel,
                hand_over,
                handle,
                keys,
                record: record.clone(),
            },
        );
        Ok(())
    }

    /// The record endpoint `id`'s running worker was started with, if one
    /// runs.
    pub fn started_with<'a>(
        &self,
        workers: &'a Workers,
        id: &EndpointId,
    ) -> Option<&'a EndpointRecord> {
        workers.get(id).map(|r| &r.record)
    }

    /// Stops endpoint `id`'s worker, if it runs; its view stays until
    /// [`Supervisor::forget`].
    pub async fn stop(&self, workers: &mut Workers, id: &EndpointId) {
        stop(workers, id).await;
    }

    /// Stops the workers of `ids`, whose delivery shard goes to another
    /// broker: each lets its attempts already on the wire finish and be
    /// recorded (for up to [`worker::HAND_OVER_DRAIN`], all at once), so the
    /// next deliverer, reading the delivery records, does not send them
    /// again. Their views stay until [`Supervisor::forget`].
    pub async fn hand_over(&self, workers: &mut Workers, ids: &[EndpointId]) {
        let stopping: Vec<Running> = ids.iter().filter_map(|id| workers.remove(id)).collect();
        for running in &stopping {
            running.hand_over.cancel();
            running.cancel.cancel();
        }
        for running in stopping {
            // A worker that panicked has nothing left to stop.
            let _ = running.handle.await;
        }
    }

    /// Stops every worker (at shutdown): in-flight attempts are aborted and
    /// will be sent again after the restart.
    pub async fn stop_all(&self) {
        let mut workers = self.workers.lock().await;
        for (_, running) in workers.drain() {
            running.cancel.cancel();
            // A worker that panicked has nothing left to stop.
            let _ = running.handle.await;
        }
    }

    /// Gives endpoint `id`'s running worker new signing keys (a rotation
    /// takes effect without a restart).
    pub fn set_keys(&self, workers: &Workers, id: &EndpointId, record: &EndpointRecord) {
        if let Some(running) = workers.get(id) {
            *running.keys.write().unwrap_or_else(|p| p.into_inner()) = record.keys();
        }
    }

    /// Forgets a deleted endpoint's view.
    pub fn forget(&self, id: &EndpointId) {
        self.views_lock().remove(id);
    }

    /// The events endpoint `id`'s worker holds without a final outcome.
    pub fn held(&self, id: &EndpointId) -> HashMap<Offset, HeldView> {
        self.views_lock()
            .get(id)
            .map(|v| v.held.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Whether endpoint `id`'s worker holds the event at `offset`.
    pub fn is_held(&self, id: &EndpointId, offset: Offset) -> bool {
        self.views_lock().get(id).is_some_and(|v| {
            v.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&offset)
        })
    }

    /// A client for endpoint `spec` with a pool of `pool` connections,
    /// connecting under the SSRF guard, through its proxy route, with its
    /// TLS settings.
    pub fn client_for(&self, spec: &EndpointSpec, pool: usize) -> stack::HttpClient {
        stack::http_client(
            pool,
            self.guard.clone(),
            &self.tls_for(spec),
            spec.route.clone(),
        )
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
    pub fn tokens_for(&self, spec: &EndpointSpec) -> Option<Arc<oauth::Tokens>> {
        let creds = spec.oauth2.clone()?;
        Some(Arc::new(oauth::Tokens::new(
            creds,
            self.client_for(spec, 2),
        )))
    }

    fn views_lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointId, Arc<WorkerView>>> {
        // Views are inserted and removed whole; a panic cannot leave one
        // half-written.
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stops endpoint `id`'s worker; whether one ran.
async fn stop(workers: &mut Workers, id: &EndpointId) -> bool {
    let Some(running) = workers.remove(id) else {
        return false;
    };
    running.cancel.cancel();
    // A worker that panicked has nothing left to stop.
    let _ = running.handle.await;
    true
}
