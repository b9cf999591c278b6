//! Crash test for webhook delivery (at least once): every acknowledged event
//! reaches every endpoint, signed, across SIGKILLs of the broker.
//!
//! Runs the real binary on one data directory with two endpoints pointing at
//! one in-process receiver (`?ep=a`, `?ep=b`) that answers most requests at
//! once, some after a short delay (so requests are in flight at a kill) and
//! some with 500 (so deliveries wait on the retry schedule at a kill).
//! Publishers keep publishing while the broker is killed with SIGKILL and
//! restarted on the same data directory several times. Then every
//! acknowledged event must reach each endpoint at least once, every request
//! must verify with its endpoint's secret and carry the event's id, all
//! copies of one event to one endpoint must have the same body, and
//! `ListDeliveries` must list every acknowledged offset as delivered.
//!
//! Reproduce a run's choices with `STEVEDORE_CRASH_SEED=<seed printed>`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost_types::Duration as PbDuration;
use stevedore::pb::{
    self, admin_client::AdminClient, event::Payload, publisher_client::PublisherClient,
    CreateEndpointRequest, DeliveryState, Endpoint, ListAttemptsRequest, ListDeliveriesRequest,
    PublishBatchRequest, PublishRequest, PublishResponse,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::{
    crash::{all_stderr, connect, read_stderr, start_server_with_env, status_text, Rng, Server},
    receiver::{verify_signature, Behavior, Receiver, Recorded},
};

/// The endpoints, by the `ep` query parameter of their URLs.
const ENDPOINTS: [&str; 2] = ["a", "b"];
/// Publisher tasks.
const PUBLISHERS: usize = 3;
/// SIGKILL/restart cycles.
const KILLS: usize = 5;
/// Load between a (re)start and its kill, in milliseconds.
const KILL_AFTER_MS: (u64, u64) = (200, 600);
/// Load on the last server before the publishers stop.
const FINAL_LOAD: Duration = Duration::from_millis(400);
/// Delay before each attempt (the endpoints' retry schedule), in ms.
const SCHEDULE_MS: [u64; 6] = [0, 200, 200, 200, 200, 200];
/// The endpoints' per-attempt timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// One gRPC call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Every acknowledged event reaching every endpoint, after the last restart.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// `ListDeliveries` catching up with what the receiver saw.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(58);
/// The broker's environment (on top of crash.rs's `STEVEDORE_LOG=warn`).
const BROKER_ENV: [(&str, &str); 3] = [
    ("STEVEDORE_ALLOW_HTTP", "true"),
    ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
    ("STEVEDORE_LOG", "warn"),
];
/// The custom event type of the even-numbered events.
const CUSTOM_TYPE: &str = "crash.delivery";

fn ms(n: u64) -> PbDuration {
    PbDuration {
        seconds: (n / 1000) as i64,
        nanos: ((n % 1000) * 1_000_000) as i32,
    }
}

// ------------------------------------------------------------------ events

/// Event `cd{task}-{seq}`: even `seq` a custom event whose body names its
/// id, odd `seq` a pick confirmation (ordering key `SO-{task}-{seq % 8}`,
/// so keys are shared) whose `waveId` is its id.
fn make_event(task: usize, seq: u64) -> pb::Event {
    let id = format!("cd{task}-{seq}");
    let payload = if seq.is_multiple_of(2) {
        let mut fields = BTreeMap::new();
        fields.insert("eventId".to_owned(), string(&id));
        fields.insert("task".to_owned(), number(task as f64));
        fields.insert("seq".to_owned(), number(seq as f64));
        Payload::Custom(pb::CustomEvent {
            r#type: CUSTOM_TYPE.into(),
            data: Some(prost_types::Struct { fields }),
        })
    } else {
        Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "crash-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            sales_order_id: format!("SO-{task}-{}", seq % 8),
            wave_id: id.clone(),
            status: pb::PickStatus::Complete as i32,
            ..Default::default()
        })
    };
    pb::Event {
        id,
        payload: Some(payload),
        ..Default::default()
    }
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

/// Checks that a request's `x-jasci-event` and body belong to event `id`.
fn check_content(id: &str, r: &Recorded) -> Result<(), String> {
    let (task, seq) = id
        .strip_prefix("cd")
        .and_then(|s| s.split_once('-'))
        .and_then(|(t, s)| Some((t.parse::<usize>().ok()?, s.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("webhook-id {id:?} is not one of ours"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("body of {id:?} is not JSON ({e})"))?;
    let (event_type, ok) = if seq % 2 == 0 {
        (
            CUSTOM_TYPE,
            body["eventId"] == id && body["task"] == task && body["seq"] == seq,
        )
    } else {
        (
            "pick.confirmed",
            body["waveId"] == id && body["salesOrderId"] == format!("SO-{task}-{}", seq % 8),
        )
    };
    if r.header("x-jasci-event") != Some(event_type) {
        return Err(format!(
            "{id:?}: x-jasci-event {:?}, expected {event_type:?}",
            r.header("x-jasci-event")
        ));
    }
    if !ok {
        return Err(format!(
            "{id:?}: the body is another event's: {}",
            r.body_text()
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------ receiver answers

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    /// 200 after this many milliseconds.
    Slow(u64),
    Fail,
}

impl Answer {
    fn behavior(self) -> Behavior {
        match self {
            Answer::Ok => Behavior::Status(200),
            Answer::Slow(ms) => Behavior::Delay(Duration::from_millis(ms), 200),
            Answer::Fail => Behavior::Status(500),
        }
    }

    fn success(self) -> bool {
        !matches!(self, Answer::Fail)
    }
}

/// Keeps the receiver's queue of behaviours topped up with a random mix, and
/// remembers it: the receiver pops one behaviour per recorded request, in
/// order of arrival, so request `i` got `pushed[i]` (as long as the queue
/// never ran dry, which [`Mixer::defaults_used`] checks).
struct Mixer {
    pushed: Mutex<Vec<Answer>>,
    /// No more 500s (the drain phase).
    calm: AtomicBool,
    stop: AtomicBool,
}

const QUEUE_LOW: usize = 256;
const QUEUE_HIGH: usize = 512;

impl Mixer {
    fn top_up(&self, rx: &Receiver, rng: &mut Rng) {
        let queued = rx.queued();
        if queued >= QUEUE_LOW {
            return;
        }
        let calm = self.calm.load(Ordering::SeqCst);
        let mut pushed = self.pushed.lock().unwrap();
        for _ in queued..QUEUE_HIGH {
            let roll = rng.next() % 100;
            let answer = match roll {
                0..=59 => Answer::Ok,
                60..=87 => Answer::Slow(rng.range(20, 50)),
                _ if calm => Answer::Ok,
                _ => Answer::Fail,
            };
            rx.respond(answer.behavior());
            pushed.push(answer);
        }
    }

    /// Requests that got the receiver's default instead of a queued answer.
    fn defaults_used(&self, rx: &Receiver, recorded: usize) -> usize {
        let pushed = self.pushed.lock().unwrap().len();
        recorded.saturating_sub(pushed - rx.queued())
    }
}

async fn mix(rx: Arc<Receiver>, mixer: Arc<Mixer>, seed: u64) {
    let mut rng = Rng::new(seed);
    while !mixer.stop.load(Ordering::SeqCst) {
        mixer.top_up(&rx, &mut rng);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ------------------------------------------------------------------ publishers

#[derive(Default)]
struct Ledger {
    /// Acknowledged id → offset.
    acked: HashMap<String, u64>,
    by_offset: HashMap<u64, String>,
    /// Every id ever sent (acknowledged or not).
    sent: HashSet<String>,
}

struct Shared {
    /// `(generation, address)` of the running broker.
    addr: watch::Receiver<Option<(u64, String)>>,
    /// Highest generation that was sent SIGKILL (stored before the kill).
    killed: AtomicU64,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
    /// Broken guarantees and failures on a live broker.
    failures: Mutex<Vec<String>>,
    /// Failed calls explained by a kill.
    crash_errors: AtomicU64,
    calls: AtomicU64,
}

impl Shared {
    fn fail(&self, msg: String) {
        eprintln!("crash delivery test failure: {msg}");
        self.failures.lock().unwrap().push(msg);
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
            }
        }
        for e in errors {
            self.fail(e);
        }
    }
}

async fn publisher(task: usize, sh: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut addr_rx = sh.addr.clone();
    let mut seq = 0u64;
    let mut failed_gen = 0u64;
    'servers: loop {
        // The next broker after the one that failed us.
        let (generation, addr) = loop {
            if sh.stop.load(Ordering::SeqCst) {
                break 'servers;
            }
            if let Some((g, a)) = addr_rx.borrow_and_update().clone() {
                if g > failed_gen {
                    break (g, a);
                }
            }
            match tokio::time::timeout(Duration::from_millis(50), addr_rx.changed()).await {
                Ok(Err(_)) => break 'servers, // the coordinator is gone
                _ => continue,
            }
        };
        let failure = |sh: &Shared, what: String| {
            if generation > sh.killed.load(Ordering::SeqCst) {
                sh.fail(format!(
                    "publisher {task}: {what} on live broker start #{generation}"
                ));
            } else {
                sh.crash_errors.fetch_add(1, Ordering::Relaxed);
            }
        };
        let mut client = match connect(&addr).await {
            Ok(c) => PublisherClient::new(c),
            Err(e) => {
                failure(&sh, e);
                failed_gen = generation;
                continue;
            }
        };
        while !sh.stop.load(Ordering::SeqCst) {
            let n = if rng.next().is_multiple_of(2) {
                1
            } else {
                rng.range(2, 10) as usize
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
            sh.calls.fetch_add(1, Ordering::Relaxed);
            let result =
                match tokio::time::timeout(CALL_TIMEOUT, publish(&mut client, &events)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("publish call timed out after {CALL_TIMEOUT:?}")),
                };
            match result {
                Ok(acks) if acks.len() == events.len() => sh.record(&events, &acks, generation),
                Ok(acks) => {
                    sh.fail(format!(
                        "start #{generation}: {} acks for {} events",
                        acks.len(),
                        events.len()
                    ));
                    failed_gen = generation;
                    continue 'servers;
                }
                Err(e) => {
                    failure(&sh, e);
                    failed_gen = generation;
                    continue 'servers;
                }
            }
        }
        break;
    }
}

async fn publish(
    client: &mut PublisherClient<Channel>,
    events: &[pb::Event],
) -> Result<Vec<PublishResponse>, String> {
    if let [event] = events {
        let r = client
            .publish(PublishRequest {
                event: Some(event.clone()),
            })
            .await
            .map_err(|s| format!("Publish: {}", status_text(&s)))?;
        Ok(vec![r.into_inner()])
    } else {
        let r = client
            .publish_batch(PublishBatchRequest {
                events: events.to_vec(),
            })
            .await
            .map_err(|s| format!("PublishBatch: {}", status_text(&s)))?;
        Ok(r.into_inner().results)
    }
}

// ------------------------------------------------------------------ admin

struct Ep {
    name: &'static str,
    id: String,
    secret: String,
}

async fn create_endpoint(
    admin: &mut AdminClient<Channel>,
    url: &str,
    name: &'static str,
) -> Result<Ep, String> {
    let endpoint = Endpoint {
        url: format!("{url}?ep={name}"),
        description: format!("crash delivery test endpoint {name}"),
        retry_schedule: SCHEDULE_MS.iter().map(|&n| ms(n)).collect(),
        timeout: Some(ms(ATTEMPT_TIMEOUT.as_millis() as u64)),
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
    .map_err(|s| format!("CreateEndpoint: {}", status_text(&s)))?
    .into_inner();
    let id = r.endpoint.map(|e| e.id).unwrap_or_default();
    if id.is_empty() || !r.secret.starts_with("whsec_") {
        return Err(format!(
            "CreateEndpoint returned id {id:?} and a secret without whsec_"
        ));
    }
    Ok(Ep {
        name,
        id,
        secret: r.secret,
    })
}

/// Every delivery record of an endpoint in `state` (all pages).
pub(crate) async fn list_deliveries(
    admin: &mut AdminClient<Channel>,
    endpoint_id: &str,
    state: DeliveryState,
) -> Result<Vec<pb::Delivery>, String> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    for _ in 0..1000 {
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            admin.list_deliveries(ListDeliveriesRequest {
                endpoint_id: endpoint_id.to_owned(),
                state: state as i32,
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| format!("ListDeliveries timed out after {CALL_TIMEOUT:?}"))?
        .map_err(|s| {
            format!(
                "ListDeliveries({endpoint_id}, {state:?}): {}",
                status_text(&s)
            )
        })?
        .into_inner();
        out.extend(r.deliveries);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = r.next_page_token;
    }
    Err(format!(
        "ListDeliveries({endpoint_id}): more than 1000 pages"
    ))
}

/// What the broker says about deliveries the receiver never saw.
async fn explain_missing(
    admin: &mut AdminClient<Channel>,
    ep: &Ep,
    missing: &[(u64, String)],
    rx: &Receiver,
) -> String {
    let mut out = String::new();
    let all = match list_deliveries(admin, &ep.id, DeliveryState::Unspecified).await {
        Ok(d) => d,
        Err(e) => return format!("    (ListDeliveries failed: {e})\n"),
    };
    let by_offset: HashMap<u64, &pb::Delivery> = all.iter().map(|d| (d.offset, d)).collect();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for d in &all {
        *states.entry(format!("{:?}", d.state())).or_default() += 1;
    }
    out.push_str(&format!("    delivery records by state: {states:?}\n"));
    let requests = rx.requests();
    for (offset, id) in missing.iter().take(10) {
        let other: Vec<&str> = requests
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id.as_str()))
            .map(|r| r.path.as_str())
            .collect();
        out.push_str(&format!(
            "    offset {offset} ({id}): record {:?}; requests for this id at any endpoint: {other:?}\n",
            by_offset.get(offset)
        ));
    }
    for (offset, _) in missing.iter().take(3) {
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
        out.push_str(&format!("    attempts of offset {offset}: {attempts:?}\n"));
    }
    out
}

// ------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_sigkill() {
    let seed = std::env::var("STEVEDORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash delivery test seed: {seed} (rerun with STEVEDORE_CRASH_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let logs = dir.path().to_owned();

    let rx = Arc::new(Receiver::start().await);
    let mixer = Arc::new(Mixer {
        pushed: Mutex::new(Vec::new()),
        calm: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    mixer.top_up(&rx, &mut Rng::new(seed ^ 0x5555));
    let mixing = tokio::spawn(mix(rx.clone(), mixer.clone(), seed ^ 0xA5A5));

    let (addr_tx, addr_rx) = watch::channel(None);
    let sh = Arc::new(Shared {
        addr: addr_rx,
        killed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        failures: Mutex::new(Vec::new()),
        crash_errors: AtomicU64::new(0),
        calls: AtomicU64::new(0),
    });
    let generations = AtomicU64::new(0);

    let started = Instant::now();
    let body = run(
        seed,
        &data_dir,
        &logs,
        &rx,
        &mixer,
        addr_tx,
        sh.clone(),
        &generations,
    );
    let outcome = match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the crash delivery test did not finish within {TEST_TIMEOUT:?}"
        )),
    };
    sh.stop.store(true, Ordering::SeqCst);
    mixer.stop.store(true, Ordering::SeqCst);
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
            "crash delivery test failed after {:.1}s (seed {seed}, data dir and broker stderr kept at {}):\n{msg}{}",
            started.elapsed().as_secs_f64(),
            kept.display(),
            all_stderr(&kept, gens)
        );
    }
    let log_lines: Vec<String> = (1..=gens)
        .flat_map(|g| {
            read_stderr(&logs, g)
                .lines()
                .map(|l| format!("  [start #{g}] {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    let warnings = log_lines.len();
    println!(
        "crash delivery test: passed in {:.1}s; {KILLS} SIGKILLs, {gens} starts, {} publish calls \
         ({} failed by kills), {warnings} broker log lines (warn and above)\n{}",
        started.elapsed().as_secs_f64(),
        sh.calls.load(Ordering::Relaxed),
        sh.crash_errors.load(Ordering::Relaxed),
        outcome.unwrap(),
    );
    for line in log_lines.iter().take(10) {
        println!("{line}");
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    seed: u64,
    data_dir: &Path,
    logs: &Path,
    rx: &Receiver,
    mixer: &Mixer,
    addr_tx: watch::Sender<Option<(u64, String)>>,
    sh: Arc<Shared>,
    generations: &AtomicU64,
) -> Result<String, String> {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let mut generation = 1u64;
    generations.store(generation, Ordering::SeqCst);
    let mut server: Server = start_server_with_env(data_dir, logs, generation, &BROKER_ENV).await?;

    let mut admin = AdminClient::new(connect(&server.addr).await?);
    let mut endpoints = Vec::new();
    for name in ENDPOINTS {
        endpoints.push(create_endpoint(&mut admin, &rx.url, name).await?);
    }
    addr_tx.send_replace(Some((generation, server.addr.clone())));
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|t| tokio::spawn(publisher(t, sh.clone(), seed.wrapping_add(t as u64 * 7919))))
        .collect();

    // Kills at random moments under load; each restart on the same data.
    let mut kill_times = Vec::new();
    for kill in 1..=KILLS {
        tokio::time::sleep(Duration::from_millis(
            rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1),
        ))
        .await;
        sh.killed.store(generation, Ordering::SeqCst);
        server.kill();
        kill_times.push(Instant::now());
        let acked = sh.ledger.lock().unwrap().acked.len();
        let received = rx.count();
        let in_flight = rx.in_flight();
        generation += 1;
        generations.store(generation, Ordering::SeqCst);
        server = start_server_with_env(data_dir, logs, generation, &BROKER_ENV).await?;
        println!(
            "kill {kill}: SIGKILLed start #{} with {acked} events acknowledged, {received} requests \
             received ({in_flight} being answered); restarted as start #{generation} on {}",
            generation - 1,
            server.addr
        );
        addr_tx.send_replace(Some((generation, server.addr.clone())));
    }
    let last_restart = Instant::now();

    // A little more load, then the publishers stop.
    tokio::time::sleep(FINAL_LOAD).await;
    sh.stop.store(true, Ordering::SeqCst);
    for (t, task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(2), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("publisher {t} panicked: {e}")),
            Err(_) => return Err(format!("publisher {t} did not stop in time")),
        }
    }
    // No more 500s: what is left only has to drain.
    mixer.calm.store(true, Ordering::SeqCst);
    let (acked, sent) = {
        let l = sh.ledger.lock().unwrap();
        (l.acked.clone(), l.sent.clone())
    };
    if acked.is_empty() {
        return Err("no event was acknowledged".to_owned());
    }
    let publishing_stopped = Instant::now();
    println!(
        "publishing stopped: {} events acknowledged, {} sent; waiting for deliveries",
        acked.len(),
        sent.len()
    );

    // 1. Every acknowledged event reaches every endpoint.
    let mut admin = AdminClient::new(connect(&server.addr).await?);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let requests = rx.requests();
        let mut missing: Vec<(&Ep, Vec<(u64, String)>)> = Vec::new();
        for ep in &endpoints {
            let path = format!("{}?ep={}", crate::receiver::HOOK_PATH, ep.name);
            let got: HashSet<&str> = requests
                .iter()
                .filter(|r| r.path == path)
                .filter_map(|r| r.header("webhook-id"))
                .collect();
            let mut m: Vec<(u64, String)> = acked
                .iter()
                .filter(|(id, _)| !got.contains(id.as_str()))
                .map(|(id, &o)| (o, id.clone()))
                .collect();
            if !m.is_empty() {
                m.sort();
                missing.push((ep, m));
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let mut msg = format!(
                "LOST DELIVERIES: {DRAIN_TIMEOUT:?} after the publishers stopped, acknowledged events \
                 never reached an endpoint ({} acknowledged):\n",
                acked.len()
            );
            for (ep, m) in &missing {
                msg.push_str(&format!(
                    "  endpoint {} ({}): {} missing, lowest offsets {:?}\n",
                    ep.name,
                    ep.id,
                    m.len(),
                    m.iter().take(10).collect::<Vec<_>>()
                ));
                msg.push_str(&explain_missing(&mut admin, ep, m, rx).await);
            }
            return Err(msg);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = publishing_stopped.elapsed();

    // 2. `ListDeliveries` lists every acknowledged offset as delivered.
    let deadline = Instant::now() + LIST_TIMEOUT;
    let mut dead_counts = Vec::new();
    for ep in &endpoints {
        loop {
            let delivered = list_deliveries(&mut admin, &ep.id, DeliveryState::Delivered).await?;
            let listed: HashMap<u64, &str> = delivered
                .iter()
                .map(|d| (d.offset, d.event_id.as_str()))
                .collect();
            for (&offset, id) in &listed {
                if let Some(ours) = acked.get(*id) {
                    if *ours != offset {
                        return Err(format!(
                            "endpoint {}: ListDeliveries lists {id:?} as delivered at offset {offset}, \
                             but it was acknowledged at offset {ours}",
                            ep.name
                        ));
                    }
                }
            }
            let mut missing: Vec<(u64, &str)> = acked
                .iter()
                .filter(|(_, o)| !listed.contains_key(o))
                .map(|(id, &o)| (o, id.as_str()))
                .collect();
            if missing.is_empty() {
                let dead = list_deliveries(&mut admin, &ep.id, DeliveryState::Dead).await?;
                dead_counts.push(dead.len());
                break;
            }
            if Instant::now() > deadline {
                missing.sort();
                let m: Vec<(u64, String)> = missing
                    .iter()
                    .map(|(o, id)| (*o, (*id).to_owned()))
                    .collect();
                return Err(format!(
                    "endpoint {} ({}): the receiver got every acknowledged event, but after {LIST_TIMEOUT:?} \
                     ListDeliveries(DELIVERED) still lacks {} acknowledged offsets, lowest {:?}\n{}",
                    ep.name,
                    ep.id,
                    m.len(),
                    m.iter().take(10).collect::<Vec<_>>(),
                    explain_missing(&mut admin, ep, &m, rx).await
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // 3. Every request: its endpoint's signature, the event's id and body,
    //    the same bytes on every copy.
    let requests = rx.requests();
    let pushed = mixer.pushed.lock().unwrap().clone();
    let defaults_used = mixer.defaults_used(rx, requests.len());
    let mut bodies: HashMap<(&str, &str), &Bytes> = HashMap::new();
    // Per endpoint and id: the indexes of its requests, in order of arrival.
    let mut copies: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut errors = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let Some(ep) = endpoints
            .iter()
            .find(|ep| r.path == format!("{}?ep={}", crate::receiver::HOOK_PATH, ep.name))
        else {
            errors.push(format!("request to an unknown path: {r:?}"));
            continue;
        };
        let Some(id) = r.header("webhook-id") else {
            errors.push(format!(
                "endpoint {}: request without webhook-id: {r:?}",
                ep.name
            ));
            continue;
        };
        if let Err(e) = verify_signature(&ep.secret, r) {
            errors.push(format!(
                "endpoint {}: {id:?} does not verify with the endpoint's secret: {e}",
                ep.name
            ));
        }
        if !sent.contains(id) {
            errors.push(format!(
                "endpoint {}: webhook-id {id:?} was never published: {r:?}",
                ep.name
            ));
            continue;
        }
        if let Err(e) = check_content(id, r) {
            errors.push(format!("endpoint {}: {e}", ep.name));
        }
        match bodies.get(&(ep.name, id)) {
            None => {
                bodies.insert((ep.name, id), &r.body);
            }
            Some(first) if **first != r.body => errors.push(format!(
                "endpoint {}: copies of {id:?} differ:\n  first: {}\n  now:   {}",
                ep.name,
                String::from_utf8_lossy(first),
                r.body_text()
            )),
            Some(_) => {}
        }
        copies.entry((ep.name, id)).or_default().push(i);
    }
    if !errors.is_empty() {
        let n = errors.len();
        errors.truncate(20);
        return Err(format!(
            "{n} bad webhook requests (first {}):\n{}",
            errors.len(),
            errors.join("\n")
        ));
    }

    // Statistics: duplicates, and why each copy after the first was sent.
    let mut report = String::new();
    let answer = |i: usize| {
        (defaults_used == 0)
            .then(|| pushed.get(i).copied())
            .flatten()
    };
    for ep in &endpoints {
        let (mut requests_n, mut ids, mut unacked_ids) = (0, 0, 0);
        let (mut after_500, mut crash_resends, mut unexplained) = (0, 0, 0);
        let mut unexplained_examples = Vec::new();
        for ((name, id), idx) in &copies {
            if *name != ep.name {
                continue;
            }
            ids += 1;
            requests_n += idx.len();
            if !acked.contains_key(*id) {
                unacked_ids += 1;
            }
            for w in idx.windows(2) {
                match answer(w[0]) {
                    Some(a) if !a.success() => after_500 += 1,
                    Some(_) => {
                        let (prev, next) = (requests[w[0]].received_at, requests[w[1]].received_at);
                        if kill_times.iter().any(|&k| prev <= k && k <= next) {
                            crash_resends += 1;
                        } else {
                            unexplained += 1;
                            if unexplained_examples.len() < 5 {
                                unexplained_examples.push(format!(
                                    "{id} (copies at +{:?} and +{:?} after the last restart)",
                                    prev.saturating_duration_since(last_restart),
                                    next.saturating_duration_since(last_restart)
                                ));
                            }
                        }
                    }
                    None => {}
                }
            }
        }
        report.push_str(&format!(
            "  endpoint {}: {requests_n} requests for {ids} events ({} acknowledged + {unacked_ids} \
             written but unacknowledged); {} duplicates: {after_500} retries after a 500, \
             {crash_resends} re-sent after a 2xx answer across a kill, {unexplained} re-sent after a \
             2xx answer with no kill in between; {} dead-lettered\n",
            ep.name,
            ids - unacked_ids,
            requests_n - ids,
            dead_counts[endpoints.iter().position(|e| e.name == ep.name).unwrap()],
        ));
        if unexplained > 0 {
            report.push_str(&format!(
                "  NOTE endpoint {}: copies re-sent after a 2xx answer without a crash in between \
                 (allowed by at-least-once, but unexpected): {unexplained_examples:?}\n",
                ep.name
            ));
        }
    }
    if defaults_used > 0 {
        report.push_str(&format!(
            "  ({defaults_used} requests got the receiver's default answer: the duplicate breakdown is unavailable)\n"
        ));
    }
    report.push_str(&format!(
        "  all {} acknowledged events reached both endpoints {:.1}s after publishing stopped \
         ({} events published, {} requests in all)",
        acked.len(),
        drained.as_secs_f64(),
        sent.len(),
        requests.len()
    ));
    drop(server);
    Ok(report)
}
