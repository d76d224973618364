//! The cursor over one statement's tokens and the helpers every dialect uses
//! (words, names, values, option lists, raw expressions).

use super::ast::{Command, Dialect, ErrorKind, Options, ParseError, Statement, Value};
use super::lexer::qualify_hash_functions;
use super::lexer::{Tok, Token};

pub struct Parser<'a> {
    pub src: &'a str,
    pub toks: &'a [Token],
    pub pos: usize,
}

pub type PResult<T> = Result<T, ParseError>;

impl<'a> Parser<'a> {
    pub fn new(src: &'a str, toks: &'a [Token]) -> Parser<'a> {
        Parser { src, toks, pos: 0 }
    }

    // ------------------------------------------------------------ cursor

    pub fn peek(&self) -> Option<&'a Token> {
        self.toks.get(self.pos)
    }

    pub fn peek_at(&self, n: usize) -> Option<&'a Token> {
        self.toks.get(self.pos + n)
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }

    /// Byte offset of the current token (end of the statement when none is left).
    pub fn offset(&self) -> usize {
        self.peek().map_or_else(|| self.toks.last().map_or(self.src.len(), |t| t.end), |t| t.start)
    }

    pub fn is_kw(t: Option<&Token>, kw: &str) -> bool {
        matches!(t, Some(Token { tok: Tok::Word { text, quoted: false }, .. }) if text.eq_ignore_ascii_case(kw))
    }

    pub fn peek_kw(&self, kw: &str) -> bool {
        Self::is_kw(self.peek(), kw)
    }

    pub fn peek_kw_at(&self, n: usize, kw: &str) -> bool {
        Self::is_kw(self.peek_at(n), kw)
    }

    pub fn peek_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Punct(x), .. }) if x == p)
    }

    pub fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Eat a whole keyword sequence, or nothing.
    pub fn eat_kws(&mut self, kws: &[&str]) -> bool {
        if kws.iter().enumerate().all(|(i, k)| self.peek_kw_at(i, k)) {
            self.pos += kws.len();
            true
        } else {
            false
        }
    }

    pub fn eat_punct(&mut self, p: &str) -> bool {
        if self.peek_punct(p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// The error for the current token, given what would have been accepted.
    pub fn unexpected(&self, expected: &[&str]) -> ParseError {
        match self.peek() {
            Some(t) => ParseError::at(self.src, t.start, format!("syntax error at or near \"{}\"", t.shown(self.src)), expected),
            None => ParseError::at(self.src, self.offset(), "syntax error at end of input", expected),
        }
    }

    pub fn expect_kw(&mut self, kw: &str) -> PResult<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected(&[kw]))
        }
    }

    pub fn expect_kws(&mut self, kws: &[&str]) -> PResult<()> {
        for k in kws {
            self.expect_kw(k)?;
        }
        Ok(())
    }

    pub fn expect_punct(&mut self, p: &str) -> PResult<()> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            Err(self.unexpected(&[&format!("\"{p}\"")]))
        }
    }

    pub fn expect_end(&self) -> PResult<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.unexpected(&["end of statement (\";\")"]))
        }
    }

    // ------------------------------------------------------------ names and values

    /// An identifier: bare words fold to lower case, "quoted" ones stay as written.
    pub fn ident(&mut self, what: &str) -> PResult<String> {
        match self.peek() {
            Some(Token { tok: Tok::Word { text, quoted }, .. }) => {
                self.pos += 1;
                Ok(if *quoted { text.clone() } else { text.to_lowercase() })
            }
            _ => Err(self.unexpected(&[what])),
        }
    }

    /// An object name; `schema.name` is kept whole as the name.
    pub fn object_name(&mut self, what: &str) -> PResult<String> {
        let mut name = self.ident(what)?;
        while self.peek_punct(".") {
            self.pos += 1;
            name.push('.');
            name.push_str(&self.ident(what)?);
        }
        Ok(name)
    }

    /// A table name as SQL text (parts quoted where needed), for the source.
    pub fn table_name(&mut self) -> PResult<String> {
        let mut parts = vec![sql_ident(&self.ident("a table name")?)];
        while self.eat_punct(".") {
            parts.push(sql_ident(&self.ident("a table name")?));
        }
        Ok(parts.join("."))
    }

    /// A string literal.
    pub fn string(&mut self, what: &str) -> PResult<String> {
        match self.peek() {
            Some(Token { tok: Tok::Str(s), .. }) => {
                self.pos += 1;
                Ok(s.clone())
            }
            _ => Err(self.unexpected(&[what])),
        }
    }

    /// A literal value: string, number (with sign), boolean or bare word.
    pub fn scalar(&mut self) -> PResult<String> {
        let neg = self.peek_punct("-") && matches!(self.peek_at(1), Some(Token { tok: Tok::Number(_), .. }));
        if neg {
            self.pos += 1;
        }
        match self.peek() {
            Some(Token { tok: Tok::Str(s), .. }) => {
                self.pos += 1;
                Ok(s.clone())
            }
            Some(Token { tok: Tok::Number(n), .. }) => {
                self.pos += 1;
                Ok(if neg { format!("-{n}") } else { n.clone() })
            }
            Some(Token { tok: Tok::Word { text, quoted }, .. }) => {
                self.pos += 1;
                Ok(if *quoted { text.clone() } else { text.to_lowercase() })
            }
            _ => Err(self.unexpected(&["a value"])),
        }
    }

    /// `MAP['k' => 'v', ...]` (after the word MAP).
    pub fn map_body(&mut self) -> PResult<Vec<(String, String)>> {
        self.expect_punct("[")?;
        let mut out = Vec::new();
        while !self.eat_punct("]") {
            let k = self.string("a string key")?;
            self.expect_punct("=>")?;
            let v = self.scalar()?;
            out.push((k, v));
            if !self.eat_punct(",") {
                self.expect_punct("]")?;
                break;
            }
        }
        Ok(out)
    }

    /// `( value, ... )` as one comma-joined text (e.g. a broker list).
    pub fn list_body(&mut self) -> PResult<String> {
        self.expect_punct("(")?;
        let mut items = Vec::new();
        while !self.eat_punct(")") {
            items.push(self.scalar()?);
            if !self.eat_punct(",") {
                self.expect_punct(")")?;
                break;
            }
        }
        Ok(items.join(","))
    }

    /// Any value of a `NAME [=] value` option.
    pub fn value(&mut self) -> PResult<Value> {
        if self.peek_kw("SECRET") && matches!(self.peek_at(1), Some(Token { tok: Tok::Word { .. }, .. })) {
            self.pos += 1;
            return Ok(Value::Secret(self.object_name("a secret name")?));
        }
        if self.peek_kw("MAP") && matches!(self.peek_at(1), Some(Token { tok: Tok::Punct(p), .. }) if p == "[") {
            self.pos += 1;
            return Ok(Value::Map(self.map_body()?));
        }
        if self.peek_punct("(") {
            return Ok(Value::Text(self.list_body()?));
        }
        Ok(Value::Text(self.scalar()?))
    }

    /// The source text from the current token up to (not including) the first
    /// token at parenthesis depth 0 for which `stop` holds, trimmed.
    pub fn raw_until(&mut self, what: &str, stop: impl Fn(&Parser) -> bool) -> PResult<String> {
        let start = self.offset();
        let mut depth = 0i32;
        let mut end = start;
        while let Some(t) = self.peek() {
            if depth == 0 && stop(self) {
                break;
            }
            match &t.tok {
                Tok::Punct(p) if p == "(" || p == "[" => depth += 1,
                Tok::Punct(p) if p == ")" || p == "]" => {
                    depth -= 1;
                    if depth < 0 {
                        break;
                    }
                }
                _ => {}
            }
            end = t.end;
            self.pos += 1;
        }
        if end == start {
            return Err(self.unexpected(&[what]));
        }
        Ok(self.src[start..end].trim().to_string())
    }

    /// `( name = value, ... )` with dotted or multi-word names, `=` required
    /// (RisingWave WITH, Kinetica WITH OPTIONS). A trailing comma is fine.
    pub fn assignment_list(&mut self) -> PResult<Vec<(String, Value, usize)>> {
        self.expect_punct("(")?;
        let mut out = Vec::new();
        while !self.eat_punct(")") {
            let at = self.offset();
            let name = self.option_name()?;
            if !self.eat_punct("=") {
                return Err(self.unexpected(&["\"=\""]));
            }
            let value = self.value()?;
            out.push((name, value, at));
            if !self.eat_punct(",") {
                self.expect_punct(")")?;
                break;
            }
        }
        Ok(out)
    }

    /// An option name: words and dotted parts up to `=` or a value (a string,
    /// number, `(`, `MAP[` or `SECRET x` ends it: Materialize's `TOPIC 't'`);
    /// lower case, words joined by `_`.
    pub fn option_name(&mut self) -> PResult<String> {
        // Kinetica also writes option names as strings: 'security.protocol' = '..'.
        if let Some(Token { tok: Tok::Str(s), .. }) = self.peek() {
            if !s.is_empty() {
                self.pos += 1;
                return Ok(s.to_lowercase());
            }
        }
        let mut name = String::new();
        let mut after_dot = true;
        loop {
            match self.peek() {
                Some(Token { tok: Tok::Word { text, quoted }, .. }) => {
                    if !name.is_empty() && self.peek_kw("SECRET") && matches!(self.peek_at(1), Some(Token { tok: Tok::Word { .. }, .. })) {
                        break;
                    }
                    if !name.is_empty() && self.peek_kw("MAP") {
                        break;
                    }
                    if !after_dot {
                        name.push('_');
                    }
                    name.push_str(&if *quoted { text.clone() } else { text.to_lowercase() });
                    after_dot = false;
                    self.pos += 1;
                }
                Some(Token { tok: Tok::Punct(p), .. }) if p == "." && !name.is_empty() => {
                    name.push('.');
                    after_dot = true;
                    self.pos += 1;
                }
                _ => break,
            }
        }
        if name.is_empty() || name.ends_with('.') {
            return Err(self.unexpected(&["an option name"]));
        }
        Ok(name)
    }

    /// Materialize's `NAME [=] value` list (with or without parentheses around it).
    pub fn materialize_options(&mut self, known_bare: &[&str]) -> PResult<Options> {
        let parens = self.eat_punct("(");
        let mut out = Vec::new();
        loop {
            if parens && self.eat_punct(")") {
                break;
            }
            if !parens && (self.at_end() || self.peek_kw("WITH")) {
                break;
            }
            let name = self.option_name()?;
            let value = if self.eat_punct("=") {
                if name == "partition_by" {
                    Value::Text(qualify_hash_functions(&self.raw_until("an expression", |p| p.peek_punct(",") || p.peek_punct(")"))?))
                } else {
                    self.value()?
                }
            } else if self.peek_punct(",") || self.peek_punct(")") || self.at_end() {
                if !known_bare.contains(&name.as_str()) {
                    return Err(self.unexpected(&["\"=\"", "a value"]));
                }
                Value::Text("true".into())
            } else {
                self.value()?
            };
            out.push((name, value));
            if !self.eat_punct(",") {
                if parens {
                    self.expect_punct(")")?;
                }
                break;
            }
        }
        Ok(out)
    }
}

/// Quote an identifier for SQL text unless it is a plain lower-case name.
pub fn sql_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

pub fn stmt(dialect: Dialect, tag: &str, command: Command) -> Statement {
    Statement { command, dialect, tag: tag.to_string(), notices: Vec::new() }
}

pub fn unsupported(src: &str, at: usize, message: impl Into<String>, hint: impl Into<String>) -> ParseError {
    let mut e = ParseError::at(src, at, message, &[]);
    e.kind = ErrorKind::Unsupported;
    e.hint = Some(hint.into());
    e
}
