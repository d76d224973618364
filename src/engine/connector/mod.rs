//! Connectors move encoded records to a target and say when they are durable there.
//! That is all they do: envelopes and encoders are chosen elsewhere. A connector is
//! one file in this folder implementing [`Connector`] plus one [`ConnectorSpec`] in
//! [`registry::REGISTRY`] naming it and its options. This file holds what every
//! connector shares; it imports none of them.
//!
//! Progress only advances after [`Connector::deliver`] returns `Ok`: that is the
//! connector's promise that the whole batch survives a crash of this process.

pub mod iceberg;
pub mod jdbc;
pub mod kafka;
pub mod kinesis;
pub mod nats;
pub mod object;
pub mod reach;
pub mod registry;
pub mod table;
pub mod tls;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::envelope::{Draft, EnvelopeKind};
use super::error::{Result, SinkError};
use super::lsn::Lsn;

/// One encoded record plus the draft it came from (for connectors that apply
/// changes structurally, like `table`).
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub draft: Draft,
    pub commit_lsn: Lsn,
    /// Its position in its transaction (in its chunk, for the initial snapshot),
    /// counted across the parts of a large transaction and over records left out
    /// as dead letters: stable whenever the transaction is read again.
    pub ordinal: u32,
    pub commit_time_us: i64,
    /// The transaction's header values, shared by its records.
    pub stamp: Arc<TxnStamp>,
}

#[cfg(test)]
impl Record {
    /// A record of the transaction committed at `lsn`, with no key or value.
    pub fn for_test(lsn: Lsn) -> Self {
        use crate::engine::envelope::{Draft, Op, Payload};
        Record {
            key: None,
            value: None,
            draft: Draft { key: None, payload: Payload::Truncate(vec![]), op: Op::Truncate },
            commit_lsn: lsn,
            ordinal: 0,
            commit_time_us: 0,
            stamp: Arc::default(),
        }
    }
}

/// Header values common to a transaction's records, formatted once.
#[derive(Debug, Clone, Default)]
pub struct TxnStamp {
    pub lsn: String,
    pub timestamp: String,
}

impl Record {
    /// The headers every record carries: commit LSN, commit time, operation.
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [(HEADER_LSN, &self.stamp.lsn), (HEADER_TIMESTAMP, &self.stamp.timestamp), (HEADER_OP, self.draft.op.as_str())]
    }
}

/// Reserved header prefix (our `materialize-` equivalent).
pub const HEADER_PREFIX: &str = "pg_sink-";
/// Commit LSN of the change's transaction.
pub const HEADER_LSN: &str = "pg_sink-lsn";
/// Commit time, epoch milliseconds with microsecond fraction.
pub const HEADER_TIMESTAMP: &str = "pg_sink-timestamp";
/// `read` (snapshot), `insert`, `update`, `delete` or `truncate`.
pub const HEADER_OP: &str = "pg_sink-op";

/// Write `{"key": K, "value": V, "headers": {"pg_sink-lsn": .., ..}}` for a record:
/// the self-describing layout of targets without headers of their own (files,
/// Kinesis). K and V are embedded as they are when the encoder wrote JSON, as JSON
/// strings when they are other UTF-8 text, as `{"base64": ".."}` when they are
/// binary (Avro), and `null` when absent.
pub fn write_wrapped(r: &Record, key_is_json: bool, value_is_json: bool, out: &mut Vec<u8>) {
    fn embed(bytes: &Option<Vec<u8>>, is_json: bool, out: &mut Vec<u8>) {
        match bytes {
            None => out.extend_from_slice(b"null"),
            Some(b) if is_json => out.extend_from_slice(b),
            // Text encoders' output is a JSON string; binary (Avro, BYTES) that is
            // not UTF-8 is {"base64": ".."}, so nothing is lost.
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => out.extend(serde_json::to_vec(s).unwrap_or_else(|_| b"null".to_vec())),
                Err(_) => {
                    use base64::Engine as _;
                    out.extend_from_slice(b"{\"base64\":\"");
                    out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(b).as_bytes());
                    out.extend_from_slice(b"\"}");
                }
            },
        }
    }
    out.extend_from_slice(b"{\"key\":");
    embed(&r.key, key_is_json, out);
    out.extend_from_slice(b",\"value\":");
    embed(&r.value, value_is_json, out);
    out.extend_from_slice(b",\"headers\":{");
    for (i, (k, v)) in r.headers().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Header names and values are ASCII without quotes or backslashes (LSNs,
        // decimal timestamps, operation names).
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":\"");
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
}

/// Decode `%XX` escapes (URL user info, query values, SAS tokens); anything else,
/// including a stray `%`, stays as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whole transactions, in commit order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Commit LSN of the first transaction: names retried output deterministically.
    pub start_lsn: Lsn,
    /// End LSN of the last transaction: the position confirmed once durable.
    pub end_lsn: Lsn,
    pub transactions: usize,
    pub changes: usize,
    /// Whether key / value bytes are JSON documents (connectors may embed them).
    pub key_is_json: bool,
    pub value_is_json: bool,
    /// Framing bytes at the start of each key (a registry's magic byte and schema
    /// id) that partitioning skips.
    pub key_prefix: usize,
    /// `Some(n)` for the n-th chunk of the initial snapshot (all share one LSN).
    pub snapshot_chunk: Option<u32>,
    /// Set when the batch holds one part of a transaction too large to hold
    /// whole (`pg_sink.transaction_part_changes`); such a batch holds nothing else.
    pub part: Option<Part>,
}

/// One part of a large transaction. Parts are cut after a fixed number of
/// changes, so a retry over the same WAL cuts the same parts. Every part but the
/// last has `transactions == 0` and `end_lsn` = the transaction's commit LSN (its
/// end is not known before its COMMIT); the last carries the COMMIT and the
/// transaction's end LSN, like any batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Part {
    /// 0 for the first part.
    pub index: u32,
    /// This part ends with the transaction's COMMIT.
    pub last: bool,
    /// Records of the same transaction in the earlier parts (numbering that
    /// continues across parts, as JetStream message ids and webhook keys need).
    pub records_before: usize,
}

/// Where a batch ends in a sink's history, for targets that keep their own
/// progress (Kafka's progress topic): the end LSN of its last transaction; for
/// a part of a large transaction but its last, its commit LSN and the number of
/// parts up to and including it; and, because every chunk of the initial
/// snapshot carries the snapshot's one LSN, the number of snapshot chunks up to
/// and including it. No two batches of a sink share a position, and positions
/// grow in delivery order (the snapshot comes before a transaction that commits
/// at its LSN, hence `part` before `chunk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub lsn: Lsn,
    pub part: u32,
    pub chunk: u32,
}

impl Batch {
    pub fn position(&self) -> Position {
        let part = match self.part {
            Some(p) if !p.last => p.index + 1,
            _ => 0,
        };
        Position { lsn: self.end_lsn, part, chunk: self.snapshot_chunk.map_or(0, |c| c + 1) }
    }

    /// Whether this batch is a part of a large transaction other than its last.
    pub fn is_open_part(&self) -> bool {
        self.part.is_some_and(|p| !p.last)
    }

    pub fn bytes(&self) -> usize {
        self.records.iter().map(|r| r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())).sum()
    }
}

/// SQL access for connectors whose target is this same database (`table`). The glue
/// implements it over SPI inside the transaction that also records progress, so
/// such targets are exactly-once.
pub trait SqlSession {
    /// Run a statement with text parameters; returns rows affected.
    fn execute(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64>;
    /// Run a query with text parameters; every column comes back as text.
    fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>>;
    /// Like `query`, inside a subtransaction: a failing query gives `Ok(None)` and
    /// leaves the surrounding transaction usable.
    fn query_or_none(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<Vec<Vec<Option<String>>>>>;
    /// Like `query`, but over the latest committed state: once transaction
    /// `after_xid` (0: none) has ended, under a snapshot taken then, whatever the
    /// snapshot or isolation level of the surrounding transaction. For reading a
    /// source row that a change just read from the WAL must be visible in.
    fn query_latest(&mut self, sql: &str, params: &[Option<&str>], after_xid: u32) -> Result<Vec<Vec<Option<String>>>> {
        let _ = after_xid;
        self.query(sql, params)
    }
    /// Like `execute`, inside a subtransaction: the statement's own ERROR (a
    /// constraint, a cast) comes back as the inner error and leaves the
    /// surrounding transaction usable.
    fn execute_guarded(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Result<u64>> {
        Ok(self.execute(sql, params))
    }
}

/// SQL type names (`format_type`) of a relation's columns, for casting text values.
pub fn sql_types(rel: &crate::engine::change::Relation, sql: &mut dyn SqlSession) -> Result<Vec<String>> {
    let oids = format!("{{{}}}", rel.columns.iter().map(|c| c.ty.oid.to_string()).collect::<Vec<_>>().join(","));
    let mods = format!("{{{}}}", rel.columns.iter().map(|c| c.type_modifier.to_string()).collect::<Vec<_>>().join(","));
    let rows = sql
        .query("SELECT format_type(o, m) FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS u(o, m, n) ORDER BY n", &[Some(&oids), Some(&mods)])?;
    Ok(rows.into_iter().map(|r| r.into_iter().next().flatten().unwrap_or_else(|| "text".into())).collect())
}

pub fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" | "t" => Ok(true),
        "false" | "off" | "no" | "0" | "f" => Ok(false),
        _ => Err(SinkError::config(format!("invalid value for boolean option \"{name}\": \"{value}\"")).hint("Use true or false.")),
    }
}

/// What a connector is built from: the sink's settings it may need.
#[derive(Clone)]
pub struct ConnectorConfig {
    pub sink_name: String,
    /// Database the sink lives in (names transactional ids and the like).
    pub database: String,
    /// Identifies this sink across drops and re-creations of the same name
    /// (`<database>-<id>-<creation time>`): keys its progress at the target.
    pub sink_uid: String,
    pub envelope: EnvelopeKind,
    pub key_columns: Vec<String>,
    /// Connector options, validated against [`ConnectorSpec::options`].
    pub options: BTreeMap<String, String>,
    /// The sink's columns as `(name, format_type)`, known when the sink is created
    /// (for [`Connector::check`] to compare with the target); empty in the worker.
    pub columns: Vec<(String, String)>,
    /// The sink's owner is not a superuser: a PostgreSQL target must show that it
    /// asked for the password (postgres_fdw's rule), so the owner cannot borrow
    /// this server's trust or peer authentication as another role.
    pub password_required: bool,
}

impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("sink_name", &self.sink_name)
            .field("database", &self.database)
            .field("sink_uid", &self.sink_uid)
            .field("envelope", &self.envelope)
            .field("key_columns", &self.key_columns)
            .field("options", &crate::engine::secret::Redacted(&self.options))
            .field("columns", &self.columns)
            .finish()
    }
}

impl ConnectorConfig {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    /// A boolean option, `default` when absent.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool> {
        self.get(name).map(|v| parse_bool(name, v)).transpose().map(|v| v.unwrap_or(default))
    }

    /// The `timeout_ms` option (at least 100 ms), `default_ms` when absent.
    pub fn timeout(&self, default_ms: u64) -> Result<std::time::Duration> {
        let ms = match self.get("timeout_ms") {
            None => default_ms,
            Some(v) => v.parse::<u64>().ok().filter(|n| *n >= 100).ok_or_else(|| {
                SinkError::config(format!("invalid value for option \"timeout_ms\": \"{v}\"")).hint("Give milliseconds, at least 100.")
            })?,
        };
        Ok(std::time::Duration::from_millis(ms))
    }

    /// A config of options alone (a connection's check).
    pub fn empty() -> Self {
        ConnectorConfig {
            sink_name: String::new(),
            database: String::new(),
            sink_uid: String::new(),
            envelope: EnvelopeKind::Upsert,
            key_columns: vec![],
            options: BTreeMap::new(),
            columns: vec![],
            password_required: false,
        }
    }

    /// A config with these options, for unit tests.
    #[cfg(test)]
    pub fn for_test(pairs: &[(&str, &str)]) -> Self {
        ConnectorConfig {
            sink_name: "s".into(),
            database: "db".into(),
            sink_uid: "db-1-2".into(),
            envelope: EnvelopeKind::Upsert,
            key_columns: vec![],
            options: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            columns: vec![],
            password_required: false,
        }
    }
}

#[async_trait(?Send)]
pub trait Connector {
    /// Check that the target is reachable and usable (at sink creation, unless the
    /// user says `validate = false`).
    async fn check(&mut self) -> Result<()> {
        Ok(())
    }
    /// Deliver a batch. `Ok` means durable at the target, or, for the chunks of the
    /// initial snapshot, durable once [`Connector::finish_step`] returns `Ok`.
    async fn deliver(&mut self, batch: &Batch, sql: &mut dyn SqlSession) -> Result<()>;
    /// Called after the last batch of a step, before its progress is recorded.
    /// Connectors that keep the snapshot in one target transaction commit it here.
    async fn finish_step(&mut self) -> Result<()> {
        Ok(())
    }
    /// Asked once, when the sink's `errors.policy` sets refused records aside:
    /// a connector whose target shares the step's transaction (`table`) then
    /// leaves a refused record out as it goes and reports it with
    /// [`Connector::take_refused`] instead of failing the batch.
    fn set_aside_refusals(&mut self) {}
    /// The records (index, why) of the last delivered batch left out that way.
    fn take_refused(&mut self) -> Vec<(usize, SinkError)> {
        Vec::new()
    }
}

pub struct ConnectorSpec {
    pub name: &'static str,
    /// (option, what it means) — unknown options are refused.
    pub options: &'static [(&'static str, &'static str)],
    /// Option names that must be present.
    pub required: &'static [&'static str],
    /// Prefixes of free-form options passed through to the client library
    /// (`properties.` for librdkafka, as RisingWave spells it).
    pub option_prefixes: &'static [&'static str],
    /// Whether the connector can apply an UPDATE whose unchanged TOAST columns are
    /// absent (it leaves them as they are at the target) instead of needing the value.
    pub accepts_unchanged_toast: bool,
    /// Whether the target only takes JSON-encoded values.
    pub needs_json: bool,
    /// Whether the connector applies the drafts' rows itself and needs encoded
    /// bytes only for the Debezium envelope (`table`).
    pub applies_rows: bool,
    pub build: fn(&ConnectorConfig) -> Result<Box<dyn Connector>>,
    /// A connection's own check at `create_connection` (option values always; the
    /// target is probed only when the options say `validate = true`).
    pub check_connection: Option<fn(&BTreeMap<String, String>) -> Result<()>>,
}

impl std::fmt::Debug for ConnectorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}
