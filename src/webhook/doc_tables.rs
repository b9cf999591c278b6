//! The field tables of `docs/webhook-json.md` against the shapers: the keys
//! each typed event's body can have, as [`schema::key_paths`] learns them by
//! rendering an event with every proto field set, must be exactly the keys
//! its table documents — each one, nothing else — so the doc and the code
//! cannot drift. A renamed key (`serial5` for `serial05`), a forgotten
//! field or an undocumented one fails here. (Key order is checked by the
//! doc's example bodies, `golden::doc_examples_are_what_the_code_renders`.)

use std::collections::BTreeMap;

use super::{
    golden::read,
    schema::{key_paths, KeyPaths},
};
use crate::model::TYPED_EVENT_TYPES;

/// A table's first column: key paths as the doc writes them, in the
/// filter syntax of [`KeyPaths`] (`lines[*].product`, every level listed).
///
/// A cell lists names in backticks separated by commas; a name after the
/// first without a `.` shares the first's parent (`lines[].product`,
/// `location` → `lines[].location`); `a1` … `a4` is a numbered range that
/// keeps the first's zero padding (`serial01` … `serial10`); `lines[]`
/// names the list itself.
fn documented_keys(rows: &[&str]) -> KeyPaths {
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
    let mut out = KeyPaths::new();
    for key in keys {
        let key = key.replace("[]", "[*]");
        // Every level: `a[*].b.c` is also `a`, `a[*]` and `a[*].b`.
        for (i, _) in key.match_indices(['.', '[']) {
            out.insert(key[..i].to_owned());
        }
        out.insert(key);
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
fn doc_tables(doc: &str) -> BTreeMap<String, KeyPaths> {
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

#[test]
fn every_shaper_writes_exactly_the_documented_keys() {
    let tables = doc_tables(&read("docs/webhook-json.md"));
    let mut failures = Vec::new();
    for event_type in TYPED_EVENT_TYPES {
        let Some(want) = tables.get(*event_type) else {
            failures.push(format!(
                "{event_type}: no key table in docs/webhook-json.md"
            ));
            continue;
        };
        let got = key_paths(event_type).expect("a typed event type has key paths");
        let missing: Vec<&String> = want.difference(got).collect();
        let undocumented: Vec<&String> = got.difference(want).collect();
        if !missing.is_empty() || !undocumented.is_empty() {
            failures.push(format!(
                "{event_type}: documented but not written: {missing:?}; \
                 written but not documented: {undocumented:?}"
            ));
        }
    }
    for section in tables.keys() {
        if !TYPED_EVENT_TYPES.contains(&section.as_str()) {
            failures.push(format!(
                "a key table under {section:?}, not a typed event type"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
    let want = [
        "timestamp",
        "lines",
        "lines[*]",
        "lines[*].product",
        "lines[*].lot",
        "lines[*].serial01",
        "lines[*].serial02",
        "lines[*].serial03",
        "lines[*].lpn",
        "a",
        "a.b",
        "a.b.id",
        "a.b.name",
        "addressLine1",
        "addressLine2",
        "city",
    ];
    assert_eq!(
        documented_keys(&rows),
        want.into_iter().map(String::from).collect::<KeyPaths>()
    );
}
