//! The stall log's families in a `/metrics` scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{StallLog, CAUSES, SPANS, STAGE_NAMES};
use crate::metrics::family::Labels;

impl StallLog {
    /// Adds the stall log's families to a scrape.
    pub(in crate::metrics) fn register(&self, r: &mut Registry) {
        let sum = self.summary();
        r.register(
            "stevedore_stall_span_seconds",
            "Events slower than stall_threshold from publish to webhook answer: each span of their path (queue, commit, head, wakeup, dispatch, http)",
            self.spans.clone(),
        );
        let stalls = Family::<Labels, Counter>::default();
        for (name, n) in SPANS.iter().zip(sum.by_dominant) {
            stalls
                .get_or_create(&vec![("dominant", (*name).to_owned())])
                .inc_by(n);
        }
        r.register(
            "stevedore_stalls",
            "Events slower than stall_threshold, by their largest span",
            stalls,
        );
        let max = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let over = Family::<Labels, Counter>::default();
        for (i, name) in CAUSES.iter().enumerate() {
            let labels = vec![("cause", (*name).to_owned())];
            max.get_or_create(&labels)
                .set(sum.cause_max[i].as_secs_f64());
            over.get_or_create(&labels).inc_by(sum.cause_over[i]);
        }
        r.register(
            "stevedore_stall_cause_max_seconds",
            "The longest group-commit fsync, zero-fill wait, state flush and runtime-probe lag seen while the stall log is on",
            max,
        );
        r.register(
            "stevedore_stall_cause_over_threshold",
            "Group-commit fsyncs, zero-fill waits, state flushes and runtime-probe lags of at least stall_threshold",
            over,
        );
        r.register(
            "stevedore_stall_max_group_events",
            "The largest event-log group commit (events) seen while the stall log is on",
            prometheus_client::metrics::gauge::ConstGauge::new(
                i64::try_from(sum.max_group).unwrap_or(i64::MAX),
            ),
        );
        let slowest = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (rank, e) in sum.slowest.iter().enumerate() {
            for (stage, at) in STAGE_NAMES.iter().zip(e.at) {
                let labels = vec![
                    ("rank", rank.to_string()),
                    ("offset", e.offset.to_string()),
                    ("stage", (*stage).to_owned()),
                ];
                slowest.get_or_create(&labels).set(at.as_secs_f64());
            }
        }
        r.register(
            "stevedore_stall_slowest_seconds",
            "The slowest events over stall_threshold (rank 0 slowest): each stage's time after the event was queued",
            slowest,
        );
    }
}
