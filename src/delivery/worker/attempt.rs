//! One attempt: send through the endpoint's stack, classify, record the
//! outcome durably (with the ack when the delivery is finished), and
//! schedule the next attempt with the consumer.

use std::{
    sync::Arc,
    time::{Duration, Instant as StdInstant, SystemTime},
};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::mpsc;

use super::{Finished, WorkerContext};
use crate::{
    delivery::{
        classify::{classify, Verdict},
        signing,
        stack::{self, SendError, WebhookRequest, WebhookResponse},
        Control,
    },
    model::{
        delivery::{AttemptRecord, DeliveryRecord, DeliveryState},
        EventId, Offset,
    },
    store::StateWrites,
};

/// One attempt's task.
pub(super) struct Attempt {
    pub(super) ctx: Arc<WorkerContext>,
    pub(super) offset: Offset,
    pub(super) published_at: SystemTime,
    pub(super) event_id: EventId,
    pub(super) event_type: String,
    pub(super) body: Bytes,
    pub(super) number: u32,
    /// Whether the delivery had a record when this attempt started. Attempt
    /// records are only written with (or after) their delivery record, so
    /// without one there is no earlier attempt to count.
    pub(super) recorded_before: bool,
    pub(super) finished: mpsc::UnboundedSender<Finished>,
}

impl Attempt {
    /// Sends, records, and reports back to the worker.
    pub(super) async fn run(self) {
        let ctx = &self.ctx;
        let request = WebhookRequest {
            uri: ctx.spec.url.clone(),
            msg_id: signing::webhook_id(self.event_id.as_str()).into_owned(),
            headers: stack::base_headers(
                &self.event_type,
                self.event_id.as_str(),
                &ctx.spec.headers,
            ),
            body: self.body.clone(),
            timeout: ctx.spec.timeout_for(&self.event_type, &ctx.config),
            keys: ctx.keys.clone(),
        };
        let started_at = SystemTime::now();
        let clock = StdInstant::now();
        ctx.metrics.stall.stage(
            self.offset.get(),
            crate::metrics::stall::Stage::AttemptStarted,
        );
        let result = stack::send(ctx.service.clone(), request).await;
        ctx.metrics.stall.responded(self.offset.get());
        let latency = clock.elapsed();
        let verdict = classify(&result, ctx.config.max_retry_after);
        ctx.metrics.endpoint_stats.record(
            ctx.endpoint_id.as_str(),
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
        let record = DeliveryRecord {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            state,
            attempts: self.number,
            next_attempt_at: next_at,
            last_attempt_at: Some(started_at),
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
            // Without the record the schedule is not durable: no report;
            // the worker stops renewing the event's lease, and the consumer
            // hands it out again once the lease runs out.
            tracing::error!(endpoint = %id, offset = self.offset.get(), error = %e, "recording an attempt failed");
            return;
        }
        tracing::debug!(endpoint = %id, offset = self.offset.get(), attempt = self.number, ?state, status, "attempt");
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
                    tracing::warn!(endpoint = %id, offset = self.offset.get(), attempts = self.number, "delivery dead-lettered");
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
            let _ = ctx.outcomes.send(DeliveryRecord {
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
) -> AttemptRecord {
    let (status, error, response_body) = describe(result);
    AttemptRecord {
        attempt: number,
        started_at: Some(started_at),
        latency: Some(latency),
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
