//! Unit tests of endpoint validation and the stored record.

use std::time::Duration;

use prost::Message;

use super::*;
use crate::{
    convert::endpoint::endpoint_from_pb,
    delivery::{
        egress::{self, Guard},
        sealing::MasterKey,
    },
    pb,
};

/// The API's path: the message into the domain (which refuses what the
/// domain cannot hold), then validation against the configuration.
fn from_pb(e: &pb::Endpoint, config: &Config) -> Result<EndpointSpec> {
    EndpointSpec::validate(&endpoint_from_pb(e.clone())?, config)
}

fn ep(url: &str) -> pb::Endpoint {
    pb::Endpoint {
        url: url.into(),
        ..Default::default()
    }
}

#[test]
fn urls() {
    let c = Config::default();
    assert!(from_pb(&ep("https://erp.example.com/hook"), &c).is_ok());
    for (url, why) in [
        ("", "required"),
        ("http://erp.example.com/hook", "allow_http"),
        ("ftp://x/y", "https://"),
        ("/relative", "https://"),
        ("https://user:pw@erp.example.com/", "credentials"),
        ("not a url", "not a valid URL"),
    ] {
        let err = from_pb(&ep(url), &c).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoint.url: ") && err.contains(why),
            "{url}: {err}"
        );
    }
    let c = Config {
        allow_http: true,
        ..Config::default()
    };
    assert!(from_pb(&ep("http://127.0.0.1:9/x"), &c).is_ok());
}

#[test]
fn logs_show_only_the_origin_of_a_url() {
    for (url, shown) in [
        (
            "https://hooks.example.com/services/T0/B0/s3cr3t?token=t0k",
            "https://hooks.example.com",
        ),
        ("http://127.0.0.1:9/x?k=v", "http://127.0.0.1:9"),
        ("https://[::1]:8443/", "https://[::1]:8443"),
    ] {
        assert_eq!(url_origin(&url.parse().unwrap()), shown);
    }
}

#[test]
fn headers() {
    let c = Config::default();
    let mut e = ep("https://h/x");
    e.headers.insert("X-Api-Key".into(), "k".into());
    assert!(from_pb(&e, &c).is_ok());
    for (k, v) in [
        ("webhook-signature", "x"),
        ("Content-Type", "text/plain"),
        ("X-Jasci-Event", "x"),
        ("bad name", "x"),
        ("x-ok", "a\r\nInjected: yes"),
    ] {
        let mut e = ep("https://h/x");
        e.headers.insert(k.into(), v.into());
        let err = from_pb(&e, &c).unwrap_err().to_string();
        assert!(err.starts_with("endpoint.headers["), "{k}: {err}");
    }
}

/// Issue #21: non-ASCII header values are refused (README: visible
/// ASCII), without echoing them.
#[test]
fn header_values_are_visible_ascii() {
    let c = Config::default();
    for v in [
        "caf\u{e9}-cred",
        "\u{80}cred",
        "cred\u{200b}",
        "tab\tcred",
        "\u{7f}cred",
    ] {
        let mut e = ep("https://h/x");
        e.headers.insert("X-Api-Key".into(), v.into());
        let err = from_pb(&e, &c).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoint.headers[\"X-Api-Key\"]") && err.contains("ASCII"),
            "{v:?}: {err}"
        );
        assert!(!err.contains("cred"), "{err}");
    }
    let mut e = ep("https://h/x");
    e.headers.insert(
        "Authorization".into(),
        "Bearer a.b-c_d~!\"#$%&'()*+,/:;<=>?@[\\]^`{|}".into(),
    );
    from_pb(&e, &c).unwrap();
}

/// Issue #21: `event_types` is capped and takes no duplicates.
#[test]
fn event_types_are_capped_and_unique() {
    let c = Config::default();
    let mut e = ep("https://h/x");
    e.event_types = vec!["pick.confirmed".into(); 100_000];
    let err = from_pb(&e, &c).unwrap_err().to_string();
    assert!(
        err.starts_with("endpoint.event_types: at most 256"),
        "{err}"
    );
    e.event_types = vec![
        "pick.confirmed".into(),
        "order.status".into(),
        "pick.confirmed".into(),
    ];
    let err = from_pb(&e, &c).unwrap_err().to_string();
    assert!(
        err.starts_with("endpoint.event_types[2]: duplicate of event_types[0]"),
        "{err}"
    );
    e.event_types = (0..crate::model::MAX_EVENT_TYPES)
        .map(|i| format!("custom.t{i}"))
        .collect();
    from_pb(&e, &c).unwrap();
    e.event_types.push("custom.one_more".into());
    assert!(from_pb(&e, &c).is_err());
}

fn record() -> EndpointRecord {
    let mut e = ep("https://h/x");
    e.id = "ep_1".into();
    e.headers
        .insert("X-Api-Key".into(), "header-credential".into());
    e.oauth2 = Some(pb::OAuth2 {
        token_url: "https://auth.h/token".into(),
        client_id: "client".into(),
        client_secret: "oauth-client-secret".into(),
        ..Default::default()
    });
    EndpointRecord {
        endpoint: endpoint_from_pb(e).unwrap(),
        secret: b"current-secret-bytes".to_vec(),
        previous_secret: b"previous-secret-bytes".to_vec(),
        previous_expires_nanos: 5,
        ..Default::default()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_are_sealed_at_rest_with_a_master_key() {
    let r = record();
    let plain = r.to_stored(None);
    assert!(contains(&plain, b"current-secret-bytes"));
    assert!(!EndpointRecord::is_sealed(&plain));
    assert_eq!(EndpointRecord::from_stored(&plain, None).unwrap(), r);

    let key = MasterKey::from_bytes([1; 32]);
    let sealed = r.to_stored(Some(&key));
    assert!(EndpointRecord::is_sealed(&sealed));
    for secret in [
        &b"current-secret-bytes"[..],
        b"previous-secret-bytes",
        b"header-credential",
        b"oauth-client-secret",
    ] {
        assert!(!contains(&sealed, secret));
    }
    assert!(contains(&sealed, b"https://h/x"), "the rest stays readable");
    assert_eq!(EndpointRecord::from_stored(&sealed, Some(&key)).unwrap(), r);
    // Plaintext records still load with a key (they are migrated).
    assert_eq!(EndpointRecord::from_stored(&plain, Some(&key)).unwrap(), r);

    let err = EndpointRecord::from_stored(&sealed, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ep_1") && err.contains("master_key_file"),
        "{err}"
    );
    let other = MasterKey::from_bytes([2; 32]);
    let err = EndpointRecord::from_stored(&sealed, Some(&other))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("different key") && err.contains("master_key_file"),
        "{err}"
    );

    // Sealed secrets moved to another endpoint's record do not open.
    let mut moved = record::StoredRecord::decode(&*sealed).unwrap();
    moved.endpoint.as_mut().unwrap().id = "ep_2".into();
    assert!(EndpointRecord::from_stored(&moved.encode_to_vec(), Some(&key)).is_err());
}

#[test]
fn debug_shows_no_secret_and_no_header_value() {
    let r = record();
    let spec = EndpointSpec::validate(&r.endpoint, &Config::default()).unwrap();
    let shown = format!("{r:?} {spec:?}");
    for secret in [
        "current-secret-bytes",
        "previous-secret-bytes",
        "header-credential",
        "oauth-client-secret",
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
    // Bytes would show as numbers: make sure those are absent too.
    assert!(!shown.contains(&format!("{:?}", b"current-secret-bytes".to_vec())));
    assert!(
        shown.contains("X-Api-Key") || shown.contains("x-api-key"),
        "{shown}"
    );
}

#[test]
fn bad_header_values_are_not_echoed() {
    let mut e = ep("https://h/x");
    e.headers
        .insert("X-Api-Key".into(), "leaked-credential\r\nX-Evil: 1".into());
    let err = from_pb(&e, &Config::default()).unwrap_err().to_string();
    assert!(err.starts_with("endpoint.headers[\"X-Api-Key\"]"), "{err}");
    assert!(!err.contains("leaked-credential"), "{err}");
    e.headers.insert(
        "X-Api-Key".into(),
        format!("long-credential{}", "x".repeat(5000)),
    );
    let err = from_pb(&e, &Config::default()).unwrap_err().to_string();
    assert!(!err.contains("long-credential"), "{err}");
}

#[test]
fn ip_literals_in_blocked_ranges_are_rejected() {
    let guard = Guard::default();
    let check = |url: &str, guard: &Guard| check_egress(&url.parse().unwrap(), guard);
    for (url, range) in [
        ("https://10.0.0.1/hook", "10.0.0.0/8"),
        ("http://127.0.0.1:8080/hook", "127.0.0.0/8"),
        ("http://[::ffff:127.0.0.1]:8080/hook", "127.0.0.0/8"),
        ("https://[fd00::1]/", "fc00::/7"),
    ] {
        let err = check(url, &guard).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoint.url: ")
                && err.contains(range)
                && err.contains("allow_networks"),
            "{url}: {err}"
        );
    }
    // Never advice to exempt a metadata service.
    for url in [
        "http://169.254.169.254/latest",
        "https://169.254.169.254/latest/meta-data",
    ] {
        let err = check(url, &guard).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoint.url: ")
                && err.contains("169.254.169.254/32")
                && err.contains("cloud metadata")
                && !err.contains("allow_networks"),
            "{err}"
        );
    }
    assert!(check("https://8.8.8.8/", &guard).is_ok());
    // Names are checked when connecting.
    assert!(check("https://localhost/", &guard).is_ok());
    let allow = Guard::new(&egress::parse_networks("127.0.0.0/8").unwrap());
    assert!(check("http://127.0.0.1:8080/hook", &allow).is_ok());
    assert!(check("https://10.0.0.1/hook", &allow).is_err());
}

#[test]
fn schedule_timeout_and_defaults() {
    let c = Config::default();
    let s = from_pb(&ep("https://h/x"), &c).unwrap();
    assert_eq!(s.retry_schedule.len(), 8);
    assert_eq!(s.timeout_for("pick.confirmed", &c), Duration::from_secs(30));
    assert_eq!(
        s.timeout_for("channel_inventory.updated", &c),
        Duration::from_secs(5)
    );
    assert_eq!(s.ordering, Ordering::Key);
    assert!(s.enabled);
    let mut e = ep("https://h/x");
    e.timeout = Some(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    assert!(from_pb(&e, &c)
        .unwrap_err()
        .to_string()
        .starts_with("endpoint.timeout"));
    let mut e = ep("https://h/x");
    e.retry_schedule = vec![prost_types::Duration {
        seconds: -1,
        nanos: 0,
    }];
    assert!(from_pb(&e, &c)
        .unwrap_err()
        .to_string()
        .starts_with("endpoint.retry_schedule[0]"));
    let mut e = ep("https://h/x");
    e.ordering = 9;
    assert!(from_pb(&e, &c)
        .unwrap_err()
        .to_string()
        .starts_with("endpoint.ordering"));
}
