//! The audit trail: ULID → [`AuditRecord`] (stored as `records.rs`'s
//! `StoredAudit`), so it lists in time order.

use prost::Message;

use super::{
    super::{Mutation, Store, Table},
    records::StoredAudit,
};
use crate::{
    error::{Error, Result},
    model::audit::AuditRecord,
};

/// Admin changes (tenants), oldest first by id.
pub struct AuditRecords<'a> {
    store: &'a Store,
}

impl<'a> AuditRecords<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Stores `record` under its id (a ULID), durably.
    pub async fn put(&self, record: &AuditRecord) -> Result<()> {
        self.store
            .write(vec![Mutation::put(
                Table::Audit,
                record.id.as_bytes(),
                StoredAudit::from_record(record).encode_to_vec(),
            )])
            .await
    }

    /// Records newest first: all of them, or those with an id below
    /// `before` (empty: no bound).
    pub fn newest_first(&self, before: &str) -> impl Iterator<Item = Result<AuditRecord>> {
        super::or_error(self.store.table(Table::Audit).map(|tree| {
            let iter = if before.is_empty() {
                tree.iter()
            } else {
                tree.range(..before.as_bytes().to_vec())
            };
            iter.rev().map(|kv| {
                let (_, v) = kv?;
                StoredAudit::decode(&*v)
                    .map(StoredAudit::into_record)
                    .map_err(|e| Error::Corrupt(format!("audit record: {e}")))
            })
        }))
    }
}
