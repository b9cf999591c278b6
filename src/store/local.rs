//! An embedded event log and state tables, read synchronously: point
//! reads, ranges, the time and id indexes, all answered from the segment
//! files at once. The subsystems that read under a lock or in a synchronous
//! poll (durable consumers, webhook delivery, retention, erasure) use these
//! through [`super::Store::local`](super::Store::local): the data
//! directory's in embedded mode, this broker's copy of the cluster in
//! cluster mode (`super::replica`).

use std::{sync::Arc, time::SystemTime};

use tokio::sync::{mpsc, watch};

use super::{
    keys,
    log::EventLog,
    state_db::StateDb,
    writer::{LogOp, StateOp},
    RawRecord,
};
use crate::{
    error::{Error, Result},
    model::{EventId, EventMeta, Offset, StoredEvent},
};

/// The embedded backend: the segment log, the state tables, the writers'
/// queues.
pub struct Local {
    pub(super) log: Arc<EventLog>,
    /// The state tables, reopened in place after a failed write.
    pub(super) state: Arc<StateDb>,
    /// Taken by [`super::Store::close`]: once every sender is gone the
    /// writers drain their queues and exit, even if stray handles outlive
    /// shutdown.
    pub(super) ops: std::sync::Mutex<Option<Senders>>,
    pub(super) head: watch::Receiver<Offset>,
}

#[derive(Clone)]
pub(super) struct Senders {
    pub(super) log: mpsc::Sender<LogOp>,
    pub(super) state: mpsc::Sender<StateOp>,
}

impl Local {
    /// The next offset to be written: every durable event is below it.
    pub fn head(&self) -> Offset {
        *self.head.borrow()
    }

    pub(super) fn senders(&self) -> Result<Senders> {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::ShuttingDown)
    }

    /// The oldest offset in the log (the head when it is empty).
    pub fn first_offset(&self) -> Result<Offset> {
        Ok(self.log.first().min(self.head()))
    }

    /// The event at `offset`, if it is durable and still in the log (an
    /// erased one is not: see [`super::Store::erasure`]).
    pub fn get(&self, offset: Offset) -> Result<Option<StoredEvent>> {
        self.live_record(offset)?
            .map(|record| keys::decode_event(&keys::offset_key(offset), &record))
            .transpose()
    }

    /// The type and attributes of the event at `offset`, if it is durable
    /// and still in the log: for filters, much cheaper than [`super::Store::get`].
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
        Ok(self.log.get(offset)?.filter(|record| !is_tombstone(record)))
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
    /// [`keys::event_record::EventRecord`] (see [`keys::split_event_record`]), for readers
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
            self.log.read_range(from, head, limit, &mut out)?;
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
            let published = match self.log.get(mid)? {
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
    pub fn offset_of_id(&self, id: &EventId) -> Result<Option<Offset>> {
        match self.log.offset_of_id(id.as_str())? {
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
