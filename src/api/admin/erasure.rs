//! EraseTenant: a tenant's endpoints, consumers and event payloads go,
//! for a global admin only. `mod.rs` dispatches to this.

use tonic::{Request, Response, Status};

use super::{required, who, AdminService};
use crate::{
    error::Error,
    model::Offset,
    pb::{EraseTenantRequest, EraseTenantResponse},
    store::Removal,
};

impl AdminService {
    pub(super) async fn erase_tenant_impl(
        &self,
        request: Request<EraseTenantRequest>,
    ) -> Result<Response<EraseTenantResponse>, Status> {
        let (scope, caller) = who(&request);
        self.store.refuse_in_cluster("tenant erasure is")?;
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
        // are recorded dead, `erased`).
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
