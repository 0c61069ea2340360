//! Standard Webhooks signatures: a secret is `whsec_` + base64 of 24 to 64
//! random bytes; a signature is `v1,` + base64 of HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}` keyed with the decoded bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::SecureRandom as _;

const PREFIX: &str = "whsec_";
/// Random bytes of a new secret.
const SECRET_BYTES: usize = 32;

/// A decoded secret, ready to sign.
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Decodes `whsec_<base64>` (24 to 64 bytes).
    ///
    /// # Errors
    /// A message that never contains the secret.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let encoded = secret
            .strip_prefix(PREFIX)
            .ok_or("a webhook secret starts with whsec_")?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| "a webhook secret is whsec_ followed by base64")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err("a webhook secret holds 24 to 64 bytes".into());
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// A new secret from the system's secure random source.
///
/// # Errors
/// When the random source fails (it does not on a working system).
pub fn generate_secret() -> Result<String, String> {
    let mut bytes = [0u8; SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_owned())?;
    Ok(format!("{PREFIX}{}", STANDARD.encode(bytes)))
}

/// The `webhook-signature` header: one signature per key, space-separated
/// (the current secret first, the previous one during its grace period).
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_signature_is_reproduced() {
        // The standard-webhooks reference libraries' shared test vector.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_whsec_base64_of_enough_bytes() {
        let s = generate_secret().expect("random");
        assert!(s.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&s[6..]).expect("base64").len(), 32);
        assert_ne!(s, generate_secret().expect("random"));
        assert!(SigningKey::parse(&s).is_ok());
        for bad in [
            "",
            "whsec_",
            "whsec_!!!",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_AAAA",
        ] {
            let e = SigningKey::parse(bad).expect_err(bad);
            assert!(!e.contains("AAAA"), "{e}");
        }
        let keys = [
            SigningKey::parse(&s).expect("a"),
            SigningKey::parse(&generate_secret().expect("r")).expect("b"),
        ];
        let header = signature_header(&keys, "id", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|p| p.starts_with("v1,")));
    }
}
