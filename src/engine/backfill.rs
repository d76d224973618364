//! Backfill chunks read while the stream flows (DBLog's watermarks, with
//! Postgres' visibility rules doing the window's work).
//!
//! The glue reads a chunk of the source by key (`WHERE (key) > (last) ORDER BY
//! key LIMIT n`) in one statement that also returns its snapshot `S`, then writes
//! a sealed, non-transactional watermark message naming the chunk. The message
//! is decoded at its WAL position `W`, after every transaction `S` sees (those
//! committed before `S` was taken, hence before `W`). While the chunk waits for
//! `W` ([`Chunk::observe`]), a transaction `S` does not see that touches one of
//! its keys drops that row: the stream carries the newer one. At `W` the rows
//! left go out as reads, so per key the target gets the chunk's row after every
//! change it already holds and before every change it does not.
//!
//! A transaction `S` does not see that the stream already delivered (its commit
//! record was flushed and decoded before the proc array showed it ended, as under
//! synchronous replication) would make the chunk older than the target:
//! [`RecentXids`] keeps what was fed, and such a chunk is read again.
//! A schema change, or a truncate the snapshot did not see, before `W` voids the
//! chunk too.
//!
//! After a crash the chunk in memory is gone; the catalog's last key says where
//! the next one starts, and a watermark naming another chunk is ignored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::change::{Cell, Change, Relation, Transaction};
use super::error::{Result, SinkError};
use super::lsn::Lsn;

/// The prefix of the watermark messages (non-transactional, sealed).
pub const WATERMARK_PREFIX: &str = "pg_sink.backfill";

/// A key's values, in the key's column order, as text (`None`: NULL).
pub type Key = Vec<Option<String>>;

/// Which chunk of which backfill of which sink a watermark names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkId {
    pub sink: i64,
    pub backfill: i64,
    pub number: i64,
}

impl ChunkId {
    /// The watermark's payload (sealed by the glue).
    pub fn payload(&self) -> String {
        format!("{}:{}:{}", self.sink, self.backfill, self.number)
    }

    pub fn parse(payload: &[u8]) -> Option<ChunkId> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut it = text.split(':').map(|p| p.parse::<i64>().ok());
        let id = ChunkId { sink: it.next()??, backfill: it.next()??, number: it.next()?? };
        it.next().is_none().then_some(id)
    }
}

/// A snapshot as `pg_current_snapshot()` prints it: `xmin:xmax:xip,...`, in
/// 64-bit transaction ids; the stream's ids are their low 32 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u32,
    xmax: u32,
    xip: HashSet<u32>,
}

/// `a` comes before `b` in the 32-bit transaction id circle.
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Snapshot {
    pub fn parse(text: &str) -> Result<Snapshot> {
        let bad = || SinkError::transient(format!("unreadable snapshot \"{text}\""));
        let mut parts = text.trim().splitn(3, ':');
        let xid = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok()).map(|x| x as u32);
        let xmin = xid(parts.next()).ok_or_else(bad)?;
        let xmax = xid(parts.next()).ok_or_else(bad)?;
        let xip = match parts.next() {
            None | Some("") => HashSet::new(),
            Some(list) => list.split(',').map(|s| xid(Some(s))).collect::<Option<_>>().ok_or_else(bad)?,
        };
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// Whether the transaction `xid` had committed for this snapshot.
    pub fn sees(&self, xid: u32) -> bool {
        if precedes(xid, self.xmin) {
            return true;
        }
        precedes(xid, self.xmax) && !self.xip.contains(&xid)
    }

}

/// The transaction ids the pipeline was fed lately, oldest dropped first.
#[derive(Debug, Default)]
pub struct RecentXids {
    order: VecDeque<u32>,
    set: HashSet<u32>,
}

impl RecentXids {
    const KEEP: usize = 65_536;

    pub fn push(&mut self, xid: u32) {
        if xid == 0 || !self.set.insert(xid) {
            return;
        }
        self.order.push_back(xid);
        if self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// A transaction `snapshot` does not see was already fed.
    pub fn any_unseen_by(&self, snapshot: &Snapshot) -> bool {
        self.order.iter().any(|&x| !snapshot.sees(x))
    }
}

/// Where a backfill stands after a chunk's watermark came: recorded with the
/// progress of the step that delivered the chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub id: ChunkId,
    /// Rows read in the chunk, and delivered (the rest the stream carried).
    pub read: usize,
    pub delivered: usize,
    /// Where the next chunk starts.
    pub last_key: Option<Key>,
    /// The chunk was full: there may be more.
    pub more: bool,
    /// The chunk was voided: the same range is read again.
    pub again: bool,
}

/// A chunk read and waiting for its watermark.
#[derive(Debug)]
pub struct Chunk {
    pub id: ChunkId,
    relation: Arc<Relation>,
    /// Positions of the key's columns in `relation`.
    key_columns: Vec<usize>,
    snapshot: Snapshot,
    /// The rows read, as inserts into `relation`, by key.
    rows: Vec<Change>,
    index: HashMap<Key, usize>,
    dropped: HashSet<usize>,
    /// The key of the last row read: where the next chunk starts.
    pub last_key: Option<Key>,
    /// The read returned as many rows as it asked for: more may follow.
    pub full: bool,
    /// A schema change or truncate came before the watermark: read it again.
    void: bool,
}

/// What a chunk's watermark brought.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrived {
    /// Rows to deliver as reads (some may have been dropped), and where the
    /// backfill stands after them.
    Rows { id: ChunkId, txn: Transaction, read: usize, last_key: Option<Key>, more: bool },
    /// The chunk was voided: the same range is read again.
    Again { id: ChunkId },
}

impl Chunk {
    /// A chunk of `rows` (cells in `relation`'s column order) read under
    /// `snapshot`; `key` names the key's columns; `limit` is how many rows the
    /// read asked for.
    pub fn new(id: ChunkId, relation: Arc<Relation>, key: &[String], snapshot: Snapshot, rows: Vec<Vec<Cell>>, limit: usize) -> Result<Chunk> {
        let key_columns = key
            .iter()
            .map(|k| {
                relation
                    .column_index(k)
                    .ok_or_else(|| SinkError::permanent(format!("key column \"{k}\" is not among the columns of {}", relation.qualified_name())))
            })
            .collect::<Result<Vec<_>>>()?;
        let full = rows.len() >= limit && limit > 0;
        let mut index = HashMap::with_capacity(rows.len());
        let mut changes = Vec::with_capacity(rows.len());
        let mut last_key = None;
        for (i, cells) in rows.into_iter().enumerate() {
            let k = key_of(&key_columns, &cells);
            index.insert(k.clone(), i);
            last_key = Some(k);
            changes.push(Change::Insert { relation: relation.clone(), new: cells });
        }
        Ok(Chunk { id, relation, key_columns, snapshot, rows: changes, index, dropped: HashSet::new(), last_key, full, void: false })
    }

    /// Rows read.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether a transaction fed before the chunk was read is one its snapshot
    /// does not see (see the module doc): the chunk must be read again.
    pub fn tainted_by(&self, recent: &RecentXids) -> bool {
        recent.any_unseen_by(&self.snapshot)
    }

    /// A transaction (or a part of one) decoded before the watermark.
    pub fn observe(&mut self, txn: &Transaction) {
        let unseen = !self.snapshot.sees(txn.xid);
        for change in &txn.changes {
            match change {
                Change::Schema(s) if s.relid == self.relation.id => self.void = true,
                // A truncate the snapshot saw is in the chunk already.
                Change::Truncate { relations, .. } if unseen && relations.iter().any(|r| r.id == self.relation.id) => self.void = true,
                Change::Insert { relation, new } if unseen => self.drop_key(relation, new),
                Change::Update { relation, old, new } if unseen => {
                    if let Some(old) = old {
                        self.drop_key(relation, &old.cells);
                    }
                    self.drop_key(relation, new);
                }
                Change::Delete { relation, old } if unseen => self.drop_key(relation, &old.cells),
                _ => {}
            }
        }
    }

    fn drop_key(&mut self, relation: &Relation, cells: &[Cell]) {
        if relation.id != self.relation.id {
            return;
        }
        // The stream's relation may number columns differently (a column
        // dropped since): the key is matched by column name.
        let mut key = Vec::with_capacity(self.key_columns.len());
        for &i in &self.key_columns {
            let name = &self.relation.columns[i].name;
            match relation.column_index(name).and_then(|j| cells.get(j)) {
                Some(Cell::Text(t)) => key.push(Some(t.clone())),
                Some(Cell::Null) => key.push(None),
                // A key that did not come whole cannot be matched: play safe.
                _ => {
                    self.void = true;
                    return;
                }
            }
        }
        if let Some(&i) = self.index.get(&key) {
            self.dropped.insert(i);
        }
    }

    /// The watermark arrived at `at` (the end of its WAL record): the rows left,
    /// as a transaction of reads just before it. The rows have the shape the
    /// catalog gave the read: an ALTER TABLE the read saw reached the stream (and
    /// the target) before the watermark; one it did not see voided the chunk.
    pub fn arrive(self, at: Lsn, now_us: i64) -> Arrived {
        if self.void {
            return Arrived::Again { id: self.id };
        }
        let read = self.rows.len();
        let dropped = self.dropped;
        let rows: Vec<Change> = self.rows.into_iter().enumerate().filter(|(i, _)| !dropped.contains(i)).map(|(_, c)| c).collect();
        // A logical message's position is the end of its WAL record, where the
        // next transaction's commit record may begin: the chunk is placed just
        // before it and confirmed up to it (a stream from there does not send the
        // watermark again; a commit at `at` is still to come).
        let mut txn = Transaction::snapshot(Lsn(at.0.saturating_sub(1)), now_us, rows);
        txn.end_lsn = at;
        Arrived::Rows { id: self.id, txn, read, last_key: self.last_key, more: self.full }
    }
}

fn key_of(columns: &[usize], cells: &[Cell]) -> Key {
    columns.iter().map(|&i| cells.get(i).and_then(|c| c.as_text()).map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::{Column, OldImage};
    use crate::engine::types::PgType;

    fn rel(id: u32, cols: &[&str]) -> Arc<Relation> {
        Arc::new(Relation {
            id,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: cols.iter().map(|c| Column { name: c.to_string(), ty: PgType::from_oid(23), type_modifier: -1, is_identity: *c == "id" }).collect(),
            meta: None,
        })
    }

    fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn chunk(snapshot: &str) -> Chunk {
        let rows = (1..=4).map(|i| vec![t(&i.to_string()), t("old")]).collect();
        Chunk::new(ChunkId { sink: 1, backfill: 1, number: 0 }, rel(7, &["id", "v"]), &["id".into()], Snapshot::parse(snapshot).unwrap(), rows, 4).unwrap()
    }

    fn txn(xid: u32, changes: Vec<Change>) -> Transaction {
        Transaction { xid, commit_lsn: Lsn(1), end_lsn: Lsn(2), commit_time_us: 0, snapshot: false, changes, first_lsn: Lsn::ZERO, lsns: vec![] }
    }

    fn delivered(a: Arrived) -> Vec<String> {
        match a {
            Arrived::Rows { txn, .. } => txn
                .changes
                .iter()
                .map(|c| match c {
                    Change::Insert { new, .. } => new[0].as_text().unwrap().to_string(),
                    _ => unreachable!(),
                })
                .collect(),
            Arrived::Again { .. } => vec!["again".into()],
        }
    }

    #[test]
    fn parses_snapshots_and_tells_visibility_across_the_id_circle() {
        let s = Snapshot::parse("100:105:100,103").unwrap();
        assert!(s.sees(99) && s.sees(101) && s.sees(104));
        assert!(!s.sees(100) && !s.sees(103) && !s.sees(105) && !s.sees(200));
        // 64-bit ids of a later epoch compare by their low 32 bits.
        let e = Snapshot::parse(&format!("{}:{}:", (1u64 << 32) + 5, (1u64 << 32) + 9)).unwrap();
        assert!(e.sees(4) && e.sees(8) && !e.sees(9));
        let w = Snapshot::parse(&format!("{}:{}:", u32::MAX as u64 - 1, u32::MAX as u64 + 3)).unwrap();
        assert!(w.sees(u32::MAX - 2) && w.sees(u32::MAX) && w.sees(1) && !w.sees(2) && !w.sees(3));
        assert!(Snapshot::parse("x:1:").is_err() && Snapshot::parse("1").is_err());
    }

    #[test]
    fn a_change_the_snapshot_did_not_see_drops_its_keys_and_one_it_saw_does_not() {
        let r = rel(7, &["id", "v"]);
        let mut c = chunk("100:105:103");
        // Seen by the snapshot (committed before it): the chunk has it already.
        c.observe(&txn(101, vec![Change::Insert { relation: r.clone(), new: vec![t("1"), t("new")] }]));
        // Not seen: the stream carries the newer row of 2 (update), 3 (delete), and
        // the update that moved key 4 to 9.
        c.observe(&txn(103, vec![Change::Update { relation: r.clone(), old: None, new: vec![t("2"), t("new")] }]));
        c.observe(&txn(
            106,
            vec![
                Change::Delete { relation: r.clone(), old: OldImage { key_only: true, cells: vec![t("3"), Cell::Null] } },
                Change::Update { relation: r.clone(), old: Some(OldImage { key_only: true, cells: vec![t("4"), Cell::Null] }), new: vec![t("9"), t("x")] },
            ],
        ));
        // Another table's key 1 is not this chunk's.
        c.observe(&txn(107, vec![Change::Delete { relation: rel(8, &["id", "v"]), old: OldImage { key_only: true, cells: vec![t("1"), Cell::Null] } }]));
        assert_eq!(c.last_key, Some(vec![Some("4".to_string())]));
        let a = c.arrive(Lsn(0x500), 0);
        if let Arrived::Rows { txn, read, more, .. } = &a {
            assert_eq!((txn.commit_lsn, txn.end_lsn, txn.snapshot, *read, *more), (Lsn(0x4FF), Lsn(0x500), true, 4, true));
        }
        assert_eq!(delivered(a), vec!["1"]);
    }

    #[test]
    fn a_truncate_the_snapshot_did_not_see_voids_the_chunk() {
        let r = rel(7, &["id", "v"]);
        let mut c = chunk("100:105:");
        c.observe(&txn(110, vec![Change::Truncate { relations: vec![r.clone()], cascade: false, restart_identity: false }]));
        assert_eq!(delivered(c.arrive(Lsn(9), 0)), vec!["again"]);
        // A truncate the snapshot saw is in the chunk already.
        let mut c = chunk("100:105:");
        c.observe(&txn(90, vec![Change::Truncate { relations: vec![r.clone()], cascade: false, restart_identity: false }]));
        assert_eq!(delivered(c.arrive(Lsn(9), 0)).len(), 4);
    }

    #[test]
    fn a_running_transaction_already_fed_taints_the_chunk() {
        let mut recent = RecentXids::default();
        recent.push(102);
        assert!(chunk("100:105:102").tainted_by(&recent));
        assert!(!chunk("100:105:103").tainted_by(&recent));
        assert!(chunk("90:101:").tainted_by(&recent), "committed after the snapshot's xmax");
        assert!(!chunk("90:103:").tainted_by(&recent));
        for x in 1..=(RecentXids::KEEP as u32 + 1) {
            recent.push(10 + x % 80);
            recent.push(x + 200_000);
        }
        assert!(!chunk(&format!("100:{}:102", RecentXids::KEEP + 300_000)).tainted_by(&recent), "the oldest ids are forgotten");
    }

    #[test]
    fn watermark_payloads_round_trip_and_junk_is_refused() {
        let id = ChunkId { sink: 3, backfill: 2, number: 41 };
        assert_eq!(ChunkId::parse(id.payload().as_bytes()), Some(id));
        assert_eq!(ChunkId::parse(b"3:2"), None);
        assert_eq!(ChunkId::parse(b"3:2:1:0"), None);
        assert_eq!(ChunkId::parse(b"a:b:c"), None);
    }
}
