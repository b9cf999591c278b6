//! How held events end besides an attempt: superseded by a newer state
//! (coalescing, handed over by the consumer), expired or erased; and what
//! the manager is told about the endpoint's health.

use std::time::SystemTime;

use super::{Finished, Worker};
use crate::delivery::event_cache::SharedEvent;
use crate::{
    delivery::{classify::Verdict, Control},
    error::Result,
    model::{
        delivery::{DeliveryRecord, DeliveryState},
        EventId, Offset, StoredEvent, RESERVED_PREFIX,
    },
};

impl Worker {
    /// Coalescing: the consumer handed out `newest` with the offsets it
    /// superseded (the waiting events of its key, in log order). Each gets
    /// its SUPERSEDED record, then its ack; `newest` takes over the
    /// schedule of the last of them that had one, so a receiver that is
    /// down is not hammered by every new level. Returns whether one of them
    /// was waiting for a next attempt the worker scheduled: then `newest`
    /// is due now.
    pub(super) async fn supersede(&mut self, newest: &SharedEvent, old: &[Offset]) -> bool {
        let ctx = self.ctx.clone();
        let newest_offset = newest.event.offset;
        let mut due = false;
        let mut inherited: Option<DeliveryRecord> = None;
        for &offset in old {
            due |= self.scheduled.remove(&offset);
            self.rendered().remove(&offset);
            let previous = ctx
                .store
                .deliveries()
                .get(&ctx.endpoint_id, offset)
                .ok()
                .flatten();
            let event = match ctx.store.local().and_then(|l| l.get(offset)) {
                Ok(Some(e)) => e,
                // Removed by retention meanwhile: its fate is retention's.
                _ => {
                    self.settle(offset).await;
                    continue;
                }
            };
            let mut record = base_record(&event, DeliveryState::Superseded, String::new());
            record.superseded_by = newest_offset;
            if let Some(p) = &previous {
                record.attempts = p.attempts;
                record.last_attempt_at = p.last_attempt_at;
                record.last_status = p.last_status;
                record.last_error = p.last_error.clone();
                if p.state.is_ongoing() {
                    inherited = Some(p.clone());
                }
            }
            if let Err(e) = self.write_final(offset, record).await {
                tracing::error!(endpoint = %ctx.endpoint_id, offset = offset.get(), error = %e, "recording supersession failed");
            }
            ctx.unview(offset);
            ctx.count("superseded");
        }
        if let Some(p) = inherited.filter(|p| p.attempts > 0) {
            let mut record =
                base_record(&newest.event, DeliveryState::Pending, p.last_error.clone());
            record.attempts = p.attempts;
            record.next_attempt_at = p.next_attempt_at;
            record.last_attempt_at = p.last_attempt_at;
            record.last_status = p.last_status;
            self.recorded(newest_offset);
            if let Err(e) = ctx
                .store
                .deliveries()
                .put(&ctx.endpoint_id, newest_offset, &record)
                .await
            {
                tracing::error!(endpoint = %ctx.endpoint_id, offset = newest_offset.get(), error = %e, "recording inherited schedule failed");
            }
        }
        due
    }

    /// Acks `offset` without a record of its own.
    async fn settle(&mut self, offset: Offset) {
        self.ctx.unview(offset);
        if let Err(e) = self.ctx.consumer.ack(&[offset]).await {
            tracing::error!(endpoint = %self.ctx.endpoint_id, offset = offset.get(), error = %e, "ack failed");
        }
    }

    /// Tells the manager about health changes and operational events.
    pub(super) fn health(&mut self, f: &Finished) {
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

    /// Retention or an erasure removed the event of a held delivery: dead,
    /// `expired` (or `erased`).
    pub(super) async fn expired(&mut self, offset: Offset) {
        // Only an event the worker read (and so lists) has its fate
        // recorded; its event is gone, the listing has its id and type.
        let held = self
            .ctx
            .view
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&offset)
            .cloned();
        self.rendered().remove(&offset);
        let Some(held) = held else {
            return;
        };
        self.scheduled.remove(&offset);
        // The tombstone's reason when the event was erased (tenant
        // erasure or the tenant's retention), else retention's `expired`.
        let reason = match self.ctx.store.erasure(offset) {
            Ok(Some(e)) => e.reason,
            _ => "expired".to_owned(),
        };
        self.ctx.count(&reason);
        let mut record = DeliveryRecord {
            event_id: held.event_id,
            event_type: held.event_type,
            state: DeliveryState::Dead,
            last_error: reason,
            ..Default::default()
        };
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

    pub(super) async fn finish_without_sending(&mut self, offset: Offset, record: DeliveryRecord) {
        if let Err(e) = self.write_final(offset, record).await {
            tracing::error!(endpoint = %self.ctx.endpoint_id, offset = offset.get(), error = %e, "recording failed");
        }
        self.leased.remove(&offset);
        self.ctx.unview(offset);
    }

    /// Writes a final record, then acks.
    async fn write_final(&mut self, offset: Offset, record: DeliveryRecord) -> Result<()> {
        self.recorded(offset);
        self.ctx
            .store
            .deliveries()
            .put(&self.ctx.endpoint_id, offset, &record)
            .await?;
        self.ctx.consumer.ack(&[offset]).await
    }
}

pub(super) fn base_record(
    event: &StoredEvent,
    state: DeliveryState,
    error: String,
) -> DeliveryRecord {
    DeliveryRecord {
        event_id: EventId::new(event.event.id.clone()),
        event_type: event.event_type.to_string(),
        state,
        last_error: error,
        ..Default::default()
    }
}

fn humanize_since(t: SystemTime) -> String {
    let seconds = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("unix {seconds}s")
}
