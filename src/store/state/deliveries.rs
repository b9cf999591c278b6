//! Delivery state: per endpoint and event offset, the delivery record
//! ([`DeliveryRecord`]) and its numbered attempts ([`AttemptRecord`]),
//! both in offset order per endpoint, stored in the encoding of
//! `records.rs`.

use std::collections::HashMap;

use prost::Message;

use super::{
    super::{keys, Mutation, Store, Table},
    records::{StoredAttempt, StoredDelivery},
    StateWrites,
};
use crate::{
    error::{Error, Result},
    model::{
        delivery::{AttemptRecord, DeliveryRecord, DeliveryState},
        EndpointId, Offset,
    },
};

/// Most deletions in one write of [`DeliveryRecords::prune`], and in one
/// of [`DeliveryRecords::delete_endpoint`]: one huge endpoint cannot make
/// one huge batch.
const PRUNE_CHUNK: usize = 4096;
const DELETE_CHUNK: usize = 10_000;

/// The delivery records and attempts of every endpoint.
pub struct DeliveryRecords<'a> {
    store: &'a Store,
}

impl<'a> DeliveryRecords<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// `endpoint`'s delivery record of the event at `offset`, if any.
    pub fn get(&self, endpoint: &EndpointId, offset: Offset) -> Result<Option<DeliveryRecord>> {
        self.store
            .table(Table::Deliveries)?
            .get(keys::scoped_offset_key(endpoint.as_str(), offset))?
            .map(|v| decode_delivery(endpoint, offset, &v))
            .transpose()
    }

    /// Sets one delivery record, durably.
    pub async fn put(
        &self,
        endpoint: &EndpointId,
        offset: Offset,
        record: &DeliveryRecord,
    ) -> Result<()> {
        let mut writes = StateWrites::new();
        writes.put_delivery(endpoint, offset, record);
        self.store.write_state(writes).await
    }

    /// Sets several of `endpoint`'s delivery records in one write, durably.
    pub async fn put_all<'r>(
        &self,
        endpoint: &EndpointId,
        records: impl IntoIterator<Item = (Offset, &'r DeliveryRecord)>,
    ) -> Result<()> {
        let mut writes = StateWrites::new();
        for (offset, record) in records {
            writes.put_delivery(endpoint, offset, record);
        }
        self.store.write_state(writes).await
    }

    /// `endpoint`'s delivery records of events in `from..until`, in offset
    /// order (reversible).
    pub fn range(
        &self,
        endpoint: &EndpointId,
        from: Offset,
        until: Offset,
    ) -> impl DoubleEndedIterator<Item = Result<(Offset, DeliveryRecord)>> {
        let endpoint = endpoint.to_owned();
        super::or_error(self.store.table(Table::Deliveries).map(|tree| {
            tree.range(
                keys::scoped_offset_key(endpoint.as_str(), from)
                    ..keys::scoped_offset_key(endpoint.as_str(), until),
            )
            .map(move |kv| {
                let (k, v) = kv?;
                let offset = keys::decode_offset(&k[k.len() - 8..])?;
                Ok((offset, decode_delivery(&endpoint, offset, &v)?))
            })
        }))
    }

    /// The offset above `endpoint`'s last delivery record (0 without
    /// one), once every state write queued before is durable, so none
    /// lands above it afterwards.
    pub async fn next_unrecorded(&self, endpoint: &EndpointId) -> Result<Offset> {
        self.store.write_state(StateWrites::new()).await?;
        let last = self
            .store
            .table(Table::Deliveries)?
            .scan_prefix(keys::scope(endpoint.as_str()))
            .keys()
            .next_back()
            .transpose()?;
        match last {
            Some(k) => Ok(keys::decode_offset(&k[k.len() - 8..])?.saturating_add(1)),
            None => Ok(Offset::ZERO),
        }
    }

    /// The number of the last attempt recorded for that delivery, if any.
    pub fn last_attempt(&self, endpoint: &EndpointId, offset: Offset) -> Result<Option<u32>> {
        let last = self
            .store
            .table(Table::Attempts)?
            .scan_prefix(keys::scoped_offset_key(endpoint.as_str(), offset))
            .keys()
            .next_back()
            .transpose()?;
        Ok(last.map(|k| u32::from_be_bytes(k[k.len() - 4..].try_into().expect("4-byte suffix"))))
    }

    /// Every attempt of that delivery, oldest first.
    pub fn attempts(&self, endpoint: &EndpointId, offset: Offset) -> Result<Vec<AttemptRecord>> {
        self.store
            .table(Table::Attempts)?
            .scan_prefix(keys::scoped_offset_key(endpoint.as_str(), offset))
            .values()
            .map(|v| {
                StoredAttempt::decode(&*v?)
                    .map(StoredAttempt::into_record)
                    .map_err(|e| Error::Corrupt(format!("attempt {endpoint}/{offset}: {e}")))
            })
            .collect()
    }

    /// Dead delivery records per endpoint id (records that cannot be
    /// decoded are not counted).
    pub fn dead_per_endpoint(&self) -> Result<HashMap<String, i64>> {
        let mut dead = HashMap::new();
        for kv in self.store.table(Table::Deliveries)?.iter() {
            let (k, v) = kv?;
            if StoredDelivery::decode(&*v).is_ok_and(|d| d.state() == DeliveryState::Dead) {
                let id = k.split(|&b| b == 0).next().unwrap_or_default();
                *dead
                    .entry(String::from_utf8_lossy(id).into_owned())
                    .or_default() += 1;
            }
        }
        Ok(dead)
    }

    /// Deletes `endpoint`'s delivered and superseded records of events
    /// below `first`, with their attempts.
    pub async fn prune(&self, endpoint: &EndpointId, first: Offset) -> Result<()> {
        let (deliveries, attempts) = (
            self.store.table(Table::Deliveries)?,
            self.store.table(Table::Attempts)?,
        );
        let mut deletes = Vec::new();
        for kv in deliveries.range(
            keys::scope(endpoint.as_str())..keys::scoped_offset_key(endpoint.as_str(), first),
        ) {
            let (k, v) = kv?;
            let d = StoredDelivery::decode(&*v)
                .map_err(|e| Error::Corrupt(format!("delivery: {e}")))?;
            if matches!(
                d.state(),
                DeliveryState::Delivered | DeliveryState::Superseded
            ) {
                for a in attempts.scan_prefix(&k).keys() {
                    deletes.push(Mutation::delete(Table::Attempts, a?.to_vec()));
                }
                deletes.push(Mutation::delete(Table::Deliveries, k.to_vec()));
            }
            if deletes.len() >= PRUNE_CHUNK {
                self.store.write(std::mem::take(&mut deletes)).await?;
            }
        }
        if !deletes.is_empty() {
            self.store.write(deletes).await?;
        }
        Ok(())
    }

    /// Deletes every delivery record and attempt of `endpoint`, in chunks.
    pub async fn delete_endpoint(&self, endpoint: &EndpointId) -> Result<()> {
        for table in [Table::Deliveries, Table::Attempts] {
            loop {
                let keys: Vec<_> = self
                    .store
                    .table(table)?
                    .scan_prefix(keys::scope(endpoint.as_str()))
                    .keys()
                    .take(DELETE_CHUNK)
                    .collect::<std::result::Result<_, _>>()?;
                if keys.is_empty() {
                    break;
                }
                self.store
                    .write(
                        keys.into_iter()
                            .map(|k| Mutation::delete(table, k.to_vec()))
                            .collect(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

fn decode_delivery(endpoint: &EndpointId, offset: Offset, bytes: &[u8]) -> Result<DeliveryRecord> {
    StoredDelivery::decode(bytes)
        .map(|d| d.into_record(endpoint, offset))
        .map_err(|e| Error::Corrupt(format!("delivery {endpoint}/{offset}: {e}")))
}
