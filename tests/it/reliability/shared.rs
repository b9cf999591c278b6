//! What the coordinator, the publishers and the consumer share: the
//! ledgers of what was acknowledged and processed, and the current broker.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use stevedore::pb::{self, PublishResponse};
use tokio::sync::watch;

use crate::support::Ledger;

/// What the durable consumer saw and acked.
#[derive(Default)]
pub(super) struct SubLedger {
    /// Offset → event id, as first received.
    pub(super) processed: HashMap<u64, String>,
    /// Offsets whose `Ack` returned OK.
    pub(super) acked: HashSet<u64>,
    /// Offsets whose `Ack` failed with the broker's stop: it may or may not
    /// have been applied, so they may or may not come back.
    pub(super) in_doubt: HashSet<u64>,
    pub(super) messages: u64,
    /// Messages with `delivery_attempt > 1`.
    pub(super) redelivered: u64,
    /// Messages for an offset acked earlier on the same stream (a lease that
    /// ran out while the ack was on its way).
    pub(super) again_after_ack: u64,
    pub(super) streams: u64,
    /// Offsets nacked, and acked after their ack wait.
    pub(super) nacked: u64,
    pub(super) late_acks: u64,
    /// Fresh streams after a restart, and the acked offsets each was
    /// checked against.
    pub(super) checked_streams: u64,
    pub(super) checked_acks: u64,
    /// The generation of the last stream opened.
    pub(super) last_gen: u64,
}

pub(super) struct Shared {
    /// `(generation, address)` of the broker to use; None while one is down
    /// or being checked.
    pub(super) addr: watch::Receiver<Option<(u64, String)>>,
    /// Highest generation that was sent SIGKILL or SIGTERM (stored before
    /// the signal, so a failure it causes is seen after the store).
    pub(super) killed: AtomicU64,
    /// Publishers stop.
    pub(super) stop: AtomicBool,
    /// The subscriber stops.
    pub(super) sub_stop: AtomicBool,
    pub(super) ledger: Mutex<Ledger>,
    pub(super) sub: Mutex<SubLedger>,
    /// Broken guarantees and failures on a live broker.
    pub(super) failures: Mutex<Vec<String>>,
    /// Failed calls explained by a kill or a shutdown.
    pub(super) crash_errors: AtomicU64,
    pub(super) calls: [AtomicU64; 3],
    pub(super) started: Instant,
}

impl Shared {
    pub(super) fn new(addr: watch::Receiver<Option<(u64, String)>>) -> Arc<Shared> {
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

    pub(super) fn fail(&self, msg: String) {
        let msg = format!("[+{:.3}s] {msg}", self.started.elapsed().as_secs_f64());
        eprintln!("reliability test failure: {msg}");
        self.failures.lock().unwrap().push(msg);
    }

    /// A failed call on start #`generation`: fine if that broker was
    /// stopped, a failure if it is live.
    pub(super) fn call_failed(&self, generation: u64, who: &str, what: String) {
        if generation > self.killed.load(Ordering::SeqCst) {
            self.fail(format!("{who}: {what} on live broker start #{generation}"));
        } else {
            self.crash_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn record(&self, events: &[pb::Event], acks: &[PublishResponse], generation: u64) {
        let errors = self.ledger.lock().unwrap().record(events, acks, generation);
        for e in errors {
            self.fail(e);
        }
    }
}

/// The next broker after `failed_gen`, or None once `stop` is set.
pub(super) async fn next_broker(
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
