//! Records a target refuses for good (a Kafka record over the size limit, a
//! webhook's 4xx, a constraint the target table enforces, a value the Avro schema
//! cannot hold): what `errors.policy` does with them, and the change a dead letter
//! keeps so that `sink.retry_dead_letters()` can deliver it again.
//!
//! - `fail` (default): the sink stops, as for any permanent error.
//! - `skip`: the record is left out; a row without the change says where and why.
//! - `dead_letter`: the record is left out and its change is kept, readable and
//!   replayable.
//!
//! A dead letter is known by its transaction's commit LSN and its ordinal (the
//! record's position in its transaction): the step that finds one ends before
//! the batch, records it with the step's progress, and the next step reads the
//! same batch again without it ([`DeadSet`]). Replaying emits the kept change
//! as a transactional logical message ([`RETRY_PREFIX`]) that the sink's own
//! stream brings back at a new position, where it is enveloped and encoded as
//! any change is.

use base64::Engine as _;
use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Value};

use super::change::{Cell, Change, Column, OldImage, Relation};
use super::connector::Record;
use super::envelope::{Draft, Op, Payload, RowImage};
use super::error::{Result, SinkError};
use super::lsn::Lsn;
use super::types::PgType;

/// The prefix of the logical messages that replay dead letters.
pub const RETRY_PREFIX: &str = "pg_sink.retry";

/// What a record the target refuses for good does to the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Fail,
    Skip,
    DeadLetter,
}

impl Policy {
    pub fn parse(s: &str) -> Result<Policy> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "fail" => Ok(Policy::Fail),
            "skip" => Ok(Policy::Skip),
            "dead_letter" | "dlq" => Ok(Policy::DeadLetter),
            other => Err(SinkError::config(format!("invalid value for option \"errors.policy\": \"{other}\""))
                .detail("A record the target refuses for good can stop the sink, be skipped, or be kept as a dead letter.")
                .hint("Use fail (the default), skip or dead_letter.")),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Policy::Fail => "fail",
            Policy::Skip => "skip",
            Policy::DeadLetter => "dead_letter",
        }
    }
}

/// One refused record, as the glue writes it to `sink.dead_letters`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Commit LSN of its transaction (the snapshot's LSN for snapshot rows).
    pub lsn: Lsn,
    /// Its position in its transaction (in its chunk, for snapshot rows).
    pub ordinal: u32,
    /// The snapshot chunk it was read in.
    pub chunk: Option<u32>,
    pub op: &'static str,
    /// `schema.table`.
    pub relation: String,
    /// The key columns and their values, as a JSON object.
    pub key: Option<String>,
    /// The change, as [`change_json`] writes it; `None` under `skip`.
    pub change: Option<String>,
    pub error: String,
}

impl DeadLetter {
    /// The dead letter for `record`, refused with `error`.
    pub fn of(record: &Record, error: &SinkError, policy: Policy, chunk: Option<u32>) -> DeadLetter {
        DeadLetter::of_draft(&record.draft, record.commit_lsn, record.ordinal, error, policy, chunk)
    }

    /// The same for a draft refused before it became a record (its encoding failed).
    pub fn of_draft(draft: &Draft, lsn: Lsn, ordinal: u32, error: &SinkError, policy: Policy, chunk: Option<u32>) -> DeadLetter {
        let relation = draft_relation(draft).map(|r| r.qualified_name()).unwrap_or_default();
        let key = draft.key.as_ref().map(|k| {
            let map: serde_json::Map<String, Value> = k.fields().map(|(c, v)| (c.name.clone(), cell_json(v))).collect();
            Value::Object(map).to_string()
        });
        DeadLetter {
            lsn,
            ordinal,
            chunk,
            op: draft.op.as_str(),
            relation,
            key,
            change: (policy == Policy::DeadLetter).then(|| change_json(draft).to_string()),
            error: error.summary(),
        }
    }
}

/// The records of a sink's stream that are dead letters already: `(commit LSN,
/// ordinal)`. The pipeline leaves them out of the batches it builds.
pub type DeadSet = HashSet<(Lsn, u32)>;

fn draft_relation(draft: &Draft) -> Option<&Arc<Relation>> {
    match &draft.payload {
        Payload::Row(r) => Some(&r.relation),
        Payload::Debezium(e) => e.after.as_ref().or(e.before.as_ref()).map(|r| &r.relation),
        Payload::Truncate(rels) => rels.first(),
        Payload::Tombstone => draft.key.as_ref().map(|k| &k.relation),
        Payload::Message(_) | Payload::Schema(_) | Payload::Transaction(_) => None,
    }
}

fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Text(t) => Value::String(t.clone()),
        _ => Value::Null,
    }
}

fn cells_json(cells: &[Cell]) -> Value {
    Value::Array(cells.iter().map(cell_json).collect())
}

fn relation_json(r: &Relation) -> Value {
    json!({
        "schema": r.namespace,
        "table": r.name,
        "replica_identity": (r.replica_identity as char).to_string(),
        "columns": r.columns.iter().map(|c| json!({
            "name": c.name,
            "type": c.ty.name,
            "type_oid": c.ty.oid,
            "type_modifier": c.type_modifier,
            "key": c.is_identity,
        })).collect::<Vec<_>>(),
    })
}

/// The change behind a draft, as JSON: `op`, the relation as the stream described
/// it, and the row images (`new`, `old` with `old_key_only`), each cell text or
/// null. A debezium event's `source` is not kept: a replay is a new event.
pub fn change_json(draft: &Draft) -> Value {
    let image = |i: &RowImage| cells_json(&i.cells);
    let (op, old, new): (&str, Option<&RowImage>, Option<&RowImage>) = match &draft.payload {
        Payload::Row(row) => (if draft.op == Op::Update { "update" } else { "insert" }, None, Some(row)),
        Payload::Tombstone => ("delete", draft.key.as_ref(), None),
        Payload::Debezium(e) => match e.op {
            Op::Update => ("update", e.before.as_ref(), e.after.as_ref()),
            Op::Delete => ("delete", e.before.as_ref(), None),
            _ => ("insert", None, e.after.as_ref()),
        },
        Payload::Truncate(rels) => {
            return json!({"op": "truncate", "relations": rels.iter().map(|r| relation_json(r)).collect::<Vec<_>>()});
        }
        Payload::Schema(c) => {
            return json!({"op": "schema", "relid": c.relid});
        }
        Payload::Transaction(t) => {
            return json!({"op": "transaction", "id": t.id, "begin": t.begin});
        }
        Payload::Message(m) => {
            return json!({"op": "message", "prefix": m.prefix, "content_base64": base64::engine::general_purpose::STANDARD.encode(&m.content)});
        }
    };
    let Some(relation) = draft_relation(draft) else {
        return json!({"op": op});
    };
    // An old image holds every column under REPLICA IDENTITY FULL, the key otherwise.
    let key_only = relation.replica_identity != b'f';
    json!({
        "op": op,
        "relation": relation_json(relation),
        "old": old.map(image),
        "old_key_only": key_only,
        "new": new.map(image),
    })
}

fn bad(what: &str) -> SinkError {
    SinkError::permanent(format!("a dead letter to replay is malformed: {what}"))
        .hint("Delete it from sink.dead_letters; its change cannot be delivered again.")
}

fn relation_from(v: &Value, resolve: &mut dyn FnMut(u32) -> Option<PgType>) -> Result<Relation> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(k));
    let mut columns = Vec::new();
    for c in v.get("columns").and_then(Value::as_array).ok_or_else(|| bad("columns"))? {
        let oid = c.get("type_oid").and_then(Value::as_u64).ok_or_else(|| bad("type_oid"))? as u32;
        let mut ty = PgType::from_oid(oid);
        if !ty.is_resolved() {
            if let Some(t) = resolve(oid) {
                ty = t;
            }
        }
        columns.push(Column {
            name: c.get("name").and_then(Value::as_str).ok_or_else(|| bad("column name"))?.to_string(),
            ty,
            type_modifier: c.get("type_modifier").and_then(Value::as_i64).unwrap_or(-1) as i32,
            is_identity: c.get("key").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    Ok(Relation {
        id: 0,
        namespace: s("schema")?,
        name: s("table")?,
        replica_identity: s("replica_identity")?.bytes().next().unwrap_or(b'd'),
        columns,
        meta: None,
    })
}

fn cells_from(v: &Value, width: usize) -> Result<Vec<Cell>> {
    let cells: Vec<Cell> = v
        .as_array()
        .ok_or_else(|| bad("row image"))?
        .iter()
        .map(|c| match c {
            Value::String(s) => Ok(Cell::Text(s.clone())),
            Value::Null => Ok(Cell::Null),
            _ => Err(bad("cell")),
        })
        .collect::<Result<_>>()?;
    if cells.len() != width {
        return Err(bad("row image width"));
    }
    Ok(cells)
}

/// The change [`change_json`] wrote. `resolve` names types the engine does not
/// know by OID (as for the stream's relation messages).
pub fn change_from_json(v: &Value, resolve: &mut dyn FnMut(u32) -> Option<PgType>) -> Result<Change> {
    let op = v.get("op").and_then(Value::as_str).ok_or_else(|| bad("op"))?;
    if op == "truncate" {
        let relations = v
            .get("relations")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("relations"))?
            .iter()
            .map(|r| relation_from(r, resolve).map(Arc::new))
            .collect::<Result<_>>()?;
        return Ok(Change::Truncate { relations, cascade: false, restart_identity: false });
    }
    if op == "message" {
        let prefix = v.get("prefix").and_then(Value::as_str).ok_or_else(|| bad("prefix"))?.to_string();
        let content = v.get("content_base64").and_then(Value::as_str).ok_or_else(|| bad("content_base64"))?;
        let content = base64::engine::general_purpose::STANDARD.decode(content).map_err(|_| bad("content_base64"))?;
        return Ok(Change::Message { prefix, content: content.into() });
    }
    let relation = Arc::new(relation_from(v.get("relation").ok_or_else(|| bad("relation"))?, resolve)?);
    let width = relation.columns.len();
    let key_only = v.get("old_key_only").and_then(Value::as_bool).unwrap_or(true);
    let old = match v.get("old") {
        Some(o) if !o.is_null() => Some(OldImage { key_only, cells: cells_from(o, width)? }),
        _ => None,
    };
    let new = match v.get("new") {
        Some(n) if !n.is_null() => Some(cells_from(n, width)?),
        _ => None,
    };
    match (op, old, new) {
        ("insert", _, Some(new)) => Ok(Change::Insert { relation, new }),
        ("update", old, Some(new)) => Ok(Change::Update { relation, old, new }),
        ("delete", Some(old), _) => Ok(Change::Delete { relation, old }),
        _ => Err(bad("op and row images")),
    }
}

/// The content of a replay message: the sink it is for and the change.
pub fn retry_message(sink_id: i64, change: &Value) -> String {
    json!({"sink": sink_id, "change": change}).to_string()
}

/// The change of a replay message meant for `sink_id` (`None` for another sink's).
pub fn parse_retry(content: &[u8], sink_id: i64, resolve: &mut dyn FnMut(u32) -> Option<PgType>) -> Result<Option<Change>> {
    let v: Value = serde_json::from_slice(content).map_err(|e| bad(&e.to_string()))?;
    if v.get("sink").and_then(Value::as_i64) != Some(sink_id) {
        return Ok(None);
    }
    change_from_json(v.get("change").ok_or_else(|| bad("change"))?, resolve).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::Transaction;
    use crate::engine::envelope::tests::{relation, t, txn};
    use crate::engine::envelope::{Envelope, EnvelopeKind};

    fn drafts(kind: EnvelopeKind, change: Change) -> Vec<Draft> {
        let mut out = Vec::new();
        let tx: Transaction = txn(vec![]);
        Envelope::new(kind, false, vec!["id".to_string()], "s", "db").apply(&tx, change, tx.commit_lsn, &mut out).unwrap();
        out
    }

    #[test]
    fn a_change_survives_its_json_for_every_envelope() {
        let rel = relation();
        let row = vec![t("1"), Cell::Null];
        let changes = [
            Change::Insert { relation: rel.clone(), new: row.clone() },
            Change::Update { relation: rel.clone(), old: None, new: row.clone() },
            Change::Delete { relation: rel.clone(), old: OldImage { key_only: true, cells: vec![t("1"), Cell::Null] } },
            Change::Message { prefix: "outbox".into(), content: vec![0xff, b'{', 0].into() },
        ];
        for kind in [EnvelopeKind::Upsert, EnvelopeKind::Debezium, EnvelopeKind::AppendOnly] {
            for change in &changes {
                if kind == EnvelopeKind::AppendOnly && !matches!(change, Change::Insert { .. } | Change::Message { .. }) {
                    continue;
                }
                for d in drafts(kind, change.clone()) {
                    let v = change_json(&d);
                    let back = change_from_json(&v, &mut |_| None).unwrap();
                    // The replayed change gives the same draft again.
                    let again = drafts(kind, back);
                    assert_eq!(again.len(), 1, "{kind:?} {v}");
                    assert_eq!(change_json(&again[0]), v, "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn dead_letters_name_the_key_and_keep_the_change_only_when_asked() {
        let rel = relation();
        let d = drafts(EnvelopeKind::Upsert, Change::Insert { relation: rel, new: vec![t("7"), t("x")] }).remove(0);
        let e = SinkError::permanent("too large").detail("1 MB");
        let kept = DeadLetter::of_draft(&d, Lsn(0x10), 3, &e, Policy::DeadLetter, None);
        assert_eq!(kept.key.as_deref(), Some(r#"{"id":"7"}"#));
        assert_eq!(kept.error, "too large: 1 MB");
        assert_eq!((kept.op, kept.ordinal), ("insert", 3));
        assert!(kept.change.is_some());
        assert!(DeadLetter::of_draft(&d, Lsn(0x10), 3, &e, Policy::Skip, None).change.is_none());
    }

    #[test]
    fn replay_messages_are_for_one_sink_and_refuse_garbage() {
        let rel = relation();
        let d = drafts(EnvelopeKind::Upsert, Change::Insert { relation: rel, new: vec![t("7"), t("x")] }).remove(0);
        let m = retry_message(4, &change_json(&d));
        assert!(parse_retry(m.as_bytes(), 4, &mut |_| None).unwrap().is_some());
        assert!(parse_retry(m.as_bytes(), 5, &mut |_| None).unwrap().is_none());
        assert!(parse_retry(b"{\"sink\":4,\"change\":{\"op\":\"insert\"}}", 4, &mut |_| None).is_err());
        assert_eq!(Policy::parse("dead-letter").unwrap(), Policy::DeadLetter);
        assert_eq!(Policy::parse("nope").unwrap_err().kind, crate::engine::error::ErrorKind::InvalidConfig);
    }
}
