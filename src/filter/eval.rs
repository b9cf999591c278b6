//! The evaluator: does a parsed filter hold for a body?
//!
//! An operand stands for a list of candidate values: a literal for itself, a
//! plain path for the one value it leads to (`null` when missing), a path
//! with `[*]` for one value per array element (none for an empty or missing
//! array). A condition holds if it holds for at least one candidate.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::ast::{CmpOp, Expr, Operand, Path, Segment};

/// What a missing path stands for.
static NULL: Value = Value::Null;

impl Expr {
    pub fn eval(&self, body: &Value) -> bool {
        match self {
            Expr::Or(xs) => xs.iter().any(|x| x.eval(body)),
            Expr::And(xs) => xs.iter().all(|x| x.eval(body)),
            Expr::Not(x) => !x.eval(body),
            Expr::Compare { left, op, right } => {
                let rights = right.values(body);
                left.values(body)
                    .into_iter()
                    .any(|l| rights.iter().any(|r| op.holds(l, r)))
            }
            Expr::In {
                operand,
                list,
                negated,
            } => operand
                .values(body)
                .into_iter()
                .any(|v| list.iter().any(|item| json_eq(v, item)) != *negated),
            Expr::Exists(path) => path.resolve(body).into_iter().any(|v| v.is_some()),
            Expr::Truthy(operand) => operand
                .values(body)
                .into_iter()
                .any(|v| *v == Value::Bool(true)),
        }
    }
}

impl Operand {
    fn values<'v>(&'v self, body: &'v Value) -> Vec<&'v Value> {
        match self {
            Operand::Literal(value) => vec![value],
            Operand::Path(path) => path
                .resolve(body)
                .into_iter()
                .map(|v| v.unwrap_or(&NULL))
                .collect(),
        }
    }
}

impl Path {
    /// Every place the path leads to, `None` where a key or index is
    /// missing. Iterative, so a long path cannot overflow the stack; the
    /// list never outgrows the number of values in `body`.
    pub fn resolve<'v>(&self, body: &'v Value) -> Vec<Option<&'v Value>> {
        let mut current = vec![Some(body)];
        for segment in &self.0 {
            current = match segment {
                Segment::Key(key) => current
                    .into_iter()
                    .map(|v| v.and_then(|v| v.get(key.as_str())))
                    .collect(),
                Segment::Index(index) => current
                    .into_iter()
                    .map(|v| v.and_then(|v| v.get(*index)))
                    .collect(),
                Segment::Any => current
                    .into_iter()
                    .flat_map(|v| match v {
                        Some(Value::Array(items)) => items.iter().map(Some).collect(),
                        _ => Vec::new(),
                    })
                    .collect(),
            };
        }
        current
    }
}

impl CmpOp {
    fn holds(self, left: &Value, right: &Value) -> bool {
        match self {
            CmpOp::Eq => json_eq(left, right),
            CmpOp::Ne => !json_eq(left, right),
            CmpOp::Lt => order(left, right) == Some(Ordering::Less),
            CmpOp::Le => matches!(order(left, right), Some(Ordering::Less | Ordering::Equal)),
            CmpOp::Gt => order(left, right) == Some(Ordering::Greater),
            CmpOp::Ge => matches!(
                order(left, right),
                Some(Ordering::Greater | Ordering::Equal)
            ),
        }
    }
}

/// JSON equality with numbers compared by value (`5 == 5.0`), all the way
/// down; object key order does not matter.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Numbers by value, strings by code point (which orders ISO 8601 dates of
/// one format); anything else is unordered.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Integers exactly; as soon as either side has a fraction or exponent, as
/// `f64`.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}
