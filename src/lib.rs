//! pg_sink: change-data-capture sinks inside PostgreSQL.
//!
//! * [`engine`] — decode, envelope, encode, deliver; plain Rust, no `pgrx`.
//! * [`pg`] — the thin Postgres glue: SQL functions, catalog, GUCs, background workers.

pub mod engine;
pub mod pg;

::pgrx::pg_module_magic!();

::pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_sink'",
            "wal_level = logical",
            "max_replication_slots = 20",
            "max_wal_senders = 10",
            "max_worker_processes = 32",
            "pg_sink.database = 'pgrx_tests'",
            "pg_sink.poll_interval = 100",
        ]
    }
}
