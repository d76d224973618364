//! The `kafka` connector's options: the spec table, the typed settings read from
//! a sink's flat option map (Materialize's names, librdkafka pass-through), and the
//! check of a connection's options.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{build, KafkaConnector};
use crate::engine::connector::{parse_bool, ConnectorConfig, ConnectorSpec};
use crate::engine::error::{Result, SinkError};

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "kafka",
    options: &[
        ("topic", "topic to write to (Materialize TOPIC)"),
        ("kafka_topic_name", "Kinetica alias of topic"),
        ("brokers", "bootstrap servers, host:port[,host:port...]"),
        ("broker", "Materialize alias of brokers"),
        ("bootstrap.servers", "librdkafka alias of brokers"),
        ("properties.bootstrap.server", "RisingWave alias of brokers"),
        ("location", "Kinetica-style alias of brokers: kafka://host:port"),
        ("security_protocol", "plaintext, ssl, sasl_plaintext or sasl_ssl"),
        ("sasl_mechanisms", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
        ("sasl_username", "SASL user"),
        ("sasl_password", "SASL password (use a secret)"),
        ("ssl_certificate_authority", "CA certificate, PEM"),
        ("ssl_certificate", "client certificate, PEM"),
        ("ssl_key", "client key, PEM (use a secret)"),
        ("compression_type", "none, gzip, snappy, lz4 or zstd (default none)"),
        ("transactional_id_prefix", "prefix of the transactional id (default pg_sink-<database>-)"),
        ("progress_group_id_prefix", "prefix of the consumer group that reads the progress topic"),
        ("progress_topic", "topic holding sink progress (default _pg_sink-progress-<database>)"),
        ("transaction_topic", "topic of the BEGIN and END events of provide.transaction.metadata (default <topic>.transaction)"),
        ("progress_topic_replication_factor", "replication factor of a progress topic pg_sink creates"),
        ("topic_partition_count", "partitions of a topic pg_sink creates (default: broker's)"),
        ("topic_replication_factor", "replication factor of a topic pg_sink creates (default: broker's)"),
        ("topic_config", "topic configs for a topic pg_sink creates: JSON object or k=v,k=v"),
        ("exactly_once", "true (default): transactions and a progress topic; false: at-least-once"),
        ("validate", "check at creation that the broker is reachable (default true)"),
        ("timeout_ms", "how long one broker operation may take before it is retried (default 30000)"),
        ("headers", "jsonb column whose object becomes message headers (Materialize HEADERS; upsert envelope)"),
        ("partition_by", "SQL expression hashing a row to a partition (Materialize PARTITION BY)"),
    ],
    required: &[],
    option_prefixes: &["properties."],
    accepts_unchanged_toast: false,
    needs_json: false,
    applies_rows: false,
    build,
    check_connection: Some(check_connection),
};

/// Settings parsed from the options. `Debug` hides the secrets in `client`.
#[derive(Clone)]
pub struct KafkaSettings {
    pub topic: String,
    pub brokers: String,
    pub exactly_once: bool,
    pub validate: bool,
    pub transactional_id: String,
    pub progress_group_id: String,
    pub progress_topic: String,
    /// Where transactions' BEGIN and END events go (`provide.transaction.metadata`).
    pub transaction_topic: String,
    pub progress_key: String,
    pub progress_replication_factor: i32,
    pub partition_count: i32,
    pub replication_factor: i32,
    pub topic_config: BTreeMap<String, String>,
    pub timeout: Duration,
    /// librdkafka properties (security, compression, pass-through).
    pub client: BTreeMap<String, String>,
    /// Column holding extra headers (a JSON object).
    pub headers_column: Option<String>,
    /// SQL expression computing the partition hash.
    pub partition_by: Option<String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("topic", &self.topic)
            .field("brokers", &self.brokers)
            .field("exactly_once", &self.exactly_once)
            .field("transactional_id", &self.transactional_id)
            .field("progress_topic", &self.progress_topic)
            .field("topic_config", &self.topic_config)
            .field("timeout", &self.timeout)
            .field("client", &crate::engine::secret::Redacted(&self.client))
            .field("headers_column", &self.headers_column)
            .field("partition_by", &self.partition_by)
            .finish_non_exhaustive()
    }
}

pub(super) fn int_option(cfg: &ConnectorConfig, name: &str, default: i32, min: i32) -> Result<i32> {
    match cfg.get(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<i32>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(SinkError::config(format!("invalid value for option \"{name}\": \"{v}\"")).hint(format!("Give an integer of at least {min}."))),
        },
    }
}

/// `{"k": "v"}` or `k=v,k2=v2`.
pub fn parse_map(name: &str, text: &str) -> Result<BTreeMap<String, String>> {
    let text = text.trim();
    if text.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            SinkError::config(format!("invalid value for option \"{name}\": {e}")).hint("Give a JSON object of strings, or k=v,k2=v2.")
        })?;
        return Ok(map.into_iter().map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect());
    }
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            SinkError::config(format!("invalid value for option \"{name}\": \"{pair}\" is not key=value"))
                .hint("Give a JSON object of strings, or k=v,k2=v2.")
        })?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn check_topic_name(topic: &str) -> Result<()> {
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(SinkError::config(format!("invalid Kafka topic name \"{topic}\""))
            .detail("Topic names have 1 to 249 characters among ASCII letters, digits, '.', '_' and '-'."));
    }
    Ok(())
}

pub fn settings(cfg: &ConnectorConfig) -> Result<KafkaSettings> {
    let topic = cfg
        .get("topic")
        .or_else(|| cfg.get("kafka_topic_name"))
        .map(str::to_string)
        .ok_or_else(|| SinkError::config("connector \"kafka\" requires option \"topic\"").hint("Name the topic, e.g. topic => 'orders'."))?;
    check_topic_name(&topic)?;
    let brokers = cfg
        .get("brokers")
        .or_else(|| cfg.get("broker"))
        .or_else(|| cfg.get("bootstrap.servers"))
        .or_else(|| cfg.get("properties.bootstrap.server"))
        .or_else(|| cfg.get("location"))
        .map(|b| b.split(',').map(|s| s.trim().trim_start_matches("kafka://").trim_end_matches('/')).collect::<Vec<_>>().join(","))
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            SinkError::config("connector \"kafka\" requires option \"brokers\"")
                .hint("Give the bootstrap servers, e.g. brokers => 'localhost:9092', or use a connection.")
        })?;
    let bool_opt = |name: &str, default: bool| cfg.get(name).map(|v| parse_bool(name, v)).transpose().map(|v| v.unwrap_or(default));
    let exactly_once = bool_opt("exactly_once", true)?;
    let validate = bool_opt("validate", true)?;
    let tx_prefix = cfg.get("transactional_id_prefix").map(str::to_string).unwrap_or_else(|| format!("pg_sink-{}-", cfg.database));
    let group_prefix = cfg.get("progress_group_id_prefix").map(str::to_string).unwrap_or_else(|| format!("pg_sink-{}-", cfg.database));
    let progress_topic = cfg.get("progress_topic").map(str::to_string).unwrap_or_else(|| format!("_pg_sink-progress-{}", cfg.database));
    let transaction_topic = cfg.get("transaction_topic").map(str::to_string).unwrap_or_else(|| format!("{topic}.transaction"));
    check_topic_name(&transaction_topic)?;
    let mut client = BTreeMap::new();
    for (opt, prop) in [
        ("security_protocol", "security.protocol"),
        ("sasl_mechanisms", "sasl.mechanisms"),
        ("sasl_username", "sasl.username"),
        ("sasl_password", "sasl.password"),
        ("ssl_certificate_authority", "ssl.ca.pem"),
        ("ssl_certificate", "ssl.certificate.pem"),
        ("ssl_key", "ssl.key.pem"),
    ] {
        if let Some(v) = cfg.get(opt) {
            client.insert(prop.to_string(), v.to_string());
        }
    }
    if let Some(m) = cfg.get("sasl_mechanisms") {
        let m = m.to_ascii_uppercase();
        if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
            return Err(SinkError::config(format!("unsupported SASL mechanism \"{m}\"")).hint("Use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."));
        }
        client.insert("sasl.mechanisms".into(), m);
        client.entry("security.protocol".into()).or_insert_with(|| "sasl_ssl".into());
    }
    let compression = cfg.get("compression_type").unwrap_or("none").to_ascii_lowercase();
    if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression.as_str()) {
        return Err(SinkError::config(format!("invalid COMPRESSION TYPE \"{compression}\"")).hint("Use none, gzip, snappy, lz4 or zstd."));
    }
    client.insert("compression.type".into(), compression);
    for (k, v) in &cfg.options {
        if let Some(prop) = k.strip_prefix("properties.") {
            if prop != "bootstrap.server" {
                client.insert(prop.to_string(), v.clone());
            }
        }
    }
    let headers_column = cfg.get("headers").map(str::to_string);
    if headers_column.is_some() && cfg.envelope != crate::engine::envelope::EnvelopeKind::Upsert {
        return Err(SinkError::config("HEADERS requires the upsert envelope")
            .detail(format!("The sink's envelope is {}.", cfg.envelope.as_str()))
            .hint("Use envelope => 'upsert', or drop the headers option."));
    }
    Ok(KafkaSettings {
        headers_column,
        partition_by: cfg.get("partition_by").map(str::to_string).filter(|e| !e.trim().is_empty()),
        topic,
        brokers,
        exactly_once,
        validate,
        transactional_id: format!("{tx_prefix}{}", cfg.sink_name),
        progress_group_id: format!("{group_prefix}{}", cfg.sink_name),
        progress_topic,
        transaction_topic,
        progress_key: cfg.sink_uid.clone(),
        progress_replication_factor: int_option(cfg, "progress_topic_replication_factor", -1, 1)?,
        partition_count: int_option(cfg, "topic_partition_count", -1, 1)?,
        replication_factor: int_option(cfg, "topic_replication_factor", -1, 1)?,
        topic_config: cfg.get("topic_config").map(|t| parse_map("topic_config", t)).transpose()?.unwrap_or_default(),
        timeout: Duration::from_millis(int_option(cfg, "timeout_ms", 30_000, 100)? as u64),
        client,
    })
}

/// Check that a Kafka connection's brokers answer (Kinetica validates Kafka data
/// sinks when they are created), unless `validate` is false.
pub fn check_connection(options: &BTreeMap<String, String>) -> Result<()> {
    let mut opts = options.clone();
    opts.entry("topic".into()).or_insert_with(|| "pg_sink-connection-check".into());
    let cfg = ConnectorConfig {
        sink_name: String::new(),
        database: String::new(),
        sink_uid: String::new(),
        envelope: crate::engine::envelope::EnvelopeKind::Upsert,
        key_columns: vec![],
        options: opts,
        columns: vec![],
        password_required: false,
    };
    let connector = KafkaConnector::new(settings(&cfg)?);
    if !connector.settings.validate {
        return Ok(());
    }
    connector.reach("Check the brokers option and that the broker is running, or pass validate => false.")
}
