//! Superseding messages (coalescing) and the bound on held messages, under
//! paused time: a store on a tempdir, polls at the paused clock's now.

use std::sync::Arc;

use super::*;
use crate::store::{test_event as event, WriterHandle};

/// A message as these tests read it: events whose id starts with `s`
/// supersede the earlier ones of their key.
#[derive(Debug)]
struct Ev {
    offset: Offset,
    key: String,
    supersedes: bool,
}

impl Keyed for Ev {
    fn ordering_key(&self) -> &str {
        &self.key
    }

    fn supersedes(&self) -> bool {
        self.supersedes
    }
}

/// A store with the events `(id, key)`, in order, and a consumer of them
/// all ordered by `ordering`.
async fn consumer(
    dir: &std::path::Path,
    events: &[(&str, &str)],
    ordering: Ordering,
) -> (Consumers, Arc<Consumer>, WriterHandle) {
    super::tests::with_events(dir, events, ordering).await
}

/// Every message handed out now until the consumer is idle, as
/// (offset, attempt, superseded), offsets as numbers.
fn take_all(c: &Consumer) -> Vec<(u64, u32, Vec<u64>)> {
    let p = PollFor {
        stream: 1,
        max_in_flight: 100,
        ack_wait: Duration::from_secs(30),
        now: Instant::now(),
        read_new: true,
        reader_filters: false,
    };
    let mut got = Vec::new();
    for _ in 0..10_000 {
        let read = |o: Offset, _| {
            Ok(c.store.local()?.get(o)?.map(|e| Ev {
                offset: o,
                key: e.event.ordering_key.clone(),
                supersedes: e.event.id.starts_with('s'),
            }))
        };
        match c.poll_with(p, read).unwrap() {
            Poll::Message(d) => got.push((
                d.event.offset.get(),
                d.attempt,
                d.superseded.iter().map(|o| o.get()).collect(),
            )),
            Poll::Expired(_) => {}
            Poll::Idle { .. } => return got,
        }
    }
    panic!("the consumer never went idle");
}

/// A newer superseding event of a key whose message waits for its
/// redelivery takes that one's place: handed out with it, not before the
/// time it was due; another key is not touched.
#[tokio::test(start_paused = true)]
async fn a_superseding_event_takes_the_place_of_a_waiting_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_cs, c, _w) = consumer(dir.path(), &[("a1", "a"), ("b1", "b")], Ordering::Key).await;
    assert_eq!(take_all(&c), [(1, 1, vec![]), (2, 1, vec![])]);
    c.nack(&[Offset::new(1)], Duration::from_secs(60)).unwrap();
    c.ack(&[Offset::new(2)]).await.unwrap();
    c.store
        .append(vec![{
            let mut e = event("s-a2");
            e.event.ordering_key = "a".into();
            e
        }])
        .await
        .unwrap();
    assert_eq!(take_all(&c), [], "3 waits for 1's due time");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(take_all(&c), []);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(take_all(&c), [(3, 1, vec![1])], "in 1's place, with it");
    // The taker settles what it superseded, then the newer one.
    c.ack(&[Offset::new(1)]).await.unwrap();
    c.ack(&[Offset::new(3)]).await.unwrap();
    assert_eq!(c.floor(), Offset::new(4));
    assert_eq!(take_all(&c), []);
}

/// While the message out is leased (its holder is at it), a superseding
/// event folds in those waiting behind it and waits there; it goes out with
/// them once the leased one is acked.
#[tokio::test(start_paused = true)]
async fn behind_a_leased_one_the_superseding_event_carries_those_behind() {
    let dir = tempfile::tempdir().unwrap();
    let events = [("a1", "a"), ("a2", "a"), ("s-a3", "a"), ("a4", "a")];
    let (_cs, c, _w) = consumer(dir.path(), &events, Ordering::Key).await;
    assert_eq!(take_all(&c), [(1, 1, vec![])]);
    c.ack(&[Offset::new(1)]).await.unwrap();
    assert_eq!(take_all(&c), [(3, 1, vec![2])], "2 superseded by 3");
    c.ack(&[Offset::new(2), Offset::new(3)]).await.unwrap();
    assert_eq!(take_all(&c), [(4, 1, vec![])], "4 came after 3");
}

/// A superseding event behind a leased one that is then nacked takes its
/// place at its due time, carrying it.
#[tokio::test(start_paused = true)]
async fn a_nacked_one_is_superseded_by_the_event_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let events = [("a1", "a"), ("s-a2", "a")];
    let (_cs, c, _w) = consumer(dir.path(), &events, Ordering::Key).await;
    assert_eq!(take_all(&c), [(1, 1, vec![])]);
    c.nack(&[Offset::new(1)], Duration::from_secs(30)).unwrap();
    assert_eq!(take_all(&c), []);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(take_all(&c), [(2, 1, vec![1])]);
}

/// What a superseding message carried and its holder left unsettled goes
/// out again on its own once the message is done (at least once); a
/// released message keeps what it carries.
#[tokio::test(start_paused = true)]
async fn unsettled_superseded_offsets_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let events = [("a1", "a"), ("a2", "a"), ("s-a3", "a")];
    let (_cs, c, _w) = consumer(dir.path(), &events, Ordering::Key).await;
    assert_eq!(take_all(&c), [(1, 1, vec![])]);
    c.ack(&[Offset::new(1)]).await.unwrap();
    assert_eq!(take_all(&c), [(3, 1, vec![2])]);
    c.release(1);
    assert_eq!(take_all(&c), [(3, 2, vec![2])], "released, still carrying");
    c.ack(&[Offset::new(3)]).await.unwrap();
    assert_eq!(take_all(&c), [(2, 1, vec![])]);
    c.ack(&[Offset::new(2)]).await.unwrap();
    assert_eq!(c.floor(), Offset::new(4));
}

/// Without ordering nothing is superseded.
#[tokio::test(start_paused = true)]
async fn without_ordering_nothing_is_superseded() {
    let dir = tempfile::tempdir().unwrap();
    let events = [("a1", "a"), ("s-a2", "a")];
    let (_cs, c, _w) = consumer(dir.path(), &events, Ordering::None).await;
    assert_eq!(take_all(&c), [(1, 1, vec![]), (2, 1, vec![])]);
}

/// With a bound on what is held, new events are read only while fewer are
/// held: leased, waiting for redelivery, or behind another of their key.
#[tokio::test(start_paused = true)]
async fn max_held_bounds_what_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let events = [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")];
    let (_cs, c, _w) = consumer(dir.path(), &events, Ordering::Key).await;
    c.set_max_held(2);
    assert_eq!(take_all(&c), [(1, 1, vec![])], "2 read, waits behind 1");
    c.nack(&[Offset::new(1)], Duration::from_secs(60)).unwrap();
    assert_eq!(take_all(&c), [], "1 waiting and 2 behind: full");
    c.ack(&[Offset::new(1)]).await.unwrap();
    assert_eq!(take_all(&c), [(2, 1, vec![])], "3 read, behind 2");
    c.ack(&[Offset::new(2)]).await.unwrap();
    assert_eq!(take_all(&c), [(3, 1, vec![]), (4, 1, vec![])]);
}

/// A renewed lease does not run out; one that is not renewed does, and
/// its message is handed out again.
#[tokio::test(start_paused = true)]
async fn renewed_leases_stay_and_others_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let events = [("a1", "a"), ("b1", "b")];
    let (_cs, c, _w) = consumer(dir.path(), &events, Ordering::Key).await;
    assert_eq!(take_all(&c), [(1, 1, vec![]), (2, 1, vec![])]);
    tokio::time::advance(Duration::from_secs(20)).await;
    c.renew([Offset::new(1)], Duration::from_secs(30));
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(take_all(&c), [(2, 2, vec![])], "2's lease ran out");
    c.renew([1, 2].map(Offset::new), Duration::from_secs(30));
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(take_all(&c), []);
}
