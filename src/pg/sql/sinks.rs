//! Sinks: `create_sink` and the functions that change a sink's definition or
//! state (alter, pause, resume, drop). Every check runs before anything is
//! written, and the whole call is one transaction, so a bad input changes nothing.

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::JsonB;

use super::secrets::use_secret;
use super::{check_name, check_owner, check_sql, one_statement, option_map, put_option};
use crate::engine::connector::table::quote_ident;
use crate::engine::encoder::registry;
use crate::engine::envelope::EnvelopeKind;
use crate::engine::error::SinkError;
use crate::engine::options::{self, Schedule};
use crate::pg::access;
use crate::pg::catalog::{self, SinkRow};
use crate::pg::delivery::{self};
use crate::pg::errors::{fail, Code, OrRaise};
use crate::pg::identity::{as_superuser, created_by, current_user, interrupt_worker, lock_sink};
use crate::pg::policy;
use crate::pg::spi::{select, select_one, update};

/// Source given as a table name or as `SELECT cols FROM table [WHERE filter]`.
struct Source {
    oid: u32,
    name: String,
    columns: Option<Vec<String>>,
    filter: Option<String>,
}

fn parse_source(source: &str) -> Source {
    let trimmed = source.trim().trim_end_matches(';').trim();
    let lower = trimmed.to_ascii_lowercase();
    let (table, columns, filter) = if lower.starts_with("select ") || lower.starts_with("select\n") {
        let from = find_keyword(&lower, " from ").unwrap_or_else(|| bad_query(source, "no FROM clause"));
        let cols_text = trimmed[6..from].trim();
        let rest = trimmed[from + 6..].trim();
        let rest_lower = rest.to_ascii_lowercase();
        let (table, filter) = match find_keyword(&rest_lower, " where ") {
            Some(w) => (rest[..w].trim(), Some(rest[w + 7..].trim().to_string())),
            None => (rest, None),
        };
        if table.contains(',') || table.to_ascii_lowercase().contains(" join ") || table.contains(' ') && !table.starts_with('"') {
            bad_query(source, "only a single table can follow FROM");
        }
        let columns = if cols_text == "*" { None } else { Some(cols_text.split(',').map(|c| unquote(c.trim())).collect::<Vec<_>>()) };
        (table.to_string(), columns, filter)
    } else {
        (trimmed.to_string(), None, None)
    };
    let oid: Option<u32> = select_one("SELECT pg_catalog.to_regclass($1)::oid::text", &[Some(&table)]).and_then(|o| o.parse().ok());
    let Some(oid) = oid else {
        fail(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("relation \"{table}\" does not exist"),
            Some("The sink source must be an existing table.".into()),
            Some("Check the name and the search_path, or schema-qualify it.".into()),
        )
    };
    let oid_text = oid.to_string();
    let kind = select_one("SELECT relkind::text FROM pg_class WHERE oid = $1::oid", &[Some(&oid_text)]).unwrap_or_default();
    if kind != "r" && kind != "p" {
        fail(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("\"{table}\" is not a table"),
            Some("Sinks read changes through logical decoding, which only tables produce.".into()),
            None,
        );
    }
    // Schema-qualified: superuser sections run with search_path = pg_catalog.
    let name = select_one(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
        &[Some(&oid_text)],
    )
    .unwrap_or(table);
    Source { oid, name, columns, filter }
}

fn find_keyword(haystack: &str, kw: &str) -> Option<usize> {
    haystack.replace(['\n', '\t'], " ").find(kw)
}

fn unquote(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].replace("\"\"", "\"")
    } else {
        s.to_ascii_lowercase()
    }
}

fn bad_query(source: &str, why: &str) -> ! {
    fail(
        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("unsupported sink query: {why}"),
        Some(format!("Query: {source}")),
        Some("A sink reads one table: SELECT col, ... FROM table [WHERE condition].".into()),
    )
}

struct TableInfo {
    columns: Vec<String>,
    pk: Vec<String>,
    /// Unique, non-partial, plain-column indexes (each a column list).
    unique_keys: Vec<Vec<String>>,
    replica_identity: String,
    identity_columns: Vec<String>,
}

/// Names and types of some columns of a relation, in the given order.
fn column_types(oid: u32, columns: &[String]) -> Vec<(String, crate::engine::types::PgType)> {
    let mut types = crate::pg::spi::CatalogTypes::default();
    let oid = oid.to_string();
    columns
        .iter()
        .map(|c| {
            let t = select_one(
                "SELECT atttypid::text FROM pg_attribute WHERE attrelid = $1::oid AND attname = $2 AND NOT attisdropped",
                &[Some(&oid), Some(c)],
            )
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or(0);
            (c.clone(), crate::engine::pipeline::TypeResolver::resolve(&mut types, t).unwrap_or_else(|| crate::engine::types::PgType::from_oid(t)))
        })
        .collect()
}

fn table_info(oid: u32) -> TableInfo {
    let oid = oid.to_string();
    let cols = |sql: &str| -> Vec<String> { select(sql, &[Some(&oid)]).into_iter().filter_map(|r| r.into_iter().next().flatten()).collect() };
    let columns = cols("SELECT attname::text FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum");
    let index_cols = |cond: &str| -> Vec<Vec<String>> {
        select(
            &format!(
                "SELECT array_to_json(array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o))::text \
                   FROM pg_index i WHERE i.indrelid = $1::oid AND {cond} AND i.indpred IS NULL AND i.indexprs IS NULL \
                   ORDER BY NOT i.indisprimary, i.indexrelid"
            ),
            &[Some(&oid)],
        )
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|j| serde_json::from_str(&j).ok())
        .collect()
    };
    let pk = index_cols("i.indisprimary").into_iter().next().unwrap_or_default();
    let unique_keys = index_cols("i.indisunique");
    let replica_identity = select_one("SELECT relreplident::text FROM pg_class WHERE oid = $1::oid", &[Some(&oid)]).unwrap_or_default();
    let identity_columns = match replica_identity.as_str() {
        "d" => pk.clone(),
        "i" => index_cols("i.indisreplident").into_iter().next().unwrap_or_default(),
        "f" => columns.clone(),
        _ => vec![],
    };
    TableInfo { columns, pk, unique_keys, replica_identity, identity_columns }
}

fn quoted_list(cols: &[String]) -> String {
    format!("({})", cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", "))
}

/// Create a sink over a table (or a single-table query), delivering through
/// `connector`. Options follow Materialize and RisingWave names; see README.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile)]
pub(crate) fn create_sink(
    name: &str,
    source: &str,
    connector: default!(Option<&str>, "NULL"),
    options: default!(JsonB, "'{}'"),
    envelope: default!(Option<&str>, "NULL"),
    format: default!(Option<&str>, "NULL"),
    key: default!(Option<Vec<String>>, "NULL"),
    key_not_enforced: default!(bool, false),
    snapshot: default!(Option<bool>, "NULL"),
    connection: default!(Option<&str>, "NULL"),
    if_not_exists: default!(bool, false),
) -> i64 {
    crate::pg::version::check();
    check_name("sink", name);
    if let Some(id) = existing_sink(name, if_not_exists) {
        return id;
    }
    require_logical_wal();
    require_utf8_database();
    policy::require_may_create_sink();
    let src = readable_source(source);
    let mut opts = sink_options(&options, envelope, format, key.as_deref(), key_not_enforced, snapshot);
    let (connector_name, effective) = effective_options(&opts, connector, connection);
    let info = table_info(src.oid);
    check_column_list(&src, &info);
    let mut def = options::parse(&connector_name, &effective).or_raise();
    default_key_to_primary_key(&mut def, &mut opts, &src, &info);
    let visible = src.columns.clone().unwrap_or_else(|| info.columns.clone());
    check_key(&def, &info, &visible);
    check_replica_identity(&def, &src, &info);
    check_incremental_snapshot(&def, &src, &visible);
    check_headers_column(&def, &src, &visible);
    check_partition_expression(&def, &src);
    check_single_column_formats(&def, &src, &visible);
    check_target(name, &def, &src, &visible);
    // Everything is valid: write the catalog, the publication and the target.
    let owner = current_user();
    policy::move_inline_secrets("sink", name, &mut opts);
    let id = as_superuser(|| write_sink(name, connection, &owner, &opts, &def, &src, &info));
    if def.connector.name == "table" {
        prepare_table_target(id, &def, &src, &info, &owner);
    }
    warn_if_not_served(name, &def);
    crate::pg::events::state_changed(
        name,
        format!(
            "created ({} connector, {} envelope{})",
            def.connector.name,
            def.envelope.as_str(),
            if def.snapshot { ", with a snapshot" } else { "" }
        ),
    );
    id
}

/// `Some(id)` of an existing sink of that name when `if_not_exists`; an error without it.
fn existing_sink(name: &str, if_not_exists: bool) -> Option<i64> {
    let existing = catalog::find_by_name(name)?;
    if if_not_exists {
        pgrx::notice!("sink \"{name}\" already exists, skipping");
        return Some(existing.id);
    }
    fail(
        Code::ERRCODE_DUPLICATE_OBJECT,
        format!("sink \"{name}\" already exists"),
        None,
        Some("Choose another name, or drop the existing sink first.".into()),
    );
}

fn require_logical_wal() {
    let wal_level = select_one("SELECT pg_catalog.current_setting('wal_level')", &[]).unwrap_or_default();
    if wal_level != "logical" {
        fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "sinks require wal_level = logical",
            Some(format!("The server runs with wal_level = {wal_level}.")),
            Some("Set wal_level = logical in postgresql.conf and restart the server.".into()),
        );
    }
}

/// Every value is delivered as UTF-8, and the walsender and the snapshot read text
/// in the database's encoding: in a database of another encoding, converting each
/// value on every path (decoding, snapshot, the table target's writes) is not
/// done, so such a sink is refused rather than delivering mangled text.
fn require_utf8_database() {
    let encoding = select_one("SELECT pg_catalog.getdatabaseencoding()::text", &[]).unwrap_or_default();
    if encoding != "UTF8" {
        fail(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("sinks require a UTF8 database; this database's encoding is {encoding}"),
            Some("Sinks deliver text as UTF-8 and do not convert from other server encodings.".into()),
            Some("Create the database with ENCODING 'UTF8' (for example with pg_dump and a restore into it).".into()),
        );
    }
}

/// The source, its filter compiled against it, and the caller's SELECT on it checked.
fn readable_source(source: &str) -> Source {
    let src = parse_source(source);
    if let Some(filter) = &src.filter {
        check_sql(
            &format!("SELECT 1 FROM {} WHERE ({filter}) LIMIT 0", src.name),
            format!("The filter {filter} does not work on {}.", src.name),
            "The WHERE condition may use the source's columns and immutable functions.",
        );
    }
    let src_oid = src.oid.to_string();
    if select_one("SELECT pg_catalog.has_table_privilege($1::oid, 'SELECT')::text", &[Some(&src_oid)]).as_deref() != Some("true") {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table {}", src.name),
            Some("Creating a sink requires SELECT on its source.".into()),
            None,
        );
    }
    policy::check_source_rls(src.oid, &src.name);

    src
}

/// The JSON options plus the named arguments, as the catalog keeps them.
pub(super) fn sink_options(
    options: &JsonB,
    envelope: Option<&str>,
    format: Option<&str>,
    key: Option<&[String]>,
    key_not_enforced: bool,
    snapshot: Option<bool>,
) -> BTreeMap<String, String> {
    let mut opts = option_map(options, "sink options");
    if let Some(e) = envelope {
        put_option(&mut opts, "envelope", e.to_string());
    }
    if let Some(f) = format {
        put_option(&mut opts, "format", f.to_string());
    }
    if let Some(k) = key {
        put_option(&mut opts, "key", k.join(","));
    }
    if key_not_enforced {
        put_option(&mut opts, "key_not_enforced", "true".into());
    }
    if let Some(s) = snapshot {
        put_option(&mut opts, "snapshot", s.to_string());
    }
    opts
}

/// The connector and the options the sink will run with: the sink's own, then the
/// connection's, with secrets, credentials and the registry connection resolved
/// (each checked for USAGE).
pub(super) fn effective_options(
    opts: &BTreeMap<String, String>,
    connector: Option<&str>,
    connection: Option<&str>,
) -> (String, BTreeMap<String, String>) {
    let mut connector_name = connector.map(str::to_string);
    let mut effective = opts.clone();
    let mut connection_opts = BTreeMap::new();
    if let Some(conn) = connection {
        if access::owner_of("connection", conn).is_none() {
            fail(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("connection \"{conn}\" does not exist"),
                None,
                Some("Create it with sink.create_connection(), or list them with SELECT name FROM sink.connections.".into()),
            )
        }
        access::require_usage("connection", conn, "Creating a sink that uses a connection");
        let (conn_connector, conn_opts) = as_superuser(|| catalog::connection_options(conn)).or_raise();
        match &connector_name {
            Some(c) if !c.eq_ignore_ascii_case(&conn_connector) => fail(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("connection \"{conn}\" is a {conn_connector} connection, not {c}"),
                None,
                Some("Leave connector out to use the connection's.".into()),
            ),
            _ => connector_name = Some(conn_connector),
        }
        for (k, v) in &conn_opts {
            effective.entry(k.clone()).or_insert(v.clone());
        }
        connection_opts = conn_opts;
    }
    // The sink's own secret references (the connection's were checked when it was created).
    for (k, v) in opts {
        if let Some(sname) = catalog::secret_ref(v) {
            effective.insert(k.clone(), use_secret(&sname, k));
        }
    }
    let Some(connector_name) = connector_name else {
        fail(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "a sink needs a connector",
            None,
            Some("Pass connector => 'file' (or 'table', ...) or connection => 'name'.".into()),
        )
    };

    let used = connection.map(|name| policy::ConnectionUse { name, options: &connection_opts });
    policy::check_sink_options(&connector_name, opts, &effective, used);
    access::use_credential(&connector_name, &mut effective);
    if effective.contains_key("csr_connection") {
        if let Some(conn) = effective.get("csr_connection").cloned() {
            if access::owner_of("connection", &conn).is_none() {
                fail(
                    Code::ERRCODE_UNDEFINED_OBJECT,
                    format!("connection \"{conn}\" does not exist"),
                    None,
                    Some("Create it with sink.create_connection(name, 'confluent_schema_registry', ...).".into()),
                )
            }
            access::require_usage("connection", &conn, "Creating a sink that uses a schema registry connection");
        }
        as_superuser(|| catalog::expand_registry_connection(&mut effective)).or_raise();
    }
    (connector_name, effective)
}

fn check_column_list(src: &Source, info: &TableInfo) {
    if let Some(cols) = &src.columns {
        for c in cols {
            if !info.columns.contains(c) {
                fail(
                    Code::ERRCODE_UNDEFINED_COLUMN,
                    format!("column \"{c}\" of relation {} does not exist", src.name),
                    Some(format!("Columns: {}.", info.columns.join(", "))),
                    None,
                );
            }
        }
    }
}

/// An upsert sink without a key uses the source's primary key, and so does a
/// Debezium-compatible one (Debezium keys its records by the primary key; a
/// table without one gets records without a key, as Debezium's).
fn default_key_to_primary_key(def: &mut options::SinkDefinition, opts: &mut BTreeMap<String, String>, src: &Source, info: &TableInfo) {
    if def.key_columns.is_empty() && def.debezium_compat && !info.pk.is_empty() {
        def.key_columns = info.pk.clone();
        opts.insert("key".into(), info.pk.join(","));
    }
    if def.key_columns.is_empty() && def.envelope == EnvelopeKind::Upsert {
        if info.pk.is_empty() {
            fail(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "upsert envelope requires a key",
                Some(format!("Table {} has no primary key to default to.", src.name)),
                Some("Give the key with key => ARRAY['col', ...].".into()),
            );
        }
        def.key_columns = info.pk.clone();
        opts.insert("key".into(), info.pk.join(","));
    }
}

/// The key is among the sink's columns and, for upserts, provably unique (or NOT ENFORCED).
fn check_key(def: &options::SinkDefinition, info: &TableInfo, visible: &[String]) {
    for k in &def.key_columns {
        if !visible.contains(k) {
            fail(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!("key column \"{k}\" does not exist in the sink's columns"),
                Some(format!("Columns: {}.", visible.join(", "))),
                None,
            );
        }
    }
    if def.envelope == EnvelopeKind::Upsert && !def.key_not_enforced {
        let proven = info.unique_keys.iter().any(|u| u.iter().all(|c| def.key_columns.contains(c)));
        if !proven {
            let known = if info.unique_keys.is_empty() {
                "There are no known valid unique keys for the upstream relation.".to_string()
            } else {
                format!(
                    "The following keys are known to be unique for the upstream relation:\n{}",
                    info.unique_keys.iter().map(|k| format!("  {}", quoted_list(k))).collect::<Vec<_>>().join("\n")
                )
            };
            fail(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "upsert key could not be validated as unique",
                Some(format!(
                    "pg_sink could not prove that the specified upsert envelope key {} is a unique key of the upstream relation. {known}",
                    quoted_list(&def.key_columns)
                )),
                Some("Use a unique key, or add NOT ENFORCED (key_not_enforced => true) if you know the key is unique.".into()),
            );
        }
    }
}

/// Updates and deletes can be streamed, and carry the key.
fn check_replica_identity(def: &options::SinkDefinition, src: &Source, info: &TableInfo) {
    match info.replica_identity.as_str() {
        "n" => fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} has no usable replica identity", src.name),
            Some("Its REPLICA IDENTITY is NOTHING, so updates and deletes cannot be streamed.".into()),
            Some(format!("Run ALTER TABLE {} REPLICA IDENTITY DEFAULT (with a primary key) or FULL.", src.name)),
        ),
        "d" if info.pk.is_empty() => fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} has no usable replica identity", src.name),
            Some("It has no primary key and REPLICA IDENTITY DEFAULT, so updates and deletes cannot be streamed.".into()),
            Some(format!("Add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL.", src.name)),
        ),
        _ => {}
    }
    if def.envelope != EnvelopeKind::AppendOnly {
        for k in &def.key_columns {
            if !info.identity_columns.contains(k) {
                fail(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("key column \"{k}\" is not part of the replica identity of {}", src.name),
                    Some("Deletes only carry the replica identity columns, so the key of a deleted row would be unknown.".into()),
                    Some(format!("Use the primary key as the sink key, or run ALTER TABLE {} REPLICA IDENTITY FULL.", src.name)),
                );
            }
        }
    }
}

/// An incremental snapshot reads the source in key order: it needs a key, and
/// the sink must deliver its columns.
fn check_incremental_snapshot(def: &options::SinkDefinition, src: &Source, visible: &[String]) {
    if !(def.snapshot && def.snapshot_incremental) {
        return;
    }
    let Some(key) = crate::pg::backfill::key_columns(src.oid) else {
        fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("an incremental snapshot of {} needs a primary key", src.name),
            Some("It reads the table in key order, chunk after chunk.".into()),
            Some("Add a primary key (or a unique index made the REPLICA IDENTITY), or use snapshot.mode = 'consistent'.".into()),
        )
    };
    if let Some(missing) = key.iter().find(|k| !visible.contains(k)) {
        fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("an incremental snapshot needs the key column \"{missing}\" among the sink's columns"),
            Some(format!("The source's key is {}.", key.join(", "))),
            Some("Add the key's columns to the sink's column list, or use snapshot.mode = 'consistent'.".into()),
        );
    }
}

/// The HEADERS column is a jsonb column of the sink.
fn check_headers_column(def: &options::SinkDefinition, src: &Source, visible: &[String]) {
    let src_oid = src.oid.to_string();
    if let Some(col) = def.connector_options.get("headers") {
        if !visible.contains(col) {
            fail(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!("HEADERS column \"{col}\" does not exist in the sink's columns"),
                Some(format!("Columns: {}.", visible.join(", "))),
                None,
            );
        }
        let ty = select_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::oid AND attname = $2",
            &[Some(&src_oid), Some(col)],
        )
        .unwrap_or_default();
        if ty != "jsonb" {
            fail(
                Code::ERRCODE_DATATYPE_MISMATCH,
                format!("HEADERS column \"{col}\" has type {ty}"),
                Some("The headers column must be a jsonb object of header names to text values.".into()),
                Some("Add a jsonb column (e.g. a generated column) holding the headers.".into()),
            );
        }
    }
}

/// Kafka's PARTITION BY compiles against the source, with the caller's
/// privileges: unknown columns, syntax errors and non-numeric results are
/// reported now. (Iceberg's `partition_by` is a partition spec, checked by its
/// connector.)
fn check_partition_expression(def: &options::SinkDefinition, src: &Source) {
    if def.connector.name != "kafka" {
        return;
    }
    if let Some(expr) = def.connector_options.get("partition_by") {
        check_sql(
            &format!("SELECT (({expr}))::numeric FROM {} LIMIT 0", src.name),
            format!("The PARTITION BY expression {expr} does not work on {}.", src.name),
            "PARTITION BY takes an SQL expression over the source's columns that returns a number, e.g. sink.seahash(col::text).",
        );
    }
}

/// TEXT and BYTES encode one column: check the key and the value now.
fn check_single_column_formats(def: &options::SinkDefinition, src: &Source, visible: &[String]) {
    for (format, what, cols) in [(&def.key_format, "key", def.key_columns.clone()), (&def.value_format, "sink's source", visible.to_vec())] {
        if (format == "text" || format == "bytes") && !(what == "key" && def.key_columns.is_empty()) {
            let typed = column_types(src.oid, &cols);
            crate::engine::encoder::text::check_single_column(format, what, &typed).or_raise();
        }
    }
}

/// Reach the schema registry and the target (Kinetica validates sinks on
/// creation), unless `validate => false` / `pg_sink.validate_connections` is off.
fn check_target(name: &str, def: &options::SinkDefinition, src: &Source, visible: &[String]) {
    let validate = crate::pg::gucs::validate_connections();
    if let Some(settings) = def.registry.as_ref().filter(|_| validate) {
        registry::Registry::new(settings).and_then(|r| r.check()).or_raise();
    }
    let src_oid = src.oid.to_string();
    let database = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
    let types: BTreeMap<String, String> = select(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
        &[Some(&src_oid)],
    )
    .into_iter()
    .filter_map(|r| Some((r.first().cloned().flatten()?, r.get(1).cloned().flatten()?)))
    .collect();
    let cfg = crate::engine::connector::ConnectorConfig {
        sink_name: name.to_string(),
        database,
        sink_uid: String::new(),
        envelope: def.envelope,
        key_columns: def.key_columns.clone(),
        options: def.connector_options.clone(),
        columns: visible.iter().map(|c| (c.clone(), types.get(c).cloned().unwrap_or_else(|| "text".into()))).collect(),
        password_required: !crate::pg::identity::is_superuser(),
    };
    let mut connector = (def.connector.build)(&cfg).or_raise();
    let rt = crate::engine::replication::with_signals_blocked(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().on_thread_start(delivery::block_signals).build()
    })
    .map_err(|e| SinkError::transient(e.to_string()))
    .or_raise();
    if validate {
        rt.block_on(connector.check()).or_raise();
    }
}

/// The catalog rows (sink, progress) and the publication; the caller runs it as
/// the extension's superuser. Returns the new sink's id.
fn write_sink(
    name: &str,
    connection: Option<&str>,
    owner: &str,
    opts: &BTreeMap<String, String>,
    def: &options::SinkDefinition,
    src: &Source,
    info: &TableInfo,
) -> i64 {
    let src_oid = src.oid.to_string();
    let schedule = def.schedule.as_str();
    let opts_json = serde_json::Value::Object(opts.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect()).to_string();
    let columns_json = src.columns.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default());
    let key_json = serde_json::to_string(&def.key_columns).unwrap_or_default();
    let id = update(
        "INSERT INTO sink.sinks (name, owner, source, columns, row_filter, connector, connection, envelope, key_format, value_format, \
                                 key_columns, key_not_enforced, snapshot, schedule, options, slot_name, publication_name, created_by) \
         VALUES ($1, $2::regrole, $3::oid::regclass, (SELECT array_agg(x) FROM json_array_elements_text($4::json) x), $5, $6, $7, $8, $9, $10, \
                 (SELECT coalesce(array_agg(x), '{}') FROM json_array_elements_text($11::json) x), $12::boolean, $13::boolean, $14, $15::jsonb, '-', '-', $16) \
         RETURNING id::text",
        &[
            Some(name),
            Some(owner),
            Some(&src_oid),
            columns_json.as_deref(),
            src.filter.as_deref(),
            Some(def.connector.name),
            connection,
            Some(def.envelope.as_str()),
            Some(&def.key_format),
            Some(&def.value_format),
            Some(&key_json),
            Some(if def.key_not_enforced { "true" } else { "false" }),
            Some(if def.snapshot { "true" } else { "false" }),
            Some(schedule),
            Some(&opts_json),
            Some(created_by()),
        ],
    );
    let id: i64 = id.into_iter().next().and_then(|r| r.into_iter().next().flatten()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let object = format!("pg_sink_{id}");
    let home = crate::pg::home::current();
    update(
        "UPDATE sink.sinks SET slot_name = $2, publication_name = $2, home = $3 WHERE id = $1::bigint",
        &[Some(&id.to_string()), Some(&object), Some(&home)],
    );
    update("INSERT INTO sink.progress (sink_id) VALUES ($1::bigint)", &[Some(&id.to_string())]);
    super::schema_changes::record_source_shape(src.oid);
    create_publication(&object, src, info);
    id
}

/// The sink's publication: its table, column list and row filter. Postgres checks
/// now that they cover the replica identity (otherwise the user's own UPDATEs
/// would start failing). A partitioned table's changes are published as its own
/// (`publish_via_partition_root`), whichever partition they land in, as its
/// snapshot reads them.
fn create_publication(object: &str, src: &Source, info: &TableInfo) {
    let cols = src.columns.as_ref().map(|c| format!(" {}", quoted_list(c))).unwrap_or_default();
    let filter = src.filter.as_ref().map(|f| format!(" WHERE ({f})")).unwrap_or_default();
    update(
        one_statement(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}{cols}{filter} WITH (publish_via_partition_root = true)",
            quote_ident(object),
            src.name
        )),
        &[],
    );
    let probe = || {
        update(&format!("EXPLAIN UPDATE {} SET {} = {} WHERE false", src.name, quote_ident(&info.columns[0]), quote_ident(&info.columns[0])), &[]);
        update(&format!("EXPLAIN DELETE FROM {} WHERE false", src.name), &[]);
    };
    pgrx::PgTryBuilder::new(probe)
        .catch_when(PgSqlErrorCode::ERRCODE_INVALID_COLUMN_REFERENCE, |e| {
            let detail = match &e {
                pg_sys::panic::CaughtError::PostgresError(r) => r.detail().unwrap_or_default().to_string(),
                _ => String::new(),
            };
            fail(
                Code::ERRCODE_INVALID_COLUMN_REFERENCE,
                format!("the sink's column list or filter would block updates of {}", src.name),
                Some(detail),
                Some(format!(
                    "Include the replica identity columns in the column list and use only them in WHERE, or run ALTER TABLE {} REPLICA IDENTITY FULL (then the column list must include every column).",
                    src.name
                )),
            )
        })
        .execute();
}

/// Warn when a continuous sink lives in a database the worker does not serve.
fn warn_if_not_served(name: &str, def: &options::SinkDefinition) {
    let database = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
    if def.schedule == Schedule::Continuous && !crate::pg::gucs::serves(&database) {
        pgrx::warning!("sink \"{name}\" is in database \"{database}\", which pg_sink.databases leaves out; deliver it with sink.sync()");
    }
}

/// Resolve or create the `table` connector's target and store its canonical name.
/// A `table` target's schema and name, as Postgres parses the text (quoted or
/// not); an unqualified name is in the caller's current schema.
fn target_parts(raw: &str) -> (String, String) {
    let parts: Vec<String> = select("SELECT x FROM unnest(pg_catalog.parse_ident($1)) x", &[Some(raw)])
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    match parts.as_slice() {
        [table] => match select_one("SELECT current_schema()::text", &[]) {
            Some(schema) => (schema, table.clone()),
            None => fail(
                Code::ERRCODE_INVALID_SCHEMA_NAME,
                format!("no schema has been selected to create the target table \"{table}\" in"),
                None,
                Some("Schema-qualify the target, e.g. table => 'backup.orders'.".into()),
            ),
        },
        [schema, table] => (schema.clone(), table.clone()),
        _ => fail(
            Code::ERRCODE_INVALID_NAME,
            format!("invalid target table name \"{raw}\""),
            Some("Give a table name, optionally schema-qualified.".into()),
            None,
        ),
    }
}

fn prepare_table_target(id: i64, def: &options::SinkDefinition, src: &Source, info: &TableInfo, owner: &str) {
    let cfg = crate::engine::connector::ConnectorConfig {
        sink_name: String::new(),
        database: String::new(),
        sink_uid: String::new(),
        envelope: def.envelope,
        key_columns: def.key_columns.clone(),
        options: def.connector_options.clone(),
        columns: vec![],
        password_required: false,
    };
    let (schema, table) = target_parts(&crate::engine::connector::table::target_name(&cfg).or_raise());
    let target = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
    let existing = select_one("SELECT pg_catalog.to_regclass($1)::oid::text", &[Some(&target)]);
    let oid = match existing {
        Some(oid) => {
            check_existing_target(&oid, &target, def, src);
            oid
        }
        None => create_target(&target, &schema, def, src, info, owner),
    };
    let canonical = select_one(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
        &[Some(&oid)],
    )
    .unwrap_or(target);
    as_superuser(|| {
        update(
            "UPDATE sink.sinks SET options = (options - 'table.name' - 'location') || jsonb_build_object('table', $2::text) WHERE id = $1::bigint",
            &[Some(&id.to_string()), Some(&canonical)],
        )
    });
}

/// An existing `table` target: not the source itself, writable by the caller, and
/// for an upsert keyed by the sink's key.
fn check_existing_target(oid: &str, target: &str, def: &options::SinkDefinition, src: &Source) {
    if oid == src.oid.to_string() {
        fail(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "a table sink cannot target its own source",
            Some(format!("Both are {target}.")),
            Some("Name another table as the target.".into()),
        );
    }
    if select_one("SELECT pg_catalog.has_table_privilege($1::oid, 'INSERT, UPDATE, DELETE')::text", &[Some(oid)]).as_deref() != Some("true") {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table {target}"),
            Some("A table sink writes into its target.".into()),
            None,
        );
    }
    if def.envelope == EnvelopeKind::Upsert {
        let t = table_info(oid.parse().unwrap_or(0));
        let matches = t.unique_keys.iter().any(|u| {
            let mut a = u.clone();
            let mut b = def.key_columns.clone();
            a.sort();
            b.sort();
            a == b
        });
        if t.pk.is_empty() && t.unique_keys.is_empty() {
            fail(
                Code::ERRCODE_INVALID_TABLE_DEFINITION,
                format!("target table {target} has no primary key"),
                Some("An upsert sink into a table applies changes by key, so the target needs one.".into()),
                Some(format!("Add PRIMARY KEY {} to the target, or let the sink create the table.", quoted_list(&def.key_columns))),
            );
        }
        if !matches {
            fail(
                Code::ERRCODE_INVALID_TABLE_DEFINITION,
                format!("target table {target} has no unique key on the sink key {}", quoted_list(&def.key_columns)),
                Some(format!("The target's primary key is {}.", quoted_list(&t.pk))),
                Some("Leave KEY out to use the target's primary key when it matches the source, or change the target.".into()),
            );
        }
    }
}

/// Create a missing `table` target where the caller may create tables, owned by
/// the sink's owner; returns its oid.
fn create_target(target: &str, schema: &str, def: &options::SinkDefinition, src: &Source, info: &TableInfo, owner: &str) -> String {
    // Creating the target is the caller's right to have, not ours to lend.
    if select_one("SELECT pg_catalog.has_schema_privilege($1, 'CREATE')::text", &[Some(schema)]).as_deref() != Some("true") {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for schema {schema}"),
            Some(format!("The sink would create its target table {target}.")),
            Some("Create the target table yourself, or name one in a schema where you may create tables.".into()),
        );
    }
    as_superuser(|| {
        if def.envelope == EnvelopeKind::Debezium {
            update(one_statement(&format!("CREATE TABLE {target} (lsn pg_lsn NOT NULL, op text NOT NULL, key jsonb, value jsonb)")), &[]);
        } else {
            let cols = src.columns.clone().unwrap_or_else(|| info.columns.clone());
            let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            update(one_statement(&format!("CREATE TABLE {target} AS SELECT {} FROM {} WITH NO DATA", list.join(", "), src.name)), &[]);
            if def.envelope == EnvelopeKind::Upsert {
                update(one_statement(&format!("ALTER TABLE {target} ADD PRIMARY KEY {}", quoted_list(&def.key_columns))), &[]);
            }
        }
        update(&format!("ALTER TABLE {target} OWNER TO {}", quote_ident(owner)), &[]);
        select_one("SELECT pg_catalog.to_regclass($1)::oid::text", &[Some(target)]).unwrap_or_default()
    })
}

/// The sink's identity at its targets (its Kafka progress key, the prefix of its
/// JetStream message ids and webhook idempotency keys, its jdbc progress row):
/// `<database>-<id>-<created, µs>-<system identifier>.<timeline>`.
#[pg_extern(stable)]
fn uid(name: &str) -> String {
    crate::pg::version::check();
    let sink = catalog::require(name);
    let database = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
    sink.uid(&catalog::cluster_identity(), &database)
}

/// Change a sink's options (merged into the existing ones; a JSON null removes one).
#[pg_extern(volatile)]
fn alter_sink(name: &str, options: JsonB) {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    let serde_json::Value::Object(changes) = &options.0 else {
        fail(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "sink options must be a JSON object",
            Some(format!("Got {}.", options.0)),
            Some("Pass options as jsonb, e.g. '{\"path\": \"/tmp/out\"}'.".into()),
        )
    };
    let mut merged = sink.options.clone();
    for (k, v) in changes {
        let n = options::normalize_name(k);
        if matches!(n.as_str(), "envelope" | "type" | "key" | "primary_key" | "format" | "encode" | "key_format" | "value_format" | "snapshot") {
            fail(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("option \"{n}\" cannot be changed on an existing sink"),
                Some("Changing it would change the meaning of what was already delivered.".into()),
                Some("Create a new sink instead.".into()),
            );
        }
        if v.is_null() {
            merged.remove(&n);
        } else {
            if let Some(sname) = catalog::secret_ref(&catalog::json_text(v)) {
                use_secret(&sname, &n);
            }
            merged.insert(n, catalog::json_text(v));
        }
    }
    let probe = SinkRow { options: merged.clone(), ..sink.clone() };
    // The options it would run with (secrets resolved once), checked as a definition.
    let effective = as_superuser(|| catalog::effective_options(&probe)).or_raise();
    options::parse(&sink.connector, &effective).or_raise();
    let set_here: BTreeMap<String, String> =
        changes.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (options::normalize_name(k), catalog::json_text(v))).collect();
    let connection_opts = match &sink.connection {
        Some(c) => as_superuser(|| catalog::connection_options(c)).or_raise().1,
        None => BTreeMap::new(),
    };
    let used = sink.connection.as_deref().map(|name| policy::ConnectionUse { name, options: &connection_opts });
    policy::check_sink_options(&sink.connector, &set_here, &effective, used);
    policy::move_inline_secrets("sink", &sink.name, &mut merged);
    lock_sink(sink.id);
    let json = serde_json::Value::Object(merged.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect()).to_string();
    as_superuser(|| update("UPDATE sink.sinks SET options = $2::jsonb WHERE id = $1::bigint", &[Some(&sink.id.to_string()), Some(&json)]));
    let names: Vec<&str> = changes.keys().map(String::as_str).collect();
    crate::pg::events::state_changed(&sink.name, format!("altered (options {})", names.join(", ")));
}

/// Ask the sink's worker to stop now (SIGTERM): it ends its step before the next
/// batch or snapshot chunk and rolls it back, so the sink's lock is free at once
/// instead of after a whole step or snapshot. The launcher starts it again if
/// the sink is still meant to run.

fn set_state(name: &str, state: &str) {
    let sink = catalog::require(name);
    check_owner(&sink);
    if state == "paused" {
        interrupt_worker(&sink);
    }
    lock_sink(sink.id);
    let sink = if state == "running" { as_superuser(|| crate::pg::home::adopt(sink)) } else { sink };
    as_superuser(|| {
        update("UPDATE sink.sinks SET state = $2 WHERE id = $1::bigint", &[Some(&sink.id.to_string()), Some(state)]);
        if state == "running" {
            update("UPDATE sink.progress SET last_error = NULL, last_error_hint = NULL WHERE sink_id = $1::bigint", &[Some(&sink.id.to_string())]);
        }
    });
    if sink.state != state {
        let change = if state == "paused" { "paused".to_string() } else { format!("resumed (was {})", sink.state) };
        crate::pg::events::state_changed(&sink.name, change);
    }
}

/// Stop delivering; the slot keeps the changes until `resume_sink`.
#[pg_extern(volatile)]
fn pause_sink(name: &str) {
    crate::pg::version::check();
    set_state(name, "paused");
}

/// Resume a paused or failed sink.
#[pg_extern(volatile)]
fn resume_sink(name: &str) {
    crate::pg::version::check();
    set_state(name, "running");
}

/// Drop a sink, its slot and its publication. What it delivered stays at the target.
/// Deliver the sink's source again, from a new snapshot, after its slot was lost
/// (dropped outside pg_sink, lost in a failover, or invalidated by
/// `max_slot_wal_keep_size`): the changes in the gap cannot be read any more, so
/// the sink fails instead of skipping them, and this is the way on. The old slot
/// (if any) is dropped, the progress starts over, and the sink runs. Keyed targets
/// (upsert) are brought up to date; a row deleted during the gap stays there. A
/// sink made with `snapshot => false` starts again from the current position.
#[pg_extern(volatile)]
fn resync(name: &str) {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    lock_sink(sink.id);
    let sink = as_superuser(|| crate::pg::home::adopt(sink));
    let id = sink.id.to_string();
    as_superuser(|| {
        delivery::drop_slot(&sink.slot_name);
        update("UPDATE sink.progress SET confirmed_lsn = NULL, snapshot_done = false, last_error = NULL, last_error_hint = NULL WHERE sink_id = $1::bigint", &[Some(&id)]);
        update("UPDATE sink.sinks SET state = 'running' WHERE id = $1::bigint", &[Some(&id)]);
    });
    crate::pg::events::state_changed(&sink.name, "resynced (its slot and progress start over)");
}

#[pg_extern(volatile)]
pub(crate) fn drop_sink(name: &str, if_exists: default!(bool, false)) -> bool {
    crate::pg::version::check();
    let Some(sink) = catalog::find_by_name(name) else {
        if if_exists {
            pgrx::notice!("sink \"{name}\" does not exist, skipping");
            return false;
        }
        fail(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("sink \"{name}\" does not exist"),
            None,
            Some("SELECT name FROM sink.sinks lists the sinks; pass if_exists => true to ignore.".into()),
        )
    };
    check_owner(&sink);
    interrupt_worker(&sink);
    lock_sink(sink.id);
    as_superuser(|| {
        delivery::release_slot(&sink.slot_name);
        update("DELETE FROM sink.sinks WHERE id = $1::bigint", &[Some(&sink.id.to_string())]);
        // A table no sink captures any more is not reported on.
        update(
            "DELETE FROM sink.source_shapes WHERE relid = $1::oid AND NOT EXISTS (SELECT 1 FROM sink.sinks WHERE source = $1::oid::regclass)",
            &[Some(&sink.source_oid.to_string())],
        );
        policy::forget_inline_secrets("sink", &sink.name);
        update(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&sink.publication_name)), &[]);
        // Only this database's: a restored copy of a sink names its original's slot.
        delivery::drop_slot(&sink.slot_name);
    });
    crate::pg::events::state_changed(&sink.name, "dropped");
    true
}
