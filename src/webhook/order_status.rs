//! `order.status`: a sales order moved through the fulfillment workflow. The
//! seed documents the trigger only; the shape is the README's field list, in
//! its order, in the style of the shipment and pick payloads.

use super::{Envelope, Json, Object};
use crate::pb;

pub(super) fn body(env: &Envelope<'_>, o: &pb::OrderStatusChanged) -> Json {
    Object::body()
        .date("timestamp", env.occurred_at)
        .str("tenantId", &o.tenant_id)
        .str("companyId", &o.company_id)
        .str("fulfillmentCenterId", &o.fulfillment_center_id)
        .str("salesOrderId", &o.sales_order_id)
        .str("customerId", &o.customer_id)
        .label("previousStatus", o.previous_status())
        .label("status", o.status())
        .str("reasonCode", &o.reason_code)
        .str("waveId", &o.wave_id)
        .int("workControlNumber", o.work_control_number)
        .int("totalLines", o.total_lines)
        .num("totalQty", o.total_qty)
        .date("lastActivityDate", o.last_activity_date.as_ref())
        .str("lastActivityTeamMember", &o.last_activity_team_member)
        .build()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn render(o: &pb::OrderStatusChanged) -> Value {
        body(&Envelope { occurred_at: None }, o).value()
    }

    #[test]
    fn absent_fields_are_omitted() {
        assert_eq!(render(&pb::OrderStatusChanged::default()), json!({}));
        // A new order has no previous status.
        let v = render(&pb::OrderStatusChanged {
            sales_order_id: "SO1".into(),
            status: pb::OrderStatus::New.into(),
            total_lines: Some(0),
            ..Default::default()
        });
        assert_eq!(
            v.to_string(),
            r#"{"salesOrderId":"SO1","status":"NEW","totalLines":0}"#
        );
    }

    #[test]
    fn status_spellings() {
        for (status, want) in [
            (pb::OrderStatus::New, "NEW"),
            (pb::OrderStatus::Released, "RELEASED"),
            (pb::OrderStatus::Allocated, "ALLOCATED"),
            (pb::OrderStatus::Picking, "PICKING"),
            (pb::OrderStatus::Picked, "PICKED"),
            (pb::OrderStatus::Packed, "PACKED"),
            (pb::OrderStatus::Shipped, "SHIPPED"),
            (pb::OrderStatus::Backordered, "BACKORDERED"),
            (pb::OrderStatus::OnHold, "ON_HOLD"),
            (pb::OrderStatus::Cancelled, "CANCELLED"),
        ] {
            let o = pb::OrderStatusChanged {
                previous_status: status.into(),
                status: status.into(),
                ..Default::default()
            };
            assert_eq!(
                render(&o),
                json!({ "previousStatus": want, "status": want })
            );
        }
    }
}
