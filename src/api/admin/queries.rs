//! The Admin RPCs the maintenance page needs besides the basic ones (#16):
//! filtered delivery listing, bulk recovery, re-sending one event, the
//! rendered request of a delivery, endpoint statistics and the event-type
//! catalog. `admin.rs` dispatches to these.

use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};

use super::{page_size, required, AdminService};
use crate::{
    convert,
    endpoints::DeliveryQuery,
    error::Error,
    model::{delivery, EndpointId, EventId, Offset},
    pb::{
        self, DeliveryState, GetEndpointStatsRequest, GetEndpointStatsResponse,
        ListDeliveriesRequest, ListDeliveriesResponse, ListEventTypesResponse,
        RecoverDeliveriesRequest, RecoverDeliveriesResponse, RenderDeliveryRequest,
        RenderDeliveryResponse, ResendEventRequest, ResendEventResponse,
    },
    tenant::Scope,
};

/// Longest GetEndpointStats window (what the broker keeps).
const MAX_WINDOW: Duration = crate::delivery::stats::KEPT;

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl AdminService {
    /// The offset of `event`: an offset (the wire's number, not 0) or an
    /// event id in the log.
    pub(super) fn event_offset(
        &self,
        scope: &Scope,
        offset: Option<u64>,
        event_id: Option<&str>,
    ) -> Result<Offset, Error> {
        match (offset, event_id) {
            (Some(0), _) => Err(Error::invalid("offset", "offsets start at 1")),
            (Some(o), _) => Ok(Offset::new(o)),
            (None, Some(id)) => {
                required("event_id", id)?;
                let not_found = || {
                    Error::NotFound(format!(
                        "no event with id {id:?} (never published, or removed by retention)"
                    ))
                };
                let offset = self
                    .store
                    .local()?
                    .offset_of_id(&EventId::new(id))?
                    .ok_or_else(not_found)?;
                // Another tenant's id is answered like an unknown one.
                scope
                    .local_event(&self.store, offset)
                    .map_err(|_| not_found())?;
                Ok(offset)
            }
            (None, None) => Err(Error::invalid("event", "set offset or event_id")),
        }
    }

    /// The offsets of events published in `[since, until)` (unset: open).
    fn time_range(
        &self,
        since: Option<&prost_types::Timestamp>,
        until: Option<&prost_types::Timestamp>,
    ) -> Result<(Offset, Offset), Error> {
        let since = since
            .map(|t| convert::system_time("since", t))
            .transpose()?;
        let until = until
            .map(|t| convert::system_time("until", t))
            .transpose()?;
        if let (Some(s), Some(u)) = (since, until) {
            if u < s {
                return Err(Error::invalid("until", "must not be before since"));
            }
        }
        let log = self.store.local()?;
        let from = since.map_or(Ok(Offset::ZERO), |t| log.offset_at_time(t))?;
        let to = until.map_or(Ok(Offset::MAX), |t| log.offset_at_time(t))?;
        Ok((from, to))
    }

    pub(super) async fn list_deliveries_filtered(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let scope = Scope::of(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        let state = match DeliveryState::try_from(req.state) {
            Ok(DeliveryState::Unspecified) => None,
            Ok(s) => Some(convert::delivery::state_from_pb(s)),
            Err(_) => {
                return Err(
                    Error::invalid("state", format!("unknown enum value {}", req.state)).into(),
                )
            }
        };
        let before = if req.page_token.is_empty() {
            None
        } else {
            Some(Offset::new(req.page_token.parse::<u64>().map_err(
                |_| Error::invalid("page_token", "not a token from a previous response"),
            )?))
        };
        let page = page_size(req.page_size)?;
        let (mut from, mut until) = self.time_range(req.since.as_ref(), req.until.as_ref())?;
        if !req.event_id.is_empty() {
            match self
                .store
                .offset_of_id(&EventId::new(&req.event_id))
                .await?
            {
                Some(o) => {
                    from = from.max(o);
                    until = until.min(o + 1);
                }
                // No such event: no delivery of it.
                None => until = Offset::ZERO,
            }
        }
        if !req.event_type.is_empty() {
            crate::model::EventType::parse(&req.event_type)
                .map_err(|e| Error::invalid("event_type", e))?;
        }
        let q = DeliveryQuery {
            state,
            event_type: (!req.event_type.is_empty()).then_some(req.event_type),
            ordering_key: (!req.ordering_key.is_empty()).then_some(req.ordering_key),
            from,
            until,
        };
        let (deliveries, next) = self.endpoints.query_deliveries(
            &scope,
            &EndpointId::new(&req.endpoint_id),
            &q,
            page,
            before,
        )?;
        Ok(Response::new(ListDeliveriesResponse {
            deliveries: deliveries
                .iter()
                .map(convert::delivery::delivery_to_pb)
                .collect(),
            next_page_token: next.map(|o| o.to_string()).unwrap_or_default(),
        }))
    }

    pub(super) async fn recover_deliveries_impl(
        &self,
        request: Request<RecoverDeliveriesRequest>,
    ) -> Result<Response<RecoverDeliveriesResponse>, Status> {
        let (scope, caller) = super::who(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        let mut states = Vec::new();
        for (i, &s) in req.states.iter().enumerate() {
            match DeliveryState::try_from(s) {
                Ok(s @ (DeliveryState::Failed | DeliveryState::Dead)) => {
                    states.push(convert::delivery::state_from_pb(s))
                }
                _ => {
                    return Err(Error::invalid(
                        format!("states[{i}]"),
                        "only DELIVERY_STATE_FAILED and DELIVERY_STATE_DEAD can be recovered",
                    )
                    .into())
                }
            }
        }
        if states.is_empty() {
            states = vec![
                delivery::DeliveryState::Failed,
                delivery::DeliveryState::Dead,
            ];
        }
        if !req.event_type.is_empty() {
            crate::model::EventType::parse(&req.event_type)
                .map_err(|e| Error::invalid("event_type", e))?;
        }
        let until = req
            .until
            .unwrap_or_else(|| convert::timestamp(SystemTime::now()));
        let (from, until) = self.time_range(req.since.as_ref(), Some(&until))?;
        let r = self
            .endpoints
            .recover(
                &scope,
                &EndpointId::new(&req.endpoint_id),
                from,
                until,
                &states,
                (!req.event_type.is_empty()).then_some(req.event_type.as_str()),
                req.dry_run,
            )
            .await?;
        if !req.dry_run && r.requeued > 0 {
            let tenant = self.endpoint_tenant(&scope, &req.endpoint_id)?;
            let action = format!("delivery.recover({})", r.requeued);
            self.audit(&caller, &action, &req.endpoint_id, &tenant)
                .await?;
        }
        Ok(Response::new(RecoverDeliveriesResponse {
            matched: r.matched,
            requeued: r.requeued,
            more: r.more,
        }))
    }

    pub(super) async fn resend_event_impl(
        &self,
        request: Request<ResendEventRequest>,
    ) -> Result<Response<ResendEventResponse>, Status> {
        use pb::resend_event_request::Event;
        let (scope, caller) = super::who(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        let offset = match &req.event {
            Some(Event::Offset(o)) => self.event_offset(&scope, Some(*o), None)?,
            Some(Event::EventId(id)) => self.event_offset(&scope, None, Some(id))?,
            None => self.event_offset(&scope, None, None)?,
        };
        let delivery = self
            .endpoints
            .resend(&scope, &EndpointId::new(&req.endpoint_id), offset)
            .await?;
        let tenant = self.endpoint_tenant(&scope, &req.endpoint_id)?;
        let target = format!("{}/{offset}", req.endpoint_id);
        self.audit(&caller, "delivery.resend", &target, &tenant)
            .await?;
        Ok(Response::new(ResendEventResponse {
            delivery: Some(convert::delivery::delivery_to_pb(&delivery)),
        }))
    }

    pub(super) async fn render_delivery_impl(
        &self,
        request: Request<RenderDeliveryRequest>,
    ) -> Result<Response<RenderDeliveryResponse>, Status> {
        use pb::render_delivery_request::Event;
        let scope = Scope::of(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        let offset = match &req.event {
            Some(Event::Offset(o)) => self.event_offset(&scope, Some(*o), None)?,
            Some(Event::EventId(id)) => self.event_offset(&scope, None, Some(id))?,
            None => self.event_offset(&scope, None, None)?,
        };
        let rendered =
            self.endpoints
                .render_request(&scope, &EndpointId::new(&req.endpoint_id), offset)?;
        Ok(Response::new(convert::delivery::rendered_request_to_pb(
            &rendered,
        )))
    }

    pub(super) async fn get_endpoint_stats_impl(
        &self,
        request: Request<GetEndpointStatsRequest>,
    ) -> Result<Response<GetEndpointStatsResponse>, Status> {
        let scope = Scope::of(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        let window = match &req.window {
            None => Duration::from_secs(3600),
            Some(w) => convert::duration("window", w)?,
        };
        if window < Duration::from_secs(60)
            || window > MAX_WINDOW
            || window.as_secs() % 60 != 0
            || window.subsec_nanos() != 0
        {
            return Err(Error::invalid(
                "window",
                "must be whole minutes from 1 minute to 24 hours",
            )
            .into());
        }
        // NOT_FOUND for an unknown endpoint, like every endpoint RPC.
        self.endpoints
            .get(&scope, &EndpointId::new(&req.endpoint_id))?;
        let stats = self.endpoints.endpoint_stats();
        let s = stats.summary(&req.endpoint_id, window, SystemTime::now());
        Ok(Response::new(GetEndpointStatsResponse {
            attempts: s.attempts,
            successes: s.successes,
            failures: s.attempts - s.successes,
            success_rate: if s.attempts == 0 {
                0.0
            } else {
                s.successes as f64 / s.attempts as f64
            },
            latency_p50: Some(pb_duration(s.p50)),
            latency_p95: Some(pb_duration(s.p95)),
            latency_p99: Some(pb_duration(s.p99)),
            buckets: s
                .minutes
                .iter()
                .map(|m| pb::StatsBucket {
                    start: Some(prost_types::Timestamp {
                        seconds: (m.minute * 60) as i64,
                        nanos: 0,
                    }),
                    attempts: m.attempts,
                    successes: m.successes,
                    failures: m.failures(),
                    latency_p95: Some(pb_duration(m.quantile(0.95))),
                })
                .collect(),
            counting_since: Some(convert::timestamp(stats.since())),
        }))
    }

    pub(super) fn list_event_types_impl(&self) -> ListEventTypesResponse {
        ListEventTypesResponse {
            event_types: crate::webhook::catalog::catalog()
                .iter()
                .map(|e| pb::EventTypeInfo {
                    name: e.name.to_owned(),
                    description: e.description.to_owned(),
                    json_schema: e.schema.to_string(),
                    sample: e.sample.to_string(),
                    broker_event: e.broker_event,
                })
                .collect(),
        }
    }
}
