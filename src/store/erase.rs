//! Erasing events' payloads while the broker runs (tenant erasure and
//! per-tenant retention), over the log's redaction ([`super::log`]).
//!
//! An erased event's record is replaced by a *tombstone* at the same
//! offset ([`keys::tombstone`]): its id, tenant, type and publish time
//! remain; its payload, attributes, ordering key and `occurred_at` are
//! gone from every file of the log. Readers of events ([`Store::get`],
//! [`super::Local::meta`], [`Store::read_records`]) treat a tombstone as an
//! event the log no longer has; [`Store::erasure`] reads what it says.
//! The id stays in the id index: publishing the same id again is
//! answered as a duplicate of the erased event, so a producer's retry
//! cannot bring the erased content back.
//!
//! An erasure is planned first ([`Store::unwanted`]: the offsets to go),
//! so the caller can settle what is pending for them (dead deliveries)
//! before they disappear, then carried out ([`Store::erase`]). In cluster
//! mode the tombstones live in the state and the events' messages are
//! deleted from the stream: see [`super::cluster_erase`].

use std::{
    sync::atomic::Ordering,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::oneshot;

use super::{
    cluster_erase, keys, writer::LogOp, Backend, Local, Mutation, StateWrites, Store, Table,
};
use crate::{
    error::{Error, Result},
    model::{EndpointId, EventId, EventMeta, Offset},
};

/// Why events are erased; a tombstone keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// A global admin erased the tenant's data (EraseTenant).
    Erased,
    /// The tenant's retention (`tenant_retention`) removed them.
    Expired,
}

impl Removal {
    /// The reason as stored and as delivery records say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Erased => "erased",
            Removal::Expired => "expired",
        }
    }
}

/// An event planned for erasure.
#[derive(Debug, Clone)]
pub struct Unwanted {
    /// Its offset.
    pub offset: Offset,
    /// Its id.
    pub event_id: EventId,
    /// Its type, attributes and tenant (for endpoints' filters).
    pub meta: EventMeta,
}

/// What a tombstone says of the event it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The event's id.
    pub event_id: EventId,
    /// Its tenant (`""`: none).
    pub tenant: String,
    /// Its type.
    pub event_type: String,
    /// `erased` or `expired` ([`Removal::as_str`]).
    pub reason: String,
    /// When it was erased.
    pub erased_at: SystemTime,
}

impl Store {
    /// The events of `tenant` from `from` (or the first offset) up to
    /// `until` (at most the head), not erased yet: an erasure's plan.
    pub fn unwanted(&self, tenant: &str, from: Offset, until: Offset) -> Result<Vec<Unwanted>> {
        let until = until.min(self.head());
        let mut found = Vec::new();
        let mut next = from;
        while next < until {
            let batch = self.local()?.read_records(next, 4096)?;
            let Some(last) = batch.last().map(|r| r.offset) else {
                break;
            };
            for r in batch.iter().filter(|r| r.offset < until) {
                let meta = keys::decode_meta_record(r.offset, &r.record)?;
                if meta.tenant == tenant {
                    found.push(Unwanted {
                        offset: r.offset,
                        event_id: EventId::new(keys::decode_event_id(r.offset, &r.record)?),
                        meta,
                    });
                }
            }
            next = last + 1;
        }
        Ok(found)
    }

    /// Replaces the events at `offsets` (ascending) by tombstones saying
    /// `why`, while appends and reads go on; returns how many it replaced
    /// (already erased ones are left as they are). In cluster mode the
    /// tombstones go to the state and the events' messages leave the
    /// stream ([`super::cluster_erase`]).
    pub async fn erase(&self, offsets: &[Offset], why: Removal) -> Result<usize> {
        let local = match &self.inner.backend {
            Backend::Embedded(local) => local,
            Backend::Cluster(cluster) => return self.erase_on_cluster(cluster, offsets, why).await,
        };
        let now = keys::unix_nanos(SystemTime::now());
        let replaced = redact(local, offsets, move |offset, record| {
            if keys::is_tombstone(record)? {
                return Ok(None);
            }
            keys::tombstone(offset, record, why.as_str(), now).map(Some)
        })
        .await?;
        self.inner.erasures.fetch_add(1, Ordering::SeqCst);
        Ok(replaced)
    }

    /// What the tombstone at `offset` says, if the event there was erased
    /// (`None` for a live event or an offset not in the log). In cluster
    /// mode the state records it ([`super::cluster_erase`]); a tombstone
    /// copied in by `stevedore migrate` is in the log, as in embedded mode.
    pub fn erasure(&self, offset: Offset) -> Result<Option<Erasure>> {
        let local = self.local()?;
        let record = match cluster_erase::recorded_at(&local.state, offset)? {
            Some(record) => record,
            None if offset >= self.head() => return Ok(None),
            None => match local.log.get(offset)? {
                Some(record) => record,
                None => return Ok(None),
            },
        };
        Ok(
            keys::decode_tombstone(offset, &record)?.map(|(event_id, tenant, e)| Erasure {
                event_id: EventId::new(event_id),
                tenant,
                event_type: e.event_type,
                reason: e.reason,
                erased_at: UNIX_EPOCH + Duration::from_nanos(e.erased_at_nanos),
            }),
        )
    }

    /// Adds to `writes` the deletion of every attempt recorded for
    /// `endpoint_id`'s delivery of the event at `offset` (they hold
    /// response bodies).
    pub fn delete_attempts(
        &self,
        writes: &mut StateWrites,
        endpoint_id: &EndpointId,
        offset: Offset,
    ) -> Result<()> {
        for k in self
            .table(Table::Attempts)?
            .scan_prefix(keys::scoped_offset_key(endpoint_id.as_str(), offset))
            .keys()
        {
            writes
                .0
                .push(Mutation::delete(Table::Attempts, k?.to_vec()));
        }
        Ok(())
    }

    /// How many erasures have finished. A cache of events read from the
    /// log keeps an entry only while this has not moved since the read.
    pub fn erasures(&self) -> u64 {
        self.inner.erasures.load(Ordering::SeqCst)
    }
}

/// Seals the segment `local`'s log appends to if it holds any of
/// `offsets` (ascending), so that every one of them in the log is in a
/// sealed segment, then replaces their records with what `replace` makes
/// of each (`None`: keep it) off the async workers; returns how many it
/// replaced. Appends and reads go on meanwhile.
pub(super) async fn redact(
    local: &Local,
    offsets: &[Offset],
    mut replace: impl FnMut(Offset, &[u8]) -> Result<Option<Vec<u8>>> + Send + 'static,
) -> Result<usize> {
    let Some(&last) = offsets.last() else {
        return Ok(0);
    };
    let (reply, rx) = oneshot::channel();
    local
        .senders()?
        .log
        .send(LogOp::Seal {
            before: last + 1,
            reply,
        })
        .await
        .map_err(|_| Error::ShuttingDown)?;
    rx.await.map_err(|_| Error::ShuttingDown)??;
    let log = local.log.clone();
    let offsets = offsets.to_vec();
    let replaced = tokio::task::spawn_blocking(move || log.redact(&offsets, &mut replace))
        .await
        .map_err(|e| Error::task("erasure", e))??;
    Ok(replaced.len())
}
