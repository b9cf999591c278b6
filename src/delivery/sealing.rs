//! Endpoint secrets at rest: sealed with an AEAD under the operator's
//! master key (`master_key_file` or `STEVEDORE_MASTER_KEY`).
//!
//! Why ChaCha20-Poly1305 (the `chacha20poly1305` crate) rather than
//! AES-256-GCM (`aes-gcm`): both are RustCrypto AEADs with 256-bit keys,
//! 96-bit nonces and the same API, and either would be sound. ChaCha20 is
//! constant-time in plain portable code on every CPU; AES-GCM is fast and
//! free of table-lookup timing leaks only with AES-NI/CLMUL, picked at run
//! time, and otherwise falls back to slower bitsliced software. Sealing a
//! few hundred bytes per endpoint write is never a throughput concern, so
//! hardware AES buys nothing here, and one code path on every machine is
//! the simpler thing to trust.
//!
//! Each seal draws a fresh random 96-bit nonce. Endpoint records are written
//! rarely (create, update, rotate, disable), far below the ~2^32 messages
//! per key at which random 96-bit nonces start to risk a collision.
//!
//! The associated data binds a sealed blob to its endpoint id, so the sealed
//! secrets of one endpoint cannot be copied into another's record.

use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    ChaCha20Poly1305, Key, Nonce,
};
use rand::RngCore;

pub use crate::config::{MasterKey, MASTER_KEY_BYTES};

const NONCE_BYTES: usize = 12;
/// `Sealed::scheme` of ChaCha20-Poly1305 with a 96-bit random nonce.
const SCHEME_CHACHA20_POLY1305: u32 = 1;
/// Prefixed to the associated data, so a blob sealed for another purpose
/// (should there ever be one) cannot pass for endpoint secrets.
const AAD_CONTEXT: &[u8] = b"stevedore.endpoint-secrets.v1\0";

impl MasterKey {
    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(self.expose()))
    }

    /// Encrypts `plaintext` for the record of `endpoint_id`.
    pub fn seal(&self, endpoint_id: &str, plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad(endpoint_id),
                },
            )
            .expect("ChaCha20-Poly1305 encryption fails only past 256 GiB");
        Sealed {
            scheme: SCHEME_CHACHA20_POLY1305,
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Decrypts what [`MasterKey::seal`] made for `endpoint_id`; `None` when
    /// the key is not the one that sealed it, or the blob (or its endpoint
    /// id) was changed.
    pub fn open(&self, endpoint_id: &str, sealed: &Sealed) -> Option<Vec<u8>> {
        if sealed.scheme != SCHEME_CHACHA20_POLY1305 || sealed.nonce.len() != NONCE_BYTES {
            return None;
        }
        self.cipher()
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad(endpoint_id),
                },
            )
            .ok()
    }
}

fn aad(endpoint_id: &str) -> Vec<u8> {
    [AAD_CONTEXT, endpoint_id.as_bytes()].concat()
}

/// An encrypted blob as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sealed {
    /// Which cipher: 1 = ChaCha20-Poly1305, random 96-bit nonce.
    #[prost(uint32, tag = "1")]
    pub scheme: u32,
    /// The nonce.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    /// Ciphertext with its 16-byte tag.
    #[prost(bytes = "vec", tag = "3")]
    pub ciphertext: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_key_and_endpoint() {
        let key = MasterKey::from_bytes([7; 32]);
        let a = key.seal("ep_a", b"secret bytes");
        let b = key.seal("ep_a", b"secret bytes");
        assert_ne!(a.nonce, b.nonce, "a fresh nonce per seal");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a
            .ciphertext
            .windows(b"secret".len())
            .any(|w| w == b"secret"));
        assert_eq!(key.open("ep_a", &a).as_deref(), Some(&b"secret bytes"[..]));
        assert_eq!(key.open("ep_b", &a), None, "bound to its endpoint");
        assert_eq!(MasterKey::from_bytes([8; 32]).open("ep_a", &a), None);
        let mut tampered = a.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(key.open("ep_a", &tampered), None);
        let mut unknown = a.clone();
        unknown.scheme = 2;
        assert_eq!(key.open("ep_a", &unknown), None);
    }
}
