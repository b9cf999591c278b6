//! Acting on what the workers report (the [`Control`] messages): an
//! endpoint is disabled (410 Gone, failing too long), starts failing,
//! recovers, or has a delivery failing or dead-lettered. Each changes the
//! endpoint's record and/or publishes one of the broker's own events
//! (`delivery::ops`) into the log.

use std::time::SystemTime;

use super::Endpoints;
use crate::{
    delivery::{endpoint, ops, supervisor::Control},
    error::Result,
    model::EndpointId,
    tenant::Scope,
};

impl Endpoints {
    /// Acts on one worker report; a failure is logged (the worker goes on).
    pub(super) async fn handle(&self, msg: Control) {
        let result = match msg {
            Control::Disable {
                endpoint_id,
                reason,
            } => self.disable(&endpoint_id, &reason).await,
            Control::Failing { endpoint_id, since } => {
                let _workers = self.supervisor.lock().await;
                self.modify(&endpoint_id, |r| {
                    r.endpoint.failing_since = Some(since);
                    Ok(())
                })
                .await
                .map(drop)
            }
            Control::Recovered {
                endpoint_id,
                failing_since,
            } => {
                let _workers = self.supervisor.lock().await;
                match self
                    .modify(&endpoint_id, |r| {
                        r.endpoint.failing_since = None;
                        Ok(())
                    })
                    .await
                {
                    Ok(r) => {
                        let e = &r.endpoint;
                        self.publish_ops(
                            ops::ENDPOINT_RECOVERED,
                            &endpoint_id,
                            ops::fields([
                                ("endpointId", ops::s(endpoint_id.as_str())),
                                ("url", ops::s(&endpoint::origin_of(&e.url))),
                                ("failingSince", ops::time(failing_since)),
                                ("recoveredAt", ops::time(SystemTime::now())),
                            ]),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            Control::DeliveryFailing {
                endpoint_id,
                offset,
                record,
            } => {
                self.publish_ops(
                    ops::DELIVERY_FAILING,
                    &endpoint_id,
                    ops::delivery_fields(&endpoint_id, offset, &record),
                )
                .await
            }
            Control::Exhausted {
                endpoint_id,
                offset,
                record,
            } => {
                self.publish_ops(
                    ops::DELIVERY_EXHAUSTED,
                    &endpoint_id,
                    ops::delivery_fields(&endpoint_id, offset, &record),
                )
                .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "handling a worker report failed");
        }
    }

    async fn disable(&self, endpoint_id: &EndpointId, reason: &str) -> Result<()> {
        let mut workers = self.supervisor.lock().await;
        let r = self.record(&Scope::Global, endpoint_id)?;
        if !r.endpoint.enabled {
            return Ok(()); // already (reports can race)
        }
        let r = self
            .modify(endpoint_id, |r| {
                r.endpoint.enabled = false;
                r.endpoint.disabled_reason = reason.to_owned();
                Ok(())
            })
            .await?;
        self.supervisor.stop(&mut workers, endpoint_id).await;
        tracing::warn!(endpoint = %endpoint_id, %reason, "endpoint disabled");
        drop(workers);
        self.publish_ops(
            ops::ENDPOINT_DISABLED,
            endpoint_id,
            ops::fields([
                ("endpointId", ops::s(endpoint_id.as_str())),
                ("url", ops::s(&endpoint::origin_of(&r.endpoint.url))),
                ("reason", ops::s(reason)),
                ("disabledAt", ops::time(SystemTime::now())),
            ]),
        )
        .await
    }

    /// Appends one of the broker's own events to the log.
    pub(super) async fn publish_ops(
        &self,
        event_type: &'static str,
        endpoint_id: &EndpointId,
        data: ops::Fields,
    ) -> Result<()> {
        // A tenant's endpoint's events belong to that tenant, so its own
        // subscribers and endpoints can take them.
        let tenant = self
            .record(&Scope::Global, endpoint_id)
            .map(|r| r.endpoint.tenant.clone())
            .unwrap_or_default();
        let event = ops::event(event_type, endpoint_id.as_str(), &tenant, data);
        self.store.append(vec![event]).await.map(drop)
    }
}
