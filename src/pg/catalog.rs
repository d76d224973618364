//! Reading and writing the `sink` catalog tables: sink definitions, connections with
//! their secrets resolved (for the worker only), and progress.

use std::collections::BTreeMap;

use crate::engine::credential::{self, Credential};
use crate::engine::encoder::registry;
use crate::engine::error::SinkError;
use crate::engine::lsn::Lsn;
use crate::engine::options::{self, SinkDefinition};

use super::errors::{fail, Code};
use pgrx::pg_sys;

use super::spi::{select, select_one, update};

#[derive(Debug, Clone)]
pub struct SinkRow {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub source_oid: u32,
    pub source_name: String,
    pub columns: Option<Vec<String>>,
    pub row_filter: Option<String>,
    pub connector: String,
    pub connection: Option<String>,
    pub options: BTreeMap<String, String>,
    pub state: String,
    pub schedule: String,
    pub snapshot: bool,
    pub slot_name: String,
    pub publication_name: String,
    pub confirmed: Option<Lsn>,
    pub snapshot_done: bool,
    /// Creation time, microseconds since the epoch.
    pub created_us: i64,
    /// Where it runs (see [`super::home`]); `None` when restored without one.
    pub home: Option<String>,
}

impl SinkRow {
    /// Identifies this sink at its targets (Kafka progress key, JetStream message
    /// ids, webhook idempotency keys, jdbc progress rows): unique across drops and
    /// re-creations of the same name, and across clusters made from this one (a
    /// restore into a new cluster has another system identifier; a point-in-time
    /// clone runs on another timeline), so a clone never takes over the progress of
    /// the sink it was copied from. `cluster` is [`cluster_identity`].
    pub fn uid(&self, cluster: &str, database: &str) -> String {
        format!("{database}-{}-{}-{cluster}", self.id, self.created_us)
    }
}

const SINK_COLUMNS: &str = "s.id::text, s.name, s.owner::text, s.source::oid::text, s.source::text, \
    array_to_json(s.columns)::text, s.row_filter, s.connector, s.connection, s.options::text, s.state, \
    s.schedule, s.snapshot::text, s.slot_name::text, s.publication_name::text, p.confirmed_lsn::text, \
    coalesce(p.snapshot_done, false)::text, (extract(epoch FROM s.created_at) * 1000000)::bigint::text, s.home";

fn parse_row(r: Vec<Option<String>>) -> SinkRow {
    let s = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    let o = |i: usize| r.get(i).cloned().flatten();
    let options: BTreeMap<String, String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s(9))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, json_text(&v)))
        .collect();
    SinkRow {
        id: s(0).parse().unwrap_or(0),
        name: s(1),
        owner: s(2),
        source_oid: s(3).parse().unwrap_or(0),
        source_name: s(4),
        columns: o(5).and_then(|c| serde_json::from_str(&c).ok()),
        row_filter: o(6),
        connector: s(7),
        connection: o(8),
        options,
        state: s(10),
        schedule: s(11),
        snapshot: s(12) == "true",
        slot_name: s(13),
        publication_name: s(14),
        confirmed: o(15).and_then(|l| l.parse().ok()),
        snapshot_done: s(16) == "true",
        created_us: s(17).parse().unwrap_or(0),
        home: o(18),
    }
}

/// A JSON option value as text: strings as is, everything else as JSON.
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `<system identifier>.<timeline>` of this cluster (the timeline WAL is written
/// on now, which a promotion or point-in-time recovery changes).
pub fn cluster_identity() -> String {
    select_one(
        "SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text || '.' \
                || ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int::text",
        &[],
    )
    .unwrap_or_default()
}

/// Whether `role` is a superuser now (a role that is gone is not).
pub fn owner_is_superuser(role: &str) -> bool {
    select_one("SELECT rolsuper::text FROM pg_catalog.pg_roles WHERE rolname = $1", &[Some(role)]).as_deref() == Some("true")
}

/// A sink by name or id, whoever owns it (the catalog shows roles only their own
/// sinks; callers check ownership and say "must be owner").
fn find(condition: &str, param: &str) -> Option<SinkRow> {
    super::identity::as_superuser(|| {
        select(&format!("SELECT {SINK_COLUMNS} FROM sink.sinks s LEFT JOIN sink.progress p ON p.sink_id = s.id WHERE {condition}"), &[Some(param)])
    })
    .into_iter()
    .next()
    .map(parse_row)
}

pub fn find_by_name(name: &str) -> Option<SinkRow> {
    find("s.name = $1", name)
}

pub fn find_by_id(id: i64) -> Option<SinkRow> {
    find("s.id = $1::bigint", &id.to_string())
}

/// The key of the seals on the extension's own logical messages
/// ([`crate::engine::seal`]); read as the extension's superuser.
pub fn message_key() -> Vec<u8> {
    let hex = crate::pg::identity::as_superuser(|| select_one("SELECT pg_catalog.encode(key, 'hex') FROM sink.message_key LIMIT 1", &[]));
    let hex = hex.unwrap_or_default();
    (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect()
}

/// A secret's value (callers run as superuser; the table is closed to others).
pub fn secret_value(name: &str) -> Option<String> {
    select("SELECT value FROM sink.secrets WHERE name = $1", &[Some(name)]).into_iter().next().and_then(|r| r.into_iter().next().flatten())
}

/// The secret name of an option value `{"secret": "name"}`, if it is one.
pub fn secret_ref(value: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(o)) if o.contains_key("secret") => o.get("secret").map(json_text),
        _ => None,
    }
}

pub fn require(name: &str) -> SinkRow {
    find_by_name(name).unwrap_or_else(|| {
        fail(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("sink \"{name}\" does not exist"),
            None,
            Some("SELECT name FROM sink.sinks lists the sinks.".into()),
        )
    })
}

/// A connection's connector and options, with `{"secret": name}` values resolved.
pub fn connection_options(conn: &str) -> Result<(String, BTreeMap<String, String>), SinkError> {
    let row = select("SELECT connector, options::text FROM sink.connections WHERE name = $1", &[Some(conn)]);
    let row = row.into_iter().next().ok_or_else(|| SinkError::permanent(format!("connection \"{conn}\" does not exist")))?;
    let connector = row.first().cloned().flatten().unwrap_or_default();
    let text = row.get(1).cloned().flatten().unwrap_or_default();
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let value = match &v {
            serde_json::Value::Object(o) if o.contains_key("secret") => {
                let secret = o.get("secret").map(json_text).unwrap_or_default();
                secret_value(&secret)
                    .ok_or_else(|| SinkError::permanent(format!("secret \"{secret}\" used by connection \"{conn}\" does not exist")))?
            }
            other => json_text(other),
        };
        out.insert(options::normalize_name(&k), value);
    }
    expand_credential(&connector, &mut out)?;
    Ok((connector, out))
}

/// A stored credential (callers run as superuser).
pub fn credential(name: &str) -> Option<Credential> {
    let row = select("SELECT value FROM sink.secrets WHERE name = $1 AND kind = 'credential'", &[Some(name)]).into_iter().next()?;
    serde_json::from_str(row.into_iter().next().flatten().as_deref().unwrap_or_default()).ok()
}

/// `credential = 'name'` in `options`: replace it by the connector options it
/// stands for (callers run as superuser and have checked the right to use it).
pub fn expand_credential(connector: &str, options: &mut BTreeMap<String, String>) -> Result<(), SinkError> {
    let Some(name) = options.get("credential").cloned() else {
        return Ok(());
    };
    let cred = credential(&name).ok_or_else(|| {
        SinkError::permanent(format!("credential \"{name}\" does not exist")).hint("Create it with CREATE CREDENTIAL or sink.create_credential().")
    })?;
    credential::apply(options, &name, &cred, connector)
}

/// The catalog's definitions version: it moves with every change to sinks,
/// connections, secrets and credentials (a trigger, in the changing transaction).
pub fn definitions_version() -> i64 {
    select_one("SELECT n::text FROM sink.definitions_version", &[]).and_then(|n| n.parse().ok()).unwrap_or(-1)
}

/// Connection options with secrets resolved, under the sink's own options.
pub fn effective_options(sink: &SinkRow) -> Result<BTreeMap<String, String>, SinkError> {
    let mut merged = match &sink.connection {
        Some(conn) => connection_options(conn)?.1,
        None => BTreeMap::new(),
    };
    for (k, v) in &sink.options {
        let value = match secret_ref(v) {
            Some(secret) => secret_value(&secret).ok_or_else(|| {
                SinkError::permanent(format!("secret \"{secret}\" used by option \"{k}\" of sink \"{}\" does not exist", sink.name))
            })?,
            None => v.clone(),
        };
        merged.insert(k.clone(), value);
    }
    expand_credential(&sink.connector, &mut merged)?;
    expand_registry_connection(&mut merged)?;
    Ok(merged)
}

/// `csr_connection => 'name'`: add that schema registry connection's settings as
/// `schema.registry*` options (options given on the sink win).
pub fn expand_registry_connection(options: &mut BTreeMap<String, String>) -> Result<(), SinkError> {
    let Some(conn) = options.get("csr_connection").cloned() else {
        return Ok(());
    };
    let (kind, conn_opts) = connection_options(&conn)?;
    if !registry::is_registry_kind(&kind) {
        return Err(SinkError::config(format!("connection \"{conn}\" is a {kind} connection, not a schema registry"))
            .hint("Create one with sink.create_connection(name, 'confluent_schema_registry', '{\"url\": ...}')."));
    }
    for (k, v) in registry::connection_to_sink_options(&conn, &conn_opts)? {
        options.entry(k).or_insert(v);
    }
    Ok(())
}

pub fn definition(sink: &SinkRow) -> Result<SinkDefinition, SinkError> {
    options::parse(&sink.connector, &effective_options(sink)?)
}

/// Record what a step delivered (or an idle advance when it delivered nothing):
/// position, counters, the rates (exponentially weighted over about a minute:
/// rate × e^(−Δt/60 s) + rows/60 s) and the delivery times of the last 100 batches.
pub fn record_progress(sink_id: i64, confirmed: Lsn, out: &crate::engine::step::Outcome, caught_up: bool) {
    let id = sink_id.to_string();
    let lsn = confirmed.to_string();
    let (rows, bytes, txns) = (out.records.to_string(), out.bytes.to_string(), out.transactions.to_string());
    let commit = out.last_commit.map(|us| us.to_string());
    let times = format!("{{{}}}", out.batch_ms.iter().map(|ms| format!("{ms:.3}")).collect::<Vec<_>>().join(","));
    update(
        "UPDATE sink.progress SET confirmed_lsn = greatest(coalesce(confirmed_lsn, '0/0'), $2::pg_lsn), \
                confirmed_at = CASE WHEN $3::bigint > 0 OR confirmed_lsn IS DISTINCT FROM greatest(coalesce(confirmed_lsn, '0/0'), $2::pg_lsn) THEN now() ELSE confirmed_at END, \
                rows_delivered = rows_delivered + $3::bigint, bytes_delivered = bytes_delivered + $4::bigint, \
                transactions_delivered = transactions_delivered + $5::bigint, \
                batches = batches + cardinality($8::float8[]), \
                batch_ms = (batch_ms || $8::float8[])[greatest(1, cardinality(batch_ms || $8::float8[]) - 99):], \
                rows_per_second = rows_per_second * exp(-least(extract(epoch FROM now() - coalesce(rate_at, now())), 3600)::float8 / 60) + $3::bigint / 60.0, \
                bytes_per_second = bytes_per_second * exp(-least(extract(epoch FROM now() - coalesce(rate_at, now())), 3600)::float8 / 60) + $4::bigint / 60.0, \
                rate_at = now(), \
                last_commit_at = coalesce(to_timestamp($6::bigint / 1e6), last_commit_at), \
                caught_up_at = CASE WHEN $7::boolean THEN now() ELSE caught_up_at END, \
                last_error = CASE WHEN $3::bigint > 0 OR $7::boolean THEN NULL ELSE last_error END, \
                last_error_hint = CASE WHEN $3::bigint > 0 OR $7::boolean THEN NULL ELSE last_error_hint END \
          WHERE sink_id = $1::bigint",
        &[Some(&id), Some(&lsn), Some(&rows), Some(&bytes), Some(&txns), commit.as_deref(), Some(if caught_up { "true" } else { "false" }), Some(&times)],
    );
}

pub fn mark_snapshot_done(sink_id: i64, consistent_point: Lsn) {
    let id = sink_id.to_string();
    let lsn = consistent_point.to_string();
    update(
        "UPDATE sink.progress SET snapshot_done = true, confirmed_lsn = $2::pg_lsn, confirmed_at = now() WHERE sink_id = $1::bigint",
        &[Some(&id), Some(&lsn)],
    );
}

/// The sink streams from `start`; its snapshot is still to come (an incremental
/// one, whose backfill sets `snapshot_done` when it finishes).
pub fn start_streaming(sink_id: i64, start: Lsn) {
    update(
        "UPDATE sink.progress SET snapshot_done = false, confirmed_lsn = $2::pg_lsn, confirmed_at = now() WHERE sink_id = $1::bigint",
        &[Some(&sink_id.to_string()), Some(&start.to_string())],
    );
}

/// Whether this transaction (or one of its subtransactions) wrote the sink's
/// progress row: that progress may still be rolled back.
pub fn progress_written_by_this_transaction(sink_id: i64) -> bool {
    let xmin = select_one("SELECT xmin::text FROM sink.progress WHERE sink_id = $1::bigint", &[Some(&sink_id.to_string())]);
    let Some(xid) = xmin.and_then(|x| x.parse::<u32>().ok()) else { return false };
    // SAFETY: a plain check of an xid against this backend's transaction state.
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(pg_sys::TransactionId::from(xid)) }
}

/// Note an error and its hint in the sink's status (own transaction, by the
/// caller); `failed` stops the sink until it is resumed.
pub fn record_error(sink_id: i64, message: &str, hint: Option<&str>, failed: bool) {
    let id = sink_id.to_string();
    update(
        "UPDATE sink.progress SET last_error = $2, last_error_hint = $3, last_error_at = now(), errors = errors + 1, \
                retries = retries + CASE WHEN $4::boolean THEN 0 ELSE 1 END WHERE sink_id = $1::bigint",
        &[Some(&id), Some(message), hint, Some(if failed { "true" } else { "false" })],
    );
    if failed {
        update("UPDATE sink.sinks SET state = 'failed' WHERE id = $1::bigint AND state = 'running'", &[Some(&id)]);
    }
}

/// The records of the sink's stream at or after `from` already set aside
/// (`errors.policy`): the pipeline leaves them out.
pub fn dead_set(sink_id: i64, from: Lsn) -> crate::engine::dead_letter::DeadSet {
    select(
        "SELECT lsn::text, ordinal::text FROM sink.dead_letters WHERE sink_id = $1::bigint AND chunk = -1 AND lsn >= $2::pg_lsn",
        &[Some(&sink_id.to_string()), Some(&from.to_string())],
    )
    .into_iter()
    .filter_map(|r| {
        let lsn = r.first().cloned().flatten()?.parse().ok()?;
        let ordinal = r.get(1).cloned().flatten()?.parse().ok()?;
        Some((lsn, ordinal))
    })
    .collect()
}

/// Write a step's dead letters, in its transaction (once: a step that finds
/// them again after a failure adds nothing), and log how many at commit.
pub fn record_dead_letters(sink: &SinkRow, letters: &[crate::engine::dead_letter::DeadLetter]) {
    if letters.is_empty() {
        return;
    }
    let id = sink.id.to_string();
    for d in letters {
        let (lsn, ordinal, chunk) = (d.lsn.to_string(), d.ordinal.to_string(), d.chunk.map_or(-1, |c| c as i64).to_string());
        update(
            "INSERT INTO sink.dead_letters (sink_id, lsn, ordinal, chunk, op, relation, key, change, error) \
             VALUES ($1::bigint, $2::pg_lsn, $3::int, $4::int, $5, $6, $7::jsonb, $8::jsonb, $9) \
             ON CONFLICT (sink_id, lsn, chunk, ordinal) DO NOTHING",
            &[Some(&id), Some(&lsn), Some(&ordinal), Some(&chunk), Some(d.op), Some(&d.relation), d.key.as_deref(), d.change.as_deref(), Some(&d.error)],
        );
    }
    let kept = letters.iter().any(|d| d.change.is_some());
    // The count only: a target's error may quote the row.
    crate::pg::events::state_changed(
        &sink.name,
        format!("{} record(s) refused by the target, {}", letters.len(), if kept { "kept in sink.dead_letters" } else { "skipped (errors.policy skip)" }),
    );
}
