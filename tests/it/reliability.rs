//! Reliability of the real binary under mixed load, across crashes and
//! graceful shutdowns.
//!
//! The load: three publishers (unary `Publish`, `PublishBatch` and
//! `PublishStream` calls, fresh ids only), one durable gRPC consumer with
//! explicit acks and a short ack wait that records what it processed and
//! acks it, and five webhook endpoints with different filters. Four point at
//! a healthy receiver that answers 200 at once or after a short delay (so
//! requests are in flight at a kill); one points at a flaky receiver that
//! also answers 500 or resets the connection now and then.
//!
//! - `twenty_sigkill_cycles_under_mixed_load`: twenty SIGKILLs at random
//!   moments, each followed by a restart on the same data directory. After
//!   every restart, before any new load, every acknowledged publish is read
//!   back with `GetEvent`, and the consumer's fresh stream must not
//!   redeliver any offset whose `Ack` returned OK before the kill. At the end:
//!   the log holds every acknowledged event at its offset; every
//!   acknowledged event reaches every endpoint whose filter matches it (and
//!   no other), signed, with the same body on every copy, and is listed as
//!   delivered; a copy re-sent after a 2xx answer is a failure unless a kill
//!   lies between the two copies and the 2xx came at most
//!   `IN_FLIGHT_AT_MOST` before it (so the delivery was in flight at the
//!   kill); the consumer processed every acknowledged event.
//! - `graceful_shutdown_under_load_loses_nothing`: SIGTERM under the same
//!   load; the broker must exit 0 within its `shutdown_timeout`, and after a
//!   restart the same checks hold.
//!
//! Reproduce a run's choices (not its timing) with
//! `STEVEDORE_CRASH_SEED=<seed printed>`.

use std::{
    collections::{hash_map::Entry, BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use prost_types::Duration as PbDuration;
use stevedore::pb::{
    self, admin_client::AdminClient, event::Payload, publisher_client::PublisherClient,
    subscribe_request::Start, subscriber_client::SubscriberClient, AckMode, AckRequest,
    CreateEndpointRequest, DeliveryState, Endpoint, GetEventRequest, ListAttemptsRequest,
    NackRequest, PublishResponse, SubscribeRequest,
};
use tokio::sync::watch;
use tonic::{transport::Channel, Code};

use crate::{
    crash::{
        all_stderr, call, connect, mode_name, read_stderr, start_server_with_env, status_text,
        Mode, Rng, Server,
    },
    crash_delivery::list_deliveries,
    receiver::{verify_signature, Behavior, Receiver, Recorded, HOOK_PATH},
};

// ------------------------------------------------------------------ settings

/// SIGKILL/restart cycles.
const CYCLES: usize = 20;
/// Publisher tasks.
const PUBLISHERS: usize = 3;
/// Load between a (re)start and its kill, in milliseconds.
const KILL_AFTER_MS: (u64, u64) = (150, 400);
/// Load before the SIGTERM of the graceful-shutdown test.
const TERM_AFTER: Duration = Duration::from_millis(800);
/// A delivery answered with a 2xx this long before a broker stop was not in
/// flight at the stop (its outcome should have been committed), so sending
/// it again after the restart is a failure.
const IN_FLIGHT_AT_MOST: Duration = Duration::from_secs(3);
/// Between a broker's stop and the start of the next.
const RESTART_PAUSE: Duration = Duration::from_millis(50);
/// Load on the last broker before the publishers stop.
const FINAL_LOAD: Duration = Duration::from_millis(300);
/// Pause between a publisher's calls, in milliseconds: enough load to keep
/// requests in flight at every kill, little enough that a debug build
/// delivers it all in seconds.
const PUBLISH_PAUSE_MS: (u64, u64) = (5, 20);
/// Delay before each attempt, healthy endpoints (ms).
const HEALTHY_SCHEDULE_MS: &[u64] = &[0, 200, 200, 200, 200, 200];
/// Delay before each attempt, the flaky endpoint (ms): long enough that
/// about one answer in four failing never dead-letters anything.
const FLAKY_SCHEDULE_MS: &[u64] = &[0, 50, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100];
/// Every endpoint's per-attempt timeout.
const ATTEMPT_TIMEOUT_MS: u64 = 5_000;
/// The durable gRPC consumer.
const CONSUMER: &str = "reliability-sub";
const SUB_ACK_WAIT_MS: u64 = 250;
const SUB_MAX_IN_FLIGHT: u32 = 64;
/// One gRPC call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Every acknowledged event delivered and processed, after the last restart.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The graceful-shutdown test's `shutdown_timeout`.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;
/// A whole test (it takes well under a minute alone on two cores; the rest
/// of the suite may run beside it).
const TEST_TIMEOUT: Duration = Duration::from_secs(150);
/// The broker's environment (crash.rs adds `STEVEDORE_LOG=warn` and turns
/// the metrics listener off). The receivers are on loopback, which the SSRF
/// guard blocks unless allowed. The smallest event-log segments, so that
/// kills also land around segment changes.
const BROKER_ENV: [(&str, &str); 3] = [
    ("STEVEDORE_ALLOW_HTTP", "true"),
    ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
    ("STEVEDORE_LOG_SEGMENT_BYTES", "65536"),
];
/// The custom event type.
const CUSTOM_TYPE: &str = "reliability.ping";

fn ms(n: u64) -> PbDuration {
    PbDuration {
        seconds: (n / 1000) as i64,
        nanos: ((n % 1000) * 1_000_000) as i32,
    }
}

fn seed() -> u64 {
    std::env::var("STEVEDORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

// ------------------------------------------------------------------ events

/// Event `rl{task}-{seq}`, by `seq % 3`: a custom event whose data names its
/// id, a pick confirmation whose `waveId` is its id (ordering key shared by
/// every eighth), or an inventory update whose `referenceId` is its id. The
/// attribute `lane` is `even` or `odd` by `seq`.
fn make_event(task: usize, seq: u64) -> pb::Event {
    let id = format!("rl{task}-{seq}");
    let payload = match seq % 3 {
        0 => {
            let mut fields = BTreeMap::new();
            fields.insert("eventId".to_owned(), string(&id));
            fields.insert("seq".to_owned(), number(seq as f64));
            Payload::Custom(pb::CustomEvent {
                r#type: CUSTOM_TYPE.into(),
                data: Some(prost_types::Struct { fields }),
            })
        }
        1 => Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "rel-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            sales_order_id: format!("SO-{task}-{}", seq % 8),
            wave_id: id.clone(),
            status: pb::PickStatus::Complete as i32,
            ..Default::default()
        }),
        _ => Payload::InventoryUpdated(pb::InventoryUpdated {
            tenant_id: "rel-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            product: format!("SKU-{task}-{}", seq % 5),
            location: "A-01".into(),
            reference_id: id.clone(),
            quantity_available: Some(seq as f64),
            reason: pb::InventoryReason::Adjustment as i32,
            ..Default::default()
        }),
    };
    pb::Event {
        attributes: [("lane".to_owned(), lane(seq).to_owned())].into(),
        id,
        payload: Some(payload),
        ..Default::default()
    }
}

fn event_type(seq: u64) -> &'static str {
    match seq % 3 {
        0 => CUSTOM_TYPE,
        1 => "pick.confirmed",
        _ => "inventory.updated",
    }
}

fn lane(seq: u64) -> &'static str {
    if seq.is_multiple_of(2) {
        "even"
    } else {
        "odd"
    }
}

/// `(task, seq)` of one of our ids.
fn parse_id(id: &str) -> Option<(usize, u64)> {
    let (task, seq) = id.strip_prefix("rl")?.split_once('-')?;
    Some((task.parse().ok()?, seq.parse().ok()?))
}

fn string(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
    }
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

/// Checks that a request's `x-jasci-event` and body are event `id`'s.
fn check_content(id: &str, seq: u64, r: &Recorded) -> Result<(), String> {
    let body: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("body of {id:?} is not JSON ({e})"))?;
    let field = match seq % 3 {
        0 => "eventId",
        1 => "waveId",
        _ => "referenceId",
    };
    if r.header("x-jasci-event") != Some(event_type(seq)) {
        return Err(format!(
            "{id:?}: x-jasci-event {:?}, expected {:?}",
            r.header("x-jasci-event"),
            event_type(seq)
        ));
    }
    if body[field] != id {
        return Err(format!(
            "{id:?}: the body is another event's: {}",
            r.body_text()
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------ endpoints

/// One endpoint of the test: its name (the `ep` query parameter of its
/// URL), its receiver and its filters.
struct EpSpec {
    name: &'static str,
    flaky: bool,
    event_types: &'static [&'static str],
    /// `attribute_filters: {lane: ...}`.
    lane: Option<&'static str>,
    ordering: pb::Ordering,
}

impl EpSpec {
    fn matches(&self, seq: u64) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event_type(seq)))
            && self.lane.is_none_or(|l| l == lane(seq))
    }

    fn path(&self) -> String {
        format!("{HOOK_PATH}?ep={}", self.name)
    }
}

const ENDPOINTS: [EpSpec; 5] = [
    EpSpec {
        name: "all",
        flaky: false,
        event_types: &[],
        lane: None,
        ordering: pb::Ordering::Key,
    },
    EpSpec {
        name: "picks",
        flaky: false,
        event_types: &["pick.confirmed"],
        lane: None,
        ordering: pb::Ordering::Key,
    },
    EpSpec {
        name: "stock",
        flaky: false,
        event_types: &["inventory.updated", CUSTOM_TYPE],
        lane: None,
        ordering: pb::Ordering::None,
    },
    EpSpec {
        name: "even",
        flaky: false,
        event_types: &[],
        lane: Some("even"),
        ordering: pb::Ordering::Key,
    },
    EpSpec {
        name: "flaky",
        flaky: true,
        event_types: &[],
        lane: None,
        ordering: pb::Ordering::Key,
    },
];

/// An endpoint as created.
struct Ep {
    spec: &'static EpSpec,
    id: String,
    secret: String,
}

async fn create_endpoints(addr: &str, healthy: &str, flaky: &str) -> Result<Vec<Ep>, String> {
    let mut admin = AdminClient::new(connect(addr).await?);
    let mut out = Vec::new();
    for spec in &ENDPOINTS {
        let (url, schedule) = if spec.flaky {
            (flaky, FLAKY_SCHEDULE_MS)
        } else {
            (healthy, HEALTHY_SCHEDULE_MS)
        };
        let endpoint = Endpoint {
            url: format!("{url}?ep={}", spec.name),
            description: format!("reliability test endpoint {}", spec.name),
            event_types: spec.event_types.iter().map(|t| (*t).to_owned()).collect(),
            attribute_filters: spec
                .lane
                .map(|l| [("lane".to_owned(), l.to_owned())].into())
                .unwrap_or_default(),
            retry_schedule: schedule.iter().map(|&n| ms(n)).collect(),
            timeout: Some(ms(ATTEMPT_TIMEOUT_MS)),
            ordering: spec.ordering as i32,
            ..Default::default()
        };
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            admin.create_endpoint(CreateEndpointRequest {
                endpoint: Some(endpoint),
            }),
        )
        .await
        .map_err(|_| format!("CreateEndpoint timed out after {CALL_TIMEOUT:?}"))?
        .map_err(|s| format!("CreateEndpoint({}): {}", spec.name, status_text(&s)))?
        .into_inner();
        let id = r.endpoint.map(|e| e.id).unwrap_or_default();
        if id.is_empty() || !r.secret.starts_with("whsec_") {
            return Err(format!(
                "CreateEndpoint({}) returned id {id:?} and a secret without whsec_",
                spec.name
            ));
        }
        out.push(Ep {
            spec,
            id,
            secret: r.secret,
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------ receivers

/// How a receiver answers one request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    /// 200 after this many milliseconds.
    Slow(u64),
    Fail,
    Reset,
}

impl Answer {
    fn behavior(self) -> Behavior {
        match self {
            Answer::Ok => Behavior::Status(200),
            Answer::Slow(ms) => Behavior::Delay(Duration::from_millis(ms), 200),
            Answer::Fail => Behavior::Status(500),
            Answer::Reset => Behavior::Reset,
        }
    }

    fn success(self) -> bool {
        matches!(self, Answer::Ok | Answer::Slow(_))
    }
}

/// One receiver and the answers queued for it. The receiver pops one queued
/// behaviour per recorded request, in order of arrival, so request `i` got
/// `pushed[i]` as long as the queue never ran dry (`defaults_used`).
struct Mixer {
    rx: Receiver,
    flaky: bool,
    pushed: Mutex<Vec<Answer>>,
    /// No more failures (the drain phase).
    calm: AtomicBool,
}

const QUEUE_LOW: usize = 512;
const QUEUE_HIGH: usize = 1024;

impl Mixer {
    async fn start(flaky: bool) -> Arc<Mixer> {
        Arc::new(Mixer {
            rx: Receiver::start().await,
            flaky,
            pushed: Mutex::new(Vec::new()),
            calm: AtomicBool::new(false),
        })
    }

    fn top_up(&self, rng: &mut Rng) {
        let queued = self.rx.queued();
        if queued >= QUEUE_LOW {
            return;
        }
        let calm = self.calm.load(Ordering::SeqCst);
        let mut pushed = self.pushed.lock().unwrap();
        for _ in queued..QUEUE_HIGH {
            let roll = rng.next() % 100;
            let answer = match (self.flaky, roll) {
                (false, 0..=74) | (true, 0..=59) => Answer::Ok,
                (false, _) | (true, 60..=74) => Answer::Slow(rng.range(10, 40)),
                _ if calm => Answer::Ok,
                (true, 75..=89) => Answer::Fail,
                (true, _) => Answer::Reset,
            };
            self.rx.respond(answer.behavior());
            pushed.push(answer);
        }
    }

    /// Requests that got the receiver's default (200) instead of a queued
    /// answer.
    fn defaults_used(&self) -> usize {
        let pushed = self.pushed.lock().unwrap().len();
        self.rx.count().saturating_sub(pushed - self.rx.queued())
    }

    /// What request `i` was answered, when known.
    fn answers(&self) -> Vec<Option<Answer>> {
        let n = self.rx.count();
        if self.defaults_used() > 0 {
            return vec![None; n];
        }
        let pushed = self.pushed.lock().unwrap();
        (0..n).map(|i| pushed.get(i).copied()).collect()
    }
}

async fn mix(mixers: Vec<Arc<Mixer>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::SeqCst) {
        for m in &mixers {
            m.top_up(&mut rng);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ------------------------------------------------------------------ shared state

/// What the publishers were told.
#[derive(Default)]
struct Ledger {
    /// Acknowledged id → offset.
    acked: HashMap<String, u64>,
    by_offset: HashMap<u64, String>,
    /// Acknowledged, in order of acknowledgement.
    order: Vec<(String, u64)>,
    /// Every id ever sent (acknowledged or not).
    sent: HashSet<String>,
}

/// What the durable consumer saw and acked.
#[derive(Default)]
struct SubLedger {
    /// Offset → event id, as first received.
    processed: HashMap<u64, String>,
    /// Offsets whose `Ack` returned OK.
    acked: HashSet<u64>,
    /// Offsets whose `Ack` failed with the broker's stop: it may or may not
    /// have been applied, so they may or may not come back.
    in_doubt: HashSet<u64>,
    messages: u64,
    /// Messages with `delivery_attempt > 1`.
    redelivered: u64,
    /// Messages for an offset acked earlier on the same stream (a lease that
    /// ran out while the ack was on its way).
    again_after_ack: u64,
    streams: u64,
    /// Offsets nacked, and acked after their ack wait.
    nacked: u64,
    late_acks: u64,
    /// Fresh streams after a restart, and the acked offsets each was
    /// checked against.
    checked_streams: u64,
    checked_acks: u64,
    /// The generation of the last stream opened.
    last_gen: u64,
}

struct Shared {
    /// `(generation, address)` of the broker to use; None while one is down
    /// or being checked.
    addr: watch::Receiver<Option<(u64, String)>>,
    /// Highest generation that was sent SIGKILL or SIGTERM (stored before
    /// the signal, so a failure it causes is seen after the store).
    killed: AtomicU64,
    /// Publishers stop.
    stop: AtomicBool,
    /// The subscriber stops.
    sub_stop: AtomicBool,
    ledger: Mutex<Ledger>,
    sub: Mutex<SubLedger>,
    /// Broken guarantees and failures on a live broker.
    failures: Mutex<Vec<String>>,
    /// Failed calls explained by a kill or a shutdown.
    crash_errors: AtomicU64,
    calls: [AtomicU64; 3],
    started: Instant,
}

impl Shared {
    fn new(addr: watch::Receiver<Option<(u64, String)>>) -> Arc<Shared> {
        Arc::new(Shared {
            addr,
            killed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            sub_stop: AtomicBool::new(false),
            ledger: Mutex::new(Ledger::default()),
            sub: Mutex::new(SubLedger::default()),
            failures: Mutex::new(Vec::new()),
            crash_errors: AtomicU64::new(0),
            calls: Default::default(),
            started: Instant::now(),
        })
    }

    fn fail(&self, msg: String) {
        let msg = format!("[+{:.3}s] {msg}", self.started.elapsed().as_secs_f64());
        eprintln!("reliability test failure: {msg}");
        self.failures.lock().unwrap().push(msg);
    }

    /// A failed call on start #`generation`: fine if that broker was
    /// stopped, a failure if it is live.
    fn call_failed(&self, generation: u64, who: &str, what: String) {
        if generation > self.killed.load(Ordering::SeqCst) {
            self.fail(format!("{who}: {what} on live broker start #{generation}"));
        } else {
            self.crash_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record(&self, events: &[pb::Event], acks: &[PublishResponse], generation: u64) {
        let mut errors = Vec::new();
        {
            let mut ledger = self.ledger.lock().unwrap();
            for (e, ack) in events.iter().zip(acks) {
                if ack.event_id != e.id || ack.offset == 0 || ack.duplicate {
                    errors.push(format!(
                        "start #{generation}: publishing fresh id {:?} was acknowledged as {ack:?}",
                        e.id
                    ));
                    continue;
                }
                if let Some(other) = ledger.by_offset.insert(ack.offset, e.id.clone()) {
                    errors.push(format!(
                        "start #{generation}: offset {} acknowledged for both {other:?} and {:?}",
                        ack.offset, e.id
                    ));
                }
                ledger.acked.insert(e.id.clone(), ack.offset);
                ledger.order.push((e.id.clone(), ack.offset));
            }
        }
        for e in errors {
            self.fail(e);
        }
    }
}

/// The next broker after `failed_gen`, or None once `stop` is set.
async fn next_broker(
    addr_rx: &mut watch::Receiver<Option<(u64, String)>>,
    failed_gen: u64,
    stop: &AtomicBool,
) -> Option<(u64, String)> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        if let Some((g, a)) = addr_rx.borrow_and_update().clone() {
            if g > failed_gen {
                return Some((g, a));
            }
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(50), addr_rx.changed()).await
        {
            return None; // the coordinator is gone
        }
    }
}

// ------------------------------------------------------------------ load

async fn publisher(task: usize, sh: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut addr_rx = sh.addr.clone();
    let mut seq = 0u64;
    let mut failed_gen = 0u64;
    let who = format!("publisher {task}");
    while let Some((generation, addr)) = next_broker(&mut addr_rx, failed_gen, &sh.stop).await {
        failed_gen = generation;
        let mut client = match connect(&addr).await {
            Ok(c) => PublisherClient::new(c),
            Err(e) => {
                sh.call_failed(generation, &who, e);
                continue;
            }
        };
        while !sh.stop.load(Ordering::SeqCst) {
            let (mode, n) = match rng.next() % 3 {
                0 => (Mode::Unary, 1),
                1 => (Mode::Batch, rng.range(2, 8) as usize),
                _ => (Mode::Stream, rng.range(3, 12) as usize),
            };
            let events: Vec<pb::Event> = (0..n)
                .map(|_| {
                    seq += 1;
                    make_event(task, seq)
                })
                .collect();
            sh.ledger
                .lock()
                .unwrap()
                .sent
                .extend(events.iter().map(|e| e.id.clone()));
            sh.calls[mode as usize].fetch_add(1, Ordering::Relaxed);
            let mut acks = Vec::with_capacity(n);
            let result =
                tokio::time::timeout(CALL_TIMEOUT, call(&mut client, mode, &events, &mut acks))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "{} timed out after {CALL_TIMEOUT:?}",
                            mode_name(mode)
                        ))
                    });
            // Acks that arrived count even when the call failed later.
            sh.record(&events, &acks, generation);
            let result = result.and_then(|()| match acks.len() {
                got if got == n => Ok(()),
                got => Err(format!(
                    "{} returned {got} acks for {n} events",
                    mode_name(mode)
                )),
            });
            if let Err(e) = result {
                sh.call_failed(generation, &who, e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(
                rng.range(PUBLISH_PAUSE_MS.0, PUBLISH_PAUSE_MS.1),
            ))
            .await;
        }
    }
}

/// The durable consumer: takes what is there (up to its window), records
/// it, acks it, repeats; now and then it acks too late (after the ack wait)
/// or nacks a batch instead. On each broker it opens one fresh stream,
/// which must never bring back an offset acked before it was opened.
async fn subscriber(sh: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut addr_rx = sh.addr.clone();
    let mut failed_gen = 0u64;
    'brokers: while let Some((generation, addr)) =
        next_broker(&mut addr_rx, failed_gen, &sh.sub_stop).await
    {
        // After a failure on a live broker (already reported) the next
        // round tries the same broker again, after a pause.
        if generation <= sh.sub.lock().unwrap().last_gen {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sh.sub.lock().unwrap().last_gen = generation;
        if generation <= sh.killed.load(Ordering::SeqCst) {
            failed_gen = generation;
            continue;
        }
        let who = format!("subscriber ({CONSUMER})");
        let mut client = match connect(&addr).await {
            Ok(c) => SubscriberClient::new(c),
            Err(e) => {
                sh.call_failed(generation, &who, e);
                continue;
            }
        };
        // Every ack of earlier streams has returned (acks are sequential).
        let acked_before: HashSet<u64> = sh.sub.lock().unwrap().acked.clone();
        let request = SubscribeRequest {
            consumer: CONSUMER.into(),
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::Explicit as i32,
            max_in_flight: SUB_MAX_IN_FLIGHT,
            ack_wait: Some(ms(SUB_ACK_WAIT_MS)),
            ..Default::default()
        };
        let mut stream = match tokio::time::timeout(CALL_TIMEOUT, client.subscribe(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                sh.call_failed(generation, &who, format!("Subscribe: {}", status_text(&s)));
                continue;
            }
            Err(_) => {
                sh.call_failed(generation, &who, "Subscribe timed out".into());
                continue;
            }
        };
        {
            let mut sub = sh.sub.lock().unwrap();
            sub.streams += 1;
            if !acked_before.is_empty() {
                sub.checked_streams += 1;
                sub.checked_acks += acked_before.len() as u64;
            }
        }
        loop {
            if sh.sub_stop.load(Ordering::SeqCst) {
                break 'brokers;
            }
            let first =
                match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) => {
                        sh.call_failed(generation, &who, "the Subscribe stream ended".into());
                        continue 'brokers;
                    }
                    Ok(Err(s)) => {
                        sh.call_failed(generation, &who, format!("Subscribe: {}", status_text(&s)));
                        continue 'brokers;
                    }
                };
            let mut batch = vec![first];
            while batch.len() < SUB_MAX_IN_FLIGHT as usize {
                match stream.message().now_or_never() {
                    Some(Ok(Some(m))) => batch.push(m),
                    // An end or an error shows on the next read.
                    _ => break,
                }
            }
            let mut errors = Vec::new();
            {
                let mut sub = sh.sub.lock().unwrap();
                for m in &batch {
                    sub.messages += 1;
                    if m.delivery_attempt > 1 {
                        sub.redelivered += 1;
                    }
                    if acked_before.contains(&m.offset) {
                        errors.push(format!(
                            "CONSUMER CURSOR BEHIND ITS ACKS: start #{generation} delivered offset {} \
                             (delivery_attempt {}) on a fresh stream of consumer {CONSUMER:?}, although \
                             Ack of that offset had returned OK before the stream was opened",
                            m.offset, m.delivery_attempt
                        ));
                    } else if sub.acked.contains(&m.offset) {
                        sub.again_after_ack += 1;
                    }
                    let id = m.event.as_ref().map(|e| e.id.clone()).unwrap_or_default();
                    match sub.processed.entry(m.offset) {
                        Entry::Occupied(e) if *e.get() != id => errors.push(format!(
                            "consumer {CONSUMER:?}: offset {} came as {:?} and later as {id:?}",
                            m.offset,
                            e.get()
                        )),
                        Entry::Occupied(_) => {}
                        Entry::Vacant(e) => {
                            e.insert(id);
                        }
                    }
                }
            }
            for e in errors {
                sh.fail(e);
            }
            let offsets: Vec<u64> = batch.iter().map(|m| m.offset).collect();
            match rng.next() % 12 {
                // Hand the batch back: it must come again.
                0 => {
                    let nack = client.nack(NackRequest {
                        consumer: CONSUMER.into(),
                        offsets: offsets.clone(),
                        delay: None,
                    });
                    match tokio::time::timeout(CALL_TIMEOUT, nack).await {
                        Ok(Ok(_)) => sh.sub.lock().unwrap().nacked += offsets.len() as u64,
                        Ok(Err(s)) => {
                            sh.call_failed(generation, &who, format!("Nack: {}", status_text(&s)));
                            continue 'brokers;
                        }
                        Err(_) => {
                            sh.call_failed(generation, &who, "Nack timed out".into());
                            continue 'brokers;
                        }
                    }
                    continue;
                }
                // Ack after the leases ran out (they are redelivered
                // meanwhile; the late ack still counts).
                1 | 2 => {
                    sh.sub.lock().unwrap().late_acks += offsets.len() as u64;
                    tokio::time::sleep(Duration::from_millis(SUB_ACK_WAIT_MS + 150)).await;
                }
                _ => {}
            }
            let ack = client.ack(AckRequest {
                consumer: CONSUMER.into(),
                offsets: offsets.clone(),
            });
            match tokio::time::timeout(CALL_TIMEOUT, ack).await {
                Ok(Ok(_)) => sh.sub.lock().unwrap().acked.extend(offsets),
                Ok(Err(s)) => {
                    sh.sub.lock().unwrap().in_doubt.extend(offsets);
                    sh.call_failed(generation, &who, format!("Ack: {}", status_text(&s)));
                    continue 'brokers;
                }
                Err(_) => {
                    sh.sub.lock().unwrap().in_doubt.extend(offsets);
                    sh.call_failed(generation, &who, "Ack timed out".into());
                    continue 'brokers;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ checks

/// `GetEvent` of acknowledged events: each must be there with its id.
async fn check_acked(addr: &str, events: &[(String, u64)]) -> Result<(), String> {
    let client = SubscriberClient::new(connect(addr).await?);
    let mut reads = futures::stream::iter(events.iter().map(|(id, offset)| {
        let mut client = client.clone();
        async move {
            let got = tokio::time::timeout(
                CALL_TIMEOUT,
                client.get_event(GetEventRequest {
                    offset: *offset,
                    ..Default::default()
                }),
            )
            .await;
            match got {
                Err(_) => Err(format!("GetEvent({offset}) timed out")),
                Ok(Err(s)) => Err(format!(
                    "ACKNOWLEDGED EVENT MISSING: {id:?} was acknowledged at offset {offset}; \
                     GetEvent({offset}) -> {}",
                    status_text(&s)
                )),
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let got = r.event.map(|e| e.id).unwrap_or_default();
                    if r.offset != *offset || got != *id {
                        Err(format!(
                            "{id:?} was acknowledged at offset {offset}, but GetEvent({offset}) \
                             returns {got:?} at offset {}",
                            r.offset
                        ))
                    } else {
                        Ok(())
                    }
                }
            }
        }
    }))
    .buffer_unordered(16);
    let mut errors = Vec::new();
    while let Some(r) = reads.next().await {
        if let Err(e) = r {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let n = errors.len();
    errors.sort();
    errors.truncate(10);
    Err(format!(
        "{n} acknowledged events failed GetEvent:\n  {}",
        errors.join("\n  ")
    ))
}

/// Replays the whole (quiescent) log and checks it against the ledger:
/// dense offsets, every acknowledged event at its offset, no id twice, and
/// nothing but our events and the broker's own (`stevedore.*`). Returns the
/// number of events and how many of ours were written but never
/// acknowledged.
async fn check_log(
    addr: &str,
    acked: &HashMap<String, u64>,
    sent: &HashSet<String>,
) -> Result<(u64, usize, usize), String> {
    let mut client = SubscriberClient::new(connect(addr).await?);
    let mut stream = tokio::time::timeout(
        CALL_TIMEOUT,
        client.subscribe(SubscribeRequest {
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::None as i32,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| "Subscribe timed out".to_owned())?
    .map_err(|s| format!("Subscribe: {}", status_text(&s)))?
    .into_inner();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log: Vec<(u64, String, String)> = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "reading the log took too long ({} events)",
                log.len()
            ));
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
            Ok(Ok(Some(m))) => {
                let id = m.event.map(|e| e.id).unwrap_or_default();
                log.push((m.offset, id, m.event_type));
            }
            Ok(Ok(None)) => return Err("the replay stream ended".into()),
            Ok(Err(s)) => return Err(format!("replay: {}", status_text(&s))),
            Err(_) => {
                // Idle: anything after what we have?
                let probe = log.last().map_or(1, |(o, _, _)| o + 1);
                match tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.get_event(GetEventRequest {
                        offset: probe,
                        ..Default::default()
                    }),
                )
                .await
                {
                    Err(_) => return Err(format!("GetEvent({probe}) timed out")),
                    Ok(Err(s)) if s.code() == Code::NotFound => break,
                    Ok(Err(s)) => return Err(format!("GetEvent({probe}): {}", status_text(&s))),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let (mut ours_unacked, mut broker_events) = (0, 0);
    let mut prev = 0u64;
    for (offset, id, event_type) in &log {
        if *offset != prev + 1 {
            return Err(format!(
                "the log is not dense: offset {offset} follows {prev}"
            ));
        }
        prev = *offset;
        if let Some(first) = seen.insert(id, *offset) {
            return Err(format!(
                "{id:?} is in the log twice, at offsets {first} and {offset}"
            ));
        }
        if event_type.starts_with("stevedore.") {
            broker_events += 1;
        } else if !sent.contains(id) {
            return Err(format!(
                "unknown event {id:?} ({event_type}) at offset {offset}"
            ));
        } else if !acked.contains_key(id) {
            ours_unacked += 1;
        }
    }
    let mut missing: Vec<(u64, &str)> = acked
        .iter()
        .filter(|(id, o)| seen.get(id.as_str()) != Some(o))
        .map(|(id, &o)| (o, id.as_str()))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(format!(
            "ACKNOWLEDGED EVENTS MISSING from the replay: {} of {}, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    Ok((log.len() as u64, ours_unacked, broker_events))
}

/// A broker stop: when it was signalled, and when the next broker had
/// printed its address (nothing it sends can arrive before that; it starts
/// `RESTART_PAUSE` after the stop, which leaves the stopped broker's last
/// requests time to arrive).
#[derive(Clone, Copy)]
struct Stop {
    at: Instant,
    next_ready: Instant,
}

impl Stop {
    /// Whether this stop lies between two copies of a request: the first
    /// arrived before the next broker existed, the second after the stop.
    fn between(&self, first: &Recorded, second: &Recorded) -> bool {
        first.received_at <= self.next_ready && second.received_at >= self.at
    }
}

/// Waits until every acknowledged event has reached, with a 2xx answer,
/// every endpoint whose filter matches it, then until `ListDeliveries`
/// lists it as delivered there. Returns the time it took.
async fn wait_delivered(
    addr: &str,
    eps: &[Ep],
    healthy: &Mixer,
    flaky: &Mixer,
    acked: &HashMap<String, u64>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + DRAIN_TIMEOUT;
    let expected = |spec: &EpSpec| -> HashMap<&str, u64> {
        acked
            .iter()
            .filter(|(id, _)| parse_id(id).is_some_and(|(_, seq)| spec.matches(seq)))
            .map(|(id, &o)| (id.as_str(), o))
            .collect()
    };
    let mut admin = AdminClient::new(connect(addr).await?);
    // 1. The receivers saw them, answered with success.
    loop {
        let mut missing = Vec::new();
        for m in [healthy, flaky] {
            let requests = m.rx.requests();
            let answers = m.answers();
            for ep in eps.iter().filter(|e| e.spec.flaky == m.flaky) {
                let path = ep.spec.path();
                let got: HashSet<&str> = requests
                    .iter()
                    .zip(&answers)
                    .filter(|(r, a)| r.path == path && a.is_none_or(|a| a.success()))
                    .filter_map(|(r, _)| r.header("webhook-id"))
                    .collect();
                let mut lost: Vec<(u64, &str)> = expected(ep.spec)
                    .into_iter()
                    .filter(|(id, _)| !got.contains(id))
                    .map(|(id, o)| (o, id))
                    .collect();
                if !lost.is_empty() {
                    lost.sort();
                    missing.push(format!(
                        "endpoint {} ({}): {} missing, lowest {:?}\n{}",
                        ep.spec.name,
                        ep.id,
                        lost.len(),
                        &lost[..lost.len().min(10)],
                        explain(&mut admin, ep, &lost).await
                    ));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "LOST DELIVERIES: {DRAIN_TIMEOUT:?} after the load stopped, acknowledged events \
                 had not reached a matching endpoint ({} acknowledged):\n{}",
                acked.len(),
                missing.join("")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 2. The broker says so too.
    for ep in eps {
        let want = expected(ep.spec);
        loop {
            let delivered = list_deliveries(&mut admin, &ep.id, DeliveryState::Delivered).await?;
            let listed: HashMap<u64, &str> = delivered
                .iter()
                .map(|d| (d.offset, d.event_id.as_str()))
                .collect();
            let mut missing: Vec<(u64, &str)> = want
                .iter()
                .filter(|(_, o)| !listed.contains_key(o))
                .map(|(id, &o)| (o, *id))
                .collect();
            if let Some((o, id)) = want
                .iter()
                .map(|(id, &o)| (o, *id))
                .find(|(o, id)| listed.get(o).is_some_and(|l| l != id))
            {
                return Err(format!(
                    "endpoint {}: ListDeliveries lists offset {o} as {:?}, acknowledged as {id:?}",
                    ep.spec.name, listed[&o]
                ));
            }
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                missing.sort();
                return Err(format!(
                    "endpoint {} ({}): the receiver answered every acknowledged event with a 2xx, \
                     but ListDeliveries(DELIVERED) still lacks {} of them, lowest {:?}\n{}",
                    ep.spec.name,
                    ep.id,
                    missing.len(),
                    &missing[..missing.len().min(10)],
                    explain(&mut admin, ep, &missing).await
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(started.elapsed())
}

/// What the broker says about some deliveries (for a failure message).
async fn explain(admin: &mut AdminClient<Channel>, ep: &Ep, missing: &[(u64, &str)]) -> String {
    let all = match list_deliveries(admin, &ep.id, DeliveryState::Unspecified).await {
        Ok(d) => d,
        Err(e) => return format!("    (ListDeliveries failed: {e})\n"),
    };
    let by_offset: HashMap<u64, &pb::Delivery> = all.iter().map(|d| (d.offset, d)).collect();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for d in &all {
        *states.entry(format!("{:?}", d.state())).or_default() += 1;
    }
    let mut out = format!("    delivery records by state: {states:?}\n");
    for (offset, id) in missing.iter().take(3) {
        let attempts = tokio::time::timeout(
            CALL_TIMEOUT,
            admin.list_attempts(ListAttemptsRequest {
                endpoint_id: ep.id.clone(),
                offset: *offset,
            }),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|s| status_text(&s)))
        .map(|r| r.into_inner().attempts);
        out.push_str(&format!(
            "    offset {offset} ({id}): record {:?}; attempts {attempts:?}\n",
            by_offset.get(offset)
        ));
    }
    out
}

/// Checks every request the receivers got and classifies every copy after
/// the first. Returns the report, or the broken guarantees.
fn check_requests(
    eps: &[Ep],
    mixers: [&Mixer; 2],
    acked: &HashMap<String, u64>,
    sent: &HashSet<String>,
    stops: &[Stop],
    started: Instant,
) -> Result<String, String> {
    let mut errors = Vec::new();
    let mut report = String::new();
    for m in mixers {
        let requests = m.rx.requests();
        let answers = m.answers();
        let mut bodies: HashMap<(&str, &str), &Bytes> = HashMap::new();
        // Per endpoint and id: its requests, in order of arrival.
        let mut copies: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            let Some(ep) = eps
                .iter()
                .find(|ep| ep.spec.flaky == m.flaky && r.path == ep.spec.path())
            else {
                errors.push(format!("request to an unknown path: {r:?}"));
                continue;
            };
            let name = ep.spec.name;
            let Some(id) = r.header("webhook-id") else {
                errors.push(format!(
                    "endpoint {name}: request without webhook-id: {r:?}"
                ));
                continue;
            };
            if let Err(e) = verify_signature(&ep.secret, r) {
                errors.push(format!("endpoint {name}: {id:?} does not verify: {e}"));
            }
            let Some((_, seq)) = parse_id(id).filter(|_| sent.contains(id)) else {
                errors.push(format!(
                    "endpoint {name}: {id:?} was never published: {r:?}"
                ));
                continue;
            };
            if !ep.spec.matches(seq) {
                errors.push(format!(
                    "endpoint {name}: got {id:?} ({}, lane {}), which its filters exclude",
                    event_type(seq),
                    lane(seq)
                ));
            }
            if let Err(e) = check_content(id, seq, r) {
                errors.push(format!("endpoint {name}: {e}"));
            }
            match bodies.entry((name, id)) {
                Entry::Vacant(e) => {
                    e.insert(&r.body);
                }
                Entry::Occupied(e) if **e.get() != r.body => errors.push(format!(
                    "endpoint {name}: copies of {id:?} differ:\n  first: {}\n  now:   {}",
                    String::from_utf8_lossy(e.get()),
                    r.body_text()
                )),
                Entry::Occupied(_) => {}
            }
            copies.entry((name, id)).or_default().push(i);
        }
        for ep in eps.iter().filter(|e| e.spec.flaky == m.flaky) {
            let name = ep.spec.name;
            let (mut n_requests, mut ids, mut unacked) = (0, 0, 0);
            let (mut after_failure, mut across_stop, mut unknown) = (0, 0, 0);
            let mut ages: Vec<Duration> = Vec::new();
            for ((_, id), idx) in copies.iter().filter(|((n, _), _)| *n == name) {
                ids += 1;
                n_requests += idx.len();
                if !acked.contains_key(*id) {
                    unacked += 1;
                }
                for w in idx.windows(2) {
                    let (first, second) = (&requests[w[0]], &requests[w[1]]);
                    match answers.get(w[0]).copied().flatten() {
                        None => unknown += 1,
                        Some(a) if !a.success() => after_failure += 1,
                        Some(a) => match stops.iter().find(|s| s.between(first, second)) {
                            Some(stop) => {
                                across_stop += 1;
                                // How long before the stop the 2xx copy
                                // arrived: a delivery is in flight until
                                // its outcome is committed (milliseconds).
                                let age = stop.at.saturating_duration_since(first.received_at);
                                ages.push(age);
                                if age > IN_FLIGHT_AT_MOST {
                                    errors.push(format!(
                                        "DUPLICATE DELIVERY: endpoint {name} got {id:?} again at \
                                         +{:?} although it had answered {a:?} (a 2xx) to the copy \
                                         at +{:?}, {age:?} before the broker stop at +{:?}: not in \
                                         flight at the stop, so its outcome was not recorded",
                                        second.received_at - started,
                                        first.received_at - started,
                                        stop.at - started,
                                    ));
                                }
                            }
                            None => errors.push(format!(
                                "DUPLICATE DELIVERY: endpoint {name} got {id:?} again at +{:?} \
                                 after answering {a:?} (a 2xx) to the copy at +{:?}, with no \
                                 broker stop in between (stops at {:?})",
                                second.received_at - started,
                                first.received_at - started,
                                stops
                                    .iter()
                                    .map(|s| (s.at - started, s.next_ready - started))
                                    .collect::<Vec<_>>()
                            )),
                        },
                    }
                }
            }
            report.push_str(&format!(
                "  endpoint {name:5}: {n_requests} requests for {ids} events ({} acknowledged + \
                 {unacked} written but unacknowledged); {} copies after the first: \
                 {after_failure} retries after a 500 or reset, {across_stop} re-sent across a \
                 broker stop (2xx answered before the stop by: median {:?}, max {:?}){}\n",
                ids - unacked,
                n_requests - ids,
                {
                    ages.sort();
                    ages.get(ages.len() / 2).copied().unwrap_or_default()
                },
                ages.last().copied().unwrap_or_default(),
                if unknown > 0 {
                    format!(", {unknown} unclassified (the receiver's answer queue ran dry)")
                } else {
                    String::new()
                }
            ));
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        let n = errors.len();
        errors.truncate(20);
        Err(format!(
            "{n} bad webhook requests (first {}):\n{}",
            errors.len(),
            errors.join("\n")
        ))
    }
}

/// Waits until the consumer has processed every acknowledged event, and
/// acked each of them (or sent an `Ack` for it that a broker stop cut off,
/// which may have been applied). Returns how many were left in doubt.
async fn wait_processed(sh: &Shared, acked: &HashMap<String, u64>) -> Result<usize, String> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let (missing, unacked, in_doubt) = {
            let sub = sh.sub.lock().unwrap();
            for (id, o) in acked {
                if let Some(got) = sub.processed.get(o) {
                    if got != id {
                        return Err(format!(
                            "consumer {CONSUMER:?} got {got:?} at offset {o}, acknowledged as {id:?}"
                        ));
                    }
                }
            }
            let mut missing: Vec<u64> = acked
                .values()
                .filter(|o| !sub.processed.contains_key(o))
                .copied()
                .collect();
            missing.sort();
            let unacked = acked.values().filter(|o| !sub.acked.contains(o));
            let in_doubt = unacked.clone().filter(|o| sub.in_doubt.contains(o)).count();
            (missing, unacked.count() - in_doubt, in_doubt)
        };
        if missing.is_empty() && unacked == 0 {
            return Ok(in_doubt);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "consumer {CONSUMER:?}: {DRAIN_TIMEOUT:?} after the load stopped, {} acknowledged \
                 events were never processed (lowest {:?}) and {unacked} were processed but never \
                 acked (nor redelivered after an Ack a broker stop cut off)",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ the runs

/// Marks every broker as stopped when dropped.
struct Ending<'a>(&'a Shared);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.0.killed.store(u64::MAX, Ordering::SeqCst);
    }
}

/// How each broker of a run is stopped.
#[derive(Clone, Copy, PartialEq)]
enum How {
    /// `CYCLES` SIGKILLs.
    Kill,
    /// One SIGTERM; it must exit 0 within `shutdown_timeout`.
    Term,
}

/// Runs the load across stops of the broker, then every check.
async fn run_test(name: &str, how: How) {
    let seed = seed();
    println!("{name}: seed {seed} (rerun with STEVEDORE_CRASH_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().to_owned();
    let healthy = Mixer::start(false).await;
    let flaky = Mixer::start(true).await;
    let stop_mixing = Arc::new(AtomicBool::new(false));
    for m in [&healthy, &flaky] {
        m.top_up(&mut Rng::new(seed ^ 0x5555));
    }
    let mixing = tokio::spawn(mix(
        vec![healthy.clone(), flaky.clone()],
        stop_mixing.clone(),
        seed ^ 0xA5A5,
    ));
    let (addr_tx, addr_rx) = watch::channel(None);
    let sh = Shared::new(addr_rx);
    let generations = AtomicU64::new(0);

    let started = Instant::now();
    let body = run(
        seed,
        how,
        &logs,
        &healthy,
        &flaky,
        addr_tx,
        &sh,
        &generations,
        started,
    );
    let outcome = tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .unwrap_or_else(|_| Err(format!("{name} did not finish within {TEST_TIMEOUT:?}")));
    sh.stop.store(true, Ordering::SeqCst);
    sh.sub_stop.store(true, Ordering::SeqCst);
    stop_mixing.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(1), mixing).await;

    let gens = generations.load(Ordering::SeqCst);
    let mut failures = std::mem::take(&mut *sh.failures.lock().unwrap());
    for g in 1..=gens {
        if read_stderr(&logs, g).contains("panicked") {
            failures.push(format!("broker start #{g} panicked (see its stderr below)"));
        }
    }
    if outcome.is_err() || !failures.is_empty() {
        let kept = dir.keep();
        let mut msg = String::new();
        if let Err(e) = &outcome {
            msg.push_str(&format!("{e}\n"));
        }
        for f in &failures {
            msg.push_str(&format!("{f}\n"));
        }
        panic!(
            "{name} failed after {:.1}s (seed {seed}, data dir and broker stderr kept at {}):\n{msg}{}",
            started.elapsed().as_secs_f64(),
            kept.display(),
            all_stderr(&kept, gens)
        );
    }
    println!(
        "{name}: PASSED in {:.1}s, {gens} broker starts\n{}",
        started.elapsed().as_secs_f64(),
        outcome.unwrap()
    );
}

#[allow(clippy::too_many_arguments)]
async fn run(
    seed: u64,
    how: How,
    logs: &Path,
    healthy: &Mixer,
    flaky: &Mixer,
    addr_tx: watch::Sender<Option<(u64, String)>>,
    sh: &Arc<Shared>,
    generations: &AtomicU64,
    started: Instant,
) -> Result<String, String> {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let data_dir = logs.join("data");
    let shutdown_timeout = format!("{SHUTDOWN_TIMEOUT_SECS}s");
    let mut env: Vec<(&str, &str)> = BROKER_ENV.to_vec();
    if how == How::Term {
        env.push(("STEVEDORE_SHUTDOWN_TIMEOUT", &shutdown_timeout));
    }
    let mut generation = 1u64;
    generations.store(generation, Ordering::SeqCst);
    let mut server: Server = start_server_with_env(&data_dir, logs, generation, &env).await?;
    // Dropped before `server` (which kills the broker): from then on a
    // failed call is no failure.
    let _ending = Ending(sh);
    let eps = create_endpoints(&server.addr, &healthy.rx.url, &flaky.rx.url).await?;
    addr_tx.send_replace(Some((generation, server.addr.clone())));
    let mut tasks: Vec<_> = (0..PUBLISHERS)
        .map(|t| tokio::spawn(publisher(t, sh.clone(), seed.wrapping_add(t as u64 * 7919))))
        .collect();
    let sub_task = tokio::spawn(subscriber(sh.clone(), seed ^ 0x3C3C));

    let mut stops: Vec<Stop> = Vec::new();
    let mut reads = 0usize;
    let mut term_report = String::new();
    let cycles = if how == How::Kill { CYCLES } else { 1 };
    for cycle in 1..=cycles {
        let load = match how {
            How::Kill => Duration::from_millis(rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1)),
            How::Term => TERM_AFTER,
        };
        tokio::time::sleep(load).await;
        sh.killed.store(generation, Ordering::SeqCst);
        let acked_at_stop = sh.ledger.lock().unwrap().acked.len();
        let in_flight = healthy.rx.in_flight() + flaky.rx.in_flight();
        let stopped_at = Instant::now();
        match how {
            How::Kill => server.kill(),
            How::Term => {
                let pid = server.pid().to_string();
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .map_err(|e| format!("running kill -TERM {pid}: {e}"))?;
                if !status.success() {
                    return Err(format!("kill -TERM {pid} failed: {status}"));
                }
                let limit = Duration::from_secs(SHUTDOWN_TIMEOUT_SECS);
                // Dropped there, which SIGKILLs it if it is still running.
                let exit = tokio::task::spawn_blocking(move || {
                    server.wait_exit(limit + Duration::from_secs(3))
                })
                .await
                .map_err(|e| format!("waiting for the broker: {e}"))?;
                let took = stopped_at.elapsed();
                match exit {
                    Some(status) if status.success() && took <= limit + Duration::from_secs(1) => {}
                    Some(status) => {
                        return Err(format!(
                            "GRACEFUL SHUTDOWN: the broker exited with {status} {took:?} after \
                             SIGTERM (shutdown_timeout {limit:?}; expected exit 0 within it)"
                        ))
                    }
                    None => {
                        return Err(format!(
                            "GRACEFUL SHUTDOWN: the broker was still running {took:?} after \
                             SIGTERM (shutdown_timeout {limit:?})"
                        ))
                    }
                }
                let acked_now = sh.ledger.lock().unwrap().acked.len();
                term_report = format!(
                    "  SIGTERM after {load:?} of load: exit 0 after {took:?} (shutdown_timeout \
                     {limit:?}); {acked_at_stop} events acknowledged at the signal, {} more \
                     acknowledged during the shutdown\n",
                    acked_now - acked_at_stop
                );
            }
        }
        // Publishers must not reach the next broker before it is checked.
        addr_tx.send_replace(None);
        // Requests the stopped broker wrote before it died can reach a
        // receiver a little after the stop; the pause keeps them apart
        // from the next broker's (see `Stop::between`).
        tokio::time::sleep(RESTART_PAUSE).await;
        generation += 1;
        generations.store(generation, Ordering::SeqCst);
        server = start_server_with_env(&data_dir, logs, generation, &env).await?;
        let next_ready = Instant::now();
        stops.push(Stop {
            at: stopped_at,
            next_ready,
        });

        // Every event acknowledged so far, read back before any new load.
        let batch: Vec<(String, u64)> = sh.ledger.lock().unwrap().order.clone();
        let reading = Instant::now();
        reads += batch.len();
        check_acked(&server.addr, &batch)
            .await
            .map_err(|e| format!("after restart #{cycle} (start #{generation}): {e}"))?;
        println!(
            "cycle {cycle}: stopped start #{} after {load:?} ({acked_at_stop} events acknowledged, \
             {in_flight} webhook requests being answered); start #{generation} ready {:?} after the stop; \
             all {} acknowledged events read back in {:?}",
            generation - 1,
            next_ready - stopped_at,
            batch.len(),
            reading.elapsed()
        );
        addr_tx.send_replace(Some((generation, server.addr.clone())));
    }

    // A little more load, then the publishers stop and the rest drains.
    tokio::time::sleep(FINAL_LOAD).await;
    sh.stop.store(true, Ordering::SeqCst);
    for (t, task) in tasks.drain(..).enumerate() {
        match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(2), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("publisher {t} panicked: {e}")),
            Err(_) => return Err(format!("publisher {t} did not stop in time")),
        }
    }
    healthy.calm.store(true, Ordering::SeqCst);
    flaky.calm.store(true, Ordering::SeqCst);
    let load_stopped = Instant::now();
    let (acked, sent) = {
        let l = sh.ledger.lock().unwrap();
        (l.acked.clone(), l.sent.clone())
    };
    if acked.is_empty() {
        return Err("no event was acknowledged".into());
    }
    let (log_len, unacked_in_log, broker_events) = check_log(&server.addr, &acked, &sent)
        .await
        .map_err(|e| format!("at the end: {e}"))?;
    let drained = wait_delivered(&server.addr, &eps, healthy, flaky, &acked).await?;
    let in_doubt = wait_processed(sh, &acked).await?;
    let processed_in = load_stopped.elapsed();
    sh.sub_stop.store(true, Ordering::SeqCst);
    match tokio::time::timeout(Duration::from_secs(2), sub_task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("the subscriber panicked: {e}")),
        Err(_) => return Err("the subscriber did not stop in time".into()),
    }
    let mut dead = Vec::new();
    {
        let mut admin = AdminClient::new(connect(&server.addr).await?);
        for ep in &eps {
            let d = list_deliveries(&mut admin, &ep.id, DeliveryState::Dead).await?;
            if let Some(d) = d.iter().find(|d| acked.contains_key(&d.event_id)) {
                return Err(format!(
                    "endpoint {}: acknowledged {:?} is dead-lettered although it was delivered: {d:?}",
                    ep.spec.name, d.event_id
                ));
            }
            dead.push(d.len());
        }
    }
    let requests = check_requests(&eps, [healthy, flaky], &acked, &sent, &stops, started)?;
    drop(server);

    let calls: Vec<u64> = sh.calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let sub = sh.sub.lock().unwrap();
    let restart_times: Vec<Duration> = stops.iter().map(|s| s.next_ready - s.at).collect();
    Ok(format!(
        "{term_report}  {} stops (restart to ready: min {:?}, max {:?}); publish calls \
         unary/batch/stream {}/{}/{} ({} calls failed by stops); {} events acknowledged of {} sent; \
         log of {log_len} events ({unacked_in_log} written but unacknowledged, {broker_events} the \
         broker's own); {reads} GetEvent read-backs after restarts\n\
         {requests}  dead-lettered (none acknowledged): {dead:?}; every acknowledged event \
         delivered to every matching endpoint {:.1}s after the load stopped\n  \
         consumer {CONSUMER:?}: {} messages on {} streams ({} redelivered, {} again after their \
         ack on the same stream; {} offsets nacked, {} acked after their ack wait); {} fresh streams after restarts brought back none of the {} \
         offsets acked before them; all acknowledged events processed {:.1}s after the load \
         stopped, and acked ({in_doubt} by an Ack that a stop cut off and that the broker had \
         applied: they never came back)",
        stops.len(),
        restart_times.iter().min().unwrap(),
        restart_times.iter().max().unwrap(),
        calls[0],
        calls[1],
        calls[2],
        sh.crash_errors.load(Ordering::Relaxed),
        acked.len(),
        sent.len(),
        drained.as_secs_f64(),
        sub.messages,
        sub.streams,
        sub.redelivered,
        sub.again_after_ack,
        sub.nacked,
        sub.late_acks,
        sub.checked_streams,
        sub.checked_acks,
        processed_in.as_secs_f64(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkill_cycles_under_mixed_load() {
    run_test("twenty_sigkill_cycles_under_mixed_load", How::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_loses_nothing() {
    run_test("graceful_shutdown_under_load_loses_nothing", How::Term).await;
}
