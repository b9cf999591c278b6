//! Retention on the cluster: the stream's oldest events are purged, step
//! by step, and the claims of their ids forgotten, as the embedded log's
//! truncation forgets its ids (an id published again after retention
//! removed its event is stored anew). The ids are read from this broker's
//! copy before each step's purge, since the copy follows the purge.

use super::Cluster;
use crate::{error::Result, model::Offset};

/// Events purged (and their ids forgotten) per step.
const STEP: u64 = 10_000;

impl Cluster {
    /// Removes every event below `before` from the stream, with its id's
    /// claim; returns how many events went. A claim left by a failure
    /// after its step's purge only costs its entry (an id published again
    /// answers as a duplicate of the removed event).
    pub(super) async fn truncate(&self, before: Offset) -> Result<usize> {
        let mut from = self.copy.first_offset()?;
        let mut removed = 0;
        while from < before {
            let upto = before.min(Offset::new(from.get().saturating_add(STEP)));
            // Erased events' ids too: their tombstones go with the purge.
            let ids = self.copy.ids_between(from, upto, STEP as usize)?;
            removed += self.log.purge_below(upto).await?;
            self.log.forget_claims(&ids, upto).await?;
            from = upto;
        }
        Ok(removed)
    }
}
