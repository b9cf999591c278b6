//! The log's messages on the wire: header names, how ids and keys are made
//! header-safe, and the publish acknowledgement as the server sends it.

use async_nats::HeaderMap;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde::Deserialize;

use super::JetStreamError;

/// The header that carries an event's ordering key (percent-encoded), so
/// consumers can group by key without decoding the payload.
pub const ORDERING_KEY: &str = "Stevedore-Ordering-Key";
/// On the message that keeps an erased event's id claimed (its tombstone,
/// published on the id's subject): the erased event's offset, which a
/// publish of the same id answers.
pub(super) const ERASED_OFFSET: &str = "Stevedore-Erased-Offset";
/// Atomic batch publish (nats-server 2.12+, ADR-50): the batch's id.
pub(super) const BATCH_ID: &str = "Nats-Batch-Id";
/// Atomic batch publish: the message's place in the batch, from 1.
pub(super) const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
/// Atomic batch publish: on the last message, `1` commits the batch.
pub(super) const BATCH_COMMIT: &str = "Nats-Batch-Commit";
/// Publish only if the last message on the subject is at this sequence
/// (`0`: there is none); a key-value `create`, and an event id's claim.
pub(super) const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// A direct get's reply: the message's stream sequence.
pub(super) const SEQUENCE: &str = "Nats-Sequence";
/// A direct get's reply: the message's subject.
pub(super) const SUBJECT: &str = "Nats-Subject";
/// A direct get's reply: how many messages the responder holds past the
/// one sent (on the end-of-batch status: past the last one sent).
pub(super) const NUM_PENDING: &str = "Nats-Num-Pending";
/// A bucket entry's operation (`DEL`, `PURGE`; absent on a put).
pub(super) const KV_OPERATION: &str = "KV-Operation";
/// err_code: the expected last sequence of the subject did not match;
/// for an event, its id is stored already.
pub(super) const WRONG_LAST_SEQUENCE: u64 = 10071;
/// err_code: "wrong last sequence" without one: a message on the same
/// subject (another publisher's append of the same id) is in flight at
/// the stream's leader, not stored yet.
pub(super) const SUBJECT_IN_PROCESS: u64 = 10164;

/// What is escaped in header values: control characters (a header line
/// cannot hold CR or LF), spaces (the parser trims them at either end) and
/// `%` itself, so the encoding is one-to-one and two ids never collide.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// `value` as a header value; [`decode_header`] reverses it.
pub(super) fn encode_header(value: &str) -> String {
    utf8_percent_encode(value, HEADER_UNSAFE).to_string()
}

/// A header value written by [`encode_header`].
pub fn decode_header(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// An event's headers: its ordering key.
pub(super) fn event_headers(ordering_key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ORDERING_KEY, encode_header(ordering_key).as_str());
    headers
}

/// The server's answer to a publish: a `PubAck`, or an error. Parsed here
/// rather than through the client's publish future, which folds the
/// `err_code`s this log branches on into one "other" kind.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PubAckReply {
    /// The stream's sequence of the message (for a batch: of its last).
    #[serde(default)]
    pub seq: u64,
    /// For a committed atomic batch: how many messages it stored.
    #[serde(default)]
    pub count: Option<u64>,
    /// Set when the server refused the message.
    #[serde(default)]
    pub error: Option<ApiError>,
}

/// A JetStream API error.
#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub err_code: u64,
    #[serde(default)]
    pub description: String,
}

impl ApiError {
    /// As the log's error, for the request `what`.
    pub fn into_error(self, what: &'static str) -> JetStreamError {
        JetStreamError::Rejected {
            what,
            code: self.code,
            err_code: self.err_code,
            description: self.description,
        }
    }
}

impl PubAckReply {
    /// Parses a reply; an empty payload (the server's ack of a batch
    /// message before the commit) is an empty, error-free reply.
    pub fn parse(payload: &[u8], what: &'static str) -> Result<Self, JetStreamError> {
        if payload.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(payload).map_err(|e| JetStreamError::Protocol {
            what,
            reason: format!("{e}: {}", String::from_utf8_lossy(payload)),
        })
    }
}

/// A client error with an unknown outcome as the log's, for the request
/// `what`.
pub(super) fn request_error(what: &'static str, e: impl std::fmt::Display) -> JetStreamError {
    JetStreamError::Request {
        what,
        reason: e.to_string(),
    }
}

/// A failed request as the log's: refused by the client (nothing sent), or
/// of unknown outcome.
pub(super) fn request_failed(what: &'static str, e: async_nats::RequestError) -> JetStreamError {
    use async_nats::RequestErrorKind as K;
    match e.kind() {
        K::MaxPayloadExceeded | K::InvalidSubject => JetStreamError::Unsendable {
            what,
            reason: e.to_string(),
        },
        _ => request_error(what, e),
    }
}

/// A failed publish (no reply asked) as the log's.
pub(super) fn publish_failed(what: &'static str, e: async_nats::PublishError) -> JetStreamError {
    use async_nats::PublishErrorKind as K;
    match e.kind() {
        K::MaxPayloadExceeded | K::InvalidSubject => JetStreamError::Unsendable {
            what,
            reason: e.to_string(),
        },
        K::Send => request_error(what, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_encoding_is_one_to_one_and_line_safe() {
        for value in ["a b", " a", "a%20b", "x\r\ny: z", "ключ", ""] {
            let encoded = encode_header(value);
            assert!(!encoded.contains(['\r', '\n', ' ']), "{encoded:?}");
            assert_eq!(decode_header(&encoded), value);
        }
        assert_ne!(encode_header("a b"), encode_header("a%20b"));
        assert_eq!(encode_header("order-1/SO:2"), "order-1/SO:2");
    }

    #[test]
    fn replies_parse_acks_batches_and_errors() {
        let ack = PubAckReply::parse(br#"{"stream":"E","seq":7}"#, "t").unwrap();
        assert_eq!((ack.seq, ack.count.is_none()), (7, true));
        let batch =
            PubAckReply::parse(br#"{"stream":"E","seq":4,"batch":"b","count":3}"#, "t").unwrap();
        assert_eq!((batch.seq, batch.count), (4, Some(3)));
        let empty = PubAckReply::parse(b"", "t").unwrap();
        assert!(empty.error.is_none() && empty.seq == 0);
        let err = PubAckReply::parse(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"},"stream":"E","seq":0}"#,
            "t",
        )
        .unwrap()
        .error
        .unwrap();
        assert_eq!(err.err_code, WRONG_LAST_SEQUENCE);
        assert!(PubAckReply::parse(b"nope", "t").is_err());
    }
}
