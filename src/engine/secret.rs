//! Secret values (passwords, keys, tokens, NKEY seeds) in a type whose `Debug`
//! prints `***`, and option maps printed the same way: a settings struct can
//! derive `Debug` without a secret ever reaching a log line or an error message.

use std::collections::BTreeMap;
use std::fmt;

/// A secret string. Reads like a `&str` (through `Deref`); prints as `***`.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

/// Whether an option of this name holds a secret (`sasl.password`,
/// `aws.credentials.secret_access_key`, `signing_secret`, `bearer_token`,
/// `ssl.key.pem`, `nkey_seed`, ...).
pub fn is_secret_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "seed",
        "jwt",
        "key.pem",
        "private",
        "credentials_json",
        "authorization",
        "nkey",
        "account_key",
        "ssl_key",
        "ssl.key",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Whether an option's value must be kept as a secret: a secret option, or a URL
/// or connection string carrying a password (`postgres://u:pw@h/db`,
/// `jdbc:mysql://h/db?password=pw`, `host=h password=pw`).
pub fn holds_secret(name: &str, value: &str) -> bool {
    if is_secret_option(name) {
        return true;
    }
    let v = value.to_ascii_lowercase();
    if v.contains("password=") {
        return true;
    }
    // userinfo with a password: `scheme://user:password@host`
    v.split("://").skip(1).any(|rest| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

/// An option map whose `Debug` prints `***` for the values of secret options.
pub struct Redacted<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, if is_secret_option(k) { "***" } else { v.as_str() }))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(&*s, "hunter2");
        let m: BTreeMap<String, String> = [("sasl.password", "hunter2"), ("topic", "t"), ("aws.credentials.secret_access_key", "k")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let shown = format!("{:?}", Redacted(&m));
        assert!(!shown.contains("hunter2") && shown.contains("\"topic\": \"t\"") && !shown.contains("\"k\""), "{shown}");
    }

    #[test]
    fn urls_with_passwords_are_secrets() {
        assert!(holds_secret("jdbc.url", "postgres://u:pw@h:5432/db"));
        assert!(holds_secret("jdbc.url", "jdbc:mysql://h:3306/db?user=u&password=pw"));
        assert!(holds_secret("url", "host=h user=u password=pw"));
        assert!(holds_secret("sasl_password", "x"));
        assert!(!holds_secret("jdbc.url", "postgres://u@h:5432/db"));
        assert!(!holds_secret("url", "http://h:80/a:b@c"));
        assert!(!holds_secret("brokers", "a:9092,b:9092"));
    }
}
