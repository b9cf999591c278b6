//! A token bucket: `per_second` tokens a second, holding at most `burst`.
//! Shared by the endpoints' rate limit (`delivery::limit`) and the
//! per-tenant publish rate (`tenant`). Time is tokio's, so tests can pause
//! it.
//!
//! Why not `governor` (#14): the per-tenant rate takes a batch's events from
//! several tenants' buckets all or nothing, looking at every bucket
//! ([`TokenBucket::available`]) before taking from any. A governor limiter
//! can only test-and-take (`check_n`), with no look that takes nothing and
//! no giving back, so a batch refused on its second tenant would already
//! have spent the first tenant's tokens. And governor's clocks are `std`'s
//! or `quanta`'s, which `tokio::time::pause()` does not move: the paused-time
//! tests of both limits would need a tokio clock adapter (its `Clock` and
//! `Reference` traits), more code than this bucket. The endpoints' limit
//! alone would fit governor, but one bucket for both keeps one refill rule.

use std::time::Duration;

use tokio::time::Instant;

/// Tokens refilled continuously since the last look.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            updated: Instant::now(),
        }
    }

    /// The tokens there now (refilled since the last look).
    pub fn available(&mut self) -> f64 {
        let now = Instant::now();
        let refill = now.duration_since(self.updated).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.updated = now;
        self.tokens
    }

    /// Takes `n` tokens (call after [`TokenBucket::available`] said they
    /// are there).
    pub fn take(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take_one(&mut self) -> Result<(), Duration> {
        let have = self.available();
        if have >= 1.0 {
            self.take(1.0);
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - have) / self.per_second))
        }
    }
}
