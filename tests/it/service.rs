//! Health, reflection (v1 and v1alpha) and graceful shutdown.

use std::time::Duration;

use stevedore::pb::{subscribe_request::Start, SubscribeRequest};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::{pick, publish, TestServer};

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
            .get_event(stevedore::pb::GetEventRequest { offset })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.event.unwrap().id, id);
    }
}
