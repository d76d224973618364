//! `kafka`: Kafka and Redpanda (any Kafka-protocol broker), following Materialize's
//! Kafka sink.
//!
//! ```text
//!  Batch ──► begin txn ──► data records ──► topic (partition = seahash(key) % n)
//!                    └──► progress record (sink uid → end LSN) ──► progress topic
//!            commit txn ──► durable: the glue records the LSN in sink.progress
//! ```
//!
//! Exactly-once (the default): each batch's records and a progress record go to
//! Kafka in one transaction of a transactional producer (`transactional.id` =
//! prefix + sink). When the connector starts, it reads the progress topic with
//! `read_committed` and skips every transaction Kafka already has. This covers the
//! case where Postgres crashed after the Kafka commit but before the catalog update.
//! A producer that starts with the same transactional id fences any zombie.
//!
//! With `exactly_once = false` the producer is idempotent and a batch is durable
//! once flushed with `acks=all` (at-least-once).
//!
//! The data topic and the progress topic are created when missing. The progress
//! topic gets 1 partition, compaction, and no retention.
//!
//! TRUNCATE reaches a topic only when `skipped.operations` lets it (Debezium's
//! default skips it): as a record without a key, which a compacted topic refuses.
//!
//! Rooms: `config` (options and settings), `producer` (sending a batch),
//! `progress` (exactly-once bookkeeping), `errors` (what retries and what fails).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{Batch, Connector, ConnectorConfig, Position, SqlSession};
use crate::engine::change::{Cell, Relation};
use crate::engine::connector::table::quote_ident;
use crate::engine::encoder::hash;
use crate::engine::envelope::Op;
use crate::engine::error::{Result, SinkError};

mod config;
mod errors;
mod producer;
mod progress;

pub use config::*;
pub use errors::*;
pub use producer::*;
pub use progress::*;

fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    Ok(Box::new(KafkaConnector::new(settings(cfg)?)))
}

struct Running {
    producer: BaseProducer<DeliveryContext>,
    partitions: i32,
    /// Position of the last batch Kafka has (from the progress topic).
    committed: Position,
}

pub struct KafkaConnector {
    settings: KafkaSettings,
    state: Option<Running>,
    /// `PARTITION BY` query per relation (id), with the relation it was built for.
    partitioner: HashMap<u32, (Arc<Relation>, String)>,
    /// The transaction topic exists (made when the first BEGIN or END goes out).
    transaction_topic_ready: bool,
}

impl KafkaConnector {
    pub(super) fn new(settings: KafkaSettings) -> Self {
        KafkaConnector { settings, state: None, partitioner: HashMap::new(), transaction_topic_ready: false }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.settings.brokers);
        c.set("client.id", "pg_sink");
        for (k, v) in &self.settings.client {
            c.set(k, v);
        }
        c
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        let mut c = self.client_config();
        c.remove("compression.type");
        c.create().map_err(|e| classify("admin client creation", &e))
    }

    /// Whether the brokers answer a metadata request; a refusal of our credentials
    /// or certificate is a permanent error that says so. (A producer, not an admin
    /// client: polling it serves the error events that carry the refusal.)
    fn reach(&self, hint: &str) -> Result<()> {
        let mut c = self.client_config();
        c.remove("compression.type");
        let probe: BaseProducer<DeliveryContext> = c.create_with_context(DeliveryContext::default()).map_err(|e| classify("client creation", &e))?;
        probe.client().fetch_metadata(None, Duration::from_secs(5).min(self.settings.timeout)).map(|_| ()).map_err(|e| {
            refused(&probe, &self.settings.brokers)
                .unwrap_or_else(|| SinkError::transient(format!("could not reach Kafka brokers \"{}\": {e}", self.settings.brokers)).hint(hint))
        })
    }

    /// Create the topic of transactions' BEGIN and END events when missing: one
    /// partition, so they keep their order, as Debezium advises for its own.
    async fn ensure_transaction_topic(&mut self) -> Result<()> {
        let admin = self.admin()?;
        let topic = &self.settings.transaction_topic;
        let meta = admin.inner().fetch_metadata(Some(topic), self.settings.timeout).map_err(|e| classify("metadata fetch", &e))?;
        if !meta.topics().iter().any(|m| m.name() == *topic && m.error().is_none() && !m.partitions().is_empty()) {
            let opts = AdminOptions::new().operation_timeout(Some(self.settings.timeout));
            let wanted = NewTopic::new(topic, 1, TopicReplication::Fixed(self.settings.replication_factor));
            for r in admin.create_topics([&wanted], &opts).await.map_err(|e| classify("topic creation", &e))? {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        return Err(error_for_code(code, format!("could not create Kafka topic \"{topic}\": {code}"))
                            .hint("Create the transaction topic yourself, or name another with transaction_topic."));
                    }
                }
            }
        }
        self.transaction_topic_ready = true;
        Ok(())
    }

    /// Create the data and progress topics when missing.
    async fn ensure_topics(&self) -> Result<()> {
        let admin = self.admin()?;
        let meta = admin.inner().fetch_metadata(None, self.settings.timeout).map_err(|e| classify("metadata fetch", &e))?;
        let exists = |t: &str| meta.topics().iter().any(|m| m.name() == t && m.error().is_none());
        let rf = |n: i32| TopicReplication::Fixed(n);
        let opts = AdminOptions::new().operation_timeout(Some(self.settings.timeout));
        let mut wanted = Vec::new();
        if !exists(&self.settings.topic) {
            let mut t = NewTopic::new(&self.settings.topic, self.settings.partition_count, rf(self.settings.replication_factor));
            for (k, v) in &self.settings.topic_config {
                t = t.set(k, v);
            }
            wanted.push(t);
        }
        if self.settings.exactly_once && !exists(&self.settings.progress_topic) {
            wanted.push(
                NewTopic::new(&self.settings.progress_topic, 1, rf(self.settings.progress_replication_factor))
                    .set("cleanup.policy", "compact")
                    .set("retention.ms", "-1")
                    .set("retention.bytes", "-1"),
            );
        }
        if self.settings.exactly_once && exists(&self.settings.progress_topic) {
            let partitions = meta.topics().iter().find(|m| m.name() == self.settings.progress_topic).map_or(0, |m| m.partitions().len());
            self.check_progress_topic(&admin, partitions).await?;
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let results = admin.create_topics(wanted.iter(), &opts).await.map_err(|e| classify("topic creation", &e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    let e = error_for_code(code, format!("could not create Kafka topic \"{topic}\": {code}"));
                    return Err(e.hint("Create the topic yourself, or check topic_partition_count, topic_replication_factor and topic_config."));
                }
            }
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<()> {
        self.reach("Check that the brokers are running.")?;
        self.ensure_topics().await?;
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            // Topics are created by ensure_topics with their settings, never by a
            // send to a missing topic (which would give a progress topic the
            // broker's default retention).
            .set("allow.auto.create.topics", "false")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", &self.settings.timeout.as_millis().to_string());
        if self.settings.exactly_once {
            c.set("transactional.id", &self.settings.transactional_id)
                .set("transaction.timeout.ms", &(self.settings.timeout.as_millis().max(60_000)).to_string());
        }
        let producer: BaseProducer<DeliveryContext> =
            c.create_with_context(DeliveryContext::default()).map_err(|e| classify("producer creation", &e))?;
        let meta = producer
            .client()
            .fetch_metadata(Some(&self.settings.topic), self.settings.timeout)
            .map_err(|e| refused(&producer, &self.settings.brokers).unwrap_or_else(|| classify("metadata fetch", &e)))?;
        let topic = meta.topics().iter().find(|t| t.name() == self.settings.topic);
        if let Some(code) = topic.and_then(|t| t.error()).map(RDKafkaErrorCode::from).filter(|c| is_permanent(*c)) {
            // Not allowed to see the topic (an ACL), for instance: retrying cannot help.
            return Err(SinkError::permanent(format!("Kafka refused topic \"{}\": {code}", self.settings.topic)).hint(permanent_hint(code)));
        }
        let partitions = topic.map_or(0, |t| t.partitions().len() as i32);
        if partitions == 0 {
            return Err(SinkError::transient(format!("Kafka topic \"{}\" has no partitions yet", self.settings.topic)));
        }
        let committed = if self.settings.exactly_once {
            // Fences any older producer with this id (a zombie) before we read.
            producer
                .init_transactions(self.settings.timeout)
                .map_err(|e| refused(&producer, &self.settings.brokers).unwrap_or_else(|| classify("transaction initialisation", &e)))?;
            self.read_progress()?
        } else {
            Position::default()
        };
        self.state = Some(Running { producer, partitions, committed });
        Ok(())
    }
}

impl KafkaConnector {
    /// The partition of every record of the batch.
    fn partitions(&mut self, batch: &Batch, sql: &mut dyn SqlSession) -> Result<Vec<i32>> {
        let n = self.state.as_ref().map_or(1, |s| s.partitions);
        let Some(expr) = self.settings.partition_by.clone() else {
            return Ok(batch
                .records
                .iter()
                .map(|r| hash::default_partition(r.key.as_deref().map(|k| &k[batch.key_prefix.min(k.len())..]), n))
                .collect());
        };
        let mut out = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            let Some(row) = record_row(r) else {
                out.push(0);
                continue;
            };
            let rel = &row.relation;
            let fresh = self.partitioner.get(&rel.id).map(|(cached, _)| !(Arc::ptr_eq(cached, rel) || **cached == **rel)).unwrap_or(true);
            if fresh {
                let types = super::sql_types(rel, sql)?;
                let cols: Vec<String> =
                    rel.columns.iter().zip(&types).enumerate().map(|(i, (c, t))| format!("${}::{} AS {}", i + 1, t, quote_ident(&c.name))).collect();
                let query = format!("SELECT (({expr}))::numeric::text FROM (SELECT {}) AS r", cols.join(", "));
                self.partitioner.insert(rel.id, (rel.clone(), query));
            }
            let query = self.partitioner.get(&rel.id).map(|(_, q)| q.clone()).unwrap_or_default();
            // Columns outside the image (non-key columns of a tombstone) are NULL.
            let mut params: Vec<Option<&str>> = vec![None; rel.columns.len()];
            for &i in row.indices.iter() {
                params[i] = match &row.cells[i] {
                    Cell::Text(t) => Some(t.as_str()),
                    _ => None,
                };
            }
            let hash = sql.query_or_none(&query, &params)?.and_then(|rows| rows.into_iter().next()).and_then(|r| r.into_iter().next().flatten());
            out.push(partition_from_hash(hash.as_deref(), n));
        }
        Ok(out)
    }
}

#[async_trait(?Send)]
impl Connector for KafkaConnector {
    async fn check(&mut self) -> Result<()> {
        if !self.settings.validate {
            return Ok(());
        }
        self.reach("Check the brokers option and that the broker is running, or pass validate => false to create the sink anyway.")?;
        // Like Materialize, create the topics when the sink is created (and check an
        // existing progress topic against the guidance).
        self.ensure_topics().await
    }

    async fn deliver(&mut self, batch: &Batch, sql: &mut dyn SqlSession) -> Result<()> {
        if batch.records.is_empty() {
            return Ok(());
        }
        if self.state.is_none() {
            self.start().await?;
        }
        if !self.transaction_topic_ready && batch.records.iter().any(|r| r.draft.op == Op::Transaction) {
            self.ensure_transaction_topic().await?;
        }
        let partitions = self.partitions(batch, sql)?;
        let headers_column = self.settings.headers_column.clone();
        let Some(running) = self.state.as_mut() else {
            return Err(SinkError::transient("Kafka producer unavailable"));
        };
        if already_delivered(batch, running.committed) {
            return Ok(());
        }
        let topic = self.settings.topic.clone();
        let transaction_topic = self.settings.transaction_topic.clone();
        let timeout = self.settings.timeout;
        let result = if self.settings.exactly_once {
            (|| -> Result<()> {
                running.producer.begin_transaction().map_err(|e| classify("transaction begin", &e))?;
                send_all(running, (&topic, &transaction_topic), batch, &partitions, headers_column.as_deref())?;
                let value = progress_value(batch.position(), &self.settings.progress_key);
                let progress = BaseRecord::with_opaque_to(&self.settings.progress_topic, NOT_A_RECORD).partition(0).key(self.settings.progress_key.as_bytes()).payload(&value);
                running.producer.send(progress).map_err(|(e, _)| classify("progress produce", &e))?;
                drain(&running.producer, timeout);
                running.producer.commit_transaction(timeout).map_err(|e| classify("transaction commit", &e))
            })()
        } else {
            send_all(running, (&topic, &transaction_topic), batch, &partitions, headers_column.as_deref()).and_then(|_| {
                drain(&running.producer, timeout);
                running.producer.flush(timeout).map_err(|e| classify("flush", &e))
            })
        };
        let delivery_error = running.producer.context().take();
        let refused_records = running.producer.context().take_refused();
        match result {
            Ok(()) => {
                if let Some((code, key)) = delivery_error {
                    // At-least-once: a message failed although the flush finished.
                    self.state = None;
                    return Err(error_for_code(code, format!("Kafka rejected a record: {code}"))
                        .detail(format!("Record with key {key}."))
                        .hint(permanent_hint(code))
                        .refusing(refused_records));
                }
                running.committed = batch.position();
                Ok(())
            }
            Err(mut e) => {
                if let Some(r) = refused(&running.producer, &self.settings.brokers) {
                    e = r;
                }
                if self.settings.exactly_once {
                    let _ = running.producer.abort_transaction(timeout);
                }
                if let Some((code, key)) = delivery_error {
                    e = error_for_code(code, format!("Kafka rejected a record: {code}"))
                        .detail(format!("Record with key {key}; {}", e.message))
                        .hint(permanent_hint(code));
                }
                if !e.is_transient() {
                    // Named only when the batch failed for them: the transaction is
                    // aborted (exactly-once), or the rest is sent again (at least once).
                    e.refused = refused_records;
                }
                // Start over with a fresh producer (and re-read progress) next time.
                self.state = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::envelope::EnvelopeKind;
    use crate::engine::lsn::Lsn;
    use rdkafka::error::KafkaError;

    fn cfg(pairs: &[(&str, &str)]) -> ConnectorConfig {
        ConnectorConfig {
            sink_name: "orders".into(),
            database: "shop".into(),
            sink_uid: "shop-7-123".into(),
            envelope: EnvelopeKind::Upsert,
            key_columns: vec!["id".into()],
            options: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            columns: vec![],
            password_required: false,
        }
    }

    #[test]
    fn settings_follow_materialize_and_defaults() {
        let s = settings(&cfg(&[
            ("topic", "t1"),
            ("broker", "kafka://h:9092"),
            ("compression_type", "ZSTD"),
            ("topic_config", "cleanup.policy=compact, min.insync.replicas=2"),
            ("properties.linger.ms", "20"),
        ]))
        .unwrap();
        assert_eq!(s.brokers, "h:9092");
        assert!(s.exactly_once);
        assert_eq!(s.transactional_id, "pg_sink-shop-orders");
        assert_eq!(s.progress_topic, "_pg_sink-progress-shop");
        assert_eq!(s.transaction_topic, "t1.transaction", "Debezium's <prefix>.transaction, after the data topic");
        assert_eq!(s.progress_key, "shop-7-123");
        assert_eq!(s.client.get("compression.type").unwrap(), "zstd");
        assert_eq!(s.client.get("linger.ms").unwrap(), "20");
        assert_eq!(s.topic_config.get("cleanup.policy").unwrap(), "compact");
        assert_eq!(s.partition_count, -1);
        let s =
            settings(&cfg(&[("kafka_topic_name", "t2"), ("brokers", "a:1,b:2"), ("sasl_mechanisms", "scram-sha-256"), ("exactly_once", "false")]))
                .unwrap();
        assert_eq!(s.topic, "t2");
        assert!(!s.exactly_once);
        assert_eq!(s.client.get("security.protocol").unwrap(), "sasl_ssl");
        assert_eq!(s.client.get("sasl.mechanisms").unwrap(), "SCRAM-SHA-256");
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for (opts, msg) in [
            (&[("brokers", "h:1")][..], "requires option \"topic\""),
            (&[("topic", "t")][..], "requires option \"brokers\""),
            (&[("topic", "bad topic"), ("brokers", "h:1")][..], "invalid Kafka topic name"),
            (&[("topic", "t"), ("brokers", "h:1"), ("transaction_topic", "t x")][..], "invalid Kafka topic name \"t x\""),
            (&[("topic", "t"), ("brokers", "h:1"), ("compression_type", "brotli")][..], "COMPRESSION TYPE"),
            (&[("topic", "t"), ("brokers", "h:1"), ("sasl_mechanisms", "GSSAPI")][..], "unsupported SASL mechanism"),
            (&[("topic", "t"), ("brokers", "h:1"), ("topic_partition_count", "0")][..], "topic_partition_count"),
            (&[("topic", "t"), ("brokers", "h:1"), ("topic_config", "nonsense")][..], "not key=value"),
            (&[("topic", "t"), ("brokers", "h:1"), ("exactly_once", "sometimes")][..], "boolean option"),
        ] {
            let err = settings(&cfg(opts)).unwrap_err();
            assert!(err.message.contains(msg), "{opts:?}: {}", err.message);
        }
    }

    #[test]
    fn partition_by_results_and_headers_rules() {
        assert_eq!(partition_from_hash(Some("10"), 4), 2);
        assert_eq!(partition_from_hash(Some("18446744073709551615"), 7), (u64::MAX % 7) as i32);
        assert_eq!(partition_from_hash(None, 4), 0);
        assert_eq!(partition_from_hash(Some("-3"), 4), 0);
        assert_eq!(partition_from_hash(Some("1.5"), 4), 0);
        let mut c = cfg(&[("topic", "t"), ("brokers", "h:1"), ("headers", "h")]);
        assert!(settings(&c).is_ok());
        c.envelope = EnvelopeKind::Debezium;
        assert!(settings(&c).unwrap_err().message.contains("HEADERS requires the upsert envelope"));
    }

    #[test]
    fn refused_credentials_and_certificates_are_permanent_other_failures_are_not() {
        let sasl = "sasl_plaintext://127.0.0.1:19094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256";
        let e = refusal(RDKafkaErrorCode::Authentication, sasl, "h:1").unwrap();
        assert_eq!(e.kind, crate::engine::error::ErrorKind::Permanent);
        assert!(e.message.contains("refused the connection") && e.detail.as_deref() == Some(sasl));
        assert!(e.hint.unwrap().contains("sasl_password"));
        let tls = "ssl://127.0.0.1:19097/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert bad certificate: SSL alert number 42";
        assert!(refusal(RDKafkaErrorCode::BrokerTransportFailure, tls, "h:1").unwrap().hint.unwrap().contains("ssl_certificate_authority"));
        let down = "127.0.0.1:19093/bootstrap: Connect to ipv4#127.0.0.1:19093 failed: Connection refused";
        assert!(refusal(RDKafkaErrorCode::BrokerTransportFailure, down, "h:1").is_none());
        assert!(refusal(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down", "h:1").is_none());
        // The last refusal is kept; later transport errors do not hide it.
        let errors = ClientErrors::default();
        errors.record(&KafkaError::Global(RDKafkaErrorCode::Authentication), sasl);
        errors.record(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
        assert!(errors.refusal("h:1").unwrap().message.contains("\"h:1\" refused"));
        assert!(ClientErrors::default().refusal("h:1").is_none());
    }

    #[test]
    fn settings_and_config_never_print_secrets() {
        let c = cfg(&[
            ("topic", "t"),
            ("brokers", "b:9092"),
            ("security_protocol", "SASL_SSL"),
            ("sasl_mechanisms", "PLAIN"),
            ("sasl_username", "u"),
            ("sasl_password", "hunter2"),
        ]);
        let s = settings(&c).unwrap();
        assert_eq!(s.client.get("sasl.password").map(String::as_str), Some("hunter2"));
        for shown in [format!("{s:?}"), format!("{c:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn snapshot_chunks_after_the_first_are_not_taken_for_delivered() {
        // Every chunk of the snapshot ends at the snapshot's LSN: once chunk 0 is in
        // Kafka, chunk 1 must still go (the defect: it was skipped as delivered).
        let chunk = |c: u32| Batch { end_lsn: Lsn(0x700), snapshot_chunk: Some(c), ..Default::default() };
        let after_chunk0 = chunk(0).position();
        assert!(already_delivered(&chunk(0), after_chunk0));
        assert!(!already_delivered(&chunk(1), after_chunk0));
        assert!(!already_delivered(&chunk(2), chunk(1).position()));
        // The first streamed batch after the snapshot comes after every chunk.
        let streamed = Batch { end_lsn: Lsn(0x810), ..Default::default() };
        assert!(!already_delivered(&streamed, chunk(40).position()));
        assert!(already_delivered(&chunk(40), streamed.position()));
    }

    #[test]
    fn parts_of_a_large_transaction_are_each_delivered_once() {
        // Parts before the last end at the commit LSN (0x700, as the snapshot
        // above); the last ends at the transaction's end.
        let part = |index: u32, last: bool| Batch {
            end_lsn: Lsn(if last { 0x780 } else { 0x700 }),
            part: Some(crate::engine::connector::Part { index, last, records_before: 0 }),
            ..Default::default()
        };
        // A crash after part 1 reached Kafka: the retry skips parts 0 and 1 only.
        let committed = part(1, false).position();
        assert!(already_delivered(&part(0, false), committed));
        assert!(already_delivered(&part(1, false), committed));
        assert!(!already_delivered(&part(2, false), committed));
        assert!(!already_delivered(&part(3, true), committed));
        assert!(already_delivered(&part(2, false), part(3, true).position()));
        // A snapshot at the same LSN comes before the transaction's parts.
        let chunk = Batch { end_lsn: Lsn(0x700), snapshot_chunk: Some(9), ..Default::default() };
        assert!(!already_delivered(&part(0, false), chunk.position()));
        assert!(already_delivered(&chunk, part(0, false).position()));
        // The batch before the transaction may end where its commit record starts.
        let before = Batch { end_lsn: Lsn(0x700), ..Default::default() };
        assert!(!already_delivered(&part(0, false), before.position()));
    }

    #[test]
    fn progress_records_round_trip_and_errors_are_classified() {
        let at = |lsn: u64, chunk: u32| Position { lsn: Lsn(lsn), part: 0, chunk };
        assert_eq!(progress_position(&progress_value(at(0x1_0000_0010, 0), "u")), Some(at(0x1_0000_0010, 0)));
        assert_eq!(progress_position(&progress_value(at(0x700, 3), "u")), Some(at(0x700, 3)));
        let part = Position { lsn: Lsn(0x700), part: 4, chunk: 0 };
        assert_eq!(progress_position(&progress_value(part, "u")), Some(part));
        // Records written before snapshot chunks were counted read as chunk 0.
        assert_eq!(progress_position(br#"{"lsn": 1792, "sink": "u"}"#), Some(at(0x700, 0)));
        assert_eq!(progress_position(b"garbage"), None);
        assert!(is_permanent(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(is_permanent(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!is_permanent(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(classify("x", &KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown)).is_transient());
    }
}
