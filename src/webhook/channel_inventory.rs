//! `channel_inventory.updated`: available stock of one variant, pushed to a
//! custom sales channel (the commerce platform's inventory webhook).
//!
//! Unlike the WMS shapes, every documented key is always written, with
//! `null` for an unset field, as the seed sample does; a missing message
//! renders as its keys with `null` values. The body has no `timestamp`: the
//! sample has none.

use super::{Envelope, Json, Object};
use crate::pb;

pub(super) fn body(_env: &Envelope<'_>, c: &pb::ChannelInventoryUpdated) -> Json {
    let no_variant = pb::Variant::default();
    let no_inventory = pb::Inventory::default();
    let variant = c.variant.as_ref().unwrap_or(&no_variant);
    let inventory = c.inventory.as_ref().unwrap_or(&no_inventory);
    Object::body()
        .object("variant", |o| {
            o.int_or_null("id", variant.id)
                .str_or_null("inventoryPolicy", variant.inventory_policy.as_deref())
        })
        .object("channelVariant", |o| {
            channel_variant(o, c.channel_variant.as_ref())
        })
        .object("inventory", |o| {
            o.int_or_null("available", inventory.available)
        })
        .build()
}

fn channel_variant(o: Object, cv: Option<&pb::ChannelVariant>) -> Object {
    let none = pb::ChannelVariant::default();
    let cv = cv.unwrap_or(&none);
    o.int_or_null("id", cv.id)
        .int_or_null("companyId", cv.company_id)
        .int_or_null("variantId", cv.variant_id)
        .int_or_null("channelId", cv.channel_id)
        .str_or_null("externalId", cv.external_id.as_deref())
        .str_or_null("externalGroupId", cv.external_group_id.as_deref())
        .str_or_null("externalSku", cv.external_sku.as_deref())
        .str_or_null("source", cv.source.as_deref())
        .str_or_null("hash", cv.hash.as_deref())
        .str_or_null("parentHash", cv.parent_hash.as_deref())
        .str_or_null("status", cv.status.as_deref())
        .str_or_null("errorMessage", cv.error_message.as_deref())
        .date_or_null("inventoryUpdate", cv.inventory_update.as_ref())
        .date_or_null("priceUpdate", cv.price_update.as_ref())
        .date_or_null("publishUpdate", cv.publish_update.as_ref())
        .date_or_null("costPriceUpdate", cv.cost_price_update.as_ref())
        .date_or_null("createdAt", cv.created_at.as_ref())
        .date_or_null("updatedAt", cv.updated_at.as_ref())
        .object("channel", |o| channel(o, cv.channel.as_ref()))
}

fn channel(o: Object, ch: Option<&pb::Channel>) -> Object {
    let none = pb::Channel::default();
    let ch = ch.unwrap_or(&none);
    o.str_or_null("shipstationUrl", ch.shipstation_url.as_deref())
        .num_or_null("freeShippingThreshold", ch.free_shipping_threshold)
        .bool_or_null("hideWhenNoCostPrice", ch.hide_when_no_cost_price)
        .int_or_null("id", ch.id)
        .bool_or_null("includeBackorderQuantity", ch.include_backorder_quantity)
        .str_or_null("inventorySync", ch.inventory_sync.as_deref())
        .str_or_null("parentChannel", ch.parent_channel.as_deref())
        .bool_or_null("unpublishNoInventory", ch.unpublish_no_inventory)
        .int_or_null("warehouseId", ch.warehouse_id)
        .str_or_null("warehouseSync", ch.warehouse_sync.as_deref())
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;
    use serde_json::Value;

    use super::*;

    fn render(c: &pb::ChannelInventoryUpdated) -> String {
        let at = Timestamp {
            seconds: 1,
            nanos: 0,
        };
        body(
            &Envelope {
                occurred_at: Some(&at),
            },
            c,
        )
        .to_string()
    }

    const ALL_NULL_CHANNEL: &str = concat!(
        r#"{"shipstationUrl":null,"freeShippingThreshold":null,"hideWhenNoCostPrice":null,"#,
        r#""id":null,"includeBackorderQuantity":null,"inventorySync":null,"parentChannel":null,"#,
        r#""unpublishNoInventory":null,"warehouseId":null,"warehouseSync":null}"#
    );

    #[test]
    fn missing_messages_keep_their_keys_as_null() {
        let all_null = format!(
            concat!(
                r#"{{"variant":{{"id":null,"inventoryPolicy":null}},"#,
                r#""channelVariant":{{"id":null,"companyId":null,"variantId":null,"channelId":null,"#,
                r#""externalId":null,"externalGroupId":null,"externalSku":null,"source":null,"#,
                r#""hash":null,"parentHash":null,"status":null,"errorMessage":null,"#,
                r#""inventoryUpdate":null,"priceUpdate":null,"publishUpdate":null,"#,
                r#""costPriceUpdate":null,"createdAt":null,"updatedAt":null,"channel":{}}},"#,
                r#""inventory":{{"available":null}}}}"#
            ),
            ALL_NULL_CHANNEL
        );
        // No `timestamp`, even though the envelope has one.
        assert_eq!(render(&pb::ChannelInventoryUpdated::default()), all_null);
        // Empty messages are the same as missing ones.
        let empty = pb::ChannelInventoryUpdated {
            variant: Some(pb::Variant::default()),
            channel_variant: Some(pb::ChannelVariant {
                channel: Some(pb::Channel::default()),
                ..Default::default()
            }),
            inventory: Some(pb::Inventory::default()),
        };
        assert_eq!(render(&empty), all_null);
    }

    #[test]
    fn set_values_including_zero_false_and_empty() {
        let c = pb::ChannelInventoryUpdated {
            variant: Some(pb::Variant {
                id: Some(10),
                inventory_policy: Some("track".into()),
                ..Default::default()
            }),
            channel_variant: Some(pb::ChannelVariant {
                external_sku: Some(String::new()),
                inventory_update: Some(Timestamp {
                    seconds: 1_576_532_712,
                    nanos: 828_000_000,
                }),
                channel: Some(pb::Channel {
                    free_shipping_threshold: Some(49.5),
                    hide_when_no_cost_price: Some(false),
                    warehouse_id: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            inventory: Some(pb::Inventory {
                available: Some(-3),
                ..Default::default()
            }),
        };
        let v: Value = serde_json::from_str(&render(&c)).unwrap();
        assert_eq!(v["variant"]["id"], 10);
        assert_eq!(v["variant"]["inventoryPolicy"], "track");
        assert_eq!(v["channelVariant"]["externalSku"], "");
        assert_eq!(
            v["channelVariant"]["inventoryUpdate"],
            "2019-12-16T21:45:12.828Z"
        );
        assert_eq!(v["channelVariant"]["priceUpdate"], Value::Null);
        let ch = &v["channelVariant"]["channel"];
        assert_eq!(ch["freeShippingThreshold"], 49.5);
        assert_eq!(ch["hideWhenNoCostPrice"], false);
        assert_eq!(ch["warehouseId"], 0);
        assert_eq!(ch["id"], Value::Null);
        assert_eq!(v["inventory"]["available"], -3);
    }
}
