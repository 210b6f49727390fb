//! `ConsentGiven` / `ConsentWithdrawn`: the customer's consent for one purpose changed.
//! The latest change per purpose (by `occurred_at`, then log order) wins.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{ConsentPurpose, validate_id};
use crate::domain::violations::Violations;
use crate::limits::FIELD_BYTES_MAX;

/// The customer consented to a purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentGiven {
    /// The customer's id.
    pub customer_id: Uuid,
    /// What for.
    pub purpose: ConsentPurpose,
    /// Where the consent was collected (web form, store, call recording id, ...).
    pub source: String,
}

impl TypedEvent for ConsentGiven {
    const EVENT_TYPE: &'static str = "ConsentGiven";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_consent(
            "consent_given",
            &self.customer_id,
            self.purpose,
            &self.source,
            v,
        );
    }
}

/// The customer withdrew consent for a purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentWithdrawn {
    /// The customer's id.
    pub customer_id: Uuid,
    /// What for.
    pub purpose: ConsentPurpose,
    /// Where the withdrawal was received.
    pub source: String,
}

impl TypedEvent for ConsentWithdrawn {
    const EVENT_TYPE: &'static str = "ConsentWithdrawn";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_consent(
            "consent_withdrawn",
            &self.customer_id,
            self.purpose,
            &self.source,
            v,
        );
    }
}

fn validate_consent(f: &str, id: &Uuid, purpose: ConsentPurpose, source: &str, v: &mut Violations) {
    validate_id(&format!("{f}.customer_id"), id, v);
    if purpose == ConsentPurpose::Unspecified {
        v.add(&format!("{f}.purpose"), "is required");
    }
    v.max_len(&format!("{f}.source"), source, FIELD_BYTES_MAX);
}
