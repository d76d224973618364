//! The Postgres type model the encoders need: which JSON/Avro/... shape a column's
//! text-format value maps to. Built-in types are known here by OID; user-defined
//! ones (domains, enums, composites, their arrays) are resolved by the glue through
//! a [`TypeResolver`] and cached per relation.

#[derive(Debug, Clone, PartialEq)]
pub struct PgType {
    pub oid: u32,
    /// `format_type` spelling, e.g. `integer`, `numeric(10,2)`, `text[]`; used for
    /// creating target tables and in messages.
    pub name: String,
    pub kind: TypeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TypeKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Bytea,
    Json,
    Jsonb,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    /// Element type; multi-dimensional arrays nest.
    Array(Box<PgType>),
    /// Fields of a composite (row) type, in attribute order.
    Composite(Vec<(String, PgType)>),
    Enum,
    /// Anything else: carried as its text form.
    Other,
    /// Not a built-in and not resolved yet; the glue resolves it before encoding.
    Unresolved,
}

impl PgType {
    pub fn new(oid: u32, name: impl Into<String>, kind: TypeKind) -> Self {
        PgType { oid, name: name.into(), kind }
    }

    /// The type for an OID as far as the engine knows without a catalog.
    pub fn from_oid(oid: u32) -> PgType {
        builtin(oid).unwrap_or_else(|| PgType::new(oid, format!("oid {oid}"), TypeKind::Unresolved))
    }

    pub fn is_resolved(&self) -> bool {
        match &self.kind {
            TypeKind::Unresolved => false,
            TypeKind::Array(e) => e.is_resolved(),
            TypeKind::Composite(fields) => fields.iter().all(|(_, t)| t.is_resolved()),
            _ => true,
        }
    }
}

const SCALARS: &[(u32, &str, fn() -> TypeKind)] = &[
    (16, "boolean", || TypeKind::Bool),
    (17, "bytea", || TypeKind::Bytea),
    (18, "\"char\"", || TypeKind::Text),
    (19, "name", || TypeKind::Text),
    (20, "bigint", || TypeKind::Int8),
    (21, "smallint", || TypeKind::Int2),
    (23, "integer", || TypeKind::Int4),
    (25, "text", || TypeKind::Text),
    (26, "oid", || TypeKind::Oid),
    (114, "json", || TypeKind::Json),
    (142, "xml", || TypeKind::Other),
    (600, "point", || TypeKind::Other),
    (650, "cidr", || TypeKind::Other),
    (700, "real", || TypeKind::Float4),
    (701, "double precision", || TypeKind::Float8),
    (718, "circle", || TypeKind::Other),
    (774, "macaddr8", || TypeKind::Other),
    (790, "money", || TypeKind::Other),
    (829, "macaddr", || TypeKind::Other),
    (869, "inet", || TypeKind::Other),
    (1042, "character", || TypeKind::Text),
    (1043, "character varying", || TypeKind::Text),
    (1082, "date", || TypeKind::Date),
    (1083, "time without time zone", || TypeKind::Time),
    (1114, "timestamp without time zone", || TypeKind::Timestamp),
    (1184, "timestamp with time zone", || TypeKind::TimestampTz),
    (1186, "interval", || TypeKind::Interval),
    (1266, "time with time zone", || TypeKind::TimeTz),
    (1560, "bit", || TypeKind::Other),
    (1562, "bit varying", || TypeKind::Other),
    (1700, "numeric", || TypeKind::Numeric),
    (2950, "uuid", || TypeKind::Uuid),
    (3614, "tsvector", || TypeKind::Other),
    (3802, "jsonb", || TypeKind::Jsonb),
    (3904, "int4range", || TypeKind::Other),
    (3906, "numrange", || TypeKind::Other),
    (3908, "tsrange", || TypeKind::Other),
    (3910, "tstzrange", || TypeKind::Other),
    (3912, "daterange", || TypeKind::Other),
    (3926, "int8range", || TypeKind::Other),
];

/// Built-in array OIDs and their element OIDs.
const ARRAYS: &[(u32, u32)] = &[
    (1000, 16),
    (1001, 17),
    (1002, 18),
    (1003, 19),
    (1016, 20),
    (1005, 21),
    (1007, 23),
    (1009, 25),
    (1028, 26),
    (199, 114),
    (143, 142),
    (1017, 600),
    (651, 650),
    (1021, 700),
    (1022, 701),
    (791, 790),
    (1040, 829),
    (1041, 869),
    (1014, 1042),
    (1015, 1043),
    (1182, 1082),
    (1183, 1083),
    (1115, 1114),
    (1185, 1184),
    (1187, 1186),
    (1270, 1266),
    (1561, 1560),
    (1563, 1562),
    (1231, 1700),
    (2951, 2950),
    (3807, 3802),
];

/// The built-in type for `oid`, if the engine knows it.
pub fn builtin(oid: u32) -> Option<PgType> {
    if let Some((_, name, kind)) = SCALARS.iter().find(|(o, _, _)| *o == oid) {
        return Some(PgType::new(oid, *name, kind()));
    }
    let (_, elem) = ARRAYS.iter().find(|(o, _)| *o == oid)?;
    let elem = builtin(*elem)?;
    Some(PgType::new(oid, format!("{}[]", elem.name), TypeKind::Array(Box::new(elem))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_builtin_scalars_and_arrays() {
        assert_eq!(builtin(23).unwrap().kind, TypeKind::Int4);
        let arr = builtin(1007).unwrap();
        assert_eq!(arr.name, "integer[]");
        assert_eq!(arr.kind, TypeKind::Array(Box::new(builtin(23).unwrap())));
        assert!(builtin(999_999).is_none());
        assert!(!PgType::from_oid(999_999).is_resolved());
        assert!(PgType::from_oid(3807).is_resolved());
    }
}
