//! What parsing produces: [`Statement`]s (a [`Command`] in the function API's
//! terms, the dialect it was written in) and [`ParseError`]s that point at a token.

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
    CreateSecret {
        name: String,
        value: String,
        if_not_exists: bool,
        or_replace: bool,
    },
    AlterSecret {
        name: String,
        value: String,
        if_exists: bool,
    },
    /// Kinetica credential: `kind` is its TYPE; options hold the rest.
    CreateCredential {
        name: String,
        kind: String,
        identity: Option<String>,
        secret: Option<String>,
        options: Options,
        or_replace: bool,
    },
    /// New values for type/identity/secret and options.
    AlterCredential {
        name: String,
        set: Options,
    },
    CreateConnection {
        name: String,
        connector: String,
        options: Options,
        if_not_exists: bool,
        or_replace: bool,
    },
    AlterConnection {
        name: String,
        set: Options,
    },
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
    Drop {
        kind: ObjectKind,
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    /// Kinetica's `EXPORT TABLE t | QUERY (..) INTO .. WITH OPTIONS (DATA SINK NAME
    /// = ..)`: the query's rows, once, through the data sink (a connection).
    Export {
        query: String,
        connection: String,
        /// The export's name (`FILE PATH`): where its files go under the location.
        name: Option<String>,
        options: Options,
    },
    /// `kind` None: every kind. `name` None: every object.
    Show {
        kind: Option<ObjectKind>,
        name: Option<String>,
    },
    Grant {
        revoke: bool,
        kind: ObjectKind,
        name: String,
        roles: Vec<String>,
    },
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
