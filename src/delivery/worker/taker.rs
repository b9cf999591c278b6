//! The worker as a [`Taker`] of its endpoint's consumer: the shared drive
//! loop hands it events, and wakes it when an attempt finishes or ends, and
//! when its leases are due for renewal.

use std::{ops::ControlFlow, time::Duration};

use tokio::{task, time::Instant};

use super::{Finished, Taken, Worker, LEASE, SAVE_SKIPPED_AFTER, STATE_EVENT_TYPES, WORKER_STREAM};
use crate::{
    consumer::{drive::Taker, Delivery, Keyed, PollFor, Read},
    error::{Error, Result},
    model::Offset,
};

impl Keyed for Taken {
    fn ordering_key(&self) -> &str {
        &self.event.event.event.ordering_key
    }

    fn supersedes(&self) -> bool {
        self.supersedes
    }
}

/// What the worker waits for besides its consumer.
pub(super) enum Wake {
    /// An attempt's outcome.
    Finished(Box<Finished>),
    /// An attempt task ended (normally after its report).
    Ended(task::Id),
    /// Time to renew the leases.
    Renew,
}

impl Taker for Worker {
    type Event = Taken;
    type Wake = Wake;

    fn poll_for(&self, now: Instant) -> PollFor {
        PollFor {
            stream: WORKER_STREAM,
            // The consumer also reads new events only while fewer than the
            // window are held at all (`Consumer::set_max_held`).
            max_in_flight: self.window,
            ack_wait: LEASE,
            now,
            read_new: true,
            // `read` tests `spec.filter`, the consumer's filter.
            reader_filters: true,
        }
    }

    fn read(&self, offset: Offset, read: Read) -> Result<Option<Taken>> {
        let ctx = &self.ctx;
        // Due again, or its turn came: the log is asked first whether
        // retention removed it meanwhile (the cache may still have it).
        if read == Read::Again && ctx.store.local()?.meta(offset)?.is_none() {
            self.rendered().remove(&offset);
            return Ok(None);
        }
        // An event read before that waited behind another of its key was
        // rendered then: not again.
        let kept = match read {
            Read::New => None,
            Read::Again => self.rendered().remove(&offset),
        };
        let (event, body) = match kept {
            Some(kept) => kept,
            None => {
                let Some(event) = ctx.shared.get(&ctx.store, offset)? else {
                    return Ok(None);
                };
                // The consumer leaves its filter to this read when the
                // filter tests only the type (`PollFor::reader_filters`).
                if read == Read::New && !ctx.spec.filter.matches(&event.event) {
                    return Ok(None);
                }
                let body = self.body(&event);
                (event, body)
            }
        };
        if read == Read::New && matches!(body, Ok(None)) {
            // The endpoint's condition does not match: done, never held.
            ctx.count("filtered");
            return Ok(None);
        }
        let supersedes = ctx.spec.coalesce
            && STATE_EVENT_TYPES.contains(&event.event.event_type.as_str())
            && matches!(body, Ok(Some(_)));
        ctx.view(&event);
        if read == Read::New {
            // Taken back in `accept`, unless the consumer keeps it waiting.
            self.rendered()
                .insert(offset, (event.clone(), body.clone()));
        }
        Ok(Some(Taken {
            event,
            body,
            supersedes,
        }))
    }

    async fn take(&mut self, d: Delivery<Taken>) -> ControlFlow<()> {
        self.accept(d.event, &d.superseded).await;
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
        if Instant::now() >= self.renew_at {
            self.renew();
        }
        // Events this endpoint's filter skipped are never acked: persist
        // the position now and then, or every restart reads them again.
        if self.ctx.consumer.unsaved() >= SAVE_SKIPPED_AFTER {
            if let Err(e) = self.ctx.consumer.save().await {
                tracing::error!(endpoint = %self.ctx.endpoint_id, error = %e, "saving the position failed");
            }
        }
    }

    async fn wait(&mut self) -> Wake {
        // Every branch is cancel-safe: a message stays in the channel, a
        // task's end stays in the set, and the renewal time is kept.
        tokio::select! {
            f = self.finished_rx.recv() => match f {
                Some(f) => Wake::Finished(Box::new(f)),
                // The worker holds a sender itself: never closed while it runs.
                None => std::future::pending().await,
            },
            Some(ended) = self.attempts.join_next_with_id() => match ended {
                Ok((id, ())) => Wake::Ended(id),
                Err(e) => {
                    if e.is_panic() {
                        tracing::error!(endpoint = %self.ctx.endpoint_id, error = %e, "an attempt panicked");
                    }
                    Wake::Ended(e.id())
                }
            },
            _ = tokio::time::sleep_until(self.renew_at) => Wake::Renew,
        }
    }

    async fn woke(&mut self, wake: Wake) -> ControlFlow<()> {
        match wake {
            Wake::Finished(f) => self.finished(*f).await,
            Wake::Ended(id) => self.ended(id).await,
            Wake::Renew => {}
        }
        // Every attempt that finished meanwhile, before reading on: one
        // pass of the loop per batch, not per delivery.
        while let Ok(f) = self.finished_rx.try_recv() {
            self.finished(f).await;
        }
        while let Some(ended) = self.attempts.try_join_next_with_id() {
            let id = match ended {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            self.ended(id).await;
        }
        if Instant::now() >= self.renew_at {
            self.renew();
        }
        ControlFlow::Continue(())
    }
}
