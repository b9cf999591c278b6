//! Endpoint configuration: validation of what an operator sets, and the
//! stored record.
//!
//! The stored record keeps the endpoint's configuration (the domain
//! [`Endpoint`], validated) beside its secrets, in the broker's own
//! encoding (`stored.rs`; it started as the public `Endpoint` message and
//! keeps its field numbers, so the API can change without a data
//! migration). Everything that runs uses the validated [`EndpointSpec`]
//! derived from it.
//!
//! With a master key configured, the signing secrets, the custom header
//! values (often credentials), the TLS client key and the OAuth2 client
//! secret are stored sealed ([`super::sealing`]); in
//! memory an [`EndpointRecord`] is always open, and it is sealed and opened
//! only by [`EndpointRecord::to_stored`] and [`EndpointRecord::from_stored`].
//!
//! Here: [`EndpointSpec`] and its validation; `record.rs`: the stored
//! record and its secrets; `stored.rs`: the configuration's stored form;
//! `url.rs`: the URL's checks and what logs show of it.

mod record;
pub mod stored;
mod url;

pub use crate::model::endpoint::Ordering;
pub use record::{from_nanos, reseal_value, EndpointRecord};
pub use url::{check_egress, check_egress_of, origin_of, url_origin};

use url::validate_url;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};

use super::client_auth::{self, ClientAuth};
use super::limit::Rate;
use super::oauth::{self, ClientCredentials};
use super::proxy::Route;
use super::worker::STATE_EVENT_TYPES;
use crate::{
    config::{Config, MAX_RETRY_ATTEMPTS, MAX_RETRY_DELAY, MIN_WEBHOOK_TIMEOUT},
    error::{Error, Result},
    filter::{Filter, Projection},
    model::{endpoint::Endpoint, EndpointId, EventFilter, EventType, TYPED_EVENT_TYPES},
};

/// A validated endpoint configuration.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Where to POST.
    pub url: Uri,
    /// Which events.
    pub filter: EventFilter,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-attempt timeout; `None`: the per-event-type default.
    pub timeout: Option<Duration>,
    /// Delay before each attempt.
    pub retry_schedule: Vec<Duration>,
    /// Concurrent requests.
    pub max_in_flight: u32,
    /// Ordering mode.
    pub ordering: Ordering,
    /// Whether deliveries run.
    pub enabled: bool,
    /// Latest-state coalescing of state events.
    pub coalesce: bool,
    /// Custom webhook condition over the body.
    pub condition: Option<Filter>,
    /// Fields of the body to send.
    pub projection: Option<Projection>,
    /// Request pacing.
    pub rate: Option<Rate>,
    /// Direct, or through which proxy (`proxy_url` over the broker's
    /// settings).
    pub route: Route,
    /// The TLS client certificate presented to the receiver, if any.
    pub client_auth: Option<ClientAuth>,
    /// Wrap bodies as `{"type", "timestamp", "data"}` (`envelope`).
    pub envelope: bool,
    /// OAuth2 client credentials: requests carry a bearer token.
    pub oauth2: Option<ClientCredentials>,
}

/// Header names an endpoint may not set: the broker owns them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "host",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-jasci-event",
    "x-stevedore-event-id",
];
const MAX_URL_BYTES: usize = 2048;
const MAX_DESCRIPTION_BYTES: usize = 1024;
const MAX_FILTERS: usize = 32;
const MAX_RATE: f64 = 100_000.0;
const MAX_BURST: u32 = 100_000;

/// Refuses, for a new or changed endpoint, settings that would silently
/// never apply: an event type one typo away from a known one, a filter or
/// field naming a key that no body of the endpoint's event types has, and
/// coalescing with no state event type. Stored endpoints are not
/// re-checked at start (the rules may grow; a stored endpoint still loads).
///
/// `changed` tells which fields are being set (every field on create).
pub fn refuse_what_never_matches(e: &Endpoint, changed: &dyn Fn(&str) -> bool) -> Result<()> {
    use crate::webhook::schema;

    let f = |name: &str| format!("endpoint.{name}");
    if changed("event_types") {
        for (i, t) in e.event_types.iter().enumerate() {
            EventType::check_known(t)
                .map_err(|m| Error::invalid(f(&format!("event_types[{i}]")), m))?;
        }
    }
    let typed = !e.event_types.is_empty()
        && e.event_types
            .iter()
            .all(|t| TYPED_EVENT_TYPES.contains(&t.as_str()));
    let types = e.event_types.join(", ");
    if (changed("coalesce") || changed("event_types"))
        && e.coalesce
        && typed
        && !e
            .event_types
            .iter()
            .any(|t| STATE_EVENT_TYPES.contains(&t.as_str()))
    {
        return Err(Error::invalid(
            f("coalesce"),
            format!(
                "applies to state events ({}); none of the endpoint's event types ({types}) is one",
                STATE_EVENT_TYPES.join(", ")
            ),
        ));
    }
    if !typed {
        // Custom events carry any JSON: nothing to check keys against.
        return Ok(());
    }
    let known: BTreeSet<&str> = e
        .event_types
        .iter()
        .filter_map(|t| schema::key_paths(t))
        .flat_map(|paths| paths.iter().map(String::as_str))
        .collect();
    if (changed("filter") || changed("event_types")) && !e.filter.trim().is_empty() {
        if let Ok(filter) = Filter::parse(&e.filter) {
            for path in filter.schema_paths() {
                if !known.contains(path.as_str()) {
                    let hint = crate::suggest::hint(&path, known.iter().copied());
                    return Err(Error::invalid(
                        f("filter"),
                        format!("`{path}` is not a key of {types} bodies{hint}"),
                    ));
                }
            }
        }
    }
    if (changed("fields") || changed("event_types")) && !e.fields.is_empty() {
        let keys: BTreeSet<String> = known.iter().map(|k| k.replace("[*]", "")).collect();
        if let Ok(projection) = Projection::parse(&e.fields) {
            for (i, path) in projection.key_paths().into_iter().enumerate() {
                if !path.is_empty() && !keys.contains(&path) {
                    let hint = crate::suggest::hint(&path, keys.iter().map(String::as_str));
                    return Err(Error::invalid(
                        f(&format!("fields[{i}]")),
                        format!("`{path}` is not a key of {types} bodies{hint}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

impl EndpointSpec {
    /// Validates `e` against the broker's `config` (field paths start
    /// with `endpoint.`, as the API names them). What the API's message
    /// can hold and the domain cannot (negative durations, unknown enum
    /// values) was refused when it was converted (`convert::endpoint`).
    pub fn validate(e: &Endpoint, config: &Config) -> Result<Self> {
        let f = |name: &str| format!("endpoint.{name}");
        let url =
            validate_url(&e.url, config.allow_http).map_err(|m| Error::invalid(f("url"), m))?;
        if e.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(Error::invalid(
                f("description"),
                format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
            ));
        }
        let types = EventType::parse_list(&e.event_types).map_err(|(i, m)| match i {
            Some(i) => Error::invalid(f(&format!("event_types[{i}]")), m),
            None => Error::invalid(f("event_types"), m),
        })?;
        if e.attribute_filters.len() > MAX_FILTERS {
            return Err(Error::invalid(
                f("attribute_filters"),
                format!("at most {MAX_FILTERS} filters"),
            ));
        }
        for (k, v) in &e.attribute_filters {
            if k.is_empty() || k.len() > 1024 || v.len() > 1024 {
                return Err(Error::invalid(
                    f(&format!("attribute_filters[{k:?}]")),
                    "keys must be 1-1024 bytes and values at most 1024 bytes",
                ));
            }
        }
        let filter = EventFilter::new(
            types,
            e.attribute_filters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
        .excluding_reserved();
        // A tenant's endpoint receives only that tenant's events, whatever
        // its other filters say.
        let filter = if e.tenant.is_empty() {
            filter
        } else {
            filter.with_tenant(e.tenant.clone())
        };
        if e.headers.len() > config.max_endpoint_headers {
            return Err(Error::invalid(
                f("headers"),
                format!(
                    "at most max_endpoint_headers ({}) headers",
                    config.max_endpoint_headers
                ),
            ));
        }
        let mut headers = Vec::with_capacity(e.headers.len());
        for (k, v) in &e.headers {
            let field = f(&format!("headers[{k:?}]"));
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| Error::invalid(&field, "not a valid header name"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(Error::invalid(
                    &field,
                    "is set by the broker and cannot be overridden",
                ));
            }
            if v.len() > config.max_endpoint_header_bytes {
                return Err(Error::invalid(
                    &field,
                    format!(
                        "value must be at most max_endpoint_header_bytes ({}) bytes",
                        config.max_endpoint_header_bytes
                    ),
                ));
            }
            // Visible ASCII and spaces only: from_str alone lets bytes
            // above 0x7f through (obs-text), which receivers read in
            // different encodings. The message never echoes the value: it
            // may be a credential.
            let mut value = v
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b))
                .then(|| HeaderValue::from_str(v).ok())
                .flatten()
                .ok_or_else(|| {
                    Error::invalid(
                        &field,
                        "value must be visible ASCII or spaces (no CR, LF, control or \
                         non-ASCII characters)",
                    )
                })?;
            // Hidden from `Debug` and never indexed by HPACK.
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let timeout = match e.timeout {
            None => None,
            Some(d) => {
                if d < MIN_WEBHOOK_TIMEOUT || d > config.max_webhook_timeout {
                    return Err(Error::invalid(
                        f("timeout"),
                        format!(
                            "must be between {MIN_WEBHOOK_TIMEOUT:?} and the broker's \
                             max_webhook_timeout ({:?})",
                            config.max_webhook_timeout
                        ),
                    ));
                }
                Some(d)
            }
        };
        let retry_schedule = if e.retry_schedule.is_empty() {
            config.retry_schedule.clone()
        } else {
            if e.retry_schedule.len() > MAX_RETRY_ATTEMPTS {
                return Err(Error::invalid(
                    f("retry_schedule"),
                    format!("at most {MAX_RETRY_ATTEMPTS} attempts"),
                ));
            }
            e.retry_schedule
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d > MAX_RETRY_DELAY {
                        let field = f(&format!("retry_schedule[{i}]"));
                        return Err(Error::invalid(field, "must be at most 7 days"));
                    }
                    Ok(d)
                })
                .collect::<Result<_>>()?
        };
        let max_in_flight = match e.max_in_flight {
            0 => config.endpoint_max_in_flight.get(),
            n if n > config.endpoint_max_in_flight_limit.get() => {
                return Err(Error::invalid(
                    f("max_in_flight"),
                    format!(
                        "must be at most the broker's endpoint_max_in_flight_limit ({})",
                        config.endpoint_max_in_flight_limit
                    ),
                ))
            }
            n => n,
        };
        let ordering = e.ordering.unwrap_or(Ordering::Key);
        if e.coalesce && ordering != Ordering::Key {
            return Err(Error::invalid(
                f("coalesce"),
                "needs ORDERING_KEY: coalescing keeps the newest event per ordering key",
            ));
        }
        let condition = if e.filter.trim().is_empty() {
            None
        } else {
            Some(
                Filter::parse(&e.filter)
                    .map_err(|err| Error::invalid(f("filter"), err.to_string()))?,
            )
        };
        let projection =
            if e.fields.is_empty() {
                None
            } else {
                Some(Projection::parse(&e.fields).map_err(|(i, err)| {
                    Error::invalid(f(&format!("fields[{i}]")), err.to_string())
                })?)
            };
        let rate = if e.rate_limit == 0.0 {
            None
        } else if !(e.rate_limit.is_finite() && (0.001..=MAX_RATE).contains(&e.rate_limit)) {
            return Err(Error::invalid(
                f("rate_limit"),
                format!(
                    "must be 0 (unlimited) or between 0.001 and {MAX_RATE} requests per second"
                ),
            ));
        } else if e.rate_burst > MAX_BURST {
            return Err(Error::invalid(
                f("rate_burst"),
                format!("must be at most {MAX_BURST}"),
            ));
        } else {
            Some(Rate {
                per_second: e.rate_limit,
                burst: e.rate_burst.max(1),
            })
        };
        let route = Route::from_settings(
            config.http_proxy.as_deref(),
            config.https_proxy.as_deref(),
            &config.no_proxy,
        )
        .for_endpoint(&e.proxy_url)
        .map_err(|m| Error::invalid(f("proxy_url"), format!("{m}, or \"none\"")))?;
        let client_auth = client_auth::parse(&e.client_cert_pem, &e.client_key_pem)
            .map_err(|(field, m)| Error::invalid(f(field), m))?;
        let oauth2 = oauth::parse(e.oauth2.as_ref(), |u| validate_url(u, config.allow_http))
            .map_err(|(field, m)| Error::invalid(f(&field), m))?;
        if oauth2.is_some() {
            if let Some((name, _)) = headers
                .iter()
                .find(|(n, _)| n == http::header::AUTHORIZATION)
            {
                return Err(Error::invalid(
                    f(&format!("headers[{:?}]", name.as_str())),
                    "is set from oauth2's token when oauth2 is set",
                ));
            }
        }
        Ok(Self {
            url,
            filter,
            headers,
            timeout,
            retry_schedule,
            max_in_flight,
            ordering,
            enabled: e.enabled,
            coalesce: e.coalesce,
            condition,
            projection,
            rate,
            route,
            client_auth,
            envelope: e.envelope,
            oauth2,
        })
    }

    /// The per-attempt timeout for an event type.
    pub fn timeout_for(&self, event_type: &str, config: &Config) -> Duration {
        self.timeout
            .unwrap_or(if event_type == "channel_inventory.updated" {
                config.channel_inventory_timeout
            } else {
                config.webhook_timeout
            })
    }
}

/// The durable consumer behind an endpoint. `@` cannot appear in gRPC
/// consumer names, so the two never collide.
pub fn consumer_name(endpoint_id: &EndpointId) -> String {
    format!("@endpoint:{endpoint_id}")
}

/// `rendered` as endpoint `spec` sends it: `None` when its filter condition
/// does not hold, else the body with its field selection applied. The
/// shared rendering is never modified.
pub fn endpoint_body(
    spec: &EndpointSpec,
    rendered: Bytes,
) -> std::result::Result<Option<Bytes>, String> {
    if spec.condition.is_none() && spec.projection.is_none() {
        return Ok(Some(rendered));
    }
    let json: serde_json::Value = serde_json::from_slice(&rendered).map_err(|e| e.to_string())?;
    if spec.condition.as_ref().is_some_and(|c| !c.matches(&json)) {
        return Ok(None);
    }
    match &spec.projection {
        None => Ok(Some(rendered)),
        Some(p) => Ok(Some(
            serde_json::to_vec(&p.apply(&json))
                .map_err(|e| e.to_string())?
                .into(),
        )),
    }
}

#[cfg(test)]
mod stored_tests;
#[cfg(test)]
mod tests;
