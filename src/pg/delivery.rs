//! One batch of a sink, inside the caller's transaction — shared by the background
//! worker, `sink.sync()` and `sink.preview()`:
//!
//! 1. advance the slot to the catalog's confirmed LSN (the catalog is the truth; the
//!    slot only trails it, so a crash between the two loses nothing);
//! 2. on first run, create the slot and deliver the snapshot (see [`initialize`];
//!    an incremental one only starts a backfill);
//! 3. with a backfill running, read its next chunk and write its watermark
//!    ([`super::backfill`]); the step delivers the chunk when the stream reaches it;
//! 4. peek up to `pg_sink.max_batch_changes` changes, decode, encode;
//! 5. hand the batch to the connector; once it reports durable, record the new
//!    confirmed LSN in `sink.progress` (same transaction), with the backfill's
//!    last key.
//!
//! When the peek comes back short the sink is caught up, and the confirmed LSN moves
//! to the WAL flush position taken before the peek, so an idle sink's slot never
//! holds back WAL.

use std::sync::Arc;
use std::time::Duration;

use pgrx::prelude::*;

use crate::engine::change::{Cell, Column, Relation, Transaction};
use crate::engine::connector::{Connector, ConnectorConfig};
use crate::engine::error::SinkError;
use crate::engine::lsn::Lsn;
use crate::engine::options::SinkDefinition;
use crate::engine::pipeline::Pipeline;
use crate::engine::pipeline::TypeResolver;
use crate::engine::replication::{self, StartError};
use crate::engine::step::{SnapshotSource, Step, SNAPSHOT_CHUNK};
use crate::engine::types::PgType;

use super::catalog::{self, SinkRow};
use super::gucs::{self, Transport};
use super::spi::{output_text, select, select_one, CatalogTypes, SpiSession};

pub use crate::engine::step::Outcome;

/// How one attempt at a step ended.
enum Stepped {
    Done(Outcome),
    /// The walsender could not be reached in `Auto` mode: read through SQL instead.
    FallBack,
}

#[derive(Clone, Copy)]
pub enum Mode {
    /// `whole_backlog`: read everything flushed when the step began, however much
    /// (`sink.sync()`, whose steps all run in the caller's one transaction), instead
    /// of at most `pg_sink.max_step_changes`.
    Deliver {
        write_idle_progress: bool,
        whole_backlog: bool,
    },
    Preview(usize),
}

struct Parts {
    def: SinkDefinition,
    pipeline: Pipeline,
    connector: Box<dyn Connector>,
    /// The walsender stream, when the sink reads its slot that way. Lives with the
    /// pipeline: its decoder has seen the stream's relation messages.
    stream: Option<replication::Stream>,
    /// The stream's last keepalive position seen between transactions: everything
    /// before it has been read (and, once the step ends, delivered). An idle sink
    /// confirms it, so its slot does not hold WAL.
    idle_end: Lsn,
    /// When this sink last logged a running-transactions record.
    snapshot_logged: Option<std::time::Instant>,
}

/// A sink's pipeline and connector, kept across steps while its definition does not
/// change, so connectors keep their clients (Kafka producers, ...) between batches.
#[derive(Default)]
pub struct Session {
    /// The sink's parts, built for (sink id, catalog definitions version).
    cached: Option<((i64, i64), Parts)>,
    /// Lives as long as the session: clients (NATS, ...) run background tasks on it.
    rt: Option<std::sync::Arc<tokio::runtime::Runtime>>,
    /// Set by the worker; `sync()` and `preview()` read through SQL.
    pub transport: Transport,
    /// The walsender could not be reached (with `Auto`): read through SQL from now on.
    pub fell_back: bool,
    /// Checked while waiting for the rest of a transaction from the walsender.
    pub stop_requested: Option<fn() -> bool>,
    /// Set when a step begins, cleared by [`Session::committed`] once the caller's
    /// transaction committed the step's progress. Still set when the next step
    /// begins: the last one raised an ERROR or panicked (unwinding past every
    /// `Result`), or its commit failed, after reading from the stream. What it read
    /// was never recorded, so the next step starts over from the catalog.
    uncommitted: bool,
    /// `sync()` was called in a transaction that had written data: a backfill
    /// reads no chunk in it (it would see the caller's uncommitted rows).
    pub caller_wrote: bool,
}

impl Session {
    /// The caller's transaction committed the last step: the stream's read position
    /// and the catalog agree again.
    pub fn committed(&mut self) {
        self.uncommitted = false;
    }

    /// After a configuration reload: the transport may have changed, and
    /// pg_hba.conf or `pg_sink.replication_conninfo` too, so the stream is opened
    /// again (and a fallback to SQL retried).
    pub fn set_transport(&mut self, t: Transport) {
        self.transport = t;
        self.fell_back = false;
        if let Some((_, p)) = self.cached.as_mut() {
            p.stream = None;
        }
    }

    /// Something is waiting in the stream (or it ended): the caller must not sleep.
    pub fn stream_ready(&mut self) -> bool {
        self.cached.as_mut().and_then(|(_, p)| p.stream.as_mut()).is_some_and(|s| s.ready())
    }

    /// The stream's wake descriptor, for the caller's idle wait (after
    /// [`Session::stream_ready`] said false).
    pub fn stream_wake_fd(&self) -> Option<i32> {
        self.cached.as_ref().and_then(|(_, p)| p.stream.as_ref()).map(|s| s.wake_fd())
    }

    fn runtime(&mut self) -> Result<std::sync::Arc<tokio::runtime::Runtime>, SinkError> {
        if self.rt.is_none() {
            // One worker thread for clients' background tasks (pings, reconnects);
            // connector calls themselves run on this backend's thread via block_on.
            let rt = crate::engine::replication::with_signals_blocked(|| {
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().on_thread_start(block_signals).build()
            })
            .map_err(|e| SinkError::transient(format!("could not start the async runtime: {e}")))?;
            self.rt = Some(std::sync::Arc::new(rt));
        }
        self.rt.clone().ok_or_else(|| SinkError::transient("async runtime unavailable"))
    }
}

/// Runtime threads must never run a Postgres signal handler (a SIGHUP landing on
/// one would call into Postgres from a foreign thread): they block every signal.
pub use crate::engine::replication::block_signals;

fn parts<'a>(sink: &SinkRow, session: &'a mut Session) -> Result<&'a mut Parts, SinkError> {
    // Options (secrets included) are resolved again only after a definition changed.
    let fingerprint = (sink.id, catalog::definitions_version());
    let mut fresh = false;
    if session.cached.as_ref().map(|(f, _)| f != &fingerprint).unwrap_or(true) {
        session.cached = None;
        let options = catalog::effective_options(sink)?;
        let def = crate::engine::options::parse(&sink.connector, &options)?;
        let database = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
        let mut pipeline = Pipeline::new(&def, &sink.name, &database, Lsn::ZERO)?;
        pipeline.sink_id = sink.id;
        pipeline.source_oid = sink.source_oid;
        pipeline.message_key = catalog::message_key();
        if sink.columns.is_some() {
            // A column list names columns: a target of some of them does not
            // follow the table's schema changes (README, Known limits).
            pipeline.schema_changes = crate::engine::schema_change::Handling::Ignore;
        }
        let cfg = ConnectorConfig {
            sink_name: sink.name.clone(),
            database: database.clone(),
            sink_uid: sink.uid(&catalog::cluster_identity(), &database),
            envelope: def.envelope,
            key_columns: def.key_columns.clone(),
            options: def.connector_options.clone(),
            columns: vec![],
            password_required: !catalog::owner_is_superuser(&sink.owner),
        };
        let mut connector = (def.connector.build)(&cfg)?;
        if def.errors_policy != crate::engine::dead_letter::Policy::Fail {
            connector.set_aside_refusals();
        }
        session.cached = Some((fingerprint, Parts { def, pipeline, connector, stream: None, idle_end: Lsn::ZERO, snapshot_logged: None }));
        fresh = true;
    }
    let (_, parts) = session.cached.as_mut().ok_or_else(|| SinkError::transient("sink parts unavailable"))?;
    // A new pipeline learns whether the sink's position is the end of a
    // transaction it delivered (Debezium's `sequence` names it).
    let delivered = fresh
        && select_one("SELECT (transactions_delivered > 0)::text FROM sink.progress WHERE sink_id = $1::bigint", &[Some(&sink.id.to_string())]).as_deref() == Some("true");
    parts.pipeline.resume(sink.confirmed.unwrap_or(Lsn::ZERO), delivered);
    Ok(parts)
}

/// A sink's replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    confirmed: Option<Lsn>,
    /// `wal_status = 'lost'`: the server removed WAL the slot still needed
    /// (`max_slot_wal_keep_size`); it can never be read again.
    lost: bool,
}

/// The sink's slot, if it exists.
fn slot_state(slot: &str) -> Option<Slot> {
    let row = select(
        "SELECT confirmed_flush_lsn::text, wal_status::text FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
        &[Some(slot)],
    )
    .into_iter()
    .next()?;
    let confirmed = row.first().cloned().flatten().and_then(|l| l.parse().ok());
    Some(Slot { confirmed, lost: row.get(1).cloned().flatten().as_deref() == Some("lost") })
}

/// A slot that delivery depends on and that is gone or invalidated: changes since
/// the sink's confirmed position cannot be read any more. The sink fails (it must
/// never start again from the current WAL and skip them silently); `sink.resync`
/// delivers the source again from a new snapshot.
fn slot_lost(sink: &SinkRow, slot: Option<Slot>) -> Option<SinkError> {
    let confirmed = sink.confirmed?;
    let (message, detail) = match slot {
        None => (
            format!("replication slot \"{}\" of sink \"{}\" does not exist", sink.slot_name, sink.name),
            format!("It was dropped outside pg_sink or lost in a failover; the changes after {confirmed} that it held cannot be read any more."),
        ),
        Some(s) if s.lost => (
            format!("replication slot \"{}\" of sink \"{}\" was invalidated", sink.slot_name, sink.name),
            format!("The server removed WAL after {confirmed} that the sink had not read yet (max_slot_wal_keep_size)."),
        ),
        Some(_) => return None,
    };
    Some(SinkError::permanent(message).detail(detail).hint(format!(
        "Run SELECT sink.resync('{}') to deliver the source again from a new snapshot, or drop the sink.",
        sink.name.replace('\'', "''")
    )))
}

/// Run one step for `sink`. Errors are engine errors; Postgres errors propagate.
pub fn step(sink: &SinkRow, mode: Mode, session: &mut Session) -> Result<Outcome, SinkError> {
    if session.uncommitted {
        // The last step did not end in a commit: drop its stream and clients.
        session.cached = None;
    }
    session.uncommitted = true;
    let mut result = step_with(sink, mode, session);
    if matches!(result, Ok(Stepped::FallBack)) {
        session.fell_back = true;
        result = step_with(sink, mode, session);
    }
    if matches!(&result, Err(e) if e.is_transient()) {
        // Rebuild clients after a transient failure.
        session.cached = None;
    }
    if matches!(&result, Ok(Stepped::Done(o)) if o.refused) {
        // Clients start afresh at the batch that is read again (a Kafka
        // transaction, a target transaction across parts).
        session.cached = None;
    }
    match result? {
        Stepped::Done(outcome) => Ok(outcome),
        Stepped::FallBack => Err(SinkError::transient("the replication stream could not be opened")),
    }
}

fn step_with(sink: &SinkRow, mode: Mode, session: &mut Session) -> Result<Stepped, SinkError> {
    let rt = session.runtime()?;
    let (transport, session_fell_back, stop_requested) = (session.transport, session.fell_back, session.stop_requested);
    let session_wrote = session.caller_wrote;
    let stop = move || stop_requested.is_some_and(|f| f());
    let Parts { def, pipeline, connector, stream, idle_end, snapshot_logged } = parts(sink, session)?;
    let def = &*def;
    let mut types = CatalogTypes::default();
    if crate::pg::home::moved(sink, &crate::pg::home::current()) {
        return Err(crate::pg::home::moved_error(sink));
    }
    let slot = slot_state(&sink.slot_name);

    let write_idle = match mode {
        Mode::Preview(limit) => {
            pipeline.encode = true;
            return match slot {
                None => preview_snapshot(sink, pipeline, &mut types, limit),
                Some(_) => preview_changes(sink, pipeline, &mut types, limit),
            }
            .map(Stepped::Done);
        }
        Mode::Deliver { write_idle_progress, .. } => write_idle_progress,
    };
    let whole_backlog = matches!(mode, Mode::Deliver { whole_backlog: true, .. });

    if let Some(e) = slot_lost(sink, slot) {
        return Err(e);
    }
    let Some(confirmed) = sink.confirmed else {
        let leftover = leftover_slot(sink, def, slot);
        let transport = if session_fell_back { Transport::Sql } else { transport };
        return initialize(sink, def, pipeline, connector.as_mut(), &rt, &mut types, leftover, &stop, transport).map(Stepped::Done);
    };
    if stream.is_none() {
        advance_slot(sink, slot, confirmed);
    }

    let step_limit = if whole_backlog { i64::from(i32::MAX) } else { gucs::max_step_changes() };
    if def.errors_policy != crate::engine::dead_letter::Policy::Fail {
        pipeline.dead = catalog::dead_set(sink.id, confirmed);
    }
    if !pipeline.awaits_chunk() && !session_wrote {
        if let Some(b) = super::backfill::running(sink.id) {
            super::backfill::next_chunk(sink, &b, pipeline, snapshot_relation(sink, &mut types))?;
        }
    }
    let mut sql = SpiSession::for_owner(&sink.owner)?;
    let mut run = Step::new(pipeline, connector.as_mut(), &rt, &mut sql, &mut types, confirmed, gucs::max_batch_changes() as usize)
        .parts_after(gucs::transaction_part_changes())
        .stop_when(&stop);
    let transport = if session_fell_back { Transport::Sql } else { transport };
    let read = match transport {
        Transport::Sql => {
            *stream = None;
            let flushed = wal_flush_lsn();
            peek(sink, step_limit, |msg, at| run.feed_at(msg, at)).map(|n| ((n as i64) < step_limit, flushed))
        }
        Transport::Auto | Transport::Walsender => match read_walsender(sink, &mut run, stream, transport, confirmed, step_limit, idle_end) {
            Ok(Read::Upto(caught_up, upto)) => Ok((caught_up, upto)),
            Ok(Read::FallBack) => return Ok(Stepped::FallBack),
            Ok(Read::Closed) => return Ok(Stepped::Done(Outcome { caught_up: true, confirmed: Some(confirmed), ..Default::default() })),
            Err(e) => Err(e),
        },
    };
    let (outcome, progress) = match read {
        // A record was refused and set aside (errors.policy): the step ends before
        // its batch; the next one reads it again without the record.
        Err(_) if run.refused() => run.finish_refused(Lsn::ZERO)?,
        Err(e) => return Err(e),
        Ok((caught_up, flushed)) => {
            let quiet = stream.is_some().then_some(*idle_end);
            run.finish(caught_up, flushed, quiet, write_idle)?
        }
    };
    let caught_up = outcome.caught_up;
    if outcome.refused {
        // The stream stopped inside the batch that is read again.
        *stream = None;
    }
    log_standby_snapshot(&outcome, stream.is_none(), snapshot_logged);
    if outcome.transactions > 0 && gucs::FAIL_AFTER_DELIVER.get() {
        return Err(SinkError::transient("pg_sink.fail_after_deliver: failing after delivery, before recording progress"));
    }
    if progress.record {
        catalog::record_progress(sink.id, progress.confirmed, &outcome, caught_up);
    }
    catalog::record_dead_letters(sink, &outcome.dead_letters);
    if let Some(a) = &outcome.backfill {
        super::backfill::record(sink.id, a);
    }
    if let Some(e) = &outcome.stopped {
        // Failed at a change it cannot take, with what came before it delivered.
        warning!("pg_sink sink \"{}\": {} {}", sink.name, e.message, e.hint.as_deref().unwrap_or_default());
        catalog::record_error(sink.id, &e.summary(), e.hint.as_deref(), true);
        crate::pg::events::state_changed(&sink.name, format!("failed: {}", e.message));
    }
    Ok(Stepped::Done(outcome))
}

/// For a sink that has not started: the position of a slot an earlier, failed
/// first step left, to start from (`None` creates a new slot).
fn leftover_slot(sink: &SinkRow, def: &SinkDefinition, slot: Option<Slot>) -> Option<Lsn> {
    match slot {
        None => None,
        Some(_) if def.snapshot => {
            // A slot left by an initialisation that failed before it committed:
            // its snapshot was never recorded, so it is taken again.
            // Read-only SPI: assigning an xid here would forbid creating the new slot.
            select("SELECT pg_drop_replication_slot($1)::text", &[Some(&sink.slot_name)]);
            None
        }
        // Without a snapshot, a slot left by a first step that failed is adopted:
        // the sink's history starts where that slot does, so nothing is lost.
        Some(s) => s.confirmed,
    }
}

/// Move the slot up to the catalog's position. Moving the slot cannot be undone:
/// it follows only progress that is committed, never the progress an earlier step
/// of this same transaction wrote (sync() called twice in one transaction that is
/// then rolled back).
fn advance_slot(sink: &SinkRow, slot: Option<Slot>, confirmed: Lsn) {
    if let Some(Slot { confirmed: Some(slot_lsn), .. }) = slot {
        if slot_lsn < confirmed && !catalog::progress_written_by_this_transaction(sink.id) {
            let lsn = confirmed.to_string();
            select("SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::pg_lsn)", &[Some(&sink.slot_name), Some(&lsn)]);
        }
    }
}

/// How reading the walsender ended.
enum Read {
    /// Read up to this position (and whether that caught up with the slot).
    Upto(bool, Lsn),
    /// The walsender could not be reached in `Auto` mode.
    FallBack,
    /// The kept stream had gone away between steps; nothing was read from it.
    Closed,
}

/// Read a slice of the slot through the walsender (opened now, or kept from the
/// last step): everything flushed when the step begins, nothing after, like a peek.
fn read_walsender(
    sink: &SinkRow,
    run: &mut Step<'_>,
    stream: &mut Option<replication::Stream>,
    transport: Transport,
    confirmed: Lsn,
    step_limit: i64,
    idle_end: &mut Lsn,
) -> Result<Read, SinkError> {
    let reused = stream.is_some();
    if !reused {
        match open_stream(sink, confirmed) {
            Ok(s) => *stream = Some(s),
            Err(StartError::Connect(e)) if transport == Transport::Auto => {
                warning!("pg_sink sink \"{}\": reading the slot through SQL instead of a walsender: {}", sink.name, e.summary());
                return Ok(Read::FallBack);
            }
            Err(StartError::Connect(e) | StartError::Refused { error: e, .. }) => return Err(e),
        }
    }
    let Some(s) = stream.as_mut() else {
        return Err(SinkError::transient("replication stream unavailable"));
    };
    let upto = wal_flush_lsn();
    let fed = s.feedback(confirmed, true);
    let lost_at_start = fed.is_err();
    match fed.and_then(|_| run.read_stream(s, step_limit, upto, idle_end)) {
        Ok(caught_up) => Ok(Read::Upto(caught_up, upto)),
        Err(e) if reused && (lost_at_start || run.lost_at_start) => {
            // The walsender went away between steps (sync(), preview() or
            // drop_sink() took the slot, or the server ended it): open a new
            // one on the next step.
            pgrx::debug1!("pg_sink sink \"{}\": replication stream closed: {}", sink.name, e.message);
            *stream = None;
            Ok(Read::Closed)
        }
        Err(e) => Err(e),
    }
}

/// Decoding restarts at the slot's restart_lsn, which only moves past a
/// running-transactions record. Log one after a step that delivered, so the next
/// peek does not re-decode from far behind. A stream keeps decoding across steps
/// and only restarts after a failure: once every 10 s is enough there (each record
/// is more WAL for every slot to decode).
fn log_standby_snapshot(outcome: &Outcome, peeked: bool, logged: &mut Option<std::time::Instant>) {
    let due = peeked || logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
    if outcome.transactions > 0 && due {
        // SAFETY: writes one WAL record; needs wal_level >= replica (we have logical).
        unsafe { pg_sys::LogStandbySnapshot() };
        *logged = Some(std::time::Instant::now());
    }
}

/// The WAL flush position: where a step's slice of the slot ends.
fn wal_flush_lsn() -> Lsn {
    select_one("SELECT pg_current_wal_flush_lsn()::text", &[]).and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO)
}

/// The walsender's application_name for a slot: how `release_slot` finds it.
pub fn stream_application_name(slot: &str) -> String {
    format!("pg_sink stream {slot}")
}

/// Open a walsender stream of the sink's slot from `confirmed`. The walsender of
/// a worker that just exited may hold the slot for a moment: that refusal is
/// retried for 2 s.
fn open_stream(sink: &SinkRow, confirmed: Lsn) -> Result<replication::Stream, StartError> {
    // A bad setting is the administrator's to fix: retried, not a failed sink.
    let mut target = replication_target().map_err(|e| StartError::Connect(SinkError { kind: crate::engine::error::ErrorKind::Transient, ..e }))?;
    target.application_name = stream_application_name(&sink.slot_name);
    let mut attempt = 0;
    loop {
        match replication::start(&target, &sink.slot_name, &sink.publication_name, confirmed) {
            Err(StartError::Refused { code, .. }) if code == "55006" && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
                pgrx::check_for_interrupts!();
            }
            other => return other,
        }
    }
}

/// This server, as the bootstrap superuser, over its first Unix socket (or
/// 127.0.0.1), overridden by `pg_sink.replication_conninfo`.
fn replication_target() -> Result<replication::Target, SinkError> {
    // SAFETY: reads of the postmaster's settings, copied into this process.
    let (dirs, port) = unsafe {
        let d = pg_sys::Unix_socket_directories;
        let dirs = if d.is_null() { String::new() } else { std::ffi::CStr::from_ptr(d).to_string_lossy().into_owned() };
        (dirs, pg_sys::PostPortNumber)
    };
    let host = dirs.split(',').map(str::trim).find(|d| !d.is_empty()).map(str::to_string).unwrap_or_else(|| "127.0.0.1".into());
    let user = select_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[]).unwrap_or_else(|| "postgres".into());
    let database = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
    // The walsender formats values: the same output settings as the worker's session.
    let settings = super::identity::OUTPUT_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut t = replication::Target { host, port: port as u16, user, database, password: None, application_name: String::new(), settings };
    if let Some(ci) = gucs::replication_conninfo() {
        t.apply_conninfo(&ci)?;
    }
    Ok(t)
}

/// Make the sink's slot free for this backend: end the worker's walsender that
/// streams it (the worker reconnects on its next step) and wait until the slot
/// is released. Callers hold the sink's lock, so the worker cannot take it back.
pub fn release_slot(slot: &str) {
    let app = stream_application_name(slot);
    // Up to 10 s: a worker that was just told to stop (pause, drop) may leave its
    // walsender holding the slot for a moment, even after that walsender's
    // pg_stat_activity entry is gone; and a worker starting again may open a new
    // one. Ours are ended; anyone else's slot use is waited for, then left to the
    // caller's error.
    for i in 0..1000 {
        let held = select_one(
            "SELECT 1::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database() \
               AND active_pid IS NOT NULL AND active_pid <> pg_catalog.pg_backend_pid()",
            &[Some(slot)],
        );
        if held.is_none() {
            return;
        }
        if i % 50 == 0 {
            // The walsender streaming it, or the one still creating it with its
            // snapshot (which may be waiting for the caller's own transaction).
            super::identity::fresh_activity();
            select(
                "SELECT pg_catalog.pg_terminate_backend(a.pid)::text FROM pg_catalog.pg_replication_slots s JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid \
                  WHERE s.slot_name = $1 AND s.database = pg_catalog.current_database() AND a.backend_type = 'walsender' AND a.application_name IN ($2, $3)",
                &[Some(slot), Some(&app), Some(&snapshot_application_name(slot))],
            );
        }
        std::thread::sleep(Duration::from_millis(10));
        pgrx::check_for_interrupts!();
    }
}

/// Drop this database's slot `slot`, if it exists, once no walsender of ours holds
/// it. A worker whose stream was just ended can open a new one between the check
/// and the drop (its sink's deletion is not committed yet, so it still runs): the
/// drop is then tried again, and only the last try's error reaches the caller.
pub fn drop_slot(slot: &str) {
    const SQL: &str = "SELECT pg_catalog.pg_drop_replication_slot(slot_name)::text FROM pg_catalog.pg_replication_slots \
                        WHERE slot_name = $1 AND database = pg_catalog.current_database()";
    // A terminated walsender can take a while to let go of the slot on a busy
    // machine (0.5 s was seen not to be enough): up to 15 s in all.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        release_slot(slot);
        if super::spi::in_subtransaction(|| Some(super::spi::update(SQL, &[Some(slot)]))).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        pgrx::check_for_interrupts!();
    }
    release_slot(slot);
    super::spi::update(SQL, &[Some(slot)]);
}

const PEEK_SQL: &str = "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2::int, \
                        'proto_version', '1', 'publication_names', $3, 'messages', 'true')";

/// Peek up to `limit` pgoutput messages of the sink's slot, read through a cursor,
/// and hand each to `feed` with its position. Returns the number of messages read.
fn peek(sink: &SinkRow, limit: i64, mut feed: impl FnMut(&[u8], Lsn) -> Result<(), SinkError>) -> Result<usize, SinkError> {
    let limit_text = limit.to_string();
    let unreadable = |e: pgrx::spi::Error| SinkError::transient(format!("could not read slot \"{}\": {e}", sink.slot_name));
    Spi::connect(|client| {
        let mut cursor = client
            .try_open_cursor(PEEK_SQL, &[sink.slot_name.as_str().into(), limit_text.as_str().into(), sink.publication_name.as_str().into()])
            .map_err(unreadable)?;
        let mut n = 0usize;
        loop {
            let table = cursor.fetch(10_000).map_err(unreadable)?;
            if table.is_empty() {
                return Ok(n);
            }
            for row in table {
                n += 1;
                let bad = |e: pgrx::spi::Error| SinkError::permanent(format!("bad slot row: {e}"));
                let at: Option<String> = row.get(1).map_err(bad)?;
                let data: Option<&[u8]> = row.get(2).map_err(bad)?;
                if let Some(msg) = data {
                    feed(msg, at.and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO))?;
                }
            }
            // SAFETY: the rows of this fetch were consumed above; free them now
            // instead of at the end of the step.
            unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
        }
    })
}

fn preview_changes(sink: &SinkRow, pipeline: &mut Pipeline, types: &mut dyn TypeResolver, limit: usize) -> Result<Outcome, SinkError> {
    let mut batch = pipeline.new_batch();
    let mut sql = SpiSession::for_owner(&sink.owner)?;
    let limit = limit.max(1);
    peek(sink, limit as i64, |msg, at| {
        pipeline.feed_at(msg, at, types, &mut sql, &mut batch)?;
        // A large transaction is not held whole for a preview either: what is
        // beyond the limit is dropped part by part.
        if pipeline.pending_changes() >= limit {
            if let Some(part) = pipeline.cut_part(&mut sql)? {
                let room = limit.saturating_sub(batch.records.len());
                batch.records.extend(part.records.into_iter().take(room));
            }
        }
        Ok(())
    })?;
    batch.records.truncate(limit);
    Ok(Outcome { records: batch.records.len(), preview: batch.records, ..Default::default() })
}

/// The sink's source as the stream would describe it now (after a DDL of the
/// current transaction): published columns, resolved types.
pub(crate) fn current_relation(sink: &SinkRow) -> Arc<Relation> {
    snapshot_relation(sink, &mut super::spi::CatalogTypes::default())
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
    // Schema-qualified: the query may run in another session (the snapshot's).
    let source = select_one(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
        &[Some(&sink.source_oid.to_string())],
    )
    .unwrap_or_else(|| sink.source_name.clone());
    let mut q = format!("SELECT {} FROM {}", cols.join(", "), source);
    if let Some(f) = &sink.row_filter {
        q.push_str(&format!(" WHERE {f}"));
    }
    q
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The initial snapshot's rows, read through an SPI cursor.
struct SnapshotCursor<'c, 'r> {
    cursor: &'c mut pgrx::spi::SpiCursor<'r>,
    rel: &'c Arc<Relation>,
    lsn: Lsn,
    progress: SnapshotProgress,
}

impl SnapshotSource for SnapshotCursor<'_, '_> {
    fn next_chunk(&mut self, rows: i64) -> Result<Transaction, SinkError> {
        let txn = snapshot_chunk(self.cursor, self.rel, self.lsn, rows)?;
        self.progress.read(txn.changes.len());
        Ok(txn)
    }
}

/// A worker's snapshot progress, shown as its activity (`pg_stat_activity.query`,
/// `sink.status.activity`): rows read so far (every earlier chunk is delivered)
/// and the planner's estimate of the table's rows.
struct SnapshotProgress {
    rows: u64,
    estimate: Option<u64>,
}

impl SnapshotProgress {
    fn new(sink: &SinkRow) -> SnapshotProgress {
        let estimate =
            select_one("SELECT reltuples::bigint::text FROM pg_catalog.pg_class WHERE oid = $1::oid", &[Some(&sink.source_oid.to_string())])
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .map(|n| n as u64);
        let p = SnapshotProgress { rows: 0, estimate };
        p.report();
        p
    }

    fn read(&mut self, rows: usize) {
        self.rows += rows as u64;
        self.report();
    }

    fn report(&self) {
        let about = self.estimate.map_or_else(String::new, |n| format!(" of about {}", n.max(self.rows)));
        report_activity(&format!("snapshot: {} rows read{about}", self.rows));
    }
}

/// What a worker does now, in its `pg_stat_activity.query`; a caller's own
/// session (sync(), preview()) keeps its query text.
pub fn report_activity(text: &str) {
    // SAFETY: reads a backend-local global; pgstat copies the text into shared memory.
    unsafe {
        if pg_sys::MyBackendType != pg_sys::BackendType::B_BG_WORKER {
            return;
        }
        let c = std::ffi::CString::new(text).unwrap_or_default();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr());
    }
}

/// Read the next chunk of snapshot rows from `cursor` as an insert-only transaction.
fn snapshot_chunk(cursor: &mut pgrx::spi::SpiCursor<'_>, rel: &Arc<Relation>, lsn: Lsn, rows: i64) -> Result<Transaction, SinkError> {
    let table = cursor.fetch(rows).map_err(|e| SinkError::transient(format!("snapshot read failed: {e}")))?;
    let changes = insert_rows(table, rel)?;
    Ok(Transaction::snapshot(lsn, now_us(), changes))
}

/// The rows of `table` as inserts into `rel`, each cell in its text form.
pub(crate) fn insert_rows(mut table: pgrx::spi::SpiTupleTable<'_>, rel: &Arc<Relation>) -> Result<Vec<crate::engine::change::Change>, SinkError> {
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
    Ok(changes)
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
        pipeline.add_transaction(txn, &mut SpiSession::for_owner(&sink.owner)?, &mut batch)
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
#[allow(clippy::too_many_arguments)]
fn initialize(
    sink: &SinkRow,
    def: &SinkDefinition,
    pipeline: &mut Pipeline,
    connector: &mut dyn Connector,
    rt: &tokio::runtime::Runtime,
    types: &mut dyn TypeResolver,
    leftover: Option<Lsn>,
    stop: &dyn Fn() -> bool,
    transport: Transport,
) -> Result<Outcome, SinkError> {
    // SAFETY: plain reads of backend-local transaction state.
    let (has_xid, isolation) = unsafe { (pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId, pg_sys::XactIsoLevel) };
    if has_xid || isolation >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(SinkError::config(format!("sink \"{}\" must start in a fresh read committed transaction", sink.name))
            .detail("Creating a replication slot is not possible in a transaction that has written data or uses a transaction-wide snapshot.")
            .hint("Call sink.sync() as the first statement of its own transaction."));
    }
    // An incremental snapshot is a backfill that starts with the stream: no
    // exported snapshot, no lock.
    let key = if def.snapshot && def.snapshot_incremental { super::backfill::key_columns(sink.source_oid) } else { None };
    let snapshot = def.snapshot && key.is_none();
    let remote = if snapshot && leftover.is_none() && transport != Transport::Sql { snapshot_session(sink, transport, stop)? } else { None };
    let start = match &remote {
        Some(session) => session.consistent_point,
        None => create_slot_locked(sink, leftover, snapshot)?,
    };
    if let Some(key) = key {
        let (_, estimate) = super::backfill::begin(sink, &key, None, &sink.owner);
        catalog::start_streaming(sink.id, start);
        let about = estimate.map_or_else(String::new, |n| format!(" of about {n} rows"));
        crate::pg::events::state_changed(&sink.name, format!("streaming from {start}, incremental snapshot{about} in chunks by {}", key.join(", ")));
        return Ok(Outcome { initialized: true, confirmed: Some(start), ..Default::default() });
    }
    let mut outcome = Outcome::default();
    if snapshot {
        let mut sql = SpiSession::for_owner(&sink.owner)?;
        let rel = snapshot_relation(sink, types);
        let query = snapshot_query(sink, &rel);
        let mut step = Step::new(pipeline, connector, rt, &mut sql, types, Lsn::ZERO, usize::MAX).stop_when(stop);
        match remote {
            Some(mut session) => {
                session.query(&format!("DECLARE pg_sink_snapshot NO SCROLL CURSOR FOR {query}"), stop)?;
                let progress = SnapshotProgress::new(sink);
                step.deliver_snapshot(&mut RemoteSnapshot { session: &mut session, rel: &rel, lsn: start, stop, progress }, SNAPSHOT_CHUNK)?;
                session.finish(stop)?;
            }
            None => {
                // SAFETY: a snapshot taken after the lock; popped below.
                unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
                let result = Spi::connect(|client| {
                    let mut cursor = client.open_cursor(query.as_str(), &[]);
                    let progress = SnapshotProgress::new(sink);
                    step.deliver_snapshot(&mut SnapshotCursor { cursor: &mut cursor, rel: &rel, lsn: start, progress }, SNAPSHOT_CHUNK)
                });
                // SAFETY: pops the snapshot pushed above.
                unsafe { pg_sys::PopActiveSnapshot() };
                result?;
            }
        }
        outcome = step.into_outcome();
    }
    outcome.initialized = true;
    outcome.confirmed = Some(start);
    if gucs::FAIL_AFTER_DELIVER.get() {
        return Err(SinkError::transient("pg_sink.fail_after_deliver: failing after the initial delivery, before recording progress"));
    }
    catalog::mark_snapshot_done(sink.id, start);
    report_activity("streaming");
    let what = if def.snapshot {
        format!("snapshot done ({} records), streaming from {start}", outcome.records)
    } else {
        format!("streaming from {start} (no snapshot)")
    };
    crate::pg::events::state_changed(&sink.name, what);
    if outcome.records > 0 {
        catalog::record_progress(sink.id, start, &outcome, false);
    }
    catalog::record_dead_letters(sink, &outcome.dead_letters);
    Ok(outcome)
}

/// The name the walsender that creates a sink's slot (and reads its snapshot)
/// shows in `pg_stat_activity`.
fn snapshot_application_name(slot: &str) -> String {
    format!("pg_sink snapshot {slot}")
}

/// The slot and its snapshot, made over a replication connection (no lock on the
/// source: writers go on). `None` when the walsender cannot be reached in `auto`
/// mode: the slot is then made through SQL, under a lock.
fn snapshot_session(sink: &SinkRow, transport: Transport, stop: &dyn Fn() -> bool) -> Result<Option<replication::SnapshotSession>, SinkError> {
    let mut target = replication_target()?;
    target.application_name = snapshot_application_name(&sink.slot_name);
    match replication::create_slot_with_snapshot(&target, &sink.slot_name, stop) {
        Ok(s) => Ok(Some(s)),
        Err(StartError::Connect(e)) if transport == Transport::Auto => {
            warning!("pg_sink sink \"{}\": taking the snapshot under a lock (no walsender to export one): {}", sink.name, e.summary());
            Ok(None)
        }
        Err(StartError::Connect(e) | StartError::Refused { error: e, .. }) => Err(e),
    }
}

/// Without a walsender: create the slot through SQL (or adopt `leftover`) and,
/// for a snapshot, lock writers out of the source (SHARE) until the transaction
/// ends, so that the transaction's snapshot is exactly what committed before the
/// returned position.
fn create_slot_locked(sink: &SinkRow, leftover: Option<Lsn>, snapshot: bool) -> Result<Lsn, SinkError> {
    let slot_start: Lsn = match leftover {
        Some(lsn) => lsn,
        None => select_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[Some(&sink.slot_name)])
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| SinkError::transient("could not create the replication slot"))?,
    };
    if !snapshot {
        return Ok(slot_start);
    }
    // SAFETY: locking a relation we resolved from the catalog; released at
    // transaction end.
    unsafe { pg_sys::LockRelationOid(pg_sys::Oid::from(sink.source_oid), pg_sys::ShareLock as i32) };
    Ok(select_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .and_then(|l| l.parse::<Lsn>().ok())
        .ok_or_else(|| SinkError::transient("could not read the WAL position"))?
        .max(slot_start))
}

/// The initial snapshot's rows, fetched from the snapshot session's cursor.
struct RemoteSnapshot<'a> {
    session: &'a mut replication::SnapshotSession,
    rel: &'a Arc<Relation>,
    lsn: Lsn,
    stop: &'a dyn Fn() -> bool,
    progress: SnapshotProgress,
}

impl SnapshotSource for RemoteSnapshot<'_> {
    fn next_chunk(&mut self, rows: i64) -> Result<Transaction, SinkError> {
        let fetched = self.session.query(&format!("FETCH FORWARD {rows} FROM pg_sink_snapshot"), self.stop)?;
        let changes = fetched
            .into_iter()
            .map(|row| crate::engine::change::Change::Insert {
                relation: self.rel.clone(),
                new: row.into_iter().map(|v| v.map_or(Cell::Null, Cell::Text)).collect(),
            })
            .collect::<Vec<_>>();
        self.progress.read(changes.len());
        Ok(Transaction::snapshot(self.lsn, now_us(), changes))
    }
}
