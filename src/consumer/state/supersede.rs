//! Superseding messages (an endpoint's coalescing): a new message that
//! supersedes takes the place of the waiting messages of its key and
//! carries their offsets until it is handed out.

use tokio::time::Instant;

use super::State;
use crate::model::Offset;

impl State {
    /// The offsets `offset` superseded that are not done yet, in log order.
    pub fn riders_of(&self, offset: Offset) -> Vec<Offset> {
        self.riders.get(&offset).map_or_else(Vec::new, |r| {
            r.iter().copied().filter(|&o| !self.is_done(o)).collect()
        })
    }

    /// `offset`, leased and just read, replaces the messages of `key` that
    /// wait: those behind the one out, and the one out itself unless it is
    /// leased (its holder is at it). True if it may go out now (nothing of
    /// its key is out). Else its lease ends (not a delivery) and it waits:
    /// behind the leased one, or in the place of the one it replaced, due
    /// when that one was. Either way it carries what it replaced, to be
    /// handed out with it.
    pub(super) fn supersede(&mut self, offset: Offset, key: &str, now: Instant) -> bool {
        let Some(out) = self.keys.out(key) else {
            return self.keys.claim(offset, key);
        };
        let behind = self.keys.take_behind(key);
        let attempts = self
            .end_lease(offset)
            .expect("claimed offsets are leased")
            .attempt
            .saturating_sub(1);
        if self.is_leased(out) {
            self.keys.wait(offset, key, attempts, true);
            self.carry(offset, behind);
            return false;
        }
        let due = if self.ready.remove(&out).is_some() {
            now
        } else if let Some((_, due)) = self.retries.remove(&out) {
            self.retry_due.remove(&(due, out));
            due
        } else {
            now
        };
        self.keys.replace_out(out, offset);
        self.queue_retry(offset, attempts, due);
        let mut replaced = vec![out];
        replaced.extend(behind);
        self.carry(offset, replaced);
        false
    }

    /// `by` carries `offsets` (and whatever they carried).
    pub(super) fn carry(&mut self, by: Offset, offsets: Vec<Offset>) {
        if offsets.is_empty() {
            return;
        }
        let mut all = self.riders.remove(&by).unwrap_or_default();
        for o in offsets {
            all.extend(self.riders.remove(&o).unwrap_or_default());
            all.push(o);
        }
        all.sort_unstable();
        all.dedup();
        self.riding.extend(all.iter().copied());
        self.riders.insert(by, all);
    }
}
