//! TLS for the gRPC listener: rustls (ring) through tonic's
//! `ServerTlsConfig`, from the PEM files named by `tls_cert` and `tls_key`.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

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
    // tonic would accept any bytes here and fail later at bind time with a
    // vaguer error: check that the files hold what their keys say.
    let cert_pem = read_pem("tls_cert", cert, "CERTIFICATE", "certificate")?;
    let key_pem = read_pem("tls_key", key, "PRIVATE KEY", "private key")?;
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(HANDSHAKE_TIMEOUT),
    ))
}

/// The file of config key `key`, which must hold a PEM block of `label`
/// (`what` in the error).
fn read_pem(key: &str, path: &std::path::Path, label: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("config key `{key}`: reading {}", path.display()))?;
    if !contains_pem(&pem, label) {
        anyhow::bail!("config key `{key}`: {} holds no PEM {what}", path.display());
    }
    Ok(pem)
}

/// Whether `pem` has a `-----BEGIN ...<label>-----` block (`PRIVATE KEY`
/// also matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn contains_pem(pem: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(pem)
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")))
}

/// The TLS settings for calls forwarded to another broker in cluster mode
/// (`https://` URLs): the certificates in `peer_ca_file`, else the public
/// web roots. The server name is the URL's host.
pub fn peer_client_config(config: &Config) -> anyhow::Result<ClientTlsConfig> {
    let Some(path) = &config.peer_ca_file else {
        return Ok(
            ClientTlsConfig::new().trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
        );
    };
    let pem = read_pem("peer_ca_file", path, "CERTIFICATE", "certificate")?;
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
}

/// The TLS settings webhook deliveries use: the Mozilla roots, plus the
/// certificates in `webhook_ca_file` (for receivers behind a private CA).
pub fn webhook_client_config(config: &Config) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};

    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &config.webhook_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("config key `webhook_ca_file`: reading {}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                anyhow::anyhow!("config key `webhook_ca_file`: {}: {e}", path.display())
            })?;
            roots.add(cert).map_err(|e| {
                anyhow::anyhow!("config key `webhook_ca_file`: {}: {e}", path.display())
            })?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!(
                "config key `webhook_ca_file`: {} holds no PEM certificate",
                path.display()
            );
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
