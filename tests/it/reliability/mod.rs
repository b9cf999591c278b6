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

mod answers;
mod check_delivered;
mod check_log;
mod check_requests;
mod endpoints;
mod events;
mod publisher;
mod shared;
mod subscriber;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use stevedore::pb::{admin_client::AdminClient, DeliveryState};
use tokio::sync::watch;

use self::{
    answers::{mix, Mixer},
    check_delivered::{wait_delivered, Stop},
    check_log::{check_acked, check_log},
    check_requests::check_requests,
    endpoints::create_endpoints,
    publisher::publisher,
    shared::Shared,
    subscriber::{subscriber, wait_processed},
};
use crate::support::{
    all_stderr, broker_panics, connect, failure_text, list_deliveries, seed, start_server_with_env,
    Rng, Server,
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
/// The broker's environment (support/process.rs adds `STEVEDORE_LOG=warn` and turns
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
    failures.extend(broker_panics(&logs, gens));
    if outcome.is_err() || !failures.is_empty() {
        let kept = dir.keep();
        let msg = failure_text(&outcome, &failures);
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
