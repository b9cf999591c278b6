//! The writer's side of the log.
//!
//! Invariants every path keeps, errors included:
//! - what readers see (the index) and the head the store publishes never
//!   go past what is durable: records are indexed only after their commit's
//!   `fdatasync` returned;
//! - a failed write is cut back off the file and its records forgotten, so
//!   their offsets are given out again and they never turn up later;
//! - a failed `fdatasync` poisons the writer: the kernel may have dropped
//!   the dirty pages, so nothing more is appended until a restart re-reads
//!   the log (the unsynced bytes are cut first, best effort);
//! - a segment is rolled only between commits ([`LogWriter::needs_roll`]),
//!   so a batch never spans two segments, and one that does not fit
//!   overshoots the segment size instead.

use std::sync::Arc;

use super::{
    super::keys,
    create_segment,
    format::{self, FRAME_HEADER},
    fs::FsFile,
    segment_path, write_idx,
    zerofill::ZeroFill,
    EventLog,
};
use crate::{
    error::{Error, Result},
    model::Offset,
};

/// Buffers a commit's records, writes them with one `write` and makes them
/// durable with one `fdatasync`.
pub(in crate::store) struct LogWriter {
    log: Arc<EventLog>,
    /// The active segment.
    file: Arc<dyn FsFile>,
    /// Zeros written ahead in it, if that is on.
    zerofill: Option<ZeroFill>,
    base: Offset,
    /// Bytes of the active segment that hold its header and durable records.
    len: u64,
    /// Records of this commit, framed.
    buf: Vec<u8>,
    /// Their positions in the segment.
    positions: Vec<u32>,
    /// Id hashes of every record of the active segment, for its `.idx`.
    hashes: Vec<u64>,
    /// Id hashes of this commit, indexed once it is durable.
    pending_ids: Vec<(u64, Offset)>,
    next: Offset,
    /// Set when an fsync failed; see the module comment.
    poisoned: Option<String>,
    /// How the last commit's time went, for the stall log.
    pub(in crate::store) timings: CommitTimings,
}

/// How one commit's time went (for the stall log).
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::store) struct CommitTimings {
    /// Waiting for the zero-filler to finish its chunk.
    pub(in crate::store) zero_fill_wait: std::time::Duration,
    /// The `fdatasync`.
    pub(in crate::store) sync: std::time::Duration,
}

/// Where the buffered commit stood; [`LogWriter::rewind`] goes back to it.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) struct Mark {
    next: Offset,
    buf: usize,
    positions: usize,
    hashes: usize,
    pending: usize,
}

impl LogWriter {
    pub(super) fn new(
        log: Arc<EventLog>,
        file: Arc<dyn FsFile>,
        base: Offset,
        start: u64,
        len: u64,
        hashes: Vec<u64>,
        next: Offset,
    ) -> Result<Self> {
        let zerofill = match log.options.zero_fill {
            true => Some(ZeroFill::start(
                file.clone(),
                len,
                log.options.segment_bytes,
            )?),
            false => None,
        };
        debug_assert!(start <= len);
        Ok(Self {
            log,
            file,
            zerofill,
            base,
            len,
            buf: Vec::with_capacity(1 << 20),
            positions: Vec::new(),
            hashes,
            pending_ids: Vec::new(),
            next,
            poisoned: None,
            timings: CommitTimings::default(),
        })
    }

    /// The offset the next appended record gets.
    pub(in crate::store) fn next(&self) -> Offset {
        self.next
    }

    /// Why the writer stopped taking appends, if it did.
    pub(in crate::store) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(e) => Err(Error::Unavailable(e.clone())),
            None => Ok(()),
        }
    }

    /// Checks `id` against the log (not against this commit's records: the
    /// caller tracks those).
    pub(in crate::store) fn offset_of_id(&self, id: &str) -> Result<Option<Offset>> {
        self.log.offset_of_id(id)
    }

    /// The durable record at `offset`, if it is in the log.
    pub(in crate::store) fn record(&self, offset: Offset) -> Result<Option<bytes::Bytes>> {
        self.log.get(offset)
    }

    /// Whether records of `bytes` in all (frames included) should go to a
    /// new segment: the active one has records and they would take it past
    /// its size. Roll first ([`LogWriter::roll`]).
    pub(in crate::store) fn needs_roll(&self, bytes: u64) -> bool {
        let used = self.len + self.buf.len() as u64;
        let empty = self.positions.is_empty() && self.hashes.is_empty();
        !empty && used + bytes > self.log.options.segment_bytes
    }

    /// The bytes a record of `record_len` takes in a segment.
    pub(in crate::store) fn frame_len(record_len: usize) -> u64 {
        (FRAME_HEADER + record_len) as u64
    }

    /// Where the buffered commit stands now.
    pub(in crate::store) fn mark(&self) -> Mark {
        Mark {
            next: self.next,
            buf: self.buf.len(),
            positions: self.positions.len(),
            hashes: self.hashes.len(),
            pending: self.pending_ids.len(),
        }
    }

    /// Forgets the records buffered since `mark`.
    pub(in crate::store) fn rewind(&mut self, mark: Mark) {
        self.next = mark.next;
        self.buf.truncate(mark.buf);
        self.positions.truncate(mark.positions);
        self.hashes.truncate(mark.hashes);
        self.pending_ids.truncate(mark.pending);
    }

    /// Adds a record given in parts (written one after the other) to this
    /// commit; returns its offset. Never rolls the segment.
    pub(in crate::store) fn append_parts(&mut self, id: &str, parts: &[&[u8]]) -> Result<Offset> {
        self.check_poisoned()?;
        let record_len: usize = parts.iter().map(|p| p.len()).sum();
        if record_len > format::MAX_RECORD {
            return Err(Error::invalid(
                "event",
                "over the largest record the log holds",
            ));
        }
        let offset = self.next;
        let position = u32::try_from(self.len + self.buf.len() as u64).map_err(|_| {
            Error::ResourceExhausted("event log: a segment cannot grow past 4 GiB".into())
        })?;
        let commit_start = self.buf.is_empty();
        format::push_frame(&mut self.buf, offset, parts, commit_start);
        self.positions.push(position);
        let h = self.log.hasher.hash(id);
        self.hashes.push(h);
        self.pending_ids.push((h, offset));
        self.next += 1;
        Ok(offset)
    }

    /// Writes and syncs this commit's records, then makes them readable.
    /// On error nothing of this commit is readable or indexed, its bytes
    /// are cut back off the file, and its offsets are given out again.
    pub(in crate::store) fn commit(&mut self) -> Result<()> {
        if let Err(e) = self.check_poisoned() {
            self.discard();
            return Err(e);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let end = self.len + self.buf.len() as u64;
        let clock = std::time::Instant::now();
        let mut turn = self.zerofill.as_ref().map(|z| z.writing(end));
        self.timings.zero_fill_wait = clock.elapsed();
        let written = self.file.write_all_at(&self.buf, self.len);
        let clock = std::time::Instant::now();
        let synced = match &written {
            Ok(()) => self.file.sync_data(),
            Err(_) => Ok(()),
        };
        self.timings.sync = clock.elapsed();
        if let Err(e) = written.and(synced.as_ref().map(|_| ()).map_err(clone_io)) {
            // Whatever reached the file must not outlive the error: cut it
            // (and the zeros ahead) and sync the cut.
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            if let Some(turn) = turn.as_mut() {
                turn.cut(self.len);
            }
            drop(turn);
            self.discard();
            self.poisoned = match (synced.is_err(), cut) {
                (false, Ok(())) => None,
                (true, Ok(())) => Some(format!(
                    "the event log stopped taking appends after a failed fdatasync ({e}); \
                     restart the broker"
                )),
                (_, Err(cut)) => Some(format!(
                    "the event log stopped taking appends: a failed write or fdatasync ({e}) \
                     could not be cut back ({cut}), so the records of that commit may be \
                     found at the next start; restart the broker"
                )),
            };
            return Err(e.into());
        }
        drop(turn);
        // Index the ids first, from the bytes just written: nothing after
        // the records become readable may fail.
        {
            let mut ids = self.log.ids.lock().unwrap_or_else(|p| p.into_inner());
            for (i, &(h, offset)) in self.pending_ids.iter().enumerate() {
                let from = (self.positions[i] as u64 - self.len) as usize + FRAME_HEADER;
                let to = self
                    .positions
                    .get(i + 1)
                    .map_or(self.buf.len(), |&p| (p as u64 - self.len) as usize);
                // Only for the rare hash that is taken already.
                let named =
                    ids.insert(h, offset, |o| keys::decode_event_id(o, &self.buf[from..to]));
                if let Err(e) = named {
                    tracing::error!(error = %e, offset = offset.get(), "event log: cannot index an event id");
                }
            }
            self.pending_ids.clear();
        }
        self.len = end;
        self.buf.clear();
        let mut index = self.log.index_mut();
        let seg = index
            .segments
            .last_mut()
            .expect("the log always has a segment");
        seg.positions.append(&mut self.positions);
        seg.len = self.len;
        Ok(())
    }

    /// Forgets this commit's records.
    fn discard(&mut self) {
        let n = self.positions.len();
        self.next -= n as u64;
        self.hashes.truncate(self.hashes.len() - n);
        self.positions.clear();
        self.pending_ids.clear();
        self.buf.clear();
    }

    /// Seals the active segment (cut to its records, its `.idx`) and
    /// starts the next one. Commit first: nothing may be buffered.
    pub(in crate::store) fn roll(&mut self) -> Result<()> {
        self.check_poisoned()?;
        assert!(self.buf.is_empty(), "roll only between commits");
        if self.hashes.is_empty() {
            return Ok(()); // no records: the segment is as good as new
        }
        let fs = self.log.fs();
        let seg = create_segment(fs, &self.log.dir, self.next)?;
        let old = std::mem::replace(&mut self.file, seg.file.clone());
        if let Some(z) = &self.zerofill {
            z.switch(self.file.clone());
        }
        // From here on the new segment is the active one, whatever happens
        // to the old one's sealing: neither part of it is needed to read the
        // log right (opening cuts zeros after the records of a sealed
        // segment and rebuilds a missing `.idx`).
        let hashes = std::mem::take(&mut self.hashes);
        let sealed = old
            .set_len(self.len)
            .and_then(|()| old.sync_data())
            .map_err(Error::from)
            .and_then(|()| {
                let index = self.log.index();
                let seg = index.segments.last().expect("the log always has a segment");
                write_idx(
                    fs,
                    &self.log.dir,
                    seg.base,
                    &seg.positions,
                    &hashes,
                    &self.log.hasher,
                )
            });
        if let Err(e) = sealed {
            tracing::warn!(
                segment = self.base.get(),

                error = %e,
                "event log: cannot seal a segment; the next start reads it whole"
            );
        }
        self.base = self.next;
        self.len = seg.len;
        self.log.index_mut().segments.push(seg);
        tracing::debug!(base = self.base.get(), "event log: new segment");
        Ok(())
    }

    /// Seals the active segment if it holds records below `before`, so a
    /// redaction can rewrite them ([`EventLog::redact`] rewrites sealed
    /// segments only). Commit first: nothing may be buffered.
    pub(in crate::store) fn seal_below(&mut self, before: Offset) -> Result<()> {
        if self.base < before && !self.hashes.is_empty() {
            self.roll()
        } else {
            Ok(())
        }
    }

    /// Moves the first offset up to `first` (at most to the head: the log
    /// may end up empty; offsets go on from the head all the same, kept by
    /// the active segment and the `start` file), deletes whole segments
    /// below it and forgets their ids. Returns how many events were removed.
    pub(in crate::store) fn truncate(&mut self, first: Offset) -> Result<usize> {
        let old = self.log.first();
        let first = first.min(self.log.next()).max(old);
        if first == old {
            return Ok(0);
        }
        let fs = self.log.fs();
        super::write_start_file(fs, &self.log.dir, first)?;
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
                fs.remove(&segment_path(&self.log.dir, *base, ext))?;
            }
        }
        if !doomed.is_empty() {
            fs.sync_dir(&self.log.dir)?;
        }
        self.log
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_from(first);
        Ok((first - old) as usize)
    }
}

fn clone_io(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}
