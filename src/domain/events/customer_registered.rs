//! `CustomerRegistered`: a customer became known to the business.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{CalendarDate, Channel, PostalAddress, validate_list};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, REPEATED_ITEMS_MAX};

/// A customer became known to the business.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    /// The customer's id.
    pub customer_id: Uuid,
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
    /// BCP 47 locale tag.
    pub locale: String,
    /// External identities (POS card, e-shop id, ...), by system.
    pub external_ids: BTreeMap<String, String>,
    /// Where the customer was acquired.
    pub acquisition_channel: Channel,
}

impl TypedEvent for CustomerRegistered {
    const EVENT_TYPE: &'static str = "CustomerRegistered";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "customer_registered";
        if self.customer_id.is_nil() {
            v.add(&format!("{f}.customer_id"), "must not be the nil UUID");
        }
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
        validate_list(&format!("{f}.emails"), &self.emails, v);
        for (i, email) in self.emails.iter().enumerate() {
            if !email.contains('@') {
                v.add(&format!("{f}.emails[{i}]"), "is not an email address");
            }
        }
        validate_list(&format!("{f}.phones"), &self.phones, v);
        self.address.validate(&format!("{f}.address"), v);
        v.max_len(&format!("{f}.locale"), &self.locale, 35);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn given() -> CustomerRegistered {
        CustomerRegistered {
            customer_id: Uuid::from_u128(1),
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            emails: vec!["ada@example.com".into()],
            phones: vec![],
            birth_date: CalendarDate::parse("1815-12-10"),
            address: PostalAddress::default(),
            locale: "en-GB".into(),
            external_ids: BTreeMap::from([("pos_card".to_owned(), "4711".to_owned())]),
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
        event.emails = vec!["not-an-email".into(), String::new()];
        event.address.country_code = "Germany".into();
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
