//! `stevedore.v1.Subscriber`: replay and live tail, durable consumers with
//! acks, and point reads.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::{forward, ServiceContext, StoredFrame, SubscribeFrame};
use crate::{
    config::MIN_ACK_WAIT,
    consumer::{CreateSpec, Route},
    convert,
    error::{Error, Result},
    metrics::Metrics,
    model::{EventFilter, EventId, EventType, Offset},
    pb::{
        subscribe_request::Start, AckMode, AckRequest, AckResponse, GetEventRequest,
        GetEventResponse, NackRequest, NackResponse, SubscribeRequest,
    },
    store::{decode_meta_record, RawRecord},
    tenant::Scope,
};

mod durable;
mod spliced;

use durable::{ordering, stream_durable, Durable};
use spliced::subscriber_server::Subscriber;
pub use spliced::subscriber_server::SubscriberServer;

/// Messages buffered per stream ahead of the client (gRPC flow control does
/// the rest).
const STREAM_BUFFER: usize = 64;
/// Events read from the log per batch while catching up.
const READ_BATCH: usize = 256;

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// The Subscriber service.
pub struct SubscriberService {
    shared: ServiceContext,
}

impl SubscriberService {
    /// A Subscriber over the shared broker state.
    pub fn new(shared: ServiceContext) -> Self {
        Self { shared }
    }
}

/// A Subscribe request, validated.
struct Plan {
    start: Offset,
    filter: EventFilter,
    durable: Option<Durable>,
}

fn validate_consumer_name(name: &str) -> Result<()> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "consumer",
            format!("{name:?} is not a consumer name (1-128 characters of [A-Za-z0-9._-])"),
        ))
    }
}

impl SubscriberService {
    async fn plan(&self, scope: &Scope, req: &SubscribeRequest) -> Result<Plan> {
        let store = &self.shared.store;
        let config = &self.shared.config;
        let mode = AckMode::try_from(req.ack_mode).map_err(|_| {
            Error::invalid("ack_mode", format!("unknown enum value {}", req.ack_mode))
        })?;
        let explicit = match mode {
            AckMode::Unspecified => !req.consumer.is_empty(),
            AckMode::None => false,
            AckMode::Explicit => true,
        };
        let types = EventType::parse_list(&req.event_types).map_err(|(i, m)| match i {
            Some(i) => Error::invalid(format!("event_types[{i}]"), m),
            None => Error::invalid("event_types", m),
        })?;
        for (i, t) in req.event_types.iter().enumerate() {
            EventType::check_known(t)
                .map_err(|m| Error::invalid(format!("event_types[{i}]"), m))?;
        }
        let start = match &req.start {
            None | Some(Start::Latest(_)) => store.head(),
            Some(Start::Earliest(_)) => store.first_offset()?,
            Some(Start::Offset(o)) => {
                let o = Offset::new(*o);
                convert::start_offset("offset", o, store.head_for(o).await?)?
                    .max(store.first_offset()?)
            }
            Some(Start::Time(t)) => {
                store
                    .offset_at_time(convert::system_time("time", t)?)
                    .await?
            }
        };
        let durable = if explicit {
            if req.consumer.is_empty() {
                return Err(Error::invalid(
                    "consumer",
                    "required with ACK_MODE_EXPLICIT",
                ));
            }
            validate_consumer_name(&req.consumer)?;
            let max_in_flight = match req.max_in_flight {
                0 => config.default_max_in_flight.get(),
                n if n > config.max_in_flight_limit.get() => {
                    return Err(Error::invalid(
                        "max_in_flight",
                        format!("{n} exceeds the limit ({})", config.max_in_flight_limit),
                    ))
                }
                n => n,
            };
            let ack_wait = match &req.ack_wait {
                None => config.default_ack_wait,
                Some(d) => {
                    let d = convert::duration("ack_wait", d)?;
                    if d < MIN_ACK_WAIT || d > config.max_ack_wait {
                        return Err(Error::invalid(
                            "ack_wait",
                            format!(
                                "must be between {MIN_ACK_WAIT:?} and {:?}",
                                config.max_ack_wait
                            ),
                        ));
                    }
                    d
                }
            };
            Some(Durable {
                name: req.consumer.clone(),
                max_in_flight,
                ack_wait,
                max_deliveries: req.max_deliveries,
                ordering: ordering(req.ordering)?,
            })
        } else {
            if !req.consumer.is_empty() {
                return Err(Error::invalid(
                    "consumer",
                    "must be empty with ACK_MODE_NONE (a durable consumer needs explicit acks)",
                ));
            }
            if req.max_deliveries != 0 {
                return Err(Error::invalid(
                    "max_deliveries",
                    "only for a durable consumer (ACK_MODE_EXPLICIT with a consumer name)",
                ));
            }
            if req.max_in_flight != 0 || req.ack_wait.is_some() || req.ordering != 0 {
                let field = if req.max_in_flight != 0 {
                    "max_in_flight"
                } else if req.ack_wait.is_some() {
                    "ack_wait"
                } else {
                    "ordering"
                };
                return Err(Error::invalid(field, "applies only to ACK_MODE_EXPLICIT"));
            }
            None
        };
        Ok(Plan {
            start,
            // A tenant subscriber reads only its tenant's events, however it
            // asks (a durable consumer it creates keeps that tenant).
            filter: scope.narrow(EventFilter::types_only(types)),
            durable,
        })
    }
}

/// The response for a stored record, unless `filter` leaves it out. Only
/// the type and attributes are decoded; the event goes out as stored.
fn stored_response(filter: &EventFilter, raw: RawRecord) -> Result<Option<SubscribeFrame>> {
    let meta = decode_meta_record(raw.offset, &raw.record)?;
    if !filter.matches_meta(&meta) {
        return Ok(None);
    }
    Ok(Some(SubscribeFrame::Stored(StoredFrame::new(
        raw,
        meta.event_type,
        1,
    )?)))
}

/// The wire's offsets of an Ack or Nack request.
fn offsets_of(wire: &[u64]) -> Vec<Offset> {
    wire.iter().copied().map(Offset::new).collect()
}

type Tx = mpsc::Sender<Result<SubscribeFrame, Status>>;

/// Replay from `next`, then tail. Ends on shutdown or when the client leaves.
async fn stream_plain(shared: ServiceContext, mut next: Offset, filter: EventFilter, tx: Tx) {
    let mut head = shared.store.watch_head();
    loop {
        head.borrow_and_update();
        let batch = match shared.store.read_records(next, READ_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        if let Some(last) = batch.last() {
            next = last.offset + 1;
        } else {
            // Caught up (or `next` fell behind retention: jump to what exists).
            match shared.store.first_offset() {
                Ok(first) if first > next => {
                    next = first;
                    continue;
                }
                _ => {}
            }
        }
        let caught_up = batch.is_empty();
        for raw in batch {
            let msg = match stored_response(&filter, raw) {
                Ok(Some(msg)) => msg,
                Ok(None) => continue,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                sent = tx.send(Ok(msg)) => if sent.is_err() { return },
            }
        }
        if caught_up {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tx.closed() => return,
                changed = head.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Counts a stream as open for as long as it lives.
struct StreamCount(Arc<Metrics>);

impl StreamCount {
    fn open(metrics: Arc<Metrics>) -> Self {
        metrics.open_streams.fetch_add(1, Ordering::Relaxed);
        Self(metrics)
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Subscriber for SubscriberService {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let scope = Scope::of(&request);
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let plan = self.plan(&scope, &req).await?;
        let slot = self.shared.stream_slot(super::StreamKind::Subscribe)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shared = self.shared.clone();
        let open = StreamCount::open(shared.metrics.clone());
        match plan.durable {
            None => {
                self.shared.tasks.spawn(async move {
                    let _open = open;
                    let _slot = slot;
                    stream_plain(shared, plan.start, plan.filter, tx).await
                });
            }
            Some(d) => {
                let term = match self.shared.consumers.route().await? {
                    Route::Here(term) => term,
                    Route::Primary(url) => {
                        let channel = forward::to_broker(&url, &metadata).await?;
                        let answers = forward::subscriber(channel)
                            .subscribe(forward::request(&metadata, req))
                            .await?
                            .into_inner();
                        // The stream holds this broker's slot while it lasts.
                        let frames = answers.map(move |answer| {
                            let _held = (&slot, &open);
                            answer.map(|a| SubscribeFrame::Decoded(Box::new(a)))
                        });
                        return Ok(Response::new(Box::pin(frames)));
                    }
                };
                let consumer = self
                    .shared
                    .consumers
                    .open_ordered(
                        &d.name,
                        CreateSpec {
                            start: plan.start,
                            filter: plan.filter,
                            max_deliveries: d.max_deliveries,
                        },
                        d.ordering,
                    )
                    .await?;
                self.shared.tasks.spawn(async move {
                    let _open = open;
                    let _slot = slot;
                    stream_durable(shared, consumer, d, tx, term).await
                });
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let scope = Scope::of(&request);
        if let Route::Primary(url) = self.shared.consumers.route().await? {
            return forward::subscriber_call(
                &url,
                request,
                |mut c, r| async move { c.ack(r).await },
            )
            .await;
        }
        let req = request.into_inner();
        validate_consumer_name(&req.consumer)?;
        if req.offsets.is_empty() {
            return Err(Error::invalid("offsets", "must not be empty").into());
        }
        let consumer = self.shared.consumers.get_in(&scope, &req.consumer)?;
        consumer.ack(&offsets_of(&req.offsets)).await?;
        Ok(Response::new(AckResponse {}))
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        let scope = Scope::of(&request);
        if let Route::Primary(url) = self.shared.consumers.route().await? {
            return forward::subscriber_call(
                &url,
                request,
                |mut c, r| async move { c.nack(r).await },
            )
            .await;
        }
        let req = request.into_inner();
        validate_consumer_name(&req.consumer)?;
        if req.offsets.is_empty() {
            return Err(Error::invalid("offsets", "must not be empty").into());
        }
        let delay = match &req.delay {
            None => Duration::ZERO,
            Some(d) => {
                let d = convert::duration("delay", d)?;
                if d > self.shared.config.max_ack_wait {
                    return Err(Error::invalid(
                        "delay",
                        format!(
                            "must be at most max_ack_wait ({:?})",
                            self.shared.config.max_ack_wait
                        ),
                    )
                    .into());
                }
                d
            }
        };
        let consumer = self.shared.consumers.get_in(&scope, &req.consumer)?;
        consumer.nack(&offsets_of(&req.offsets), delay)?;
        Ok(Response::new(NackResponse {}))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<GetEventResponse>, Status> {
        let scope = Scope::of(&request);
        let req = request.into_inner();
        let offset = match (req.offset, req.event_id.as_str()) {
            (0, "") => {
                return Err(Error::invalid(
                    "offset",
                    "required (offsets start at 1), or set event_id",
                )
                .into())
            }
            (0, id) => self
                .shared
                .store
                .offset_of_id(&EventId::new(id))
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "no event with id {id:?} (never published, or removed by retention)"
                    ))
                })?,
            (o, "") => Offset::new(o),
            _ => {
                return Err(
                    Error::invalid("event_id", "set either offset or event_id, not both").into(),
                )
            }
        };
        // Another tenant's event is answered like a missing one, in the
        // words of the lookup the caller made.
        let e = scope
            .event(&self.shared.store, offset)
            .await
            .map_err(|e| match e {
                Error::NotFound(_) if !req.event_id.is_empty() => Error::NotFound(format!(
                    "no event with id {:?} (never published, or removed by retention)",
                    req.event_id
                )),
                e => e,
            })?;
        Ok(Response::new(GetEventResponse {
            offset: e.offset.get(),
            published_at: Some(convert::timestamp(e.published_at)),
            event_type: e.event_type.to_string(),
            event: Some(e.event),
        }))
    }
}
