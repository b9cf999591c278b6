//! The events of the load, `rl{task}-{seq}`: custom, pick and inventory
//! events in turn, and the check that a request carries the event its
//! `webhook-id` names.

use std::collections::BTreeMap;

use stevedore::pb::{self, event::Payload};

use super::CUSTOM_TYPE;
use crate::support::{number, string, Recorded};

/// Event `rl{task}-{seq}`, by `seq % 3`: a custom event whose data names its
/// id, a pick confirmation whose `waveId` is its id (ordering key shared by
/// every eighth), or an inventory update whose `referenceId` is its id. The
/// attribute `lane` is `even` or `odd` by `seq`.
pub(super) fn load_event(task: usize, seq: u64) -> pb::Event {
    let id = format!("rl{task}-{seq}");
    let payload = match seq % 3 {
        0 => {
            let mut fields = BTreeMap::new();
            fields.insert("eventId".to_owned(), string(&id));
            fields.insert("seq".to_owned(), number(seq as f64));
            Payload::Custom(pb::CustomEvent {
                r#type: CUSTOM_TYPE.into(),
                data: Some(prost_types::Struct { fields }),
            })
        }
        1 => Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "rel-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            sales_order_id: format!("SO-{task}-{}", seq % 8),
            wave_id: id.clone(),
            status: pb::PickStatus::Complete as i32,
            ..Default::default()
        }),
        _ => Payload::InventoryUpdated(pb::InventoryUpdated {
            tenant_id: "rel-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            product: format!("SKU-{task}-{}", seq % 5),
            location: "A-01".into(),
            reference_id: id.clone(),
            quantity_available: Some(seq as f64),
            reason: pb::InventoryReason::Adjustment as i32,
            ..Default::default()
        }),
    };
    pb::Event {
        attributes: [("lane".to_owned(), lane(seq).to_owned())].into(),
        id,
        payload: Some(payload),
        ..Default::default()
    }
}

pub(super) fn event_type(seq: u64) -> &'static str {
    match seq % 3 {
        0 => CUSTOM_TYPE,
        1 => "pick.confirmed",
        _ => "inventory.updated",
    }
}

pub(super) fn lane(seq: u64) -> &'static str {
    if seq.is_multiple_of(2) {
        "even"
    } else {
        "odd"
    }
}

/// `(task, seq)` of one of our ids.
pub(super) fn parse_id(id: &str) -> Option<(usize, u64)> {
    let (task, seq) = id.strip_prefix("rl")?.split_once('-')?;
    Some((task.parse().ok()?, seq.parse().ok()?))
}

/// Checks that a request's `x-jasci-event` and body are event `id`'s.
pub(super) fn check_content(id: &str, seq: u64, r: &Recorded) -> Result<(), String> {
    let body: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("body of {id:?} is not JSON ({e})"))?;
    let field = match seq % 3 {
        0 => "eventId",
        1 => "waveId",
        _ => "referenceId",
    };
    if r.header("x-jasci-event") != Some(event_type(seq)) {
        return Err(format!(
            "{id:?}: x-jasci-event {:?}, expected {:?}",
            r.header("x-jasci-event"),
            event_type(seq)
        ));
    }
    if body[field] != id {
        return Err(format!(
            "{id:?}: the body is another event's: {}",
            r.body_text()
        ));
    }
    Ok(())
}
