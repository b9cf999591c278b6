//! One file per page; shared formatting and form parsing here.

pub mod catalog;
pub mod delivery;
pub mod endpoint;
pub mod endpoint_actions;
pub mod form;
pub mod live;
pub mod overview;

use std::time::{Duration, SystemTime};

use crate::pb::{self, DeliveryState};

/// An `application/x-www-form-urlencoded` body, keeping repeated keys
/// (checkbox lists) in order.
pub struct FormData {
    pairs: Vec<(String, String)>,
}

impl FormData {
    /// Parses a form body.
    pub fn parse(body: &[u8]) -> Self {
        Self {
            pairs: form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    /// The first value of `key`, or "".
    pub fn get(&self, key: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A timestamp for people: RFC 3339 in UTC, or "—".
pub fn ts(t: Option<&prost_types::Timestamp>) -> String {
    match t.and_then(|t| crate::convert::system_time("t", t).ok()) {
        Some(t) => rfc3339(t),
        None => "—".into(),
    }
}

/// RFC 3339 in UTC with seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let seconds = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    crate::webhook::iso8601(&prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

/// A duration in the config's notation (`250ms`, `30s`, `5m`).
pub fn dur(d: Option<&prost_types::Duration>) -> String {
    match d.and_then(|d| crate::convert::duration("d", d).ok()) {
        Some(d) => short(d),
        None => String::new(),
    }
}

/// `d` in the largest unit that is exact.
pub fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if d.is_zero() {
        return "0s".into();
    }
    if ms == 0 {
        return format!("{}us", d.as_micros());
    }
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// A duration for people: `4d 3h`, `12m`, `0m`.
pub fn human(d: Duration) -> String {
    let m = d.as_secs() / 60;
    let (days, hours, mins) = (m / 1440, m / 60 % 24, m % 60);
    match (days, hours) {
        (0, 0) => format!("{mins}m"),
        (0, h) => format!("{h}h {mins}m"),
        (d, h) => format!("{d}d {h}h"),
    }
}

/// A delivery state's short name.
pub fn state_name(s: i32) -> &'static str {
    match DeliveryState::try_from(s) {
        Ok(DeliveryState::Pending) => "pending",
        Ok(DeliveryState::Delivered) => "delivered",
        Ok(DeliveryState::Failed) => "failed",
        Ok(DeliveryState::Dead) => "dead",
        Ok(DeliveryState::Superseded) => "superseded",
        _ => "unknown",
    }
}

/// An endpoint's state for people: (`enabled`/`paused`/`disabled`/
/// `failing`, why); a failing endpoint says when it auto-disables
/// (`auto_disable_after` of failing with no success).
pub fn endpoint_state(e: &pb::Endpoint, auto_disable_after: Duration) -> (&'static str, String) {
    if e.enabled == Some(false) {
        if e.disabled_reason.is_empty() {
            ("paused", "paused by an administrator".into())
        } else {
            ("disabled", e.disabled_reason.clone())
        }
    } else if let Some(since) = e
        .failing_since
        .as_ref()
        .and_then(|t| crate::convert::system_time("failing_since", t).ok())
    {
        let left = (since + auto_disable_after)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // Whole minutes: "auto-disables in 4d23h59m" reads better rounded.
        let left = Duration::from_secs(left.as_secs() / 60 * 60);
        (
            "failing",
            format!(
                "failing since {} with no success; auto-disables in {}",
                rfc3339(since),
                human(left)
            ),
        )
    } else {
        ("enabled", String::new())
    }
}

/// A gRPC status for people: the message (which names the field), with the
/// code when it is not a validation error.
pub fn status_text(s: &tonic::Status) -> String {
    if s.code() == tonic::Code::InvalidArgument {
        s.message().to_owned()
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}

/// A JSON document indented for reading.
pub fn pretty(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

/// The HTTP status for a gRPC error shown on a page.
pub fn http_status(s: &tonic::Status) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
