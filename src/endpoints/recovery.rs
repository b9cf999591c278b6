//! Sending many deliveries again: recovering an endpoint's failed and dead
//! deliveries in bulk (RecoverDeliveries) and counting what a replay would
//! send (ReplayEndpoint's dry run).

use std::time::Duration;

use super::Endpoints;
use crate::{
    convert,
    delivery::endpoint::{consumer_name, endpoint_body, EndpointSpec},
    error::{Error, Result},
    model::{delivery::DeliveryState, EndpointId, Offset},
    tenant::Scope,
};

/// At most this many deliveries are recovered by one call (each reopens
/// its event in the endpoint's consumer, which persists the position).
pub const RECOVER_LIMIT: usize = 1000;

/// How many events a replay dry run looks at, at most.
pub const REPLAY_COUNT_SCAN: u64 = 100_000;

/// What [`Endpoints::recover`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Matching deliveries (at most [`RECOVER_LIMIT`]).
    pub matched: u64,
    /// Sent again.
    pub requeued: u64,
    /// More than the limit matched.
    pub more: bool,
}

impl Endpoints {
    /// Sends endpoint `id`'s deliveries of events in `from..until` (and
    /// still in the log) that are in one of `states` (failed or dead) and
    /// of `event_type` (if set) again now, with a fresh schedule, like
    /// RetryDelivery for each; with `dry_run` only counts them.
    // The scope (tenants) made it eight; they are the request's fields.
    #[allow(clippy::too_many_arguments)]
    pub async fn recover(
        &self,
        scope: &Scope,
        id: &EndpointId,
        from: Offset,
        until: Offset,
        states: &[DeliveryState],
        event_type: Option<&str>,
        dry_run: bool,
    ) -> Result<Recovered> {
        let _workers = self.supervisor.lock().await;
        self.record(scope, id)?;
        // Events retention removed cannot be sent again (their records say
        // `expired`): only what is still in the log counts.
        let from = from.max(self.store.first_offset()?);
        let mut matched = Vec::new();
        let mut more = false;
        if from < until {
            for kv in self.store.deliveries().range(id, from, until) {
                let (offset, d) = kv?;
                if states.contains(&d.state) && event_type.is_none_or(|t| d.event_type == t) {
                    // Nor can erased ones (their tombstone is all that is left).
                    if self.store.erasure(offset)?.is_some() {
                        continue;
                    }
                    if matched.len() == RECOVER_LIMIT {
                        more = true;
                        break;
                    }
                    matched.push((offset, d));
                }
            }
        }
        let mut out = Recovered {
            matched: matched.len() as u64,
            requeued: 0,
            more,
        };
        if dry_run || matched.is_empty() {
            return Ok(out);
        }
        self.require_delivering(id).await?;
        // The records first (one batch), then the consumer, as RetryDelivery
        // does for one.
        let mut dead = Vec::new();
        let mut waiting = Vec::new();
        for (offset, d) in &mut matched {
            if d.state == DeliveryState::Dead {
                dead.push(*offset);
            } else {
                waiting.push(*offset);
            }
            d.state = DeliveryState::Pending;
            d.attempts = 0;
            d.next_attempt_at = None;
        }
        self.store
            .deliveries()
            .put_all(id, matched.iter().map(|(offset, d)| (*offset, d)))
            .await?;
        self.metrics.dead.add(id.as_str(), -(dead.len() as i64));
        let consumer = self.consumers.get(&consumer_name(id))?;
        // Dead ones are done in the consumer: open again.
        for &offset in &dead {
            consumer.reopen(offset).await?;
        }
        // Failed ones wait in the consumer for their next attempt: due now.
        consumer.nack(&waiting, Duration::ZERO)?;
        out.requeued = matched.len() as u64;
        tracing::info!(endpoint = %id, requeued = out.requeued, "deliveries recovered");
        Ok(out)
    }

    /// What ReplayEndpoint from `from` would send again, without changing
    /// anything: the start it would use, how many events from there the
    /// endpoint selects (event types, attribute filters, tenant, filter
    /// expression), and whether more than [`REPLAY_COUNT_SCAN`] events
    /// were left unread.
    pub fn replay_count(
        &self,
        scope: &Scope,
        id: &EndpointId,
        from: Offset,
    ) -> Result<(Offset, u64, bool)> {
        let record = self.record(scope, id)?;
        let spec = EndpointSpec::validate(&record.endpoint, &self.config)?;
        let from = convert::start_offset("offset", from, self.store.head())?
            .max(self.store.first_offset()?);
        let (mut next, mut scanned, mut matching) = (from, 0u64, 0u64);
        loop {
            let batch = self.store.local()?.read_from(next, 1024)?;
            let Some(last) = batch.last() else {
                return Ok((from, matching, false));
            };
            next = last.offset + 1;
            for event in &batch {
                if !spec.filter.matches(event) {
                    continue;
                }
                let selected = spec.condition.is_none() || {
                    let rendered = crate::webhook::render_body(&event.event)
                        .map_err(|e| Error::Corrupt(format!("event {}: {e}", event.offset)))?;
                    endpoint_body(&spec, rendered.into())
                        .map_err(|e| Error::Corrupt(format!("event {}: {e}", event.offset)))?
                        .is_some()
                };
                matching += u64::from(selected);
            }
            scanned += batch.len() as u64;
            if scanned >= REPLAY_COUNT_SCAN {
                return Ok((from, matching, next < self.store.head()));
            }
        }
    }
}
