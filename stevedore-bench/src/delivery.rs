//! Scenarios 4 to 6: webhook delivery to local receivers (scenario 3,
//! `latency`, is in `latency.rs`).
//!
//! - `deliveries`: a pre-published backlog to one fast receiver, against a
//!   raw hyper client posting the same signed bodies at the same
//!   concurrency.
//! - `fanout`: ten endpoints fed as fast as they deliver.
//! - `isolation`: healthy endpoints' latency while two others time out.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use stevedore::{delivery::signing::Secret, pb, webhook};
use tonic::transport::Channel;

use crate::{
    cpu::{micros_per, Phase, RAW},
    harness::{self, create_endpoint, endpoint, event, Broker},
    latency::{latencies, paced},
    receiver::{self, Receiver},
    report::{Check, Figure, Section, Unit},
    Ctx,
};

// ------------------------------------------------------------- deliveries

const DELIVERY_CONCURRENCY: u32 = 64;

pub async fn deliveries(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(5);
    let n: u64 = if ctx.quick { 2_000 } else { 30_000 };
    let (mut rate, mut recv_rate, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu, mut raw_cpu) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let r = raw_hyper(n, 1, DELIVERY_CONCURRENCY as usize).await?;
        raw.push(r.rate);
        raw_cpu.push(r.cpu_per_request);
        let (recorded, received, c) = broker_deliveries(n, run).await?;
        rate.push(recorded);
        recv_rate.push(received);
        cpu.push(c);
        ctx.progress(&format!(
            "deliveries run {}: {:.0}/s recorded ({:.0}/s received), raw hyper {:.0}/s; CPU {c:.1} µs per delivery, raw {:.1} µs per request",
            run + 1,
            rate[run],
            recv_rate[run],
            raw[run],
            r.cpu_per_request,
        ));
    }
    let base = "raw hyper client";
    Ok(Section {
        name: "deliveries",
        title: "Deliveries to one fast receiver",
        runs,
        figures: vec![
            Figure::new("deliveries/s (all recorded)", Unit::PerSec, rate)
                .baseline(base, raw.clone())
                .target(Check::RatioAtLeast(0.5)),
            Figure::new("deliveries/s (all received)", Unit::PerSec, recv_rate)
                .baseline(base, raw),
            Figure::new("CPU per delivery", Unit::Micros, cpu).baseline(base, raw_cpu),
        ],
        notes: vec![
            format!(
                "backlog of {n} ~1 KiB events published first; then an endpoint is created from earliest with ordering NONE and max_in_flight {DELIVERY_CONCURRENCY}; the clock runs from CreateEndpoint until the receiver has every request (\"received\") and until the endpoint's backlog is 0, i.e. every delivery recorded and acked durably (\"recorded\")"
            ),
            format!(
                "baseline: a hyper-util legacy client (HTTP/1.1, pooled, nodelay) posting the same rendered bodies with the same headers, each signed (HMAC-SHA256) as it is sent, from {DELIVERY_CONCURRENCY} tasks, to the same kind of receiver"
            ),
            CPU_NOTE.into(),
        ],
    })
}

/// How the CPU figures are taken.
const CPU_NOTE: &str = "CPU = the whole process's user + system time (broker, receivers and load generator alike; /proc/self/stat, 10 ms ticks) over the measured span, divided by the requests the receivers got; the raw client's likewise";

/// Returns (recorded/s, received/s, CPU µs per delivery).
async fn broker_deliveries(n: u64, run: usize) -> Result<(f64, f64, f64)> {
    let broker = Broker::fresh().await?;
    harness::prefill(&broker, &format!("d{run}"), n, 1000).await?;
    let rx = Receiver::start(Default::default()).await?;
    let mut admin = broker.admin().await?;
    let phase = Phase::start("deliveries");
    let started = Instant::now();
    let id = create_endpoint(
        &mut admin,
        pb::Endpoint {
            max_in_flight: DELIVERY_CONCURRENCY,
            ordering: pb::Ordering::None as i32,
            start: Some(pb::endpoint::Start::StartEarliest(true)),
            ..endpoint(&rx.url)
        },
    )
    .await?;
    rx.wait_for(n, Duration::from_secs(300)).await?;
    let received = started.elapsed();
    wait_backlog_zero(&mut admin, &id, Duration::from_secs(120)).await?;
    let recorded = started.elapsed();
    let cpu = phase.end();
    broker.stop().await?;
    Ok((
        n as f64 / recorded.as_secs_f64(),
        n as f64 / received.as_secs_f64(),
        micros_per(cpu, n),
    ))
}

/// Waits until the broker behind `admin` says endpoint `id` has nothing
/// left to deliver (every delivery recorded and acked durably).
async fn wait_backlog_zero(
    admin: &mut pb::admin_client::AdminClient<Channel>,
    id: &str,
    timeout: Duration,
) -> Result<()> {
    harness::wait_until(
        "endpoint backlog 0",
        timeout,
        Duration::from_millis(5),
        || {
            let mut admin = admin.clone();
            let id = id.to_owned();
            async move { Ok(backlog(&mut admin, id).await? == 0) }
        },
    )
    .await
}

/// Endpoint `id`'s backlog as the broker behind `admin` counts it.
pub async fn backlog(
    admin: &mut pb::admin_client::AdminClient<Channel>,
    id: String,
) -> Result<u64> {
    let e = admin
        .get_endpoint(pb::GetEndpointRequest { id })
        .await?
        .into_inner()
        .endpoint
        .context("endpoint")?;
    Ok(e.backlog)
}

/// What the raw client did: requests/s, and CPU µs per request.
struct Raw {
    rate: f64,
    cpu_per_request: f64,
}

/// `n` signed POSTs of the benchmark bodies to each of `receivers`
/// receivers, each through its own plain hyper client (as each endpoint
/// has its own) from `concurrency` tasks.
async fn raw_hyper(n: u64, receivers: usize, concurrency: usize) -> Result<Raw> {
    let bodies: Arc<Vec<(String, Bytes)>> = Arc::new(
        (0..n)
            .map(|i| {
                let id = format!("raw-{i}");
                let body = webhook::render_body(&event(id.clone(), i))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((id, Bytes::from(body)))
            })
            .collect::<Result<_>>()?,
    );
    let secret = Arc::new(Secret::generate());
    let mut rxs = Vec::new();
    for _ in 0..receivers {
        rxs.push(Receiver::start(Default::default()).await?);
    }
    let phase = Phase::start(RAW);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for rx in &rxs {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build(http);
        let uri: http::Uri = rx.url.parse()?;
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..concurrency {
            let (client, secret, uri, next, bodies) = (
                client.clone(),
                secret.clone(),
                uri.clone(),
                next.clone(),
                bodies.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let (id, body) = &bodies[i as usize];
                    let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
                    let signature = secret.sign(id, ts, body);
                    let req = Request::post(uri.clone())
                        .header("content-type", "application/json")
                        .header("x-jasci-event", "pick.confirmed")
                        .header("webhook-id", id.as_str())
                        .header("webhook-timestamp", ts)
                        .header("webhook-signature", signature)
                        .body(Full::new(body.clone()))?;
                    let resp = client.request(req).await?;
                    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                    resp.into_body().collect().await?;
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let cpu = phase.end();
    for rx in &rxs {
        anyhow::ensure!(rx.count() >= n, "receiver got {} of {n}", rx.count());
    }
    let total = n * receivers as u64;
    Ok(Raw {
        rate: total as f64 / elapsed.as_secs_f64(),
        cpu_per_request: micros_per(cpu, total),
    })
}

// ----------------------------------------------------------------- fanout

const FANOUT_ENDPOINTS: usize = 10;
const FANOUT_MAX_IN_FLIGHT: u32 = 16;

pub async fn fanout(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(3);
    let (warmup, measure, raw_n) = if ctx.quick {
        (Duration::from_millis(300), Duration::from_secs(1), 500)
    } else {
        (Duration::from_secs(1), Duration::from_secs(5), 10_000)
    };
    let (mut rate, mut conns, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw, mut raw_cpu) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let r = raw_hyper(raw_n, FANOUT_ENDPOINTS, FANOUT_MAX_IN_FLIGHT as usize).await?;
        raw.push(r.rate);
        raw_cpu.push(r.cpu_per_request);
        let (d, c, u) = fanout_run(run, warmup, measure).await?;
        rate.push(d);
        conns.push(c as f64);
        cpu.push(u);
        ctx.progress(&format!(
            "fanout run {}: {d:.0} deliveries/s, max {c} connections per endpoint, raw hyper {:.0}/s; CPU {u:.1} µs per delivery, raw {:.1} µs per request",
            run + 1,
            r.rate,
            r.cpu_per_request,
        ));
    }
    let base = "raw hyper clients";
    Ok(Section {
        name: "fanout",
        title: "Fan-out to 10 endpoints",
        runs,
        figures: vec![
            Figure::new("deliveries/s, 10 endpoints", Unit::PerSec, rate)
                .baseline(base, raw)
                .target(Check::RatioAtLeast(0.5)),
            Figure::new("max connections per endpoint", Unit::Count, conns)
                .target(Check::AtMost(f64::from(FANOUT_MAX_IN_FLIGHT))),
            Figure::new("CPU per delivery", Unit::Micros, cpu).baseline(base, raw_cpu),
        ],
        notes: vec![
            format!(
                "{FANOUT_ENDPOINTS} endpoints (each its own receiver; default ordering KEY with a distinct key per event, max_in_flight {FANOUT_MAX_IN_FLIGHT}); PublishBatch of 500 ~1 KiB events whenever the slowest endpoint is fewer than 5,000 events behind; {warmup:?} warm-up, then deliveries counted at the receivers for {measure:?}; connections = most TCP connections open at once at one receiver"
            ),
            format!(
                "baseline: {FANOUT_ENDPOINTS} hyper-util legacy clients, one per receiver, each posting {raw_n} signed benchmark bodies from {FANOUT_MAX_IN_FLIGHT} tasks (as in `deliveries`)"
            ),
            format!("{CPU_NOTE}; the broker's span includes publishing (a tenth of an event's publish per delivery)"),
        ],
    })
}

/// Returns (deliveries/s, max connections at one receiver, CPU µs per
/// delivery).
async fn fanout_run(run: usize, warmup: Duration, measure: Duration) -> Result<(f64, usize, f64)> {
    const WINDOW: u64 = 5_000;
    const BATCH: u64 = 500;
    let broker = Broker::fresh().await?;
    let mut admin = broker.admin().await?;
    let mut receivers = Vec::new();
    for _ in 0..FANOUT_ENDPOINTS {
        let rx = Receiver::start(Default::default()).await?;
        create_endpoint(
            &mut admin,
            pb::Endpoint {
                max_in_flight: FANOUT_MAX_IN_FLIGHT,
                ..endpoint(&rx.url)
            },
        )
        .await?;
        receivers.push(rx);
    }
    let mut publisher = broker.publisher().await?;
    let total = |rs: &[Receiver]| rs.iter().map(Receiver::count).sum::<u64>();
    let slowest = |rs: &[Receiver]| rs.iter().map(Receiver::count).min().unwrap_or(0);
    let started = Instant::now();
    let (mut published, mut mark) = (0u64, None);
    loop {
        let now = Instant::now();
        if mark.is_none() && now >= started + warmup {
            mark = Some((now, total(&receivers), Phase::start("fanout")));
        }
        if now >= started + warmup + measure {
            break;
        }
        if published - slowest(&receivers) < WINDOW {
            let events = (published..published + BATCH)
                .map(|i| event(format!("f{run}-{i}"), i))
                .collect();
            publisher
                .publish_batch(pb::PublishBatchRequest { events })
                .await?;
            published += BATCH;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (t0, c0, phase) = mark.context("warm-up mark")?;
    let delivered = total(&receivers) - c0;
    let rate = delivered as f64 / t0.elapsed().as_secs_f64();
    let cpu = phase.end();
    let conns = receivers
        .iter()
        .map(Receiver::max_connections)
        .max()
        .unwrap_or(0);
    broker.stop().await?;
    Ok((rate, conns, micros_per(cpu, delivered)))
}

// -------------------------------------------------------------- isolation

const ISOLATION_ENDPOINTS: usize = 10;
const ISOLATION_HANGING: usize = 2;

pub async fn isolation(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(3);
    let (rate, n): (u64, u64) = if ctx.quick { (200, 100) } else { (500, 2_000) };
    let (mut healthy, mut degraded) = (Vec::new(), Vec::new());
    let (mut healthy50, mut degraded50) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (a50, a99) = isolation_run(run, 0, rate, n).await?;
        let (b50, b99) = isolation_run(run, ISOLATION_HANGING, rate, n).await?;
        healthy.push(a99);
        degraded.push(b99);
        healthy50.push(a50);
        degraded50.push(b50);
        ctx.progress(&format!(
            "isolation run {}: p99 all healthy {a99:.2} ms, with {ISOLATION_HANGING} timing out {b99:.2} ms (p50 {a50:.2} / {b50:.2} ms)",
            run + 1
        ));
    }
    let base = "all healthy";
    Ok(Section {
        name: "isolation",
        title: "Isolation: 2 of 10 endpoints timing out",
        runs,
        figures: vec![
            Figure::new("healthy endpoints' p99, 2 timing out", Unit::Millis, degraded)
                .baseline(base, healthy)
                .target(Check::RatioAtMost(2.0)),
            Figure::new("healthy endpoints' p50, 2 timing out", Unit::Millis, degraded50)
                .baseline(base, healthy50),
        ],
        notes: vec![format!(
            "{ISOLATION_ENDPOINTS} endpoints with a 1 s timeout, default ordering and max_in_flight; {n} events paced at {rate}/s, every event to every endpoint; latency = publish call start → arrival, over the {} endpoints that are healthy in both runs; the timing-out receivers read each request and never answer",
            ISOLATION_ENDPOINTS - ISOLATION_HANGING
        )],
    })
}

/// Returns the p50 and p99 (ms) of the healthy endpoints' latencies, with
/// the last `hanging` endpoints never answering.
async fn isolation_run(run: usize, hanging: usize, rate: u64, n: u64) -> Result<(f64, f64)> {
    let broker = Broker::fresh().await?;
    let mut admin = broker.admin().await?;
    let mut receivers = Vec::new();
    for i in 0..ISOLATION_ENDPOINTS {
        let rx = Receiver::start(receiver::Options {
            hang: i >= ISOLATION_ENDPOINTS - hanging,
            record: true,
        })
        .await?;
        create_endpoint(
            &mut admin,
            pb::Endpoint {
                timeout: Some(harness::pb_duration(Duration::from_secs(1))),
                ..endpoint(&rx.url)
            },
        )
        .await?;
        receivers.push(rx);
    }
    let healthy = &receivers[..ISOLATION_ENDPOINTS - ISOLATION_HANGING];
    let publisher = broker.publisher().await?;
    paced(&publisher, &format!("iw{run}-{hanging}"), 50, rate).await?;
    for rx in healthy {
        rx.wait_for(50, Duration::from_secs(30)).await?;
        rx.take_arrivals();
    }
    let starts = paced(&publisher, &format!("i{run}-{hanging}"), n, rate).await?;
    let mut lat = Vec::new();
    for rx in healthy {
        rx.wait_for(50 + n, Duration::from_secs(60)).await?;
        lat.extend(latencies(&starts, &rx.take_arrivals()));
    }
    broker.stop().await?;
    Ok((
        harness::percentile(&mut lat, 50.0),
        harness::percentile(&mut lat, 99.0),
    ))
}
