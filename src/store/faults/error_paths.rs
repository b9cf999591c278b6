//! Each error path of the log writer's group commit (a failed lookup,
//! write or sync), and damage found when the log is opened again.

use super::*;

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
    assert_eq!(h.head(), Offset::new(4));
    assert_eq!(h.id_at(Offset::new(3)).unwrap().as_deref(), Some("z"));
    let again = h.append(&["n1", "x"]).unwrap();
    assert_eq!(
        again
            .iter()
            .map(|a| (a.offset.get(), a.duplicate))
            .collect::<Vec<_>>(),
        [(4, false), (1, true)]
    );
    let h = h.reopen(true).unwrap();
    let ids: Vec<_> = (1..=4)
        .map(|o| h.id_at(Offset::new(o)).unwrap().unwrap())
        .collect();
    assert_eq!(ids, ["x", "y", "z", "n1"]);
    assert_eq!(h.id_at(Offset::new(5)).unwrap(), None);
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
    assert_eq!(h.head(), Offset::new(3), "nothing of the batch is visible");
    assert_eq!(h.id_at(Offset::new(3)).unwrap(), None);
    let out = h.append(&big).unwrap();
    assert_eq!(out[0].offset, Offset::new(3));
    assert_eq!(out[23].offset, Offset::new(26));
    assert!(
        h.fs.contents(&h.segment(Offset::new(3))).is_some(),
        "the batch starts a segment"
    );
    let h = h.reopen(true).unwrap();
    assert_eq!(h.head(), Offset::new(27));
    assert_eq!(h.id_at(Offset::new(26)).unwrap().as_deref(), Some("big23"));
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
    assert_eq!(h.head(), Offset::new(3));
    assert_eq!(h.id_at(Offset::new(3)).unwrap(), None);
    // A restart (no crash): the unsynced commit was cut, appends go on.
    let mut h = h.reopen(false).unwrap();
    assert_eq!(h.id_at(Offset::new(3)).unwrap(), None);
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
fn position(h: &Harness, base: u64, offset: u64) -> u64 {
    let bytes = h.fs.contents(&h.segment(Offset::new(base))).unwrap();
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
    let last = position(&h, 1, N_SEQ as u64);
    h.fs.flip(&h.segment(Offset::new(1)), last + 20, 3);
    let h = h.reopen(false).unwrap();
    assert_eq!(
        h.head(),
        Offset::new(N_SEQ as u64),
        "the torn last record is cut"
    );

    // Damaged: a middle record.
    let h = filled(1 << 20);
    let at = position(&h, 1, 5);
    h.fs.flip(&h.segment(Offset::new(1)), at + 20, 0);
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
    assert_eq!(h.head(), Offset::new(5), "cut at the damage");
    assert_eq!(h.id_at(Offset::new(4)).unwrap().as_deref(), Some("e3"));
    assert_eq!(offsets(&h.append(&["new"])), [(5, false)]);
}

/// A bit flipped in a sealed segment (with its `.idx`, so not read at
/// open): reading that record says it is damaged, with its offset; every
/// other record still reads, before and after it.
#[test]
fn damage_in_a_sealed_segment_is_contained() {
    let h = filled(200);
    let first_segment = h.segment(Offset::new(1));
    let logs = h.fs.list(&dir()).unwrap();
    assert!(
        logs.iter().filter(|n| n.ends_with(".log")).count() > 2,
        "small segments roll"
    );
    let at = position(&h, 1, 2);
    h.fs.flip(&first_segment, at + 18, 1);
    let h = h.reopen(false).unwrap();
    let err = h.log.get(Offset::new(2)).unwrap_err();
    assert!(matches!(err, Error::Damaged { offset: 2, .. }), "{err:?}");

    assert_eq!(h.id_at(Offset::new(1)).unwrap().as_deref(), Some("e0"));
    let mut out = Vec::new();
    h.log
        .read_range(Offset::new(1), Offset::new(20), 100, &mut out)
        .unwrap();
    assert_eq!(out.len(), N_SEQ);
    let healthy = out.iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(healthy, N_SEQ - 1, "only the damaged record fails");
    let found = h.log.scrub().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Offset::new(2));
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
    let path = h.segment(Offset::new(1));
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
