//! The `json` format: turns row images (Postgres text-format cells) into JSON, following
//! Materialize's JSON conversion table, and lays out Debezium events the way Debezium's
//! Postgres connector does.
//!
//! ```text
//!  Cell::Text("2024-07-03 18:43:05.312345") ──cell_to_json(timestamp)──► "1720032185312.345"
//!  RowImage ──row_to_json──► {"id":1,"name":"a"} ──to_vec──► key / value bytes
//!  Payload::Debezium ──► {"before":..,"after":..,"source":{..},"op":"u","ts_ms":..,"transaction":null}
//! ```
//!
//! The cells arrive exactly as pgoutput's text mode prints them for a session with
//! `DateStyle = 'ISO, YMD'`, `TimeZone = 'UTC'`, `IntervalStyle = 'postgres'`,
//! `extra_float_digits = 3` and `bytea_output = 'hex'`. This module owns parsing that
//! text back into typed JSON: numbers, timestamps (milliseconds since the epoch, with
//! microsecond fraction), embedded json/jsonb, arrays (the `{..}` literal syntax, any
//! number of dimensions) and composites (the `(..)` record syntax), recursively. Types
//! without a JSON shape of their own are carried as their text.
//!
//! Error messages name the column and type but never quote the value: row contents
//! must not end up in the server log or the sink's status.

use std::sync::Arc;

use serde_json::{Map, Number, Value};

use super::modes::Modes;
use super::Encoder;
use crate::engine::change::{Cell, Column};
use crate::engine::envelope::{DebeziumEvent, MessageEvent, Payload, RowImage, SourceInfo, TxBlock, TxBoundary};
use crate::engine::error::{Result, SinkError};
use crate::engine::types::{PgType, TypeKind};

/// The `json` encoder. Everything it needs travels with the row image, but how
/// row images are written: this module's values by default, Debezium's with
/// `debezium.compat` ([`super::debezium::write_row`]).
#[derive(Clone)]
pub struct JsonEncoder {
    /// How rows are written, when not in this module's forms (Debezium's, under
    /// `debezium.compat`: [`super::debezium::json_encoder`]).
    rows: Option<Rows>,
    /// Debezium events carry the fields Debezium 3 adds (`ts_us`, `ts_ns`, origin).
    debezium_fields: bool,
    /// The handling modes that decide some columns' Connect schemas.
    modes: Modes,
    /// Keys and Debezium values as Kafka Connect's `{"schema", "payload"}`, with
    /// schemas named under this prefix ([`super::connect`]), built once per shape.
    connect: Option<(String, std::sync::Arc<super::connect::SchemaCache>)>,
}

impl Default for JsonEncoder {
    fn default() -> Self {
        JsonEncoder { rows: None, debezium_fields: false, modes: Modes::default(), connect: None }
    }
}

impl std::fmt::Debug for JsonEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonEncoder").field("debezium_fields", &self.debezium_fields).field("modes", &self.modes).finish()
    }
}

/// A row writer other than this module's.
pub type Rows = std::sync::Arc<dyn Fn(&RowImage, &mut Vec<u8>) -> Result<()> + Send + Sync>;

impl JsonEncoder {
    /// Row images (and keys) written by `rows`, events with Debezium 3's fields,
    /// Connect schemas under `modes`.
    pub fn with_rows(rows: Rows, modes: Modes) -> Self {
        JsonEncoder { rows: Some(rows), debezium_fields: true, modes, connect: None }
    }

    /// Wrap keys and Debezium values with their Kafka Connect schemas.
    pub fn with_connect_schemas(mut self, prefix: &str) -> Self {
        let cache = super::connect::SchemaCache::new(self.modes);
        self.connect = Some((prefix.to_string(), std::sync::Arc::new(cache)));
        self
    }

    fn row(&self, row: &RowImage, out: &mut Vec<u8>) -> Result<()> {
        match &self.rows {
            Some(rows) => rows(row, out),
            None => write_row(row, out),
        }
    }

    /// A key's payload and, with Connect schemas, its schema (JSON text, shared
    /// by every key of the shape).
    pub fn key_parts(&self, key: &RowImage) -> Result<(Option<Arc<str>>, Vec<u8>)> {
        let mut out = Vec::with_capacity(64);
        self.row(key, &mut out)?;
        let schema = self.connect.as_ref().map(|(prefix, cache)| cache.get(super::connect::Part::Key, key, prefix));
        Ok((schema, out))
    }

    /// A value's payload (`None`: a null value) and, with Connect schemas, its
    /// schema when it has one (JSON text, shared by every value of the shape).
    pub fn value_parts(&self, payload: &Payload) -> Result<Option<(Option<Arc<str>>, Vec<u8>)>> {
        let mut out = Vec::with_capacity(256);
        let mut schema = None;
        match payload {
            Payload::Tombstone | Payload::Truncate(_) | Payload::Schema(_) => return Ok(None),
            Payload::Row(row) => self.row(row, &mut out)?,
            Payload::Debezium(event) => {
                write_debezium(event, self.debezium_fields, &|r, o| self.row(r, o), &mut out)?;
                if let Some((prefix, cache)) = &self.connect {
                    // A truncate has no row: the table's whole shape names its schema.
                    let whole = event.truncated.as_ref().map(|rel| RowImage {
                        relation: rel.clone(),
                        indices: (0..rel.columns.len()).collect::<Vec<_>>().into(),
                        cells: Vec::new().into(),
                    });
                    if let Some(image) = event.after.as_ref().or(event.before.as_ref()).or(whole.as_ref()) {
                        schema = Some(cache.get(super::connect::Part::Value, image, prefix));
                    }
                }
            }
            Payload::Message(m) => write_message(m, self.debezium_fields, &mut out),
            Payload::Transaction(t) => {
                write_boundary(t, &mut out);
                if self.connect.is_some() {
                    schema = Some(super::connect::TRANSACTION_SCHEMAS.1.clone());
                }
            }
        }
        Ok(Some((schema, out)))
    }

    /// The key of a transaction's BEGIN or END, and its Connect schema.
    pub fn transaction_key_parts(&self, id: &str) -> (Option<Arc<str>>, Vec<u8>) {
        let mut out = Vec::with_capacity(id.len() + 10);
        out.extend_from_slice(b"{\"id\":");
        write_str(id, &mut out);
        out.push(b'}');
        (self.connect.as_ref().map(|_| super::connect::TRANSACTION_SCHEMAS.0.clone()), out)
    }
}

/// `{"schema": .., "payload": ..}` when there is a schema, else the payload.
fn wrapped((schema, payload): (Option<Arc<str>>, Vec<u8>)) -> Vec<u8> {
    match schema {
        Some(schema) => {
            let mut out = Vec::with_capacity(schema.len() + payload.len() + 24);
            super::connect::wrap(&schema, &payload, &mut out);
            out
        }
        None => payload,
    }
}

impl Encoder for JsonEncoder {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode_key(&self, key: &RowImage) -> Result<Vec<u8>> {
        self.key_parts(key).map(wrapped)
    }

    fn encode_value(&self, payload: &Payload) -> Result<Option<Vec<u8>>> {
        Ok(self.value_parts(payload)?.map(wrapped))
    }

    fn encode_transaction_key(&self, id: &str) -> Result<Vec<u8>> {
        Ok(wrapped(self.transaction_key_parts(id)))
    }
}

/// A transaction's BEGIN or END event, as Debezium's `TransactionMetadataValue`.
fn write_boundary(t: &TxBoundary, out: &mut Vec<u8>) {
    out.extend_from_slice(if t.begin { b"{\"status\":\"BEGIN\",\"id\":" } else { b"{\"status\":\"END\",\"id\":" });
    write_str(&t.id, out);
    if t.begin {
        out.extend_from_slice(b",\"event_count\":null,\"data_collections\":null");
    } else {
        out.extend_from_slice(format!(",\"event_count\":{},\"data_collections\":[", t.event_count).as_bytes());
        for (i, (table, n)) in t.data_collections.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"data_collection\":");
            write_str(table, out);
            out.extend_from_slice(format!(",\"event_count\":{n}}}").as_bytes());
        }
        out.push(b']');
    }
    out.extend_from_slice(format!(",\"ts_ms\":{}}}", t.ts_ms).as_bytes());
}

/// Debezium's `transaction` block of an event, or `null`.
fn write_tx_block(block: Option<&TxBlock>, out: &mut Vec<u8>) {
    match block {
        None => out.extend_from_slice(b"null"),
        Some(b) => {
            out.extend_from_slice(b"{\"id\":");
            write_str(&b.id, out);
            out.extend_from_slice(format!(",\"total_order\":{},\"data_collection_order\":{}}}", b.total_order, b.data_collection_order).as_bytes());
        }
    }
}

/// Append `s` as a JSON string.
fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(crate) fn write_value(value: &Value, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, value);
}

fn unchanged_error(column: &Column, row: &RowImage) -> SinkError {
    SinkError::permanent(format!(
        "column \"{}\" of relation \"{}\" holds an unchanged TOAST value that was not filled in",
        column.name,
        row.relation.qualified_name()
    ))
    .detail("pgoutput omits unchanged TOASTed values from updates; encoding one would lose data.")
    .hint("Set REPLICA IDENTITY FULL on the table so updates carry the old value.")
}

fn column_error(column: &Column, row: &RowImage, e: SinkError) -> SinkError {
    SinkError::permanent(format!(
        "could not encode column \"{}\" of relation \"{}\" as JSON: {}",
        column.name,
        row.relation.qualified_name(),
        e.message
    ))
}

/// Append a row image as a JSON object `{column: value}`. This is the hot path:
/// scalar columns are written straight from their text, without building a `Value`.
pub fn write_row(row: &RowImage, out: &mut Vec<u8>) -> Result<()> {
    write_row_with(row, out, |column, text, out| write_cell(&column.ty, text, out))
}

/// A row image as a JSON object, each non-NULL value written by `value`.
pub(crate) fn write_row_with(row: &RowImage, out: &mut Vec<u8>, value: impl Fn(&Column, &str, &mut Vec<u8>) -> Result<()>) -> Result<()> {
    out.push(b'{');
    for (i, (column, cell)) in row.fields().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&column.name, out);
        out.push(b':');
        match cell {
            Cell::Null => out.extend_from_slice(b"null"),
            Cell::Unchanged => return Err(unchanged_error(column, row)),
            Cell::Text(text) => value(column, text, out).map_err(|e| column_error(column, row, e))?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// Types whose JSON form is their text as a string (numeric keeps its exact digits,
/// as Materialize does; the rest have no JSON shape of their own).
fn carried_as_text(kind: &TypeKind) -> bool {
    matches!(
        kind,
        TypeKind::Numeric
            | TypeKind::Text
            | TypeKind::Bytea
            | TypeKind::Date
            | TypeKind::Time
            | TypeKind::TimeTz
            | TypeKind::Interval
            | TypeKind::Uuid
            | TypeKind::Enum
            | TypeKind::Other
            | TypeKind::Unresolved
    )
}

/// Canonical integer text (what Postgres prints): can be copied as a JSON number.
fn is_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'))
}

fn write_cell(ty: &PgType, text: &str, out: &mut Vec<u8>) -> Result<()> {
    match &ty.kind {
        TypeKind::Bool => match text {
            "t" => out.extend_from_slice(b"true"),
            "f" => out.extend_from_slice(b"false"),
            _ => return Err(malformed(ty, "expected \"t\" or \"f\"")),
        },
        TypeKind::Int2 | TypeKind::Int4 | TypeKind::Int8 if is_integer_text(text) => out.extend_from_slice(text.as_bytes()),
        TypeKind::Timestamp | TypeKind::TimestampTz => {
            let text = timestamp_text(ty, text, ty.kind == TypeKind::TimestampTz)?;
            write_str(&text, out);
        }
        kind if carried_as_text(kind) => write_str(text, out),
        _ => write_value(&cell_to_json(ty, text)?, out),
    }
    Ok(())
}

/// How a row image is written (the `json` format's values, or Debezium's).
type RowWriter<'a> = &'a dyn Fn(&RowImage, &mut Vec<u8>) -> Result<()>;

/// The Debezium envelope, field for field in the order Debezium's Postgres connector
/// writes it, with row images written by `row`. `compat` adds the fields Debezium 3
/// has beside `ts_ms` (`ts_us`, `ts_ns`, the replication origin).
fn write_debezium(event: &DebeziumEvent, compat: bool, row: RowWriter<'_>, out: &mut Vec<u8>) -> Result<()> {
    let image = |image: &Option<RowImage>, out: &mut Vec<u8>| match image {
        Some(r) => row(r, out),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    };
    out.extend_from_slice(b"{\"before\":");
    image(&event.before, out)?;
    out.extend_from_slice(b",\"after\":");
    image(&event.after, out)?;
    out.extend_from_slice(b",\"source\":");
    write_source(&event.source, compat, out);
    out.extend_from_slice(format!(",\"op\":\"{}\",", event.op.debezium_code()).as_bytes());
    write_times(&event.source, compat, out);
    out.extend_from_slice(b",\"transaction\":");
    write_tx_block(event.transaction.as_ref(), out);
    out.push(b'}');
    Ok(())
}

/// `"ts_ms":..` (with `ts_us` and `ts_ns` under `compat`) of the commit.
fn write_times(src: &SourceInfo, compat: bool, out: &mut Vec<u8>) {
    let us = src.commit_time_us;
    out.extend_from_slice(format!("\"ts_ms\":{}", us.div_euclid(1000)).as_bytes());
    if compat {
        out.extend_from_slice(format!(",\"ts_us\":{us},\"ts_ns\":{}", i128::from(us) * 1000).as_bytes());
    }
}

/// Debezium's `source` block.
fn write_source(src: &SourceInfo, compat: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(concat!("{\"version\":\"pg_sink-", env!("CARGO_PKG_VERSION"), "\",\"connector\":\"postgresql\",\"name\":").as_bytes());
    write_str(&src.sink_name, out);
    out.push(b',');
    write_times(src, compat, out);
    out.extend_from_slice(format!(",\"snapshot\":\"{}\",\"db\":", src.snapshot).as_bytes());
    write_str(&src.database, out);
    out.extend_from_slice(b",\"sequence\":");
    if compat {
        // Debezium's `[<end of the transaction before>, <this change>]`, a string.
        let last = src.last_commit.map_or("null".to_string(), |l| format!("\"{}\"", l.0));
        write_str(&format!("[{last},\"{}\"]", src.lsn.0), out);
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"schema\":");
    write_str(&src.schema, out);
    out.extend_from_slice(b",\"table\":");
    write_str(&src.table, out);
    out.extend_from_slice(format!(",\"txId\":{},\"lsn\":{},\"xmin\":null", src.xid, src.lsn.0).as_bytes());
    if compat {
        out.extend_from_slice(b",\"origin\":null,\"origin_lsn\":null");
    }
    out.push(b'}');
}

/// A logical message. Under the debezium envelope, Debezium's message event
/// (`{"op":"m","ts_ms":..,"source":{..},"message":{"prefix":..,"content":<base64>}}`);
/// otherwise its content: as it is when it is JSON, as a JSON string when it is
/// other UTF-8 text, as `{"base64": ".."}` when it is binary.
fn write_message(m: &MessageEvent, compat: bool, out: &mut Vec<u8>) {
    use base64::Engine as _;
    let base64 = || base64::engine::general_purpose::STANDARD.encode(&m.content);
    let Some(src) = &m.source else {
        match std::str::from_utf8(&m.content) {
            Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => out.extend_from_slice(text.trim().as_bytes()),
            Ok(text) => write_str(text, out),
            Err(_) => {
                out.extend_from_slice(b"{\"base64\":");
                write_str(&base64(), out);
                out.push(b'}');
            }
        }
        return;
    };
    out.extend_from_slice(b"{\"op\":\"m\",");
    write_times(src, compat, out);
    out.extend_from_slice(b",\"source\":");
    write_source(src, compat, out);
    out.extend_from_slice(b",\"message\":{\"prefix\":");
    write_str(&m.prefix, out);
    out.extend_from_slice(b",\"content\":");
    write_str(&base64(), out);
    out.extend_from_slice(b"}}");
}

/// A row image as a JSON object `{column: value}`, in the image's column order.
pub fn row_to_json(row: &RowImage) -> Result<Value> {
    let mut object = Map::new();
    for (column, cell) in row.fields() {
        let value = match cell {
            Cell::Null => Value::Null,
            Cell::Unchanged => {
                return Err(SinkError::permanent(format!(
                    "column \"{}\" of relation \"{}\" holds an unchanged TOAST value that was not filled in",
                    column.name,
                    row.relation.qualified_name()
                ))
                .detail("pgoutput omits unchanged TOASTed values from updates; encoding one would lose data.")
                .hint("Set REPLICA IDENTITY FULL on the table so updates carry the old value."))
            }
            Cell::Text(text) => cell_to_json(&column.ty, text).map_err(|e| {
                SinkError::permanent(format!(
                    "could not encode column \"{}\" of relation \"{}\" as JSON: {}",
                    column.name,
                    row.relation.qualified_name(),
                    e.message
                ))
            })?,
        };
        object.insert(column.name.clone(), value);
    }
    Ok(Value::Object(object))
}

/// One non-NULL text-format value of type `ty` as JSON.
pub fn cell_to_json(ty: &PgType, text: &str) -> Result<Value> {
    match &ty.kind {
        TypeKind::Bool => match text {
            "t" => Ok(Value::Bool(true)),
            "f" => Ok(Value::Bool(false)),
            _ => Err(malformed(ty, "expected \"t\" or \"f\"")),
        },
        TypeKind::Int2 | TypeKind::Int4 | TypeKind::Int8 => text.parse::<i64>().map(Value::from).map_err(|_| malformed(ty, "not an integer")),
        TypeKind::Oid => text.parse::<u64>().map(Value::from).map_err(|_| malformed(ty, "not an unsigned integer")),
        TypeKind::Float4 | TypeKind::Float8 => float_to_json(ty, text),
        TypeKind::Json | TypeKind::Jsonb => {
            serde_json::from_str(text).map_err(|e| malformed(ty, &format!("invalid JSON at line {} column {}", e.line(), e.column())))
        }
        TypeKind::Timestamp => timestamp_to_json(ty, text, false),
        TypeKind::TimestampTz => timestamp_to_json(ty, text, true),
        TypeKind::Array(element) => array_to_json(ty, element, text),
        TypeKind::Composite(fields) => composite_to_json(ty, fields, text),
        // Numeric keeps its exact decimal text (including "NaN"), as Materialize does;
        // the rest (see `carried_as_text`) have no JSON shape of their own.
        _ => Ok(Value::String(text.to_owned())),
    }
}

fn malformed(ty: &PgType, reason: &str) -> SinkError {
    SinkError::permanent(format!("malformed {} value: {reason}", ty.name))
}

// ---------------------------------------------------------------------------------
// Floats

/// Finite floats are JSON numbers; `NaN` and the infinities have no JSON number, so
/// they are strings spelled as Postgres spells them.
fn float_to_json(ty: &PgType, text: &str) -> Result<Value> {
    match text {
        "NaN" | "Infinity" | "-Infinity" => return Ok(Value::String(text.to_owned())),
        _ => {}
    }
    let v: f64 = text.parse().map_err(|_| malformed(ty, "not a floating-point number"))?;
    // float4 text is its shortest round-trip form (at most 9 digits), so reading it as
    // an f64 and printing that f64's shortest form gives back the same decimal.
    match Number::from_f64(v) {
        Some(n) => Ok(Value::Number(n)),
        None if v.is_nan() => Ok(Value::from("NaN")),
        None if v > 0.0 => Ok(Value::from("Infinity")),
        None => Ok(Value::from("-Infinity")),
    }
}

// ---------------------------------------------------------------------------------
// Timestamps

/// `timestamp`/`timestamptz` as a string holding milliseconds since the Unix epoch
/// with exactly three fractional digits (microseconds), e.g. `"1720032185312.345"`.
/// The value is the exact decimal, so 1.5 ms before the epoch is `"-1.500"`.
fn timestamp_to_json(ty: &PgType, text: &str, with_zone: bool) -> Result<Value> {
    timestamp_text(ty, text, with_zone).map(Value::String)
}

fn timestamp_text(ty: &PgType, text: &str, with_zone: bool) -> Result<String> {
    if text == "infinity" || text == "-infinity" {
        return Ok(text.to_owned());
    }
    let micros = timestamp_micros(text, with_zone).map_err(|reason| malformed(ty, reason))?;
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    Ok(format!("{sign}{}.{:03}", abs / 1000, abs % 1000))
}

/// Microseconds since 1970-01-01 00:00:00 UTC of an ISO-style timestamp:
/// `Y..YY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]`. i128 because Postgres' largest
/// timestamp (294276 AD) is beyond i64 microseconds counted from 1970.
pub(crate) fn timestamp_micros(text: &str, with_zone: bool) -> Result<i128, &'static str> {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let mut cur = Cursor::new(body);

    let year = cur.digits(1, 7).ok_or("expected a year")?;
    cur.eat('-').ok_or("expected '-' after the year")?;
    let month = cur.digits(2, 2).ok_or("expected a two-digit month")?;
    cur.eat('-').ok_or("expected '-' after the month")?;
    let day = cur.digits(2, 2).ok_or("expected a two-digit day")?;
    if cur.eat(' ').is_none() && cur.eat('T').is_none() {
        return Err("expected a time after the date");
    }
    let hour = cur.digits(2, 2).ok_or("expected a two-digit hour")?;
    cur.eat(':').ok_or("expected ':' after the hour")?;
    let minute = cur.digits(2, 2).ok_or("expected two-digit minutes")?;
    cur.eat(':').ok_or("expected ':' after the minutes")?;
    let second = cur.digits(2, 2).ok_or("expected two-digit seconds")?;
    let mut fraction_us = 0i64;
    if cur.eat('.').is_some() {
        let start = cur.pos;
        let digits = cur.digits(1, 6).ok_or("expected 1 to 6 fractional digits")?;
        fraction_us = digits * 10i64.pow(6 - (cur.pos - start) as u32);
    }
    let mut offset_s = 0i64;
    if let Some(sign) = cur.peek().filter(|c| *c == '+' || *c == '-') {
        if !with_zone {
            return Err("unexpected time zone offset");
        }
        cur.bump();
        let h = cur.digits(2, 2).ok_or("expected a two-digit zone hour")?;
        let mut m = 0;
        let mut s = 0;
        if cur.eat(':').is_some() {
            m = cur.digits(2, 2).ok_or("expected two-digit zone minutes")?;
            if cur.eat(':').is_some() {
                s = cur.digits(2, 2).ok_or("expected two-digit zone seconds")?;
            }
        }
        if m > 59 || s > 59 {
            return Err("zone offset out of range");
        }
        offset_s = (h * 3600 + m * 60 + s) * if sign == '-' { -1 } else { 1 };
    }
    if !cur.at_end() {
        return Err("unexpected trailing characters");
    }

    if year < 1 {
        return Err("year 0 does not exist (years count 1 BC, 1 AD)");
    }
    // Proleptic Gregorian with astronomical numbering: 1 BC is year 0, 2 BC is -1.
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("date out of range");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time out of range");
    }
    let days = days_from_civil(year, month, day);
    let seconds = i128::from(days) * 86_400 + i128::from(hour * 3600 + minute * 60 + second) - i128::from(offset_s);
    Ok(seconds * 1_000_000 + i128::from(fraction_us))
}

fn is_leap_year(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

pub(crate) fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap_year(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `(year, month, day)` of a day number since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days from 1970-01-01 to the proleptic Gregorian date `y-m-d` (astronomical year).
/// Counts in 400-year eras starting on March 1st, so the leap day ends an era's year.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400; // [0, 399]
    let month_from_march = (m + 9) % 12; // March = 0 .. February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1; // [0, 365]
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

// ---------------------------------------------------------------------------------
// Arrays

/// Postgres array literal → nested JSON arrays. `int[]` and `int[][]` are one type in
/// Postgres, so every leaf is converted with the innermost element type however deep
/// the braces go; the optional `[lo:hi]=` bounds decoration is skipped.
fn array_to_json(ty: &PgType, element: &PgType, text: &str) -> Result<Value> {
    let mut leaf = element;
    while let TypeKind::Array(inner) = &leaf.kind {
        leaf = inner;
    }
    // `box` is the one built-in type whose array delimiter is not a comma.
    let delimiter = if leaf.oid == 603 { ';' } else { ',' };

    let mut cur = Cursor::new(text);
    cur.skip_whitespace();
    if cur.peek() == Some('[') {
        while let Some(c) = cur.bump() {
            match c {
                '=' => break,
                '[' | ']' | ':' | '-' | '+' | '0'..='9' => {}
                _ => return Err(malformed(ty, "malformed array dimension decoration")),
            }
        }
        cur.skip_whitespace();
    }
    let value = parse_array_level(ty, leaf, delimiter, &mut cur)?;
    cur.skip_whitespace();
    if !cur.at_end() {
        return Err(malformed(ty, "unexpected characters after the array's closing brace"));
    }
    Ok(value)
}

fn parse_array_level(ty: &PgType, leaf: &PgType, delimiter: char, cur: &mut Cursor) -> Result<Value> {
    if cur.eat('{').is_none() {
        return Err(malformed(ty, "expected '{' to open an array"));
    }
    let mut items = Vec::new();
    cur.skip_whitespace();
    if cur.eat('}').is_some() {
        return Ok(Value::Array(items));
    }
    loop {
        cur.skip_whitespace();
        let item = match cur.peek() {
            Some('{') => parse_array_level(ty, leaf, delimiter, cur)?,
            Some('"') => {
                cur.bump();
                let mut element = String::new();
                loop {
                    match cur.bump() {
                        None => return Err(malformed(ty, "unterminated quoted array element")),
                        Some('\\') => match cur.bump() {
                            Some(c) => element.push(c),
                            None => return Err(malformed(ty, "unterminated quoted array element")),
                        },
                        Some('"') => break,
                        Some(c) => element.push(c),
                    }
                }
                element_to_json(ty, leaf, &element)?
            }
            _ => {
                let mut element = String::new();
                let mut escaped = false;
                loop {
                    match cur.peek() {
                        None => return Err(malformed(ty, "unterminated array")),
                        Some(c) if c == delimiter || c == '}' => break,
                        Some('{') | Some('"') => return Err(malformed(ty, "unexpected '{' or '\"' in an unquoted array element")),
                        Some('\\') => {
                            cur.bump();
                            match cur.bump() {
                                Some(c) => element.push(c),
                                None => return Err(malformed(ty, "unterminated array")),
                            }
                            escaped = true;
                        }
                        Some(c) => {
                            cur.bump();
                            element.push(c);
                        }
                    }
                }
                let element = element.trim_end_matches(is_array_space);
                if element.is_empty() {
                    return Err(malformed(ty, "empty unquoted array element"));
                }
                if !escaped && element.eq_ignore_ascii_case("NULL") {
                    Value::Null
                } else {
                    element_to_json(ty, leaf, element)?
                }
            }
        };
        items.push(item);
        cur.skip_whitespace();
        match cur.bump() {
            Some(c) if c == delimiter => continue,
            Some('}') => return Ok(Value::Array(items)),
            _ => return Err(malformed(ty, "expected a delimiter or '}' after an array element")),
        }
    }
}

fn element_to_json(array: &PgType, leaf: &PgType, text: &str) -> Result<Value> {
    cell_to_json(leaf, text).map_err(|e| SinkError::permanent(format!("malformed {} value: element: {}", array.name, e.message)))
}

/// The whitespace `array_in` skips around elements.
fn is_array_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

// ---------------------------------------------------------------------------------
// Composites

/// Record literal `(f1,"f 2",,"x""y")` → JSON object with the type's field names, in
/// attribute order. An empty unquoted field is NULL; `""` is the empty string. Fields
/// that are themselves arrays or records arrive as quoted text and are parsed again.
fn composite_to_json(ty: &PgType, fields: &[(String, PgType)], text: &str) -> Result<Value> {
    let mut cur = Cursor::new(text);
    cur.skip_whitespace();
    if cur.eat('(').is_none() {
        return Err(malformed(ty, "expected '(' to open a record"));
    }
    let mut raw: Vec<Option<String>> = Vec::with_capacity(fields.len());
    if fields.is_empty() {
        if cur.eat(')').is_none() {
            return Err(malformed(ty, "expected an empty record"));
        }
    } else {
        loop {
            let mut field = String::new();
            let mut quoted = false;
            let mut in_quotes = false;
            let end = loop {
                match cur.bump() {
                    None => return Err(malformed(ty, "unterminated record")),
                    Some('\\') => match cur.bump() {
                        Some(c) => field.push(c),
                        None => return Err(malformed(ty, "unterminated record")),
                    },
                    Some('"') if in_quotes => {
                        if cur.peek() == Some('"') {
                            cur.bump();
                            field.push('"');
                        } else {
                            in_quotes = false;
                        }
                    }
                    Some('"') => {
                        in_quotes = true;
                        quoted = true;
                    }
                    Some(c @ (',' | ')')) if !in_quotes => break c,
                    Some(c) => field.push(c),
                }
            };
            raw.push(if field.is_empty() && !quoted { None } else { Some(field) });
            if end == ')' {
                break;
            }
        }
    }
    cur.skip_whitespace();
    if !cur.at_end() {
        return Err(malformed(ty, "unexpected characters after the record's closing parenthesis"));
    }
    if raw.len() != fields.len() {
        return Err(malformed(ty, &format!("expected {} fields, found {}", fields.len(), raw.len())));
    }

    let mut object = Map::new();
    for ((name, field_ty), value) in fields.iter().zip(raw) {
        let value = match value {
            None => Value::Null,
            Some(text) => cell_to_json(field_ty, &text)
                .map_err(|e| SinkError::permanent(format!("malformed {} value: field \"{name}\": {}", ty.name, e.message)))?,
        };
        object.insert(name.clone(), value);
    }
    Ok(Value::Object(object))
}

// ---------------------------------------------------------------------------------

/// A forward-only reader over text; all syntax characters are ASCII, so char-wise
/// stepping keeps multi-byte element text intact.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { text, pos: 0 }
    }
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    fn eat(&mut self, want: char) -> Option<()> {
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            Some(())
        } else {
            None
        }
    }
    fn at_end(&self) -> bool {
        self.pos == self.text.len()
    }
    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(is_array_space) {
            self.pos += 1;
        }
    }
    /// Between `min` and `max` ASCII digits as a number.
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        let rest = &self.text.as_bytes()[self.pos..];
        let n = rest.iter().take(max).take_while(|b| b.is_ascii_digit()).count();
        if n < min {
            return None;
        }
        let value = rest[..n].iter().fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
        self.pos += n;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::change::{Change, Column, OldImage, Relation};
    use crate::engine::envelope::tests::{relation, t, txn};
    use crate::engine::envelope::{Envelope, EnvelopeKind, Op, SourceInfo};
    use crate::engine::error::ErrorKind;
    use crate::engine::lsn::Lsn;
    use crate::engine::types::builtin;

    fn ty(oid: u32) -> PgType {
        builtin(oid).unwrap()
    }

    /// `cell_to_json` serialized compactly.
    fn enc(oid: u32, text: &str) -> String {
        enc_ty(&ty(oid), text)
    }

    fn enc_ty(ty: &PgType, text: &str) -> String {
        serde_json::to_string(&cell_to_json(ty, text).unwrap()).unwrap()
    }

    fn err(ty: &PgType, text: &str) -> SinkError {
        let e = cell_to_json(ty, text).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        e
    }

    #[test]
    fn bools_and_integers() {
        assert_eq!(enc(16, "t"), "true");
        assert_eq!(enc(16, "f"), "false");
        assert_eq!(enc(21, "-32768"), "-32768");
        assert_eq!(enc(23, "2147483647"), "2147483647");
        assert_eq!(enc(20, "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(enc(20, "9223372036854775807"), "9223372036854775807");
        assert_eq!(enc(26, "4294967295"), "4294967295");
        assert!(err(&ty(16), "yes").message.contains("boolean"));
        assert!(err(&ty(23), "1.5").message.contains("integer"));
        assert!(err(&ty(26), "-1").message.contains("oid"));
    }

    #[test]
    fn floats_are_numbers_except_nan_and_infinities() {
        assert_eq!(enc(701, "1.5"), "1.5");
        assert_eq!(enc(700, "0.1"), "0.1");
        assert_eq!(enc(700, "3.4028235e+38"), "3.4028235e+38");
        assert_eq!(enc(701, "1e+20"), "1e+20");
        assert_eq!(enc(701, "1.5e-05"), "0.000015");
        assert_eq!(enc(701, "1e-300"), "1e-300");
        assert_eq!(enc(701, "0.30000000000000004"), "0.30000000000000004");
        assert_eq!(enc(701, "-0"), "-0.0");
        assert_eq!(enc(701, "NaN"), "\"NaN\"");
        assert_eq!(enc(700, "Infinity"), "\"Infinity\"");
        assert_eq!(enc(701, "-Infinity"), "\"-Infinity\"");
        assert!(err(&ty(701), "one").message.contains("double precision"));
    }

    #[test]
    fn numeric_keeps_its_exact_text() {
        assert_eq!(enc(1700, "123.4500"), "\"123.4500\"");
        assert_eq!(enc(1700, "-0.000000000000000000000000000001"), "\"-0.000000000000000000000000000001\"");
        assert_eq!(enc(1700, "NaN"), "\"NaN\"");
    }

    #[test]
    fn text_like_types_are_strings_as_is() {
        assert_eq!(enc(25, "héllo \"x\"\n"), r#""héllo \"x\"\n""#);
        assert_eq!(enc(1043, ""), r#""""#);
        assert_eq!(enc(1082, "2024-07-03"), r#""2024-07-03""#);
        assert_eq!(enc(1083, "18:43:05.312345"), r#""18:43:05.312345""#);
        assert_eq!(enc(1266, "12:34:56.789+05:30"), r#""12:34:56.789+05:30""#);
        assert_eq!(enc(1186, "1 year 2 mons 3 days 04:05:06.5"), r#""1 year 2 mons 3 days 04:05:06.5""#);
        assert_eq!(enc(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#);
        assert_eq!(enc(17, "\\x00ff"), r#""\\x00ff""#);
        assert_eq!(enc(869, "192.168.0.1/24"), r#""192.168.0.1/24""#);
        assert_eq!(enc_ty(&PgType::new(16_385, "mood", TypeKind::Enum), "happy"), r#""happy""#);
        assert_eq!(enc_ty(&PgType::from_oid(99_999), "whatever"), r#""whatever""#);
        assert_eq!(enc(600, "(1,2)"), r#""(1,2)""#);
    }

    #[test]
    fn json_and_jsonb_are_embedded() {
        assert_eq!(enc(3802, r#"{"b": 1, "a": [true, null, "x"]}"#), r#"{"b":1,"a":[true,null,"x"]}"#);
        assert_eq!(enc(114, " [1, 2.5, {\"k\": \"v\"}] "), r#"[1,2.5,{"k":"v"}]"#);
        assert_eq!(enc(3802, "null"), "null");
        assert_eq!(enc(3802, "\"s\""), r#""s""#);
        assert!(err(&ty(3802), "{\"a\":").message.contains("jsonb"));
    }

    #[test]
    fn timestamps_are_epoch_millis_with_microsecond_fraction() {
        let ts = 1114;
        assert_eq!(enc(ts, "2024-07-03 18:43:05.312345"), r#""1720032185312.345""#);
        assert_eq!(enc(ts, "2024-07-03 18:43:05"), r#""1720032185000.000""#);
        assert_eq!(enc(ts, "2024-07-03 18:43:05.3"), r#""1720032185300.000""#);
        assert_eq!(enc(ts, "2024-07-03 18:43:05.0003"), r#""1720032185000.300""#);
        assert_eq!(enc(ts, "1970-01-01 00:00:00"), r#""0.000""#);
        assert_eq!(enc(ts, "1969-12-31 23:59:59.999"), r#""-1.000""#);
        assert_eq!(enc(ts, "1969-12-31 23:59:59.9985"), r#""-1.500""#);
        assert_eq!(enc(ts, "1969-12-31 23:59:59.999999"), r#""-0.001""#);
        assert_eq!(enc(ts, "1900-01-01 00:00:00"), r#""-2208988800000.000""#);
        assert_eq!(enc(ts, "2000-02-29 12:00:00"), r#""951825600000.000""#);
        assert_eq!(enc(ts, "0001-01-01 00:00:00"), r#""-62135596800000.000""#);
        // Postgres: extract(epoch from '0001-01-01 00:00:00 BC') = -62167219200 (year 0).
        assert_eq!(enc(ts, "0001-01-01 00:00:00 BC"), r#""-62167219200000.000""#);
        // Postgres' largest timestamp: beyond i64 microseconds since 1970.
        assert_eq!(enc(ts, "294276-12-31 23:59:59.999999"), r#""9224318015999999.999""#);
        assert_eq!(enc(ts, "infinity"), r#""infinity""#);
        assert_eq!(enc(ts, "-infinity"), r#""-infinity""#);
    }

    #[test]
    fn timestamptz_applies_the_offset() {
        let tz = 1184;
        assert_eq!(enc(tz, "2024-07-03 18:43:05.312345+00"), r#""1720032185312.345""#);
        assert_eq!(enc(tz, "2024-07-04 00:13:05.312345+05:30"), r#""1720032185312.345""#);
        assert_eq!(enc(tz, "2024-07-03 10:43:05.312345-08"), r#""1720032185312.345""#);
        // Amsterdam local mean time, printed with seconds in the offset.
        assert_eq!(enc(tz, "1900-01-01 00:19:32+00:19:32"), r#""-2208988800000.000""#);
        // Postgres: extract(epoch from '0044-03-15 12:00:00.5 BC') = -63517780799.5
        assert_eq!(enc(tz, "0044-03-15 12:00:00.5+00 BC"), r#""-63517780799500.000""#);
        assert_eq!(enc(tz, "1970-01-01 00:00:00.000001+00"), r#""0.001""#);
        assert_eq!(enc(tz, "infinity"), r#""infinity""#);
        assert_eq!(enc(tz, "-infinity"), r#""-infinity""#);
    }

    #[test]
    fn malformed_timestamps_are_permanent_errors_naming_the_type() {
        let ts = ty(1114);
        for bad in [
            "2024-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "2024-07-03",
            "2024-07-03 18:43",
            "2024-07-03 18:43:05.1234567",
            "2024-07-03 18:43:05+00",
            "2024-07-03 18:43:05 AD",
            "0000-01-01 00:00:00",
            "tomorrow",
        ] {
            let e = err(&ts, bad);
            assert!(e.message.starts_with("malformed timestamp without time zone value"), "{bad}: {}", e.message);
            assert!(!e.message.contains(bad), "error must not quote the value");
        }
        assert!(err(&ty(1184), "2024-07-03 18:43:05+0").message.contains("timestamp with time zone"));
        assert!(err(&ty(1184), "2024-07-03 18:43:05+00:61").message.contains("offset"));
    }

    #[test]
    fn civil_day_arithmetic_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(0, 1, 1), -719_528);
        assert_eq!(days_from_civil(-1, 12, 31), -719_529);
        assert!(is_leap_year(0) && is_leap_year(-4) && !is_leap_year(-100) && is_leap_year(2000));
    }

    #[test]
    fn arrays_of_scalars() {
        assert_eq!(enc(1007, "{1,2,3}"), "[1,2,3]");
        assert_eq!(enc(1007, "{}"), "[]");
        assert_eq!(enc(1007, "{1,NULL,null,3}"), "[1,null,null,3]");
        assert_eq!(enc(1000, "{t,f,NULL}"), "[true,false,null]");
        assert_eq!(enc(1022, "{1.5,NaN,-Infinity}"), r#"[1.5,"NaN","-Infinity"]"#);
        assert_eq!(enc(1231, "{1.10,NaN}"), r#"["1.10","NaN"]"#);
        // As Postgres prints ARRAY['a b','c"d',NULL,'NULL','e\f','']:
        assert_eq!(enc(1009, r#"{"a b","c\"d",NULL,"NULL","e\\f",""}"#), r#"["a b","c\"d",null,"NULL","e\\f",""]"#);
        assert_eq!(enc(1009, r#"{plain,"with,comma","{brace}",é}"#), r#"["plain","with,comma","{brace}","é"]"#);
        // Input syntax Postgres accepts: whitespace around elements, escaped unquoted NULL.
        assert_eq!(enc(1009, r#" { a , \NULL , NULL } "#), r#"["a","NULL",null]"#);
    }

    #[test]
    fn multi_dimensional_and_decorated_arrays() {
        assert_eq!(enc(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(enc(1009, "{{a,b},{c,NULL}}"), r#"[["a","b"],["c",null]]"#);
        assert_eq!(enc(1007, "{{{1},{2}},{{3},{4}}}"), "[[[1],[2]],[[3],[4]]]");
        assert_eq!(enc(1007, "[0:1]={1,2}"), "[1,2]");
        assert_eq!(enc(1007, "[1:1][0:1]={{1,2}}"), "[[1,2]]");
        assert_eq!(enc(1007, "[-2:-1]={5,6}"), "[5,6]");
        // An element type modelled as a nested array still converts the leaves.
        let nested = PgType::new(1007, "integer[][]", TypeKind::Array(Box::new(ty(1007))));
        assert_eq!(enc_ty(&nested, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    }

    #[test]
    fn array_elements_convert_with_the_element_type() {
        assert_eq!(
            enc(1115, r#"{"2024-07-03 18:43:05.312345","1969-12-31 23:59:59.999",NULL,infinity}"#),
            r#"["1720032185312.345","-1.000",null,"infinity"]"#
        );
        assert_eq!(enc(1185, r#"{"2024-07-03 18:43:05.312345+00"}"#), r#"["1720032185312.345"]"#);
        assert_eq!(enc(3807, r#"{"{\"a\": 1}","[1, 2]",NULL,"null"}"#), r#"[{"a":1},[1,2],null,null]"#);
        assert_eq!(enc(199, r#"{"{\"k\": \"v\"}"}"#), r#"[{"k":"v"}]"#);
        // box[] uses ';' between elements.
        let boxes = PgType::new(1020, "box[]", TypeKind::Array(Box::new(PgType::new(603, "box", TypeKind::Other))));
        assert_eq!(enc_ty(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"), r#"["(1,1),(0,0)","(2,2),(1,1)"]"#);
    }

    #[test]
    fn malformed_arrays_are_permanent_errors() {
        let ints = ty(1007);
        for bad in ["1,2", "{1,2", "{1,,2}", "{1,2}}", "{\"a}", "{1}x", "[0:1]{1}", "{{1},2"] {
            let e = err(&ints, bad);
            assert!(e.message.contains("integer[]"), "{bad}: {}", e.message);
        }
        let e = err(&ints, "{1,x}");
        assert!(e.message.contains("integer[]") && e.message.contains("malformed integer value"), "{}", e.message);
    }

    fn rec_type() -> PgType {
        PgType::new(16_400, "rec", TypeKind::Composite(vec![("a".into(), ty(23)), ("b".into(), ty(25)), ("c".into(), ty(25)), ("d".into(), ty(25))]))
    }

    #[test]
    fn composites_become_objects_in_field_order() {
        let rec = rec_type();
        // As Postgres prints ROW(1,'a b',NULL,'x"y') and ROW(1,'a\b','','NULL'):
        assert_eq!(enc_ty(&rec, r#"(1,"a b",,"x""y")"#), r#"{"a":1,"b":"a b","c":null,"d":"x\"y"}"#);
        assert_eq!(enc_ty(&rec, r#"(1,"a\\b","",NULL)"#), r#"{"a":1,"b":"a\\b","c":"","d":"NULL"}"#);
        assert_eq!(enc_ty(&rec, "(,,,)"), r#"{"a":null,"b":null,"c":null,"d":null}"#);
        let one = PgType::new(1, "one", TypeKind::Composite(vec![("x".into(), ty(23))]));
        assert_eq!(enc_ty(&one, "()"), r#"{"x":null}"#);
        let none = PgType::new(2, "none", TypeKind::Composite(vec![]));
        assert_eq!(enc_ty(&none, "()"), "{}");
        let e = err(&rec, "(1,2)");
        assert!(e.message.contains("rec") && e.message.contains("expected 4 fields, found 2"), "{}", e.message);
        let e = err(&rec, "(x,,,)");
        assert!(e.message.contains("field \"a\""), "{}", e.message);
        for bad in ["1,2,3,4", "(1,2,3,4", "(1,2,3,4)x", "(1,\"2,3,4)"] {
            assert!(err(&rec, bad).message.contains("rec"), "{bad}");
        }
    }

    #[test]
    fn nested_composites_and_arrays() {
        let inner = PgType::new(16_401, "inner_t", TypeKind::Composite(vec![("a".into(), ty(23)), ("b".into(), ty(1009))]));
        let outer = PgType::new(16_402, "outer_t", TypeKind::Composite(vec![("x".into(), inner.clone()), ("y".into(), ty(1114))]));
        // As Postgres prints ROW(ROW(1, ARRAY['p q','r']), '2024-07-03 18:43:05')::outer_t:
        assert_eq!(
            enc_ty(&outer, r#"("(1,""{""""p q"""",r}"")","2024-07-03 18:43:05")"#),
            r#"{"x":{"a":1,"b":["p q","r"]},"y":"1720032185000.000"}"#
        );
        // rec[] as Postgres prints ARRAY[ROW(1,'a b',NULL,'x')::rec, NULL]:
        let recs = PgType::new(16_403, "rec[]", TypeKind::Array(Box::new(rec_type())));
        assert_eq!(enc_ty(&recs, r#"{"(1,\"a b\",,x)",NULL}"#), r#"[{"a":1,"b":"a b","c":null,"d":"x"},null]"#);
        let with_json = PgType::new(3, "j", TypeKind::Composite(vec![("doc".into(), ty(3802))]));
        assert_eq!(enc_ty(&with_json, r#"("{""k"": [1, 2]}")"#), r#"{"doc":{"k":[1,2]}}"#);
    }

    fn image(rel: &Arc<Relation>, cells: Vec<Cell>) -> RowImage {
        let all: Arc<[usize]> = (0..rel.columns.len()).collect::<Vec<_>>().into();
        RowImage { relation: rel.clone(), indices: all, cells: cells.into() }
    }

    #[test]
    fn rows_follow_the_image_order_and_keys_encode_compactly() {
        let rel = relation();
        let row = image(&rel, vec![t("42"), Cell::Null]);
        assert_eq!(serde_json::to_string(&row_to_json(&row).unwrap()).unwrap(), r#"{"id":42,"name":null}"#);
        // A projection in a different order (a key over (name, id)).
        let key = RowImage { relation: rel.clone(), indices: vec![1, 0].into(), cells: vec![t("1"), t("a b")].into() };
        assert_eq!(JsonEncoder::default().encode_key(&key).unwrap(), br#"{"name":"a b","id":1}"#.to_vec());
        assert_eq!(JsonEncoder::default().name(), "json");
    }

    #[test]
    fn unchanged_toast_cells_are_refused() {
        let rel = relation();
        let row = image(&rel, vec![t("1"), Cell::Unchanged]);
        let e = row_to_json(&row).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.message.contains("\"name\"") && e.message.contains("public.t"), "{}", e.message);
        assert!(JsonEncoder::default().encode_value(&Payload::Row(row)).is_err());
    }

    #[test]
    fn bad_cells_name_column_and_relation() {
        let rel = relation();
        let e = row_to_json(&image(&rel, vec![t("x1"), t("a")])).unwrap_err();
        assert_eq!(e.message, "could not encode column \"id\" of relation \"public.t\" as JSON: malformed integer value: not an integer");
    }

    #[test]
    fn row_tombstone_and_truncate_payloads() {
        let rel = relation();
        let row = image(&rel, vec![t("1"), t("a")]);
        assert_eq!(JsonEncoder::default().encode_value(&Payload::Row(row)).unwrap(), Some(br#"{"id":1,"name":"a"}"#.to_vec()));
        assert_eq!(JsonEncoder::default().encode_value(&Payload::Tombstone).unwrap(), None);
        assert_eq!(JsonEncoder::default().encode_value(&Payload::Truncate(vec![rel])).unwrap(), None);
    }

    fn rich_relation() -> Arc<Relation> {
        let col = |name: &str, ty: PgType| Column { name: name.into(), ty, type_modifier: -1, is_identity: false };
        Arc::new(Relation {
            id: 2,
            namespace: "shop".into(),
            name: "orders".into(),
            replica_identity: b'd',
            columns: vec![
                col("id", ty(20)),
                col("paid", ty(16)),
                col("total", ty(1700)),
                col("placed_at", ty(1184)),
                col("tags", ty(1009)),
                col("meta", ty(3802)),
                col("ratio", ty(701)),
            ],
            meta: None,
        })
    }

    #[test]
    fn row_golden_with_every_kind_of_column() {
        let rel = rich_relation();
        let row = image(
            &rel,
            vec![
                t("9007199254740993"),
                t("t"),
                t("19.90"),
                t("2024-07-03 18:43:05.312345+00"),
                t(r#"{vip,"gift wrap",NULL}"#),
                t(r#"{"src": "web", "n": [1, 2]}"#),
                t("NaN"),
            ],
        );
        let bytes = JsonEncoder::default().encode_value(&Payload::Row(row)).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"id":9007199254740993,"paid":true,"total":"19.90","placed_at":"1720032185312.345","tags":["vip","gift wrap",null],"meta":{"src":"web","n":[1,2]},"ratio":"NaN"}"#
        );
    }

    fn debezium_value(draft_payload: &Payload) -> String {
        String::from_utf8(JsonEncoder::default().encode_value(draft_payload).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn debezium_update_golden() {
        let rel = relation();
        let change = Change::Update {
            relation: rel.clone(),
            // A key-only old image: the non-key cells are NULL.
            old: Some(OldImage { key_only: true, cells: vec![t("1"), Cell::Null] }),
            new: vec![t("1"), t("b")],
        };
        let mut env = Envelope::new(EnvelopeKind::Debezium, false, vec!["id".into()], "orders_sink", "shop");
        let mut out = vec![];
        env.apply(&txn(vec![change.clone()]), change, Lsn(0x100), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let expected = concat!(
            r#"{"before":{"id":1,"name":null},"after":{"id":1,"name":"b"},"#,
            r#""source":{"version":"pg_sink-"#,
            env!("CARGO_PKG_VERSION"),
            r#"","connector":"postgresql","name":"orders_sink","ts_ms":1720032185312,"snapshot":"false","#,
            r#""db":"shop","sequence":null,"schema":"public","table":"t","txId":7,"lsn":256,"xmin":null},"#,
            r#""op":"u","ts_ms":1720032185312,"transaction":null}"#
        );
        assert_eq!(debezium_value(&out[0].payload), expected);
        let key = JsonEncoder::default().encode_key(out[0].key.as_ref().unwrap()).unwrap();
        assert_eq!(key, br#"{"id":1}"#.to_vec());
    }

    #[test]
    fn debezium_snapshot_delete_and_truncate() {
        let rel = relation();
        let event = |before: Option<RowImage>, after: Option<RowImage>, op: Op, snapshot: bool| {
            Payload::Debezium(Box::new(DebeziumEvent {
                before,
                after,
                op,
                source: SourceInfo {
                    sink_name: "s".into(),
                    database: "db".into(),
                    schema: "public".into(),
                    table: "t".into(),
                    xid: 4_294_967_295,
                    lsn: Lsn(0x1_0000_0010),
                    // Before the epoch: ts_ms rounds down.
                    commit_time_us: -1_500,
                    snapshot,
                    last_commit: None,
                },
                transaction: None,
                truncated: None,
            }))
        };
        let source = |snapshot: &str| {
            format!(
                concat!(
                    r#"{{"version":"pg_sink-{}","connector":"postgresql","name":"s","ts_ms":-2,"snapshot":"{}","#,
                    r#""db":"db","sequence":null,"schema":"public","table":"t","txId":4294967295,"lsn":4294967312,"xmin":null}}"#
                ),
                env!("CARGO_PKG_VERSION"),
                snapshot
            )
        };
        let read = event(None, Some(image(&rel, vec![t("1"), t("a")])), Op::Snapshot, true);
        assert_eq!(
            debezium_value(&read),
            format!(r#"{{"before":null,"after":{{"id":1,"name":"a"}},"source":{},"op":"r","ts_ms":-2,"transaction":null}}"#, source("true"))
        );
        let delete = event(Some(image(&rel, vec![t("1"), Cell::Null])), None, Op::Delete, false);
        assert_eq!(
            debezium_value(&delete),
            format!(r#"{{"before":{{"id":1,"name":null}},"after":null,"source":{},"op":"d","ts_ms":-2,"transaction":null}}"#, source("false"))
        );
        let truncate = event(None, None, Op::Truncate, false);
        assert_eq!(
            debezium_value(&truncate),
            format!(r#"{{"before":null,"after":null,"source":{},"op":"t","ts_ms":-2,"transaction":null}}"#, source("false"))
        );
        let unchanged = event(None, Some(image(&rel, vec![t("1"), Cell::Unchanged])), Op::Update, false);
        assert!(JsonEncoder::default().encode_value(&unchanged).is_err());
    }

    #[test]
    fn build_returns_this_encoder() {
        use super::super::avro::EncoderContext;
        use super::super::formats::build;
        use super::super::Role;
        let ctx = EncoderContext::default();
        assert_eq!(build("JSON", Role::Key, &ctx).unwrap().name(), "json");
        assert_eq!(build("Avro", Role::Value, &ctx).unwrap().name(), "avro");
        assert_eq!(build("text", Role::Value, &ctx).unwrap().name(), "text");
        assert_eq!(build("bytes", Role::Key, &ctx).unwrap().name(), "bytes");
        assert!(build("xml", Role::Key, &ctx).is_err());
    }
}
