//! `stevedore.v1.Admin`: self-service endpoints and delivery operations.
//!
//! Here: the service and the endpoint and delivery RPCs; `consumers.rs`:
//! durable gRPC consumers; `queries.rs`: the maintenance page's queries;
//! `redelivery.rs`: RetryDelivery and ReplayEndpoint, and which calls run
//! on the primary broker in cluster mode; `erasure.rs`: EraseTenant.

mod consumers;
mod erasure;
mod queries;
mod redelivery;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    api::forward,
    audit::Audit,
    auth::Caller,
    consumer::Consumers,
    convert,
    endpoints::Endpoints,
    error::Error,
    model::{EndpointId, Offset},
    pb::{
        admin_server::Admin, CreateEndpointRequest, CreateEndpointResponse, DeleteConsumerRequest,
        DeleteConsumerResponse, DeleteEndpointRequest, DeleteEndpointResponse, EraseTenantRequest,
        EraseTenantResponse, ExplainEventRequest, ExplainEventResponse, GetEndpointRequest,
        GetEndpointResponse, ListAttemptsRequest, ListAttemptsResponse, ListAuditRecordsRequest,
        ListAuditRecordsResponse, ListConsumersRequest, ListConsumersResponse,
        ListDeliveriesRequest, ListDeliveriesResponse, ListEndpointsRequest, ListEndpointsResponse,
        RedriveConsumerRequest, RedriveConsumerResponse, ReplayEndpointRequest,
        ReplayEndpointResponse, ResetConsumerRequest, ResetConsumerResponse, RetryDeliveryRequest,
        RetryDeliveryResponse, RotateEndpointSecretRequest, RotateEndpointSecretResponse,
        SendTestEventRequest, SendTestEventResponse, UpdateEndpointRequest, UpdateEndpointResponse,
    },
    pb::{
        GetEndpointStatsRequest, GetEndpointStatsResponse, ListEventTypesRequest,
        ListEventTypesResponse, RecoverDeliveriesRequest, RecoverDeliveriesResponse,
        RenderDeliveryRequest, RenderDeliveryResponse, ResendEventRequest, ResendEventResponse,
    },
    tenant::Scope,
};

const MAX_PAGE: usize = 1000;

/// The Admin service.
pub struct AdminService {
    endpoints: Arc<Endpoints>,
    consumers: Arc<Consumers>,
    store: crate::store::Store,
    audit: Audit,
}

impl AdminService {
    /// An Admin service over the broker's endpoints and durable consumers.
    pub fn new(
        endpoints: Arc<Endpoints>,
        consumers: Arc<Consumers>,
        store: crate::store::Store,
    ) -> Self {
        Self {
            endpoints,
            consumers,
            audit: Audit::new(store.clone()),
            store,
        }
    }

    /// Also publishes each audit record as a `stevedore.admin.changed`
    /// event (config `audit_events`).
    pub fn publishing_audit_events(mut self, on: bool) -> Self {
        self.audit = self.audit.publishing(on);
        self
    }

    /// Records an admin change made by `caller` (tenants: the audit trail).
    async fn audit(
        &self,
        caller: &Option<Caller>,
        action: &str,
        target: &str,
        target_tenant: &str,
    ) -> Result<(), Error> {
        self.audit
            .record(caller.as_ref(), action, target, target_tenant)
            .await
    }

    /// The tenant of endpoint `id`, as `scope` sees it (NOT_FOUND if it
    /// does not).
    fn endpoint_tenant(&self, scope: &Scope, id: &str) -> Result<String, Error> {
        Ok(self
            .endpoints
            .get(scope, &EndpointId::new(id))?
            .endpoint
            .tenant)
    }
}

fn page_size(n: u32) -> Result<usize, Error> {
    match n as usize {
        0 => Ok(MAX_PAGE),
        n if n > MAX_PAGE => Err(Error::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE}"),
        )),
        n => Ok(n),
    }
}

/// Who sent a request: the scope every lookup goes through, and the caller
/// for the audit trail. Both come from the `Caller` the auth layer (or the
/// console) put in the extensions; none: authentication is off, global.
fn who<T>(request: &Request<T>) -> (Scope, Option<Caller>) {
    (
        Scope::of(request),
        request.extensions().get::<Caller>().cloned(),
    )
}

fn required(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        Err(Error::invalid(field, "required"))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_endpoint(
        &self,
        request: Request<CreateEndpointRequest>,
    ) -> Result<Response<CreateEndpointResponse>, Status> {
        let (scope, caller) = who(&request);
        let endpoint = request
            .into_inner()
            .endpoint
            .ok_or_else(|| Error::invalid("endpoint", "required"))?;
        let endpoint = convert::endpoint::endpoint_from_pb(endpoint)?;
        let (view, secret) = self.endpoints.create(&scope, endpoint).await?;
        let e = &view.endpoint;
        self.audit(&caller, "endpoint.create", e.id.as_str(), &e.tenant)
            .await?;
        Ok(Response::new(CreateEndpointResponse {
            endpoint: Some(convert::endpoint::shown(&view)),
            secret,
        }))
    }

    async fn get_endpoint(
        &self,
        request: Request<GetEndpointRequest>,
    ) -> Result<Response<GetEndpointResponse>, Status> {
        let scope = Scope::of(&request);
        let id = request.into_inner().id;
        required("id", &id)?;
        Ok(Response::new(GetEndpointResponse {
            endpoint: Some(convert::endpoint::shown(
                &self.endpoints.get(&scope, &EndpointId::new(&id))?,
            )),
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        let scope = Scope::of(&request);
        let req = request.into_inner();
        let (endpoints, next_page_token) =
            self.endpoints
                .list(&scope, page_size(req.page_size)?, &req.page_token)?;
        Ok(Response::new(ListEndpointsResponse {
            endpoints: endpoints.iter().map(convert::endpoint::shown).collect(),
            next_page_token,
        }))
    }

    async fn update_endpoint(
        &self,
        request: Request<UpdateEndpointRequest>,
    ) -> Result<Response<UpdateEndpointResponse>, Status> {
        let (scope, caller) = who(&request);
        let req = request.into_inner();
        let endpoint = req
            .endpoint
            .ok_or_else(|| Error::invalid("endpoint", "required"))?;
        required("endpoint.id", &endpoint.id)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let headers = crate::endpoints::HeaderEdits {
            set: req.set_headers,
            remove: req.remove_headers,
        };
        if paths.is_empty() && headers.is_empty() {
            // Replacing everything would silently reset what the caller did
            // not mention (and redacted header values).
            return Err(Error::invalid(
                "update_mask",
                "required: name the fields to change, e.g. \"url,enabled\"",
            )
            .into());
        }
        // The mask names the message's fields; JSON clients write camelCase.
        let fields = convert::endpoint::mask_paths(&paths);
        let view = self
            .endpoints
            .update(
                &scope,
                &EndpointId::new(&endpoint.id),
                &fields,
                &headers,
                |e| convert::endpoint::merge(e, &endpoint, &fields),
            )
            .await?;
        let mut changed = paths.clone();
        changed.extend(headers.set.keys().map(|h| format!("headers[{h}]")));
        changed.extend(headers.remove.iter().map(|h| format!("headers[{h}]")));
        let action = format!("endpoint.update({})", changed.join(","));
        let e = &view.endpoint;
        self.audit(&caller, &action, e.id.as_str(), &e.tenant)
            .await?;
        Ok(Response::new(UpdateEndpointResponse {
            endpoint: Some(convert::endpoint::shown(&view)),
        }))
    }

    async fn delete_endpoint(
        &self,
        request: Request<DeleteEndpointRequest>,
    ) -> Result<Response<DeleteEndpointResponse>, Status> {
        let (scope, caller) = who(&request);
        let id = request.into_inner().id;
        required("id", &id)?;
        let tenant = self.endpoint_tenant(&scope, &id)?;
        self.endpoints.delete(&scope, &EndpointId::new(&id)).await?;
        self.audit(&caller, "endpoint.delete", &id, &tenant).await?;
        Ok(Response::new(DeleteEndpointResponse {}))
    }

    async fn rotate_endpoint_secret(
        &self,
        request: Request<RotateEndpointSecretRequest>,
    ) -> Result<Response<RotateEndpointSecretResponse>, Status> {
        // On the endpoint's deliverer, so its worker signs with both
        // secrets from the answer on (another broker's change reaches the
        // worker only at the deliverer's next look at the records).
        if let Some(url) = self.deliverer_elsewhere(&request.get_ref().id).await? {
            return forward::admin(&url, request, |mut c, r| async move {
                c.rotate_endpoint_secret(r).await
            })
            .await;
        }
        let (scope, caller) = who(&request);
        let req = request.into_inner();
        required("id", &req.id)?;
        let tenant = self.endpoint_tenant(&scope, &req.id)?;
        let grace = req
            .grace_period
            .as_ref()
            .map(|d| convert::duration("grace_period", d))
            .transpose()?;
        if grace.is_some_and(|g| g > std::time::Duration::from_secs(30 * 86_400)) {
            return Err(Error::invalid("grace_period", "must be at most 30 days").into());
        }
        let (secret, until) = self
            .endpoints
            .rotate_secret(&scope, &EndpointId::new(&req.id), grace)
            .await?;
        self.audit(&caller, "endpoint.rotate_secret", &req.id, &tenant)
            .await?;
        Ok(Response::new(RotateEndpointSecretResponse {
            secret,
            previous_expires_at: Some(convert::timestamp(until)),
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        self.list_deliveries_filtered(request).await
    }

    async fn list_attempts(
        &self,
        request: Request<ListAttemptsRequest>,
    ) -> Result<Response<ListAttemptsResponse>, Status> {
        let scope = Scope::of(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        if req.offset == 0 {
            return Err(Error::invalid("offset", "required").into());
        }
        Ok(Response::new(ListAttemptsResponse {
            attempts: self
                .endpoints
                .list_attempts(
                    &scope,
                    &EndpointId::new(&req.endpoint_id),
                    Offset::new(req.offset),
                )?
                .iter()
                .map(convert::delivery::attempt_to_pb)
                .collect(),
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<RetryDeliveryRequest>,
    ) -> Result<Response<RetryDeliveryResponse>, Status> {
        self.retry_delivery_impl(request).await
    }

    async fn replay_endpoint(
        &self,
        request: Request<ReplayEndpointRequest>,
    ) -> Result<Response<ReplayEndpointResponse>, Status> {
        self.replay_endpoint_impl(request).await
    }

    async fn send_test_event(
        &self,
        request: Request<SendTestEventRequest>,
    ) -> Result<Response<SendTestEventResponse>, Status> {
        let (scope, caller) = who(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        let tenant = self.endpoint_tenant(&scope, &req.endpoint_id)?;
        let (webhook_id, attempt, delivered) = self
            .endpoints
            .send_test(&scope, &EndpointId::new(&req.endpoint_id))
            .await?;
        self.audit(&caller, "endpoint.test", &req.endpoint_id, &tenant)
            .await?;
        Ok(Response::new(SendTestEventResponse {
            webhook_id,
            attempt: Some(convert::delivery::attempt_to_pb(&attempt)),
            delivered,
        }))
    }

    async fn explain_event(
        &self,
        request: Request<ExplainEventRequest>,
    ) -> Result<Response<ExplainEventResponse>, Status> {
        use crate::pb::explain_event_request::Event;
        let scope = Scope::of(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        // Another tenant's event id is answered like an unknown one.
        let offset = match &req.event {
            Some(Event::Offset(o)) => self.event_offset(&scope, Some(*o), None)?,
            Some(Event::EventId(id)) => self.event_offset(&scope, None, Some(id))?,
            None => self.event_offset(&scope, None, None)?,
        };
        let explanation =
            self.endpoints
                .explain(&scope, &EndpointId::new(&req.endpoint_id), offset)?;
        Ok(Response::new(convert::delivery::explanation_to_pb(
            &explanation,
        )))
    }

    async fn list_consumers(
        &self,
        request: Request<ListConsumersRequest>,
    ) -> Result<Response<ListConsumersResponse>, Status> {
        self.list_consumers_impl(request).await
    }

    async fn delete_consumer(
        &self,
        request: Request<DeleteConsumerRequest>,
    ) -> Result<Response<DeleteConsumerResponse>, Status> {
        self.delete_consumer_impl(request).await
    }

    async fn redrive_consumer(
        &self,
        request: Request<RedriveConsumerRequest>,
    ) -> Result<Response<RedriveConsumerResponse>, Status> {
        self.redrive_consumer_impl(request).await
    }

    async fn reset_consumer(
        &self,
        request: Request<ResetConsumerRequest>,
    ) -> Result<Response<ResetConsumerResponse>, Status> {
        self.reset_consumer_impl(request).await
    }

    async fn recover_deliveries(
        &self,
        request: Request<RecoverDeliveriesRequest>,
    ) -> Result<Response<RecoverDeliveriesResponse>, Status> {
        if let Some(url) = self
            .deliverer_elsewhere(&request.get_ref().endpoint_id)
            .await?
        {
            return forward::admin(&url, request, |mut c, r| async move {
                c.recover_deliveries(r).await
            })
            .await;
        }
        self.recover_deliveries_impl(request).await
    }

    async fn resend_event(
        &self,
        request: Request<ResendEventRequest>,
    ) -> Result<Response<ResendEventResponse>, Status> {
        if let Some(url) = self
            .deliverer_elsewhere(&request.get_ref().endpoint_id)
            .await?
        {
            return forward::admin(
                &url,
                request,
                |mut c, r| async move { c.resend_event(r).await },
            )
            .await;
        }
        self.resend_event_impl(request).await
    }

    async fn render_delivery(
        &self,
        request: Request<RenderDeliveryRequest>,
    ) -> Result<Response<RenderDeliveryResponse>, Status> {
        self.render_delivery_impl(request).await
    }

    async fn get_endpoint_stats(
        &self,
        request: Request<GetEndpointStatsRequest>,
    ) -> Result<Response<GetEndpointStatsResponse>, Status> {
        // The figures are the delivering worker's, in its broker's memory.
        if let Some(url) = self
            .deliverer_elsewhere(&request.get_ref().endpoint_id)
            .await?
        {
            return forward::admin(&url, request, |mut c, r| async move {
                c.get_endpoint_stats(r).await
            })
            .await;
        }
        self.get_endpoint_stats_impl(request).await
    }

    async fn list_event_types(
        &self,
        _request: Request<ListEventTypesRequest>,
    ) -> Result<Response<ListEventTypesResponse>, Status> {
        Ok(Response::new(self.list_event_types_impl()))
    }

    async fn list_audit_records(
        &self,
        request: Request<ListAuditRecordsRequest>,
    ) -> Result<Response<ListAuditRecordsResponse>, Status> {
        let scope = Scope::of(&request);
        let req = request.into_inner();
        let (records, next_page_token) =
            self.audit
                .list(&scope, page_size(req.page_size)?, &req.page_token)?;
        Ok(Response::new(ListAuditRecordsResponse {
            records: records.iter().map(convert::audit::audit_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn erase_tenant(
        &self,
        request: Request<EraseTenantRequest>,
    ) -> Result<Response<EraseTenantResponse>, Status> {
        self.erase_tenant_impl(request).await
    }
}
