//! Redaction (the log's `redact`, the store's `erase`), tested by
//! breaking it: a fault at any write or sync of a redaction, then a power
//! cut, leaves every segment either as it was or fully redacted, never
//! damaged; a redaction that returned is durable; appends and reads going
//! on meanwhile are neither lost, reordered nor served a torn record.

use std::{
    io::ErrorKind,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::SystemTime,
};

use bytes::Bytes;

use super::{
    erase::Removal,
    faults::{dir, Harness},
    keys,
    log::{fs::faulty::Op, EventLog},
    open_for_test,
};
use crate::{
    error::Result,
    model::{EventId, NewEvent, Offset},
    pb,
};

/// Events of tenant `a` (even numbers) and `b` (odd numbers).
const EVENTS: usize = 60;

/// The marker in event `id`'s payload.
fn mark(id: &str) -> String {
    format!("PAYLOAD-MARK-{id}-END")
}

/// A custom event `id` of `tenant` whose data carries [`mark`].
fn marked(id: &str, tenant: &str) -> NewEvent {
    let data = prost_types::Struct {
        fields: [(
            "note".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(mark(id))),
            },
        )]
        .into(),
    };
    crate::convert::validate_event(
        pb::Event {
            id: id.into(),
            tenant: tenant.into(),
            payload: Some(pb::event::Payload::Custom(pb::CustomEvent {
                r#type: "a.b".into(),
                data: Some(data),
            })),
            ..Default::default()
        },
        &"event",
        SystemTime::now(),
        crate::convert::EventLimits {
            max_event_bytes: 4096,
        },
    )
    .expect("a valid event")
}

fn tenant_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

/// Appends `e0`.. `e{EVENTS-1}` in batches of 3 and returns the records
/// as stored (index: offset - 1).
fn fill(h: &mut Harness) -> Vec<Bytes> {
    for start in (0..EVENTS).step_by(3) {
        let batch = (start..start + 3)
            .map(|i| marked(&format!("e{i}"), tenant_of(i)))
            .collect();
        h.append_new(batch).unwrap();
    }
    (1..=EVENTS as u64)
        .map(|o| h.log.get(Offset::new(o)).unwrap().unwrap())
        .collect()
}

/// Tenant `a`'s offsets.
fn doomed() -> Vec<Offset> {
    (0..EVENTS)
        .filter(|i| tenant_of(*i) == "a")
        .map(|i| Offset::new(i as u64 + 1))
        .collect()
}

fn redact(log: &EventLog, offsets: &[Offset]) -> Result<Vec<Offset>> {
    log.redact(offsets, &mut |offset, record| {
        if keys::is_tombstone(record)? {
            return Ok(None);
        }
        keys::tombstone(offset, record, "erased", 7).map(Some)
    })
}

/// Every record reads back: the doomed ones as their tombstone (or, if
/// `!erased`, perhaps still as they were), the others unchanged. With
/// `erased`, no segment file holds a doomed payload any more.
fn check(h: &Harness, originals: &[Bytes], erased: bool) {
    let doomed = doomed();
    for (i, original) in originals.iter().enumerate() {
        let offset = Offset::new(i as u64 + 1);
        let got = h.log.get(offset).unwrap().expect("every record reads");
        let id = format!("e{i}");
        if doomed.contains(&offset) && (erased || got != original) {
            let (tid, tenant, why) = keys::decode_tombstone(offset, &got)
                .unwrap()
                .unwrap_or_else(|| panic!("{offset}: the record or its tombstone"));
            assert_eq!((tid.as_str(), tenant.as_str()), (id.as_str(), "a"));
            assert_eq!(
                (why.event_type.as_str(), why.reason.as_str()),
                ("a.b", "erased")
            );
        } else {
            assert_eq!(&got, original, "record {offset} is unchanged");
        }
        assert_eq!(h.log.offset_of_id(&id).unwrap(), Some(offset), "{id}");
    }
    if erased {
        let files = segment_files(h);
        for i in 0..EVENTS {
            let m = mark(&format!("e{i}"));
            let holders: Vec<_> = files
                .iter()
                .filter(|(_, b)| b.windows(m.len()).any(|w| w == m.as_bytes()))
                .map(|(n, _)| n.clone())
                .collect();
            match tenant_of(i) {
                "a" => assert!(holders.is_empty(), "e{i}'s payload in {holders:?}"),
                _ => assert_eq!(holders.len(), 1, "e{i}'s payload is kept once"),
            }
        }
    }
}

/// Makes the `.idx` files durable, as the kernel's writeback eventually
/// does (the log never syncs them), so a crash keeps them.
fn sync_idx_files(h: &Harness) {
    use super::log::fs::Fs as _;
    for (name, _) in segment_files(h).iter().filter(|(n, _)| n.ends_with(".idx")) {
        h.fs.open(&dir().join(name), false)
            .unwrap()
            .sync_data()
            .unwrap();
    }
}

/// Every file of the log's directory, with its bytes.
fn segment_files(h: &Harness) -> Vec<(String, Vec<u8>)> {
    use super::log::fs::Fs as _;
    h.fs.list(&dir())
        .unwrap()
        .into_iter()
        .map(|n| {
            let bytes = h.fs.contents(&dir().join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

#[test]
fn redaction_replaces_only_the_chosen_records_and_survives_a_crash() {
    let mut h = Harness::new(1024);
    let originals = fill(&mut h);
    h.seal(h.head()).unwrap();
    let mut doomed_now = redact(&h.log, &doomed()).unwrap();
    doomed_now.sort_unstable();
    assert_eq!(doomed_now, doomed());
    check(&h, &originals, true);
    assert!(
        redact(&h.log, &doomed()).unwrap().is_empty(),
        "tombstones are left as they are"
    );
    let mut h = h.reopen(true).unwrap();
    check(&h, &originals, true);
    let next = h.append_new(vec![marked("late", "a")]).unwrap();
    assert_eq!(next[0].offset, Offset::new(EVENTS as u64 + 1));
    // The same id again: a duplicate of the erased event.
    let again = h.append_new(vec![marked("e0", "a")]).unwrap();
    assert_eq!((again[0].offset.get(), again[0].duplicate), (1, true));
}

/// The fault hits the n-th write (or sync) of the redaction, for every n
/// up to past its last one; then a power cut (with the old `.idx` files
/// durable, as writeback would have made them).
#[test]
fn a_fault_and_a_crash_at_any_step_leave_the_old_or_the_new_segment() {
    for op in [Op::Write, Op::Sync] {
        let mut failed = 0;
        for n in 0..64 {
            let mut h = Harness::new(1024);
            let originals = fill(&mut h);
            h.seal(h.head()).unwrap();
            sync_idx_files(&h);
            h.fs.fail(op, n, ErrorKind::Other);
            let done = redact(&h.log, &doomed()).is_ok();
            failed += u32::from(!done);
            let h = h.reopen(true).expect("the log opens after the crash");
            // A redaction that returned is durable.
            check(&h, &originals, done);
            let h = if done {
                h
            } else {
                redact(&h.log, &doomed()).unwrap();
                h.reopen(true).unwrap()
            };
            check(&h, &originals, true);
        }
        // Every segment's rewrite fails at several steps.
        assert!(
            failed > 8,
            "{op:?}: the faults hit the redaction ({failed})"
        );
    }
}

#[test]
fn appends_and_reads_during_a_redaction_are_kept_in_order() {
    let mut h = Harness::new(1024);
    let originals = fill(&mut h);
    h.seal(h.head()).unwrap();
    let log = h.log.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (log, stop, originals) = (log.clone(), stop.clone(), originals.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                for (i, original) in originals.iter().enumerate() {
                    let offset = i as u64 + 1;
                    let got = log
                        .get(Offset::new(offset))
                        .unwrap()
                        .expect("every record reads");
                    assert!(
                        got == original || keys::is_tombstone(&got).unwrap(),
                        "record {offset}: the old record or its tombstone"
                    );
                    reads += 1;
                }
            }
        })
    };
    let redactor = std::thread::spawn(move || redact(&log, &doomed()).unwrap());
    for i in 0..200 {
        let out = h.append_new(vec![marked(&format!("n{i}"), "a")]).unwrap();
        assert_eq!(out[0].offset, Offset::new((EVENTS + 1 + i) as u64));
    }
    assert_eq!(redactor.join().unwrap().len(), EVENTS / 2);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let h = h.reopen(true).unwrap();
    check(&h, &originals, false);
    for i in 0..200 {
        let offset = (EVENTS + 1 + i) as u64;
        let got = h.log.get(Offset::new(offset)).unwrap().unwrap();
        assert_eq!(
            keys::decode_event_id(Offset::new(offset), &got).unwrap(),
            format!("n{i}")
        );
        assert!(!keys::is_tombstone(&got).unwrap(), "appended later: kept");
    }
    let doomed = doomed();
    for o in doomed {
        assert!(keys::is_tombstone(&h.log.get(o).unwrap().unwrap()).unwrap());
    }
}

/// The store's view: erased events are gone for readers (a batch of only
/// tombstones reads on), their tombstone says why, their ids stay taken,
/// and the active segment is sealed first so its records can go too.
#[tokio::test]
async fn the_store_hides_erased_events_and_keeps_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open_for_test(dir.path());
    // Offsets 1..=10: tenant a from 2 to 7.
    let events = (0..10)
        .map(|i| {
            marked(
                &format!("s{i}"),
                if (1..7).contains(&i) { "a" } else { "b" },
            )
        })
        .collect();
    store.append(events).await.unwrap();
    let unwanted = store.unwanted("a", Offset::ZERO, Offset::MAX).unwrap();
    let offsets: Vec<Offset> = unwanted.iter().map(|u| u.offset).collect();
    assert_eq!(offsets, (2..=7).map(Offset::new).collect::<Vec<_>>());
    assert_eq!(unwanted[0].event_id, "s1");
    assert_eq!(store.erase(&offsets, Removal::Erased).await.unwrap(), 6);
    assert!(store
        .unwanted("a", Offset::ZERO, Offset::MAX)
        .unwrap()
        .is_empty());

    let (local, three) = (store.local().unwrap(), Offset::new(3));
    assert!(local.get(three).unwrap().is_none());
    assert!(local.meta(three).unwrap().is_none());
    let e = store.erasure(Offset::new(3)).unwrap().expect("a tombstone");
    assert_eq!(
        (
            e.event_id.as_str(),
            e.tenant.as_str(),
            e.event_type.as_str(),
            e.reason.as_str()
        ),
        ("s2", "a", "a.b", "erased")
    );
    assert!(
        store.erasure(Offset::new(1)).unwrap().is_none(),
        "a live event"
    );
    let read = |from, limit| -> Vec<u64> {
        store
            .local()
            .unwrap()
            .read_records(from, limit)
            .unwrap()
            .iter()
            .map(|r| r.offset.get())
            .collect()
    };
    assert_eq!(
        read(Offset::new(2), 2),
        [8, 9],
        "reads on past a batch of tombstones"
    );
    assert_eq!(read(Offset::new(1), 100), [1, 8, 9, 10]);
    let s4 = local.offset_of_id(&EventId::new("s4")).unwrap();
    assert_eq!(s4, Some(Offset::new(5)));
    assert_eq!(
        store
            .local()
            .unwrap()
            .offset_at_time(SystemTime::UNIX_EPOCH)
            .unwrap(),
        Offset::new(1)
    );
    let again = store.append(vec![marked("s4", "a")]).await.unwrap();
    assert_eq!((again[0].offset.get(), again[0].duplicate), (5, true));
    let new = store.append(vec![marked("s10", "b")]).await.unwrap();
    assert_eq!((new[0].offset.get(), new[0].duplicate), (11, false));

    let files_with = |m: &str| -> usize {
        std::fs::read_dir(dir.path().join("events"))
            .unwrap()
            .filter(|e| {
                std::fs::read(e.as_ref().unwrap().path())
                    .unwrap()
                    .windows(m.len())
                    .any(|w| w == m.as_bytes())
            })
            .count()
    };
    for i in 0..10 {
        let want = usize::from(!(1..7).contains(&i));
        assert_eq!(files_with(&mark(&format!("s{i}"))), want, "s{i}");
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
    let (store, writer) = open_for_test(dir.path());
    assert!(store
        .local()
        .unwrap()
        .get(Offset::new(3))
        .unwrap()
        .is_none());
    assert_eq!(
        store.erasure(Offset::new(7)).unwrap().unwrap().event_id,
        "s6"
    );
    assert_eq!(read_ids(&store), ["s0", "s7", "s8", "s9", "s10"]);
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

fn read_ids(store: &super::Store) -> Vec<String> {
    store
        .local()
        .unwrap()
        .read_from(Offset::ZERO, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.event.id)
        .collect()
}
