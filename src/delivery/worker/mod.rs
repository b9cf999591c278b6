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
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    classify::Verdict,
    endpoint::{EndpointSpec, Ordering},
    event_cache::{EventCache, SharedEvent},
    stack::{DeliveryService, SharedKeys},
    Control,
};
use crate::{
    config::Config,
    consumer::{drive::drive, Consumer},
    metrics::Metrics,
    model::{
        delivery::{DeliveryRecord, DeliveryState},
        Offset,
    },
    store::Store,
};

mod attempt;
mod outcome;
mod taker;
#[cfg(test)]
mod tests;

use attempt::Attempt;
pub use attempt::{attempt_record, describe};
use outcome::base_record;

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
    /// Finished attempts for live views; see `Supervisor::watch_outcomes`.
    pub outcomes: tokio::sync::broadcast::Sender<DeliveryRecord>,
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
    record: DeliveryRecord,
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
        let ongoing = record.as_ref().filter(|r| r.state.is_ongoing());
        let prior_attempts = ongoing.map_or(0, |r| r.attempts);
        let next_at = match ongoing.and_then(|r| r.next_attempt_at) {
            Some(next) => next,
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
