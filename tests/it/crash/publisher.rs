//! A publisher task: publishes fresh events (and now and then an acked one
//! again) by a random call, retries what is un-acked on the next server,
//! and records every ack in the ledger.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex,
};

use stevedore::pb::{self, publisher_client::PublisherClient};
use tokio::sync::watch;

use super::{events::publish_event, ledger::Ledger, CALL_TIMEOUT};
use crate::support::{connect, mode_name, publish_in_mode, Mode, Rng};

/// What the coordinator and the publisher tasks share.
pub(super) struct Shared {
    /// `(generation, address)` of the server to use; None between a kill and
    /// the end of the post-restart check.
    pub(super) addr: watch::Receiver<Option<(u64, String)>>,
    /// Highest generation that was sent SIGKILL; set just before the kill,
    /// so any failure it causes is seen after the store.
    pub(super) killed: AtomicU64,
    /// Per task: the generation whose failure the task has seen (it waits
    /// for a later one).
    pub(super) parked: Mutex<Vec<u64>>,
    pub(super) finished: Vec<AtomicBool>,
    /// No fresh events: flush what is un-acked, then return.
    pub(super) stop: AtomicBool,
    pub(super) ledger: Mutex<Ledger>,
    /// Broken guarantees and failures on a live server.
    pub(super) failures: Mutex<Vec<String>>,
    /// Failed calls explained by a kill.
    pub(super) crash_errors: AtomicU64,
    pub(super) calls: [AtomicU64; 3],
}

impl Shared {
    pub(super) fn fail(&self, msg: String) {
        eprintln!("crash test failure: {msg}");
        self.failures.lock().unwrap().push(msg);
    }
}

pub(super) async fn publisher(task: usize, sh: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut addr_rx = sh.addr.clone();
    let mut seq = 0u64;
    // Sent but not acknowledged, oldest first; retried before anything new.
    let mut pending: Vec<pb::Event> = Vec::new();
    let mut my_acked: Vec<String> = Vec::new();
    let mut failed_gen = 0u64;
    'servers: loop {
        // The next server after the one that failed us.
        let (generation, addr) = loop {
            if let Some((g, a)) = addr_rx.borrow_and_update().clone() {
                if g > failed_gen {
                    break (g, a);
                }
            }
            if addr_rx.changed().await.is_err() {
                sh.fail(format!("publisher {task}: the coordinator went away"));
                break 'servers;
            }
        };
        let failure = |sh: &Shared, what: String| {
            if generation > sh.killed.load(Ordering::SeqCst) {
                sh.fail(format!(
                    "publisher {task}: {what} on live server start #{generation}"
                ));
            } else {
                sh.crash_errors.fetch_add(1, Ordering::Relaxed);
            }
            sh.parked.lock().unwrap()[task] = generation;
        };
        let channel = match connect(&addr).await {
            Ok(c) => c,
            Err(e) => {
                failure(&sh, e);
                failed_gen = generation;
                continue;
            }
        };
        let mut client = PublisherClient::new(channel);
        loop {
            let stopping = sh.stop.load(Ordering::SeqCst);
            if stopping && pending.is_empty() {
                break 'servers;
            }
            let mode = match rng.next() % 3 {
                0 => Mode::Unary,
                1 => Mode::Batch,
                _ => Mode::Stream,
            };
            let size = match mode {
                Mode::Unary => 1,
                Mode::Batch => rng.range(5, 15) as usize,
                Mode::Stream => rng.range(10, 30) as usize,
            };
            // Un-acked events first, then now and then an acked one again
            // (must come back duplicate with its offset), then fresh ones.
            let mut events: Vec<pb::Event> = pending.iter().take(size).cloned().collect();
            if !stopping
                && events.len() < size
                && !my_acked.is_empty()
                && rng.next().is_multiple_of(4)
            {
                let id = &my_acked[rng.next() as usize % my_acked.len()];
                let (t, s) = id[1..].split_once('-').unwrap();
                events.push(publish_event(t.parse().unwrap(), s.parse().unwrap()));
            }
            while !stopping && events.len() < size {
                let e = publish_event(task, seq);
                seq += 1;
                sh.ledger.lock().unwrap().sent.insert(e.id.clone());
                pending.push(e.clone());
                events.push(e);
            }

            let mut acks = Vec::with_capacity(events.len());
            sh.calls[mode as usize].fetch_add(1, Ordering::Relaxed);
            let result = match tokio::time::timeout(
                CALL_TIMEOUT,
                publish_in_mode(&mut client, mode, &events, &mut acks),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "{} call timed out after {CALL_TIMEOUT:?}",
                    mode_name(mode)
                )),
            };
            {
                let mut ledger = sh.ledger.lock().unwrap();
                for (e, ack) in events.iter().zip(&acks) {
                    if let Err(msg) = ledger.record(&e.id, ack, generation) {
                        drop(ledger);
                        sh.fail(msg);
                        ledger = sh.ledger.lock().unwrap();
                    }
                }
            }
            for (e, ack) in events.iter().zip(&acks) {
                if let Some(i) = pending.iter().position(|p| p.id == e.id) {
                    pending.remove(i);
                    if ack.event_id == e.id {
                        my_acked.push(e.id.clone());
                    }
                }
            }
            let result = result.and_then(|()| {
                if acks.len() == events.len() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} call succeeded with {} acks for {} events",
                        mode_name(mode),
                        acks.len(),
                        events.len()
                    ))
                }
            });
            if let Err(e) = result {
                failure(&sh, e);
                failed_gen = generation;
                continue 'servers;
            }
        }
    }
    sh.finished[task].store(true, Ordering::SeqCst);
}
