//! The receiver's answers: a random mix of 200s, slow 200s and 500s kept
//! queued, and remembered so each request's answer is known.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::support::{Answer, Receiver, Rng};

/// Keeps the receiver's queue of behaviours topped up with a random mix, and
/// remembers it: the receiver pops one behaviour per recorded request, in
/// order of arrival, so request `i` got `pushed[i]` (as long as the queue
/// never ran dry, which [`Mixer::defaults_used`] checks).
pub(super) struct Mixer {
    pub(super) pushed: Mutex<Vec<Answer>>,
    /// No more 500s (the drain phase).
    pub(super) calm: AtomicBool,
    pub(super) stop: AtomicBool,
}

const QUEUE_LOW: usize = 256;
const QUEUE_HIGH: usize = 512;

impl Mixer {
    pub(super) fn top_up(&self, rx: &Receiver, rng: &mut Rng) {
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
    pub(super) fn defaults_used(&self, rx: &Receiver, recorded: usize) -> usize {
        let pushed = self.pushed.lock().unwrap().len();
        recorded.saturating_sub(pushed - rx.queued())
    }
}

pub(super) async fn mix(rx: Arc<Receiver>, mixer: Arc<Mixer>, seed: u64) {
    let mut rng = Rng::new(seed);
    while !mixer.stop.load(Ordering::SeqCst) {
        mixer.top_up(&rx, &mut rng);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
