//! The event-type catalog (Admin `ListEventTypes`): each event type an
//! endpoint can receive, with a description, the JSON Schema of its body
//! and a sample body.
//!
//! Schemas are generated, never written by hand: from the bodies the
//! renderers produce for generated events ([`super::schema::samples`]):
//! the keys and JSON types come from an event with every field set, the
//! keys every body has and the ones written as `null` from an empty one.
//! Objects allow no other keys, so a renamed or undocumented key fails
//! validation. Samples are the repository's example events
//! (`examples/*.json`, the seed samples), rendered by the same code.

use std::{sync::OnceLock, time::SystemTime};

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{json, Map, Value};

use super::{render_body, schema::samples};
use crate::{
    convert::{validate_event, EventLimits},
    model::{BROKER_EVENT_TYPES, TYPED_EVENT_TYPES},
    pb,
};

/// One catalog entry.
#[derive(Debug, Clone)]
pub struct EventTypeInfo {
    /// The `X-Jasci-Event` name.
    pub name: &'static str,
    /// What it announces.
    pub description: &'static str,
    /// The body's JSON Schema.
    pub schema: Value,
    /// A sample body.
    pub sample: Value,
    /// Published by the broker itself.
    pub broker_event: bool,
}

/// Per typed event type: its description and its example publish request.
const TYPED: [(&str, &str, &str); 6] = [
    (
        "shipment.closed",
        "A shipment was closed out: header, ship-to and a line per carton with serial numbers.",
        include_str!("../../examples/shipment_closed.json"),
    ),
    (
        "pick.confirmed",
        "Picking of a sales order was confirmed, with its lines and short quantities.",
        include_str!("../../examples/pick_confirmed.json"),
    ),
    (
        "inventory.updated",
        "A product's quantities at a location changed (receiving, adjustment, cycle count, shipment).",
        include_str!("../../examples/inventory_updated.json"),
    ),
    (
        "order.status",
        "A sales order moved from one status to another.",
        include_str!("../../examples/order_status.json"),
    ),
    (
        "return.received",
        "A return (RMA) was received, with its lines and their condition.",
        include_str!("../../examples/return_received.json"),
    ),
    (
        "channel_inventory.updated",
        "A sales channel variant's available inventory changed (custom-channel inventory webhook).",
        include_str!("../../examples/channel_inventory.json"),
    ),
];

/// Descriptions of the broker's own events, in BROKER_EVENT_TYPES order.
/// (Sized by the list, so a new broker event cannot go without one.)
const BROKER: [&str; BROKER_EVENT_TYPES.len()] = [
    "The broker disabled an endpoint (410 Gone, failing too long, or a setting that no longer fits).",
    "A failing endpoint delivered again.",
    "A delivery was dead-lettered: every attempt of its schedule failed.",
    "A delivery failed `failing_event_after` times in a row.",
    "An administrator changed something (an audit record: token, tenant, action, target).",
];

/// Every event type, typed ones first, then the broker's own.
pub fn catalog() -> &'static [EventTypeInfo] {
    static ALL: OnceLock<Vec<EventTypeInfo>> = OnceLock::new();
    ALL.get_or_init(build)
}

fn build() -> Vec<EventTypeInfo> {
    debug_assert_eq!(TYPED.map(|t| t.0), TYPED_EVENT_TYPES);
    let bodies = samples();
    let mut out: Vec<EventTypeInfo> = TYPED
        .iter()
        .map(|&(name, description, example)| {
            let b = &bodies[name];
            let mut schema = schema_of(&b.full, Some(&b.empty));
            if let Value::Object(m) = &mut schema {
                m.insert(
                    "$schema".into(),
                    json!("https://json-schema.org/draft/2020-12/schema"),
                );
                m.insert("title".into(), json!(name));
            }
            EventTypeInfo {
                name,
                description,
                schema,
                sample: render_example(example),
                broker_event: false,
            }
        })
        .collect();
    for (&name, &description) in BROKER_EVENT_TYPES.iter().zip(BROKER.iter()) {
        out.push(EventTypeInfo {
            name,
            description,
            // Their bodies are custom-event data: an object whose fields
            // README "Operational events" lists.
            schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": name,
                "type": "object",
            }),
            sample: json!({}),
            broker_event: true,
        });
    }
    out
}

/// The body of an example publish request (grpcurl JSON), validated as
/// `Publish` would.
fn render_example(json: &str) -> Value {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let desc = pool
        .get_message_by_name("stevedore.v1.PublishRequest")
        .expect("PublishRequest is in the descriptor set");
    let mut de = serde_json::Deserializer::from_str(json);
    // The examples are checked by the golden tests: these cannot fail.
    let message = DynamicMessage::deserialize(desc, &mut de).expect("example is valid JSON");
    let request =
        pb::PublishRequest::decode(message.encode_to_vec().as_slice()).expect("example re-decodes");
    let event = request.event.expect("the example has an event");
    let limits = EventLimits {
        max_event_bytes: 1 << 20,
    };
    let event = validate_event(event, &"event", SystemTime::now(), limits)
        .expect("example is a valid event")
        .event;
    serde_json::from_slice(&render_body(&event).expect("example renders")).expect("body is JSON")
}

/// The schema of values shaped like `full` (every key set); `empty` is the
/// same place in a body with nothing set, when known: its keys are
/// required, its `null`s make the type nullable.
fn schema_of(full: &Value, empty: Option<&Value>) -> Value {
    let nullable = matches!(empty, Some(Value::Null));
    let mut schema = match full {
        Value::Object(fields) => {
            let empty_fields = match empty {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            };
            let properties: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| {
                    let e = empty_fields.and_then(|m| m.get(k));
                    (k.clone(), schema_of(v, e))
                })
                .collect();
            let required: Vec<&String> = empty_fields
                .map(|m| m.keys().filter(|k| fields.contains_key(*k)).collect())
                .unwrap_or_default();
            json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            })
        }
        Value::Array(items) => match items.first() {
            Some(item) => json!({"type": "array", "items": schema_of(item, None)}),
            None => json!({"type": "array"}),
        },
        Value::String(_) => json!({"type": "string"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Null => json!({}),
    };
    // Below the top level the empty body says nothing about nested
    // objects' optional parts (they are often absent as a whole): any leaf
    // may then be null, as the channel-inventory shape writes them.
    if nullable || (empty.is_none() && !full.is_object() && !full.is_array()) {
        if let Some(Value::String(t)) = schema.get("type").cloned() {
            schema["type"] = json!([t, "null"]);
        }
    }
    schema
}

/// Checks `value` against a schema of the subset [`catalog`] generates
/// (`type`, `properties`, `required`, `additionalProperties: false`,
/// `items`); returns the first violation with its JSON path.
///
/// Hand-written rather than the `jsonschema` crate: this subset takes a
/// few lines, and the crate would add dozens of dependencies to every build
/// for one test's sake.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, value, "$")
}

fn check(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("{at}: bad schema type {t}")),
        };
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types.contains(&kind) {
            return Err(format!("{at}: a {kind}, the schema wants {t}"));
        }
    }
    match value {
        Value::Object(fields) => {
            for key in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !fields.contains_key(key) {
                    return Err(format!("{at}: required key {key:?} is missing"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
            for (key, v) in fields {
                match properties.and_then(|p| p.get(key)) {
                    Some(s) => check(s, v, &format!("{at}.{key}"))?,
                    None if closed => {
                        return Err(format!("{at}: key {key:?} is not in the schema"))
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(s, item, &format!("{at}[{i}]"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed sample (tests/golden) and every example's body validates
    /// against its type's schema; a renamed, mistyped or unknown key does
    /// not.
    #[test]
    fn golden_samples_validate_against_their_schemas() {
        let by_name = |n: &str| catalog().iter().find(|e| e.name == n).unwrap();
        for (file, name) in [
            ("channel_inventory", "channel_inventory.updated"),
            ("pick_confirmed", "pick.confirmed"),
            ("shipment_closed", "shipment.closed"),
        ] {
            let golden: Value = serde_json::from_str(&super::super::golden::read(&format!(
                "tests/golden/{file}.json"
            )))
            .unwrap();
            validate(&by_name(name).schema, &golden)
                .unwrap_or_else(|e| panic!("tests/golden/{file}.json: {e}"));
        }
        for e in catalog() {
            validate(&e.schema, &e.sample).unwrap_or_else(|err| panic!("{} sample: {err}", e.name));
        }
        let pick = by_name("pick.confirmed");
        let mut bad = pick.sample.clone();
        bad["stauts"] = json!("COMPLETE");
        assert!(validate(&pick.schema, &bad).unwrap_err().contains("stauts"));
        let mut bad = pick.sample.clone();
        bad["totalQty"] = json!("five");
        assert!(validate(&pick.schema, &bad)
            .unwrap_err()
            .contains("totalQty"));
        let mut bad = pick.sample.clone();
        bad.as_object_mut().unwrap().remove("timestamp");
        assert!(validate(&pick.schema, &bad)
            .unwrap_err()
            .contains("timestamp"));
    }
}
