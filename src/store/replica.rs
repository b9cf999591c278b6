//! A broker's local copy of the cluster log.
//!
//! In cluster mode the stream on the cluster is the record; each broker
//! also copies it, in order, into an embedded log of its own (in
//! `<data_dir>/cluster-copy`, emptied at every start), so the subsystems
//! that read under a lock or in a synchronous poll (durable consumers,
//! webhook delivery, the admin queries) read it as they read the embedded
//! log. The store's head is this copy's: an event is handed to readers on
//! a broker once its copy holds it, a moment after the quorum's ack.
//!
//! The copier follows the stream's head and reads what is new with batched
//! direct gets ([`jetstream::EventStream::read_records`]); the log writer
//! writes each record at its own offset ([`super::writer::LogOp`]'s
//! `Replicate`). An erased event (cluster mode's erasure,
//! [`super::cluster_erase`]) is copied as the tombstone recorded for it in
//! the state, whether its message is still in the stream or deleted
//! already; any other gap stops the copy. When retention (on the primary)
//! purges the stream's oldest events, every copy drops them too, as soon
//! as it sees the stream's first offset move (within [`TICK`]); a copy
//! started after a purge begins at the stream's first offset. A copy that
//! lags behind a purge (it still needs events the stream no longer has),
//! or a stream whose events were removed by hand in the middle, cannot be
//! copied past the hole: the broker says so in its health (after
//! [`GAP_GRACE`], in which the state copy may bring the tombstones that
//! explain it), and a restart (which starts the copy afresh) mends it.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    jetstream::{EventStream, Extent},
    log::EventLog,
    writer::{Erased, LogOp},
    StoreHealth,
};
use crate::model::Offset;

/// How often the stream's first offset is looked at when nothing else
/// wakes the copier.
const TICK: Duration = Duration::from_secs(1);
/// Most records copied in one step.
const STEP: u64 = 1024;
/// The pause after a failed step.
const RETRY: Duration = Duration::from_secs(1);
/// How long a hole in the stream may stay unexplained before the broker
/// reports it: an erased event's message is deleted once its tombstone is
/// stored, but this broker's copy of the state may apply the tombstone a
/// moment after the copier meets the hole.
const GAP_GRACE: Duration = Duration::from_secs(10);
/// The pause before looking at an unexplained hole again.
const GAP_RETRY: Duration = Duration::from_millis(200);
/// The directory of the copy, under the data directory.
pub(super) const COPY_DIR: &str = "cluster-copy";

/// What keeps the copy from moving on.
enum Stuck {
    /// No record and no recorded erasure at the offset the copy needs
    /// next: maybe a tombstone this broker's state copy has not applied
    /// yet, so it is reported only after [`GAP_GRACE`].
    Hole(String),
    /// Anything else, reported at once.
    Failed(String),
}

/// The cluster log and what the copy needs of it.
pub(super) struct Source {
    /// The stream.
    pub stream: EventStream,
    /// Its first offset and size as last seen.
    pub extent: Arc<Extent>,
    /// Its followed head.
    pub head: watch::Receiver<Offset>,
    /// The erasures recorded in this broker's copy of the state.
    pub erased: Erased,
}

/// Copies `source`'s stream into `copy` (through its writer's queue
/// `log`) as the stream's head moves, until `stop`. A step that fails is
/// tried again; `health` says why meanwhile.
pub(super) async fn follow(
    mut source: Source,
    copy: Arc<EventLog>,
    log: mpsc::Sender<LogOp>,
    health: watch::Sender<StoreHealth>,
    stop: CancellationToken,
) {
    let mut hole_since: Option<(Offset, tokio::time::Instant)> = None;
    loop {
        let first = source.extent.first();
        let next = copy.next();
        let outcome = if first > next {
            // Below the stream's first offset only erased events (their
            // messages deleted, their tombstones recorded) can be copied:
            // the rest was purged by retention.
            match replicate(Vec::new(), first - 1, &source.erased, &log).await {
                Ok(head) if head > next => Ok(()),
                Ok(_) => Err(Stuck::Hole(format!(
                    "this broker's copy of the cluster log needs offset {next} next, but \
                     retention removed everything below {first} from the stream: restart the \
                     broker to copy the log afresh"
                ))),
                Err(e) => Err(e),
            }
        } else if first > copy.first() {
            drop_below(first, &log).await.map_err(Stuck::Failed)
        } else {
            let ahead = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => continue,
                h = source.head.wait_for(|h| *h > next) => match h {
                    Ok(h) => *h,
                    Err(_) => return,
                },
            };
            let to = Offset::new((ahead.get() - 1).min(next.get() + STEP - 1));
            step(&source, next, to, &log).await
        };
        let (problem, pause) = match outcome {
            Ok(()) => {
                hole_since = None;
                (None, None)
            }
            Err(Stuck::Failed(why)) => (Some(why), Some(RETRY)),
            Err(Stuck::Hole(why)) => {
                let now = tokio::time::Instant::now();
                let since = match hole_since {
                    Some((at, since)) if at == next => since,
                    _ => hole_since.insert((next, now)).1,
                };
                match now.duration_since(since) >= GAP_GRACE {
                    true => (Some(why), Some(RETRY)),
                    false => (None, Some(GAP_RETRY)),
                }
            }
        };
        health.send_if_modified(|h| {
            let changed = h.copy != problem;
            if let Some(why) = &problem {
                if changed {
                    tracing::error!(error = %why, "copying the cluster log");
                }
            }
            h.copy = problem;
            changed
        });
        if let Some(pause) = pause {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Drops the copy's events below `first` (the stream's, after a purge).
async fn drop_below(first: Offset, log: &mpsc::Sender<LogOp>) -> Result<(), String> {
    let (reply, rx) = oneshot::channel();
    log.send(LogOp::Truncate {
        before: first,
        reply,
    })
    .await
    .map_err(|_| "the local copy is closed".to_owned())?;
    rx.await
        .map_err(|_| "the local copy is closed".to_owned())?
        .map(|_| ())
        .map_err(|e| format!("dropping purged events from the local copy: {e}"))
}

/// Copies `from..=to`; why not, if it could not.
async fn step(
    source: &Source,
    from: Offset,
    to: Offset,
    log: &mpsc::Sender<LogOp>,
) -> Result<(), Stuck> {
    let records =
        source.stream.read_records(from, to).await.map_err(|e| {
            Stuck::Failed(format!("reading the cluster log from offset {from}: {e}"))
        })?;
    let head = replicate(records, to, &source.erased, log).await?;
    if head == from {
        return Err(Stuck::Hole(format!(
            "the cluster log has no event at offset {from}, which this broker's copy needs next, \
             and no erasure is recorded for it (events removed from the stream by hand?)"
        )));
    }
    Ok(())
}

/// Has the log writer copy `records` up to `through` (tombstones for the
/// erased offsets); the copy's new head.
async fn replicate(
    records: Vec<super::RawRecord>,
    through: Offset,
    erased: &Erased,
    log: &mpsc::Sender<LogOp>,
) -> Result<Offset, Stuck> {
    let closed = || Stuck::Failed("the local copy is closed".to_owned());
    let (reply, rx) = oneshot::channel();
    log.send(LogOp::Replicate {
        records,
        through,
        erased: erased.clone(),
        reply,
    })
    .await
    .map_err(|_| closed())?;
    rx.await
        .map_err(|_| closed())?
        .map_err(|e| Stuck::Failed(format!("writing the local copy of the cluster log: {e}")))
}
