//! Which catalog this library runs against. The SQL objects of the extension
//! (`pg_extension.extversion`) and the library (`pg_sink.so`) are upgraded apart:
//! new binaries are installed and the server restarted, then `ALTER EXTENSION
//! pg_sink UPDATE` brings the catalog along. In between, the SQL functions refuse
//! with a hint and the launcher starts no worker (the sinks' slots keep every
//! change meanwhile, so the sinks continue where they stopped once updated).

use pgrx::PgSqlErrorCode;

use super::errors::fail;
use super::spi::select_one;

/// The library's version, which is the catalog version it needs.
pub const LIBRARY: &str = env!("CARGO_PKG_VERSION");

/// The installed catalog's version in this database, if the extension is installed.
pub fn installed() -> Option<String> {
    select_one("SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'pg_sink'", &[])
}

fn mismatch_message(catalog: &str) -> String {
    format!("pg_sink's catalog in this database is version {catalog}, but its library is version {LIBRARY}")
}

const HINT: &str = "Run ALTER EXTENSION pg_sink UPDATE (the sinks wait meanwhile and lose nothing), or install the library of that version.";

/// Refuse to run a SQL function against a catalog of another version.
pub fn check() {
    if let Some(v) = installed().filter(|v| v != LIBRARY) {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            mismatch_message(&v),
            Some("The extension's library was upgraded (or downgraded) without its SQL objects.".into()),
            Some(HINT.into()),
        );
    }
}

/// For the workers: whether the extension is installed here at the library's
/// version. Says once per catalog version (in the log) why sinks wait.
pub fn catalog_ready() -> bool {
    static WARNED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    match installed() {
        None => false,
        Some(v) if v == LIBRARY => true,
        Some(v) => {
            let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
            if warned.as_deref() != Some(&v) {
                pgrx::warning!("{}: its sinks wait. HINT: {HINT}", mismatch_message(&v));
                *warned = Some(v);
            }
            false
        }
    }
}
