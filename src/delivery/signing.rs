//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//! where the key is the base64 part of the subscription's `whsec_…` secret.
//!
//! A secret that does not decode is refused once, when the target is prepared, with a
//! [`BadSecret`] naming why; every delivery to it then fails with that message as its
//! `last_error` (retried: fixing the secret lets them through), never a panic.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The secret is not `whsec_` + a non-empty standard base64 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadSecret {
    /// No `whsec_` prefix.
    #[error("signing secret must be whsec_ followed by base64 (the whsec_ prefix is missing)")]
    Prefix,
    /// The part after `whsec_` is not standard, padded base64.
    #[error("signing secret must be whsec_ followed by base64 (the key does not decode)")]
    Base64,
    /// The key decodes to nothing.
    #[error("signing secret must be whsec_ followed by base64 (the key is empty)")]
    Empty,
}

/// A subscription's signing key, decoded once.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Decodes a `whsec_…` secret.
    pub fn parse(secret: &str) -> Result<Key, BadSecret> {
        let key = secret.strip_prefix("whsec_").ok_or(BadSecret::Prefix)?;
        let key = STANDARD.decode(key).map_err(|_| BadSecret::Base64)?;
        if key.is_empty() {
            return Err(BadSecret::Empty);
        }
        // HMAC takes a key of any length; this cannot fail, but is not unwrapped.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|_| BadSecret::Empty)?;
        Ok(Key(mac))
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
        mac.update(b".");
        mac.update(body);
        let mut signature = String::with_capacity(47);
        signature.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), &mut signature);
        signature
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test vectors.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let key = Key::parse(secret).unwrap();
        let signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(Key::parse("nope").unwrap_err(), BadSecret::Prefix);
    }

    #[test]
    fn secrets_that_do_not_decode_are_refused() {
        for secret in [
            "whsec_abc",
            "whsec_abcde",
            "whsec_!!!!",
            "whsec_YQ",
            "whsec_YQ=",
            "whsec_ YQ==",
        ] {
            assert_eq!(
                Key::parse(secret).unwrap_err(),
                BadSecret::Base64,
                "{secret}"
            );
        }
        assert_eq!(Key::parse("whsec_").unwrap_err(), BadSecret::Empty);
        assert_eq!(
            Key::parse("whsec_abc").unwrap_err().to_string(),
            "signing secret must be whsec_ followed by base64 (the key does not decode)"
        );
        assert!(Key::parse("whsec_YQ==").is_ok());
    }
}
