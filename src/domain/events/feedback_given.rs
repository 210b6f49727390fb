//! `FeedbackGiven`: the customer rated the business (NPS 0–10 or CSAT 1–5).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{Channel, validate_id};
use crate::domain::personal::{Personal, PersonalField};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, TEXT_BYTES_MAX};

/// Which score was given.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum FeedbackMetric {
    /// Not given.
    #[default]
    Unspecified,
    /// Net promoter score, 0..=10.
    Nps,
    /// Customer satisfaction, 1..=5.
    Csat,
}

/// The customer gave feedback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackGiven {
    /// The customer's id.
    pub customer_id: Uuid,
    /// NPS or CSAT.
    pub metric: FeedbackMetric,
    /// The score, in the metric's range.
    pub score: u8,
    /// The customer's comment, sealed with their key.
    pub comment: Personal<String>,
    /// Where it was given.
    pub channel: Channel,
    /// What it is about (an order id, a ticket id), empty when general.
    pub subject_ref: String,
}

impl TypedEvent for FeedbackGiven {
    const EVENT_TYPE: &'static str = "FeedbackGiven";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "feedback_given";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        match self.metric {
            FeedbackMetric::Unspecified => v.add(&format!("{f}.metric"), "is required"),
            FeedbackMetric::Nps if self.score > 10 => {
                v.add(&format!("{f}.score"), "an NPS score is 0 to 10")
            }
            FeedbackMetric::Csat if !(1..=5).contains(&self.score) => {
                v.add(&format!("{f}.score"), "a CSAT score is 1 to 5")
            }
            _ => {}
        }
        if let Some(comment) = self.comment.clear() {
            v.max_len(&format!("{f}.comment"), comment, TEXT_BYTES_MAX);
        }
        v.max_len(
            &format!("{f}.subject_ref"),
            &self.subject_ref,
            FIELD_BYTES_MAX,
        );
    }

    fn personal_owner(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }

    fn personal_fields(&mut self, visit: &mut dyn FnMut(&'static str, &mut dyn PersonalField)) {
        visit("comment", &mut self.comment);
    }
}
