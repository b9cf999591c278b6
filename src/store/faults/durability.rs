//! The whole store on a file system that counts `fdatasync`s or fails the
//! state store's: every acknowledged write was synced, and failing state
//! writes show in the store's health until one succeeds.

use super::*;
use crate::model::EndpointId;
use crate::store::{Mutation, Store, StoreConfig, Table};

/// The real file system, counting each file's `fdatasync`s; the state
/// store's (`db`) fail while `fail_state_syncs` is set.
#[derive(Clone, Default)]
struct CountingFs {
    syncs: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    fail_state_syncs: Arc<std::sync::atomic::AtomicBool>,
}

struct CountedFile {
    name: String,
    file: Arc<dyn FsFile>,
    syncs: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    fail_state_syncs: Arc<std::sync::atomic::AtomicBool>,
}

impl CountingFs {
    /// `fdatasync`s so far of the files whose name ends with `suffix`.
    fn syncs(&self, suffix: &str) -> u64 {
        let syncs = self.syncs.lock().unwrap();
        syncs
            .iter()
            .filter(|(n, _)| n.ends_with(suffix))
            .map(|(_, c)| c)
            .sum()
    }
}

impl Fs for CountingFs {
    fn open(&self, path: &std::path::Path, create: bool) -> std::io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(CountedFile {
            name: path.display().to_string(),
            file: RealFs.open(path, create)?,
            syncs: self.syncs.clone(),
            fail_state_syncs: self.fail_state_syncs.clone(),
        }))
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        RealFs.remove(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

impl FsFile for CountedFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.name.ends_with("/db")
            && self
                .fail_state_syncs
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(std::io::Error::other("injected fdatasync failure"));
        }
        self.file.sync_data()?;
        *self
            .syncs
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += 1;
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
}

/// A whole store's configuration on `path`, for the tests that open one.
fn store_config(path: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: path.to_owned(),
        cache_bytes: 1 << 20,
        segment_bytes: 1 << 20,
        max_group: 16,
        commit_delay: Duration::ZERO,
        metrics: Default::default(),
        recovery: Recovery::Refuse,
        zero_fill: false,
    }
}

/// A publish and a state write are each answered only after the file they
/// wrote was `fdatasync`'d (sled's `flush()` alone does not sync on
/// Linux). Checked against removing either sync: this test then fails.
#[tokio::test]
async fn every_acknowledged_write_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let fs = CountingFs::default();
    let config = store_config(dir.path());
    let (store, writer) = Store::open_on(&config, Arc::new(fs.clone())).unwrap();
    for i in 0..3 {
        let (log, db) = (fs.syncs(".log"), fs.syncs("/db"));
        store
            .append(vec![test_event(&format!("e{i}"))])
            .await
            .unwrap();
        assert!(
            fs.syncs(".log") > log,
            "an append is synced before its answer"
        );
        store
            .write(vec![Mutation::put(Table::Endpoints, format!("k{i}"), "v")])
            .await
            .unwrap();
        assert!(
            fs.syncs("/db") > db,
            "a state write is synced before its answer"
        );
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

/// A failed state sync is reported in the store's health (the broker goes
/// NOT_SERVING on it) and the next successful state write clears it.
/// Checked against making `writer::report_state` do nothing: this test then
/// fails (mutation testing found no test that did).
#[tokio::test]
async fn a_failing_state_write_shows_in_health_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let fs = CountingFs::default();
    let config = store_config(dir.path());
    let (store, writer) = Store::open_on(&config, Arc::new(fs.clone())).unwrap();
    let health = store.watch_health();
    let fail = |on: bool| {
        fs.fail_state_syncs
            .store(on, std::sync::atomic::Ordering::SeqCst)
    };
    let put = |i: u32| vec![Mutation::put(Table::Endpoints, format!("k{i}"), "v")];
    store.write(put(0)).await.unwrap();
    assert!(health.borrow().problem().is_none());

    fail(true);
    assert!(
        store.write(put(1)).await.is_err(),
        "the failed sync is the answer"
    );
    let problem = health.borrow().problem().map(str::to_owned);
    assert!(
        problem
            .as_deref()
            .is_some_and(|p| p.contains("state writes are failing")),
        "{problem:?}"
    );

    fail(false);
    store.write(put(2)).await.unwrap();
    assert!(health.borrow().problem().is_none(), "a success clears it");
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

/// Once state syncs work again, the store says so by itself (the state
/// writer probes, reopening the database), without waiting for a caller's
/// write; writes then succeed and survive a restart. Fails on the code
/// before the probe: the health stayed failing until the next write.
#[tokio::test]
async fn failing_state_writes_heal_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let fs = CountingFs::default();
    let config = store_config(dir.path());
    let (store, writer) = Store::open_on(&config, Arc::new(fs.clone())).unwrap();
    let mut health = store.watch_health();
    let fail = |on: bool| {
        fs.fail_state_syncs
            .store(on, std::sync::atomic::Ordering::SeqCst)
    };
    store
        .endpoints()
        .put(&EndpointId::new("a"), b"1".to_vec())
        .await
        .unwrap();
    fail(true);
    assert!(store
        .endpoints()
        .put(&EndpointId::new("b"), b"2".to_vec())
        .await
        .is_err());
    assert!(health.borrow_and_update().state.is_some());
    fail(false);
    tokio::time::timeout(
        Duration::from_secs(10),
        health.wait_for(|h| h.state.is_none()),
    )
    .await
    .expect("the health clears by itself")
    .unwrap();
    store
        .endpoints()
        .put(&EndpointId::new("c"), b"3".to_vec())
        .await
        .unwrap();
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
    let (store, writer) = Store::open(&config).unwrap();
    for id in ["a", "c"] {
        assert!(
            store
                .endpoints()
                .get(&EndpointId::new(id))
                .unwrap()
                .is_some(),
            "{id}"
        );
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}
