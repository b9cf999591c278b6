//! `stevedore.v1.Publisher`: validate, append, answer once durable.

use std::{pin::Pin, time::SystemTime};

use tokio::sync::mpsc;
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
        offset: appended.offset,
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
        let slot = std::sync::Arc::new(self.shared.stream_slot(super::StreamKind::Publish)?);
        let scope = Scope::of(&request);
        let mut requests = request.into_inner();
        let shared = self.shared.clone();
        // Requests are validated and queued to the writer as they arrive;
        // their durable outcomes are awaited in order by the sender task, so
        // many appends share each group commit while acks stay in order.
        let (pending_tx, mut pending_rx) = mpsc::channel(STREAM_PIPELINE_DEPTH);
        let (out_tx, out_rx) = mpsc::channel(STREAM_PIPELINE_DEPTH);

        let reader = {
            let shared = shared.clone();
            // Both tasks hold the stream's slot: it is free when both end.
            let slot = slot.clone();
            async move {
                let _slot = slot;
                let mut n = 0usize;
                loop {
                    let req = tokio::select! {
                        _ = shared.shutdown.cancelled() => break,
                        r = requests.next() => r,
                    };
                    let item = match req {
                        None => break,
                        Some(Err(status)) => Err(status),
                        Some(Ok(req)) => match validate_one(&shared, &scope, req, "event") {
                            Err(e) => Err(Status::from(e)),
                            Ok(event) => {
                                let id = event.event.id.clone();
                                match shared.store.submit_append(vec![event]).await {
                                    Ok(rx) => Ok((id, rx)),
                                    Err(e) => Err(Status::from(e)),
                                }
                            }
                        },
                    };
                    let stop = item.is_err();
                    if pending_tx.send(item).await.is_err() || stop {
                        break;
                    }
                    n += 1;
                }
                tracing::debug!(events = n, "publish stream input ended");
            }
        };
        let sender = async move {
            let _slot = slot;
            while let Some(item) = pending_rx.recv().await {
                let out = match item {
                    Err(status) => Err(status),
                    Ok((id, rx)) => match rx.await {
                        Ok(Ok(appended)) => Ok(response(id, appended[0])),
                        Ok(Err(e)) => Err(Status::from(e)),
                        Err(_) => Err(Status::from(Error::ShuttingDown)),
                    },
                };
                let stop = out.is_err();
                if out_tx.send(out).await.is_err() || stop {
                    break;
                }
            }
        };
        shared.tasks.spawn(reader);
        shared.tasks.spawn(sender);
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
