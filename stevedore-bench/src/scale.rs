//! Scenarios 7 to 9: reading a large log, memory with a large log and many
//! endpoints, and restarting on it.

use std::{
    marker::PhantomData,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Buf;
use http::uri::PathAndQuery;
use prost::Message;
use stevedore::{
    pb::{self, subscribe_request::Start, subscriber_client::SubscriberClient},
    store::{Store, StoreConfig},
};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::{
    cpu::{micros_per, Phase, RAW},
    harness::{self, create_endpoint, endpoint, Broker, ChildBroker},
    receiver,
    report::{Check, Figure, Section, Unit},
    Ctx,
};

// ---------------------------------------------------------------- catchup

pub async fn catchup(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(5);
    let n: u64 = if ctx.quick { 10_000 } else { 300_000 };
    let dir = harness::tempdir()?;
    let data = dir.path().join("data");
    let broker = Broker::start(harness::config(&data)).await?;
    harness::prefill(&broker, "c", n, 1000).await?;
    let (mut rates, mut cpu) = (Vec::new(), Vec::new());
    let (mut generated, mut generated_cpu) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (rate, micros) = read_all(&broker, n, Client::Slice).await?;
        rates.push(rate);
        cpu.push(micros);
        let (rate, micros) = read_all(&broker, n, Client::Generated).await?;
        generated.push(rate);
        generated_cpu.push(micros);
        ctx.progress(&format!(
            "catchup run {}: {:.0} events/s; tonic's generated client {:.0} events/s",
            run + 1,
            rates[run],
            generated[run]
        ));
    }
    broker.stop().await?;
    // For scale: how fast the store itself yields and decodes the records.
    let (mut raw, mut raw_cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (rate, cpu) = scan_log(&data)?;
        raw.push(rate);
        raw_cpu.push(cpu);
    }
    Ok(Section {
        name: "catchup",
        title: "Subscriber catch-up from earliest",
        runs,
        figures: vec![Figure::new("Subscribe catch-up events/s", Unit::PerSec, rates)
            .baseline("store scan + decode", raw.clone())
            .target(Check::RatioAtLeast(0.9)),
            Figure::new("CPU per event", Unit::Micros, cpu)
                .baseline("store scan + decode", raw_cpu.clone()),
            Figure::new("catch-up events/s, tonic's generated client", Unit::PerSec, generated)
                .baseline("store scan + decode", raw.clone()),
            Figure::new("CPU per event, tonic's generated client", Unit::Micros, generated_cpu)
                .baseline("store scan + decode", raw_cpu)],
        notes: vec![
            format!(
                "{n} ~1 KiB events prefilled; one Subscribe stream (earliest, ack mode NONE) per run over one HTTP/2 connection, read to the last event; each run reads the whole log again"
            ),
            "the client decodes each SubscribeResponse from the one contiguous slice that holds it, as the baseline decodes each record; each run also reads the log with tonic's generated client, whose decoder goes through `DecodeBuf` field by field (its per-field `advance` made that client's thread the bottleneck: one core busy while the broker used about 0.7)".into(),
            "baseline: the store's own read path in this process (`Store::read_from`, 1,024 events a call, each decoded into a `pb::Event`), after the broker has stopped".into(),
        ],
    })
}

/// Which client reads the log in [`read_all`].
#[derive(Clone, Copy)]
enum Client {
    /// Decodes with [`SliceCodec`].
    Slice,
    /// tonic's generated `SubscriberClient`.
    Generated,
}

/// Reads the whole log of `n` events from earliest on a new connection:
/// events per second, and the process's CPU time per event.
async fn read_all(broker: &Broker, n: u64, client: Client) -> Result<(f64, f64)> {
    let channel = broker.channel().await?;
    let request = pb::SubscribeRequest {
        start: Some(Start::Earliest(true)),
        ..Default::default()
    };
    let phase = Phase::start("catchup");
    let started = Instant::now();
    let mut stream = match client {
        Client::Slice => {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await?;
            grpc.server_streaming(
                tonic::Request::new(request),
                PathAndQuery::from_static("/stevedore.v1.Subscriber/Subscribe"),
                SliceCodec::<pb::SubscribeRequest, pb::SubscribeResponse>::default(),
            )
            .await?
            .into_inner()
        }
        Client::Generated => SubscriberClient::new(channel)
            .subscribe(request)
            .await?
            .into_inner(),
    };
    let mut got = 0u64;
    while got < n {
        let m = stream.message().await?.context("stream ended early")?;
        anyhow::ensure!(m.offset == got + 1, "offset {} after {got}", m.offset);
        got += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    Ok((rate, micros_per(phase.end(), n)))
}

/// A gRPC codec for the client: requests encoded by prost as usual, each
/// response decoded from the one contiguous slice tonic's `DecodeBuf` holds
/// it in, instead of through `Buf` calls field by field.
struct SliceCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for SliceCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E, D> Codec for SliceCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = SliceCodec<E, D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self::default()
    }
}

impl<E, D: Message + Default> Decoder for SliceCodec<E, D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, tonic::Status> {
        let len = buf.remaining();
        // `DecodeBuf` wraps one `BytesMut`: its chunk is the whole message.
        if buf.chunk().len() != len {
            return Err(tonic::Status::internal("a message split across chunks"));
        }
        let item = D::decode(buf.chunk()).map_err(|e| tonic::Status::internal(e.to_string()))?;
        buf.advance(len);
        Ok(Some(item))
    }
}

/// Events per second of the store's read path (`read_from` in batches,
/// each record decoded), and its CPU time per event.
fn scan_log(data: &Path) -> Result<(f64, f64)> {
    let (store, writer) = Store::open(&StoreConfig {
        path: data.to_owned(),
        cache_bytes: 64 * 1024 * 1024,
        segment_bytes: 64 * 1024 * 1024,
        max_group: 1024,
        commit_delay: std::time::Duration::ZERO,
        metrics: Default::default(),
        recovery: Default::default(),
        zero_fill: true,
    })?;
    let phase = Phase::start(RAW);
    let started = Instant::now();
    let mut n = 0u64;
    let mut from = store.first_offset()?;
    loop {
        let batch = store.local()?.read_from(from, 1024)?;
        let Some(last) = batch.last() else { break };
        from = last.offset + 1;
        n += batch.len() as u64;
        std::hint::black_box(batch);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = micros_per(phase.end(), n);
    drop(store);
    writer.join();
    Ok((rate, cpu))
}

// ---------------------------------------------------------------- dataset

/// A data directory with a large log, many endpoints and pending
/// deliveries, built once per invocation for `memory` and `restart`.
pub struct Dataset {
    pub events: u64,
    pub idle_endpoints: usize,
    pub pending_endpoints: usize,
    pub pending: u64,
    pub data: PathBuf,
    pub build_time: Duration,
    _dir: Option<tempfile::TempDir>,
}

impl Dataset {
    pub async fn build(ctx: &Ctx) -> Result<Dataset> {
        let (events, idle, pending_endpoints, pending_each) = if ctx.quick {
            (20_000u64, 50usize, 2usize, 1_000u64)
        } else {
            (1_000_000, 1_000, 10, 10_000)
        };
        let started = Instant::now();
        let (dir, data) = match &ctx.dataset_dir {
            Some(d) => (None, d.join(if ctx.quick { "quick" } else { "full" })),
            None => {
                let dir = harness::tempdir()?;
                let data = dir.path().join("data");
                (Some(dir), data)
            }
        };
        let ready = data.with_extension("complete");
        let dataset = |build_time| Dataset {
            events,
            idle_endpoints: idle,
            pending_endpoints,
            pending: pending_endpoints as u64 * pending_each,
            data: data.clone(),
            build_time,
            _dir: dir,
        };
        if ready.exists() {
            let secs: f64 = std::fs::read_to_string(&ready)?.trim().parse()?;
            ctx.progress(&format!("dataset: reusing {}", data.display()));
            return Ok(dataset(Duration::from_secs_f64(secs)));
        }
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        let broker = Broker::start(harness::config(&data)).await?;
        ctx.progress(&format!("dataset: publishing {events} events"));
        harness::prefill(&broker, "m", events, 1000).await?;
        ctx.progress(&format!("dataset: creating {idle} idle endpoints"));
        // Idle: 90 % filter on a type nobody publishes, 10 % paused; all
        // start at the head, so none has anything to deliver.
        let mut creates = Vec::new();
        for c in 0..4 {
            let mut admin = broker.admin().await?;
            let rx_url = "http://127.0.0.1:9/hook".to_owned();
            creates.push(tokio::spawn(async move {
                for i in (c..idle).step_by(4) {
                    let e = if i % 10 == 9 {
                        pb::Endpoint {
                            enabled: Some(false),
                            ..endpoint(&rx_url)
                        }
                    } else {
                        pb::Endpoint {
                            event_types: vec!["bench.never".into()],
                            ..endpoint(&rx_url)
                        }
                    };
                    create_endpoint(&mut admin, e).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for c in creates {
            c.await??;
        }
        // Pending: receivers that refuse connections, each starting
        // `pending_each` events before the head.
        let mut admin = broker.admin().await?;
        let down = receiver::refused_url().await?;
        for _ in 0..pending_endpoints {
            create_endpoint(
                &mut admin,
                pb::Endpoint {
                    start: Some(pb::endpoint::Start::StartOffset(events + 1 - pending_each)),
                    ..endpoint(&down)
                },
            )
            .await?;
        }
        // Let them fail a first round of attempts, so delivery records
        // and retry schedules exist too.
        tokio::time::sleep(Duration::from_secs(if ctx.quick { 1 } else { 3 })).await;
        broker.stop().await?;
        let build_time = started.elapsed();
        std::fs::write(&ready, build_time.as_secs_f64().to_string())?;
        Ok(dataset(build_time))
    }

    fn describe(&self) -> String {
        format!(
            "data directory: {} ~1 KiB events; {} idle endpoints (90 % with an event-type filter that matches nothing, 10 % paused); {} endpoints whose receiver refuses connections, {} pending deliveries between them (built in {:.0} s, {:.0} MiB on disk)",
            self.events,
            self.idle_endpoints,
            self.pending_endpoints,
            self.pending,
            self.build_time.as_secs_f64(),
            dir_size(&self.data) as f64 / (1024.0 * 1024.0)
        )
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ----------------------------------------------------------------- memory

pub async fn memory(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(3);
    let ds = ctx.dataset().await?;
    let (mut rss, mut hwm) = (Vec::new(), Vec::new());
    let read = ds.events.min(100_000);
    for run in 0..runs {
        let child = ChildBroker::start(&ds.data).await?;
        let pid = child.pid().context("child pid")?;
        let channel = harness::connect(child.addr).await?;
        harness::wait_until(
            "child serving",
            Duration::from_secs(60),
            Duration::from_millis(5),
            || {
                let ch = channel.clone();
                async move { Ok(harness::serving(ch, format!("mem-probe-{run}")).await) }
            },
        )
        .await?;
        let (at_start, _) = harness::rss_of(pid)?;
        // Some ordinary work: read the newest events, publish a few.
        let mut sub = pb::subscriber_client::SubscriberClient::new(channel.clone());
        let mut stream = sub
            .subscribe(pb::SubscribeRequest {
                start: Some(Start::Offset(ds.events - read + 1)),
                ..Default::default()
            })
            .await?
            .into_inner();
        for _ in 0..read {
            stream.message().await?.context("stream ended early")?;
        }
        drop(stream);
        let (after_read, _) = harness::rss_of(pid)?;
        let mut publisher = pb::publisher_client::PublisherClient::new(channel.clone());
        for b in 0..10u64 {
            let events = (0..1000)
                .map(|i| harness::event(format!("mem{run}-{b}-{i}"), b * 1000 + i))
                .collect();
            publisher
                .publish_batch(pb::PublishBatchRequest { events })
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(if ctx.quick { 200 } else { 2000 })).await;
        let (r, h) = harness::rss_of(pid)?;
        drop(channel);
        child.stop().await?;
        rss.push(r as f64);
        hwm.push(h as f64);
        let mib = |b: u64| b as f64 / 1048576.0;
        ctx.progress(&format!(
            "memory run {}: RSS {:.1} MiB (serving {:.1}, after the read {:.1}), peak {:.1} MiB",
            run + 1,
            mib(r),
            mib(at_start),
            mib(after_read),
            mib(h)
        ));
    }
    Ok(Section {
        name: "memory",
        title: "Memory with a large log and many endpoints",
        runs,
        figures: vec![
            Figure::new("broker RSS", Unit::MiB, rss).target(Check::AtMost(256.0 * 1048576.0)),
            Figure::new("broker peak RSS (VmHWM)", Unit::MiB, hwm),
        ],
        notes: vec![
            ds.describe(),
            format!(
                "the broker runs in a child process (this program's `__serve`, default config: 64 MiB state cache); after it serves, a subscriber reads the newest {read} events and 10,000 more are published; VmRSS is read from /proc/PID/status 2 s later"
            ),
        ],
    })
}

// ---------------------------------------------------------------- restart

pub async fn restart(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(3);
    let ds = ctx.dataset().await?;
    let mut times = Vec::new();
    for run in 0..runs {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let handle = tokio::spawn(stevedore::run(harness::config(&ds.data), listener, async {
            let _ = stopped.await;
        }));
        let mut probe = 0;
        harness::wait_until(
            "broker serving",
            Duration::from_secs(120),
            Duration::from_millis(2),
            || {
                probe += 1;
                let id = format!("restart-{run}-{probe}");
                async move {
                    let Ok(channel) = harness::connect(addr).await else {
                        return Ok(false);
                    };
                    Ok(
                        tokio::time::timeout(
                            Duration::from_secs(30),
                            harness::serving(channel, id),
                        )
                        .await
                        .unwrap_or(false),
                    )
                }
            },
        )
        .await?;
        let took = started.elapsed();
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .context("shutdown after restart")???;
        times.push(took.as_secs_f64());
        ctx.progress(&format!(
            "restart run {}: serving after {:.2} s",
            run + 1,
            times[run]
        ));
    }
    Ok(Section {
        name: "restart",
        title: "Restart with a large log and pending deliveries",
        runs,
        figures: vec![Figure::new("run() start → serving", Unit::Secs, times)
            .target(Check::AtMost(5.0))],
        notes: vec![
            ds.describe(),
            "time from calling `stevedore::run` (listener already bound) until grpc.health reports stevedore.v1.Publisher SERVING and a Publish succeeds, probed every 2 ms; the broker is stopped gracefully between runs (OS page cache warm, as after a process restart)".into(),
        ],
    })
}
