//! The per-endpoint gauges `/metrics` shows (backlog, dead-lettered
//! deliveries, enabled), read when it is scraped; the metrics themselves
//! are `crate::metrics`.

use super::Endpoints;
use crate::error::Result;

impl Endpoints {
    /// Per endpoint: id, backlog, dead records, enabled — for metrics.
    pub fn endpoint_gauges(&self) -> Result<Vec<(String, u64, i64, bool)>> {
        let head = self.store.head();
        self.store
            .endpoints()
            .all()
            .map(|v| {
                let r = self.decode_record(&v?)?;
                let e = &r.endpoint;
                let backlog = self.backlog(e, head);
                Ok((
                    e.id.as_str().to_owned(),
                    backlog,
                    self.metrics.dead.get(e.id.as_str()),
                    e.enabled,
                ))
            })
            .collect()
    }
}
