//! Who may use and manage the catalog's shared objects: owners, USAGE granted on
//! connections, secrets and credentials (Materialize's `GRANT USAGE`, Kinetica's
//! `GRANT CONNECT ON DATA SINK`), and Kinetica credentials, which are stored like
//! secrets: readable by no one through SQL, used only by the worker.

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::engine::credential::Credential;

use super::api::{as_superuser, current_user, is_superuser};
use super::catalog;
use super::errors::{fail, Code, OrRaise};
use super::spi::{select, select_one, update};

/// Object kinds with an owner and USAGE grants.
pub const KINDS: &[&str] = &["connection", "secret", "credential"];

/// The owner of a connection, secret or credential, if it exists.
pub fn owner_of(kind: &str, name: &str) -> Option<String> {
    as_superuser(|| match kind {
        "connection" => select_one("SELECT owner::text FROM sink.connections WHERE name = $1", &[Some(name)]),
        _ => select_one("SELECT owner::text FROM sink.secrets WHERE name = $1 AND kind = $2", &[Some(name), Some(kind)]),
    })
}

fn missing(kind: &str, name: &str) -> ! {
    let hint = match kind {
        "connection" => "SELECT name FROM sink.connections lists the connections.",
        _ => "SELECT name, kind FROM sink.objects lists the secrets and credentials.",
    };
    fail(Code::ERRCODE_UNDEFINED_OBJECT, format!("{kind} \"{name}\" does not exist"), None, Some(hint.into()))
}

fn is_member(user: &str, role: &str) -> bool {
    select_one("SELECT pg_has_role($1::name, $2::regrole, 'MEMBER')::text", &[Some(user), Some(role)]).as_deref() == Some("true")
}

/// The caller must own the object (or be a member of its owner, or a superuser).
/// Returns the owner.
pub fn require_owner(kind: &str, name: &str) -> String {
    let Some(owner) = owner_of(kind, name) else { missing(kind, name) };
    if !is_superuser() && !is_member(&current_user(), &owner) {
        fail(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of {kind} \"{name}\""), Some(format!("{} \"{name}\" is owned by {owner}.", capitalized(kind))), None);
    }
    owner
}

/// For DROP: false (with a notice) when the object is missing and `if_exists`;
/// otherwise the caller must own it.
pub fn may_drop(kind: &str, name: &str, if_exists: bool) -> bool {
    if if_exists && owner_of(kind, name).is_none() {
        pgrx::notice!("{kind} \"{name}\" does not exist, skipping");
        return false;
    }
    require_owner(kind, name);
    true
}

fn capitalized(kind: &str) -> String {
    let mut c = kind.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// Whether `user` may use the object: owner, member of the owner, superuser, or a
/// USAGE grant to PUBLIC or to a role `user` belongs to.
pub fn has_usage(kind: &str, name: &str, owner: &str, user: &str) -> bool {
    if is_superuser() || is_member(user, owner) {
        return true;
    }
    as_superuser(|| {
        select_one(
            "SELECT 1::text FROM sink.usage_grants WHERE kind = $1 AND name = $2 AND (grantee IS NULL OR pg_has_role($3::name, grantee, 'MEMBER'))",
            &[Some(kind), Some(name), Some(user)],
        )
        .is_some()
    })
}

/// Raise unless the caller may use the object. `why` says what needs it.
pub fn require_usage(kind: &str, name: &str, why: &str) {
    let Some(owner) = owner_of(kind, name) else { missing(kind, name) };
    let user = current_user();
    if !has_usage(kind, name, &owner, &user) {
        let grant = match kind {
            "connection" => format!("GRANT USAGE ON CONNECTION {name} TO {user} (or sink.grant_usage('connection', '{name}', '{user}'))"),
            _ => format!("GRANT USAGE ON {} {name} TO {user} (or sink.grant_usage('{kind}', '{name}', '{user}'))", kind.to_uppercase()),
        };
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for {kind} \"{name}\""),
            Some(format!("{why} requires USAGE on {kind} \"{name}\", owned by {owner}.")),
            Some(format!("Its owner can run {grant}.")),
        );
    }
}

fn check_kind(kind: &str) {
    if !KINDS.contains(&kind) {
        fail(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("cannot grant USAGE on \"{kind}\""), None, Some("Kinds: connection, secret, credential. Sinks are used through their connections.".into()));
    }
}

/// The role to grant to: an existing role, or NULL for PUBLIC.
fn grantee(role: &str) -> Option<String> {
    if role.eq_ignore_ascii_case("public") {
        return None;
    }
    if select_one("SELECT 1::text FROM pg_roles WHERE rolname = $1", &[Some(role)]).is_none() {
        fail(Code::ERRCODE_UNDEFINED_OBJECT, format!("role \"{role}\" does not exist"), None, Some("Create the role first, or grant to PUBLIC.".into()));
    }
    Some(role.to_string())
}

/// Let `role` (or PUBLIC) use a connection, secret or credential.
#[pg_extern(volatile)]
pub fn grant_usage(kind: &str, name: &str, role: &str) {
    check_kind(kind);
    require_owner(kind, name);
    let grantee = grantee(role);
    let by = current_user();
    as_superuser(|| {
        update(
            "INSERT INTO sink.usage_grants (kind, name, grantee, granted_by) VALUES ($1, $2, $3::regrole, $4::regrole) ON CONFLICT DO NOTHING",
            &[Some(kind), Some(name), grantee.as_deref(), Some(&by)],
        )
    });
}

/// Take back USAGE; sinks already created with it keep running.
#[pg_extern(volatile)]
pub fn revoke_usage(kind: &str, name: &str, role: &str) {
    check_kind(kind);
    require_owner(kind, name);
    let grantee = grantee(role);
    as_superuser(|| {
        update(
            "DELETE FROM sink.usage_grants WHERE kind = $1 AND name = $2 AND grantee IS NOT DISTINCT FROM $3::regrole",
            &[Some(kind), Some(name), grantee.as_deref()],
        )
    });
}

/// Forget the grants of a dropped object.
pub fn forget_grants(kind: &str, name: &str) {
    as_superuser(|| update("DELETE FROM sink.usage_grants WHERE kind = $1 AND name = $2", &[Some(kind), Some(name)]));
}

// ---------------------------------------------------------------- credentials

fn credential_from(kind: &str, identity: Option<&str>, secret: Option<&str>, options: &JsonB) -> Credential {
    let serde_json::Value::Object(map) = &options.0 else {
        fail(Code::ERRCODE_INVALID_PARAMETER_VALUE, "credential options must be a JSON object", Some(format!("Got {}.", options.0)), None)
    };
    Credential {
        kind: kind.to_ascii_lowercase(),
        identity: identity.map(str::to_string),
        secret: secret.map(str::to_string),
        options: map.iter().map(|(k, v)| (k.to_ascii_lowercase(), catalog::json_text(v))).collect(),
    }
}

/// Store a Kinetica-style credential: a TYPE, an IDENTITY (user, key id, account)
/// and a SECRET (password, key), plus client options. Connections and sinks use it
/// with the option `credential = 'name'`.
#[pg_extern(volatile)]
pub fn create_credential(
    name: &str,
    kind: &str,
    identity: default!(Option<&str>, "NULL"),
    secret: default!(Option<&str>, "NULL"),
    options: default!(JsonB, "'{}'"),
    if_not_exists: default!(bool, false),
) -> bool {
    super::api::check_name("credential", name);
    let cred = credential_from(kind, identity, secret, &options);
    cred.check(name).or_raise();
    let owner = current_user();
    let by = super::api::created_by();
    as_superuser(|| {
        if let Some(k) = select_one("SELECT kind FROM sink.secrets WHERE name = $1", &[Some(name)]) {
            if if_not_exists && k == "credential" {
                pgrx::notice!("credential \"{name}\" already exists, skipping");
                return false;
            }
            fail(Code::ERRCODE_DUPLICATE_OBJECT, format!("{k} \"{name}\" already exists"), Some("Secrets and credentials share one name space.".into()), Some("Choose another name, or alter the existing one.".into()));
        }
        let value = serde_json::to_string(&cred).unwrap_or_default();
        update("INSERT INTO sink.secrets (name, kind, owner, value, created_by) VALUES ($1, 'credential', $2::regrole, $3, $4)", &[Some(name), Some(&owner), Some(&value), Some(by)]);
        true
    })
}

/// Change a credential: keys `type`, `identity`, `secret`, anything else is an
/// option (a JSON null removes it).
#[pg_extern(volatile)]
pub fn alter_credential(name: &str, options: JsonB) {
    require_owner("credential", name);
    let mut cred = as_superuser(|| catalog::credential(name)).unwrap_or_else(|| missing("credential", name));
    let serde_json::Value::Object(map) = &options.0 else {
        fail(Code::ERRCODE_INVALID_PARAMETER_VALUE, "credential options must be a JSON object", Some(format!("Got {}.", options.0)), None)
    };
    for (k, v) in map {
        let key = k.to_ascii_lowercase();
        let text = (!v.is_null()).then(|| catalog::json_text(v));
        match key.as_str() {
            "type" => cred.kind = text.unwrap_or_default().to_ascii_lowercase(),
            "identity" => cred.identity = text,
            "secret" => cred.secret = text,
            _ => match text {
                Some(t) => {
                    cred.options.insert(key, t);
                }
                None => {
                    cred.options.remove(&key);
                }
            },
        }
    }
    cred.check(name).or_raise();
    let value = serde_json::to_string(&cred).unwrap_or_default();
    as_superuser(|| update("UPDATE sink.secrets SET value = $2 WHERE name = $1 AND kind = 'credential'", &[Some(name), Some(&value)]));
}

#[pg_extern(volatile)]
pub fn drop_credential(name: &str, if_exists: default!(bool, false)) -> bool {
    if !may_drop("credential", name, if_exists) {
        return false;
    }
    let users = as_superuser(|| {
        select(
            "SELECT 'connection ' || name FROM sink.connections WHERE options->>'credential' = $1 \
             UNION ALL SELECT 'sink ' || name FROM sink.sinks WHERE options->>'credential' = $1 ORDER BY 1",
            &[Some(name)],
        )
    });
    let users: Vec<String> = users.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    if !users.is_empty() {
        fail(Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST, format!("cannot drop credential \"{name}\" because it is in use"), Some(format!("Used by: {}.", users.join(", "))), Some("Drop or alter those connections and sinks first.".into()));
    }
    as_superuser(|| update("DELETE FROM sink.secrets WHERE name = $1 AND kind = 'credential'", &[Some(name)]));
    forget_grants("credential", name);
    true
}

/// Expand `credential = 'name'` in options about to be stored or checked, after
/// checking that the caller may use it.
pub fn use_credential(connector: &str, options: &mut BTreeMap<String, String>) {
    let Some(name) = options.get("credential").cloned() else { return };
    require_usage("credential", &name, "Referring to a credential");
    as_superuser(|| catalog::expand_credential(connector, options)).or_raise();
}
