//! EraseTenant: a tenant's endpoints, consumers and event payloads go,
//! for a global admin only. `mod.rs` dispatches to this.
//!
//! In cluster mode it runs on the primary broker, and another broker
//! forwards it there: the endpoints' consumers whose pending deliveries of
//! the erased events are settled, and the named durable consumers it
//! removes, live in the primary's memory, and the primary also runs
//! `tenant_retention`, so one broker at a time erases.

use tonic::{Request, Response, Status};

use super::{required, who, AdminService};
use crate::{
    api::forward,
    error::Error,
    model::Offset,
    pb::{EraseTenantRequest, EraseTenantResponse},
    store::Removal,
};

impl AdminService {
    /// In cluster mode, on a broker that is not the primary: the primary's
    /// URL. EraseTenant runs there: it removes named consumers, which the
    /// primary serves, and erases one tenant at a time with retention.
    async fn primary_elsewhere(&self) -> Result<Option<String>, Status> {
        if !self.store.is_cluster() || self.endpoints.is_primary() {
            return Ok(None);
        }
        match self.store.primary().await? {
            Some(url) => Ok(Some(url)),
            None => Err(Error::Unavailable(
                "no broker is the primary at the moment (another is taking over): try again in \
                 a few seconds"
                    .into(),
            )
            .into()),
        }
    }

    pub(super) async fn erase_tenant_impl(
        &self,
        request: Request<EraseTenantRequest>,
    ) -> Result<Response<EraseTenantResponse>, Status> {
        if let Some(url) = self.primary_elsewhere().await? {
            return forward::admin(
                &url,
                request,
                |mut c, r| async move { c.erase_tenant(r).await },
            )
            .await;
        }
        let (scope, caller) = who(&request);
        if let Some(t) = scope.tenant() {
            return Err(Error::PermissionDenied(format!(
                "EraseTenant needs a global admin token; this one is scoped to tenant {t:?}"
            ))
            .into());
        }
        let tenant = request.into_inner().tenant;
        required("tenant", &tenant)?;
        crate::tenant::check_name(&tenant).map_err(|m| Error::invalid("tenant", m))?;
        let endpoints = self.endpoints.erase_tenant(&tenant).await?;
        let mut consumers = 0;
        for c in self.consumers.list()? {
            if c.tenant == tenant {
                self.consumers.remove(&c.name).await?;
                consumers += 1;
            }
        }
        // Then the events: their payloads leave the log (the tenant's own
        // endpoints are gone already; others' pending deliveries of them
        // are recorded dead, `erased`). In cluster mode, an erasure cut
        // short before (a crash) is finished first.
        self.store.finish_erasures().await?;
        let events = self
            .endpoints
            .erase_events(&tenant, Offset::ZERO, Offset::MAX, Removal::Erased)
            .await?;
        self.audit(&caller, "tenant.erase", &tenant, &tenant)
            .await?;
        tracing::warn!(%tenant, endpoints, consumers, events, "tenant erased");
        Ok(Response::new(EraseTenantResponse {
            endpoints,
            consumers,
            events,
        }))
    }
}
