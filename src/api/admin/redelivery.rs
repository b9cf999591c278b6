//! The Admin RPCs that send deliveries again (RetryDelivery,
//! ReplayEndpoint), and, in cluster mode, which calls run on the broker
//! that delivers their endpoint (`deliverer_elsewhere`; `mod.rs` forwards
//! the others there too).

use tonic::{Request, Response, Status};

use super::{required, who, AdminService};
use crate::{
    api::forward,
    convert,
    error::Error,
    model::{EndpointId, Offset},
    pb::{
        ReplayEndpointRequest, ReplayEndpointResponse, RetryDeliveryRequest, RetryDeliveryResponse,
    },
};

impl AdminService {
    /// In cluster mode, on a broker that does not deliver endpoint `id`:
    /// the URL of the one that does. Calls that move an endpoint's consumer
    /// run there (its worker holds the consumer's position), and
    /// GetEndpointStats reads the worker's figures there, so they are
    /// forwarded. (An unknown id runs here, and is answered `NOT_FOUND`.)
    pub(super) async fn deliverer_elsewhere(&self, id: &str) -> Result<Option<String>, Status> {
        let id = EndpointId::new(id);
        if !self.store.is_cluster() || self.endpoints.delivers(&id) {
            return Ok(None);
        }
        match self.store.deliverer(&id).await? {
            Some(url) => Ok(Some(url)),
            None => Err(Error::Unavailable(format!(
                "no broker delivers endpoint {id} at the moment (another is taking over): try \
                 again in a few seconds"
            ))
            .into()),
        }
    }

    pub(super) async fn retry_delivery_impl(
        &self,
        request: Request<RetryDeliveryRequest>,
    ) -> Result<Response<RetryDeliveryResponse>, Status> {
        if let Some(url) = self
            .deliverer_elsewhere(&request.get_ref().endpoint_id)
            .await?
        {
            return forward::admin(&url, request, |mut c, r| async move {
                c.retry_delivery(r).await
            })
            .await;
        }
        let (scope, caller) = who(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        if req.offset == 0 {
            return Err(Error::invalid("offset", "required").into());
        }
        let tenant = self.endpoint_tenant(&scope, &req.endpoint_id)?;
        let delivery = self
            .endpoints
            .retry_delivery(
                &scope,
                &EndpointId::new(&req.endpoint_id),
                Offset::new(req.offset),
            )
            .await?;
        let target = format!("{}/{}", req.endpoint_id, req.offset);
        self.audit(&caller, "delivery.retry", &target, &tenant)
            .await?;
        Ok(Response::new(RetryDeliveryResponse {
            delivery: Some(convert::delivery::delivery_to_pb(&delivery)),
        }))
    }

    pub(super) async fn replay_endpoint_impl(
        &self,
        request: Request<ReplayEndpointRequest>,
    ) -> Result<Response<ReplayEndpointResponse>, Status> {
        if let Some(url) = self
            .deliverer_elsewhere(&request.get_ref().endpoint_id)
            .await?
        {
            return forward::admin(&url, request, |mut c, r| async move {
                c.replay_endpoint(r).await
            })
            .await;
        }
        use crate::pb::replay_endpoint_request::Start;
        let (scope, caller) = who(&request);
        let req = request.into_inner();
        required("endpoint_id", &req.endpoint_id)?;
        let from = match &req.start {
            None => return Err(Error::invalid("start", "set offset or time").into()),
            Some(Start::Offset(o)) => Offset::new(*o),
            Some(Start::Time(t)) => {
                self.store
                    .offset_at_time(convert::system_time("time", t)?)
                    .await?
            }
        };
        if req.dry_run {
            let (from_offset, matching, more) =
                self.endpoints
                    .replay_count(&scope, &EndpointId::new(&req.endpoint_id), from)?;
            return Ok(Response::new(ReplayEndpointResponse {
                from_offset: from_offset.get(),
                matching,
                more,
            }));
        }
        let tenant = self.endpoint_tenant(&scope, &req.endpoint_id)?;
        let from_offset = self
            .endpoints
            .replay(&scope, &EndpointId::new(&req.endpoint_id), from)
            .await?;
        let action = format!("endpoint.replay(from {from_offset})");
        self.audit(&caller, &action, &req.endpoint_id, &tenant)
            .await?;
        Ok(Response::new(ReplayEndpointResponse {
            from_offset: from_offset.get(),
            ..Default::default()
        }))
    }
}
