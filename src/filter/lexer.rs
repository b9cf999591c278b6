//! The tokenizer: source text → tokens, each with its byte span.
//!
//! Strings and numbers follow JSON exactly, so a value copied out of a body
//! can be pasted into a filter. Words (field names and keywords) are ASCII
//! identifiers; which words are keywords is the parser's business.

use serde_json::Number;

use super::ParseError;

/// One token. Words carry no text: it is `src[start..end]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Word,
    Str(String),
    Num(Number),
    Dot,
    Comma,
    Star,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Bang,
    AndAnd,
    OrOr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// After the last token; its span is empty, at the end of the input.
    End,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

/// Splits `src` into tokens, ending with [`Tok::End`].
pub(super) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let next = bytes.get(start + 1).copied();
        let err = |message: String| ParseError::at(src, start, message);
        let (tok, end) = match (bytes[start], next) {
            (b' ' | b'\t' | b'\r' | b'\n', _) => {
                start += 1;
                continue;
            }
            (b'"', _) => {
                let (value, end) = string(src, start)?;
                (Tok::Str(value), end)
            }
            (b'-' | b'0'..=b'9', _) => {
                let end = number_end(src, start)?;
                let number =
                    number(&src[start..end]).ok_or_else(|| err("number out of range".into()))?;
                (Tok::Num(number), end)
            }
            (b'a'..=b'z' | b'A'..=b'Z' | b'_', _) => {
                let len = bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                (Tok::Word, start + len)
            }
            (b'=', Some(b'=')) => (Tok::Eq, start + 2),
            (b'!', Some(b'=')) => (Tok::Ne, start + 2),
            (b'<', Some(b'=')) => (Tok::Le, start + 2),
            (b'>', Some(b'=')) => (Tok::Ge, start + 2),
            (b'&', Some(b'&')) => (Tok::AndAnd, start + 2),
            (b'|', Some(b'|')) => (Tok::OrOr, start + 2),
            (b'!', _) => (Tok::Bang, start + 1),
            (b'<', _) => (Tok::Lt, start + 1),
            (b'>', _) => (Tok::Gt, start + 1),
            (b'.', _) => (Tok::Dot, start + 1),
            (b',', _) => (Tok::Comma, start + 1),
            (b'*', _) => (Tok::Star, start + 1),
            (b'(', _) => (Tok::LParen, start + 1),
            (b')', _) => (Tok::RParen, start + 1),
            (b'[', _) => (Tok::LBracket, start + 1),
            (b']', _) => (Tok::RBracket, start + 1),
            (b'=' | b'&' | b'|', _) => {
                let c = char::from(bytes[start]);
                return Err(err(format!("unexpected `{c}`; did you mean `{c}{c}`?")));
            }
            (b'\'', _) => return Err(err("strings are written in double quotes".into())),
            _ => {
                // `start` is a char boundary: every arm above consumes whole
                // ASCII characters, and `string` whole chars.
                let c = src[start..].chars().next().unwrap_or_default();
                return Err(err(format!("unexpected character `{c}`")));
            }
        };
        tokens.push(Token { tok, start, end });
        start = end;
    }
    tokens.push(Token {
        tok: Tok::End,
        start: src.len(),
        end: src.len(),
    });
    Ok(tokens)
}

/// Decodes the JSON string starting at the `"` at `start`; returns it and the
/// offset just past its closing quote.
fn string(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut chars = src[start + 1..]
        .char_indices()
        .map(|(i, c)| (start + 1 + i, c));
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let escaped = match chars.next() {
                    Some((_, '"')) => '"',
                    Some((_, '\\')) => '\\',
                    Some((_, '/')) => '/',
                    Some((_, 'b')) => '\u{8}',
                    Some((_, 'f')) => '\u{c}',
                    Some((_, 'n')) => '\n',
                    Some((_, 'r')) => '\r',
                    Some((_, 't')) => '\t',
                    Some((_, 'u')) => unicode_escape(src, i, &mut chars)?,
                    _ => return Err(ParseError::at(src, i, "invalid escape in string")),
                };
                out.push(escaped);
            }
            c if c < ' ' => {
                return Err(ParseError::at(
                    src,
                    i,
                    "control character in string; write it as an escape",
                ))
            }
            c => out.push(c),
        }
    }
    Err(ParseError::at(src, start, "unterminated string"))
}

/// Reads the hex digits of a `\u` escape whose backslash is at `at`,
/// combining a UTF-16 surrogate pair as JSON does.
fn unicode_escape(
    src: &str,
    at: usize,
    chars: &mut impl Iterator<Item = (usize, char)>,
) -> Result<char, ParseError> {
    let invalid = || ParseError::at(src, at, "invalid `\\u` escape in string");
    let first = hex4(chars).ok_or_else(invalid)?;
    if !(0xD800..0xDC00).contains(&first) {
        // Also rejects a lone low surrogate, which is no char.
        return char::from_u32(first).ok_or_else(invalid);
    }
    // A high surrogate must be followed by `\u` and a low one.
    let (Some((_, '\\')), Some((_, 'u'))) = (chars.next(), chars.next()) else {
        return Err(invalid());
    };
    match hex4(chars) {
        Some(second @ 0xDC00..0xE000) => {
            char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
                .ok_or_else(invalid)
        }
        _ => Err(invalid()),
    }
}

fn hex4(chars: &mut impl Iterator<Item = (usize, char)>) -> Option<u32> {
    (0..4).try_fold(0, |acc, _| Some(acc * 16 + chars.next()?.1.to_digit(16)?))
}

/// The value of JSON number `text`: an integer when it is written as one
/// and fits 64 bits, as serde_json reads bodies; otherwise the nearest
/// `f64` (Rust's parser rounds correctly, so a number printed by
/// `Display` reads back exactly). `None` past `f64`'s range.
fn number(text: &str) -> Option<Number> {
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(n) = text.parse::<u64>() {
            return Some(n.into());
        }
        if let Ok(n) = text.parse::<i64>() {
            return Some(n.into());
        }
    }
    text.parse().ok().and_then(Number::from_f64)
}

/// Finds the end of the JSON number starting at `start`:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(src: &str, start: usize) -> Result<usize, ParseError> {
    let bytes = src.as_bytes();
    let digits = |from: usize| {
        from + bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut i = start + usize::from(bytes[start] == b'-');
    let int_end = digits(i);
    if int_end == i {
        return Err(ParseError::at(src, i, "expected a digit after `-`"));
    }
    if bytes[i] == b'0' && int_end > i + 1 {
        return Err(ParseError::at(
            src,
            i,
            "a number cannot have a leading zero",
        ));
    }
    i = int_end;
    if bytes.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return Err(ParseError::at(src, i + 1, "expected a digit after `.`"));
        }
        i = end;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return Err(ParseError::at(src, i, "expected a digit in the exponent"));
        }
        i = end;
    }
    Ok(i)
}
