//! The crate error and its one mapping to `tonic::Status`.
//!
//! Client mistakes carry their message to the client; internal causes are
//! logged here and the client sees only that something failed inside.

use tonic::{Code, Status};

/// What can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; `field` is the request path of the offending field.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// Request path, e.g. `events[3].shipment_closed.ship_date`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (a tenant-scoped token acting for another
    /// tenant); the message names the field.
    #[error("{0}")]
    PermissionDenied(String),
    /// A configured limit was reached; the message names the config key.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The broker is shutting down and takes no new work.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The state store failed (its I/O errors are [`Error::Io`]).
    #[error("storage: {0}")]
    Storage(String),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A record of the event log failed its checksum: the disk changed it.
    #[error("record {offset} is damaged: {detail}")]
    Damaged {
        /// The record's offset.
        offset: u64,
        /// What is wrong, with its file and byte (logged, not sent).
        detail: String,
    },
    /// Storage stopped taking writes (a failed fsync); the message says
    /// why and what to do.
    #[error("{0}")]
    Unavailable(String),
    /// Encrypted endpoint secrets cannot be opened: no master key, or not
    /// the one that sealed them.
    #[error("{0}")]
    MasterKey(String),
    /// A fixed limit of the storage format (not a configured one) would be
    /// exceeded, e.g. a record over the largest the log holds; the message
    /// names the limit. Nothing is damaged.
    #[error("{0}")]
    Capacity(String),
    /// A background task (blocking storage work) panicked or was
    /// cancelled; the cause is its `JoinError`.
    #[error("{task} task failed: {source}")]
    Task {
        /// Which task.
        task: &'static str,
        /// Why it ended without a result (shared: see [`Error::share`]).
        #[source]
        source: std::sync::Arc<tokio::task::JoinError>,
    },
}

impl Error {
    /// The same error again, for a failure that answers several callers
    /// (a group commit): I/O errors keep their kind and text (their cause
    /// cannot be cloned), every other error is itself again.
    pub fn share(&self) -> Self {
        match self {
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::Damaged { offset, detail } => Error::Damaged {
                offset: *offset,
                detail: detail.clone(),
            },
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            Error::Corrupt(m) => Error::Corrupt(m.clone()),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(m.clone()),
            Error::InvalidArgument { field, message } => Error::invalid(field, message),
            Error::ShuttingDown => Error::ShuttingDown,
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(m.clone()),
            Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
            Error::Storage(m) => Error::Storage(m.clone()),
            Error::MasterKey(m) => Error::MasterKey(m.clone()),
            Error::Capacity(m) => Error::Capacity(m.clone()),
            Error::Task { task, source } => Error::Task {
                task,
                source: source.clone(),
            },
        }
    }

    /// [`Error::Task`]: the blocking task `task` ended without a result.
    pub fn task(task: &'static str, source: tokio::task::JoinError) -> Self {
        Error::Task {
            task,
            source: std::sync::Arc::new(source),
        }
    }

    /// An `INVALID_ARGUMENT` naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest field path a status message repeats.
const MAX_FIELD_IN_STATUS: usize = 256;
/// Longest status message.
const MAX_STATUS_MESSAGE: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary, marked with `…`.
///
/// Messages repeat client input (a field path with a map key, a rejected
/// name) and travel in the `grpc-message` header: unbounded, a 70 KB
/// consumer name made a response header block that clients refuse
/// (hyper/h2 drop the whole connection), so the caller never saw a status.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let clip = |m: &str| clip(m, MAX_STATUS_MESSAGE);
        match err {
            Error::InvalidArgument { field, message } => Status::invalid_argument(clip(&format!(
                "{}: {message}",
                self::clip(&field, MAX_FIELD_IN_STATUS)
            ))),
            Error::NotFound(m) => Status::not_found(clip(&m)),
            Error::FailedPrecondition(m) => Status::failed_precondition(clip(&m)),
            Error::PermissionDenied(m) => Status::permission_denied(clip(&m)),
            Error::ResourceExhausted(m) => Status::resource_exhausted(clip(&m)),
            Error::ShuttingDown => Status::unavailable(err.to_string()),
            Error::Unavailable(m) => {
                tracing::error!(error = %m, "storage unavailable");
                Status::unavailable(clip(&m))
            }
            Error::Damaged { offset, .. } => {
                tracing::error!(error = %err, "damaged record");
                Status::data_loss(format!(
                    "record {offset} is damaged on disk and cannot be read (the broker's log \
                     names its file); later records read from offset {}",
                    offset + 1
                ))
            }
            Error::Corrupt(_) => {
                tracing::error!(error = %err, "corrupt record");
                Status::data_loss(
                    "a stored record is corrupt and cannot be read; see the broker's log",
                )
            }
            Error::Io(ref e) if is_disk_full(e) => disk_full(&err),
            Error::Capacity(_) => {
                tracing::error!(error = %err, "storage limit");
                Status::resource_exhausted(clip(&err.to_string()))
            }
            Error::Storage(_) | Error::Io(_) | Error::MasterKey(_) | Error::Task { .. } => {
                tracing::error!(error = %err, "internal error");
                Status::new(Code::Internal, "internal error; see the broker's log")
            }
        }
    }
}

/// ENOSPC, EDQUOT or EFBIG: the broker's disk (or quota, or its file-size
/// limit) is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::FileTooLarge
    )
}

fn disk_full(err: &Error) -> Status {
    tracing::error!(error = %err, "storage is full");
    Status::resource_exhausted("the broker's storage is full; try again later")
}

#[cfg(test)]
mod share_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #21: corruption is DATA_LOSS and a full disk
    /// RESOURCE_EXHAUSTED, not a generic INTERNAL (the store's own error
    /// paths are tested with a full disk in store::faults).
    #[test]
    fn corruption_and_full_disks_have_their_codes() {
        let enospc = || std::io::Error::from_raw_os_error(28);
        for (err, code) in [
            (Error::Corrupt("bad varint".into()), Code::DataLoss),
            (Error::Io(enospc()), Code::ResourceExhausted),
            (Error::Io(enospc()).share(), Code::ResourceExhausted),
            (
                Error::Io(std::io::Error::from(std::io::ErrorKind::QuotaExceeded)),
                Code::ResourceExhausted,
            ),
            (
                Error::Io(std::io::Error::from(std::io::ErrorKind::FileTooLarge)),
                Code::ResourceExhausted,
            ),
            (Error::Io(std::io::Error::other("x")), Code::Internal),
            (
                Error::Damaged {
                    offset: 3,
                    detail: "crc".into(),
                },
                Code::DataLoss,
            ),
            (Error::Unavailable("fsync".into()), Code::Unavailable),
        ] {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert!(!status.message().contains("bad varint"), "{status:?}");
        }
    }

    #[test]
    fn status_messages_are_bounded() {
        let name = "é".repeat(50_000);
        let status = Status::from(Error::invalid(
            format!("attributes[{name:?}]"),
            format!("{name:?} is not allowed"),
        ));
        assert!(
            status.message().len() <= MAX_STATUS_MESSAGE,
            "{}",
            status.message().len()
        );
        assert!(status.message().starts_with("attributes[\"é"));
        assert!(
            status.message().contains("…: \""),
            "the explanation follows the clipped field"
        );
        let status = Status::from(Error::NotFound("x".repeat(5000)));
        assert_eq!(status.message().len(), MAX_STATUS_MESSAGE);
        let short = Status::from(Error::invalid("event.id", "required"));
        assert_eq!(short.message(), "event.id: required");
    }
}
