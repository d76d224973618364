//! Who pg_sink's SQL functions and workers run as: the caller, or, for the few
//! writes that need it (catalog rows, publications, slots), the bootstrap
//! superuser, restored afterwards. Also the per-sink lock, the output settings
//! every value is formatted with, and which surface (function or DDL dialect) is
//! creating objects. Imported by the SQL files and the workers, never the reverse.

use pgrx::prelude::*;

use super::spi::{select, select_one};

/// Advisory lock class for "this sink is being processed" ('PS').
pub const LOCK_CLASS: i32 = 0x5053;

/// Run `f` as the bootstrap superuser with `search_path = pg_catalog, pg_temp`;
/// the caller's identity and search_path are restored afterwards (and by
/// transaction abort if `f` raises). Nothing in the caller's search_path (a
/// function or operator shadowing a built-in) can run with the superuser's
/// rights: names of the user's objects are resolved before, as the caller, and
/// passed in schema-qualified.
pub fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level like a function's SET clause; popped below (or by
    // transaction abort).
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    set_for_this_level(c"search_path", c"pg_catalog, pg_temp");
    let r = switch_to_superuser(f);
    // SAFETY: pops the level pushed above, restoring the caller's search_path.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    r
}

/// Run a step of delivery as the bootstrap superuser (it reads the slot and
/// writes the catalog), keeping the session's search_path: the step also runs
/// the sink owner's code (target triggers, PARTITION BY expressions) as that
/// owner, which resolves names as it would anywhere else. The step's own SQL is
/// schema-qualified or on catalog tables.
pub fn deliver_as_superuser<R>(f: impl FnOnce() -> R) -> R {
    switch_to_superuser(f)
}

/// Set a GUC until the current GUC nest level is popped, as a function's SET
/// clause does (`GUC_ACTION_SAVE`). `set_config(.., true)` would not do: a
/// transaction-local value outlives the nest level until the transaction ends.
fn set_for_this_level(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: NUL-terminated strings; an invalid value raises an ordinary ERROR.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

fn switch_to_superuser<R>(f: impl FnOnce() -> R) -> R {
    let mut uid = pg_sys::Oid::INVALID;
    let mut ctx = 0;
    // SAFETY: the same save/switch/restore dance Postgres does for SECURITY DEFINER
    // and maintenance commands; abort restores the saved identity on error.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx);
        pg_sys::SetUserIdAndSecContext(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let r = f();
    // SAFETY: restores the identity saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(uid, ctx) };
    r
}

pub(crate) fn current_user() -> String {
    select_one("SELECT current_user::text", &[]).unwrap_or_default()
}

pub(crate) fn is_superuser() -> bool {
    // SAFETY: reads the current user id.
    unsafe { pg_sys::superuser() }
}

thread_local! {
    static CREATED_BY: std::cell::Cell<&'static str> = const { std::cell::Cell::new("function") };
}

/// Which surface is creating objects: "function", or the dialect `sink.execute` runs.
pub(crate) fn created_by() -> &'static str {
    CREATED_BY.with(|c| c.get())
}

/// Run `f` with objects it creates marked as made by `dialect`.
pub(crate) fn with_created_by<R>(dialect: &'static str, f: impl FnOnce() -> R) -> R {
    let before = CREATED_BY.with(|c| c.replace(dialect));
    let r = f();
    CREATED_BY.with(|c| c.set(before));
    r
}

/// Take the sink's processing lock if it comes free within `wait` (for the
/// launcher, which must not stall behind a caller's open transaction).
pub(crate) fn try_lock_sink(id: i64, wait: std::time::Duration) -> bool {
    let (class, id) = (LOCK_CLASS.to_string(), id.to_string());
    let deadline = std::time::Instant::now() + wait;
    loop {
        let got = select_one("SELECT pg_catalog.pg_try_advisory_xact_lock($1::int, $2::int)::text", &[Some(&class), Some(&id)]);
        if got.as_deref() == Some("true") {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        pgrx::check_for_interrupts!();
    }
}

/// Take the sink's processing lock for the rest of the transaction (waits for the
/// worker to finish its current batch).
///
/// A worker that creates its slot waits, holding this lock, for every transaction
/// that has written something. When the caller's transaction has (two sinks
/// dropped in one statement, a DDL call after a write), waiting for the lock would
/// deadlock: the worker's slot creation (its own, or its snapshot walsender's) is
/// cancelled instead (its step fails as transient and runs again after this
/// transaction).
pub(crate) fn lock_sink(id: i64) {
    let id = id.to_string();
    let class = LOCK_CLASS.to_string();
    let params = [Some(class.as_str()), Some(id.as_str())];
    if select_one("SELECT pg_catalog.pg_try_advisory_xact_lock($1::int, $2::int)::text", &params).as_deref() == Some("true") {
        return;
    }
    if select_one("SELECT pg_catalog.pg_current_xact_id_if_assigned()::text", &[]).is_none() {
        select("SELECT pg_catalog.pg_advisory_xact_lock($1::int, $2::int)::text", &params);
        return;
    }
    loop {
        // Whoever waits for this transaction on the lock holder's behalf: the
        // holder itself (a slot created through SQL) or the walsender creating the
        // sink's slot with its snapshot.
        fresh_activity();
        as_superuser(|| {
            select(
                "SELECT pg_catalog.pg_cancel_backend(w.pid)::text \
                   FROM pg_catalog.pg_locks w \
                  WHERE w.locktype = 'transactionid' AND NOT w.granted \
                    AND w.transactionid::text = (pg_catalog.pg_current_xact_id_if_assigned()::text::bigint % 4294967296)::text \
                    AND (w.pid IN (SELECT h.pid FROM pg_catalog.pg_locks h \
                                    WHERE h.locktype = 'advisory' AND h.granted AND h.classid = $1::int::oid AND h.objid = $2::int::oid AND h.objsubid = 2 \
                                      AND h.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())) \
                      OR w.pid IN (SELECT a.pid FROM pg_catalog.pg_stat_activity a JOIN sink.sinks s ON a.application_name = 'pg_sink snapshot ' || s.slot_name \
                                    WHERE s.id = $2::bigint))",
                &params,
            )
        });
        if select_one("SELECT pg_catalog.pg_try_advisory_xact_lock($1::int, $2::int)::text", &params).as_deref() == Some("true") {
            return;
        }
        // SAFETY: a plain sleep that also serves interrupts (statement timeout, cancel).
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                20,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

/// Text output settings the encoders expect (same as the worker's session).
pub const OUTPUT_SETTINGS: &[(&str, &str)] =
    &[("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3"), ("bytea_output", "hex")];

/// Run `f` with [`OUTPUT_SETTINGS`], restoring the caller's settings afterwards.
pub(crate) fn with_output_settings<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level like a function's SET clause; popped below.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    for (k, v) in OUTPUT_SETTINGS {
        let (Ok(k), Ok(v)) = (std::ffi::CString::new(*k), std::ffi::CString::new(*v)) else { continue };
        set_for_this_level(&k, &v);
    }
    let r = f();
    // SAFETY: pops the level pushed above, restoring the previous values.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    r
}

/// Make the next read of `pg_stat_activity` see the backends as they are now.
/// Postgres keeps the first read's list for the rest of the transaction, so a
/// walsender or worker started after it (while a drop waits, or after an earlier
/// drop in the same statement) would stay invisible, and never be ended.
pub(crate) fn fresh_activity() {
    // SAFETY: drops this backend's cached statistics snapshot; nothing holds it.
    unsafe { pg_sys::pgstat_clear_snapshot() };
}

/// End the sink's worker now (pause, drop, the WAL guard): its step is rolled
/// back and the launcher starts a new worker if the sink still runs.
pub(crate) fn interrupt_worker(sink: &super::catalog::SinkRow) {
    fresh_activity();
    as_superuser(|| {
        select(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
              WHERE application_name = $1 AND backend_type = 'pg_sink worker' AND datname = current_database()",
            &[Some(&format!("pg_sink sink {}", sink.name))],
        )
    });
}
