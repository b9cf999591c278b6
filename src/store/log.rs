//! The event log: append-only segment files, one `fdatasync` per commit.
//!
//! Layout of `<data>/events/`:
//!
//! - `<base>.log` (base offset, 20 digits): records, each
//!   `[len u32][crc32 u32][offset u64][record: len bytes]` (little-endian;
//!   the CRC covers the offset and the record). The record is an encoded
//!   [`keys::EventRecord`]. Offsets are dense: a segment's n-th record has
//!   offset `base + n`. The last segment goes on in zeros, written ahead of
//!   its writer so that commits overwrite blocks instead of growing the
//!   file ([`super::zerofill`]); a segment is cut to its records when sealed.
//! - `<base>.idx`: written when a segment is sealed (full, a new one
//!   started): per record `[position u32][id hash u64]`, then
//!   `[count u64][crc32 u32]`. Only a shortcut for opening: a missing or
//!   invalid one is rebuilt by reading the segment.
//! - `start`: `[first offset u64][crc32 u32]`, the first offset still in the
//!   log, rewritten (write, fsync, rename, fsync the directory) when
//!   retention removes events. Whole segments below it are deleted.
//!
//! Only the log's writer thread appends ([`LogWriter`]); any task reads. Memory is
//! a position per event (4 bytes) and an id hash per event (16 bytes with
//! its offset), whatever the size of the events: the data stays in the
//! OS page cache.
//!
//! After a crash the last segment may end in a torn record, or in bytes
//! that were written but never acknowledged: opening keeps the longest
//! prefix of valid records and cuts the rest. Everything acknowledged was
//! `fdatasync`'d before its acknowledgement, so it is in that prefix.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    hash::{BuildHasherDefault, Hasher},
    io::Write as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use bytes::Bytes;

use super::{
    keys,
    zerofill::{self, ZeroFill},
};
use crate::{
    error::{Error, Result},
    model::{Offset, FIRST_OFFSET},
};

/// Bytes before each record.
const HEADER: usize = 16;
/// Bytes per record in an `.idx` file.
const IDX_ENTRY: usize = 12;
/// Most bytes one read of consecutive records asks for.
const READ_CHUNK: usize = 1 << 20;

/// The log, shared by the writer and every reader.
pub(super) struct EventLog {
    dir: PathBuf,
    segment_bytes: u64,
    index: RwLock<Index>,
    ids: Mutex<IdIndex>,
}

struct Index {
    /// Sorted by base; the last one is the one being appended to.
    segments: Vec<Segment>,
    /// The first offset in the log (retention moves it up).
    first: Offset,
}

struct Segment {
    base: Offset,
    file: Arc<File>,
    /// Where each record starts.
    positions: Vec<u32>,
    /// Bytes of complete records.
    len: u64,
}

impl Segment {
    fn next(&self) -> Offset {
        self.base + self.positions.len() as Offset
    }

    /// The id of the record at `offset` (in this segment).
    fn id_at(&self, offset: Offset) -> Result<String> {
        let (start, end) = self.span((offset - self.base) as usize);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        let record = check_frame(&Bytes::from(buf), offset)?;
        keys::decode_event_id(offset, &record)
    }

    /// Byte range of record `rel`.
    fn span(&self, rel: usize) -> (u64, u64) {
        let start = self.positions[rel] as u64;
        let end = self.positions.get(rel + 1).map_or(self.len, |&p| p as u64);
        (start, end)
    }
}

impl EventLog {
    /// Opens the log in `dir` (creating it), repairing a torn tail, and
    /// returns it with its only writer.
    pub(super) fn open(dir: &Path, segment_bytes: u64) -> Result<(Arc<Self>, LogWriter)> {
        std::fs::create_dir_all(dir)?;
        let first_on_file = read_start(dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name.strip_suffix(".log") {
                if let Ok(base) = base.parse::<Offset>() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let mut all_hashes = Vec::with_capacity(bases.len());
        let last = bases.len().saturating_sub(1);
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(dir, base, "log");
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if let Some(prev) = segments.last() {
                let prev: &Segment = prev;
                if prev.next() != base {
                    return Err(Error::Corrupt(format!(
                        "event log: segment {base} follows one that ends at {}",
                        prev.next()
                    )));
                }
            }
            let sealed = if i < last {
                read_idx(dir, base, &file)?
            } else {
                None
            };
            let (positions, hashes, len) = match sealed {
                Some(s) => s,
                None => {
                    let scanned = scan(&file, base)?;
                    let on_disk = file.metadata()?.len();
                    if scanned.2 < on_disk {
                        if zerofill::only_zeros(&file, scanned.2, on_disk)? {
                            // Zero-filled ahead of the writer: the active
                            // segment keeps them, a sealed one is cut to its
                            // records (a crash came before its sealing did).
                            if i < last {
                                file.set_len(scanned.2)?;
                                file.sync_all()?;
                            }
                        } else if i < last {
                            return Err(Error::Corrupt(format!(
                                "event log: segment {base} is damaged at byte {} of {on_disk}",
                                scanned.2
                            )));
                        } else {
                            // The unacknowledged or torn end of the last
                            // commit. Cut, not zeroed over: a later crash
                            // must not find a stale record where the next
                            // one was expected.
                            tracing::warn!(
                                segment = base,
                                kept = scanned.2,
                                cut = on_disk - scanned.2,
                                "event log: cut an incomplete tail left by a crash"
                            );
                            file.set_len(scanned.2)?;
                            file.sync_all()?;
                        }
                    }
                    scanned
                }
            };
            all_hashes.push(hashes);
            segments.push(Segment {
                base,
                file: Arc::new(file),
                positions,
                len,
            });
        }
        if segments.is_empty() {
            let base = first_on_file.unwrap_or(FIRST_OFFSET);
            segments.push(create_segment(dir, base)?);
        }
        let next = segments.last().map(Segment::next).unwrap_or(FIRST_OFFSET);
        let oldest = segments[0].base;
        let first = first_on_file.unwrap_or(oldest).clamp(oldest, next);
        // Sized once: growing would hold the old and the new table at once.
        let mut ids = IdIndex::with_capacity((next - first) as usize, first);
        for (seg, hashes) in segments.iter().zip(&all_hashes) {
            for (rel, &h) in hashes.iter().enumerate() {
                let offset = seg.base + rel as Offset;
                if offset >= first {
                    ids.insert_loaded(h, offset, |o| seg.id_at(o))?;
                }
            }
        }
        let mut active_hashes = all_hashes.pop().unwrap_or_default();
        drop(all_hashes);
        let seg = segments.last().expect("the log always has a segment");
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, seg.base, "log"))?;
        let (base, len) = (seg.base, seg.len);
        let zerofill = ZeroFill::start(file, len, segment_bytes)?;
        if active_hashes.len() != seg.positions.len() {
            active_hashes.clear(); // a new, empty segment
        }
        let log = Arc::new(Self {
            dir: dir.to_owned(),
            segment_bytes,
            index: RwLock::new(Index { segments, first }),
            ids: Mutex::new(ids),
        });
        let writer = LogWriter {
            log: log.clone(),
            zerofill,
            base,
            len,
            buf: Vec::with_capacity(1 << 20),
            positions: Vec::new(),
            hashes: active_hashes,
            pending_ids: Vec::new(),
            next,
            poisoned: None,
        };
        Ok((log, writer))
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The first offset in the log.
    pub(super) fn first(&self) -> Offset {
        self.index().first
    }

    /// One past the last record written (durable once the writer says so).
    pub(super) fn next(&self) -> Offset {
        self.index()
            .segments
            .last()
            .map_or(FIRST_OFFSET, Segment::next)
    }

    /// Bytes of the retained records. Removed events in the first segment
    /// stay on disk until the whole segment goes, but are not counted, so
    /// size-based retention does not remove more than it has to.
    pub(super) fn size(&self) -> u64 {
        let index = self.index();
        let first = index.first;
        index
            .segments
            .iter()
            .map(|s| {
                if first <= s.base {
                    s.len
                } else if first >= s.next() {
                    0
                } else {
                    s.len - s.positions[(first - s.base) as usize] as u64
                }
            })
            .sum()
    }

    /// Bytes of records in the last segment (its file may go on in zeros).
    #[cfg(test)]
    pub(super) fn records_in_last_segment(&self) -> u64 {
        self.index().segments.last().map_or(0, |s| s.len)
    }

    /// The record at `offset`, if it is in the log.
    pub(super) fn get(&self, offset: Offset) -> Result<Option<Bytes>> {
        let mut out = Vec::with_capacity(1);
        self.read(offset, 1, false, &mut out)?;
        Ok(out.pop().map(|(_, r)| r))
    }

    /// Appends up to `limit` records from `from` (or the first offset, if
    /// higher) on and below `until` to `out`, in order.
    pub(super) fn read_range(
        &self,
        mut from: Offset,
        until: Offset,
        limit: usize,
        out: &mut Vec<(Offset, Bytes)>,
    ) -> Result<()> {
        let goal = out.len() + limit;
        while out.len() < goal && from < until {
            let want = (goal - out.len()).min((until - from) as usize);
            let before = out.len();
            self.read(from, want, true, out)?;
            match out[before..].last() {
                Some((last, _)) => from = last + 1,
                None => break,
            }
        }
        Ok(())
    }

    /// Reads up to `limit` consecutive records from `from` within one
    /// segment and at most [`READ_CHUNK`] bytes (at least one record).
    /// Below the first offset: nothing, or from the first one if `clamp`.
    fn read(
        &self,
        mut from: Offset,
        limit: usize,
        clamp: bool,
        out: &mut Vec<(Offset, Bytes)>,
    ) -> Result<()> {
        let (file, base, spans) = {
            let index = self.index();
            if from < index.first {
                if !clamp {
                    return Ok(());
                }
                from = index.first;
            }
            let i = index.segments.partition_point(|s| s.base <= from);
            let Some(seg) = i.checked_sub(1).map(|i| &index.segments[i]) else {
                return Ok(());
            };
            let rel = (from - seg.base) as usize;
            if rel >= seg.positions.len() {
                return Ok(());
            }
            let start = seg.positions[rel] as u64;
            let mut spans = Vec::with_capacity(limit.min(seg.positions.len() - rel));
            for r in rel..seg.positions.len().min(rel + limit) {
                let span = seg.span(r);
                if !spans.is_empty() && span.1 - start > READ_CHUNK as u64 {
                    break;
                }
                spans.push(span);
            }
            (seg.file.clone(), seg.base, spans)
        };
        let start = spans[0].0;
        let end = spans[spans.len() - 1].1;
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start)?;
        let buf = Bytes::from(buf);
        let rel0 = from - base;
        for (n, (s, e)) in spans.into_iter().enumerate() {
            let offset = base + rel0 + n as Offset;
            let frame = buf.slice((s - start) as usize..(e - start) as usize);
            out.push((offset, check_frame(&frame, offset)?));
        }
        Ok(())
    }

    /// The offset of the event with this id, if it is in the log.
    pub(super) fn offset_of_id(&self, id: &str) -> Result<Option<Offset>> {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.lookup(id, |o| self.id_of(o))
    }

    fn id_of(&self, offset: Offset) -> Result<Option<String>> {
        match self.get(offset)? {
            Some(record) => Ok(Some(keys::decode_event_id(offset, &record)?)),
            None => Ok(None),
        }
    }
}

/// The writer's side of the log: buffers a commit's records, writes them
/// with one `write` and makes them durable with one `fdatasync`.
pub(super) struct LogWriter {
    log: Arc<EventLog>,
    /// The last segment's write handle, and zeros written ahead in it.
    zerofill: ZeroFill,
    base: Offset,
    /// Bytes of the last segment on disk (written).
    len: u64,
    /// Records of this commit, framed.
    buf: Vec<u8>,
    /// Their positions in the segment.
    positions: Vec<u32>,
    /// Id hashes of every record of the last segment, for its `.idx`.
    hashes: Vec<u64>,
    /// Id hashes of this commit, indexed once it is durable.
    pending_ids: Vec<(u64, Offset)>,
    next: Offset,
    /// Set when an fsync failed: what reached the disk is unknown, so
    /// nothing more is appended until a restart re-reads the log.
    poisoned: Option<String>,
}

impl LogWriter {
    /// The offset the next appended record gets.
    pub(super) fn next(&self) -> Offset {
        self.next
    }

    /// Checks `id` against the log (not against this commit's records: the
    /// caller tracks those).
    pub(super) fn offset_of_id(&self, id: &str) -> Result<Option<Offset>> {
        self.log.offset_of_id(id)
    }

    /// Adds a record given in parts (written one after the other) to this
    /// commit; returns its offset.
    pub(super) fn append_parts(&mut self, id: &str, parts: &[&[u8]]) -> Result<Offset> {
        if let Some(e) = &self.poisoned {
            return Err(Error::Io(std::io::Error::other(e.clone())));
        }
        let record_len: usize = parts.iter().map(|p| p.len()).sum();
        let frame = HEADER + record_len;
        let used = self.len + self.buf.len() as u64;
        if used > 0 && used + frame as u64 > self.log.segment_bytes {
            self.roll()?;
        }
        let offset = self.next;
        let position = self.len + self.buf.len() as u64;
        let position = u32::try_from(position)
            .map_err(|_| Error::Corrupt("event log: segment over 4 GiB".into()))?;
        let len = u32::try_from(record_len)
            .map_err(|_| Error::Corrupt("event log: record over 4 GiB".into()))?;
        let offset_bytes = offset.to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&offset_bytes);
        for p in parts {
            crc.update(p);
        }
        self.buf.reserve(frame);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&crc.finalize().to_le_bytes());
        self.buf.extend_from_slice(&offset_bytes);
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.positions.push(position);
        let h = id_hash(id);
        self.hashes.push(h);
        self.pending_ids.push((h, offset));
        self.next += 1;
        Ok(offset)
    }

    /// Writes and syncs this commit's records, then makes them readable.
    /// On error nothing of this commit is readable or indexed, and its
    /// offsets are given out again.
    pub(super) fn commit(&mut self) -> Result<()> {
        if let Some(e) = self.poisoned.clone() {
            self.discard();
            return Err(Error::Io(std::io::Error::other(e)));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut turn = self.zerofill.writing(self.len + self.buf.len() as u64);
        let written = turn.file().write_all_at(&self.buf, self.len);
        let synced = match written {
            Ok(()) => turn.file().sync_data(),
            Err(_) => Ok(()),
        };
        if let Err(e) = written {
            // Nothing was synced: cut back what reached the file, if any.
            if let Err(cut) = turn.cut(self.len) {
                self.poisoned = Some(format!("event log: cannot cut a failed write: {cut}"));
            }
            drop(turn);
            self.discard();
            return Err(e.into());
        }
        drop(turn);
        if let Err(e) = synced {
            self.discard();
            self.poisoned = Some(format!("event log: fdatasync failed: {e}"));
            return Err(e.into());
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        {
            let mut index = self.log.index_mut();
            let seg = index
                .segments
                .last_mut()
                .expect("the log always has a segment");
            seg.positions.append(&mut self.positions);
            seg.len = self.len;
        }
        let mut ids = self.log.ids.lock().unwrap_or_else(|p| p.into_inner());
        for (h, offset) in self.pending_ids.drain(..) {
            // The records are readable now, for the rare shared hash.
            ids.insert_loaded(h, offset, |o| {
                self.log
                    .id_of(o)?
                    .ok_or_else(|| Error::Corrupt(format!("event log: record {o} vanished")))
            })?;
        }
        Ok(())
    }

    /// Forgets this commit's records.
    fn discard(&mut self) {
        let n = self.positions.len();
        self.next -= n as Offset;
        self.hashes.truncate(self.hashes.len() - n);
        self.positions.clear();
        self.pending_ids.clear();
        self.buf.clear();
    }

    /// Makes what is buffered durable, seals the segment (cut to its
    /// records, its `.idx`) and starts the next one.
    fn roll(&mut self) -> Result<()> {
        // Records of this commit already buffered belong to the old segment.
        self.commit()?;
        let seg = create_segment(&self.log.dir, self.next)?;
        let file =
            OpenOptions::new()
                .write(true)
                .open(segment_path(&self.log.dir, self.next, "log"))?;
        let old = self.zerofill.switch(file);
        // From here on the new segment is the last one, whatever happens to
        // the old one's sealing: neither part of it is needed to read the
        // log right (opening cuts zeros after the records of a sealed
        // segment and rebuilds a missing `.idx`).
        let hashes = std::mem::take(&mut self.hashes);
        let sealed = old
            .set_len(self.len)
            .and_then(|()| old.sync_all())
            .map_err(Error::from)
            .and_then(|()| {
                // After the cut: the `.idx` takes the file's length for
                // the records'.
                let index = self.log.index();
                let seg = index.segments.last().expect("the log always has a segment");
                write_idx(&self.log.dir, seg.base, &seg.positions, &hashes)
            });
        if let Err(e) = sealed {
            tracing::warn!(
                segment = self.base,
                error = %e,
                "event log: cannot seal a segment; the next start reads it whole"
            );
        }
        self.base = self.next;
        self.len = 0;
        self.log.index_mut().segments.push(seg);
        tracing::debug!(base = self.base, "event log: new segment");
        Ok(())
    }

    /// Moves the first offset up to `first` (at most to the newest record,
    /// which stays), deletes whole segments below it and forgets their ids.
    /// Returns how many events were removed.
    pub(super) fn truncate(&mut self, first: Offset) -> Result<usize> {
        let newest = self.next.saturating_sub(1).max(FIRST_OFFSET);
        let old = self.log.first();
        let first = first.min(newest).max(old);
        if first == old {
            return Ok(0);
        }
        write_start_file(&self.log.dir, first)?;
        let doomed: Vec<Offset> = {
            let mut index = self.log.index_mut();
            index.first = first;
            let keep_from = index.segments[..index.segments.len() - 1]
                .iter()
                .take_while(|s| s.next() <= first)
                .count();
            index.segments.drain(..keep_from).map(|s| s.base).collect()
        };
        for base in &doomed {
            for ext in ["log", "idx"] {
                match std::fs::remove_file(segment_path(&self.log.dir, *base, ext)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !doomed.is_empty() {
            File::open(&self.log.dir)?.sync_all()?;
        }
        self.log
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_from(first);
        Ok((first - old) as usize)
    }
}

/// Checks a frame read at `offset` and returns its record.
fn check_frame(frame: &Bytes, offset: Offset) -> Result<Bytes> {
    let corrupt = |m: &str| Error::Corrupt(format!("event log: record {offset}: {m}"));
    if frame.len() < HEADER {
        return Err(corrupt("short"));
    }
    let len = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
    let stored = u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes"));
    if len != frame.len() - HEADER {
        return Err(corrupt("length mismatch"));
    }
    if stored != offset {
        return Err(corrupt(&format!("holds offset {stored}")));
    }
    if crc32fast::hash(&frame[8..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(frame.slice(HEADER..))
}

/// Reads a segment from the start: positions, id hashes and the length of
/// the longest prefix of valid records.
fn scan(file: &File, base: Offset) -> Result<(Vec<u32>, Vec<u64>, u64)> {
    let size = file.metadata()?.len();
    let mut positions = Vec::new();
    let mut hashes = Vec::new();
    let mut pos = 0u64;
    let mut header = [0u8; HEADER];
    let mut body = Vec::new();
    while pos + HEADER as u64 <= size {
        file.read_exact_at(&mut header, pos)?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let offset = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let end = pos + HEADER as u64 + len;
        if end > size || offset != base + positions.len() as Offset {
            break;
        }
        body.resize(len as usize, 0);
        file.read_exact_at(&mut body, pos + HEADER as u64)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&header[8..16]);
        h.update(&body);
        if h.finalize() != crc {
            break;
        }
        let Ok(id) = keys::decode_event_id(offset, &body) else {
            break;
        };
        positions.push(pos as u32);
        hashes.push(id_hash(&id));
        pos = end;
    }
    Ok((positions, hashes, pos))
}

type Positions = (Vec<u32>, Vec<u64>, u64);

/// A sealed segment's `.idx`, if present and consistent with the segment.
fn read_idx(dir: &Path, base: Offset, segment: &File) -> Result<Option<Positions>> {
    let Ok(bytes) = std::fs::read(segment_path(dir, base, "idx")) else {
        return Ok(None);
    };
    if bytes.len() < 12 || (bytes.len() - 12) % IDX_ENTRY != 0 {
        return Ok(None);
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 12);
    let count = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(trailer[8..].try_into().expect("4 bytes"));
    if count != body.len() / IDX_ENTRY || crc32fast::hash(body) != crc {
        return Ok(None);
    }
    let mut positions = Vec::with_capacity(count);
    let mut hashes = Vec::with_capacity(count);
    for e in body.chunks_exact(IDX_ENTRY) {
        positions.push(u32::from_le_bytes(e[..4].try_into().expect("4 bytes")));
        hashes.push(u64::from_le_bytes(e[4..].try_into().expect("8 bytes")));
    }
    let len = segment.metadata()?.len();
    if positions.last().is_some_and(|&p| p as u64 >= len) || positions.first() != Some(&0) {
        return Ok(None);
    }
    Ok(Some((positions, hashes, len)))
}

fn write_idx(dir: &Path, base: Offset, positions: &[u32], hashes: &[u64]) -> Result<()> {
    let mut body = Vec::with_capacity(positions.len() * IDX_ENTRY + 12);
    for (p, h) in positions.iter().zip(hashes) {
        body.extend_from_slice(&p.to_le_bytes());
        body.extend_from_slice(&h.to_le_bytes());
    }
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&(positions.len() as u64).to_le_bytes());
    body.extend_from_slice(&crc.to_le_bytes());
    // Not synced: a lost or torn `.idx` is detected and rebuilt.
    std::fs::write(segment_path(dir, base, "idx"), body)?;
    Ok(())
}

fn create_segment(dir: &Path, base: Offset) -> Result<Segment> {
    let path = segment_path(dir, base, "log");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(Segment {
        base,
        file: Arc::new(file),
        positions: Vec::new(),
        len: 0,
    })
}

fn segment_path(dir: &Path, base: Offset, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

fn read_start(dir: &Path) -> Result<Option<Offset>> {
    let bytes = match std::fs::read(dir.join("start")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if bytes.len() != 12
        || crc32fast::hash(&bytes[..8]) != u32::from_le_bytes(bytes[8..].try_into().expect("4"))
    {
        // Written with rename, so never torn; damaged means the disk lies.
        return Err(Error::Corrupt("event log: damaged start file".into()));
    }
    Ok(Some(u64::from_le_bytes(bytes[..8].try_into().expect("8"))))
}

pub(super) fn write_start_file(dir: &Path, first: Offset) -> Result<()> {
    let mut bytes = first.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let tmp = dir.join("start.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("start"))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// FNV-1a, 64 bits: stable across restarts (the `.idx` files keep it).
/// Collisions are harmless: every hit is checked against the stored id.
fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Spreads a key that is already a hash over the whole word (the hash
/// table uses the top bits too) with one multiplication.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = n as u64;
    }
}

/// The offset in `[first, first + 2^32)` whose low 32 bits are `low`.
fn widen(first: Offset, low: u32) -> Offset {
    let o = (first & !0xffff_ffff) | low as Offset;
    if o < first {
        o + (1 << 32)
    } else {
        o
    }
}

/// Event id → offset, for idempotent publishing, in 8 bytes an event (plus
/// the table's slack): 32 bits of the id's hash → the low 32 bits of the
/// offset. The full offset is the one with those bits in
/// `[first, first + 2^32)`, as the log never holds 2^32 events. Every hit is
/// checked against the stored id, so a shared hash only costs a read; the
/// rare second id of a hash is kept by name.
struct IdIndex {
    by_hash: HashMap<u32, u32, BuildHasherDefault<Spread>>,
    collided: HashMap<String, Offset>,
    first: Offset,
}

impl IdIndex {
    fn with_capacity(n: usize, first: Offset) -> Self {
        Self {
            by_hash: HashMap::with_capacity_and_hasher(n, Default::default()),
            collided: HashMap::new(),
            first,
        }
    }

    fn key(h: u64) -> u32 {
        (h ^ (h >> 32)) as u32
    }

    fn offset(&self, low: u32) -> Offset {
        widen(self.first, low)
    }

    fn lookup(
        &self,
        id: &str,
        id_of: impl Fn(Offset) -> Result<Option<String>>,
    ) -> Result<Option<Offset>> {
        self.lookup_hashed(id_hash(id), id, id_of)
    }

    fn lookup_hashed(
        &self,
        h: u64,
        id: &str,
        id_of: impl Fn(Offset) -> Result<Option<String>>,
    ) -> Result<Option<Offset>> {
        if let Some(&low) = self.by_hash.get(&Self::key(h)) {
            let o = self.offset(low);
            if id_of(o)?.as_deref() == Some(id) {
                return Ok(Some(o));
            }
        }
        Ok(self.collided.get(id).copied())
    }

    /// Indexes an id known not to be in the index, reading it only when its
    /// hash is taken.
    fn insert_loaded(
        &mut self,
        h: u64,
        offset: Offset,
        id_of: impl Fn(Offset) -> Result<String>,
    ) -> Result<()> {
        match self.by_hash.entry(Self::key(h)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(offset as u32);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(id_of(offset)?, offset);
            }
        }
        Ok(())
    }

    /// Forgets ids below `first`.
    fn retain_from(&mut self, first: Offset) {
        let old = self.first;
        self.by_hash.retain(|_, low| widen(old, *low) >= first);
        self.collided.retain(|_, o| *o >= first);
        self.first = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids whose hashes collide are told apart by reading the stored id,
    /// and offsets past 2^32 come back whole.
    #[test]
    fn the_id_index_tells_colliding_ids_apart() {
        let first = (1 << 32) - 5;
        let mut ids = IdIndex::with_capacity(4, first);
        let stored: HashMap<Offset, &str> =
            [(first, "a"), (first + 8, "b"), (first + 9, "c")].into();
        let id_of = |o: Offset| Ok(stored.get(&o).map(|s| s.to_string()));
        let name = |o| Ok(stored[&o].to_string());
        ids.insert_loaded(7, first, name).unwrap();
        ids.insert_loaded(7, first + 8, name).unwrap();
        ids.insert_loaded(id_hash("c"), first + 9, name).unwrap();
        assert_eq!(ids.lookup_hashed(7, "a", id_of).unwrap(), Some(first));
        assert_eq!(ids.lookup_hashed(7, "b", id_of).unwrap(), Some(first + 8));
        assert_eq!(ids.lookup_hashed(7, "z", id_of).unwrap(), None);
        assert_eq!(ids.lookup("c", id_of).unwrap(), Some((1 << 32) + 4));
        ids.retain_from(first + 1);
        assert_eq!(ids.lookup_hashed(7, "a", id_of).unwrap(), None);
        assert_eq!(ids.lookup_hashed(7, "b", id_of).unwrap(), Some(first + 8));
        assert_eq!(ids.lookup("c", id_of).unwrap(), Some(first + 9));
    }
}
