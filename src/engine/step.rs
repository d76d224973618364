//! One step of a sink: read a bounded slice of its slot, cut it into batches of
//! whole transactions, hand each batch to the connector, and work out which
//! position may be confirmed once the connector says the step is durable.
//!
//! ```text
//!  messages (peek cursor │ walsender) ──► Step::feed ──► Pipeline ──► Batch
//!                                             │ batch full              │
//!                                             └──────► Connector::deliver ◄┘
//!  Step::finish ──► Connector::finish_step ──► Progress { confirmed, record }
//! ```
//!
//! The rules live here, as plain Rust, so they are unit-tested with a scripted
//! stream and an in-memory connector with failpoints (`engine::testing`):
//!
//! - **Bounded read.** A step reads what was flushed when it began (`upto`) and at
//!   most `limit` non-metadata messages, always ending on a transaction boundary.
//!   A later transaction's BEGIN is put back for the next step. So a step retried
//!   over the same backlog reads the same transactions.
//! - **Batch cut.** A batch is cut after the transaction that brings it to
//!   `batch_changes` changes; boundaries depend only on the stream and the settings,
//!   so a retried step produces the same batches (and idempotent targets overwrite
//!   the same objects).
//! - **Large transactions in parts.** A transaction is held in memory only up to
//!   `part_changes` changes: then what it holds goes out as a batch of its own
//!   (a [`Part`](super::connector::Part)), and its COMMIT gives the last part. A
//!   part is cut after a fixed number of the transaction's changes, so a retry
//!   cuts the same parts; nothing is confirmed before the last one is durable.
//! - **Refused records.** When the target refuses records for good and says
//!   which (`SinkError::refused`, or the encoder refuses one), and the sink's
//!   `errors.policy` is not `fail`, the step ends before the batch holding them:
//!   the dead letters are recorded with the progress of the batches before it,
//!   and the next step reads the same batch again, leaving them out. So a dead
//!   letter is durable before anything that skips it is. The initial snapshot,
//!   delivered whole or again, sends the chunk again at once without them.
//! - **Confirmed LSN.** Only what the connector reported durable is confirmed: the
//!   end of the last delivered transaction, raised to the stream's last keepalive
//!   seen between transactions and, when the step caught up, to the WAL flush
//!   position taken before reading (nothing before it is left to deliver).
//!
//! The glue supplies the stream, the SQL session for in-database targets, the
//! type resolver and the transaction that records [`Progress`].

use std::time::Duration;

use tokio::runtime::Runtime;

use super::backfill::{Advance, Arrived};
use super::change::Transaction;
use super::connector::{Batch, Connector, Record, SqlSession};
use super::dead_letter::{DeadLetter, Policy};
use super::error::{Result, SinkError};
use super::lsn::Lsn;
use super::pgoutput;
use super::pipeline::{Pipeline, TypeResolver, REFUSED};
use super::replication::{self, Message};

/// Rows of the initial snapshot delivered per connector call.
pub const SNAPSHOT_CHUNK: i64 = 10_000;

/// How long [`Step::read_stream`] waits for one message before checking for a stop.
const POLL: Duration = Duration::from_millis(100);
/// Silence between transactions after which the walsender is asked for its position.
const ASK_AFTER: Duration = Duration::from_millis(500);

/// What one step did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub transactions: usize,
    pub changes: usize,
    pub records: usize,
    pub bytes: usize,
    pub confirmed: Option<Lsn>,
    /// Nothing was pending when the step read its slice.
    pub caught_up: bool,
    /// This step created the slot (and delivered the snapshot).
    pub initialized: bool,
    /// Commit time of the last delivered change.
    pub last_commit: Option<i64>,
    /// The records a preview would deliver.
    pub preview: Vec<Record>,
    /// How long each batch, part or snapshot chunk took to deliver, in
    /// milliseconds (the connector's `deliver`, in order).
    pub batch_ms: Vec<f64>,
    /// Records refused for good and set aside (`errors.policy`), to record with
    /// the step's progress.
    pub dead_letters: Vec<DeadLetter>,
    /// The step ended before a batch holding refused records: run the next one.
    pub refused: bool,
    /// A backfill chunk's watermark came in this step (the chunk is delivered,
    /// or to be read again): the glue records where the backfill stands.
    pub backfill: Option<Advance>,
    /// The step ended at a change the sink cannot take (a permanent error, e.g. a
    /// schema change under `schema.changes = 'stop'`), after delivering what came
    /// before it: record that progress, then fail the sink with this error.
    pub stopped: Option<SinkError>,
}

/// Whether `e` names records `policy` sets aside.
fn sets_aside(e: &SinkError, policy: Policy, batch: &Batch) -> bool {
    policy != Policy::Fail && !e.is_transient() && !e.refused.is_empty() && e.refused.iter().all(|&i| i < batch.records.len())
}

/// The dead letters of the records `e` names.
fn dead_letters(e: &SinkError, policy: Policy, batch: &Batch) -> Vec<DeadLetter> {
    let mut idx = e.refused.clone();
    idx.sort_unstable();
    idx.dedup();
    idx.iter().map(|&i| DeadLetter::of(&batch.records[i], e, policy, batch.snapshot_chunk)).collect()
}

/// Deliver `batch` and note how long it took.
fn deliver_timed(rt: &Runtime, connector: &mut dyn Connector, sql: &mut dyn SqlSession, batch: &Batch, times: &mut Vec<f64>) -> Result<()> {
    let started = std::time::Instant::now();
    rt.block_on(connector.deliver(batch, sql))?;
    times.push(started.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

/// A replication stream as the step reads it (the walsender's, or a scripted one).
pub trait MessageStream {
    /// The next message, waiting up to `wait`; `None` when nothing arrived.
    fn next(&mut self, wait: Duration) -> Result<Option<Message<'_>>>;
    /// Put back the message `next` returned last.
    fn unread(&mut self);
    /// Tell the server `flushed` is durable; `reply` asks for a keepalive.
    fn feedback(&mut self, flushed: Lsn, reply: bool) -> Result<()>;
}

impl MessageStream for replication::Stream {
    fn next(&mut self, wait: Duration) -> Result<Option<Message<'_>>> {
        replication::Stream::next(self, wait)
    }
    fn unread(&mut self) {
        replication::Stream::unread(self)
    }
    fn feedback(&mut self, flushed: Lsn, reply: bool) -> Result<()> {
        replication::Stream::feedback(self, flushed, reply)
    }
}

/// Where the initial snapshot's rows come from: successive chunks of the table,
/// each an insert-only transaction labelled with the snapshot's LSN.
pub trait SnapshotSource {
    fn next_chunk(&mut self, rows: i64) -> Result<Transaction>;
}

/// How far a finished step may confirm, and whether to write it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub confirmed: Lsn,
    /// Progress must be recorded: something was delivered, or an idle sink's
    /// position moved and the caller wants idle progress written.
    pub record: bool,
}

/// The confirmed-LSN rule (see the module doc). `start` is the catalog's confirmed
/// LSN when the step began, `delivered` the end of the last delivered transaction
/// (or `start`), `quiet` the stream's last keepalive between transactions,
/// `flushed` the WAL flush position read before the slice.
pub fn progress(start: Lsn, delivered: Lsn, quiet: Option<Lsn>, caught_up: bool, flushed: Lsn, transactions: usize, write_idle: bool) -> Progress {
    let mut confirmed = start.max(delivered).max(quiet.unwrap_or(Lsn::ZERO));
    if caught_up {
        confirmed = confirmed.max(flushed);
    }
    Progress { confirmed, record: transactions > 0 || (write_idle && confirmed > start) }
}

/// One step's reading and delivering: messages in, batches out.
pub struct Step<'a> {
    pipeline: &'a mut Pipeline,
    connector: &'a mut dyn Connector,
    rt: &'a Runtime,
    sql: &'a mut dyn SqlSession,
    types: &'a mut dyn TypeResolver,
    batch: Batch,
    outcome: Outcome,
    /// End of the last delivered transaction.
    end: Lsn,
    batch_changes: usize,
    /// Changes of one transaction held before they go out as a part.
    part_changes: usize,
    /// The catalog's confirmed LSN when the step began: what feedback may report.
    durable: Lsn,
    /// The stream failed before this step read any message from it.
    pub lost_at_start: bool,
    /// The step ended at a batch holding refused records (see the module doc).
    refusal: bool,
    /// Asked before each batch, each snapshot chunk and while the stream is
    /// silent: the worker is told to stop (pause, drop, shutdown), so the step
    /// ends there instead of after all of its slice.
    stop: Option<&'a dyn Fn() -> bool>,
    /// A backfill chunk's watermark came: the stream read ends there, so the
    /// next step can read the next chunk.
    chunk_arrived: bool,
}

fn stopping() -> SinkError {
    SinkError::transient(STOPPING)
}

/// The message of the error a stopped step ends with.
pub use super::error::STOPPING;

impl<'a> Step<'a> {
    /// A step over `pipeline` that starts at the catalog's `confirmed` LSN and cuts
    /// batches of `batch_changes` changes.
    pub fn new(
        pipeline: &'a mut Pipeline,
        connector: &'a mut dyn Connector,
        rt: &'a Runtime,
        sql: &'a mut dyn SqlSession,
        types: &'a mut dyn TypeResolver,
        confirmed: Lsn,
        batch_changes: usize,
    ) -> Self {
        pipeline.confirmed = confirmed;
        let batch = pipeline.new_batch();
        Step {
            pipeline,
            connector,
            rt,
            sql,
            types,
            batch,
            outcome: Outcome::default(),
            end: confirmed,
            batch_changes: batch_changes.max(1),
            part_changes: usize::MAX,
            durable: confirmed,
            lost_at_start: false,
            refusal: false,
            stop: None,
            chunk_arrived: false,
        }
    }

    /// End the step early (with a transient error, delivering nothing more) once
    /// `stop` says so.
    pub fn stop_when(mut self, stop: &'a dyn Fn() -> bool) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Deliver a transaction in parts once it holds `changes` changes (the
    /// default holds every transaction whole).
    pub fn parts_after(mut self, changes: usize) -> Self {
        self.part_changes = changes.max(1);
        self
    }

    fn stop_requested(&self) -> bool {
        self.stop.is_some_and(|f| f())
    }

    /// Feed one pgoutput message; delivers the batch once it is full, and the
    /// open transaction's changes once they make a part.
    pub fn feed(&mut self, msg: &[u8]) -> Result<()> {
        self.feed_at(msg, Lsn::ZERO)
    }

    /// [`Step::feed`] for a message read at `at` in the stream.
    pub fn feed_at(&mut self, msg: &[u8], at: Lsn) -> Result<()> {
        if let Err(e) = self.pipeline.feed_at(msg, at, self.types, self.sql, &mut self.batch) {
            if !self.pipeline.refused.is_empty() {
                // The encoder refused a record: end the step before its batch.
                self.outcome.dead_letters.append(&mut self.pipeline.refused);
                self.refusal = true;
            } else if !e.is_transient() && (self.batch.transactions > 0 || self.outcome.transactions > 0) && self.flush().is_ok() {
                // The sink stops at this change: what came before it is
                // delivered, and its progress kept, first.
                self.refusal = true;
                self.outcome.stopped = Some(e.clone());
            }
            return Err(e);
        }
        if let Some(arrived) = self.pipeline.take_arrived() {
            return self.deliver_arrived(arrived);
        }
        if self.batch.part.is_some() {
            // The last part of a large transaction goes alone.
            return self.flush();
        }
        if self.pipeline.pending_changes() >= self.part_changes {
            // What came before the transaction goes first, as its own batch.
            self.flush()?;
            if let Some(part) = self.pipeline.cut_part(self.sql)? {
                self.deliver_part(&part)?;
            }
        }
        if self.batch.changes >= self.batch_changes {
            self.flush()?;
        }
        Ok(())
    }

    /// A backfill chunk's watermark came: what came before it goes first, then
    /// the chunk's rows, as a batch of their own at the watermark's position.
    fn deliver_arrived(&mut self, arrived: Arrived) -> Result<()> {
        self.flush()?;
        if self.stop_requested() {
            return Err(stopping());
        }
        self.chunk_arrived = true;
        match arrived {
            Arrived::Again { id } => {
                self.outcome.backfill = Some(Advance { id, read: 0, delivered: 0, last_key: None, more: true, again: true });
            }
            Arrived::Rows { id, txn, read, last_key, more } => {
                let end = txn.end_lsn;
                let before = self.outcome.records;
                self.deliver_rows(txn, None)?;
                self.end = self.end.max(end);
                let delivered = self.outcome.records - before;
                self.outcome.backfill = Some(Advance { id, read, delivered, last_key, more, again: false });
            }
        }
        Ok(())
    }

    /// Deliver rows read from the source (a snapshot chunk, numbered `chunk`, or
    /// a backfill chunk) as a batch of their own. Records the target refuses are
    /// set aside and the rest sent again at once (every attempt removes at least one).
    fn deliver_rows(&mut self, txn: Transaction, chunk: Option<u32>) -> Result<()> {
        let mut batch = self.pipeline.new_batch();
        batch.snapshot_chunk = chunk;
        self.pipeline.begin_chunk();
        self.pipeline.snapshot_refusals = true;
        let added = self.pipeline.add_transaction(txn, self.sql, &mut batch);
        self.pipeline.snapshot_refusals = false;
        added?;
        for mut d in self.pipeline.refused.drain(..) {
            d.chunk = chunk;
            self.outcome.dead_letters.push(d);
        }
        loop {
            match deliver_timed(self.rt, self.connector, self.sql, &batch, &mut self.outcome.batch_ms) {
                Ok(()) => break,
                Err(e) if sets_aside(&e, self.pipeline.errors_policy, &batch) => {
                    self.outcome.dead_letters.extend(dead_letters(&e, self.pipeline.errors_policy, &batch));
                    let mut i = 0;
                    batch.records.retain(|_| {
                        i += 1;
                        !e.refused.contains(&(i - 1))
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let o = &mut self.outcome;
        o.changes += batch.changes;
        o.records += batch.records.len();
        o.bytes += batch.bytes();
        self.collect_left_out(&batch);
        Ok(())
    }

    /// Deliver a part of a transaction other than its last: counted as changes
    /// and records, never as a transaction or a position to confirm.
    fn deliver_part(&mut self, part: &Batch) -> Result<()> {
        if self.stop_requested() {
            return Err(stopping());
        }
        if let Err(e) = deliver_timed(self.rt, self.connector, self.sql, part, &mut self.outcome.batch_ms) {
            return Err(self.refuse(e, part));
        }
        let o = &mut self.outcome;
        o.changes += part.changes;
        o.records += part.records.len();
        o.bytes += part.bytes();
        self.collect_left_out(part);
        Ok(())
    }

    /// Deliver what the current batch holds (whole transactions only).
    pub fn flush(&mut self) -> Result<()> {
        if self.batch.transactions == 0 {
            return Ok(());
        }
        if self.stop_requested() {
            return Err(stopping());
        }
        if let Err(e) = deliver_timed(self.rt, self.connector, self.sql, &self.batch, &mut self.outcome.batch_ms) {
            let batch = std::mem::take(&mut self.batch);
            let e = self.refuse(e, &batch);
            self.batch = batch;
            return Err(e);
        }
        self.count_delivered();
        let batch = std::mem::take(&mut self.batch);
        self.collect_left_out(&batch);
        self.batch = batch;
        self.end = self.end.max(self.batch.end_lsn);
        self.batch = self.pipeline.new_batch();
        Ok(())
    }

    /// A delivery failed with `e`: when it names records the policy sets aside,
    /// keep their dead letters and end the step there.
    fn refuse(&mut self, e: SinkError, batch: &Batch) -> SinkError {
        let policy = self.pipeline.errors_policy;
        if !sets_aside(&e, policy, batch) {
            return e;
        }
        self.outcome.dead_letters.extend(dead_letters(&e, policy, batch));
        self.refusal = true;
        SinkError::transient(REFUSED).detail(e.summary())
    }

    /// Dead letters of the records the connector left out of `batch` as it
    /// delivered it ([`Connector::take_refused`]); they are not counted as delivered.
    fn collect_left_out(&mut self, batch: &Batch) {
        let left_out = self.connector.take_refused();
        let policy = self.pipeline.errors_policy;
        for (i, e) in &left_out {
            if let Some(r) = batch.records.get(*i) {
                self.outcome.dead_letters.push(DeadLetter::of(r, e, policy, batch.snapshot_chunk));
            }
        }
        self.outcome.records = self.outcome.records.saturating_sub(left_out.len());
    }

    /// The step ended at refused records: record them with what went before.
    pub fn refused(&self) -> bool {
        self.refusal
    }

    fn count_delivered(&mut self) {
        let o = &mut self.outcome;
        o.transactions += self.batch.transactions;
        o.changes += self.batch.changes;
        o.records += self.batch.records.len();
        o.bytes += self.batch.bytes();
        o.last_commit = self.batch.records.last().map(|r| r.commit_time_us).or(o.last_commit);
    }

    /// Read `stream` up to `upto` (the WAL flush position when the step began), like
    /// a peek would: every transaction committed at or before it, none after it, at
    /// most `limit` non-metadata messages, always ending on a transaction boundary.
    /// Returns whether the step caught up. `quiet` is raised to the keepalive
    /// positions seen between transactions: everything before them has been read.
    pub fn read_stream(&mut self, s: &mut dyn MessageStream, limit: i64, upto: Lsn, quiet: &mut Lsn) -> Result<bool> {
        let mut n = 0i64;
        let mut silent_since = std::time::Instant::now();
        let mut read_any = false;
        loop {
            let in_txn = self.pipeline.in_transaction();
            if n >= limit && !in_txn {
                return Ok(false);
            }
            let next = s.next(POLL);
            if next.is_err() && !read_any {
                self.lost_at_start = true;
            }
            read_any = true;
            match next? {
                Some(Message::Data { start, payload, .. }) => {
                    if !in_txn && pgoutput::begin_commit_lsn(payload).is_some_and(|l| l > upto) {
                        s.unread();
                        return Ok(true);
                    }
                    // Relation and type messages are sent once per walsender, not
                    // once per step: only the rest count, so limits cut the same
                    // place on a new stream.
                    if !pgoutput::is_metadata(payload) {
                        n += 1;
                    }
                    // The payload borrows the stream; the commit's end is read first.
                    let last = pgoutput::commit_end_lsn(payload).is_some_and(|l| l >= upto);
                    self.feed_at(payload, start)?;
                    silent_since = std::time::Instant::now();
                    if self.chunk_arrived {
                        // The next chunk is read by the next step.
                        return Ok(false);
                    }
                    // A transaction whose commit record ends at or past `upto` is
                    // the last one committed before it: nothing more to wait for.
                    if last {
                        return Ok(true);
                    }
                }
                Some(Message::Keepalive { end, reply }) => {
                    if reply {
                        // Only what the catalog has committed counts as flushed.
                        s.feedback(self.durable, false)?;
                    }
                    if !in_txn {
                        *quiet = (*quiet).max(end);
                        if end >= upto {
                            return Ok(true);
                        }
                    }
                    silent_since = std::time::Instant::now();
                }
                None => {
                    if self.stop_requested() {
                        return Err(stopping());
                    }
                    if !in_txn && silent_since.elapsed() >= ASK_AFTER {
                        // The walsender pings when it waits for WAL; ask for its
                        // position in case it is waiting already.
                        s.feedback(self.durable, true)?;
                        silent_since = std::time::Instant::now();
                    }
                }
            }
        }
    }

    /// Deliver the initial snapshot in chunks of `chunk_rows` rows, then end the
    /// connector's step (connectors that keep the snapshot in one target
    /// transaction commit it there). Chunk 0 is delivered even when empty.
    pub fn deliver_snapshot(&mut self, source: &mut dyn SnapshotSource, chunk_rows: i64) -> Result<()> {
        let mut chunk = 0u32;
        loop {
            if self.stop_requested() {
                return Err(stopping());
            }
            let txn = source.next_chunk(chunk_rows)?;
            let rows = txn.changes.len();
            if rows == 0 && chunk > 0 {
                break;
            }
            self.deliver_rows(txn, Some(chunk))?;
            chunk += 1;
            if (rows as i64) < chunk_rows {
                break;
            }
        }
        self.rt.block_on(self.connector.finish_step())
    }

    /// Deliver what is left, end the connector's step if anything was delivered,
    /// and apply the confirmed-LSN rule.
    pub fn finish(mut self, caught_up: bool, flushed: Lsn, quiet: Option<Lsn>, write_idle: bool) -> Result<(Outcome, Progress)> {
        if let Err(e) = self.flush() {
            return if self.refusal { self.finish_refused(flushed) } else { Err(e) };
        }
        let delivered = self.outcome.transactions + usize::from(self.outcome.backfill.as_ref().is_some_and(|a| !a.again));
        if delivered > 0 {
            self.rt.block_on(self.connector.finish_step())?;
        }
        let p = progress(self.durable, self.end, quiet, caught_up, flushed, delivered, write_idle || self.outcome.backfill.is_some());
        let mut outcome = self.outcome;
        // A backfill with chunks still to read is not caught up, whatever the stream.
        outcome.caught_up = caught_up && outcome.backfill.as_ref().is_none_or(|a| !a.more && !a.again);
        outcome.confirmed = Some(p.confirmed);
        Ok((outcome, p))
    }

    /// End a step that stopped at refused records ([`Step::refused`]): end the
    /// connector's step for the batches delivered before them, and confirm no
    /// further than their end (the stream's keepalives may be past the batch
    /// that was not delivered).
    pub fn finish_refused(self, flushed: Lsn) -> Result<(Outcome, Progress)> {
        if self.outcome.transactions > 0 {
            self.rt.block_on(self.connector.finish_step())?;
        }
        let p = progress(self.durable, self.end, None, false, flushed, self.outcome.transactions, false);
        let mut outcome = self.outcome;
        outcome.refused = true;
        outcome.confirmed = Some(p.confirmed);
        Ok((outcome, p))
    }

    /// What a snapshot-only step (the initialisation) delivered.
    pub fn into_outcome(self) -> Outcome {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pgoutput::wire::*;
    use crate::engine::testing::{fixture, Fault, MemoryConnector, NoSql, NoTypes, Scripted, ScriptedStream};

    fn rt() -> Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Transactions t = 1..=n, each of `per` inserts, commit LSN 0x100·t, ending at 0x100·t + 0x10.
    fn backlog(n: u64, per: u64) -> Vec<Vec<u8>> {
        transactions(&vec![per; n as usize])
    }

    /// Transaction t (from 1) of `sizes[t - 1]` inserts, commit LSN 0x100·t, ending at 0x100·t + 0x10.
    fn transactions(sizes: &[u64]) -> Vec<Vec<u8>> {
        let mut msgs = vec![relation(1, "public", "t", b'd', &[("id", 23, true), ("v", 25, false)])];
        let mut id = 0;
        for (t, n) in (1u64..).zip(sizes) {
            msgs.push(begin(0x100 * t, 0, t as u32));
            for _ in 0..*n {
                id += 1;
                msgs.push(insert(1, &[Some(&id.to_string()), Some("x")]));
            }
            msgs.push(commit(0x100 * t, 0x100 * t + 0x10, 0));
        }
        msgs
    }

    /// Feed `msgs` to a step from `confirmed` (batches of `batch` changes, parts of
    /// `part_changes`) and finish it, caught up or not, with flush position 0x9000.
    fn fed_step(
        msgs: &[Vec<u8>],
        c: &mut MemoryConnector,
        confirmed: u64,
        batch: usize,
        part_changes: usize,
        caught_up: bool,
    ) -> Result<(Outcome, Progress)> {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types) = (NoSql, NoTypes);
        let mut step = Step::new(&mut pipeline, c, &rt, &mut sql, &mut types, Lsn(confirmed), batch).parts_after(part_changes);
        for m in msgs {
            step.feed(m)?;
        }
        step.finish(caught_up, Lsn(0x9000), None, false)
    }

    fn peek_step(msgs: &[Vec<u8>], connector: &mut MemoryConnector, confirmed: u64, batch: usize) -> Result<(Outcome, Progress)> {
        fed_step(msgs, connector, confirmed, batch, usize::MAX, true)
    }

    /// t1 (2 inserts), t2 (`big` inserts), t3 (1 insert).
    fn with_a_large_transaction(big: u64) -> Vec<Vec<u8>> {
        transactions(&[2, big, 1])
    }

    fn parts_step(msgs: &[Vec<u8>], c: &mut MemoryConnector, confirmed: u64, part_changes: usize) -> Result<(Outcome, Progress)> {
        fed_step(msgs, c, confirmed, 100, part_changes, false)
    }

    /// A backfill chunk of rows 1..=4 of `t(id, v)` read under snapshot
    /// `100:105:103`, waiting in `p` (sealed watermarks under key `k`).
    fn backfill_pipeline() -> Pipeline {
        use crate::engine::backfill::{Chunk, ChunkId, Snapshot};
        use crate::engine::change::{Cell, Column, Relation};
        let mut p = fixture::pipeline();
        p.message_key = b"k".to_vec();
        p.source_oid = 1;
        p.sink_id = 9;
        let cols = [("id", true), ("v", false)];
        let columns = cols.iter().map(|(n, k)| Column { name: n.to_string(), ty: crate::engine::types::PgType::from_oid(if *k { 23 } else { 25 }), type_modifier: -1, is_identity: *k }).collect();
        let rel = std::sync::Arc::new(Relation { id: 1, namespace: "public".into(), name: "t".into(), replica_identity: b'd', columns, meta: None });
        let rows = (1..=4).map(|i| vec![Cell::Text(i.to_string()), Cell::Text("read".into())]).collect();
        let chunk = Chunk::new(ChunkId { sink: 9, backfill: 1, number: 0 }, rel, &["id".into()], Snapshot::parse("100:105:103").unwrap(), rows, 4).unwrap();
        assert!(p.await_chunk(chunk));
        p
    }

    fn watermark(number: i64) -> Vec<u8> {
        let payload = crate::engine::backfill::ChunkId { sink: 9, backfill: 1, number }.payload();
        message(false, crate::engine::backfill::WATERMARK_PREFIX, crate::engine::seal::seal(b"k", crate::engine::backfill::WATERMARK_PREFIX, &payload).as_bytes())
    }

    #[test]
    fn a_backfill_chunk_goes_out_at_its_watermark_without_the_rows_the_stream_changed() {
        let rt = rt();
        let mut pipeline = backfill_pipeline();
        let mut c = MemoryConnector::default();
        let (mut sql, mut types) = (NoSql, NoTypes);
        let script = vec![
            Scripted::Data(relation(1, "public", "t", b'd', &[("id", 23, true), ("v", 25, false)])),
            // Committed before the chunk's snapshot: the chunk has it; kept.
            Scripted::DataAt(0x100, begin(0x110, 0, 101)),
            Scripted::DataAt(0x100, update(1, None, &[Some("1"), Some("s1")])),
            Scripted::DataAt(0x110, commit(0x110, 0x118, 0)),
            // Running for the snapshot: the stream's row of 2 wins; the chunk's goes.
            Scripted::DataAt(0x200, begin(0x210, 0, 103)),
            Scripted::DataAt(0x200, update(1, None, &[Some("2"), Some("s2")])),
            Scripted::DataAt(0x210, commit(0x210, 0x218, 0)),
            // A forged watermark and one of another chunk are not acted on.
            Scripted::DataAt(0x280, message(false, crate::engine::backfill::WATERMARK_PREFIX, b"9:1:0")),
            Scripted::DataAt(0x290, watermark(5)),
            Scripted::DataAt(0x300, watermark(0)),
            // After the watermark, the next step's: a commit record that begins
            // where the watermark's record ends (a message's position).
            Scripted::DataAt(0x300, begin(0x300, 0, 106)),
            Scripted::DataAt(0x300, insert(1, &[Some("7"), Some("s7")])),
            Scripted::DataAt(0x300, commit(0x300, 0x318, 0)),
        ];
        let mut stream = ScriptedStream::new(script);
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn(0x50), 1000);
        let mut quiet = Lsn::ZERO;
        let caught_up = step.read_stream(&mut stream, 1000, Lsn(0x9000), &mut quiet).unwrap();
        assert!(!caught_up, "the step ends at the watermark");
        let (out, p) = step.finish(caught_up, Lsn(0x9000), None, false).unwrap();
        assert_eq!(stream.remaining(), 3);
        // The two transactions, then the chunk's rows 1, 3, 4 as reads.
        assert_eq!(c.batch_sizes(), vec![(2, 2), (1, 3)]);
        let keys: Vec<String> = c.batches[1].records.iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect();
        assert_eq!(keys, vec!["{\"id\":1}", "{\"id\":3}", "{\"id\":4}"]);
        // A message's position is its record's end: the chunk lies just before it.
        assert_eq!((c.batches[1].start_lsn, c.batches[1].end_lsn), (Lsn(0x2FF), Lsn(0x300)));
        assert_eq!(p, Progress { confirmed: Lsn(0x300), record: true });
        let a = out.backfill.unwrap();
        assert_eq!((a.read, a.delivered, a.more, a.again), (4, 3, true, false));
        assert_eq!(a.last_key, Some(vec![Some("4".to_string())]));
        assert_eq!(c.finished_steps, 1);
        // The transaction committed at the watermark's position is not taken for delivered.
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, p.confirmed, 1000);
        assert!(step.read_stream(&mut stream, 1000, Lsn(0x318), &mut quiet).unwrap());
        step.finish(true, Lsn(0x318), None, false).unwrap();
        assert_eq!(c.batch_sizes().last(), Some(&(1, 1)));
        assert!(c.batches[1].position() < c.batches[2].position() && c.batches[2].start_lsn > c.batches[1].start_lsn);
    }

    #[test]
    fn a_chunk_voided_by_a_truncate_is_read_again_and_a_chunk_is_refused_when_a_running_transaction_was_fed() {
        let rt = rt();
        let mut pipeline = backfill_pipeline();
        let mut c = MemoryConnector::default();
        let (mut sql, mut types) = (NoSql, NoTypes);
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn(0x50), 1000);
        for m in [relation(1, "public", "t", b'd', &[("id", 23, true), ("v", 25, false)]), begin(0x110, 0, 103), truncate(&[1], 0), commit(0x110, 0x118, 0)] {
            step.feed(&m).unwrap();
        }
        step.feed_at(&watermark(0), Lsn(0x200)).unwrap();
        // A peek read everything; the backfill still has its chunk to read again.
        let (out, p) = step.finish(true, Lsn(0x9000), None, false).unwrap();
        assert!(!out.caught_up);
        assert!(out.backfill.unwrap().again);
        assert_eq!(c.batch_sizes(), vec![(1, 0)], "only the truncate (skipped by default)");
        assert_eq!(p.confirmed, Lsn(0x9000));
        // Transaction 103 was fed: a chunk whose snapshot counts it as running is refused.
        use crate::engine::backfill::{Chunk, ChunkId, Snapshot};
        let rel = std::sync::Arc::new(crate::engine::change::Relation { id: 1, namespace: "public".into(), name: "t".into(), replica_identity: b'd', columns: vec![], meta: None });
        let chunk = |s: &str| Chunk::new(ChunkId { sink: 9, backfill: 1, number: 1 }, rel.clone(), &[], Snapshot::parse(s).unwrap(), vec![], 10).unwrap();
        assert!(!pipeline.await_chunk(chunk("100:106:103")));
        assert!(!pipeline.awaits_chunk());
        assert!(pipeline.await_chunk(chunk("100:106:105")));
    }

    #[test]
    fn a_large_transaction_goes_out_in_parts_and_is_confirmed_at_its_end() {
        let mut c = MemoryConnector::default();
        let (out, p) = parts_step(&with_a_large_transaction(25), &mut c, 0, 10).unwrap();
        // t1 goes first on its own, then t2 in parts of 10, 10 and 5, then t3.
        assert_eq!(c.batch_sizes(), vec![(1, 2), (0, 10), (0, 10), (1, 5), (1, 1)]);
        let parts: Vec<_> = c.batches.iter().map(|b| b.part.map(|p| (p.index, p.last, p.records_before))).collect();
        assert_eq!(parts, vec![None, Some((0, false, 0)), Some((1, false, 10)), Some((2, true, 20)), None]);
        // Parts before the last end at the commit LSN; the last at the transaction's end.
        assert_eq!(c.batches.iter().map(|b| b.end_lsn).collect::<Vec<_>>(), vec![Lsn(0x110), Lsn(0x200), Lsn(0x200), Lsn(0x210), Lsn(0x310)]);
        let positions: Vec<_> = c.batches.iter().map(|b| b.position()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions grow: {positions:?}");
        assert_eq!((out.transactions, out.changes, out.records), (3, 28, 28));
        assert_eq!(out.batch_ms.len(), 5, "parts are timed as batches");
        assert_eq!(p.confirmed, Lsn(0x310));
        // Every row once, in order.
        let ids: Vec<String> = c.records().iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect();
        assert_eq!(ids.len(), 28);
        assert_eq!(ids[2], r#"{"id":3}"#);
    }

    #[test]
    fn a_change_the_sink_cannot_take_stops_it_after_what_came_before_is_delivered() {
        let rt = rt();
        let mut c = MemoryConnector::default();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types) = (NoSql, NoTypes);
        let mut msgs = transactions(&[2, 1]);
        // t3: a change the pipeline refuses for good (a malformed insert).
        msgs.push(begin(0x300, 0, 3));
        msgs.push(insert(9, &[Some("1")]));
        msgs.push(commit(0x300, 0x310, 0));
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn(0), 100);
        let e = msgs.iter().try_for_each(|m| step.feed(m)).unwrap_err();
        assert!(!e.is_transient(), "{e:?}");
        assert!(step.refused());
        let (out, p) = step.finish_refused(Lsn(0x9000)).unwrap();
        assert_eq!(c.records().len(), 3, "t1 and t2 are delivered");
        assert_eq!((out.transactions, p.confirmed), (2, Lsn(0x210)));
        assert_eq!(out.stopped.map(|e| e.message), Some(e.message));
        // With nothing before it, the error is the step's.
        let mut c = MemoryConnector::default();
        let mut pipeline = fixture::pipeline();
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn(0), 100);
        let e = msgs[..1].iter().chain(&msgs[msgs.len() - 3..]).try_for_each(|m| step.feed(m)).unwrap_err();
        assert!(!e.is_transient() && !step.refused());
    }

    #[test]
    fn a_failure_in_the_middle_of_a_large_transaction_confirms_nothing_and_the_retry_cuts_the_same_parts() {
        let msgs = with_a_large_transaction(25);
        let mut a = MemoryConnector::default();
        parts_step(&msgs, &mut a, 0x110, 10).unwrap();
        let mut b = MemoryConnector::default();
        b.faults.extend([Fault::Ok, Fault::AfterDurable]);
        let err = parts_step(&msgs, &mut b, 0x110, 10).unwrap_err();
        assert!(err.is_transient());
        assert_eq!(b.finished_steps, 0);
        // The retry reads the transaction again from its BEGIN (nothing was confirmed).
        b.batches.clear();
        let (_, p) = parts_step(&msgs, &mut b, 0x110, 10).unwrap();
        let shape = |c: &MemoryConnector| c.batches.iter().map(|x| (x.position(), x.part, x.records.len())).collect::<Vec<_>>();
        assert_eq!(shape(&a), shape(&b));
        assert_eq!(p.confirmed, Lsn(0x310));
    }

    #[test]
    fn a_large_transaction_already_confirmed_is_not_delivered_again() {
        let mut c = MemoryConnector::default();
        let (out, _) = parts_step(&with_a_large_transaction(25), &mut c, 0x210, 10).unwrap();
        assert_eq!(c.batch_sizes(), vec![(1, 1)], "only t3");
        assert_eq!(out.transactions, 1);
    }

    #[test]
    fn a_transaction_below_the_part_size_stays_whole() {
        let mut c = MemoryConnector::default();
        parts_step(&with_a_large_transaction(9), &mut c, 0, 10).unwrap();
        assert_eq!(c.batch_sizes(), vec![(3, 12)]);
        assert!(c.batches[0].part.is_none());
    }

    #[test]
    fn a_stop_request_ends_a_large_transaction_between_parts() {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types, mut c) = (NoSql, NoTypes, MemoryConnector::default());
        let asked = std::cell::Cell::new(0);
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100).parts_after(10).stop_when(&stop);
        let err = with_a_large_transaction(45).iter().try_for_each(|m| step.feed(m)).unwrap_err();
        assert_eq!(err.message, STOPPING);
        assert_eq!(c.batch_sizes(), vec![(1, 2), (0, 10)], "t1, then one part, then the stop");
    }

    #[test]
    fn batches_are_cut_after_the_transaction_that_fills_them() {
        let mut c = MemoryConnector::default();
        let (out, p) = peek_step(&backlog(5, 2), &mut c, 0, 3).unwrap();
        // 2 changes per transaction, cut at >= 3: [t1 t2] [t3 t4] [t5].
        assert_eq!(c.batch_sizes(), vec![(2, 4), (2, 4), (1, 2)]);
        assert_eq!(c.batches[0].start_lsn, Lsn(0x100));
        assert_eq!(c.batches[0].end_lsn, Lsn(0x210));
        assert_eq!((out.transactions, out.changes, out.records), (5, 10, 10));
        assert_eq!(out.batch_ms.len(), 3, "one delivery time per batch");
        assert!(out.batch_ms.iter().all(|ms| *ms >= 0.0));
        assert_eq!(c.finished_steps, 1);
        assert_eq!(p, Progress { confirmed: Lsn(0x9000), record: true }, "caught up: the flush position is confirmed");
    }

    #[test]
    fn a_retried_step_cuts_the_same_batches() {
        let msgs = backlog(7, 3);
        let mut a = MemoryConnector::default();
        peek_step(&msgs, &mut a, 0, 5).unwrap();
        let mut b = MemoryConnector::default();
        b.faults.push_back(Fault::BeforeDurable);
        b.faults.push_back(Fault::Ok);
        b.faults.push_back(Fault::AfterDurable);
        assert!(peek_step(&msgs, &mut b, 0, 5).is_err());
        assert!(peek_step(&msgs, &mut b, 0, 5).is_err());
        b.batches.clear();
        peek_step(&msgs, &mut b, 0, 5).unwrap();
        let lsns = |c: &MemoryConnector| c.batches.iter().map(|x| (x.start_lsn, x.end_lsn)).collect::<Vec<_>>();
        assert_eq!(lsns(&a), lsns(&b));
    }

    #[test]
    fn confirmed_lsn_only_counts_what_was_delivered() {
        // Not caught up: the end of the last delivered transaction, nothing more.
        assert_eq!(progress(Lsn(0x10), Lsn(0x210), None, false, Lsn(0x9000), 2, false), Progress { confirmed: Lsn(0x210), record: true });
        // Caught up: the flush position read before the slice.
        assert_eq!(progress(Lsn(0x10), Lsn(0x210), None, true, Lsn(0x9000), 2, false).confirmed, Lsn(0x9000));
        // A keepalive seen between transactions counts as read.
        assert_eq!(progress(Lsn(0x10), Lsn(0x10), Some(Lsn(0x500)), false, Lsn(0x9000), 0, true), Progress { confirmed: Lsn(0x500), record: true });
        // Idle, and idle progress not wanted: nothing is written.
        assert_eq!(progress(Lsn(0x10), Lsn(0x10), None, true, Lsn(0x9000), 0, false), Progress { confirmed: Lsn(0x9000), record: false });
        // Never backwards.
        assert_eq!(progress(Lsn(0x800), Lsn(0x10), Some(Lsn(0x20)), true, Lsn(0x30), 0, true), Progress { confirmed: Lsn(0x800), record: false });
    }

    #[test]
    fn already_confirmed_transactions_are_not_delivered_again() {
        let mut c = MemoryConnector::default();
        let (out, _) = peek_step(&backlog(4, 1), &mut c, 0x210, 10).unwrap();
        assert_eq!(out.transactions, 2, "t1 and t2 end at or before 0x210");
        assert_eq!(c.batches[0].start_lsn, Lsn(0x300));
    }

    #[test]
    fn failing_before_durable_delivers_nothing_and_confirms_nothing() {
        let mut c = MemoryConnector::default();
        c.faults.push_back(Fault::Ok);
        c.faults.push_back(Fault::BeforeDurable);
        let err = peek_step(&backlog(4, 1), &mut c, 0, 1).unwrap_err();
        assert!(err.is_transient());
        assert_eq!(c.batch_sizes(), vec![(1, 1)], "only the first batch reached the target");
        assert_eq!(c.finished_steps, 0, "a failed step is not finished");
        // The retry starts again from the catalog's position and delivers all.
        c.batches.clear();
        let (out, p) = peek_step(&backlog(4, 1), &mut c, 0, 1).unwrap();
        assert_eq!(out.transactions, 4);
        assert!(p.record);
    }

    #[test]
    fn failing_after_durable_redelivers_the_batch_on_retry() {
        let mut c = MemoryConnector::default();
        c.faults.push_back(Fault::AfterDurable);
        assert!(peek_step(&backlog(2, 1), &mut c, 0, 10).is_err());
        assert_eq!(c.records().len(), 2, "the target holds the batch");
        peek_step(&backlog(2, 1), &mut c, 0, 10).unwrap();
        // Nothing was confirmed, so the batch comes again: a target without its
        // own progress sees it twice (the connector's dedup is what prevents that).
        assert_eq!(c.records().len(), 4);
        assert_eq!(c.batches[0].start_lsn, c.batches[1].start_lsn);
    }

    #[test]
    fn an_error_mid_batch_fails_the_step_with_the_connector_s_kind() {
        let mut c = MemoryConnector::default();
        c.faults.push_back(Fault::MidBatch { after: 1, permanent: true });
        let err = peek_step(&backlog(1, 3), &mut c, 0, 10).unwrap_err();
        assert!(!err.is_transient(), "a permanent error stays permanent");
        assert_eq!(c.records().len(), 1, "the target took part of the batch");
    }

    #[test]
    fn finish_step_failure_fails_the_step() {
        let mut c = MemoryConnector::default();
        c.fail_finish = true;
        assert!(peek_step(&backlog(1, 1), &mut c, 0, 10).is_err());
    }

    fn stream_step(script: Vec<Scripted>, limit: i64, upto: u64, c: &mut MemoryConnector) -> (Result<(bool, Lsn)>, ScriptedStream, Outcome) {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types) = (NoSql, NoTypes);
        let mut s = ScriptedStream::new(script);
        let mut quiet = Lsn::ZERO;
        let mut step = Step::new(&mut pipeline, c, &rt, &mut sql, &mut types, Lsn::ZERO, 100);
        let r = step.read_stream(&mut s, limit, Lsn(upto), &mut quiet);
        let r = r.map(|caught_up| (caught_up, quiet));
        let out = match step.finish(false, Lsn::ZERO, None, false) {
            Ok((o, _)) => o,
            Err(_) => Outcome::default(),
        };
        (r, s, out)
    }

    #[test]
    fn a_stream_read_stops_at_the_flush_position_and_leaves_the_next_begin() {
        let mut c = MemoryConnector::default();
        let script = backlog(3, 1).into_iter().map(Scripted::Data).collect();
        // upto 0x250: t1 and t2 commit before it, t3's BEGIN (commit at 0x300) is after.
        let (r, s, out) = stream_step(script, 1000, 0x250, &mut c);
        assert_eq!(r.unwrap(), (true, Lsn::ZERO));
        assert_eq!(out.transactions, 2);
        assert_eq!(s.remaining(), 3, "t3's BEGIN, insert and COMMIT are left for the next step");
    }

    #[test]
    fn a_stream_read_ends_on_a_transaction_boundary_after_the_limit() {
        let mut c = MemoryConnector::default();
        let script = backlog(3, 3).into_iter().map(Scripted::Data).collect();
        // Each transaction is 5 messages; a limit of 6 stops after t2 (not inside it).
        let (r, s, out) = stream_step(script, 6, 0x9000, &mut c);
        assert_eq!(r.unwrap(), (false, Lsn::ZERO), "not caught up: the limit stopped it");
        assert_eq!(out.transactions, 2);
        assert_eq!(s.remaining(), 5);
    }

    #[test]
    fn keepalives_between_transactions_count_as_read_and_replies_report_only_durable() {
        let mut c = MemoryConnector::default();
        let mut script: Vec<Scripted> = backlog(1, 1).into_iter().map(Scripted::Data).collect();
        script.push(Scripted::Keepalive { end: 0x400, reply: true });
        script.push(Scripted::Keepalive { end: 0x9000, reply: false });
        let (r, s, _) = stream_step(script, 1000, 0x8000, &mut c);
        assert_eq!(r.unwrap(), (true, Lsn(0x9000)));
        assert_eq!(s.feedbacks, vec![(Lsn::ZERO, false)], "feedback reports the catalog's position, not what was read");
    }

    #[test]
    fn a_stream_that_fails_before_any_message_is_lost_at_start() {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types, mut c) = (NoSql, NoTypes, MemoryConnector::default());
        let mut s = ScriptedStream::new(vec![Scripted::Fail]);
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100);
        assert!(step.read_stream(&mut s, 10, Lsn(0x100), &mut Lsn(0)).is_err());
        assert!(step.lost_at_start);
    }

    #[test]
    fn a_stop_request_ends_a_silent_read() {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types, mut c) = (NoSql, NoTypes, MemoryConnector::default());
        let mut s = ScriptedStream::new(vec![Scripted::Silence]);
        let stop = || true;
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100).stop_when(&stop);
        let err = step.read_stream(&mut s, 10, Lsn(0x100), &mut Lsn(0)).unwrap_err();
        assert!(err.message.contains("stopping"));
    }

    #[test]
    fn a_stop_request_ends_the_step_before_its_next_batch_and_snapshot_chunk() {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types, mut c) = (NoSql, NoTypes, MemoryConnector::default());
        let asked = std::cell::Cell::new(0);
        // Stop once the first batch went out.
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() > 1
        };
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 2).stop_when(&stop);
        let err = backlog(5, 1).iter().try_for_each(|m| step.feed(m)).unwrap_err();
        assert_eq!(err.message, STOPPING);
        assert!(err.is_transient());
        assert_eq!(c.batch_sizes(), vec![(2, 2)], "only the batch before the request was delivered");
        let mut c = MemoryConnector::default();
        asked.set(0);
        let mut rows = fixture::SnapshotRows::new(35, Lsn(0x700));
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100).stop_when(&stop);
        assert_eq!(step.deliver_snapshot(&mut rows, 10).unwrap_err().message, STOPPING);
        assert_eq!(c.batches.len(), 1, "one chunk, then the stop");
        assert_eq!(c.finished_steps, 0);
    }

    #[test]
    fn the_snapshot_is_delivered_in_chunks_then_finished() {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types, mut c) = (NoSql, NoTypes, MemoryConnector::default());
        let mut rows = fixture::SnapshotRows::new(25, Lsn(0x700));
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100);
        step.deliver_snapshot(&mut rows, 10).unwrap();
        let out = step.into_outcome();
        assert_eq!(out.records, 25);
        assert_eq!(out.batch_ms.len(), 3, "chunks are timed as batches");
        assert_eq!(c.batches.iter().map(|b| b.snapshot_chunk).collect::<Vec<_>>(), vec![Some(0), Some(1), Some(2)]);
        assert_eq!(c.batch_sizes(), vec![(1, 10), (1, 10), (1, 5)]);
        assert_eq!(c.finished_steps, 1);
        // An empty table still gets its (empty) chunk 0, and an exact multiple no empty tail.
        let mut c = MemoryConnector::default();
        let mut rows = fixture::SnapshotRows::new(20, Lsn(0x700));
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100);
        step.deliver_snapshot(&mut rows, 10).unwrap();
        assert_eq!(c.batch_sizes(), vec![(1, 10), (1, 10)]);
        let mut c = MemoryConnector::default();
        let mut rows = fixture::SnapshotRows::new(0, Lsn(0x700));
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100);
        step.deliver_snapshot(&mut rows, 10).unwrap();
        assert_eq!(c.batch_sizes(), vec![(1, 0)]);
    }

    /// Steps over `msgs` from `confirmed` until one ends caught up, as the worker
    /// runs them: a step that ends at refused records records its dead letters
    /// and progress, and the next leaves those records out.
    fn steps_until_caught_up(msgs: &[Vec<u8>], c: &mut MemoryConnector, policy: Policy, batch: usize) -> (Vec<Outcome>, Lsn, Vec<DeadLetter>) {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        pipeline.errors_policy = policy;
        let (mut sql, mut types) = (NoSql, NoTypes);
        let mut confirmed = Lsn::ZERO;
        let mut letters = Vec::new();
        let mut outcomes = Vec::new();
        for _ in 0..20 {
            pipeline.dead = letters.iter().map(|d: &DeadLetter| (d.lsn, d.ordinal)).collect();
            let mut step = Step::new(&mut pipeline, c, &rt, &mut sql, &mut types, confirmed, batch);
            let fed = msgs.iter().try_for_each(|m| step.feed(m));
            let (out, p) = match fed {
                Err(e) if step.refused() => {
                    assert!(e.is_transient() && e.message == REFUSED, "{e:?}");
                    step.finish_refused(Lsn(0x9000)).unwrap()
                }
                Err(e) => panic!("step failed: {e:?}"),
                Ok(()) => step.finish(true, Lsn(0x9000), None, false).unwrap(),
            };
            confirmed = p.confirmed;
            letters.extend(out.dead_letters.iter().cloned());
            let done = !out.refused;
            outcomes.push(out);
            if done {
                return (outcomes, confirmed, letters);
            }
        }
        panic!("no step caught up");
    }

    /// The keys of the records that reached the target, in order.
    fn delivered_keys(c: &MemoryConnector) -> Vec<String> {
        c.records().iter().map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned()).collect()
    }

    #[test]
    fn refused_records_become_dead_letters_and_the_rest_is_delivered_once() {
        // 5 transactions of 3 inserts (ids 1..15), batches of 6 changes; the target
        // refuses ids 5 and 11 for good.
        let msgs = backlog(5, 3);
        let mut c = MemoryConnector { refuse_keys: vec![r#"{"id":5}"#.into(), r#"{"id":11}"#.into()], ..Default::default() };
        let (outs, confirmed, letters) = steps_until_caught_up(&msgs, &mut c, Policy::DeadLetter, 6);
        let want: Vec<String> = (1..=15).filter(|i| *i != 5 && *i != 11).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        assert_eq!(delivered_keys(&c), want, "every other record once, in order");
        assert_eq!(confirmed, Lsn(0x9000));
        assert_eq!(outs.len(), 3, "two steps end at a refusal, the third catches up");
        // Each dead letter names its transaction and place there, and keeps the change.
        let at: Vec<_> = letters.iter().map(|d| (d.lsn, d.ordinal, d.key.clone().unwrap())).collect();
        assert_eq!(at, vec![(Lsn(0x200), 1, r#"{"id":"5"}"#.to_string()), (Lsn(0x400), 1, r#"{"id":"11"}"#.to_string())]);
        assert!(letters.iter().all(|d| d.change.is_some() && d.error.contains("refused")));
        // Batches that went out before a refusal are confirmed with it, not after.
        assert_eq!(outs[0].confirmed, Some(Lsn::ZERO));
        assert_eq!(outs[1].confirmed, Some(Lsn(0x210)));
        // The records after a set-aside one keep their ordinals (stable ids).
        let t2: Vec<u32> = c.records().iter().filter(|r| r.commit_lsn == Lsn(0x200)).map(|r| r.ordinal).collect();
        assert_eq!(t2, vec![0, 2]);
    }

    #[test]
    fn under_fail_a_refusal_fails_the_step_and_under_skip_nothing_is_kept() {
        let msgs = backlog(2, 2);
        let mut c = MemoryConnector { refuse_keys: vec![r#"{"id":2}"#.into()], ..Default::default() };
        let err = peek_step(&msgs, &mut c, 0, 100).unwrap_err();
        assert!(!err.is_transient() && err.refused == vec![1]);
        assert!(c.records().is_empty());
        let mut c = MemoryConnector { refuse_keys: vec![r#"{"id":2}"#.into()], ..Default::default() };
        let (_, _, letters) = steps_until_caught_up(&msgs, &mut c, Policy::Skip, 100);
        assert_eq!(delivered_keys(&c).len(), 3);
        assert_eq!(letters.len(), 1);
        assert!(letters[0].change.is_none(), "skip keeps where and why, not the change");
    }

    #[test]
    fn a_snapshot_chunk_goes_again_without_its_refused_rows() {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        pipeline.errors_policy = Policy::DeadLetter;
        let (mut sql, mut types) = (NoSql, NoTypes);
        let mut c = MemoryConnector { refuse_keys: vec![r#"{"id":3}"#.into(), r#"{"id":14}"#.into()], ..Default::default() };
        let mut rows = fixture::SnapshotRows::new(15, Lsn(0x700));
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100);
        step.deliver_snapshot(&mut rows, 10).unwrap();
        let out = step.into_outcome();
        assert_eq!(out.records, 13);
        assert_eq!(delivered_keys(&c).len(), 13);
        let at: Vec<_> = out.dead_letters.iter().map(|d| (d.chunk, d.ordinal)).collect();
        assert_eq!(at, vec![(Some(0), 2), (Some(1), 3)]);
    }

    #[test]
    fn a_failed_snapshot_chunk_fails_the_initialisation() {
        let rt = rt();
        let mut pipeline = fixture::pipeline();
        let (mut sql, mut types, mut c) = (NoSql, NoTypes, MemoryConnector::default());
        c.faults.push_back(Fault::Ok);
        c.faults.push_back(Fault::BeforeDurable);
        let mut rows = fixture::SnapshotRows::new(25, Lsn(0x700));
        let mut step = Step::new(&mut pipeline, &mut c, &rt, &mut sql, &mut types, Lsn::ZERO, 100);
        assert!(step.deliver_snapshot(&mut rows, 10).is_err());
        assert_eq!(c.finished_steps, 0);
    }
}
