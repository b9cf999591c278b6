//! Custom event types: the body is the producer's `data`, as given, with
//! nothing added (no `timestamp`). Unset `data` is `{}`.
//!
//! `google.protobuf.Struct` is a map, so the producer's key order is not
//! kept: keys come out sorted.

use prost_types::{value::Kind, Struct};

use super::{write_number, write_str, Envelope, Json};
use crate::pb;

pub(super) fn body(_env: &Envelope<'_>, c: &pb::CustomEvent) -> Json {
    let mut out = Vec::with_capacity(128);
    match &c.data {
        Some(s) => object(&mut out, s),
        None => out.extend_from_slice(b"{}"),
    }
    Json(out)
}

fn object(out: &mut Vec<u8>, s: &Struct) {
    out.push(b'{');
    // A `BTreeMap`: sorted, each key once.
    for (i, (k, v)) in s.fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

fn value(out: &mut Vec<u8>, v: &prost_types::Value) {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => out.extend_from_slice(b"null"),
        Some(Kind::NumberValue(n)) => write_number(out, *n),
        Some(Kind::StringValue(s)) => write_str(out, s),
        Some(Kind::BoolValue(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Some(Kind::StructValue(s)) => object(out, s),
        Some(Kind::ListValue(l)) => {
            out.push(b'[');
            for (i, v) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(out, v);
            }
            out.push(b']');
        }
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
