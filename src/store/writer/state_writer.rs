//! The state writer thread, which applies mutations to the sled state
//! tables one batch per table, and the sync thread beside it, which makes
//! each applied group durable.

use std::{
    path::{Path, PathBuf},
    sync::{
        mpsc::{Receiver, SyncSender},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{next_group, take_queued, StateOp};
use crate::{
    error::Result,
    metrics::{stall::Cause, Metrics},
    store::{
        log::fs::Fs,
        state_db::{OpenDb, StateDb},
        StoreHealth, Table,
    },
};

/// [`super::next_group`], waiting no later than `until`: `Some(false)` if
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

pub(in crate::store) struct StateWriterThread {
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
pub(in crate::store) type Applied = (Arc<OpenDb>, Vec<oneshot::Sender<Result<()>>>);

impl StateWriterThread {
    pub(in crate::store) fn new(
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
    pub(in crate::store) fn run(
        self,
        mut ops: mpsc::Receiver<StateOp>,
        applied: SyncSender<Applied>,
    ) {
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
    fn apply(&self, mut batches: [Option<sled::Batch>; Table::ALL.len()]) -> Result<Arc<OpenDb>> {
        let db = self.state.current()?;
        // Consumer positions last: an ack written with the records it
        // finishes (`Consumer::ack_with`) must not be durable without them,
        // and sled recovers a prefix of what was applied. A flush running
        // meanwhile (the previous group's) may persist part of this group:
        // a prefix, so never a position without its records.
        //
        // Attempts before delivery records: readers see applied state, and
        // a delivery record (DELIVERED, say) must not be seen before the
        // attempt that it counts (ListAttempts, RenderDelivery's timestamp;
        // admin_api's render test once saw the record without it).
        //
        // Erasures (cluster mode) first: a tombstone is there before the
        // dead delivery records that name its reason.
        const ORDER: [Table; 6] = [
            Table::Erasures,
            Table::Endpoints,
            Table::Attempts,
            Table::Deliveries,
            Table::Audit,
            Table::Consumers,
        ];
        for table in ORDER {
            if let Some(batch) = batches[table as usize].take() {
                db.tables.get(table).apply_batch(batch)?;
            }
        }
        Ok(db)
    }
}

/// Makes applied state durable: `Db::flush()`, then `fdatasync` of sled's
/// data file and any new blob files. Runs beside [`StateWriterThread`], so
/// one group's sync overlaps the next group's apply; every group applied
/// by the time a sync starts is answered by it.
pub(in crate::store) struct StateSyncThread {
    health: watch::Sender<StoreHealth>,
    /// Wakes the state writer when a sync fails, so it starts healing
    /// even if no write follows (weak: shutdown still closes the queue).
    wake_writer: mpsc::WeakSender<StateOp>,
    state: Arc<StateDb>,
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    blobs_synced: u64,
    /// Where flush times go (the stall log).
    metrics: Arc<Metrics>,
}

impl StateSyncThread {
    pub(in crate::store) fn new(
        state: Arc<StateDb>,
        dir: &Path,
        fs: Arc<dyn Fs>,
        health: watch::Sender<StoreHealth>,
        wake_writer: mpsc::WeakSender<StateOp>,
        metrics: Arc<Metrics>,
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
            metrics,
        })
    }

    pub(in crate::store) fn run(mut self, applied: Receiver<Applied>) {
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
                let clock = Instant::now();
                let result = self.sync(&db);
                self.metrics.stall.cause(Cause::StateFlush, clock.elapsed());
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
