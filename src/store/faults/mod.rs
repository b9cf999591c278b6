//! The event log and its writer, broken on purpose.
//!
//! The log writer's group commit ([`LogWriterThread::commit`]) runs here
//! synchronously on [`FaultyFs`]: writes, syncs and reads fail when told
//! to, and a crash keeps only what was synced. The unit tests pin each
//! error path; the model test drives random sequences against a `Vec`.

use std::{io::ErrorKind, path::PathBuf, sync::Arc, time::Duration};

use proptest::prelude::*;
use tokio::sync::{oneshot, watch};

use super::{
    log::{
        fs::{
            faulty::{FaultyFs, Op},
            Fs, FsFile, RealFs,
        },
        EventLog, LogOptions, Recovery,
    },
    test_event,
    writer::{Encoded, LogOp, LogWriterThread},
    StoreHealth,
};
use crate::{
    error::{Error, Result},
    model::{Appended, Offset},
};

/// A log with its writer, driven one group at a time.
pub(super) struct Harness {
    pub(super) fs: FaultyFs,
    options: LogOptions,
    pub(super) log: Arc<EventLog>,
    writer: LogWriterThread,
    head: watch::Receiver<Offset>,
    health: watch::Receiver<StoreHealth>,
}

pub(super) fn dir() -> PathBuf {
    PathBuf::from("/data/events")
}

impl Harness {
    pub(super) fn new(segment_bytes: u64) -> Self {
        let fs = FaultyFs::default();
        let options = LogOptions {
            segment_bytes,
            recovery: Recovery::Refuse,
            zero_fill: false,
            fs: Arc::new(fs.clone()),
        };
        Self::open(fs, options).expect("a new log opens")
    }

    fn open(fs: FaultyFs, options: LogOptions) -> Result<Self> {
        let (log, log_writer) = EventLog::open(&dir(), options.clone())?;
        let next = log.next();
        let (head_tx, head) = watch::channel(next);
        let (health_tx, health) = watch::channel(StoreHealth::default());
        let writer = LogWriterThread::new(
            log_writer,
            0,
            head_tx,
            health_tx,
            1024,
            Default::default(),
            Duration::ZERO,
        );
        Ok(Self {
            fs,
            options,
            log,
            writer,
            head,
            health,
        })
    }

    /// Closes the log and opens it again (a restart); with `crash`, after
    /// dropping everything not synced (a power cut).
    pub(super) fn reopen(self, crash: bool) -> Result<Self> {
        let (fs, options) = (self.fs.clone(), self.options.clone());
        drop(self);
        if crash {
            fs.crash();
        }
        fs.heal();
        Self::open(fs, options)
    }

    /// Commits `batches` as one group; each batch's outcome.
    fn group(&mut self, batches: &[&[&str]]) -> Vec<Result<Vec<Appended>>> {
        let mut group = Vec::new();
        let mut replies = Vec::new();
        for ids in batches {
            let (reply, rx) = oneshot::channel();
            let events = ids.iter().map(|id| Encoded::new(test_event(id))).collect();
            group.push(LogOp::Append { events, reply });
            replies.push(rx);
        }
        self.writer.commit(&mut group);
        replies
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("every append is answered"))
            .collect()
    }

    fn append(&mut self, ids: &[&str]) -> Result<Vec<Appended>> {
        self.group(&[ids]).pop().expect("one outcome")
    }

    /// Commits `events` as one append.
    pub(super) fn append_new(
        &mut self,
        events: Vec<crate::model::NewEvent>,
    ) -> Result<Vec<Appended>> {
        let (reply, mut rx) = oneshot::channel();
        let events = events.into_iter().map(Encoded::new).collect();
        self.writer
            .commit(&mut vec![LogOp::Append { events, reply }]);
        rx.try_recv().expect("answered")
    }

    /// Seals the active segment if it holds records below `before`.
    pub(super) fn seal(&mut self, before: Offset) -> Result<()> {
        let (reply, mut rx) = oneshot::channel();
        self.writer.commit(&mut vec![LogOp::Seal { before, reply }]);
        rx.try_recv().expect("answered")
    }

    fn truncate(&mut self, before: Offset) -> Result<usize> {
        let (reply, mut rx) = oneshot::channel();
        self.writer
            .commit(&mut vec![LogOp::Truncate { before, reply }]);
        rx.try_recv().expect("answered")
    }

    pub(super) fn head(&self) -> Offset {
        *self.head.borrow()
    }

    /// The id stored at `offset`, if any.
    fn id_at(&self, offset: Offset) -> Result<Option<String>> {
        self.log
            .get(offset)?
            .map(|r| super::keys::decode_event_id(offset, &r))
            .transpose()
    }

    fn segment(&self, base: Offset) -> PathBuf {
        dir().join(format!("{base:020}.log"))
    }
}

fn offsets(r: &Result<Vec<Appended>>) -> Vec<(Offset, bool)> {
    r.as_ref()
        .expect("appended")
        .iter()
        .map(|a| (a.offset, a.duplicate))
        .collect()
}

/// An append whose id lookup cannot read the log fails alone: the other
/// appends of its group commit, and neither its records nor the head ever
/// show a record that is not durable. (On the code before this change the
/// whole group failed, the head moved past the durable records, and the
/// buffered records were written by the next commit.)
#[test]
fn a_failed_lookup_fails_only_its_own_append() {
    let mut h = Harness::new(1 << 20);
    h.append(&["x"]).unwrap();
    // The lookup of "x" reads its record: that read fails.
    h.fs.fail(Op::Read, 0, ErrorKind::Other);
    let out = h.group(&[&["y"], &["n1", "x"], &["z"]]);
    assert_eq!(offsets(&out[0]), [(2, false)]);
    assert!(out[1].is_err(), "the append whose lookup failed");
    assert_eq!(offsets(&out[2]), [(3, false)], "n1's offset is given again");
    assert_eq!(h.head(), 4);
    assert_eq!(h.id_at(3).unwrap().as_deref(), Some("z"));
    let again = h.append(&["n1", "x"]).unwrap();
    assert_eq!(
        again
            .iter()
            .map(|a| (a.offset, a.duplicate))
            .collect::<Vec<_>>(),
        [(4, false), (1, true)]
    );
    let h = h.reopen(true).unwrap();
    let ids: Vec<_> = (1..=4).map(|o| h.id_at(o).unwrap().unwrap()).collect();
    assert_eq!(ids, ["x", "y", "z", "n1"]);
    assert_eq!(h.id_at(5).unwrap(), None);
}

/// A batch that does not fit the active segment goes whole into the next
/// one; if that cannot be created, nothing of the batch is written. (Before
/// this change the first part was committed and readable while the caller
/// got an error.)
#[test]
fn a_batch_never_spans_two_segments() {
    let mut h = Harness::new(1024);
    h.append(&["a", "b"]).unwrap();
    let big: Vec<String> = (0..24).map(|i| format!("big{i}")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    // Creating the next segment fails at its header's write.
    h.fs.fail(Op::Write, 0, ErrorKind::StorageFull);
    assert!(h.append(&big).is_err());
    assert_eq!(h.head(), 3, "nothing of the batch is visible");
    assert_eq!(h.id_at(3).unwrap(), None);
    let out = h.append(&big).unwrap();
    assert_eq!(out[0].offset, 3);
    assert_eq!(out[23].offset, 26);
    assert!(
        h.fs.contents(&h.segment(3)).is_some(),
        "the batch starts a segment"
    );
    let h = h.reopen(true).unwrap();
    assert_eq!(h.head(), 27);
    assert_eq!(h.id_at(26).unwrap().as_deref(), Some("big23"));
}

/// A failed write is cut back off the file and the log goes on; a failed
/// fdatasync stops appends (until a restart) and says so.
#[test]
fn a_failed_write_heals_and_a_failed_sync_poisons() {
    let mut h = Harness::new(1 << 20);
    h.append(&["a"]).unwrap();
    h.fs.fail(Op::Write, 0, ErrorKind::StorageFull);
    let full = h.append(&["b"]).unwrap_err();
    // What a publisher is told (issue #21): not a generic INTERNAL.
    assert_eq!(
        tonic::Status::from(full).code(),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(offsets(&h.append(&["c"])), [(2, false)], "writes heal");
    assert!(h.health.borrow().problem().is_none());

    h.fs.fail(Op::Sync, 0, ErrorKind::Other);
    assert!(h.append(&["d"]).is_err());
    let err = h.append(&["e"]).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    assert!(h
        .health
        .borrow()
        .log
        .as_deref()
        .is_some_and(|f| f.contains("restart")));
    assert_eq!(h.head(), 3);
    assert_eq!(h.id_at(3).unwrap(), None);
    // A restart (no crash): the unsynced commit was cut, appends go on.
    let mut h = h.reopen(false).unwrap();
    assert_eq!(h.id_at(3).unwrap(), None);
    assert_eq!(offsets(&h.append(&["f"])), [(3, false)]);
}

/// Appending [`N_SEQ`] single events, one commit each.
const N_SEQ: usize = 12;

fn filled(segment_bytes: u64) -> Harness {
    let mut h = Harness::new(segment_bytes);
    for i in 0..N_SEQ {
        h.append(&[&format!("e{i}")]).unwrap();
    }
    h
}

/// Byte position of record `offset`'s frame in its segment file.
fn position(h: &Harness, base: Offset, offset: Offset) -> u64 {
    let bytes = h.fs.contents(&h.segment(base)).unwrap();
    // Walk the frames from after the file header.
    let mut pos = 16usize;
    for _ in base..offset {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) & !(1 << 31);
        pos += 16 + len as usize;
    }
    pos as u64
}

/// A torn tail (the end of an unacknowledged commit) is cut at open; a
/// bit flipped in an acknowledged record that later commits follow stops
/// the open with the file and byte, unless recovery = "truncate". (Before
/// this change both were cut silently.)
#[test]
fn damage_inside_acknowledged_records_refuses_to_open() {
    // Torn: the last record's bytes flipped, nothing after it.
    let h = filled(1 << 20);
    let last = position(&h, 1, N_SEQ as Offset);
    h.fs.flip(&h.segment(1), last + 20, 3);
    let h = h.reopen(false).unwrap();
    assert_eq!(h.head(), N_SEQ as Offset, "the torn last record is cut");

    // Damaged: a middle record.
    let h = filled(1 << 20);
    let at = position(&h, 1, 5);
    h.fs.flip(&h.segment(1), at + 20, 0);
    let (fs, mut options) = (h.fs.clone(), h.options.clone());
    drop(h);
    let err = match Harness::open(fs.clone(), options.clone()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a damaged middle record must refuse the open"),
    };
    assert!(err.contains("00000000000000000001.log"), "{err}");
    assert!(err.contains(&format!("byte {at}")), "{err}");
    assert!(err.contains("record 5"), "{err}");
    assert!(err.contains("recovery = \"truncate\""), "{err}");

    options.recovery = Recovery::Truncate;
    let mut h = Harness::open(fs, options).unwrap();
    assert_eq!(h.head(), 5, "cut at the damage");
    assert_eq!(h.id_at(4).unwrap().as_deref(), Some("e3"));
    assert_eq!(offsets(&h.append(&["new"])), [(5, false)]);
}

/// A bit flipped in a sealed segment (with its `.idx`, so not read at
/// open): reading that record says it is damaged, with its offset; every
/// other record still reads, before and after it.
#[test]
fn damage_in_a_sealed_segment_is_contained() {
    let h = filled(200);
    let first_segment = h.segment(1);
    let logs = h.fs.list(&dir()).unwrap();
    assert!(
        logs.iter().filter(|n| n.ends_with(".log")).count() > 2,
        "small segments roll"
    );
    let at = position(&h, 1, 2);
    h.fs.flip(&first_segment, at + 18, 1);
    let h = h.reopen(false).unwrap();
    let err = h.log.get(2).unwrap_err();
    assert!(matches!(err, Error::Damaged { offset: 2, .. }), "{err:?}");
    assert_eq!(h.id_at(1).unwrap().as_deref(), Some("e0"));
    let mut out = Vec::new();
    h.log.read_range(1, 20, 100, &mut out).unwrap();
    assert_eq!(out.len(), N_SEQ);
    let healthy = out.iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(healthy, N_SEQ - 1, "only the damaged record fails");
    let found = h.log.scrub().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, 2);
    assert!(
        found[0].1.contains("00000000000000000001.log byte"),
        "{}",
        found[0].1
    );
    let tonic = tonic::Status::from(err);
    assert_eq!(tonic.code(), tonic::Code::DataLoss);
    assert!(tonic.message().contains("record 2 is damaged"));
}

/// A file with this kind's magic and a version this code does not know
/// is refused with its name.
#[test]
fn an_unknown_format_version_is_refused() {
    let h = filled(1 << 20);
    let (fs, options) = (h.fs.clone(), h.options.clone());
    let path = h.segment(1);
    drop(h);
    let file = fs.open(&path, false).unwrap();
    let mut header = b"STVD-LOG".to_vec();
    header.extend_from_slice(&2u32.to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
    file.write_all_at(&header, 0).unwrap();
    let err = Harness::open(fs, options)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("format version 2"), "{err}");
    assert!(err.contains("00000000000000000001.log"), "{err}");
}

/// What the model test does, one step at a time.
#[derive(Debug, Clone)]
enum Step {
    /// A group of batches of ids (from a small pool, so duplicates occur).
    Group(Vec<Vec<u8>>),
    Fail(Op, u32),
    Crash,
    Reopen,
    Truncate(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let batch = prop::collection::vec(0u8..40, 1..6);
    prop_oneof![
        6 => prop::collection::vec(batch, 1..4).prop_map(Step::Group),
        1 => (prop_oneof![Just(Op::Write), Just(Op::Sync), Just(Op::Read)], 0u32..3)
            .prop_map(|(op, n)| Step::Fail(op, n)),
        1 => Just(Step::Crash),
        1 => Just(Step::Reopen),
        1 => any::<u8>().prop_map(Step::Truncate),
    ]
}

/// The model: what was acknowledged, by offset.
#[derive(Default)]
struct Model {
    /// Ids by offset - 1 (offsets start at 1).
    ids: Vec<String>,
    first: Offset,
    /// First offsets of truncations that failed, perhaps after writing
    /// their start file but before it was durable: a restart may find any
    /// of them, until a truncation writes the start file again.
    unsure: Vec<Offset>,
    poisoned: bool,
    /// Ids of appends that failed while their commit's bytes could not be
    /// cut back: the next start may find them (their callers were told
    /// the outcome is unknown).
    maybe: Vec<String>,
}

impl Model {
    fn next(&self) -> Offset {
        self.ids.len() as Offset + 1
    }

    fn offset_of(&self, id: &str) -> Option<Offset> {
        // An id comes back only after retention removed it: the last one.
        let at = self.ids.iter().rposition(|i| i == id)? as Offset + 1;
        (at >= self.first).then_some(at)
    }

    /// Checks a group's outcome against the model and records it.
    fn apply(&mut self, batches: &[Vec<String>], out: &[Result<Vec<Appended>>]) {
        for (ids, r) in batches.iter().zip(out) {
            let Ok(results) = r else { continue };
            assert!(!self.poisoned, "an append succeeded after a failed sync");
            for (id, a) in ids.iter().zip(results) {
                match self.offset_of(id) {
                    Some(o) => assert_eq!((a.offset, a.duplicate), (o, true), "{id}"),
                    None => {
                        assert_eq!((a.offset, a.duplicate), (self.next(), false), "{id}");
                        self.ids.push(id.clone());
                    }
                }
            }
        }
    }

    /// After a restart: appends work again, and a truncation that failed
    /// after writing its start file may have taken effect (retention
    /// removes what it was allowed to remove).
    fn reopened(&mut self, h: &Harness) {
        self.poisoned = false;
        let first = h.log.first().max(1);
        if first != self.first.max(1) {
            assert!(
                self.unsure.contains(&first),
                "first {first}: {:?}",
                self.unsure
            );
            self.first = first;
        }
        // Opening made what it read durable.
        self.unsure.clear();
        for offset in self.next()..h.log.next() {
            let id = h.id_at(offset).unwrap().expect("the head is dense");
            assert!(
                self.maybe.contains(&id),
                "{id} at {offset} was never acknowledged"
            );
            self.ids.push(id);
        }
        self.maybe.clear();
    }

    /// Everything acknowledged reads back at its offset, and nothing else.
    fn check(&self, h: &Harness) {
        assert_eq!(h.head(), self.next(), "the head is what was acknowledged");
        assert_eq!(h.log.next(), self.next());
        assert_eq!(h.log.first().max(1), self.first.max(1));
        for offset in self.first.max(1)..self.next() {
            let id = &self.ids[offset as usize - 1];
            assert_eq!(h.id_at(offset).unwrap().as_ref(), Some(id), "at {offset}");
            assert_eq!(h.log.offset_of_id(id).unwrap(), Some(offset), "{id}");
        }
        assert_eq!(h.id_at(self.next()).unwrap(), None);
    }
}

fn run_model(steps: Vec<Step>) {
    let mut h = Harness::new(600);
    let mut model = Model {
        first: 1,
        ..Default::default()
    };
    for step in steps {
        let arms = matches!(step, Step::Fail(..));
        match step {
            Step::Group(batches) => {
                let batches: Vec<Vec<String>> = batches
                    .iter()
                    .map(|b| b.iter().map(|i| format!("id{i}")).collect())
                    .collect();
                let refs: Vec<Vec<&str>> = batches
                    .iter()
                    .map(|b| b.iter().map(String::as_str).collect())
                    .collect();
                let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
                let out = h.group(&refs);
                model.apply(&batches, &out);
                if let Some(why) = h.health.borrow().log.as_deref() {
                    model.poisoned = true;
                    if why.contains("may be found") && model.maybe.is_empty() {
                        for (ids, r) in batches.iter().zip(&out) {
                            if r.is_err() {
                                model.maybe.extend(ids.iter().cloned());
                            }
                        }
                    }
                }
            }
            Step::Fail(op, after) => h.fs.fail(op, after, ErrorKind::Other),
            Step::Crash | Step::Reopen => {
                h = h
                    .reopen(matches!(step, Step::Crash))
                    .expect("the log reopens");
                model.reopened(&h);
            }
            Step::Truncate(n) => {
                let before = n as Offset % (model.next() + 2);
                if let Ok(removed) = h.truncate(before) {
                    let first = before.min(model.next()).max(model.first);
                    assert_eq!(removed as Offset, first - model.first);
                    model.first = first;
                    if removed > 0 {
                        // The start file was written again.
                        model.unsure.clear();
                    }
                } else if h.log.first() != model.first {
                    // Failed after moving the first offset (removing
                    // segments).
                    model.first = h.log.first();
                } else {
                    model.unsure.push(before.min(model.next()).max(model.first));
                }
            }
        }
        if !arms {
            // A fault armed by the previous step was for this one.
            h.fs.heal();
            model.check(&h);
        }
    }
    let h = h.reopen(true).expect("the log reopens after a crash");
    model.reopened(&h);
    model.check(&h);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    /// Random appends, batches, faults, crashes, restarts and truncations
    /// against a `Vec`: after every step every acknowledged event reads
    /// back at its offset, nothing unacknowledged is visible, offsets are
    /// dense and the head never passes what is durable.
    #[test]
    fn the_log_keeps_what_it_acknowledged(steps in prop::collection::vec(step(), 1..40)) {
        run_model(steps);
    }
}

/// The real file system, counting each file's `fdatasync`s; the state
/// store's (`db`) fail while `fail_state_syncs` is set.
#[derive(Clone, Default)]
struct CountingFs {
    syncs: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    fail_state_syncs: Arc<std::sync::atomic::AtomicBool>,
}

struct CountedFile {
    name: String,
    file: Arc<dyn FsFile>,
    syncs: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    fail_state_syncs: Arc<std::sync::atomic::AtomicBool>,
}

impl CountingFs {
    /// `fdatasync`s so far of the files whose name ends with `suffix`.
    fn syncs(&self, suffix: &str) -> u64 {
        let syncs = self.syncs.lock().unwrap();
        syncs
            .iter()
            .filter(|(n, _)| n.ends_with(suffix))
            .map(|(_, c)| c)
            .sum()
    }
}

impl Fs for CountingFs {
    fn open(&self, path: &std::path::Path, create: bool) -> std::io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(CountedFile {
            name: path.display().to_string(),
            file: RealFs.open(path, create)?,
            syncs: self.syncs.clone(),
            fail_state_syncs: self.fail_state_syncs.clone(),
        }))
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        RealFs.remove(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

impl FsFile for CountedFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.name.ends_with("/db")
            && self
                .fail_state_syncs
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(std::io::Error::other("injected fdatasync failure"));
        }
        self.file.sync_data()?;
        *self
            .syncs
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += 1;
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
}

/// A whole store's configuration on `path`, for the tests that open one.
fn store_config(path: &std::path::Path) -> super::StoreConfig {
    super::StoreConfig {
        path: path.to_owned(),
        cache_bytes: 1 << 20,
        segment_bytes: 1 << 20,
        max_group: 16,
        commit_delay: Duration::ZERO,
        metrics: Default::default(),
        recovery: Recovery::Refuse,
        zero_fill: false,
    }
}

/// A publish and a state write are each answered only after the file they
/// wrote was `fdatasync`'d (sled's `flush()` alone does not sync on
/// Linux). Checked against removing either sync: this test then fails.
#[tokio::test]
async fn every_acknowledged_write_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let fs = CountingFs::default();
    let config = store_config(dir.path());
    let (store, writer) = super::Store::open_on(&config, Arc::new(fs.clone())).unwrap();
    for i in 0..3 {
        let (log, db) = (fs.syncs(".log"), fs.syncs("/db"));
        store
            .append(vec![test_event(&format!("e{i}"))])
            .await
            .unwrap();
        assert!(
            fs.syncs(".log") > log,
            "an append is synced before its answer"
        );
        store
            .write(vec![super::Mutation::put(
                super::Table::Endpoints,
                format!("k{i}"),
                "v",
            )])
            .await
            .unwrap();
        assert!(
            fs.syncs("/db") > db,
            "a state write is synced before its answer"
        );
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

/// A failed state sync is reported in the store's health (the broker goes
/// NOT_SERVING on it) and the next successful state write clears it.
/// Checked against making `writer::report_state` do nothing: this test then
/// fails (mutation testing found no test that did).
#[tokio::test]
async fn a_failing_state_write_shows_in_health_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let fs = CountingFs::default();
    let config = store_config(dir.path());
    let (store, writer) = super::Store::open_on(&config, Arc::new(fs.clone())).unwrap();
    let health = store.watch_health();
    let fail = |on: bool| {
        fs.fail_state_syncs
            .store(on, std::sync::atomic::Ordering::SeqCst)
    };
    let put = |i: u32| {
        vec![super::Mutation::put(
            super::Table::Endpoints,
            format!("k{i}"),
            "v",
        )]
    };
    store.write(put(0)).await.unwrap();
    assert!(health.borrow().problem().is_none());

    fail(true);
    assert!(
        store.write(put(1)).await.is_err(),
        "the failed sync is the answer"
    );
    let problem = health.borrow().problem().map(str::to_owned);
    assert!(
        problem
            .as_deref()
            .is_some_and(|p| p.contains("state writes are failing")),
        "{problem:?}"
    );

    fail(false);
    store.write(put(2)).await.unwrap();
    assert!(health.borrow().problem().is_none(), "a success clears it");
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

/// Once state syncs work again, the store says so by itself (the state
/// writer probes, reopening the database), without waiting for a caller's
/// write; writes then succeed and survive a restart. Fails on the code
/// before the probe: the health stayed failing until the next write.
#[tokio::test]
async fn failing_state_writes_heal_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let fs = CountingFs::default();
    let config = store_config(dir.path());
    let (store, writer) = super::Store::open_on(&config, Arc::new(fs.clone())).unwrap();
    let mut health = store.watch_health();
    let fail = |on: bool| {
        fs.fail_state_syncs
            .store(on, std::sync::atomic::Ordering::SeqCst)
    };
    store.endpoints().put("a", b"1".to_vec()).await.unwrap();
    fail(true);
    assert!(store.endpoints().put("b", b"2".to_vec()).await.is_err());
    assert!(health.borrow_and_update().state.is_some());
    fail(false);
    tokio::time::timeout(
        Duration::from_secs(10),
        health.wait_for(|h| h.state.is_none()),
    )
    .await
    .expect("the health clears by itself")
    .unwrap();
    store.endpoints().put("c", b"3".to_vec()).await.unwrap();
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
    let (store, writer) = super::Store::open(&config).unwrap();
    for id in ["a", "c"] {
        assert!(store.endpoints().get(id).unwrap().is_some(), "{id}");
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}
