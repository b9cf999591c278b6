//! Group commit pacing: whether the log writer waits for a bigger group
//! before it commits, from how busy the runtime that opened the store is.

use std::time::{Duration, Instant};

/// A commit of fewer events than this may wait for more (see [`Pacing`]).
const PACED_BELOW_EVENTS: usize = 32;
/// ...if the previous commit had at least this many: appends are arriving
/// together, so waiting gathers more.
const PACED_AFTER_EVENTS: usize = 4;
/// How often the runtime's busy time is sampled.
const SATURATION_SAMPLE: Duration = Duration::from_millis(10);
/// Busy fraction of the runtime's workers at which commits start waiting...
const SATURATED_FROM: f64 = 0.7;
/// ...and below which they stop.
const SATURATED_UNTIL: f64 = 0.6;

/// Group commit pacing: while the runtime that opened the store is
/// saturated, a commit of few events first waits `delay` for more.
///
/// Each `fdatasync` costs CPU besides its latency (most of it in the
/// kernel), plus the log thread's wakeups preempting a runtime thread.
/// Committing as soon as the last commit ends is right while the runtime
/// has idle time. Once it is saturated, that CPU comes out of request
/// handling: waiting for bigger groups gives it back. Below saturation a
/// wait only adds latency, so the wait depends on the saturation test and
/// is not fixed.
///
/// A runtime saturated by other work (webhook deliveries, say) while
/// publishes come one at a time gains nothing from waiting: commits wait
/// only after a commit of several events.
///
/// The variants that ended the wait early or slept at other points did
/// worse than this rule. The figures behind all of this are in
/// BENCHMARKS.md ("Notes moved from code", and the fourth and fifth
/// passes).
pub(super) struct Pacing {
    /// How long a paced commit waits for more.
    pub(super) delay: Duration,
    runtime: Option<tokio::runtime::Handle>,
    saturated: bool,
    sampled_at: Instant,
    busy_at_sample: Duration,
    /// Events in the previous commit.
    last_events: usize,
}

impl Pacing {
    pub(super) fn new(delay: Duration, runtime: Option<tokio::runtime::Handle>) -> Self {
        Self {
            delay,
            busy_at_sample: runtime.as_ref().map(busy_time).unwrap_or_default(),
            runtime,
            saturated: false,
            sampled_at: Instant::now(),
            last_events: 0,
        }
    }

    /// Whether a commit of `events` should wait for more first.
    pub(super) fn should_wait(&mut self, events: usize) -> bool {
        let previous = std::mem::replace(&mut self.last_events, events);
        if self.delay.is_zero() || events >= PACED_BELOW_EVENTS || previous < PACED_AFTER_EVENTS {
            return false;
        }
        self.sample();
        self.saturated
    }

    /// Records how many events the commit has, after any wait.
    pub(super) fn committing(&mut self, events: usize) {
        self.last_events = events;
    }

    /// Updates `saturated` from the workers' busy time since the last
    /// sample, at most every [`SATURATION_SAMPLE`].
    fn sample(&mut self) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let now = Instant::now();
        let elapsed = now - self.sampled_at;
        if elapsed < SATURATION_SAMPLE {
            return;
        }
        let busy = busy_time(runtime);
        let workers = runtime.metrics().num_workers().max(1);
        let fraction = busy.saturating_sub(self.busy_at_sample).as_secs_f64()
            / (elapsed.as_secs_f64() * workers as f64);
        self.saturated = fraction
            >= if self.saturated {
                SATURATED_UNTIL
            } else {
                SATURATED_FROM
            };
        self.sampled_at = now;
        self.busy_at_sample = busy;
    }
}

/// The runtime's workers' busy time so far, all together.
fn busy_time(runtime: &tokio::runtime::Handle) -> Duration {
    let metrics = runtime.metrics();
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_wait_only_while_the_runtime_is_saturated() {
        let delay = Duration::from_micros(500);
        let mut no_runtime = Pacing::new(delay, None);
        no_runtime.committing(PACED_AFTER_EVENTS);
        assert!(!no_runtime.should_wait(1), "no runtime");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let mut off = Pacing::new(Duration::ZERO, Some(runtime.handle().clone()));
        let mut pacing = Pacing::new(delay, Some(runtime.handle().clone()));
        // The worker is busy for 200 ms on end (long, so that a loaded
        // machine's scheduling delays do not dilute it below 70 %)...
        runtime
            .block_on(runtime.spawn(async {
                let busy = Instant::now();
                while busy.elapsed() < Duration::from_millis(200) {
                    std::hint::spin_loop();
                }
            }))
            .unwrap();
        // ...and has parked (which is when it reports its busy time).
        std::thread::sleep(Duration::from_millis(20));
        assert!(!pacing.should_wait(1), "the previous commit had no events");
        pacing.committing(PACED_AFTER_EVENTS);
        assert!(pacing.should_wait(1), "saturated");
        assert!(!pacing.should_wait(1), "the previous commit had one event");
        off.committing(PACED_AFTER_EVENTS);
        assert!(!off.should_wait(1), "a zero delay never waits");
        pacing.committing(PACED_AFTER_EVENTS);
        assert!(
            !pacing.should_wait(PACED_BELOW_EVENTS),
            "a big enough group never waits"
        );
        // Idle since: no longer saturated.
        std::thread::sleep(SATURATION_SAMPLE * 3);
        pacing.committing(PACED_AFTER_EVENTS);
        assert!(!pacing.should_wait(1), "idle");
    }
}
