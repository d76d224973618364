//! Unchanged TOAST values. pgoutput leaves a large value out of an UPDATE that did
//! not change it (marker `u`), unless the table's replica identity is FULL; the WAL
//! never holds it, so setting FULL later cannot bring back changes already written.
//! This module owns what such a column carries instead, chosen by the sink option
//! `unchanged_toast`:
//!
//! * `fetch` (default) — the value is read from the source row, by its replica
//!   identity key, when the change is delivered. If the column changed again since,
//!   the change that changed it is later in the same stream and carries the new value,
//!   so every target ends with the source's value. If the row is gone (deleted or
//!   re-keyed since, which is again a later change of the stream), an upsert change
//!   is dropped (the later delete decides the key's state) and other envelopes carry
//!   the placeholder.
//! * `placeholder` — Debezium's `__debezium_unavailable_value` (as a JSON string for
//!   json/jsonb columns, as a one-element array for arrays).
//! * `fail` — the sink fails; only a resync brings the target back.
//!
//! The read runs through the engine's [`SqlSession`], so with the owner's privileges.

use std::collections::HashMap;
use std::sync::Arc;

use super::change::{Cell, OldImage, Relation};
use super::connector::table::quote_ident;
use super::connector::{sql_types, SqlSession};
use super::error::{Result, SinkError};
use super::types::TypeKind;

/// Debezium's `unavailable.value.placeholder` default.
pub const PLACEHOLDER: &str = "__debezium_unavailable_value";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnchangedToast {
    #[default]
    Fetch,
    Placeholder,
    Fail,
}

impl UnchangedToast {
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "fetch" => Ok(UnchangedToast::Fetch),
            "placeholder" => Ok(UnchangedToast::Placeholder),
            "fail" => Ok(UnchangedToast::Fail),
            other => Err(SinkError::config(format!("invalid value for option \"unchanged_toast\": \"{other}\""))
                .detail("It decides what an UPDATE's unchanged large (TOASTed) column carries when the table's replica identity is not FULL.")
                .hint("Use fetch (read the value from the source row), placeholder (Debezium's __debezium_unavailable_value) or fail.")),
        }
    }
}

/// What filling found.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// Every unchanged cell now holds a value.
    Complete,
    /// The source row is gone (a later change of the stream deletes or re-keys it).
    RowGone,
}

/// Reads unchanged values from the source; caches the column types per relation.
#[derive(Default)]
pub struct ToastReader {
    types: HashMap<u32, (Arc<Relation>, Vec<String>)>,
}

impl ToastReader {
    /// Fill the `Unchanged` cells of `new` from the source row with the same key, as
    /// committed once transaction `xid` (the change's) is visible: a snapshot older
    /// than the change would miss the row or hold an older value of it.
    pub fn fetch(
        &mut self,
        relation: &Arc<Relation>,
        old: Option<&OldImage>,
        new: &mut [Cell],
        xid: u32,
        sql: &mut dyn SqlSession,
    ) -> Result<Filled> {
        let wanted: Vec<usize> = (0..new.len()).filter(|&i| new[i] == Cell::Unchanged).collect();
        if wanted.is_empty() {
            return Ok(Filled::Complete);
        }
        let mut key: Vec<(usize, String)> = Vec::new();
        for i in (0..relation.columns.len()).filter(|&i| relation.columns[i].is_identity) {
            let value = match &new[i] {
                Cell::Text(t) => t.clone(),
                _ => match old.map(|o| &o.cells[i]) {
                    Some(Cell::Text(t)) => t.clone(),
                    _ => return Ok(Filled::RowGone),
                },
            };
            key.push((i, value));
        }
        if key.is_empty() {
            return Ok(Filled::RowGone);
        }
        let types = self.types_of(relation, sql)?;
        let select: Vec<String> = wanted
            .iter()
            .map(|&i| {
                let c = quote_ident(&relation.columns[i].name);
                // num_nulls sees the datum, not a composite's fields; format('%s')
                // is the type's output function, as pgoutput sends it.
                format!("CASE WHEN pg_catalog.num_nulls({c}) = 1 THEN NULL ELSE pg_catalog.format('%s', {c}) END")
            })
            .collect();
        let conds: Vec<String> =
            key.iter().enumerate().map(|(n, (i, _))| format!("{} = ${}::{}", quote_ident(&relation.columns[*i].name), n + 1, types[*i])).collect();
        let stmt = format!(
            "SELECT {} FROM {}.{} WHERE {} LIMIT 1",
            select.join(", "),
            quote_ident(&relation.namespace),
            quote_ident(&relation.name),
            conds.join(" AND ")
        );
        let params: Vec<Option<&str>> = key.iter().map(|(_, v)| Some(v.as_str())).collect();
        let rows = sql.query_latest(&stmt, &params, xid).map_err(|e| {
            SinkError::permanent(format!(
                "could not read the unchanged TOAST values of \"{}\" from the source: {}",
                relation.qualified_name(),
                e.message
            ))
            .detail("The UPDATE left a large column unchanged and the table's replica identity is not FULL, so the value is read from the table.")
            .hint("Give the sink's owner SELECT on the table, or set unchanged_toast => 'placeholder'.")
        })?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(Filled::RowGone);
        };
        for (&i, value) in wanted.iter().zip(row) {
            new[i] = value.map_or(Cell::Null, Cell::Text);
        }
        Ok(Filled::Complete)
    }

    fn types_of(&mut self, relation: &Arc<Relation>, sql: &mut dyn SqlSession) -> Result<&Vec<String>> {
        let stale = self.types.get(&relation.id).is_none_or(|(r, _)| !Arc::ptr_eq(r, relation) && **r != **relation);
        if stale {
            let types = sql_types(relation, sql)?;
            self.types.insert(relation.id, (relation.clone(), types));
        }
        Ok(&self.types[&relation.id].1)
    }
}

/// Put the placeholder into every `Unchanged` cell.
pub fn fill_placeholder(relation: &Relation, new: &mut [Cell]) {
    for (i, cell) in new.iter_mut().enumerate() {
        if *cell == Cell::Unchanged {
            *cell = Cell::Text(match &relation.columns[i].ty.kind {
                TypeKind::Json | TypeKind::Jsonb => format!("\"{PLACEHOLDER}\""),
                TypeKind::Array(_) => format!("{{{PLACEHOLDER}}}"),
                _ => PLACEHOLDER.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::Column;
    use crate::engine::types::PgType;

    fn rel() -> Arc<Relation> {
        let col = |name: &str, oid: u32, key: bool| Column { name: name.into(), ty: PgType::from_oid(oid), type_modifier: -1, is_identity: key };
        Arc::new(Relation {
            id: 7,
            namespace: "app".into(),
            name: "we\"ird".into(),
            replica_identity: b'd',
            columns: vec![col("id", 23, true), col("doc", 25, false), col("j", 3802, false)],
            meta: None,
        })
    }

    /// Answers format_type and the row read; records the statements.
    struct Source {
        row: Option<Vec<Option<String>>>,
        seen: Vec<(String, Vec<Option<String>>)>,
        /// The `after_xid` of every read of the latest committed state.
        latest: Vec<u32>,
    }
    impl SqlSession for Source {
        fn execute(&mut self, _: &str, _: &[Option<&str>]) -> Result<u64> {
            Err(SinkError::permanent("read only"))
        }
        fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
            self.seen.push((sql.to_string(), params.iter().map(|p| p.map(str::to_string)).collect()));
            if sql.contains("format_type") {
                return Ok(vec![vec![Some("integer".into())], vec![Some("text".into())], vec![Some("jsonb".into())]]);
            }
            Ok(self.row.clone().into_iter().collect())
        }
        fn query_or_none(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<Vec<Vec<Option<String>>>>> {
            self.query(sql, params).map(Some)
        }
        fn query_latest(&mut self, sql: &str, params: &[Option<&str>], after_xid: u32) -> Result<Vec<Vec<Option<String>>>> {
            self.latest.push(after_xid);
            self.query(sql, params)
        }
    }

    #[test]
    fn reads_only_the_unchanged_columns_by_quoted_key() {
        let r = rel();
        let mut src = Source { row: Some(vec![Some("big".into())]), seen: vec![], latest: vec![] };
        let mut new = vec![Cell::Text("5".into()), Cell::Unchanged, Cell::Text("{}".into())];
        let mut reader = ToastReader::default();
        assert_eq!(reader.fetch(&r, None, &mut new, 9, &mut src).unwrap(), Filled::Complete);
        assert_eq!(new[1], Cell::Text("big".into()));
        let (stmt, params) = src.seen.last().unwrap();
        assert!(stmt.contains("FROM \"app\".\"we\"\"ird\" WHERE \"id\" = $1::integer LIMIT 1"), "{stmt}");
        assert!(stmt.contains("format('%s', \"doc\")") && !stmt.contains("\"j\""), "{stmt}");
        assert_eq!(params, &vec![Some("5".to_string())]);
        // The row is read as committed once the change's transaction is visible.
        assert_eq!(src.latest, vec![9]);
        // Types are asked once per relation version.
        let mut again = vec![Cell::Text("6".into()), Cell::Unchanged, Cell::Unchanged];
        src.row = Some(vec![Some("b2".into()), None]);
        reader.fetch(&r, None, &mut again, 9, &mut src).unwrap();
        assert_eq!(again, vec![Cell::Text("6".into()), Cell::Text("b2".into()), Cell::Null]);
        assert_eq!(src.seen.iter().filter(|(s, _)| s.contains("format_type")).count(), 1);
    }

    #[test]
    fn a_row_gone_or_without_key_is_reported() {
        let r = rel();
        let mut src = Source { row: None, seen: vec![], latest: vec![] };
        let mut new = vec![Cell::Text("5".into()), Cell::Unchanged, Cell::Null];
        assert_eq!(ToastReader::default().fetch(&r, None, &mut new, 9, &mut src).unwrap(), Filled::RowGone);
        assert_eq!(new[1], Cell::Unchanged);
        let mut nokey = vec![Cell::Unchanged, Cell::Unchanged, Cell::Null];
        assert_eq!(ToastReader::default().fetch(&r, None, &mut nokey, 9, &mut src).unwrap(), Filled::RowGone);
        // The old key image stands in for a key the new image does not carry.
        let old = OldImage { key_only: true, cells: vec![Cell::Text("4".into()), Cell::Null, Cell::Null] };
        src.row = Some(vec![Some("a".into()), Some("b".into())]);
        let mut new = vec![Cell::Unchanged, Cell::Unchanged, Cell::Null];
        assert_eq!(ToastReader::default().fetch(&r, Some(&old), &mut new, 9, &mut src).unwrap(), Filled::Complete);
        assert_eq!(src.seen.last().unwrap().1, vec![Some("4".to_string())]);
    }

    #[test]
    fn placeholders_keep_each_type_encodable() {
        let r = rel();
        let mut new = vec![Cell::Text("1".into()), Cell::Unchanged, Cell::Unchanged];
        fill_placeholder(&r, &mut new);
        assert_eq!(new[1], Cell::Text(PLACEHOLDER.into()));
        assert_eq!(new[2], Cell::Text(format!("\"{PLACEHOLDER}\"")));
        assert!(UnchangedToast::parse("Fetch").is_ok() && UnchangedToast::parse("nope").unwrap_err().hint.is_some());
    }
}
