//! The events the publishers send: `p{task}-{seq}`, whose payload is a
//! function of its id, so any stored event can be checked against it.

use stevedore::pb::{self, event::Payload};

use crate::support::number;

/// The payload of event `p{task}-{seq}`; a function of the id, so any
/// stored event can be checked against it.
pub(super) fn payload(task: usize, seq: u64) -> Payload {
    if seq.is_multiple_of(2) {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("task".to_owned(), number(task as f64));
        fields.insert("seq".to_owned(), number(seq as f64));
        Payload::Custom(pb::CustomEvent {
            r#type: "crash.test".into(),
            data: Some(prost_types::Struct { fields }),
        })
    } else {
        Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "crash-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            sales_order_id: format!("SO-{task}-{seq}"),
            ..Default::default()
        })
    }
}

/// Event `p{task}-{seq}`.
pub(super) fn publish_event(task: usize, seq: u64) -> pb::Event {
    pb::Event {
        id: format!("p{task}-{seq}"),
        payload: Some(payload(task, seq)),
        ..Default::default()
    }
}

/// The payload an id of ours must carry, or None for a foreign id.
pub(super) fn expected_payload(id: &str) -> Option<Payload> {
    let (task, seq) = id.strip_prefix('p')?.split_once('-')?;
    Some(payload(task.parse().ok()?, seq.parse().ok()?))
}
