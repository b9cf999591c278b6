//! Endpoints at the edge: the public `Endpoint` message into the domain
//! [`Endpoint`] and back, and UpdateEndpoint's field mask ([`mask`]).
//!
//! Going in, what the message can say and the domain cannot is refused
//! here with `INVALID_ARGUMENT` naming the field (`endpoint.timeout`: a
//! negative duration; `endpoint.ordering`: an unknown enum value;
//! `endpoint.start_time`: a time out of range); everything else is checked
//! against the broker's configuration by `EndpointSpec::validate`. The
//! output-only fields (times, `disabled_reason`, `backlog`, ...) are
//! ignored going in. Going out, [`shown`] is what every response carries:
//! secrets redacted, the OAuth2 client secret replaced by
//! `client_secret_set`.
//!
//! Every field is named in both directions, so a field added to the message
//! or the domain type does not compile until it is given a place here.

pub mod mask;
pub mod oauth2;

pub use mask::{mask_paths, merge};

use std::time::{Duration, SystemTime};

use prost_types::{Duration as PbDuration, Timestamp};

use super::check_timestamp;
use crate::{
    error::{Error, Result},
    model::{
        endpoint::{Endpoint, EndpointView, OAuth2, Ordering, Start},
        time as unix_time, EndpointId, Offset,
    },
    pb,
};

/// The domain endpoint `e` describes (a CreateEndpoint's, or the stored
/// endpoint of earlier versions); errors name fields as `endpoint.<name>`.
pub fn endpoint_from_pb(e: pb::Endpoint) -> Result<Endpoint> {
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
        // Output only: the broker sets them.
        created_at: _,
        updated_at: _,
        disabled_reason: _,
        backlog: _,
        failing_since: _,
        previous_secret_expires_at: _,
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
    Ok(Endpoint {
        timeout: self::timeout(timeout.as_ref())?,
        retry_schedule: self::retry_schedule(&retry_schedule)?,
        ordering: self::ordering(ordering)?,
        start: start.as_ref().map(self::start).transpose()?,
        enabled: enabled.unwrap_or(true),
        oauth2: oauth2.map(oauth2_from_pb),
        id: EndpointId::new(id),
        tenant,
        url,
        description,
        event_types,
        attribute_filters,
        headers,
        max_in_flight,
        coalesce,
        filter,
        fields,
        rate_limit,
        rate_burst,
        proxy_url,
        client_cert_pem,
        client_key_pem,
        envelope,
        created_at: None,
        updated_at: None,
        disabled_reason: String::new(),
        failing_since: None,
    })
}

/// `e` as the public message, every field as it is (secrets included:
/// responses use [`shown`]); `backlog` and `previous_secret_expires_at`
/// are left unset, `client_secret_set` says whether a secret is there.
pub fn endpoint_to_pb(e: &Endpoint) -> pb::Endpoint {
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
    pb::Endpoint {
        id: id.as_str().to_owned(),
        url: url.clone(),
        description: description.clone(),
        event_types: event_types.clone(),
        attribute_filters: attribute_filters.clone(),
        headers: headers.clone(),
        timeout: timeout.map(duration_to_pb),
        retry_schedule: retry_schedule.iter().copied().map(duration_to_pb).collect(),
        max_in_flight: *max_in_flight,
        ordering: ordering_to_pb(*ordering) as i32,
        enabled: Some(*enabled),
        start: start.map(|s| match s {
            Start::Earliest => pb::endpoint::Start::StartEarliest(true),
            Start::Latest => pb::endpoint::Start::StartLatest(true),
            Start::Offset(o) => pb::endpoint::Start::StartOffset(o.get()),
            Start::Time(t) => pb::endpoint::Start::StartTime(time_to_pb(t)),
        }),
        created_at: created_at.map(time_to_pb),
        updated_at: updated_at.map(time_to_pb),
        disabled_reason: disabled_reason.clone(),
        backlog: 0,
        failing_since: failing_since.map(time_to_pb),
        previous_secret_expires_at: None,
        coalesce: *coalesce,
        filter: filter.clone(),
        fields: fields.clone(),
        rate_limit: *rate_limit,
        rate_burst: *rate_burst,
        proxy_url: proxy_url.clone(),
        client_cert_pem: client_cert_pem.clone(),
        client_key_pem: client_key_pem.clone(),
        envelope: *envelope,
        oauth2: oauth2.as_ref().map(oauth2_to_pb),
        tenant: tenant.clone(),
    }
}

/// An endpoint as responses show it: its redacted settings (header values
/// and the client key as `<redacted>`), no OAuth2 client secret (only
/// `client_secret_set`), its backlog, and until when a rotated-out secret
/// still signs.
pub fn shown(v: &EndpointView) -> pb::Endpoint {
    let mut e = endpoint_to_pb(&v.endpoint.redacted());
    if let Some(o) = e.oauth2.as_mut() {
        o.client_secret.clear();
    }
    e.backlog = v.backlog;
    e.previous_secret_expires_at = v.previous_secret_expires_at.map(time_to_pb);
    e
}

/// `endpoint.timeout`: unset, or a non-negative duration.
fn timeout(d: Option<&PbDuration>) -> Result<Option<Duration>> {
    d.map(|d| super::duration("endpoint.timeout", d))
        .transpose()
}

/// `endpoint.retry_schedule`: non-negative durations.
fn retry_schedule(ds: &[PbDuration]) -> Result<Vec<Duration>> {
    ds.iter()
        .enumerate()
        .map(|(i, d)| super::duration(&format!("endpoint.retry_schedule[{i}]"), d))
        .collect()
}

/// `endpoint.ordering`: a value of the `Ordering` enum (unspecified: not
/// chosen).
fn ordering(n: i32) -> Result<Option<Ordering>> {
    match pb::Ordering::try_from(n) {
        Ok(pb::Ordering::Unspecified) => Ok(None),
        Ok(pb::Ordering::Key) => Ok(Some(Ordering::Key)),
        Ok(pb::Ordering::None) => Ok(Some(Ordering::None)),
        Ok(pb::Ordering::Strict) => Ok(Some(Ordering::Strict)),
        Err(_) => Err(Error::invalid(
            "endpoint.ordering",
            format!("unknown enum value {n}"),
        )),
    }
}

fn ordering_to_pb(o: Option<Ordering>) -> pb::Ordering {
    match o {
        None => pb::Ordering::Unspecified,
        Some(Ordering::Key) => pb::Ordering::Key,
        Some(Ordering::None) => pb::Ordering::None,
        Some(Ordering::Strict) => pb::Ordering::Strict,
    }
}

/// The start position; `endpoint.start_time` must be a valid time (years
/// 0001 to 9999), kept exactly, also before 1970.
fn start(s: &pb::endpoint::Start) -> Result<Start> {
    Ok(match s {
        pb::endpoint::Start::StartEarliest(_) => Start::Earliest,
        pb::endpoint::Start::StartLatest(_) => Start::Latest,
        pb::endpoint::Start::StartOffset(o) => Start::Offset(Offset::new(*o)),
        pb::endpoint::Start::StartTime(t) => {
            let field = "endpoint.start_time";
            check_timestamp(&field, t)?;
            Start::Time(
                unix_time::from_unix(t.seconds, t.nanos)
                    .ok_or_else(|| Error::invalid(field, "out of range"))?,
            )
        }
    })
}

/// The domain's OAuth2 settings from the message (`client_secret_set` is
/// output only).
pub(super) fn oauth2_from_pb(o: pb::OAuth2) -> OAuth2 {
    let pb::OAuth2 {
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
}

fn oauth2_to_pb(o: &OAuth2) -> pb::OAuth2 {
    let OAuth2 {
        token_url,
        client_id,
        client_secret,
        scopes,
        audience,
    } = o;
    pb::OAuth2 {
        token_url: token_url.clone(),
        client_id: client_id.clone(),
        client_secret: client_secret.clone(),
        scopes: scopes.clone(),
        audience: audience.clone(),
        client_secret_set: !client_secret.is_empty(),
    }
}

fn time_to_pb(t: SystemTime) -> Timestamp {
    let (seconds, nanos) = unix_time::to_unix(t);
    Timestamp { seconds, nanos }
}

fn duration_to_pb(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
pub(crate) mod tests;
