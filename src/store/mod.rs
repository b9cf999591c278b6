//! The durable log and the state beside it, on sled.
//!
//! Reads go straight to sled from any task. Every write goes through one
//! writer thread ([`writer`]), which folds whatever is queued into a group
//! commit: apply the batches, `flush()`, then fsync the data file (sled's
//! `flush()` alone does not fsync on Linux). Only then are the callers
//! answered and the new head published, so an acknowledged write is on disk
//! and a subscriber never sees an event that could still be lost.

mod keys;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use tokio::sync::{mpsc, oneshot, watch};

pub use keys::{
    decode_event, decode_meta_record, decode_offset, offset_key, scope, scoped_offset_key,
    scoped_offset_n_key, split_event_record, unix_nanos, ConsumerRecord,
};

use crate::{
    error::{Error, Result},
    metrics::Metrics,
    model::{Appended, EventMeta, NewEvent, Offset, StoredEvent, FIRST_OFFSET},
};
use writer::{Op, Writer};

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory.
    pub path: PathBuf,
    /// sled page-cache size in bytes.
    pub cache_bytes: u64,
    /// Most operations in one group commit.
    pub max_group: usize,
    /// Where commit sizes and appended events are counted.
    pub metrics: Arc<Metrics>,
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
    db: sled::Db,
    events: sled::Tree,
    event_ids: sled::Tree,
    tables: Tables,
    /// Taken by [`Store::close`]: once every sender is gone the writer
    /// drains its queue and exits, even if stray handles outlive shutdown.
    ops: std::sync::Mutex<Option<mpsc::Sender<Op>>>,
    head: watch::Receiver<Offset>,
}

/// Owns the writer thread; [`WriterHandle::join`] waits until every write
/// has been committed and sled is closed.
pub struct WriterHandle(std::thread::JoinHandle<()>);

impl WriterHandle {
    /// Blocks until the writer has drained its queue and exited, which
    /// happens once every [`Store`] handle is dropped.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("store writer thread panicked");
        }
    }
}

impl Store {
    /// Opens (or creates) the database and starts the writer.
    pub fn open(config: &StoreConfig) -> Result<(Store, WriterHandle)> {
        std::fs::create_dir_all(&config.path)?;
        remove_unfinished_snapshots(&config.path)?;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            // Each group commit flushes and fsyncs itself; the periodic
            // flusher stays on as sled's own safety net.
            .flush_every_ms(Some(500))
            // Large segments keep ordinary events out of sled's blob files,
            // which sled writes without fsync (the writer syncs any that do
            // appear, see `writer::sync_blobs`).
            .segment_size(8 * 1024 * 1024)
            .open()?;
        let events = db.open_tree(keys::EVENTS)?;
        let event_ids = db.open_tree(keys::EVENT_IDS)?;
        let tables = Tables::open(&db)?;
        repair_id_index(&events, &event_ids)?;

        let next = match events.last()? {
            Some((k, _)) => keys::decode_offset(&k)? + 1,
            None => FIRST_OFFSET,
        };
        let last_published = match events.last()? {
            Some((k, v)) => keys::unix_nanos(keys::decode_event(&k, &v)?.published_at),
            None => 0,
        };
        let (head_tx, head_rx) = watch::channel(next);
        // Bounded so producers feel backpressure when the disk falls behind.
        let (ops_tx, ops_rx) = mpsc::channel(config.max_group.max(1024));
        let writer = Writer::new(
            db.clone(),
            &config.path,
            events.clone(),
            event_ids.clone(),
            tables.clone(),
            next,
            last_published,
            head_tx,
            config.max_group,
            config.metrics.clone(),
        )?;
        let thread = std::thread::Builder::new()
            .name("stevedore-writer".into())
            .spawn(move || writer.run(ops_rx))?;
        tracing::info!(path = %config.path.display(), next_offset = next, "store opened");
        Ok((
            Store {
                inner: Arc::new(Inner {
                    db,
                    events,
                    event_ids,
                    tables,
                    ops: std::sync::Mutex::new(Some(ops_tx)),
                    head: head_rx,
                }),
            },
            WriterHandle(thread),
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
        self.sender()?
            .send(Op::Append { events, reply })
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
    pub async fn submit_write(
        &self,
        mutations: Vec<Mutation>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Op::Write { mutations, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Applies `mutations` and waits until they are durable.
    pub async fn write(&self, mutations: Vec<Mutation>) -> Result<()> {
        let rx = self.submit_write(mutations).await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Removes every event below `before` (except the newest event, which
    /// anchors offset numbering) with its id entry, in durable chunks.
    /// Returns how many were removed.
    pub async fn truncate(&self, before: Offset) -> Result<usize> {
        const CHUNK: usize = 4096;
        let mut total = 0;
        loop {
            let (reply, rx) = oneshot::channel();
            self.sender()?
                .send(Op::Truncate {
                    before,
                    limit: CHUNK,
                    reply,
                })
                .await
                .map_err(|_| Error::ShuttingDown)?;
            let n = rx.await.map_err(|_| Error::ShuttingDown)??;
            total += n;
            if n < CHUNK {
                return Ok(total);
            }
        }
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.inner.db.size_on_disk()?)
    }

    fn sender(&self) -> Result<mpsc::Sender<Op>> {
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

    /// Read access to a state table. Writes go through [`Store::write`].
    pub fn table(&self, table: Table) -> &sled::Tree {
        self.inner.tables.get(table)
    }

    /// The next offset to be written: every durable event is below it.
    pub fn head(&self) -> Offset {
        *self.inner.head.borrow()
    }

    /// Watches the head; it changes after every group commit that appended.
    pub fn watch_head(&self) -> watch::Receiver<Offset> {
        self.inner.head.clone()
    }

    /// The oldest offset in the log (the head when it is empty).
    pub fn first_offset(&self) -> Result<Offset> {
        match self.inner.events.first()? {
            Some((k, _)) => keys::decode_offset(&k),
            None => Ok(self.head()),
        }
    }

    /// The event at `offset`, if it is durable and still in the log.
    pub fn get(&self, offset: Offset) -> Result<Option<StoredEvent>> {
        if offset >= self.head() {
            return Ok(None);
        }
        self.inner
            .events
            .get(keys::offset_key(offset))?
            .map(|v| keys::decode_event(&keys::offset_key(offset), &v))
            .transpose()
    }

    /// The type and attributes of the event at `offset`, if it is durable
    /// and still in the log: for filters, much cheaper than [`Store::get`].
    pub fn meta(&self, offset: Offset) -> Result<Option<EventMeta>> {
        if offset >= self.head() {
            return Ok(None);
        }
        self.inner
            .events
            .get(keys::offset_key(offset))?
            .map(|v| keys::decode_meta(&keys::offset_key(offset), &v))
            .transpose()
    }

    /// Up to `limit` durable events from `from` on, in log order.
    pub fn read_from(&self, from: Offset, limit: usize) -> Result<Vec<StoredEvent>> {
        let head = self.head();
        if from >= head {
            return Ok(Vec::new());
        }
        self.inner
            .events
            .range(keys::offset_key(from)..keys::offset_key(head))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                keys::decode_event(&k, &v)
            })
            .collect()
    }

    /// Up to `limit` durable records from `from` on, in log order, as
    /// stored: each an encoded [`keys::EventRecord`] (see
    /// [`keys::split_event_record`]), for readers that forward the event's
    /// bytes without decoding them.
    pub fn read_records(&self, from: Offset, limit: usize) -> Result<Vec<RawRecord>> {
        let head = self.head();
        if from >= head {
            return Ok(Vec::new());
        }
        self.inner
            .events
            .range(keys::offset_key(from)..keys::offset_key(head))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok(RawRecord {
                    offset: keys::decode_offset(&k)?,
                    record: bytes::Bytes::copy_from_slice(&v),
                })
            })
            .collect()
    }

    /// The offset of the first event published at or after `t` (the head if
    /// none). Binary search: publish times never decrease along the log.
    pub fn offset_at_time(&self, t: SystemTime) -> Result<Offset> {
        let (mut lo, mut hi) = (self.first_offset()?, self.head());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // Offsets are dense between first and head, so `mid` exists
            // unless retention removed it meanwhile; then search above it.
            match self.get(mid)? {
                Some(e) if e.published_at >= t => hi = mid,
                _ => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    /// The offset of an event id, if it is in the log.
    pub fn offset_of_id(&self, id: &str) -> Result<Option<Offset>> {
        self.inner
            .event_ids
            .get(id.as_bytes())?
            .map(|v| keys::decode_offset(&v))
            .transpose()
    }
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and
/// renames it to `snap.<lsn>`. A crash before the rename leaves the
/// `.generating` file behind, and sled's recovery then picks it (its name
/// sorts last), finds it empty or torn, and refuses to open the database
/// (sled issues #1527, #1533). Such a file is unfinished by construction;
/// the previous snapshot and the log hold everything, so it is removed.
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

/// A group commit applies the events batch before the id batch, so after a
/// crash the id index can lack the ids of the last group (never the
/// reverse). Re-index from the end of the log until an indexed event.
fn repair_id_index(events: &sled::Tree, event_ids: &sled::Tree) -> Result<()> {
    let mut repaired = 0u64;
    for kv in events.iter().rev() {
        let (k, v) = kv?;
        let e = keys::decode_event(&k, &v)?;
        if event_ids.get(e.event.id.as_bytes())?.is_some() {
            break;
        }
        event_ids.insert(e.event.id.as_bytes(), &k[..])?;
        repaired += 1;
    }
    if repaired > 0 {
        event_ids.flush()?;
        tracing::warn!(repaired, "re-indexed event ids after an interrupted commit");
    }
    Ok(())
}

/// The state kept beside the log, one sled tree each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Durable consumer positions: name → [`ConsumerRecord`].
    Consumers = 0,
    /// Webhook endpoints: id → endpoint record.
    Endpoints = 1,
    /// Delivery state: endpoint id, 0, offset → delivery record.
    Deliveries = 2,
    /// Attempt history: endpoint id, 0, offset, attempt → attempt record.
    Attempts = 3,
}

impl Table {
    /// Every table, in discriminant order.
    pub const ALL: [Table; 4] = [
        Table::Consumers,
        Table::Endpoints,
        Table::Deliveries,
        Table::Attempts,
    ];

    fn tree_name(self) -> &'static str {
        match self {
            Table::Consumers => "consumers",
            Table::Endpoints => "endpoints",
            Table::Deliveries => "deliveries",
            Table::Attempts => "attempts",
        }
    }
}

/// One change to a state table.
#[derive(Debug, Clone)]
pub struct Mutation {
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
pub(crate) struct Tables([sled::Tree; Table::ALL.len()]);

impl Tables {
    fn open(db: &sled::Db) -> Result<Self> {
        let [a, b, c, d] = Table::ALL.map(|t| db.open_tree(t.tree_name()));
        Ok(Self([a?, b?, c?, d?]))
    }

    pub(crate) fn get(&self, table: Table) -> &sled::Tree {
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
            max_group: 16,
            metrics: Default::default(),
        }
    }

    /// The data directory a SIGKILL during a sled snapshot leaves behind
    /// (seen in this project's crash tests) must open, with its events.
    #[tokio::test]
    async fn opens_after_a_crash_during_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, writer) = Store::open(&config(dir.path())).unwrap();
            let event = crate::convert::validate_event(
                crate::pb::Event {
                    id: "kept".into(),
                    payload: Some(crate::pb::event::Payload::Custom(crate::pb::CustomEvent {
                        r#type: "a.b".into(),
                        data: None,
                    })),
                    ..Default::default()
                },
                "event",
                SystemTime::now(),
                crate::convert::EventLimits {
                    max_event_bytes: 4096,
                },
            )
            .unwrap();
            store.append(vec![event]).await.unwrap();
            drop(store);
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .unwrap();
        }
        std::fs::write(dir.path().join("snap.00000000FFFFFFFF.generating"), b"").unwrap();
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        assert_eq!(store.get(1).unwrap().unwrap().event.id, "kept");
        assert!(!dir.path().join("snap.00000000FFFFFFFF.generating").exists());
        drop(store);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap();
    }
}
