//! A consumer's bookkeeping, free of I/O and clocks so it can be tested alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tokio::time::Instant;

use super::{
    keys::{KeyQueues, Ordering},
    StreamId,
};

mod supersede;

pub(crate) use super::persist::ranges_to_set;
#[cfg(test)]
use super::persist::set_to_ranges;
use crate::model::Offset;

#[derive(Debug)]
struct Lease {
    stream: StreamId,
    attempt: u32,
    deadline: Instant,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Every offset below the floor is done.
    pub floor: Offset,
    /// Done offsets at or above the floor.
    pub done: BTreeSet<Offset>,
    /// The next offset never handed out since this state was loaded.
    pub next_read: Offset,
    leases: HashMap<Offset, Lease>,
    /// Lease expiries, earliest first.
    deadlines: BTreeSet<(Instant, Offset)>,
    /// Messages waiting for redelivery: offset → attempts made so far.
    retries: HashMap<Offset, (u32, Instant)>,
    /// The same, by when they may go out.
    retry_due: BTreeSet<(Instant, Offset)>,
    /// Leases held per stream, for `max_in_flight`.
    load: HashMap<StreamId, u32>,
    /// Done offsets handed back for redelivery, persisted until acked.
    pub reopened: BTreeSet<Offset>,
    /// Offsets that were waiting for redelivery when retention removed
    /// their events; the next poll reports each once.
    pub expired: Vec<Offset>,
    /// Leased offsets whose events were erased: when handed back to wait
    /// for redelivery, they go to `expired` instead.
    pub expire_on_return: BTreeSet<Offset>,
    /// Deliveries before a message is dead-lettered (0: no limit).
    pub max_deliveries: u32,
    /// Dead-lettered offsets (done, kept for the operator).
    pub dead: BTreeSet<Offset>,
    /// How messages are ordered when handed out.
    pub ordering: Ordering,
    /// With ordering: per key, the message that is out and those behind it.
    keys: KeyQueues,
    /// Messages whose turn came (the one before them of their key is done)
    /// and whose ordering changed: due now, before any timed redelivery,
    /// with the deliveries each has had.
    ready: BTreeMap<Offset, u32>,
    /// Superseding messages and the offsets they superseded (in log
    /// order), handed out with them until they are done.
    riders: HashMap<Offset, Vec<Offset>>,
    /// Every offset in `riders`: held, but never handed out on its own.
    riding: HashSet<Offset>,
    /// New messages are read only while fewer than this many are held
    /// (see [`State::held`]); 0: no bound.
    pub max_held: u32,
}

impl State {
    pub fn new(floor: Offset, done: BTreeSet<Offset>, reopened: BTreeSet<Offset>) -> Self {
        let mut st = State {
            floor,
            done,
            next_read: floor,
            ..Default::default()
        };
        st.advance_floor();
        st.next_read = st.floor;
        let now = Instant::now();
        for o in reopened {
            st.reopen(o, now);
        }
        st
    }

    /// Whether `offset` is leased to a stream.
    pub fn is_leased(&self, offset: Offset) -> bool {
        self.leases.contains_key(&offset)
    }

    /// Drops `offset` from the redelivery queue; true if it was there.
    pub fn cancel_retry(&mut self, offset: Offset) -> bool {
        self.end_retry(offset).is_some()
    }

    /// Whether `offset` is leased, waiting for redelivery, or waiting
    /// behind another message of its ordering key.
    pub fn is_held(&self, offset: Offset) -> bool {
        self.leases.contains_key(&offset)
            || self.retries.contains_key(&offset)
            || self.ready.contains_key(&offset)
            || self.keys.contains(offset)
            || self.riding.contains(&offset)
    }

    /// How many messages are held: leased, waiting for redelivery, or
    /// behind another of their key (superseded ones not counted).
    pub fn held(&self) -> usize {
        self.leases.len() + self.retries.len() + self.ready.len() + self.keys.behind()
    }

    /// Whether a new message may be read under `max_held`.
    pub fn room_to_read(&self) -> bool {
        self.max_held == 0 || self.held() < self.max_held as usize
    }

    /// Moves the lease of `offset` to `deadline`, if it is leased.
    pub fn renew(&mut self, offset: Offset, deadline: Instant) {
        if let Some(lease) = self.leases.get_mut(&offset) {
            self.deadlines.remove(&(lease.deadline, offset));
            lease.deadline = deadline;
            self.deadlines.insert((deadline, offset));
        }
    }

    /// How many messages wait behind another of their ordering key.
    pub fn behind(&self) -> usize {
        self.keys.behind()
    }

    /// Orders messages handed out from now on by `ordering`. Messages that
    /// waited behind another of their key under the old ordering are due
    /// at once; those out stay with their holders.
    pub fn set_ordering(&mut self, ordering: Ordering) {
        if ordering == self.ordering {
            return;
        }
        self.ordering = ordering;
        self.ready.extend(self.keys.clear());
    }

    /// `offset`, leased and just read, has ordering key `key`: true if it
    /// may go out (no other message of its key is out); else its lease
    /// ends, without counting as a delivery, and it waits behind that one.
    /// An offset whose lease ended meanwhile (acked, released) is not
    /// ordered: it goes out as it would have without ordering.
    ///
    /// A new message that `supersedes` takes the place of those of its key
    /// that wait (see [`State::supersede`]).
    pub fn claim(&mut self, offset: Offset, key: &str, supersedes: bool, now: Instant) -> bool {
        if !self.is_leased(offset) {
            return true;
        }
        if supersedes && !self.keys.contains(offset) {
            return self.supersede(offset, key, now);
        }
        if self.keys.claim(offset, key) {
            return true;
        }
        let lease = self.end_lease(offset).expect("checked above");
        self.keys
            .wait(offset, key, lease.attempt.saturating_sub(1), false);
        false
    }

    /// Makes a done offset pending again, due at `now`.
    pub fn reopen(&mut self, offset: Offset, now: Instant) {
        if self.is_held(offset) {
            return;
        }
        if offset < self.floor {
            self.reopened.insert(offset);
        } else {
            self.done.remove(&offset);
        }
        self.queue_retry(offset, 0, now);
    }

    /// Everything from `from` on is to be delivered again.
    pub fn rewind(&mut self, from: Offset) {
        if from < self.floor {
            // [from, floor) was done; now it is not.
            self.reopened.retain(|&o| o < from);
            self.floor = from;
        }
        self.done.retain(|&o| o < from);
        self.next_read = self.next_read.min(from);
    }

    /// The next due redelivery, leased to `stream`; one that has had
    /// `max_deliveries` deliveries is dead-lettered instead (done, kept in
    /// `dead`). Returns the offset and its attempt number.
    pub fn lease_due_retry(
        &mut self,
        now: Instant,
        stream: StreamId,
        deadline: Instant,
    ) -> Option<(Offset, u32)> {
        while let Some((offset, attempts)) = self.take_due_retry(now) {
            if self.max_deliveries > 0 && attempts >= self.max_deliveries {
                self.reopened.remove(&offset);
                self.dead.insert(offset);
                self.mark_done(offset);
                continue;
            }
            self.lease(offset, stream, attempts + 1, deadline);
            return Some((offset, attempts + 1));
        }
        None
    }

    /// Every dead letter is delivered again, with fresh attempts; returns
    /// how many.
    pub fn redrive(&mut self, now: Instant) -> u64 {
        let dead = std::mem::take(&mut self.dead);
        for &o in &dead {
            self.reopen(o, now);
        }
        dead.len() as u64
    }

    /// Everything before `to` is done (including what waited for
    /// redelivery), everything from `to` on is to be delivered in log
    /// order, again if it was done (what waited for redelivery is read
    /// afresh). Leases below `to` end (their holders' acks change nothing,
    /// and they never come back); leases from `to` on stay with their
    /// holders.
    pub fn reset(&mut self, to: Offset) {
        let waiting: Vec<Offset> = self.retries.keys().copied().collect();
        for o in waiting {
            self.end_retry(o);
        }
        let below: Vec<Offset> = self.leases.keys().copied().filter(|&o| o < to).collect();
        for o in below {
            self.end_lease(o);
        }
        // Key order starts afresh: what waited behind another message of
        // its key is read again (or done, below `to`).
        self.keys.clear();
        self.ready.clear();
        self.riders.clear();
        self.riding.clear();
        self.reopened.retain(|&o| o >= to);
        self.dead.retain(|&o| o < to);
        self.done.clear();
        self.floor = to;
        self.next_read = to;
    }

    pub fn is_done(&self, offset: Offset) -> bool {
        offset < self.floor || self.done.contains(&offset)
    }

    pub fn load(&self, stream: StreamId) -> u32 {
        self.load.get(&stream).copied().unwrap_or(0)
    }

    pub fn lease(&mut self, offset: Offset, stream: StreamId, attempt: u32, deadline: Instant) {
        self.leases.insert(
            offset,
            Lease {
                stream,
                attempt,
                deadline,
            },
        );
        self.deadlines.insert((deadline, offset));
        *self.load.entry(stream).or_default() += 1;
    }

    fn end_lease(&mut self, offset: Offset) -> Option<Lease> {
        let lease = self.leases.remove(&offset)?;
        self.deadlines.remove(&(lease.deadline, offset));
        if let Some(n) = self.load.get_mut(&lease.stream) {
            *n -= 1;
            if *n == 0 {
                self.load.remove(&lease.stream);
            }
        }
        Some(lease)
    }

    fn end_retry(&mut self, offset: Offset) -> Option<u32> {
        if let Some(attempts) = self.ready.remove(&offset) {
            return Some(attempts);
        }
        let (attempts, due) = self.retries.remove(&offset)?;
        self.retry_due.remove(&(due, offset));
        Some(attempts)
    }

    fn queue_retry(&mut self, offset: Offset, attempts: u32, due: Instant) {
        if let Some((_, old)) = self.retries.insert(offset, (attempts, due)) {
            self.retry_due.remove(&(old, offset));
        }
        self.retry_due.insert((due, offset));
    }

    /// Moves expired leases to the redelivery queue, due at once.
    pub fn expire_leases(&mut self, now: Instant) {
        while let Some(&(deadline, offset)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let lease = self.end_lease(offset).expect("deadline has a lease");
            self.queue_retry(offset, lease.attempt, deadline);
        }
    }

    /// The earliest-due message waiting for redelivery (first those whose
    /// turn came in their key's order), with the attempts made so far.
    pub fn take_due_retry(&mut self, now: Instant) -> Option<(Offset, u32)> {
        if let Some(ready) = self.ready.pop_first() {
            return Some(ready);
        }
        let &(due, offset) = self.retry_due.first()?;
        if due > now {
            return None;
        }
        let attempts = self.end_retry(offset).expect("due entry has a retry");
        Some((offset, attempts))
    }

    /// The next lease expiry or delayed redelivery.
    pub fn next_wake(&self) -> Option<Instant> {
        let lease = self.deadlines.first().map(|&(t, _)| t);
        let retry = self.retry_due.first().map(|&(t, _)| t);
        match (lease, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn ack(&mut self, offset: Offset) {
        self.end_lease(offset);
        self.end_retry(offset);
        self.reopened.remove(&offset);
        self.mark_done(offset);
    }

    /// Ends the lease of `offset` and queues it for redelivery at
    /// `not_before`. If a message that supersedes it waits behind it, that
    /// one takes its place (and its due time) and carries it.
    pub fn nack(&mut self, offset: Offset, not_before: Instant) {
        if let Some(lease) = self.end_lease(offset) {
            if let Some((next, attempts)) = self.keys.superseded_out(offset) {
                self.queue_retry(next, attempts, not_before);
                self.carry(next, vec![offset]);
                return;
            }
            self.queue_retry(offset, lease.attempt, not_before);
        } else if let Some(attempts) = self.end_retry(offset) {
            self.queue_retry(offset, attempts, not_before);
        }
        // Otherwise it is done or not handed out: nothing to redeliver.
    }

    /// Takes back a lease whose message was never handed out (reading it
    /// failed): due again at `now`, and the attempt does not count.
    pub fn hand_back(&mut self, offset: Offset, now: Instant) {
        if let Some(lease) = self.end_lease(offset) {
            self.queue_retry(offset, lease.attempt.saturating_sub(1), now);
        }
    }

    /// Returns the number of leases handed back.
    pub fn release(&mut self, stream: StreamId, now: Instant) -> usize {
        let offsets: Vec<Offset> = self
            .leases
            .iter()
            .filter(|(_, l)| l.stream == stream)
            .map(|(&o, _)| o)
            .collect();
        for &o in &offsets {
            let lease = self.end_lease(o).expect("listed above");
            self.queue_retry(o, lease.attempt, now);
        }
        offsets.len()
    }

    pub fn mark_done(&mut self, offset: Offset) {
        // The next of its key, if any, is due now.
        if let Some((next, attempts)) = self.keys.remove(offset) {
            self.ready.insert(next, attempts);
        }
        self.riding.remove(&offset);
        // What it superseded and its holder left unsettled goes out again
        // on its own (at least once).
        if let Some(riders) = self.riders.remove(&offset) {
            for o in riders {
                if self.riding.remove(&o) && !self.is_done(o) {
                    self.ready.insert(o, 0);
                }
            }
        }
        if offset < self.floor {
            return;
        }
        self.done.insert(offset);
        self.advance_floor();
    }

    fn advance_floor(&mut self) {
        while self.done.first() == Some(&self.floor) {
            self.done.pop_first();
            self.floor += 1;
        }
        // Entries below the floor (from an old record) carry no information.
        while self.done.first().is_some_and(|&o| o < self.floor) {
            self.done.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn floor_advances_over_out_of_order_acks() {
        let mut st = State::new(Offset::new(1), BTreeSet::new(), BTreeSet::new());
        let now = Instant::now();
        for o in 1..=4 {
            st.lease(Offset::new(o), 7, 1, now);
            st.next_read = Offset::new(o + 1);
        }
        st.ack(Offset::new(3));
        st.ack(Offset::new(2));
        assert_eq!(st.floor, Offset::new(1));
        st.ack(Offset::new(1));
        assert_eq!(st.floor, Offset::new(4));
        assert!(st.done.is_empty());
        assert_eq!(st.load(7), 1);
    }

    #[test]
    fn expiry_then_redelivery_counts_attempts() {
        let mut st = State::new(Offset::new(1), BTreeSet::new(), BTreeSet::new());
        let t0 = Instant::now();
        st.lease(Offset::new(1), 1, 1, t0 + Duration::from_secs(1));
        st.expire_leases(t0);
        assert_eq!(st.take_due_retry(t0), None);
        st.expire_leases(t0 + Duration::from_secs(1));
        assert_eq!(st.load(1), 0);
        assert_eq!(
            st.take_due_retry(t0 + Duration::from_secs(1)),
            Some((Offset::new(1), 1))
        );
    }

    #[test]
    fn nack_delays_and_release_requeues() {
        let mut st = State::new(Offset::new(1), BTreeSet::new(), BTreeSet::new());
        let t0 = Instant::now();
        st.lease(Offset::new(1), 1, 1, t0 + Duration::from_secs(30));
        st.lease(Offset::new(2), 2, 1, t0 + Duration::from_secs(30));
        st.nack(Offset::new(1), t0 + Duration::from_secs(5));
        assert_eq!(st.take_due_retry(t0), None);
        assert_eq!(st.next_wake(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(st.release(2, t0), 1);
        assert_eq!(st.take_due_retry(t0), Some((Offset::new(2), 1)));
        assert_eq!(
            st.take_due_retry(t0 + Duration::from_secs(5)),
            Some((Offset::new(1), 1))
        );
    }

    #[test]
    fn rewind_and_reopen() {
        let mut st = State::new(Offset::new(10), BTreeSet::new(), BTreeSet::new());
        let t0 = Instant::now();
        st.next_read = Offset::new(12);
        st.mark_done(Offset::new(10));
        st.mark_done(Offset::new(11));
        assert_eq!(st.floor, Offset::new(12));
        st.reopen(Offset::new(5), t0);
        assert_eq!(st.take_due_retry(t0), Some((Offset::new(5), 0)));
        assert!(st.reopened.contains(&Offset::new(5)));
        st.ack(Offset::new(5));
        assert!(st.reopened.is_empty());
        st.rewind(Offset::new(7));
        assert_eq!((st.floor, st.next_read), (Offset::new(7), Offset::new(7)));
        assert!(!st.is_done(Offset::new(8)));
    }

    #[test]
    fn ranges_round_trip() {
        let set: BTreeSet<Offset> = [3, 4, 5, 9, 11, 12].into_iter().map(Offset::new).collect();
        let flat = set_to_ranges(&set);
        assert_eq!(flat, vec![3, 6, 9, 10, 11, 13]);
        assert_eq!(ranges_to_set(&flat).unwrap(), set);
        assert!(ranges_to_set(&[5, 5]).is_err());
    }
}
