//! The Postgres glue: everything that touches `pgrx`. It stays thin — SQL functions
//! ([`api`]), the catalog ([`catalog`]), settings ([`gucs`]), the batch step shared
//! by the worker, `sync` and `preview` ([`delivery`]), SPI adapters for the engine
//! ([`spi`]), the background workers ([`worker`]) and the log of sinks' state
//! changes ([`events`]), where sinks run ([`home`]) and which catalog version the
//! library needs ([`version`]). Only the backend's own thread
//! runs this code; the engine's async connectors run on a current-thread runtime
//! driven from the same thread.

pub mod access;
pub mod backfill;
pub mod catalog;
pub mod delivery;
pub mod errors;
pub mod events;
pub mod gucs;
pub mod home;
pub mod identity;
pub mod policy;
pub mod retention;
pub mod spi;
pub mod sql;
mod tests;
pub mod version;
pub mod worker;

use pgrx::pg_sys;

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // SAFETY: reading a postmaster global during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::register_launcher();
    }
}
