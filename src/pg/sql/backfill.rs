//! Backfills: `backfill` reads a started sink's source again (all of it, or the
//! rows a filter picks), by key, in chunks, while its changes stream on: no lock,
//! no long transaction; `cancel_backfill` stops one. `sink.status` shows where it
//! stands (`backfill`, `backfill_rows`, `backfill_percent`,
//! `backfill_eta_seconds`); the rules are in `crate::engine::backfill`.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::{check_owner, check_sql, one_expression, one_statement, require_started};
use crate::engine::connector::SqlSession;
use crate::pg::catalog;
use crate::pg::errors::{fail, Code};
use crate::pg::identity::{as_superuser, lock_sink};
use crate::pg::spi::{select_one, update, SpiSession};

/// Start a backfill of sink `name`: its source's rows (those `filter`, a
/// condition on the source's columns, picks) are delivered again as reads
/// (Debezium `op: "r"`; upserts for upsert targets), in key order, in chunks
/// that interleave with the stream so that each key ends as the source has it.
#[pg_extern(volatile)]
fn backfill(name: &str, filter: default!(Option<&str>, "NULL")) -> JsonB {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    require_started(
        &sink,
        "A backfill reads the source while the sink's stream runs; its slot does not exist yet.",
        "Backfill once the sink has started (sink.status shows a confirmed_lsn).",
    );
    let Some(key) = crate::pg::backfill::key_columns(sink.source_oid) else {
        fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the source of sink \"{name}\", {}, has no primary key", sink.source_name),
            Some("A backfill reads the source in key order, chunk after chunk.".into()),
            Some("Add a primary key, or a unique index on NOT NULL columns made the table's REPLICA IDENTITY USING INDEX.".into()),
        )
    };
    if let Some(cols) = &sink.columns {
        if let Some(missing) = key.iter().find(|k| !cols.contains(k)) {
            fail(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("sink \"{name}\" does not deliver the key column \"{missing}\" of its source"),
                Some(format!("Its column list is {}; the source's key is {}.", cols.join(", "), key.join(", "))),
                Some("Backfill a sink whose columns include the source's key.".into()),
            );
        }
    }
    let source = select_one(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
        &[Some(&sink.source_oid.to_string())],
    )
    .unwrap_or_else(|| sink.source_name.clone());
    if let Some(f) = filter {
        one_expression(f);
        let probe = format!("SELECT 1 FROM {source} WHERE ({f}) LIMIT 0");
        // As the caller (who owns the sink, or is a superuser) ...
        check_sql(&probe, format!("The filter {f} does not work on {source}."), "The filter is a condition on the source's columns, as in a WHERE clause.");
        // ... and as the sink's owner, whom the worker reads the chunks as.
        let as_owner = SpiSession::for_owner(&sink.owner).and_then(|mut s| s.query(one_statement(&probe), &[]));
        if let Err(e) = as_owner {
            fail(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("the filter does not work for the owner of sink \"{name}\", {}", sink.owner),
                Some(e.message),
                Some("The worker reads the chunks as the sink's owner: use what that role may use.".into()),
            );
        }
    }
    lock_sink(sink.id);
    let id = sink.id.to_string();
    let running = select_one("SELECT id::text FROM sink.backfills WHERE sink_id = $1::bigint AND finished_at IS NULL", &[Some(&id)]);
    if running.is_some() {
        fail(
            Code::ERRCODE_OBJECT_IN_USE,
            format!("sink \"{name}\" is backfilling already"),
            Some("A sink runs one backfill at a time.".into()),
            Some("Wait for it to finish (sink.status.backfill = 'done'), or stop it with sink.cancel_backfill().".into()),
        );
    }
    let caller = select_one("SELECT current_user::text", &[]).unwrap_or_default();
    let (backfill, estimate) = as_superuser(|| crate::pg::backfill::begin(&sink, &key, filter, &caller));
    JsonB(serde_json::json!({
        "sink": name,
        "backfill": backfill,
        "key": key,
        "filter": filter,
        "rows_estimate": estimate,
    }))
}

/// Stop sink `name`'s running backfill: what was delivered stays delivered; no
/// further chunk is read. Returns whether one was running.
#[pg_extern(volatile)]
fn cancel_backfill(name: &str) -> bool {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    lock_sink(sink.id);
    as_superuser(|| {
        !update(
            "UPDATE sink.backfills SET finished_at = now(), cancelled = true WHERE sink_id = $1::bigint AND finished_at IS NULL RETURNING id::text",
            &[Some(&sink.id.to_string())],
        )
        .is_empty()
    })
}
