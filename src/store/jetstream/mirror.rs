//! The state tables in cluster mode: one replicated key-value bucket
//! (`<PREFIX>_STATE`) holds every table's records, and each broker keeps a
//! copy of it in its own local state tables, which its reads use.
//!
//! - A write ([`StateMirror::submit`], the store's `submit_write` in
//!   cluster mode) is published to the bucket: the mutations queued
//!   together are one atomic batch (all of them stored, or none; a group of
//!   more than [`SERVER_MAX_BATCH`] is several). It is answered once the
//!   bucket's quorum stored it *and* this broker's copy has applied it, so
//!   a caller reads its own writes.
//! - The copy follows the bucket with a watch (the last value of every key,
//!   then every change, in the bucket's order) and applies what arrives to
//!   the local tables through their writer. Opening waits until the copy
//!   holds everything the bucket held when it was opened.
//!
//! - Tombstones the copy applies (cluster mode's erasures,
//!   `store::cluster_erase`) are handed on, once applied, to whoever
//!   redacts this broker's copy of the log.
//!
//! Keys are `<table>.k<hex of the table's key>`: the table's tree name and
//! its key bytes, hex so any bytes make a valid key. A delete is the
//! bucket's delete marker. Other brokers' writes reach this copy a moment
//! after they were answered; a reader may see the mutations of one batch
//! arrive one by one.

use std::time::Duration;

use async_nats::{jetstream::kv, Client, HeaderMap};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{bucket, log::SERVER_MAX_BATCH, publish, wire::KV_OPERATION, JetStreamError};
use crate::{
    error::{Error, Result},
    model::Offset,
    store::{
        cluster_erase,
        writer::StateOp,
        {Mutation, Table},
    },
};

/// A deletion's [`KV_OPERATION`].
const KV_DELETE: &str = "DEL";
/// How long a write waits for this broker's copy to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening waits for the copy to catch up with the bucket.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Queued writes.
const QUEUE: usize = 1024;

/// Where the state lives on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The bucket: `<PREFIX>_STATE`.
    pub bucket: String,
    /// Its replicas.
    pub replicas: usize,
}

impl MirrorConfig {
    /// The state of the installation named `prefix`, R3.
    pub fn with_prefix(prefix: &str) -> Self {
        MirrorConfig {
            bucket: bucket::name(prefix, "STATE"),
            replicas: 3,
        }
    }
}

/// The write side of the state in cluster mode; cheap to clone.
#[derive(Clone)]
pub(in crate::store) struct StateMirror {
    writes: mpsc::Sender<StateOp>,
    /// The bucket's stream and the revision this broker's copy applied,
    /// for [`StateMirror::caught_up`].
    client: Client,
    stream: String,
    applied: watch::Receiver<u64>,
}

impl StateMirror {
    /// Opens (or creates) the bucket, copies it into the local tables whose
    /// writer takes `local`, and starts the writer and the copy, both until
    /// `stop`. The offsets of the tombstones the copy applies go to
    /// `erased`.
    pub(in crate::store) async fn open(
        client: &Client,
        config: &MirrorConfig,
        local: mpsc::Sender<StateOp>,
        erased: mpsc::UnboundedSender<Vec<Offset>>,
        stop: CancellationToken,
    ) -> std::result::Result<Self, JetStreamError> {
        let name = config.bucket.as_str();
        let (store, last) = bucket::open_atomic(client, name, config.replicas).await?;
        let watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| bucket::error(name, "watch bucket", e, true))?;
        let (applied_tx, mut applied) = watch::channel(0u64);
        tokio::spawn(copy(
            name.to_owned(),
            watch,
            Applier { local, erased },
            applied_tx,
            stop.clone(),
        ));
        let loaded = tokio::time::timeout(LOAD_TIMEOUT, applied.wait_for(|&a| a >= last))
            .await
            .is_ok_and(|r| r.is_ok());
        if !loaded {
            return Err(bucket::error(
                name,
                "copy bucket",
                format!("the local copy did not reach revision {last} within {LOAD_TIMEOUT:?}"),
                true,
            ));
        }
        tracing::info!(
            bucket = name,
            revision = last,
            "state copied from the cluster"
        );
        let (writes, queue) = mpsc::channel(QUEUE);
        let copied = applied.clone();
        tokio::spawn(write(client.clone(), name.to_owned(), queue, applied, stop));
        Ok(Self {
            writes,
            client: client.clone(),
            stream: format!("KV_{name}"),
            applied: copied,
        })
    }

    /// Waits (up to `within`) until this broker's copy holds every state
    /// write the cluster has stored by now, whichever broker made it: a
    /// broker taking endpoints over from another reads their positions and
    /// delivery records only after what the other recorded last.
    pub(in crate::store) async fn caught_up(
        &self,
        within: Duration,
    ) -> std::result::Result<(), JetStreamError> {
        let failed = |what, e: &dyn std::fmt::Display| bucket::error(&self.stream, what, e, true);
        let last = async_nats::jetstream::new(self.client.clone())
            .get_stream(&self.stream)
            .await
            .map_err(|e| failed("read bucket stream", &e))?
            .cached_info()
            .state
            .last_sequence;
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(within, applied.wait_for(|&a| a >= last))
            .await
            .map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(failed("copy bucket", &"the copy stopped")),
            Err(_) => Err(failed(
                "copy bucket",
                &format!("the local copy did not reach revision {last} within {within:?}"),
            )),
        }
    }

    /// Queues `mutations`; the receiver gets the outcome once they are
    /// stored on the cluster and applied here.
    pub(in crate::store) async fn submit(
        &self,
        mutations: Vec<Mutation>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(StateOp { mutations, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }
}

/// The bucket key of `table`'s `key`.
fn bucket_key(table: Table, key: &[u8]) -> String {
    let mut out = String::with_capacity(table.tree_name().len() + 2 + 2 * key.len());
    out.push_str(table.tree_name());
    out.push_str(".k");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in key {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The table and key of a bucket key, if it is one of [`bucket_key`]'s.
fn table_key(key: &str) -> Option<(Table, Vec<u8>)> {
    let (tree, hex) = key.split_once(".k")?;
    let table = Table::ALL.into_iter().find(|t| t.tree_name() == tree)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((table, key))
}

/// Publishes queued writes, a group at a time, and answers each once the
/// copy applied it.
async fn write(
    client: Client,
    bucket: String,
    mut queue: mpsc::Receiver<StateOp>,
    mut applied: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut group: Vec<StateOp> = Vec::new();
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            op = queue.recv() => match op {
                Some(op) => op,
                None => return,
            },
        };
        let mut size = first.mutations.len();
        group.push(first);
        while size < SERVER_MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => {
                    size += op.mutations.len();
                    group.push(op);
                }
                Err(_) => break,
            }
        }
        let outcome = publish_group(&client, &bucket, &group, &mut applied).await;
        for op in group.drain(..) {
            let _ = op
                .reply
                .send(outcome.as_ref().map(|_| ()).map_err(Error::share));
        }
    }
}

/// Publishes `group`'s mutations (atomic batches of at most
/// [`SERVER_MAX_BATCH`]) and waits until the copy applied them.
async fn publish_group(
    client: &Client,
    bucket: &str,
    group: &[StateOp],
    applied: &mut watch::Receiver<u64>,
) -> Result<()> {
    let messages: Vec<(String, HeaderMap, Bytes)> = group
        .iter()
        .flat_map(|op| &op.mutations)
        .map(|m| {
            let subject = format!("$KV.{bucket}.{}", bucket_key(m.table, &m.key));
            let mut headers = HeaderMap::new();
            let payload = match &m.value {
                Some(v) => Bytes::copy_from_slice(v),
                None => {
                    headers.insert(KV_OPERATION, KV_DELETE);
                    Bytes::new()
                }
            };
            (subject, headers, payload)
        })
        .collect();
    let mut last = 0;
    for chunk in messages.chunks(SERVER_MAX_BATCH) {
        last = match chunk {
            [(subject, headers, payload)] => {
                const WHAT: &str = "state write";
                let ack = publish::request(client, subject, headers.clone(), payload.clone(), WHAT)
                    .await?;
                if let Some(e) = ack.error {
                    return Err(e.into_error(WHAT).into());
                }
                ack.seq
            }
            _ => {
                let first =
                    publish::atomic(client, chunk.iter().map(|(s, h, p)| (s.as_str(), h, p)))
                        .await?;
                first.get() + chunk.len() as u64 - 1
            }
        };
    }
    match tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|&a| a >= last)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(Error::ShuttingDown),
        Err(_) => Err(Error::Unavailable(format!(
            "the state write is stored on the cluster (revision {last}), but this broker's copy \
             did not apply it within {APPLY_TIMEOUT:?}"
        ))),
    }
}

/// Where the copy's entries go: the local tables' writer, and the
/// offsets of applied tombstones.
struct Applier {
    local: mpsc::Sender<StateOp>,
    erased: mpsc::UnboundedSender<Vec<Offset>>,
}

/// Applies the bucket's entries to the local tables as they arrive, a
/// group at a time, and publishes the last applied revision.
async fn copy(
    bucket: String,
    mut watch: kv::Watch,
    to: Applier,
    applied: watch::Sender<u64>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            entry = watch.next() => entry,
        };
        let mut entries = match first {
            Some(Ok(entry)) => vec![entry],
            Some(Err(e)) => {
                tracing::warn!(bucket, error = %e, "watching the state bucket failed; watching on");
                continue;
            }
            None => {
                tracing::error!(
                    bucket,
                    "the state bucket's watch ended: this broker's copy of the state stops here"
                );
                return;
            }
        };
        while entries.len() < SERVER_MAX_BATCH {
            match tokio::time::timeout(Duration::ZERO, watch.next()).await {
                Ok(Some(Ok(entry))) => entries.push(entry),
                _ => break,
            }
        }
        let last = entries.last().map_or(0, |e| e.revision);
        let mutations = entries
            .into_iter()
            .filter_map(|entry| {
                let Some((table, key)) = table_key(&entry.key) else {
                    tracing::warn!(
                        bucket,
                        key = entry.key,
                        "a foreign key in the state bucket: left alone"
                    );
                    return None;
                };
                Some(match entry.operation {
                    kv::Operation::Put => Mutation::put(table, key, entry.value.to_vec()),
                    kv::Operation::Delete | kv::Operation::Purge => Mutation::delete(table, key),
                })
            })
            .collect::<Vec<_>>();
        let tombstones: Vec<Offset> = mutations
            .iter()
            .filter(|m| m.table == Table::Erasures && m.value.is_some())
            .filter_map(|m| cluster_erase::tombstone_offset(&m.key))
            .collect();
        if !mutations.is_empty() && !apply(&bucket, &to.local, mutations, &stop).await {
            return;
        }
        // Applied (readers see them): the copy of the log is redacted next.
        if !tombstones.is_empty() {
            let _ = to.erased.send(tombstones);
        }
        applied.send_replace(last);
    }
}

/// Applies `mutations` to the local tables, trying again while their
/// writer fails (a full disk, say); whether to go on.
async fn apply(
    bucket: &str,
    local: &mpsc::Sender<StateOp>,
    mutations: Vec<Mutation>,
    stop: &CancellationToken,
) -> bool {
    loop {
        let (reply, rx) = oneshot::channel();
        let op = StateOp {
            mutations: mutations.clone(),
            reply,
        };
        if local.send(op).await.is_err() {
            return false;
        }
        match rx.await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::error!(bucket, error = %e, "applying the cluster's state locally failed; trying again");
            }
            Err(_) => return false,
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_are_valid_and_come_back() {
        for (table, key) in [
            (Table::Endpoints, b"ep-1".to_vec()),
            (Table::Deliveries, vec![0, 1, 0xff, b'.', b'*', b'>']),
            (Table::Consumers, Vec::new()),
        ] {
            let k = bucket_key(table, &key);
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'),
                "{k}"
            );
            assert_eq!(table_key(&k), Some((table, key)));
        }
        assert_eq!(table_key("endpoints.kzz"), None);
        assert_eq!(table_key("nope.k00"), None);
        assert_eq!(table_key("endpoints.k0"), None);
    }
}
