use super::{open::LOG_DIR, *};

fn config(path: &Path) -> StoreConfig {
    StoreConfig {
        path: path.to_owned(),
        cache_bytes: 1 << 20,
        // Small segments, so a few events span several.
        segment_bytes: 1024,
        max_group: 16,
        commit_delay: std::time::Duration::ZERO,
        metrics: Default::default(),
        recovery: Recovery::Refuse,
        zero_fill: true,
    }
}

use super::test_event as event;

async fn close(store: Store, writer: WriterHandle) {
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

/// Whether the event at `offset` no longer reads.
fn is_gone(store: &Store, offset: u64) -> bool {
    store
        .local()
        .unwrap()
        .get(Offset::new(offset))
        .unwrap()
        .is_none()
}

fn ids(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.id.clone()).collect()
}

fn segments(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Appends `n` events `e{from}`..., in batches of 7.
async fn fill(store: &Store, from: usize, n: usize) {
    let names: Vec<String> = (from..from + n).map(|i| format!("e{i}")).collect();
    for chunk in names.chunks(7) {
        store
            .append(chunk.iter().map(|i| event(i)).collect())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn events_span_segments_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    fill(&store, 0, 200).await;
    assert_eq!(store.head(), Offset::new(201));
    assert!(segments(dir.path(), "log").len() > 3, "small segments roll");
    let all = store
        .local()
        .unwrap()
        .read_from(Offset::new(1), 1000)
        .unwrap();
    assert_eq!(all.len(), 200);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e.offset == Offset::new(i as u64 + 1)));
    assert_eq!(
        ids(&store
            .local()
            .unwrap()
            .read_from(Offset::new(57), 3)
            .unwrap()),
        ["e56", "e57", "e58"]
    );
    // A duplicate of an id in an earlier segment answers its offset.
    let dup = store.append(vec![event("e3")]).await.unwrap();
    assert_eq!((dup[0].offset.get(), dup[0].duplicate), (4, true));
    close(store, writer).await;

    // Sealed segments open from their `.idx`; damage one and it is
    // rebuilt from the segment.
    let idx = segments(dir.path(), "idx");
    std::fs::write(&idx[1], b"garbage").unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.head(), Offset::new(201));
    assert_eq!(
        store
            .local()
            .unwrap()
            .read_from(Offset::new(1), 1000)
            .unwrap(),
        all
    );
    for id in ["e0", "e30", "e199"] {
        let dup = store.append(vec![event(id)]).await.unwrap();
        assert!(dup[0].duplicate, "{id} is known after a restart");
    }
    let new = store.append(vec![event("e200")]).await.unwrap();
    assert_eq!((new[0].offset.get(), new[0].duplicate), (201, false));
    let e30 = store.local().unwrap().offset_of_id(&EventId::new("e30"));
    assert_eq!(e30.unwrap(), Some(Offset::new(31)));
    close(store, writer).await;
}

/// Bytes of records in the last segment.
fn records_end(store: &Store) -> usize {
    store.local().unwrap().log.records_in_last_segment() as usize
}

/// A crash can leave a torn or unacknowledged record at the end of the
/// last segment, over the zeros written ahead of the writer: opening
/// cuts it, and appending goes on after the last complete record.
#[tokio::test]
async fn a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    fill(&store, 0, 10).await;
    let good = records_end(&store);
    close(store, writer).await;
    let last = segments(dir.path(), "log").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.resize(good, 0);
    // The last record again, cut short, as a crash mid-write leaves it,
    // then zeros.
    bytes.extend_from_within(good - 60..good - 10);
    bytes.resize(good + 200, 0);
    std::fs::write(&last, &bytes).unwrap();

    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    let bytes = std::fs::read(&last).unwrap();
    assert!(
        bytes[good..].iter().all(|&b| b == 0),
        "the torn record is gone (zeros may follow the records again)"
    );
    assert_eq!(store.head(), Offset::new(11));
    let new = store.append(vec![event("e10")]).await.unwrap();
    assert_eq!(new[0].offset, Offset::new(11));
    assert_eq!(
        store
            .local()
            .unwrap()
            .get(Offset::new(11))
            .unwrap()
            .unwrap()
            .event
            .id,
        "e10"
    );
    let good = records_end(&store);
    close(store, writer).await;

    // A flipped byte inside the last record: its checksum fails, so it
    // is the unacknowledged tail and goes.
    let last = segments(dir.path(), "log").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[good - 3] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.head(), Offset::new(11));
    assert!(is_gone(&store, 11));
    close(store, writer).await;
}

/// Zeros after the records (written ahead of the writer) are not a torn
/// tail: the last segment keeps them and appends overwrite them; a
/// sealed segment that still has them (a crash before its sealing
/// finished, so no `.idx` either) is cut to its records.
#[tokio::test]
async fn zeros_after_the_records_are_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    fill(&store, 0, 40).await;
    let good = records_end(&store);
    close(store, writer).await;
    let logs = segments(dir.path(), "log");
    let (sealed, last) = (&logs[1], logs.last().unwrap());
    let sealed_len = std::fs::metadata(sealed).unwrap().len();
    for (path, len) in [(sealed, sealed_len + 300), (last, good as u64 + 300)] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    std::fs::remove_file(sealed.with_extension("idx")).unwrap();

    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(std::fs::metadata(sealed).unwrap().len(), sealed_len);
    assert!(std::fs::metadata(last).unwrap().len() >= good as u64 + 300);
    assert_eq!(store.head(), Offset::new(41));
    let new = store.append(vec![event("e40")]).await.unwrap();
    assert_eq!((new[0].offset.get(), new[0].duplicate), (41, false));
    let all = store
        .local()
        .unwrap()
        .read_from(Offset::new(1), 100)
        .unwrap();
    let want: Vec<String> = (0..41).map(|i| format!("e{i}")).collect();
    assert_eq!(ids(&all), want);
    close(store, writer).await;
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(
        ids(&store
            .local()
            .unwrap()
            .read_from(Offset::new(1), 100)
            .unwrap()),
        want
    );
    close(store, writer).await;
}

#[tokio::test]
async fn truncation_deletes_whole_segments_and_forgets_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    fill(&store, 0, 100).await;
    let before = segments(dir.path(), "log").len();
    assert_eq!(store.truncate(Offset::new(60)).await.unwrap(), 59);
    assert_eq!(store.first_offset().unwrap(), Offset::new(60));
    assert!(is_gone(&store, 59));
    assert_eq!(
        store
            .local()
            .unwrap()
            .get(Offset::new(60))
            .unwrap()
            .unwrap()
            .event
            .id,
        "e59"
    );
    assert_eq!(
        store.local().unwrap().read_from(Offset::new(1), 2).unwrap()[0].offset,
        Offset::new(60)
    );
    assert!(segments(dir.path(), "log").len() < before);
    let live = store.size_on_disk().unwrap()
        - store
            .local()
            .unwrap()
            .state
            .current()
            .unwrap()
            .db
            .size_on_disk()
            .unwrap();
    let files: u64 = segments(dir.path(), "log")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        live < files,
        "removed events still in a segment are not counted"
    );
    // An id that retention removed is new again.
    let again = store.append(vec![event("e1")]).await.unwrap();
    assert_eq!((again[0].offset.get(), again[0].duplicate), (101, false));
    // Everything can go, the newest event too; numbering goes on.
    assert_eq!(store.truncate(Offset::new(1000)).await.unwrap(), 42);
    assert_eq!(store.first_offset().unwrap(), Offset::new(102));
    assert!(is_gone(&store, 101));
    close(store, writer).await;

    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.first_offset().unwrap(), Offset::new(102));
    assert_eq!(store.head(), Offset::new(102));
    assert!(store
        .local()
        .unwrap()
        .read_from(Offset::new(1), 10)
        .unwrap()
        .is_empty());
    let again = store.append(vec![event("e1")]).await.unwrap();
    assert_eq!((again[0].offset.get(), again[0].duplicate), (102, false));
    assert_eq!(
        ids(&store
            .local()
            .unwrap()
            .read_from(Offset::new(1), 10)
            .unwrap()),
        ["e1"]
    );
    close(store, writer).await;
}

/// A full disk under sled is `RESOURCE_EXHAUSTED` like one under the
/// log; its other failures stay `INTERNAL`.
#[test]
fn sled_errors_keep_their_codes() {
    let enospc = std::io::Error::from_raw_os_error(28);
    let status = tonic::Status::from(Error::from(sled::Error::Io(enospc)));
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let status = tonic::Status::from(Error::from(sled::Error::Unsupported("no".into())));
    assert_eq!(status.code(), tonic::Code::Internal);
}

/// Data directories from before the event log kept events in sled.
#[tokio::test]
async fn events_in_sled_trees_move_into_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new()
            .path(dir.path())
            .segment_size(8 * 1024 * 1024)
            .open()
            .unwrap();
        let events = db.open_tree(keys::LEGACY_EVENTS_TREE).unwrap();
        let event_ids = db.open_tree(keys::LEGACY_EVENT_IDS_TREE).unwrap();
        // Retention had removed offsets below 5.
        for (i, offset) in (5..25u64).enumerate() {
            let e = event(&format!("old{i}"));
            let record = keys::encode_event_record(&e, 1_000 + offset);
            events
                .insert(keys::offset_key(Offset::new(offset)), record)
                .unwrap();
            event_ids
                .insert(
                    e.event.id.as_bytes(),
                    &keys::offset_key(Offset::new(offset)),
                )
                .unwrap();
        }
        db.flush().unwrap();
    }
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.first_offset().unwrap(), Offset::new(5));
    assert_eq!(store.head(), Offset::new(25));
    let moved = store.local().unwrap().read_from(Offset::ZERO, 100).unwrap();
    assert_eq!(moved.len(), 20);
    assert_eq!(moved[0].event.id, "old0");
    assert_eq!(
        moved[19].published_at,
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_024)
    );
    let dup = store.append(vec![event("old3")]).await.unwrap();
    assert_eq!((dup[0].offset.get(), dup[0].duplicate), (8, true));
    close(store, writer).await;
    let db = open_sled(
        sled::Config::new()
            .path(dir.path())
            .segment_size(8 * 1024 * 1024),
        dir.path(),
    )
    .unwrap();
    assert!(!db
        .tree_names()
        .iter()
        .any(|n| &n[..] == keys::LEGACY_EVENTS_TREE.as_bytes()));
}

/// State that refers to offsets the log does not have (it lost
/// acknowledged records) refuses the open, naming it; with recovery =
/// "truncate" it is moved back to the log's end instead.
#[tokio::test]
async fn state_above_the_head_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    fill(&store, 0, 5).await;
    let record = ConsumerRecord {
        floor: 4,
        done_ranges: vec![5, 9],
        ..Default::default()
    };
    store
        .write(vec![
            Mutation::put(
                Table::Consumers,
                "c1",
                prost::Message::encode_to_vec(&record),
            ),
            Mutation::put(Table::Endpoints, "ep", "x"),
            Mutation::put(
                Table::Deliveries,
                keys::scoped_offset_key("ep", Offset::new(3)),
                "d",
            ),
            Mutation::put(
                Table::Deliveries,
                keys::scoped_offset_key("ep", Offset::new(7)),
                "d",
            ),
        ])
        .await
        .unwrap();
    close(store, writer).await;
    let err = Store::open(&config(dir.path())).err().unwrap().to_string();
    assert!(
        err.contains("consumer \"c1\" has done offsets up to 9"),
        "{err}"
    );
    assert!(err.contains("next offset 6"), "{err}");

    let mut truncate = config(dir.path());
    truncate.recovery = Recovery::Truncate;
    let (store, writer) = Store::open(&truncate).unwrap();
    let stored = store
        .table(Table::Consumers)
        .unwrap()
        .get("c1")
        .unwrap()
        .unwrap();
    let fixed: ConsumerRecord = prost::Message::decode(&*stored).unwrap();
    assert_eq!((fixed.floor, fixed.done_ranges), (4, vec![5, 6]));
    let deliveries = store.table(Table::Deliveries).unwrap();
    assert!(deliveries
        .get(keys::scoped_offset_key("ep", Offset::new(3)))
        .unwrap()
        .is_some());
    assert!(deliveries
        .get(keys::scoped_offset_key("ep", Offset::new(7)))
        .unwrap()
        .is_none());
    drop(deliveries);
    close(store, writer).await;
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    close(store, writer).await;
}

/// A store reopened while sled still holds its lock on the data file
/// (here: another handle, dropped a moment later) waits for it.
#[tokio::test]
async fn opening_waits_for_sled_to_let_go_of_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let raw = || {
        sled::Config::new()
            .path(dir.path())
            .segment_size(8 * 1024 * 1024)
    };
    let held = raw().open().unwrap();
    assert!(raw().open().is_err(), "sled locks its directory");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(held);
    });
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    release.join().unwrap();

    // Held for longer than the wait: the error says who holds it.
    let err = Store::open(&config(dir.path()))
        .err()
        .expect("the directory is held");
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.starts_with("another broker")),
        "{err}"
    );
    close(store, writer).await;
}

/// The data directory a SIGKILL during a sled snapshot leaves behind
/// (seen in this project's crash tests) must open, with its state.
#[tokio::test]
async fn opens_after_a_crash_during_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, writer) = Store::open(&config(dir.path())).unwrap();
        store.append(vec![event("kept")]).await.unwrap();
        store
            .write(vec![Mutation::put(Table::Endpoints, "ep", "x")])
            .await
            .unwrap();
        close(store, writer).await;
    }
    std::fs::write(dir.path().join("snap.00000000FFFFFFFF.generating"), b"").unwrap();
    let (store, writer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(
        store
            .local()
            .unwrap()
            .get(Offset::new(1))
            .unwrap()
            .unwrap()
            .event
            .id,
        "kept"
    );
    assert!(store
        .table(Table::Endpoints)
        .unwrap()
        .get("ep")
        .unwrap()
        .is_some());
    assert!(!dir.path().join("snap.00000000FFFFFFFF.generating").exists());
    close(store, writer).await;
}
