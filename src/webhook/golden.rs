//! Golden tests: the publish requests in `examples/` (grpcurl JSON), validated
//! as `Publish` would and rendered, must equal the seed samples in
//! `tests/golden/` and the example bodies in `docs/webhook-json.md`:
//! the same keys in the same order in every object, the same values, numbers
//! compared as numbers (`95.0` equals `95`).

use std::{fs, path::Path, time::SystemTime};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Number, Value};

use super::render_body;
use crate::{
    convert::{validate_event, EventLimits},
    pb,
};

/// A file of the repository, by its path from the crate root.
pub(super) fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Parses grpcurl's JSON (protojson) into the prost type, through the
/// descriptor set the server publishes for reflection.
fn publish_request(json: &str) -> pb::PublishRequest {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let desc = pool
        .get_message_by_name("stevedore.v1.PublishRequest")
        .expect("PublishRequest is in the descriptor set");
    let mut de = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(desc, &mut de).expect("valid PublishRequest JSON");
    de.end().expect("nothing after the request");
    pb::PublishRequest::decode(message.encode_to_vec().as_slice()).expect("re-decodes")
}

/// The body the example request `examples/{name}.json` produces, after the
/// same validation `Publish` applies.
fn render_example(name: &str) -> Value {
    let request = publish_request(&read(&format!("examples/{name}.json")));
    let event = request.event.expect("the example has an event");
    let limits = EventLimits {
        max_event_bytes: 1 << 20,
    };
    let event = validate_event(event, &"event", SystemTime::now(), limits)
        .unwrap_or_else(|e| panic!("examples/{name}.json is invalid: {e}"))
        .event;
    let body = render_body(&event).expect("renders");
    serde_json::from_slice(&body).expect("the body is JSON")
}

/// Asserts `got` equals `want` key for key, in order; `at` names the place.
fn assert_same(at: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let got_keys: Vec<&String> = g.keys().collect();
            let want_keys: Vec<&String> = w.keys().collect();
            assert_eq!(got_keys, want_keys, "keys of {at}");
            for (key, w) in w {
                assert_same(&format!("{at}.{key}"), &g[key], w);
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "length of {at}");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_same(&format!("{at}[{i}]"), g, w);
            }
        }
        (Value::Number(g), Value::Number(w)) => {
            assert!(same_number(g, w), "{at}: got {g}, want {w}");
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

/// Integers compare exactly; anything with a fraction or exponent by value.
fn same_number(a: &Number, b: &Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

fn assert_golden(name: &str) {
    let want: Value = serde_json::from_str(&read(&format!("tests/golden/{name}.json")))
        .expect("the golden file is JSON");
    assert_same(name, &render_example(name), &want);
}

#[test]
fn shipment_closed_matches_the_seed_sample() {
    assert_golden("shipment_closed");
}

#[test]
fn pick_confirmed_matches_the_seed_sample() {
    assert_golden("pick_confirmed");
}

#[test]
fn channel_inventory_matches_the_seed_sample() {
    assert_golden("channel_inventory");
}

#[test]
fn the_comparison_treats_numbers_as_numbers() {
    let got = serde_json::json!({"a": 95, "b": [1.5, -2], "c": 1.0e2});
    let want: Value = serde_json::from_str(r#"{"a": 95.0, "b": [1.50, -2.0], "c": 100}"#).unwrap();
    assert_same("x", &got, &want);
}

#[test]
#[should_panic(expected = "keys of x")]
fn the_comparison_checks_key_order() {
    let got: Value = serde_json::from_str(r#"{"a": 1, "b": 2}"#).unwrap();
    let want: Value = serde_json::from_str(r#"{"b": 2, "a": 1}"#).unwrap();
    assert_same("x", &got, &want);
}

#[test]
#[should_panic(expected = "x.a: got 1, want 1.5")]
fn the_comparison_checks_values() {
    let got: Value = serde_json::from_str(r#"{"a": 1}"#).unwrap();
    let want: Value = serde_json::from_str(r#"{"a": 1.5}"#).unwrap();
    assert_same("x", &got, &want);
}

/// Every example body in the doc is introduced by a line
/// `<!-- body of examples/NAME.json -->` and must be what that request
/// renders, so the doc cannot drift from the code.
#[test]
fn doc_examples_are_what_the_code_renders() {
    const MARKER: &str = "<!-- body of examples/";
    let doc = read("docs/webhook-json.md");
    let mut checked = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(MARKER) else {
            continue;
        };
        let name = rest
            .strip_suffix(".json -->")
            .unwrap_or_else(|| panic!("malformed marker {line:?}"));
        assert_eq!(lines.next(), Some("```json"), "a json block after {line:?}");
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let want: Value = serde_json::from_str(&block.join("\n"))
            .unwrap_or_else(|e| panic!("the doc's {name} body is not JSON: {e}"));
        assert_same(&format!("doc {name}"), &render_example(name), &want);
        checked.push(name.to_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "channel_inventory",
            "custom",
            "inventory_updated",
            "order_status",
            "pick_confirmed",
            "return_received",
            "shipment_closed",
        ],
        "one example body per event type"
    );
}
