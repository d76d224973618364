//! Kinetica: `CREATE DATA SINK .. LOCATION = '..' [WITH OPTIONS (..)]` (a
//! connection whose connector follows from the location), `CREATE CREDENTIAL`, and
//! `CREATE STREAM .. ON TABLE .. WITH OPTIONS (DATASINK_NAME = ..)` (a sink), and
//! `EXPORT TABLE t | QUERY (..) INTO FILE PATH '..' | REMOTE TABLE '..' [FORMAT ..]
//! WITH OPTIONS (DATA SINK NAME = ..)` (a one-shot export).

use super::ast::{Command, Dialect, Options, ParseError, Statement, Value};
use super::parser::{stmt, unsupported, PResult, Parser};

/// The connector a Kinetica location names.
pub fn connector_for(location: &str) -> Result<&'static str, String> {
    let lower = location.trim().to_ascii_lowercase();
    let scheme = lower.split("://").next().unwrap_or_default();
    Ok(match scheme {
        _ if lower.starts_with("jdbc:") => "jdbc",
        "kafka" => "kafka",
        "table" => "table",
        "s3" => "s3",
        "gcs" => "gcs",
        "azure" => "azblob",
        "http" | "https" => "webhook",
        "file" => "file",
        "hdfs" => "hdfs",
        _ => return Err(format!("unknown data sink location \"{location}\"")),
    })
}

/// Kinetica data sink options in the function API's spelling.
pub fn data_sink_options(src: &str, list: Vec<(String, Value, usize)>) -> PResult<Options> {
    let mut out = Vec::new();
    for (k, v, at) in list {
        match k.as_str() {
            "skip_validation" => {
                let skip = match &v {
                    Value::Text(t) => match t.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(ParseError::at(src, at, format!("invalid value for SKIP_VALIDATION: \"{t}\""), &["'true'", "'false'"])),
                    },
                    _ => return Err(ParseError::at(src, at, "invalid value for SKIP_VALIDATION", &["'true'", "'false'"])),
                };
                out.push(("validate".into(), Value::Text((!skip).to_string())));
            }
            "location" | "destination" => out.push(("location".into(), v)),
            _ => out.push((k, v)),
        }
    }
    Ok(out)
}

impl Parser<'_> {
    pub fn kinetica_data_sink(&mut self, or_replace: bool) -> PResult<Statement> {
        let name = self.object_name("a data sink name")?;
        self.expect_kw("LOCATION")?;
        self.expect_punct("=")?;
        let at = self.offset();
        let location = self.string("the location as a string, e.g. 'kafka://host:9092'")?;
        let connector = connector_for(&location).map_err(|e| {
            let mut err = unsupported(self.src, at, e, "Locations: kafka://, table://, s3, gcs, azure, hdfs://, http(s)://, jdbc:, file://.");
            if !location.to_ascii_lowercase().starts_with("hdfs") {
                err.kind = super::ast::ErrorKind::Syntax;
                err.expected = vec!["a location such as 'kafka://host:port'".into()];
            }
            err
        })?;
        let mut options = vec![("location".to_string(), Value::Text(location))];
        if self.eat_kw("WITH") {
            self.expect_kw("OPTIONS")?;
            let list = self.assignment_list()?;
            options.extend(data_sink_options(self.src, list)?);
        }
        Ok(stmt(
            Dialect::Kinetica,
            "CREATE DATA SINK",
            Command::CreateConnection { name, connector: connector.into(), options, if_not_exists: false, or_replace },
        ))
    }

    pub fn kinetica_credential(&mut self, or_replace: bool) -> PResult<Statement> {
        let name = self.object_name("a credential name")?;
        let (mut kind, mut identity, mut secret) = (None, None, None);
        loop {
            let slot = if self.eat_kw("TYPE") {
                &mut kind
            } else if self.eat_kw("IDENTITY") {
                &mut identity
            } else if self.eat_kw("SECRET") {
                &mut secret
            } else {
                break;
            };
            self.expect_punct("=")?;
            *slot = Some(self.string("a string")?);
            self.eat_punct(",");
        }
        let Some(kind) = kind else {
            return Err(self.unexpected(&["TYPE = '<credential type>'"]));
        };
        let mut options = Vec::new();
        if self.eat_kw("WITH") {
            self.expect_kw("OPTIONS")?;
            options = self.assignment_list()?.into_iter().map(|(k, v, _)| (k, v)).collect();
        }
        Ok(stmt(
            Dialect::Kinetica,
            "CREATE CREDENTIAL",
            Command::CreateCredential { name, kind: kind.to_ascii_lowercase(), identity, secret, options, or_replace },
        ))
    }

    pub fn kinetica_stream(&mut self, or_replace: bool) -> PResult<Statement> {
        if or_replace {
            let at = self.offset();
            return Err(unsupported(
                self.src,
                at,
                "CREATE OR REPLACE STREAM is not supported",
                "Drop the stream first (its delivered position is lost), then create it again.",
            ));
        }
        let name = self.object_name("a stream name")?;
        self.expect_kw("ON")?;
        self.eat_kw("TABLE");
        let table = self.table_name()?;
        if self.eat_kw("REFRESH") {
            if self.peek_kw("EVERY") {
                let at = self.offset();
                return Err(unsupported(
                    self.src,
                    at,
                    "REFRESH EVERY is not supported",
                    "Streams deliver on change; for periodic delivery use TYPE/schedule = 'manual' and sink.sync() from pg_cron.",
                ));
            }
            self.expect_kws(&["ON", "CHANGE"])?;
        }
        let filter = if self.eat_kw("WHERE") { Some(self.raw_until("a filter expression", |p| p.peek_kws(&["WITH", "OPTIONS"]))?) } else { None };
        if !self.peek_kws(&["WITH", "OPTIONS"]) {
            return Err(self.unexpected(&["WITH OPTIONS", "WHERE", "REFRESH ON CHANGE"]));
        }
        self.pos += 2;
        let open = self.offset();
        let mut connection = None;
        let mut options = Vec::new();
        for (k, v, at) in self.assignment_list()? {
            match (k.as_str(), v) {
                ("datasink_name", Value::Text(ds)) => connection = Some(ds),
                ("event", _) => {
                    return Err(unsupported(self.src, at, "the EVENT option is not supported", "A stream delivers every insert, update and delete; choose what reaches the target with TYPE = 'append-only' (and FORCE_APPEND_ONLY = 'true'), 'upsert' or 'debezium'."));
                }
                (_, v) => options.push((k, v)),
            }
        }
        let Some(connection) = connection else {
            return Err(ParseError::at(self.src, open, "missing DATASINK_NAME in the stream options", &["DATASINK_NAME = '<data sink>'"]));
        };
        let source = match filter {
            Some(f) => format!("SELECT * FROM {table} WHERE {f}"),
            None => table,
        };
        Ok(stmt(
            Dialect::Kinetica,
            "CREATE STREAM",
            Command::CreateSink {
                name,
                source,
                connector: None,
                connection: Some(connection),
                key: None,
                options,
                if_not_exists: false,
                or_replace: false,
            },
        ))
    }

    pub fn kinetica_export(&mut self) -> PResult<Statement> {
        self.expect_kw("EXPORT")?;
        let query = if self.eat_kw("TABLE") {
            format!("SELECT * FROM {}", self.table_name()?)
        } else if self.eat_kw("QUERY") {
            self.expect_punct("(")?;
            let q = self.raw_until("a SELECT statement", |_| false)?;
            self.expect_punct(")")?;
            q
        } else {
            return Err(self.unexpected(&["TABLE", "QUERY"]));
        };
        self.expect_kw("INTO")?;
        let mut options: Options = Vec::new();
        let mut name = None;
        if self.eat_kws(&["FILE", "PATH"]) {
            let at = self.offset();
            let path = self.string("a file path as a string")?;
            let plain = !path.is_empty() && path != "." && path != ".." && path.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !plain {
                return Err(ParseError::at(self.src, at, format!("invalid FILE PATH \"{path}\""), &["a name of letters, digits, _, - and ."])
                    .hint("The export's files go under the data sink's location, in a directory of this name."));
            }
            name = Some(path);
        } else if self.eat_kws(&["REMOTE", "TABLE"]) {
            options.push(("table.name".into(), Value::Text(self.string("the remote table's name as a string")?)));
        } else if self.peek_kws(&["REMOTE", "QUERY"]) {
            let at = self.offset();
            return Err(unsupported(self.src, at, "INTO REMOTE QUERY is not supported", "Export INTO REMOTE TABLE '<table>' through a jdbc data sink."));
        } else {
            return Err(self.unexpected(&["FILE PATH", "REMOTE TABLE"]));
        }
        if self.eat_kw("FORMAT") {
            self.eat_kw("DELIMITED");
            let format = if self.eat_kw("TEXT") {
                "csv"
            } else if self.eat_kw("PARQUET") {
                "parquet"
            } else if self.eat_kw("JSON") {
                "jsonl"
            } else {
                return Err(self.unexpected(&["TEXT", "DELIMITED TEXT", "PARQUET", "JSON"]));
            };
            options.push(("file_format".into(), Value::Text(format.into())));
        }
        if !self.peek_kws(&["WITH", "OPTIONS"]) {
            return Err(self.unexpected(&["WITH OPTIONS (DATA SINK NAME = '<data sink>')", "FORMAT"]));
        }
        self.pos += 2;
        let open = self.offset();
        let mut connection = None;
        for (k, v, _) in self.assignment_list()? {
            match (k.as_str(), v) {
                ("data_sink_name" | "datasink_name", Value::Text(ds)) => connection = Some(ds),
                (_, v) => options.push((k, v)),
            }
        }
        let Some(connection) = connection else {
            return Err(ParseError::at(self.src, open, "missing DATA SINK NAME in the export options", &["DATA SINK NAME = '<data sink>'"]));
        };
        Ok(stmt(Dialect::Kinetica, "EXPORT", Command::Export { query, connection, name, options }))
    }
}
