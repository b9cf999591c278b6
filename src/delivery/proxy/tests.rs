//! Proxy settings and routes, and the connector over a mock direct
//! connector under paused time.

use std::net::IpAddr;

use super::*;

#[test]
fn proxy_urls() {
    assert_eq!(
        parse_proxy("http://proxy.corp:3128"),
        Ok(Proxy {
            host: "proxy.corp".into(),
            port: 3128,
            auth: None,
        })
    );
    assert_eq!(parse_proxy("http://10.0.0.1").unwrap().port, 80);
    for bad in [
        "https://p:1",
        "socks5://p:1",
        "http://:pw@p:1",
        "http://user:pw%ff@p:1",
        "http://p:1/x",
        "p:1",
        "",
    ] {
        let e = parse_proxy(bad).unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }
    // Credentials, percent-decoded, as HTTP Basic; never in Debug.
    let p = parse_proxy("http://egress%40corp:p%3Ass@proxy.corp:3128").unwrap();
    assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
    let auth = p.auth.as_ref().unwrap().header();
    assert_eq!(auth, "Basic ZWdyZXNzQGNvcnA6cDpzcw=="); // egress@corp:p:ss
    assert!(auth.is_sensitive());
    assert!(!format!("{p:?}").contains("ZWdy"), "{p:?}");
    let r = Route::from_settings(Some("http://u:pw@hp:1"), Some("http://u:pw@sp:2"), &[]);
    assert_eq!(
        r.forwarding_auth(&"http://erp.example.com/h".parse().unwrap()),
        Some(&HeaderValue::from_static("Basic dTpwdw=="))
    );
    assert_eq!(
        r.forwarding_auth(&"https://erp.example.com/h".parse().unwrap()),
        None
    );
    let e = r.for_endpoint("http://u:pw@ep:9").unwrap_err();
    assert!(e.contains("http_proxy") && !e.contains("pw"), "{e}");
}

#[test]
fn routes_pick_a_proxy_per_scheme_except_no_proxy_hosts() {
    let no_proxy = parse_no_proxy("internal.corp, .svc.local,10.0.0.0/8, 192.168.1.5").unwrap();
    let r = Route::from_settings(Some("http://hp:1"), Some("http://sp:2"), &no_proxy);
    let via = |u: &str| r.proxy_for(&u.parse().unwrap()).map(|p| p.host.clone());
    assert_eq!(via("https://erp.example.com/h").as_deref(), Some("sp"));
    assert_eq!(via("http://erp.example.com/h").as_deref(), Some("hp"));
    assert_eq!(via("https://internal.corp/h"), None);
    assert_eq!(via("https://a.b.internal.corp/h"), None);
    assert_eq!(via("https://notinternal.corp/h").as_deref(), Some("sp"));
    assert_eq!(via("https://x.svc.local/h"), None);
    assert_eq!(via("https://10.1.2.3/h"), None);
    assert_eq!(via("https://192.168.1.5/h"), None);
    assert_eq!(via("https://192.168.1.6/h").as_deref(), Some("sp"));
    let all = Route::from_settings(Some("http://hp:1"), None, &["*".into()]);
    assert!(all.proxy_for(&"http://a/".parse().unwrap()).is_none());
    assert!(parse_no_proxy("a,b c").is_err());

    let direct = r.for_endpoint("none").unwrap();
    assert!(direct
        .proxy_for(&"https://erp.example.com/".parse().unwrap())
        .is_none());
    let own = r.for_endpoint("http://ep:9").unwrap();
    let p = own
        .proxy_for(&"https://internal.corp/".parse().unwrap())
        .unwrap();
    assert_eq!((p.host.as_str(), p.port), ("ep", 9));
    assert!(r.for_endpoint("ftp://x").is_err());
}

mod connector {
    //! The connector over a `tower_test` mock direct connector.

    use hyper_util::rt::TokioIo;
    use tokio::{
        net::{TcpListener, TcpStream},
        time::Instant,
    };
    use tower_test::mock::{self, Handle, Spawn};

    use super::*;

    type Direct = mock::Mock<Uri, TokioIo<TcpStream>>;

    /// Two ends of a loopback connection (made before time is paused).
    async fn loopback() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    fn connector(
        route: Route,
    ) -> (
        Spawn<ProxyConnector<Direct>>,
        Handle<Uri, TokioIo<TcpStream>>,
    ) {
        let (direct, handle) = mock::pair();
        (
            Spawn::new(ProxyConnector::new(direct, route, Guard::default())),
            handle,
        )
    }

    /// A direct route: readiness is the direct connector's, and the target
    /// goes to it as it is; the connection is not marked as proxied.
    #[tokio::test]
    async fn direct_targets_go_to_the_direct_connector() {
        let (ours, _theirs) = loopback().await;
        tokio::time::pause();
        let (mut c, mut handle) = connector(Route::direct());
        handle.allow(0);
        assert!(c.poll_ready().is_pending(), "the direct connector is busy");
        handle.allow(1);
        assert!(c.is_woken());
        assert!(c.poll_ready().is_ready());
        let connecting = tokio::spawn(c.call(Uri::from_static("https://erp.example.com/h")));
        let (uri, reply) = handle.next_request().await.expect("the target went direct");
        assert_eq!(uri, "https://erp.example.com/h");
        reply.send_response(TokioIo::new(ours));
        let conn = connecting.await.unwrap().unwrap();
        assert!(!conn.connected().is_proxied());
    }

    /// Through a proxy, a target the guard blocks fails with the guard's
    /// error before the proxy is contacted (none listens at its port) and
    /// without the direct connector.
    #[tokio::test(start_paused = true)]
    async fn a_blocked_target_is_refused_before_the_proxy() {
        let route = Route::from_settings(None, Some("http://127.0.0.1:1"), &[]);
        let (mut c, mut handle) = connector(route);
        assert!(c.poll_ready().is_ready());
        let err = c
            .call(Uri::from_static("https://127.0.0.1:8443/h"))
            .await
            .unwrap_err();
        let blocked = egress::find_blocked(&*err).expect("the guard's error");
        assert_eq!(blocked.addr, IpAddr::from([127, 0, 0, 1]));
        drop(c);
        assert!(handle.next_request().await.is_none(), "nothing went direct");
    }

    /// A proxy that accepts but never answers CONNECT: the connect fails
    /// after `PROXY_CONNECT_TIMEOUT`, and the direct connector is
    /// never used.
    #[tokio::test]
    async fn a_silent_proxy_times_out() {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", proxy.local_addr().unwrap());
        let (mut c, mut handle) = connector(Route::from_settings(None, Some(&url), &[]));
        let silent = tokio::spawn(async move {
            // Holds the connection open, silent, until aborted.
            let _tcp = proxy.accept().await;
            std::future::pending::<()>().await;
        });
        tokio::time::pause();
        let start = Instant::now();
        assert!(c.poll_ready().is_ready());
        let err = c
            .call(Uri::from_static("https://93.184.216.34/h"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "the proxy did not answer in time");
        // Paused mid-millisecond: the timer fires on the next tick.
        let waited = start.elapsed();
        assert!(
            waited >= PROXY_CONNECT_TIMEOUT
                && waited <= PROXY_CONNECT_TIMEOUT + std::time::Duration::from_millis(1),
            "{waited:?}"
        );
        silent.abort();
        drop(c);
        assert!(handle.next_request().await.is_none(), "nothing went direct");
    }

    /// A plain-HTTP target through a proxy: the connection goes to the
    /// proxy and is marked proxied, so hyper writes absolute-form targets.
    #[tokio::test]
    async fn plain_http_through_a_proxy_is_marked_proxied() {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", proxy.local_addr().unwrap());
        let (mut c, _handle) = connector(Route::from_settings(Some(&url), None, &[]));
        assert!(c.poll_ready().is_ready());
        let (conn, accepted) = tokio::join!(
            c.call(Uri::from_static("http://93.184.216.34/h")),
            proxy.accept()
        );
        accepted.unwrap();
        assert!(conn.unwrap().connected().is_proxied());
    }
}
