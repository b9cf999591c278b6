//! Domain types shared by the store, consumers and the API.
//!
//! The typed payload records (`ShipmentClosed`, ...) are the generated prost
//! messages themselves: they are plain data with 140+ fields, and mirroring
//! them field by field would only add a copy to keep in step. What the edge
//! guarantees is captured by the types here: a [`NewEvent`] has passed
//! validation in `convert.rs` and has its id, time and ordering key filled in.

pub mod audit;
pub mod delivery;
pub mod endpoint;
pub mod event_bytes;
mod ids;
mod offset;
pub mod ops;
pub mod time;

use std::{fmt, time::SystemTime};

use crate::pb;

pub use ids::{EndpointId, EventId};
pub use offset::Offset;

/// The first offset of an empty log.
pub const FIRST_OFFSET: Offset = Offset::FIRST;

/// An event type name such as `shipment.closed`: lowercase dot-separated
/// segments of `[a-z0-9_]`, at least two segments, at most 128 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(String);

/// The event types with a typed payload, in `oneof payload` order.
pub const TYPED_EVENT_TYPES: &[&str] = &[
    "shipment.closed",
    "pick.confirmed",
    "inventory.updated",
    "order.status",
    "return.received",
    "channel_inventory.updated",
];

/// The event types the broker publishes itself (operational events).
pub const BROKER_EVENT_TYPES: &[&str] = &[
    "stevedore.endpoint.disabled",
    "stevedore.endpoint.recovered",
    "stevedore.delivery.exhausted",
    "stevedore.delivery.failing",
    "stevedore.admin.changed",
];

/// Event types under this prefix are published by the broker itself.
pub const RESERVED_PREFIX: &str = "stevedore.";

/// Most names in one `event_types` list (an endpoint's or a Subscribe
/// request's): a filter is checked for every event read, and a list of
/// 100,000 names costs every read that much.
pub const MAX_EVENT_TYPES: usize = 256;

impl EventType {
    /// A request's `event_types` list: each name well-formed, none listed
    /// twice, at most [`MAX_EVENT_TYPES`]. An error carries the index of the
    /// offending entry (none: the list as a whole) and what is wrong.
    pub fn parse_list(names: &[String]) -> Result<Vec<Self>, (Option<usize>, String)> {
        if names.len() > MAX_EVENT_TYPES {
            return Err((
                None,
                format!(
                    "at most {MAX_EVENT_TYPES} event types (got {})",
                    names.len()
                ),
            ));
        }
        let mut out: Vec<Self> = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let ty = Self::parse(name).map_err(|m| (Some(i), m))?;
            if let Some(first) = out.iter().position(|t| *t == ty) {
                return Err((Some(i), format!("duplicate of event_types[{first}]")));
            }
            out.push(ty);
        }
        Ok(out)
    }

    /// Checks the syntax only; whether a name may be used for a custom event
    /// is [`EventType::parse_custom`]'s business.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if name.len() > 128 {
            return Err("must be at most 128 bytes".into());
        }
        let segments: Vec<&str> = name.split('.').collect();
        if segments.len() < 2
            || segments.iter().any(|s| {
                s.is_empty()
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
        {
            return Err(format!(
                "{name:?} is not an event type name (lowercase `segment.segment`, [a-z0-9_] per segment)"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// A name a producer may use for a `CustomEvent`: well-formed, not one of
    /// the typed event types, not reserved.
    pub fn parse_custom(name: &str) -> Result<Self, String> {
        let ty = Self::parse(name)?;
        if TYPED_EVENT_TYPES.contains(&name) {
            return Err(format!(
                "{name:?} has a typed payload; publish it in that payload field instead of `custom`"
            ));
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "{name:?} is reserved: the `{RESERVED_PREFIX}` prefix is for the broker's own events"
            ));
        }
        Ok(ty)
    }

    /// For subscriptions and endpoints: refuses a name one typo away from a
    /// typed event type (`pick.confimed`), and any broker event type
    /// (`stevedore.…`) that does not exist, since either would silently
    /// match nothing. Other custom names stay allowed.
    pub fn check_known(name: &str) -> Result<(), String> {
        Self::parse(name)?;
        if TYPED_EVENT_TYPES.contains(&name) || BROKER_EVENT_TYPES.contains(&name) {
            return Ok(());
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "{name:?} is not an event type the broker publishes ({}){}",
                BROKER_EVENT_TYPES.join(", "),
                crate::suggest::hint(name, BROKER_EVENT_TYPES.iter().copied())
            ));
        }
        match crate::suggest::within(name, TYPED_EVENT_TYPES.iter().copied(), 1) {
            Some(known) => Err(format!(
                "{name:?} is not a known event type (did you mean `{known}`?); a custom \
                 event type may not be one typo away from a typed one"
            )),
            None => Ok(()),
        }
    }

    /// Wraps a name known to be valid (a typed event type constant).
    pub(crate) fn from_static(name: &'static str) -> Self {
        Self(name.to_owned())
    }

    /// Wraps a name read back from the log (it passed validation when it
    /// was published).
    pub(crate) fn from_stored(name: String) -> Self {
        Self(name)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The event type a payload stands for; `None` when there is no payload.
pub fn event_type_of(payload: Option<&pb::event::Payload>) -> Option<EventType> {
    use pb::event::Payload as P;
    let name = match payload? {
        P::ShipmentClosed(_) => TYPED_EVENT_TYPES[0],
        P::PickConfirmed(_) => TYPED_EVENT_TYPES[1],
        P::InventoryUpdated(_) => TYPED_EVENT_TYPES[2],
        P::OrderStatus(_) => TYPED_EVENT_TYPES[3],
        P::ReturnReceived(_) => TYPED_EVENT_TYPES[4],
        P::ChannelInventoryUpdated(_) => TYPED_EVENT_TYPES[5],
        // Stored custom events passed `parse_custom`; a record that did not
        // would be corrupt, and its raw name is still the best description.
        P::Custom(c) => return Some(EventType(c.r#type.clone())),
    };
    Some(EventType::from_static(name))
}

/// The payload's own tenant field (`tenant_id`) for the WMS event types,
/// with its field name; `None` for types without one.
pub fn payload_tenant(payload: Option<&pb::event::Payload>) -> Option<(&'static str, &str)> {
    use pb::event::Payload as P;
    Some(match payload? {
        P::ShipmentClosed(p) => ("shipment_closed.tenant_id", p.tenant_id.as_str()),
        P::PickConfirmed(p) => ("pick_confirmed.tenant_id", p.tenant_id.as_str()),
        P::InventoryUpdated(p) => ("inventory_updated.tenant_id", p.tenant_id.as_str()),
        P::OrderStatus(p) => ("order_status.tenant_id", p.tenant_id.as_str()),
        P::ReturnReceived(p) => ("return_received.tenant_id", p.tenant_id.as_str()),
        P::ChannelInventoryUpdated(_) | P::Custom(_) => return None,
    })
}

/// The tenant an event belongs to (`""`: none): the payload's `tenant_id`
/// when it has one, else the envelope's `tenant`. The one rule every
/// tenant check (`crate::tenant::Scope`, filters, retention) goes by.
pub fn event_tenant(event: &pb::Event) -> &str {
    match payload_tenant(event.payload.as_ref()) {
        Some((_, t)) if !t.is_empty() => t,
        _ => event.tenant.as_str(),
    }
}

/// A validated event, ready to append. Its `event` has `id`, `occurred_at`
/// and `ordering_key` set.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event as it will be stored.
    pub event: pb::Event,
    /// Its type, derived from the payload.
    pub event_type: EventType,
    /// True when the broker generated the id: such an id cannot be in the log
    /// yet, so the idempotency lookup is skipped.
    pub id_assigned: bool,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its position.
    pub offset: Offset,
    /// When the broker appended it. Never decreases along the log.
    pub published_at: SystemTime,
    /// Its type.
    pub event_type: EventType,
    /// The event, with id, time and ordering key filled in.
    pub event: pb::Event,
}

/// What an [`EventFilter`] looks at, read without decoding the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMeta {
    /// The event's type.
    pub event_type: EventType,
    /// Its routing attributes.
    pub attributes: std::collections::HashMap<String, String>,
    /// Its tenant (`""`: none), by the rule of [`event_tenant`].
    pub tenant: String,
}

/// The result of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Where the event is (for a duplicate: where the original is).
    pub offset: Offset,
    /// True when the id was already in the log and nothing was written.
    pub duplicate: bool,
    /// For a duplicate: the stored event's payload, attributes or ordering
    /// key differ from this one's (an id reused for another event).
    pub payload_differs: bool,
}

/// Which events a consumer takes: by type (empty: all) and by attribute
/// values (every listed attribute must be present with that value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    types: Vec<EventType>,
    attributes: std::collections::BTreeMap<String, String>,
    /// With no types listed, leave out the broker's own `stevedore.*`
    /// events (webhook endpoints opt in to those by naming them).
    exclude_reserved: bool,
    /// Only this tenant's events (a tenant's endpoint, consumer or
    /// subscriber); nothing widens it.
    tenant: Option<String>,
}

impl EventFilter {
    /// A filter on types only (sorted, deduplicated).
    pub fn types_only(types: Vec<EventType>) -> Self {
        Self::new(types, Default::default())
    }

    /// A filter on types and attributes.
    pub fn new(
        mut types: Vec<EventType>,
        attributes: std::collections::BTreeMap<String, String>,
    ) -> Self {
        types.sort();
        types.dedup();
        Self {
            types,
            attributes,
            exclude_reserved: false,
            tenant: None,
        }
    }

    /// The same filter, passing only `tenant`'s events.
    pub fn with_tenant(mut self, tenant: String) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// The tenant it is restricted to, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The same filter, but an empty type list no longer lets `stevedore.*`
    /// events through.
    pub fn excluding_reserved(mut self) -> Self {
        self.exclude_reserved = true;
        self
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.matches_parts(
            &event.event_type,
            &event.event.attributes,
            event_tenant(&event.event),
        )
    }

    /// Whether an event of this type and attributes passes.
    pub fn matches_meta(&self, meta: &EventMeta) -> bool {
        self.matches_parts(&meta.event_type, &meta.attributes, &meta.tenant)
    }

    fn matches_parts(
        &self,
        event_type: &EventType,
        attributes: &std::collections::HashMap<String, String>,
        tenant: &str,
    ) -> bool {
        if self.tenant.as_deref().is_some_and(|t| t != tenant) {
            return false;
        }
        let type_ok = if self.types.is_empty() {
            !(self.exclude_reserved && event_type.as_str().starts_with(RESERVED_PREFIX))
        } else {
            self.types.binary_search(event_type).is_ok()
        };
        type_ok
            && self
                .attributes
                .iter()
                .all(|(k, v)| attributes.get(k) == Some(v))
    }

    /// Why `event` does not pass, in words; `None` when it passes. Agrees
    /// with [`EventFilter::matches`].
    pub fn exclusion(&self, event: &StoredEvent) -> Option<String> {
        let ty = &event.event_type;
        if let Some(t) = &self.tenant {
            let of = event_tenant(&event.event);
            if of != t {
                return Some(if of.is_empty() {
                    format!("the endpoint belongs to tenant {t:?}; the event belongs to no tenant")
                } else {
                    format!(
                        "the endpoint belongs to tenant {t:?}; the event belongs to another tenant"
                    )
                });
            }
        }
        if self.types.is_empty() {
            if self.exclude_reserved && ty.as_str().starts_with(RESERVED_PREFIX) {
                return Some(format!(
                    "{ty} is a broker event type: it goes only to endpoints that list it in event_types"
                ));
            }
        } else if self.types.binary_search(ty).is_err() {
            let listed: Vec<&str> = self.types.iter().map(EventType::as_str).collect();
            return Some(format!(
                "event type {ty} is not in event_types [{}]",
                listed.join(", ")
            ));
        }
        for (k, want) in &self.attributes {
            match event.event.attributes.get(k) {
                None => {
                    return Some(format!(
                        "attribute_filters wants {k:?} = {want:?}; the event has no attribute {k:?}"
                    ))
                }
                Some(got) if got != want => {
                    return Some(format!(
                        "attribute_filters wants {k:?} = {want:?}; the event has {got:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        debug_assert!(self.matches(event));
        None
    }

    /// Whether every event passes (nothing to check).
    pub fn is_all(&self) -> bool {
        self.types.is_empty()
            && self.attributes.is_empty()
            && !self.exclude_reserved
            && self.tenant.is_none()
    }

    /// Whether only an event's type can fail it: no types listed, no
    /// attributes, no tenant (what is left out is the broker's own
    /// `stevedore.*` events, when it excludes them).
    pub fn tests_only_type(&self) -> bool {
        self.types.is_empty() && self.attributes.is_empty() && self.tenant.is_none()
    }

    /// The types, sorted.
    pub fn types(&self) -> &[EventType] {
        &self.types
    }
}

/// Moves values a client sent in a `ChannelInventoryUpdated`'s `legacy_*`
/// fields (the field numbers of stevedore's first versions, before the
/// nullable fields became wrapper types) into their current fields, where
/// those are unset, and clears the legacy ones. Publish applies it before
/// storing; reads apply it to events stored by those versions. Everything
/// after sees the current fields only.
#[allow(deprecated)]
pub fn upgrade_legacy_fields(event: &mut pb::Event) {
    macro_rules! upgrade {
        ($msg:expr; $($field:ident / $legacy:ident),* $(,)?) => {
            $(
                let legacy = $msg.$legacy.take();
                if $msg.$field.is_none() {
                    $msg.$field = legacy;
                }
            )*
        };
    }
    let Some(pb::event::Payload::ChannelInventoryUpdated(c)) = event.payload.as_mut() else {
        return;
    };
    if let Some(v) = c.variant.as_mut() {
        upgrade!(v; id / legacy_id, inventory_policy / legacy_inventory_policy);
    }
    if let Some(cv) = c.channel_variant.as_mut() {
        upgrade!(cv;
            id / legacy_id,
            company_id / legacy_company_id,
            variant_id / legacy_variant_id,
            channel_id / legacy_channel_id,
            external_id / legacy_external_id,
            external_group_id / legacy_external_group_id,
            external_sku / legacy_external_sku,
            source / legacy_source,
            hash / legacy_hash,
            parent_hash / legacy_parent_hash,
            status / legacy_status,
            error_message / legacy_error_message,
        );
        if let Some(ch) = cv.channel.as_mut() {
            upgrade!(ch;
                shipstation_url / legacy_shipstation_url,
                free_shipping_threshold / legacy_free_shipping_threshold,
                hide_when_no_cost_price / legacy_hide_when_no_cost_price,
                id / legacy_id,
                include_backorder_quantity / legacy_include_backorder_quantity,
                inventory_sync / legacy_inventory_sync,
                parent_channel / legacy_parent_channel,
                unpublish_no_inventory / legacy_unpublish_no_inventory,
                warehouse_id / legacy_warehouse_id,
                warehouse_sync / legacy_warehouse_sync,
            );
        }
    }
    if let Some(i) = c.inventory.as_mut() {
        upgrade!(i; available / legacy_available);
    }
}
