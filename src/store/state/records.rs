//! The stored form of delivery records, attempts and audit records: the
//! store's own encoding, apart from the public API's messages, so the API
//! can change without a data migration.
//!
//! The field numbers and wire types are those of the `Delivery`, `Attempt`
//! and `AuditRecord` messages these records were first stored as, so data
//! directories written by earlier versions read unchanged (the tests
//! encode the old messages and decode them here, and back). A field added
//! here takes a number the old messages never used.

use crate::model::EndpointId;
use crate::model::EventId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{
    audit::AuditRecord,
    delivery::{AttemptRecord, DeliveryRecord, DeliveryState},
    Offset,
};

/// A point in time: `google.protobuf.Timestamp`'s encoding.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(super) struct StoredTime {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A span of time: `google.protobuf.Duration`'s encoding.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(super) struct StoredDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A stored delivery record. Numbers 1 and 2 (endpoint id and offset) are
/// the record's key and were never stored; 40 (the `webhook-id`) is
/// derived when read.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredDelivery {
    /// The event's id.
    #[prost(string, tag = "3")]
    pub event_id: String,
    /// The event's type.
    #[prost(string, tag = "4")]
    pub event_type: String,
    /// See [`state_number`].
    #[prost(int32, tag = "5")]
    pub state: i32,
    /// Attempts in the current round.
    #[prost(uint32, tag = "6")]
    pub attempts: u32,
    /// When the next attempt is due.
    #[prost(message, optional, tag = "7")]
    pub next_attempt_at: Option<StoredTime>,
    /// When the last attempt started.
    #[prost(message, optional, tag = "8")]
    pub last_attempt_at: Option<StoredTime>,
    /// The last attempt's HTTP status (0: no response).
    #[prost(uint32, tag = "9")]
    pub last_status: u32,
    /// Why the last attempt failed.
    #[prost(string, tag = "10")]
    pub last_error: String,
    /// For a superseded delivery: the newer event's offset.
    #[prost(uint64, tag = "11")]
    pub superseded_by: u64,
}

/// A stored attempt.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredAttempt {
    /// 1, 2, ... across every round of the delivery.
    #[prost(uint32, tag = "1")]
    pub attempt: u32,
    /// When it started.
    #[prost(message, optional, tag = "2")]
    pub started_at: Option<StoredTime>,
    /// How long it took.
    #[prost(message, optional, tag = "3")]
    pub latency: Option<StoredDuration>,
    /// HTTP status (0: no response).
    #[prost(uint32, tag = "4")]
    pub status: u32,
    /// Transport error or timeout.
    #[prost(string, tag = "5")]
    pub error: String,
    /// The first 4 KiB of the response body.
    #[prost(string, tag = "6")]
    pub response_body: String,
}

/// A stored audit record.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredAudit {
    /// A ULID (also the key).
    #[prost(string, tag = "1")]
    pub id: String,
    /// When the change was made.
    #[prost(message, optional, tag = "2")]
    pub at: Option<StoredTime>,
    /// The token's name.
    #[prost(string, tag = "3")]
    pub token: String,
    /// The token's tenant.
    #[prost(string, tag = "4")]
    pub tenant: String,
    /// What was done.
    #[prost(string, tag = "5")]
    pub action: String,
    /// What it was done to.
    #[prost(string, tag = "6")]
    pub target: String,
    /// The tenant of what was changed.
    #[prost(string, tag = "7")]
    pub target_tenant: String,
}

impl StoredAudit {
    /// The stored form of `r`.
    pub fn from_record(r: &AuditRecord) -> Self {
        Self {
            id: r.id.clone(),
            at: r.at.map(StoredTime::from_time),
            token: r.token.clone(),
            tenant: r.tenant.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            target_tenant: r.target_tenant.clone(),
        }
    }

    /// The record it stores.
    pub fn into_record(self) -> AuditRecord {
        AuditRecord {
            id: self.id,
            at: self.at.map(StoredTime::to_time),
            token: self.token,
            tenant: self.tenant,
            action: self.action,
            target: self.target,
            target_tenant: self.target_tenant,
        }
    }
}

/// The stored number of a state (the old `DeliveryState` enum's values;
/// they must never change).
fn state_number(state: DeliveryState) -> i32 {
    match state {
        DeliveryState::Unspecified => 0,
        DeliveryState::Pending => 1,
        DeliveryState::Delivered => 2,
        DeliveryState::Failed => 3,
        DeliveryState::Dead => 4,
        DeliveryState::Superseded => 5,
    }
}

/// The state a stored number stands for; an unknown one reads as
/// [`DeliveryState::Unspecified`], as the old enum read it.
fn state_of(n: i32) -> DeliveryState {
    match n {
        1 => DeliveryState::Pending,
        2 => DeliveryState::Delivered,
        3 => DeliveryState::Failed,
        4 => DeliveryState::Dead,
        5 => DeliveryState::Superseded,
        _ => DeliveryState::Unspecified,
    }
}

impl StoredDelivery {
    /// The stored form of `record` (its key, endpoint id and offset, is
    /// not part of it).
    pub fn from_record(record: &DeliveryRecord) -> Self {
        Self {
            event_id: record.event_id.as_str().to_owned(),
            event_type: record.event_type.clone(),
            state: state_number(record.state),
            attempts: record.attempts,
            next_attempt_at: record.next_attempt_at.map(StoredTime::from_time),
            last_attempt_at: record.last_attempt_at.map(StoredTime::from_time),
            last_status: record.last_status,
            last_error: record.last_error.clone(),
            superseded_by: record.superseded_by.get(),
        }
    }

    /// The record stored under `endpoint_id` and `offset`.
    pub fn into_record(self, endpoint_id: &EndpointId, offset: Offset) -> DeliveryRecord {
        DeliveryRecord {
            endpoint_id: endpoint_id.clone(),
            offset,
            event_id: EventId::new(self.event_id),
            event_type: self.event_type,
            state: state_of(self.state),
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at.map(StoredTime::to_time),
            last_attempt_at: self.last_attempt_at.map(StoredTime::to_time),
            last_status: self.last_status,
            last_error: self.last_error,
            superseded_by: Offset::new(self.superseded_by),
        }
    }

    /// The stored state.
    pub fn state(&self) -> DeliveryState {
        state_of(self.state)
    }
}

impl StoredAttempt {
    /// The stored form of `attempt`.
    pub fn from_record(attempt: &AttemptRecord) -> Self {
        Self {
            attempt: attempt.attempt,
            started_at: attempt.started_at.map(StoredTime::from_time),
            latency: attempt.latency.map(StoredDuration::from_duration),
            status: attempt.status,
            error: attempt.error.clone(),
            response_body: attempt.response_body.clone(),
        }
    }

    /// The attempt it stores.
    pub fn into_record(self) -> AttemptRecord {
        AttemptRecord {
            attempt: self.attempt,
            started_at: self.started_at.map(StoredTime::to_time),
            latency: self.latency.map(StoredDuration::to_duration),
            status: self.status,
            error: self.error,
            response_body: self.response_body,
        }
    }
}

impl StoredTime {
    /// `t`; times before 1970 are stored as the epoch (none are written).
    fn from_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }
    }

    /// The time; out-of-range parts (never written) clamp to the second's
    /// bounds, and a time before 1970 or past what `SystemTime` holds reads
    /// as the epoch (an attempt due at once).
    fn to_time(self) -> SystemTime {
        let since_epoch = StoredDuration {
            seconds: self.seconds,
            nanos: self.nanos,
        }
        .to_duration();
        UNIX_EPOCH.checked_add(since_epoch).unwrap_or(UNIX_EPOCH)
    }
}

impl StoredDuration {
    fn from_duration(d: Duration) -> Self {
        Self {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }
    }

    /// The span; negative parts (never written) read as zero.
    fn to_duration(self) -> Duration {
        Duration::new(
            u64::try_from(self.seconds).unwrap_or(0),
            self.nanos.clamp(0, 999_999_999) as u32,
        )
    }
}

#[cfg(test)]
mod tests;
