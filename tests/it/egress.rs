//! The SSRF guard with the test allowlist turned off: loopback receivers
//! are then exactly what the guard must refuse. Every blocked address here
//! is on this machine (loopback) or is rejected before any connection is
//! made (private and metadata literals), so no test sends traffic off it.
//! Redirects (never followed) are tested in webhook.rs.

use std::{sync::Arc, time::Duration};

use stevedore::pb::{
    CreateEndpointRequest, DeliveryState, Endpoint, ListEndpointsRequest, SendTestEventRequest,
    UpdateEndpointRequest,
};

use crate::support::{
    assert_invalid, attempts, create, endpoint, pick, publish, wait_state, Receiver, TestServer,
    HOOK_PATH,
};

/// A broker whose guard exempts nothing.
async fn guarded(dir: Arc<tempfile::TempDir>) -> TestServer {
    TestServer::start_with(dir, |c| c.allow_networks.clear()).await
}

/// Asserts every attempt of the delivery at `offset` was blocked with a
/// message containing `want`.
async fn assert_blocked(server: &TestServer, id: &str, offset: u64, want: &str) {
    let mut admin = server.admin().await;
    // Polls until `offset` is dead. (An earlier delivery can be dead too: one
    // delivered but not yet acked when a test restarted the broker is sent
    // again, at least once, and blocked.)
    let mut n = 1;
    while !wait_state(&mut admin, id, DeliveryState::Dead, n)
        .await
        .iter()
        .any(|d| d.offset == offset)
    {
        n += 1;
    }
    let a = attempts(&mut admin, id, offset).await;
    assert_eq!(a.len(), 3, "one attempt per scheduled try: {a:?}");
    for attempt in &a {
        assert_eq!(attempt.status, 0);
        assert!(
            attempt.error.starts_with("blocked by SSRF guard: ") && attempt.error.contains(want),
            "{attempt:?}"
        );
    }
}

#[tokio::test]
async fn a_hostname_that_resolves_to_loopback_is_blocked() {
    let server = guarded(Arc::new(tempfile::tempdir().unwrap())).await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    // Host names pass at create: what they resolve to is checked on connect.
    let url = format!("http://localhost:{}{HOOK_PATH}", rx.addr.port());
    let (ep, _) = create(&mut admin, endpoint(&url)).await;
    let offset = publish(&mut server.publisher().await, pick("lh-1", "SO")).await;
    assert_blocked(
        &server,
        &ep.id,
        offset,
        "(resolved from localhost) is loopback",
    )
    .await;

    let test = admin
        .send_test_event(SendTestEventRequest {
            endpoint_id: ep.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!test.delivered);
    assert!(
        test.attempt
            .unwrap()
            .error
            .contains("blocked by SSRF guard"),
        "SendTestEvent goes through the guard too"
    );
    assert!(rx.requests().is_empty(), "nothing reached the receiver");
}

#[tokio::test]
async fn blocked_ip_literals_are_rejected_at_create_and_update() {
    let server = guarded(Arc::new(tempfile::tempdir().unwrap())).await;
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    let mut admin = server.admin().await;
    for (url, range) in [
        (rx.url.clone(), "127.0.0.0/8"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
            "127.0.0.0/8",
        ),
        (format!("http://[::1]:{port}/hook"), "::1/128"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "169.254.169.254/32",
        ),
        ("https://10.0.0.1/hook".to_string(), "10.0.0.0/8"),
    ] {
        let err = admin
            .create_endpoint(CreateEndpointRequest {
                endpoint: Some(endpoint(&url)),
            })
            .await
            .unwrap_err();
        let message = err.message().to_string();
        assert_invalid(err, "endpoint.url");
        // Every refusal names the range; only the metadata service is
        // never offered the allow_networks way out.
        let metadata = range == "169.254.169.254/32";
        assert!(
            message.contains(range) && message.contains("allow_networks") != metadata,
            "{url}: {message}"
        );
    }
    let listed = admin
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty(), "nothing stored: {listed:?}");

    // An update to a blocked literal is refused and changes nothing.
    let (ep, _) = create(&mut admin, endpoint("https://example.com/hook")).await;
    let err = admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: ep.id.clone(),
                url: "https://10.0.0.1/hook".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(err, "endpoint.url");
    let listed = admin
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.endpoints[0].url, "https://example.com/hook");
}

#[tokio::test]
async fn loopback_is_delivered_with_the_allowlist_and_blocked_on_connect_without_it() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let server = TestServer::start_with(dir.clone(), |c| {
        c.allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (literal, _) = create(&mut admin, endpoint(&rx.url)).await;
    let mapped_url = format!("http://[::ffff:127.0.0.1]:{}/mapped", rx.addr.port());
    let (mapped, _) = create(&mut admin, endpoint(&mapped_url)).await;
    let first = publish(&mut server.publisher().await, pick("al-1", "SO")).await;
    wait_state(&mut admin, &literal.id, DeliveryState::Delivered, 1).await;
    wait_state(&mut admin, &mapped.id, DeliveryState::Delivered, 1).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert!(
        got.iter().any(|r| r.path == "/mapped"),
        "the mapped form too"
    );

    // The same endpoints after the allowlist is removed: they load (a
    // stored endpoint never stops the broker from starting), and every
    // connection to them is refused, literals included.
    drop(admin);
    let dir = server.stop().await;
    let server = guarded(dir).await;
    let offset = publish(&mut server.publisher().await, pick("al-2", "SO")).await;
    assert!(offset > first);
    assert_blocked(
        &server,
        &literal.id,
        offset,
        "127.0.0.1 is loopback in 127.0.0.0/8",
    )
    .await;
    assert_blocked(
        &server,
        &mapped.id,
        offset,
        "::ffff:127.0.0.1 is loopback in 127.0.0.0/8 (IPv4-mapped 127.0.0.1)",
    )
    .await;
    assert_eq!(rx.count(), 2, "nothing more reached the receiver");
}
