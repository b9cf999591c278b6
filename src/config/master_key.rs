//! The master key (`master_key_file` or `master_key`) that seals endpoint
//! secrets at rest: its text form and a `Debug` that never shows it. The
//! sealing itself is `crate::delivery::sealing`'s.
//!
//! The key is held in a `secrecy::SecretBox` (zeroed when dropped, read
//! only through `expose_secret`) behind an `Arc`, so the copies of a
//! `Config` share one buffer instead of spreading the key around memory.

use std::{fmt, sync::Arc};

use base64::{engine::general_purpose::STANDARD, Engine};
use secrecy::{zeroize::Zeroizing, ExposeSecret, SecretBox};
use subtle::ConstantTimeEq;

/// Bytes in a master key.
pub const MASTER_KEY_BYTES: usize = 32;

/// The key that seals endpoint secrets. Its `Debug` never shows the key;
/// equality is compared in constant time.
#[derive(Clone)]
pub struct MasterKey(Arc<SecretBox<[u8; MASTER_KEY_BYTES]>>);

impl MasterKey {
    /// From raw key bytes.
    pub fn from_bytes(key: [u8; MASTER_KEY_BYTES]) -> Self {
        Self(Arc::new(SecretBox::new(Box::new(key))))
    }

    /// From its text form: standard base64 of exactly 32 bytes (what
    /// `openssl rand -base64 32` prints); surrounding whitespace, such as a
    /// file's trailing newline, is ignored. The error never echoes the text.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        // The decoded bytes are zeroed when dropped, like the key itself.
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
            "must be standard base64 of 32 random bytes (e.g. `openssl rand -base64 32`)"
                .to_string()
        })?);
        if bytes.len() != MASTER_KEY_BYTES {
            return Err(format!(
                "must decode to {MASTER_KEY_BYTES} bytes, not {} (e.g. `openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        Ok(Self(Arc::new(SecretBox::init_with_mut(
            |key: &mut [u8; MASTER_KEY_BYTES]| key.copy_from_slice(&bytes),
        ))))
    }

    /// The raw key bytes, for the cipher (`crate::delivery::sealing`).
    pub fn expose(&self) -> &[u8; MASTER_KEY_BYTES] {
        self.0.expose_secret()
    }
}

impl PartialEq for MasterKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose().ct_eq(other.expose()).into()
    }
}

impl Eq for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base64_keys_and_redacts_them() {
        let text = STANDARD.encode([42u8; 32]);
        let key = MasterKey::from_base64(&format!("{text}\n")).unwrap();
        assert_eq!(key, MasterKey::from_bytes([42; 32]));
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
        let short = STANDARD.encode([1u8; 16]);
        let err = MasterKey::from_base64(&short).unwrap_err();
        assert!(err.contains("not 16") && !err.contains(&short), "{err}");
        let err = MasterKey::from_base64("not base64 at all!").unwrap_err();
        assert!(!err.contains("at all"), "{err}");
        // Hex is not accepted: 64 hex digits are valid base64 of 48 bytes.
        assert!(MasterKey::from_base64(&"ab".repeat(32)).is_err());
    }
}
