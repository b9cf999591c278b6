//! The typed state stores against a real store: what each read returns
//! after each write, and that one endpoint's scans never reach another's.

use super::StateWrites;
use crate::{
    model::{
        audit::AuditRecord,
        delivery::{AttemptRecord, DeliveryRecord, DeliveryState},
        EndpointId, EventId, Offset,
    },
    store::{keys::ConsumerRecord, open_for_test, Store, WriterHandle},
};

async fn close(store: Store, writer: WriterHandle) {
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

fn delivery(state: DeliveryState) -> DeliveryRecord {
    DeliveryRecord {
        event_id: EventId::new(format!("{state:?}")),
        state,
        ..Default::default()
    }
}

fn attempt(n: u32) -> AttemptRecord {
    AttemptRecord {
        attempt: n,
        ..Default::default()
    }
}

/// `ep1` and `ep10`: one id is a prefix of the other, so a scan that
/// forgot the separator would mix them.
const A: &str = "ep1";
const B: &str = "ep10";

#[tokio::test]
async fn delivery_records_and_attempts_per_endpoint() {
    let (a, b) = (EndpointId::new(A), EndpointId::new(B));
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open_for_test(dir.path());
    let d = store.deliveries();
    assert_eq!(d.next_unrecorded(&a).await.unwrap(), Offset::ZERO);
    d.put(&a, Offset::new(3), &delivery(DeliveryState::Delivered))
        .await
        .unwrap();
    d.put_all(
        &a,
        [
            (Offset::new(5), &delivery(DeliveryState::Failed)),
            (Offset::new(7), &delivery(DeliveryState::Dead)),
        ],
    )
    .await
    .unwrap();
    let mut w = StateWrites::new();
    w.put_delivery(&b, Offset::new(4), &delivery(DeliveryState::Dead));
    for n in 1..=2 {
        w.put_attempt(&a, Offset::new(3), n, &attempt(n));
    }
    w.put_attempt(&a, Offset::new(5), 1, &attempt(1));
    w.put_attempt(&b, Offset::new(3), 9, &attempt(9));
    assert_eq!(w.len(), 5);
    store.write_state(w).await.unwrap();

    assert_eq!(
        d.get(&a, Offset::new(5)).unwrap().unwrap().state,
        DeliveryState::Failed
    );
    assert!(d.get(&a, Offset::new(4)).unwrap().is_none());
    assert!(d.get(&b, Offset::new(3)).unwrap().is_none());
    let offsets = |from, until, rev: bool| -> Vec<u64> {
        let it = d
            .range(&a, Offset::new(from), Offset::new(until))
            .map(|r| r.unwrap().0.get());

        if rev {
            it.rev().collect()
        } else {
            it.collect()
        }
    };
    assert_eq!(offsets(0, u64::MAX, false), [3, 5, 7]);
    assert_eq!(offsets(4, 7, true), [5]);
    assert_eq!(offsets(9, 2, false), Vec::<u64>::new(), "an empty range");
    assert_eq!(d.next_unrecorded(&a).await.unwrap(), Offset::new(8));
    assert_eq!(d.next_unrecorded(&b).await.unwrap(), Offset::new(5));

    assert_eq!(d.last_attempt(&a, Offset::new(3)).unwrap(), Some(2));
    assert_eq!(d.last_attempt(&a, Offset::new(7)).unwrap(), None);
    assert_eq!(d.last_attempt(&b, Offset::new(3)).unwrap(), Some(9));
    let numbers: Vec<u32> = d
        .attempts(&a, Offset::new(3))
        .unwrap()
        .iter()
        .map(|a| a.attempt)
        .collect();
    assert_eq!(numbers, [1, 2]);
    let dead = d.dead_per_endpoint().unwrap();
    assert_eq!((dead[A], dead[B], dead.len()), (1, 1, 2));

    // Pruning below 6 takes the delivered record at 3 with its attempts,
    // keeps the failed one at 5 and everything of the other endpoint.
    d.prune(&a, Offset::new(6)).await.unwrap();
    assert_eq!(offsets(0, u64::MAX, false), [5, 7]);
    assert!(d.attempts(&a, Offset::new(3)).unwrap().is_empty());
    assert_eq!(d.attempts(&a, Offset::new(5)).unwrap().len(), 1);
    assert_eq!(d.last_attempt(&b, Offset::new(3)).unwrap(), Some(9));

    d.delete_endpoint(&a).await.unwrap();
    assert_eq!(offsets(0, u64::MAX, false), Vec::<u64>::new());
    assert!(d.attempts(&a, Offset::new(5)).unwrap().is_empty());
    assert!(
        d.get(&b, Offset::new(4)).unwrap().is_some(),
        "{B} keeps its records"
    );
    assert_eq!(d.last_attempt(&b, Offset::new(3)).unwrap(), Some(9));
    close(store, writer).await;
}

#[tokio::test]
async fn endpoint_records_list_in_id_order_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open_for_test(dir.path());
    let e = store.endpoints();
    assert_eq!(e.count().unwrap(), 0);
    for id in ["b", "a", "c"] {
        e.put(&EndpointId::new(id), format!("stored-{id}").into_bytes())
            .await
            .unwrap();
    }
    assert_eq!(e.count().unwrap(), 3);
    assert_eq!(e.ids().unwrap(), ["a", "b", "c"]);
    assert_eq!(
        &*e.get(&EndpointId::new("b")).unwrap().unwrap(),
        b"stored-b"
    );
    assert!(e.get(&EndpointId::new("d")).unwrap().is_none());
    let values = |it: &mut dyn Iterator<Item = Vec<u8>>| -> Vec<String> {
        it.map(|v| String::from_utf8(v).unwrap()).collect()
    };
    let all = values(&mut e.all().map(|v| v.unwrap().to_vec()));
    assert_eq!(all, ["stored-a", "stored-b", "stored-c"]);
    let page = values(&mut e.after("a").map(|v| v.unwrap().to_vec()));
    assert_eq!(page, ["stored-b", "stored-c"]);
    e.delete(&EndpointId::new("b")).await.unwrap();
    assert_eq!(e.ids().unwrap(), ["a", "c"]);
    close(store, writer).await;
}

#[tokio::test]
async fn consumer_and_audit_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open_for_test(dir.path());
    let c = store.consumers();
    let record = |floor| ConsumerRecord {
        floor,
        ..Default::default()
    };
    // Saved with a delivery record in the same write.
    let mut with = StateWrites::new();
    with.put_delivery(
        &EndpointId::new(A),
        Offset::new(1),
        &delivery(DeliveryState::Delivered),
    );
    let durable = c
        .submit_save("@endpoint:x", &record(2), with)
        .await
        .unwrap();
    durable.await.unwrap().unwrap();
    assert!(store
        .deliveries()
        .get(&EndpointId::new(A), Offset::new(1))
        .unwrap()
        .is_some());
    c.submit_save("plain", &record(5), StateWrites::new())
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.get("plain").unwrap().unwrap().floor, 5);
    let listed: Vec<(String, u64)> = c
        .list(|name| name.starts_with('@'))
        .map(|r| r.map(|(n, r)| (n, r.floor)).unwrap())
        .collect();
    assert_eq!(listed, [("plain".to_owned(), 5)]);
    c.delete("plain").await.unwrap();
    assert!(c.get("plain").unwrap().is_none());

    let a = store.audit();
    for id in ["01A", "01C", "01B"] {
        a.put(&AuditRecord {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let ids = |before| -> Vec<String> { a.newest_first(before).map(|r| r.unwrap().id).collect() };
    assert_eq!(ids(""), ["01C", "01B", "01A"]);
    assert_eq!(ids("01C"), ["01B", "01A"]);
    close(store, writer).await;
}
