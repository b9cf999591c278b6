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
//! Webhook endpoints are consumers too: the delivery scheduler takes
//! messages with [`Consumer::poll`] exactly as a gRPC stream does.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering as AtomicOrdering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    error::{Error, Result},
    model::{EventFilter, EventType, Offset, StoredEvent},
    store::{ConsumerRecord, StateWrites, Store},
    tenant::Scope,
};

mod state;

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
    /// A message handed out before and due again. Retention may have
    /// removed its event meanwhile; the reader must then say `None`.
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
/// Most unread events [`Consumer::backlog`] reads to test them against a
/// filter.
pub const BACKLOG_SCAN: u64 = 10_000;

/// All consumers known to this broker.
pub struct Consumers {
    store: Store,
    active: Mutex<HashMap<String, Arc<Consumer>>>,
    creating: tokio::sync::Mutex<()>,
}

impl Consumers {
    /// An empty registry; consumers are loaded from the store on first use.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            active: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    /// The named consumer, created durably from `spec` if it does not exist.
    /// An existing consumer keeps its position; a different non-empty filter
    /// is an error.
    pub async fn open(&self, name: &str, spec: CreateSpec) -> Result<Arc<Consumer>> {
        // Serialises creation so two streams cannot create one name twice.
        let _creating = self.creating.lock().await;
        if let Some(c) = self.load(name)? {
            let current = c.filter();
            if let Some(t) = spec.filter.tenant() {
                if current.tenant() != Some(t) {
                    // Names are one namespace: say only that it is taken,
                    // not whose it is.
                    return Err(Error::invalid(
                        "consumer",
                        format!("the name {name:?} is not available; use another consumer name"),
                    ));
                }
            }
            let max = c.lock().max_deliveries;
            if spec.max_deliveries != 0 && spec.max_deliveries != max {
                return Err(Error::invalid(
                    "max_deliveries",
                    format!(
                        "consumer {name:?} was created with max_deliveries {max}; send that, \
                         or 0, or use another consumer name"
                    ),
                ));
            }
            if !spec.filter.types().is_empty() && spec.filter.types() != current.types() {
                return Err(Error::invalid(
                    "event_types",
                    format!(
                        "consumer {name:?} was created with event_types {:?}; \
                         send those, or none, or use another consumer name",
                        current.types()
                    ),
                ));
            }
            return Ok(c);
        }
        let consumer = Arc::new(Consumer::new(
            name.to_owned(),
            spec.filter,
            self.store.clone(),
            {
                let mut st = State::new(spec.start, BTreeSet::new(), BTreeSet::new());
                st.max_deliveries = spec.max_deliveries;
                st
            },
        ));
        consumer.persist().await?;
        self.lock().insert(name.to_owned(), consumer.clone());
        tracing::info!(consumer = name, start = spec.start, "consumer created");
        Ok(consumer)
    }

    /// The named consumer if it exists.
    pub fn get(&self, name: &str) -> Result<Arc<Consumer>> {
        self.get_in(&Scope::Global, name)
    }

    /// The named consumer if it exists and `scope` sees it: another
    /// tenant's is `NOT_FOUND`, like one that does not exist.
    pub fn get_in(&self, scope: &Scope, name: &str) -> Result<Arc<Consumer>> {
        let not_found = || Error::NotFound(format!("consumer {name:?} does not exist"));
        let c = self.load(name)?.ok_or_else(not_found)?;
        scope.check(c.filter().tenant().unwrap_or(""), not_found)?;
        Ok(c)
    }

    fn load(&self, name: &str) -> Result<Option<Arc<Consumer>>> {
        if let Some(c) = self.lock().get(name) {
            return Ok(Some(c.clone()));
        }
        let Some(record) = self.store.consumers().get(name)? else {
            return Ok(None);
        };
        let filter = EventFilter::types_only(
            record
                .event_types
                .iter()
                .map(|t| EventType::parse(t).map_err(Error::Corrupt))
                .collect::<Result<_>>()?,
        );
        let filter = if record.tenant.is_empty() {
            filter
        } else {
            filter.with_tenant(record.tenant.clone())
        };
        let done = state::ranges_to_set(&record.done_ranges)
            .map_err(|e| Error::Corrupt(format!("consumer {name:?}: {e}")))?;
        let consumer = Arc::new(Consumer::new(
            name.to_owned(),
            filter,
            self.store.clone(),
            {
                let mut st = State::new(
                    record.floor,
                    done,
                    record.reopened.iter().copied().collect(),
                );
                st.max_deliveries = record.max_deliveries;
                st.dead = state::ranges_to_set(&record.dead_ranges)
                    .map_err(|e| Error::Corrupt(format!("consumer {name:?}: {e}")))?;
                st
            },
        ));
        // Another task may have loaded it meanwhile; keep the first.
        Ok(Some(
            self.lock()
                .entry(name.to_owned())
                .or_insert(consumer)
                .clone(),
        ))
    }

    /// Forgets the named consumer and deletes its persisted state. Streams
    /// still attached keep their handle but their acks no longer persist.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let _creating = self.creating.lock().await;
        if let Some(c) = self.lock().remove(name) {
            c.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.store.consumers().delete(name).await
    }

    /// Every durable gRPC consumer (not endpoints), in name order.
    pub fn list(&self) -> Result<Vec<ConsumerSummary>> {
        let mut out = Vec::new();
        for kv in self.store.consumers().list(|name| name.starts_with('@')) {
            let (name, record) = kv?;
            // The live state of a loaded consumer; the stored one otherwise
            // (listing loads nothing).
            let live = self.lock().get(&name).cloned();
            let (floor, max_deliveries, dead) = match live {
                Some(c) => {
                    let st = c.lock();
                    (
                        st.floor,
                        st.max_deliveries,
                        st.dead.iter().copied().collect(),
                    )
                }
                None => (
                    record.floor,
                    record.max_deliveries,
                    state::ranges_to_set(&record.dead_ranges)
                        .map_err(|e| Error::Corrupt(format!("consumer {name:?}: {e}")))?
                        .into_iter()
                        .collect(),
                ),
            };
            out.push(ConsumerSummary {
                name,
                event_types: record.event_types,
                floor,
                max_deliveries,
                dead,
                tenant: record.tenant,
            });
        }
        Ok(out)
    }

    /// Every durable gRPC consumer (not endpoints) with its lag behind
    /// `head`, for metrics.
    pub fn lags(&self, head: Offset) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|c| (c.name, head.saturating_sub(c.floor)))
            .collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Consumer>>> {
        // A panic while holding this lock leaves the map itself consistent
        // (single inserts), so poisoning is safe to ignore.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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
        let saved_floor = AtomicU64::new(state.floor);
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

    /// Delivers everything from `from` on again (done or not), keeping what
    /// is before it as it is. Persisted before returning.
    pub async fn rewind(&self, from: Offset) -> Result<()> {
        self.lock().rewind(from.max(1));
        self.changed.send_modify(|v| *v += 1);
        self.persist().await
    }

    /// Moves the consumer to `to`: before it, everything counts as done;
    /// from it on, everything is delivered (again). Persisted before
    /// returning.
    pub async fn reset(&self, to: Offset) -> Result<()> {
        self.lock().reset(to.max(1));
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

    /// Marks done every offset below `cutoff` that is not done and not
    /// leased, and returns the ones nobody held. Offsets that were waiting
    /// for redelivery are reported by the next poll as [`Poll::Expired`], so
    /// whoever handed them back learns their fate; leased ones are left to
    /// their holder, who sees `Poll::Expired` when it hands them back.
    /// Retention calls this before it removes those events; the caller
    /// persists with [`Consumer::save`].
    pub fn expire_below(&self, cutoff: Offset) -> Vec<Offset> {
        let mut unheld = Vec::new();
        {
            let mut st = self.lock();
            let mut o = st.floor;
            while o < cutoff {
                if !st.is_done(o) && !st.is_leased(o) {
                    if st.cancel_retry(o) {
                        st.expired.push(o);
                    } else {
                        unheld.push(o);
                    }
                    st.mark_done(o);
                }
                o += 1;
            }
        }
        self.changed.send_modify(|v| *v += 1);
        unheld
    }

    /// Marks done those of `offsets` that are neither done nor held
    /// (leased or waiting for redelivery) and returns them. Erasure calls
    /// this before it erases those events, so none is read in between and
    /// skipped unrecorded, then [`Consumer::expire_waiting`] once they are
    /// erased; the caller persists with [`Consumer::save`].
    pub fn expire_unread(&self, offsets: &[Offset]) -> Vec<Offset> {
        let mut unread = Vec::new();
        {
            let mut st = self.lock();
            for &o in offsets {
                if !st.is_done(o) && !st.is_held(o) {
                    st.mark_done(o);
                    unread.push(o);
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
        unread
    }

    /// Ends the wait of those of `offsets` waiting for redelivery (now, or
    /// when their holder hands them back to wait): done, and reported by
    /// the next poll as [`Poll::Expired`], so the holder records their fate
    /// (after an erasure, with the tombstone's reason).
    pub fn expire_waiting(&self, offsets: &[Offset]) {
        {
            let mut st = self.lock();
            for &o in offsets {
                if st.is_done(o) {
                    continue;
                }
                if st.is_leased(o) {
                    st.expire_on_return.insert(o);
                } else if st.cancel_retry(o) {
                    st.expired.push(o);
                    st.mark_done(o);
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
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
            let records = self.store.read_records(from, 1024)?;
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
            .saturating_sub(self.saved_floor.load(AtomicOrdering::Relaxed))
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
        self.poll_with(p, |offset, _| self.store.get(offset))
    }

    /// Like [`Consumer::poll`], with events read by `read` (`None`: not in
    /// the log): the delivery workers read through a cache shared by all
    /// endpoints. `read` runs outside the consumer's lock, with the offset
    /// already leased to `stream` (so no other stream takes it meanwhile):
    /// reading and decoding an event takes microseconds, and acks from
    /// other tasks must not queue behind it (blocking their threads).
    pub fn poll_with<E>(
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
                Ok(Some(event)) => return Ok(Poll::Message(Box::new(Delivery { event, attempt }))),
                Ok(None) => {
                    // Removed by retention before it was acked: done, but for
                    // a redelivery the caller may want to record that it
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
        let head = if read_new { self.store.head() } else { 0 };
        let filter = self.filter.lock().unwrap_or_else(|p| p.into_inner());
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
            if !filter.is_all()
                && !self
                    .store
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

    /// Marks `offsets` done and persists the position before returning.
    /// Acking an offset twice, or one whose lease expired, is fine.
    pub async fn ack(&self, offsets: &[Offset]) -> Result<()> {
        let head = self.store.head();
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == 0) {
            return Err(Error::invalid(
                "offsets",
                format!("offset {bad} is not in the log (head is {head})"),
            ));
        }
        {
            let mut st = self.lock();
            for &o in offsets {
                st.ack(o);
            }
        }
        self.changed.send_modify(|v| *v += 1);
        self.persist().await
    }

    /// Like [`Consumer::ack`], with `records` written in the same group
    /// commit: the writer applies them before the consumer position, so
    /// the ack is never durable without them.
    ///
    /// The offsets are marked done only once this write holds the persist
    /// order, just before it is queued: marked earlier, a concurrent
    /// persist could snapshot them as done and reach the writer first,
    /// making the ack durable without its records (a crash then loses the
    /// delivery record and never sends the event again).
    pub async fn ack_with(&self, offsets: &[Offset], records: StateWrites) -> Result<()> {
        let head = self.store.head();
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == 0) {
            return Err(Error::invalid(
                "offsets",
                format!("offset {bad} is not in the log (head is {head})"),
            ));
        }
        self.persist_acking(offsets, records).await
    }

    /// Ends the leases of `offsets` (held by any stream) and queues them for
    /// redelivery after `delay`.
    pub fn nack(&self, offsets: &[Offset], delay: Duration) -> Result<()> {
        let head = self.store.head();
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == 0) {
            return Err(Error::invalid(
                "offsets",
                format!("offset {bad} is not in the log (head is {head})"),
            ));
        }
        let not_before = Instant::now() + delay;
        {
            let mut st = self.lock();
            for &o in offsets {
                st.nack(o, not_before);
                // Erased while it was out (see `expire_waiting`).
                if st.expire_on_return.remove(&o) && st.cancel_retry(o) {
                    st.expired.push(o);
                    st.mark_done(o);
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Hands every message leased to `stream` back for immediate redelivery
    /// (the stream went away).
    pub fn release(&self, stream: StreamId) {
        let released = self.lock().release(stream, Instant::now());
        if released > 0 {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    async fn persist(&self) -> Result<()> {
        self.persist_acking(&[], StateWrites::new()).await
    }

    /// Marks `acks` done and persists the position, with `records` in the
    /// same write.
    async fn persist_acking(&self, acks: &[Offset], records: StateWrites) -> Result<()> {
        let order = self.persist_order.lock().await;
        let record = {
            let mut st = self.lock();
            for &o in acks {
                st.ack(o);
            }
            ConsumerRecord {
                floor: st.floor,
                event_types: self
                    .filter()
                    .types()
                    .iter()
                    .map(|t| t.as_str().to_owned())
                    .collect(),
                done_ranges: state::set_to_ranges(&st.done),
                reopened: st.reopened.iter().copied().collect(),
                max_deliveries: st.max_deliveries,
                dead_ranges: state::set_to_ranges(&st.dead),
                tenant: self.filter().tenant().unwrap_or_default().to_owned(),
            }
        };
        if !acks.is_empty() {
            self.changed.send_modify(|v| *v += 1);
        }
        let durable = if !self.removed.load(std::sync::atomic::Ordering::SeqCst) {
            self.store
                .consumers()
                .submit_save(&self.name, &record, records)
                .await?
        } else if !records.is_empty() {
            self.store.submit_state(records).await?
        } else {
            return Ok(());
        };
        // Queued in order; concurrent acks now share the group commit.
        drop(order);
        durable.await.map_err(|_| Error::ShuttingDown)??;
        self.saved_floor
            .fetch_max(record.floor, AtomicOrdering::Relaxed);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // State methods keep it consistent at every return point; a panic in
        // one cannot leave a half-applied change worth refusing to serve.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_event as event;

    /// The read runs with the offset leased, outside the lock: the lease
    /// already counts, and an offset whose read failed is handed out
    /// again rather than skipped.
    #[tokio::test]
    async fn a_failed_read_hands_the_offset_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = crate::store::open_for_test(dir.path());
        let appended = store.append(vec![event("e1"), event("e2")]).await.unwrap();
        let (first, second) = (appended[0].offset, appended[1].offset);
        let consumers = Consumers::new(store.clone());
        let c = consumers
            .open(
                "c",
                CreateSpec {
                    start: first,
                    filter: EventFilter::types_only(Vec::new()),
                    max_deliveries: 0,
                },
            )
            .await
            .unwrap();
        let wait = Duration::from_secs(30);
        let now = Instant::now();

        let p = PollFor {
            stream: 1,
            max_in_flight: 10,
            ack_wait: wait,
            now,
            read_new: true,
        };
        let failed = c.poll_with(p, |offset, _| {
            assert_eq!(c.lock().load(1), 1, "leased while it is read");
            assert!(c.lock().is_leased(offset));
            Err::<Option<Offset>, _>(Error::Corrupt("unreadable".into()))
        });
        assert!(failed.is_err());
        assert_eq!(c.lock().load(1), 0);

        let mut got = Vec::new();
        for _ in 0..2 {
            match c
                .poll_with(p, |offset, kind| Ok(Some((offset, kind))))
                .unwrap()
            {
                Poll::Message(d) => got.push((d.event, d.attempt)),
                other => panic!("expected a message, got {other:?}"),
            }
        }
        // The failed read was not an attempt: the first delivery is still
        // attempt 1.
        assert_eq!(
            got,
            vec![((first, Read::Again), 1), ((second, Read::New), 1)]
        );
        assert_eq!(c.lock().load(1), 2);
    }

    /// Erasure's two steps: unread offsets are done at once (and
    /// returned); one waiting for redelivery, and one leased that is
    /// handed back to wait only afterwards, are reported as expired.
    #[tokio::test]
    async fn erased_offsets_are_expired_whether_unread_waiting_or_leased() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = crate::store::open_for_test(dir.path());
        let ids = ["e1", "e2", "e3", "e4"];
        store.append(ids.map(event).to_vec()).await.unwrap();
        let consumers = Consumers::new(store.clone());
        let spec = CreateSpec {
            start: 1,
            filter: EventFilter::types_only(Vec::new()),
            max_deliveries: 0,
        };
        let c = consumers.open("c", spec).await.unwrap();
        let p = PollFor {
            stream: 1,
            max_in_flight: 2,
            ack_wait: Duration::from_secs(30),
            now: Instant::now(),
            read_new: true,
        };
        let take = || match c.poll_with(p, |o, _| Ok(Some(o))).unwrap() {
            Poll::Message(d) => d.event,
            other => panic!("expected a message, got {other:?}"),
        };
        let (waiting, leased) = (take(), take());
        assert_eq!((waiting, leased), (1, 2));
        c.nack(&[waiting], Duration::from_secs(3600)).unwrap();

        let all = [1, 2, 3];
        assert_eq!(c.expire_unread(&all), [3], "only the unread one");
        c.expire_waiting(&all);
        let next = |c: &Consumer| c.poll_with(p, |o, _| Ok(Some(o))).unwrap();
        assert!(matches!(next(&c), Poll::Expired(1)), "the waiting one");
        // The leased one expires when it is handed back to wait.
        c.nack(&[leased], Duration::from_secs(3600)).unwrap();
        assert!(matches!(next(&c), Poll::Expired(2)), "the leased one");
        // Then the next event: 3 is done.
        match next(&c) {
            Poll::Message(d) => assert_eq!(d.event, 4),
            other => panic!("expected offset 4, got {other:?}"),
        }
    }
}
