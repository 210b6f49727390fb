//! Points ledger events in the member's stream `loyalty-<customer id>`. Every credit
//! (`PointsEarned`, a positive `PointsAdjusted`, an incoming `PointsTransferred`) is a
//! ledger line identified by its event id; debits name how many points they take and
//! the fold ([`crate::domain::loyalty::ledger`]) consumes lines oldest first (FIFO).
//! Earned points carry their business times: earned, available (after the holding
//! period) and expiry, so pending and available at any time are derived from them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, LOYALTY_POINTS_MAX, REPEATED_ITEMS_MAX};

fn points_range(field: &str, points: u64, v: &mut Violations) {
    if points > LOYALTY_POINTS_MAX {
        v.add(field, format!("must be at most {LOYALTY_POINTS_MAX}"));
    }
}

/// Points earned by one rule for one source event (a purchase, a custom event, an
/// enrolment). Written by the loyalty policy with `causation_id` = the source event and
/// an event id derived from (source event id, rule).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsEarned {
    /// The member.
    pub customer_id: Uuid,
    /// The rule: `base` for points on spend, else the bonus's name.
    pub rule: String,
    /// Points credited (0 is allowed for `base`: the spend still counts for tiers).
    pub points: u64,
    /// The order, for points on a purchase; empty otherwise.
    pub order_id: String,
    /// The order total counted for spend-based tiers, minor units of the programme currency.
    pub spend_minor: i64,
    /// When earned (the source event's business time).
    pub earned_at_us: i64,
    /// When the points become available (after the holding period).
    pub available_at_us: i64,
    /// When they expire; `None`: never.
    pub expires_at_us: Option<i64>,
    /// The source event.
    pub source_event_id: Uuid,
}

impl TypedEvent for PointsEarned {
    const EVENT_TYPE: &'static str = "PointsEarned";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("points_earned.customer_id", &self.customer_id, v);
        v.required("points_earned.rule", &self.rule, FIELD_BYTES_MAX);
        points_range("points_earned.points", self.points, v);
        v.max_len("points_earned.order_id", &self.order_id, FIELD_BYTES_MAX);
        if self.spend_minor < 0 {
            v.add("points_earned.spend_minor", "must not be negative");
        }
        if self.available_at_us < self.earned_at_us {
            v.add("points_earned.available_at", "must not be before earned_at");
        }
        if self.expires_at_us.is_some_and(|e| e < self.earned_at_us) {
            v.add("points_earned.expires_at", "must not be before earned_at");
        }
        validate_id("points_earned.source_event_id", &self.source_event_id, v);
    }
}

/// Points of a refunded order were cancelled: `points` taken from the ledger (the
/// order's own lines first, then the oldest others), `debt_points` owed (recovered from
/// future earnings) and `forgiven_points` beyond the programme's debt limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsCancelled {
    /// The member.
    pub customer_id: Uuid,
    /// The refunded order.
    pub order_id: String,
    /// Points taken from ledger lines.
    pub points: u64,
    /// Points added to the member's debt.
    pub debt_points: u64,
    /// Points that could not be recovered and were forgiven.
    pub forgiven_points: u64,
    /// Refunded amount counted against spend-based tiers, minor units.
    pub refund_minor: i64,
    /// The refund event.
    pub source_event_id: Uuid,
}

impl TypedEvent for PointsCancelled {
    const EVENT_TYPE: &'static str = "PointsCancelled";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("points_cancelled.customer_id", &self.customer_id, v);
        v.required("points_cancelled.order_id", &self.order_id, FIELD_BYTES_MAX);
        points_range("points_cancelled.points", self.points, v);
        points_range("points_cancelled.debt_points", self.debt_points, v);
        points_range("points_cancelled.forgiven_points", self.forgiven_points, v);
        if self.refund_minor < 0 {
            v.add("points_cancelled.refund_minor", "must not be negative");
        }
        validate_id("points_cancelled.source_event_id", &self.source_event_id, v);
    }
}

/// Points were spent (oldest available first), on a reward or directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsSpent {
    /// The member.
    pub customer_id: Uuid,
    /// Points spent, at least 1.
    pub points: u64,
    /// What for (free text from the caller).
    pub reason: String,
    /// The reward redeemed, if any.
    pub reward_id: Option<Uuid>,
    /// The redemption's id.
    pub redemption_id: Uuid,
}

impl TypedEvent for PointsSpent {
    const EVENT_TYPE: &'static str = "PointsSpent";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("points_spent.customer_id", &self.customer_id, v);
        if self.points == 0 {
            v.add("points_spent.points", "must be at least 1");
        }
        points_range("points_spent.points", self.points, v);
        v.max_len("points_spent.reason", &self.reason, FIELD_BYTES_MAX);
        if let Some(reward) = &self.reward_id {
            validate_id("points_spent.reward_id", reward, v);
        }
        validate_id("points_spent.redemption_id", &self.redemption_id, v);
    }
}

/// The remaining points of one ledger line that expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiredLine {
    /// The line (the id of the event that credited it).
    pub line_id: Uuid,
    /// Points expired.
    pub points: u64,
}

/// Points expired, found by the loyalty tick as of `as_of_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsExpired {
    /// The member.
    pub customer_id: Uuid,
    /// The lines and their expired points.
    pub lines: Vec<ExpiredLine>,
    /// The time the tick ran for (business time).
    pub as_of_us: i64,
}

impl TypedEvent for PointsExpired {
    const EVENT_TYPE: &'static str = "PointsExpired";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("points_expired.customer_id", &self.customer_id, v);
        if self.lines.is_empty() {
            v.add("points_expired.lines", "must not be empty");
        }
        v.max_items("points_expired.lines", self.lines.len(), REPEATED_ITEMS_MAX);
        for (i, line) in self.lines.iter().enumerate() {
            validate_id(
                &format!("points_expired.lines[{i}].line_id"),
                &line.line_id,
                v,
            );
            points_range(&format!("points_expired.lines[{i}].points"), line.points, v);
        }
    }
}

/// A manual adjustment by staff (the actor is in the envelope): positive credits a line
/// available at once, negative takes points oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsAdjusted {
    /// The member.
    pub customer_id: Uuid,
    /// Points added (positive) or removed (negative), not 0.
    pub points: i64,
    /// Why (required).
    pub reason: String,
    /// Expiry of credited points; `None`: never.
    pub expires_at_us: Option<i64>,
}

impl TypedEvent for PointsAdjusted {
    const EVENT_TYPE: &'static str = "PointsAdjusted";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("points_adjusted.customer_id", &self.customer_id, v);
        if self.points == 0 {
            v.add("points_adjusted.points", "must not be 0");
        }
        points_range("points_adjusted.points", self.points.unsigned_abs(), v);
        v.required("points_adjusted.reason", &self.reason, FIELD_BYTES_MAX);
    }
}

/// Points moved between two members (household pooling). Written to both members'
/// streams in one atomic append: it debits the sender (oldest first) and credits the
/// receiver with one line, available at once, expiring at `expires_at_us` (the earliest
/// expiry among the sender's points it took).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsTransferred {
    /// The sender.
    pub from_customer_id: Uuid,
    /// The receiver.
    pub to_customer_id: Uuid,
    /// Points moved, at least 1.
    pub points: u64,
    /// The transfer's id.
    pub transfer_id: Uuid,
    /// Expiry of the received line; `None`: never.
    pub expires_at_us: Option<i64>,
}

impl TypedEvent for PointsTransferred {
    const EVENT_TYPE: &'static str = "PointsTransferred";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id(
            "points_transferred.from_customer_id",
            &self.from_customer_id,
            v,
        );
        validate_id("points_transferred.to_customer_id", &self.to_customer_id, v);
        if self.from_customer_id == self.to_customer_id {
            v.add(
                "points_transferred.to_customer_id",
                "must differ from the sender",
            );
        }
        if self.points == 0 {
            v.add("points_transferred.points", "must be at least 1");
        }
        points_range("points_transferred.points", self.points, v);
        validate_id("points_transferred.transfer_id", &self.transfer_id, v);
    }
}
