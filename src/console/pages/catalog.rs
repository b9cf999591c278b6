//! The event catalog: each event type with a sample.

use std::sync::Arc;

use axum::{extract::State, response::Response};

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

/// GET /catalog
pub async fn page(State(_console): State<Arc<Console>>, sess: Sess) -> Response {
    let entries = crate::model::TYPED_EVENT_TYPES
        .iter()
        .map(|t| {
            let (source, sample) = SAMPLES
                .iter()
                .find(|(name, _, _)| name == t)
                .map_or(("no sample", String::new()), |(_, s, body)| {
                    (*s, pretty(body.as_bytes()))
                });
            CatalogEntry {
                event_type: t,
                source,
                sample,
            }
        })
        .chain(
            crate::model::BROKER_EVENT_TYPES
                .iter()
                .map(|t| CatalogEntry {
                    event_type: t,
                    source: "published by the broker itself (operational event)",
                    sample: String::new(),
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
