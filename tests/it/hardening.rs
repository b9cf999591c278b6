//! Hostile input, second round (issue #21, points 3, 5, 8 and 9): start
//! positions past the head, stored endpoints that no longer fit the
//! config, data directory permissions and re-sealing, header and
//! event-type rules, on the real server.

use std::{path::Path, time::Duration};

use crate::support::{
    assert_invalid, connect, copy_dir, create, endpoint, files_containing, get_endpoint, pick,
    publish, read_stderr, start_server_with_env, verify_signature, walk, Receiver, TestServer,
};
use stevedore::delivery::sealing::MasterKey;
use stevedore::pb::{
    self, admin_client::AdminClient, endpoint::Start as EndpointStart,
    publisher_client::PublisherClient, subscribe_request::Start as SubscribeStart,
    CreateEndpointRequest, Endpoint, ListEndpointsRequest, ReplayEndpointRequest, SubscribeRequest,
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
            dry_run: false,
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
                dry_run: false,
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
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().endpoint.unwrap())
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
    let e = get_endpoint(&mut admin, &ep.id).await;
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
    let e = get_endpoint(&mut server.admin().await, &ep.id).await;
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
    let e = get_endpoint(&mut admin, &ep.id).await;
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

/// Point 8: the real binary creates its data directory 0700 and every
/// file in it 0600 (umask 077), and warns when an existing data directory
/// is open to other users.
#[tokio::test]
async fn the_data_directory_is_private_to_the_broker_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("fresh").join("data");
    let env = [
        ("STEVEDORE_ALLOW_HTTP", "true"),
        ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
    ];
    let mut server = start_server_with_env(&data, &logs, 1, &env).await.unwrap();
    let channel = connect(&server.addr).await.unwrap();
    let rx = Receiver::start().await;
    let mut e = endpoint(&rx.url);
    e.headers.insert("X-Api-Key".into(), "perm-cred".into());
    create(&mut AdminClient::new(channel.clone()), e).await;
    publish(&mut PublisherClient::new(channel), pick("perm-1", "SO-1")).await;
    rx.wait_for(1, Duration::from_secs(10)).await;
    server.kill();
    let mut all = vec![(
        data.clone(),
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        true,
    )];
    walk(&data, &mut all);
    assert!(all.len() > 3, "{all:?}");
    for (path, mode, is_dir) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode & 0o077, 0, "{path:?} is {mode:o}");
        assert_eq!(mode & want, want, "{path:?} is {mode:o}");
    }
    assert!(
        !read_stderr(&logs, 1).contains("accessible to other users"),
        "{}",
        read_stderr(&logs, 1)
    );

    // An existing directory open to others: the broker serves, and warns.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = start_server_with_env(&open, &logs, 2, &env).await.unwrap();
    // Served, so the store was opened (the address is printed before).
    AdminClient::new(connect(&server.addr).await.unwrap())
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap();
    server.kill();
    let stderr = read_stderr(&logs, 2);
    assert!(
        stderr.contains("accessible to other users") && stderr.contains("755"),
        "{stderr}"
    );
}

/// Runs `stevedore reseal` on `data` with `env`; its status and output.
fn run_reseal(data: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stevedore"))
        .args(["reseal", "--data-dir"])
        .arg(data)
        .env("STEVEDORE_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Point 8: secrets written before a master key was turned on. Sealing
/// them in place (at the next start) leaves the old plaintext in sled's
/// files; `stevedore reseal` seals them and rewrites the state, after
/// which no file under the data directory holds the signing secret or the
/// header value, and the endpoint still delivers, signed.
#[tokio::test]
async fn reseal_leaves_no_plaintext_secret_in_any_file() {
    use base64::Engine;
    const HEADER: &str = "reseal-cred-0e7a93";
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = MasterKey::from_bytes([7; 32]);
    let key_env = b64.encode([7u8; 32]);

    let server = TestServer::start().await;
    let data = server.config.data_dir.clone();
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut e = endpoint(&rx.url);
    e.headers.insert("X-Api-Key".into(), HEADER.into());
    let (_, secret) = create(&mut admin, e).await;
    publish(&mut server.publisher().await, pick("rs-1", "SO-1")).await;
    rx.wait_for(1, Duration::from_secs(10)).await;
    drop(admin);
    let dir = server.stop().await;
    let secret_text = secret.trim_start_matches("whsec_").to_owned();
    let secret_raw = b64.decode(&secret_text).unwrap();
    let needles: [(&str, &[u8]); 3] = [
        ("the raw signing secret", &secret_raw),
        ("the signing secret's base64", secret_text.as_bytes()),
        ("the header value", HEADER.as_bytes()),
    ];
    assert!(
        !files_containing(&data, &secret_raw).is_empty(),
        "baseline: stored in the clear without a key"
    );
    // A copy resealed straight away, before any start with the key.
    let copy = dir.path().join("copy");
    copy_dir(&data, &copy);

    // Without the key, reseal refuses and names the setting.
    let (ok, out) = run_reseal(&copy, &[]);
    assert!(!ok && out.contains("master_key_file"), "{out}");

    // A start with the key seals the record in place; then reseal.
    TestServer::start_with(dir.clone(), |c| c.master_key = Some(key.clone()))
        .await
        .stop()
        .await;
    let (ok, out) = run_reseal(&data, &[("STEVEDORE_MASTER_KEY", &key_env)]);
    assert!(ok && out.contains("sealed 0 endpoint record(s)"), "{out}");
    let (ok, out) = run_reseal(&copy, &[("STEVEDORE_MASTER_KEY", &key_env)]);
    assert!(ok && out.contains("sealed 1 endpoint record(s)"), "{out}");
    for d in [&data, &copy] {
        for (what, needle) in needles {
            let found = files_containing(d, needle);
            assert!(found.is_empty(), "{what} is still in {found:?}");
        }
    }

    // The resealed state works: signed with the same secret, same header.
    rx.clear();
    let server = TestServer::start_with(dir, |c| c.master_key = Some(key.clone())).await;
    publish(&mut server.publisher().await, pick("rs-2", "SO-2")).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let last = got
        .iter()
        .find(|r| r.json()["salesOrderId"] == "SO-2")
        .expect("rs-2 delivered");
    verify_signature(&secret, last).unwrap();
    assert_eq!(last.header("x-api-key"), Some(HEADER));
}
