//! Object storage: `file` (a local directory), `s3`, `gcs`, `azblob` and `hdfs`, all
//! through object_store, as Kinetica's data sinks name them. [`store`] owns locations and
//! credentials, [`format`] the bytes of a file; this module decides which records go
//! into which file and names them.
//!
//! Files are exactly-once. A batch is cut into files only at transaction
//! boundaries — on size (`max_file_size`), on commit-time span (`rollover_seconds`),
//! on the Hive partition (`partitioning` by commit date or hour) and, for CSV and
//! Parquet, when the row shape changes — so the same batch always gives the same
//! files, and each is named by the first and last commit LSN it holds:
//! `<prefix>/<sink>/[dt=YYYY-MM-DD/[hour=HH/]]<START>-<END>.<ext>`. A batch
//! retried after a failure rewrites the same names, and before the first batch after
//! a start or a retry, files a crashed attempt left beyond the confirmed position
//! are deleted (their changes are about to be written again). The initial snapshot
//! goes to `snapshot/<chunk>.<ext>`; a snapshot that starts over clears the old one.
//!
//! After each data file a manifest entry `_manifest/<START>-<END>.json` (snapshot:
//! `_manifest/snapshot-<chunk>.json`) records its name, record count, size, LSN and
//! commit-time range: readers that list the manifest see only complete files.
//! Large files go up as multipart uploads; local files are fsynced.

pub mod format;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use super::{Batch, Connector, ConnectorConfig, ConnectorSpec, Record, SqlSession};
use crate::engine::envelope::EnvelopeKind;
use crate::engine::error::{Result, SinkError};
use crate::engine::lsn::Lsn;
use format::FileFormat;
use store::{Location, Provider};

const COMMON: [(&str, &str); 10] = [
    ("location", "where to write: a URI such as s3://bucket/prefix, or Kinetica's bare provider name with the bucket option"),
    ("path", "alias of location"),
    ("file_format", "jsonl (default), csv or parquet"),
    ("max_file_size", "bytes after which a new file starts, at a transaction boundary (default 64 MiB)"),
    ("rollover_seconds", "commit-time span after which a new file starts (default 0: no limit)"),
    ("partitioning", "none (default), date (dt=YYYY-MM-DD/) or hour (dt=.../hour=HH/), by commit time in UTC"),
    ("manifest", "write _manifest/<file>.json after each file (default true)"),
    ("multipart_threshold", "files at least this many bytes are uploaded in parts of this size (default 16 MiB, at least 5 MiB)"),
    ("validate", "check at creation that an object can be written (default true)"),
    ("timeout_ms", "request timeout in milliseconds (default 30000)"),
];

macro_rules! object_spec {
    ($name:expr, $build:ident, [$($extra:expr),* $(,)?]) => {
        ConnectorSpec {
            name: $name,
            options: &[
                COMMON[0], COMMON[1], COMMON[2], COMMON[3], COMMON[4], COMMON[5], COMMON[6], COMMON[7], COMMON[8], COMMON[9],
                $($extra),*
            ],
            required: &[],
            option_prefixes: &[],
            accepts_unchanged_toast: false,
            needs_json: false,
            applies_rows: false,
            build: $build,
            check_connection: None,
        }
    };
}

const MANAGED: (&str, &str) = ("use_managed_credentials", "authenticate with the platform's default credentials");
const PUBLIC: (&str, &str) = ("public", "send unsigned requests (a public bucket)");
const ENDPOINT: (&str, &str) = ("endpoint", "custom service URL (an emulator, a private endpoint)");

pub const FILE: ConnectorSpec = object_spec!("file", build_file, []);
pub const S3: ConnectorSpec = object_spec!(
    "s3",
    build_s3,
    [
        ("s3_bucket_name", "the bucket (when location is just 's3')"),
        ("s3_region", "AWS region (default us-east-1)"),
        ("aws.region", "alias of s3_region"),
        ("region", "alias of s3_region"),
        ENDPOINT,
        ("s3_endpoint", "alias of endpoint"),
        ("aws.credentials.access_key_id", "access key (with secret_access_key)"),
        ("aws.credentials.secret_access_key", "secret key (a secret)"),
        ("aws.credentials.session_token", "session token of temporary credentials"),
        MANAGED,
        PUBLIC,
    ]
);
pub const GCS: ConnectorSpec = object_spec!(
    "gcs",
    build_gcs,
    [
        ("gcs_bucket_name", "the bucket (when location is just 'gcs')"),
        ("gcs_project_id", "the project (accepted for Kinetica compatibility; the bucket name is global)"),
        ("gcs_service_account_keys", "the service account's JSON key text (a secret)"),
        ENDPOINT,
        MANAGED,
        PUBLIC,
    ]
);
pub const AZBLOB: ConnectorSpec = object_spec!(
    "azblob",
    build_azure,
    [
        ("azure_container_name", "the container (when location is just 'azure')"),
        ("azure_storage_account_name", "the storage account"),
        ("azure_storage_account_key", "the account's shared key (a secret)"),
        ("azure_sas_token", "a shared access signature (a secret)"),
        ("azure_tenant_id", "tenant of the application or managed identity"),
        ("azure_client_id", "application (client) id, with azure_client_secret"),
        ("azure_client_secret", "application secret (a secret)"),
        ENDPOINT,
        MANAGED,
        PUBLIC,
    ]
);

pub const HDFS: ConnectorSpec = ConnectorSpec {
    check_connection: Some(check_hdfs_connection),
    ..object_spec!(
        "hdfs",
        build_hdfs,
        [
            ("hdfs_namenode", "the NameNode's host:port (when location is just 'hdfs')"),
            ("hdfs_user", "the HDFS user (simple authentication; default: the server's operating-system user)"),
            ("hdfs_use_kerberos", "Kinetica's Kerberos switch: refused (Kerberos is not supported)"),
            ("hdfs_kerberos_keytab", "Kinetica's keytab: refused (Kerberos is not supported)"),
        ]
    )
};

fn build_hdfs(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    build(Provider::Hdfs, cfg)
}

/// A data sink (connection) to HDFS: the authentication its options ask for must
/// be one the client has.
fn check_hdfs_connection(options: &std::collections::BTreeMap<String, String>) -> Result<()> {
    let cfg = ConnectorConfig { options: options.clone(), ..ConnectorConfig::empty() };
    store::check_hdfs_auth(&cfg)
}
fn build_file(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    build(Provider::File, cfg)
}
fn build_s3(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    build(Provider::S3, cfg)
}
fn build_gcs(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    build(Provider::Gcs, cfg)
}
fn build_azure(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    build(Provider::Azure, cfg)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    None,
    Date,
    Hour,
}

/// How records become files.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub format: FileFormat,
    pub max_file_size: usize,
    pub rollover_us: i64,
    pub partitioning: Partitioning,
    pub manifest: bool,
    pub multipart_threshold: usize,
}

const MIB: usize = 1024 * 1024;

fn size_option(cfg: &ConnectorConfig, name: &str, default: usize, min: usize) -> Result<usize> {
    match cfg.get(name) {
        None => Ok(default),
        Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n >= min).ok_or_else(|| {
            SinkError::config(format!("invalid value for option \"{name}\": \"{v}\"")).hint(format!("Give a number of bytes, at least {min}."))
        }),
    }
}

pub fn settings(cfg: &ConnectorConfig) -> Result<FileSettings> {
    let format = FileFormat::parse(cfg.get("file_format").unwrap_or("jsonl"))?;
    if format.is_tabular() && cfg.envelope == EnvelopeKind::Debezium {
        return Err(SinkError::config(format!("file_format {} cannot hold the debezium envelope", format.extension()))
            .detail("CSV and Parquet files hold one row per change; a Debezium event nests two rows.")
            .hint("Use envelope append-only or upsert, or file_format jsonl."));
    }
    let rollover_s = match cfg.get("rollover_seconds") {
        None => 0,
        Some(v) => v.trim().parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            SinkError::config(format!("invalid value for option \"rollover_seconds\": \"{v}\"")).hint("Give whole seconds, 0 for no limit.")
        })?,
    };
    let partitioning = match cfg.get("partitioning").map(|p| p.trim().to_ascii_lowercase()).as_deref() {
        None | Some("none") => Partitioning::None,
        Some("date") | Some("day") => Partitioning::Date,
        Some("hour") => Partitioning::Hour,
        Some(other) => {
            return Err(SinkError::config(format!("invalid value for option \"partitioning\": \"{other}\"")).hint("Use none, date or hour."))
        }
    };
    Ok(FileSettings {
        format,
        max_file_size: size_option(cfg, "max_file_size", 64 * MIB, 1024)?,
        rollover_us: rollover_s * 1_000_000,
        partitioning,
        manifest: cfg.flag("manifest", true)?,
        multipart_threshold: size_option(cfg, "multipart_threshold", 16 * MIB, 5 * MIB)?,
    })
}

fn build(provider: Provider, cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    let settings = settings(cfg)?;
    let location = store::parse_location(provider, cfg)?;
    // Building the client checks credentials' shape; the local directory is only
    // created on first use.
    let store = if provider == Provider::File { None } else { Some(store::build(&location, cfg)?) };
    let base = [location.prefix.as_str(), cfg.sink_name.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("/");
    Ok(Box::new(ObjectConnector {
        location,
        cfg: cfg.clone(),
        store,
        base,
        settings,
        validate: cfg.flag("validate", true)?,
        high: None,
        staged: None,
    }))
}

pub struct ObjectConnector {
    location: Location,
    cfg: ConnectorConfig,
    store: Option<Arc<dyn ObjectStore>>,
    /// `<prefix>/<sink>`: every object of the sink lives below it.
    base: String,
    settings: FileSettings,
    validate: bool,
    /// The highest commit LSN written since this connector started; `None` until the
    /// first batch (which first clears leftovers of earlier attempts).
    high: Option<Lsn>,
    /// The parts of a large transaction written so far: its commit LSN and the
    /// manifest entries held back until its last part, so that readers of the
    /// manifest see the transaction whole or not at all.
    staged: Option<(Lsn, Vec<(String, Vec<u8>)>)>,
}

/// One file's worth of records.
struct Part<'a> {
    records: &'a [Record],
    partition: String,
}

/// The partition a commit time falls in, as a number: the day or the hour since
/// the epoch (0 without partitioning).
fn partition_of(p: Partitioning, commit_time_us: i64) -> i64 {
    let secs = commit_time_us.div_euclid(1_000_000);
    match p {
        Partitioning::None => 0,
        Partitioning::Date => secs.div_euclid(86_400),
        Partitioning::Hour => secs.div_euclid(3600),
    }
}

/// `dt=2026-11-21/` or `dt=2026-11-21/hour=14/` for a commit time.
pub fn partition_dir(p: Partitioning, commit_time_us: i64) -> String {
    if p == Partitioning::None {
        return String::new();
    }
    let secs = commit_time_us.div_euclid(1_000_000);
    let (y, m, d) = format::civil_from_days(secs.div_euclid(86_400));
    match p {
        Partitioning::Hour => format!("dt={y:04}-{m:02}-{d:02}/hour={:02}/", secs.rem_euclid(86_400) / 3600),
        _ => format!("dt={y:04}-{m:02}-{d:02}/"),
    }
}

/// Cut a batch's records into files at transaction boundaries.
fn split<'a>(records: &'a [Record], s: &FileSettings) -> Vec<Part<'a>> {
    let mut parts = Vec::new();
    let mut start = 0usize;
    let mut bytes = 0usize;
    let estimate = |r: &Record| 96 + r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
    for i in 0..records.len() {
        let r = &records[i];
        if i > start && r.commit_lsn != records[i - 1].commit_lsn {
            let first = &records[start];
            let cut = bytes >= s.max_file_size
                || (s.rollover_us > 0 && r.commit_time_us - first.commit_time_us >= s.rollover_us)
                || partition_of(s.partitioning, r.commit_time_us) != partition_of(s.partitioning, first.commit_time_us)
                || (s.format.is_tabular() && shape_differs(first, r));
            if cut {
                parts.push(Part { records: &records[start..i], partition: partition_dir(s.partitioning, first.commit_time_us) });
                start = i;
                bytes = 0;
            }
        }
        bytes += estimate(r);
    }
    if start < records.len() {
        parts.push(Part { records: &records[start..], partition: partition_dir(s.partitioning, records[start].commit_time_us) });
    }
    parts
}

/// Whether two records' rows have different relation shapes.
fn shape_differs(a: &Record, b: &Record) -> bool {
    match (format::relation_of(a), format::relation_of(b)) {
        (Some(x), Some(y)) => !(Arc::ptr_eq(x, y) || x.columns == y.columns),
        _ => false,
    }
}

fn lsn_hex(l: Lsn) -> String {
    format!("{:016X}", l.0)
}

/// `(start, end)` commit LSNs of a data file name `<START>-<END>.<ext>`.
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.rsplit('/').next()?.split('.').next()?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

fn store_error(what: &str, e: object_store::Error) -> SinkError {
    match e {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            SinkError::permanent(format!("could not {what}: {e}")).hint("Check the sink's credentials, then resume it.")
        }
        // Unreachable endpoints, throttling, a full disk: retry with backoff.
        _ => SinkError::transient(format!("could not {what}: {e}")),
    }
}

fn object_path(name: &str) -> Result<ObjectPath> {
    ObjectPath::parse(name).map_err(|e| SinkError::permanent(format!("invalid object name \"{name}\": {e}")))
}

impl ObjectConnector {
    fn store(&mut self) -> Result<Arc<dyn ObjectStore>> {
        if self.store.is_none() {
            self.store = Some(store::build(&self.location, &self.cfg)?);
        }
        self.store.clone().ok_or_else(|| SinkError::transient("object store unavailable"))
    }

    async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let store = self.store()?;
        let path = object_path(name)?;
        if bytes.len() >= self.settings.multipart_threshold {
            let upload = store.put_multipart(&path).await.map_err(|e| store_error(&format!("start uploading \"{name}\""), e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, self.settings.multipart_threshold);
            writer.write(&bytes);
            writer.finish().await.map_err(|e| store_error(&format!("upload \"{name}\""), e))?;
        } else {
            store.put(&path, PutPayload::from(bytes)).await.map_err(|e| store_error(&format!("write \"{name}\""), e))?;
        }
        if let Some(dir) = &self.location.dir {
            // object_store renames a temporary file into place; make both durable.
            let full = dir.join(name);
            let sync = |p: &std::path::Path| std::fs::File::open(p).and_then(|f| f.sync_all());
            sync(&full).map_err(|e| SinkError::transient(format!("could not fsync \"{name}\": {e}")))?;
            if let Some(parent) = full.parent() {
                sync(parent).map_err(|e| SinkError::transient(format!("could not fsync the directory of \"{name}\": {e}")))?;
            }
        }
        Ok(())
    }

    /// Delete what an earlier attempt wrote at or after `from` (data files and their
    /// manifest entries; manifest first, so a reader never sees an entry without
    /// its file). With `snapshot`, delete the old snapshot instead.
    async fn clear_from(&mut self, from: Lsn, snapshot: bool) -> Result<()> {
        let store = self.store()?;
        let base = ObjectPath::from(self.base.as_str());
        let listed: Vec<_> = match store.list(Some(&base)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(store_error("list earlier files", e)),
        };
        let manifest_prefix = format!("{}/_manifest/", self.base);
        let snapshot_prefix = format!("{}/snapshot/", self.base);
        let mut doomed: Vec<(bool, ObjectPath)> = Vec::new();
        for meta in listed {
            let name = meta.location.as_ref();
            let is_manifest = name.starts_with(&manifest_prefix);
            let file = name.rsplit('/').next().unwrap_or_default();
            let hit = if snapshot {
                name.starts_with(&snapshot_prefix) || (is_manifest && file.starts_with("snapshot-"))
            } else {
                !name.starts_with(&snapshot_prefix) && parse_file_name(file).is_some_and(|(start, _)| start >= from.0)
            };
            if hit {
                doomed.push((!is_manifest, meta.location));
            }
        }
        doomed.sort_by_key(|(data, _)| *data);
        for (_, path) in doomed {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(&format!("delete the leftover \"{path}\""), e)),
            }
        }
        Ok(())
    }

    async fn write_part(&mut self, part: &Part<'_>, batch: &Batch, name: String, manifest_name: String) -> Result<()> {
        let bytes = format::render(self.settings.format, part.records, batch.key_is_json, batch.value_is_json)?;
        let size = bytes.len();
        self.put(&name, bytes).await?;
        if self.settings.manifest {
            let first = &part.records[0];
            let last = &part.records[part.records.len() - 1];
            let entry = serde_json::json!({
                "file": name.strip_prefix(&format!("{}/", self.base)).unwrap_or(&name),
                "records": part.records.len(),
                "bytes": size,
                "start_lsn": first.commit_lsn.to_string(),
                "end_lsn": last.commit_lsn.to_string(),
                "format": self.settings.format.extension(),
                "min_commit_time": format::iso_utc(part.records.iter().map(|r| r.commit_time_us).min().unwrap_or(0)),
                "max_commit_time": format::iso_utc(part.records.iter().map(|r| r.commit_time_us).max().unwrap_or(0)),
            });
            match self.staged.as_mut() {
                Some((_, held)) if batch.part.is_some() => held.push((manifest_name, entry.to_string().into_bytes())),
                _ => self.put(&manifest_name, entry.to_string().into_bytes()).await?,
            }
        }
        Ok(())
    }

    /// One part of a large transaction: a file of its own,
    /// `<COMMIT>-<COMMIT>.p<NNNNNN>.<ext>`, whose manifest entry waits for the
    /// transaction's last part. The transaction's first part clears what an earlier
    /// attempt left from its commit LSN on, as the first batch of a step does.
    async fn deliver_part(&mut self, batch: &Batch, part: super::Part) -> Result<()> {
        let lsn = batch.start_lsn;
        if self.staged.as_ref().is_none_or(|(at, _)| *at != lsn) {
            if part.index > 0 {
                return Err(SinkError::transient(format!("part {} of the transaction at {lsn} came without its first part", part.index)));
            }
            if self.high.is_none_or(|h| lsn <= h) {
                self.clear_from(lsn, false).await?;
            }
            self.staged = Some((lsn, Vec::new()));
        }
        if !batch.records.is_empty() {
            let ext = self.settings.format.extension();
            let hex = lsn_hex(lsn);
            let file = Part { records: &batch.records, partition: partition_dir(self.settings.partitioning, batch.records[0].commit_time_us) };
            let name = format!("{}/{}{hex}-{hex}.p{:06}.{ext}", self.base, file.partition, part.index);
            let manifest = format!("{}/_manifest/{hex}-{hex}.p{:06}.json", self.base, part.index);
            self.write_part(&file, batch, name, manifest).await?;
        }
        self.high = Some(self.high.unwrap_or(Lsn::ZERO).max(lsn));
        if part.last {
            if let Some((_, held)) = self.staged.take() {
                for (name, bytes) in held {
                    self.put(&name, bytes).await?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl Connector for ObjectConnector {
    async fn check(&mut self) -> Result<()> {
        if !self.validate {
            return Ok(());
        }
        let name = format!("{}/_manifest/.pg_sink_check", self.base);
        let store = self.store().map_err(|e| if e.is_transient() { SinkError::config(e.message) } else { e })?;
        let path = object_path(&name)?;
        let fail = |e: object_store::Error| {
            SinkError::transient(format!("could not write to the {} location: {e}", self.location.provider.name()))
                .hint("Check the location, endpoint and credentials, or pass validate => false to skip this check.")
        };
        store.put(&path, PutPayload::from_static(b"ok")).await.map_err(fail)?;
        store.delete(&path).await.map_err(fail)?;
        Ok(())
    }

    async fn deliver(&mut self, batch: &Batch, _sql: &mut dyn SqlSession) -> Result<()> {
        if let Some(part) = batch.part {
            let result = self.deliver_part(batch, part).await;
            if result.is_err() {
                self.staged = None;
            }
            return result;
        }
        if batch.records.is_empty() {
            return Ok(());
        }
        let ext = self.settings.format.extension();
        if let Some(chunk) = batch.snapshot_chunk {
            // A snapshot redone after a crash gets a new slot and LSN: clear what a
            // previous attempt left so no row is delivered twice.
            if chunk == 0 {
                self.clear_from(Lsn::ZERO, true).await?;
            }
            let name = format!("{}/snapshot/{chunk:08}.{ext}", self.base);
            let manifest = format!("{}/_manifest/snapshot-{chunk:08}.json", self.base);
            let part = Part { records: &batch.records, partition: String::new() };
            return self.write_part(&part, batch, name, manifest).await;
        }
        // The first batch since start, or one that goes back (a retried step): what
        // lies beyond it was written by an attempt whose progress was not recorded.
        if self.high.is_none_or(|h| batch.start_lsn <= h) {
            self.clear_from(batch.start_lsn, false).await?;
        }
        for part in split(&batch.records, &self.settings) {
            let start = lsn_hex(part.records[0].commit_lsn);
            let end = lsn_hex(part.records[part.records.len() - 1].commit_lsn);
            let name = format!("{}/{}{start}-{end}.{ext}", self.base, part.partition);
            let manifest = format!("{}/_manifest/{start}-{end}.json", self.base);
            self.write_part(&part, batch, name, manifest).await?;
            self.high = Some(self.high.unwrap_or(Lsn::ZERO).max(part.records[part.records.len() - 1].commit_lsn));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::connector::TxnStamp;
    use crate::engine::envelope::{Draft, Op, Payload};

    struct NoSql;
    impl SqlSession for NoSql {
        fn execute(&mut self, _: &str, _: &[Option<&str>]) -> Result<u64> {
            unreachable!()
        }
        fn query(&mut self, _: &str, _: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
            unreachable!()
        }
        fn query_or_none(&mut self, _: &str, _: &[Option<&str>]) -> Result<Option<Vec<Vec<Option<String>>>>> {
            unreachable!()
        }
    }

    fn record(lsn: u64, time_us: i64, value: &str) -> Record {
        Record {
            key: Some(b"{\"id\":1}".to_vec()),
            value: Some(value.as_bytes().to_vec()),
            stamp: Arc::new(TxnStamp { lsn: Lsn(lsn).to_string(), timestamp: "0.000".into() }),
            draft: Draft { key: None, payload: Payload::Tombstone, op: Op::Insert },
            commit_lsn: Lsn(lsn),
            ordinal: 0,
            commit_time_us: time_us,
        }
    }

    fn batch(records: Vec<Record>) -> Batch {
        let start = records[0].commit_lsn;
        let end = Lsn(records[records.len() - 1].commit_lsn.0 + 8);
        Batch { records, start_lsn: start, end_lsn: end, key_is_json: true, value_is_json: true, ..Default::default() }
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        fn walk(d: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, root, out)
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = vec![];
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    const DAY: i64 = 86_400_000_000;

    #[test]
    fn files_are_cut_at_transactions_named_by_lsn_and_listed_in_the_manifest() {
        let dir = std::env::temp_dir().join(format!("pg_sink_object_test_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg =
            ConnectorConfig::for_test(&[("location", &format!("file://{}", dir.display())), ("max_file_size", "1024"), ("partitioning", "date")]);
        cfg.sink_name = "s1".into();
        let mut c = build(Provider::File, &cfg).unwrap();
        let big = "x".repeat(700);
        // Two records of one transaction stay together although they pass the size;
        // the next day starts a new partition.
        let b =
            batch(vec![record(0x10, 0, &format!("\"{big}\"")), record(0x10, 1, &format!("\"{big}\"")), record(0x20, 2, "1"), record(0x30, DAY, "2")]);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(c.deliver(&b, &mut NoSql)).unwrap();
        assert_eq!(
            files(&dir),
            vec![
                "s1/_manifest/0000000000000010-0000000000000010.json",
                "s1/_manifest/0000000000000020-0000000000000020.json",
                "s1/_manifest/0000000000000030-0000000000000030.json",
                "s1/dt=1970-01-01/0000000000000010-0000000000000010.jsonl",
                "s1/dt=1970-01-01/0000000000000020-0000000000000020.jsonl",
                "s1/dt=1970-01-02/0000000000000030-0000000000000030.jsonl",
            ]
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("s1/_manifest/0000000000000010-0000000000000010.json")).unwrap()).unwrap();
        assert_eq!(manifest["records"], 2);
        assert_eq!(manifest["file"], "dt=1970-01-01/0000000000000010-0000000000000010.jsonl");

        // A restart retries from 0x20 with a differently cut batch: the old files from
        // 0x20 on disappear, the earlier one stays.
        let mut c = build(Provider::File, &cfg).unwrap();
        let b = batch(vec![record(0x20, 2, "1"), record(0x30, 3, "2")]);
        rt.block_on(c.deliver(&b, &mut NoSql)).unwrap();
        assert_eq!(
            files(&dir),
            vec![
                "s1/_manifest/0000000000000010-0000000000000010.json",
                "s1/_manifest/0000000000000020-0000000000000030.json",
                "s1/dt=1970-01-01/0000000000000010-0000000000000010.jsonl",
                "s1/dt=1970-01-01/0000000000000020-0000000000000030.jsonl",
            ]
        );
        let text = std::fs::read_to_string(dir.join("s1/dt=1970-01-01/0000000000000020-0000000000000030.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("{\"key\":{\"id\":1},\"value\":1,\"headers\":{\"pg_sink-lsn\":\"0/20\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rollover_cuts_on_commit_time_span() {
        let s = FileSettings {
            format: FileFormat::JsonLines,
            max_file_size: usize::MAX,
            rollover_us: 10,
            partitioning: Partitioning::None,
            manifest: true,
            multipart_threshold: usize::MAX,
        };
        let records = vec![record(1, 0, "1"), record(2, 5, "1"), record(3, 10, "1"), record(4, 12, "1")];
        let parts = split(&records, &s);
        assert_eq!(parts.iter().map(|p| p.records.len()).collect::<Vec<_>>(), vec![2, 2]);
    }

    #[test]
    fn bad_file_options_are_refused() {
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![("location", "file:///tmp/x")];
            all.extend_from_slice(pairs);
            build(Provider::File, &ConnectorConfig::for_test(&all)).err().map(|e| e.message).unwrap_or_default()
        };
        assert!(with(&[("file_format", "xml")]).contains("file_format"));
        assert!(with(&[("max_file_size", "12")]).contains("max_file_size"));
        assert!(with(&[("multipart_threshold", "1000")]).contains("multipart_threshold"));
        assert!(with(&[("partitioning", "weekly")]).contains("partitioning"));
        assert!(with(&[("rollover_seconds", "-1")]).contains("rollover_seconds"));
        let mut cfg = ConnectorConfig::for_test(&[("location", "file:///tmp/x"), ("file_format", "csv")]);
        cfg.envelope = EnvelopeKind::Debezium;
        assert!(build(Provider::File, &cfg).err().unwrap().message.contains("debezium"));
    }

    #[test]
    fn file_names_parse_back() {
        assert_eq!(parse_file_name("a/dt=x/0000000000000010-00000000000000FF.csv"), Some((0x10, 0xFF)));
        assert_eq!(parse_file_name("a/snapshot/00000001.csv"), None);
    }
}
