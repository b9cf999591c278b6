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
//! The record still holds the endpoint as the API's message in memory
//! (there is no domain `Endpoint` type yet), so the conversions at the end
//! are between that message and this form. Every field is named in both
//! directions, so a field added to the message does not compile until it
//! is given a place here.

use std::collections::HashMap;

use crate::pb;

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

/// `e`'s stored form.
pub fn endpoint_to_stored(e: &pb::Endpoint) -> StoredEndpoint {
    let pb::Endpoint {
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
    } = e;
    StoredEndpoint {
        id: id.clone(),
        url: url.clone(),
        description: description.clone(),
        event_types: event_types.clone(),
        attribute_filters: attribute_filters.clone(),
        headers: headers.clone(),
        timeout: timeout.as_ref().map(duration_to_stored),
        retry_schedule: retry_schedule.iter().map(duration_to_stored).collect(),
        max_in_flight: *max_in_flight,
        ordering: *ordering,
        enabled: *enabled,
        start: start.as_ref().map(|s| match s {
            pb::endpoint::Start::StartEarliest(b) => StoredStart::Earliest(*b),
            pb::endpoint::Start::StartLatest(b) => StoredStart::Latest(*b),
            pb::endpoint::Start::StartOffset(o) => StoredStart::Offset(*o),
            pb::endpoint::Start::StartTime(t) => StoredStart::Time(time_to_stored(t)),
        }),
        created_at: created_at.as_ref().map(time_to_stored),
        updated_at: updated_at.as_ref().map(time_to_stored),
        disabled_reason: disabled_reason.clone(),
        backlog: *backlog,
        failing_since: failing_since.as_ref().map(time_to_stored),
        previous_secret_expires_at: previous_secret_expires_at.as_ref().map(time_to_stored),
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
            let pb::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                audience,
                client_secret_set,
            } = o;
            StoredOAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                scopes: scopes.clone(),
                audience: audience.clone(),
                client_secret_set: *client_secret_set,
            }
        }),
        tenant: tenant.clone(),
    }
}

/// The endpoint `s` stores.
pub fn endpoint_from_stored(s: StoredEndpoint) -> pb::Endpoint {
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
    pb::Endpoint {
        id,
        url,
        description,
        event_types,
        attribute_filters,
        headers,
        timeout: timeout.map(duration_from_stored),
        retry_schedule: retry_schedule
            .into_iter()
            .map(duration_from_stored)
            .collect(),
        max_in_flight,
        ordering,
        enabled,
        start: start.map(|s| match s {
            StoredStart::Earliest(b) => pb::endpoint::Start::StartEarliest(b),
            StoredStart::Latest(b) => pb::endpoint::Start::StartLatest(b),
            StoredStart::Offset(o) => pb::endpoint::Start::StartOffset(o),
            StoredStart::Time(t) => pb::endpoint::Start::StartTime(time_from_stored(t)),
        }),
        created_at: created_at.map(time_from_stored),
        updated_at: updated_at.map(time_from_stored),
        disabled_reason,
        backlog,
        failing_since: failing_since.map(time_from_stored),
        previous_secret_expires_at: previous_secret_expires_at.map(time_from_stored),
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
                client_secret_set,
            } = o;
            pb::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                audience,
                client_secret_set,
            }
        }),
        tenant,
    }
}

fn time_to_stored(t: &prost_types::Timestamp) -> StoredTime {
    StoredTime {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

fn time_from_stored(t: StoredTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

fn duration_to_stored(d: &prost_types::Duration) -> StoredDuration {
    StoredDuration {
        seconds: d.seconds,
        nanos: d.nanos,
    }
}

fn duration_from_stored(d: StoredDuration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.seconds,
        nanos: d.nanos,
    }
}
