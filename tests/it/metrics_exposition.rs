//! `/metrics` read as Prometheus reads it: the real broker with its metrics
//! listener, some publishes, a duplicate, webhook deliveries and a durable
//! consumer, then the exposition checked line by line against the text
//! format (0.0.4) and parsed with `prometheus-parse` for the values.

use std::{collections::HashMap, time::Duration};

use prometheus_parse::{LineInfo, Sample, Scrape, Value};
use stevedore::pb::{subscribe_request::Start, SubscribeRequest};

use crate::support::{
    endpoints,
    metrics::{number, scrape_text as scrape},
    pick, publish, Receiver,
};

/// Checks a `{name="value",...}` label block (without the braces): names
/// are identifiers, values quoted with `\\`, `\"` and `\n` as the only
/// escapes. Returns the labels, unescaped.
fn labels(block: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = block.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            assert!(
                c == '_' || c.is_ascii_alphabetic() || (!name.is_empty() && c.is_ascii_digit()),
                "bad label name character {c:?} in {line:?}"
            );
            name.push(c);
            chars.next();
        }
        assert!(!name.is_empty(), "empty label name in {line:?}");
        assert_eq!(chars.next(), Some('='), "{line:?}");
        assert_eq!(chars.next(), Some('"'), "unquoted label value in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('\n') => panic!("raw newline in a label value: {line:?}"),
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        out.push((name, value));
        match chars.next() {
            None => return out,
            Some(',') => {}
            Some(c) => panic!("{c:?} after a label value in {line:?}"),
        }
    }
}

/// Checks the exposition against the text format, beyond what the lenient
/// parser checks (it skips lines it cannot read): every line is a HELP, a
/// TYPE or a sample; each family has one HELP then one TYPE before its
/// samples and its samples are contiguous; names and labels are well
/// formed; values are numbers; histogram buckets are cumulative and end
/// with `+Inf` equal to `_count`.
fn check_format(text: &str) {
    assert!(text.ends_with('\n'), "no final newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut finished: Vec<String> = Vec::new();
    let mut buckets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        assert!(!line.trim().is_empty(), "empty line in:\n{text}");
        match LineInfo::parse(line) {
            LineInfo::Doc { metric_name, .. } => {
                assert!(
                    !helped.iter().any(|h| h == metric_name),
                    "second HELP for {metric_name}"
                );
                helped.push(metric_name.to_owned());
                if let Some(done) = current.take() {
                    finished.push(done);
                }
            }
            LineInfo::Type { .. } => {
                let mut words = line.split(' ');
                let (hash, kw, name, kind) =
                    (words.next(), words.next(), words.next(), words.next());
                assert_eq!(
                    (hash, kw, words.next()),
                    (Some("#"), Some("TYPE"), None),
                    "{line:?}"
                );
                let (name, kind) = (name.unwrap(), kind.unwrap());
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "unexpected type in {line:?}"
                );
                assert_eq!(
                    helped.last().map(String::as_str),
                    Some(name),
                    "TYPE without HELP: {line:?}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "second TYPE: {line:?}"
                );
                current = Some(name.to_owned());
            }
            LineInfo::Sample {
                metric_name,
                labels: block,
                value,
                timestamp,
            } => {
                assert_eq!(timestamp, None, "{line:?}");
                let family = current
                    .clone()
                    .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
                let kind = &types[&family];
                let suffix = metric_name.strip_prefix(family.as_str()).unwrap_or_else(|| {
                    panic!("{line:?} is not in the family {family} (or its family's samples are not contiguous)")
                });
                assert!(!finished.contains(&family), "{line:?}");
                let allowed: &[&str] = if kind == "histogram" {
                    &["_bucket", "_sum", "_count"]
                } else {
                    &[""]
                };
                assert!(allowed.contains(&suffix), "{line:?} in a {kind}");
                let v: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("value {value:?} is not a number in {line:?}"));
                assert!(v.is_finite(), "{line:?}");
                let labels = match block {
                    Some(b) => {
                        assert!(
                            line.starts_with(&format!("{metric_name}{{{b}}} ")),
                            "{line:?}"
                        );
                        labels(b, line)
                    }
                    None => {
                        assert!(line.starts_with(&format!("{metric_name} ")), "{line:?}");
                        Vec::new()
                    }
                };
                match suffix {
                    "_bucket" => {
                        let le = labels
                            .iter()
                            .find(|(k, _)| k == "le")
                            .unwrap_or_else(|| panic!("bucket without le: {line:?}"));
                        let le = if le.1 == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.1.parse().unwrap()
                        };
                        buckets.entry(family.clone()).or_default().push((le, v));
                    }
                    "_count" => {
                        counts.insert(family.clone(), v);
                    }
                    _ => {}
                }
            }
            LineInfo::Empty => panic!("empty line in:\n{text}"),
            LineInfo::Ignored => panic!("not a HELP, TYPE or sample line: {line:?}"),
        }
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let b = &buckets[family];
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}: {b:?}"
        );
        let (le, n) = *b.last().unwrap();
        assert_eq!(le, f64::INFINITY, "{family}");
        assert_eq!(Some(&n), counts.get(family), "{family}");
    }
}

fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[tokio::test]
async fn metrics_exposition_parses_and_carries_the_broker_s_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::server::metrics_config(dir.path());
    let broker = crate::support::MetricsBroker::start(config).await;
    let (metrics_addr, channel) = (broker.metrics_addr, broker.channel.clone());
    let rx = Receiver::start().await;
    let mut admin = stevedore::pb::admin_client::AdminClient::new(channel.clone());
    let (ep, _) = endpoints::create(
        &mut admin,
        stevedore::pb::Endpoint {
            url: rx.url.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut p = stevedore::pb::publisher_client::PublisherClient::new(channel.clone());
    for i in 0..3 {
        publish(&mut p, pick(&format!("x-{i}"), "SO")).await;
    }
    // The same id again: a duplicate, nothing written.
    publish(&mut p, pick("x-0", "SO")).await;
    let mut s = stevedore::pb::subscriber_client::SubscriberClient::new(channel);
    let _stream = s
        .subscribe(SubscribeRequest {
            consumer: "exposition".into(),
            start: Some(Start::Earliest(true)),
            max_in_flight: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    rx.wait_for(3, Duration::from_secs(10)).await;

    let delivered = [("endpoint", ep.id.as_str()), ("outcome", "delivered")];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (text, content_type, parsed) = loop {
        let (text, content_type) = scrape(metrics_addr).await;
        check_format(&text);
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = Scrape::parse(lines).unwrap();
        let done = parsed.samples.iter().any(|s| {
            s.metric == "stevedore_deliveries_total"
                && delivered.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                && number(s) == 3.0
        });
        if done {
            break (text, content_type, parsed);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "three deliveries never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");

    let none: &[(&str, &str)] = &[];
    for (name, labels, want) in [
        (
            "stevedore_events_published_total",
            &[("type", "pick.confirmed")][..],
            3.0,
        ),
        ("stevedore_publish_duplicates_total", none, 1.0),
        ("stevedore_publish_duplicates_differing_total", none, 0.0),
        ("stevedore_log_head_offset", none, 4.0),
        ("stevedore_log_events", none, 3.0),
        ("stevedore_deliveries_total", &delivered[..], 3.0),
        (
            "stevedore_endpoint_pending",
            &[("endpoint", ep.id.as_str())][..],
            0.0,
        ),
        (
            "stevedore_endpoint_dead",
            &[("endpoint", ep.id.as_str())][..],
            0.0,
        ),
        (
            "stevedore_endpoint_enabled",
            &[("endpoint", ep.id.as_str())][..],
            1.0,
        ),
        (
            "stevedore_consumer_lag",
            &[("consumer", "exposition")][..],
            3.0,
        ),
        ("stevedore_open_streams", none, 1.0),
        ("stevedore_open_connections", none, 1.0),
        ("stevedore_request_bytes_in_flight", none, 0.0),
        // Four publish calls, the duplicate's included.
        ("stevedore_publish_latency_seconds_count", none, 4.0),
        ("stevedore_delivery_latency_seconds_count", none, 3.0),
    ] {
        assert_eq!(
            number(find(&parsed, name, labels)),
            want,
            "{name}{labels:?} in:\n{text}"
        );
    }
    assert!(number(find(&parsed, "stevedore_log_disk_bytes", none)) > 0.0);
    assert!(number(find(&parsed, "stevedore_group_commit_size_count", none)) >= 1.0);

    // The histograms as the parser groups them: 17 latency bounds and +Inf.
    let Value::Histogram(buckets) =
        &find(&parsed, "stevedore_delivery_latency_seconds", none).value
    else {
        panic!("stevedore_delivery_latency_seconds is not a histogram");
    };
    assert_eq!(buckets.len(), 18, "{buckets:?}");
    assert_eq!(buckets[0].less_than, 0.0001);
    assert_eq!(buckets.last().unwrap().count, 3.0);
    let Value::Histogram(buckets) = &find(&parsed, "stevedore_group_commit_size", none).value
    else {
        panic!("stevedore_group_commit_size is not a histogram");
    };
    assert_eq!(buckets[0].less_than, 1.0);

    for (family, help) in [
        (
            "stevedore_events_published_total",
            "Events appended to the log, by type.",
        ),
        (
            "stevedore_deliveries_total",
            "Webhook delivery outcomes by endpoint.",
        ),
        (
            "stevedore_consumer_lag",
            "Head offset minus the consumer's cursor.",
        ),
        (
            "stevedore_publish_latency_seconds",
            "Publish calls, from request to durable ack.",
        ),
    ] {
        assert_eq!(
            parsed.docs.get(family).map(String::as_str),
            Some(help),
            "{family}"
        );
    }

    broker.stop().await;
}

/// The format check above rejects what a lenient parser would skip.
#[test]
fn the_format_check_rejects_malformed_expositions() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v\\\"w\"} 1\n";
    check_format(good);
    for bad in [
        // A sample without its family's TYPE.
        "b 1\n",
        // An unquoted label value.
        "# HELP a_total A.\n# TYPE a_total counter\na_total{k=v} 1\n",
        // A value that is not a number.
        "# HELP a_total A.\n# TYPE a_total counter\na_total one\n",
        // A stray line.
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n}{\n",
        // A histogram whose +Inf bucket is not its count.
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        // No final newline.
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1",
    ] {
        let caught = std::panic::catch_unwind(|| check_format(bad));
        assert!(caught.is_err(), "accepted:\n{bad}");
    }
}
