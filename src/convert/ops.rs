//! The broker's own events into log events: a `CustomEvent` of the event's
//! type whose `data` is a `google.protobuf.Struct` of its fields, with a
//! time-ordered id (ULID) and the publish time.

use std::time::SystemTime;

use prost_types::{value::Kind, Struct, Value};

use crate::{
    model::{
        ops::{OpsEvent, OpsValue},
        EventType, NewEvent,
    },
    pb,
};

/// The log event `e` is, published now.
pub fn new_event(e: OpsEvent) -> NewEvent {
    let OpsEvent {
        event_type,
        key,
        tenant,
        fields,
    } = e;
    let now = SystemTime::now();
    let data = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), value(v)))
            .collect(),
    };
    NewEvent {
        event: pb::Event {
            id: ulid::Ulid::from_datetime(now).to_string(),
            occurred_at: Some(super::timestamp(now)),
            ordering_key: key,
            attributes: Default::default(),
            tenant,
            payload: Some(pb::event::Payload::Custom(pb::CustomEvent {
                r#type: event_type.to_owned(),
                data: Some(data),
            })),
        },
        event_type: EventType::from_static(event_type),
        id_assigned: true,
    }
}

fn value(v: OpsValue) -> Value {
    Value {
        kind: Some(match v {
            OpsValue::Text(s) => Kind::StringValue(s),
            OpsValue::Number(n) => Kind::NumberValue(n),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_the_custom_events_data() {
        let e = new_event(OpsEvent {
            event_type: crate::model::BROKER_EVENT_TYPES[0],
            key: "ep_1".into(),
            tenant: "acme".into(),
            fields: vec![
                ("endpointId", OpsValue::Text("ep_1".into())),
                ("attempts", OpsValue::Number(3.0)),
            ],
        });
        assert_eq!(e.event_type.as_str(), "stevedore.endpoint.disabled");
        assert!(e.id_assigned && !e.event.id.is_empty());
        assert_eq!(
            (e.event.ordering_key.as_str(), e.event.tenant.as_str()),
            ("ep_1", "acme")
        );
        let Some(pb::event::Payload::Custom(c)) = e.event.payload else {
            panic!("not a custom event");
        };
        assert_eq!(c.r#type, "stevedore.endpoint.disabled");
        let data = c.data.unwrap().fields;
        assert_eq!(
            data["endpointId"].kind,
            Some(Kind::StringValue("ep_1".into()))
        );
        assert_eq!(data["attempts"].kind, Some(Kind::NumberValue(3.0)));
        assert_eq!(data.len(), 2);
    }
}
