//! The change model the rest of the engine speaks: relations (a table's shape as
//! pgoutput describes it), row images made of text-format cells, and committed
//! transactions holding inserts, updates, deletes and truncates in commit order.

use std::sync::Arc;

use super::lsn::Lsn;
use super::types::PgType;

/// One column value as pgoutput sends it (text format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// An unchanged TOASTed value: pgoutput omits it from UPDATEs. It must never be
    /// emitted as NULL; the pipeline fills it from the old image or fails.
    Unchanged,
    Text(String),
}

impl Cell {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: PgType,
    pub type_modifier: i32,
    /// Part of the replica identity (pgoutput's column flag 1).
    pub is_identity: bool,
}

/// A table as the stream describes it. A new `Relation` message replaces the old one
/// when columns are added, dropped or retyped between changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
    /// What the catalog adds (NOT NULL, comments), for formats that need it (Avro).
    pub meta: Option<Arc<RelationMeta>>,
}

/// Catalog facts about a relation that pgoutput does not send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelationMeta {
    /// Per column (by index): declared NOT NULL.
    pub not_null: Vec<bool>,
    /// `COMMENT ON TABLE`.
    pub comment: Option<String>,
    /// Per column (by index): `COMMENT ON COLUMN`.
    pub column_comments: Vec<Option<String>>,
    /// Composite types used by the columns, by type OID: the type's comment and its
    /// attributes' comments.
    pub type_docs: std::collections::BTreeMap<u32, (Option<String>, std::collections::BTreeMap<String, String>)>,
    /// The labels of the enum types the columns use, by type OID, in sort order.
    pub enum_labels: std::collections::BTreeMap<u32, Vec<String>>,
}

impl Relation {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// The old row image of an update or delete: only the replica identity columns
/// (`key_only`, pgoutput `K`) or the whole row (`O`, REPLICA IDENTITY FULL).
#[derive(Debug, Clone, PartialEq)]
pub struct OldImage {
    pub key_only: bool,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Insert { relation: Arc<Relation>, new: Vec<Cell> },
    Update { relation: Arc<Relation>, old: Option<OldImage>, new: Vec<Cell> },
    Delete { relation: Arc<Relation>, old: OldImage },
    Truncate { relations: Vec<Arc<Relation>>, cascade: bool, restart_identity: bool },
    /// A transactional logical decoding message (`pg_logical_emit_message(true,
    /// prefix, content)`) with a prefix the sink delivers (its `messages` option).
    Message { prefix: String, content: Arc<[u8]> },
    /// A schema change of the sink's source, at its place in the stream (see
    /// [`super::schema_change`]).
    Schema(Arc<super::schema_change::SchemaChange>),
}

impl Change {
    pub fn op_name(&self) -> &'static str {
        match self {
            Change::Insert { .. } => "insert",
            Change::Update { .. } => "update",
            Change::Delete { .. } => "delete",
            Change::Truncate { .. } => "truncate",
            Change::Message { .. } => "message",
            Change::Schema(_) => "schema change",
        }
    }
}

/// A committed transaction. `end_lsn` is the position a sink confirms once the whole
/// transaction is durable at the target; a restart skips every transaction whose
/// `end_lsn` is at or below the confirmed position.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// True for the rows of the initial snapshot (Debezium `op: "r"`).
    pub snapshot: bool,
    pub changes: Vec<Change>,
    /// Where the transaction's first change lies in the WAL (its BEGIN message's
    /// position in the stream); `Lsn::ZERO` when not known.
    pub first_lsn: Lsn,
    /// The position of each change in `changes` (the pgoutput message that
    /// carried it); empty or `Lsn::ZERO` where not known (snapshot rows).
    pub lsns: Vec<Lsn>,
}

impl Transaction {
    /// Rows of the initial snapshot (or an export), read at `lsn`.
    pub fn snapshot(lsn: Lsn, commit_time_us: i64, changes: Vec<Change>) -> Self {
        Transaction { xid: 0, commit_lsn: lsn, end_lsn: lsn, commit_time_us, snapshot: true, changes, first_lsn: Lsn::ZERO, lsns: Vec::new() }
    }
}
