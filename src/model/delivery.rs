//! What the broker knows about delivering one event to one endpoint: the
//! delivery record (where it stands) and its numbered attempts.
//!
//! These are the domain's own types: the store encodes them in its own
//! record format (`store::state`), the API shows them as `pb::Delivery` and
//! `pb::Attempt` (`convert::delivery`), and neither form leaks into the
//! code that delivers.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};

use super::{EndpointId, EventId, Offset};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeliveryState {
    /// No state, or one this version does not know (a record written by a
    /// newer version). Never written.
    #[default]
    Unspecified,
    /// Not attempted yet, or an attempt is under way.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// The last attempt failed; another is scheduled at `next_attempt_at`.
    Failed,
    /// Every attempt of the schedule failed, or the event expired or was
    /// erased before it was delivered (see `last_error`).
    Dead,
    /// Replaced by a newer event with the same ordering key before it was
    /// sent (coalescing endpoints); see `superseded_by`.
    Superseded,
}

impl DeliveryState {
    /// The state's name as operators read it in the API and in error
    /// messages (`DELIVERY_STATE_DEAD`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "DELIVERY_STATE_UNSPECIFIED",
            Self::Pending => "DELIVERY_STATE_PENDING",
            Self::Delivered => "DELIVERY_STATE_DELIVERED",
            Self::Failed => "DELIVERY_STATE_FAILED",
            Self::Dead => "DELIVERY_STATE_DEAD",
            Self::Superseded => "DELIVERY_STATE_SUPERSEDED",
        }
    }

    /// Whether the delivery is still under way (waiting for an attempt or
    /// for its next one).
    pub fn is_ongoing(self) -> bool {
        matches!(self, Self::Pending | Self::Failed)
    }
}

/// One endpoint's delivery of one event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryRecord {
    /// The endpoint. The store keys records by it and fills it in when it
    /// reads one; a record being built may leave it empty.
    pub endpoint_id: EndpointId,
    /// The event's offset; like `endpoint_id`, part of the key.
    pub offset: Offset,
    /// The event's id.
    pub event_id: EventId,
    /// The event's type.
    pub event_type: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts in the current round (its retry schedule).
    pub attempts: u32,
    /// When the next attempt is due, while one is scheduled.
    pub next_attempt_at: Option<SystemTime>,
    /// When the last attempt started.
    pub last_attempt_at: Option<SystemTime>,
    /// The last attempt's HTTP status (0: no response).
    pub last_status: u32,
    /// Why the last attempt failed, or why the delivery ended unsent.
    pub last_error: String,
    /// For [`DeliveryState::Superseded`]: the offset of the newer event.
    pub superseded_by: Offset,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptRecord {
    /// 1, 2, ... across every round of the delivery (a retry by hand or a
    /// replay starts a new schedule but keeps counting here).
    pub attempt: u32,
    /// When it started.
    pub started_at: Option<SystemTime>,
    /// How long it took.
    pub latency: Option<Duration>,
    /// HTTP status (0: no response).
    pub status: u32,
    /// Transport error or timeout, when there was no response.
    pub error: String,
    /// The first 4 KiB of the response body.
    pub response_body: String,
}

/// Longest event id sent as the `webhook-id` itself.
const MAX_PLAIN_ID_BYTES: usize = 128;

/// The `webhook-id` of an event: the event id itself when it is a safe
/// token (1 to 128 of `A-Z a-z 0-9 _ -`), otherwise `msg_` + the first
/// 16 bytes of SHA-256(event id) in lowercase hex. Either way it depends
/// only on the event id, so every attempt (and every attempt after a
/// restart) carries the same one, and it is a valid header value that
/// verifiers put into the signed content unchanged: an id with a space, a
/// `.`, a non-ASCII character or 256 bytes made receivers' Standard
/// Webhooks libraries reject the signature (a header value is trimmed,
/// re-encoded or refused on the way). The producer's id travels in
/// `delivery::signing::event_id_header`.
pub fn webhook_id(event_id: &str) -> Cow<'_, str> {
    let safe = !event_id.is_empty()
        && event_id.len() <= MAX_PLAIN_ID_BYTES
        && event_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if safe {
        return Cow::Borrowed(event_id);
    }
    let digest = Sha256::digest(event_id.as_bytes());
    let mut id = String::with_capacity(4 + 32);
    id.push_str("msg_");
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    Cow::Owned(id)
}
