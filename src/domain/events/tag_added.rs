//! `TagAdded` / `TagRemoved`: a label on a customer (`vip`, `wholesale`, ...).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use super::preference_set::validate_key;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;

/// A tag was put on the customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagAdded {
    /// The customer's id.
    pub customer_id: Uuid,
    /// The tag.
    pub tag: String,
}

impl TypedEvent for TagAdded {
    const EVENT_TYPE: &'static str = "TagAdded";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("tag_added.customer_id", &self.customer_id, v);
        validate_key("tag_added.tag", &self.tag, v);
    }
}

/// A tag was taken off the customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRemoved {
    /// The customer's id.
    pub customer_id: Uuid,
    /// The tag.
    pub tag: String,
}

impl TypedEvent for TagRemoved {
    const EVENT_TYPE: &'static str = "TagRemoved";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("tag_removed.customer_id", &self.customer_id, v);
        validate_key("tag_removed.tag", &self.tag, v);
    }
}
