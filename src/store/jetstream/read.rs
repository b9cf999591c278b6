//! Reading the cluster log by offset range.
//!
//! Ranges are read with batched direct gets, which any replica may answer:
//! one request streams up to a batch of messages. A replica can lag behind
//! the leader, so a range that ends past what the answering replica holds
//! is completed from the leader, one message at a time (a message missing
//! there was removed, and is skipped as the embedded log skips removed
//! offsets).

use std::time::{Duration, SystemTime};

use async_nats::{
    jetstream::stream::{self, LastRawMessageErrorKind},
    Message,
};
use bytes::Bytes;
use tokio_stream::StreamExt as _;

use super::{
    wire::{request_error, NUM_PENDING, SEQUENCE},
    EventStream, JetStreamError,
};
use crate::{
    model::{Offset, StoredEvent},
    store::{keys, RawRecord},
};

/// Most messages asked of one direct get.
const DIRECT_BATCH: u64 = 256;
/// How long a direct get's messages may take to arrive.
pub(super) const DIRECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one direct get returned.
struct DirectBatch {
    records: Vec<RawRecord>,
    /// Messages the responder holds past the last one sent.
    pending: u64,
}

impl EventStream {
    /// The stored records of offsets `from..=to`, in order (removed offsets
    /// are absent). `to` should be at most a head read before.
    pub async fn read_records(
        &self,
        from: Offset,
        to: Offset,
    ) -> Result<Vec<RawRecord>, JetStreamError> {
        let mut out = Vec::new();
        let mut next = from.max(crate::model::FIRST_OFFSET);
        while next <= to {
            let want = (to - next + 1).min(DIRECT_BATCH);
            let batch = self.direct_batch(next, want).await?;
            let got = batch.records.len() as u64;
            if let Some(last) = batch.records.last() {
                next = last.offset + 1;
            }
            out.extend(batch.records.into_iter().filter(|r| r.offset <= to));
            if got < want && batch.pending == 0 {
                // The responder holds nothing more: it lags behind `to`, or
                // the rest was removed (or never written: `to` past the
                // head). The leader knows which.
                let end = to.min(self.head().await?);
                for offset in next.through(end) {
                    if let Some(record) = self.stored(offset).await? {
                        out.push(RawRecord { offset, record });
                    }
                }
                break;
            }
        }
        Ok(out)
    }

    /// The events of offsets `from..=to`, decoded as the embedded log
    /// decodes its records.
    pub async fn read(&self, from: Offset, to: Offset) -> Result<Vec<StoredEvent>, JetStreamError> {
        self.read_records(from, to)
            .await?
            .into_iter()
            .map(|r| decode(r.offset, &r.record))
            .collect()
    }

    /// The event at `offset`, read from the stream's leader (an erased
    /// one, a tombstone copied in from an embedded log, is not).
    pub async fn get(&self, offset: Offset) -> Result<Option<StoredEvent>, JetStreamError> {
        match self.stored(offset).await? {
            Some(record) if keys::is_tombstone(&record).unwrap_or(false) => Ok(None),
            Some(record) => decode(offset, &record).map(Some),
            None => Ok(None),
        }
    }

    /// The stream's state (first and last sequence, bytes) as its leader
    /// reports it.
    pub async fn state(&self) -> Result<stream::State, JetStreamError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| request_error("stream info", e))?;
        Ok(info.state)
    }

    /// The offset of the first message the stream stored at or after `t`
    /// (its own storage time, on the leader's clock), `None` if none. A
    /// direct get: any replica answers, and a lagging one may not hold the
    /// newest messages yet.
    pub async fn first_at_time(&self, t: SystemTime) -> Result<Option<Offset>, JetStreamError> {
        const WHAT: &str = "direct get by time";
        let start = time::OffsetDateTime::from(t)
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| request_error(WHAT, e))?;
        let body = serde_json::json!({ "start_time": start }).to_string();
        let reply = self
            .client
            .request(
                format!("$JS.API.DIRECT.GET.{}", self.config.stream),
                body.into(),
            )
            .await
            .map_err(|e| request_error(WHAT, e))?;
        match (
            header_u64(&reply, SEQUENCE),
            reply.status.map(|s| s.as_u16()),
        ) {
            (Some(offset), _) => Ok(Some(Offset::new(offset))),
            (None, Some(404)) => Ok(None),
            (None, status) => Err(JetStreamError::Rejected {
                what: WHAT,
                code: status.unwrap_or(0),
                err_code: 0,
                description: reply.description.unwrap_or_default(),
            }),
        }
    }

    /// The record at `offset` from the stream's leader (`None`: no such
    /// message, never written or removed).
    pub(super) async fn stored(&self, offset: Offset) -> Result<Option<Bytes>, JetStreamError> {
        match self.stream.get_raw_message(offset.get()).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(request_error("message get", e)),
        }
    }

    /// Sends the batched direct get `body` (any replica answers); its
    /// replies arrive on the subscription returned, one message each, then
    /// a status that ends the batch.
    pub(super) async fn direct_get(
        &self,
        what: &'static str,
        body: serde_json::Value,
    ) -> Result<async_nats::Subscriber, JetStreamError> {
        let inbox = self.client.new_inbox();
        let replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| request_error(what, e))?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.config.stream),
                inbox,
                body.to_string().into(),
            )
            .await
            .map_err(|e| request_error(what, e))?;
        Ok(replies)
    }

    /// One batched direct get of up to `want` messages from `from`.
    async fn direct_batch(&self, from: Offset, want: u64) -> Result<DirectBatch, JetStreamError> {
        const WHAT: &str = "direct get";
        let body = serde_json::json!({ "seq": from.get(), "batch": want });
        let mut replies = self.direct_get(WHAT, body).await?;
        let mut batch = DirectBatch {
            records: Vec::new(),
            pending: 0,
        };
        loop {
            let message = tokio::time::timeout(DIRECT_TIMEOUT, replies.next())
                .await
                .map_err(|_| {
                    request_error(WHAT, format!("no end of batch within {DIRECT_TIMEOUT:?}"))
                })?
                .ok_or_else(|| request_error(WHAT, "the subscription closed"))?;
            let pending = header_u64(&message, NUM_PENDING);
            match (
                header_u64(&message, SEQUENCE),
                message.status.map(|s| s.as_u16()),
            ) {
                (Some(offset), _) => {
                    batch.pending = pending.unwrap_or(0);
                    batch.records.push(RawRecord {
                        offset: Offset::new(offset),

                        record: message.payload,
                    });
                }
                // End of batch.
                (None, Some(204)) => {
                    batch.pending = pending.unwrap_or(0);
                    break;
                }
                // Nothing at or after `from` on the responder.
                (None, Some(404)) => break,
                (None, status) => {
                    return Err(JetStreamError::Rejected {
                        what: WHAT,
                        code: status.unwrap_or(0),
                        err_code: 0,
                        description: message.description.unwrap_or_default(),
                    })
                }
            }
        }
        // Dropping the subscriber unsubscribes; nothing more is sent.
        Ok(batch)
    }
}

/// A numeric header of a direct get reply.
pub(super) fn header_u64(message: &Message, name: &str) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(name)
        .and_then(|v| v.as_str().parse().ok())
}

/// A stored record as the embedded log decodes it.
fn decode(offset: Offset, record: &[u8]) -> Result<StoredEvent, JetStreamError> {
    keys::decode_event(&keys::offset_key(offset), record).map_err(|e| JetStreamError::Corrupt {
        offset,
        reason: e.to_string(),
    })
}
