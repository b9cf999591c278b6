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
//! All file I/O goes through [`fs::Fs`], so tests inject faults. How each
//! file is read, checked, rebuilt and created is in `files.rs`; appending
//! in `append.rs`.

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

mod files;

pub(super) use files::write_start_file;
use files::{
    create_segment, open_segment, read_or_create_meta, read_start, remove_orphans, segment_path,
    write_idx,
};

pub(super) use append::LogWriter;
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
        self.base + self.positions.len() as u64
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
        offset: offset.get(),
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
            .filter_map(|n| n.strip_suffix(".log")?.parse().ok().map(Offset::new))
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
                    first_dropped = offset.get(),
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
                let offset = f.segment.base + rel as u64;
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
                seg.base + rel as u64,
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
                Some((last, _)) => from = *last + 1,

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
            let offset = from + n as u64;
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
