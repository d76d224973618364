//! The MySQL / MariaDB side of the jdbc connector, over mysql_async. Values are
//! sent as strings and converted by the server to the column's type (booleans,
//! UTC timestamps and byte strings are respelled by the connector first).

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Params, SslOpts, Value};

use super::target::{Backend, TableInfo, Target};
use crate::engine::connector::tls::{self, TlsMode};
use crate::engine::error::{Result, SinkError};

pub struct MyBackend {
    conn: Conn,
}

fn my_error(what: &str, e: mysql_async::Error) -> SinkError {
    let message = format!("could not {what} on the MySQL target: {e}");
    match &e {
        mysql_async::Error::Server(s) => match s.code {
            // access denied, unknown database
            1044 | 1045 | 1049 | 1142 | 1698 => SinkError::permanent(message).hint("Check the jdbc.url, user and password."),
            // lock wait timeout, deadlock, too many connections: try again
            1205 | 1213 | 1040 => SinkError::transient(message),
            // a row the target refuses: NULL into NOT NULL, a duplicate key, a
            // value out of range, too long or wrong, a foreign key, a CHECK
            1048 | 1062 | 1264 | 1265 | 1292 | 1366 | 1406 | 1451 | 1452 | 3819 | 4025 => {
                SinkError::permanent(message).refusing([super::ROW_REFUSED])
            }
            _ => SinkError::permanent(message),
        },
        _ => SinkError::transient(message).hint("Check the host and port of jdbc.url and that the database runs; a running sink retries."),
    }
}

fn params(p: &[Option<String>]) -> Params {
    if p.is_empty() {
        return Params::Empty;
    }
    Params::Positional(p.iter().map(|v| v.as_ref().map_or(Value::NULL, |s| Value::Bytes(s.as_bytes().to_vec()))).collect())
}

/// What TLS the client asks for; `None` is plain TCP.
fn ssl_opts(t: &Target) -> Result<Option<SslOpts>> {
    if t.tls == TlsMode::Disable {
        return Ok(None);
    }
    let mut ssl =
        SslOpts::default().with_danger_accept_invalid_certs(!t.tls.verifies()).with_danger_skip_domain_validation(t.tls == TlsMode::VerifyCa);
    if let Some(pem) = &t.ssl_ca {
        tls::root_store(Some(pem), "jdbc ssl_ca")?; // a clear error before connecting
        ssl = ssl.with_root_certs(vec![pem.clone().into_bytes().into()]).with_disable_built_in_roots(true);
    }
    Ok(Some(ssl))
}

impl MyBackend {
    pub async fn connect(t: &Target) -> Result<MyBackend> {
        tls::install_default_provider();
        let no_tls = |e: &mysql_async::Error| matches!(e, mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer));
        let conn = match Self::open(t, ssl_opts(t)?).await? {
            // PREFERRED: a server without TLS is spoken to in the clear.
            Err(e) if no_tls(&e) && t.tls == TlsMode::Prefer => Self::open(t, None).await?,
            other => other,
        };
        let conn = conn.map_err(|e| {
            let tls_failed = no_tls(&e) || tls::is_refusal(&format!("{e:?}"));
            if tls_failed {
                tls::tls_error(&format!("the MySQL target {}:{}", t.host, t.port), &e, "the jdbc.url's sslMode and the option ssl_ca")
            } else {
                my_error("connect", e)
            }
        })?;
        Self::set_up(conn).await
    }

    /// Connect once; the outer error is the timeout.
    async fn open(t: &Target, ssl: Option<SslOpts>) -> Result<std::result::Result<Conn, mysql_async::Error>> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(t.host.clone())
            .tcp_port(t.port)
            .user(t.user.clone())
            .pass(t.password.clone())
            .db_name(Some(t.database.clone()))
            .prefer_socket(false)
            .ssl_opts(ssl)
            // The connector's statements are prepared once per shape.
            .stmt_cache_size(64);
        tokio::time::timeout(t.timeout, Conn::new(opts)).await.map_err(|_| {
            SinkError::transient(format!("could not connect to the MySQL target {}:{}: timed out", t.host, t.port))
                .hint("Check the host and port of jdbc.url and that the database runs; a running sink retries.")
        })
    }

    async fn set_up(conn: Conn) -> Result<MyBackend> {
        let mut b = MyBackend { conn };
        // Timestamps are written as UTC, as the worker renders them.
        b.conn
            .query_drop("SET time_zone = '+00:00', sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
            .await
            .map_err(|e| my_error("set up the session", e))?;
        Ok(b)
    }
}

#[async_trait(?Send)]
impl Backend for MyBackend {
    async fn execute(&mut self, sql: &str, p: &[Option<String>]) -> Result<u64> {
        if p.is_empty() {
            self.conn.query_drop(sql).await.map_err(|e| my_error("run a statement", e))?;
        } else {
            self.conn.exec_drop(sql, params(p)).await.map_err(|e| my_error("write rows", e))?;
        }
        Ok(self.conn.affected_rows())
    }

    async fn query_one(&mut self, sql: &str, p: &[Option<String>]) -> Result<Option<String>> {
        let row: Option<(Value,)> = self.conn.exec_first(sql, params(p)).await.map_err(|e| my_error("read progress", e))?;
        Ok(row.and_then(|(v,)| match v {
            Value::NULL => None,
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            other => Some(other.as_sql(true)),
        }))
    }

    async fn describe(&mut self, t: &Target) -> Result<Option<TableInfo>> {
        let rows: Vec<(String, String, String)> = self
            .conn
            .exec(
                "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(COLUMN_KEY AS CHAR) FROM information_schema.COLUMNS \
                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (t.database.clone(), t.table.clone()),
            )
            .await
            .map_err(|e| my_error("describe the target table", e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let pk: Vec<String> = self
            .conn
            .exec(
                "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE \
                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                (t.database.clone(), t.table.clone()),
            )
            .await
            .map_err(|e| my_error("describe the target table", e))?;
        Ok(Some(TableInfo { columns: rows.into_iter().map(|(c, ty, _)| (c, ty)).collect(), primary_key: pk }))
    }

    async fn ensure_progress_table(&mut self, t: &Target) -> Result<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (sink_id varchar(255) PRIMARY KEY, lsn bigint NOT NULL, updated_at datetime(6)) ENGINE=InnoDB",
            t.qualified(&t.progress_table)
        );
        self.conn.query_drop(sql).await.map_err(|e| my_error("create the progress table", e))
    }
}
