//! The stored form of an endpoint's configuration: the broker's own
//! encoding, apart from the public `Endpoint` message, so the API can
//! change without a data migration.
//!
//! Field numbers and wire types are those of the `Endpoint` and `OAuth2`
//! messages records were first stored as, so data directories written by
//! earlier versions read unchanged (`stored_tests.rs` encodes the old
//! messages and decodes them here, and back). A field added here takes a
//! number the old messages never used.
//!
//! The conversions at the end are between this form and the domain
//! [`Endpoint`]. Every field is named in both directions, so a field added
//! to either does not compile until it is given a place here.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::{
    error::{Error, Result},
    model::{
        endpoint::{Endpoint, OAuth2, Ordering, Start},
        time as unix_time, EndpointId, Offset,
    },
};

/// A point in time: `google.protobuf.Timestamp`'s encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct StoredTime {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A span of time: `google.protobuf.Duration`'s encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct StoredDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Where delivery started when the endpoint was created.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Oneof)]
pub enum StoredStart {
    /// From the log's first event.
    #[prost(bool, tag = "12")]
    Earliest(bool),
    /// From the next event.
    #[prost(bool, tag = "13")]
    Latest(bool),
    /// From this offset.
    #[prost(uint64, tag = "14")]
    Offset(u64),
    /// From the first event published at or after this time.
    #[prost(message, tag = "15")]
    Time(StoredTime),
}

/// An endpoint's OAuth2 client credentials, stored.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct StoredOAuth2 {
    /// The token endpoint.
    #[prost(string, tag = "1")]
    pub token_url: String,
    /// The client id.
    #[prost(string, tag = "2")]
    pub client_id: String,
    /// The client secret (stored sealed with a master key).
    #[prost(string, tag = "3")]
    pub client_secret: String,
    /// Requested scopes.
    #[prost(string, repeated, tag = "4")]
    pub scopes: Vec<String>,
    /// The `audience` parameter.
    #[prost(string, tag = "5")]
    pub audience: String,
    /// Output only in the API; stored as it was.
    #[prost(bool, tag = "6")]
    pub client_secret_set: bool,
}

/// An endpoint's configuration, stored. The fields mean what the public
/// `Endpoint` message's fields of the same name mean.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct StoredEndpoint {
    /// `ep_` + ULID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Where requests go.
    #[prost(string, tag = "2")]
    pub url: String,
    /// For people.
    #[prost(string, tag = "3")]
    pub description: String,
    /// Event types to deliver; empty: all.
    #[prost(string, repeated, tag = "4")]
    pub event_types: Vec<String>,
    /// Attribute values events must have.
    #[prost(map = "string, string", tag = "5")]
    pub attribute_filters: HashMap<String, String>,
    /// Extra request headers (values stored sealed with a master key).
    #[prost(map = "string, string", tag = "6")]
    pub headers: HashMap<String, String>,
    /// Per-attempt timeout.
    #[prost(message, optional, tag = "7")]
    pub timeout: Option<StoredDuration>,
    /// Delay before each attempt.
    #[prost(message, repeated, tag = "8")]
    pub retry_schedule: Vec<StoredDuration>,
    /// Most requests in flight (0: the default).
    #[prost(uint32, tag = "9")]
    pub max_in_flight: u32,
    /// The ordering mode's number (the public `Ordering` enum's values).
    #[prost(int32, tag = "10")]
    pub ordering: i32,
    /// Unset: enabled.
    #[prost(bool, optional, tag = "11")]
    pub enabled: Option<bool>,
    /// Where delivery started.
    #[prost(oneof = "StoredStart", tags = "12, 13, 14, 15")]
    pub start: Option<StoredStart>,
    /// When it was created.
    #[prost(message, optional, tag = "20")]
    pub created_at: Option<StoredTime>,
    /// When it was last changed.
    #[prost(message, optional, tag = "21")]
    pub updated_at: Option<StoredTime>,
    /// Why the broker disabled it.
    #[prost(string, tag = "22")]
    pub disabled_reason: String,
    /// Output only in the API (computed when read); stored as it was.
    #[prost(uint64, tag = "23")]
    pub backlog: u64,
    /// When the current run of failures began.
    #[prost(message, optional, tag = "24")]
    pub failing_since: Option<StoredTime>,
    /// Output only in the API (derived from the record's keys); stored as
    /// it was.
    #[prost(message, optional, tag = "25")]
    pub previous_secret_expires_at: Option<StoredTime>,
    /// Latest-state coalescing.
    #[prost(bool, tag = "30")]
    pub coalesce: bool,
    /// The filter condition over the body.
    #[prost(string, tag = "31")]
    pub filter: String,
    /// The body's fields to send.
    #[prost(string, repeated, tag = "32")]
    pub fields: Vec<String>,
    /// Requests per second (0: unlimited).
    #[prost(double, tag = "33")]
    pub rate_limit: f64,
    /// Burst of the rate limit.
    #[prost(uint32, tag = "34")]
    pub rate_burst: u32,
    /// The HTTP proxy setting.
    #[prost(string, tag = "40")]
    pub proxy_url: String,
    /// TLS client certificate chain (PEM).
    #[prost(string, tag = "41")]
    pub client_cert_pem: String,
    /// TLS client key (PEM; stored sealed with a master key).
    #[prost(string, tag = "42")]
    pub client_key_pem: String,
    /// Wrap bodies in a type/timestamp/data envelope.
    #[prost(bool, tag = "43")]
    pub envelope: bool,
    /// OAuth2 client credentials.
    #[prost(message, optional, tag = "44")]
    pub oauth2: Option<StoredOAuth2>,
    /// The tenant it belongs to (empty: global).
    #[prost(string, tag = "50")]
    pub tenant: String,
}

/// What the stored form holds that the broker does not read: output-only
/// fields of the public message, which the first versions stored as they
/// were sent or shown. Kept beside the endpoint so a record is written back
/// byte for byte; new records store them empty.
#[derive(Clone, Copy, PartialEq, Default, Debug)]
pub struct Unread {
    backlog: u64,
    previous_secret_expires_at: Option<StoredTime>,
    oauth2_client_secret_set: bool,
}

/// The stored number of an ordering (the public `Ordering` enum's values;
/// 0: not chosen).
fn ordering_to_stored(o: Option<Ordering>) -> i32 {
    match o {
        None => 0,
        Some(Ordering::Key) => 1,
        Some(Ordering::None) => 2,
        Some(Ordering::Strict) => 3,
    }
}

/// `e`'s stored form, with what `unread` kept of the stored record.
pub fn endpoint_to_stored(e: &Endpoint, unread: &Unread) -> StoredEndpoint {
    let Endpoint {
        id,
        tenant,
        url,
        description,
        event_types,
        attribute_filters,
        headers,
        timeout,
        retry_schedule,
        max_in_flight,
        ordering,
        enabled,
        start,
        coalesce,
        filter,
        fields,
        rate_limit,
        rate_burst,
        proxy_url,
        client_cert_pem,
        client_key_pem,
        envelope,
        oauth2,
        created_at,
        updated_at,
        disabled_reason,
        failing_since,
    } = e;
    let time = |t: &Option<SystemTime>| t.map(time_to_stored);
    StoredEndpoint {
        id: id.as_str().to_owned(),
        url: url.clone(),
        description: description.clone(),
        event_types: event_types.clone(),
        attribute_filters: attribute_filters.clone(),
        headers: headers.clone(),
        timeout: timeout.map(duration_to_stored),
        retry_schedule: retry_schedule
            .iter()
            .copied()
            .map(duration_to_stored)
            .collect(),
        max_in_flight: *max_in_flight,
        ordering: ordering_to_stored(*ordering),
        enabled: Some(*enabled),
        start: start.map(|s| match s {
            Start::Earliest => StoredStart::Earliest(true),
            Start::Latest => StoredStart::Latest(true),
            Start::Offset(o) => StoredStart::Offset(o.get()),
            Start::Time(t) => StoredStart::Time(time_to_stored(t)),
        }),
        created_at: time(created_at),
        updated_at: time(updated_at),
        disabled_reason: disabled_reason.clone(),
        backlog: unread.backlog,
        failing_since: time(failing_since),
        previous_secret_expires_at: unread.previous_secret_expires_at,
        coalesce: *coalesce,
        filter: filter.clone(),
        fields: fields.clone(),
        rate_limit: *rate_limit,
        rate_burst: *rate_burst,
        proxy_url: proxy_url.clone(),
        client_cert_pem: client_cert_pem.clone(),
        client_key_pem: client_key_pem.clone(),
        envelope: *envelope,
        oauth2: oauth2.as_ref().map(|o| {
            let OAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                audience,
            } = o;
            StoredOAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                scopes: scopes.clone(),
                audience: audience.clone(),
                client_secret_set: unread.oauth2_client_secret_set,
            }
        }),
        tenant: tenant.clone(),
    }
}

/// The endpoint `s` stores, and what the broker does not read of it. Every
/// stored endpoint was validated before it was written, so a value the
/// domain cannot hold (a negative duration, an unknown ordering, a time
/// out of range) is damage: [`Error::Corrupt`], naming the endpoint and the
/// field.
pub fn endpoint_from_stored(s: StoredEndpoint) -> Result<(Endpoint, Unread)> {
    let StoredEndpoint {
        id,
        url,
        description,
        event_types,
        attribute_filters,
        headers,
        timeout,
        retry_schedule,
        max_in_flight,
        ordering,
        enabled,
        start,
        created_at,
        updated_at,
        disabled_reason,
        backlog,
        failing_since,
        previous_secret_expires_at,
        coalesce,
        filter,
        fields,
        rate_limit,
        rate_burst,
        proxy_url,
        client_cert_pem,
        client_key_pem,
        envelope,
        oauth2,
        tenant,
    } = s;
    let corrupt =
        |field: &str, what: &str| Error::Corrupt(format!("endpoint {id}: {field}: {what}"));
    let time = |field: &str, t: Option<StoredTime>| {
        t.map(|t| time_from_stored(t).ok_or_else(|| corrupt(field, "time out of range")))
            .transpose()
    };
    let duration = |field: &str, d: StoredDuration| {
        duration_from_stored(d).ok_or_else(|| corrupt(field, "negative or malformed duration"))
    };
    let ordering = match ordering {
        0 => None,
        1 => Some(Ordering::Key),
        2 => Some(Ordering::None),
        3 => Some(Ordering::Strict),
        n => return Err(corrupt("ordering", &format!("unknown value {n}"))),
    };
    let start = match start {
        None => None,
        Some(StoredStart::Earliest(_)) => Some(Start::Earliest),
        Some(StoredStart::Latest(_)) => Some(Start::Latest),
        Some(StoredStart::Offset(o)) => Some(Start::Offset(Offset::new(o))),
        Some(StoredStart::Time(t)) => Some(Start::Time(
            time_from_stored(t).ok_or_else(|| corrupt("start_time", "time out of range"))?,
        )),
    };
    let unread = Unread {
        backlog,
        previous_secret_expires_at,
        oauth2_client_secret_set: oauth2.as_ref().is_some_and(|o| o.client_secret_set),
    };
    let endpoint = Endpoint {
        timeout: timeout.map(|d| duration("timeout", d)).transpose()?,
        retry_schedule: retry_schedule
            .into_iter()
            .map(|d| duration("retry_schedule", d))
            .collect::<Result<_>>()?,
        created_at: time("created_at", created_at)?,
        updated_at: time("updated_at", updated_at)?,
        failing_since: time("failing_since", failing_since)?,
        id: EndpointId::new(id),
        tenant,
        url,
        description,
        event_types,
        attribute_filters,
        headers,
        max_in_flight,
        ordering,
        // Unset (never written since endpoints are created enabled or
        // not): enabled, as the API defines it.
        enabled: enabled.unwrap_or(true),
        start,
        coalesce,
        filter,
        fields,
        rate_limit,
        rate_burst,
        proxy_url,
        client_cert_pem,
        client_key_pem,
        envelope,
        oauth2: oauth2.map(|o| {
            let StoredOAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                audience,
                client_secret_set: _,
            } = o;
            OAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                audience,
            }
        }),
        disabled_reason,
    };
    Ok((endpoint, unread))
}

fn time_to_stored(t: SystemTime) -> StoredTime {
    let (seconds, nanos) = unix_time::to_unix(t);
    StoredTime { seconds, nanos }
}

fn time_from_stored(t: StoredTime) -> Option<SystemTime> {
    unix_time::from_unix(t.seconds, t.nanos)
}

fn duration_to_stored(d: Duration) -> StoredDuration {
    StoredDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The duration `d` stores; `None` if it is negative or malformed.
fn duration_from_stored(d: StoredDuration) -> Option<Duration> {
    (d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos))
        .then(|| Duration::new(d.seconds as u64, d.nanos as u32))
}
