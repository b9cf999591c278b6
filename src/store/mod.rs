//! The durable log and the state beside it.
//!
//! Events live in an append-only segment log ([`log`], `<data>/events/`);
//! the small, mutable state tables (consumer positions, endpoints,
//! deliveries, attempts) in sled. Reads go straight to either from any
//! task. Every write goes through one of two writer threads ([`writer`]),
//! one for the log and one for the state, each folding whatever is queued
//! into a group commit made durable with a real fsync (sled's `flush()`
//! alone does not fsync on Linux). Only then are the callers answered and
//! the new head published, so an acknowledged write is on disk and a
//! subscriber never sees an event that could still be lost.

pub mod baseline;
mod erase;
#[cfg(test)]
mod faults;
pub mod jetstream;
mod keys;
mod log;
mod open;
mod recover;
#[cfg(test)]
mod redact_tests;
mod rewrite;
mod state;
mod state_db;
mod tables;
mod writer;

pub use erase::{Erasure, Removal, Unwanted};
pub use rewrite::{rewrite_endpoints, Rewritten};
pub use state::{AuditRecords, ConsumerRecords, DeliveryRecords, EndpointRecords, StateWrites};

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use tokio::sync::{mpsc, oneshot, watch};

pub use keys::{decode_meta_record, split_event_record, unix_nanos, ConsumerRecord};

use crate::{
    error::{Error, Result},
    metrics::Metrics,
    model::{Appended, EventMeta, NewEvent, Offset, StoredEvent, FIRST_OFFSET},
};
pub use log::Recovery;
use log::{fs::Fs, EventLog, LogOptions};
use open::{open_sled, remove_unfinished_snapshots, sled_config};
use recover::{check_state_against_head, migrate_sled_events, scrub};
use state_db::{StateDb, TableRef};
use tables::{Mutation, Table, Tables};
use writer::{Encoded, LogOp, LogWriterThread, StateOp, StateSyncThread, StateWriterThread};

/// The config key of the state store's page-cache size
/// ([`StoreConfig::cache_bytes`]).
pub use crate::config::STATE_CACHE_KEY;

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory.
    pub path: PathBuf,
    /// sled page-cache size in bytes.
    pub cache_bytes: u64,
    /// Size at which the event log starts a new segment file.
    pub segment_bytes: u64,
    /// Most operations in one group commit.
    pub max_group: usize,
    /// How long an event-log commit of few events waits for more while the
    /// runtime that opened the store is saturated (zero: never).
    pub commit_delay: std::time::Duration,
    /// Where commit sizes and appended events are counted.
    pub metrics: Arc<Metrics>,
    /// What opening does with damaged acknowledged records.
    pub recovery: Recovery,
    /// Zero the active log segment ahead of the writer.
    pub zero_fill: bool,
}

impl StoreConfig {
    fn log_options(&self, fs: Arc<dyn Fs>) -> LogOptions {
        LogOptions {
            segment_bytes: self.segment_bytes,
            recovery: self.recovery,
            zero_fill: self.zero_fill,
            fs,
        }
    }
}

/// One stored event record, undecoded.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Its offset.
    pub offset: Offset,
    /// The encoded [`keys::event_record::EventRecord`].
    pub record: bytes::Bytes,
}

impl RawRecord {
    /// The event it stores (what [`Store::get`] returns for its offset).
    pub fn decode(&self) -> Result<StoredEvent> {
        keys::decode_event(&keys::offset_key(self.offset), &self.record)
    }
}

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<EventLog>,
    /// The state tables, reopened in place after a failed write.
    state: Arc<StateDb>,
    /// Taken by [`Store::close`]: once every sender is gone the writers
    /// drain their queues and exit, even if stray handles outlive shutdown.
    ops: std::sync::Mutex<Option<Senders>>,
    head: watch::Receiver<Offset>,
    health: watch::Receiver<StoreHealth>,
    /// Counts finished redactions ([`Store::erasures`]).
    erasures: std::sync::atomic::AtomicU64,
    /// Where appends are stamped for the stall log.
    metrics: Arc<Metrics>,
}

/// What keeps the store from taking writes, if anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Why the event log stopped taking appends (a failed `fdatasync`):
    /// until a restart.
    pub log: Option<String>,
    /// Why state writes are failing (a full disk, say); cleared once a
    /// write succeeds again (the state writer probes, and reopens the state
    /// database, meanwhile).
    pub state: Option<String>,
}

impl StoreHealth {
    /// The first problem, if any.
    pub fn problem(&self) -> Option<&str> {
        self.log.as_deref().or(self.state.as_deref())
    }
}

#[derive(Clone)]
struct Senders {
    log: mpsc::Sender<LogOp>,
    state: mpsc::Sender<StateOp>,
}

/// Owns the writer threads; [`WriterHandle::join`] waits until every write
/// has been committed and sled is closed.
pub struct WriterHandle(Vec<std::thread::JoinHandle<()>>);

impl WriterHandle {
    /// Blocks until the writers have drained their queues and exited, which
    /// happens once every [`Store`] handle is dropped (or it is closed).
    pub fn join(self) {
        for thread in self.0 {
            if thread.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

impl Store {
    /// Queues an append of `events` (all or nothing) and returns a receiver
    /// for its durable outcome. Queuing waits only when the writer's queue is
    /// full, so a caller can pipeline several appends and await them in order.
    pub async fn submit_append(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>>>> {
        let (reply, rx) = oneshot::channel();
        let queued = self.inner.metrics.stall.now();
        let events = events
            .into_iter()
            .map(|e| Encoded::new(e, queued))
            .collect();
        self.senders()?
            .log
            .send(LogOp::Append { events, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Appends `events` (all or nothing) and waits until they are durable.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>> {
        let rx = self.submit_append(events).await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Queues `mutations` (applied atomically per table, in order, after any
    /// write queued earlier) and returns a receiver for the durable outcome.
    async fn submit_write(
        &self,
        mutations: Vec<Mutation>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.senders()?
            .state
            .send(StateOp { mutations, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Applies `mutations` and waits until they are durable.
    async fn write(&self, mutations: Vec<Mutation>) -> Result<()> {
        let rx = self.submit_write(mutations).await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Removes every event below `before` (at most every event: offsets go
    /// on from the head all the same) with its id entry. Returns how many
    /// were removed.
    pub async fn truncate(&self, before: Offset) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.senders()?
            .log
            .send(LogOp::Truncate { before, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Bytes the event log and the state database occupy on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.inner.log.size() + self.inner.state.current()?.db.size_on_disk()?)
    }

    fn senders(&self) -> Result<Senders> {
        self.inner
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::ShuttingDown)
    }

    /// Stops taking writes: queued ones are still committed, later ones fail
    /// with `ShuttingDown`, and the writer exits once the queue is empty.
    pub fn close(&self) {
        self.inner
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Read access to a state table (`UNAVAILABLE` while the state
    /// database is being reopened). Writes go through [`Store::write`].
    fn table(&self, table: Table) -> Result<TableRef> {
        self.inner.state.table(table)
    }

    /// The next offset to be written: every durable event is below it.
    pub fn head(&self) -> Offset {
        *self.inner.head.borrow()
    }

    /// Watches the head; it changes after every group commit that appended.
    pub fn watch_head(&self) -> watch::Receiver<Offset> {
        self.inner.head.clone()
    }

    /// Watches what keeps the store from taking writes: after a failed
    /// `fdatasync` nothing more is appended until a restart; failing state
    /// writes clear once a write works again (the state writer probes and
    /// reopens the state database meanwhile, see `state_db`). The broker
    /// reports NOT_SERVING meanwhile.
    pub fn watch_health(&self) -> watch::Receiver<StoreHealth> {
        self.inner.health.clone()
    }

    /// The oldest offset in the log (the head when it is empty).
    pub fn first_offset(&self) -> Result<Offset> {
        Ok(self.inner.log.first().min(self.head()))
    }

    /// The event at `offset`, if it is durable and still in the log (an
    /// erased one is not: see [`Store::erasure`]).
    pub fn get(&self, offset: Offset) -> Result<Option<StoredEvent>> {
        self.live_record(offset)?
            .map(|record| keys::decode_event(&keys::offset_key(offset), &record))
            .transpose()
    }

    /// The type and attributes of the event at `offset`, if it is durable
    /// and still in the log: for filters, much cheaper than [`Store::get`].
    pub fn meta(&self, offset: Offset) -> Result<Option<EventMeta>> {
        self.live_record(offset)?
            .map(|record| keys::decode_meta_record(offset, &record))
            .transpose()
    }

    /// The record at `offset` if it is durable, in the log and not a
    /// tombstone.
    fn live_record(&self, offset: Offset) -> Result<Option<bytes::Bytes>> {
        if offset >= self.head() {
            return Ok(None);
        }
        Ok(self
            .inner
            .log
            .get(offset)?
            .filter(|record| !is_tombstone(record)))
    }

    /// Up to `limit` durable events from `from` on (from the first offset,
    /// if `from` is below it), in log order.
    pub fn read_from(&self, from: Offset, limit: usize) -> Result<Vec<StoredEvent>> {
        self.read_records(from, limit)?
            .into_iter()
            .map(|r| keys::decode_event(&keys::offset_key(r.offset), &r.record))
            .collect()
    }

    /// Up to `limit` durable records from `from` on (from the first offset,
    /// if `from` is below it), in log order, as stored: each an encoded
    /// [`keys::event_record::EventRecord`] (see [`keys::split_event_record`]), for readers
    /// that forward the event's bytes without decoding them. Erased events
    /// (tombstones) are left out, so offsets may skip; an empty answer
    /// still means nothing is left up to the head.
    pub fn read_records(&self, mut from: Offset, limit: usize) -> Result<Vec<RawRecord>> {
        let head = self.head();
        let mut records = Vec::new();
        let mut out = Vec::new();
        // A batch of nothing but tombstones reads on.
        while records.is_empty() && from < head {
            out.clear();
            self.inner.log.read_range(from, head, limit, &mut out)?;
            let Some(&(last, _)) = out.last() else {
                break;
            };
            // A damaged record ends the batch before it, so healthy records
            // are never held back by it; read from it, it is the error.
            for (offset, record) in out.drain(..) {
                match record {
                    Ok(record) if is_tombstone(&record) => {}
                    Ok(record) => records.push(RawRecord { offset, record }),
                    Err(e) if records.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            from = last + 1;
        }
        Ok(records)
    }

    /// The offset of the first event published at or after `t` (the head if
    /// none). Binary search: publish times never decrease along the log.
    pub fn offset_at_time(&self, t: SystemTime) -> Result<Offset> {
        let (mut lo, mut hi) = (self.first_offset()?, self.head());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // Offsets are dense between first and head, so `mid` exists
            // unless retention removed it meanwhile; then search above it.
            let published = match self.inner.log.get(mid)? {
                Some(record) => Some(keys::split_event_record(&record)?.1),
                None => None,
            };
            match published {
                Some(p) if p >= keys::unix_nanos(t) => hi = mid,
                _ => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    /// The offset of an event id, if it is in the log.
    pub fn offset_of_id(&self, id: &str) -> Result<Option<Offset>> {
        match self.inner.log.offset_of_id(id)? {
            Some(o) if o < self.head() => Ok(Some(o)),
            _ => Ok(None),
        }
    }
}

/// Whether a record read from the log is a tombstone. One that cannot be
/// walked is not: whoever decodes it reports the damage.
fn is_tombstone(record: &[u8]) -> bool {
    keys::is_tombstone(record).unwrap_or(false)
}

/// A store in `path` with small caches and 1 MiB segments, for other
/// modules' unit tests.
#[cfg(test)]
pub(crate) fn open_for_test(path: &Path) -> (Store, WriterHandle) {
    Store::open(&StoreConfig {
        path: path.to_owned(),
        cache_bytes: 1 << 20,
        segment_bytes: 1 << 20,
        max_group: 16,
        commit_delay: std::time::Duration::ZERO,
        metrics: Default::default(),
        recovery: Recovery::Refuse,
        zero_fill: true,
    })
    .expect("a store opens in a fresh directory")
}

/// A valid custom event `id` of type `a.b`, for unit tests: what
/// `convert::validate_event` makes of it (the publish time as
/// `occurred_at`, the id as ordering key), built here so the store does not
/// depend on the edge that validates wire input.
#[cfg(test)]
pub(crate) fn test_event(id: &str) -> NewEvent {
    let event = crate::pb::Event {
        id: id.into(),
        occurred_at: Some(std::time::SystemTime::now().into()),
        ordering_key: id.into(),
        payload: Some(crate::pb::event::Payload::Custom(crate::pb::CustomEvent {
            r#type: "a.b".into(),
            data: None,
        })),
        ..Default::default()
    };
    NewEvent {
        event_type: crate::model::event_type_of(event.payload.as_ref())
            .expect("a custom payload has a type"),
        event,
        id_assigned: false,
    }
}

#[cfg(test)]
mod tests;
