//! The two flow-control layers of the delivery stack: a token-bucket rate
//! limit, and an adaptive in-flight limit that halves on overload signals
//! (429, 502, 503, 504, timeouts) and grows back by one per run of successes (AIMD).
//!
//! Both wait in `poll_ready`, as tower's own limits do, so a caller that
//! readies the service holds what it waited for and `call` never waits.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
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
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            limit: self.clone(),
            inner,
            token: false,
            sleep: None,
        }
    }
}

/// A service behind a [`RateLimitLayer`]: `poll_ready` takes a token from
/// the shared bucket (sleeping until one is due), `call` spends it.
pub struct RateLimit<S> {
    limit: RateLimitLayer,
    inner: S,
    /// A token taken by `poll_ready` and not yet spent by `call`.
    token: bool,
    /// Until the bucket has a token again.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Clone> Clone for RateLimit<S> {
    /// A clone waits for its own token.
    fn clone(&self) -> Self {
        self.limit.layer(self.inner.clone())
    }
}

impl<S> Service<WebhookRequest> for RateLimit<S>
where
    S: Service<WebhookRequest, Response = WebhookResponse, Error = SendError>,
{
    type Response = WebhookResponse;
    type Error = SendError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        while !self.token {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            match self.limit.try_take() {
                Ok(()) => self.token = true,
                Err(wait) => self.sleep = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: WebhookRequest) -> Self::Future {
        assert!(self.token, "RateLimit::call without poll_ready");
        self.token = false;
        self.inner.call(req)
    }
}

/// The limit and the feedback that moves it.
#[derive(Debug)]
struct Window {
    /// The current limit: permits in the semaphore plus permits held,
    /// less `debt`.
    limit: u32,
    /// Successes in a row since the limit last moved.
    successes: u32,
    /// Permits still to retire after a shrink: held when the limit fell,
    /// each is forgotten instead of returned when its request ends.
    debt: u32,
}

/// In-flight limit between 1 and `max`: halves on a throttle status
/// (429, 502, 503, 504: [`super::classify::is_throttle`]) or a timeout;
/// after `limit` successes in a row it grows by one.
///
/// The limit is a [`Semaphore`] grown with `add_permits` and shrunk with
/// `forget_permits`, as vector's adaptive concurrency does; permits held
/// when it shrinks are retired as they come back (vector retires them as
/// they are next acquired; either way no more than the new limit is out
/// once they are).
#[derive(Clone)]
pub struct AdaptiveLimitLayer {
    max: u32,
    semaphore: Arc<Semaphore>,
    window: Arc<Mutex<Window>>,
}

impl AdaptiveLimitLayer {
    /// Starts at `max`.
    pub fn new(max: u32) -> Self {
        let max = max.max(1);
        Self {
            max,
            semaphore: Arc::new(Semaphore::new(max as usize)),
            window: Arc::new(Mutex::new(Window {
                limit: max,
                successes: 0,
                debt: 0,
            })),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.lock().limit
    }

    /// Requests holding a permit now.
    pub fn in_flight(&self) -> u32 {
        let w = self.lock();
        w.limit + w.debt - self.semaphore.available_permits() as u32
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a permit (what `poll_ready` does, as a future).
    #[cfg(test)]
    async fn acquire(&self) -> Permit {
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the limit's semaphore is never closed");
        self.permit(permit)
    }

    fn permit(&self, permit: OwnedSemaphorePermit) -> Permit {
        Permit {
            permit: Some(permit),
            limit: self.clone(),
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
            let shrink = w.limit - (w.limit / 2).max(1);
            w.limit -= shrink;
            w.successes = 0;
            // Free permits go at once; held ones when they come back.
            let forgotten = self.semaphore.forget_permits(shrink as usize) as u32;
            w.debt += shrink - forgotten;
        } else if result.as_ref().is_ok_and(|r| r.status.is_success()) {
            w.successes += 1;
            if w.successes >= w.limit && w.limit < self.max {
                w.limit += 1;
                w.successes = 0;
                if w.debt > 0 {
                    w.debt -= 1;
                } else {
                    self.semaphore.add_permits(1);
                }
            }
        }
    }
}

/// One slot of the limit, returned (or retired, after a shrink) when
/// dropped, whatever happened to the request.
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    limit: AdaptiveLimitLayer,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // Under the lock, so a shrink never counts this permit as held
        // once it is back in the semaphore.
        let mut w = self.limit.lock();
        if w.debt > 0 {
            w.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
}

impl<S> Layer<S> for AdaptiveLimitLayer {
    type Service = AdaptiveLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit {
            limit: self.clone(),
            semaphore: PollSemaphore::new(self.semaphore.clone()),
            permit: None,
            inner,
        }
    }
}

/// A service behind an [`AdaptiveLimitLayer`]: `poll_ready` takes a
/// permit, `call` moves it into the response future, which gives it back
/// and reports the outcome to the limit.
pub struct AdaptiveLimit<S> {
    limit: AdaptiveLimitLayer,
    semaphore: PollSemaphore,
    /// Taken by `poll_ready`, not yet moved into a call.
    permit: Option<Permit>,
    inner: S,
}

impl<S: Clone> Clone for AdaptiveLimit<S> {
    /// A clone waits for its own permit.
    fn clone(&self) -> Self {
        self.limit.layer(self.inner.clone())
    }
}

impl<S> Service<WebhookRequest> for AdaptiveLimit<S>
where
    S: Service<WebhookRequest, Response = WebhookResponse, Error = SendError>,
    S::Future: Send + 'static,
{
    type Response = WebhookResponse;
    type Error = SendError;
    type Future = BoxFuture<Result<WebhookResponse, SendError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if self.permit.is_none() {
            let permit = ready!(self.semaphore.poll_acquire(cx))
                .expect("the limit's semaphore is never closed");
            self.permit = Some(self.limit.permit(permit));
        }
        // The permit is held while the layers below get ready (the rate
        // limit), as before an attempt's clock starts.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: WebhookRequest) -> Self::Future {
        let permit = self
            .permit
            .take()
            .expect("AdaptiveLimit::call without poll_ready");
        let limit = self.limit.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            limit.feedback(&result);
            drop(permit);
            result
        })
    }
}

#[cfg(test)]
mod tests;
