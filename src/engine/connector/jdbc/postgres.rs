//! The PostgreSQL side of the jdbc connector, over tokio-postgres. Every parameter
//! is sent as text and cast in the statement (`$1::text::integer`), so any type the
//! target has an input function for works. TLS follows the URL's `sslmode`
//! ([`TlsMode`], rustls).

use std::collections::HashMap;

use async_trait::async_trait;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::target::{Backend, TableInfo, Target};
use crate::engine::connector::tls::{self, TlsMode};
use crate::engine::error::{Result, SinkError};

pub struct PgBackend {
    client: Client,
    /// Prepared statements by text: a batch repeats the same multi-row statement,
    /// and parsing one with thousands of parameters costs more than running it.
    statements: HashMap<String, Statement>,
}

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// Connection refused or lost: retry. Refused credentials or a missing database:
/// an operator must act.
fn pg_error(what: &str, e: tokio_postgres::Error) -> SinkError {
    // The cause of a failed handshake is in the error's sources.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    if e.code().is_none() && tls::is_refusal(&text) {
        return tls::tls_error("the PostgreSQL target", &text, "the jdbc.url's sslmode and the option ssl_ca");
    }
    let code = e.code().map(|c| c.code().to_string());
    let detail = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    let message = format!("could not {what} on the PostgreSQL target: {detail}");
    match code.as_deref() {
        // invalid authorization, invalid catalog name, insufficient privilege
        Some(c) if c.starts_with("28") || c == "3D000" || c == "42501" => {
            SinkError::permanent(message).hint("Check the jdbc.url, user and password.")
        }
        // data exceptions and integrity constraints: the target refuses a row
        Some(c) if c.starts_with("22") || c.starts_with("23") => SinkError::permanent(message).refusing([super::ROW_REFUSED]),
        // a statement the target cannot run (a missing column, a type)
        Some(c) if c.starts_with("42") => SinkError::permanent(message),
        _ => SinkError::transient(message).hint("Check the host and port of jdbc.url and that the database runs; a running sink retries."),
    }
}

impl PgBackend {
    pub async fn connect(t: &Target) -> Result<PgBackend> {
        if t.password_required && Self::open(t, false).await.is_ok() {
            return Err(SinkError::permanent(format!(
                "the PostgreSQL target {}:{} accepted a connection without a password",
                t.host, t.port
            ))
            .detail("The sink's owner is not a superuser; like postgres_fdw, pg_sink does not let such a role use the trust or peer authentication of the server it connects from.")
            .hint("Connect as a target user that authenticates with a password (pg_hba.conf: scram-sha-256), and give the password as a secret.")
            .privilege());
        }
        Ok(PgBackend { client: Self::open(t, true).await?, statements: HashMap::new() })
    }

    async fn open(t: &Target, with_password: bool) -> Result<Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&t.host).port(t.port).dbname(&t.database).connect_timeout(t.timeout).application_name("pg_sink");
        if let Some(u) = &t.user {
            cfg.user(u);
        }
        if let (Some(p), true) = (&t.password, with_password) {
            cfg.password(p);
        }
        if t.tls == TlsMode::Disable {
            let (client, connection) = cfg.connect(NoTls).await.map_err(|e| pg_error("connect", e))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            return Ok(client);
        }
        cfg.ssl_mode(if t.tls == TlsMode::Prefer { SslMode::Prefer } else { SslMode::Require });
        let config = tls::client_config(t.tls, t.ssl_ca.as_deref(), "jdbc ssl_ca")?;
        let (client, connection) = cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(config)).await.map_err(|e| pg_error("connect", e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

fn params(p: &[Option<String>]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

#[async_trait(?Send)]
impl Backend for PgBackend {
    async fn execute(&mut self, sql: &str, p: &[Option<String>]) -> Result<u64> {
        if p.is_empty() {
            self.client.batch_execute(sql).await.map_err(|e| pg_error("run a statement", e))?;
            return Ok(0);
        }
        if !self.statements.contains_key(sql) {
            if self.statements.len() >= STATEMENT_CACHE {
                self.statements.clear();
            }
            let types = vec![Type::TEXT; p.len()];
            let stmt = self.client.prepare_typed(sql, &types).await.map_err(|e| pg_error("prepare a statement", e))?;
            self.statements.insert(sql.to_string(), stmt);
        }
        let stmt = self.statements.get(sql).ok_or_else(|| SinkError::transient("prepared statement missing"))?;
        self.client.execute(stmt, &params(p)).await.map_err(|e| pg_error("write rows", e))
    }

    async fn query_one(&mut self, sql: &str, p: &[Option<String>]) -> Result<Option<String>> {
        // Columns are cast to text by the caller's SQL where needed.
        let sql = format!("SELECT x::text FROM ({sql}) AS q(x)");
        let rows = self.client.query(&sql, &params(p)).await.map_err(|e| pg_error("read progress", e))?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)))
    }

    async fn describe(&mut self, t: &Target) -> Result<Option<TableInfo>> {
        let name = t.qualified(&t.table);
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                        coalesce(a.attnum = ANY (i.indkey::int2[]), false) \
                   FROM pg_attribute a \
                   LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                  ORDER BY a.attnum",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("describe the target table", e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut info = TableInfo::default();
        for r in rows {
            let col: String = r.get(0);
            if r.get::<_, bool>(2) {
                info.primary_key.push(col.clone());
            }
            info.columns.push((col, r.get(1)));
        }
        Ok(Some(info))
    }

    async fn ensure_progress_table(&mut self, t: &Target) -> Result<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (sink_id varchar(255) PRIMARY KEY, lsn bigint NOT NULL, updated_at timestamptz)",
            t.qualified(&t.progress_table)
        );
        self.client.batch_execute(&sql).await.map_err(|e| pg_error("create the progress table", e))
    }
}
