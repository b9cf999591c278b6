//! The worker alone: a store on a tempdir, a scripted tower service in
//! place of the HTTP stack, and paused tokio time, so retry schedules of
//! minutes run in an instant and their waits can be measured.

use std::{
    collections::VecDeque,
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use http::{HeaderMap, StatusCode};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;

use super::{run, WorkerContext, WorkerView};
use crate::{
    config::Config,
    consumer::{Consumer, Consumers, CreateSpec},
    delivery::{
        endpoint::{EndpointSpec, Ordering},
        event_cache::EventCache,
        request::Keys,
        signing::{self, Secret},
        stack::{SendError, WebhookRequest, WebhookResponse},
    },
    model::{
        delivery::{DeliveryRecord, DeliveryState},
        endpoint::Endpoint,
        EndpointId, Offset,
    },
    store::{self, test_event, Store, WriterHandle},
};

const ENDPOINT: &str = "ep_test";

/// What the scripted receiver saw: the `webhook-id` of each request and
/// when (paused time) it arrived.
pub(super) type Calls = Arc<Mutex<Vec<(String, Instant)>>>;

/// A receiver that answers each request with the next scripted status
/// (200 once the script is used up) after `latency`.
pub(super) fn scripted(
    script: Vec<u16>,
    latency: Duration,
) -> (
    BoxCloneSyncService<WebhookRequest, WebhookResponse, SendError>,
    Calls,
) {
    let calls: Calls = Arc::default();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let seen = calls.clone();
    let service = tower::service_fn(move |req: WebhookRequest| {
        seen.lock()
            .unwrap()
            .push((req.msg_id.clone(), Instant::now()));
        let status = script.lock().unwrap().pop_front().unwrap_or(200);
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, SendError>(answer(status))
        }
    });
    (BoxCloneSyncService::new(service), calls)
}

/// A store holding one custom event per ordering key in `keys`.
pub(super) async fn store_with(dir: &std::path::Path, keys: &[&str]) -> (Store, WriterHandle) {
    let (store, writer) = store::open_for_test(dir);
    let events = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let mut e = test_event(&format!("e{}", i + 1));
            e.event.ordering_key = (*k).into();
            e
        })
        .collect();
    store.append(events).await.unwrap();
    (store, writer)
}

pub(super) struct Running {
    pub(super) view: Arc<WorkerView>,
    pub(super) store: Store,
    pub(super) consumer: Arc<Consumer>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a worker for an endpoint with `ordering` and `schedule` (no
/// jitter) over `store`, reading at most `window` events ahead.
pub(super) async fn start(
    store: Store,
    service: BoxCloneSyncService<WebhookRequest, WebhookResponse, SendError>,
    ordering: Ordering,
    schedule: &[u64],
    window: u32,
) -> Running {
    start_with(store, service, schedule, window, |spec| {
        spec.ordering = ordering
    })
    .await
}

/// Like [`start`], with the endpoint's spec changed by `tweak`.
pub(super) async fn start_with(
    store: Store,
    service: BoxCloneSyncService<WebhookRequest, WebhookResponse, SendError>,
    schedule: &[u64],
    window: u32,
    tweak: impl FnOnce(&mut EndpointSpec),
) -> Running {
    let config = Arc::new(Config {
        retry_jitter_percent: 0,
        delivery_window: NonZeroU32::new(window).unwrap(),
        ..Default::default()
    });
    let mut spec = EndpointSpec::validate(
        &Endpoint {
            url: "https://example.com/hook".into(),
            enabled: true,
            ..Default::default()
        },
        &config,
    )
    .unwrap();
    tweak(&mut spec);
    spec.retry_schedule = schedule.iter().map(|&s| Duration::from_secs(s)).collect();
    let consumers = Consumers::new(store.clone());
    let consumer = consumers
        .open(
            &format!("@endpoint:{ENDPOINT}"),
            CreateSpec {
                start: Offset::new(1),
                filter: spec.filter.clone(),
                max_deliveries: 0,
            },
        )
        .await
        .unwrap();
    let view = Arc::new(WorkerView::default());
    let cancel = CancellationToken::new();
    let ctx = WorkerContext {
        endpoint_id: EndpointId::new(ENDPOINT),
        spec,
        keys: Arc::new(RwLock::new(Keys {
            current: Secret::generate(),
            previous: None,
        })),
        service,
        consumer: consumer.clone(),
        store: store.clone(),
        shared: Arc::new(EventCache::new(64)),
        config,
        control: mpsc::unbounded_channel().0,
        view: view.clone(),
        failing_since: None,
        metrics: Default::default(),
        broker_shutdown: CancellationToken::new(),
        hand_over: CancellationToken::new(),
        outcomes: tokio::sync::broadcast::channel(4).0,
    };
    let task = tokio::spawn(run(ctx, cancel.clone()));
    Running {
        view,
        store,
        consumer,
        cancel,
        task,
    }
}

impl Running {
    pub(super) fn state(&self, offset: Offset) -> Option<DeliveryRecord> {
        self.store
            .deliveries()
            .get(&EndpointId::new(ENDPOINT), offset)
            .unwrap()
    }

    /// Lets paused time run (one simulated second per step, at most
    /// `secs`) until `done` holds.
    pub(super) async fn until(&self, secs: u64, done: impl Fn(&Self) -> bool) {
        for _ in 0..secs {
            if done(self) {
                return;
            }
            step().await;
        }
        assert!(done(self), "not done within {secs} simulated seconds");
    }

    pub(super) async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

/// One simulated second, after a few real milliseconds: the store's
/// writer is a thread of its own, and paused time would otherwise run
/// ahead while the worker waits for its group commits (a blocking task
/// holds the clock still meanwhile).
pub(super) async fn step() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(5)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
}

pub(super) fn id(n: u32) -> String {
    signing::webhook_id(&format!("e{n}")).into_owned()
}

/// A failed attempt's next one waits for its place in the schedule (the
/// record says when, before the wait begins); the last success is
/// recorded with every attempt counted.
#[tokio::test(start_paused = true)]
async fn retries_go_out_at_their_due_times() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = store_with(dir.path(), &["a"]).await;
    let (service, calls) = scripted(vec![500, 503], Duration::ZERO);
    let w = start(store, service, Ordering::Key, &[0, 60, 600], 16).await;

    w.until(5, |_| calls.lock().unwrap().len() == 1).await;
    w.until(5, |w| w.state(Offset::new(1)).is_some()).await;
    let failed = w.state(Offset::new(1)).unwrap();
    assert_eq!(failed.state, DeliveryState::Failed);
    assert_eq!(failed.attempts, 1);
    assert!(failed.next_attempt_at.is_some(), "scheduled durably");

    w.until(1000, |w| {
        w.state(Offset::new(1))
            .is_some_and(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    assert_eq!(w.state(Offset::new(1)).unwrap().attempts, 3);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    let gaps: Vec<Duration> = calls.windows(2).map(|p| p[1].1 - p[0].1).collect();
    // The next attempt's time is on the wall clock, from when the attempt
    // was recorded, so a second early is allowed. Late: each simulated
    // second of `step` lets 5 real milliseconds pass, so a group commit
    // slower than that (a 20 ms fsync on a loaded machine) moves the paused
    // clock on by seconds (604 s for the 600 s step was seen). Still never
    // early, and each gap far from the other step.
    for (gap, want) in gaps.iter().zip([60, 600]) {
        let want = Duration::from_secs(want);
        assert!(
            *gap + Duration::from_secs(1) >= want && *gap < want + Duration::from_secs(30),
            "waited {gap:?} for a {want:?} step"
        );
    }
    w.stop().await;
}

/// By key: an event waits for the one before it of its key to finish,
/// while another key's goes out at once.
#[tokio::test(start_paused = true)]
async fn one_key_in_log_order_other_keys_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = store_with(dir.path(), &["a", "a", "b"]).await;
    let (service, calls) = scripted(Vec::new(), Duration::from_secs(10));
    let w = start(store, service, Ordering::Key, &[0, 60], 16).await;

    w.until(60, |w| {
        (1..=3).all(|o| {
            w.state(Offset::new(o))
                .is_some_and(|d| d.state == DeliveryState::Delivered)
        })
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    let at = |n: u32| {
        calls
            .iter()
            .find(|(m, _)| *m == id(n))
            .map(|(_, t)| *t)
            .expect("sent")
    };
    assert_eq!(calls.len(), 3);
    assert!(
        at(3) - at(1) < Duration::from_secs(1),
        "b does not wait for a"
    );
    assert!(
        at(2) - at(1) >= Duration::from_secs(10),
        "a's second waits for its first"
    );
    w.stop().await;
}

/// New events are read only while fewer than `delivery_window` are held:
/// with strict ordering and a receiver that is down, two are held (one
/// waiting for its retry, one queued behind it) and the rest stay unread.
#[tokio::test(start_paused = true)]
async fn the_window_bounds_the_events_held() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = store_with(dir.path(), &["a", "b", "c", "d", "e"]).await;
    let (service, calls) = scripted(vec![500; 100], Duration::ZERO);
    let w = start(store, service, Ordering::Strict, &[0, 3600], 2).await;

    w.until(10, |w| w.state(Offset::new(1)).is_some()).await;
    for _ in 0..30 {
        step().await;
    }
    let held: Vec<Offset> = {
        let held = w.view.held.lock().unwrap();
        let mut v: Vec<Offset> = held.keys().copied().collect();
        v.sort();
        v
    };
    assert_eq!(held, [Offset::new(1), Offset::new(2)]);
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "strict: only the first sent"
    );
    assert!(w.state(Offset::new(2)).is_none());
    w.stop().await;
}

/// A response of `status` with no headers and no body.
pub(super) fn answer(status: u16) -> WebhookResponse {
    WebhookResponse {
        status: StatusCode::from_u16(status).expect("a valid status"),
        headers: HeaderMap::new(),
        body_excerpt: String::new(),
    }
}
