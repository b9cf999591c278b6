//! The typed state stores beside the log: what the rest of the broker
//! reads and writes instead of tables and keys.
//!
//! - [`EndpointRecords`]: endpoint id → the endpoint's stored form (bytes
//!   the delivery module seals and opens; opaque here);
//! - [`DeliveryRecords`]: per endpoint and offset, the delivery record and
//!   its numbered attempts, in offset order;
//! - [`ConsumerRecords`]: consumer name → [`ConsumerRecord`];
//! - [`AuditRecords`]: admin changes, in time order.
//!
//! Reads go straight to storage; writes are durable when they return.
//! Changes that must become durable together are gathered in one
//! [`StateWrites`] and committed at once (e.g. a delivery's outcome with
//! its consumer's ack). A second backend implements these types with the
//! same methods; nothing above `store` knows how they are keyed.

mod audit;
mod consumers;
mod deliveries;
mod endpoints;
mod records;

pub use audit::AuditRecords;
pub use consumers::ConsumerRecords;
pub use deliveries::DeliveryRecords;
pub use endpoints::EndpointRecords;

use prost::Message;

use self::records::{StoredAttempt, StoredDelivery};
use super::{keys, Mutation, Table};
use crate::{
    error::Result,
    model::{
        delivery::{AttemptRecord, DeliveryRecord},
        EndpointId, Offset,
    },
    store::keys::ConsumerRecord,
};

/// The items of `iter`, or its error as the one item (a table that could
/// not be had: the state database is being reopened).
fn or_error<T, I>(iter: Result<I>) -> impl DoubleEndedIterator<Item = Result<T>>
where
    I: DoubleEndedIterator<Item = Result<T>>,
{
    let (ok, err) = match iter {
        Ok(iter) => (Some(iter), None),
        Err(e) => (None, Some(Err(e))),
    };
    err.into_iter().chain(ok.into_iter().flatten())
}

/// State changes applied together: durable all at once, after every write
/// queued before them and before any queued after.
#[derive(Debug, Default)]
pub struct StateWrites(pub(super) Vec<Mutation>);

impl StateWrites {
    /// No changes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many changes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Sets the delivery record of `endpoint` for the event at `offset`
    /// (the record's own `endpoint_id` and `offset` are not looked at).
    pub fn put_delivery(&mut self, endpoint: &EndpointId, offset: Offset, record: &DeliveryRecord) {
        self.0.push(Mutation::put(
            Table::Deliveries,
            keys::scoped_offset_key(endpoint.as_str(), offset),
            StoredDelivery::from_record(record).encode_to_vec(),
        ));
    }

    /// Adds attempt number `n` of that delivery.
    pub fn put_attempt(
        &mut self,
        endpoint: &EndpointId,
        offset: Offset,
        n: u32,
        attempt: &AttemptRecord,
    ) {
        self.0.push(Mutation::put(
            Table::Attempts,
            keys::scoped_offset_n_key(endpoint.as_str(), offset, n),
            StoredAttempt::from_record(attempt).encode_to_vec(),
        ));
    }

    /// Saves the position of consumer `name`.
    pub fn put_consumer(&mut self, name: &str, record: &ConsumerRecord) {
        self.0.push(Mutation::put(
            Table::Consumers,
            name.as_bytes(),
            record.encode_to_vec(),
        ));
    }

    /// Sets the stored form of endpoint `id`.
    pub fn put_endpoint(&mut self, id: &EndpointId, stored: Vec<u8>) {
        self.0.push(Mutation::put(
            Table::Endpoints,
            id.as_str().as_bytes(),
            stored,
        ));
    }
}

impl super::Store {
    /// Queues `writes` (see [`StateWrites`]) and returns a receiver for
    /// their durable outcome; a caller can queue in order and await later.
    pub async fn submit_state(
        &self,
        writes: StateWrites,
    ) -> crate::error::Result<tokio::sync::oneshot::Receiver<crate::error::Result<()>>> {
        self.submit_write(writes.0).await
    }

    /// Applies `writes` and waits until they are durable. With nothing to
    /// write, waits for every write queued before.
    pub async fn write_state(&self, writes: StateWrites) -> crate::error::Result<()> {
        self.write(writes.0).await
    }

    /// The endpoint records.
    pub fn endpoints(&self) -> EndpointRecords<'_> {
        EndpointRecords::new(self)
    }

    /// The delivery records and attempts.
    pub fn deliveries(&self) -> DeliveryRecords<'_> {
        DeliveryRecords::new(self)
    }

    /// The durable consumers' positions.
    pub fn consumers(&self) -> ConsumerRecords<'_> {
        ConsumerRecords::new(self)
    }

    /// The audit trail.
    pub fn audit(&self) -> AuditRecords<'_> {
        AuditRecords::new(self)
    }
}

#[cfg(test)]
mod tests;
