//! Issue #21.6: the gRPC listener's connection cap, handshake timeout and
//! idle timeout. Bounds are generous (10x the timeout): these tests check
//! that connections are closed, not how fast.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::support::{pick, TestServer};

/// HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads (and drops whatever the server sends) until the server closes the
/// connection; false if it is still open after `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn connect(addr: SocketAddr, send: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    if !send.is_empty() {
        tcp.write_all(send).await.unwrap();
    }
    tcp
}

async fn health(addr: SocketAddr) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
}

#[tokio::test]
async fn connections_without_a_request_are_closed_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.handshake_timeout = timeout;
    })
    .await;
    let mut full = PREFACE.to_vec();
    full.extend_from_slice(SETTINGS);
    // Silent, a partial preface, the preface, the preface and SETTINGS:
    // ten of each.
    let shapes: [&[u8]; 4] = [b"", &PREFACE[..10], PREFACE, &full];
    let mut conns = Vec::new();
    for shape in shapes {
        for _ in 0..10 {
            conns.push((shape.len(), connect(server.addr, shape).await));
        }
    }
    for (sent, tcp) in &mut conns {
        assert!(
            closed_within(tcp, timeout * 10).await,
            "a connection that sent {sent} bytes and no request is still open"
        );
    }
    // Clients that send requests are served.
    health(server.addr).await.unwrap();
    let mut p = server.publisher().await;
    crate::support::publish(&mut p, pick("", "SO-HANDSHAKE")).await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_streams_keep_theirs_open() {
    let idle = Duration::from_millis(300);
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.idle_timeout = idle;
    })
    .await;

    // A connection that made one call and then nothing.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let mut health = HealthClient::with_origin(
        HyperChannel(send),
        format!("http://{}", server.addr).parse().unwrap(),
    );
    health.check(HealthCheckRequest::default()).await.unwrap();
    tokio::time::timeout(idle * 10, conn)
        .await
        .expect("the idle connection is closed within 10x idle_timeout")
        .unwrap()
        .ok();

    // A Subscribe stream keeps its connection open past the idle timeout,
    // though nothing is sent on it.
    let mut s = server.subscriber().await;
    let mut stream = s
        .subscribe(stevedore::pb::SubscribeRequest {
            start: Some(stevedore::pb::subscribe_request::Start::Latest(true)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(idle * 4).await;
    let mut p = server.publisher().await;
    crate::support::publish(&mut p, pick("", "SO-IDLE")).await;
    let got = crate::support::next_within(&mut stream, 10).await;
    assert_eq!(got.offset, 1);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.max_connections = 3;
    })
    .await;
    // Three connections with a call in progress each (Subscribe streams).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = server.subscriber().await;
        held.push(
            s.subscribe(stevedore::pb::SubscribeRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    // A fourth is closed as soon as it is accepted.
    let mut extra = connect(server.addr, PREFACE).await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)).await,
        "a connection over max_connections is still open"
    );
    assert!(health(server.addr).await.is_err());

    // Closing one frees its slot (bounded retries: the server notices the
    // close asynchronously).
    held.pop();
    let mut ok = false;
    for _ in 0..100 {
        if health(server.addr).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "no connection accepted after one of the three closed");
}

/// A tonic client over one raw hyper HTTP/2 connection (so the test sees
/// when that connection ends).
#[derive(Clone)]
struct HyperChannel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for HyperChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fut = self.0.send_request(req);
        Box::pin(fut)
    }
}
