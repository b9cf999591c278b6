//! Retention on the cluster: the stream's oldest events are purged, step
//! by step. Their ids go with them (each event is its id's claim, on the
//! id's subject), as the embedded log's truncation forgets its ids: an id
//! published again after retention removed its event is stored anew.

use super::Cluster;
use crate::{error::Result, model::Offset};

/// Events purged per step.
const STEP: u64 = 10_000;

impl Cluster {
    /// Removes every event below `before` from the stream; returns how
    /// many events went.
    pub(super) async fn truncate(&self, before: Offset) -> Result<usize> {
        let mut from = self.copy.first_offset()?;
        let mut removed = 0;
        while from < before {
            let upto = before.min(Offset::new(from.get().saturating_add(STEP)));
            removed += self.log.purge_below(upto).await?;
            from = upto;
        }
        Ok(removed)
    }
}
