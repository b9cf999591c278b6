//! The parsed form of a filter, and its canonical text.

use std::fmt::{self, Display, Formatter};

use serde_json::Value;

/// A condition: something that holds or not for a body.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    /// At least one holds; two or more operands.
    Or(Vec<Expr>),
    /// Every one holds; two or more operands.
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
    /// `operand in list`, or `operand not in list` when `negated`.
    In {
        operand: Operand,
        list: Vec<Value>,
        negated: bool,
    },
    Exists(Path),
    /// A bare path or literal used as a condition: holds if it is `true`.
    Truthy(Operand),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    Path(Path),
    /// A JSON scalar or a list of literals; never an object.
    Literal(Value),
}

/// `name`, then any of `.name`, `[index]`, `[*]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Path(pub Vec<Segment>);

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
    /// `[*]`: every element of an array.
    Any,
}

impl Expr {
    /// Every path the expression reads, in order of appearance.
    pub fn paths<'a>(&'a self, into: &mut Vec<&'a Path>) {
        match self {
            Expr::Or(xs) | Expr::And(xs) => xs.iter().for_each(|x| x.paths(into)),
            Expr::Not(x) => x.paths(into),
            Expr::Compare { left, right, .. } => {
                for operand in [left, right] {
                    if let Operand::Path(p) = operand {
                        into.push(p);
                    }
                }
            }
            Expr::In { operand, .. } | Expr::Truthy(operand) => {
                if let Operand::Path(p) = operand {
                    into.push(p);
                }
            }
            Expr::Exists(p) => into.push(p),
        }
    }
}

impl Path {
    /// The path with every array step written `[*]`
    /// (`lines[0].product` → `lines[*].product`), the form
    /// [`crate::webhook::schema`] lists.
    pub fn schema_form(&self) -> String {
        let mut out = String::new();
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => out.push_str(key),
                Segment::Key(key) => {
                    out.push('.');
                    out.push_str(key);
                }
                Segment::Index(_) | Segment::Any => out.push_str("[*]"),
            }
        }
        out
    }
}

impl Operand {
    /// Whether this operand can stand for several values.
    pub fn has_any(&self) -> bool {
        matches!(self, Operand::Path(p) if p.0.contains(&Segment::Any))
    }
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

// Display writes the canonical form: `&&`, `||`, `!`, single spaces, and
// parentheses exactly where the tree needs them, so parsing the text gives
// back the same tree.

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(xs) => join(f, xs, " || ", |x| matches!(x, Expr::Or(_))),
            Expr::And(xs) => join(f, xs, " && ", |x| matches!(x, Expr::Or(_) | Expr::And(_))),
            // `!a == 1` is rejected, so a negated comparison keeps its parentheses.
            Expr::Not(x) => match **x {
                Expr::Not(_) | Expr::Exists(_) | Expr::Truthy(_) => write!(f, "!{x}"),
                _ => write!(f, "!({x})"),
            },
            Expr::Compare { left, op, right } => write!(f, "{left} {} {right}", op.symbol()),
            Expr::In {
                operand,
                list,
                negated,
            } => {
                let not = if *negated { "not " } else { "" };
                write!(f, "{operand} {not}in ")?;
                write_list(f, list)
            }
            Expr::Exists(path) => write!(f, "exists({path})"),
            Expr::Truthy(operand) => write!(f, "{operand}"),
        }
    }
}

/// Writes `xs` separated by `sep`, parenthesizing those `needs_parens` picks.
fn join(
    f: &mut Formatter<'_>,
    xs: &[Expr],
    sep: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, x) in xs.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        if needs_parens(x) {
            write!(f, "({x})")?;
        } else {
            write!(f, "{x}")?;
        }
    }
    Ok(())
}

impl Display for Operand {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Path(path) => write!(f, "{path}"),
            Operand::Literal(value) => write_literal(f, value),
        }
    }
}

fn write_literal(f: &mut Formatter<'_>, value: &Value) -> fmt::Result {
    match value {
        Value::Array(items) => write_list(f, items),
        // Scalars print as JSON, which is also the filter syntax.
        other => write!(f, "{other}"),
    }
}

fn write_list(f: &mut Formatter<'_>, items: &[Value]) -> fmt::Result {
    f.write_str("[")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_literal(f, item)?;
    }
    f.write_str("]")
}

impl Display for Path {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Any => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}
