//! The delivery stack: one tower service per endpoint, built in [`build`].
//!
//! ```text
//! adaptive in-flight limit → rate limit → transport retry
//!   → OAuth2 bearer token (when the endpoint has oauth2) → sign
//!   → per-request timeout → hyper client
//! ```
//!
//! Why this order: the in-flight limit is outermost so an attempt waiting
//! for a slot has not started its clock, and it sees every final outcome
//! (to back off on 429/503/timeouts); the rate limit paces what the window
//! lets through, retries included; the in-process retry sits above
//! signing so every try is signed with its own `webhook-timestamp`; the
//! OAuth2 layer sits between them, so a request it sends again after a 401
//! is signed afresh, and a transport retry reuses the cached token; the
//! timeout wraps only the HTTP exchange (connect, send, read the response
//! excerpt). Whether an outcome is a success, a retry or a rejection is
//! decided afterwards by `classify`, not here.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::Full;
use tower::{util::BoxCloneSyncService, Service, ServiceBuilder, ServiceExt};

mod client;
mod layers;

pub use super::request::{Keys, SendError, SharedKeys, WebhookRequest, WebhookResponse};
use super::{
    limit::{AdaptiveLimitLayer, Rate, RateLimitLayer},
    oauth::{BearerLayer, Tokens},
    signing::event_id_header,
};
pub(super) use client::send_error;
use client::Sender;
pub use client::{http_client, BoundedConnector, HttpClient, Permitted};
use layers::{sign, ConnectRetry, DeadlineLayer};

/// `X-Jasci-Event`: the event type, as the WMS documents it.
pub const EVENT_HEADER: HeaderName = HeaderName::from_static("x-jasci-event");
/// Standard Webhooks message id, stable across attempts: the event id when
/// it is a safe token, else one derived from it (`signing::webhook_id`).
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Standard Webhooks attempt time, Unix seconds.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks signatures.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// `X-Stevedore-Event-Id`: the producer's event id, percent-encoded
/// (`signing::event_id_header`).
pub const EVENT_ID_HEADER: HeaderName = HeaderName::from_static("x-stevedore-event-id");
/// `User-Agent` of every request unless the endpoint sets its own.
pub const USER_AGENT: &str = concat!("stevedore/", env!("CARGO_PKG_VERSION"));
/// Bytes of a response body kept for the attempt record.
pub const RESPONSE_EXCERPT_BYTES: usize = 4096;

/// The stack's type.
pub type DeliveryService = BoxCloneSyncService<WebhookRequest, WebhookResponse, SendError>;

/// Builds an endpoint's stack over `client`: at most `max_in_flight`
/// requests at once (fewer while the receiver signals overload), paced by
/// `rate` when set, carrying a bearer token from `oauth` when set.
pub fn build(
    client: HttpClient,
    max_in_flight: u32,
    rate: Option<Rate>,
    oauth: Option<Arc<Tokens>>,
) -> DeliveryService {
    build_over(Sender(client), max_in_flight, rate, oauth)
}

/// The stack over `wire`, the service that sends a signed request (the
/// HTTP client; a mock in the tests). The order is explained at the top
/// of this module.
fn build_over<W>(
    wire: W,
    max_in_flight: u32,
    rate: Option<Rate>,
    oauth: Option<Arc<Tokens>>,
) -> DeliveryService
where
    W: Service<Request<Full<Bytes>>, Response = WebhookResponse, Error = SendError>
        + Clone
        + Send
        + Sync
        + 'static,
    W::Future: Send + 'static,
{
    ServiceBuilder::new()
        .layer(BoxCloneSyncService::layer())
        .layer(AdaptiveLimitLayer::new(max_in_flight))
        .option_layer(rate.map(RateLimitLayer::new))
        .retry(ConnectRetry::default())
        .option_layer(oauth.map(BearerLayer::new))
        .map_request(sign)
        .layer(DeadlineLayer)
        .service(wire)
}

/// Sends one request through `service`: waits until it is ready (a
/// concurrency slot, a rate token), then calls it.
pub async fn send(
    service: DeliveryService,
    req: WebhookRequest,
) -> Result<WebhookResponse, SendError> {
    service.oneshot(req).await
}

/// The fixed headers of every request: the endpoint's own, content type,
/// event type, the producer's event id, and `User-Agent: stevedore/<version>`
/// unless the endpoint sets its own `User-Agent` (some WAF rule sets block
/// requests without one).
pub fn base_headers(
    event_type: &str,
    event_id: &str,
    custom: &[(HeaderName, HeaderValue)],
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(custom.len() + 4);
    for (k, v) in custom {
        h.append(k.clone(), v.clone());
    }
    if !h.contains_key(header::USER_AGENT) {
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    }
    h.insert(
        EVENT_ID_HEADER,
        HeaderValue::from_str(&event_id_header(event_id))
            .expect("a percent-encoded id is a valid header value"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        EVENT_HEADER,
        HeaderValue::from_str(event_type).expect("event type names are header-safe"),
    );
    h
}

#[cfg(test)]
mod tests;
