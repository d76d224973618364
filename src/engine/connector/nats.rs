//! `nats`: NATS subjects, with RisingWave's NATS sink options, plus JetStream.
//!
//! * Core NATS: records are published and the connection flushed. This is
//!   at-least-once, as the seed promises: a retried batch is published again.
//! * JetStream (`jetstream = true`): each record is published with an ack and a
//!   `Nats-Msg-Id` of `<sink uid>-<commit LSN>-<position in its transaction>`.
//!   Redeliveries inside the stream's duplicate window are dropped by the server,
//!   so consumers see each change once.
//!
//! Subjects may use `{schema}`, `{table}` and `{op}`, filled in per record.
//! Credentials go through the client's options, never inside URLs (the client
//! ignores them there).

use crate::engine::secret::Secret;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use bytes::Bytes;

use super::{Batch, Connector, ConnectorConfig, ConnectorSpec, Record, SqlSession};
use crate::engine::envelope::Payload;
use crate::engine::error::{Result, SinkError};
use crate::engine::lsn::Lsn;

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "nats",
    options: &[
        ("server_url", "NATS servers, host:port[,host:port...] (nats:// optional)"),
        ("subject", "subject to publish to; may contain {schema}, {table}, {op}"),
        ("connect_mode", "plain, user_and_password or credential (default plain)"),
        ("username", "user for connect_mode = user_and_password"),
        ("password", "password for connect_mode = user_and_password (use a secret)"),
        ("jwt", "user JWT for connect_mode = credential"),
        ("nkey", "user NKEY seed for connect_mode = credential (use a secret)"),
        ("jetstream", "publish to JetStream with acks and Nats-Msg-Id deduplication (default false)"),
        ("timeout_ms", "how long a publish or flush may take before it is retried (default 10000)"),
        ("validate", "check at creation that the server accepts the credentials (default true)"),
        ("tls_required", "refuse a connection without TLS (default false; tls:// server URLs imply it); the certificate is always verified"),
        ("ssl_ca", "PEM certificate(s) of the authority that signed the server's certificate (default: the Mozilla roots)"),
    ],
    required: &["server_url", "subject"],
    option_prefixes: &[],
    accepts_unchanged_toast: false,
    needs_json: false,
    applies_rows: false,
    build,
    check_connection: None,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    Plain,
    UserPassword { user: String, password: Secret },
    Credential { jwt: Secret, seed: Secret },
}

#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub servers: Vec<String>,
    pub subject: String,
    pub auth: Auth,
    pub jetstream: bool,
    pub validate: bool,
    pub timeout: Duration,
    pub sink_uid: String,
    pub tls_required: bool,
    pub ssl_ca: Option<String>,
}

pub fn settings(cfg: &ConnectorConfig) -> Result<NatsSettings> {
    let servers: Vec<String> =
        cfg.get("server_url").unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    if servers.is_empty() {
        return Err(
            SinkError::config("connector \"nats\" requires option \"server_url\"").hint("Give host:port, e.g. server_url => 'localhost:4222'.")
        );
    }
    for s in &servers {
        if s.contains('@') {
            return Err(SinkError::config(format!("server_url \"{s}\" contains credentials"))
                .detail("The NATS client ignores credentials inside URLs.")
                .hint("Use connect_mode => 'user_and_password' with username and password."));
        }
    }
    let subject = cfg.get("subject").unwrap_or_default().to_string();
    if subject.is_empty() || subject.contains(char::is_whitespace) || subject.starts_with('.') || subject.ends_with('.') || subject.contains("..") {
        return Err(SinkError::config(format!("invalid NATS subject \"{subject}\""))
            .detail("A subject is dot-separated tokens without spaces; wildcards are not allowed for publishing.")
            .hint("For example subject => 'orders.changes' or 'cdc.{schema}.{table}'."));
    }
    if subject.split('.').any(|t| t == "*" || t == ">") {
        return Err(SinkError::config(format!("invalid NATS subject \"{subject}\"")).detail("Wildcards cannot be published to."));
    }
    let get = |k: &str| cfg.get(k).filter(|v| !v.is_empty()).map(str::to_string);
    let mode = cfg.get("connect_mode").unwrap_or("plain").to_ascii_lowercase();
    let auth = match mode.as_str() {
        "plain" => Auth::Plain,
        "user_and_password" => match (get("username"), get("password")) {
            (Some(user), Some(password)) => Auth::UserPassword { user, password: password.into() },
            _ => {
                return Err(SinkError::config("connect_mode user_and_password requires username and password")
                    .hint("Give username and password (the password as a secret in a connection)."))
            }
        },
        "credential" => match (get("jwt"), get("nkey")) {
            (Some(jwt), Some(seed)) => {
                if !seed.starts_with('S') {
                    return Err(
                        SinkError::config("nkey must be an NKEY seed (it starts with \"S\")").hint("Use the user's seed, e.g. from its .creds file.")
                    );
                }
                Auth::Credential { jwt: jwt.into(), seed: seed.into() }
            }
            _ => return Err(SinkError::config("connect_mode credential requires jwt and nkey").hint("Give the user JWT and its NKEY seed.")),
        },
        other => return Err(SinkError::config(format!("invalid connect_mode \"{other}\"")).hint("Use plain, user_and_password or credential.")),
    };
    Ok(NatsSettings {
        subject,
        auth,
        jetstream: cfg.flag("jetstream", false)?,
        validate: cfg.flag("validate", true)?,
        timeout: cfg.timeout(10_000)?,
        sink_uid: cfg.sink_uid.clone(),
        tls_required: cfg.flag("tls_required", false)? || servers.iter().any(|s| s.to_ascii_lowercase().starts_with("tls://")),
        ssl_ca: {
            let ca = get("ssl_ca");
            if let Some(pem) = &ca {
                super::tls::root_store(Some(pem), "nats ssl_ca")?;
            }
            ca
        },
        servers,
    })
}

fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    Ok(Box::new(NatsConnector { settings: settings(cfg)?, client: None }))
}

pub struct NatsConnector {
    settings: NatsSettings,
    client: Option<Client>,
}

/// A creds file's content from a JWT and seed (the form the client parses).
fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// The subject of a record, with `{schema}`, `{table}` and `{op}` filled in.
pub fn subject_for(template: &str, r: &Record) -> String {
    if !template.contains('{') {
        return template.to_string();
    }
    let rel = match &r.draft.payload {
        Payload::Row(row) => Some(&row.relation),
        Payload::Debezium(ev) => ev.after.as_ref().or(ev.before.as_ref()).map(|i| &i.relation),
        _ => r.draft.key.as_ref().map(|k| &k.relation),
    };
    let (schema, table) = rel.map_or(("unknown", "unknown"), |r| (r.namespace.as_str(), r.name.as_str()));
    template.replace("{schema}", schema).replace("{table}", table).replace("{op}", r.draft.op.as_str())
}

fn transient(what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::transient(format!("NATS {what} failed: {e}"))
        .hint("Check server_url and that the NATS server is running; the sink retries (at creation, validate => false skips this check).")
}

impl NatsConnector {
    async fn connect(&self) -> Result<Client> {
        let opts = match &self.settings.auth {
            Auth::Plain => ConnectOptions::new(),
            Auth::UserPassword { user, password } => ConnectOptions::new().user_and_password(user.clone(), password.expose().to_string()),
            Auth::Credential { jwt, seed } => ConnectOptions::with_credentials(&creds(jwt, seed))
                .map_err(|e| SinkError::config(format!("invalid NATS credentials: {e}")).hint("Check the jwt and nkey options."))?,
        };
        let servers: Vec<async_nats::ServerAddr> = self
            .settings
            .servers
            .iter()
            .map(|s| {
                let url = if s.contains("://") { s.clone() } else { format!("nats://{s}") };
                url.parse::<async_nats::ServerAddr>().map_err(|e| SinkError::config(format!("invalid server_url \"{s}\": {e}")))
            })
            .collect::<Result<_>>()?;
        // Whenever TLS is spoken (the server asks for it, or tls_required), the
        // certificate must chain to ssl_ca (or a public root) and name the host.
        let tls = super::tls::client_config(super::tls::TlsMode::VerifyFull, self.settings.ssl_ca.as_deref(), "nats ssl_ca")?;
        let opts = opts.tls_client_config(tls).require_tls(self.settings.tls_required);
        let connect = opts.connection_timeout(self.settings.timeout).request_timeout(Some(self.settings.timeout)).connect(servers);
        match tokio::time::timeout(self.settings.timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                let text = e.to_string();
                let lower = text.to_ascii_lowercase();
                if lower.contains("authorization") {
                    Err(SinkError::permanent(format!("NATS refused the credentials: {text}"))
                        .hint("Check connect_mode, username/password or jwt/nkey."))
                } else if super::tls::is_refusal(&text) {
                    Err(super::tls::tls_error("NATS", text, "tls_required, the server_url's host and ssl_ca"))
                } else {
                    Err(transient("connect", text))
                }
            }
            Err(_) => Err(transient("connect", "timed out")),
        }
    }

    fn headers(&self, r: &Record, snapshot_chunk: Option<u32>, seq: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in r.headers() {
            h.insert(k, v);
        }
        if self.settings.jetstream {
            h.insert("Nats-Msg-Id", msg_id(&self.settings.sink_uid, r.commit_lsn, snapshot_chunk, seq).as_str());
        }
        h
    }
}

/// A record's `Nats-Msg-Id`: `<sink uid>-<commit LSN>-<position in its
/// transaction>`, the same whenever the record is sent again. The initial
/// snapshot's chunks share one LSN, so their ids also name the chunk
/// (`<uid>-<LSN>-s<chunk>-<position in the chunk>`).
fn msg_id(sink_uid: &str, commit_lsn: Lsn, snapshot_chunk: Option<u32>, seq: usize) -> String {
    match snapshot_chunk {
        Some(chunk) => format!("{sink_uid}-{commit_lsn}-s{chunk}-{seq}"),
        None => format!("{sink_uid}-{commit_lsn}-{seq}"),
    }
}

/// A refusal of one message for its size (the server's `max_payload`, the
/// stream's `max_msg_size`): that record can never be stored as it is.
fn is_size_refusal(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("maximum payload") || t.contains("message size exceeds") || t.contains("max_payload")
}

#[async_trait(?Send)]
impl Connector for NatsConnector {
    async fn check(&mut self) -> Result<()> {
        if !self.settings.validate {
            return Ok(());
        }
        let client = self.connect().await?;
        tokio::time::timeout(self.settings.timeout, client.flush())
            .await
            .map_err(|_| transient("flush", "timed out"))?
            .map_err(|e| transient("flush", e))?;
        Ok(())
    }

    async fn deliver(&mut self, batch: &Batch, _sql: &mut dyn SqlSession) -> Result<()> {
        if batch.records.is_empty() {
            return Ok(());
        }
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let Some(client) = self.client.clone() else {
            return Err(SinkError::transient("NATS client unavailable"));
        };
        let timeout = self.settings.timeout;
        let result: Result<()> = async {
            if self.settings.jetstream {
                let js = async_nats::jetstream::new(client.clone());
                let mut acks = Vec::with_capacity(batch.records.len());
                // Records the server refuses for their size, with why (the first).
                let mut refused: Vec<usize> = Vec::new();
                let mut why = String::new();
                for (i, r) in batch.records.iter().enumerate() {
                    let payload = Bytes::from(r.value.clone().unwrap_or_default());
                    match js
                        .publish_with_headers(subject_for(&self.settings.subject, r), self.headers(r, batch.snapshot_chunk, r.ordinal as usize), payload)
                        .await
                    {
                        Ok(ack) => acks.push((i, ack)),
                        Err(e) if is_size_refusal(&e.to_string()) => {
                            refused.push(i);
                            if why.is_empty() {
                                why = e.to_string();
                            }
                        }
                        Err(e) => return Err(transient("JetStream publish", e)),
                    }
                }
                for (i, ack) in acks {
                    match tokio::time::timeout(timeout, ack).await {
                        Err(_) => return Err(transient("JetStream ack", "timed out")),
                        Ok(Err(e)) => {
                            let text = e.to_string();
                            if text.contains("no responders") || text.contains("no stream") {
                                return Err(SinkError::permanent(format!("no JetStream stream captures subject \"{}\"", self.settings.subject))
                                    .hint("Create a stream for the subject (with a duplicate window), or set jetstream => false."));
                            }
                            if is_size_refusal(&text) {
                                refused.push(i);
                                if why.is_empty() {
                                    why = text;
                                }
                                continue;
                            }
                            return Err(transient("JetStream ack", text));
                        }
                        Ok(Ok(_)) => {}
                    }
                }
                if !refused.is_empty() {
                    // The others are stored; sent again, their ids make them duplicates
                    // that the stream drops.
                    return Err(SinkError::permanent(format!("JetStream refused {} record(s) for their size", refused.len()))
                        .detail(why)
                        .hint("Raise the stream's max_msg_size (and the server's max_payload), or set errors.policy => 'dead_letter' to set such records aside.")
                        .refusing(refused));
                }
                Ok(())
            } else {
                for r in &batch.records {
                    let payload = Bytes::from(r.value.clone().unwrap_or_default());
                    client
                        .publish_with_headers(subject_for(&self.settings.subject, r), self.headers(r, None, 0), payload)
                        .await
                        .map_err(|e| transient("publish", e))?;
                }
                tokio::time::timeout(timeout, client.flush()).await.map_err(|_| transient("flush", "timed out"))?.map_err(|e| transient("flush", e))
            }
        }
        .await;
        if result.as_ref().is_err_and(|e| e.is_transient()) {
            self.client = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> ConnectorConfig {
        ConnectorConfig::for_test(pairs)
    }

    #[test]
    fn snapshot_chunks_get_message_ids_of_their_own() {
        // Every chunk shares the snapshot's LSN and numbers its rows from 0: chunk 1's
        // ids must not repeat chunk 0's, or JetStream drops them as duplicates.
        let lsn = Lsn(0x700);
        assert_ne!(msg_id("u", lsn, Some(0), 5), msg_id("u", lsn, Some(1), 5));
        assert_eq!(msg_id("u", lsn, Some(1), 5), "u-0/700-s1-5");
        assert_eq!(msg_id("u", lsn, None, 5), "u-0/700-5", "streamed ids are unchanged");
    }

    #[test]
    fn size_refusals_are_told_from_other_failures() {
        assert!(is_size_refusal("maximum payload exceeded"));
        assert!(is_size_refusal("nats: message size exceeds maximum allowed"));
        assert!(!is_size_refusal("timed out"));
    }

    #[test]
    fn options_follow_the_risingwave_seed() {
        let s = settings(&cfg(&[("server_url", "a:4222, b:4223"), ("subject", "cdc.{table}")])).unwrap();
        assert_eq!(s.servers, vec!["a:4222", "b:4223"]);
        assert_eq!(s.auth, Auth::Plain);
        assert!(!s.jetstream);
        let s =
            settings(&cfg(&[("server_url", "a:1"), ("subject", "x"), ("connect_mode", "user_and_password"), ("username", "u"), ("password", "p")]))
                .unwrap();
        assert_eq!(s.auth, Auth::UserPassword { user: "u".into(), password: "p".into() });
        let s = settings(&cfg(&[("server_url", "a:1"), ("subject", "x"), ("connect_mode", "credential"), ("jwt", "eyJ"), ("nkey", "SUAB")])).unwrap();
        assert!(matches!(s.auth, Auth::Credential { .. }));
    }

    #[test]
    fn bad_options_are_refused() {
        for (opts, msg) in [
            (&[("subject", "x")][..], "requires option \"server_url\""),
            (&[("server_url", "u:p@h:1"), ("subject", "x")][..], "contains credentials"),
            (&[("server_url", "h:1"), ("subject", "a b")][..], "invalid NATS subject"),
            (&[("server_url", "h:1"), ("subject", "a.>")][..], "invalid NATS subject"),
            (
                &[("server_url", "h:1"), ("subject", "x"), ("connect_mode", "user_and_password"), ("username", "u")][..],
                "requires username and password",
            ),
            (&[("server_url", "h:1"), ("subject", "x"), ("connect_mode", "credential"), ("jwt", "j")][..], "requires jwt and nkey"),
            (&[("server_url", "h:1"), ("subject", "x"), ("connect_mode", "credential"), ("jwt", "j"), ("nkey", "UAB")][..], "NKEY seed"),
            (&[("server_url", "h:1"), ("subject", "x"), ("connect_mode", "oauth")][..], "invalid connect_mode"),
        ] {
            let err = settings(&cfg(opts)).unwrap_err();
            assert!(err.message.contains(msg), "{opts:?}: {}", err.message);
        }
    }
}
