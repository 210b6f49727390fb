//! `CustomersMerged`: a duplicate customer was merged into a survivor. Written to both
//! streams in one atomic append, so each stream's own history shows the merge.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;

/// A duplicate was merged into a survivor; from here on the duplicate's id resolves to
/// the survivor everywhere and its history counts for the survivor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomersMerged {
    /// The customer that lives on.
    pub survivor_id: Uuid,
    /// The customer merged into it.
    pub duplicate_id: Uuid,
}

impl TypedEvent for CustomersMerged {
    const EVENT_TYPE: &'static str = "CustomersMerged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("customers_merged.survivor_id", &self.survivor_id, v);
        validate_id("customers_merged.duplicate_id", &self.duplicate_id, v);
        if self.survivor_id == self.duplicate_id {
            v.add(
                "customers_merged.duplicate_id",
                "cannot merge a customer into itself",
            );
        }
    }
}
