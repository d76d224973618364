//! Debezium's events in Avro as Kafka Connect's Avro converter writes them: the
//! debezium envelope in `debezium.compat` with format `avro`. An event is first
//! written as Kafka Connect's JSON with schemas ([`super::json`] with
//! [`super::connect`]: Debezium's own Connect schemas and value forms, checked
//! against Debezium by the oracle test); its Connect schema is then mapped to
//! Avro by the converter's rules ([`avro_schema`]: records named by the Connect
//! names, `connect.*` properties, Avro's decimal/date/time logical types,
//! optional fields as unions with a `null` default), and its payload written in
//! Avro's binary encoding under that schema ([`write_datum`]). Schemas are
//! registered under `<topic>-key` / `<topic>-value` (a transaction's BEGIN and
//! END under `<topic>.transaction-key` / `-value`) and framed as the `avro` format
//! frames its own.
//!
//! The reference for the mapping is Apicurio Registry's `AvroData` (a port of
//! Confluent's `AvroData`, which is not on Maven Central), run over Debezium's own
//! events by `tools/debezium` (`AvroOfConnect`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::avro::{write_bytes, write_long};
use super::json::JsonEncoder;
use super::modes::Modes;
use super::registry::Registry;
use super::{Encoder, Role};
use crate::engine::envelope::{Payload, RowImage};
use crate::engine::error::{Result, SinkError};

/// The Avro schema a Connect schema (JSON form) maps to.
pub fn avro_schema(connect: &Value) -> Value {
    let mut defined = HashSet::new();
    let (base, _) = mapped(connect, None, &mut defined);
    base
}

/// `(name, namespace)` of a Connect name: `a.b.C` → (`C`, `a.b`).
fn split_name(full: &str) -> (&str, Option<&str>) {
    match full.rsplit_once('.') {
        Some((ns, name)) => (name, Some(ns)),
        None => (full, None),
    }
}

/// The Connect schema's own Avro type and, for a nullable one, its union with
/// `null` (`(type, field default)`).
fn mapped(c: &Value, ns: Option<&str>, defined: &mut HashSet<String>) -> (Value, Option<Value>) {
    let base = base_type(c, ns, defined);
    if !c["optional"].as_bool().unwrap_or(false) {
        return (base, c.get("default").cloned());
    }
    match c.get("default").filter(|d| !d.is_null()) {
        // A default that is not null: its type first in the union.
        Some(d) => (json!([base, "null"]), Some(d.clone())),
        None => (json!(["null", base]), Some(Value::Null)),
    }
}

fn base_type(c: &Value, ns: Option<&str>, defined: &mut HashSet<String>) -> Value {
    let ty = c["type"].as_str().unwrap_or("string");
    let name = c["name"].as_str();
    let mut props = Map::new();
    let avro = match ty {
        "int8" | "int16" => {
            props.insert("connect.type".into(), json!(ty));
            "int"
        }
        "int32" => "int",
        "int64" => "long",
        "float" => "float",
        "double" => "double",
        "boolean" => "boolean",
        "bytes" => "bytes",
        "array" => {
            let (items, _) = mapped(&c["items"], ns, defined);
            return json!({"type": "array", "items": items});
        }
        "struct" => return record(c, ns, defined),
        _ => "string",
    };
    if name == Some("org.apache.kafka.connect.data.Decimal") {
        let p = &c["parameters"];
        let scale = p["scale"].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let precision = p["connect.decimal.precision"].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(64);
        props.insert("scale".into(), json!(scale));
        props.insert("precision".into(), json!(precision));
    }
    connect_props(c, &mut props);
    let logical = match name {
        Some("org.apache.kafka.connect.data.Decimal") => Some("decimal"),
        Some("org.apache.kafka.connect.data.Date") => Some("date"),
        Some("org.apache.kafka.connect.data.Time") => Some("time-millis"),
        Some("org.apache.kafka.connect.data.Timestamp") => Some("timestamp-millis"),
        _ => None,
    };
    if let Some(l) = logical {
        props.insert("logicalType".into(), json!(l));
    }
    if props.is_empty() {
        return json!(avro);
    }
    let mut out = Map::new();
    out.insert("type".into(), json!(avro));
    out.extend(props);
    Value::Object(out)
}

/// The `connect.*` properties the converter keeps of a Connect schema.
fn connect_props(c: &Value, props: &mut Map<String, Value>) {
    if let Some(doc) = c.get("doc").filter(|d| !d.is_null()) {
        props.insert("connect.doc".into(), doc.clone());
    }
    if let Some(v) = c.get("version").filter(|v| !v.is_null()) {
        props.insert("connect.version".into(), v.clone());
    }
    if let Some(p) = c.get("parameters").filter(|p| !p.is_null()) {
        props.insert("connect.parameters".into(), p.clone());
    }
    if let Some(d) = c.get("default").filter(|d| !d.is_null()) {
        props.insert("connect.default".into(), d.clone());
    }
    if let Some(n) = c.get("name").filter(|n| !n.is_null()) {
        props.insert("connect.name".into(), n.clone());
    }
}

/// A struct as a record; one already written is referred to by its name (short
/// in its own namespace), as Avro's writers print it.
fn record(c: &Value, ns: Option<&str>, defined: &mut HashSet<String>) -> Value {
    let full = c["name"].as_str().unwrap_or("io.confluent.connect.avro.ConnectDefault");
    let (name, namespace) = split_name(full);
    if defined.contains(full) {
        return json!(if namespace == ns { name } else { full });
    }
    defined.insert(full.to_string());
    let fields: Vec<Value> = c["fields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    let (ty, default) = mapped(f, namespace, defined);
                    let mut field = Map::new();
                    field.insert("name".into(), f["field"].clone());
                    field.insert("type".into(), ty);
                    if let Some(d) = default {
                        field.insert("default".into(), d);
                    }
                    Value::Object(field)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert("type".into(), json!("record"));
    out.insert("name".into(), json!(name));
    if namespace.is_some() && namespace != ns {
        out.insert("namespace".into(), json!(namespace));
    }
    out.insert("fields".into(), Value::Array(fields));
    connect_props(c, &mut out);
    Value::Object(out)
}

fn bad(what: &str) -> SinkError {
    SinkError::permanent(format!("could not encode a Debezium event as Avro: {what}"))
}

/// A float of Connect's JSON: a number, or `"NaN"` / `"Infinity"` / `"-Infinity"`.
fn float_of(v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad("a float out of range")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(bad("a float that is not a number")),
        },
        _ => Err(bad("a float that is not a number")),
    }
}

/// `payload` (Connect's JSON form of a value of schema `c`) in Avro's binary
/// encoding under [`avro_schema`]`(c)`.
pub fn write_datum(c: &Value, payload: &Value, out: &mut Vec<u8>) -> Result<()> {
    if c["optional"].as_bool().unwrap_or(false) {
        // The union [null, T], or [T, null] for a schema with a default.
        let null_first = c.get("default").is_none_or(|d| d.is_null());
        let index = match (payload.is_null(), null_first) {
            (true, true) | (false, false) => 0,
            _ => 1,
        };
        write_long(index, out);
        if payload.is_null() {
            return Ok(());
        }
    } else if payload.is_null() {
        return Err(bad(&format!("null for a required {}", c["field"].as_str().unwrap_or("value"))));
    }
    match c["type"].as_str().unwrap_or("string") {
        "int8" | "int16" | "int32" | "int64" => write_long(payload.as_i64().ok_or_else(|| bad("an integer that is not one"))?, out),
        "float" => out.extend_from_slice(&(float_of(payload)? as f32).to_le_bytes()),
        "double" => out.extend_from_slice(&float_of(payload)?.to_le_bytes()),
        "boolean" => out.push(u8::from(payload.as_bool().ok_or_else(|| bad("a boolean that is not one"))?)),
        "bytes" => {
            let text = payload.as_str().ok_or_else(|| bad("bytes that are not base64 text"))?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| bad("bytes that are not base64"))?;
            write_bytes(&bytes, out);
        }
        "array" => {
            let items = payload.as_array().ok_or_else(|| bad("an array that is not one"))?;
            if !items.is_empty() {
                write_long(items.len() as i64, out);
                for item in items {
                    write_datum(&c["items"], item, out)?;
                }
            }
            write_long(0, out);
        }
        "struct" => {
            for f in c["fields"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let name = f["field"].as_str().unwrap_or_default();
                write_datum(f, payload.get(name).unwrap_or(&Value::Null), out)?;
            }
        }
        _ => match payload {
            Value::String(s) => write_bytes(s.as_bytes(), out),
            other => write_bytes(other.to_string().as_bytes(), out),
        },
    }
    Ok(())
}

/// A Connect schema as parsed JSON, and its Avro form's registry id.
struct Compiled {
    connect: Value,
    id: Option<u32>,
}

/// The `avro` format of a sink with `debezium.compat` (see the module's doc).
pub struct ConnectAvroEncoder {
    json: JsonEncoder,
    role: Role,
    registry: Option<Registry>,
    subject_base: String,
    compatibility: Option<String>,
    /// By Connect schema: the JSON encoder shares one text per table shape, so
    /// its address names it (the entry keeps it alive).
    compiled: Mutex<HashMap<usize, (Arc<str>, Arc<Compiled>)>>,
    /// Subjects whose compatibility level was set.
    levels_set: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ConnectAvroEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectAvroEncoder").field("role", &self.role).field("subject_base", &self.subject_base).finish()
    }
}

impl ConnectAvroEncoder {
    /// For a sink named `prefix` (Debezium's `topic.prefix`), under `modes`.
    pub fn new(role: Role, prefix: &str, modes: Modes, ctx: &super::avro::EncoderContext) -> Result<Self> {
        let compatibility = if role == Role::Key { ctx.avro.key_compatibility.clone() } else { ctx.avro.value_compatibility.clone() };
        Ok(ConnectAvroEncoder {
            json: super::debezium::json_encoder(modes).with_connect_schemas(prefix),
            role,
            registry: ctx.registry.as_ref().map(Registry::new).transpose()?,
            subject_base: ctx.subject_base.clone(),
            compatibility,
            compiled: Mutex::new(HashMap::new()),
            levels_set: Mutex::new(HashSet::new()),
        })
    }

    fn subject(&self, transaction: bool) -> String {
        let part = if self.role == Role::Key { "key" } else { "value" };
        if transaction {
            format!("{}.transaction-{part}", self.subject_base)
        } else {
            format!("{}-{part}", self.subject_base)
        }
    }

    /// The Connect schema's Avro form, made and registered once.
    fn compiled(&self, schema: &Arc<str>, transaction: bool) -> Result<Arc<Compiled>> {
        let at = Arc::as_ptr(schema) as *const u8 as usize;
        if let Some((_, c)) = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&at) {
            return Ok(c.clone());
        }
        let connect: Value = serde_json::from_str(schema).map_err(|e| bad(&e.to_string()))?;
        let avro = avro_schema(&connect).to_string();
        apache_avro::Schema::parse_str(&avro).map_err(|e| bad(&format!("the mapped schema is not valid Avro: {e}")))?;
        let id = match &self.registry {
            None => None,
            Some(reg) => {
                let subject = self.subject(transaction);
                if let Some(level) = &self.compatibility {
                    if self.levels_set.lock().unwrap_or_else(|e| e.into_inner()).insert(subject.clone()) {
                        reg.set_compatibility(&subject, level)?;
                    }
                }
                Some(reg.register(&subject, &avro)?)
            }
        };
        let c = Arc::new(Compiled { connect, id });
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 64 {
            map.clear();
        }
        map.insert(at, (schema.clone(), c.clone()));
        Ok(c)
    }

    /// A payload (Connect's JSON form) with its Connect schema → the framed Avro datum.
    fn encode(&self, (schema, payload): (Option<Arc<str>>, Vec<u8>), transaction: bool) -> Result<Vec<u8>> {
        let schema = schema.ok_or_else(|| bad("a record without a Connect schema"))?;
        let compiled = self.compiled(&schema, transaction)?;
        let payload: Value = serde_json::from_slice(&payload).map_err(|e| bad(&e.to_string()))?;
        let mut out = Vec::with_capacity(256);
        if let Some(id) = compiled.id {
            out.push(0);
            out.extend_from_slice(&id.to_be_bytes());
        }
        write_datum(&compiled.connect, &payload, &mut out)?;
        Ok(out)
    }
}

impl Encoder for ConnectAvroEncoder {
    fn name(&self) -> &'static str {
        "avro"
    }

    fn encode_key(&self, key: &RowImage) -> Result<Vec<u8>> {
        self.encode(self.json.key_parts(key)?, false)
    }

    fn encode_value(&self, payload: &Payload) -> Result<Option<Vec<u8>>> {
        let transaction = matches!(payload, Payload::Transaction(_));
        match self.json.value_parts(payload)? {
            None => Ok(None),
            Some(parts) => self.encode(parts, transaction).map(Some),
        }
    }

    fn encode_transaction_key(&self, id: &str) -> Result<Vec<u8>> {
        self.encode(self.json.transaction_key_parts(id), true)
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

    /// Debezium 3.6.1's schemas for the oracle test's table, under Apicurio's
    /// AvroData (`scripts/debezium.sh avro`), for the kinds of Connect schema
    /// Debezium uses.
    #[test]
    fn connect_schemas_map_to_avro_as_the_converter_maps_them() {
        let columns = json!([
            {"type": "int32", "optional": false, "field": "id"},
            {"type": "int16", "optional": true, "field": "s"},
            {"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
             "parameters": {"scale": "3", "connect.decimal.precision": "12"}, "field": "d"},
            {"type": "array", "items": {"type": "int32", "optional": true}, "optional": true, "field": "a"}]);
        let connect = json!({"type": "struct", "name": "p.public.t.Envelope", "version": 2, "optional": false, "fields": [
            {"type": "struct", "name": "p.public.t.Value", "optional": true, "field": "before", "fields": columns},
            {"type": "struct", "name": "p.public.t.Value", "optional": true, "field": "after", "fields": columns},
            {"type": "struct", "name": "io.debezium.connector.postgresql.Source", "version": 1, "optional": false, "field": "source", "fields": [
                {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1, "parameters": {"allowed": "true,false"},
                 "default": "false", "field": "snapshot"}]},
            {"type": "int64", "optional": true, "field": "ts_ms"}]});
        let avro = avro_schema(&connect);
        assert_eq!(avro["name"], "Envelope");
        assert_eq!(avro["namespace"], "p.public.t");
        assert_eq!(avro["connect.version"], 2);
        let f = avro["fields"].as_array().unwrap();
        let before = &f[0]["type"][1];
        assert_eq!((before["name"].as_str(), before.get("namespace")), (Some("Value"), None), "the enclosing namespace is not repeated");
        assert_eq!(before["fields"][1]["type"], json!(["null", {"type": "int", "connect.type": "int16"}]));
        assert_eq!(
            before["fields"][2]["type"][1],
            json!({"type": "bytes", "scale": 3, "precision": 12, "connect.version": 1,
                   "connect.parameters": {"scale": "3", "connect.decimal.precision": "12"},
                   "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal"})
        );
        assert_eq!(before["fields"][3]["type"], json!(["null", {"type": "array", "items": ["null", "int"]}]));
        assert_eq!(f[1], json!({"name": "after", "type": ["null", "Value"], "default": null}), "named once, then referred to");
        assert_eq!(f[2]["type"]["namespace"], "io.debezium.connector.postgresql");
        assert_eq!(f[2]["type"]["fields"][0]["default"], "false");
        assert_eq!(f[2]["type"]["fields"][0]["type"][1], "null", "a default that is not null goes first");
        assert_eq!(f[3], json!({"name": "ts_ms", "type": ["null", "long"], "default": null}));
        apache_avro::Schema::parse_str(&avro.to_string()).unwrap();

        // The datum follows the same unions.
        let payload = json!({"before": null, "after": {"id": 1, "s": null, "d": "HL6ZGoU=", "a": [1, null]},
                             "source": {"snapshot": "false"}, "ts_ms": 5});
        let mut out = Vec::new();
        write_datum(&connect, &payload, &mut out).unwrap();
        let schema = apache_avro::Schema::parse_str(&avro.to_string()).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut &out[..], None).unwrap();
        let apache_avro::types::Value::Record(fields) = value else { panic!("a record") };
        assert_eq!(fields[0].1, apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)));
        assert_eq!(fields[3].1, apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Long(5))));
    }
}
