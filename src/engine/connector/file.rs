//! `file`: JSON lines under a local directory, written through object_store's local
//! filesystem. Each batch becomes one object named by the commit LSN of its first
//! transaction (`<sink>/<16 hex digits>.jsonl`): a batch retried after a crash starts
//! at the same transaction and overwrites the same object, so files are exactly-once.
//! The initial snapshot is written as `<sink>/snapshot/<n>.jsonl` chunks. Objects are
//! fsynced before the batch is reported durable.
//!
//! Line layout: `{"key": K, "value": V, "headers": {"pg_sink-lsn": .., ..}}`, where K
//! and V are the encoder's JSON (see [`super::write_wrapped`] for other formats).

use std::path::PathBuf;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use super::{write_wrapped, Batch, Connector, ConnectorConfig, ConnectorSpec, SqlSession};
use crate::engine::error::{Result, SinkError};

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "file",
    options: &[
        ("path", "directory the sink writes into (absolute, or a file:/// URI); created if missing"),
        ("location", "Kinetica-style alias of path: file:///dir"),
    ],
    required: &[],
    option_prefixes: &[],
    accepts_unchanged_toast: false,
    needs_json: false,
    applies_rows: false,
    build,
};

fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    let raw = cfg.get("path").or_else(|| cfg.get("location")).ok_or_else(|| {
        SinkError::config("connector \"file\" requires option \"path\"").hint("Give an absolute directory, e.g. path => '/var/lib/pg_sink/out'.")
    })?;
    let dir = parse_dir(raw)?;
    Ok(Box::new(FileConnector { dir, prefix: cfg.sink_name.clone(), store: None }))
}

pub fn parse_dir(raw: &str) -> Result<PathBuf> {
    let path = raw.strip_prefix("file://").unwrap_or(raw);
    if !path.starts_with('/') {
        return Err(SinkError::config(format!("file sink path \"{raw}\" is not absolute"))
            .hint("Use an absolute directory or a file:///absolute/dir URI."));
    }
    Ok(PathBuf::from(path))
}

pub struct FileConnector {
    dir: PathBuf,
    prefix: String,
    store: Option<LocalFileSystem>,
}

/// Object name for a batch: the sink name, then the first commit LSN as fixed-width
/// hex so names sort in delivery order.
pub fn object_name(prefix: &str, start_lsn: u64) -> String {
    format!("{prefix}/{start_lsn:016X}.jsonl")
}

/// Object name for the n-th chunk of the initial snapshot.
pub fn snapshot_object_name(prefix: &str, seq: u32) -> String {
    format!("{prefix}/snapshot/{seq:08}.jsonl")
}

/// The batch as JSON lines, one [`write_wrapped`] document per record.
pub fn render(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.bytes() + batch.records.len() * 128);
    for r in &batch.records {
        write_wrapped(r, batch.key_is_json, batch.value_is_json, &mut out);
        out.push(b'\n');
    }
    out
}

fn io_error(what: &str, e: impl std::fmt::Display) -> SinkError {
    // A full disk or a permission problem can be fixed by an operator: retry.
    SinkError::transient(format!("could not {what}: {e}"))
}

#[async_trait(?Send)]
impl Connector for FileConnector {
    async fn deliver(&mut self, batch: &Batch, _sql: &mut dyn SqlSession) -> Result<()> {
        if batch.records.is_empty() {
            return Ok(());
        }
        if self.store.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| io_error(&format!("create directory \"{}\"", self.dir.display()), e))?;
            let store = LocalFileSystem::new_with_prefix(&self.dir).map_err(|e| io_error("open directory", e))?;
            self.store = Some(store);
        }
        let Some(store) = self.store.as_ref() else { return Err(SinkError::transient("file store unavailable")) };
        let name = match batch.snapshot_chunk {
            // A snapshot redone after a crash gets a new slot and LSN: clear what a
            // previous attempt left so no row is delivered twice.
            Some(0) => {
                let dir = ObjectPath::from(format!("{}/snapshot", self.prefix));
                let old: Vec<_> = store.list(Some(&dir)).try_collect().await.map_err(|e| io_error("list snapshot files", e))?;
                for meta in old {
                    store.delete(&meta.location).await.map_err(|e| io_error("remove an old snapshot file", e))?;
                }
                snapshot_object_name(&self.prefix, 0)
            }
            Some(seq) => snapshot_object_name(&self.prefix, seq),
            None => object_name(&self.prefix, batch.start_lsn.0),
        };
        let path = ObjectPath::parse(&name).map_err(|e| SinkError::permanent(format!("invalid object name \"{name}\": {e}")))?;
        store.put(&path, PutPayload::from(render(batch))).await.map_err(|e| io_error(&format!("write \"{name}\""), e))?;
        // object_store renames a temp file into place; make both durable.
        let full = self.dir.join(&name);
        let sync = |p: &std::path::Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync(&full).map_err(|e| io_error("fsync", e))?;
        if let Some(parent) = full.parent() {
            sync(parent).map_err(|e| io_error("fsync directory", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::connector::Record;
    use crate::engine::envelope::{Draft, Op, Payload};
    use crate::engine::lsn::Lsn;

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

    fn record(key: &str, value: Option<&str>) -> Record {
        Record {
            key: Some(key.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            stamp: std::sync::Arc::new(crate::engine::connector::TxnStamp { lsn: "0/10".into(), timestamp: "0.000".into() }),
            draft: Draft { key: None, payload: Payload::Tombstone, op: Op::Delete },
            commit_lsn: Lsn(16),
            commit_time_us: 0,
        }
    }

    #[test]
    fn renders_json_lines_and_rewrites_the_same_object_on_retry() {
        let dir = std::env::temp_dir().join(format!("pg_sink_file_test_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = ConnectorConfig {
            sink_name: "s1".into(),
            database: "db".into(),
            sink_uid: "db-1-0".into(),
            envelope: crate::engine::envelope::EnvelopeKind::Upsert,
            key_columns: vec![],
            options: [("path".to_string(), format!("file://{}", dir.display()))].into_iter().collect(),
        };
        let mut c = build(&cfg).unwrap();
        let mut batch = Batch { start_lsn: Lsn(0xAB), end_lsn: Lsn(0xFF), key_is_json: true, value_is_json: true, ..Default::default() };
        batch.records.push(record("{\"id\":1}", Some("{\"id\":1,\"v\":\"a\"}")));
        batch.records.push(record("{\"id\":2}", None));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(c.deliver(&batch, &mut NoSql)).unwrap();
        batch.records.truncate(1);
        rt.block_on(c.deliver(&batch, &mut NoSql)).unwrap();
        let text = std::fs::read_to_string(dir.join("s1/00000000000000AB.jsonl")).unwrap();
        assert_eq!(text, "{\"key\":{\"id\":1},\"value\":{\"id\":1,\"v\":\"a\"},\"headers\":{\"pg_sink-lsn\":\"0/10\",\"pg_sink-timestamp\":\"0.000\",\"pg_sink-op\":\"delete\"}}\n");
        assert_eq!(std::fs::read_dir(dir.join("s1")).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn binary_values_are_embedded_as_base64() {
        let mut r = record("k", None);
        r.value = Some(vec![0, 159, 146, 150]);
        let batch = Batch { records: vec![r], key_is_json: false, value_is_json: false, ..Default::default() };
        let line: serde_json::Value = serde_json::from_slice(&render(&batch)).unwrap();
        assert_eq!(line["key"], "k");
        assert_eq!(line["value"]["base64"], "AJ+Slg==");
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(parse_dir("out/dir").is_err());
        assert_eq!(parse_dir("file:///tmp/x").unwrap(), PathBuf::from("/tmp/x"));
    }
}
