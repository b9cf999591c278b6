//! Audit records as the API shows them.

use crate::{model::audit::AuditRecord, pb};

/// `r` as the API shows it.
pub fn audit_to_pb(r: &AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        id: r.id.clone(),
        at: r.at.map(super::timestamp),
        token: r.token.clone(),
        tenant: r.tenant.clone(),
        action: r.action.clone(),
        target: r.target.clone(),
        target_tenant: r.target_tenant.clone(),
    }
}
