//! One sink's path from pgoutput messages to an encoded [`Batch`]: decode, skip what
//! is already confirmed, resolve unchanged TOAST values ([`super::toast`]), apply the envelope, encode
//! key and value, stamp headers. The glue feeds messages and hands the batch to the
//! connector; progress moves only after the connector reports it durable.

use std::sync::Arc;

use super::backfill::{self, Arrived, Chunk, RecentXids};
use super::change::{Cell, Change, Relation, RelationMeta, Transaction};
use super::connector::{Batch, Part, Record, SqlSession, TxnStamp};
use super::dead_letter::{self, DeadLetter, DeadSet};
use super::encoder::avro::EncoderContext;
use super::encoder::formats;
use super::encoder::{Encoder, Role};
use super::envelope::{Draft, Envelope, EnvelopeKind, Payload};
use super::schema_change::{self, SchemaChange};
use super::seal;
use super::error::{Result, SinkError};
use super::lsn::Lsn;
use super::options::{SinkDefinition, SkippedOps};
use super::pgoutput::{Decoded, Decoder};
use super::toast::{self, Filled, ToastReader, UnchangedToast};
use super::types::PgType;

/// Resolves what the stream does not say (implemented by the glue over the
/// catalog): types the engine does not know by OID, and, for formats that need
/// them, a relation's NOT NULL flags and comments.
pub trait TypeResolver {
    fn resolve(&mut self, oid: u32) -> Option<PgType>;
    fn relation_meta(&mut self, _rel: &Relation) -> Option<RelationMeta> {
        None
    }
}

pub struct Pipeline {
    decoder: Decoder,
    envelope: Envelope,
    key_encoder: Box<dyn Encoder>,
    value_encoder: Box<dyn Encoder>,
    accepts_unchanged: bool,
    unchanged_toast: UnchangedToast,
    toast: ToastReader,
    /// Ask the resolver for NOT NULL flags and comments of each relation (Avro).
    needs_meta: bool,
    /// Encode keys and values (off when the connector applies rows itself).
    pub encode: bool,
    drafts: Vec<Draft>,
    /// Transactions ending at or before this position are already delivered.
    pub confirmed: Lsn,
    /// The open transaction has been cut into parts (see [`Pipeline::cut_part`]).
    parts: Option<Parts>,
    /// The next record's position in its transaction (or snapshot chunk).
    ordinal: u32,
    /// What a record the target refuses for good does (`errors.policy`).
    pub errors_policy: dead_letter::Policy,
    /// The kinds of change left out (`skipped.operations`).
    skipped: SkippedOps,
    /// What a schema change of the source does (`schema.changes`).
    pub schema_changes: schema_change::Handling,
    /// The source table's OID: schema changes of other tables are not this sink's.
    pub source_oid: u32,
    /// The key of the seals on the extension's own messages ([`super::seal`]).
    pub message_key: Vec<u8>,
    /// Records of the stream already set aside: left out of the batches.
    pub dead: DeadSet,
    /// Records the encoder refused under a policy other than `fail`.
    pub refused: Vec<DeadLetter>,
    /// Set while the initial snapshot is encoded: a refused record is left out
    /// there and then (the snapshot is delivered whole or again from its start).
    pub snapshot_refusals: bool,
    /// The sink's id, that replay messages name (see [`dead_letter::RETRY_PREFIX`]).
    pub sink_id: i64,
    /// A backfill chunk waiting for its watermark ([`backfill`]).
    chunk: Option<Chunk>,
    /// What the last watermark brought, for the step to deliver.
    arrived: Option<Arrived>,
    /// Transactions fed lately (a chunk whose snapshot counts one as running is
    /// read again).
    recent: RecentXids,
}

/// The error a step ends with when a record was refused and set aside: the
/// batch holding it is not delivered; the next step reads it again without it.
pub const REFUSED: &str = "a record was set aside by errors.policy";

/// Where the open, large transaction stands in its parts.
#[derive(Debug, Clone, Copy)]
struct Parts {
    /// Index of the next part.
    next: u32,
    /// Records delivered in its earlier parts.
    records_before: usize,
    /// Already delivered (it commits before the confirmed position): its parts
    /// and its COMMIT are dropped.
    skip: bool,
}

impl Pipeline {
    pub fn new(def: &SinkDefinition, sink_name: &str, database: &str, confirmed: Lsn) -> Result<Self> {
        let ctx = EncoderContext {
            avro: def.avro.clone(),
            registry: def.registry.clone(),
            subject_base: def.connector_options.get("topic").cloned().unwrap_or_else(|| sink_name.to_string()),
            debezium: def.envelope == EnvelopeKind::Debezium,
            debezium_compat: def.debezium_compat,
            debezium_modes: def.debezium_modes,
            sink_name: sink_name.to_string(),
            connect_schemas: def.connect_schemas.then(|| sink_name.to_string()),
        };
        let mut decoder = Decoder::new();
        decoder.signals = vec![backfill::WATERMARK_PREFIX.to_string()];
        decoder.messages = [dead_letter::RETRY_PREFIX, schema_change::DDL_PREFIX].into_iter().map(str::to_string).chain(def.messages.iter().cloned()).collect();
        Ok(Pipeline {
            decoder,
            envelope: Envelope::new(def.envelope, def.force_append_only, def.key_columns.clone(), sink_name, database)
                .debezium_compat(def.debezium_compat)
                .transaction_metadata(def.transaction_metadata)
                .tombstones(def.tombstones_on_delete),
            key_encoder: formats::build(&def.key_format, Role::Key, &ctx)?,
            value_encoder: formats::build(&def.value_format, Role::Value, &ctx)?,
            needs_meta: def.key_format == "avro" || def.value_format == "avro" || def.connect_schemas,
            accepts_unchanged: def.connector.accepts_unchanged_toast,
            unchanged_toast: def.unchanged_toast,
            toast: ToastReader::default(),
            encode: !(def.connector.applies_rows && def.envelope != EnvelopeKind::Debezium),
            drafts: Vec::new(),
            confirmed,
            parts: None,
            ordinal: 0,
            errors_policy: def.errors_policy,
            skipped: def.skipped,
            schema_changes: def.schema_changes,
            source_oid: 0,
            message_key: Vec::new(),
            dead: DeadSet::new(),
            refused: Vec::new(),
            snapshot_refusals: false,
            sink_id: 0,
            chunk: None,
            arrived: None,
            recent: RecentXids::default(),
        })
    }

    /// A step reads again from `confirmed`. The transaction before the next one
    /// ended there, if the sink ever delivered one (`delivered_before`, for a new
    /// pipeline) or this pipeline fed one past it: Debezium's `sequence`.
    pub fn resume(&mut self, confirmed: Lsn, delivered_before: bool) {
        self.confirmed = confirmed;
        self.envelope.last_commit = match self.envelope.last_commit {
            Some(last) if last <= confirmed => Some(last),
            Some(_) => Some(confirmed),
            None => delivered_before.then_some(confirmed),
        };
    }

    pub fn new_batch(&self) -> Batch {
        Batch {
            key_is_json: self.key_encoder.name() == "json",
            key_prefix: self.key_encoder.strip_prefix(),
            value_is_json: self.value_encoder.name() == "json",
            ..Default::default()
        }
    }

    /// Wait for `chunk`'s watermark. False (and the chunk dropped) when a
    /// transaction its snapshot counts as running was fed already: read it again.
    pub fn await_chunk(&mut self, chunk: Chunk) -> bool {
        if chunk.tainted_by(&self.recent) {
            return false;
        }
        self.chunk = Some(chunk);
        true
    }

    /// A backfill chunk is waiting for its watermark.
    pub fn awaits_chunk(&self) -> bool {
        self.chunk.is_some()
    }

    /// What the watermark of the waiting chunk brought, once it came.
    pub fn take_arrived(&mut self) -> Option<Arrived> {
        self.arrived.take()
    }

    /// A transaction's BEGIN was fed and its COMMIT not yet.
    pub fn in_transaction(&self) -> bool {
        self.decoder.is_in_transaction()
    }

    /// Changes of the open transaction held in memory.
    pub fn pending_changes(&self) -> usize {
        self.decoder.pending_changes()
    }

    /// Cut the changes the open transaction holds so far into a batch of their
    /// own: one part of a transaction too large to hold whole. `None` when no
    /// transaction is open, or when the transaction is already delivered (it
    /// commits before the confirmed position: its parts are dropped, as a whole
    /// transaction would be). The transaction's COMMIT later gives its last part.
    pub fn cut_part(&mut self, sql: &mut dyn SqlSession) -> Result<Option<Batch>> {
        let Some(mut txn) = self.decoder.take_pending() else {
            return Ok(None);
        };
        if let Some(chunk) = &mut self.chunk {
            chunk.observe(&txn);
        }
        // A transaction that starts before the confirmed position was read whole
        // by the step that confirmed it (steps end after a COMMIT, at a keepalive
        // between transactions, or caught up past every commit before them).
        let parts = self.parts.get_or_insert(Parts { next: 0, records_before: 0, skip: txn.commit_lsn < self.confirmed });
        if parts.skip {
            return Ok(None);
        }
        let part = Part { index: parts.next, last: false, records_before: parts.records_before };
        let mut batch = self.new_batch();
        txn.end_lsn = txn.commit_lsn;
        self.add_changes(&mut txn, sql, &mut batch, part.index == 0, false)?;
        batch.part = Some(part);
        if let Some(p) = self.parts.as_mut() {
            p.next += 1;
            p.records_before += batch.records.len();
        }
        Ok(Some(batch))
    }

    /// Feed one pgoutput message. A completed transaction past `confirmed` is encoded
    /// into `batch`; earlier ones (delivered before a crash) are skipped. `sql` reads
    /// the source (unchanged TOAST values) with the owner's privileges.
    pub fn feed(&mut self, msg: &[u8], resolver: &mut dyn TypeResolver, sql: &mut dyn SqlSession, batch: &mut Batch) -> Result<()> {
        self.feed_at(msg, Lsn::ZERO, resolver, sql, batch)
    }

    /// [`Pipeline::feed`] for a message read at `at` in the stream (`Lsn::ZERO`:
    /// not known; its changes then count as at their commit).
    pub fn feed_at(&mut self, msg: &[u8], at: Lsn, resolver: &mut dyn TypeResolver, sql: &mut dyn SqlSession, batch: &mut Batch) -> Result<()> {
        if msg.first() == Some(&b'B') {
            // A BEGIN starts a transaction afresh (the decoder forgets one left
            // open by a failed step): so do its parts and its records' numbering.
            self.parts = None;
            self.ordinal = 0;
        }
        match self.decoder.feed_at(msg, at)? {
            Decoded::Nothing => Ok(()),
            Decoded::Message { prefix, content } if prefix == dead_letter::RETRY_PREFIX => {
                // A dead letter replayed by sink.retry_dead_letters(): its change
                // joins this transaction. One without a valid seal was not
                // written by the extension, and is not acted on.
                let Some(content) = seal::open(&self.message_key, &prefix, &content) else { return Ok(()) };
                let mut resolve = |oid| resolver.resolve(oid);
                if let Some(change) = dead_letter::parse_retry(content, self.sink_id, &mut resolve)? {
                    self.decoder.push(change)?;
                }
                Ok(())
            }
            Decoded::Message { prefix, content } if prefix == schema_change::DDL_PREFIX => {
                let Some(content) = seal::open(&self.message_key, &prefix, &content) else { return Ok(()) };
                let change = SchemaChange::parse(content)?;
                if change.relid != self.source_oid || change.before.is_none() {
                    return Ok(());
                }
                match self.schema_changes {
                    schema_change::Handling::Ignore => Ok(()),
                    schema_change::Handling::Stop => Err(schema_change::stopped(&change, "The sink's schema.changes option is stop.")),
                    schema_change::Handling::Apply => self.decoder.push(Change::Schema(Arc::new(change))),
                }
            }
            // A message the sink delivers (its `messages` option), in commit order.
            Decoded::Message { prefix, content } => self.decoder.push(Change::Message { prefix, content: content.into() }),
            Decoded::Relation(id) => {
                if let Some(rel) = self.decoder.relation_mut(id) {
                    // Types first: the metadata (enum labels) depends on them.
                    if rel.columns.iter().any(|c| !c.ty.is_resolved()) {
                        let rel = Arc::make_mut(rel);
                        for col in &mut rel.columns {
                            if !col.ty.is_resolved() {
                                if let Some(t) = resolver.resolve(col.ty.oid) {
                                    col.ty = t;
                                }
                            }
                        }
                    }
                    if self.needs_meta && rel.meta.is_none() {
                        if let Some(meta) = resolver.relation_meta(rel) {
                            Arc::make_mut(rel).meta = Some(Arc::new(meta));
                        }
                    }
                }
                Ok(())
            }
            Decoded::Signal { prefix, content } => {
                if prefix == backfill::WATERMARK_PREFIX {
                    let id = seal::open(&self.message_key, &prefix, &content).and_then(backfill::ChunkId::parse);
                    if id.is_some() && id == self.chunk.as_ref().map(|c| c.id) {
                        if let Some(chunk) = self.chunk.take() {
                            self.arrived = Some(chunk.arrive(at, now_us()));
                        }
                    }
                }
                Ok(())
            }
            Decoded::Commit(mut txn) => {
                self.recent.push(txn.xid);
                if let Some(chunk) = &mut self.chunk {
                    chunk.observe(&txn);
                }
                let end = txn.end_lsn;
                let done = match self.parts.take() {
                    Some(p) if p.skip => Ok(()),
                    // The last part of a large transaction: a batch of its own.
                    Some(p) => {
                        self.add_changes(&mut txn, sql, batch, false, true)?;
                        batch.transactions += 1;
                        batch.part = Some(Part { index: p.next, last: true, records_before: p.records_before });
                        Ok(())
                    }
                    None if txn.end_lsn <= self.confirmed => Ok(()),
                    None => self.add_transaction(txn, sql, batch),
                };
                self.envelope.last_commit = Some(end);
                done
            }
        }
    }

    /// Number the records of the next snapshot chunk from 0.
    pub fn begin_chunk(&mut self) {
        self.ordinal = 0;
    }

    /// Encode a whole transaction into `batch` (also used for snapshot rows).
    pub fn add_transaction(&mut self, mut txn: Transaction, sql: &mut dyn SqlSession, batch: &mut Batch) -> Result<()> {
        self.add_changes(&mut txn, sql, batch, true, true)?;
        batch.transactions += 1;
        Ok(())
    }

    /// Encode `txn`'s changes into `batch` and extend the batch to its end:
    /// `first` and `last` say whether they start and end the transaction (they
    /// are a part of it otherwise).
    fn add_changes(&mut self, txn: &mut Transaction, sql: &mut dyn SqlSession, batch: &mut Batch, first: bool, last: bool) -> Result<()> {
        if batch.transactions == 0 && batch.records.is_empty() && batch.changes == 0 {
            batch.start_lsn = txn.commit_lsn;
        }
        let changes = std::mem::take(&mut txn.changes);
        let lsns = std::mem::take(&mut txn.lsns);
        let stamp = Arc::new(TxnStamp { lsn: txn.commit_lsn.to_string(), timestamp: format_millis(txn.commit_time_us) });
        if first {
            self.drafts.clear();
            self.envelope.begin(txn, &mut self.drafts);
            self.add_drafts(txn, &stamp, batch)?;
        }
        for (i, mut change) in changes.into_iter().enumerate() {
            if !txn.snapshot && self.skipped.skips(&change) {
                batch.changes += 1;
                continue;
            }
            if !self.resolve_unchanged(&mut change, txn.xid, sql)? {
                batch.changes += 1;
                continue;
            }
            let at = lsns.get(i).copied().filter(|l| *l != Lsn::ZERO).unwrap_or(txn.commit_lsn);
            self.drafts.clear();
            self.envelope.apply(txn, change, at, &mut self.drafts)?;
            self.add_drafts(txn, &stamp, batch)?;
            batch.changes += 1;
        }
        if last {
            self.drafts.clear();
            self.envelope.end(txn, &mut self.drafts);
            self.add_drafts(txn, &stamp, batch)?;
        }
        batch.end_lsn = batch.end_lsn.max(txn.end_lsn);
        Ok(())
    }

    /// Number, encode and add the drafts the envelope made to `batch`.
    fn add_drafts(&mut self, txn: &Transaction, stamp: &Arc<TxnStamp>, batch: &mut Batch) -> Result<()> {
        {
            let mut drafts = std::mem::take(&mut self.drafts);
            for draft in drafts.drain(..) {
                if self.encode && matches!(draft.payload, Payload::Schema(_)) {
                    // Records follow the new shape by themselves (each row
                    // carries its relation); only targets holding tables apply it.
                    continue;
                }
                let ordinal = self.ordinal;
                self.ordinal += 1;
                if !txn.snapshot && self.dead.contains(&(txn.commit_lsn, ordinal)) {
                    continue;
                }
                let (key, value) = if self.encode {
                    match self.encode_draft(&draft) {
                        Ok(kv) => kv,
                        Err(e) if !e.is_transient() && self.errors_policy != dead_letter::Policy::Fail => {
                            let chunk = txn.snapshot.then_some(0);
                            self.refused.push(DeadLetter::of_draft(&draft, txn.commit_lsn, ordinal, &e, self.errors_policy, chunk));
                            if self.snapshot_refusals {
                                continue;
                            }
                            return Err(SinkError::transient(REFUSED));
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    (None, None)
                };
                batch.records.push(Record {
                    key,
                    value,
                    draft,
                    commit_lsn: txn.commit_lsn,
                    ordinal,
                    commit_time_us: txn.commit_time_us,
                    stamp: stamp.clone(),
                });
            }
            self.drafts = drafts;
        }
        Ok(())
    }

    fn encode_draft(&mut self, draft: &Draft) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        if let super::envelope::Payload::Transaction(t) = &draft.payload {
            return Ok((Some(self.key_encoder.encode_transaction_key(&t.id)?), self.value_encoder.encode_value(&draft.payload)?));
        }
        if let super::envelope::Payload::Message(m) = &draft.payload {
            // A message's key is its prefix (Debezium's `{"prefix": ..}` in JSON).
            let key = match self.key_encoder.name() {
                "json" => serde_json::json!({ "prefix": m.prefix }).to_string().into_bytes(),
                _ => m.prefix.clone().into_bytes(),
            };
            return Ok((Some(key), self.value_encoder.encode_value(&draft.payload)?));
        }
        Ok((draft.key.as_ref().map(|k| self.key_encoder.encode_key(k)).transpose()?, self.value_encoder.encode_value(&draft.payload)?))
    }

    /// An UPDATE that left a TOASTed column alone does not carry its value. Take it
    /// from the old image (REPLICA IDENTITY FULL), else as `unchanged_toast` says.
    /// `false`: the change is superseded by a later one and is dropped.
    fn resolve_unchanged(&mut self, change: &mut Change, xid: u32, sql: &mut dyn SqlSession) -> Result<bool> {
        let Change::Update { relation, old, new } = change else {
            return Ok(true);
        };
        if !new.iter().any(|c| *c == Cell::Unchanged) {
            return Ok(true);
        }
        if let Some(full) = old.as_ref().filter(|o| !o.key_only) {
            for (cell, was) in new.iter_mut().zip(&full.cells) {
                if *cell == Cell::Unchanged && *was != Cell::Unchanged {
                    *cell = was.clone();
                }
            }
        }
        let Some(i) = new.iter().position(|c| *c == Cell::Unchanged) else {
            return Ok(true);
        };
        match self.unchanged_toast {
            UnchangedToast::Fail => Err(SinkError::permanent(format!(
                "unchanged TOASTed value of column \"{}\" in \"{}\" is not in the change stream",
                relation.columns[i].name,
                relation.qualified_name()
            ))
            .detail("Postgres does not log a large value that an UPDATE left unchanged unless the table's replica identity is FULL; the WAL already written cannot be changed, and the sink's option unchanged_toast is fail.")
            .hint(format!(
                "Run ALTER TABLE {} REPLICA IDENTITY FULL for the changes to come, then either alter the sink to unchanged_toast => 'fetch' and resume it, or call sink.resync().",
                relation.qualified_name()
            ))),
            // The table connector leaves the column out of its upsert: the target keeps it.
            UnchangedToast::Placeholder if self.accepts_unchanged && self.envelope.kind == EnvelopeKind::Upsert => Ok(true),
            UnchangedToast::Placeholder => {
                toast::fill_placeholder(relation, new);
                Ok(true)
            }
            UnchangedToast::Fetch => match self.toast.fetch(relation, old.as_ref(), new, xid, sql)? {
                Filled::Complete => Ok(true),
                // A later change of this stream deletes or re-keys the row: for the
                // key's state this update does not matter.
                Filled::RowGone if self.envelope.kind == EnvelopeKind::Upsert => Ok(false),
                Filled::RowGone => {
                    toast::fill_placeholder(relation, new);
                    Ok(true)
                }
            },
        }
    }
}

/// Commit time as milliseconds since the epoch with microsecond fraction ("1720032185312.345").
/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

pub fn format_millis(us: i64) -> String {
    let ms = us.div_euclid(1000);
    let frac = us.rem_euclid(1000);
    if ms < 0 && frac != 0 {
        // -1.5 ms is written as "-1.500": sign applies to the whole number.
        let total = -us;
        return format!("-{}.{:03}", total / 1000, total % 1000);
    }
    format!("{ms}.{frac:03}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::options;
    use crate::engine::pgoutput::wire::*;
    use crate::engine::testing::NoSql;
    use crate::engine::types::TypeKind;
    use std::collections::BTreeMap;

    struct Resolver(Vec<u32>);
    impl TypeResolver for Resolver {
        fn resolve(&mut self, oid: u32) -> Option<PgType> {
            self.0.push(oid);
            Some(PgType::new(oid, "mood", TypeKind::Enum))
        }
    }

    fn pipeline(pairs: &[(&str, &str)], confirmed: u64) -> Pipeline {
        let o: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let def = options::parse("file", &o).unwrap();
        Pipeline::new(&def, "s", "db", Lsn(confirmed)).unwrap()
    }

    fn feed_all(p: &mut Pipeline, msgs: &[Vec<u8>]) -> Result<Batch> {
        let mut b = p.new_batch();
        let mut r = Resolver(vec![]);
        for m in msgs {
            p.feed(m, &mut r, &mut NoSql, &mut b)?;
        }
        Ok(b)
    }

    fn stream() -> Vec<Vec<u8>> {
        vec![
            relation(1, "public", "t", b'd', &[("id", 23, true), ("mood", 90_001, false)]),
            begin(0x100, 0, 5),
            insert(1, &[Some("1"), Some("happy")]),
            commit(0x100, 0x110, 0),
            begin(0x200, 0, 6),
            delete(1, b'K', &[Some("1"), None]),
            commit(0x200, 0x210, 0),
        ]
    }

    /// Values of the batch's records as JSON (`null` for tombstones).
    fn values(b: &Batch) -> Vec<serde_json::Value> {
        b.records.iter().map(|r| r.value.as_deref().map_or(serde_json::Value::Null, |v| serde_json::from_slice(v).unwrap())).collect()
    }

    #[test]
    fn transaction_metadata_brackets_each_transaction_and_numbers_its_events_as_debezium_does() {
        let opts = [("envelope", "debezium"), ("debezium.compat", "true"), ("provide.transaction.metadata", "true"), ("path", "/x")];
        let mut p = pipeline(&opts, 0);
        p.envelope.key_columns = vec!["id".into()];
        let rel = relation(1, "public", "t", b'd', &[("id", 23, true), ("v", 25, false)]);
        // Each message at its own position, as the walsender sends them.
        let at = [0x90, 0x100, 0x108, 0x118, 0x120, 0x130, 0x140, 0x144, 0x150];
        let msgs = [
            rel,
            begin(0x128, 1_000_000, 7),
            insert(1, &[Some("1"), Some("a")]),
            insert(1, &[Some("2"), Some("b")]),
            delete(1, b'K', &[Some("1"), None]),
            commit(0x128, 0x130, 1_000_000),
            begin(0x148, 2_000_000, 8),
            update(1, None, &[Some("2"), Some("c")]),
            commit(0x148, 0x150, 2_000_000),
        ];
        let mut b = p.new_batch();
        for (m, a) in msgs.iter().zip(at) {
            p.feed_at(m, Lsn(a), &mut Resolver(vec![]), &mut NoSql, &mut b).unwrap();
        }
        let v = values(&b);
        let status: Vec<String> = v.iter().map(|e| e.get("status").or(e.get("op")).map_or("tombstone".into(), |s| s.as_str().unwrap().to_string())).collect();
        assert_eq!(status, ["BEGIN", "c", "c", "d", "tombstone", "END", "BEGIN", "u", "END"]);
        assert_eq!(v[0], serde_json::json!({"status": "BEGIN", "id": "7:256", "event_count": null, "data_collections": null, "ts_ms": 946684801000i64}));
        assert_eq!(b.records[0].key.as_deref(), Some(&br#"{"id":"7:256"}"#[..]));
        assert_eq!(b.records[0].draft.op, crate::engine::envelope::Op::Transaction);
        // Each event: its own position, its order in the transaction, and the end
        // of the transaction before it (none known for the first).
        let blocks: Vec<_> = [1, 2, 3].iter().map(|&i| (v[i]["transaction"].clone(), v[i]["source"]["lsn"].clone(), v[i]["source"]["sequence"].clone())).collect();
        assert_eq!(blocks[0], (serde_json::json!({"id": "7:264", "total_order": 1, "data_collection_order": 1}), serde_json::json!(0x108), serde_json::json!("[null,\"264\"]")));
        assert_eq!(blocks[2].0["total_order"], 3, "the tombstone is not an event");
        assert_eq!(v[5], serde_json::json!({"status": "END", "id": "7:304", "event_count": 3, "data_collections": [{"data_collection": "public.t", "event_count": 3}], "ts_ms": 946684801000i64}));
        assert_eq!(v[6]["id"], "8:320");
        assert_eq!(v[7]["source"]["sequence"], "[\"304\",\"324\"]", "after the first commit's end");
        assert_eq!(v[7]["transaction"]["id"], "8:324");
        assert_eq!(v[8]["id"], "8:336");

        // A transaction delivered in parts: BEGIN with the first, END (counting
        // every part) with the last; a step that reads again from a confirmed
        // position names it as the transaction before.
        let mut p = pipeline(&opts, 0);
        p.resume(Lsn(0x130), true);
        let mut first = p.new_batch();
        let mut r = Resolver(vec![]);
        for (m, a) in [(&msgs[0], 0x90), (&msgs[6], 0x140), (&msgs[7], 0x148)] {
            p.feed_at(m, Lsn(a), &mut r, &mut NoSql, &mut first).unwrap();
        }
        let part = p.cut_part(&mut NoSql).unwrap().unwrap();
        let mut last = p.new_batch();
        p.feed_at(&insert(1, &[Some("3"), Some("d")]), Lsn(0x14c), &mut r, &mut NoSql, &mut last).unwrap();
        p.feed_at(&msgs[8], Lsn(0x150), &mut r, &mut NoSql, &mut last).unwrap();
        let (pv, lv) = (values(&part), values(&last));
        assert_eq!((pv.len(), pv[0]["status"].as_str(), pv[1]["source"]["sequence"].as_str()), (2, Some("BEGIN"), Some("[\"304\",\"328\"]")));
        assert_eq!(lv[0]["transaction"], serde_json::json!({"id": "8:332", "total_order": 2, "data_collection_order": 2}));
        assert_eq!((lv[1]["status"].as_str(), lv[1]["event_count"].as_u64()), (Some("END"), Some(2)));
        // A step that fed commits past the confirmed position and failed reads
        // again from there: that position is the transaction before.
        assert_eq!(p.envelope.last_commit, Some(Lsn(0x150)));
        p.resume(Lsn(0x130), false);
        assert_eq!(p.envelope.last_commit, Some(Lsn(0x130)));
        let mut fresh = pipeline(&opts, 0);
        fresh.resume(Lsn(0x130), false);
        assert_eq!(fresh.envelope.last_commit, None, "a sink that never delivered names none");

        // Snapshot rows carry none of it.
        let relation = p.decoder.relation_mut(1).unwrap().clone();
        let mut b = p.new_batch();
        let snap = Transaction::snapshot(Lsn(0x500), 0, vec![Change::Insert { relation, new: vec![Cell::Text("9".into()), Cell::Null] }]);
        p.add_transaction(snap, &mut NoSql, &mut b).unwrap();
        let v = values(&b);
        assert_eq!((v.len(), &v[0]["op"], &v[0]["transaction"], &v[0]["source"]["sequence"]), (1, &serde_json::json!("r"), &serde_json::Value::Null, &serde_json::json!("[null,\"1280\"]")));
    }

    #[test]
    fn skips_confirmed_transactions_and_stamps_headers() {
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x")], 0x110);
        let b = feed_all(&mut p, &stream()).unwrap();
        assert_eq!(b.transactions, 1, "the first transaction was already confirmed");
        assert_eq!(b.start_lsn, Lsn(0x200));
        assert_eq!(b.end_lsn, Lsn(0x210));
        assert_eq!(b.records.len(), 1);
        assert_eq!(b.records[0].key.as_deref(), Some(&b"{\"id\":1}"[..]));
        assert_eq!(b.records[0].value, None, "delete under upsert is a tombstone");
        let h: Vec<_> = b.records[0].headers().iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(h, vec!["pg_sink-lsn=0/200", "pg_sink-timestamp=946684800000.000", "pg_sink-op=delete"]);
    }

    #[test]
    fn a_replayed_dead_letter_is_delivered_in_the_transaction_that_carries_it_and_set_aside_records_are_not() {
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x")], 0);
        p.sink_id = 4;
        p.message_key = b"key".to_vec();
        let first = feed_all(&mut p, &stream()[..4]).unwrap();
        let change = crate::engine::dead_letter::change_json(&first.records[0].draft);
        let sealed = |m: String| seal::seal(b"key", dead_letter::RETRY_PREFIX, &m);
        let mine = sealed(dead_letter::retry_message(4, &change));
        let other = sealed(dead_letter::retry_message(5, &change));
        let forged = dead_letter::retry_message(4, &change);
        let msgs = vec![
            begin(0x300, 0, 7),
            message(true, dead_letter::RETRY_PREFIX, other.as_bytes()),
            message(true, dead_letter::RETRY_PREFIX, forged.as_bytes()),
            message(true, dead_letter::RETRY_PREFIX, mine.as_bytes()),
            message(true, "app", b"not ours"),
            commit(0x300, 0x310, 0),
        ];
        let b = feed_all(&mut p, &msgs).unwrap();
        assert_eq!(b.records.len(), 1, "only this sink's replay, and only a sealed one");
        assert_eq!(b.records[0].value, first.records[0].value);
        assert_eq!((b.records[0].commit_lsn, b.records[0].ordinal), (Lsn(0x300), 0));
        // A record already set aside is left out; the next keeps its ordinal.
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x")], 0);
        p.dead.insert((Lsn(0x100), 0));
        let mut msgs = stream();
        msgs.insert(3, insert(1, &[Some("2"), Some("sad")]));
        let b = feed_all(&mut p, &msgs).unwrap();
        let got: Vec<_> = b.records.iter().map(|r| (r.commit_lsn, r.ordinal)).collect();
        assert_eq!(got, vec![(Lsn(0x100), 1), (Lsn(0x200), 0)]);
    }

    #[test]
    fn logical_messages_with_a_chosen_prefix_are_delivered_in_commit_order() {
        let msgs = |content: &[u8]| {
            vec![
                relation(1, "public", "t", b'd', &[("id", 23, true), ("mood", 90_001, false)]),
                begin(0x100, 0, 5),
                insert(1, &[Some("1"), Some("happy")]),
                message(true, "outbox", content),
                message(true, "other", b"{}"),
                message(false, "outbox", b"not transactional"),
                commit(0x100, 0x110, 0),
            ]
        };
        // Without the option a message is not delivered.
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x")], 0);
        assert_eq!(feed_all(&mut p, &msgs(b"{}")).unwrap().records.len(), 1);
        // With it, after the row, keyed by its prefix; JSON content is the value.
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x"), ("messages", "outbox, audit")], 0);
        let b = feed_all(&mut p, &msgs(br#"{"order": 7}"#)).unwrap();
        assert_eq!(b.records.len(), 2);
        let m = &b.records[1];
        assert_eq!((m.draft.op, m.ordinal), (crate::engine::envelope::Op::Message, 1));
        assert_eq!(m.key.as_deref(), Some(&br#"{"prefix":"outbox"}"#[..]));
        assert_eq!(m.value.as_deref(), Some(&br#"{"order": 7}"#[..]));
        // Text that is not JSON is a JSON string; bytes that are not UTF-8 are base64.
        let mut p = pipeline(&[("envelope", "upsert"), ("path", "/x"), ("messages", "outbox")], 0);
        assert_eq!(feed_all(&mut p, &msgs(b"plain")).unwrap().records[1].value.as_deref(), Some(&b"\"plain\""[..]));
        let mut p = pipeline(&[("envelope", "upsert"), ("path", "/x"), ("messages", "outbox")], 0);
        assert_eq!(feed_all(&mut p, &msgs(&[0xff, 0])).unwrap().records[1].value.as_deref(), Some(&br#"{"base64":"/wA="}"#[..]));
        // Under the debezium envelope, Debezium's message event.
        let mut p = pipeline(&[("envelope", "debezium"), ("path", "/x"), ("message.prefix.include.list", "outbox")], 0);
        let b = feed_all(&mut p, &msgs(b"hi")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(b.records[1].value.as_deref().unwrap()).unwrap();
        assert_eq!(v["op"], "m");
        assert_eq!(v["message"], serde_json::json!({"prefix": "outbox", "content": "aGk="}));
        assert_eq!((v["source"]["lsn"].as_u64(), v["source"]["txId"].as_u64(), v["source"]["table"].as_str()), (Some(0x100), Some(5), Some("")));
        // As TEXT, the content byte for byte.
        let mut p = pipeline(&[("envelope", "upsert"), ("path", "/x"), ("messages", "outbox"), ("format", "text")], 0);
        let only_message = [begin(0x100, 0, 5), message(true, "outbox", b"a b"), commit(0x100, 0x110, 0)];
        assert_eq!(feed_all(&mut p, &only_message).unwrap().records[0].value.as_deref(), Some(&b"a b"[..]));
    }

    #[test]
    fn skipped_operations_leave_changes_out_but_not_snapshot_rows() {
        let msgs = vec![
            relation(1, "public", "t", b'd', &[("id", 23, true), ("mood", 90_001, false)]),
            begin(0x100, 0, 5),
            insert(1, &[Some("1"), Some("happy")]),
            delete(1, b'K', &[Some("1"), None]),
            truncate(&[1], 0),
            commit(0x100, 0x110, 0),
        ];
        let ops = |pairs: &[(&str, &str)]| -> Vec<String> {
            let mut p = pipeline(pairs, 0);
            let b = feed_all(&mut p, &msgs).unwrap();
            assert_eq!((b.changes, b.end_lsn), (3, Lsn(0x110)), "a skipped change still moves the batch on");
            b.records.iter().map(|r| r.draft.op.as_str().to_string()).collect()
        };
        let base = [("envelope", "debezium"), ("path", "/x")];
        assert_eq!(ops(&base), ["insert", "delete"], "truncate is skipped by default");
        assert_eq!(ops(&[base[0], base[1], ("skipped.operations", "none")]), ["insert", "delete", "truncate"]);
        assert_eq!(ops(&[base[0], base[1], ("skipped.operations", "c,t")]), ["delete"]);
        // An append-only sink that skips updates and deletes does not stop on them.
        assert_eq!(ops(&[("envelope", "append-only"), ("path", "/x"), ("skipped.operations", "u,d,t")]), ["insert"]);
        // Snapshot rows are never skipped.
        let mut p = pipeline(&[base[0], base[1], ("skipped.operations", "c")], 0);
        feed_all(&mut p, &msgs[..1]).unwrap();
        let rel = p.decoder.relation_mut(1).unwrap().clone();
        let mut txn = Transaction::snapshot(Lsn(0x100), 0, vec![]);
        txn.changes.push(Change::Insert { relation: rel, new: vec![Cell::Text("1".into()), Cell::Null] });
        let mut b = p.new_batch();
        p.add_transaction(txn, &mut NoSql, &mut b).unwrap();
        assert_eq!(b.records.len(), 1);
    }

    #[test]
    fn only_sealed_schema_changes_of_the_source_reach_a_table_target() {
        let report = |relid: u32| {
            format!(
                r#"{{"relid": {relid}, "before": {{"schema": "public", "table": "t", "columns": [{{"attnum": 1, "name": "id", "type": "integer"}}], "key": ["id"]}},
                   "after": {{"schema": "public", "table": "t", "columns": [{{"attnum": 1, "name": "id", "type": "integer"}}, {{"attnum": 2, "name": "x", "type": "text"}}], "key": ["id"]}}}}"#
            )
        };
        let msgs = |content: &str| vec![begin(0x100, 0, 5), message(true, schema_change::DDL_PREFIX, content.as_bytes()), commit(0x100, 0x110, 0)];
        let table = |handling: &str| {
            let o: BTreeMap<String, String> = [("table", "x"), ("envelope", "upsert"), ("schema.changes", handling)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let mut p = Pipeline::new(&options::parse("table", &o).unwrap(), "s", "db", Lsn(0)).unwrap();
            p.encode = false;
            p.source_oid = 42;
            p.message_key = b"k".to_vec();
            p
        };
        let sealed = |relid| seal::seal(b"k", schema_change::DDL_PREFIX, &report(relid));
        let mut p = table("apply");
        let b = feed_all(&mut p, &msgs(&sealed(42))).unwrap();
        assert_eq!(b.records.len(), 1);
        assert!(matches!(&b.records[0].draft.payload, Payload::Schema(c) if c.relid == 42));
        assert_eq!(feed_all(&mut table("apply"), &msgs(&sealed(43))).unwrap().records.len(), 0, "another table's");
        assert_eq!(feed_all(&mut table("apply"), &msgs(&report(42))).unwrap().records.len(), 0, "not sealed: forged");
        assert_eq!(feed_all(&mut table("ignore"), &msgs(&sealed(42))).unwrap().records.len(), 0);
        let e = feed_all(&mut table("stop"), &msgs(&sealed(42))).unwrap_err();
        assert!(e.message.contains("column \"x\" text added") && !e.is_transient(), "{e:?}");
        // Records of other targets never carry it.
        let mut p = pipeline(&[("path", "/x")], 0);
        p.source_oid = 42;
        p.message_key = b"k".to_vec();
        assert_eq!(feed_all(&mut p, &msgs(&sealed(42))).unwrap().records.len(), 0);
    }

    #[test]
    fn a_value_the_avro_schema_cannot_hold_is_set_aside_under_dead_letter() {
        let msgs = vec![
            relation(1, "public", "t", b'd', &[("id", 23, true), ("d", 1082, false)]),
            begin(0x100, 0, 5),
            insert(1, &[Some("1"), Some("2024-01-02")]),
            insert(1, &[Some("2"), Some("infinity")]),
            insert(1, &[Some("3"), Some("2024-01-03")]),
            commit(0x100, 0x110, 0),
        ];
        let opts = [("envelope", "upsert"), ("key", "id"), ("path", "/x"), ("format", "avro")];
        // Under fail the encoder's refusal is the error.
        let mut p = pipeline(&opts, 0);
        let e = feed_all(&mut p, &msgs).unwrap_err();
        assert!(e.message.contains("Avro") && !e.is_transient(), "{e:?}");
        // Under dead_letter the transaction's batch is not built: the step ends
        // with the dead letter, and the next pipeline leaves the record out.
        let mut p = pipeline(&opts, 0);
        p.errors_policy = dead_letter::Policy::DeadLetter;
        let e = feed_all(&mut p, &msgs).unwrap_err();
        assert_eq!(e.message, REFUSED);
        let d = std::mem::take(&mut p.refused);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].lsn, d[0].ordinal, d[0].key.as_deref()), (Lsn(0x100), 1, Some(r#"{"id":"2"}"#)));
        assert!(d[0].error.contains("not a finite date"), "{}", d[0].error);
        let mut p = pipeline(&opts, 0);
        p.errors_policy = dead_letter::Policy::DeadLetter;
        p.dead.insert((Lsn(0x100), 1));
        let b = feed_all(&mut p, &msgs).unwrap();
        assert_eq!(b.records.iter().map(|r| r.ordinal).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn resolves_user_types_through_the_glue() {
        let mut p = pipeline(&[("path", "/x")], 0);
        let mut b = p.new_batch();
        let mut r = Resolver(vec![]);
        for m in stream() {
            p.feed(&m, &mut r, &mut NoSql, &mut b).unwrap();
        }
        assert_eq!(r.0, vec![90_001]);
        assert_eq!(b.records.len(), 2);
        let v: serde_json::Value = serde_json::from_slice(b.records[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(v["after"]["mood"], "happy");
        assert_eq!(v["op"], "c");
    }

    /// Answers the source read of an unchanged TOAST value (or finds no row).
    struct Source(Option<&'static str>);
    impl SqlSession for Source {
        fn execute(&mut self, _: &str, _: &[Option<&str>]) -> Result<u64> {
            Err(SinkError::permanent("read only"))
        }
        fn query(&mut self, sql: &str, _: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
            if sql.contains("format_type") {
                return Ok(vec![vec![Some("integer".into())], vec![Some("text".into())]]);
            }
            Ok(self.0.map(|v| vec![vec![Some(v.to_string())]]).unwrap_or_default())
        }
        fn query_or_none(&mut self, sql: &str, p: &[Option<&str>]) -> Result<Option<Vec<Vec<Option<String>>>>> {
            self.query(sql, p).map(Some)
        }
    }

    fn feed_with(p: &mut Pipeline, msgs: &[Vec<u8>], sql: &mut dyn SqlSession) -> Result<Batch> {
        let mut b = p.new_batch();
        for m in msgs {
            p.feed(m, &mut Resolver(vec![]), sql, &mut b)?;
        }
        Ok(b)
    }

    #[test]
    fn unchanged_toast_is_filled_from_full_old_image_or_the_source_or_refused() {
        let rel = relation(1, "public", "t", b'f', &[("id", 23, true), ("doc", 25, false)]);
        let full = vec![
            rel.clone(),
            begin(0x300, 0, 7),
            update(1, Some((b'O', &[Some("1"), Some("big")])), &[Some("1"), Some("\u{0}")]),
            commit(0x300, 0x310, 0),
        ];
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x")], 0);
        let b = feed_all(&mut p, &full).unwrap();
        assert_eq!(b.records[0].value.as_deref(), Some(&b"{\"id\":1,\"doc\":\"big\"}"[..]));
        let keyonly = vec![rel, begin(0x300, 0, 7), update(1, None, &[Some("1"), Some("\u{0}")]), commit(0x300, 0x310, 0)];
        // fetch (the default): the value comes from the source row.
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x")], 0);
        let b = feed_with(&mut p, &keyonly, &mut Source(Some("now"))).unwrap();
        assert_eq!(b.records[0].value.as_deref(), Some(&b"{\"id\":1,\"doc\":\"now\"}"[..]));
        // The row is gone: an upsert drops the superseded update, a history keeps it
        // with Debezium's placeholder.
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x")], 0);
        let b = feed_with(&mut p, &keyonly, &mut Source(None)).unwrap();
        assert!(b.records.is_empty());
        assert_eq!((b.changes, b.transactions), (1, 1));
        let mut p = pipeline(&[("envelope", "debezium"), ("path", "/x")], 0);
        let b = feed_with(&mut p, &keyonly, &mut Source(None)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(b.records[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(v["after"]["doc"], toast::PLACEHOLDER, "{v}");
        let mut p = pipeline(&[("envelope", "append-only"), ("force_append_only", "true"), ("path", "/x"), ("unchanged_toast", "placeholder")], 0);
        let b = feed_with(&mut p, &keyonly, &mut Source(Some("never asked"))).unwrap();
        assert!(String::from_utf8_lossy(b.records[0].value.as_deref().unwrap()).contains(toast::PLACEHOLDER));
        // fail: refused, and the hint does not pretend FULL repairs written WAL.
        let mut p = pipeline(&[("envelope", "upsert"), ("key", "id"), ("path", "/x"), ("unchanged_toast", "fail")], 0);
        let err = feed_all(&mut p, &keyonly).unwrap_err();
        let hint = err.hint.unwrap();
        assert!(hint.contains("REPLICA IDENTITY FULL") && hint.contains("resync"), "{hint}");
    }

    #[test]
    fn formats_commit_millis() {
        assert_eq!(format_millis(1_720_032_185_312_345), "1720032185312.345");
        assert_eq!(format_millis(0), "0.000");
        assert_eq!(format_millis(-1_500), "-1.500");
        assert_eq!(format_millis(-1_000), "-1.000");
    }
}
