//! The events the publishers send, `cd{task}-{seq}`, and the check that a
//! request carries the event its `webhook-id` names.

use std::collections::BTreeMap;

use stevedore::pb::{self, event::Payload};

use super::CUSTOM_TYPE;
use crate::support::{number, string, Recorded};

/// Event `cd{task}-{seq}`: even `seq` a custom event whose body names its
/// id, odd `seq` a pick confirmation (ordering key `SO-{task}-{seq % 8}`,
/// so keys are shared) whose `waveId` is its id.
pub(super) fn delivery_event(task: usize, seq: u64) -> pb::Event {
    let id = format!("cd{task}-{seq}");
    let payload = if seq.is_multiple_of(2) {
        let mut fields = BTreeMap::new();
        fields.insert("eventId".to_owned(), string(&id));
        fields.insert("task".to_owned(), number(task as f64));
        fields.insert("seq".to_owned(), number(seq as f64));
        Payload::Custom(pb::CustomEvent {
            r#type: CUSTOM_TYPE.into(),
            data: Some(prost_types::Struct { fields }),
        })
    } else {
        Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "crash-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            sales_order_id: format!("SO-{task}-{}", seq % 8),
            wave_id: id.clone(),
            status: pb::PickStatus::Complete as i32,
            ..Default::default()
        })
    };
    pb::Event {
        id,
        payload: Some(payload),
        ..Default::default()
    }
}

/// Checks that a request's `x-jasci-event` and body belong to event `id`.
pub(super) fn check_content(id: &str, r: &Recorded) -> Result<(), String> {
    let (task, seq) = id
        .strip_prefix("cd")
        .and_then(|s| s.split_once('-'))
        .and_then(|(t, s)| Some((t.parse::<usize>().ok()?, s.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("webhook-id {id:?} is not one of ours"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("body of {id:?} is not JSON ({e})"))?;
    let (event_type, ok) = if seq % 2 == 0 {
        (
            CUSTOM_TYPE,
            body["eventId"] == id && body["task"] == task && body["seq"] == seq,
        )
    } else {
        (
            "pick.confirmed",
            body["waveId"] == id && body["salesOrderId"] == format!("SO-{task}-{}", seq % 8),
        )
    };
    if r.header("x-jasci-event") != Some(event_type) {
        return Err(format!(
            "{id:?}: x-jasci-event {:?}, expected {event_type:?}",
            r.header("x-jasci-event")
        ));
    }
    if !ok {
        return Err(format!(
            "{id:?}: the body is another event's: {}",
            r.body_text()
        ));
    }
    Ok(())
}
