//! `DealOpened` and the other events of a deal (`deal-<id>` streams): stage moved,
//! changed (amount, close date, owner), won, lost, reopened.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use super::pipeline_defined::validate_code;
use crate::domain::common::{CalendarDate, validate_currency, validate_id};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, OWNER_BYTES_MAX};

/// A deal was opened in a pipeline's open stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealOpened {
    /// The deal's id.
    pub deal_id: Uuid,
    /// Its pipeline.
    pub pipeline_id: Uuid,
    /// The stage it starts in (an open stage of the pipeline).
    pub stage_id: String,
    /// A short title (`ACME, 50 seats`).
    pub title: String,
    /// Amount in minor units of `currency`, at least 0.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When it is expected to close (business time, a calendar date).
    pub expected_close: CalendarDate,
    /// The owner's user id.
    pub owner: String,
    /// The customer it is with.
    pub customer_id: Option<Uuid>,
    /// The account it is with.
    pub account_id: Option<Uuid>,
    /// The lead it was qualified from.
    pub lead_id: Option<Uuid>,
}

impl TypedEvent for DealOpened {
    const EVENT_TYPE: &'static str = "DealOpened";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "deal_opened";
        validate_id(&format!("{f}.deal_id"), &self.deal_id, v);
        validate_id(&format!("{f}.pipeline_id"), &self.pipeline_id, v);
        validate_code(&format!("{f}.stage_id"), &self.stage_id, v);
        v.required(&format!("{f}.title"), &self.title, FIELD_BYTES_MAX);
        if self.amount_minor < 0 {
            v.add(&format!("{f}.amount_minor"), "must not be negative");
        }
        validate_currency(&format!("{f}.currency"), &self.currency, v);
        v.max_len(&format!("{f}.owner"), &self.owner, OWNER_BYTES_MAX);
        for (name, id) in [
            ("customer_id", &self.customer_id),
            ("account_id", &self.account_id),
            ("lead_id", &self.lead_id),
        ] {
            if let Some(id) = id {
                validate_id(&format!("{f}.{name}"), id, v);
            }
        }
        if self.customer_id.is_none() && self.account_id.is_none() {
            v.add(
                &format!("{f}.customer_id"),
                "set customer_id or account_id (or both)",
            );
        }
    }
}

/// A deal moved from one open stage to another of its pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealStageMoved {
    /// The deal.
    pub deal_id: Uuid,
    /// The stage it left.
    pub from_stage_id: String,
    /// The stage it entered.
    pub to_stage_id: String,
}

impl TypedEvent for DealStageMoved {
    const EVENT_TYPE: &'static str = "DealStageMoved";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "deal_stage_moved";
        validate_id(&format!("{f}.deal_id"), &self.deal_id, v);
        validate_code(&format!("{f}.from_stage_id"), &self.from_stage_id, v);
        validate_code(&format!("{f}.to_stage_id"), &self.to_stage_id, v);
    }
}

/// A deal's amount, expected close date or owner changed (the fields set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealChanged {
    /// The deal.
    pub deal_id: Uuid,
    /// The new amount, minor units of the deal's currency.
    pub amount_minor: Option<i64>,
    /// The new expected close date.
    pub expected_close: Option<CalendarDate>,
    /// The new owner.
    pub owner: Option<String>,
}

impl TypedEvent for DealChanged {
    const EVENT_TYPE: &'static str = "DealChanged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "deal_changed";
        validate_id(&format!("{f}.deal_id"), &self.deal_id, v);
        if self.amount_minor.is_some_and(|a| a < 0) {
            v.add(&format!("{f}.amount_minor"), "must not be negative");
        }
        if let Some(owner) = &self.owner {
            v.required(&format!("{f}.owner"), owner, OWNER_BYTES_MAX);
        }
        if self.amount_minor.is_none() && self.expected_close.is_none() && self.owner.is_none() {
            v.add(f, "set at least one of amount_minor, expected_close, owner");
        }
    }
}

/// A deal was won: it entered a won stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealWon {
    /// The deal.
    pub deal_id: Uuid,
    /// The open stage it was won from.
    pub from_stage_id: String,
    /// The won stage it entered.
    pub stage_id: String,
}

impl TypedEvent for DealWon {
    const EVENT_TYPE: &'static str = "DealWon";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "deal_won";
        validate_id(&format!("{f}.deal_id"), &self.deal_id, v);
        validate_code(&format!("{f}.from_stage_id"), &self.from_stage_id, v);
        validate_code(&format!("{f}.stage_id"), &self.stage_id, v);
    }
}

/// A deal was lost: it entered a lost stage, with a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealLost {
    /// The deal.
    pub deal_id: Uuid,
    /// The open stage it was lost from.
    pub from_stage_id: String,
    /// The lost stage it entered.
    pub stage_id: String,
    /// Why, as a code (`price`, `competitor`, `no_decision`).
    pub reason: String,
}

impl TypedEvent for DealLost {
    const EVENT_TYPE: &'static str = "DealLost";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "deal_lost";
        validate_id(&format!("{f}.deal_id"), &self.deal_id, v);
        validate_code(&format!("{f}.from_stage_id"), &self.from_stage_id, v);
        validate_code(&format!("{f}.stage_id"), &self.stage_id, v);
        validate_code(&format!("{f}.reason"), &self.reason, v);
    }
}

/// A won or lost deal was reopened into an open stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealReopened {
    /// The deal.
    pub deal_id: Uuid,
    /// The won or lost stage it left.
    pub from_stage_id: String,
    /// The open stage it entered.
    pub stage_id: String,
}

impl TypedEvent for DealReopened {
    const EVENT_TYPE: &'static str = "DealReopened";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "deal_reopened";
        validate_id(&format!("{f}.deal_id"), &self.deal_id, v);
        validate_code(&format!("{f}.from_stage_id"), &self.from_stage_id, v);
        validate_code(&format!("{f}.stage_id"), &self.stage_id, v);
    }
}
