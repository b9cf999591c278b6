//! A per-endpoint TLS client certificate (mTLS, #19): the PEM chain and key
//! an endpoint presents to receivers that require one. The key is a secret:
//! sealed at rest with the endpoint's signing secrets (see
//! `EndpointRecord::to_stored`), shown as `<redacted>`, never logged.

use std::{fmt, sync::Arc};

use rustls::{
    client::ResolvesClientCert,
    sign::{CertifiedKey, SigningKey},
    SignatureScheme,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// A parsed client certificate chain and its signing key.
#[derive(Clone)]
pub struct ClientAuth(Arc<CertifiedKey>);

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientAuth({} certificate(s), key <redacted>)",
            self.0.cert.len()
        )
    }
}

/// Which field is wrong, and why (never the value).
pub type FieldError = (&'static str, String);

/// Parses the endpoint's `client_cert_pem` and `client_key_pem`: both
/// empty (no client certificate) or both set.
pub fn parse(cert_pem: &str, key_pem: &str) -> Result<Option<ClientAuth>, FieldError> {
    match (cert_pem.is_empty(), key_pem.is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => return Err(("client_key_pem", "required with client_cert_pem".into())),
        (true, false) => return Err(("client_cert_pem", "required with client_key_pem".into())),
        (false, false) => {}
    }
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ("client_cert_pem", "not PEM certificates".to_owned()))?;
    if certs.is_empty() {
        return Err(("client_cert_pem", "holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        (
            "client_key_pem",
            "not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        )
    })?;
    let signing: Arc<dyn SigningKey> = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| ("client_key_pem", "unsupported private key type".to_owned()))?;
    let certified = CertifiedKey::new(certs, signing);
    if certified.keys_match().is_err() {
        return Err((
            "client_key_pem",
            "does not match the first certificate of client_cert_pem".into(),
        ));
    }
    Ok(Some(ClientAuth(Arc::new(certified))))
}

impl ClientAuth {
    /// `base` presenting this certificate when a receiver asks for one.
    pub fn apply(&self, base: &rustls::ClientConfig) -> rustls::ClientConfig {
        let mut config = base.clone();
        config.client_auth_cert_resolver = Arc::new(Always(self.0.clone()));
        config
    }
}

#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesClientCert for Always {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_or_neither_and_errors_never_echo() {
        let a = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        let (cert, key) = (a.cert.pem(), a.key_pair.serialize_pem());
        assert!(parse("", "").unwrap().is_none());
        let auth = parse(&cert, &key).unwrap().unwrap();
        assert!(!format!("{auth:?}").contains("PRIVATE"));
        assert_eq!(parse(&cert, "").unwrap_err().0, "client_key_pem");
        assert_eq!(parse("", &key).unwrap_err().0, "client_cert_pem");
        let (field, msg) = parse(&cert, "secret-ish garbage").unwrap_err();
        assert_eq!(field, "client_key_pem");
        assert!(!msg.contains("garbage"), "{msg}");
        let other_key = b.key_pair.serialize_pem();
        assert_eq!(parse(&cert, &other_key).unwrap_err().0, "client_key_pem");
    }
}
