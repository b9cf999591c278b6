//! One endpoint's delivery loop: takes events from the endpoint's durable
//! consumer, renders, sends attempts through the stack, records every
//! outcome, and acks or nacks: take -> render -> send -> record -> ack/nack.
//! Ordering by key, the window, due times and coalescing are the
//! consumer's (see `crate::consumer`).
//!
//! Invariants:
//! - The consumer is opened with the endpoint's ordering: one message of a
//!   key (with strict ordering: of all) is out at a time, the next waits in
//!   the consumer until it is done.
//! - The endpoint's `delivery_window` bounds both the worker's leases
//!   (`max_in_flight`) and the events its consumer holds at all (leased,
//!   waiting for their next attempt, or behind another of their key): no
//!   new event is read while that many are held.
//! - Leases are real: `LEASE` long, renewed every `RENEW_EVERY` for the
//!   events the worker still has (an attempt runs, or a 410 left it
//!   waiting for the endpoint to be disabled). One runs out only when its
//!   attempt died (a panic, or a record that could not be written); the
//!   consumer then hands the event out again.
//! - The delivery record (attempts, next attempt time) is written durably
//!   *before* the consumer is told to wait (a nack with the delay), and
//!   before the consumer ack of a finished delivery. After a crash the
//!   consumer hands the event back and the record says whether it is due:
//!   the schedule survives restarts.
//! - With coalescing, a newer state event of a key supersedes the events of
//!   that key that wait (not sending): the consumer hands it out with their
//!   offsets when the earliest of them was due; the worker writes their
//!   SUPERSEDED records, and the newer one's record takes over their
//!   schedule, before it acks them, so a down receiver is not hammered.
//! - Every offset from `Worker::unrecorded_from` on has no delivery record,
//!   so starting it reads no state: the worker raises the mark
//!   before it writes a record or starts an attempt (which writes one).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::{
    sync::mpsc,
    task::{self, JoinSet},
};
use tokio_util::sync::CancellationToken;

use super::{
    classify::Verdict,
    endpoint::{EndpointSpec, Ordering},
    event_cache::EventCache,
    event_cache::SharedEvent,
    stack::{DeliveryService, SharedKeys},
    Control,
};
use crate::{
    config::Config,
    consumer::{self, drive::drive, Consumer},
    metrics::Metrics,
    model::{
        delivery::{DeliveryRecord, DeliveryState},
        EndpointId, EventId, Offset,
    },
    store::Store,
};

mod attempt;
#[cfg(test)]
mod consumer_tests;
mod outcome;
mod taker;
#[cfg(test)]
mod tests;

use attempt::Attempt;
pub use attempt::{attempt_record, describe};
use outcome::base_record;

/// How long an event handed to the worker stays leased without a renewal.
/// The worker renews the leases of the events it still has (rather than
/// bounding each attempt by a deadline): an attempt may wait for the
/// endpoint's rate limit and in-flight limit for any time before it is
/// sent, and cutting it short would count an attempt that never went out.
/// So a lease runs out only when the worker lost its attempt.
const LEASE: Duration = Duration::from_secs(60);
/// How often the worker renews its leases: well inside `LEASE`.
const RENEW_EVERY: Duration = Duration::from_secs(20);
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
    /// Events its consumer holds for it (leased, waiting for their next
    /// attempt, or behind another of their key) without a final outcome
    /// yet, for ListDeliveries. The worker adds each as it is read and
    /// removes it with its final record.
    pub held: Mutex<HashMap<Offset, HeldView>>,
}

/// A held event, as listed.
#[derive(Clone, Debug)]
pub struct HeldView {
    /// Its event id (the `webhook-id` is derived from it).
    pub event_id: EventId,
    /// Its type.
    pub event_type: String,
}

/// Everything a worker needs.
pub struct WorkerContext {
    /// The endpoint's id.
    pub endpoint_id: EndpointId,
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
    pub shared: Arc<EventCache>,
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
    /// Cancelled (before the worker's own token) when the endpoint's shard
    /// goes to another broker: attempts on the wire finish first.
    pub hand_over: CancellationToken,
    /// Finished attempts for live views; see `Supervisor::watch_outcomes`.
    pub outcomes: tokio::sync::broadcast::Sender<DeliveryRecord>,
}

impl WorkerContext {
    /// Hands `offset` back to the consumer until its next attempt is due.
    /// A nack fails only for an offset outside the log, which a held event
    /// never is; should it fail anyway, the event stays leased until its
    /// lease runs out, so say so.
    fn wait(&self, offset: Offset, wait: Duration) {
        if let Err(e) = self.consumer.nack(&[offset], wait) {
            tracing::error!(endpoint = %self.endpoint_id, offset = offset.get(), error = %e, "scheduling the next attempt failed");
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .deliveries
            .add(&[self.endpoint_id.as_str(), outcome], 1);
        if matches!(outcome, "dead" | "expired" | "erased") {
            self.metrics.dead.add(self.endpoint_id.as_str(), 1);
        }
    }

    /// Lists `event` as held.
    fn view(&self, event: &SharedEvent) {
        self.view
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                event.event.offset,
                HeldView {
                    event_id: EventId::new(event.event.event.id.clone()),
                    event_type: event.event.event_type.to_string(),
                },
            );
    }

    /// `offset` is no longer held.
    fn unview(&self, offset: Offset) {
        self.view
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&offset);
    }
}

/// This endpoint's body of an event (its condition and fields applied;
/// `None`: the condition does not match), or why it has none.
type Body = std::result::Result<Option<Bytes>, String>;

/// An event as the consumer hands it to the worker.
pub(super) struct Taken {
    /// The event and its full body, shared with other endpoints.
    event: Arc<SharedEvent>,
    /// This endpoint's body.
    body: Body,
    /// A state event of a coalescing endpoint: it supersedes the waiting
    /// events of its key.
    supersedes: bool,
}

/// An attempt task's report back to the loop.
struct Finished {
    offset: Offset,
    verdict: Verdict,
    state: DeliveryState,
    /// Attempts in this round so far.
    attempts: u32,
    record: DeliveryRecord,
}

/// How long a worker whose endpoint goes to another broker lets its
/// attempts on the wire finish: well within what is left of a shard's
/// lease when it is given up (renewed at most 2 s before, lasting 10 s).
pub const HAND_OVER_DRAIN: Duration = Duration::from_secs(3);

/// Runs until `cancel`. In-flight attempts are then aborted (they will be
/// sent again, with the same `webhook-id`) — on broker shutdown only after
/// up to half the shutdown timeout for them to finish.
pub async fn run(ctx: WorkerContext, cancel: CancellationToken) {
    let ctx = Arc::new(ctx);
    ctx.consumer.set_ordering(match ctx.spec.ordering {
        Ordering::Key => consumer::Ordering::Key,
        Ordering::Strict => consumer::Ordering::Strict,
        Ordering::None => consumer::Ordering::None,
    });
    let window = ctx.config.delivery_window.get();
    ctx.consumer.set_max_held(window);
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
        leased: HashMap::new(),
        scheduled: HashSet::new(),
        rendered: Mutex::default(),
        attempts: JoinSet::new(),
        tasks: HashMap::new(),
        finished: finished_tx,
        finished_rx,
        unrecorded_from,
        window,
        renew_at: tokio::time::Instant::now() + RENEW_EVERY,
    };
    drive(&ctx.consumer, ctx.store.watch_head(), &cancel, &mut w).await;
    // The broker is stopping, or the endpoint goes to another broker: let
    // attempts already on the wire finish (and be recorded) for a while, so
    // a clean restart or the next deliverer does not send them again. An
    // endpoint change aborts them at once instead.
    let drain_for = if ctx.broker_shutdown.is_cancelled() {
        Some(ctx.config.shutdown_timeout / 2)
    } else if ctx.hand_over.is_cancelled() {
        Some(HAND_OVER_DRAIN.min(ctx.config.shutdown_timeout / 2))
    } else {
        None
    };
    if let Some(drain_for) = drain_for {
        let drain = async { while w.attempts.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(drain_for, drain).await;
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

struct Worker {
    ctx: Arc<WorkerContext>,
    /// Events leased to the worker that it has not handed back (acked or
    /// nacked), with the number of the attempt sending it (0: none yet).
    /// Their leases are renewed.
    leased: HashMap<Offset, u32>,
    /// Events the worker handed back until their next attempt is due: when
    /// the consumer hands one out again, it is due (the record's time is
    /// looked at only for an event the worker has not scheduled itself,
    /// such as after a restart).
    scheduled: HashSet<Offset>,
    /// Events read new with their bodies, until handed out: one that waits
    /// behind another of its key is not rendered twice. Emptied as they are
    /// handed out, superseded or expired; gone with the worker.
    rendered: Mutex<HashMap<Offset, (Arc<SharedEvent>, Body)>>,
    attempts: JoinSet<()>,
    /// The offset and attempt number of each attempt task.
    tasks: HashMap<task::Id, (Offset, u32)>,
    finished: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    failing_since: Option<SystemTime>,
    /// The endpoint's delivery window: the most leases at once.
    window: u32,
    /// When the leases are renewed next.
    renew_at: tokio::time::Instant,
    /// No offset from here on has a delivery record: a new event is started
    /// without reading the state. Besides saving the read, this keeps the
    /// worker off the state engine's global lock, which the state writer
    /// holds for each whole batch it applies (a read waits it out, and
    /// with it this worker and its runtime thread).
    unrecorded_from: Offset,
}

impl Worker {
    /// An event leased from the consumer: new, due for its next attempt,
    /// or its turn came; with the offsets it superseded.
    async fn accept(&mut self, taken: Taken, superseded: &[Offset]) {
        let Taken { event, body, .. } = taken;
        let offset = event.event.offset;
        self.ctx
            .metrics
            .stall
            .stage(offset.get(), crate::metrics::stall::Stage::Read);
        self.rendered().remove(&offset);
        self.leased.insert(offset, 0);
        let mut due = self.scheduled.remove(&offset);
        if !superseded.is_empty() {
            // It takes over their schedule, so it is due when they were.
            due |= self.supersede(&event, superseded).await;
        }
        match body {
            Ok(Some(body)) => self.start(event, body, due).await,
            Ok(None) => {
                // The endpoint's condition does not match: not for it.
                self.ctx.count("filtered");
                self.leased.remove(&offset);
                self.ctx.unview(offset);
                if let Err(e) = self.ctx.consumer.ack(&[offset]).await {
                    tracing::error!(endpoint = %self.ctx.endpoint_id, offset = offset.get(), error = %e, "ack failed");
                }
            }
            Err(e) => {
                // Cannot happen for validated events; never retry it.
                tracing::error!(endpoint = %self.ctx.endpoint_id, offset = offset.get(), error = %e, "cannot render body");
                let record = base_record(
                    &event.event,
                    DeliveryState::Dead,
                    format!("cannot render body: {e}"),
                );
                self.finish_without_sending(offset, record).await;
            }
        }
    }

    /// The body for this endpoint: rendered, filtered by its condition
    /// (`None`: no match), reduced to its fields.
    /// The shared body is the full one; nothing endpoint-specific is ever
    /// written back to it.
    fn body(&self, shared: &SharedEvent) -> Body {
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

    /// Sends `event` now, unless its record says the next attempt is later
    /// (`due`: the consumer just handed it out at the time the worker
    /// scheduled; the record has that time too).
    async fn start(&mut self, event: Arc<SharedEvent>, body: Bytes, due: bool) {
        let ctx = self.ctx.clone();
        let offset = event.event.offset;
        let lookup = if offset < self.unrecorded_from {
            ctx.store.deliveries().get(&ctx.endpoint_id, offset)
        } else {
            Ok(None)
        };
        let record = match lookup {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(endpoint = %ctx.endpoint_id, offset = offset.get(), error = %e, "reading delivery state failed");
                self.leased.remove(&offset);
                ctx.wait(offset, Duration::from_secs(1));
                return;
            }
        };
        // A delivered, dead or superseded record means this is a new round
        // (replay, RetryDelivery, or an ack lost in a crash): a fresh
        // schedule.
        let ongoing = record.as_ref().filter(|r| r.state.is_ongoing());
        let prior_attempts = ongoing.map_or(0, |r| r.attempts);
        let next_at = match ongoing.and_then(|r| r.next_attempt_at) {
            Some(next) => next,
            None if prior_attempts == 0 => event.event.published_at + ctx.spec.retry_schedule[0],
            None => SystemTime::UNIX_EPOCH,
        };
        match next_at.duration_since(SystemTime::now()) {
            Ok(wait) if !due && wait > Duration::from_millis(2) => {
                self.scheduled.insert(offset);
                self.leased.remove(&offset);
                ctx.wait(offset, wait);
                return;
            }
            _ => {}
        }
        // The attempt writes this offset's record.
        self.recorded(offset);
        // Unless it finishes, the attempt hands it back to the consumer
        // until its next attempt is due.
        self.scheduled.insert(offset);
        let number = prior_attempts + 1;
        self.leased.insert(offset, number);
        let attempt = Attempt {
            ctx: ctx.clone(),
            offset,
            published_at: event.event.published_at,
            event_id: EventId::new(event.event.event.id.clone()),
            event_type: event.event.event_type.to_string(),
            body,
            number,
            recorded_before: record.is_some(),
            finished: self.finished.clone(),
        };
        let task = self.attempts.spawn(attempt.run());
        self.tasks.insert(task.id(), (offset, number));
    }

    async fn finished(&mut self, f: Finished) {
        self.health(&f);
        let done = matches!(f.state, DeliveryState::Delivered | DeliveryState::Dead);
        // The attempt acked or nacked it, unless the endpoint is gone
        // (410): then it stays leased until the worker is stopped.
        if self.leased.get(&f.offset) == Some(&f.attempts) && f.verdict != Verdict::Gone {
            self.leased.remove(&f.offset);
        }
        if done {
            self.scheduled.remove(&f.offset);
            self.ctx.unview(f.offset);
        }
    }

    /// An attempt task ended. One that ended without reporting (it
    /// panicked, or could not write its record) lost its event: the lease
    /// is no longer renewed, and the consumer hands it out again when it
    /// runs out.
    async fn ended(&mut self, id: task::Id) {
        // Reports sent before the task ended come first.
        while let Ok(f) = self.finished_rx.try_recv() {
            self.finished(f).await;
        }
        let Some((offset, number)) = self.tasks.remove(&id) else {
            return;
        };
        if self.leased.get(&offset) == Some(&number) {
            tracing::error!(endpoint = %self.ctx.endpoint_id, offset = offset.get(), attempt = number, "an attempt ended without an outcome; the event is sent again once its lease runs out");
            self.leased.remove(&offset);
        }
    }

    /// Renews the leases of the events the worker still has.
    fn renew(&mut self) {
        self.ctx.consumer.renew(self.leased.keys().copied(), LEASE);
        self.renew_at = tokio::time::Instant::now() + RENEW_EVERY;
    }

    /// Events read new and not handed out yet, with their bodies.
    fn rendered(&self) -> std::sync::MutexGuard<'_, HashMap<Offset, (Arc<SharedEvent>, Body)>> {
        // Whole entries are inserted and removed: never half-changed.
        self.rendered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `offset` is about to get a delivery record.
    fn recorded(&mut self, offset: Offset) {
        self.unrecorded_from = self.unrecorded_from.max(offset.saturating_add(1));
    }
}
