//! What can go wrong talking to the JetStream cluster, typed so that callers
//! can tell a retry from a refusal.

use crate::error::Error;

/// JetStream `err_code`s a caller may retry with the same events: the batch
/// was dropped whole (a leader change mid-batch, a full in-flight table), so
/// nothing was stored and a retry with the same ids is deduplicated anyway.
const RETRIABLE_ERR_CODES: &[u64] = &[
    10176, // atomic publish batch incomplete (a leader change lost part of it)
    10210, // too many atomic batches in flight
];

/// An error of the cluster event log.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// A setting of [`super::StreamConfig`] is unusable.
    #[error("cluster log setting {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The request did not get an answer (timeout, no responders, connection
    /// lost): its outcome is unknown; retrying with the same event ids is
    /// safe.
    #[error("NATS request {what} failed: {reason}")]
    Request {
        /// What was asked.
        what: &'static str,
        /// The client's error.
        reason: String,
    },
    /// The client would not send it: larger than the server's
    /// `max_payload`, or an invalid subject. Retrying cannot help.
    #[error("NATS client refused to send {what}: {reason}")]
    Unsendable {
        /// What was to be sent.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("JetStream refused {what}: {description} (status {code}, error code {err_code})")]
    Rejected {
        /// What was asked.
        what: &'static str,
        /// The HTTP-like status.
        code: u16,
        /// The JetStream error code.
        err_code: u64,
        /// The server's description.
        description: String,
    },
    /// The stream exists with settings the log cannot work with.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More events than one atomic batch may hold.
    #[error("a batch of {len} events exceeds the atomic batch limit of {max}")]
    BatchTooLarge {
        /// Events in the batch (after merging repeated ids).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An answer that breaks the protocol (an ack for the wrong count, a
    /// reply that is not JSON).
    #[error("unexpected answer from JetStream to {what}: {reason}")]
    Protocol {
        /// What was asked.
        what: &'static str,
        /// What was wrong with the answer.
        reason: String,
    },
    /// A key-value bucket (idempotency claims, leases, state) refused or
    /// could not be reached; `retriable` when the outcome is unknown
    /// (timeout, connection lost).
    #[error("bucket {bucket}: {what} failed: {reason}")]
    Bucket {
        /// The bucket's name.
        bucket: String,
        /// What was asked.
        what: &'static str,
        /// The client's or server's error.
        reason: String,
        /// Whether the same request may succeed when repeated.
        retriable: bool,
    },
    /// A stored message is not an event record.
    #[error("event at offset {offset}: {reason}")]
    Corrupt {
        /// Its stream sequence.
        offset: crate::model::Offset,

        /// The decoder's complaint.
        reason: String,
    },
}

impl JetStreamError {
    /// Whether repeating the same operation (with the same event ids) may
    /// succeed: the outcome was unknown, or the server dropped the whole
    /// batch for a passing reason.
    pub fn is_retriable(&self) -> bool {
        match self {
            JetStreamError::Request { .. } => true,
            JetStreamError::Bucket { retriable, .. } => *retriable,
            JetStreamError::Rejected { code, err_code, .. } => {
                *code == 503 || RETRIABLE_ERR_CODES.contains(err_code)
            }
            _ => false,
        }
    }
}

/// A failed read: as [`Error::from`] says, but an unanswered read is only
/// worth asking again (nothing was written).
pub(super) fn read_failed(e: JetStreamError) -> Error {
    if e.is_retriable() {
        Error::Unavailable(format!(
            "the NATS cluster did not answer the read ({e}); asking again is safe"
        ))
    } else {
        e.into()
    }
}

impl From<JetStreamError> for Error {
    fn from(e: JetStreamError) -> Self {
        match e {
            JetStreamError::BatchTooLarge { len, max } => Error::invalid(
                "events",
                format!(
                    "{len} events exceed the cluster's atomic batch limit ({max}): in cluster \
                     mode send at most {max} events per PublishBatch"
                ),
            ),
            JetStreamError::Unsendable { .. } => Error::Capacity(format!(
                "the NATS server does not take a message this large ({e}); raise its \
                 max_payload or lower max_event_bytes"
            )),
            JetStreamError::Corrupt { .. } => Error::Corrupt(e.to_string()),
            e if e.is_retriable() => Error::Unavailable(format!(
                "the NATS cluster did not take the request ({e}); its outcome is unknown: \
                 publishing again with the same event ids is safe"
            )),
            e => Error::Storage(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_outcomes_and_passing_refusals_are_retriable() {
        let rejected = |code, err_code| JetStreamError::Rejected {
            what: "t",
            code,
            err_code,
            description: String::new(),
        };
        assert!(JetStreamError::Request {
            what: "t",
            reason: "timed out".into()
        }
        .is_retriable());
        assert!(rejected(503, 10008).is_retriable());
        assert!(rejected(400, 10176).is_retriable());
        assert!(!rejected(400, 10201).is_retriable());
        assert!(!rejected(400, 10054).is_retriable());
        assert!(!JetStreamError::Unsendable {
            what: "t",
            reason: "max payload".into()
        }
        .is_retriable());
        assert!(!JetStreamError::BatchTooLarge { len: 3, max: 2 }.is_retriable());
    }

    #[test]
    fn an_unanswered_read_says_to_ask_again_and_an_unanswered_publish_to_publish_again() {
        let lost = || JetStreamError::Request {
            what: "message get",
            reason: "request timed out".to_owned(),
        };
        let read = read_failed(lost()).to_string();
        assert!(read.contains("did not answer the read"), "{read}");
        assert!(!read.contains("publishing"), "{read}");
        let write = Error::from(lost()).to_string();
        assert!(
            write.contains("publishing again with the same event ids is safe"),
            "{write}"
        );
        let corrupt = JetStreamError::Corrupt {
            offset: crate::model::Offset::new(7),
            reason: "bad record".to_owned(),
        };
        assert!(matches!(read_failed(corrupt), Error::Corrupt(_)));
    }
}
