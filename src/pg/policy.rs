//! What a role other than a superuser may do through pg_sink, beyond the table
//! and schema privileges Postgres checks itself (README, "Privileges"): who may
//! create sinks and how many, sources under row-level security, which options a
//! connection's grantee may set, where `file` sinks may write, which hosts
//! outbound connectors may reach, and secrets given inline, which are moved into
//! the closed secrets table instead of the readable catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::engine::connector::{reach, registry};
use crate::engine::secret::holds_secret;

use super::catalog;
use super::errors::{fail, Code};
use super::gucs;
use super::identity::{as_superuser, current_user, is_superuser};
use super::spi::{select_one, update};

/// The role whose members may create sinks (besides superusers and roles with
/// REPLICATION, which Postgres lets create slots anyway). Made by the extension.
pub const CREATOR_ROLE: &str = "sink_creator";

fn yes(sql: &str, params: &[Option<&str>]) -> bool {
    select_one(sql, params).as_deref() == Some("true")
}

/// Raise unless the caller may create one more sink: superuser, REPLICATION or
/// a member of `sink_creator`; under `pg_sink.max_sinks_per_role`; and a free
/// replication slot.
pub fn require_may_create_sink() {
    let user = current_user();
    if !is_superuser() {
        let allowed = yes(
            "SELECT (r.rolreplication OR coalesce(pg_catalog.pg_has_role(r.oid, c.oid, 'MEMBER'), false))::text \
               FROM pg_catalog.pg_roles r LEFT JOIN pg_catalog.pg_roles c ON c.rolname = $2 WHERE r.rolname = $1",
            &[Some(&user), Some(CREATOR_ROLE)],
        );
        if !allowed {
            fail(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "permission denied to create sink",
                Some(format!("A sink holds a replication slot; role \"{user}\" is not a member of {CREATOR_ROLE} and has no REPLICATION attribute.")),
                Some(format!("An administrator can run GRANT {CREATOR_ROLE} TO \"{user}\".")),
            );
        }
        let quota = gucs::max_sinks_per_role();
        let owned: i64 = as_superuser(|| select_one("SELECT count(*)::text FROM sink.sinks WHERE owner = $1::regrole", &[Some(&user)]))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if owned >= quota {
            fail(
                Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!("role \"{user}\" may not own more than {quota} sinks"),
                Some(format!("It owns {owned}; pg_sink.max_sinks_per_role is {quota}.")),
                Some("Drop a sink it no longer needs, or ask an administrator to raise pg_sink.max_sinks_per_role.".into()),
            );
        }
    }
    let free = yes("SELECT (count(*) < pg_catalog.current_setting('max_replication_slots')::int)::text FROM pg_catalog.pg_replication_slots", &[]);
    if !free {
        fail(
            Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "all replication slots are in use",
            Some("Every sink needs a replication slot; max_replication_slots are all taken.".into()),
            Some("Drop a sink or slot that is no longer needed, or raise max_replication_slots (restart needed).".into()),
        );
    }
}

/// Raise when row-level security would hide rows of the source from the caller:
/// the slot and the snapshot see every row, so such a table can only be a
/// source for a role that bypasses its policies (superuser, BYPASSRLS, or its
/// owner unless FORCE ROW LEVEL SECURITY).
pub fn check_source_rls(oid: u32, name: &str) {
    let oid = oid.to_string();
    let hidden = yes(
        "SELECT (c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls \
                 AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')))::text \
           FROM pg_catalog.pg_class c, pg_catalog.pg_roles r WHERE c.oid = $1::oid AND r.rolname = current_user",
        &[Some(&oid)],
    );
    if hidden {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("table {name} has row-level security"),
            Some("A sink streams every row of its source, so its policies would not apply.".into()),
            Some(
                "Create the sink as a role that bypasses them: the table's owner (without FORCE ROW LEVEL SECURITY) or a role with BYPASSRLS.".into(),
            ),
        );
    }
}

/// A sink's connection as seen by the role creating or altering the sink.
pub struct ConnectionUse<'a> {
    pub name: &'a str,
    pub options: &'a BTreeMap<String, String>,
}

/// Check the options a caller sets on a sink (`set_here`, keys only matter) given
/// the resolved options it runs with: a grantee of USAGE on the connection may
/// not override the connection's options or set any that say where data or
/// credentials go; `file` directories and outbound hosts must be allowed.
pub fn check_sink_options(connector: &str, set_here: &BTreeMap<String, String>, effective: &BTreeMap<String, String>, conn: Option<ConnectionUse>) {
    let mut own_destination = conn.is_none();
    if let Some(c) = &conn {
        let owner = super::access::owner_of("connection", c.name).unwrap_or_default();
        let owns = is_superuser() || super::access::is_member(&current_user(), &owner);
        for k in set_here.keys() {
            let destination = reach::is_destination_option(k);
            own_destination |= destination;
            if !owns && (destination || c.options.contains_key(k)) {
                fail(
                    Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!("option \"{k}\" cannot be set on a sink that uses connection \"{}\"", c.name),
                    Some(format!(
                        "Connection \"{}\" is owned by {owner}; a role with only USAGE on it may not change where it sends data or how it authenticates.",
                        c.name
                    )),
                    Some("Leave the option out, or ask the connection's owner for a connection with the setting you need.".into()),
                );
            }
        }
    }
    if own_destination {
        check_reach(connector, effective);
    }
}

/// `file` directories and outbound hosts of options this caller chose.
pub fn check_reach(connector: &str, options: &BTreeMap<String, String>) {
    if is_superuser() {
        return;
    }
    let name = registry::spec(connector).map(|s| s.name).unwrap_or(connector);
    if let Some(dir) = reach::file_directory(name, options) {
        check_file_directory(&dir);
    }
    let allowed = gucs::allowed_hosts();
    if allowed.is_empty() {
        return;
    }
    for host in reach::hosts(name, options) {
        if !reach::host_allowed(&host, &allowed) {
            fail(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("connecting to host \"{host}\" is not allowed"),
                Some(format!("pg_sink.allowed_hosts is \"{}\".", allowed.join(", "))),
                Some("Use an allowed host, or ask an administrator to add this one to pg_sink.allowed_hosts.".into()),
            );
        }
    }
}

/// A path with symbolic links resolved as far as it exists.
fn resolved(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = vec![];
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent().map(Path::to_path_buf)) {
            (Some(n), Some(p)) => {
                rest.push(n);
                existing = p;
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    out.extend(rest.into_iter().rev());
    out
}

/// Roles may write server files only as Postgres lets them (superuser or
/// `pg_write_server_files`), or under `pg_sink.file_root`.
fn check_file_directory(dir: &str) {
    if yes("SELECT pg_catalog.pg_has_role('pg_write_server_files', 'USAGE')::text", &[]) {
        return;
    }
    let refuse = |detail: String| -> ! {
        fail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to write files in \"{dir}\""),
            Some(detail),
            Some("Write under pg_sink.file_root, or ask an administrator to GRANT pg_write_server_files (or to set pg_sink.file_root).".into()),
        )
    };
    let Some(root) = gucs::file_root() else {
        refuse("Only superusers and members of pg_write_server_files may write server files, and pg_sink.file_root is not set.".into())
    };
    let Some(path) = reach::normalized_absolute(dir) else { refuse("The path must be absolute and may not climb above /.".into()) };
    let root_path = resolved(&reach::normalized_absolute(&root).unwrap_or_else(|| PathBuf::from(&root)));
    if !resolved(&path).starts_with(&root_path) {
        refuse(format!("It is outside pg_sink.file_root ({root})."));
    }
}

/// The name an inline secret of `option` on `object` is kept under.
fn inline_name(kind: &str, object: &str, option: &str) -> String {
    format!("{kind}:{object}:{option}")
}

/// Move option values that are secrets (passwords, tokens, keys, URLs with a
/// password) out of `opts` into the secrets table, owned by the caller, and
/// leave `{"secret": name}` references in their place. They are dropped with
/// the object ([`forget_inline_secrets`]).
pub fn move_inline_secrets(kind: &str, object: &str, opts: &mut BTreeMap<String, String>) {
    let owner = current_user();
    for (k, v) in opts.iter_mut() {
        if catalog::secret_ref(v).is_some() || !holds_secret(k, v) {
            continue;
        }
        let name = inline_name(kind, object, k);
        as_superuser(|| {
            update("DELETE FROM sink.secrets WHERE name = $1 AND created_by = 'inline'", &[Some(&name)]);
            if select_one("SELECT 1::text FROM sink.secrets WHERE name = $1", &[Some(&name)]).is_some() {
                fail(
                    Code::ERRCODE_DUPLICATE_OBJECT,
                    format!("secret \"{name}\" already exists"),
                    Some(format!("The inline value of option \"{k}\" is kept as that secret.")),
                    Some("Drop or rename that secret, or refer to one with {\"secret\": \"name\"}.".into()),
                );
            }
            update(
                "INSERT INTO sink.secrets (name, owner, value, created_by) VALUES ($1, $2::regrole, $3, 'inline')",
                &[Some(&name), Some(&owner), Some(v.as_str())],
            );
        });
        *v = serde_json::json!({ "secret": name }).to_string();
    }
}

/// Drop the inline secrets of a dropped sink or connection.
pub fn forget_inline_secrets(kind: &str, object: &str) {
    let prefix = format!("{kind}:{object}:");
    as_superuser(|| update("DELETE FROM sink.secrets WHERE created_by = 'inline' AND pg_catalog.starts_with(name, $1)", &[Some(&prefix)]));
}
