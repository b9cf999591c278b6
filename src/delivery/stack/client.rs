//! The HTTP client under every endpoint's stack: hyper's pooled client
//! over the proxy-aware, SSRF-guarded connector, with a bound on open
//! connections; and the stack's innermost service, which sends a signed
//! request through it and reads the start of the answer.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection},
        Client, ResponseFuture,
    },
    rt::TokioExecutor,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

use super::RESPONSE_EXCERPT_BYTES;
use crate::delivery::{
    egress::{self, Guard, GuardedConnector},
    proxy::{ProxyConnector, Route},
    request::{BoxFuture, SendError, WebhookResponse},
};

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

/// Sends over the hyper client and reads the start of the response body.
#[derive(Clone)]
pub(super) struct Sender(pub(super) HttpClient);

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
/// guard, no connection, or a transport failure. hyper's error is kept as
/// the source; its top-level message is vague, so the `SendError` text
/// shows the whole chain under it.
pub(crate) fn send_error(e: hyper_util::client::legacy::Error) -> SendError {
    if let Some(blocked) = egress::find_blocked(&e) {
        return SendError::Blocked(blocked.clone());
    }
    if e.is_connect() {
        SendError::connect(e)
    } else {
        SendError::transport(e)
    }
}
