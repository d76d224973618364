//! `schema.gate`: asked inside an `ALTER TABLE`'s own transaction (the
//! extension's event trigger), whether a sink could follow the change. A sink
//! that would stop or fail on it refuses it, so the `ALTER TABLE` fails with the
//! sink's name and reason instead of the sink failing later. Only an extension
//! can do this: the DDL is still open when the check runs.
//!
//! The rules are what the sinks do with a change (see [`super::schema_change`]):
//! - `schema.changes = 'stop'`: any change stops the sink; `ignore`: never refused.
//! - Targets that apply changes (`table`, `jdbc`) cannot change the key they
//!   upsert by, and convert a retyped column with a cast: only a type that holds
//!   every value of the old one (a widening) is let through. `jdbc` on
//!   MariaDB/MySQL also needs a column type there for each added or retyped
//!   column ([`mysql_type`]).
//! - `iceberg` keeps a field's type: a retype must be a widening of it.
//! - Anything else (records of any shape: Kafka, NATS, files, webhooks) follows,
//!   except that an Avro sink with a schema registry asks the registry whether
//!   the table's new schema is compatible with its subjects' latest versions
//!   ([`check_registry`]), as the registry would answer the sink's next record.

use super::change::Relation;
use super::connector::jdbc::{mysql_type, parse_target, Dialect};
use super::connector::ConnectorConfig;
use super::encoder::avro::{debezium_schema, row_schema};
use super::encoder::registry::Registry;
use super::encoder::Role;
use super::envelope::EnvelopeKind;
use super::options::SinkDefinition;
use super::schema_change::{Alteration, Handling, SchemaChange};

/// `Err(reason)` when the sink could not follow `change`.
pub fn check(change: &SchemaChange, def: &SinkDefinition) -> Result<(), String> {
    let alterations = change.alterations();
    if alterations.is_empty() && !change.key_changed() {
        return Ok(());
    }
    match def.schema_changes {
        Handling::Ignore => return Ok(()),
        Handling::Stop => return Err("the sink stops at every schema change (schema.changes = 'stop')".into()),
        Handling::Apply => {}
    }
    let connector = def.connector.name;
    // The jdbc connector's own reading of its URL says which database it is.
    let mysql = connector == "jdbc"
        && parse_target(&ConnectorConfig { options: def.connector_options.clone(), ..ConnectorConfig::empty() })
            .is_ok_and(|t| t.dialect == Dialect::MySql);
    if mysql {
        for a in &alterations {
            if let Alteration::Add { column, ty: to } | Alteration::Retype { column, to, .. } = a {
                if mysql_type(to).is_none() {
                    return Err(format!("column \"{column}\" becomes {to}, for which its MariaDB/MySQL target has no column type"));
                }
            }
        }
    }
    let applies = matches!(connector, "table" | "jdbc");
    if applies && change.key_changed() && def.envelope == EnvelopeKind::Upsert {
        return Err(format!("its {connector} target is keyed by the source's key, and does not change its key"));
    }
    if applies || connector == "iceberg" {
        for a in &alterations {
            if let Alteration::Retype { column, from, to } = a {
                if !widens(from, to) {
                    return Err(format!(
                        "column \"{column}\" changes from {from} to {to}, which is not a widening: its {connector} target could not take it without losing values"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// For an Avro sink with a registry: the schemas the sink would register for
/// `rel` (the table after the change), each checked against its subject's
/// latest version. Unreachable registries refuse too: the gate fails closed.
pub fn check_registry(rel: &Relation, def: &SinkDefinition, sink_name: &str) -> Result<(), String> {
    let Some(settings) = &def.registry else { return Ok(()) };
    let base = def.connector_options.get("topic").cloned().unwrap_or_else(|| sink_name.to_string());
    let all: Vec<usize> = (0..rel.columns.len()).collect();
    let key: Vec<usize> = def.key_columns.iter().filter_map(|k| rel.column_index(k)).collect();
    let mut checks = Vec::new();
    if def.value_format == "avro" {
        let schema = if def.envelope == EnvelopeKind::Debezium { debezium_schema(rel, &all, &def.avro) } else { row_schema(rel, &all, Role::Value, &def.avro) };
        checks.push((format!("{base}-value"), schema.to_string()));
    }
    if def.key_format == "avro" && !key.is_empty() {
        checks.push((format!("{base}-key"), row_schema(rel, &key, Role::Key, &def.avro).to_string()));
    }
    if checks.is_empty() {
        return Ok(());
    }
    let registry = Registry::new(settings).map_err(|e| format!("its schema registry could not be asked: {}", e.summary()))?;
    for (subject, schema) in checks {
        match registry.incompatibility(&subject, &schema) {
            Ok(None) => {}
            Ok(Some(why)) => return Err(format!("the schema registry finds the new schema incompatible with subject \"{subject}\": {why}")),
            Err(e) => return Err(format!("its schema registry could not be asked about subject \"{subject}\": {}", e.summary())),
        }
    }
    Ok(())
}

/// `(base name, modifiers)` of a `format_type` spelling: `character varying(10)`
/// → ("character varying", [10]); `timestamp(3) without time zone` →
/// ("timestamp without time zone", [3]).
fn parts(ty: &str) -> (String, Vec<u32>) {
    match (ty.find('('), ty.find(')')) {
        (Some(open), Some(close)) if close > open => {
            let mods = ty[open + 1..close].split(',').filter_map(|m| m.trim().parse().ok()).collect();
            let base = format!("{} {}", ty[..open].trim(), ty[close + 1..].trim());
            (base.trim().to_string(), mods)
        }
        _ => (ty.trim().to_string(), vec![]),
    }
}

/// Whether every value of type `from` is a value of type `to` (as
/// `format_type` spells them).
pub fn widens(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    let (f, fm) = parts(from);
    let (t, tm) = parts(to);
    let (f, t) = (f.as_str(), t.as_str());
    let integer_rank = |b: &str| ["smallint", "integer", "bigint"].iter().position(|x| *x == b);
    let text_like = |b: &str| matches!(b, "character varying" | "text" | "character");
    match (f, t) {
        (a, b) if integer_rank(a).is_some() && integer_rank(b).is_some() => integer_rank(a) <= integer_rank(b),
        // An unconstrained numeric holds any integer; numeric(p, 0) as many digits as p.
        (a, "numeric") if integer_rank(a).is_some() => {
            let digits = [5, 10, 19][integer_rank(a).unwrap_or(2)];
            tm.is_empty() || tm.first().copied().unwrap_or(0).saturating_sub(tm.get(1).copied().unwrap_or(0)) >= digits
        }
        ("real", "double precision") => true,
        ("numeric", "numeric") => match (fm.as_slice(), tm.as_slice()) {
            (_, []) => true,
            ([], _) => false,
            (f, t) => {
                let (fp, fs) = (f[0], f.get(1).copied().unwrap_or(0));
                let (tp, ts) = (t[0], t.get(1).copied().unwrap_or(0));
                ts >= fs && tp.saturating_sub(ts) >= fp.saturating_sub(fs)
            }
        },
        (a, "text") if text_like(a) => true,
        ("character", "character varying") | ("character varying", "character varying") => match (fm.first(), tm.first()) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(n), Some(m)) => m >= n,
        },
        // More fractional digits of seconds, or the same type unconstrained.
        (a, b) if a == b && matches!(a, "timestamp without time zone" | "timestamp with time zone" | "time without time zone") => {
            tm.first().copied().unwrap_or(6) >= fm.first().copied().unwrap_or(6)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::schema_change::{ShapeColumn, TableShape};
    use std::collections::BTreeMap;

    #[test]
    fn widenings_are_told_from_narrowings() {
        for (f, t) in [
            ("smallint", "integer"),
            ("integer", "bigint"),
            ("integer", "numeric"),
            ("integer", "numeric(12,0)"),
            ("real", "double precision"),
            ("numeric(10,2)", "numeric(12,2)"),
            ("numeric(10,2)", "numeric(11,3)"),
            ("numeric(10,2)", "numeric"),
            ("character varying(10)", "character varying(20)"),
            ("character varying(10)", "text"),
            ("character varying", "text"),
            ("character(3)", "character varying(3)"),
            ("timestamp(3) without time zone", "timestamp without time zone"),
        ] {
            assert!(widens(f, t), "{f} -> {t}");
        }
        for (f, t) in [
            ("bigint", "integer"),
            ("integer", "smallint"),
            ("integer", "numeric(5,0)"),
            ("numeric(10,2)", "numeric(10,3)"),
            ("numeric", "numeric(10,2)"),
            ("text", "character varying(10)"),
            ("character varying(20)", "character varying(10)"),
            ("text", "integer"),
            ("double precision", "real"),
            ("integer", "text"),
            ("timestamp with time zone", "timestamp without time zone"),
        ] {
            assert!(!widens(f, t), "{f} -> {t}");
        }
    }

    fn def(connector: &str, envelope: &str, extra: &[(&str, &str)]) -> SinkDefinition {
        let mut o: BTreeMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        o.insert("envelope".into(), envelope.into());
        crate::engine::options::parse(connector, &o).unwrap()
    }

    fn change(before: &[(&str, &str)], after: &[(&str, &str)], key_before: &[&str], key_after: &[&str]) -> SchemaChange {
        let shape = |cols: &[(&str, &str)], key: &[&str]| TableShape {
            schema: "public".into(),
            table: "t".into(),
            columns: cols.iter().enumerate().map(|(i, (n, t))| ShapeColumn { attnum: i as i32 + 1, name: n.to_string(), ty: t.to_string(), not_null: false }).collect(),
            key: key.iter().map(|k| k.to_string()).collect(),
        };
        SchemaChange { relid: 1, before: Some(shape(before, key_before)), after: shape(after, key_after) }
    }

    #[test]
    fn each_sink_refuses_what_it_could_not_follow() {
        let table = def("table", "upsert", &[("table", "copy")]);
        let narrowing = change(&[("id", "integer"), ("v", "bigint")], &[("id", "integer"), ("v", "integer")], &["id"], &["id"]);
        let widening = change(&[("id", "integer"), ("v", "integer")], &[("id", "integer"), ("v", "bigint")], &["id"], &["id"]);
        let rekey = change(&[("id", "integer"), ("v", "integer")], &[("id", "integer"), ("v", "integer")], &["id"], &["v"]);
        let added = change(&[("id", "integer")], &[("id", "integer"), ("w", "text")], &["id"], &["id"]);
        assert!(check(&narrowing, &table).unwrap_err().contains("not a widening"));
        assert!(check(&widening, &table).is_ok());
        assert!(check(&rekey, &table).unwrap_err().contains("key"));
        assert!(check(&added, &table).is_ok());
        let pg = def("jdbc", "upsert", &[("jdbc.url", "jdbc:postgresql://h/db"), ("table.name", "t")]);
        assert!(check(&narrowing, &pg).is_err() && check(&added, &pg).is_ok());
        let my = def("jdbc", "upsert", &[("jdbc.url", "jdbc:mysql://h/db"), ("table.name", "t")]);
        assert!(check(&added, &my).is_ok() && check(&widening, &my).is_ok());
        assert!(check(&narrowing, &my).unwrap_err().contains("not a widening") && check(&rekey, &my).unwrap_err().contains("key"));
        let arrays = change(&[("id", "integer")], &[("id", "integer"), ("w", "text[]")], &["id"], &["id"]);
        assert!(check(&arrays, &my).unwrap_err().contains("no column type") && check(&arrays, &pg).is_ok());
        let stop = def("file", "upsert", &[("path", "/x"), ("schema.changes", "stop")]);
        assert!(check(&added, &stop).unwrap_err().contains("stop"));
        let ignore = def("table", "upsert", &[("table", "copy"), ("schema.changes", "ignore")]);
        assert!(check(&narrowing, &ignore).is_ok());
        let files = def("file", "upsert", &[("path", "/x")]);
        assert!(check(&narrowing, &files).is_ok() && check(&rekey, &files).is_ok(), "records of any shape follow");
        let ice = def("iceberg", "append-only", &[("warehouse.path", "/w")]);
        assert!(check(&narrowing, &ice).is_err() && check(&rekey, &ice).is_ok());
    }
}
