//! An endpoint's life: create, read, list, update, delete, rotate its
//! secret, replay. Each change holds the supervisor's lock while it writes
//! the record and starts, restarts or stops the endpoint's worker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Endpoints, HeaderEdits};
use crate::{
    consumer::CreateSpec,
    convert,
    delivery::{
        endpoint::{self, consumer_name, EndpointRecord, EndpointSpec},
        signing::Secret,
    },
    error::{Error, Result},
    model::{
        endpoint::{Endpoint, EndpointView, Start},
        EndpointId, Offset,
    },
    tenant::{self, Scope},
};

impl Endpoints {
    /// Creates an endpoint; returns it and its secret (shown only now).
    pub async fn create(
        &self,
        scope: &Scope,
        mut endpoint: Endpoint,
    ) -> Result<(EndpointView, String)> {
        endpoint.tenant = scope.assign("endpoint.tenant", &endpoint.tenant)?;
        tenant::check_known(&self.config.tenants, "endpoint.tenant", &endpoint.tenant)?;
        let spec = EndpointSpec::validate(&endpoint, &self.config)?;
        endpoint::refuse_what_never_matches(&endpoint, &|_| true)?;
        endpoint::check_egress(&spec.url, self.supervisor.guard())?;
        if let Some(o) = &spec.oauth2 {
            endpoint::check_egress_of(
                "endpoint.oauth2.token_url",
                &o.token_url,
                self.supervisor.guard(),
            )?;
        }
        let mut workers = self.supervisor.lock().await;
        if self.store.endpoints().count()? >= self.config.max_endpoints {
            return Err(Error::ResourceExhausted(format!(
                "the broker already has max_endpoints ({}) endpoints",
                self.config.max_endpoints
            )));
        }
        self.check_tenant_endpoints(&endpoint.tenant)?;
        let start = match endpoint.start {
            None | Some(Start::Latest) => self.store.head(),
            Some(Start::Earliest) => self.store.first_offset()?,
            Some(Start::Offset(o)) => {
                convert::start_offset("endpoint.start_offset", o, self.store.head())?
                    .max(Offset::FIRST)
            }
            // Before 1970: from the first event.
            Some(Start::Time(t)) => self.store.offset_at_time(t.max(UNIX_EPOCH)).await?,
        };
        let now = SystemTime::now();
        let id = EndpointId::new(format!("ep_{}", ulid::Ulid::new()));
        endpoint.id = id.clone();
        endpoint.enabled = spec.enabled;
        endpoint.created_at = Some(now);
        endpoint.updated_at = Some(now);
        endpoint.disabled_reason.clear();
        endpoint.failing_since = None;
        let secret = Secret::generate();
        let record = EndpointRecord {
            endpoint,
            secret: secret.as_bytes().to_vec(),
            ..Default::default()
        };
        // The consumer first: an endpoint record always has its consumer.
        self.consumers
            .open(
                &consumer_name(&id),
                CreateSpec {
                    start,
                    // With its tenant from the start: a disabled endpoint's
                    // consumer (no worker sets its filter) never takes, nor
                    // expires, another tenant's events.
                    filter: spec.filter.clone(),
                    // The endpoint's retry schedule decides when to give up.
                    max_deliveries: 0,
                },
            )
            .await?;
        self.put_record(&record).await?;
        let origin = endpoint::url_origin(&spec.url);
        if spec.enabled {
            self.supervisor.start(&mut workers, &record, spec).await?;
        }
        tracing::info!(endpoint = %id, %origin, start = start.get(), "endpoint created");
        Ok((self.view(&record), secret.reveal()))
    }

    /// `tenant_max_endpoints`: refuses one more endpoint for `tenant`.
    fn check_tenant_endpoints(&self, tenant: &str) -> Result<()> {
        let max = self.config.tenant_max_endpoints;
        if tenant.is_empty() || max == 0 {
            return Ok(());
        }
        let mut n = 0;
        for v in self.store.endpoints().all() {
            if self.decode_record(&v?)?.endpoint.tenant == tenant {
                n += 1;
            }
        }
        if n >= max {
            return Err(Error::ResourceExhausted(format!(
                "tenant {tenant:?} already has tenant_max_endpoints ({max}) endpoints"
            )));
        }
        Ok(())
    }

    /// One endpoint (without secrets).
    pub fn get(&self, scope: &Scope, id: &EndpointId) -> Result<EndpointView> {
        Ok(self.view(&self.record(scope, id)?))
    }

    /// The scope's endpoints in id order, after `after` (a page token).
    pub fn list(
        &self,
        scope: &Scope,
        page_size: usize,
        after: &str,
    ) -> Result<(Vec<EndpointView>, String)> {
        let mut out = Vec::new();
        for v in self.store.endpoints().after(after) {
            let v = v?;
            let record = self.decode_record(&v)?;
            if !scope.sees(&record.endpoint.tenant) {
                continue;
            }
            out.push(self.view(&record));
            if out.len() > page_size {
                break;
            }
        }
        let next = if out.len() > page_size {
            out.truncate(page_size);
            out.last()
                .map(|v| v.endpoint.id.clone())
                .unwrap_or_default()
        } else {
            EndpointId::default()
        };
        Ok((out, next.into_string()))
    }

    /// Changes endpoint `id`: `change` sets the named `fields` (the update
    /// mask's paths as snake_case field names; the edge merges them), then
    /// the custom `headers` edits apply; the result is validated as a
    /// whole and the worker restarted with it.
    pub async fn update(
        &self,
        scope: &Scope,
        id: &EndpointId,
        fields: &[String],
        headers: &HeaderEdits,
        change: impl FnOnce(&mut Endpoint) -> Result<()>,
    ) -> Result<EndpointView> {
        let mut workers = self.supervisor.lock().await;
        let mut record = self.record(scope, id)?;
        let mut e = record.endpoint.clone();
        let was_enabled = e.enabled;
        change(&mut e)?;
        if !headers.is_empty() && fields.iter().any(|f| f == "headers") {
            return Err(Error::invalid(
                "set_headers",
                "use either the `headers` path of update_mask or set_headers/remove_headers",
            ));
        }
        headers.apply(&mut e.headers)?;
        let spec = EndpointSpec::validate(&e, &self.config)?;
        endpoint::refuse_what_never_matches(&e, &|name| fields.iter().any(|f| f == name))?;
        if spec.enabled && !was_enabled && e.failing_since.is_some() {
            // Re-enabled: still failing until a success (which announces the
            // recovery), but the auto-disable clock starts again.
            e.failing_since = Some(SystemTime::now());
        }
        if fields.iter().any(|f| f == "url") {
            endpoint::check_egress(&spec.url, self.supervisor.guard())?;
        }
        if let Some(o) = &spec.oauth2 {
            if fields.iter().any(|f| f.starts_with("oauth2")) {
                endpoint::check_egress_of(
                    "endpoint.oauth2.token_url",
                    &o.token_url,
                    self.supervisor.guard(),
                )?;
            }
        }
        if spec.enabled {
            e.disabled_reason.clear();
        }
        e.enabled = spec.enabled;
        e.updated_at = Some(SystemTime::now());
        record.endpoint = e;
        self.put_record(&record).await?;
        let id = record.endpoint.id.clone();
        if spec.enabled {
            self.supervisor.start(&mut workers, &record, spec).await?;
        } else {
            self.supervisor.stop(&mut workers, &id).await;
        }
        tracing::info!(endpoint = %id, "endpoint updated");
        Ok(self.view(&record))
    }

    /// Deletes an endpoint, its consumer and its delivery records.
    pub async fn delete(&self, scope: &Scope, id: &EndpointId) -> Result<()> {
        let mut workers = self.supervisor.lock().await;
        self.record(scope, id)?;
        self.supervisor.stop(&mut workers, id).await;
        self.store.endpoints().delete(id).await?;
        self.consumers.remove(&consumer_name(id)).await?;
        self.store.deliveries().delete_endpoint(id).await?;
        self.metrics.dead.remove(id.as_str());
        self.metrics.endpoint_stats.remove(id.as_str());
        self.supervisor.forget(id);
        self.metrics.deliveries.remove_first(id.as_str());
        tracing::info!(endpoint = %id, "endpoint deleted");
        Ok(())
    }

    /// A new secret; the old one keeps signing for `grace`.
    pub async fn rotate_secret(
        &self,
        scope: &Scope,
        id: &EndpointId,
        grace: Option<Duration>,
    ) -> Result<(String, SystemTime)> {
        let workers = self.supervisor.lock().await;
        self.record(scope, id)?;
        let grace = grace.unwrap_or(self.config.secret_rotation_grace);
        let secret = Secret::generate();
        let until = SystemTime::now() + grace;
        let record = self
            .modify(id, |r| {
                r.previous_secret = std::mem::take(&mut r.secret);
                r.previous_expires_nanos = crate::store::unix_nanos(until);
                r.secret = secret.as_bytes().to_vec();
                Ok(())
            })
            .await?;
        self.supervisor.set_keys(&workers, id, &record);
        tracing::info!(endpoint = %id, ?grace, "endpoint secret rotated");
        Ok((secret.reveal(), until))
    }

    /// Delivers everything from `from` on again.
    pub async fn replay(&self, scope: &Scope, id: &EndpointId, from: Offset) -> Result<Offset> {
        let _workers = self.supervisor.lock().await;
        self.record(scope, id)?;
        self.require_delivering(id).await?;
        let from = convert::start_offset("offset", from, self.store.head())?
            .max(self.store.first_offset()?);
        self.consumers.get(&consumer_name(id))?.rewind(from).await?;
        tracing::info!(endpoint = %id, from = from.get(), "endpoint replay");
        Ok(from)
    }
}
