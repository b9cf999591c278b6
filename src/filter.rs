//! Custom webhooks: a filter that decides whether an endpoint gets an event,
//! and a field selection that trims the body it gets. Both run over the
//! webhook's JSON body; the grammar and semantics are in `docs/filters.md`.
//!
//! A small expression language, not a scripting engine: paths, literals,
//! comparisons, `in`, `exists(…)` and boolean logic, nothing that loops or
//! allocates without bound. Input size and nesting are capped
//! ([`MAX_FILTER_BYTES`], [`MAX_DEPTH`], [`MAX_FIELDS`], [`MAX_FIELD_BYTES`]),
//! so parsing and evaluation cannot overflow the stack, and neither panics
//! on any input.
//!
//! The pieces: `lexer` (text → tokens), `parser` (recursive descent → `ast`),
//! `eval` (`ast` × body → bool) and `projection` (field selection).

mod ast;
mod eval;
mod lexer;
mod parser;
mod projection;
#[cfg(test)]
mod tests;

use std::{
    fmt::{self, Display, Formatter},
    str::FromStr,
};

use serde_json::Value;

pub use projection::Projection;

/// The longest filter accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// The most fields one selection may list.
pub const MAX_FIELDS: usize = 256;
/// The longest field (dotted path or JSON pointer) accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// How deeply parentheses, `!`/`not` and list brackets may nest in a filter.
pub const MAX_DEPTH: usize = 32;

/// Why a filter or field did not parse: where, and what was expected.
///
/// Displays as `column 14: expected a value after `==`, found the end of the
/// filter`; columns count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    column: usize,
    message: String,
}

impl ParseError {
    fn new(column: usize, message: impl Into<String>) -> Self {
        ParseError {
            column,
            message: message.into(),
        }
    }

    /// An error at byte `offset` of `src`, a char boundary.
    fn at(src: &str, offset: usize, message: impl Into<String>) -> Self {
        ParseError::new(Self::column_of(src, offset), message)
    }

    fn column_of(src: &str, offset: usize) -> usize {
        src.get(..offset).map_or(offset, |s| s.chars().count()) + 1
    }

    /// The 1-based character column the error points at.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What went wrong, without the column.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A parsed filter expression, e.g. `lines[*].quantityShort > 0`.
///
/// `Display` writes the canonical form (`&&`, `||`, `!`, minimal
/// parentheses), which parses back to the same filter; [`Filter::source`]
/// is the text as given.
#[derive(Debug, Clone)]
pub struct Filter {
    source: String,
    expr: ast::Expr,
}

impl Filter {
    /// Parses `src`, at most [`MAX_FILTER_BYTES`] long.
    pub fn parse(src: &str) -> Result<Filter, ParseError> {
        if src.len() > MAX_FILTER_BYTES {
            let message = format!("a filter is at most {MAX_FILTER_BYTES} bytes long");
            return Err(ParseError::new(1, message));
        }
        if src.trim().is_empty() {
            return Err(ParseError::new(1, "the filter is empty"));
        }
        let expr = parser::Parser::new(src, "filter")?.filter()?;
        Ok(Filter {
            source: src.to_owned(),
            expr,
        })
    }

    /// Whether the filter holds for `body`.
    pub fn matches(&self, body: &Value) -> bool {
        self.expr.eval(body)
    }

    /// The text the filter was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The paths the filter reads, each with array steps written `[*]`
    /// (`lines[*].quantityShort`), without repeats.
    pub fn schema_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        self.expr.paths(&mut paths);
        let mut out: Vec<String> = Vec::new();
        for path in paths {
            let path = path.schema_form();
            if !out.contains(&path) {
                out.push(path);
            }
        }
        out
    }
}

impl Display for Filter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl FromStr for Filter {
    type Err = ParseError;

    fn from_str(src: &str) -> Result<Self, Self::Err> {
        Filter::parse(src)
    }
}
