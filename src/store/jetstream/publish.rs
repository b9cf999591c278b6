//! Publishing to a stream with an answer: one message (sent again while
//! no server takes it) or an atomic batch (ADR-50). The event log and the
//! state bucket both publish through these.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;

use super::{
    wire::{publish_failed, request_failed, PubAckReply, BATCH_COMMIT, BATCH_ID, BATCH_SEQUENCE},
    JetStreamError,
};
use crate::model::Offset;

/// How often, and how far apart, a request that reached no server is sent
/// again ([`request`]): about 5 s in all, longer than a stream leader
/// election takes.
const NO_RESPONDERS_ROUNDS: usize = 50;
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(100);

/// A request on the stream's subjects, answered with a `PubAck`.
///
/// "No responders" means that no server took the message: the stream
/// has no leader at the moment (an election), or the interest of a
/// new stream has not yet reached the node this client is connected
/// to. Nothing was stored, so the same message is sent again, for at
/// most [`NO_RESPONDERS_ROUNDS`] × [`NO_RESPONDERS_PAUSE`]; then the
/// error is the caller's (retriable).
pub(super) async fn request(
    client: &Client,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
    what: &'static str,
) -> Result<PubAckReply, JetStreamError> {
    let mut round = 0;
    let reply = loop {
        match client
            .request_with_headers(subject.to_owned(), headers.clone(), payload.clone())
            .await
        {
            Ok(reply) => break reply,
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders
                    && round + 1 < NO_RESPONDERS_ROUNDS =>
            {
                round += 1;
                tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
            }
            Err(e) => return Err(request_failed(what, e)),
        }
    };
    let ack = PubAckReply::parse(&reply.payload, what)?;
    Ok(ack)
}

/// Publishes `msgs` as one atomic batch (ADR-50): the server stores all
/// of them at consecutive sequences, or none. Returns the first offset.
pub(super) async fn atomic<'a>(
    client: &Client,
    msgs: impl ExactSizeIterator<Item = (&'a str, &'a HeaderMap, &'a Bytes)>,
) -> Result<Offset, JetStreamError> {
    const WHAT: &str = "atomic batch publish";
    let n = msgs.len();
    // Batch ids are at most 64 characters; a ULID is 26.
    let batch_id = ulid::Ulid::new().to_string();
    for (k, (subject, headers, payload)) in msgs.enumerate() {
        let mut headers = headers.clone();
        headers.insert(BATCH_ID, batch_id.as_str());
        headers.insert(BATCH_SEQUENCE, (k + 1).to_string().as_str());
        let last = k + 1 == n;
        if last {
            headers.insert(BATCH_COMMIT, "1");
        }
        // Only the first message (so a stream that takes no batches says
        // so) and the commit are requests. Every check of the staged
        // messages (ids, expected sequences) runs at the commit, and a
        // message the server dropped (a leader change) makes the commit
        // fail as incomplete; a request every 100 messages, as before,
        // only waited for the server's empty acks: a 1000-event batch took
        // twice as long (`stevedore-bench cluster`, BENCHMARKS.md).
        if k == 0 || last {
            let ack = request(client, subject, headers, payload.clone(), WHAT).await?;
            if let Some(e) = ack.error {
                return Err(e.into_error(WHAT));
            }
            if last {
                if ack.count != Some(n as u64) || ack.seq < n as u64 {
                    return Err(JetStreamError::Protocol {
                        what: WHAT,
                        reason: format!(
                            "commit of {n} messages acked {:?} ending at sequence {}",
                            ack.count, ack.seq
                        ),
                    });
                }
                return Ok(Offset::new(ack.seq + 1 - n as u64));
            }
        } else {
            // No reply: the connection keeps the order, and the server
            // refuses the commit if any message is missing.
            client
                .publish_with_headers(subject.to_owned(), headers, payload.clone())
                .await
                .map_err(|e| publish_failed(WHAT, e))?;
        }
    }
    Err(JetStreamError::Protocol {
        what: WHAT,
        reason: "an empty batch".to_owned(),
    })
}
