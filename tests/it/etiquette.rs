//! HTTP etiquette of delivery (#19): a `webhook-id` that verifies whatever
//! the producer's event id, the event id in `X-Stevedore-Event-Id`, and
//! `User-Agent: stevedore/<version>` unless the endpoint sets its own.

use std::{collections::HashMap, time::Duration};

use stevedore::pb::{DeliveryState, SendTestEventRequest};

use crate::support::{
    create, deliveries, endpoint, percent_decode_bytes, pick, publish, verify_signature, Behavior,
    Receiver, TestServer,
};

fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Event ids with a leading space, a dot, non-ASCII characters and 256
/// bytes: every webhook verifies against the endpoint's secret, its
/// `webhook-id` is a header-safe token that stays the same on the retry,
/// and `X-Stevedore-Event-Id` decodes to the producer's id. A safe id is
/// still sent as the `webhook-id` itself.
#[tokio::test]
async fn odd_event_ids_get_webhook_ids_that_verify() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (ep, secret) = create(&mut admin, endpoint(&rx.url)).await;
    let ids = [
        " lead-space-4".to_string(),
        "café-5".into(),
        "order.2024.7".into(),
        "ünïcødé ✓ 6".into(),
        format!("long-{}", "é".repeat(125)), // 255 bytes
        "x".repeat(256),
        "plain-1".into(),
    ];
    assert_eq!(ids[5].len(), 256);
    // The first attempt of each fails, so each is sent twice (whatever the
    // order in which first attempts and retries arrive).
    rx.respond_first_of_each("x-stevedore-event-id", Behavior::Status(500));
    let mut p = server.publisher().await;
    for (i, id) in ids.iter().enumerate() {
        publish(&mut p, pick(id, &format!("SO-{i}"))).await;
    }
    let got = rx.wait_for(2 * ids.len(), Duration::from_secs(15)).await;
    let mut by_event: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for r in &got {
        verify_signature(&secret, r).unwrap_or_else(|e| panic!("{e}: {r:?}"));
        let webhook_id = r.header("webhook-id").unwrap();
        assert!(is_safe_token(webhook_id), "{webhook_id:?}");
        let event_id = percent_decode_bytes(r.header("x-stevedore-event-id").unwrap().as_bytes());
        by_event
            .entry(event_id)
            .or_default()
            .push(webhook_id.to_owned());
    }
    for id in &ids {
        let sent = &by_event[id.as_bytes()];
        assert_eq!(sent.len(), 2, "{id:?}: {sent:?}");
        assert_eq!(
            sent[0], sent[1],
            "{id:?}: the retry has the same webhook-id"
        );
        if id == "plain-1" {
            assert_eq!(sent[0], "plain-1", "a safe id is the webhook-id");
        } else {
            assert!(sent[0].starts_with("msg_"), "{id:?}: {sent:?}");
        }
    }
    let distinct: std::collections::HashSet<_> = by_event.values().map(|v| &v[0]).collect();
    assert_eq!(distinct.len(), ids.len());
    // ListDeliveries shows the same webhook id for each event.
    let listed = deliveries(&mut admin, &ep.id, DeliveryState::Unspecified).await;
    assert_eq!(listed.len(), ids.len());
    for d in &listed {
        assert_eq!(d.webhook_id, by_event[d.event_id.as_bytes()][0], "{d:?}");
    }
}

/// Every request says who sends it; an endpoint's own `User-Agent` header
/// replaces ours (and is sent once). The test event carries the same
/// headers, and its reported webhook id is the one sent.
#[tokio::test]
async fn user_agent_is_sent_and_overridable() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (plain, _) = create(&mut admin, endpoint(&rx.url)).await;
    let mut custom = endpoint(&format!("{}?custom", rx.url));
    custom
        .headers
        .insert("User-Agent".into(), "acme-gateway/7".into());
    create(&mut admin, custom).await;
    publish(&mut server.publisher().await, pick("ua-1", "SO-1")).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    let ours = concat!("stevedore/", env!("CARGO_PKG_VERSION"));
    let mut agents: Vec<_> = got
        .iter()
        .map(|r| {
            let all: Vec<_> = r.headers.get_all("user-agent").iter().collect();
            assert_eq!(all.len(), 1, "{r:?}");
            r.header("user-agent").unwrap().to_owned()
        })
        .collect();
    agents.sort();
    assert_eq!(agents, ["acme-gateway/7", ours]);

    rx.clear();
    let t = admin
        .send_test_event(SendTestEventRequest {
            endpoint_id: plain.id,
        })
        .await
        .unwrap()
        .into_inner();
    let got = rx.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].header("user-agent"), Some(ours));
    assert_eq!(got[0].header("webhook-id"), Some(t.webhook_id.as_str()));
    assert_eq!(
        got[0].header("x-stevedore-event-id"),
        Some(t.webhook_id.as_str())
    );
}

/// `envelope: true` wraps the body as {"type", "timestamp", "data"}, with
/// `data` byte for byte the body the endpoint gets without it, all under
/// the signature; the default stays the bare body.
#[tokio::test]
async fn the_opt_in_envelope_covers_the_type_with_the_signature() {
    let server = TestServer::start().await;
    let (bare_rx, wrapped_rx) = (Receiver::start().await, Receiver::start().await);
    let mut admin = server.admin().await;
    create(&mut admin, endpoint(&bare_rx.url)).await;
    let mut e = endpoint(&wrapped_rx.url);
    e.envelope = true;
    let (ep, secret) = create(&mut admin, e).await;
    assert!(ep.envelope, "shown as set");
    let mut event = pick("env-1", "SO-1");
    event.occurred_at = Some(prost_types::Timestamp {
        seconds: 1_770_215_535,
        nanos: 123_000_000,
    });
    publish(&mut server.publisher().await, event).await;
    let bare = bare_rx.wait_for(1, Duration::from_secs(10)).await;
    let wrapped = wrapped_rx.wait_for(1, Duration::from_secs(10)).await;
    verify_signature(&secret, &wrapped[0]).unwrap();
    let mut want =
        br#"{"type":"pick.confirmed","timestamp":"2026-02-04T14:32:15.123Z","data":"#.to_vec();
    want.extend_from_slice(&bare[0].body);
    want.push(b'}');
    assert_eq!(wrapped[0].body_text(), String::from_utf8(want).unwrap());
    assert_eq!(bare[0].json()["salesOrderId"], "SO-1");
    assert!(
        bare[0].json().get("data").is_none(),
        "the default is unchanged"
    );
}
