//! Test doubles for the engine's step: a scripted replication stream, an
//! in-memory connector whose deliveries fail on cue (FIFO failpoints), and a
//! no-op SQL session and type resolver. Unit tests only.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;

use super::connector::{Batch, Connector, Record, SqlSession};
use super::error::{Result, SinkError};
use super::lsn::Lsn;
use super::pipeline::TypeResolver;
use super::replication::Message;
use super::step::MessageStream;
use super::types::PgType;

/// One item of a [`ScriptedStream`].
#[derive(Debug, Clone)]
pub enum Scripted {
    /// A pgoutput message.
    Data(Vec<u8>),
    /// A pgoutput message read at a position in the WAL.
    DataAt(u64, Vec<u8>),
    /// A primary keepalive at `end`.
    Keepalive { end: u64, reply: bool },
    /// One poll that finds nothing.
    Silence,
    /// The connection breaks.
    Fail,
}

/// A replication stream playing a script. Past its end it fails (a test can never
/// wait for ever), and it records the feedback it was sent.
#[derive(Debug, Default)]
pub struct ScriptedStream {
    items: Vec<Scripted>,
    pos: usize,
    last: usize,
    pub feedbacks: Vec<(Lsn, bool)>,
}

impl ScriptedStream {
    pub fn new(items: Vec<Scripted>) -> Self {
        ScriptedStream { items, ..Default::default() }
    }
    /// Items not yet read.
    pub fn remaining(&self) -> usize {
        self.items.len() - self.pos
    }
}

impl MessageStream for ScriptedStream {
    fn next(&mut self, _wait: Duration) -> Result<Option<Message<'_>>> {
        let Some(item) = self.items.get(self.pos) else {
            return Err(SinkError::transient("scripted stream ended"));
        };
        self.last = self.pos;
        self.pos += 1;
        match item {
            Scripted::Data(payload) => Ok(Some(Message::Data { start: Lsn::ZERO, end: Lsn::ZERO, payload })),
            Scripted::DataAt(at, payload) => Ok(Some(Message::Data { start: Lsn(*at), end: Lsn(*at), payload })),
            Scripted::Keepalive { end, reply } => Ok(Some(Message::Keepalive { end: Lsn(*end), reply: *reply })),
            Scripted::Silence => Ok(None),
            Scripted::Fail => Err(SinkError::transient("scripted stream broke")),
        }
    }
    fn unread(&mut self) {
        self.pos = self.last;
    }
    fn feedback(&mut self, flushed: Lsn, reply: bool) -> Result<()> {
        self.feedbacks.push((flushed, reply));
        Ok(())
    }
}

/// What the next `deliver` call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Succeeds.
    Ok,
    /// Fails with a transient error; nothing reaches the target.
    BeforeDurable,
    /// The whole batch reaches the target, then the call fails (a lost ack).
    AfterDurable,
    /// The first `after` records reach the target, then the call fails.
    MidBatch { after: usize, permanent: bool },
}

/// A target in memory: every batch that reached it, in order. `faults` are taken
/// one per `deliver` call; when empty, calls succeed.
#[derive(Debug, Default)]
pub struct MemoryConnector {
    pub batches: Vec<Batch>,
    pub faults: VecDeque<Fault>,
    pub finished_steps: usize,
    /// `finish_step` fails.
    pub fail_finish: bool,
    /// Records whose key is one of these are refused for good, every time: a
    /// batch holding one delivers nothing and names them (as a transactional
    /// target does).
    pub refuse_keys: Vec<String>,
}

impl MemoryConnector {
    /// (transactions, records) of each batch that reached the target.
    pub fn batch_sizes(&self) -> Vec<(usize, usize)> {
        self.batches.iter().map(|b| (b.transactions, b.records.len())).collect()
    }
    pub fn records(&self) -> Vec<&Record> {
        self.batches.iter().flat_map(|b| b.records.iter()).collect()
    }
}

#[async_trait(?Send)]
impl Connector for MemoryConnector {
    async fn deliver(&mut self, batch: &Batch, _sql: &mut dyn SqlSession) -> Result<()> {
        let refused: Vec<usize> = batch
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.key.as_ref().is_some_and(|k| self.refuse_keys.iter().any(|x| x.as_bytes() == k.as_slice())))
            .map(|(i, _)| i)
            .collect();
        if !refused.is_empty() {
            return Err(SinkError::permanent("memory target: record refused").refusing(refused));
        }
        match self.faults.pop_front().unwrap_or(Fault::Ok) {
            Fault::Ok => {
                self.batches.push(batch.clone());
                Ok(())
            }
            Fault::BeforeDurable => Err(SinkError::transient("memory target: failing before durable")),
            Fault::AfterDurable => {
                self.batches.push(batch.clone());
                Err(SinkError::transient("memory target: failing after durable"))
            }
            Fault::MidBatch { after, permanent } => {
                let mut part = batch.clone();
                part.records.truncate(after);
                self.batches.push(part);
                let msg = "memory target: failing mid-batch";
                Err(if permanent { SinkError::permanent(msg) } else { SinkError::transient(msg) })
            }
        }
    }
    async fn finish_step(&mut self) -> Result<()> {
        if self.fail_finish {
            return Err(SinkError::transient("memory target: failing at the end of the step"));
        }
        self.finished_steps += 1;
        Ok(())
    }
}

/// A SQL session for targets that never use one.
pub struct NoSql;

impl SqlSession for NoSql {
    fn execute(&mut self, _sql: &str, _params: &[Option<&str>]) -> Result<u64> {
        Err(SinkError::permanent("no SQL session in this test"))
    }
    fn query(&mut self, _sql: &str, _params: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
        Err(SinkError::permanent("no SQL session in this test"))
    }
    fn query_or_none(&mut self, _sql: &str, _params: &[Option<&str>]) -> Result<Option<Vec<Vec<Option<String>>>>> {
        Ok(None)
    }
}

/// A resolver that knows no user-defined types.
pub struct NoTypes;

impl TypeResolver for NoTypes {
    fn resolve(&mut self, _oid: u32) -> Option<PgType> {
        None
    }
}

/// Ready-made sinks and sources for step tests.
pub mod fixture {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::engine::change::{Cell, Change, Column, Relation, Transaction};
    use crate::engine::error::Result;
    use crate::engine::lsn::Lsn;
    use crate::engine::options;
    use crate::engine::pipeline::Pipeline;
    use crate::engine::step::SnapshotSource;
    use crate::engine::types::PgType;

    /// An upsert sink keyed on `id`, JSON encoded (a file sink's definition).
    pub fn pipeline() -> Pipeline {
        let o: BTreeMap<String, String> =
            [("envelope", "upsert"), ("key", "id"), ("path", "/x")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let def = options::parse("file", &o).expect("fixture options");
        Pipeline::new(&def, "s", "db", Lsn::ZERO).expect("fixture pipeline")
    }

    /// `n` rows of `t(id int4)`, read in chunks as the snapshot would be.
    pub struct SnapshotRows {
        left: usize,
        next_id: usize,
        lsn: Lsn,
        rel: Arc<Relation>,
    }

    impl SnapshotRows {
        pub fn new(n: usize, lsn: Lsn) -> Self {
            let col = Column { name: "id".into(), ty: PgType::from_oid(23), type_modifier: -1, is_identity: true };
            let rel = Relation { id: 1, namespace: "public".into(), name: "t".into(), replica_identity: b'd', columns: vec![col], meta: None };
            SnapshotRows { left: n, next_id: 1, lsn, rel: Arc::new(rel) }
        }
    }

    impl SnapshotSource for SnapshotRows {
        fn next_chunk(&mut self, rows: i64) -> Result<Transaction> {
            let take = self.left.min(rows.max(0) as usize);
            let changes =
                (0..take).map(|i| Change::Insert { relation: self.rel.clone(), new: vec![Cell::Text((self.next_id + i).to_string())] }).collect();
            self.left -= take;
            self.next_id += take;
            Ok(Transaction::snapshot(self.lsn, 0, changes))
        }
    }
}
