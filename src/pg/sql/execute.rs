//! `sink.execute(sql)`: statements in the DDL of Materialize, RisingWave or
//! Kinetica, parsed by [`crate::engine::dialect`] and run through the same
//! functions as the function API, so checks, privileges and errors are the same.
//! All statements of one call run in the caller's transaction.

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value as Json};

use crate::engine::dialect::{self, Command, ErrorKind, ObjectKind, Options, ParseError, Statement, Value};
use crate::engine::options;

use super::{connections, credentials, grants, secrets, sinks};
use crate::pg::access;
use crate::pg::errors::{fail, Code};
use crate::pg::identity::{as_superuser, current_user, with_created_by};
use crate::pg::spi::select;

type Row = (String, String, String, Option<String>, Option<String>, JsonB);

/// Parse and run one or more `;`-separated statements; one result row per object
/// created, altered, dropped, granted or shown.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn execute(
    sql: &str,
) -> TableIterator<
    'static,
    (
        name!(command, String),
        name!(kind, String),
        name!(name, String),
        name!(owner, Option<String>),
        name!(connector, Option<String>),
        name!(details, JsonB),
    ),
> {
    crate::pg::version::check();
    let statements = dialect::parse(sql).unwrap_or_else(|e| raise_parse(&e));
    let mut rows = Vec::new();
    for s in statements {
        for n in &s.notices {
            pgrx::notice!("{n}");
        }
        with_created_by(s.dialect.as_str(), || run(&s, &mut rows));
    }
    TableIterator::new(rows)
}

fn raise_parse(e: &ParseError) -> ! {
    let code = match e.kind {
        ErrorKind::Syntax => Code::ERRCODE_SYNTAX_ERROR,
        ErrorKind::Unsupported => Code::ERRCODE_FEATURE_NOT_SUPPORTED,
    };
    let hint = e
        .hint
        .clone()
        .unwrap_or_else(|| "pg_sink accepts the sink DDL of Materialize, RisingWave and Kinetica; see the README for each grammar.".into());
    fail(code, e.message.clone(), Some(e.detail()), Some(hint))
}

/// Options as the function API's text map: secrets as `{"secret": name}`, maps as JSON.
fn option_texts(opts: &Options) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in opts {
        let name = options::normalize_name(k);
        let text = match v {
            Value::Text(t) => t.clone(),
            Value::Secret(s) => json!({ "secret": s }).to_string(),
            Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect()).to_string(),
        };
        if out.insert(name.clone(), text).is_some() {
            fail(
                Code::ERRCODE_SYNTAX_ERROR,
                format!("option \"{name}\" specified more than once"),
                Some(format!("Option \"{k}\" appears twice in the statement.")),
                Some("Give each option once.".into()),
            );
        }
    }
    out
}

fn option_json(opts: &Options) -> JsonB {
    JsonB(Json::Object(
        option_texts(opts)
            .into_iter()
            .map(|(k, v)| {
                let j = match serde_json::from_str::<Json>(&v) {
                    Ok(o @ Json::Object(_)) => o,
                    _ => Json::String(v),
                };
                (k, j)
            })
            .collect(),
    ))
}

fn row(tag: &str, kind: &str, name: &str, connector: Option<&str>, details: Json) -> Row {
    let owner = match kind {
        "sink" => super::catalog::find_by_name(name).map(|s| s.owner),
        _ => access::owner_of(kind, name),
    };
    (tag.to_string(), kind.to_string(), name.to_string(), owner, connector.map(str::to_string), JsonB(details))
}

fn exists(kind: &str, name: &str) -> bool {
    match kind {
        "sink" => super::catalog::find_by_name(name).is_some(),
        _ => access::owner_of(kind, name).is_some(),
    }
}

fn run(s: &Statement, rows: &mut Vec<Row>) {
    let tag = s.tag.as_str();
    match &s.command {
        Command::CreateSecret { name, value, if_not_exists, or_replace } => {
            let created = if *or_replace && exists("secret", name) {
                secrets::alter_secret(name, value);
                true
            } else {
                secrets::create_secret(name, value, *if_not_exists)
            };
            rows.push(row(tag, "secret", name, None, json!({ "created": created })));
        }
        Command::AlterSecret { name, value, if_exists } => {
            if *if_exists && !exists("secret", name) {
                pgrx::notice!("secret \"{name}\" does not exist, skipping");
                rows.push(row(tag, "secret", name, None, json!({ "altered": false })));
            } else {
                secrets::alter_secret(name, value);
                rows.push(row(tag, "secret", name, None, json!({ "altered": true })));
            }
        }
        Command::CreateCredential { name, kind, identity, secret, options, or_replace } => {
            rows.push(create_credential(tag, name, kind, identity.as_deref(), secret.as_deref(), options, *or_replace));
        }
        Command::AlterCredential { name, set } => {
            credentials::alter_credential(name, option_json(set));
            rows.push(row(tag, "credential", name, None, json!({ "altered": true })));
        }
        Command::CreateConnection { name, connector, options, if_not_exists, or_replace } => {
            let created = connections::put_connection(name, connector, option_texts(options), *if_not_exists, *or_replace);
            let kind = as_superuser(|| crate::pg::spi::select_one("SELECT connector FROM sink.connections WHERE name = $1", &[Some(name)]));
            rows.push(row(tag, "connection", name, kind.as_deref(), json!({ "created": created })));
        }
        Command::AlterConnection { name, set } => {
            connections::alter_connection_map(name, option_texts(set), Vec::new());
            rows.push(row(tag, "connection", name, None, json!({ "altered": true })));
        }
        Command::CreateSink { name, source, connector, connection, key, options, if_not_exists, or_replace: _ } => {
            rows.push(create_sink(tag, name, source, connector.as_deref(), connection.as_deref(), key.clone(), options, *if_not_exists));
        }
        Command::Drop { kind, name, if_exists, cascade } => {
            let dropped = match kind {
                ObjectKind::Sink => sinks::drop_sink(name, *if_exists),
                ObjectKind::Connection => connections::drop_connection(name, *if_exists, *cascade),
                ObjectKind::Secret => secrets::drop_secret(name, *if_exists),
                ObjectKind::Credential => credentials::drop_credential(name, *if_exists),
            };
            rows.push((tag.to_string(), kind.as_str().to_string(), name.clone(), None, None, JsonB(json!({ "dropped": dropped }))));
        }
        Command::Grant { revoke, kind, name, roles } => {
            for role in roles {
                if *revoke {
                    grants::revoke_usage(kind.as_str(), name, role);
                } else {
                    grants::grant_usage(kind.as_str(), name, role);
                }
            }
            rows.push(row(tag, kind.as_str(), name, None, json!({ "privilege": "USAGE", "roles": roles })));
        }
        Command::Show { kind, name } => show(tag, *kind, name.as_deref(), rows),
        Command::Export { query, connection, name, options } => {
            let mut opts = option_texts(options);
            let (n, bytes, chunks, seconds) = super::export::export_with(query, None, &mut opts, name.as_deref(), Some(connection));
            let shown = name.clone().unwrap_or_default();
            rows.push(row(tag, "export", &shown, None, json!({ "rows": n, "bytes": bytes, "chunks": chunks, "seconds": seconds, "data_sink": connection })));
        }
    }
}

/// CREATE [OR REPLACE] CREDENTIAL.
fn create_credential(tag: &str, name: &str, kind: &str, identity: Option<&str>, secret: Option<&str>, options: &Options, or_replace: bool) -> Row {
    let opts = option_json(options);
    let created = if or_replace && exists("credential", name) {
        let mut set = json!({ "type": kind, "identity": identity, "secret": secret });
        if let (Json::Object(m), Json::Object(o)) = (&mut set, &opts.0) {
            m.extend(o.clone());
        }
        credentials::alter_credential(name, JsonB(set));
        true
    } else {
        credentials::create_credential(name, kind, identity, secret, opts, false)
    };
    row(tag, "credential", name, None, json!({ "created": created, "type": kind }))
}

/// CREATE SINK, through `sink.create_sink`.
#[allow(clippy::too_many_arguments)]
fn create_sink(
    tag: &str,
    name: &str,
    source: &str,
    connector: Option<&str>,
    connection: Option<&str>,
    key: Option<Vec<String>>,
    options: &Options,
    if_not_exists: bool,
) -> Row {
    let existed = exists("sink", name);
    sinks::create_sink(name, source, connector, option_json(options), None, None, key, false, None, connection, if_not_exists);
    let sink = super::catalog::find_by_name(name);
    row(tag, "sink", name, sink.as_ref().map(|s| s.connector.as_str()), json!({ "created": !existed }))
}

/// SHOW: sinks, connections, secrets (names only) and credentials (never the secret).
fn show(tag: &str, kind: Option<ObjectKind>, name: Option<&str>, rows: &mut Vec<Row>) {
    let query = match kind {
        Some(ObjectKind::Sink) => {
            "SELECT 'sink', name, owner::text, connector, jsonb_build_object('state', state, 'source', source::text, 'envelope', envelope, \
                    'format', value_format, 'key_format', key_format, 'connection', connection, 'dialect', created_by)::text \
             FROM sink.sinks WHERE ($1::text IS NULL OR name = $1) AND pg_catalog.pg_has_role($2, owner, 'MEMBER') ORDER BY name"
        }
        Some(ObjectKind::Connection) => {
            "SELECT 'connection', name, owner::text, connector, jsonb_build_object('options', options, 'dialect', created_by)::text \
             FROM sink.connections c WHERE ($1::text IS NULL OR name = $1) AND (pg_catalog.pg_has_role($2, owner, 'MEMBER') \
                   OR EXISTS (SELECT 1 FROM sink.usage_grants g WHERE g.kind = 'connection' AND g.name = c.name \
                              AND (g.grantee IS NULL OR pg_catalog.pg_has_role($2, g.grantee, 'MEMBER')))) ORDER BY name"
        }
        Some(ObjectKind::Secret) => {
            "SELECT 'secret', name, owner::text, NULL, jsonb_build_object('dialect', created_by, 'created_at', created_at)::text \
             FROM sink.secrets WHERE kind = 'secret' AND ($1::text IS NULL OR name = $1) AND pg_catalog.pg_has_role($2, owner, 'MEMBER') ORDER BY name"
        }
        Some(ObjectKind::Credential) => {
            "SELECT 'credential', name, owner::text, NULL, jsonb_build_object('type', value::jsonb->>'type', 'identity', value::jsonb->>'identity', \
                    'options', value::jsonb->'options', 'dialect', created_by)::text \
             FROM sink.secrets WHERE kind = 'credential' AND ($1::text IS NULL OR name = $1) AND pg_catalog.pg_has_role($2, owner, 'MEMBER') ORDER BY name"
        }
        None => {
            "SELECT kind, name, owner, connector, jsonb_build_object('dialect', created_by, 'created_at', created_at)::text \
             FROM sink.objects WHERE ($1::text IS NULL OR name = $1) AND pg_catalog.pg_has_role($2, owner::regrole, 'MEMBER') ORDER BY kind, name"
        }
    };
    // Each role is shown what it owns (and connections it may use), as the catalog does.
    let user = current_user();
    let found = as_superuser(|| select(query, &[name, Some(&user)]));
    if found.is_empty() {
        if let (Some(n), Some(k)) = (name, kind) {
            fail(Code::ERRCODE_UNDEFINED_OBJECT, format!("{} \"{n}\" does not exist", k.as_str()), None, Some(format!("{tag} * lists them all.")));
        }
    }
    for r in found {
        let get = |i: usize| r.get(i).cloned().flatten();
        let details = get(4).and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Json::Null);
        rows.push((tag.to_string(), get(0).unwrap_or_default(), get(1).unwrap_or_default(), get(2), get(3), JsonB(details)));
    }
}
