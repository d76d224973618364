//! Debezium's handling modes of values, as options of a sink in `debezium.compat`
//! (Debezium's names and values): how `numeric`, `time`/`timestamp`, `bytea` and
//! `interval` columns are written ([`super::debezium`]) and described
//! ([`super::connect`]).

use super::super::error::{Result, SinkError};
use super::super::types::TypeKind;

/// `decimal.handling.mode`: `numeric` as bytes (precise), its text, or a double.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecimalMode {
    #[default]
    Precise,
    String,
    Double,
}

/// `time.precision.mode`: `adaptive` follows each column's precision;
/// `adaptive_time_microseconds` makes every `time` microseconds; `connect` uses
/// Kafka Connect's own Date, Time and Timestamp (milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeMode {
    #[default]
    Adaptive,
    AdaptiveTimeMicroseconds,
    Connect,
}

/// `binary.handling.mode`: `bytea` as bytes (base64 in JSON) or as a string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BinaryMode {
    #[default]
    Bytes,
    Base64,
    Base64UrlSafe,
    Hex,
}

/// Debezium's handling modes of a sink in the compatible mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modes {
    pub decimal: DecimalMode,
    pub time: TimeMode,
    pub binary: BinaryMode,
    /// `interval.handling.mode = string`: ISO 8601 durations (`numeric`: microseconds).
    pub interval_string: bool,
}

/// The modes' options, as Debezium names them, with their values.
pub const MODE_OPTIONS: &[(&str, &[&str])] = &[
    ("decimal.handling.mode", &["precise", "string", "double"]),
    ("time.precision.mode", &["adaptive", "adaptive_time_microseconds", "connect"]),
    ("binary.handling.mode", &["bytes", "base64", "base64-url-safe", "hex"]),
    ("interval.handling.mode", &["numeric", "string"]),
];

impl Modes {
    /// Set the mode `option` to `value` (both checked against [`MODE_OPTIONS`]).
    pub fn set(&mut self, option: &str, value: &str) -> Result<()> {
        let v = value.trim().to_ascii_lowercase();
        let bad = || {
            let allowed = MODE_OPTIONS.iter().find(|(o, _)| *o == option).map_or(&[][..], |(_, v)| *v);
            SinkError::config(format!("invalid value for option \"{option}\": \"{value}\"")).hint(format!("Use one of: {}.", allowed.join(", ")))
        };
        match (option, v.as_str()) {
            ("decimal.handling.mode", "precise") => self.decimal = DecimalMode::Precise,
            ("decimal.handling.mode", "string") => self.decimal = DecimalMode::String,
            ("decimal.handling.mode", "double") => self.decimal = DecimalMode::Double,
            ("time.precision.mode", "adaptive") => self.time = TimeMode::Adaptive,
            ("time.precision.mode", "adaptive_time_microseconds") => self.time = TimeMode::AdaptiveTimeMicroseconds,
            ("time.precision.mode", "connect") => self.time = TimeMode::Connect,
            ("binary.handling.mode", "bytes") => self.binary = BinaryMode::Bytes,
            ("binary.handling.mode", "base64") => self.binary = BinaryMode::Base64,
            ("binary.handling.mode", "base64-url-safe") => self.binary = BinaryMode::Base64UrlSafe,
            ("binary.handling.mode", "hex") => self.binary = BinaryMode::Hex,
            ("interval.handling.mode", "numeric") => self.interval_string = false,
            ("interval.handling.mode", "string") => self.interval_string = true,
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// `time` and `timestamp` of precision `typmod` in milliseconds (else microseconds).
    pub fn millis(&self, kind: &TypeKind, typmod: i32) -> bool {
        match (self.time, kind) {
            (TimeMode::Connect, _) => true,
            (TimeMode::AdaptiveTimeMicroseconds, TypeKind::Time) => false,
            _ => (0..=3).contains(&typmod),
        }
    }
}

