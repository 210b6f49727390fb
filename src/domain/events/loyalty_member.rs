//! Loyalty membership events in the member's stream `loyalty-<customer id>`: enrolment,
//! leaving (remaining points forfeited explicitly) and tier changes (appended by the
//! loyalty tick for the time it was given).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{Channel, validate_id};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, LOYALTY_POINTS_MAX};

/// A customer enrolled in the programme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEnrolled {
    /// The customer (the member's id).
    pub customer_id: Uuid,
    /// Where they enrolled.
    pub channel: Channel,
}

impl TypedEvent for MemberEnrolled {
    const EVENT_TYPE: &'static str = "MemberEnrolled";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("member_enrolled.customer_id", &self.customer_id, v);
    }
}

/// A member left the programme; their remaining points are forfeited by this event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLeft {
    /// The member.
    pub customer_id: Uuid,
    /// Points forfeited (every remaining credit, pending ones included).
    pub forfeited_points: u64,
    /// Why.
    pub reason: String,
}

impl TypedEvent for MemberLeft {
    const EVENT_TYPE: &'static str = "MemberLeft";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("member_left.customer_id", &self.customer_id, v);
        if self.forfeited_points > LOYALTY_POINTS_MAX * 1_000 {
            v.add("member_left.forfeited_points", "is too large");
        }
        v.max_len("member_left.reason", &self.reason, FIELD_BYTES_MAX);
    }
}

/// A member's tier changed, evaluated as of `as_of_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChanged {
    /// The member.
    pub customer_id: Uuid,
    /// The tier before ("" when none yet).
    pub from_tier: String,
    /// The tier after.
    pub to_tier: String,
    /// The qualifying amount over the window at `as_of_us`.
    pub qualifying: i64,
    /// The time the tiers were evaluated at (UTC microseconds, business time).
    pub as_of_us: i64,
}

impl TypedEvent for TierChanged {
    const EVENT_TYPE: &'static str = "TierChanged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("tier_changed.customer_id", &self.customer_id, v);
        v.max_len("tier_changed.from_tier", &self.from_tier, FIELD_BYTES_MAX);
        v.required("tier_changed.to_tier", &self.to_tier, FIELD_BYTES_MAX);
    }
}
