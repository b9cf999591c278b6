//! The stall log (#17): with `stall_threshold` tiny, an event published
//! to the real broker and delivered to a real receiver is reported with its
//! stages in order, its spans summing to its publish-to-answer time, and
//! that time bracketed by what the test itself saw; `/metrics` carries the
//! span histograms and the store-side causes.

use std::time::{Duration, Instant};

use prometheus_parse::Scrape;

use crate::support::{
    endpoints,
    metrics::{number, scrape},
    pick, publish, MetricsBroker, Receiver,
};

/// The stages, in the order an event passes them.
const STAGES: [&str; 7] = [
    "queued",
    "commit_started",
    "durable",
    "head_published",
    "read",
    "attempt_started",
    "responded",
];
const SPANS: [&str; 6] = ["queue", "commit", "head", "wakeup", "dispatch", "http"];
/// Gauges are seconds as `f64`: nanosecond stamps survive within this.
const RESOLUTION: f64 = 1e-6;

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(number)
}

fn stalls(scrape: &Scrape) -> f64 {
    SPANS
        .iter()
        .filter_map(|d| value(scrape, "stevedore_stalls_total", &[("dominant", d)]))
        .sum()
}

#[tokio::test]
async fn stall_log_reports_an_event_s_stages_in_order_summing_to_its_delivery_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = stevedore::config::Config {
        // Every event is over it.
        stall_threshold: Duration::from_nanos(1),
        ..crate::support::server::metrics_config(dir.path())
    };
    let broker = MetricsBroker::start(config).await;
    let rx = Receiver::start().await;
    let mut admin = stevedore::pb::admin_client::AdminClient::new(broker.channel.clone());
    endpoints::create(
        &mut admin,
        stevedore::pb::Endpoint {
            url: rx.url.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut p = stevedore::pb::publisher_client::PublisherClient::new(broker.channel.clone());

    let before_publish = Instant::now();
    let offset = publish(&mut p, pick("stalled-1", "SO-1")).await;
    let after_publish = Instant::now();
    let received = rx.wait_for(1, Duration::from_secs(10)).await[0].received_at;

    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = scrape(broker.metrics_addr).await;
        if stalls(&scrape) >= 1.0 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "the event was never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen = Instant::now();
    assert_eq!(stalls(&scrape), 1.0, "one event, one report");

    // Its stages, each after the one before.
    let offset = offset.to_string();
    let at: Vec<f64> = STAGES
        .iter()
        .map(|stage| {
            let labels = [("rank", "0"), ("offset", offset.as_str()), ("stage", stage)];
            value(&scrape, "stevedore_stall_slowest_seconds", &labels)
                .unwrap_or_else(|| panic!("no {stage} stage for offset {offset}"))
        })
        .collect();
    assert_eq!(at[0], 0.0, "stages are counted from queued: {at:?}");
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "out of order: {at:?}");
    let total = at[6];

    // The spans sum to the total, and each is the gap between two stages.
    let spans: Vec<f64> = SPANS
        .iter()
        .map(|span| {
            let labels = [("span", *span)];
            assert_eq!(
                value(&scrape, "stevedore_stall_span_seconds_count", &labels),
                Some(1.0),
                "{span}"
            );
            value(&scrape, "stevedore_stall_span_seconds_sum", &labels).unwrap()
        })
        .collect();
    for (i, span) in spans.iter().enumerate() {
        assert!(
            (span - (at[i + 1] - at[i])).abs() <= RESOLUTION,
            "{i}: {spans:?} {at:?}"
        );
    }
    assert!((spans.iter().sum::<f64>() - total).abs() <= RESOLUTION);

    // Bracketed by the test's own clock: queued after the publish call
    // began and before it returned; the attempt started before the
    // receiver got it, the answer came after; all before the scrape.
    let secs = |d: Duration| d.as_secs_f64();
    assert!(total <= secs(seen - before_publish) + RESOLUTION);
    assert!(at[5] <= secs(received - before_publish) + RESOLUTION);
    assert!(total + RESOLUTION >= secs(received.saturating_duration_since(after_publish)));

    // The store side: the group commit's fsync was timed and counted (the
    // threshold is one nanosecond), the group seen.
    let fsync = [("cause", "fsync")];
    assert!(value(&scrape, "stevedore_stall_cause_max_seconds", &fsync).unwrap() > 0.0);
    assert!(
        value(
            &scrape,
            "stevedore_stall_cause_over_threshold_total",
            &fsync
        )
        .unwrap()
            >= 1.0
    );
    assert!(value(&scrape, "stevedore_stall_max_group_events", &[]).unwrap() >= 1.0);
    for cause in ["zero_fill", "state_flush", "runtime_lag"] {
        let labels = [("cause", cause)];
        assert!(value(&scrape, "stevedore_stall_cause_max_seconds", &labels).is_some());
    }
    broker.stop().await;
}
