//! The stack: signing, the in-process retry, the deadline, and the whole
//! chain over a `tower_test` mock receiver under paused time.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{retry::Policy, Layer};
use tower_test::mock::{self, Handle, Spawn};

use super::{
    super::{egress, signing::Secret},
    layers::SignedRequest,
    *,
};

fn request() -> WebhookRequest {
    WebhookRequest::for_test()
}

#[tokio::test]
async fn only_connect_failures_are_retried_in_process() {
    let mut req = request();
    let mut policy = ConnectRetry::default();
    let mut refused = Err(SendError::connect("refused"));
    assert!(policy.retry(&mut req, &mut refused).is_some());
    let mut policy = ConnectRetry::default();
    let addr = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut blocked = Err(SendError::Blocked(egress::Blocked {
        addr,
        host: None,
        block: egress::Guard::default().check(addr).unwrap(),
    }));
    assert!(policy.retry(&mut req, &mut blocked).is_none());
}

/// The receiver's check, written out from the Standard Webhooks spec
/// rather than through `Secret::sign`: the key is the base64 after
/// `whsec_`, the MAC covers `{webhook-id}.{webhook-timestamp}.{body}`
/// with the values the request carries.
fn expected_signature(secret: &Secret, msg_id: &str, timestamp: &str, body: &[u8]) -> String {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use hmac::{Hmac, Mac};
    let revealed = secret.reveal();
    let key = STANDARD
        .decode(revealed.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn each_try_is_signed_over_its_id_timestamp_and_body() {
    let (current, previous, expired) = (Secret::generate(), Secret::generate(), Secret::generate());
    let mut req = request();
    req.msg_id = "evt-42".into();
    req.body = Bytes::from_static(br#"{"tenantId":"T1","lines":[{"lineNumber":1}]}"#);
    req.headers = base_headers("pick.confirmed", "evt-42", &[]);
    let until = SystemTime::now() + Duration::from_secs(3600);
    let keys = |previous: Option<(Secret, SystemTime)>| {
        Arc::new(RwLock::new(Keys {
            current: current.clone(),
            previous,
        }))
    };

    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    req.keys = keys(Some((previous.clone(), until)));
    let signed = sign(req.clone());
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = signed.http.headers().clone();
    assert_eq!(h[WEBHOOK_ID], "evt-42");
    assert_eq!(h[EVENT_HEADER], "pick.confirmed");
    assert_eq!(h[EVENT_ID_HEADER], "evt-42");
    assert_eq!(h[header::USER_AGENT], USER_AGENT);
    let timestamp = h[WEBHOOK_TIMESTAMP].to_str().unwrap().to_owned();
    let secs: u64 = timestamp.parse().unwrap();
    assert!(
        (before..=after).contains(&secs),
        "webhook-timestamp {secs} is not the signing time ({before}..={after})"
    );
    let body = signed.http.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, req.body, "the signed bytes are the sent bytes");
    let signatures: Vec<&str> = h[WEBHOOK_SIGNATURE].to_str().unwrap().split(' ').collect();
    assert_eq!(
        signatures,
        [
            expected_signature(&current, "evt-42", &timestamp, &body),
            expected_signature(&previous, "evt-42", &timestamp, &body),
        ],
        "one signature per active secret, the current one first"
    );

    // Once the previous secret has expired, only the current one signs.
    req.keys = keys(Some((expired, SystemTime::now() - Duration::from_secs(1))));
    let signed = sign(req.clone());
    let h = signed.http.headers();
    let timestamp = h[WEBHOOK_TIMESTAMP].to_str().unwrap();
    assert_eq!(
        h[WEBHOOK_SIGNATURE],
        expected_signature(&current, "evt-42", timestamp, &req.body).as_str()
    );
}

#[test]
fn keys_and_requests_debug_without_secrets() {
    let current = Secret::generate();
    let previous = Secret::generate();
    let keys = Keys {
        current: current.clone(),
        previous: Some((previous.clone(), SystemTime::now())),
    };
    let mut req = request();
    req.keys = Arc::new(RwLock::new(keys.clone()));
    let mut value = HeaderValue::from_static("header-credential");
    value.set_sensitive(true);
    req.headers.insert("x-api-key", value);
    let shown = format!("{keys:?} {req:?}");
    for s in [&current, &previous] {
        let b64 = s.reveal();
        assert!(!shown.contains(&b64[SECRET_PREFIX_LEN..]), "{shown}");
    }
    assert!(!shown.contains("header-credential"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn user_agent_is_ours_unless_the_endpoint_sets_one() {
    let h = base_headers("t", "e", &[]);
    assert_eq!(
        h[header::USER_AGENT],
        concat!("stevedore/", env!("CARGO_PKG_VERSION"))
    );
    let custom = [(header::USER_AGENT, HeaderValue::from_static("acme-erp/2"))];
    let h = base_headers("t", "e", &custom);
    let all: Vec<_> = h.get_all(header::USER_AGENT).iter().collect();
    assert_eq!(all, ["acme-erp/2"]);
}

const SECRET_PREFIX_LEN: usize = super::super::signing::SECRET_PREFIX.len();

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Wire = Request<Full<Bytes>>;

/// A mock's error back as the `SendError` the test sent.
fn unbox(e: BoxError) -> SendError {
    match e.downcast::<SendError>() {
        Ok(e) => *e,
        Err(e) => SendError::transport(e),
    }
}

type MockWire = tower::util::MapErr<mock::Mock<Wire, WebhookResponse>, fn(BoxError) -> SendError>;

/// A mock receiver behind the wire, with `SendError` errors.
fn wire() -> (MockWire, Handle<Wire, WebhookResponse>) {
    let (service, handle) = mock::pair();
    (
        ServiceBuilder::new()
            .map_err(unbox as fn(BoxError) -> SendError)
            .service(service),
        handle,
    )
}

fn ok(status: u16) -> WebhookResponse {
    WebhookResponse {
        status: http::StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body_excerpt: String::new(),
    }
}

/// The signing step over a mock: what reaches the wire carries the
/// Standard Webhooks headers, its signature verifies over the timestamp
/// it carries, and readiness is the wire's.
#[tokio::test(start_paused = true)]
async fn the_signing_layer_signs_what_reaches_the_wire() {
    let (inner, mut handle) = wire();
    let mut req = request();
    req.msg_id = "evt-7".into();
    req.body = Bytes::from_static(b"{\"a\":1}");
    let current = req.keys.read().unwrap().current.clone();
    let mut svc = Spawn::new(
        ServiceBuilder::new()
            .map_request(sign)
            .layer(layers::DeadlineLayer)
            .service(inner),
    );
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let call = tokio::spawn(svc.call(req.clone()));
    let (sent, reply) = handle.next_request().await.unwrap();
    let h = sent.headers().clone();
    assert_eq!(h[WEBHOOK_ID], "evt-7");
    let timestamp = h[WEBHOOK_TIMESTAMP].to_str().unwrap().to_owned();
    let body = sent.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, req.body);
    assert_eq!(
        h[WEBHOOK_SIGNATURE],
        expected_signature(&current, "evt-7", &timestamp, &body).as_str()
    );
    reply.send_response(ok(204));
    assert_eq!(call.await.unwrap().unwrap().status, 204);
}

/// The deadline over a mock: a receiver that never answers fails the try
/// at exactly its own timeout; one that answers in time is passed on.
#[tokio::test(start_paused = true)]
async fn the_deadline_is_each_requests_own() {
    let (inner, mut handle) = wire();
    let mut svc = Spawn::new(layers::DeadlineLayer.layer(inner));
    let signed = |secs| SignedRequest {
        http: Request::post("https://example.com/hook")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        timeout: Duration::from_secs(secs),
    };
    let start = Instant::now();
    assert!(svc.poll_ready().is_ready());
    let slow = tokio::spawn(svc.call(signed(3)));
    let (_, silent) = handle.next_request().await.unwrap();
    let err = slow.await.unwrap().unwrap_err();
    assert!(
        matches!(err, SendError::Timeout(d) if d == Duration::from_secs(3)),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    drop(silent);

    assert!(svc.poll_ready().is_ready());
    let quick = tokio::spawn(svc.call(signed(3)));
    let (_, reply) = handle.next_request().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2999)).await;
    reply.send_response(ok(200));
    assert_eq!(quick.await.unwrap().unwrap().status, 200);
}

/// The whole stack over a mock wire: a refused connection is tried again
/// after 50 ms, then 250 ms, each try signed afresh; a third refusal is
/// the outcome; an SSRF block is not retried.
#[tokio::test(start_paused = true)]
async fn connect_failures_are_retried_at_50_and_250_ms() {
    let (inner, mut handle) = wire();
    let svc = build_over(inner, 4, None, None);
    let start = Instant::now();
    let call = tokio::spawn(send(svc.clone(), request()));
    let mut at = Vec::new();
    for _ in 0..3 {
        let (sent, reply) = handle.next_request().await.unwrap();
        assert!(sent.headers().contains_key(WEBHOOK_SIGNATURE));
        at.push(start.elapsed());
        reply.send_error(SendError::connect("connection refused"));
    }
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "connect: connection refused");
    assert_eq!(
        at,
        [
            Duration::ZERO,
            Duration::from_millis(50),
            Duration::from_millis(300)
        ]
    );

    let call = tokio::spawn(send(svc, request()));
    let (_, reply) = handle.next_request().await.unwrap();
    let addr = std::net::IpAddr::from([127, 0, 0, 1]);
    reply.send_error(SendError::Blocked(egress::Blocked {
        addr,
        host: None,
        block: egress::Guard::default().check(addr).unwrap(),
    }));
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, SendError::Blocked(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("blocked by SSRF guard: 127.0.0.1"),
        "{err}"
    );
}

/// The whole stack over a mock wire: the in-flight limit is outermost, so
/// a clone is not ready while the only slot is out, and a timeout (the
/// deadline below it) comes back to it as an overload signal.
#[tokio::test(start_paused = true)]
async fn the_limit_sees_the_deadline_and_holds_callers_in_poll_ready() {
    let (inner, mut handle) = wire();
    let svc = build_over(inner, 1, None, None);
    let mut first = Spawn::new(svc.clone());
    let mut second = Spawn::new(svc);
    assert!(first.poll_ready().is_ready());
    assert!(second.poll_ready().is_pending(), "one slot, taken");
    let start = Instant::now();
    let call = tokio::spawn(first.call(request()));
    let (_, silent) = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, SendError::Timeout(_)), "{err}");
    assert_eq!(start.elapsed(), request().timeout);
    drop(silent);
    assert!(second.is_woken());
    assert!(second.poll_ready().is_ready());
}
