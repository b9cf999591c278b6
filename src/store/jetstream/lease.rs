//! Leases (one broker at a time serves named consumers, delivers a shard
//! of the endpoints): a key in a
//! bucket whose entries expire `ttl` after their last write.
//!
//! Acquire is a `create` of the lease's key (it succeeds only when the key
//! is absent: never held, released, or expired); renew is a CAS `update` on
//! the revision the holder last wrote. That revision is the fencing token:
//! it grows with every write, and a holder whose lease expired and was
//! taken by another learns it at its next renewal, which finds another
//! revision (or none) and fails.

use std::time::Duration;

use async_nats::{
    jetstream::kv::{self, CreateErrorKind, UpdateErrorKind},
    Client,
};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

use super::{bucket, JetStreamError};

/// Where leases live and how long one lasts without renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The bucket of leases (letters, digits, `-` and `_`).
    pub bucket: String,
    /// Its replicas.
    pub replicas: usize,
    /// A lease not renewed this long expires (the bucket's `max_age`; the
    /// server removes expired entries on its own timer, so another
    /// contender may get it somewhat later, never earlier).
    pub ttl: Duration,
}

impl LeaseConfig {
    /// The leases of the installation named `prefix`: bucket
    /// `<PREFIX>_LEASES`, R3, 30 s.
    pub fn with_prefix(prefix: &str) -> Self {
        LeaseConfig {
            bucket: bucket::name(prefix, "LEASES"),
            replicas: 3,
            ttl: Duration::from_secs(30),
        }
    }
}

/// The leases bucket; cheap to clone.
#[derive(Clone)]
pub struct Leases {
    store: kv::Store,
    config: LeaseConfig,
}

/// A lease this process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Its name (what it guards).
    pub name: String,
    /// The holder's name, stored as the lease's value.
    pub holder: String,
    /// The fencing token: the revision of the holder's last write. Work
    /// done under the lease can carry it, so a store can refuse a stale
    /// holder's writes.
    pub revision: u64,
    /// Until when the lease is surely still this holder's: the send of the
    /// last successful write plus the TTL, on this process's clock. Stop
    /// the guarded work at this instant unless a renewal succeeded.
    pub valid_until: Instant,
}

/// The outcome of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Renewal {
    /// Still held; the lease carries its new revision and validity.
    Kept,
    /// Expired and taken (or just expired): stop the guarded work.
    Lost,
}

impl Leases {
    /// Creates (or opens) the leases bucket.
    pub async fn open(client: &Client, config: LeaseConfig) -> Result<Self, JetStreamError> {
        bucket::validate_name(&config.bucket)?;
        if config.ttl < Duration::from_secs(1) {
            return Err(JetStreamError::Config {
                field: "ttl",
                reason: "at least 1s".to_owned(),
            });
        }
        let store = bucket::open(client, &config.bucket, config.replicas, config.ttl).await?;
        Ok(Leases { store, config })
    }

    /// Takes the lease `name` for `holder` if nobody holds it; `None` when
    /// someone does.
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<Option<Lease>, JetStreamError> {
        let key = bucket::encode_key(name);
        let sent = Instant::now();
        match self
            .store
            .create(&key, holder.to_owned().into_bytes().into())
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                name: name.to_owned(),
                holder: holder.to_owned(),
                revision,
                valid_until: sent + self.config.ttl,
            })),
            // A conflict: another contender's create is in flight.
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists || bucket::is_conflict(&e) => {
                Ok(None)
            }
            Err(e) => {
                let retriable = e.kind() == CreateErrorKind::Publish;
                Err(bucket::error(
                    &self.config.bucket,
                    "acquire lease",
                    e,
                    retriable,
                ))
            }
        }
    }

    /// Extends `lease` by the TTL, or tells it is lost. An error leaves the
    /// outcome unknown: the lease counts as held until its `valid_until`.
    pub async fn renew(&self, lease: &mut Lease) -> Result<Renewal, JetStreamError> {
        let key = bucket::encode_key(&lease.name);
        let sent = Instant::now();
        match self
            .store
            .update(
                &key,
                lease.holder.clone().into_bytes().into(),
                lease.revision,
            )
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                lease.valid_until = sent + self.config.ttl;
                Ok(Renewal::Kept)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision || bucket::is_conflict(&e) => {
                Ok(Renewal::Lost)
            }
            Err(e) => {
                let retriable = e.kind() == UpdateErrorKind::TimedOut;
                Err(bucket::error(
                    &self.config.bucket,
                    "renew lease",
                    e,
                    retriable,
                ))
            }
        }
    }

    /// Gives `lease` up (only if still held at its revision), so another
    /// contender need not wait for the TTL.
    pub async fn release(&self, lease: Lease) -> Result<(), JetStreamError> {
        let key = bucket::encode_key(&lease.name);
        self.store
            .delete_expect_revision(&key, Some(lease.revision))
            .await
            .map_err(|e| bucket::error(&self.config.bucket, "release lease", e, false))
    }

    /// The names of the leases held now (not released, not expired), for
    /// at most [`LIST_TIMEOUT`].
    pub async fn names(&self) -> Result<Vec<String>, JetStreamError> {
        let failed =
            |e: &dyn std::fmt::Display| bucket::error(&self.config.bucket, "list leases", e, true);
        let list = async {
            let mut keys = self.store.keys().await.map_err(|e| failed(&e))?;
            let mut names = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| failed(&e))?;
                names.extend(bucket::decode_key(&key));
            }
            Ok(names)
        };
        tokio::time::timeout(LIST_TIMEOUT, list)
            .await
            .unwrap_or_else(|_| Err(failed(&format!("no answer within {LIST_TIMEOUT:?}"))))
    }

    /// Who holds the lease `name` now, as the bucket says.
    pub async fn holder(&self, name: &str) -> Result<Option<String>, JetStreamError> {
        let value = self
            .store
            .get(bucket::encode_key(name))
            .await
            .map_err(|e| bucket::error(&self.config.bucket, "read lease", e, true))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

/// How long listing the leases may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_installation_prefix() {
        let config = LeaseConfig::with_prefix("t1");
        assert_eq!(config.bucket, "T1_LEASES");
        assert_eq!(config.ttl, Duration::from_secs(30));
    }
}
