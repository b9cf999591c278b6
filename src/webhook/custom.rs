//! Custom event types: the body is the producer's `data`, as given, with
//! nothing added (no `timestamp`). Unset `data` is `{}`.
//!
//! `google.protobuf.Struct` is a map, so the producer's key order is not
//! kept: keys come out sorted.

use prost_types::{value::Kind, Struct};
use serde_json::{Map, Value};

use super::{number, Envelope};
use crate::pb;

pub(super) fn body(_env: &Envelope<'_>, c: &pb::CustomEvent) -> Value {
    c.data
        .as_ref()
        .map_or_else(|| Value::Object(Map::new()), object)
}

fn object(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

fn value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::from(s.as_str()),
        Some(Kind::BoolValue(b)) => Value::from(*b),
        Some(Kind::StructValue(s)) => object(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
    }
}

#[cfg(test)]
mod tests {
    use prost_types::{ListValue, Timestamp};

    use super::*;

    fn kind(k: Kind) -> prost_types::Value {
        prost_types::Value { kind: Some(k) }
    }

    fn render(data: Option<Struct>) -> String {
        let at = Timestamp {
            seconds: 1,
            nanos: 0,
        };
        let c = pb::CustomEvent {
            r#type: "dock.door_opened".into(),
            data,
        };
        body(
            &Envelope {
                occurred_at: Some(&at),
            },
            &c,
        )
        .to_string()
    }

    #[test]
    fn data_as_given() {
        let nested = Struct {
            fields: [("ok".to_owned(), kind(Kind::BoolValue(true)))].into(),
        };
        let data = Struct {
            fields: [
                ("door".to_owned(), kind(Kind::NumberValue(7.0))),
                ("weight".to_owned(), kind(Kind::NumberValue(12.5))),
                (
                    "fulfillmentCenterId".to_owned(),
                    kind(Kind::StringValue("FC001".into())),
                ),
                ("note".to_owned(), kind(Kind::NullValue(0))),
                ("unset".to_owned(), prost_types::Value { kind: None }),
                ("nested".to_owned(), kind(Kind::StructValue(nested))),
                (
                    "list".to_owned(),
                    kind(Kind::ListValue(ListValue {
                        values: vec![
                            kind(Kind::NumberValue(1.0)),
                            kind(Kind::StringValue("a".into())),
                            kind(Kind::BoolValue(false)),
                        ],
                    })),
                ),
            ]
            .into(),
        };
        assert_eq!(
            render(Some(data)),
            concat!(
                r#"{"door":7,"fulfillmentCenterId":"FC001","list":[1,"a",false],"#,
                r#""nested":{"ok":true},"note":null,"unset":null,"weight":12.5}"#
            )
        );
    }

    #[test]
    fn no_data_is_an_empty_object() {
        assert_eq!(render(None), "{}");
        assert_eq!(render(Some(Struct::default())), "{}");
    }
}
