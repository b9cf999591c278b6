//! The single writer: group commit with a real fsync.
//!
//! One thread owns every mutation, so offsets are assigned without locks and
//! the idempotency check (`event_ids` lookup, then insert) cannot race. It
//! blocks on the queue, takes everything else already queued (up to
//! `max_group`), applies it, and makes it durable once:
//!
//! 1. `events` batch, then `event_ids` batch, then the state tables;
//! 2. `Db::flush()`, which writes sled's buffers with `sync_file_range`;
//! 3. `fdatasync` of the data file (and of any new blob files), because
//!    `sync_file_range` does not persist metadata or survive an OS crash.
//!
//! Only after step 3 are callers answered and the head advanced.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{keys, Mutation, Table, Tables};
use crate::{
    error::{Error, Result},
    metrics::Metrics,
    model::{Appended, NewEvent, Offset},
};

// `Writer::apply` takes the consumer positions as the first table.
const _: () = assert!(Table::Consumers as usize == 0);

pub(super) enum Op {
    Append {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Appended>>>,
    },
    Write {
        mutations: Vec<Mutation>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Removes up to `limit` of the oldest events below `before`, with their
    /// id index entries; replies how many were removed.
    Truncate {
        before: Offset,
        limit: usize,
        reply: oneshot::Sender<Result<usize>>,
    },
}

pub(super) struct Writer {
    db: sled::Db,
    events: sled::Tree,
    event_ids: sled::Tree,
    tables: Tables,
    data_file: File,
    dir: PathBuf,
    blobs_synced: u64,
    next: Offset,
    last_published: u64,
    head: watch::Sender<Offset>,
    max_group: usize,
    metrics: Arc<Metrics>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        db: sled::Db,
        dir: &Path,
        events: sled::Tree,
        event_ids: sled::Tree,
        tables: Tables,
        next: Offset,
        last_published: u64,
        head: watch::Sender<Offset>,
        max_group: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let data_file = File::open(super::data_file(dir))?;
        // The directory entries sled created must be durable too.
        File::open(dir)?.sync_all()?;
        Ok(Self {
            db,
            events,
            event_ids,
            tables,
            data_file,
            dir: dir.to_owned(),
            blobs_synced: 0,
            next,
            last_published,
            head,
            max_group: max_group.max(1),
            metrics,
        })
    }

    pub(super) fn run(mut self, mut ops: mpsc::Receiver<Op>) {
        let mut group = Vec::with_capacity(self.max_group);
        // Exits once every sender is dropped and the queue is drained, so
        // nothing queued before shutdown is lost.
        while let Some(op) = ops.blocking_recv() {
            group.push(op);
            while group.len() < self.max_group {
                match ops.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            self.commit(&mut group);
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::debug!("store writer stopped");
    }

    fn commit(&mut self, group: &mut Vec<Op>) {
        let start = self.next;
        let clock = std::time::Instant::now();
        self.metrics.group_commit_size.observe(group.len() as f64);
        let mut outcomes = Vec::with_capacity(group.len());
        let result = self.apply(group, &mut outcomes).and_then(|()| self.sync());
        match result {
            Ok(()) => {
                self.metrics
                    .commit_latency
                    .observe_duration(clock.elapsed());
                if self.next != start {
                    self.head.send_replace(self.next);
                }
                for (op, outcome) in group.drain(..).zip(outcomes) {
                    match (op, outcome) {
                        (Op::Append { reply, .. }, Outcome::Appended(r)) => {
                            let _ = reply.send(Ok(r));
                        }
                        (Op::Write { reply, .. }, Outcome::Written) => {
                            let _ = reply.send(Ok(()));
                        }
                        (Op::Truncate { reply, .. }, Outcome::Truncated(n)) => {
                            let _ = reply.send(Ok(n));
                        }
                        _ => unreachable!("outcomes are pushed in op order"),
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                // Whatever reached sled may or may not be durable; resume
                // numbering after what is actually there so no offset is
                // reused, and tell every caller it failed (they may retry:
                // ids make that safe).
                self.next = match self.events.last() {
                    Ok(Some((k, _))) => keys::decode_offset(&k).map(|o| o + 1).unwrap_or(self.next),
                    _ => self.next,
                };
                for op in group.drain(..) {
                    let err = || Error::Io(std::io::Error::other(e.to_string()));
                    match op {
                        Op::Append { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Op::Write { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Op::Truncate { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                    }
                }
            }
        }
    }

    fn apply(&mut self, group: &[Op], outcomes: &mut Vec<Outcome>) -> Result<()> {
        let mut events = sled::Batch::default();
        let mut ids = sled::Batch::default();
        let mut tables: [sled::Batch; Table::ALL.len()] = Default::default();
        let mut truncated = sled::Batch::default();
        // Ids appended earlier in this group are not in `event_ids` yet.
        let mut group_ids: HashMap<&str, Offset> = HashMap::new();
        let now = keys::unix_nanos(std::time::SystemTime::now());
        // Publish times never decrease along the log (time-based starts
        // binary-search on them), even if the clock steps back.
        let published = now.max(self.last_published);
        let mut next = self.next;
        for op in group {
            match op {
                Op::Append { events: new, .. } => {
                    let mut results = Vec::with_capacity(new.len());
                    for e in new {
                        let id = e.event.id.as_str();
                        let existing = match group_ids.get(id) {
                            Some(&o) => Some(o),
                            None if e.id_assigned => None,
                            None => self
                                .event_ids
                                .get(id.as_bytes())?
                                .map(|v| keys::decode_offset(&v))
                                .transpose()?,
                        };
                        if let Some(offset) = existing {
                            self.metrics
                                .duplicates
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            results.push(Appended {
                                offset,
                                duplicate: true,
                            });
                            continue;
                        }
                        let record = keys::encode_event_record(&e.event, published);
                        events.insert(&keys::offset_key(next), record);
                        ids.insert(id.as_bytes(), &keys::offset_key(next));
                        group_ids.insert(id, next);
                        self.metrics
                            .events_published
                            .add(&[e.event_type.as_str()], 1);
                        results.push(Appended {
                            offset: next,
                            duplicate: false,
                        });
                        next += 1;
                    }
                    outcomes.push(Outcome::Appended(results));
                }
                Op::Truncate { before, limit, .. } => {
                    let mut n = 0;
                    // Never the newest event: the next offset is recovered
                    // from the last key at startup.
                    let before = (*before).min(next.saturating_sub(1));
                    for kv in self.events.range(..keys::offset_key(before)).take(*limit) {
                        let (k, v) = kv?;
                        if let Ok(e) = keys::decode_event(&k, &v) {
                            ids.remove(e.event.id.as_bytes());
                        }
                        truncated.remove(k);
                        n += 1;
                    }
                    outcomes.push(Outcome::Truncated(n));
                }
                Op::Write { mutations, .. } => {
                    for m in mutations {
                        let batch = &mut tables[m.table as usize];
                        match &m.value {
                            Some(v) => batch.insert(m.key.as_slice(), v.as_slice()),
                            None => batch.remove(m.key.as_slice()),
                        }
                    }
                    outcomes.push(Outcome::Written);
                }
            }
        }
        // Order matters for crash repair: see `repair_id_index`. Removals
        // go last: an id without its event is never left behind... except
        // for truncated ones, whose ids are removed first.
        self.events.apply_batch(events)?;
        self.event_ids.apply_batch(ids)?;
        self.events.apply_batch(truncated)?;
        // Consumer positions last: an ack written with the records it
        // finishes (`Consumer::ack_with`) must not be durable without them,
        // and sled recovers a prefix of what was applied.
        let [consumers, rest @ ..] = tables;
        for (table, batch) in Table::ALL[1..].iter().zip(rest) {
            self.tables.get(*table).apply_batch(batch)?;
        }
        self.tables.get(Table::Consumers).apply_batch(consumers)?;
        self.next = next;
        self.last_published = published;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.db.flush()?;
        self.data_file.sync_data()?;
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
                if let Ok(f) = File::open(entry.path()) {
                    f.sync_data()?;
                }
                newest = newest.max(lsn);
            }
        }
        if newest > self.blobs_synced {
            File::open(&dir)?.sync_all()?;
            self.blobs_synced = newest;
        }
        Ok(())
    }
}

enum Outcome {
    Appended(Vec<Appended>),
    Written,
    Truncated(usize),
}
