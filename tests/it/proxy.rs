//! Egress through an HTTP proxy (#19): https:// receivers through a
//! CONNECT tunnel, http:// ones in absolute form, per-endpoint override,
//! and the SSRF guard applied to the target behind the proxy.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use stevedore::pb::{CreateEndpointRequest, DeliveryState};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::support::{
    assert_invalid, attempts, create, endpoint, https_receiver, pick, publish, verify_signature,
    wait_state, Receiver, TestServer, HOOK_PATH,
};

/// A minimal forward proxy on 127.0.0.1: `CONNECT host:port` opens a
/// tunnel; any other request (absolute form) is forwarded to the host it
/// names, unchanged. Records each request's first line.
struct TestProxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl TestProxy {
    async fn start() -> Self {
        Self::requiring(None).await
    }

    /// A proxy that answers 407 to requests without this
    /// `Proxy-Authorization` value (`None`: it requires nothing).
    async fn requiring(auth: Option<&'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, log.clone(), auth));
            }
        });
        Self { url, seen }
    }

    /// Its URL with `userinfo@` before the address.
    fn url_with(&self, userinfo: &str) -> String {
        self.url
            .replacen("http://", &format!("http://{userinfo}@"), 1)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut client: TcpStream, log: Arc<Mutex<Vec<String>>>, auth: Option<&str>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        let mut b = [0u8; 1];
        if client.read(&mut b).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let first = text.lines().next().unwrap_or_default().to_owned();
    log.lock().unwrap().push(first.clone());
    if let Some(expected) = auth {
        let given = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("proxy-authorization")
                .then(|| value.trim().to_owned())
        });
        if given.as_deref() != Some(expected) {
            log.lock().unwrap().push(format!("407 for {given:?}"));
            let _ = client
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n",
                )
                .await;
            return;
        }
    }
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authority = if method == "CONNECT" {
        target.to_owned()
    } else {
        let Some(rest) = target.strip_prefix("http://") else {
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            return;
        };
        rest.split('/').next().unwrap_or_default().to_owned()
    };
    let Ok(mut upstream) = TcpStream::connect(authority.as_str()).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if method == "CONNECT" {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
    } else {
        upstream.write_all(&head).await.unwrap();
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// An https:// receiver behind a private CA, reached through the broker's
/// `https_proxy`: a CONNECT tunnel with TLS inside it, the webhook signed
/// and verified as usual.
#[tokio::test]
async fn https_through_a_connect_proxy() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (cert, key) = crate::support::self_signed(dir.path());
    let (port, mut received) = https_receiver(&cert, &key).await;
    let proxy = TestProxy::start().await;
    let (ca, proxy_url) = (cert.clone(), proxy.url.clone());
    let server = TestServer::start_with(dir, move |c| {
        c.allow_http = false;
        c.webhook_ca_file = Some(ca);
        c.https_proxy = Some(proxy_url.into());
    })
    .await;
    let mut admin = server.admin().await;
    let (_, secret) = create(
        &mut admin,
        endpoint(&format!("https://localhost:{port}/hook")),
    )
    .await;
    publish(&mut server.publisher().await, pick("px-1", "SO-1")).await;
    let (version, headers, body) = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("delivered through the proxy")
        .unwrap();
    assert_eq!(proxy.seen(), [format!("CONNECT localhost:{port} HTTP/1.1")]);
    let recorded = crate::support::Recorded {
        method: http::Method::POST,
        path: "/hook".into(),
        headers,
        body,
        received_at: std::time::Instant::now(),
        version,
        connection: 1,
    };
    verify_signature(&secret, &recorded).unwrap();
}

/// http:// receivers go to the proxy in absolute form; an endpoint with
/// `proxy_url: "none"` connects directly, one with its own URL uses that
/// proxy, and a bad `proxy_url` is INVALID_ARGUMENT naming the field.
#[tokio::test]
async fn http_in_absolute_form_and_per_endpoint_override() {
    let global = TestProxy::start().await;
    let own = TestProxy::start().await;
    let url = global.url.clone();
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), move |c| {
        c.http_proxy = Some(url.into());
    })
    .await;
    let (via_global, direct, via_own) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let mut admin = server.admin().await;
    create(&mut admin, endpoint(&via_global.url)).await;
    let mut e = endpoint(&direct.url);
    e.proxy_url = "none".into();
    create(&mut admin, e).await;
    let mut e = endpoint(&via_own.url);
    e.proxy_url = own.url.clone();
    let (created, _) = create(&mut admin, e).await;
    assert_eq!(created.proxy_url, own.url, "shown as set");
    publish(&mut server.publisher().await, pick("px-2", "SO-2")).await;
    for rx in [&via_global, &direct, &via_own] {
        let got = rx.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(got[0].header("webhook-id"), Some("px-2"));
    }
    assert_eq!(
        global.seen(),
        [format!("POST {} HTTP/1.1", via_global.url)],
        "absolute form, and only for the endpoint without its own setting"
    );
    assert_eq!(own.seen(), [format!("POST {} HTTP/1.1", via_own.url)]);

    for bad in [
        "socks5://127.0.0.1:1080",
        "http://user:pw@127.0.0.1:1",
        "nonsense",
    ] {
        let mut e = endpoint(&direct.url);
        e.proxy_url = bad.into();
        let status = admin
            .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
            .await
            .unwrap_err();
        assert!(!status.message().contains("pw"), "{status:?}");
        assert_invalid(status, "endpoint.proxy_url");
    }
}

/// The proxy's own address is the operator's choice (here loopback, which
/// this broker's guard blocks), but a target the guard blocks is refused
/// before the proxy is asked: nothing reaches the proxy, and each attempt
/// records the guard's message.
#[tokio::test]
async fn the_guard_checks_the_target_behind_the_proxy() {
    let proxy = TestProxy::start().await;
    let rx = Receiver::start().await;
    let url = proxy.url.clone();
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), move |c| {
        c.allow_networks.clear();
        c.http_proxy = Some(url.into());
    })
    .await;
    let mut admin = server.admin().await;
    let target = format!("http://localhost:{}{HOOK_PATH}", rx.addr.port());
    let (ep, _) = create(&mut admin, endpoint(&target)).await;
    let offset = publish(&mut server.publisher().await, pick("px-3", "SO-3")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    let a = attempts(&mut admin, &ep.id, offset).await;
    assert_eq!(a.len(), 3, "{a:?}");
    for attempt in &a {
        assert!(
            attempt.error.starts_with("blocked by SSRF guard: ")
                && attempt.error.contains("resolved from localhost"),
            "{attempt:?}"
        );
    }
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    assert_eq!(rx.count(), 0);
}

/// `egress@corp:p@ss:1`, percent-encoded in proxy URLs.
const PROXY_USERINFO: &str = "egress%40corp:p%40ss%3A1";
/// Its `Proxy-Authorization` value: Basic base64("egress@corp:p@ss:1").
const PROXY_AUTH: &str = "Basic ZWdyZXNzQGNvcnA6cEBzczox";

/// Credentials in the broker's proxy settings: a proxy that requires them
/// gets them on CONNECT (https://) and on forwarded plain-HTTP requests;
/// without them it answers 407, which the attempt records. An endpoint's
/// own `proxy_url` may not carry credentials (it is returned by
/// GetEndpoint).
#[tokio::test]
async fn proxy_credentials_are_sent_on_connect_and_forwarded_requests() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (cert, key) = crate::support::self_signed(dir.path());
    let (port, mut received) = https_receiver(&cert, &key).await;
    let rx = Receiver::start().await;
    let proxy = TestProxy::requiring(Some(PROXY_AUTH)).await;
    let with_auth = proxy.url_with(PROXY_USERINFO);
    let ca = cert.clone();
    let server = TestServer::start_with(dir, move |c| {
        c.webhook_ca_file = Some(ca);
        c.https_proxy = Some(with_auth.as_str().into());
        c.http_proxy = Some(with_auth.into());
    })
    .await;
    let mut admin = server.admin().await;
    create(
        &mut admin,
        endpoint(&format!("https://localhost:{port}/hook")),
    )
    .await;
    create(&mut admin, endpoint(&rx.url)).await;
    publish(&mut server.publisher().await, pick("pa-1", "SO-1")).await;
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("delivered through the tunnel")
        .unwrap();
    rx.wait_for(1, Duration::from_secs(10)).await;
    let mut seen = proxy.seen();
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("CONNECT localhost:{port} HTTP/1.1"),
            format!("POST {} HTTP/1.1", rx.url),
        ],
        "both with the credentials (no 407)"
    );

    // An endpoint's proxy_url with credentials is refused, unrepeated.
    let mut e = endpoint(&rx.url);
    e.proxy_url = proxy.url_with(PROXY_USERINFO);
    let status = admin
        .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
        .await
        .unwrap_err();
    assert!(!status.message().contains("p%40ss"), "{status:?}");
    assert!(status.message().contains("http_proxy"), "{status:?}");
    assert_invalid(status, "endpoint.proxy_url");

    // Without credentials the proxy refuses: 407, recorded, nothing sent.
    let bare = proxy.url.clone();
    let server = TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), move |c| {
        c.http_proxy = Some(bare.into());
    })
    .await;
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    let offset = publish(&mut server.publisher().await, pick("pa-2", "SO-2")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Failed, 1).await;
    let a = attempts(&mut admin, &ep.id, offset).await;
    assert_eq!(a[0].status, 407, "{a:?}");
    assert_eq!(rx.count(), 1, "only the first broker's request got through");
}

/// The real binary at TRACE with credentials in `HTTP_PROXY`: delivered
/// through the proxy, and neither the password nor the Basic value in any
/// log line.
#[tokio::test]
async fn proxy_credentials_are_never_logged() {
    let proxy = TestProxy::requiring(Some(PROXY_AUTH)).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    let proxy_url = proxy.url_with(PROXY_USERINFO);
    let mut server = crate::support::start_server_with_env(
        &dir.path().join("data"),
        &logs_dir,
        1,
        &[
            ("STEVEDORE_LOG", "trace"),
            ("STEVEDORE_ALLOW_HTTP", "true"),
            ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
            ("HTTP_PROXY", &proxy_url),
        ],
    )
    .await
    .unwrap();
    let channel = crate::support::connect(&server.addr).await.unwrap();
    let mut admin = stevedore::pb::admin_client::AdminClient::new(channel.clone());
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    publish(
        &mut stevedore::pb::publisher_client::PublisherClient::new(channel),
        pick("pl-1", "SO-1"),
    )
    .await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    assert_eq!(proxy.seen(), [format!("POST {} HTTP/1.1", rx.url)]);
    drop(admin);
    std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let logs = crate::support::read_stderr(&logs_dir, 1);
    assert!(logs.contains("TRACE"), "the capture works: {logs}");
    for secret in ["p%40ss", "p@ss", "ZWdyZXNzQGNvcnA6cEBzczox"] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}
