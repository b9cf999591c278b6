//! Erasing a tenant's events (EraseTenant, per-tenant retention), on the
//! delivery side: what endpoints still owe for those events is settled
//! before the log forgets their payloads.
//!
//! Like retention (`crate::retention::expire_before`), nothing pending is
//! dropped silently. Before the events are erased, every remaining
//! endpoint's consumer marks those it has not read yet as done (so no
//! worker reads one in between and skips it unrecorded) and the endpoint
//! records them as dead with the reason `erased` (or `expired` for the
//! tenant's retention). Events a worker holds are its own to record:
//! once the tombstones exist, those waiting for a retry are handed back
//! at once ([`crate::consumer::Consumer::expire_waiting`]), and one being
//! sent finds its event gone at its next attempt; either way the worker
//! records it dead with the tombstone's reason. The attempts recorded for
//! those events (they hold response bodies) are deleted; delivery records
//! keep the id, type, state and counts.

use std::collections::HashSet;

use super::Endpoints;
use crate::{
    consumer::Consumer,
    delivery::endpoint::consumer_name,
    error::Result,
    model::{
        delivery::{DeliveryRecord, DeliveryState},
        EndpointId, Offset,
    },
    store::{Removal, StateWrites, Unwanted},
    tenant::Scope,
};

/// Most state writes in one group commit.
const WRITES_PER_COMMIT: usize = 4096;

impl Endpoints {
    /// Deletes every endpoint of `tenant` with its delivery records and
    /// attempts (tenant erasure); returns how many.
    pub async fn erase_tenant(&self, tenant: &str) -> Result<u64> {
        let mut ids = Vec::new();
        for v in self.store.endpoints().all() {
            let r = self.decode_record(&v?)?;
            if r.endpoint.tenant == tenant {
                ids.push(r.endpoint.id.clone());
            }
        }
        for id in &ids {
            self.delete(&Scope::Global, id).await?;
        }
        Ok(ids.len() as u64)
    }

    /// Erases the payloads of `tenant`'s events from `from` up to `until`
    /// (at most the head) from the log, after settling what endpoints
    /// hold of them; returns how many events were erased. Events
    /// published meanwhile are not erased.
    pub async fn erase_events(
        &self,
        tenant: &str,
        from: Offset,
        until: Offset,
        why: Removal,
    ) -> Result<u64> {
        // Every event acknowledged before this call, on any broker, is
        // read from this broker's copy of the log.
        self.store.log_caught_up().await?;
        let unwanted = self.store.unwanted(tenant, from, until)?;
        if unwanted.is_empty() {
            return Ok(0);
        }
        let offsets: Vec<Offset> = unwanted.iter().map(|u| u.offset).collect();
        let mut consumers = Vec::new();
        for id in self.ids()? {
            let name = consumer_name(&id);
            if self.delivers(&id) {
                if let Ok(consumer) = self.consumers.get(&name) {
                    self.settle_erased(&id, &consumer, &unwanted, why, true)
                        .await?;
                    consumers.push(consumer);
                }
            } else if let Ok(Some(snapshot)) = self.consumers.snapshot(&name) {
                // Cluster mode, an endpoint another broker delivers: its
                // consumer as the state has it, to see what is unread;
                // the deliverer's worker moves the consumer itself (and
                // records what it holds when it finds the event gone).
                self.settle_erased(&id, &snapshot, &unwanted, why, false)
                    .await?;
            }
        }
        let erased = self.store.erase(&offsets, why).await?;
        for consumer in consumers {
            consumer.expire_waiting(&offsets);
            consumer.save().await?;
        }
        tracing::warn!(%tenant, events = erased, reason = why.as_str(), "event payloads erased");
        Ok(erased as u64)
    }

    /// Endpoint `id`'s part of an erasure, before it: deliveries of
    /// `unwanted` events it has not read yet are recorded dead, attempts
    /// of any of them deleted. `delivering`: `consumer` is the one this
    /// broker's worker reads through (saved here); else a snapshot of the
    /// state's, left unsaved.
    async fn settle_erased(
        &self,
        id: &EndpointId,
        consumer: &Consumer,
        unwanted: &[Unwanted],
        why: Removal,
        delivering: bool,
    ) -> Result<()> {
        let filter = consumer.filter();
        let offsets: Vec<Offset> = unwanted.iter().map(|u| u.offset).collect();
        let unheld: HashSet<Offset> = consumer.expire_unread(&offsets).into_iter().collect();
        let mut writes = StateWrites::new();
        let mut dead = 0u64;
        for u in unwanted {
            let old = self.store.deliveries().get(id, u.offset)?;
            // Read from a snapshot, an event's record may already say what
            // the deliverer did with it: only one with none is recorded.
            let settle = delivering || old.is_none();
            if settle && unheld.contains(&u.offset) && filter.matches_meta(&u.meta) {
                let mut record = DeliveryRecord {
                    event_id: u.event_id.clone(),
                    event_type: u.meta.event_type.to_string(),
                    state: DeliveryState::Dead,
                    last_error: why.as_str().into(),
                    ..Default::default()
                };
                if let Some(old) = &old {
                    record.attempts = old.attempts;
                    record.last_attempt_at = old.last_attempt_at;
                    record.last_status = old.last_status;
                }
                writes.put_delivery(id, u.offset, &record);
                dead += 1;
            }
            if old.is_some() {
                self.store.delete_attempts(&mut writes, id, u.offset)?;
            }
            if writes.len() >= WRITES_PER_COMMIT {
                self.store.write_state(std::mem::take(&mut writes)).await?;
            }
        }
        if !writes.is_empty() {
            self.store.write_state(writes).await?;
        }
        if delivering {
            consumer.save().await?;
        }
        if dead > 0 {
            self.metrics.dead.add(id.as_str(), dead as i64);
            self.metrics
                .deliveries
                .add(&[id.as_str(), why.as_str()], dead);
            tracing::warn!(endpoint = %id, dead, reason = why.as_str(), "undelivered events erased");
        }
        Ok(())
    }
}
