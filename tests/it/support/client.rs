//! gRPC calls and assertions the tests share.

use std::time::Duration;

use stevedore::pb::{self, admin_client::AdminClient, publisher_client::PublisherClient};
use tonic::transport::Channel;

/// Publishes one event and returns its offset.
pub async fn publish(client: &mut PublisherClient<Channel>, event: pb::Event) -> u64 {
    publish_answer(client, event).await.offset
}

/// Publishes one event and returns the whole answer (offset, duplicate).
pub async fn publish_answer(
    client: &mut PublisherClient<Channel>,
    event: pb::Event,
) -> pb::PublishResponse {
    client
        .publish(pb::PublishRequest { event: Some(event) })
        .await
        .unwrap()
        .into_inner()
}

/// A Subscribe stream from the earliest event, without a consumer name.
pub async fn subscribe_earliest(
    client: &mut pb::subscriber_client::SubscriberClient<Channel>,
) -> tonic::Streaming<pb::SubscribeResponse> {
    client
        .subscribe(pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::Earliest(true)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next message of a stream, failing the test after `secs`.
pub async fn next_within(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    secs: u64,
) -> pb::SubscribeResponse {
    tokio::time::timeout(Duration::from_secs(secs), stream.message())
        .await
        .expect("a message in time")
        .expect("stream ok")
        .expect("stream not ended")
}

/// Asserts that no message arrives for `ms` milliseconds.
pub async fn assert_quiet(stream: &mut tonic::Streaming<pb::SubscribeResponse>, ms: u64) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(ms), stream.message()).await {
        panic!("expected no message, got {m:?}");
    }
}

/// Asserts a status code and that the message names `field`.
pub fn assert_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(field),
        "message {:?} should name {field}",
        status.message()
    );
}

/// Every durable consumer, as Admin.ListConsumers lists them.
pub async fn list_consumers(admin: &mut AdminClient<Channel>) -> Vec<pb::ConsumerInfo> {
    admin
        .list_consumers(pb::ListConsumersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .consumers
}
