//! A fast local webhook receiver: answers 200 at once (or never, for the
//! isolation scenario), counts requests, tracks open connections, and can
//! record when each `webhook-id` arrived.
//!
//! Kept lean on purpose (atomics, one lock only when recording arrivals):
//! it shares the machine's two cores with the broker and the load
//! generator, and the baselines run against the same receiver.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

/// How a receiver behaves.
#[derive(Clone, Copy, Default)]
pub struct Options {
    /// Never answer (the endpoint times out).
    pub hang: bool,
    /// Record an [`Arrival`] for every request.
    pub record: bool,
}

/// When a recorded request arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// Its `webhook-id` header.
    pub id: String,
    /// When its headers had arrived (the handler was called).
    pub headers: Instant,
    /// When its whole body had been read: the arrival the latency counts.
    pub read: Instant,
}

/// A receiver on `127.0.0.1:0`; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    shared: Arc<Shared>,
    token: CancellationToken,
}

struct Shared {
    options: Options,
    count: AtomicU64,
    /// `wait_for` wakes when `count` reaches this.
    target: AtomicU64,
    reached: Notify,
    open: AtomicUsize,
    max_open: AtomicUsize,
    arrivals: Mutex<Vec<Arrival>>,
}

impl Receiver {
    pub async fn start(options: Options) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            count: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            arrivals: Mutex::new(Vec::new()),
        });
        let token = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), token.clone()));
        Ok(Self {
            url: url(addr),
            shared,
            token,
        })
    }

    /// Requests received so far (counted when the body has arrived).
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// The most TCP connections that were open at once.
    pub fn max_connections(&self) -> usize {
        self.shared.max_open.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests have been received.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.reached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.shared.target.store(n, Ordering::SeqCst);
            let got = self.count();
            if got >= n {
                self.shared.target.store(u64::MAX, Ordering::SeqCst);
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "receiver {}: {got} of {n} requests within {timeout:?}",
                    self.url
                );
            }
        }
    }

    /// The recorded arrivals (with `Options::record`), leaving none.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(
            &mut *self
                .shared
                .arrivals
                .lock()
                .expect("no panics under this lock"),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/hook")
}

/// A port nothing listens on: connections to it are refused.
pub async fn refused_url() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(url(addr))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let now = shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_open.fetch_max(now, Ordering::Relaxed);
        let shared = shared.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let conn_shared = shared.clone();
            let svc_token = token.clone();
            let service =
                service_fn(move |req| handle(conn_shared.clone(), svc_token.clone(), req));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = token.cancelled() => {}
                _ = conn => {}
            }
            shared.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    token: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = Instant::now();
    let id = shared
        .options
        .record
        .then(|| {
            req.headers()
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .flatten();
    // Read the whole body, as a real receiver would.
    let _ = req.into_body().collect().await;
    let read = Instant::now();
    if let Some(id) = id {
        shared
            .arrivals
            .lock()
            .expect("no panics under this lock")
            .push(Arrival { id, headers, read });
    }
    let n = shared.count.fetch_add(1, Ordering::SeqCst) + 1;
    if n >= shared.target.load(Ordering::SeqCst) {
        shared.reached.notify_waiters();
    }
    if shared.options.hang {
        token.cancelled().await;
    }
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::OK;
    Ok(res)
}
