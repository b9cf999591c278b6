//! A webhook endpoint's configuration as the broker holds it: what an
//! operator set (checked by `delivery::endpoint::EndpointSpec::validate`
//! before it is stored) and what the broker records about it (id, times,
//! why it was disabled).
//!
//! The API shows it as the public `Endpoint` message (`convert::endpoint`),
//! the store keeps it in its own encoding (`delivery::endpoint::stored`),
//! so either can change without the other. Field names are those of the
//! message, which UpdateEndpoint's field masks name.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime},
};

use super::{delivery::DeliveryRecord, EndpointId, Offset};

/// Shown instead of custom header values and other secrets.
pub const REDACTED: &str = "<redacted>";

/// How an endpoint orders its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ordering {
    /// Same ordering key: one at a time, in log order.
    Key,
    /// No ordering.
    None,
    /// Everything one at a time, in log order.
    Strict,
}

/// Where an endpoint's delivery started when it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Start {
    /// From the log's first event.
    Earliest,
    /// From the next event published.
    Latest,
    /// From this offset.
    Offset(Offset),
    /// From the first event published at or after this time (which may be
    /// before 1970: it is kept as given and clamped where it is used).
    Time(SystemTime),
}

/// OAuth2 client credentials (#19): requests carry a bearer token fetched
/// from `token_url`. `Debug` shows no secret.
#[derive(Clone, PartialEq, Default)]
pub struct OAuth2 {
    /// The token endpoint's URL.
    pub token_url: String,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (sealed at rest with a master key; never shown).
    pub client_secret: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// The `audience` parameter; empty: not sent.
    pub audience: String,
}

/// A webhook endpoint's configuration. `Debug` shows no secret (header
/// values, the TLS client key and the OAuth2 client secret are redacted).
#[derive(Clone, PartialEq, Default)]
pub struct Endpoint {
    /// `ep_` + ULID, assigned at creation.
    pub id: EndpointId,
    /// The tenant it belongs to, fixed at creation (empty: global).
    pub tenant: String,
    /// Where requests go (checked: `EndpointSpec::validate`).
    pub url: String,
    /// For people.
    pub description: String,
    /// Event types to deliver; empty: all.
    pub event_types: Vec<String>,
    /// Attribute values an event must have.
    pub attribute_filters: HashMap<String, String>,
    /// Extra request headers (values are often credentials).
    pub headers: HashMap<String, String>,
    /// Per-attempt timeout; `None`: the per-event-type default.
    pub timeout: Option<Duration>,
    /// Delay before each attempt; empty: the broker's schedule.
    pub retry_schedule: Vec<Duration>,
    /// Most requests in flight; 0: the broker's default.
    pub max_in_flight: u32,
    /// How deliveries are ordered; `None`: not chosen, the default
    /// ([`Ordering::Key`]).
    pub ordering: Option<Ordering>,
    /// Whether deliveries run.
    pub enabled: bool,
    /// Where delivery started; `None`: latest.
    pub start: Option<Start>,
    /// Latest-state coalescing of state events.
    pub coalesce: bool,
    /// The filter condition over the body; empty: none.
    pub filter: String,
    /// The body's fields to send; empty: the whole body.
    pub fields: Vec<String>,
    /// Requests per second; 0: unlimited.
    pub rate_limit: f64,
    /// Burst of the rate limit (0: 1).
    pub rate_burst: u32,
    /// The HTTP proxy setting: empty: the broker's; "none"; or a proxy URL.
    pub proxy_url: String,
    /// The TLS client certificate chain (PEM); empty: none.
    pub client_cert_pem: String,
    /// Its private key (PEM; a secret).
    pub client_key_pem: String,
    /// Wrap bodies in a type/timestamp/data envelope.
    pub envelope: bool,
    /// OAuth2 client credentials.
    pub oauth2: Option<OAuth2>,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// When it was last changed.
    pub updated_at: Option<SystemTime>,
    /// Why the broker disabled it; empty when enabled or disabled by an
    /// operator.
    pub disabled_reason: String,
    /// When the current run of failures began; `None` while healthy.
    pub failing_since: Option<SystemTime>,
}

impl Endpoint {
    /// The endpoint as it may be shown: custom header values, the TLS
    /// client key and the OAuth2 client secret replaced by [`REDACTED`]
    /// (an empty secret stays empty: there is none).
    pub fn redacted(&self) -> Self {
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = REDACTED.to_owned();
            }
        };
        let mut e = self.clone();
        for v in e.headers.values_mut() {
            *v = REDACTED.to_owned();
        }
        hide(&mut e.client_key_pem);
        if let Some(o) = e.oauth2.as_mut() {
            hide(&mut o.client_secret);
        }
        e
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.redacted();
        f.debug_struct("Endpoint")
            .field("id", &e.id)
            .field("tenant", &e.tenant)
            .field("url", &e.url)
            .field("description", &e.description)
            .field("event_types", &e.event_types)
            .field("attribute_filters", &e.attribute_filters)
            .field("headers", &e.headers)
            .field("timeout", &e.timeout)
            .field("retry_schedule", &e.retry_schedule)
            .field("max_in_flight", &e.max_in_flight)
            .field("ordering", &e.ordering)
            .field("enabled", &e.enabled)
            .field("start", &e.start)
            .field("coalesce", &e.coalesce)
            .field("filter", &e.filter)
            .field("fields", &e.fields)
            .field("rate_limit", &e.rate_limit)
            .field("rate_burst", &e.rate_burst)
            .field("proxy_url", &e.proxy_url)
            .field("client_cert_pem", &e.client_cert_pem)
            .field("client_key_pem", &e.client_key_pem)
            .field("envelope", &e.envelope)
            .field("oauth2", &e.oauth2)
            .field("created_at", &e.created_at)
            .field("updated_at", &e.updated_at)
            .field("disabled_reason", &e.disabled_reason)
            .field("failing_since", &e.failing_since)
            .finish()
    }
}

impl fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.client_secret.is_empty() {
            ""
        } else {
            REDACTED
        };
        f.debug_struct("OAuth2")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &secret)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .finish()
    }
}

/// An endpoint as the Admin API shows it: redacted
/// ([`Endpoint::redacted`]), with what is computed when it is read.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointView {
    /// The endpoint, its secrets redacted.
    pub endpoint: Endpoint,
    /// Events it has still to deliver.
    pub backlog: u64,
    /// While a rotated-out signing secret still signs, until when.
    pub previous_secret_expires_at: Option<SystemTime>,
}

/// Why an endpoint did or did not get an event (ExplainEvent).
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The event's offset.
    pub offset: Offset,
    /// Its type.
    pub event_type: String,
    /// Whether the endpoint's filters select it.
    pub matches: bool,
    /// Why, in words.
    pub reason: String,
    /// Its delivery record, if there is one.
    pub delivery: Option<DeliveryRecord>,
}

/// The request an endpoint gets for an event, as RenderDelivery shows it:
/// custom header values redacted, signed now.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRequest {
    /// `POST`.
    pub method: String,
    /// The endpoint's URL.
    pub url: String,
    /// Every header, in the order sent (name, value).
    pub headers: Vec<(String, String)>,
    /// What the signature covers: `{id}.{timestamp}.{body}`.
    pub signed_content: String,
    /// The body.
    pub body: String,
    /// Whether the timestamp is the last attempt's (else: now).
    pub timestamp_from_last_attempt: bool,
    /// Whether the endpoint's filters select the event.
    pub matches: bool,
}
