//! A backfill's part of a sink's step (the rules are in
//! [`crate::engine::backfill`]): read the next chunk of the source by key, with
//! the snapshot it was read under, write the chunk's sealed watermark, and, once
//! the step delivered the chunk, record where the backfill stands.

use std::sync::Arc;

use pgrx::prelude::*;

use crate::engine::backfill::{Advance, Chunk, ChunkId, Key, Snapshot, WATERMARK_PREFIX};
use crate::engine::change::{Cell, Relation};
use crate::engine::connector::table::quote_ident;
use crate::engine::connector::SqlSession;
use crate::engine::error::SinkError;
use crate::engine::pipeline::Pipeline;

use super::catalog::{self, SinkRow};
use super::spi::{select, select_one, update, SpiSession};

/// A sink's unfinished backfill, as the catalog keeps it.
#[derive(Debug, Clone)]
pub struct Running {
    pub id: i64,
    pub filter: Option<String>,
    pub key_columns: Vec<String>,
    pub last_key: Option<Key>,
    pub chunks: i64,
}

/// The sink's unfinished backfill, if any.
pub fn running(sink_id: i64) -> Option<Running> {
    let row = select(
        "SELECT id::text, filter, pg_catalog.array_to_json(key_columns)::text, pg_catalog.array_to_json(last_key)::text, chunks::text \
           FROM sink.backfills WHERE sink_id = $1::bigint AND finished_at IS NULL",
        &[Some(&sink_id.to_string())],
    )
    .into_iter()
    .next()?;
    let g = |i: usize| row.get(i).cloned().flatten();
    Some(Running {
        id: g(0)?.parse().ok()?,
        filter: g(1),
        key_columns: serde_json::from_str(&g(2)?).ok()?,
        last_key: g(3).and_then(|j| serde_json::from_str(&j).ok()),
        chunks: g(4)?.parse().ok()?,
    })
}

/// The columns of the key a backfill reads the source in order of: its primary
/// key, or else its replica identity index. `None` when it has neither.
pub fn key_columns(source_oid: u32) -> Option<Vec<String>> {
    let json = select_one(
        "SELECT pg_catalog.array_to_json(array_agg(a.attname::text ORDER BY k.ord))::text \
           FROM (SELECT i.indrelid, i.indkey FROM pg_catalog.pg_index i \
                  WHERE i.indrelid = $1::oid AND (i.indisprimary OR i.indisreplident) \
                  ORDER BY i.indisprimary DESC LIMIT 1) i \
           CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum",
        &[Some(&source_oid.to_string())],
    )?;
    serde_json::from_str::<Vec<String>>(&json).ok().filter(|k| !k.is_empty())
}

/// Start a backfill of the sink's source in `key` order (the rows `filter`
/// picks), replacing a finished one: its id and the planner's estimate of the
/// source's rows.
pub fn begin(sink: &SinkRow, key: &[String], filter: Option<&str>, requested_by: &str) -> (Option<i64>, Option<i64>) {
    let key_json = serde_json::to_string(key).unwrap_or_default();
    let row = update(
        "INSERT INTO sink.backfills AS b (sink_id, id, filter, key_columns, rows_estimate, requested_by) \
         SELECT $1::bigint, 1, $2, ARRAY(SELECT pg_catalog.jsonb_array_elements_text($3::jsonb)), \
                (SELECT CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END FROM pg_catalog.pg_class c WHERE c.oid = $4::oid), \
                $5::regrole \
         ON CONFLICT (sink_id) DO UPDATE SET id = b.id + 1, filter = EXCLUDED.filter, key_columns = EXCLUDED.key_columns, \
                last_key = NULL, chunks = 0, rows_read = 0, rows_delivered = 0, rows_estimate = EXCLUDED.rows_estimate, \
                requested_by = EXCLUDED.requested_by, started_at = now(), finished_at = NULL, cancelled = false \
         RETURNING id::text, rows_estimate::text",
        &[Some(&sink.id.to_string()), filter, Some(&key_json), Some(&sink.source_oid.to_string()), Some(requested_by)],
    );
    let first = row.into_iter().next().unwrap_or_default();
    let g = |i: usize| first.get(i).cloned().flatten().and_then(|v| v.parse::<i64>().ok());
    (g(0), g(1))
}

/// Read the backfill's next chunk and write its watermark, or, when nothing is
/// left to read, mark the backfill finished.
pub fn next_chunk(sink: &SinkRow, b: &Running, pipeline: &mut Pipeline, relation: Arc<Relation>) -> Result<(), SinkError> {
    let limit = super::gucs::backfill_chunk_rows();
    let (query, params) = chunk_query(sink, b, &relation, limit);
    let params: Vec<Option<&str>> = params.iter().map(|p| p.as_deref()).collect();
    // A snapshot taken now (the step's may be older than what it fed already),
    // as the sink's owner.
    let rows = SpiSession::for_owner(&sink.owner)?.query_latest(&query, &params, 0)?;
    let Some(first) = rows.first() else {
        return Err(SinkError::transient("the backfill's chunk query returned nothing"));
    };
    let snapshot = Snapshot::parse(first.first().cloned().flatten().as_deref().unwrap_or_default())?;
    let width = relation.columns.len();
    let cells: Vec<Vec<Cell>> = rows
        .into_iter()
        .filter(|r| r.get(1).cloned().flatten().is_some())
        .map(|r| r.into_iter().skip(2).take(width).map(|v| v.map_or(Cell::Null, Cell::Text)).collect())
        .collect();
    if cells.is_empty() {
        finish(sink.id, b.id);
        return Ok(());
    }
    let id = ChunkId { sink: sink.id, backfill: b.id, number: b.chunks };
    let chunk = Chunk::new(id, relation, &b.key_columns, snapshot, cells, limit)?;
    super::delivery::report_activity(&format!("backfill: chunk {} ({} rows) read", b.chunks, chunk.len()));
    if !pipeline.await_chunk(chunk) {
        // Read under a snapshot older than what the stream already delivered:
        // the next step reads it again.
        return Ok(());
    }
    let sealed = crate::engine::seal::seal(&catalog::message_key(), WATERMARK_PREFIX, &id.payload());
    let lsn = select_one("SELECT pg_catalog.pg_logical_emit_message(false, $1, $2)::text", &[Some(WATERMARK_PREFIX), Some(&sealed)])
        .and_then(|l| l.parse::<crate::engine::lsn::Lsn>().ok())
        .ok_or_else(|| SinkError::transient("could not write the backfill's watermark"))?;
    // The walsender sends only flushed WAL: the watermark must not wait for the
    // WAL writer.
    // SAFETY: flushes WAL up to a position that was just inserted.
    unsafe { pg_sys::XLogFlush(pg_sys::XLogRecPtr::from(lsn.0)) };
    Ok(())
}

/// `SELECT snapshot, present, columns..`: one row per source row of the chunk
/// (or one with `present` NULL when none is left), all read under the snapshot
/// the first column names.
fn chunk_query(sink: &SinkRow, b: &Running, rel: &Relation, limit: usize) -> (String, Vec<Option<String>>) {
    let source = select_one(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
        &[Some(&sink.source_oid.to_string())],
    )
    .unwrap_or_else(|| sink.source_name.clone());
    let cols: Vec<String> = rel.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let keys: Vec<String> = b.key_columns.iter().map(|k| quote_ident(k)).collect();
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let Some(last) = &b.last_key {
        let types = key_types(sink.source_oid, &b.key_columns);
        let placeholders: Vec<String> = types.iter().enumerate().map(|(i, t)| format!("${}::{t}", i + 1)).collect();
        conditions.push(format!("({}) > ({})", keys.join(", "), placeholders.join(", ")));
        params.extend(last.iter().cloned());
    }
    // Both were checked as one expression on the source when they were given
    // (`(f)` parses as one): wrapped once more, each is one term of the AND.
    if let Some(f) = &sink.row_filter {
        conditions.push(format!("(({f}))"));
    }
    if let Some(f) = &b.filter {
        conditions.push(format!("(({f}))"));
    }
    let filter = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
    let query = format!(
        "SELECT s.snap, t.* FROM (SELECT pg_catalog.pg_current_snapshot()::text AS snap OFFSET 0) s \
           LEFT JOIN LATERAL (SELECT true AS present, {} FROM {source}{filter} ORDER BY {} LIMIT {limit}) t ON true",
        cols.join(", "),
        keys.join(", "),
    );
    (query, params)
}

/// The key columns' types, spelled for casts.
fn key_types(source_oid: u32, key: &[String]) -> Vec<String> {
    let oid = source_oid.to_string();
    key.iter()
        .map(|k| {
            select_one(
                "SELECT pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute WHERE attrelid = $1::oid AND attname = $2",
                &[Some(&oid), Some(k)],
            )
            .unwrap_or_else(|| "text".into())
        })
        .collect()
}

/// Record what a step's chunk did, with the step's progress.
pub fn record(sink_id: i64, a: &Advance) {
    if a.again {
        return;
    }
    let last = a.last_key.as_ref().map(|k| serde_json::to_string(k).unwrap_or_default());
    update(
        "UPDATE sink.backfills SET chunks = chunks + 1, rows_read = rows_read + $3::bigint, rows_delivered = rows_delivered + $4::bigint, \
                last_key = CASE WHEN $5::jsonb IS NULL THEN last_key ELSE ARRAY(SELECT pg_catalog.jsonb_array_elements_text($5::jsonb)) END, \
                finished_at = CASE WHEN $6::boolean THEN NULL ELSE now() END \
          WHERE sink_id = $1::bigint AND id = $2::bigint AND finished_at IS NULL",
        &[
            Some(&sink_id.to_string()),
            Some(&a.id.backfill.to_string()),
            Some(&a.read.to_string()),
            Some(&a.delivered.to_string()),
            last.as_deref(),
            Some(if a.more { "true" } else { "false" }),
        ],
    );
    if !a.more {
        snapshot_done(sink_id);
    }
}

/// A finished backfill completes the sink's snapshot when that was still to
/// come (an incremental initial snapshot).
fn snapshot_done(sink_id: i64) {
    update(
        "UPDATE sink.progress SET snapshot_done = true WHERE sink_id = $1::bigint AND NOT snapshot_done",
        &[Some(&sink_id.to_string())],
    );
}

/// Nothing is left to read.
fn finish(sink_id: i64, id: i64) {
    update(
        "UPDATE sink.backfills SET finished_at = now() WHERE sink_id = $1::bigint AND id = $2::bigint AND finished_at IS NULL",
        &[Some(&sink_id.to_string()), Some(&id.to_string())],
    );
    snapshot_done(sink_id);
    super::delivery::report_activity("streaming");
}
