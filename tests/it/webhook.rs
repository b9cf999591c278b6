//! Webhook delivery against a real local receiver: headers, signatures,
//! retries, timeouts, 410/429/3xx handling, ordering, isolation, rotation,
//! backfill, replay, dead letters, and the Admin operations.

use std::time::{Duration, Instant, SystemTime};

use stevedore::pb::{
    self, endpoint::Start, CreateEndpointRequest, DeliveryState, Endpoint, GetEndpointRequest,
    ListAttemptsRequest, ListEndpointsRequest, ReplayEndpointRequest, RetryDeliveryRequest,
    RotateEndpointSecretRequest, SendTestEventRequest, UpdateEndpointRequest,
};

use crate::support::{
    assert_invalid, attempts, create, deliveries, endpoint, get_endpoint, https_receiver,
    inventory, ms, pick, publish, verify_signature, wait_state, Behavior, Receiver, TestServer,
};

#[tokio::test]
async fn delivers_signed_requests_with_the_documented_headers() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (ep, secret) = create(&mut admin, endpoint(&rx.url)).await;
    assert!(ep.id.starts_with("ep_"), "{}", ep.id);
    assert!(secret.starts_with("whsec_"));

    let mut p = server.publisher().await;
    let mut e = pick("pick-1", "SO-1");
    e.attributes.insert("tenantId".into(), "T1".into());
    let mut custom_headers = endpoint(&rx.url);
    custom_headers
        .headers
        .insert("X-Api-Key".into(), "k-123".into());
    let (_ep2, secret2) = create(&mut admin, custom_headers).await;
    publish(&mut p, e).await;

    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    for r in &got {
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-jasci-event"), Some("pick.confirmed"));
        assert_eq!(r.header("webhook-id"), Some("pick-1"));
        let ts: u64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts) <= 5, "timestamp {ts} vs now {now}");
        let body = r.json();
        assert_eq!(body["salesOrderId"], "SO-1");
        assert_eq!(body["status"], "COMPLETE");
        let with_key = r.header("x-api-key") == Some("k-123");
        let s = if with_key { &secret2 } else { &secret };
        verify_signature(s, r).unwrap();
        assert!(verify_signature(if with_key { &secret } else { &secret2 }, r).is_err());
    }
    assert_eq!(
        got.iter()
            .filter(|r| r.header("x-api-key").is_some())
            .count(),
        1,
        "custom header on one endpoint only"
    );
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
}

#[tokio::test]
async fn retries_500_then_delivers_with_the_same_id_and_body() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.respond(Behavior::Body(500, "database is down".into()));
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    let offset = publish(&mut server.publisher().await, pick("r-1", "SO")).await;

    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[0].body, got[1].body, "the same bytes on every attempt");
    let d = wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    assert_eq!(
        (d[0].offset, d[0].attempts, d[0].last_status),
        (offset, 2, 200)
    );
    let a = attempts(&mut admin, &ep.id, offset).await;
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].attempt, a[0].status), (1, 500));
    assert_eq!(a[0].response_body, "database is down");
    assert_eq!((a[1].attempt, a[1].status), (2, 200));
    assert!(a[0].latency.is_some() && a[0].started_at.is_some());
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.respond(Behavior::Delay(Duration::from_secs(2), 200));
    let mut admin = server.admin().await;
    let mut e = endpoint(&rx.url);
    e.timeout = Some(ms(200));
    let (ep, _) = create(&mut admin, e).await;
    let offset = publish(&mut server.publisher().await, pick("t-1", "SO")).await;
    rx.wait_for(2, Duration::from_secs(10)).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    let a = attempts(&mut admin, &ep.id, offset).await;
    assert_eq!(a[0].status, 0);
    assert!(a[0].error.contains("timed out"), "{:?}", a[0]);
}

#[tokio::test]
async fn refused_connections_dead_letter_then_retry_delivery() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.stop();
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    let offset = publish(&mut server.publisher().await, pick("d-1", "SO")).await;

    let dead = wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    assert_eq!((dead[0].offset, dead[0].attempts), (offset, 3));
    assert!(dead[0].last_error.contains("connect"), "{:?}", dead[0]);
    assert_eq!(attempts(&mut admin, &ep.id, offset).await.len(), 3);

    // The receiver comes back; an operator retries the dead delivery.
    rx.restart().await;
    let retried = admin
        .retry_delivery(RetryDeliveryRequest {
            endpoint_id: ep.id.clone(),
            offset,
        })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(retried.state(), DeliveryState::Pending);
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), Some("d-1"));
    let d = wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    assert_eq!(d[0].attempts, 1, "a fresh schedule");
    let history = attempts(&mut admin, &ep.id, offset).await;
    let numbers: Vec<(u32, u32)> = history.iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(
        numbers,
        vec![(1, 0), (2, 0), (3, 0), (4, 200)],
        "history kept across rounds"
    );

    // Only failed or dead deliveries can be retried.
    let err = admin
        .retry_delivery(RetryDeliveryRequest {
            endpoint_id: ep.id.clone(),
            offset,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_enabling_resumes() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.respond(Behavior::Status(410));
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    let mut p = server.publisher().await;
    publish(&mut p, pick("g-1", "SO-A")).await;
    rx.wait_for(1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let disabled = loop {
        let e = admin
            .get_endpoint(GetEndpointRequest { id: ep.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .endpoint
            .unwrap();
        if e.enabled == Some(false) {
            break e;
        }
        assert!(Instant::now() < deadline, "endpoint still enabled: {e:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(disabled.disabled_reason, "410 Gone");
    publish(&mut p, pick("g-2", "SO-B")).await;
    // A disabled endpoint has no marker to wait for (nothing flows): the
    // pause only gives a wrong send room to happen; the check is that
    // every later request arrived after the endpoint was enabled again.
    rx.expect_no_more_than(1, Duration::from_millis(400)).await;

    // Re-enabled: the kept deliveries go out.
    let enabled = Instant::now();
    admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: ep.id.clone(),
                enabled: Some(true),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    assert!(
        got[1..].iter().all(|r| r.received_at >= enabled),
        "sent while disabled: {got:?}"
    );
    let ids: Vec<_> = got[1..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"g-1".to_owned()) && ids.contains(&"g-2".to_owned()),
        "{ids:?}"
    );
    let e = admin
        .get_endpoint(GetEndpointRequest { id: ep.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!((e.enabled, e.disabled_reason.as_str()), (Some(true), ""));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.respond(Behavior::WithHeaders(
        429,
        vec![("retry-after", "1".into())],
    ));
    let mut admin = server.admin().await;
    let mut e = endpoint(&rx.url);
    e.retry_schedule = vec![ms(0), ms(10)];
    create(&mut admin, e).await;
    publish(&mut server.publisher().await, pick("ra-1", "SO")).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].received_at - got[0].received_at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited {gap:?} despite Retry-After: 1"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    rx.set_default(Behavior::WithHeaders(
        302,
        vec![("location", elsewhere.url.clone())],
    ));
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    let offset = publish(&mut server.publisher().await, pick("rd-1", "SO")).await;
    let dead = wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    assert_eq!((dead[0].offset, dead[0].last_status), (offset, 302));
    assert_eq!(rx.requests().len(), 3);
    assert!(elsewhere.requests().is_empty(), "redirect was followed");
}

#[tokio::test]
async fn same_key_in_order_other_keys_in_parallel() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.set_default(Behavior::Delay(Duration::from_millis(30), 200));
    // Some failures along the way: a retried event must still precede the
    // later events of its key.
    for _ in 0..3 {
        rx.respond(Behavior::Status(500));
    }
    let mut admin = server.admin().await;
    let mut e = endpoint(&rx.url);
    e.max_in_flight = 8;
    e.retry_schedule = vec![ms(0), ms(50), ms(50), ms(50)];
    create(&mut admin, e).await;
    let p = server.publisher().await;
    let keys = 5;
    let per_key = 8;
    let mut batch = Vec::new();
    for i in 0..per_key {
        for k in 0..keys {
            batch.push(inventory(
                &format!("k{k}-{i}"),
                &format!("SKU-{k}"),
                i as f64,
            ));
        }
    }
    p.clone()
        .publish_batch(pb::PublishBatchRequest { events: batch })
        .await
        .unwrap();
    let got = rx
        .wait_for(keys * per_key + 3, Duration::from_secs(20))
        .await;
    assert!(
        rx.max_concurrent_requests() > 1,
        "different keys went in parallel"
    );
    assert!(rx.max_concurrent_requests() <= 8, "max_in_flight respected");
    for k in 0..keys {
        let seq: Vec<usize> = got
            .iter()
            .filter_map(|r| r.header("webhook-id"))
            .filter_map(|id| id.strip_prefix(&format!("k{k}-")))
            .map(|n| n.parse().unwrap())
            .collect();
        // Retries repeat an event right away; never a later one before it.
        let mut dedup = seq.clone();
        dedup.dedup();
        assert_eq!(dedup, (0..per_key).collect::<Vec<_>>(), "key {k}: {seq:?}");
    }
}

/// The slow endpoint's receiver holds every request for a minute, far
/// longer than the test; the healthy endpoint must get all 20 events while
/// none of the slow one's requests has been answered or timed out (30 s,
/// the default). No bound on the healthy endpoint's latency, which a
/// loaded machine could break: had it waited on the other endpoint, it
/// would get nothing before those requests ended.
#[tokio::test]
async fn a_dead_endpoint_does_not_delay_a_healthy_one() {
    let server = TestServer::start().await;
    let healthy = Receiver::start().await;
    let slow = Receiver::start().await;
    slow.set_default(Behavior::Delay(Duration::from_secs(60), 200));
    let mut admin = server.admin().await;
    let mut s = endpoint(&slow.url);
    s.ordering = pb::Ordering::None as i32;
    create(&mut admin, s).await;
    create(&mut admin, endpoint(&healthy.url)).await;
    let mut p = server.publisher().await;
    for i in 0..20 {
        publish(&mut p, pick(&format!("iso-{i}"), &format!("SO-{i}"))).await;
    }
    let got = healthy.wait_for(20, Duration::from_secs(20)).await;
    let mut ids: Vec<usize> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap()[4..].parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    // Meanwhile every request the slow endpoint sent is still unanswered.
    let hanging = slow.in_flight();
    assert!(hanging > 0, "the slow endpoint was busy meanwhile");
    assert_eq!(hanging, slow.count(), "a slow request was answered");
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_grace_period() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (ep, old) = create(&mut admin, endpoint(&rx.url)).await;
    let rotated = admin
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            id: ep.id.clone(),
            grace_period: Some(ms(3_600_000)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, old);
    let mut p = server.publisher().await;
    publish(&mut p, pick("rot-1", "SO")).await;
    let r = &rx.wait_for(1, Duration::from_secs(10)).await[0];
    let sigs = r.header("webhook-signature").unwrap();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    verify_signature(&rotated.secret, r).unwrap();
    verify_signature(&old, r).unwrap();
    // The endpoint says until when (the same instant the rotation answered).
    let shown = get_endpoint(&mut admin, &ep.id)
        .await
        .previous_secret_expires_at;
    assert_eq!(shown, rotated.previous_expires_at);
    assert!(shown.is_some());

    // No grace: the old secret stops at once.
    let again = admin
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            id: ep.id.clone(),
            grace_period: Some(ms(0)),
        })
        .await
        .unwrap()
        .into_inner();
    publish(&mut p, pick("rot-2", "SO")).await;
    let r = &rx.wait_for(2, Duration::from_secs(10)).await[1];
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 1);
    verify_signature(&again.secret, r).unwrap();
    assert!(verify_signature(&rotated.secret, r).is_err());
    let ep = get_endpoint(&mut admin, &ep.id).await;
    assert_eq!(
        ep.previous_secret_expires_at, None,
        "no grace: nothing to show"
    );
}

#[tokio::test]
async fn backfill_from_earliest_and_replay() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    for i in 1..=3 {
        publish(&mut p, pick(&format!("b-{i}"), &format!("SO-{i}"))).await;
    }
    let backfill = Receiver::start().await;
    let latest = Receiver::start().await;
    let mut admin = server.admin().await;
    // Both one at a time in log order, so the marker at the end comes
    // after everything else either endpoint sends.
    let mut e = endpoint(&backfill.url);
    e.start = Some(Start::StartEarliest(true));
    e.ordering = pb::Ordering::Strict as i32;
    let (ep, _) = create(&mut admin, e).await;
    let mut e = endpoint(&latest.url);
    e.ordering = pb::Ordering::Strict as i32;
    create(&mut admin, e).await;
    let got = backfill.wait_for(3, Duration::from_secs(10)).await;
    let mut ids: Vec<_> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["b-1", "b-2", "b-3"]);
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 3).await;

    let r = admin
        .replay_endpoint(ReplayEndpointRequest {
            dry_run: false,
            endpoint_id: ep.id.clone(),
            start: Some(pb::replay_endpoint_request::Start::Offset(2)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.from_offset, 2);
    let got = backfill.wait_for(5, Duration::from_secs(10)).await;
    let mut again: Vec<_> = got[3..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    again.sort();
    assert_eq!(again, vec!["b-2", "b-3"]);
    // A replayed delivery continues its history: its record is read
    // before the new round starts, so the attempt is numbered after the
    // first round's, not written over it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let attempts = loop {
        let attempts = admin
            .list_attempts(ListAttemptsRequest {
                endpoint_id: ep.id.clone(),
                offset: 2,
            })
            .await
            .unwrap()
            .into_inner()
            .attempts;
        if attempts.len() >= 2 || Instant::now() > deadline {
            break attempts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let numbers: Vec<_> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, vec![1, 2], "{attempts:?}");

    // Nothing else was sent: before a marker published now, the backfill
    // endpoint got the three events and the two replayed, and the endpoint
    // that started at the head got nothing.
    publish(&mut p, pick("marker", "SO-M")).await;
    let timeout = Duration::from_secs(10);
    assert_eq!(backfill.before_marker("marker", timeout).await.len(), 5);
    let before = latest.before_marker("marker", timeout).await;
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn filters_by_event_type_and_attribute() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut e = endpoint(&rx.url);
    e.event_types = vec!["inventory.updated".into()];
    e.attribute_filters
        .insert("fulfillmentCenterId".into(), "FC-EAST-01".into());
    // One at a time in log order, so the marker below comes last.
    e.ordering = pb::Ordering::Strict as i32;
    create(&mut admin, e).await;
    let mut p = server.publisher().await;
    let mut east = inventory("east", "SKU", 1.0);
    east.attributes
        .insert("fulfillmentCenterId".into(), "FC-EAST-01".into());
    let mut west = inventory("west", "SKU", 1.0);
    west.attributes
        .insert("fulfillmentCenterId".into(), "FC-WEST-01".into());
    let mut pick_east = pick("pick-east", "SO");
    pick_east
        .attributes
        .insert("fulfillmentCenterId".into(), "FC-EAST-01".into());
    for e in [west, pick_east, east] {
        publish(&mut p, e).await;
    }
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), Some("east"));
    // Nothing else passed the filters: a marker that passes them is the
    // next request.
    let mut marker = inventory("marker", "SKU", 2.0);
    marker
        .attributes
        .insert("fulfillmentCenterId".into(), "FC-EAST-01".into());
    publish(&mut p, marker).await;
    let before = rx.before_marker("marker", Duration::from_secs(10)).await;
    assert_eq!(before.len(), 1, "{before:?}");
}

#[tokio::test]
async fn update_moves_delivery_to_the_new_url() {
    let server = TestServer::start().await;
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let mut admin = server.admin().await;
    let (ep, _) = create(&mut admin, endpoint(&first.url)).await;
    let mut p = server.publisher().await;
    publish(&mut p, pick("u-1", "SO")).await;
    first.wait_for(1, Duration::from_secs(10)).await;
    let updated = admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: ep.id.clone(),
                url: second.url.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(updated.url, second.url);
    assert_eq!(
        updated.description, "test",
        "fields outside the mask are kept"
    );
    publish(&mut p, pick("u-2", "SO")).await;
    let got = second.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), Some("u-2"));

    let err = admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: ep.id.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["secret".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(err, "update_mask.paths[0]");
}

#[tokio::test]
async fn bad_endpoints_are_rejected_and_secrets_never_listed() {
    let server = TestServer::start_with(std::sync::Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.allow_http = false
    })
    .await;
    let mut admin = server.admin().await;
    let cases: Vec<(Endpoint, &str)> = vec![
        (endpoint("http://127.0.0.1:1/x"), "endpoint.url"),
        (endpoint("https://user:pw@example.com/"), "endpoint.url"),
        (
            {
                let mut e = endpoint("https://example.com/");
                e.headers
                    .insert("X-Evil".into(), "a\r\nX-Injected: 1".into());
                e
            },
            "endpoint.headers",
        ),
        (
            {
                let mut e = endpoint("https://example.com/");
                e.headers
                    .insert("webhook-signature".into(), "v1,forged".into());
                e
            },
            "endpoint.headers",
        ),
        (
            {
                let mut e = endpoint("https://example.com/");
                e.event_types = vec!["Not A Type".into()];
                e
            },
            "endpoint.event_types[0]",
        ),
        (
            {
                let mut e = endpoint("https://example.com/");
                e.timeout = Some(ms(0));
                e
            },
            "endpoint.timeout",
        ),
    ];
    for (e, field) in cases {
        let err = admin
            .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
            .await
            .unwrap_err();
        assert_invalid(err, field);
    }
    let list = admin
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.endpoints.is_empty(), "nothing stored: {list:?}");

    let (ep, secret) = create(&mut admin, endpoint("https://example.com/hook")).await;
    let listed = format!(
        "{:?}",
        admin
            .list_endpoints(ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    let got = format!(
        "{:?}",
        admin
            .get_endpoint(GetEndpointRequest { id: ep.id.clone() })
            .await
            .unwrap()
            .into_inner()
    );
    let key = secret.trim_start_matches("whsec_");
    assert!(listed.contains(&ep.id) && !listed.contains(key));
    assert!(!got.contains(key));

    // Header values may be credentials: shown redacted.
    let mut with_header = endpoint("https://example.com/other");
    with_header
        .headers
        .insert("X-Api-Key".into(), "very-secret-key".into());
    let (shown, _) = create(&mut admin, with_header).await;
    assert_eq!(shown.headers["X-Api-Key"], "<redacted>");
    let listed = format!(
        "{:?}",
        admin
            .list_endpoints(ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert!(!listed.contains("very-secret-key"));

    // An update must name its fields.
    let err = admin
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: ep.id.clone(),
                enabled: Some(false),
                ..Default::default()
            }),
            update_mask: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(err, "update_mask");
    let missing = admin
        .get_endpoint(GetEndpointRequest {
            id: "ep_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn send_test_event_reports_the_outcome() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.respond(Behavior::Body(200, "hello".into()));
    let mut admin = server.admin().await;
    let (ep, secret) = create(&mut admin, endpoint(&rx.url)).await;
    let r = admin
        .send_test_event(SendTestEventRequest {
            endpoint_id: ep.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.delivered);
    let a = r.attempt.unwrap();
    assert_eq!((a.status, a.response_body.as_str()), (200, "hello"));
    let got = rx.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].header("x-jasci-event"), Some("stevedore.test"));
    assert_eq!(got[0].header("webhook-id"), Some(r.webhook_id.as_str()));
    verify_signature(&secret, &got[0]).unwrap();
    // Nothing went into the log.
    assert!(deliveries(&mut admin, &ep.id, DeliveryState::Unspecified)
        .await
        .is_empty());

    rx.respond(Behavior::Status(500));
    let r = admin
        .send_test_event(SendTestEventRequest {
            endpoint_id: ep.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.delivered);
    assert_eq!(r.attempt.unwrap().status, 500);
}

#[tokio::test]
async fn a_pending_retry_survives_a_restart() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.respond(Behavior::Status(503));
    let mut admin = server.admin().await;
    let mut e = endpoint(&rx.url);
    e.retry_schedule = vec![ms(0), ms(1500)];
    let (ep, _) = create(&mut admin, e).await;
    let offset = publish(&mut server.publisher().await, pick("rs-1", "SO")).await;
    rx.wait_for(1, Duration::from_secs(10)).await;
    let failed = wait_state(&mut admin, &ep.id, DeliveryState::Failed, 1).await;
    assert!(failed[0].next_attempt_at.is_some());
    drop(admin);

    let server = server.restart().await;
    let mut admin = server.admin().await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-id"), Some("rs-1"));
    let gap = got[1].received_at - got[0].received_at;
    assert!(
        gap >= Duration::from_millis(1000),
        "the schedule held across the restart: {gap:?}"
    );
    let d = wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    assert_eq!((d[0].offset, d[0].attempts), (offset, 2));
}

/// Parses grpcurl's JSON (protojson) into the prost type through the
/// descriptor set the server serves for reflection.
fn example(name: &str) -> pb::Event {
    use prost::Message;
    let path = format!("{}/examples/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap();
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool
        .get_message_by_name("stevedore.v1.PublishRequest")
        .unwrap();
    let mut de = serde_json::Deserializer::from_str(&json);
    let msg = prost_reflect::DynamicMessage::deserialize(desc, &mut de).unwrap();
    pb::PublishRequest::decode(msg.encode_to_vec().as_slice())
        .unwrap()
        .event
        .unwrap()
}

/// Numbers as f64, so `95.0` equals `95`.
fn numbers_as_f64(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

#[tokio::test]
async fn seed_samples_arrive_exactly_as_documented() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let (_, secret) = create(&mut admin, endpoint(&rx.url)).await;
    let mut p = server.publisher().await;
    let samples = [
        ("shipment_closed", "shipment.closed"),
        ("pick_confirmed", "pick.confirmed"),
        ("channel_inventory", "channel_inventory.updated"),
    ];
    for (name, _) in samples {
        publish(&mut p, example(name)).await;
    }
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    for (name, event_type) in samples {
        let r = got
            .iter()
            .find(|r| r.header("x-jasci-event") == Some(event_type))
            .unwrap_or_else(|| panic!("no {event_type} request: {got:?}"));
        verify_signature(&secret, r).unwrap();
        let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(numbers_as_f64(r.json()), numbers_as_f64(golden), "{name}");
    }
}

#[tokio::test]
async fn strict_ordering_is_one_at_a_time_and_none_is_parallel() {
    let server = TestServer::start().await;
    let strict = Receiver::start().await;
    let unordered = Receiver::start().await;
    for rx in [&strict, &unordered] {
        rx.set_default(Behavior::Delay(Duration::from_millis(20), 200));
    }
    strict.respond(Behavior::Status(500));
    let mut admin = server.admin().await;
    let mut s = endpoint(&strict.url);
    s.ordering = pb::Ordering::Strict as i32;
    s.max_in_flight = 8;
    s.retry_schedule = vec![ms(0), ms(50)];
    create(&mut admin, s).await;
    let mut n = endpoint(&unordered.url);
    n.ordering = pb::Ordering::None as i32;
    n.max_in_flight = 8;
    create(&mut admin, n).await;
    // Ten different keys, so only STRICT serialises them.
    let events = (0..10)
        .map(|i| pick(&format!("s-{i}"), &format!("SO-{i}")))
        .collect();
    server
        .publisher()
        .await
        .publish_batch(pb::PublishBatchRequest { events })
        .await
        .unwrap();
    let got = strict.wait_for(11, Duration::from_secs(10)).await;
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(
        ids[0], ids[1],
        "the failed first event is retried before the next"
    );
    ids.dedup();
    let want: Vec<String> = (0..10).map(|i| format!("s-{i}")).collect();
    assert_eq!(ids, want);
    assert_eq!(strict.max_concurrent_requests(), 1);
    unordered.wait_for(10, Duration::from_secs(10)).await;
    assert!(unordered.max_concurrent_requests() > 1);
}

#[tokio::test]
async fn delivers_over_https_with_http2_to_a_private_ca() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let (cert, key) = crate::support::self_signed(dir.path());
    let (port, mut received) = https_receiver(&cert, &key).await;
    let ca = cert.clone();
    let server = TestServer::start_with(dir, move |c| {
        c.allow_http = false;
        c.webhook_ca_file = Some(ca);
    })
    .await;
    let mut admin = server.admin().await;
    let (_, secret) = create(
        &mut admin,
        endpoint(&format!("https://localhost:{port}/hook")),
    )
    .await;
    publish(&mut server.publisher().await, pick("tls-1", "SO-1")).await;
    let (version, headers, body) = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("delivered over HTTPS")
        .unwrap();
    assert_eq!(version, http::Version::HTTP_2, "ALPN negotiated h2");
    assert_eq!(headers["webhook-id"], "tls-1");
    let recorded = crate::support::Recorded {
        method: http::Method::POST,
        path: "/hook".into(),
        headers,
        body,
        received_at: Instant::now(),
        version,
        connection: 1,
    };
    verify_signature(&secret, &recorded).unwrap();
}

#[tokio::test]
async fn an_untrusted_https_receiver_is_not_delivered_to() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let (cert, key) = crate::support::self_signed(dir.path());
    let (port, mut received) = https_receiver(&cert, &key).await;
    // No webhook_ca_file: the self-signed certificate is not trusted.
    let server = TestServer::start_with(dir, |c| c.allow_http = false).await;
    let mut admin = server.admin().await;
    let (ep, _) = create(
        &mut admin,
        endpoint(&format!("https://localhost:{port}/hook")),
    )
    .await;
    let offset = publish(&mut server.publisher().await, pick("tls-2", "SO-2")).await;
    let dead = wait_state(&mut admin, &ep.id, DeliveryState::Dead, 1).await;
    assert!(
        dead[0].last_error.to_lowercase().contains("certificate"),
        "{:?}",
        dead[0]
    );
    assert!(received.try_recv().is_err());
    assert_eq!(attempts(&mut admin, &ep.id, offset).await.len(), 3);
}
