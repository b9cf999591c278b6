//! The one loop that takes a consumer's messages, for a gRPC stream and
//! for a webhook endpoint's worker alike: poll until idle, then wait for
//! the log's head, the consumer, the taker's own business, the next due
//! time, or cancellation.

use std::{future::Future, ops::ControlFlow};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Consumer, Delivery, Keyed, Poll, PollFor, Read};
use crate::{
    error::{Error, Result},
    model::Offset,
};

/// Whoever takes a consumer's messages in [`drive`]. Every hook that
/// returns [`ControlFlow::Break`] ends the loop.
pub trait Taker {
    /// What a message carries.
    type Event: Keyed;
    /// What [`Taker::wait`] reports.
    type Wake;

    /// What to ask the consumer for at `now`.
    fn poll_for(&self, now: Instant) -> PollFor;

    /// Reads the event at `offset` (`None`: not in the log, or, on a
    /// [`Read::New`], not for this taker: done without being handed out).
    /// Runs with the offset leased, outside the consumer's lock; see
    /// [`Consumer::poll_with`].
    fn read(&self, offset: Offset, read: Read) -> Result<Option<Self::Event>>;

    /// A message, now leased to this taker.
    fn take(
        &mut self,
        delivery: Delivery<Self::Event>,
    ) -> impl Future<Output = ControlFlow<()>> + Send;

    /// A message handed out before was due again but its event is gone
    /// (see [`Poll::Expired`]).
    fn expired(&mut self, offset: Offset) -> impl Future<Output = ControlFlow<()>> + Send;

    /// Polling failed: go on polling at the returned time, or stop.
    fn failed(&mut self, error: Error) -> impl Future<Output = ControlFlow<(), Instant>> + Send;

    /// Nothing more to take for now; runs before each wait.
    fn idle(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Resolves when the taker has business of its own (an attempt
    /// finished, the client went away). Must be cancel-safe: it loses the
    /// race whenever the consumer has news first.
    fn wait(&mut self) -> impl Future<Output = Self::Wake> + Send;

    /// Handles what [`Taker::wait`] reported.
    fn woke(&mut self, wake: Self::Wake) -> impl Future<Output = ControlFlow<()>> + Send;
}

/// What ended a wait.
enum Woke<W> {
    Stop,
    Taker(W),
    Poll,
}

/// Hands `taker` the messages of `consumer` until a hook says stop,
/// `cancel` is cancelled, or the log or consumer goes away.
pub async fn drive<T: Taker>(
    consumer: &Consumer,
    mut head: watch::Receiver<Offset>,
    cancel: &CancellationToken,
    taker: &mut T,
) {
    let mut changed = consumer.watch();
    loop {
        // Mark both watches seen *before* polling, so a change that lands
        // while we poll wakes the wait below instead of being missed.
        head.borrow_and_update();
        changed.borrow_and_update();
        let wake_at = loop {
            let p = taker.poll_for(Instant::now());
            let flow = match consumer.poll_with(p, |offset, read| taker.read(offset, read)) {
                Ok(Poll::Message(d)) => taker.take(*d).await,
                Ok(Poll::Expired(offset)) => taker.expired(offset).await,
                Ok(Poll::Idle { wake_at }) => break wake_at,
                Err(e) => match taker.failed(e).await {
                    ControlFlow::Continue(at) => break Some(at),
                    ControlFlow::Break(()) => return,
                },
            };
            if flow.is_break() {
                return;
            }
        };
        taker.idle().await;
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            _ = cancel.cancelled() => Woke::Stop,
            w = taker.wait() => Woke::Taker(w),
            r = head.changed() => if r.is_err() { Woke::Stop } else { Woke::Poll },
            r = changed.changed() => if r.is_err() { Woke::Stop } else { Woke::Poll },
            _ = sleep => Woke::Poll,
        };
        match woke {
            Woke::Stop => return,
            Woke::Taker(w) => {
                if taker.woke(w).await.is_break() {
                    return;
                }
            }
            Woke::Poll => {}
        }
    }
}
