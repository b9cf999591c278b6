//! Event ids on the stream: each event is published on its id's own
//! subject (`<subject_prefix>.<key>`, [`StreamConfig::subject`]) with
//! `Nats-Expected-Last-Subject-Sequence: 0`, so the event is its own claim.
//! The stream's leader stores it only if no message holds that subject;
//! otherwise the publish (or the whole atomic batch) is refused with
//! "wrong last sequence", and the id's last message says where the id is
//! stored. Of concurrent publishes of one id, on any brokers, the leader
//! stores one; the others are refused while it is in flight, then find it.
//!
//! The claim lasts as long as the message: retention's purge forgets the
//! ids of the events it removes, as the embedded log does. An erased
//! event's message is deleted, so its erasure first publishes the
//! tombstone on the id's subject ([`super::erase`]), with the erased offset
//! in [`ERASED_OFFSET`]: the id stays claimed, and a publish of it answers
//! that offset, until retention passes the tombstone.
//!
//! This module reads the ids' last messages: one from the stream's leader
//! ([`EventStream::last_of`], for a single publish and for lookups by id),
//! or a batch's at once (`multi_last`, a direct get any replica answers,
//! [`EventStream::lasts_of`]).

use std::collections::HashMap;

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio_stream::StreamExt as _;

use super::{
    bucket,
    read::{header_u64, DIRECT_TIMEOUT},
    wire::{request_error, ERASED_OFFSET, SEQUENCE, SUBJECT},
    EventStream, JetStreamError,
};
use crate::{
    model::{Appended, Offset},
    store::keys,
};

/// The message an id's subject holds last: its event, or the tombstone of
/// its erased event.
#[derive(Debug, Clone)]
pub(super) struct Last {
    /// The offset the id answers: the event's, or the erased event's.
    pub offset: Offset,
    /// The event's record; `None` once erased.
    record: Option<Bytes>,
}

impl Last {
    /// Reads a last message from its sequence, headers and payload.
    fn new(
        sequence: u64,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Self, JetStreamError> {
        let erased_at = headers
            .and_then(|h| h.get(ERASED_OFFSET))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let tombstone = keys::is_tombstone(&payload).map_err(|e| JetStreamError::Corrupt {
            offset: Offset::new(sequence),
            reason: e.to_string(),
        })?;
        Ok(Last {
            offset: Offset::new(erased_at.unwrap_or(sequence)),
            record: (!tombstone).then_some(payload),
        })
    }

    /// The answer to an append of `record` with this id: `duplicate =
    /// true`, and whether its content differs from the stored event's
    /// (an erased event's cannot be compared: it does not).
    pub fn answer(&self, record: &[u8]) -> Result<Appended, JetStreamError> {
        let same = match &self.record {
            Some(stored) => {
                keys::same_content(record, stored).map_err(|e| JetStreamError::Corrupt {
                    offset: self.offset,
                    reason: e.to_string(),
                })?
            }
            None => true,
        };
        Ok(Appended {
            offset: self.offset,
            duplicate: true,
            payload_differs: !same,
        })
    }
}

impl EventStream {
    /// The last message of event `id`'s subject, read from the stream's
    /// leader (it has applied every write it acknowledged); `None` if the
    /// id is not stored (never, or retention removed it).
    pub(super) async fn last_of(&self, id: &str) -> Result<Option<Last>, JetStreamError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
        match self
            .stream
            .get_last_raw_message_by_subject(&self.config.subject(id))
            .await
        {
            Ok(m) => Last::new(m.sequence, Some(&m.headers), m.payload).map(Some),
            Err(e) if e.kind() == Kind::NoMessageFound => Ok(None),
            Err(e) => Err(request_error("read an event id", e)),
        }
    }

    /// The event at `offset` as a [`Last`], its record read from the
    /// leader (none once erased or gone: nothing to compare an append with).
    pub(super) async fn last_at(&self, offset: Offset) -> Result<Last, JetStreamError> {
        let record = self
            .stored(offset)
            .await?
            .filter(|r| !keys::is_tombstone(r).unwrap_or(false));
        Ok(Last { offset, record })
    }

    /// The offset event `id` answers (its event's, or its erased event's),
    /// `None` if it is not stored.
    pub async fn offset_of(&self, id: &str) -> Result<Option<Offset>, JetStreamError> {
        Ok(self.last_of(id).await?.map(|last| last.offset))
    }

    /// The last messages of the subjects of `ids` that hold one, by id:
    /// one `multi_last` direct get per [`super::log::SERVER_MAX_BATCH`]
    /// ids. Any replica answers, so a message stored a moment ago may be
    /// missing; the caller's next publish attempt tells.
    pub(super) async fn lasts_of(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, Last>, JetStreamError> {
        let subjects: Vec<String> = ids.iter().map(|id| self.config.subject(id)).collect();
        let mut lasts = HashMap::new();
        for chunk in subjects.chunks(super::log::SERVER_MAX_BATCH) {
            self.multi_last(chunk, &mut lasts).await?;
        }
        Ok(lasts)
    }

    /// One `multi_last` direct get of `subjects`, into `lasts`.
    async fn multi_last(
        &self,
        subjects: &[String],
        lasts: &mut HashMap<String, Last>,
    ) -> Result<(), JetStreamError> {
        const WHAT: &str = "read event ids";
        let body = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
        let mut replies = self.direct_get(WHAT, body).await?;
        let prefix = format!("{}.", self.config.subject_prefix);
        loop {
            let message = tokio::time::timeout(DIRECT_TIMEOUT, replies.next())
                .await
                .map_err(|_| request_error(WHAT, format!("no answer within {DIRECT_TIMEOUT:?}")))?
                .ok_or_else(|| request_error(WHAT, "the subscription closed"))?;
            let Some(sequence) = header_u64(&message, SEQUENCE) else {
                return match message.status.map(|s| s.as_u16()) {
                    // The end of the answer; none of the subjects holds one.
                    Some(204 | 404) => Ok(()),
                    status => Err(JetStreamError::Rejected {
                        what: WHAT,
                        code: status.unwrap_or(0),
                        err_code: 0,
                        description: message.description.unwrap_or_default(),
                    }),
                };
            };
            let headers = message.headers.as_ref();
            let subject = headers
                .and_then(|h| h.get(SUBJECT))
                .map(|v| v.as_str())
                .unwrap_or_default();
            let id = subject
                .strip_prefix(prefix.as_str())
                .and_then(bucket::decode_key)
                .ok_or_else(|| JetStreamError::Protocol {
                    what: WHAT,
                    reason: format!("an answer for subject {subject:?}"),
                })?;
            lasts.insert(id, Last::new(sequence, headers, message.payload)?);
        }
    }
}
