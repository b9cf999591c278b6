//! Durable consumer positions: name → [`ConsumerRecord`].

use super::{
    super::{Mutation, Store, Table},
    StateWrites,
};
use crate::{
    error::{Error, Result},
    store::keys::ConsumerRecord,
};

/// The durable consumers' persisted state.
pub struct ConsumerRecords<'a> {
    store: &'a Store,
}

impl<'a> ConsumerRecords<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Consumer `name`'s record, if it has one.
    pub fn get(&self, name: &str) -> Result<Option<ConsumerRecord>> {
        let Some(bytes) = self.store.table(Table::Consumers)?.get(name.as_bytes())? else {
            return Ok(None);
        };
        decode(name, &bytes).map(Some)
    }

    /// Every consumer's name and record, in name order; `skip` names are
    /// not decoded.
    pub fn list(
        &self,
        skip: impl Fn(&str) -> bool,
    ) -> impl Iterator<Item = Result<(String, ConsumerRecord)>> {
        super::or_error(self.store.table(Table::Consumers).map(|tree| {
            tree.iter().filter_map(move |kv| {
                let (k, v) = match kv {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(e.into())),
                };
                let name = String::from_utf8_lossy(&k).into_owned();
                if skip(&name) {
                    return None;
                }
                Some(decode(&name, &v).map(|r| (name, r)))
            })
        }))
    }

    /// Queues saving `record` as consumer `name`'s position, with `with`
    /// in the same write (applied before it, so the position is never
    /// durable without them); returns a receiver for the outcome.
    pub async fn submit_save(
        &self,
        name: &str,
        record: &ConsumerRecord,
        mut with: StateWrites,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<()>>> {
        with.put_consumer(name, record);
        self.store.submit_state(with).await
    }

    /// Deletes consumer `name`'s record, durably.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.store
            .write(vec![Mutation::delete(Table::Consumers, name.as_bytes())])
            .await
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<ConsumerRecord> {
    prost::Message::decode(bytes).map_err(|e| Error::Corrupt(format!("consumer {name:?}: {e}")))
}
