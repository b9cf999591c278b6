//! Following the stream's head, whichever broker appends: Subscribe's live
//! tail on one broker must see what another published.
//!
//! The head is the stream's last sequence + 1 as its leader reports it
//! (`STREAM.INFO`). It is asked again whenever a broker says it appended
//! (a core NATS message on [`super::StreamConfig::head_subject`], sent
//! once an append is acknowledged: one small message per append, where a
//! subscription to the stream's own subjects would bring every broker a
//! copy of every event), and every [`TICK`] in any case (appends by
//! anything else, a notice lost). A notice that finds the head unmoved
//! asks again a few times. The same
//! answer keeps the stream's first sequence and size, and its failure
//! shows in the store's health: the broker is NOT_SERVING while the
//! stream's leader cannot be reached.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{cluster::Extent, EventStream};
use crate::{model::Offset, store::StoreHealth};

/// The longest the head lags when no notice arrives.
const TICK: Duration = Duration::from_secs(1);
/// How long one look at the stream may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// After a notice: how often, and how far apart, the head is asked again
/// while it has not moved.
const NOTICE_ROUNDS: u32 = 5;
const NOTICE_PAUSE: Duration = Duration::from_millis(5);

/// Follows `stream`'s head into `head` until `stop`.
pub(super) async fn follow(
    stream: EventStream,
    head: watch::Sender<Offset>,
    extent: Arc<Extent>,
    health: watch::Sender<StoreHealth>,
    stop: CancellationToken,
) {
    let mut notices = match stream
        .client
        .subscribe(stream.config().head_subject())
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to the brokers' notices of appends: the head follows every {TICK:?} only");
            None
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let noticed = tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => false,
            Some(_) = next_notice(&mut notices) => true,
        };
        // Every notice waiting now is answered by the one look below.
        if let Some(n) = notices.as_mut() {
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, n.next()).await {}
        }
        let rounds = if noticed { NOTICE_ROUNDS } else { 1 };
        for round in 0..rounds {
            if round > 0 {
                tokio::time::sleep(NOTICE_PAUSE).await;
            }
            if look(&stream, &head, &extent, &health).await {
                break;
            }
        }
    }
}

/// Tells every broker's follower (this one's too) that `stream` has grown.
/// A notice that cannot be sent is only later news: the followers look
/// every [`TICK`] anyway.
pub(super) async fn notify(stream: &EventStream) {
    let subject = stream.config().head_subject();
    if let Err(e) = stream.client.publish(subject, bytes::Bytes::new()).await {
        tracing::debug!(error = %e, "a notice of an append was not sent");
    }
}

/// The next notice, or never without a subscription.
async fn next_notice(notices: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match notices {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}

/// Asks the stream's state; whether the head moved.
async fn look(
    stream: &EventStream,
    head: &watch::Sender<Offset>,
    extent: &Extent,
    health: &watch::Sender<StoreHealth>,
) -> bool {
    let problem = match tokio::time::timeout(LOOK_TIMEOUT, stream.state()).await {
        Ok(Ok(state)) => {
            extent.first.store(state.first_sequence, Ordering::Relaxed);
            extent.bytes.store(state.bytes, Ordering::Relaxed);
            let moved = raise(head, Offset::new(state.last_sequence + 1));
            set_problem(health, None);
            return moved;
        }
        Ok(Err(e)) => format!("the event stream on the NATS cluster does not answer: {e}"),
        Err(_) => {
            format!("the event stream on the NATS cluster did not answer within {LOOK_TIMEOUT:?}")
        }
    };
    set_problem(health, Some(problem));
    false
}

/// Moves `head` up to `next` (never down: the follower, appends and fresh
/// looks race); whether it moved.
pub(super) fn raise(head: &watch::Sender<Offset>, next: Offset) -> bool {
    head.send_if_modified(|h| {
        let moved = next > *h;
        if moved {
            *h = next;
        }
        moved
    })
}

/// Sets the stream's problem (`None`: none) in the store's health.
fn set_problem(health: &watch::Sender<StoreHealth>, problem: Option<String>) {
    health.send_if_modified(|h| {
        let changed = h.state != problem;
        h.state = problem;
        changed
    });
}
