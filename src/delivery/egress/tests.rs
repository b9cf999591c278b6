//! The SSRF guard's tests: the tables, the allowlist, the connector.

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn category(s: &str) -> Option<&'static str> {
    classify(ip(s)).map(|b| b.category)
}

#[test]
fn tables_are_well_formed() {
    for (c, _) in BLOCKED_V4.iter().chain(BLOCKED_V6) {
        let net = c.net();
        assert!(net.prefix_len() <= net.max_prefix_len(), "{c}");
        assert_eq!(net.trunc(), net, "{c} has host bits");
        assert_eq!(c.to_string().parse::<Cidr>(), Ok(*c));
    }
}

#[test]
fn ipv4_ranges() {
    for (addr, want) in [
        ("0.0.0.0", "unspecified (\"this network\")"),
        ("0.1.2.3", "unspecified (\"this network\")"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private (RFC 1918)"),
        ("10.255.255.255", "private (RFC 1918)"),
        ("172.16.0.1", "private (RFC 1918)"),
        ("172.31.255.255", "private (RFC 1918)"),
        ("192.168.1.1", "private (RFC 1918)"),
        ("100.64.0.1", "carrier-grade NAT (RFC 6598)"),
        ("100.127.255.255", "carrier-grade NAT (RFC 6598)"),
        ("100.100.100.200", "carrier-grade NAT (RFC 6598)"),
        ("169.254.169.254", "cloud metadata (link-local)"),
        ("169.254.0.1", "link-local"),
        ("192.0.0.170", "reserved (IETF protocol assignments)"),
        ("192.0.2.1", "documentation (TEST-NET-1)"),
        ("198.51.100.7", "documentation (TEST-NET-2)"),
        ("203.0.113.9", "documentation (TEST-NET-3)"),
        ("198.18.0.1", "benchmarking (RFC 2544)"),
        ("198.19.255.255", "benchmarking (RFC 2544)"),
        ("192.88.99.1", "reserved (6to4 relay anycast)"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved (future use)"),
        ("255.255.255.255", "broadcast"),
    ] {
        assert_eq!(category(addr), Some(want), "{addr}");
    }
    for public in [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "172.15.255.255",
        "172.32.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "192.169.0.1",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "11.0.0.0",
        "126.255.255.255",
        "128.0.0.0",
    ] {
        assert_eq!(category(public), None, "{public}");
    }
}

#[test]
fn ipv6_ranges() {
    for (addr, want) in [
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::7f00:1", "IPv4-compatible (deprecated)"),
        ("::808:808", "IPv4-compatible (deprecated)"),
        ("::ffff:0:808:808", "IPv4-translated (reserved)"),
        ("64:ff9b:1::1", "private (local-use NAT64)"),
        ("100::1", "reserved (discard-only)"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001:2::1", "benchmarking"),
        ("2001:10::1", "reserved (ORCHID)"),
        ("2001:20::1", "reserved (ORCHIDv2)"),
        ("fd00:ec2::254", "cloud metadata (unique local)"),
        ("fc00::1", "unique local (private)"),
        ("fdff:ffff::1", "unique local (private)"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("fec0::1", "site-local (deprecated)"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
    ] {
        assert_eq!(category(addr), Some(want), "{addr}");
    }
    for public in [
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2a00:1450::1",
        "fbff::1",
        "fe00::1",
        "2001:db9::1",
    ] {
        assert_eq!(category(public), None, "{public}");
    }
}

#[test]
fn ipv4_embedded_in_ipv6() {
    for (addr, how, v4, want) in [
        ("::ffff:127.0.0.1", "IPv4-mapped", "127.0.0.1", "loopback"),
        (
            "::ffff:10.1.2.3",
            "IPv4-mapped",
            "10.1.2.3",
            "private (RFC 1918)",
        ),
        (
            "::ffff:169.254.169.254",
            "IPv4-mapped",
            "169.254.169.254",
            "cloud metadata (link-local)",
        ),
        ("64:ff9b::7f00:1", "NAT64", "127.0.0.1", "loopback"),
        (
            "64:ff9b::a9fe:a9fe",
            "NAT64",
            "169.254.169.254",
            "cloud metadata (link-local)",
        ),
        ("2002:7f00:1::1", "6to4", "127.0.0.1", "loopback"),
        (
            "2002:c0a8:101::",
            "6to4",
            "192.168.1.1",
            "private (RFC 1918)",
        ),
        // Teredo server 10.0.0.1; client 8.8.8.8 (stored inverted).
        (
            "2001:0:a00:1::f7f7:f7f7",
            "Teredo server",
            "10.0.0.1",
            "private (RFC 1918)",
        ),
        // Server 8.8.8.8; client 127.0.0.1, inverted: 80ff:fffe.
        (
            "2001:0:808:808::80ff:fffe",
            "Teredo client",
            "127.0.0.1",
            "loopback",
        ),
    ] {
        let b = classify(ip(addr)).unwrap_or_else(|| panic!("{addr} not blocked"));
        assert_eq!(b.category, want, "{addr}");
        assert_eq!(b.embedded, Some((how, v4.parse().unwrap())), "{addr}");
    }
    for public in [
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001:0:808:808::f7f7:f7f7",
    ] {
        assert_eq!(classify(ip(public)), None, "{public}");
    }
}

#[test]
fn allowlist_exempts_ranges_and_their_mapped_forms() {
    let guard = Guard::new(&parse_networks("127.0.0.0/8, ::1/128,fd12::/16").unwrap());
    for allowed in [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
        "fd12::5",
        "8.8.8.8",
    ] {
        assert_eq!(guard.check(ip(allowed)), None, "{allowed}");
    }
    for blocked in ["10.0.0.1", "169.254.169.254", "fd13::1", "::ffff:10.0.0.1"] {
        assert!(guard.check(ip(blocked)).is_some(), "{blocked}");
    }
    let none = Guard::default();
    assert!(none.check(ip("127.0.0.1")).is_some());
    assert!(none.check(ip("::ffff:127.0.0.1")).is_some());
}

/// Issue #21: with the Teredo server's network allowed, a blocked
/// client address (here the metadata service, obfuscated) still blocks;
/// every embedded address must pass, in every embedding form.
#[test]
fn every_embedded_ipv4_must_pass_the_allowlist() {
    let guard = Guard::new(&parse_networks("10.20.0.0/16").unwrap());
    // Server 10.20.0.5 (0a14:0005); client 169.254.169.254, inverted.
    let b = guard
        .check(ip("2001:0:a14:5::5601:5601"))
        .expect("the Teredo client is the metadata service");
    assert_eq!(
        b.embedded,
        Some(("Teredo client", "169.254.169.254".parse().unwrap()))
    );
    // Client 10.20.0.6 (inverted f5eb:fff9), server 127.0.0.1.
    let b = guard
        .check(ip("2001:0:7f00:1::f5eb:fff9"))
        .expect("the Teredo server is loopback");
    assert_eq!(
        b.embedded,
        Some(("Teredo server", "127.0.0.1".parse().unwrap()))
    );
    // Both in the allowed network: allowed.
    assert_eq!(guard.check(ip("2001:0:a14:5::f5eb:fff9")), None);
    // Server allowed, client public: allowed.
    assert_eq!(guard.check(ip("2001:0:a14:5::f7f7:f7f7")), None);
    // The single-address forms of an allowed address pass, of a blocked
    // one do not.
    for allowed in ["::ffff:10.20.0.5", "64:ff9b::a14:5", "2002:a14:5::1"] {
        assert_eq!(guard.check(ip(allowed)), None, "{allowed}");
    }
    for blocked in [
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "2002:a15:5::1",
    ] {
        assert!(guard.check(ip(blocked)).is_some(), "{blocked}");
    }
}

#[test]
fn cidr_parsing() {
    assert_eq!(parse_networks("").unwrap(), vec![]);
    assert_eq!(
        parse_networks("10.0.0.0/8,fd00::/8, 192.0.2.1").unwrap(),
        vec![
            Cidr::v4(10, 0, 0, 0, 8),
            Cidr::v6([0xfd00, 0, 0, 0, 0, 0, 0, 0], 8),
            Cidr::v4(192, 0, 2, 1, 32),
        ]
    );
    assert!(Cidr::v4(0, 0, 0, 0, 0).contains(ip("8.8.8.8")));
    assert!(!Cidr::v4(0, 0, 0, 0, 0).contains(ip("::1")));
    for (bad, why) in [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "0 to 32"),
        ("fd00::/129", "0 to 128"),
        ("10.0.0.0/x", "prefix length"),
        ("example.com/8", "not a CIDR"),
        ("10.0.0/8", "not a CIDR"),
    ] {
        let err = parse_networks(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn literal_hosts() {
    let lit = |u: &str| literal_ip(&u.parse().unwrap());
    assert_eq!(lit("http://127.0.0.1:8080/x"), Some(ip("127.0.0.1")));
    assert_eq!(
        lit("http://[::ffff:127.0.0.1]:80/"),
        Some(ip("::ffff:127.0.0.1"))
    );
    assert_eq!(lit("https://[::1]/"), Some(ip("::1")));
    assert_eq!(lit("https://example.com/"), None);
    // Not a literal to HttpConnector either: resolved, then checked.
    assert_eq!(lit("http://2130706433/"), None);
}

#[test]
fn blocked_messages() {
    let guard = Guard::default();
    let b = guard.blocked(ip("169.254.169.254"), None).unwrap();
    assert_eq!(
        b.to_string(),
        "blocked by SSRF guard: 169.254.169.254 is cloud metadata (link-local) in 169.254.169.254/32"
    );
    let b = guard.blocked(ip("::ffff:127.0.0.1"), None).unwrap();
    assert_eq!(
        b.to_string(),
        "blocked by SSRF guard: ::ffff:127.0.0.1 is loopback in 127.0.0.0/8 (IPv4-mapped 127.0.0.1)"
    );
    let b = guard.blocked(ip("127.0.0.1"), Some("localhost")).unwrap();
    assert_eq!(
        b.to_string(),
        "blocked by SSRF guard: 127.0.0.1 (resolved from localhost) is loopback in 127.0.0.0/8"
    );
}

/// A listener on 127.0.0.1 and a connector to it by `host`.
async fn connect(host: &str, allow: &[Cidr]) -> Result<TokioIo<TcpStream>, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = GuardedConnector::new(Guard::new(allow), |h| h.enforce_http(false));
    let uri: Uri = format!("http://{host}:{port}/").parse().unwrap();
    std::future::poll_fn(|cx| c.poll_ready(cx)).await?;
    c.call(uri).await
}

#[tokio::test]
async fn the_connector_checks_literals_names_and_the_allowlist() {
    for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"] {
        let err = connect(host, &[]).await.unwrap_err();
        let b = find_blocked(&*err).unwrap_or_else(|| panic!("{host}: {err}"));
        assert!(b.to_string().contains("loopback"), "{host}: {b}");
    }
    // Not literals to HttpConnector: resolved (getaddrinfo reads them
    // as 127.0.0.1), then checked like any name.
    for host in ["2130706433", "127.1", "0x7f.0.0.1"] {
        let err = connect(host, &[]).await.unwrap_err();
        assert!(find_blocked(&*err).is_some(), "{host}: {err}");
    }
    let allow = parse_networks("127.0.0.0/8").unwrap();
    for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"] {
        // `localhost` may also resolve to ::1 (dropped, not allowed);
        // 127.0.0.1 is left and accepts.
        connect(host, &allow)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
}
