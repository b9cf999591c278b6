//! The worker as a [`Taker`] of its endpoint's consumer: the shared drive
//! loop hands it events, and wakes it when an attempt finishes.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{Finished, Worker, LEASE, SAVE_SKIPPED_AFTER, WORKER_STREAM};
use crate::{
    consumer::{drive::Taker, Delivery, Keyed, PollFor, Read},
    delivery::event_cache::SharedEvent,
    error::{Error, Result},
    model::Offset,
};

impl Keyed for Arc<SharedEvent> {
    fn ordering_key(&self) -> &str {
        &self.event.event.ordering_key
    }
}

impl Taker for Worker {
    type Event = Arc<SharedEvent>;
    type Wake = Finished;

    fn poll_for(&self, now: Instant) -> PollFor {
        PollFor {
            stream: WORKER_STREAM,
            max_in_flight: u32::MAX,
            ack_wait: LEASE,
            now,
            // New events only while the window has room.
            read_new: self.held.len() < self.window,
        }
    }

    fn read(&self, offset: Offset, read: Read) -> Result<Option<Arc<SharedEvent>>> {
        let ctx = &self.ctx;
        match read {
            Read::New => ctx.shared.get(&ctx.store, offset),
            // A held event due for its next attempt: the worker still has
            // it, so the log is only asked whether retention removed it
            // meanwhile.
            Read::Again => match self.held.get(&offset) {
                Some(h) => Ok(ctx.store.meta(offset)?.map(|_| h.event.clone())),
                None => Ok(ctx
                    .store
                    .get(offset)?
                    .map(|e| Arc::new(SharedEvent::new(e)))),
            },
        }
    }

    async fn take(&mut self, d: Delivery<Arc<SharedEvent>>) -> ControlFlow<()> {
        self.accept(d.event).await;
        ControlFlow::Continue(())
    }

    async fn expired(&mut self, offset: Offset) -> ControlFlow<()> {
        self.expired(offset).await;
        ControlFlow::Continue(())
    }

    async fn failed(&mut self, e: Error) -> ControlFlow<(), Instant> {
        tracing::error!(endpoint = %self.ctx.endpoint_id, error = %e, "reading the log failed");
        ControlFlow::Continue(Instant::now() + Duration::from_secs(1))
    }

    async fn idle(&mut self) {
        // Events this endpoint's filter skipped are never acked: persist
        // the position now and then, or every restart reads them again.
        if self.ctx.consumer.unsaved() >= SAVE_SKIPPED_AFTER {
            if let Err(e) = self.ctx.consumer.save().await {
                tracing::error!(endpoint = %self.ctx.endpoint_id, error = %e, "saving the position failed");
            }
        }
    }

    async fn wait(&mut self) -> Finished {
        match self.finished_rx.recv().await {
            Some(f) => f,
            // The worker holds a sender itself: never closed while it runs.
            None => std::future::pending().await,
        }
    }

    async fn woke(&mut self, f: Finished) -> ControlFlow<()> {
        self.finished(f).await;
        // Every attempt that finished meanwhile, before reading on: one
        // pass of the loop per batch, not per delivery.
        while let Ok(f) = self.finished_rx.try_recv() {
            self.finished(f).await;
        }
        ControlFlow::Continue(())
    }
}
