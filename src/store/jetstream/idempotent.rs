//! Idempotent publish beyond the stream's deduplication window: every event
//! id is claimed in a key-value bucket before its event is published, and
//! the claim is confirmed with the event's offset after.
//!
//! One append of an id:
//! 1. `create` the id's key with a pending claim (a token of this attempt);
//! 2. on success, publish with `Nats-Msg-Id` ([`EventStream::append`]) and
//!    replace the claim by the offset with a CAS `update` on the claim's
//!    revision;
//! 3. when the key exists and holds an offset, answer that offset with
//!    `duplicate = true` (whenever it was written: the bucket keeps ids
//!    until they are deleted);
//! 4. when it holds another attempt's pending claim, wait for the offset;
//!    a claim whose revision has not moved for `stale_after` (its claimer
//!    died between claim and confirm) is taken over by a CAS `update` on
//!    that revision, and this attempt publishes. The claimer may have
//!    published before it died: within the deduplication window the
//!    stream answers with its offset, so the id still has one offset.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use tokio::time::Instant;

use super::{bucket, EventStream, JetStreamError};
use crate::model::{Appended, NewEvent, Offset};

/// Where the claims live and how long a claim may stay pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// The bucket of claims (letters, digits, `-` and `_`).
    pub bucket: String,
    /// Its replicas (as the stream's).
    pub replicas: usize,
    /// A pending claim whose revision stays the same this long (as this
    /// broker sees it, on its own monotonic clock) belongs to a claimer
    /// presumed dead and is taken over. Keep it well under the stream's
    /// `duplicate_window` and well over a publish's worst latency.
    pub stale_after: Duration,
    /// Between two looks at another attempt's pending claim.
    pub poll: Duration,
}

impl IdempotencyConfig {
    /// The claims of the installation named `prefix`: bucket `<PREFIX>_IDS`,
    /// R3, stale after 10 s, polled every 20 ms.
    pub fn with_prefix(prefix: &str) -> Self {
        IdempotencyConfig {
            bucket: bucket::name(prefix, "IDS"),
            replicas: 3,
            stale_after: Duration::from_secs(10),
            poll: Duration::from_millis(20),
        }
    }
}

/// What an id's key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// An attempt (its token) is publishing the event.
    Pending(String),
    /// The event is stored at this offset.
    Stored(Offset),
}

impl Claim {
    /// The bytes in the bucket: `pending <token>` or `stored <offset>`.
    pub fn encode(&self) -> Bytes {
        match self {
            Claim::Pending(token) => format!("pending {token}").into(),
            Claim::Stored(offset) => format!("stored {offset}").into(),
        }
    }

    /// Reads what [`Claim::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Claim> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (kind, rest) = text.split_once(' ')?;
        match kind {
            "pending" if !rest.is_empty() => Some(Claim::Pending(rest.to_owned())),
            "stored" => rest
                .parse::<u64>()
                .ok()
                .map(|n| Claim::Stored(Offset::new(n))),

            _ => None,
        }
    }
}

/// The event log with idempotency by claims; cheap to clone.
#[derive(Clone)]
pub struct IdempotentLog {
    pub(super) log: EventStream,
    pub(super) ids: kv::Store,
    pub(super) config: IdempotencyConfig,
    /// The connection, for what `kv::Store` does not offer (batches).
    pub(super) client: async_nats::Client,
    /// Batches of claims the server refused ([`Self::claim_batches_refused`]).
    pub(super) refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl IdempotentLog {
    /// Creates (or opens) the claims bucket beside `log`.
    pub async fn open(log: EventStream, config: IdempotencyConfig) -> Result<Self, JetStreamError> {
        bucket::validate_name(&config.bucket)?;
        if config.poll.is_zero() || config.stale_after < config.poll {
            return Err(JetStreamError::Config {
                field: "stale_after",
                reason: "poll above zero, stale_after at least poll".to_owned(),
            });
        }
        let client = log.client.clone();
        // Batches' claims go as atomic batches ([`super::claims_batch`]).
        let (ids, _) = bucket::open_atomic(&client, &config.bucket, config.replicas).await?;
        Ok(IdempotentLog {
            log,
            ids,
            config,
            client,
            refused: Default::default(),
        })
    }

    /// The log underneath.
    pub fn log(&self) -> &EventStream {
        &self.log
    }

    /// How many batches of claims ([`Self::append_batch`]) the server
    /// refused, so that their claims went one by one: a key written
    /// meanwhile (another append of the same id, on any broker).
    pub fn claim_batches_refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends one event unless its id was appended before (through this
    /// bucket, at any time): then answers the stored offset with
    /// `duplicate = true`. Of concurrent appends of one id (on any broker)
    /// one writes and answers `duplicate = false`, the others wait for it.
    pub async fn append(&self, event: &NewEvent) -> Result<Appended, JetStreamError> {
        let key = bucket::encode_key(&event.event.id);
        let claim = Claim::Pending(ulid::Ulid::new().to_string()).encode();
        // Three staleness periods: time to see a claim go stale and take
        // it over, also when a taker dies too.
        let give_up = Instant::now() + self.config.stale_after * 3;
        // The pending revision seen, and since when (this broker's clock).
        let mut watched: Option<(u64, Instant)> = None;
        loop {
            match self.ids.create(&key, claim.clone()).await {
                Ok(revision) => return self.publish_claimed(event, &key, revision).await,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists || bucket::is_conflict(&e) => {
                }
                Err(e) => {
                    // Only a key the bucket refuses is not worth another
                    // try; the rest pass (no answer, or no responders
                    // while the bucket's replicas set up again after its
                    // stream's configuration changed).
                    let retriable = e.kind() != CreateErrorKind::InvalidKey;
                    return Err(self.error("claim", e, retriable));
                }
            }
            let entry = self
                .ids
                .entry(key.as_str())
                .await
                .map_err(|e| self.error("read claim", e, true))?;
            match entry {
                Some(entry) if entry.operation == Operation::Put => {
                    match Claim::decode(&entry.value) {
                        Some(Claim::Stored(offset)) => {
                            return self.log.duplicate_answer(offset, event).await
                        }
                        Some(Claim::Pending(_)) => match watched {
                            Some((revision, since))
                                if revision == entry.revision
                                    && since.elapsed() >= self.config.stale_after =>
                            {
                                match self.ids.update(&key, claim.clone(), revision).await {
                                    Ok(mine) => {
                                        return self.publish_claimed(event, &key, mine).await
                                    }
                                    Err(e)
                                        if e.kind() == UpdateErrorKind::WrongLastRevision
                                            || bucket::is_conflict(&e) =>
                                    {
                                        watched = None
                                    }
                                    Err(e) => {
                                        let retriable = e.kind() == UpdateErrorKind::TimedOut;
                                        return Err(self.error("take over claim", e, retriable));
                                    }
                                }
                            }
                            Some((revision, _)) if revision == entry.revision => {}
                            _ => watched = Some((entry.revision, Instant::now())),
                        },
                        None => {
                            return Err(self.error(
                                "read claim",
                                format!("key {key} holds no claim: {:?}", entry.value),
                                false,
                            ))
                        }
                    }
                }
                // Deleted between the create and the read: create again.
                _ => {}
            }
            if Instant::now() >= give_up {
                return Err(self.error(
                    "claim",
                    format!("event id stays claimed by another attempt (key {key})"),
                    true,
                ));
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }

    /// Publishes `event` under this attempt's claim (at `revision`) and
    /// confirms its offset.
    async fn publish_claimed(
        &self,
        event: &NewEvent,
        key: &str,
        revision: u64,
    ) -> Result<Appended, JetStreamError> {
        let appended = match self.log.append(event).await {
            Ok(appended) => appended,
            Err(e) => {
                // Give the claim back so a retry need not wait for it to go
                // stale; if the event was stored after all, the retry is
                // answered by the stream's deduplication.
                let _ = self.ids.delete_expect_revision(key, Some(revision)).await;
                return Err(e);
            }
        };
        match self
            .ids
            .update(key, Claim::Stored(appended.offset).encode(), revision)
            .await
        {
            Ok(_) => Ok(appended),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision || bucket::is_conflict(&e) => {
                // Taken over meanwhile (this attempt was slower than
                // `stale_after`): the taker confirms; if it already did with
                // another offset, that one is the id's.
                let entry = self
                    .ids
                    .get(key)
                    .await
                    .map_err(|e| self.error("read claim", e, true))?;
                match entry.as_deref().and_then(Claim::decode) {
                    Some(Claim::Stored(offset)) if offset != appended.offset => {
                        self.log.duplicate_answer(offset, event).await
                    }
                    _ => Ok(appended),
                }
            }
            Err(e) => {
                let retriable = e.kind() == UpdateErrorKind::TimedOut;
                Err(self.error("confirm claim", e, retriable))
            }
        }
    }

    /// Records each id of `stored` as stored at its offset (events copied
    /// into the stream by `stevedore migrate`, which publishes them without
    /// claims), so a later append of one of them answers its offset with
    /// `duplicate = true`, beyond the deduplication window too.
    pub(super) async fn record_stored(
        &self,
        stored: &[(String, Offset)],
    ) -> Result<(), JetStreamError> {
        let mut puts = tokio::task::JoinSet::new();
        for (id, offset) in stored {
            let (ids, key) = (self.ids.clone(), bucket::encode_key(id));
            let claim = Claim::Stored(*offset).encode();
            puts.spawn(async move { ids.put(key, claim).await });
        }
        while let Some(done) = puts.join_next().await {
            done.map_err(|e| self.error("record claim", e, false))?
                .map_err(|e| self.error("record claim", e, true))?;
        }
        Ok(())
    }

    /// Forgets the claims of `ids` that hold an offset below `before`
    /// (retention removed those events: as in embedded mode, the ids may
    /// be published anew); returns how many went. A claim written again
    /// meanwhile is left alone.
    pub(super) async fn forget_below(
        &self,
        ids: &[String],
        before: Offset,
    ) -> Result<usize, JetStreamError> {
        let mut forgotten = 0;
        for chunk in ids.chunks(FORGET_AT_ONCE) {
            let mut deletes = tokio::task::JoinSet::new();
            for id in chunk {
                let (ids, key) = (self.ids.clone(), bucket::encode_key(id));
                deletes.spawn(async move {
                    let entry = match ids.entry(&key).await {
                        Ok(Some(entry)) if entry.operation == Operation::Put => entry,
                        Ok(_) => return Ok(false),
                        Err(e) => return Err(("read claim", e.to_string())),
                    };
                    match Claim::decode(&entry.value) {
                        Some(Claim::Stored(offset)) if offset < before => {}
                        _ => return Ok(false),
                    }
                    match ids.delete_expect_revision(&key, Some(entry.revision)).await {
                        Ok(()) => Ok(true),
                        Err(e) if bucket::is_conflict(&e) => Ok(false),
                        Err(e) => Err(("forget claim", e.to_string())),
                    }
                });
            }
            while let Some(done) = deletes.join_next().await {
                match done.map_err(|e| self.error("forget claim", e, true))? {
                    Ok(gone) => forgotten += usize::from(gone),
                    Err((what, e)) => return Err(self.error(what, e, true)),
                }
            }
        }
        Ok(forgotten)
    }

    /// The offset of event `id`: its claim's, else (appended without a
    /// claim, or not confirmed yet) the stream's, within its deduplication
    /// window.
    pub async fn offset_of(&self, id: &str) -> Result<Option<Offset>, JetStreamError> {
        let value = self
            .ids
            .get(bucket::encode_key(id))
            .await
            .map_err(|e| self.error("read claim", e, true))?;
        match value.as_deref().and_then(Claim::decode) {
            Some(Claim::Stored(offset)) => Ok(Some(offset)),
            _ => self.log.probe_id(id).await,
        }
    }

    pub(super) fn error(
        &self,
        what: &'static str,
        e: impl std::fmt::Display,
        retriable: bool,
    ) -> JetStreamError {
        bucket::error(&self.config.bucket, what, e, retriable)
    }
}

/// Claims forgotten concurrently.
const FORGET_AT_ONCE: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip() {
        for claim in [Claim::Pending("01J".into()), Claim::Stored(Offset::new(42))] {
            assert_eq!(Claim::decode(&claim.encode()), Some(claim));
        }
        assert_eq!(Claim::decode(b"stored x"), None);
        assert_eq!(Claim::decode(b"pending "), None);
        assert_eq!(Claim::decode(b"other 1"), None);
        assert_eq!(Claim::decode(b"\xff"), None);
    }

    #[test]
    fn names_take_the_installation_prefix() {
        assert_eq!(IdempotencyConfig::with_prefix("t1").bucket, "T1_IDS");
    }
}
