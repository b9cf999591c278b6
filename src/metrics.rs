//! Prometheus metrics, rendered in the text exposition format on the
//! metrics listener (`metrics_listen`, loopback by default).
//!
//! Counters and histograms are atomics updated on the hot paths; gauges
//! that describe state (log size, backlog, consumer lag) are computed when
//! scraped, from the store and the consumers, so they cannot drift.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

/// Latency buckets in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Group-commit sizes (operations per fsync).
const GROUP_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
];

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in millionths, so it stays an integer atomic.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((v * 1e6).max(0.0) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Counters keyed by label values, created on first use.
#[derive(Debug, Default)]
pub struct CounterVec(RwLock<HashMap<Vec<String>, Arc<AtomicU64>>>);

impl CounterVec {
    /// Adds `n` to the counter of `labels`.
    pub fn add(&self, labels: &[&str], n: u64) {
        if let Some(c) = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&labels.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        {
            c.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(labels.iter().map(|s| s.to_string()).collect())
            .or_default()
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Removes every counter whose first label is `first` (a deleted
    /// endpoint's series).
    pub fn remove_first(&self, first: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.first().map(String::as_str) != Some(first));
    }

    fn render(&self, out: &mut String, name: &str, names: &[&str]) {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        for (values, c) in rows {
            let _ = writeln!(
                out,
                "{name}{{{}}} {}",
                labels(names, values),
                c.load(Ordering::Relaxed)
            );
        }
    }
}

fn labels(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Gauges keyed by one label, kept in step by the code that changes them.
#[derive(Debug, Default)]
pub struct GaugeVec(RwLock<HashMap<String, i64>>);

impl GaugeVec {
    /// Adds `n` (may be negative) to `label`'s gauge.
    pub fn add(&self, label: &str, n: i64) {
        *self
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label.to_owned())
            .or_default() += n;
    }

    /// Sets `label`'s gauge.
    pub fn set(&self, label: &str, v: i64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_owned(), v);
    }

    /// Drops `label`.
    pub fn remove(&self, label: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(label);
    }

    /// `label`'s value.
    pub fn get(&self, label: &str) -> i64 {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .copied()
            .unwrap_or(0)
    }
}

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
    pub endpoint_stats: crate::delivery::stats::EndpointStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_published: CounterVec::default(),
            duplicates: AtomicU64::new(0),
            duplicates_differing: AtomicU64::new(0),
            publish_latency: Histogram::new(LATENCY_BUCKETS),
            group_commit_size: Histogram::new(GROUP_BUCKETS),
            commit_latency: Histogram::new(LATENCY_BUCKETS),
            commit_delays: AtomicU64::new(0),
            damaged_records: AtomicU64::new(0),
            deliveries: CounterVec::default(),
            delivery_latency: Histogram::new(LATENCY_BUCKETS),
            open_streams: AtomicI64::new(0),
            dead: GaugeVec::default(),
            request_bytes_in_flight: AtomicI64::new(0),
            requests_refused: CounterVec::default(),
            open_connections: AtomicI64::new(0),
            connections_closed: CounterVec::default(),
            endpoint_stats: Default::default(),
        }
    }
}

/// Gauges read from the broker's state when scraped.
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

impl Metrics {
    /// The text exposition of everything.
    pub fn render(&self, s: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        let help = |out: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
        };
        help(
            &mut out,
            "stevedore_events_published_total",
            "counter",
            "Events appended to the log, by type.",
        );
        self.events_published
            .render(&mut out, "stevedore_events_published_total", &["type"]);
        let counter = |out: &mut String, name: &str, text: &str, value: &AtomicU64| {
            help(out, name, "counter", text);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "stevedore_publish_duplicates_total",
            "Publishes of ids already in the log.",
            &self.duplicates,
        );
        counter(
            &mut out,
            "stevedore_publish_duplicates_differing_total",
            "Publishes of ids already in the log whose payload, attributes or ordering key differed (the stored event was kept).",
            &self.duplicates_differing,
        );
        counter(
            &mut out,
            "stevedore_group_commit_delays_total",
            "Event-log commits that waited group_commit_delay for more appends (runtime saturated).",
            &self.commit_delays,
        );
        counter(
            &mut out,
            "stevedore_log_damaged_records_total",
            "Event-log records whose checksum failed, found by the scrub that reads the sealed segments at start.",
            &self.damaged_records,
        );
        help(
            &mut out,
            "stevedore_publish_latency_seconds",
            "histogram",
            "Publish calls, from request to durable ack.",
        );
        self.publish_latency
            .render(&mut out, "stevedore_publish_latency_seconds", "");
        help(
            &mut out,
            "stevedore_group_commit_size",
            "histogram",
            "Appends and truncations per event-log group commit (one fsync each).",
        );
        self.group_commit_size
            .render(&mut out, "stevedore_group_commit_size", "");
        help(
            &mut out,
            "stevedore_group_commit_seconds",
            "histogram",
            "Event-log group commit time: write and fsync.",
        );
        self.commit_latency
            .render(&mut out, "stevedore_group_commit_seconds", "");
        help(
            &mut out,
            "stevedore_log_head_offset",
            "gauge",
            "The next offset to be written.",
        );
        let _ = writeln!(out, "stevedore_log_head_offset {}", s.head);
        help(
            &mut out,
            "stevedore_log_events",
            "gauge",
            "Events in the log.",
        );
        let _ = writeln!(
            out,
            "stevedore_log_events {}",
            s.head.saturating_sub(s.first)
        );
        help(
            &mut out,
            "stevedore_log_disk_bytes",
            "gauge",
            "Bytes the data directory uses.",
        );
        let _ = writeln!(out, "stevedore_log_disk_bytes {}", s.disk_bytes);
        help(
            &mut out,
            "stevedore_deliveries_total",
            "counter",
            "Webhook delivery outcomes by endpoint.",
        );
        self.deliveries.render(
            &mut out,
            "stevedore_deliveries_total",
            &["endpoint", "outcome"],
        );
        help(
            &mut out,
            "stevedore_delivery_latency_seconds",
            "histogram",
            "From publish to a 2xx answer.",
        );
        self.delivery_latency
            .render(&mut out, "stevedore_delivery_latency_seconds", "");
        help(
            &mut out,
            "stevedore_endpoint_pending",
            "gauge",
            "Events not yet delivered or dead-lettered, by endpoint.",
        );
        for (id, backlog, _, _) in &s.endpoints {
            let _ = writeln!(
                out,
                "stevedore_endpoint_pending{{endpoint=\"{}\"}} {backlog}",
                escape(id)
            );
        }
        help(
            &mut out,
            "stevedore_endpoint_dead",
            "gauge",
            "Dead-lettered deliveries, by endpoint.",
        );
        for (id, _, dead, _) in &s.endpoints {
            let _ = writeln!(
                out,
                "stevedore_endpoint_dead{{endpoint=\"{}\"}} {dead}",
                escape(id)
            );
        }
        help(
            &mut out,
            "stevedore_endpoint_enabled",
            "gauge",
            "1 if the endpoint is enabled.",
        );
        for (id, _, _, enabled) in &s.endpoints {
            let _ = writeln!(
                out,
                "stevedore_endpoint_enabled{{endpoint=\"{}\"}} {}",
                escape(id),
                u8::from(*enabled)
            );
        }
        help(
            &mut out,
            "stevedore_consumer_lag",
            "gauge",
            "Head offset minus the consumer's cursor.",
        );
        for (name, lag) in &s.consumers {
            let _ = writeln!(
                out,
                "stevedore_consumer_lag{{consumer=\"{}\"}} {lag}",
                escape(name)
            );
        }
        help(
            &mut out,
            "stevedore_open_streams",
            "gauge",
            "Open Subscribe streams.",
        );
        let _ = writeln!(
            out,
            "stevedore_open_streams {}",
            self.open_streams.load(Ordering::Relaxed)
        );
        help(
            &mut out,
            "stevedore_request_bytes_in_flight",
            "gauge",
            "Request bytes held by calls in progress, received and estimated decoded (bounded by max_inflight_request_bytes).",
        );
        let _ = writeln!(
            out,
            "stevedore_request_bytes_in_flight {}",
            self.request_bytes_in_flight.load(Ordering::Relaxed)
        );
        help(
            &mut out,
            "stevedore_requests_refused_total",
            "counter",
            "Requests refused before decoding, by reason.",
        );
        self.requests_refused
            .render(&mut out, "stevedore_requests_refused_total", &["reason"]);
        help(
            &mut out,
            "stevedore_open_connections",
            "gauge",
            "Open gRPC connections.",
        );
        let _ = writeln!(
            out,
            "stevedore_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        help(
            &mut out,
            "stevedore_connections_closed_total",
            "counter",
            "gRPC connections closed by the broker, by reason (handshake_timeout, idle_timeout, max_connections).",
        );
        self.connections_closed
            .render(&mut out, "stevedore_connections_closed_total", &["reason"]);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`, with gauges from
/// `snapshot`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    snapshot: impl Fn() -> crate::error::Result<Snapshot> + Send + Sync + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use http_body_util::Full;
    use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response, StatusCode};
    use hyper_util::rt::TokioIo;

    let snapshot = Arc::new(snapshot);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let snapshot = snapshot.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let snapshot = snapshot.clone();
                async move {
                    let response = if req.uri().path() != "/metrics" {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                    } else {
                        match snapshot() {
                            Ok(s) => Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(metrics.render(&s)))),
                            Err(e) => {
                                tracing::error!(error = %e, "metrics snapshot failed");
                                Response::builder()
                                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                                    .body(Full::new(Bytes::from_static(b"snapshot failed\n")))
                            }
                        }
                    };
                    Ok::<_, std::convert::Infallible>(
                        response.expect("static response parts are valid"),
                    )
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.events_published.add(&["pick.confirmed"], 2);
        m.events_published.add(&["pick.confirmed"], 1);
        m.deliveries.add(&["ep_1", "delivered"], 5);
        m.publish_latency.observe(0.0007);
        m.publish_latency.observe(3.0);
        let text = m.render(&Snapshot {
            head: 11,
            first: 1,
            disk_bytes: 4096,
            endpoints: vec![("ep_1".into(), 3, 1, true)],
            consumers: vec![("erp\"x".into(), 7)],
        });
        assert!(text.contains("stevedore_events_published_total{type=\"pick.confirmed\"} 3\n"));
        assert!(text
            .contains("stevedore_deliveries_total{endpoint=\"ep_1\",outcome=\"delivered\"} 5\n"));
        assert!(text.contains("stevedore_publish_latency_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("stevedore_publish_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("stevedore_publish_latency_seconds_count 2\n"));
        assert!(text.contains("stevedore_log_events 10\n"));
        assert!(text.contains("stevedore_endpoint_pending{endpoint=\"ep_1\"} 3\n"));
        assert!(text.contains("stevedore_consumer_lag{consumer=\"erp\\\"x\"} 7\n"));
    }
}
