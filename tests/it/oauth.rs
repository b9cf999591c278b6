//! OAuth2 client credentials per endpoint (#19): a local token endpoint
//! that checks the client's Basic authentication and the grant, and a
//! receiver that accepts only tokens it issued. The token is fetched once
//! and cached, fetched again after expiry and after a 401 (the request is
//! retried once), token endpoint failures are attempt errors retried on
//! the schedule, the secret is never shown, logged or stored in clear, and
//! bad settings are INVALID_ARGUMENT naming the field.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use stevedore::pb::{
    self, admin_client::AdminClient, endpoint::Start, subscribe_request, CreateEndpointRequest,
    DeliveryState, Endpoint, ListEndpointsRequest, SubscribeRequest, UpdateEndpointRequest,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::support::{
    assert_invalid, attempts, create, get_endpoint, ms, next_within,
    oauth_partner::{Partner, CLIENT_ID, CLIENT_SECRET, SCOPES, TOKEN_SUFFIX},
    pick, publish, verify_signature, wait_state, TestServer,
};

/// Ten events waiting before the endpoint exists; created from the
/// earliest with no ordering, its first deliveries start together, while
/// the token endpoint takes its time: they share one fetch, and every
/// later delivery reuses the token.
#[tokio::test]
async fn the_token_is_fetched_once_and_cached() {
    let partner = Partner::start().await;
    partner.s.token_delay_ms.store(300, Ordering::SeqCst);
    let server = TestServer::start().await;
    let mut publisher = server.publisher().await;
    for i in 0..10 {
        publish(&mut publisher, pick(&format!("oa-{i}"), &format!("SO-{i}"))).await;
    }
    let mut admin = server.admin().await;
    let mut e = partner.endpoint();
    e.start = Some(Start::StartEarliest(true));
    e.ordering = pb::Ordering::None as i32;
    e.max_in_flight = 10;
    let (ep, secret) = create(&mut admin, e).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 10).await;
    publish(&mut publisher, pick("oa-10", "SO-10")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 11).await;

    assert_eq!(partner.problems(), Vec::<String>::new());
    assert_eq!(partner.token_requests(), 1, "one fetch for every delivery");
    let hooks = partner.hooks();
    assert_eq!(hooks.len(), 11, "{hooks:?}");
    for (bearer, status, recorded) in &hooks {
        assert_eq!(
            (bearer.as_str(), *status),
            (format!("at-1-{TOKEN_SUFFIX}").as_str(), 200)
        );
        verify_signature(&secret, recorded).unwrap();
    }
}

/// A token that expires is fetched again: with `expires_in: 1` it is used
/// for half a second.
#[tokio::test]
async fn an_expired_token_is_fetched_again() {
    let partner = Partner::start().await;
    partner.s.expires_in.store(1, Ordering::SeqCst);
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, partner.endpoint()).await;
    let mut publisher = server.publisher().await;
    publish(&mut publisher, pick("exp-1", "SO-1")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    let issued = Instant::now();
    // What is tested is the clock: the token must have expired.
    tokio::time::sleep(Duration::from_millis(600).saturating_sub(issued.elapsed())).await;
    publish(&mut publisher, pick("exp-2", "SO-2")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 2).await;
    let bearers: Vec<String> = partner.hooks().into_iter().map(|h| h.0).collect();
    assert_eq!(
        bearers,
        [
            format!("at-1-{TOKEN_SUFFIX}"),
            format!("at-2-{TOKEN_SUFFIX}")
        ]
    );
    assert_eq!(partner.token_requests(), 2);
}

/// The receiver revokes the token: the 401 drops it, a new one is fetched
/// and the request sent again in the same attempt. A receiver that
/// refuses the new token too fails the attempt with its 401, retried on
/// the schedule like any failure (two requests per attempt).
#[tokio::test]
async fn a_401_fetches_a_new_token_and_retries_once() {
    let partner = Partner::start().await;
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let (ep, secret) = create(&mut admin, partner.endpoint()).await;
    let mut publisher = server.publisher().await;
    publish(&mut publisher, pick("rv-1", "SO-1")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;

    partner.revoke_all();
    let offset = publish(&mut publisher, pick("rv-2", "SO-2")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 2).await;
    let hooks = partner.hooks();
    let seen: Vec<(String, u16)> = hooks.iter().map(|h| (h.0.clone(), h.1)).collect();
    assert_eq!(
        seen,
        [
            (format!("at-1-{TOKEN_SUFFIX}"), 200),
            (format!("at-1-{TOKEN_SUFFIX}"), 401),
            (format!("at-2-{TOKEN_SUFFIX}"), 200),
        ]
    );
    verify_signature(&secret, &hooks[2].2).unwrap();
    let tries = attempts(&mut admin, &ep.id, offset).await;
    assert_eq!(tries.len(), 1, "one attempt: {tries:?}");
    assert_eq!(tries[0].status, 200);

    partner.s.refuse_all.store(true, Ordering::SeqCst);
    let offset = publish(&mut publisher, pick("rv-3", "SO-3")).await;
    let dead = wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    assert_eq!(dead[0].event_id, "rv-3");
    let tries = attempts(&mut admin, &ep.id, offset).await;
    assert_eq!(tries.len(), 3, "the schedule's three attempts: {tries:?}");
    for t in &tries {
        assert_eq!((t.status, t.error.as_str()), (401, "HTTP 401 Unauthorized"));
    }
    assert_eq!(partner.hooks().len(), 3 + 2 * 3, "two requests per attempt");
    assert_eq!(partner.token_requests(), 2 + 3);
    assert_eq!(partner.problems(), Vec::<String>::new());
}

/// A failing token endpoint fails the attempt before anything reaches the
/// receiver, with the token endpoint's status as the error; the delivery
/// is retried on its schedule and delivered once tokens come again.
#[tokio::test]
async fn token_endpoint_failures_are_attempt_errors_and_retried() {
    let partner = Partner::start().await;
    partner.s.token_failure.store(503, Ordering::SeqCst);
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut e = partner.endpoint();
    e.retry_schedule = vec![ms(0), ms(200), ms(200), ms(200), ms(200), ms(200)];
    let (ep, _) = create(&mut admin, e).await;
    let offset = publish(&mut server.publisher().await, pick("tf-1", "SO-1")).await;
    let first = loop {
        let tries = attempts(&mut admin, &ep.id, offset).await;
        if let Some(t) = tries.into_iter().next() {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.status, 0);
    assert_eq!(
        first.error,
        "oauth2 token: 503 Service Unavailable from the token endpoint (temporarily_unavailable)"
    );
    assert!(partner.hooks().is_empty(), "nothing sent without a token");

    partner.s.token_failure.store(0, Ordering::SeqCst);
    let delivered = wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    assert!(delivered[0].attempts >= 2, "{delivered:?}");
    assert_eq!(partner.hooks().len(), 1);
    assert_eq!(partner.problems(), Vec::<String>::new());

    // An unreachable token endpoint is a connect error of the attempt.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let mut e = partner.endpoint();
    e.oauth2.as_mut().unwrap().token_url = url;
    let (ep, _) = create(&mut admin, e).await;
    let offset = publish(&mut server.publisher().await, pick("tf-2", "SO-2")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    for t in attempts(&mut admin, &ep.id, offset).await {
        assert!(t.error.starts_with("oauth2 token: connect"), "{t:?}");
    }
}

fn contains_secret(text: &str) -> bool {
    let encoded: String = form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect();
    text.contains(CLIENT_SECRET) || text.contains(&encoded) || text.contains("s3cret-4e9a")
}

/// The secret is never returned (Get, List, Create and Update responses
/// show `client_secret_set`), nor in the broker's own events; an update
/// without it keeps it, one moving the token URL needs it again.
#[tokio::test]
async fn the_secret_is_never_returned_and_updates_keep_it() {
    let partner = Partner::start().await;
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.audit_events = true;
    })
    .await;
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, partner.endpoint()).await;
    let shown = ep.oauth2.clone().unwrap();
    assert_eq!(
        (
            shown.client_secret.as_str(),
            shown.client_secret_set,
            shown.client_id.as_str()
        ),
        ("", true, CLIENT_ID)
    );
    let got = get_endpoint(&mut admin, &ep.id).await;
    assert_eq!(got.oauth2, Some(shown.clone()));
    let listed = admin
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.endpoints[0].oauth2, Some(shown));
    assert!(!contains_secret(&format!("{listed:?} {got:?}")));

    // Scopes changed by sending the message back without the secret.
    let mut o = got.oauth2.clone().unwrap();
    o.scopes = SCOPES.map(String::from).to_vec();
    let updated = update(&mut admin, &ep.id, Some(o.clone()), &["oauth2"])
        .await
        .unwrap();
    assert!(updated.oauth2.as_ref().unwrap().client_secret_set);
    // A new token URL without the secret is refused and changes nothing.
    o.token_url = format!("{}/other-token", partner.base);
    let err = update(&mut admin, &ep.id, Some(o), &["oauth2.tokenUrl"])
        .await
        .unwrap_err();
    assert_invalid(err, "endpoint.oauth2.client_secret");
    assert_eq!(
        get_endpoint(&mut admin, &ep.id)
            .await
            .oauth2
            .unwrap()
            .token_url,
        partner.token_url()
    );
    // The kept secret still authenticates (the token endpoint checks it),
    // and the dead-lettered delivery's events carry no secret.
    partner.s.refuse_all.store(true, Ordering::SeqCst);
    publish(&mut server.publisher().await, pick("sec-1", "SO-1")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    assert_eq!(partner.problems(), Vec::<String>::new());
    assert!(partner.token_requests() >= 1);
    let mut subscriber = server.subscriber().await;
    let mut stream = subscriber
        .subscribe(SubscribeRequest {
            start: Some(subscribe_request::Start::Earliest(true)),
            event_types: vec![
                "stevedore.delivery.exhausted".into(),
                "stevedore.admin.changed".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while !seen.iter().any(|t| t == "stevedore.delivery.exhausted") {
        let read = next_within(&mut stream, 5).await;
        assert!(!contains_secret(&format!("{read:?}")), "{read:?}");
        seen.push(read.event_type);
    }
    assert!(
        seen.iter().any(|t| t == "stevedore.admin.changed"),
        "{seen:?}"
    );

    // Removing OAuth2.
    let updated = update(&mut admin, &ep.id, None, &["oauth2"]).await.unwrap();
    assert_eq!(updated.oauth2, None);
}

async fn update(
    admin: &mut AdminClient<Channel>,
    id: &str,
    oauth2: Option<pb::OAuth2>,
    paths: &[&str],
) -> Result<Endpoint, tonic::Status> {
    Ok(admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: id.into(),
                oauth2,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .endpoint
        .unwrap())
}

/// Each bad setting is INVALID_ARGUMENT naming its field, echoes no
/// secret, and stores nothing.
#[tokio::test]
async fn bad_oauth2_settings_are_refused_by_field() {
    let partner = Partner::start().await;
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.allow_http = false;
    })
    .await;
    let mut admin = server.admin().await;
    let https = |o: &mut pb::OAuth2| o.token_url = "https://auth.example.com/token".into();
    type Change = fn(&mut pb::OAuth2);
    let cases: [(Change, &str); 9] = [
        (|o| o.token_url.clear(), "endpoint.oauth2.token_url"),
        // http:// needs allow_http, like endpoint URLs.
        (|_| {}, "endpoint.oauth2.token_url"),
        (
            |o| o.token_url = "https://10.1.2.3/token".into(),
            "endpoint.oauth2.token_url",
        ),
        (
            |o| o.token_url = "https://169.254.169.254/token".into(),
            "endpoint.oauth2.token_url",
        ),
        (
            |o| o.token_url = "https://u:p@auth.example.com/t".into(),
            "endpoint.oauth2.token_url",
        ),
        (|o| o.client_id.clear(), "endpoint.oauth2.client_id"),
        (|o| o.client_secret.clear(), "endpoint.oauth2.client_secret"),
        (
            |o| o.client_secret = format!("{CLIENT_SECRET}\u{e9}"),
            "endpoint.oauth2.client_secret",
        ),
        (|o| o.scopes.push("a b".into()), "endpoint.oauth2.scopes[2]"),
    ];
    for (i, (change, field)) in cases.into_iter().enumerate() {
        let mut e = partner.endpoint();
        e.url = "https://hooks.example.com/h".into();
        let o = e.oauth2.as_mut().unwrap();
        if i != 1 {
            https(o);
        }
        change(o);
        let err = admin
            .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
            .await
            .unwrap_err();
        assert!(!contains_secret(err.message()), "{err:?}");
        assert_invalid(err, field);
    }
    // A custom Authorization header would be overwritten by the token.
    let mut e = partner.endpoint();
    e.url = "https://hooks.example.com/h".into();
    https(e.oauth2.as_mut().unwrap());
    e.headers
        .insert("Authorization".into(), "Bearer static".into());
    let err = admin
        .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
        .await
        .unwrap_err();
    assert_invalid(err, "endpoint.headers[\"authorization\"]");
    let listed = admin
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty(), "nothing stored: {listed:?}");
}

/// The real binary at TRACE with a master key, through a token fetch, a
/// 401 and refetch, a token endpoint failure, a test event and an update:
/// neither the secret nor any token in a log line, and the secret not in
/// clear in the stored records.
#[tokio::test]
async fn secrets_and_tokens_never_logged_nor_stored_in_clear() {
    use stevedore::pb::{publisher_client::PublisherClient, SendTestEventRequest};

    let partner = Partner::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    let master_key = BASE64.encode([5u8; 32]);
    let data = dir.path().join("data");
    let mut server = crate::support::start_server_with_env(
        &data,
        &logs_dir,
        1,
        &[
            ("STEVEDORE_LOG", "trace"),
            ("STEVEDORE_ALLOW_HTTP", "true"),
            ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
            ("STEVEDORE_MASTER_KEY", &master_key),
        ],
    )
    .await
    .unwrap();
    let channel = crate::support::connect(&server.addr).await.unwrap();
    let mut admin = AdminClient::new(channel.clone());
    let mut publisher = PublisherClient::new(channel);
    let (ep, _) = create(&mut admin, partner.endpoint()).await;
    publish(&mut publisher, pick("log-1", "SO-1")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    partner.revoke_all();
    publish(&mut publisher, pick("log-2", "SO-2")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 2).await;
    partner.revoke_all();
    partner.s.token_failure.store(400, Ordering::SeqCst);
    publish(&mut publisher, pick("log-3", "SO-3")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    partner.s.token_failure.store(0, Ordering::SeqCst);
    admin
        .send_test_event(SendTestEventRequest {
            endpoint_id: ep.id.clone(),
        })
        .await
        .unwrap();
    update(&mut admin, &ep.id, Some(partner.oauth2()), &["oauth2"])
        .await
        .unwrap();
    let listed = format!(
        "{:?}",
        admin
            .list_endpoints(ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert!(partner.token_requests() >= 4, "tokens were fetched");
    assert_eq!(partner.problems(), Vec::<String>::new());
    drop(admin);
    std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let logs = crate::support::read_stderr(&logs_dir, 1);
    assert!(
        logs.contains("endpoint updated") && logs.contains("TRACE"),
        "the capture works: {logs}"
    );
    let basic = BASE64.encode(format!(
        "{CLIENT_ID}:{}",
        form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
    ));
    for (what, text) in [("log", &logs), ("list", &listed)] {
        assert!(!contains_secret(text), "the secret in the {what}:\n{text}");
        assert!(
            !text.contains(&basic),
            "Basic credentials in the {what}:\n{text}"
        );
        assert!(
            !text.contains(TOKEN_SUFFIX),
            "a token in the {what}:\n{text}"
        );
    }
    let stored = crate::support::stored_records(&data);
    assert!(!stored.is_empty());
    for r in &stored {
        assert!(
            !crate::support::contains(r, CLIENT_SECRET.as_bytes()),
            "stored in clear"
        );
        assert!(
            crate::support::contains(r, CLIENT_ID.as_bytes()),
            "the id is readable"
        );
    }
}
