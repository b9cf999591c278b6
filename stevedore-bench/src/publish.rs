//! Scenario 1: durable publishing. PublishBatch and PublishStream of
//! ~1 KiB events against the state engine's raw insert + fsync loop
//! (`store::baseline`).

use std::time::Instant;

use anyhow::Result;
use prost::Message;
use stevedore::{
    pb::{self, PublishBatchRequest, PublishRequest},
    store::baseline,
};

use crate::{
    harness::{self, event, Broker},
    report::{Check, Figure, Section, Unit},
    Ctx,
};

/// Events per PublishBatch request, and per group of the baseline loop.
const BATCH: u64 = 1000;
/// Concurrent PublishBatch callers (2 left the writer idle while the
/// next batch was still in transit; 4 keep it busy).
const BATCH_CALLERS: usize = 4;

pub async fn publish(ctx: &Ctx) -> Result<Section> {
    let n: u64 = if ctx.quick { 5_000 } else { 100_000 };
    let runs = ctx.runs(5);
    let (mut batch, mut stream, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        raw.push(raw_baseline(n, BATCH as usize).await?);
        batch.push(publish_batch(n, run).await?);
        stream.push(publish_stream(n, run).await?);
        ctx.progress(&format!(
            "publish run {}: batch {:.0}/s, stream {:.0}/s, {} {:.0}/s",
            run + 1,
            batch[run],
            stream[run],
            baseline::LABEL,
            raw[run]
        ));
    }
    let (encoded, _) = harness::event_sizes();
    let label = baseline::LABEL;
    Ok(Section {
        name: "publish",
        title: "Durable publish throughput",
        runs,
        figures: vec![
            Figure::new("PublishBatch events/s", Unit::PerSec, batch)
                .baseline(label, raw.clone())
                .target(Check::AtLeast(100_000.0))
                .target(Check::RatioAtLeast(0.5)),
            Figure::new("PublishStream events/s", Unit::PerSec, stream)
                .baseline(label, raw)
                .target(Check::AtLeast(100_000.0))
                .target(Check::RatioAtLeast(0.5)),
        ],
        notes: vec![
            format!(
                "{n} events of {encoded} bytes (encoded `pick.confirmed`, producer-set ids) per run, fresh data directory each run"
            ),
            format!(
                "PublishBatch: {BATCH} events per request, {BATCH_CALLERS} concurrent callers; PublishStream: one stream, one event per request, pipelined"
            ),
            baseline::describe(BATCH as usize),
        ],
    })
}

async fn publish_batch(n: u64, run: usize) -> Result<f64> {
    let broker = Broker::fresh().await?;
    // Requests are built before the clock starts.
    let requests: Vec<PublishBatchRequest> = (0..n)
        .step_by(BATCH as usize)
        .map(|start| PublishBatchRequest {
            events: (start..(start + BATCH).min(n))
                .map(|i| event(format!("b{run}-{i}"), i))
                .collect(),
        })
        .collect();
    let mut per_caller: Vec<Vec<PublishBatchRequest>> = vec![Vec::new(); BATCH_CALLERS];
    for (i, r) in requests.into_iter().enumerate() {
        per_caller[i % BATCH_CALLERS].push(r);
    }
    let mut clients = Vec::new();
    for _ in 0..BATCH_CALLERS {
        clients.push(broker.publisher().await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = per_caller
        .into_iter()
        .zip(clients)
        .map(|(reqs, mut client)| {
            tokio::spawn(async move {
                let mut acked = 0u64;
                for r in reqs {
                    acked += client.publish_batch(r).await?.into_inner().results.len() as u64;
                }
                Ok::<_, anyhow::Error>(acked)
            })
        })
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await??;
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(acked == n, "{acked} of {n} acked");
    broker.stop().await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

async fn publish_stream(n: u64, run: usize) -> Result<f64> {
    let broker = Broker::fresh().await?;
    let requests: Vec<PublishRequest> = (0..n)
        .map(|i| PublishRequest {
            event: Some(event(format!("s{run}-{i}"), i)),
        })
        .collect();
    let mut client = broker.publisher().await?;
    let started = Instant::now();
    let mut responses = client
        .publish_stream(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut acked = 0u64;
    while let Some(r) = responses.message().await? {
        anyhow::ensure!(!r.duplicate, "unexpected duplicate");
        acked += 1;
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(acked == n, "{acked} of {n} acked");
    broker.stop().await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The storage engine's work without the broker ([`baseline`]), on the
/// same encoded records, `group` per durable commit.
async fn raw_baseline(n: u64, group: usize) -> Result<f64> {
    let records: Vec<(u64, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let id = format!("raw-{i}");
            let record = stevedore_record(event(id.clone(), i));
            (i + 1, id, record)
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = harness::tempdir()?;
        let path = dir.path().join("data");
        let rate = baseline::insert_rate(&path, &records, group)?;
        drop(dir);
        Ok(rate)
    })
    .await?
}

/// The bytes the store writes for an event: its `EventRecord` (event as
/// field 1, publish time as field 2).
fn stevedore_record(e: pb::Event) -> Vec<u8> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct EventRecord {
        #[prost(message, optional, tag = "1")]
        event: Option<pb::Event>,
        #[prost(uint64, tag = "2")]
        published_at_nanos: u64,
    }
    EventRecord {
        event: Some(e),
        published_at_nanos: 1_780_000_000_000_000_000,
    }
    .encode_to_vec()
}
