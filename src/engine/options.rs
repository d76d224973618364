//! A sink's definition as users give it — one flat option map, Materialize and
//! RisingWave spellings both accepted — parsed and validated into [`SinkDefinition`].
//! Everything here is checked before anything is created, so a bad option changes
//! nothing.

use std::collections::BTreeMap;

use super::connector::registry;
use super::connector::ConnectorSpec;
use super::encoder;
use super::encoder::avro::{self, AvroOptions, COMPATIBILITY_LEVELS};
use super::encoder::registry::RegistrySettings;
use super::envelope::EnvelopeKind;
use super::change::Change;
use super::error::{Result, SinkError};
use super::dead_letter;
use super::retention;
use super::schema_change;

/// How a sink is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// The background worker delivers continuously.
    Continuous,
    /// Only `sink.sync()` delivers (e.g. from pg_cron).
    Manual,
}

impl Schedule {
    pub fn as_str(&self) -> &'static str {
        match self {
            Schedule::Continuous => "continuous",
            Schedule::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SinkDefinition {
    pub connector: &'static ConnectorSpec,
    pub envelope: EnvelopeKind,
    pub key_format: String,
    pub value_format: String,
    pub key_columns: Vec<String>,
    pub key_not_enforced: bool,
    pub force_append_only: bool,
    pub snapshot: bool,
    /// The initial snapshot read in key-ordered chunks while the stream flows
    /// (`snapshot.mode = 'incremental'`, resumable) instead of in one consistent pass.
    pub snapshot_incremental: bool,
    pub schedule: Schedule,
    /// What an UPDATE's unchanged TOAST column carries without REPLICA IDENTITY FULL.
    pub unchanged_toast: UnchangedToast,
    /// The debezium envelope in Debezium's own value forms, keyed by the primary
    /// key, with tombstones after deletes and a key change as delete + create.
    pub debezium_compat: bool,
    /// Keys and values as Kafka Connect's `{"schema", "payload"}` (`schemas.enable`).
    pub connect_schemas: bool,
    /// Debezium's handling modes of values (`decimal.handling.mode`, ...).
    pub debezium_modes: crate::engine::encoder::modes::Modes,
    /// A tombstone after each delete (`tombstones.on.delete`, under `debezium.compat`).
    pub tombstones_on_delete: bool,
    /// Debezium's transaction metadata (`provide.transaction.metadata`): BEGIN and
    /// END events, and each event's place in its transaction.
    pub transaction_metadata: bool,
    /// The most WAL the sink's slot may hold back (`None`: the server's setting).
    pub max_retained_wal: Option<u64>,
    /// What happens past that limit.
    pub wal_retention_policy: retention::Policy,
    /// What a record the target refuses for good does (`errors.policy`).
    pub errors_policy: dead_letter::Policy,
    /// Prefixes of the transactional logical decoding messages the sink delivers.
    pub messages: Vec<String>,
    /// The kinds of change the sink does not deliver (`skipped.operations`).
    pub skipped: SkippedOps,
    /// What a schema change of the source does (`schema.changes`).
    pub schema_changes: schema_change::Handling,
    /// Refuse an `ALTER TABLE` of the source that the sink could not follow
    /// (`schema.gate`, [`super::schema_gate`]).
    pub schema_gate: bool,
    /// Connector-specific options, validated against the connector's spec.
    pub connector_options: BTreeMap<String, String>,
    /// Avro options (fullnames, NULL DEFAULTS, DOC ON, compatibility levels).
    pub avro: AvroOptions,
    /// The schema registry, if the sink uses one.
    pub registry: Option<RegistrySettings>,
}

/// Sink-level options (everything else belongs to the connector), with what
/// they mean (`sink.options()` lists them).
pub const SINK_OPTIONS: &[(&str, &str)] = &[
    ("envelope", "append-only, upsert or debezium (default debezium)"),
    ("type", "alias of envelope (RisingWave)"),
    ("format", "key and value format: json (default), avro, text, bytes"),
    ("encode", "alias of format (RisingWave)"),
    ("key_format", "the key's format, when it differs from the value's"),
    ("value_format", "the value's format, when it differs from the key's"),
    ("key", "key columns, 'a,b' (upsert defaults to the primary key)"),
    ("primary_key", "alias of key (RisingWave)"),
    ("key_not_enforced", "skip the uniqueness proof of an upsert key (Materialize NOT ENFORCED)"),
    ("force_append_only", "append-only only: updates become inserts; deletes and truncates are dropped"),
    ("snapshot", "deliver the existing rows first, consistent with the slot (default true)"),
    ("snapshot.mode", "the initial snapshot: consistent (default: one pass under the slot's exported snapshot) or incremental (key-ordered chunks interleaved with the stream, resumed where it stopped after a crash; needs a primary key)"),
    ("schedule", "continuous (the worker delivers) or manual (only sink.sync() does)"),
    ("unchanged_toast", "an UPDATE's unchanged TOASTed column: fetch (default; placeholder under debezium.compat), placeholder or fail"),
    ("schemas.enable", "debezium.compat: keys and values as Kafka Connect's JSON with schemas, {\"schema\": .., \"payload\": ..} (default false)"),
    ("debezium.compat", "debezium envelope: Debezium's value forms, primary-key record keys, tombstones after deletes (default false)"),
    ("decimal.handling.mode", "debezium.compat: numeric as precise (default: Debezium's bytes), string or double"),
    ("time.precision.mode", "debezium.compat: adaptive (default), adaptive_time_microseconds or connect (Kafka Connect's Date, Time, Timestamp)"),
    ("binary.handling.mode", "debezium.compat: bytea as bytes (default), base64, base64-url-safe or hex"),
    ("interval.handling.mode", "debezium.compat: interval as numeric microseconds (default) or string (ISO 8601)"),
    ("tombstones.on.delete", "debezium.compat: a tombstone follows each delete (default true)"),
    ("provide.transaction.metadata", "debezium.compat: BEGIN and END events around each transaction (Kafka: on transaction_topic) and a transaction block in each event (default false)"),
    ("max_retained_wal", "the most WAL the sink's slot may hold back, e.g. 10GB (default: pg_sink.max_retained_wal)"),
    ("wal_retention_policy", "past max_retained_wal: pause (default), fail or resnapshot"),
    ("messages", "prefixes of pg_logical_emit_message(true, prefix, content) messages to deliver, 'a,b' (Debezium: message.prefix.include.list)"),
    ("message.prefix.include.list", "Debezium's spelling of messages"),
    ("schema.gate", "refuse an ALTER TABLE of the source that the sink could not follow (a narrowing retype or key change its target cannot take, any change under schema.changes = 'stop'), with an error naming the sink (default false)"),
    ("schema.changes", "a schema change of the source (ALTER TABLE): apply (default: table and jdbc targets follow it), stop (the sink fails there) or ignore"),
    ("skipped.operations", "changes not delivered: any of c (insert), u (update), d (delete), t (truncate), or none (default t; none for table and jdbc)"),
    ("errors.policy", "a record the target refuses for good: fail (default) stops the sink, skip leaves it out, dead_letter keeps it in sink.dead_letters"),
    ("csr_connection", "a schema registry connection (Avro)"),
    ("schema.registry", "the schema registry's URL (Avro)"),
    ("schema.registry.username", "the schema registry's user"),
    ("schema.registry.password", "the schema registry's password"),
    ("schema.registry.ssl_ca", "the authority the schema registry's certificate is checked against (PEM)"),
    ("schema.registry.ssl_certificate", "a client certificate for the schema registry (PEM)"),
    ("schema.registry.ssl_key", "the client certificate's key (PEM)"),
    ("avro_key_fullname", "the Avro key schema's full name"),
    ("avro_value_fullname", "the Avro value schema's full name"),
    ("null_defaults", "Avro: nullable fields get a null default"),
    ("key_compatibility_level", "the registry compatibility level set on the key subject"),
    ("value_compatibility_level", "the registry compatibility level set on the value subject"),
];

/// `TOPIC PARTITION COUNT` → `topic_partition_count`; dotted names stay dotted.
pub fn normalize_name(name: &str) -> String {
    name.trim().to_ascii_lowercase().split_whitespace().collect::<Vec<_>>().join("_")
}

pub use super::connector::parse_bool;
use super::toast::UnchangedToast;

/// Split `a, b` into column names (a key given as one string).
pub fn split_columns(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn take_alias(opts: &mut BTreeMap<String, String>, a: &str, b: &str) -> Result<Option<String>> {
    match (opts.remove(a), opts.remove(b)) {
        (Some(x), Some(y)) if x != y => Err(SinkError::config(format!("conflicting options \"{a}\" and \"{b}\""))
            .detail(format!("\"{a}\" is \"{x}\" but \"{b}\" is \"{y}\"."))
            .hint(format!("\"{b}\" is an alias of \"{a}\"; give only one."))),
        (x, y) => Ok(x.or(y)),
    }
}

/// Parse a definition. `options` keys are normalized here.
pub fn parse(connector_name: &str, options: &BTreeMap<String, String>) -> Result<SinkDefinition> {
    let spec = registry::spec(connector_name)?;
    let mut opts: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in options {
        let n = normalize_name(k);
        if opts.insert(n.clone(), v.clone()).is_some() {
            return Err(SinkError::config(format!("option \"{n}\" specified more than once")));
        }
    }
    let envelope = match take_alias(&mut opts, "envelope", "type")? {
        None => EnvelopeKind::Debezium,
        Some(e) => EnvelopeKind::parse(&e)
            .ok_or_else(|| SinkError::config(format!("unknown envelope \"{e}\"")).hint("Supported envelopes: append-only, upsert, debezium."))?,
    };
    let format = take_alias(&mut opts, "format", "encode")?;
    let key_format = opts.remove("key_format").or_else(|| format.clone()).unwrap_or_else(|| "json".into()).to_ascii_lowercase();
    let value_format = opts.remove("value_format").or(format).unwrap_or_else(|| "json".into()).to_ascii_lowercase();
    encoder::formats::check_format(&key_format)?;
    encoder::formats::check_format(&value_format)?;
    let key_columns = take_alias(&mut opts, "key", "primary_key")?.map(|k| split_columns(&k)).unwrap_or_default();
    let bool_opt = |opts: &mut BTreeMap<String, String>, n: &str, default: bool| -> Result<bool> {
        opts.remove(n).map(|v| parse_bool(n, &v)).transpose().map(|v| v.unwrap_or(default))
    };
    let key_not_enforced = bool_opt(&mut opts, "key_not_enforced", false)?;
    let force_append_only = bool_opt(&mut opts, "force_append_only", false)?;
    let snapshot = bool_opt(&mut opts, "snapshot", true)?;
    let snapshot_incremental = match opts.remove("snapshot.mode").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("consistent") => false,
        Some("incremental") => true,
        Some(other) => {
            return Err(SinkError::config(format!("invalid value for option \"snapshot.mode\": \"{other}\""))
                .hint("Use consistent (one pass, the default) or incremental (chunks by key while the stream flows, resumable)."))
        }
    };
    let schedule = match opts.remove("schedule").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("continuous") => Schedule::Continuous,
        Some("manual") => Schedule::Manual,
        Some(other) => {
            return Err(SinkError::config(format!("invalid value for option \"schedule\": \"{other}\""))
                .hint("Use continuous (the background worker delivers) or manual (only sink.sync() delivers)."))
        }
    };
    let unchanged_toast = opts.remove("unchanged_toast").map(|v| UnchangedToast::parse(&v)).transpose()?;
    let debezium_compat = bool_opt(&mut opts, "debezium.compat", false)?;
    // Debezium writes its placeholder for a TOASTed value an update left alone.
    let unchanged_toast = unchanged_toast.unwrap_or(if debezium_compat { UnchangedToast::Placeholder } else { UnchangedToast::default() });
    if debezium_compat && envelope != EnvelopeKind::Debezium {
        return Err(SinkError::config("debezium.compat requires the debezium envelope")
            .detail(format!("The sink's envelope is {}.", envelope.as_str()))
            .hint("Set envelope => 'debezium', or drop debezium.compat."));
    }
    if debezium_compat && !matches!(value_format.as_str(), "json" | "avro") {
        return Err(SinkError::config(format!("debezium.compat needs value format json or avro, not {value_format}"))
            .hint("Drop the format option (json is the default), or drop debezium.compat."));
    }
    let connect_schemas = bool_opt(&mut opts, "schemas.enable", false)?;
    if connect_schemas && !debezium_compat {
        return Err(SinkError::config("schemas.enable requires debezium.compat")
            .detail("Kafka Connect schemas describe Debezium's value forms.")
            .hint("Set envelope => 'debezium' and \"debezium.compat\": true, or drop schemas.enable."));
    }
    let mut debezium_modes = crate::engine::encoder::modes::Modes::default();
    for (option, _) in crate::engine::encoder::modes::MODE_OPTIONS {
        if let Some(value) = opts.remove(*option) {
            if !debezium_compat {
                return Err(SinkError::config(format!("{option} requires debezium.compat"))
                    .detail("It is one of Debezium's handling modes, for values in Debezium's forms.")
                    .hint(format!("Set envelope => 'debezium' and \"debezium.compat\": true, or drop {option}.")));
            }
            debezium_modes.set(option, &value)?;
        }
    }
    let tombstones_given = opts.contains_key("tombstones.on.delete");
    let tombstones_on_delete = bool_opt(&mut opts, "tombstones.on.delete", true)?;
    if tombstones_given && !debezium_compat {
        return Err(SinkError::config("tombstones.on.delete requires debezium.compat")
            .hint("Set envelope => 'debezium' and \"debezium.compat\": true, or drop tombstones.on.delete."));
    }
    let transaction_metadata = bool_opt(&mut opts, "provide.transaction.metadata", false)?;
    if transaction_metadata && !debezium_compat {
        return Err(SinkError::config("provide.transaction.metadata requires debezium.compat")
            .detail("Transaction metadata is Debezium's, for events in Debezium's form.")
            .hint("Set envelope => 'debezium' and \"debezium.compat\": true, or drop provide.transaction.metadata."));
    }
    if transaction_metadata && spec.applies_rows {
        return Err(SinkError::config(format!("connector \"{}\" cannot deliver transaction metadata", spec.name))
            .detail("It applies each transaction's rows to a table in one transaction of its own; BEGIN and END events are not rows.")
            .hint("Drop provide.transaction.metadata."));
    }
    if connect_schemas && key_format != "json" {
        return Err(SinkError::config(format!("schemas.enable needs key format json, not {key_format}")).hint("Drop key_format, or drop schemas.enable."));
    }
    let max_retained_wal = opts.remove("max_retained_wal").map(|v| retention::parse_limit(&v)).transpose()?;
    let wal_retention_policy = opts.remove("wal_retention_policy").map(|v| retention::Policy::parse(&v)).transpose()?.unwrap_or_default();
    let errors_policy = opts.remove("errors.policy").map(|v| dead_letter::Policy::parse(&v)).transpose()?.unwrap_or_default();
    let messages = take_alias(&mut opts, "messages", "message.prefix.include.list")?.map(|v| split_columns(&v)).unwrap_or_default();
    check_messages(spec, &messages, &key_format, &value_format, &opts)?;
    let schema_changes = opts.remove("schema.changes").map(|v| schema_change::Handling::parse(&v)).transpose()?.unwrap_or_default();
    let schema_gate = bool_opt(&mut opts, "schema.gate", false)?;
    let skipped = match opts.remove("skipped.operations") {
        Some(v) => SkippedOps::parse(&v)?,
        // A table that mirrors the source applies TRUNCATE; a stream of records
        // skips it, as Debezium does.
        None if spec.applies_rows => SkippedOps::default(),
        None => SkippedOps { truncate: true, ..SkippedOps::default() },
    };
    if force_append_only && envelope != EnvelopeKind::AppendOnly {
        return Err(SinkError::config("force_append_only requires the append-only envelope")
            .detail(format!("The sink's envelope is {}.", envelope.as_str()))
            .hint("Set envelope => 'append-only', or drop force_append_only."));
    }
    if key_not_enforced && key_columns.is_empty() {
        return Err(SinkError::config("NOT ENFORCED requires a KEY").hint("Give the key columns with key => ARRAY['col'] ."));
    }
    if envelope == EnvelopeKind::Debezium && matches!(value_format.as_str(), "text" | "bytes") {
        return Err(SinkError::config(format!("the debezium envelope cannot be encoded as {}", value_format.to_ascii_uppercase()))
            .detail("A Debezium event has several fields; TEXT and BYTES encode one column.")
            .hint("Use VALUE FORMAT JSON or AVRO, or another envelope."));
    }
    let (avro, registry) = parse_avro(&mut opts, &key_format, &value_format, !key_columns.is_empty())?;
    if spec.needs_json && value_format != "json" {
        return Err(
            SinkError::config(format!("connector \"{}\" requires format json", spec.name)).detail(format!("The value format is {value_format}."))
        );
    }
    registry::validate_options(spec, &opts)?;
    Ok(SinkDefinition {
        connector: spec,
        envelope,
        key_format,
        value_format,
        key_columns,
        key_not_enforced,
        force_append_only,
        snapshot,
        snapshot_incremental,
        schedule,
        unchanged_toast,
        debezium_compat,
        connect_schemas,
        transaction_metadata,
        debezium_modes,
        tombstones_on_delete,
        max_retained_wal,
        wal_retention_policy,
        errors_policy,
        messages,
        skipped,
        schema_changes,
        schema_gate,
        connector_options: opts,
        avro,
        registry,
    })
}

/// Debezium's `skipped.operations`: the kinds of change a sink leaves out. The
/// snapshot's rows and logical messages are never skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkippedOps {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
}

impl SkippedOps {
    /// `'c,u'`, `'t'`, `'none'` (Debezium's letters; the names work too).
    pub fn parse(value: &str) -> Result<SkippedOps> {
        let mut s = SkippedOps::default();
        let items = split_columns(&value.to_ascii_lowercase());
        if items.len() == 1 && items[0] == "none" {
            return Ok(s);
        }
        if items.is_empty() {
            return Err(SinkError::config("option \"skipped.operations\" is empty").hint("Give c, u, d and/or t, or none."));
        }
        for item in &items {
            match item.as_str() {
                "c" | "insert" => s.insert = true,
                "u" | "update" => s.update = true,
                "d" | "delete" => s.delete = true,
                "t" | "truncate" => s.truncate = true,
                other => {
                    return Err(SinkError::config(format!("invalid value for option \"skipped.operations\": \"{other}\""))
                        .detail("Snapshot rows (r) and logical messages are always delivered.")
                        .hint("Give a comma-separated list of c (insert), u (update), d (delete) and t (truncate), or none."))
                }
            }
        }
        Ok(s)
    }

    /// Whether `change` (not a snapshot row) is left out.
    pub fn skips(&self, change: &Change) -> bool {
        match change {
            Change::Insert { .. } => self.insert,
            Change::Update { .. } => self.update,
            Change::Delete { .. } => self.delete,
            Change::Truncate { .. } => self.truncate,
            Change::Message { .. } | Change::Schema(_) => false,
        }
    }
}

/// Logical messages go to targets that take records as bytes, in JSON, TEXT or
/// BYTES: not to targets that apply rows (`table`, `jdbc`), not as Avro (no
/// schema describes them), and not into CSV or Parquet files (no columns).
fn check_messages(spec: &ConnectorSpec, messages: &[String], key_format: &str, value_format: &str, opts: &BTreeMap<String, String>) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    if messages.iter().any(|p| p == dead_letter::RETRY_PREFIX) {
        return Err(SinkError::config(format!("the message prefix \"{}\" is pg_sink's own", dead_letter::RETRY_PREFIX))
            .hint("Choose another prefix for your messages."));
    }
    let why = if spec.applies_rows {
        Some(format!("connector \"{}\" applies rows to a table, and a message is not a row", spec.name))
    } else if key_format == "avro" || value_format == "avro" {
        Some("no Avro schema describes a message's content".to_string())
    } else if matches!(opts.get("file_format").map(|f| f.to_ascii_lowercase()).as_deref(), Some("csv" | "parquet")) {
        Some("CSV and Parquet files have columns, and a message has none".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(SinkError::config("this sink cannot deliver logical messages").detail(why).hint(
            "Deliver messages with a sink to Kafka, NATS, Kinesis, a webhook or JSON-lines files, in format json, text or bytes.",
        )),
        None => Ok(()),
    }
}

/// Avro and schema registry options (taken out of `opts`).
fn parse_avro(
    opts: &mut BTreeMap<String, String>,
    key_format: &str,
    value_format: &str,
    explicit_key: bool,
) -> Result<(AvroOptions, Option<RegistrySettings>)> {
    let uses_avro = key_format == "avro" || value_format == "avro";
    let mut a = AvroOptions::default();
    let doc_names: Vec<String> = opts.keys().filter(|k| k.contains("doc_on_")).cloned().collect();
    for name in doc_names {
        let value = opts.remove(&name).unwrap_or_default();
        match avro::parse_doc_option(&name, &value) {
            Some(doc) => a.docs.push(doc?),
            None => {
                return Err(SinkError::config(format!("unknown option \"{name}\""))
                    .hint("DOC ON options are spelled \"[KEY|VALUE] DOC ON TYPE t\" or \"... DOC ON COLUMN t.c\"."))
            }
        }
    }
    a.key_fullname = opts.remove("avro_key_fullname");
    a.value_fullname = opts.remove("avro_value_fullname");
    a.null_defaults = opts.remove("null_defaults").map(|v| parse_bool("null_defaults", &v)).transpose()?.unwrap_or(false);
    for (opt, slot) in [("key_compatibility_level", &mut a.key_compatibility), ("value_compatibility_level", &mut a.value_compatibility)] {
        if let Some(v) = opts.remove(opt) {
            let up = v.trim().to_ascii_uppercase();
            if !COMPATIBILITY_LEVELS.contains(&up.as_str()) {
                return Err(SinkError::config(format!("invalid value for option \"{opt}\": \"{v}\""))
                    .hint(format!("Use one of {}.", COMPATIBILITY_LEVELS.join(", "))));
            }
            *slot = Some(up);
        }
    }
    for (opt, v) in [("avro_key_fullname", &a.key_fullname), ("avro_value_fullname", &a.value_fullname)] {
        if let Some(v) = v {
            avro::check_fullname(opt, v)?;
        }
    }
    if a.key_fullname.is_some() && a.value_fullname.is_none() {
        return Err(
            SinkError::config("AVRO KEY FULLNAME requires AVRO VALUE FULLNAME").hint("Give avro_value_fullname too, as Materialize requires.")
        );
    }
    if a.value_fullname.is_some() && a.key_fullname.is_none() && explicit_key {
        return Err(SinkError::config("AVRO VALUE FULLNAME with a KEY requires AVRO KEY FULLNAME")
            .hint("Give avro_key_fullname too, as Materialize requires."));
    }
    opts.remove("csr_connection");
    let registry = RegistrySettings::take_from(opts)?;
    if !uses_avro && (registry.is_some() || a != AvroOptions::default()) {
        return Err(SinkError::config("schema registry and Avro options require FORMAT AVRO")
            .detail(format!("The key format is {key_format} and the value format is {value_format}."))
            .hint("Set format => 'avro' (or key_format / value_format), or drop those options."));
    }
    if (a.key_compatibility.is_some() || a.value_compatibility.is_some()) && registry.is_none() {
        return Err(SinkError::config("compatibility levels require a schema registry").hint("Give schema.registry (or csr_connection)."));
    }
    Ok((a, registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn debezium_compat_takes_debezium_s_placeholder_for_unchanged_toast_unless_told() {
        let compat = |extra: &[(&str, &str)]| {
            let mut o = vec![("path", "/tmp/x"), ("envelope", "debezium"), ("debezium.compat", "true")];
            o.extend_from_slice(extra);
            parse("file", &opts(&o)).unwrap().unchanged_toast
        };
        assert_eq!(compat(&[]), UnchangedToast::Placeholder);
        assert_eq!(compat(&[("unchanged_toast", "fetch")]), UnchangedToast::Fetch);
        assert_eq!(parse("file", &opts(&[("path", "/tmp/x"), ("envelope", "debezium")])).unwrap().unchanged_toast, UnchangedToast::Fetch);
    }

    #[test]
    fn the_wal_limit_and_its_policy_are_sink_options() {
        let d = parse("file", &opts(&[("path", "/tmp/x"), ("MAX RETAINED WAL", "1 GB"), ("wal_retention_policy", "fail")])).unwrap();
        assert_eq!((d.max_retained_wal, d.wal_retention_policy), (Some(1 << 30), retention::Policy::Fail));
        assert!(!d.connector_options.contains_key("max_retained_wal"), "not passed to the connector");
        let d = parse("file", &opts(&[("path", "/tmp/x")])).unwrap();
        assert_eq!((d.max_retained_wal, d.wal_retention_policy), (None, retention::Policy::Pause));
        assert!(parse("file", &opts(&[("path", "/tmp/x"), ("max_retained_wal", "much")])).is_err());
        assert!(SINK_OPTIONS.iter().any(|(n, _)| *n == "wal_retention_policy"));
    }

    #[test]
    fn messages_go_only_where_a_record_need_not_be_a_row() {
        let d = parse("file", &opts(&[("path", "/tmp/x"), ("message.prefix.include.list", "outbox,audit")])).unwrap();
        assert_eq!(d.messages, vec!["outbox", "audit"]);
        assert!(!d.connector_options.contains_key("messages"));
        for (conn, o, why) in [
            ("table", &[("table", "x"), ("messages", "outbox")][..], "applies rows"),
            ("file", &[("path", "/x"), ("messages", "outbox"), ("format", "avro"), ("schema.registry", "http://r")][..], "Avro"),
            ("file", &[("path", "/x"), ("messages", "outbox"), ("file_format", "parquet")][..], "CSV and Parquet"),
        ] {
            let e = parse(conn, &opts(o)).unwrap_err();
            assert_eq!(e.message, "this sink cannot deliver logical messages", "{conn} {o:?}");
            assert!(e.detail.as_deref().unwrap_or("").contains(why), "{:?}", e.detail);
            assert!(e.hint.is_some());
        }
        let e = parse("file", &opts(&[("path", "/x"), ("messages", dead_letter::RETRY_PREFIX)])).unwrap_err();
        assert!(e.message.contains("pg_sink's own"), "{}", e.message);
    }

    #[test]
    fn skipped_operations_default_to_truncate_except_where_rows_are_applied() {
        let t = SkippedOps { truncate: true, ..SkippedOps::default() };
        assert_eq!(parse("file", &opts(&[("path", "/x")])).unwrap().skipped, t);
        assert_eq!(parse("table", &opts(&[("table", "x")])).unwrap().skipped, SkippedOps::default());
        assert_eq!(parse("table", &opts(&[("table", "x"), ("skipped.operations", "t")])).unwrap().skipped, t);
        assert_eq!(parse("file", &opts(&[("path", "/x"), ("skipped.operations", "none")])).unwrap().skipped, SkippedOps::default());
        let all = SkippedOps::parse("c, U,delete,truncate").unwrap();
        assert!(all.insert && all.update && all.delete && all.truncate);
        for bad in ["r", "", "none,c"] {
            let e = SkippedOps::parse(bad).unwrap_err();
            assert_eq!(e.kind, crate::engine::error::ErrorKind::InvalidConfig, "{bad}");
            assert!(e.hint.is_some());
        }
    }

    #[test]
    fn parses_risingwave_and_materialize_spellings() {
        let d = parse("file", &opts(&[("type", "upsert"), ("primary_key", "a, b"), ("PATH", "/tmp/x"), ("SNAPSHOT", "false")])).unwrap();
        assert_eq!(d.envelope, EnvelopeKind::Upsert);
        assert_eq!(d.key_columns, vec!["a", "b"]);
        assert!(!d.snapshot);
        assert_eq!(d.connector_options.get("path").unwrap(), "/tmp/x");
        let d = parse("table", &opts(&[("envelope", "append-only"), ("force_append_only", "on"), ("table", "x.y")])).unwrap();
        assert!(d.force_append_only);
        assert_eq!(d.schedule, Schedule::Continuous);
        assert_eq!(normalize_name(" TOPIC  PARTITION COUNT "), "topic_partition_count");
    }

    #[test]
    fn rejects_bad_input_with_hints() {
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            ("kafkaa", &[], "unknown connector \"kafkaa\""),
            ("file", &[("envelope", "upsertt")], "unknown envelope"),
            ("file", &[("format", "xml")], "unknown format"),
            ("file", &[("bogus", "1")], "unknown option \"bogus\""),
            ("file", &[("snapshot", "maybe")], "invalid value for boolean option"),
            ("file", &[("snapshot.mode", "lazy")], "invalid value for option \"snapshot.mode\""),
            ("file", &[("envelope", "upsert"), ("type", "debezium")], "conflicting options"),
            ("file", &[("envelope", "upsert"), ("force_append_only", "true")], "force_append_only requires"),
            ("file", &[("envelope", "upsert"), ("debezium.compat", "true")], "debezium.compat requires the debezium envelope"),
            ("file", &[("envelope", "debezium"), ("format", "text"), ("debezium.compat", "on")], "debezium.compat needs value format json or avro"),
            ("file", &[("envelope", "debezium"), ("debezium.compat", "maybe")], "boolean option \"debezium.compat\""),
            ("file", &[("envelope", "debezium"), ("provide.transaction.metadata", "true")], "provide.transaction.metadata requires debezium.compat"),
            ("file", &[("envelope", "debezium"), ("decimal.handling.mode", "string")], "decimal.handling.mode requires debezium.compat"),
            ("file", &[("envelope", "debezium"), ("debezium.compat", "true"), ("time.precision.mode", "micro")], "invalid value for option \"time.precision.mode\""),
            ("file", &[("envelope", "upsert"), ("tombstones.on.delete", "false")], "tombstones.on.delete requires debezium.compat"),
            ("table", &[("envelope", "debezium"), ("debezium.compat", "true"), ("provide.transaction.metadata", "true")], "cannot deliver transaction metadata"),
            ("file", &[("key_not_enforced", "true")], "NOT ENFORCED requires a KEY"),
            ("file", &[("schedule", "hourly")], "invalid value for option \"schedule\""),
            ("file", &[("path", "a"), ("PATH", "b")], "more than once"),
        ];
        for (conn, o, msg) in cases {
            let err = parse(conn, &opts(o)).unwrap_err();
            assert!(err.message.contains(msg), "{conn} {o:?}: got {}", err.message);
            assert_eq!(err.kind, crate::engine::error::ErrorKind::InvalidConfig);
        }
        assert!(parse("file", &opts(&[("bogus", "1")])).unwrap_err().hint.unwrap().contains("path"));
    }
}
