//! What one webhook attempt is, as the delivery stack's layers see it: the
//! request before signing, the receiver's answer, why there was none.
//! A leaf module: the stack ([`super::stack`]) and its layers (limits,
//! OAuth2) all use these types, and none of them is needed here.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};

use super::{egress::Blocked, signing::Secret};

/// A boxed, sendable future: what the stack's services and connectors
/// return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The secrets an endpoint signs with: the current one, and during a
/// rotation the previous one until it expires.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs every request.
    pub current: Secret,
    /// Also signs until the `SystemTime`.
    pub previous: Option<(Secret, SystemTime)>,
}

/// Shared so a rotation takes effect without rebuilding the stack.
pub type SharedKeys = Arc<RwLock<Keys>>;

/// One attempt's request, before signing. Cheap to clone (for retries).
#[derive(Clone, Debug)]
pub struct WebhookRequest {
    /// Where to POST.
    pub uri: Uri,
    /// `webhook-id`.
    pub msg_id: String,
    /// Every header except the signature ones: content type, event type,
    /// the endpoint's own.
    pub headers: HeaderMap,
    /// The rendered body, the same bytes on every attempt.
    pub body: Bytes,
    /// Per-attempt deadline.
    pub timeout: Duration,
    /// Signing keys.
    pub keys: SharedKeys,
}

/// What the receiver answered.
#[derive(Debug, Clone)]
pub struct WebhookResponse {
    /// Its status.
    pub status: StatusCode,
    /// Its headers (for `Retry-After`).
    pub headers: HeaderMap,
    /// The first [`RESPONSE_EXCERPT_BYTES`](super::stack::RESPONSE_EXCERPT_BYTES) of its body, lossily UTF-8.
    pub body_excerpt: String,
}

/// The cause of a [`SendError`], what its [`std::error::Error::source`]
/// returns (downcast it to branch on the cause's type).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why no response was received. Callers branch on the variant; the cause
/// is its `source()`. `Display` shows the variant's prefix and the whole
/// cause chain joined by `": "` (the text the attempt record keeps and the
/// operator reads).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {}", Chain(&**.0))]
    Connect(#[source] Cause),
    /// The SSRF guard refused every address: nothing was sent. The text
    /// is the guard's (`blocked by SSRF guard: ...`).
    #[error(transparent)]
    Blocked(Blocked),
    /// The exchange failed after it may have reached the receiver.
    #[error("transport: {}", Chain(&**.0))]
    Transport(#[source] Cause),
    /// No complete response within the deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No OAuth2 access token (the token endpoint failed): nothing was
    /// sent to the receiver. The text never holds the secret or a token.
    #[error("oauth2 token: {}", Chain(&**.0))]
    Token(#[source] Cause),
}

impl SendError {
    /// [`SendError::Connect`] caused by `cause`.
    pub fn connect(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Connect(cause.into())
    }

    /// [`SendError::Transport`] caused by `cause`.
    pub fn transport(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Transport(cause.into())
    }

    /// [`SendError::Token`] caused by `cause`.
    pub fn token(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Token(cause.into())
    }
}

/// Shows an error and its sources, `": "`-separated.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl WebhookRequest {
    /// A request to `https://example.com/hook` with an empty body, a 1 s
    /// deadline and a fresh key: what the stack's unit tests send.
    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self {
            uri: Uri::from_static("https://example.com/hook"),
            msg_id: "m".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            timeout: Duration::from_secs(1),
            keys: Arc::new(RwLock::new(Keys {
                current: Secret::generate(),
                previous: None,
            })),
        }
    }
}

#[cfg(test)]
mod tests;
