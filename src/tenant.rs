//! Tenants: whose an event, an endpoint or a named consumer is, and the one
//! [`Scope`] every service goes through to reach them.
//!
//! An event's tenant is its payload's `tenant_id` for the WMS event types
//! (shipment.closed, pick.confirmed, inventory.updated, order.status,
//! return.received) and the envelope's `Event.tenant` for the others
//! (`model::event_tenant`); both given must agree (checked at publish by
//! `convert`). An endpoint's and a consumer's
//! tenant is fixed when it is created. Empty means "no tenant": only global
//! tokens see such events, endpoints and consumers.
//!
//! A request's [`Scope`] comes from the [`Caller`] the auth interceptor puts
//! in its extensions (the console puts its own there the same way): a
//! tenant-scoped token gives [`Scope::Tenant`], a global token or no
//! authentication [`Scope::Global`]. The domain lookups
//! (`Endpoints::record`, `Consumers::get_in`, [`Scope::event`]) take the
//! scope and answer `NOT_FOUND` for another tenant's resource, so no handler
//! checks tenants itself.

use std::fmt;

use crate::{
    auth::Caller,
    error::{Error, Result},
    model::{event_tenant, payload_tenant, EventFilter, Offset, StoredEvent},
    pb,
    store::Store,
    token_bucket::TokenBucket,
};

pub use crate::config::tenants::{check_name, MAX_TENANT_BYTES};

/// Whose resources a request may see and change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// Everything: a global token, or authentication off.
    #[default]
    Global,
    /// Only this tenant's events, endpoints, deliveries and consumers.
    Tenant(String),
}

impl Scope {
    /// The scope of a request: from the [`Caller`] in its extensions (none:
    /// authentication is off, everything is visible).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self::of_caller(request.extensions().get::<Caller>())
    }

    /// The scope of a caller (none: authentication is off).
    pub fn of_caller(caller: Option<&Caller>) -> Self {
        match caller.and_then(|c| c.tenant.clone()) {
            Some(t) => Scope::Tenant(t),
            None => Scope::Global,
        }
    }

    /// The tenant, when scoped to one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Scope::Global => None,
            Scope::Tenant(t) => Some(t),
        }
    }

    /// Whether a resource of `tenant` (`""`: none) is visible.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Scope::Global => true,
            Scope::Tenant(t) => t == tenant,
        }
    }

    /// `Ok` when a resource of `tenant` is visible; otherwise the same
    /// `NOT_FOUND` as for a resource that does not exist (`not_found`), so
    /// another tenant's ids reveal nothing.
    pub fn check(&self, tenant: &str, not_found: impl FnOnce() -> Error) -> Result<()> {
        if self.sees(tenant) {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// `filter`, narrowed to this scope's tenant: what a tenant subscriber
    /// reads can never be widened by its own request.
    pub fn narrow(&self, filter: EventFilter) -> EventFilter {
        match self {
            Scope::Global => filter,
            Scope::Tenant(t) => filter.with_tenant(t.clone()),
        }
    }

    /// The event at `offset` if it exists and is visible; `NOT_FOUND` for
    /// both "no such event" and "another tenant's event".
    pub async fn event(&self, store: &Store, offset: Offset) -> Result<StoredEvent> {
        self.visible(store, offset, store.get(offset).await?)
    }

    /// [`Scope::event`] read synchronously from the embedded log, for the
    /// subsystems that run on it only (see [`Store::local`]).
    pub fn local_event(&self, store: &Store, offset: Offset) -> Result<StoredEvent> {
        self.visible(store, offset, store.local()?.get(offset)?)
    }

    /// `found`, the event read at `offset`, if it is visible to this scope;
    /// `NOT_FOUND` (saying so when it was erased) otherwise.
    fn visible(
        &self,
        store: &Store,
        offset: Offset,
        found: Option<StoredEvent>,
    ) -> Result<StoredEvent> {
        let not_found = || {
            Error::NotFound(format!(
                "no event at offset {offset} (never published, or removed by retention)"
            ))
        };
        let Some(event) = found else {
            // An erased event says so, to whoever may see its tenant.
            return match store.erasure(offset)? {
                Some(e) if self.sees(&e.tenant) => Err(Error::NotFound(format!(
                    "the event at offset {offset} (id {:?}) was {}; only its id, type, tenant \
                     and publish time remain",
                    e.event_id,
                    match e.reason.as_str() {
                        "expired" => "removed by its tenant's retention (tenant_retention)",
                        _ => "erased with its tenant's data (EraseTenant)",
                    }
                ))),
                _ => Err(not_found()),
            };
        };
        self.check(event_tenant(&event.event), not_found)?;
        Ok(event)
    }

    /// The tenant a new resource gets: a tenant scope's own; for a global
    /// scope, `requested` (may be empty: global). A tenant scope asking for
    /// another tenant is `PERMISSION_DENIED` naming `field`.
    pub fn assign(&self, field: &str, requested: &str) -> Result<String> {
        match self {
            Scope::Global => {
                if !requested.is_empty() {
                    check_name(requested).map_err(|m| Error::invalid(field, m))?;
                }
                Ok(requested.to_owned())
            }
            Scope::Tenant(t) if requested.is_empty() || requested == t => Ok(t.clone()),
            Scope::Tenant(t) => Err(Error::PermissionDenied(format!(
                "{field}: this token is scoped to tenant {t:?} and cannot act for {requested:?}"
            ))),
        }
    }
}

impl Scope {
    /// Admits a validated event for publishing under this scope: a tenant
    /// scope's event gets that tenant when it names none, and naming
    /// another is `PERMISSION_DENIED` naming the field; the tenant must be
    /// a configured one (`known`, empty: any).
    pub fn admit_event(
        &self,
        event: &mut pb::Event,
        path: &dyn fmt::Display,
        known: &[String],
    ) -> Result<()> {
        // The field's path is spelled only for a refusal: this runs for
        // every event of every batch.
        let name = match payload_tenant(event.payload.as_ref()) {
            Some((f, t)) if !t.is_empty() => f,
            _ => "tenant",
        };
        let field = || format!("{path}.{name}");
        if let Scope::Tenant(mine) = self {
            let t = event_tenant(event);
            if t.is_empty() {
                event.tenant = mine.clone();
            } else if t != mine {
                return Err(Error::PermissionDenied(format!(
                    "{}: this token publishes only tenant {mine:?}'s events, not {t:?}'s",
                    field()
                )));
            }
        }
        match known.is_empty() {
            true => Ok(()),
            false => check_known(known, &field(), event_tenant(event)),
        }
    }
}

/// `tenant_publish_rate`: one token bucket per tenant, shared by every
/// publish path. Events of no tenant are not limited here.
pub struct PublishRates {
    rate: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<String, TokenBucket>>,
}

impl PublishRates {
    /// Buckets refilled at `rate` events/s holding `burst` (0: one
    /// second's worth, at least 1); a rate of 0 limits nothing.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = if burst == 0 {
            rate.ceil().max(1.0)
        } else {
            f64::from(burst)
        };
        Self {
            rate,
            burst,
            buckets: Default::default(),
        }
    }

    /// Takes one token per event for each tenant among `tenants`, all or
    /// nothing: a batch over any tenant's budget is refused whole with
    /// `RESOURCE_EXHAUSTED` naming the key.
    pub fn take<'a>(&self, tenants: impl IntoIterator<Item = &'a str>) -> Result<()> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut want: Vec<(&str, f64)> = Vec::new();
        for t in tenants.into_iter().filter(|t| !t.is_empty()) {
            match want.iter_mut().find(|(k, _)| *k == t) {
                Some((_, n)) => *n += 1.0,
                None => want.push((t, 1.0)),
            }
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for (t, n) in &want {
            let b = buckets
                .entry((*t).to_owned())
                .or_insert_with(|| TokenBucket::full(self.rate, self.burst));
            if b.available() < *n {
                return Err(Error::ResourceExhausted(format!(
                    "tenant {t:?} is over tenant_publish_rate ({} events/s, bursts of {}); \
                     retry later",
                    self.rate, self.burst
                )));
            }
        }
        for (t, n) in &want {
            if let Some(b) = buckets.get_mut(*t) {
                b.take(*n);
            }
        }
        Ok(())
    }
}

/// Checks `tenant` (non-empty) against the configured `tenants` list
/// (empty: any tenant is known).
pub fn check_known(known: &[String], field: &str, tenant: &str) -> Result<()> {
    if tenant.is_empty() || known.is_empty() || known.iter().any(|k| k == tenant) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{tenant:?} is not one of the configured tenants"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tenant::validate_tenant as validate_event;

    fn shipment(tenant_id: &str, envelope: &str) -> pb::Event {
        pb::Event {
            tenant: envelope.into(),
            payload: Some(pb::event::Payload::ShipmentClosed(pb::ShipmentClosed {
                tenant_id: tenant_id.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn event_tenant_rule() {
        assert_eq!(event_tenant(&shipment("t1", "")), "t1");
        assert_eq!(event_tenant(&shipment("", "t2")), "t2");
        assert_eq!(event_tenant(&shipment("t1", "t1")), "t1");
        assert!(validate_event(&shipment("t1", "t1"), &"event").is_ok());
        let e = validate_event(&shipment("t1", "t2"), &"event").unwrap_err();
        assert!(e.to_string().contains("event.tenant"), "{e}");
        let e = validate_event(&shipment("bad tenant", ""), &"event").unwrap_err();
        assert!(e.to_string().contains("shipment_closed.tenant_id"), "{e}");
        let custom = pb::Event {
            tenant: "acme".into(),
            payload: Some(pb::event::Payload::Custom(pb::CustomEvent::default())),
            ..Default::default()
        };
        assert_eq!(event_tenant(&custom), "acme");
    }

    #[test]
    fn publish_rates_are_per_tenant_and_all_or_nothing() {
        let r = PublishRates::new(1.0, 3);
        r.take(["a", "a"]).unwrap();
        // a has 1 left: a batch of 2 is refused whole, b is unaffected.
        let e = r.take(["a", "a", "b"]).unwrap_err();
        assert!(e.to_string().contains("tenant_publish_rate"), "{e}");
        r.take(["b", "b", "b", "", ""]).unwrap();
        r.take(["a"]).unwrap();
        assert!(r.take(["a"]).is_err());
        assert!(PublishRates::new(0.0, 0).take(["a"; 1000]).is_ok());
    }

    #[test]
    fn scopes() {
        let t = Scope::Tenant("a".into());
        assert!(t.sees("a") && !t.sees("b") && !t.sees(""));
        assert!(Scope::Global.sees("b") && Scope::Global.sees(""));
        assert_eq!(t.assign("endpoint.tenant", "").unwrap(), "a");
        assert!(matches!(
            t.assign("endpoint.tenant", "b"),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(Scope::Global.assign("x", "b").unwrap(), "b");
        assert!(Scope::Global.assign("x", "b c").is_err());
        assert!(check_known(&["a".into()], "f", "b").is_err());
        assert!(check_known(&[], "f", "b").is_ok());
    }
}
