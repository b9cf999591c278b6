//! Erasing a tenant's events (EraseTenant, per-tenant retention), on the
//! delivery side: what endpoints still owe for those events is settled
//! before the log forgets their payloads.
//!
//! Like retention ([`Deliveries::expire_before`]), nothing pending is
//! dropped silently: every remaining endpoint that has not delivered an
//! event being erased records it as dead with the reason `erased` (or
//! `expired` for the tenant's retention), and its consumer marks it done
//! first, so no worker reads it in between and skips it unrecorded.
//! Events a worker holds are left to the worker: its next attempt finds
//! the event gone and records it dead with the tombstone's reason. The
//! attempts recorded for those events (they hold response bodies) are
//! deleted; delivery records keep the id, type, state and counts only.

use std::collections::HashSet;

use prost::Message;

use super::{consumer_name, worker::load_delivery, Deliveries};
use crate::{
    error::Result,
    model::Offset,
    pb::{self, DeliveryState},
    store::{scoped_offset_key, Mutation, Removal, Table, Unwanted},
};

/// Most state writes in one group commit.
const WRITES_PER_COMMIT: usize = 4096;

impl Deliveries {
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
        let unwanted = self.store.unwanted(tenant, from, until)?;
        if unwanted.is_empty() {
            return Ok(0);
        }
        for id in self.endpoint_ids()? {
            self.settle_erased(&id, &unwanted, why).await?;
        }
        let offsets: Vec<Offset> = unwanted.iter().map(|u| u.offset).collect();
        let erased = self.store.erase(&offsets, why).await?;
        tracing::warn!(%tenant, events = erased, reason = why.as_str(), "event payloads erased");
        Ok(erased as u64)
    }

    /// Endpoint `id`'s part of an erasure: pending deliveries of `unwanted`
    /// events are recorded dead, their attempts deleted.
    async fn settle_erased(&self, id: &str, unwanted: &[Unwanted], why: Removal) -> Result<()> {
        let Ok(consumer) = self.consumers.get(&consumer_name(id)) else {
            return Ok(());
        };
        let filter = consumer.filter();
        let offsets: Vec<Offset> = unwanted.iter().map(|u| u.offset).collect();
        let unheld: HashSet<Offset> = consumer.expire_offsets(&offsets).into_iter().collect();
        let mut writes = Vec::new();
        let mut dead = 0u64;
        for u in unwanted {
            let old = load_delivery(&self.store, id, u.offset)?;
            if unheld.contains(&u.offset) && filter.matches_meta(&u.meta) {
                let mut record = pb::Delivery {
                    event_id: u.event_id.clone(),
                    event_type: u.meta.event_type.to_string(),
                    state: DeliveryState::Dead as i32,
                    last_error: why.as_str().into(),
                    ..Default::default()
                };
                if let Some(old) = &old {
                    record.attempts = old.attempts;
                    record.last_attempt_at = old.last_attempt_at;
                    record.last_status = old.last_status;
                }
                writes.push(Mutation::put(
                    Table::Deliveries,
                    scoped_offset_key(id, u.offset),
                    record.encode_to_vec(),
                ));
                dead += 1;
            }
            if old.is_some() {
                writes.extend(self.store.delete_attempts(id, u.offset)?);
            }
            if writes.len() >= WRITES_PER_COMMIT {
                self.store.write(std::mem::take(&mut writes)).await?;
            }
        }
        if !writes.is_empty() {
            self.store.write(writes).await?;
        }
        consumer.save().await?;
        if dead > 0 {
            self.metrics.dead.add(id, dead as i64);
            self.metrics.deliveries.add(&[id, why.as_str()], dead);
            tracing::warn!(endpoint = %id, dead, reason = why.as_str(), "undelivered events erased");
        }
        Ok(())
    }
}
