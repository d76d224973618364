//! Where an Iceberg table's current metadata file is named, and how a commit
//! moves that name on.
//!
//! - **`sql` in this database** (the default): the tables of Iceberg's JDBC
//!   catalog (`iceberg_tables`, `iceberg_namespace_properties`; what pyiceberg's
//!   `SqlCatalog`, Spark's `JdbcCatalog` and iceberg-rust's SQL catalog read),
//!   made when missing. A commit is a compare-and-set `UPDATE` of the table's
//!   `metadata_location` run through the step's own transaction, so it is durable
//!   exactly when the sink's progress is: exactly-once without reading anything
//!   back.
//! - **`sql` in another PostgreSQL database** (`catalog.uri`): the same tables and
//!   statements over the jdbc connector's client; the commit is the target's, and
//!   exactly-once comes from the snapshot summaries, as for REST.
//! - **`rest`**: an Iceberg REST catalog; the server swaps the pointer. The
//!   snapshot's summary carries the sink's position, read back after a restart.
//!
//! For the SQL catalog, iceberg-rust's `Transaction` is committed against
//! [`Staged`], which hands it the table as loaded and writes the new metadata
//! file; the pointer is then moved through SQL.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{Catalog, MetadataLocation, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent};

use super::super::jdbc::postgres::PgBackend;
use super::super::jdbc::Backend;
use super::super::SqlSession;
use crate::engine::connector::table::quote_ident;
use crate::engine::error::{Result, SinkError};

pub(super) fn iceberg_error(what: &str, e: iceberg::Error) -> SinkError {
    use iceberg::ErrorKind as K;
    let message = format!("{what}: {e}");
    match e.kind() {
        K::CatalogCommitConflicts => SinkError::transient(message).hint("Another writer committed to the table first; the batch is tried again."),
        K::DataInvalid | K::FeatureUnsupported | K::PreconditionFailed | K::NamespaceNotFound | K::TableNotFound => SinkError::permanent(message),
        _ if e.retryable() => SinkError::transient(message),
        // Storage and network failures come back as Unexpected: try again.
        _ => SinkError::transient(message),
    }
}

/// Where the SQL catalog's statements run: this database's step transaction,
/// or another PostgreSQL database.
#[async_trait(?Send)]
pub(super) trait CatalogDb {
    async fn execute(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64>;
    /// The first column of the first row, if any.
    async fn query_one(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<String>>;
}

/// This database, through the step's SQL session.
pub(super) struct Here<'a>(pub &'a mut dyn SqlSession);

#[async_trait(?Send)]
impl CatalogDb for Here<'_> {
    async fn execute(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64> {
        self.0.execute(sql, params)
    }
    async fn query_one(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<String>> {
        Ok(self.0.query(sql, params)?.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
    }
}

#[async_trait(?Send)]
impl CatalogDb for PgBackend {
    async fn execute(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64> {
        let owned: Vec<Option<String>> = params.iter().map(|p| p.map(str::to_string)).collect();
        Backend::execute(self, sql, &owned).await
    }
    async fn query_one(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<String>> {
        let owned: Vec<Option<String>> = params.iter().map(|p| p.map(str::to_string)).collect();
        Backend::query_one(self, sql, &owned).await
    }
}

/// The SQL catalog's tables in `schema`, of this database or of `remote`.
pub(super) struct SqlHere {
    pub schema: String,
    pub name: String,
    pub remote: Option<super::super::jdbc::Target>,
}

impl SqlHere {
    fn tables(&self) -> String {
        format!("{}.iceberg_tables", quote_ident(&self.schema))
    }

    fn namespaces(&self) -> String {
        format!("{}.iceberg_namespace_properties", quote_ident(&self.schema))
    }

    /// Make the catalog's two tables if they are missing (the JDBC catalog's
    /// layout, `iceberg_type` included so that Java's catalog reads them).
    /// Whether they were there already.
    pub async fn ensure_tables(&self, sql: &mut dyn CatalogDb) -> Result<bool> {
        let present = sql
            .query_one("SELECT (to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL)::text", &[Some(&self.tables()), Some(&self.namespaces())])
            .await?;
        if present.as_deref() == Some("true") {
            return Ok(true);
        }
        sql.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (catalog_name varchar(255) NOT NULL, table_namespace varchar(255) NOT NULL, \
                 table_name varchar(255) NOT NULL, metadata_location varchar(1000), previous_metadata_location varchar(1000), \
                 iceberg_type varchar(5), PRIMARY KEY (catalog_name, table_namespace, table_name))",
                self.tables()
            ),
            &[],
        )
        .await?;
        sql.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (catalog_name varchar(255) NOT NULL, namespace varchar(255) NOT NULL, \
                 property_key varchar(255) NOT NULL, property_value varchar(1000), PRIMARY KEY (catalog_name, namespace, property_key))",
                self.namespaces()
            ),
            &[],
        )
        .await?;
        Ok(false)
    }

    /// The table's current metadata location, if the catalog has the table.
    pub async fn location(&self, sql: &mut dyn CatalogDb, ident: &TableIdent) -> Result<Option<String>> {
        sql.query_one(
            &format!("SELECT metadata_location FROM {} WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3", self.tables()),
            &[Some(&self.name), Some(&ident.namespace().join(".")), Some(ident.name())],
        )
        .await
    }

    /// Record a new table (and its namespace, if new).
    pub async fn insert(&self, sql: &mut dyn CatalogDb, ident: &TableIdent, location: &str) -> Result<()> {
        let namespace = ident.namespace().join(".");
        sql.execute(
            &format!(
                "INSERT INTO {0} (catalog_name, namespace, property_key, property_value) SELECT $1, $2, 'exists', 'true' \
                 WHERE NOT EXISTS (SELECT 1 FROM {0} WHERE catalog_name = $1 AND namespace = $2)",
                self.namespaces()
            ),
            &[Some(&self.name), Some(&namespace)],
        )
        .await?;
        sql.execute(
            &format!("INSERT INTO {} (catalog_name, table_namespace, table_name, metadata_location) VALUES ($1, $2, $3, $4)", self.tables()),
            &[Some(&self.name), Some(&namespace), Some(ident.name()), Some(location)],
        )
        .await?;
        Ok(())
    }

    /// Move the table's pointer from `from` to `to`; a pointer moved meanwhile by
    /// another writer is a conflict (the batch is tried again on the new state).
    pub async fn swap(&self, sql: &mut dyn CatalogDb, ident: &TableIdent, from: &str, to: &str) -> Result<()> {
        let n = sql.execute(
            &format!(
                "UPDATE {} SET metadata_location = $4, previous_metadata_location = $5 \
                  WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 AND metadata_location = $5",
                self.tables()
            ),
            &[Some(&self.name), Some(&ident.namespace().join(".")), Some(ident.name()), Some(to), Some(from)],
        )
        .await?;
        if n == 0 {
            return Err(SinkError::transient(format!("Iceberg table {ident} was changed by another writer during the commit"))
                .hint("The batch is tried again on the table's new state."));
        }
        Ok(())
    }
}

/// A table read from its metadata file.
pub(super) async fn read_table(file_io: &FileIO, ident: &TableIdent, location: &str) -> Result<Table> {
    let metadata = TableMetadata::read_from(file_io, location).await.map_err(|e| iceberg_error("could not read the Iceberg table's metadata", e))?;
    build_table(file_io, ident, location, metadata)
}

fn build_table(file_io: &FileIO, ident: &TableIdent, location: &str, metadata: TableMetadata) -> Result<Table> {
    let runtime = iceberg::Runtime::try_current().map_err(|e| iceberg_error("no async runtime", e))?;
    Table::builder()
        .file_io(file_io.clone())
        .metadata_location(location)
        .identifier(ident.clone())
        .metadata(metadata)
        .runtime(runtime)
        .build()
        .map_err(|e| iceberg_error("could not open the Iceberg table", e))
}

/// Write a new table's first metadata file under `table_location`; returns the
/// table (its metadata location not yet in any catalog).
pub(super) async fn new_table(file_io: &FileIO, ident: &TableIdent, table_location: &str, creation: TableCreation) -> Result<Table> {
    let metadata = TableMetadataBuilder::from_table_creation(creation)
        .and_then(|b| b.build())
        .map_err(|e| iceberg_error("could not make the Iceberg table's metadata", e))?
        .metadata;
    let location = MetadataLocation::new_with_metadata(table_location, &metadata);
    metadata.write_to(file_io, &location).await.map_err(|e| iceberg_error("could not write the Iceberg table's metadata", e))?;
    build_table(file_io, ident, &location.to_string(), metadata)
}

/// A catalog for one commit: it hands the transaction the table as loaded and,
/// on commit, writes the new metadata file and keeps the committed table; the
/// caller moves the catalog's pointer.
#[derive(Debug)]
pub(super) struct Staged {
    pub current: Table,
    pub committed: Mutex<Option<Table>>,
}

impl Staged {
    pub fn new(current: Table) -> Self {
        Staged { current, committed: Mutex::new(None) }
    }

    pub fn take(&self) -> Option<Table> {
        self.committed.lock().ok().and_then(|mut c| c.take())
    }
}

fn unsupported<T>() -> iceberg::Result<T> {
    Err(iceberg::Error::new(iceberg::ErrorKind::FeatureUnsupported, "not offered by a staged commit"))
}

#[async_trait]
impl Catalog for Staged {
    async fn list_namespaces(&self, _: Option<&NamespaceIdent>) -> iceberg::Result<Vec<NamespaceIdent>> {
        unsupported()
    }
    async fn create_namespace(&self, _: &NamespaceIdent, _: HashMap<String, String>) -> iceberg::Result<Namespace> {
        unsupported()
    }
    async fn get_namespace(&self, _: &NamespaceIdent) -> iceberg::Result<Namespace> {
        unsupported()
    }
    async fn namespace_exists(&self, _: &NamespaceIdent) -> iceberg::Result<bool> {
        unsupported()
    }
    async fn update_namespace(&self, _: &NamespaceIdent, _: HashMap<String, String>) -> iceberg::Result<()> {
        unsupported()
    }
    async fn drop_namespace(&self, _: &NamespaceIdent) -> iceberg::Result<()> {
        unsupported()
    }
    async fn list_tables(&self, _: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        unsupported()
    }
    async fn create_table(&self, _: &NamespaceIdent, _: TableCreation) -> iceberg::Result<Table> {
        unsupported()
    }
    async fn load_table(&self, _: &TableIdent) -> iceberg::Result<Table> {
        Ok(self.current.clone())
    }
    async fn drop_table(&self, _: &TableIdent) -> iceberg::Result<()> {
        unsupported()
    }
    async fn purge_table(&self, _: &TableIdent) -> iceberg::Result<()> {
        unsupported()
    }
    async fn table_exists(&self, _: &TableIdent) -> iceberg::Result<bool> {
        Ok(true)
    }
    async fn rename_table(&self, _: &TableIdent, _: &TableIdent) -> iceberg::Result<()> {
        unsupported()
    }
    async fn register_table(&self, _: &TableIdent, _: String) -> iceberg::Result<Table> {
        unsupported()
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let staged = commit.apply(self.current.clone())?;
        let location = MetadataLocation::from_str(staged.metadata_location_result()?)?;
        staged.metadata().write_to(staged.file_io(), &location).await?;
        if let Ok(mut c) = self.committed.lock() {
            *c = Some(staged.clone());
        }
        Ok(staged)
    }
}
