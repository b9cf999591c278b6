//! HTTP etiquette of delivery (#19): a `webhook-id` that verifies whatever
//! the producer's event id, the event id in `X-Stevedore-Event-Id`, and
//! `User-Agent: stevedore/<version>` unless the endpoint sets its own.

use std::{collections::HashMap, time::Duration};

use stevedore::pb::{DeliveryState, SendTestEventRequest};

use crate::{
    pick, publish,
    receiver::{verify_signature, Behavior, Receiver},
    webhook::{create, deliveries, endpoint},
    TestServer,
};

/// Decodes `%XX` escapes (the `X-Stevedore-Event-Id` encoding).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

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
    // The first attempt of each fails, so each is sent twice.
    rx.respond_n(ids.len(), Behavior::Status(500));
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
        let event_id = percent_decode(r.header("x-stevedore-event-id").unwrap());
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
