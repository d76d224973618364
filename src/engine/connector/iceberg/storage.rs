//! Iceberg's file access for pg_sink: a local warehouse, whose files are fsynced
//! (and their directory) before a commit can name them, and object stores (S3)
//! through the same object_store clients as the object-store sinks. Iceberg
//! addresses files by URL (`file:///dir/f`, `s3://bucket/key`); this module maps
//! them to paths and keys.

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{FileIO, FileIOBuilder, FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory};
use iceberg::{Error, ErrorKind};
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

/// Where the files are: the local file system, or one bucket of an object store
/// (URLs start with `prefix`, e.g. `s3://bucket/`).
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct Files {
    #[serde(skip)]
    store: Option<Arc<dyn ObjectStore>>,
    prefix: String,
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Files").field("prefix", &self.prefix).field("object_store", &self.store.is_some()).finish()
    }
}

fn io_error(what: &str, path: &str, e: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Unexpected, format!("could not {what} {path}: {e}"))
}

impl Files {
    pub fn local() -> Self {
        Files::default()
    }

    /// Files in the bucket that URLs starting with `prefix` (`s3://bucket/`) name.
    pub fn object_store(store: Arc<dyn ObjectStore>, prefix: String) -> Self {
        Files { store: Some(store), prefix }
    }

    /// A FileIO over these files.
    pub fn file_io(self) -> FileIO {
        FileIOBuilder::new(self.factory()).build()
    }

    /// The storage factory of these files (for a catalog's tables).
    pub fn factory(self) -> Arc<dyn StorageFactory> {
        Arc::new(Factory(self))
    }

    fn local_path(path: &str) -> iceberg::Result<PathBuf> {
        let p = path.strip_prefix("file://").or_else(|| path.strip_prefix("file:")).unwrap_or(path);
        if p.contains("://") {
            return Err(Error::new(ErrorKind::DataInvalid, format!("{path} is not a local file"))
                .with_context("hint", "set warehouse.path to the table's bucket (s3://bucket/dir) with the s3.* options"));
        }
        Ok(PathBuf::from(if p.starts_with('/') { p.to_string() } else { format!("/{p}") }))
    }

    fn key(&self, path: &str) -> iceberg::Result<Key> {
        let rest = path.strip_prefix(&self.prefix).ok_or_else(|| {
            Error::new(ErrorKind::DataInvalid, format!("{path} is not in the warehouse's bucket ({})", self.prefix.trim_end_matches('/')))
        })?;
        Key::parse(rest).map_err(|e| Error::new(ErrorKind::DataInvalid, format!("invalid object key for {path}: {e}")))
    }

    fn store(&self) -> iceberg::Result<&Arc<dyn ObjectStore>> {
        self.store.as_ref().ok_or_else(|| Error::new(ErrorKind::Unexpected, "object store not configured"))
    }
}

/// Write a local file durably: its bytes and its directory entry.
fn write_local(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
#[typetag::serde(name = "pg_sink_files")]
impl Storage for Files {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        if self.store.is_none() {
            return Ok(Self::local_path(path)?.exists());
        }
        match self.store()?.head(&self.key(path)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error("look up", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        if self.store.is_none() {
            let m = std::fs::metadata(Self::local_path(path)?).map_err(|e| io_error("stat", path, e))?;
            return Ok(FileMetadata { size: m.len() });
        }
        let m = self.store()?.head(&self.key(path)?).await.map_err(|e| io_error("look up", path, e))?;
        Ok(FileMetadata { size: m.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        if self.store.is_none() {
            return std::fs::read(Self::local_path(path)?).map(Bytes::from).map_err(|e| io_error("read", path, e));
        }
        let got = self.store()?.get(&self.key(path)?).await.map_err(|e| io_error("read", path, e))?;
        got.bytes().await.map_err(|e| io_error("read", path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        if self.store.is_none() {
            let f = std::fs::File::open(Self::local_path(path)?).map_err(|e| io_error("open", path, e))?;
            return Ok(Box::new(LocalRead(Mutex::new(f))));
        }
        Ok(Box::new(StoreRead { store: self.store()?.clone(), key: self.key(path)? }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        if self.store.is_none() {
            return write_local(&Self::local_path(path)?, &bs).map_err(|e| io_error("write", path, e));
        }
        self.store()?.put(&self.key(path)?, PutPayload::from_bytes(bs)).await.map_err(|e| io_error("write", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let target = match &self.store {
            None => Target::Local(Self::local_path(path)?),
            Some(store) => Target::Store(store.clone(), self.key(path)?),
        };
        Ok(Box::new(BufferedWrite { target, buffer: Vec::new(), path: path.to_string() }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        if self.store.is_none() {
            return match std::fs::remove_file(Self::local_path(path)?) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("delete", path, e)),
                _ => Ok(()),
            };
        }
        match self.store()?.delete(&self.key(path)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error("delete", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        if self.store.is_none() {
            let p = Self::local_path(path)?;
            return match std::fs::remove_dir_all(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("delete", path, e)),
                _ => Ok(()),
            };
        }
        let store = self.store()?.clone();
        let keys: Vec<_> = store.list(Some(&self.key(path)?)).map_ok(|m| m.location).try_collect().await.map_err(|e| io_error("list", path, e))?;
        for k in keys {
            store.delete(&k).await.map_err(|e| io_error("delete", path, e))?;
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Hands FileIO the one storage it was made with.
#[derive(Debug, Serialize, Deserialize)]
struct Factory(Files);

#[typetag::serde(name = "pg_sink_files_factory")]
impl StorageFactory for Factory {
    fn build(&self, _: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.0.clone()))
    }
}

struct LocalRead(Mutex<std::fs::File>);

#[async_trait]
impl FileRead for LocalRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        let mut f = self.0.lock().map_err(|_| Error::new(ErrorKind::Unexpected, "file lock poisoned"))?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        f.seek(SeekFrom::Start(range.start)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| io_error("read", "a data file", e))?;
        Ok(Bytes::from(buf))
    }
}

struct StoreRead {
    store: Arc<dyn ObjectStore>,
    key: Key,
}

#[async_trait]
impl FileRead for StoreRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store.get_range(&self.key, range).await.map_err(|e| io_error("read", self.key.as_ref(), e))
    }
}

enum Target {
    Local(PathBuf),
    Store(Arc<dyn ObjectStore>, Key),
}

/// A file written whole at close: a data file is one batch's rows (bounded by
/// the batch size), put in one request or written and fsynced locally.
struct BufferedWrite {
    target: Target,
    buffer: Vec<u8>,
    path: String,
}

#[async_trait]
impl FileWrite for BufferedWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.buffer.extend_from_slice(&bs);
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let bytes = std::mem::take(&mut self.buffer);
        match &self.target {
            Target::Local(p) => write_local(p, &bytes).map_err(|e| io_error("write", &self.path, e)),
            Target::Store(store, key) => {
                store.put(key, PutPayload::from(bytes)).await.map_err(|e| io_error("write", &self.path, e))?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_files_round_trip_and_object_keys_stay_in_their_bucket() {
        let dir = std::env::temp_dir().join(format!("pg_sink_iceberg_files_{}", std::process::id()));
        let io = Files::local().file_io();
        let url = format!("file://{}/a/b/x.bin", dir.display());
        let mut w = io.new_output(&url).unwrap().writer().await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"iceberg")).await.unwrap();
        w.close().await.unwrap();
        let input = io.new_input(&url).unwrap();
        assert_eq!(input.read().await.unwrap(), Bytes::from_static(b"hello iceberg"));
        assert_eq!(input.reader().await.unwrap().read(6..13).await.unwrap(), Bytes::from_static(b"iceberg"));
        assert!(io.exists(format!("file:{}/a/b/x.bin", dir.display())).await.unwrap());
        io.delete_prefix(format!("file://{}", dir.display())).await.unwrap();
        assert!(!dir.exists());

        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let files = Files::object_store(mem, "s3://lake/".into());
        assert_eq!(files.key("s3://lake/ns/t/data/f.parquet").unwrap().as_ref(), "ns/t/data/f.parquet");
        assert!(files.key("s3://other/ns/t").is_err());
        let io = files.file_io();
        io.new_output("s3://lake/ns/t/m.json").unwrap().write(Bytes::from_static(b"{}")).await.unwrap();
        assert!(io.exists("s3://lake/ns/t/m.json").await.unwrap());
        assert_eq!(io.new_input("s3://lake/ns/t/m.json").unwrap().read().await.unwrap(), Bytes::from_static(b"{}"));
    }
}
