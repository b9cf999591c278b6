//! The Admin RPCs over durable gRPC consumers: list, delete, redrive dead
//! letters, reset. Endpoints' consumers (`@`-named) are managed through
//! their endpoints. `mod.rs` dispatches to these.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{required, who, AdminService};
use crate::{
    api::forward,
    consumer::{Consumer, Route},
    convert,
    error::Error,
    model::Offset,
    pb::{
        ConsumerInfo, DeleteConsumerRequest, DeleteConsumerResponse, ListConsumersRequest,
        ListConsumersResponse, RedriveConsumerRequest, RedriveConsumerResponse,
        ResetConsumerRequest, ResetConsumerResponse,
    },
    tenant::Scope,
};

impl AdminService {
    /// A durable gRPC consumer by name, if `scope` sees it; endpoints'
    /// consumers are managed through their endpoints.
    fn consumer(&self, scope: &Scope, name: &str) -> Result<Arc<Consumer>, Error> {
        required("name", name)?;
        if name.starts_with('@') {
            return Err(Error::invalid(
                "name",
                "names starting with `@` belong to endpoints: use UpdateEndpoint, \
                 ReplayEndpoint or DeleteEndpoint",
            ));
        }
        self.consumers.get_in(scope, name)
    }

    pub(super) async fn list_consumers_impl(
        &self,
        request: Request<ListConsumersRequest>,
    ) -> Result<Response<ListConsumersResponse>, Status> {
        if let Route::Primary(url) = self.consumers.route().await? {
            return forward::admin(&url, request, |mut c, r| async move {
                c.list_consumers(r).await
            })
            .await;
        }
        let scope = Scope::of(&request);
        let head = self.store.head();
        let consumers = self
            .consumers
            .list()?
            .into_iter()
            .filter(|c| scope.sees(&c.tenant))
            .map(|c| ConsumerInfo {
                tenant: c.tenant,
                lag: head.distance_from(c.floor),
                ack_floor: c.floor.get(),
                max_deliveries: c.max_deliveries,
                dead_letters: c.dead.len() as u64,
                dead_offsets: c.dead.into_iter().take(100).map(Offset::get).collect(),
                event_types: c.event_types,
                name: c.name,
            })
            .collect();
        Ok(Response::new(ListConsumersResponse { consumers }))
    }

    pub(super) async fn delete_consumer_impl(
        &self,
        request: Request<DeleteConsumerRequest>,
    ) -> Result<Response<DeleteConsumerResponse>, Status> {
        if let Route::Primary(url) = self.consumers.route().await? {
            return forward::admin(&url, request, |mut c, r| async move {
                c.delete_consumer(r).await
            })
            .await;
        }
        let (scope, caller) = who(&request);
        let name = request.into_inner().name;
        let consumer = self.consumer(&scope, &name)?;
        self.consumers.remove(&name).await?;
        let tenant = consumer.filter().tenant().unwrap_or_default().to_owned();
        self.audit(&caller, "consumer.delete", &name, &tenant)
            .await?;
        tracing::info!(consumer = %name, "consumer deleted");
        Ok(Response::new(DeleteConsumerResponse {}))
    }

    pub(super) async fn redrive_consumer_impl(
        &self,
        request: Request<RedriveConsumerRequest>,
    ) -> Result<Response<RedriveConsumerResponse>, Status> {
        if let Route::Primary(url) = self.consumers.route().await? {
            return forward::admin(&url, request, |mut c, r| async move {
                c.redrive_consumer(r).await
            })
            .await;
        }
        let (scope, caller) = who(&request);
        let name = request.into_inner().name;
        let consumer = self.consumer(&scope, &name)?;
        let redriven = consumer.redrive().await?;
        let tenant = consumer.filter().tenant().unwrap_or_default().to_owned();
        self.audit(&caller, "consumer.redrive", &name, &tenant)
            .await?;
        tracing::info!(consumer = %name, redriven, "consumer dead letters redriven");
        Ok(Response::new(RedriveConsumerResponse { redriven }))
    }

    pub(super) async fn reset_consumer_impl(
        &self,
        request: Request<ResetConsumerRequest>,
    ) -> Result<Response<ResetConsumerResponse>, Status> {
        if let Route::Primary(url) = self.consumers.route().await? {
            return forward::admin(&url, request, |mut c, r| async move {
                c.reset_consumer(r).await
            })
            .await;
        }
        use crate::pb::reset_consumer_request::Position;
        let (scope, caller) = who(&request);
        let req = request.into_inner();
        let consumer = self.consumer(&scope, &req.name)?;
        let head = self.store.head();
        let to = match &req.position {
            None => {
                return Err(
                    Error::invalid("position", "set earliest, latest, offset or time").into(),
                )
            }
            Some(Position::Earliest(_)) => self.store.first_offset()?,
            Some(Position::Latest(_)) => head,
            Some(Position::Offset(0)) => {
                return Err(Error::invalid("offset", "offsets start at 1").into())
            }
            Some(Position::Offset(o)) if Offset::new(*o) > head => {
                return Err(
                    Error::invalid("offset", format!("{o} is past the head ({head})")).into(),
                )
            }
            Some(Position::Offset(o)) => Offset::new(*o),
            Some(Position::Time(t)) => {
                self.store
                    .offset_at_time(convert::system_time("time", t)?)
                    .await?
            }
        };
        consumer.reset(to).await?;
        let tenant = consumer.filter().tenant().unwrap_or_default().to_owned();
        self.audit(
            &caller,
            &format!("consumer.reset(to {to})"),
            &req.name,
            &tenant,
        )
        .await?;
        tracing::info!(consumer = %req.name, to = to.get(), "consumer reset");
        Ok(Response::new(ResetConsumerResponse {
            ack_floor: consumer.floor().get(),
        }))
    }
}
