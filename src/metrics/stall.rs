//! The stall log (#17): where the time of a slow event went.
//!
//! With `stall_threshold` set, every event's path from Publish to its first
//! webhook answer is stamped at seven [`Stage`]s: queued for the log
//! writer, its group commit started, written and `fdatasync`ed, the head
//! published, read by a delivery worker, the attempt started, the answer
//! received. The stamps live in a fixed ring of slots indexed by offset
//! (allocated once, when the threshold is set), so recording allocates
//! nothing. When the first answer arrives the spans between the stamps are
//! summed; an event over the threshold gets a `tracing` warn line naming
//! every span and the largest, its spans go into per-span histograms, the
//! count of its dominant span is raised and it may enter the bounded list
//! of the slowest events.
//!
//! Beside the events, the store-side causes ([`Cause`]) are kept as
//! maxima and counts over the threshold: group-commit `fdatasync`,
//! zero-fill waits, state (sled) flushes, and how late the runtime probe
//! woke (a blocked runtime).
//!
//! Off (the default), every call is one relaxed atomic load.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{family::Family, histogram::Histogram as PromHistogram};

use super::{family::Labels, LATENCY_BUCKETS};

mod render;

/// The span histograms, one series per span.
type SpanFamily = Family<Labels, PromHistogram, fn() -> PromHistogram>;

fn span_histogram() -> PromHistogram {
    PromHistogram::new(LATENCY_BUCKETS.iter().copied())
}

fn span_labels(span: &'static str) -> Labels {
    vec![("span", span.to_owned())]
}

/// Slots in the ring: an event is forgotten once the log is this many
/// offsets further (its stamps are then overwritten).
pub const SLOTS: usize = 4096;
/// Events kept in the list of the slowest.
pub const SLOWEST: usize = 8;
/// How often the runtime probe ticks.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);

const OFF: u64 = u64::MAX;
/// A slot's tag once its event was reported (or never used).
const DONE: u64 = u64::MAX;

/// Where an event was, in the order it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Handed to the log writer's queue.
    Queued = 0,
    /// Its group commit started (after any `group_commit_delay`).
    CommitStarted,
    /// Written and `fdatasync`ed.
    Durable,
    /// The head moved past it: readers may see it.
    HeadPublished,
    /// Leased by a delivery worker.
    Read,
    /// Its first webhook attempt started.
    AttemptStarted,
    /// The first attempt's answer (or error) arrived.
    Responded,
}

/// Stages per event.
pub const STAGES: usize = 7;

/// The spans between consecutive stages, by the stage they end in: the
/// queue wait, write + fsync, head publication, head to worker, worker to
/// attempt, the HTTP exchange.
pub const SPANS: [&str; STAGES - 1] = ["queue", "commit", "head", "wakeup", "dispatch", "http"];

/// The stages' names, in [`Stage`] order.
pub const STAGE_NAMES: [&str; STAGES] = [
    "queued",
    "commit_started",
    "durable",
    "head_published",
    "read",
    "attempt_started",
    "responded",
];

/// A cause on the store or runtime side, kept as a maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The `fdatasync` of one event-log group commit.
    Fsync = 0,
    /// A commit waiting for the zero-filler.
    ZeroFill,
    /// A state (sled) flush and sync.
    StateFlush,
    /// How late the runtime probe woke.
    RuntimeLag,
}

/// The causes' names, in [`Cause`] order.
pub const CAUSES: [&str; 4] = ["fsync", "zero_fill", "state_flush", "runtime_lag"];

#[derive(Default)]
struct Slot {
    /// The offset whose stamps these are ([`DONE`] once reported).
    tag: AtomicU64,
    /// Nanoseconds since the log's epoch, plus one (zero: not stamped).
    at: [AtomicU64; STAGES],
    /// The group commit's `fdatasync`, nanoseconds.
    fsync: AtomicU64,
    /// Events in the group commit.
    group: AtomicU64,
}

/// One event over the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowEvent {
    /// Its offset.
    pub offset: u64,
    /// Each stage's time after [`Stage::Queued`], in [`Stage`] order.
    pub at: [Duration; STAGES],
    /// Its group commit's `fdatasync`.
    pub fsync: Duration,
    /// Events in its group commit.
    pub group: u64,
}

impl SlowEvent {
    /// Publish to answer.
    pub fn total(&self) -> Duration {
        self.at[STAGES - 1]
    }

    /// The spans, in [`SPANS`] order.
    pub fn spans(&self) -> [Duration; STAGES - 1] {
        std::array::from_fn(|i| self.at[i + 1].saturating_sub(self.at[i]))
    }

    /// The index (into [`SPANS`]) of the largest span.
    pub fn dominant(&self) -> usize {
        let spans = self.spans();
        (0..spans.len()).max_by_key(|&i| spans[i]).unwrap_or(0)
    }
}

/// What the stall log has seen, for `/metrics` and tests.
#[derive(Debug, Clone, Default)]
pub struct StallSummary {
    /// Events over the threshold, by their dominant span ([`SPANS`] order).
    pub by_dominant: [u64; STAGES - 1],
    /// The largest of each cause ([`CAUSES`] order).
    pub cause_max: [Duration; 4],
    /// Each cause's occurrences over the threshold.
    pub cause_over: [u64; 4],
    /// The largest group commit (events) seen while on.
    pub max_group: u64,
    /// The slowest events, slowest first.
    pub slowest: Vec<SlowEvent>,
}

/// The recorder; one per broker, in [`super::Metrics`].
pub struct StallLog {
    /// Nanoseconds, or [`OFF`].
    threshold: AtomicU64,
    epoch: Instant,
    slots: OnceLock<Box<[Slot]>>,
    /// Per span, the events over the threshold.
    spans: SpanFamily,
    by_dominant: [AtomicU64; STAGES - 1],
    cause_max: [AtomicU64; 4],
    cause_over: [AtomicU64; 4],
    max_group: AtomicU64,
    slowest: Mutex<Vec<SlowEvent>>,
}

impl std::fmt::Debug for StallLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StallLog")
            .field("threshold", &self.threshold())
            .finish_non_exhaustive()
    }
}

impl Default for StallLog {
    fn default() -> Self {
        Self {
            threshold: AtomicU64::new(OFF),
            epoch: Instant::now(),
            slots: OnceLock::new(),
            spans: {
                let spans = SpanFamily::new_with_constructor(span_histogram);
                for span in SPANS {
                    let _ = spans.get_or_create(&span_labels(span));
                }
                spans
            },
            by_dominant: Default::default(),
            cause_max: Default::default(),
            cause_over: Default::default(),
            max_group: AtomicU64::new(0),
            slowest: Mutex::new(Vec::with_capacity(SLOWEST + 1)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

impl StallLog {
    /// Turns the log on with this threshold (`None`: off).
    pub fn set_threshold(&self, threshold: Option<Duration>) {
        if threshold.is_some() {
            self.slots.get_or_init(|| {
                (0..SLOTS)
                    .map(|_| {
                        let slot = Slot::default();
                        slot.tag.store(DONE, Ordering::Relaxed);
                        slot
                    })
                    .collect()
            });
        }
        let t = threshold.map_or(OFF, |t| nanos(t).min(OFF - 1));
        self.threshold.store(t, Ordering::Relaxed);
    }

    /// The threshold, if on.
    pub fn threshold(&self) -> Option<Duration> {
        match self.threshold.load(Ordering::Relaxed) {
            OFF => None,
            t => Some(Duration::from_nanos(t)),
        }
    }

    /// Whether events are being stamped.
    #[inline]
    pub fn on(&self) -> bool {
        self.threshold.load(Ordering::Relaxed) != OFF
    }

    /// A stamp for now (zero when off: no clock is read).
    #[inline]
    pub fn now(&self) -> u64 {
        match self.on() {
            true => self.stamp_of(Instant::now()),
            false => 0,
        }
    }

    /// The stamp of `t`.
    pub fn stamp_of(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch)).saturating_add(1)
    }

    fn slot(&self, offset: u64) -> Option<&Slot> {
        let slots = self.slots.get()?;
        Some(&slots[(offset % SLOTS as u64) as usize])
    }

    /// An event made durable by the log writer: its first four stamps
    /// (queued, commit started, durable, head published), its group's
    /// `fdatasync` time and size.
    pub fn committed(&self, offset: u64, stamps: [u64; 4], fsync: Duration, group: u64) {
        if !self.on() || stamps[0] == 0 {
            return;
        }
        let Some(slot) = self.slot(offset) else {
            return;
        };
        slot.tag.store(DONE, Ordering::Relaxed);
        for (i, s) in slot.at.iter().enumerate() {
            s.store(stamps.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        slot.fsync.store(nanos(fsync), Ordering::Relaxed);
        slot.group.store(group, Ordering::Relaxed);
        slot.tag.store(offset, Ordering::Release);
    }

    /// Stamps `stage` of `offset` now, once (a retry keeps the first).
    #[inline]
    pub fn stage(&self, offset: u64, stage: Stage) {
        if !self.on() {
            return;
        }
        if let Some(slot) = self.slot(offset) {
            if slot.tag.load(Ordering::Acquire) == offset {
                let _ = slot.at[stage as usize].compare_exchange(
                    0,
                    self.now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// The first answer for `offset` arrived: stamps it and, if the event
    /// took longer than the threshold, reports it.
    #[inline]
    pub fn responded(&self, offset: u64) {
        if !self.on() {
            return;
        }
        let now = self.now();
        let Some(slot) = self.slot(offset) else {
            return;
        };
        // Only the first answer (of any endpoint) reports the event.
        if slot
            .tag
            .compare_exchange(offset, DONE, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let mut stamps = [0u64; STAGES];
        for (s, a) in stamps.iter_mut().zip(&slot.at) {
            *s = a.load(Ordering::Relaxed);
        }
        stamps[Stage::Responded as usize] = now;
        let event = SlowEvent {
            offset,
            at: std::array::from_fn(|i| Duration::from_nanos(stamps[i].saturating_sub(stamps[0]))),
            fsync: Duration::from_nanos(slot.fsync.load(Ordering::Relaxed)),
            group: slot.group.load(Ordering::Relaxed),
        };
        // A stage not stamped (the log was turned on midway) leaves a gap
        // that would be misread; such an event is not reported.
        if stamps.contains(&0) || event.at.windows(2).any(|w| w[1] < w[0]) {
            return;
        }
        self.report(event);
    }

    /// Records a slow event if it is over the threshold.
    pub fn report(&self, event: SlowEvent) {
        let Some(threshold) = self.threshold() else {
            return;
        };
        if event.total() < threshold {
            return;
        }
        let spans = event.spans();
        let dominant = event.dominant();
        for (name, s) in SPANS.iter().zip(spans) {
            self.spans
                .get_or_create(&span_labels(name))
                .observe(s.as_secs_f64());
        }
        self.by_dominant[dominant].fetch_add(1, Ordering::Relaxed);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::warn!(
            offset = event.offset,
            total_ms = ms(event.total()),
            dominant = SPANS[dominant],
            queue_ms = ms(spans[0]),
            commit_ms = ms(spans[1]),
            head_ms = ms(spans[2]),
            wakeup_ms = ms(spans[3]),
            dispatch_ms = ms(spans[4]),
            http_ms = ms(spans[5]),
            group_fsync_ms = ms(event.fsync),
            group_events = event.group,
            "stall: an event took longer than stall_threshold from publish to webhook answer"
        );
        let mut slowest = self.slowest.lock().unwrap_or_else(|p| p.into_inner());
        if slowest.len() < SLOWEST || slowest.last().is_some_and(|l| l.total() < event.total()) {
            let at = slowest.partition_point(|e| e.total() >= event.total());
            slowest.insert(at, event);
            slowest.truncate(SLOWEST);
        }
    }

    /// Records one occurrence of `cause` that took `took`.
    #[inline]
    pub fn cause(&self, cause: Cause, took: Duration) {
        let t = self.threshold.load(Ordering::Relaxed);
        if t == OFF {
            return;
        }
        let n = nanos(took);
        self.cause_max[cause as usize].fetch_max(n, Ordering::Relaxed);
        if n >= t {
            self.cause_over[cause as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a group commit's size (events).
    #[inline]
    pub fn group(&self, events: u64) {
        if self.on() {
            self.max_group.fetch_max(events, Ordering::Relaxed);
        }
    }

    /// What was seen so far.
    pub fn summary(&self) -> StallSummary {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StallSummary {
            by_dominant: std::array::from_fn(|i| load(&self.by_dominant[i])),
            cause_max: std::array::from_fn(|i| Duration::from_nanos(load(&self.cause_max[i]))),
            cause_over: std::array::from_fn(|i| load(&self.cause_over[i])),
            max_group: load(&self.max_group),
            slowest: self
                .slowest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Ticks every [`PROBE_EVERY`] on the current runtime and records how late
/// each tick woke ([`Cause::RuntimeLag`]): a task that blocks a runtime
/// thread shows here. Runs until `stop` resolves.
pub async fn probe_runtime(
    metrics: std::sync::Arc<super::Metrics>,
    stop: impl std::future::Future,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            due = tick.tick() => {
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                metrics.stall.cause(Cause::RuntimeLag, late);
            }
        }
    }
}
