//! The deliveries part of `stevedore-bench cluster` (#15): webhook
//! deliveries/s and the brokers' CPU per delivery on the 3-node cluster
//! through one and through two brokers, beside the embedded broker with the
//! same events, endpoints and receivers, in the same run.
//!
//! The brokers run as child processes (this program's `__serve`), each on
//! its own data directory, so the CPU counted is theirs alone
//! (`/proc/<pid>/stat`, user + system): not this process's (publishers,
//! receivers, polling), nor the nats-server nodes', which are counted
//! apart. Nothing here assumes which broker delivers which endpoint: with
//! two brokers, both brokers' CPU is summed, and an endpoint counts as
//! recorded once one of the brokers says its backlog is 0 (the broker that
//! delivers it says so first; the other reads it from its copy of the
//! state a moment later).

use std::{net::SocketAddr, time::Duration, time::Instant};

use anyhow::{Context, Result};
use stevedore::pb::{self, admin_client::AdminClient, publisher_client::PublisherClient};

use crate::{
    cpu::{cpu_of, micros_per},
    delivery::backlog,
    harness::{self, create_endpoint, endpoint, ChildBroker},
    nats, publish,
    receiver::Receiver,
};

/// Endpoints, each with its own receiver, every one subscribed to every
/// event.
pub const ENDPOINTS: usize = 4;
/// Each endpoint's `max_in_flight` (64 requests in flight in all, as the
/// `deliveries` scenario's one endpoint).
pub const MAX_IN_FLIGHT: u32 = 16;
/// Concurrent PublishBatch callers, spread over the brokers.
const CALLERS: usize = 4;
/// The longest wait for the receivers, then for the backlogs.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(300);
const RECORD_TIMEOUT: Duration = Duration::from_secs(120);

/// What one measurement gave.
pub struct Deliveries {
    /// Deliveries per second until every endpoint's backlog was 0.
    pub recorded: f64,
    /// Deliveries per second until every receiver had every event.
    pub received: f64,
    /// The brokers' CPU per delivery, µs.
    pub broker_cpu: f64,
    /// The busiest broker's alone, µs (with one broker, the same).
    pub busiest_cpu: f64,
    /// The nats-server nodes' CPU per delivery, µs (0 without a cluster).
    pub nats_cpu: f64,
}

/// Every run's figures of one setting (embedded, 1 broker, 2 brokers).
#[derive(Default)]
pub struct Runs {
    pub recorded: Vec<f64>,
    pub received: Vec<f64>,
    pub broker_cpu: Vec<f64>,
    pub busiest_cpu: Vec<f64>,
    pub nats_cpu: Vec<f64>,
}

impl Runs {
    pub fn push(&mut self, d: &Deliveries) {
        self.recorded.push(d.recorded);
        self.received.push(d.received);
        self.broker_cpu.push(d.broker_cpu);
        self.busiest_cpu.push(d.busiest_cpu);
        self.nats_cpu.push(d.nats_cpu);
    }

    /// The last run's figures, for the progress line.
    pub fn last_text(&self) -> String {
        let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        format!(
            "{:.0}/s, {:.0}/s, {:.1} µs (busiest broker {:.1} µs), {:.1} µs",
            last(&self.recorded),
            last(&self.received),
            last(&self.broker_cpu),
            last(&self.busiest_cpu),
            last(&self.nats_cpu)
        )
    }
}

/// `n` events through an embedded broker (a child process on a fresh data
/// directory) to [`ENDPOINTS`] endpoints.
pub async fn embedded(n: u64, tag: &str) -> Result<Deliveries> {
    let dir = harness::tempdir()?;
    let broker = ChildBroker::start(&dir.path().join("data")).await?;
    let result = measure(&[&broker], &[], n, tag).await;
    broker.stop().await?;
    result
}

/// `n` events through `count` brokers (child processes) on `nodes`, sharing
/// the stream and endpoints of installation `prefix`, to [`ENDPOINTS`]
/// endpoints.
pub async fn cluster(
    nodes: &nats::Cluster,
    count: usize,
    prefix: &str,
    n: u64,
) -> Result<Deliveries> {
    let settings = crate::cluster::settings(nodes, prefix);
    let mut dirs = Vec::new();
    let mut brokers = Vec::new();
    for _ in 0..count {
        let dir = harness::tempdir()?;
        brokers.push(ChildBroker::start_with(&dir.path().join("data"), &settings).await?);
        dirs.push(dir);
    }
    let result = measure(
        &brokers.iter().collect::<Vec<_>>(),
        &nodes.pids(),
        n,
        prefix,
    )
    .await;
    for b in brokers {
        b.stop().await?;
    }
    drop(dirs);
    result
}

/// Warms each broker up with one publish, creates the endpoints on the
/// first, then publishes `n` events (ids `{tag}-d-<i>`, each its own
/// ordering key) with PublishBatch from [`CALLERS`] callers spread over the
/// brokers; the clock and the CPU spans run from the first publish until
/// every receiver has every event ("received") and then until, for every
/// endpoint, one of the brokers says its backlog is 0 ("recorded").
async fn measure(
    brokers: &[&ChildBroker],
    nats_pids: &[u32],
    n: u64,
    tag: &str,
) -> Result<Deliveries> {
    let addrs: Vec<SocketAddr> = brokers.iter().map(|b| b.addr).collect();
    let pids = brokers
        .iter()
        .map(|b| b.pid().context("a broker process without a pid"))
        .collect::<Result<Vec<u32>>>()?;
    for (i, addr) in addrs.iter().enumerate() {
        anyhow::ensure!(
            harness::serving(harness::connect(*addr).await?, format!("{tag}-warm-{i}")).await,
            "broker {i} ({addr}) is not serving"
        );
    }
    let mut admins = Vec::new();
    for addr in &addrs {
        admins.push(AdminClient::new(harness::connect(*addr).await?));
    }
    let (mut receivers, mut ids) = (Vec::new(), Vec::new());
    for _ in 0..ENDPOINTS {
        let rx = Receiver::start(Default::default()).await?;
        let e = pb::Endpoint {
            max_in_flight: MAX_IN_FLIGHT,
            ..endpoint(&rx.url)
        };
        ids.push(create_endpoint(&mut admins[0], e).await?);
        receivers.push(rx);
    }
    let mut clients = Vec::new();
    for i in 0..CALLERS {
        clients.push(PublisherClient::new(
            harness::connect(addrs[i % addrs.len()]).await?,
        ));
    }
    let requests = publish::batch_requests(n, &format!("{tag}-d"));
    let brokers_before = each_cpu(&pids)?;
    let nats_before = cpu_sum(nats_pids)?;
    let started = Instant::now();
    publish::send_batches(clients, requests).await?;
    for rx in &receivers {
        rx.wait_for(n, RECEIVE_TIMEOUT).await?;
    }
    let received = started.elapsed();
    for id in &ids {
        harness::wait_until(
            &format!("endpoint {id}'s backlog 0 on some broker"),
            RECORD_TIMEOUT,
            Duration::from_millis(5),
            || {
                let (mut admins, id) = (admins.clone(), id.clone());
                async move {
                    for admin in &mut admins {
                        if backlog(admin, id.clone()).await? == 0 {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
            },
        )
        .await?;
    }
    let recorded = started.elapsed();
    let brokers_cpu: Vec<Duration> = each_cpu(&pids)?
        .into_iter()
        .zip(brokers_before)
        .map(|(after, before)| after.saturating_sub(before))
        .collect();
    let nats_cpu = cpu_sum(nats_pids)?.saturating_sub(nats_before);
    let deliveries = n * ENDPOINTS as u64;
    Ok(Deliveries {
        recorded: deliveries as f64 / recorded.as_secs_f64(),
        received: deliveries as f64 / received.as_secs_f64(),
        broker_cpu: micros_per(brokers_cpu.iter().sum(), deliveries),
        busiest_cpu: micros_per(
            brokers_cpu.into_iter().max().unwrap_or_default(),
            deliveries,
        ),
        nats_cpu: micros_per(nats_cpu, deliveries),
    })
}

/// The CPU time the processes `pids` have used so far, summed.
fn cpu_sum(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|&p| cpu_of(p)).sum()
}

/// The CPU time each of the processes `pids` has used so far.
fn each_cpu(pids: &[u32]) -> Result<Vec<Duration>> {
    pids.iter().map(|&p| cpu_of(p)).collect()
}
