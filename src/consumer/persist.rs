//! Acks, nacks, lease renewals and the durable position: every ack is
//! persisted (as a group commit) before it returns.

use std::{collections::BTreeSet, sync::atomic::Ordering as AtomicOrdering, time::Duration};

use tokio::time::Instant;

use super::{Consumer, StreamId};
use crate::{
    error::{Error, Result},
    model::Offset,
    store::{ConsumerRecord, StateWrites},
};

impl Consumer {
    /// Marks `offsets` done and persists the position before returning.
    /// Acking an offset twice, or one whose lease expired, is fine.
    pub async fn ack(&self, offsets: &[Offset]) -> Result<()> {
        let head = self.store.head();
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == Offset::ZERO) {
            return Err(Error::invalid(
                "offsets",
                format!("offset {bad} is not in the log (head is {head})"),
            ));
        }
        {
            let mut st = self.lock();
            for &o in offsets {
                st.ack(o);
            }
        }
        self.changed.send_modify(|v| *v += 1);
        self.persist().await
    }

    /// Like [`Consumer::ack`], with `records` written in the same group
    /// commit: the writer applies them before the consumer position, so
    /// the ack is never durable without them.
    ///
    /// The offsets are marked done only once this write holds the persist
    /// order, just before it is queued: marked earlier, a concurrent
    /// persist could snapshot them as done and reach the writer first,
    /// making the ack durable without its records (a crash then loses the
    /// delivery record and never sends the event again).
    pub async fn ack_with(&self, offsets: &[Offset], records: StateWrites) -> Result<()> {
        let head = self.store.head();
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == Offset::ZERO) {
            return Err(Error::invalid(
                "offsets",
                format!("offset {bad} is not in the log (head is {head})"),
            ));
        }
        self.persist_acking(offsets, records).await
    }

    /// Ends the leases of `offsets` (held by any stream) and queues them for
    /// redelivery after `delay`.
    pub fn nack(&self, offsets: &[Offset], delay: Duration) -> Result<()> {
        let head = self.store.head();
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == Offset::ZERO) {
            return Err(Error::invalid(
                "offsets",
                format!("offset {bad} is not in the log (head is {head})"),
            ));
        }
        let not_before = Instant::now() + delay;
        {
            let mut st = self.lock();
            for &o in offsets {
                st.nack(o, not_before);
                // Erased while it was out (see `expire_waiting`).
                if st.expire_on_return.remove(&o) && st.cancel_retry(o) {
                    st.expired.push(o);
                    st.mark_done(o);
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Reads new messages only while fewer than `max_held` are held:
    /// leased, waiting for redelivery, or behind another of their key (0:
    /// no bound beyond [`MAX_BEHIND`](super::MAX_BEHIND)). In memory, like
    /// [`Consumer::set_ordering`] for an endpoint.
    pub fn set_max_held(&self, max_held: u32) {
        self.lock().max_held = max_held;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Extends the leases of those of `offsets` still leased to
    /// `ack_wait` from now: their holder is still at them.
    pub fn renew(&self, offsets: impl IntoIterator<Item = Offset>, ack_wait: Duration) {
        let deadline = Instant::now() + ack_wait;
        let mut st = self.lock();
        for o in offsets {
            st.renew(o, deadline);
        }
    }

    /// How many leases `stream` holds (for tests).
    #[cfg(test)]
    pub(crate) fn leases_of(&self, stream: StreamId) -> u32 {
        self.lock().load(stream)
    }

    /// Hands every message leased to `stream` back for immediate redelivery
    /// (the stream went away).
    pub fn release(&self, stream: StreamId) {
        let released = self.lock().release(stream, Instant::now());
        if released > 0 {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    pub(super) async fn persist(&self) -> Result<()> {
        self.persist_acking(&[], StateWrites::new()).await
    }

    /// Marks `acks` done and persists the position, with `records` in the
    /// same write.
    async fn persist_acking(&self, acks: &[Offset], records: StateWrites) -> Result<()> {
        let order = self.persist_order.lock().await;
        let record = {
            let mut st = self.lock();
            for &o in acks {
                st.ack(o);
            }
            ConsumerRecord {
                floor: st.floor.get(),
                event_types: self
                    .filter()
                    .types()
                    .iter()
                    .map(|t| t.as_str().to_owned())
                    .collect(),
                done_ranges: set_to_ranges(&st.done),
                reopened: st.reopened.iter().map(|o| o.get()).collect(),
                max_deliveries: st.max_deliveries,
                dead_ranges: set_to_ranges(&st.dead),
                tenant: self.filter().tenant().unwrap_or_default().to_owned(),
                ordering: st.ordering.to_record(),
            }
        };
        if !acks.is_empty() {
            self.changed.send_modify(|v| *v += 1);
        }
        let durable = if !self.removed.load(std::sync::atomic::Ordering::SeqCst) {
            self.store
                .consumers()
                .submit_save(&self.name, &record, records)
                .await?
        } else if !records.is_empty() {
            self.store.submit_state(records).await?
        } else {
            return Ok(());
        };
        // Queued in order; concurrent acks now share the group commit.
        drop(order);
        durable.await.map_err(|_| Error::ShuttingDown)??;
        self.saved_floor
            .fetch_max(record.floor, AtomicOrdering::Relaxed);
        Ok(())
    }
}

/// `[start, end)` ranges of consecutive offsets, flattened, as the stored
/// record keeps them.
pub fn set_to_ranges(set: &BTreeSet<Offset>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut it = set.iter().copied();
    let Some(mut start) = it.next() else {
        return out;
    };
    let mut end = start + 1;
    for o in it {
        if o == end {
            end += 1;
        } else {
            out.extend([start.get(), end.get()]);
            start = o;
            end = o + 1;
        }
    }
    out.extend([start.get(), end.get()]);
    out
}

/// The inverse of [`set_to_ranges`].
pub fn ranges_to_set(flat: &[u64]) -> Result<BTreeSet<Offset>, String> {
    if !flat.len().is_multiple_of(2) {
        return Err("odd number of range bounds".into());
    }
    let mut set = BTreeSet::new();
    for pair in flat.chunks_exact(2) {
        if pair[0] >= pair[1] || pair[1] - pair[0] > 100_000_000 {
            return Err(format!("bad range {}..{}", pair[0], pair[1]));
        }
        set.extend(Offset::new(pair[0]).through(Offset::new(pair[1] - 1)));
    }
    Ok(set)
}
