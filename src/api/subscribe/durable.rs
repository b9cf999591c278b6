//! A Subscribe stream on a durable consumer: the consumer's shared drive
//! loop, with this stream's window and ack wait.

use std::{
    ops::ControlFlow,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{ServiceContext, SubscribeFrame, Tx, NEXT_STREAM_ID};
use crate::{
    consumer::{
        self,
        drive::{drive, Taker},
        Consumer, Delivery, PollFor, Read, StreamId,
    },
    convert,
    error::{Error, Result},
    model::{Offset, StoredEvent},
    pb::{Ordering as PbOrdering, SubscribeResponse},
};

/// A durable consumer's stream settings, validated.
pub(super) struct Durable {
    pub(super) name: String,
    pub(super) max_in_flight: u32,
    pub(super) ack_wait: Duration,
    pub(super) max_deliveries: u32,
    /// `None`: whatever the consumer has (none for a new one).
    pub(super) ordering: Option<consumer::Ordering>,
}

/// `SubscribeRequest.ordering`: the same enum as an endpoint's, but
/// unspecified means "as created" (none for a new consumer), not by key.
pub(super) fn ordering(n: i32) -> Result<Option<consumer::Ordering>> {
    match PbOrdering::try_from(n) {
        Ok(PbOrdering::Unspecified) => Ok(None),
        Ok(PbOrdering::None) => Ok(Some(consumer::Ordering::None)),
        Ok(PbOrdering::Key) => Ok(Some(consumer::Ordering::Key)),
        Ok(PbOrdering::Strict) => Ok(Some(consumer::Ordering::Strict)),
        Err(_) => Err(Error::invalid(
            "ordering",
            format!("unknown enum value {n}"),
        )),
    }
}

fn subscribe_response(e: StoredEvent, attempt: u32) -> SubscribeResponse {
    SubscribeResponse {
        offset: e.offset.get(),
        published_at: Some(convert::timestamp(e.published_at)),
        event_type: e.event_type.to_string(),
        event: Some(e.event),
        delivery_attempt: attempt,
    }
}

/// Hands back this stream's leases when the stream ends, however it ends.
struct LeaseGuard {
    consumer: Arc<Consumer>,
    stream: StreamId,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.consumer.release(self.stream);
    }
}

/// One stream taking a durable consumer's messages, within its window.
struct DurableStream {
    shared: ServiceContext,
    stream: StreamId,
    durable: Durable,
    tx: Tx,
}

impl Taker for DurableStream {
    type Event = StoredEvent;
    type Wake = ();

    fn poll_for(&self, now: Instant) -> PollFor {
        PollFor {
            stream: self.stream,
            max_in_flight: self.durable.max_in_flight,
            ack_wait: self.durable.ack_wait,
            now,
            read_new: true,
            reader_filters: false,
        }
    }

    fn read(&self, offset: Offset, _: Read) -> Result<Option<StoredEvent>> {
        self.shared.store.local()?.get(offset)
    }

    async fn take(&mut self, d: Delivery<StoredEvent>) -> ControlFlow<()> {
        // Deliveries come decoded from the consumer, so this path encodes
        // them with prost as before.
        let msg = SubscribeFrame::Decoded(Box::new(subscribe_response(d.event, d.attempt)));
        tokio::select! {
            _ = self.shared.shutdown.cancelled() => ControlFlow::Break(()),
            sent = self.tx.send(Ok(msg)) => match sent {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            },
        }
    }

    async fn expired(&mut self, _: Offset) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    async fn failed(&mut self, e: Error) -> ControlFlow<(), Instant> {
        // The client learns why its stream ends; if it is gone already,
        // there is nobody left to tell.
        if self.tx.send(Err(e.into())).await.is_err() {
            tracing::debug!(
                stream = self.stream,
                "stream closed before its error was sent"
            );
        }
        ControlFlow::Break(())
    }

    async fn wait(&mut self) {
        self.tx.closed().await
    }

    async fn woke(&mut self, (): ()) -> ControlFlow<()> {
        // The client went away.
        ControlFlow::Break(())
    }
}

/// Deliver a durable consumer's messages within this stream's window.
pub(super) async fn stream_durable(
    shared: ServiceContext,
    consumer: Arc<Consumer>,
    durable: Durable,
    tx: Tx,
    term: CancellationToken,
) {
    let stream = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
    let _guard = LeaseGuard {
        consumer: consumer.clone(),
        stream,
    };
    let head = shared.store.watch_head();
    let cancel = shared.shutdown.clone();
    let mut taker = DurableStream {
        shared,
        stream,
        durable,
        tx,
    };
    tokio::select! {
        () = drive(&consumer, head, &cancel, &mut taker) => {}
        () = term.cancelled() => {
            // Cluster mode: another broker is the primary now; what this
            // stream held is delivered again from there.
            let moved = Status::unavailable(
                "this broker stopped serving named durable consumers (another broker is the \
                 primary now): subscribe again",
            );
            let _ = taker.tx.send(Err(moved)).await;
        }
    }
}
