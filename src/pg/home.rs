//! Where a sink runs: the cluster (system identifier), timeline and database it
//! was made in or last adopted by. A database restored from a dump, or a clone
//! (point-in-time recovery, a copied data directory, a promoted standby), is
//! another home: there its sinks stay paused instead of writing into the targets
//! of the sinks they were copied from, until their owner resumes (or resyncs)
//! them, which adopts them: a slot of their own, and delivery again from a new
//! snapshot (the copied progress belongs to the original's slot).

use crate::engine::error::SinkError;

use super::catalog::{self, SinkRow};
use super::events;
use super::spi::{select, select_one, update};

const MOVED: &str = "this database was restored or cloned from another (its cluster, timeline or database changed): the sink is paused so that it does not write into the original's targets";

fn hint(name: &str) -> String {
    format!(
        "Check (or alter) its targets, then SELECT sink.resume_sink('{}') to deliver the source again from a new snapshot, or drop the sink.",
        name.replace('\'', "''")
    )
}

/// This database's home: `<system identifier>.<timeline>.<database oid>`.
pub fn current() -> String {
    let db = select_one("SELECT oid::text FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()", &[]).unwrap_or_default();
    format!("{}.{db}", catalog::cluster_identity())
}

/// Whether `sink` was made in (or adopted by) another home.
pub fn moved(sink: &SinkRow, here: &str) -> bool {
    sink.home.as_deref() != Some(here)
}

/// The error a step of a moved sink ends with (it delivers nothing).
pub fn moved_error(sink: &SinkRow) -> SinkError {
    SinkError::permanent(MOVED).hint(hint(&sink.name))
}

/// The launcher's round: pause the running sinks of another home, say why in
/// their status and the log. Also repairs what a restore from `pg_dump` leaves
/// (the progress rows are not dumped; the id sequence may lag the restored ids).
pub fn pause_moved() {
    let here = current();
    let stale = select_one("SELECT count(*)::text FROM sink.sinks WHERE home IS DISTINCT FROM $1", &[Some(&here)]);
    if stale.as_deref() == Some("0") {
        return;
    }
    update("INSERT INTO sink.progress (sink_id) SELECT id FROM sink.sinks ON CONFLICT (sink_id) DO NOTHING", &[]);
    update(
        "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('sink.sinks', 'id'), s.m)::text \
           FROM (SELECT max(id) AS m FROM sink.sinks) s WHERE s.m IS NOT NULL",
        &[],
    );
    let rows = select(
        "SELECT s.id::text, s.name FROM sink.sinks s JOIN sink.progress p ON p.sink_id = s.id \
          WHERE s.home IS DISTINCT FROM $1 AND (s.state <> 'paused' OR p.last_error IS DISTINCT FROM $2) ORDER BY s.id",
        &[Some(&here), Some(MOVED)],
    );
    for r in rows {
        let (Some(id), Some(name)) = (r.first().cloned().flatten(), r.get(1).cloned().flatten()) else { continue };
        update("UPDATE sink.sinks SET state = 'paused' WHERE id = $1::bigint", &[Some(&id)]);
        update(
            "UPDATE sink.progress SET last_error = $2, last_error_hint = $3, last_error_at = now() WHERE sink_id = $1::bigint",
            &[Some(&id), Some(MOVED), Some(&hint(&name))],
        );
        events::state_changed(&name, "paused: this database was restored or cloned from another");
    }
}

/// Adopt `sink` into this home if it comes from another: a slot name of its own
/// (the copied one may belong to the original, in this very cluster), the copied
/// slot dropped when it is this database's, progress started over. Returns the
/// sink as it is now.
pub fn adopt(sink: SinkRow) -> SinkRow {
    let here = current();
    if !moved(&sink, &here) {
        return sink;
    }
    let id = sink.id.to_string();
    update(
        "SELECT pg_catalog.pg_drop_replication_slot(slot_name)::text FROM pg_catalog.pg_replication_slots \
          WHERE slot_name = $1 AND database = pg_catalog.current_database() AND NOT active",
        &[Some(&sink.slot_name)],
    );
    let db = here.rsplit('.').next().unwrap_or_default().to_string();
    let slot = format!("pg_sink_{}_{db}", sink.id);
    update("UPDATE sink.sinks SET home = $2, slot_name = $3 WHERE id = $1::bigint", &[Some(&id), Some(&here), Some(&slot)]);
    update("INSERT INTO sink.progress (sink_id) VALUES ($1::bigint) ON CONFLICT (sink_id) DO NOTHING", &[Some(&id)]);
    update(
        "UPDATE sink.progress SET confirmed_lsn = NULL, snapshot_done = false, last_error = NULL, last_error_hint = NULL WHERE sink_id = $1::bigint",
        &[Some(&id)],
    );
    events::state_changed(
        &sink.name,
        format!("adopted by this database (restored or cloned): new slot {slot}, delivering again from a new snapshot"),
    );
    catalog::find_by_id(sink.id).unwrap_or(sink)
}
