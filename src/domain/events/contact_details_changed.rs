//! `ContactDetailsChanged`: the customer's contact details were replaced.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{PostalAddress, validate_list};
use crate::domain::violations::Violations;

/// The customer's contact details were replaced by these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDetailsChanged {
    /// The customer's id.
    pub customer_id: Uuid,
    /// The new email addresses.
    pub emails: Vec<String>,
    /// The new phone numbers.
    pub phones: Vec<String>,
    /// The new postal address.
    pub address: PostalAddress,
}

impl TypedEvent for ContactDetailsChanged {
    const EVENT_TYPE: &'static str = "ContactDetailsChanged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "contact_details_changed";
        if self.customer_id.is_nil() {
            v.add(&format!("{f}.customer_id"), "must not be the nil UUID");
        }
        validate_list(&format!("{f}.emails"), &self.emails, v);
        for (i, email) in self.emails.iter().enumerate() {
            if !email.contains('@') {
                v.add(&format!("{f}.emails[{i}]"), "is not an email address");
            }
        }
        validate_list(&format!("{f}.phones"), &self.phones, v);
        self.address.validate(&format!("{f}.address"), v);
    }
}
