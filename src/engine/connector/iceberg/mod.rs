//! `iceberg`: append a sink's rows to an Apache Iceberg table (RisingWave's
//! `connector = 'iceberg'`). Each batch becomes Parquet data files written with
//! the table's field ids, committed as one Iceberg snapshot (a fast append) whose
//! summary carries the sink's identity and position (`pg-sink.sink-uid`,
//! `pg-sink.position`, `pg-sink.end-lsn`, like Materialize's frontier).
//!
//! Exactly-once: with the SQL catalog in this database (the default; [`catalog`])
//! the commit moves the catalog's pointer in the transaction that records the
//! sink's progress. With a REST catalog the pointer moves at the server first;
//! before each batch the table's snapshots are read back and a batch at or
//! before the position this sink last committed is skipped (Postgres crashed
//! after the commit, before recording it).
//!
//! Append-only: the sink's envelope must be `append-only` (with
//! `force_append_only` for a source that updates and deletes). Upserts need
//! equality-delete files committed as row deltas, which iceberg-rust 0.10 cannot
//! commit; they are refused with a clear error. TRUNCATE is not applied (the
//! table is a log of inserted rows). A column added at the source becomes a new
//! optional Iceberg field before the first row that has it; a dropped column is
//! NULL in later rows; one-dimensional arrays are lists. Warehouses: local directories (`file://` or an absolute
//! path; files fsynced before the commit names them) and S3 ([`storage`]). A
//! table pg_sink creates is unpartitioned unless `partition_by` says otherwise
//! ([`partition`]); rows are split by the table's own spec when written.

mod catalog;
mod partition;
pub mod rows;
mod storage;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::io::FileIO;
use iceberg::spec::DataFileFormat;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};

use super::{Batch, Connector, ConnectorConfig, ConnectorSpec, Position, SqlSession};
use crate::engine::change::Column;
use crate::engine::envelope::{EnvelopeKind, Payload, RowImage};
use crate::engine::error::{Result, SinkError};
use crate::engine::lsn::Lsn;
use super::jdbc::postgres::PgBackend;
use super::jdbc::{Dialect, Target};
use catalog::{iceberg_error, CatalogDb, SqlHere, Staged};
use storage::Files;

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "iceberg",
    options: &[
        ("catalog.type", "sql (default: Iceberg's JDBC catalog tables in this database; jdbc is an alias) or rest"),
        ("catalog.uri", "the REST catalog's URL (catalog.type = rest), or a PostgreSQL database holding the SQL catalog (jdbc:postgresql://host:port/db; default: this database)"),
        ("catalog.jdbc.user", "the user for a SQL catalog in another database"),
        ("catalog.jdbc.password", "its password (a secret)"),
        ("catalog.name", "the catalog's name (the catalog_name column of the SQL catalog; default pg_sink)"),
        ("catalog.schema", "the schema of this database holding the SQL catalog's tables (default public)"),
        ("warehouse.path", "where tables pg_sink creates live: file:///dir, /dir or s3://bucket/dir (required with the SQL catalog)"),
        ("s3.endpoint", "S3-compatible service URL (a private endpoint, an emulator)"),
        ("s3.region", "AWS region of the warehouse's bucket (default us-east-1)"),
        ("s3.access.key", "access key (with s3.secret.key)"),
        ("s3.secret.key", "secret key (a secret)"),
        ("s3.path.style.access", "address the bucket in the path, not the host name (default true)"),
        ("database.name", "the Iceberg namespace (default public)"),
        ("table.name", "the Iceberg table (default: the sink's name)"),
        ("create_table_if_not_exists", "create the table from the source's columns when the catalog lacks it (default true)"),
        ("partition_by", "the partition spec of a table pg_sink creates: e.g. 'region, day(created_at), bucket(16, id), truncate(4, name)'"),
        ("validate", "check at creation that the catalog answers and the warehouse can be written (default true)"),
    ],
    required: &[],
    option_prefixes: &[],
    accepts_unchanged_toast: false,
    needs_json: false,
    applies_rows: true,
    build,
    check_connection: None,
};

/// Snapshot summary properties naming what a commit holds.
const PROP_SINK: &str = "pg-sink.sink-uid";
const PROP_POSITION: &str = "pg-sink.position";
const PROP_END_LSN: &str = "pg-sink.end-lsn";
const PROP_SINK_NAME: &str = "pg-sink.sink";

enum Where {
    Sql(SqlHere),
    Rest { uri: String, warehouse: Option<String>, catalog: Option<Arc<dyn Catalog>> },
}

pub struct IcebergConnector {
    place: Where,
    ident: TableIdent,
    warehouse: Option<String>,
    create: bool,
    partition_by: Vec<partition::PartitionField>,
    validate: bool,
    sink_uid: String,
    sink_name: String,
    files: Files,
    file_io: FileIO,
    /// The table as last read or committed (the SQL catalog reuses it while its
    /// pointer is unchanged).
    table: Option<Table>,
    /// The connection to a SQL catalog in another database, once opened.
    remote_db: Option<PgBackend>,
    /// The SQL catalog's tables were found in place (not just made).
    catalog_tables_seen: bool,
}

/// The SQL catalog's database for one call: this one, or the remote one.
enum Db<'a> {
    Here(catalog::Here<'a>),
    Remote(&'a mut PgBackend),
}

impl Db<'_> {
    fn get(&mut self) -> &mut dyn CatalogDb {
        match self {
            Db::Here(h) => h,
            Db::Remote(r) => *r,
        }
    }
}

async fn sql_db<'a>(remote: &'a mut Option<PgBackend>, target: &Option<Target>, sql: &'a mut dyn SqlSession) -> Result<Db<'a>> {
    let Some(t) = target else { return Ok(Db::Here(catalog::Here(sql))) };
    if remote.is_none() {
        *remote = Some(PgBackend::connect(t).await?);
    }
    Ok(Db::Remote(remote.as_mut().expect("connected above")))
}

fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    if cfg.envelope != EnvelopeKind::AppendOnly {
        return Err(SinkError::config(format!("the iceberg connector writes append-only tables, not the {} envelope", cfg.envelope.as_str()))
            .detail("Upserts need equality deletes committed as row deltas, which this version of the Iceberg library cannot commit.")
            .hint("Create the sink with type => 'append-only' (and force_append_only => true if the source updates or deletes rows)."));
    }
    let (warehouse, files) = match cfg.get("warehouse.path") {
        None => (None, Files::local()),
        Some(raw) => {
            let (url, files) = warehouse(raw, cfg)?;
            (Some(url), files)
        }
    };
    if warehouse.as_deref().is_some_and(|w| w.starts_with("file:")) || warehouse.is_none() {
        if let Some(o) = ["s3.endpoint", "s3.region", "s3.access.key", "s3.secret.key", "s3.path.style.access"].into_iter().find(|o| cfg.get(o).is_some()) {
            return Err(SinkError::config(format!("option \"{o}\" applies to an S3 warehouse only")).hint("Give warehouse.path = 's3://bucket/dir', or drop the s3.* options."));
        }
    }
    let place = match cfg.get("catalog.type").map(str::to_ascii_lowercase).as_deref() {
        None | Some("sql") | Some("jdbc") => {
            let remote = cfg.get("catalog.uri").map(|uri| remote_catalog(uri, cfg)).transpose()?;
            if remote.is_none() && (cfg.get("catalog.jdbc.user").is_some() || cfg.get("catalog.jdbc.password").is_some()) {
                return Err(SinkError::config("catalog.jdbc.user and catalog.jdbc.password need catalog.uri (a catalog in another database)")
                    .hint("Give catalog.uri = 'jdbc:postgresql://host:port/database', or drop them (the default catalog is in this database)."));
            }
            if warehouse.is_none() {
                return Err(SinkError::config("the iceberg connector's SQL catalog requires option \"warehouse.path\"")
                    .hint("Give the directory tables are created in, e.g. \"warehouse.path\": \"file:///var/lib/iceberg\"."));
            }
            let schema = cfg.get("catalog.schema").map(str::to_string).or_else(|| remote.as_ref().and_then(|t| t.schema.clone()));
            Where::Sql(SqlHere {
                schema: schema.unwrap_or_else(|| "public".into()),
                name: cfg.get("catalog.name").unwrap_or("pg_sink").to_string(),
                remote,
            })
        }
        Some("rest") => {
            let uri = cfg.get("catalog.uri").ok_or_else(|| {
                SinkError::config("catalog.type = 'rest' requires option \"catalog.uri\"").hint("Give the REST catalog's URL, e.g. http://127.0.0.1:8181.")
            })?;
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                return Err(SinkError::config(format!("invalid value for option \"catalog.uri\": \"{uri}\"")).hint("Give an http:// or https:// URL."));
            }
            if cfg.get("catalog.schema").is_some() {
                return Err(SinkError::config("catalog.schema applies to the SQL catalog only").hint("Drop catalog.schema with catalog.type = 'rest'."));
            }
            Where::Rest { uri: uri.trim_end_matches('/').to_string(), warehouse: warehouse.clone(), catalog: None }
        }
        Some(other) => {
            return Err(SinkError::config(format!("invalid value for option \"catalog.type\": \"{other}\"")).hint("Use sql (the default) or rest."))
        }
    };
    let partition_by = cfg.get("partition_by").map(partition::parse).transpose()?.unwrap_or_default();
    // At creation the source's columns are known: name the missing one now.
    if let Some(f) = partition_by.iter().find(|f| !cfg.columns.is_empty() && !cfg.columns.iter().any(|(c, _)| *c == f.column)) {
        return Err(SinkError::config(format!("partition_by names column \"{}\", which the source does not have", f.column))
            .hint("Partition by the source's columns."));
    }
    let namespace = cfg.get("database.name").unwrap_or("public");
    let table = cfg.get("table.name").unwrap_or(&cfg.sink_name);
    let ns = NamespaceIdent::from_strs(namespace.split('.'))
        .map_err(|e| SinkError::config(format!("invalid value for option \"database.name\": \"{namespace}\": {e}")))?;
    if table.is_empty() || namespace.split('.').any(str::is_empty) {
        return Err(SinkError::config("the Iceberg namespace and table names must not be empty").hint("Set database.name and table.name."));
    }
    Ok(Box::new(IcebergConnector {
        place,
        ident: TableIdent::new(ns, table.to_string()),
        warehouse,
        create: cfg.flag("create_table_if_not_exists", true)?,
        partition_by,
        validate: cfg.flag("validate", true)?,
        sink_uid: cfg.sink_uid.clone(),
        sink_name: cfg.sink_name.clone(),
        file_io: files.clone().file_io(),
        files,
        table: None,
        remote_db: None,
        catalog_tables_seen: false,
    }))
}

fn require_create(create: bool, ident: &TableIdent) -> Result<()> {
    if create {
        return Ok(());
    }
    Err(SinkError::permanent(format!("Iceberg table {ident} does not exist"))
        .hint("Create it, or set create_table_if_not_exists = true to have pg_sink create it from the source's columns."))
}

/// A SQL catalog in another PostgreSQL database: `catalog.uri` as a JDBC or
/// PostgreSQL URL, with RisingWave's `catalog.jdbc.user` / `catalog.jdbc.password`.
fn remote_catalog(uri: &str, cfg: &ConnectorConfig) -> Result<Target> {
    let mut options = std::collections::BTreeMap::from([("jdbc.url".to_string(), uri.to_string()), ("table.name".to_string(), "iceberg_tables".to_string())]);
    for (ours, theirs) in [("catalog.jdbc.user", "user"), ("catalog.jdbc.password", "password"), ("timeout_ms", "timeout_ms")] {
        if let Some(v) = cfg.get(ours) {
            options.insert(theirs.to_string(), v.to_string());
        }
    }
    let target = super::jdbc::parse_target(&ConnectorConfig { options, ..cfg.clone() })
        .map_err(|e| SinkError::config(format!("invalid value for option \"catalog.uri\": {}", e.message)).hint("Use jdbc:postgresql://host:port/database (or postgresql://...)."))?;
    if target.dialect != Dialect::Postgres {
        return Err(SinkError::config(format!("catalog.uri \"{uri}\" is not a PostgreSQL database"))
            .detail("The SQL catalog is kept in PostgreSQL: this database by default, or another one.")
            .hint("Use jdbc:postgresql://host:port/database, or drop catalog.uri."));
    }
    Ok(target)
}

/// The warehouse's URL (`file:///dir` or `s3://bucket/dir`, no trailing slash)
/// and its files. `file:/dir` and `/dir` are local directories too.
fn warehouse(raw: &str, cfg: &ConnectorConfig) -> Result<(String, Files)> {
    let bad = |detail: String| {
        SinkError::config(format!("invalid value for option \"warehouse.path\": \"{raw}\""))
            .detail(detail)
            .hint("Use file:///absolute/dir, /absolute/dir or s3://bucket/dir.")
    };
    if let Some(rest) = raw.strip_prefix("s3://").or_else(|| raw.strip_prefix("s3a://")) {
        let (bucket, dir) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("The S3 location names no bucket.".into()));
        }
        let mut options = std::collections::BTreeMap::new();
        for (ours, theirs) in [
            ("s3.endpoint", "endpoint"),
            ("s3.region", "s3_region"),
            ("s3.access.key", "aws.credentials.access_key_id"),
            ("s3.secret.key", "aws.credentials.secret_access_key"),
        ] {
            if let Some(v) = cfg.get(ours) {
                options.insert(theirs.to_string(), v.to_string());
            }
        }
        let store_cfg = ConnectorConfig { options, ..cfg.clone() };
        let location = super::object::store::Location { provider: super::object::store::Provider::S3, bucket: bucket.to_string(), prefix: String::new(), dir: None };
        let store = super::object::store::build_with(&location, &store_cfg, !cfg.flag("s3.path.style.access", true)?)?;
        let dir = dir.trim_matches('/');
        let url = if dir.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{dir}") };
        return Ok((url, Files::object_store(store, format!("s3://{bucket}/"))));
    }
    let path = raw.strip_prefix("file://").or_else(|| raw.strip_prefix("file:")).unwrap_or(raw);
    if !path.starts_with('/') {
        return Err(bad(match raw.split_once("://") {
            Some((s, _)) => format!("Warehouses on {s} are not supported; local directories and S3 are."),
            None => "A warehouse path must be absolute.".to_string(),
        }));
    }
    Ok((format!("file://{}", path.trim_end_matches('/')), Files::local()))
}

/// The position this sink committed last, from the table's snapshots (the
/// newest one it wrote, following parents past other writers' snapshots).
pub fn committed_position(table: &Table, sink_uid: &str) -> Option<Position> {
    let meta = table.metadata();
    let mut snap = meta.current_snapshot().cloned();
    while let Some(s) = snap {
        let props = &s.summary().additional_properties;
        if props.get(PROP_SINK).map(String::as_str) == Some(sink_uid) {
            return props.get(PROP_POSITION).and_then(|p| parse_position(p));
        }
        snap = s.parent_snapshot_id().and_then(|id| meta.snapshot_by_id(id)).cloned();
    }
    None
}

fn format_position(p: Position) -> String {
    format!("{}:{}:{}", p.lsn.0, p.part, p.chunk)
}

fn parse_position(s: &str) -> Option<Position> {
    let mut it = s.split(':');
    let lsn = it.next()?.parse().ok()?;
    let part = it.next()?.parse().ok()?;
    let chunk = it.next()?.parse().ok()?;
    Some(Position { lsn: Lsn(lsn), part, chunk })
}

impl IcebergConnector {
    async fn rest(&mut self) -> Result<Arc<dyn Catalog>> {
        let Where::Rest { uri, warehouse, catalog } = &mut self.place else { unreachable!("rest() is only called for a REST catalog") };
        if let Some(c) = catalog {
            return Ok(c.clone());
        }
        let mut props = HashMap::from([(iceberg_catalog_rest::REST_CATALOG_PROP_URI.to_string(), uri.clone())]);
        if let Some(w) = warehouse {
            props.insert(iceberg_catalog_rest::REST_CATALOG_PROP_WAREHOUSE.to_string(), w.clone());
        }
        let built = iceberg_catalog_rest::RestCatalogBuilder::default()
            .with_storage_factory(self.files.clone().factory())
            .load("rest", props)
            .await
            .map_err(|e| iceberg_error(&format!("could not reach the Iceberg REST catalog at {uri}"), e))?;
        let c: Arc<dyn Catalog> = Arc::new(built);
        *catalog = Some(c.clone());
        Ok(c)
    }

    /// The table as the catalog has it now, created from `columns` if missing.
    async fn load(&mut self, sql: &mut dyn SqlSession, columns: &[Column]) -> Result<Table> {
        let ident = self.ident.clone();
        match &self.place {
            Where::Sql(here) => {
                let mut db = sql_db(&mut self.remote_db, &here.remote, sql).await?;
                let db = db.get();
                if !self.catalog_tables_seen {
                    // Once seen they stay (made when missing, in a step that may
                    // still roll back: only their presence is remembered).
                    self.catalog_tables_seen = here.ensure_tables(db).await?;
                }
                match here.location(db, &ident).await? {
                    Some(loc) => {
                        if let Some(t) = self.table.as_ref().filter(|t| t.metadata_location() == Some(loc.as_str())) {
                            return Ok(t.clone());
                        }
                        catalog::read_table(&self.file_io, &ident, &loc).await
                    }
                    None => {
                        require_create(self.create, &ident)?;
                        let warehouse = self.warehouse.clone().unwrap_or_default();
                        let location = format!("{warehouse}/{}/{}", ident.namespace().join("/"), ident.name());
                        let schema = rows::schema_of(columns)?;
                        let spec = partition::spec(&self.partition_by, &schema)?;
                        let creation = TableCreation::builder().name(ident.name().to_string()).location(location.clone()).schema(schema).partition_spec(spec).build();
                        let table = catalog::new_table(&self.file_io, &ident, &location, creation).await?;
                        here.insert(db, &ident, table.metadata_location().unwrap_or_default()).await?;
                        Ok(table)
                    }
                }
            }
            Where::Rest { .. } => {
                let cat = self.rest().await?;
                if cat.table_exists(&ident).await.map_err(|e| iceberg_error("could not look up the Iceberg table", e))? {
                    return cat.load_table(&ident).await.map_err(|e| iceberg_error("could not load the Iceberg table", e));
                }
                self.require_create()?;
                let ns = ident.namespace().clone();
                if !cat.namespace_exists(&ns).await.map_err(|e| iceberg_error("could not look up the Iceberg namespace", e))? {
                    cat.create_namespace(&ns, HashMap::new()).await.map_err(|e| iceberg_error("could not create the Iceberg namespace", e))?;
                }
                let schema = rows::schema_of(columns)?;
                let spec = partition::spec(&self.partition_by, &schema)?;
                let creation = TableCreation::builder().name(ident.name().to_string()).schema(schema).partition_spec(spec).build();
                cat.create_table(&ns, creation).await.map_err(|e| iceberg_error("could not create the Iceberg table", e))
            }
        }
    }

    fn require_create(&self) -> Result<()> {
        require_create(self.create, &self.ident)
    }

    /// Commit `tx` (made on `base`) and return the table after it.
    async fn commit(&mut self, tx: Transaction, base: &Table, sql: &mut dyn SqlSession) -> Result<Table> {
        match &self.place {
            Where::Sql(here) => {
                let staged = Staged::new(base.clone());
                tx.commit(&staged).await.map_err(|e| iceberg_error("could not commit to the Iceberg table", e))?;
                let table = staged.take().ok_or_else(|| SinkError::transient("the Iceberg commit produced no table"))?;
                let mut db = sql_db(&mut self.remote_db, &here.remote, sql).await?;
                here.swap(db.get(), &self.ident, base.metadata_location().unwrap_or_default(), table.metadata_location().unwrap_or_default()).await?;
                Ok(table)
            }
            Where::Rest { .. } => {
                let cat = self.rest().await?;
                tx.commit(cat.as_ref()).await.map_err(|e| iceberg_error("could not commit to the Iceberg table", e))
            }
        }
    }

    /// Add the rows' columns the table lacks, as optional fields.
    async fn evolve(&mut self, table: Table, rows: &[&RowImage], sql: &mut dyn SqlSession) -> Result<Table> {
        let schema = table.metadata().current_schema().clone();
        let mut missing: Vec<&Column> = vec![];
        for row in rows {
            for c in &row.relation.columns {
                if schema.field_by_name(&c.name).is_none() && !missing.iter().any(|m| m.name == c.name) {
                    missing.push(c);
                }
            }
        }
        if missing.is_empty() {
            return Ok(table);
        }
        let tx = Transaction::new(&table);
        let mut action = tx.update_schema();
        for c in &missing {
            action = action.add_column(iceberg::transaction::AddColumn::optional(&c.name, rows::iceberg_type(c, 0)));
        }
        let tx = action.apply(tx).map_err(|e| iceberg_error("could not add columns to the Iceberg table", e))?;
        self.commit(tx, &table, sql).await
    }

    /// Write the rows as Parquet data files of the table.
    async fn write(&self, table: &Table, rows: &[&RowImage], batch: &Batch) -> Result<Vec<iceberg::spec::DataFile>> {
        let meta = table.metadata();
        let arrow = rows::arrow_batch(meta.current_schema(), rows)?;
        let err = |e| iceberg_error("could not write an Iceberg data file", e);
        let locations = DefaultLocationGenerator::new(meta).map_err(err)?;
        // Unique per attempt: a batch tried again never overwrites a file an
        // earlier commit may hold.
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let names = DefaultFileNameGenerator::new(
            format!("pg-sink-{}-{}", batch.start_lsn.0, format_position(batch.position()).replace(':', "-")),
            Some(format!("{nonce:x}")),
            DataFileFormat::Parquet,
        );
        let props = parquet::file::properties::WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build();
        let parquet = ParquetWriterBuilder::new(props, meta.current_schema().clone());
        let rolling = RollingFileWriterBuilder::new_with_default_file_size(parquet, table.file_io().clone(), locations, names);
        let builder = DataFileWriterBuilder::new(rolling);
        let spec = meta.default_partition_spec();
        let parts = if spec.is_unpartitioned() {
            vec![(None, arrow)]
        } else {
            let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(meta.current_schema().clone(), spec.clone()).map_err(err)?;
            splitter.split(&arrow).map_err(err)?.into_iter().map(|(key, part)| (Some(key), part)).collect()
        };
        let mut files = Vec::new();
        for (key, part) in parts {
            let mut writer = builder.build(key).await.map_err(err)?;
            writer.write(part).await.map_err(err)?;
            files.extend(writer.close().await.map_err(err)?);
        }
        Ok(files)
    }
}

#[async_trait(?Send)]
impl Connector for IcebergConnector {
    async fn check(&mut self) -> Result<()> {
        if !self.validate {
            return Ok(());
        }
        if let Some(w) = &self.warehouse {
            let probe = format!("{w}/.pg_sink_probe_{}", std::process::id());
            let written = match self.file_io.new_output(&probe) {
                Ok(out) => out.write(bytes::Bytes::new()).await,
                Err(e) => Err(e),
            };
            written.and(self.file_io.delete(&probe).await).map_err(|e| {
                SinkError::config(format!("cannot write the Iceberg warehouse \"{w}\": {e}"))
                    .hint("Check the warehouse's location, credentials and permissions, or pass validate => false.")
            })?;
        }
        if let Where::Rest { uri, .. } = &self.place {
            let uri = uri.clone();
            let cat = self.rest().await?;
            cat.list_namespaces(None)
                .await
                .map_err(|e| iceberg_error(&format!("could not reach the Iceberg REST catalog at {uri}"), e).hint("Check catalog.uri, or pass validate => false."))?;
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &Batch, sql: &mut dyn SqlSession) -> Result<()> {
        let delivered = self.deliver_batch(batch, sql).await;
        if let Err(e) = &delivered {
            // Look at the catalog's tables again next time; a lost connection
            // to a remote catalog is opened again.
            self.catalog_tables_seen = false;
            if e.is_transient() {
                self.remote_db = None;
            }
        }
        delivered
    }
}

impl IcebergConnector {
    async fn deliver_batch(&mut self, batch: &Batch, sql: &mut dyn SqlSession) -> Result<()> {
        let mut rows: Vec<&RowImage> = Vec::with_capacity(batch.records.len());
        // Each row's record index, for naming refused records.
        let mut at: Vec<usize> = Vec::with_capacity(batch.records.len());
        for (i, r) in batch.records.iter().enumerate() {
            match &r.draft.payload {
                Payload::Row(row) => {
                    rows.push(row);
                    at.push(i);
                }
                // The table is a log of inserted rows; schema changes arrive with the rows.
                Payload::Truncate(_) | Payload::Schema(_) | Payload::Transaction(_) => {}
                Payload::Tombstone | Payload::Debezium(_) => {
                    return Err(SinkError::permanent("an Iceberg append-only table cannot apply a delete").hint("Set force_append_only => true."))
                }
                Payload::Message(_) => {
                    return Err(SinkError::config("logical decoding messages cannot be written to an Iceberg table").hint("Drop the messages option."))
                }
            }
        }
        let Some(first) = rows.first() else { return Ok(()) };
        let table = self.load(sql, &first.relation.columns).await?;
        if committed_position(&table, &self.sink_uid).is_some_and(|c| batch.position() <= c) {
            // Committed before a crash that lost the sink's own record of it.
            self.table = Some(table);
            return Ok(());
        }
        let table = self.evolve(table, &rows, sql).await?;
        let files = self.write(&table, &rows, batch).await.map_err(|mut e| {
            // Nothing was written: the refused rows can be left out and the rest sent again.
            e.refused = e.refused.iter().map(|&k| at[k]).collect();
            e
        })?;
        let summary = HashMap::from([
            (PROP_SINK.to_string(), self.sink_uid.clone()),
            (PROP_SINK_NAME.to_string(), self.sink_name.clone()),
            (PROP_POSITION.to_string(), format_position(batch.position())),
            (PROP_END_LSN.to_string(), batch.end_lsn.to_string()),
        ]);
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .add_data_files(files)
            .set_snapshot_properties(summary)
            .apply(tx)
            .map_err(|e| iceberg_error("could not prepare the Iceberg commit", e))?;
        let table = self.commit(tx, &table, sql).await?;
        self.table = Some(table);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> ConnectorConfig {
        let mut c = ConnectorConfig::for_test(pairs);
        c.envelope = EnvelopeKind::AppendOnly;
        c
    }

    #[test]
    fn options_are_checked_with_clear_errors() {
        let err = |c: ConnectorConfig| build(&c).err().expect("refused").to_string();
        let mut upsert = cfg(&[("warehouse.path", "/w")]);
        upsert.envelope = EnvelopeKind::Upsert;
        assert!(err(upsert).contains("append-only"));
        assert!(err(cfg(&[])).contains("warehouse.path"));
        assert!(err(cfg(&[("warehouse.path", "gs://b/w")])).contains("warehouse.path"));
        assert!(err(cfg(&[("warehouse.path", "s3:///w")])).contains("warehouse.path"));
        assert!(err(cfg(&[("warehouse.path", "/w"), ("s3.region", "eu-west-1")])).contains("s3.region"));
        assert!(build(&cfg(&[("warehouse.path", "s3://b/w/"), ("s3.endpoint", "http://127.0.0.1:9"), ("s3.access.key", "k"), ("s3.secret.key", "s")])).is_ok());
        assert!(err(cfg(&[("warehouse.path", "rel/dir")])).contains("warehouse.path"));
        assert!(err(cfg(&[("warehouse.path", "/w"), ("catalog.uri", "jdbc:mysql://x/db")])).contains("catalog.uri"));
        assert!(err(cfg(&[("warehouse.path", "/w"), ("catalog.uri", "jdbc:postgresql://x")])).contains("catalog.uri"));
        assert!(err(cfg(&[("warehouse.path", "/w"), ("catalog.jdbc.user", "u")])).contains("catalog.uri"));
        assert!(build(&cfg(&[("warehouse.path", "/w"), ("catalog.uri", "jdbc:postgresql://h:5433/lake"), ("catalog.jdbc.user", "u")])).is_ok());
        assert!(err(cfg(&[("catalog.type", "rest")])).contains("catalog.uri"));
        assert!(err(cfg(&[("catalog.type", "rest"), ("catalog.uri", "ftp://x")])).contains("catalog.uri"));
        assert!(err(cfg(&[("catalog.type", "glue"), ("warehouse.path", "/w")])).contains("catalog.type"));
        assert!(err(cfg(&[("warehouse.path", "/w"), ("database.name", "a..b")])).contains("empty"));
        assert!(err(cfg(&[("warehouse.path", "/w"), ("partition_by", "day(")])).contains("partition_by"));
        assert!(build(&cfg(&[("warehouse.path", "file:///w/"), ("database.name", "lake"), ("table.name", "orders")])).is_ok());
        assert!(build(&cfg(&[("catalog.type", "rest"), ("catalog.uri", "http://127.0.0.1:8181/")])).is_ok());
        assert_eq!(warehouse("file:/w/x/", &cfg(&[])).unwrap().0, "file:///w/x");
        assert_eq!(warehouse("s3a://b/w/x/", &cfg(&[])).unwrap().0, "s3://b/w/x");
    }

    #[test]
    fn positions_round_trip_through_the_summary_text() {
        let p = Position { lsn: Lsn(0x1_6B3F_28A0), part: 2, chunk: 7 };
        assert_eq!(parse_position(&format_position(p)), Some(p));
        assert_eq!(parse_position("12"), None);
    }
}
