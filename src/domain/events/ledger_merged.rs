//! A merged duplicate's loyalty ledger moved to its survivor. When the Customers service
//! merges a duplicate into a survivor (`CustomersMerged`) and the duplicate is an
//! enrolled member, the loyalty policy appends `LedgerMerged` to **both** member streams
//! (`loyalty-<duplicate>` and `loyalty-<survivor>`) in one atomic append: in the
//! duplicate's ledger it moves every remaining point out and ends the membership; in the
//! survivor's it adds each line as it was (its points, what became of them, its earning,
//! availability and expiry times, its order and source), so pending points stay pending,
//! expiries keep their dates, a later refund of the duplicate's order cancels the right
//! points, and tier windows see the duplicate's spend. A large ledger is split into
//! `parts` events of the same append.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{Channel, validate_id};
use crate::domain::violations::Violations;
use crate::limits::{
    FIELD_BYTES_MAX, LOYALTY_MERGE_LINES_PER_EVENT, LOYALTY_MERGE_PARTS_MAX, LOYALTY_POINTS_MAX,
};

/// One ledger line as it was in the duplicate's ledger at the merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedLine {
    /// The line's id (the event that credited it), kept: expiries name lines by it.
    pub line_id: Uuid,
    /// Its log position in the duplicate's ledger (keeps the FIFO order).
    pub position: u64,
    /// The rule (`base`, a bonus name, `adjustment`, `transfer`).
    pub rule: String,
    /// The order, for purchase points ("" otherwise).
    pub order_id: String,
    /// The source event, for earned points.
    pub source_event_id: Option<Uuid>,
    /// Points credited.
    pub points: u64,
    /// Of them, points spent in the duplicate's ledger (with what they paid of debt).
    pub spent: u64,
    /// Points expired there.
    pub expired: u64,
    /// Points cancelled there by refunds.
    pub cancelled: u64,
    /// Points forfeited there (an earlier leaving).
    pub forfeited: u64,
    /// Points that paid off debt there.
    pub recovered: u64,
    /// Spend counted with it, minor units.
    pub spend_minor: i64,
    /// Earned at (business time, UTC microseconds).
    pub earned_at_us: i64,
    /// Spendable from.
    pub available_at_us: i64,
    /// Lapses at; `None`: never.
    pub expires_at_us: Option<i64>,
    /// Refunded amount of this line's order so far, minor units.
    pub refunded_minor: i64,
    /// Points the refunds of this line's order accounted for.
    pub refund_points: u64,
}

impl MovedLine {
    /// Points used in the duplicate's ledger (they do not move).
    pub fn used(&self) -> u64 {
        self.spent
            .saturating_add(self.expired)
            .saturating_add(self.cancelled)
            .saturating_add(self.forfeited)
            .saturating_add(self.recovered)
    }

    /// Points that move (credited less used).
    pub fn remaining(&self) -> u64 {
        self.points.saturating_sub(self.used())
    }
}

/// One tier-qualifying spend entry: (business time, +order / −refund minor units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedSpend {
    /// Business time.
    pub at_us: i64,
    /// Minor units (negative for a refund).
    pub minor: i64,
}

/// Part `part` of `parts` of the move of `duplicate_id`'s ledger into `survivor_id`'s,
/// caused by the merge event `merge_event_id`. Membership fields (enrolment, tier, debt)
/// are in part 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerMerged {
    /// The merged duplicate (its ledger ends).
    pub duplicate_id: Uuid,
    /// The survivor (its ledger receives the lines).
    pub survivor_id: Uuid,
    /// The `CustomersMerged` event.
    pub merge_event_id: Uuid,
    /// This part's index, from 0.
    pub part: u32,
    /// Parts of the move (all in one append).
    pub parts: u32,
    /// Lines of this part.
    pub lines: Vec<MovedLine>,
    /// Tier-qualifying spend of this part.
    pub spend: Vec<MovedSpend>,
    /// Points the duplicate owed that the survivor now owes (part 0; 0 in the others).
    pub debt_points: u64,
    /// Points the duplicate owed that are forgiven, because the survivor's debt would
    /// exceed the programme's limit (part 0).
    pub debt_forgiven_points: u64,
    /// When the duplicate enrolled (part 0): a survivor that is not a member becomes
    /// one with this enrolment time.
    pub enrolled_at_us: i64,
    /// Where the duplicate enrolled (part 0).
    pub channel: Channel,
    /// The duplicate's tier ("" for the programme's lowest); a survivor that is not a
    /// member takes it.
    pub tier: String,
}

impl LedgerMerged {
    /// Points this part moves (its lines' remaining points).
    pub fn points(&self) -> u64 {
        self.lines.iter().map(MovedLine::remaining).sum()
    }
}

impl TypedEvent for LedgerMerged {
    const EVENT_TYPE: &'static str = "LedgerMerged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "ledger_merged";
        validate_id(&format!("{f}.duplicate_id"), &self.duplicate_id, v);
        validate_id(&format!("{f}.survivor_id"), &self.survivor_id, v);
        if self.duplicate_id == self.survivor_id {
            v.add(
                &format!("{f}.survivor_id"),
                "must differ from the duplicate",
            );
        }
        validate_id(&format!("{f}.merge_event_id"), &self.merge_event_id, v);
        if self.parts == 0 || self.parts as usize > LOYALTY_MERGE_PARTS_MAX {
            v.add(
                &format!("{f}.parts"),
                format!("must be 1..={LOYALTY_MERGE_PARTS_MAX}"),
            );
        }
        if self.part >= self.parts {
            v.add(&format!("{f}.part"), "must be below parts");
        }
        v.max_items(
            &format!("{f}.lines"),
            self.lines.len(),
            LOYALTY_MERGE_LINES_PER_EVENT,
        );
        v.max_items(
            &format!("{f}.spend"),
            self.spend.len(),
            LOYALTY_MERGE_LINES_PER_EVENT,
        );
        for (i, line) in self.lines.iter().enumerate() {
            let at = format!("{f}.lines[{i}]");
            validate_id(&format!("{at}.line_id"), &line.line_id, v);
            v.required(&format!("{at}.rule"), &line.rule, FIELD_BYTES_MAX);
            v.max_len(&format!("{at}.order_id"), &line.order_id, FIELD_BYTES_MAX);
            if line.points > LOYALTY_POINTS_MAX {
                v.add(
                    &format!("{at}.points"),
                    format!("must be at most {LOYALTY_POINTS_MAX}"),
                );
            }
            if line.used() > line.points {
                v.add(&format!("{at}.points"), "must not be below the points used");
            }
            if line.available_at_us < line.earned_at_us {
                v.add(
                    &format!("{at}.available_at"),
                    "must not be before earned_at",
                );
            }
        }
        for (name, value) in [
            ("debt_points", self.debt_points),
            ("debt_forgiven_points", self.debt_forgiven_points),
        ] {
            if value > LOYALTY_POINTS_MAX {
                v.add(
                    &format!("{f}.{name}"),
                    format!("must be at most {LOYALTY_POINTS_MAX}"),
                );
            }
        }
        v.max_len(&format!("{f}.tier"), &self.tier, FIELD_BYTES_MAX);
    }
}
