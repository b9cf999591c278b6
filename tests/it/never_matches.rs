//! Settings that would silently match nothing are refused with a hint:
//! misspelt event types (endpoints and Subscribe), filter and field paths
//! that no body of the endpoint's event types has, coalescing without a
//! state event type. Custom event types stay allowed.

use stevedore::pb::{
    subscribe_request::Start, CreateEndpointRequest, Endpoint, SubscribeRequest,
    UpdateEndpointRequest,
};

use crate::{
    assert_invalid,
    webhook::{create, endpoint},
    TestServer,
};

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
