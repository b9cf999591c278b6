//! Endpoint configuration: validation of what an operator sends, and the
//! stored record.
//!
//! The stored record keeps the endpoint as the public `Endpoint` message
//! (normalized and validated) beside its secrets: one schema for the API and
//! the disk, evolved by protobuf's compatibility rules. Everything that runs
//! uses the validated [`EndpointSpec`] derived from it.
//!
//! With a master key configured, the signing secrets, the custom header
//! values (often credentials), the TLS client key and the OAuth2 client
//! secret are stored sealed ([`super::sealing`]); in
//! memory an [`EndpointRecord`] is always open, and it is sealed and opened
//! only by [`EndpointRecord::to_stored`] and [`EndpointRecord::from_stored`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use prost::Message;

use super::client_auth::{self, ClientAuth};
use super::limit::Rate;
use super::oauth::{self, ClientCredentials};
use super::proxy::Route;
use super::request::Keys;
use super::signing::Secret;
use super::worker::STATE_EVENT_TYPES;
use super::{
    egress::{self, Guard},
    sealing::{MasterKey, Sealed},
    REDACTED,
};
use crate::{
    config::{Config, MAX_RETRY_ATTEMPTS, MAX_RETRY_DELAY, MIN_WEBHOOK_TIMEOUT},
    convert,
    error::{Error, Result},
    filter::{Filter, Projection},
    model::{EventFilter, EventType, TYPED_EVENT_TYPES},
    pb,
};

/// How an endpoint orders its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// Same ordering key: one at a time, in log order.
    Key,
    /// No ordering.
    None,
    /// Everything one at a time, in log order.
    Strict,
}

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
/// `changed` lists the proto fields being set (every field on create).
pub fn refuse_what_never_matches(e: &pb::Endpoint, changed: &dyn Fn(&str) -> bool) -> Result<()> {
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
    /// Validates `e` (field paths start with `endpoint.`).
    pub fn from_pb(e: &pb::Endpoint, config: &Config) -> Result<Self> {
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
        let timeout = match &e.timeout {
            None => None,
            Some(d) => {
                let d = convert::duration(&f("timeout"), d)?;
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
                .map(|(i, d)| {
                    let field = f(&format!("retry_schedule[{i}]"));
                    let d = convert::duration(&field, d)?;
                    if d > MAX_RETRY_DELAY {
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
        let ordering = match pb::Ordering::try_from(e.ordering) {
            Ok(pb::Ordering::Unspecified | pb::Ordering::Key) => Ordering::Key,
            Ok(pb::Ordering::None) => Ordering::None,
            Ok(pb::Ordering::Strict) => Ordering::Strict,
            Err(_) => {
                return Err(Error::invalid(
                    f("ordering"),
                    format!("unknown enum value {}", e.ordering),
                ))
            }
        };
        if let Some(pb::endpoint::Start::StartTime(t)) = &e.start {
            convert::system_time(&f("start_time"), t)?;
        }
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
            enabled: e.enabled.unwrap_or(true),
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

fn validate_url(url: &str, allow_http: bool) -> std::result::Result<Uri, String> {
    if url.is_empty() {
        return Err("required".into());
    }
    if url.len() > MAX_URL_BYTES {
        return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
    }
    let uri: Uri = url.parse().map_err(|e| format!("not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => {
            return Err("must be https:// (http:// needs the broker's allow_http setting)".into())
        }
        _ => return Err("must be an absolute https:// URL".into()),
    }
    let authority = uri.authority().ok_or("must name a host")?;
    if authority.as_str().contains('@') {
        return Err("must not contain credentials; use a custom header instead".into());
    }
    if authority.host().is_empty() {
        return Err("must name a host".into());
    }
    Ok(uri)
}

/// What logs show of an endpoint URL: its scheme, host and port. Webhook
/// URLs often carry a secret in their path or query (a per-endpoint token
/// the receiver checks), and logs go wherever operators collect them; the
/// full URL is for `GetEndpoint` (admin role).
pub fn url_origin(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("?");
    let host = url.host().unwrap_or("?");
    match url.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

/// [`url_origin`] of a stored URL. Operational events carry only this:
/// subscriber tokens read them, and the full URL is for the Admin service.
pub fn origin_of(url: &str) -> String {
    url.parse::<Uri>()
        .map(|u| url_origin(&u))
        .unwrap_or_else(|_| "?".into())
}

/// Rejects, at create or update, a URL whose host is an IP literal in a
/// range the SSRF guard blocks. Host names are checked when connecting
/// (their addresses can change); so is every literal, again.
pub fn check_egress(url: &Uri, guard: &Guard) -> Result<()> {
    check_egress_of("endpoint.url", url, guard)
}

/// [`check_egress`] of the URL in `field` (the endpoint's, or its OAuth2
/// token URL: a token request goes through the same guard).
pub fn check_egress_of(field: &str, url: &Uri, guard: &Guard) -> Result<()> {
    match egress::literal_ip(url).and_then(|ip| guard.check(ip).map(|b| (ip, b))) {
        None => Ok(()),
        // Exempting a cloud metadata address would hand out the host's
        // credentials: that is never the advice.
        Some((ip, block)) if block.category.contains("metadata") => Err(Error::invalid(
            field,
            format!(
                "{ip} is {}, which the SSRF guard blocks: webhooks never go to a cloud \
                 metadata service",
                egress::describe(&block)
            ),
        )),
        Some((ip, block)) => Err(Error::invalid(
            field,
            format!(
                "{ip} is {}, which the SSRF guard blocks; to deliver there, add the range to the broker's allow_networks setting",
                egress::describe(&block)
            ),
        )),
    }
}

/// How an endpoint is stored. Its `Debug` shows no secret and no header
/// value.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct EndpointRecord {
    /// The endpoint as configured (validated), with id and times.
    #[prost(message, optional, tag = "1")]
    pub endpoint: Option<pb::Endpoint>,
    /// The current signing key.
    #[prost(bytes = "vec", tag = "2")]
    pub secret: Vec<u8>,
    /// The rotated-out key, signing until `previous_expires_nanos`.
    #[prost(bytes = "vec", tag = "3")]
    pub previous_secret: Vec<u8>,
    /// Unix nanoseconds.
    #[prost(uint64, tag = "4")]
    pub previous_expires_nanos: u64,
    /// On disk with a master key: the sealed `RecordSecrets`. `secret`,
    /// `previous_secret` and `endpoint.headers` are then stored empty.
    /// Always `None` in memory.
    #[prost(message, optional, tag = "5")]
    pub sealed: Option<Sealed>,
}

/// What a master key seals: everything secret in an [`EndpointRecord`].
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct RecordSecrets {
    #[prost(bytes = "vec", tag = "1")]
    secret: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    previous_secret: Vec<u8>,
    #[prost(map = "string, string", tag = "3")]
    headers: HashMap<String, String>,
    /// #19: the endpoint's TLS client key.
    #[prost(string, tag = "4")]
    client_key_pem: String,
    /// #19: the endpoint's OAuth2 client secret.
    #[prost(string, tag = "5")]
    oauth2_client_secret: String,
}

impl EndpointRecord {
    /// The stored endpoint.
    pub fn endpoint(&self) -> &pb::Endpoint {
        self.endpoint
            .as_ref()
            .expect("records are written with their endpoint")
    }

    /// The bytes to store: sealed under `key` when there is one.
    pub fn to_stored(&self, key: Option<&MasterKey>) -> Vec<u8> {
        let Some(key) = key else {
            return self.encode_to_vec();
        };
        let mut stored = self.clone();
        let endpoint = stored.endpoint.as_mut().expect("records have an endpoint");
        let secrets = RecordSecrets {
            secret: std::mem::take(&mut stored.secret),
            previous_secret: std::mem::take(&mut stored.previous_secret),
            headers: std::mem::take(&mut endpoint.headers),
            client_key_pem: std::mem::take(&mut endpoint.client_key_pem),
            oauth2_client_secret: endpoint
                .oauth2
                .as_mut()
                .map(|o| std::mem::take(&mut o.client_secret))
                .unwrap_or_default(),
        };
        let sealed = key.seal(&endpoint.id, &secrets.encode_to_vec());
        stored.sealed = Some(sealed);
        stored.encode_to_vec()
    }

    /// Decodes stored bytes and opens sealed secrets with `key`. A sealed
    /// record without the key, or with another key, is an
    /// [`Error::MasterKey`] that names the setting to fix.
    pub fn from_stored(bytes: &[u8], key: Option<&MasterKey>) -> Result<Self> {
        let mut r = Self::decode(bytes).map_err(|e| Error::Corrupt(format!("endpoint: {e}")))?;
        let Some(endpoint) = r.endpoint.as_mut() else {
            return Err(Error::Corrupt("endpoint record without endpoint".into()));
        };
        let Some(sealed) = r.sealed.take() else {
            return Ok(r);
        };
        let id = &endpoint.id;
        let key = key.ok_or_else(|| {
            Error::MasterKey(format!(
                "endpoint {id}: its secrets are encrypted at rest but no master key is configured; \
                 set master_key_file (or STEVEDORE_MASTER_KEY) to the key that encrypted them"
            ))
        })?;
        let plain = key.open(id, &sealed).ok_or_else(|| {
            Error::MasterKey(format!(
                "endpoint {id}: its secrets cannot be decrypted with the configured master key \
                 (master_key_file / STEVEDORE_MASTER_KEY): they were encrypted with a different key, \
                 or the record is damaged"
            ))
        })?;
        let secrets = RecordSecrets::decode(&*plain)
            .map_err(|e| Error::Corrupt(format!("endpoint {id}: sealed secrets: {e}")))?;
        r.secret = secrets.secret;
        r.previous_secret = secrets.previous_secret;
        endpoint.headers = secrets.headers;
        endpoint.client_key_pem = secrets.client_key_pem;
        if let Some(o) = endpoint.oauth2.as_mut() {
            o.client_secret = secrets.oauth2_client_secret;
        }
        Ok(r)
    }

    /// Whether stored bytes hold sealed secrets (written with a master
    /// key). Undecodable bytes count as sealed: there is nothing to migrate.
    pub fn is_sealed(bytes: &[u8]) -> bool {
        Self::decode(bytes).map_or(true, |r| r.sealed.is_some())
    }
}

impl fmt::Debug for EndpointRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = self.endpoint.as_ref().map(|e| {
            let mut e = e.clone();
            for v in e.headers.values_mut() {
                *v = REDACTED.to_owned();
            }
            if !e.client_key_pem.is_empty() {
                e.client_key_pem = REDACTED.to_owned();
            }
            e
        });
        let redacted = |s: &[u8]| if s.is_empty() { "" } else { REDACTED };
        f.debug_struct("EndpointRecord")
            .field("endpoint", &endpoint)
            .field("secret", &redacted(&self.secret))
            .field("previous_secret", &redacted(&self.previous_secret))
            .field("previous_expires_nanos", &self.previous_expires_nanos)
            .field("sealed", &self.sealed.is_some())
            .finish()
    }
}

/// Unix nanoseconds as a time.
pub fn from_nanos(n: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(n)
}

impl EndpointRecord {
    /// The signing keys: the current secret, and the rotated-out one with
    /// the time it stops signing.
    pub fn keys(&self) -> Keys {
        Keys {
            current: Secret::from_bytes(self.secret.clone()),
            previous: (!self.previous_secret.is_empty()).then(|| {
                (
                    Secret::from_bytes(self.previous_secret.clone()),
                    from_nanos(self.previous_expires_nanos),
                )
            }),
        }
    }
}

/// For `stevedore reseal`: a stored endpoint record in the clear, sealed
/// with `key` (`None`: already sealed). A sealed record must open with
/// `key`, or the whole reseal stops before anything changes.
pub fn reseal_value(value: &[u8], key: &MasterKey) -> Result<Option<Vec<u8>>> {
    if EndpointRecord::is_sealed(value) {
        EndpointRecord::from_stored(value, Some(key))?;
        return Ok(None);
    }
    Ok(Some(
        EndpointRecord::from_stored(value, None)?.to_stored(Some(key)),
    ))
}

/// The durable consumer behind an endpoint. `@` cannot appear in gRPC
/// consumer names, so the two never collide.
pub fn consumer_name(endpoint_id: &str) -> String {
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
mod tests {
    use super::*;

    fn ep(url: &str) -> pb::Endpoint {
        pb::Endpoint {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn urls() {
        let c = Config::default();
        assert!(EndpointSpec::from_pb(&ep("https://erp.example.com/hook"), &c).is_ok());
        for (url, why) in [
            ("", "required"),
            ("http://erp.example.com/hook", "allow_http"),
            ("ftp://x/y", "https://"),
            ("/relative", "https://"),
            ("https://user:pw@erp.example.com/", "credentials"),
            ("not a url", "not a valid URL"),
        ] {
            let err = EndpointSpec::from_pb(&ep(url), &c).unwrap_err().to_string();
            assert!(
                err.starts_with("endpoint.url: ") && err.contains(why),
                "{url}: {err}"
            );
        }
        let c = Config {
            allow_http: true,
            ..Config::default()
        };
        assert!(EndpointSpec::from_pb(&ep("http://127.0.0.1:9/x"), &c).is_ok());
    }

    #[test]
    fn logs_show_only_the_origin_of_a_url() {
        for (url, shown) in [
            (
                "https://hooks.example.com/services/T0/B0/s3cr3t?token=t0k",
                "https://hooks.example.com",
            ),
            ("http://127.0.0.1:9/x?k=v", "http://127.0.0.1:9"),
            ("https://[::1]:8443/", "https://[::1]:8443"),
        ] {
            assert_eq!(url_origin(&url.parse().unwrap()), shown);
        }
    }

    #[test]
    fn headers() {
        let c = Config::default();
        let mut e = ep("https://h/x");
        e.headers.insert("X-Api-Key".into(), "k".into());
        assert!(EndpointSpec::from_pb(&e, &c).is_ok());
        for (k, v) in [
            ("webhook-signature", "x"),
            ("Content-Type", "text/plain"),
            ("X-Jasci-Event", "x"),
            ("bad name", "x"),
            ("x-ok", "a\r\nInjected: yes"),
        ] {
            let mut e = ep("https://h/x");
            e.headers.insert(k.into(), v.into());
            let err = EndpointSpec::from_pb(&e, &c).unwrap_err().to_string();
            assert!(err.starts_with("endpoint.headers["), "{k}: {err}");
        }
    }

    /// Issue #21: non-ASCII header values are refused (README: visible
    /// ASCII), without echoing them.
    #[test]
    fn header_values_are_visible_ascii() {
        let c = Config::default();
        for v in [
            "caf\u{e9}-cred",
            "\u{80}cred",
            "cred\u{200b}",
            "tab\tcred",
            "\u{7f}cred",
        ] {
            let mut e = ep("https://h/x");
            e.headers.insert("X-Api-Key".into(), v.into());
            let err = EndpointSpec::from_pb(&e, &c).unwrap_err().to_string();
            assert!(
                err.starts_with("endpoint.headers[\"X-Api-Key\"]") && err.contains("ASCII"),
                "{v:?}: {err}"
            );
            assert!(!err.contains("cred"), "{err}");
        }
        let mut e = ep("https://h/x");
        e.headers.insert(
            "Authorization".into(),
            "Bearer a.b-c_d~!\"#$%&'()*+,/:;<=>?@[\\]^`{|}".into(),
        );
        EndpointSpec::from_pb(&e, &c).unwrap();
    }

    /// Issue #21: `event_types` is capped and takes no duplicates.
    #[test]
    fn event_types_are_capped_and_unique() {
        let c = Config::default();
        let mut e = ep("https://h/x");
        e.event_types = vec!["pick.confirmed".into(); 100_000];
        let err = EndpointSpec::from_pb(&e, &c).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoint.event_types: at most 256"),
            "{err}"
        );
        e.event_types = vec![
            "pick.confirmed".into(),
            "order.status".into(),
            "pick.confirmed".into(),
        ];
        let err = EndpointSpec::from_pb(&e, &c).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoint.event_types[2]: duplicate of event_types[0]"),
            "{err}"
        );
        e.event_types = (0..crate::model::MAX_EVENT_TYPES)
            .map(|i| format!("custom.t{i}"))
            .collect();
        EndpointSpec::from_pb(&e, &c).unwrap();
        e.event_types.push("custom.one_more".into());
        assert!(EndpointSpec::from_pb(&e, &c).is_err());
    }

    fn record() -> EndpointRecord {
        let mut e = ep("https://h/x");
        e.id = "ep_1".into();
        e.headers
            .insert("X-Api-Key".into(), "header-credential".into());
        e.oauth2 = Some(pb::OAuth2 {
            token_url: "https://auth.h/token".into(),
            client_id: "client".into(),
            client_secret: "oauth-client-secret".into(),
            ..Default::default()
        });
        EndpointRecord {
            endpoint: Some(e),
            secret: b"current-secret-bytes".to_vec(),
            previous_secret: b"previous-secret-bytes".to_vec(),
            previous_expires_nanos: 5,
            sealed: None,
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn secrets_are_sealed_at_rest_with_a_master_key() {
        let r = record();
        let plain = r.to_stored(None);
        assert!(contains(&plain, b"current-secret-bytes"));
        assert!(!EndpointRecord::is_sealed(&plain));
        assert_eq!(EndpointRecord::from_stored(&plain, None).unwrap(), r);

        let key = MasterKey::from_bytes([1; 32]);
        let sealed = r.to_stored(Some(&key));
        assert!(EndpointRecord::is_sealed(&sealed));
        for secret in [
            &b"current-secret-bytes"[..],
            b"previous-secret-bytes",
            b"header-credential",
            b"oauth-client-secret",
        ] {
            assert!(!contains(&sealed, secret));
        }
        assert!(contains(&sealed, b"https://h/x"), "the rest stays readable");
        assert_eq!(EndpointRecord::from_stored(&sealed, Some(&key)).unwrap(), r);
        // Plaintext records still load with a key (they are migrated).
        assert_eq!(EndpointRecord::from_stored(&plain, Some(&key)).unwrap(), r);

        let err = EndpointRecord::from_stored(&sealed, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ep_1") && err.contains("master_key_file"),
            "{err}"
        );
        let other = MasterKey::from_bytes([2; 32]);
        let err = EndpointRecord::from_stored(&sealed, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("different key") && err.contains("master_key_file"),
            "{err}"
        );

        // Sealed secrets moved to another endpoint's record do not open.
        let mut moved = EndpointRecord::decode(&*sealed).unwrap();
        moved.endpoint.as_mut().unwrap().id = "ep_2".into();
        assert!(EndpointRecord::from_stored(&moved.encode_to_vec(), Some(&key)).is_err());
    }

    #[test]
    fn debug_shows_no_secret_and_no_header_value() {
        let r = record();
        let spec = EndpointSpec::from_pb(r.endpoint(), &Config::default()).unwrap();
        let shown = format!("{r:?} {spec:?}");
        for secret in [
            "current-secret-bytes",
            "previous-secret-bytes",
            "header-credential",
            "oauth-client-secret",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // Bytes would show as numbers: make sure those are absent too.
        assert!(!shown.contains(&format!("{:?}", b"current-secret-bytes".to_vec())));
        assert!(
            shown.contains("X-Api-Key") || shown.contains("x-api-key"),
            "{shown}"
        );
    }

    #[test]
    fn bad_header_values_are_not_echoed() {
        let mut e = ep("https://h/x");
        e.headers
            .insert("X-Api-Key".into(), "leaked-credential\r\nX-Evil: 1".into());
        let err = EndpointSpec::from_pb(&e, &Config::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("endpoint.headers[\"X-Api-Key\"]"), "{err}");
        assert!(!err.contains("leaked-credential"), "{err}");
        e.headers.insert(
            "X-Api-Key".into(),
            format!("long-credential{}", "x".repeat(5000)),
        );
        let err = EndpointSpec::from_pb(&e, &Config::default())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("long-credential"), "{err}");
    }

    #[test]
    fn ip_literals_in_blocked_ranges_are_rejected() {
        let guard = Guard::default();
        let check = |url: &str, guard: &Guard| check_egress(&url.parse().unwrap(), guard);
        for (url, range) in [
            ("https://10.0.0.1/hook", "10.0.0.0/8"),
            ("http://127.0.0.1:8080/hook", "127.0.0.0/8"),
            ("http://[::ffff:127.0.0.1]:8080/hook", "127.0.0.0/8"),
            ("https://[fd00::1]/", "fc00::/7"),
        ] {
            let err = check(url, &guard).unwrap_err().to_string();
            assert!(
                err.starts_with("endpoint.url: ")
                    && err.contains(range)
                    && err.contains("allow_networks"),
                "{url}: {err}"
            );
        }
        // Never advice to exempt a metadata service.
        for url in [
            "http://169.254.169.254/latest",
            "https://169.254.169.254/latest/meta-data",
        ] {
            let err = check(url, &guard).unwrap_err().to_string();
            assert!(
                err.starts_with("endpoint.url: ")
                    && err.contains("169.254.169.254/32")
                    && err.contains("cloud metadata")
                    && !err.contains("allow_networks"),
                "{err}"
            );
        }
        assert!(check("https://8.8.8.8/", &guard).is_ok());
        // Names are checked when connecting.
        assert!(check("https://localhost/", &guard).is_ok());
        let allow = Guard::new(&egress::parse_networks("127.0.0.0/8").unwrap());
        assert!(check("http://127.0.0.1:8080/hook", &allow).is_ok());
        assert!(check("https://10.0.0.1/hook", &allow).is_err());
    }

    #[test]
    fn schedule_timeout_and_defaults() {
        let c = Config::default();
        let s = EndpointSpec::from_pb(&ep("https://h/x"), &c).unwrap();
        assert_eq!(s.retry_schedule.len(), 8);
        assert_eq!(s.timeout_for("pick.confirmed", &c), Duration::from_secs(30));
        assert_eq!(
            s.timeout_for("channel_inventory.updated", &c),
            Duration::from_secs(5)
        );
        assert_eq!(s.ordering, Ordering::Key);
        assert!(s.enabled);
        let mut e = ep("https://h/x");
        e.timeout = Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        });
        assert!(EndpointSpec::from_pb(&e, &c)
            .unwrap_err()
            .to_string()
            .starts_with("endpoint.timeout"));
        let mut e = ep("https://h/x");
        e.retry_schedule = vec![prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }];
        assert!(EndpointSpec::from_pb(&e, &c)
            .unwrap_err()
            .to_string()
            .starts_with("endpoint.retry_schedule[0]"));
        let mut e = ep("https://h/x");
        e.ordering = 9;
        assert!(EndpointSpec::from_pb(&e, &c)
            .unwrap_err()
            .to_string()
            .starts_with("endpoint.ordering"));
    }
}
