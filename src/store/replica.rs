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
//! `Replicate`) and refuses a gap. Nothing removes events from the stream
//! in cluster mode (retention does not run there); a stream whose events
//! were removed by hand cannot be copied past the hole, and the broker says
//! so in its health.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{jetstream::EventStream, writer::LogOp, StoreHealth};
use crate::model::Offset;

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
    mut cluster: watch::Receiver<Offset>,
    copied: watch::Receiver<Offset>,
    log: mpsc::Sender<LogOp>,
    health: watch::Sender<StoreHealth>,
    stop: CancellationToken,
) {
    loop {
        let next = *copied.borrow();
        let ahead = tokio::select! {
            () = stop.cancelled() => return,
            h = cluster.wait_for(|h| *h > next) => match h {
                Ok(h) => *h,
                Err(_) => return,
            },
        };
        let to = Offset::new((ahead.get() - 1).min(next.get() + STEP - 1));
        let problem = step(&stream, next, to, &log).await.err();
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
