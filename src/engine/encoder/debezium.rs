//! Debezium's own forms of column values, for the debezium envelope in its
//! compatible mode (`debezium.compat`): what Debezium's Postgres connector writes
//! with its default settings through Kafka Connect's JsonConverter
//! (`decimal.handling.mode=precise`, `time.precision.mode=adaptive`,
//! `binary.handling.mode=bytes`, `interval.handling.mode=numeric`), so that a
//! consumer written for Debezium reads our events unchanged. Each form below was
//! compared with Debezium 3.6's output (`tests/integration/test_debezium_oracle.py`).
//!
//! | type | Debezium's form |
//! |---|---|
//! | `numeric(p,s)` | base64 of the unscaled value's two's-complement bytes |
//! | `numeric` | `{"scale": s, "value": <base64 as above>}` (VariableScaleDecimal) |
//! | `bytea` | base64 |
//! | `json`, `jsonb` | the text, as a JSON string (io.debezium.data.Json) |
//! | `date` | days since 1970-01-01 |
//! | `time(0..3)` / `time` | milliseconds / microseconds since midnight |
//! | `timetz` | the time in UTC, `HH:MM:SS[.f]Z`, fraction without trailing zeros (ZonedTime) |
//! | `timestamp(0..3)` / `timestamp` | milliseconds / microseconds since the epoch |
//! | `timestamptz(p)` | ISO 8601 in UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, p fraction digits (6 by default; ZonedTimestamp) |
//! | `interval` | microseconds, a month counted as 30.4375 days (MicroDuration) |
//!
//! Everything else (integers, floats, booleans, text, uuid, enums, arrays of
//! those) already has the form Debezium gives it, and goes through
//! [`super::json::cell_to_json`]. Values without a Debezium form here (numeric
//! NaN, infinite dates and timestamps) keep their text.
//!
//! Debezium's other handling modes change some forms ([`super::modes`], each under
//! Debezium's option name): `decimal.handling.mode = string | double`,
//! `time.precision.mode = adaptive_time_microseconds | connect`,
//! `binary.handling.mode = base64 | base64-url-safe | hex` and
//! `interval.handling.mode = string`.
//!
//! [`write_row`] is the `json` format's row writer in this mode: the events'
//! layout stays the `json` format's, with the fields Debezium 3 adds.

use base64::Engine as _;
use serde_json::{json, Value};

use super::avro::{date_days, decimal_bytes, interval_parts, time_micros};
use super::json::{cell_to_json, civil_from_days, timestamp_micros, write_row_with, write_value, JsonEncoder};
use super::modes::{BinaryMode, DecimalMode, Modes};
use crate::engine::change::Column;
use crate::engine::envelope::RowImage;
use crate::engine::error::{Result, SinkError};
use crate::engine::types::TypeKind;

/// The `json` format of a sink with `debezium.compat`: rows in Debezium's forms
/// under `modes`, events with Debezium 3's fields.
pub fn json_encoder(modes: Modes) -> JsonEncoder {
    JsonEncoder::with_rows(std::sync::Arc::new(move |row: &RowImage, out: &mut Vec<u8>| write_row(row, &modes, out)), modes)
}

/// A row image (or key) with each value in Debezium's form: the `json` format's
/// row writer for sinks with `debezium.compat`.
pub fn write_row(row: &RowImage, modes: &Modes, out: &mut Vec<u8>) -> Result<()> {
    write_row_with(row, out, |column, text, out| {
        write_value(&cell(column, text, modes)?, out);
        Ok(())
    })
}

/// Microseconds in Debezium's month (30.4375 days).
const MONTH_MICROS: i64 = 2_629_800_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// One non-NULL text-format value of `column` in Debezium's form.
pub fn cell(column: &Column, text: &str, modes: &Modes) -> Result<Value> {
    let ty = &column.ty;
    let typmod = column.type_modifier;
    let special = matches!(text, "NaN" | "infinity" | "-infinity" | "Infinity" | "-Infinity");
    if special {
        return cell_to_json(ty, text);
    }
    match &ty.kind {
        TypeKind::Numeric if modes.decimal == DecimalMode::String => Ok(Value::String(text.to_owned())),
        TypeKind::Numeric if modes.decimal == DecimalMode::Double => {
            let v: f64 = text.parse().map_err(|_| SinkError::permanent(format!("malformed {} value: not a number", ty.name)))?;
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        TypeKind::Numeric if typmod >= 4 => {
            let (precision, scale) = ((((typmod - 4) >> 16) & 0xffff) as u32, ((typmod - 4) & 0xffff) as u32);
            Ok(b64(&decimal_bytes(ty, text, precision, scale)?))
        }
        TypeKind::Numeric => {
            let scale = text.split_once('.').map_or(0, |(_, f)| f.len()) as u32;
            Ok(json!({"scale": scale, "value": b64(&decimal_bytes(ty, text, u32::MAX, scale)?)}))
        }
        TypeKind::Bytea => {
            let bytes = super::bytea_from_hex(text).ok_or_else(|| SinkError::permanent(format!("malformed {} value: not hex", ty.name)))?;
            Ok(match modes.binary {
                BinaryMode::Bytes | BinaryMode::Base64 => b64(&bytes),
                BinaryMode::Base64UrlSafe => Value::String(base64::engine::general_purpose::URL_SAFE.encode(&bytes)),
                BinaryMode::Hex => Value::String(text[2..].to_owned()),
            })
        }
        TypeKind::Json | TypeKind::Jsonb => Ok(Value::String(text.to_owned())),
        TypeKind::Date => Ok(Value::from(date_days(ty, text)?)),
        TypeKind::Time => {
            let micros = time_micros(ty, text)?;
            Ok(Value::from(if modes.millis(&ty.kind, typmod) { micros / 1000 } else { micros }))
        }
        TypeKind::TimeTz => time_in_utc(column, text).map(Value::String),
        TypeKind::Timestamp => {
            let micros = micros_of(column, text, false)?;
            Ok(Value::from(if modes.millis(&ty.kind, typmod) { micros.div_euclid(1000) } else { micros }))
        }
        TypeKind::TimestampTz => {
            let digits = if (0..=6).contains(&typmod) { typmod as u32 } else { 6 };
            Ok(Value::String(iso_utc(micros_of(column, text, true)?, digits)))
        }
        TypeKind::Interval => {
            let (months, days, micros) = interval_parts(ty, text)?;
            if modes.interval_string {
                return Ok(Value::String(iso_duration(months, days, micros)));
            }
            Ok(Value::from(i64::from(months) * MONTH_MICROS + i64::from(days) * DAY_MICROS + micros))
        }
        _ => cell_to_json(ty, text),
    }
}

/// An interval as Debezium's ISO 8601 string (`io.debezium.time.Interval`):
/// `P<y>Y<m>M<d>DT<h>H<m>M<s>S`, every part written, seconds with their fraction.
fn iso_duration(months: i32, days: i32, micros: i64) -> String {
    let (years, months) = (months / 12, months % 12);
    let (hours, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
    let (minutes, rest) = (rest / 60_000_000, rest % 60_000_000);
    let sign = if rest < 0 { "-" } else { "" };
    let (secs, frac) = ((rest / 1_000_000).abs(), (rest % 1_000_000).abs());
    format!("P{years}Y{months}M{days}DT{hours}H{minutes}M{sign}{secs}{}S", fraction(frac))
}

fn micros_of(column: &Column, text: &str, with_zone: bool) -> Result<i64> {
    let micros = timestamp_micros(text, with_zone).map_err(|reason| SinkError::permanent(format!("malformed {} value: {reason}", column.ty.name)))?;
    i64::try_from(micros).map_err(|_| SinkError::permanent(format!("{} value out of range", column.ty.name)))
}

/// `.f` with trailing zeros removed (none when the fraction is zero), as Java's
/// ISO formatters print a fraction of a second.
fn fraction(micros: i64) -> String {
    if micros == 0 {
        return String::new();
    }
    format!(".{micros:06}").trim_end_matches('0').to_owned()
}

/// Microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.fZ` with `digits`
/// fraction digits (none for 0), as Debezium's ZonedTimestamp prints a column of
/// that precision.
fn iso_utc(micros: i64, digits: u32) -> String {
    let (days, in_day) = (micros.div_euclid(DAY_MICROS), micros.rem_euclid(DAY_MICROS));
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1_000_000;
    let fraction = match digits {
        0 => String::new(),
        n => format!(".{:0width$}", (in_day % 1_000_000) / 10i64.pow(6 - n), width = n as usize),
    };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{fraction}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `HH:MM:SS[.ffffff]±HH[:MM[:SS]]` → the same time in UTC, `HH:MM:SS[.f]Z`.
fn time_in_utc(column: &Column, text: &str) -> Result<String> {
    let bad = || SinkError::permanent(format!("malformed {} value: not a time with a zone", column.ty.name));
    let at = text.rfind(['+', '-']).ok_or_else(bad)?;
    let (time, zone) = text.split_at(at);
    let micros = time_micros(&column.ty, time)?;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let mut offset = 0i64;
    for (i, part) in zone[1..].split(':').enumerate() {
        let n: i64 = part.parse().map_err(|_| bad())?;
        offset += n * [3600, 60, 1].get(i).copied().ok_or_else(bad)?;
    }
    let utc = (micros - sign * offset * 1_000_000).rem_euclid(DAY_MICROS);
    let secs = utc / 1_000_000;
    Ok(format!("{:02}:{:02}:{:02}{}Z", secs / 3600, secs / 60 % 60, secs % 60, fraction(utc % 1_000_000)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::change::{Cell, Change, OldImage, Relation};
    use crate::engine::encoder::json::JsonEncoder;
    use crate::engine::encoder::Encoder;
    use crate::engine::envelope::tests::{t, txn};
    use crate::engine::envelope::Payload;
    use crate::engine::envelope::{Envelope, EnvelopeKind, Op};
    use crate::engine::types::PgType;

    fn col(oid: u32, typmod: i32) -> Column {
        Column { name: "c".into(), ty: PgType::from_oid(oid), type_modifier: typmod, is_identity: false }
    }

    /// The values Debezium 3.6.1 wrote for the oracle test's columns
    /// (docs/debezium-differences.md), and a few more edges.
    #[test]
    fn values_take_debezium_s_forms() {
        let numeric_12_3 = ((12 << 16) | 3) + 4;
        let cases: &[(u32, i32, &str, Value)] = &[
            (1700, -1, "12345678901234567890.123456789", json!({"scale": 9, "value": "J+QbMka+ybFuOYEV"})),
            (1700, numeric_12_3, "123456789.125", json!("HL6ZGoU=")),
            (17, -1, "\\x00ff10", json!("AP8Q")),
            (114, -1, r#"{"a": [1, 2.50, null], "b": "x"}"#, json!(r#"{"a": [1, 2.50, null], "b": "x"}"#)),
            (3802, -1, "null", json!("null")),
            (1082, -1, "2024-02-29", json!(19782)),
            (1083, -1, "13:14:15.123456", json!(47_655_123_456i64)),
            (1083, 3, "13:14:15.123", json!(47_655_123)),
            (1266, -1, "13:14:15.5+02", json!("11:14:15.5Z")),
            (1266, -1, "00:30:00-01:30", json!("02:00:00Z")),
            (1114, -1, "2024-07-03 18:43:05.312345", json!(1_720_032_185_312_345i64)),
            (1114, 3, "2024-07-03 18:43:05.312", json!(1_720_032_185_312i64)),
            (1184, -1, "2024-07-03 16:43:05.312345+00", json!("2024-07-03T16:43:05.312345Z")),
            (1184, -1, "2024-07-03 18:43:05.5+02", json!("2024-07-03T16:43:05.500000Z")),
            (1184, -1, "2100-01-01 00:00:00+00", json!("2100-01-01T00:00:00.000000Z")),
            (1184, 3, "2024-07-03 18:43:05.5+02", json!("2024-07-03T16:43:05.500Z")),
            (1184, 0, "1969-12-31 23:59:59+00", json!("1969-12-31T23:59:59Z")),
            (1186, -1, "1 year 2 mons 3 days 04:05:06.789", json!(37_091_106_789_000i64)),
            (1186, -1, "-00:00:01", json!(-1_000_000)),
            (1700, -1, "NaN", json!("NaN")),
            (1184, -1, "infinity", json!("infinity")),
            (23, -1, "42", json!(42)),
        ];
        for (oid, typmod, text, want) in cases {
            assert_eq!(&cell(&col(*oid, *typmod), text, &Modes::default()).unwrap(), want, "{oid} {text}");
        }
    }

    #[test]
    fn debezium_compat_keys_deletes_key_changes_and_values_as_debezium_does() {
        let col = |name: &str, oid: u32, key: bool| Column { name: name.into(), ty: PgType::from_oid(oid), type_modifier: -1, is_identity: key };
        let rel = Arc::new(Relation {
            id: 2,
            namespace: "public".into(),
            name: "ev".into(),
            replica_identity: b'd',
            columns: vec![col("id", 23, true), col("at", 1184, false), col("doc", 3802, false)],
            meta: None,
        });
        let enc = json_encoder(Modes::default());
        let mut env = Envelope::new(EnvelopeKind::Debezium, false, vec!["id".into()], "s", "db").debezium_compat(true);
        let row = |id: &str| vec![t(id), t("2024-07-03 16:43:05.5+00"), t(r#"{"a": 1}"#)];
        let run = |env: &mut Envelope, change: Change| {
            let mut out = vec![];
            env.apply(&txn(vec![change.clone()]), change, crate::engine::lsn::Lsn(0x100), &mut out).unwrap();
            out
        };
        // An update that changes the key: delete (with the old row), its tombstone, create.
        let key_only = OldImage { key_only: true, cells: vec![t("3"), Cell::Null, Cell::Null] };
        let out = run(&mut env, Change::Update { relation: rel.clone(), old: Some(key_only), new: row("30") });
        let ops: Vec<_> = out.iter().map(|d| d.op).collect();
        assert_eq!(ops, vec![Op::Delete, Op::Delete, Op::Insert]);
        let keys: Vec<_> = out.iter().map(|d| String::from_utf8(enc.encode_key(d.key.as_ref().unwrap()).unwrap()).unwrap()).collect();
        assert_eq!(keys, vec![r#"{"id":3}"#, r#"{"id":3}"#, r#"{"id":30}"#]);
        assert_eq!(enc.encode_value(&out[1].payload).unwrap(), None, "a tombstone");
        let create: Value = serde_json::from_slice(&enc.encode_value(&out[2].payload).unwrap().unwrap()).unwrap();
        assert_eq!(create["op"], "c");
        assert_eq!(create["after"], serde_json::json!({"id": 30, "at": "2024-07-03T16:43:05.500000Z", "doc": "{\"a\": 1}"}));
        assert_eq!(create["ts_us"], 1_720_032_185_312_345i64);
        assert_eq!(create["source"]["ts_ns"], 1_720_032_185_312_345_000i64);
        assert!(create["source"]["origin"].is_null() && create["source"].get("origin_lsn").is_some());
        let delete: Value = serde_json::from_slice(&enc.encode_value(&out[0].payload).unwrap().unwrap()).unwrap();
        assert_eq!((delete["op"].as_str(), delete["before"]["id"].as_i64(), delete["after"].is_null()), (Some("d"), Some(3), true));
        // An update that keeps the key stays one event; a delete gets its tombstone.
        let out = run(&mut env, Change::Update { relation: rel.clone(), old: None, new: row("30") });
        assert_eq!(out.iter().map(|d| d.op).collect::<Vec<_>>(), vec![Op::Update]);
        let out =
            run(&mut env, Change::Delete { relation: rel.clone(), old: OldImage { key_only: true, cells: vec![t("30"), Cell::Null, Cell::Null] } });
        assert_eq!(
            out.iter().map(|d| (d.op, matches!(d.payload, Payload::Tombstone))).collect::<Vec<_>>(),
            vec![(Op::Delete, false), (Op::Delete, true)]
        );
        // Without the switch: the values and events of before.
        let mut plain = Envelope::new(EnvelopeKind::Debezium, false, vec!["id".into()], "s", "db");
        let out =
            run(&mut plain, Change::Delete { relation: rel.clone(), old: OldImage { key_only: true, cells: vec![t("30"), Cell::Null, Cell::Null] } });
        assert_eq!(out.len(), 1);
        let v: Value = serde_json::from_slice(&JsonEncoder::default().encode_value(&out[0].payload).unwrap().unwrap()).unwrap();
        assert!(v.get("ts_us").is_none());
    }

    /// The values Debezium 3.6.1 wrote under its other handling modes (the
    /// oracle test's "modes" runs).
    #[test]
    fn handling_modes_change_the_forms_as_debezium_s_do() {
        let mut m = Modes::default();
        for (o, v) in [("decimal.handling.mode", "string"), ("time.precision.mode", "connect"), ("binary.handling.mode", "hex"), ("interval.handling.mode", "string")] {
            m.set(o, v).unwrap();
        }
        let numeric_12_3 = ((12 << 16) | 3) + 4;
        let cases: &[(u32, i32, &str, Value)] = &[
            (1700, -1, "12345678901234567890.123456789", json!("12345678901234567890.123456789")),
            (1700, numeric_12_3, "0.000", json!("0.000")),
            (17, -1, "\\x00ff10", json!("00ff10")),
            (1082, -1, "2024-02-29", json!(19782)),
            (1083, -1, "13:14:15.123456", json!(47_655_123)),
            (1114, -1, "2024-07-03 18:43:05.312345", json!(1_720_032_185_312i64)),
            (1186, -1, "1 year 2 mons 3 days 04:05:06.789", json!("P1Y2M3DT4H5M6.789S")),
            (1186, -1, "-1 days +02:03:00.5", json!("P0Y0M-1DT2H3M0.5S")),
        ];
        for (oid, typmod, text, want) in cases {
            assert_eq!(&cell(&col(*oid, *typmod), text, &m).unwrap(), want, "{oid} {text}");
        }
        let mut m = Modes::default();
        for (o, v) in [("decimal.handling.mode", "double"), ("time.precision.mode", "adaptive_time_microseconds"), ("binary.handling.mode", "base64-url-safe")] {
            m.set(o, v).unwrap();
        }
        assert_eq!(cell(&col(1700, -1), "-2.5", &m).unwrap(), json!(-2.5));
        assert_eq!(cell(&col(1083, 3), "13:14:15.123", &m).unwrap(), json!(47_655_123_000i64), "time in microseconds at any precision");
        assert_eq!(cell(&col(1114, 3), "2024-07-03 18:43:05.312", &m).unwrap(), json!(1_720_032_185_312i64), "timestamps stay adaptive");
        assert_eq!(cell(&col(17, -1), "\\xfbff", &m).unwrap(), json!("-_8="));
        assert!(m.set("binary.handling.mode", "octal").unwrap_err().hint.unwrap().contains("base64-url-safe"));
    }

    #[test]
    fn a_negative_unconstrained_numeric_keeps_its_sign_and_scale() {
        let v = cell(&col(1700, -1), "-1.50", &Modes::default()).unwrap();
        // -150 at scale 2: two's complement 0xFF6A.
        assert_eq!(v, json!({"scale": 2, "value": "/2o="}));
    }
}
