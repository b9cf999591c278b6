use std::sync::atomic::Ordering;

use super::*;

fn snapshot() -> Snapshot {
    Snapshot {
        head: 11,
        first: 1,
        disk_bytes: 4096,
        endpoints: vec![("ep_1".into(), 3, 1, true)],
        consumers: vec![("erp\"x".into(), 7)],
    }
}

#[test]
fn renders_the_text_format() {
    let m = Metrics::default();
    m.events_published.add(&["pick.confirmed"], 2);
    m.events_published.add(&["pick.confirmed"], 1);
    m.deliveries.add(&["ep_1", "delivered"], 5);
    m.publish_latency.observe(0.0007);
    m.publish_latency.observe(3.0);
    m.open_connections.fetch_add(2, Ordering::Relaxed);
    let text = m.render(&snapshot());
    assert!(text.contains("stevedore_events_published_total{type=\"pick.confirmed\"} 3\n"));
    assert!(
        text.contains("stevedore_deliveries_total{endpoint=\"ep_1\",outcome=\"delivered\"} 5\n")
    );
    assert!(text.contains("stevedore_publish_latency_seconds_bucket{le=\"0.0005\"} 0\n"));
    assert!(text.contains("stevedore_publish_latency_seconds_bucket{le=\"0.001\"} 1\n"));
    assert!(text.contains("stevedore_publish_latency_seconds_bucket{le=\"30\"} 2\n"));
    assert!(text.contains("stevedore_publish_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
    assert!(text.contains("stevedore_publish_latency_seconds_sum 3.0007\n"));
    assert!(text.contains("stevedore_publish_latency_seconds_count 2\n"));
    assert!(text.contains("stevedore_log_head_offset 11\n"));
    assert!(text.contains("stevedore_log_events 10\n"));
    assert!(text.contains("stevedore_log_disk_bytes 4096\n"));
    assert!(text.contains("stevedore_endpoint_pending{endpoint=\"ep_1\"} 3\n"));
    assert!(text.contains("stevedore_endpoint_dead{endpoint=\"ep_1\"} 1\n"));
    assert!(text.contains("stevedore_endpoint_enabled{endpoint=\"ep_1\"} 1\n"));
    assert!(text.contains("stevedore_consumer_lag{consumer=\"erp\\\"x\"} 7\n"));
    assert!(text.contains("stevedore_open_connections 2\n"));
    assert!(text.contains("stevedore_publish_duplicates_total 0\n"));
}

#[test]
fn help_and_type_once_per_family_with_one_period() {
    let m = Metrics::default();
    m.deliveries.add(&["ep_1", "delivered"], 1);
    m.deliveries.add(&["ep_1", "failed"], 1);
    let text = m.render(&snapshot());
    assert_eq!(
        text.matches("# HELP stevedore_deliveries_total Webhook delivery outcomes by endpoint.\n")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE stevedore_deliveries_total counter\n")
            .count(),
        1
    );
    assert!(text.contains("# TYPE stevedore_publish_latency_seconds histogram\n"));
    assert!(text.contains("# TYPE stevedore_consumer_lag gauge\n"));
    assert!(
        !text.contains(".."),
        "a help text ends in two periods:\n{text}"
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::default();
    m.connections_closed.add(&["a\\b\"c\nd"], 1);
    let text = m.render(&Snapshot::default());
    assert!(
        text.contains("stevedore_connections_closed_total{reason=\"a\\\\b\\\"c\\nd\"} 1\n"),
        "{text}"
    );
}

#[test]
fn remove_first_drops_every_series_of_an_endpoint() {
    let m = Metrics::default();
    m.deliveries.add(&["ep_1", "delivered"], 2);
    m.deliveries.add(&["ep_1", "dead"], 1);
    m.deliveries.add(&["ep_2", "delivered"], 4);
    m.deliveries.remove_first("ep_1");
    assert_eq!(m.deliveries.get(&["ep_1", "delivered"]), None);
    assert_eq!(m.deliveries.get(&["ep_1", "dead"]), None);
    assert_eq!(m.deliveries.get(&["ep_2", "delivered"]), Some(4));
    let text = m.render(&Snapshot::default());
    assert!(!text.contains("ep_1"), "{text}");
    // A series created again after the removal counts from zero and can be
    // removed again.
    m.deliveries.add(&["ep_1", "delivered"], 1);
    assert_eq!(m.deliveries.get(&["ep_1", "delivered"]), Some(1));
    m.deliveries.remove_first("ep_1");
    assert_eq!(m.deliveries.get(&["ep_1", "delivered"]), None);
}

#[test]
fn gauge_vec_adds_sets_and_removes() {
    let g = GaugeVec::default();
    g.add("a", 3);
    g.add("a", -1);
    assert_eq!(g.get("a"), 2);
    g.set("a", 7);
    assert_eq!(g.get("a"), 7);
    g.remove("a");
    assert_eq!(g.get("a"), 0);
}
