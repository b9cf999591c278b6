//! Durable consumers: a named position in the log with per-message acks,
//! redelivery and flow control, shared by any number of streams.
//!
//! A consumer's state is a *floor* (every offset below it is done) plus the
//! done offsets above the floor, so acks may arrive in any order. Messages
//! handed out are *leased* to one stream until acked, nacked or their ack
//! wait runs out; then they wait in the redelivery queue for the next stream
//! with room. Only the floor and the done set are persisted (on every ack, as
//! a group commit, before the ack returns); leases live in memory, so after a
//! restart every unacked message is delivered again — at least once.
//!
//! With ordering by key ([`Ordering`]), at most one message of each
//! ordering key is out (leased or waiting for its redelivery); the next of
//! that key is read but waits behind it, and goes out once it is done.
//!
//! A message may *supersede* the earlier ones of its key ([`Keyed::supersedes`],
//! an endpoint's coalescing): read while others of its key wait (behind
//! the one out, or the one out itself while it waits for its redelivery),
//! it takes their place and the earliest due time among them, and is
//! handed out with their offsets ([`Delivery::superseded`]); its taker
//! settles (acks) them before it.
//!
//! Flow control: a stream is handed nothing while it holds
//! [`PollFor::max_in_flight`] leases, and with [`Consumer::set_max_held`]
//! new messages are read only while fewer than that many are held at all
//! (leased, waiting for redelivery, or behind another of their key).
//!
//! Webhook endpoints are consumers too: the delivery workers and the gRPC
//! streams take messages through the one loop in [`drive`]. A worker's
//! leases are real ones; it renews those it is still sending
//! ([`Consumer::renew`]), so a lease runs out only when its holder died.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicU64, Ordering as AtomicOrdering},
        Mutex,
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    error::Result,
    model::{EventFilter, Offset, StoredEvent},
    store::Store,
};

#[cfg(test)]
mod coalesce_tests;
pub mod drive;
mod expire;
mod keys;
mod persist;
mod registry;
mod state;
#[cfg(test)]
mod tests;

pub use keys::Ordering;
pub use registry::{Consumers, Route};
use state::State;

/// Identifies one stream (or one delivery worker) attached to a consumer.
pub type StreamId = u64;

/// How a new consumer starts; ignored when the consumer already exists.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// First offset to deliver.
    pub start: Offset,
    /// Events to deliver.
    pub filter: EventFilter,
    /// Deliveries before a message is dead-lettered (0: no limit).
    pub max_deliveries: u32,
}

/// A durable consumer as [`Consumers::list`] reports it.
pub struct ConsumerSummary {
    /// Its name.
    pub name: String,
    /// The event types it was created with.
    pub event_types: Vec<String>,
    /// Every offset below this is done.
    pub floor: Offset,
    /// Deliveries before a message is dead-lettered (0: no limit).
    pub max_deliveries: u32,
    /// Dead-lettered offsets, in order.
    pub dead: Vec<Offset>,
    /// The tenant it belongs to (empty: global).
    pub tenant: String,
}

/// One message handed to a stream: by default the stored event, or what
/// the reader of [`Consumer::poll_with`] made of it.
#[derive(Debug, Clone)]
pub struct Delivery<E = StoredEvent> {
    /// The event.
    pub event: E,
    /// 1 on first delivery, then +1 per redelivery.
    pub attempt: u32,
    /// The offsets this message superseded (see [`Keyed::supersedes`]), in
    /// log order, not done yet: the taker acks them before this one (else
    /// they are delivered again on their own once this one is done).
    pub superseded: Vec<Offset>,
}

/// The result of asking a consumer for work.
#[derive(Debug)]
pub enum Poll<E = StoredEvent> {
    /// A message, now leased to the asking stream.
    Message(Box<Delivery<E>>),
    /// A message handed out before was due again but retention removed its
    /// event; it is now done. Ask again.
    Expired(Offset),
    /// Nothing to hand out now. Ask again when the head or the consumer
    /// changes, or at `wake_at` (a lease expiry or a delayed redelivery).
    Idle {
        /// When something becomes due without any other change.
        wake_at: Option<Instant>,
    },
}

/// Why the reader of [`Consumer::poll_with`] is asked for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The first read of an event past the consumer's position. Never
    /// below retention's cutoff: retention marks those done first.
    New,
    /// A message read before and due now: handed out before and due
    /// again, or its turn came after waiting behind another of its
    /// ordering key. Retention may have removed its event meanwhile; the
    /// reader must then say `None`.
    Again,
}

/// What a stream asks of [`Consumer::poll`].
#[derive(Debug, Clone, Copy)]
pub struct PollFor {
    /// The asking stream.
    pub stream: StreamId,
    /// It is handed nothing while it holds this many leased messages.
    pub max_in_flight: u32,
    /// How long a message handed out stays leased.
    pub ack_wait: Duration,
    /// The time the poll is made at.
    pub now: Instant,
    /// Whether new messages may be read, or only due redeliveries.
    pub read_new: bool,
    /// Whether the reader of [`Consumer::poll_with`] applies the filter
    /// itself to every event it reads new (answering `None` for one that
    /// fails it). A filter that tests only the type is then left to it:
    /// the reader decodes the event anyway, so reading the type and
    /// attributes first (a second read of the record) would be wasted.
    /// Filters that test more are still applied first, so events most
    /// endpoints skip are never read whole.
    pub reader_filters: bool,
}

/// What a consumer orders messages by: the event's ordering key.
pub trait Keyed {
    /// The event's ordering key.
    fn ordering_key(&self) -> &str;

    /// Whether the event, read new while earlier messages of its key wait
    /// (not leased), replaces them: it is handed out in their place, with
    /// their offsets, when the earliest of them was due. Only with
    /// ordering; no by default.
    fn supersedes(&self) -> bool {
        false
    }
}

impl Keyed for StoredEvent {
    fn ordering_key(&self) -> &str {
        &self.event.ordering_key
    }
}

/// What [`Consumer::poll_with`] does next.
enum Next<E> {
    /// Read this offset, now leased, as this attempt.
    Read(Offset, Read, u32),
    /// Answer this.
    Done(Poll<E>),
}

/// Most events one [`Consumer::poll`] reads before it yields.
const SCAN_SLICE: usize = 1024;
/// With ordering, new events are read only while fewer than this many wait
/// behind another message of their key: a key that is stuck (a slow
/// consumer, a receiver that is down) must not pull the whole log into
/// memory.
pub const MAX_BEHIND: usize = 1024;
/// Most unread events [`Consumer::backlog`] reads to test them against a
/// filter.
pub const BACKLOG_SCAN: u64 = 10_000;

/// One durable consumer.
pub struct Consumer {
    name: String,
    filter: Mutex<EventFilter>,
    store: Store,
    state: Mutex<State>,
    /// Set once the consumer is deleted: nothing more is persisted.
    removed: std::sync::atomic::AtomicBool,
    /// Bumped whenever a lease ends, so idle streams look again.
    changed: watch::Sender<u64>,
    /// Orders persists: records are encoded and queued under this lock, so
    /// the writer stores them in the order they were taken.
    persist_order: tokio::sync::Mutex<()>,
    /// The floor of the last durable record.
    saved_floor: AtomicU64,
}

impl Consumer {
    fn new(name: String, filter: EventFilter, store: Store, state: State) -> Self {
        let saved_floor = AtomicU64::new(state.floor.get());
        Self {
            name,
            filter: Mutex::new(filter),
            removed: Default::default(),
            store,
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            persist_order: tokio::sync::Mutex::new(()),
            saved_floor,
        }
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current filter.
    pub fn filter(&self) -> EventFilter {
        self.filter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the filter for messages not yet read (an endpoint's filter
    /// lives in the endpoint record, not here).
    pub fn set_filter(&self, filter: EventFilter) {
        *self.filter.lock().unwrap_or_else(|p| p.into_inner()) = filter;
    }

    /// How messages are ordered.
    pub fn ordering(&self) -> Ordering {
        self.lock().ordering
    }

    /// Orders messages handed out from now on by `ordering` (in memory:
    /// [`Consumers::open_ordered`] persists a gRPC consumer's ordering).
    /// Messages that waited behind another of their key are due at once.
    pub fn set_ordering(&self, ordering: Ordering) {
        self.lock().set_ordering(ordering);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Delivers everything from `from` on again (done or not), keeping what
    /// is before it as it is. Persisted before returning.
    pub async fn rewind(&self, from: Offset) -> Result<()> {
        self.lock().rewind(from.max(Offset::FIRST));
        self.changed.send_modify(|v| *v += 1);
        self.persist().await
    }

    /// Moves the consumer to `to`: before it, everything counts as done;
    /// from it on, everything is delivered (again). Persisted before
    /// returning.
    pub async fn reset(&self, to: Offset) -> Result<()> {
        self.lock().reset(to.max(Offset::FIRST));
        self.changed.send_modify(|v| *v += 1);
        self.persist().await
    }

    /// Delivers every dead letter again, with fresh attempts; returns how
    /// many. Persisted before returning.
    pub async fn redrive(&self) -> Result<u64> {
        let n = self.lock().redrive(Instant::now());
        self.changed.send_modify(|v| *v += 1);
        self.persist().await?;
        Ok(n)
    }

    /// Hands one done offset back for redelivery now. Persisted before
    /// returning.
    pub async fn reopen(&self, offset: Offset) -> Result<()> {
        self.lock().reopen(offset, Instant::now());
        self.changed.send_modify(|v| *v += 1);
        self.persist().await
    }

    /// Persists the position now.
    pub async fn save(&self) -> Result<()> {
        self.persist().await
    }

    /// The first offset not yet done: everything before it was acked.
    pub fn floor(&self) -> Offset {
        self.lock().floor
    }

    /// Events below `head` this consumer has still to deliver: not done,
    /// and passing `filter`'s type and attribute tests. With a filter, the
    /// first [`BACKLOG_SCAN`] unread events are read to test them; every
    /// event past those counts (an upper bound for a long backlog).
    pub fn backlog(&self, head: Offset, filter: &EventFilter) -> Result<u64> {
        let (floor, done) = {
            let st = self.lock();
            let done: BTreeSet<Offset> = st.done.range(st.floor..head).copied().collect();
            (st.floor, done)
        };
        if floor >= head {
            return Ok(0);
        }
        if filter.is_all() {
            return Ok(head - floor - done.len() as u64);
        }
        let scan_end = head.min(floor + BACKLOG_SCAN);
        let mut n = head - scan_end;
        let mut from = floor;
        while from < scan_end {
            let records = self.store.local()?.read_records(from, 1024)?;
            let Some(last) = records.last().map(|r| r.offset) else {
                break;
            };
            for r in records.iter().filter(|r| r.offset < scan_end) {
                if !done.contains(&r.offset)
                    && crate::store::decode_meta_record(r.offset, &r.record)
                        .is_ok_and(|m| filter.matches_meta(&m))
                {
                    n += 1;
                }
            }
            from = last + 1;
        }
        Ok(n)
    }

    /// How far the floor is ahead of the last durable record. Events the
    /// filter skips move the floor without an ack, so nothing persists it;
    /// callers save once this grows, or a restart reads them all again.
    pub fn unsaved(&self) -> u64 {
        self.floor()
            .distance_from(Offset::new(self.saved_floor.load(AtomicOrdering::Relaxed)))
    }

    /// Watches for lease changes (acks, nacks, released streams).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Hands `p.stream` its next message, if it has room under
    /// `p.max_in_flight`: first a message due for redelivery, else (when
    /// `p.read_new`) the next unread one that passes the filter. The message
    /// is leased for `p.ack_wait`.
    pub fn poll(&self, p: PollFor) -> Result<Poll> {
        self.poll_with(p, |offset, _| self.store.local()?.get(offset))
    }

    /// Like [`Consumer::poll`], with events read by `read` (`None`: not in
    /// the log): the delivery workers read through a cache shared by all
    /// endpoints. `read` runs outside the consumer's lock, with the offset
    /// already leased to `stream` (so no other stream takes it meanwhile):
    /// reading and decoding an event takes microseconds, and acks from
    /// other tasks must not queue behind it (blocking their threads).
    ///
    /// With ordering, an event read whose key has another message out is
    /// not handed out: it waits behind that one (its lease ends, and the
    /// read does not count as a delivery) and the poll goes on.
    pub fn poll_with<E: Keyed>(
        &self,
        p: PollFor,
        mut read: impl FnMut(Offset, Read) -> Result<Option<E>>,
    ) -> Result<Poll<E>> {
        loop {
            let (offset, kind, attempt) = match self.lease_next(&p)? {
                Next::Read(offset, kind, attempt) => (offset, kind, attempt),
                Next::Done(poll) => return Ok(poll),
            };
            match read(offset, kind) {
                Ok(Some(event)) => {
                    let mut st = self.lock();
                    if let Some(key) = st.ordering.key(event.ordering_key()) {
                        if !st.claim(offset, key, event.supersedes(), p.now) {
                            continue;
                        }
                    }
                    let superseded = st.riders_of(offset);
                    return Ok(Poll::Message(Box::new(Delivery {
                        event,
                        attempt,
                        superseded,
                    })));
                }
                Ok(None) => {
                    // Removed by retention before it was acked (or, read
                    // new, not for this reader): done, but for a
                    // redelivery the caller may want to record that it
                    // never got through.
                    self.lock().ack(offset);
                    if kind == Read::Again {
                        return Ok(Poll::Expired(offset));
                    }
                }
                Err(e) => {
                    // Not handed out: due again at once, as the same attempt.
                    self.lock().hand_back(offset, p.now);
                    return Err(e);
                }
            }
        }
    }

    /// Under the lock: leases `stream` the next offset to read (a due
    /// redelivery first, then the next new one its filter passes), or says
    /// what to answer instead.
    fn lease_next<E>(&self, p: &PollFor) -> Result<Next<E>> {
        let PollFor {
            stream,
            max_in_flight,
            ack_wait,
            now,
            read_new,
            reader_filters,
        } = *p;
        let mut st = self.lock();
        st.expire_leases(now);
        if st.load(stream) >= max_in_flight {
            return Ok(Next::Done(Poll::Idle {
                wake_at: st.next_wake(),
            }));
        }
        if let Some(offset) = st.expired.pop() {
            return Ok(Next::Done(Poll::Expired(offset)));
        }
        if let Some((offset, attempt)) = st.lease_due_retry(now, stream, now + ack_wait) {
            return Ok(Next::Read(offset, Read::Again, attempt));
        }
        // With ordering, stop reading once enough wait behind their keys;
        // with a bound on what is held, once that many are.
        let room_behind = st.ordering == Ordering::None || st.behind() < MAX_BEHIND;
        let head = if read_new && room_behind && st.room_to_read() {
            self.store.head()
        } else {
            Offset::ZERO
        };
        let filter = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        // The reader tests a filter of the type alone on what it reads.
        let left_to_reader = reader_filters && filter.tests_only_type();
        let check_meta = !(filter.is_all() || left_to_reader);
        let mut scanned = 0;
        while st.next_read < head {
            if scanned == SCAN_SLICE {
                // A long run of events the filter skips is read in slices,
                // so one consumer never holds a runtime thread for long.
                return Ok(Next::Done(Poll::Idle { wake_at: Some(now) }));
            }
            scanned += 1;
            let offset = st.next_read;
            st.next_read += 1;
            if st.is_done(offset) || st.is_held(offset) {
                continue;
            }
            // The type and attributes first: with many endpoints, most
            // events are skipped by most filters, and decoding whole
            // events for that dominated the CPU.
            if check_meta
                && !self
                    .store
                    .local()?
                    .meta(offset)?
                    .is_some_and(|m| filter.matches_meta(&m))
            {
                st.mark_done(offset);
                continue;
            }
            st.lease(offset, stream, 1, now + ack_wait);
            return Ok(Next::Read(offset, Read::New, 1));
        }
        Ok(Next::Done(Poll::Idle {
            wake_at: st.next_wake(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // State methods keep it consistent at every return point; a panic in
        // one cannot leave a half-applied change worth refusing to serve.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
