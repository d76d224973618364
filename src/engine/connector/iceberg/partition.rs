//! `partition_by`: the partition spec of a table pg_sink creates, in RisingWave's
//! spelling: a comma-separated list of `column` (identity), `year(column)`,
//! `month(..)`, `day(..)`, `hour(..)`, `bucket(n, column)` and
//! `truncate(width, column)`. Rows are split by partition when written (by the
//! table's own spec, whoever made the table).

use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};

use crate::engine::error::{Result, SinkError};

/// One partition field: the source column, the transform, the field's name.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionField {
    pub column: String,
    pub transform: Transform,
    pub name: String,
}

fn bad(text: &str, why: impl std::fmt::Display) -> SinkError {
    SinkError::config(format!("invalid value for option \"partition_by\": \"{text}\": {why}"))
        .hint("List columns and transforms, e.g. 'region, day(created_at), bucket(16, id), truncate(4, name)'.")
}

/// Parse `partition_by`.
pub fn parse(text: &str) -> Result<Vec<PartitionField>> {
    let mut out: Vec<PartitionField> = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(bad(text, "unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(bad(text, "unbalanced parentheses"));
    }
    items.push(&text[start..]);
    for item in items.iter().map(|i| i.trim()) {
        if item.is_empty() {
            return Err(bad(text, "an empty item"));
        }
        let field = match item.split_once('(') {
            None => PartitionField { column: ident(text, item)?, transform: Transform::Identity, name: item.to_string() },
            Some((func, rest)) => {
                let args: Vec<&str> = rest.strip_suffix(')').ok_or_else(|| bad(text, format!("\"{item}\" lacks its ')'")))?.split(',').map(str::trim).collect();
                let func = func.trim().to_ascii_lowercase();
                let (transform, column, suffix) = match (func.as_str(), args.as_slice()) {
                    ("year", [c]) => (Transform::Year, *c, "year".to_string()),
                    ("month", [c]) => (Transform::Month, *c, "month".to_string()),
                    ("day", [c]) => (Transform::Day, *c, "day".to_string()),
                    ("hour", [c]) => (Transform::Hour, *c, "hour".to_string()),
                    ("identity", [c]) => (Transform::Identity, *c, String::new()),
                    ("bucket", [n, c]) => (Transform::Bucket(count(text, n)?), *c, "bucket".to_string()),
                    ("truncate", [n, c]) => (Transform::Truncate(count(text, n)?), *c, "trunc".to_string()),
                    _ => return Err(bad(text, format!("unknown transform \"{item}\""))),
                };
                let column = ident(text, column)?;
                let name = if suffix.is_empty() { column.clone() } else { format!("{column}_{suffix}") };
                PartitionField { column, transform, name }
            }
        };
        if out.iter().any(|f| f.name == field.name) {
            return Err(bad(text, format!("\"{}\" twice", field.name)));
        }
        out.push(field);
    }
    Ok(out)
}

fn count(text: &str, n: &str) -> Result<u32> {
    n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| bad(text, format!("\"{n}\" is not a positive count")))
}

fn ident(text: &str, c: &str) -> Result<String> {
    if c.is_empty() || c.contains(|ch: char| ch.is_whitespace() || "()\"'".contains(ch)) {
        return Err(bad(text, format!("\"{c}\" is not a column name")));
    }
    Ok(c.to_string())
}

/// The spec over `schema` (a new table's), checking that each column exists and
/// takes its transform.
pub fn spec(fields: &[PartitionField], schema: &Schema) -> Result<UnboundPartitionSpec> {
    // Spec id 0, the first spec: Java's REST catalog requires the id.
    let mut b = UnboundPartitionSpec::builder().with_spec_id(0);
    for f in fields {
        let source = schema.field_by_name(&f.column).ok_or_else(|| {
            SinkError::config(format!("partition_by names column \"{}\", which the source does not have", f.column)).hint("Partition by the source's columns.")
        })?;
        let ty = source.field_type.as_primitive_type().ok_or_else(|| SinkError::config(format!("partition_by cannot partition by list column \"{}\"", f.column)))?;
        f.transform
            .result_type(&iceberg::spec::Type::Primitive(ty.clone()))
            .map_err(|e| SinkError::config(format!("partition_by: {} cannot apply to column \"{}\" ({ty}): {e}", f.transform, f.column)))?;
        b = b.add_partition_field(source.id, &f.name, f.transform).map_err(|e| SinkError::config(format!("partition_by: {e}")))?;
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risingwave_spelling_parses_and_bad_lists_are_refused() {
        let f = parse("region, day(created_at), bucket(16, id), truncate(4,name), identity(kind)").unwrap();
        let got: Vec<(String, String, String)> = f.iter().map(|f| (f.column.clone(), f.transform.to_string(), f.name.clone())).collect();
        assert_eq!(
            got,
            [
                ("region".into(), "identity".into(), "region".into()),
                ("created_at".into(), "day".into(), "created_at_day".into()),
                ("id".into(), "bucket[16]".into(), "id_bucket".into()),
                ("name".into(), "truncate[4]".into(), "name_trunc".into()),
                ("kind".into(), "identity".into(), "kind".into()),
            ]
        );
        for bad in ["", "a,,b", "day(a", "bucket(0, a)", "bucket(a)", "nope(a)", "a, a", "a b", "day(a))"] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("partition_by") && e.hint.is_some(), "{bad}: {e}");
        }
    }
}
