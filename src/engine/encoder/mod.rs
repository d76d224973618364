//! Encoders turn drafts into bytes, the key and the value separately, so a sink can
//! mix formats (`KEY FORMAT .. VALUE FORMAT ..`). They also own partition hashing of
//! the encoded key. A new format is one file here plus one arm in
//! [`formats::build`], which chooses among them.
//!
//! * `json` — Materialize's JSON mapping ([`json`]);
//! * `avro` — generated schemas, optionally registered in a Confluent schema
//!   registry and framed in its wire format ([`avro`], [`registry`]); under
//!   `debezium.compat`, Kafka Connect's Avro mapping of Debezium's events
//!   ([`connect_avro`]);
//! * `text`, `bytes` — one column as text or raw bytes ([`text`]).

pub mod avro;
pub mod connect;
pub mod connect_avro;
pub mod debezium;
pub mod formats;
pub mod hash;
pub mod json;
pub mod modes;
pub mod registry;
pub mod text;

use super::envelope::{Payload, RowImage};
use super::error::Result;

pub trait Encoder: Send {
    /// The format's name as users spell it (`json`, ...).
    fn name(&self) -> &'static str;
    /// Encode a key projection.
    fn encode_key(&self, key: &RowImage) -> Result<Vec<u8>>;
    /// Encode a value; `None` is a tombstone / control record with a null value.
    fn encode_value(&self, payload: &Payload) -> Result<Option<Vec<u8>>>;
    /// The key of a transaction's BEGIN or END event, whose id is `id`.
    fn encode_transaction_key(&self, id: &str) -> Result<Vec<u8>> {
        Ok(id.as_bytes().to_vec())
    }
    /// Bytes at the start of an encoded key that are framing, not content (the
    /// registry's magic byte and schema id): partitioning hashes what follows.
    fn strip_prefix(&self) -> usize {
        0
    }
}

/// `bytea` in hex output form (`\x0a1b`) → its bytes; `None` if malformed.
pub fn bytea_from_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// Which half of a record an encoder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Key,
    Value,
}
