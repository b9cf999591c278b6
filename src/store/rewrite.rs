//! Rewriting the state (sled) into fresh files, offline: how plaintext
//! secrets are purged after a master key is turned on (`stevedore reseal`).
//!
//! sled is log-structured: a value overwritten in place (a record sealed
//! where it was stored in the clear) stays in its old log segment until
//! that segment happens to be reused, and there is no call to force it.
//! So the live entries are copied into a new database in a sibling
//! directory, passed through a transform, and the new files replace the
//! old ones, which are deleted: afterwards no file under the data
//! directory holds an overwritten value. (The file system's freed blocks
//! are not overwritten; that is what disk encryption is for.)
//!
//! The swap moves several files, so it is made restartable: the new
//! database is complete before its directory is renamed to [`READY`], and
//! [`finish`] (run by every `Store::open`) completes an interrupted swap
//! from wherever it stopped. Until [`READY`] exists the old database is
//! untouched and a half-built copy is simply removed.

use std::path::Path;

use super::{open_sled, sled_config, Table};
use crate::error::Result;

/// The new database while it is being written.
const BUILDING: &str = "state.rewrite.building";
/// The new database, complete and synced: the swap may begin.
const READY: &str = "state.rewrite.ready";
/// The old database's files while they are moved aside.
const MOVING: &str = "state.rewrite.old.moving";
/// The old database's files, all moved aside: the new ones go in.
const OLD: &str = "state.rewrite.old";

/// Held while the state's files may be swapped: by a rewrite throughout,
/// and by `Store::open` until sled holds its own lock, so a broker started
/// in the middle of a `reseal` neither finishes its swap concurrently nor
/// opens half-moved files.
const LOCK: &str = "state.lock";

/// Takes [`LOCK`] (released when the file is dropped), or fails at once.
pub(super) fn exclusive(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join(LOCK))?;
    #[cfg(unix)]
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another stevedore process (a broker or `stevedore \
                     reseal`): {e}",
                    path.display()
                ),
            )
        },
    )?;
    Ok(file)
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// Entries copied, over every table.
    pub entries: u64,
    /// Entries whose value the transform changed.
    pub changed: u64,
}

/// Whether `name`, in the data directory, is one of sled's files.
fn is_sled_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// [`rewrite_state`] changing only endpoint records: `f` gets each one's
/// stored form and returns its new one (`None`: unchanged). For `stevedore
/// reseal`.
pub fn rewrite_endpoints(
    path: &Path,
    cache_bytes: u64,
    mut f: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
) -> Result<Rewritten> {
    rewrite_state(path, cache_bytes, |table, value| match table {
        Table::Endpoints => f(value),
        _ => Ok(None),
    })
}

/// Copies every entry of the state at `path` (which no broker may have
/// open; sled's lock makes sure) into a fresh database, values of
/// [`Table`]s passed through `f` (`Some`: the new value), and swaps it in.
/// An error from `f` aborts before anything is swapped.
pub(super) fn rewrite_state(
    path: &Path,
    cache_bytes: u64,
    mut f: impl FnMut(Table, &[u8]) -> Result<Option<Vec<u8>>>,
) -> Result<Rewritten> {
    let _lock = exclusive(path)?;
    finish(path)?;
    let building = path.join(BUILDING);
    if building.exists() {
        std::fs::remove_dir_all(&building)?;
    }
    let mut done = Rewritten::default();
    {
        let old = open_sled(sled_config(path, cache_bytes), path)?;
        let new = open_sled(sled_config(&building, cache_bytes), &building)?;
        for name in old.tree_names() {
            let table = Table::ALL
                .into_iter()
                .find(|t| t.tree_name().as_bytes() == &name[..]);
            let (from, to) = (old.open_tree(&name)?, new.open_tree(&name)?);
            for kv in from.iter() {
                let (k, v) = kv?;
                let v = match table.map(|t| f(t, &v)).transpose()?.flatten() {
                    Some(changed) => {
                        done.changed += 1;
                        changed.into()
                    }
                    None => v,
                };
                to.insert(k, v)?;
                done.entries += 1;
            }
        }
        new.flush()?;
    }
    sync_tree(&building)?;
    std::fs::rename(&building, path.join(READY))?;
    sync_dir(path)?;
    finish(path)?;
    Ok(done)
}

/// Completes an interrupted swap (see the module docs); does nothing when
/// none was under way.
pub(super) fn finish(path: &Path) -> Result<()> {
    let (ready, old, moving) = (path.join(READY), path.join(OLD), path.join(MOVING));
    if ready.exists() {
        if !old.exists() {
            // Nothing new is in place yet: every sled file here is old.
            std::fs::create_dir_all(&moving)?;
            for entry in std::fs::read_dir(path)? {
                let name = entry?.file_name();
                if is_sled_file(&name.to_string_lossy()) {
                    std::fs::rename(path.join(&name), moving.join(&name))?;
                }
            }
            sync_dir(&moving)?;
            std::fs::rename(&moving, &old)?;
            sync_dir(path)?;
        }
        // The old files are aside: whatever is left in READY goes in.
        for entry in std::fs::read_dir(&ready)? {
            let name = entry?.file_name();
            std::fs::rename(ready.join(&name), path.join(&name))?;
        }
        sync_dir(path)?;
        std::fs::remove_dir(&ready)?;
        sync_dir(path)?;
        tracing::info!(path = %path.display(), "state store rewritten into fresh files");
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
        sync_dir(path)?;
    }
    // A copy that was never completed: the old state is intact.
    for unfinished in [path.join(BUILDING), moving] {
        if unfinished.exists() {
            std::fs::remove_dir_all(&unfinished)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// fsyncs every file under `dir`, and the directories.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_contain(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files_contain(&e.path(), needle)
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                bytes.windows(needle.len()).any(|w| w == needle)
            }
        })
    }

    fn put(path: &Path, table: Table, key: &str, value: &[u8]) {
        let db = open_sled(sled_config(path, 1 << 20), path).unwrap();
        db.open_tree(table.tree_name())
            .unwrap()
            .insert(key, value)
            .unwrap();
        db.flush().unwrap();
    }

    fn get(path: &Path, table: Table, key: &str) -> Option<Vec<u8>> {
        let db = open_sled(sled_config(path, 1 << 20), path).unwrap();
        let v = db.open_tree(table.tree_name()).unwrap().get(key).unwrap();
        v.map(|v| v.to_vec())
    }

    /// Overwritten values are still in sled's files (why this exists);
    /// after a rewrite they are not, and every live entry is.
    #[test]
    fn a_rewrite_leaves_no_overwritten_value_in_any_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        put(path, Table::Endpoints, "ep", b"plaintext-secret-4c1d");
        put(path, Table::Consumers, "c", b"position");
        put(path, Table::Endpoints, "ep", b"sealed");
        assert!(
            files_contain(path, b"plaintext-secret-4c1d"),
            "baseline: sled keeps the overwritten value"
        );
        let done = rewrite_state(path, 1 << 20, |t, v| {
            Ok((t == Table::Endpoints).then(|| [v, b"+again"].concat()))
        })
        .unwrap();
        assert_eq!((done.entries, done.changed), (2, 1));
        assert!(!files_contain(path, b"plaintext-secret-4c1d"));
        assert_eq!(
            get(path, Table::Endpoints, "ep").as_deref(),
            Some(&b"sealed+again"[..])
        );
        assert_eq!(
            get(path, Table::Consumers, "c").as_deref(),
            Some(&b"position"[..])
        );
        let names: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("state.rewrite")),
            "{names:?}"
        );
    }

    /// A second rewrite (or a broker's open) while one holds the directory
    /// fails at once instead of swapping files under it.
    #[test]
    fn the_swap_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), Table::Endpoints, "ep", b"v1");
        let held = exclusive(dir.path()).unwrap();
        let err = rewrite_state(dir.path(), 1 << 20, |_, _| Ok(None)).unwrap_err();
        assert!(
            err.to_string()
                .contains("in use by another stevedore process"),
            "{err}"
        );
        drop(held);
        rewrite_state(dir.path(), 1 << 20, |_, _| Ok(None)).unwrap();
    }

    /// An error from the transform changes nothing.
    #[test]
    fn a_failed_transform_keeps_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), Table::Endpoints, "ep", b"v1");
        let err = rewrite_state(dir.path(), 1 << 20, |_, _| {
            Err(crate::error::Error::MasterKey("wrong key".into()))
        });
        assert!(err.is_err());
        assert_eq!(
            get(dir.path(), Table::Endpoints, "ep").as_deref(),
            Some(&b"v1"[..])
        );
    }

    /// A swap interrupted after the old files were moved aside and only
    /// some new ones moved in is completed by the next open.
    #[test]
    fn an_interrupted_swap_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        put(path, Table::Endpoints, "ep", b"old");
        let ready = path.join(READY);
        put(&ready, Table::Endpoints, "ep", b"new");
        // Crash after the old files went aside and `conf` moved in.
        std::fs::create_dir(path.join(OLD)).unwrap();
        for entry in std::fs::read_dir(path).unwrap() {
            let name = entry.unwrap().file_name();
            if is_sled_file(&name.to_string_lossy()) {
                std::fs::rename(path.join(&name), path.join(OLD).join(&name)).unwrap();
            }
        }
        std::fs::rename(ready.join("conf"), path.join("conf")).unwrap();
        finish(path).unwrap();
        assert_eq!(
            get(path, Table::Endpoints, "ep").as_deref(),
            Some(&b"new"[..])
        );
        assert!(!path.join(OLD).exists() && !ready.exists());
    }
}
