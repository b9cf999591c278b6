//! The cluster backend behind [`crate::store::Store`]: the event log on the
//! stream, each event its id's claim, as the store's seam needs it.
//!
//! - Appends: one event at a time ([`EventStream::append`]: one offset per
//!   id for as long as its message is kept, across brokers); several as
//!   one atomic batch ([`EventStream::append_batch`]).
//!   Appends queued one after another ([`ClusterLog::submit_append`],
//!   PublishStream's pipeline) are stored in that order: one task takes
//!   them off the queue and sends whatever is waiting as one atomic batch,
//!   the cluster's group commit.
//! - The head follows the stream, whichever broker appended
//!   ([`super::follow`]): Subscribe's live tail on this broker sees events
//!   published on another.
//! - Reads are by offset range (direct gets), by offset (the stream's
//!   leader), by time (the server's index of its storage times) and by id
//!   (the last message of the id's subject).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    connect::{self, ClusterOptions},
    error::read_failed,
    follow, EventStream, JetStreamError, StreamConfig,
};
use crate::{
    error::{Error, Result},
    metrics::Metrics,
    model::{Appended, EventId, NewEvent, Offset, StoredEvent, FIRST_OFFSET},
    store::{keys, RawRecord, StoreHealth},
};

/// Appends waiting for the sequencer; PublishStream feels backpressure
/// beyond.
const QUEUE: usize = 4096;
/// Message deletes in flight at once ([`ClusterLog::erase`]).
const ERASE_AT_ONCE: usize = 32;

/// One queued append and where its outcome goes.
type Submitted = (Vec<NewEvent>, oneshot::Sender<Result<Vec<Appended>>>);

/// The stream's extent as last seen: its first sequence and its bytes (the
/// head is the store's watch).
#[derive(Default)]
pub struct Extent {
    pub(super) first: AtomicU64,
    pub(super) bytes: AtomicU64,
}

impl Extent {
    /// The stream's first offset as last seen.
    pub fn first(&self) -> Offset {
        Offset::new(self.first.load(Ordering::Relaxed)).max(FIRST_OFFSET)
    }
}

/// The event log on the cluster, as the store uses it.
pub struct ClusterLog {
    events: EventStream,
    head: watch::Sender<Offset>,
    extent: Arc<Extent>,
    /// Taken by [`ClusterLog::close`]: the sequencer finishes what is
    /// queued and exits.
    queue: Mutex<Option<mpsc::Sender<Submitted>>>,
    /// Stops the head follower.
    stop: CancellationToken,
    /// Where published events and duplicates are counted.
    metrics: Arc<Metrics>,
}

/// What [`ClusterLog::open`] hands the store.
pub struct Opened {
    /// The log.
    pub log: ClusterLog,
    /// The head: every event below it is stored on a quorum.
    pub head: watch::Receiver<Offset>,
    /// The connection's and the stream's reachability.
    pub health: watch::Receiver<StoreHealth>,
    /// The connection (the state bucket uses it too).
    pub client: async_nats::Client,
    /// The stream, for reading it back (the broker's local copy).
    pub stream: EventStream,
    /// The stream's first offset and size as last seen.
    pub extent: Arc<Extent>,
    /// Cancelled by [`ClusterLog::close`]: what follows the cluster stops.
    pub stop: CancellationToken,
}

impl ClusterLog {
    /// Connects, checks the cluster's durability (refusing to go on unless
    /// allowed), opens the stream, and starts
    /// following the stream's head.
    pub async fn open(options: &ClusterOptions, metrics: Arc<Metrics>) -> Result<Opened> {
        let (health_tx, health) = watch::channel(StoreHealth::default());
        let client = options.reach(health_tx.clone()).await?;
        let stream_config = StreamConfig {
            replicas: options.replicas,
            ..StreamConfig::with_prefix(&options.prefix)
        };
        let name = stream_config.stream.clone();
        let max_batch = stream_config.max_batch;
        let stream = until_answered(&name, || {
            EventStream::open(client.clone(), stream_config.clone())
        })
        .await?;
        let state = stream.state().await.map_err(|e| opening(&name, e))?;
        let (head_tx, head) = watch::channel(Offset::new(state.last_sequence + 1));

        let extent = Arc::new(Extent::default());
        extent.first.store(state.first_sequence, Ordering::Relaxed);
        extent.bytes.store(state.bytes, Ordering::Relaxed);
        let stop = CancellationToken::new();
        tokio::spawn(follow::follow(
            stream.clone(),
            head_tx.clone(),
            extent.clone(),
            health_tx,
            stop.clone(),
        ));
        let (queue_tx, queue_rx) = mpsc::channel(QUEUE);
        tokio::spawn(sequence(
            stream.clone(),
            queue_rx,
            head_tx.clone(),
            max_batch,
            metrics.clone(),
        ));
        tracing::info!(
            stream = %name,
            replicas = options.replicas,
            next_offset = state.last_sequence + 1,
            "cluster log opened"
        );
        Ok(Opened {
            log: ClusterLog {
                events: stream.clone(),
                head: head_tx,
                extent: extent.clone(),
                queue: Mutex::new(Some(queue_tx)),
                metrics,
                stop: stop.clone(),
            },
            head,
            health,
            client,
            stream,
            extent,
            stop,
        })
    }

    /// Appends `events` (all or nothing) and waits for the quorum's ack.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>> {
        if self.stop.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let appended = append(&self.events, events, &self.metrics).await?;
        advance(&self.events, &self.head, &appended).await;
        Ok(appended)
    }

    /// Queues an append; appends queued one after another are stored in
    /// that order, several together as one atomic batch.
    pub async fn submit_append(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>>>> {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::ShuttingDown)?;
        let (reply, rx) = oneshot::channel();
        queue
            .send((events, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Stores `records` (an embedded log's, at consecutive offsets from
    /// the stream's head) at their own offsets (`stevedore migrate`).
    pub(in crate::store) async fn import(&self, records: &[RawRecord]) -> Result<()> {
        self.events.import(records).await?;
        if let Some(last) = records.last() {
            follow::raise(&self.head, last.offset + 1);
        }
        Ok(())
    }

    /// Stops taking appends (queued ones are still sent) and stops
    /// following the head.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.stop.cancel();
    }

    /// Removes every event below `before` from the stream (retention, run
    /// by one broker at a time); returns how many went. Each broker's copy
    /// follows (`store::replica`).
    pub async fn purge_below(&self, before: Offset) -> Result<usize> {
        let purged = self
            .events
            .stream
            .purge()
            .sequence(before.get())
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "purging the event stream below offset {before}: {e}; retention tries again \
                     at its next pass"
                ))
            })?;
        self.extent.first.fetch_max(before.get(), Ordering::Relaxed);
        Ok(purged.purged as usize)
    }

    /// Deletes the messages of the erased events `doomed` (each offset
    /// with its tombstone) from the stream, each overwritten on every
    /// replica, their ids kept claimed ([`EventStream::erase`]; a few at a
    /// time); one gone already counts as deleted.
    pub async fn erase(&self, doomed: &[(Offset, Bytes)]) -> Result<()> {
        for chunk in doomed.chunks(ERASE_AT_ONCE) {
            let mut erasing = tokio::task::JoinSet::new();
            for (offset, tombstone) in chunk.iter().cloned() {
                let stream = self.events.clone();
                erasing.spawn(async move { stream.erase(offset, &tombstone).await });
            }
            while let Some(done) = erasing.join_next().await {
                done.map_err(|e| Error::task("erasing messages", e))?
                    .map_err(|e| {
                        Error::Unavailable(format!(
                            "deleting erased events' messages from the stream: {e}; the \
                             erasure is finished at the next retention pass or EraseTenant"
                        ))
                    })?;
            }
        }
        if !doomed.is_empty() {
            // Their tombstones' copies took offsets (`EventStream::erase`).
            follow::notify(&self.events).await;
        }
        Ok(())
    }

    /// The stream's first offset as last seen.
    pub fn first(&self) -> Offset {
        self.extent.first()
    }

    /// The stream's bytes as last seen.
    pub fn bytes(&self) -> u64 {
        self.extent.bytes.load(Ordering::Relaxed)
    }

    /// The head as the stream has it now, asked rather than followed
    /// (another broker may have appended what this one's follower has not
    /// seen yet); the followed head is raised to it.
    pub async fn fresh_head(&self) -> Result<Offset> {
        let state = self.events.state().await.map_err(read_failed)?;
        follow::raise(&self.head, Offset::new(state.last_sequence + 1));
        Ok(*self.head.borrow())
    }

    /// The event at `offset`, from the stream's leader.
    pub async fn get(&self, offset: Offset) -> Result<Option<StoredEvent>> {
        self.events.get(offset).await.map_err(read_failed)
    }

    /// Up to `limit` records from `from` below `head`.
    pub async fn read_records(
        &self,
        from: Offset,
        limit: usize,
        head: Offset,
    ) -> Result<Vec<RawRecord>> {
        let from = from.max(self.first());
        if from >= head || limit == 0 {
            return Ok(Vec::new());
        }
        let to = (head - 1).min(from.saturating_add(limit as u64 - 1));
        let mut records = self
            .events
            .read_records(from, to)
            .await
            .map_err(read_failed)?;
        // Erased events (tombstones, copied in from an embedded log) are
        // left out, as the embedded log leaves them out.
        records.retain(|r| !keys::is_tombstone(&r.record).unwrap_or(false));
        Ok(records)
    }

    /// The first offset stored at or after `t` (the head if none).
    pub async fn offset_at_time(&self, t: SystemTime, head: Offset) -> Result<Offset> {
        Ok(self
            .events
            .first_at_time(t)
            .await
            .map_err(read_failed)?
            .map_or(head, |o| o.min(head)))
    }

    /// The offset event `id` answers: its event's, or its erased event's.
    pub async fn offset_of_id(&self, id: &EventId) -> Result<Option<Offset>> {
        self.events
            .offset_of(id.as_str())
            .await
            .map_err(read_failed)
    }
}

/// One event on its own, several as one atomic batch.
async fn append(
    log: &EventStream,
    events: Vec<NewEvent>,
    metrics: &Metrics,
) -> Result<Vec<Appended>> {
    let appended = match &events[..] {
        [] => Vec::new(),
        [one] => vec![log.append(one).await?],
        _ => log.append_batch(&events).await?,
    };
    count(metrics, &events, &appended);
    Ok(appended)
}

/// Counts what an append wrote and what it found already stored, as the
/// embedded log writer does.
fn count(metrics: &Metrics, events: &[NewEvent], appended: &[Appended]) {
    use std::sync::atomic::Ordering::Relaxed;
    for (e, a) in events.iter().zip(appended) {
        if a.duplicate {
            metrics.duplicates.fetch_add(1, Relaxed);
            if a.payload_differs {
                metrics.duplicates_differing.fetch_add(1, Relaxed);
            }
        } else {
            metrics.events_published.add(&[e.event_type.as_str()], 1);
        }
    }
}

/// Moves the head past what was just appended (the follower would, a
/// moment later): this broker's subscribers see its appends at once; and
/// tells the other brokers' followers, if anything was written.
async fn advance(log: &EventStream, head: &watch::Sender<Offset>, appended: &[Appended]) {
    if let Some(last) = appended.iter().map(|a| a.offset).max() {
        follow::raise(head, last + 1);
    }
    if appended.iter().any(|a| !a.duplicate) {
        follow::notify(log).await;
    }
}

/// Takes queued appends in order and sends whatever is waiting (up to
/// `max_batch` events) as one append; each caller gets its part of the
/// answer, or the error (the whole group is one atomic batch: all or
/// nothing, like one group commit of the embedded log). Ends once the
/// queue is closed and empty.
async fn sequence(
    log: EventStream,
    mut queue: mpsc::Receiver<Submitted>,
    head: watch::Sender<Offset>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    let mut carried: Option<Submitted> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match queue.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut group = vec![first];
        let mut n = group[0].0.len();
        while n < max_batch {
            match queue.try_recv() {
                Ok(item) if n + item.0.len() > max_batch => {
                    carried = Some(item);
                    break;
                }
                Ok(item) => {
                    n += item.0.len();
                    group.push(item);
                }
                Err(_) => break,
            }
        }
        let sizes: Vec<usize> = group.iter().map(|(events, _)| events.len()).collect();
        let (events, replies): (Vec<Vec<NewEvent>>, Vec<_>) = group.into_iter().unzip();
        match append(&log, events.into_iter().flatten().collect(), &metrics).await {
            Ok(appended) => {
                advance(&log, &head, &appended).await;
                let mut rest = appended.into_iter();
                for (size, reply) in sizes.into_iter().zip(replies) {
                    let _ = reply.send(Ok(rest.by_ref().take(size).collect()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.share()));
                }
            }
        }
    }
}

/// How long start-up keeps asking a cluster that does not answer: nodes
/// started together first elect their JetStream meta leader, and a request
/// sent before that goes unanswered.
const OPEN_DEADLINE: Duration = Duration::from_secs(120);
/// One attempt's bound (the client's own request timeout is longer).
/// Creating the stream or the bucket again with the same settings is
/// harmless, so an attempt cut short may be repeated.
const OPEN_ATTEMPT: Duration = Duration::from_secs(5);

/// Between two attempts at opening.
const OPEN_PAUSE: Duration = Duration::from_millis(500);

/// `open()`, repeated while the cluster does not answer, for at most
/// [`OPEN_DEADLINE`].
pub(in crate::store) async fn until_answered<T, F, Fut>(name: &str, mut open: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, JetStreamError>>,
{
    let deadline = tokio::time::Instant::now() + OPEN_DEADLINE;
    let what = format!(
        "opening {name}: the NATS cluster does not answer yet (still electing its JetStream \
         meta leader?)"
    );
    let bounded = || {
        let attempt = open();
        async {
            tokio::time::timeout(OPEN_ATTEMPT, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(JetStreamError::Request {
                        what: "opening",
                        reason: format!("no answer within {OPEN_ATTEMPT:?}"),
                    })
                })
        }
    };
    connect::retry_while(
        deadline,
        OPEN_PAUSE,
        &what,
        JetStreamError::is_retriable,
        bounded,
    )
    .await
    .map_err(|e| opening(name, e))
}

/// An error opening the stream or a bucket, naming it.
fn opening(name: &str, e: JetStreamError) -> Error {
    Error::Unavailable(format!("opening {name} on the NATS cluster: {e}"))
}
