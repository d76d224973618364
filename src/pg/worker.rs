//! Background workers, in three kinds:
//!
//! - **The launcher** (one, started with the postmaster, connected to
//!   `pg_sink.database`) starts a database launcher for every database that
//!   `pg_sink.databases` names (every one that accepts connections, by default),
//!   when the server starts and when that setting is reloaded. `CREATE
//!   EXTENSION` starts its database's one itself (`sink.start_launcher()`).
//! - **A database launcher** (one per database, made sure of by an advisory
//!   lock) exits at once where the extension is not installed, so that it never
//!   holds up `DROP DATABASE` there. Elsewhere it watches `sink.sinks` and keeps
//!   one worker per running, continuous sink: it starts them as sinks are created
//!   or resumed, stops them as sinks are paused or dropped, restarts crashed ones
//!   with backoff, guards retained WAL, and exits (stopping them) once the
//!   extension is dropped.
//! - **A sink worker** loops over [`delivery::step`], one transaction per
//!   batch, sleeping on its latch when caught up or backing off after transient
//!   errors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::*;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use crate::engine::error::{ErrorKind, SinkError};
use crate::engine::retry::Backoff;

use super::delivery::{self, Mode};
use super::identity::{as_superuser, deliver_as_superuser, LOCK_CLASS, OUTPUT_SETTINGS};
use super::spi::{select, select_one};
use super::{catalog, gucs, retention};

/// How often the launcher checks the WAL each sink's slot holds back.
const RETENTION_CHECK: Duration = Duration::from_secs(2);

pub fn register_launcher() {
    BackgroundWorkerBuilder::new("pg_sink launcher")
        .set_type("pg_sink launcher")
        .set_function("pg_sink_launcher_main")
        .set_library("pg_sink")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Run `f` in its own transaction; a Postgres ERROR inside is caught, the
/// transaction aborted, and the error returned as a transient engine error.
fn in_transaction<R>(f: impl FnOnce() -> Result<R, SinkError> + std::panic::UnwindSafe) -> Result<R, SinkError> {
    // SAFETY: worker main loop, not inside a transaction.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(f)
        .catch_others(|cause| {
            let (r, kind) = match &cause {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => {
                    (r, kind_of_sqlstate(r.sql_error_code() as i32))
                }
                // A panic is a bug, not the target's answer: retried, and logged.
                pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => (r, ErrorKind::Transient),
            };
            // The detail apart: it may quote a row (the log gets the message only).
            let mut e = SinkError::transient(r.message());
            if let Some(d) = r.detail() {
                e = e.detail(d);
            }
            e.kind = kind;
            if kind == ErrorKind::Permanent {
                e = e.hint("Fix the cause, then run sink.resume_sink().");
            }
            Err(e)
        })
        .execute();
    match result {
        Ok(v) => {
            // SAFETY: closes the transaction opened above.
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Ok(v)
        }
        Err(e) => {
            // SAFETY: aborting the failed transaction; this also releases SPI,
            // snapshots, locks and restores the user id. A slot this backend was
            // creating (through SQL) is released and, being ephemeral until then,
            // dropped, as a backend's error recovery does: otherwise it stays
            // active for this process and nobody can drop it.
            unsafe {
                pg_sys::AbortCurrentTransaction();
                if !pg_sys::MyReplicationSlot.is_null() {
                    pg_sys::ReplicationSlotRelease();
                }
                pg_sys::ReplicationSlotCleanup();
            }
            Err(e)
        }
    }
}

/// The five characters of a packed SQLSTATE (Postgres' `MAKE_SQLSTATE`).
pub fn sqlstate_text(code: i32) -> String {
    (0..5).map(|i| char::from(b'0' + ((code >> (6 * i)) & 0x3F) as u8)).collect()
}

/// What an ERROR raised inside a step means for the sink. Retrying cannot fix
/// class 42 (the target table or a column is gone, a privilege was revoked, the
/// statement is invalid) or 0A (not supported): the sink fails and says why.
/// Everything else (lock timeouts, deadlocks, serialization failures, out of
/// resources, a trigger's RAISE, ...) is retried with backoff.
pub fn kind_of_sqlstate(code: i32) -> ErrorKind {
    match &sqlstate_text(code)[..2] {
        "42" | "0A" => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

/// The extension is installed here, at this library's version.
fn extension_installed() -> bool {
    crate::pg::version::catalog_ready()
}

/// The extension is installed here (at any version).
fn extension_present() -> bool {
    select_one("SELECT 1::text FROM pg_catalog.pg_extension WHERE extname = 'pg_sink'", &[]).is_some()
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_sink_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    log!("pg_sink launcher started");
    let mut started: HashMap<String, DynamicBackgroundWorker> = HashMap::new();
    let mut probe = true;
    loop {
        if probe {
            probe = false;
            let names = in_transaction(|| {
                Ok(select("SELECT datname::text FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname", &[])
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect::<Vec<String>>())
            });
            match names {
                Ok(names) => {
                    started.retain(|_, w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
                    let missing: Vec<String> = names.into_iter().filter(|n| gucs::serves(n) && !started.contains_key(n)).collect();
                    for name in missing {
                        match start_database_launcher(&name) {
                            Some(w) => {
                                started.insert(name, w);
                            }
                            None => warning!("pg_sink could not start the launcher of database \"{name}\""),
                        }
                    }
                }
                Err(e) => warning!("pg_sink launcher could not list the databases: {}", e.message),
            }
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(10))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: reload postgresql.conf in the worker's own process.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            probe = true;
        }
    }
}

/// Start the launcher of database `name` (it exits at once when the extension
/// is not installed there, or when another one serves it).
pub fn start_database_launcher(name: &str) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("pg_sink launcher {name}"))
        .set_type("pg_sink launcher")
        .set_function("pg_sink_database_launcher_main")
        .set_library("pg_sink")
        .set_extra(name)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load_dynamic()
        .ok()
}

/// The key, under [`LOCK_CLASS`], of the session lock a database launcher holds
/// (sink ids, the other keys, start at 1).
const LAUNCHER_KEY: i32 = 0;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_sink_database_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    let mine = in_transaction(|| {
        if !extension_present() || !gucs::serves(&db) {
            return Ok(false);
        }
        let (class, key) = (LOCK_CLASS.to_string(), LAUNCHER_KEY.to_string());
        Ok(select_one("SELECT pg_catalog.pg_try_advisory_lock($1::int, $2::int)::text", &[Some(&class), Some(&key)]).as_deref() == Some("true"))
    });
    if !matches!(mine, Ok(true)) {
        // No sinks here, or another launcher serves them: nothing to hold the
        // database open for.
        return;
    }
    log!("pg_sink launcher started for database \"{db}\"");
    let mut workers: HashMap<i64, DynamicBackgroundWorker> = HashMap::new();
    let mut next_start: HashMap<i64, (Instant, Backoff)> = HashMap::new();
    let mut guarded = Instant::now();
    while BackgroundWorker::wait_latch(Some(gucs::poll_interval())) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reload postgresql.conf in the worker's own process.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if guarded.elapsed() >= RETENTION_CHECK {
            guarded = Instant::now();
            if let Err(e) = in_transaction(|| {
                if extension_installed() {
                    retention::enforce();
                }
                Ok(())
            }) {
                warning!("pg_sink launcher could not check the sinks' retained WAL: {}", e.message);
            }
        }
        let wanted = in_transaction(running_sinks);
        let wanted = match wanted {
            Ok(Some(w)) if gucs::serves(&db) => w,
            Ok(_) => {
                // The extension was dropped, or pg_sink.databases leaves this
                // database out now: stop its sinks and let the database go.
                log!("pg_sink launcher for database \"{db}\" stops: the extension is not installed, or pg_sink.databases leaves it out");
                break;
            }
            Err(e) => {
                warning!("pg_sink launcher could not read the catalog: {}", e.message);
                continue;
            }
        };
        // Stop workers of sinks that were paused, failed or dropped.
        let stale: Vec<i64> = workers.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in stale {
            if let Some(w) = workers.remove(&id) {
                let _ = w.terminate();
            }
            next_start.remove(&id);
        }
        // Forget workers that exited; they are restarted below after a backoff.
        let exited: Vec<i64> = workers.iter().filter(|(_, w)| matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped))).map(|(id, _)| *id).collect();
        for id in exited {
            workers.remove(&id);
            let entry = next_start.entry(id).or_insert_with(|| (Instant::now(), Backoff::new(Duration::from_secs(1), gucs::retry_max())));
            entry.0 = Instant::now() + entry.1.next_delay();
            log!("pg_sink worker for sink {id} exited; restarting it later");
        }
        for id in wanted {
            if workers.contains_key(&id) {
                continue;
            }
            if let Some((at, _)) = next_start.get(&id) {
                if Instant::now() < *at {
                    continue;
                }
            }
            match start_sink_worker(id, &db) {
                Some(w) => {
                    workers.insert(id, w);
                }
                None => {
                    warning!("pg_sink could not start a worker for sink {id}");
                    let entry = next_start.entry(id).or_insert_with(|| (Instant::now(), Backoff::new(Duration::from_secs(1), gucs::retry_max())));
                    entry.0 = Instant::now() + entry.1.next_delay();
                }
            }
        }
    }
    for (_, w) in workers.drain() {
        let _ = w.terminate();
    }
}

/// The sinks a worker should run for: running, delivered by the worker; `None`
/// once the extension is gone from this database.
fn running_sinks() -> Result<Option<Vec<i64>>, SinkError> {
    if !extension_present() {
        return Ok(None);
    }
    if !extension_installed() {
        // Another version's catalog (an upgrade half done): no sink runs.
        return Ok(Some(Vec::new()));
    }
    // A restored or cloned database: its copied sinks pause before any runs.
    crate::pg::home::pause_moved();
    Ok(Some(
        select("SELECT id::text FROM sink.sinks WHERE state = 'running' AND schedule = 'continuous' ORDER BY id", &[])
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten().and_then(|s| s.parse::<i64>().ok()))
            .collect(),
    ))
}

/// Start the worker of one sink of database `db`, telling this launcher when it exits.
fn start_sink_worker(id: i64, db: &str) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reading this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    BackgroundWorkerBuilder::new(&format!("pg_sink sink {id}"))
        .set_type("pg_sink worker")
        .set_function("pg_sink_worker_main")
        .set_library("pg_sink")
        .set_extra(db)
        .set_argument(id.into_datum())
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(me)
        .load_dynamic()
        .ok()
}

enum Next {
    Continue,
    Idle,
    /// `sync()` or a DDL call holds the sink: wait on the latch only (the stream
    /// may be readable, but it is not ours to read now).
    Busy,
    Stop,
}

/// SIGTERM arrived (pause, drop, shutdown). Sticky: pgrx's flag is cleared by
/// every read, and a step that stops on it must still see the worker exit.
fn sigterm() -> bool {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STOP.load(std::sync::atomic::Ordering::Relaxed) || BackgroundWorker::sigterm_received() {
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        return true;
    }
    false
}

/// Sleep until the latch is set, `fd` (the stream's wake descriptor) is readable,
/// or `timeout` passes. False when the worker must exit.
fn wait_latch_or_fd(fd: Option<i32>, timeout: Duration) -> bool {
    let Some(fd) = fd else {
        return BackgroundWorker::wait_latch(Some(timeout));
    };
    let flags = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH | pg_sys::WL_SOCKET_READABLE;
    // SAFETY: waits on this process's latch and a descriptor the stream owns.
    let rc = unsafe {
        let rc = pg_sys::WaitLatchOrSocket(pg_sys::MyLatch, flags as i32, fd, timeout.as_millis() as libc::c_long, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
        rc
    };
    pgrx::check_for_interrupts!();
    rc & pg_sys::WL_POSTMASTER_DEATH as i32 == 0 && !BackgroundWorker::sigterm_received()
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_sink_worker_main(arg: pg_sys::Datum) {
    // SAFETY: the launcher passes the sink id as an int8 datum.
    let sink_id = unsafe { i64::from_datum(arg, false) }.unwrap_or(0);
    if !start_worker(sink_id) {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), gucs::retry_max());
    let mut last_idle_write = Instant::now() - Duration::from_secs(10);
    let mut session = delivery::Session::default();
    session.transport = gucs::transport();
    session.stop_requested = Some(sigterm);
    loop {
        if sigterm() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: reload postgresql.conf in this process.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            // pg_hba.conf or the conninfo may have changed: try the walsender again.
            session.set_transport(gucs::transport());
        }
        let write_idle = last_idle_write.elapsed() >= Duration::from_secs(1);
        let session_ref = std::panic::AssertUnwindSafe(&mut session);
        let step = in_transaction(move || {
            let session = session_ref; // the whole wrapper, not its field (UnwindSafe)
            one_step(sink_id, session.0, write_idle)
        });
        match step {
            Ok((next, wrote_idle)) => {
                session.committed();
                if wrote_idle {
                    last_idle_write = Instant::now();
                }
                backoff.reset();
                if !wait_for_next(next, &mut session) {
                    break;
                }
            }
            Err(e) => {
                if sigterm() {
                    // Paused, dropped or shut down mid-step (the step ended on the
                    // request, or failed on its way out): the sink's next worker
                    // runs it again; nothing to record.
                    break;
                }
                if record_failure(sink_id, &e) || !BackgroundWorker::wait_latch(Some(backoff.next_delay())) {
                    break;
                }
            }
        }
    }
}

/// Tune, attach and name the worker's process; false if it cannot run.
fn start_worker(sink_id: i64) -> bool {
    // Each batch allocates and frees tens of MB; keep freed memory in the process
    // instead of returning it to the kernel and faulting it in again (measured: page
    // clearing was the top cost of a busy worker).
    // SAFETY: mallopt only tunes glibc's allocator for this process.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    let settings = in_transaction(|| {
        if !crate::pg::version::catalog_ready() {
            return Err(SinkError::transient("the catalog is not at this library's version"));
        }
        // work_mem: the peek's tuplestore stays in memory for a batch.
        for (k, v) in OUTPUT_SETTINGS.iter().chain([("work_mem", "64MB")].iter()) {
            select("SELECT set_config($1, $2, false)", &[Some(k), Some(v)]);
        }
        // Visible in pg_stat_activity.application_name.
        let name = select_one("SELECT name FROM sink.sinks WHERE id = $1::bigint", &[Some(&sink_id.to_string())]).unwrap_or_default();
        select("SELECT set_config('application_name', $1, false)", &[Some(&format!("pg_sink sink {name}"))]);
        crate::pg::events::logged(&name, "worker started");
        delivery::report_activity("streaming");
        Ok(())
    });
    if let Err(e) = settings {
        warning!("pg_sink worker for sink {sink_id} could not start: {}", e.message);
        return false;
    }
    true
}

/// One step of the sink, inside the worker's transaction: what to do next, and
/// whether it wrote idle progress.
fn one_step(sink_id: i64, session: &mut delivery::Session, write_idle: bool) -> Result<(Next, bool), SinkError> {
    let (class, id) = (LOCK_CLASS.to_string(), sink_id.to_string());
    let locked = select_one("SELECT pg_try_advisory_xact_lock($1::int, $2::int)::text", &[Some(&class), Some(&id)]);
    if locked.as_deref() != Some("true") {
        // sync() or a DDL call holds the sink; try again shortly.
        return Ok((Next::Busy, false));
    }
    let Some(sink) = catalog::find_by_id(sink_id) else {
        return Ok((Next::Stop, false));
    };
    if sink.state != "running" || sink.schedule != "continuous" {
        return Ok((Next::Stop, false));
    }
    let out = deliver_as_superuser(|| delivery::step(&sink, Mode::Deliver { write_idle_progress: write_idle, whole_backlog: false }, session))?;
    let wrote_idle = out.caught_up && out.transactions == 0 && write_idle;
    // Sleep only when nothing was found: while changes flow, go straight to
    // the next step (latency = step time, not poll interval).
    let idle = out.caught_up && !out.initialized && out.transactions == 0;
    Ok((if idle { Next::Idle } else { Next::Continue }, wrote_idle))
}

/// Wait as `next` says; false when the worker is to stop.
fn wait_for_next(next: Next, session: &mut delivery::Session) -> bool {
    match next {
        Next::Continue => !sigterm(),
        // With a stream, new changes wake the worker at once.
        Next::Idle => session.stream_ready() || wait_latch_or_fd(session.stream_wake_fd(), gucs::poll_interval()),
        Next::Busy => BackgroundWorker::wait_latch(Some(gucs::poll_interval())),
        Next::Stop => false,
    }
}

/// Log a failed step and record it in the catalog; true when it is permanent
/// (the sink is failed and the worker stops).
fn record_failure(sink_id: i64, e: &SinkError) -> bool {
    let permanent = e.kind != ErrorKind::Transient;
    let summary = e.summary();
    let hint = e.hint.clone().unwrap_or_default();
    let name = in_transaction(|| Ok(select_one("SELECT name FROM sink.sinks WHERE id = $1::bigint", &[Some(&sink_id.to_string())]))).ok().flatten();
    let name = name.unwrap_or_else(|| sink_id.to_string());
    // The message only: a target's detail may quote the row it refused (the
    // catalog keeps the whole error for the sink's owner).
    warning!("pg_sink sink \"{name}\": {} {hint}", e.message);
    let _ = in_transaction(|| {
        as_superuser(|| catalog::record_error(sink_id, &summary, e.hint.as_deref(), permanent));
        if permanent {
            crate::pg::events::state_changed(&name, format!("failed: {}", e.message));
        }
        Ok(())
    });
    permanent
}
