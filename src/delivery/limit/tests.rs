//! The flow-control layers: the adaptive algorithm, and each layer over a
//! `tower_test` mock under paused time (readiness, what reaches the inner
//! service, and when).

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc, Mutex,
};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_test::mock::{self, Handle, Spawn};

use super::*;

fn resp(status: u16) -> Result<WebhookResponse, SendError> {
    Ok(WebhookResponse {
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body_excerpt: String::new(),
    })
}

fn request() -> WebhookRequest {
    WebhookRequest::for_test()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A mock's error back as the `SendError` the test sent.
fn unbox(e: BoxError) -> SendError {
    match e.downcast::<SendError>() {
        Ok(e) => *e,
        Err(e) => SendError::transport(e),
    }
}

type MockService =
    tower::util::MapErr<mock::Mock<WebhookRequest, WebhookResponse>, fn(BoxError) -> SendError>;

/// A mock receiver with `SendError` errors, and its handle.
fn mock() -> (MockService, Handle<WebhookRequest, WebhookResponse>) {
    let (service, handle) = mock::pair();
    (
        ServiceBuilder::new()
            .map_err(unbox as fn(BoxError) -> SendError)
            .service(service),
        handle,
    )
}

/// Each release wakes one waiter; none is left behind, also when a
/// woken waiter gives up (is dropped) before it runs, and the limit is
/// never exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_gets_a_slot_in_turn() {
    let l = AdaptiveLimitLayer::new(3);
    let running = Arc::new(AtomicU32::new(0));
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
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(now <= 3, "{now} in flight with a limit of 3");
            tokio::task::yield_now().await;
            running.fetch_sub(1, Ordering::SeqCst);
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
    assert_eq!(l.in_flight(), 0);
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
    assert_eq!(l.semaphore.available_permits(), 1, "the semaphore follows");
}

/// Through the layer, as the stack uses it: a gateway's 502 and 504
/// halve the window like 429 and 503, and the caller still gets the
/// response (classification happens later).
#[tokio::test(start_paused = true)]
async fn gateway_errors_shrink_the_window_through_the_layer() {
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

/// Over a mock: with a limit of two, a third clone is not ready until a
/// call's response has come back; it is woken then, and `call` itself
/// never waits (the mock sees the request at once).
#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_waits_in_poll_ready() {
    let (inner, mut handle) = mock();
    let layer = AdaptiveLimitLayer::new(2);
    let service = layer.layer(inner);
    let mut a = Spawn::new(service.clone());
    let mut b = Spawn::new(service.clone());
    let mut c = Spawn::new(service);

    assert!(a.poll_ready().is_ready());
    assert!(b.poll_ready().is_ready());
    assert!(c.poll_ready().is_pending(), "two permits are out");
    assert_eq!(layer.in_flight(), 2);

    let first = tokio::spawn(a.call(request()));
    let (_, reply) = handle.next_request().await.expect("call did not wait");
    let _second = b.call(request());
    assert!(!c.is_woken());
    assert!(c.poll_ready().is_pending());

    reply.send_response(resp(200).unwrap());
    assert_eq!(first.await.unwrap().unwrap().status, StatusCode::OK);
    assert!(c.is_woken(), "the returned permit wakes the waiting clone");
    assert!(c.poll_ready().is_ready());
    assert_eq!(layer.in_flight(), 2);
}

/// Over a mock: a timeout and a 503 shrink the limit while both permits
/// are out; the permits that come back are retired, not returned, so the
/// limit of one holds once they are in, and a success grows it back.
#[tokio::test(start_paused = true)]
async fn a_shrink_retires_the_permits_that_were_out() {
    let (inner, mut handle) = mock();
    let layer = AdaptiveLimitLayer::new(4);
    let service = layer.layer(inner);
    let mut clones: Vec<_> = (0..5).map(|_| Spawn::new(service.clone())).collect();
    let mut calls = Vec::new();
    for s in &mut clones[..4] {
        assert!(s.poll_ready().is_ready());
        calls.push(tokio::spawn(s.call(request())));
    }
    assert!(clones[4].poll_ready().is_pending());
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(handle.next_request().await.unwrap().1);
    }
    let mut replies = replies.into_iter();
    replies
        .next()
        .unwrap()
        .send_error(SendError::Timeout(Duration::from_secs(1)));
    let err = calls.remove(0).await.unwrap().unwrap_err();
    assert!(matches!(err, SendError::Timeout(_)), "{err}");
    assert_eq!(layer.limit(), 2);
    replies.next().unwrap().send_response(resp(503).unwrap());
    assert_eq!(calls.remove(0).await.unwrap().unwrap().status, 503);
    assert_eq!(layer.limit(), 1);
    assert!(
        clones[4].poll_ready().is_pending(),
        "two still out, over a limit of one"
    );
    replies.next().unwrap().send_response(resp(200).unwrap());
    calls.remove(0).await.unwrap().unwrap();
    assert_eq!(layer.limit(), 2, "one success grows a limit of one");
    assert!(
        clones[4].poll_ready().is_ready(),
        "one out under a limit of two"
    );
    assert_eq!(layer.in_flight(), 2);
    replies.next().unwrap().send_response(resp(500).unwrap());
    calls.remove(0).await.unwrap().unwrap();
    assert_eq!(layer.limit(), 2, "a plain failure does not move it");
    assert_eq!(layer.in_flight(), 1);
    assert_eq!(layer.semaphore.available_permits(), 1);
}

/// Over a mock: the rate limit's `poll_ready` is ready for the burst,
/// then pending until the next token is due (100 ms at 10/s), and
/// readiness of the inner service still counts.
#[tokio::test(start_paused = true)]
async fn the_rate_limit_waits_in_poll_ready() {
    let (inner, mut handle) = mock();
    let service = RateLimitLayer::new(Rate {
        per_second: 10.0,
        burst: 2,
    })
    .layer(inner);
    let mut a = Spawn::new(service.clone());
    let mut b = Spawn::new(service.clone());
    let mut c = Spawn::new(service);
    assert!(a.poll_ready().is_ready());
    assert!(b.poll_ready().is_ready());
    assert!(c.poll_ready().is_pending(), "the burst is spent");
    // The mock has the requests once `call` returns; their answers are
    // not needed here.
    drop((a.call(request()), b.call(request())));
    assert!(handle.next_request().await.is_some());
    assert!(handle.next_request().await.is_some());

    tokio::time::sleep(Duration::from_millis(99)).await;
    assert!(c.poll_ready().is_pending(), "not yet: 99 ms");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(c.is_woken());
    handle.allow(0);
    assert!(
        c.poll_ready().is_pending(),
        "a token, but the inner is busy"
    );
    handle.allow(1);
    assert!(c.poll_ready().is_ready());
    drop(c.call(request()));
    assert!(handle.next_request().await.is_some());
}

/// Through the layer, as the stack uses it: twelve callers at once; the
/// inner service sees two calls at once (the burst), then one every
/// 100 ms (10/s). Under paused time the instants are exact, so no
/// machine's load moves them.
#[tokio::test(start_paused = true)]
async fn the_rate_limit_layer_paces_the_calls_it_passes_on() {
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
