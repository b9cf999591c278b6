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
//! `Replicate`) and refuses a gap. When retention (on the primary) purges
//! the stream's oldest events, every copy drops them too, as soon as it
//! sees the stream's first offset move (within [`TICK`]); a copy started
//! after a purge begins at the stream's first offset. A copy that lags
//! behind a purge (it still needs events the stream no longer has), or a
//! stream whose events were removed by hand in the middle, cannot be copied
//! past the hole: the broker says so in its health, and a restart (which
//! starts the copy afresh) mends it.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    jetstream::{EventStream, Extent},
    log::EventLog,
    writer::LogOp,
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
/// The directory of the copy, under the data directory.
pub(super) const COPY_DIR: &str = "cluster-copy";

/// Copies `stream` into the log behind `log` (whose head is `copied`) as
/// `cluster` (the stream's followed head) moves, until `stop`. A step that
/// fails is tried again; `health` says why meanwhile.
pub(super) async fn follow(
    stream: EventStream,
    extent: Arc<Extent>,
    mut cluster: watch::Receiver<Offset>,
    copy: Arc<EventLog>,
    log: mpsc::Sender<LogOp>,
    health: watch::Sender<StoreHealth>,
    stop: CancellationToken,
) {
    loop {
        let first = extent.first();
        let problem = if first > copy.next() {
            Some(format!(
                "this broker's copy of the cluster log needs offset {} next, but retention \
                 removed everything below {first} from the stream: restart the broker to copy \
                 the log afresh",
                copy.next()
            ))
        } else if first > copy.first() {
            drop_below(first, &log).await.err()
        } else {
            let next = copy.next();
            let ahead = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => continue,
                h = cluster.wait_for(|h| *h > next) => match h {
                    Ok(h) => *h,
                    Err(_) => return,
                },
            };
            let to = Offset::new((ahead.get() - 1).min(next.get() + STEP - 1));
            step(&stream, next, to, &log).await.err()
        };
        let failed = problem.is_some();
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
        if failed {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
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
    stream: &EventStream,
    from: Offset,
    to: Offset,
    log: &mpsc::Sender<LogOp>,
) -> Result<(), String> {
    let records = stream
        .read_records(from, to)
        .await
        .map_err(|e| format!("reading the cluster log from offset {from}: {e}"))?;
    // Only what follows on without a hole.
    let contiguous = records
        .iter()
        .zip(from.through(to))
        .take_while(|(r, o)| r.offset == *o)
        .count();
    if contiguous == 0 {
        return Err(format!(
            "the cluster log has no event at offset {from}, which this broker's copy needs next \
             (events removed from the stream by hand?)"
        ));
    }
    let mut records = records;
    records.truncate(contiguous);
    let (reply, rx) = oneshot::channel();
    log.send(LogOp::Replicate { records, reply })
        .await
        .map_err(|_| "the local copy is closed".to_owned())?;
    rx.await
        .map_err(|_| "the local copy is closed".to_owned())?
        .map_err(|e| format!("writing the local copy of the cluster log: {e}"))
}
