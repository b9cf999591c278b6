//! Redaction: chosen records of sealed segments replaced, at the same
//! offsets, while the log keeps serving (tenant erasure, per-tenant
//! retention).
//!
//! The log is append-only, so a record is replaced by rewriting its whole
//! segment: every frame is copied to `<base>.redacting` (valid frames with
//! their offsets and commit marks; the replaced ones reframed around
//! their new record), which is synced, then renamed over `<base>.log`.
//! Only sealed segments are rewritten: the writer seals the active one
//! first ([`super::LogWriter::seal_below`]), so appends never wait for a
//! redaction and are never reordered by one.
//!
//! Crash safety, step by step:
//! - while `<base>.redacting` is written, `<base>.log` is untouched;
//!   opening removes a leftover `.redacting` file;
//! - the old `.idx` (positions of the old file) is removed, durably,
//!   before the rename: a stale one that happened to fit the new file
//!   would misplace every record; a missing one is rebuilt at open;
//! - the rename swaps complete, synced files: a crash before the
//!   directory is synced finds the old segment or the new one, never a
//!   mix; the directory sync then makes the new one stay;
//! - the new `.idx` is written last and not synced, like every `.idx`.
//!
//! Readers: the segment's file handle, positions and length are swapped
//! together under the index lock, and the rename happens under it too.
//! A reader that took the old handle before reads the old file (its
//! inode lives while the handle does) with the old positions, so it sees
//! a consistent old record; later reads see the new one. Truncation drops
//! a segment from the index before deleting its files, so a rename under
//! the lock never brings back a deleted segment.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    check,
    format::{self, Kind},
    fs::FsFile,
    segment_path, write_idx, EventLog, Segment, READ_CHUNK,
};
use crate::{
    error::{Error, Result},
    model::Offset,
    store::keys,
};

/// Extension of a segment being rewritten; opening removes any it finds.
pub(super) const REDACTING: &str = "redacting";

/// What becomes of a record at an offset: `Some` replacement, or `None`
/// to keep it.
pub(in crate::store) type Replace<'a> = dyn FnMut(Offset, &[u8]) -> Result<Option<Vec<u8>>> + 'a;

/// What a rewrite produced: the new file (already named `.redacting`),
/// its record positions, the records' id hashes and its length.
struct Rewritten {
    file: Arc<dyn FsFile>,
    positions: Vec<u32>,
    hashes: Vec<u64>,
    len: u64,
}

impl EventLog {
    /// Replaces the records at `offsets` (ascending) with what `replace`
    /// makes of each (`None`: keep it), rewriting each sealed segment that
    /// holds one. Offsets in the active segment, or no longer in the log,
    /// are left alone. Returns the offsets replaced. One redaction runs at
    /// a time; appends and reads go on meanwhile.
    pub(in crate::store) fn redact(
        &self,
        offsets: &[Offset],
        replace: &mut Replace<'_>,
    ) -> Result<Vec<Offset>> {
        let _one = self.redacting.lock().unwrap_or_else(|p| p.into_inner());
        let mut replaced = Vec::new();
        let mut rest = offsets;
        while let Some(&first) = rest.first() {
            let Some(seg) = self.sealed_segment_of(first) else {
                rest = &rest[1..];
                continue;
            };
            let n = rest.partition_point(|&o| o < seg.next());
            let (here, later) = rest.split_at(n);
            replaced.extend(self.redact_segment(&seg, here, replace)?);
            rest = later;
        }
        // Even when nothing changed: a previous call that failed at its
        // directory sync left a rename that may not be durable, and the
        // caller retrying must not be told the records are gone before it is.
        self.fs().sync_dir(&self.dir)?;
        Ok(replaced)
    }

    /// A copy of the sealed segment holding `offset`, if any (not the
    /// active one; not below the first offset).
    fn sealed_segment_of(&self, offset: Offset) -> Option<Segment> {
        let index = self.index();
        if offset < index.first {
            return None;
        }
        let sealed = &index.segments[..index.segments.len() - 1];
        let i = sealed.partition_point(|s| s.base <= offset);
        let seg = &sealed[i.checked_sub(1)?];
        (offset < seg.next()).then(|| Segment {
            base: seg.base,
            file: seg.file.clone(),
            start: seg.start,
            positions: seg.positions.clone(),
            len: seg.len,
        })
    }

    /// Rewrites `seg` with the records at `offsets` replaced; see the
    /// module comment for the order of the steps.
    fn redact_segment(
        &self,
        seg: &Segment,
        offsets: &[Offset],
        replace: &mut Replace<'_>,
    ) -> Result<Vec<Offset>> {
        let mut new_records = Vec::new();
        for &offset in offsets {
            let record = seg.record(&self.dir, offset)?;
            if let Some(new) = replace(offset, &record)? {
                if new.len() > format::MAX_RECORD {
                    return Err(Error::Capacity(format!(
                        "event log: a replacement of record {offset} is too large"
                    )));
                }
                new_records.push(((offset - seg.base) as usize, new));
            }
        }
        if new_records.is_empty() {
            return Ok(Vec::new());
        }
        let fs = self.fs();
        let tmp_path = segment_path(&self.dir, seg.base, REDACTING);
        let new = match self.rewrite(seg, &new_records, &tmp_path) {
            Ok(new) => new,
            Err(e) => {
                let _ = fs.remove(&tmp_path);
                return Err(e);
            }
        };
        let idx = segment_path(&self.dir, seg.base, "idx");
        if let Err(e) = fs.remove(&idx).and_then(|()| fs.sync_dir(&self.dir)) {
            let _ = fs.remove(&tmp_path);
            return Err(e.into());
        }
        {
            let mut index = self.index_mut();
            let Some(current) = index
                .segments
                .iter_mut()
                .find(|s| s.base == seg.base && Arc::ptr_eq(&s.file, &seg.file))
            else {
                // Retention deleted it meanwhile: nothing left to redact.
                drop(index);
                let _ = fs.remove(&tmp_path);
                return Ok(Vec::new());
            };
            if let Err(e) = fs.rename(&tmp_path, &segment_path(&self.dir, seg.base, "log")) {
                drop(index);
                let _ = fs.remove(&tmp_path);
                return Err(e.into());
            }
            current.file = new.file;
            current.positions = new.positions.clone();
            current.len = new.len;
        }
        fs.sync_dir(&self.dir)?;
        if let Err(e) = write_idx(
            fs,
            &self.dir,
            seg.base,
            &new.positions,
            &new.hashes,
            &self.hasher,
        ) {
            tracing::warn!(segment = seg.base.get(), error = %e, "event log: cannot write the .idx of a redacted segment; the next start rebuilds it");
        }
        tracing::info!(
            segment = seg.base.get(),
            records = new_records.len(),
            "event log: redacted records"
        );
        Ok(new_records
            .iter()
            .map(|(rel, _)| seg.base + *rel as u64)
            .collect())
    }

    /// Writes `seg` with `new_records` (relative index, record; ascending)
    /// in place of the old ones to a synced file at `path`.
    fn rewrite(
        &self,
        seg: &Segment,
        new_records: &[(usize, Vec<u8>)],
        path: &std::path::Path,
    ) -> Result<Rewritten> {
        let file = self.fs().open(path, true)?;
        file.set_len(0)?;
        let n = seg.positions.len();
        let mut out = Vec::with_capacity(READ_CHUNK * 2);
        out.extend_from_slice(&format::file_header(Kind::Segment));
        let mut flushed = 0u64;
        let mut positions = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        let mut replaced = new_records.iter().peekable();
        let mut rel = 0;
        while rel < n {
            // Consecutive frames, at most READ_CHUNK bytes (at least one).
            let start = seg.span(rel).0;
            let mut end_rel = rel + 1;
            while end_rel < n && seg.span(end_rel).1 - start <= READ_CHUNK as u64 {
                end_rel += 1;
            }
            let end = seg.span(end_rel - 1).1;
            let mut buf = vec![0u8; (end - start) as usize];
            seg.file.read_exact_at(&mut buf, start)?;
            let buf = Bytes::from(buf);
            for r in rel..end_rel {
                let (s, e) = seg.span(r);
                let offset = seg.base + r as u64;
                let frame = buf.slice((s - start) as usize..(e - start) as usize);
                let record = check(&self.dir, seg.base, s, &frame, offset)?;
                let position = u32::try_from(flushed + out.len() as u64).map_err(|_| {
                    Error::Capacity("event log: a redacted segment outgrew 4 GiB".into())
                })?;
                positions.push(position);
                hashes.push(self.hasher.hash(&keys::decode_event_id(offset, &record)?));
                match replaced.next_if(|(x, _)| *x == r) {
                    Some((_, new)) => {
                        format::push_frame(&mut out, offset, &[new], format::starts_commit(&frame))
                    }
                    None => out.extend_from_slice(&frame),
                }
                if out.len() >= READ_CHUNK {
                    file.write_all_at(&out, flushed)?;
                    flushed += out.len() as u64;
                    out.clear();
                }
            }
            rel = end_rel;
        }
        file.write_all_at(&out, flushed)?;
        let len = flushed + out.len() as u64;
        file.sync_data()?;
        Ok(Rewritten {
            file,
            positions,
            hashes,
            len,
        })
    }
}
