//! Typed state buckets: endpoint records and delivery records as entries
//! of key-value buckets, written with CAS on their revision, and a watch of
//! a bucket's changes (brokers watch the endpoints bucket). Values are
//! bytes: their encoding stays the store's.

use async_nats::{
    jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
    Client,
};
use bytes::Bytes;
use std::time::Duration;
use tokio_stream::StreamExt as _;

use super::{bucket, JetStreamError};

/// The state buckets of the installation named `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Endpoint records: `<PREFIX>_ENDPOINTS`.
    pub endpoints: String,
    /// Delivery records: `<PREFIX>_DELIVERIES`.
    pub deliveries: String,
    /// Replicas of each bucket.
    pub replicas: usize,
}

impl StateConfig {
    /// The buckets of the installation named `prefix`, R3.
    pub fn with_prefix(prefix: &str) -> Self {
        StateConfig {
            endpoints: bucket::name(prefix, "ENDPOINTS"),
            deliveries: bucket::name(prefix, "DELIVERIES"),
            replicas: 3,
        }
    }
}

/// One bucket of records, keyed by id; cheap to clone.
#[derive(Clone)]
pub struct Records {
    store: kv::Store,
    bucket: String,
}

/// A record and the revision to update it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The store's encoding of the record.
    pub value: Bytes,
    /// Its revision.
    pub revision: u64,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Written {
    /// Written; the record's new revision.
    Done(u64),
    /// Someone else wrote (or created, or deleted) it first: read again.
    Conflict,
}

/// A change of a watched bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The record `id` was created or updated.
    Put {
        /// The record's id.
        id: String,
        /// The store's encoding of it.
        value: Bytes,
        /// Its revision.
        revision: u64,
    },
    /// The record `id` was deleted.
    Deleted {
        /// The record's id.
        id: String,
        /// The revision of the deletion.
        revision: u64,
    },
}

/// The changes of a bucket: first its current records (as puts), then
/// every change after, in revision order.
pub struct Watch {
    inner: kv::Watch,
    bucket: String,
}

/// Both state buckets.
#[derive(Clone)]
pub struct State {
    /// Endpoint records.
    pub endpoints: Records,
    /// Delivery records.
    pub deliveries: Records,
}

impl State {
    /// Creates (or opens) both buckets.
    pub async fn open(client: &Client, config: &StateConfig) -> Result<Self, JetStreamError> {
        Ok(State {
            endpoints: Records::open(client, &config.endpoints, config.replicas).await?,
            deliveries: Records::open(client, &config.deliveries, config.replicas).await?,
        })
    }
}

impl Records {
    /// Creates (or opens) the bucket `name` (records never expire).
    pub async fn open(
        client: &Client,
        name: &str,
        replicas: usize,
    ) -> Result<Self, JetStreamError> {
        bucket::validate_name(name)?;
        let store = bucket::open(client, name, replicas, Duration::ZERO).await?;
        Ok(Records {
            store,
            bucket: name.to_owned(),
        })
    }

    /// The record `id`, if any. A direct get: a replica may answer with a
    /// moment-old revision, which a CAS write then finds out.
    pub async fn get(&self, id: &str) -> Result<Option<Versioned>, JetStreamError> {
        let entry = self
            .store
            .entry(bucket::encode_key(id))
            .await
            .map_err(|e| self.error("read", e, true))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| Versioned {
                value: e.value,
                revision: e.revision,
            }))
    }

    /// Writes the record `id` if there is none.
    pub async fn create(&self, id: &str, value: Bytes) -> Result<Written, JetStreamError> {
        match self.store.create(bucket::encode_key(id), value).await {
            Ok(revision) => Ok(Written::Done(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists || bucket::is_conflict(&e) => {
                Ok(Written::Conflict)
            }
            Err(e) => {
                let retriable = e.kind() == CreateErrorKind::Publish;
                Err(self.error("create", e, retriable))
            }
        }
    }

    /// Replaces the record `id` if its revision is still `revision`.
    pub async fn update(
        &self,
        id: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Written, JetStreamError> {
        let result = self
            .store
            .update(bucket::encode_key(id), value, revision)
            .await;
        self.written(result, "update")
    }

    /// Deletes the record `id` if its revision is still `revision`;
    /// `Done` carries that (deleted) revision, as the client does not return
    /// the deletion's own ([`Change::Deleted`] of a watch has it).
    pub async fn delete(&self, id: &str, revision: u64) -> Result<Written, JetStreamError> {
        let key = bucket::encode_key(id);
        match self
            .store
            .delete_expect_revision(&key, Some(revision))
            .await
        {
            // The deletion's own revision is not returned by the client.
            Ok(()) => Ok(Written::Done(revision)),
            Err(e) => self.written(Err(e), "delete"),
        }
    }

    /// Watches every record of the bucket.
    pub async fn watch(&self) -> Result<Watch, JetStreamError> {
        let inner = self
            .store
            .watch_all()
            .await
            .map_err(|e| self.error("watch", e, true))?;
        Ok(Watch {
            inner,
            bucket: self.bucket.clone(),
        })
    }

    fn written(
        &self,
        result: Result<u64, kv::UpdateError>,
        what: &'static str,
    ) -> Result<Written, JetStreamError> {
        match result {
            Ok(revision) => Ok(Written::Done(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision || bucket::is_conflict(&e) => {
                Ok(Written::Conflict)
            }
            Err(e) => {
                let retriable = e.kind() == UpdateErrorKind::TimedOut;
                Err(self.error(what, e, retriable))
            }
        }
    }

    fn error(
        &self,
        what: &'static str,
        e: impl std::fmt::Display,
        retriable: bool,
    ) -> JetStreamError {
        bucket::error(&self.bucket, what, e, retriable)
    }
}

impl Watch {
    /// The next change; `None` when the watch ended (the connection closed).
    /// Keys this module did not write are skipped.
    pub async fn next(&mut self) -> Option<Result<Change, JetStreamError>> {
        loop {
            let entry = match self.inner.next().await? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(bucket::error(&self.bucket, "watch", e, true))),
            };
            let Some(id) = bucket::decode_key(&entry.key) else {
                continue;
            };
            return Some(Ok(match entry.operation {
                Operation::Put => Change::Put {
                    id,
                    value: entry.value,
                    revision: entry.revision,
                },
                Operation::Delete | Operation::Purge => Change::Deleted {
                    id,
                    revision: entry.revision,
                },
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_installation_prefix() {
        let config = StateConfig::with_prefix("t1");
        assert_eq!(config.endpoints, "T1_ENDPOINTS");
        assert_eq!(config.deliveries, "T1_DELIVERIES");
    }
}
