//! Settings, all under `pg_sink.`. Each static says why its default was chosen.

use std::ffi::{CStr, CString};

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

/// The database the launcher connects to, to read the list of databases (like
/// `cron.database_name`). Default `postgres`: the database every cluster has.
/// Postmaster-level, so it can only be set in postgresql.conf with
/// `shared_preload_libraries = 'pg_sink'`.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// The databases whose sinks run: `*` (default), every database that accepts
/// connections and has the extension; or a comma-separated list of names. A
/// user of pg_sink expects a sink to run wherever it was made.
pub static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"*"));

/// How long an idle sink waits before looking for new changes again (ms). An idle
/// poll is one short decoding session; 100 ms keeps the first change after a quiet
/// spell under ~0.1 s late at negligible idle cost. While changes flow, the worker
/// does not wait at all.
pub static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(100);

/// Changes decoded per batch. Larger batches amortise the per-batch cost (a catalog
/// update, an fsync); 20000 keeps a batch's memory in the tens of MB. A single
/// transaction larger than this is still delivered whole, up to
/// `transaction_part_changes`.
pub static MAX_BATCH_CHANGES: GucSetting<i32> = GucSetting::<i32>::new(20_000);

/// Changes of one transaction a worker holds in memory: a larger transaction is
/// delivered in parts of this size (each target keeps it atomic where it can; see
/// the README). 100000 bounds a worker to a few hundred MB whatever the
/// transaction's size, and leaves transactions of ordinary size whole.
pub static TRANSACTION_PART_CHANGES: GucSetting<i32> = GucSetting::<i32>::new(100_000);

/// Rows of a backfill chunk (`sink.backfill()`): each chunk is read in one
/// statement and waits in the worker's memory for its watermark, then is one
/// step. 10000 rows keep a chunk to a few MB and the steps per second low.
pub static BACKFILL_CHUNK_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Changes decoded per step (one transaction). Through SQL, each step is one
/// decoding pass that restarts at the slot's restart point, so a large step makes
/// catching up on a backlog one pass instead of many; 1M changes keeps a step to
/// seconds. The step is delivered in batches of `max_batch_changes`.
pub static MAX_STEP_CHANGES: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);

/// Upper bound of the retry backoff after transient errors (ms). 30 s: a broker
/// restart is noticed quickly, a long outage does not spin.
pub static RETRY_MAX_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// Testing aid: fail every step after the connector reported its batches durable
/// and before progress is recorded — the crash window exactly-once must survive.
pub static FAIL_AFTER_DELIVER: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Whether creating connections and sinks probes their servers (broker, registry,
/// endpoint). Off is `validate => false` for every creation in the session.
pub static VALIDATE_CONNECTIONS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// How workers read their slots. `auto` (default): through a walsender
/// connection to this server, which decodes in its own process while the worker
/// encodes and delivers, and keeps decoding while a target commits; if that
/// connection cannot be opened (pg_hba.conf, max_wal_senders), through SQL.
/// `walsender`: only that way (a failed connection is an error in the status).
/// `sql`: `pg_logical_slot_peek_binary_changes` in the worker's own transaction.
/// `sync()` and `preview()` always read through SQL (their step is the caller's
/// transaction); the default a session starts with is therefore `Sql`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Transport {
    #[name = c"auto"]
    Auto,
    #[name = c"walsender"]
    Walsender,
    #[name = c"sql"]
    #[default]
    Sql,
}

pub static TRANSPORT: GucSetting<Transport> = GucSetting::<Transport>::new(Transport::Auto);

/// Overrides for the walsender connection (libpq key=value: host, port, user,
/// password, dbname). Empty: the bootstrap superuser over this server's first
/// Unix socket, which Debian's and initdb's pg_hba.conf allow (peer or trust).
/// Superuser-only, because it may hold a password.
pub static REPLICATION_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Directory under which roles without `pg_write_server_files` may point `file`
/// sinks (Postgres' own rule for writing server files). Empty (default): only
/// superusers and members of `pg_write_server_files` may use `file`.
pub static FILE_ROOT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The most WAL any sink's slot may hold back, unless the sink sets its own
/// `max_retained_wal` (a size as `pg_size_bytes` reads it). Empty: no limit.
pub static MAX_RETAINED_WAL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Hosts outbound connectors of non-superusers may reach: names, `*.suffix`,
/// addresses, networks (`10.0.0.0/8`), comma-separated. Empty (default): any.
pub static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Sinks a role other than a superuser may own; each holds a replication slot
/// (WAL is kept for it) and a worker. 16 leaves room in the default
/// `max_replication_slots` (10) raised for a few users; 0 forbids.
pub static MAX_SINKS_PER_ROLE: GucSetting<i32> = GucSetting::<i32>::new(16);

/// The settings that bound what a non-superuser may do (see README, privileges).
fn init_privilege_settings() {
    GucRegistry::define_string_guc(
        c"pg_sink.file_root",
        c"Directory under which roles without pg_write_server_files may write file sinks.",
        c"Empty: only superusers and members of pg_write_server_files may use the file connector.",
        &FILE_ROOT,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pg_sink.allowed_hosts",
        c"Hosts that sinks and connections of non-superusers may connect to (names, *.suffix, addresses, networks).",
        c"Empty: any host.",
        &ALLOWED_HOSTS,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pg_sink.max_sinks_per_role",
        c"Maximum number of sinks a role other than a superuser may own.",
        c"Each sink holds a replication slot.",
        &MAX_SINKS_PER_ROLE,
        0,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

pub fn init() {
    init_privilege_settings();
    GucRegistry::define_string_guc(
        c"pg_sink.max_retained_wal",
        c"The most WAL a sink's slot may hold back before its wal_retention_policy applies (e.g. 10GB).",
        c"Empty: no limit. A sink's max_retained_wal option takes precedence.",
        &MAX_RETAINED_WAL,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    // SAFETY: reading a postmaster global during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"pg_sink.database",
            c"Database the pg_sink launcher connects to, to list the databases whose sinks run.",
            c"",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_string_guc(
            c"pg_sink.databases",
            c"Databases whose sinks run: * (every database with the extension) or a comma-separated list.",
            c"Sinks in other databases can be driven with sink.sync().",
            &DATABASES,
            GucContext::Sighup,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"pg_sink.poll_interval",
        c"Milliseconds an idle sink waits before polling its slot again.",
        c"",
        &POLL_INTERVAL_MS,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_sink.max_batch_changes",
        c"Maximum changes decoded into one delivery batch.",
        c"A transaction larger than this is still delivered whole, up to pg_sink.transaction_part_changes.",
        &MAX_BATCH_CHANGES,
        1,
        10_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_sink.transaction_part_changes",
        c"Changes of one transaction a sink holds in memory before delivering them as a part.",
        c"A larger transaction is delivered in parts; nothing of it is confirmed before its last part.",
        &TRANSACTION_PART_CHANGES,
        1,
        100_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_sink.backfill_chunk_rows",
        c"Rows of the source a backfill reads per chunk.",
        c"Each chunk waits in the worker's memory for its watermark, then goes out in one step.",
        &BACKFILL_CHUNK_ROWS,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_sink.max_step_changes",
        c"Maximum changes decoded in one step (one transaction) of a sink.",
        c"A step is delivered in batches of pg_sink.max_batch_changes.",
        &MAX_STEP_CHANGES,
        1,
        100_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    init_switches();
}

/// Switches: test failpoints, connection checks, the transport, retries.
fn init_switches() {
    GucRegistry::define_bool_guc(
        c"pg_sink.fail_after_deliver",
        c"Testing aid: make each step fail after delivery, before recording progress.",
        c"Simulates a crash between a durable write at the target and the catalog update.",
        &FAIL_AFTER_DELIVER,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_sink.validate_connections",
        c"Probe brokers, registries and endpoints when connections and sinks are created.",
        c"Off skips the probes, like validate => false on each creation.",
        &VALIDATE_CONNECTIONS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_sink.transport",
        c"How sink workers read their replication slots: auto, walsender or sql.",
        c"auto streams from a walsender and falls back to SQL decoding when the connection fails.",
        &TRANSPORT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_sink.replication_conninfo",
        c"libpq key=value overrides of the workers' walsender connection (host, port, user, password, dbname).",
        c"Empty: the bootstrap superuser over this server's first Unix socket.",
        &REPLICATION_CONNINFO,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pg_sink.retry_max",
        c"Maximum backoff between retries of a failing sink.",
        c"",
        &RETRY_MAX_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

pub fn database() -> String {
    DATABASE.get().as_deref().and_then(|c: &CStr| c.to_str().ok()).unwrap_or("postgres").to_string()
}

/// Whether the sinks of database `name` run (`pg_sink.databases`).
pub fn serves(name: &str) -> bool {
    let list = DATABASES.get().as_deref().and_then(|c: &CStr| c.to_str().ok()).unwrap_or("*").to_string();
    list.split(',').map(str::trim).any(|d| d == "*" || d == name)
}

pub fn poll_interval() -> std::time::Duration {
    std::time::Duration::from_millis(POLL_INTERVAL_MS.get().max(10) as u64)
}

pub fn max_batch_changes() -> i64 {
    MAX_BATCH_CHANGES.get().max(1) as i64
}

pub fn transaction_part_changes() -> usize {
    TRANSACTION_PART_CHANGES.get().max(1) as usize
}

pub fn backfill_chunk_rows() -> usize {
    BACKFILL_CHUNK_ROWS.get().max(1) as usize
}

pub fn max_step_changes() -> i64 {
    MAX_STEP_CHANGES.get().max(1) as i64
}

pub fn retry_max() -> std::time::Duration {
    std::time::Duration::from_millis(RETRY_MAX_MS.get().max(100) as u64)
}

pub fn validate_connections() -> bool {
    VALIDATE_CONNECTIONS.get()
}

pub fn transport() -> Transport {
    TRANSPORT.get()
}

pub fn replication_conninfo() -> Option<String> {
    REPLICATION_CONNINFO.get().as_deref().and_then(|c: &CStr| c.to_str().ok()).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

fn text_setting(g: &GucSetting<Option<CString>>) -> Option<String> {
    g.get().as_deref().and_then(|c: &CStr| c.to_str().ok()).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

pub fn file_root() -> Option<String> {
    text_setting(&FILE_ROOT)
}

/// `pg_sink.max_retained_wal` in bytes; `None` when empty or not a size.
pub fn max_retained_wal() -> Option<u64> {
    let text = text_setting(&MAX_RETAINED_WAL)?;
    let size = crate::engine::retention::parse_size(&text).filter(|n| *n > 0);
    if size.is_none() {
        pgrx::warning!("pg_sink.max_retained_wal = '{text}' is not a size (such as 10GB); no limit applies");
    }
    size
}

pub fn allowed_hosts() -> Vec<String> {
    text_setting(&ALLOWED_HOSTS).map(|s| s.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect()).unwrap_or_default()
}

pub fn max_sinks_per_role() -> i64 {
    MAX_SINKS_PER_ROLE.get().max(0) as i64
}
