//! TLS for connectors that speak their own protocol over TCP (the jdbc connector's
//! PostgreSQL and MySQL clients, NATS): one [`TlsMode`] read from the words each
//! driver's users know (libpq/pgjdbc `sslmode`, MySQL Connector/J `sslMode` and
//! `useSSL`, MariaDB Connector/J `sslMode`), and the rustls client configuration
//! that enforces it. Certificates to trust are given inline as PEM (`ssl_ca`, as
//! the webhook and the registry take them); without it, the Mozilla roots.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::engine::error::{Result, SinkError};

/// How much TLS a connection needs, weakest first (libpq's modes; `allow` reads as
/// `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's and
    /// the drivers' default): protects against listening, not against an active
    /// attacker.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, and the certificate chains to a trusted authority (any host name).
    VerifyCa,
    /// TLS, a trusted chain, and the certificate names the host connected to.
    VerifyFull,
}

impl TlsMode {
    pub fn verifies(self) -> bool {
        self >= TlsMode::VerifyCa
    }

    /// libpq / pgjdbc `sslmode` (and pgjdbc's `ssl=true`, which means verify-full).
    pub fn from_pg(value: &str) -> Result<TlsMode> {
        match value.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(TlsMode::Disable),
            "allow" | "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" => Ok(TlsMode::VerifyFull),
            other => Err(bad_mode("sslmode", other, "disable, allow, prefer, require, verify-ca or verify-full")),
        }
    }

    /// MySQL Connector/J `sslMode` (DISABLED … VERIFY_IDENTITY) and MariaDB
    /// Connector/J `sslMode` (disable, trust, verify-ca, verify-full).
    pub fn from_mysql(value: &str) -> Result<TlsMode> {
        match value.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "disabled" | "disable" => Ok(TlsMode::Disable),
            "preferred" | "prefer" => Ok(TlsMode::Prefer),
            "required" | "require" | "trust" => Ok(TlsMode::Require),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-identity" | "verify-full" => Ok(TlsMode::VerifyFull),
            other => Err(bad_mode(
                "sslMode",
                other,
                "DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY (MariaDB: disable, trust, verify-ca, verify-full)",
            )),
        }
    }
}

fn bad_mode(option: &str, value: &str, allowed: &str) -> SinkError {
    SinkError::config(format!("invalid value for \"{option}\": \"{value}\"")).hint(format!("Use {allowed}."))
}

/// Trusted certificates from inline PEM (`what` names the option in errors).
pub fn root_store(ca_pem: Option<&str>, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(|c| c.ok()).collect();
            if certs.is_empty() {
                return Err(SinkError::config(format!("invalid {what}: no PEM certificate found"))
                    .hint("Give the certificate authority's certificate in PEM form (-----BEGIN CERTIFICATE----- ...)."));
            }
            for c in certs {
                roots.add(c).map_err(|e| SinkError::config(format!("invalid {what}: {e}")))?;
            }
        }
    }
    Ok(roots)
}

/// Make ring the process's default rustls provider (clients that build their own
/// configuration, mysql_async, need one; two are compiled in). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `mode` (not used for `Disable`).
pub fn client_config(mode: TlsMode, ca_pem: Option<&str>, what: &str) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::permanent(format!("TLS setup failed: {e}")))?;
    let roots = Arc::new(root_store(ca_pem, what)?);
    let config = match mode {
        TlsMode::VerifyFull => builder.with_root_certificates(roots).with_no_client_auth(),
        TlsMode::VerifyCa | TlsMode::Prefer | TlsMode::Require | TlsMode::Disable => {
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| SinkError::permanent(format!("TLS setup failed: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient { chain, check_chain: mode == TlsMode::VerifyCa }))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// `verify-ca`: the chain must verify, the name need not match. `prefer`/`require`:
/// nothing is checked but the handshake's signatures (libpq does the same).
#[derive(Debug)]
struct Lenient {
    chain: Arc<WebPkiServerVerifier>,
    check_chain: bool,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Whether a client's error text says TLS itself was refused (a certificate that
/// does not verify, a server without TLS where it is required), not that the
/// network failed during a handshake.
pub fn is_refusal(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "notvalidforname",
        "does not support tls",
        "tls required",
        "requires tls",
        "ssl is not enabled",
        "nosslflag",
        "noclientsslflag",
        // a plain server answering a TLS hello
        "invalidcontenttype",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// A TLS refusal is the user's to fix: permanent, with a hint naming the options.
pub fn tls_error(target: &str, detail: impl std::fmt::Display, options: &str) -> SinkError {
    SinkError::permanent(format!("TLS to {target} failed: {detail}"))
        .detail("The connection's TLS requirements (sslmode and the trusted certificates) were not met.")
        .hint(format!("Check {options}: verify-full needs a certificate naming the host, signed by the authority in ssl_ca."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_every_driver_spelling() {
        assert_eq!(TlsMode::from_pg("verify-full").unwrap(), TlsMode::VerifyFull);
        assert_eq!(TlsMode::from_pg("allow").unwrap(), TlsMode::Prefer);
        assert!(TlsMode::from_pg("verify_full").unwrap_err().hint.unwrap().contains("verify-full"));
        assert_eq!(TlsMode::from_mysql("VERIFY_IDENTITY").unwrap(), TlsMode::VerifyFull);
        assert_eq!(TlsMode::from_mysql("trust").unwrap(), TlsMode::Require);
        assert_eq!(TlsMode::from_mysql("verify-ca").unwrap(), TlsMode::VerifyCa);
        assert!(TlsMode::from_mysql("yes").is_err());
        assert!(TlsMode::VerifyCa.verifies() && !TlsMode::Require.verifies());
    }

    #[test]
    fn bad_certificates_are_config_errors() {
        let e = root_store(Some("not pem"), "jdbc ssl_ca").unwrap_err();
        assert!(e.message.contains("jdbc ssl_ca"));
        assert!(root_store(None, "x").unwrap().len() > 50);
        for mode in [TlsMode::Prefer, TlsMode::Require, TlsMode::VerifyCa, TlsMode::VerifyFull] {
            assert!(client_config(mode, None, "x").is_ok());
        }
    }
}
