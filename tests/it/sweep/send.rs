//! Sending one case over raw HTTP/2 and judging what came back.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::case::{Case, Http, Outcome};
use crate::support::percent_decode;

/// One HTTP/2 connection to the broker.
pub(super) type Sender = SendRequest<Full<Bytes>>;

/// An HTTP/2 connection to `addr`, driven by its own task.
pub(super) async fn connect(addr: SocketAddr) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub(super) async fn send(sender: &mut Sender, addr: SocketAddr, case: &Case) -> Outcome {
    let mut req = Request::builder()
        .method(case.method.clone())
        .uri(format!("http://{addr}{}", case.path))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in &case.headers {
        req.headers_mut().unwrap().insert(k.clone(), v.clone());
    }
    let req = req.body(Full::new(case.body.clone())).unwrap();
    let exchange = async {
        sender.ready().await.map_err(|e| format!("ready: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e:?}"))?;
        let status = resp.status();
        let grpc_status = |h: &http::HeaderMap| {
            h.get("grpc-status").map(|s| {
                let code = s.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
                let msg = h
                    .get("grpc-message")
                    .map(|m| percent_decode(m.as_bytes()))
                    .unwrap_or_default();
                Outcome::Status(code, msg)
            })
        };
        if status != http::StatusCode::OK {
            return Ok(Outcome::Http(status.as_u16()));
        }
        if let Some(o) = grpc_status(resp.headers()) {
            return Ok(o);
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(body
            .trailers()
            .and_then(grpc_status)
            .unwrap_or(Outcome::Status(-1, "no grpc-status in trailers".into())))
    };
    match tokio::time::timeout(Duration::from_secs(20), exchange).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Transport(e),
        Err(_) => Outcome::Transport("timed out".into()),
    }
}

/// Why an outcome is not acceptable for a case, if it is not.
pub(super) fn judge(case: &Case, outcome: &Outcome) -> Option<String> {
    if let (Some((code, words)), Outcome::Status(got, m)) = (case.refusal, outcome) {
        if *got != code || !m.contains(words) {
            return Some(format!(
                "expected grpc-status {code} with {words:?} (refused before decoding), got {got} {m}"
            ));
        }
    }
    match outcome {
        Outcome::Status(0, _) if case.may_succeed => None,
        Outcome::Status(0, _) => Some("a state-changing call succeeded".into()),
        // tonic answers INTERNAL for bytes it cannot decode or frame
        // ("Unexpected EOF decoding stream", "failed to decode Protobuf
        // message"), as grpc-java does; the broker's own INTERNAL (a storage
        // or corruption error) must never come from bad input.
        Outcome::Status(13, m) if m.contains("broker's log") => {
            Some(format!("the broker failed inside: {m}"))
        }
        Outcome::Status(1..=16, _) => None,
        Outcome::Status(code, m) => Some(format!("not a gRPC status code: {code} {m}")),
        Outcome::Http(431) if case.http == Http::OversizeHeaders => None,
        Outcome::Transport(e) if case.http == Http::OversizeHeaders && e.contains("send") => None,
        Outcome::Http(s) => Some(format!("HTTP {s} without a gRPC status")),
        Outcome::Transport(e) => Some(format!("transport error: {e}")),
    }
}
