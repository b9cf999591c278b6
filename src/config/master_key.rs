//! The master key (`master_key_file` or `master_key`) that seals endpoint
//! secrets at rest: its text form and a `Debug` that never shows it. The
//! sealing itself is `crate::delivery::sealing`'s.

use std::fmt;

use base64::{engine::general_purpose::STANDARD, Engine};

/// Bytes in a master key.
pub const MASTER_KEY_BYTES: usize = 32;

/// The key that seals endpoint secrets. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; MASTER_KEY_BYTES]);

impl MasterKey {
    /// From raw key bytes.
    pub fn from_bytes(key: [u8; MASTER_KEY_BYTES]) -> Self {
        Self(key)
    }

    /// From its text form: standard base64 of exactly 32 bytes (what
    /// `openssl rand -base64 32` prints); surrounding whitespace, such as a
    /// file's trailing newline, is ignored. The error never echoes the text.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            "must be standard base64 of 32 random bytes (e.g. `openssl rand -base64 32`)"
                .to_string()
        })?;
        let key: [u8; MASTER_KEY_BYTES] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "must decode to {MASTER_KEY_BYTES} bytes, not {} (e.g. `openssl rand -base64 32`)",
                b.len()
            )
        })?;
        Ok(Self(key))
    }

    /// The raw key bytes, for the cipher (`crate::delivery::sealing`).
    pub fn expose(&self) -> &[u8; MASTER_KEY_BYTES] {
        &self.0
    }
}

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
