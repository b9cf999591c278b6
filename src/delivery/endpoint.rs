//! Endpoint configuration: validation of what an operator sends, and the
//! stored record.
//!
//! The stored record keeps the endpoint as the public `Endpoint` message
//! (normalized and validated) beside its secrets: one schema for the API and
//! the disk, evolved by protobuf's compatibility rules. Everything that runs
//! uses the validated [`EndpointSpec`] derived from it.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use http::{HeaderName, HeaderValue, Uri};

use crate::{
    config::{Config, MAX_RETRY_ATTEMPTS, MAX_RETRY_DELAY, MIN_WEBHOOK_TIMEOUT},
    convert,
    error::{Error, Result},
    model::{EventFilter, EventType},
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
];
const MAX_URL_BYTES: usize = 2048;
const MAX_DESCRIPTION_BYTES: usize = 1024;
const MAX_FILTERS: usize = 32;

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
        let types = e
            .event_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                EventType::parse(t).map_err(|m| Error::invalid(f(&format!("event_types[{i}]")), m))
            })
            .collect::<Result<Vec<_>>>()?;
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
        );
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
            // from_str rejects CR, LF and other control characters.
            let value = HeaderValue::from_str(v).map_err(|_| {
                Error::invalid(
                    &field,
                    "value must be visible ASCII (no CR, LF or control characters)",
                )
            })?;
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
                            "must be between {MIN_WEBHOOK_TIMEOUT:?} and {:?}",
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
                    format!("must be at most {}", config.endpoint_max_in_flight_limit),
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
        Ok(Self {
            url,
            filter,
            headers,
            timeout,
            retry_schedule,
            max_in_flight,
            ordering,
            enabled: e.enabled.unwrap_or(true),
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

/// How an endpoint is stored.
#[derive(Clone, PartialEq, prost::Message)]
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
}

impl EndpointRecord {
    /// The stored endpoint.
    pub fn endpoint(&self) -> &pb::Endpoint {
        self.endpoint
            .as_ref()
            .expect("records are written with their endpoint")
    }
}

/// Unix nanoseconds as a time.
pub fn from_nanos(n: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(n)
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
