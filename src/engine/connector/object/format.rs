//! The bytes of one object-store file: JSON lines, CSV or Parquet, from a run of
//! records that share one row shape. Rows come from the records' drafts (CSV and
//! Parquet) or from their encoded key and value (JSON lines).
//!
//! CSV and Parquet rows are `_pg_sink_op, _pg_sink_lsn, _pg_sink_commit_time`
//! followed by the source columns. An upsert delete carries its key columns and
//! NULL elsewhere; a truncate carries only the three leading columns.

use std::sync::Arc;

use parquet::basic::{LogicalType, Repetition, TimeUnit, Type as Physical};
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::super::{write_wrapped, Record};
use crate::engine::change::{Cell, Relation};
pub use crate::engine::encoder::json::civil_from_days;
use crate::engine::envelope::Payload;
use crate::engine::error::{Result, SinkError};
use crate::engine::types::TypeKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    JsonLines,
    Csv,
    Parquet,
}

impl FileFormat {
    pub fn parse(s: &str) -> Result<FileFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jsonl" | "json" | "ndjson" => Ok(FileFormat::JsonLines),
            "csv" => Ok(FileFormat::Csv),
            "parquet" => Ok(FileFormat::Parquet),
            other => Err(SinkError::config(format!("invalid value for option \"file_format\": \"{other}\"")).hint("Use jsonl, csv or parquet.")),
        }
    }
    pub fn extension(&self) -> &'static str {
        match self {
            FileFormat::JsonLines => "jsonl",
            FileFormat::Csv => "csv",
            FileFormat::Parquet => "parquet",
        }
    }
    /// Whether rows are written column by column (and so need one row shape per file).
    pub fn is_tabular(&self) -> bool {
        !matches!(self, FileFormat::JsonLines)
    }
}

/// Names of the leading columns of CSV and Parquet rows.
pub const META_COLUMNS: [&str; 3] = ["_pg_sink_op", "_pg_sink_lsn", "_pg_sink_commit_time"];

/// The relation a record's row belongs to, if it carries one.
pub fn relation_of(r: &Record) -> Option<&Arc<Relation>> {
    match &r.draft.payload {
        Payload::Row(row) => Some(&row.relation),
        Payload::Tombstone => r.draft.key.as_ref().map(|k| &k.relation),
        Payload::Truncate(rels) => rels.first(),
        Payload::Debezium(_) | Payload::Message(_) | Payload::Schema(_) | Payload::Transaction(_) => None,
    }
}

/// The record's cells by relation column index (`None` = NULL).
fn cells<'a>(r: &'a Record, width: usize) -> Result<Vec<Option<&'a str>>> {
    let mut out = vec![None; width];
    let image = match &r.draft.payload {
        Payload::Row(row) => Some(row),
        Payload::Tombstone => r.draft.key.as_ref(),
        Payload::Truncate(_) => None,
        Payload::Debezium(_) => return Err(SinkError::permanent("a debezium event cannot be written as a CSV or Parquet row")),
        Payload::Message(_) => return Err(SinkError::permanent("a logical message cannot be written as a CSV or Parquet row")),
        Payload::Schema(_) => None,
        Payload::Transaction(_) => return Err(SinkError::permanent("a transaction event cannot be written as a CSV or Parquet row")),
    };
    if let Some(img) = image {
        for (&i, cell) in img.indices.iter().map(|i| (i, &img.cells[*i])) {
            if i < width {
                out[i] = match cell {
                    Cell::Text(t) => Some(t.as_str()),
                    Cell::Null => None,
                    Cell::Unchanged => return Err(SinkError::permanent("an unchanged TOAST value reached a file row")),
                };
            }
        }
    }
    Ok(out)
}

/// `2026-11-21T14:03:07.123456Z` for microseconds since the epoch.
pub fn iso_utc(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Render records as one file.
pub fn render(format: FileFormat, records: &[Record], key_is_json: bool, value_is_json: bool) -> Result<Vec<u8>> {
    match format {
        FileFormat::JsonLines => {
            let mut out = Vec::with_capacity(records.iter().map(|r| r.value.as_ref().map_or(64, |v| v.len() + 160)).sum());
            for r in records {
                write_wrapped(r, key_is_json, value_is_json, &mut out);
                out.push(b'\n');
            }
            Ok(out)
        }
        FileFormat::Csv => render_csv(records),
        FileFormat::Parquet => render_parquet(records),
    }
}

fn shape(records: &[Record]) -> Result<Arc<Relation>> {
    records.iter().find_map(|r| relation_of(r).cloned()).ok_or_else(|| SinkError::permanent("a CSV or Parquet file needs rows with a known relation"))
}

fn csv_field(out: &mut Vec<u8>, v: Option<&str>) {
    let Some(v) = v else { return };
    if v.is_empty() || v.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) || v.starts_with(' ') || v.ends_with(' ') {
        out.push(b'"');
        for b in v.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(v.as_bytes());
    }
}

fn render_csv(records: &[Record]) -> Result<Vec<u8>> {
    let rel = shape(records)?;
    let width = rel.columns.len();
    let mut out = Vec::new();
    let header: Vec<&str> = META_COLUMNS.iter().copied().chain(rel.columns.iter().map(|c| c.name.as_str())).collect();
    for (i, h) in header.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(&mut out, Some(h));
    }
    out.extend_from_slice(b"\r\n");
    for r in records {
        let time = iso_utc(r.commit_time_us);
        out.extend_from_slice(r.draft.op.as_str().as_bytes());
        out.push(b',');
        out.extend_from_slice(r.stamp.lsn.as_bytes());
        out.push(b',');
        out.extend_from_slice(time.as_bytes());
        for v in cells(r, width)? {
            out.push(b',');
            csv_field(&mut out, v);
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

fn parquet_error(e: impl std::fmt::Display) -> SinkError {
    SinkError::permanent(format!("could not write a Parquet file: {e}"))
}

/// Parquet physical column type for a Postgres type.
fn column_kind(kind: &TypeKind) -> Physical {
    match kind {
        TypeKind::Bool => Physical::BOOLEAN,
        TypeKind::Int2 | TypeKind::Int4 => Physical::INT32,
        TypeKind::Int8 => Physical::INT64,
        TypeKind::Float4 => Physical::FLOAT,
        TypeKind::Float8 => Physical::DOUBLE,
        _ => Physical::BYTE_ARRAY,
    }
}

fn bad_value(column: &str, v: &str) -> SinkError {
    SinkError::permanent(format!("value \"{v}\" of column \"{column}\" does not fit its Parquet type"))
}

fn render_parquet(records: &[Record]) -> Result<Vec<u8>> {
    let rel = shape(records)?;
    let width = rel.columns.len();
    let string = |name: &str| {
        Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(Some(LogicalType::String))
            .build()
    };
    let mut fields = vec![
        string(META_COLUMNS[0]),
        string(META_COLUMNS[1]),
        Type::primitive_type_builder(META_COLUMNS[2], Physical::INT64)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(Some(LogicalType::Timestamp { is_adjusted_to_u_t_c: true, unit: TimeUnit::MICROS }))
            .build(),
    ];
    for c in &rel.columns {
        let physical = column_kind(&c.ty.kind);
        fields.push(if physical == Physical::BYTE_ARRAY {
            string(&c.name)
        } else {
            Type::primitive_type_builder(&c.name, physical).with_repetition(Repetition::OPTIONAL).build()
        });
    }
    let fields = fields.into_iter().map(|f| f.map(Arc::new)).collect::<std::result::Result<Vec<_>, _>>().map_err(parquet_error)?;
    let schema = Arc::new(Type::group_type_builder("pg_sink_row").with_fields(fields).build().map_err(parquet_error)?);
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());

    let rows: Vec<Vec<Option<&str>>> = records.iter().map(|r| cells(r, width)).collect::<Result<_>>()?;
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, props).map_err(parquet_error)?;
    let mut group = writer.next_row_group().map_err(parquet_error)?;
    let mut index = 0usize;
    while let Some(mut col) = group.next_column().map_err(parquet_error)? {
        let values: Vec<Option<&str>> = match index {
            0 => records.iter().map(|r| Some(r.draft.op.as_str())).collect(),
            1 => records.iter().map(|r| Some(r.stamp.lsn.as_str())).collect(),
            2 => vec![],
            i => rows.iter().map(|row| row[i - 3]).collect(),
        };
        let defs: Vec<i16> = if index == 2 { vec![1; records.len()] } else { values.iter().map(|v| i16::from(v.is_some())).collect() };
        let name = if index < 3 { META_COLUMNS[index] } else { rel.columns[index - 3].name.as_str() };
        let present = || values.iter().flatten().copied();
        match col.untyped() {
            ColumnWriter::Int64ColumnWriter(w) if index == 2 => {
                let times: Vec<i64> = records.iter().map(|r| r.commit_time_us).collect();
                w.write_batch(&times, Some(&defs), None).map_err(parquet_error)?;
            }
            ColumnWriter::ByteArrayColumnWriter(w) => {
                let v: Vec<ByteArray> = present().map(|s| ByteArray::from(s.as_bytes().to_vec())).collect();
                w.write_batch(&v, Some(&defs), None).map_err(parquet_error)?;
            }
            ColumnWriter::BoolColumnWriter(w) => {
                let v: Vec<bool> = present().map(|s| s == "t" || s == "true").collect();
                w.write_batch(&v, Some(&defs), None).map_err(parquet_error)?;
            }
            ColumnWriter::Int32ColumnWriter(w) => {
                let v: Vec<i32> = present().map(|s| s.parse().map_err(|_| bad_value(name, s))).collect::<Result<_>>()?;
                w.write_batch(&v, Some(&defs), None).map_err(parquet_error)?;
            }
            ColumnWriter::Int64ColumnWriter(w) => {
                let v: Vec<i64> = present().map(|s| s.parse().map_err(|_| bad_value(name, s))).collect::<Result<_>>()?;
                w.write_batch(&v, Some(&defs), None).map_err(parquet_error)?;
            }
            ColumnWriter::FloatColumnWriter(w) => {
                let v: Vec<f32> = present().map(|s| s.parse().map_err(|_| bad_value(name, s))).collect::<Result<_>>()?;
                w.write_batch(&v, Some(&defs), None).map_err(parquet_error)?;
            }
            ColumnWriter::DoubleColumnWriter(w) => {
                let v: Vec<f64> = present().map(|s| s.parse().map_err(|_| bad_value(name, s))).collect::<Result<_>>()?;
                w.write_batch(&v, Some(&defs), None).map_err(parquet_error)?;
            }
            _ => return Err(parquet_error("unexpected column writer")),
        }
        col.close().map_err(parquet_error)?;
        index += 1;
    }
    group.close().map_err(parquet_error)?;
    writer.into_inner().map_err(parquet_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::Column;
    use crate::engine::connector::TxnStamp;
    use crate::engine::envelope::{Draft, Op, RowImage};
    use crate::engine::lsn::Lsn;
    use crate::engine::types::PgType;

    fn rel() -> Arc<Relation> {
        let col = |name: &str, oid: u32| Column { name: name.into(), ty: PgType::from_oid(oid), type_modifier: -1, is_identity: name == "id" };
        Arc::new(Relation {
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: vec![col("id", 23), col("note", 25), col("ok", 16), col("x", 701)],
            meta: None,
        })
    }

    fn row(op: Op, cells: Vec<Cell>) -> Record {
        let rel = rel();
        let image = RowImage { relation: rel, indices: (0..4).collect::<Vec<_>>().into(), cells: cells.into() };
        Record {
            key: None,
            value: None,
            draft: Draft { key: None, payload: Payload::Row(image), op },
            commit_lsn: Lsn(0x10),
            ordinal: 0,
            commit_time_us: 1_763_733_787_123_456,
            stamp: Arc::new(TxnStamp { lsn: "0/10".into(), timestamp: String::new() }),
        }
    }

    fn tombstone(id: &str) -> Record {
        let mut cells = vec![Cell::Null; 4];
        cells[0] = Cell::Text(id.into());
        let key = RowImage { relation: rel(), indices: vec![0].into(), cells: cells.into() };
        let mut r = row(Op::Delete, vec![Cell::Null; 4]);
        r.draft = Draft { key: Some(key), payload: Payload::Tombstone, op: Op::Delete };
        r
    }

    fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    #[test]
    fn csv_quotes_what_needs_it_and_tells_null_from_empty() {
        let records = vec![
            row(Op::Insert, vec![t("1"), t("a,\"b\"\nc"), t("t"), t("1.5")]),
            row(Op::Update, vec![t("2"), t(""), Cell::Null, t("NaN")]),
            tombstone("3"),
        ];
        let text = String::from_utf8(render(FileFormat::Csv, &records, false, false).unwrap()).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "_pg_sink_op,_pg_sink_lsn,_pg_sink_commit_time,id,note,ok,x");
        assert_eq!(lines[1], "insert,0/10,2025-11-21T14:03:07.123456Z,1,\"a,\"\"b\"\"\nc\",t,1.5");
        assert_eq!(lines[2], "update,0/10,2025-11-21T14:03:07.123456Z,2,\"\",,NaN");
        assert_eq!(lines[3], "delete,0/10,2025-11-21T14:03:07.123456Z,3,,,");
    }

    #[test]
    fn parquet_files_read_back_typed() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let records = vec![row(Op::Insert, vec![t("1"), t("x"), t("t"), t("2.5")]), tombstone("2")];
        let bytes = render(FileFormat::Parquet, &records, false, false).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let rows: Vec<String> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap().to_string()).collect();
        assert!(
            rows[0].contains("id: 1") && rows[0].contains("note: \"x\"") && rows[0].contains("ok: true") && rows[0].contains("x: 2.5"),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("_pg_sink_op: \"delete\"") && rows[1].contains("id: 2") && rows[1].contains("note: null"), "{}", rows[1]);
    }

    #[test]
    fn a_value_that_does_not_fit_its_parquet_type_is_a_permanent_error() {
        let records = vec![row(Op::Insert, vec![t("one"), t("x"), t("t"), t("2.5")])];
        let e = render(FileFormat::Parquet, &records, false, false).unwrap_err();
        assert!(e.message.contains("\"one\"") && !e.is_transient());
    }

    #[test]
    fn civil_dates_round_trip() {
        use crate::engine::encoder::json::days_from_civil;
        for days in [-719_468, -1, 0, 11_017, 20_413, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso_utc(-1), "1969-12-31T23:59:59.999999Z");
    }
}
