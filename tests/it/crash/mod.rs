//! Crash test for the acknowledgement guarantee: an acknowledged publish is
//! durable, and re-publishing an id never writes it twice, across SIGKILLs.
//!
//! Runs the real binary on one data directory, kills it with SIGKILL at
//! random-ish moments while four publishers keep publishing (unary, batch and
//! stream), restarts it, and checks the log against every ack received.
//!
//! Reproduce a run with `STEVEDORE_CRASH_SEED=<seed printed by the test>`.

mod check;
mod events;
mod ledger;
mod publisher;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use self::{
    check::check_log,
    ledger::Ledger,
    publisher::{publisher, Shared},
};
use crate::support::{
    all_stderr, failure_text, read_stderr, seed, start_server_with_env, Rng, Server,
};

/// Publisher tasks.
const PUBLISHERS: usize = 4;
/// SIGKILL/restart cycles.
const CYCLES: usize = 5;
/// Load between a (re)start and its kill, in milliseconds.
const KILL_AFTER_MS: (u64, u64) = (150, 400);
/// Load on the last server before the publishers stop.
const FINAL_LOAD: Duration = Duration::from_millis(300);
/// One publish call (a unary call, a batch or a whole stream) or one read.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// All publishers noticing a kill (bounded by CALL_TIMEOUT in practice).
const PARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading the whole log with Subscribe.
const SCAN_TIMEOUT: Duration = Duration::from_secs(15);
/// The whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(50);

/// [`Server::start`] off the async workers (it blocks reading stdout), with
/// the smallest event-log segments, so that kills also land around segment
/// changes.
async fn start_server(data_dir: &Path, logs: &Path, generation: u64) -> Result<Server, String> {
    start_server_with_env(
        data_dir,
        logs,
        generation,
        &[("STEVEDORE_LOG_SEGMENT_BYTES", "65536")],
    )
    .await
}

// ------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_sigkill() {
    let seed = seed();
    println!("crash test seed: {seed} (rerun with STEVEDORE_CRASH_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let logs = dir.path().to_owned();

    let (addr_tx, addr_rx) = watch::channel(None);
    let sh = Arc::new(Shared {
        addr: addr_rx,
        killed: AtomicU64::new(0),
        parked: Mutex::new(vec![0; PUBLISHERS]),
        finished: (0..PUBLISHERS).map(|_| AtomicBool::new(false)).collect(),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        failures: Mutex::new(Vec::new()),
        crash_errors: AtomicU64::new(0),
        calls: Default::default(),
    });
    let generations = Arc::new(AtomicU64::new(0));

    let started = Instant::now();
    let body = run(
        seed,
        &data_dir,
        &logs,
        addr_tx,
        sh.clone(),
        generations.clone(),
    );
    let outcome = match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the crash test did not finish within {TEST_TIMEOUT:?}"
        )),
    };
    let failures = std::mem::take(&mut *sh.failures.lock().unwrap());
    let gens = generations.load(Ordering::SeqCst);
    if outcome.is_err() || !failures.is_empty() {
        let kept = dir.keep();
        let msg = failure_text(&outcome, &failures);
        panic!(
            "crash test failed (seed {seed}, data dir kept at {}):\n{msg}{}",
            kept.display(),
            all_stderr(&kept, gens)
        );
    }
    let summary = outcome.unwrap();
    let ledger = sh.ledger.lock().unwrap();
    let repairs = (1..=gens)
        .filter(|&g| read_stderr(&logs, g).contains("cut an incomplete tail"))
        .count();
    let segments = std::fs::read_dir(data_dir.join("events"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
        })
        .unwrap_or(0);
    println!(
        "crash test: {CYCLES} SIGKILL cycles, {gens} starts, {:.1}s; {} events acknowledged ({} acks), \
         {} duplicate acks ({} for ids whose first ack was lost to a kill, {} for re-sent acked ids); \
         calls unary/batch/stream {}/{}/{}, {} failed by kills; {} events written but unacked seen after restarts; \
         torn log tails cut on {} starts; {} event-log segments; final head {}",
        started.elapsed().as_secs_f64(),
        ledger.acked.len(),
        ledger.acks,
        ledger.duplicates,
        ledger.lost_acks_recovered,
        ledger.resend_checks,
        sh.calls[0].load(Ordering::Relaxed),
        sh.calls[1].load(Ordering::Relaxed),
        sh.calls[2].load(Ordering::Relaxed),
        sh.crash_errors.load(Ordering::Relaxed),
        summary.unacked_after_restarts,
        repairs,
        segments,
        summary.final_head,
    );
}

struct Summary {
    unacked_after_restarts: usize,
    final_head: u64,
}

async fn run(
    seed: u64,
    data_dir: &Path,
    logs: &Path,
    addr_tx: watch::Sender<Option<(u64, String)>>,
    sh: Arc<Shared>,
    generations: Arc<AtomicU64>,
) -> Result<Summary, String> {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|t| tokio::spawn(publisher(t, sh.clone(), seed.wrapping_add(t as u64 * 7919))))
        .collect();
    let mut unacked_after_restarts = 0;

    let snapshot = |sh: &Shared| {
        let l = sh.ledger.lock().unwrap();
        (l.acked.clone(), l.sent.clone())
    };

    let mut generation = 1u64;
    generations.store(generation, Ordering::SeqCst);
    let mut server = start_server(data_dir, logs, generation).await?;
    addr_tx.send_replace(Some((generation, server.addr.clone())));

    for cycle in 1..=CYCLES {
        tokio::time::sleep(Duration::from_millis(
            rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1),
        ))
        .await;
        // Publishers must not find the next server before it is checked.
        addr_tx.send_replace(None);
        sh.killed.store(generation, Ordering::SeqCst);
        server.kill();
        let acked_before_kill = sh.ledger.lock().unwrap().acked.len();

        // Wait until every publisher has seen the kill, so every ack it got
        // from the dead server is in the ledger.
        let waited = Instant::now();
        loop {
            let parked = sh.parked.lock().unwrap().clone();
            let all = (0..PUBLISHERS)
                .all(|t| parked[t] >= generation || sh.finished[t].load(Ordering::SeqCst));
            if all {
                break;
            }
            if waited.elapsed() > PARK_TIMEOUT {
                return Err(format!(
                    "cycle {cycle}: publishers did not notice the kill of start #{generation} within \
                     {PARK_TIMEOUT:?} (parked at {parked:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        generation += 1;
        generations.store(generation, Ordering::SeqCst);
        server = start_server(data_dir, logs, generation).await?;
        let (acked, sent) = snapshot(&sh);
        let checked = check_log(&server.addr, generation, &acked, &sent, false).await?;
        unacked_after_restarts += checked.unacked_in_log;
        println!(
            "cycle {cycle}: killed start #{} ({} acked so far, {} at the kill), restarted: head {}, \
             {} written-but-unacked events in the log",
            generation - 1,
            acked.len(),
            acked_before_kill,
            checked.head,
            checked.unacked_in_log
        );
        addr_tx.send_replace(Some((generation, server.addr.clone())));
    }

    // Last server: a little more load, then every publisher flushes its
    // un-acked events and stops.
    tokio::time::sleep(FINAL_LOAD).await;
    sh.stop.store(true, Ordering::SeqCst);
    for (t, task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("publisher {t} panicked: {e}")),
            Err(_) => {
                return Err(format!(
                    "publisher {t} did not finish within 15s after stop"
                ))
            }
        }
    }
    let (acked, sent) = snapshot(&sh);
    let checked = check_log(&server.addr, generation, &acked, &sent, true).await?;
    if checked.head != acked.len() as u64 + 1 {
        return Err(format!(
            "at the end: head {} but {} ids acknowledged",
            checked.head,
            acked.len()
        ));
    }
    drop(server);
    Ok(Summary {
        unacked_after_restarts,
        final_head: checked.head,
    })
}
