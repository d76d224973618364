//! Producing a batch: the delivery context that collects librdkafka's reports,
//! partitions from the key hash or `partition_by`, headers, and sending every
//! record before the flush.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::errors::{classify, is_record_refusal, ClientErrors};
use super::Running;
use crate::engine::connector::{Batch, Record};
use crate::engine::envelope::{Op, Payload, RowImage};
use crate::engine::error::{Result, SinkError};

/// Collects the first per-message delivery error, so a failed batch can say why,
/// and the client-level errors (see [`ClientErrors`]).
#[derive(Default)]
pub struct DeliveryContext {
    first_error: std::sync::Mutex<Option<(RDKafkaErrorCode, String)>>,
    /// The batch records (by index) the brokers refused for what they are.
    refused: std::sync::Mutex<Vec<usize>>,
    pub(super) client: ClientErrors,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.client.record(&error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    /// The record's index in its batch ([`NOT_A_RECORD`] for progress records).
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, index: usize) {
        if let Err((KafkaError::MessageProduction(code), msg)) = result {
            if index != NOT_A_RECORD && is_record_refusal(*code) {
                if let Ok(mut r) = self.refused.lock() {
                    r.push(index);
                }
            }
            if let Ok(mut slot) = self.first_error.lock() {
                if slot.is_none() {
                    let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                    *slot = Some((*code, key));
                }
            }
        }
    }
}

impl DeliveryContext {
    pub(super) fn take(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.first_error.lock().ok().and_then(|mut s| s.take())
    }
    /// The records refused since the last call, in batch order.
    pub(super) fn take_refused(&self) -> Vec<usize> {
        let mut v = self.refused.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The delivery opaque of a message that is not one of the batch's records.
pub const NOT_A_RECORD: usize = usize::MAX;

/// The row a `PARTITION BY` expression or `HEADERS` column is read from: the new row
/// (upsert, append-only), else the key (tombstones, Debezium).
pub(super) fn record_row(r: &Record) -> Option<&RowImage> {
    match &r.draft.payload {
        Payload::Row(row) => Some(row),
        _ => r.draft.key.as_ref(),
    }
}

/// Headers from the `HEADERS` column: a JSON object; keys with our reserved prefix
/// are ignored, as Materialize ignores `materialize-` keys.
pub fn user_headers(r: &Record, column: &str) -> Vec<(String, Option<String>)> {
    let Payload::Row(row) = &r.draft.payload else {
        return Vec::new();
    };
    let Some(idx) = row.relation.column_index(column) else {
        return Vec::new();
    };
    let Some(text) = row.cells[idx].as_text() else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    map.into_iter()
        .filter(|(k, _)| !k.starts_with(crate::engine::connector::HEADER_PREFIX))
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s),
                other => Some(other.to_string()),
            };
            (k, value)
        })
        .collect()
}

/// `hash % partitions` for a `PARTITION BY` result; NULL, negative, fractional or
/// failed hashes go to partition 0.
pub fn partition_from_hash(hash: Option<&str>, partitions: i32) -> i32 {
    match hash.and_then(|h| h.trim().parse::<u128>().ok()) {
        Some(h) if partitions > 0 => (h % partitions as u128) as i32,
        _ => 0,
    }
}

/// Serve delivery reports in short slices until nothing is in flight (or `timeout`).
/// rdkafka's own flush waits in 100 ms steps, which would put 100 ms on every batch.
pub(super) fn drain(producer: &BaseProducer<DeliveryContext>, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // poll(ZERO) serves what is queued and returns. A timed poll would spin:
        // rdkafka 0.38 rounds the remaining time down to whole milliseconds and
        // keeps polling with 0 until its deadline (measured: half the worker's CPU
        // in clock_gettime at 10k rows/s).
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Send the batch's records: transactions' BEGIN and END events to `topics.1`
/// (partition 0), the rest to `topics.0`.
pub(super) fn send_all(running: &Running, topics: (&str, &str), batch: &Batch, partitions: &[i32], headers_column: Option<&str>) -> Result<()> {
    let mut first_local: Option<SinkError> = None;
    for (i, r) in batch.records.iter().enumerate() {
        if r.commit_lsn < running.committed.lsn {
            continue;
        }
        let mut headers = OwnedHeaders::new_with_capacity(3);
        for (k, v) in r.headers() {
            headers = headers.insert(Header { key: k, value: Some(v) });
        }
        if let Some(col) = headers_column {
            for (k, v) in user_headers(r, col) {
                headers = headers.insert(Header { key: &k, value: v.as_deref() });
            }
        }
        let (topic, partition) = if r.draft.op == Op::Transaction { (topics.1, 0) } else { (topics.0, partitions[i]) };
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, i).partition(partition).headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        let mut pending = record;
        loop {
            match running.producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    running.producer.poll(Duration::from_millis(50));
                    pending = back;
                }
                Err((e, _)) => {
                    let key = r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                    let mut err = classify("produce", &e).detail(format!("Record with key {key} at LSN {}.", r.commit_lsn));
                    if matches!(e, KafkaError::MessageProduction(code) if is_record_refusal(code)) {
                        // Refused before it left (message.max.bytes): the others go on,
                        // so one batch names every such record.
                        if let Ok(mut refused) = running.producer.context().refused.lock() {
                            refused.push(i);
                        }
                        first_local.get_or_insert(err);
                        break;
                    }
                    err.refused.clear();
                    return Err(err);
                }
            }
        }
    }
    match first_local {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The producer's [`ClientErrors::refusal`], after serving pending error events.
pub(super) fn refused(producer: &BaseProducer<DeliveryContext>, brokers: &str) -> Option<SinkError> {
    producer.poll(Duration::from_millis(50));
    producer.context().client.refusal(brokers)
}
