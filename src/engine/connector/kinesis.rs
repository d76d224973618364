//! `kinesis`: AWS Kinesis Data Streams, with RisingWave's Kinesis sink options.
//!
//! * Partition key = the encoded sink key, so one key's changes land on one shard in
//!   order. Keys longer than Kinesis' 256 characters are replaced by a hex seahash of
//!   the key (still deterministic). Keyless records all use the sink's name: like
//!   Kafka's keyless records on partition 0, they stay on one shard in commit order
//!   (give `primary_key` to spread them).
//! * Record data is, by default, the self-describing `{"key", "value", "headers"}`
//!   document of [`super::write_wrapped`]: Kinesis records have no headers, and this
//!   is how the commit LSN travels with each record so consumers can de-duplicate.
//!   `payload = 'value'` sends the bare encoded value instead, as RisingWave does.
//! * Records go out with PutRecords in requests within the service limits (500
//!   records, 5 MiB). A record over 1 MiB is a permanent error naming its key.
//! * Partial failures are retried in order: the failed records, plus every later
//!   record of a key that had a failure, so the last record of each key stays last.
//!   Throttling backs off. This is at-least-once: a batch retried after a crash is
//!   sent again.

use crate::engine::secret::Secret;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;

use super::{write_wrapped, Batch, Connector, ConnectorConfig, ConnectorSpec, Record, SqlSession};
use crate::engine::error::{Result, SinkError};
use crate::engine::retry::Backoff;

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "kinesis",
    options: &[
        ("stream", "name of the Kinesis data stream"),
        ("aws.region", "AWS region, e.g. us-east-1"),
        ("endpoint", "URL of the Kinesis service (for emulators or VPC endpoints)"),
        ("aws.credentials.access_key_id", "access key id; must come with aws.credentials.secret_access_key"),
        ("aws.credentials.secret_access_key", "secret access key; must come with aws.credentials.access_key_id (use a secret)"),
        ("aws.credentials.session_token", "session token of temporary credentials (use a secret)"),
        ("aws.credentials.role.arn", "ARN of a role to assume"),
        ("aws.credentials.role.external_id", "external id for assuming the role"),
        ("payload", "wrapped (default: key, value and headers with the commit LSN as one JSON document) or value (the encoded value only)"),
        ("timeout_ms", "how long one request may take before it is retried (default 10000)"),
        ("validate", "check at creation that the stream exists and is active (default true)"),
    ],
    required: &["stream", "aws.region"],
    option_prefixes: &[],
    accepts_unchanged_toast: false,
    needs_json: false,
    applies_rows: false,
    build,
    check_connection: None,
};

/// PutRecords limits of the service.
pub const MAX_RECORDS_PER_REQUEST: usize = 500;
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Attempts at one request's failing records before the batch is handed back to the
/// worker as a transient error.
const MAX_ATTEMPTS: u32 = 12;

#[derive(Debug, Clone, PartialEq)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KinesisSettings {
    pub stream: String,
    pub region: String,
    pub endpoint: Option<String>,
    /// `None`: the default AWS credential chain.
    pub keys: Option<StaticKeys>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub wrapped: bool,
    pub timeout: Duration,
    pub validate: bool,
}

pub fn settings(cfg: &ConnectorConfig) -> Result<KinesisSettings> {
    let get = |k: &str| cfg.get(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let stream = get("stream").unwrap_or_default();
    if stream.is_empty() || stream.len() > 128 || !stream.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(SinkError::config(format!("invalid Kinesis stream name \"{stream}\""))
            .detail("A stream name is 1 to 128 letters, digits, \"_\", \".\" or \"-\".")
            .hint("For example stream => 'orders-changes'."));
    }
    let region = get("aws.region").unwrap_or_default();
    if region.is_empty() || !region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(SinkError::config(format!("invalid value for option \"aws.region\": \"{region}\""))
            .detail("A region is an AWS region code.")
            .hint("For example aws.region => 'us-east-1'."));
    }
    let endpoint = get("endpoint");
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) || e.contains(char::is_whitespace) {
            return Err(SinkError::config(format!("invalid value for option \"endpoint\": \"{e}\""))
                .hint("Give a URL, e.g. endpoint => 'https://kinesis.us-east-1.amazonaws.com'."));
        }
    }
    let keys = match (get("aws.credentials.access_key_id"), get("aws.credentials.secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key)) => Some(StaticKeys {
            access_key_id,
            secret_access_key: secret_access_key.into(),
            session_token: get("aws.credentials.session_token").map(Secret::from),
        }),
        (None, None) => None,
        (id, _) => {
            let (given, missing) = if id.is_some() {
                ("aws.credentials.access_key_id", "aws.credentials.secret_access_key")
            } else {
                ("aws.credentials.secret_access_key", "aws.credentials.access_key_id")
            };
            return Err(SinkError::config(format!("option \"{given}\" requires option \"{missing}\""))
                .detail("An access key id and its secret access key must be given together.")
                .hint("Give both, or neither to use the default AWS credential chain."));
        }
    };
    if keys.is_none() && get("aws.credentials.session_token").is_some() {
        return Err(SinkError::config("option \"aws.credentials.session_token\" requires an access key pair")
            .hint("Give aws.credentials.access_key_id and aws.credentials.secret_access_key with it."));
    }
    let role_arn = get("aws.credentials.role.arn");
    if let Some(arn) = &role_arn {
        if !arn.starts_with("arn:") || arn.split(':').count() < 6 {
            return Err(SinkError::config(format!("invalid value for option \"aws.credentials.role.arn\": \"{arn}\""))
                .hint("For example arn:aws:iam::123456789012:role/pg-sink."));
        }
    }
    let external_id = get("aws.credentials.role.external_id");
    if external_id.is_some() && role_arn.is_none() {
        return Err(SinkError::config("option \"aws.credentials.role.external_id\" requires option \"aws.credentials.role.arn\"")
            .hint("The external id is passed when assuming a role; give the role's ARN."));
    }
    let wrapped = match cfg.get("payload").map(str::to_ascii_lowercase).as_deref() {
        None | Some("wrapped") => true,
        Some("value") => false,
        Some(other) => {
            return Err(SinkError::config(format!("invalid value for option \"payload\": \"{other}\""))
                .hint("Use wrapped (key, value and headers) or value (the encoded value only)."))
        }
    };
    Ok(KinesisSettings {
        stream,
        region,
        endpoint,
        keys,
        role_arn,
        external_id,
        wrapped,
        timeout: cfg.timeout(10_000)?,
        validate: cfg.flag("validate", true)?,
    })
}

fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    Ok(Box::new(KinesisConnector { settings: settings(cfg)?, keyless: cfg.sink_name.clone(), client: None }))
}

pub struct KinesisConnector {
    settings: KinesisSettings,
    /// Partition key of records without a key.
    keyless: String,
    client: Option<Client>,
}

/// The partition key of a record: its key as text (at most 256 characters, else a
/// hash of it), or `keyless` when it has no key.
pub fn partition_key(r: &Record, keyless: &str) -> String {
    match r.key.as_deref() {
        Some(k) if !k.is_empty() => {
            let text = String::from_utf8_lossy(k);
            if text.chars().count() <= MAX_PARTITION_KEY_CHARS {
                text.into_owned()
            } else {
                format!("{:016x}", seahash::hash(k))
            }
        }
        _ => keyless.to_string(),
    }
}

/// One record as it will be sent.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition_key: String,
    pub data: Vec<u8>,
}

impl Entry {
    /// What counts against the record and request limits.
    pub fn size(&self) -> usize {
        self.partition_key.len() + self.data.len()
    }
}

pub fn entries(batch: &Batch, wrapped: bool, keyless: &str) -> Vec<Entry> {
    batch
        .records
        .iter()
        .map(|r| {
            let data = if wrapped {
                let mut out = Vec::with_capacity(r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len) + 128);
                write_wrapped(r, batch.key_is_json, batch.value_is_json, &mut out);
                out
            } else {
                r.value.clone().unwrap_or_default()
            };
            Entry { partition_key: partition_key(r, keyless), data }
        })
        .collect()
}

/// Split entries into PutRecords requests within the limits, in order. A record
/// over the per-record limit fails the whole plan with a permanent error.
pub fn plan(entries: &[Entry]) -> Result<Vec<std::ops::Range<usize>>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, e) in entries.iter().enumerate() {
        let size = e.size();
        if size > MAX_RECORD_BYTES {
            return Err(SinkError::permanent(format!("record of {size} bytes exceeds Kinesis' limit of {MAX_RECORD_BYTES} bytes"))
                .detail(format!("Record with partition key {}.", e.partition_key))
                .hint("Leave large columns out of the sink (e.g. with a column list in the publication), then resume the sink."));
        }
        if i > start && (i - start == MAX_RECORDS_PER_REQUEST || bytes + size > MAX_REQUEST_BYTES) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    Ok(out)
}

/// Which records of a request to send again, in order, given each one's outcome
/// (`true` = failed): the failed ones, and every record after a failure of the same
/// partition key (it must not overtake the record it followed).
pub fn resend<'a>(keys: impl Iterator<Item = &'a str>, failed: &[bool]) -> Vec<usize> {
    let mut dirty: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (i, key) in keys.enumerate() {
        if failed.get(i).copied().unwrap_or(true) || dirty.contains(key) {
            dirty.insert(key);
            out.push(i);
        }
    }
    out
}

/// Per-record error codes that are worth retrying (the others stop the sink).
fn retryable_record_error(code: &str) -> bool {
    matches!(code, "ProvisionedThroughputExceededException" | "InternalFailure" | "ServiceUnavailable" | "KMSThrottlingException")
}

/// An SDK error as a sink error, by the service's error code.
fn classify<E, R>(what: &str, stream: &str, e: &SdkError<E, R>) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = DisplayErrorContext(e).to_string();
    match e.code() {
        Some("ResourceNotFoundException") => SinkError::permanent(format!("Kinesis stream \"{stream}\" does not exist"))
            .detail(e.message().unwrap_or_default().to_string())
            .hint("Create the stream (and check aws.region and endpoint), then resume the sink."),
        Some(
            code @ ("AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSNotFoundException"
            | "KMSInvalidStateException"),
        ) => SinkError::permanent(format!("Kinesis refused the {what}: {code}"))
            .detail(e.message().unwrap_or_default().to_string())
            .hint("Check the credentials, the role and its permissions on the stream."),
        Some(code @ ("InvalidArgumentException" | "ValidationException" | "SerializationException")) => {
            SinkError::permanent(format!("Kinesis rejected the {what}: {code}")).detail(e.message().unwrap_or_default().to_string())
        }
        _ => SinkError::transient(format!("Kinesis {what} failed: {text}")).hint(
            "Check endpoint and aws.region and that the service is reachable; the sink retries (at creation, validate => false skips this check).",
        ),
    }
}

fn throttled(code: Option<&str>) -> bool {
    matches!(code, Some("ProvisionedThroughputExceededException" | "LimitExceededException" | "ThrottlingException" | "KMSThrottlingException"))
}

impl KinesisConnector {
    async fn connect(&self) -> Client {
        let s = &self.settings;
        let region = Region::new(s.region.clone());
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region.clone())
            // Retries are ours (they must keep per-key order); the SDK makes one attempt.
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(TimeoutConfig::builder().connect_timeout(s.timeout).operation_timeout(s.timeout).build());
        if let Some(k) = &s.keys {
            loader = loader.credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                k.access_key_id.clone(),
                k.secret_access_key.expose().to_string(),
                k.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "pg_sink",
            ));
        }
        if let Some(e) = &s.endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        let base = loader.load().await;
        let config = match &s.role_arn {
            None => aws_sdk_kinesis::Config::from(&base),
            Some(arn) => {
                let mut role = aws_config::sts::AssumeRoleProvider::builder(arn.clone()).session_name("pg_sink").region(region).configure(&base);
                if let Some(x) = &s.external_id {
                    role = role.external_id(x.clone());
                }
                let provider = role.build().await;
                aws_sdk_kinesis::config::Builder::from(&base).credentials_provider(provider).build()
            }
        };
        Client::from_conf(config)
    }

    async fn client(&mut self) -> Client {
        if self.client.is_none() {
            self.client = Some(self.connect().await);
        }
        self.client.clone().expect("client was just set")
    }

    /// Send one request's entries until all are accepted, keeping per-key order.
    async fn put(&self, client: &Client, entries: &[Entry]) -> Result<()> {
        let stream = &self.settings.stream;
        let mut pending: Vec<usize> = (0..entries.len()).collect();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let started = Instant::now();
        loop {
            let request = pending
                .iter()
                .map(|&i| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(entries[i].data.clone()))
                        .partition_key(entries[i].partition_key.clone())
                        .build()
                        .map_err(|e| SinkError::permanent(format!("could not build a Kinesis record: {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let last_error = match client.put_records().stream_name(stream).set_records(Some(request)).send().await {
                Ok(out) => {
                    if out.failed_record_count().unwrap_or(0) == 0 {
                        return Ok(());
                    }
                    let results = out.records();
                    let mut failed = vec![true; pending.len()];
                    let mut first_error = None;
                    for (j, r) in results.iter().enumerate().take(pending.len()) {
                        if let Some(code) = r.error_code() {
                            if !retryable_record_error(code) {
                                let e = &entries[pending[j]];
                                return Err(SinkError::permanent(format!("Kinesis rejected a record: {code}")).detail(format!(
                                    "Record with partition key {}: {}",
                                    e.partition_key,
                                    r.error_message().unwrap_or_default()
                                )));
                            }
                            first_error.get_or_insert_with(|| format!("{code}: {}", r.error_message().unwrap_or_default()));
                        } else {
                            failed[j] = false;
                        }
                    }
                    let keep = resend(pending.iter().map(|&i| entries[i].partition_key.as_str()), &failed);
                    pending = keep.into_iter().map(|j| pending[j]).collect();
                    first_error.unwrap_or_else(|| "records failed without an error code".into())
                }
                Err(e) => {
                    if !throttled(e.code()) {
                        // Permanent errors stop the sink; network trouble hands the
                        // batch back to the worker, which backs off and sends it again.
                        return Err(classify("PutRecords request", stream, &e));
                    }
                    e.code().unwrap_or_default().to_string()
                }
            };
            if backoff.attempts() + 1 >= MAX_ATTEMPTS {
                return Err(SinkError::transient(format!(
                    "{} Kinesis records still failing after {} attempts in {:.1} s",
                    pending.len(),
                    backoff.attempts() + 1,
                    started.elapsed().as_secs_f64()
                ))
                .detail(format!("Last error: {last_error}."))
                .hint("The stream is throttling or failing; the sink retries. Consider more shards."));
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[async_trait(?Send)]
impl Connector for KinesisConnector {
    async fn check(&mut self) -> Result<()> {
        if !self.settings.validate {
            return Ok(());
        }
        let client = self.client().await;
        let stream = self.settings.stream.clone();
        let out =
            client.describe_stream_summary().stream_name(&stream).send().await.map_err(|e| classify("DescribeStreamSummary request", &stream, &e));
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                self.client = None;
                return Err(e);
            }
        };
        let status = out.stream_description_summary().map(|d| d.stream_status().as_str().to_string()).unwrap_or_default();
        if status != "ACTIVE" && status != "UPDATING" {
            return Err(SinkError::transient(format!("Kinesis stream \"{stream}\" is {status}"))
                .detail("Records can only be written to an ACTIVE or UPDATING stream.")
                .hint("Wait until the stream is ACTIVE, or give validate => false."));
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &Batch, _sql: &mut dyn SqlSession) -> Result<()> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let entries = entries(batch, self.settings.wrapped, &self.keyless);
        let requests = plan(&entries)?;
        let client = self.client().await;
        for range in requests {
            if let Err(e) = self.put(&client, &entries[range]).await {
                if e.is_transient() {
                    self.client = None;
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::connector::TxnStamp;
    use crate::engine::envelope::{Draft, Op, Payload};
    use crate::engine::lsn::Lsn;

    fn cfg(pairs: &[(&str, &str)]) -> ConnectorConfig {
        ConnectorConfig::for_test(pairs)
    }

    fn record(key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            stamp: std::sync::Arc::new(TxnStamp { lsn: "0/1A2B".into(), timestamp: "1.000".into() }),
            draft: Draft { key: None, payload: Payload::Tombstone, op: Op::Delete },
            commit_lsn: Lsn(0x1A2B),
            ordinal: 0,
            commit_time_us: 0,
        }
    }

    #[test]
    fn options_follow_the_risingwave_seed() {
        let s = settings(&cfg(&[("stream", "s-1.x"), ("aws.region", "us-east-1")])).unwrap();
        assert_eq!(s.keys, None);
        assert!(s.wrapped && s.validate);
        let s = settings(&cfg(&[
            ("stream", "s"),
            ("aws.region", "eu-west-2"),
            ("endpoint", "http://127.0.0.1:4566"),
            ("aws.credentials.access_key_id", "AK"),
            ("aws.credentials.secret_access_key", "SK"),
            ("aws.credentials.session_token", "T"),
            ("aws.credentials.role.arn", "arn:aws:iam::123456789012:role/r"),
            ("aws.credentials.role.external_id", "x"),
            ("payload", "value"),
        ]))
        .unwrap();
        assert_eq!(s.keys, Some(StaticKeys { access_key_id: "AK".into(), secret_access_key: "SK".into(), session_token: Some("T".into()) }));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(s.external_id.as_deref(), Some("x"));
        assert!(!s.wrapped);
    }

    #[test]
    fn bad_options_are_refused() {
        let base = [("stream", "s"), ("aws.region", "us-east-1")];
        let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
            let mut v = base.to_vec();
            for (k, val) in extra {
                v.retain(|(k2, _)| k2 != k);
                v.push((k, val));
            }
            v
        };
        for (opts, msg) in [
            (with(&[("stream", "a b")]), "invalid Kinesis stream name"),
            (with(&[("stream", "")]), "invalid Kinesis stream name"),
            (with(&[("aws.region", "US East (N. Virginia)")]), "invalid value for option \"aws.region\""),
            (with(&[("endpoint", "localhost:4566")]), "invalid value for option \"endpoint\""),
            (with(&[("aws.credentials.access_key_id", "AK")]), "requires option \"aws.credentials.secret_access_key\""),
            (with(&[("aws.credentials.secret_access_key", "SK")]), "requires option \"aws.credentials.access_key_id\""),
            (with(&[("aws.credentials.session_token", "T")]), "requires an access key pair"),
            (with(&[("aws.credentials.role.arn", "role/x")]), "aws.credentials.role.arn"),
            (with(&[("aws.credentials.role.external_id", "x")]), "requires option \"aws.credentials.role.arn\""),
            (with(&[("payload", "avro")]), "invalid value for option \"payload\""),
            (with(&[("timeout_ms", "5")]), "timeout_ms"),
            (with(&[("validate", "perhaps")]), "boolean option \"validate\""),
        ] {
            let err = settings(&cfg(&opts)).unwrap_err();
            assert!(err.message.contains(msg), "{opts:?}: {}", err.message);
            assert!(err.hint.is_some() || err.detail.is_some(), "{opts:?} has neither hint nor detail");
        }
    }

    #[test]
    fn partition_keys_are_the_key_or_its_hash_or_the_sink_name() {
        assert_eq!(partition_key(&record(Some("{\"id\":1}"), None), "s"), "{\"id\":1}");
        let long = format!("{{\"k\":\"{}\"}}", "é".repeat(300));
        let pk = partition_key(&record(Some(&long), None), "s");
        assert_eq!(pk.len(), 16);
        assert_eq!(pk, partition_key(&record(Some(&long), None), "s"));
        assert_eq!(partition_key(&record(None, Some("{}")), "sink1"), "sink1");
    }

    #[test]
    fn wrapped_data_carries_the_lsn_and_value_mode_sends_the_value() {
        let batch = Batch { records: vec![record(Some("{\"id\":1}"), None)], key_is_json: true, value_is_json: true, ..Default::default() };
        let e = entries(&batch, true, "s");
        let doc: serde_json::Value = serde_json::from_slice(&e[0].data).unwrap();
        assert_eq!(doc["key"]["id"], 1);
        assert!(doc["value"].is_null());
        assert_eq!(doc["headers"]["pg_sink-lsn"], "0/1A2B");
        assert_eq!(doc["headers"]["pg_sink-op"], "delete");
        let e = entries(&batch, false, "s");
        assert!(e[0].data.is_empty());
    }

    #[test]
    fn requests_respect_count_and_size_limits() {
        let small = |n: usize| Entry { partition_key: "k".into(), data: vec![b'x'; n] };
        let e: Vec<Entry> = (0..1201).map(|_| small(10)).collect();
        assert_eq!(plan(&e).unwrap(), vec![0..500, 500..1000, 1000..1201]);
        // Six records of ~1 MiB: five fit under 5 MiB only if their sum does.
        let e: Vec<Entry> = (0..6).map(|_| small(MAX_RECORD_BYTES - 1)).collect();
        assert_eq!(plan(&e).unwrap(), vec![0..5, 5..6]);
        let mut e: Vec<Entry> = (0..3).map(|_| small(10)).collect();
        e.push(Entry { partition_key: "{\"id\":7}".into(), data: vec![0; MAX_RECORD_BYTES] });
        let err = plan(&e).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.detail.unwrap().contains("{\"id\":7}"));
        assert!(plan(&[]).unwrap().is_empty());
    }

    #[test]
    fn partial_failures_resend_failed_records_and_what_follows_them_per_key() {
        let keys = ["a", "b", "a", "c", "b", "a"];
        // b's first record failed: its later record goes again too; a and c stay done.
        assert_eq!(resend(keys.iter().copied(), &[false, true, false, false, false, false]), vec![1, 4]);
        // a failed in the middle: the last a follows it.
        assert_eq!(resend(keys.iter().copied(), &[false, false, true, false, false, false]), vec![2, 5]);
        assert!(resend(keys.iter().copied(), &[false; 6]).is_empty());
        // A missing result counts as failed.
        assert_eq!(resend(keys.iter().copied(), &[false, false, false, false, false]), vec![5]);
    }
}
