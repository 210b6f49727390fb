//! `LeadCaptured` and the other events of a lead (`lead-<id>` streams): assigned,
//! qualified, disqualified.
//!
//! A lead stores no contact detail of its own: the email / phone a form captured are
//! matched (by keyed hash, through the customers' `identity-*` reservation streams) to an
//! existing customer, whose id the lead then carries; the person's data stays sealed in
//! the customer's stream. A lead without a customer names at most a company.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use super::pipeline_defined::validate_code;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, OWNER_BYTES_MAX};

/// Where a lead came from.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum LeadSource {
    /// Not given (refused by validation).
    #[default]
    Unspecified,
    /// A form on the web site.
    WebForm,
    /// A trade show or other event.
    Event,
    /// A referral.
    Referral,
    /// A marketing campaign (its id in `campaign_id`).
    Campaign,
    /// Outbound prospecting.
    Outbound,
    /// Anything else.
    Other,
}

/// A lead was captured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadCaptured {
    /// The lead's id.
    pub lead_id: Uuid,
    /// Where it came from.
    pub source: LeadSource,
    /// The campaign, when the source is one (or any source that has an id).
    pub campaign_id: String,
    /// The existing customer it is (given, or matched by email / phone).
    pub customer_id: Option<Uuid>,
    /// The account it belongs to, when known.
    pub account_id: Option<Uuid>,
    /// The company's name as captured (business data, not a person's).
    pub company_name: String,
}

impl TypedEvent for LeadCaptured {
    const EVENT_TYPE: &'static str = "LeadCaptured";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "lead_captured";
        validate_id(&format!("{f}.lead_id"), &self.lead_id, v);
        if self.source == LeadSource::Unspecified {
            v.add(&format!("{f}.source"), "is required");
        }
        v.max_len(
            &format!("{f}.campaign_id"),
            &self.campaign_id,
            FIELD_BYTES_MAX,
        );
        if let Some(customer) = &self.customer_id {
            validate_id(&format!("{f}.customer_id"), customer, v);
        }
        if let Some(account) = &self.account_id {
            validate_id(&format!("{f}.account_id"), account, v);
        }
        v.max_len(
            &format!("{f}.company_name"),
            &self.company_name,
            FIELD_BYTES_MAX,
        );
    }
}

/// A lead got an owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadAssigned {
    /// The lead.
    pub lead_id: Uuid,
    /// The owner's user id.
    pub owner: String,
}

impl TypedEvent for LeadAssigned {
    const EVENT_TYPE: &'static str = "LeadAssigned";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("lead_assigned.lead_id", &self.lead_id, v);
        v.required("lead_assigned.owner", &self.owner, OWNER_BYTES_MAX);
    }
}

/// A lead was qualified: it is (now) a customer and a deal was opened for it. The deal's
/// `DealOpened` names the lead, so the two are linked both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadQualified {
    /// The lead.
    pub lead_id: Uuid,
    /// The customer it became or was.
    pub customer_id: Option<Uuid>,
    /// The deal opened for it.
    pub deal_id: Uuid,
}

impl TypedEvent for LeadQualified {
    const EVENT_TYPE: &'static str = "LeadQualified";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "lead_qualified";
        validate_id(&format!("{f}.lead_id"), &self.lead_id, v);
        if let Some(customer) = &self.customer_id {
            validate_id(&format!("{f}.customer_id"), customer, v);
        }
        validate_id(&format!("{f}.deal_id"), &self.deal_id, v);
    }
}

/// A lead was disqualified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadDisqualified {
    /// The lead.
    pub lead_id: Uuid,
    /// Why, as a code (`no_budget`, `competitor`, `spam`).
    pub reason: String,
}

impl TypedEvent for LeadDisqualified {
    const EVENT_TYPE: &'static str = "LeadDisqualified";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("lead_disqualified.lead_id", &self.lead_id, v);
        validate_code("lead_disqualified.reason", &self.reason, v);
    }
}
