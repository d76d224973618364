//! Which connectors exist: [`REGISTRY`] names each one's [`ConnectorSpec`] (its
//! options and how it is built), [`spec`] finds one by the name users give
//! (with RisingWave's and Kinetica's aliases), and the option checks every sink
//! and connection goes through. A new connector is one room in this folder plus
//! one line in [`REGISTRY`].

use std::collections::BTreeMap;

use super::{iceberg, jdbc, kafka, kinesis, nats, object, table, webhook, ConnectorSpec};
use crate::engine::error::{Result, SinkError};

pub const REGISTRY: &[ConnectorSpec] =
    &[object::FILE, object::S3, object::GCS, object::AZBLOB, object::HDFS, iceberg::SPEC, jdbc::SPEC, kafka::SPEC, kinesis::SPEC, nats::SPEC, table::SPEC, webhook::SPEC];

/// Other names users of RisingWave or Kinetica give the same connectors.
const ALIASES: &[(&str, &str)] = &[("azure", "azblob"), ("fs", "file"), ("http", "webhook"), ("https", "webhook")];

pub fn spec(name: &str) -> Result<&'static ConnectorSpec> {
    let name = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(name)).map_or(name, |(_, n)| n);
    REGISTRY.iter().find(|s| s.name.eq_ignore_ascii_case(name)).ok_or_else(|| {
        SinkError::config(format!("unknown connector \"{name}\""))
            .hint(format!("Supported connectors: {}.", REGISTRY.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")))
    })
}

/// Check connector options against the spec: all known, and (for a sink, not for a
/// connection that sinks complete) all required present.
pub fn validate_options(spec: &ConnectorSpec, options: &BTreeMap<String, String>) -> Result<()> {
    validate_known(spec, options)?;
    for req in spec.required {
        if !options.contains_key(*req) {
            return Err(SinkError::config(format!("connector \"{}\" requires option \"{req}\"", spec.name))
                .detail(spec.options.iter().find(|(o, _)| o == req).map(|(_, d)| d.to_string()).unwrap_or_default()));
        }
    }
    Ok(())
}

/// Check that every option is one the connector knows.
pub fn validate_known(spec: &ConnectorSpec, options: &BTreeMap<String, String>) -> Result<()> {
    for name in options.keys() {
        if !spec.options.iter().any(|(o, _)| o == name) && !spec.option_prefixes.iter().any(|p| name.starts_with(p)) {
            return Err(SinkError::config(format!("unknown option \"{name}\" for connector \"{}\"", spec.name)).hint(format!(
                "Valid options for \"{}\": {}.",
                spec.name,
                spec.options.iter().map(|(o, _)| *o).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}
