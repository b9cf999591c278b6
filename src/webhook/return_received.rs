//! `return.received`: RMA items received and processed. The seed documents
//! the trigger only; the shape is the README's field list, in its order, in
//! the style of the shipment and pick payloads.

use super::{Envelope, Json, Object};
use crate::pb;

pub(super) fn body(env: &Envelope<'_>, r: &pb::ReturnReceived) -> Json {
    Object::body()
        .date("timestamp", env.occurred_at)
        .str("tenantId", &r.tenant_id)
        .str("companyId", &r.company_id)
        .str("fulfillmentCenterId", &r.fulfillment_center_id)
        .str("rmaId", &r.rma_id)
        .str("salesOrderId", &r.sales_order_id)
        .str("customerId", &r.customer_id)
        .str("carrier", &r.carrier)
        .str("trackingNumber", &r.tracking_number)
        .int("workControlNumber", r.work_control_number)
        .date("receivedDate", r.received_date.as_ref())
        .str("lastActivityTeamMember", &r.last_activity_team_member)
        .list("lines", &r.lines, line)
        .build()
}

fn line(o: Object, l: &pb::ReturnLine) -> Object {
    o.int("lineNumber", l.line_number)
        .str("product", &l.product)
        .str("lot", &l.lot)
        .str("serial01", &l.serial01)
        .str("serial02", &l.serial02)
        .str("serial03", &l.serial03)
        .str("serial04", &l.serial04)
        .str("serial05", &l.serial05)
        .str("serial06", &l.serial06)
        .str("serial07", &l.serial07)
        .str("serial08", &l.serial08)
        .str("serial09", &l.serial09)
        .str("serial10", &l.serial10)
        .num("quantityExpected", l.quantity_expected)
        .num("quantityReceived", l.quantity_received)
        .str("unitOfMeasureCode", &l.unit_of_measure_code)
        .str("upcBarcode", &l.upc_barcode)
        .label("condition", l.condition())
        .label("disposition", l.disposition())
        .str("reasonCode", &l.reason_code)
        .str("location", &l.location)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn render(r: &pb::ReturnReceived) -> Value {
        body(&Envelope { occurred_at: None }, r).value()
    }

    #[test]
    fn absent_fields_are_omitted() {
        assert_eq!(render(&pb::ReturnReceived::default()), json!({}));
        let v = render(&pb::ReturnReceived {
            rma_id: "RMA1".into(),
            lines: vec![pb::ReturnLine {
                product: "SKU".into(),
                quantity_received: Some(0.0),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            v.to_string(),
            r#"{"rmaId":"RMA1","lines":[{"product":"SKU","quantityReceived":0}]}"#
        );
    }

    #[test]
    fn condition_and_disposition_spellings() {
        let conditions = [
            (pb::ReturnCondition::New, "NEW"),
            (pb::ReturnCondition::Opened, "OPENED"),
            (pb::ReturnCondition::Damaged, "DAMAGED"),
            (pb::ReturnCondition::Defective, "DEFECTIVE"),
            (pb::ReturnCondition::WrongItem, "WRONG_ITEM"),
        ];
        let dispositions = [
            (pb::ReturnDisposition::Restock, "RESTOCK"),
            (pb::ReturnDisposition::Refurbish, "REFURBISH"),
            (pb::ReturnDisposition::Quarantine, "QUARANTINE"),
            (pb::ReturnDisposition::ReturnToVendor, "RETURN_TO_VENDOR"),
            (pb::ReturnDisposition::Scrap, "SCRAP"),
        ];
        for ((condition, c), (disposition, d)) in conditions.into_iter().zip(dispositions) {
            let r = pb::ReturnReceived {
                lines: vec![pb::ReturnLine {
                    condition: condition.into(),
                    disposition: disposition.into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert_eq!(
                render(&r),
                json!({"lines": [{ "condition": c, "disposition": d }]})
            );
        }
    }
}
