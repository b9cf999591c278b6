//! The event log and its writer, broken on purpose.
//!
//! The log writer's group commit ([`LogWriterThread::commit`]) runs here
//! synchronously on [`FaultyFs`]: writes, syncs and reads fail when told
//! to, and a crash keeps only what was synced. The unit tests pin each
//! error path; the model test drives random sequences against a `Vec`.
//!
//! Here: the harness; `error_paths.rs`, `model_check.rs` and
//! `durability.rs` (the whole store on a counting or failing file system).

use std::{io::ErrorKind, path::PathBuf, sync::Arc, time::Duration};

use proptest::prelude::*;
use tokio::sync::{oneshot, watch};

use super::{
    log::{
        fs::{
            faulty::{FaultyFs, Op},
            Fs, FsFile, RealFs,
        },
        EventLog, LogOptions, Recovery,
    },
    test_event,
    writer::{Encoded, LogOp, LogWriterThread},
    StoreHealth,
};
use crate::{
    error::{Error, Result},
    model::{Appended, Offset},
};

mod durability;
mod error_paths;
mod model_check;

/// A log with its writer, driven one group at a time.
pub(super) struct Harness {
    pub(super) fs: FaultyFs,
    options: LogOptions,
    pub(super) log: Arc<EventLog>,
    writer: LogWriterThread,
    head: watch::Receiver<Offset>,
    health: watch::Receiver<StoreHealth>,
}

pub(super) fn dir() -> PathBuf {
    PathBuf::from("/data/events")
}

impl Harness {
    pub(super) fn new(segment_bytes: u64) -> Self {
        let fs = FaultyFs::default();
        let options = LogOptions {
            segment_bytes,
            recovery: Recovery::Refuse,
            zero_fill: false,
            fs: Arc::new(fs.clone()),
        };
        Self::open(fs, options).expect("a new log opens")
    }

    fn open(fs: FaultyFs, options: LogOptions) -> Result<Self> {
        let (log, log_writer) = EventLog::open(&dir(), options.clone())?;
        let next = log.next();
        let (head_tx, head) = watch::channel(next);
        let (health_tx, health) = watch::channel(StoreHealth::default());
        let writer = LogWriterThread::new(
            log_writer,
            0,
            head_tx,
            health_tx,
            1024,
            Default::default(),
            Duration::ZERO,
        );
        Ok(Self {
            fs,
            options,
            log,
            writer,
            head,
            health,
        })
    }

    /// Closes the log and opens it again (a restart); with `crash`, after
    /// dropping everything not synced (a power cut).
    pub(super) fn reopen(self, crash: bool) -> Result<Self> {
        let (fs, options) = (self.fs.clone(), self.options.clone());
        drop(self);
        if crash {
            fs.crash();
        }
        fs.heal();
        Self::open(fs, options)
    }

    /// Commits `batches` as one group; each batch's outcome.
    fn group(&mut self, batches: &[&[&str]]) -> Vec<Result<Vec<Appended>>> {
        let mut group = Vec::new();
        let mut replies = Vec::new();
        for ids in batches {
            let (reply, rx) = oneshot::channel();
            let events = ids
                .iter()
                .map(|id| Encoded::new(test_event(id), 0))
                .collect();
            group.push(LogOp::Append { events, reply });
            replies.push(rx);
        }
        self.writer.commit(&mut group);
        replies
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("every append is answered"))
            .collect()
    }

    fn append(&mut self, ids: &[&str]) -> Result<Vec<Appended>> {
        self.group(&[ids]).pop().expect("one outcome")
    }

    /// Commits `events` as one append.
    pub(super) fn append_new(
        &mut self,
        events: Vec<crate::model::NewEvent>,
    ) -> Result<Vec<Appended>> {
        let (reply, mut rx) = oneshot::channel();
        let events = events.into_iter().map(|e| Encoded::new(e, 0)).collect();
        self.writer
            .commit(&mut vec![LogOp::Append { events, reply }]);
        rx.try_recv().expect("answered")
    }

    /// Seals the active segment if it holds records below `before`.
    pub(super) fn seal(&mut self, before: Offset) -> Result<()> {
        let (reply, mut rx) = oneshot::channel();
        self.writer.commit(&mut vec![LogOp::Seal { before, reply }]);
        rx.try_recv().expect("answered")
    }

    fn truncate(&mut self, before: Offset) -> Result<usize> {
        let (reply, mut rx) = oneshot::channel();
        self.writer
            .commit(&mut vec![LogOp::Truncate { before, reply }]);
        rx.try_recv().expect("answered")
    }

    pub(super) fn head(&self) -> Offset {
        *self.head.borrow()
    }

    /// The id stored at `offset`, if any.
    fn id_at(&self, offset: Offset) -> Result<Option<String>> {
        self.log
            .get(offset)?
            .map(|r| super::keys::decode_event_id(offset, &r))
            .transpose()
    }

    fn segment(&self, base: Offset) -> PathBuf {
        dir().join(format!("{base:020}.log"))
    }
}

fn offsets(r: &Result<Vec<Appended>>) -> Vec<(u64, bool)> {
    r.as_ref()
        .expect("appended")
        .iter()
        .map(|a| (a.offset.get(), a.duplicate))
        .collect()
}
