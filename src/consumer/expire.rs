//! Retention and erasure reach into a consumer: offsets whose events are
//! about to go are marked done, and whoever held them learns their fate
//! (from a [`Poll::Expired`](super::Poll::Expired)).

use super::Consumer;
use crate::model::Offset;

impl Consumer {
    /// Marks done every offset below `cutoff` that is not done and not
    /// leased, and returns the ones nobody held. Offsets that were waiting
    /// for redelivery are reported by the next poll as [`Poll::Expired`], so
    /// whoever handed them back learns their fate; leased ones are left to
    /// their holder, who sees `Poll::Expired` when it hands them back.
    /// Retention calls this before it removes those events; the caller
    /// persists with [`Consumer::save`].
    pub fn expire_below(&self, cutoff: Offset) -> Vec<Offset> {
        let mut unheld = Vec::new();
        {
            let mut st = self.lock();
            let mut o = st.floor;
            while o < cutoff {
                if !st.is_done(o) && !st.is_leased(o) {
                    if st.cancel_retry(o) {
                        st.expired.push(o);
                    } else {
                        unheld.push(o);
                    }
                    st.mark_done(o);
                }
                o += 1;
            }
        }
        self.changed.send_modify(|v| *v += 1);
        unheld
    }

    /// Marks done those of `offsets` that are neither done nor held
    /// (leased or waiting for redelivery) and returns them. Erasure calls
    /// this before it erases those events, so none is read in between and
    /// skipped unrecorded, then [`Consumer::expire_waiting`] once they are
    /// erased; the caller persists with [`Consumer::save`].
    pub fn expire_unread(&self, offsets: &[Offset]) -> Vec<Offset> {
        let mut unread = Vec::new();
        {
            let mut st = self.lock();
            for &o in offsets {
                if !st.is_done(o) && !st.is_held(o) {
                    st.mark_done(o);
                    unread.push(o);
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
        unread
    }

    /// Ends the wait of those of `offsets` waiting for redelivery (now, or
    /// when their holder hands them back to wait): done, and reported by
    /// the next poll as [`Poll::Expired`], so the holder records their fate
    /// (after an erasure, with the tombstone's reason).
    pub fn expire_waiting(&self, offsets: &[Offset]) {
        {
            let mut st = self.lock();
            for &o in offsets {
                if st.is_done(o) {
                    continue;
                }
                if st.is_leased(o) {
                    st.expire_on_return.insert(o);
                } else if st.cancel_retry(o) {
                    st.expired.push(o);
                    st.mark_done(o);
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
    }
}
