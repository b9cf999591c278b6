//! Scenario 3: publish call start → webhook received, paced at 1,000
//! events/s, with each run's tail (p50, p99, p99.9, max) and a stall log.
//!
//! The stall log names, for every event slower than [`STALL_MS`], where
//! its time went in the stages the benchmark itself can see: the publish
//! call (start → response), the wait until the receiver had the request's
//! headers, and the read of its body. The broker exposes no per-event
//! stage timings (its `/metrics` has only aggregate histograms of publish,
//! commit and delivery latency), so the time inside the broker between
//! the ack and the request is one stage here; see BENCHMARKS.md for the
//! hooks the broker would need to split it further. What the bench can
//! add from outside is a probe on the runtime it shares with the broker:
//! ticks that ran late mean the runtime's workers were blocked or busy.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use stevedore::pb;
use tonic::transport::Channel;

use crate::{
    harness::{self, create_endpoint, endpoint, event, Broker},
    receiver::{self, Arrival, Receiver},
    report::{Check, Figure, Section, Unit},
    Ctx,
};

/// An event slower than this (ms, publish start → received) is a stall:
/// the p99 target.
const STALL_MS: f64 = 2.0;
/// Stalls whose publish calls started within this of each other (ms) are
/// one episode (one cause, many events).
const EPISODE_GAP_MS: f64 = 10.0;
/// The episodes listed per run (the first ones).
const EPISODES: usize = 10;
/// The slowest events listed per run.
const LISTED: usize = 5;

pub async fn latency(ctx: &Ctx) -> Result<Section> {
    let runs = ctx.runs(5);
    let rate = 1000;
    let n: u64 = if ctx.quick { 300 } else { 3000 };
    let (mut p50, mut p99, mut p999, mut max) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stalls = Vec::new();
    for run in 0..runs {
        // The broker's own stall log at the same threshold: where the time
        // of its slow events went, inside the broker.
        let broker = Broker::with_metrics(|c| {
            c.stall_threshold = Duration::from_secs_f64(STALL_MS / 1000.0);
        })
        .await?;
        let rx = Receiver::start(receiver::Options {
            record: true,
            ..Default::default()
        })
        .await?;
        let mut admin = broker.admin().await?;
        create_endpoint(&mut admin, endpoint(&rx.url)).await?;
        let publisher = broker.publisher().await?;
        // Warm up connections and caches, then measure.
        paced(&publisher, &format!("w{run}"), 100, rate).await?;
        rx.wait_for(100, Duration::from_secs(30)).await?;
        rx.take_arrivals();
        let probe = Probe::start();
        let calls = paced(&publisher, &format!("l{run}"), n, rate).await?;
        rx.wait_for(100 + n, Duration::from_secs(60)).await?;
        let late = probe.stop().await?;
        let arrivals = rx.take_arrivals();
        let mut lat = latencies(&calls, &arrivals);
        anyhow::ensure!(lat.len() as u64 == n, "{} of {n} latencies", lat.len());
        p50.push(harness::percentile(&mut lat, 50.0));
        p99.push(harness::percentile(&mut lat, 99.0));
        p999.push(harness::percentile(&mut lat, 99.9));
        max.push(harness::percentile(&mut lat, 100.0));
        let inside = broker.stall_samples().await?;
        broker.stop().await?;
        let log = StallLog::new(&calls, &arrivals, late);
        let line = format!(
            "latency run {}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} of {n} events over {STALL_MS} ms",
            run + 1,
            p50[run],
            p99[run],
            p999[run],
            max[run],
            log.stalls.len()
        );
        ctx.progress(&line);
        println!("{line}\n{}{}", log.render(), broker_stall_log(&inside));
        stalls.push(log.stalls.len() as f64);
    }
    Ok(Section {
        name: "latency",
        title: "Publish → webhook received",
        runs,
        figures: vec![
            Figure::new("publish start → received p50", Unit::Millis, p50)
                .target(Check::AtMost(0.5)),
            Figure::new("publish start → received p99", Unit::Millis, p99)
                .target(Check::EveryRunAtMost(2.0)),
            Figure::new("publish start → received p99.9", Unit::Millis, p999)
                .target(Check::EveryRunAtMost(5.0)),
            Figure::new("publish start → received max", Unit::Millis, max),
            Figure::new(format!("events over {STALL_MS} ms"), Unit::Count, stalls),
        ],
        notes: vec![
            format!(
                "{n} unary Publish calls paced at {rate}/s (each its own task, so a slow call does not delay the next), one endpoint with default settings (ordering KEY, max_in_flight 16); latency = receiver has read the whole request − Instant before the Publish call; 100 warm-up events first"
            ),
            "every figure is per run (nearest-rank percentiles of its events; p99.9 of 3,000 is the 4th slowest); the table shows the median of the runs and, in min – max, the best and the worst run".into(),
            format!(
                "the broker runs with stall_threshold = {STALL_MS} ms: each run also prints the broker's own stall log from /metrics (its slow events by largest span inside the broker: queue, commit, head, wakeup, dispatch, http; and fsync, zero-fill, state-flush and runtime-lag maxima)"
            ),
            format!(
                "stall log (printed per run): the events over {STALL_MS} ms, grouped into episodes (publish starts less than {EPISODE_GAP_MS} ms apart), and for the slowest the time in each stage the benchmark sees: the publish call (start → response), start → request headers at the receiver, and the body read"
            ),
        ],
    })
}

/// The broker's stall log (`stall_threshold` = [`STALL_MS`]) from its
/// `/metrics`: its slow events by their largest span inside the broker, and
/// the causes it times (group-commit fsync, zero-fill waits, state flushes,
/// runtime-probe lag) with their maxima and how many reached the threshold.
/// The whole run, warm-up included.
fn broker_stall_log(samples: &[(String, f64)]) -> String {
    let label = |name: &str| -> String {
        name.split_once("=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or_else(String::new, |(v, _)| v.to_owned())
    };
    fn of<'a>(
        samples: &'a [(String, f64)],
        family: &'a str,
    ) -> impl Iterator<Item = &'a (String, f64)> + 'a {
        samples
            .iter()
            .filter(move |(n, _)| n.starts_with(family) && n[family.len()..].starts_with('{'))
    }
    let mut out = String::new();
    let stalls: Vec<String> = of(samples, "stevedore_stalls_total")
        .map(|(n, v)| format!("{} {v}", label(n)))
        .collect();
    let total: f64 = of(samples, "stevedore_stalls_total").map(|(_, v)| v).sum();
    let _ = writeln!(
        out,
        "  broker stall log: {total} events over {STALL_MS} ms inside the broker, by largest span: {}",
        stalls.join(", ")
    );
    let over: HashMap<String, f64> = of(samples, "stevedore_stall_cause_over_threshold_total")
        .map(|(n, v)| (label(n), *v))
        .collect();
    let causes: Vec<String> = of(samples, "stevedore_stall_cause_max_seconds")
        .map(|(n, v)| {
            let cause = label(n);
            let n_over = over.get(&cause).copied().unwrap_or(0.0);
            format!("{cause} max {:.2} ms ({n_over} over)", v * 1000.0)
        })
        .collect();
    let _ = writeln!(out, "  broker causes: {}", causes.join(", "));
    if let Some((_, g)) = samples
        .iter()
        .find(|(n, _)| n == "stevedore_stall_max_group_events")
    {
        let _ = writeln!(out, "  broker largest group commit: {g} events");
    }
    out
}

/// When one event's publish call started and when its response came.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub start: Instant,
    pub acked: Instant,
}

/// Publishes `n` events with ids `{tag}-{i}` at `rate` per second, each
/// call on its own task. Returns each id's call.
pub async fn paced(
    publisher: &pb::publisher_client::PublisherClient<Channel>,
    tag: &str,
    n: u64,
    rate: u64,
) -> Result<HashMap<String, Call>> {
    let calls = Arc::new(Mutex::new(HashMap::with_capacity(n as usize)));
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(t0 + period * i as u32).await;
        let mut client = publisher.clone();
        let calls = calls.clone();
        let id = format!("{tag}-{i}");
        let e = event(id.clone(), i);
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            client
                .publish(pb::PublishRequest { event: Some(e) })
                .await?;
            let acked = Instant::now();
            calls
                .lock()
                .expect("no panics under this lock")
                .insert(id, Call { start, acked });
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let calls = std::mem::take(&mut *calls.lock().expect("no panics under this lock"));
    Ok(calls)
}

/// Milliseconds from each publish start to the arrival of the same id.
pub fn latencies(calls: &HashMap<String, Call>, arrivals: &[Arrival]) -> Vec<f64> {
    arrivals
        .iter()
        .filter_map(|a| {
            calls
                .get(&a.id)
                .map(|c| harness::ms(a.read.duration_since(c.start)))
        })
        .collect()
}

/// A task on the runtime the in-process broker shares with the bench,
/// ticking every [`TICK`]: a tick later than [`LATE_MS`] means no worker
/// thread ran it, i.e. the runtime was blocked or saturated then.
struct Probe {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Vec<LateTick>>,
}

/// The probe's tick period.
const TICK: Duration = Duration::from_millis(1);
/// A tick this late (ms) is recorded. A sleep ends on the first tick of
/// tokio's timer wheel (1 ms) at or after its deadline, so up to 1 ms
/// late with nothing wrong: at 1 ms, about half of all ticks counted
/// (700-760 per 3 s run), whatever the runtime did. Another 1 ms beyond
/// that is a runtime that did not run the probe.
const LATE_MS: f64 = 2.0;

/// A late tick: when it was due and how late it ran (ms).
#[derive(Clone, Copy)]
struct LateTick {
    due: Instant,
    late: f64,
}

impl Probe {
    fn start() -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let mut late = Vec::new();
            let mut due = Instant::now() + TICK;
            loop {
                tokio::select! {
                    _ = &mut stopped => return late,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
                let now = Instant::now();
                let l = harness::ms(now.duration_since(due));
                if l > LATE_MS {
                    late.push(LateTick { due, late: l });
                }
                due = now + TICK;
            }
        });
        Self { stop, handle }
    }

    async fn stop(self) -> Result<Vec<LateTick>> {
        let _ = self.stop.send(());
        Ok(self.handle.await?)
    }
}

/// One event over the threshold, its times in ms.
struct Stall {
    id: String,
    /// Publish start, from the run's first publish start.
    at: f64,
    total: f64,
    /// Start → publish response.
    call: f64,
    /// Start → request headers at the receiver.
    headers: f64,
    /// Headers → body read.
    body: f64,
}

/// The events of one run over [`STALL_MS`], in publish order.
struct StallLog {
    events: usize,
    stalls: Vec<Stall>,
    /// The run's first publish start.
    first: Option<Instant>,
    /// The runtime probe's late ticks during the run.
    late: Vec<LateTick>,
}

impl StallLog {
    fn new(calls: &HashMap<String, Call>, arrivals: &[Arrival], late: Vec<LateTick>) -> Self {
        let Some(first) = calls.values().map(|c| c.start).min() else {
            return Self {
                events: 0,
                stalls: Vec::new(),
                first: None,
                late,
            };
        };
        let mut stalls: Vec<Stall> = arrivals
            .iter()
            .filter_map(|a| {
                let c = calls.get(&a.id)?;
                let total = harness::ms(a.read.duration_since(c.start));
                (total > STALL_MS).then(|| Stall {
                    id: a.id.clone(),
                    at: harness::ms(c.start.duration_since(first)),
                    total,
                    call: harness::ms(c.acked.duration_since(c.start)),
                    headers: harness::ms(a.headers.duration_since(c.start)),
                    body: harness::ms(a.read.duration_since(a.headers)),
                })
            })
            .collect();
        stalls.sort_by(|a, b| a.at.total_cmp(&b.at));
        Self {
            events: arrivals.len(),
            stalls,
            first: Some(first),
            late,
        }
    }

    /// The probe's late ticks due between `from` and `to` ms after the
    /// first publish start: how many, and the latest (ms).
    fn late_between(&self, from: f64, to: f64) -> (usize, f64) {
        let Some(first) = self.first else {
            return (0, 0.0);
        };
        let ticks = self.late.iter().filter(|t| {
            let at = if t.due >= first {
                harness::ms(t.due.duration_since(first))
            } else {
                -harness::ms(first.duration_since(t.due))
            };
            at >= from && at <= to
        });
        ticks.fold((0, 0.0), |(n, worst), t| (n + 1, f64::max(worst, t.late)))
    }

    /// Episodes, then the slowest events with their stages.
    fn render(&self) -> String {
        let mut out = String::new();
        let worst_tick = self.late.iter().map(|t| t.late).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "  runtime probe: {} tick(s) over {LATE_MS} ms late, the latest {worst_tick:.2} ms",
            self.late.len()
        );
        if self.stalls.is_empty() {
            let _ = writeln!(out, "  stall log: no event over {STALL_MS} ms");
            return out;
        }
        // Episodes: runs of stalls whose starts are close together.
        let mut episodes: Vec<&[Stall]> = Vec::new();
        let mut from = 0;
        for i in 1..=self.stalls.len() {
            if i == self.stalls.len() || self.stalls[i].at - self.stalls[i - 1].at > EPISODE_GAP_MS
            {
                episodes.push(&self.stalls[from..i]);
                from = i;
            }
        }
        let _ = writeln!(
            out,
            "  stall log: {} of {} events over {STALL_MS} ms in {} episode(s)",
            self.stalls.len(),
            self.events,
            episodes.len()
        );
        for e in episodes.iter().take(EPISODES) {
            let worst = e.iter().map(|s| s.total).fold(0.0, f64::max);
            let worst_call = e.iter().map(|s| s.call).fold(0.0, f64::max);
            let end = e.iter().map(|s| s.at + s.total).fold(0.0, f64::max);
            let (ticks, tick) = self.late_between(e[0].at, end);
            let _ = writeln!(
                out,
                "    episode at +{:.1} ms: {} event(s) over {:.1} ms of publish starts, worst {:.2} ms, worst publish call {:.2} ms; runtime probe until +{end:.1} ms: {ticks} late tick(s), the latest {tick:.2} ms",
                e[0].at,
                e.len(),
                e[e.len() - 1].at - e[0].at,
                worst,
                worst_call
            );
        }
        if episodes.len() > EPISODES {
            let _ = writeln!(
                out,
                "    ... and {} more episode(s)",
                episodes.len() - EPISODES
            );
        }
        let mut slowest: Vec<&Stall> = self.stalls.iter().collect();
        slowest.sort_by(|a, b| b.total.total_cmp(&a.total));
        for s in slowest.iter().take(LISTED) {
            let _ = writeln!(
                out,
                "    {} at +{:.1} ms: {:.2} ms = publish call {:.2} ms, start → headers {:.2} ms ({}), body read {:.2} ms",
                s.id,
                s.at,
                s.total,
                s.call,
                s.headers,
                if s.headers >= s.call {
                    format!("{:.2} ms after the response", s.headers - s.call)
                } else {
                    "before the response".into()
                },
                s.body
            );
        }
        out
    }
}
