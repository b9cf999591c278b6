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
//! before they disappear, then carried out ([`Store::erase`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::{keys, writer::LogOp, Mutation, StateWrites, Store, Table};
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
    /// (already erased ones are left as they are). The writer first seals
    /// the segment being appended to if it holds any of them.
    pub async fn erase(&self, offsets: &[Offset], why: Removal) -> Result<usize> {
        let Some(&last) = offsets.last() else {
            return Ok(0);
        };
        let local = self.embedded("tenant erasure is")?;
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
        let now = keys::unix_nanos(SystemTime::now());
        let replaced = tokio::task::spawn_blocking(move || {
            log.redact(&offsets, &mut |offset, record| {
                if keys::is_tombstone(record)? {
                    return Ok(None);
                }
                keys::tombstone(offset, record, why.as_str(), now).map(Some)
            })
        })
        .await
        .map_err(|e| Error::task("erasure", e))??;
        self.inner
            .erasures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(replaced.len())
    }

    /// What the tombstone at `offset` says, if the event there was erased
    /// (`None` for a live event or an offset not in the log; always `None`
    /// in cluster mode, where nothing is erased yet).
    pub fn erasure(&self, offset: Offset) -> Result<Option<Erasure>> {
        if offset >= self.head() || self.is_cluster() {
            return Ok(None);
        }
        let Some(record) = self.local()?.log.get(offset)? else {
            return Ok(None);
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
        self.inner
            .erasures
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}
