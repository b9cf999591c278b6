//! The two writers: group commit with a real fsync.
//!
//! Each writer is one thread that blocks on its queue, takes everything else
//! already queued (up to `max_group`) and makes it durable at once; only
//! then are its callers answered.
//!
//! - [`LogWriterThread`] owns the event log, so offsets are assigned without
//!   locks and the idempotency check (id lookup, then append) cannot race:
//!   one buffer of framed records, one `write` to the last segment, one
//!   `fdatasync` ([`super::log`]); then the head advances.
//! - [`StateWriterThread`] owns the state tables: one sled batch per table
//!   touched. [`StateSyncThread`] then makes what was applied durable:
//!   `Db::flush()` (which writes sled's buffers with `sync_file_range`), then
//!   `fdatasync` of sled's data file and any new blob files, because
//!   `sync_file_range` persists no metadata and does not survive an OS
//!   crash. The two run side by side: while one group syncs, the next is
//!   applied.
//!
//! They are independent: state only ever refers to events that were durable
//! (below the head) before it was queued. So a publish never waits behind
//! the delivery bookkeeping's sled commit, nor the other way round.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::Ordering,
        mpsc::{Receiver, SyncSender},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    keys,
    log::{fs::Fs, LogWriter},
    state_db::{OpenDb, StateDb},
    Mutation, StoreHealth, Table,
};
use crate::{
    error::Result,
    metrics::Metrics,
    model::{Appended, EventType, NewEvent, Offset},
};

// `StateDb::commit` takes the consumer positions as the first table.
const _: () = assert!(Table::Consumers as usize == 0);

/// An event as the log writer takes it: encoded on the caller's task, so
/// the one writer thread only checks its id and copies bytes (and the
/// decoded event is dropped on the caller's thread, not the writer's).
pub(super) struct Encoded {
    id: String,
    event_type: EventType,
    id_assigned: bool,
    /// The record's first part ([`keys::encode_event_field`]).
    event_field: Vec<u8>,
}

impl Encoded {
    pub(super) fn new(mut e: NewEvent) -> Self {
        let event_field = keys::encode_event_field(&e.event);
        Self {
            id: std::mem::take(&mut e.event.id),
            event_type: e.event_type,
            id_assigned: e.id_assigned,
            event_field,
        }
    }
}

/// Work for the log writer.
pub(super) enum LogOp {
    Append {
        events: Vec<Encoded>,
        reply: oneshot::Sender<Result<Vec<Appended>>>,
    },
    /// Removes the events below `before` (never the newest); replies how
    /// many were removed.
    Truncate {
        before: Offset,
        reply: oneshot::Sender<Result<usize>>,
    },
    /// Seals the active segment if it holds records below `before`, so a
    /// redaction can rewrite them.
    Seal {
        before: Offset,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// How many events `group`'s appends carry.
fn appended_events(group: &[LogOp]) -> usize {
    group
        .iter()
        .map(|op| match op {
            LogOp::Append { events, .. } => events.len(),
            LogOp::Truncate { .. } | LogOp::Seal { .. } => 0,
        })
        .sum()
}

/// Work for the state writer: mutations applied in order, atomically per
/// table.
pub(super) struct StateOp {
    pub(super) mutations: Vec<Mutation>,
    pub(super) reply: oneshot::Sender<Result<()>>,
}

/// Blocks for one item, then takes what else is queued, up to `max`.
fn next_group<T>(ops: &mut mpsc::Receiver<T>, group: &mut Vec<T>, max: usize) -> bool {
    let Some(op) = ops.blocking_recv() else {
        return false;
    };
    group.push(op);
    take_queued(ops, group, max);
    true
}

/// [`next_group`], waiting no later than `until`: `Some(false)` if
/// nothing came by then, `None` once every sender is gone.
fn next_group_until<T>(
    ops: &mut mpsc::Receiver<T>,
    group: &mut Vec<T>,
    max: usize,
    until: Instant,
) -> Option<bool> {
    loop {
        match ops.try_recv() {
            Ok(op) => {
                group.push(op);
                take_queued(ops, group, max);
                return Some(true);
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Some(false);
                }
                std::thread::sleep(left.min(HEAL_POLL));
            }
        }
    }
}

/// Adds what is queued to `group`, up to `max`.
fn take_queued<T>(ops: &mut mpsc::Receiver<T>, group: &mut Vec<T>, max: usize) {
    while group.len() < max {
        match ops.try_recv() {
            Ok(op) => group.push(op),
            Err(_) => break,
        }
    }
}

/// A commit of fewer events than this may wait for more (see [`Pacing`]).
const PACED_BELOW_EVENTS: usize = 32;
/// ...if the previous commit had at least this many: appends are arriving
/// together, so waiting gathers more.
const PACED_AFTER_EVENTS: usize = 4;
/// How often the runtime's busy time is sampled.
const SATURATION_SAMPLE: Duration = Duration::from_millis(10);
/// Busy fraction of the runtime's workers at which commits start waiting...
const SATURATED_FROM: f64 = 0.7;
/// ...and below which they stop.
const SATURATED_UNTIL: f64 = 0.6;

/// Group commit pacing: while the runtime that opened the store is
/// saturated, a commit of few events first waits `delay` for more.
///
/// Each `fdatasync` costs CPU besides its latency (~45 µs on the benchmark
/// VM over zeros written ahead, ~90 µs growing the file; most of it in the
/// kernel), plus the log thread's wakeups preempting a runtime thread.
/// Committing as soon as the last commit ends is right while the runtime
/// has idle time. Once it is saturated, that CPU comes
/// out of request handling: waiting for bigger groups gives it back.
/// Unary Publish with 64 callers went from 58 % to 71.5 % of the no-op
/// server (6 interleaved runs), and with 8, 16 and 32 callers (runtime
/// not saturated) nothing changed (BENCHMARKS.md, fourth pass). A fixed
/// wait without the saturation test halved the throughput of 8 callers.
///
/// A runtime saturated by other work (webhook deliveries, say) while
/// publishes come one at a time gains nothing from waiting: commits wait
/// only after a commit of several events.
///
/// Ending the wait early when a runtime worker (or every worker) parks,
/// or sleeping right after a paced commit instead of waiting for the
/// first append, all measured worse (BENCHMARKS.md, fifth pass).
struct Pacing {
    delay: Duration,
    runtime: Option<tokio::runtime::Handle>,
    saturated: bool,
    sampled_at: Instant,
    busy_at_sample: Duration,
    /// Events in the previous commit.
    last_events: usize,
}

impl Pacing {
    fn new(delay: Duration, runtime: Option<tokio::runtime::Handle>) -> Self {
        Self {
            delay,
            busy_at_sample: runtime.as_ref().map(busy_time).unwrap_or_default(),
            runtime,
            saturated: false,
            sampled_at: Instant::now(),
            last_events: 0,
        }
    }

    /// Whether a commit of `events` should wait for more first.
    fn should_wait(&mut self, events: usize) -> bool {
        let previous = std::mem::replace(&mut self.last_events, events);
        if self.delay.is_zero() || events >= PACED_BELOW_EVENTS || previous < PACED_AFTER_EVENTS {
            return false;
        }
        self.sample();
        self.saturated
    }

    /// Records how many events the commit has, after any wait.
    fn committing(&mut self, events: usize) {
        self.last_events = events;
    }

    /// Updates `saturated` from the workers' busy time since the last
    /// sample, at most every [`SATURATION_SAMPLE`].
    fn sample(&mut self) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let now = Instant::now();
        let elapsed = now - self.sampled_at;
        if elapsed < SATURATION_SAMPLE {
            return;
        }
        let busy = busy_time(runtime);
        let workers = runtime.metrics().num_workers().max(1);
        let fraction = busy.saturating_sub(self.busy_at_sample).as_secs_f64()
            / (elapsed.as_secs_f64() * workers as f64);
        self.saturated = fraction
            >= if self.saturated {
                SATURATED_UNTIL
            } else {
                SATURATED_FROM
            };
        self.sampled_at = now;
        self.busy_at_sample = busy;
    }
}

/// The runtime's workers' busy time so far, all together.
fn busy_time(runtime: &tokio::runtime::Handle) -> Duration {
    let metrics = runtime.metrics();
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum()
}

pub(super) struct LogWriterThread {
    log: LogWriter,
    last_published: u64,
    head: watch::Sender<Offset>,
    /// Says why the log stopped taking appends, once it did.
    health: watch::Sender<StoreHealth>,
    max_group: usize,
    metrics: Arc<Metrics>,
    pacing: Pacing,
}

pub(super) struct StateWriterThread {
    state: Arc<StateDb>,
    max_group: usize,
    health: watch::Sender<StoreHealth>,
}

/// How often the state writer tries to make failing state writes work
/// again ([`StateDb::heal`]).
const HEAL_EVERY: Duration = Duration::from_millis(500);
/// How often a failing state writer looks at its queue between attempts.
const HEAL_POLL: Duration = Duration::from_millis(20);

/// Records whether state writes work: a failure is reported (the broker
/// goes NOT_SERVING), the next success clears it. Returns whether that
/// changed.
fn report_state(health: &watch::Sender<StoreHealth>, failed: Option<&crate::error::Error>) -> bool {
    health.send_if_modified(|h| {
        let now = failed.map(|e| format!("state writes are failing: {e}"));
        let changed = h.state.is_some() != now.is_some();
        h.state = now;
        changed
    })
}

/// One applied group, handed to the [`StateSyncThread`]: the database it
/// was applied to and the answers owed.
pub(super) type Applied = (Arc<OpenDb>, Vec<oneshot::Sender<Result<()>>>);

impl StateWriterThread {
    pub(super) fn new(
        state: Arc<StateDb>,
        max_group: usize,
        health: watch::Sender<StoreHealth>,
    ) -> Self {
        Self {
            state,
            max_group: max_group.max(1),
            health,
        }
    }

    /// Applies each group and hands its answers to the sync thread, which
    /// makes it durable while the next group is applied. Exits (dropping
    /// `applied`, so the sync thread finishes too) once every sender is
    /// dropped and the queue is drained, so nothing queued before shutdown
    /// is lost.
    pub(super) fn run(self, mut ops: mpsc::Receiver<StateOp>, applied: SyncSender<Applied>) {
        let mut group = Vec::with_capacity(self.max_group);
        let mut next_heal = Instant::now();
        loop {
            let failing = self.health.borrow().state.is_some();
            let more = if failing {
                if Instant::now() >= next_heal {
                    self.heal();
                    next_heal = Instant::now() + HEAL_EVERY;
                }
                next_group_until(&mut ops, &mut group, self.max_group, next_heal)
            } else {
                next_group(&mut ops, &mut group, self.max_group).then_some(true)
            };
            match more {
                None => break,
                Some(false) => continue,
                Some(true) => {}
            }
            let mut batches: [Option<sled::Batch>; Table::ALL.len()] = Default::default();
            for op in &group {
                for m in &op.mutations {
                    let batch = batches[m.table as usize].get_or_insert_with(Default::default);
                    match &m.value {
                        Some(v) => batch.insert(m.key.as_slice(), v.as_slice()),
                        None => batch.remove(m.key.as_slice()),
                    }
                }
            }
            let replies = group.drain(..).map(|op| op.reply);
            match self.apply(batches) {
                Ok(db) => {
                    if applied.send((db, replies.collect())).is_err() {
                        tracing::error!("the state sync thread is gone");
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "applying state failed");
                    report_state(&self.health, Some(&e));
                    for reply in replies {
                        let _ = reply.send(Err(e.share()));
                    }
                }
            }
        }
        tracing::debug!("state writer stopped");
    }

    /// While state writes fail: makes them work again if it can, and says
    /// so in the health (the sync thread reports the next failure).
    fn heal(&self) {
        match self.state.heal() {
            Ok(()) => {
                tracing::warn!("state writes work again");
                report_state(&self.health, None);
            }
            Err(e) => tracing::warn!(error = %e, "state writes still fail; retrying"),
        }
    }

    /// Applies each table's batch (tables without one are not touched:
    /// every `apply_batch` takes sled's global write lock) to the open
    /// database, which it returns for the sync.
    fn apply(&self, batches: [Option<sled::Batch>; Table::ALL.len()]) -> Result<Arc<OpenDb>> {
        let db = self.state.current()?;
        // Consumer positions last: an ack written with the records it
        // finishes (`Consumer::ack_with`) must not be durable without them,
        // and sled recovers a prefix of what was applied. A flush running
        // meanwhile (the previous group's) may persist part of this group:
        // a prefix, so never a position without its records.
        let [consumers, rest @ ..] = batches;
        for (table, batch) in Table::ALL[1..].iter().zip(rest) {
            if let Some(batch) = batch {
                db.tables.get(*table).apply_batch(batch)?;
            }
        }
        if let Some(batch) = consumers {
            db.tables.get(Table::Consumers).apply_batch(batch)?;
        }
        Ok(db)
    }
}

/// Makes applied state durable: `Db::flush()`, then `fdatasync` of sled's
/// data file and any new blob files. Runs beside [`StateWriterThread`], so
/// one group's sync overlaps the next group's apply; every group applied
/// by the time a sync starts is answered by it.
pub(super) struct StateSyncThread {
    health: watch::Sender<StoreHealth>,
    /// Wakes the state writer when a sync fails, so it starts healing
    /// even if no write follows (weak: shutdown still closes the queue).
    wake_writer: mpsc::WeakSender<StateOp>,
    state: Arc<StateDb>,
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    blobs_synced: u64,
}

impl StateSyncThread {
    pub(super) fn new(
        state: Arc<StateDb>,
        dir: &Path,
        fs: Arc<dyn Fs>,
        health: watch::Sender<StoreHealth>,
        wake_writer: mpsc::WeakSender<StateOp>,
    ) -> Result<Self> {
        // The directory entries sled created must be durable too.
        fs.sync_dir(dir)?;
        Ok(Self {
            health,
            wake_writer,
            state,
            fs,
            dir: dir.to_owned(),
            blobs_synced: 0,
        })
    }

    pub(super) fn run(mut self, applied: Receiver<Applied>) {
        while let Ok(first) = applied.recv() {
            // Groups applied to the same database are synced at once; one
            // applied before a reopen is synced (or fails) on its own.
            let mut groups = vec![first];
            while let Ok((db, replies)) = applied.try_recv() {
                match groups.last_mut() {
                    Some((last, owed)) if Arc::ptr_eq(last, &db) => owed.extend(replies),
                    _ => groups.push((db, replies)),
                }
            }
            for (db, replies) in groups {
                let result = self.sync(&db);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "syncing state failed");
                }
                // A replaced database says nothing about the open one.
                if self.state.is_current(&db)
                    && report_state(&self.health, result.as_ref().err())
                    && result.is_err()
                {
                    self.wake_writer();
                }
                for reply in replies {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(e.share()),
                    };
                    let _ = reply.send(r);
                }
            }
        }
        if let Err(e) = self.state.current().and_then(|db| Ok(db.db.flush()?)) {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::debug!("state sync stopped");
    }

    /// Queues an empty write, so a state writer waiting for work sees the
    /// failure and starts healing (once per failure: while failing, the
    /// writer does not wait for work).
    fn wake_writer(&self) {
        if let Some(ops) = self.wake_writer.upgrade() {
            let (reply, _) = oneshot::channel();
            let _ = ops.try_send(StateOp {
                mutations: Vec::new(),
                reply,
            });
        }
    }

    fn sync(&mut self, db: &OpenDb) -> Result<()> {
        db.db.flush()?;
        self.state.data_file().sync_data()?;
        self.sync_blobs()
    }

    /// sled writes values too large for a segment to `blobs/<lsn>` files and
    /// never fsyncs them. Sync any new ones and the directory itself.
    fn sync_blobs(&mut self) -> Result<()> {
        let dir = self.dir.join("blobs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut newest = self.blobs_synced;
        for entry in entries {
            let entry = entry?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if lsn > self.blobs_synced {
                // A blob may be garbage-collected between listing and opening.
                if let Ok(f) = self.fs.open(&entry.path(), false) {
                    f.sync_data()?;
                }
                newest = newest.max(lsn);
            }
        }
        if newest > self.blobs_synced {
            self.fs.sync_dir(&dir)?;
            self.blobs_synced = newest;
        }
        Ok(())
    }
}

impl LogWriterThread {
    pub(super) fn new(
        log: LogWriter,
        last_published: u64,
        head: watch::Sender<Offset>,
        health: watch::Sender<StoreHealth>,
        max_group: usize,
        metrics: Arc<Metrics>,
        commit_delay: Duration,
    ) -> Self {
        Self {
            log,
            last_published,
            head,
            health,
            max_group: max_group.max(1),
            metrics,
            // The runtime opening the store is the one serving its callers.
            pacing: Pacing::new(commit_delay, tokio::runtime::Handle::try_current().ok()),
        }
    }

    pub(super) fn run(mut self, mut ops: mpsc::Receiver<LogOp>) {
        let mut group = Vec::with_capacity(self.max_group);
        // Exits once every sender is dropped and the queue is drained, so
        // nothing queued before shutdown is lost.
        while next_group(&mut ops, &mut group, self.max_group) {
            if self.pacing.should_wait(appended_events(&group)) {
                std::thread::sleep(self.pacing.delay);
                take_queued(&mut ops, &mut group, self.max_group);
                self.pacing.committing(appended_events(&group));
                self.metrics.commit_delays.fetch_add(1, Ordering::Relaxed);
            }
            self.commit(&mut group);
        }
        tracing::debug!("log writer stopped");
    }

    /// Commits a group: appends are staged op by op and made durable
    /// together, then answered. An op that fails (an id lookup that cannot
    /// read the log, say) is rewound alone; the rest commit. A segment is
    /// rolled only between ops, after committing what is staged, so a batch
    /// never spans two segments. Truncations run between commits, in order.
    pub(super) fn commit(&mut self, group: &mut Vec<LogOp>) {
        let clock = Instant::now();
        self.metrics.group_commit_size.observe(group.len() as f64);
        let now = keys::unix_nanos(std::time::SystemTime::now());
        // Publish times never decrease along the log (time-based starts
        // binary-search on them), even if the clock steps back.
        let published = now.max(self.last_published);
        let mut published_field = Vec::with_capacity(10);
        keys::encode_published_field(published, &mut published_field);

        let mut work = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for op in group.drain(..) {
            match op {
                LogOp::Append { events, reply } => {
                    work.push(Some(events));
                    replies.push(Reply::Append(reply));
                }
                LogOp::Truncate { before, reply } => {
                    work.push(None);
                    replies.push(Reply::Truncate(before, reply));
                }
                LogOp::Seal { before, reply } => {
                    work.push(None);
                    replies.push(Reply::Seal(before, reply));
                }
            }
        }
        let mut staged = Staged {
            ops: Vec::new(),
            // Ids appended earlier in this group are not in the log's
            // index until their commit.
            ids: HashMap::new(),
            published,
        };
        let mut replies = replies.into_iter();
        for events in &work {
            let reply = replies.next().expect("a reply per op");
            let events = match (events, reply) {
                (Some(events), Reply::Append(reply)) => (events.as_slice(), reply),
                (None, Reply::Truncate(before, reply)) => {
                    self.flush(&mut staged);
                    let _ = reply.send(self.log.truncate(before));
                    continue;
                }
                (None, Reply::Seal(before, reply)) => {
                    self.flush(&mut staged);
                    let _ = reply.send(self.log.seal_below(before));
                    continue;
                }
                _ => unreachable!("replies follow their ops"),
            };
            let (events, reply) = events;
            let bytes: u64 = events
                .iter()
                .map(|e| LogWriter::frame_len(e.event_field.len() + published_field.len()))
                .sum();
            if self.log.needs_roll(bytes) {
                self.flush(&mut staged);
                // Unless that commit failed and left the segment empty.
                let rolled = match self.log.needs_roll(bytes) {
                    true => self.log.roll(),
                    false => Ok(()),
                };
                if let Err(e) = rolled {
                    tracing::error!(error = %e, "event log: cannot start a new segment");
                    let _ = reply.send(Err(e));
                    continue;
                }
            }
            let mark = self.log.mark();
            match self.append(events, &published_field, &mut staged.ids) {
                Ok(results) => staged.ops.push((reply, results, events)),
                Err(e) => {
                    self.log.rewind(mark);
                    let next = self.log.next();
                    staged.ids.retain(|_, (o, _)| *o < next);
                    tracing::error!(error = %e, "appending to the event log failed");
                    let _ = reply.send(Err(e));
                }
            }
        }
        self.flush(&mut staged);
        self.metrics
            .commit_latency
            .observe_duration(clock.elapsed());
    }

    /// Makes the staged appends durable, publishes the new head, answers
    /// them. On error they all fail and their offsets are given out again.
    fn flush(&mut self, staged: &mut Staged<'_>) {
        if staged.ops.is_empty() {
            return;
        }
        match self.log.commit() {
            Ok(()) => {
                // Only now is the head moved: readers never see an offset
                // that is not durable.
                self.head.send_replace(self.log.next());
                self.last_published = staged.published;
                for (reply, results, events) in staged.ops.drain(..) {
                    for (e, r) in events.iter().zip(&results) {
                        if !r.duplicate {
                            self.metrics
                                .events_published
                                .add(&[e.event_type.as_str()], 1);
                        }
                    }
                    let _ = reply.send(Ok(results));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "appending to the event log failed");
                let next = self.log.next();
                staged.ids.retain(|_, (o, _)| *o < next);
                for (reply, _, _) in staged.ops.drain(..) {
                    let _ = reply.send(Err(e.share()));
                }
            }
        }
        if let Some(why) = self.log.poisoned() {
            self.health.send_if_modified(|h| {
                let new = h.log.is_none();
                if new {
                    tracing::error!(error = why, "the event log stopped taking appends");
                    h.log = Some(why.to_owned());
                }
                new
            });
        }
    }

    /// Adds `events` to the commit; duplicates of ids already in the log (or
    /// earlier in this group) answer with the existing offset.
    fn append<'a>(
        &mut self,
        events: &'a [Encoded],
        published_field: &[u8],
        group_ids: &mut HashMap<&'a str, (Offset, &'a [u8])>,
    ) -> Result<Vec<Appended>> {
        let mut results = Vec::with_capacity(events.len());
        for e in events {
            let id = e.id.as_str();
            let existing = match group_ids.get(id) {
                Some(&(o, original)) => Some((o, keys::same_content(&e.event_field, original)?)),
                None if e.id_assigned => None,
                None => match self.log.offset_of_id(id)? {
                    // Duplicates are the rare path: the original is read
                    // again to tell a retry from a reused id. An erased
                    // original (a tombstone) has no content to compare.
                    Some(o) => {
                        let same = match self.log.record(o)? {
                            Some(stored) if !keys::is_tombstone(&stored)? => {
                                keys::same_content(&e.event_field, &stored)?
                            }
                            _ => true,
                        };
                        Some((o, same))
                    }
                    None => None,
                },
            };
            if let Some((offset, same)) = existing {
                self.metrics
                    .duplicates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !same {
                    self.metrics
                        .duplicates_differing
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                results.push(Appended {
                    offset,
                    duplicate: true,
                    payload_differs: !same,
                });
                continue;
            }
            let offset = self
                .log
                .append_parts(id, &[&e.event_field, published_field])?;
            group_ids.insert(id, (offset, &e.event_field));
            results.push(Appended {
                offset,
                duplicate: false,
                payload_differs: false,
            });
        }
        Ok(results)
    }
}

/// The answer owed to one op of a group.
enum Reply {
    Append(oneshot::Sender<Result<Vec<Appended>>>),
    Truncate(Offset, oneshot::Sender<Result<usize>>),
    Seal(Offset, oneshot::Sender<Result<()>>),
}

/// Appends staged for the next commit of a group.
struct Staged<'a> {
    /// Each append's reply, its results, and its events (for metrics).
    #[allow(clippy::type_complexity)]
    ops: Vec<(
        oneshot::Sender<Result<Vec<Appended>>>,
        Vec<Appended>,
        &'a [Encoded],
    )>,
    ids: HashMap<&'a str, (Offset, &'a [u8])>,
    published: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_wait_only_while_the_runtime_is_saturated() {
        let delay = Duration::from_micros(500);
        let mut no_runtime = Pacing::new(delay, None);
        no_runtime.committing(PACED_AFTER_EVENTS);
        assert!(!no_runtime.should_wait(1), "no runtime");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let mut off = Pacing::new(Duration::ZERO, Some(runtime.handle().clone()));
        let mut pacing = Pacing::new(delay, Some(runtime.handle().clone()));
        // The worker is busy for 200 ms on end (long, so that a loaded
        // machine's scheduling delays do not dilute it below 70 %)...
        runtime
            .block_on(runtime.spawn(async {
                let busy = Instant::now();
                while busy.elapsed() < Duration::from_millis(200) {
                    std::hint::spin_loop();
                }
            }))
            .unwrap();
        // ...and has parked (which is when it reports its busy time).
        std::thread::sleep(Duration::from_millis(20));
        assert!(!pacing.should_wait(1), "the previous commit had no events");
        pacing.committing(PACED_AFTER_EVENTS);
        assert!(pacing.should_wait(1), "saturated");
        assert!(!pacing.should_wait(1), "the previous commit had one event");
        off.committing(PACED_AFTER_EVENTS);
        assert!(!off.should_wait(1), "a zero delay never waits");
        pacing.committing(PACED_AFTER_EVENTS);
        assert!(
            !pacing.should_wait(PACED_BELOW_EVENTS),
            "a big enough group never waits"
        );
        // Idle since: no longer saturated.
        std::thread::sleep(SATURATION_SAMPLE * 3);
        pacing.committing(PACED_AFTER_EVENTS);
        assert!(!pacing.should_wait(1), "idle");
    }
}
