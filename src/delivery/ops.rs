//! The broker's own events, published into the log like any other so
//! operators receive them by webhook or Subscribe. Endpoints get them only
//! when they name them in `event_types`, and deliveries of these events
//! produce no further ones, so a failing endpoint cannot feed itself.

use std::time::SystemTime;

use crate::{
    convert,
    model::{
        delivery::DeliveryRecord,
        ops::{OpsEvent, OpsValue},
        EndpointId, NewEvent, Offset,
    },
};

/// An event's body: its fields in order.
pub type Fields = Vec<(&'static str, OpsValue)>;

/// An endpoint was disabled (410 Gone, auto-disable).
pub const ENDPOINT_DISABLED: &str = crate::model::BROKER_EVENT_TYPES[0];
/// A failing endpoint delivered again.
pub const ENDPOINT_RECOVERED: &str = crate::model::BROKER_EVENT_TYPES[1];
/// A delivery was dead-lettered.
pub const DELIVERY_EXHAUSTED: &str = crate::model::BROKER_EVENT_TYPES[2];
/// A delivery failed `failing_event_after` times.
pub const DELIVERY_FAILING: &str = crate::model::BROKER_EVENT_TYPES[3];
/// An admin changed something (tenants: the audit trail).
pub const ADMIN_CHANGED: &str = crate::model::BROKER_EVENT_TYPES[4];

/// A broker event about `endpoint_id` (its ordering key: one endpoint's
/// events stay in order; the audit trail keys by its target), belonging to
/// the endpoint's `tenant`.
pub fn event(event_type: &'static str, endpoint_id: &str, tenant: &str, data: Fields) -> NewEvent {
    convert::ops::new_event(OpsEvent {
        event_type,
        key: endpoint_id.to_owned(),
        tenant: tenant.to_owned(),
        fields: data,
    })
}

/// The body of the delivery events.
pub fn delivery_fields(endpoint_id: &EndpointId, offset: Offset, d: &DeliveryRecord) -> Fields {
    let mut fields = vec![
        ("endpointId", s(endpoint_id.as_str())),
        ("offset", n(offset.get() as f64)),
        ("eventId", s(d.event_id.as_str())),
        ("eventType", s(&d.event_type)),
        ("attempts", n(f64::from(d.attempts))),
        ("lastStatus", n(f64::from(d.last_status))),
        ("lastError", s(&d.last_error)),
    ];
    if let Some(t) = d.next_attempt_at {
        fields.push(("nextAttemptAt", time(t)));
    }
    fields
}

/// A body from key/value pairs.
pub fn fields(pairs: impl IntoIterator<Item = (&'static str, OpsValue)>) -> Fields {
    pairs.into_iter().collect()
}

/// A string value.
pub fn s(v: &str) -> OpsValue {
    OpsValue::Text(v.to_owned())
}

/// A number value.
pub fn n(v: f64) -> OpsValue {
    OpsValue::Number(v)
}

/// A time as an ISO 8601 string.
pub fn time(t: SystemTime) -> OpsValue {
    OpsValue::Text(crate::webhook::iso8601_at(t))
}
