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

mod admin;
mod answers;
mod events;
mod publisher;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use stevedore::pb::{admin_client::AdminClient, DeliveryState};
use tokio::sync::watch;

use self::{
    admin::{create_endpoint, explain_missing, Ep},
    answers::{mix, Mixer},
    events::check_content,
    publisher::{publisher, Shared},
};
use crate::support::{
    all_stderr, broker_panics, connect, failure_text, list_deliveries, read_stderr, seed,
    start_server_with_env, verify_signature, Ledger, Receiver, Rng, Server, HOOK_PATH,
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
/// The broker's environment (on top of support/process.rs's `STEVEDORE_LOG=warn`).
const BROKER_ENV: [(&str, &str); 3] = [
    ("STEVEDORE_ALLOW_HTTP", "true"),
    ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
    ("STEVEDORE_LOG", "warn"),
];
/// The custom event type of the even-numbered events.
const CUSTOM_TYPE: &str = "crash.delivery";

// ------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_sigkill() {
    let seed = seed();
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
    failures.extend(broker_panics(&logs, gens));
    if outcome.is_err() || !failures.is_empty() {
        let kept = dir.keep();
        let msg = failure_text(&outcome, &failures);
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
            let path = format!("{}?ep={}", HOOK_PATH, ep.name);
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
            .find(|ep| r.path == format!("{}?ep={}", HOOK_PATH, ep.name))
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
