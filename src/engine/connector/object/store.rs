//! Where an object-store sink writes: the location URI (`s3://bucket/prefix`,
//! `gcs://bucket/prefix`, `azure://container/prefix`, `hdfs://namenode:port/dir`,
//! `file:///dir`, or Kinetica's
//! bare `s3` plus `s3_bucket_name`) and the client built from Kinetica's credential
//! options. Three ways to authenticate, as Kinetica has them: explicit credentials,
//! `use_managed_credentials` (the platform's default chain), or none (public,
//! unsigned requests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::super::{percent_decode, ConnectorConfig};
use crate::engine::error::{Result, SinkError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    File,
    S3,
    Gcs,
    Azure,
    /// HDFS through hdfs-native (Rust's own HDFS client: no JVM, no libhdfs);
    /// the "bucket" is the NameNode's `host:port`.
    Hdfs,
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::File => "file",
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
            Provider::Azure => "azblob",
            Provider::Hdfs => "hdfs",
        }
    }
    fn bucket_option(&self) -> &'static str {
        match self {
            Provider::File => "path",
            Provider::S3 => "s3_bucket_name",
            Provider::Gcs => "gcs_bucket_name",
            Provider::Azure => "azure_container_name",
            Provider::Hdfs => "hdfs_namenode",
        }
    }
    fn schemes(&self) -> &'static [&'static str] {
        match self {
            Provider::File => &["file"],
            Provider::S3 => &["s3", "s3a"],
            Provider::Gcs => &["gcs", "gs"],
            Provider::Azure => &["azure", "az", "azblob", "abfs", "abfss"],
            Provider::Hdfs => &["hdfs"],
        }
    }
}

/// A parsed destination: the bucket (container, or local directory) and the key
/// prefix inside it, without leading or trailing slashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub provider: Provider,
    pub bucket: String,
    pub prefix: String,
    /// The local directory (file only).
    pub dir: Option<PathBuf>,
}

fn bad_location(raw: &str, why: &str, provider: Provider) -> SinkError {
    let example = match provider {
        Provider::File => "file:///var/lib/pg_sink/out",
        Provider::S3 => "s3://bucket/prefix",
        Provider::Gcs => "gcs://bucket/prefix",
        Provider::Azure => "azure://container/prefix",
        Provider::Hdfs => "hdfs://namenode:8020/dir",
    };
    SinkError::config(format!("invalid {} location \"{raw}\"", provider.name()))
        .detail(why.to_string())
        .hint(format!("Use a location like '{example}'."))
}

/// Parse `location` (or `path`) and the bucket options.
pub fn parse_location(provider: Provider, cfg: &ConnectorConfig) -> Result<Location> {
    let raw = cfg.get("location").or_else(|| cfg.get("path"));
    if provider == Provider::File {
        let raw = raw.ok_or_else(|| {
            SinkError::config("connector \"file\" requires option \"location\"")
                .hint("Give an absolute directory, e.g. location => 'file:///var/lib/pg_sink/out'.")
        })?;
        let path = raw.strip_prefix("file://").unwrap_or(raw);
        if raw.contains("://") && !raw.starts_with("file://") {
            return Err(bad_location(raw, "A file sink writes to a local directory.", provider));
        }
        if !path.starts_with('/') {
            return Err(SinkError::config(format!("file sink path \"{raw}\" is not absolute"))
                .hint("Use an absolute directory or a file:///absolute/dir URI."));
        }
        return Ok(Location { provider, bucket: String::new(), prefix: String::new(), dir: Some(PathBuf::from(path)) });
    }
    let bucket_opt = cfg.get(provider.bucket_option()).map(str::to_string);
    let (bucket, prefix) = match raw {
        None => (None, String::new()),
        Some(raw) => match raw.split_once("://") {
            // Kinetica's bare `s3` / `azure` / `gcs`: the bucket comes from the options.
            None if provider.schemes().contains(&raw.to_ascii_lowercase().as_str()) => (None, String::new()),
            None => return Err(bad_location(raw, "The location has no scheme.", provider)),
            Some((scheme, rest)) => {
                if !provider.schemes().contains(&scheme.to_ascii_lowercase().as_str()) {
                    return Err(bad_location(raw, &format!("Scheme \"{scheme}\" is not one of {}.", provider.schemes().join(", ")), provider));
                }
                let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
                let b = b.split('@').next_back().unwrap_or(b);
                (Some(b.to_string()).filter(|b| !b.is_empty()), p.trim_matches('/').to_string())
            }
        },
    };
    let bucket = match (bucket, bucket_opt) {
        (Some(a), Some(b)) if a != b => {
            return Err(SinkError::config(format!("conflicting bucket names \"{a}\" and \"{b}\""))
                .detail(format!("The location names \"{a}\" but option \"{}\" says \"{b}\".", provider.bucket_option()))
                .hint("Give the bucket once."))
        }
        (Some(a), _) => a,
        (None, Some(b)) if !b.is_empty() => b,
        _ => {
            return Err(SinkError::config(format!("connector \"{}\" needs a bucket", provider.name())).hint(format!(
                "Give location => '{}://name/prefix' or option \"{}\".",
                provider.schemes()[0],
                provider.bucket_option()
            )))
        }
    };
    Ok(Location { provider, bucket, prefix, dir: None })
}

fn pair_error(a: &str, b: &str) -> SinkError {
    SinkError::config(format!("options \"{a}\" and \"{b}\" must be given together")).hint("Give both, or neither to use managed or no credentials.")
}

fn build_error(provider: Provider, e: impl std::fmt::Display) -> SinkError {
    SinkError::config(format!("invalid {} configuration: {e}", provider.name()))
}

/// Network behaviour shared by the cloud clients: the request timeout from
/// `timeout_ms`, and few retries inside the client (the worker retries batches).
fn client_options(cfg: &ConnectorConfig, endpoint: Option<&str>) -> Result<(ClientOptions, RetryConfig)> {
    let timeout = cfg.timeout(30_000)?;
    let mut opts = ClientOptions::new().with_timeout(timeout).with_connect_timeout(Duration::from_secs(5));
    if endpoint.is_some_and(|e| e.starts_with("http://")) {
        opts = opts.with_allow_http(true);
    }
    let retry = RetryConfig { max_retries: 2, retry_timeout: timeout, ..Default::default() };
    Ok((opts, retry))
}

/// Which of Kinetica's three authentication modes the options choose.
fn auth_mode(cfg: &ConnectorConfig, explicit: bool) -> Result<(bool, bool)> {
    let managed = cfg.flag("use_managed_credentials", false)?;
    let public = cfg.flag("public", false)?;
    if [explicit, managed, public].iter().filter(|b| **b).count() > 1 {
        return Err(SinkError::config("credentials, use_managed_credentials and public exclude each other")
            .hint("Choose one way to authenticate: explicit credentials, the platform's managed credentials, or none (public)."));
    }
    Ok((managed, public || (!explicit && !managed)))
}

/// HDFS options ask for simple authentication, with a plain user name.
pub fn check_hdfs_auth(cfg: &ConnectorConfig) -> Result<()> {
    if cfg.flag("hdfs_use_kerberos", false)? || cfg.get("hdfs_kerberos_keytab").is_some() {
        return Err(SinkError::config("Kerberos authentication to HDFS is not supported")
            .detail("pg_sink's HDFS client authenticates with Hadoop's simple authentication (a user name).")
            .hint("Give hdfs_user, or write to HDFS through a gateway that takes Kerberos."));
    }
    if let Some(user) = cfg.get("hdfs_user") {
        if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c)) {
            return Err(SinkError::config(format!("invalid value for option \"hdfs_user\": \"{user}\"")).hint("Give a user name."));
        }
    }
    Ok(())
}

/// The client for a location.
pub fn build(loc: &Location, cfg: &ConnectorConfig) -> Result<Arc<dyn ObjectStore>> {
    build_with(loc, cfg, false)
}

/// The client for a location; S3 buckets addressed in the host name
/// (`bucket.host`) when `virtual_hosted`, else in the path.
pub fn build_with(loc: &Location, cfg: &ConnectorConfig, virtual_hosted: bool) -> Result<Arc<dyn ObjectStore>> {
    let endpoint = cfg.get("endpoint").or_else(|| cfg.get("s3_endpoint"));
    if let Some(e) = endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(SinkError::config(format!("invalid value for option \"endpoint\": \"{e}\"")).hint("Give an http:// or https:// URL."));
        }
    }
    match loc.provider {
        Provider::File => {
            let dir = loc.dir.clone().ok_or_else(|| SinkError::config("file sink without a directory"))?;
            std::fs::create_dir_all(&dir).map_err(|e| SinkError::transient(format!("could not create directory \"{}\": {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| SinkError::transient(format!("could not open directory \"{}\": {e}", dir.display())))?;
            Ok(Arc::new(fs))
        }
        Provider::S3 => {
            let key = cfg.get("aws.credentials.access_key_id");
            let secret = cfg.get("aws.credentials.secret_access_key");
            if key.is_some() != secret.is_some() {
                return Err(pair_error("aws.credentials.access_key_id", "aws.credentials.secret_access_key"));
            }
            let (managed, public) = auth_mode(cfg, key.is_some())?;
            if cfg.get("aws.credentials.session_token").is_some() && key.is_none() {
                return Err(SinkError::config("option \"aws.credentials.session_token\" needs an access key")
                    .hint("Give aws.credentials.access_key_id and aws.credentials.secret_access_key too."));
            }
            let region = cfg.get("s3_region").or_else(|| cfg.get("aws.region")).or_else(|| cfg.get("region")).unwrap_or("us-east-1");
            let (opts, retry) = client_options(cfg, endpoint)?;
            let mut b = if managed { AmazonS3Builder::from_env() } else { AmazonS3Builder::new() };
            b = b
                .with_bucket_name(&loc.bucket)
                .with_region(region)
                .with_client_options(opts)
                .with_retry(retry)
                .with_virtual_hosted_style_request(virtual_hosted);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            if let (Some(k), Some(s)) = (key, secret) {
                b = b.with_access_key_id(k).with_secret_access_key(s);
                if let Some(t) = cfg.get("aws.credentials.session_token") {
                    b = b.with_token(t);
                }
            }
            if public {
                b = b.with_skip_signature(true);
            }
            Ok(Arc::new(b.build().map_err(|e| build_error(loc.provider, e))?))
        }
        Provider::Azure => {
            let key = cfg.get("azure_storage_account_key");
            let sas = cfg.get("azure_sas_token");
            let client = (cfg.get("azure_client_id"), cfg.get("azure_client_secret"));
            if client.0.is_some() != client.1.is_some() {
                return Err(pair_error("azure_client_id", "azure_client_secret"));
            }
            if client.0.is_some() && cfg.get("azure_tenant_id").is_none() {
                return Err(SinkError::config("a client secret needs \"azure_tenant_id\"").hint("Give the tenant the application is registered in."));
            }
            let explicit = key.is_some() || sas.is_some() || client.0.is_some();
            let (managed, public) = auth_mode(cfg, explicit)?;
            let account = cfg.get("azure_storage_account_name").ok_or_else(|| {
                SinkError::config("connector \"azblob\" requires option \"azure_storage_account_name\"")
                    .hint("Name the storage account that holds the container.")
            })?;
            let (opts, retry) = client_options(cfg, endpoint)?;
            let mut b =
                MicrosoftAzureBuilder::new().with_account(account).with_container_name(&loc.bucket).with_client_options(opts).with_retry(retry);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e.trim_end_matches('/').to_string());
                if e.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
            }
            if let Some(k) = key {
                b = b.with_access_key(k);
            } else if let Some(s) = sas {
                let pairs: Vec<(String, String)> = s
                    .trim_start_matches('?')
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (k.to_string(), percent_decode(v))
                    })
                    .collect();
                b = b.with_sas_authorization(pairs);
            } else if let (Some(id), Some(secret)) = client {
                b = b.with_client_secret_authorization(id, secret, cfg.get("azure_tenant_id").unwrap_or_default());
            }
            if let Some(t) = cfg.get("azure_tenant_id") {
                if managed {
                    b = b.with_tenant_id(t);
                }
            }
            if public {
                b = b.with_skip_signature(true);
            }
            Ok(Arc::new(b.build().map_err(|e| build_error(loc.provider, e))?))
        }
        Provider::Hdfs => {
            check_hdfs_auth(cfg)?;
            if let Some(user) = cfg.get("hdfs_user") {
                // The client takes the simple-authentication user from the
                // environment, when it connects; a worker serves one sink.
                std::env::set_var("HADOOP_USER_NAME", user);
            }
            let url = format!("hdfs://{}", loc.bucket);
            let store = hdfs_native_object_store::HdfsObjectStore::with_url(&url).map_err(|e| build_error(loc.provider, e))?;
            Ok(Arc::new(store))
        }
        Provider::Gcs => {
            let key = cfg.get("gcs_service_account_keys");
            // Managed credentials are the client's default (application default
            // credentials, the metadata server): nothing to set.
            let (_, public) = auth_mode(cfg, key.is_some())?;
            let (opts, retry) = client_options(cfg, endpoint)?;
            let mut b = GoogleCloudStorageBuilder::new().with_bucket_name(&loc.bucket).with_client_options(opts).with_retry(retry);
            if let Some(k) = key {
                let mut json: serde_json::Value = serde_json::from_str(k).map_err(|e| {
                    SinkError::config("option \"gcs_service_account_keys\" is not a JSON service account key")
                        .detail(e.to_string())
                        .hint("Paste the key file's JSON text (type service_account).")
                })?;
                for field in ["private_key", "client_email"] {
                    if json.get(field).and_then(|v| v.as_str()).is_none() {
                        return Err(SinkError::config(format!("the service account key has no \"{field}\""))
                            .hint("Paste the key file's JSON text (type service_account)."));
                    }
                }
                if let (Some(e), Some(obj)) = (endpoint, json.as_object_mut()) {
                    obj.insert("gcs_base_url".into(), serde_json::Value::String(e.trim_end_matches('/').to_string()));
                }
                b = b.with_service_account_key(json.to_string());
            } else if endpoint.is_some() {
                return Err(SinkError::config("a custom GCS endpoint needs \"gcs_service_account_keys\"")
                    .hint("The client takes the endpoint from the service account key."));
            }
            if public {
                b = b.with_skip_signature(true);
            }
            Ok(Arc::new(b.build().map_err(|e| build_error(loc.provider, e))?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(provider: Provider, pairs: &[(&str, &str)]) -> Result<Location> {
        parse_location(provider, &ConnectorConfig::for_test(pairs))
    }

    #[test]
    fn locations_parse_as_uri_or_kinetica_style() {
        let l = loc(Provider::S3, &[("location", "s3://bkt/a/b/")]).unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bkt", "a/b"));
        let l = loc(Provider::S3, &[("location", "s3"), ("s3_bucket_name", "b2")]).unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b2", ""));
        let l = loc(Provider::Azure, &[("location", "azure://c/p")]).unwrap();
        assert_eq!(l.bucket, "c");
        let l = loc(Provider::File, &[("path", "file:///tmp/x")]).unwrap();
        assert_eq!(l.dir, Some(PathBuf::from("/tmp/x")));
        let l = loc(Provider::Hdfs, &[("location", "hdfs://nn.example:8020/warehouse/cdc/")]).unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("nn.example:8020", "warehouse/cdc"));
        let l = loc(Provider::Hdfs, &[("location", "hdfs"), ("hdfs_namenode", "nn:9000")]).unwrap();
        assert_eq!(l.bucket, "nn:9000");
    }

    #[test]
    fn hdfs_takes_simple_authentication_only() {
        let cfg = |pairs: &[(&str, &str)]| ConnectorConfig::for_test(pairs);
        let l = loc(Provider::Hdfs, &[("location", "hdfs://127.0.0.1:1/x")]).unwrap();
        for pairs in [&[("hdfs_use_kerberos", "true")][..], &[("hdfs_kerberos_keytab", "/etc/k.keytab")][..]] {
            let e = build(&l, &cfg(pairs)).err().unwrap();
            assert!(e.message.contains("Kerberos") && e.hint.is_some(), "{e:?}");
        }
        assert!(build(&l, &cfg(&[("hdfs_user", "x y")])).err().unwrap().message.contains("hdfs_user"));
    }

    #[test]
    fn bad_locations_are_refused() {
        assert!(loc(Provider::S3, &[("location", "gcs://b/p")]).unwrap_err().message.contains("invalid s3 location"));
        assert!(loc(Provider::S3, &[("location", "s3")]).unwrap_err().message.contains("needs a bucket"));
        assert!(loc(Provider::S3, &[("location", "s3://a"), ("s3_bucket_name", "b")]).unwrap_err().message.contains("conflicting"));
        assert!(loc(Provider::File, &[("location", "out/dir")]).unwrap_err().message.contains("not absolute"));
        assert!(loc(Provider::File, &[("location", "ftp://x/y")]).is_err());
    }

    #[test]
    fn credentials_must_pair_and_modes_exclude_each_other() {
        let l = loc(Provider::S3, &[("location", "s3://b")]).unwrap();
        let e = build(&l, &ConnectorConfig::for_test(&[("aws.credentials.access_key_id", "k")])).err().unwrap();
        assert!(e.message.contains("must be given together"));
        let e = build(
            &l,
            &ConnectorConfig::for_test(&[("aws.credentials.access_key_id", "k"), ("aws.credentials.secret_access_key", "s"), ("public", "true")]),
        )
        .err()
        .unwrap();
        assert!(e.message.contains("exclude each other"));
        assert!(build(&l, &ConnectorConfig::for_test(&[("endpoint", "http://127.0.0.1:1")])).is_ok());
        let g = loc(Provider::Gcs, &[("location", "gcs://b")]).unwrap();
        let e = build(&g, &ConnectorConfig::for_test(&[("gcs_service_account_keys", "{not json")])).err().unwrap();
        assert!(e.message.contains("not a JSON service account key"));
    }
}
