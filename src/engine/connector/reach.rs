//! Where a sink's options send data: the hosts an outbound connector connects
//! to, the directory the `file` connector writes, and which options name a
//! destination or a credential. The SQL surface uses these to hold a role to
//! what an administrator allows (`pg_sink.allowed_hosts`, `pg_sink.file_root`)
//! and to keep a connection's grantee from pointing its credentials elsewhere.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::registry;
use crate::engine::secret::is_secret_option;

/// Option names (or parts of names) that say where data or credentials go.
const DESTINATION_WORDS: &[&str] = &[
    "url",
    "uri",
    "endpoint",
    "broker",
    "bootstrap",
    "server",
    "host",
    "location",
    "path",
    "bucket",
    "container",
    "account",
    "region",
    "credential",
    "ssl",
    "tls",
    "sasl",
    "security_protocol",
    "user",
    "tenant",
    "client_id",
    "project",
    "connect_mode",
    "public",
    "managed",
];

/// Whether an option names a destination (host, bucket, path, region) or how to
/// authenticate there: a grantee of USAGE on a connection may not set these.
/// Pass-through client options (`properties.`) count too: they can redirect.
pub fn is_destination_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    is_secret_option(&n) || n.starts_with("properties.") || DESTINATION_WORDS.iter().any(|w| n.contains(w))
}

/// Options whose values are network addresses (URLs, `host:port` lists,
/// `host=` connection strings).
fn is_address_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["url", "uri", "endpoint", "broker", "bootstrap", "server", "host", "location"].iter().any(|w| n.contains(w))
}

/// The hosts a sink with these (resolved) options connects to. Cloud services
/// without an `endpoint` reach the provider's public host.
pub fn hosts(connector: &str, options: &BTreeMap<String, String>) -> Vec<String> {
    let name = registry::spec(connector).map(|s| s.name).unwrap_or(connector);
    if matches!(name, "file" | "table") {
        return vec![];
    }
    // An object store's location names a bucket, not a host.
    let bucket_location = matches!(name, "s3" | "gcs" | "azblob");
    let mut out: Vec<String> = vec![];
    for (k, v) in options {
        if is_address_option(k) && !(bucket_location && matches!(k.as_str(), "location" | "path")) {
            for h in hosts_in(v, k != "location") {
                if !out.contains(&h) {
                    out.push(h);
                }
            }
        }
    }
    if out.is_empty() {
        let region = options.get("region").or_else(|| options.get("aws.region")).or_else(|| options.get("s3_region")).or_else(|| options.get("s3.region")).map_or("us-east-1", |s| s);
        let default = match name {
            "s3" => Some(format!("s3.{region}.amazonaws.com")),
            "iceberg" if options.get("warehouse.path").is_some_and(|w| w.starts_with("s3")) => Some(format!("s3.{region}.amazonaws.com")),
            "kinesis" => Some(format!("kinesis.{region}.amazonaws.com")),
            "gcs" => Some("storage.googleapis.com".to_string()),
            "azblob" => options.get("azure_storage_account_name").map(|a| format!("{a}.blob.core.windows.net")),
            _ => None,
        };
        out.extend(default);
    }
    out
}

/// Host names in one option value: `scheme://user@host:port/path`, lists of
/// `host:port`, `jdbc:` URLs, and `host=` key-value connection strings. A bare
/// word counts as a host name only when `bare_is_host` (a Kinetica `location`
/// of just `s3` names a provider).
pub fn hosts_in(value: &str, bare_is_host: bool) -> Vec<String> {
    let v = value.trim();
    if v.contains("host=") {
        return v
            .split_whitespace()
            .filter_map(|kv| kv.strip_prefix("host="))
            .flat_map(|h| h.split(','))
            .map(|h| h.trim_matches('\'').to_ascii_lowercase())
            .filter(|h| !h.is_empty() && !h.starts_with('/'))
            .collect();
    }
    let v = v.strip_prefix("jdbc:").unwrap_or(v);
    let mut out = vec![];
    for item in v.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
        let (has_scheme, rest) = match item.split_once("://") {
            Some((scheme, rest)) => {
                if scheme.eq_ignore_ascii_case("file") {
                    continue;
                }
                (true, rest)
            }
            None => (false, item),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("").to_string()
        } else {
            match authority.rsplit_once(':') {
                Some((h, _port)) => h.to_string(),
                None if has_scheme || bare_is_host => authority.to_string(),
                None => continue,
            }
        };
        if !host.is_empty() {
            out.push(host.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `host` matches an allow-list entry: a name (`broker.internal`), a
/// suffix (`*.example.com`), an address (`10.1.2.3`) or a network (`10.0.0.0/8`).
/// Names are compared as written, not resolved.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ip: Option<IpAddr> = host.parse().ok();
    allowed.iter().map(|a| a.trim().to_ascii_lowercase()).filter(|a| !a.is_empty()).any(|a| {
        if let Some(suffix) = a.strip_prefix("*.") {
            return host.ends_with(&format!(".{suffix}"));
        }
        if let (Some(ip), Some((net, bits))) = (ip, a.split_once('/')) {
            return match (ip, net.parse::<IpAddr>(), bits.parse::<u32>()) {
                (IpAddr::V4(h), Ok(IpAddr::V4(n)), Ok(b)) if b <= 32 => {
                    let mask = if b == 0 { 0 } else { u32::MAX << (32 - b) };
                    u32::from(h) & mask == u32::from(n) & mask
                }
                (IpAddr::V6(h), Ok(IpAddr::V6(n)), Ok(b)) if b <= 128 => {
                    let mask = if b == 0 { 0 } else { u128::MAX << (128 - b) };
                    u128::from(h) & mask == u128::from(n) & mask
                }
                _ => false,
            };
        }
        a == host
    })
}

/// The server directory a sink of `connector` writes under, if any: a `file`
/// sink's `location` or `path`, an `iceberg` sink's local `warehouse.path`.
pub fn file_directory(connector: &str, options: &BTreeMap<String, String>) -> Option<String> {
    let raw = match connector {
        "file" => options.get("location").or_else(|| options.get("path"))?,
        "iceberg" => options.get("warehouse.path").filter(|w| w.starts_with("file:") || !w.contains("://"))?,
        _ => return None,
    };
    Some(raw.strip_prefix("file://").or_else(|| raw.strip_prefix("file:")).unwrap_or(raw).to_string())
}

/// `path` with `.` and `..` removed lexically; `None` for a relative path or one
/// that climbs above `/`.
pub fn normalized_absolute(path: &str) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let p = std::path::Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    let mut out = std::path::PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn hosts_of_each_kind_of_address() {
        assert_eq!(hosts_in("k1:9092, k2:9093", true), vec!["k1", "k2"]);
        assert_eq!(hosts_in("https://user:pw@Hooks.Example.com:8443/p?q=1", true), vec!["hooks.example.com"]);
        assert_eq!(hosts_in("jdbc:postgresql://db.internal:5432/app", true), vec!["db.internal"]);
        assert_eq!(hosts_in("host=10.0.0.5 port=5432 user=u", true), vec!["10.0.0.5"]);
        assert_eq!(hosts_in("nats://[::1]:4222", true), vec!["::1"]);
        assert_eq!(hosts_in("file:///tmp/x", true), Vec::<String>::new());
        assert_eq!(hosts_in("s3", false), Vec::<String>::new());
        assert_eq!(hosts_in("kafka1", true), vec!["kafka1"]);
        assert_eq!(hosts("webhook", &opts(&[("url", "http://127.0.0.1:9/"), ("timeout_ms", "1000")])), vec!["127.0.0.1"]);
        assert_eq!(hosts("s3", &opts(&[("location", "s3://bucket/p")])), vec!["s3.us-east-1.amazonaws.com"]);
        assert_eq!(hosts("s3", &opts(&[("location", "s3://bucket/p"), ("endpoint", "http://127.0.0.1:5000")])), vec!["127.0.0.1"]);
        assert_eq!(hosts("iceberg", &opts(&[("warehouse.path", "s3://lake/w"), ("s3.region", "eu-west-1")])), vec!["s3.eu-west-1.amazonaws.com"]);
        assert_eq!(hosts("iceberg", &opts(&[("catalog.uri", "http://cat.example:8181"), ("warehouse.path", "/w")])), vec!["cat.example"]);
        assert_eq!(hosts("kinesis", &opts(&[("stream", "s"), ("aws.region", "eu-west-1")])), vec!["kinesis.eu-west-1.amazonaws.com"]);
        assert!(hosts("file", &opts(&[("path", "/tmp/x")])).is_empty());
    }

    #[test]
    fn allow_list_matches_names_suffixes_and_networks() {
        let allowed: Vec<String> = ["broker.internal", "*.example.com", "10.0.0.0/8", "::1"].iter().map(|s| s.to_string()).collect();
        assert!(host_allowed("broker.internal", &allowed));
        assert!(host_allowed("a.b.example.com", &allowed));
        assert!(!host_allowed("example.com.evil", &allowed));
        assert!(host_allowed("10.200.1.1", &allowed));
        assert!(!host_allowed("11.0.0.1", &allowed));
        assert!(!host_allowed("127.0.0.1", &allowed));
        assert!(host_allowed("::1", &allowed));
        assert!(!host_allowed("169.254.169.254", &allowed));
    }

    #[test]
    fn destinations_and_paths() {
        for o in
            ["brokers", "url", "jdbc.url", "endpoint", "location", "path", "properties.bootstrap.server", "sasl_username", "aws.region", "server_url"]
        {
            assert!(is_destination_option(o), "{o}");
        }
        for o in ["topic", "table", "envelope", "timeout_ms", "file_format", "stream"] {
            assert!(!is_destination_option(o), "{o}");
        }
        assert_eq!(normalized_absolute("/a/./b/../c").unwrap(), std::path::PathBuf::from("/a/c"));
        assert!(normalized_absolute("a/b").is_none());
        assert!(normalized_absolute("/../x").is_none());
        assert_eq!(file_directory("file", &opts(&[("location", "file:///srv/out")])).as_deref(), Some("/srv/out"));
        assert_eq!(file_directory("iceberg", &opts(&[("warehouse.path", "file:/srv/lake")])).as_deref(), Some("/srv/lake"));
        assert_eq!(file_directory("iceberg", &opts(&[("warehouse.path", "/srv/lake")])).as_deref(), Some("/srv/lake"));
        assert_eq!(file_directory("iceberg", &opts(&[("warehouse.path", "s3://b/lake")])), None);
        assert_eq!(file_directory("s3", &opts(&[("location", "s3://b/x")])), None);
    }
}
