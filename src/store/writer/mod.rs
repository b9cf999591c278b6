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
//!
//! Here: the queues' work items and grouping; `log_writer.rs`,
//! `state_writer.rs` (with the sync thread) and `pacing.rs` (when the log
//! writer waits for a bigger group).

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};

mod log_writer;
mod pacing;
mod state_writer;

pub(super) use log_writer::LogWriterThread;
pub(super) use state_writer::{StateSyncThread, StateWriterThread};

use super::{keys, Mutation, Table};
use crate::{
    error::Result,
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
    /// When it was queued, for the stall log (zero when that is off).
    queued: u64,
}

impl Encoded {
    pub(super) fn new(mut e: NewEvent, queued: u64) -> Self {
        let event_field = keys::encode_event_field(&e);
        Self {
            id: std::mem::take(&mut e.event.id),
            event_type: e.event_type,
            id_assigned: e.id_assigned,
            event_field,
            queued,
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
    /// Copies records stored elsewhere (the cluster's stream) at their own
    /// offsets, from the head on up to `through`: a broker's local replica
    /// of the cluster log (`super::replica`). An offset with a tombstone in
    /// `erased` gets the tombstone (whether `records` holds the event or
    /// its message is deleted already); the first offset with neither (a
    /// gap no erasure explains) ends the copy there. Replies the new head.
    Replicate {
        records: Vec<super::RawRecord>,
        through: Offset,
        erased: Erased,
        reply: oneshot::Sender<Result<Offset>>,
    },
}

/// The tombstones recorded for offsets `from..=to` (cluster mode's
/// erasures, `super::cluster_erase`). The log writer reads them while it
/// copies, so a tombstone recorded before a copy is never copied past,
/// and one recorded after finds the record in the log to redact.
pub(in crate::store) type Erased =
    std::sync::Arc<dyn Fn(Offset, Offset) -> Result<BTreeMap<Offset, bytes::Bytes>> + Send + Sync>;

/// How many events `group`'s appends carry.
fn appended_events(group: &[LogOp]) -> usize {
    group
        .iter()
        .map(|op| match op {
            LogOp::Append { events, .. } => events.len(),
            LogOp::Truncate { .. } | LogOp::Seal { .. } | LogOp::Replicate { .. } => 0,
        })
        .sum()
}

/// Work for the state writer: mutations applied in order, atomically per
/// table.
pub(in crate::store) struct StateOp {
    pub(in crate::store) mutations: Vec<Mutation>,
    pub(in crate::store) reply: oneshot::Sender<Result<()>>,
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

/// Adds what is queued to `group`, up to `max`.
fn take_queued<T>(ops: &mut mpsc::Receiver<T>, group: &mut Vec<T>, max: usize) {
    while group.len() < max {
        match ops.try_recv() {
            Ok(op) => group.push(op),
            Err(_) => break,
        }
    }
}
