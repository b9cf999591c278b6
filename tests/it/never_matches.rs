//! Settings that would silently match nothing are refused with a hint:
//! misspelt event types (endpoints and Subscribe), filter and field paths
//! that no body of the endpoint's event types has, coalescing without a
//! state event type. Custom event types stay allowed.

use stevedore::pb::{
    subscribe_request::Start, CreateEndpointRequest, Endpoint, SubscribeRequest,
    UpdateEndpointRequest,
};

use crate::support::{assert_invalid, create, endpoint, TestServer};

fn typed(types: &[&str], tweak: impl FnOnce(&mut Endpoint)) -> Endpoint {
    let mut e = endpoint("https://example.com/hook");
    e.event_types = types.iter().map(|t| t.to_string()).collect();
    tweak(&mut e);
    e
}

#[tokio::test]
async fn endpoints_refuse_what_would_never_match() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let cases: Vec<(Endpoint, &str, &str)> = vec![
        (
            typed(&["pick.confimed"], |_| {}),
            "endpoint.event_types[0]",
            "did you mean `pick.confirmed`?",
        ),
        (
            typed(&["stevedore.endpoint.disabld"], |_| {}),
            "endpoint.event_types[0]",
            "did you mean `stevedore.endpoint.disabled`?",
        ),
        (
            typed(&["pick.confirmed"], |e| {
                e.filter = r#"stauts == "SHORT""#.into()
            }),
            "endpoint.filter",
            "`stauts` is not a key of pick.confirmed bodies (did you mean `status`?)",
        ),
        (
            typed(&["pick.confirmed"], |e| {
                e.filter = "lines.quantityShort > 0".into()
            }),
            "endpoint.filter",
            "(did you mean `lines[*].quantityShort`?)",
        ),
        (
            typed(&["pick.confirmed"], |e| {
                e.fields = vec!["lines.prodcut".into()]
            }),
            "endpoint.fields[0]",
            "did you mean `lines.product`?",
        ),
        (
            typed(&["pick.confirmed"], |e| e.coalesce = true),
            "endpoint.coalesce",
            "applies to state events",
        ),
    ];
    for (e, field, hint) in cases {
        let err = admin
            .create_endpoint(CreateEndpointRequest { endpoint: Some(e) })
            .await
            .unwrap_err();
        assert!(err.message().contains(hint), "{field}: {err:?}");
        assert_invalid(err, field);
    }

    // What does match is accepted: custom types, real paths in either
    // spelling, coalescing of a state event type.
    create(
        &mut admin,
        typed(&["dock.door_opened"], |e| e.filter = "door == 7".into()),
    )
    .await;
    create(
        &mut admin,
        typed(&["pick.confirmed"], |e| {
            e.filter = r#"status == "SHORT" && lines[0].quantityShort > 0"#.into();
            e.fields = vec![
                "status".into(),
                "lines.product".into(),
                "/lines/0/quantityShort".into(),
            ];
        }),
    )
    .await;
    create(
        &mut admin,
        typed(&["inventory.updated", "pick.confirmed"], |e| {
            e.coalesce = true
        }),
    )
    .await;
    // No event types: any event, custom ones included, so any key.
    create(&mut admin, typed(&[], |e| e.filter = "door == 7".into())).await;

    // An update that names a misspelt key is refused; one that does not
    // touch the filter is not re-judged.
    let (ep, _) = create(&mut admin, typed(&["pick.confirmed"], |_| {})).await;
    let update = |e: Endpoint, paths: &[&str]| UpdateEndpointRequest {
        endpoint: Some(e),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
        ..Default::default()
    };
    let err = admin
        .update_endpoint(update(
            Endpoint {
                id: ep.id.clone(),
                filter: "stauts == \"SHORT\"".into(),
                ..Default::default()
            },
            &["filter"],
        ))
        .await
        .unwrap_err();
    assert_invalid(err, "endpoint.filter");
    admin
        .update_endpoint(update(
            Endpoint {
                id: ep.id.clone(),
                enabled: Some(false),
                ..Default::default()
            },
            &["enabled"],
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn subscribe_refuses_a_misspelt_event_type() {
    let server = TestServer::start().await;
    let mut s = server.subscriber().await;
    let subscribe = |types: &[&str]| SubscribeRequest {
        event_types: types.iter().map(|t| t.to_string()).collect(),
        start: Some(Start::Earliest(true)),
        ..Default::default()
    };
    let err = s
        .subscribe(subscribe(&["pick.confimed"]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("did you mean `pick.confirmed`?"),
        "{err:?}"
    );
    assert_invalid(err, "event_types[0]");
    let err = s
        .subscribe(subscribe(&["pick.confirmed", "stevedore.delivery.faling"]))
        .await
        .unwrap_err();
    assert_invalid(err, "event_types[1]");
    // Typed, broker and custom types are fine.
    s.subscribe(subscribe(&[
        "pick.confirmed",
        "stevedore.delivery.failing",
        "dock.door_opened",
    ]))
    .await
    .unwrap();
}

/// ExplainEvent names the first setting that keeps an event from an
/// endpoint, or where its delivery stands; the filtered count shows in the
/// metrics.
#[tokio::test]
async fn explain_event_says_why_an_endpoint_did_not_get_it() {
    use stevedore::pb::{explain_event_request::Event, ExplainEventRequest};

    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut p = server.publisher().await;
    let (ep, _) = create(
        &mut admin,
        typed(&["pick.confirmed"], |e| {
            e.attribute_filters.insert("fc".into(), "FC001".into());
            e.filter = r#"status == "SHORT""#.into();
            e.enabled = Some(false);
        }),
    )
    .await;
    let with_fc = |mut e: stevedore::pb::Event, fc: &str| {
        e.attributes.insert("fc".into(), fc.into());
        e
    };
    let short = |mut e: stevedore::pb::Event| {
        if let Some(stevedore::pb::event::Payload::PickConfirmed(p)) = &mut e.payload {
            p.status = stevedore::pb::PickStatus::Short as i32;
        }
        e
    };
    let inventory =
        crate::support::publish(&mut p, crate::support::inventory("inv-1", "SKU1", 3.0)).await;
    let other_fc = crate::support::publish(
        &mut p,
        with_fc(crate::support::pick("p-1", "SO-1"), "FC002"),
    )
    .await;
    let complete = crate::support::publish(
        &mut p,
        with_fc(crate::support::pick("p-2", "SO-2"), "FC001"),
    )
    .await;
    let selected = crate::support::publish(
        &mut p,
        short(with_fc(crate::support::pick("p-3", "SO-3"), "FC001")),
    )
    .await;

    let explain = |event: Event| ExplainEventRequest {
        endpoint_id: ep.id.clone(),
        event: Some(event),
    };
    let ask = |event: Event| {
        let mut admin = admin.clone();
        let request = explain(event);
        async move { admin.explain_event(request).await.map(|r| r.into_inner()) }
    };
    let r = ask(Event::Offset(inventory)).await.unwrap();
    assert!(!r.matches);
    assert_eq!(
        r.reason,
        "event type inventory.updated is not in event_types [pick.confirmed]"
    );
    let r = ask(Event::Offset(other_fc)).await.unwrap();
    assert!(!r.matches);
    assert_eq!(
        r.reason,
        r#"attribute_filters wants "fc" = "FC001"; the event has "FC002""#
    );
    let r = ask(Event::EventId("p-2".into())).await.unwrap();
    assert_eq!((r.offset, r.matches), (complete, false));
    assert_eq!(
        r.reason,
        r#"the filter `status == "SHORT"` does not hold for this event's body"#
    );
    let r = ask(Event::EventId("p-3".into())).await.unwrap();
    assert_eq!((r.offset, r.matches), (selected, true));
    assert_eq!(r.reason, "selected; waiting: the endpoint is disabled");
    assert!(r.delivery.is_none());

    let err = ask(Event::Offset(99)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = ask(Event::EventId("nope".into())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_invalid(ask(Event::Offset(0)).await.unwrap_err(), "offset");
}
