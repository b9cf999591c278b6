//! The field tables of `docs/webhook-json.md` against the shapers: an event
//! of each type with every proto field set (through reflection, so a field
//! added to the proto is set too) must render exactly the keys its table
//! documents — each one, nothing else, in the table's order — so the doc and
//! the code cannot drift. A renamed key (`serial5` for `serial05`), a
//! forgotten field or an undocumented one fails here.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Value};

use super::{golden::read, render_body};
use crate::{model::event_type_of, pb};

/// A table's first column: key paths as the doc writes them.
///
/// A cell lists names in backticks separated by commas; a name after the
/// first without a `.` shares the first's parent (`lines[].product`,
/// `location` → `lines[].location`); `a1` … `a4` is a numbered range that
/// keeps the first's zero padding (`serial01` … `serial10`). The paths
/// returned are in table order, each preceded by its ancestors the first
/// time they appear; a list is named without its `[]`.
fn documented_keys(rows: &[&str]) -> Vec<String> {
    let mut keys = Vec::new();
    for row in rows {
        let cell = row.split('|').nth(1).expect("a table row has cells");
        let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        assert!(!names.is_empty(), "no key in row {row:?}");
        let first = names[0];
        let parent = &first[..first.rfind('.').map_or(0, |i| i + 1)];
        let full = |name: &str| match name.contains('.') {
            true => name.to_owned(),
            false => format!("{parent}{name}"),
        };
        // Separators between the names: "…" marks a range.
        let seps: Vec<&str> = cell.split('`').skip(2).step_by(2).collect();
        let mut i = 0;
        while i < names.len() {
            let name = full(names[i]);
            if seps.get(i).is_some_and(|s| s.contains('…')) {
                let end = full(names[i + 1]);
                keys.extend(range(&name, &end));
                i += 2;
            } else {
                keys.push(name);
                i += 1;
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        let key = key.trim_end_matches("[]").to_owned();
        // Ancestors first: `a[].b.c` needs `a` and `a[].b`.
        let mut ancestors = Vec::new();
        for (i, c) in key.char_indices() {
            if c == '.' {
                ancestors.push(key[..i].trim_end_matches("[]").to_owned());
            }
        }
        for k in ancestors.into_iter().chain([key]) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

/// `p.serial01` … `p.serial10` → every name between, with the first's
/// zero padding.
fn range(first: &str, last: &str) -> Vec<String> {
    let split = |s: &str| {
        let at = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        (s[..at].to_owned(), s[at..].to_owned())
    };
    let ((stem, from), (stem2, to)) = (split(first), split(last));
    assert_eq!(stem, stem2, "range {first} … {last}");
    let width = from.len();
    let (from, to): (u32, u32) = (from.parse().unwrap(), to.parse().unwrap());
    assert!(from < to, "range {first} … {last}");
    (from..=to).map(|n| format!("{stem}{n:0width$}")).collect()
}

/// The doc's sections that have a key table: heading → its rows.
fn doc_tables(doc: &str) -> BTreeMap<String, Vec<String>> {
    let mut tables = BTreeMap::new();
    let mut section = "";
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading;
        } else if line.starts_with("| key |") {
            assert!(lines.next().is_some_and(|l| l.starts_with("|---")));
            let mut rows = Vec::new();
            while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
                rows.push(row);
            }
            let previous = tables.insert(section.to_owned(), documented_keys(&rows));
            assert!(previous.is_none(), "two key tables under {section:?}");
        }
    }
    tables
}

/// Every key path of a rendered body, in document order; a list's items
/// are under `key[]`, merged.
fn rendered_keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                if !out.contains(&path) {
                    out.push(path.clone());
                }
                match v {
                    serde_json::Value::Array(items) => {
                        for item in items {
                            rendered_keys(item, &format!("{path}[]."), out);
                        }
                    }
                    v => rendered_keys(v, &format!("{path}."), out),
                }
            }
        }
        serde_json::Value::Array(_) => panic!("a list of lists at {prefix}"),
        _ => {}
    }
}

/// A message with every field set to a value that is not its default: a
/// string `"x"`, numbers 1, `true`, the first enum value after
/// `*_UNSPECIFIED`, one item in each list and map, nested messages filled
/// the same way.
fn filled(desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
    assert!(depth < 8, "{} nests too deep", desc.full_name());
    let mut m = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        let one = |kind: &Kind| match kind {
            Kind::String => Value::String("x".into()),
            Kind::Bytes => Value::Bytes(bytes::Bytes::from_static(b"x")),
            Kind::Bool => Value::Bool(true),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(1),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(1),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(1),
            Kind::Float => Value::F32(1.5),
            Kind::Double => Value::F64(1.5),
            Kind::Enum(e) => Value::EnumNumber(
                e.values()
                    .map(|v| v.number())
                    .find(|&n| n != 0)
                    .expect("an enum with a value besides UNSPECIFIED"),
            ),
            Kind::Message(m) => Value::Message(filled(m, depth + 1)),
        };
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map field's kind is its entry message")
            };
            let key = match one(&entry.map_entry_key_field().kind()) {
                Value::String(s) => MapKey::String(s),
                other => panic!("unexpected map key {other:?}"),
            };
            let value = one(&entry.map_entry_value_field().kind());
            Value::Map([(key, value)].into())
        } else if field.is_list() {
            Value::List(vec![one(&field.kind())])
        } else {
            one(&field.kind())
        };
        m.set_field(&field, value);
    }
    m
}

/// One event per typed payload, every field set, as `Publish` would store it
/// (with `occurred_at`).
fn full_events() -> Vec<pb::Event> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let event = pool
        .get_message_by_name("stevedore.v1.Event")
        .expect("Event is in the descriptor set");
    let payload = event
        .oneofs()
        .find(|o| o.name() == "payload")
        .expect("Event has a payload oneof");
    let occurred_at = event.get_field_by_name("occurred_at").unwrap();
    let Kind::Message(timestamp) = occurred_at.kind() else {
        unreachable!("occurred_at is a Timestamp")
    };
    payload
        .fields()
        // A custom event's body is its data, exactly as published.
        .filter(|f| f.name() != "custom")
        .map(|field| {
            let Kind::Message(desc) = field.kind() else {
                unreachable!("payloads are messages")
            };
            let mut e = DynamicMessage::new(event.clone());
            e.set_field(&occurred_at, Value::Message(filled(&timestamp, 0)));
            e.set_field(&field, Value::Message(filled(&desc, 0)));
            pb::Event::decode(e.encode_to_vec().as_slice()).expect("re-decodes")
        })
        .collect()
}

#[test]
fn every_shaper_writes_exactly_the_documented_keys() {
    let tables = doc_tables(&read("docs/webhook-json.md"));
    let events = full_events();
    let mut types = BTreeSet::new();
    let mut failures = Vec::new();
    for event in &events {
        let event_type = event_type_of(event.payload.as_ref()).expect("a typed payload");
        let name = event_type.as_str().to_owned();
        let Some(want) = tables.get(&name) else {
            failures.push(format!("{name}: no key table in docs/webhook-json.md"));
            continue;
        };
        types.insert(name.clone());
        let body = render_body(event).expect("renders");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("the body is JSON");
        let mut got = Vec::new();
        rendered_keys(&body, "", &mut got);
        let missing: Vec<&String> = want.iter().filter(|k| !got.contains(k)).collect();
        let undocumented: Vec<&String> = got.iter().filter(|k| !want.contains(k)).collect();
        if !missing.is_empty() || !undocumented.is_empty() {
            failures.push(format!(
                "{name}: documented but not written: {missing:?}; \
                 written but not documented: {undocumented:?}"
            ));
        } else if got != *want {
            failures.push(format!(
                "{name}: keys in another order than the table:\n  table {want:?}\n  body  {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let documented: BTreeSet<String> = tables.keys().cloned().collect();
    assert_eq!(
        types, documented,
        "a key table per typed event, and no other"
    );
}

#[test]
fn the_table_reader_expands_shared_parents_and_ranges() {
    let rows = [
        "| `timestamp` | date | |",
        "| `lines[]` | list | |",
        "| `lines[].product`, `lot` | string | |",
        "| `lines[].serial01` … `serial03`, `lpn` | string | |",
        "| `a.b.id`, `name` | integer | |",
        "| `addressLine1` … `addressLine2`, `city` | string | |",
    ];
    assert_eq!(
        documented_keys(&rows),
        [
            "timestamp",
            "lines",
            "lines[].product",
            "lines[].lot",
            "lines[].serial01",
            "lines[].serial02",
            "lines[].serial03",
            "lines[].lpn",
            "a",
            "a.b",
            "a.b.id",
            "a.b.name",
            "addressLine1",
            "addressLine2",
            "city",
        ]
    );
}
