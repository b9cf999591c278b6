//! Event and protobuf value builders.

use prost_types::Duration as PbDuration;
use stevedore::pb::{self, event::Payload};

/// A pick confirmation with the given id (empty: broker-assigned).
pub fn pick(id: &str, order: &str) -> pb::Event {
    pb::Event {
        id: id.into(),
        payload: Some(Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "TENANT001".into(),
            sales_order_id: order.into(),
            status: pb::PickStatus::Complete as i32,
            total_qty: Some(5.0),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An inventory update with the given id.
pub fn inventory(id: &str, product: &str, available: f64) -> pb::Event {
    pb::Event {
        id: id.into(),
        payload: Some(Payload::InventoryUpdated(pb::InventoryUpdated {
            tenant_id: "TENANT001".into(),
            fulfillment_center_id: "FC1".into(),
            product: product.into(),
            quantity_available: Some(available),
            reason: pb::InventoryReason::Adjustment as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// `n` milliseconds as a protobuf `Duration`.
pub fn ms(n: u64) -> PbDuration {
    PbDuration {
        seconds: (n / 1000) as i64,
        nanos: ((n % 1000) * 1_000_000) as i32,
    }
}

/// A `google.protobuf.Value` string.
pub fn string(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
    }
}

/// A `google.protobuf.Value` number.
pub fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}
