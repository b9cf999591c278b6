//! Tenants (#18): two tenants' tokens against the real broker. Each sees and
//! changes only its own endpoints, deliveries, consumers and events; another
//! tenant's id is NOT_FOUND; a tenant publisher cannot publish another
//! tenant's event; subscribers and endpoints never carry another tenant's
//! event, whatever they ask for. Then a seeded sweep of thousands of
//! randomized cross-tenant requests with zero leaks.

use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use stevedore::pb::{
    self, admin_client::AdminClient, event::Payload, explain_event_request,
    replay_endpoint_request, reset_consumer_request, subscribe_request::Start, Endpoint,
};
use tonic::Code;

use crate::support::{
    tenants::{
        create_as, custom_of, hook, pick_of, publish_as, two_tenants, ACME_ADMIN, ACME_PUB,
        ACME_SUB, BETA_ADMIN, BETA_SUB, ROOT,
    },
    Authed, Receiver,
};

/// Whose a webhook body is: a pick's `tenantId`, a custom event's `owner`.
fn owner(body: &serde_json::Value) -> String {
    body.get("tenantId")
        .or_else(|| body.get("owner"))
        .and_then(|v| v.as_str())
        .unwrap_or("<none>")
        .to_owned()
}

fn not_found<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    match r {
        Err(s) if s.code() == Code::NotFound => {}
        other => panic!("{what}: expected NOT_FOUND, got {other:?}"),
    }
}

/// Reads a stream until it is quiet for `quiet_ms`; returns the offsets
/// and tenants read.
async fn drain(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    quiet_ms: u64,
) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(quiet_ms), stream.message()).await
    {
        let Some(m) = m.unwrap() else { break };
        let e = m.event.unwrap();
        out.push((m.offset, stevedore::model::event_tenant(&e).to_owned()));
        assert!(out.len() < 10_000, "runaway stream");
    }
    out
}

#[tokio::test]
async fn publishers_publish_only_their_tenants_events() {
    let server = two_tenants(|c| c.tenants = vec!["acme".into(), "beta".into()]).await;
    let mut acme = server.publisher_as(Some(ACME_PUB)).await;
    let mut root = server.publisher_as(Some(ROOT)).await;
    let mut sub = server.subscriber_as(Some(ROOT)).await;

    // Its own tenant, from the payload or the envelope; none given: its own.
    publish_as(&mut acme, pick_of("acme", "SO-1")).await;
    let o = publish_as(&mut acme, custom_of("", "acme")).await;
    let got = sub
        .get_event(pb::GetEventRequest {
            offset: o,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.event.unwrap().tenant, "acme");

    // Another tenant's: PERMISSION_DENIED naming the field; nothing written.
    for (event, field) in [
        (pick_of("beta", "SO-2"), "event.pick_confirmed.tenant_id"),
        (custom_of("beta", "beta"), "event.tenant"),
    ] {
        let s = acme
            .publish(pb::PublishRequest { event: Some(event) })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(s.message().starts_with(field), "{s:?}");
    }
    // A batch with one foreign event writes nothing.
    let s = acme
        .publish_batch(pb::PublishBatchRequest {
            events: vec![pick_of("acme", "SO-3"), custom_of("beta", "beta")],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().starts_with("events[1].tenant"), "{s:?}");
    // The stream refuses it too.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::PublishRequest {
        event: Some(pick_of("beta", "SO-4")),
    })
    .await
    .unwrap();
    drop(tx);
    let mut out = acme
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let s = out.message().await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // Payload and envelope disagree: INVALID_ARGUMENT naming the field.
    let mut both = pick_of("acme", "SO-5");
    both.tenant = "beta".into();
    let s = root
        .publish(pb::PublishRequest { event: Some(both) })
        .await
        .unwrap_err();
    crate::support::assert_invalid(s, "event.tenant");
    // Not a configured tenant.
    let s = root
        .publish(pb::PublishRequest {
            event: Some(pick_of("gamma", "SO-6")),
        })
        .await
        .unwrap_err();
    crate::support::assert_invalid(s, "event.pick_confirmed.tenant_id");
    // A global publisher publishes any tenant's, and events of no tenant.
    publish_as(&mut root, pick_of("beta", "SO-7")).await;
    publish_as(&mut root, custom_of("", "nobody")).await;

    // Everything refused wrote nothing: the log holds the 4 accepted.
    let mut all = sub
        .subscribe(pb::SubscribeRequest {
            start: Some(Start::Earliest(true)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read = drain(&mut all, 500).await;
    let tenants: Vec<&str> = read.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(tenants, ["acme", "acme", "beta", ""]);
}

#[tokio::test]
async fn subscribers_read_only_their_tenants_events() {
    let server = two_tenants(|_| {}).await;
    let mut root = server.publisher_as(Some(ROOT)).await;
    let mut offsets = Vec::new();
    for i in 0..6 {
        let tenant = ["acme", "beta", ""][i % 3];
        let e = if i % 2 == 0 {
            custom_of(tenant, tenant)
        } else {
            pick_of(tenant, &format!("SO-{i}"))
        };
        offsets.push((publish_as(&mut root, e).await, tenant));
    }
    for (token, mine) in [(ACME_SUB, "acme"), (BETA_SUB, "beta")] {
        let mut sub = server.subscriber_as(Some(token)).await;
        let own: Vec<u64> = offsets
            .iter()
            .filter(|(_, t)| *t == mine)
            .map(|(o, _)| *o)
            .collect();
        // From earliest, from every offset, with and without forged type
        // lists: only its own events.
        let mut starts = vec![Start::Earliest(true)];
        starts.extend(offsets.iter().map(|(o, _)| Start::Offset(*o)));
        for start in starts {
            for types in [vec![], vec!["dock.door_opened".to_string()]] {
                let mut s = sub
                    .subscribe(pb::SubscribeRequest {
                        start: Some(start),
                        event_types: types,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let read = drain(&mut s, 300).await;
                assert!(read.iter().all(|(_, t)| t == mine), "{mine}: {read:?}");
                let from = match start {
                    Start::Offset(o) => o,
                    _ => 0,
                };
                assert!(read.iter().all(|(o, _)| own.contains(o) && *o >= from));
            }
        }
        // A durable consumer: its own events only, and it keeps its tenant.
        let mut s = sub
            .subscribe(pb::SubscribeRequest {
                consumer: format!("{mine}-c"),
                start: Some(Start::Earliest(true)),
                ack_mode: pb::AckMode::Explicit as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let read = drain(&mut s, 300).await;
        assert_eq!(read.iter().map(|(o, _)| *o).collect::<Vec<_>>(), own);
        // Point reads: another tenant's offset, and one of no tenant, are
        // NOT_FOUND like an offset that does not exist.
        for (o, t) in &offsets {
            let r = sub
                .get_event(pb::GetEventRequest {
                    offset: *o,
                    ..Default::default()
                })
                .await;
            if *t == mine {
                r.unwrap();
            } else {
                not_found(r, "GetEvent of another tenant's offset");
            }
        }
    }
    // The other tenant's consumer: Ack/Nack NOT_FOUND; its name is taken.
    let mut beta = server.subscriber_as(Some(BETA_SUB)).await;
    not_found(
        beta.ack(pb::AckRequest {
            consumer: "acme-c".into(),
            offsets: vec![offsets[0].0],
        })
        .await,
        "Ack on another tenant's consumer",
    );
    not_found(
        beta.nack(pb::NackRequest {
            consumer: "acme-c".into(),
            offsets: vec![offsets[0].0],
            delay: None,
        })
        .await,
        "Nack on another tenant's consumer",
    );
    let s = beta
        .subscribe(pb::SubscribeRequest {
            consumer: "acme-c".into(),
            ack_mode: pb::AckMode::Explicit as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    crate::support::assert_invalid(s, "consumer");

    // Admins see their tenant's consumers only; the global admin all, with
    // their tenants.
    let mut acme_admin = server.admin_as(Some(ACME_ADMIN)).await;
    let mut beta_admin = server.admin_as(Some(BETA_ADMIN)).await;
    let mut root_admin = server.admin_as(Some(ROOT)).await;
    let names = |cs: Vec<pb::ConsumerInfo>| -> Vec<(String, String)> {
        cs.into_iter().map(|c| (c.name, c.tenant)).collect()
    };
    let list = |a: &mut AdminClient<Authed>| {
        let mut a = a.clone();
        async move {
            a.list_consumers(pb::ListConsumersRequest {})
                .await
                .unwrap()
                .into_inner()
                .consumers
        }
    };
    assert_eq!(
        names(list(&mut acme_admin).await),
        [("acme-c".to_string(), "acme".to_string())]
    );
    assert_eq!(names(list(&mut root_admin).await).len(), 2);
    for r in [
        beta_admin
            .delete_consumer(pb::DeleteConsumerRequest {
                name: "acme-c".into(),
            })
            .await
            .map(drop),
        beta_admin
            .redrive_consumer(pb::RedriveConsumerRequest {
                name: "acme-c".into(),
            })
            .await
            .map(drop),
        beta_admin
            .reset_consumer(pb::ResetConsumerRequest {
                name: "acme-c".into(),
                position: Some(reset_consumer_request::Position::Earliest(true)),
            })
            .await
            .map(drop),
    ] {
        not_found(r, "another tenant's consumer");
    }
    acme_admin
        .reset_consumer(pb::ResetConsumerRequest {
            name: "acme-c".into(),
            position: Some(reset_consumer_request::Position::Earliest(true)),
        })
        .await
        .unwrap();
    // A restart keeps each consumer's tenant.
    let server = server.restart().await;
    let mut root_admin = server.admin_as(Some(ROOT)).await;
    let mut after = names(list(&mut root_admin).await);
    after.sort();
    assert_eq!(
        after,
        [
            ("acme-c".to_string(), "acme".to_string()),
            ("beta-c".to_string(), "beta".to_string())
        ]
    );
}

#[tokio::test]
async fn admins_see_and_change_only_their_tenants_endpoints() {
    let server = two_tenants(|_| {}).await;
    let (ra, rb) = (Receiver::start().await, Receiver::start().await);
    let mut acme = server.admin_as(Some(ACME_ADMIN)).await;
    let mut beta = server.admin_as(Some(BETA_ADMIN)).await;
    let mut root = server.admin_as(Some(ROOT)).await;

    // Created with the token's tenant; another tenant is refused.
    let ea = create_as(&mut acme, hook(&ra.url)).await;
    assert_eq!(ea.tenant, "acme");
    let eb = create_as(&mut beta, hook(&rb.url)).await;
    assert_eq!(eb.tenant, "beta");
    let mut foreign = hook(&ra.url);
    foreign.tenant = "beta".into();
    let s = acme
        .create_endpoint(pb::CreateEndpointRequest {
            endpoint: Some(foreign.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().starts_with("endpoint.tenant"), "{s:?}");
    // The global admin may create one for any tenant, or a global one.
    let eg = create_as(&mut root, foreign).await;
    assert_eq!(eg.tenant, "beta");
    root.delete_endpoint(pb::DeleteEndpointRequest { id: eg.id.clone() })
        .await
        .unwrap();

    // Events of both tenants and of none: each endpoint (empty filter)
    // receives only its tenant's.
    let mut p = server.publisher_as(Some(ROOT)).await;
    let mut by_tenant: Vec<(u64, &str)> = Vec::new();
    for i in 0..4 {
        for t in ["acme", "beta", ""] {
            let e = if i % 2 == 0 {
                pick_of(t, &format!("SO-{t}-{i}"))
            } else {
                custom_of(t, t)
            };
            by_tenant.push((publish_as(&mut p, e).await, t));
        }
    }
    let got_a = ra.wait_for(4, Duration::from_secs(10)).await;
    let got_b = rb.wait_for(4, Duration::from_secs(10)).await;
    // Nothing more arrives (the other tenant's events were skipped).
    let got_a2 = ra.expect_no_more_than(4, Duration::from_millis(500)).await;
    assert_eq!(got_a.len(), 4);
    for r in got_a.iter().chain(&got_a2) {
        assert_eq!(owner(&r.json()), "acme", "{}", r.body_text());
    }
    for r in &got_b {
        assert_eq!(owner(&r.json()), "beta", "{}", r.body_text());
    }

    // Listing: each its own; the global admin both.
    let ids = |r: pb::ListEndpointsResponse| -> Vec<String> {
        r.endpoints.into_iter().map(|e| e.id).collect()
    };
    let all = pb::ListEndpointsRequest::default();
    assert_eq!(
        ids(acme.list_endpoints(all.clone()).await.unwrap().into_inner()),
        std::slice::from_ref(&ea.id)
    );
    assert_eq!(
        ids(beta.list_endpoints(all.clone()).await.unwrap().into_inner()),
        std::slice::from_ref(&eb.id)
    );
    assert_eq!(
        ids(root.list_endpoints(all).await.unwrap().into_inner()).len(),
        2
    );
    // Paging over a scope counts only its endpoints.
    let page = acme
        .list_endpoints(pb::ListEndpointsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.endpoints.len(), 1);
    assert!(page.next_page_token.is_empty(), "{page:?}");

    // Every RPC on the other tenant's endpoint: NOT_FOUND.
    let acme_offset = by_tenant.iter().find(|(_, t)| *t == "acme").unwrap().0;
    let beta_offset = by_tenant.iter().find(|(_, t)| *t == "beta").unwrap().0;
    cross_tenant_calls(&mut beta, &ea.id, acme_offset).await;
    cross_tenant_calls(&mut acme, &eb.id, beta_offset).await;

    // Its own: allowed.
    acme.get_endpoint(pb::GetEndpointRequest { id: ea.id.clone() })
        .await
        .unwrap();
    let d = acme
        .list_deliveries(pb::ListDeliveriesRequest {
            endpoint_id: ea.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deliveries.len(), 4);
    acme.list_attempts(pb::ListAttemptsRequest {
        endpoint_id: ea.id.clone(),
        offset: acme_offset,
    })
    .await
    .unwrap();
    // Explaining another tenant's event on its own endpoint: the event is
    // NOT_FOUND for a tenant admin; a global admin is told why it is not
    // delivered.
    not_found(
        acme.explain_event(pb::ExplainEventRequest {
            endpoint_id: ea.id.clone(),
            event: Some(explain_event_request::Event::Offset(beta_offset)),
        })
        .await,
        "explaining another tenant's event",
    );
    let why = root
        .explain_event(pb::ExplainEventRequest {
            endpoint_id: ea.id.clone(),
            event: Some(explain_event_request::Event::Offset(beta_offset)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!why.matches);
    assert!(why.reason.contains("tenant"), "{why:?}");
    // The tenant cannot be changed.
    let s = root
        .update_endpoint(pb::UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: ea.id.clone(),
                tenant: "beta".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["tenant".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    crate::support::assert_invalid(s, "endpoint.tenant");
    acme.update_endpoint(pb::UpdateEndpointRequest {
        endpoint: Some(Endpoint {
            id: ea.id.clone(),
            description: "mine".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["description".into()],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    acme.replay_endpoint(pb::ReplayEndpointRequest {
        dry_run: false,
        endpoint_id: ea.id.clone(),
        start: Some(replay_endpoint_request::Start::Offset(1)),
    })
    .await
    .unwrap();
    // Replayed: the same 4 again, still only acme's.
    let again = ra.wait_for(8, Duration::from_secs(10)).await;
    assert!(again.iter().all(|r| owner(&r.json()) == "acme"));
    acme.delete_endpoint(pb::DeleteEndpointRequest { id: ea.id.clone() })
        .await
        .unwrap();
    // The beta endpoint survived every attempt on it.
    root.get_endpoint(pb::GetEndpointRequest { id: eb.id.clone() })
        .await
        .unwrap();
}

/// Every endpoint RPC a tenant admin could aim at `id`, another tenant's
/// endpoint: all NOT_FOUND.
pub(crate) async fn cross_tenant_calls(admin: &mut AdminClient<Authed>, id: &str, offset: u64) {
    let id = id.to_owned();
    not_found(
        admin
            .get_endpoint(pb::GetEndpointRequest { id: id.clone() })
            .await,
        "GetEndpoint",
    );
    not_found(
        admin
            .update_endpoint(pb::UpdateEndpointRequest {
                endpoint: Some(Endpoint {
                    id: id.clone(),
                    description: "hijacked".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
                ..Default::default()
            })
            .await,
        "UpdateEndpoint",
    );
    not_found(
        admin
            .rotate_endpoint_secret(pb::RotateEndpointSecretRequest {
                id: id.clone(),
                grace_period: None,
            })
            .await,
        "RotateEndpointSecret",
    );
    not_found(
        admin
            .list_deliveries(pb::ListDeliveriesRequest {
                endpoint_id: id.clone(),
                ..Default::default()
            })
            .await,
        "ListDeliveries",
    );
    not_found(
        admin
            .list_attempts(pb::ListAttemptsRequest {
                endpoint_id: id.clone(),
                offset,
            })
            .await,
        "ListAttempts",
    );
    not_found(
        admin
            .retry_delivery(pb::RetryDeliveryRequest {
                endpoint_id: id.clone(),
                offset,
            })
            .await,
        "RetryDelivery",
    );
    not_found(
        admin
            .replay_endpoint(pb::ReplayEndpointRequest {
                dry_run: false,
                endpoint_id: id.clone(),
                start: Some(replay_endpoint_request::Start::Offset(1)),
            })
            .await,
        "ReplayEndpoint",
    );
    not_found(
        admin
            .send_test_event(pb::SendTestEventRequest {
                endpoint_id: id.clone(),
            })
            .await,
        "SendTestEvent",
    );
    not_found(
        admin
            .explain_event(pb::ExplainEventRequest {
                endpoint_id: id.clone(),
                event: Some(explain_event_request::Event::Offset(offset)),
            })
            .await,
        "ExplainEvent",
    );
    // The #16 delivery RPCs go through the same scope.
    not_found(
        admin
            .recover_deliveries(pb::RecoverDeliveriesRequest {
                endpoint_id: id.clone(),
                ..Default::default()
            })
            .await,
        "RecoverDeliveries",
    );
    not_found(
        admin
            .resend_event(pb::ResendEventRequest {
                endpoint_id: id.clone(),
                event: Some(pb::resend_event_request::Event::Offset(offset)),
            })
            .await,
        "ResendEvent",
    );
    not_found(
        admin
            .render_delivery(pb::RenderDeliveryRequest {
                endpoint_id: id.clone(),
                event: Some(pb::render_delivery_request::Event::Offset(offset)),
            })
            .await,
        "RenderDelivery",
    );
    not_found(
        admin
            .get_endpoint_stats(pb::GetEndpointStatsRequest {
                endpoint_id: id.clone(),
                window: None,
            })
            .await,
        "GetEndpointStats",
    );
    not_found(
        admin
            .delete_endpoint(pb::DeleteEndpointRequest { id: id.clone() })
            .await,
        "DeleteEndpoint",
    );
}

/// The sweep: thousands of randomized requests from one tenant's tokens
/// aimed at the other's endpoints, deliveries, offsets and consumers, with
/// forged filters. Zero leaks: every targeted call is NOT_FOUND, every list
/// and stream carries only the caller's own, and the victim's state is
/// unchanged afterwards.
#[tokio::test]
async fn cross_tenant_sweep_leaks_nothing() {
    const REQUESTS: usize = 3_000;
    let seed: u64 = std::env::var("TENANT_SWEEP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("tenant sweep seed {seed} (TENANT_SWEEP_SEED replays it)");
    let server = two_tenants(|_| {}).await;
    let rx = Receiver::start().await;
    let mut root = server.admin_as(Some(ROOT)).await;
    // Two endpoints per tenant, events of both, deliveries recorded.
    let mut endpoints = [Vec::new(), Vec::new()];
    for (i, token) in [ACME_ADMIN, BETA_ADMIN].into_iter().enumerate() {
        let mut a = server.admin_as(Some(token)).await;
        for _ in 0..2 {
            endpoints[i].push(create_as(&mut a, hook(&rx.url)).await.id);
        }
    }
    let mut p = server.publisher_as(Some(ROOT)).await;
    let mut offsets = [Vec::new(), Vec::new()];
    for i in 0..20 {
        let t = i % 2;
        let tenant = ["acme", "beta"][t];
        let e = if i % 4 < 2 {
            pick_of(tenant, &format!("SO-{i}"))
        } else {
            custom_of(tenant, tenant)
        };
        offsets[t].push(publish_as(&mut p, e).await);
    }
    rx.wait_for(40, Duration::from_secs(20)).await;
    for (i, token) in [ACME_SUB, BETA_SUB].into_iter().enumerate() {
        let mut s = server.subscriber_as(Some(token)).await;
        let mut st = s
            .subscribe(pb::SubscribeRequest {
                consumer: format!("c-{i}"),
                ack_mode: pb::AckMode::Explicit as i32,
                start: Some(Start::Earliest(true)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        drain(&mut st, 200).await;
    }
    let snapshot = |r: pb::ListEndpointsResponse| -> Vec<(String, String, String)> {
        r.endpoints
            .into_iter()
            .map(|e| (e.id, e.description, e.tenant))
            .collect()
    };
    let before = snapshot(
        root.list_endpoints(pb::ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );

    let clients = [
        (
            server.admin_as(Some(ACME_ADMIN)).await,
            server.subscriber_as(Some(ACME_SUB)).await,
        ),
        (
            server.admin_as(Some(BETA_ADMIN)).await,
            server.subscriber_as(Some(BETA_SUB)).await,
        ),
    ];
    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut calls = Vec::with_capacity(REQUESTS);
    for n in 0..REQUESTS {
        let me = rng.random_range(0..2);
        let other = 1 - me;
        let id = endpoints[other][rng.random_range(0..2)].clone();
        let offset = offsets[other][rng.random_range(0..offsets[other].len())];
        let own_offset = offsets[me][rng.random_range(0..offsets[me].len())];
        let kind = rng.random_range(0..14);
        let (mut admin, mut sub) = (clients[me].0.clone(), clients[me].1.clone());
        let my_endpoint = endpoints[me][0].clone();
        let mine = ["acme", "beta"][me];
        let foreign_consumer = format!("c-{other}");
        calls.push(async move {
            let what = format!("request {n} kind {kind}");
            match kind {
                0 => not_found(
                    admin.get_endpoint(pb::GetEndpointRequest { id }).await,
                    &what,
                ),
                1 => not_found(
                    admin
                        .list_deliveries(pb::ListDeliveriesRequest {
                            endpoint_id: id,
                            ..Default::default()
                        })
                        .await,
                    &what,
                ),
                2 => not_found(
                    admin
                        .list_attempts(pb::ListAttemptsRequest {
                            endpoint_id: id,
                            offset,
                        })
                        .await,
                    &what,
                ),
                3 => not_found(
                    admin
                        .retry_delivery(pb::RetryDeliveryRequest {
                            endpoint_id: id,
                            offset,
                        })
                        .await,
                    &what,
                ),
                4 => not_found(
                    admin
                        .explain_event(pb::ExplainEventRequest {
                            endpoint_id: id,
                            event: Some(explain_event_request::Event::Offset(offset)),
                        })
                        .await,
                    &what,
                ),
                // Its own endpoint, the other's event.
                5 => not_found(
                    admin
                        .explain_event(pb::ExplainEventRequest {
                            endpoint_id: my_endpoint,
                            event: Some(explain_event_request::Event::Offset(offset)),
                        })
                        .await,
                    &what,
                ),
                6 => not_found(
                    admin
                        .update_endpoint(pb::UpdateEndpointRequest {
                            endpoint: Some(Endpoint {
                                id,
                                description: "hijacked".into(),
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["description".into()],
                            }),
                            ..Default::default()
                        })
                        .await,
                    &what,
                ),
                7 => not_found(
                    admin
                        .replay_endpoint(pb::ReplayEndpointRequest {
                            dry_run: false,
                            endpoint_id: id,
                            start: Some(replay_endpoint_request::Start::Offset(1)),
                        })
                        .await,
                    &what,
                ),
                8 => not_found(
                    sub.get_event(pb::GetEventRequest {
                        offset,
                        ..Default::default()
                    })
                    .await,
                    &what,
                ),
                9 => not_found(
                    sub.ack(pb::AckRequest {
                        consumer: foreign_consumer,
                        offsets: vec![offset],
                    })
                    .await,
                    &what,
                ),
                10 => not_found(
                    admin
                        .reset_consumer(pb::ResetConsumerRequest {
                            name: foreign_consumer,
                            position: Some(reset_consumer_request::Position::Latest(true)),
                        })
                        .await,
                    &what,
                ),
                11 => {
                    let r = admin
                        .list_endpoints(pb::ListEndpointsRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(r.endpoints.iter().all(|e| e.tenant == mine), "{what}");
                }
                12 => {
                    let r = admin
                        .list_consumers(pb::ListConsumersRequest {})
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(r.consumers.iter().all(|c| c.tenant == mine), "{what}");
                }
                // A stream from the other tenant's offset, with a forged
                // type list: only its own events, none before `offset`.
                _ => {
                    let types = if offset % 2 == 0 {
                        vec!["dock.door_opened".to_string()]
                    } else {
                        vec![]
                    };
                    let mut s = sub
                        .subscribe(pb::SubscribeRequest {
                            start: Some(Start::Offset(offset.min(own_offset))),
                            event_types: types,
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let read = drain(&mut s, 50).await;
                    assert!(read.iter().all(|(_, t)| t == mine), "{what}: {read:?}");
                }
            }
        });
    }
    // Bounded concurrency and time.
    use futures::StreamExt;
    tokio::time::timeout(
        Duration::from_secs(240),
        futures::stream::iter(calls).for_each_concurrent(16, |c| c),
    )
    .await
    .expect("the sweep finished in time");
    eprintln!(
        "tenant sweep: {REQUESTS} requests in {:?}",
        started.elapsed()
    );
    let after = snapshot(
        root.list_endpoints(pb::ListEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(before, after, "no endpoint changed");
    // Nothing was redelivered by a forged retry or replay.
    let extra = rx.expect_no_more_than(40, Duration::from_millis(300)).await;
    assert_eq!(extra.len(), 40);
}

#[tokio::test]
async fn per_tenant_limits() {
    let server = two_tenants(|c| {
        c.tenant_max_endpoints = 2;
        c.tenant_publish_rate = 0.5;
        c.tenant_publish_burst = 3;
    })
    .await;
    let rx = Receiver::start().await;
    let mut acme = server.admin_as(Some(ACME_ADMIN)).await;
    let mut beta = server.admin_as(Some(BETA_ADMIN)).await;
    for _ in 0..2 {
        create_as(&mut acme, hook(&rx.url)).await;
    }
    let s = acme
        .create_endpoint(pb::CreateEndpointRequest {
            endpoint: Some(hook(&rx.url)),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("tenant_max_endpoints"), "{s:?}");
    // The other tenant's budget is its own.
    for _ in 0..2 {
        create_as(&mut beta, hook(&rx.url)).await;
    }

    // Publish rate: bursts of 3 per tenant; a 4th at once is refused, and
    // a batch over the budget is refused whole.
    let mut p = server.publisher_as(Some(ROOT)).await;
    for i in 0..3 {
        publish_as(&mut p, pick_of("acme", &format!("SO-{i}"))).await;
    }
    let s = p
        .publish(pb::PublishRequest {
            event: Some(pick_of("acme", "SO-x")),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("tenant_publish_rate"), "{s:?}");
    let s = p
        .publish_batch(pb::PublishBatchRequest {
            events: vec![pick_of("beta", "SO-b1"), pick_of("acme", "SO-b2")],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    // beta's budget was not spent by the refused batch; no tenant: no limit.
    for i in 0..3 {
        publish_as(&mut p, pick_of("beta", &format!("SO-b{i}"))).await;
    }
    for i in 0..10 {
        publish_as(&mut p, custom_of("", &format!("n{i}"))).await;
    }
    // Refilled after a while (0.5/s: one token in 2 s).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    publish_as(&mut p, pick_of("acme", "SO-later")).await;
}

#[tokio::test]
async fn audit_records_every_change_and_publishes_it() {
    let server = two_tenants(|c| c.audit_events = true).await;
    let rx = Receiver::start().await;
    let mut acme = server.admin_as(Some(ACME_ADMIN)).await;
    let mut beta = server.admin_as(Some(BETA_ADMIN)).await;
    let mut root = server.admin_as(Some(ROOT)).await;
    let e = create_as(&mut acme, hook(&rx.url)).await;
    acme.update_endpoint(pb::UpdateEndpointRequest {
        endpoint: Some(Endpoint {
            id: e.id.clone(),
            enabled: Some(false),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["enabled".into()],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    acme.rotate_endpoint_secret(pb::RotateEndpointSecretRequest {
        id: e.id.clone(),
        grace_period: None,
    })
    .await
    .unwrap();
    // A refused change is not recorded.
    cross_tenant_calls(&mut beta, &e.id, 1).await;
    acme.delete_endpoint(pb::DeleteEndpointRequest { id: e.id.clone() })
        .await
        .unwrap();
    let eb = create_as(&mut beta, hook(&rx.url)).await;
    // The global admin acts on beta's endpoint: beta's admin sees it too.
    root.replay_endpoint(pb::ReplayEndpointRequest {
        dry_run: false,
        endpoint_id: eb.id.clone(),
        start: Some(replay_endpoint_request::Start::Offset(1)),
    })
    .await
    .unwrap();

    let list = |a: &AdminClient<Authed>| {
        let mut a = a.clone();
        async move {
            a.list_audit_records(pb::ListAuditRecordsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .records
        }
    };
    let mine = list(&acme).await;
    let actions: Vec<&str> = mine.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "endpoint.delete",
            "endpoint.rotate_secret",
            "endpoint.update(enabled)",
            "endpoint.create"
        ]
    );
    for r in &mine {
        assert_eq!(
            (r.token.as_str(), r.tenant.as_str()),
            ("acme-admin", "acme")
        );
        assert_eq!(r.target, e.id);
        assert!(r.at.is_some());
    }
    let theirs = list(&beta).await;
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    assert_eq!(theirs[0].token, "root");
    assert_eq!(theirs[0].tenant, "");
    assert_eq!(theirs[0].target_tenant, "beta");
    assert_eq!(list(&root).await.len(), 6);
    // Paging, newest first.
    let page = root
        .list_audit_records(pb::ListAuditRecordsRequest {
            page_size: 4,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.len(), 4);
    let rest = root
        .list_audit_records(pb::ListAuditRecordsRequest {
            page_size: 4,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.records.len(), 2);
    assert!(rest.next_page_token.is_empty());

    // Published as operational events of the target's tenant.
    let mut sub = server.subscriber_as(Some(ACME_SUB)).await;
    let mut s = sub
        .subscribe(pb::SubscribeRequest {
            start: Some(Start::Earliest(true)),
            event_types: vec!["stevedore.admin.changed".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read = drain(&mut s, 500).await;
    assert_eq!(read.len(), 4, "{read:?}");
    let first = sub
        .get_event(pb::GetEventRequest {
            offset: read[0].0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Payload::Custom(c)) = first.event.unwrap().payload else {
        panic!("a custom payload");
    };
    let data = c.data.unwrap().fields;
    let text = |k: &str| match data[k].kind.as_ref() {
        Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("action"), "endpoint.create");
    assert_eq!(text("token"), "acme-admin");
    assert_eq!(text("target"), e.id);
}

#[tokio::test]
async fn a_global_admin_erases_a_tenant_while_the_broker_runs() {
    let server = two_tenants(|_| {}).await;
    let rx = Receiver::start().await;
    let mut acme = server.admin_as(Some(ACME_ADMIN)).await;
    let mut beta = server.admin_as(Some(BETA_ADMIN)).await;
    let mut root = server.admin_as(Some(ROOT)).await;
    let ea = create_as(&mut acme, hook(&rx.url)).await;
    let eb = create_as(&mut beta, hook(&rx.url)).await;
    let mut p = server.publisher_as(Some(ROOT)).await;
    for t in ["acme", "beta", "acme", "beta"] {
        publish_as(&mut p, pick_of(t, "SO-1")).await;
    }
    rx.wait_for(4, Duration::from_secs(10)).await;
    for (token, name) in [(ACME_SUB, "acme-c"), (BETA_SUB, "beta-c")] {
        let mut sub = server.subscriber_as(Some(token)).await;
        let mut s = sub
            .subscribe(pb::SubscribeRequest {
                consumer: name.into(),
                ack_mode: pb::AckMode::Explicit as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        drain(&mut s, 100).await;
    }
    // Only a global admin may erase.
    let s = acme
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = root
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "no such!".into(),
        })
        .await
        .unwrap_err();
    crate::support::assert_invalid(s, "tenant");
    let erased = root
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((erased.endpoints, erased.consumers), (1, 1));
    // acme's endpoint, its deliveries and its consumer are gone; beta's
    // are untouched and still deliver.
    not_found(
        root.list_deliveries(pb::ListDeliveriesRequest {
            endpoint_id: ea.id.clone(),
            ..Default::default()
        })
        .await,
        "the erased endpoint's deliveries",
    );
    let eps = root
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(
        eps.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [eb.id.as_str()]
    );
    let consumers = root
        .list_consumers(pb::ListConsumersRequest {})
        .await
        .unwrap()
        .into_inner()
        .consumers;
    assert_eq!(
        consumers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["beta-c"]
    );
    let d = root
        .list_deliveries(pb::ListDeliveriesRequest {
            endpoint_id: eb.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deliveries.len(), 2);
    rx.clear();
    publish_as(&mut p, pick_of("beta", "SO-2")).await;
    publish_as(&mut p, pick_of("acme", "SO-2")).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(owner(&got[0].json()), "beta");
    let audit = root
        .list_audit_records(pb::ListAuditRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(audit[0].action, "tenant.erase");
    assert_eq!(audit[0].target, "acme");
}
