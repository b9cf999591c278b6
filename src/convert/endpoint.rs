//! An endpoint's configuration between the public `Endpoint` message and
//! its stored form (`delivery::endpoint::stored`). Every field is named in
//! both directions, so a field added to the message does not compile until
//! it is given a place on disk (a new number there, never a reused one).

use crate::{
    delivery::endpoint::stored::{
        StoredDuration, StoredEndpoint, StoredOAuth2, StoredStart, StoredTime,
    },
    pb,
};

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
