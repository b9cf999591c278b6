//! `shipment.closed`: the WMS shipment closeout.
//!
//! Key order is the seed sample's; the documented fields the sample leaves
//! out sit where the field documentation lists them (`asn` after `lpn`,
//! address lines 2–4 after line 1, `phone`/`cell`/`mainEmail` after
//! `countryCode`, serials and the other quantities in each detail). The
//! `status` and `signatureRequired` enums are documented without a place in
//! the field list; they follow `trackingStatus`, as in the proto.

use super::{Envelope, Json, Object};
use crate::pb;

pub(super) fn body(env: &Envelope<'_>, s: &pb::ShipmentClosed) -> Json {
    Object::body()
        .date("timestamp", env.occurred_at)
        // Shipment header.
        .str("tenantId", &s.tenant_id)
        .str("companyId", &s.company_id)
        .str("fulfillmentCenterId", &s.fulfillment_center_id)
        .int("workControlNumber", s.work_control_number)
        .str("lpn", &s.lpn)
        .str("asn", &s.asn)
        .str("carrier", &s.carrier)
        .str("carrierService", &s.carrier_service)
        .str("trackingNumber", &s.tracking_number)
        .label("trackingStatus", s.tracking_status())
        .label("status", s.status())
        .label("signatureRequired", s.signature_required())
        .date("shipDate", s.ship_date.as_ref())
        .date("estimatedDeliveryDate", s.estimated_delivery_date.as_ref())
        .str("salesOrderId", &s.sales_order_id)
        // Ship-to address.
        .str("customerId", &s.customer_id)
        .str("customerCompany", &s.customer_company)
        .str("firstName", &s.first_name)
        .str("lastName", &s.last_name)
        .str("addressLine1", &s.address_line1)
        .str("addressLine2", &s.address_line2)
        .str("addressLine3", &s.address_line3)
        .str("addressLine4", &s.address_line4)
        .str("city", &s.city)
        .str("stateCode", &s.state_code)
        .str("zipCode", &s.zip_code)
        .str("countryCode", &s.country_code)
        .str("phone", &s.phone)
        .str("cell", &s.cell)
        .str("mainEmail", &s.main_email)
        // Totals.
        .int("totalCartons", s.total_cartons)
        .num("weightShipment", s.weight_shipment)
        .list("details", &s.details, detail)
        .build()
}

fn detail(o: Object, d: &pb::ShipmentDetail) -> Object {
    o.int("lineNumber", d.line_number)
        .str("product", &d.product)
        .str("lot", &d.lot)
        .str("serial01", &d.serial01)
        .str("serial02", &d.serial02)
        .str("serial03", &d.serial03)
        .str("serial04", &d.serial04)
        .str("serial05", &d.serial05)
        .str("serial06", &d.serial06)
        .str("serial07", &d.serial07)
        .str("serial08", &d.serial08)
        .str("serial09", &d.serial09)
        .str("serial10", &d.serial10)
        .num("quantityRequired", d.quantity_required)
        .num("quantityShipped", d.quantity_shipped)
        .num("quantityBackordered", d.quantity_backordered)
        .str("upcBarcode", &d.upc_barcode)
        .price("price", d.price)
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;
    use serde_json::{json, Value};

    use super::*;

    fn render(s: &pb::ShipmentClosed) -> Value {
        let at = Timestamp {
            seconds: 1_770_048_000, // 2026-02-02T16:00:00Z
            nanos: 0,
        };
        body(
            &Envelope {
                occurred_at: Some(&at),
            },
            s,
        )
        .value()
    }

    #[test]
    fn absent_fields_are_omitted() {
        let v = render(&pb::ShipmentClosed::default());
        assert_eq!(v, json!({"timestamp": "2026-02-02T16:00:00Z"}));

        let v = render(&pb::ShipmentClosed {
            details: vec![pb::ShipmentDetail::default()],
            ..Default::default()
        });
        assert_eq!(
            v,
            json!({"timestamp": "2026-02-02T16:00:00Z", "details": [{}]})
        );
    }

    #[test]
    fn zero_is_not_absent_for_optional_numbers() {
        let v = render(&pb::ShipmentClosed {
            work_control_number: Some(0),
            total_cartons: Some(0),
            weight_shipment: Some(0.0),
            details: vec![pb::ShipmentDetail {
                line_number: Some(0),
                quantity_backordered: Some(0.0),
                price: Some(0.0),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            v.to_string(),
            r#"{"timestamp":"2026-02-02T16:00:00Z","workControlNumber":0,"totalCartons":0,"weightShipment":0,"details":[{"lineNumber":0,"quantityBackordered":0,"price":0}]}"#
        );
    }

    #[test]
    fn every_field_in_documented_order() {
        let s = pb::ShipmentClosed {
            tenant_id: "T".into(),
            company_id: "C".into(),
            fulfillment_center_id: "FC".into(),
            work_control_number: Some(1),
            lpn: "LPN".into(),
            asn: "ASN".into(),
            carrier: "UPS".into(),
            carrier_service: "GROUND".into(),
            tracking_number: "1Z".into(),
            tracking_status: pb::TrackingStatus::Backordered.into(),
            status: pb::ShipmentStatus::Working.into(),
            signature_required: pb::SignatureRequired::Adult.into(),
            ship_date: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            estimated_delivery_date: Some(Timestamp {
                seconds: 86_400,
                nanos: 5_000_000,
            }),
            sales_order_id: "SO".into(),
            customer_id: "CU".into(),
            customer_company: "Acme".into(),
            first_name: "F".into(),
            last_name: "L".into(),
            address_line1: "A1".into(),
            address_line2: "A2".into(),
            address_line3: "A3".into(),
            address_line4: "A4".into(),
            city: "City".into(),
            state_code: "CA".into(),
            zip_code: "9".into(),
            country_code: "US".into(),
            phone: "P".into(),
            cell: "M".into(),
            main_email: "E".into(),
            total_cartons: Some(2),
            weight_shipment: Some(1.25),
            details: vec![pb::ShipmentDetail {
                line_number: Some(1),
                product: "SKU".into(),
                lot: "LOT".into(),
                serial01: "S1".into(),
                serial02: "S2".into(),
                serial03: "S3".into(),
                serial04: "S4".into(),
                serial05: "S5".into(),
                serial06: "S6".into(),
                serial07: "S7".into(),
                serial08: "S8".into(),
                serial09: "S9".into(),
                serial10: "S10".into(),
                quantity_required: Some(3.0),
                quantity_shipped: Some(2.5),
                quantity_backordered: Some(0.5),
                upc_barcode: "012".into(),
                price: Some(1.23456789),
            }],
        };
        assert_eq!(
            render(&s).to_string(),
            concat!(
                r#"{"timestamp":"2026-02-02T16:00:00Z","tenantId":"T","companyId":"C","#,
                r#""fulfillmentCenterId":"FC","workControlNumber":1,"lpn":"LPN","asn":"ASN","#,
                r#""carrier":"UPS","carrierService":"GROUND","trackingNumber":"1Z","#,
                r#""trackingStatus":"BACKORDERED","status":"WORKING","signatureRequired":"ADULT","#,
                r#""shipDate":"1970-01-01T00:00:00Z","estimatedDeliveryDate":"1970-01-02T00:00:00.005Z","#,
                r#""salesOrderId":"SO","customerId":"CU","customerCompany":"Acme","#,
                r#""firstName":"F","lastName":"L","addressLine1":"A1","addressLine2":"A2","#,
                r#""addressLine3":"A3","addressLine4":"A4","city":"City","stateCode":"CA","#,
                r#""zipCode":"9","countryCode":"US","phone":"P","cell":"M","mainEmail":"E","#,
                r#""totalCartons":2,"weightShipment":1.25,"details":[{"lineNumber":1,"#,
                r#""product":"SKU","lot":"LOT","serial01":"S1","serial02":"S2","serial03":"S3","#,
                r#""serial04":"S4","serial05":"S5","serial06":"S6","serial07":"S7","#,
                r#""serial08":"S8","serial09":"S9","serial10":"S10","quantityRequired":3,"#,
                r#""quantityShipped":2.5,"quantityBackordered":0.5,"upcBarcode":"012","#,
                r#""price":1.234568}]}"#,
            )
        );
    }

    #[test]
    fn enum_spellings() {
        for (status, want) in [
            (pb::TrackingStatus::Voided, "VOIDED"),
            (pb::TrackingStatus::Backordered, "BACKORDERED"),
            (pb::TrackingStatus::Shipped, "SHIPPED"),
            (pb::TrackingStatus::Packed, "PACKED"),
        ] {
            let v = render(&pb::ShipmentClosed {
                tracking_status: status.into(),
                ..Default::default()
            });
            assert_eq!(v["trackingStatus"], want);
        }
        for (sig, want) in [
            (pb::SignatureRequired::Direct, "DIRECT"),
            (pb::SignatureRequired::Adult, "ADULT"),
            (pb::SignatureRequired::None, "NONE"),
        ] {
            let v = render(&pb::ShipmentClosed {
                signature_required: sig.into(),
                ..Default::default()
            });
            assert_eq!(v["signatureRequired"], want);
        }
        let v = render(&pb::ShipmentClosed {
            status: pb::ShipmentStatus::Packed.into(),
            ..Default::default()
        });
        assert_eq!(v["status"], "PACKED");
    }

    #[test]
    fn price_is_rounded_to_six_places() {
        for (price, want) in [
            (29.999999, "29.999999"),
            (1.23456789, "1.234568"),
            (29.99, "29.99"),
        ] {
            let v = render(&pb::ShipmentClosed {
                details: vec![pb::ShipmentDetail {
                    price: Some(price),
                    ..Default::default()
                }],
                ..Default::default()
            });
            assert_eq!(v["details"][0]["price"].to_string(), want);
        }
    }
}
