//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>`
//! over `"{webhook-id}.{webhook-timestamp}.{body}"`, one entry per active
//! secret, space-separated.

use std::{fmt, io::Write as _};

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (the spec allows 24 to 64).
const SECRET_BYTES: usize = 32;

/// A signing key. Its `Debug` never shows the key.
///
/// It keeps HMAC-SHA256's state after the key (the hashes of the padded
/// key), so signing a message does not redo that for every request.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    keyed: Hmac<Sha256>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Secret {}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self::from_bytes(key)
    }

    /// From stored key bytes.
    pub fn from_bytes(key: Vec<u8>) -> Self {
        let keyed = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
        Self { key, keyed }
    }

    /// The key bytes, for storage.
    pub fn as_bytes(&self) -> &[u8] {
        &self.key
    }

    /// `whsec_` + base64 of the key: the form shown to the operator once.
    pub fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(SIGNATURE_LEN);
        self.sign_into(&mut out, msg_id, timestamp, body);
        out
    }

    /// Appends the `v1,<base64>` signature of one message to `out`.
    fn sign_into(&self, out: &mut String, msg_id: &str, timestamp: i64, body: &[u8]) {
        let mut mac = self.keyed.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        // The decimal timestamp, written without an allocation (an i64 has
        // at most 20 characters).
        let mut digits = [0u8; 20];
        let mut cursor = std::io::Cursor::new(&mut digits[..]);
        write!(cursor, "{timestamp}").expect("an i64 fits in 20 bytes");
        let len = cursor.position() as usize;
        mac.update(&digits[..len]);
        mac.update(b".");
        mac.update(body);
        out.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), out);
    }
}

/// The length of one `v1,<base64 of 32 bytes>` signature.
const SIGNATURE_LEN: usize = 3 + 44;

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The `webhook-id` of an event (a domain rule: it depends only on the
/// event id; see there).
pub use crate::model::delivery::webhook_id;

/// The `X-Stevedore-Event-Id` value: the producer's event id with every
/// byte of its UTF-8 outside `A-Z a-z 0-9 - . _ ~` percent-encoded
/// (RFC 3986 unreserved characters kept, like JavaScript's
/// `encodeURIComponent`), so it decodes back to the exact id.
pub fn event_id_header(event_id: &str) -> String {
    let mut out = String::with_capacity(event_id.len());
    for b in event_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `webhook-signature` value: one signature per secret, space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN);
    for (i, s) in secrets.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        s.sign_into(&mut out, msg_id, timestamp, body);
    }
    out
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    /// The Standard Webhooks reference vector.
    #[test]
    fn matches_the_reference_vector() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let s = Secret::from_bytes(key);
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(s.reveal(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    }

    #[test]
    fn webhook_ids_are_safe_tokens_and_stable() {
        for safe in ["pick-1", "01JABCDEF", "a_b-C9", &"x".repeat(128)] {
            assert_eq!(webhook_id(safe), safe, "a safe id is sent as is");
        }
        let odd = [
            " lead-space-4".to_string(),
            "café-5".into(),
            "a.b".into(),
            "x".repeat(129),
            "é".repeat(128),
            "a b\"c".into(),
        ];
        for id in &odd {
            let w = webhook_id(id);
            assert_eq!(w, webhook_id(id), "deterministic");
            assert!(w.starts_with("msg_") && w.len() == 36, "{w}");
            assert!(w[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{w}");
            assert!(http::HeaderValue::from_str(&w).is_ok());
        }
        // Distinct ids, distinct webhook ids.
        let set: std::collections::HashSet<_> = odd.iter().map(|i| webhook_id(i)).collect();
        assert_eq!(set.len(), odd.len());
        // Golden: receivers may recompute it.
        assert_eq!(
            webhook_id("café-5"),
            format!("msg_{}", &hex(&Sha256::digest("café-5".as_bytes()))[..32])
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn event_id_header_round_trips() {
        assert_eq!(event_id_header("pick-1.v2~x_y"), "pick-1.v2~x_y");
        assert_eq!(event_id_header(" lead-space-4"), "%20lead-space-4");
        assert_eq!(event_id_header("café-5"), "caf%C3%A9-5");
        assert_eq!(event_id_header("a%b/c"), "a%25b%2Fc");
        let long = "é".repeat(128);
        assert!(http::HeaderValue::from_str(&event_id_header(&long)).is_ok());
    }

    #[test]
    fn debug_is_redacted_and_rotation_sends_both() {
        let (a, b) = (Secret::generate(), Secret::generate());
        assert_eq!(format!("{a:?}"), "Secret(<redacted>)");
        assert!(a.reveal().starts_with("whsec_"));
        let header = signature_header([&a, &b], "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, vec![a.sign("id", 1, b"{}"), b.sign("id", 1, b"{}")]);
    }
}
