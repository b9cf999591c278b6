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
    /// A configured limit was reached; the message names the config key.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The broker is shutting down and takes no new work.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl Error {
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

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::ShuttingDown => Status::unavailable(err.to_string()),
            Error::Storage(_) | Error::Io(_) | Error::Corrupt(_) => {
                tracing::error!(error = %err, "internal error");
                Status::new(Code::Internal, "internal error; see the broker's log")
            }
        }
    }
}
