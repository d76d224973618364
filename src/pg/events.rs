//! A sink's state changes in the server log: one line each (created, started,
//! snapshot done, paused, resumed, failed with its reason, resynced, altered,
//! dropped), naming the sink, written only when the transaction that made the
//! change commits, so a rolled-back `pause_sink()` logs nothing. Lines never carry
//! row values or option values; a failure's line carries the error's message,
//! not its detail (where a target may quote the row it refused).

use pgrx::{register_xact_callback, PgXactCallbackEvent};

/// Log `change` of sink `sink` once the current transaction commits.
pub fn state_changed(sink: &str, change: impl Into<String>) {
    let line = format!("pg_sink sink \"{}\": {}", sink, change.into());
    register_xact_callback(PgXactCallbackEvent::Commit, move || pgrx::log!("{line}"));
}

/// Log `change` of sink `sink` now (outside a transaction's outcome, such as a
/// worker starting).
pub fn logged(sink: &str, change: impl std::fmt::Display) {
    pgrx::log!("pg_sink sink \"{sink}\": {change}");
}
