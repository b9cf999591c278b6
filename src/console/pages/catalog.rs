//! The event catalog: each event type (the Admin service's ListEventTypes)
//! with its description, JSON Schema and sample, and a filter/field-selection
//! playground on the sample.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    response::Response,
};

use super::{pretty, status_text};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{Catalog, CatalogEntry, Frame},
        Console,
    },
    model::Offset,
    pb::{self, admin_server::Admin},
};

/// The event types the form's picker offers.
pub fn known_types() -> Vec<&'static str> {
    crate::model::TYPED_EVENT_TYPES
        .iter()
        .chain(crate::model::BROKER_EVENT_TYPES)
        .copied()
        .collect()
}

/// The playground's query: one event type's filter and fields.
#[derive(serde::Deserialize, Default)]
pub struct Try {
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    fields: String,
    /// A real event's offset to run on instead of the sample (empty: the
    /// sample). Looked up as the caller may see it: another tenant's event
    /// is "not found".
    #[serde(default)]
    offset: String,
}

/// The webhook body of the event at `offset` (as typed) of `event_type`,
/// if the caller sees it.
fn real_body(
    console: &Console,
    sess: &Sess,
    event_type: &str,
    offset: &str,
) -> Result<String, String> {
    let offset: u64 = offset
        .trim()
        .parse()
        .map_err(|_| "offset: not a number".to_owned())?;
    let scope = crate::tenant::Scope::of_caller(sess.caller.as_ref());
    let event = scope
        .local_event(&console.store, Offset::new(offset))
        .map_err(|e| format!("offset: {e}"))?;
    if event.event_type.as_str() != event_type {
        return Err(format!(
            "offset: the event at {offset} is a {}, not a {event_type}",
            event.event_type
        ));
    }
    let body = crate::webhook::render_body(&event.event).map_err(|e| format!("offset: {e}"))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Runs a filter and a field selection on a webhook body, as an endpoint
/// would: (outcome in words, the body the endpoint would get).
fn run(body: &str, filter: &str, fields: &str) -> (String, String) {
    let Ok(body) = serde_json::from_str::<serde_json::Value>(body) else {
        return ("the sample is not JSON".into(), String::new());
    };
    let matches = if filter.trim().is_empty() {
        true
    } else {
        match crate::filter::Filter::parse(filter) {
            Ok(f) => f.matches(&body),
            Err(e) => return (format!("filter: {e}"), String::new()),
        }
    };
    let fields: Vec<String> = fields
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let shaped = if fields.is_empty() {
        body
    } else {
        match crate::filter::Projection::parse(&fields) {
            Ok(p) => p.apply(&body),
            Err((i, e)) => return (format!("fields[{i}]: {e}"), String::new()),
        }
    };
    if !matches {
        return (
            "the filter does not select this event: nothing is sent".into(),
            String::new(),
        );
    }
    (
        "the filter selects this event; the endpoint gets:".into(),
        serde_json::to_string_pretty(&shaped).unwrap_or_default(),
    )
}

/// GET /catalog (`?type=&filter=&fields=`: the playground)
pub async fn page(
    State(console): State<Arc<Console>>,
    sess: Sess,
    Query(tried): Query<Try>,
) -> Response {
    let (types, error) = match console
        .admin()
        .list_event_types(sess.request(pb::ListEventTypesRequest {}))
        .await
    {
        Ok(r) => (r.into_inner().event_types, String::new()),
        Err(s) => (Vec::new(), status_text(&s)),
    };
    let entries = types
        .into_iter()
        .map(|t| {
            // Broker events have no fixed body (their sample is `{}`).
            let playground = !t.broker_event;
            let mut entry = CatalogEntry {
                source: if t.broker_event {
                    "published by the broker itself (operational event)"
                } else {
                    "webhook body, rendered from the seed sample"
                },
                schema: pretty(t.json_schema.as_bytes()),
                sample: if playground {
                    pretty(t.sample.as_bytes())
                } else {
                    String::new()
                },
                playground,
                filter: String::new(),
                fields: String::new(),
                offset: String::new(),
                outcome: String::new(),
                result: String::new(),
                description: t.description,
                event_type: t.name,
            };
            if playground && tried.event_type == entry.event_type {
                let body = if tried.offset.trim().is_empty() {
                    Ok(t.sample.clone())
                } else {
                    real_body(&console, &sess, &entry.event_type, &tried.offset)
                };
                (entry.outcome, entry.result) = match body {
                    Ok(body) => run(&body, &tried.filter, &tried.fields),
                    Err(e) => (e, String::new()),
                };
                entry.filter = tried.filter.clone();
                entry.fields = tried.fields.clone();
                entry.offset = tried.offset.clone();
            }
            entry
        })
        .collect();
    render(Catalog {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        entries,
        error,
    })
}
