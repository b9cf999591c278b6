//! Deleting an erased event's message from the stream, its bytes
//! overwritten on every replica (cluster mode's erasure,
//! `store::cluster_erase`).
//!
//! JetStream cannot rewrite a message in place, so an erased event's
//! tombstone lives in the state bucket and its message is deleted. The
//! delete request (`$JS.API.STREAM.MSG.DELETE.<stream>`) is sent with
//! `no_erase: false`: each replica then applies the delete as a secure
//! erase, overwriting the message's bytes in its block file rather than
//! only marking it deleted (nats-server's `eraseMsg`; `no_erase: true`
//! would be `removeMsg`). async-nats 0.52's `Stream::delete_message`
//! sends no `no_erase` at all, which the server takes as `false` too; it
//! is spelled out here so the intent does not rest on a default.

use serde::Deserialize;

use super::{
    wire::{request_error, ApiError},
    EventStream, JetStreamError,
};
use crate::model::Offset;

/// The server's answer to a message delete.
#[derive(Debug, Deserialize)]
struct DeleteReply {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

impl EventStream {
    /// Deletes the message at `offset`, overwriting its bytes on every
    /// replica; whether it was still there (a message deleted before, or
    /// purged, counts as done).
    pub async fn erase(&self, offset: Offset) -> Result<bool, JetStreamError> {
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
