//! The baseline `stevedore-bench publish` measures the broker against:
//! the state engine's own work for a group of events (insert the encoded
//! records and their id entries, `flush()`, `fdatasync` the data file)
//! and nothing else, with the settings [`super::Store::open`] gives it.
//! It stays the engine the events used to live in, so the figures in
//! BENCHMARKS.md compare with the earlier ones.

use std::{fs::File, path::Path, time::Instant};

use crate::{error::Result, model::Offset};

/// How reports name the baseline.
pub const LABEL: &str = "raw sled + fsync loop";

/// What it does, for a report's notes (`group` records per commit).
pub fn describe(group: usize) -> String {
    format!(
        "baseline: the same encoded records inserted straight into sled (events tree + id \
         index, same sled config), {group} per group, each group followed by `flush()` and \
         `fdatasync` of the data file"
    )
}

/// Inserts `records` (offset, id, encoded event record) in a new database
/// at `path`, `group` per durable commit; returns records per second.
pub fn insert_rate(
    path: &Path,
    records: &[(Offset, String, Vec<u8>)],
    group: usize,
) -> Result<f64> {
    std::fs::create_dir_all(path)?;
    // As `Store::open` configures it.
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(Some(500))
        .segment_size(8 * 1024 * 1024)
        .open()?;
    let events = db.open_tree("events")?;
    let ids = db.open_tree("event_ids")?;
    let data = File::open(path.join("db"))?;
    let started = Instant::now();
    for chunk in records.chunks(group.max(1)) {
        let mut eb = sled::Batch::default();
        let mut ib = sled::Batch::default();
        for (offset, id, record) in chunk {
            eb.insert(&offset.to_be_bytes(), record.as_slice());
            ib.insert(id.as_bytes(), &offset.to_be_bytes());
        }
        events.apply_batch(eb)?;
        ids.apply_batch(ib)?;
        db.flush()?;
        data.sync_data()?;
    }
    let elapsed = started.elapsed();
    Ok(records.len() as f64 / elapsed.as_secs_f64())
}
