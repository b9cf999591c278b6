//! `pick.confirmed`: the WMS pick confirmation.
//!
//! Key order is the seed sample's, which shows every header field; in
//! `lines[]` the serials (absent from the sample) follow `lot`, as the field
//! documentation lists them.

use super::{Envelope, Json, Object};
use crate::pb;

pub(super) fn body(env: &Envelope<'_>, p: &pb::PickConfirmed) -> Json {
    Object::body()
        .date("timestamp", env.occurred_at)
        .str("tenantId", &p.tenant_id)
        .str("companyId", &p.company_id)
        .str("fulfillmentCenterId", &p.fulfillment_center_id)
        .int("workControlNumber", p.work_control_number)
        .str("salesOrderId", &p.sales_order_id)
        .str("waveId", &p.wave_id)
        .label("status", p.status())
        .num("totalQty", p.total_qty)
        .int("totalLines", p.total_lines)
        .date("lastActivityDate", p.last_activity_date.as_ref())
        .str("lastActivityTeamMember", &p.last_activity_team_member)
        .list("lines", &p.lines, line)
        .build()
}

fn line(o: Object, l: &pb::PickLine) -> Object {
    o.int("lineNumber", l.line_number)
        .str("product", &l.product)
        .str("location", &l.location)
        .str("toLocation", &l.to_location)
        .num("quantityRequired", l.quantity_required)
        .num("quantityProcessed", l.quantity_processed)
        .num("quantityShort", l.quantity_short)
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
        .str("unitOfMeasureCode", &l.unit_of_measure_code)
        .str("lpn", &l.lpn)
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;
    use serde_json::{json, Value};

    use super::*;

    fn render(p: &pb::PickConfirmed, occurred_at: Option<&Timestamp>) -> Value {
        body(&Envelope { occurred_at }, p).value()
    }

    #[test]
    fn absent_fields_are_omitted() {
        assert_eq!(render(&pb::PickConfirmed::default(), None), json!({}));
        let v = render(
            &pb::PickConfirmed {
                status: pb::PickStatus::Unspecified.into(),
                wave_id: String::new(),
                lines: vec![pb::PickLine {
                    quantity_short: Some(0.0),
                    ..Default::default()
                }],
                ..Default::default()
            },
            None,
        );
        assert_eq!(v, json!({"lines": [{"quantityShort": 0}]}));
    }

    #[test]
    fn sub_second_timestamp_round_trips() {
        let at = Timestamp {
            seconds: 1_770_215_535,
            nanos: 123_000_000,
        };
        let v = render(&pb::PickConfirmed::default(), Some(&at));
        assert_eq!(v, json!({"timestamp": "2026-02-04T14:32:15.123Z"}));
    }

    #[test]
    fn status_spellings() {
        for (status, want) in [
            (pb::PickStatus::Complete, "COMPLETE"),
            (pb::PickStatus::Partial, "PARTIAL"),
            (pb::PickStatus::Short, "SHORT"),
        ] {
            let p = pb::PickConfirmed {
                status: status.into(),
                ..Default::default()
            };
            assert_eq!(render(&p, None), json!({ "status": want }));
        }
    }

    #[test]
    fn serials_follow_lot() {
        let p = pb::PickConfirmed {
            lines: vec![pb::PickLine {
                lot: "L".into(),
                serial01: "A".into(),
                serial10: "J".into(),
                unit_of_measure_code: "EA".into(),
                lpn: "TOTE".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            render(&p, None).to_string(),
            r#"{"lines":[{"lot":"L","serial01":"A","serial10":"J","unitOfMeasureCode":"EA","lpn":"TOTE"}]}"#
        );
    }
}
