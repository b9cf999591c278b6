//! Authentication, roles, TLS and limits.

use std::{sync::Arc, time::Duration};

use stevedore::{
    auth::Role,
    config::Config,
    pb::{self, subscribe_request::Start, SubscribeRequest},
};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::support::{pick, test_tokens, Bearer, TestServer};

const ADMIN: &str = "admin-token-0123456789abcdef";
const PUBLISHER: &str = "publisher-token-0123456789abcdef";
const SUBSCRIBER: &str = "subscriber-token-0123456789abcdef";

fn tokens() -> Vec<(&'static str, Role, &'static str)> {
    vec![
        ("ops", Role::Admin, ADMIN),
        ("erp-feed", Role::Publisher, PUBLISHER),
        ("dashboard", Role::Subscriber, SUBSCRIBER),
    ]
}

/// The code of one call of each kind a service offers, made with `token`.
async fn call(server: &TestServer, service: &str, token: Option<&str>) -> Code {
    let code = |r: Result<(), Status>| r.err().map_or(Code::Ok, |s| s.code());
    match service {
        "Publisher.Publish" => {
            let mut c = server.publisher_as(token).await;
            code(
                c.publish(pb::PublishRequest {
                    event: Some(pick("", "SO-1")),
                })
                .await
                .map(drop),
            )
        }
        "Publisher.PublishStream" => {
            let mut c = server.publisher_as(token).await;
            let req = pb::PublishRequest {
                event: Some(pick("", "SO-2")),
            };
            code(
                match c.publish_stream(tokio_stream::iter(vec![req])).await {
                    Err(s) => Err(s),
                    Ok(r) => r.into_inner().next().await.unwrap().map(drop),
                },
            )
        }
        "Subscriber.GetEvent" => {
            let mut c = server.subscriber_as(token).await;
            code(
                c.get_event(pb::GetEventRequest {
                    offset: 1,
                    ..Default::default()
                })
                .await
                .map(drop),
            )
        }
        "Subscriber.Subscribe" => {
            let mut c = server.subscriber_as(token).await;
            code(
                c.subscribe(SubscribeRequest {
                    start: Some(Start::Earliest(true)),
                    ..Default::default()
                })
                .await
                .map(drop),
            )
        }
        "Admin.ListEndpoints" => {
            let mut c = server.admin_as(token).await;
            code(
                c.list_endpoints(pb::ListEndpointsRequest::default())
                    .await
                    .map(drop),
            )
        }
        other => unreachable!("{other}"),
    }
}

#[tokio::test]
async fn every_role_against_every_service() {
    let server = TestServer::start_secure(&tokens(), false).await;
    // Something for GetEvent to find.
    let mut p = server.publisher_as(Some(ADMIN)).await;
    p.publish(pb::PublishRequest {
        event: Some(pick("first", "SO")),
    })
    .await
    .unwrap();

    use Code::{Ok as Allowed, PermissionDenied as Denied, Unauthenticated as Unauth};
    let table: &[(&str, [Code; 5])] = &[
        // service                  none    wrong   admin    publisher subscriber
        (
            "Publisher.Publish",
            [Unauth, Unauth, Allowed, Allowed, Denied],
        ),
        (
            "Publisher.PublishStream",
            [Unauth, Unauth, Allowed, Allowed, Denied],
        ),
        (
            "Subscriber.GetEvent",
            [Unauth, Unauth, Allowed, Denied, Allowed],
        ),
        (
            "Subscriber.Subscribe",
            [Unauth, Unauth, Allowed, Denied, Allowed],
        ),
        (
            "Admin.ListEndpoints",
            [Unauth, Unauth, Allowed, Denied, Denied],
        ),
    ];
    let callers = [
        None,
        Some("wrong-token-0123456789abcdef"),
        Some(ADMIN),
        Some(PUBLISHER),
        Some(SUBSCRIBER),
    ];
    for (service, want) in table {
        for (token, want) in callers.iter().zip(want) {
            let got = call(&server, service, *token).await;
            assert_eq!(got, *want, "{service} with {token:?}");
        }
    }
}

#[tokio::test]
async fn malformed_credentials_are_unauthenticated() {
    let server = TestServer::start_secure(&tokens(), false).await;
    for value in [
        "Basic b3BzOnNlY3JldA==",
        "Bearer",
        "Bearer ",
        ADMIN,
        "Bearer admin-token-0123456789abcdeF",
    ] {
        let mut req = tonic::Request::new(pb::ListEndpointsRequest::default());
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let err = server.admin().await.list_endpoints(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{value}: {err:?}");
        // Nothing about the configured tokens leaks into the answer.
        assert!(!err.message().contains("ops"), "{}", err.message());
    }
    let err = call(&server, "Publisher.Publish", None).await;
    assert_eq!(err, Code::Unauthenticated);
    // A denied call names the role it needed, so operators can fix it.
    let err = server
        .admin_as(Some(PUBLISHER))
        .await
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().ends_with("needs admin"), "{}", err.message());
    // A subscriber token on the publisher service: its role or admin.
    let err = server
        .publisher_as(Some(SUBSCRIBER))
        .await
        .publish(pb::PublishRequest {
            event: Some(crate::support::pick("denied-1", "SO")),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().ends_with("needs publisher or admin"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn health_and_reflection_are_open() {
    let server = TestServer::start_secure(&tokens(), false).await;
    let channel = server.channel().await;
    let r = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "stevedore.v1.Publisher".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let mut c = ServerReflectionClient::new(channel);
    let mut resp = c
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.next().await.unwrap().is_ok());
}

#[tokio::test]
async fn tls_handshake_and_plaintext_rejection() {
    let server = TestServer::start_secure(&tokens(), true).await;
    // A client that trusts the certificate gets through, token and all.
    let mut p = server.publisher_as(Some(PUBLISHER)).await;
    let offset = p
        .publish(pb::PublishRequest {
            event: Some(pick("over-tls", "SO")),
        })
        .await
        .unwrap()
        .into_inner()
        .offset;
    assert_eq!(offset, 1);

    // Plaintext HTTP/2 to the TLS port is answered at once, in plaintext,
    // with UNAVAILABLE saying the listener needs TLS; nothing is served.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let result = match plain.connect().await {
        Err(e) => Err(format!("connect: {e}")),
        Ok(ch) => pb::publisher_client::PublisherClient::with_interceptor(
            ch,
            Bearer::new(Some(PUBLISHER)),
        )
        .publish(pb::PublishRequest {
            event: Some(pick("plain", "SO")),
        })
        .await
        .map_err(|s| format!("{s:?}")),
    };
    let err = result.expect_err("plaintext must not be served");
    assert!(
        err.contains("Unavailable") && err.contains("this listener requires TLS"),
        "{err}"
    );

    // A client that does not trust the certificate fails the handshake.
    let untrusting = tonic::transport::Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    assert!(untrusting.connect().await.is_err());

    // The server still serves after both.
    let offset = p
        .publish(pb::PublishRequest {
            event: Some(pick("after", "SO")),
        })
        .await
        .unwrap()
        .into_inner()
        .offset;
    assert_eq!(offset, 2);
}

/// `run` on `addr` with `tweak`; what it returned, or `None` if it served.
async fn run_on(addr: &str, tweak: impl FnOnce(&mut Config)) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        state_cache_bytes: 8 * 1024 * 1024,
        metrics_listen: None,
        console_listen: None,
        ..Config::default()
    };
    tweak(&mut config);
    let listener = TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(stevedore::run(config.clone(), listener, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if handle.is_finished() {
        return Some(format!("{:#}", handle.await.unwrap().unwrap_err()));
    }
    // Serving: check it answers on loopback, then stop it.
    let server = TestServer {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        dir: Arc::new(dir),
        config,
        stop: Some(stop),
        handle: Some(handle),
        // Never read here.
        started: tokio::sync::watch::channel(None).1,
    };
    let mut h = HealthClient::new(server.channel().await);
    h.check(HealthCheckRequest::default()).await.unwrap();
    server.stop().await;
    None
}

#[tokio::test]
async fn non_loopback_needs_tokens() {
    // No tokens: `run` refuses a listener on every interface.
    let err = run_on("0.0.0.0:0", |_| {}).await.expect("refused");
    assert!(err.contains("config key `listen`"), "{err}");
    assert!(err.contains("tokens"), "{err}");

    // Tokens and TLS: allowed.
    let cert_dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::self_signed(cert_dir.path());
    let served = run_on("0.0.0.0:0", |c| {
        c.tokens = test_tokens(&tokens());
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    assert_eq!(served, None);

    // Config validation says the same before anything starts.
    let config = Config {
        listen: "0.0.0.0:50051".parse().unwrap(),
        ..Config::default()
    };
    let err = format!("{:#}", config.validate().unwrap_err());
    assert!(err.contains("config key `listen`"), "{err}");
    let config = Config {
        tokens: test_tokens(&tokens()),
        ..config
    };
    config.validate().unwrap();
}

#[tokio::test]
async fn bad_tls_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a pem file").unwrap();
    let (cert, key) = crate::support::self_signed(dir.path());
    for (c, k, key_name) in [
        (junk.clone(), key.clone(), "tls_cert"),
        (cert.clone(), junk.clone(), "tls_key"),
        (dir.path().join("missing.pem"), key.clone(), "tls_cert"),
    ] {
        let err = run_on("127.0.0.1:0", |cfg| {
            cfg.tls_cert = Some(c);
            cfg.tls_key = Some(k);
        })
        .await
        .expect("refused");
        assert!(err.contains(&format!("`{key_name}`")), "{err}");
    }
}

/// Opens a plain Subscribe stream on `client`'s connection.
async fn open_stream(
    client: &mut pb::subscriber_client::SubscriberClient<tonic::transport::Channel>,
) -> Result<tonic::Streaming<pb::SubscribeResponse>, Status> {
    client
        .subscribe(SubscribeRequest::default())
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn stream_limits() {
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.max_subscribe_streams = 1;
        c.max_publish_streams = 1;
        c.max_streams_per_connection = 3;
    })
    .await;
    let mut s = server.subscriber().await;
    let first = open_stream(&mut s).await.unwrap();
    let mut p = server.publisher().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let second = p
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();

    // Both budgets full: a third stream of either kind is refused with a
    // status naming its budget, on any connection.
    let mut other = server.subscriber().await;
    let err = open_stream(&mut other).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_subscribe_streams (1)"),
        "{}",
        err.message()
    );
    let err = p
        .publish_stream(tokio_stream::iter(Vec::<pb::PublishRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_publish_streams (1)"),
        "{}",
        err.message()
    );
    // Unary calls are not streams and still work.
    crate::support::publish(&mut p, pick("", "SO")).await;

    // Closing a stream frees its slot.
    drop(first);
    drop(tx);
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let third = loop {
        match open_stream(&mut other).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot never freed: {e:?}"),
        }
    };
    drop(third);
}

/// Issue #21.7: subscribers filling their whole budget leave publishers
/// theirs — a PublishStream still opens and publishes.
#[tokio::test]
async fn subscribers_cannot_starve_publish_streams() {
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.max_subscribe_streams = 4;
        c.max_publish_streams = 2;
    })
    .await;
    let mut s = server.subscriber().await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(open_stream(&mut s).await.unwrap());
    }
    let err = open_stream(&mut s).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let mut p = server.publisher().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut acks = p
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a PublishStream opens while every subscribe slot is taken")
        .into_inner();
    tx.send(pb::PublishRequest {
        event: Some(pick("", "SO-STARVE")),
    })
    .await
    .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(30), acks.message())
        .await
        .expect("bounded wait")
        .unwrap()
        .expect("one ack");
    assert!(ack.offset >= 1);
    drop(held);
}

#[tokio::test]
async fn per_connection_stream_limit_queues_calls() {
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.max_streams_per_connection = 2;
    })
    .await;
    let mut s = server.subscriber().await;
    let a = open_stream(&mut s).await.unwrap();
    let _b = open_stream(&mut s).await.unwrap();
    // HTTP/2 tells the client the limit; a compliant client waits for a free
    // stream instead of failing.
    let mut s2 = s.clone();
    let mut waiting = tokio::spawn(async move {
        s2.get_event(pb::GetEventRequest {
            offset: 1,
            ..Default::default()
        })
        .await
        .map(drop)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "the third call waits"
    );
    // Another connection is not affected.
    let mut fresh = server.subscriber().await;
    let err = fresh
        .get_event(pb::GetEventRequest {
            offset: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("runs once a stream closes")
        .unwrap();
    assert_eq!(r.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn message_metadata_batch_and_endpoint_limits() {
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.max_event_bytes = 1024;
        c.max_request_bytes = 4096;
        c.max_batch_events = 3;
        c.max_endpoints = 1;
        c.max_endpoint_headers = 2;
        c.max_endpoint_header_bytes = 16;
    })
    .await;
    let mut p = server.publisher().await;

    // A message over max_request_bytes: refused before it is decoded.
    let mut big = pick("big", "SO");
    big.attributes.insert("pad".into(), "x".repeat(8000));
    let err = p
        .publish(pb::PublishRequest { event: Some(big) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );
    // An event over max_event_bytes: INVALID_ARGUMENT naming the limit.
    let mut big = pick("big", "SO");
    big.attributes.insert("pad".into(), "x".repeat(1000));
    let err = p
        .publish(pb::PublishRequest { event: Some(big) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_event_bytes"),
        "{}",
        err.message()
    );
    // A batch over max_batch_events.
    let err = p
        .publish_batch(pb::PublishBatchRequest {
            events: (0..4).map(|i| pick(&format!("b{i}"), "SO")).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_batch_events"),
        "{}",
        err.message()
    );
    // Metadata over max_metadata_bytes (16 KiB): the call fails, the
    // connection's other calls and the server do not.
    let mut req = tonic::Request::new(pb::PublishRequest {
        event: Some(pick("md", "SO")),
    });
    req.metadata_mut()
        .insert("x-pad", "y".repeat(20_000).parse().unwrap());
    assert!(p.publish(req).await.is_err());

    // Endpoints: custom headers, their size, and the endpoint count.
    let mut a = server.admin().await;
    let endpoint = |headers: &[(&str, &str)]| pb::CreateEndpointRequest {
        endpoint: Some(pb::Endpoint {
            url: "http://127.0.0.1:9/hook".into(),
            enabled: Some(false),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    };
    let err = a
        .create_endpoint(endpoint(&[("a", "1"), ("b", "2"), ("c", "3")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("endpoint.headers")
            && err.message().contains("max_endpoint_headers"),
        "{}",
        err.message()
    );
    let err = a
        .create_endpoint(endpoint(&[("a", &"v".repeat(17))]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_endpoint_header_bytes"),
        "{}",
        err.message()
    );
    a.create_endpoint(endpoint(&[("a", "1")])).await.unwrap();
    let err = a.create_endpoint(endpoint(&[])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("max_endpoints (1)"),
        "{}",
        err.message()
    );

    // Still serving.
    assert_eq!(crate::support::publish(&mut p, pick("ok", "SO")).await, 1);
}
