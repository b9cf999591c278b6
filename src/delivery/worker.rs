//! One endpoint's delivery loop: takes events from the endpoint's durable
//! consumer, keeps per-key order, sends attempts through the stack, records
//! every outcome and schedules the next attempt durably.
//!
//! Invariants:
//! - An event is *held* from the moment the consumer leases it until its
//!   delivery is finished (delivered, dead or superseded). While held it is
//!   in exactly one of: sending (an attempt task runs), waiting (nacked to
//!   the consumer until its next attempt is due), or queued behind an
//!   earlier event of its ordering key.
//! - With ordering by key, only the head of a key's queue is ever sending or
//!   waiting; the next starts when the head finishes.
//! - The delivery record (attempts, next attempt time) is written durably
//!   *before* the consumer is told to wait, and before the consumer ack of a
//!   finished delivery. After a crash the consumer hands the event back and
//!   the record says whether it is due: the schedule survives restarts.
//! - With coalescing, a newer state event for a key supersedes every held
//!   event of that key that is not sending; the record of the superseded
//!   one is written before its ack, and the newer one takes over its place
//!   in the schedule, so a down receiver is not hammered.
//! - New events are read only while fewer than `delivery_window` are held.
//! - Every offset from `Worker::unrecorded_from` on has no delivery record,
//!   so starting it reads no state: the worker raises the mark
//!   before it writes a record or starts an attempt (which writes one).

use std::{
    collections::{HashMap, VecDeque},
    ops::ControlFlow,
    sync::{Arc, Mutex},
    time::{Duration, Instant as StdInstant, SystemTime},
};

use bytes::Bytes;
use rand::Rng;
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    classify::{classify, Verdict},
    endpoint::{EndpointSpec, Ordering},
    shared::{Shared, SharedEvent},
    signing,
    stack::{self, DeliveryService, SendError, SharedKeys, WebhookRequest, WebhookResponse},
    Control,
};
use crate::{
    config::Config,
    consumer::{
        drive::{drive, Taker},
        Consumer, Delivery, Keyed, PollFor, Read,
    },
    convert,
    error::{Error, Result},
    metrics::Metrics,
    model::{Offset, StoredEvent, RESERVED_PREFIX},
    pb::{self, DeliveryState},
    store::{StateWrites, Store},
};

/// Leases of the worker never expire on their own: the worker decides when
/// an event is retried (via nack with a delay).
const LEASE: Duration = Duration::from_secs(30 * 86_400);
/// Persist the position once the filter has skipped this many events.
const SAVE_SKIPPED_AFTER: u64 = 256;
/// The worker's stream id on its consumer (one worker per endpoint).
const WORKER_STREAM: u64 = 0;
/// Event types whose events carry a state that a newer one replaces.
pub const STATE_EVENT_TYPES: &[&str] = &[
    "inventory.updated",
    "channel_inventory.updated",
    "order.status",
];

/// What a running worker shares with the Admin service.
#[derive(Default)]
pub struct WorkerView {
    /// Held events without a final outcome yet, for ListDeliveries.
    pub held: Mutex<HashMap<Offset, HeldView>>,
}

/// A held event, as listed.
#[derive(Clone, Debug)]
pub struct HeldView {
    /// Its event id (the `webhook-id` is derived from it).
    pub event_id: String,
    /// Its type.
    pub event_type: String,
}

/// Everything a worker needs.
pub struct WorkerContext {
    /// The endpoint's id.
    pub endpoint_id: String,
    /// Its validated configuration.
    pub spec: EndpointSpec,
    /// Its signing keys.
    pub keys: SharedKeys,
    /// Its delivery stack.
    pub service: DeliveryService,
    /// Its consumer.
    pub consumer: Arc<Consumer>,
    /// The log and state.
    pub store: Store,
    /// Recently read events with their bodies, shared by every endpoint.
    pub shared: Arc<Shared>,
    /// Broker configuration.
    pub config: Arc<Config>,
    /// To the manager: health changes and operational events.
    pub control: mpsc::UnboundedSender<Control>,
    /// Shared with Admin.
    pub view: Arc<WorkerView>,
    /// When the endpoint's current run of failures began, as stored.
    pub failing_since: Option<SystemTime>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the whole broker shuts down (the worker's own token
    /// is also cancelled by endpoint changes).
    pub broker_shutdown: CancellationToken,
    /// Finished attempts for live views; see `Deliveries::watch_outcomes`.
    pub outcomes: tokio::sync::broadcast::Sender<pb::Delivery>,
}

impl WorkerContext {
    /// Hands `offset` back to the consumer until its next attempt is due.
    /// A nack fails only for an offset outside the log, which a held event
    /// never is; should it fail anyway, the event stays leased and is sent
    /// again after a restart, so say so.
    fn wait(&self, offset: Offset, wait: Duration) {
        if let Err(e) = self.consumer.nack(&[offset], wait) {
            tracing::error!(endpoint = %self.endpoint_id, offset, error = %e, "scheduling the next attempt failed");
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .deliveries
            .add(&[&self.endpoint_id, outcome], 1);
        if matches!(outcome, "dead" | "expired" | "erased") {
            self.metrics.dead.add(&self.endpoint_id, 1);
        }
    }
}

struct Held {
    /// The event and its full body, shared with other endpoints.
    event: Arc<SharedEvent>,
    /// This endpoint's body (its filter and fields applied).
    body: Bytes,
    key: Option<String>,
    sending: bool,
    /// The worker handed it back to the consumer until its next attempt
    /// is due: when the consumer hands it out again, it is due (the
    /// record's time is looked at only for an event the worker has not
    /// scheduled itself, such as after a restart).
    scheduled: bool,
}

/// An attempt task's report back to the loop.
struct Finished {
    offset: Offset,
    verdict: Verdict,
    state: DeliveryState,
    /// Attempts in this round so far.
    attempts: u32,
    record: pb::Delivery,
}

/// Runs until `cancel`. In-flight attempts are then aborted (they will be
/// sent again, with the same `webhook-id`) — on broker shutdown only after
/// up to half the shutdown timeout for them to finish.
pub async fn run(ctx: WorkerContext, cancel: CancellationToken) {
    let ctx = Arc::new(ctx);
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    // Records are written for this endpoint only by its worker, and by
    // Admin and retention for offsets that already have one or that the
    // consumer never hands out again: none lands above this afterwards.
    let unrecorded_from = match ctx
        .store
        .deliveries()
        .next_unrecorded(&ctx.endpoint_id)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(endpoint = %ctx.endpoint_id, error = %e, "reading delivery records failed");
            // Look every delivery up.
            Offset::MAX
        }
    };
    let mut w = Worker {
        failing_since: ctx.failing_since,
        ctx: ctx.clone(),
        held: HashMap::new(),
        keys: HashMap::new(),
        attempts: JoinSet::new(),
        finished: finished_tx,
        finished_rx,
        unrecorded_from,
        window: ctx.config.delivery_window.get() as usize,
    };
    drive(&ctx.consumer, ctx.store.watch_head(), &cancel, &mut w).await;
    if ctx.broker_shutdown.is_cancelled() {
        // The broker is stopping: let attempts already on the wire finish
        // (and be recorded) for a while, so a clean restart does not send
        // them again. An endpoint change aborts them at once instead.
        let drain = async { while w.attempts.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(ctx.config.shutdown_timeout / 2, drain).await;
    }
    w.attempts.abort_all();
    while w.attempts.join_next().await.is_some() {}
    ctx.consumer.release(WORKER_STREAM);
    ctx.view
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

impl Keyed for Arc<SharedEvent> {
    fn ordering_key(&self) -> &str {
        &self.event.event.ordering_key
    }
}

impl Taker for Worker {
    type Event = Arc<SharedEvent>;
    type Wake = Finished;

    fn poll_for(&self, now: Instant) -> PollFor {
        PollFor {
            stream: WORKER_STREAM,
            max_in_flight: u32::MAX,
            ack_wait: LEASE,
            now,
            // New events only while the window has room.
            read_new: self.held.len() < self.window,
        }
    }

    fn read(&self, offset: Offset, read: Read) -> Result<Option<Arc<SharedEvent>>> {
        let ctx = &self.ctx;
        match read {
            Read::New => ctx.shared.get(&ctx.store, offset),
            // A held event due for its next attempt: the worker still has
            // it, so the log is only asked whether retention removed it
            // meanwhile.
            Read::Again => match self.held.get(&offset) {
                Some(h) => Ok(ctx.store.meta(offset)?.map(|_| h.event.clone())),
                None => Ok(ctx
                    .store
                    .get(offset)?
                    .map(|e| Arc::new(SharedEvent::new(e)))),
            },
        }
    }

    async fn take(&mut self, d: Delivery<Arc<SharedEvent>>) -> ControlFlow<()> {
        self.accept(d.event).await;
        ControlFlow::Continue(())
    }

    async fn expired(&mut self, offset: Offset) -> ControlFlow<()> {
        self.expired(offset).await;
        ControlFlow::Continue(())
    }

    async fn failed(&mut self, e: Error) -> ControlFlow<(), Instant> {
        tracing::error!(endpoint = %self.ctx.endpoint_id, error = %e, "reading the log failed");
        ControlFlow::Continue(Instant::now() + Duration::from_secs(1))
    }

    async fn idle(&mut self) {
        // Events this endpoint's filter skipped are never acked: persist
        // the position now and then, or every restart reads them again.
        if self.ctx.consumer.unsaved() >= SAVE_SKIPPED_AFTER {
            if let Err(e) = self.ctx.consumer.save().await {
                tracing::error!(endpoint = %self.ctx.endpoint_id, error = %e, "saving the position failed");
            }
        }
    }

    async fn wait(&mut self) -> Finished {
        match self.finished_rx.recv().await {
            Some(f) => f,
            // The worker holds a sender itself: never closed while it runs.
            None => std::future::pending().await,
        }
    }

    async fn woke(&mut self, f: Finished) -> ControlFlow<()> {
        self.finished(f).await;
        // Every attempt that finished meanwhile, before reading on: one
        // pass of the loop per batch, not per delivery.
        while let Ok(f) = self.finished_rx.try_recv() {
            self.finished(f).await;
        }
        ControlFlow::Continue(())
    }
}

struct Worker {
    ctx: Arc<WorkerContext>,
    held: HashMap<Offset, Held>,
    /// Per ordering key, the held offsets in log order; the front is the one
    /// sending or waiting.
    keys: HashMap<String, VecDeque<Offset>>,
    attempts: JoinSet<()>,
    finished: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    failing_since: Option<SystemTime>,
    /// New events are read only while fewer than this many are held.
    window: usize,
    /// No offset from here on has a delivery record: a new event is started
    /// without reading the state. Besides saving the read, this keeps the
    /// worker off the state engine's global lock, which the state writer
    /// holds for each whole batch it applies (a read waits it out, and
    /// with it this worker and its runtime thread).
    unrecorded_from: Offset,
}

impl Worker {
    /// An event leased from the consumer: new, or a waiting one now due.
    async fn accept(&mut self, shared: Arc<SharedEvent>) {
        let offset = shared.event.offset;
        if let Some(h) = self.held.get_mut(&offset) {
            // Back from the consumer after its wait: it is its key's head.
            let due = std::mem::take(&mut h.scheduled);
            self.start(offset, due).await;
            return;
        }
        let body = match self.body(&shared) {
            Ok(Some(b)) => b,
            Ok(None) => {
                // The endpoint's condition does not match: not for it.
                self.ctx.count("filtered");
                if let Err(e) = self.ctx.consumer.ack(&[offset]).await {
                    tracing::error!(endpoint = %self.ctx.endpoint_id, offset, error = %e, "ack failed");
                }
                return;
            }
            Err(e) => {
                // Cannot happen for validated events; never retry it.
                tracing::error!(endpoint = %self.ctx.endpoint_id, offset, error = %e, "cannot render body");
                let record = base_record(
                    &shared.event,
                    DeliveryState::Dead,
                    format!("cannot render body: {e}"),
                );
                self.finish_without_sending(offset, record).await;
                return;
            }
        };
        let event = &shared.event;
        let key = match self.ctx.spec.ordering {
            Ordering::Key => Some(event.event.ordering_key.clone()),
            Ordering::Strict => Some(String::new()),
            Ordering::None => None,
        };
        let coalesce =
            self.ctx.spec.coalesce && STATE_EVENT_TYPES.contains(&event.event_type.as_str());
        self.ctx
            .view
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                offset,
                HeldView {
                    event_id: event.event.id.clone(),
                    event_type: event.event_type.to_string(),
                },
            );
        self.held.insert(
            offset,
            Held {
                event: shared,
                body,
                key: key.clone(),
                sending: false,
                scheduled: false,
            },
        );
        let Some(k) = key else {
            self.start(offset, false).await;
            return;
        };
        let q = self.keys.entry(k.clone()).or_default();
        q.push_back(offset);
        if coalesce {
            self.coalesce(&k).await;
        } else if q.len() == 1 {
            self.start(offset, false).await;
        }
    }

    /// The body for this endpoint: rendered, filtered by its condition
    /// (`None`: no match), reduced to its fields.
    /// The shared body is the full one; nothing endpoint-specific is ever
    /// written back to it.
    fn body(&self, shared: &SharedEvent) -> std::result::Result<Option<Bytes>, String> {
        let body = super::endpoint_body(&self.ctx.spec, shared.body.clone()?)?;
        Ok(match body {
            Some(data) if self.ctx.spec.envelope => {
                let event = &shared.event;
                Some(super::envelope::wrap(
                    event.event_type.as_str(),
                    event.event.occurred_at.as_ref(),
                    &data,
                ))
            }
            other => other,
        })
    }

    /// Coalescing: every held event of key `k` that is not sending is
    /// superseded by the newest one, which inherits the schedule of the
    /// superseded head and starts when it is at the front.
    async fn coalesce(&mut self, k: &str) {
        let Some(q) = self.keys.get_mut(k) else {
            return;
        };
        let Some(&newest) = q.back() else {
            return;
        };
        let old: Vec<Offset> = q
            .iter()
            .copied()
            .filter(|&o| o != newest && self.held.get(&o).is_some_and(|h| !h.sending))
            .collect();
        q.retain(|o| !old.contains(o));
        let newest_turn = q.front() == Some(&newest);
        let ctx = self.ctx.clone();
        let mut inherited: Option<pb::Delivery> = None;
        for offset in old {
            let held = self.held.remove(&offset).expect("listed from held");
            self.unview(offset);
            let previous = ctx
                .store
                .deliveries()
                .get(&ctx.endpoint_id, offset)
                .ok()
                .flatten();
            let mut record =
                base_record(&held.event.event, DeliveryState::Superseded, String::new());
            record.superseded_by = newest;
            if let Some(p) = &previous {
                record.attempts = p.attempts;
                record.last_attempt_at = p.last_attempt_at;
                record.last_status = p.last_status;
                record.last_error = p.last_error.clone();
                if matches!(p.state(), DeliveryState::Failed | DeliveryState::Pending) {
                    inherited = Some(p.clone());
                }
            }
            if let Err(e) = self.write_final(offset, record).await {
                tracing::error!(endpoint = %ctx.endpoint_id, offset, error = %e, "recording supersession failed");
            }
            ctx.count("superseded");
        }
        // Take over the schedule, so a receiver that is down is not
        // hammered by every new level.
        if let Some(p) = inherited.filter(|p| p.attempts > 0) {
            let held = &self.held[&newest];
            let mut record = base_record(
                &held.event.event,
                DeliveryState::Pending,
                p.last_error.clone(),
            );
            record.attempts = p.attempts;
            record.next_attempt_at = p.next_attempt_at;
            record.last_attempt_at = p.last_attempt_at;
            record.last_status = p.last_status;
            self.recorded(newest);
            if let Err(e) = ctx
                .store
                .deliveries()
                .put(&ctx.endpoint_id, newest, &record)
                .await
            {
                tracing::error!(endpoint = %ctx.endpoint_id, offset = newest, error = %e, "recording inherited schedule failed");
            }
        }
        if newest_turn && !self.held[&newest].sending {
            self.start(newest, false).await;
        }
    }

    /// Sends `offset` now, unless its record says the next attempt is later
    /// (`due`: the consumer just handed it out at the time the worker
    /// scheduled; the record has that time too).
    async fn start(&mut self, offset: Offset, due: bool) {
        let ctx = self.ctx.clone();
        let lookup = if offset < self.unrecorded_from {
            ctx.store.deliveries().get(&ctx.endpoint_id, offset)
        } else {
            Ok(None)
        };
        let record = match lookup {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(endpoint = %ctx.endpoint_id, offset, error = %e, "reading delivery state failed");
                ctx.wait(offset, Duration::from_secs(1));
                return;
            }
        };
        // A delivered, dead or superseded record means this is a new round
        // (replay, RetryDelivery, or an ack lost in a crash): a fresh
        // schedule.
        let ongoing = record
            .as_ref()
            .filter(|r| matches!(r.state(), DeliveryState::Failed | DeliveryState::Pending));
        let prior_attempts = ongoing.map_or(0, |r| r.attempts);
        let next_at = match ongoing.and_then(|r| r.next_attempt_at.as_ref()) {
            Some(next) => {
                convert::system_time("next_attempt_at", next).unwrap_or(SystemTime::UNIX_EPOCH)
            }
            None if prior_attempts == 0 => {
                self.held[&offset].event.event.published_at + ctx.spec.retry_schedule[0]
            }
            None => SystemTime::UNIX_EPOCH,
        };
        match next_at.duration_since(SystemTime::now()) {
            Ok(wait) if !due && wait > Duration::from_millis(2) => {
                if let Some(h) = self.held.get_mut(&offset) {
                    h.scheduled = true;
                }
                ctx.wait(offset, wait);
                return;
            }
            _ => {}
        }
        // The attempt writes this offset's record.
        self.recorded(offset);
        let held = self.held.get_mut(&offset).expect("started events are held");
        held.sending = true;
        // Unless it finishes, the attempt hands it back to the consumer
        // until its next attempt is due.
        held.scheduled = true;
        let attempt = Attempt {
            ctx: ctx.clone(),
            offset,
            published_at: held.event.event.published_at,
            event_id: held.event.event.event.id.clone(),
            event_type: held.event.event.event_type.to_string(),
            body: held.body.clone(),
            number: prior_attempts + 1,
            recorded_before: record.is_some(),
            finished: self.finished.clone(),
        };
        self.attempts.spawn(attempt.run());
    }

    async fn finished(&mut self, f: Finished) {
        while self.attempts.try_join_next().is_some() {}
        self.health(&f);
        let done = matches!(f.state, DeliveryState::Delivered | DeliveryState::Dead);
        if !done {
            // Waiting for its next attempt; its key stays blocked, unless a
            // newer state is already queued behind it.
            let Some(h) = self.held.get_mut(&f.offset) else {
                return;
            };
            h.sending = false;
            let coalescing = self.ctx.spec.coalesce
                && STATE_EVENT_TYPES.contains(&h.event.event.event_type.as_str());
            if let Some(k) = h.key.clone().filter(|_| coalescing) {
                if self.keys.get(&k).is_some_and(|q| q.len() > 1) {
                    self.coalesce(&k).await;
                }
            }
            return;
        }
        self.release(f.offset).await;
    }

    /// Tells the manager about health changes and operational events.
    fn health(&mut self, f: &Finished) {
        let ctx = &self.ctx;
        let now = SystemTime::now();
        let ops = !f.record.event_type.starts_with(RESERVED_PREFIX);
        match &f.verdict {
            Verdict::Delivered => {
                if let Some(since) = self.failing_since.take() {
                    let _ = ctx.control.send(Control::Recovered {
                        endpoint_id: ctx.endpoint_id.clone(),
                        failing_since: since,
                    });
                }
            }
            Verdict::Gone => {}
            Verdict::Retry { .. } => {
                let since = *self.failing_since.get_or_insert_with(|| {
                    let _ = ctx.control.send(Control::Failing {
                        endpoint_id: ctx.endpoint_id.clone(),
                        since: now,
                    });
                    now
                });
                if now.duration_since(since).unwrap_or_default() >= ctx.config.auto_disable_after {
                    let _ = ctx.control.send(Control::Disable {
                        endpoint_id: ctx.endpoint_id.clone(),
                        reason: format!(
                            "auto-disabled: failing since {} with no success",
                            humanize_since(since)
                        ),
                    });
                }
                if ops
                    && f.state == DeliveryState::Failed
                    && f.attempts == ctx.config.failing_event_after
                {
                    let _ = ctx.control.send(Control::DeliveryFailing {
                        endpoint_id: ctx.endpoint_id.clone(),
                        offset: f.offset,
                        record: f.record.clone(),
                    });
                }
                if ops && f.state == DeliveryState::Dead {
                    let _ = ctx.control.send(Control::Exhausted {
                        endpoint_id: ctx.endpoint_id.clone(),
                        offset: f.offset,
                        record: f.record.clone(),
                    });
                }
            }
        }
    }

    /// A held event's delivery is over: let the next of its key go.
    async fn release(&mut self, offset: Offset) {
        let Some(held) = self.held.remove(&offset) else {
            return;
        };
        self.unview(offset);
        if let Some(k) = held.key {
            let next = self.keys.get_mut(&k).and_then(|q| {
                q.retain(|&o| o != offset);
                q.front().copied()
            });
            match next {
                Some(next) => {
                    if !self.held[&next].sending {
                        self.start(next, false).await;
                    }
                }
                None => {
                    self.keys.remove(&k);
                }
            }
        }
    }

    /// Retention or an erasure removed the event of a held delivery: dead,
    /// `expired` (or `erased`).
    async fn expired(&mut self, offset: Offset) {
        let Some(held) = self.held.get(&offset) else {
            return;
        };
        // The tombstone's reason when the event was erased (tenant
        // erasure or the tenant's retention), else retention's `expired`.
        let reason = match self.ctx.store.erasure(offset) {
            Ok(Some(e)) => e.reason,
            _ => "expired".to_owned(),
        };
        self.ctx.count(&reason);
        let mut record = base_record(&held.event.event, DeliveryState::Dead, reason);
        if let Ok(Some(p)) = self
            .ctx
            .store
            .deliveries()
            .get(&self.ctx.endpoint_id, offset)
        {
            record.attempts = p.attempts;
            record.last_attempt_at = p.last_attempt_at;
            record.last_status = p.last_status;
        }
        self.finish_without_sending(offset, record).await;
    }

    async fn finish_without_sending(&mut self, offset: Offset, record: pb::Delivery) {
        if let Err(e) = self.write_final(offset, record).await {
            tracing::error!(endpoint = %self.ctx.endpoint_id, offset, error = %e, "recording failed");
        }
        self.release(offset).await;
    }

    /// Writes a final record, then acks.
    async fn write_final(&mut self, offset: Offset, record: pb::Delivery) -> Result<()> {
        self.recorded(offset);
        self.ctx
            .store
            .deliveries()
            .put(&self.ctx.endpoint_id, offset, &record)
            .await?;
        self.ctx.consumer.ack(&[offset]).await
    }

    /// `offset` is about to get a delivery record.
    fn recorded(&mut self, offset: Offset) {
        self.unrecorded_from = self.unrecorded_from.max(offset.saturating_add(1));
    }

    fn unview(&self, offset: Offset) {
        self.ctx
            .view
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&offset);
    }
}

fn base_record(event: &StoredEvent, state: DeliveryState, error: String) -> pb::Delivery {
    pb::Delivery {
        event_id: event.event.id.clone(),
        event_type: event.event_type.to_string(),
        state: state as i32,
        last_error: error,
        ..Default::default()
    }
}

fn humanize_since(t: SystemTime) -> String {
    let ts = convert::timestamp(t);
    format!("unix {}s", ts.seconds)
}

struct Attempt {
    ctx: Arc<WorkerContext>,
    offset: Offset,
    published_at: SystemTime,
    event_id: String,
    event_type: String,
    body: Bytes,
    number: u32,
    /// Whether the delivery had a record when this attempt started. Attempt
    /// records are only written with (or after) their delivery record, so
    /// without one there is no earlier attempt to count.
    recorded_before: bool,
    finished: mpsc::UnboundedSender<Finished>,
}

impl Attempt {
    async fn run(self) {
        let ctx = &self.ctx;
        let request = WebhookRequest {
            uri: ctx.spec.url.clone(),
            msg_id: signing::webhook_id(&self.event_id).into_owned(),
            headers: stack::base_headers(&self.event_type, &self.event_id, &ctx.spec.headers),
            body: self.body.clone(),
            timeout: ctx.spec.timeout_for(&self.event_type, &ctx.config),
            keys: ctx.keys.clone(),
        };
        let started_at = SystemTime::now();
        let clock = StdInstant::now();
        let result = stack::send(ctx.service.clone(), request).await;
        let latency = clock.elapsed();
        let verdict = classify(&result, ctx.config.max_retry_after);
        ctx.metrics.endpoint_stats.record(
            &ctx.endpoint_id,
            started_at,
            latency,
            verdict == Verdict::Delivered,
        );
        let now = SystemTime::now();
        let schedule = &ctx.spec.retry_schedule;
        let (state, next_at) = match &verdict {
            Verdict::Delivered => (DeliveryState::Delivered, None),
            // Kept pending (not dead): it resumes when the endpoint is
            // enabled again.
            Verdict::Gone => (DeliveryState::Failed, Some(now)),
            Verdict::Retry { .. } if self.number as usize >= schedule.len() => {
                (DeliveryState::Dead, None)
            }
            Verdict::Retry { retry_after } => {
                let delay = retry_after.unwrap_or_else(|| {
                    jitter(
                        schedule[self.number as usize],
                        ctx.config.retry_jitter_percent,
                    )
                });
                (DeliveryState::Failed, Some(now + delay))
            }
        };
        let (status, error, _) = describe(&result);
        let record = pb::Delivery {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            state: state as i32,
            attempts: self.number,
            next_attempt_at: next_at.map(convert::timestamp),
            last_attempt_at: Some(convert::timestamp(started_at)),
            last_status: status,
            last_error: error,
            ..Default::default()
        };
        // Attempt records are numbered across rounds (a RetryDelivery or a
        // replay starts a new schedule, not a new history).
        let id = &ctx.endpoint_id;
        let last = || ctx.store.deliveries().last_attempt(id, self.offset);
        // The reverse prefix scan is skipped for a delivery's very first
        // attempt (a few percent of the CPU of a delivery).
        let seq = match self.recorded_before.then(last) {
            Some(Ok(Some(n))) => n + 1,
            _ => 1,
        };
        let attempt = attempt_record(seq, started_at, latency, &result);
        let mut records = StateWrites::new();
        records.put_delivery(id, self.offset, &record);
        records.put_attempt(id, self.offset, seq, &attempt);
        let finished = matches!(state, DeliveryState::Delivered | DeliveryState::Dead);
        // A finished delivery's record and its ack go in one group commit
        // (the writer applies the records before the consumer position, so
        // the ack is never durable without them): one fsync wait per
        // delivery instead of two in a row.
        let written = if finished {
            ctx.consumer.ack_with(&[self.offset], records).await
        } else {
            ctx.store.write_state(records).await
        };
        if let Err(e) = written {
            // Without the record the schedule is not durable: leave the
            // event held; it is sent again after a restart.
            tracing::error!(endpoint = %id, offset = self.offset, error = %e, "recording an attempt failed");
            return;
        }
        tracing::debug!(endpoint = %id, offset = self.offset, attempt = self.number, ?state, status, "attempt");
        match state {
            DeliveryState::Delivered => {
                ctx.count("delivered");
                if let Ok(d) = SystemTime::now().duration_since(self.published_at) {
                    ctx.metrics.delivery_latency.observe_duration(d);
                }
            }
            DeliveryState::Dead => ctx.count("dead"),
            _ => ctx.count("failed"),
        }
        match state {
            DeliveryState::Delivered | DeliveryState::Dead => {
                if state == DeliveryState::Dead {
                    tracing::warn!(endpoint = %id, offset = self.offset, attempts = self.number, "delivery dead-lettered");
                }
            }
            _ if verdict == Verdict::Gone => {
                let _ = ctx.control.send(Control::Disable {
                    endpoint_id: id.clone(),
                    reason: "410 Gone".into(),
                });
            }
            _ => {
                let wait = next_at
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default();
                ctx.wait(self.offset, wait);
            }
        }
        // Nobody watching (the usual case) costs a counter read, no clone.
        if ctx.outcomes.receiver_count() > 0 {
            let _ = ctx.outcomes.send(pb::Delivery {
                endpoint_id: ctx.endpoint_id.clone(),
                offset: self.offset,
                ..record.clone()
            });
        }
        let _ = self.finished.send(Finished {
            offset: self.offset,
            verdict,
            state,
            attempts: self.number,
            record,
        });
    }
}

/// The record of one attempt.
pub fn attempt_record(
    number: u32,
    started_at: SystemTime,
    latency: Duration,
    result: &std::result::Result<WebhookResponse, SendError>,
) -> pb::Attempt {
    let (status, error, response_body) = describe(result);
    pb::Attempt {
        attempt: number,
        started_at: Some(convert::timestamp(started_at)),
        latency: Some(prost_types::Duration {
            seconds: latency.as_secs() as i64,
            nanos: latency.subsec_nanos() as i32,
        }),
        status,
        error,
        response_body,
    }
}

/// Status (0 without a response), error text, and response excerpt.
pub fn describe(result: &std::result::Result<WebhookResponse, SendError>) -> (u32, String, String) {
    match result {
        Ok(r) => (
            u32::from(r.status.as_u16()),
            if r.status.is_success() {
                String::new()
            } else {
                format!("HTTP {}", r.status)
            },
            r.body_excerpt.clone(),
        ),
        Err(e) => (0, e.to_string(), String::new()),
    }
}

/// `d` spread by ±`percent` %.
fn jitter(d: Duration, percent: u8) -> Duration {
    if percent == 0 || d.is_zero() {
        return d;
    }
    let spread = f64::from(percent) / 100.0;
    let factor = rand::rng().random_range((1.0 - spread)..=(1.0 + spread));
    d.mul_f64(factor)
}
