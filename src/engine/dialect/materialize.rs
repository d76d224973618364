//! Materialize: `CREATE SINK .. INTO KAFKA CONNECTION`, and `CREATE CONNECTION ..
//! TO KAFKA | TO CONFLUENT SCHEMA REGISTRY` (plus the seed's older `FOR ..` form).

use super::ast::{Command, Dialect, Options, ParseError, Statement, Value};
use super::parser::{stmt, unsupported, PResult, Parser};

impl Parser<'_> {
    pub fn materialize_sink(&mut self, name: String, if_not_exists: bool) -> PResult<Statement> {
        let mut notices = Vec::new();
        if self.eat_kw("IN") {
            self.expect_kw("CLUSTER")?;
            let cluster = self.ident("a cluster name")?;
            notices.push(format!("IN CLUSTER {cluster} is ignored: pg_sink sinks run in the database's background worker"));
        }
        self.expect_kw("FROM")?;
        let source = self.table_name()?;
        self.expect_kw("INTO")?;
        if !self.eat_kw("KAFKA") {
            if self.peek().is_some() && !self.peek_punct("(") {
                let at = self.offset();
                return Err(unsupported(
                    self.src,
                    at,
                    "Materialize-style sinks go INTO KAFKA CONNECTION",
                    "For other targets, use RisingWave's CREATE SINK .. WITH (connector = '..') or Kinetica's CREATE DATA SINK.",
                ));
            }
            return Err(self.unexpected(&["KAFKA"]));
        }
        self.expect_kw("CONNECTION")?;
        let connection = self.object_name("a connection name")?;
        if !self.peek_punct("(") {
            return Err(self.unexpected(&["\"(\" and the TOPIC option"]));
        }
        let open = self.offset();
        let mut options = self.materialize_options(&[])?;
        if !options.iter().any(|(k, _)| k == "topic") {
            return Err(ParseError::at(self.src, open, "missing TOPIC in the Kafka connection options", &["TOPIC 'name'"]));
        }
        let mut key = None;
        if self.peek_kw("KEY") && self.peek_at(1).is_some_and(|_| !self.peek_kw_at(1, "FORMAT")) {
            self.pos += 1;
            self.expect_punct("(")?;
            let mut cols = Vec::new();
            loop {
                cols.push(self.ident("a column name")?);
                if !self.eat_punct(",") {
                    break;
                }
            }
            self.expect_punct(")")?;
            key = Some(cols);
            if self.eat_kws(&["NOT", "ENFORCED"]) {
                options.push(("key_not_enforced".into(), Value::Text("true".into())));
            }
        }
        if self.eat_kw("HEADERS") {
            let col = self.ident("a column name")?;
            options.push(("headers".into(), Value::Text(col)));
        }
        if self.eat_kw("FORMAT") {
            let f = self.format_spec(&mut options)?;
            options.push(("format".into(), Value::Text(f)));
        } else if self.peek_kws(&["KEY", "FORMAT"]) {
            self.pos += 2;
            let k = self.format_spec(&mut options)?;
            self.expect_kws(&["VALUE", "FORMAT"])?;
            let v = self.format_spec(&mut options)?;
            options.push(("key_format".into(), Value::Text(k)));
            options.push(("value_format".into(), Value::Text(v)));
        }
        if self.eat_kw("ENVELOPE") {
            let e = if self.eat_kw("DEBEZIUM") {
                "debezium"
            } else if self.eat_kw("UPSERT") {
                "upsert"
            } else {
                return Err(self.unexpected(&["DEBEZIUM", "UPSERT"]));
            };
            options.push(("envelope".into(), Value::Text(e.into())));
        }
        if self.eat_kw("WITH") {
            if !self.peek_punct("(") {
                return Err(self.unexpected(&["\"(\""]));
            }
            options.extend(self.materialize_options(&[])?);
        }
        if !self.at_end() {
            return Err(self.unexpected(&["KEY", "HEADERS", "FORMAT", "KEY FORMAT", "ENVELOPE", "WITH", "end of statement"]));
        }
        let mut s = stmt(
            Dialect::Materialize,
            "CREATE SINK",
            Command::CreateSink {
                name,
                source,
                connector: Some("kafka".into()),
                connection: Some(connection),
                key,
                options,
                if_not_exists,
                or_replace: false,
            },
        );
        s.notices = notices;
        Ok(s)
    }

    /// `JSON | TEXT | BYTES | AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION c [( .. )]`;
    /// the registry connection and its options join `options`.
    fn format_spec(&mut self, options: &mut Options) -> PResult<String> {
        for f in ["JSON", "TEXT", "BYTES"] {
            if self.eat_kw(f) {
                return Ok(f.to_ascii_lowercase());
            }
        }
        if self.eat_kw("AVRO") {
            self.expect_kw("USING")?;
            self.expect_kws(&["CONFLUENT", "SCHEMA", "REGISTRY", "CONNECTION"])?;
            let at = self.offset();
            let csr = self.object_name("a schema registry connection name")?;
            match options.iter().find(|(k, _)| k == "csr_connection") {
                Some((_, Value::Text(other))) if *other != csr => {
                    return Err(unsupported(
                        self.src,
                        at,
                        "the key and the value must use the same schema registry connection",
                        format!("Use CONNECTION {other} for both."),
                    ));
                }
                Some(_) => {}
                None => options.push(("csr_connection".into(), Value::Text(csr))),
            }
            if self.peek_punct("(") {
                options.extend(self.materialize_options(&["null_defaults"])?);
            }
            return Ok("avro".into());
        }
        if self.peek_kw("PROTOBUF") || self.peek_kw("CSV") {
            let at = self.offset();
            return Err(unsupported(
                self.src,
                at,
                format!("FORMAT {} is not supported for sinks", self.peek().map(|t| t.shown(self.src)).unwrap_or_default()),
                "Use JSON, AVRO, TEXT or BYTES.",
            ));
        }
        Err(self.unexpected(&["JSON", "AVRO", "TEXT", "BYTES"]))
    }

    pub fn materialize_connection(&mut self, name: String, if_not_exists: bool) -> PResult<Statement> {
        let (connector, parens) = if self.eat_kw("TO") {
            (self.connection_type()?, true)
        } else if self.eat_kw("FOR") {
            (self.connection_type()?, false)
        } else {
            return Err(self.unexpected(&["TO", "FOR", "WITH"]));
        };
        if parens && !self.peek_punct("(") {
            return Err(self.unexpected(&["\"(\""]));
        }
        let mut options = self.materialize_options(&[])?;
        if self.eat_kw("WITH") {
            if !self.peek_punct("(") {
                return Err(self.unexpected(&["\"(\""]));
            }
            options.extend(self.materialize_options(&[])?);
        }
        Ok(stmt(Dialect::Materialize, "CREATE CONNECTION", Command::CreateConnection { name, connector, options, if_not_exists, or_replace: false }))
    }

    fn connection_type(&mut self) -> PResult<String> {
        if self.eat_kw("KAFKA") {
            return Ok("kafka".into());
        }
        if self.eat_kws(&["CONFLUENT", "SCHEMA", "REGISTRY"]) {
            return Ok("confluent_schema_registry".into());
        }
        for other in ["AWS", "SSH", "POSTGRES", "MYSQL", "AWS PRIVATELINK", "SQL"] {
            if self.peek_kw(other) {
                let at = self.offset();
                return Err(unsupported(
                    self.src,
                    at,
                    format!("{other} connections are not supported"),
                    "pg_sink connections are KAFKA or CONFLUENT SCHEMA REGISTRY here; other targets take their options on the sink.",
                ));
            }
        }
        Err(self.unexpected(&["KAFKA", "CONFLUENT SCHEMA REGISTRY"]))
    }
}
