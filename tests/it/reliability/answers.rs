//! The two receivers (healthy and flaky) and the answers queued on them,
//! remembered so each request's answer is known.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::support::{Answer, Receiver, Rng};

/// One receiver and the answers queued for it. The receiver pops one queued
/// behaviour per recorded request, in order of arrival, so request `i` got
/// `pushed[i]` as long as the queue never ran dry (`defaults_used`).
pub(super) struct Mixer {
    pub(super) rx: Receiver,
    pub(super) flaky: bool,
    pub(super) pushed: Mutex<Vec<Answer>>,
    /// No more failures (the drain phase).
    pub(super) calm: AtomicBool,
}

const QUEUE_LOW: usize = 512;
const QUEUE_HIGH: usize = 1024;

impl Mixer {
    pub(super) async fn start(flaky: bool) -> Arc<Mixer> {
        Arc::new(Mixer {
            rx: Receiver::start().await,
            flaky,
            pushed: Mutex::new(Vec::new()),
            calm: AtomicBool::new(false),
        })
    }

    pub(super) fn top_up(&self, rng: &mut Rng) {
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
    pub(super) fn defaults_used(&self) -> usize {
        let pushed = self.pushed.lock().unwrap().len();
        self.rx.count().saturating_sub(pushed - self.rx.queued())
    }

    /// What request `i` was answered, when known.
    pub(super) fn answers(&self) -> Vec<Option<Answer>> {
        let n = self.rx.count();
        if self.defaults_used() > 0 {
            return vec![None; n];
        }
        let pushed = self.pushed.lock().unwrap();
        (0..n).map(|i| pushed.get(i).copied()).collect()
    }
}

pub(super) async fn mix(mixers: Vec<Arc<Mixer>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::SeqCst) {
        for m in &mixers {
            m.top_up(&mut rng);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
