//! The OAuth2 layer over a receiver that checks tokens, and over a
//! `tower_test` mock under paused time.

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

mod over_a_mock {
    //! The layer over a `tower_test` mock receiver.

    use std::time::Duration;

    use tokio::time::Instant;
    use tower_test::mock::{self, Handle, Spawn};

    use super::*;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    fn unbox(e: BoxError) -> SendError {
        match e.downcast::<SendError>() {
            Ok(e) => *e,
            Err(e) => SendError::transport(e),
        }
    }

    type Receiver =
        tower::util::MapErr<mock::Mock<WebhookRequest, WebhookResponse>, fn(BoxError) -> SendError>;

    fn receiver() -> (Receiver, Handle<WebhookRequest, WebhookResponse>) {
        let (service, handle) = mock::pair();
        (
            tower::ServiceBuilder::new()
                .map_err(unbox as fn(BoxError) -> SendError)
                .service(service),
            handle,
        )
    }

    fn answer(status: StatusCode) -> WebhookResponse {
        WebhookResponse {
            status,
            headers: HeaderMap::new(),
            body_excerpt: String::new(),
        }
    }

    /// Readiness is the receiver's; a 401 sends the request once more with
    /// a new token, after the receiver is ready again; a transport error
    /// is passed on as it is, without a new token.
    #[tokio::test(start_paused = true)]
    async fn a_401_is_sent_again_with_a_new_token() {
        let fetches = Arc::new(AtomicUsize::new(0));
        let (inner, mut handle) = receiver();
        let mut svc = Spawn::new(BearerLayer::new(tokens(fetches.clone(), false)).layer(inner));
        handle.allow(0);
        assert!(svc.poll_ready().is_pending(), "the receiver is not ready");
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let call = tokio::spawn(svc.call(request()));
        let (first, reply) = handle.next_request().await.unwrap();
        assert_eq!(first.headers[AUTHORIZATION], "Bearer t1");
        reply.send_response(answer(StatusCode::UNAUTHORIZED));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!call.is_finished(), "the retry waits for the receiver");
        handle.allow(1);
        let (again, reply) = handle.next_request().await.unwrap();
        assert_eq!(again.headers[AUTHORIZATION], "Bearer t2");
        assert_eq!(again.body, first.body);
        reply.send_response(answer(StatusCode::OK));
        assert_eq!(call.await.unwrap().unwrap().status, StatusCode::OK);

        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let call = tokio::spawn(svc.call(request()));
        let (kept, reply) = handle.next_request().await.unwrap();
        assert_eq!(
            kept.headers[AUTHORIZATION], "Bearer t2",
            "the token is cached"
        );
        reply.send_error(SendError::transport("connection reset"));
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "transport: connection reset");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    /// A token endpoint that never answers fails the try after the
    /// request's own timeout, and nothing reaches the receiver.
    #[tokio::test(start_paused = true)]
    async fn a_silent_token_endpoint_fails_the_try_at_its_deadline() {
        let tokens = Arc::new(Tokens::with_fetch(|| {
            Box::pin(std::future::pending::<Result<Fetched, String>>())
        }));
        let (inner, mut handle) = receiver();
        let mut svc = Spawn::new(BearerLayer::new(tokens).layer(inner));
        assert!(svc.poll_ready().is_ready());
        let start = Instant::now();
        let err = svc.call(request()).await.unwrap_err();
        assert!(matches!(err, SendError::Token(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "oauth2 token: the token endpoint did not answer within 1s"
        );
        assert_eq!(start.elapsed(), request().timeout);
        drop(svc);
        assert!(handle.next_request().await.is_none(), "nothing was sent");
    }
}
