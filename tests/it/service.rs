//! Health, reflection (v1 and v1alpha) and graceful shutdown.

use std::time::Duration;

use stevedore::pb::{subscribe_request::Start, SubscribeRequest};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::support::{pick, publish, TestServer};

#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let mut h = HealthClient::new(server.channel().await);
    for service in ["", "stevedore.v1.Publisher", "stevedore.v1.Subscriber"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_services() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut c = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "stevedore.v1.Publisher",
            "stevedore.v1.Subscriber",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "v1 lists {want}: {names:?}"
            );
        }
    }
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut c = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "stevedore.v1.Event".into(),
            )),
        };
        let mut resp = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected file descriptors");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_and_keeps_everything() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    let mut stream = s
        .subscribe(SubscribeRequest {
            start: Some(Start::Earliest(true)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Publishers racing the shutdown: whatever was acked must survive it.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let mut p = p.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for j in 0.. {
                    let id = format!("r{i}-{j}");
                    match p
                        .publish(stevedore::pb::PublishRequest {
                            event: Some(pick(&id, "SO")),
                        })
                        .await
                    {
                        Ok(r) => acked.push((id, r.into_inner().offset)),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    publish(&mut p, pick("first", "SO")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let dir = tokio::time::timeout(Duration::from_secs(15), server.stop())
        .await
        .expect("shutdown within its deadline");
    // The open stream ended instead of hanging.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "subscribe stream ended on shutdown");
    let mut acked = Vec::new();
    for r in racers {
        acked.extend(r.await.unwrap());
    }
    assert!(!acked.is_empty());

    let server = TestServer::start_with(dir, |_| {}).await;
    let mut s = server.subscriber().await;
    for (id, offset) in acked {
        let e = s
            .get_event(stevedore::pb::GetEventRequest {
                offset,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.event.unwrap().id, id);
    }
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_format() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let config = stevedore::config::Config {
        // Short, so a silent connection is closed within the test.
        handshake_timeout: Duration::from_millis(300),
        ..crate::support::server::metrics_config(dir.path())
    };
    let broker = crate::support::MetricsBroker::start(config).await;
    let (addr, metrics_addr, channel) = (broker.addr, broker.metrics_addr, broker.channel.clone());
    let rx = crate::support::Receiver::start().await;
    let mut admin = stevedore::pb::admin_client::AdminClient::new(channel.clone());
    let (ep, _) = crate::support::create(
        &mut admin,
        stevedore::pb::Endpoint {
            url: rx.url.clone(),
            ..Default::default()
        },
    )
    .await;
    // The picks are COMPLETE: this endpoint's filter excludes all three.
    let (filtered, _) = crate::support::create(
        &mut admin,
        stevedore::pb::Endpoint {
            url: rx.url.clone(),
            event_types: vec!["pick.confirmed".into()],
            filter: r#"status == "SHORT""#.into(),
            ..Default::default()
        },
    )
    .await;
    let mut p = stevedore::pb::publisher_client::PublisherClient::new(channel.clone());
    for i in 0..3 {
        publish(&mut p, pick(&format!("m-{i}"), "SO")).await;
    }
    let mut s = stevedore::pb::subscriber_client::SubscriberClient::new(channel);
    let _stream = s
        .subscribe(SubscribeRequest {
            consumer: "metrics-test".into(),
            start: Some(Start::Earliest(true)),
            max_in_flight: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    rx.wait_for(3, Duration::from_secs(10)).await;

    // A connection that never sends a request is closed at the handshake
    // timeout, and an event over max_event_bytes is refused before it is
    // decoded: both are counted.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        while !matches!(silent.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await;
    assert!(closed.is_ok(), "the silent connection was not closed");
    let big = p
        .publish(stevedore::pb::PublishRequest {
            event: Some(pick("big", &"x".repeat(1_100_000))),
        })
        .await
        .unwrap_err();
    assert_eq!(big.code(), tonic::Code::InvalidArgument, "{big:?}");

    let scrape = || async { crate::support::metrics::scrape_text(metrics_addr).await.0 };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape().await;
        let delivered = format!(
            "stevedore_deliveries_total{{endpoint=\"{}\",outcome=\"delivered\"}} 3",
            ep.id
        );
        let excluded = format!(
            "stevedore_deliveries_total{{endpoint=\"{}\",outcome=\"filtered\"}} 3",
            filtered.id
        );
        if text.contains(&delivered) && text.contains(&excluded) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivered count in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for want in [
        "stevedore_events_published_total{type=\"pick.confirmed\"} 3",
        "stevedore_publish_latency_seconds_count 3",
        "stevedore_log_head_offset 4",
        "stevedore_log_events 3",
        "stevedore_delivery_latency_seconds_count 3",
        "stevedore_open_streams 1",
        "stevedore_consumer_lag{consumer=\"metrics-test\"} 3",
        &format!("stevedore_endpoint_pending{{endpoint=\"{}\"}} 0", ep.id),
        &format!("stevedore_endpoint_dead{{endpoint=\"{}\"}} 0", ep.id),
        "stevedore_group_commit_size_count",
        "stevedore_group_commit_delays_total ",
        "stevedore_open_connections 1\n",
        "stevedore_connections_closed_total{reason=\"handshake_timeout\"} 1\n",
        "stevedore_requests_refused_total{reason=\"message_size\"} 1\n",
        "stevedore_request_bytes_in_flight 0\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_starts() {
    let server = TestServer::start().await;
    let mut h = HealthClient::new(server.channel().await);
    let mut watch = h
        .watch(HealthCheckRequest {
            service: "stevedore.v1.Publisher".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopping = tokio::spawn(server.stop());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a status change in time");
    // The watcher sees NOT_SERVING before its stream ends with the server.
    let status = next.unwrap().expect("a status before the stream ends");
    assert_eq!(status.status(), ServingStatus::NotServing);
    stopping.await.unwrap();
}
