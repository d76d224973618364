//! Who pg_sink's SQL functions and workers run as: the caller, or, for the few
//! writes that need it (catalog rows, publications, slots), the bootstrap
//! superuser, restored afterwards. Also the per-sink lock, the output settings
//! every value is formatted with, and which surface (function or DDL dialect) is
//! creating objects. Imported by the SQL files and the workers, never the reverse.

use pgrx::prelude::*;

use super::spi::{select, select_one};

/// Advisory lock class for "this sink is being processed" ('PS').
pub const LOCK_CLASS: i32 = 0x5053;

/// Run `f` as the bootstrap superuser; the caller's identity is restored afterwards
/// (and by transaction abort if `f` raises).
pub fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
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

/// Take the sink's processing lock for the rest of the transaction (waits for the
/// worker to finish its current batch).
pub(crate) fn lock_sink(id: i64) {
    let id = id.to_string();
    let class = LOCK_CLASS.to_string();
    select("SELECT pg_advisory_xact_lock($1::int, $2::int)::text", &[Some(&class), Some(&id)]);
}

/// Text output settings the encoders expect (same as the worker's session).
pub const OUTPUT_SETTINGS: &[(&str, &str)] =
    &[("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3"), ("bytea_output", "hex")];

/// Run `f` with [`OUTPUT_SETTINGS`], restoring the caller's settings afterwards.
pub(crate) fn with_output_settings<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level like a function's SET clause; popped below.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    for (k, v) in OUTPUT_SETTINGS {
        select("SELECT set_config($1, $2, true)", &[Some(k), Some(v)]);
    }
    let r = f();
    // SAFETY: pops the level pushed above, restoring the previous values.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    r
}
