//! The delivery stack's OAuth2 layer: every try carries
//! `Authorization: Bearer <token>`; a 401 from the receiver drops that
//! token, fetches a new one and sends the request once more with it (a
//! second 401 is the attempt's outcome, classified like any other status).
//!
//! It sits below the transport retry and above signing (see
//! `stack::build`), so each request it sends is signed afresh; the bearer
//! header is not part of the Standard Webhooks signature, which stays as
//! it is. A token endpoint that fails fails the try with
//! [`SendError::Token`] before anything is sent to the receiver.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{header::AUTHORIZATION, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::Tokens;
use crate::delivery::request::{BoxFuture, SendError, WebhookRequest, WebhookResponse};

/// Adds an endpoint's bearer token to its requests.
#[derive(Clone)]
pub struct BearerLayer(Arc<Tokens>);

impl BearerLayer {
    /// With the endpoint's tokens.
    pub fn new(tokens: Arc<Tokens>) -> Self {
        Self(tokens)
    }
}

impl<S> Layer<S> for BearerLayer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Bearer<S> {
        Bearer {
            inner,
            tokens: self.0.clone(),
        }
    }
}

/// See [`BearerLayer`].
#[derive(Clone)]
pub struct Bearer<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

impl<S> Service<WebhookRequest> for Bearer<S>
where
    S: Service<WebhookRequest, Response = WebhookResponse, Error = SendError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = WebhookResponse;
    type Error = SendError;
    type Future = BoxFuture<Result<WebhookResponse, SendError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: WebhookRequest) -> Self::Future {
        // The readied inner service is taken; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            let bearer = tokens.bearer(req.timeout).await.map_err(SendError::Token)?;
            let mut first = req.clone();
            first.headers.insert(AUTHORIZATION, bearer.clone());
            let result = inner.call(first).await;
            if !matches!(&result, Ok(r) if r.status == StatusCode::UNAUTHORIZED) {
                return result;
            }
            tracing::debug!("the receiver answered 401: fetching a new OAuth2 token");
            tokens.invalidate(&bearer).await;
            let bearer = tokens.bearer(req.timeout).await.map_err(SendError::Token)?;
            let mut again = req;
            again.headers.insert(AUTHORIZATION, bearer);
            inner.ready().await?.call(again).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    use http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::delivery::oauth::token::Fetched;

    /// Tokens `Bearer t1`, `Bearer t2`, ... one per fetch; `fail` makes
    /// fetches fail.
    fn tokens(fetches: Arc<AtomicUsize>, fail: bool) -> Arc<Tokens> {
        Arc::new(Tokens::with_fetch(move || {
            let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                if fail {
                    return Err("503 Service Unavailable from the token endpoint".into());
                }
                Ok(Fetched {
                    bearer: HeaderValue::from_str(&format!("Bearer t{n}")).unwrap(),
                    expires_in: Some(3600),
                })
            })
        }))
    }

    fn request() -> WebhookRequest {
        WebhookRequest::for_test()
    }

    /// A receiver that accepts only the `accepted` tokens, recording the
    /// `Authorization` of every request.
    fn receiver(
        accepted: &'static [&'static str],
        seen: Arc<Mutex<Vec<String>>>,
    ) -> impl Service<
        WebhookRequest,
        Response = WebhookResponse,
        Error = SendError,
        Future = impl std::future::Future<Output = Result<WebhookResponse, SendError>> + Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |req: WebhookRequest| {
            let seen = seen.clone();
            async move {
                let auth = req.headers[AUTHORIZATION].to_str().unwrap().to_owned();
                let status = if accepted.contains(&auth.as_str()) {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                seen.lock().unwrap().push(auth);
                Ok(WebhookResponse {
                    status,
                    headers: HeaderMap::new(),
                    body_excerpt: String::new(),
                })
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_refetches_and_retries_once() {
        let fetches = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let layer = BearerLayer::new(tokens(fetches.clone(), false));
        let mut svc = layer.layer(receiver(&["Bearer t2"], seen.clone()));
        let r = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let r = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            *seen.lock().unwrap(),
            ["Bearer t1", "Bearer t2", "Bearer t2"],
            "refused once, then the new token, kept for the next request"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        // Refused with the new token too: the second 401 is the outcome.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut svc = layer.layer(receiver(&[], seen.clone()));
        let r = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(*seen.lock().unwrap(), ["Bearer t2", "Bearer t3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_token_no_request() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut svc = BearerLayer::new(tokens(Arc::default(), true))
            .layer(receiver(&["Bearer t1"], seen.clone()));
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "oauth2 token: 503 Service Unavailable from the token endpoint"
        );
        assert!(seen.lock().unwrap().is_empty());
    }
}
