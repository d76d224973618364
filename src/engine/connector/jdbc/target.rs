//! The target side of the `jdbc` connector: the JDBC URL parsed into a
//! [`Target`], the [`Backend`] each database client implements (PostgreSQL,
//! MySQL/MariaDB), and the creation-time checks of the target table against the
//! sink (key, columns, compatible types).

use async_trait::async_trait;

use crate::engine::connector::tls::TlsMode;
use crate::engine::connector::{percent_decode, ConnectorConfig};
use crate::engine::envelope::EnvelopeKind;
use crate::engine::error::{Result, SinkError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

/// Where to connect and what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dialect: Dialect,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub schema: Option<String>,
    pub table: String,
    pub progress_table: String,
    pub timeout: std::time::Duration,
    /// From the URL's `sslmode` (PostgreSQL) or `sslMode`/`useSSL` (MySQL); the
    /// drivers' default is `prefer`.
    pub tls: TlsMode,
    /// PEM certificates to trust (option `ssl_ca`); the Mozilla roots without it.
    pub ssl_ca: Option<String>,
    /// A PostgreSQL target must ask for the password ([`ConnectorConfig::password_required`]).
    pub password_required: bool,
}

pub fn parse_target(cfg: &ConnectorConfig) -> Result<Target> {
    let url = cfg.get("jdbc.url").or_else(|| cfg.get("url")).or_else(|| cfg.get("location")).ok_or_else(|| {
        SinkError::config("connector \"jdbc\" requires option \"jdbc.url\"")
            .hint("For example jdbc.url => 'jdbc:postgresql://db.example.com:5432/mydb'.")
    })?;
    let bad = |why: &str| {
        SinkError::config(format!("invalid JDBC URL \"{url}\""))
            .detail(why.to_string())
            .hint("Use jdbc:postgresql://host:port/database or jdbc:mysql://host:port/database.")
    };
    let rest = url.strip_prefix("jdbc:").unwrap_or(url);
    let (scheme, rest) = rest.split_once("://").ok_or_else(|| bad("It has no scheme."))?;
    let dialect = match scheme.to_ascii_lowercase().as_str() {
        "postgresql" | "postgres" => Dialect::Postgres,
        "mysql" | "mariadb" => Dialect::MySql,
        other => return Err(bad(&format!("Database \"{other}\" is not supported: pg_sink writes to postgresql and mysql (or mariadb)."))),
    };
    let (authority, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (mut user, mut password) = (None, None);
    let authority = match authority.rsplit_once('@') {
        Some((creds, host)) => {
            let (u, p) = creds.split_once(':').map_or((creds, None), |(u, p)| (u, Some(p)));
            user = Some(percent_decode(u));
            password = p.map(percent_decode);
            host
        }
        None => authority,
    };
    let default_port = if dialect == Dialect::Postgres { 5432 } else { 3306 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad(&format!("Port \"{p}\" is not a number.")))?),
        None => (authority, default_port),
    };
    if host.is_empty() {
        return Err(bad("It has no host."));
    }
    if path.is_empty() {
        return Err(bad("It names no database."));
    }
    let mut schema = None;
    let mut tls = Tls::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match (dialect, k) {
            (_, "user") => user = Some(v),
            (_, "password") => password = Some(v),
            (_, "currentSchema") => schema = Some(v),
            (Dialect::Postgres, "sslmode") => tls.mode = Some(TlsMode::from_pg(&v)?),
            (Dialect::Postgres, "ssl") => tls.legacy = Some(if parse_flag(k, &v)? { TlsMode::VerifyFull } else { TlsMode::Disable }),
            (Dialect::MySql, "sslMode" | "sslmode") => tls.mode = Some(TlsMode::from_mysql(&v)?),
            (Dialect::MySql, "useSSL" | "useSsl") => tls.legacy = Some(if parse_flag(k, &v)? { TlsMode::Require } else { TlsMode::Disable }),
            (Dialect::MySql, "requireSSL") if parse_flag(k, &v)? => tls.require = true,
            (Dialect::MySql, "verifyServerCertificate") if parse_flag(k, &v)? => tls.verify = true,
            (_, "sslrootcert" | "sslcert" | "sslkey" | "serverSslCert" | "trustCertificateKeyStoreUrl") => {
                return Err(bad(&format!("\"{k}\" names a file on the database server's host, which the sink does not read."))
                    .hint("Give the certificate authority's PEM certificate in the option ssl_ca instead."))
            }
            _ => {} // driver properties that change neither where rows go nor how safely
        }
    }
    if let Some(u) = cfg.get("user") {
        user = Some(u.to_string());
    }
    if let Some(p) = cfg.get("password") {
        password = Some(p.to_string());
    }
    if let Some(s) = cfg.get("schema.name") {
        if dialect == Dialect::MySql {
            return Err(SinkError::config("option \"schema.name\" is for PostgreSQL targets").hint("In MySQL the database in the URL is the schema."));
        }
        schema = Some(s.to_string());
    }
    let table = cfg.get("table.name").filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        SinkError::config("connector \"jdbc\" requires option \"table.name\"").hint("Name the target table, e.g. \"table.name\": \"orders\".")
    })?;
    let progress_table = cfg.get("progress_table").unwrap_or("pg_sink_progress").to_string();
    Ok(Target {
        dialect,
        host: host.to_string(),
        port,
        database: percent_decode(path),
        user,
        password,
        schema: if dialect == Dialect::Postgres { Some(schema.unwrap_or_else(|| "public".into())) } else { None },
        table: table.to_string(),
        progress_table,
        timeout: cfg.timeout(10_000)?,
        tls: tls.mode(),
        ssl_ca: cfg.get("ssl_ca").map(str::to_string),
        password_required: cfg.password_required,
    })
}

/// The TLS words of a JDBC URL: an explicit mode wins over the older flags.
#[derive(Default)]
struct Tls {
    mode: Option<TlsMode>,
    legacy: Option<TlsMode>,
    require: bool,
    verify: bool,
}

impl Tls {
    fn mode(&self) -> TlsMode {
        if let Some(m) = self.mode {
            return m;
        }
        let base = self.legacy.unwrap_or(TlsMode::Prefer);
        if base == TlsMode::Disable {
            return base;
        }
        match (self.require, self.verify) {
            (_, true) => base.max(TlsMode::VerifyCa),
            (true, false) => base.max(TlsMode::Require),
            _ => base,
        }
    }
}

fn parse_flag(name: &str, value: &str) -> Result<bool> {
    crate::engine::connector::parse_bool(name, value)
}

/// A target table as its database describes it.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    /// `(name, type as the target spells it)`, in table order.
    pub columns: Vec<(String, String)>,
    pub primary_key: Vec<String>,
}

/// What the two databases' clients do for the connector.
#[async_trait(?Send)]
pub trait Backend {
    async fn execute(&mut self, sql: &str, params: &[Option<String>]) -> Result<u64>;
    /// First column of the first row, as text.
    async fn query_one(&mut self, sql: &str, params: &[Option<String>]) -> Result<Option<String>>;
    async fn describe(&mut self, target: &Target) -> Result<Option<TableInfo>>;
    async fn ensure_progress_table(&mut self, target: &Target) -> Result<()>;
}

/// Quote an identifier for the dialect.
pub fn quote(d: Dialect, name: &str) -> String {
    match d {
        Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
        Dialect::MySql => format!("`{}`", name.replace('`', "``")),
    }
}

impl Target {
    pub fn qualified(&self, table: &str) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(self.dialect, s), quote(self.dialect, table)),
            None => quote(self.dialect, table),
        }
    }
    /// The n-th (1-based) parameter, cast to the column's type where the dialect needs it.
    pub fn param(&self, n: usize, ty: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("${n}::text::{ty}"),
            // Byte strings travel as Postgres' hex text.
            Dialect::MySql if family(ty) == Family::Bytes => "UNHEX(?)".into(),
            Dialect::MySql => "?".into(),
        }
    }
}

/// Broad type families, to tell a compatible target column from one that would
/// refuse (or mangle) the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Number,
    Bool,
    Text,
    Time,
    Json,
    Bytes,
    Other,
}

pub fn family(ty: &str) -> Family {
    let t = ty.trim().to_ascii_lowercase();
    let base = t.split(['(', ' ']).next().unwrap_or_default();
    if t.ends_with("[]") {
        return Family::Other;
    }
    if t == "tinyint(1)" || base == "boolean" || base == "bool" || t == "bit(1)" {
        return Family::Bool;
    }
    match base {
        "smallint" | "integer" | "int" | "bigint" | "int2" | "int4" | "int8" | "numeric" | "decimal" | "real" | "double" | "float" | "float4"
        | "float8" | "tinyint" | "mediumint" | "smallserial" | "serial" | "bigserial" | "money" => Family::Number,
        "text" | "character" | "char" | "varchar" | "nchar" | "nvarchar" | "tinytext" | "mediumtext" | "longtext" | "citext" | "enum" | "set"
        | "uuid" | "name" => Family::Text,
        "date" | "timestamp" | "time" | "datetime" | "year" | "interval" | "timestamptz" | "timetz" => Family::Time,
        "json" | "jsonb" => Family::Json,
        "bytea" | "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" => Family::Bytes,
        _ => Family::Other,
    }
}

/// The MariaDB/MySQL column type for a PostgreSQL type as `format_type` names it
/// (a schema change adds or retypes a column to it), holding its values as the
/// target writes them; `None` when there is none.
pub fn mysql_type(pg: &str) -> Option<String> {
    let t = pg.trim().to_ascii_lowercase();
    if t.ends_with("[]") {
        return None;
    }
    // "timestamp(3) with time zone": the modifier out, the words kept.
    let (base, args) = match (t.find('('), t.find(')')) {
        (Some(open), Some(close)) if open < close => (format!("{}{}", t[..open].trim_end(), &t[close + 1..]), Some(&t[open + 1..close])),
        _ => (t.clone(), None),
    };
    let nums: Vec<u32> = args.map(|a| a.split(',').filter_map(|n| n.trim().parse().ok()).collect()).unwrap_or_default();
    let precision = |max: u32| nums.first().copied().unwrap_or(6).min(max);
    Some(match base.as_str() {
        "smallint" => "SMALLINT".into(),
        "integer" => "INT".into(),
        "bigint" => "BIGINT".into(),
        "real" => "FLOAT".into(),
        "double precision" => "DOUBLE".into(),
        "boolean" => "BOOLEAN".into(),
        "numeric" => match nums[..] {
            [] => "DECIMAL(65,30)".into(),
            [p] if p <= 65 => format!("DECIMAL({p},0)"),
            [p, s] if p <= 65 && s <= 30 && s <= p => format!("DECIMAL({p},{s})"),
            _ => return None,
        },
        "text" | "character varying" if nums.is_empty() => "LONGTEXT".into(),
        "character varying" => format!("VARCHAR({})", nums[0]),
        "character" => match nums.first().copied().unwrap_or(1) {
            n if n <= 255 => format!("CHAR({n})"),
            _ => return None,
        },
        "bytea" => "LONGBLOB".into(),
        "date" => "DATE".into(),
        "timestamp without time zone" | "timestamp with time zone" => format!("DATETIME({})", precision(6)),
        "time without time zone" => format!("TIME({})", precision(6)),
        "json" | "jsonb" => "JSON".into(),
        "uuid" => "CHAR(36)".into(),
        _ => return None,
    })
}

/// Whether a target column of type `target` takes the text of a source `source` value.
pub fn compatible(source: &str, target: &str) -> bool {
    if source.eq_ignore_ascii_case(target) {
        return true;
    }
    let (s, t) = (family(source), family(target));
    match t {
        Family::Text | Family::Other => true,
        Family::Number => matches!(s, Family::Number | Family::Bool),
        Family::Json => matches!(s, Family::Json),
        _ => s == t,
    }
}

/// Compare the sink with the target table; RisingWave's primary-key rules.
pub fn check_table(target: &Target, info: Option<&TableInfo>, cfg: &ConnectorConfig) -> Result<()> {
    let name = target.qualified(&target.table);
    let Some(info) = info else {
        return Err(SinkError::config(format!("target table {name} does not exist"))
            .detail(format!("Database \"{}\" on {}:{} has no such table.", target.database, target.host, target.port))
            .hint("Create the table in the target database with the sink's columns first."));
    };
    match cfg.envelope {
        EnvelopeKind::Upsert if info.primary_key.is_empty() => {
            return Err(SinkError::config(format!("target table {name} has no primary key; an upsert sink needs one"))
                .hint("Add a primary key to the target table, or use envelope append-only."))
        }
        EnvelopeKind::Upsert => {
            let mut a = info.primary_key.clone();
            let mut b = cfg.key_columns.clone();
            a.sort();
            b.sort();
            if a != b {
                return Err(SinkError::config(format!("the sink key does not match the primary key of {name}"))
                    .detail(format!(
                        "The target's primary key is ({}); the sink's key is ({}).",
                        info.primary_key.join(", "),
                        cfg.key_columns.join(", ")
                    ))
                    .hint("The target's primary key decides upserts: leave out the key option, or give exactly those columns."));
            }
        }
        _ => {}
    }
    for (col, ty) in &cfg.columns {
        match info.columns.iter().find(|(c, _)| c == col) {
            None => {
                return Err(SinkError::config(format!("column \"{col}\" does not exist in target table {name}"))
                    .detail(format!("The target has columns: {}.", info.columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ")))
                    .hint("Give the target the same columns as the sink, or narrow the sink with a SELECT column list."))
            }
            Some((_, target_ty)) if !compatible(ty, target_ty) => {
                return Err(SinkError::config(format!("column \"{col}\" has type {ty} but target column has type {target_ty}"))
                    .detail(format!("Target table {name} cannot take {ty} values in that column."))
                    .hint("Change the target column's type, or cast the column in the sink's SELECT."))
            }
            _ => {}
        }
    }
    Ok(())
}
