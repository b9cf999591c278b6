//! The audit trail (tenants): every admin change is recorded with the
//! token's name and tenant, the action and its target, kept in the state
//! (`store::AuditRecords`, in time order) and, with
//! `audit_events` on, published into the log as a `stevedore.admin.changed`
//! event belonging to the target's tenant, so that tenant's subscribers and
//! endpoints can follow it.

use std::time::SystemTime;

use crate::{
    auth::Caller, delivery::ops, error::Result, model::audit::AuditRecord, store::Store,
    tenant::Scope,
};

/// Records and lists admin changes.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    publish: bool,
}

impl Audit {
    /// The audit trail kept in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            publish: false,
        }
    }

    /// Also publishes every record as a `stevedore.admin.changed` event.
    pub fn publishing(mut self, on: bool) -> Self {
        self.publish = on;
        self
    }

    /// Records that `caller` (none: authentication is off) did `action` to
    /// `target`, which belongs to `target_tenant`, and publishes it.
    pub async fn record(
        &self,
        caller: Option<&Caller>,
        action: &str,
        target: &str,
        target_tenant: &str,
    ) -> Result<()> {
        let now = SystemTime::now();
        let id = ulid::Ulid::from_datetime(now).to_string();
        let record = AuditRecord {
            id: id.clone(),
            at: Some(now),
            token: caller.map(|c| c.name.clone()).unwrap_or_default(),
            tenant: caller.and_then(|c| c.tenant.clone()).unwrap_or_default(),
            action: action.to_owned(),
            target: target.to_owned(),
            target_tenant: target_tenant.to_owned(),
        };
        self.store.audit().put(&record).await?;
        tracing::info!(token = %record.token, tenant = %record.tenant, action, target, "admin change");
        if !self.publish {
            return Ok(());
        }
        let event = ops::event(
            ops::ADMIN_CHANGED,
            target,
            target_tenant,
            ops::fields([
                ("token", ops::s(&record.token)),
                ("tenant", ops::s(&record.tenant)),
                ("action", ops::s(action)),
                ("target", ops::s(target)),
                ("targetTenant", ops::s(target_tenant)),
                ("at", ops::time(now)),
            ]),
        );
        self.store.append(vec![event]).await.map(drop)
    }

    /// The records `scope` may see (a tenant: those it made or that
    /// changed its resources), newest first, before `page_token`.
    pub fn list(
        &self,
        scope: &Scope,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<AuditRecord>, String)> {
        let mut out = Vec::new();
        for r in self.store.audit().newest_first(page_token) {
            let r = r?;
            let visible = match scope.tenant() {
                None => true,
                Some(t) => r.tenant == t || r.target_tenant == t,
            };
            if !visible {
                continue;
            }
            out.push(r);
            if out.len() > page_size {
                break;
            }
        }
        let next = if out.len() > page_size {
            out.truncate(page_size);
            out.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }
}
