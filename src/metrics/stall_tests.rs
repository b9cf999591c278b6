//! The stall log's recorder: stamps, reports, the bounded slowest list,
//! causes, and the exposition.

use std::time::{Duration, Instant};

use super::{
    stall::{Cause, SlowEvent, Stage, StallLog, CAUSES, SLOTS, SLOWEST, SPANS, STAGES},
    Metrics, Snapshot,
};

/// An event whose stages are `steps` (ms) apart.
fn event(offset: u64, steps: [u64; STAGES - 1]) -> SlowEvent {
    let mut at = [Duration::ZERO; STAGES];
    for i in 1..STAGES {
        at[i] = at[i - 1] + Duration::from_millis(steps[i - 1]);
    }
    SlowEvent {
        offset,
        at,
        fsync: Duration::from_millis(1),
        group: 3,
    }
}

#[test]
fn off_records_nothing_and_reads_no_clock() {
    let log = StallLog::default();
    assert!(!log.on());
    assert_eq!(log.now(), 0);
    log.committed(1, [1, 2, 3, 4], Duration::ZERO, 1);
    log.stage(1, Stage::Read);
    log.responded(1);
    log.cause(Cause::Fsync, Duration::from_secs(1));
    log.group(9);
    log.report(event(1, [1; 6]));
    let s = log.summary();
    assert_eq!(s.by_dominant, [0; 6]);
    assert_eq!(s.cause_max, [Duration::ZERO; 4]);
    assert_eq!(s.max_group, 0);
    assert!(s.slowest.is_empty());
}

#[test]
fn an_event_is_stamped_in_order_and_reported_once() {
    let log = StallLog::default();
    log.set_threshold(Some(Duration::ZERO));
    let queued = log.now();
    let started = log.now();
    let durable = log.now();
    let head = log.now();
    log.committed(
        7,
        [queued, started, durable, head],
        Duration::from_micros(300),
        2,
    );
    log.stage(7, Stage::Read);
    log.stage(7, Stage::AttemptStarted);
    log.stage(7, Stage::AttemptStarted); // a retry keeps the first
    log.responded(7);
    log.responded(7); // a second endpoint's answer reports nothing
    let s = log.summary();
    assert_eq!(s.slowest.len(), 1);
    let e = &s.slowest[0];
    assert_eq!(e.offset, 7);
    assert_eq!(e.at[0], Duration::ZERO);
    assert!(e.at.windows(2).all(|w| w[0] <= w[1]), "{e:?}");
    assert_eq!(e.spans().iter().sum::<Duration>(), e.total());
    assert_eq!(e.fsync, Duration::from_micros(300));
    assert_eq!(e.group, 2);
    assert_eq!(s.by_dominant.iter().sum::<u64>(), 1);
    assert_eq!(s.by_dominant[e.dominant()], 1);
}

#[test]
fn stages_of_another_offset_in_the_slot_are_ignored() {
    let log = StallLog::default();
    log.set_threshold(Some(Duration::ZERO));
    let t = log.now();
    log.committed(5, [t, t, t, t], Duration::ZERO, 1);
    // The same slot, a different offset: not this event's.
    log.stage(5 + SLOTS as u64, Stage::Read);
    log.responded(5 + SLOTS as u64);
    assert!(log.summary().slowest.is_empty());
    // The event itself, with no Read stamp: a gap, not reported.
    log.responded(5);
    assert!(log.summary().slowest.is_empty());
}

#[test]
fn an_event_queued_before_the_log_was_on_is_not_reported() {
    let log = StallLog::default();
    log.set_threshold(Some(Duration::ZERO));
    let t = log.now();
    log.committed(3, [0, t, t, t], Duration::ZERO, 1);
    log.stage(3, Stage::Read);
    log.stage(3, Stage::AttemptStarted);
    log.responded(3);
    assert!(log.summary().slowest.is_empty());
}

#[test]
fn only_events_over_the_threshold_count_and_the_largest_span_is_named() {
    let log = StallLog::default();
    log.set_threshold(Some(Duration::from_millis(10)));
    log.report(event(1, [1, 1, 1, 1, 1, 1])); // 6 ms: under
    log.report(event(2, [1, 20, 1, 1, 1, 1])); // commit
    log.report(event(3, [1, 1, 1, 1, 1, 30])); // http
    log.report(event(4, [12, 1, 1, 1, 1, 1])); // queue
    let s = log.summary();
    let by = |name: &str| s.by_dominant[SPANS.iter().position(|s| *s == name).unwrap()];
    assert_eq!((by("commit"), by("http"), by("queue")), (1, 1, 1));
    assert_eq!(s.by_dominant.iter().sum::<u64>(), 3);
    let offsets: Vec<u64> = s.slowest.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [3, 2, 4]);
}

#[test]
fn the_slowest_list_is_bounded_and_keeps_the_slowest() {
    let log = StallLog::default();
    log.set_threshold(Some(Duration::ZERO));
    for i in 0..(3 * SLOWEST as u64) {
        // Slower and faster events interleaved.
        let ms = if i % 2 == 0 { i } else { 100 - i };
        log.report(event(i, [ms, 0, 0, 0, 0, 0]));
    }
    let s = log.summary();
    assert_eq!(s.slowest.len(), SLOWEST);
    assert!(s.slowest.windows(2).all(|w| w[0].total() >= w[1].total()));
    let mut all: Vec<u64> = (0..(3 * SLOWEST as u64))
        .map(|i| if i % 2 == 0 { i } else { 100 - i })
        .collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    let kept: Vec<u64> = s
        .slowest
        .iter()
        .map(|e| e.total().as_millis() as u64)
        .collect();
    assert_eq!(kept, all[..SLOWEST]);
}

#[test]
fn causes_keep_their_maximum_and_count_those_over_the_threshold() {
    let log = StallLog::default();
    log.set_threshold(Some(Duration::from_millis(2)));
    log.cause(Cause::Fsync, Duration::from_millis(1));
    log.cause(Cause::Fsync, Duration::from_millis(5));
    log.cause(Cause::Fsync, Duration::from_millis(3));
    log.cause(Cause::RuntimeLag, Duration::from_millis(1));
    log.group(4);
    log.group(2);
    let s = log.summary();
    assert_eq!(s.cause_max[Cause::Fsync as usize], Duration::from_millis(5));
    assert_eq!(s.cause_over[Cause::Fsync as usize], 2);
    assert_eq!(
        s.cause_max[Cause::RuntimeLag as usize],
        Duration::from_millis(1)
    );
    assert_eq!(s.cause_over[Cause::RuntimeLag as usize], 0);
    assert_eq!(s.max_group, 4);
    assert_eq!(CAUSES[Cause::StateFlush as usize], "state_flush");
}

#[test]
fn the_exposition_has_the_stall_families_only_when_on() {
    let m = Metrics::default();
    assert!(!m.render(&Snapshot::default()).contains("stevedore_stall"));
    m.stall.set_threshold(Some(Duration::ZERO));
    m.stall.report(event(9, [1, 2, 3, 4, 5, 6]));
    m.stall.cause(Cause::ZeroFill, Duration::from_millis(4));
    let text = m.render(&Snapshot::default());
    for span in SPANS {
        assert!(
            text.contains(&format!(
                "stevedore_stall_span_seconds_count{{span=\"{span}\"}} 1"
            )),
            "{span}: {text}"
        );
    }
    assert!(
        text.contains("stevedore_stalls_total{dominant=\"http\"} 1"),
        "{text}"
    );
    assert!(text.contains("stevedore_stall_cause_max_seconds{cause=\"zero_fill\"} 0.004"));
    assert!(text.contains(
        "stevedore_stall_slowest_seconds{rank=\"0\",offset=\"9\",stage=\"responded\"} 0.021"
    ));
}

#[test]
fn stamps_follow_the_clock() {
    let log = StallLog::default();
    log.set_threshold(Some(Duration::from_secs(1)));
    let a = Instant::now();
    let b = a + Duration::from_millis(3);
    assert_eq!(
        log.stamp_of(b) - log.stamp_of(a),
        3_000_000,
        "nanoseconds between stamps"
    );
}
