//! The state tables beside the log, one sled tree each, and the
//! mutations the state writer applies to them.

use crate::error::Result;

/// The state kept beside the log, one sled tree each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Table {
    /// Durable consumer positions: name → [`ConsumerRecord`].
    Consumers = 0,
    /// Webhook endpoints: id → endpoint record.
    Endpoints = 1,
    /// Delivery state: endpoint id, 0, offset → delivery record.
    Deliveries = 2,
    /// Attempt history: endpoint id, 0, offset, attempt → attempt record.
    Attempts = 3,
    /// Admin changes (tenants): ULID → audit record, oldest first.
    Audit = 4,
    /// Erased events in cluster mode (`super::cluster_erase`): a
    /// tombstone per erased offset, and the offsets whose message is still
    /// to be deleted from the stream. Empty on the embedded backend, whose
    /// log holds its tombstones itself.
    Erasures = 5,
}

impl Table {
    /// Every table, in discriminant order.
    pub const ALL: [Table; 6] = [
        Table::Consumers,
        Table::Endpoints,
        Table::Deliveries,
        Table::Attempts,
        Table::Audit,
        Table::Erasures,
    ];

    pub(crate) fn tree_name(self) -> &'static str {
        match self {
            Table::Consumers => "consumers",
            Table::Endpoints => "endpoints",
            Table::Deliveries => "deliveries",
            Table::Attempts => "attempts",
            Table::Audit => "audit",
            Table::Erasures => "erasures",
        }
    }
}

/// One change to a state table.
#[derive(Debug, Clone)]
pub(in crate::store) struct Mutation {
    /// Where.
    pub table: Table,
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None` removes the key.
    pub value: Option<Vec<u8>>,
}

impl Mutation {
    /// Sets `key` to `value`.
    pub fn put(table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            table,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// Removes `key`.
    pub fn delete(table: Table, key: impl Into<Vec<u8>>) -> Self {
        Self {
            table,
            key: key.into(),
            value: None,
        }
    }
}

#[derive(Clone)]
pub(in crate::store) struct Tables([sled::Tree; Table::ALL.len()]);

impl Tables {
    pub(super) fn open(db: &sled::Db) -> Result<Self> {
        let [a, b, c, d, e, f] = Table::ALL.map(|t| db.open_tree(t.tree_name()));
        Ok(Self([a?, b?, c?, d?, e?, f?]))
    }

    pub(in crate::store) fn get(&self, table: Table) -> &sled::Tree {
        &self.0[table as usize]
    }
}
