//! Running a sink's steps in the caller's session: `sync` (deliver now, in the
//! caller's transaction) and `preview` (what the next step would deliver, without
//! delivering it); and `await_delivered`, which waits for the worker's durable
//! progress to pass a position (read-your-writes for the target's readers).

use pgrx::prelude::*;
use pgrx::JsonB;

use super::check_owner;
use crate::engine::error::SinkError;
use crate::engine::lsn::Lsn;
use crate::pg::catalog::{self};
use crate::pg::delivery::{self, Mode};
use crate::pg::errors::{fail, Code, OrRaise};
use crate::pg::identity::{as_superuser, deliver_as_superuser, lock_sink, with_output_settings};
use crate::pg::spi::select_latest;

/// Deliver everything up to the current WAL position, then return a summary.
/// Lets pg_cron drive a sink: `SELECT sink.sync('orders')`.
#[pg_extern(volatile)]
fn sync(name: &str) -> JsonB {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    refuse_moved(&sink);
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
    let mut set_aside = 0usize;
    let started = std::time::Instant::now();
    let mut session = delivery::Session::default();
    // SAFETY: a plain read of backend-local transaction state.
    session.caller_wrote = unsafe { pgrx::pg_sys::GetTopTransactionIdIfAny() != pgrx::pg_sys::InvalidTransactionId };
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
            set_aside += out.dead_letters.len();
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
        "set_aside": set_aside,
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
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    refuse_moved(&sink);
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

/// A sink copied by a restore or clone runs only once its owner resumes it.
fn refuse_moved(sink: &catalog::SinkRow) {
    if crate::pg::home::moved(sink, &crate::pg::home::current()) {
        let e = crate::pg::home::moved_error(sink);
        fail(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("sink \"{}\" is paused: {}", sink.name, e.message), None, e.hint);
    }
}

/// The body of `sink.await_delivered(name, lsn pg_lsn, timeout interval)`, which
/// the SQL below declares with Postgres' own types and defaults. Returns the
/// sink's confirmed LSN once it is at or past `lsn`: everything that committed
/// at or before `lsn` is then durable at the target. Fails at once when waiting
/// cannot end (the sink is paused or failed, or only `sync()` delivers it), and
/// with SQLSTATE 57014 when `timeout_ms` passes first.
#[pg_extern(volatile)]
fn await_delivered_at(name: &str, lsn: &str, timeout_ms: f64) -> String {
    crate::pg::version::check();
    let sink = catalog::require(name);
    check_owner(&sink);
    let Ok(target) = lsn.parse::<Lsn>() else {
        fail(
            Code::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!("invalid LSN \"{lsn}\""),
            None,
            Some("An LSN looks like 0/16B3748 (pg_current_wal_lsn()).".into()),
        );
    };
    if timeout_ms.is_nan() || timeout_ms < 0.0 {
        fail(Code::ERRCODE_INVALID_PARAMETER_VALUE, "timeout must not be negative", Some(format!("Got {timeout_ms} ms.")), None);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(timeout_ms.min(1e12) / 1000.0);
    let id = sink.id.to_string();
    loop {
        // The catalog as committed now, not as this statement's snapshot saw it.
        let row = select_latest(
            "SELECT s.state, s.schedule, p.confirmed_lsn::text, p.last_error, p.last_error_hint \
               FROM sink.sinks s LEFT JOIN sink.progress p ON p.sink_id = s.id WHERE s.id = $1::bigint",
            &[Some(&id)],
        );
        let Some(r) = row.into_iter().next() else {
            fail(Code::ERRCODE_UNDEFINED_OBJECT, format!("sink \"{name}\" was dropped while waiting for its delivery"), None, None);
        };
        let col = |i: usize| r.get(i).cloned().flatten();
        let confirmed = col(2).and_then(|l| l.parse::<Lsn>().ok());
        if let Some(c) = confirmed.filter(|c| *c >= target) {
            return c.to_string();
        }
        let delivered = confirmed.map_or_else(|| "nothing yet".to_string(), |c| format!("up to {c}"));
        match (col(0).as_deref(), col(1).as_deref()) {
            (Some("failed"), _) => fail(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("sink \"{name}\" failed before delivering up to {target}"),
                Some(format!("It delivered {delivered}. Its error: {}", col(3).unwrap_or_default())),
                Some(col(4).unwrap_or_else(|| "Fix the cause, then call sink.resume_sink() or sink.resync().".into())),
            ),
            (Some("paused"), _) => fail(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("sink \"{name}\" is paused"),
                Some(format!("It delivered {delivered}; waiting for {target} would not end.")),
                Some("Resume it with sink.resume_sink() first.".into()),
            ),
            (_, Some("manual")) => fail(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("sink \"{name}\" is delivered only by sink.sync()"),
                Some(format!("Its schedule is manual; it delivered {delivered}.")),
                Some(format!("Call sink.sync('{}') instead of waiting.", name.replace('\'', "''"))),
            ),
            _ => {}
        }
        if std::time::Instant::now() >= deadline {
            fail(
                Code::ERRCODE_QUERY_CANCELED,
                format!("timed out waiting for sink \"{name}\" to deliver up to {target}"),
                Some(format!("It delivered {delivered}.")),
                Some("Look at sink.status for its lag and last error, or wait longer (timeout => ...).".into()),
            );
        }
        // SAFETY: the backend's own latch; interrupts (cancel, terminate) are served.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                20,
                pg_sys::WaitEventTimeout::WAIT_EVENT_PG_SLEEP,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

pgrx::extension_sql!(
    r#"
CREATE FUNCTION sink.await_delivered(name text, lsn pg_lsn DEFAULT NULL, timeout interval DEFAULT '1 minute')
RETURNS pg_lsn LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT sink.await_delivered_at(name, coalesce(lsn, pg_catalog.pg_current_wal_lsn())::text,
                                   pg_catalog.date_part('epoch', timeout) * 1000)::pg_lsn;
END;
COMMENT ON FUNCTION sink.await_delivered(text, pg_lsn, interval) IS
    'Wait until the sink has durably delivered everything committed at or before lsn (default: now); returns its confirmed LSN.';
"#,
    name = "await_delivered",
    requires = [await_delivered_at],
);
