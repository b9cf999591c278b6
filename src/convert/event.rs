//! Incoming events: validation of a published `Event`, field by field,
//! into the domain's `NewEvent`, with errors that name the field by its
//! request path (`events[2].pick_confirmed.lines[0].quantity_short`).

use std::{fmt, time::SystemTime};

use prost::Message;
use prost_types::{value::Kind, Struct, Timestamp};

use super::{check_timestamp, timestamp, FieldPath};
use crate::{
    error::{Error, Result},
    model::{event_type_of, EventType, NewEvent},
    pb::{self, event::Payload},
};

/// Limits applied while validating events.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Largest encoded event.
    pub max_event_bytes: usize,
}

/// `parent.name`.
struct Dot<'a>(FieldPath<'a>, &'a str);

impl fmt::Display for Dot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// `parent.name[index]`.
struct Index<'a>(FieldPath<'a>, &'a str, usize);

impl fmt::Display for Index<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}[{}]", self.0, self.1, self.2)
    }
}

const MAX_ID_BYTES: usize = 256;
const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// Most attributes on one event (also counted on the wire before decoding,
/// by `api::intake`).
pub(crate) const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_BYTES: usize = 1024;
const MAX_STRUCT_DEPTH: usize = 32;

/// Checks `event` and fills in what the producer left out: a ULID id, the
/// publish time as `occurred_at`, the per-type ordering key. `path` prefixes
/// field names in errors (`event` or `events[3]`).
pub fn validate_event(
    mut event: pb::Event,
    path: FieldPath<'_>,
    now: SystemTime,
    limits: EventLimits,
) -> Result<NewEvent> {
    let size = event.encoded_len();
    if size > limits.max_event_bytes {
        return Err(Error::invalid(
            path.to_string(),
            format!(
                "encoded size {size} bytes exceeds max_event_bytes ({})",
                limits.max_event_bytes
            ),
        ));
    }
    let field = |name| Dot(path, name);
    crate::model::upgrade_legacy_fields(&mut event);

    let id_assigned = event.id.is_empty();
    if id_assigned {
        event.id = ulid::Ulid::from_datetime(now).to_string();
    } else {
        check_text(&field("id"), &event.id, MAX_ID_BYTES)?;
    }
    match &event.occurred_at {
        Some(ts) => check_timestamp(&field("occurred_at"), ts)?,
        None => event.occurred_at = Some(timestamp(now)),
    }
    if event.attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(
            field("attributes").to_string(),
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    for (k, v) in &event.attributes {
        let p = format!("{path}.attributes[{k:?}]");
        let p: FieldPath<'_> = &p;
        if k.is_empty() {
            return Err(Error::invalid(p.to_string(), "key must not be empty"));
        }
        check_text(&p, k, MAX_ATTRIBUTE_BYTES)?;
        check_text(&p, v, MAX_ATTRIBUTE_BYTES)?;
    }

    let Some(payload) = &event.payload else {
        return Err(Error::invalid(
            field("payload").to_string(),
            "required: set exactly one of shipment_closed, pick_confirmed, inventory_updated, \
             order_status, return_received, channel_inventory_updated, custom",
        ));
    };
    let default_key = validate_payload(path, payload)?;
    let event_type = event_type_of(event.payload.as_ref()).expect("payload checked above");
    super::tenant::validate_tenant(&event, &path)?;

    if event.ordering_key.is_empty() {
        // Without a natural key the event is ordered only against itself.
        event.ordering_key = default_key.unwrap_or_else(|| event.id.clone());
    } else {
        check_text(
            &field("ordering_key"),
            &event.ordering_key,
            MAX_ORDERING_KEY_BYTES,
        )?;
    }
    Ok(NewEvent {
        event,
        event_type,
        id_assigned,
    })
}

/// Validates the payload and returns its default ordering key.
fn validate_payload(path: FieldPath<'_>, payload: &Payload) -> Result<Option<String>> {
    let mut v = Validator::default();
    let key = match payload {
        Payload::ShipmentClosed(s) => {
            let p = Dot(path, "shipment_closed");
            let p: FieldPath<'_> = &p;
            v.enumeration(
                &p,
                "tracking_status",
                pb::TrackingStatus::try_from(s.tracking_status).is_ok(),
                s.tracking_status,
            );
            v.enumeration(
                &p,
                "status",
                pb::ShipmentStatus::try_from(s.status).is_ok(),
                s.status,
            );
            v.enumeration(
                &p,
                "signature_required",
                pb::SignatureRequired::try_from(s.signature_required).is_ok(),
                s.signature_required,
            );
            v.timestamp(&p, "ship_date", &s.ship_date);
            v.timestamp(&p, "estimated_delivery_date", &s.estimated_delivery_date);
            v.number(&p, "weight_shipment", s.weight_shipment);
            for (i, d) in s.details.iter().enumerate() {
                let p = Index(p, "details", i);
                let p: FieldPath<'_> = &p;
                v.number(&p, "quantity_required", d.quantity_required);
                v.number(&p, "quantity_shipped", d.quantity_shipped);
                v.number(&p, "quantity_backordered", d.quantity_backordered);
                v.number(&p, "price", d.price);
            }
            first_non_empty(&[&s.sales_order_id, &s.lpn, &s.tracking_number])
        }
        Payload::PickConfirmed(s) => {
            let p = Dot(path, "pick_confirmed");
            let p: FieldPath<'_> = &p;
            v.enumeration(
                &p,
                "status",
                pb::PickStatus::try_from(s.status).is_ok(),
                s.status,
            );
            v.number(&p, "total_qty", s.total_qty);
            v.timestamp(&p, "last_activity_date", &s.last_activity_date);
            for (i, l) in s.lines.iter().enumerate() {
                let p = Index(p, "lines", i);
                let p: FieldPath<'_> = &p;
                v.number(&p, "quantity_required", l.quantity_required);
                v.number(&p, "quantity_processed", l.quantity_processed);
                v.number(&p, "quantity_short", l.quantity_short);
            }
            first_non_empty(&[&s.sales_order_id]).or(s.work_control_number.map(|n| n.to_string()))
        }
        Payload::InventoryUpdated(s) => {
            let p = Dot(path, "inventory_updated");
            let p: FieldPath<'_> = &p;
            v.enumeration(
                &p,
                "reason",
                pb::InventoryReason::try_from(s.reason).is_ok(),
                s.reason,
            );
            v.number(&p, "quantity_change", s.quantity_change);
            v.number(&p, "quantity_on_hand", s.quantity_on_hand);
            v.number(&p, "quantity_allocated", s.quantity_allocated);
            v.number(&p, "quantity_available", s.quantity_available);
            v.timestamp(&p, "last_activity_date", &s.last_activity_date);
            // One level is one product at one place: a later event for the
            // same key supersedes an earlier one.
            (!s.product.is_empty()).then(|| {
                [
                    &s.tenant_id,
                    &s.fulfillment_center_id,
                    &s.product,
                    &s.location,
                    &s.lot,
                ]
                .map(|s| s.as_str())
                .join("/")
            })
        }
        Payload::OrderStatus(s) => {
            let p = Dot(path, "order_status");
            let p: FieldPath<'_> = &p;
            v.enumeration(
                &p,
                "previous_status",
                pb::OrderStatus::try_from(s.previous_status).is_ok(),
                s.previous_status,
            );
            v.enumeration(
                &p,
                "status",
                pb::OrderStatus::try_from(s.status).is_ok(),
                s.status,
            );
            v.number(&p, "total_qty", s.total_qty);
            v.timestamp(&p, "last_activity_date", &s.last_activity_date);
            first_non_empty(&[&s.sales_order_id])
        }
        Payload::ReturnReceived(s) => {
            let p = Dot(path, "return_received");
            let p: FieldPath<'_> = &p;
            v.timestamp(&p, "received_date", &s.received_date);
            for (i, l) in s.lines.iter().enumerate() {
                let p = Index(p, "lines", i);
                let p: FieldPath<'_> = &p;
                v.number(&p, "quantity_expected", l.quantity_expected);
                v.number(&p, "quantity_received", l.quantity_received);
                v.enumeration(
                    &p,
                    "condition",
                    pb::ReturnCondition::try_from(l.condition).is_ok(),
                    l.condition,
                );
                v.enumeration(
                    &p,
                    "disposition",
                    pb::ReturnDisposition::try_from(l.disposition).is_ok(),
                    l.disposition,
                );
            }
            first_non_empty(&[&s.rma_id])
        }
        Payload::ChannelInventoryUpdated(s) => {
            let p = Dot(path, "channel_inventory_updated");
            let p: FieldPath<'_> = &p;
            let Some(variant) = &s.variant else {
                return Err(Error::invalid(format!("{p}.variant"), "required"));
            };
            let Some(variant_id) = variant.id else {
                return Err(Error::invalid(format!("{p}.variant.id"), "required"));
            };
            if s.inventory.as_ref().and_then(|i| i.available).is_none() {
                return Err(Error::invalid(
                    format!("{p}.inventory.available"),
                    "required",
                ));
            }
            if let Some(cv) = &s.channel_variant {
                let p = Dot(p, "channel_variant");
                let p: FieldPath<'_> = &p;
                for (name, ts) in [
                    ("inventory_update", &cv.inventory_update),
                    ("price_update", &cv.price_update),
                    ("publish_update", &cv.publish_update),
                    ("cost_price_update", &cv.cost_price_update),
                    ("created_at", &cv.created_at),
                    ("updated_at", &cv.updated_at),
                ] {
                    v.timestamp(&p, name, ts);
                }
                if let Some(ch) = &cv.channel {
                    v.number(
                        &Dot(p, "channel"),
                        "free_shipping_threshold",
                        ch.free_shipping_threshold,
                    );
                }
            }
            Some(variant_id.to_string())
        }
        Payload::Custom(c) => {
            let p = Dot(path, "custom");
            let p: FieldPath<'_> = &p;
            EventType::parse_custom(&c.r#type)
                .map_err(|m| Error::invalid(format!("{p}.type"), m))?;
            if let Some(data) = &c.data {
                check_struct(&format!("{p}.data"), data, 0)?;
            }
            None
        }
    };
    v.finish()?;
    Ok(key)
}

/// Collects the first problem found in a payload.
#[derive(Default)]
struct Validator {
    first_error: Option<Error>,
}

impl Validator {
    fn fail(&mut self, field: String, message: String) {
        self.first_error
            .get_or_insert(Error::invalid(field, message));
    }

    fn enumeration(&mut self, path: FieldPath<'_>, name: &str, known: bool, value: i32) {
        if !known {
            self.fail(
                format!("{path}.{name}"),
                format!("unknown enum value {value}"),
            );
        }
    }

    fn number(&mut self, path: FieldPath<'_>, name: &str, value: Option<f64>) {
        if value.is_some_and(|n| !n.is_finite()) {
            self.fail(format!("{path}.{name}"), "must be a finite number".into());
        }
    }

    fn timestamp(&mut self, path: FieldPath<'_>, name: &str, ts: &Option<Timestamp>) {
        if let Some(ts) = ts {
            if let Err(e) = check_timestamp(&Dot(path, name), ts) {
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn finish(self) -> Result<()> {
        self.first_error.map_or(Ok(()), Err)
    }
}

fn first_non_empty(candidates: &[&String]) -> Option<String> {
    candidates
        .iter()
        .find(|s| !s.is_empty())
        .map(|s| s.to_string())
}

fn check_text(field: FieldPath<'_>, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid(
            field.to_string(),
            format!("must be at most {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field.to_string(),
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of
/// ISO 8601 dates without an expanded year.
fn check_struct(field: &str, s: &Struct, depth: usize) -> Result<()> {
    for (k, v) in &s.fields {
        check_value(&format!("{field}.{k}"), v, depth + 1)?;
    }
    Ok(())
}

fn check_value(field: &str, v: &prost_types::Value, depth: usize) -> Result<()> {
    if depth > MAX_STRUCT_DEPTH {
        return Err(Error::invalid(
            field,
            format!("nested deeper than {MAX_STRUCT_DEPTH} levels"),
        ));
    }
    match &v.kind {
        Some(Kind::NumberValue(n)) if !n.is_finite() => {
            Err(Error::invalid(field, "must be a finite number"))
        }
        Some(Kind::StructValue(s)) => check_struct(field, s, depth),
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_value(&format!("{field}[{i}]"), v, depth + 1)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EventLimits = EventLimits {
        max_event_bytes: 4096,
    };

    fn pick(status: i32) -> pb::Event {
        pb::Event {
            payload: Some(Payload::PickConfirmed(pb::PickConfirmed {
                sales_order_id: "SO-1".into(),
                status,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn fills_in_id_time_and_key() {
        let now = SystemTime::now();
        let e = validate_event(pick(1), &"event", now, LIMITS).unwrap();
        assert!(e.id_assigned);
        assert_eq!(e.event.id.len(), 26);
        assert_eq!(e.event.occurred_at, Some(timestamp(now)));
        assert_eq!(e.event.ordering_key, "SO-1");
        assert_eq!(e.event_type.as_str(), "pick.confirmed");
    }

    #[test]
    fn errors_name_the_field() {
        let now = SystemTime::now();
        let err = validate_event(pick(42), &"events[3]", now, LIMITS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "events[3].pick_confirmed.status: unknown enum value 42"
        );
        let err = validate_event(pb::Event::default(), &"event", now, LIMITS).unwrap_err();
        assert!(err.to_string().starts_with("event.payload: required"));

        let mut e = pick(1);
        if let Some(Payload::PickConfirmed(p)) = &mut e.payload {
            p.lines.push(pb::PickLine {
                quantity_short: Some(f64::NAN),
                ..Default::default()
            });
        }
        let err = validate_event(e, &"event", now, LIMITS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event.pick_confirmed.lines[0].quantity_short: must be a finite number"
        );
    }

    #[test]
    fn custom_types_are_checked() {
        let now = SystemTime::now();
        for (ty, ok) in [
            ("dock.door_opened", true),
            ("shipment.closed", false),
            ("stevedore.endpoint.disabled", false),
            ("Bad.Type", false),
            ("nodot", false),
            ("a..b", false),
        ] {
            let e = pb::Event {
                payload: Some(Payload::Custom(pb::CustomEvent {
                    r#type: ty.into(),
                    data: None,
                })),
                ..Default::default()
            };
            let r = validate_event(e, &"event", now, LIMITS);
            assert_eq!(r.is_ok(), ok, "{ty}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().starts_with("event.custom.type: "), "{e}");
            }
        }
    }

    #[test]
    fn oversize_is_rejected() {
        let mut e = pick(1);
        e.attributes.insert("k".into(), "x".repeat(1000));
        e.ordering_key = "y".repeat(1000);
        e.id = "z".repeat(200);
        if let Some(Payload::PickConfirmed(p)) = &mut e.payload {
            p.wave_id = "w".repeat(3000);
        }
        let err = validate_event(e, &"event", SystemTime::now(), LIMITS).unwrap_err();
        assert!(err.to_string().contains("exceeds max_event_bytes"), "{err}");
    }
}
