//! One batch of a sink, inside the caller's transaction — shared by the background
//! worker, `sink.sync()` and `sink.preview()`:
//!
//! 1. advance the slot to the catalog's confirmed LSN (the catalog is the truth; the
//!    slot only trails it, so a crash between the two loses nothing);
//! 2. on first run, create the slot and deliver the snapshot (see [`initialize`]);
//! 3. peek up to `pg_sink.max_batch_changes` changes, decode, encode;
//! 4. hand the batch to the connector; once it reports durable, record the new
//!    confirmed LSN in `sink.progress` (same transaction).
//!
//! When the peek comes back short the sink is caught up, and the confirmed LSN moves
//! to the WAL flush position taken before the peek, so an idle sink's slot never
//! holds back WAL.

use std::sync::Arc;

use pgrx::prelude::*;

use crate::engine::change::{Cell, Column, Relation, Transaction};
use crate::engine::connector::{Batch, Connector, ConnectorConfig, Record};
use crate::engine::error::SinkError;
use crate::engine::lsn::Lsn;
use crate::engine::options::SinkDefinition;
use crate::engine::pipeline::Pipeline;
use crate::engine::types::{PgType, TypeResolver};

use super::catalog::{self, SinkRow};
use super::gucs;
use super::spi::{output_text, select, select_one, CatalogTypes, SpiSession};

/// Rows of the snapshot delivered per connector call.
const SNAPSHOT_CHUNK: i64 = 10_000;

#[derive(Debug, Default)]
pub struct Outcome {
    pub transactions: usize,
    pub changes: usize,
    pub records: usize,
    pub bytes: usize,
    pub confirmed: Option<Lsn>,
    /// Nothing was pending when the batch was read.
    pub caught_up: bool,
    /// This step created the slot (and delivered the snapshot).
    pub initialized: bool,
    pub preview: Vec<Record>,
}

pub enum Mode {
    Deliver { write_idle_progress: bool },
    Preview(usize),
}

struct Parts {
    def: SinkDefinition,
    pipeline: Pipeline,
    connector: Box<dyn Connector>,
}

/// A sink's pipeline and connector, kept across steps while its definition does not
/// change, so connectors keep their clients (Kafka producers, ...) between batches.
#[derive(Default)]
pub struct Session {
    cached: Option<(String, Parts)>,
    /// Lives as long as the session: clients (NATS, ...) run background tasks on it.
    rt: Option<std::sync::Arc<tokio::runtime::Runtime>>,
}

impl Session {
    fn runtime(&mut self) -> Result<std::sync::Arc<tokio::runtime::Runtime>, SinkError> {
        if self.rt.is_none() {
            // One worker thread for clients' background tasks (pings, reconnects);
            // connector calls themselves run on this backend's thread via block_on.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .on_thread_start(block_signals)
                .build()
                .map_err(|e| SinkError::transient(format!("could not start the async runtime: {e}")))?;
            self.rt = Some(std::sync::Arc::new(rt));
        }
        self.rt.clone().ok_or_else(|| SinkError::transient("async runtime unavailable"))
    }
}

/// Runtime threads must never run a Postgres signal handler (a SIGHUP landing on
/// one would call into Postgres from a foreign thread): block every signal there.
pub fn block_signals() {
    // SAFETY: only changes this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn parts<'a>(sink: &SinkRow, session: &'a mut Session) -> Result<&'a mut Parts, SinkError> {
    let options = catalog::effective_options(sink)?;
    let fingerprint = format!("{}|{}|{:?}|{:?}|{:?}", sink.id, sink.connector, options, sink.columns, sink.row_filter);
    if session.cached.as_ref().map(|(f, _)| f != &fingerprint).unwrap_or(true) {
        let def = crate::engine::options::parse(&sink.connector, &options)?;
        let database = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
        let pipeline = Pipeline::new(&def, &sink.name, &database, Lsn::ZERO)?;
        let cfg = ConnectorConfig {
            sink_name: sink.name.clone(),
            database: database.clone(),
            sink_uid: sink.uid(&database),
            envelope: def.envelope,
            key_columns: def.key_columns.clone(),
            options: def.connector_options.clone(),
            columns: vec![],
        };
        let connector = (def.connector.build)(&cfg)?;
        session.cached = Some((fingerprint, Parts { def, pipeline, connector }));
    }
    let (_, parts) = session.cached.as_mut().ok_or_else(|| SinkError::transient("sink parts unavailable"))?;
    parts.pipeline.confirmed = sink.confirmed.unwrap_or(Lsn::ZERO);
    Ok(parts)
}

fn deliver(rt: &tokio::runtime::Runtime, connector: &mut dyn Connector, batch: &Batch, sql: &mut SpiSession) -> Result<(), SinkError> {
    rt.block_on(connector.deliver(batch, sql))
}

/// `Some(confirmed_flush_lsn)` if the slot exists.
fn slot_position(slot: &str) -> Option<Option<Lsn>> {
    select(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        &[Some(slot)],
    )
    .into_iter()
    .next()
    .map(|r| r.into_iter().next().flatten().and_then(|l| l.parse().ok()))
}

/// Run one step for `sink`. Errors are engine errors; Postgres errors propagate.
pub fn step(sink: &SinkRow, mode: Mode, session: &mut Session) -> Result<Outcome, SinkError> {
    let result = step_with(sink, mode, session);
    if matches!(&result, Err(e) if e.is_transient()) {
        // Rebuild clients after a transient failure.
        session.cached = None;
    }
    result
}

fn step_with(sink: &SinkRow, mode: Mode, session: &mut Session) -> Result<Outcome, SinkError> {
    let rt = session.runtime()?;
    let Parts { def, pipeline, connector } = parts(sink, session)?;
    let def = &*def;
    let mut types = CatalogTypes::default();
    let slot = slot_position(&sink.slot_name);

    let write_idle = match mode {
        Mode::Preview(limit) => {
            pipeline.encode = true;
            return match slot {
                None => preview_snapshot(sink, pipeline, &mut types, limit),
                Some(_) => preview_changes(sink, pipeline, &mut types, limit),
            }
        }
        Mode::Deliver { write_idle_progress } => write_idle_progress,
    };

    let needs_init = match slot {
        None => true,
        Some(_) if def.snapshot && !sink.snapshot_done => {
            // A slot left by an initialisation that crashed before it committed.
            // Read-only SPI: assigning an xid here would forbid creating the new slot.
            select("SELECT pg_drop_replication_slot($1)::text", &[Some(&sink.slot_name)]);
            true
        }
        Some(_) => sink.confirmed.is_none(),
    };
    if needs_init {
        return initialize(sink, &def, pipeline, connector.as_mut(), &rt, &mut types);
    }
    let confirmed = sink.confirmed.unwrap_or(Lsn::ZERO);
    if let Some(Some(slot_lsn)) = slot {
        if slot_lsn < confirmed {
            let lsn = confirmed.to_string();
            select("SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::pg_lsn)", &[Some(&sink.slot_name), Some(&lsn)]);
        }
    }

    let flushed: Lsn = select_one("SELECT pg_current_wal_flush_lsn()::text", &[]).and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO);
    let step_limit = gucs::max_step_changes();
    let batch_limit = gucs::max_batch_changes() as usize;
    let mut outcome = Outcome::default();
    let mut end = confirmed;
    let mut last_commit = None;
    let limit_text = step_limit.to_string();
    let mut sql = SpiSession::for_owner(&sink.owner);
    // One decoding pass: the peek's output is read through a cursor and delivered in
    // batches of whole transactions as they fill up. Batch boundaries depend only on
    // the stream and the settings, so a step retried after a crash produces the same
    // batches (and the file connector overwrites the same objects).
    let messages = Spi::connect(|client| -> Result<usize, SinkError> {
        let mut cursor = client
            .try_open_cursor(PEEK_SQL, &[sink.slot_name.as_str().into(), limit_text.as_str().into(), sink.publication_name.as_str().into()])
            .map_err(|e| SinkError::transient(format!("could not read slot \"{}\": {e}", sink.slot_name)))?;
        let mut n = 0usize;
        let mut batch = pipeline.new_batch();
        let mut flush = |batch: &mut Batch, pipeline: &Pipeline, outcome: &mut Outcome| -> Result<(), SinkError> {
            if batch.transactions == 0 {
                return Ok(());
            }
            deliver(&rt, connector.as_mut(), batch, &mut sql)?;
            outcome.transactions += batch.transactions;
            outcome.changes += batch.changes;
            outcome.records += batch.records.len();
            outcome.bytes += batch.bytes();
            end = end.max(batch.end_lsn);
            last_commit = batch.records.last().map(|r| r.commit_time_us).or(last_commit);
            *batch = pipeline.new_batch();
            Ok(())
        };
        loop {
            let table = cursor.fetch(10_000).map_err(|e| SinkError::transient(format!("could not read slot \"{}\": {e}", sink.slot_name)))?;
            if table.is_empty() {
                break;
            }
            for row in table {
                n += 1;
                let data: Option<&[u8]> = row.get(1).map_err(|e| SinkError::permanent(format!("bad slot row: {e}")))?;
                if let Some(msg) = data {
                    pipeline.feed(msg, &mut types, &mut batch)?;
                }
                if batch.changes >= batch_limit {
                    flush(&mut batch, &pipeline, &mut outcome)?;
                }
            }
            // SAFETY: the rows of this fetch were consumed above; free them now
            // instead of at the end of the step.
            unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
        }
        flush(&mut batch, &pipeline, &mut outcome)?;
        Ok(n)
    })?;
    if outcome.transactions > 0 {
        rt.block_on(connector.finish_step())?;
    }
    let caught_up = (messages as i64) < step_limit;
    outcome.caught_up = caught_up;
    if outcome.transactions > 0 {
        // Decoding restarts at the slot's restart_lsn, which only moves past a
        // running-transactions record. Log one now so later steps do not re-decode
        // from far behind.
        // SAFETY: writes one WAL record; needs wal_level >= replica (we have logical).
        unsafe { pg_sys::LogStandbySnapshot() };
    }
    if outcome.transactions > 0 && gucs::FAIL_AFTER_DELIVER.get() {
        return Err(SinkError::transient("pg_sink.fail_after_deliver: failing after delivery, before recording progress"));
    }
    let mut new_confirmed = end;
    if caught_up {
        new_confirmed = new_confirmed.max(flushed);
    }
    if outcome.transactions > 0 || (write_idle && new_confirmed > confirmed) {
        catalog::record_progress(sink.id, new_confirmed, outcome.records, outcome.bytes, outcome.transactions, last_commit, caught_up);
    }
    outcome.confirmed = Some(new_confirmed);
    Ok(outcome)
}

const PEEK_SQL: &str = "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2::int, \
                        'proto_version', '1', 'publication_names', $3)";

/// Peek up to `limit` pgoutput messages and feed them to the pipeline. Returns the
/// number of messages read.
fn peek(sink: &SinkRow, limit: i64, pipeline: &mut Pipeline, types: &mut dyn TypeResolver, batch: &mut Batch) -> Result<usize, SinkError> {
    let limit_text = limit.to_string();
    Spi::connect(|client| {
        let table = client
            .select(
                PEEK_SQL,
                None,
                &[sink.slot_name.as_str().into(), limit_text.as_str().into(), sink.publication_name.as_str().into()],
            )
            .map_err(|e| SinkError::transient(format!("could not read slot \"{}\": {e}", sink.slot_name)))?;
        let n = table.len();
        for row in table {
            let data: Option<&[u8]> = row.get(1).map_err(|e| SinkError::permanent(format!("bad slot row: {e}")))?;
            if let Some(msg) = data {
                pipeline.feed(msg, types, batch)?;
            }
        }
        Ok(n)
    })
}

fn preview_changes(sink: &SinkRow, pipeline: &mut Pipeline, types: &mut dyn TypeResolver, limit: usize) -> Result<Outcome, SinkError> {
    let mut batch = pipeline.new_batch();
    peek(sink, limit.max(1) as i64, pipeline, types, &mut batch)?;
    batch.records.truncate(limit);
    Ok(Outcome { records: batch.records.len(), preview: batch.records, ..Default::default() })
}

/// The source's shape as the stream will describe it: published columns, resolved types.
fn snapshot_relation(sink: &SinkRow, types: &mut dyn TypeResolver) -> Arc<Relation> {
    let oid = sink.source_oid.to_string();
    let rows = select(
        "SELECT a.attname::text, a.atttypid::text, a.atttypmod::text, \
                (a.attnum = ANY (coalesce(i.indkey::int2[], pk.indkey::int2[])) OR c.relreplident = 'f')::text, \
                n.nspname::text, c.relname::text, c.relreplident::text \
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
           LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisreplident \
           LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary AND c.relreplident = 'd' \
          WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
          ORDER BY a.attnum",
        &[Some(&oid)],
    );
    let mut columns = Vec::new();
    let (mut ns, mut name, mut ident) = (String::new(), String::new(), b'd');
    for r in rows {
        let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let cname = g(0);
        if let Some(list) = &sink.columns {
            if !list.contains(&cname) {
                continue;
            }
        }
        let type_oid: u32 = g(1).parse().unwrap_or(0);
        let mut ty = PgType::from_oid(type_oid);
        if !ty.is_resolved() {
            if let Some(t) = types.resolve(type_oid) {
                ty = t;
            }
        }
        columns.push(Column { name: cname, ty, type_modifier: g(2).parse().unwrap_or(-1), is_identity: g(3) == "true" });
        ns = g(4);
        name = g(5);
        ident = g(6).bytes().next().unwrap_or(b'd');
    }
    let mut rel = Relation { id: sink.source_oid, namespace: ns, name, replica_identity: ident, columns, meta: None };
    rel.meta = types.relation_meta(&rel).map(Arc::new);
    Arc::new(rel)
}

fn snapshot_query(sink: &SinkRow, rel: &Relation) -> String {
    let cols: Vec<String> = rel.columns.iter().map(|c| crate::engine::connector::table::quote_ident(&c.name)).collect();
    let mut q = format!("SELECT {} FROM {}", cols.join(", "), sink.source_name);
    if let Some(f) = &sink.row_filter {
        q.push_str(&format!(" WHERE {f}"));
    }
    q
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Read the next chunk of snapshot rows from `cursor` as an insert-only transaction.
fn snapshot_chunk(cursor: &mut pgrx::spi::SpiCursor<'_>, rel: &Arc<Relation>, lsn: Lsn, rows: i64) -> Result<Transaction, SinkError> {
    let mut table = cursor.fetch(rows).map_err(|e| SinkError::transient(format!("snapshot read failed: {e}")))?;
    let ncols = rel.columns.len();
    let mut changes = Vec::with_capacity(table.len());
    let mut oids = Vec::with_capacity(ncols);
    for i in 1..=ncols {
        oids.push(table.column_type_oid(i).map_err(|e| SinkError::permanent(e.to_string()))?.value());
    }
    while table.next().is_some() {
        let mut cells = Vec::with_capacity(ncols);
        for (i, oid) in oids.iter().enumerate() {
            let datum = table.get_datum_by_ordinal(i + 1).map_err(|e| SinkError::permanent(e.to_string()))?;
            cells.push(match datum {
                None => Cell::Null,
                Some(d) => Cell::Text(output_text(d, *oid)),
            });
        }
        changes.push(crate::engine::change::Change::Insert { relation: rel.clone(), new: cells });
    }
    Ok(Transaction { xid: 0, commit_lsn: lsn, end_lsn: lsn, commit_time_us: now_us(), snapshot: true, changes })
}

fn preview_snapshot(sink: &SinkRow, pipeline: &mut Pipeline, types: &mut dyn TypeResolver, limit: usize) -> Result<Outcome, SinkError> {
    if !sink.snapshot {
        return Ok(Outcome::default());
    }
    let rel = snapshot_relation(sink, types);
    let query = snapshot_query(sink, &rel);
    let mut batch = pipeline.new_batch();
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(query.as_str(), &[]);
        let txn = snapshot_chunk(&mut cursor, &rel, Lsn::ZERO, limit as i64)?;
        pipeline.add_transaction(txn, &mut batch)
    })?;
    batch.records.truncate(limit);
    Ok(Outcome { records: batch.records.len(), preview: batch.records, ..Default::default() })
}

/// Create the slot and, with `SNAPSHOT`, deliver the table's rows.
///
/// The slot is created first, with no lock held: creating it waits for every running
/// transaction, and holding a lock the waited-for transactions need would deadlock.
/// Then the source is locked against writes (SHARE, until this transaction ends),
/// which waits for its writers to commit, and the WAL insert position `L` is read.
/// Every transaction that wrote the source before the lock has committed before
/// `L` and is in the snapshot taken next; every later one commits after `L`. So the
/// snapshot is labelled `L`, progress starts at `L`, and the stream's transactions
/// ending at or before `L` (already in the snapshot) are skipped.
fn initialize(
    sink: &SinkRow,
    def: &SinkDefinition,
    pipeline: &mut Pipeline,
    connector: &mut dyn Connector,
    rt: &tokio::runtime::Runtime,
    types: &mut dyn TypeResolver,
) -> Result<Outcome, SinkError> {
    // SAFETY: plain reads of backend-local transaction state.
    let (has_xid, isolation) = unsafe { (pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId, pg_sys::XactIsoLevel) };
    if has_xid || isolation >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(SinkError::config(format!("sink \"{}\" must start in a fresh read committed transaction", sink.name))
            .detail("Creating a replication slot is not possible in a transaction that has written data or uses a transaction-wide snapshot.")
            .hint("Call sink.sync() as the first statement of its own transaction."));
    }
    let snapshot = def.snapshot;
    let slot_start: Lsn = select_one(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
        &[Some(&sink.slot_name)],
    )
    .and_then(|l| l.parse().ok())
    .ok_or_else(|| SinkError::transient("could not create the replication slot"))?;
    let mut start = slot_start;
    if snapshot {
        // SAFETY: locking a relation we resolved from the catalog; released at
        // transaction end. The fresh snapshot is popped below (or at abort).
        unsafe { pg_sys::LockRelationOid(pg_sys::Oid::from(sink.source_oid), pg_sys::ShareLock as i32) };
        start = select_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .and_then(|l| l.parse::<Lsn>().ok())
            .ok_or_else(|| SinkError::transient("could not read the WAL position"))?
            .max(slot_start);
    }
    let mut outcome = Outcome { initialized: true, confirmed: Some(start), ..Default::default() };
    let mut sql = SpiSession::for_owner(&sink.owner);
    if snapshot {
        let rel = snapshot_relation(sink, types);
        let query = snapshot_query(sink, &rel);
        // SAFETY: a snapshot taken after the lock; popped below.
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
        let result: Result<(), SinkError> = Spi::connect(|client| {
            let mut cursor = client.open_cursor(query.as_str(), &[]);
            let mut chunk = 0u32;
            loop {
                let txn = snapshot_chunk(&mut cursor, &rel, start, SNAPSHOT_CHUNK)?;
                let rows = txn.changes.len();
                if rows == 0 && chunk > 0 {
                    break;
                }
                let mut batch = pipeline.new_batch();
                batch.snapshot_chunk = Some(chunk);
                pipeline.add_transaction(txn, &mut batch)?;
                deliver(rt, connector, &batch, &mut sql)?;
                outcome.changes += batch.changes;
                outcome.records += batch.records.len();
                outcome.bytes += batch.bytes();
                chunk += 1;
                if (rows as i64) < SNAPSHOT_CHUNK {
                    break;
                }
            }
            Ok(())
        });
        // SAFETY: pops the snapshot pushed above.
        unsafe { pg_sys::PopActiveSnapshot() };
        result?;
        rt.block_on(connector.finish_step())?;
    }
    catalog::mark_snapshot_done(sink.id, start);
    if outcome.records > 0 {
        catalog::record_progress(sink.id, start, outcome.records, outcome.bytes, 0, None, false);
    }
    Ok(outcome)
}
