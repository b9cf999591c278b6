//! A programmable webhook receiver: a real HTTP server on `127.0.0.1:0` that
//! records every request and answers as told (status, headers, delay, body,
//! or a dropped connection). Its requests are verified by
//! [`super::signatures`].
//!
//! ```ignore
//! let rx = Receiver::start().await;
//! rx.respond(Behavior::Status(503));          // the first request fails
//! // ... create an endpoint for rx.url, publish an event ...
//! let got = rx.wait_for(2, Duration::from_secs(10)).await;
//! verify_signature(&secret, &got[1]).unwrap();
//! ```

use std::{
    collections::VecDeque,
    fmt,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header::HeaderName, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// The path the receiver's `url` points at (every path is accepted and
/// recorded).
pub const HOOK_PATH: &str = "/hook";

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// This status, empty body.
    Status(u16),
    /// This status with these headers, e.g. `429` + `retry-after`, `302` +
    /// `location`.
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// This status after a delay (the request is recorded on arrival).
    Delay(Duration, u16),
    /// This status with a body (`text/plain`).
    Body(u16, String),
    /// Close the connection without any response. On HTTP/1.1 the client
    /// sees the connection closed before a response; on h2 the stream is
    /// reset.
    Reset,
    /// A response cut short: this status line and headers with a
    /// `content-length` [`HALF_WRITTEN_MISSING`] bytes longer than the body
    /// part given, then that part, then the connection is closed (HTTP/1.1;
    /// on h2 the stream is reset after the part). The client has a status
    /// but its body read fails.
    HalfWritten(u16, String),
}

/// How many declared body bytes a [`Behavior::HalfWritten`] response never
/// sends.
pub const HALF_WRITTEN_MISSING: usize = 64;

/// One request as the receiver saw it.
#[derive(Clone)]
pub struct Recorded {
    pub method: Method,
    /// The request target's path and query, e.g. `/hook`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the whole request (headers and body) had arrived.
    pub received_at: Instant,
    pub version: http::Version,
    /// Which TCP connection carried it: 1 for the first accepted, and so on.
    pub connection: u64,
}

impl Recorded {
    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics (showing the body) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text (lossy), for messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Debug for Recorded {
    /// One line: what a failing assertion needs to tell requests apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_BODY: usize = 300;
        let body = self.body_text();
        let body = match body.char_indices().nth(MAX_BODY) {
            Some((i, _)) => format!("{}... ({} bytes)", &body[..i], self.body.len()),
            None => body,
        };
        write!(
            f,
            "{} {} {:?} conn#{} x-jasci-event={:?} webhook-id={:?} body={}",
            self.method,
            self.path,
            self.version,
            self.connection,
            self.header("x-jasci-event").unwrap_or("-"),
            self.header("webhook-id").unwrap_or("-"),
            body
        )
    }
}

/// A webhook receiver serving HTTP/1.1 and h2c on `127.0.0.1`.
///
/// Dropping it (or [`Receiver::stop`]) stops the server and closes its
/// connections.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Cancelled by `stop`; replaced by `restart`.
    running: Mutex<CancellationToken>,
}

struct Shared {
    state: Mutex<State>,
    /// The number of recorded requests, for `wait_for`.
    count: watch::Sender<usize>,
    open_connections: AtomicUsize,
    connections_accepted: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct State {
    queue: VecDeque<Behavior>,
    default: Behavior,
    requests: Vec<Recorded>,
    /// [`Receiver::respond_first_of_each`]: the header, the behaviour, and
    /// the header values seen so far.
    first_of_each: Option<(&'static str, Behavior, std::collections::HashSet<Vec<u8>>)>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from this file's
        // trivial critical sections; the data is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Receiver {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver's local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                default: Behavior::Status(200),
                requests: Vec::new(),
                first_of_each: None,
            }),
            count: watch::channel(0).0,
            open_connections: AtomicUsize::new(0),
            connections_accepted: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let token = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), token.clone()));
        Receiver {
            url: format!("http://{addr}{HOOK_PATH}"),
            addr,
            shared,
            running: Mutex::new(token),
        }
    }

    /// Queues a behaviour for the next request that has none yet (FIFO, in
    /// order of arrival). When the queue is empty the default applies.
    pub fn respond(&self, b: Behavior) {
        self.shared.state().queue.push_back(b);
    }

    /// Queues `b` for each of the next `n` requests.
    pub fn respond_n(&self, n: usize, b: Behavior) {
        let mut state = self.shared.state();
        state.queue.extend(std::iter::repeat_n(b, n));
    }

    /// The first request carrying each distinct value of `header` gets `b`
    /// (ahead of the queue); later requests with a value seen before, and
    /// requests without the header, are answered as usual. Unlike
    /// [`Receiver::respond_n`], this does not depend on the order in which
    /// first attempts and retries of different events arrive.
    pub fn respond_first_of_each(&self, header: &'static str, b: Behavior) {
        self.shared.state().first_of_each = Some((header, b, Default::default()));
    }

    /// The behaviour when nothing is queued (initially `Status(200)`).
    pub fn set_default(&self, b: Behavior) {
        self.shared.state().default = b;
    }

    /// How many queued behaviours are still unused.
    pub fn queued(&self) -> usize {
        self.shared.state().queue.len()
    }

    /// Every request recorded so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state().requests.clone()
    }

    /// The number of requests recorded so far.
    pub fn count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Forgets the recorded requests (not the queue, the default or the
    /// counters).
    pub fn clear(&self) {
        self.shared.state().requests.clear();
        self.shared.count.send_replace(0);
    }

    /// Waits until at least `n` requests have been recorded and returns all
    /// of them. Panics, listing what did arrive, if fewer than `n` arrive
    /// within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let mut count = self.shared.count.subscribe();
        // The sender lives in `shared`, which `self` keeps alive, so
        // `wait_for` cannot fail with a closed channel.
        // Only a bool is kept: the `Ref` that `wait_for` returns holds the
        // watch's read lock, which `handle` needs (under the state lock).
        let reached = matches!(
            tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await,
            Ok(Ok(_))
        );
        let got = self.requests();
        if !reached {
            let list: String = got
                .iter()
                .enumerate()
                .map(|(i, r)| format!("\n  [{i}] {r:?}"))
                .collect();
            panic!(
                "webhook receiver {}: expected at least {n} request(s) within {timeout:?}, \
                 got {}{}",
                self.url,
                got.len(),
                if got.is_empty() {
                    " (none)".to_owned()
                } else {
                    format!(":{list}")
                }
            );
        }
        got
    }

    /// Waits for the request whose `webhook-id` is `marker` and returns the
    /// requests recorded before it. For "nothing else is sent" checks that
    /// do not depend on the machine's speed: publish a marker event after
    /// the ones under test, routed so it is sent only after them (same
    /// ordering key, or a STRICT endpoint); anything that should not have
    /// been sent would have arrived first. Panics if the marker does not
    /// arrive within `timeout`.
    pub async fn before_marker(&self, marker: &str, timeout: Duration) -> Vec<Recorded> {
        let is_marker = |r: &Recorded| r.header("webhook-id") == Some(marker);
        let mut count = self.shared.count.subscribe();
        let arrived = tokio::time::timeout(timeout, async {
            loop {
                if self.requests().iter().any(is_marker) {
                    return;
                }
                // The sender lives in `shared`, which `self` keeps alive.
                count.changed().await.expect("the receiver is alive");
            }
        })
        .await;
        let got = self.requests();
        assert!(
            arrived.is_ok(),
            "webhook receiver {}: marker {marker:?} did not arrive within {timeout:?}; \
             got {got:#?}",
            self.url
        );
        got.into_iter().take_while(|r| !is_marker(r)).collect()
    }

    /// Asserts that no more than `n` requests arrive during `period` (for
    /// "nothing else is sent" checks), returning them.
    pub async fn expect_no_more_than(&self, n: usize, period: Duration) -> Vec<Recorded> {
        tokio::time::sleep(period).await;
        let got = self.requests();
        assert!(
            got.len() <= n,
            "webhook receiver {}: expected at most {n} request(s), got {}: {got:#?}",
            self.url,
            got.len()
        );
        got
    }

    /// TCP connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// TCP connections accepted since the start.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections_accepted.load(Ordering::SeqCst)
    }

    /// Requests being handled right now (arrived, not yet answered).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at once.
    pub fn max_concurrent_requests(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Stops accepting (connects are then refused) and drops every open
    /// connection, including requests waiting in a `Delay`.
    pub fn stop(&self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
    }

    /// After `stop`, serves again on the same address ("the endpoint comes
    /// back"). Recorded requests, queue and default are kept.
    pub async fn restart(&self) {
        self.stop();
        // The old listener is dropped by its accept loop once cancelled;
        // retry the bind briefly until the port is free again.
        let mut tries = 0;
        let listener = loop {
            match bind_reuse(self.addr) {
                Ok(l) => break l,
                Err(e) => {
                    tries += 1;
                    assert!(
                        tries < 200,
                        "rebind the webhook receiver on {}: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let token = CancellationToken::new();
        tokio::spawn(accept_loop(listener, self.shared.clone(), token.clone()));
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return, // drops the listener: connects are refused
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // e.g. EMFILE: keep serving the connections that exist.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn_id = shared.connections_accepted.fetch_add(1, Ordering::SeqCst) + 1;
        let guard = Gauge::enter(&shared, Gauged::Connections);
        let shared = shared.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service = service_fn(move |req| handle(shared.clone(), conn_id, req));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            // On stop the connection future is dropped, which closes the
            // socket mid-request if need be.
            tokio::select! {
                _ = token.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// The error a `Reset` behaviour returns: hyper then closes the HTTP/1.1
/// connection without writing a response, or resets the h2 stream.
#[derive(Debug)]
struct ResetConnection;

impl fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiver told to reset the connection")
    }
}

impl std::error::Error for ResetConnection {}

async fn handle(
    shared: Arc<Shared>,
    connection: u64,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ResetConnection> {
    let _in_flight = Gauge::enter(&shared, Gauged::Requests);
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        // The client went away mid-body: nothing to record or answer.
        Err(_) => return Err(ResetConnection),
    };
    let recorded = Recorded {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers,
        body,
        received_at: Instant::now(),
        version: parts.version,
        connection,
    };
    let behavior = {
        let mut state = shared.state();
        let first = state.first_of_each.as_mut().and_then(|(header, b, seen)| {
            let value = recorded.headers.get(*header)?.as_bytes().to_vec();
            seen.insert(value).then(|| b.clone())
        });
        state.requests.push(recorded);
        let n = state.requests.len();
        // Under the lock so counts are published in order.
        shared.count.send_replace(n);
        match first {
            Some(b) => b,
            None => state
                .queue
                .pop_front()
                .unwrap_or_else(|| state.default.clone()),
        }
    };
    let full = match behavior {
        Behavior::HalfWritten(s, part) => return Ok(half_written(s, part)),
        Behavior::Status(s) => Ok(response(s, Vec::new(), Bytes::new())),
        Behavior::WithHeaders(s, headers) => Ok(response(s, headers, Bytes::new())),
        Behavior::Delay(d, s) => {
            tokio::time::sleep(d).await;
            Ok(response(s, Vec::new(), Bytes::new()))
        }
        Behavior::Body(s, body) => Ok(response(
            s,
            vec![("content-type", "text/plain; charset=utf-8".to_owned())],
            Bytes::from(body),
        )),
        Behavior::Reset => Err(ResetConnection),
    };
    full.map(|r| r.map(Either::Left))
}

/// A whole response, or the one [`Behavior::HalfWritten`] cuts short.
type ResponseBody = Either<Full<Bytes>, HalfBody>;

/// The body of a [`Behavior::HalfWritten`] response: its part, a pause (so
/// hyper flushes the head and the part), then an error, on which hyper
/// closes the connection without the rest.
type HalfBody = StreamBody<
    futures::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, ResetConnection>>,
>;

fn half_written(status: u16, part: String) -> Response<ResponseBody> {
    use futures::StreamExt as _;
    let declared = part.len() + HALF_WRITTEN_MISSING;
    let frames = futures::stream::iter([Ok(hyper::body::Frame::data(Bytes::from(part)))])
        .chain(futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(ResetConnection)
        }))
        .boxed();
    let head = response(
        status,
        vec![
            ("content-type", "text/plain; charset=utf-8".to_owned()),
            ("content-length", declared.to_string()),
        ],
        Bytes::new(),
    );
    head.map(|_| Either::Right(StreamBody::new(frames)))
}

fn response(
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = StatusCode::from_u16(status)
        .unwrap_or_else(|e| panic!("Behavior with an invalid status {status}: {e}"));
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("Behavior with an invalid header name {name:?}: {e}"));
        let value = HeaderValue::from_str(&value)
            .unwrap_or_else(|e| panic!("Behavior with an invalid value for {name}: {e}"));
        res.headers_mut().append(name, value);
    }
    res
}

/// Counts an open connection or a request in flight until dropped, so the
/// count stays right when its future is dropped early (stop, client gone).
struct Gauge {
    shared: Arc<Shared>,
    which: Gauged,
}

#[derive(Clone, Copy)]
enum Gauged {
    Connections,
    Requests,
}

impl Gauge {
    fn enter(shared: &Arc<Shared>, which: Gauged) -> Gauge {
        let gauge = Gauge {
            shared: shared.clone(),
            which,
        };
        let now = gauge.value().fetch_add(1, Ordering::SeqCst) + 1;
        if let Gauged::Requests = which {
            shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        }
        gauge
    }

    fn value(&self) -> &AtomicUsize {
        match self.which {
            Gauged::Connections => &self.shared.open_connections,
            Gauged::Requests => &self.shared.in_flight,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.value().fetch_sub(1, Ordering::SeqCst);
    }
}
