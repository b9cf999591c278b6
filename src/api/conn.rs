//! The gRPC listener's connections: a cap on how many are open, a handshake
//! timeout and an idle timeout.
//!
//! [`incoming`] accepts TCP connections and hands tonic [`Conn`]s: a
//! connection over `max_connections` is closed as soon as it is accepted;
//! one that has not sent its first request within `handshake_timeout`
//! (silent, or stopped after a partial preface, the preface or SETTINGS —
//! and with TLS, during the TLS handshake) is closed; one with no call in
//! progress and no traffic for `idle_timeout` is closed. [`ConnLayer`], in
//! front of the services, tells each connection when its calls start and
//! end. A connection is closed by failing its next read, which ends
//! hyper's connection task.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::{wrappers::TcpListenerStream, Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{config::Config, metrics::Metrics};

/// What a connection and the requests on it share.
#[derive(Debug, Default)]
pub struct ConnState {
    /// A request has arrived: the handshake is over.
    served: AtomicBool,
    /// Calls in progress (until their response body ends).
    active: AtomicUsize,
}

/// The connect info tonic puts in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    tcp: TcpConnectInfo,
    state: Arc<ConnState>,
}

/// Accepts connections on `listener` under the cap and timeouts of
/// `config`. With TLS on, a client that starts plaintext HTTP/2 instead of
/// a TLS handshake is answered in plaintext, on every call, with
/// `UNAVAILABLE` saying the listener needs TLS, and closed: it fails at
/// once with a reason instead of waiting out its connect timeout.
pub fn incoming(
    listener: TcpListener,
    config: &Config,
    metrics: Arc<Metrics>,
) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
    let accepted = accept(listener, config, metrics.clone());
    if config.tls_cert.is_none() {
        return Box::pin(accepted);
    }
    let handshake = config.handshake_timeout;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        tokio::pin!(accepted);
        while let Some(conn) = accepted.next().await {
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                // A TLS record starts with its content type (0x16 for a
                // handshake); a plaintext HTTP/2 client with `PRI * HTTP/2.0`.
                let mut first = [0u8; 1];
                match tokio::time::timeout(handshake, conn.io.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] == b'P' => {
                        metrics.connections_closed.add(&["plaintext_on_tls"], 1);
                        refuse_plaintext(conn, handshake).await;
                    }
                    // TLS, or anything else: the TLS handshake decides (and
                    // the handshake timeout still applies).
                    _ => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Answers every call on a plaintext HTTP/2 connection to the TLS listener
/// with `UNAVAILABLE` and a reason, for at most `limit`, then closes it.
async fn refuse_plaintext(conn: Conn, limit: Duration) {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let service = hyper::service::service_fn(|_request| async {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header(
                "grpc-message",
                "this listener requires TLS: connect with TLS (grpcurl: -cacert FILE, \
                 not -plaintext)",
            )
            .body(Empty::<Bytes>::new())
    });
    let serving = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(conn), service);
    let _ = tokio::time::timeout(limit, serving).await;
}

fn accept(
    listener: TcpListener,
    config: &Config,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (handshake, idle) = (config.handshake_timeout, config.idle_timeout);
    let max = config.max_connections;
    TcpListenerStream::new(listener).filter_map(move |accepted| {
        let tcp = match accepted {
            Ok(tcp) => tcp,
            Err(e) => return Some(Err(e)),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_closed.add(&["max_connections"], 1);
            tracing::warn!(
                remote = ?tcp.peer_addr().ok(),
                "closing a new connection: max_connections ({max}) are open"
            );
            return None;
        };
        // Without it, small responses waited for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        Some(Ok(Conn::new(tcp, slot, handshake, idle, metrics.clone())))
    })
}

/// One accepted connection; see the module docs.
pub struct Conn {
    io: TcpStream,
    state: Arc<ConnState>,
    tcp: TcpConnectInfo,
    timer: Pin<Box<Sleep>>,
    last_io: Instant,
    idle: Duration,
    /// The timer runs to the idle deadline (the handshake is over).
    idle_armed: bool,
    metrics: Arc<Metrics>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        io: TcpStream,
        slot: OwnedSemaphorePermit,
        handshake: Duration,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        let tcp = TcpConnectInfo {
            local_addr: io.local_addr().ok(),
            remote_addr: io.peer_addr().ok(),
        };
        let now = Instant::now();
        Self {
            io,
            state: Arc::default(),
            tcp,
            timer: Box::pin(tokio::time::sleep_until(now + handshake)),
            last_io: now,
            idle,
            idle_armed: false,
            metrics,
            _slot: slot,
        }
    }

    /// Called when a read is pending: `Err` once the connection has timed
    /// out, after registering the timer otherwise.
    fn check_timeouts(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.idle_armed && self.state.served.load(Ordering::Acquire) {
            self.idle_armed = true;
            self.timer.as_mut().reset(self.last_io + self.idle);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if !self.state.served.load(Ordering::Acquire) {
                return Err(self.close("handshake_timeout"));
            }
            let deadline = if self.state.active.load(Ordering::Acquire) > 0 {
                now + self.idle
            } else {
                let deadline = self.last_io + self.idle;
                if deadline <= now {
                    return Err(self.close("idle_timeout"));
                }
                deadline
            };
            self.timer.as_mut().reset(deadline);
        }
        Ok(())
    }

    fn close(&self, reason: &'static str) -> io::Error {
        self.metrics.connections_closed.add(&[reason], 1);
        tracing::debug!(remote = ?self.tcp.remote_addr, reason, "closing connection");
        io::Error::new(io::ErrorKind::TimedOut, reason)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.tcp.clone(),
            state: self.state.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last_io = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.check_timeouts(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last_io = Instant::now();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last_io = Instant::now();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Marks each request's connection as handshaken and counts its calls in
/// progress; puts the plain [`TcpConnectInfo`] in the request too, so
/// `Request::remote_addr` works.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnLayer;

impl<S> tower::Layer<S> for ConnLayer {
    type Service = ConnService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnService { inner }
    }
}

/// See [`ConnLayer`].
#[derive(Debug, Clone)]
pub struct ConnService<S> {
    inner: S,
}

/// Ends a call on its connection when dropped.
struct CallGuard(Arc<ConnState>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ConnService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let guard = req.extensions().get::<ConnInfo>().cloned().map(|info| {
            info.state.served.store(true, Ordering::Release);
            info.state.active.fetch_add(1, Ordering::AcqRel);
            req.extensions_mut().insert(info.tcp.clone());
            CallGuard(info.state)
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| CountedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its call counted until it ends.
pub struct CountedBody<B> {
    inner: B,
    _guard: Option<CallGuard>,
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
