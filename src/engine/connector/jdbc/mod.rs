//! `jdbc`: mirror the sink into a table of another database — PostgreSQL or
//! MySQL/MariaDB — as RisingWave's JDBC sink does, without a JVM: the URL is a JDBC
//! URL, the clients are native (tokio-postgres, mysql_async).
//!
//! Exactly-once: each batch is one target transaction that also moves the sink's
//! row in the target's progress table (`pg_sink_progress` by default) to the
//! batch's end LSN; records below the stored LSN are skipped, so a batch retried
//! after a crash anywhere applies nothing twice, even for append-only targets. The
//! initial snapshot is one target transaction, committed in
//! [`Connector::finish_step`].
//!
//! RisingWave's key rules are checked against the target at creation: an upsert
//! needs a target primary key and uses it (a different sink key is refused); every
//! sink column must exist in the target with a compatible type. Upserts collapse a
//! batch to the last change per key and go out as multi-row
//! `INSERT .. ON CONFLICT` (PostgreSQL) / `ON DUPLICATE KEY UPDATE` (MySQL) and
//! `DELETE .. WHERE (key) IN (..)`; append-only batches as multi-row `INSERT`s.

mod mysql;
pub mod postgres;
pub mod target;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use super::{Batch, Connector, ConnectorConfig, ConnectorSpec, Record, SqlSession};
use crate::engine::change::Cell;
use crate::engine::envelope::{EnvelopeKind, Payload, RowImage};
use crate::engine::error::{Result, SinkError};
use crate::engine::lsn::Lsn;
use crate::engine::schema_change::{self, Alteration, SchemaChange};

pub use target::{check_table, compatible, family, mysql_type, parse_target, quote, Backend, Dialect, Family, TableInfo, Target};

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "jdbc",
    options: &[
        ("jdbc.url", "jdbc:postgresql://host:port/db or jdbc:mysql://host:port/db, optionally ?user=..&password=.."),
        ("url", "alias of jdbc.url"),
        ("location", "Kinetica-style alias of jdbc.url"),
        ("user", "user name (overrides the URL's)"),
        ("password", "password (a secret; overrides the URL's)"),
        ("table.name", "the target table"),
        ("schema.name", "the target table's schema (PostgreSQL; default public)"),
        ("progress_table", "table in the target that keeps each sink's delivered LSN (default pg_sink_progress)"),
        ("timeout_ms", "connect timeout in milliseconds (default 10000)"),
        ("ssl_ca", "PEM certificate(s) of the authority to trust for the URL's sslmode verify-ca/verify-full (MySQL: VERIFY_CA/VERIFY_IDENTITY)"),
    ],
    required: &["table.name"],
    option_prefixes: &[],
    accepts_unchanged_toast: false,
    needs_json: false,
    applies_rows: true,
    build,
    check_connection: None,
};

pub fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    if cfg.envelope == EnvelopeKind::Debezium {
        return Err(SinkError::config("the jdbc connector takes envelope append-only or upsert")
            .detail("A database table holds rows, not Debezium change events.")
            .hint("Use envelope => 'upsert' to mirror the source, or 'append-only' for a log of inserts."));
    }
    let target = parse_target(cfg)?;
    Ok(Box::new(JdbcConnector { target, cfg: cfg.clone(), backend: None, info: None, progress_ready: false, snapshot_open: None, part_open: None, single_out: false }))
}

pub struct JdbcConnector {
    target: Target,
    cfg: ConnectorConfig,
    backend: Option<Box<dyn Backend>>,
    info: Option<TableInfo>,
    /// The progress table is known to exist (checked once per connection).
    progress_ready: bool,
    /// The LSN of the snapshot whose target transaction is open, if any.
    snapshot_open: Option<Lsn>,
    /// A large transaction's parts go into one target transaction, committed with
    /// its last part: its commit LSN and the progress the target had stored.
    part_open: Option<(Lsn, Lsn)>,
    /// `errors.policy` sets refused rows aside: a batch that fails on a row is
    /// tried again row by row to name them ([`JdbcConnector::refused_rows`]).
    single_out: bool,
}

/// Marks a backend error as the target's refusal of a row (a constraint, a
/// value), as opposed to a statement or the connection failing.
pub(crate) const ROW_REFUSED: usize = usize::MAX;

/// A target value: the source's text, adjusted where the target spells a type
/// differently (MySQL booleans, byte strings, UTC timestamps).
fn target_value(d: Dialect, ty: &str, text: &str) -> Option<String> {
    if d == Dialect::Postgres {
        return Some(text.to_string());
    }
    let fam = family(ty);
    Some(match (fam, text) {
        (Family::Bool | Family::Number, "t") => "1".into(),
        (Family::Bool | Family::Number, "f") => "0".into(),
        (Family::Time, t) if t.ends_with("+00") => t[..t.len() - 3].to_string(),
        (Family::Time, t) if t.ends_with("+00:00") => t[..t.len() - 6].to_string(),
        (Family::Bytes, t) => t.strip_prefix("\\x").unwrap_or(t).to_string(),
        _ => text.to_string(),
    })
}

/// One pending row operation of an upsert batch, per key.
enum Pending<'a> {
    Upsert(&'a RowImage),
    Delete(&'a RowImage),
}

fn cell_text(c: &Cell) -> Result<Option<&str>> {
    match c {
        Cell::Text(t) => Ok(Some(t)),
        Cell::Null => Ok(None),
        Cell::Unchanged => Err(SinkError::permanent("an unchanged TOAST value reached the jdbc connector")),
    }
}

/// Rows per statement: enough to save round trips, under both databases' limit of
/// 65535 parameters.
fn rows_per_statement(columns: usize) -> usize {
    (60_000 / columns.max(1)).clamp(1, 1000)
}

impl JdbcConnector {
    async fn backend(&mut self) -> Result<&mut Box<dyn Backend>> {
        if self.backend.is_none() {
            let b: Box<dyn Backend> = match self.target.dialect {
                Dialect::Postgres => Box::new(postgres::PgBackend::connect(&self.target).await?),
                Dialect::MySql => Box::new(mysql::MyBackend::connect(&self.target).await?),
            };
            self.backend = Some(b);
        }
        self.backend.as_mut().ok_or_else(|| SinkError::transient("target connection unavailable"))
    }

    async fn table_info(&mut self) -> Result<TableInfo> {
        if self.info.is_none() {
            let target = self.target.clone();
            let info = self.backend().await?.describe(&target).await?;
            let info = info.ok_or_else(|| {
                SinkError::permanent(format!("target table {} does not exist", target.qualified(&target.table)))
                    .hint("Create it again, then resume the sink.")
            })?;
            self.info = Some(info);
        }
        self.info.clone().ok_or_else(|| SinkError::transient("target table unknown"))
    }

    fn column_type<'a>(&self, info: &'a TableInfo, col: &str) -> Result<&'a str> {
        info.columns.iter().find(|(c, _)| c == col).map(|(_, t)| t.as_str()).ok_or_else(|| {
            SinkError::permanent(format!("column \"{col}\" does not exist in target table {}", self.target.qualified(&self.target.table)))
                .hint("A column was added to the source: add it to the target too, then resume the sink.")
        })
    }

    /// Multi-row INSERT (with the dialect's upsert clause for upserts).
    async fn insert(&mut self, rows: &[&RowImage], upsert: bool) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let info = self.table_info().await?;
        let d = self.target.dialect;
        let cols: Vec<(String, String)> =
            first.fields().map(|(c, _)| self.column_type(&info, &c.name).map(|t| (c.name.clone(), t.to_string()))).collect::<Result<_>>()?;
        let table = self.target.qualified(&self.target.table);
        let col_list = cols.iter().map(|(c, _)| quote(d, c)).collect::<Vec<_>>().join(", ");
        let key = &info.primary_key;
        let suffix = if !upsert {
            String::new()
        } else {
            let non_key: Vec<&(String, String)> = cols.iter().filter(|(c, _)| !key.contains(c)).collect();
            match d {
                Dialect::Postgres if non_key.is_empty() => {
                    format!(" ON CONFLICT ({}) DO NOTHING", key.iter().map(|k| quote(d, k)).collect::<Vec<_>>().join(", "))
                }
                Dialect::Postgres => format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    key.iter().map(|k| quote(d, k)).collect::<Vec<_>>().join(", "),
                    non_key.iter().map(|(c, _)| format!("{0} = EXCLUDED.{0}", quote(d, c))).collect::<Vec<_>>().join(", ")
                ),
                Dialect::MySql => {
                    let k = quote(d, &key[0]);
                    let sets: Vec<String> = if non_key.is_empty() {
                        vec![format!("{k} = {k}")]
                    } else {
                        non_key.iter().map(|(c, _)| format!("{0} = VALUES({0})", quote(d, c))).collect()
                    };
                    format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
                }
            }
        };
        for chunk in rows.chunks(rows_per_statement(cols.len())) {
            let mut params = Vec::with_capacity(chunk.len() * cols.len());
            let mut tuples = Vec::with_capacity(chunk.len());
            for row in chunk {
                let mut slots = Vec::with_capacity(cols.len());
                for ((_, cell), (_, ty)) in row.fields().zip(&cols) {
                    params.push(cell_text(cell)?.and_then(|t| target_value(d, ty, t)));
                    slots.push(self.target.param(params.len(), ty));
                }
                tuples.push(format!("({})", slots.join(", ")));
            }
            let sql = format!("INSERT INTO {table} ({col_list}) VALUES {}{suffix}", tuples.join(", "));
            self.backend().await?.execute(&sql, &params).await?;
        }
        Ok(())
    }

    /// `DELETE .. WHERE (key) IN (..)` for key images.
    async fn delete(&mut self, keys: &[&RowImage]) -> Result<()> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let info = self.table_info().await?;
        let d = self.target.dialect;
        let cols: Vec<(String, String)> =
            first.fields().map(|(c, _)| self.column_type(&info, &c.name).map(|t| (c.name.clone(), t.to_string()))).collect::<Result<_>>()?;
        let table = self.target.qualified(&self.target.table);
        let lhs = format!("({})", cols.iter().map(|(c, _)| quote(d, c)).collect::<Vec<_>>().join(", "));
        for chunk in keys.chunks(rows_per_statement(cols.len())) {
            let mut params = Vec::new();
            let mut tuples = Vec::new();
            for key in chunk {
                let mut slots = Vec::new();
                for ((_, cell), (_, ty)) in key.fields().zip(&cols) {
                    params.push(cell_text(cell)?.and_then(|t| target_value(d, ty, t)));
                    slots.push(self.target.param(params.len(), ty));
                }
                tuples.push(format!("({})", slots.join(", ")));
            }
            let sql = format!("DELETE FROM {table} WHERE {lhs} IN ({})", tuples.join(", "));
            self.backend().await?.execute(&sql, &params).await?;
        }
        Ok(())
    }

    /// Apply records (already filtered by progress) inside the open transaction.
    async fn apply(&mut self, records: &[&Record]) -> Result<()> {
        let upsert = self.cfg.envelope == EnvelopeKind::Upsert;
        let mut i = 0;
        while i < records.len() {
            // Runs between truncates and schema changes, which apply in order.
            let end = records[i..]
                .iter()
                .position(|r| matches!(r.draft.payload, Payload::Truncate(_) | Payload::Schema(_)))
                .map_or(records.len(), |p| i + p);
            let run = &records[i..end];
            if upsert {
                let mut order: Vec<Vec<Option<&str>>> = Vec::new();
                let mut last: HashMap<Vec<Option<&str>>, Pending> = HashMap::new();
                for r in run {
                    let key = r.draft.key.as_ref().ok_or_else(|| SinkError::permanent("an upsert record without a key"))?;
                    let k: Vec<Option<&str>> = key.fields().map(|(_, c)| cell_text(c)).collect::<Result<_>>()?;
                    let op = match &r.draft.payload {
                        Payload::Row(row) => Pending::Upsert(row),
                        _ => Pending::Delete(key),
                    };
                    if last.insert(k.clone(), op).is_none() {
                        order.push(k);
                    }
                }
                let (mut ups, mut dels): (Vec<&RowImage>, Vec<&RowImage>) = (vec![], vec![]);
                for k in &order {
                    match last.get(k) {
                        Some(Pending::Upsert(row)) => ups.push(row),
                        Some(Pending::Delete(key)) => dels.push(key),
                        None => {}
                    }
                }
                self.delete(&dels).await?;
                // Rows of different shapes (a column added mid-batch) go in separate statements.
                for group in group_by_shape(&ups) {
                    self.insert(&group, true).await?;
                }
            } else {
                let rows: Vec<&RowImage> = run
                    .iter()
                    .filter_map(|r| match &r.draft.payload {
                        Payload::Row(row) => Some(row),
                        _ => None,
                    })
                    .collect();
                for group in group_by_shape(&rows) {
                    self.insert(&group, false).await?;
                }
            }
            if let Some(barrier) = records.get(end) {
                if let Payload::Schema(change) = &barrier.draft.payload {
                    if self.target.dialect == Dialect::MySql {
                        self.alter_mysql(change, barrier.commit_lsn).await?;
                    } else {
                        self.alter(change).await?;
                    }
                } else {
                    let table = self.target.qualified(&self.target.table);
                    self.backend().await?.execute(&format!("DELETE FROM {table}"), &[]).await?;
                }
            }
            i = end + 1;
        }
        Ok(())
    }

    /// Follow a schema change of the source in the target's open transaction
    /// (PostgreSQL; MariaDB and MySQL: [`JdbcConnector::alter_mysql`]).
    async fn alter(&mut self, change: &SchemaChange) -> Result<()> {
        let d = self.target.dialect;
        self.check_key(change)?;
        let table = self.target.qualified(&self.target.table);
        for a in change.alterations() {
            let stmt = match &a {
                Alteration::Rename { from, to } => format!("ALTER TABLE {table} RENAME COLUMN {} TO {}", quote(d, from), quote(d, to)),
                Alteration::Retype { column, to, .. } => {
                    let to = self.checked_type(change, to).await?;
                    let c = quote(d, column);
                    format!("ALTER TABLE {table} ALTER COLUMN {c} TYPE {to} USING {c}::{to}")
                }
                Alteration::Drop { column } => format!("ALTER TABLE {table} DROP COLUMN IF EXISTS {}", quote(d, column)),
                Alteration::Add { column, ty } => format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}", quote(d, column), self.checked_type(change, ty).await?),
            };
            self.run_ddl(change, &stmt).await?;
        }
        self.info = None;
        Ok(())
    }

    /// One DDL statement of a schema change; a refusal stops the sink at the change.
    async fn run_ddl(&mut self, change: &SchemaChange, stmt: &str) -> Result<()> {
        self.backend()
            .await?
            .execute(stmt, &[])
            .await
            .map_err(|e| schema_change::stopped(change, &format!("The target refused it: {}", e.summary())))?;
        Ok(())
    }

    fn check_key(&self, change: &SchemaChange) -> Result<()> {
        if change.key_changed() && self.cfg.envelope == EnvelopeKind::Upsert {
            return Err(schema_change::stopped(change, "The target table is keyed by the source's key, and a jdbc target does not change its key."));
        }
        Ok(())
    }

    /// Follow a schema change of the source on MariaDB or MySQL, which commit
    /// each DDL statement implicitly. The rows before the change commit first,
    /// with the sink's progress at the change's transaction (`at`, its commit
    /// LSN: a replay starts with that transaction); then each alteration runs
    /// unless the table already shows it (a replay after a crash here does not
    /// repeat it); then a new target transaction takes the rest. Rows of the
    /// change's own transaction that precede it are applied again by such a
    /// replay (the same rows under upsert).
    async fn alter_mysql(&mut self, change: &SchemaChange, at: Lsn) -> Result<()> {
        self.check_key(change)?;
        let d = Dialect::MySql;
        // Types first: a change the target cannot take stops the sink before any DDL.
        let mut typed = Vec::new();
        for a in change.alterations() {
            let ty = match &a {
                Alteration::Retype { to: ty, .. } | Alteration::Add { ty, .. } => Some(
                    mysql_type(ty).ok_or_else(|| schema_change::stopped(change, &format!("MariaDB and MySQL have no column type for \"{ty}\".")))?,
                ),
                _ => None,
            };
            typed.push((a, ty));
        }
        self.store_lsn(at).await?;
        self.commit().await?;
        let table = self.target.qualified(&self.target.table);
        // The table's columns as they are now, kept up to date as the alterations run.
        self.info = None;
        let mut columns: HashSet<String> = self.table_info().await?.columns.into_iter().map(|(n, _)| n.to_lowercase()).collect();
        for (a, ty) in typed {
            let has = |columns: &HashSet<String>, c: &str| columns.contains(&c.to_lowercase());
            let ty = ty.unwrap_or_default();
            let stmt = match &a {
                Alteration::Rename { from, to } if has(&columns, from) && !has(&columns, to) => {
                    columns.remove(&from.to_lowercase());
                    columns.insert(to.to_lowercase());
                    Some(format!("ALTER TABLE {table} RENAME COLUMN {} TO {}", quote(d, from), quote(d, to)))
                }
                Alteration::Retype { column, .. } => Some(format!("ALTER TABLE {table} MODIFY COLUMN {} {ty}", quote(d, column))),
                Alteration::Drop { column } if columns.remove(&column.to_lowercase()) => Some(format!("ALTER TABLE {table} DROP COLUMN {}", quote(d, column))),
                Alteration::Add { column, .. } if columns.insert(column.to_lowercase()) => Some(format!("ALTER TABLE {table} ADD COLUMN {} {ty}", quote(d, column))),
                // Already as the change leaves it (a replay after a crash here).
                _ => None,
            };
            if let Some(stmt) = stmt {
                self.run_ddl(change, &stmt).await?;
            }
        }
        self.info = None;
        self.begin().await
    }

    /// A type name from a schema-change report that the target knows (it goes into
    /// DDL as it is).
    async fn checked_type(&mut self, change: &SchemaChange, ty: &str) -> Result<String> {
        let known = self.backend().await?.query_one("SELECT pg_catalog.format_type(pg_catalog.to_regtype($1), NULL)", &[Some(ty.to_string())]).await?;
        match known {
            Some(_) => Ok(ty.to_string()),
            None => Err(schema_change::stopped(change, &format!("The target has no type \"{ty}\"."))),
        }
    }

    async fn stored_lsn(&mut self) -> Result<Option<Lsn>> {
        let target = self.target.clone();
        let uid = self.cfg.sink_uid.clone();
        let sql = format!("SELECT lsn FROM {} WHERE sink_id = {} FOR UPDATE", target.qualified(&target.progress_table), target.param(1, "text"));
        let v = self.backend().await?.query_one(&sql, &[Some(uid)]).await?;
        Ok(v.and_then(|s| s.parse::<u64>().ok()).map(Lsn))
    }

    async fn store_lsn(&mut self, lsn: Lsn) -> Result<()> {
        let t = self.target.clone();
        let table = t.qualified(&t.progress_table);
        let sql = match t.dialect {
            Dialect::Postgres => format!(
                "INSERT INTO {table} (sink_id, lsn, updated_at) VALUES ($1::text, $2::text::bigint, now()) ON CONFLICT (sink_id) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = EXCLUDED.updated_at"
            ),
            Dialect::MySql => format!(
                "INSERT INTO {table} (sink_id, lsn, updated_at) VALUES (?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE lsn = VALUES(lsn), updated_at = VALUES(updated_at)"
            ),
        };
        let uid = self.cfg.sink_uid.clone();
        self.backend().await?.execute(&sql, &[Some(uid), Some(lsn.0.to_string())]).await?;
        Ok(())
    }

    async fn begin(&mut self) -> Result<()> {
        let t = self.target.clone();
        let ready = self.progress_ready;
        let b = self.backend().await?;
        if !ready {
            b.ensure_progress_table(&t).await?;
        }
        b.execute(if t.dialect == Dialect::Postgres { "BEGIN" } else { "START TRANSACTION" }, &[]).await?;
        self.progress_ready = true;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.backend().await?.execute("COMMIT", &[]).await?;
        Ok(())
    }

    /// Forget the connection after a failure: an open transaction dies with it.
    fn reset(&mut self) {
        self.backend = None;
        self.info = None;
        self.progress_ready = false;
        self.snapshot_open = None;
        self.part_open = None;
    }

    /// One part of a large transaction, in the target transaction that its first
    /// part began and its last part commits (with the progress row): the target
    /// sees the source transaction whole or not at all.
    async fn deliver_part(&mut self, batch: &Batch, part: super::Part) -> Result<()> {
        let lsn = batch.start_lsn;
        let stored = match self.part_open {
            Some((at, stored)) if at == lsn => stored,
            _ if part.index > 0 => {
                return Err(SinkError::transient(format!("part {} of the transaction at {lsn} came without its first part", part.index)));
            }
            _ => {
                if self.snapshot_open.is_some() {
                    self.finish_snapshot().await?;
                }
                self.begin().await?;
                let stored = self.stored_lsn().await?.unwrap_or(Lsn::ZERO);
                self.part_open = Some((lsn, stored));
                stored
            }
        };
        let records: Vec<&Record> = batch.records.iter().filter(|r| r.commit_lsn >= stored).collect();
        self.apply(&records).await?;
        if part.last {
            self.store_lsn(batch.end_lsn.max(stored)).await?;
            self.commit().await?;
            self.part_open = None;
        }
        Ok(())
    }

    async fn deliver_inner(&mut self, batch: &Batch) -> Result<()> {
        if let Some(part) = batch.part {
            return self.deliver_part(batch, part).await;
        }
        if let Some(chunk) = batch.snapshot_chunk {
            if chunk == 0 || self.snapshot_open != Some(batch.end_lsn) {
                if self.snapshot_open.is_some() {
                    self.reset();
                }
                self.begin().await?;
                self.snapshot_open = Some(batch.end_lsn);
                // A target that already holds this sink's rows from an attempt that
                // Postgres forgot (it crashed after the target committed): start over.
                if self.stored_lsn().await?.is_some() {
                    let table = self.target.qualified(&self.target.table);
                    self.backend().await?.execute(&format!("DELETE FROM {table}"), &[]).await?;
                }
            }
            let records: Vec<&Record> = batch.records.iter().collect();
            return self.apply(&records).await;
        }
        if self.snapshot_open.is_some() {
            self.finish_snapshot().await?;
        }
        self.begin().await?;
        let stored = self.stored_lsn().await?.unwrap_or(Lsn::ZERO);
        let records: Vec<&Record> = batch.records.iter().filter(|r| r.commit_lsn >= stored).collect();
        if let Err(e) = self.apply(&records).await {
            if !(self.single_out && e.refused == [ROW_REFUSED]) {
                return Err(SinkError { refused: Vec::new(), ..e });
            }
            let refused = self.refused_rows(batch, stored).await?;
            return Err(SinkError { refused, ..e });
        }
        self.store_lsn(batch.end_lsn.max(stored)).await?;
        self.commit().await
    }

    /// After `batch` failed on a refused row: apply its records one by one,
    /// each under a savepoint, in a target transaction that is rolled back at
    /// the end (nothing is kept), and name those the target refuses. The step
    /// then records them as dead letters and delivers the batch again without
    /// them.
    async fn refused_rows(&mut self, batch: &Batch, stored: Lsn) -> Result<Vec<usize>> {
        self.reset();
        self.begin().await?;
        let mut refused = Vec::new();
        for (i, r) in batch.records.iter().enumerate().filter(|(_, r)| r.commit_lsn >= stored) {
            if self.target.dialect == Dialect::MySql && matches!(r.draft.payload, Payload::Schema(_)) {
                // Its DDL would commit what this rolls back: rows past it are not probed.
                break;
            }
            self.backend().await?.execute("SAVEPOINT pg_sink_row", &[]).await?;
            match self.apply(&[r]).await {
                Ok(()) => {
                    self.backend().await?.execute("RELEASE SAVEPOINT pg_sink_row", &[]).await?;
                }
                Err(e) if e.refused == [ROW_REFUSED] => {
                    self.backend().await?.execute("ROLLBACK TO SAVEPOINT pg_sink_row", &[]).await?;
                    refused.push(i);
                }
                Err(e) => return Err(e),
            }
        }
        self.backend().await?.execute("ROLLBACK", &[]).await?;
        Ok(refused)
    }

    async fn finish_snapshot(&mut self) -> Result<()> {
        if let Some(lsn) = self.snapshot_open {
            self.store_lsn(lsn).await?;
            self.commit().await?;
            self.snapshot_open = None;
        }
        Ok(())
    }
}

/// Consecutive rows with the same columns.
fn group_by_shape<'a>(rows: &[&'a RowImage]) -> Vec<Vec<&'a RowImage>> {
    let mut out: Vec<Vec<&RowImage>> = Vec::new();
    for row in rows {
        let same = out.last().and_then(|g| g.last()).is_some_and(|p| {
            std::sync::Arc::ptr_eq(&p.relation, &row.relation) || (p.relation.columns == row.relation.columns && p.indices == row.indices)
        });
        if same {
            if let Some(g) = out.last_mut() {
                g.push(row);
            }
        } else {
            out.push(vec![row]);
        }
    }
    out
}

#[async_trait(?Send)]
impl Connector for JdbcConnector {
    async fn check(&mut self) -> Result<()> {
        let target = self.target.clone();
        let info = self.backend().await?.describe(&target).await?;
        check_table(&target, info.as_ref(), &self.cfg)?;
        self.backend().await?.ensure_progress_table(&target).await
    }

    async fn deliver(&mut self, batch: &Batch, _sql: &mut dyn SqlSession) -> Result<()> {
        let result = self.deliver_inner(batch).await;
        if result.is_err() {
            self.reset();
        }
        // Only a streamed batch names its refused rows (snapshot chunks and the
        // parts of a large transaction share a target transaction with others).
        result.map_err(|e| if e.refused == [ROW_REFUSED] { SinkError { refused: Vec::new(), ..e } } else { e })
    }

    async fn finish_step(&mut self) -> Result<()> {
        let result = self.finish_snapshot().await;
        if result.is_err() {
            self.reset();
        }
        result.map_err(|e| if e.refused == [ROW_REFUSED] { SinkError { refused: Vec::new(), ..e } } else { e })
    }

    fn set_aside_refusals(&mut self) {
        self.single_out = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pairs: &[(&str, &str)]) -> Result<Target> {
        parse_target(&ConnectorConfig::for_test(pairs))
    }

    #[test]
    fn schema_changes_map_postgres_types_to_mariadb_columns() {
        let cases = [
            ("integer", Some("INT")),
            ("bigint", Some("BIGINT")),
            ("numeric(8,2)", Some("DECIMAL(8,2)")),
            ("numeric", Some("DECIMAL(65,30)")),
            ("numeric(70,2)", None),
            ("character varying(40)", Some("VARCHAR(40)")),
            ("character varying", Some("LONGTEXT")),
            ("text", Some("LONGTEXT")),
            ("character(5)", Some("CHAR(5)")),
            ("timestamp(3) with time zone", Some("DATETIME(3)")),
            ("timestamp without time zone", Some("DATETIME(6)")),
            ("time(0) without time zone", Some("TIME(0)")),
            ("jsonb", Some("JSON")),
            ("uuid", Some("CHAR(36)")),
            ("integer[]", None),
            ("tsvector", None),
        ];
        for (pg, my) in cases {
            assert_eq!(mysql_type(pg).as_deref(), my, "{pg}");
        }
    }

    #[test]
    fn jdbc_urls_parse() {
        let t = target(&[("jdbc.url", "jdbc:mysql://db:3307/shop?user=root&password=p%40ss"), ("table.name", "t")]).unwrap();
        assert_eq!((t.dialect, t.host.as_str(), t.port, t.database.as_str()), (Dialect::MySql, "db", 3307, "shop"));
        assert_eq!((t.user.as_deref(), t.password.as_deref(), t.schema.as_deref()), (Some("root"), Some("p@ss"), None));
        let t = target(&[("jdbc.url", "jdbc:postgresql://h/d"), ("table.name", "t"), ("user", "u"), ("password", "x")]).unwrap();
        assert_eq!((t.dialect, t.port, t.schema.as_deref(), t.user.as_deref()), (Dialect::Postgres, 5432, Some("public"), Some("u")));
        assert!(target(&[("jdbc.url", "jdbc:oracle:thin:@h:1521:x"), ("table.name", "t")]).is_err());
        assert!(target(&[("jdbc.url", "jdbc:oracle://h/x"), ("table.name", "t")]).unwrap_err().detail.unwrap().contains("oracle"));
        assert!(target(&[("jdbc.url", "jdbc:mysql://h:x/d"), ("table.name", "t")]).is_err());
        assert!(target(&[("jdbc.url", "jdbc:mysql://h/"), ("table.name", "t")]).is_err());
        assert!(target(&[("jdbc.url", "jdbc:mysql://h/d"), ("table.name", "t"), ("schema.name", "s")]).is_err());
    }

    #[test]
    fn tls_words_of_both_drivers_are_read() {
        use crate::engine::connector::tls::TlsMode;
        let tls = |url: &str| target(&[("jdbc.url", url), ("table.name", "t")]).map(|t| t.tls);
        assert_eq!(tls("jdbc:postgresql://h/d").unwrap(), TlsMode::Prefer, "libpq's default");
        assert_eq!(tls("jdbc:postgresql://h/d?sslmode=verify-full").unwrap(), TlsMode::VerifyFull);
        assert_eq!(tls("jdbc:postgresql://h/d?ssl=true").unwrap(), TlsMode::VerifyFull, "pgjdbc: ssl=true verifies");
        assert_eq!(tls("jdbc:postgresql://h/d?ssl=true&sslmode=require").unwrap(), TlsMode::Require);
        assert_eq!(tls("jdbc:postgresql://h/d?sslmode=disable").unwrap(), TlsMode::Disable);
        assert!(tls("jdbc:postgresql://h/d?sslmode=on").unwrap_err().hint.unwrap().contains("verify-full"));
        assert!(tls("jdbc:postgresql://h/d?sslrootcert=/etc/passwd").unwrap_err().hint.unwrap().contains("ssl_ca"));
        assert_eq!(tls("jdbc:mysql://h/d").unwrap(), TlsMode::Prefer);
        assert_eq!(tls("jdbc:mysql://h/d?sslMode=VERIFY_IDENTITY").unwrap(), TlsMode::VerifyFull);
        assert_eq!(tls("jdbc:mariadb://h/d?sslMode=verify-ca").unwrap(), TlsMode::VerifyCa);
        assert_eq!(tls("jdbc:mysql://h/d?useSSL=false").unwrap(), TlsMode::Disable);
        assert_eq!(tls("jdbc:mysql://h/d?useSSL=true&verifyServerCertificate=true").unwrap(), TlsMode::VerifyCa);
        assert_eq!(tls("jdbc:mysql://h/d?requireSSL=true").unwrap(), TlsMode::Require);
        assert!(tls("jdbc:mysql://h/d?useSSL=maybe").is_err());
        let t = target(&[("jdbc.url", "jdbc:postgresql://h/d?sslmode=verify-full"), ("table.name", "t"), ("ssl_ca", "PEM")]).unwrap();
        assert_eq!(t.ssl_ca.as_deref(), Some("PEM"));
    }

    #[test]
    fn type_families_decide_compatibility() {
        assert!(compatible("integer", "bigint"));
        assert!(compatible("numeric(10,2)", "decimal(12,2)"));
        assert!(compatible("boolean", "tinyint(1)"));
        assert!(compatible("timestamp with time zone", "datetime(6)"));
        assert!(compatible("jsonb", "json"));
        assert!(compatible("integer", "varchar(20)"));
        assert!(!compatible("text", "int"));
        assert!(!compatible("text", "json"));
        assert!(!compatible("date", "integer"));
        assert!(compatible("integer[]", "integer[]"));
    }

    #[test]
    fn key_rules_follow_risingwave() {
        let t = target(&[("jdbc.url", "jdbc:postgresql://h/d"), ("table.name", "t")]).unwrap();
        let mut cfg = ConnectorConfig::for_test(&[]);
        cfg.columns = vec![("id".into(), "integer".into()), ("v".into(), "text".into())];
        cfg.key_columns = vec!["id".into()];
        let with_pk = TableInfo { columns: vec![("id".into(), "bigint".into()), ("v".into(), "text".into())], primary_key: vec!["id".into()] };
        assert!(check_table(&t, Some(&with_pk), &cfg).is_ok());
        assert!(check_table(&t, None, &cfg).unwrap_err().message.contains("does not exist"));
        let no_pk = TableInfo { primary_key: vec![], ..with_pk.clone() };
        assert!(check_table(&t, Some(&no_pk), &cfg).unwrap_err().message.contains("no primary key"));
        cfg.key_columns = vec!["v".into()];
        assert!(check_table(&t, Some(&with_pk), &cfg).unwrap_err().message.contains("does not match"));
        cfg.envelope = EnvelopeKind::AppendOnly;
        assert!(check_table(&t, Some(&no_pk), &cfg).is_ok());
        cfg.columns.push(("extra".into(), "text".into()));
        assert!(check_table(&t, Some(&no_pk), &cfg).unwrap_err().message.contains("\"extra\" does not exist"));
        cfg.columns.pop();
        cfg.columns[1].1 = "jsonb".into();
        let int_v = TableInfo { columns: vec![("id".into(), "bigint".into()), ("v".into(), "integer".into())], primary_key: vec![] };
        assert!(check_table(&t, Some(&int_v), &cfg).unwrap_err().message.contains("has type jsonb"));
    }

    #[test]
    fn mysql_values_are_respelled() {
        assert_eq!(target_value(Dialect::MySql, "tinyint(1)", "t").as_deref(), Some("1"));
        assert_eq!(target_value(Dialect::MySql, "datetime(6)", "2026-01-02 03:04:05.5+00").as_deref(), Some("2026-01-02 03:04:05.5"));
        assert_eq!(target_value(Dialect::Postgres, "boolean", "t").as_deref(), Some("t"));
        assert_eq!(target_value(Dialect::MySql, "blob", "\\x00ff").as_deref(), Some("00ff"));
        let t = target(&[("jdbc.url", "jdbc:mysql://h/d"), ("table.name", "t")]).unwrap();
        assert_eq!(t.param(1, "varbinary(10)"), "UNHEX(?)");
    }
}
