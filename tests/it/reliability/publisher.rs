//! A publisher task: fresh events by a random publish call, each ack
//! recorded in the ledger, until the run stops it.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use stevedore::pb::{self, publisher_client::PublisherClient};

use super::{
    events::load_event,
    shared::{next_broker, Shared},
    CALL_TIMEOUT, PUBLISH_PAUSE_MS,
};
use crate::support::{connect, mode_name, publish_in_mode, Mode, Rng};

/// Publishes until `sh.stop`, moving to each new broker after a failure.
pub(super) async fn publisher(task: usize, sh: Arc<Shared>, seed: u64) {
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
                    load_event(task, seq)
                })
                .collect();
            sh.ledger
                .lock()
                .unwrap()
                .sent
                .extend(events.iter().map(|e| e.id.clone()));
            sh.calls[mode as usize].fetch_add(1, Ordering::Relaxed);
            let mut acks = Vec::with_capacity(n);
            let result = tokio::time::timeout(
                CALL_TIMEOUT,
                publish_in_mode(&mut client, mode, &events, &mut acks),
            )
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
