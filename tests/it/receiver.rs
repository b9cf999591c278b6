//! The test receiver's own signature verifier, checked against the
//! Standard Webhooks reference vector (the receiver is in
//! `support/receiver.rs`, the verifier in `support/signatures.rs`).

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use crate::support::{sign, signatures, verify_signature, Recorded, HOOK_PATH};

/// The verifier itself, on the Standard Webhooks reference vector.
#[test]
fn verifier_matches_the_standard_webhooks_reference_vector() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(sign(SECRET, ID, TS, BODY.as_bytes()).unwrap(), SIG);

    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_static(ID));
    headers.insert("webhook-timestamp", HeaderValue::from_static(TS));
    let other = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let rotated = format!("{other} {SIG}");
    headers.insert(
        "webhook-signature",
        HeaderValue::from_str(&rotated).unwrap(),
    );
    let mut r = Recorded {
        method: Method::POST,
        path: HOOK_PATH.to_owned(),
        headers,
        body: Bytes::from_static(BODY.as_bytes()),
        received_at: Instant::now(),
        version: http::Version::HTTP_11,
        connection: 1,
    };
    assert_eq!(signatures(&r), [other, SIG]);
    verify_signature(SECRET, &r).unwrap();
    r.body = Bytes::from_static(br#"{"test": 2432232315}"#);
    let err = verify_signature(SECRET, &r).unwrap_err();
    assert!(err.starts_with("no signature matches"), "{err}");
}
