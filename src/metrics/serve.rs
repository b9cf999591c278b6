//! The metrics listener: `GET /metrics` answers the text exposition of
//! [`Metrics::render`] with the gauges of a fresh [`Snapshot`].

use std::sync::Arc;

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tokio_util::sync::CancellationToken;

use super::{Metrics, Snapshot, SnapshotError};

/// Serves `GET /metrics` on `listener` until `shutdown`, with gauges from
/// `snapshot` (called once per scrape; an error answers 500 and is logged).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    snapshot: impl Fn() -> Result<Snapshot, SnapshotError> + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let snapshot = Arc::new(snapshot);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let snapshot = snapshot.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let snapshot = snapshot.clone();
                async move {
                    let response = if req.uri().path() != "/metrics" {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                    } else {
                        match snapshot() {
                            Ok(s) => Response::builder()
                                .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                                .body(Full::new(Bytes::from(metrics.render(&s)))),
                            Err(e) => {
                                tracing::error!(error = %e, "metrics snapshot failed");
                                Response::builder()
                                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                                    .body(Full::new(Bytes::from_static(b"snapshot failed\n")))
                            }
                        }
                    };
                    Ok::<_, std::convert::Infallible>(
                        response.expect("static response parts are valid"),
                    )
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}
