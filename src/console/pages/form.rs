//! Create and edit an endpoint. Header values never reach the browser:
//! the form shows header names only, and an update sends only the fields
//! that changed (`update_mask`); header edits go by name
//! (`set_headers`/`remove_headers`), so kept headers keep their values.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};

use super::{catalog::known_types, dur, status_text, FormData};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{EndpointForm, FormValues, Frame, Secret},
        Console,
    },
    pb::{self, admin_server::Admin, endpoint::Start, Ordering},
};

/// The form's name of an ordering.
pub fn ordering_name(o: i32) -> &'static str {
    match Ordering::try_from(o) {
        Ok(Ordering::None) => "none",
        Ok(Ordering::Strict) => "strict",
        _ => "key",
    }
}

/// An RFC 3339 time as a protobuf timestamp, or INVALID_ARGUMENT naming
/// `field`.
pub fn parse_time(field: &str, s: &str) -> Result<prost_types::Timestamp, tonic::Status> {
    s.parse::<prost_types::Timestamp>().map_err(|_| {
        tonic::Status::invalid_argument(format!(
            "{field}: not an offset or an RFC 3339 time (e.g. 2026-02-04T13:05:00Z)"
        ))
    })
}

fn bad(field: &str, why: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::invalid_argument(format!("{field}: {why}"))
}

fn duration(field: &str, s: &str) -> Result<Option<prost_types::Duration>, tonic::Status> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let d = crate::config::parse_duration(s).map_err(|e| bad(field, e))?;
    prost_types::Duration::try_from(d)
        .map(Some)
        .map_err(|_| bad(field, "too long"))
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn number<T: std::str::FromStr + Default>(field: &str, s: &str) -> Result<T, tonic::Status> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(T::default());
    }
    s.parse().map_err(|_| bad(field, "not a number"))
}

/// The endpoint the form describes, except its headers.
fn endpoint_from(form: &FormData) -> Result<pb::Endpoint, tonic::Status> {
    let mut event_types: Vec<String> = form
        .all("event_types")
        .iter()
        .map(|s| s.to_string())
        .collect();
    event_types.extend(list(form.get("other_types")));
    let mut attribute_filters = HashMap::new();
    for (i, line) in form.get("attribute_filters").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            bad(
                "attribute_filters",
                format!("line {}: write key=value", i + 1),
            )
        })?;
        attribute_filters.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let retry_schedule = list(form.get("retry_schedule"))
        .iter()
        .enumerate()
        .map(|(i, d)| duration(&format!("retry_schedule[{i}]"), d).map(Option::unwrap_or_default))
        .collect::<Result<_, _>>()?;
    let ordering = match form.get("ordering") {
        "none" => Ordering::None,
        "strict" => Ordering::Strict,
        _ => Ordering::Key,
    };
    Ok(pb::Endpoint {
        url: form.get("url").trim().to_owned(),
        description: form.get("description").to_owned(),
        event_types,
        attribute_filters,
        filter: form.get("filter").to_owned(),
        fields: list(form.get("fields")),
        timeout: duration("timeout", form.get("timeout"))?,
        retry_schedule,
        max_in_flight: number("max_in_flight", form.get("max_in_flight"))?,
        ordering: ordering as i32,
        coalesce: !form.get("coalesce").is_empty(),
        rate_limit: number("rate_limit", form.get("rate_limit"))?,
        rate_burst: number("rate_burst", form.get("rate_burst"))?,
        ..Default::default()
    })
}

/// The headers the form sets: `None` when it changes none of them.
/// `existing` are the endpoint's header names.
fn headers_from(
    form: &FormData,
    existing: &[String],
) -> Result<Option<HashMap<String, String>>, tonic::Status> {
    let names = form.all("header_name");
    let values = form.all("header_value");
    let removed = form.all("header_remove");
    let rows: Vec<(&str, &str)> = names
        .iter()
        .zip(values.iter().chain(std::iter::repeat(&"")))
        .map(|(n, v)| (n.trim(), *v))
        .filter(|(n, _)| !n.is_empty())
        .collect();
    let changed = !removed.is_empty() || rows.iter().any(|(_, v)| !v.is_empty());
    if !changed {
        return Ok(None);
    }
    let mut out = HashMap::new();
    for (name, value) in rows {
        if removed.contains(&name) {
            continue;
        }
        if value.is_empty() {
            let why = if existing.iter().any(|e| e == name) {
                "re-enter its value: headers are replaced together, and values are never shown"
            } else {
                "needs a value"
            };
            return Err(bad(&format!("headers[{name:?}]"), why));
        }
        out.insert(name.to_owned(), value.to_owned());
    }
    Ok(Some(out))
}

/// An edit's header changes by name: the headers to set (a new header, or
/// a new value typed for an existing one) and the existing ones to remove.
/// A blank value box keeps the header as it is. `existing` are the
/// endpoint's header names.
type HeaderEdits = (HashMap<String, String>, Vec<String>);

fn header_edits(form: &FormData, existing: &[String]) -> Result<HeaderEdits, tonic::Status> {
    let names = form.all("header_name");
    let values = form.all("header_value");
    let mut remove: Vec<String> = Vec::new();
    for name in form.all("header_remove") {
        let name = name.trim();
        if !existing.iter().any(|e| e == name) {
            return Err(bad(
                &format!("headers[{name:?}]"),
                "no such header to remove",
            ));
        }
        if !remove.iter().any(|r| r == name) {
            remove.push(name.to_owned());
        }
    }
    let mut set = HashMap::new();
    for (name, value) in names
        .iter()
        .zip(values.iter().chain(std::iter::repeat(&"")))
        .map(|(n, v)| (n.trim(), *v))
        .filter(|(n, _)| !n.is_empty())
    {
        if remove.iter().any(|r| r == name) {
            continue;
        }
        let known = existing.iter().any(|e| e == name);
        if value.is_empty() {
            if known {
                continue; // kept as it is
            }
            return Err(bad(&format!("headers[{name:?}]"), "needs a value"));
        }
        set.insert(name.to_owned(), value.to_owned());
    }
    Ok((set, remove))
}

fn values_of(e: &pb::Endpoint) -> FormValues {
    let mut attribute_filters: Vec<String> = e
        .attribute_filters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    attribute_filters.sort();
    let mut header_names: Vec<String> = e.headers.keys().cloned().collect();
    header_names.sort();
    FormValues {
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: e.event_types.clone(),
        attribute_filters: attribute_filters.join("\n"),
        filter: e.filter.clone(),
        fields: e.fields.join(", "),
        header_names,
        timeout: dur(e.timeout.as_ref()),
        retry_schedule: e
            .retry_schedule
            .iter()
            .map(|d| dur(Some(d)))
            .collect::<Vec<_>>()
            .join(", "),
        max_in_flight: if e.max_in_flight == 0 {
            String::new()
        } else {
            e.max_in_flight.to_string()
        },
        ordering: ordering_name(e.ordering).into(),
        coalesce: e.coalesce,
        rate_limit: if e.rate_limit == 0.0 {
            String::new()
        } else {
            e.rate_limit.to_string()
        },
        rate_burst: if e.rate_burst == 0 {
            String::new()
        } else {
            e.rate_burst.to_string()
        },
        start: "latest".into(),
        start_value: String::new(),
    }
}

/// The submitted values, to show the form again with an error.
fn values_back(form: &FormData, header_names: Vec<String>) -> FormValues {
    FormValues {
        url: form.get("url").into(),
        description: form.get("description").into(),
        event_types: form
            .all("event_types")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        attribute_filters: form.get("attribute_filters").into(),
        filter: form.get("filter").into(),
        fields: form.get("fields").into(),
        header_names,
        timeout: form.get("timeout").into(),
        retry_schedule: form.get("retry_schedule").into(),
        max_in_flight: form.get("max_in_flight").into(),
        ordering: form.get("ordering").into(),
        coalesce: !form.get("coalesce").is_empty(),
        rate_limit: form.get("rate_limit").into(),
        rate_burst: form.get("rate_burst").into(),
        start: form.get("start").into(),
        start_value: form.get("start_value").into(),
    }
}

fn show(sess: &Sess, id: &str, v: FormValues, error: String) -> Response {
    render(EndpointForm {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        id: id.into(),
        v,
        known_types: known_types(),
        error,
    })
}

fn failed(sess: &Sess, id: &str, v: FormValues, s: &tonic::Status) -> Response {
    let mut r = show(sess, id, v, status_text(s));
    *r.status_mut() = super::http_status(s);
    r
}

/// GET /endpoints/new
pub async fn new_page(sess: Sess) -> Response {
    let v = FormValues {
        start: "latest".into(),
        ..Default::default()
    };
    show(&sess, "", v, String::new())
}

/// POST /endpoints/new: creates, then shows the secret once.
pub async fn create(
    State(console): State<Arc<Console>>,
    sess: Sess,
    body: axum::body::Bytes,
) -> Response {
    let form = FormData::parse(&body);
    if let Some(r) = sess.refused(&form) {
        return r;
    }
    let back = || values_back(&form, Vec::new());
    let built = endpoint_from(&form).and_then(|mut e| {
        e.headers = headers_from(&form, &[])?.unwrap_or_default();
        let value = form.get("start_value").trim();
        e.start = Some(match form.get("start") {
            "earliest" => Start::StartEarliest(true),
            "offset" => Start::StartOffset(
                value
                    .parse()
                    .map_err(|_| bad("start_offset", "not a number"))?,
            ),
            "time" => Start::StartTime(parse_time("start_time", value)?),
            _ => Start::StartLatest(true),
        });
        Ok(e)
    });
    let endpoint = match built {
        Ok(e) => e,
        Err(s) => return failed(&sess, "", back(), &s),
    };
    let r = console
        .admin()
        .create_endpoint(sess.request(pb::CreateEndpointRequest {
            endpoint: Some(endpoint),
        }))
        .await;
    match r {
        Ok(r) => {
            let r = r.into_inner();
            let id = r.endpoint.map(|e| e.id).unwrap_or_default();
            tracing::info!(token = %sess.who(), endpoint = %id, "console: created the endpoint");
            render(Secret {
                frame: Frame {
                    who: sess.who(),
                    csrf: sess.csrf.clone(),
                },
                id,
                secret: r.secret,
                what: "Endpoint created".into(),
            })
        }
        Err(s) => failed(&sess, "", back(), &s),
    }
}

async fn current(console: &Console, sess: &Sess, id: &str) -> Result<pb::Endpoint, tonic::Status> {
    Ok(console
        .admin()
        .get_endpoint(sess.request(pb::GetEndpointRequest { id: id.into() }))
        .await?
        .into_inner()
        .endpoint
        .unwrap_or_default())
}

/// GET /endpoints/{id}/edit
pub async fn edit_page(
    State(console): State<Arc<Console>>,
    sess: Sess,
    Path(id): Path<String>,
) -> Response {
    match current(&console, &sess, &id).await {
        Ok(e) => show(&sess, &id, values_of(&e), String::new()),
        Err(s) => (super::http_status(&s), status_text(&s)).into_response(),
    }
}

/// The `update_mask` paths where `new` differs from `old` (headers are
/// decided apart).
pub fn changed_fields(old: &pb::Endpoint, new: &pb::Endpoint) -> Vec<String> {
    let mut paths = Vec::new();
    let mut add = |changed: bool, path: &str| {
        if changed {
            paths.push(path.to_owned());
        }
    };
    add(old.url != new.url, "url");
    add(old.description != new.description, "description");
    add(old.event_types != new.event_types, "event_types");
    add(
        old.attribute_filters != new.attribute_filters,
        "attribute_filters",
    );
    add(old.filter != new.filter, "filter");
    add(old.fields != new.fields, "fields");
    // An empty box keeps what is set (the form shows the current value).
    add(
        new.timeout.is_some() && old.timeout != new.timeout,
        "timeout",
    );
    add(
        !new.retry_schedule.is_empty() && old.retry_schedule != new.retry_schedule,
        "retry_schedule",
    );
    add(
        new.max_in_flight != 0 && old.max_in_flight != new.max_in_flight,
        "max_in_flight",
    );
    add(
        ordering_name(old.ordering) != ordering_name(new.ordering),
        "ordering",
    );
    add(old.coalesce != new.coalesce, "coalesce");
    add(old.rate_limit != new.rate_limit, "rate_limit");
    add(old.rate_burst != new.rate_burst, "rate_burst");
    paths
}

/// POST /endpoints/{id}/edit: sends only what changed.
pub async fn update(
    State(console): State<Arc<Console>>,
    sess: Sess,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let form = FormData::parse(&body);
    if let Some(r) = sess.refused(&form) {
        return r;
    }
    let old = match current(&console, &sess, &id).await {
        Ok(e) => e,
        Err(s) => return (super::http_status(&s), status_text(&s)).into_response(),
    };
    let mut names: Vec<String> = old.headers.keys().cloned().collect();
    names.sort();
    let back = || values_back(&form, names.clone());
    let built = endpoint_from(&form).and_then(|e| Ok((e, header_edits(&form, &names)?)));
    let (mut new, (set_headers, remove_headers)) = match built {
        Ok(x) => x,
        Err(s) => return failed(&sess, &id, back(), &s),
    };
    let paths = changed_fields(&old, &new);
    if paths.is_empty() && set_headers.is_empty() && remove_headers.is_empty() {
        return Redirect::to(&format!("/endpoints/{id}")).into_response();
    }
    new.id = id.clone();
    let r = console
        .admin()
        .update_endpoint(sess.request(pb::UpdateEndpointRequest {
            endpoint: Some(new),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.clone(),
            }),
            set_headers: set_headers.clone(),
            remove_headers: remove_headers.clone(),
        }))
        .await;
    match r {
        Ok(_) => {
            // Header names only: values are secrets.
            let mut set: Vec<&str> = set_headers.keys().map(String::as_str).collect();
            set.sort_unstable();
            tracing::info!(
                token = %sess.who(),
                endpoint = %id,
                fields = %paths.join(","),
                set_headers = %set.join(","),
                remove_headers = %remove_headers.join(","),
                "console: updated the endpoint"
            );
            Redirect::to(&format!("/endpoints/{id}")).into_response()
        }
        Err(s) => failed(&sess, &id, back(), &s),
    }
}
