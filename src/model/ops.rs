//! The broker's own events (`stevedore.*`, [`super::BROKER_EVENT_TYPES`])
//! as data: what `delivery::ops` and the audit trail say. `convert::ops`
//! makes them log events (a `CustomEvent` whose `data` is a JSON object of
//! these fields), so the code that reports them sees no wire type.

/// A field's value in the event's JSON body.
#[derive(Debug, Clone, PartialEq)]
pub enum OpsValue {
    /// A string (times are ISO 8601 strings).
    Text(String),
    /// A number.
    Number(f64),
}

/// One of the broker's own events, before it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsEvent {
    /// One of the broker's event types.
    pub event_type: &'static str,
    /// Its ordering key: what it is about (an endpoint, an audit target),
    /// so that one thing's events stay in order.
    pub key: String,
    /// The tenant it belongs to (empty: global).
    pub tenant: String,
    /// The body's fields.
    pub fields: Vec<(&'static str, OpsValue)>,
}
