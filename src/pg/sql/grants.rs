//! `grant_usage` / `revoke_usage`: who may use a connection, secret or credential
//! (Materialize's `GRANT USAGE`, Kinetica's `GRANT CONNECT ON DATA SINK`).

use pgrx::prelude::*;

use crate::pg::access::{require_owner, KINDS};
use crate::pg::errors::{fail, Code};
use crate::pg::identity::{as_superuser, current_user};
use crate::pg::spi::{select_one, update};

fn check_kind(kind: &str) {
    if !KINDS.contains(&kind) {
        fail(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("cannot grant USAGE on \"{kind}\""),
            None,
            Some("Kinds: connection, secret, credential. Sinks are used through their connections.".into()),
        );
    }
}

/// The role to grant to: an existing role, or NULL for PUBLIC.
fn grantee(role: &str) -> Option<String> {
    if role.eq_ignore_ascii_case("public") {
        return None;
    }
    if select_one("SELECT 1::text FROM pg_roles WHERE rolname = $1", &[Some(role)]).is_none() {
        fail(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("role \"{role}\" does not exist"),
            None,
            Some("Create the role first, or grant to PUBLIC.".into()),
        );
    }
    Some(role.to_string())
}

/// Let `role` (or PUBLIC) use a connection, secret or credential.
#[pg_extern(volatile)]
pub fn grant_usage(kind: &str, name: &str, role: &str) {
    crate::pg::version::check();
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
    crate::pg::version::check();
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
