//! Encoders turn drafts into bytes, the key and the value separately, so a sink can
//! mix formats (`KEY FORMAT .. VALUE FORMAT ..`). They also own partition hashing of
//! the encoded key. A new format is one file here plus one arm in [`build`].

pub mod hash;
pub mod json;

use super::envelope::{Payload, RowImage};
use super::error::{Result, SinkError};

pub trait Encoder: Send {
    /// The format's name as users spell it (`json`, ...).
    fn name(&self) -> &'static str;
    /// Encode a key projection.
    fn encode_key(&self, key: &RowImage) -> Result<Vec<u8>>;
    /// Encode a value; `None` is a tombstone / control record with a null value.
    fn encode_value(&self, payload: &Payload) -> Result<Option<Vec<u8>>>;
}

/// Formats the engine offers today.
pub const FORMATS: &[&str] = &["json"];

pub fn build(format: &str) -> Result<Box<dyn Encoder>> {
    match format.to_ascii_lowercase().as_str() {
        "json" => Ok(Box::new(json::JsonEncoder)),
        other => Err(SinkError::config(format!("unknown format \"{other}\""))
            .hint(format!("Supported formats: {}.", FORMATS.join(", ")))),
    }
}
