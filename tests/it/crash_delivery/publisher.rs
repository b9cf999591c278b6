//! A publisher task: fresh events by `Publish` or `PublishBatch`, each ack
//! recorded in the ledger; a failed call is blamed on a kill or reported.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use stevedore::pb::{
    self, publisher_client::PublisherClient, PublishBatchRequest, PublishRequest, PublishResponse,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::{events::delivery_event, CALL_TIMEOUT};
use crate::support::{connect, status_text, Ledger, Rng};

/// What the coordinator and the publisher tasks share.
pub(super) struct Shared {
    /// `(generation, address)` of the running broker.
    pub(super) addr: watch::Receiver<Option<(u64, String)>>,
    /// Highest generation that was sent SIGKILL (stored before the kill).
    pub(super) killed: AtomicU64,
    pub(super) stop: AtomicBool,
    pub(super) ledger: Mutex<Ledger>,
    /// Broken guarantees and failures on a live broker.
    pub(super) failures: Mutex<Vec<String>>,
    /// Failed calls explained by a kill.
    pub(super) crash_errors: AtomicU64,
    pub(super) calls: AtomicU64,
}

impl Shared {
    pub(super) fn fail(&self, msg: String) {
        eprintln!("crash delivery test failure: {msg}");
        self.failures.lock().unwrap().push(msg);
    }

    pub(super) fn record(&self, events: &[pb::Event], acks: &[PublishResponse], generation: u64) {
        let errors = self.ledger.lock().unwrap().record(events, acks, generation);
        for e in errors {
            self.fail(e);
        }
    }
}

pub(super) async fn publisher(task: usize, sh: Arc<Shared>, seed: u64) {
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
                    delivery_event(task, seq)
                })
                .collect();
            sh.ledger
                .lock()
                .unwrap()
                .sent
                .extend(events.iter().map(|e| e.id.clone()));
            sh.calls.fetch_add(1, Ordering::Relaxed);
            let result = match tokio::time::timeout(
                CALL_TIMEOUT,
                publish_events(&mut client, &events),
            )
            .await
            {
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

/// One `Publish` for one event, else one `PublishBatch`; the acks.
pub(super) async fn publish_events(
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
