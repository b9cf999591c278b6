//! A published event's tenant, checked at the edge: the payload's
//! `tenant_id` and the envelope's `tenant` must agree, and be well-formed
//! names. Which of the two an event belongs to is `model::event_tenant`.

use std::fmt;

use crate::{
    config::tenants::check_name,
    error::{Error, Result},
    model::payload_tenant,
    pb,
};

/// Resolves and checks a published event's tenant (field paths under
/// `path`): the payload's and the envelope's must agree, and the name must
/// be well-formed.
pub(crate) fn validate_tenant(event: &pb::Event, path: &dyn fmt::Display) -> Result<()> {
    let envelope = event.tenant.as_str();
    if !envelope.is_empty() {
        check_name(envelope).map_err(|m| Error::invalid(format!("{path}.tenant"), m))?;
    }
    if let Some((field, t)) = payload_tenant(event.payload.as_ref()) {
        if !t.is_empty() {
            check_name(t).map_err(|m| Error::invalid(format!("{path}.{field}"), m))?;
            if !envelope.is_empty() && envelope != t {
                return Err(Error::invalid(
                    format!("{path}.tenant"),
                    format!("is {envelope:?} but {field} is {t:?}: they must agree (or leave tenant empty)"),
                ));
            }
        }
    }
    Ok(())
}
