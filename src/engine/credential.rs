//! Kinetica-style credentials: a named TYPE / IDENTITY / SECRET (plus options)
//! that a connection or sink refers to with `credential = 'name'`. This module
//! owns the credential types and how each one becomes a connector's own options;
//! storage and privileges are the glue's.

use crate::engine::secret::Secret;
use std::collections::BTreeMap;

use super::error::{Result, SinkError};

/// Kinetica's credential types.
pub const TYPES: &[&str] = &[
    "aws_access_key",
    "aws_iam_role",
    "azure_ad",
    "azure_oauth",
    "azure_sas",
    "azure_storage_key",
    "docker",
    "gcs_service_account_id",
    "gcs_service_account_keys",
    "hdfs",
    "jdbc",
    "kafka",
    "password",
];

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Credential {
    /// Check the type and the fields it needs.
    pub fn check(&self, name: &str) -> Result<()> {
        if !TYPES.contains(&self.kind.as_str()) {
            return Err(SinkError::config(format!("unknown credential type \"{}\"", self.kind))
                .detail(format!("Credential \"{name}\" cannot be created."))
                .hint(format!("Types: {}.", TYPES.join(", "))));
        }
        let needs_secret = !matches!(self.kind.as_str(), "aws_iam_role" | "gcs_service_account_id" | "hdfs");
        if needs_secret && self.secret.as_deref().unwrap_or_default().is_empty() {
            return Err(SinkError::config(format!("credential type \"{}\" requires a SECRET", self.kind)).hint("Add SECRET = '...'."));
        }
        let needs_identity = matches!(
            self.kind.as_str(),
            "aws_access_key" | "aws_iam_role" | "azure_storage_key" | "azure_sas" | "azure_ad" | "jdbc" | "password" | "gcs_service_account_id"
        );
        if needs_identity && self.identity.as_deref().unwrap_or_default().is_empty() {
            return Err(SinkError::config(format!("credential type \"{}\" requires an IDENTITY", self.kind)).hint("Add IDENTITY = '...'."));
        }
        Ok(())
    }

    /// The connector options this credential stands for.
    pub fn expand(&self, name: &str, connector: &str) -> Result<Vec<(String, String)>> {
        let id = self.identity.clone().unwrap_or_default();
        let secret = self.secret.clone().unwrap_or_default();
        let Some(mut out) = base_options(connector, &self.kind, &id, &secret) else {
            let fits: Vec<&str> = TYPES.iter().copied().filter(|t| base_options(connector, t, "x", "x").is_some()).collect();
            return Err(SinkError::config(format!("credential \"{name}\" of type {} cannot be used by the {connector} connector", self.kind)).hint(
                if fits.is_empty() {
                    format!("The {connector} connector takes no credential; give its options directly.")
                } else {
                    format!("Use a credential of type {}.", fits.join(" or "))
                },
            ));
        };
        // Kafka credentials carry client properties (Kinetica: security.protocol, sasl.mechanism, ...).
        for (k, v) in &self.options {
            let k = k.to_ascii_lowercase();
            let mapped = match (connector, k.as_str()) {
                ("kafka", "security.protocol") => "security_protocol".to_string(),
                ("kafka", "sasl.mechanism" | "sasl.mechanisms") => "sasl_mechanisms".to_string(),
                ("kafka", _) => format!("properties.{k}"),
                ("azblob", "azure_tenant_id" | "tenant_id") => "azure_tenant_id".to_string(),
                _ => return Err(SinkError::config(format!(
                    "credential \"{name}\" has option \"{k}\", which the {connector} connector does not take"
                ))
                .hint(
                    "Credential options are client properties of Kafka credentials (security.protocol, sasl.mechanism, ...) and azure_tenant_id.",
                )),
            };
            out.push((mapped, v.clone()));
        }
        Ok(out)
    }
}

/// The options a credential TYPE gives a connector, or None if they do not fit.
fn base_options(connector: &str, kind: &str, id: &str, secret: &str) -> Option<Vec<(String, String)>> {
    let pairs = |v: &[(&str, &str)]| Some(v.iter().filter(|(_, x)| !x.is_empty()).map(|(k, x)| (k.to_string(), x.to_string())).collect::<Vec<_>>());
    match (connector, kind) {
        ("kafka", "kafka" | "password") => pairs(&[("sasl_username", id), ("sasl_password", secret)]),
        ("s3" | "kinesis", "aws_access_key") => pairs(&[("aws.credentials.access_key_id", id), ("aws.credentials.secret_access_key", secret)]),
        ("kinesis", "aws_iam_role") => pairs(&[("aws.credentials.role.arn", id), ("aws.credentials.role.external_id", secret)]),
        ("azblob", "azure_storage_key") => pairs(&[("azure_storage_account_name", id), ("azure_storage_account_key", secret)]),
        ("azblob", "azure_sas") => pairs(&[("azure_storage_account_name", id), ("azure_sas_token", secret)]),
        ("azblob", "azure_ad") => pairs(&[("azure_client_id", id), ("azure_client_secret", secret)]),
        ("gcs", "gcs_service_account_keys") => pairs(&[("gcs_service_account_keys", secret)]),
        ("jdbc", "jdbc" | "password") => pairs(&[("user", id), ("password", secret)]),
        ("webhook", "password") if id.is_empty() => pairs(&[("bearer_token", secret)]),
        ("webhook", "password") => pairs(&[("username", id), ("password", secret)]),
        ("nats", "password") => pairs(&[("username", id), ("password", secret), ("connect_mode", "user_and_password")]),
        // The user of simple authentication; a secret would be Kerberos' keytab,
        // which the hdfs connector refuses with its reason.
        ("hdfs", "hdfs") => pairs(&[("hdfs_user", id), ("hdfs_kerberos_keytab", secret)]),
        _ => None,
    }
}

/// Replace `credential` in `options` by what it stands for; options given
/// explicitly win over the credential's.
pub fn apply(options: &mut BTreeMap<String, String>, name: &str, cred: &Credential, connector: &str) -> Result<()> {
    options.remove("credential");
    for (k, v) in cred.expand(name, connector)? {
        options.entry(k).or_insert(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(kind: &str, id: &str, secret: &str) -> Credential {
        Credential { kind: kind.into(), identity: Some(id.into()), secret: Some(secret.into()), options: BTreeMap::new() }
    }

    #[test]
    fn each_connector_gets_its_own_option_names() {
        let mut k = cred("kafka", "u", "p");
        k.options.insert("security.protocol".into(), "SASL_SSL".into());
        k.options.insert("sasl.mechanism".into(), "SCRAM-SHA-256".into());
        k.options.insert("ssl.endpoint.identification.algorithm".into(), "none".into());
        let mut opts = BTreeMap::from([("credential".to_string(), "k".to_string()), ("sasl_username".to_string(), "explicit".to_string())]);
        apply(&mut opts, "k", &k, "kafka").unwrap();
        assert_eq!(
            opts,
            BTreeMap::from([
                ("sasl_username".to_string(), "explicit".to_string()),
                ("sasl_password".to_string(), "p".to_string()),
                ("security_protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl_mechanisms".to_string(), "SCRAM-SHA-256".to_string()),
                ("properties.ssl.endpoint.identification.algorithm".to_string(), "none".to_string()),
            ])
        );
        assert_eq!(
            cred("aws_access_key", "AK", "SK").expand("c", "s3").unwrap()[1],
            ("aws.credentials.secret_access_key".to_string(), "SK".to_string())
        );
        assert_eq!(cred("azure_sas", "acct", "sv=1").expand("c", "azblob").unwrap()[1].0, "azure_sas_token");
        assert_eq!(
            cred("jdbc", "u", "p").expand("c", "jdbc").unwrap(),
            vec![("user".to_string(), "u".to_string()), ("password".to_string(), "p".to_string())]
        );
        assert_eq!(cred("password", "", "tok").expand("c", "webhook").unwrap(), vec![("bearer_token".to_string(), "tok".to_string())]);
        assert_eq!(cred("password", "u", "p").expand("c", "nats").unwrap().len(), 3);
    }

    #[test]
    fn mismatches_and_missing_fields_are_refused() {
        let e = cred("aws_access_key", "a", "b").expand("c", "kafka").unwrap_err();
        assert!(e.to_string().contains("cannot be used by the kafka connector"), "{e}");
        assert!(e.hint.as_deref().unwrap().contains("kafka or password"), "{:?}", e.hint);
        assert!(cred("kafka", "u", "p").expand("c", "table").unwrap_err().hint.unwrap().contains("takes no credential"));
        assert!(cred("telepathy", "u", "p").check("c").is_err());
        assert!(cred("jdbc", "", "p").check("c").unwrap_err().to_string().contains("IDENTITY"));
        assert!(cred("kafka", "u", "").check("c").unwrap_err().to_string().contains("SECRET"));
        assert!(cred("kafka", "", "p").check("c").is_ok());
        let mut bad = cred("jdbc", "u", "p");
        bad.options.insert("x".into(), "y".into());
        assert!(bad.expand("c", "jdbc").is_err());
    }
}
