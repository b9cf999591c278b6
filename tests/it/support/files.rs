//! The broker's files as a test sees them: walking the data directory,
//! searching its bytes, copying it, and reading the stored endpoint records.

use std::path::{Path, PathBuf};

use stevedore::store::{Store, StoreConfig};

/// Every file under `dir` (recursively) with its mode.
pub fn walk(dir: &Path, out: &mut Vec<(PathBuf, u32, bool)>) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let is_dir = meta.is_dir();
        out.push((entry.path(), meta.permissions().mode() & 0o777, is_dir));
        if is_dir {
            walk(&entry.path(), out);
        }
    }
}

/// The paths under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.into_iter()
        .filter(|(p, _, is_dir)| {
            !is_dir
                && std::fs::read(p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
        })
        .map(|(p, _, _)| p)
        .collect()
}

/// Every stored endpoint record's raw bytes.
pub fn stored_records(dir: &Path) -> Vec<Vec<u8>> {
    let (store, writer) = Store::open(&StoreConfig {
        path: dir.to_owned(),
        cache_bytes: 8 * 1024 * 1024,
        segment_bytes: 64 * 1024 * 1024,
        max_group: 16,
        commit_delay: std::time::Duration::ZERO,
        metrics: Default::default(),
        recovery: Default::default(),
        zero_fill: true,
    })
    .unwrap();
    let records = store
        .endpoints()
        .all()
        .map(|v| v.unwrap().to_vec())
        .collect();
    drop(store);
    writer.join();
    records
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
