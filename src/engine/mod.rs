//! The delivery engine: everything between the bytes of a pgoutput stream and a
//! durable write at a target. It never touches Postgres internals (no `pgrx`
//! import anywhere below this folder; `tests/engine_boundary.sh` enforces it), so
//! every piece is unit-tested with plain `cargo test`.
//!
//! ```text
//!  pgoutput bytes ──► decode ──► Transaction{changes} ──► envelope ──► Draft{key,value}
//!                                                                        │
//!                 progress (LSN) ◄── connector (durable) ◄── encoder ◄───┘
//! ```
//!
//! The Postgres glue (`crate::pg`) feeds messages in, provides a [`connector::SqlSession`]
//! for in-database targets, and persists the LSN the connector reports durable.

pub mod backfill;
pub mod change;
pub mod connector;
pub mod credential;
pub mod dead_letter;
pub mod dialect;
pub mod encoder;
pub mod envelope;
pub mod error;
pub mod lsn;
pub mod options;
pub mod pgoutput;
pub mod pipeline;
pub mod replication;
pub mod retention;
pub mod retry;
pub mod schema_change;
pub mod schema_gate;
pub mod seal;
pub mod secret;
pub mod step;
#[cfg(test)]
pub mod testing;
pub mod toast;
pub mod types;
