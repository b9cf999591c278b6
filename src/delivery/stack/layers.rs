//! The stack's own small layers: signing each try, retrying a try that
//! never connected, and each request's own deadline.

use std::{
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;
use tower::{Layer, Service};

use super::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use crate::delivery::{
    request::{BoxFuture, SendError, WebhookRequest, WebhookResponse},
    signing::signature_header,
};

/// A signed request ready for the wire.
pub struct SignedRequest {
    /// The request as it goes on the wire.
    pub(super) http: Request<Full<Bytes>>,
    /// Its deadline.
    pub(super) timeout: Duration,
}

/// Signs one try: fresh `webhook-timestamp`, a signature per active key.
pub(super) fn sign(req: WebhookRequest) -> SignedRequest {
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
    // The request has no headers yet: the map is moved in, not copied.
    let mut headers = req.headers;
    headers.insert(
        WEBHOOK_ID,
        HeaderValue::from_str(&req.msg_id).expect("webhook ids are safe tokens"),
    );
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    headers.insert(
        WEBHOOK_SIGNATURE,
        HeaderValue::from_maybe_shared(Bytes::from(signature))
            .expect("base64 is a valid header value"),
    );
    *http.headers_mut() = headers;
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
pub(super) struct ConnectRetry {
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
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline(inner)
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone)]
pub(super) struct Deadline<S>(S);

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
