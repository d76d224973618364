//! The DDL of other systems, so a statement pasted from their docs works here:
//! Materialize's `CREATE SINK .. INTO KAFKA CONNECTION`, `CREATE CONNECTION`,
//! `CREATE SECRET`; RisingWave's `CREATE SINK .. WITH (connector = ..) FORMAT ..
//! ENCODE ..`; Kinetica's `CREATE DATA SINK`, `CREATE CREDENTIAL`, `CREATE STREAM`;
//! plus `DROP`, `ALTER`, `SHOW`, `GRANT`/`REVOKE`.
//!
//! This module owns the text → [`Statement`] step only: tokens, grammar, and the
//! mapping of each dialect's words onto the function API's option names. Running
//! the commands (privileges, catalog, validation) is the glue's job, through the
//! same code paths as `sink.create_sink()` and friends. Syntax errors carry the
//! offending token's position and what was expected there.

mod kinetica;
mod lexer;
mod materialize;
mod parser;
mod risingwave;

use parser::Parser;

pub use kinetica::connector_for as connector_for_location;

/// An option value as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string, number, boolean, identifier or expression, as text.
    Text(String),
    /// `SECRET name`: a reference to a stored secret.
    Secret(String),
    /// `MAP['k' => 'v', ..]`.
    Map(Vec<(String, String)>),
}

/// Options in the function API's spelling (lower case, words joined by `_`,
/// dotted names kept), in the order written.
pub type Options = Vec<(String, Value)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Materialize,
    RisingWave,
    Kinetica,
}

impl Dialect {
    pub fn as_str(&self) -> &'static str {
        match self {
            Dialect::Materialize => "materialize",
            Dialect::RisingWave => "risingwave",
            Dialect::Kinetica => "kinetica",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Sink,
    Connection,
    Secret,
    Credential,
}

impl ObjectKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectKind::Sink => "sink",
            ObjectKind::Connection => "connection",
            ObjectKind::Secret => "secret",
            ObjectKind::Credential => "credential",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    CreateSecret { name: String, value: String, if_not_exists: bool, or_replace: bool },
    AlterSecret { name: String, value: String, if_exists: bool },
    /// Kinetica credential: `kind` is its TYPE; options hold the rest.
    CreateCredential { name: String, kind: String, identity: Option<String>, secret: Option<String>, options: Options, or_replace: bool },
    /// New values for type/identity/secret and options.
    AlterCredential { name: String, set: Options },
    CreateConnection { name: String, connector: String, options: Options, if_not_exists: bool, or_replace: bool },
    AlterConnection { name: String, set: Options },
    CreateSink {
        name: String,
        /// A table name (SQL-quoted where needed) or `SELECT .. FROM t [WHERE ..]`.
        source: String,
        connector: Option<String>,
        connection: Option<String>,
        key: Option<Vec<String>>,
        options: Options,
        if_not_exists: bool,
        or_replace: bool,
    },
    Drop { kind: ObjectKind, name: String, if_exists: bool, cascade: bool },
    /// `kind` None: every kind. `name` None: every object.
    Show { kind: Option<ObjectKind>, name: Option<String> },
    Grant { revoke: bool, kind: ObjectKind, name: String, roles: Vec<String> },
}

/// One parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub command: Command,
    pub dialect: Dialect,
    /// The statement's leading words, e.g. `CREATE DATA SINK`.
    pub tag: String,
    /// Things accepted but ignored (e.g. `IN CLUSTER`), to tell the user.
    pub notices: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not valid in any dialect.
    Syntax,
    /// Valid in its dialect, but pg_sink has no such feature.
    Unsupported,
}

/// A parse error at a place in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub kind: ErrorKind,
    pub message: String,
    /// What the grammar would have accepted there.
    pub expected: Vec<String>,
    /// 1-based character offset in the whole input.
    pub position: usize,
    pub line: usize,
    pub column: usize,
    pub hint: Option<String>,
}

impl ParseError {
    /// An error at byte offset `at` of `src`.
    pub fn at(src: &str, at: usize, message: impl Into<String>, expected: &[&str]) -> ParseError {
        let at = at.min(src.len());
        let before = &src[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ParseError {
            kind: ErrorKind::Syntax,
            message: message.into(),
            expected: expected.iter().map(|s| s.to_string()).collect(),
            position: before.chars().count() + 1,
            line,
            column,
            hint: None,
        }
    }

    pub fn unsupported(mut self, hint: impl Into<String>) -> ParseError {
        self.kind = ErrorKind::Unsupported;
        self.hint = Some(hint.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> ParseError {
        self.hint = Some(hint.into());
        self
    }

    /// `Expected one of: ..` plus where, for the error's detail.
    pub fn detail(&self) -> String {
        let place = format!("At position {} (line {}, column {}).", self.position, self.line, self.column);
        match self.expected.as_slice() {
            [] => place,
            [one] => format!("Expected {one}. {place}"),
            many => format!("Expected one of: {}. {place}", many.join(", ")),
        }
    }
}

/// Parse every `;`-separated statement of `src`.
pub fn parse(src: &str) -> Result<Vec<Statement>, ParseError> {
    let tokens = lexer::tokenize(src)?;
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate().chain(std::iter::once((tokens.len(), &lexer::Token { tok: lexer::Tok::Punct(";".into()), start: src.len(), end: src.len() }))) {
        if t.tok == lexer::Tok::Punct(";".into()) {
            if i > start {
                let mut p = Parser::new(src, &tokens[start..i]);
                out.push(p.statement()?);
            }
            start = i + 1;
        }
    }
    if out.is_empty() {
        return Err(ParseError::at(src, src.len(), "empty statement", &["CREATE", "ALTER", "DROP", "SHOW", "GRANT", "REVOKE"])
            .hint("Pass one or more statements, e.g. CREATE SINK .. ; separated by semicolons."));
    }
    Ok(out)
}

/// Materialize's `PARTITION BY` helpers are ours in schema `sink`: qualify
/// unqualified calls of `seahash`, `kafka_murmur2` and `crc32`.
pub fn qualify_hash_functions(expr: &str) -> String {
    let Ok(tokens) = lexer::tokenize(expr) else {
        return expr.to_string();
    };
    let mut out = String::new();
    let mut last = 0;
    for (i, t) in tokens.iter().enumerate() {
        let lexer::Tok::Word { text, quoted: false } = &t.tok else { continue };
        let is_call = tokens.get(i + 1).is_some_and(|n| n.tok == lexer::Tok::Punct("(".into()));
        let qualified = i > 0 && tokens[i - 1].tok == lexer::Tok::Punct(".".into());
        if is_call && !qualified && ["seahash", "kafka_murmur2", "crc32"].contains(&text.to_ascii_lowercase().as_str()) {
            out.push_str(&expr[last..t.start]);
            out.push_str("sink.");
            out.push_str(&text.to_ascii_lowercase());
            last = t.end;
        }
    }
    out.push_str(&expr[last..]);
    out
}

#[cfg(test)]
mod tests;
