//! The Admin RPCs the maintenance page uses (#16), against the real server
//! and a real receiver: delivery filters, GetEvent by id, recovery, resend,
//! the rendered request, endpoint statistics, the event-type catalog and
//! header updates by name.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use prost_types::{FieldMask, Timestamp};
use stevedore::pb::{
    self, DeliveryState, Endpoint, GetEndpointStatsRequest, GetEventRequest, ListDeliveriesRequest,
    ListEventTypesRequest, RecoverDeliveriesRequest, RenderDeliveryRequest, ResendEventRequest,
    UpdateEndpointRequest,
};

use crate::support::{
    assert_invalid, create, endpoint, inventory, ms, pick, publish, sign, verify_signature,
    wait_state, Behavior, Receiver, TestServer,
};

fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn offsets(d: &[pb::Delivery]) -> Vec<u64> {
    d.iter().map(|d| d.offset).collect()
}

#[tokio::test]
async fn delivery_filters_page_consistently_and_get_event_takes_an_id() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    let a1 = publish(&mut publisher, pick("f-a1", "O1")).await;
    let a2 = publish(&mut publisher, pick("f-a2", "O2")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a3 = publish(&mut publisher, pick("f-a3", "O1")).await;
    let i1 = publish(&mut publisher, inventory("f-i1", "SKU1", 3.0)).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 4).await;
    let list = |r: ListDeliveriesRequest| {
        let mut admin = admin.clone();
        let id = ep.id.clone();
        async move {
            admin
                .list_deliveries(ListDeliveriesRequest {
                    endpoint_id: id,
                    ..r
                })
                .await
        }
    };
    let got = |r: ListDeliveriesRequest| {
        let list = &list;
        async move { list(r).await.unwrap().into_inner() }
    };
    let picks = got(ListDeliveriesRequest {
        event_type: "pick.confirmed".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(offsets(&picks.deliveries), vec![a3, a2, a1]);
    let by_id = got(ListDeliveriesRequest {
        event_id: "f-a2".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(offsets(&by_id.deliveries), vec![a2]);
    let unknown = got(ListDeliveriesRequest {
        event_id: "never-published".into(),
        ..Default::default()
    })
    .await;
    assert!(unknown.deliveries.is_empty());
    let since = got(ListDeliveriesRequest {
        since: Some(ts(middle)),
        ..Default::default()
    })
    .await;
    assert_eq!(offsets(&since.deliveries), vec![i1, a3]);
    let until = got(ListDeliveriesRequest {
        until: Some(ts(middle)),
        state: DeliveryState::Delivered as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(offsets(&until.deliveries), vec![a2, a1]);
    // Paging one at a time through the ordering key's deliveries.
    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..5 {
        let page = got(ListDeliveriesRequest {
            ordering_key: "O1".into(),
            page_size: 1,
            page_token: token.clone(),
            ..Default::default()
        })
        .await;
        pages.extend(offsets(&page.deliveries));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, vec![a3, a1]);
    // Bad filters name their field.
    assert_invalid(
        list(ListDeliveriesRequest {
            since: Some(Timestamp {
                seconds: 1,
                nanos: -1,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        "since",
    );
    assert_invalid(
        list(ListDeliveriesRequest {
            since: Some(ts(middle)),
            until: Some(ts(middle - Duration::from_secs(1))),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        "until",
    );
    assert_invalid(
        list(ListDeliveriesRequest {
            event_type: "Not A Type".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        "event_type",
    );

    // GetEvent by id.
    let mut subscriber = server.subscriber().await;
    let e = subscriber
        .get_event(GetEventRequest {
            event_id: "f-a2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((e.offset, e.event.unwrap().id.as_str()), (a2, "f-a2"));
    let missing = subscriber
        .get_event(GetEventRequest {
            event_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_invalid(
        subscriber
            .get_event(GetEventRequest {
                offset: a1,
                event_id: "f-a2".into(),
            })
            .await
            .unwrap_err(),
        "event_id",
    );
}

#[tokio::test]
async fn recover_counts_on_dry_run_then_requeues_and_resend_reaches_a_later_endpoint() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.set_default(Behavior::Status(500));
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    let before = SystemTime::now();
    let (ep, secret) = create(
        &mut admin,
        Endpoint {
            retry_schedule: vec![ms(0)],
            ..endpoint(&rx.url)
        },
    )
    .await;
    let o1 = publish(&mut publisher, pick("r-1", "O1")).await;
    let o2 = publish(&mut publisher, pick("r-2", "O2")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Dead, 2).await;
    let client = admin.clone();
    let recover = |dry_run: bool, until: Option<Timestamp>, states: Vec<i32>| {
        let mut admin = client.clone();
        let id = ep.id.clone();
        async move {
            admin
                .recover_deliveries(RecoverDeliveriesRequest {
                    endpoint_id: id,
                    since: Some(ts(before)),
                    until,
                    states,
                    event_type: String::new(),
                    dry_run,
                })
                .await
        }
    };
    let dry = recover(true, None, vec![]).await.unwrap().into_inner();
    assert_eq!((dry.matched, dry.requeued, dry.more), (2, 0, false));
    assert_eq!(
        wait_state(&mut admin, &ep.id, DeliveryState::Dead, 2)
            .await
            .len(),
        2,
        "a dry run changes nothing"
    );
    let none = recover(true, Some(ts(before)), vec![]).await.unwrap();
    assert_eq!(none.into_inner().matched, 0);
    assert_invalid(
        recover(true, None, vec![DeliveryState::Delivered as i32])
            .await
            .unwrap_err(),
        "states[0]",
    );
    rx.set_default(Behavior::Status(200));
    let sent = rx.count();
    let done = recover(false, None, vec![DeliveryState::Dead as i32])
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.matched, done.requeued), (2, 2));
    let delivered = wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 2).await;
    assert_eq!(offsets(&delivered), vec![o2, o1]);
    let got = rx.wait_for(sent + 2, Duration::from_secs(10)).await;
    for r in &got[sent..] {
        verify_signature(&secret, r).unwrap();
    }

    // An endpoint created afterwards, for another event type, gets the
    // event by id through its worker, signed with its own secret.
    let rx2 = Receiver::start().await;
    let (late, late_secret) = create(
        &mut admin,
        Endpoint {
            event_types: vec!["inventory.updated".into()],
            ..endpoint(&rx2.url)
        },
    )
    .await;
    let client = admin.clone();
    let resend = |event: pb::resend_event_request::Event| {
        let mut admin = client.clone();
        let id = late.id.clone();
        async move {
            admin
                .resend_event(ResendEventRequest {
                    endpoint_id: id,
                    event: Some(event),
                })
                .await
        }
    };
    use pb::resend_event_request::Event;
    let d = resend(Event::EventId("r-1".into()))
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!((d.offset, d.state()), (o1, DeliveryState::Pending));
    let got = rx2.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), Some("r-1"));
    verify_signature(&late_secret, &got[0]).unwrap();
    wait_state(&mut admin, &late.id, DeliveryState::Delivered, 1).await;
    // Again, after it was delivered: a new round, same webhook-id. The
    // record says delivered a moment before the worker lets the event go;
    // until then the broker answers "under way" (retry later).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match resend(Event::Offset(o1)).await {
            Ok(_) => break,
            Err(e)
                if e.code() == tonic::Code::FailedPrecondition
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("resend after delivery: {e:?}"),
        }
    }
    let got = rx2.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-id"), Some("r-1"));
    assert_eq!(
        resend(Event::EventId("unknown".into()))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    assert_invalid(resend(Event::Offset(0)).await.unwrap_err(), "offset");
}

#[tokio::test]
async fn render_delivery_shows_the_sent_request_with_header_values_redacted() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    let (ep, secret) = create(
        &mut admin,
        Endpoint {
            headers: HashMap::from([("x-api-key".to_string(), "hunter2-value".to_string())]),
            fields: vec!["salesOrderId".into(), "status".into()],
            ..endpoint(&rx.url)
        },
    )
    .await;
    let offset = publish(&mut publisher, pick("render-1", "O9")).await;
    let sent = rx.wait_for(1, Duration::from_secs(10)).await.remove(0);
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    let r = admin
        .render_delivery(RenderDeliveryRequest {
            endpoint_id: ep.id.clone(),
            event: Some(pb::render_delivery_request::Event::EventId(
                "render-1".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");
    assert_eq!(
        (r.method.as_str(), r.url.as_str()),
        ("POST", rx.url.as_str())
    );
    assert_eq!(
        r.body.as_bytes(),
        &sent.body[..],
        "the body after field selection"
    );
    assert!(r.timestamp_from_last_attempt && r.matches);
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.clone())
            .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
    };
    assert_eq!(header("x-api-key"), "<redacted>");
    assert_eq!(header("x-jasci-event"), "pick.confirmed");
    assert_eq!(header("webhook-id"), "render-1");
    let timestamp = header("webhook-timestamp");
    let sent_ts: i64 = sent.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((timestamp.parse::<i64>().unwrap() - sent_ts).abs() <= 1);
    assert_eq!(r.signed_content, format!("render-1.{timestamp}.{}", r.body));
    assert_eq!(
        header("webhook-signature"),
        sign(&secret, "render-1", &timestamp, r.body.as_bytes()).unwrap()
    );
    let by_offset = admin
        .render_delivery(RenderDeliveryRequest {
            endpoint_id: ep.id.clone(),
            event: Some(pb::render_delivery_request::Event::Offset(offset)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_offset.body, r.body);
    let none = admin
        .render_delivery(RenderDeliveryRequest {
            endpoint_id: ep.id.clone(),
            event: None,
        })
        .await
        .unwrap_err();
    assert_invalid(none, "event");
}

#[tokio::test]
async fn endpoint_stats_count_the_workers_attempts() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    rx.respond(Behavior::Status(500));
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    let (ep, _) = create(&mut admin, endpoint(&rx.url)).await;
    let client = admin.clone();
    let stats = |window: Option<prost_types::Duration>| {
        let mut admin = client.clone();
        let id = ep.id.clone();
        async move {
            admin
                .get_endpoint_stats(GetEndpointStatsRequest {
                    endpoint_id: id,
                    window,
                })
                .await
        }
    };
    let empty = stats(None).await.unwrap().into_inner();
    assert_eq!((empty.attempts, empty.buckets.len()), (0, 0));
    publish(&mut publisher, pick("s-1", "O1")).await;
    wait_state(&mut admin, &ep.id, DeliveryState::Delivered, 1).await;
    let s = stats(Some(ms(300_000))).await.unwrap().into_inner();
    assert_eq!((s.attempts, s.successes, s.failures), (2, 1, 1));
    assert!((s.success_rate - 0.5).abs() < 1e-9);
    assert_eq!(s.buckets.iter().map(|b| b.attempts).sum::<u64>(), 2);
    let p99 = s.latency_p99.unwrap();
    assert!(
        p99.seconds < 10 && (p99.seconds, p99.nanos) != (0, 0),
        "{p99:?}"
    );
    assert!(s.counting_since.is_some());
    assert_invalid(stats(Some(ms(30_000))).await.unwrap_err(), "window");
    assert_invalid(stats(Some(ms(25 * 3_600_000))).await.unwrap_err(), "window");
    let unknown = admin
        .get_endpoint_stats(GetEndpointStatsRequest {
            endpoint_id: "ep_nope".into(),
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn event_type_catalog_samples_validate_against_their_schemas() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let types = admin
        .list_event_types(ListEventTypesRequest {})
        .await
        .unwrap()
        .into_inner()
        .event_types;
    let names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
    for ty in stevedore::model::TYPED_EVENT_TYPES
        .iter()
        .chain(stevedore::model::BROKER_EVENT_TYPES)
    {
        assert!(names.contains(ty), "{ty} in {names:?}");
    }
    for t in &types {
        assert!(!t.description.is_empty(), "{}", t.name);
        let schema: serde_json::Value = serde_json::from_str(&t.json_schema).unwrap();
        let sample: serde_json::Value = serde_json::from_str(&t.sample).unwrap();
        stevedore::webhook::catalog::validate(&schema, &sample)
            .unwrap_or_else(|e| panic!("{} sample: {e}", t.name));
        if !t.broker_event {
            assert_eq!(schema["additionalProperties"], false, "{}", t.name);
            let mut bad = sample.clone();
            bad["notAKey"] = serde_json::json!(1);
            assert!(stevedore::webhook::catalog::validate(&schema, &bad).is_err());
        }
    }
}

#[tokio::test]
async fn headers_are_set_and_removed_by_name_and_never_shown() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    let (ep, _) = create(
        &mut admin,
        Endpoint {
            headers: HashMap::from([
                ("x-a".to_string(), "one".to_string()),
                ("x-b".to_string(), "two".to_string()),
            ]),
            ..endpoint(&rx.url)
        },
    )
    .await;
    let update = |set: &[(&str, &str)], remove: &[&str], mask: &[&str]| {
        let mut admin = admin.clone();
        let r = UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: ep.id.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: mask.iter().map(|s| s.to_string()).collect(),
            }),
            set_headers: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            remove_headers: remove.iter().map(|s| s.to_string()).collect(),
        };
        async move { admin.update_endpoint(r).await }
    };
    let e = update(&[("X-A", "nine"), ("x-c", "three")], &["x-b"], &[])
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    let mut names: Vec<&String> = e.headers.keys().collect();
    names.sort();
    assert_eq!(names, ["X-A", "x-c"]);
    assert!(e.headers.values().all(|v| v == "<redacted>"), "{e:?}");
    // Bad edits change nothing.
    assert_invalid(
        update(&[], &["x-b"], &[]).await.unwrap_err(),
        "remove_headers[0]",
    );
    assert_invalid(
        update(&[("x-d", "4")], &[], &["headers"])
            .await
            .unwrap_err(),
        "set_headers",
    );
    assert_invalid(
        update(&[("x-d", "4")], &["x-d"], &[]).await.unwrap_err(),
        "remove_headers[0]",
    );
    publish(&mut publisher, pick("h-1", "O1")).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("x-a"), Some("nine"));
    assert_eq!(got[0].header("x-c"), Some("three"));
    assert_eq!(got[0].header("x-b"), None);
    assert_eq!(got[0].header("x-d"), None);
}

#[tokio::test]
async fn resend_refuses_what_the_endpoint_filter_excludes_and_render_says_so() {
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    // pick() is COMPLETE: this endpoint's filter never holds for it.
    let (ep, _) = create(
        &mut admin,
        Endpoint {
            event_types: vec!["pick.confirmed".into()],
            filter: "status == \"SHORT\"".into(),
            ..endpoint(&rx.url)
        },
    )
    .await;
    let offset = publish(&mut publisher, pick("x-1", "O1")).await;
    let err = admin
        .resend_event(ResendEventRequest {
            endpoint_id: ep.id.clone(),
            event: Some(pb::resend_event_request::Event::Offset(offset)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("SHORT"), "{err:?}");
    let r = admin
        .render_delivery(RenderDeliveryRequest {
            endpoint_id: ep.id.clone(),
            event: Some(pb::render_delivery_request::Event::Offset(offset)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.matches && !r.timestamp_from_last_attempt, "{r:?}");
    // Nothing was sent or recorded.
    rx.expect_no_more_than(0, Duration::from_millis(300)).await;
    let listed = admin
        .list_deliveries(ListDeliveriesRequest {
            endpoint_id: ep.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.deliveries.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn replay_dry_run_counts_what_would_be_sent_and_changes_nothing() {
    use pb::replay_endpoint_request::Start;
    let server = TestServer::start().await;
    let rx = Receiver::start().await;
    let mut admin = server.admin().await;
    let mut publisher = server.publisher().await;
    let (ep, _) = create(
        &mut admin,
        Endpoint {
            event_types: vec!["pick.confirmed".into()],
            filter: "salesOrderId != \"SKIP\"".into(),
            ..endpoint(&rx.url)
        },
    )
    .await;
    let first = publish(&mut publisher, pick("d-1", "O1")).await;
    publish(&mut publisher, pick("d-2", "O2")).await;
    publish(&mut publisher, inventory("d-i", "SKU1", 1.0)).await;
    publish(&mut publisher, pick("d-skip", "SKIP")).await;
    publish(&mut publisher, pick("d-3", "O3")).await;
    rx.wait_for(3, Duration::from_secs(10)).await;
    let replay = |dry_run: bool| {
        let mut admin = admin.clone();
        let id = ep.id.clone();
        async move {
            admin
                .replay_endpoint(pb::ReplayEndpointRequest {
                    endpoint_id: id,
                    start: Some(Start::Offset(first)),
                    dry_run,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let r = replay(true).await;
    // Selected: the three picks the filter lets through; not the inventory
    // update (event types) nor the SKIP pick (filter expression).
    assert_eq!((r.from_offset, r.matching, r.more), (first, 3, false));
    // Nothing was sent again: the next request is a marker published now.
    publish(&mut publisher, pick("d-marker", "O4")).await;
    let got = rx.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(got[3].header("webhook-id"), Some("d-marker"), "{got:?}");
    // The real replay sends what the dry run counted.
    let r = replay(false).await;
    assert_eq!(r.from_offset, first);
    let got = rx.wait_for(8, Duration::from_secs(10)).await;
    let mut again: Vec<_> = got[4..].iter().map(|g| g.header("webhook-id")).collect();
    again.sort();
    assert_eq!(
        again,
        [Some("d-1"), Some("d-2"), Some("d-3"), Some("d-marker")]
    );
}
