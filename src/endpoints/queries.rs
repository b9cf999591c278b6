//! Admin queries over an endpoint's deliveries: listing delivery records
//! (with the events its worker holds that have no record yet), listing an
//! attempt history, and the per-minute attempt statistics.

use std::collections::{HashMap, HashSet};

use super::Endpoints;
use crate::{
    delivery::{stats::EndpointStats, worker::HeldView},
    error::Result,
    model::{
        delivery::{AttemptRecord, DeliveryRecord, DeliveryState},
        EndpointId, Offset,
    },
    tenant::Scope,
};

/// Which deliveries to list: every set field must match.
#[derive(Debug, Default, Clone)]
pub struct DeliveryQuery {
    /// Of this state.
    pub state: Option<DeliveryState>,
    /// Of this event type.
    pub event_type: Option<String>,
    /// Of events with this ordering key.
    pub ordering_key: Option<String>,
    /// Of events at offsets in `from..until` (publish times map to offsets:
    /// they never decrease along the log).
    pub from: Offset,
    /// See `from`.
    pub until: Offset,
}

impl DeliveryQuery {
    /// Every delivery.
    pub fn all() -> Self {
        Self {
            until: Offset::MAX,
            ..Default::default()
        }
    }
}

impl Endpoints {
    /// Attempts per endpoint and minute, as the workers report them.
    pub fn endpoint_stats(&self) -> &EndpointStats {
        &self.metrics.endpoint_stats
    }

    /// Delivery records matching `q`, newest first, before `before` (a page
    /// token: the last offset of the previous page). Events a worker holds
    /// that have no record yet are listed as pending.
    pub fn query_deliveries(
        &self,
        scope: &Scope,
        id: &EndpointId,
        q: &DeliveryQuery,
        page_size: usize,
        before: Option<Offset>,
    ) -> Result<(Vec<DeliveryRecord>, Option<Offset>)> {
        self.record(scope, id)?;
        let upper = before.map_or(q.until, |b| b.min(q.until));
        if q.from >= upper {
            return Ok((Vec::new(), None));
        }
        let ordering_key_is = |offset: Offset| -> Result<bool> {
            match &q.ordering_key {
                None => Ok(true),
                Some(k) => Ok(self
                    .store
                    .local()?
                    .get(offset)?
                    .is_some_and(|e| &e.event.ordering_key == k)),
            }
        };
        let mut out: Vec<DeliveryRecord> = Vec::new();
        let held: HashMap<Offset, HeldView> = self.supervisor.held(id);
        let mut seen = HashSet::new();
        for kv in self.store.deliveries().range(id, q.from, upper).rev() {
            let (offset, d) = kv?;
            seen.insert(offset);
            if q.state.is_none_or(|s| d.state == s)
                && q.event_type.as_ref().is_none_or(|t| &d.event_type == t)
                && ordering_key_is(offset)?
            {
                out.push(d);
                // Held events may still sort in between: enough for a page
                // whatever they are.
                if out.len() > page_size + held.len() {
                    break;
                }
            }
        }
        if q.state.is_none_or(|s| s == DeliveryState::Pending) {
            for (&offset, h) in &held {
                if !seen.contains(&offset)
                    && (q.from..upper).contains(&offset)
                    && q.event_type.as_ref().is_none_or(|t| &h.event_type == t)
                    && ordering_key_is(offset)?
                {
                    out.push(DeliveryRecord {
                        endpoint_id: id.to_owned(),
                        offset,
                        event_id: h.event_id.clone(),
                        event_type: h.event_type.clone(),
                        state: DeliveryState::Pending,
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

    /// Delivery records, newest first, optionally of one state.
    pub fn list_deliveries(
        &self,
        scope: &Scope,
        id: &EndpointId,
        state: Option<DeliveryState>,
        page_size: usize,
        before: Option<Offset>,
    ) -> Result<(Vec<DeliveryRecord>, Option<Offset>)> {
        let q = DeliveryQuery {
            state,
            ..DeliveryQuery::all()
        };
        self.query_deliveries(scope, id, &q, page_size, before)
    }

    /// Every attempt of one delivery, oldest first.
    pub fn list_attempts(
        &self,
        scope: &Scope,
        id: &EndpointId,
        offset: Offset,
    ) -> Result<Vec<AttemptRecord>> {
        self.record(scope, id)?;
        self.store.deliveries().attempts(id, offset)
    }
}
