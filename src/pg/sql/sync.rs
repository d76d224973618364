//! Running a sink's steps in the caller's session: `sync` (deliver now, in the
//! caller's transaction) and `preview` (what the next step would deliver, without
//! delivering it).

use pgrx::prelude::*;
use pgrx::JsonB;

use super::check_owner;
use crate::engine::error::SinkError;
use crate::pg::catalog::{self};
use crate::pg::delivery::{self, Mode};
use crate::pg::errors::{fail, Code, OrRaise};
use crate::pg::identity::{as_superuser, deliver_as_superuser, lock_sink, with_output_settings};

/// Deliver everything up to the current WAL position, then return a summary.
/// Lets pg_cron drive a sink: `SELECT sink.sync('orders')`.
#[pg_extern(volatile)]
fn sync(name: &str) -> JsonB {
    let sink = catalog::require(name);
    check_owner(&sink);
    if sink.state == "paused" {
        fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("sink \"{name}\" is paused"),
            None,
            Some("Resume it with sink.resume_sink() first.".into()),
        );
    }
    lock_sink(sink.id);
    // The worker's walsender may hold the slot; while we hold the lock it cannot
    // take it back.
    as_superuser(|| delivery::release_slot(&sink.slot_name));
    let (mut batches, mut txns, mut changes, mut records, mut bytes) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut confirmed = None;
    let mut initialized = false;
    let started = std::time::Instant::now();
    let mut session = delivery::Session::default();
    with_output_settings(|| {
        deliver_as_superuser(|| loop {
            let current = catalog::find_by_id(sink.id).unwrap_or_else(|| sink.clone());
            let out = match delivery::step(&current, Mode::Deliver { write_idle_progress: true, whole_backlog: true }, &mut session) {
                Ok(o) => o,
                Err(e) => {
                    let e: SinkError = e;
                    crate::pg::errors::raise(e)
                }
            };
            initialized |= out.initialized;
            if out.records > 0 || out.transactions > 0 {
                batches += 1;
            }
            txns += out.transactions;
            changes += out.changes;
            records += out.records;
            bytes += out.bytes;
            confirmed = out.confirmed.or(confirmed);
            if out.caught_up {
                break;
            }
        })
    });
    JsonB(serde_json::json!({
        "sink": name,
        "initialized": initialized,
        "batches": batches,
        "transactions": txns,
        "changes": changes,
        "records": records,
        "bytes": bytes,
        "confirmed_lsn": confirmed.map(|l| l.to_string()),
        "elapsed_ms": started.elapsed().as_millis() as u64,
    }))
}

/// The next `n` records the sink would deliver (key, value, headers), without
/// delivering anything or moving its position.
#[pg_extern(volatile)]
fn preview(
    name: &str,
    n: default!(i32, 10),
) -> TableIterator<'static, (name!(lsn, String), name!(op, String), name!(key, Option<String>), name!(value, Option<String>), name!(headers, JsonB))>
{
    let sink = catalog::require(name);
    check_owner(&sink);
    if n < 1 {
        fail(Code::ERRCODE_INVALID_PARAMETER_VALUE, "n must be at least 1", Some(format!("Got {n}.")), None);
    }
    lock_sink(sink.id);
    as_superuser(|| delivery::release_slot(&sink.slot_name));
    let out = with_output_settings(|| deliver_as_superuser(|| delivery::step(&sink, Mode::Preview(n as usize), &mut delivery::Session::default())))
        .or_raise();
    let rows: Vec<_> = out
        .preview
        .into_iter()
        .map(|r| {
            let headers =
                serde_json::Value::Object(r.headers().iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect());
            (
                r.commit_lsn.to_string(),
                r.draft.op.as_str().to_string(),
                r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                r.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                JsonB(headers),
            )
        })
        .collect();
    TableIterator::new(rows)
}
