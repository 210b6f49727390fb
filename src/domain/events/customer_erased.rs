//! `CustomerErased`: the customer's personal data was erased (GDPR art. 17) by deleting
//! their data keys. Carries no personal data itself.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, REPEATED_ITEMS_MAX};

/// The customer (and every duplicate merged into them) was erased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerErased {
    /// The customer's id.
    pub customer_id: Uuid,
    /// Every id whose key was deleted: the customer and its merged duplicates.
    pub erased_ids: Vec<Uuid>,
    /// Why (a ticket reference, "GDPR art. 17 request").
    pub reason: String,
    /// Who asked for it (an operator id).
    pub requested_by: String,
}

impl TypedEvent for CustomerErased {
    const EVENT_TYPE: &'static str = "CustomerErased";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "customer_erased";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        v.max_items(
            &format!("{f}.erased_ids"),
            self.erased_ids.len(),
            REPEATED_ITEMS_MAX,
        );
        v.max_len(&format!("{f}.reason"), &self.reason, FIELD_BYTES_MAX);
        v.max_len(
            &format!("{f}.requested_by"),
            &self.requested_by,
            FIELD_BYTES_MAX,
        );
    }
}
