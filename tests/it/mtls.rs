//! A per-endpoint TLS client certificate (#19): a receiver that requires
//! one gets the endpoint's; an endpoint without one is refused by it; the
//! key is never shown and never logged.

use std::{sync::Arc, time::Duration};

use stevedore::pb::{
    admin_client::AdminClient, publisher_client::PublisherClient, CreateEndpointRequest,
    DeliveryState, GetEndpointRequest, ListEndpointsRequest,
};

use crate::support::{
    assert_invalid, create, endpoint, https_receiver_with, pick, publish, verify_signature,
    wait_state, TestServer,
};

/// A CA, a client certificate it signed (PEM chain, PEM key), and a
/// receiver on `localhost` that requires a client certificate from that CA.
struct MtlsSetup {
    client_cert_pem: String,
    client_key_pem: String,
    port: u16,
    received: tokio::sync::mpsc::UnboundedReceiver<(http::Version, http::HeaderMap, bytes::Bytes)>,
    server_cert: std::path::PathBuf,
}

async fn mtls_receiver(dir: &std::path::Path) -> MtlsSetup {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client = rcgen::CertificateParams::new(vec!["stevedore-client".into()]).unwrap();
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();

    let (cert, key) = crate::support::self_signed(dir);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (port, received) = https_receiver_with(tls).await;
    MtlsSetup {
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        port,
        received,
        server_cert: cert,
    }
}

/// The base64 body of a PEM key, for searching it in outputs.
fn key_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[tokio::test]
async fn a_receiver_requiring_a_client_certificate_gets_the_endpoints() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut m = mtls_receiver(dir.path()).await;
    let ca = m.server_cert.clone();
    let server = TestServer::start_with(dir, move |c| {
        c.allow_http = false;
        c.webhook_ca_file = Some(ca);
    })
    .await;
    let mut admin = server.admin().await;
    let url = format!("https://localhost:{}/hook", m.port);
    let mut with_cert = endpoint(&url);
    with_cert.client_cert_pem = m.client_cert_pem.clone();
    with_cert.client_key_pem = m.client_key_pem.clone();
    let (ep, secret) = create(&mut admin, with_cert).await;
    let (without, _) = create(&mut admin, endpoint(&url)).await;
    publish(&mut server.publisher().await, pick("mtls-1", "SO-1")).await;

    let (version, headers, body) = tokio::time::timeout(Duration::from_secs(10), m.received.recv())
        .await
        .expect("delivered with the client certificate")
        .unwrap();
    let recorded = crate::support::Recorded {
        method: http::Method::POST,
        path: "/hook".into(),
        headers,
        body,
        received_at: std::time::Instant::now(),
        version,
        connection: 1,
    };
    verify_signature(&secret, &recorded).unwrap();

    // Without a certificate the receiver refuses the handshake: no request
    // arrives, and each attempt records the TLS failure.
    let dead = wait_state(&mut admin, &without.id, DeliveryState::Dead, 1).await;
    assert!(dead[0].last_error.contains("connect"), "{:?}", dead[0]);
    assert!(
        m.received.try_recv().is_err(),
        "only the endpoint with a certificate got in"
    );

    // The certificate is shown, the key never.
    let got = admin
        .get_endpoint(GetEndpointRequest { id: ep.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(got.client_cert_pem, m.client_cert_pem);
    assert_eq!(got.client_key_pem, "<redacted>");
    let listed = format!(
        "{:?}",
        admin
            .list_endpoints(ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert!(!listed.contains(&key_body(&m.client_key_pem)), "{listed}");

    // Both or neither; a bad key is INVALID_ARGUMENT that does not echo it.
    let mut e = endpoint(&url);
    e.client_cert_pem = m.client_cert_pem.clone();
    let err = admin
        .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
        .await
        .unwrap_err();
    assert_invalid(err, "endpoint.client_key_pem");
    let mut e = endpoint(&url);
    e.client_cert_pem = m.client_cert_pem.clone();
    e.client_key_pem =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWlzaA==\n-----END PRIVATE KEY-----\n".into();
    let err = admin
        .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
        .await
        .unwrap_err();
    assert!(!err.message().contains("c2VjcmV0LWlzaA"), "{err:?}");
    assert_invalid(err, "endpoint.client_key_pem");
}

/// The real binary at TRACE with a master key: the client key appears in
/// no log line, no list response, and no stored record (sealed).
#[tokio::test]
async fn the_client_key_is_never_logged_listed_or_stored_in_clear() {
    use base64::Engine;

    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    let m = mtls_receiver(dir.path()).await;
    let master_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let ca = m.server_cert.to_string_lossy().into_owned();
    let data = dir.path().join("data");
    let mut server = crate::support::start_server_with_env(
        &data,
        &logs_dir,
        1,
        &[
            ("STEVEDORE_LOG", "trace"),
            ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
            ("STEVEDORE_WEBHOOK_CA_FILE", &ca),
            ("STEVEDORE_MASTER_KEY", &master_key),
        ],
    )
    .await
    .unwrap();
    let channel = crate::support::connect(&server.addr).await.unwrap();
    let mut admin = AdminClient::new(channel.clone());
    let mut e = endpoint(&format!("https://localhost:{}/hook", m.port));
    e.client_cert_pem = m.client_cert_pem.clone();
    e.client_key_pem = m.client_key_pem.clone();
    let (ep, _) = create(&mut admin, e).await;
    publish(&mut PublisherClient::new(channel), pick("mtls-2", "SO")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    let listed = format!(
        "{:?}",
        admin
            .list_endpoints(ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    drop(admin);
    std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let logs = crate::support::read_stderr(&logs_dir, 1);
    assert!(
        logs.contains("endpoint created"),
        "the capture works: {logs}"
    );
    let secret = key_body(&m.client_key_pem);
    assert!(!logs.contains(&secret[..40]), "the key in the log:\n{logs}");
    assert!(!listed.contains(&secret[..40]), "{listed}");
    let stored = crate::support::stored_records(&data);
    assert!(!stored.is_empty());
    for r in &stored {
        assert!(
            !crate::support::contains(r, &secret.as_bytes()[..40]),
            "stored in clear"
        );
    }
}
