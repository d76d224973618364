//! The `text` and `bytes` formats: a single column, as Materialize defines them.
//! `text` is the column's text form as UTF-8; `bytes` is a `bytea` column's raw bytes
//! or another scalar's text bytes. Images of more than one column, arrays and
//! composites (for `bytes`) and the Debezium envelope are refused with a clear error
//! (checked when the sink is created, see [`check_single_column`]).

use super::Encoder;
use crate::engine::change::Cell;
use crate::engine::envelope::{Payload, RowImage};
use crate::engine::error::{Result, SinkError};
use crate::engine::types::{PgType, TypeKind};

pub struct TextEncoder {
    pub bytes: bool,
}

/// Check at creation that `columns` (name, type) can be encoded in `format`.
pub fn check_single_column(format: &str, what: &str, columns: &[(String, PgType)]) -> Result<()> {
    let upper = format.to_ascii_uppercase();
    if columns.len() != 1 {
        return Err(SinkError::config(format!("{upper} format requires a single column, but the {what} has {}", columns.len()))
            .detail(format!("Columns: {}.", columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")))
            .hint("TEXT and BYTES encode exactly one column; use JSON or AVRO, or a KEY / source of one column."));
    }
    let (name, ty) = &columns[0];
    if format == "bytes" && matches!(ty.kind, TypeKind::Array(_) | TypeKind::Composite(_)) {
        return Err(SinkError::config(format!("BYTES format only supports scalar types; column \"{name}\" is {}", ty.name))
            .hint("Use TEXT, JSON or AVRO for this column."));
    }
    Ok(())
}

impl TextEncoder {
    fn image(&self, row: &RowImage) -> Result<Option<Vec<u8>>> {
        let mut fields = row.fields();
        let (Some((col, cell)), None) = (fields.next(), fields.next()) else {
            return Err(SinkError::permanent(format!(
                "{} format requires a single column, but \"{}\" now has {}",
                self.name().to_ascii_uppercase(),
                row.relation.qualified_name(),
                row.indices.len()
            ))
            .hint("Drop the sink and create it with JSON or AVRO, or a one-column source."));
        };
        match cell {
            Cell::Null => Ok(None),
            Cell::Unchanged => Err(SinkError::permanent(format!("column \"{}\" holds an unchanged TOAST value that was not filled in", col.name))
                .hint("Set REPLICA IDENTITY FULL on the table so updates carry the old value.")),
            Cell::Text(t) if self.bytes && col.ty.kind == TypeKind::Bytea => {
                super::bytea_from_hex(t).map(Some).ok_or_else(|| SinkError::permanent(format!("malformed bytea in column \"{}\"", col.name)))
            }
            Cell::Text(t) => Ok(Some(t.as_bytes().to_vec())),
        }
    }
}

impl Encoder for TextEncoder {
    fn name(&self) -> &'static str {
        if self.bytes {
            "bytes"
        } else {
            "text"
        }
    }

    fn encode_key(&self, key: &RowImage) -> Result<Vec<u8>> {
        Ok(self.image(key)?.unwrap_or_default())
    }

    fn encode_value(&self, payload: &Payload) -> Result<Option<Vec<u8>>> {
        match payload {
            Payload::Tombstone | Payload::Truncate(_) => Ok(None),
            Payload::Row(row) => self.image(row),
            // A message's content, byte for byte.
            Payload::Message(m) => Ok(Some(m.content.to_vec())),
            Payload::Schema(_) => Ok(None),
            Payload::Debezium(_) | Payload::Transaction(_) => {
                Err(SinkError::permanent(format!("the debezium envelope cannot be encoded as {}", self.name().to_ascii_uppercase())))
            }
        }
    }
}
