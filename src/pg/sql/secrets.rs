//! Secrets: values (passwords, keys, tokens) that options refer to as
//! `{"secret": "name"}`. Stored in the catalog, readable by no one through SQL,
//! resolved only when a sink or connection is checked and when the worker runs.

use std::collections::BTreeMap;

use pgrx::prelude::*;

use super::check_name;
use crate::pg::access;
use crate::pg::catalog::{self};
use crate::pg::errors::{fail, Code};
use crate::pg::identity::{as_superuser, created_by, current_user, is_superuser};
use crate::pg::spi::{select, select_one, update};

/// Store a secret (e.g. a password). Its value is readable by no one through the
/// catalog views; only the worker reads it.
#[pg_extern(volatile)]
pub(crate) fn create_secret(name: &str, value: &str, if_not_exists: default!(bool, false)) -> bool {
    crate::pg::version::check();
    check_name("secret", name);
    let owner = current_user();
    as_superuser(|| {
        if let Some(kind) = select_one("SELECT kind FROM sink.secrets WHERE name = $1", &[Some(name)]) {
            if if_not_exists && kind == "secret" {
                pgrx::notice!("secret \"{name}\" already exists, skipping");
                return false;
            }
            fail(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("{kind} \"{name}\" already exists"),
                Some("Secrets and credentials share one name space.".into()),
                Some("Use sink.alter_secret() to change a secret's value.".into()),
            );
        }
        let by = created_by();
        update(
            "INSERT INTO sink.secrets (name, owner, value, created_by) VALUES ($1, $2::regrole, $3, $4)",
            &[Some(name), Some(&owner), Some(value), Some(by)],
        );
        true
    })
}

#[pg_extern(volatile)]
pub(crate) fn alter_secret(name: &str, value: &str) {
    crate::pg::version::check();
    access::require_owner("secret", name);
    as_superuser(|| update("UPDATE sink.secrets SET value = $2 WHERE name = $1 AND kind = 'secret'", &[Some(name), Some(value)]));
}

#[pg_extern(volatile)]
pub(crate) fn drop_secret(name: &str, if_exists: default!(bool, false)) -> bool {
    crate::pg::version::check();
    if !access::may_drop("secret", name, if_exists) {
        return false;
    }
    access::forget_grants("secret", name);
    as_superuser(|| {
        // Connections keep references as JSON objects, sinks as their text.
        let refers = |v: &serde_json::Value| match v {
            serde_json::Value::String(t) => catalog::secret_ref(t).as_deref() == Some(name),
            other => catalog::secret_ref(&other.to_string()).as_deref() == Some(name),
        };
        let users: Vec<String> = select("SELECT 'connection ' || name, options::text FROM sink.connections UNION ALL SELECT 'sink ' || name, options::text FROM sink.sinks ORDER BY 1", &[])
            .into_iter()
            .filter(|r| {
                let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r.get(1).cloned().flatten().as_deref().unwrap_or("{}")).unwrap_or_default();
                map.values().any(refers)
            })
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let used = Some(users.join(", ")).filter(|u| !u.is_empty());
        if let Some(users) = used {
            fail(
                Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!("cannot drop secret \"{name}\" because it is in use"),
                Some(format!("Used by: {users}.")),
                Some("Drop or alter those connections and sinks first.".into()),
            );
        }
        let n = update("DELETE FROM sink.secrets WHERE name = $1 AND kind = 'secret' RETURNING name", &[Some(name)]).len();
        if n == 0 && !if_exists {
            fail(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("secret \"{name}\" does not exist"),
                None,
                Some("SELECT name FROM sink.secrets (as a superuser) lists the secrets.".into()),
            );
        }
        n > 0
    })
}

/// The value of a secret an option refers to. The caller must be allowed to use it
/// (own it, through role membership, or be a superuser): otherwise a sink could
/// send someone else's secret to a target of its owner's choosing.
pub(crate) fn use_secret(sname: &str, option: &str) -> String {
    let user = current_user();
    let row = as_superuser(|| {
        select(
            "SELECT value, (pg_catalog.pg_has_role($2, owner, 'MEMBER') OR EXISTS (SELECT 1 FROM sink.usage_grants g WHERE g.kind = 'secret' AND g.name = s.name \
                                AND (g.grantee IS NULL OR pg_catalog.pg_has_role($2, g.grantee, 'MEMBER'))))::text \
             FROM sink.secrets s WHERE name = $1 AND kind = 'secret'",
            &[Some(sname), Some(&user)],
        )
        .into_iter()
        .next()
    });
    let Some(row) = row else {
        fail(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("secret \"{sname}\" does not exist"),
            Some(format!("Option \"{option}\" refers to it.")),
            Some("Create it with sink.create_secret().".into()),
        )
    };
    if row.get(1).cloned().flatten().as_deref() != Some("true") && !is_superuser() {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for secret \"{sname}\""),
            Some(format!("Option \"{option}\" refers to a secret owned by another role.")),
            Some("Only the secret's owner (or a member of that role) can use it, or a role it was granted to with GRANT USAGE ON SECRET.".into()),
        );
    }
    row.into_iter().next().flatten().unwrap_or_default()
}

/// Options with every `{"secret": "name"}` value replaced by the secret's value.
pub(crate) fn resolve_secrets(opts: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    opts.iter().map(|(k, v)| (k.clone(), catalog::secret_ref(v).map(|s| use_secret(&s, k)).unwrap_or_else(|| v.clone()))).collect()
}

/// The secrets and credentials with their values, as SQL that creates them again
/// (for a restore: `pg_dump` leaves the secrets out).
/// Superusers only; whoever runs the script must be one too.
#[pg_extern(volatile)]
fn secrets_script() -> String {
    crate::pg::version::check();
    if !is_superuser() {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only a superuser may write out secret values",
            Some("The script holds every secret's and credential's value in clear text.".into()),
            Some("Run it as a superuser, and keep its output as safe as the secrets themselves.".into()),
        );
    }
    let rows = select(
        "SELECT pg_catalog.format('INSERT INTO sink.secrets (name, kind, owner, value, created_by, created_at) VALUES (%L, %L, %L, %L, %L, %L) ON CONFLICT (name) DO NOTHING;', \
                name, kind, owner::text, value, created_by, created_at) FROM sink.secrets ORDER BY name",
        &[],
    );
    rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).map(|l| l + "\n").collect()
}
