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
    self, admin_client::AdminClient, endpoint::Start as EndpointStart,
    subscribe_request::Start as SubscribeStart, CreateEndpointRequest, Endpoint,
    GetEndpointRequest, ListEndpointsRequest, ReplayEndpointRequest, SubscribeRequest,
    UpdateEndpointRequest,
};
use tonic::transport::Channel;

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

async fn update(
    admin: &mut AdminClient<Channel>,
    e: Endpoint,
    paths: &[&str],
) -> Result<Endpoint, tonic::Status> {
    admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(e),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        })
        .await
        .map(|r| r.into_inner().endpoint.unwrap())
}

async fn get(admin: &mut AdminClient<Channel>, id: &str) -> Endpoint {
    admin
        .get_endpoint(GetEndpointRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
}

/// Point 3: an `http://` endpoint stored while `allow_http` was on, after
/// a restart with it off: the broker starts (it exited with "endpoint.url:
/// must be https://"), the endpoint is disabled with a reason naming it and
/// the setting, and UpdateEndpoint to an https URL, then enable, fixes it.
#[tokio::test]
async fn an_endpoint_stored_under_allow_http_loads_disabled_and_is_fixable() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    publish(&mut server.publisher().await, pick("fit-1", "SO-1")).await;
    rx.wait_for(1, Duration::from_secs(10)).await;
    drop(admin);

    let config = server.config.clone();
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, |c| {
        *c = config;
        c.allow_http = false;
    })
    .await;
    let mut admin = server.admin().await;
    let e = get(&mut admin, &ep.id).await;
    assert_eq!(e.enabled, Some(false));
    for part in [
        ep.id.as_str(),
        "endpoint.url",
        "allow_http",
        "UpdateEndpoint",
    ] {
        assert!(
            e.disabled_reason.contains(part),
            "{part}: {}",
            e.disabled_reason
        );
    }
    // Still refused as it is; accepted with an https URL, then enabled.
    let enable = Endpoint {
        id: ep.id.clone(),
        enabled: Some(true),
        ..Default::default()
    };
    let status = update(&mut admin, enable.clone(), &["enabled"])
        .await
        .unwrap_err();
    assert_invalid(status, "endpoint.url");
    let https = rx.url.replace("http://", "https://");
    let fixed = Endpoint {
        id: ep.id.clone(),
        url: https.clone(),
        ..Default::default()
    };
    let e = update(&mut admin, fixed, &["url"]).await.unwrap();
    assert_eq!((e.url.as_str(), e.enabled), (https.as_str(), Some(false)));
    let e = update(&mut admin, enable, &["enabled"]).await.unwrap();
    assert_eq!(e.enabled, Some(true));
    assert_eq!(e.disabled_reason, "");
    drop(admin);

    // And it stays fixed across another restart.
    let server = server.restart().await;
    let e = get(&mut server.admin().await, &ep.id).await;
    assert_eq!((e.enabled, e.disabled_reason.as_str()), (Some(true), ""));
}

/// Point 3: `max_endpoint_headers` lowered below an endpoint's header
/// count: the broker starts, the endpoint is disabled naming the setting,
/// events published meanwhile wait, and fewer headers plus enable deliver
/// them.
#[tokio::test]
async fn an_endpoint_over_max_endpoint_headers_loads_disabled_and_is_fixable() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut e = endpoint(&rx.url);
    for i in 0..3 {
        e.headers.insert(format!("X-H{i}"), format!("v{i}"));
    }
    let (ep, _) = create(&mut admin, e).await;
    drop(admin);

    let config = server.config.clone();
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, |c| {
        *c = config;
        c.max_endpoint_headers = 1;
    })
    .await;
    let mut admin = server.admin().await;
    let e = get(&mut admin, &ep.id).await;
    assert_eq!(e.enabled, Some(false));
    for part in [
        ep.id.as_str(),
        "endpoint.headers",
        "max_endpoint_headers (1)",
    ] {
        assert!(
            e.disabled_reason.contains(part),
            "{part}: {}",
            e.disabled_reason
        );
    }
    publish(&mut server.publisher().await, pick("fit-2", "SO-2")).await;
    rx.expect_no_more_than(0, Duration::from_millis(200)).await;

    let mut fixed = Endpoint {
        id: ep.id.clone(),
        enabled: Some(true),
        ..Default::default()
    };
    fixed.headers.insert("X-H0".into(), "v0".into());
    let e = update(&mut admin, fixed, &["headers", "enabled"])
        .await
        .unwrap();
    assert_eq!((e.enabled, e.disabled_reason.as_str()), (Some(true), ""));
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["salesOrderId"], "SO-2");
    assert_eq!(got[0].header("x-h0"), Some("v0"));
    assert_eq!(got[0].header("x-h1"), None);
}
