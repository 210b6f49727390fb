//! `AccountCreated` and the other events of a B2B account (`account-<id>` streams):
//! updated, contact linked / unlinked, owner assigned. An account is a company, not a
//! person: its fields are business data, not personal data. Its contacts are customers
//! (referenced by id; their personal data stays sealed in their own streams).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, OWNER_BYTES_MAX, REPEATED_ITEMS_MAX};

/// How big a company is, by head count.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum SizeBand {
    /// Not known.
    #[default]
    Unspecified,
    /// 1-9 people.
    Micro,
    /// 10-49 people.
    Small,
    /// 50-249 people.
    Medium,
    /// 250-999 people.
    Large,
    /// 1000 people or more.
    Enterprise,
}

/// The role a contact plays for an account.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum ContactRole {
    /// Not given.
    #[default]
    Unspecified,
    /// Buys.
    Buyer,
    /// Decides.
    DecisionMaker,
    /// Receives the invoices.
    Billing,
    /// Uses or evaluates the product.
    Technical,
    /// Champions the deal inside the company.
    Champion,
    /// Anything else.
    Other,
}

/// The descriptive fields of an account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountProfile {
    /// Company name.
    pub name: String,
    /// Web domain (`example.com`), empty when unknown.
    pub domain: String,
    /// Industry, free form (`retail`, `manufacturing`).
    pub industry: String,
    /// Head-count band.
    pub size_band: SizeBand,
    /// Ids of the company in other systems (ERP, registry), by system.
    pub external_ids: BTreeMap<String, String>,
}

impl AccountProfile {
    /// Checks lengths; `f` is the path of the event.
    pub fn validate(&self, f: &str, v: &mut Violations) {
        v.required(&format!("{f}.name"), &self.name, FIELD_BYTES_MAX);
        v.max_len(&format!("{f}.domain"), &self.domain, FIELD_BYTES_MAX);
        v.max_len(&format!("{f}.industry"), &self.industry, FIELD_BYTES_MAX);
        v.max_items(
            &format!("{f}.external_ids"),
            self.external_ids.len(),
            REPEATED_ITEMS_MAX,
        );
        for (system, id) in &self.external_ids {
            v.required(&format!("{f}.external_ids"), system, FIELD_BYTES_MAX);
            v.required(&format!("{f}.external_ids[{system}]"), id, FIELD_BYTES_MAX);
        }
    }
}

/// A B2B account (a company) was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCreated {
    /// The account's id.
    pub account_id: Uuid,
    /// Name, domain, industry, size, external ids.
    pub profile: AccountProfile,
}

impl TypedEvent for AccountCreated {
    const EVENT_TYPE: &'static str = "AccountCreated";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "account_created";
        validate_id(&format!("{f}.account_id"), &self.account_id, v);
        self.profile.validate(f, v);
    }
}

/// An account's descriptive fields were replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountUpdated {
    /// The account's id.
    pub account_id: Uuid,
    /// The new fields (all of them).
    pub profile: AccountProfile,
}

impl TypedEvent for AccountUpdated {
    const EVENT_TYPE: &'static str = "AccountUpdated";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "account_updated";
        validate_id(&format!("{f}.account_id"), &self.account_id, v);
        self.profile.validate(f, v);
    }
}

/// A customer became a contact of an account (or changed role). A customer may be a
/// contact of several accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountContactLinked {
    /// The account.
    pub account_id: Uuid,
    /// The customer (from the customers model).
    pub customer_id: Uuid,
    /// Their role for the account.
    pub role: ContactRole,
}

impl TypedEvent for AccountContactLinked {
    const EVENT_TYPE: &'static str = "AccountContactLinked";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "account_contact_linked";
        validate_id(&format!("{f}.account_id"), &self.account_id, v);
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        if self.role == ContactRole::Unspecified {
            v.add(&format!("{f}.role"), "is required");
        }
    }
}

/// A customer stopped being a contact of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountContactUnlinked {
    /// The account.
    pub account_id: Uuid,
    /// The customer.
    pub customer_id: Uuid,
}

impl TypedEvent for AccountContactUnlinked {
    const EVENT_TYPE: &'static str = "AccountContactUnlinked";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "account_contact_unlinked";
        validate_id(&format!("{f}.account_id"), &self.account_id, v);
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
    }
}

/// An account got an owner (a sales rep's user id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOwnerAssigned {
    /// The account.
    pub account_id: Uuid,
    /// The owner's user id.
    pub owner: String,
}

impl TypedEvent for AccountOwnerAssigned {
    const EVENT_TYPE: &'static str = "AccountOwnerAssigned";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "account_owner_assigned";
        validate_id(&format!("{f}.account_id"), &self.account_id, v);
        v.required(&format!("{f}.owner"), &self.owner, OWNER_BYTES_MAX);
    }
}
