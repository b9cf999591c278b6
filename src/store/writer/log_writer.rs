//! The log writer thread: appends, truncations and seals of the event log,
//! one group per `write` and `fdatasync`.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{appended_events, next_group, pacing::Pacing, take_queued, Encoded, Erased, LogOp};
use crate::{
    error::Result,
    metrics::{stall::Cause, Metrics},
    model::{Appended, Offset},
    store::{keys, log::LogWriter, RawRecord, StoreHealth},
};

pub(in crate::store) struct LogWriterThread {
    log: LogWriter,
    last_published: u64,
    head: watch::Sender<Offset>,
    /// Says why the log stopped taking appends, once it did.
    health: watch::Sender<StoreHealth>,
    max_group: usize,
    metrics: Arc<Metrics>,
    pacing: Pacing,
}

impl LogWriterThread {
    pub(in crate::store) fn new(
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

    pub(in crate::store) fn run(mut self, mut ops: mpsc::Receiver<LogOp>) {
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
    pub(in crate::store) fn commit(&mut self, group: &mut Vec<LogOp>) {
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
                LogOp::Replicate {
                    records,
                    through,
                    erased,
                    reply,
                } => {
                    work.push(None);
                    replies.push(Reply::Replicate(records, through, erased, reply));
                }
            }
        }
        let mut staged = Staged {
            ops: Vec::new(),
            // Ids appended earlier in this group are not in the log's
            // index until their commit.
            ids: HashMap::new(),
            published,
            started: self
                .metrics
                .stall
                .on()
                .then(|| self.metrics.stall.stamp_of(clock)),
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
                (None, Reply::Replicate(records, through, erased, reply)) => {
                    self.flush(&mut staged);
                    let _ = reply.send(self.replicate(&records, through, &erased));
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
                if let Some(started) = staged.started {
                    self.stamp_stalls(&staged.ops, started);
                }
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

    /// For the stall log, once a commit is durable: its causes (fsync,
    /// zero-fill wait, size) and each event's stamps up to the head's
    /// publication. Called just before the head moves, so a worker that
    /// reads an event finds its slot (the head stamp is taken here: the
    /// head moves right after these few stores per event).
    fn stamp_stalls(&self, ops: &[StagedOp<'_>], started: u64) {
        let stall = &self.metrics.stall;
        let durable = stall.now();
        let timings = self.log.timings;
        let group = appended_events_staged(ops);
        stall.cause(Cause::Fsync, timings.sync);
        stall.cause(Cause::ZeroFill, timings.zero_fill_wait);
        stall.group(group);
        let head = stall.now();
        for (_, results, events) in ops {
            for (e, r) in events.iter().zip(results) {
                if !r.duplicate {
                    let stamps = [e.queued, started, durable, head];
                    stall.committed(r.offset.get(), stamps, timings.sync, group);
                }
            }
        }
    }

    /// Writes the offsets from the head up to `through`, each at its own
    /// offset, and commits them; the head moves past them. Each is the
    /// tombstone `erased` has for it, else its record in `records`
    /// (ascending); the first offset with neither ends the copy there.
    /// Returns the new head.
    fn replicate(
        &mut self,
        records: &[RawRecord],
        through: Offset,
        erased: &Erased,
    ) -> Result<Offset> {
        let start = self.log.next();
        if through < start {
            return Ok(start);
        }
        let tombstones = erased(start, through)?;
        let mut records = records.iter().peekable();
        let mut mark = self.log.mark();
        for offset in start.through(through) {
            while records.next_if(|r| r.offset < offset).is_some() {}
            let copied = records.next_if(|r| r.offset == offset).map(|r| &r.record);
            let Some(record) = tombstones.get(&offset).or(copied) else {
                break;
            };
            let staged = (|| {
                if self.log.needs_roll(LogWriter::frame_len(record.len())) {
                    self.commit_replicated()?;
                    self.log.roll()?;
                    mark = self.log.mark();
                }
                let id = keys::decode_event_id(offset, record)?;
                let published = keys::split_event_record(record)?.1;
                self.log.append_parts(&id, &[record])?;
                self.last_published = self.last_published.max(published);
                Ok(())
            })();
            if let Err(e) = staged {
                self.log.rewind(mark);
                return Err(e);
            }
        }
        self.commit_replicated()?;
        Ok(self.log.next())
    }

    /// Commits replicated records and moves the head past them.
    fn commit_replicated(&mut self) -> Result<()> {
        self.log.commit()?;
        self.head.send_replace(self.log.next());
        Ok(())
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

/// Events staged for a commit.
fn appended_events_staged(ops: &[StagedOp<'_>]) -> u64 {
    ops.iter().map(|(_, results, _)| results.len() as u64).sum()
}

/// One staged append: its reply, its results, and its events.
type StagedOp<'a> = (
    oneshot::Sender<Result<Vec<Appended>>>,
    Vec<Appended>,
    &'a [Encoded],
);

/// The answer owed to one op of a group.
enum Reply {
    Append(oneshot::Sender<Result<Vec<Appended>>>),
    Truncate(Offset, oneshot::Sender<Result<usize>>),
    Seal(Offset, oneshot::Sender<Result<()>>),
    Replicate(
        Vec<RawRecord>,
        Offset,
        Erased,
        oneshot::Sender<Result<Offset>>,
    ),
}

/// Appends staged for the next commit of a group.
struct Staged<'a> {
    /// Each append's reply, its results, and its events (for metrics).
    ops: Vec<StagedOp<'a>>,
    ids: HashMap<&'a str, (Offset, &'a [u8])>,
    published: u64,
    /// The group commit's start, for the stall log (when on).
    started: Option<u64>,
}
