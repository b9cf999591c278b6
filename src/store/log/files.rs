//! The log's files on disk: `<base>.log` segments and their `<base>.idx`,
//! `meta` (the id-hash key) and `start` (the first offset); how opening
//! reads, checks and rebuilds them, and how they are created.

use std::path::{Path, PathBuf};

use super::{
    format::{self, Kind, Tail, FILE_HEADER},
    fs::{self, Fs},
    ids::IdHasher,
    Found, Segment, IDX_ENTRY,
};
use crate::{
    error::{Error, Result},
    model::Offset,
};

/// Removes segments without records that later segments follow: files a
/// failed roll created (a segment is rolled only once it has records, so
/// no other such file can exist).
pub(super) fn remove_orphans(fs: &dyn Fs, dir: &Path, bases: &mut Vec<Offset>) -> Result<()> {
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
pub(super) fn open_segment(
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
        Tail::Torn if !is_last => Some((scanned.len, base + scanned.positions.len() as u64)),
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
pub(super) fn read_or_create_meta(fs: &dyn Fs, dir: &Path) -> Result<IdHasher> {
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
pub(super) type Loaded = (Vec<u32>, Vec<u64>);

pub(super) fn read_idx(
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

pub(super) fn write_idx(
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
pub(super) fn create_segment(fs: &dyn Fs, dir: &Path, base: Offset) -> Result<Segment> {
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

pub(super) fn segment_path(dir: &Path, base: Offset, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// The first offset on record, if any (`start`, version 0 or 1).
pub(super) fn read_start(fs: &dyn Fs, dir: &Path) -> Result<Option<Offset>> {
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
    Ok(Some(Offset::new(format::u64_at(body, 0))))
}

pub(in crate::store) fn write_start_file(fs: &dyn Fs, dir: &Path, first: Offset) -> Result<()> {
    let bytes = format::sealed_file(Kind::Start, &first.get().to_le_bytes());
    Ok(fs::replace_file(fs, &dir.join("start"), &bytes)?)
}
