//! One admin change in the audit trail (tenants): who did what to what,
//! and when. The store keeps it in its own encoding (`store::state`); the
//! API shows it as `pb::AuditRecord` (`convert::audit`).

use std::time::SystemTime;

/// An admin change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditRecord {
    /// A ULID of the time of the change: records list in time order.
    pub id: String,
    /// When it was made.
    pub at: Option<SystemTime>,
    /// The token's name (empty: authentication is off).
    pub token: String,
    /// The token's tenant (empty: a global token).
    pub tenant: String,
    /// What was done, e.g. `endpoint.create`, `delivery.retry`.
    pub action: String,
    /// What it was done to: an endpoint id, `endpoint/offset`, a consumer
    /// name.
    pub target: String,
    /// The tenant of what was changed (empty: global).
    pub target_tenant: String,
}
