//! Webhook endpoints: id → the endpoint's stored form. The bytes are the
//! delivery module's (sealed with the master key when one is set); this
//! store only keeps them.

use std::ops::Deref;

use super::{
    super::{Mutation, Store, Table},
    StateWrites,
};
use crate::error::Result;
use crate::model::EndpointId;

/// The endpoint records, in id order.
pub struct EndpointRecords<'a> {
    store: &'a Store,
}

impl<'a> EndpointRecords<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Endpoint `id`'s stored form, if it exists.
    pub fn get(&self, id: &EndpointId) -> Result<Option<impl Deref<Target = [u8]>>> {
        Ok(self
            .store
            .table(Table::Endpoints)?
            .get(id.as_str().as_bytes())?)
    }

    /// How many endpoints there are (an error while the state database is
    /// reopened after a failed write, rather than a count of none).
    pub fn count(&self) -> Result<usize> {
        Ok(self.store.table(Table::Endpoints)?.len())
    }

    /// Every endpoint id, in order.
    pub fn ids(&self) -> Result<Vec<String>> {
        self.store
            .table(Table::Endpoints)?
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Every endpoint's stored form, in id order.
    pub fn all(&self) -> impl Iterator<Item = Result<impl Deref<Target = [u8]>>> {
        self.after("")
    }

    /// The stored forms of the endpoints with ids after `after` (empty:
    /// all), in id order: the pages of a listing.
    pub fn after(&self, after: &str) -> impl Iterator<Item = Result<impl Deref<Target = [u8]>>> {
        super::or_error(self.store.table(Table::Endpoints).map(|tree| {
            let iter = if after.is_empty() {
                tree.iter()
            } else {
                let mut from = after.as_bytes().to_vec();
                from.push(0);
                tree.range(from..)
            };
            iter.values().map(|v| Ok(v?))
        }))
    }

    /// Sets endpoint `id`'s stored form, durably.
    pub async fn put(&self, id: &EndpointId, stored: Vec<u8>) -> Result<()> {
        let mut writes = StateWrites::new();
        writes.put_endpoint(id, stored);
        self.store.write_state(writes).await
    }

    /// Deletes endpoint `id`'s record (not its deliveries: see
    /// [`super::DeliveryRecords::delete_endpoint`]), durably.
    pub async fn delete(&self, id: &EndpointId) -> Result<()> {
        self.store
            .write(vec![Mutation::delete(
                Table::Endpoints,
                id.as_str().as_bytes(),
            )])
            .await
    }
}
