//! The endpoint conversions: every field of the message into the domain
//! and back, the output-only fields, the errors naming fields, what
//! responses show, and UpdateEndpoint's mask.

use std::{
    collections::HashMap,
    time::{Duration, UNIX_EPOCH},
};

use super::{oauth2::OAuth2Update, *};

fn ts(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp { seconds, nanos }
}

fn dur(seconds: i64, nanos: i32) -> PbDuration {
    PbDuration { seconds, nanos }
}

fn settings() -> pb::OAuth2 {
    pb::OAuth2 {
        token_url: "https://auth.example.com/token".into(),
        client_id: "stevedore".into(),
        client_secret: "s3cr3t-value".into(),
        scopes: vec!["orders:write".into(), "inventory".into()],
        audience: "erp".into(),
        client_secret_set: true,
    }
}

/// A message with every settable field set and the output-only ones unset
/// (`client_secret_set` as the conversion back computes it; one entry per
/// map, so encodings can be compared byte for byte).
pub(crate) fn full(start: pb::endpoint::Start, ordering: pb::Ordering) -> pb::Endpoint {
    pb::Endpoint {
        id: "ep_01J".into(),
        url: "https://erp.example/hooks".into(),
        description: "ERP".into(),
        event_types: vec!["pick.confirmed".into(), "order.status".into()],
        attribute_filters: HashMap::from([("fulfillmentCenterId".into(), "FC1".into())]),
        headers: HashMap::from([("X-Api-Key".into(), "k".into())]),
        timeout: Some(dur(7, 5)),
        retry_schedule: vec![dur(0, 0), dur(5, 0), dur(300, 1)],
        max_in_flight: 8,
        ordering: ordering as i32,
        enabled: Some(false),
        start: Some(start),
        coalesce: true,
        filter: "status == \"SHORT\"".into(),
        fields: vec!["lines.product".into()],
        rate_limit: 2.5,
        rate_burst: 4,
        proxy_url: "none".into(),
        client_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
        client_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        envelope: true,
        oauth2: Some(settings()),
        tenant: "acme".into(),
        ..Default::default()
    }
}

#[test]
fn every_field_goes_into_the_domain_and_back_unchanged() {
    use pb::endpoint::Start as S;
    let starts = [
        S::StartEarliest(true),
        S::StartLatest(true),
        S::StartOffset(42),
        S::StartTime(ts(1_769_999_000, 9)),
        // Before 1970 is a valid start time, kept as it is.
        S::StartTime(ts(-86_400, 5)),
    ];
    let orderings = [
        pb::Ordering::Unspecified,
        pb::Ordering::Key,
        pb::Ordering::None,
        pb::Ordering::Strict,
    ];
    for start in starts {
        for ordering in orderings {
            let e = full(start, ordering);
            let domain = endpoint_from_pb(e.clone()).unwrap();
            assert_eq!(endpoint_to_pb(&domain), e, "{start:?} {ordering:?}");
        }
    }
    let e = endpoint_from_pb(full(S::StartOffset(1), pb::Ordering::Strict)).unwrap();
    assert_eq!(e.timeout, Some(Duration::new(7, 5)));
    assert_eq!(e.retry_schedule[2], Duration::new(300, 1));
    assert_eq!(e.ordering, Some(Ordering::Strict));
    assert!(!e.enabled);
    assert_eq!(e.oauth2.as_ref().unwrap().client_secret, "s3cr3t-value");
    // Unset `enabled` means enabled; an unset ordering stays "not chosen".
    let bare = endpoint_from_pb(pb::Endpoint::default()).unwrap();
    assert!(bare.enabled && bare.ordering.is_none() && bare.start.is_none());
    assert_eq!(endpoint_to_pb(&bare).ordering, 0);
}

#[test]
fn output_only_fields_are_ignored_going_in_and_shown_going_out() {
    let mut e = full(pb::endpoint::Start::StartLatest(true), pb::Ordering::Key);
    e.created_at = Some(ts(1, 0));
    e.updated_at = Some(ts(2, 0));
    e.disabled_reason = "410 Gone".into();
    e.backlog = 7;
    e.failing_since = Some(ts(3, 0));
    e.previous_secret_expires_at = Some(ts(4, 0));
    let mut domain = endpoint_from_pb(e).unwrap();
    assert_eq!(
        (domain.created_at, domain.updated_at, domain.failing_since),
        (None, None, None)
    );
    assert!(domain.disabled_reason.is_empty());

    let at = |s| UNIX_EPOCH + Duration::from_secs(s);
    domain.created_at = Some(at(10));
    domain.updated_at = Some(at(11));
    domain.failing_since = Some(at(12));
    domain.disabled_reason = "auto-disabled".into();
    let out = endpoint_to_pb(&domain);
    assert_eq!(out.created_at, Some(ts(10, 0)));
    assert_eq!(out.updated_at, Some(ts(11, 0)));
    assert_eq!(out.failing_since, Some(ts(12, 0)));
    assert_eq!(out.disabled_reason, "auto-disabled");
    assert_eq!((out.backlog, out.previous_secret_expires_at), (0, None));
}

#[test]
fn what_the_domain_cannot_hold_is_refused_naming_the_field() {
    type Change = fn(&mut pb::Endpoint);
    let cases: [(Change, &str); 6] = [
        (|e| e.timeout = Some(dur(-1, 0)), "endpoint.timeout: "),
        (|e| e.timeout = Some(dur(1, -5)), "endpoint.timeout: "),
        (
            |e| e.retry_schedule[1] = dur(-5, 0),
            "endpoint.retry_schedule[1]: ",
        ),
        (
            |e| e.ordering = 99,
            "endpoint.ordering: unknown enum value 99",
        ),
        (
            |e| e.start = Some(pb::endpoint::Start::StartTime(ts(0, -1))),
            "endpoint.start_time: ",
        ),
        (
            |e| e.start = Some(pb::endpoint::Start::StartTime(ts(i64::MAX, 0))),
            "endpoint.start_time: must be between years 0001 and 9999",
        ),
    ];
    for (change, want) in cases {
        let mut e = full(pb::endpoint::Start::StartLatest(true), pb::Ordering::Key);
        change(&mut e);
        let err = endpoint_from_pb(e).unwrap_err().to_string();
        assert!(err.starts_with(want), "{want}: {err}");
    }
}

#[test]
fn responses_show_no_secret() {
    let endpoint = endpoint_from_pb(full(
        pb::endpoint::Start::StartLatest(true),
        pb::Ordering::Key,
    ))
    .unwrap();
    let until = UNIX_EPOCH + Duration::from_secs(1_770_000_000);
    let view = EndpointView {
        endpoint: endpoint.redacted(),
        backlog: 3,
        previous_secret_expires_at: Some(until),
    };
    let e = shown(&view);
    assert_eq!(e.headers["X-Api-Key"], "<redacted>");
    assert_eq!(e.client_key_pem, "<redacted>");
    let o = e.oauth2.as_ref().unwrap();
    assert!(o.client_secret.is_empty() && o.client_secret_set, "{o:?}");
    assert_eq!(e.backlog, 3);
    assert_eq!(e.previous_secret_expires_at, Some(ts(1_770_000_000, 0)));
    // Without a secret, none is said to be set; an empty key stays empty.
    let mut bare = endpoint.clone();
    bare.oauth2.as_mut().unwrap().client_secret.clear();
    bare.client_key_pem.clear();
    let e = shown(&EndpointView {
        endpoint: bare.redacted(),
        backlog: 0,
        previous_secret_expires_at: None,
    });
    assert!(!e.oauth2.unwrap().client_secret_set);
    assert!(e.client_key_pem.is_empty());
    // Nor does any Debug.
    let shown = format!("{endpoint:?} {:?} {:?}", settings(), endpoint.oauth2);
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("PRIVATE KEY"),
        "{shown}"
    );
    assert!(!shown.contains("\"k\""), "{shown}");
}

fn camel_case(path: &str) -> String {
    let mut words = path.split('_');
    let first = words.next().unwrap_or_default().to_owned();
    words.fold(first, |mut out, w| {
        let mut c = w.chars();
        out.extend(c.next().map(|c| c.to_ascii_uppercase()));
        out.push_str(c.as_str());
        out
    })
}

#[test]
fn the_mask_copies_only_the_fields_it_names() {
    let stored = endpoint_from_pb(full(
        pb::endpoint::Start::StartOffset(5),
        pb::Ordering::Strict,
    ))
    .unwrap();
    // Every settable field but oauth2's (below), from a message that
    // differs in each of them.
    let mut from = pb::Endpoint {
        id: "ep_01J".into(),
        url: "https://other.example/x".into(),
        description: "other".into(),
        event_types: vec!["order.status".into()],
        attribute_filters: HashMap::from([("tenantId".into(), "t".into())]),
        headers: HashMap::from([("X-Other".into(), "v".into())]),
        timeout: Some(dur(9, 0)),
        retry_schedule: vec![dur(1, 0)],
        max_in_flight: 2,
        ordering: pb::Ordering::None as i32,
        enabled: None,
        coalesce: false,
        filter: String::new(),
        fields: vec![],
        rate_limit: 0.0,
        rate_burst: 0,
        proxy_url: String::new(),
        client_cert_pem: String::new(),
        client_key_pem: String::new(),
        envelope: false,
        ..Default::default()
    };
    // Every settable path but oauth2's, every other one in camelCase as
    // JSON clients write it.
    let paths: Vec<String> = mask::SETTABLE
        .iter()
        .filter(|p| !p.starts_with("oauth2"))
        .enumerate()
        .map(|(i, p)| {
            if i % 2 == 1 {
                p.to_string()
            } else {
                camel_case(p)
            }
        })
        .collect();
    assert_eq!(paths[2], "eventTypes");
    let fields = mask_paths(&paths);
    assert_eq!(fields[2], "event_types");
    let mut e = stored.clone();
    merge(&mut e, &from, &fields).unwrap();
    let mut want = endpoint_from_pb(from.clone()).unwrap();
    want.start = stored.start;
    want.oauth2 = stored.oauth2.clone();
    want.tenant = stored.tenant.clone();
    assert_eq!(e, want);
    assert!(e.enabled, "an unset `enabled` in the mask enables");

    // One field: the rest stays, and what the mask does not name is not
    // read (an unknown ordering is refused only when `ordering` is named).
    from.ordering = 99;
    from.timeout = Some(dur(-1, 0));
    let mut e = stored.clone();
    merge(&mut e, &from, &["url".into()]).unwrap();
    assert_eq!(e.url, "https://other.example/x");
    e.url = stored.url.clone();
    assert_eq!(e, stored);
    for (path, field) in [
        ("ordering", "endpoint.ordering"),
        ("timeout", "endpoint.timeout"),
    ] {
        let err = merge(&mut stored.clone(), &from, &[path.into()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(field), "{err}");
    }
    for (path, field) in [
        ("tenant", "endpoint.tenant"),
        ("start_offset", "update_mask.paths[1]"),
        ("oauth2.nope", "update_mask.paths[1]"),
    ] {
        let err = merge(&mut stored.clone(), &from, &["url".into(), path.into()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(field), "{path}: {err}");
    }
}

#[test]
fn updates_keep_the_secret_only_for_the_same_token_url() {
    let stored = Some(oauth2_from_pb(settings()));
    // The whole message without a secret: the stored one stays.
    let mut into = stored.clone();
    let mut new = settings();
    new.client_secret.clear();
    new.scopes = vec!["one".into()];
    let mut u = OAuth2Update::default();
    assert!(u.apply("oauth2", &mut into, Some(&new), 0).unwrap());
    u.finish(&into).unwrap();
    let got = into.unwrap();
    assert_eq!(got.client_secret, "s3cr3t-value");
    assert_eq!(got.scopes, ["one"]);

    // A new token URL without the secret again is refused...
    let mut into = stored.clone();
    let mut new = settings();
    new.token_url = "https://elsewhere.example/token".into();
    let mut u = OAuth2Update::default();
    u.apply("oauth2.token_url", &mut into, Some(&new), 0)
        .unwrap();
    let err = u.finish(&into).unwrap_err().to_string();
    assert!(err.starts_with("endpoint.oauth2.client_secret"), "{err}");
    // ...and accepted with it.
    let mut into = stored.clone();
    new.client_secret = "other".into();
    let mut u = OAuth2Update::default();
    u.apply("oauth2.token_url", &mut into, Some(&new), 0)
        .unwrap();
    u.apply("oauth2.client_secret", &mut into, Some(&new), 1)
        .unwrap();
    u.finish(&into).unwrap();
    assert_eq!(into.unwrap().client_secret, "other");

    // Removing OAuth2, and paths that are not ours.
    let mut into = stored.clone();
    let mut u = OAuth2Update::default();
    u.apply("oauth2", &mut into, None, 0).unwrap();
    u.finish(&into).unwrap();
    assert!(into.is_none());
    let mut into = stored;
    let mut u = OAuth2Update::default();
    assert!(!u.apply("oauth2x", &mut into, None, 0).unwrap());
    assert!(!u.apply("url", &mut into, None, 0).unwrap());
    assert!(u.apply("oauth2.nope", &mut into, None, 3).is_err());
}
