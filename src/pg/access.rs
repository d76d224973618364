//! Who may use and manage the catalog's shared objects: owners, USAGE granted on
//! connections, secrets and credentials (Materialize's `GRANT USAGE`, Kinetica's
//! `GRANT CONNECT ON DATA SINK`), and Kinetica credentials, which are stored like
//! secrets: readable by no one through SQL, used only by the worker.

use std::collections::BTreeMap;

use super::catalog;
use super::errors::{fail, Code, OrRaise};
use super::identity::{as_superuser, current_user, is_superuser};
use super::spi::{select_one, update};

/// Object kinds with an owner and USAGE grants.
pub const KINDS: &[&str] = &["connection", "secret", "credential"];

/// The owner of a connection, secret or credential, if it exists.
pub fn owner_of(kind: &str, name: &str) -> Option<String> {
    as_superuser(|| match kind {
        "connection" => select_one("SELECT owner::text FROM sink.connections WHERE name = $1", &[Some(name)]),
        _ => select_one("SELECT owner::text FROM sink.secrets WHERE name = $1 AND kind = $2", &[Some(name), Some(kind)]),
    })
}

pub(crate) fn missing(kind: &str, name: &str) -> ! {
    let hint = match kind {
        "connection" => "SELECT name FROM sink.connections lists the connections.",
        _ => "SELECT name, kind FROM sink.objects lists the secrets and credentials.",
    };
    fail(Code::ERRCODE_UNDEFINED_OBJECT, format!("{kind} \"{name}\" does not exist"), None, Some(hint.into()))
}

pub(crate) fn is_member(user: &str, role: &str) -> bool {
    select_one("SELECT pg_catalog.pg_has_role($1::name, $2::regrole, 'MEMBER')::text", &[Some(user), Some(role)]).as_deref() == Some("true")
}

/// The caller must own the object (or be a member of its owner, or a superuser).
/// Returns the owner.
pub fn require_owner(kind: &str, name: &str) -> String {
    let Some(owner) = owner_of(kind, name) else { missing(kind, name) };
    if !is_superuser() && !is_member(&current_user(), &owner) {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of {kind} \"{name}\""),
            Some(format!("{} \"{name}\" is owned by {owner}.", capitalized(kind))),
            None,
        );
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

pub(crate) fn capitalized(kind: &str) -> String {
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
            "SELECT 1::text FROM sink.usage_grants WHERE kind = $1 AND name = $2 AND (grantee IS NULL OR pg_catalog.pg_has_role($3::name, grantee, 'MEMBER'))",
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

/// Forget the grants of a dropped object.
pub fn forget_grants(kind: &str, name: &str) {
    as_superuser(|| update("DELETE FROM sink.usage_grants WHERE kind = $1 AND name = $2", &[Some(kind), Some(name)]));
}

// ---------------------------------------------------------------- credentials

/// Expand `credential = 'name'` in options about to be stored or checked, after
/// checking that the caller may use it.
pub fn use_credential(connector: &str, options: &mut BTreeMap<String, String>) {
    let Some(name) = options.get("credential").cloned() else {
        return;
    };
    require_usage("credential", &name, "Referring to a credential");
    as_superuser(|| catalog::expand_credential(connector, options)).or_raise();
}
