//! `ContactDetailsChanged`: the customer's contact details were replaced.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use super::customer_registered::validate_emails;
use crate::domain::common::{PostalAddress, validate_id, validate_list};
use crate::domain::personal::{Personal, PersonalField};
use crate::domain::violations::Violations;

/// New contact details; personal data, stored sealed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDetails {
    /// The new email addresses, the first is primary.
    pub emails: Vec<String>,
    /// The new phone numbers, the first is primary.
    pub phones: Vec<String>,
    /// The new postal address.
    pub address: PostalAddress,
}

/// The customer's contact details were replaced by these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDetailsChanged {
    /// The customer's id.
    pub customer_id: Uuid,
    /// The new details, sealed with the customer's key.
    pub details: Personal<ContactDetails>,
}

impl TypedEvent for ContactDetailsChanged {
    const EVENT_TYPE: &'static str = "ContactDetailsChanged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "contact_details_changed";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        if let Some(details) = self.details.clear() {
            validate_emails(&format!("{f}.emails"), &details.emails, v);
            validate_list(&format!("{f}.phones"), &details.phones, v);
            details.address.validate(&format!("{f}.address"), v);
        }
    }

    fn personal_owner(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }

    fn personal_fields(&mut self, visit: &mut dyn FnMut(&'static str, &mut dyn PersonalField)) {
        visit("details", &mut self.details);
    }
}
