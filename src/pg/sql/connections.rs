//! Connections: a connector and its options, named once and reused by sinks
//! (Materialize's `CREATE CONNECTION`). Created, altered and dropped here; their
//! options are checked as a sink's would be, and tested unless `validate` is off.

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::JsonB;

use super::secrets::resolve_secrets;
use super::sinks::drop_sink;
use super::{check_name, option_map};
use crate::engine::encoder::registry;
use crate::engine::options::{self};
use crate::pg::access;
use crate::pg::catalog::{self};
use crate::pg::errors::{fail, Code, OrRaise};
use crate::pg::identity::{as_superuser, created_by, current_user};
use crate::pg::policy;
use crate::pg::spi::{select, select_one, update};

/// A reusable connection: a connector and its options; `{"secret": "name"}` values
/// refer to secrets, `credential` to a credential.
#[pg_extern(volatile)]
fn create_connection(name: &str, connector: &str, options: default!(JsonB, "'{}'"), if_not_exists: default!(bool, false)) -> bool {
    crate::pg::version::check();
    let opts = option_map(&options, "connection options");
    put_connection(name, connector, opts, if_not_exists, false)
}

/// Create (or, with `or_replace`, redefine in place) a connection.
pub(crate) fn put_connection(name: &str, connector: &str, mut opts: BTreeMap<String, String>, if_not_exists: bool, or_replace: bool) -> bool {
    check_name("connection", name);
    let is_registry = registry::is_registry_kind(connector);
    let kind = if is_registry { "confluent_schema_registry" } else { crate::engine::connector::registry::spec(connector).or_raise().name };
    // `validate` only says whether to probe now; it is not stored.
    let validate = opts.remove("validate").map(|v| options::parse_bool("validate", &v)).transpose().or_raise().unwrap_or(true)
        && crate::pg::gucs::validate_connections();
    // Resolve secret references and the credential now: a missing one is an error,
    // the caller must be allowed to use them, and the probes need the real values.
    let mut resolved = resolve_secrets(&opts);
    access::use_credential(kind, &mut resolved);
    // Before any probe: a refused host is not contacted.
    policy::check_reach(kind, &resolved);
    if !is_registry {
        let spec = crate::engine::connector::registry::spec(kind).or_raise();
        crate::engine::connector::registry::validate_known(spec, &resolved).or_raise();
        if let Some(check) = spec.check_connection {
            // Option values are checked always; the target is probed only when validating.
            let mut probe = resolved.clone();
            probe.insert("validate".into(), validate.to_string());
            check(&probe).or_raise();
        }
    }
    if is_registry {
        // Known options, a URL, and a registry that answers and takes the credentials.
        let mut sink_opts = registry::connection_to_sink_options(name, &resolved).or_raise();
        if let Some(settings) = registry::RegistrySettings::take_from(&mut sink_opts).or_raise() {
            if validate {
                registry::Registry::new(&settings).and_then(|r| r.check()).or_raise();
            }
        }
    }
    let owner = current_user();
    let by = created_by();
    let exists = as_superuser(|| select_one("SELECT 1::text FROM sink.connections WHERE name = $1", &[Some(name)])).is_some();
    if exists && !or_replace {
        if if_not_exists {
            pgrx::notice!("connection \"{name}\" already exists, skipping");
            return false;
        }
        fail(
            Code::ERRCODE_DUPLICATE_OBJECT,
            format!("connection \"{name}\" already exists"),
            None,
            Some("Choose another name, or pass if_not_exists => true.".into()),
        );
    }
    if exists {
        access::require_owner("connection", name);
        let used_as = as_superuser(|| {
            select_one(
                "SELECT string_agg(DISTINCT connector, ', ')::text FROM sink.sinks WHERE connection = $1 AND connector <> $2",
                &[Some(name), Some(kind)],
            )
        });
        if let Some(other) = used_as {
            fail(
                Code::ERRCODE_OBJECT_IN_USE,
                format!("connection \"{name}\" is used by {other} sinks"),
                Some(format!("The new definition is a {kind} connection.")),
                Some("Drop those sinks first, or keep the connector.".into()),
            );
        }
    }
    policy::move_inline_secrets("connection", name, &mut opts);
    let json = stored_options(&opts);
    if exists {
        as_superuser(|| {
            update("UPDATE sink.connections SET connector = $2, options = $3::jsonb WHERE name = $1", &[Some(name), Some(kind), Some(&json)])
        });
        return true;
    }
    as_superuser(|| {
        update(
            "INSERT INTO sink.connections (name, connector, owner, options, created_by) VALUES ($1, $2, $3::regrole, $4::jsonb, $5)",
            &[Some(name), Some(kind), Some(&owner), Some(&json), Some(by)],
        );
        true
    })
}

/// Options as the catalog keeps them: secret references as JSON objects.
fn stored_options(opts: &BTreeMap<String, String>) -> String {
    let entries = opts.iter().map(|(k, v)| {
        let value =
            serde_json::from_str(v).ok().filter(|j: &serde_json::Value| j.is_object()).unwrap_or_else(|| serde_json::Value::String(v.clone()));
        (k.clone(), value)
    });
    serde_json::Value::Object(entries.collect()).to_string()
}

/// Change a connection's options (merged; a JSON null removes one). Sinks using it
/// pick the change up at their next batch.
#[pg_extern(volatile)]
pub(crate) fn alter_connection(name: &str, options: JsonB) {
    crate::pg::version::check();
    // A JSON null removes an option (the option map itself takes no nulls).
    let removed: Vec<String> = match &options.0 {
        serde_json::Value::Object(m) => m.iter().filter(|(_, v)| v.is_null()).map(|(k, _)| options::normalize_name(k)).collect(),
        _ => Vec::new(),
    };
    let set = match options.0 {
        serde_json::Value::Object(m) => serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    };
    alter_connection_map(name, option_map(&JsonB(set), "connection options"), removed);
}

pub(crate) fn alter_connection_map(name: &str, changes: BTreeMap<String, String>, removed: Vec<String>) {
    access::require_owner("connection", name);
    let (kind, mut current) = as_superuser(|| {
        let row =
            select("SELECT connector, options::text FROM sink.connections WHERE name = $1", &[Some(name)]).into_iter().next().unwrap_or_default();
        let kind = row.first().cloned().flatten().unwrap_or_default();
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(row.get(1).cloned().flatten().as_deref().unwrap_or("{}")).unwrap_or_default();
        (
            kind,
            map.into_iter()
                .map(|(k, v)| (k, if v.is_object() { v.to_string() } else { catalog::json_text(&v) }))
                .collect::<BTreeMap<String, String>>(),
        )
    });
    for k in removed {
        current.remove(&k);
    }
    for (k, v) in changes {
        if k == "location" && kind != "confluent_schema_registry" {
            if let Ok(new_kind) = crate::engine::dialect::connector_for_location(&v) {
                if new_kind != kind {
                    fail(
                        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!("cannot change connection \"{name}\" from {kind} to {new_kind}"),
                        None,
                        Some("Create a new connection (data sink) instead.".into()),
                    );
                }
            }
        }
        current.insert(k, v);
    }
    put_connection(name, &kind, current, false, true);
}

#[pg_extern(volatile)]
pub(crate) fn drop_connection(name: &str, if_exists: default!(bool, false), cascade: default!(bool, false)) -> bool {
    crate::pg::version::check();
    if !access::may_drop("connection", name, if_exists) {
        return false;
    }
    let users: Vec<String> = as_superuser(|| {
        select("SELECT name FROM sink.sinks WHERE connection = $1 OR options->>'csr_connection' = $1 ORDER BY name", &[Some(name)])
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect()
    });
    if !users.is_empty() {
        if !cascade {
            fail(
                Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!("cannot drop connection \"{name}\" because sinks use it"),
                Some(format!("Used by: {}.", users.join(", "))),
                Some("Drop those sinks first, or use DROP CONNECTION .. CASCADE.".into()),
            );
        }
        for sink in users {
            drop_sink(&sink, false);
        }
    }
    access::forget_grants("connection", name);
    as_superuser(|| update("DELETE FROM sink.connections WHERE name = $1", &[Some(name)]));
    policy::forget_inline_secrets("connection", name);
    true
}
