//! Reading the broker's `/metrics` listener as Prometheus does.

use prometheus_parse::{Sample, Scrape, Value};

/// The body of `GET /metrics` and its content type (status 200 asserted).
pub async fn scrape_text(addr: std::net::SocketAddr) -> (String, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), content_type)
}

/// `/metrics` parsed with `prometheus-parse`.
pub async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let (text, _) = scrape_text(addr).await;
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// A sample's value, for counters, gauges and untyped samples.
pub fn number(s: &Sample) -> f64 {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{} is not a number: {:?}", s.metric, s.value),
    }
}
