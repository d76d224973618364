//! `table`: apply the changes to another table of the same database (Kinetica's
//! `table://schema.table`). Statements run through the glue's [`SqlSession`] in the
//! same transaction that records the sink's progress, so a crash either keeps both
//! the rows and the new LSN or neither: exactly-once.
//!
//! Honouring the envelope:
//! * upsert — `INSERT .. ON CONFLICT (key) DO UPDATE`, tombstone → `DELETE` by key,
//!   truncate → `TRUNCATE`; unchanged TOAST columns are left out of the update.
//! * append-only — `INSERT`.
//! * debezium — one changelog row per event: `(lsn, op, key jsonb, value jsonb)`.
//!
//! A column added to the source is added to the target before the first row needing it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Batch, Connector, ConnectorConfig, ConnectorSpec, SqlSession};
use crate::engine::change::{Cell, Relation};
use crate::engine::envelope::{EnvelopeKind, Payload, RowImage};
use crate::engine::error::{Result, SinkError};
use crate::engine::schema_change::{self, Alteration, SchemaChange};

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "table",
    options: &[
        ("table", "target table, schema-qualified (created at sink creation when missing)"),
        ("table.name", "RisingWave-style alias of table"),
        ("location", "Kinetica-style alias: table://schema.table"),
    ],
    required: &[],
    option_prefixes: &[],
    accepts_unchanged_toast: true,
    needs_json: true,
    applies_rows: true,
    build,
    check_connection: None,
};

fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    let target = target_name(cfg)?;
    Ok(Box::new(TableConnector { target, envelope: cfg.envelope, key_columns: cfg.key_columns.clone(), shapes: HashMap::new(), guarded: false, refused: Vec::new() }))
}

/// The target as written in the options (`table`, `table.name` or `table://...`).
pub fn target_name(cfg: &ConnectorConfig) -> Result<String> {
    let raw = cfg
        .get("table")
        .or_else(|| cfg.get("table.name"))
        .or_else(|| cfg.get("location").map(|l| l.strip_prefix("table://").unwrap_or(l)))
        .ok_or_else(|| {
            SinkError::config("connector \"table\" requires option \"table\"")
                .hint("Name the target, e.g. table => 'backup.orders' or location => 'table://backup.orders'.")
        })?;
    Ok(raw.to_string())
}

/// Quote an identifier the way Postgres' `quote_ident` does for any name.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Per relation version: SQL type of each column, and whether the target has it.
struct Shape {
    relation: Arc<Relation>,
    types: Vec<String>,
}

pub struct TableConnector {
    /// Already quoted and schema-qualified by the glue.
    target: String,
    envelope: EnvelopeKind,
    key_columns: Vec<String>,
    shapes: HashMap<u32, Shape>,
    /// Each row's statement runs in a subtransaction, and a row the target
    /// refuses is left out (`errors.policy` other than `fail`).
    guarded: bool,
    refused: Vec<(usize, SinkError)>,
}

impl TableConnector {
    /// Column types for `rel`, and missing target columns added.
    fn shape(&mut self, rel: &Arc<Relation>, sql: &mut dyn SqlSession) -> Result<&Shape> {
        let fresh = match self.shapes.get(&rel.id) {
            Some(s) => !(Arc::ptr_eq(&s.relation, rel) || *s.relation == **rel),
            None => true,
        };
        if fresh {
            let types = super::sql_types(rel, sql)?;
            if self.envelope != EnvelopeKind::Debezium {
                let existing = sql.query(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
                    &[Some(&self.target)],
                )?;
                let existing: Vec<String> = existing.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
                for (col, ty) in rel.columns.iter().zip(&types) {
                    if !existing.contains(&col.name) {
                        sql.execute(&format!("ALTER TABLE {} ADD COLUMN {} {}", self.target, quote_ident(&col.name), ty), &[])?;
                    }
                }
            }
            self.shapes.insert(rel.id, Shape { relation: rel.clone(), types });
        }
        self.shapes.get(&rel.id).ok_or_else(|| SinkError::permanent("relation shape missing"))
    }

    fn upsert(&mut self, row: &RowImage, sql: &mut dyn SqlSession) -> Result<()> {
        let shape = self.shape(&row.relation, sql)?;
        let mut cols = Vec::new();
        let mut vals = Vec::new();
        let mut params: Vec<Option<&str>> = Vec::new();
        for (i, (col, cell)) in row.fields().enumerate() {
            let idx = row.indices[i];
            match cell {
                Cell::Unchanged => continue,
                Cell::Null => params.push(None),
                Cell::Text(t) => params.push(Some(t)),
            }
            cols.push(quote_ident(&col.name));
            vals.push(format!("${}::{}", params.len(), shape.types[idx]));
        }
        let mut stmt = format!("INSERT INTO {} ({}) VALUES ({})", self.target, cols.join(", "), vals.join(", "));
        if self.envelope == EnvelopeKind::Upsert {
            let keys: Vec<String> = self.key_columns.iter().map(|k| quote_ident(k)).collect();
            let sets: Vec<String> = cols.iter().filter(|c| !keys.contains(c)).map(|c| format!("{c} = EXCLUDED.{c}")).collect();
            if sets.is_empty() {
                stmt.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
            } else {
                stmt.push_str(&format!(" ON CONFLICT ({}) DO UPDATE SET {}", keys.join(", "), sets.join(", ")));
            }
        }
        self.run(sql, &stmt, &params)
    }

    /// Run a row's statement; a guarded one the target refuses ends as
    /// [`Refusal`] (the subtransaction undid it).
    fn run(&self, sql: &mut dyn SqlSession, stmt: &str, params: &[Option<&str>]) -> Result<()> {
        if self.guarded {
            sql.execute_guarded(stmt, params)?.map_err(|e| SinkError { refused: vec![REFUSAL], ..e })?;
        } else {
            sql.execute(stmt, params)?;
        }
        Ok(())
    }

    fn delete(&mut self, key: &RowImage, sql: &mut dyn SqlSession) -> Result<()> {
        let shape = self.shape(&key.relation, sql)?;
        let mut conds = Vec::new();
        let mut params: Vec<Option<&str>> = Vec::new();
        for (i, (col, cell)) in key.fields().enumerate() {
            let idx = key.indices[i];
            match cell {
                Cell::Text(t) => {
                    params.push(Some(t));
                    conds.push(format!("{} = ${}::{}", quote_ident(&col.name), params.len(), shape.types[idx]));
                }
                _ => conds.push(format!("{} IS NULL", quote_ident(&col.name))),
            }
        }
        let stmt = format!("DELETE FROM {} WHERE {}", self.target, conds.join(" AND "));
        self.run(sql, &stmt, &params)
    }

    fn apply(&mut self, rec: &super::Record, sql: &mut dyn SqlSession) -> Result<()> {
        if self.envelope == EnvelopeKind::Debezium {
            let lsn = rec.commit_lsn.to_string();
            let key = rec.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
            let value = rec.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
            return self.run(
                sql,
                &format!("INSERT INTO {} (lsn, op, key, value) VALUES ($1::pg_lsn, $2, $3::jsonb, $4::jsonb)", self.target),
                &[Some(&lsn), Some(rec.draft.op.debezium_code()), key.as_deref(), value.as_deref()],
            );
        }
        match &rec.draft.payload {
            Payload::Row(row) => self.upsert(row, sql),
            Payload::Tombstone => match &rec.draft.key {
                Some(key) => self.delete(key, sql),
                None => Err(SinkError::permanent("tombstone without a key")),
            },
            Payload::Truncate(_) => sql.execute(&format!("TRUNCATE {}", self.target), &[]).map(|_| ()),
            Payload::Debezium(_) => Err(SinkError::permanent("debezium payload in a non-debezium table sink")),
            Payload::Message(_) => Err(SinkError::permanent("a logical message is not a row").hint("A table sink does not take the messages option.")),
            Payload::Schema(change) => self.alter(change, sql),
            // Rows are applied in the transaction they came in: its bounds are no rows.
            Payload::Transaction(_) => Ok(()),
        }
    }

    /// Follow a schema change of the source: rename, retype, drop and add the
    /// target's columns. A change of the key the target is keyed by stops the sink.
    fn alter(&mut self, change: &SchemaChange, sql: &mut dyn SqlSession) -> Result<()> {
        if change.key_changed() && self.envelope == EnvelopeKind::Upsert {
            return Err(schema_change::stopped(change, "The target table is keyed by the source's key, and a table target does not change its key."));
        }
        for a in change.alterations() {
            let stmt = match &a {
                Alteration::Rename { from, to } => {
                    for k in self.key_columns.iter_mut().filter(|k| *k == from) {
                        *k = to.clone();
                    }
                    format!("ALTER TABLE {} RENAME COLUMN {} TO {}", self.target, quote_ident(from), quote_ident(to))
                }
                Alteration::Retype { column, to, .. } => {
                    let to = checked_type(to, sql)?;
                    let c = quote_ident(column);
                    format!("ALTER TABLE {} ALTER COLUMN {c} TYPE {to} USING {c}::{to}", self.target)
                }
                Alteration::Drop { column } => format!("ALTER TABLE {} DROP COLUMN IF EXISTS {}", self.target, quote_ident(column)),
                Alteration::Add { column, ty } => {
                    format!("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}", self.target, quote_ident(column), checked_type(ty, sql)?)
                }
            };
            sql.execute(&stmt, &[]).map_err(|e| schema_change::stopped(change, &format!("The target refused it: {}", e.summary())))?;
        }
        self.shapes.clear();
        Ok(())
    }
}

/// A type name from a schema-change report, as the catalog spells it: it must name
/// a type (it is put into DDL as it is).
fn checked_type(ty: &str, sql: &mut dyn SqlSession) -> Result<String> {
    let found = sql.query("SELECT pg_catalog.format_type(pg_catalog.to_regtype($1), NULL)", &[Some(ty)])?;
    match found.first().and_then(|r| r.first().cloned().flatten()) {
        Some(_) => Ok(ty.to_string()),
        None => Err(SinkError::permanent(format!("\"{ty}\" is not a type")).hint("The schema change names a type this database does not have.")),
    }
}

/// Marks an error as the target's refusal of the row being applied.
const REFUSAL: usize = usize::MAX;

#[async_trait(?Send)]
impl Connector for TableConnector {
    async fn deliver(&mut self, batch: &Batch, sql: &mut dyn SqlSession) -> Result<()> {
        self.refused.clear();
        for (i, rec) in batch.records.iter().enumerate() {
            match self.apply(rec, sql) {
                Ok(()) => {}
                // The rows go into the step's own transaction: the refused one is
                // left out here and recorded with the step's progress.
                Err(e) if e.refused == [REFUSAL] => self.refused.push((i, SinkError { refused: Vec::new(), ..e })),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_aside_refusals(&mut self) {
        self.guarded = true;
    }

    fn take_refused(&mut self) -> Vec<(usize, SinkError)> {
        std::mem::take(&mut self.refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::Change;
    use crate::engine::change::OldImage;
    use crate::engine::connector::Record;
    use crate::engine::envelope::tests::{relation, t, txn};
    use crate::engine::envelope::{Draft, Envelope};

    /// Records statements; answers the two catalog queries the connector asks.
    #[derive(Default)]
    struct Recorder {
        statements: Vec<(String, Vec<Option<String>>)>,
        existing: Vec<&'static str>,
    }
    impl SqlSession for Recorder {
        fn execute(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64> {
            self.statements.push((sql.to_string(), params.iter().map(|p| p.map(str::to_string)).collect()));
            Ok(1)
        }
        fn query_or_none(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<Vec<Vec<Option<String>>>>> {
            self.query(sql, params).map(Some)
        }
        fn query(&mut self, sql: &str, _: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
            if sql.contains("format_type") {
                Ok(vec![vec![Some("integer".into())], vec![Some("text".into())]])
            } else {
                Ok(self.existing.iter().map(|c| vec![Some(c.to_string())]).collect())
            }
        }
    }

    fn batch_of(env: &mut Envelope, changes: Vec<Change>) -> Batch {
        let tx = txn(changes.clone());
        let mut drafts: Vec<Draft> = vec![];
        for c in changes {
            env.apply(&tx, c, tx.commit_lsn, &mut drafts).unwrap();
        }
        Batch {
            records: drafts
                .into_iter()
                .map(|d| Record { key: None, value: None, draft: d, commit_lsn: tx.commit_lsn, ordinal: 0, commit_time_us: 0, stamp: Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_schema_change_renames_retypes_drops_and_adds_target_columns_and_a_key_change_stops() {
        use crate::engine::schema_change::{SchemaChange, ShapeColumn, TableShape};
        let col = |attnum, name: &str, ty: &str| ShapeColumn { attnum, name: name.into(), ty: ty.into(), not_null: false };
        let shape = |columns, key: &[&str]| TableShape { schema: "public".into(), table: "t".into(), columns, key: key.iter().map(|k| k.to_string()).collect() };
        let before = shape(vec![col(1, "id", "integer"), col(2, "n", "integer"), col(3, "gone", "text")], &["id"]);
        let change = SchemaChange { relid: 1, before: Some(before.clone()), after: shape(vec![col(1, "key", "integer"), col(2, "n", "bigint"), col(4, "new", "text")], &["key"]) };
        let mut c = TableConnector { target: "\"b\".\"t\"".into(), envelope: EnvelopeKind::Upsert, key_columns: vec!["id".into()], shapes: HashMap::new(), guarded: false, refused: vec![] };
        let mut sql = Recorder::default();
        // The key's name changed: a table keyed by it cannot follow.
        let e = c.alter(&change, &mut sql).unwrap_err();
        assert!(e.message.contains("schema change of \"public.t\"") && e.hint.is_some(), "{e:?}");
        assert!(sql.statements.is_empty(), "nothing is altered");
        // Under append-only the key does not matter.
        c.envelope = EnvelopeKind::AppendOnly;
        c.alter(&change, &mut sql).unwrap();
        let stmts: Vec<&str> = sql.statements.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            stmts,
            vec![
                "ALTER TABLE \"b\".\"t\" RENAME COLUMN \"id\" TO \"key\"",
                "ALTER TABLE \"b\".\"t\" ALTER COLUMN \"n\" TYPE bigint USING \"n\"::bigint",
                "ALTER TABLE \"b\".\"t\" DROP COLUMN IF EXISTS \"gone\"",
                "ALTER TABLE \"b\".\"t\" ADD COLUMN IF NOT EXISTS \"new\" text",
            ]
        );
        assert_eq!(c.key_columns, vec!["key"], "the key follows its rename");
    }

    #[test]
    fn upsert_envelope_becomes_insert_on_conflict_delete_and_truncate() {
        let rel = relation();
        let cfg = ConnectorConfig {
            sink_name: "s".into(),
            database: "db".into(),
            sink_uid: "db-1-0".into(),
            envelope: EnvelopeKind::Upsert,
            key_columns: vec!["id".into()],
            options: [("table".to_string(), "\"b\".\"t\"".to_string())].into_iter().collect(),
            columns: vec![],
            password_required: false,
        };
        let mut c = build(&cfg).unwrap();
        let mut env = Envelope::new(EnvelopeKind::Upsert, false, vec!["id".into()], "s", "db");
        let batch = batch_of(
            &mut env,
            vec![
                Change::Insert { relation: rel.clone(), new: vec![t("1"), t("a")] },
                Change::Update { relation: rel.clone(), old: None, new: vec![t("1"), Cell::Unchanged] },
                Change::Delete { relation: rel.clone(), old: OldImage { key_only: true, cells: vec![t("1"), Cell::Null] } },
                Change::Truncate { relations: vec![rel], cascade: false, restart_identity: false },
            ],
        );
        let mut sql = Recorder { existing: vec!["id"], ..Default::default() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(c.deliver(&batch, &mut sql)).unwrap();
        let stmts: Vec<&str> = sql.statements.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            stmts,
            vec![
                "ALTER TABLE \"b\".\"t\" ADD COLUMN \"name\" text",
                "INSERT INTO \"b\".\"t\" (\"id\", \"name\") VALUES ($1::integer, $2::text) ON CONFLICT (\"id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\"",
                "INSERT INTO \"b\".\"t\" (\"id\") VALUES ($1::integer) ON CONFLICT (\"id\") DO NOTHING",
                "DELETE FROM \"b\".\"t\" WHERE \"id\" = $1::integer",
                "TRUNCATE \"b\".\"t\"",
            ]
        );
        assert_eq!(sql.statements[1].1, vec![Some("1".to_string()), Some("a".to_string())]);
    }

    /// Refuses, in a "subtransaction", every statement with the value "bad".
    struct Refusing(Recorder);
    impl SqlSession for Refusing {
        fn execute(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64> {
            self.0.execute(sql, params)
        }
        fn query_or_none(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<Vec<Vec<Option<String>>>>> {
            self.0.query_or_none(sql, params)
        }
        fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
            self.0.query(sql, params)
        }
        fn execute_guarded(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Result<u64>> {
            if params.contains(&Some("bad")) {
                return Ok(Err(SinkError::permanent("new row violates check constraint \"ok\"")));
            }
            Ok(self.execute(sql, params))
        }
    }

    #[test]
    fn a_guarded_table_sink_leaves_a_refused_row_out_and_says_which() {
        let rel = relation();
        let cfg = ConnectorConfig::for_test(&[("table", "\"b\".\"t\"")]);
        let mut c = build(&ConnectorConfig { envelope: EnvelopeKind::Upsert, key_columns: vec!["id".into()], ..cfg }).unwrap();
        let mut env = Envelope::new(EnvelopeKind::Upsert, false, vec!["id".into()], "s", "db");
        let rows = ["a", "bad", "c"].iter().enumerate().map(|(i, v)| Change::Insert { relation: rel.clone(), new: vec![t(&i.to_string()), t(v)] });
        let batch = batch_of(&mut env, rows.collect());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // Unguarded (errors.policy fail), the refusal is the batch's error.
        let mut sql = Refusing(Recorder { existing: vec!["id", "name"], ..Default::default() });
        rt.block_on(c.deliver(&batch, &mut sql)).unwrap();
        assert!(c.take_refused().is_empty(), "unguarded statements are not checked here");
        c.set_aside_refusals();
        let mut sql = Refusing(Recorder { existing: vec!["id", "name"], ..Default::default() });
        rt.block_on(c.deliver(&batch, &mut sql)).unwrap();
        let refused = c.take_refused();
        assert_eq!(refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1]);
        assert!(refused[0].1.message.contains("check constraint") && refused[0].1.refused.is_empty());
        assert_eq!(sql.0.statements.len(), 2, "the other rows are applied");
    }

    #[test]
    fn needs_a_target() {
        let cfg = ConnectorConfig {
            sink_name: "s".into(),
            database: "db".into(),
            sink_uid: "db-1-0".into(),
            envelope: EnvelopeKind::Upsert,
            key_columns: vec![],
            options: Default::default(),
            columns: vec![],
            password_required: false,
        };
        assert!(build(&cfg).is_err());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
