//! Scenario 2 and its A/B: unary Publish.
//!
//! - `unary`: unary Publish from 64 concurrent callers against a no-op
//!   tonic Publisher driven by the same client code.
//! - `zerofill`: the same load on two brokers, the event log's zero-filler
//!   on and off.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use stevedore::pb::{
    self,
    publisher_server::{Publisher, PublisherServer},
    PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse,
};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{
    transport::{server::TcpIncoming, Channel},
    Request, Response, Status, Streaming,
};

use crate::{
    harness::{self, event, Broker},
    report::{Check, Figure, Section, Unit},
    Ctx,
};

/// Concurrent unary callers.
const CALLERS: usize = 64;
/// Callers per HTTP/2 connection.
const CALLERS_PER_CONNECTION: usize = 16;
/// Measured windows per server in a run, alternating between the two.
const WINDOWS: usize = 5;
/// Calls at the start of each window that are not recorded: all callers
/// start at once, and the first round of calls arrives together.
const SETTLE: Duration = Duration::from_millis(50);

/// Both servers run side by side and are measured in alternating short
/// windows (no-op, broker, no-op, broker, ...). This machine's speed drifts
/// by a third from one second to the next (other tenants of the host): two
/// back-to-back 2 s measurements compared the baseline and the broker at
/// different speeds, and the ratio of one run swung from 45 % to 80 %.
pub async fn unary(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(5);
    let (warmup, window) = window_sizes(ctx);
    let (mut ours, mut base) = (Series::default(), Series::default());
    for run in 0..runs {
        let noop = NoopServer::start().await?;
        let broker = Broker::fresh().await?;
        let mut b = Callers::connect(noop.addr, format!("n{run}")).await?;
        let mut o = Callers::connect(broker.addr, format!("u{run}")).await?;
        alternate(&mut b, &mut o, (warmup, window)).await?;
        noop.stop();
        broker.stop().await?;
        base.push(&mut b);
        ours.push(&mut o);
        ctx.progress(&format!(
            "unary run {}: broker {:.0}/s p50 {:.2} ms p99 {:.2} ms; no-op {:.0}/s p99 {:.2} ms",
            run + 1,
            ours.rate[run],
            ours.p50[run],
            ours.p99[run],
            base.rate[run],
            base.p99[run]
        ));
    }
    let name = "no-op tonic server";
    Ok(Section {
        name: "unary",
        title: "Unary Publish, 64 concurrent callers",
        runs,
        figures: vec![
            Figure::new("Publish calls/s", Unit::PerSec, ours.rate)
                .baseline(name, base.rate)
                .target(Check::RatioAtLeast(0.8)),
            Figure::new("Publish p50", Unit::Millis, ours.p50).baseline(name, base.p50),
            Figure::new("Publish p99", Unit::Millis, ours.p99)
                .baseline(name, base.p99)
                .target(Check::RatioAtMost(1.5)),
        ],
        notes: vec![
            format!(
                "{CALLERS} callers in a closed loop over {} HTTP/2 connections, ~1 KiB events with producer-set ids",
                CALLERS / CALLERS_PER_CONNECTION
            ),
            "baseline: a tonic server implementing Publisher that answers at once without storing, driven by the same client code in the same run".into(),
            format!(
                "each run starts both servers, warms each up for {warmup:?}, then measures them in {WINDOWS} alternating windows of {window:?} each (no-op, broker, no-op, ...), so that both see the same machine; each window starts with {SETTLE:?} of calls that are not recorded"
            ),
        ],
    })
}

/// The same unary load on two brokers in one run, the event log's
/// zero-filler on (`log_zero_fill = true`, the default) and off, measured
/// in alternating windows like [`unary`]: whether writing zeros ahead of
/// the log pays for itself on this machine.
pub async fn zerofill(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(5);
    let (warmup, window) = window_sizes(ctx);
    let start = |zero_fill: bool| async move {
        let dir = harness::tempdir()?;
        let mut config = harness::config(&dir.path().join("data"));
        config.log_zero_fill = zero_fill;
        let broker = Broker::start(config).await?;
        anyhow::Ok((broker, dir))
    };
    let (mut ours, mut base) = (Series::default(), Series::default());
    for run in 0..runs {
        let (off, _off_dir) = start(false).await?;
        let (on, _on_dir) = start(true).await?;
        let mut b = Callers::connect(off.addr, format!("z0-{run}")).await?;
        let mut o = Callers::connect(on.addr, format!("z1-{run}")).await?;
        alternate(&mut b, &mut o, (warmup, window)).await?;
        off.stop().await?;
        on.stop().await?;
        base.push(&mut b);
        ours.push(&mut o);
        ctx.progress(&format!(
            "zerofill run {}: on {:.0}/s p99 {:.2} ms; off {:.0}/s p99 {:.2} ms",
            run + 1,
            ours.rate[run],
            ours.p99[run],
            base.rate[run],
            base.p99[run]
        ));
    }
    let name = "log_zero_fill = false";
    Ok(Section {
        name: "zerofill",
        title: "Unary Publish with the log's zero-filler on vs off",
        runs,
        figures: vec![
            Figure::new("Publish calls/s, zero-fill on", Unit::PerSec, ours.rate)
                .baseline(name, base.rate),
            Figure::new("Publish p50, zero-fill on", Unit::Millis, ours.p50)
                .baseline(name, base.p50),
            Figure::new("Publish p99, zero-fill on", Unit::Millis, ours.p99)
                .baseline(name, base.p99),
        ],
        notes: vec![
            format!("{CALLERS} callers per broker, as in `unary`; both brokers run in this process on fresh data directories, measured in {WINDOWS} alternating windows of {window:?}"),
            "the figure is the broker with the zero-filler (the default); the baseline is the same broker with log_zero_fill = false".into(),
        ],
    })
}

/// Per-run figures of one side of an A/B: calls/s, p50 and p99 (ms).
#[derive(Default)]
struct Series {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Series {
    fn push(&mut self, callers: &mut Callers) {
        let (r, a, b) = callers.figures();
        self.rate.push(r);
        self.p50.push(a);
        self.p99.push(b);
    }
}

/// The warm-up and the window of [`unary`] and [`zerofill`].
fn window_sizes(ctx: &Ctx) -> (Duration, Duration) {
    if ctx.quick {
        (Duration::from_millis(100), Duration::from_millis(60))
    } else {
        (Duration::from_millis(500), Duration::from_millis(400))
    }
}

/// Warms both sides up, then measures them in [`WINDOWS`] alternating
/// windows, the baseline first.
async fn alternate(
    base: &mut Callers,
    ours: &mut Callers,
    (warmup, window): (Duration, Duration),
) -> Result<()> {
    base.drive(warmup, false).await?;
    ours.drive(warmup, false).await?;
    for _ in 0..WINDOWS {
        base.drive(window, true).await?;
        ours.drive(window, true).await?;
    }
    Ok(())
}

/// [`CALLERS`] unary callers on their own connections to one server, and
/// what they measured.
struct Callers {
    clients: Vec<pb::publisher_client::PublisherClient<Channel>>,
    prefix: String,
    seq: Arc<AtomicU64>,
    latencies: Vec<f64>,
    measured: Duration,
}

impl Callers {
    async fn connect(addr: std::net::SocketAddr, prefix: String) -> Result<Self> {
        let mut channels: Vec<Channel> = Vec::new();
        for _ in 0..CALLERS / CALLERS_PER_CONNECTION {
            channels.push(harness::connect(addr).await?);
        }
        Ok(Self {
            clients: (0..CALLERS)
                .map(|c| {
                    pb::publisher_client::PublisherClient::new(channels[c % channels.len()].clone())
                })
                .collect(),
            prefix,
            seq: Arc::new(AtomicU64::new(0)),
            latencies: Vec::new(),
            measured: Duration::ZERO,
        })
    }

    /// Every caller publishes in a closed loop for [`SETTLE`] and then
    /// `window`; if `record`, the calls that started in `window` are
    /// recorded (the last ones finish just after it).
    async fn drive(&mut self, window: Duration, record: bool) -> Result<()> {
        let start = Instant::now() + Duration::from_millis(5);
        let measure_from = start + SETTLE;
        let end = measure_from + window;
        let tasks: Vec<_> = self
            .clients
            .iter()
            .map(|client| {
                let mut client = client.clone();
                let (seq, prefix) = (self.seq.clone(), self.prefix.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    let mut latencies = Vec::new();
                    loop {
                        let i = seq.fetch_add(1, Ordering::Relaxed);
                        let req = PublishRequest {
                            event: Some(event(format!("{prefix}-{i}"), i)),
                        };
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        client.publish(req).await?;
                        if t >= measure_from {
                            latencies.push(harness::ms(t.elapsed()));
                        }
                    }
                    Ok::<_, anyhow::Error>(latencies)
                })
            })
            .collect();
        for t in tasks {
            let latencies = t.await??;
            if record {
                self.latencies.extend(latencies);
            }
        }
        if record {
            self.measured += window;
        }
        Ok(())
    }

    /// Calls/s, p50 ms and p99 ms over the recorded windows.
    fn figures(&mut self) -> (f64, f64, f64) {
        let rate = self.latencies.len() as f64 / self.measured.as_secs_f64();
        let p50 = harness::percentile(&mut self.latencies, 50.0);
        let p99 = harness::percentile(&mut self.latencies, 99.0);
        (rate, p50, p99)
    }
}

/// A Publisher that answers at once and stores nothing.
struct Noop;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Publisher for Noop {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let event_id = request.into_inner().event.map(|e| e.id).unwrap_or_default();
        Ok(Response::new(PublishResponse {
            offset: 1,
            event_id,
            duplicate: false,
            payload_differs: false,
        }))
    }

    async fn publish_batch(
        &self,
        _request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        Err(Status::unimplemented("no-op baseline"))
    }

    type PublishStreamStream = ResponseStream;

    async fn publish_stream(
        &self,
        _request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        Err(Status::unimplemented("no-op baseline"))
    }
}

struct NoopServer {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl NoopServer {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PublisherServer::new(Noop))
                // TCP_NODELAY, as the broker and tonic's own `serve` set it.
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Ok(Self { addr, stop })
    }

    fn stop(self) {
        let _ = self.stop.send(());
    }
}
