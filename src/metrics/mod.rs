//! Prometheus metrics, served in the Prometheus text format (0.0.4) on the
//! metrics listener (`metrics_listen`, loopback by default).
//!
//! The exposition is `prometheus-client`'s: its counter families,
//! histograms, label escaping and text encoder. Counters and histograms are
//! updated on the hot paths; gauges that describe state (log size, backlog,
//! consumer lag) are computed when scraped, from the [`Snapshot`] that the
//! caller's closure returns (see [`serve`]), so they cannot drift and this
//! module imports nothing from the rest of the crate.
//!
//! The unlabelled counters and gauges that other modules update with
//! `fetch_add` (connections, streams, duplicates, request bytes) are std
//! atomics, encoded as the crate's constant counters and gauges at each
//! scrape.

pub mod endpoint_stats;
mod family;
mod serve;
pub mod stall;
#[cfg(test)]
mod stall_tests;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

pub use endpoint_stats::EndpointStats;
pub use family::{CounterVec, GaugeVec, Histogram};
pub use serve::serve;

/// Latency buckets in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Group-commit sizes (operations per fsync).
const GROUP_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
];

/// Every metric the broker keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Events appended, by type.
    pub events_published: CounterVec,
    /// Duplicate publishes (nothing written).
    pub duplicates: AtomicU64,
    /// Duplicate publishes whose content differed from the stored event's.
    pub duplicates_differing: AtomicU64,
    /// Publish call latency (validation to durable ack), seconds.
    pub publish_latency: Histogram,
    /// Operations per group commit.
    pub group_commit_size: Histogram,
    /// Group commit duration (apply, flush, fsync), seconds.
    pub commit_latency: Histogram,
    /// Event-log commits that waited for more appends because the runtime
    /// was saturated (see `group_commit_delay`).
    pub commit_delays: AtomicU64,
    /// Damaged event-log records found by the scrub at start.
    pub damaged_records: AtomicU64,
    /// Webhook attempts by endpoint and outcome (`delivered`, `failed`,
    /// `dead`, `superseded`, `expired`, `erased`).
    pub deliveries: CounterVec,
    /// Publish to 2xx, seconds.
    pub delivery_latency: Histogram,
    /// Open Subscribe streams.
    pub open_streams: AtomicI64,
    /// Dead-lettered delivery records, by endpoint.
    pub dead: GaugeVec,
    /// Request bytes held (received and estimated decoded) by calls in
    /// progress: what `max_inflight_request_bytes` bounds.
    pub request_bytes_in_flight: AtomicI64,
    /// Requests refused before decoding, by reason (`message_size`,
    /// `decode_budget`, `count`, `inflight_budget`).
    pub requests_refused: CounterVec,
    /// Open gRPC connections.
    pub open_connections: AtomicI64,
    /// gRPC connections closed by the broker, by reason
    /// (`handshake_timeout`, `idle_timeout`, `max_connections`).
    pub connections_closed: CounterVec,
    /// Per-endpoint attempts and latency per minute, for Admin's
    /// GetEndpointStats (#16).
    pub endpoint_stats: EndpointStats,
    /// The stall log: where slow events' time went (`stall_threshold`).
    pub stall: stall::StallLog,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_published: CounterVec::new(&["type"]),
            duplicates: AtomicU64::new(0),
            duplicates_differing: AtomicU64::new(0),
            publish_latency: Histogram::new(LATENCY_BUCKETS),
            group_commit_size: Histogram::new(GROUP_BUCKETS),
            commit_latency: Histogram::new(LATENCY_BUCKETS),
            commit_delays: AtomicU64::new(0),
            damaged_records: AtomicU64::new(0),
            deliveries: CounterVec::new(&["endpoint", "outcome"]),
            delivery_latency: Histogram::new(LATENCY_BUCKETS),
            open_streams: AtomicI64::new(0),
            dead: GaugeVec::default(),
            request_bytes_in_flight: AtomicI64::new(0),
            requests_refused: CounterVec::new(&["reason"]),
            open_connections: AtomicI64::new(0),
            connections_closed: CounterVec::new(&["reason"]),
            endpoint_stats: EndpointStats::default(),
            stall: stall::StallLog::default(),
        }
    }
}

/// Gauges read from the broker's state when scraped.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Next offset.
    pub head: u64,
    /// Oldest offset.
    pub first: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Per endpoint: (id, backlog, dead records, enabled).
    pub endpoints: Vec<(String, u64, i64, bool)>,
    /// Per durable consumer: (name, lag).
    pub consumers: Vec<(String, u64)>,
}

/// Why a [`Snapshot`] could not be taken (the caller's error, logged).
pub type SnapshotError = Box<dyn std::error::Error + Send + Sync>;

/// A gauge family of one label, filled from a snapshot.
fn gauges<V: Copy>(
    label: &'static str,
    rows: impl IntoIterator<Item = (String, V)>,
    value: impl Fn(V) -> i64,
) -> Family<family::Labels, Gauge> {
    let family = Family::<family::Labels, Gauge>::default();
    for (key, v) in rows {
        family.get_or_create(&vec![(label, key)]).set(value(v));
    }
    family
}

/// Saturates a `u64` gauge into the crate's `i64` gauge.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The text exposition of everything, with the gauges of `s`.
    ///
    /// Help texts are written without their final period: the crate adds
    /// it.
    pub fn render(&self, s: &Snapshot) -> String {
        let count = |a: &AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
        let level = |a: &AtomicI64| ConstGauge::new(a.load(Ordering::Relaxed));
        let mut r = Registry::default();
        r.register(
            "stevedore_events_published",
            "Events appended to the log, by type",
            self.events_published.metric(),
        );
        r.register(
            "stevedore_publish_duplicates",
            "Publishes of ids already in the log",
            count(&self.duplicates),
        );
        r.register(
            "stevedore_publish_duplicates_differing",
            "Publishes of ids already in the log whose payload, attributes or ordering key differed (the stored event was kept)",
            count(&self.duplicates_differing),
        );
        r.register(
            "stevedore_group_commit_delays",
            "Event-log commits that waited group_commit_delay for more appends (runtime saturated)",
            count(&self.commit_delays),
        );
        r.register(
            "stevedore_log_damaged_records",
            "Event-log records whose checksum failed, found by the scrub that reads the sealed segments at start",
            count(&self.damaged_records),
        );
        r.register(
            "stevedore_publish_latency_seconds",
            "Publish calls, from request to durable ack",
            self.publish_latency.metric(),
        );
        r.register(
            "stevedore_group_commit_size",
            "Appends and truncations per event-log group commit (one fsync each)",
            self.group_commit_size.metric(),
        );
        r.register(
            "stevedore_group_commit_seconds",
            "Event-log group commit time: write and fsync",
            self.commit_latency.metric(),
        );
        r.register(
            "stevedore_log_head_offset",
            "The next offset to be written",
            ConstGauge::new(signed(s.head)),
        );
        r.register(
            "stevedore_log_events",
            "Events in the log",
            ConstGauge::new(signed(s.head.saturating_sub(s.first))),
        );
        r.register(
            "stevedore_log_disk_bytes",
            "Bytes the data directory uses",
            ConstGauge::new(signed(s.disk_bytes)),
        );
        r.register(
            "stevedore_deliveries",
            "Webhook delivery outcomes by endpoint",
            self.deliveries.metric(),
        );
        r.register(
            "stevedore_delivery_latency_seconds",
            "From publish to a 2xx answer",
            self.delivery_latency.metric(),
        );
        let endpoints = || s.endpoints.iter().map(|e| (e.0.clone(), e));
        r.register(
            "stevedore_endpoint_pending",
            "Events not yet delivered or dead-lettered, by endpoint",
            gauges("endpoint", endpoints(), |e| signed(e.1)),
        );
        r.register(
            "stevedore_endpoint_dead",
            "Dead-lettered deliveries, by endpoint",
            gauges("endpoint", endpoints(), |e| e.2),
        );
        r.register(
            "stevedore_endpoint_enabled",
            "1 if the endpoint is enabled",
            gauges("endpoint", endpoints(), |e| i64::from(e.3)),
        );
        r.register(
            "stevedore_consumer_lag",
            "Head offset minus the consumer's cursor",
            gauges("consumer", s.consumers.iter().cloned(), signed),
        );
        r.register(
            "stevedore_open_streams",
            "Open Subscribe streams",
            level(&self.open_streams),
        );
        r.register(
            "stevedore_request_bytes_in_flight",
            "Request bytes held by calls in progress, received and estimated decoded (bounded by max_inflight_request_bytes)",
            level(&self.request_bytes_in_flight),
        );
        r.register(
            "stevedore_requests_refused",
            "Requests refused before decoding, by reason",
            self.requests_refused.metric(),
        );
        r.register(
            "stevedore_open_connections",
            "Open gRPC connections",
            level(&self.open_connections),
        );
        r.register(
            "stevedore_connections_closed",
            "gRPC connections closed by the broker, by reason (handshake_timeout, idle_timeout, max_connections)",
            self.connections_closed.metric(),
        );
        if self.stall.on() {
            self.stall.register(&mut r);
        }
        let mut out = String::with_capacity(8192);
        // The encoder fails only when its writer does, and a String's never
        // does.
        prometheus_text::encode(&mut out, &r).expect("encoding into a String");
        out
    }
}
