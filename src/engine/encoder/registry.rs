//! A Confluent Schema Registry client: the part of the REST API a sink needs
//! (register a schema under a subject, set a subject's compatibility level, check
//! that the registry answers). Blocking HTTP (ureq), because schemas are registered
//! from the encoder, on the backend's thread, before the first record that needs one.
//!
//! Errors carry the kind the worker acts on: a registry that cannot be reached or
//! answers 5xx is transient (retried, nothing skipped); an incompatible schema (409),
//! refused credentials (401/403) or an invalid request (422) stop the sink.

use crate::engine::secret::Secret;
use std::time::Duration;

use base64::Engine as _;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use crate::engine::error::{Result, SinkError};

/// How to reach a registry (RisingWave's `schema.registry*` options; a Materialize
/// CSR connection is mapped onto them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrySettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// PEM CA certificate(s) to trust instead of the built-in roots.
    pub ca_pem: Option<String>,
    /// PEM client certificate and key for mutual TLS.
    pub cert_pem: Option<String>,
    pub key_pem: Option<Secret>,
    pub timeout: Duration,
}

impl RegistrySettings {
    /// Take the `schema.registry*` options out of a sink's options: `None` when
    /// there are none, an error when some are given without the URL or are invalid.
    pub fn take_from(opts: &mut std::collections::BTreeMap<String, String>) -> Result<Option<Self>> {
        // A bare `host:port` (as in Materialize's examples) means HTTPS.
        let url = opts.remove("schema.registry").map(|u| if u.contains("://") || u.trim().is_empty() { u } else { format!("https://{}", u.trim()) });
        let settings = RegistrySettings {
            url: url.clone().unwrap_or_default(),
            username: opts.remove("schema.registry.username"),
            password: opts.remove("schema.registry.password").map(Secret::from),
            ca_pem: opts.remove("schema.registry.ssl_ca"),
            cert_pem: opts.remove("schema.registry.ssl_certificate"),
            key_pem: opts.remove("schema.registry.ssl_key").map(Secret::from),
            timeout: Duration::from_secs(10),
        };
        if url.is_none() {
            let s = &settings;
            if s.username.is_some() || s.password.is_some() || s.ca_pem.is_some() || s.cert_pem.is_some() || s.key_pem.is_some() {
                return Err(SinkError::config("schema registry options without a registry URL").hint("Give schema.registry (or csr_connection)."));
            }
            return Ok(None);
        }
        settings.validate()?;
        Ok(Some(settings))
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) || self.url.contains(char::is_whitespace) {
            return Err(SinkError::config(format!("invalid schema registry URL \"{}\"", self.url))
                .hint("Give an http:// or https:// URL, e.g. schema.registry => 'http://localhost:8081'."));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(SinkError::config("a schema registry password requires a username").hint("Give schema.registry.username too."));
        }
        if self.cert_pem.is_some() != self.key_pem.is_some() {
            return Err(SinkError::config("a schema registry client certificate and its key must be given together")
                .hint("Give both schema.registry.ssl_certificate and schema.registry.ssl_key, or neither."));
        }
        Ok(())
    }
}

/// Options of a `confluent_schema_registry` connection (Materialize's CSR
/// connection) and the sink option each becomes.
pub const CONNECTION_OPTIONS: &[(&str, &str, &str)] = &[
    ("url", "schema.registry", "registry URL, e.g. http://localhost:8081"),
    ("username", "schema.registry.username", "basic auth user"),
    ("password", "schema.registry.password", "basic auth password (use a secret)"),
    ("ssl_certificate_authority", "schema.registry.ssl_ca", "PEM CA certificate to trust"),
    ("ssl_certificate", "schema.registry.ssl_certificate", "PEM client certificate"),
    ("ssl_key", "schema.registry.ssl_key", "PEM client key (use a secret)"),
];

/// Connection kinds that name a schema registry.
pub fn is_registry_kind(kind: &str) -> bool {
    matches!(kind.to_ascii_lowercase().replace(' ', "_").as_str(), "confluent_schema_registry" | "csr")
}

/// Check a registry connection's options; returns them as sink options.
pub fn connection_to_sink_options(
    conn: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in options {
        let Some((_, sink_name, _)) = CONNECTION_OPTIONS.iter().find(|(c, _, _)| c == k) else {
            return Err(SinkError::config(format!("unknown option \"{k}\" for a schema registry connection"))
                .hint(format!("Valid options: {}.", CONNECTION_OPTIONS.iter().map(|(c, _, _)| *c).collect::<Vec<_>>().join(", "))));
        };
        out.insert(sink_name.to_string(), v.clone());
    }
    if !out.contains_key("schema.registry") {
        return Err(SinkError::config(format!("schema registry connection \"{conn}\" needs option \"url\""))
            .hint("For example url => 'http://localhost:8081'."));
    }
    Ok(out)
}

pub struct Registry {
    settings: RegistrySettings,
    agent: ureq::Agent,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl Registry {
    pub fn new(settings: &RegistrySettings) -> Result<Self> {
        settings.validate()?;
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &settings.ca_pem {
            let certs = pem_certs(ca, "schema registry CA certificate")?;
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        if let (Some(cert), Some(key)) = (&settings.cert_pem, &settings.key_pem) {
            let chain = pem_certs(cert, "schema registry client certificate")?;
            let key = PrivateKey::from_pem(key.as_bytes())
                .map_err(|e| SinkError::config(format!("invalid schema registry client key: {e}")).hint("Give the key in PEM form."))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let timeout = if settings.timeout.is_zero() { Duration::from_secs(10) } else { settings.timeout };
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).tls_config(tls.build()).build().into();
        Ok(Registry { settings: settings.clone(), agent })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.settings.url.trim_end_matches('/'), path)
    }

    fn auth(&self) -> Option<String> {
        self.settings.username.as_ref().map(|u| {
            let pair = format!("{u}:{}", self.settings.password.as_deref().unwrap_or(""));
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        })
    }

    /// One request; returns (status, parsed body).
    fn call(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<(u16, serde_json::Value)> {
        let url = self.url(path);
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url).header("Accept", CONTENT_TYPE);
                if let Some(a) = self.auth() {
                    r = r.header("Authorization", &a);
                }
                r.call()
            }
            (_, b) => {
                let text = b.map(|v| v.to_string()).unwrap_or_default();
                let mut r = if method == "PUT" { self.agent.put(&url) } else { self.agent.post(&url) };
                r = r.header("Accept", CONTENT_TYPE).header("Content-Type", CONTENT_TYPE);
                if let Some(a) = self.auth() {
                    r = r.header("Authorization", &a);
                }
                r.send(text.as_str())
            }
        };
        let mut resp = result.map_err(|e| {
            SinkError::transient(format!("schema registry request {method} {path} failed: {e}"))
                .hint("Check the registry URL and that it is running; the sink retries.")
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, json))
    }

    fn error(&self, what: &str, status: u16, body: &serde_json::Value) -> SinkError {
        let message = body.get("message").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| body.to_string());
        let text = format!("schema registry refused to {what}: {message}");
        match status {
            409 => SinkError::permanent(format!("schema registry refused to {what}: the schema is incompatible"))
                .detail(message)
                .hint("Change the subject's compatibility level, or the table back; then resume the sink."),
            401 | 403 => SinkError::permanent(text).hint("Check schema.registry.username and schema.registry.password."),
            s if s >= 500 || s == 429 => SinkError::transient(text).hint("The sink retries."),
            _ => SinkError::permanent(text).detail(format!("HTTP status {status}.")),
        }
    }

    /// Register `schema` under `subject`; returns its id (the existing id when the
    /// subject already has it).
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let body = serde_json::json!({"schema": schema});
        let (status, resp) = self.call("POST", &format!("/subjects/{}/versions", encode_path(subject)), Some(&body))?;
        if status != 200 {
            return Err(self.error(&format!("register a schema under subject \"{subject}\""), status, &resp));
        }
        resp.get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| SinkError::permanent(format!("schema registry answered without a schema id: {resp}")))
    }

    /// Whether `schema` could be registered under `subject` by the subject's
    /// compatibility level: `None` if so (or if the subject has no version yet),
    /// else the registry's reasons.
    pub fn incompatibility(&self, subject: &str, schema: &str) -> Result<Option<String>> {
        let body = serde_json::json!({"schema": schema});
        let (status, resp) = self.call("POST", &format!("/compatibility/subjects/{}/versions/latest?verbose=true", encode_path(subject)), Some(&body))?;
        match status {
            200 if resp.get("is_compatible").and_then(|c| c.as_bool()) == Some(true) => Ok(None),
            200 => {
                let messages = resp.get("messages").map(|m| m.to_string()).unwrap_or_else(|| "the registry gives no reason".into());
                Ok(Some(messages))
            }
            // No subject or version yet: any first schema is accepted.
            404 => Ok(None),
            _ => Err(self.error(&format!("check a schema against subject \"{subject}\""), status, &resp)),
        }
    }

    /// Set a subject's compatibility level.
    pub fn set_compatibility(&self, subject: &str, level: &str) -> Result<()> {
        let body = serde_json::json!({"compatibility": level});
        let (status, resp) = self.call("PUT", &format!("/config/{}", encode_path(subject)), Some(&body))?;
        if status != 200 {
            return Err(self.error(&format!("set the compatibility level of subject \"{subject}\""), status, &resp));
        }
        Ok(())
    }

    /// Check that the registry answers and accepts the credentials.
    pub fn check(&self) -> Result<()> {
        let (status, resp) = self.call("GET", "/subjects", None)?;
        if status != 200 {
            return Err(self.error("list subjects", status, &resp));
        }
        Ok(())
    }
}

pub(crate) fn pem_certs(pem: &str, what: &str) -> Result<Vec<Certificate<'static>>> {
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem.as_bytes())
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(SinkError::config(format!("invalid {what}: no PEM certificate found")).hint("Give the certificate in PEM form."));
    }
    Ok(certs)
}

/// Percent-encode a subject for a URL path.
fn encode_path(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = RegistrySettings { url: "http://localhost:8081".into(), ..Default::default() };
        assert!(ok.validate().is_ok());
        let mut bare = std::collections::BTreeMap::from([("schema.registry".to_string(), "csr.example.com:9093".to_string())]);
        assert_eq!(RegistrySettings::take_from(&mut bare).unwrap().unwrap().url, "https://csr.example.com:9093");
        let bad = RegistrySettings { url: "ftp://localhost:8081".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().message.contains("invalid schema registry URL"));
        let bad = RegistrySettings { password: Some("p".into()), ..ok.clone() };
        assert!(bad.validate().unwrap_err().message.contains("requires a username"));
        let bad = RegistrySettings { cert_pem: Some("x".into()), ..ok.clone() };
        assert!(bad.validate().unwrap_err().message.contains("together"));
        assert!(Registry::new(&RegistrySettings { ca_pem: Some("not pem".into()), ..ok }).is_err());
        assert_eq!(encode_path("a b/c-key"), "a%20b%2Fc-key");
    }

    #[test]
    fn an_unreachable_registry_is_transient() {
        let r = Registry::new(&RegistrySettings { url: "http://127.0.0.1:1".into(), timeout: Duration::from_secs(2), ..Default::default() }).unwrap();
        let e = r.register("t-value", "\"string\"").unwrap_err();
        assert!(e.is_transient(), "{e:?}");
    }
}
