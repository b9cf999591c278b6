//! Per-endpoint attempt statistics for the Admin API and the maintenance
//! page: attempts, successes, failures and a latency histogram per minute,
//! for the last 24 hours, fed by the workers as attempts finish.
//!
//! Kept in memory only: a restart starts empty (`counting_since` says so).
//! Computing them from the stored attempt records instead would mean
//! scanning every attempt of an endpoint (they are keyed by offset, not by
//! time) on every page view. Only minutes with attempts take memory, so an
//! idle endpoint costs nothing.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// How far back minutes are kept.
pub const KEPT: Duration = Duration::from_secs(24 * 3600);
/// Latency bins: bin `i` counts attempts of at most 2^i ms; the last one
/// also everything slower.
const BINS: usize = 20;

/// One minute of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct Minute {
    /// Unix minute.
    pub minute: u64,
    /// Attempts that finished in it.
    pub attempts: u64,
    /// Those answered 2xx.
    pub successes: u64,
    bins: [u32; BINS],
}

impl Minute {
    /// Failed attempts.
    pub fn failures(&self) -> u64 {
        self.attempts - self.successes
    }

    /// The latency at quantile `q` (0..=1): the upper bound of its bin.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.bins, q)
    }
}

/// A window's totals.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Attempts.
    pub attempts: u64,
    /// Answered 2xx.
    pub successes: u64,
    /// Latency percentiles 50, 95, 99.
    pub p50: Duration,
    /// See `p50`.
    pub p95: Duration,
    /// See `p50`.
    pub p99: Duration,
    /// The minutes with attempts, oldest first.
    pub minutes: Vec<Minute>,
}

/// Every endpoint's recent minutes.
#[derive(Debug)]
pub struct EndpointStats {
    since: SystemTime,
    endpoints: Mutex<HashMap<String, VecDeque<Minute>>>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            since: SystemTime::now(),
            endpoints: Mutex::default(),
        }
    }
}

fn unix_minute(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

fn bin(latency: Duration) -> usize {
    let ms = latency.as_millis().max(1);
    // The smallest i with ms <= 2^i.
    let i = (u128::BITS - (ms - 1).leading_zeros()) as usize;
    i.min(BINS - 1)
}

fn quantile(bins: &[u32; BINS], q: f64) -> Duration {
    let total: u64 = bins.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return Duration::ZERO;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &n) in bins.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            return Duration::from_millis(1 << i);
        }
    }
    Duration::from_millis(1 << (BINS - 1))
}

impl EndpointStats {
    /// When counting began.
    pub fn since(&self) -> SystemTime {
        self.since
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Minute>>> {
        // Only counters are updated under the lock; they stay consistent.
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One attempt of `endpoint` that started at `at`.
    pub fn record(&self, endpoint: &str, at: SystemTime, latency: Duration, success: bool) {
        let minute = unix_minute(at + latency);
        let oldest = minute.saturating_sub(KEPT.as_secs() / 60);
        let mut all = self.lock();
        let ring = match all.get_mut(endpoint) {
            Some(r) => r,
            None => all.entry(endpoint.to_owned()).or_default(),
        };
        while ring.front().is_some_and(|m| m.minute < oldest) {
            ring.pop_front();
        }
        // Attempts finish almost in order: the minute is the last one or
        // close to it.
        let pos = ring.iter().rposition(|m| m.minute <= minute);
        let m = match pos {
            Some(p) if ring[p].minute == minute => &mut ring[p],
            Some(p) => {
                ring.insert(
                    p + 1,
                    Minute {
                        minute,
                        ..Default::default()
                    },
                );
                &mut ring[p + 1]
            }
            None => {
                ring.push_front(Minute {
                    minute,
                    ..Default::default()
                });
                &mut ring[0]
            }
        };
        m.attempts += 1;
        if success {
            m.successes += 1;
        }
        m.bins[bin(latency)] += 1;
    }

    /// `endpoint`'s attempts over the `window` before `now`.
    pub fn summary(&self, endpoint: &str, window: Duration, now: SystemTime) -> Summary {
        let last = unix_minute(now);
        let first = last.saturating_sub((window.as_secs() / 60).saturating_sub(1));
        let all = self.lock();
        let minutes: Vec<Minute> = all
            .get(endpoint)
            .map(|r| {
                r.iter()
                    .filter(|m| (first..=last).contains(&m.minute))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        drop(all);
        let mut bins = [0u32; BINS];
        for m in &minutes {
            for (total, n) in bins.iter_mut().zip(m.bins) {
                *total = total.saturating_add(n);
            }
        }
        Summary {
            attempts: minutes.iter().map(|m| m.attempts).sum(),
            successes: minutes.iter().map(|m| m.successes).sum(),
            p50: quantile(&bins, 0.50),
            p95: quantile(&bins, 0.95),
            p99: quantile(&bins, 0.99),
            minutes,
        }
    }

    /// Forgets a deleted endpoint.
    pub fn remove(&self, endpoint: &str) {
        self.lock().remove(endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_powers_of_two_milliseconds() {
        assert_eq!(bin(Duration::ZERO), 0);
        assert_eq!(bin(Duration::from_millis(1)), 0);
        assert_eq!(bin(Duration::from_millis(2)), 1);
        assert_eq!(bin(Duration::from_millis(3)), 2);
        assert_eq!(bin(Duration::from_millis(1024)), 10);
        assert_eq!(bin(Duration::from_secs(100_000)), BINS - 1);
    }

    #[test]
    fn windows_count_minutes_and_percentiles() {
        let s = EndpointStats::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000 * 60 + 30);
        // 98 fast successes and 2 slow failures this minute, one older
        // success two hours ago.
        for _ in 0..98 {
            s.record("a", now, Duration::from_millis(3), true);
        }
        for _ in 0..2 {
            s.record("a", now, Duration::from_millis(900), false);
        }
        s.record(
            "a",
            now - Duration::from_secs(7200),
            Duration::from_millis(1),
            true,
        );
        let hour = s.summary("a", Duration::from_secs(3600), now);
        assert_eq!((hour.attempts, hour.successes), (100, 98));
        assert_eq!(hour.p50, Duration::from_millis(4));
        assert_eq!(hour.p95, Duration::from_millis(4));
        assert_eq!(hour.p99, Duration::from_millis(1024));
        assert_eq!(hour.minutes.len(), 1);
        assert_eq!(hour.minutes[0].failures(), 2);
        let day = s.summary("a", KEPT, now);
        assert_eq!(day.attempts, 101);
        assert_eq!(day.minutes.len(), 2);
        assert!(day.minutes[0].minute < day.minutes[1].minute);
        assert_eq!(s.summary("b", KEPT, now).attempts, 0);
        s.remove("a");
        assert_eq!(s.summary("a", KEPT, now).attempts, 0);
    }
}
