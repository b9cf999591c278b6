//! Zero-filling the active log segment ahead of its writer.
//!
//! An `fdatasync` after a write past the end of a file must also write the
//! file's new size (the inode); after a write into blocks that already hold
//! data (zeros) it writes only the data: one I/O instead of two, which
//! makes a commit's sync much cheaper in both CPU and wall time (figures
//! in BENCHMARKS.md, "Fifth pass" and "Notes moved from code").
//! `fallocate` does not help (its blocks are "unwritten": the first write
//! into them is again a metadata change), and zeros written with
//! `O_DIRECT` do not help either: they were as slow as appending.
//!
//! So a thread writes zeros, a chunk at a time, just past what the writer
//! has written, and syncs them; the writer's commits then overwrite zeros.
//! A commit that outruns the zeros writes past them, as without them (only
//! slower).
//!
//! The two never write at the same time: each holds the lock on [`State`]
//! while it writes and syncs. That is what keeps them off each other's
//! bytes (the writer moves [`State::zeroed`] past its own range first), and
//! it keeps a commit's `fdatasync`, which writes back every dirty page of
//! the file, from writing back a chunk of zeros too: a commit that waits
//! for zeros it does not need shows directly in publish tail latency
//! (BENCHMARKS.md, "Notes moved from code").
//!
//! Both write through one file description, so an `fdatasync` error is
//! reported to whichever of them syncs first. That cannot hide a failed
//! commit: the writer syncs every page it wrote within its own turn, so an
//! error the zero-filler is told of concerns only zeros (and it then stops
//! zeroing that segment).
//!
//! A segment thus ends in zeros up to two chunks past its records. Opening
//! the log tells such a tail (all zeros) from the torn end of a crash (see
//! `log.rs`), and a segment is cut to its records when it is sealed.

use std::{
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
};

use super::fs::FsFile;

/// Most bytes zeroed by one write and sync. A commit may wait for one:
/// ~0.5 ms here (p50; p90 0.6 ms, worst of 400 about 1 ms).
const MAX_CHUNK: u64 = 512 << 10;
/// Commits of at least this many bytes get no zeros: writing the zeros
/// would cost about as much disk time as the size update they save.
const LARGE_COMMIT: u64 = 64 << 10;

/// The active segment's write handle, shared by the log writer and the
/// zero-filling thread; stops the thread when dropped.
pub(super) struct ZeroFill {
    shared: Arc<ActiveSegment>,
    thread: Option<JoinHandle<()>>,
}

/// The active segment as the writer and the zero-filling thread share it:
/// its state under the lock that gives each its turn, and the wake-up.
struct ActiveSegment {
    state: Mutex<State>,
    /// Signalled when there is zeroing to do, and on stop.
    wake: Condvar,
    chunk: u64,
}

struct State {
    /// The active segment.
    file: Arc<dyn FsFile>,
    /// Bytes from the start of the segment that hold records or zeros.
    zeroed: u64,
    /// End of the writer's records.
    written: u64,
    /// Bytes of the writer's last commit.
    last_commit: u64,
    /// Zero at most this far: the segment's size limit.
    limit: u64,
    /// Zeroing failed in this segment (full disk, say): not retried in it.
    failed: bool,
    stop: bool,
}

impl State {
    fn wants_zeros(&self, chunk: u64) -> bool {
        !self.failed
            && self.last_commit < LARGE_COMMIT
            && self.zeroed < self.limit
            && self.written + chunk > self.zeroed
    }
}

/// The writer's turn at the active segment (see [`ZeroFill::writing`]).
pub(super) struct Writing<'a> {
    state: MutexGuard<'a, State>,
    shared: &'a ActiveSegment,
}

impl Writing<'_> {
    /// The records written this turn did not stay: the writer cut the
    /// segment back to `len` bytes (zeros ahead included).
    pub(super) fn cut(&mut self, len: u64) {
        self.state.zeroed = len;
        self.state.written = len;
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.state.wants_zeros(self.shared.chunk) {
            self.shared.wake.notify_one();
        }
    }
}

impl ZeroFill {
    /// Starts zeroing `file` (the active segment, written up to `written`)
    /// ahead of its writer, up to `limit` bytes.
    pub(super) fn start(file: Arc<dyn FsFile>, written: u64, limit: u64) -> std::io::Result<Self> {
        let len = file.len()?;
        let shared = Arc::new(ActiveSegment {
            state: Mutex::new(State {
                file,
                zeroed: len.max(written),
                written,
                last_commit: 0,
                limit,
                failed: false,
                stop: false,
            }),
            wake: Condvar::new(),
            chunk: (limit / 8).clamp(4096, MAX_CHUNK),
        });
        let thread = std::thread::Builder::new()
            .name("stevedore-zerofill".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The writer's turn to write records up to `end` and sync them: no
    /// zeros are written until it ends, and none below `end` after.
    pub(super) fn writing(&self, end: u64) -> Writing<'_> {
        let mut state = self.shared.lock();
        state.zeroed = state.zeroed.max(end);
        state.last_commit = end.saturating_sub(state.written);
        state.written = end;
        Writing {
            state,
            shared: &self.shared,
        }
    }

    /// The writer moves to `file`, a new segment (its header written);
    /// the old one gets no more zeros.
    pub(super) fn switch(&self, file: Arc<dyn FsFile>) {
        let mut state = self.shared.lock();
        let len = file.len().unwrap_or(0);
        state.zeroed = len;
        state.written = len;
        state.failed = false;
        state.file = file;
        self.shared.wake.notify_one();
    }
}

impl Drop for ZeroFill {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl ActiveSegment {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let zeros = vec![0u8; self.chunk as usize];
        let mut state = self.lock();
        loop {
            if state.stop {
                return;
            }
            if !state.wants_zeros(self.chunk) {
                state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let from = state.zeroed;
            let to = (from + self.chunk).min(state.limit);
            let zeroed = state
                .file
                .write_all_at(&zeros[..(to - from) as usize], from)
                .and_then(|()| state.file.sync_data());
            match zeroed {
                Ok(()) => state.zeroed = to,
                Err(e) => {
                    tracing::warn!(error = %e, "event log: cannot zero-fill ahead of the writer; commits get slower");
                    state.failed = true;
                }
            }
            // Zeros are now a chunk ahead of the records (`zeroed` never
            // falls below `written`): the loop waits, releasing the lock.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeros go ahead of small commits only, up to the limit, and not
    /// after zeroing failed.
    #[test]
    fn zeros_are_wanted_ahead_of_small_commits() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("log")).unwrap();
        let zerofill = ZeroFill::start(Arc::new(file), 0, 1 << 30).unwrap();
        let chunk = zerofill.shared.chunk;
        assert_eq!(chunk, MAX_CHUNK);
        let wants = |end: u64| zerofill.writing(end).state.wants_zeros(chunk);
        assert!(wants(4096), "a small commit with no zeros ahead");
        assert!(!wants(4096 + LARGE_COMMIT), "a large commit");
        assert!(wants(8192 + LARGE_COMMIT), "small again");
        let mut turn = zerofill.writing(20_000 + LARGE_COMMIT);
        turn.state.zeroed = turn.state.written + chunk;
        assert!(!turn.state.wants_zeros(chunk), "a chunk ahead already");
        turn.state.zeroed = turn.state.written + 10;
        turn.state.failed = true;
        assert!(!turn.state.wants_zeros(chunk), "zeroing failed");
        turn.state.failed = false;
        turn.state.limit = turn.state.zeroed;
        assert!(!turn.state.wants_zeros(chunk), "at the limit");
    }

    /// A writer appending records of every size as fast as it can, while
    /// the zero-filler zeroes ahead in small chunks: no record byte is ever
    /// zeroed, zeros follow the records, and after a switch nothing more
    /// is written to the old file.
    #[test]
    fn zeros_never_land_on_written_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| -> Arc<dyn FsFile> {
            Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.path().join(name))
                    .unwrap(),
            )
        };
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let limit = 256 << 10;
        let first = open("first");
        let current = std::cell::RefCell::new(first.clone());
        let zerofill = ZeroFill::start(first.clone(), 0, limit).unwrap();
        let write = |until: u64| {
            let mut expected = Vec::new();
            for i in 0.. {
                let record = vec![(i % 251 + 1) as u8; 1 + (i * 37) % 900];
                let end = expected.len() as u64 + record.len() as u64;
                if end > until {
                    return expected;
                }
                let turn = zerofill.writing(end);
                current
                    .borrow()
                    .write_all_at(&record, expected.len() as u64)
                    .unwrap();
                drop(turn);
                expected.extend_from_slice(&record);
            }
            unreachable!()
        };
        let written = write(limit / 2);
        let second = open("second");
        *current.borrow_mut() = second.clone();
        zerofill.switch(second);
        let old = read("first");
        let again = write(limit - 20_000);
        // Zeroing ahead reaches the limit once the writer stops short of it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while (read("second").len() as u64) < limit {
            assert!(
                std::time::Instant::now() < deadline,
                "zeros never reached the limit"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(zerofill);

        assert_eq!(read("first"), old);
        assert_eq!(&old[..written.len()], &written[..]);
        assert!(old[written.len()..].iter().all(|&b| b == 0));
        let new = read("second");
        assert_eq!(new.len() as u64, limit);
        assert_eq!(&new[..again.len()], &again[..]);
        assert!(new[again.len()..].iter().all(|&b| b == 0));
        let only_zeros = super::super::format::only_zeros;
        assert!(only_zeros(&*first, written.len() as u64, old.len() as u64).unwrap());
        assert!(!only_zeros(&*first, 0, old.len() as u64).unwrap());
    }
}
