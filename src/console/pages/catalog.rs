//! The event catalog: each event type with a sample.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    response::Response,
};

use super::pretty;
use crate::console::{
    render,
    session::Sess,
    templates::{Catalog, CatalogEntry, Frame},
    Console,
};

/// Samples: the golden webhook bodies where there is one (exactly what a
/// receiver gets), else the seed sample as published (grpcurl JSON).
const SAMPLES: &[(&str, &str, &str)] = &[
    (
        "shipment.closed",
        "webhook body (tests/golden/shipment_closed.json)",
        include_str!("../../../tests/golden/shipment_closed.json"),
    ),
    (
        "pick.confirmed",
        "webhook body (tests/golden/pick_confirmed.json)",
        include_str!("../../../tests/golden/pick_confirmed.json"),
    ),
    (
        "inventory.updated",
        "published event (examples/inventory_updated.json)",
        include_str!("../../../examples/inventory_updated.json"),
    ),
    (
        "order.status",
        "published event (examples/order_status.json)",
        include_str!("../../../examples/order_status.json"),
    ),
    (
        "return.received",
        "published event (examples/return_received.json)",
        include_str!("../../../examples/return_received.json"),
    ),
    (
        "channel_inventory.updated",
        "webhook body (tests/golden/channel_inventory.json)",
        include_str!("../../../tests/golden/channel_inventory.json"),
    ),
];

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
    State(_console): State<Arc<Console>>,
    sess: Sess,
    Query(tried): Query<Try>,
) -> Response {
    let entries = crate::model::TYPED_EVENT_TYPES
        .iter()
        .map(|t| {
            let found = SAMPLES.iter().find(|(name, _, _)| name == t);
            let (source, sample) = found.map_or(("no sample", String::new()), |(_, s, body)| {
                (*s, pretty(body.as_bytes()))
            });
            let playground = source.starts_with("webhook body");
            let mut entry = CatalogEntry {
                event_type: t,
                source,
                sample,
                playground,
                filter: String::new(),
                fields: String::new(),
                outcome: String::new(),
                result: String::new(),
            };
            if let (true, Some((_, _, body))) = (playground && tried.event_type == *t, found) {
                (entry.outcome, entry.result) = run(body, &tried.filter, &tried.fields);
                entry.filter = tried.filter.clone();
                entry.fields = tried.fields.clone();
            }
            entry
        })
        .chain(
            crate::model::BROKER_EVENT_TYPES
                .iter()
                .map(|t| CatalogEntry {
                    event_type: t,
                    source: "published by the broker itself (operational event)",
                    sample: String::new(),
                    playground: false,
                    filter: String::new(),
                    fields: String::new(),
                    outcome: String::new(),
                    result: String::new(),
                }),
        )
        .collect();
    render(Catalog {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        entries,
    })
}
