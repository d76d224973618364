//! Rows to Iceberg: the Iceberg schema of a source table (Postgres types mapped to
//! Iceberg's), and the Arrow batch of a batch's rows laid out by the Iceberg
//! table's current schema (columns matched by name, field ids from the table),
//! each text value parsed into its typed form.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray, Float32Array, Float64Array, Int32Array,
    Int64Array, LargeBinaryArray, LargeStringArray, ListArray, RecordBatch, StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, TimeUnit};
use iceberg::spec::{ListType, NestedField, PrimitiveType, Schema, Type};

use crate::engine::change::{Cell, Column};
use crate::engine::encoder::avro::{date_days, time_micros};
use crate::engine::encoder::json::timestamp_micros;
use crate::engine::envelope::RowImage;
use crate::engine::error::{Result, SinkError};
use crate::engine::types::{PgType, TypeKind};

/// Iceberg's decimals hold at most 38 digits.
const MAX_DECIMAL_PRECISION: u32 = 38;

/// The Iceberg type a column is written as. `numeric` with a precision up to 38
/// is a decimal of that precision and scale; unconstrained or wider `numeric`,
/// json, intervals and anything else are strings in their Postgres text form
/// (nothing is rounded). A one-dimensional array of those is a list (element id
/// `element_id`; the catalog assigns fresh ids).
pub fn iceberg_type(c: &Column, element_id: i32) -> Type {
    match &c.ty.kind {
        TypeKind::Array(element) if !matches!(element.kind, TypeKind::Array(_) | TypeKind::Composite(_) | TypeKind::Unresolved) => {
            let element = Column { name: String::new(), ty: (**element).clone(), type_modifier: c.type_modifier, is_identity: false };
            Type::List(ListType { element_field: Arc::new(NestedField::list_element(element_id, Type::Primitive(primitive_type(&element)), false)) })
        }
        _ => Type::Primitive(primitive_type(c)),
    }
}

fn primitive_type(c: &Column) -> PrimitiveType {
    match &c.ty.kind {
        TypeKind::Bool => PrimitiveType::Boolean,
        TypeKind::Int2 | TypeKind::Int4 => PrimitiveType::Int,
        TypeKind::Int8 | TypeKind::Oid => PrimitiveType::Long,
        TypeKind::Float4 => PrimitiveType::Float,
        TypeKind::Float8 => PrimitiveType::Double,
        TypeKind::Numeric => match decimal_of(c.type_modifier) {
            Some((precision, scale)) => PrimitiveType::Decimal { precision, scale },
            None => PrimitiveType::String,
        },
        TypeKind::Date => PrimitiveType::Date,
        TypeKind::Time => PrimitiveType::Time,
        TypeKind::Timestamp => PrimitiveType::Timestamp,
        TypeKind::TimestampTz => PrimitiveType::Timestamptz,
        TypeKind::Uuid => PrimitiveType::Uuid,
        TypeKind::Bytea => PrimitiveType::Binary,
        _ => PrimitiveType::String,
    }
}

/// `numeric(p, s)` with p ≤ 38: (p, s).
fn decimal_of(typmod: i32) -> Option<(u32, u32)> {
    if typmod < 4 {
        return None;
    }
    let precision = ((typmod - 4) >> 16) as u32 & 0xffff;
    let scale = ((typmod - 4) & 0xffff) as u32;
    (precision <= MAX_DECIMAL_PRECISION && scale <= precision).then_some((precision, scale))
}

/// A new table's schema: the source's columns in order, all optional, ids 1..n
/// (list elements after them).
pub fn schema_of(columns: &[Column]) -> Result<Schema> {
    let n = columns.len() as i32;
    let fields = columns.iter().enumerate().map(|(i, c)| Arc::new(NestedField::optional(i as i32 + 1, &c.name, iceberg_type(c, n + 1 + i as i32))));
    Schema::builder().with_fields(fields).build().map_err(|e| SinkError::permanent(format!("could not make the Iceberg schema: {e}")))
}

/// The batch's rows as Arrow columns of the table's current schema. A table
/// column the row's relation does not have (dropped at the source) is NULL.
/// Values that do not fit their column fail the batch, naming the rows (by
/// index into `rows`) in the error's `refused`.
pub fn arrow_batch(schema: &Schema, rows: &[&RowImage]) -> Result<RecordBatch> {
    let mut bad: Vec<(usize, SinkError)> = Vec::new();
    let arrow = iceberg::arrow::schema_to_arrow_schema(schema).map_err(|e| SinkError::permanent(format!("Iceberg schema has no Arrow form: {e}")))?;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(arrow.fields().len());
    for field in arrow.fields() {
        let name = field.name();
        let texts: Vec<Option<(&PgType, &str)>> = rows
            .iter()
            .map(|row| {
                let col = row.relation.column_index(name)?;
                match &row.cells[col] {
                    Cell::Text(t) => Some((&row.relation.columns[col].ty, t.as_str())),
                    _ => None,
                }
            })
            .collect();
        columns.push(column(name, field.data_type(), &texts, &mut bad)?);
    }
    if !bad.is_empty() {
        bad.sort_by_key(|(i, _)| *i);
        let mut refused: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        refused.dedup();
        let (_, first) = bad.swap_remove(0);
        let more = if refused.len() > 1 { format!(" ({} rows in all)", refused.len()) } else { String::new() };
        return Err(SinkError { refused, ..SinkError::permanent(format!("{}{more}", first.message)) });
    }
    RecordBatch::try_new(Arc::new(arrow), columns).map_err(|e| SinkError::permanent(format!("could not assemble the Arrow batch: {e}")))
}

fn bad(column: &str, ty: &PgType, value: &str, why: &str) -> SinkError {
    SinkError::permanent(format!("value \"{value}\" of column \"{column}\" ({}) cannot be written to Iceberg: {why}", ty.name))
}

/// One Arrow column of `ty` from the rows' text values; a value that does not
/// parse is NULL here and recorded in `refused` with its row.
fn column(name: &str, ty: &DataType, texts: &[Option<(&PgType, &str)>], refused: &mut Vec<(usize, SinkError)>) -> Result<ArrayRef> {
    fn each<T>(
        name: &str,
        texts: &[Option<(&PgType, &str)>],
        refused: &mut Vec<(usize, SinkError)>,
        parse: impl Fn(&PgType, &str) -> std::result::Result<T, String>,
    ) -> Result<Vec<Option<T>>> {
        let mut out = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            out.push(match t {
                None => None,
                Some((ty, v)) => match parse(ty, v) {
                    Ok(x) => Some(x),
                    Err(why) => {
                        refused.push((i, bad(name, ty, v, &why)));
                        None
                    }
                },
            });
        }
        Ok(out)
    }
    let msg = |e: SinkError| e.to_string();
    let array: ArrayRef = match ty {
        DataType::Boolean => Arc::new(BooleanArray::from(each(name, texts, refused, |_, v| Ok(matches!(v, "t" | "true")))?)),
        DataType::Int32 => Arc::new(Int32Array::from(each(name, texts, refused, |_, v| v.parse::<i32>().map_err(|e| e.to_string()))?)),
        DataType::Int64 => Arc::new(Int64Array::from(each(name, texts, refused, |_, v| v.parse::<i64>().map_err(|e| e.to_string()))?)),
        DataType::Float32 => Arc::new(Float32Array::from(each(name, texts, refused, |_, v| v.parse::<f32>().map_err(|e| e.to_string()))?)),
        DataType::Float64 => Arc::new(Float64Array::from(each(name, texts, refused, |_, v| v.parse::<f64>().map_err(|e| e.to_string()))?)),
        DataType::Decimal128(p, s) => {
            let values = each(name, texts, refused, |_, v| unscaled(v, *p as u32, *s as u32))?;
            Arc::new(Decimal128Array::from(values).with_precision_and_scale(*p, *s).map_err(|e| SinkError::permanent(e.to_string()))?)
        }
        DataType::Date32 => Arc::new(Date32Array::from(each(name, texts, refused, |ty, v| {
            date_days(ty, v).map_err(msg).and_then(|d| i32::try_from(d).map_err(|_| "out of range".to_string()))
        })?)),
        DataType::Time64(TimeUnit::Microsecond) => Arc::new(Time64MicrosecondArray::from(each(name, texts, refused, |ty, v| time_micros(ty, v).map_err(msg))?)),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let with_zone = tz.is_some();
            let values = each(name, texts, refused, |_, v| {
                timestamp_micros(v, with_zone).map_err(str::to_string).and_then(|us| i64::try_from(us).map_err(|_| "out of range".to_string()))
            })?;
            Arc::new(TimestampMicrosecondArray::from(values).with_timezone_opt(tz.clone()))
        }
        DataType::Utf8 => Arc::new(StringArray::from(texts.iter().map(|t| t.map(|(_, v)| v)).collect::<Vec<_>>())),
        DataType::LargeUtf8 => Arc::new(LargeStringArray::from(texts.iter().map(|t| t.map(|(_, v)| v)).collect::<Vec<_>>())),
        DataType::Binary | DataType::LargeBinary => {
            let values = each(name, texts, refused, |_, v| bytea(v))?;
            let refs: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            if matches!(ty, DataType::Binary) {
                Arc::new(BinaryArray::from_opt_vec(refs))
            } else {
                Arc::new(LargeBinaryArray::from_opt_vec(refs))
            }
        }
        DataType::FixedSizeBinary(16) => {
            let values = each(name, texts, refused, |_, v| uuid(v))?;
            Arc::new(
                FixedSizeBinaryArray::try_from_sparse_iter_with_size(values.into_iter(), 16).map_err(|e| SinkError::permanent(e.to_string()))?,
            )
        }
        DataType::List(element) => {
            // Each value's elements (their text), one child column for all rows.
            let mut offsets: Vec<i32> = vec![0];
            let mut valid: Vec<bool> = Vec::with_capacity(texts.len());
            let mut types: Vec<PgType> = Vec::new();
            let mut items: Vec<(usize, Option<String>)> = Vec::new();
            for (i, t) in texts.iter().enumerate() {
                match t {
                    None => valid.push(false),
                    Some((ty, v)) => match array_elements(v) {
                        Ok(values) => {
                            let element = match &ty.kind {
                                TypeKind::Array(e) => (**e).clone(),
                                _ => PgType::new(25, "text", TypeKind::Text),
                            };
                            let at = types.iter().position(|t| *t == element).unwrap_or_else(|| {
                                types.push(element);
                                types.len() - 1
                            });
                            items.extend(values.into_iter().map(|x| (at, x)));
                            valid.push(true);
                        }
                        Err(why) => {
                            refused.push((i, bad(name, ty, v, &why)));
                            valid.push(false);
                        }
                    },
                }
                offsets.push(items.len() as i32);
            }
            let child_texts: Vec<Option<(&PgType, &str)>> = items.iter().map(|(at, v)| v.as_deref().map(|v| (&types[*at], v))).collect();
            let mut child_refused = Vec::new();
            let values = column(element.name(), element.data_type(), &child_texts, &mut child_refused)?;
            for (k, e) in child_refused {
                let row = offsets.partition_point(|&o| o as usize <= k) - 1;
                refused.push((row, e));
            }
            Arc::new(
                ListArray::try_new(element.clone(), OffsetBuffer::new(offsets.into()), values, Some(NullBuffer::from(valid)))
                    .map_err(|e| SinkError::permanent(e.to_string()))?,
            )
        }
        other => {
            return Err(SinkError::permanent(format!("column \"{name}\" of the Iceberg table has type {other}, which pg_sink does not write"))
                .hint("Write to a table whose columns have primitive types."))
        }
    };
    Ok(array)
}

/// A one-dimensional array's text (`{a,"b c",NULL}`, optionally with bounds
/// `[0:2]={..}`) → its elements' texts, `None` for NULL.
fn array_elements(text: &str) -> std::result::Result<Vec<Option<String>>, String> {
    let body = match text.find("={") {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    let inner = body.strip_prefix('{').and_then(|b| b.strip_suffix('}')).ok_or("not an array")?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.push(chars.next().ok_or("unterminated element")?),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err("unterminated element".into()),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' {
                    return Err("a multi-dimensional array has no Iceberg list form".into());
                }
                item.push(c);
                chars.next();
            }
            let trimmed = item.trim_end().len();
            item.truncate(trimmed);
        }
        out.push(if !quoted && item.eq_ignore_ascii_case("NULL") { None } else { Some(item) });
        match chars.next() {
            None => return Ok(out),
            Some(',') => continue,
            Some(c) => return Err(format!("unexpected '{c}'")),
        }
    }
}

/// Decimal text → its unscaled value at `scale`, within `precision` digits.
fn unscaled(text: &str, precision: u32, scale: u32) -> std::result::Result<i128, String> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err("not a finite decimal".into());
    }
    if frac.trim_end_matches('0').len() > scale as usize {
        return Err(format!("more than {scale} fractional digits"));
    }
    let digits = int.trim_start_matches('0').bytes().chain(frac.bytes().chain(std::iter::repeat(b'0')).take(scale as usize));
    let mut value: i128 = 0;
    let mut count = 0u32;
    for d in digits {
        if count > 0 || d != b'0' {
            count += 1;
        }
        value = value * 10 + i128::from(d - b'0');
    }
    if count > precision {
        return Err(format!("more than {precision} digits"));
    }
    Ok(if neg { -value } else { value })
}

/// `\x0a0b` (bytea_output hex) → bytes.
fn bytea(text: &str) -> std::result::Result<Vec<u8>, String> {
    let hex = text.strip_prefix("\\x").ok_or("not hex bytea output")?;
    hex_bytes(hex)
}

fn hex_bytes(hex: &str) -> std::result::Result<Vec<u8>, String> {
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string())).collect()
}

fn uuid(text: &str) -> std::result::Result<Vec<u8>, String> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let b = hex_bytes(&hex)?;
    if b.len() != 16 {
        return Err("not a uuid".into());
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::Relation;
    use crate::engine::types::PgType;
    use arrow_array::Array;

    fn col(name: &str, oid: u32, typmod: i32) -> Column {
        Column { name: name.into(), ty: PgType::from_oid(oid), type_modifier: typmod, is_identity: false }
    }

    fn rel(columns: Vec<Column>) -> Arc<Relation> {
        Arc::new(Relation { id: 1, namespace: "public".into(), name: "t".into(), replica_identity: b'd', columns, meta: None })
    }

    fn row(rel: &Arc<Relation>, cells: &[Option<&str>]) -> RowImage {
        RowImage {
            relation: rel.clone(),
            indices: (0..cells.len()).collect::<Vec<_>>().into(),
            cells: cells.iter().map(|c| c.map_or(Cell::Null, |t| Cell::Text(t.into()))).collect::<Vec<_>>().into(),
        }
    }

    fn numeric(p: i32, s: i32) -> i32 {
        ((p << 16) | s) + 4
    }

    #[test]
    fn postgres_types_map_to_iceberg_types() {
        let cols = vec![
            col("id", 23, -1),
            col("big", 20, -1),
            col("price", 1700, numeric(10, 2)),
            col("any_numeric", 1700, -1),
            col("wide", 1700, numeric(50, 2)),
            col("day", 1082, -1),
            col("at", 1114, -1),
            col("at_tz", 1184, -1),
            col("u", 2950, -1),
            col("b", 17, -1),
            col("doc", 3802, -1),
        ];
        let s = schema_of(&cols).unwrap();
        let types: Vec<String> = s.as_struct().fields().iter().map(|f| f.field_type.to_string()).collect();
        assert_eq!(types, ["int", "long", "decimal(10, 2)", "string", "string", "date", "timestamp", "timestamptz", "uuid", "binary", "string"]);
        assert_eq!(s.as_struct().fields().iter().map(|f| f.id).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
    }

    #[test]
    fn values_are_typed_and_a_dropped_column_is_null() {
        let cols = vec![col("id", 23, -1), col("price", 1700, numeric(10, 2)), col("day", 1082, -1), col("at_tz", 1184, -1), col("u", 2950, -1), col("b", 17, -1)];
        let schema = schema_of(&cols).unwrap();
        let r = rel(cols.clone());
        // The source lost "b": its rows have no such column.
        let narrower = rel(cols[..5].to_vec());
        let rows = [
            row(&r, &[Some("1"), Some("-12.5"), Some("2024-02-29"), Some("2024-01-01 00:00:00+00"), Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), Some("\\x0aff")]),
            row(&narrower, &[Some("2"), None, Some("1970-01-02"), Some("1970-01-01 01:00:00+01"), None]),
        ];
        let batch = arrow_batch(&schema, &rows.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let price = batch.column(1).as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(price.value(0), -1250);
        assert!(price.is_null(1));
        let day = batch.column(2).as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!((day.value(0), day.value(1)), (19782, 1));
        let at = batch.column(3).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!((at.value(0), at.value(1)), (1_704_067_200_000_000, 0));
        let u = batch.column(4).as_any().downcast_ref::<FixedSizeBinaryArray>().unwrap();
        assert_eq!(u.value(0)[..2], [0xa0, 0xee]);
        assert!(batch.column(5).is_null(1), "a column the row's relation lacks is NULL");
    }

    #[test]
    fn one_dimensional_arrays_are_lists_of_typed_elements() {
        let int_array = Column { name: "nums".into(), ty: PgType::from_oid(1007), type_modifier: -1, is_identity: false };
        let text_array = Column { name: "tags".into(), ty: PgType::from_oid(1009), type_modifier: -1, is_identity: false };
        let cols = vec![int_array, text_array];
        let schema = schema_of(&cols).unwrap();
        let elements: Vec<String> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| match f.field_type.as_ref() {
                Type::List(l) => l.element_field.field_type.to_string(),
                other => panic!("not a list: {other}"),
            })
            .collect();
        assert_eq!(elements, ["int", "string"]);
        let r = rel(cols);
        let rows = [
            row(&r, &[Some("{1,NULL,3}"), Some(r#"{a,"b c","NULL",NULL,"x\"y"}"#)]),
            row(&r, &[None, Some("{}")]),
            row(&r, &[Some("[0:1]={7,8}"), None]),
        ];
        let batch = arrow_batch(&schema, &rows.iter().collect::<Vec<_>>()).unwrap();
        let nums = batch.column(0).as_any().downcast_ref::<ListArray>().unwrap();
        assert!(nums.is_null(1));
        let first = nums.value(0);
        let first = first.as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!((first.value(0), first.is_null(1), first.value(2)), (1, true, 3));
        assert_eq!(nums.value(2).len(), 2);
        let tags = batch.column(1).as_any().downcast_ref::<ListArray>().unwrap();
        let t0 = tags.value(0);
        let t0 = t0.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((t0.value(0), t0.value(1), t0.value(2), t0.is_null(3), t0.value(4)), ("a", "b c", "NULL", true, "x\"y"));
        assert_eq!(tags.value(1).len(), 0);
        // An element that does not fit, and a multi-dimensional value: the row is named.
        let e = arrow_batch(&schema, &[&row(&r, &[Some("{1,x}"), None]), &row(&r, &[Some("{{1},{2}}"), None])]).unwrap_err();
        assert_eq!(e.refused, [0, 1], "{e}");
    }

    #[test]
    fn a_value_that_does_not_fit_is_a_permanent_error_naming_it() {
        let cols = vec![col("price", 1700, numeric(4, 1))];
        let schema = schema_of(&cols).unwrap();
        let r = rel(cols);
        for v in ["12345.6", "1.25", "NaN"] {
            let e = arrow_batch(&schema, &[&row(&r, &[Some(v)])]).unwrap_err();
            assert!(!e.is_transient() && e.to_string().contains("price") && e.to_string().contains(v), "{e}");
            assert_eq!(e.refused, [0]);
        }
        // Every row that does not fit is named, so the others can be delivered.
        let rows = [row(&r, &[Some("1.5")]), row(&r, &[Some("99999")]), row(&r, &[None]), row(&r, &[Some("0.05")])];
        let e = arrow_batch(&schema, &rows.iter().collect::<Vec<_>>()).unwrap_err();
        assert_eq!(e.refused, [1, 3]);
        assert!(e.to_string().contains("99999") && e.to_string().contains("2 rows"), "{e}");
        assert_eq!(unscaled("-0.50", 4, 1).unwrap(), -5);
        assert_eq!(unscaled("999.9", 4, 1).unwrap(), 9999);
    }
}
