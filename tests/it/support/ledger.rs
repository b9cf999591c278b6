//! The ledger of publishers that send fresh ids only: every ack they
//! received, checked as it arrives (a fresh id is never a duplicate, and no
//! offset is acknowledged for two ids).

use std::collections::{HashMap, HashSet};

use stevedore::pb::{self, PublishResponse};

/// What the publishers were told.
#[derive(Default)]
pub struct Ledger {
    /// Acknowledged id → offset.
    pub acked: HashMap<String, u64>,
    pub by_offset: HashMap<u64, String>,
    /// Acknowledged, in order of acknowledgement.
    pub order: Vec<(String, u64)>,
    /// Every id ever sent (acknowledged or not).
    pub sent: HashSet<String>,
}

impl Ledger {
    /// Records the acks of fresh `events` from start #`generation`; the
    /// broken guarantees, a line each.
    pub fn record(
        &mut self,
        events: &[pb::Event],
        acks: &[PublishResponse],
        generation: u64,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        for (e, ack) in events.iter().zip(acks) {
            if ack.event_id != e.id || ack.offset == 0 || ack.duplicate {
                errors.push(format!(
                    "start #{generation}: publishing fresh id {:?} was acknowledged as {ack:?}",
                    e.id
                ));
                continue;
            }
            if let Some(other) = self.by_offset.insert(ack.offset, e.id.clone()) {
                errors.push(format!(
                    "start #{generation}: offset {} acknowledged for both {other:?} and {:?}",
                    ack.offset, e.id
                ));
            }
            self.acked.insert(e.id.clone(), ack.offset);
            self.order.push((e.id.clone(), ack.offset));
        }
        errors
    }
}
