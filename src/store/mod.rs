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
//!
//! [`Store`] is the one seam the rest of the broker uses for events, over
//! two backends: this embedded one, or (`backend = "jetstream"`) a stream
//! on a NATS JetStream cluster ([`jetstream::ClusterLog`]). Appends, the
//! head and the event reads (`get`, `read_records`, `offset_at_time`,
//! `offset_of_id`, async) dispatch on the backend. Synchronous reads
//! ([`Store::local`]) and the state tables serve the subsystems that read
//! under a lock or in a synchronous poll (durable consumers, webhook
//! delivery, retention, the admin queries): on the cluster they read this
//! broker's copy of the log ([`replica`]) and of the state
//! ([`jetstream::StateMirror`]), and state writes go to the cluster.
//! Erasure rewrites the embedded log in place ([`erase`]); on the cluster
//! the tombstones live in the state and the messages leave the stream
//! ([`cluster_erase`]).

pub mod baseline;
mod cluster_erase;
mod erase;
#[cfg(test)]
mod faults;
pub mod jetstream;
mod keys;
mod local;
mod log;
mod migrate;
mod open;
mod purge;
mod recover;
#[cfg(test)]
mod redact_tests;
mod replica;
mod rewrite;
mod roles;
mod state;
mod state_db;
mod tables;
mod writer;

pub use erase::{Erasure, Removal, Unwanted};
pub use local::Local;
pub use migrate::{migrate, Migrated};
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
    model::{Appended, EventId, NewEvent, Offset, StoredEvent, FIRST_OFFSET},
};
pub use log::Recovery;
use log::{fs::Fs, EventLog, LogOptions};
pub use open::LEASE_TTL;
use open::{open_sled, remove_unfinished_snapshots, sled_config};
use recover::{check_state_against_head, migrate_sled_events, scrub};
pub use roles::{
    delivery_lease, delivery_shard, is_member_lease, member_lease, shard_of_lease, DELIVERY_SHARDS,
    PRIMARY_LEASE,
};
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
    backend: Backend,
    head: watch::Receiver<Offset>,
    health: watch::Receiver<StoreHealth>,
    /// Counts finished redactions ([`Store::erasures`]).
    erasures: std::sync::atomic::AtomicU64,
    /// Where appends are stamped for the stall log.
    metrics: Arc<Metrics>,
}

/// Where the events are: the one dispatch point between the backends.
enum Backend {
    /// The segment log and sled in the data directory.
    Embedded(Local),
    /// A stream and buckets on a NATS JetStream cluster (boxed: the
    /// client's stream handle caches the stream's info, kilobytes).
    Cluster(Box<Cluster>),
}

/// The cluster backend: the log and the state on the cluster, and this
/// broker's copy of both, which its synchronous reads use.
struct Cluster {
    log: jetstream::ClusterLog,
    /// The copy of the log ([`replica`]) and of the state tables
    /// ([`jetstream::StateMirror`]).
    copy: Local,
    /// Writes to the state tables.
    state: jetstream::StateMirror,
    /// Work one broker at a time does ([`Store::leases`]).
    leases: jetstream::Leases,
    /// One erasure at a time on this broker ([`cluster_erase`]): a
    /// finishing pass must not take the mark of one being written.
    erasing: tokio::sync::Mutex<()>,
}

/// What keeps the store from taking writes, if anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Why the event log stopped taking appends (a failed `fdatasync`):
    /// until a restart. On the cluster: the connection is lost, until the
    /// client is connected again.
    pub log: Option<String>,
    /// Why state writes are failing (a full disk, say); cleared once a
    /// write succeeds again (the state writer probes, and reopens the state
    /// database, meanwhile). On the cluster: the event stream's leader
    /// does not answer, until it does.
    pub state: Option<String>,
    /// On the cluster: why this broker's copy of the log is stuck (see
    /// `replica`), until it moves again.
    pub copy: Option<String>,
}

impl StoreHealth {
    /// The first problem, if any.
    pub fn problem(&self) -> Option<&str> {
        self.log
            .as_deref()
            .or(self.state.as_deref())
            .or(self.copy.as_deref())
    }
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
    /// full, so a caller can pipeline several appends and await them in
    /// order; appends queued one after another are stored in that order
    /// (on the cluster too: see [`jetstream::ClusterLog::submit_append`]).
    pub async fn submit_append(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>>>> {
        let local = match &self.inner.backend {
            Backend::Embedded(local) => local,
            Backend::Cluster(cluster) => return cluster.log.submit_append(events).await,
        };
        let (reply, rx) = oneshot::channel();
        let queued = self.inner.metrics.stall.now();
        let events = events
            .into_iter()
            .map(|e| Encoded::new(e, queued))
            .collect();
        local
            .senders()?
            .log
            .send(LogOp::Append { events, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Appends `events` (all or nothing) and waits until they are durable.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>> {
        if let Backend::Cluster(cluster) = &self.inner.backend {
            return cluster.log.append(events).await;
        }
        let rx = self.submit_append(events).await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Queues `mutations` (applied atomically per table, in order, after any
    /// write queued earlier; on the cluster, as one atomic batch, see
    /// [`jetstream::StateMirror`]) and returns a receiver for the durable
    /// outcome.
    async fn submit_write(
        &self,
        mutations: Vec<Mutation>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let local = match &self.inner.backend {
            Backend::Embedded(local) => local,
            Backend::Cluster(cluster) => return cluster.state.submit(mutations).await,
        };
        let (reply, rx) = oneshot::channel();
        local
            .senders()?
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
    /// were removed. On the cluster: purges them from the stream, and every
    /// broker's copy follows.
    pub async fn truncate(&self, before: Offset) -> Result<usize> {
        let local = match &self.inner.backend {
            Backend::Embedded(local) => local,
            Backend::Cluster(cluster) => {
                let purged = cluster.truncate(before).await?;
                self.prune_erasures(cluster, before).await?;
                return Ok(purged);
            }
        };
        let (reply, rx) = oneshot::channel();
        local
            .senders()?
            .log
            .send(LogOp::Truncate { before, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Bytes the event log and the state database occupy on disk (on the
    /// cluster: the stream's bytes, one replica's worth).
    pub fn size_on_disk(&self) -> Result<u64> {
        match &self.inner.backend {
            Backend::Embedded(local) => {
                Ok(local.log.size() + local.state.current()?.db.size_on_disk()?)
            }
            Backend::Cluster(cluster) => Ok(cluster.log.bytes()),
        }
    }

    /// Stops taking writes: queued ones are still committed, later ones fail
    /// with `ShuttingDown`, and the writer exits once the queue is empty.
    pub fn close(&self) {
        match &self.inner.backend {
            Backend::Embedded(local) => {
                local.ops.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            Backend::Cluster(cluster) => {
                cluster.log.close();
                cluster
                    .copy
                    .ops
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
            }
        }
    }

    /// Read access to a state table (`UNAVAILABLE` while the state
    /// database is being reopened). Writes go through [`Store::write`].
    fn table(&self, table: Table) -> Result<TableRef> {
        self.local()?.state.table(table)
    }

    /// The next offset to be written: every durable event is below it.
    pub fn head(&self) -> Offset {
        *self.inner.head.borrow()
    }

    /// The head to check `offset` against: on the cluster, when `offset` is
    /// past this broker's head, the stream's own head (another broker may
    /// have appended it a moment ago); else [`Store::head`].
    pub async fn head_for(&self, offset: Offset) -> Result<Offset> {
        match &self.inner.backend {
            Backend::Cluster(cluster) if offset > self.head() => cluster.log.fresh_head().await,
            _ => Ok(self.head()),
        }
    }

    /// Watches the head; it changes after every group commit that appended
    /// (on the cluster: as the stream grows, whichever broker appended).
    pub fn watch_head(&self) -> watch::Receiver<Offset> {
        self.inner.head.clone()
    }

    /// Watches what keeps the store from taking writes: after a failed
    /// `fdatasync` nothing more is appended until a restart; failing state
    /// writes clear once a write works again (the state writer probes and
    /// reopens the state database meanwhile, see `state_db`); on the
    /// cluster, while it cannot be reached. The broker reports NOT_SERVING
    /// meanwhile.
    pub fn watch_health(&self) -> watch::Receiver<StoreHealth> {
        self.inner.health.clone()
    }

    /// The oldest offset in the log (the head when it is empty).
    pub fn first_offset(&self) -> Result<Offset> {
        match &self.inner.backend {
            Backend::Embedded(local) => local.first_offset(),
            Backend::Cluster(cluster) => Ok(cluster.log.first().min(self.head())),
        }
    }

    /// The event at `offset`, if it is durable and still in the log (an
    /// erased one is not: see [`Store::erasure`]).
    pub async fn get(&self, offset: Offset) -> Result<Option<StoredEvent>> {
        match &self.inner.backend {
            Backend::Embedded(local) => local.get(offset),
            // An erased event is not served, whether or not its message
            // is still in the stream.
            Backend::Cluster(cluster) => {
                match cluster_erase::recorded_at(&cluster.copy.state, offset)? {
                    Some(_) => Ok(None),
                    None => cluster.log.get(offset).await,
                }
            }
        }
    }

    /// Up to `limit` durable records from `from` on (from the first offset,
    /// if `from` is below it), in log order, as stored: each an encoded
    /// [`keys::event_record::EventRecord`] (see [`keys::split_event_record`]), for readers
    /// that forward the event's bytes without decoding them. Erased or
    /// removed events are left out, so offsets may skip; an empty answer
    /// still means nothing is left up to the head.
    pub async fn read_records(&self, from: Offset, limit: usize) -> Result<Vec<RawRecord>> {
        match &self.inner.backend {
            Backend::Embedded(local) => local.read_records(from, limit),
            Backend::Cluster(cluster) => {
                let mut records = cluster.log.read_records(from, limit, self.head()).await?;
                if let (Some(first), Some(last)) = (records.first(), records.last()) {
                    let erased =
                        cluster_erase::recorded(&cluster.copy.state, first.offset, last.offset)?;
                    records.retain(|r| !erased.contains_key(&r.offset));
                }
                Ok(records)
            }
        }
    }

    /// The offset of the first event published at or after `t` (the head if
    /// none).
    pub async fn offset_at_time(&self, t: SystemTime) -> Result<Offset> {
        match &self.inner.backend {
            Backend::Embedded(local) => local.offset_at_time(t),
            Backend::Cluster(cluster) => cluster.log.offset_at_time(t, self.head()).await,
        }
    }

    /// The offset of an event id, if it is in the log.
    pub async fn offset_of_id(&self, id: &EventId) -> Result<Option<Offset>> {
        match &self.inner.backend {
            Backend::Embedded(local) => local.offset_of_id(id),
            Backend::Cluster(cluster) => cluster.log.offset_of_id(id).await,
        }
    }
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
