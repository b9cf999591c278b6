//! Deleting an erased event's message from the stream, its bytes
//! overwritten on every replica (cluster mode's erasure,
//! `store::cluster_erase`).
//!
//! JetStream cannot rewrite a message in place, so an erased event's
//! tombstone lives in the state bucket and its message is deleted. Its id
//! must stay claimed ([`super::ids`]), so before the delete the tombstone
//! is also published on the id's subject, expecting the event's message as
//! the subject's last (so it is written once, and never over a later
//! event of the same id), with the erased offset in [`ERASED_OFFSET`]. It
//! takes an offset of its own, which readers skip as they skip every
//! tombstone. The
//! delete request (`$JS.API.STREAM.MSG.DELETE.<stream>`) is sent with
//! `no_erase: false`: each replica then applies the delete as a secure
//! erase, overwriting the message's bytes in its block file rather than
//! only marking it deleted (nats-server's `eraseMsg`; `no_erase: true`
//! would be `removeMsg`). async-nats 0.52's `Stream::delete_message`
//! sends no `no_erase` at all, which the server takes as `false` too; it
//! is spelled out here so the intent does not rest on a default.

use std::time::SystemTime;

use async_nats::HeaderMap;
use serde::Deserialize;

use super::{
    wire::{
        request_error, ApiError, ERASED_OFFSET, EXPECTED_LAST_SUBJECT_SEQUENCE, WRONG_LAST_SEQUENCE,
    },
    EventStream, JetStreamError,
};
use crate::{model::Offset, store::keys};

/// The server's answer to a message delete.
#[derive(Debug, Deserialize)]
struct DeleteReply {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

impl EventStream {
    /// Keeps the id of the event at `offset` claimed by publishing
    /// `tombstone` (the event's, as recorded in the state) on its subject,
    /// then deletes the message at `offset`, overwriting its bytes on every
    /// replica; whether it was still there (a message deleted before, or
    /// purged, counts as done).
    pub async fn erase(&self, offset: Offset, tombstone: &[u8]) -> Result<bool, JetStreamError> {
        self.keep_claimed(offset, tombstone).await?;
        self.delete(offset).await
    }

    /// Publishes `tombstone` on its id's subject if the event at `offset`
    /// is still that subject's last message. Done already (an erasure
    /// asked again), or the event gone (purged), is nothing to do.
    async fn keep_claimed(&self, offset: Offset, tombstone: &[u8]) -> Result<(), JetStreamError> {
        const WHAT: &str = "erasure's id claim";
        let corrupt = |reason: String| JetStreamError::Corrupt { offset, reason };
        let (id, _, _) = keys::decode_tombstone(offset, tombstone)
            .map_err(|e| corrupt(e.to_string()))?
            .ok_or_else(|| corrupt("the recorded tombstone is not one".to_owned()))?;
        // Stamped with the erasure's time: publish times never go back
        // along the log.
        let record = keys::restamped(tombstone, keys::unix_nanos(SystemTime::now()))
            .map_err(|e| corrupt(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, offset.to_string().as_str());
        headers.insert(ERASED_OFFSET, offset.to_string().as_str());
        let ack = self
            .request(&self.config.subject(&id), headers, record.into(), WHAT)
            .await?;
        match ack.error {
            None => Ok(()),
            Some(e) if e.err_code == WRONG_LAST_SEQUENCE => Ok(()),
            Some(e) => Err(e.into_error(WHAT)),
        }
    }

    /// Deletes the message at `offset`, overwriting its bytes on every
    /// replica; whether it was still there.
    async fn delete(&self, offset: Offset) -> Result<bool, JetStreamError> {
        const WHAT: &str = "message erase";
        let body = serde_json::json!({ "seq": offset.get(), "no_erase": false }).to_string();
        let reply = self
            .client
            .request(
                format!("$JS.API.STREAM.MSG.DELETE.{}", self.config.stream),
                body.into(),
            )
            .await
            .map_err(|e| request_error(WHAT, e))?;
        let answer: DeleteReply =
            serde_json::from_slice(&reply.payload).map_err(|e| JetStreamError::Protocol {
                what: WHAT,
                reason: format!("{e}: {}", String::from_utf8_lossy(&reply.payload)),
            })?;
        match answer.error {
            None if answer.success => Ok(true),
            None => Err(JetStreamError::Protocol {
                what: WHAT,
                reason: format!("the server answered neither success nor an error for {offset}"),
            }),
            // "sequence not found" among others: gone already is done.
            Some(e) => match self.stored(offset).await? {
                None => Ok(false),
                Some(_) => Err(e.into_error(WHAT)),
            },
        }
    }
}
