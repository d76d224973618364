//! The `avro` format: Avro schemas generated from the table, following Materialize's
//! SQL→Avro conversion table, name rules, `DOC ON` lookup order, `NULL DEFAULTS` and
//! fullnames; records written in Avro's binary encoding, in the Confluent wire format
//! (magic byte 0, 4-byte schema id, datum) when a schema registry is configured.
//!
//! ```text
//!  Relation + RelationMeta ──schema_for──► {"type":"record","name":"envelope",...}
//!        ──registry.register(<subject>)──► id      (once per relation layout)
//!  RowImage ──write_record──► 0x00 | id (BE u32) | Avro binary datum
//! ```
//!
//! The binary writer is ours (it writes straight from the text cells, without an
//! intermediate value tree); the unit tests decode its output with the apache-avro
//! crate against the same schema, which is also parsed by that crate before any
//! record is written.
//!
//! Types without an Avro shape of their own (inet, ranges, geometric types, enums,
//! `timetz`, ...) are strings of their text form. `interval` is Materialize's 16-byte
//! fixed: microseconds (i64), days (i32), months (i32), little-endian. `oid` is a
//! 4-byte little-endian fixed. Unconstrained `numeric` is decimal(81, 39), as in
//! Materialize; a value that does not fit (NaN, infinity, more fractional digits)
//! stops the sink with an error naming the column.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use super::json::{cell_to_json, days_from_civil, days_in_month, timestamp_micros};
use super::registry::Registry;
use super::{Encoder, Role};
use crate::engine::change::{Cell, Relation};
use crate::engine::envelope::{DebeziumEvent, Payload, RowImage};
use crate::engine::error::{Result, SinkError};
use crate::engine::types::{PgType, TypeKind};

/// Avro options of a sink (Materialize's CSR connection options).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AvroOptions {
    pub key_fullname: Option<String>,
    pub value_fullname: Option<String>,
    pub null_defaults: bool,
    /// `DOC ON` options: (role or None for both, target, doc).
    pub docs: Vec<DocOn>,
    pub key_compatibility: Option<String>,
    pub value_compatibility: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocOn {
    pub role: Option<Role>,
    /// `TYPE name` (a relation or SQL type) or `COLUMN name.column`.
    pub target: DocTarget,
    pub doc: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DocTarget {
    Type(String),
    Column(String, String),
}

pub const COMPATIBILITY_LEVELS: &[&str] = &["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"];

/// Parse one `DOC ON` option from its normalized name (`key_doc_on_column_t.key`)
/// and value. `None` if the name is not a `DOC ON` option.
pub fn parse_doc_option(name: &str, value: &str) -> Option<Result<DocOn>> {
    let (role, rest) = if let Some(r) = name.strip_prefix("key_doc_on_") {
        (Some(Role::Key), r)
    } else if let Some(r) = name.strip_prefix("value_doc_on_") {
        (Some(Role::Value), r)
    } else if let Some(r) = name.strip_prefix("doc_on_") {
        (None, r)
    } else {
        return None;
    };
    let bad = |why: &str| {
        Err(SinkError::config(format!("invalid DOC ON option \"{name}\": {why}"))
            .hint("Write \"DOC ON TYPE t\" or \"[KEY|VALUE] DOC ON COLUMN t.col\" as the option name, the comment as its value."))
    };
    let target = if let Some(t) = rest.strip_prefix("type_") {
        if t.is_empty() {
            return Some(bad("no type named"));
        }
        DocTarget::Type(t.to_string())
    } else if let Some(c) = rest.strip_prefix("column_") {
        match c.rsplit_once('.') {
            Some((t, col)) if !t.is_empty() && !col.is_empty() => DocTarget::Column(t.to_string(), col.to_string()),
            _ => return Some(bad("a column is named as type.column")),
        }
    } else {
        return Some(bad("expected TYPE or COLUMN"));
    };
    Some(Ok(DocOn { role, target, doc: value.to_string() }))
}

/// Check a fullname: dot-separated Avro names.
pub fn check_fullname(option: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.split('.').all(|p| {
            let mut c = p.chars();
            matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(SinkError::config(format!("invalid value for option \"{option}\": \"{name}\""))
            .detail("An Avro fullname is dot-separated names of letters, digits and underscores, not starting with a digit.")
            .hint("For example com.example.orders.Value."))
    }
}

/// Materialize's rules for column names that are not valid Avro names:
/// non-alphanumerics become `_`, a leading digit gets a `_` in front, and a name
/// already taken gets the smallest number suffix that makes it unique.
pub fn avro_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::new();
    for name in names {
        let mut base: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
            base.insert(0, '_');
        }
        let mut candidate = base.clone();
        let mut n = 1;
        while taken.contains(&candidate) {
            candidate = format!("{base}{n}");
            n += 1;
        }
        taken.insert(candidate.clone());
        out.push(candidate);
    }
    out
}

fn decimal_of(ty: &PgType, typmod: i32) -> Option<(u32, u32)> {
    (ty.kind == TypeKind::Numeric).then(
        || {
            if typmod >= 4 {
                (((typmod - 4) >> 16) as u32 & 0xffff, ((typmod - 4) & 0xffff) as u32)
            } else {
                (81, 39)
            }
        },
    )
}

fn timestamp_millis(typmod: i32) -> bool {
    (0..=3).contains(&typmod)
}

/// Builds schemas: keeps track of named types already defined (a second use of a
/// record or fixed refers to it by name) and of the docs to attach.
struct SchemaBuilder<'a> {
    role: Role,
    options: &'a AvroOptions,
    meta: Option<&'a crate::engine::change::RelationMeta>,
    defined: std::collections::HashSet<String>,
}

impl SchemaBuilder<'_> {
    fn doc_for_type(&self, names: &[&str], comment: Option<&str>) -> Option<String> {
        let find = |role: Option<Role>| {
            self.options
                .docs
                .iter()
                .find(|d| d.role == role && matches!(&d.target, DocTarget::Type(t) if names.contains(&t.as_str())))
                .map(|d| d.doc.clone())
        };
        find(Some(self.role)).or_else(|| find(None)).or_else(|| comment.map(str::to_string))
    }

    fn doc_for_column(&self, owners: &[&str], column: &str, comment: Option<&str>) -> Option<String> {
        let find = |role: Option<Role>| {
            self.options
                .docs
                .iter()
                .find(|d| d.role == role && matches!(&d.target, DocTarget::Column(t, c) if c == column && owners.contains(&t.as_str())))
                .map(|d| d.doc.clone())
        };
        find(Some(self.role)).or_else(|| find(None)).or_else(|| comment.map(str::to_string))
    }

    fn named(&mut self, name: &str, make: impl FnOnce(&mut Self) -> Value) -> Value {
        if self.defined.contains(name) {
            return Value::String(name.to_string());
        }
        self.defined.insert(name.to_string());
        make(self)
    }

    /// The Avro type of a SQL type (without the null union).
    fn scalar(&mut self, ty: &PgType, typmod: i32) -> Value {
        match &ty.kind {
            TypeKind::Bool => json!("boolean"),
            TypeKind::Int2 | TypeKind::Int4 => json!("int"),
            TypeKind::Int8 => json!("long"),
            TypeKind::Float4 => json!("float"),
            TypeKind::Float8 => json!("double"),
            TypeKind::Bytea => json!("bytes"),
            TypeKind::Date => json!({"type": "int", "logicalType": "date"}),
            TypeKind::Time => json!({"type": "long", "logicalType": "time-micros"}),
            TypeKind::Timestamp | TypeKind::TimestampTz => {
                if timestamp_millis(typmod) {
                    json!({"type": "long", "logicalType": "timestamp-millis"})
                } else {
                    json!({"type": "long", "logicalType": "timestamp-micros"})
                }
            }
            TypeKind::Numeric => {
                let (p, s) = decimal_of(ty, typmod).unwrap_or((81, 39));
                json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s})
            }
            TypeKind::Json | TypeKind::Jsonb => {
                json!({"type": "string", "connect.name": "io.debezium.data.Json"})
            }
            TypeKind::Uuid => json!({"type": "string", "logicalType": "uuid"}),
            TypeKind::Interval => {
                self.named("com.materialize.sink.interval", |_| json!({"type": "fixed", "size": 16, "name": "com.materialize.sink.interval"}))
            }
            TypeKind::Oid => self.named("com.materialize.sink.uint4", |_| json!({"type": "fixed", "size": 4, "name": "com.materialize.sink.uint4"})),
            TypeKind::Array(elem) => {
                let items = self.scalar(elem, -1);
                json!({"type": "array", "items": ["null", items]})
            }
            TypeKind::Composite(fields) => {
                let type_name = ty.name.rsplit('.').next().unwrap_or(&ty.name).trim_matches('"').to_string();
                let record_name = avro_names([type_name.as_str()]).remove(0);
                let names: Vec<&str> = vec![ty.name.as_str(), type_name.as_str()];
                let type_doc = self.meta.and_then(|m| m.type_docs.get(&ty.oid));
                let doc = self.doc_for_type(&names, type_doc.and_then(|d| d.0.as_deref()));
                let fields = fields.clone();
                self.named(&record_name, |b| {
                    let avro = avro_names(fields.iter().map(|(n, _)| n.as_str()));
                    let mut out = Vec::new();
                    for ((fname, fty), aname) in fields.iter().zip(avro) {
                        let t = b.scalar(fty, -1);
                        let comment = type_doc.and_then(|d| d.1.get(fname)).map(String::as_str);
                        let fdoc = b.doc_for_column(&names, fname, comment);
                        out.push(b.field(&aname, json!(["null", t]), true, fdoc));
                    }
                    record(&record_name, doc, out)
                })
            }
            _ => json!("string"),
        }
    }

    fn field(&self, name: &str, ty: Value, nullable: bool, doc: Option<String>) -> Value {
        let mut f = Map::new();
        f.insert("name".into(), Value::String(name.into()));
        f.insert("type".into(), ty);
        if let Some(d) = doc {
            f.insert("doc".into(), Value::String(d));
        }
        if nullable && self.options.null_defaults {
            f.insert("default".into(), Value::Null);
        }
        Value::Object(f)
    }

    /// The record for a row image's columns.
    fn row_record(&mut self, rel: &Relation, indices: &[usize], fullname: &str) -> Value {
        let names = [rel.name.as_str(), &rel.qualified_name()].map(str::to_string);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let doc = self.doc_for_type(&names, self.meta.and_then(|m| m.comment.as_deref()));
        let avro = avro_names(indices.iter().map(|&i| rel.columns[i].name.as_str()));
        let mut fields = Vec::new();
        for (&i, aname) in indices.iter().zip(avro) {
            let col = &rel.columns[i];
            let nullable = !self.meta.is_some_and(|m| m.not_null.get(i).copied().unwrap_or(false));
            let t = self.scalar(&col.ty, col.type_modifier);
            let t = if nullable { json!(["null", t]) } else { t };
            let comment = self.meta.and_then(|m| m.column_comments.get(i).cloned().flatten());
            let fdoc = self.doc_for_column(&names, &col.name, comment.as_deref());
            fields.push(self.field(&aname, t, nullable, fdoc));
        }
        self.defined.insert(fullname.to_string());
        record(fullname, doc, fields)
    }
}

fn record(name: &str, doc: Option<String>, fields: Vec<Value>) -> Value {
    let mut r = Map::new();
    r.insert("type".into(), json!("record"));
    r.insert("name".into(), Value::String(name.into()));
    if let Some(d) = doc {
        r.insert("doc".into(), Value::String(d));
    }
    r.insert("fields".into(), Value::Array(fields));
    Value::Object(r)
}

/// The schema of a key or an upsert / append-only value: one record of the image's
/// columns.
pub fn row_schema(rel: &Relation, indices: &[usize], role: Role, options: &AvroOptions) -> Value {
    let fullname = match role {
        Role::Key => options.key_fullname.as_deref().unwrap_or("row"),
        Role::Value => options.value_fullname.as_deref().unwrap_or("envelope"),
    };
    let meta = rel.meta.as_deref();
    let mut b = SchemaBuilder { role, options, meta, defined: Default::default() };
    b.row_record(rel, indices, fullname)
}

/// The schema of a Debezium value: `before` and `after` as unions with null of the
/// row record, then `op`, `ts_ms` and the `source` block.
pub fn debezium_schema(rel: &Relation, indices: &[usize], options: &AvroOptions) -> Value {
    let meta = rel.meta.as_deref();
    let mut b = SchemaBuilder { role: Role::Value, options, meta, defined: Default::default() };
    let row = b.row_record(rel, indices, "row");
    let source = record(
        "source",
        None,
        vec![
            json!({"name": "version", "type": "string"}),
            json!({"name": "connector", "type": "string"}),
            json!({"name": "name", "type": "string"}),
            json!({"name": "ts_ms", "type": "long"}),
            json!({"name": "snapshot", "type": "string"}),
            json!({"name": "db", "type": "string"}),
            json!({"name": "schema", "type": "string"}),
            json!({"name": "table", "type": "string"}),
            json!({"name": "txId", "type": "long"}),
            json!({"name": "lsn", "type": "long"}),
        ],
    );
    record(
        options.value_fullname.as_deref().unwrap_or("envelope"),
        None,
        vec![
            json!({"name": "before", "type": ["null", row]}),
            json!({"name": "after", "type": ["null", "row"]}),
            json!({"name": "source", "type": source}),
            json!({"name": "op", "type": "string"}),
            json!({"name": "ts_ms", "type": "long"}),
        ],
    )
}

// ---------------------------------------------------------------------------------
// Binary encoding

pub(crate) fn write_long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(crate) fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    write_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

fn malformed(ty: &PgType, reason: &str) -> SinkError {
    SinkError::permanent(format!("could not encode a {} value as Avro: {reason}", ty.name))
}

/// `YYYY-MM-DD[ BC]` → days since 1970-01-01.
pub(crate) fn date_days(ty: &PgType, text: &str) -> Result<i64> {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (text, false),
    };
    let mut parts = body.splitn(3, '-');
    let mut next = || parts.next().and_then(|p| p.parse::<i64>().ok()).ok_or_else(|| malformed(ty, "not a finite date"));
    let (y, m, d) = (next()?, next()?, next()?);
    let y = if bc { 1 - y } else { y };
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(malformed(ty, "date out of range"));
    }
    let days = days_from_civil(y, m, d);
    if i32::try_from(days).is_err() {
        return Err(malformed(ty, "date out of Avro's range"));
    }
    Ok(days)
}

/// `HH:MM:SS[.ffffff]` → microseconds since midnight.
pub(crate) fn time_micros(ty: &PgType, text: &str) -> Result<i64> {
    let (hms, frac) = text.split_once('.').unwrap_or((text, ""));
    let p: Vec<i64> = hms.split(':').map(|x| x.parse::<i64>()).collect::<std::result::Result<_, _>>().map_err(|_| malformed(ty, "not a time"))?;
    if p.len() != 3 || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(ty, "not a time"));
    }
    let f = if frac.is_empty() { 0 } else { frac.parse::<i64>().unwrap_or(0) * 10i64.pow(6 - frac.len() as u32) };
    Ok((p[0] * 3600 + p[1] * 60 + p[2]) * 1_000_000 + f)
}

/// IntervalStyle `postgres` text → (months, days, microseconds).
pub fn interval_parts(ty: &PgType, text: &str) -> Result<(i32, i32, i64)> {
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if t.contains(':') {
            let neg = t.starts_with('-');
            let u = time_micros(ty, t.trim_start_matches(['-', '+'])).or_else(|_| {
                // Hours beyond 24 (e.g. "100:00:00") are allowed in intervals.
                let (h, rest) = t.trim_start_matches(['-', '+']).split_once(':').ok_or_else(|| malformed(ty, "not an interval"))?;
                Ok::<i64, SinkError>(
                    h.parse::<i64>().map_err(|_| malformed(ty, "not an interval"))? * 3_600_000_000 + time_micros(ty, &format!("00:{rest}"))?,
                )
            })?;
            micros += if neg { -u } else { u };
            i += 1;
            continue;
        }
        let n: i64 = t.parse().map_err(|_| malformed(ty, "not an interval"))?;
        let unit = tokens.get(i + 1).ok_or_else(|| malformed(ty, "not an interval"))?;
        match unit.trim_end_matches('s') {
            "year" => months += 12 * n,
            "mon" => months += n,
            "day" => days += n,
            _ => return Err(malformed(ty, "unknown interval unit")),
        }
        i += 2;
    }
    let months = i32::try_from(months).map_err(|_| malformed(ty, "interval out of range"))?;
    let days = i32::try_from(days).map_err(|_| malformed(ty, "interval out of range"))?;
    Ok((months, days, micros))
}

/// Decimal text → big-endian two's-complement bytes of the unscaled value at `scale`.
pub fn decimal_bytes(ty: &PgType, text: &str, precision: u32, scale: u32) -> Result<Vec<u8>> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(malformed(ty, "NaN and infinity have no Avro decimal form"));
    }
    let frac_kept = frac.trim_end_matches('0');
    if frac_kept.len() > scale as usize {
        return Err(malformed(ty, &format!("more than {scale} fractional digits")));
    }
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes().chain(std::iter::repeat(b'0')).take(scale as usize)).map(|b| b - b'0').collect();
    while digits.len() > 1 && digits[0] == 0 {
        digits.remove(0);
    }
    if digits.len() > precision as usize && !(digits.len() == 1 && digits[0] == 0) {
        return Err(malformed(ty, &format!("more than {precision} digits")));
    }
    // Base 10 → base 256 by repeated division.
    let mut mag: Vec<u8> = Vec::new();
    let mut num = digits;
    while !(num.is_empty() || num.len() == 1 && num[0] == 0) {
        let mut rem = 0u32;
        let mut q = Vec::with_capacity(num.len());
        for d in &num {
            let cur = rem * 10 + u32::from(*d);
            let qd = cur / 256;
            rem = cur % 256;
            if !(q.is_empty() && qd == 0) {
                q.push(qd as u8);
            }
        }
        mag.push(rem as u8);
        num = q;
    }
    mag.reverse();
    // Two's complement, with a sign bit.
    let mut out = if mag.first().is_some_and(|b| b & 0x80 != 0) || mag.is_empty() { vec![0] } else { Vec::new() };
    out.extend(mag);
    if neg {
        for b in out.iter_mut() {
            *b = !*b;
        }
        for b in out.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    Ok(out)
}

/// Write one non-null scalar from its text form.
fn write_scalar(ty: &PgType, typmod: i32, text: &str, out: &mut Vec<u8>) -> Result<()> {
    match &ty.kind {
        TypeKind::Bool => match text {
            "t" | "true" => out.push(1),
            "f" | "false" => out.push(0),
            _ => return Err(malformed(ty, "expected t or f")),
        },
        TypeKind::Int2 | TypeKind::Int4 | TypeKind::Int8 => write_long(text.parse::<i64>().map_err(|_| malformed(ty, "not an integer"))?, out),
        TypeKind::Float4 => out.extend_from_slice(&text.parse::<f32>().map_err(|_| malformed(ty, "not a number"))?.to_le_bytes()),
        TypeKind::Float8 => out.extend_from_slice(&text.parse::<f64>().map_err(|_| malformed(ty, "not a number"))?.to_le_bytes()),
        TypeKind::Bytea => write_bytes(&super::bytea_from_hex(text).ok_or_else(|| malformed(ty, "expected hex bytea output"))?, out),
        TypeKind::Date => write_long(date_days(ty, text)?, out),
        TypeKind::Time => write_long(time_micros(ty, text)?, out),
        TypeKind::Timestamp | TypeKind::TimestampTz => {
            let us = timestamp_micros(text, ty.kind == TypeKind::TimestampTz).map_err(|e| malformed(ty, e))?;
            let v = if timestamp_millis(typmod) { us.div_euclid(1000) } else { us };
            write_long(i64::try_from(v).map_err(|_| malformed(ty, "out of Avro's range"))?, out);
        }
        TypeKind::Numeric => {
            let (p, s) = decimal_of(ty, typmod).unwrap_or((81, 39));
            write_bytes(&decimal_bytes(ty, text, p, s)?, out);
        }
        TypeKind::Interval => {
            let (months, days, micros) = interval_parts(ty, text)?;
            out.extend_from_slice(&micros.to_le_bytes());
            out.extend_from_slice(&days.to_le_bytes());
            out.extend_from_slice(&months.to_le_bytes());
        }
        TypeKind::Oid => out.extend_from_slice(&text.parse::<u32>().map_err(|_| malformed(ty, "not an oid"))?.to_le_bytes()),
        TypeKind::Array(_) | TypeKind::Composite(_) => {
            let v = cell_to_json(ty, text)?;
            write_nested(ty, &v, out)?;
        }
        _ => write_bytes(text.as_bytes(), out),
    }
    Ok(())
}

/// Arrays and composites arrive parsed as JSON (see the json encoder); write their
/// elements and fields from it.
fn write_nested(ty: &PgType, v: &Value, out: &mut Vec<u8>) -> Result<()> {
    match (&ty.kind, v) {
        (TypeKind::Array(elem), Value::Array(items)) => {
            if !items.is_empty() {
                write_long(items.len() as i64, out);
                for it in items {
                    write_optional_json(elem, it, out)?;
                }
            }
            out.push(0);
            Ok(())
        }
        (TypeKind::Composite(fields), Value::Object(map)) => {
            for (name, fty) in fields {
                write_optional_json(fty, map.get(name).unwrap_or(&Value::Null), out)?;
            }
            Ok(())
        }
        _ => Err(malformed(ty, "unexpected shape")),
    }
}

/// A nullable element or field from its JSON form: union index, then the value.
fn write_optional_json(ty: &PgType, v: &Value, out: &mut Vec<u8>) -> Result<()> {
    if v.is_null() {
        out.push(0);
        return Ok(());
    }
    out.push(2); // union branch 1, zigzag
    match (&ty.kind, v) {
        (TypeKind::Array(_) | TypeKind::Composite(_), _) => {
            if matches!(ty.kind, TypeKind::Composite(_)) || v.is_array() {
                write_nested(ty, v, out)
            } else {
                Err(malformed(ty, "unexpected shape"))
            }
        }
        (_, Value::Array(_)) => Err(SinkError::permanent(format!("multi-dimensional {} arrays cannot be encoded as Avro", ty.name))
            .hint("Use the JSON format for this sink, or leave the column out.")),
        (TypeKind::Timestamp | TypeKind::TimestampTz, Value::String(ms)) => {
            // The JSON form is epoch milliseconds with microsecond fraction.
            let (whole, frac) = ms.split_once('.').unwrap_or((ms, ""));
            let w: i64 = whole.parse().map_err(|_| malformed(ty, "not a finite timestamp"))?;
            let f: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<3}")[..3].parse().unwrap_or(0) };
            write_long(w * 1000 + if w < 0 && f > 0 { -f } else { f }, out);
            Ok(())
        }
        (TypeKind::Json | TypeKind::Jsonb, v) => {
            write_bytes(v.to_string().as_bytes(), out);
            Ok(())
        }
        (_, Value::String(s)) => write_scalar(ty, -1, s, out),
        (_, Value::Bool(b)) => write_scalar(ty, -1, if *b { "t" } else { "f" }, out),
        (_, other) => write_scalar(ty, -1, &other.to_string(), out),
    }
}

/// Write a row image's columns as the record of [`row_schema`].
fn write_row(row: &RowImage, not_null: impl Fn(usize) -> bool, out: &mut Vec<u8>) -> Result<()> {
    for &i in row.indices.iter() {
        let col = &row.relation.columns[i];
        let nullable = !not_null(i);
        match &row.cells[i] {
            Cell::Null if nullable => out.push(0),
            Cell::Null => {
                return Err(SinkError::permanent(format!(
                    "column \"{}\" of relation \"{}\" is NULL but its Avro type is not nullable",
                    col.name,
                    row.relation.qualified_name()
                )))
            }
            Cell::Unchanged => {
                return Err(SinkError::permanent(format!(
                    "column \"{}\" of relation \"{}\" holds an unchanged TOAST value that was not filled in",
                    col.name,
                    row.relation.qualified_name()
                ))
                .hint("Set REPLICA IDENTITY FULL on the table so updates carry the old value."))
            }
            Cell::Text(t) => {
                if nullable {
                    out.push(2);
                }
                write_scalar(&col.ty, col.type_modifier, t, out).map_err(|e| {
                    SinkError::permanent(format!("column \"{}\" of relation \"{}\": {}", col.name, row.relation.qualified_name(), e.message))
                        .hint("Use the JSON format for this sink, or change the column's type.")
                })?;
            }
        }
    }
    Ok(())
}

fn write_debezium(ev: &DebeziumEvent, not_null: &dyn Fn(usize) -> bool, out: &mut Vec<u8>) -> Result<()> {
    for image in [&ev.before, &ev.after] {
        match image {
            None => out.push(0),
            Some(r) => {
                out.push(2);
                write_row(r, not_null, out)?;
            }
        }
    }
    let s = &ev.source;
    let ts_ms = s.commit_time_us.div_euclid(1000);
    write_bytes(concat!("pg_sink-", env!("CARGO_PKG_VERSION")).as_bytes(), out);
    write_bytes(b"postgresql", out);
    write_bytes(s.sink_name.as_bytes(), out);
    write_long(ts_ms, out);
    write_bytes(s.snapshot.to_string().as_bytes(), out);
    write_bytes(s.database.as_bytes(), out);
    write_bytes(s.schema.as_bytes(), out);
    write_bytes(s.table.as_bytes(), out);
    write_long(i64::from(s.xid), out);
    write_long(s.lsn.0 as i64, out);
    write_bytes(ev.op.debezium_code().as_bytes(), out);
    write_long(ts_ms, out);
    Ok(())
}

// ---------------------------------------------------------------------------------
// The encoder

/// A schema ready for writing: its registry id (if any) and which columns are NOT NULL.
#[derive(Debug, Clone)]
struct Compiled {
    id: Option<u32>,
    not_null: Arc<[bool]>,
}

pub struct AvroEncoder {
    role: Role,
    debezium: bool,
    options: AvroOptions,
    registry: Option<Registry>,
    subject: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By relation (pointer identity, the Arc kept alive) and image columns (checked
    /// on a hit, so a reused address of a freed column list cannot alias).
    by_relation: HashMap<(usize, usize), (Arc<Relation>, Vec<usize>, Compiled)>,
    /// By schema text: a schema registered once is not registered again.
    by_schema: BTreeMap<String, Compiled>,
    compatibility_set: bool,
}

/// What the Avro encoder needs beyond the format's name (the pipeline fills it
/// for every sink; other encoders need nothing).
#[derive(Debug, Clone, Default)]
pub struct EncoderContext {
    pub avro: AvroOptions,
    pub registry: Option<super::registry::RegistrySettings>,
    /// Registry subjects are `<subject_base>-key` / `-value` (the topic for Kafka).
    pub subject_base: String,
    /// Values are Debezium events.
    pub debezium: bool,
    /// ... in Debezium's own value forms (JSON only).
    pub debezium_compat: bool,
    /// Debezium's handling modes (`debezium.compat`).
    pub debezium_modes: super::modes::Modes,
    /// The sink's name: Debezium's `topic.prefix` in Connect schema names.
    pub sink_name: String,
    /// ... wrapped with Kafka Connect schemas, named under this prefix (the
    /// sink's name, Debezium's `topic.prefix`).
    pub connect_schemas: Option<String>,
}

impl AvroEncoder {
    pub fn new(role: Role, ctx: &EncoderContext) -> Result<Self> {
        for (opt, v) in [("avro_key_fullname", &ctx.avro.key_fullname), ("avro_value_fullname", &ctx.avro.value_fullname)] {
            if let Some(v) = v {
                check_fullname(opt, v)?;
            }
        }
        let registry = ctx.registry.as_ref().map(Registry::new).transpose()?;
        let subject = format!("{}-{}", ctx.subject_base, if role == Role::Key { "key" } else { "value" });
        Ok(AvroEncoder { role, debezium: ctx.debezium, options: ctx.avro.clone(), registry, subject, state: Mutex::new(State::default()) })
    }

    fn compiled(&self, rel: &Arc<Relation>, indices: &[usize]) -> Result<Compiled> {
        let key = (Arc::as_ptr(rel) as usize, indices.as_ptr() as usize ^ indices.len());
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, cols, c)) = st.by_relation.get(&key) {
            if cols.as_slice() == indices {
                return Ok(c.clone());
            }
        }
        let schema = if self.debezium && self.role == Role::Value {
            debezium_schema(rel, indices, &self.options)
        } else {
            row_schema(rel, indices, self.role, &self.options)
        };
        let text = schema.to_string();
        let compiled = match st.by_schema.get(&text) {
            Some(c) => c.clone(),
            None => {
                apache_avro::Schema::parse_str(&text)
                    .map_err(|e| SinkError::permanent(format!("generated an invalid Avro schema for \"{}\": {e}", rel.qualified_name())))?;
                let not_null: Arc<[bool]> =
                    (0..rel.columns.len()).map(|i| rel.meta.as_ref().is_some_and(|m| m.not_null.get(i).copied().unwrap_or(false))).collect();
                let id = match &self.registry {
                    None => None,
                    Some(reg) => {
                        if !st.compatibility_set {
                            let level = if self.role == Role::Key { &self.options.key_compatibility } else { &self.options.value_compatibility };
                            if let Some(level) = level {
                                reg.set_compatibility(&self.subject, level)?;
                            }
                            st.compatibility_set = true;
                        }
                        Some(reg.register(&self.subject, &text)?)
                    }
                };
                let c = Compiled { id, not_null };
                st.by_schema.insert(text, c.clone());
                c
            }
        };
        if st.by_relation.len() > 256 {
            st.by_relation.clear();
        }
        st.by_relation.insert(key, (rel.clone(), indices.to_vec(), compiled.clone()));
        Ok(compiled)
    }

    fn header(c: &Compiled, out: &mut Vec<u8>) {
        if let Some(id) = c.id {
            out.push(0);
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
}

impl Encoder for AvroEncoder {
    fn name(&self) -> &'static str {
        "avro"
    }

    fn encode_key(&self, key: &RowImage) -> Result<Vec<u8>> {
        let c = self.compiled(&key.relation, &key.indices)?;
        let mut out = Vec::with_capacity(64);
        Self::header(&c, &mut out);
        write_row(key, |i| c.not_null.get(i).copied().unwrap_or(false), &mut out)?;
        Ok(out)
    }

    fn encode_value(&self, payload: &Payload) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(256);
        match payload {
            Payload::Tombstone | Payload::Truncate(_) => return Ok(None),
            Payload::Message(_) => return Err(SinkError::permanent("a logical message has no Avro form")),
            Payload::Transaction(_) => return Err(SinkError::permanent("a transaction event has no Avro form here")),
            Payload::Schema(_) => return Ok(None),
            Payload::Row(row) => {
                let c = self.compiled(&row.relation, &row.indices)?;
                Self::header(&c, &mut out);
                write_row(row, |i| c.not_null.get(i).copied().unwrap_or(false), &mut out)?;
            }
            Payload::Debezium(ev) => {
                let image = ev.after.as_ref().or(ev.before.as_ref());
                let Some(image) = image else {
                    // A Debezium truncate event has no row: it has no Avro form here.
                    return Ok(None);
                };
                let c = self.compiled(&image.relation, &image.indices)?;
                Self::header(&c, &mut out);
                let nn = c.not_null.clone();
                write_debezium(ev, &move |i| nn.get(i).copied().unwrap_or(false), &mut out)?;
            }
        }
        Ok(Some(out))
    }

    fn strip_prefix(&self) -> usize {
        if self.registry.is_some() {
            5
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::{Column, RelationMeta};
    use apache_avro::types::Value as AV;

    fn col(name: &str, oid: u32, typmod: i32) -> Column {
        Column { name: name.into(), ty: PgType::from_oid(oid), type_modifier: typmod, is_identity: false }
    }

    fn relation(cols: Vec<Column>, meta: Option<RelationMeta>) -> Arc<Relation> {
        Arc::new(Relation { id: 7, namespace: "public".into(), name: "t".into(), replica_identity: b'd', columns: cols, meta: meta.map(Arc::new) })
    }

    fn image(rel: &Arc<Relation>, cells: Vec<Option<&str>>) -> RowImage {
        RowImage {
            relation: rel.clone(),
            indices: (0..rel.columns.len()).collect::<Vec<_>>().into(),
            cells: cells.into_iter().map(|c| c.map_or(Cell::Null, |t| Cell::Text(t.into()))).collect::<Vec<_>>().into(),
        }
    }

    fn decode(schema: &Value, bytes: &[u8]) -> AV {
        let s = apache_avro::Schema::parse_str(&schema.to_string()).unwrap();
        let mut r = bytes;
        let v = apache_avro::from_avro_datum(&s, &mut r, None).unwrap();
        assert!(r.is_empty(), "trailing bytes");
        v
    }

    #[test]
    fn names_follow_materialize_rules() {
        assert_eq!(avro_names(["col-a", "col@a"]), vec!["col_a", "col_a1"]);
        assert_eq!(avro_names(["1st", "ok_name", "a b", "a_b", "a_b"]), vec!["_1st", "ok_name", "a_b", "a_b1", "a_b2"]);
        assert_eq!(avro_names(["é"]), vec!["_"]);
        assert!(check_fullname("o", "com.example.Row").is_ok());
        assert!(check_fullname("o", "1bad").is_err());
        assert!(check_fullname("o", "a..b").is_err());
    }

    #[test]
    fn every_type_maps_as_the_conversion_table_says() {
        let cols = vec![
            col("i8", 20, -1),
            col("b", 16, -1),
            col("by", 17, -1),
            col("d", 1082, -1),
            col("f8", 701, -1),
            col("i4", 23, -1),
            col("iv", 1186, -1),
            col("j", 3802, -1),
            col("n", 1700, ((10 << 16) | 2) + 4),
            col("nu", 1700, -1),
            col("o", 26, -1),
            col("f4", 700, -1),
            col("i2", 21, -1),
            col("t", 25, -1),
            col("tm", 1083, -1),
            col("ts3", 1114, 3),
            col("ts6", 1184, -1),
            col("arr", 1007, -1),
            col("u", 2950, -1),
            col("inet", 869, -1),
        ];
        let not_null = vec![true; cols.len()];
        let rel = relation(cols, Some(RelationMeta { not_null, ..Default::default() }));
        let idx: Vec<usize> = (0..rel.columns.len()).collect();
        let s = row_schema(&rel, &idx, Role::Value, &AvroOptions::default());
        let types: Vec<Value> = s["fields"].as_array().unwrap().iter().map(|f| f["type"].clone()).collect();
        let expected = vec![
            json!("long"),
            json!("boolean"),
            json!("bytes"),
            json!({"type": "int", "logicalType": "date"}),
            json!("double"),
            json!("int"),
            json!({"type": "fixed", "size": 16, "name": "com.materialize.sink.interval"}),
            json!({"type": "string", "connect.name": "io.debezium.data.Json"}),
            json!({"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}),
            json!({"type": "bytes", "logicalType": "decimal", "precision": 81, "scale": 39}),
            json!({"type": "fixed", "size": 4, "name": "com.materialize.sink.uint4"}),
            json!("float"),
            json!("int"),
            json!("string"),
            json!({"type": "long", "logicalType": "time-micros"}),
            json!({"type": "long", "logicalType": "timestamp-millis"}),
            json!({"type": "long", "logicalType": "timestamp-micros"}),
            json!({"type": "array", "items": ["null", "int"]}),
            json!({"type": "string", "logicalType": "uuid"}),
            json!("string"),
        ];
        assert_eq!(types, expected);
        assert_eq!(s["name"], "envelope");

        // Values round-trip through apache-avro's decoder.
        let row = image(
            &rel,
            vec![
                Some("-9000000000"),
                Some("t"),
                Some("\\x00ff10"),
                Some("2024-03-01"),
                Some("2.5"),
                Some("-7"),
                Some("1 year 2 mons 3 days 04:05:06.5"),
                Some("{\"a\": [1, null]}"),
                Some("-12.30"),
                Some("0.000000000000000000000000000000000000001"),
                Some("4294967295"),
                Some("1.5"),
                Some("300"),
                Some("héllo"),
                Some("13:14:15.000016"),
                Some("1970-01-01 00:00:01.234567"),
                Some("1969-12-31 23:59:59.999999+00"),
                Some("{1,NULL,3}"),
                Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                Some("10.0.0.1/32"),
            ],
        );
        let mut out = Vec::new();
        write_row(&row, |_| true, &mut out).unwrap();
        let AV::Record(fields) = decode(&s, &out) else { panic!("not a record") };
        let f: BTreeMap<String, AV> = fields.into_iter().collect();
        assert_eq!(f["i8"], AV::Long(-9_000_000_000));
        assert_eq!(f["b"], AV::Boolean(true));
        assert_eq!(f["by"], AV::Bytes(vec![0, 255, 16]));
        assert_eq!(f["d"], AV::Date(19783));
        assert_eq!(f["f8"], AV::Double(2.5));
        assert_eq!(f["i4"], AV::Int(-7));
        let mut iv = 14_706_500_000i64.to_le_bytes().to_vec();
        iv.extend(3i32.to_le_bytes());
        iv.extend(14i32.to_le_bytes());
        assert_eq!(f["iv"], AV::Fixed(16, iv));
        assert_eq!(f["j"], AV::String("{\"a\": [1, null]}".into()));
        let AV::Decimal(d) = &f["n"] else { panic!("{:?}", f["n"]) };
        assert_eq!(Vec::<u8>::try_from(d.clone()).unwrap(), (-1230i64).to_be_bytes()[6..].to_vec());
        let AV::Decimal(d) = &f["nu"] else { panic!() };
        assert_eq!(Vec::<u8>::try_from(d.clone()).unwrap(), vec![1]);
        assert_eq!(f["o"], AV::Fixed(4, vec![255, 255, 255, 255]));
        assert_eq!(f["f4"], AV::Float(1.5));
        assert_eq!(f["i2"], AV::Int(300));
        assert_eq!(f["t"], AV::String("héllo".into()));
        assert_eq!(f["tm"], AV::TimeMicros(47_655_000_016));
        assert_eq!(f["ts3"], AV::TimestampMillis(1234));
        assert_eq!(f["ts6"], AV::TimestampMicros(-1));
        assert_eq!(
            f["arr"],
            AV::Array(vec![AV::Union(1, Box::new(AV::Int(1))), AV::Union(0, Box::new(AV::Null)), AV::Union(1, Box::new(AV::Int(3)))])
        );
        assert!(matches!(&f["u"], AV::Uuid(_) | AV::String(_)));
        assert_eq!(f["inet"], AV::String("10.0.0.1/32".into()));
    }

    #[test]
    fn nullable_columns_are_unions_with_optional_null_defaults() {
        let meta = RelationMeta { not_null: vec![true, false], ..Default::default() };
        let rel = relation(vec![col("id", 23, -1), col("v", 25, -1)], Some(meta));
        let opts = AvroOptions { null_defaults: true, ..Default::default() };
        let s = row_schema(&rel, &[0, 1], Role::Value, &opts);
        assert_eq!(s["fields"][0], json!({"name": "id", "type": "int"}));
        assert_eq!(s["fields"][1], json!({"name": "v", "type": ["null", "string"], "default": null}));
        let mut out = Vec::new();
        write_row(&image(&rel, vec![Some("5"), None]), |i| i == 0, &mut out).unwrap();
        let AV::Record(f) = decode(&s, &out) else { panic!() };
        assert_eq!(f[1].1, AV::Union(0, Box::new(AV::Null)));
        // A NULL in a NOT NULL column is refused, not written wrongly.
        assert!(write_row(&image(&rel, vec![None, None]), |i| i == 0, &mut Vec::new()).is_err());
    }

    #[test]
    fn doc_on_reproduces_the_seed_example_exactly() {
        let meta = RelationMeta {
            not_null: vec![true, true],
            comment: Some("SQL comment on t".into()),
            column_comments: vec![None, Some("SQL comment on t.value".into())],
            ..Default::default()
        };
        let rel = relation(vec![col("key", 23, -1), col("value", 25, -1)], Some(meta));
        let mut opts = AvroOptions::default();
        for (name, doc) in [
            ("doc_on_type_t", "Top-level comment for container record in both key and value schemas"),
            ("key_doc_on_column_t.key", "Comment on column only in key schema"),
            ("value_doc_on_column_t.key", "Comment on column only in value schema"),
        ] {
            opts.docs.push(parse_doc_option(name, doc).unwrap().unwrap());
        }
        let key = row_schema(&rel, &[0], Role::Key, &opts);
        assert_eq!(
            key,
            json!({"type": "record", "name": "row", "doc": "Top-level comment for container record in both key and value schemas",
                   "fields": [{"name": "key", "type": "int", "doc": "Comment on column only in key schema"}]})
        );
        let value = row_schema(&rel, &[0, 1], Role::Value, &opts);
        assert_eq!(
            value,
            json!({"type": "record", "name": "envelope", "doc": "Top-level comment for container record in both key and value schemas",
                   "fields": [{"name": "key", "type": "int", "doc": "Comment on column only in value schema"},
                              {"name": "value", "type": "string", "doc": "SQL comment on t.value"}]})
        );
        // Without options the comments are used; fullnames are applied.
        let opts = AvroOptions { key_fullname: Some("com.x.K".into()), value_fullname: Some("com.x.V".into()), ..Default::default() };
        assert_eq!(row_schema(&rel, &[0], Role::Key, &opts)["doc"], "SQL comment on t");
        assert_eq!(row_schema(&rel, &[0], Role::Key, &opts)["name"], "com.x.K");
        assert!(parse_doc_option("doc_on_column_nodot", "x").unwrap().is_err());
        assert!(parse_doc_option("doc_on_table_t", "x").unwrap().is_err());
        assert!(parse_doc_option("topic", "x").is_none());
    }

    #[test]
    fn composites_are_named_records_with_their_docs() {
        let point =
            PgType::new(90001, "geo.point2", TypeKind::Composite(vec![("x".into(), PgType::from_oid(701)), ("y-val".into(), PgType::from_oid(701))]));
        let mut type_docs = BTreeMap::new();
        type_docs.insert(90001, (Some("A point".to_string()), [("x".to_string(), "X axis".to_string())].into_iter().collect()));
        let meta = RelationMeta { not_null: vec![false, false], type_docs, ..Default::default() };
        let cols = vec![
            Column { name: "a".into(), ty: point.clone(), type_modifier: -1, is_identity: false },
            Column { name: "b".into(), ty: point, type_modifier: -1, is_identity: false },
        ];
        let rel = relation(cols, Some(meta));
        let mut opts = AvroOptions::default();
        opts.docs.push(parse_doc_option("value_doc_on_column_geo.point2.y-val", "Y from option").unwrap().unwrap());
        let s = row_schema(&rel, &[0, 1], Role::Value, &opts);
        assert_eq!(
            s["fields"][0]["type"],
            json!(["null", {"type": "record", "name": "point2", "doc": "A point", "fields": [
                {"name": "x", "type": ["null", "double"], "doc": "X axis"},
                {"name": "y_val", "type": ["null", "double"], "doc": "Y from option"}]}])
        );
        // The second use refers to the record by name.
        assert_eq!(s["fields"][1]["type"], json!(["null", "point2"]));
        let mut out = Vec::new();
        write_row(&image(&rel, vec![Some("(1.5,)"), None]), |_| false, &mut out).unwrap();
        let AV::Record(f) = decode(&s, &out) else { panic!() };
        let AV::Union(1, p) = &f[0].1 else { panic!("{:?}", f[0].1) };
        assert_eq!(**p, AV::Record(vec![("x".into(), AV::Union(1, Box::new(AV::Double(1.5)))), ("y_val".into(), AV::Union(0, Box::new(AV::Null)))]));
    }

    #[test]
    fn debezium_values_decode_with_before_and_after() {
        use crate::engine::envelope::{Op, SourceInfo};
        use crate::engine::lsn::Lsn;
        let rel = relation(vec![col("id", 23, -1), col("v", 25, -1)], None);
        let schema = debezium_schema(&rel, &[0, 1], &AvroOptions::default());
        let ev = DebeziumEvent {
            before: Some(image(&rel, vec![Some("1"), Some("a")])),
            after: Some(image(&rel, vec![Some("1"), None])),
            op: Op::Update,
            source: SourceInfo {
                sink_name: "s".into(),
                database: "db".into(),
                schema: "public".into(),
                table: "t".into(),
                xid: 9,
                lsn: Lsn(99),
                commit_time_us: 5_000_000,
                snapshot: false,
                last_commit: None,
            },
            transaction: None,
            truncated: None,
        };
        let mut out = Vec::new();
        write_debezium(&ev, &|_| false, &mut out).unwrap();
        let AV::Record(f) = decode(&schema, &out) else { panic!() };
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["before", "after", "source", "op", "ts_ms"]);
        assert_eq!(f[3].1, AV::String("u".into()));
        assert_eq!(f[4].1, AV::Long(5000));
        let AV::Union(1, after) = &f[1].1 else { panic!() };
        let AV::Record(a) = after.as_ref() else { panic!() };
        assert_eq!(a[1].1, AV::Union(0, Box::new(AV::Null)));
    }

    #[test]
    fn values_without_an_avro_form_are_refused_with_the_column() {
        let rel = relation(vec![col("n", 1700, ((5 << 16) | 1) + 4)], None);
        for bad in ["NaN", "1.25", "123456.7"] {
            let e = write_row(&image(&rel, vec![Some(bad)]), |_| false, &mut Vec::new()).unwrap_err();
            assert!(e.message.contains("column \"n\""), "{bad}: {}", e.message);
            assert!(!e.is_transient());
        }
        let rel = relation(vec![col("d", 1082, -1)], None);
        assert!(write_row(&image(&rel, vec![Some("infinity")]), |_| false, &mut Vec::new()).is_err());
        let rel = relation(vec![col("m", 1007, -1)], None);
        let e = write_row(&image(&rel, vec![Some("{{1,2},{3,4}}")]), |_| false, &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("multi-dimensional"), "{}", e.message);
    }

    #[test]
    fn encoder_frames_nothing_without_a_registry() {
        let rel = relation(vec![col("id", 23, -1)], None);
        let enc = AvroEncoder::new(Role::Key, &EncoderContext { subject_base: "t".into(), ..Default::default() }).unwrap();
        let bytes = enc.encode_key(&image(&rel, vec![Some("-1")])).unwrap();
        assert_eq!(bytes, vec![2, 1]); // union branch 1, zigzag(-1)
        assert_eq!(enc.strip_prefix(), 0);
    }
}
