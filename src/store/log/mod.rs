//! The event log: append-only segment files, one `fdatasync` per commit.
//!
//! `<data>/events/` holds `<base>.log` segments (base offset, 20 digits),
//! their `<base>.idx` files, `start` and `meta`; [`format`] describes each
//! and how opening reads them. Only the log's writer thread appends
//! ([`LogWriter`]); any task reads. Memory is a position per event (4
//! bytes) and an id hash per event (about 8 bytes), whatever the size of
//! the events: the data stays in the OS page cache.
//!
//! Recovery policy, at open:
//! - a torn tail (an incomplete or invalid end of the last segment that
//!   no later commit follows, or zeros) is cut: it was never acknowledged;
//! - damage inside acknowledged records (an invalid frame that a later
//!   commit follows, or any invalid frame in a sealed segment) stops the
//!   open with an error naming the file, the byte and the record, unless
//!   [`Recovery::Truncate`] is set: then the log is cut at the damage,
//!   later segments are removed, and what was dropped is logged;
//! - a sealed segment's `.idx` is a shortcut: a missing, damaged or stale
//!   one is rebuilt from the segment;
//! - a `<base>.redacting` file is a redaction a crash interrupted before
//!   its rename: its segment is untouched, and the file is removed
//!   ([`redact`] rewrites sealed segments to replace chosen records).
//!
//! All file I/O goes through [`fs::Fs`], so tests inject faults.

mod append;
mod format;
pub(crate) mod fs;
mod ids;
mod redact;
mod zerofill;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use bytes::Bytes;

pub(super) use append::LogWriter;
use format::{Kind, Tail, FILE_HEADER};
use fs::{Fs, FsFile};
use ids::{IdHasher, IdIndex};

use super::keys;
use crate::{
    error::{Error, Result},
    model::{Offset, FIRST_OFFSET},
};

/// Bytes per record in an `.idx` file.
const IDX_ENTRY: usize = 12;
/// Most bytes one read of consecutive records asks for.
const READ_CHUNK: usize = 1 << 20;

/// What opening does with damage inside acknowledged records (the
/// `recovery` config key, so it is defined with the config).
pub use crate::config::Recovery;

/// How the log is opened.
#[derive(Clone)]
pub(crate) struct LogOptions {
    /// Size at which a new segment starts (a commit may overshoot it: a
    /// batch never spans two segments).
    pub(crate) segment_bytes: u64,
    pub(crate) recovery: Recovery,
    /// Zero the active segment ahead of the writer ([`zerofill`]).
    pub(crate) zero_fill: bool,
    pub(crate) fs: Arc<dyn Fs>,
}

/// The log, shared by the writer and every reader.
pub(super) struct EventLog {
    dir: PathBuf,
    options: LogOptions,
    hasher: IdHasher,
    index: RwLock<Index>,
    ids: Mutex<IdIndex>,
    /// Held by a redaction ([`redact`]): one at a time.
    redacting: Mutex<()>,
}

struct Index {
    /// Sorted by base; the last one is the one being appended to.
    segments: Vec<Segment>,
    /// The first offset in the log (retention moves it up).
    first: Offset,
}

struct Segment {
    base: Offset,
    file: Arc<dyn FsFile>,
    /// Where the first frame starts (after the file header, if any).
    start: u64,
    /// Where each record starts.
    positions: Vec<u32>,
    /// Bytes up to the end of the last complete record.
    len: u64,
}

impl Segment {
    fn next(&self) -> Offset {
        self.base + self.positions.len() as Offset
    }

    /// Byte range of record `rel`.
    fn span(&self, rel: usize) -> (u64, u64) {
        let start = self.positions[rel] as u64;
        let end = self.positions.get(rel + 1).map_or(self.len, |&p| p as u64);
        (start, end)
    }

    /// The record at `offset` (in this segment), checked.
    fn record(&self, dir: &Path, offset: Offset) -> Result<Bytes> {
        let (start, end) = self.span((offset - self.base) as usize);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        check(dir, self.base, start, &Bytes::from(buf), offset)
    }
}

/// [`format::check_frame`], with a damaged frame reported as
/// [`Error::Damaged`] naming its file and byte.
fn check(dir: &Path, base: Offset, at: u64, frame: &Bytes, offset: Offset) -> Result<Bytes> {
    format::check_frame(frame, offset).map_err(|e| Error::Damaged {
        offset,
        detail: format!(
            "{e} ({} byte {at})",
            segment_path(dir, base, "log").display()
        ),
    })
}

/// One segment as opening found it.
struct Found {
    segment: Segment,
    /// Id hashes of its records.
    hashes: Vec<u64>,
    /// Ids of its records, when it was scanned (not loaded from `.idx`).
    ids: Option<Vec<String>>,
}

impl EventLog {
    /// Opens the log in `dir` (creating it), applying the recovery policy,
    /// and returns it with its only writer.
    pub(super) fn open(dir: &Path, options: LogOptions) -> Result<(Arc<Self>, LogWriter)> {
        let fs = options.fs.clone();
        fs.create_dir_all(dir)?;
        // A redaction interrupted by a crash: its segment is untouched.
        for name in fs.list(dir)? {
            if name.ends_with(&format!(".{}", redact::REDACTING)) {
                fs.remove(&dir.join(name))?;
            }
        }
        let hasher = read_or_create_meta(&*fs, dir)?;
        let first_on_file = read_start(&*fs, dir)?;
        let mut bases: Vec<Offset> = fs
            .list(dir)?
            .iter()
            .filter_map(|n| n.strip_suffix(".log")?.parse().ok())
            .collect();
        bases.sort_unstable();
        remove_orphans(&*fs, dir, &mut bases)?;
        let mut found: Vec<Found> = Vec::with_capacity(bases.len().max(1));
        let last = bases.len().saturating_sub(1);
        for (i, &base) in bases.iter().enumerate() {
            if let Some(prev) = found.last() {
                if prev.segment.next() != base {
                    return Err(Error::Corrupt(format!(
                        "event log: {} follows a segment that ends at offset {}",
                        segment_path(dir, base, "log").display(),
                        prev.segment.next()
                    )));
                }
            }
            let (segment, damaged) = open_segment(&*fs, dir, base, i == last, &hasher)?;
            found.push(segment);
            if let Some((at, offset)) = damaged {
                let path = segment_path(dir, base, "log");
                if options.recovery == Recovery::Refuse {
                    return Err(Error::Corrupt(format!(
                        "event log: {}: record {offset} at byte {at} is damaged and acknowledged \
                         records follow it; refusing to open. Restore the data directory from a \
                         backup, or set recovery = \"truncate\" to drop record {offset} and every \
                         later one",
                        path.display()
                    )));
                }
                let seg = &found.last().expect("just pushed").segment;
                seg.file.set_len(at)?;
                seg.file.sync_data()?;
                for &later in &bases[i + 1..] {
                    for ext in ["log", "idx"] {
                        fs.remove(&segment_path(dir, later, ext))?;
                    }
                }
                fs.remove(&segment_path(dir, base, "idx"))?;
                fs.sync_dir(dir)?;
                tracing::error!(
                    file = %path.display(),
                    byte = at,
                    first_dropped = offset,
                    segments_removed = bases.len() - i - 1,
                    "event log: recovery = \"truncate\": cut the log at damaged record {offset}; \
                     it and every later record are gone"
                );
                break;
            }
        }
        if found.is_empty() {
            let base = first_on_file.unwrap_or(FIRST_OFFSET);
            found.push(Found {
                segment: create_segment(&*fs, dir, base)?,
                hashes: Vec::new(),
                ids: Some(Vec::new()),
            });
        }
        // What was read is what the log now acts on, so it must not vanish
        // in a later crash: a file or name written but never synced (a
        // process killed before its fsync, a failed directory sync) is
        // made durable before anything is served from it.
        for f in found.iter().filter(|f| f.ids.is_some()) {
            f.segment.file.sync_data()?;
        }
        if first_on_file.is_some() {
            fs.open(&dir.join("start"), false)?.sync_data()?;
        }
        fs.sync_dir(dir)?;
        let next = found.last().map_or(FIRST_OFFSET, |f| f.segment.next());
        let oldest = found[0].segment.base;
        let first = first_on_file.unwrap_or(oldest).clamp(oldest, next);
        // Sized once: growing would hold the old and the new table at once.
        let mut ids = IdIndex::with_capacity((next - first) as usize, first);
        for f in &found {
            for (rel, &h) in f.hashes.iter().enumerate() {
                let offset = f.segment.base + rel as Offset;
                if offset >= first {
                    ids.insert(h, offset, |o| match &f.ids {
                        Some(names) => Ok(names[rel].clone()),
                        None => keys::decode_event_id(o, &f.segment.record(dir, o)?),
                    })?;
                }
            }
        }
        let active = found.pop().expect("the log always has a segment");
        let segments: Vec<Segment> = found
            .into_iter()
            .map(|f| f.segment)
            .chain(std::iter::once(active.segment))
            .collect();
        let seg = segments.last().expect("the log always has a segment");
        let (file, base, start, len) = (seg.file.clone(), seg.base, seg.start, seg.len);
        let log = Arc::new(Self {
            dir: dir.to_owned(),
            hasher,
            index: RwLock::new(Index { segments, first }),
            ids: Mutex::new(ids),
            redacting: Mutex::new(()),
            options,
        });
        let writer = LogWriter::new(log.clone(), file, base, start, len, active.hashes, next)?;
        Ok((log, writer))
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn fs(&self) -> &dyn Fs {
        &*self.options.fs
    }

    /// The first offset in the log.
    pub(super) fn first(&self) -> Offset {
        self.index().first
    }

    /// One past the last durable record.
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
                    s.len - s.start
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
        out.pop().map(|(_, r)| r).transpose()
    }

    /// The newest record written, even if retention removed it (its
    /// publish time still bounds the next one's from below).
    pub(super) fn newest(&self) -> Result<Option<Bytes>> {
        let (file, base, offset, span) = {
            let index = self.index();
            let Some(seg) = index
                .segments
                .iter()
                .rev()
                .find(|s| !s.positions.is_empty())
            else {
                return Ok(None);
            };
            let rel = seg.positions.len() - 1;
            (
                seg.file.clone(),
                seg.base,
                seg.base + rel as Offset,
                seg.span(rel),
            )
        };
        let mut buf = vec![0u8; (span.1 - span.0) as usize];
        file.read_exact_at(&mut buf, span.0)?;
        check(&self.dir, base, span.0, &Bytes::from(buf), offset).map(Some)
    }

    /// Appends up to `limit` records from `from` (or the first offset, if
    /// higher) on and below `until` to `out`, in order. A damaged record is
    /// an error in its place; the healthy records around it read as usual.
    pub(super) fn read_range(
        &self,
        mut from: Offset,
        until: Offset,
        limit: usize,
        out: &mut Vec<(Offset, Result<Bytes>)>,
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
        out: &mut Vec<(Offset, Result<Bytes>)>,
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
        for (n, (s, e)) in spans.into_iter().enumerate() {
            let offset = from + n as Offset;
            let frame = buf.slice((s - start) as usize..(e - start) as usize);
            out.push((offset, check(&self.dir, base, s, &frame, offset)));
        }
        Ok(())
    }

    /// Reads every record of the sealed segments (opening read only their
    /// `.idx`) and returns the damaged ones: offset and what is wrong, with
    /// the file and byte.
    pub(super) fn scrub(&self) -> Result<Vec<(Offset, String)>> {
        let (first, end) = {
            let index = self.index();
            let last = index.segments.last().expect("the log always has a segment");
            (index.first, last.base)
        };
        let mut damaged = Vec::new();
        let mut from = first;
        let mut out = Vec::new();
        while from < end {
            out.clear();
            self.read_range(from, end, 4096, &mut out)?;
            let Some(&(last, _)) = out.last() else { break };
            for (offset, record) in out.drain(..) {
                if let Err(e) = record {
                    damaged.push((offset, e.to_string()));
                }
            }
            from = last + 1;
        }
        Ok(damaged)
    }

    /// The offset of the event with this id, if it is in the log. The
    /// candidate is read outside the index's lock.
    pub(super) fn offset_of_id(&self, id: &str) -> Result<Option<Offset>> {
        let found = self
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lookup(self.hasher.hash(id), id);
        if let Some(o) = found.candidate {
            if self.id_of(o)?.as_deref() == Some(id) {
                return Ok(Some(o));
            }
        }
        Ok(found.named)
    }

    fn id_of(&self, offset: Offset) -> Result<Option<String>> {
        match self.get(offset)? {
            Some(record) => Ok(Some(keys::decode_event_id(offset, &record)?)),
            None => Ok(None),
        }
    }
}

/// Removes segments without records that later segments follow: files a
/// failed roll created (a segment is rolled only once it has records, so
/// no other such file can exist).
fn remove_orphans(fs: &dyn Fs, dir: &Path, bases: &mut Vec<Offset>) -> Result<()> {
    let mut removed = false;
    let mut i = 0;
    while i + 1 < bases.len() {
        let path = segment_path(dir, bases[i], "log");
        if fs.open(&path, false)?.len()? <= FILE_HEADER as u64 {
            tracing::warn!(file = %path.display(), "event log: removed an empty segment left by a failed roll");
            fs.remove(&path)?;
            fs.remove(&segment_path(dir, bases[i], "idx"))?;
            bases.remove(i);
            removed = true;
        } else {
            i += 1;
        }
    }
    if removed {
        fs.sync_dir(dir)?;
    }
    Ok(())
}

/// Opens segment `base`: from its `.idx` if it is sealed and the `.idx`
/// is good, else by scanning it. Cuts a torn tail or a sealed segment's
/// zeros; returns the byte and offset of damage, if any (not cut here).
fn open_segment(
    fs: &dyn Fs,
    dir: &Path,
    base: Offset,
    is_last: bool,
    hasher: &IdHasher,
) -> Result<(Found, Option<(u64, Offset)>)> {
    let path = segment_path(dir, base, "log");
    let file = fs.open(&path, false)?;
    let size = file.len()?;
    let mut head = vec![0u8; (size as usize).min(FILE_HEADER)];
    file.read_exact_at(&mut head, 0)?;
    let start = if size < FILE_HEADER as u64
        && (size == 0 || format::file_header(Kind::Segment).starts_with(&head))
    {
        // Created, but its header never made it: empty.
        if !is_last {
            return Err(Error::Corrupt(format!(
                "event log: {} is empty but later segments exist",
                path.display()
            )));
        }
        file.set_len(0)?;
        file.write_all_at(&format::file_header(Kind::Segment), 0)?;
        file.sync_data()?;
        FILE_HEADER as u64
    } else if format::has_header(&head, Kind::Segment, &path)? {
        FILE_HEADER as u64
    } else {
        0 // version 0: frames from the first byte
    };
    if !is_last {
        if let Some((positions, hashes)) = read_idx(fs, dir, base, start, size, hasher)? {
            let segment = Segment {
                base,
                file,
                start,
                positions,
                len: size,
            };
            return Ok((
                Found {
                    segment,
                    hashes,
                    ids: None,
                },
                None,
            ));
        }
    }
    let scanned = format::scan(&*file, base, start)?;
    let damaged = match scanned.tail {
        Tail::Clean => None,
        // Zero-filled ahead of the writer: the active segment keeps them,
        // a sealed one is cut to its records (a crash came before its
        // sealing did).
        Tail::Zeros => {
            if !is_last {
                file.set_len(scanned.len)?;
                file.sync_data()?;
            }
            None
        }
        // Every commit of a sealed segment was acknowledged before the
        // next segment was created: an invalid end there is damage.
        Tail::Torn if !is_last => Some((scanned.len, base + scanned.positions.len() as Offset)),
        Tail::Torn => {
            // The unacknowledged or torn end of the last commit. Cut, not
            // zeroed over: a later crash must not find a stale record where
            // the next one was expected.
            tracing::warn!(
                file = %path.display(),
                kept = scanned.len,
                cut = size - scanned.len,
                "event log: cut an incomplete tail left by a crash"
            );
            file.set_len(scanned.len)?;
            file.sync_data()?;
            None
        }
        Tail::Damaged { at, offset } => Some((at, offset)),
    };
    let hashes = scanned.ids.iter().map(|id| hasher.hash(id)).collect();
    let segment = Segment {
        base,
        file,
        start,
        positions: scanned.positions,
        len: scanned.len,
    };
    Ok((
        Found {
            segment,
            hashes,
            ids: Some(scanned.ids),
        },
        damaged,
    ))
}

/// The id-hash key from `meta`, made (and written durably) if the log has
/// none yet. A log from before version 1 has none; its `.idx` files are
/// rebuilt with the new key.
fn read_or_create_meta(fs: &dyn Fs, dir: &Path) -> Result<IdHasher> {
    let path = dir.join("meta");
    if let Some(bytes) = fs::read_file(fs, &path)? {
        let body = format::open_sealed(&bytes, Kind::Meta, &path)?
            .filter(|b| b.len() == 16)
            .ok_or_else(|| Error::Corrupt(format!("event log: {}: damaged", path.display())))?;
        return Ok(IdHasher::new(body.try_into().expect("16 bytes")));
    }
    let hasher = IdHasher::random();
    fs::replace_file(fs, &path, &format::sealed_file(Kind::Meta, &hasher.key()))?;
    Ok(hasher)
}

/// A sealed segment's `.idx`, if present, of this version and key, and
/// consistent with the segment: its positions and id hashes.
type Loaded = (Vec<u32>, Vec<u64>);

fn read_idx(
    fs: &dyn Fs,
    dir: &Path,
    base: Offset,
    start: u64,
    size: u64,
    hasher: &IdHasher,
) -> Result<Option<Loaded>> {
    let path = segment_path(dir, base, "idx");
    let Some(bytes) = fs::read_file(fs, &path)? else {
        return Ok(None);
    };
    // Not synced when written: a torn or stale one is rebuilt.
    let Ok(Some(body)) = format::open_sealed(&bytes, Kind::Index, &path) else {
        if format::has_header(&bytes, Kind::Index, &path).is_err() {
            tracing::info!(file = %path.display(), "event log: rebuilding an unreadable .idx");
        }
        return Ok(None);
    };
    if body.len() < 16 || (body.len() - 16) % IDX_ENTRY != 0 {
        return Ok(None);
    }
    let key = format::u64_at(body, 0);
    let count = format::u64_at(body, body.len() - 8) as usize;
    let entries = &body[8..body.len() - 8];
    if key != hasher.fingerprint() || count != entries.len() / IDX_ENTRY {
        return Ok(None);
    }
    let mut positions = Vec::with_capacity(count);
    let mut hashes = Vec::with_capacity(count);
    for e in entries.chunks_exact(IDX_ENTRY) {
        positions.push(format::u32_at(e, 0));
        hashes.push(format::u64_at(e, 4));
    }
    let fits = positions.first().is_none_or(|&p| p as u64 == start)
        && positions.last().is_none_or(|&p| (p as u64) < size)
        && !positions.is_empty();
    Ok(fits.then_some((positions, hashes)))
}

fn write_idx(
    fs: &dyn Fs,
    dir: &Path,
    base: Offset,
    positions: &[u32],
    hashes: &[u64],
    hasher: &IdHasher,
) -> Result<()> {
    let mut body = Vec::with_capacity(positions.len() * IDX_ENTRY + 16);
    body.extend_from_slice(&hasher.fingerprint().to_le_bytes());
    for (p, h) in positions.iter().zip(hashes) {
        body.extend_from_slice(&p.to_le_bytes());
        body.extend_from_slice(&h.to_le_bytes());
    }
    body.extend_from_slice(&(positions.len() as u64).to_le_bytes());
    // Not synced: a lost or torn `.idx` is detected and rebuilt.
    let file = fs.open(&segment_path(dir, base, "idx"), true)?;
    file.set_len(0)?;
    file.write_all_at(&format::sealed_file(Kind::Index, &body), 0)?;
    Ok(())
}

/// A new, empty segment with its header, durable with its name. If that
/// fails the file is removed again (best effort; opening removes what is
/// left, see [`remove_orphans`]).
fn create_segment(fs: &dyn Fs, dir: &Path, base: Offset) -> Result<Segment> {
    let path = segment_path(dir, base, "log");
    let file = fs.open(&path, true)?;
    let created = file
        .set_len(0)
        .and_then(|()| file.write_all_at(&format::file_header(Kind::Segment), 0))
        .and_then(|()| file.sync_data())
        .and_then(|()| fs.sync_dir(dir));
    if let Err(e) = created {
        let _ = fs.remove(&path);
        return Err(e.into());
    }
    Ok(Segment {
        base,
        file,
        start: FILE_HEADER as u64,
        positions: Vec::new(),
        len: FILE_HEADER as u64,
    })
}

fn segment_path(dir: &Path, base: Offset, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// The first offset on record, if any (`start`, version 0 or 1).
fn read_start(fs: &dyn Fs, dir: &Path) -> Result<Option<Offset>> {
    let path = dir.join("start");
    let Some(bytes) = fs::read_file(fs, &path)? else {
        return Ok(None);
    };
    // Written with rename, so never torn; damaged means the disk lies.
    let damaged = || Error::Corrupt(format!("event log: {}: damaged", path.display()));
    let body = match format::open_sealed(&bytes, Kind::Start, &path)? {
        Some(body) if body.len() == 8 => body,
        Some(_) => return Err(damaged()),
        // Version 0: the offset and its CRC.
        None if bytes.len() == 12 && crc32fast::hash(&bytes[..8]) == format::u32_at(&bytes, 8) => {
            &bytes[..8]
        }
        None => return Err(damaged()),
    };
    Ok(Some(format::u64_at(body, 0)))
}

pub(super) fn write_start_file(fs: &dyn Fs, dir: &Path, first: Offset) -> Result<()> {
    let bytes = format::sealed_file(Kind::Start, &first.to_le_bytes());
    Ok(fs::replace_file(fs, &dir.join("start"), &bytes)?)
}
