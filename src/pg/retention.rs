//! The WAL-retention guard's glue: every few seconds the launcher measures how
//! much WAL each sink's slot holds back, records each sink's limit and policy in
//! `sink.progress` (shown by `sink.status`), and applies the policy to a sink past
//! its limit (the rule is `engine::retention`).

use crate::engine::options::normalize_name;
use crate::engine::retention::{self, Action, Policy, Reading};

use super::catalog::{self, SinkRow};
use super::identity::{interrupt_worker, try_lock_sink};
use super::spi::{select, update};
use super::{delivery, gucs};

thread_local! {
    /// Each running sink's lag at the guard's previous reading (the launcher's
    /// own memory: a sink seen paused or failed, or acted on, starts afresh).
    static PREVIOUS_LAG: std::cell::RefCell<std::collections::HashMap<i64, u64>> = Default::default();
}

/// Check every sink of this database.
pub fn enforce() {
    let rows = select(
        "SELECT s.id::text, pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.restart_lsn)::bigint::text, \
                pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), \
                                           coalesce(p.confirmed_lsn, r.confirmed_flush_lsn, r.restart_lsn))::bigint::text, \
                (p.confirmed_lsn IS NULL)::text \
           FROM sink.sinks s JOIN pg_catalog.pg_replication_slots r ON r.slot_name = s.slot_name \
           LEFT JOIN sink.progress p ON p.sink_id = s.id \
          WHERE r.restart_lsn IS NOT NULL ORDER BY s.id",
        &[],
    );
    let default_limit = gucs::max_retained_wal();
    let mut limits = Vec::new();
    for row in rows {
        let mut cols = row.into_iter().map(|c| c.unwrap_or_default());
        let (Some(id), Some(retained), Some(lag), Some(initializing)) = (cols.next(), cols.next(), cols.next(), cols.next()) else { continue };
        let (Ok(id), Ok(retained), Ok(lag)) = (id.parse::<i64>(), retained.parse::<i64>(), lag.parse::<i64>()) else { continue };
        let Some(sink) = catalog::find_by_id(id) else { continue };
        let (limit, policy) = limit_of(&sink, default_limit);
        limits.push((id, limit, policy));
        let (paused, failed) = (sink.state == "paused", sink.state == "failed");
        let (retained, lag) = (retained.max(0) as u64, lag.max(0) as u64);
        let previous_lag = PREVIOUS_LAG.with(|m| {
            let mut m = m.borrow_mut();
            if paused || failed {
                m.remove(&id)
            } else {
                m.insert(id, lag)
            }
        });
        let reading = Reading { retained, lag, previous_lag, initializing: initializing == "true" };
        let action = retention::decide(reading, limit, policy, paused, failed);
        if let (Some(limit), false) = (limit, action == Action::Keep) {
            PREVIOUS_LAG.with(|m| m.borrow_mut().remove(&id));
            apply(&sink, action, retained, limit);
        }
    }
    // Written only when they change (no WAL from an idle guard).
    for (id, limit, policy) in limits {
        let limit = limit.map(|l| l.to_string());
        // SKIP LOCKED: a row a step or a caller's sync() holds is written next round.
        update(
            "UPDATE sink.progress SET wal_limit_bytes = $2::bigint, wal_retention_policy = $3 \
              WHERE sink_id = (SELECT sink_id FROM sink.progress WHERE sink_id = $1::bigint \
                                  AND (wal_limit_bytes IS DISTINCT FROM $2::bigint OR wal_retention_policy IS DISTINCT FROM $3) \
                                  FOR UPDATE SKIP LOCKED)",
            &[Some(&id.to_string()), limit.as_deref(), Some(policy.as_str())],
        );
    }
}

/// The sink's limit (its option, else the server's setting) and policy. An
/// option that does not parse (it was checked when the sink was made) counts as
/// absent.
fn limit_of(sink: &SinkRow, default_limit: Option<u64>) -> (Option<u64>, Policy) {
    let option = |name: &str| sink.options.iter().find(|(k, _)| normalize_name(k) == name).map(|(_, v)| v.clone());
    let limit = option("max_retained_wal").and_then(|v| retention::parse_limit(&v).ok()).or(default_limit);
    let policy = option("wal_retention_policy").and_then(|v| Policy::parse(&v).ok()).unwrap_or_default();
    (limit, policy)
}

/// Apply `action` to the sink: its worker is stopped and its lock taken first,
/// so no step runs meanwhile.
fn apply(sink: &SinkRow, action: Action, retained: u64, limit: u64) {
    interrupt_worker(sink);
    if !try_lock_sink(sink.id, std::time::Duration::from_secs(2)) {
        // A caller holds the sink (sync() in an open transaction): next round.
        return;
    }
    let message = retention::message(action, retained, limit);
    pgrx::warning!("pg_sink sink \"{}\": {message}", sink.name);
    let id = sink.id.to_string();
    let name = sink.name.replace('\'', "''");
    let hint = match action {
        Action::Pause => format!(
            "Resume it with SELECT sink.resume_sink('{name}') once its target takes changes again, or raise max_retained_wal with sink.alter_sink."
        ),
        Action::DropAndFail => format!("Run SELECT sink.resync('{name}') to deliver the source again from a new snapshot, or drop the sink."),
        Action::DropAndResnapshot | Action::Keep => String::new(),
    };
    if matches!(action, Action::DropAndFail | Action::DropAndResnapshot) {
        delivery::release_slot(&sink.slot_name);
        update(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name)::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()",
            &[Some(&sink.slot_name)],
        );
    }
    let state = match action {
        Action::Pause => "paused",
        Action::DropAndFail => "failed",
        Action::DropAndResnapshot | Action::Keep => "running",
    };
    if action == Action::DropAndResnapshot {
        update("UPDATE sink.progress SET confirmed_lsn = NULL, snapshot_done = false WHERE sink_id = $1::bigint", &[Some(&id)]);
    }
    update("UPDATE sink.sinks SET state = $2 WHERE id = $1::bigint", &[Some(&id), Some(state)]);
    catalog::record_error(sink.id, &message, (!hint.is_empty()).then_some(hint.as_str()), false);
}
