//! The ledger: every ack the publishers received, checked as it arrives
//! (one offset per id, a re-publish is a duplicate at the same offset).

use std::collections::{HashMap, HashSet};

use stevedore::pb::PublishResponse;

/// Everything the publishers were told, checked as it arrives.
#[derive(Default)]
pub(super) struct Ledger {
    /// Acknowledged id → offset.
    pub(super) acked: HashMap<String, u64>,
    /// Acknowledged offset → id.
    pub(super) by_offset: HashMap<u64, String>,
    /// Every id ever sent.
    pub(super) sent: HashSet<String>,
    pub(super) acks: u64,
    /// Acks with `duplicate: true`.
    pub(super) duplicates: u64,
    /// ... of which for an id that had never been acked (the first ack was
    /// lost to the kill, but the write had been committed).
    pub(super) lost_acks_recovered: u64,
    /// ... of which for an id deliberately re-sent after its ack.
    pub(super) resend_checks: u64,
}

impl Ledger {
    /// Records one ack for `id`; Err describes a broken guarantee.
    pub(super) fn record(
        &mut self,
        id: &str,
        resp: &PublishResponse,
        generation: u64,
    ) -> Result<(), String> {
        self.acks += 1;
        if resp.event_id != id {
            return Err(format!(
                "start #{generation}: ack for {id:?} names event_id {:?} (offset {})",
                resp.event_id, resp.offset
            ));
        }
        if resp.offset == 0 {
            return Err(format!("start #{generation}: ack for {id:?} has offset 0"));
        }
        if resp.duplicate {
            self.duplicates += 1;
        }
        match self.acked.get(id) {
            Some(&earlier) => {
                if !resp.duplicate {
                    return Err(format!(
                        "start #{generation}: {id:?} was acknowledged at offset {earlier} before, \
                         yet re-publishing it returned duplicate=false at offset {} (written twice)",
                        resp.offset
                    ));
                }
                if resp.offset != earlier {
                    return Err(format!(
                        "start #{generation}: {id:?} was acknowledged at offset {earlier}, \
                         but its duplicate ack says offset {}",
                        resp.offset
                    ));
                }
                self.resend_checks += 1;
                Ok(())
            }
            None => {
                if resp.duplicate {
                    self.lost_acks_recovered += 1;
                }
                if let Some(other) = self.by_offset.get(&resp.offset) {
                    return Err(format!(
                        "start #{generation}: offset {} acknowledged for both {other:?} and {id:?}",
                        resp.offset
                    ));
                }
                self.acked.insert(id.to_owned(), resp.offset);
                self.by_offset.insert(resp.offset, id.to_owned());
                Ok(())
            }
        }
    }
}
