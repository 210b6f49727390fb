//! `CustomerRegistered`: a customer became known to the business.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{CalendarDate, Channel, PostalAddress, validate_id, validate_list};
use crate::domain::personal::{Personal, PersonalField};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, REPEATED_ITEMS_MAX};

/// Who the customer is: every field is personal data, stored sealed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerIdentity {
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Email addresses, the first is primary.
    pub emails: Vec<String>,
    /// Phone numbers, the first is primary.
    pub phones: Vec<String>,
    /// Birth date, when known.
    pub birth_date: Option<CalendarDate>,
    /// Postal address.
    pub address: PostalAddress,
    /// External identities (POS card, e-shop id, ...), by system.
    pub external_ids: BTreeMap<String, String>,
}

impl CustomerIdentity {
    /// Checks lengths and formats; `f` is the path of the identity's parent message.
    pub fn validate(&self, f: &str, v: &mut Violations) {
        v.max_len(
            &format!("{f}.given_name"),
            &self.given_name,
            FIELD_BYTES_MAX,
        );
        v.max_len(
            &format!("{f}.family_name"),
            &self.family_name,
            FIELD_BYTES_MAX,
        );
        validate_emails(&format!("{f}.emails"), &self.emails, v);
        validate_list(&format!("{f}.phones"), &self.phones, v);
        self.address.validate(&format!("{f}.address"), v);
        v.max_items(
            &format!("{f}.external_ids"),
            self.external_ids.len(),
            REPEATED_ITEMS_MAX,
        );
        for (system, id) in &self.external_ids {
            v.required(&format!("{f}.external_ids[{system}]"), id, FIELD_BYTES_MAX);
            v.required(&format!("{f}.external_ids"), system, FIELD_BYTES_MAX);
        }
    }
}

/// Checks a list of email addresses.
pub fn validate_emails(field: &str, emails: &[String], v: &mut Violations) {
    validate_list(field, emails, v);
    for (i, email) in emails.iter().enumerate() {
        if !email.contains('@') {
            v.add(&format!("{field}[{i}]"), "is not an email address");
        }
    }
}

/// A customer became known to the business.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    /// The customer's id.
    pub customer_id: Uuid,
    /// Names, contact details, birth date, external ids: sealed with the customer's key.
    pub identity: Personal<CustomerIdentity>,
    /// BCP 47 locale tag.
    pub locale: String,
    /// Where the customer was acquired.
    pub acquisition_channel: Channel,
}

impl TypedEvent for CustomerRegistered {
    const EVENT_TYPE: &'static str = "CustomerRegistered";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "customer_registered";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        if let Some(identity) = self.identity.clear() {
            identity.validate(f, v);
        }
        v.max_len(&format!("{f}.locale"), &self.locale, 35);
    }

    fn personal_owner(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }

    fn personal_fields(&mut self, visit: &mut dyn FnMut(&'static str, &mut dyn PersonalField)) {
        visit("identity", &mut self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given() -> CustomerRegistered {
        CustomerRegistered {
            customer_id: Uuid::from_u128(1),
            identity: Personal::Clear(CustomerIdentity {
                given_name: "Ada".into(),
                family_name: "Lovelace".into(),
                emails: vec!["ada@example.com".into()],
                phones: vec![],
                birth_date: CalendarDate::parse("1815-12-10"),
                address: PostalAddress::default(),
                external_ids: BTreeMap::from([("pos_card".to_owned(), "4711".to_owned())]),
            }),
            locale: "en-GB".into(),
            acquisition_channel: Channel::Store,
        }
    }

    #[test]
    fn a_complete_registration_is_valid() {
        let mut v = Violations::new("e");
        given().validate(&mut v);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut event = given();
        event.customer_id = Uuid::nil();
        if let Personal::Clear(identity) = &mut event.identity {
            identity.emails = vec!["not-an-email".into(), String::new()];
            identity.address.country_code = "Germany".into();
        }
        let mut v = Violations::new("e");
        event.validate(&mut v);
        let fields: Vec<String> = v.into_vec().into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            [
                "e.customer_registered.customer_id",
                "e.customer_registered.emails[1]",
                "e.customer_registered.emails[0]",
                "e.customer_registered.emails[1]",
                "e.customer_registered.address.country_code",
            ]
        );
    }
}
