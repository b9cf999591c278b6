//! Per-endpoint attempt statistics live with the other metrics, in
//! [`crate::metrics::endpoint_stats`] (metrics imports nothing from
//! delivery); re-exported here for delivery's callers.

pub use crate::metrics::endpoint_stats::*;
