//! The edge between protobuf and the domain: validation of incoming events
//! and requests, with `INVALID_ARGUMENT` errors that name the field by its
//! request path, and the conversions of the wire's scalar types (times,
//! durations, start offsets).
//!
//! - [`event`]: published events, validated into `NewEvent`s;
//! - `tenant.rs`: a published event's tenant fields, checked;
//! - [`audit`]: audit records as the API shows them;
//! - [`delivery`]: delivery records and attempts as the API shows them;
//! - [`endpoint`]: webhook endpoints into the domain and back, and
//!   UpdateEndpoint's field mask;
//! - [`ops`]: the broker's own events into log events.

pub mod audit;
pub mod delivery;
pub mod endpoint;
pub mod event;
pub mod ops;
pub(crate) mod tenant;

pub(crate) use event::MAX_ATTRIBUTES;
pub use event::{validate_event, EventLimits};

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost_types::Timestamp;

use crate::{
    error::{Error, Result},
    model::Offset,
};

/// A request field's path, formatted only when an error names it (valid
/// events, the common case, then cost no allocation for their names).
pub type FieldPath<'a> = &'a dyn fmt::Display;

/// `name[index]`, the path of one event of a batch (`events[3]`).
pub struct Item(pub &'static str, pub usize);

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

fn check_timestamp(field: FieldPath<'_>, ts: &Timestamp) -> Result<()> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Error::invalid(field.to_string(), "nanos must be in 0..1e9"));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(Error::invalid(
            field.to_string(),
            "must be between years 0001 and 9999",
        ));
    }
    Ok(())
}

/// `SystemTime` as a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as `SystemTime`; times before 1970 clamp to the epoch.
pub fn system_time(field: &str, ts: &Timestamp) -> Result<SystemTime> {
    check_timestamp(&field, ts)?;
    if ts.seconds < 0 {
        return Ok(UNIX_EPOCH);
    }
    Ok(UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32))
}

/// `offset` as a start position, refused when it is past `head`: nothing
/// would ever be delivered from there until the log caught up, which for
/// 2^64-1 is never, while backlog and pending show 0 (a silent black hole).
/// `head` itself is allowed: the next event.
pub fn start_offset(field: &str, offset: Offset, head: Offset) -> Result<Offset> {
    if offset > head {
        return Err(Error::invalid(
            field,
            format!(
                "{offset} is past the log's head (the next event gets offset {head}); \
                 start at or below it, or start latest"
            ),
        ));
    }
    Ok(offset)
}

/// A protobuf duration as a non-negative `Duration`.
pub fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}
