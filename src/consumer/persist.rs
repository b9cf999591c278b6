//! Acks, nacks and the durable position: every ack is persisted (as a
//! group commit) before it returns.

use std::{sync::atomic::Ordering as AtomicOrdering, time::Duration};

use tokio::time::Instant;

use super::{state, Consumer, StreamId};
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
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == 0) {
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
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == 0) {
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
        if let Some(bad) = offsets.iter().find(|&&o| o >= head || o == 0) {
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
                floor: st.floor,
                event_types: self
                    .filter()
                    .types()
                    .iter()
                    .map(|t| t.as_str().to_owned())
                    .collect(),
                done_ranges: state::set_to_ranges(&st.done),
                reopened: st.reopened.iter().copied().collect(),
                max_deliveries: st.max_deliveries,
                dead_ranges: state::set_to_ranges(&st.dead),
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
