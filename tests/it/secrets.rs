//! Endpoint secrets: never in logs or error messages, encrypted at rest
//! with a master key (and migrated to it), and a clear startup error when
//! the key is missing or wrong. (`Debug` redaction is unit-tested beside
//! the types; list responses in webhook.rs.)

use std::time::Duration;

use stevedore::{
    config::Config,
    delivery::{endpoint::EndpointRecord, sealing::MasterKey},
    pb::{
        admin_client::AdminClient, publisher_client::PublisherClient, CreateEndpointRequest,
        Endpoint, GetEndpointRequest, ListEndpointsRequest, RotateEndpointSecretRequest,
        SendTestEventRequest, UpdateEndpointRequest,
    },
};

use crate::support::{
    connect, contains, copy_dir, create, endpoint, ms, pick, publish, read_stderr,
    start_server_with_env, stored_records, verify_signature, Behavior, Receiver, TestServer,
    HOOK_PATH,
};

const HEADER_VALUE: &str = "hdr-cred-7c1e0b";
const BEARER: &str = "Bearer tok-9f3a55";
const BAD_HEADER: &str = "bad-cred-5d2b11";
const NEW_HEADER_VALUE: &str = "hdr-cred-new-8e4f22";
/// A token in the endpoint URL's query, as many receivers expect.
const URL_TOKEN: &str = "url-tok-3b9d07";

fn with_headers(url: &str) -> Endpoint {
    let mut e = endpoint(url);
    e.headers.insert("X-Api-Key".into(), HEADER_VALUE.into());
    e.headers.insert("Authorization".into(), BEARER.into());
    e
}

/// The base64 key of a `whsec_` secret.
fn key_part(secret: &str) -> &str {
    secret.trim_start_matches("whsec_")
}

/// Every log line of a broker session — create, deliver, fail, rotate,
/// test, list, bad and good updates, shutdown — at TRACE, and every error
/// message a client sees: no secret and no header value anywhere. The real
/// binary runs with `STEVEDORE_LOG=trace` and its stderr is what is read:
/// exactly what an operator's log collector would get.
#[tokio::test]
async fn secrets_and_header_values_never_reach_logs_or_errors() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    let master_key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let mut server = start_server_with_env(
        &dir.path().join("data"),
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
    let channel = connect(&server.addr).await.unwrap();
    let rx = Receiver::start().await;
    let mut admin = AdminClient::new(channel.clone());
    let mut publisher = PublisherClient::new(channel);
    let mut client_errors = String::new();

    let (ep, first) = create(
        &mut admin,
        with_headers(&format!("{}?token={URL_TOKEN}", rx.url)),
    )
    .await;
    rx.respond(Behavior::Body(500, "try again".into()));
    publish(&mut publisher, pick("sec-1", "SO")).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        got[1].header("x-api-key"),
        Some(HEADER_VALUE),
        "sent as set"
    );
    verify_signature(&first, &got[1]).unwrap();

    let rotated = admin
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            id: ep.id.clone(),
            grace_period: Some(ms(3_600_000)),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    publish(&mut publisher, pick("sec-2", "SO")).await;
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    verify_signature(&rotated, &got[2]).unwrap();
    admin
        .send_test_event(SendTestEventRequest {
            endpoint_id: ep.id.clone(),
        })
        .await
        .unwrap();

    let shown = format!(
        "{:?} {:?}",
        admin
            .list_endpoints(ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner(),
        admin
            .get_endpoint(GetEndpointRequest { id: ep.id.clone() })
            .await
            .unwrap()
            .into_inner()
    );

    for (name, value) in [
        ("X-Api-Key", format!("{BAD_HEADER}\r\nX-Injected: 1")),
        ("X-Api-Key", format!("{BAD_HEADER}\u{7f}")),
        ("X-Api-Key", format!("{BAD_HEADER}{}", "x".repeat(5000))),
        ("webhook-signature", BAD_HEADER.to_string()),
    ] {
        let mut e = Endpoint {
            id: ep.id.clone(),
            ..Default::default()
        };
        e.headers.insert(name.into(), value);
        let err = admin
            .update_endpoint(UpdateEndpointRequest {
                endpoint: Some(e),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["headers".into()],
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        client_errors.push_str(err.message());
        client_errors.push('\n');
    }
    let mut bad_create = with_headers("https://example.com/");
    bad_create
        .headers
        .insert("X-Other".into(), format!("{BAD_HEADER}\n"));
    let err = admin
        .create_endpoint(CreateEndpointRequest {
            endpoint: Some(bad_create),
        })
        .await
        .unwrap_err();
    client_errors.push_str(err.message());

    let mut e = Endpoint {
        id: ep.id.clone(),
        ..Default::default()
    };
    e.headers
        .insert("X-Api-Key".into(), NEW_HEADER_VALUE.into());
    admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(e),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["headers".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&mut publisher, pick("sec-3", "SO")).await;
    let got = rx.wait_for(5, Duration::from_secs(10)).await;
    assert!(got
        .iter()
        .any(|r| r.header("x-api-key") == Some(NEW_HEADER_VALUE)));
    drop((admin, publisher));
    // A graceful stop, so shutdown's log lines are included.
    std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(
        server.wait_exit(Duration::from_secs(15)).is_some(),
        "broker exited"
    );

    let logs = read_stderr(&logs_dir, 1);
    assert!(
        logs.contains("endpoint created") && logs.contains("endpoint secret rotated"),
        "the capture works: {logs}"
    );
    assert!(
        client_errors.matches("endpoint.headers[").count() >= 5,
        "{client_errors}"
    );
    for secret in [
        key_part(&first),
        key_part(&rotated),
        HEADER_VALUE,
        "tok-9f3a55",
        BAD_HEADER,
        NEW_HEADER_VALUE,
    ] {
        assert!(!logs.contains(secret), "{secret:?} in the log:\n{logs}");
        assert!(
            !client_errors.contains(secret),
            "{secret:?} in {client_errors}"
        );
        assert!(!shown.contains(secret), "{secret:?} in {shown}");
    }
    // The URL is the admin's to read (GetEndpoint), not the log's: the log
    // shows its origin.
    assert!(shown.contains(URL_TOKEN), "{shown}");
    assert!(
        !logs.contains(URL_TOKEN),
        "the URL's token in the log:\n{logs}"
    );
    assert!(
        logs.contains(rx.url.trim_end_matches(HOOK_PATH)),
        "the origin is logged: {logs}"
    );
}

/// Runs the broker on `config` and returns its startup error.
async fn startup_error(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        stevedore::run(config, listener, std::future::pending()),
    )
    .await
    .expect("a startup failure returns at once");
    format!("{:#}", result.expect_err("startup must fail"))
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_plaintext_records_are_migrated() {
    let key = MasterKey::from_bytes([3; 32]);
    // Written without a key: stored in the clear, as before.
    let server = TestServer::start().await;
    let data = server.config.data_dir.clone();
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (ep, old) = create(&mut admin, with_headers(&rx.url)).await;
    let current = admin
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            id: ep.id.clone(),
            grace_period: Some(ms(3_600_000)),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    drop(admin);
    let dir = server.stop().await;
    let secret_bytes = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(key_part(s))
            .unwrap()
    };
    let records = stored_records(&data);
    assert_eq!(records.len(), 1);
    assert!(!EndpointRecord::is_sealed(&records[0]));
    assert!(
        contains(&records[0], &secret_bytes(&current)),
        "baseline: plaintext"
    );

    // With the key: migrated at startup, and everything still works.
    let server = TestServer::start_with(dir, |c| c.master_key = Some(key.clone())).await;
    let mut admin = server.admin().await;
    publish(&mut server.publisher().await, pick("mig-1", "SO")).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    verify_signature(&current, &got[0]).unwrap();
    verify_signature(&old, &got[0]).unwrap();
    assert_eq!(got[0].header("x-api-key"), Some(HEADER_VALUE));
    assert_eq!(got[0].header("authorization"), Some(BEARER));
    let (second, second_secret) = create(&mut admin, with_headers(&rx.url)).await;
    drop(admin);
    let dir = server.stop().await;

    let records = stored_records(&data);
    assert_eq!(records.len(), 2);
    for r in &records {
        assert!(EndpointRecord::is_sealed(r));
        for secret in [
            secret_bytes(&old),
            secret_bytes(&current),
            secret_bytes(&second_secret),
            HEADER_VALUE.as_bytes().to_vec(),
            BEARER.as_bytes().to_vec(),
        ] {
            assert!(!contains(r, &secret), "a secret is stored in the clear");
        }
        let open = EndpointRecord::from_stored(r, Some(&key)).unwrap();
        assert_eq!(open.endpoint.headers["X-Api-Key"], HEADER_VALUE);
    }

    // Without the key, or with another one: a clear startup error.
    let config_on = |name: &str, master_key: Option<MasterKey>| {
        let copy = dir.path().join(name);
        copy_dir(&data, &copy);
        Config {
            data_dir: copy,
            state_cache_bytes: 8 * 1024 * 1024,
            master_key,
            metrics_listen: None,
            console_listen: None,
            ..Config::default()
        }
    };
    let err = startup_error(config_on("no-key", None)).await;
    assert!(
        err.contains("no master key is configured") && err.contains("master_key_file"),
        "{err}"
    );
    let err = startup_error(config_on("wrong-key", Some(MasterKey::from_bytes([4; 32])))).await;
    assert!(
        err.contains("different key") && err.contains("master_key_file"),
        "{err}"
    );

    // And with the right key the data is intact.
    let server = TestServer::start_with(dir, |c| c.master_key = Some(key.clone())).await;
    let mut admin = server.admin().await;
    publish(&mut server.publisher().await, pick("mig-2", "SO")).await;
    // (Polled: mig-1 may be sent again too, if its ack had not been written
    // when the broker stopped.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let to_second = loop {
        if let Some(r) = rx
            .requests()
            .into_iter()
            .find(|r| verify_signature(&second_secret, r).is_ok())
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second endpoint signs with its secret"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(to_second.header("x-api-key"), Some(HEADER_VALUE));
    admin
        .get_endpoint(GetEndpointRequest {
            id: second.id.clone(),
        })
        .await
        .unwrap();
}
