//! RisingWave: `CREATE SINK name [FROM t | AS select] WITH (connector = '..', ..)
//! [FORMAT PLAIN|UPSERT|DEBEZIUM ENCODE JSON|AVRO|TEXT|BYTES [(..)] [KEY ENCODE ..]]`
//! and `CREATE CONNECTION name WITH (type = '..', ..)`.

use super::ast::{Command, Dialect, Options, ParseError, Statement, Value};
use super::parser::{stmt, unsupported, PResult, Parser};

/// RisingWave connectors pg_sink does not have.
const ELSEWHERE: &[&str] = &[
    "clickhouse",
    "doris",
    "starrocks",
    "elasticsearch",
    "opensearch",
    "redis",
    "mongodb",
    "deltalake",
    "bigquery",
    "cassandra",
    "scylladb",
    "pulsar",
    "mqtt",
    "snowflake",
    "blackhole",
    "sqlserver",
    "google_pubsub",
    "dynamodb",
    "webhdfs",
    "hdfs",
    "kafka_connect",
    "postgres",
    "mysql",
];

impl Parser<'_> {
    pub fn risingwave_sink(&mut self, name: String, if_not_exists: bool) -> PResult<Statement> {
        let source = if self.eat_kw("FROM") {
            self.table_name()?
        } else if self.eat_kw("AS") {
            if !self.peek_kw("SELECT") {
                return Err(self.unexpected(&["SELECT"]));
            }
            self.raw_until("a SELECT query", |p| p.peek_kw("WITH"))?
        } else {
            return Err(self.unexpected(&["FROM", "AS", "IN CLUSTER"]));
        };
        if !self.peek_kw("WITH") {
            return Err(self.unexpected(&["WITH", "INTO"]));
        }
        self.pos += 1;
        let open = self.offset();
        let list = self.assignment_list()?;
        let mut connector = None;
        let mut connection = None;
        let mut options: Options = Vec::new();
        for (k, v, at) in list {
            match (k.as_str(), v) {
                ("connector", Value::Text(c)) => {
                    if ELSEWHERE.contains(&c.as_str()) {
                        return Err(unsupported(
                            self.src,
                            at,
                            format!("connector \"{c}\" is not supported"),
                            format!(
                                "pg_sink connectors: {}.",
                                crate::engine::connector::registry::REGISTRY.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    connector = Some(c);
                }
                ("connection", Value::Text(c)) => connection = Some(c),
                (_, v) => options.push((k, v)),
            }
        }
        if connector.is_none() && connection.is_none() {
            return Err(ParseError::at(self.src, open, "missing connector in WITH options", &["connector = '<kafka|kinesis|nats|jdbc|...>'"]));
        }
        if connector.as_deref() == Some("s3") {
            options = s3_options(self.src, open, options)?;
        }
        if self.eat_kw("FORMAT") {
            let envelope = if self.eat_kw("PLAIN") {
                "append-only"
            } else if self.eat_kw("UPSERT") {
                "upsert"
            } else if self.eat_kw("DEBEZIUM") {
                "debezium"
            } else {
                return Err(self.unexpected(&["PLAIN", "UPSERT", "DEBEZIUM"]));
            };
            self.expect_kw("ENCODE")?;
            let encode = self.encode()?;
            options.push(("envelope".into(), Value::Text(envelope.into())));
            options.push(("value_format".into(), Value::Text(encode.clone())));
            if self.peek_punct("(") {
                options.extend(self.assignment_list()?.into_iter().map(|(k, v, _)| (k, v)));
            }
            let key = if self.eat_kws(&["KEY", "ENCODE"]) { self.encode()? } else { encode };
            options.push(("key_format".into(), Value::Text(key)));
        }
        if !self.at_end() {
            return Err(self.unexpected(&["FORMAT", "end of statement"]));
        }
        Ok(stmt(
            Dialect::RisingWave,
            "CREATE SINK",
            Command::CreateSink { name, source, connector, connection, key: None, options, if_not_exists, or_replace: false },
        ))
    }

    fn encode(&mut self) -> PResult<String> {
        for e in ["JSON", "AVRO", "TEXT", "BYTES"] {
            if self.eat_kw(e) {
                return Ok(e.to_ascii_lowercase());
            }
        }
        for e in ["PROTOBUF", "TEMPLATE", "PARQUET", "CSV"] {
            if self.peek_kw(e) {
                let at = self.offset();
                return Err(unsupported(self.src, at, format!("ENCODE {e} is not supported"), "Use ENCODE JSON, AVRO, TEXT or BYTES."));
            }
        }
        Err(self.unexpected(&["JSON", "AVRO", "TEXT", "BYTES"]))
    }

    pub fn risingwave_connection(&mut self, name: String, if_not_exists: bool) -> PResult<Statement> {
        self.expect_kw("WITH")?;
        let open = self.offset();
        let mut connector = None;
        let mut options = Vec::new();
        for (k, v, _) in self.assignment_list()? {
            match (k.as_str(), v) {
                ("type", Value::Text(t)) => connector = Some(t),
                (_, v) => options.push((k, v)),
            }
        }
        let Some(connector) = connector else {
            return Err(ParseError::at(self.src, open, "missing type in connection options", &["type = 'kafka'"]));
        };
        let connector = if connector == "schema_registry" { "confluent_schema_registry".to_string() } else { connector };
        Ok(stmt(Dialect::RisingWave, "CREATE CONNECTION", Command::CreateConnection { name, connector, options, if_not_exists, or_replace: false }))
    }
}

/// RisingWave's S3 sink options onto the object-storage connector's.
fn s3_options(src: &str, at: usize, options: Options) -> PResult<Options> {
    let mut bucket = None;
    let mut path = None;
    let mut out = Vec::new();
    for (k, v) in options {
        let text = match &v {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        };
        match k.as_str() {
            "s3.bucket_name" => bucket = text,
            "s3.path" => path = text,
            "s3.region_name" => out.push(("s3_region".into(), v)),
            "s3.credentials.access" => out.push(("aws.credentials.access_key_id".into(), v)),
            "s3.credentials.secret" => out.push(("aws.credentials.secret_access_key".into(), v)),
            "s3.endpoint_url" => out.push(("endpoint".into(), v)),
            _ => out.push((k, v)),
        }
    }
    match (bucket, path) {
        (Some(b), p) => {
            let p = p.map(|p| format!("/{}", p.trim_matches('/'))).unwrap_or_default();
            out.push(("location".into(), Value::Text(format!("s3://{b}{p}"))));
        }
        (None, Some(_)) => return Err(ParseError::at(src, at, "s3.path needs s3.bucket_name", &["s3.bucket_name = '..'"])),
        (None, None) => {}
    }
    Ok(out)
}
