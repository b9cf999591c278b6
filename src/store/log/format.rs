//! The event log's on-disk format, version 1, and how opening reads it.
//!
//! Every file the log writes starts with a 16-byte header: an 8-byte magic
//! naming the kind of file, the format version (u32, little-endian) and a
//! CRC32 of those 12 bytes. A file with a known magic and another version
//! is refused at open with an error that names it. Segments and `start`
//! files written before version 1 have no header (version 0) and are read
//! as they are; a version-0 `.idx` is rebuilt.
//!
//! - `<base>.log`: the header, then frames
//!   `[len u32][crc32 u32][offset u64][record: len bytes]` (little-endian;
//!   the CRC covers the offset and the record). The top bit of `len` marks
//!   the first record of a commit (version 1 only). The record is an
//!   encoded [`keys::EventRecord`](super::super::keys), or the tombstone
//!   that replaced one ([`keys::tombstone`](super::super::keys), field 3
//!   set; see [`super::redact`]). Offsets are dense.
//! - `<base>.idx`: the header, the id-hash key's fingerprint (u64), then per
//!   record `[position u32][id hash u64]`, then `[count u64][crc32 u32]`.
//! - `start`: the header, `[first offset u64][crc32 u32]`.
//! - `meta`: the header, the id-hash key (16 bytes), `[crc32 u32]`.
//!
//! Recovery reads the last segment (and any sealed one without a valid
//! `.idx`) frame by frame and classifies what follows the last valid frame
//! ([`Tail`]). The commit marks are what tell a torn commit from damage: the
//! writer starts a commit only after the previous one was synced, so a
//! valid commit-start frame *after* an invalid frame proves that the
//! invalid frame's commit was acknowledged.

use std::path::Path;

use bytes::Bytes;

use super::fs::FsFile;
use crate::{
    error::{Error, Result},
    model::Offset,
};

/// Bytes of a file header.
pub(super) const FILE_HEADER: usize = 16;
/// Bytes before each record.
pub(super) const FRAME_HEADER: usize = 16;
/// The format version this code writes.
pub(super) const VERSION: u32 = 1;
/// `len`'s top bit: the first record of a commit.
const COMMIT_START: u32 = 1 << 31;

/// Which file a header belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Segment,
    Index,
    Start,
    Meta,
}

impl Kind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Segment => b"STVD-LOG",
            Kind::Index => b"STVD-IDX",
            Kind::Start => b"STVD-STA",
            Kind::Meta => b"STVD-MET",
        }
    }
}

/// The header of a version-1 file of `kind`.
pub(super) fn file_header(kind: Kind) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(kind.magic());
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Whether `bytes` start with a version-1 header of `kind` (`false`: no
/// header, a version-0 file). A header of another version, or a damaged
/// one, is an error naming `path`.
pub(super) fn has_header(bytes: &[u8], kind: Kind, path: &Path) -> Result<bool> {
    if bytes.len() < 8 || &bytes[..8] != kind.magic() {
        return Ok(false);
    }
    if bytes.len() < FILE_HEADER || crc32fast::hash(&bytes[..12]) != u32_at(bytes, 12) {
        return Err(Error::Corrupt(format!(
            "event log: {}: damaged file header",
            path.display()
        )));
    }
    match u32_at(bytes, 8) {
        VERSION => Ok(true),
        v => Err(Error::Corrupt(format!(
            "event log: {} has format version {v}; this broker reads versions 0 and {VERSION} \
             (was it written by a newer stevedore?)",
            path.display()
        ))),
    }
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends a frame for the record made of `parts` at `offset` to `buf`.
pub(super) fn push_frame(buf: &mut Vec<u8>, offset: Offset, parts: &[&[u8]], commit_start: bool) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let offset_bytes = offset.get().to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&offset_bytes);
    for p in parts {
        crc.update(p);
    }
    let flag = if commit_start { COMMIT_START } else { 0 };
    buf.reserve(FRAME_HEADER + len);
    buf.extend_from_slice(&(len as u32 | flag).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&offset_bytes);
    for p in parts {
        buf.extend_from_slice(p);
    }
}

/// Largest record a frame holds.
pub(super) const MAX_RECORD: usize = (COMMIT_START - 1) as usize;

/// A frame's header fields: record length, CRC, offset, commit start.
struct FrameHeader {
    len: u64,
    crc: u32,
    offset: Offset,
    commit_start: bool,
}

fn frame_header(h: &[u8]) -> FrameHeader {
    let len = u32_at(h, 0);
    FrameHeader {
        len: (len & !COMMIT_START) as u64,
        crc: u32_at(h, 4),
        offset: Offset::new(u64_at(h, 8)),
        commit_start: len & COMMIT_START != 0,
    }
}

/// Whether a (checked) frame starts a commit.
pub(super) fn starts_commit(frame: &[u8]) -> bool {
    frame_header(frame).commit_start
}

/// Checks a frame read at `offset` and returns its record.
pub(super) fn check_frame(frame: &Bytes, offset: Offset) -> Result<Bytes> {
    let corrupt = |m: &str| Error::Corrupt(format!("event log: record {offset}: {m}"));
    if frame.len() < FRAME_HEADER {
        return Err(corrupt("short"));
    }
    let h = frame_header(frame);
    if h.len as usize != frame.len() - FRAME_HEADER {
        return Err(corrupt("length mismatch"));
    }
    if h.offset != offset {
        return Err(corrupt(&format!("holds offset {}", h.offset)));
    }
    if crc32fast::hash(&frame[8..]) != h.crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(frame.slice(FRAME_HEADER..))
}

/// What follows the valid frames of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tail {
    /// Nothing.
    Clean,
    /// Only zeros (written ahead of the writer).
    Zeros,
    /// An incomplete or invalid end that no later commit follows: the
    /// unacknowledged end of the last commit, torn by a crash.
    Torn,
    /// An invalid frame that a later commit follows: acknowledged records
    /// are damaged. `at` is its byte position, `offset` the record's.
    Damaged { at: u64, offset: Offset },
}

/// A segment read frame by frame.
pub(super) struct Scanned {
    /// Where each valid record's frame starts.
    pub(super) positions: Vec<u32>,
    /// Each valid record's id (decoded), for the id index.
    pub(super) ids: Vec<String>,
    /// End of the valid frames.
    pub(super) len: u64,
    pub(super) tail: Tail,
}

/// Reads a segment from `start` (after its header): the valid records,
/// and what follows them.
pub(super) fn scan(file: &dyn FsFile, base: Offset, start: u64) -> Result<Scanned> {
    let size = file.len()?;
    let mut positions = Vec::new();
    let mut ids = Vec::new();
    let mut pos = start;
    let mut header = [0u8; FRAME_HEADER];
    let mut body = Vec::new();
    while pos + FRAME_HEADER as u64 <= size {
        file.read_exact_at(&mut header, pos)?;
        let h = frame_header(&header);
        let end = pos + FRAME_HEADER as u64 + h.len;
        if end > size || h.offset != base + positions.len() as u64 {
            break;
        }
        body.resize(h.len as usize, 0);
        file.read_exact_at(&mut body, pos + FRAME_HEADER as u64)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[8..16]);
        crc.update(&body);
        if crc.finalize() != h.crc {
            break;
        }
        let Ok(id) = super::super::keys::decode_event_id(h.offset, &body) else {
            break;
        };
        positions.push(pos as u32);
        ids.push(id);
        pos = end;
    }
    let next = base + positions.len() as u64;
    let tail = if pos == size {
        Tail::Clean
    } else if only_zeros(file, pos, size)? {
        Tail::Zeros
    } else if later_commit(file, pos, size, next)? {
        Tail::Damaged {
            at: pos,
            offset: next,
        }
    } else {
        Tail::Torn
    };
    Ok(Scanned {
        positions,
        ids,
        len: pos,
        tail,
    })
}

/// Whether a valid commit-start frame of an offset above `next` lies
/// anywhere in `from..size`.
fn later_commit(file: &dyn FsFile, from: u64, size: u64, next: Offset) -> Result<bool> {
    // Any later frame is at least a header long: offsets beyond this are
    // impossible in the bytes left.
    let most = next + (size - from) / FRAME_HEADER as u64;
    const WINDOW: u64 = 4 << 20;
    let mut buf = Vec::new();
    let mut at = from + 1;
    while at + FRAME_HEADER as u64 <= size {
        let n = (size - at).min(WINDOW);
        buf.resize(n as usize, 0);
        file.read_exact_at(&mut buf, at)?;
        for i in 0..(n as usize).saturating_sub(FRAME_HEADER - 1) {
            let h = frame_header(&buf[i..i + FRAME_HEADER]);
            let frame_at = at + i as u64;
            let end = frame_at + FRAME_HEADER as u64 + h.len;
            if !h.commit_start || h.offset <= next || h.offset > most || end > size {
                continue;
            }
            let mut body = vec![0u8; h.len as usize];
            file.read_exact_at(&mut body, frame_at + FRAME_HEADER as u64)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&h.offset.get().to_le_bytes());
            crc.update(&body);
            if crc.finalize() == h.crc {
                return Ok(true);
            }
        }
        // Windows overlap by a header, so no frame start is missed.
        at += n.saturating_sub(FRAME_HEADER as u64 - 1).max(1);
    }
    Ok(false)
}

/// Whether `file` holds only zeros from `from` to `to`.
pub(super) fn only_zeros(file: &dyn FsFile, mut from: u64, to: u64) -> Result<bool> {
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    while from < to {
        let n = (to - from).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], from)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        from += n as u64;
    }
    Ok(true)
}

/// `body` followed by its CRC32, after a header of `kind`.
pub(super) fn sealed_file(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER + body.len() + 4);
    out.extend_from_slice(&file_header(kind));
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out
}

/// The body of a file written by [`sealed_file`], if its CRC holds.
/// `Ok(None)`: a version-0 file (no header).
pub(super) fn open_sealed<'a>(
    bytes: &'a [u8],
    kind: Kind,
    path: &Path,
) -> Result<Option<&'a [u8]>> {
    if !has_header(bytes, kind, path)? {
        return Ok(None);
    }
    let body = &bytes[FILE_HEADER..];
    if body.len() < 4 {
        return Err(Error::Corrupt(format!(
            "event log: {}: short",
            path.display()
        )));
    }
    let (body, crc) = body.split_at(body.len() - 4);
    if crc32fast::hash(body) != u32_at(crc, 0) {
        return Err(Error::Corrupt(format!(
            "event log: {}: checksum mismatch",
            path.display()
        )));
    }
    Ok(Some(body))
}
