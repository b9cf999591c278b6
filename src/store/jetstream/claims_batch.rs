//! A batch of events appended with its claims in three requests whatever
//! its size, where one claim at a time took two per event:
//!
//! 1. one direct get of every id's claim (`multi_last`: the last message
//!    of each key's subject on the bucket's stream, from any replica);
//! 2. the events not stored yet, as one atomic batch on the event stream
//!    ([`super::EventStream::append_batch`]);
//! 3. the new claims, as one atomic batch on the bucket's stream, each a
//!    `create` (`Nats-Expected-Last-Subject-Sequence`: 0, or the revision
//!    of the key's delete marker, as read in 1). A batch that loses a race
//!    for one key (another broker's append of the same id) is refused as a
//!    whole; the claims then go one by one, as before.

use std::collections::{HashMap, HashSet};

use async_nats::{jetstream::kv::CreateErrorKind, HeaderMap};
use bytes::Bytes;
use tokio_stream::StreamExt as _;

use super::{
    bucket,
    idempotent::Claim,
    log::SERVER_MAX_BATCH,
    publish,
    read::{header_u64, DIRECT_TIMEOUT},
    wire::{EXPECTED_LAST_SUBJECT_SEQUENCE, KV_OPERATION, SEQUENCE, SUBJECT},
    IdempotentLog, JetStreamError,
};
use crate::model::{Appended, NewEvent, Offset};

/// What the bucket holds under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// The sequence of the key's last message (its revision).
    revision: u64,
    /// Its claim; `None` once deleted (a delete marker).
    claim: Option<Claim>,
}

/// A claim to record: the key, the revision it expects, the offset.
type NewClaim = (String, u64, Offset);

impl IdempotentLog {
    /// Appends `events` as one atomic batch (all or nothing), with the
    /// claims beside it: an id whose claim holds an offset is answered
    /// with it (`duplicate = true`) and not written; the others go as the
    /// batch (deduplicated within the stream's window, as
    /// [`super::EventStream::append_batch`] says); then each newly written
    /// id's claim records its offset, so later appends of it are
    /// duplicates beyond the window too. Not guaranteed, unlike
    /// [`Self::append`]: a batch racing a single append of the same id
    /// after the window has passed for an earlier copy; and a claim that
    /// fails to be recorded (logged) leaves that id to the window alone.
    pub async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<Appended>, JetStreamError> {
        let seen = self.last_claims(events).await?;
        let stored = |id: &str| match seen.get(id) {
            Some(Seen {
                claim: Some(Claim::Stored(offset)),
                ..
            }) => Some(*offset),
            _ => None,
        };
        let fresh: Vec<NewEvent> = events
            .iter()
            .filter(|e| stored(&e.event.id).is_none())
            .cloned()
            .collect();
        let mut written = self.log.append_batch(&fresh).await?.into_iter();
        let mut results = Vec::with_capacity(events.len());
        let mut claims: Vec<NewClaim> = Vec::new();
        let mut claimed = HashSet::new();
        for event in events {
            let id = event.event.id.as_str();
            let appended = match stored(id) {
                Some(offset) => self.log.duplicate_answer(offset, event).await?,
                None => {
                    let appended = written.next().ok_or_else(|| JetStreamError::Protocol {
                        what: "atomic batch publish",
                        reason: "fewer answers than events".to_owned(),
                    })?;
                    let expected = match seen.get(id) {
                        None => Some(0),
                        Some(Seen {
                            claim: None,
                            revision,
                        }) => Some(*revision),
                        // Another attempt's pending claim: it confirms.
                        Some(_) => None,
                    };
                    if let (false, Some(expected), true) =
                        (appended.duplicate, expected, claimed.insert(id))
                    {
                        claims.push((bucket::encode_key(id), expected, appended.offset));
                    }
                    appended
                }
            };
            results.push(appended);
        }
        self.record_claims(claims).await;
        Ok(results)
    }

    /// What the bucket holds for the ids of `events`: one direct get
    /// (`multi_last`) per [`SERVER_MAX_BATCH`] ids.
    async fn last_claims(
        &self,
        events: &[NewEvent],
    ) -> Result<HashMap<String, Seen>, JetStreamError> {
        let mut asked = HashSet::new();
        let subjects: Vec<String> = events
            .iter()
            .map(|e| e.event.id.as_str())
            .filter(|id| asked.insert(*id))
            .map(|id| self.subject_of(&bucket::encode_key(id)))
            .collect();
        let mut seen = HashMap::with_capacity(subjects.len());
        for chunk in subjects.chunks(SERVER_MAX_BATCH) {
            self.multi_last(chunk, &mut seen).await?;
        }
        Ok(seen)
    }

    /// One `multi_last` direct get of `subjects`' last messages, into
    /// `seen` by id.
    async fn multi_last(
        &self,
        subjects: &[String],
        seen: &mut HashMap<String, Seen>,
    ) -> Result<(), JetStreamError> {
        const WHAT: &str = "read claims";
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.error(WHAT, e, true))?;
        let body = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.KV_{}", self.config.bucket),
                inbox,
                body.to_string().into(),
            )
            .await
            .map_err(|e| self.error(WHAT, e, true))?;
        let prefix = self.subject_of("");
        loop {
            let message = tokio::time::timeout(DIRECT_TIMEOUT, replies.next())
                .await
                .map_err(|_| {
                    self.error(WHAT, format!("no answer within {DIRECT_TIMEOUT:?}"), true)
                })?
                .ok_or_else(|| self.error(WHAT, "the subscription closed", true))?;
            let Some(revision) = header_u64(&message, SEQUENCE) else {
                return match message.status.map(|s| s.as_u16()) {
                    // The end of the answer; none of the keys exists.
                    Some(204 | 404) => Ok(()),
                    status => Err(self.error(
                        WHAT,
                        format!(
                            "status {} {}",
                            status.unwrap_or(0),
                            message.description.unwrap_or_default()
                        ),
                        true,
                    )),
                };
            };
            let headers = message.headers.as_ref();
            let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
            let key = header(SUBJECT)
                .and_then(|s| s.strip_prefix(prefix.as_str()))
                .unwrap_or_default();
            let Some(id) = bucket::decode_key(key) else {
                return Err(self.error(WHAT, format!("an answer for subject {key:?}"), false));
            };
            let claim = match header(KV_OPERATION) {
                Some(_) => None,
                None => Some(Claim::decode(&message.payload).ok_or_else(|| {
                    self.error(
                        WHAT,
                        format!("key {key} holds no claim: {:?}", message.payload),
                        false,
                    )
                })?),
            };
            seen.insert(id, Seen { revision, claim });
        }
    }

    /// Records that each id of `stored` is stored at its offset, as a new
    /// claim: one atomic batch of creates per [`SERVER_MAX_BATCH`], or one
    /// by one when the server refuses a batch; a key that exists keeps
    /// what it holds. A claim that cannot be recorded is logged.
    pub async fn record_new_claims(&self, stored: &[(&str, Offset)]) {
        let claims = stored
            .iter()
            .map(|(id, offset)| (bucket::encode_key(id), 0, *offset))
            .collect();
        self.record_claims(claims).await
    }

    /// Records `claims` as one atomic batch of creates per
    /// [`SERVER_MAX_BATCH`]; a batch the server refuses (a key written
    /// meanwhile) goes one claim at a time. A claim that cannot be
    /// recorded is logged: that id is left to the deduplication window.
    async fn record_claims(&self, claims: Vec<NewClaim>) {
        for chunk in claims.chunks(SERVER_MAX_BATCH) {
            if chunk.len() > 1 {
                let messages: Vec<(String, HeaderMap, Bytes)> = chunk
                    .iter()
                    .map(|(key, expected, offset)| {
                        let mut headers = HeaderMap::new();
                        headers.insert(
                            EXPECTED_LAST_SUBJECT_SEQUENCE,
                            expected.to_string().as_str(),
                        );
                        (
                            self.subject_of(key),
                            headers,
                            Claim::Stored(*offset).encode(),
                        )
                    })
                    .collect();
                let batch = messages.iter().map(|(s, h, p)| (s.as_str(), h, p));
                match publish::atomic(&self.client, batch).await {
                    Ok(_) => continue,
                    Err(e) => {
                        self.refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(
                        bucket = %self.config.bucket,
                        error = %e,
                        "a batch of id claims was refused; recording them one by one"
                        )
                    }
                }
            }
            self.record_one_by_one(chunk).await;
        }
    }

    /// Creates each of `claims` on its own (concurrently).
    async fn record_one_by_one(&self, claims: &[NewClaim]) {
        let mut confirms = tokio::task::JoinSet::new();
        for (key, _, offset) in claims {
            let (ids, key, claim) = (
                self.ids.clone(),
                key.clone(),
                Claim::Stored(*offset).encode(),
            );
            confirms.spawn(async move { ids.create(key, claim).await });
        }
        while let Some(done) = confirms.join_next().await {
            match done {
                Ok(Ok(_)) => {}
                // A concurrent append claimed it: it confirms the same offset.
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Ok(Err(e)) => tracing::warn!(
                    bucket = %self.config.bucket,
                    error = %e,
                    "an appended event's id claim was not recorded: a copy published after \
                     the stream's deduplication window would be stored again"
                ),
                Err(e) => tracing::warn!(error = %e, "recording a batch's claims failed"),
            }
        }
    }

    /// The subject of the bucket's `key`.
    fn subject_of(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.config.bucket)
    }
}
