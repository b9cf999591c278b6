//! `stevedore.v1.Publisher`: validate, append, answer once durable.

use std::{pin::Pin, sync::Arc, task::Poll, time::SystemTime};

use prost::Message as _;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::ServiceContext;
use crate::{
    convert::{validate_event, EventLimits, Item},
    error::Error,
    model::{Appended, NewEvent},
    pb::{
        publisher_server::Publisher, PublishBatchRequest, PublishBatchResponse, PublishRequest,
        PublishResponse,
    },
    tenant::Scope,
};

/// Acks a stream may have outstanding before it stops reading requests.
const STREAM_PIPELINE_DEPTH: usize = 1024;
/// Most events of one [`Bulk`]...
const STREAM_BULK_EVENTS: usize = 64;
/// ...and its encoded bytes, past which it takes no more. Its events are
/// held decoded until it is queued, beyond the intake's reservation of the
/// stream's latest message, so this is kept small: the decoded form of
/// 64 KiB of events, next to the encoded events of the (up to
/// `STREAM_PIPELINE_DEPTH`) acks a stream may have outstanding.
const STREAM_BULK_BYTES: usize = 64 * 1024;

/// The Publisher service.
pub struct PublisherService {
    shared: ServiceContext,
}

impl PublisherService {
    /// A Publisher over the shared broker state.
    pub fn new(shared: ServiceContext) -> Self {
        Self { shared }
    }
}

fn limits(shared: &ServiceContext) -> EventLimits {
    EventLimits {
        max_event_bytes: shared.config.max_event_bytes,
    }
}

fn validate_one(
    shared: &ServiceContext,
    scope: &Scope,
    req: PublishRequest,
    path: &str,
) -> Result<NewEvent, Error> {
    let event = req.event.ok_or_else(|| Error::invalid(path, "required"))?;
    let mut event = validate_event(event, &path, SystemTime::now(), limits(shared))?;
    scope.admit_event(&mut event.event, &path, &shared.config.tenants)?;
    shared
        .tenant_rates
        .take([crate::model::event_tenant(&event.event)])?;
    Ok(event)
}

fn response(event_id: String, appended: Appended) -> PublishResponse {
    PublishResponse {
        offset: appended.offset.get(),
        event_id,
        duplicate: appended.duplicate,
        payload_differs: appended.payload_differs,
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let clock = std::time::Instant::now();
        let scope = Scope::of(&request);
        let event = validate_one(&self.shared, &scope, request.into_inner(), "event")?;
        // Only the id is needed for the answer: copying the whole event
        // for it cost as much as encoding it.
        let id = event.event.id.clone();
        let appended = self.shared.store.append(vec![event]).await?;
        self.shared
            .metrics
            .publish_latency
            .observe_duration(clock.elapsed());
        Ok(Response::new(response(id, appended[0])))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let clock = std::time::Instant::now();
        let scope = Scope::of(&request);
        let events = request.into_inner().events;
        let max = self.shared.config.max_batch_events;
        if events.is_empty() {
            return Err(Error::invalid("events", "must not be empty").into());
        }
        if events.len() > max {
            return Err(Error::invalid(
                "events",
                format!("{} events exceed max_batch_events ({max})", events.len()),
            )
            .into());
        }
        // Validate everything before writing anything: all or nothing.
        let now = SystemTime::now();
        let events = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let path = Item("events", i);
                let mut event = validate_event(e, &path, now, limits(&self.shared))?;
                scope.admit_event(&mut event.event, &path, &self.shared.config.tenants)?;
                Ok(event)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.shared
            .tenant_rates
            .take(events.iter().map(|e| crate::model::event_tenant(&e.event)))?;
        let ids: Vec<String> = events.iter().map(|e| e.event.id.clone()).collect();
        let appended = self.shared.store.append(events).await?;
        self.shared
            .metrics
            .publish_latency
            .observe_duration(clock.elapsed());
        Ok(Response::new(PublishBatchResponse {
            results: ids
                .into_iter()
                .zip(appended)
                .map(|(id, a)| response(id, a))
                .collect(),
        }))
    }

    type PublishStreamStream = ResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let slot = Arc::new(self.shared.stream_slot(super::StreamKind::Publish)?);
        let scope = Scope::of(&request);
        let mut requests = request.into_inner();
        let shared = self.shared.clone();
        // Requests are validated and queued to the writer as they arrive,
        // those already received together as one append ([`Bulk`]); their
        // durable outcomes are awaited in order by the sender task, so many
        // appends share each group commit while acks stay in order.
        let (pending_tx, mut pending_rx) = mpsc::channel(STREAM_PIPELINE_DEPTH);
        let (out_tx, out_rx) = mpsc::channel(STREAM_PIPELINE_DEPTH);
        let outstanding = Arc::new(Semaphore::new(STREAM_PIPELINE_DEPTH));

        let reader = {
            let shared = shared.clone();
            // Both tasks hold the stream's slot: it is free when both end.
            let slot = slot.clone();
            async move {
                let _slot = slot;
                let mut n = 0usize;
                loop {
                    let first = tokio::select! {
                        _ = shared.shutdown.cancelled() => break,
                        r = requests.next() => r,
                    };
                    let validate = |req| validate_one(&shared, &scope, req, "event");
                    let (bulk, end) = Bulk::read(first, &mut requests, validate).await;
                    n += bulk.ids.len();
                    if !bulk.ids.is_empty() {
                        let item = bulk.submit(&shared, &outstanding).await;
                        let stop = item.is_err();
                        if pending_tx.send(item).await.is_err() || stop {
                            break;
                        }
                    }
                    match end {
                        End::More => {}
                        End::Input => break,
                        End::Failed(status) => {
                            let _ = pending_tx.send(Err(status)).await;
                            break;
                        }
                    }
                }
                tracing::debug!(events = n, "publish stream input ended");
            }
        };
        let sender = async move {
            let _slot = slot;
            while let Some(item) = pending_rx.recv().await {
                let outcome = match item {
                    Err(status) => Err(status),
                    Ok((ids, rx, permits)) => match rx.await {
                        Ok(Ok(appended)) => Ok((ids, appended, permits)),
                        Ok(Err(e)) => Err(Status::from(e)),
                        Err(_) => Err(Status::from(Error::ShuttingDown)),
                    },
                };
                // The permits go back once the bulk's acks are handed on.
                let (ids, appended, _permits) = match outcome {
                    Ok(acks) => acks,
                    Err(status) => {
                        let _ = out_tx.send(Err(status)).await;
                        break;
                    }
                };
                for (id, a) in ids.into_iter().zip(appended) {
                    if out_tx.send(Ok(response(id, a))).await.is_err() {
                        return;
                    }
                }
            }
        };
        shared.tasks.spawn(reader);
        shared.tasks.spawn(sender);
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// A bulk queued to the writer: each event's id (for its ack), the
/// receiver of the append's outcome, and its share of the stream's
/// outstanding acks.
type Queued = (
    Vec<String>,
    oneshot::Receiver<Result<Vec<Appended>, Error>>,
    OwnedSemaphorePermit,
);

/// Valid requests of one stream that had arrived by the time the reader
/// got to them, queued to the writer as one append: one reply and one
/// wake-up of the sender for them all instead of one each. A bulk stops at
/// the first request that is not there yet, so it never waits for more.
/// It holds decoded events until it is queued, so it is capped in events
/// and in bytes; queued, an event is held encoded, as one append.
///
/// The append is all or nothing, which a stream does not need (each event
/// is acked alone) but which costs nothing here: it fails only when the
/// log does (a failed write, a damaged record), and the stream ends at its
/// first error anyway.
struct Bulk {
    ids: Vec<String>,
    events: Vec<NewEvent>,
    bytes: usize,
}

/// Why a bulk ended.
enum End {
    /// None was ready, or the bulk is full: read on.
    More,
    /// The client closed its side.
    Input,
    /// A request failed (decoding, validation, rate): answer it after the
    /// bulk's acks, then end the stream.
    Failed(Status),
}

impl Bulk {
    /// Reads a bulk: `first`, then the requests already there, each
    /// through `validate`, until one fails, the input ends, none is ready
    /// or the bulk is full.
    async fn read<S>(
        first: Option<Result<PublishRequest, Status>>,
        requests: &mut S,
        mut validate: impl FnMut(PublishRequest) -> Result<NewEvent, Error>,
    ) -> (Self, End)
    where
        S: Stream<Item = Result<PublishRequest, Status>> + Unpin,
    {
        let mut bulk = Bulk {
            ids: Vec::new(),
            events: Vec::new(),
            bytes: 0,
        };
        let mut next = first;
        loop {
            let req = match next {
                None => return (bulk, End::Input),
                Some(Err(status)) => return (bulk, End::Failed(status)),
                Some(Ok(req)) => req,
            };
            match validate(req) {
                Err(e) => return (bulk, End::Failed(Status::from(e))),
                Ok(event) => {
                    bulk.bytes += event.event.encoded_len();
                    bulk.ids.push(event.event.id.clone());
                    bulk.events.push(event);
                }
            }
            if bulk.events.len() >= STREAM_BULK_EVENTS || bulk.bytes >= STREAM_BULK_BYTES {
                return (bulk, End::More);
            }
            next = match ready_now(requests).await {
                Some(r) => r,
                None => return (bulk, End::More),
            };
        }
    }

    /// Queues the bulk's append once the stream has room for its acks.
    async fn submit(
        self,
        shared: &ServiceContext,
        outstanding: &Arc<Semaphore>,
    ) -> Result<Queued, Status> {
        let n = u32::try_from(self.events.len()).expect("a bulk is capped far below u32::MAX");
        let permits = outstanding
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the semaphore is never closed");
        let rx = shared.store.submit_append(self.events).await?;
        Ok((self.ids, rx, permits))
    }
}

/// The stream's next item if it is there already, without waiting (`None`
/// when it is not).
async fn ready_now<S: Stream + Unpin>(stream: &mut S) -> Option<Option<S::Item>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *stream).poll_next(cx) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        })
    })
    .await
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
