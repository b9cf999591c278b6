//! The stored form of an endpoint's configuration: the broker's own
//! encoding, apart from the public `Endpoint` message, so the API can
//! change without a data migration.
//!
//! Field numbers and wire types are those of the `Endpoint` and `OAuth2`
//! messages records were first stored as, so data directories written by
//! earlier versions read unchanged (`tests.rs` encodes the old messages and
//! decodes them here, and back). A field added here takes a number the old
//! messages never used. What the API shows converts to and from this in
//! `convert::endpoint`.

use std::collections::HashMap;

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
