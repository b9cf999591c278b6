//! The consumer's unit tests: a store on a tempdir, polls at chosen times.

use std::sync::Arc;

use super::*;
use crate::{error::Error, pb, store::test_event as event};

/// Tests that read offsets only order nothing by key.
impl Keyed for Offset {
    fn ordering_key(&self) -> &str {
        ""
    }
}

impl Keyed for (Offset, Read) {
    fn ordering_key(&self) -> &str {
        ""
    }
}

/// The read runs with the offset leased, outside the lock: the lease
/// already counts, and an offset whose read failed is handed out
/// again rather than skipped.
#[tokio::test]
async fn a_failed_read_hands_the_offset_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = crate::store::open_for_test(dir.path());
    let appended = store.append(vec![event("e1"), event("e2")]).await.unwrap();
    let (first, second) = (appended[0].offset, appended[1].offset);
    let consumers = Consumers::new(store.clone());
    let c = consumers
        .open(
            "c",
            CreateSpec {
                start: first,
                filter: EventFilter::types_only(Vec::new()),
                max_deliveries: 0,
            },
        )
        .await
        .unwrap();
    let wait = Duration::from_secs(30);
    let now = Instant::now();

    let p = PollFor {
        stream: 1,
        max_in_flight: 10,
        ack_wait: wait,
        now,
        read_new: true,
        reader_filters: false,
    };
    let failed = c.poll_with(p, |offset, _| {
        assert_eq!(c.lock().load(1), 1, "leased while it is read");
        assert!(c.lock().is_leased(offset));
        Err::<Option<Offset>, _>(Error::Corrupt("unreadable".into()))
    });
    assert!(failed.is_err());
    assert_eq!(c.lock().load(1), 0);

    let mut got = Vec::new();
    for _ in 0..2 {
        match c
            .poll_with(p, |offset, kind| Ok(Some((offset, kind))))
            .unwrap()
        {
            Poll::Message(d) => got.push((d.event, d.attempt)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    // The failed read was not an attempt: the first delivery is still
    // attempt 1.
    assert_eq!(
        got,
        vec![((first, Read::Again), 1), ((second, Read::New), 1)]
    );
    assert_eq!(c.lock().load(1), 2);
}

/// Erasure's two steps: unread offsets are done at once (and
/// returned); one waiting for redelivery, and one leased that is
/// handed back to wait only afterwards, are reported as expired.
#[tokio::test]
async fn erased_offsets_are_expired_whether_unread_waiting_or_leased() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = crate::store::open_for_test(dir.path());
    let ids = ["e1", "e2", "e3", "e4"];
    store.append(ids.map(event).to_vec()).await.unwrap();
    let consumers = Consumers::new(store.clone());
    let spec = CreateSpec {
        start: Offset::new(1),
        filter: EventFilter::types_only(Vec::new()),
        max_deliveries: 0,
    };
    let c = consumers.open("c", spec).await.unwrap();
    let p = PollFor {
        stream: 1,
        max_in_flight: 2,
        ack_wait: Duration::from_secs(30),
        now: Instant::now(),
        read_new: true,
        reader_filters: false,
    };
    let take = || match c.poll_with(p, |o, _| Ok(Some(o))).unwrap() {
        Poll::Message(d) => d.event,
        other => panic!("expected a message, got {other:?}"),
    };
    let (waiting, leased) = (take(), take());
    assert_eq!((waiting.get(), leased.get()), (1, 2));
    c.nack(&[waiting], Duration::from_secs(3600)).unwrap();

    let all = [1, 2, 3].map(Offset::new);
    assert_eq!(
        c.expire_unread(&all),
        [Offset::new(3)],
        "only the unread one"
    );
    c.expire_waiting(&all);
    let next = |c: &Consumer| c.poll_with(p, |o, _| Ok(Some(o))).unwrap();
    assert!(
        matches!(next(&c), Poll::Expired(o) if o == Offset::new(1)),
        "the waiting one"
    );
    // The leased one expires when it is handed back to wait.
    c.nack(&[leased], Duration::from_secs(3600)).unwrap();
    assert!(
        matches!(next(&c), Poll::Expired(o) if o == Offset::new(2)),
        "the leased one"
    );
    // Then the next event: 3 is done.
    match next(&c) {
        Poll::Message(d) => assert_eq!(d.event, Offset::new(4)),
        other => panic!("expected offset 4, got {other:?}"),
    }
}

/// A store with one event per key in `keys`, in order, and a consumer of
/// them all ordered by `ordering`.
async fn keyed(
    dir: &std::path::Path,
    keys: &[&str],
    ordering: Ordering,
) -> (Consumers, Arc<Consumer>, crate::store::WriterHandle) {
    let ids: Vec<String> = (0..keys.len()).map(|i| format!("e{i}")).collect();
    let events: Vec<(&str, &str)> = ids
        .iter()
        .map(String::as_str)
        .zip(keys.iter().copied())
        .collect();
    with_events(dir, &events, ordering).await
}

/// A store with the events `(id, key)`, in order, and a consumer of them
/// all ordered by `ordering`.
pub(super) async fn with_events(
    dir: &std::path::Path,
    events: &[(&str, &str)],
    ordering: Ordering,
) -> (Consumers, Arc<Consumer>, crate::store::WriterHandle) {
    let (store, writer) = crate::store::open_for_test(dir);
    let events = events
        .iter()
        .map(|(id, k)| {
            let mut e = event(id);
            e.event.ordering_key = (*k).into();
            e
        })
        .collect();
    store.append(events).await.unwrap();
    let consumers = Consumers::new(store);
    let spec = CreateSpec {
        start: Offset::new(1),
        filter: EventFilter::types_only(Vec::new()),
        max_deliveries: 0,
    };
    let c = consumers
        .open_ordered("c", spec, Some(ordering))
        .await
        .unwrap();
    (consumers, c, writer)
}

fn poll_at(stream: StreamId, now: Instant) -> PollFor {
    PollFor {
        stream,
        max_in_flight: 100,
        ack_wait: Duration::from_secs(30),
        now,
        read_new: true,
        reader_filters: false,
    }
}

/// Every message `stream` is handed at `now` until the consumer is idle,
/// as (offset, attempt), offsets as numbers.
fn take_all(c: &Consumer, stream: StreamId, now: Instant) -> Vec<(u64, u32)> {
    let mut got = Vec::new();
    for _ in 0..10_000 {
        match c.poll(poll_at(stream, now)).unwrap() {
            Poll::Message(d) => got.push((d.event.offset.get(), d.attempt)),
            Poll::Expired(_) => {}
            Poll::Idle { .. } => return got,
        }
    }
    panic!("the consumer never went idle");
}

/// By key: a second event of a key waits until the first is acked, other
/// keys go out meanwhile, and the one that waited goes out as a first
/// delivery.
#[tokio::test]
async fn by_key_the_next_of_a_key_waits_for_the_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (_cs, c, _w) = keyed(dir.path(), &["a", "a", "b", "a", "b"], Ordering::Key).await;
    let now = Instant::now();
    assert_eq!(take_all(&c, 1, now), [(1, 1), (3, 1)]);
    // Another stream gets nothing of a or b either.
    assert_eq!(take_all(&c, 2, now), []);
    c.ack(&[Offset::new(3)]).await.unwrap();
    assert_eq!(take_all(&c, 2, now), [(5, 1)]);
    c.ack(&[Offset::new(1)]).await.unwrap();
    assert_eq!(take_all(&c, 1, now), [(2, 1)]);
    c.ack(&[Offset::new(2), Offset::new(5)]).await.unwrap();
    assert_eq!(take_all(&c, 1, now), [(4, 1)]);
    c.ack(&[Offset::new(4)]).await.unwrap();
    assert_eq!(c.floor(), Offset::new(6));
}

/// Strict: one message at a time, in log order.
#[tokio::test]
async fn strict_hands_out_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_cs, c, _w) = keyed(dir.path(), &["a", "b", "c"], Ordering::Strict).await;
    let now = Instant::now();
    for o in 1..=3 {
        assert_eq!(take_all(&c, 1, now), [(o, 1)]);
        c.ack(&[Offset::new(o)]).await.unwrap();
    }
    assert_eq!(take_all(&c, 1, now), []);
}

/// Without ordering, every event goes out at once (as before ordering).
#[tokio::test]
async fn no_ordering_hands_out_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (_cs, c, _w) = keyed(dir.path(), &["a", "a", "a"], Ordering::None).await;
    assert_eq!(take_all(&c, 1, Instant::now()), [(1, 1), (2, 1), (3, 1)]);
}

/// A nacked message keeps its key blocked until its redelivery is acked;
/// a stream that goes away hands its message back, still first of its
/// key; a dead letter lets the next of its key go.
#[tokio::test]
async fn nack_release_and_dead_letters_keep_the_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_cs, c, _w) = keyed(dir.path(), &["a", "a", "a"], Ordering::Key).await;
    let t0 = Instant::now();
    assert_eq!(take_all(&c, 1, t0), [(1, 1)]);
    c.nack(&[Offset::new(1)], Duration::from_secs(60)).unwrap();
    assert_eq!(take_all(&c, 1, t0), [], "2 waits behind the nacked 1");
    let later = t0 + Duration::from_secs(120);
    assert_eq!(take_all(&c, 1, later), [(1, 2)]);
    c.release(1);
    assert_eq!(take_all(&c, 2, later), [(1, 3)], "released, still first");
    c.ack(&[Offset::new(1)]).await.unwrap();
    assert_eq!(take_all(&c, 2, later), [(2, 1)]);

    // With max_deliveries, the dead letter lets the next go.
    c.lock().max_deliveries = 1;
    c.nack(&[Offset::new(2)], Duration::ZERO).unwrap();
    assert_eq!(take_all(&c, 2, later), [(3, 1)]);
    assert!(c.lock().dead.contains(&Offset::new(2)));
}

/// With ordering, reading stops once MAX_BEHIND wait behind their keys:
/// a stuck key does not pull the log into memory.
#[tokio::test]
async fn reading_stops_when_enough_wait_behind() {
    let dir = tempfile::tempdir().unwrap();
    let keys = vec!["k"; MAX_BEHIND + 10];
    let (_cs, c, _w) = keyed(dir.path(), &keys, Ordering::Strict).await;
    let now = Instant::now();
    assert_eq!(take_all(&c, 1, now), [(1, 1)]);
    assert_eq!(c.lock().behind(), MAX_BEHIND);
    assert_eq!(c.lock().next_read, Offset::new(2 + MAX_BEHIND as u64));
    c.ack(&[Offset::new(1)]).await.unwrap();
    assert_eq!(take_all(&c, 1, now), [(2, 1)]);
    assert_eq!(c.lock().behind(), MAX_BEHIND, "one more read");
}

/// Retention's expiry of an event waiting behind its key takes it out of
/// the key's queue: the next one goes out after the first.
#[tokio::test]
async fn expired_events_leave_their_key_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (_cs, c, _w) = keyed(dir.path(), &["a", "a", "a"], Ordering::Key).await;
    let now = Instant::now();
    assert_eq!(take_all(&c, 1, now), [(1, 1)]);
    assert_eq!(
        c.expire_below(Offset::new(3)),
        [Offset::new(2)],
        "2 was only waiting behind 1"
    );
    c.ack(&[Offset::new(1)]).await.unwrap();
    assert_eq!(take_all(&c, 1, now), [(3, 1)]);
}

/// The ordering is persisted with the consumer; opening it with another
/// is refused, and changing it in memory lets every waiting message go.
#[tokio::test]
async fn ordering_is_kept_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (cs, c, _w) = keyed(dir.path(), &["a", "a"], Ordering::Key).await;
    let spec = CreateSpec {
        start: Offset::new(1),
        filter: EventFilter::types_only(Vec::new()),
        max_deliveries: 0,
    };
    let refused = cs
        .open_ordered("c", spec.clone(), Some(Ordering::Strict))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument { ref field, .. }) if field == "ordering"),
        "{:?}",
        refused.err()
    );
    cs.open_ordered("c", spec.clone(), None).await.unwrap();
    let reloaded = Consumers::new(c.store.clone());
    let again = reloaded.get("c").unwrap();
    assert_eq!(again.ordering(), Ordering::Key);

    let now = Instant::now();
    assert_eq!(take_all(&c, 1, now), [(1, 1)]);
    c.set_ordering(Ordering::None);
    assert_eq!(take_all(&c, 1, now), [(2, 1)]);
}

/// A reader that filters (`PollFor::reader_filters`, the delivery
/// workers) is handed every new event when the filter tests only the type,
/// and the events it answers `None` for are done; a filter that tests more
/// is still applied before the read, and a reader that does not filter
/// never sees what the filter leaves out.
#[tokio::test]
async fn a_reader_that_filters_is_left_the_type_test() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = crate::store::open_for_test(dir.path());
    let mut reserved = event("r1");
    if let Some(pb::event::Payload::Custom(c)) = reserved.event.payload.as_mut() {
        c.r#type = "stevedore.test".into();
    }
    reserved.event_type = crate::model::event_type_of(reserved.event.payload.as_ref()).unwrap();
    let appended = store
        .append(vec![event("e1"), reserved, event("e2")])
        .await
        .unwrap();
    let offsets: Vec<Offset> = appended.iter().map(|a| a.offset).collect();
    let consumers = Consumers::new(store.clone());
    let start = offsets[0];
    let open = |name: &'static str, filter: EventFilter| {
        let consumers = &consumers;
        async move {
            let spec = CreateSpec {
                start,
                filter,
                max_deliveries: 0,
            };
            consumers.open(name, spec).await.unwrap()
        }
    };
    let all_but_reserved = EventFilter::types_only(Vec::new()).excluding_reserved();
    for reader_filters in [true, false] {
        let name = if reader_filters { "filters" } else { "plain" };
        let c = open(name, all_but_reserved.clone()).await;
        let p = PollFor {
            reader_filters,
            ..poll_at(1, Instant::now())
        };
        let (mut read, mut handed) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let polled = c.poll_with(p, |offset, _| {
                read.push(offset);
                let e = store.local()?.get(offset)?.expect("in the log");
                Ok(all_but_reserved.matches(&e).then_some(offset))
            });
            match polled.unwrap() {
                Poll::Message(d) => handed.push(d.event),
                Poll::Expired(_) => {}
                Poll::Idle { .. } => break,
            }
        }
        assert_eq!(handed, vec![offsets[0], offsets[2]], "{name}");
        let want_read = if reader_filters {
            offsets.clone()
        } else {
            handed.clone()
        };
        assert_eq!(read, want_read, "{name}");
        assert!(c.lock().is_done(offsets[1]), "{name}");
    }
    // A tenant is tested before the read, whoever filters.
    let c = open("tenant", all_but_reserved.clone().with_tenant("t1".into())).await;
    let p = PollFor {
        reader_filters: true,
        ..poll_at(1, Instant::now())
    };
    let polled = c.poll_with(p, |offset, _| -> Result<Option<Offset>> {
        panic!("offset {offset} of no tenant read for tenant t1")
    });
    assert!(matches!(polled.unwrap(), Poll::Idle { .. }));
}
