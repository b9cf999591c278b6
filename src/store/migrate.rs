//! `stevedore migrate`: an embedded data directory moved into an empty
//! cluster installation (`backend = "jetstream"`), offsets kept.
//!
//! With the embedded broker stopped (sled's lock says so otherwise), the
//! event log is copied record by record, erased events' tombstones among
//! them, into the installation's stream, which is made to start at the
//! log's first offset ([`jetstream::prepare_import`]): every event keeps
//! its offset, on its id's subject (which claims the id), so re-publishing
//! it answers `duplicate = true` at any time. Then every state table's
//! records are copied as they are into the state bucket: endpoints (their
//! secrets sealed with the master key, so the cluster's brokers need the
//! same one), consumer positions, delivery records, attempts, the audit
//! trail. The copy goes through the cluster backend's own writes (a
//! [`Store`] opened on the cluster, its copy in `<data_dir>/cluster-copy`,
//! removed at the end).
//!
//! An installation whose stream holds events, or whose state bucket holds
//! records, is refused before anything is written. A migration that fails
//! half way is not resumed: the installation's stream and buckets must be
//! deleted (or another prefix chosen) before trying again.

use std::path::Path;

use super::{
    jetstream, open::LOG_DIR, replica::COPY_DIR, Mutation, RawRecord, Store, StoreConfig, Table,
    WriterHandle,
};
use crate::{
    error::{Error, Result},
    model::Offset,
};

/// Records copied per atomic batch (the server's limit is 1000 messages).
const BATCH: usize = 500;

/// What [`migrate`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The installation's stream.
    pub stream: String,
    /// Its state bucket.
    pub state_bucket: String,
    /// Records copied into the stream (tombstones of erased events too).
    pub events: u64,
    /// The first offset copied (the head when there was none).
    pub first: Offset,
    /// The next offset, on both sides.
    pub head: Offset,
    /// Records copied per state table, by table name.
    pub tables: Vec<(&'static str, u64)>,
}

/// Copies the embedded data directory `data.path` into the empty
/// installation `options` names (see the module's comment).
pub async fn migrate(data: &StoreConfig, options: &jetstream::ClusterOptions) -> Result<Migrated> {
    check_data_dir(&data.path)?;
    let (embedded, writer) = Store::open(data)?;
    let migrated = copy(&embedded, data, options).await;
    embedded.close();
    drop(embedded);
    join(writer).await;
    migrated
}

/// A stevedore data directory has its state store (`db`) and its event
/// log (`events/`).
fn check_data_dir(path: &Path) -> Result<()> {
    let has = |name: &str| path.join(name).exists();
    if !path.is_dir() || !has("db") || !has(LOG_DIR) {
        return Err(Error::FailedPrecondition(format!(
            "config key `data_dir`: {} is not a stevedore data directory (no state store `db` \
             and event log `{LOG_DIR}/` in it)",
            path.display()
        )));
    }
    Ok(())
}

/// The copy, from the open embedded store `embedded`.
async fn copy(
    embedded: &Store,
    data: &StoreConfig,
    options: &jetstream::ClusterOptions,
) -> Result<Migrated> {
    let local = embedded.embedded("migrating")?;
    let (first, head) = (local.first_offset()?, local.head());
    let stream = jetstream::prepare_import(options, first).await?;
    let (cluster, writer) = Store::open_cluster(options, data).await?;
    let state_bucket = jetstream::MirrorConfig::with_prefix(&options.prefix).bucket;
    let copied = async {
        refuse_unless_empty(&cluster, &state_bucket)?;
        let events = copy_events(embedded, &cluster, first, head).await?;
        let tables = copy_tables(embedded, &cluster).await?;
        Ok(Migrated {
            stream,
            state_bucket: state_bucket.clone(),
            events,
            first,
            head,
            tables,
        })
    }
    .await;
    cluster.close();
    drop(cluster);
    join(writer).await;
    match std::fs::remove_dir_all(data.path.join(COPY_DIR)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, "removing the migration's cluster copy")
        }
        _ => {}
    }
    copied
}

/// Refuses a state bucket that holds records (the copy reflects it once
/// opened), naming it and the first table that has some.
fn refuse_unless_empty(cluster: &Store, bucket: &str) -> Result<()> {
    for table in Table::ALL {
        let held = cluster.table(table)?.len();
        if held > 0 {
            return Err(Error::FailedPrecondition(format!(
                "bucket {bucket} already holds {held} {} record(s): migrate copies into an \
                 empty installation only; delete the installation's stream and buckets or \
                 choose another nats_prefix",
                table.tree_name()
            )));
        }
    }
    Ok(())
}

/// Copies the records of `first..head`, in batches at their own offsets;
/// returns how many.
async fn copy_events(
    embedded: &Store,
    cluster: &Store,
    first: Offset,
    head: Offset,
) -> Result<u64> {
    let local = embedded.embedded("migrating")?;
    let super::Backend::Cluster(target) = &cluster.inner.backend else {
        return Err(Error::Storage(
            "migrate: the target is not a cluster store".into(),
        ));
    };
    let mut from = first;
    let mut out = Vec::with_capacity(BATCH);
    let mut copied = 0;
    while from < head {
        out.clear();
        local.log.read_range(from, head, BATCH, &mut out)?;
        let records = out
            .drain(..)
            .map(|(offset, record)| {
                Ok(RawRecord {
                    offset,
                    record: record?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let Some(last) = records.last().map(|r| r.offset) else {
            return Err(Error::Corrupt(format!(
                "the event log has no record at offset {from}, below its head {head}"
            )));
        };
        target.log.import(&records).await?;
        copied += records.len() as u64;
        from = last + 1;
    }
    let stored = target.log.fresh_head().await?;
    if stored != head {
        return Err(Error::Storage(format!(
            "after copying, the stream's next offset is {stored}, not {head}"
        )));
    }
    Ok(copied)
}

/// Copies every state table's records as they are, a batch at a time;
/// returns how many per table.
async fn copy_tables(embedded: &Store, cluster: &Store) -> Result<Vec<(&'static str, u64)>> {
    use std::ops::Bound;
    let mut counts = Vec::with_capacity(Table::ALL.len());
    // The erasures table is cluster mode's (an embedded log holds its
    // tombstones, copied with the events).
    for table in Table::ALL.into_iter().filter(|t| *t != Table::Erasures) {
        let mut n = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let lower = after.take().map_or(Bound::Unbounded, Bound::Excluded);
            let batch = embedded
                .table(table)?
                .range::<Vec<u8>, _>((lower, Bound::Unbounded))
                .take(BATCH)
                .map(|kv| kv.map(|(k, v)| Mutation::put(table, k.to_vec(), v.to_vec())))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(last.key.clone());
            n += batch.len() as u64;
            cluster.write(batch).await?;
        }
        counts.push((table.tree_name(), n));
    }
    Ok(counts)
}

/// Waits, off the async workers, for a store's writers to finish.
async fn join(writer: WriterHandle) {
    if tokio::task::spawn_blocking(move || writer.join())
        .await
        .is_err()
    {
        tracing::error!("joining a store's writers failed");
    }
}
