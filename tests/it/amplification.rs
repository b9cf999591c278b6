//! Issue #21.1: memory is bounded before decoding. The real binary is sent
//! requests whose decoded form would be hundreds of times their size (empty
//! events, attribute floods), and its peak resident memory (`VmHWM`) must
//! stay within baseline + 4× the bytes sent; afterwards it still serves.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use stevedore::pb::{self, publisher_client::PublisherClient};

use crate::support::{frame, percent_decode, Server};

const BATCH: &str = "/stevedore.v1.Publisher/PublishBatch";
const MIB: usize = 1024 * 1024;

/// Peak resident memory of `pid`, bytes.
fn vm_hwm(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    let kb: usize = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// `PublishBatchRequest` of `n` empty events: `0a 00` repeated.
fn empty_events(n: usize) -> Bytes {
    frame(&[0x0a, 0x00].repeat(n)).into()
}

/// One event with `n` distinct attributes, in a batch.
fn attribute_flood(n: usize) -> Bytes {
    let mut event = Vec::new();
    for i in 0..n {
        let mut entry = Vec::new();
        let key = format!("k{i}");
        entry.push(0x0a);
        prost::encoding::encode_varint(key.len() as u64, &mut entry);
        entry.extend_from_slice(key.as_bytes());
        entry.extend_from_slice(&[0x12, 0x01, b'v']);
        event.push(0x22);
        prost::encoding::encode_varint(entry.len() as u64, &mut event);
        event.extend_from_slice(&entry);
    }
    let mut batch = vec![0x0a];
    prost::encoding::encode_varint(event.len() as u64, &mut batch);
    batch.extend_from_slice(&event);
    frame(&batch).into()
}

/// Sends one raw gRPC request on its own connection: (grpc-status, message).
async fn call(addr: SocketAddr, path: &str, body: Bytes) -> (i32, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap();
    let exchange = async {
        let resp = send.send_request(req).await.expect("a response");
        assert_eq!(resp.status(), http::StatusCode::OK);
        let status = |h: &http::HeaderMap| {
            h.get("grpc-status").map(|s| {
                (
                    s.to_str().unwrap().parse::<i32>().unwrap(),
                    h.get("grpc-message")
                        .map(|m| percent_decode(m.as_bytes()))
                        .unwrap_or_default(),
                )
            })
        };
        if let Some(s) = status(resp.headers()) {
            return s;
        }
        let body = resp.into_body().collect().await.expect("a body");
        body.trailers()
            .and_then(status)
            .expect("grpc-status in trailers")
    };
    tokio::time::timeout(Duration::from_secs(120), exchange)
        .await
        .expect("an answer within 120 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amplification_requests_stay_within_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), dir.path(), 0, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = server.addr.parse().unwrap();
    let pid = server.pid();

    // Warm up, so the baseline includes served calls on every runtime
    // thread: each thread's first allocations (its allocator heap, buffers)
    // raise the RSS by a few MiB once, whichever request happens to land on
    // it first. Concurrent normal publishes, and small refused batches
    // through the same raw path as the floods below.
    let mut client = PublisherClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    crate::support::publish(&mut client, crate::support::pick("", "SO-WARM")).await;
    let mut warm = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mut client = client.clone();
        warm.spawn(async move {
            crate::support::publish(
                &mut client,
                crate::support::pick("", &format!("SO-WARM-{i}")),
            )
            .await;
        });
        warm.spawn(async move {
            let (code, _) = call(addr, BATCH, empty_events(1_000)).await;
            assert_ne!(code, tonic::Code::Ok as i32);
        });
    }
    while let Some(done) = warm.join_next().await {
        done.unwrap();
    }
    let baseline = vm_hwm(pid);

    let check = |what: &str, sent: usize| {
        let peak = vm_hwm(pid);
        let bound = baseline + 4 * sent;
        eprintln!(
            "{what}: peak RSS {} KiB, baseline {} KiB, bound {} KiB",
            peak / 1024,
            baseline / 1024,
            bound / 1024
        );
        assert!(
            peak <= bound,
            "{what}: peak RSS {} MiB over the bound {} MiB (baseline {} MiB + 4 x {} MiB sent)",
            peak / MIB,
            bound / MIB,
            baseline / MIB,
            sent / MIB
        );
    };

    // Smallest first: on a broker that decodes before counting, this one
    // alone passes the bound by far (1.3 GB), and the larger ones are
    // never sent.
    let two = empty_events(MIB - 8);
    let sent = two.len();
    let (code, msg) = call(addr, BATCH, two).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{msg}");
    assert!(msg.contains("max_batch_events"), "{msg}");
    check("2 MiB of empty events", sent);

    // 1 M attributes on one event (~13 MiB).
    let flood = attribute_flood(1_000_000);
    let sent = flood.len();
    assert!(sent > 12 * MIB && sent < 16 * MIB, "{sent}");
    let (code, msg) = call(addr, BATCH, flood).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{msg}");
    assert!(msg.contains("attributes"), "{msg}");
    check("1 M attributes", sent);

    // 8 M empty events: just under max_request_bytes (16 MiB).
    let sixteen = empty_events(8 * MIB - 16);
    let sent = sixteen.len();
    let (code, msg) = call(addr, BATCH, sixteen.clone()).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{msg}");
    assert!(msg.contains("max_batch_events"), "{msg}");
    check("16 MiB of empty events", sent);

    // Four at once, each on its own connection: all refused (by the count,
    // or by the in-flight budget), within baseline + 4x all bytes sent.
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(call(addr, BATCH, sixteen.clone())))
        .collect();
    for c in calls {
        let (code, msg) = c.await.unwrap();
        assert!(
            code == tonic::Code::InvalidArgument as i32
                || code == tonic::Code::ResourceExhausted as i32,
            "{code} {msg}"
        );
    }
    check("four 16 MiB requests at once", 4 * sent);

    // Still serving.
    let offset = crate::support::publish(&mut client, crate::support::pick("", "SO-AFTER")).await;
    assert!(offset >= 2);
    let got = client
        .publish(pb::PublishRequest {
            event: Some(crate::support::pick("", "SO-AFTER-2")),
        })
        .await
        .expect("a normal publish after the floods");
    assert!(got.into_inner().offset > offset);
    server.kill();
}

#[tokio::test]
async fn unary_requests_are_sized_per_method() {
    let server = crate::support::TestServer::start().await;
    // GetEvent needs a few bytes; 1 MiB of padding in an unknown field is
    // refused by its length prefix, before it is buffered or decoded.
    let mut msg = pb::GetEventRequest {
        offset: 1,
        ..Default::default()
    }
    .encode_to_vec();
    msg.push(0x7a); // field 15, length-delimited
    prost::encoding::encode_varint(MIB as u64, &mut msg);
    msg.extend(std::iter::repeat_n(0u8, MIB));
    let (code, text) = call(
        server.addr,
        "/stevedore.v1.Subscriber/GetEvent",
        frame(&msg).into(),
    )
    .await;
    assert_eq!(code, tonic::Code::OutOfRange as i32, "{text}");
    assert!(text.contains("message length too large"), "{text}");
}
