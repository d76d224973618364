//! One-shot exports (Kinetica's export of records into a data sink):
//! `sink.export(query, connector, options, ..)` runs a query once, as the caller,
//! and delivers its rows through any connector, envelope and format, in chunks as
//! a snapshot is delivered. Nothing is kept in the catalog: an export has no slot,
//! no progress and no worker.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgrx::prelude::*;
use pgrx::JsonB;

use super::check_name;
use super::sinks::{effective_options, sink_options};
use crate::engine::change::{Column, Relation, Transaction};
use crate::engine::connector::ConnectorConfig;
use crate::engine::error::SinkError;
use crate::engine::lsn::Lsn;
use crate::engine::options;
use crate::engine::pipeline::{Pipeline, TypeResolver};
use crate::engine::step::{SnapshotSource, Step};
use crate::engine::types::PgType;
use crate::pg::delivery::{block_signals, insert_rows, now_us};
use crate::pg::errors::{fail, Code, OrRaise};
use crate::pg::identity::{current_user, with_output_settings};
use crate::pg::spi::{select_one, CatalogTypes, SpiSession};

/// Rows per chunk (each chunk is one delivery to the target).
const EXPORT_CHUNK: i64 = 10_000;

/// Run `query` once and deliver its rows. Returns what was delivered.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile)]
fn export(
    query: &str,
    connector: default!(Option<&str>, "NULL"),
    options: default!(JsonB, "'{}'"),
    name: default!(Option<&str>, "NULL"),
    envelope: default!(Option<&str>, "NULL"),
    format: default!(Option<&str>, "NULL"),
    key: default!(Option<Vec<String>>, "NULL"),
    connection: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(rows, i64), name!(bytes, i64), name!(chunks, i64), name!(seconds, f64))> {
    let mut opts = sink_options(&options, envelope, format, key.as_deref(), false, Some(false));
    TableIterator::once(export_with(query, connector, &mut opts, name, connection))
}

/// An export (also Kinetica's `EXPORT` through `sink.execute`): rows, bytes,
/// chunks and seconds. The envelope is append-only unless the options say.
pub(super) fn export_with(
    query: &str,
    connector: Option<&str>,
    opts: &mut BTreeMap<String, String>,
    name: Option<&str>,
    connection: Option<&str>,
) -> (i64, i64, i64, f64) {
    crate::pg::version::check();
    let name = name.map(str::to_string).unwrap_or_else(|| format!("export_{}", now_us() / 1000));
    check_name("export", &name);
    crate::pg::policy::require_may_create_sink();
    if !opts.contains_key("envelope") && !opts.contains_key("type") {
        opts.insert("envelope".into(), "append-only".into());
    }
    let (connector_name, effective) = effective_options(opts, connector, connection);
    let def = options::parse(&connector_name, &effective).or_raise();
    if def.connector.name == "table" {
        fail(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            "an export cannot go to a table connector",
            Some("The table connector writes into this database, where a query's rows need no export.".into()),
            Some("Use INSERT INTO .. SELECT, or export to a jdbc connection.".into()),
        );
    }
    if !def.messages.is_empty() {
        fail(Code::ERRCODE_INVALID_PARAMETER_VALUE, "an export has no logical messages", None, Some("Leave the messages option out.".into()));
    }
    let database = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
    let started = std::time::Instant::now();
    let (rows, bytes, chunks) = with_output_settings(|| run(&name, &database, query, &def)).or_raise();
    crate::pg::events::state_changed(&name, format!("exported {rows} rows through the {} connector", def.connector.name));
    (rows as i64, bytes as i64, chunks as i64, started.elapsed().as_secs_f64())
}

fn run(name: &str, database: &str, query: &str, def: &options::SinkDefinition) -> Result<(usize, usize, usize), SinkError> {
    let mut pipeline = Pipeline::new(def, name, database, Lsn::ZERO)?;
    let cfg = ConnectorConfig {
        sink_name: name.to_string(),
        database: database.to_string(),
        // Unique per run: exactly-once bookkeeping at the target is never shared.
        sink_uid: format!("{database}-export-{name}-{}", now_us()),
        envelope: def.envelope,
        key_columns: def.key_columns.clone(),
        options: def.connector_options.clone(),
        columns: vec![],
        password_required: !crate::pg::identity::is_superuser(),
    };
    let mut connector = (def.connector.build)(&cfg)?;
    let rt = crate::engine::replication::with_signals_blocked(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().on_thread_start(block_signals).build()
    })
    .map_err(|e| SinkError::transient(format!("could not start the async runtime: {e}")))?;
    rt.block_on(connector.check())?;
    let mut sql = SpiSession::for_owner(&current_user())?;
    let mut types = CatalogTypes::default();
    Spi::connect(|client| {
        // A cursor takes one statement only, and runs it as the caller.
        let mut cursor = client.open_cursor(query, &[]);
        let mut rows = QueryRows { cursor: &mut cursor, rel: None, name, key: &def.key_columns, types: CatalogTypes::default(), chunks: 0 };
        let mut step = Step::new(&mut pipeline, connector.as_mut(), &rt, &mut sql, &mut types, Lsn::ZERO, usize::MAX);
        step.deliver_snapshot(&mut rows, EXPORT_CHUNK)?;
        let chunks = rows.chunks;
        let o = step.into_outcome();
        if !o.dead_letters.is_empty() {
            return Err(SinkError::permanent(format!("the target refused {} of the exported records", o.dead_letters.len()))
                .detail(o.dead_letters[0].error.clone())
                .hint("An export has no dead letters: fix the rows or the target, and export again."));
        }
        Ok((o.records, o.bytes, chunks))
    })
}

/// The query's rows, chunk by chunk; its result's shape is the relation.
struct QueryRows<'c, 'r> {
    cursor: &'c mut pgrx::spi::SpiCursor<'r>,
    rel: Option<Arc<Relation>>,
    name: &'c str,
    key: &'c [String],
    types: CatalogTypes,
    chunks: usize,
}

/// The relation a query's result describes (named after the export).
fn relation(types: &mut CatalogTypes, name: &str, key: &[String], table: &pgrx::spi::SpiTupleTable<'_>) -> Result<Arc<Relation>, SinkError> {
    let n = table.columns().map_err(|e| SinkError::permanent(e.to_string()))?;
    let mut columns: Vec<Column> = Vec::with_capacity(n);
    for i in 1..=n {
        let cname = table.column_name(i).map_err(|e| SinkError::permanent(e.to_string()))?;
        if columns.iter().any(|c| c.name == cname) {
            return Err(SinkError::config(format!("column \"{cname}\" appears more than once in the export query"))
                .hint("Give each output column its own name with AS."));
        }
        let oid = table.column_type_oid(i).map_err(|e| SinkError::permanent(e.to_string()))?.value().to_u32();
        let mut ty = PgType::from_oid(oid);
        if !ty.is_resolved() {
            if let Some(t) = types.resolve(oid) {
                ty = t;
            }
        }
        let is_key = key.contains(&cname);
        columns.push(Column { name: cname, ty, type_modifier: -1, is_identity: is_key });
    }
    if let Some(missing) = key.iter().find(|k| !columns.iter().any(|c| &c.name == *k)) {
        return Err(SinkError::config(format!("key column \"{missing}\" is not a column of the export query"))
            .hint("Name a column of the query's result in key."));
    }
    Ok(Arc::new(Relation { id: 0, namespace: String::new(), name: name.to_string(), replica_identity: b'd', columns, meta: None }))
}

impl SnapshotSource for QueryRows<'_, '_> {
    fn next_chunk(&mut self, rows: i64) -> Result<Transaction, SinkError> {
        let table = self.cursor.fetch(rows).map_err(|e| SinkError::permanent(format!("the export query failed: {e}")))?;
        let rel = match &self.rel {
            Some(r) => r.clone(),
            None => {
                let r = relation(&mut self.types, self.name, self.key, &table)?;
                self.rel = Some(r.clone());
                r
            }
        };
        let changes = insert_rows(table, &rel)?;
        if !changes.is_empty() {
            self.chunks += 1;
        }
        Ok(Transaction::snapshot(Lsn::ZERO, now_us(), changes))
    }
}
