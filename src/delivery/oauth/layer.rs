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
            let bearer = tokens.bearer(req.timeout).await.map_err(SendError::token)?;
            let mut first = req.clone();
            first.headers.insert(AUTHORIZATION, bearer.clone());
            let result = inner.call(first).await;
            if !matches!(&result, Ok(r) if r.status == StatusCode::UNAUTHORIZED) {
                return result;
            }
            tracing::debug!("the receiver answered 401: fetching a new OAuth2 token");
            tokens.invalidate(&bearer).await;
            let bearer = tokens.bearer(req.timeout).await.map_err(SendError::token)?;
            let mut again = req;
            again.headers.insert(AUTHORIZATION, bearer);
            inner.ready().await?.call(again).await
        })
    }
}

#[cfg(test)]
mod tests;
