//! What can go wrong talking to the JetStream cluster, typed so that callers
//! can tell a retry from a refusal.

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
    /// A stored message is not an event record.
    #[error("event at offset {offset}: {reason}")]
    Corrupt {
        /// Its stream sequence.
        offset: u64,
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
            JetStreamError::Rejected { code, err_code, .. } => {
                *code == 503 || RETRIABLE_ERR_CODES.contains(err_code)
            }
            _ => false,
        }
    }
}
