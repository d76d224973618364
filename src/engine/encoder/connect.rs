//! Kafka Connect's JSON form with schemas (`JsonConverter` with
//! `schemas.enable=true`): every key and value is `{"schema": .., "payload": ..}`,
//! the schema describing the payload in Connect's types. This module owns those
//! schemas for the debezium envelope in its compatible mode, as Debezium's
//! Postgres connector declares them: the `Key` and `Value` structs of a table, the
//! `Envelope` around them, the `source` block and the `transaction` block. The
//! column types follow [`super::debezium`]'s value forms:
//!
//! | type | Connect schema |
//! |---|---|
//! | `int2` / `int4` / `int8`, `oid` | `int16` / `int32` / `int64` |
//! | `float4` / `float8` | `float` / `double` |
//! | `numeric(p,s)` | `bytes`, `org.apache.kafka.connect.data.Decimal` (scale, precision) |
//! | `numeric` | struct `io.debezium.data.VariableScaleDecimal` (scale, value) |
//! | `date` | `int32`, `io.debezium.time.Date` |
//! | `time(0..3)` / `time` | `int32` `io.debezium.time.Time` / `int64` `io.debezium.time.MicroTime` |
//! | `timetz` | `string`, `io.debezium.time.ZonedTime` |
//! | `timestamp(0..3)` / `timestamp` | `int64` `io.debezium.time.Timestamp` / `io.debezium.time.MicroTimestamp` |
//! | `timestamptz` | `string`, `io.debezium.time.ZonedTimestamp` |
//! | `interval` | `int64`, `io.debezium.time.MicroDuration` |
//! | `uuid`, `json`/`jsonb`, enums | `string`, `io.debezium.data.Uuid` / `Json` / `Enum` (allowed values) |
//! | `bytea` | `bytes` |
//! | arrays | `array` of the element's schema (optional) |
//! | everything else | `string` |
//!
//! A column is optional unless it is declared NOT NULL.

use serde_json::{json, Value};

use super::modes::{BinaryMode, DecimalMode, Modes, TimeMode};
use crate::engine::change::{Column, Relation};
use crate::engine::envelope::RowImage;
use crate::engine::types::{PgType, TypeKind};

fn named(ty: &str, name: &str) -> Value {
    json!({"type": ty, "name": name, "version": 1})
}

/// A column type's schema, without `optional` and `field`.
fn type_schema(ty: &PgType, typmod: i32, rel: &Relation, modes: &Modes) -> Value {
    let connect = modes.time == TimeMode::Connect;
    match &ty.kind {
        TypeKind::Int2 => json!({"type": "int16"}),
        TypeKind::Int4 => json!({"type": "int32"}),
        TypeKind::Int8 | TypeKind::Oid => json!({"type": "int64"}),
        TypeKind::Float4 => json!({"type": "float"}),
        TypeKind::Float8 => json!({"type": "double"}),
        TypeKind::Bool => json!({"type": "boolean"}),
        TypeKind::Numeric if modes.decimal == DecimalMode::String => json!({"type": "string"}),
        TypeKind::Numeric if modes.decimal == DecimalMode::Double => json!({"type": "double"}),
        TypeKind::Numeric if typmod >= 4 => {
            let (p, s) = (((typmod - 4) >> 16) & 0xffff, (typmod - 4) & 0xffff);
            json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                   "parameters": {"scale": s.to_string(), "connect.decimal.precision": p.to_string()}})
        }
        TypeKind::Numeric => json!({
            "type": "struct",
            "fields": [{"type": "int32", "optional": false, "field": "scale"}, {"type": "bytes", "optional": false, "field": "value"}],
            "name": "io.debezium.data.VariableScaleDecimal", "version": 1, "doc": "Variable scaled decimal"
        }),
        TypeKind::Bytea if modes.binary == BinaryMode::Bytes => json!({"type": "bytes"}),
        TypeKind::Bytea => json!({"type": "string"}),
        TypeKind::Date if connect => named("int32", "org.apache.kafka.connect.data.Date"),
        TypeKind::Date => named("int32", "io.debezium.time.Date"),
        TypeKind::Time if connect => named("int32", "org.apache.kafka.connect.data.Time"),
        TypeKind::Time if modes.millis(&ty.kind, typmod) => named("int32", "io.debezium.time.Time"),
        TypeKind::Time => named("int64", "io.debezium.time.MicroTime"),
        TypeKind::TimeTz => named("string", "io.debezium.time.ZonedTime"),
        TypeKind::Timestamp if connect => named("int64", "org.apache.kafka.connect.data.Timestamp"),
        TypeKind::Timestamp if modes.millis(&ty.kind, typmod) => named("int64", "io.debezium.time.Timestamp"),
        TypeKind::Timestamp => named("int64", "io.debezium.time.MicroTimestamp"),
        TypeKind::TimestampTz => named("string", "io.debezium.time.ZonedTimestamp"),
        TypeKind::Interval if modes.interval_string => named("string", "io.debezium.time.Interval"),
        TypeKind::Interval => named("int64", "io.debezium.time.MicroDuration"),
        TypeKind::Uuid => named("string", "io.debezium.data.Uuid"),
        TypeKind::Json | TypeKind::Jsonb => named("string", "io.debezium.data.Json"),
        TypeKind::Enum => {
            let allowed = rel.meta.as_ref().and_then(|m| m.enum_labels.get(&ty.oid)).map(|l| l.join(",")).unwrap_or_default();
            json!({"type": "string", "name": "io.debezium.data.Enum", "version": 1, "parameters": {"allowed": allowed}})
        }
        TypeKind::Array(elem) => {
            let mut items = type_schema(elem, -1, rel, modes);
            items["optional"] = Value::Bool(true);
            json!({"type": "array", "items": items})
        }
        _ => json!({"type": "string"}),
    }
}

fn column_schema(rel: &Relation, index: usize, column: &Column, modes: &Modes) -> Value {
    let mut s = type_schema(&column.ty, column.type_modifier, rel, modes);
    let not_null = rel.meta.as_ref().and_then(|m| m.not_null.get(index).copied()).unwrap_or(false);
    s["optional"] = Value::Bool(!not_null);
    s["field"] = Value::String(column.name.clone());
    s
}

/// The struct of a row image's columns (`<prefix>.<schema>.<table>.Key|Value`).
fn row_struct(row: &RowImage, prefix: &str, suffix: &str, optional: bool, modes: &Modes) -> Value {
    let rel = &row.relation;
    let fields: Vec<Value> = row.indices.iter().map(|&i| column_schema(rel, i, &rel.columns[i], modes)).collect();
    json!({"type": "struct", "fields": fields, "optional": optional, "name": format!("{prefix}.{}.{}.{suffix}", rel.namespace, rel.name)})
}

/// The key's schema.
pub fn key_schema(key: &RowImage, prefix: &str, modes: &Modes) -> Value {
    row_struct(key, prefix, "Key", false, modes)
}

fn field(mut schema: Value, name: &str) -> Value {
    schema["field"] = Value::String(name.into());
    schema
}

fn opt(ty: &str, name: &str) -> Value {
    json!({"type": ty, "optional": true, "field": name})
}

fn req(ty: &str, name: &str) -> Value {
    json!({"type": ty, "optional": false, "field": name})
}

/// Debezium's `io.debezium.connector.postgresql.Source` (with Debezium 3's fields).
fn source_schema() -> Value {
    json!({
        "type": "struct",
        "fields": [
            req("string", "version"),
            req("string", "connector"),
            req("string", "name"),
            req("int64", "ts_ms"),
            {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
             "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
             "default": "false", "field": "snapshot"},
            req("string", "db"),
            opt("string", "sequence"),
            opt("int64", "ts_us"),
            opt("int64", "ts_ns"),
            req("string", "schema"),
            req("string", "table"),
            opt("int64", "txId"),
            opt("int64", "lsn"),
            opt("int64", "xmin"),
            opt("string", "origin"),
            opt("int64", "origin_lsn"),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "version": 1,
        "field": "source"
    })
}

fn transaction_schema() -> Value {
    json!({
        "type": "struct",
        "fields": [req("string", "id"), req("int64", "total_order"), req("int64", "data_collection_order")],
        "optional": true,
        "name": "event.block",
        "version": 1,
        "field": "transaction"
    })
}

/// Debezium's `TransactionMetadataKey`, the key of BEGIN and END events.
pub const TRANSACTION_KEY_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"}],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataKey","version":1}"#;

/// Debezium's `TransactionMetadataValue`, the value of BEGIN and END events.
pub const TRANSACTION_VALUE_SCHEMA: &str = concat!(
    r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"status"},{"type":"string","optional":false,"field":"id"},"#,
    r#"{"type":"int64","optional":true,"field":"event_count"},{"type":"array","items":{"type":"struct","fields":["#,
    r#"{"type":"string","optional":false,"field":"data_collection"},{"type":"int64","optional":false,"field":"event_count"}],"#,
    r#""optional":true,"name":"event.collection","version":1},"optional":true,"field":"data_collections"},"#,
    r#"{"type":"int64","optional":false,"field":"ts_ms"}],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataValue","version":1}"#
);

/// [`TRANSACTION_KEY_SCHEMA`] and [`TRANSACTION_VALUE_SCHEMA`] as shared texts
/// (one address each, as [`SchemaCache`] gives table shapes).
pub static TRANSACTION_SCHEMAS: std::sync::LazyLock<(std::sync::Arc<str>, std::sync::Arc<str>)> =
    std::sync::LazyLock::new(|| (TRANSACTION_KEY_SCHEMA.into(), TRANSACTION_VALUE_SCHEMA.into()));

/// The value's schema: the `Envelope` of `before`/`after` rows of `image`'s shape.
pub fn envelope_schema(image: &RowImage, prefix: &str, modes: &Modes) -> Value {
    let value = row_struct(image, prefix, "Value", true, modes);
    let rel = &image.relation;
    json!({
        "type": "struct",
        "fields": [
            field(value.clone(), "before"),
            field(value, "after"),
            source_schema(),
            transaction_schema(),
            req("string", "op"),
            opt("int64", "ts_ms"),
            opt("int64", "ts_us"),
            opt("int64", "ts_ns"),
        ],
        "optional": false,
        "name": format!("{prefix}.{}.{}.Envelope", rel.namespace, rel.name),
        "version": 2
    })
}

/// `{"schema": schema, "payload": <payload bytes>}`, the schema already JSON text.
pub fn wrap(schema: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(schema.len() + payload.len() + 24);
    out.extend_from_slice(b"{\"schema\":");
    out.extend_from_slice(schema.as_bytes());
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.push(b'}');
}

/// Key or value schema, as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Key,
    Value,
}

/// The schemas of the shapes seen last, as JSON text: a schema is built once per
/// table shape (a relation, and which of its columns an image holds), not per
/// record. Entries hold their relation, so a pointer is never reused while cached.
#[derive(Debug, Default)]
pub struct SchemaCache {
    /// The sink's handling modes, which decide some columns' schemas.
    modes: Modes,
    entries: std::sync::Mutex<Vec<(Part, std::sync::Arc<crate::engine::change::Relation>, std::sync::Arc<[usize]>, std::sync::Arc<str>)>>,
}

impl SchemaCache {
    pub fn new(modes: Modes) -> Self {
        SchemaCache { modes, ..Default::default() }
    }

    /// Shapes kept (a sink has one table; its shape changes with its schema).
    const KEEP: usize = 8;

    pub fn get(&self, part: Part, image: &RowImage, prefix: &str) -> std::sync::Arc<str> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((.., s)) = entries.iter().find(|(p, r, i, _)| *p == part && std::sync::Arc::ptr_eq(r, &image.relation) && **i == *image.indices) {
            return s.clone();
        }
        let schema = match part {
            Part::Key => key_schema(image, prefix, &self.modes),
            Part::Value => envelope_schema(image, prefix, &self.modes),
        };
        let text: std::sync::Arc<str> = serde_json::to_string(&schema).unwrap_or_else(|_| "null".into()).into();
        if entries.len() >= Self::KEEP {
            entries.remove(0);
        }
        entries.push((part, image.relation.clone(), image.indices.clone(), text.clone()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::RelationMeta;
    use serde_json::Map;
    use std::sync::Arc;

    /// A struct schema's fields by name.
    fn fields_of(v: &Value) -> Map<String, Value> {
        v["fields"].as_array().unwrap().iter().map(|f| (f["field"].as_str().unwrap().to_string(), f.clone())).collect()
    }

    #[test]
    fn columns_get_debezium_s_connect_types_and_not_null_decides_optional() {
        let col = |name: &str, oid: u32, typmod: i32| Column { name: name.into(), ty: PgType::from_oid(oid), type_modifier: typmod, is_identity: name == "id" };
        let mut rel = Relation {
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: vec![col("id", 23, -1), col("amount", 1700, (12 << 16 | 3) + 4), col("n", 1700, -1), col("at", 1114, -1), col("at3", 1114, 3), col("tags", 1009, -1)],
            meta: None,
        };
        rel.meta = Some(Arc::new(RelationMeta { not_null: vec![true, false, false, false, false, false], ..Default::default() }));
        let rel = Arc::new(rel);
        let image = RowImage { relation: rel.clone(), indices: (0..6).collect::<Vec<_>>().into(), cells: Vec::new().into() };
        let env = envelope_schema(&image, "srv", &Modes::default());
        assert_eq!(env["name"], "srv.public.t.Envelope");
        let after = &fields_of(&env)["after"];
        assert_eq!((after["name"].as_str(), after["optional"].as_bool()), (Some("srv.public.t.Value"), Some(true)));
        let cols = fields_of(after);
        assert_eq!(cols["id"], json!({"type": "int32", "optional": false, "field": "id"}));
        assert_eq!(cols["amount"]["parameters"], json!({"scale": "3", "connect.decimal.precision": "12"}));
        assert_eq!(cols["n"]["name"], "io.debezium.data.VariableScaleDecimal");
        assert_eq!((cols["at"]["name"].as_str(), cols["at3"]["name"].as_str()), (Some("io.debezium.time.MicroTimestamp"), Some("io.debezium.time.Timestamp")));
        assert_eq!(cols["tags"], json!({"type": "array", "items": {"type": "string", "optional": true}, "optional": true, "field": "tags"}));
        let key = RowImage { relation: rel, indices: vec![0].into(), cells: Vec::new().into() };
        assert_eq!(key_schema(&key, "srv", &Modes::default())["fields"], json!([{"type": "int32", "optional": false, "field": "id"}]));
        let mut out = Vec::new();
        wrap(r#"{"type":"int32"}"#, b"7", &mut out);
        assert_eq!(out, br#"{"schema":{"type":"int32"},"payload":7}"#);
        // Built once per shape, the same text as a fresh build.
        let cache = SchemaCache::default();
        let first = cache.get(Part::Value, &image, "srv");
        assert!(std::sync::Arc::ptr_eq(&first, &cache.get(Part::Value, &image, "srv")), "cached");
        assert_eq!(&*first, serde_json::to_string(&envelope_schema(&image, "srv", &Modes::default())).unwrap());
        assert_eq!(&*cache.get(Part::Key, &key, "srv"), serde_json::to_string(&key_schema(&key, "srv", &Modes::default())).unwrap());
    }
}
