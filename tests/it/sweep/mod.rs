//! The bad-input sweep: more than 10,000 malformed or hostile requests
//! against the real in-process server, over raw HTTP/2 (hyper) so that
//! frames no well-behaved client would send can be sent: random bytes,
//! broken gRPC framing, wrong wire types, non-UTF-8 strings, unknown
//! fields, bad enums, oversize messages, deep `Struct`s, huge repeated
//! fields, bad URLs, header injection, hostile metadata, and memory
//! amplification (empty elements and map entries by the million).
//!
//! Then it proves: the server still answers health and a valid publish;
//! every answer was a proper gRPC status (HTTP 200 with `grpc-status`),
//! except for requests that are not gRPC requests at the HTTP level (see
//! [`Http`]); no state-changing call succeeded; the log and the endpoint
//! list are exactly as before.
//!
//! Seeded: the seed is printed, and `SWEEP_SEED=<n>` replays a run.

mod amplification;
mod case;
mod crafted;
mod random;
mod send;

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use rand::{rngs::StdRng, SeedableRng};
use stevedore::pb;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use self::{
    case::{Ctx, Outcome},
    random::cases,
    send::{connect, judge, send, Sender},
};
use crate::support::{hostile::pool, list_consumers, pick, publish, TestServer};

/// Requests sent (at least 10,000 by the rule).
const REQUESTS: usize = 10_500;
/// Requests in flight at once.
const CONCURRENCY: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_requests_change_nothing() {
    let seed: u64 = std::env::var("SWEEP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("sweep seed: {seed} (replay with SWEEP_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let server = TestServer::start().await;
    let addr = server.addr;

    // State to compare against: a few events and two endpoints (disabled,
    // so nothing is delivered while the sweep runs).
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    let mut a = server.admin().await;
    for i in 0..5 {
        publish(&mut p, pick(&format!("before-{i}"), "SO")).await;
    }
    let mut endpoint_ids = Vec::new();
    for n in 0..2 {
        let e = a
            .create_endpoint(pb::CreateEndpointRequest {
                endpoint: Some(pb::Endpoint {
                    url: format!("http://127.0.0.1:9/hook-{n}"),
                    enabled: Some(false),
                    headers: [("X-Api-Key".to_string(), "k".to_string())].into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        endpoint_ids.push(e.endpoint.unwrap().id);
    }
    let log_before = read_log(&mut s).await;
    let endpoints_before = list_endpoints(&mut a).await;
    let consumers_before = list_consumers(&mut a).await;

    let methods = pool()
        .services()
        .filter(|s| s.full_name().starts_with("stevedore.v1."))
        .flat_map(|s| {
            s.methods()
                .map(|m| {
                    (
                        format!("/{}/{}", s.full_name(), m.name()),
                        m.input().full_name().to_string(),
                        m.is_client_streaming(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let ctx = Ctx {
        config: server.config.clone(),
        methods,
        endpoint_ids,
    };
    let t = std::time::Instant::now();
    let cases = cases(&mut rng, &ctx);
    assert!(cases.len() >= 10_000);
    println!("generated {} requests in {:?}", cases.len(), t.elapsed());

    let started = std::time::Instant::now();
    let shared: Vec<Sender> = futures::future::join_all((0..4).map(|_| connect(addr))).await;
    let shared = Arc::new(shared);
    let results: Vec<(usize, Outcome)> = futures::stream::iter(cases.iter().enumerate())
        .map(|(i, case)| {
            let shared = shared.clone();
            async move {
                let mut sender = if case.own_connection {
                    connect(addr).await
                } else {
                    shared[i % shared.len()].clone()
                };
                (i, send(&mut sender, addr, case).await)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, outcome) in &results {
        let case = &cases[*i];
        let key = match outcome {
            Outcome::Status(c, _) => format!("{} grpc-status {c}", case.category),
            Outcome::Http(s) => format!("{} HTTP {s}", case.category),
            Outcome::Transport(_) => format!("{} transport error", case.category),
        };
        *codes.entry(key).or_default() += 1;
        if let Some(why) = judge(case, outcome) {
            failures.push(format!(
                "{} {} {:?}: {why}",
                case.category,
                case.path.chars().take(80).collect::<String>(),
                case.headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
            ));
        }
    }
    println!("{} requests in {elapsed:?}", results.len());
    for (k, n) in &codes {
        println!("  {n:6}  {k}");
    }
    assert!(
        failures.is_empty(),
        "{} bad answers (seed {seed}), e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Still serving, nothing changed.
    assert!(
        !server.handle.as_ref().unwrap().is_finished(),
        "the server is still running"
    );
    let health = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    assert_eq!(read_log(&mut s).await, log_before, "the log is unchanged");
    assert_eq!(
        list_endpoints(&mut a).await,
        endpoints_before,
        "the endpoints are unchanged"
    );
    assert_eq!(
        list_consumers(&mut a).await,
        consumers_before,
        "the durable consumers are unchanged"
    );
    let next = publish(&mut p, pick("after-sweep", "SO")).await;
    assert_eq!(
        next,
        log_before.len() as u64 + 1,
        "a valid publish lands right after the old head"
    );
}

/// Every event in the log, up to the first missing offset.
async fn read_log(
    s: &mut pb::subscriber_client::SubscriberClient<tonic::transport::Channel>,
) -> Vec<pb::GetEventResponse> {
    let mut out = Vec::new();
    for offset in 1.. {
        match s
            .get_event(pb::GetEventRequest {
                offset,
                ..Default::default()
            })
            .await
        {
            Ok(r) => out.push(r.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
                return out;
            }
        }
    }
    unreachable!()
}

async fn list_endpoints(
    a: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
) -> Vec<pb::Endpoint> {
    a.list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints
}
