//! Dead letters (`errors.policy = 'dead_letter'`): `retry_dead_letters` delivers
//! a sink's kept records again, `discard_dead_letters` forgets them. The rows
//! themselves are read in `sink.dead_letters` (each owner sees their sinks').

use pgrx::prelude::*;

use super::{check_owner, require_started};
use crate::engine::dead_letter;
use crate::pg::catalog;
use crate::pg::errors::{fail, Code};
use crate::pg::identity::{as_superuser, lock_sink};
use crate::pg::spi::{select, update};

/// Deliver the sink's dead letters again (all, or those with `id` in `ids`): each
/// kept change is written to the WAL as a logical message that the sink's own
/// stream brings back, in this transaction, and its row is deleted with it.
/// Returns how many. A record the target refuses again becomes a new dead letter
/// (or stops the sink, under `errors.policy = 'fail'`).
#[pg_extern(volatile)]
fn retry_dead_letters(name: &str, ids: default!(Option<Vec<i64>>, "NULL")) -> i64 {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    require_started(
        &sink,
        "Its replication slot does not exist yet, so nothing written now would reach it.",
        "Retry once the sink has started (sink.status shows a confirmed_lsn).",
    );
    lock_sink(sink.id);
    let id = sink.id.to_string();
    let wanted = ids.map(|v| format!("{{{}}}", v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")));
    as_superuser(|| {
        let rows = update(
            "SELECT id::text, change::text FROM sink.dead_letters \
              WHERE sink_id = $1::bigint AND change IS NOT NULL AND ($2::bigint[] IS NULL OR id = ANY ($2::bigint[])) \
              ORDER BY lsn, chunk, ordinal FOR UPDATE",
            &[Some(&id), wanted.as_deref()],
        );
        let key = catalog::message_key();
        for row in &rows {
            let (Some(letter), Some(change)) = (row.first().cloned().flatten(), row.get(1).cloned().flatten()) else { continue };
            let value: serde_json::Value = serde_json::from_str(&change).unwrap_or(serde_json::Value::Null);
            if let Err(e) = dead_letter::change_from_json(&value, &mut |_| None) {
                fail(
                    Code::ERRCODE_DATA_CORRUPTED,
                    format!("dead letter {letter} of sink \"{name}\" cannot be delivered again"),
                    Some(e.message),
                    Some("Delete it with sink.discard_dead_letters(); nothing was retried.".into()),
                );
            }
            let message = crate::engine::seal::seal(&key, dead_letter::RETRY_PREFIX, &dead_letter::retry_message(sink.id, &value));
            select("SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text", &[Some(dead_letter::RETRY_PREFIX), Some(&message)]);
            update("DELETE FROM sink.dead_letters WHERE id = $1::bigint", &[Some(&letter)]);
        }
        rows.len() as i64
    })
}

/// Delete the sink's dead letters (all, or those with `id` in `ids`), kept or
/// skipped, without delivering them. Returns how many.
#[pg_extern(volatile)]
fn discard_dead_letters(name: &str, ids: default!(Option<Vec<i64>>, "NULL")) -> i64 {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    let id = sink.id.to_string();
    let wanted = ids.map(|v| format!("{{{}}}", v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")));
    as_superuser(|| {
        update(
            "DELETE FROM sink.dead_letters WHERE sink_id = $1::bigint AND ($2::bigint[] IS NULL OR id = ANY ($2::bigint[])) RETURNING id::text",
            &[Some(&id), wanted.as_deref()],
        )
        .len() as i64
    })
}
