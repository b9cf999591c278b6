//! The state database (sled) behind a handle that can be reopened in place.
//!
//! sled 0.34 keeps the first I/O error of its background writes as a
//! global error and fails every later operation with it: after a full disk
//! (or any failed write) is cleared, that database never takes a write
//! again. So the state writer, while state writes fail, probes the
//! database now and then (a small write, flushed and fsync'd) and, when the
//! probe fails, reopens it: the old handle is taken out of the slot and
//! dropped (sled's lock on its directory goes with the last reference to
//! it), and a new one is opened from what is on disk. Writes in flight on
//! the old handle fail; later ones go to the new one. Reads that find the
//! slot empty (while reopening) fail with `UNAVAILABLE`.

use std::{
    ops::Deref,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use super::{log::fs::FsFile, Table, Tables};
use crate::error::{Error, Result};

/// One open sled database and its trees.
pub(super) struct OpenDb {
    pub(super) db: sled::Db,
    pub(super) tables: Tables,
}

/// The state database, reopened in place after a failed write.
pub(super) struct StateDb {
    slot: RwLock<Option<Arc<OpenDb>>>,
    path: PathBuf,
    cache_bytes: u64,
    /// sled's data file, fsync'd by every probe.
    data_file: Arc<dyn FsFile>,
    probes: std::sync::atomic::AtomicU64,
}

/// The key [`StateDb::probe`] writes, in sled's default tree (no table
/// uses it).
const PROBE_KEY: &[u8] = b"stevedore-state-probe";

/// A state table, holding the database it belongs to open.
pub(in crate::store) struct TableRef {
    open: Arc<OpenDb>,
    table: Table,
}

impl Deref for TableRef {
    type Target = sled::Tree;

    fn deref(&self) -> &sled::Tree {
        self.open.tables.get(self.table)
    }
}

impl StateDb {
    pub(super) fn new(
        db: sled::Db,
        tables: Tables,
        path: &Path,
        cache_bytes: u64,
        data_file: Arc<dyn FsFile>,
    ) -> Self {
        Self {
            slot: RwLock::new(Some(Arc::new(OpenDb { db, tables }))),
            path: path.to_owned(),
            cache_bytes,
            data_file,
            probes: Default::default(),
        }
    }

    /// The open database; `UNAVAILABLE` while it is being reopened.
    pub(super) fn current(&self) -> Result<Arc<OpenDb>> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::Unavailable(
                    "the state database is being reopened after a failed write; retry".into(),
                )
            })
    }

    /// Whether `open` is the database in the slot (not one replaced since).
    pub(super) fn is_current(&self, open: &Arc<OpenDb>) -> bool {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|now| Arc::ptr_eq(now, open))
    }

    /// `table` of the open database.
    pub(super) fn table(&self, table: Table) -> Result<TableRef> {
        Ok(TableRef {
            open: self.current()?,
            table,
        })
    }

    /// sled's data file (fsync'd after every group commit).
    pub(super) fn data_file(&self) -> &Arc<dyn FsFile> {
        &self.data_file
    }

    /// Whether the open database takes a write: one small write, flushed
    /// and fsync'd.
    pub(super) fn probe(&self) -> Result<()> {
        let open = self.current()?;
        let n = self
            .probes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        open.db.insert(PROBE_KEY, &n.to_be_bytes())?;
        open.db.flush()?;
        self.data_file.sync_data()?;
        Ok(())
    }

    /// Drops the open database and opens it again from disk. Waits (a
    /// while, see [`super::open_sled`]) for other holders of the old one
    /// to let go of it; if they do not, the slot stays empty and the next
    /// call tries again.
    pub(super) fn reopen(&self) -> Result<()> {
        let old = self.slot.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
        super::remove_unfinished_snapshots(&self.path)?;
        let db = super::open_sled(super::sled_config(&self.path, self.cache_bytes), &self.path)?;
        let tables = Tables::open(&db)?;
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(OpenDb { db, tables }));
        tracing::warn!(path = %self.path.display(), "reopened the state database");
        Ok(())
    }

    /// Makes state writes work again, if they can: probes the open
    /// database, and reopens it when the probe fails (sled keeps failing
    /// after one I/O error), then probes the new one.
    pub(super) fn heal(&self) -> Result<()> {
        match self.probe() {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(error = %e, "state probe failed; reopening"),
        }
        self.reopen()?;
        self.probe()
    }
}
