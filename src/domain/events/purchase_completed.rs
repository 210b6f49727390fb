//! `PurchaseCompleted`: the customer completed an order (one order = one event).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{Channel, validate_currency};
use crate::domain::violations::Violations;
use crate::limits::{AMOUNT_MINOR_MAX, FIELD_BYTES_MAX, REPEATED_ITEMS_MAX};

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Product category.
    pub category: String,
    /// Units bought, at least 1.
    pub quantity: u32,
    /// Price of one unit in minor units of the order's currency.
    pub unit_price_minor: i64,
}

/// The customer completed an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseCompleted {
    /// The customer's id.
    pub customer_id: Uuid,
    /// The order's id in the selling system.
    pub order_id: String,
    /// The order's lines.
    pub lines: Vec<PurchaseLine>,
    /// Order total in minor units (after discounts, as charged).
    pub total_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Where it was bought.
    pub channel: Channel,
    /// The store, for store purchases.
    pub store_id: String,
}

impl TypedEvent for PurchaseCompleted {
    const EVENT_TYPE: &'static str = "PurchaseCompleted";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "purchase_completed";
        if self.customer_id.is_nil() {
            v.add(&format!("{f}.customer_id"), "must not be the nil UUID");
        }
        v.required(&format!("{f}.order_id"), &self.order_id, FIELD_BYTES_MAX);
        v.max_items(&format!("{f}.lines"), self.lines.len(), REPEATED_ITEMS_MAX);
        for (i, line) in self.lines.iter().enumerate() {
            let l = format!("{f}.lines[{i}]");
            v.required(&format!("{l}.sku"), &line.sku, FIELD_BYTES_MAX);
            v.max_len(&format!("{l}.name"), &line.name, FIELD_BYTES_MAX);
            v.max_len(&format!("{l}.category"), &line.category, FIELD_BYTES_MAX);
            if line.quantity == 0 {
                v.add(&format!("{l}.quantity"), "must be at least 1");
            }
            if line.unit_price_minor < 0 {
                v.add(&format!("{l}.unit_price_minor"), "must not be negative");
            } else if line.unit_price_minor > AMOUNT_MINOR_MAX {
                v.add(
                    &format!("{l}.unit_price_minor"),
                    format!("must be at most {AMOUNT_MINOR_MAX}"),
                );
            }
        }
        if self.total_minor < 0 {
            v.add(&format!("{f}.total_minor"), "must not be negative");
        } else if self.total_minor > AMOUNT_MINOR_MAX {
            v.add(
                &format!("{f}.total_minor"),
                format!("must be at most {AMOUNT_MINOR_MAX}"),
            );
        }
        validate_currency(&format!("{f}.currency"), &self.currency, v);
        v.max_len(&format!("{f}.store_id"), &self.store_id, FIELD_BYTES_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_rules() {
        let event = PurchaseCompleted {
            customer_id: Uuid::from_u128(7),
            order_id: "o-1".into(),
            lines: vec![PurchaseLine {
                sku: "sku-1".into(),
                name: "Mug".into(),
                category: "kitchen".into(),
                quantity: 0,
                unit_price_minor: -5,
            }],
            total_minor: 1299,
            currency: "eur".into(),
            channel: Channel::Web,
            store_id: String::new(),
        };
        let mut v = Violations::new("");
        event.validate(&mut v);
        let fields: Vec<String> = v.into_vec().into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            [
                "purchase_completed.lines[0].quantity",
                "purchase_completed.lines[0].unit_price_minor",
                "purchase_completed.currency"
            ]
        );
    }

    #[test]
    fn amounts_are_bounded_so_sums_cannot_overflow() {
        let mut event = PurchaseCompleted {
            customer_id: Uuid::from_u128(7),
            order_id: "o-1".into(),
            lines: vec![PurchaseLine {
                sku: "sku-1".into(),
                name: String::new(),
                category: String::new(),
                quantity: 1,
                unit_price_minor: AMOUNT_MINOR_MAX + 1,
            }],
            total_minor: i64::MAX,
            currency: "EUR".into(),
            channel: Channel::Web,
            store_id: String::new(),
        };
        let mut v = Violations::new("");
        event.validate(&mut v);
        let fields: Vec<String> = v.into_vec().into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            [
                "purchase_completed.lines[0].unit_price_minor",
                "purchase_completed.total_minor"
            ]
        );
        event.lines[0].unit_price_minor = AMOUNT_MINOR_MAX;
        event.total_minor = AMOUNT_MINOR_MAX;
        let mut v = Violations::new("");
        event.validate(&mut v);
        assert!(v.into_vec().is_empty());
    }
}
