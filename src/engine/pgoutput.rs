//! Decoder for the pgoutput logical replication protocol (version 1, text-format
//! tuples). Messages arrive one at a time, in WAL order, as the rows of
//! `pg_logical_slot_peek_binary_changes`; the decoder keeps the relation map and the
//! transaction being assembled, and yields each transaction once its Commit arrives.
//!
//! Relation messages replace the cached shape of a table, so a column added or
//! dropped between two changes is seen by the change that follows it.

use std::collections::HashMap;
use std::sync::Arc;

use super::change::{Cell, Change, Column, OldImage, Relation, Transaction};
use super::error::{Result, SinkError};
use super::lsn::Lsn;
use super::types::PgType;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
    current: Option<Transaction>,
    /// The prefixes of the logical messages handed to the caller; others are skipped.
    pub messages: Vec<String>,
    /// The prefixes of the non-transactional messages handed to the caller.
    pub signals: Vec<String>,
    /// Position of the message being fed (`Lsn::ZERO` when the caller does not know it).
    at: Lsn,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn malformed(what: &str) -> SinkError {
    SinkError::permanent(format!("malformed pgoutput message: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| malformed("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }
    fn cstr(&mut self) -> Result<String> {
        let rest = &self.buf[self.pos..];
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| malformed("unterminated string"))?;
        let s = String::from_utf8(rest[..nul].to_vec()).map_err(|_| malformed("string is not UTF-8"))?;
        self.pos += nul + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>> {
        let n = self.u16()? as usize;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Cell::Text(String::from_utf8(bytes.to_vec()).map_err(|_| malformed("value is not UTF-8"))?)
                }
                b'b' => return Err(malformed("binary tuple data is not requested by pg_sink")),
                other => return Err(malformed(&format!("tuple column kind {:?}", other as char))),
            });
        }
        Ok(cells)
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Relations seen so far (the glue resolves their non-builtin types).
    pub fn relation_mut(&mut self, id: u32) -> Option<&mut Arc<Relation>> {
        self.relations.get_mut(&id)
    }

    pub fn is_in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// Changes of the open transaction held so far.
    pub fn pending_changes(&self) -> usize {
        self.current.as_ref().map_or(0, |t| t.changes.len())
    }

    /// Hand over the open transaction's changes so far (its commit LSN is known
    /// from BEGIN, its end only at COMMIT), releasing their memory; its later
    /// changes and COMMIT come as usual.
    pub fn take_pending(&mut self) -> Option<Transaction> {
        let txn = self.current.as_mut()?;
        let changes = std::mem::take(&mut txn.changes);
        let lsns = std::mem::take(&mut txn.lsns);
        Some(Transaction { changes, lsns, ..txn.clone() })
    }

    fn relation(&self, id: u32) -> Result<Arc<Relation>> {
        self.relations.get(&id).cloned().ok_or_else(|| malformed(&format!("change for unknown relation {id}")))
    }

    /// Add a change to the open transaction (one a logical message carried).
    pub fn push(&mut self, change: Change) -> Result<()> {
        match &mut self.current {
            Some(txn) => {
                txn.changes.push(change);
                txn.lsns.push(self.at);
                Ok(())
            }
            None => Err(malformed("change outside a transaction")),
        }
    }

    /// Feed one message. Returns a transaction when `msg` is its Commit, and the id of
    /// a relation when `msg` (re)defined one, so the caller can resolve its types.
    pub fn feed(&mut self, msg: &[u8]) -> Result<Decoded> {
        self.feed_at(msg, Lsn::ZERO)
    }

    /// [`Decoder::feed`] for a message read at `at` in the stream (the XLogData's
    /// start, or the `lsn` column of `pg_logical_slot_peek_binary_changes`): the
    /// changes it carries remember it.
    pub fn feed_at(&mut self, msg: &[u8], at: Lsn) -> Result<Decoded> {
        self.at = at;
        let mut r = Reader { buf: msg, pos: 1 };
        let tag = *msg.first().ok_or_else(|| malformed("empty message"))?;
        match tag {
            b'B' => {
                let final_lsn = Lsn(r.u64()?);
                let ts = r.i64()?;
                let xid = r.u32()?;
                self.current = Some(Transaction {
                    xid,
                    commit_lsn: final_lsn,
                    end_lsn: final_lsn,
                    commit_time_us: ts + PG_EPOCH_OFFSET_US,
                    snapshot: false,
                    changes: Vec::new(),
                    first_lsn: at,
                    lsns: Vec::new(),
                });
                Ok(Decoded::Nothing)
            }
            b'C' => {
                let _flags = r.u8()?;
                let commit_lsn = Lsn(r.u64()?);
                let end_lsn = Lsn(r.u64()?);
                let ts = r.i64()?;
                let mut txn = self.current.take().ok_or_else(|| malformed("commit without begin"))?;
                txn.commit_lsn = commit_lsn;
                txn.end_lsn = end_lsn;
                txn.commit_time_us = ts + PG_EPOCH_OFFSET_US;
                Ok(Decoded::Commit(txn))
            }
            b'R' => {
                let id = r.u32()?;
                let namespace = r.cstr()?;
                let name = r.cstr()?;
                let replica_identity = r.u8()?;
                let n = r.u16()? as usize;
                let mut columns = Vec::with_capacity(n);
                for _ in 0..n {
                    let flags = r.u8()?;
                    let cname = r.cstr()?;
                    let oid = r.u32()?;
                    let type_modifier = r.i32()?;
                    columns.push(Column { name: cname, ty: PgType::from_oid(oid), type_modifier, is_identity: flags & 1 == 1 });
                }
                let namespace = if namespace.is_empty() { "pg_catalog".to_string() } else { namespace };
                self.relations.insert(id, Arc::new(Relation { id, namespace, name, replica_identity, columns, meta: None }));
                Ok(Decoded::Relation(id))
            }
            b'I' => {
                let relation = self.relation(r.u32()?)?;
                if r.u8()? != b'N' {
                    return Err(malformed("insert without new tuple"));
                }
                let new = r.tuple()?;
                check_width(&relation, &new)?;
                self.push(Change::Insert { relation, new })?;
                Ok(Decoded::Nothing)
            }
            b'U' => {
                let relation = self.relation(r.u32()?)?;
                let mut old = None;
                let mut kind = r.u8()?;
                if kind == b'K' || kind == b'O' {
                    let cells = r.tuple()?;
                    check_width(&relation, &cells)?;
                    old = Some(OldImage { key_only: kind == b'K', cells });
                    kind = r.u8()?;
                }
                if kind != b'N' {
                    return Err(malformed("update without new tuple"));
                }
                let new = r.tuple()?;
                check_width(&relation, &new)?;
                self.push(Change::Update { relation, old, new })?;
                Ok(Decoded::Nothing)
            }
            b'D' => {
                let relation = self.relation(r.u32()?)?;
                let kind = r.u8()?;
                if kind != b'K' && kind != b'O' {
                    return Err(malformed("delete without old tuple"));
                }
                let cells = r.tuple()?;
                check_width(&relation, &cells)?;
                self.push(Change::Delete { relation, old: OldImage { key_only: kind == b'K', cells } })?;
                Ok(Decoded::Nothing)
            }
            b'T' => {
                let n = r.u32()? as usize;
                let options = r.u8()?;
                let mut relations = Vec::with_capacity(n);
                for _ in 0..n {
                    relations.push(self.relation(r.u32()?)?);
                }
                self.push(Change::Truncate { relations, cascade: options & 1 != 0, restart_identity: options & 2 != 0 })?;
                Ok(Decoded::Nothing)
            }
            b'M' => {
                let transactional = r.u8()? & 1 == 1;
                let _lsn = r.u64()?;
                let prefix = r.cstr()?;
                let len = r.u32()? as usize;
                let content = r.take(len)?;
                if transactional && self.current.is_some() && self.messages.iter().any(|p| *p == prefix) {
                    Ok(Decoded::Message { prefix, content: content.to_vec() })
                } else if !transactional && self.signals.iter().any(|p| *p == prefix) {
                    Ok(Decoded::Signal { prefix, content: content.to_vec() })
                } else {
                    Ok(Decoded::Nothing)
                }
            }
            // Type and Origin carry nothing a sink delivers.
            b'Y' | b'O' => Ok(Decoded::Nothing),
            other => Err(malformed(&format!("unknown message type {:?}", other as char))),
        }
    }
}

fn check_width(rel: &Relation, cells: &[Cell]) -> Result<()> {
    if cells.len() != rel.columns.len() {
        return Err(malformed(&format!("tuple has {} columns but relation \"{}\" has {}", cells.len(), rel.qualified_name(), rel.columns.len())));
    }
    Ok(())
}

#[derive(Debug)]
pub enum Decoded {
    Nothing,
    Relation(u32),
    Commit(Transaction),
    /// A transactional logical message with a prefix the caller asked for
    /// ([`Decoder::messages`]), inside the open transaction.
    Message { prefix: String, content: Vec<u8> },
    /// A non-transactional logical message with a prefix the caller asked for
    /// ([`Decoder::signals`]), at its place in the WAL.
    Signal { prefix: String, content: Vec<u8> },
}

/// The 8 bytes at `at` as an LSN.
fn lsn_at(msg: &[u8], at: usize) -> Option<Lsn> {
    msg.get(at..at + 8).map(|b| Lsn(u64::from_be_bytes(b.try_into().unwrap_or([0; 8]))))
}

/// The commit LSN a BEGIN message announces (`None` for other messages).
pub fn begin_commit_lsn(msg: &[u8]) -> Option<Lsn> {
    (msg.first() == Some(&b'B')).then(|| lsn_at(msg, 1)).flatten()
}

/// The end of the commit record a COMMIT message carries (`None` for others).
pub fn commit_end_lsn(msg: &[u8]) -> Option<Lsn> {
    (msg.first() == Some(&b'C')).then(|| lsn_at(msg, 10)).flatten()
}

/// Relation, type and origin messages describe the stream; each decoding session
/// sends them again, so they do not count as the stream's content.
pub fn is_metadata(msg: &[u8]) -> bool {
    matches!(msg.first(), Some(b'R' | b'Y' | b'O'))
}

/// Builders for pgoutput messages, used by tests here and in the pipeline.
#[cfg(test)]
pub mod wire {
    pub fn begin(final_lsn: u64, ts: i64, xid: u32) -> Vec<u8> {
        let mut m = vec![b'B'];
        m.extend(final_lsn.to_be_bytes());
        m.extend(ts.to_be_bytes());
        m.extend(xid.to_be_bytes());
        m
    }
    pub fn commit(commit_lsn: u64, end_lsn: u64, ts: i64) -> Vec<u8> {
        let mut m = vec![b'C', 0];
        m.extend(commit_lsn.to_be_bytes());
        m.extend(end_lsn.to_be_bytes());
        m.extend(ts.to_be_bytes());
        m
    }
    /// A logical decoding message (`pg_logical_emit_message`).
    pub fn message(transactional: bool, prefix: &str, content: &[u8]) -> Vec<u8> {
        let mut m = vec![b'M', transactional as u8];
        m.extend(0u64.to_be_bytes());
        m.extend(prefix.as_bytes());
        m.push(0);
        m.extend((content.len() as u32).to_be_bytes());
        m.extend(content);
        m
    }
    /// `cols`: (name, type oid, is key)
    pub fn relation(id: u32, ns: &str, name: &str, ident: u8, cols: &[(&str, u32, bool)]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(id.to_be_bytes());
        m.extend(ns.as_bytes());
        m.push(0);
        m.extend(name.as_bytes());
        m.push(0);
        m.push(ident);
        m.extend((cols.len() as u16).to_be_bytes());
        for (n, oid, key) in cols {
            m.push(*key as u8);
            m.extend(n.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }
    /// `vals`: Some(text) / None = NULL / Some("\u{0}") = unchanged TOAST
    pub fn tuple(vals: &[Option<&str>]) -> Vec<u8> {
        let mut m = (vals.len() as u16).to_be_bytes().to_vec();
        for v in vals {
            match v {
                None => m.push(b'n'),
                Some("\u{0}") => m.push(b'u'),
                Some(s) => {
                    m.push(b't');
                    m.extend((s.len() as u32).to_be_bytes());
                    m.extend(s.as_bytes());
                }
            }
        }
        m
    }
    pub fn insert(rel: u32, vals: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend(rel.to_be_bytes());
        m.push(b'N');
        m.extend(tuple(vals));
        m
    }
    pub fn update(rel: u32, old: Option<(u8, &[Option<&str>])>, new: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'U'];
        m.extend(rel.to_be_bytes());
        if let Some((k, o)) = old {
            m.push(k);
            m.extend(tuple(o));
        }
        m.push(b'N');
        m.extend(tuple(new));
        m
    }
    pub fn delete(rel: u32, kind: u8, old: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'D'];
        m.extend(rel.to_be_bytes());
        m.push(kind);
        m.extend(tuple(old));
        m
    }
    pub fn truncate(rels: &[u32], options: u8) -> Vec<u8> {
        let mut m = vec![b'T'];
        m.extend((rels.len() as u32).to_be_bytes());
        m.push(options);
        for r in rels {
            m.extend(r.to_be_bytes());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_transaction_bounds_without_decoding() {
        use super::wire::*;
        assert_eq!(begin_commit_lsn(&begin(0x1_0000_0100, 0, 5)), Some(Lsn(0x1_0000_0100)));
        assert_eq!(commit_end_lsn(&commit(0x100, 0x118, 0)), Some(Lsn(0x118)));
        assert_eq!(begin_commit_lsn(&commit(0x100, 0x118, 0)), None);
        assert_eq!(commit_end_lsn(&[b'C', 0]), None, "truncated");
        assert!(is_metadata(&relation(1, "public", "t", b'd', &[("id", 23, true)])));
        assert!(!is_metadata(&insert(1, &[Some("1")])));
    }

    use super::wire::*;
    use super::*;

    fn commit_of(d: Decoded) -> Transaction {
        match d {
            Decoded::Commit(t) => t,
            other => panic!("expected commit, got {other:?}"),
        }
    }

    #[test]
    fn decodes_a_transaction_with_every_change_kind() {
        let mut d = Decoder::new();
        assert!(matches!(d.feed(&begin(0x200, 0, 42)).unwrap(), Decoded::Nothing));
        assert!(matches!(d.feed(&relation(9, "public", "t", b'd', &[("id", 23, true), ("body", 25, false)])).unwrap(), Decoded::Relation(9)));
        d.feed(&insert(9, &[Some("1"), None])).unwrap();
        d.feed(&update(9, None, &[Some("1"), Some("\u{0}")])).unwrap();
        d.feed(&update(9, Some((b'K', &[Some("1"), None])), &[Some("2"), Some("x")])).unwrap();
        d.feed(&delete(9, b'K', &[Some("2"), None])).unwrap();
        d.feed(&truncate(&[9], 1)).unwrap();
        let txn = commit_of(d.feed(&commit(0x200, 0x230, 1_000_000)).unwrap());
        assert_eq!(txn.xid, 42);
        assert_eq!(txn.end_lsn, Lsn(0x230));
        assert_eq!(txn.commit_time_us, PG_EPOCH_OFFSET_US + 1_000_000);
        assert_eq!(txn.changes.len(), 5);
        match &txn.changes[0] {
            Change::Insert { relation, new } => {
                assert_eq!(relation.qualified_name(), "public.t");
                assert!(relation.columns[0].is_identity);
                assert_eq!(new, &vec![Cell::Text("1".into()), Cell::Null]);
            }
            c => panic!("{c:?}"),
        }
        match &txn.changes[1] {
            Change::Update { old: None, new, .. } => assert_eq!(new[1], Cell::Unchanged),
            c => panic!("{c:?}"),
        }
        match &txn.changes[2] {
            Change::Update { old: Some(o), .. } => assert!(o.key_only),
            c => panic!("{c:?}"),
        }
        assert!(matches!(&txn.changes[3], Change::Delete { old, .. } if old.key_only));
        assert!(matches!(&txn.changes[4], Change::Truncate { cascade: true, restart_identity: false, .. }));
        assert!(!d.is_in_transaction());
    }

    #[test]
    fn relation_message_mid_stream_changes_the_shape() {
        let mut d = Decoder::new();
        d.feed(&begin(1, 0, 1)).unwrap();
        d.feed(&relation(5, "s", "t", b'f', &[("a", 23, false)])).unwrap();
        d.feed(&insert(5, &[Some("1")])).unwrap();
        d.feed(&relation(5, "s", "t", b'f', &[("a", 23, false), ("b", 1700, false)])).unwrap();
        d.feed(&insert(5, &[Some("2"), Some("3.5")])).unwrap();
        let txn = commit_of(d.feed(&commit(1, 2, 0)).unwrap());
        let widths: Vec<usize> = txn
            .changes
            .iter()
            .map(|c| match c {
                Change::Insert { relation, .. } => relation.columns.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(widths, vec![1, 2]);
    }

    #[test]
    fn rejects_malformed_input() {
        let mut d = Decoder::new();
        assert!(d.feed(&[]).is_err());
        assert!(d.feed(&insert(1, &[Some("x")])).is_err(), "unknown relation");
        d.feed(&relation(1, "s", "t", b'd', &[("a", 23, true)])).unwrap();
        assert!(d.feed(&insert(1, &[Some("x")])).is_err(), "outside a transaction");
        d.feed(&begin(1, 0, 1)).unwrap();
        assert!(d.feed(&insert(1, &[Some("x"), Some("y")])).is_err(), "width mismatch");
        let mut cut = insert(1, &[Some("hello")]);
        cut.truncate(cut.len() - 2);
        assert!(d.feed(&cut).is_err(), "truncated");
        assert!(d.feed(b"Z").is_err());
        assert!(matches!(d.feed(b"Yxx").unwrap(), Decoded::Nothing));
    }
}
