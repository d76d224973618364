//! The formats users name (`FORMAT JSON`, `KEY FORMAT AVRO VALUE FORMAT TEXT`):
//! which encoder each name builds.

use super::avro::{self, EncoderContext};
use super::{connect_avro, debezium, json, text, Encoder, Role};
use crate::engine::error::{Result, SinkError};

/// Formats the engine offers.
pub const FORMATS: &[&str] = &["json", "avro", "text", "bytes"];

pub fn check_format(format: &str) -> Result<()> {
    if FORMATS.contains(&format.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(SinkError::config(format!("unknown format \"{format}\"")).hint(format!("Supported formats: {}.", FORMATS.join(", "))))
    }
}

pub fn build(format: &str, role: Role, ctx: &EncoderContext) -> Result<Box<dyn Encoder>> {
    match format.to_ascii_lowercase().as_str() {
        "json" if ctx.debezium_compat => {
            let e = debezium::json_encoder(ctx.debezium_modes);
            Ok(Box::new(match &ctx.connect_schemas {
                Some(prefix) => e.with_connect_schemas(prefix),
                None => e,
            }))
        }
        "json" => Ok(Box::new(json::JsonEncoder::default())),
        "avro" if ctx.debezium_compat => Ok(Box::new(connect_avro::ConnectAvroEncoder::new(role, &ctx.sink_name, ctx.debezium_modes, ctx)?)),
        "avro" => Ok(Box::new(avro::AvroEncoder::new(role, ctx)?)),
        "text" => Ok(Box::new(text::TextEncoder { bytes: false })),
        "bytes" => Ok(Box::new(text::TextEncoder { bytes: true })),
        other => Err(SinkError::config(format!("unknown format \"{other}\"")).hint(format!("Supported formats: {}.", FORMATS.join(", ")))),
    }
}
