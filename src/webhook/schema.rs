//! The keys each typed event type's body can have, learnt from the
//! renderers themselves: an event with every field set (one element in
//! every list) is built from the protobuf descriptors and rendered, and the
//! key paths of its body are collected. Nothing is listed by hand, so the
//! set cannot drift from what is sent.
//!
//! Endpoint validation uses it to refuse a filter or a field selection that
//! names a key no body of the endpoint's event types has (`stauts`), with
//! the closest key as a hint.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::OnceLock,
};

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Value};

use crate::{model::TYPED_EVENT_TYPES, pb};

/// Key paths of a body in filter syntax, every level listed: `lines`,
/// `lines[*]`, `lines[*].product`.
pub type KeyPaths = BTreeSet<String>;

/// The key paths of `event_type`'s bodies; `None` for a type without a
/// typed payload (custom events carry any JSON).
pub fn key_paths(event_type: &str) -> Option<&'static KeyPaths> {
    static ALL: OnceLock<BTreeMap<&'static str, KeyPaths>> = OnceLock::new();
    ALL.get_or_init(learn).get(event_type)
}

fn learn() -> BTreeMap<&'static str, KeyPaths> {
    samples()
        .iter()
        .map(|(&event_type, bodies)| {
            let mut paths = KeyPaths::new();
            collect(&bodies.full, "", &mut paths);
            (event_type, paths)
        })
        .collect()
}

/// Bodies of one typed event type rendered from generated events.
#[derive(Debug)]
pub struct SampleBodies {
    /// From an event with every field set (one element in every list):
    /// every key a body can have, each with the JSON type it has when set.
    pub full: serde_json::Value,
    /// From an event with only `occurred_at` set in the payload's place:
    /// the keys every body has, and the ones written as `null` when unset.
    pub empty: serde_json::Value,
}

/// Every typed event type's [`SampleBodies`], by event type.
pub fn samples() -> &'static BTreeMap<&'static str, SampleBodies> {
    static ALL: OnceLock<BTreeMap<&'static str, SampleBodies>> = OnceLock::new();
    ALL.get_or_init(render_samples)
}

fn render_samples() -> BTreeMap<&'static str, SampleBodies> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("the descriptor set decodes");
    let event = pool
        .get_message_by_name("stevedore.v1.Event")
        .expect("Event is in the descriptor set");
    let payload = event
        .oneofs()
        .find(|o| o.name() == "payload")
        .expect("Event has a payload oneof");
    let render = |field: &prost_reflect::FieldDescriptor, message: DynamicMessage| {
        let mut sample = DynamicMessage::new(event.clone());
        sample.set_field(field, Value::Message(message));
        let occurred_at = event
            .get_field_by_name("occurred_at")
            .expect("Event has occurred_at");
        sample.set_field(&occurred_at, one(&occurred_at.kind(), 0));
        let sample =
            pb::Event::decode(sample.encode_to_vec().as_slice()).expect("the sample decodes");
        let body = super::render_body(&sample).expect("the sample renders");
        serde_json::from_slice::<serde_json::Value>(&body).expect("the body is JSON")
    };
    // The typed payload fields come first, in TYPED_EVENT_TYPES order.
    payload
        .fields()
        .zip(TYPED_EVENT_TYPES)
        .map(|(field, &event_type)| {
            let Kind::Message(message) = field.kind() else {
                panic!("payload field {} is not a message", field.name())
            };
            let bodies = SampleBodies {
                full: render(&field, full(&message, 0)),
                empty: render(&field, DynamicMessage::new(message.clone())),
            };
            (event_type, bodies)
        })
        .collect()
}

/// A message with every field set: one element per list and map, nested
/// messages filled in the same way (to a bounded depth).
fn full(desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    if depth > 8 {
        return message;
    }
    for field in desc.fields() {
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let key = match one(&entry.map_entry_key_field().kind(), depth) {
                Value::String(s) => MapKey::String(s),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                Value::Bool(b) => MapKey::Bool(b),
                _ => continue,
            };
            let value = one(&entry.map_entry_value_field().kind(), depth);
            Value::Map([(key, value)].into_iter().collect())
        } else if field.is_list() {
            Value::List(vec![one(&field.kind(), depth)])
        } else {
            one(&field.kind(), depth)
        };
        message.set_field(&field, value);
    }
    message
}

/// One set (non-default) value of a kind.
fn one(kind: &Kind, depth: usize) -> Value {
    match kind {
        Kind::Double => Value::F64(1.5),
        Kind::Float => Value::F32(1.5),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(1),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(1),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(1),
        Kind::Bool => Value::Bool(true),
        Kind::String => Value::String("x".into()),
        Kind::Bytes => Value::Bytes(bytes::Bytes::from_static(b"x")),
        Kind::Enum(e) => Value::EnumNumber(e.values().nth(1).map_or(0, |v| v.number())),
        Kind::Message(m) => Value::Message(full(m, depth + 1)),
    }
}

fn collect(value: &serde_json::Value, path: &str, into: &mut KeyPaths) {
    if !path.is_empty() {
        into.insert(path.to_owned());
    }
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                collect(value, &path, into);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect(item, &format!("{path}[*]"), into);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_typed_event_type_has_its_keys() {
        for ty in TYPED_EVENT_TYPES {
            let paths = key_paths(ty).unwrap_or_else(|| panic!("{ty} has key paths"));
            assert!(
                paths.contains("timestamp") || *ty == "channel_inventory.updated",
                "{ty}"
            );
        }
        let pick = key_paths("pick.confirmed").unwrap();
        for key in [
            "status",
            "lines",
            "lines[*].quantityShort",
            "fulfillmentCenterId",
        ] {
            assert!(pick.contains(key), "pick.confirmed has {key}: {pick:?}");
        }
        let ret = key_paths("return.received").unwrap();
        for n in 1..=10 {
            let serial = format!("lines[*].serial{n:02}");
            assert!(
                ret.contains(&serial),
                "return.received has {serial}: {ret:?}"
            );
        }
        assert!(!pick.contains("stauts"));
        assert!(key_paths("dock.door_opened").is_none());
    }
}
