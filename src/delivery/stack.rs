//! The delivery stack: one tower service per endpoint, built in [`build`].
//!
//! ```text
//! adaptive in-flight limit → rate limit → transport retry
//!   → OAuth2 bearer token (when the endpoint has oauth2) → sign
//!   → per-request timeout → hyper client
//! ```
//!
//! Why this order: the in-flight limit is outermost so an attempt waiting
//! for a slot has not started its clock, and it sees every final outcome
//! (to back off on 429/503/timeouts); the rate limit paces what the window
//! lets through, retries included; the in-process retry sits above
//! signing so every try is signed with its own `webhook-timestamp`; the
//! OAuth2 layer sits between them, so a request it sends again after a 401
//! is signed afresh, and a transport retry reuses the cached token; the
//! timeout wraps only the HTTP exchange (connect, send, read the response
//! excerpt). Whether an outcome is a success, a retry or a rejection is
//! decided afterwards by `classify`, not here.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection},
        Client, ResponseFuture,
    },
    rt::TokioExecutor,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{util::BoxCloneSyncService, Service, ServiceBuilder, ServiceExt};

pub use super::request::{Keys, SendError, SharedKeys, WebhookRequest, WebhookResponse};
use super::{
    egress::{self, Guard, GuardedConnector},
    limit::{AdaptiveLimitLayer, Rate, RateLimitLayer},
    oauth::{BearerLayer, Tokens},
    proxy::{ProxyConnector, Route},
    request::BoxFuture,
    signing::{event_id_header, signature_header},
};

/// `X-Jasci-Event`: the event type, as the WMS documents it.
pub const EVENT_HEADER: HeaderName = HeaderName::from_static("x-jasci-event");
/// Standard Webhooks message id, stable across attempts: the event id when
/// it is a safe token, else one derived from it (`signing::webhook_id`).
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Standard Webhooks attempt time, Unix seconds.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks signatures.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// `X-Stevedore-Event-Id`: the producer's event id, percent-encoded
/// (`signing::event_id_header`).
pub const EVENT_ID_HEADER: HeaderName = HeaderName::from_static("x-stevedore-event-id");
/// `User-Agent` of every request unless the endpoint sets its own.
pub const USER_AGENT: &str = concat!("stevedore/", env!("CARGO_PKG_VERSION"));
/// Bytes of a response body kept for the attempt record.
pub const RESPONSE_EXCERPT_BYTES: usize = 4096;

/// The HTTP client every stack sends through (HTTP/1.1 and HTTP/2, rustls,
/// pooled connections, redirects never followed — hyper does not follow
/// them and nothing here does), connecting only where the SSRF guard
/// allows (see [`egress`]), with at most `max_in_flight` connections open.
/// Plain-HTTP requests it forwards through a proxy with credentials carry
/// them (`Proxy-Authorization`); CONNECT tunnels carry them on their own.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<BoundedConnector<ProxyConnector>>, Full<Bytes>>,
    route: Arc<Route>,
}

impl HttpClient {
    /// Sends `req` (redirects are never followed).
    pub fn request(&self, mut req: Request<Full<Bytes>>) -> ResponseFuture {
        if let Some(auth) = self.route.forwarding_auth(req.uri()) {
            req.headers_mut()
                .insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
        self.client.request(req)
    }
}

/// A client that holds at most `max_connections` connections open (its
/// endpoint's `max_in_flight`), keeps them pooled, and whose every new
/// connection passes `guard`, going through a proxy where `route` says so
/// (the target, not the proxy, is checked then: see [`super::proxy`]).
pub fn http_client(
    max_connections: usize,
    guard: Guard,
    tls: &rustls::ClientConfig,
    route: Route,
) -> HttpClient {
    let direct = GuardedConnector::new(guard.clone(), |http| {
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
    });
    let forwarding = Arc::new(route.clone());
    let http = ProxyConnector::new(direct, route, guard);
    let http = BoundedConnector::new(http, max_connections);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    HttpClient {
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_connections)
            .build(https),
        route: forwarding,
    }
}

/// Bounds how many connections an endpoint's client holds open: each new
/// connection takes a permit and keeps it until it is closed. The pooled
/// client alone does not bound them: it starts a new connection whenever
/// none is idle at that instant, and a connection finishing its response
/// is handed back to the pool a moment after the in-flight slot is freed,
/// so a busy endpoint ended up with more connections than `max_in_flight`.
/// With this bound, a request that finds none idle waits for one to come
/// back (the pool hands it over) or for a permit.
#[derive(Clone)]
pub struct BoundedConnector<C> {
    inner: C,
    permits: Arc<Semaphore>,
}

/// How long a new connection waits for a permit before giving up. A
/// request only waits while every connection is busy or being returned;
/// a connect the pool started speculatively and no longer needs gives up
/// after this, so such waiters do not pile up.
const CONNECTION_PERMIT_WAIT: Duration = Duration::from_secs(2);

impl<C> BoundedConnector<C> {
    /// At most `max` connections through `inner`.
    pub fn new(inner: C, max: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<C> Service<Uri> for BoundedConnector<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Permitted<C::Response>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let permits = self.permits.clone();
        // The readied inner service is taken; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = tokio::time::timeout(CONNECTION_PERMIT_WAIT, permits.acquire_owned())
                .await
                .map_err(|_| "every connection of this endpoint stayed busy")?
                .map_err(|_| "connection limit closed")?;
            let io = inner.call(uri).await.map_err(Into::into)?;
            Ok(Permitted {
                io,
                _permit: permit,
            })
        })
    }
}

/// A connection holding one of its endpoint's permits.
pub struct Permitted<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: Connection> Connection for Permitted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Permitted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Permitted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A signed request ready for the wire.
pub struct SignedRequest {
    http: Request<Full<Bytes>>,
    timeout: Duration,
}

/// The stack's type.
pub type DeliveryService = BoxCloneSyncService<WebhookRequest, WebhookResponse, SendError>;

/// Builds an endpoint's stack over `client`: at most `max_in_flight`
/// requests at once (fewer while the receiver signals overload), paced by
/// `rate` when set, carrying a bearer token from `oauth` when set.
pub fn build(
    client: HttpClient,
    max_in_flight: u32,
    rate: Option<Rate>,
    oauth: Option<Arc<Tokens>>,
) -> DeliveryService {
    ServiceBuilder::new()
        .layer(BoxCloneSyncService::layer())
        .layer(AdaptiveLimitLayer::new(max_in_flight))
        .option_layer(rate.map(RateLimitLayer::new))
        .retry(ConnectRetry::default())
        .option_layer(oauth.map(BearerLayer::new))
        .map_request(sign)
        .layer(tower::layer::layer_fn(Deadline))
        .service(Sender(client))
}

/// Signs one try: fresh `webhook-timestamp`, a signature per active key.
fn sign(req: WebhookRequest) -> SignedRequest {
    let now = SystemTime::now();
    let timestamp = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let signature = {
        let keys = req.keys.read().unwrap_or_else(|p| p.into_inner());
        let previous = keys
            .previous
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s);
        signature_header(
            std::iter::once(&keys.current).chain(previous),
            &req.msg_id,
            timestamp,
            &req.body,
        )
    };
    let mut http = Request::post(req.uri)
        .body(Full::new(req.body))
        .expect("a POST with a valid URI and no headers yet is a valid request");
    let headers = http.headers_mut();
    headers.extend(req.headers);
    headers.insert(
        WEBHOOK_ID,
        HeaderValue::from_str(&req.msg_id).expect("webhook ids are safe tokens"),
    );
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    headers.insert(
        WEBHOOK_SIGNATURE,
        HeaderValue::from_str(&signature).expect("base64 is a valid header value"),
    );
    SignedRequest {
        http,
        timeout: req.timeout,
    }
}

/// Retries, in process, a try that failed before anything was sent
/// (connection refused, DNS failure): twice, after 50 and 250 ms. Anything
/// else goes back to the durable schedule — including an attempt the SSRF
/// guard blocked, which trying again in 50 ms would not change.
#[derive(Clone, Default)]
struct ConnectRetry {
    tries: u8,
}

impl tower::retry::Policy<WebhookRequest, WebhookResponse, SendError> for ConnectRetry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut WebhookRequest,
        result: &mut Result<WebhookResponse, SendError>,
    ) -> Option<Self::Future> {
        const BACKOFF: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(250)];
        match result {
            Err(SendError::Connect(_)) if (self.tries as usize) < BACKOFF.len() => {
                let wait = BACKOFF[self.tries as usize];
                self.tries += 1;
                Some(tokio::time::sleep(wait))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &WebhookRequest) -> Option<WebhookRequest> {
        Some(req.clone())
    }
}

/// Applies each request's own timeout (it depends on the endpoint and the
/// event type, so a fixed `tower::timeout` layer does not fit).
#[derive(Clone)]
struct Deadline<S>(S);

impl<S> Service<SignedRequest> for Deadline<S>
where
    S: Service<Request<Full<Bytes>>, Response = WebhookResponse, Error = SendError>,
    S::Future: Send + 'static,
{
    type Response = WebhookResponse;
    type Error = SendError;
    type Future = BoxFuture<Result<WebhookResponse, SendError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: SignedRequest) -> Self::Future {
        let timeout = req.timeout;
        let fut = self.0.call(req.http);
        Box::pin(async move {
            tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or(Err(SendError::Timeout(timeout)))
        })
    }
}

/// Sends over the hyper client and reads the start of the response body.
#[derive(Clone)]
struct Sender(HttpClient);

impl Service<Request<Full<Bytes>>> for Sender {
    type Response = WebhookResponse;
    type Error = SendError;
    type Future = BoxFuture<Result<WebhookResponse, SendError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        // The legacy client is always ready; its pool queues internally.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let resp = client.request(req).await.map_err(send_error)?;
            let (parts, mut body) = resp.into_parts();
            let mut excerpt = Vec::new();
            while excerpt.len() < RESPONSE_EXCERPT_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = RESPONSE_EXCERPT_BYTES - excerpt.len();
                            excerpt.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    // The status already arrived: a broken body does not
                    // change the outcome.
                    Some(Err(_)) | None => break,
                }
            }
            Ok(WebhookResponse {
                status: parts.status,
                headers: parts.headers,
                body_excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
            })
        })
    }
}

/// What a failed exchange of the hyper client was: blocked by the SSRF
/// guard, no connection, or a transport failure, with hyper's cause chain
/// (its top-level message is vague).
pub(super) fn send_error(e: hyper_util::client::legacy::Error) -> SendError {
    if let Some(blocked) = egress::find_blocked(&e) {
        return SendError::Blocked(blocked.to_string());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_connect() {
        SendError::Connect(msg)
    } else {
        SendError::Transport(msg)
    }
}

/// Sends one request through `service` (waiting for a concurrency slot).
pub async fn send(
    service: DeliveryService,
    req: WebhookRequest,
) -> Result<WebhookResponse, SendError> {
    service.oneshot(req).await
}

/// The fixed headers of every request: the endpoint's own, content type,
/// event type, the producer's event id, and `User-Agent: stevedore/<version>`
/// unless the endpoint sets its own `User-Agent` (some WAF rule sets block
/// requests without one).
pub fn base_headers(
    event_type: &str,
    event_id: &str,
    custom: &[(HeaderName, HeaderValue)],
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(custom.len() + 4);
    for (k, v) in custom {
        h.append(k.clone(), v.clone());
    }
    if !h.contains_key(header::USER_AGENT) {
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    }
    h.insert(
        EVENT_ID_HEADER,
        HeaderValue::from_str(&event_id_header(event_id))
            .expect("a percent-encoded id is a valid header value"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        EVENT_HEADER,
        HeaderValue::from_str(event_type).expect("event type names are header-safe"),
    );
    h
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use tower::retry::Policy;

    use super::{super::signing::Secret, *};

    fn request() -> WebhookRequest {
        WebhookRequest::for_test()
    }

    #[tokio::test]
    async fn only_connect_failures_are_retried_in_process() {
        let mut req = request();
        let mut policy = ConnectRetry::default();
        let mut refused = Err(SendError::Connect("refused".into()));
        assert!(policy.retry(&mut req, &mut refused).is_some());
        let mut policy = ConnectRetry::default();
        let mut blocked = Err(SendError::Blocked(
            "blocked by SSRF guard: 127.0.0.1 is loopback in 127.0.0.0/8".into(),
        ));
        assert!(policy.retry(&mut req, &mut blocked).is_none());
    }

    /// The receiver's check, written out from the Standard Webhooks spec
    /// rather than through `Secret::sign`: the key is the base64 after
    /// `whsec_`, the MAC covers `{webhook-id}.{webhook-timestamp}.{body}`
    /// with the values the request carries.
    fn expected_signature(secret: &Secret, msg_id: &str, timestamp: &str, body: &[u8]) -> String {
        use base64::{engine::general_purpose::STANDARD, Engine};
        use hmac::{Hmac, Mac};
        let revealed = secret.reveal();
        let key = STANDARD
            .decode(revealed.strip_prefix("whsec_").unwrap())
            .unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    #[tokio::test]
    async fn each_try_is_signed_over_its_id_timestamp_and_body() {
        let (current, previous, expired) =
            (Secret::generate(), Secret::generate(), Secret::generate());
        let mut req = request();
        req.msg_id = "evt-42".into();
        req.body = Bytes::from_static(br#"{"tenantId":"T1","lines":[{"lineNumber":1}]}"#);
        req.headers = base_headers("pick.confirmed", "evt-42", &[]);
        let until = SystemTime::now() + Duration::from_secs(3600);
        let keys = |previous: Option<(Secret, SystemTime)>| {
            Arc::new(RwLock::new(Keys {
                current: current.clone(),
                previous,
            }))
        };

        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        req.keys = keys(Some((previous.clone(), until)));
        let signed = sign(req.clone());
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let h = signed.http.headers().clone();
        assert_eq!(h[WEBHOOK_ID], "evt-42");
        assert_eq!(h[EVENT_HEADER], "pick.confirmed");
        assert_eq!(h[EVENT_ID_HEADER], "evt-42");
        assert_eq!(h[header::USER_AGENT], USER_AGENT);
        let timestamp = h[WEBHOOK_TIMESTAMP].to_str().unwrap().to_owned();
        let secs: u64 = timestamp.parse().unwrap();
        assert!(
            (before..=after).contains(&secs),
            "webhook-timestamp {secs} is not the signing time ({before}..={after})"
        );
        let body = signed.http.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, req.body, "the signed bytes are the sent bytes");
        let signatures: Vec<&str> = h[WEBHOOK_SIGNATURE].to_str().unwrap().split(' ').collect();
        assert_eq!(
            signatures,
            [
                expected_signature(&current, "evt-42", &timestamp, &body),
                expected_signature(&previous, "evt-42", &timestamp, &body),
            ],
            "one signature per active secret, the current one first"
        );

        // Once the previous secret has expired, only the current one signs.
        req.keys = keys(Some((expired, SystemTime::now() - Duration::from_secs(1))));
        let signed = sign(req.clone());
        let h = signed.http.headers();
        let timestamp = h[WEBHOOK_TIMESTAMP].to_str().unwrap();
        assert_eq!(
            h[WEBHOOK_SIGNATURE],
            expected_signature(&current, "evt-42", timestamp, &req.body).as_str()
        );
    }

    #[test]
    fn keys_and_requests_debug_without_secrets() {
        let current = Secret::generate();
        let previous = Secret::generate();
        let keys = Keys {
            current: current.clone(),
            previous: Some((previous.clone(), SystemTime::now())),
        };
        let mut req = request();
        req.keys = Arc::new(RwLock::new(keys.clone()));
        let mut value = HeaderValue::from_static("header-credential");
        value.set_sensitive(true);
        req.headers.insert("x-api-key", value);
        let shown = format!("{keys:?} {req:?}");
        for s in [&current, &previous] {
            let b64 = s.reveal();
            assert!(!shown.contains(&b64[SECRET_PREFIX_LEN..]), "{shown}");
        }
        assert!(!shown.contains("header-credential"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn user_agent_is_ours_unless_the_endpoint_sets_one() {
        let h = base_headers("t", "e", &[]);
        assert_eq!(
            h[header::USER_AGENT],
            concat!("stevedore/", env!("CARGO_PKG_VERSION"))
        );
        let custom = [(header::USER_AGENT, HeaderValue::from_static("acme-erp/2"))];
        let h = base_headers("t", "e", &custom);
        let all: Vec<_> = h.get_all(header::USER_AGENT).iter().collect();
        assert_eq!(all, ["acme-erp/2"]);
    }

    const SECRET_PREFIX_LEN: usize = super::super::signing::SECRET_PREFIX.len();
}
