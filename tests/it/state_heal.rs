//! State writes heal after a transient write failure, without a restart.
//!
//! The real broker runs as a child process. Its file-size limit
//! (`RLIMIT_FSIZE`) is lowered to the current size of the state database's
//! data file, so the next state write that grows it fails with EFBIG, as on
//! a full disk (the broker takes SIGXFSZ instead of dying of it). While the
//! limit holds, CreateEndpoint fails with RESOURCE_EXHAUSTED and health is
//! NOT_SERVING; once it is raised again, health comes back to SERVING and
//! CreateEndpoint and a new durable Subscribe work again, with no restart.
//! Everything created before and after survives a restart.
//!
//! The broker's stderr is a file under the same limit, so its log lines
//! fail to be written meanwhile too (which must not take down the thread
//! that logs them).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use rustix::process::{prlimit, Pid, Resource, Rlimit};
use stevedore::pb::{
    admin_client::AdminClient, subscribe_request::Start, subscriber_client::SubscriberClient,
    AckMode, CreateEndpointRequest, Endpoint, ListEndpointsRequest, SubscribeRequest,
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::support::{connect, start_server_with_env, Server};

/// Health, or a write, changing after the limit changed.
const SETTLE: Duration = Duration::from_secs(20);
/// One call.
const CALL: Duration = Duration::from_secs(5);

/// Sets the child's file-size limit (the hard limit stays unlimited).
fn limit_file_size(server: &Server, bytes: Option<u64>) {
    let pid = Pid::from_raw(server.pid() as i32).expect("a child's pid is positive");
    prlimit(
        Some(pid),
        Resource::Fsize,
        Rlimit {
            current: bytes,
            maximum: None,
        },
    )
    .expect("prlimit on our own child");
}

async fn create_endpoint(
    admin: &mut AdminClient<Channel>,
    name: &str,
) -> Result<(), tonic::Status> {
    let endpoint = Endpoint {
        url: format!("https://example.com/{name}"),
        description: name.into(),
        ..Default::default()
    };
    tokio::time::timeout(
        CALL,
        admin.create_endpoint(CreateEndpointRequest {
            endpoint: Some(endpoint),
        }),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("CreateEndpoint timed out"))?
    .map(|_| ())
}

/// Opens a durable subscription named `name` and waits for the broker to
/// take it (the consumer is created, durably, before the stream answers).
async fn subscribe_durable(
    subscriber: &mut SubscriberClient<Channel>,
    name: &str,
) -> Result<tonic::Streaming<stevedore::pb::SubscribeResponse>, tonic::Status> {
    tokio::time::timeout(
        CALL,
        subscriber.subscribe(SubscribeRequest {
            consumer: name.into(),
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::Explicit as i32,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("Subscribe timed out"))?
    .map(tonic::Response::into_inner)
}

async fn health(channel: &Channel) -> ServingStatus {
    let r = tokio::time::timeout(
        CALL,
        HealthClient::new(channel.clone()).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health answers")
    .expect("health answers");
    r.into_inner().status()
}

async fn wait_for_health(channel: &Channel, want: ServingStatus, logs: &Path) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = health(channel).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed {now:?}, not {want:?}, for {SETTLE:?}\n{}",
            crate::support::all_stderr(logs, 1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn endpoint_names(admin: &mut AdminClient<Channel>) -> Vec<String> {
    let mut names: Vec<String> = admin
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints
        .into_iter()
        .map(|e| e.description)
        .collect();
    names.sort();
    names
}

fn state_file_len(data: &Path) -> u64 {
    std::fs::metadata(data.join("db")).unwrap().len()
}

#[tokio::test]
async fn state_writes_heal_after_a_file_size_limit_is_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No zero-filling of the event log ahead of the writer: the limit is
    // for the state's files, and no event is published here.
    let env = [("STEVEDORE_LOG_ZERO_FILL", "false")];
    let server = start_server_with_env(&data, dir.path(), 1, &env)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channel = connect(&server.addr).await.unwrap();
    let mut admin = AdminClient::new(channel.clone());
    let mut subscriber = SubscriberClient::new(channel.clone());
    create_endpoint(&mut admin, "before").await.unwrap();
    let _before = subscribe_durable(&mut subscriber, "c-before")
        .await
        .unwrap();
    assert_eq!(health(&channel).await, ServingStatus::Serving);

    limit_file_size(&server, Some(state_file_len(&data)));
    let err = create_endpoint(&mut admin, "during").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    wait_for_health(&channel, ServingStatus::NotServing, dir.path()).await;
    // Still failing while the limit holds: the broker does not claim to be
    // healed.
    let err = create_endpoint(&mut admin, "during-2").await.unwrap_err();
    assert_ne!(err.code(), Code::Ok, "{err:?}");
    assert_eq!(health(&channel).await, ServingStatus::NotServing);

    limit_file_size(&server, None);
    wait_for_health(&channel, ServingStatus::Serving, dir.path()).await;
    create_endpoint(&mut admin, "after").await.unwrap();
    let _after = subscribe_durable(&mut subscriber, "c-after").await.unwrap();
    let names = endpoint_names(&mut admin).await;
    assert!(
        names.contains(&"before".to_owned()) && names.contains(&"after".to_owned()),
        "{names:?}"
    );
    drop((_before, _after, admin, subscriber, channel));

    // A restart finds both.
    drop(server);
    let server = start_server_with_env(&data, dir.path(), 2, &env)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channel = connect(&server.addr).await.unwrap();
    let mut admin = AdminClient::new(channel.clone());
    let names = endpoint_names(&mut admin).await;
    assert!(
        names.contains(&"before".to_owned()) && names.contains(&"after".to_owned()),
        "{names:?}"
    );
    let consumers: Vec<String> = crate::support::list_consumers(&mut admin)
        .await
        .into_iter()
        .map(|c| c.name)
        .collect();
    for name in ["c-before", "c-after"] {
        assert!(
            consumers.contains(&name.to_owned()),
            "{name}: {consumers:?}"
        );
    }
    assert_eq!(health(&channel).await, ServingStatus::Serving);
}
