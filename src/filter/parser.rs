//! The recursive-descent parser: one method per grammar rule, lowest
//! precedence first (the grammar is in `docs/filters.md`).
//!
//! Recursion happens only through parentheses, `!`/`not` and list brackets,
//! and each of those counts against [`MAX_DEPTH`], so no input can overflow
//! the stack.

use serde_json::Value;

use super::{
    ast::{CmpOp, Expr, Operand, Path, Segment},
    lexer::{tokenize, Tok, Token},
    ParseError, MAX_DEPTH,
};

/// Words that cannot start a path in a filter.
const KEYWORDS: &[&str] = &["and", "or", "not", "in", "exists", "true", "false", "null"];

pub(super) struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    /// What the input is called in "the end of the …": `filter` or `field`.
    what: &'static str,
}

impl<'s> Parser<'s> {
    pub fn new(src: &'s str, what: &'static str) -> Result<Self, ParseError> {
        Ok(Parser {
            src,
            tokens: tokenize(src)?,
            pos: 0,
            depth: 0,
            what,
        })
    }

    /// `filter = or END`
    pub fn filter(mut self) -> Result<Expr, ParseError> {
        let expr = self.or()?;
        self.end("`&&`, `||` or the end of the filter")?;
        Ok(expr)
    }

    /// A whole input that is one path (a projection field).
    pub fn path_only(mut self) -> Result<Path, ParseError> {
        let path = self.path()?;
        self.end("`.`, `[` or the end of the field")?;
        Ok(path)
    }

    /// `or = and { ("||" | "or") and }`
    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut operands = vec![self.and()?];
        while self.eat(&Tok::OrOr) || self.eat_word("or") {
            operands.push(self.and()?);
        }
        Ok(flatten(operands, Expr::Or))
    }

    /// `and = condition { ("&&" | "and") condition }`
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut operands = vec![self.condition()?];
        while self.eat(&Tok::AndAnd) || self.eat_word("and") {
            operands.push(self.condition()?);
        }
        Ok(flatten(operands, Expr::And))
    }

    /// A `unary` that is not followed by a comparison: `!a == 1` and
    /// `exists(a) == true` would compare a condition, which is no value.
    fn condition(&mut self) -> Result<Expr, ParseError> {
        let expr = self.unary(true)?;
        if let Some(op) = self.comparison_ahead() {
            let hint = match expr {
                Expr::Not(_) => format!("; to negate a comparison, write `!(a {op} b)`"),
                _ => String::new(),
            };
            return Err(self.error_here(format!(
                "`{op}` needs a path or a value on its left, not a condition{hint}"
            )));
        }
        Ok(expr)
    }

    /// `unary = ("!" | "not") unary | atom`
    ///
    /// `!` binds tighter than a comparison: it negates the path, `exists(…)`
    /// or parenthesized condition right after it (`compare` is false below
    /// it). So `!a == 1` is the error above rather than quietly meaning
    /// `(!a) == 1`, always false, or `!(a == 1)`, which C readers would not
    /// expect.
    fn unary(&mut self, compare: bool) -> Result<Expr, ParseError> {
        let at = self.peek().start;
        if self.eat(&Tok::Bang) || self.eat_word("not") {
            return self.nested(at, |p| Ok(Expr::Not(Box::new(p.unary(false)?))));
        }
        self.atom(compare)
    }

    /// `atom = "(" or ")" | "exists" "(" path ")" | operand [comparison]`
    /// `comparison = op operand | ["not"] "in" list`, tried if `compare`.
    fn atom(&mut self, compare: bool) -> Result<Expr, ParseError> {
        let open = self.peek().start;
        if self.eat(&Tok::LParen) {
            let expr = self.nested(open, Self::or)?;
            let column = ParseError::column_of(self.src, open);
            self.expect(
                &Tok::RParen,
                &format!("`)` to close the `(` at column {column}"),
            )?;
            return Ok(expr);
        }
        if self.eat_word("exists") {
            self.expect(&Tok::LParen, "`(` after `exists`")?;
            let path = self.filter_path("a path in `exists(…)`")?;
            self.expect(&Tok::RParen, "`)` after the path")?;
            return Ok(Expr::Exists(path));
        }
        let left = self.operand(None)?;
        if !compare {
            return Ok(Expr::Truthy(left));
        }
        if let Some(op) = self.cmp_op() {
            self.bump();
            let right_at = self.peek().start;
            let right = self.operand(Some(op.symbol()))?;
            if left.has_any() && right.has_any() {
                return Err(ParseError::at(
                    self.src,
                    right_at,
                    "only one side of a comparison can use `[*]`",
                ));
            }
            return Ok(Expr::Compare { left, op, right });
        }
        let negated = match self.comparison_ahead() {
            Some("in") => false,
            Some("not in") => {
                self.bump();
                true
            }
            _ => return Ok(Expr::Truthy(left)),
        };
        self.bump();
        if self.peek().tok != Tok::LBracket {
            let after = if negated { "`not in`" } else { "`in`" };
            return Err(self.expected(&format!("a list `[…]` after {after}")));
        }
        Ok(Expr::In {
            operand: left,
            list: self.list()?,
            negated,
        })
    }

    /// `operand = path | literal`; `after` names the operator before it.
    fn operand(&mut self, after: Option<&str>) -> Result<Operand, ParseError> {
        match (&self.peek().tok, self.word()) {
            (Tok::Word, Some(w)) if !KEYWORDS.contains(&w) => Ok(Operand::Path(self.path()?)),
            (Tok::Str(_) | Tok::Num(_) | Tok::LBracket, _)
            | (_, Some("true" | "false" | "null")) => Ok(Operand::Literal(self.literal()?)),
            _ => Err(self.expected(&match after {
                Some(op) => format!("a value after `{op}`"),
                None => "a condition".to_owned(),
            })),
        }
    }

    /// `literal = string | number | "true" | "false" | "null" | list`
    fn literal(&mut self) -> Result<Value, ParseError> {
        let value = match (&self.peek().tok, self.word()) {
            (Tok::Str(s), _) => Value::String(s.clone()),
            (Tok::Num(n), _) => Value::Number(n.clone()),
            (_, Some("true")) => Value::Bool(true),
            (_, Some("false")) => Value::Bool(false),
            (_, Some("null")) => Value::Null,
            (Tok::LBracket, _) => return Ok(Value::Array(self.list()?)),
            _ => {
                return Err(
                    self.expected("a value (a string, number, `true`, `false`, `null` or list)")
                )
            }
        };
        self.bump();
        Ok(value)
    }

    /// `list = "[" [literal {"," literal}] "]"`
    fn list(&mut self) -> Result<Vec<Value>, ParseError> {
        let at = self.peek().start;
        self.expect(&Tok::LBracket, "`[`")?;
        self.nested(at, |p| {
            let mut items = Vec::new();
            if p.eat(&Tok::RBracket) {
                return Ok(items);
            }
            loop {
                items.push(p.literal()?);
                if p.eat(&Tok::RBracket) {
                    return Ok(items);
                }
                p.expect(&Tok::Comma, "`,` or `]` in the list")?;
            }
        })
    }

    /// A path where a filter needs one: keywords are not field names here.
    fn filter_path(&mut self, expected: &str) -> Result<Path, ParseError> {
        match self.word() {
            Some(w) if !KEYWORDS.contains(&w) => self.path(),
            _ => Err(self.expected(expected)),
        }
    }

    /// `path = name { "." name | "[" index "]" | "[" "*" "]" }`
    fn path(&mut self) -> Result<Path, ParseError> {
        let Some(first) = self.word() else {
            return Err(self.expected("a field name"));
        };
        let mut segments = vec![Segment::Key(first.to_owned())];
        self.bump();
        loop {
            if self.eat(&Tok::Dot) {
                let Some(name) = self.word() else {
                    return Err(self.expected("a field name after `.`"));
                };
                segments.push(Segment::Key(name.to_owned()));
                self.bump();
            } else if self.eat(&Tok::LBracket) {
                segments.push(self.index()?);
                self.expect(&Tok::RBracket, "`]`")?;
            } else {
                return Ok(Path(segments));
            }
        }
    }

    /// The inside of `[…]` in a path: a non-negative integer or `*`.
    fn index(&mut self) -> Result<Segment, ParseError> {
        let segment = match &self.peek().tok {
            Tok::Star => Segment::Any,
            Tok::Num(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(index) => Segment::Index(index),
                None => return Err(self.error_here("an index is a non-negative integer")),
            },
            _ => return Err(self.expected("an index or `*` after `[`")),
        };
        self.bump();
        Ok(segment)
    }

    /// Runs `f` one nesting level deeper, refusing to go past [`MAX_DEPTH`];
    /// `at` is the offset of the bracket or `!` that opened the level.
    fn nested<T>(
        &mut self,
        at: usize,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        if self.depth == MAX_DEPTH {
            return Err(ParseError::at(
                self.src,
                at,
                format!("nested more than {MAX_DEPTH} levels deep (parentheses, `!` and lists)"),
            ));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// The comparison operator that starts at the current token, if any.
    fn comparison_ahead(&self) -> Option<&'static str> {
        match (self.cmp_op(), self.word(), self.word_at(self.pos + 1)) {
            (Some(op), _, _) => Some(op.symbol()),
            (_, Some("in"), _) => Some("in"),
            (_, Some("not"), Some("in")) => Some("not in"),
            _ => None,
        }
    }

    fn cmp_op(&self) -> Option<CmpOp> {
        Some(match self.peek().tok {
            Tok::Eq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            _ => return None,
        })
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    /// Moves past the current token; never past [`Tok::End`].
    fn bump(&mut self) {
        if self.peek().tok != Tok::End {
            self.pos += 1;
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let matched = self.peek().tok == *tok;
        if matched {
            self.bump();
        }
        matched
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let matched = self.word() == Some(word);
        if matched {
            self.bump();
        }
        matched
    }

    fn expect(&mut self, tok: &Tok, expected: &str) -> Result<(), ParseError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.expected(expected))
        }
    }

    fn end(&self, expected: &str) -> Result<(), ParseError> {
        match self.peek().tok {
            Tok::End => Ok(()),
            _ => Err(self.expected(expected)),
        }
    }

    /// The current token's text if it is a word.
    fn word(&self) -> Option<&'s str> {
        self.word_at(self.pos)
    }

    fn word_at(&self, pos: usize) -> Option<&'s str> {
        let token = self.tokens.get(pos)?;
        (token.tok == Tok::Word).then(|| &self.src[token.start..token.end])
    }

    /// "expected X, found Y" at the current token.
    fn expected(&self, expected: &str) -> ParseError {
        let token = self.peek();
        let found = match token.tok {
            Tok::End => format!("the end of the {}", self.what),
            _ => {
                const SHOWN: usize = 24;
                let text = &self.src[token.start..token.end];
                match text.char_indices().nth(SHOWN) {
                    Some((cut, _)) => format!("`{}…`", &text[..cut]),
                    None => format!("`{text}`"),
                }
            }
        };
        self.error_here(format!("expected {expected}, found {found}"))
    }

    fn error_here(&self, message: impl Into<String>) -> ParseError {
        ParseError::at(self.src, self.peek().start, message)
    }
}

/// One operand stands for itself; several are joined by `join`.
fn flatten(mut operands: Vec<Expr>, join: fn(Vec<Expr>) -> Expr) -> Expr {
    if operands.len() == 1 {
        operands.remove(0)
    } else {
        join(operands)
    }
}
