//! `webhook`: POST each batch as JSON to an HTTP(S) endpoint (Kinetica's webhook
//! data sink). A batch is sent as requests, in order, one at a time; a 2xx answer
//! means the receiver has them. A request holds records of one transaction (or
//! one snapshot chunk) only, at most `max_records_per_request` of them.
//!
//! Each request carries `Idempotency-Key: <sink uid>:<LSN>-<LSN>:<n>` (the commit
//! LSN of its transaction as 16 hex digits, twice: the first and last LSN of the
//! request, and how many of the transaction's records went in earlier requests;
//! `<uid>:snapshot-<LSN>-<chunk>:<n>` for the snapshot). A
//! request depends only on its transaction, never on where a step ended, so the
//! request retried after a crash has the same key and body, whatever else the
//! retried step reads. It also carries the LSN range, the sink's name, and,
//! with `signing_secret`, `Pg-Sink-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//! Delivery is at-least-once; receivers that keep the keys they have seen get
//! every change exactly once.
//!
//! 408, 425, 429, 5xx, timeouts and connection failures are transient (the worker
//! retries with backoff); any other 4xx stops the sink with the answer in its status.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{write_wrapped, Batch, Connector, ConnectorConfig, ConnectorSpec, Record, SqlSession};
use crate::engine::error::{Result, SinkError};

pub const SPEC: ConnectorSpec = ConnectorSpec {
    name: "webhook",
    options: &[
        ("url", "the endpoint: http(s)://host:port/path"),
        ("location", "Kinetica-style alias of url"),
        ("batch_format", "json (default: a JSON array of records) or ndjson (one record per line)"),
        ("max_records_per_request", "records per request (default 1000)"),
        ("signing_secret", "key of the HMAC-SHA256 body signature header (a secret)"),
        ("bearer_token", "sent as Authorization: Bearer (a secret)"),
        ("username", "basic authentication user (with password)"),
        ("password", "basic authentication password (a secret)"),
        ("ssl_ca", "PEM certificate(s) of the certificate authority to trust for https"),
        ("timeout_ms", "how long a request may take before it is retried (default 30000)"),
        ("validate", "check at creation that the host accepts connections (default true)"),
    ],
    required: &[],
    option_prefixes: &["header."],
    accepts_unchanged_toast: false,
    needs_json: false,
    applies_rows: false,
    build,
    check_connection: None,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    JsonArray,
    NdJson,
}

pub struct WebhookConnector {
    url: String,
    host_port: (String, u16),
    format: BodyFormat,
    per_request: usize,
    signing_secret: Option<Vec<u8>>,
    authorization: Option<String>,
    headers: Vec<(String, String)>,
    sink_name: String,
    sink_uid: String,
    validate: bool,
    timeout: Duration,
    agent: ureq::Agent,
}

/// `(host, port)` of an http(s) URL.
fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        SinkError::config(format!("invalid webhook url \"{url}\""))
            .detail(why.to_string())
            .hint("Use http://host:port/path or https://host:port/path.")
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("It has no scheme."))?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        other => return Err(bad(&format!("Scheme \"{other}\" is not http or https."))),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("It has no host."));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("Unclosed IPv6 address."))?;
        (h.to_string(), after.strip_prefix(':').map(|p| p.to_string()))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad(&format!("Port \"{p}\" is not a number from 1 to 65535.")))?,
    };
    Ok((host, port))
}

fn build(cfg: &ConnectorConfig) -> Result<Box<dyn Connector>> {
    let url = cfg.get("url").or_else(|| cfg.get("location")).ok_or_else(|| {
        SinkError::config("connector \"webhook\" requires option \"url\"").hint("Give the endpoint, e.g. url => 'https://hooks.example.com/orders'.")
    })?;
    let host_port = parse_url(url)?;
    let format = match cfg.get("batch_format").map(|f| f.trim().to_ascii_lowercase()).as_deref() {
        None | Some("json") | Some("array") => BodyFormat::JsonArray,
        Some("ndjson") | Some("jsonl") => BodyFormat::NdJson,
        Some(other) => {
            return Err(SinkError::config(format!("invalid value for option \"batch_format\": \"{other}\"")).hint("Use json (an array) or ndjson."))
        }
    };
    let per_request = match cfg.get("max_records_per_request") {
        None => 1000,
        Some(v) => v.trim().parse::<usize>().ok().filter(|n| (1..=100_000).contains(n)).ok_or_else(|| {
            SinkError::config(format!("invalid value for option \"max_records_per_request\": \"{v}\"")).hint("Give a number from 1 to 100000.")
        })?,
    };
    let authorization = match (cfg.get("bearer_token"), cfg.get("username"), cfg.get("password")) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(
                SinkError::config("options \"bearer_token\" and \"username\"/\"password\" exclude each other").hint("Use one way to authenticate.")
            )
        }
        (Some(t), None, None) => Some(format!("Bearer {t}")),
        (None, Some(u), Some(p)) => {
            use base64::Engine as _;
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(SinkError::config("options \"username\" and \"password\" must be given together").hint("Give both for basic authentication."))
        }
        (None, None, None) => None,
    };
    let mut headers = Vec::new();
    for (k, v) in &cfg.options {
        if let Some(name) = k.strip_prefix("header.") {
            let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid || v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(SinkError::config(format!("invalid request header \"{name}\"")).hint("Header names are tokens; values are one line."));
            }
            headers.push((name.to_string(), v.clone()));
        }
    }
    let timeout = cfg.timeout(30_000)?;
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = cfg.get("ssl_ca") {
        let certs = crate::engine::encoder::registry::pem_certs(ca, "webhook ssl_ca")?;
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
        .tls_config(tls.build())
        .build()
        .into();
    Ok(Box::new(WebhookConnector {
        url: url.to_string(),
        host_port,
        format,
        per_request,
        signing_secret: cfg.get("signing_secret").map(|s| s.as_bytes().to_vec()),
        authorization,
        headers,
        sink_name: cfg.sink_name.clone(),
        sink_uid: cfg.sink_uid.clone(),
        validate: cfg.flag("validate", true)?,
        timeout,
        agent,
    }))
}

/// `sha256=<hex>` of the body under the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(71);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl WebhookConnector {
    fn body(&self, records: &[Record], batch: &Batch) -> Vec<u8> {
        let mut out = Vec::with_capacity(records.iter().map(|r| r.value.as_ref().map_or(64, |v| v.len() + 160)).sum());
        if self.format == BodyFormat::JsonArray {
            out.push(b'[');
        }
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                out.push(if self.format == BodyFormat::JsonArray { b',' } else { b'\n' });
            }
            write_wrapped(r, batch.key_is_json, batch.value_is_json, &mut out);
        }
        out.push(if self.format == BodyFormat::JsonArray { b']' } else { b'\n' });
        out
    }

    fn post(&self, records: &[Record], batch: &Batch, key: &str) -> Result<()> {
        let first = records[0].commit_lsn;
        let last = records[records.len() - 1].commit_lsn;
        let body = self.body(records, batch);
        let content_type = if self.format == BodyFormat::JsonArray { "application/json" } else { "application/x-ndjson" };
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", content_type)
            .header("Idempotency-Key", key)
            .header("Pg-Sink-Name", &self.sink_name)
            .header("Pg-Sink-Start-Lsn", &first.to_string())
            .header("Pg-Sink-End-Lsn", &last.to_string());
        if let Some(secret) = &self.signing_secret {
            req = req.header("Pg-Sink-Signature", &signature(secret, &body));
        }
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let mut resp = req
            .send(&body[..])
            .map_err(|e| SinkError::transient(format!("webhook request to {} failed: {e}", self.url)).hint("The sink retries the request."))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = resp.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
        let shown: String = text.chars().take(500).collect();
        let message = format!("webhook answered HTTP {status}: {shown}");
        match status {
            408 | 425 | 429 | 500..=599 => Err(SinkError::transient(message).hint("The sink retries the request.")),
            // The endpoint refuses these records (malformed, too large, conflicting,
            // unprocessable): errors.policy may set them aside.
            400 | 409 | 413 | 422 => Err(SinkError::permanent(message)
                .hint("Fix the endpoint, or set errors.policy => 'dead_letter' to set such records aside, then resume the sink.")
                .refusing(0..records.len())),
            _ => Err(SinkError::permanent(message).hint("Fix the endpoint or the sink's options, then resume the sink.")),
        }
    }
}

#[async_trait(?Send)]
impl Connector for WebhookConnector {
    async fn check(&mut self) -> Result<()> {
        if !self.validate {
            return Ok(());
        }
        use std::net::ToSocketAddrs;
        let (host, port) = &self.host_port;
        let addrs: Vec<_> = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| {
                SinkError::transient(format!("could not resolve webhook host \"{host}\": {e}")).hint("Check the url, or pass validate => false.")
            })?
            .collect();
        let mut last = None;
        for a in addrs {
            match std::net::TcpStream::connect_timeout(&a, self.timeout.min(Duration::from_secs(5))) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(SinkError::transient(format!(
            "could not connect to webhook {host}:{port}: {}",
            last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
        ))
        .hint("Check that the receiver runs, or pass validate => false to create the sink anyway."))
    }

    async fn deliver(&mut self, batch: &Batch, _sql: &mut dyn SqlSession) -> Result<()> {
        for (range, key) in requests(batch, self.per_request, &self.sink_uid) {
            let start = range.start;
            self.post(&batch.records[range], batch, &key).map_err(|mut e| {
                // Indices into the request's records become indices into the batch.
                e.refused.iter_mut().for_each(|i| *i += start);
                e
            })?;
        }
        Ok(())
    }
}

/// How a batch is cut into requests: runs of one transaction's records (the
/// whole batch for a snapshot chunk), each cut into pieces of at most
/// `per_request`, with their idempotency keys.
fn requests(batch: &Batch, per_request: usize, sink_uid: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let per_request = per_request.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let records = &batch.records;
    while start < records.len() {
        let lsn = records[start].commit_lsn;
        let end = match batch.snapshot_chunk {
            Some(_) => records.len(),
            None => start + records[start..].iter().take_while(|r| r.commit_lsn == lsn).count(),
        };
        for piece in (start..end).step_by(per_request) {
            // The first record's place in its transaction (or chunk): it goes on
            // from the earlier parts of a large transaction, and does not move
            // when records before it are set aside as dead letters.
            let offset = records[piece].ordinal;
            let key = match batch.snapshot_chunk {
                Some(chunk) => format!("{sink_uid}:snapshot-{:016X}-{chunk}:{offset}", lsn.0),
                None => format!("{sink_uid}:{:016X}-{:016X}:{offset}", lsn.0, lsn.0),
            };
            out.push((piece..(piece + per_request).min(end), key));
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(txns: &[(u64, usize)]) -> Batch {
        let mut b = Batch::default();
        for (lsn, n) in txns {
            for i in 0..*n {
                b.records.push(Record {
                    key: None,
                    value: None,
                    draft: crate::engine::envelope::Draft {
                        key: None,
                        payload: crate::engine::envelope::Payload::Truncate(vec![]),
                        op: crate::engine::envelope::Op::Truncate,
                    },
                    commit_lsn: crate::engine::lsn::Lsn(*lsn),
                    ordinal: i as u32,
                    commit_time_us: 0,
                    stamp: Default::default(),
                });
            }
        }
        b
    }

    #[test]
    fn a_request_s_key_does_not_depend_on_where_the_step_ended() {
        // The first attempt's step ended after t2; the retry's reads t3 too. Before,
        // the last request packed t1..t2 under one key and the retry t1..t3 under
        // another: the receiver could not tell the retry was the same data.
        let first = requests(&batch(&[(0x100, 3), (0x200, 2)]), 4, "u");
        let retry = requests(&batch(&[(0x100, 3), (0x200, 2), (0x300, 1)]), 4, "u");
        assert_eq!(&retry[..first.len()], &first[..]);
        assert_eq!(
            first,
            vec![(0..3, "u:0000000000000100-0000000000000100:0".to_string()), (3..5, "u:0000000000000200-0000000000000200:0".to_string())]
        );
        // A transaction bigger than a request is split, with offsets.
        let big = requests(&batch(&[(0x100, 5)]), 2, "u");
        assert_eq!(
            big.iter().map(|(r, k)| (r.clone(), k.rsplit(':').next().unwrap().to_string())).collect::<Vec<_>>(),
            vec![(0..2, "0".into()), (2..4, "2".into()), (4..5, "4".into())]
        );
        // Snapshot chunks are cut by size alone and name their chunk.
        let mut snap = batch(&[(0x700, 5)]);
        snap.snapshot_chunk = Some(3);
        assert_eq!(requests(&snap, 4, "u")[1], (4..5, "u:snapshot-0000000000000700-3:4".to_string()));
    }

    #[test]
    fn parts_of_a_large_transaction_get_keys_of_their_own() {
        // A 7-record transaction in parts of 3, 3 and 1 records: the keys go on
        // from part to part and never repeat, and a retried part gets the same keys.
        let part = |index, records_before, n, last| {
            let mut b = batch(&[(0x900, n)]);
            b.part = Some(crate::engine::connector::Part { index, last, records_before });
            b.records.iter_mut().for_each(|r| r.ordinal += records_before as u32);
            b
        };
        let keys: Vec<String> = [part(0, 0, 3, false), part(1, 3, 3, false), part(2, 6, 1, true)]
            .iter()
            .flat_map(|b| requests(b, 2, "u").into_iter().map(|(_, k)| k))
            .collect();
        let offsets: Vec<&str> = keys.iter().map(|k| k.rsplit(':').next().unwrap()).collect();
        assert_eq!(offsets, vec!["0", "2", "3", "5", "6"]);
        assert_eq!(requests(&part(1, 3, 3, false), 2, "u"), requests(&part(1, 3, 3, false), 2, "u"));
    }

    #[test]
    fn urls_parse_with_default_ports() {
        assert_eq!(parse_url("http://example.com/hook").unwrap(), ("example.com".into(), 80));
        assert_eq!(parse_url("https://user@h:8443/x?y").unwrap(), ("h".into(), 8443));
        assert_eq!(parse_url("http://[::1]:9000/").unwrap(), ("::1".into(), 9000));
        assert!(parse_url("ftp://h/x").unwrap_err().detail.unwrap().contains("not http"));
        assert!(parse_url("http://h:0/").is_err());
        assert!(parse_url("h:80").is_err());
    }

    #[test]
    fn signatures_match_the_rfc_4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(signature(b"Jefe", b"what do ya want for nothing?"), "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn bad_options_are_refused() {
        let with = |pairs: &[(&str, &str)]| build(&ConnectorConfig::for_test(pairs)).err().map(|e| e.message).unwrap_or_default();
        assert!(with(&[]).contains("requires option \"url\""));
        assert!(with(&[("url", "http://h/"), ("batch_format", "xml")]).contains("batch_format"));
        assert!(with(&[("url", "http://h/"), ("max_records_per_request", "0")]).contains("max_records_per_request"));
        assert!(with(&[("url", "http://h/"), ("username", "u")]).contains("together"));
        assert!(with(&[("url", "http://h/"), ("bearer_token", "t"), ("username", "u"), ("password", "p")]).contains("exclude"));
        assert!(with(&[("url", "http://h/"), ("ssl_ca", "not pem")]).contains("ssl_ca"));
        assert!(with(&[("url", "http://h/"), ("header.Bad Name", "v")]).contains("header"));
        assert!(with(&[("url", "http://h/"), ("timeout_ms", "5")]).contains("timeout_ms"));
    }
}
