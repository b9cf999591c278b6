//! The console (#16) without a browser: the real broker with its console on
//! `127.0.0.1:0`, driven by a plain HTTP/1.1 client over a TCP socket, the
//! way a browser posts forms (cookie, Origin, CSRF field).

use std::{sync::Arc, time::Duration};

use stevedore::{auth::Role, config::Config, pb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{
    console::{
        create, encode, endpoints, open_live, parse_response, read_until, secret_in, start_console,
        Client, ADMIN, HEADER_VALUE, PUBLISHER,
    },
    pick, publish, test_tokens, verify_signature, Behavior, Receiver, TestServer,
};

#[tokio::test]
async fn login_cookie_flags_wrong_token_and_logout() {
    let server = start_console(
        &[
            ("ops", Role::Admin, ADMIN),
            ("feed", Role::Publisher, PUBLISHER),
        ],
        |_| {},
    )
    .await;
    assert!(
        server.started().await.console_login.is_none(),
        "no one-time link with tokens"
    );
    let mut c = Client::new(&server).await;
    let page = c.get("/").await;
    assert_eq!(
        (page.status, page.header("location")),
        (303, Some("/login"))
    );
    let page = c.get("/login").await;
    assert!(page.body.contains("type=\"password\""), "{}", page.body);

    let page = c.login("wrong-token-wrong-token").await;
    assert_eq!(page.status, 401);
    assert!(
        page.body.contains("unknown or revoked token"),
        "{}",
        page.body
    );
    assert!(page.header("set-cookie").is_none());
    let page = c.login(PUBLISHER).await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("needs admin"), "{}", page.body);
    assert!(c.cookie.is_none());

    let page = c.login(ADMIN).await;
    assert_eq!(page.status, 303);
    let cookie = page.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains(ADMIN), "{cookie}");
    let page = c.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("ops"), "the token's name is shown");

    let csrf = page.csrf();
    assert_eq!(c.post("/logout", &[("csrf", &csrf)]).await.status, 303);
    let page = c.get("/").await;
    assert_eq!(page.status, 303, "the session ended at logout");
    server.stop().await;
}

#[tokio::test]
async fn csrf_and_foreign_origin_are_refused() {
    let server = start_console(&[("ops", Role::Admin, ADMIN)], |_| {}).await;
    let mut c = Client::new(&server).await;
    // A login posted from another site is refused before the token is checked.
    let body = encode(&[("token", ADMIN)]);
    let page = c
        .raw(
            "POST",
            "/login",
            &[("origin", "http://evil.example")],
            &body,
        )
        .await;
    assert_eq!(page.status, 403);
    assert!(page.header("set-cookie").is_none());
    c.login(ADMIN).await;
    let csrf = c.get("/endpoints/new").await.csrf();
    let form = |csrf: &str| encode(&[("csrf", csrf), ("url", "http://127.0.0.1:9/hook")]);
    let origin = format!("http://{}", c.host);
    for (headers, body, why) in [
        (vec![("origin", origin.as_str())], form(""), "no CSRF token"),
        (
            vec![("origin", origin.as_str())],
            form("not-the-token"),
            "wrong CSRF token",
        ),
        (
            vec![("origin", "http://evil.example")],
            form(&csrf),
            "foreign Origin",
        ),
        (
            vec![("referer", "http://evil.example/x")],
            form(&csrf),
            "foreign Referer",
        ),
        (vec![], form(&csrf), "no Origin or Referer"),
    ] {
        let page = c.raw("POST", "/endpoints/new", &headers, &body).await;
        assert_eq!(page.status, 403, "{why}: {}", page.body);
    }
    assert!(
        endpoints(&server, Some(ADMIN)).await.is_empty(),
        "nothing was created"
    );
    // The same form from the console itself goes through.
    let page = c
        .raw(
            "POST",
            "/endpoints/new",
            &[("origin", &origin)],
            &form(&csrf),
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(endpoints(&server, Some(ADMIN)).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn security_headers_on_every_page() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    let receiver = Receiver::start().await;
    let page = c.login_once(&server).await;
    assert_eq!(page.status, 303);
    let (id, secret_page) = create(&c, &receiver.url, &[]).await;
    let mut pages = vec![secret_page];
    for path in [
        "/login".to_owned(),
        "/".into(),
        "/endpoints/new".into(),
        format!("/endpoints/{id}"),
        format!("/endpoints/{id}/edit"),
        "/catalog".into(),
        "/live".into(),
    ] {
        let page = c.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        pages.push(page);
    }
    for page in &pages {
        let csp = page.header("content-security-policy").expect("CSP");
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(page.header("cache-control"), Some("no-store"));
        // No inline script anywhere (the CSP would block it).
        assert!(!page.body.contains("<script>"), "{}", page.body);
    }
    let js = c.get("/static/htmx.min.js").await;
    assert_eq!(
        (js.status, js.header("content-type")),
        (200, Some("text/javascript"))
    );
    assert_eq!(js.header("x-content-type-options"), Some("nosniff"));
    server.stop().await;
}

#[tokio::test]
async fn one_time_link_works_once() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    assert_eq!(c.login_once(&server).await.status, 303);
    assert_eq!(c.get("/").await.status, 200);
    let mut other = Client::new(&server).await;
    let page = other.login_once(&server).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert_eq!(other.get("/").await.status, 303);
    // With authentication off the token form is refused.
    assert_eq!(other.login("anything-anything").await.status, 403);
    server.stop().await;
}

#[tokio::test]
async fn pages_secret_once_header_values_never() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    // Empty.
    for path in ["/", "/endpoints/new", "/catalog", "/live"] {
        let page = c.get(path).await;
        assert_eq!(page.status, 200, "{path}");
    }
    assert!(c.get("/").await.body.contains("No endpoints yet"));
    assert!(
        c.get("/catalog").await.body.contains("ORD-2026-987654"),
        "samples shown"
    );

    // Validation errors are the gRPC ones, inline, and change nothing.
    let csrf = c.get("/endpoints/new").await.csrf();
    let page = c
        .post(
            "/endpoints/new",
            &[
                ("csrf", &csrf),
                ("url", "http://127.0.0.1:9/h"),
                ("filter", "data.status =="),
            ],
        )
        .await;
    assert_eq!(page.status, 422);
    assert!(
        page.body.contains("endpoint.filter: column 15"),
        "{}",
        page.body
    );
    assert!(endpoints(&server, None).await.is_empty());

    // Populated.
    let receiver = Receiver::start().await;
    let (id, page) = create(&c, &receiver.url, &[]).await;
    let secret = secret_in(&page);
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(!page.body.contains(HEADER_VALUE));
    let mut publisher = server.publisher().await;
    let offset = publish(&mut publisher, pick("console-pick-1", "ORD-1")).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    verify_signature(&secret, &got[0]).expect("the secret shown is the endpoint's");
    assert_eq!(got[0].header("x-api-key"), Some(HEADER_VALUE));
    // The pages show the delivery once its record is written (waiting for
    // the word "delivered" on the page raced: the state filter's menu has
    // it from the start).
    let mut admin = server.admin().await;
    crate::support::wait_state(&mut admin, &id, pb::DeliveryState::Delivered, 1).await;
    let detail = format!("/endpoints/{id}");
    let page = c.get(&detail).await;
    assert!(page.body.contains("console-pick-1"), "{}", page.body);
    let delivery = c.get(&format!("/endpoints/{id}/deliveries/{offset}")).await;
    assert_eq!(delivery.status, 200);
    assert!(
        delivery.body.contains("<table id=\"attempts\">"),
        "{}",
        delivery.body
    );
    assert!(delivery.body.contains("ORD-1"), "the source event is shown");
    assert!(delivery.body.contains("standardwebhooks"));
    for path in [
        "/".to_owned(),
        detail.clone(),
        format!("{detail}/edit"),
        format!("/endpoints/{id}/deliveries/{offset}"),
        "/live".into(),
    ] {
        let page = c.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(
            !page.body.contains(&secret),
            "{path} shows the secret again"
        );
        assert!(
            !page.body.contains(HEADER_VALUE),
            "{path} shows a header value"
        );
    }
    assert!(
        c.get(&format!("{detail}/edit"))
            .await
            .body
            .contains("X-Api-Key"),
        "names are shown"
    );
    assert_eq!(c.get("/endpoints/nope").await.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn update_sends_only_changed_fields() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    let (id, _) = create(&c, &receiver.url, &[("description", "before")]).await;
    let edit = format!("/endpoints/{id}/edit");
    let csrf = c.get(&edit).await.csrf();
    // The form as a browser posts it back: every field, the header's value
    // box left empty. Only the description changed.
    let form = [
        ("csrf", csrf.as_str()),
        ("url", receiver.url.as_str()),
        ("description", "after"),
        ("event_types", "pick.confirmed"),
        ("header_name", "X-Api-Key"),
        ("header_value", ""),
        ("header_name", ""),
        ("header_value", ""),
        ("ordering", "key"),
    ];
    let page = c.post(&edit, &form).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let e = endpoints(&server, None).await.remove(0);
    assert_eq!(e.description, "after");
    // The header kept its real value: sending the whole endpoint would have
    // overwritten it with the redacted placeholder.
    let mut publisher = server.publisher().await;
    publish(&mut publisher, pick("console-pick-2", "ORD-2")).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("x-api-key"), Some(HEADER_VALUE));

    // Removing a header the endpoint does not have is refused, naming the
    // header, and changes nothing (header edits by name: console_ops.rs).
    let mut form = form.to_vec();
    form[6] = ("header_name", "X-Other");
    form[7] = ("header_value", "other-value");
    form.push(("header_remove", "X-Nope"));
    let page = c.post(&edit, &form).await;
    assert_eq!(page.status, 422);
    assert!(
        page.body
            .contains("headers[&#34;X-Nope&#34;]: no such header to remove"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("other-value"));
    assert_eq!(endpoints(&server, None).await[0].headers.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn actions_retry_dead_pause_resume_rotate() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Behavior::Status(500));
    let (id, _) = create(&c, &receiver.url, &[("retry_schedule", "0s")]).await;
    let mut publisher = server.publisher().await;
    let offset = publish(&mut publisher, pick("console-dead-1", "ORD-3")).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let detail = format!("/endpoints/{id}");
    let mut page = c.get(&format!("{detail}?state=dead")).await;
    for _ in 0..50 {
        if page.body.contains("console-dead-1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = c.get(&format!("{detail}?state=dead")).await;
    }
    assert!(page.body.contains("console-dead-1"), "{}", page.body);
    // The overview says the endpoint is failing and when it auto-disables
    // (auto_disable_after, 5 days by default).
    let mut overview = c.get("/").await;
    for _ in 0..50 {
        if overview.body.contains("auto-disables in") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        overview = c.get("/").await;
    }
    assert!(
        overview.body.contains("auto-disables in 4d 23h"),
        "{}",
        overview.body
    );
    receiver.set_default(Behavior::Status(200));
    let action = format!("{detail}/action");
    let off = offset.to_string();
    let page = c
        .post(
            &action,
            &[("csrf", &page.csrf()), ("op", "retry"), ("offset", &off)],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("retrying delivery"), "{}", page.body);
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let csrf = page.csrf();

    let page = c.post(&action, &[("csrf", &csrf), ("op", "pause")]).await;
    assert!(page.body.contains("paused"), "{}", page.body);
    assert_eq!(endpoints(&server, None).await[0].enabled, Some(false));
    c.post(&action, &[("csrf", &csrf), ("op", "resume")]).await;
    assert_ne!(endpoints(&server, None).await[0].enabled, Some(false));

    let page = c
        .post(
            &action,
            &[("csrf", &csrf), ("op", "rotate"), ("grace", "1h")],
        )
        .await;
    let secret = secret_in(&page);
    assert!(secret.starts_with("whsec_"));
    let shown = c.get(&detail).await.body;
    assert!(!shown.contains(&secret));
    assert!(
        shown.contains("rotated: requests carry a signature with the previous secret too, until"),
        "the grace period's end is shown: {shown}"
    );

    let page = c.post(&action, &[("csrf", &csrf), ("op", "test")]).await;
    assert!(page.body.contains("delivered (status 200"), "{}", page.body);

    // Delete needs the id typed.
    let page = c
        .post(
            &action,
            &[("csrf", &csrf), ("op", "delete"), ("confirm", "x")],
        )
        .await;
    assert_eq!(page.status, 422);
    assert_eq!(endpoints(&server, None).await.len(), 1);
    let page = c
        .post(
            &action,
            &[("csrf", &csrf), ("op", "delete"), ("confirm", &id)],
        )
        .await;
    assert_eq!(page.status, 303);
    assert!(endpoints(&server, None).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn live_frame_arrives_after_a_delivery() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    let (id, _) = create(&c, &receiver.url, &[]).await;
    let (mut stream, mut seen) = open_live(&c).await;
    assert!(seen.contains("text/event-stream"), "{seen}");
    let mut publisher = server.publisher().await;
    publish(&mut publisher, pick("console-live-1", "ORD-4")).await;
    read_until(&mut stream, &mut seen, "console-live-1").await;
    assert!(seen.contains("event: delivery"), "{seen}");
    assert!(
        seen.contains(&format!("\"endpoint_id\":\"{id}\"")),
        "{seen}"
    );
    assert!(seen.contains("\"state\":\"delivered\""), "{seen}");
    drop(stream);
    // The per-endpoint live page is linked from the endpoint's page.
    let page = c.get(&format!("/endpoints/{id}")).await;
    assert!(
        page.body.contains(&format!("href=\"/live?endpoint={id}\"")),
        "{}",
        page.body
    );
    let page = c.get(&format!("/live?endpoint={id}")).await;
    assert!(
        page.body.contains(&format!("data-endpoint=\"{id}\"")),
        "{}",
        page.body
    );
    server.stop().await;
}

#[tokio::test]
async fn console_off_listens_nowhere() {
    let server = TestServer::start().await;
    let started = server.started().await;
    assert!(started.console_url.is_none() && started.console_login.is_none());
    server.stop().await;
    // The default is loopback 9465; `off` disables.
    assert_eq!(
        Config::default().console_listen,
        Some("127.0.0.1:9465".parse().unwrap())
    );
    let off = [("STEVEDORE_CONSOLE_LISTEN".to_owned(), "off".to_owned())];
    let config = Config::load(None, off, &[]).unwrap();
    assert_eq!(config.console_listen, None);
}

#[test]
fn non_loopback_console_needs_tokens_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::self_signed(dir.path());
    let mut config = Config {
        console_listen: Some("0.0.0.0:9465".parse().unwrap()),
        ..Config::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("config key `console_listen`") && err.contains("tokens"),
        "{err}"
    );
    config.tokens = test_tokens(&[("ops", Role::Admin, ADMIN)]);
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("config key `console_listen`") && err.contains("TLS"),
        "{err}"
    );
    assert!(!err.contains(ADMIN));
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config.validate().unwrap();
}

#[tokio::test]
async fn under_tls_the_cookie_is_secure_with_the_host_prefix() {
    use rustls_pki_types::pem::PemObject;
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::self_signed(certs.path());
    let cert_pem = std::fs::read(&cert).unwrap();
    let server = start_console(&[("ops", Role::Admin, ADMIN)], move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    let url = server.started().await.console_url.unwrap();
    let host = url
        .strip_prefix("https://")
        .expect("the console serves TLS");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&cert_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(host).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let body = encode(&[("token", ADMIN)]);
    let req = format!(
        "POST /login HTTP/1.1\r\nhost: {host}\r\norigin: https://{host}\r\nconnection: close\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    let page = parse_response(&String::from_utf8_lossy(&out));
    assert_eq!(page.status, 303, "{}", page.body);
    let cookie = page.header("set-cookie").unwrap();
    assert!(cookie.starts_with("__Host-stevedore_session="), "{cookie}");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    server.stop().await;
}

/// Tenants (#18) on the console: a tenant administrator who logs in sees and
/// changes only its tenant's endpoints, deliveries and events — pages,
/// actions and the live tail — and what it creates belongs to its tenant.
#[tokio::test]
async fn a_tenant_admin_sees_and_changes_only_its_tenant() {
    use crate::support::tenants::{self, ACME_ADMIN, ACME_PUB, BETA_ADMIN, BETA_PUB};
    let server = tenants::two_tenants(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let receiver = Receiver::start().await;
    let mut beta = server.admin_as(Some(BETA_ADMIN)).await;
    let theirs = tenants::create_as(&mut beta, tenants::hook(&receiver.url)).await;
    let mut beta_pub = server.publisher_as(Some(BETA_PUB)).await;
    let mut event = tenants::pick_of("beta", "ORD-BETA-SECRET");
    event.id = "beta-pick-1".into();
    let beta_offset = tenants::publish_as(&mut beta_pub, event).await;

    let mut c = Client::new(&server).await;
    assert_eq!(c.login(ACME_ADMIN).await.status, 303);
    // Live tail from before anything of acme's happens.
    let (mut stream, mut seen) = open_live(&c).await;

    let (mine, _) = create(&c, &receiver.url, &[]).await;
    let mut root = server.admin_as(Some(tenants::ROOT)).await;
    let created = root
        .get_endpoint(pb::GetEndpointRequest { id: mine.clone() })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(
        created.tenant, "acme",
        "created through the console as acme"
    );

    // Pages: only acme's endpoint; beta's is not found, by page or action.
    let overview = c.get("/").await;
    assert!(overview.body.contains(&mine), "{}", overview.body);
    assert!(!overview.body.contains(&theirs.id), "{}", overview.body);
    for path in [
        format!("/endpoints/{}", theirs.id),
        format!("/endpoints/{}/edit", theirs.id),
        format!("/endpoints/{}/deliveries/{beta_offset}", theirs.id),
        // acme's endpoint, beta's event.
        format!("/endpoints/{mine}/deliveries/{beta_offset}"),
    ] {
        let page = c.get(&path).await;
        assert_eq!(page.status, 404, "{path}: {}", page.body);
        assert!(!page.body.contains("ORD-BETA-SECRET"), "{path}");
    }
    // The catalog's playground on beta's event: not found.
    let page = c
        .get(&format!(
            "/catalog?type=pick.confirmed&offset={beta_offset}"
        ))
        .await;
    assert!(page.body.contains("no event at offset"), "{}", page.body);
    assert!(!page.body.contains("ORD-BETA-SECRET"), "{}", page.body);
    let csrf = overview.csrf();
    let page = c
        .post(
            &format!("/endpoints/{}/action", theirs.id),
            &[("csrf", &csrf), ("op", "pause")],
        )
        .await;
    assert_eq!(page.status, 404, "{}", page.body);
    let still = root
        .get_endpoint(pb::GetEndpointRequest {
            id: theirs.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_ne!(still.enabled, Some(false), "beta's endpoint was not paused");

    // Live: acme's delivery shows, beta's never (published before and after).
    let mut acme_pub = server.publisher_as(Some(ACME_PUB)).await;
    let mut event = tenants::pick_of("beta", "ORD-BETA-2");
    event.id = "beta-pick-2".into();
    tenants::publish_as(&mut beta_pub, event).await;
    let mut event = tenants::pick_of("acme", "ORD-ACME-1");
    event.id = "acme-pick-1".into();
    tenants::publish_as(&mut acme_pub, event).await;
    read_until(&mut stream, &mut seen, "acme-pick-1").await;
    // beta's endpoint got both of beta's events by now or soon; give its
    // frames the time to arrive, then check none did.
    receiver.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = [0u8; 4096];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
    {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!seen.contains("beta-pick"), "{seen}");
    assert!(!seen.contains(&theirs.id), "{seen}");
    drop(stream);
    server.stop().await;
}
