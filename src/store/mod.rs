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
mod keys;
mod log;
#[cfg(test)]
mod redact_tests;
mod rewrite;
mod state;
mod state_db;
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
use state_db::{StateDb, TableRef};
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
    /// The encoded [`keys::EventRecord`].
    pub record: bytes::Bytes,
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
    /// Opens (or creates) the database and starts the writer.
    pub fn open(config: &StoreConfig) -> Result<(Store, WriterHandle)> {
        Self::open_on(config, Arc::new(log::fs::RealFs))
    }

    /// [`Store::open`], with the event log's files and the state's syncs on
    /// `fs` (tests inject faults or count syncs).
    pub(crate) fn open_on(config: &StoreConfig, fs: Arc<dyn Fs>) -> Result<(Store, WriterHandle)> {
        create_private_dir(&config.path)?;
        let swap_lock = rewrite::exclusive(&config.path)?;
        rewrite::finish(&config.path)?;
        remove_unfinished_snapshots(&config.path)?;
        let db = open_sled(sled_config(&config.path, config.cache_bytes), &config.path)?;
        // sled's own lock guards the files from here on.
        drop(swap_lock);
        let tables = Tables::open(&db)?;
        let log_dir = config.path.join(LOG_DIR);
        migrate_sled_events(&db, &log_dir, config.log_options(fs.clone()))?;
        let (log, log_writer) = EventLog::open(&log_dir, config.log_options(fs.clone()))?;
        let next = log.next();
        check_state_against_head(&tables, next, config.recovery)?;
        let last_published = match log.newest()? {
            Some(record) => keys::split_event_record(&record)?.1,
            None => 0,
        };
        let (head_tx, head_rx) = watch::channel(next);
        let (health_tx, health_rx) = watch::channel(StoreHealth::default());
        // Bounded so producers feel backpressure when the disk falls behind.
        let (log_tx, log_rx) = mpsc::channel(config.max_group.max(1024));
        let (state_tx, state_rx) = mpsc::channel(config.max_group.max(1024));
        let log_thread = LogWriterThread::new(
            log_writer,
            last_published,
            head_tx,
            health_tx.clone(),
            config.max_group,
            config.metrics.clone(),
            config.commit_delay,
        );
        let state = Arc::new(StateDb::new(
            db,
            tables,
            &config.path,
            config.cache_bytes,
            fs.open(&data_file(&config.path), false)?,
        ));
        let state_thread =
            StateWriterThread::new(state.clone(), config.max_group, health_tx.clone());
        let sync_thread = StateSyncThread::new(
            state.clone(),
            &config.path,
            fs,
            health_tx,
            state_tx.downgrade(),
        )?;
        // One applied group may wait while the previous one syncs; the
        // writer then blocks and the next group grows meanwhile.
        let (applied_tx, applied_rx) = std::sync::mpsc::sync_channel(1);
        let threads = vec![
            std::thread::Builder::new()
                .name("stevedore-log".into())
                .spawn(move || log_thread.run(log_rx))?,
            std::thread::Builder::new()
                .name("stevedore-state".into())
                .spawn(move || state_thread.run(state_rx, applied_tx))?,
            std::thread::Builder::new()
                .name("stevedore-sync".into())
                .spawn(move || sync_thread.run(applied_rx))?,
        ];
        scrub(log.clone(), config.metrics.clone())?;
        tracing::info!(path = %config.path.display(), next_offset = next, "store opened");
        Ok((
            Store {
                inner: Arc::new(Inner {
                    log,
                    state,
                    ops: std::sync::Mutex::new(Some(Senders {
                        log: log_tx,
                        state: state_tx,
                    })),
                    head: head_rx,
                    health: health_rx,
                    erasures: Default::default(),
                }),
            },
            WriterHandle(threads),
        ))
    }

    /// Queues an append of `events` (all or nothing) and returns a receiver
    /// for its durable outcome. Queuing waits only when the writer's queue is
    /// full, so a caller can pipeline several appends and await them in order.
    pub async fn submit_append(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>>>> {
        let (reply, rx) = oneshot::channel();
        let events = events.into_iter().map(Encoded::new).collect();
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
    /// [`keys::EventRecord`] (see [`keys::split_event_record`]), for readers
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

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and
/// renames it to `snap.<lsn>`. A crash before the rename leaves the
/// `.generating` file behind, and sled's recovery then picks it (its name
/// sorts last), finds it empty or torn, and refuses to open the database
/// (sled issues #1527, #1533). Such a file is unfinished by construction;
/// the previous snapshot and the log hold everything, so it is removed.
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

/// A valid custom event `id` of type `a.b`, for unit tests.
#[cfg(test)]
pub(crate) fn test_event(id: &str) -> NewEvent {
    crate::convert::validate_event(
        crate::pb::Event {
            id: id.into(),
            payload: Some(crate::pb::event::Payload::Custom(crate::pb::CustomEvent {
                r#type: "a.b".into(),
                data: None,
            })),
            ..Default::default()
        },
        &"event",
        std::time::SystemTime::now(),
        crate::convert::EventLimits {
            max_event_bytes: 4096,
        },
    )
    .expect("a valid event")
}

/// How long [`open_sled`] waits for sled's lock on its data file.
/// sled's settings for the state at `path`; [`rewrite_state`] creates its
/// fresh copy with the same ones.
fn sled_config(path: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        // Each group commit flushes and fsyncs itself; the periodic
        // flusher stays on as sled's own safety net.
        .flush_every_ms(Some(500))
        // Large segments keep ordinary events out of sled's blob
        // files, which sled writes without fsync (the writer syncs
        // any that do appear, see `writer::sync_blobs`).
        .segment_size(8 * 1024 * 1024)
}

/// Creates the data directory readable by its owner only (0700: without
/// a master key it holds signing secrets and header credentials in the
/// clear), and warns when an existing one is open to group or others.
fn create_private_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:o}"),
                "the data directory is accessible to other users; it holds endpoint secrets \
                 (in the clear without a master key): chmod 700 it"
            );
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path)?;
    Ok(())
}

/// sled's errors as the crate's: its I/O errors keep their kind (a full
/// disk is `RESOURCE_EXHAUSTED`, as for the log), the rest their text.
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(e) => Error::Io(e),
            other => Error::Storage(other.to_string()),
        }
    }
}

const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting up to [`SLED_LOCK_WAIT`] for its lock on the data
/// file. sled releases the lock when its last I/O thread lets go of the
/// file, which can be a moment after the last `Db` handle is dropped: a
/// store reopened in the same process (a restart in the tests) could
/// otherwise fail with "could not acquire lock" under load. Another
/// process holding the directory still fails, after the wait.
fn open_sled(config: sled::Config, path: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(Error::FailedPrecondition(format!(
                    "another broker (or process) holds the data directory {}: stop it, or \
                     give this one its own data_dir",
                    path.display()
                )));
            }
            result => return Ok(result?),
        }
    }
}

fn remove_unfinished_snapshots(dir: &Path) -> Result<()> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            tracing::warn!(file = %name, "removed an unfinished sled snapshot left by a crash");
            removed = true;
        }
    }
    if removed {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks the sealed segments' records in the background: opening read
/// only their `.idx` files, so damage there (the disk changing bytes) is
/// found here and reported with file and byte, not first by a reader.
/// Reads of a damaged record fail alone, with DATA_LOSS.
fn scrub(log: Arc<EventLog>, metrics: Arc<Metrics>) -> Result<()> {
    std::thread::Builder::new()
        .name("stevedore-scrub".into())
        .spawn(move || match log.scrub() {
            Ok(damaged) => {
                for (offset, why) in &damaged {
                    tracing::error!(offset, error = %why, "event log: a record is damaged");
                }
                metrics
                    .damaged_records
                    .fetch_add(damaged.len() as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(damaged = damaged.len(), "event log: scrub done");
            }
            Err(e) => tracing::error!(error = %e, "event log: the scrub could not read the log"),
        })?;
    Ok(())
}

/// State may only refer to durable events, so none of it may lie at or
/// above the log's head: if some does, the log lost acknowledged records
/// (damage cut with `recovery = "truncate"`, or files removed by hand).
/// Refused, unless the operator chose truncation: then consumer positions
/// come down to the head and delivery records above it go (offsets are
/// given out again, and a new event must not look done or delivered).
fn check_state_against_head(tables: &Tables, head: Offset, recovery: Recovery) -> Result<()> {
    let above = |what: String| {
        Error::Corrupt(format!(
            "{what}, but the event log ends below it (next offset {head}): acknowledged events \
             are missing from the log. Restore the data directory from a backup, or set \
             recovery = \"truncate\" to move that state back to the log's end"
        ))
    };
    let consumers = tables.get(Table::Consumers);
    let mut fixes = Vec::new();
    for kv in consumers.iter() {
        let (name, value) = kv?;
        let mut record: ConsumerRecord = prost::Message::decode(&*value)
            .map_err(|e| Error::Corrupt(format!("consumer record: {e}")))?;
        let highest = record
            .done_ranges
            .last()
            .copied()
            .unwrap_or(0)
            .max(record.floor);
        if highest <= head {
            continue;
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        if recovery == Recovery::Refuse {
            return Err(above(format!(
                "consumer {name:?} has done offsets up to {highest}"
            )));
        }
        record.floor = record.floor.min(head);
        let ranges = std::mem::take(&mut record.done_ranges);
        for pair in ranges.chunks_exact(2) {
            let (start, end) = (pair[0], pair[1].min(head));
            if start < end {
                record.done_ranges.extend([start, end]);
            }
        }
        record.reopened.retain(|&o| o < head);
        tracing::error!(consumer = %name, from = highest, to = head, "recovery: moved a consumer back to the log's end");
        fixes.push((name, prost::Message::encode_to_vec(&record)));
    }
    for (name, value) in fixes {
        consumers.insert(name.as_bytes(), value)?;
    }
    let (deliveries, attempts) = (tables.get(Table::Deliveries), tables.get(Table::Attempts));
    for id in tables.get(Table::Endpoints).iter().keys() {
        let id = String::from_utf8_lossy(&id?).into_owned();
        let from = keys::scoped_offset_key(&id, head);
        let Some((last, _)) = deliveries
            .scan_prefix(keys::scope(&id))
            .next_back()
            .transpose()?
        else {
            continue;
        };
        if last.as_ref() < from.as_slice() {
            continue;
        }
        if recovery == Recovery::Refuse {
            let offset = keys::decode_offset(&last[last.len() - 8..])?;
            return Err(above(format!(
                "endpoint {id:?} has a delivery record at offset {offset}"
            )));
        }
        let end = keys::scoped_offset_key(&id, u64::MAX);
        for table in [deliveries, attempts] {
            for k in table.range(from.clone()..=end.clone()).keys() {
                table.remove(k?)?;
            }
        }
        tracing::error!(endpoint = %id, from = head, "recovery: removed delivery records above the log's end");
    }
    Ok(())
}

/// The event log's directory inside the data directory.
const LOG_DIR: &str = "events";

/// Data directories written before the event log kept events in sled
/// trees. Copies them into a new log, built beside it and renamed into
/// place once durable, then drops the trees: a crash at any point leaves
/// either the trees or the complete log.
fn migrate_sled_events(db: &sled::Db, log_dir: &Path, options: LogOptions) -> Result<()> {
    let building = log_dir.with_extension("migrating");
    if building.exists() {
        std::fs::remove_dir_all(&building)?;
    }
    let has = |name: &str| db.tree_names().iter().any(|n| &n[..] == name.as_bytes());
    if !has(keys::EVENTS) {
        return Ok(());
    }
    let events = db.open_tree(keys::EVENTS)?;
    if !log_dir.exists() {
        let first = match events.first()? {
            Some((k, _)) => keys::decode_offset(&k)?,
            None => FIRST_OFFSET,
        };
        std::fs::create_dir_all(&building)?;
        log::write_start_file(&*options.fs, &building, first)?;
        let (_, mut writer) = EventLog::open(&building, options)?;
        let mut n = 0u64;
        for kv in events.iter() {
            let (k, v) = kv?;
            let offset = keys::decode_offset(&k)?;
            let id = keys::decode_event_id(offset, &v)?;
            if writer.needs_roll(log::LogWriter::frame_len(v.len())) {
                writer.commit()?;
                writer.roll()?;
            }
            let at = writer.append_parts(&id, &[&v])?;
            if at != offset {
                return Err(Error::Corrupt(format!(
                    "migrating events: offset {offset} is not contiguous (expected {at})"
                )));
            }
            n += 1;
            if n.is_multiple_of(4096) {
                writer.commit()?;
            }
        }
        writer.commit()?;
        drop(writer);
        std::fs::rename(&building, log_dir)?;
        std::fs::File::open(log_dir.parent().unwrap_or(Path::new(".")))?.sync_all()?;
        tracing::warn!(
            events = n,
            "moved the events from sled trees into the event log"
        );
    }
    drop(events);
    db.drop_tree(keys::EVENTS)?;
    db.drop_tree(keys::EVENT_IDS)?;
    db.flush()?;
    Ok(())
}

/// The state kept beside the log, one sled tree each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Table {
    /// Durable consumer positions: name → [`ConsumerRecord`].
    Consumers = 0,
    /// Webhook endpoints: id → endpoint record.
    Endpoints = 1,
    /// Delivery state: endpoint id, 0, offset → delivery record.
    Deliveries = 2,
    /// Attempt history: endpoint id, 0, offset, attempt → attempt record.
    Attempts = 3,
    /// Admin changes (tenants): ULID → audit record, oldest first.
    Audit = 4,
}

impl Table {
    /// Every table, in discriminant order.
    pub const ALL: [Table; 5] = [
        Table::Consumers,
        Table::Endpoints,
        Table::Deliveries,
        Table::Attempts,
        Table::Audit,
    ];

    pub(crate) fn tree_name(self) -> &'static str {
        match self {
            Table::Consumers => "consumers",
            Table::Endpoints => "endpoints",
            Table::Deliveries => "deliveries",
            Table::Attempts => "attempts",
            Table::Audit => "audit",
        }
    }
}

/// One change to a state table.
#[derive(Debug, Clone)]
pub(in crate::store) struct Mutation {
    /// Where.
    pub table: Table,
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None` removes the key.
    pub value: Option<Vec<u8>>,
}

impl Mutation {
    /// Sets `key` to `value`.
    pub fn put(table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            table,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// Removes `key`.
    pub fn delete(table: Table, key: impl Into<Vec<u8>>) -> Self {
        Self {
            table,
            key: key.into(),
            value: None,
        }
    }
}

#[derive(Clone)]
pub(in crate::store) struct Tables([sled::Tree; Table::ALL.len()]);

impl Tables {
    fn open(db: &sled::Db) -> Result<Self> {
        let [a, b, c, d, e] = Table::ALL.map(|t| db.open_tree(t.tree_name()));
        Ok(Self([a?, b?, c?, d?, e?]))
    }

    pub(in crate::store) fn get(&self, table: Table) -> &sled::Tree {
        &self.0[table as usize]
    }
}

/// The sled data file, fsync'd after every group commit.
fn data_file(path: &Path) -> PathBuf {
    path.join("db")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &Path) -> StoreConfig {
        StoreConfig {
            path: path.to_owned(),
            cache_bytes: 1 << 20,
            // Small segments, so a few events span several.
            segment_bytes: 1024,
            max_group: 16,
            commit_delay: std::time::Duration::ZERO,
            metrics: Default::default(),
            recovery: Recovery::Refuse,
            zero_fill: true,
        }
    }

    use super::test_event as event;

    async fn close(store: Store, writer: WriterHandle) {
        drop(store);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap();
    }

    fn ids(events: &[StoredEvent]) -> Vec<String> {
        events.iter().map(|e| e.event.id.clone()).collect()
    }

    fn segments(dir: &Path, ext: &str) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join(LOG_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        v
    }

    /// Appends `n` events `e{from}`..., in batches of 7.
    async fn fill(store: &Store, from: usize, n: usize) {
        let names: Vec<String> = (from..from + n).map(|i| format!("e{i}")).collect();
        for chunk in names.chunks(7) {
            store
                .append(chunk.iter().map(|i| event(i)).collect())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn events_span_segments_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        fill(&store, 0, 200).await;
        assert_eq!(store.head(), 201);
        assert!(segments(dir.path(), "log").len() > 3, "small segments roll");
        let all = store.read_from(1, 1000).unwrap();
        assert_eq!(all.len(), 200);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, e)| e.offset == i as u64 + 1));
        assert_eq!(ids(&store.read_from(57, 3).unwrap()), ["e56", "e57", "e58"]);
        // A duplicate of an id in an earlier segment answers its offset.
        let dup = store.append(vec![event("e3")]).await.unwrap();
        assert_eq!((dup[0].offset, dup[0].duplicate), (4, true));
        close(store, writer).await;

        // Sealed segments open from their `.idx`; damage one and it is
        // rebuilt from the segment.
        let idx = segments(dir.path(), "idx");
        std::fs::write(&idx[1], b"garbage").unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(store.head(), 201);
        assert_eq!(store.read_from(1, 1000).unwrap(), all);
        for id in ["e0", "e30", "e199"] {
            let dup = store.append(vec![event(id)]).await.unwrap();
            assert!(dup[0].duplicate, "{id} is known after a restart");
        }
        let new = store.append(vec![event("e200")]).await.unwrap();
        assert_eq!((new[0].offset, new[0].duplicate), (201, false));
        assert_eq!(store.offset_of_id("e30").unwrap(), Some(31));
        close(store, writer).await;
    }

    /// Bytes of records in the last segment.
    fn records_end(store: &Store) -> usize {
        store.inner.log.records_in_last_segment() as usize
    }

    /// A crash can leave a torn or unacknowledged record at the end of the
    /// last segment, over the zeros written ahead of the writer: opening
    /// cuts it, and appending goes on after the last complete record.
    #[tokio::test]
    async fn a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        fill(&store, 0, 10).await;
        let good = records_end(&store);
        close(store, writer).await;
        let last = segments(dir.path(), "log").pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        bytes.resize(good, 0);
        // The last record again, cut short, as a crash mid-write leaves it,
        // then zeros.
        bytes.extend_from_within(good - 60..good - 10);
        bytes.resize(good + 200, 0);
        std::fs::write(&last, &bytes).unwrap();

        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        let bytes = std::fs::read(&last).unwrap();
        assert!(
            bytes[good..].iter().all(|&b| b == 0),
            "the torn record is gone (zeros may follow the records again)"
        );
        assert_eq!(store.head(), 11);
        let new = store.append(vec![event("e10")]).await.unwrap();
        assert_eq!(new[0].offset, 11);
        assert_eq!(store.get(11).unwrap().unwrap().event.id, "e10");
        let good = records_end(&store);
        close(store, writer).await;

        // A flipped byte inside the last record: its checksum fails, so it
        // is the unacknowledged tail and goes.
        let last = segments(dir.path(), "log").pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        bytes[good - 3] ^= 0xff;
        std::fs::write(&last, &bytes).unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(store.head(), 11);
        assert!(store.get(11).unwrap().is_none());
        close(store, writer).await;
    }

    /// Zeros after the records (written ahead of the writer) are not a torn
    /// tail: the last segment keeps them and appends overwrite them; a
    /// sealed segment that still has them (a crash before its sealing
    /// finished, so no `.idx` either) is cut to its records.
    #[tokio::test]
    async fn zeros_after_the_records_are_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        fill(&store, 0, 40).await;
        let good = records_end(&store);
        close(store, writer).await;
        let logs = segments(dir.path(), "log");
        let (sealed, last) = (&logs[1], logs.last().unwrap());
        let sealed_len = std::fs::metadata(sealed).unwrap().len();
        for (path, len) in [(sealed, sealed_len + 300), (last, good as u64 + 300)] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(len)
                .unwrap();
        }
        std::fs::remove_file(sealed.with_extension("idx")).unwrap();

        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(std::fs::metadata(sealed).unwrap().len(), sealed_len);
        assert!(std::fs::metadata(last).unwrap().len() >= good as u64 + 300);
        assert_eq!(store.head(), 41);
        let new = store.append(vec![event("e40")]).await.unwrap();
        assert_eq!((new[0].offset, new[0].duplicate), (41, false));
        let all = store.read_from(1, 100).unwrap();
        let want: Vec<String> = (0..41).map(|i| format!("e{i}")).collect();
        assert_eq!(ids(&all), want);
        close(store, writer).await;
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(ids(&store.read_from(1, 100).unwrap()), want);
        close(store, writer).await;
    }

    #[tokio::test]
    async fn truncation_deletes_whole_segments_and_forgets_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        fill(&store, 0, 100).await;
        let before = segments(dir.path(), "log").len();
        assert_eq!(store.truncate(60).await.unwrap(), 59);
        assert_eq!(store.first_offset().unwrap(), 60);
        assert!(store.get(59).unwrap().is_none());
        assert_eq!(store.get(60).unwrap().unwrap().event.id, "e59");
        assert_eq!(store.read_from(1, 2).unwrap()[0].offset, 60);
        assert!(segments(dir.path(), "log").len() < before);
        let live = store.size_on_disk().unwrap()
            - store
                .inner
                .state
                .current()
                .unwrap()
                .db
                .size_on_disk()
                .unwrap();
        let files: u64 = segments(dir.path(), "log")
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            live < files,
            "removed events still in a segment are not counted"
        );
        // An id that retention removed is new again.
        let again = store.append(vec![event("e1")]).await.unwrap();
        assert_eq!((again[0].offset, again[0].duplicate), (101, false));
        // Everything can go, the newest event too; numbering goes on.
        assert_eq!(store.truncate(1000).await.unwrap(), 42);
        assert_eq!(store.first_offset().unwrap(), 102);
        assert!(store.get(101).unwrap().is_none());
        close(store, writer).await;

        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(store.first_offset().unwrap(), 102);
        assert_eq!(store.head(), 102);
        assert!(store.read_from(1, 10).unwrap().is_empty());
        let again = store.append(vec![event("e1")]).await.unwrap();
        assert_eq!((again[0].offset, again[0].duplicate), (102, false));
        assert_eq!(ids(&store.read_from(1, 10).unwrap()), ["e1"]);
        close(store, writer).await;
    }

    /// A full disk under sled is `RESOURCE_EXHAUSTED` like one under the
    /// log; its other failures stay `INTERNAL`.
    #[test]
    fn sled_errors_keep_their_codes() {
        let enospc = std::io::Error::from_raw_os_error(28);
        let status = tonic::Status::from(Error::from(sled::Error::Io(enospc)));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let status = tonic::Status::from(Error::from(sled::Error::Unsupported("no".into())));
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    /// Data directories from before the event log kept events in sled.
    #[tokio::test]
    async fn events_in_sled_trees_move_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path())
                .segment_size(8 * 1024 * 1024)
                .open()
                .unwrap();
            let events = db.open_tree(keys::EVENTS).unwrap();
            let event_ids = db.open_tree(keys::EVENT_IDS).unwrap();
            // Retention had removed offsets below 5.
            for (i, offset) in (5..25u64).enumerate() {
                let e = event(&format!("old{i}"));
                let record = keys::encode_event_record(&e.event, 1_000 + offset);
                events.insert(keys::offset_key(offset), record).unwrap();
                event_ids
                    .insert(e.event.id.as_bytes(), &keys::offset_key(offset))
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(store.first_offset().unwrap(), 5);
        assert_eq!(store.head(), 25);
        let moved = store.read_from(0, 100).unwrap();
        assert_eq!(moved.len(), 20);
        assert_eq!(moved[0].event.id, "old0");
        assert_eq!(
            moved[19].published_at,
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_024)
        );
        let dup = store.append(vec![event("old3")]).await.unwrap();
        assert_eq!((dup[0].offset, dup[0].duplicate), (8, true));
        close(store, writer).await;
        let db = open_sled(
            sled::Config::new()
                .path(dir.path())
                .segment_size(8 * 1024 * 1024),
            dir.path(),
        )
        .unwrap();
        assert!(!db
            .tree_names()
            .iter()
            .any(|n| &n[..] == keys::EVENTS.as_bytes()));
    }

    /// State that refers to offsets the log does not have (it lost
    /// acknowledged records) refuses the open, naming it; with recovery =
    /// "truncate" it is moved back to the log's end instead.
    #[tokio::test]
    async fn state_above_the_head_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        fill(&store, 0, 5).await;
        let record = ConsumerRecord {
            floor: 4,
            done_ranges: vec![5, 9],
            ..Default::default()
        };
        store
            .write(vec![
                Mutation::put(
                    Table::Consumers,
                    "c1",
                    prost::Message::encode_to_vec(&record),
                ),
                Mutation::put(Table::Endpoints, "ep", "x"),
                Mutation::put(Table::Deliveries, keys::scoped_offset_key("ep", 3), "d"),
                Mutation::put(Table::Deliveries, keys::scoped_offset_key("ep", 7), "d"),
            ])
            .await
            .unwrap();
        close(store, writer).await;
        let err = Store::open(&config(dir.path())).err().unwrap().to_string();
        assert!(
            err.contains("consumer \"c1\" has done offsets up to 9"),
            "{err}"
        );
        assert!(err.contains("next offset 6"), "{err}");

        let mut truncate = config(dir.path());
        truncate.recovery = Recovery::Truncate;
        let (store, writer) = Store::open(&truncate).unwrap();
        let stored = store
            .table(Table::Consumers)
            .unwrap()
            .get("c1")
            .unwrap()
            .unwrap();
        let fixed: ConsumerRecord = prost::Message::decode(&*stored).unwrap();
        assert_eq!((fixed.floor, fixed.done_ranges), (4, vec![5, 6]));
        let deliveries = store.table(Table::Deliveries).unwrap();
        assert!(deliveries
            .get(keys::scoped_offset_key("ep", 3))
            .unwrap()
            .is_some());
        assert!(deliveries
            .get(keys::scoped_offset_key("ep", 7))
            .unwrap()
            .is_none());
        drop(deliveries);
        close(store, writer).await;
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        close(store, writer).await;
    }

    /// A store reopened while sled still holds its lock on the data file
    /// (here: another handle, dropped a moment later) waits for it.
    #[tokio::test]
    async fn opening_waits_for_sled_to_let_go_of_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let raw = || {
            sled::Config::new()
                .path(dir.path())
                .segment_size(8 * 1024 * 1024)
        };
        let held = raw().open().unwrap();
        assert!(raw().open().is_err(), "sled locks its directory");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        release.join().unwrap();

        // Held for longer than the wait: the error says who holds it.
        let err = Store::open(&config(dir.path()))
            .err()
            .expect("the directory is held");
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.starts_with("another broker")),
            "{err}"
        );
        close(store, writer).await;
    }

    /// The data directory a SIGKILL during a sled snapshot leaves behind
    /// (seen in this project's crash tests) must open, with its state.
    #[tokio::test]
    async fn opens_after_a_crash_during_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, writer) = Store::open(&config(dir.path())).unwrap();
            store.append(vec![event("kept")]).await.unwrap();
            store
                .write(vec![Mutation::put(Table::Endpoints, "ep", "x")])
                .await
                .unwrap();
            close(store, writer).await;
        }
        std::fs::write(dir.path().join("snap.00000000FFFFFFFF.generating"), b"").unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(store.get(1).unwrap().unwrap().event.id, "kept");
        assert!(store
            .table(Table::Endpoints)
            .unwrap()
            .get("ep")
            .unwrap()
            .is_some());
        assert!(!dir.path().join("snap.00000000FFFFFFFF.generating").exists());
        close(store, writer).await;
    }
}
