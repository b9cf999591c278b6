//! The worker on its consumer's flow control and leases, under paused
//! time (the harness of `tests.rs`): the window bounds the leases, and a
//! lease runs out only when its attempt died; coalescing as the consumer
//! hands superseded offsets over.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;
use tower::util::BoxCloneSyncService;

use super::{
    tests::{answer, id, scripted, start, start_with, step, store_with, Calls},
    LEASE, WORKER_STREAM,
};
use crate::{
    delivery::{
        endpoint::Ordering,
        stack::{SendError, WebhookRequest},
    },
    model::{delivery::DeliveryState, Offset},
    pb,
};

/// With a window of 3 and a slow receiver, never more than 3 events are
/// leased (or sending) at once, and all are delivered in the end.
#[tokio::test(start_paused = true)]
async fn the_window_bounds_the_leases() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ["a"; 8];
    let (store, _writer) = store_with(dir.path(), &keys).await;
    let sending = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, top) = (sending.clone(), most.clone());
    let service = tower::service_fn(move |_: WebhookRequest| {
        let n = now.fetch_add(1, AtomicOrdering::SeqCst) + 1;
        top.fetch_max(n, AtomicOrdering::SeqCst);
        let now = now.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            now.fetch_sub(1, AtomicOrdering::SeqCst);
            Ok::<_, SendError>(answer(200))
        }
    });
    let w = start(
        store,
        BoxCloneSyncService::new(service),
        Ordering::None,
        &[0],
        3,
    )
    .await;
    let mut most_leased = 0;
    for _ in 0..200 {
        let leased = w.consumer.leases_of(WORKER_STREAM);
        assert!(leased <= 3, "{leased} leased with a window of 3");
        most_leased = most_leased.max(leased);
        let delivered = (1..=8).all(|o| {
            w.state(Offset::new(o))
                .is_some_and(|d| d.state == DeliveryState::Delivered)
        });
        if delivered {
            break;
        }
        step().await;
    }
    assert!(
        (1..=8).all(|o| w
            .state(Offset::new(o))
            .is_some_and(|d| d.state == DeliveryState::Delivered)),
        "all delivered"
    );
    assert_eq!(most_leased, 3, "the window was used");
    assert_eq!(
        most.load(AtomicOrdering::SeqCst),
        3,
        "at most 3 sent at once"
    );
    w.stop().await;
}

/// An attempt that takes far longer than a lease keeps its event: the
/// worker renews the lease, so the event is sent once.
#[tokio::test(start_paused = true)]
async fn a_slow_attempt_keeps_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = store_with(dir.path(), &["a"]).await;
    let slow = LEASE * 5;
    let (service, calls) = scripted(Vec::new(), slow);
    let w = start(store, service, Ordering::Key, &[0, 60], 4).await;
    w.until(1000, |w| {
        w.state(Offset::new(1))
            .is_some_and(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    assert_eq!(calls.lock().unwrap().len(), 1, "sent once");
    assert_eq!(w.state(Offset::new(1)).unwrap().attempts, 1);
    w.stop().await;
}

/// An attempt that dies (its task panics, nothing recorded) loses its
/// lease: the consumer hands the event out again once it runs out, and
/// not before.
#[tokio::test(start_paused = true)]
async fn a_dead_attempt_is_sent_again_when_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = store_with(dir.path(), &["a"]).await;
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let panicked = Arc::new(AtomicBool::new(false));
    let service = tower::service_fn(move |req: WebhookRequest| {
        seen.lock()
            .unwrap()
            .push((req.msg_id.clone(), Instant::now()));
        if !panicked.swap(true, AtomicOrdering::SeqCst) {
            panic!("the first attempt dies");
        }
        async move { Ok::<_, SendError>(answer(200)) }
    });
    let w = start(
        store,
        BoxCloneSyncService::new(service),
        Ordering::Key,
        &[0, 60],
        4,
    )
    .await;
    w.until(1000, |w| {
        w.state(Offset::new(1))
            .is_some_and(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    let calls: Vec<(String, Instant)> = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "sent again after the dead attempt");
    assert!(calls.iter().all(|(m, _)| *m == id(1)));
    let gap = calls[1].1 - calls[0].1;
    assert!(
        gap + Duration::from_secs(1) >= LEASE,
        "sent again after {gap:?}, before the lease ran out"
    );
    w.stop().await;
}

/// A validated inventory level (a state event) for `product`.
fn level(id: &str, product: &str, available: f64) -> crate::model::NewEvent {
    crate::convert::validate_event(
        pb::Event {
            id: id.into(),
            payload: Some(pb::event::Payload::InventoryUpdated(pb::InventoryUpdated {
                tenant_id: "TENANT001".into(),
                fulfillment_center_id: "FC1".into(),
                product: product.into(),
                quantity_available: Some(available),
                reason: pb::InventoryReason::Adjustment as i32,
                ..Default::default()
            })),
            ..Default::default()
        },
        &"event",
        std::time::SystemTime::now(),
        crate::convert::EventLimits {
            max_event_bytes: 4096,
        },
    )
    .expect("a valid event")
}

/// Coalescing: newer levels of a key whose level waits for its retry are
/// handed to the worker by the consumer with the offsets they supersede,
/// at the waiting one's due time; the worker records those SUPERSEDED (by
/// the newest) and the newest carries on their schedule and attempt count.
#[tokio::test(start_paused = true)]
async fn superseded_levels_are_recorded_and_their_schedule_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = crate::store::open_for_test(dir.path());
    store
        .append(vec![level("a1", "SKU-A", 10.0)])
        .await
        .unwrap();
    let (service, calls) = scripted(vec![500, 500], Duration::ZERO);
    let w = start_with(store, service, &[0, 120, 120, 120], 8, |spec| {
        spec.ordering = Ordering::Key;
        spec.coalesce = true;
    })
    .await;
    w.until(60, |w| w.state(Offset::new(1)).is_some()).await;
    assert_eq!(
        w.state(Offset::new(1)).unwrap().state,
        DeliveryState::Failed
    );
    // Appended from a blocking task, which holds the paused clock still
    // while the store's writer thread works: else the clock would run on
    // to a1's retry meanwhile.
    let (store, handle) = (w.store.clone(), tokio::runtime::Handle::current());
    let newer = vec![level("a2", "SKU-A", 9.0), level("a3", "SKU-A", 8.0)];
    tokio::task::spawn_blocking(move || handle.block_on(store.append(newer)))
        .await
        .unwrap()
        .unwrap();
    w.until(1000, |w| {
        w.state(Offset::new(3))
            .is_some_and(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    for o in [1, 2] {
        let d = w.state(Offset::new(o)).expect("recorded");
        assert_eq!(d.state, DeliveryState::Superseded, "offset {o}");
        assert_eq!(d.superseded_by, Offset::new(3), "offset {o}");
    }
    assert_eq!(w.state(Offset::new(1)).unwrap().attempts, 1);
    assert_eq!(
        w.state(Offset::new(3)).unwrap().attempts,
        3,
        "a1's attempt counts"
    );
    let calls = calls.lock().unwrap().clone();
    let sent: Vec<String> = calls.iter().map(|(m, _)| m.clone()).collect();
    let webhook_id = |e: &str| crate::delivery::signing::webhook_id(e).into_owned();
    assert_eq!(sent, [webhook_id("a1"), webhook_id("a3"), webhook_id("a3")]);
    let gap = calls[1].1 - calls[0].1;
    assert!(
        gap + Duration::from_secs(1) >= Duration::from_secs(120),
        "a3 went out {gap:?} after a1's failure, before a1's retry was due"
    );
    // Listed until the worker has the attempt's report (just after the
    // record); then nothing is left listed.
    w.until(10, |w| w.view.held.lock().unwrap().is_empty())
        .await;
    w.stop().await;
}
