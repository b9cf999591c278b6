//! Field selection: the parts of a body a receiver asked for, and nothing
//! else.
//!
//! The output is built in one walk over the body with the set of selected
//! paths still "live" at each value, so it keeps the body's key order,
//! nesting and array positions whatever the order of the fields.

use serde_json::{Map, Value};

use super::{
    ast::{Path, Segment},
    parser::Parser,
    ParseError, MAX_FIELDS, MAX_FIELD_BYTES,
};

/// A parsed field selection; see `docs/filters.md`.
#[derive(Debug, Clone)]
pub struct Projection {
    fields: Vec<String>,
    paths: Vec<Vec<Step>>,
}

/// One step of a selected path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `.name`: that key of an object; on an array, that key of every
    /// element.
    Key(String),
    /// `[n]`: that element of an array.
    Index(usize),
    /// `[*]`: every element of an array.
    Each,
    /// A JSON pointer token: a key of an object, or an element of an array
    /// when it is an index (`0`, `17`; not `01`, not `-`).
    Token { key: String, index: Option<usize> },
}

impl Projection {
    /// Parses each field, a dotted path (`lines[0].product`) or a JSON
    /// pointer (`/lines/0/product`). A failure names the index of the first
    /// bad field.
    pub fn parse(fields: &[String]) -> Result<Projection, (usize, ParseError)> {
        if fields.len() > MAX_FIELDS {
            let message = format!("at most {MAX_FIELDS} fields can be selected");
            return Err((MAX_FIELDS, ParseError::new(1, message)));
        }
        let paths = fields
            .iter()
            .enumerate()
            .map(|(i, field)| parse_field(field).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(Projection {
            fields: fields.to_vec(),
            paths,
        })
    }

    /// The fields as given to [`Projection::parse`].
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Each field's keys joined with `.`, array steps left out (a key
    /// selects over an array's elements): `lines.product` for
    /// `lines[0].product` and `/lines/0/product`.
    pub fn key_paths(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|steps| {
                let keys: Vec<&str> = steps
                    .iter()
                    .filter_map(|step| match step {
                        Step::Key(key) | Step::Token { key, index: None } => Some(key.as_str()),
                        Step::Index(_) | Step::Each | Step::Token { index: Some(_), .. } => None,
                    })
                    .collect();
                keys.join(".")
            })
            .collect()
    }

    /// The selected parts of `body`, in `body`'s order; `{}` when nothing
    /// is selected.
    pub fn apply(&self, body: &Value) -> Value {
        let live: Vec<&[Step]> = self.paths.iter().map(Vec::as_slice).collect();
        select(body, &live).unwrap_or_else(|| Value::Object(Map::new()))
    }
}

fn parse_field(field: &str) -> Result<Vec<Step>, ParseError> {
    if field.len() > MAX_FIELD_BYTES {
        let message = format!("a field is at most {MAX_FIELD_BYTES} bytes long");
        return Err(ParseError::new(1, message));
    }
    if field.starts_with('/') {
        return parse_pointer(field);
    }
    let Path(segments) = Parser::new(field, "field")?.path_only()?;
    Ok(segments
        .into_iter()
        .map(|segment| match segment {
            Segment::Key(key) => Step::Key(key),
            Segment::Index(index) => Step::Index(index),
            Segment::Any => Step::Each,
        })
        .collect())
}

/// Splits a JSON pointer into its tokens, undoing RFC 6901's escapes
/// (`~1` is `/`, `~0` is `~`).
fn parse_pointer(field: &str) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    let mut token = String::new();
    let mut chars = field.char_indices().skip(1); // the leading `/`
    while let Some((i, c)) = chars.next() {
        match c {
            '/' => steps.push(Step::token(std::mem::take(&mut token))),
            '~' => match chars.next() {
                Some((_, '0')) => token.push('~'),
                Some((_, '1')) => token.push('/'),
                _ => {
                    let message = "in a JSON pointer, `~` must be followed by `0` or `1`";
                    return Err(ParseError::at(field, i, message));
                }
            },
            c => token.push(c),
        }
    }
    steps.push(Step::token(token));
    Ok(steps)
}

impl Step {
    fn token(key: String) -> Step {
        // RFC 6901 array indices are `0` or digits without a leading zero
        // (`usize`'s parser would also take `+1` and `01`).
        let index = key.parse().ok().filter(|i: &usize| i.to_string() == key);
        Step::Token { key, index }
    }
}

/// The parts of `value` that `live` selects, or `None` if it selects
/// nothing there. Recursion follows the body's nesting, which serde_json
/// caps at 128 levels when parsing.
fn select(value: &Value, live: &[&[Step]]) -> Option<Value> {
    if live.iter().any(|path| path.is_empty()) {
        return Some(value.clone());
    }
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, child) in map {
                let next: Vec<&[Step]> = live
                    .iter()
                    .filter_map(|path| match &path[0] {
                        Step::Key(k) | Step::Token { key: k, .. } if k == key => Some(&path[1..]),
                        _ => None,
                    })
                    .collect();
                if next.is_empty() {
                    continue;
                }
                if let Some(selected) = select(child, &next) {
                    out.insert(key.clone(), selected);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            let mut any = false;
            for (i, item) in items.iter().enumerate() {
                let next: Vec<&[Step]> = live
                    .iter()
                    .filter_map(|path| match &path[0] {
                        Step::Each => Some(&path[1..]),
                        Step::Index(n) | Step::Token { index: Some(n), .. } if *n == i => {
                            Some(&path[1..])
                        }
                        // A key maps over the elements: the step stays.
                        Step::Key(_) => Some(*path),
                        _ => None,
                    })
                    .collect();
                if next.is_empty() {
                    continue;
                }
                // A selected element keeps its place even when it holds
                // none of the fields, so positions line up with the body.
                let selected = select(item, &next);
                any |= selected.is_some();
                out.push(selected.unwrap_or_else(|| match item {
                    Value::Object(_) => Value::Object(Map::new()),
                    _ => Value::Null,
                }));
            }
            any.then_some(Value::Array(out))
        }
        _ => None,
    }
}
