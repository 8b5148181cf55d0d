//! A parser for the Common Expression Language (CEL) grammar.
//!
//! It produces an [`Expr`] tree with byte offsets, so load errors point at
//! the offending part of a condition. Nesting is bounded ([`MAX_DEPTH`]) so a
//! hostile policy file cannot exhaust the stack.

use std::fmt;

/// The deepest nesting a condition may have.
pub const MAX_DEPTH: usize = 48;

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    /// Byte offset of the expression in the source.
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::In => "in",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Literal(Literal),
    Ident(String),
    Select { operand: Box<Expr>, field: String },
    Index { operand: Box<Expr>, index: Box<Expr> },
    Call { target: Option<Box<Expr>>, function: String, args: Vec<Expr> },
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at column {}", self.message, self.offset + 1)
    }
}

/// `a.?b` parses as a call of this function on `a` and `"b"`.
pub const OPTIONAL_SELECT: &str = "_?._";
/// `a[?b]` parses as a call of this function on `a` and `b`.
pub const OPTIONAL_INDEX: &str = "_[?_]";
/// `[?e]` and `{?k: v}` wrap `e` and `k` in a call of this function, a name
/// no condition can write.
pub const OPTIONAL_ENTRY: &str = "@optional";

fn optional_entry(expr: Expr, offset: usize) -> Expr {
    Expr { kind: ExprKind::Call { target: None, function: OPTIONAL_ENTRY.into(), args: vec![expr] }, offset }
}

// === Lexer ===

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Int(i64),
    /// 9223372036854775808 (2^63): an int literal only after a `-`.
    IntMinMagnitude,
    /// A backtick-quoted field name (`` a.`content-type` ``): only after `.`.
    QuotedIdent(String),
    Uint(u64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    Punct(&'static str),
    Eof,
}

const PUNCTS: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "(", ")", "[", "]", "{", "}", ".", ",", ":", "?", "+", "-", "*", "/", "%", "!",
    "<", ">",
];

struct Lexer<'s> {
    source: &'s str,
    bytes: &'s [u8],
    pos: usize,
}

impl<'s> Lexer<'s> {
    fn error<T>(&self, offset: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { offset, message: message.into() })
    }

    fn skip_space(&mut self) {
        loop {
            while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.source[self.pos..].starts_with("//") {
                while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else {
                return;
            }
        }
    }

    fn next(&mut self) -> Result<(Token, usize), ParseError> {
        self.skip_space();
        let start = self.pos;
        let Some(&c) = self.bytes.get(self.pos) else {
            return Ok((Token::Eof, start));
        };
        let rest = &self.source[self.pos..];
        if c == b'`' {
            // cel-spec: letters, digits, '_', '.', '-', '/' and spaces.
            let len = rest[1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/' | b' '))
                .count();
            if len == 0 || rest.as_bytes().get(1 + len) != Some(&b'`') {
                return self.error(start, "invalid quoted field name");
            }
            self.pos += len + 2;
            return Ok((Token::QuotedIdent(rest[1..1 + len].to_owned()), start));
        }
        // String and bytes literals, with optional r / b prefixes.
        let prefix_len = rest.bytes().take_while(|b| matches!(b, b'r' | b'R' | b'b' | b'B')).count();
        if prefix_len <= 2 && matches!(rest.as_bytes().get(prefix_len), Some(b'"' | b'\'')) {
            let prefix = &rest[..prefix_len].to_ascii_lowercase();
            if prefix.is_empty() || prefix == "r" || prefix == "b" || prefix == "rb" || prefix == "br" {
                self.pos += prefix_len;
                let raw = prefix.contains('r');
                let bytes = prefix.contains('b');
                let text = self.string(raw, bytes, start)?;
                return Ok((
                    if bytes {
                        Token::Bytes(text)
                    } else {
                        Token::String(
                            String::from_utf8(text)
                                .map_err(|_| ParseError { offset: start, message: "invalid UTF-8 in string".into() })?,
                        )
                    },
                    start,
                ));
            }
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
            self.pos += len;
            return Ok((Token::Ident(rest[..len].to_owned()), start));
        }
        if c.is_ascii_digit() || (c == b'.' && rest.as_bytes().get(1).is_some_and(u8::is_ascii_digit)) {
            return self.number(start).map(|t| (t, start));
        }
        for punct in PUNCTS {
            if rest.starts_with(punct) {
                self.pos += punct.len();
                return Ok((Token::Punct(punct), start));
            }
        }
        let ch = rest.chars().next().unwrap_or('?');
        self.error(start, format!("unexpected character {ch:?}"))
    }

    fn number(&mut self, start: usize) -> Result<Token, ParseError> {
        let rest = &self.source[self.pos..];
        if rest.starts_with("0x") || rest.starts_with("0X") {
            let len = rest[2..].bytes().take_while(u8::is_ascii_hexdigit).count();
            let digits = &rest[2..2 + len];
            self.pos += 2 + len;
            let unsigned = self.unsigned_suffix();
            return if unsigned {
                u64::from_str_radix(digits, 16)
                    .map(Token::Uint)
                    .or_else(|_| self.error(start, "integer literal out of range"))
            } else {
                i64::from_str_radix(digits, 16)
                    .map(Token::Int)
                    .or_else(|_| self.error(start, "integer literal out of range"))
            };
        }
        let bytes = rest.as_bytes();
        let mut len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut is_double = false;
        if bytes.get(len) == Some(&b'.') && bytes.get(len + 1).is_some_and(u8::is_ascii_digit) {
            is_double = true;
            len += 1;
            len += bytes[len..].iter().take_while(|b| b.is_ascii_digit()).count();
        }
        if matches!(bytes.get(len), Some(b'e' | b'E')) {
            let mut exp = len + 1;
            if matches!(bytes.get(exp), Some(b'+' | b'-')) {
                exp += 1;
            }
            let digits = bytes[exp.min(bytes.len())..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 {
                is_double = true;
                len = exp + digits;
            }
        }
        let text = &rest[..len];
        self.pos += len;
        if is_double {
            return text.parse().map(Token::Double).or_else(|_| self.error(start, "invalid double literal"));
        }
        if self.unsigned_suffix() {
            text.parse().map(Token::Uint).or_else(|_| self.error(start, "integer literal out of range"))
        } else if text.trim_start_matches('0') == "9223372036854775808" {
            Ok(Token::IntMinMagnitude)
        } else {
            text.parse().map(Token::Int).or_else(|_| self.error(start, "integer literal out of range"))
        }
    }

    fn unsigned_suffix(&mut self) -> bool {
        if matches!(self.bytes.get(self.pos), Some(b'u' | b'U')) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Reads a quoted literal starting at `self.pos` (on the quote).
    /// A string or bytes literal's content. `\xHH` and octal escapes are
    /// bytes in a bytes literal and code points (U+0000 to U+00FF) in a
    /// string literal, where `'\377'` is `ÿ`.
    fn string(&mut self, raw: bool, bytes: bool, start: usize) -> Result<Vec<u8>, ParseError> {
        let quote = self.bytes[self.pos];
        let triple = self.bytes[self.pos..].starts_with(&[quote, quote, quote]);
        let delimiter: &[u8] =
            if triple { &[quote, quote, quote] } else { std::slice::from_ref(&self.bytes[self.pos]) };
        let delimiter = delimiter.to_vec();
        self.pos += delimiter.len();
        let mut out = Vec::new();
        loop {
            if self.pos >= self.bytes.len() {
                return self.error(start, "unterminated string literal");
            }
            if self.bytes[self.pos..].starts_with(&delimiter) {
                self.pos += delimiter.len();
                return Ok(out);
            }
            let c = self.bytes[self.pos];
            if c == b'\n' && !triple {
                return self.error(start, "newline in string literal");
            }
            if c == b'\\' && !raw {
                self.pos += 1;
                let Some(&escape) = self.bytes.get(self.pos) else {
                    return self.error(start, "unterminated string literal");
                };
                self.pos += 1;
                match escape {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'a' => out.push(0x07),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'v' => out.push(0x0b),
                    b'\\' | b'\'' | b'"' | b'`' | b'?' => out.push(escape),
                    b'x' | b'X' => {
                        let value = self.hex_escape(2, start)? as u8;
                        push_escaped(&mut out, value, bytes);
                    }
                    b'u' | b'U' => {
                        let digits = if escape == b'u' { 4 } else { 8 };
                        let code = self.hex_escape(digits, start)?;
                        let ch = char::from_u32(code)
                            .ok_or(ParseError { offset: start, message: "invalid unicode escape".into() })?;
                        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    b'0'..=b'3' => {
                        // Three octal digits, read as bytes: a multi-byte
                        // character after the escape is simply not a digit.
                        let octal = self.bytes.get(self.pos - 1..self.pos + 2).unwrap_or_default();
                        if octal.len() != 3 || !octal.iter().all(|b| (b'0'..=b'7').contains(b)) {
                            return self.error(start, "invalid octal escape");
                        }
                        let value = octal.iter().fold(0u8, |v, d| v.wrapping_mul(8).wrapping_add(d - b'0'));
                        self.pos += 2;
                        push_escaped(&mut out, value, bytes);
                    }
                    other => {
                        return self.error(self.pos - 2, format!("invalid escape \\{}", other as char));
                    }
                }
                continue;
            }
            out.push(c);
            self.pos += 1;
        }
    }

    fn hex_escape(&mut self, digits: usize, start: usize) -> Result<u32, ParseError> {
        let end = self.pos + digits;
        let text =
            self.source.get(self.pos..end).ok_or(ParseError { offset: start, message: "truncated escape".into() })?;
        self.pos = end;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.error(start, "invalid hex escape");
        }
        u32::from_str_radix(text, 16).or_else(|_| self.error(start, "invalid hex escape"))
    }
}

fn push_escaped(out: &mut Vec<u8>, value: u8, bytes: bool) {
    if bytes {
        out.push(value);
    } else {
        out.extend_from_slice(char::from(value).encode_utf8(&mut [0; 4]).as_bytes());
    }
}

// === Parser ===

/// Parses a CEL expression.
pub fn parse(source: &str) -> Result<Expr, ParseError> {
    let mut lexer = Lexer { source, bytes: source.as_bytes(), pos: 0 };
    let mut tokens = Vec::new();
    loop {
        let (token, offset) = lexer.next()?;
        let eof = token == Token::Eof;
        tokens.push((token, offset));
        if eof {
            break;
        }
    }
    let mut parser = Parser { tokens, pos: 0, depth: 0 };
    let expr = parser.expr()?;
    match parser.peek() {
        Token::Eof => Ok(expr),
        other => Err(parser.unexpected(other.clone())),
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    depth: usize,
}

const RESERVED: &[&str] = &[
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos].0
    }

    fn offset(&self) -> usize {
        self.tokens[self.pos].1
    }

    fn bump(&mut self) -> (Token, usize) {
        let token = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Token::Punct(p) if *p == punct) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &str) -> Result<(), ParseError> {
        if self.eat(punct) { Ok(()) } else { Err(self.error(format!("expected '{punct}'"))) }
    }

    fn error(&self, message: String) -> ParseError {
        let found = match self.peek() {
            Token::Eof => "end of expression".to_owned(),
            Token::Punct(p) => format!("'{p}'"),
            Token::Ident(name) => format!("'{name}'"),
            _ => "a literal".to_owned(),
        };
        ParseError { offset: self.offset(), message: format!("{message}, found {found}") }
    }

    fn unexpected(&self, _token: Token) -> ParseError {
        self.error("unexpected token".into())
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError {
                offset: self.offset(),
                message: format!("expression nests deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let offset = self.offset();
        let condition = self.binary(0)?;
        let result = if self.eat("?") {
            let then = self.binary(0)?;
            self.expect(":")?;
            let otherwise = self.expr()?;
            Expr { kind: ExprKind::Ternary(Box::new(condition), Box::new(then), Box::new(otherwise)), offset }
        } else {
            condition
        };
        self.depth -= 1;
        Ok(result)
    }

    /// Precedence climbing over the binary operators: `||` < `&&` <
    /// relations < additive < multiplicative.
    fn binary(&mut self, min_level: u8) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            let (op, level) = match self.peek() {
                Token::Punct("||") => (BinaryOp::Or, 0),
                Token::Punct("&&") => (BinaryOp::And, 1),
                Token::Punct("==") => (BinaryOp::Eq, 2),
                Token::Punct("!=") => (BinaryOp::Ne, 2),
                Token::Punct("<") => (BinaryOp::Lt, 2),
                Token::Punct("<=") => (BinaryOp::Le, 2),
                Token::Punct(">") => (BinaryOp::Gt, 2),
                Token::Punct(">=") => (BinaryOp::Ge, 2),
                Token::Ident(name) if name == "in" => (BinaryOp::In, 2),
                Token::Punct("+") => (BinaryOp::Add, 3),
                Token::Punct("-") => (BinaryOp::Sub, 3),
                Token::Punct("*") => (BinaryOp::Mul, 4),
                Token::Punct("/") => (BinaryOp::Div, 4),
                Token::Punct("%") => (BinaryOp::Rem, 4),
                _ => return Ok(left),
            };
            if level < min_level {
                return Ok(left);
            }
            let offset = self.offset();
            self.bump();
            self.enter()?;
            let right = self.binary(level + 1)?;
            self.depth -= 1;
            left = Expr { kind: ExprKind::Binary(op, Box::new(left), Box::new(right)), offset };
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let offset = self.offset();
        if self.eat("!") {
            self.enter()?;
            let operand = self.unary()?;
            self.depth -= 1;
            return Ok(Expr { kind: ExprKind::Unary(UnaryOp::Not, Box::new(operand)), offset });
        }
        if self.eat("-") {
            // Fold negative numeric literals so i64::MIN is expressible.
            match self.peek().clone() {
                Token::IntMinMagnitude => {
                    self.bump();
                    return Ok(Expr { kind: ExprKind::Literal(Literal::Int(i64::MIN)), offset });
                }
                Token::Int(_) | Token::Double(_) => {
                    let member = self.member()?;
                    if let ExprKind::Literal(Literal::Int(n)) = member.kind {
                        return Ok(Expr { kind: ExprKind::Literal(Literal::Int(-n)), offset });
                    }
                    if let ExprKind::Literal(Literal::Double(n)) = member.kind {
                        return Ok(Expr { kind: ExprKind::Literal(Literal::Double(-n)), offset });
                    }
                    return Ok(Expr { kind: ExprKind::Unary(UnaryOp::Neg, Box::new(member)), offset });
                }
                _ => {
                    self.enter()?;
                    let operand = self.unary()?;
                    self.depth -= 1;
                    return Ok(Expr { kind: ExprKind::Unary(UnaryOp::Neg, Box::new(operand)), offset });
                }
            }
        }
        self.member()
    }

    fn member(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.primary()?;
        loop {
            let offset = self.offset();
            if self.eat(".") {
                // `a.?b`: optional selection, a call of `_?._` as in cel-go.
                let optional = self.eat("?");
                let (token, _) = self.bump();
                if optional {
                    let field = match token {
                        Token::Ident(field) | Token::QuotedIdent(field) => field,
                        _ => return Err(self.error("expected a field name after '.?'".into())),
                    };
                    let name = Expr { kind: ExprKind::Literal(Literal::String(field)), offset };
                    expr = Expr {
                        kind: ExprKind::Call { target: None, function: OPTIONAL_SELECT.into(), args: vec![expr, name] },
                        offset,
                    };
                    continue;
                }
                if let Token::QuotedIdent(field) = token {
                    if matches!(self.peek(), Token::Punct("(")) {
                        return Err(self.error("a quoted field name cannot be called".into()));
                    }
                    expr = Expr { kind: ExprKind::Select { operand: Box::new(expr), field }, offset };
                    continue;
                }
                let Token::Ident(field) = token else {
                    if token != Token::Eof {
                        self.pos -= 1;
                    }
                    return Err(self.error("expected a field name after '.'".into()));
                };
                if self.eat("(") {
                    let args = self.list_until(")")?;
                    expr =
                        Expr { kind: ExprKind::Call { target: Some(Box::new(expr)), function: field, args }, offset };
                } else {
                    expr = Expr { kind: ExprKind::Select { operand: Box::new(expr), field }, offset };
                }
            } else if self.eat("[") {
                let optional = self.eat("?");
                let index = self.expr()?;
                self.expect("]")?;
                expr = if optional {
                    Expr {
                        kind: ExprKind::Call { target: None, function: OPTIONAL_INDEX.into(), args: vec![expr, index] },
                        offset,
                    }
                } else {
                    Expr { kind: ExprKind::Index { operand: Box::new(expr), index: Box::new(index) }, offset }
                };
            } else {
                return Ok(expr);
            }
        }
    }

    fn list_until(&mut self, close: &str) -> Result<Vec<Expr>, ParseError> {
        self.items_until(close, false)
    }

    /// Comma-separated expressions up to `close`; in list literals an item
    /// may be `?e`, an optional element (wrapped in [`OPTIONAL_ENTRY`]).
    fn items_until(&mut self, close: &str, optional_items: bool) -> Result<Vec<Expr>, ParseError> {
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(items);
            }
            let offset = self.offset();
            if optional_items && self.eat("?") {
                let item = self.expr()?;
                items.push(optional_entry(item, offset));
            } else {
                items.push(self.expr()?);
            }
            if !self.eat(",") {
                self.expect(close)?;
                return Ok(items);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let (token, offset) = self.bump();
        let at_end = token == Token::Eof;
        let kind = match token {
            Token::Int(n) => ExprKind::Literal(Literal::Int(n)),
            Token::IntMinMagnitude => {
                return Err(ParseError { offset, message: "integer literal out of range".into() });
            }
            Token::QuotedIdent(_) => {
                return Err(ParseError { offset, message: "a quoted field name is allowed only after '.'".into() });
            }
            Token::Uint(n) => ExprKind::Literal(Literal::Uint(n)),
            Token::Double(n) => ExprKind::Literal(Literal::Double(n)),
            Token::String(s) => ExprKind::Literal(Literal::String(s)),
            Token::Bytes(b) => ExprKind::Literal(Literal::Bytes(b)),
            Token::Ident(name) => match name.as_str() {
                "true" => ExprKind::Literal(Literal::Bool(true)),
                "false" => ExprKind::Literal(Literal::Bool(false)),
                "null" => ExprKind::Literal(Literal::Null),
                "in" => {
                    return Err(ParseError { offset, message: "unexpected 'in'".into() });
                }
                reserved if RESERVED.contains(&reserved) => {
                    return Err(ParseError { offset, message: format!("'{reserved}' is a reserved word") });
                }
                _ => {
                    if self.eat("(") {
                        let args = self.list_until(")")?;
                        ExprKind::Call { target: None, function: name, args }
                    } else {
                        ExprKind::Ident(name)
                    }
                }
            },
            Token::Punct("(") => {
                let inner = self.expr()?;
                self.expect(")")?;
                return Ok(inner);
            }
            Token::Punct("[") => {
                self.enter()?;
                let items = self.items_until("]", true)?;
                self.depth -= 1;
                ExprKind::List(items)
            }
            Token::Punct("{") => {
                self.enter()?;
                let mut entries = Vec::new();
                loop {
                    if self.eat("}") {
                        break;
                    }
                    let key_offset = self.offset();
                    let optional = self.eat("?");
                    let key = self.expr()?;
                    let key = if optional { optional_entry(key, key_offset) } else { key };
                    self.expect(":")?;
                    let value = self.expr()?;
                    entries.push((key, value));
                    if !self.eat(",") {
                        self.expect("}")?;
                        break;
                    }
                }
                self.depth -= 1;
                ExprKind::Map(entries)
            }
            _ => {
                if !at_end {
                    self.pos -= 1;
                }
                return Err(self.error("expected an expression".into()));
            }
        };
        Ok(Expr { kind, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(expr: &Expr) -> String {
        match &expr.kind {
            ExprKind::Literal(l) => format!("{l:?}"),
            ExprKind::Ident(name) => name.clone(),
            ExprKind::Select { operand, field } => format!("{}.{field}", show(operand)),
            ExprKind::Index { operand, index } => format!("{}[{}]", show(operand), show(index)),
            ExprKind::Call { target, function, args } => {
                let args = args.iter().map(show).collect::<Vec<_>>().join(", ");
                match target {
                    Some(target) => format!("{}.{function}({args})", show(target)),
                    None => format!("{function}({args})"),
                }
            }
            ExprKind::List(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", ")),
            ExprKind::Map(entries) => format!(
                "{{{}}}",
                entries.iter().map(|(k, v)| format!("{}: {}", show(k), show(v))).collect::<Vec<_>>().join(", ")
            ),
            ExprKind::Unary(op, operand) => format!("({op:?} {})", show(operand)),
            ExprKind::Binary(op, l, r) => format!("({} {} {})", show(l), op.symbol(), show(r)),
            ExprKind::Ternary(c, t, e) => format!("({} ? {} : {})", show(c), show(t), show(e)),
        }
    }

    fn check(source: &str, expected: &str) {
        let expr = parse(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(show(&expr), expected, "{source}");
    }

    #[test]
    fn precedence_and_associativity() {
        check("a || b && c", "(a || (b && c))");
        check("1 + 2 * 3 - 4", "((Int(1) + (Int(2) * Int(3))) - Int(4))");
        check("a < b == c", "((a < b) == c)");
        check("x in [1, 2,]", "(x in [Int(1), Int(2)])");
        check("a ? b : c ? d : e", "(a ? b : (c ? d : e))");
        check("!a && -b > 2", "((Not a) && ((Neg b) > Int(2)))");
        check("-9223372036854775807 - 1", "(Int(-9223372036854775807) - Int(1))");
        check("-9223372036854775808 < 0", "(Int(-9223372036854775808) < Int(0))");
        // Escapes name code points in strings and bytes in bytes literals.
        check(r"'\377\xff' == b'\377\xff'", "(String(\"ÿÿ\") == Bytes([255, 255]))");
    }

    #[test]
    fn members_calls_and_literals() {
        check("action.params['amount'] > 1.5e2", "(action.params[String(\"amount\")] > Double(150.0))");
        check("context.time.getHours('America/New_York')", "context.time.getHours(String(\"America/New_York\"))");
        check("size({'a': 1u, \"b\": 0x1F})", "size({String(\"a\"): Uint(1), String(\"b\"): Int(31)})");
        check(r#"r'\d+' + '\n\u00e9' + b'\x00'"#, r#"((String("\\d+") + String("\né")) + Bytes([0]))"#);
        check("'''multi\nline'''", "String(\"multi\\nline\")");
        check("agent.roles.exists(r, r == 'admin')", "agent.roles.exists(r, (r == String(\"admin\")))");
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("a +", "expected an expression, found end of expression at column 4"),
            ("a.(b)", "expected a field name after '.', found '(' at column 3"),
            ("'abc", "unterminated string literal at column 1"),
            ("a # b", "unexpected character '#' at column 3"),
            ("(a", "expected ')', found end of expression at column 3"),
            ("a b", "unexpected token, found 'b' at column 3"),
            ("if", "'if' is a reserved word at column 1"),
            ("99999999999999999999", "integer literal out of range at column 1"),
            ("1 + 9223372036854775808", "integer literal out of range at column 5"),
            ("`a` == 1", "a quoted field name is allowed only after '.' at column 1"),
            ("a.`b", "invalid quoted field name at column 3"),
            // Found by the property test: an escape followed by a multi-byte
            // character was sliced mid-character, a panic.
            ("'\\0য'", "invalid octal escape at column 1"),
            ("'\\x+1'", "invalid hex escape at column 1"),
            ("a.`b!`", "invalid quoted field name at column 3"),
        ];
        for (source, expected) in cases {
            assert_eq!(parse(source).unwrap_err().to_string(), expected, "{source}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert!(parse(&deep).unwrap_err().message.contains("nests deeper"));
        let long_chain = vec!["a"; 500].join(" + ");
        // A long flat chain is fine: it is iteration, not recursion.
        assert!(parse(&long_chain).is_ok());
        let unary = format!("{}a", "!".repeat(200));
        assert!(parse(&unary).is_err());
    }
}
