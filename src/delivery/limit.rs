//! The two flow-control layers of the delivery stack: a token-bucket rate
//! limit, and an adaptive in-flight limit that halves on overload signals
//! (429, 502, 503, 504, timeouts) and grows back by one per run of successes (AIMD).

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Notify;
use tower::{Layer, Service};

use super::request::{BoxFuture, SendError, WebhookRequest, WebhookResponse};
use crate::token_bucket::TokenBucket;

/// Requests per second with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Tokens the bucket holds.
    pub burst: u32,
}

/// Token bucket shared by every clone of the service.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<TokenBucket>>,
}

impl RateLimitLayer {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(TokenBucket::full(
                rate.per_second,
                f64::from(rate.burst.max(1)),
            ))),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn try_take(&self) -> Result<(), Duration> {
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take_one()
    }

    async fn acquire(&self) {
        while let Err(wait) = self.try_take() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Gate for RateLimitLayer {
    type Pass = ();
    fn enter(&self) -> BoxFuture<()> {
        let limit = self.clone();
        Box::pin(async move { limit.acquire().await })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = Gated<Self, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

struct Window {
    limit: u32,
    in_use: u32,
    successes: u32,
}

/// In-flight limit between 1 and `max`: halves on a throttle status
/// (429, 502, 503, 504: [`super::classify::is_throttle`]) or a timeout;
/// after `limit` successes in a row it grows by one.
#[derive(Clone)]
pub struct AdaptiveLimitLayer {
    max: u32,
    window: Arc<Mutex<Window>>,
    freed: Arc<Notify>,
}

impl AdaptiveLimitLayer {
    /// Starts at `max`.
    pub fn new(max: u32) -> Self {
        let max = max.max(1);
        Self {
            max,
            window: Arc::new(Mutex::new(Window {
                limit: max,
                in_use: 0,
                successes: 0,
            })),
            freed: Arc::new(Notify::new()),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn acquire(&self) -> Permit {
        loop {
            let freed = self.freed.notified();
            {
                let mut w = self.lock();
                if w.in_use < w.limit {
                    w.in_use += 1;
                    return Permit(self.clone());
                }
            }
            freed.await;
        }
    }

    fn feedback(&self, result: &Result<WebhookResponse, SendError>) {
        let overloaded = match result {
            Ok(r) => super::classify::is_throttle(r.status),
            Err(SendError::Timeout(_)) => true,
            Err(_) => false,
        };
        let mut w = self.lock();
        if overloaded {
            w.limit = (w.limit / 2).max(1);
            w.successes = 0;
        } else if result.as_ref().is_ok_and(|r| r.status.is_success()) {
            w.successes += 1;
            if w.successes >= w.limit && w.limit < self.max {
                w.limit += 1;
                w.successes = 0;
                drop(w);
                self.freed.notify_waiters();
            }
        }
    }
}

/// Returns its slot when dropped, whatever happened to the request.
pub struct Permit(AdaptiveLimitLayer);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.lock().in_use -= 1;
        // One slot: one waiter. Waking every waiter here cost each delivery
        // a wake-up of every attempt queued behind the limit (hundreds with
        // a full delivery window). A waiter that wakes and finds the slot
        // taken by a newcomer waits again and is woken by the next release;
        // a woken waiter that is dropped hands the wake-up on (tokio).
        self.0.freed.notify_one();
    }
}

impl Gate for AdaptiveLimitLayer {
    type Pass = Permit;
    fn enter(&self) -> BoxFuture<Permit> {
        let limit = self.clone();
        Box::pin(async move { limit.acquire().await })
    }
    fn outcome(&self, result: &Result<WebhookResponse, SendError>) {
        self.feedback(result);
    }
}

impl<S> Layer<S> for AdaptiveLimitLayer {
    type Service = Gated<Self, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

/// A limit applied around each request: wait to pass, hold the pass while
/// the request runs, then hear its outcome.
pub trait Gate: Clone + Send + Sync + 'static {
    /// Held for the request's duration.
    type Pass: Send;
    /// Waits until the request may go.
    fn enter(&self) -> BoxFuture<Self::Pass>;
    /// Sees the request's result.
    fn outcome(&self, _result: &Result<WebhookResponse, SendError>) {}
}

/// A service behind a [`Gate`] (the rate limit, the adaptive limit).
#[derive(Clone)]
pub struct Gated<G, S> {
    gate: G,
    inner: S,
}

impl<G, S> Service<WebhookRequest> for Gated<G, S>
where
    G: Gate,
    S: Service<WebhookRequest, Response = WebhookResponse, Error = SendError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = WebhookResponse;
    type Error = SendError;
    type Future = BoxFuture<Result<WebhookResponse, SendError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: WebhookRequest) -> Self::Future {
        // The readied inner service is taken; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            let _pass = gate.enter().await;
            let result = inner.call(req).await;
            gate.outcome(&result);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, StatusCode};

    use super::*;
    use tokio::time::Instant;

    fn resp(status: u16) -> Result<WebhookResponse, SendError> {
        Ok(WebhookResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body_excerpt: String::new(),
        })
    }

    /// Each release wakes one waiter; none is left behind, also when a
    /// woken waiter gives up (is dropped) before it runs, and the limit is
    /// never exceeded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_gets_a_slot_in_turn() {
        let l = AdaptiveLimitLayer::new(3);
        let running = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let (l, running) = (l.clone(), running.clone());
            tasks.spawn(async move {
                if i % 7 == 0 {
                    // Gives up after a moment, perhaps after being woken.
                    let _ = tokio::time::timeout(Duration::from_micros(50), l.acquire()).await;
                    return;
                }
                let _permit = l.acquire().await;
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                assert!(now <= 3, "{now} in flight with a limit of 3");
                tokio::task::yield_now().await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let all = async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap()
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("every waiter got a slot");
        assert_eq!(l.lock().in_use, 0);
    }

    #[test]
    fn halves_on_overload_and_grows_back() {
        let l = AdaptiveLimitLayer::new(16);
        l.feedback(&resp(429));
        assert_eq!(l.limit(), 8);
        l.feedback(&resp(503));
        l.feedback(&Err(SendError::Timeout(Duration::from_secs(1))));
        assert_eq!(l.limit(), 2);
        l.feedback(&resp(500)); // a plain failure is not an overload signal
        l.feedback(&resp(501));
        assert_eq!(l.limit(), 2);
        for _ in 0..2 {
            l.feedback(&resp(200));
        }
        assert_eq!(l.limit(), 3);
        for _ in 0..200 {
            l.feedback(&resp(200));
        }
        assert_eq!(l.limit(), 16, "capped at max");
        for _ in 0..10 {
            l.feedback(&resp(429));
        }
        assert_eq!(l.limit(), 1, "never below one");
    }

    /// Through the layer, as the stack uses it: a gateway's 502 and 504
    /// halve the window like 429 and 503, and the caller still gets the
    /// response (classification happens later).
    #[tokio::test(start_paused = true)]
    async fn gateway_errors_shrink_the_window_through_the_layer() {
        use tower::{Layer, ServiceExt};

        let layer = AdaptiveLimitLayer::new(16);
        let statuses = Arc::new(Mutex::new(vec![200u16, 504, 502, 503, 429, 500]));
        let inner = {
            let statuses = statuses.clone();
            tower::service_fn(move |_: WebhookRequest| {
                let s = statuses.lock().unwrap().pop().unwrap();
                async move { resp(s) }
            })
        };
        let service = layer.layer(inner);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let r = service.clone().oneshot(request()).await.unwrap();
            seen.push((r.status.as_u16(), layer.limit()));
        }
        assert_eq!(
            seen,
            [(500, 16), (429, 8), (503, 4), (502, 2), (504, 1), (200, 2)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_bounds_concurrency() {
        let l = AdaptiveLimitLayer::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    /// Through the layer, as the stack uses it: twelve callers at once; the
    /// inner service sees two calls at once (the burst), then one every
    /// 100 ms (10/s). Under paused time the instants are exact, so no
    /// machine's load moves them.
    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_layer_paces_the_calls_it_passes_on() {
        use tower::{Layer, ServiceExt};

        let calls = Arc::new(Mutex::new(Vec::new()));
        let inner = {
            let calls = calls.clone();
            tower::service_fn(move |_: WebhookRequest| {
                calls.lock().unwrap().push(Instant::now());
                async { resp(200) }
            })
        };
        let service = RateLimitLayer::new(Rate {
            per_second: 10.0,
            burst: 2,
        })
        .layer(inner);
        let start = Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let service = service.clone();
            callers.spawn(async move { service.oneshot(request()).await });
        }
        while let Some(r) = callers.join_next().await {
            r.unwrap().unwrap();
        }
        let at: Vec<Duration> = calls.lock().unwrap().iter().map(|t| *t - start).collect();
        assert_eq!(at.len(), 12);
        assert!(at[..2].iter().all(|t| t.is_zero()), "the burst: {at:?}");
        for (i, w) in at.windows(2).enumerate().skip(1) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(99) && gap <= Duration::from_millis(102),
                "call {} came {gap:?} after the one before, not 100 ms: {at:?}",
                i + 2
            );
        }
    }

    fn request() -> WebhookRequest {
        WebhookRequest::for_test()
    }
}
