//! Envelopes turn one change into zero or more drafts of `(key, value)` records,
//! independent of how they are later encoded:
//!
//! * `append-only` — inserts only; with `force_append_only`, updates become inserts
//!   and deletes/truncates are dropped; without it an update or delete stops the sink.
//! * `upsert` — key + new row; a delete is a tombstone (value `None`); an update that
//!   changes the key first tombstones the old key.
//! * `debezium` — `before`/`after`/`op`/`source`/`ts_ms`, as Debezium's Postgres
//!   connector lays them out, so its consumers parse our output.

use std::collections::HashMap;
use std::sync::Arc;

use super::change::{Cell, Change, Column, OldImage, Relation, Transaction};
use super::error::{Result, SinkError};
use super::lsn::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    AppendOnly,
    Upsert,
    Debezium,
}

impl EnvelopeKind {
    pub fn parse(s: &str) -> Option<EnvelopeKind> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "append-only" | "append" | "plain" => Some(EnvelopeKind::AppendOnly),
            "upsert" => Some(EnvelopeKind::Upsert),
            "debezium" => Some(EnvelopeKind::Debezium),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            EnvelopeKind::AppendOnly => "append-only",
            EnvelopeKind::Upsert => "upsert",
            EnvelopeKind::Debezium => "debezium",
        }
    }
}

/// What happened, as the record's `op` header and for connectors that apply changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Snapshot,
    Insert,
    Update,
    Delete,
    Truncate,
    /// A logical decoding message (Debezium's `m`).
    Message,
    /// A schema change of the source, for targets that hold tables.
    Schema,
    /// A transaction's BEGIN or END event (Debezium's transaction metadata).
    Transaction,
}

impl Op {
    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Snapshot => "read",
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Message => "message",
            Op::Schema => "schema",
            Op::Transaction => "transaction",
        }
    }
    /// Debezium's one-letter operation code.
    pub fn debezium_code(&self) -> &'static str {
        match self {
            Op::Snapshot => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
            Op::Message => "m",
            Op::Schema => "s",
            Op::Transaction => "",
        }
    }
}

/// A projection of a row: which columns (by index into the relation), in which order.
#[derive(Debug, Clone, PartialEq)]
pub struct RowImage {
    pub relation: Arc<Relation>,
    pub indices: Arc<[usize]>,
    pub cells: Arc<[Cell]>,
}

impl RowImage {
    pub fn fields(&self) -> impl Iterator<Item = (&Column, &Cell)> {
        self.indices.iter().map(move |&i| (&self.relation.columns[i], &self.cells[i]))
    }
}

/// Where a Debezium event came from (`source` block).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub sink_name: String,
    pub database: String,
    pub schema: String,
    pub table: String,
    pub xid: u32,
    /// The change's position: its own under `debezium.compat` (as Debezium), its
    /// transaction's commit otherwise.
    pub lsn: Lsn,
    pub commit_time_us: i64,
    pub snapshot: bool,
    /// The end of the transaction before this one (Debezium's `sequence`, under
    /// `debezium.compat`); `None` when not known.
    pub last_commit: Option<Lsn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DebeziumEvent {
    pub before: Option<RowImage>,
    pub after: Option<RowImage>,
    pub op: Op,
    pub source: SourceInfo,
    /// Debezium's `transaction` block (`provide.transaction.metadata`).
    pub transaction: Option<TxBlock>,
    /// The table a truncate event empties (it has no row image to name it).
    pub truncated: Option<Arc<Relation>>,
}

/// Where an event stands in its transaction (Debezium's `transaction` block).
#[derive(Debug, Clone, PartialEq)]
pub struct TxBlock {
    /// `<xid>:<lsn of the change>`, as Debezium's Postgres connector names it.
    pub id: String,
    pub total_order: u64,
    pub data_collection_order: u64,
}

/// A transaction's BEGIN or END event (`provide.transaction.metadata`), Debezium's
/// `TransactionMetadataValue`: its key is `{"id": ..}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TxBoundary {
    pub begin: bool,
    /// `<xid>:<lsn>`: the BEGIN's position, or the COMMIT's end.
    pub id: String,
    /// END: events of the transaction, in all and per `schema.table` in order of
    /// first appearance.
    pub event_count: u64,
    pub data_collections: Vec<(String, u64)>,
    /// Commit time, milliseconds since the epoch.
    pub ts_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Upsert delete: the value is `null`.
    Tombstone,
    Row(RowImage),
    Debezium(Box<DebeziumEvent>),
    /// A truncate in a non-Debezium envelope: a control record with a `null` value and
    /// `op = truncate` header; connectors that hold state (tables) apply it.
    Truncate(Vec<Arc<Relation>>),
    /// A logical decoding message: its content is the value (the outbox pattern
    /// without an outbox table); under the debezium envelope, Debezium's message
    /// event (`op: "m"`, `source`, `message: {prefix, content}`).
    Message(Box<MessageEvent>),
    /// A schema change of the source: applied by targets that hold tables, never
    /// encoded into a record.
    Schema(Arc<super::schema_change::SchemaChange>),
    /// A transaction's BEGIN or END (Debezium's transaction metadata): Kafka
    /// sends it to the transaction topic, other targets get it in line.
    Transaction(Box<TxBoundary>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageEvent {
    pub prefix: String,
    pub content: Arc<[u8]>,
    /// Set under the debezium envelope (schema and table empty).
    pub source: Option<SourceInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub key: Option<RowImage>,
    pub payload: Payload,
    pub op: Op,
}

/// Envelope settings of one sink.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub kind: EnvelopeKind,
    pub force_append_only: bool,
    /// Key columns by name; empty = no key.
    pub key_columns: Vec<String>,
    pub sink_name: String,
    pub database: String,
    /// Debezium's own behaviour in the debezium envelope: a tombstone after each
    /// delete, and a key change as a delete, a tombstone and a create.
    pub debezium_compat: bool,
    /// Debezium's `tombstones.on.delete` (under `debezium_compat`): a tombstone
    /// follows each delete.
    pub tombstones: bool,
    /// Debezium's `provide.transaction.metadata`: BEGIN and END events around each
    /// transaction's events, and a `transaction` block in each event.
    pub transaction_metadata: bool,
    /// The end of the last transaction before the one being applied, kept by the
    /// pipeline (Debezium's `sequence`).
    pub last_commit: Option<Lsn>,
    /// Events of the open transaction: in all, and per `schema.table`.
    counts: (u64, Vec<(String, u64)>),
    key_cache: HashMap<u32, (Arc<Relation>, Arc<[usize]>, Arc<[usize]>)>,
}

impl Envelope {
    pub fn new(
        kind: EnvelopeKind,
        force_append_only: bool,
        key_columns: Vec<String>,
        sink_name: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        Envelope {
            kind,
            force_append_only,
            key_columns,
            sink_name: sink_name.into(),
            database: database.into(),
            debezium_compat: false,
            tombstones: true,
            transaction_metadata: false,
            last_commit: None,
            counts: (0, Vec::new()),
            key_cache: HashMap::new(),
        }
    }

    /// Behave as Debezium does (see [`Envelope::debezium_compat`]).
    pub fn debezium_compat(mut self, on: bool) -> Self {
        self.debezium_compat = on;
        self
    }

    /// Tombstones after deletes under `debezium_compat` (see [`Envelope::tombstones`]).
    pub fn tombstones(mut self, on: bool) -> Self {
        self.tombstones = on;
        self
    }

    /// BEGIN and END events, and `transaction` blocks (see [`Envelope::transaction_metadata`]).
    pub fn transaction_metadata(mut self, on: bool) -> Self {
        self.transaction_metadata = on;
        self
    }

    fn event(&self, txn: &Transaction, rel: &Relation, lsn: Lsn, before: Option<RowImage>, after: Option<RowImage>, op: Op) -> Payload {
        Payload::Debezium(Box::new(DebeziumEvent { before, after, op, source: self.source(txn, rel, lsn), transaction: None, truncated: None }))
    }

    fn boundary(txn: &Transaction, begin: bool, at: Lsn, event_count: u64, data_collections: Vec<(String, u64)>) -> Draft {
        let id = format!("{}:{}", txn.xid, at.0);
        let ts_ms = txn.commit_time_us.div_euclid(1000);
        Draft { key: None, payload: Payload::Transaction(Box::new(TxBoundary { begin, id, event_count, data_collections, ts_ms })), op: Op::Transaction }
    }

    /// A transaction starts (before its first change, or its first part's): its
    /// BEGIN event under transaction metadata. Snapshot rows have none.
    pub fn begin(&mut self, txn: &Transaction, out: &mut Vec<Draft>) {
        self.counts = (0, Vec::new());
        if self.transaction_metadata && !txn.snapshot {
            let at = if txn.first_lsn == Lsn::ZERO { txn.commit_lsn } else { txn.first_lsn };
            out.push(Self::boundary(txn, true, at, 0, Vec::new()));
        }
    }

    /// A transaction ends (after its last change): its END event under transaction
    /// metadata, which counts its events.
    pub fn end(&mut self, txn: &Transaction, out: &mut Vec<Draft>) {
        if self.transaction_metadata && !txn.snapshot {
            let (total, per_table) = std::mem::take(&mut self.counts);
            out.push(Self::boundary(txn, false, txn.end_lsn, total, per_table));
        }
    }

    /// Number the Debezium events in `drafts` within their transaction.
    fn count(&mut self, txn: &Transaction, lsn: Lsn, drafts: &mut [Draft]) {
        for draft in drafts {
            let Payload::Debezium(ev) = &mut draft.payload else { continue };
            let (schema, table) = (&ev.source.schema, &ev.source.table);
            let named = |(t, _): &(String, u64)| t.strip_prefix(schema.as_str()).and_then(|r| r.strip_prefix('.')) == Some(table.as_str());
            self.counts.0 += 1;
            let per = match self.counts.1.iter().position(named) {
                Some(i) => &mut self.counts.1[i].1,
                None => {
                    self.counts.1.push((format!("{schema}.{table}"), 0));
                    &mut self.counts.1.last_mut().expect("just pushed").1
                }
            };
            *per += 1;
            ev.transaction = Some(TxBlock { id: format!("{}:{}", txn.xid, lsn.0), total_order: self.counts.0, data_collection_order: *per });
        }
    }

    /// `(key indices, all-column indices)` for a relation, cached until it changes.
    fn indices(&mut self, rel: &Arc<Relation>) -> Result<(Arc<[usize]>, Arc<[usize]>)> {
        if let Some((cached, key, all)) = self.key_cache.get(&rel.id) {
            if Arc::ptr_eq(cached, rel) || **cached == **rel {
                return Ok((key.clone(), all.clone()));
            }
        }
        let mut key = Vec::with_capacity(self.key_columns.len());
        for name in &self.key_columns {
            let idx = rel.column_index(name).ok_or_else(|| {
                SinkError::permanent(format!("key column \"{name}\" is no longer in relation \"{}\"", rel.qualified_name()))
                    .hint("A key column was dropped or renamed; recreate the sink with a valid KEY.")
            })?;
            key.push(idx);
        }
        let key: Arc<[usize]> = key.into();
        let all: Arc<[usize]> = (0..rel.columns.len()).collect::<Vec<_>>().into();
        self.key_cache.insert(rel.id, (rel.clone(), key.clone(), all.clone()));
        Ok((key, all))
    }

    fn image(rel: &Arc<Relation>, indices: &Arc<[usize]>, cells: &Arc<[Cell]>) -> RowImage {
        RowImage { relation: rel.clone(), indices: indices.clone(), cells: cells.clone() }
    }

    fn key_of(&self, rel: &Arc<Relation>, key: &Arc<[usize]>, cells: &Arc<[Cell]>) -> Option<RowImage> {
        if self.key_columns.is_empty() {
            None
        } else {
            Some(Self::image(rel, key, cells))
        }
    }

    fn source(&self, txn: &Transaction, rel: &Relation, lsn: Lsn) -> SourceInfo {
        SourceInfo {
            sink_name: self.sink_name.clone(),
            database: self.database.clone(),
            schema: rel.namespace.clone(),
            table: rel.name.clone(),
            xid: txn.xid,
            lsn: if self.debezium_compat { lsn } else { txn.commit_lsn },
            commit_time_us: txn.commit_time_us,
            snapshot: txn.snapshot,
            last_commit: if txn.snapshot { None } else { self.last_commit },
        }
    }

    /// Append the drafts for one change of `txn`, found at `lsn` in the WAL, to
    /// `out`. Unchanged TOAST cells must already be resolved by the caller (see
    /// `pipeline`).
    pub fn apply(&mut self, txn: &Transaction, change: Change, lsn: Lsn, out: &mut Vec<Draft>) -> Result<()> {
        let start = out.len();
        self.apply_change(txn, change, lsn, out)?;
        if self.transaction_metadata && !txn.snapshot {
            self.count(txn, lsn, &mut out[start..]);
        }
        Ok(())
    }

    fn apply_change(&mut self, txn: &Transaction, change: Change, lsn: Lsn, out: &mut Vec<Draft>) -> Result<()> {
        let insert_op = if txn.snapshot { Op::Snapshot } else { Op::Insert };
        match change {
            Change::Insert { relation, new } => {
                let relation = &relation;
                let (key, all) = self.indices(relation)?;
                let cells: Arc<[Cell]> = new.into();
                let key = self.key_of(relation, &key, &cells);
                let payload = match self.kind {
                    EnvelopeKind::Debezium => self.event(txn, relation, lsn, None, Some(Self::image(relation, &all, &cells)), insert_op),
                    _ => Payload::Row(Self::image(relation, &all, &cells)),
                };
                out.push(Draft { key, payload, op: insert_op });
            }
            Change::Update { relation, old, new } => {
                let relation = &relation;
                let (key, all) = self.indices(relation)?;
                let cells: Arc<[Cell]> = new.into();
                match self.kind {
                    EnvelopeKind::AppendOnly => {
                        if !self.force_append_only {
                            return Err(not_append_only("UPDATE", relation));
                        }
                        let key = self.key_of(relation, &key, &cells);
                        out.push(Draft { key, payload: Payload::Row(Self::image(relation, &all, &cells)), op: Op::Insert });
                    }
                    EnvelopeKind::Upsert => {
                        if let Some(old) = old {
                            let old_cells: Arc<[Cell]> = old.cells.into();
                            let key_changed = key.iter().any(|&i| old_cells[i] != cells[i]);
                            if key_changed {
                                out.push(Draft { key: Some(Self::image(relation, &key, &old_cells)), payload: Payload::Tombstone, op: Op::Delete });
                            }
                        }
                        out.push(Draft {
                            key: Some(Self::image(relation, &key, &cells)),
                            payload: Payload::Row(Self::image(relation, &all, &cells)),
                            op: Op::Update,
                        });
                    }
                    EnvelopeKind::Debezium if self.debezium_compat && old.as_ref().is_some_and(|o| key.iter().any(|&i| o.cells[i] != cells[i])) => {
                        // Debezium: a key change is a delete of the old key (and its
                        // tombstone), then a create of the new one.
                        let old_cells: Arc<[Cell]> = old.map(|o| o.cells).unwrap_or_default().into();
                        let old_key = self.key_of(relation, &key, &old_cells);
                        let before = Self::image(relation, &all, &old_cells);
                        out.push(Draft { key: old_key.clone(), payload: self.event(txn, relation, lsn, Some(before), None, Op::Delete), op: Op::Delete });
                        if self.tombstones {
                            out.push(Draft { key: old_key, payload: Payload::Tombstone, op: Op::Delete });
                        }
                        let after = Self::image(relation, &all, &cells);
                        out.push(Draft {
                            key: self.key_of(relation, &key, &cells),
                            payload: self.event(txn, relation, lsn, None, Some(after), Op::Insert),
                            op: Op::Insert,
                        });
                    }
                    EnvelopeKind::Debezium => {
                        let before = old.map(|o| Self::image(relation, &all, &o.cells.into()));
                        out.push(Draft {
                            key: self.key_of(relation, &key, &cells),
                            payload: self.event(txn, relation, lsn, before, Some(Self::image(relation, &all, &cells)), Op::Update),
                            op: Op::Update,
                        });
                    }
                }
            }
            Change::Delete { relation, old } => {
                let relation = &relation;
                let (key, all) = self.indices(relation)?;
                let OldImage { cells, .. } = old;
                let cells: Arc<[Cell]> = cells.into();
                match self.kind {
                    EnvelopeKind::AppendOnly => {
                        if !self.force_append_only {
                            return Err(not_append_only("DELETE", relation));
                        }
                    }
                    EnvelopeKind::Upsert => {
                        out.push(Draft { key: Some(Self::image(relation, &key, &cells)), payload: Payload::Tombstone, op: Op::Delete })
                    }
                    EnvelopeKind::Debezium => {
                        let key = self.key_of(relation, &key, &cells);
                        let event = self.event(txn, relation, lsn, Some(Self::image(relation, &all, &cells)), None, Op::Delete);
                        out.push(Draft { key: key.clone(), payload: event, op: Op::Delete });
                        // Debezium follows a delete with a tombstone for its key, so
                        // compacted topics forget the row.
                        if self.debezium_compat && self.tombstones && key.is_some() {
                            out.push(Draft { key, payload: Payload::Tombstone, op: Op::Delete });
                        }
                    }
                }
            }
            Change::Truncate { relations, .. } => match self.kind {
                EnvelopeKind::AppendOnly if self.force_append_only => {}
                EnvelopeKind::AppendOnly => {
                    return Err(not_append_only("TRUNCATE", &relations[0]));
                }
                EnvelopeKind::Upsert => out.push(Draft { key: None, payload: Payload::Truncate(relations), op: Op::Truncate }),
                EnvelopeKind::Debezium => {
                    for rel in &relations {
                        out.push(Draft {
                            key: None,
                            payload: Payload::Debezium(Box::new(DebeziumEvent {
                                before: None,
                                after: None,
                                op: Op::Truncate,
                                source: self.source(txn, rel, lsn),
                                transaction: None,
                                truncated: Some(rel.clone()),
                            })),
                            op: Op::Truncate,
                        });
                    }
                }
            },
            Change::Schema(change) => out.push(Draft { key: None, payload: Payload::Schema(change), op: Op::Schema }),
            Change::Message { prefix, content } => {
                // Every envelope delivers a message as it is (no row, no key column).
                let source = (self.kind == EnvelopeKind::Debezium).then(|| SourceInfo {
                    sink_name: self.sink_name.clone(),
                    database: self.database.clone(),
                    schema: String::new(),
                    table: String::new(),
                    xid: txn.xid,
                    lsn: if self.debezium_compat { lsn } else { txn.commit_lsn },
                    commit_time_us: txn.commit_time_us,
                    snapshot: false,
                    last_commit: self.last_commit,
                });
                out.push(Draft { key: None, payload: Payload::Message(Box::new(MessageEvent { prefix, content, source })), op: Op::Message });
            }
        }
        Ok(())
    }
}

fn not_append_only(what: &str, rel: &Relation) -> SinkError {
    SinkError::permanent(format!("append-only sink received an {what} on \"{}\"", rel.qualified_name()))
        .detail("An append-only sink can only deliver inserts.")
        .hint("Use the upsert or debezium envelope, or set force_append_only = true to turn updates into inserts and drop deletes.")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::types::PgType;

    pub fn relation() -> Arc<Relation> {
        let col = |name: &str, oid: u32, key: bool| Column { name: name.into(), ty: PgType::from_oid(oid), type_modifier: -1, is_identity: key };
        Arc::new(Relation {
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: vec![col("id", 23, true), col("name", 25, false)],
            meta: None,
        })
    }

    pub fn txn(changes: Vec<Change>) -> Transaction {
        Transaction { xid: 7, commit_lsn: Lsn(0x100), end_lsn: Lsn(0x130), commit_time_us: 1_720_032_185_312_345, snapshot: false, changes, first_lsn: Lsn::ZERO, lsns: Vec::new() }
    }

    pub fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn run(env: &mut Envelope, change: Change) -> Result<Vec<Draft>> {
        let tx = txn(vec![change.clone()]);
        let mut out = vec![];
        env.apply(&tx, change, tx.commit_lsn, &mut out)?;
        Ok(out)
    }

    fn key_text(d: &Draft) -> Vec<String> {
        d.key.as_ref().unwrap().fields().map(|(_, c)| c.as_text().unwrap_or("NULL").to_string()).collect()
    }

    #[test]
    fn upsert_update_changing_key_tombstones_old_key() {
        let rel = relation();
        let mut env = Envelope::new(EnvelopeKind::Upsert, false, vec!["id".into()], "s", "db");
        let out = run(
            &mut env,
            Change::Update {
                relation: rel.clone(),
                old: Some(OldImage { key_only: true, cells: vec![t("1"), Cell::Null] }),
                new: vec![t("2"), t("b")],
            },
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].payload, Payload::Tombstone);
        assert_eq!(key_text(&out[0]), vec!["1"]);
        assert_eq!(key_text(&out[1]), vec!["2"]);
        assert!(matches!(out[1].payload, Payload::Row(_)));
    }

    #[test]
    fn upsert_delete_is_tombstone_and_update_without_key_change_is_one_record() {
        let rel = relation();
        let mut env = Envelope::new(EnvelopeKind::Upsert, false, vec!["id".into()], "s", "db");
        let del = run(&mut env, Change::Delete { relation: rel.clone(), old: OldImage { key_only: true, cells: vec![t("5"), Cell::Null] } }).unwrap();
        assert_eq!(del.len(), 1);
        assert_eq!(del[0].payload, Payload::Tombstone);
        assert_eq!(key_text(&del[0]), vec!["5"]);
        let upd = run(&mut env, Change::Update { relation: rel, old: None, new: vec![t("5"), t("x")] }).unwrap();
        assert_eq!(upd.len(), 1);
        assert_eq!(upd[0].op, Op::Update);
    }

    #[test]
    fn append_only_rejects_updates_unless_forced() {
        let rel = relation();
        let upd = Change::Update { relation: rel.clone(), old: None, new: vec![t("1"), t("a")] };
        let del = Change::Delete { relation: rel, old: OldImage { key_only: true, cells: vec![t("1"), Cell::Null] } };
        let mut strict = Envelope::new(EnvelopeKind::AppendOnly, false, vec![], "s", "db");
        let err = run(&mut strict, upd.clone()).unwrap_err();
        assert_eq!(err.kind, crate::engine::error::ErrorKind::Permanent);
        assert!(err.hint.unwrap().contains("force_append_only"));
        let mut forced = Envelope::new(EnvelopeKind::AppendOnly, true, vec![], "s", "db");
        let out = run(&mut forced, upd).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].op, Op::Insert);
        assert!(out[0].key.is_none());
        assert!(run(&mut forced, del).unwrap().is_empty());
    }

    #[test]
    fn debezium_carries_before_after_and_op() {
        let rel = relation();
        let mut env = Envelope::new(EnvelopeKind::Debezium, false, vec![], "s", "db");
        let out = run(
            &mut env,
            Change::Update { relation: rel.clone(), old: Some(OldImage { key_only: false, cells: vec![t("1"), t("a")] }), new: vec![t("1"), t("b")] },
        )
        .unwrap();
        let Payload::Debezium(ev) = &out[0].payload else { panic!("not debezium") };
        assert_eq!(ev.op.debezium_code(), "u");
        assert_eq!(ev.before.as_ref().unwrap().cells[1], t("a"));
        assert_eq!(ev.after.as_ref().unwrap().cells[1], t("b"));
        assert_eq!(ev.source.table, "t");
        let tr = run(&mut env, Change::Truncate { relations: vec![rel], cascade: false, restart_identity: false }).unwrap();
        let Payload::Debezium(ev) = &tr[0].payload else { panic!("not debezium") };
        assert_eq!(ev.op.debezium_code(), "t");
    }

    #[test]
    fn dropped_key_column_is_a_permanent_error() {
        let mut env = Envelope::new(EnvelopeKind::Upsert, false, vec!["gone".into()], "s", "db");
        let err = run(&mut env, Change::Insert { relation: relation(), new: vec![t("1"), t("a")] }).unwrap_err();
        assert!(err.message.contains("\"gone\""));
    }
}
