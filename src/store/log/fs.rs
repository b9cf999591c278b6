//! The event log's file I/O, behind a small trait.
//!
//! Every byte the log reads or writes goes through [`Fs`] and [`FsFile`],
//! so tests can run the real log on [`faulty::FaultyFs`]: a file system in
//! memory that fails a chosen write, sync or read, and at a simulated crash
//! keeps only what was synced (tikv/raft-engine's `FileSystem` is the
//! model). Production uses [`RealFs`], a thin layer over `std::fs`.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::Path,
    sync::Arc,
};

/// An open file: positioned reads and writes, sync and resize.
pub(crate) trait FsFile: Send + Sync {
    /// Fills `buf` from `pos`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// Writes all of `buf` at `pos`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes the file's data (and its size) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's size.
    fn len(&self) -> io::Result<u64>;
}

/// A file system: files by path and the directory operations the log needs.
/// A name created, renamed or removed is durable once its directory is
/// synced ([`Fs::sync_dir`]).
pub(crate) trait Fs: Send + Sync + 'static {
    /// Opens `path` for reading and writing, creating it (empty) if
    /// `create` and it does not exist.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FsFile>>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; not an error if it does not exist.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The whole file at `path`, or `None` if it does not exist.
pub(crate) fn read_file(fs: &dyn Fs, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match fs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0; file.len()? as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Some(buf))
}

/// Replaces the file at `path` with `bytes` atomically and durably: write
/// a temporary file, sync it, rename it over `path`, sync the directory.
pub(crate) fn replace_file(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let file = fs.open(&tmp, true)?;
    file.set_len(0)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    fs.rename(&tmp, path)?;
    fs.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// `std::fs`: what the broker runs on.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealFs;

impl FsFile for File {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// Opens `path` for reading and writing (creating it when `create`).
fn open_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl Fs for RealFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(open_file(path, create)?))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// `std::fs` without syncs, for what is rebuilt at every start: the local
/// copy of a cluster broker (`store::replica`), whose record is the
/// cluster's. An fsync there buys nothing and adds to every write's
/// latency (each state write waits for the copy to apply it).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UnsyncedFs;

/// A file whose syncs do nothing.
struct Unsynced(File);

impl FsFile for Unsynced {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Fs for UnsyncedFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(Unsynced(open_file(path, create)?)))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod faulty;
