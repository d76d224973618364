//! The SQL surface, schema `sink`, one file per group of functions:
//!
//! | file | functions |
//! |---|---|
//! | [`secrets`] | `create_secret`, `alter_secret`, `drop_secret` |
//! | [`connections`] | `create_connection`, `alter_connection`, `drop_connection` |
//! | [`credentials`] | `create_credential`, `alter_credential`, `drop_credential` |
//! | [`grants`] | `grant_usage`, `revoke_usage` |
//! | [`sinks`] | `create_sink`, `alter_sink`, `pause_sink`, `resume_sink`, `resync`, `drop_sink` |
//! | [`sync`] | `sync`, `preview` |
//! | [`export`] | `export` (a query's rows, once, through any connector) |
//! | [`dead_letters`] | `retry_dead_letters`, `discard_dead_letters` |
//! | [`backfill`] | `backfill`, `cancel_backfill` |
//! | [`schema_changes`] | `report_schema_change` (the DDL event trigger's), `relation_shape` |
//! | [`launcher`] | `start_launcher` (this database's sinks run) |
//! | [`execute`] | `execute` (Materialize, RisingWave and Kinetica DDL) |
//! | [`hashes`] | `seahash`, `kafka_murmur2`, `crc32` |
//! | [`reference`] | `options` (every connector's options) |
//!
//! Functions run as the caller, so privilege checks see the caller; catalog writes,
//! publications and slots are made under the extension's superuser identity
//! ([`crate::pg::identity::as_superuser`]). This file holds the checks they share.

pub mod backfill;
pub mod connections;
pub mod credentials;
pub mod dead_letters;
pub mod execute;
pub mod export;
pub mod grants;
pub mod hashes;
pub mod launcher;
pub mod reference;
pub mod schema_changes;
pub mod secrets;
pub mod sinks;
pub mod sync;

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::engine::options::{self};

use crate::pg::catalog::{self, SinkRow};
use crate::pg::errors::{fail, Code};
use crate::pg::identity::is_superuser;
use crate::pg::spi::{select, select_one};

fn check_owner(sink: &SinkRow) {
    if is_superuser() {
        return;
    }
    let member = select_one("SELECT pg_catalog.pg_has_role(current_user, $1::regrole, 'MEMBER')::text", &[Some(&sink.owner)]);
    if member.as_deref() != Some("true") {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of sink \"{}\"", sink.name),
            Some(format!("Sink \"{}\" is owned by {}.", sink.name, sink.owner)),
            None,
        );
    }
}

/// Refuse a sink whose slot does not exist yet (it has not started): what the
/// caller asks for needs the sink's stream. `detail` says why, `hint` when to
/// try again.
fn require_started(sink: &SinkRow, detail: &str, hint: &str) {
    if sink.confirmed.is_none() {
        fail(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("sink \"{}\" has not started", sink.name), Some(detail.into()), Some(hint.into()));
    }
}

/// Refuse SQL text that Postgres parses as anything but exactly one statement.
/// Every statement built from user text (a row filter, a target table name) and
/// run with more privileges than the caller goes through this first: text that
/// closes the statement and starts another (`true); ALTER ROLE ..`) is an
/// error here, not a second statement run as the superuser.
pub(crate) fn one_statement(sql: &str) -> &str {
    let Ok(c) = std::ffi::CString::new(sql) else {
        fail(Code::ERRCODE_SYNTAX_ERROR, "a sink definition may not contain a NUL character", None, None)
    };
    // SAFETY: parses a NUL-terminated string in the current memory context; a
    // syntax error raises an ordinary ERROR. The list is only counted.
    let n = unsafe {
        let list = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() {
            0
        } else {
            (*list).length
        }
    };
    if n != 1 {
        fail(
            Code::ERRCODE_SYNTAX_ERROR,
            "a sink's filter and names must not contain more than one statement",
            Some(format!("The definition makes {n} statements.")),
            Some("Give the WHERE condition as one expression, and the target as a table name.".into()),
        );
    }
    sql
}

/// Refuse text that is not exactly one SQL expression: `SELECT (<expr>)` must
/// parse as a plain SELECT of one target and nothing else. A condition spliced
/// into a statement (a backfill's filter) cannot close its parenthesis and go
/// on (`true) UNION (SELECT ..`, `true) FROM .. WHERE (..`).
pub(crate) fn one_expression(expr: &str) {
    let sql = format!("SELECT ({expr})");
    let hint = "Give the condition as it would follow WHERE, e.g. 'id > 1000 AND region = ''eu'''.";
    pgrx::PgTryBuilder::new(|| {
        one_statement(&sql);
    })
    .catch_others(|cause| {
        let (code, message) = match &cause {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r)
            | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => (r.sql_error_code(), r.message().to_string()),
        };
        fail(code, message, Some(format!("The filter \"{expr}\" does not parse as one expression.")), Some(hint.into()))
    })
    .execute();
    let Ok(c) = std::ffi::CString::new(sql) else { return };
    // SAFETY: parses a NUL-terminated string in the current memory context
    // (one_statement above made sure it parses to one statement); the tree is
    // only read.
    let plain = unsafe {
        let list = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let node = (*raw).stmt;
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_SelectStmt {
            false
        } else {
            let sel = node as *mut pg_sys::SelectStmt;
            let s = &*sel;
            s.op == pg_sys::SetOperation::SETOP_NONE
                && !s.targetList.is_null()
                && (*s.targetList).length == 1
                && s.fromClause.is_null()
                && s.whereClause.is_null()
                && s.groupClause.is_null()
                && s.havingClause.is_null()
                && s.windowClause.is_null()
                && s.sortClause.is_null()
                && s.limitCount.is_null()
                && s.limitOffset.is_null()
                && s.lockingClause.is_null()
                && s.withClause.is_null()
                && s.distinctClause.is_null()
                && s.intoClause.is_null()
                && s.valuesLists.is_null()
        }
    };
    if !plain {
        fail(
            Code::ERRCODE_SYNTAX_ERROR,
            "a filter must be one expression",
            Some(format!("\"{expr}\" is more than a condition on the source's columns.")),
            Some(hint.into()),
        );
    }
}

/// Run a check query; if Postgres refuses it, raise its error again with our
/// detail and hint, so the user learns which part of the definition is wrong.
fn check_sql(sql: &str, detail: String, hint: &str) {
    let sql = one_statement(sql);
    pgrx::PgTryBuilder::new(|| {
        select(sql, &[]);
    })
    .catch_others(|cause| {
        let (code, message) = match &cause {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r)
            | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => (r.sql_error_code(), r.message().to_string()),
        };
        fail(code, message, Some(detail.clone()), Some(hint.into()))
    })
    .execute();
}

/// Options as text, from a JSON object of strings, numbers and booleans.
fn option_map(options: &JsonB, what: &str) -> BTreeMap<String, String> {
    let serde_json::Value::Object(map) = &options.0 else {
        fail(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} must be a JSON object"),
            Some(format!("Got {}.", options.0)),
            Some("Pass options as jsonb, e.g. '{\"path\": \"/tmp/out\"}'.".into()),
        )
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Array(items) => items.iter().map(catalog::json_text).collect::<Vec<_>>().join(","),
            // A secret reference, or a map-valued option such as topic_config.
            serde_json::Value::Object(_) => v.to_string(),
            other => fail(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid value for option \"{k}\""),
                Some(format!("Option values must be strings, numbers, booleans, lists or maps; got {other}.")),
                Some("Refer to a secret as {\"secret\": \"name\"}.".into()),
            ),
        };
        let name = options::normalize_name(k);
        if out.insert(name.clone(), text).is_some() {
            fail(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("option \"{name}\" specified more than once"),
                Some("Option names are case-insensitive; spaces count as underscores.".into()),
                Some("Give each option once.".into()),
            );
        }
    }
    out
}

fn put_option(opts: &mut BTreeMap<String, String>, name: &str, value: String) {
    if let Some(old) = opts.get(name) {
        if *old != value {
            fail(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("conflicting values for option \"{name}\""),
                Some(format!("The argument says \"{value}\" but options say \"{old}\".")),
                Some("Give the option only once.".into()),
            );
        }
    }
    opts.insert(name.to_string(), value);
}

pub(crate) fn check_name(kind: &str, name: &str) {
    if name.is_empty() || name.len() > 63 {
        fail(Code::ERRCODE_INVALID_NAME, format!("invalid {kind} name \"{name}\""), Some(format!("A {kind} name must have 1 to 63 bytes.")), None);
    }
}
