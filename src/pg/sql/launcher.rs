//! `start_launcher`: start this database's pg_sink launcher once the calling
//! transaction commits. `CREATE EXTENSION` calls it, so sinks of a database
//! that gets the extension run without a server restart.

use pgrx::prelude::*;

use crate::pg::spi::select_one;

/// Start this database's launcher after the transaction commits (a no-op when
/// one runs already, when `pg_sink.databases` leaves the database out, or when
/// the transaction rolls back). The server starts one for every database at
/// startup; this is for databases that got the extension since (`CREATE
/// EXTENSION` calls it) or were copied from a template that had it.
#[pg_extern(volatile)]
fn start_launcher() {
    let db = select_one("SELECT current_database()::text", &[]).unwrap_or_default();
    if !crate::pg::gucs::serves(&db) {
        return;
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        if crate::pg::worker::start_database_launcher(&db).is_none() {
            pgrx::warning!("pg_sink could not start the launcher of database \"{db}\" (max_worker_processes?)");
        }
    });
}

pgrx::extension_sql!(
    r#"
-- The sinks of this database run without a restart.
SELECT sink.start_launcher();
"#,
    name = "start_launcher_at_create",
    requires = [start_launcher],
    finalize,
);
