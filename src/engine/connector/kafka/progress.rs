//! Exactly-once bookkeeping: the progress records (sink uid -> end LSN and
//! snapshot chunk) in the progress topic, reading them back with `read_committed`,
//! and the rule for what is already delivered.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::errors::classify;
use super::KafkaConnector;
use crate::engine::connector::{Batch, Position};
use crate::engine::error::{Result, SinkError};
use crate::engine::lsn::Lsn;

/// The position in a progress record's value: `{"lsn": <u64>, ...}`.
pub fn progress_position(payload: &[u8]) -> Option<Position> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let lsn = v.get("lsn").and_then(|l| l.as_u64()).map(Lsn)?;
    let count = |name: &str| u32::try_from(v.get(name).and_then(|c| c.as_u64()).unwrap_or(0)).unwrap_or(u32::MAX);
    Some(Position { lsn, part: count("parts"), chunk: count("snapshot_chunks") })
}

/// A progress record's value. `snapshot_chunks` is written only for the
/// initial snapshot's batches (all at one LSN), `parts` only for the parts of a
/// large transaction before its last (all at its commit LSN).
pub fn progress_value(p: Position, sink: &str) -> Vec<u8> {
    let mut v = serde_json::json!({"lsn": p.lsn.0, "lsn_text": p.lsn.to_string(), "sink": sink});
    if p.part > 0 {
        v["parts"] = p.part.into();
    }
    if p.chunk > 0 {
        v["snapshot_chunks"] = p.chunk.into();
    }
    v.to_string().into_bytes()
}

/// Kafka has the batch already: its position is at or before the committed one
/// (Postgres crashed after the Kafka commit, before its own).
pub fn already_delivered(batch: &Batch, committed: Position) -> bool {
    batch.position() <= committed
}

impl KafkaConnector {
    /// Enforce the seed's guidance for an existing progress topic: exactly one
    /// partition and no retention (either would break exactly-once).
    pub(super) async fn check_progress_topic(&self, admin: &AdminClient<DefaultClientContext>, partitions: usize) -> Result<()> {
        let topic = &self.settings.progress_topic;
        let guidance =
            "The progress topic must have 1 partition and no retention (retention.ms = -1, retention.bytes = -1); compaction is recommended.";
        if partitions != 1 {
            return Err(SinkError::permanent(format!("progress topic \"{topic}\" has {partitions} partitions"))
                .detail(guidance)
                .hint("Recreate it with one partition, or name another with progress_topic."));
        }
        let opts = AdminOptions::new().request_timeout(Some(self.settings.timeout));
        let spec = ResourceSpecifier::Topic(topic);
        let results = admin.describe_configs([&spec], &opts).await.map_err(|e| classify("progress topic describe", &e))?;
        for r in results.into_iter().flatten() {
            for name in ["retention.ms", "retention.bytes"] {
                let value = r.get(name).and_then(|e| e.value.clone()).unwrap_or_else(|| "-1".into());
                if value.trim() != "-1" {
                    return Err(SinkError::permanent(format!("progress topic \"{topic}\" has {name} = {value}"))
                        .detail(guidance)
                        .hint(format!("Set {name} = -1 on the topic (kafka-configs --alter), or name another with progress_topic.")));
                }
            }
        }
        Ok(())
    }

    /// The position of the last batch committed to Kafka for this sink.
    pub(super) fn read_progress(&self) -> Result<Position> {
        let mut c = self.client_config();
        c.remove("compression.type");
        c.set("group.id", &self.settings.progress_group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        // A read_committed client is told the last stable offset as the high
        // watermark; the end of the log comes from a read_uncommitted one.
        let mut w = c.clone();
        w.set("isolation.level", "read_uncommitted");
        let ends: BaseConsumer = w.create().map_err(|e| classify("progress consumer creation", &e))?;
        let consumer: BaseConsumer = c.create().map_err(|e| classify("progress consumer creation", &e))?;
        let topic = &self.settings.progress_topic;
        let (low, high) = ends.fetch_watermarks(topic, 0, self.settings.timeout).map_err(|e| classify("progress watermark fetch", &e))?;
        drop(ends);
        if high <= low {
            return Ok(Position::default());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning).map_err(|e| classify("progress assignment", &e))?;
        consumer.assign(&tpl).map_err(|e| classify("progress assignment", &e))?;
        let mut committed = Position::default();
        let deadline = std::time::Instant::now() + self.settings.timeout;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(SinkError::transient(format!("timed out reading progress topic \"{topic}\"")));
            }
            match consumer.poll(Duration::from_millis(500)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // Under read_committed the end is the last stable offset: another
                    // sink's transaction still open on this shared topic hides every
                    // record committed after it, ours included. Wait until it ends
                    // (commit or abort), within the timeout.
                    let at = consumer.position().ok().and_then(|tpl| tpl.find_partition(topic, 0).and_then(|p| p.offset().to_raw())).unwrap_or(high);
                    if at >= high {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(Err(e)) => return Err(classify("progress read", &e)),
                Some(Ok(msg)) => {
                    if msg.key() == Some(self.settings.progress_key.as_bytes()) {
                        if let Some(p) = msg.payload().and_then(progress_position) {
                            committed = committed.max(p);
                        }
                    }
                    if msg.offset() + 1 >= high {
                        break;
                    }
                }
            }
        }
        Ok(committed)
    }
}
