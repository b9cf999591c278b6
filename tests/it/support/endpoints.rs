//! Webhook endpoints over the Admin API (create, read, list deliveries and
//! attempts, wait for a state), and HTTPS receivers for TLS tests.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use stevedore::pb::{
    self, admin_client::AdminClient, CreateEndpointRequest, DeliveryState, Endpoint,
    ListAttemptsRequest, ListDeliveriesRequest,
};
use tonic::transport::Channel;

use super::{ms, status_text};

/// One Admin call of the crash tests.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint to `url` with a fast test schedule (attempts at 0, 100 ms,
/// 100 ms) unless the test changes it.
pub fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        url: url.into(),
        description: "test".into(),
        retry_schedule: vec![ms(0), ms(100), ms(100)],
        ..Default::default()
    }
}

/// Creates `e`; the endpoint and its signing secret.
pub async fn create(admin: &mut AdminClient<Channel>, e: Endpoint) -> (Endpoint, String) {
    let r = admin
        .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
        .await
        .unwrap()
        .into_inner();
    (r.endpoint.unwrap(), r.secret)
}

/// ListDeliveries of endpoint `id` in `state`.
pub async fn deliveries(
    admin: &mut AdminClient<Channel>,
    id: &str,
    state: DeliveryState,
) -> Vec<pb::Delivery> {
    admin
        .list_deliveries(ListDeliveriesRequest {
            endpoint_id: id.into(),
            state: state as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

/// GetEndpoint's endpoint.
pub async fn get_endpoint(admin: &mut AdminClient<Channel>, id: &str) -> pb::Endpoint {
    admin
        .get_endpoint(pb::GetEndpointRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
}

/// Polls ListDeliveries until `n` deliveries are in `state`.
pub async fn wait_state(
    admin: &mut AdminClient<Channel>,
    id: &str,
    state: DeliveryState,
    n: usize,
) -> Vec<pb::Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deliveries(admin, id, state).await;
        if d.len() >= n {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} deliveries in {state:?}, have {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ListAttempts of endpoint `id` at `offset`.
pub async fn attempts(admin: &mut AdminClient<Channel>, id: &str, offset: u64) -> Vec<pb::Attempt> {
    admin
        .list_attempts(ListAttemptsRequest {
            endpoint_id: id.into(),
            offset,
        })
        .await
        .unwrap()
        .into_inner()
        .attempts
}

/// An HTTPS receiver (h2 and http/1.1 by ALPN) that records each request's
/// HTTP version, headers and body, and answers 200.
pub async fn https_receiver(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(http::Version, http::HeaderMap, bytes::Bytes)>,
) {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    https_receiver_with(tls).await
}

/// [`https_receiver`] with the given TLS settings (e.g. requiring a client
/// certificate).
pub async fn https_receiver_with(
    tls: rustls::ServerConfig,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(http::Version, http::HeaderMap, bytes::Bytes)>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let version = req.version();
                            let (parts, body) = req.into_parts();
                            let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
                            let _ = tx.send((version, parts.headers, body));
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (port, rx)
}

/// Every delivery record of an endpoint in `state` (all pages).
pub async fn list_deliveries(
    admin: &mut AdminClient<Channel>,
    endpoint_id: &str,
    state: DeliveryState,
) -> Result<Vec<pb::Delivery>, String> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    for _ in 0..1000 {
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            admin.list_deliveries(ListDeliveriesRequest {
                endpoint_id: endpoint_id.to_owned(),
                state: state as i32,
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| format!("ListDeliveries timed out after {CALL_TIMEOUT:?}"))?
        .map_err(|s| {
            format!(
                "ListDeliveries({endpoint_id}, {state:?}): {}",
                status_text(&s)
            )
        })?
        .into_inner();
        out.extend(r.deliveries);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = r.next_page_token;
    }
    Err(format!(
        "ListDeliveries({endpoint_id}): more than 1000 pages"
    ))
}

/// ListAttempts of endpoint `id` at `offset` within `CALL_TIMEOUT`, for a
/// failure message.
pub async fn attempts_within(
    admin: &mut AdminClient<Channel>,
    id: &str,
    offset: u64,
) -> Result<Vec<pb::Attempt>, String> {
    tokio::time::timeout(
        CALL_TIMEOUT,
        admin.list_attempts(ListAttemptsRequest {
            endpoint_id: id.to_owned(),
            offset,
        }),
    )
    .await
    .map_err(|_| "timed out".to_owned())
    .and_then(|r| r.map_err(|s| status_text(&s)))
    .map(|r| r.into_inner().attempts)
}

/// How many of `deliveries` are in each state.
pub fn count_by_state(deliveries: &[pb::Delivery]) -> BTreeMap<String, usize> {
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for d in deliveries {
        *states.entry(format!("{:?}", d.state())).or_default() += 1;
    }
    states
}
