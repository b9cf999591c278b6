//! TLS for the gRPC listener: rustls (ring) through tonic's
//! `ServerTlsConfig`, from the PEM files named by `tls_cert` and `tls_key`.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::config::Config;

/// How long a client may take to finish the TLS handshake, so half-open
/// connections cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's TLS settings, or `None` when `tls_cert` is not set.
/// Errors name the config key and the file.
pub fn server_config(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("config key `tls_cert`: reading {}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .with_context(|| format!("config key `tls_key`: reading {}", key.display()))?;
    // tonic would accept any bytes here and fail later at bind time with a
    // vaguer error: check that the files hold what their keys say.
    if !contains_pem(&cert_pem, "CERTIFICATE") {
        anyhow::bail!(
            "config key `tls_cert`: {} holds no PEM certificate",
            cert.display()
        );
    }
    if !contains_pem(&key_pem, "PRIVATE KEY") {
        anyhow::bail!(
            "config key `tls_key`: {} holds no PEM private key",
            key.display()
        );
    }
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(HANDSHAKE_TIMEOUT),
    ))
}

/// Whether `pem` has a `-----BEGIN ...<label>-----` block (`PRIVATE KEY`
/// also matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn contains_pem(pem: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(pem)
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")))
}
