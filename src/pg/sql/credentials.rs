//! Kinetica credentials: an identity and a secret stored like secrets (readable
//! by no one through SQL, used only by the worker), created, altered and dropped here.

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::engine::credential::Credential;
use crate::engine::secret::Secret;
use crate::pg::access::{forget_grants, may_drop, missing, require_owner};
use crate::pg::catalog::{self};
use crate::pg::errors::{fail, Code, OrRaise};
use crate::pg::identity::{as_superuser, created_by, current_user};
use crate::pg::spi::{select, select_one, update};

fn credential_from(kind: &str, identity: Option<&str>, secret: Option<&str>, options: &JsonB) -> Credential {
    let serde_json::Value::Object(map) = &options.0 else {
        fail(Code::ERRCODE_INVALID_PARAMETER_VALUE, "credential options must be a JSON object", Some(format!("Got {}.", options.0)), None)
    };
    Credential {
        kind: kind.to_ascii_lowercase(),
        identity: identity.map(str::to_string),
        secret: secret.map(Secret::from),
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
    crate::pg::version::check();
    super::check_name("credential", name);
    let cred = credential_from(kind, identity, secret, &options);
    cred.check(name).or_raise();
    let owner = current_user();
    let by = created_by();
    as_superuser(|| {
        if let Some(k) = select_one("SELECT kind FROM sink.secrets WHERE name = $1", &[Some(name)]) {
            if if_not_exists && k == "credential" {
                pgrx::notice!("credential \"{name}\" already exists, skipping");
                return false;
            }
            fail(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("{k} \"{name}\" already exists"),
                Some("Secrets and credentials share one name space.".into()),
                Some("Choose another name, or alter the existing one.".into()),
            );
        }
        let value = serde_json::to_string(&cred).unwrap_or_default();
        update(
            "INSERT INTO sink.secrets (name, kind, owner, value, created_by) VALUES ($1, 'credential', $2::regrole, $3, $4)",
            &[Some(name), Some(&owner), Some(&value), Some(by)],
        );
        true
    })
}

/// Change a credential: keys `type`, `identity`, `secret`, anything else is an
/// option (a JSON null removes it).
#[pg_extern(volatile)]
pub fn alter_credential(name: &str, options: JsonB) {
    crate::pg::version::check();
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
            "secret" => cred.secret = text.map(Secret::from),
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
    crate::pg::version::check();
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
        fail(
            Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot drop credential \"{name}\" because it is in use"),
            Some(format!("Used by: {}.", users.join(", "))),
            Some("Drop or alter those connections and sinks first.".into()),
        );
    }
    as_superuser(|| update("DELETE FROM sink.secrets WHERE name = $1 AND kind = 'credential'", &[Some(name)]));
    forget_grants("credential", name);
    true
}
