//! Erasure of a tenant's event payloads (#18) on a running broker: after
//! EraseTenant no file under the data directory holds the tenant's
//! payloads, the other tenant's events still read back and deliver,
//! Subscribe from earliest carries none of the erased events, GetEvent
//! says they were erased, pending deliveries of them are recorded dead
//! (`erased`), and all of it holds after a restart.

use std::time::Duration;

use stevedore::pb::{self, admin_client::AdminClient, subscribe_request::Start};
use tonic::Code;

use crate::support::{
    files_containing,
    tenants::{create_as, hook, pick_of, publish_as, two_tenants, ACME_SUB, BETA_SUB, ROOT},
    Authed, Receiver, TestServer,
};

/// The marker in acme's payloads (its sales order ids).
const ACME_MARK: &str = "ACME-PII-7f3a";
/// The marker in beta's.
const BETA_MARK: &str = "BETA-KEEP-91c2";

/// Subscribes from earliest as `token` and reads until `last` arrives;
/// returns the offsets and sales order ids read.
async fn read_all(server: &TestServer, token: &str, last: u64) -> Vec<(u64, String)> {
    let mut sub = server.subscriber_as(Some(token)).await;
    let mut s = sub
        .subscribe(pb::SubscribeRequest {
            start: Some(Start::Earliest(true)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    loop {
        let m = crate::support::next_within(&mut s, 10).await;
        let order = match m.event.unwrap().payload {
            Some(pb::event::Payload::PickConfirmed(p)) => p.sales_order_id,
            _ => String::new(),
        };
        out.push((m.offset, order));
        if m.offset >= last {
            return out;
        }
    }
}

/// GetEvent of `offset` as `token`: the status it fails with.
async fn get_event_error(server: &TestServer, token: &str, offset: u64) -> tonic::Status {
    server
        .subscriber_as(Some(token))
        .await
        .get_event(pb::GetEventRequest {
            offset,
            ..Default::default()
        })
        .await
        .expect_err("the event is gone")
}

/// The deliveries recorded for endpoint `id`.
async fn deliveries(root: &mut AdminClient<Authed>, id: &str) -> Vec<pb::Delivery> {
    root.list_deliveries(pb::ListDeliveriesRequest {
        endpoint_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .deliveries
}

/// Polls (bounded: 10 s) until endpoint `id` has a delivery that `want`s.
async fn wait_deliveries(
    root: &mut AdminClient<Authed>,
    id: &str,
    what: &str,
    want: impl Fn(&pb::Delivery) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = deliveries(root, id).await;
        if d.iter().any(&want) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What must hold after the erasure, and again after a restart.
async fn check_erased(server: &TestServer, acme: &[u64], beta: &[u64], last: u64) {
    let data = crate::support::data_path(server);
    assert_eq!(
        files_containing(&data, ACME_MARK.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "no file holds an erased payload"
    );
    assert!(
        !files_containing(&data, BETA_MARK.as_bytes()).is_empty(),
        "baseline: the other tenant's payloads are on disk"
    );
    let read = read_all(server, ROOT, last).await;
    assert!(
        read.iter().all(|(_, order)| !order.contains(ACME_MARK)),
        "{read:?}"
    );
    for o in beta {
        assert!(read.iter().any(|(r, _)| r == o), "beta's {o} reads back");
    }
    for &o in acme {
        let s = get_event_error(server, ROOT, o).await;
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
        assert!(s.message().contains("erased"), "{}", s.message());
        // The tenant's own subscriber is told too; another tenant's is
        // told only that there is no such event.
        let s = get_event_error(server, ACME_SUB, o).await;
        assert!(s.message().contains("erased"), "{}", s.message());
        let s = get_event_error(server, BETA_SUB, o).await;
        assert_eq!(s.code(), Code::NotFound);
        assert!(!s.message().contains("erased"), "{}", s.message());
    }
}

#[tokio::test]
async fn erasing_a_tenant_removes_its_payloads_from_every_file() {
    let server = two_tenants(|_| {}).await;
    let rx = Receiver::start().await;
    let mut root = server.admin_as(Some(ROOT)).await;
    // A global endpoint that delivers, and one paused (its deliveries of
    // acme's events stay pending until the erasure).
    let live = create_as(&mut root, hook(&rx.url)).await;
    let paused = create_as(
        &mut root,
        pb::Endpoint {
            enabled: Some(false),
            ..hook(&rx.url)
        },
    )
    .await;
    let mut p = server.publisher_as(Some(ROOT)).await;
    let (mut acme, mut beta) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let event = pb::Event {
            id: format!("acme-{i}"),
            ..pick_of("acme", &format!("{ACME_MARK}-{i}"))
        };
        acme.push(publish_as(&mut p, event).await);
        beta.push(publish_as(&mut p, pick_of("beta", &format!("{BETA_MARK}-{i}"))).await);
    }
    rx.wait_for(6, Duration::from_secs(10)).await;
    let erased = root
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.events, 3);

    // The paused endpoint's pending deliveries of acme's events are dead.
    let d = deliveries(&mut root, &paused.id).await;
    let mut dead: Vec<u64> = d
        .iter()
        .filter(|d| d.state() == pb::DeliveryState::Dead && d.last_error == "erased")
        .map(|d| d.offset)
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, acme, "{d:?}");
    // They cannot be sent again, so RecoverDeliveries does not count them.
    let recover = root
        .recover_deliveries(pb::RecoverDeliveriesRequest {
            endpoint_id: paused.id.clone(),
            since: Some(prost_types::Timestamp::default()),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recover.matched, 0);
    // Beta's events still deliver, old and new.
    rx.clear();
    let last = publish_as(&mut p, pick_of("beta", &format!("{BETA_MARK}-new"))).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["salesOrderId"], format!("{BETA_MARK}-new"));
    // (Its record is written after the answer arrives.)
    wait_deliveries(&mut root, &live.id, "the new event's record", |d| {
        d.offset == last && d.state() == pb::DeliveryState::Delivered
    })
    .await;
    assert_eq!(
        deliveries(&mut root, &live.id)
            .await
            .iter()
            .filter(|d| d.state() == pb::DeliveryState::Delivered)
            .count(),
        7
    );
    check_erased(&server, &acme, &beta, last).await;
    // Erasing again finds nothing more.
    let again = root
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.events, 0);
    drop((root, p));

    let server = server.restart().await;
    check_erased(&server, &acme, &beta, last).await;
    // A re-publish of an erased event's id is a duplicate of it: the
    // erased content does not come back.
    let mut p = server.publisher_as(Some(ROOT)).await;
    let retry = pb::Event {
        id: "acme-0".into(),
        ..pick_of("acme", &format!("{ACME_MARK}-0"))
    };
    let out = p
        .publish(pb::PublishRequest { event: Some(retry) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((out.offset, out.duplicate), (acme[0], true));
    check_erased(&server, &acme, &beta, last).await;
}

/// `tenant_retention`: acme's events older than its age lose their
/// payloads; beta's, older still, stay; the pending deliveries of acme's
/// are recorded dead, `expired`.
#[tokio::test]
async fn a_tenant_with_a_short_retention_loses_its_old_payloads() {
    let server = two_tenants(|c| {
        c.tenant_retention = vec![("acme".into(), Duration::from_millis(1500))];
        c.retention_interval = Duration::from_millis(100);
    })
    .await;
    let rx = Receiver::start().await;
    let mut root = server.admin_as(Some(ROOT)).await;
    let paused = create_as(
        &mut root,
        pb::Endpoint {
            enabled: Some(false),
            ..hook(&rx.url)
        },
    )
    .await;
    let mut p = server.publisher_as(Some(ROOT)).await;
    // Beta's first: they are the oldest events.
    let mut beta = Vec::new();
    for i in 0..3 {
        beta.push(publish_as(&mut p, pick_of("beta", &format!("{BETA_MARK}-{i}"))).await);
    }
    let mut acme = Vec::new();
    for i in 0..3 {
        acme.push(publish_as(&mut p, pick_of("acme", &format!("{ACME_MARK}-{i}"))).await);
    }
    // Polled (bounded): retention runs every 100 ms once the age is past.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let gone = loop {
        let r = server
            .subscriber_as(Some(ROOT))
            .await
            .get_event(pb::GetEventRequest {
                offset: acme[2],
                ..Default::default()
            })
            .await;
        match r {
            Err(s) => break s,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("acme's events outlived their retention"),
        }
    };
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(gone.message().contains("retention"), "{}", gone.message());
    let data = crate::support::data_path(&server);
    assert!(files_containing(&data, ACME_MARK.as_bytes()).is_empty());
    let mut sub = server.subscriber_as(Some(ROOT)).await;
    for &o in &beta {
        let e = sub
            .get_event(pb::GetEventRequest {
                offset: o,
                ..Default::default()
            })
            .await
            .expect("beta's older events stay")
            .into_inner();
        assert!(e.event.is_some());
    }
    for &o in &acme {
        let s = get_event_error(&server, ROOT, o).await;
        assert!(s.message().contains("retention"), "{}", s.message());
    }
    let d = deliveries(&mut root, &paused.id).await;
    let mut expired: Vec<u64> = d
        .iter()
        .filter(|d| d.state() == pb::DeliveryState::Dead && d.last_error == "expired")
        .map(|d| d.offset)
        .collect();
    expired.sort_unstable();
    assert_eq!(expired, acme, "{d:?}");
    assert_eq!(d.len(), 3, "beta's deliveries are still pending: {d:?}");
}

/// A delivery waiting for its next attempt when its event is erased is
/// recorded dead, `erased`, at once, not at its next attempt an hour on.
#[tokio::test]
async fn a_delivery_waiting_for_a_retry_is_recorded_erased_at_once() {
    let server = two_tenants(|_| {}).await;
    let rx = Receiver::start().await;
    rx.set_default(crate::support::Behavior::Status(500));
    let mut root = server.admin_as(Some(ROOT)).await;
    let ep = create_as(
        &mut root,
        pb::Endpoint {
            retry_schedule: vec![
                prost_types::Duration::default(),
                prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                },
            ],
            ..hook(&rx.url)
        },
    )
    .await;
    let mut p = server.publisher_as(Some(ROOT)).await;
    let offset = publish_as(&mut p, pick_of("acme", &format!("{ACME_MARK}-w"))).await;
    wait_deliveries(&mut root, &ep.id, "the failed attempt's record", |d| {
        d.offset == offset && d.state() == pb::DeliveryState::Failed
    })
    .await;
    let erased = root
        .erase_tenant(pb::EraseTenantRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.events, 1);
    wait_deliveries(&mut root, &ep.id, "the dead record", |d| {
        d.offset == offset && d.state() == pb::DeliveryState::Dead && d.last_error == "erased"
    })
    .await;
    assert!(files_containing(&crate::support::data_path(&server), ACME_MARK.as_bytes()).is_empty());
}
