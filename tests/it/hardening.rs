//! Hostile input, second round (issue #21, points 3, 5, 8 and 9): start
//! positions past the head, stored endpoints that no longer fit the
//! config, data directory permissions and re-sealing, header and
//! event-type rules, on the real server.

use std::time::Duration;

use crate::{
    assert_invalid, pick, publish,
    receiver::Receiver,
    webhook::{create, endpoint},
    TestServer,
};
use stevedore::pb::{
    self, endpoint::Start as EndpointStart, subscribe_request::Start as SubscribeStart,
    CreateEndpointRequest, ListEndpointsRequest, ReplayEndpointRequest, SubscribeRequest,
};

/// Point 5: a start offset past the head was accepted and nothing was
/// ever delivered (backlog 0): now INVALID_ARGUMENT naming the field, for
/// endpoints, Subscribe and ReplayEndpoint; the head itself still works.
#[tokio::test]
async fn start_offsets_past_the_head_are_refused() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    let first = publish(&mut publisher, pick("so-1", "SO-1")).await;
    let head = first + 1;
    for past in [u64::MAX, head + 1, head + 1000] {
        let mut e = endpoint(&rx.url);
        e.start = Some(EndpointStart::StartOffset(past));
        let status = admin
            .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
            .await
            .unwrap_err();
        assert_invalid(status, "endpoint.start_offset");
        let status = server
            .subscriber()
            .await
            .subscribe(SubscribeRequest {
                start: Some(SubscribeStart::Offset(past)),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_invalid(status, "offset");
    }
    let listed = admin
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.endpoints.is_empty(),
        "a refused create changes nothing"
    );

    // At the head: the next event is delivered.
    let mut e = endpoint(&rx.url);
    e.start = Some(EndpointStart::StartOffset(head));
    let (ep, _) = create(&mut admin, e).await;
    let status = admin
        .replay_endpoint(ReplayEndpointRequest {
            endpoint_id: ep.id.clone(),
            start: Some(pb::replay_endpoint_request::Start::Offset(u64::MAX)),
        })
        .await
        .unwrap_err();
    assert_invalid(status, "offset");
    publish(&mut publisher, pick("so-2", "SO-2")).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["salesOrderId"], "SO-2", "{:?}", got[0].json());
    assert_eq!(
        admin
            .replay_endpoint(ReplayEndpointRequest {
                endpoint_id: ep.id.clone(),
                start: Some(pb::replay_endpoint_request::Start::Offset(head)),
            })
            .await
            .unwrap()
            .into_inner()
            .from_offset,
        head
    );
}
