//! Seals on the logical messages the extension itself writes into the WAL
//! (dead-letter replays, schema-change reports). `pg_logical_emit_message` is open
//! to every role, so a message's prefix proves nothing: anyone could write a
//! "replay" that inserts rows into a sink's target, or a "schema change" that
//! drops a target's column. Each such message therefore carries an HMAC-SHA256 of
//! its prefix and content, keyed by a secret only the extension's superuser can
//! read (`sink.message_key`); the pipeline acts on a message only when its seal
//! holds.

use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(key: &[u8], prefix: &str, payload: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(prefix.as_bytes());
    m.update(&[0]);
    m.update(payload);
    m
}

/// `<64 hex digits of the MAC>:<payload>`.
pub fn seal(key: &[u8], prefix: &str, payload: &str) -> String {
    let tag = mac(key, prefix, payload.as_bytes()).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}:{payload}")
}

/// The payload of a sealed message, or `None` when the seal does not hold (or
/// the key is empty: an extension without a key trusts no message).
pub fn open<'a>(key: &[u8], prefix: &str, content: &'a [u8]) -> Option<&'a [u8]> {
    if key.is_empty() || content.len() < 65 || content[64] != b':' {
        return None;
    }
    let tag: Vec<u8> = (0..32).map(|i| std::str::from_utf8(&content[2 * i..2 * i + 2]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())).collect::<Option<_>>()?;
    let payload = &content[65..];
    mac(key, prefix, payload).verify_slice(&tag).ok()?;
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_message_sealed_with_the_key_for_its_prefix_opens() {
        let sealed = seal(b"k1", "pg_sink.ddl", "{\"a\":1}");
        assert_eq!(open(b"k1", "pg_sink.ddl", sealed.as_bytes()), Some(&b"{\"a\":1}"[..]));
        assert_eq!(open(b"k2", "pg_sink.ddl", sealed.as_bytes()), None, "another key");
        assert_eq!(open(b"k1", "pg_sink.retry", sealed.as_bytes()), None, "another prefix");
        let forged = format!("{}:{{\"a\":2}}", &sealed[..64]);
        assert_eq!(open(b"k1", "pg_sink.ddl", forged.as_bytes()), None, "another payload");
        assert_eq!(open(b"k1", "pg_sink.ddl", b"{\"a\":1}"), None, "no seal");
        assert_eq!(open(b"", "pg_sink.ddl", seal(b"", "pg_sink.ddl", "x").as_bytes()), None, "no key");
    }
}
