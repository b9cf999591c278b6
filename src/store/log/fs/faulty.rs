//! A file system in memory that breaks on request, for tests.
//!
//! Each file keeps two copies of its bytes: what the page cache holds
//! (every read sees it) and what was last synced. [`FaultyFs::crash`]
//! throws the first away, as a power cut does, and puts back the names
//! as they were when their directory was last synced. Faults are armed
//! one at a time: the n-th next write, sync or read fails; a failed write
//! may leave part of its bytes behind, unsynced, as a real one can.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use super::{Fs, FsFile};

/// Which operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `write_all_at` (and `set_len`, which writes too).
    Write,
    /// `sync_data` and `sync_dir`.
    Sync,
    /// `read_exact_at`.
    Read,
}

/// The fault file system; cheap to clone (clones share the files).
#[derive(Clone, Default)]
pub(crate) struct FaultyFs {
    world: Arc<Mutex<World>>,
}

#[derive(Default)]
struct World {
    /// The names as the page cache has them.
    names: HashMap<PathBuf, Arc<Node>>,
    /// The names as they are on disk (after the last `sync_dir`).
    durable: HashMap<PathBuf, Arc<Node>>,
    dirs: Vec<PathBuf>,
    /// Armed faults: the operation, how many more of it succeed first, and
    /// the error kind it fails with.
    faults: Vec<(Op, u32, io::ErrorKind)>,
    /// Operations done, per kind, for tests that count syncs.
    counts: HashMap<&'static str, u64>,
}

#[derive(Default)]
struct Node {
    bytes: Mutex<Bytes>,
}

#[derive(Default, Clone)]
struct Bytes {
    cached: Vec<u8>,
    synced: Vec<u8>,
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, Bytes> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Handle {
    fs: FaultyFs,
    node: Arc<Node>,
}

impl FaultyFs {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `after`-th next `op` (0: the very next) fails with `kind`.
    pub(crate) fn fail(&self, op: Op, after: u32, kind: io::ErrorKind) {
        self.world().faults.push((op, after, kind));
    }

    /// Forgets armed faults.
    pub(crate) fn heal(&self) {
        self.world().faults.clear();
    }

    /// A power cut: every file goes back to its synced bytes, every
    /// directory to its synced names. Handles opened before still work
    /// (on the synced bytes); the code under test drops them.
    pub(crate) fn crash(&self) {
        let mut world = self.world();
        world.faults.clear();
        world.names = world.durable.clone();
        for node in world.names.values() {
            let mut b = node.lock();
            b.cached = b.synced.clone();
        }
    }

    /// Flips bit `bit` of byte `pos` in `path`, on disk and in the cache
    /// (damage by the disk, not by us).
    pub(crate) fn flip(&self, path: &Path, pos: u64, bit: u8) {
        let world = self.world();
        let node = world.names.get(path).expect("the file exists");
        let mut b = node.lock();
        b.cached[pos as usize] ^= 1 << bit;
        if let Some(byte) = b.synced.get_mut(pos as usize) {
            *byte ^= 1 << bit;
        }
    }

    /// The bytes of `path` as readers see them.
    pub(crate) fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let world = self.world();
        world.names.get(path).map(|n| n.lock().cached.clone())
    }

    /// Counts an `op` and fails it if a fault is due.
    fn check(&self, op: Op) -> io::Result<()> {
        let mut world = self.world();
        let mut due = None;
        world.faults.retain_mut(|(o, after, kind)| {
            if *o != op || due.is_some() {
                return true;
            }
            if *after == 0 {
                due = Some(*kind);
                return false;
            }
            *after -= 1;
            true
        });
        match due {
            Some(kind) => Err(io::Error::new(kind, format!("injected {op:?} fault"))),
            None => {
                let name = match op {
                    Op::Write => "write",
                    Op::Sync => "sync",
                    Op::Read => "read",
                };
                *world.counts.entry(name).or_default() += 1;
                Ok(())
            }
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Fs for FaultyFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FsFile>> {
        let mut world = self.world();
        let node = match world.names.get(path) {
            Some(n) => n.clone(),
            None if create => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !world.dirs.iter().any(|d| d == parent) {
                    return Err(not_found(parent));
                }
                let n = Arc::new(Node::default());
                world.names.insert(path.to_owned(), n.clone());
                n
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(Handle {
            fs: self.clone(),
            node,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let world = self.world();
        if !world.dirs.iter().any(|d| d == dir) {
            return Err(not_found(dir));
        }
        Ok(world
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut world = self.world();
        // Directories are created durable: the log's tests are about files.
        for d in dir.ancestors() {
            if !world.dirs.iter().any(|x| x == d) {
                world.dirs.push(d.to_owned());
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Write)?;
        let mut world = self.world();
        let node = world.names.remove(from).ok_or_else(|| not_found(from))?;
        world.names.insert(to.to_owned(), node);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.world().names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::Sync)?;
        let mut world = self.world();
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        world.durable.retain(|p, _| !in_dir(p));
        let now: Vec<_> = world
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        world.durable.extend(now);
        Ok(())
    }
}

impl FsFile for Handle {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.fs.check(Op::Read)?;
        let b = self.node.lock();
        let end = pos as usize + buf.len();
        if end > b.cached.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        buf.copy_from_slice(&b.cached[pos as usize..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let checked = self.fs.check(Op::Write);
        // A failed write may still have written a part of its bytes.
        let n = if checked.is_ok() {
            buf.len()
        } else {
            buf.len() / 2
        };
        let mut b = self.node.lock();
        let end = pos as usize + n;
        if b.cached.len() < end {
            b.cached.resize(end, 0);
        }
        b.cached[pos as usize..end].copy_from_slice(&buf[..n]);
        checked
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.check(Op::Sync)?;
        let mut b = self.node.lock();
        b.synced = b.cached.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.check(Op::Write)?;
        self.node.lock().cached.resize(len as usize, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.node.lock().cached.len() as u64)
    }
}
