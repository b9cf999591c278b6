//! Erasure in cluster mode (EraseTenant and `tenant_retention`, both run
//! by the primary broker), with the same outcome as the embedded log's
//! redaction ([`super::erase`]): an erased event's payload leaves the
//! cluster, and a tombstone (id, type, tenant, publish time, reason) takes
//! its offset everywhere.
//!
//! JetStream cannot rewrite a message in place, so an erasure is:
//! 1. the tombstones recorded in the state (table `erasures`, key
//!    `t`+offset), each beside a mark that its message is still to be
//!    deleted (`p`+offset), the mark first: a write cut between the two
//!    (the state bucket takes at most 1000 changes in one atomic batch)
//!    leaves a mark without tombstone, which is dropped, never a tombstone
//!    whose message nobody deletes;
//! 2. this broker's copy of the log redacted (every other broker redacts
//!    its own once its copy of the state applied the tombstones:
//!    [`redact_applied`]);
//! 3. the messages deleted from the stream, overwritten on every replica
//!    (`jetstream::EventStream::erase`);
//! 4. the marks removed.
//!
//! From step 1 on, no broker serves the events once its copy of the state
//! holds the tombstones: reads from the stream leave out offsets with a
//! recorded tombstone, and a broker's copy of the log takes the tombstone
//! in place of the record, whether it copies it later (the log writer
//! reads the tombstones as it copies: `LogOp::Replicate`) or holds it
//! already (redacted). A crash between 1 and 4 leaves marks; the next
//! erasure, EraseTenant or retention pass on the primary deletes those
//! messages ([`Store::finish_erasures`]). A broker started later meets
//! holes in the stream where messages were deleted; its copy fills each
//! with its recorded tombstone, and no other hole. Retention's purge drops
//! the tombstones below the stream's new first offset with the events
//! ([`Store::prune_erasures`]).

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc, Weak},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    erase::redact, keys, state_db::StateDb, writer::Erased, Backend, Cluster, Inner, Local,
    Mutation, Removal, Store, Table,
};
use crate::{error::Result, model::Offset};

/// Key kinds in the `erasures` table: a tombstone, a message to delete.
const TOMBSTONE: u8 = b't';
const PENDING: u8 = b'p';
/// Most changes written to the state at once (an even number: a mark and
/// its tombstone stay in one write).
const WRITES: usize = 1000;
/// Most marks handled in one round of [`Store::finish_erasures`].
const FINISH_ROUND: usize = 1024;
/// The pause before redacting this broker's copy again after a failure.
const REDACT_RETRY: Duration = Duration::from_secs(1);

/// The `erasures` table's key of `kind` for `offset`.
fn key(kind: u8, offset: Offset) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(kind);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// The offset of a key of `kind`, if `key` is one.
fn offset_of(kind: u8, key: &[u8]) -> Option<Offset> {
    match key {
        [k, rest @ ..] if *k == kind => Some(Offset::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The offset of a tombstone's key in the `erasures` table, if `key` is
/// one.
pub(super) fn tombstone_offset(key: &[u8]) -> Option<Offset> {
    offset_of(TOMBSTONE, key)
}

/// The tombstones `state` records for offsets `from..=to`.
pub(super) fn recorded(
    state: &StateDb,
    from: Offset,
    to: Offset,
) -> Result<BTreeMap<Offset, Bytes>> {
    let table = state.table(Table::Erasures)?;
    let mut found = BTreeMap::new();
    for kv in table.range(key(TOMBSTONE, from)..=key(TOMBSTONE, to)) {
        let (k, v) = kv?;
        if let Some(offset) = tombstone_offset(&k) {
            found.insert(offset, Bytes::copy_from_slice(&v));
        }
    }
    Ok(found)
}

/// The tombstone `state` records for `offset`, if any (none on the
/// embedded backend, whose log holds its tombstones).
pub(super) fn recorded_at(state: &StateDb, offset: Offset) -> Result<Option<Bytes>> {
    Ok(state
        .table(Table::Erasures)?
        .get(key(TOMBSTONE, offset))?
        .map(|v| Bytes::copy_from_slice(&v)))
}

/// The tombstones recorded in `state`, as the log writer reads them while
/// it copies the cluster log.
pub(super) fn lookup(state: Arc<StateDb>) -> Erased {
    Arc::new(move |from, to| recorded(&state, from, to))
}

/// Replaces the records at `offsets` in `copy`, a broker's copy of the
/// cluster log, by the tombstones its state records for them. Offsets not
/// copied yet are left to the log writer, which copies them as tombstones.
async fn redact_copy(copy: &Local, offsets: &[Offset]) -> Result<usize> {
    let state = copy.state.clone();
    redact(copy, offsets, move |offset, record| {
        if keys::is_tombstone(record)? {
            return Ok(None);
        }
        Ok(recorded_at(&state, offset)?.map(|t| t.to_vec()))
    })
    .await
}

/// Redacts the store's copy of the log as its copy of the state applies
/// tombstones (their offsets arrive on `applied`), until `stop` or the
/// store is gone; counts each redaction ([`Store::erasures`]). A failed
/// redaction is tried again.
pub(super) async fn redact_applied(
    store: Weak<Inner>,
    mut applied: mpsc::UnboundedReceiver<Vec<Offset>>,
    stop: CancellationToken,
) {
    loop {
        let mut offsets = tokio::select! {
            () = stop.cancelled() => return,
            o = applied.recv() => match o {
                Some(o) => o,
                None => return,
            },
        };
        while let Ok(more) = applied.try_recv() {
            offsets.extend(more);
        }
        offsets.sort_unstable();
        offsets.dedup();
        loop {
            let Some(inner) = store.upgrade() else {
                return;
            };
            let Backend::Cluster(cluster) = &inner.backend else {
                return;
            };
            match redact_copy(&cluster.copy, &offsets).await {
                Ok(_) => {
                    inner.erasures.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "redacting this broker's copy of the cluster log failed; trying again"
                ),
            }
            drop(inner);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REDACT_RETRY) => {}
            }
        }
    }
}

impl Store {
    /// [`Store::erase`] in cluster mode: the steps of the module comment.
    pub(super) async fn erase_on_cluster(
        &self,
        cluster: &Cluster,
        offsets: &[Offset],
        why: Removal,
    ) -> Result<usize> {
        let _one = cluster.erasing.lock().await;
        let copy = &cluster.copy;
        let now = keys::unix_nanos(SystemTime::now());
        let mut writes = Vec::new();
        let mut erased = Vec::new();
        for &offset in offsets {
            if recorded_at(&copy.state, offset)?.is_some() {
                continue;
            }
            let Some(record) = copy.log.get(offset)? else {
                continue;
            };
            if keys::is_tombstone(&record)? {
                continue;
            }
            let tombstone = keys::tombstone(offset, &record, why.as_str(), now)?;
            writes.push(Mutation::put(
                Table::Erasures,
                key(PENDING, offset),
                Vec::new(),
            ));
            writes.push(Mutation::put(
                Table::Erasures,
                key(TOMBSTONE, offset),
                tombstone,
            ));
            erased.push(offset);
        }
        for chunk in writes.chunks(WRITES) {
            self.write(chunk.to_vec()).await?;
        }
        redact_copy(copy, &erased).await?;
        self.inner.erasures.fetch_add(1, Ordering::SeqCst);
        self.finish_locked(cluster).await?;
        Ok(erased.len())
    }

    /// In cluster mode: deletes from the stream the messages of erased
    /// events that an erasure cut short (a crash, an unreachable stream)
    /// left there, and returns how many; the primary calls it before each
    /// EraseTenant and each retention pass. Nothing to do on the embedded
    /// backend.
    pub async fn finish_erasures(&self) -> Result<usize> {
        let Backend::Cluster(cluster) = &self.inner.backend else {
            return Ok(0);
        };
        let _one = cluster.erasing.lock().await;
        self.finish_locked(cluster).await
    }

    /// [`Store::finish_erasures`], with the erasure lock held.
    async fn finish_locked(&self, cluster: &Cluster) -> Result<usize> {
        let state = &cluster.copy.state;
        let mut deleted = 0;
        loop {
            let marks: Vec<Offset> = state
                .table(Table::Erasures)?
                .scan_prefix([PENDING])
                .keys()
                .take(FINISH_ROUND)
                .map(|k| Ok(offset_of(PENDING, &k?)))
                .filter_map(Result::transpose)
                .collect::<Result<_>>()?;
            if marks.is_empty() {
                return Ok(deleted);
            }
            // A mark without its tombstone is from a write cut short:
            // that event was not erased, its message stays.
            let mut doomed = Vec::with_capacity(marks.len());
            for &offset in &marks {
                if let Some(tombstone) = recorded_at(state, offset)? {
                    doomed.push((offset, tombstone));
                }
            }
            cluster.log.erase(&doomed).await?;
            deleted += doomed.len();
            let unmark = marks
                .iter()
                .map(|&o| Mutation::delete(Table::Erasures, key(PENDING, o)))
                .collect();
            self.write(unmark).await?;
        }
    }

    /// In cluster mode, after retention purged the stream below `before`:
    /// forgets the tombstones (and marks) of the purged offsets, as the
    /// embedded log forgets the tombstones in the segments it deletes.
    pub(super) async fn prune_erasures(&self, cluster: &Cluster, before: Offset) -> Result<()> {
        let _one = cluster.erasing.lock().await;
        let Some(last) = before.get().checked_sub(1).map(Offset::new) else {
            return Ok(());
        };
        let table = cluster.copy.state.table(Table::Erasures)?;
        let mut doomed = Vec::new();
        for kind in [PENDING, TOMBSTONE] {
            for k in table
                .range(key(kind, Offset::ZERO)..=key(kind, last))
                .keys()
            {
                doomed.push(Mutation::delete(Table::Erasures, k?.to_vec()));
            }
        }
        drop(table);
        for chunk in doomed.chunks(WRITES) {
            self.write(chunk.to_vec()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::sync::oneshot;

    use super::*;
    use crate::{
        model::FIRST_OFFSET,
        store::{open_for_test, test_event, writer::LogOp, RawRecord},
    };

    /// Six events' records as a stream would hold them (offsets 1..=6).
    async fn records(dir: &std::path::Path) -> Vec<RawRecord> {
        let (source, _writer) = open_for_test(dir);
        for i in 1..=6 {
            source
                .append(vec![test_event(&format!("e{i}"))])
                .await
                .unwrap();
        }
        let records = source
            .local()
            .unwrap()
            .read_records(FIRST_OFFSET, 10)
            .unwrap();
        source.close();
        records
    }

    /// Has `store`'s log writer copy `records` up to `through` with
    /// `erased` as the recorded tombstones; the new head.
    async fn replicate(
        store: &Store,
        records: Vec<RawRecord>,
        through: u64,
        erased: &HashMap<Offset, Bytes>,
    ) -> Result<Offset> {
        let erased = erased.clone();
        let (reply, rx) = oneshot::channel();
        store
            .local()?
            .senders()?
            .log
            .send(LogOp::Replicate {
                records,
                through: Offset::new(through),
                erased: Arc::new(move |from, to| {
                    Ok(erased
                        .iter()
                        .filter(|(o, _)| (from..=to).contains(*o))
                        .map(|(o, t)| (*o, t.clone()))
                        .collect())
                }),
                reply,
            })
            .await
            .unwrap();
        rx.await.unwrap()
    }

    fn tombstone_of(r: &RawRecord) -> Bytes {
        keys::tombstone(r.offset, &r.record, "erased", 7)
            .unwrap()
            .into()
    }

    #[tokio::test]
    async fn a_copy_bridges_erased_offsets_only_and_never_copies_an_erased_record() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let all = records(dirs.0.path()).await;
        let (copy, _writer) = open_for_test(dirs.1.path());
        // Offset 3's message is deleted from the stream; 5's is still
        // there, but its tombstone is recorded; 6 is missing, unexplained.
        let erased: HashMap<Offset, Bytes> = [&all[2], &all[4]]
            .into_iter()
            .map(|r| (r.offset, tombstone_of(r)))
            .collect();
        let stream: Vec<RawRecord> = [0, 1, 3, 4].iter().map(|&i| all[i].clone()).collect();
        let head = replicate(&copy, stream, 6, &erased).await.unwrap();
        assert_eq!(head, Offset::new(6), "copied up to the unexplained hole");
        assert_eq!(copy.head(), Offset::new(6));
        let local = copy.local().unwrap();
        for (offset, erased) in [(1, false), (2, false), (3, true), (4, false), (5, true)] {
            let stored = local.log.get(Offset::new(offset)).unwrap().unwrap();
            assert_eq!(
                keys::is_tombstone(&stored).unwrap(),
                erased,
                "offset {offset}"
            );
            assert_eq!(local.get(Offset::new(offset)).unwrap().is_none(), erased);
        }
        // The hole at 6 stays a hole: nothing is copied past it...
        let head = replicate(&copy, Vec::new(), 7, &erased).await.unwrap();
        assert_eq!(head, Offset::new(6), "an unexplained hole is not bridged");
        // ...until the record comes (or its tombstone is recorded).
        let head = replicate(&copy, vec![all[5].clone()], 6, &erased)
            .await
            .unwrap();
        assert_eq!(head, Offset::new(7));
        // The erased events' ids stay in the copy's id index: a duplicate
        // of an erased event is found.
        assert_eq!(
            local
                .offset_of_id(&crate::model::EventId::new("e3"))
                .unwrap(),
            Some(Offset::new(3))
        );
    }

    #[tokio::test]
    async fn a_recorded_tombstone_redacts_a_copied_record_and_is_read_back() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let all = records(dirs.0.path()).await;
        let (copy, _writer) = open_for_test(dirs.1.path());
        replicate(&copy, all.clone(), 6, &HashMap::new())
            .await
            .unwrap();
        let local = copy.local().unwrap();
        assert!(local.get(Offset::new(2)).unwrap().is_some());
        // Recorded, not yet redacted: the lookups see it, the log does not.
        let tombstone = tombstone_of(&all[1]);
        copy.write(vec![
            Mutation::put(Table::Erasures, key(PENDING, Offset::new(2)), Vec::new()),
            Mutation::put(
                Table::Erasures,
                key(TOMBSTONE, Offset::new(2)),
                tombstone.to_vec(),
            ),
        ])
        .await
        .unwrap();
        let looked_up = lookup(local.state.clone())(Offset::new(1), Offset::new(6)).unwrap();
        assert_eq!(
            looked_up.keys().copied().collect::<Vec<_>>(),
            [Offset::new(2)]
        );
        let e = copy
            .erasure(Offset::new(2))
            .unwrap()
            .expect("the recorded tombstone");
        assert_eq!((e.event_id.as_str(), e.reason.as_str()), ("e2", "erased"));
        assert!(copy.erasure(Offset::new(3)).unwrap().is_none());
        // Offset 4 has no tombstone: redacting it changes nothing.
        let offsets = [Offset::new(2), Offset::new(4)];
        assert_eq!(redact_copy(local, &offsets).await.unwrap(), 1);
        assert!(local.get(Offset::new(2)).unwrap().is_none());
        assert!(local.get(Offset::new(4)).unwrap().is_some());
        assert_eq!(
            local.log.get(Offset::new(2)).unwrap().unwrap(),
            tombstone,
            "the recorded tombstone, byte for byte"
        );
        // Again: already a tombstone, nothing to do.
        assert_eq!(redact_copy(local, &offsets).await.unwrap(), 0);
    }

    #[test]
    fn keys_name_their_kind_and_offset() {
        let o = Offset::new(0x0102_0304);
        assert_eq!(tombstone_offset(&key(TOMBSTONE, o)), Some(o));
        assert_eq!(tombstone_offset(&key(PENDING, o)), None);
        assert_eq!(offset_of(PENDING, &key(PENDING, o)), Some(o));
        assert_eq!(tombstone_offset(b"t123"), None);
        assert!(key(TOMBSTONE, Offset::new(2)) < key(TOMBSTONE, Offset::new(256)));
    }
}
