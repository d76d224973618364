//! Schema changes of a captured table. pgoutput carries no DDL, so the extension's
//! event trigger reports each `ALTER TABLE` of a table a sink captures as a
//! transactional logical message (prefix [`DDL_PREFIX`]) holding the table's shape
//! before and after, at its exact place in the stream. This module owns that
//! message's form, the column-by-column difference (by attribute number, so a
//! rename is a rename and not a drop plus an add), and the `schema.changes`
//! option that says what a sink does with it.

use serde::Deserialize;

use super::error::{Result, SinkError};

/// The prefix of the event trigger's messages.
pub const DDL_PREFIX: &str = "pg_sink.ddl";

/// One column of a table's shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ShapeColumn {
    pub attnum: i32,
    pub name: String,
    /// `format_type(atttypid, atttypmod)`: the type as SQL spells it.
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub not_null: bool,
}

/// A table's columns and replica identity key, as the catalog had them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TableShape {
    pub schema: String,
    pub table: String,
    pub columns: Vec<ShapeColumn>,
    #[serde(default)]
    pub key: Vec<String>,
}

/// One `ALTER TABLE` (or several in one statement) of a captured table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SchemaChange {
    pub relid: u32,
    /// `None` when the trigger had not seen the table before (nothing to compare).
    pub before: Option<TableShape>,
    pub after: TableShape,
}

/// What a target must do to follow a schema change, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alteration {
    Rename { from: String, to: String },
    Retype { column: String, from: String, to: String },
    Drop { column: String },
    Add { column: String, ty: String },
}

impl SchemaChange {
    /// The message's content (JSON) as a change.
    pub fn parse(content: &[u8]) -> Result<SchemaChange> {
        serde_json::from_slice(content).map_err(|e| {
            SinkError::permanent(format!("a schema change message is malformed: {e}"))
                .hint("The message comes from the extension's event trigger; a message of this prefix written by hand is not understood.")
        })
    }

    /// The columns renamed, retyped, dropped and added, matched by attribute number.
    pub fn alterations(&self) -> Vec<Alteration> {
        let Some(before) = &self.before else { return Vec::new() };
        let mut renames = Vec::new();
        let mut retypes = Vec::new();
        let mut drops = Vec::new();
        let mut adds = Vec::new();
        for old in &before.columns {
            match self.after.columns.iter().find(|c| c.attnum == old.attnum) {
                None => drops.push(Alteration::Drop { column: old.name.clone() }),
                Some(new) => {
                    if new.name != old.name {
                        renames.push(Alteration::Rename { from: old.name.clone(), to: new.name.clone() });
                    }
                    if new.ty != old.ty {
                        retypes.push(Alteration::Retype { column: new.name.clone(), from: old.ty.clone(), to: new.ty.clone() });
                    }
                }
            }
        }
        for new in &self.after.columns {
            if !before.columns.iter().any(|c| c.attnum == new.attnum) {
                adds.push(Alteration::Add { column: new.name.clone(), ty: new.ty.clone() });
            }
        }
        renames.into_iter().chain(retypes).chain(drops).chain(adds).collect()
    }

    /// The replica identity key changed (a target keyed by it cannot follow).
    pub fn key_changed(&self) -> bool {
        self.before.as_ref().is_some_and(|b| b.key != self.after.key)
    }

    /// `"orders": column "a" renamed to "b", ...` for messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .alterations()
            .iter()
            .map(|a| match a {
                Alteration::Rename { from, to } => format!("column \"{from}\" renamed to \"{to}\""),
                Alteration::Retype { column, from, to } => format!("column \"{column}\" changed from {from} to {to}"),
                Alteration::Drop { column } => format!("column \"{column}\" dropped"),
                Alteration::Add { column, ty } => format!("column \"{column}\" {ty} added"),
            })
            .chain(self.key_changed().then(|| format!("key ({}) became ({})", self.before_key().join(", "), self.after.key.join(", "))))
            .collect();
        format!("\"{}.{}\": {}", self.after.schema, self.after.table, if parts.is_empty() { "no column changed".into() } else { parts.join(", ") })
    }

    fn before_key(&self) -> Vec<String> {
        self.before.as_ref().map(|b| b.key.clone()).unwrap_or_default()
    }
}

/// `schema.changes`: what a sink does with a schema change of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handling {
    /// Targets that hold tables (`table`, `jdbc`) follow it; records of other
    /// targets carry the new shape from the next row on.
    #[default]
    Apply,
    /// The sink fails at the change, before anything after it is delivered.
    Stop,
    /// Nothing is done (a table target keeps its columns).
    Ignore,
}

impl Handling {
    pub fn parse(v: &str) -> Result<Handling> {
        match v.trim().to_ascii_lowercase().as_str() {
            "apply" => Ok(Handling::Apply),
            "stop" | "fail" => Ok(Handling::Stop),
            "ignore" | "skip" => Ok(Handling::Ignore),
            other => Err(SinkError::config(format!("invalid value for option \"schema.changes\": \"{other}\""))
                .hint("Give apply (the default), stop or ignore.")),
        }
    }
}

/// The error a sink stops with under `schema.changes = 'stop'` (and where a
/// target cannot follow a change).
pub fn stopped(change: &SchemaChange, why: &str) -> SinkError {
    SinkError::permanent(format!("schema change of {}", change.describe())).detail(why.to_string()).hint(
        "Change the target to match by hand and run SELECT sink.resync(name), or drop the sink and create it again; \
         schema.changes = 'ignore' lets the sink go on without following.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i32, name: &str, ty: &str) -> ShapeColumn {
        ShapeColumn { attnum, name: name.into(), ty: ty.into(), not_null: false }
    }

    fn shape(columns: Vec<ShapeColumn>, key: &[&str]) -> TableShape {
        TableShape { schema: "public".into(), table: "t".into(), columns, key: key.iter().map(|k| k.to_string()).collect() }
    }

    #[test]
    fn columns_are_matched_by_attribute_number() {
        let before = shape(vec![col(1, "id", "integer"), col(2, "a", "integer"), col(3, "b", "text"), col(4, "c", "text")], &["id"]);
        let after = shape(vec![col(1, "id", "integer"), col(2, "a2", "bigint"), col(4, "c", "text"), col(5, "b", "text")], &["id"]);
        let change = SchemaChange { relid: 7, before: Some(before), after };
        assert_eq!(
            change.alterations(),
            vec![
                Alteration::Rename { from: "a".into(), to: "a2".into() },
                Alteration::Retype { column: "a2".into(), from: "integer".into(), to: "bigint".into() },
                Alteration::Drop { column: "b".into() },
                Alteration::Add { column: "b".into(), ty: "text".into() },
            ],
            "a dropped column and a new one of the same name are not a rename"
        );
        assert!(!change.key_changed());
        assert_eq!(
            change.describe(),
            "\"public.t\": column \"a\" renamed to \"a2\", column \"a2\" changed from integer to bigint, column \"b\" dropped, column \"b\" text added"
        );
    }

    #[test]
    fn the_trigger_s_message_parses_and_garbage_does_not() {
        let msg = br#"{"relid": 16384, "before": null, "after": {"schema": "s", "table": "t", "columns": [{"attnum": 1, "name": "id", "type": "integer", "not_null": true}], "key": ["id"]}}"#;
        let c = SchemaChange::parse(msg).unwrap();
        assert_eq!((c.relid, c.after.columns[0].ty.as_str()), (16384, "integer"));
        assert!(c.alterations().is_empty(), "nothing to compare with");
        assert!(SchemaChange::parse(b"{\"relid\": 1}").is_err());
        let key = SchemaChange { relid: 1, before: Some(shape(vec![col(1, "id", "integer")], &["id"])), after: shape(vec![col(1, "id", "integer")], &[]) };
        assert!(key.key_changed());
        assert_eq!(Handling::parse("STOP").unwrap(), Handling::Stop);
        assert!(Handling::parse("maybe").unwrap_err().hint.is_some());
    }
}
