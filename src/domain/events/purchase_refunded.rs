//! `PurchaseRefunded`: (part of) an order was refunded.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{validate_currency, validate_id};
use crate::domain::violations::Violations;
use crate::limits::{AMOUNT_MINOR_MAX, FIELD_BYTES_MAX, REPEATED_ITEMS_MAX};

/// One refunded line: units of a SKU of the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLine {
    /// The order line's SKU.
    pub sku: String,
    /// Units refunded, at least 1.
    pub quantity: u32,
    /// Amount refunded for them, minor units.
    pub amount_minor: i64,
}

/// (Part of) an order was refunded. `amount_minor` is the total refunded by this event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRefunded {
    /// The customer's id.
    pub customer_id: Uuid,
    /// The refunded order.
    pub order_id: String,
    /// The refund's own id in the selling system.
    pub refund_id: String,
    /// Refunded lines; empty for an amount-only refund.
    pub lines: Vec<RefundLine>,
    /// Total refunded, minor units, at least 1.
    pub amount_minor: i64,
    /// ISO 4217 code; must be the order's.
    pub currency: String,
    /// Why (a short code such as `damaged`).
    pub reason: String,
}

impl TypedEvent for PurchaseRefunded {
    const EVENT_TYPE: &'static str = "PurchaseRefunded";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "purchase_refunded";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        v.required(&format!("{f}.order_id"), &self.order_id, FIELD_BYTES_MAX);
        v.max_len(&format!("{f}.refund_id"), &self.refund_id, FIELD_BYTES_MAX);
        v.max_items(&format!("{f}.lines"), self.lines.len(), REPEATED_ITEMS_MAX);
        for (i, line) in self.lines.iter().enumerate() {
            let l = format!("{f}.lines[{i}]");
            v.required(&format!("{l}.sku"), &line.sku, FIELD_BYTES_MAX);
            if line.quantity == 0 {
                v.add(&format!("{l}.quantity"), "must be at least 1");
            }
            if line.amount_minor < 0 {
                v.add(&format!("{l}.amount_minor"), "must not be negative");
            } else if line.amount_minor > AMOUNT_MINOR_MAX {
                v.add(
                    &format!("{l}.amount_minor"),
                    format!("must be at most {AMOUNT_MINOR_MAX}"),
                );
            }
        }
        if self.amount_minor <= 0 {
            v.add(&format!("{f}.amount_minor"), "must be positive");
        } else if self.amount_minor > AMOUNT_MINOR_MAX {
            v.add(
                &format!("{f}.amount_minor"),
                format!("must be at most {AMOUNT_MINOR_MAX}"),
            );
        }
        validate_currency(&format!("{f}.currency"), &self.currency, v);
        v.max_len(&format!("{f}.reason"), &self.reason, FIELD_BYTES_MAX);
    }
}
