//! `inventory.updated`: an inventory level changed. The seed documents the
//! trigger only; the shape is the README's field list, in its order, in the
//! style of the shipment and pick payloads.

use super::{Envelope, Json, Object};
use crate::pb;

pub(super) fn body(env: &Envelope<'_>, i: &pb::InventoryUpdated) -> Json {
    Object::body()
        .date("timestamp", env.occurred_at)
        .str("tenantId", &i.tenant_id)
        .str("companyId", &i.company_id)
        .str("fulfillmentCenterId", &i.fulfillment_center_id)
        .str("product", &i.product)
        .str("location", &i.location)
        .str("lot", &i.lot)
        .str("unitOfMeasureCode", &i.unit_of_measure_code)
        .str("upcBarcode", &i.upc_barcode)
        .label("reason", i.reason())
        .num("quantityChange", i.quantity_change)
        .num("quantityOnHand", i.quantity_on_hand)
        .num("quantityAllocated", i.quantity_allocated)
        .num("quantityAvailable", i.quantity_available)
        .str("referenceId", &i.reference_id)
        .int("workControlNumber", i.work_control_number)
        .date("lastActivityDate", i.last_activity_date.as_ref())
        .str("lastActivityTeamMember", &i.last_activity_team_member)
        .build()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn render(i: &pb::InventoryUpdated) -> Value {
        body(&Envelope { occurred_at: None }, i).value()
    }

    #[test]
    fn absent_fields_are_omitted() {
        assert_eq!(render(&pb::InventoryUpdated::default()), json!({}));
        let v = render(&pb::InventoryUpdated {
            product: "SKU".into(),
            quantity_change: Some(-2.0),
            quantity_available: Some(0.0),
            ..Default::default()
        });
        assert_eq!(
            v.to_string(),
            r#"{"product":"SKU","quantityChange":-2,"quantityAvailable":0}"#
        );
    }

    #[test]
    fn reason_spellings() {
        for (reason, want) in [
            (pb::InventoryReason::Receiving, "RECEIVING"),
            (pb::InventoryReason::Adjustment, "ADJUSTMENT"),
            (pb::InventoryReason::CycleCount, "CYCLE_COUNT"),
            (pb::InventoryReason::Shipment, "SHIPMENT"),
        ] {
            let i = pb::InventoryUpdated {
                reason: reason.into(),
                ..Default::default()
            };
            assert_eq!(render(&i), json!({ "reason": want }));
        }
    }
}
