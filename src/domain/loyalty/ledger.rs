//! The member ledger fold: a member's stream (`loyalty-<customer id>`) → [`Member`]. One
//! implementation serves the `loyalty` projection, its rebuild, as-of answers, the
//! services' decisions and the policy, so they cannot drift apart.
//!
//! Clock-free: the fold uses only the events' business times. Whether a credit is
//! pending or available, and whether it has lapsed, is derived at a query time `T` given
//! by the caller ([`Member::balance`]). Debits consume credits oldest first (FIFO, by
//! earning time then log position), skipping credits that had lapsed by the debit's
//! business time; spending also skips credits still pending then.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::time::add_days;
use crate::domain::common::Channel;
use crate::domain::events::{DomainEvent, LedgerMerged};

/// The stream category of member ledgers.
pub const MEMBER_CATEGORY: &str = "loyalty";

/// The programme's stream (one programme per deployment).
pub const PROGRAMME_STREAM: &str = "loyalty_programme-default";

/// The stream category of rewards.
pub const REWARD_CATEGORY: &str = "loyalty_reward";

/// The ledger stream of a member.
pub fn member_stream(customer: Uuid) -> String {
    format!("{MEMBER_CATEGORY}-{customer}")
}

/// `loyalty-<uuid>` → the uuid; other streams → `None`.
pub fn member_of_stream(stream: &str) -> Option<Uuid> {
    Uuid::parse_str(stream.strip_prefix("loyalty-")?).ok()
}

/// The stream of a reward.
pub fn reward_stream(reward: Uuid) -> String {
    format!("{REWARD_CATEGORY}-{reward}")
}

/// The rule name of points on spend.
pub const BASE_RULE: &str = "base";
/// The rule name of a manual credit.
pub const ADJUSTMENT_RULE: &str = "adjustment";
/// The rule name of a received transfer.
pub const TRANSFER_RULE: &str = "transfer";

/// What the fold needs of an event's envelope.
#[derive(Clone, Copy, Debug)]
pub struct Envelope {
    /// Global position.
    pub position: u64,
    /// The event id (a credit's line id).
    pub event_id: Uuid,
    /// Business time, UTC microseconds.
    pub occurred_at_us: i64,
}

/// How a member joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// Business time of the enrolment.
    pub at_us: i64,
    /// Its log position (only sources after it earn).
    pub position: u64,
    /// Where.
    pub channel: Channel,
}

/// One credit of the ledger and what became of its points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The id of the event that credited it.
    pub line_id: Uuid,
    /// Its log position.
    pub position: u64,
    /// The rule (`base`, a bonus name, `adjustment`, `transfer`).
    pub rule: String,
    /// The order, for purchase points.
    pub order_id: String,
    /// The source event (purchase, custom event, enrolment), for earned points.
    pub source_event_id: Option<Uuid>,
    /// Points credited.
    pub points: u64,
    /// Spend counted with it (base lines), minor units.
    pub spend_minor: i64,
    /// Earned at (business time).
    pub earned_at_us: i64,
    /// Spendable from.
    pub available_at_us: i64,
    /// Lapses at; `None`: never.
    pub expires_at_us: Option<i64>,
    /// Points spent (redemptions, negative adjustments, transfers out).
    pub spent: u64,
    /// Points expired by the tick.
    pub expired: u64,
    /// Points cancelled by refunds.
    pub cancelled: u64,
    /// Points forfeited on leaving.
    pub forfeited: u64,
    /// Points that paid off debt.
    pub recovered: u64,
    /// Points moved to the survivor's ledger when this member was merged into another.
    pub moved: u64,
    /// Refunded amount of this line's order so far (base lines), minor units.
    pub refunded_minor: i64,
    /// Points the refunds of this line's order accounted for (taken, owed or forgiven).
    pub refund_points: u64,
}

impl Line {
    /// Points still on the line.
    pub fn remaining(&self) -> u64 {
        self.points.saturating_sub(
            self.spent
                + self.expired
                + self.cancelled
                + self.forfeited
                + self.recovered
                + self.moved,
        )
    }

    /// True when the line has not lapsed at `at_us`.
    pub fn live_at(&self, at_us: i64) -> bool {
        self.expires_at_us.is_none_or(|e| e > at_us)
    }

    /// Its state at `at_us`: `pending`, `available`, `expired` (lapsed or expired by
    /// the tick), else what took most of it (`spent`, `cancelled`, `forfeited`,
    /// `merged`: moved to the survivor's ledger).
    pub fn state_at(&self, at_us: i64) -> &'static str {
        if self.remaining() > 0 {
            if !self.live_at(at_us) {
                "expired"
            } else if self.available_at_us > at_us {
                "pending"
            } else {
                "available"
            }
        } else {
            [
                (self.spent + self.recovered, "spent"),
                (self.cancelled, "cancelled"),
                (self.expired, "expired"),
                (self.forfeited, "forfeited"),
                (self.moved, "merged"),
            ]
            .into_iter()
            .max_by_key(|(n, _)| *n)
            .map_or("spent", |(_, s)| s)
        }
    }
}

/// The kind of a ledger entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Enrolled.
    Enrolled,
    /// Left (points forfeited).
    Left,
    /// Points earned.
    Earned,
    /// Points cancelled by a refund.
    Cancelled,
    /// Points spent.
    Spent,
    /// Points expired.
    Expired,
    /// Manual adjustment.
    Adjusted,
    /// Transfer received.
    TransferredIn,
    /// Transfer sent.
    TransferredOut,
    /// Tier changed.
    TierChanged,
    /// A merged duplicate's ledger was received.
    MergedIn,
    /// This ledger was moved to the survivor of a merge.
    MergedOut,
}

impl EntryKind {
    /// Lower-case name for the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::Left => "left",
            Self::Earned => "earned",
            Self::Cancelled => "cancelled",
            Self::Spent => "spent",
            Self::Expired => "expired",
            Self::Adjusted => "adjusted",
            Self::TransferredIn => "transferred_in",
            Self::TransferredOut => "transferred_out",
            Self::TierChanged => "tier_changed",
            Self::MergedIn => "merged_in",
            Self::MergedOut => "merged_out",
        }
    }
}

/// One event of the member's ledger, with its effect on the balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Log position.
    pub position: u64,
    /// Event id.
    pub event_id: Uuid,
    /// Business time.
    pub at_us: i64,
    /// What happened.
    pub kind: EntryKind,
    /// Change of the balance (credits minus debits minus debt), points.
    pub points: i64,
    /// The rule, reason, order or tier.
    pub detail: String,
    /// The cause: the source event (earning, cancellation), the reward (redemption).
    pub cause: Option<Uuid>,
}

/// Lifetime figures of a member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Points earned (purchases, bonuses).
    pub earned: u64,
    /// Points spent (redemptions).
    pub spent: u64,
    /// Points expired.
    pub expired: u64,
    /// Points cancelled by refunds (taken from lines or owed).
    pub cancelled: u64,
    /// Points forgiven (refunds beyond the debt limit).
    pub forgiven: u64,
    /// Points forfeited on leaving.
    pub forfeited: u64,
    /// Points added by staff.
    pub adjusted_in: u64,
    /// Points removed by staff.
    pub adjusted_out: u64,
    /// Points received by transfer.
    pub transferred_in: u64,
    /// Points sent by transfer.
    pub transferred_out: u64,
    /// Redemptions (spend events).
    pub redemptions: u64,
    /// Points received from merged duplicates' ledgers.
    pub merged_in: u64,
    /// Points moved to a survivor's ledger.
    pub merged_out: u64,
}

/// A member's balance at a query time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Spendable points less debt (negative while in debt).
    pub available: i64,
    /// Points still in their holding period.
    pub pending: u64,
    /// Debt owed, recovered from future earnings.
    pub debt: u64,
    /// Points lapsing within 30, 60 and 90 days.
    pub expiring: [u64; 3],
}

/// A member's ledger state, folded from their stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The customer.
    pub customer_id: Uuid,
    /// The current enrolment.
    pub enrolment: Option<Enrolment>,
    /// Left at (business time, position), when the last enrolment ended.
    pub left: Option<(i64, u64)>,
    /// The current tier ("" until the first tier change: the programme's lowest).
    pub tier: String,
    /// Tier changes: (evaluated as of, tier).
    pub tier_history: Vec<(i64, String)>,
    /// Credits, in log order.
    pub lines: Vec<Line>,
    /// Every ledger event, in log order.
    pub entries: Vec<Entry>,
    /// Points owed.
    pub debt: u64,
    /// Lifetime figures.
    pub totals: Totals,
    /// Source events already accounted for (the policy's exactly-once guard).
    pub sources: BTreeSet<Uuid>,
    /// Spend counted for tiers: (business time, +order / −refund minor units).
    pub spend: Vec<(i64, i64)>,
    /// Position of the last event folded.
    pub last_position: u64,
    /// The survivor this member's ledger was moved to (a merged duplicate).
    pub merged_into: Option<Uuid>,
}

impl Member {
    /// An empty ledger.
    pub fn new(customer_id: Uuid) -> Self {
        Self {
            customer_id,
            ..Self::default()
        }
    }

    /// True when enrolled and not left.
    pub fn is_active(&self) -> bool {
        self.enrolment.is_some() && self.left.is_none()
    }

    /// True when the enrolment in force covers a source event at `position`.
    pub fn active_at_position(&self, position: u64) -> bool {
        self.enrolment.is_some_and(|e| e.position <= position)
            && self.left.is_none_or(|(_, p)| p > position)
    }

    /// The tier in force at business time `at_us` ("" before any change).
    pub fn tier_at(&self, at_us: i64) -> &str {
        self.tier_history
            .iter()
            .rev()
            .find(|(as_of, _)| *as_of <= at_us)
            .map_or("", |(_, t)| t.as_str())
    }

    /// Points still on lines (pending and available, lapsed or not).
    pub fn remaining(&self) -> u64 {
        self.lines.iter().map(Line::remaining).sum()
    }

    /// The balance at query time `at_us`. Lines lapsed by then count for nothing even
    /// before the tick writes their expiry.
    pub fn balance(&self, at_us: i64) -> Balance {
        let mut b = Balance {
            debt: self.debt,
            ..Balance::default()
        };
        let mut available: u64 = 0;
        for line in &self.lines {
            let left = line.remaining();
            if left == 0 || !line.live_at(at_us) {
                continue;
            }
            if line.available_at_us <= at_us {
                available += left;
            } else {
                b.pending += left;
            }
            if let Some(expires) = line.expires_at_us {
                for (i, days) in [30u32, 60, 90].into_iter().enumerate() {
                    if expires <= add_days(at_us, days) {
                        b.expiring[i] += left;
                    }
                }
            }
        }
        b.available = available as i64 - self.debt as i64;
        b
    }

    /// Lines in FIFO order (earned first, then log position).
    fn fifo(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.lines.len()).collect();
        order.sort_by_key(|i| (self.lines[*i].earned_at_us, self.lines[*i].position));
        order
    }

    /// Takes up to `points` from lines `pick` accepts, oldest first, booking them with
    /// `book`; returns what it could not take.
    fn take(
        &mut self,
        mut points: u64,
        pick: impl Fn(&Line) -> bool,
        book: impl Fn(&mut Line, u64),
    ) -> u64 {
        for i in self.fifo() {
            if points == 0 {
                break;
            }
            let line = &mut self.lines[i];
            if !pick(line) {
                continue;
            }
            let n = line.remaining().min(points);
            if n > 0 {
                book(line, n);
                points -= n;
            }
        }
        points
    }

    /// What [`Member::take`] of `points` spendable at `at_us` would take: the earliest
    /// expiry among the lines it would touch (for a transfer's received line).
    pub fn earliest_expiry_of_spend(&self, points: u64, at_us: i64) -> Option<i64> {
        let mut left = points;
        let mut earliest: Option<i64> = None;
        for i in self.fifo() {
            if left == 0 {
                break;
            }
            let line = &self.lines[i];
            if !(line.live_at(at_us) && line.available_at_us <= at_us) || line.remaining() == 0 {
                continue;
            }
            left -= line.remaining().min(left);
            if let Some(e) = line.expires_at_us {
                earliest = Some(earliest.map_or(e, |x: i64| x.min(e)));
            }
        }
        earliest
    }

    fn credit(&mut self, mut line: Line) {
        let recover = self.debt.min(line.points);
        line.recovered = recover;
        self.debt -= recover;
        self.lines.push(line);
    }

    fn spendable(at_us: i64) -> impl Fn(&Line) -> bool {
        move |l: &Line| l.live_at(at_us) && l.available_at_us <= at_us
    }

    fn entry(
        &mut self,
        env: &Envelope,
        kind: EntryKind,
        points: i64,
        detail: &str,
        cause: Option<Uuid>,
    ) {
        self.entries.push(Entry {
            position: env.position,
            event_id: env.event_id,
            at_us: env.occurred_at_us,
            kind,
            points,
            detail: detail.to_owned(),
            cause,
        });
    }
}

fn line(
    env: &Envelope,
    rule: &str,
    points: u64,
    available_at_us: i64,
    expires_at_us: Option<i64>,
) -> Line {
    Line {
        line_id: env.event_id,
        position: env.position,
        rule: rule.to_owned(),
        order_id: String::new(),
        source_event_id: None,
        points,
        spend_minor: 0,
        earned_at_us: env.occurred_at_us,
        available_at_us,
        expires_at_us,
        spent: 0,
        expired: 0,
        cancelled: 0,
        forfeited: 0,
        recovered: 0,
        moved: 0,
        refunded_minor: 0,
        refund_points: 0,
    }
}

/// Folds one event of the member's stream into `member`. Events of other types are
/// ignored (their positions still count as folded).
pub fn apply(member: &mut Member, env: &Envelope, event: &DomainEvent) {
    member.last_position = member.last_position.max(env.position);
    let at = env.occurred_at_us;
    match event {
        DomainEvent::MemberEnrolled(e) => {
            member.enrolment = Some(Enrolment {
                at_us: at,
                position: env.position,
                channel: e.channel,
            });
            member.left = None;
            member.entry(env, EntryKind::Enrolled, 0, "", None);
        }
        DomainEvent::MemberLeft(e) => {
            let mut forfeited = 0;
            for line in &mut member.lines {
                let n = line.remaining();
                line.forfeited += n;
                forfeited += n;
            }
            member.totals.forfeited += forfeited;
            member.left = Some((at, env.position));
            member.entry(env, EntryKind::Left, -(forfeited as i64), &e.reason, None);
        }
        DomainEvent::TierChanged(e) => {
            member.tier = e.to_tier.clone();
            member.tier_history.push((e.as_of_us, e.to_tier.clone()));
            member.entry(env, EntryKind::TierChanged, 0, &e.to_tier, None);
        }
        DomainEvent::PointsEarned(e) => {
            member.sources.insert(e.source_event_id);
            let mut l = line(env, &e.rule, e.points, e.available_at_us, e.expires_at_us);
            l.earned_at_us = e.earned_at_us;
            l.order_id = e.order_id.clone();
            l.source_event_id = Some(e.source_event_id);
            l.spend_minor = e.spend_minor;
            if e.spend_minor > 0 {
                member.spend.push((e.earned_at_us, e.spend_minor));
            }
            member.totals.earned += e.points;
            member.credit(l);
            member.entry(
                env,
                EntryKind::Earned,
                e.points as i64,
                &e.rule,
                Some(e.source_event_id),
            );
        }
        DomainEvent::PointsCancelled(e) => {
            member.sources.insert(e.source_event_id);
            if let Some(base) = member
                .lines
                .iter_mut()
                .find(|l| l.rule == BASE_RULE && l.order_id == e.order_id)
            {
                base.refunded_minor += e.refund_minor;
                base.refund_points += e.points + e.debt_points + e.forgiven_points;
            }
            if e.refund_minor > 0 {
                member.spend.push((at, -e.refund_minor));
            }
            let order = e.order_id.clone();
            let rest = member.take(
                e.points,
                |l| l.order_id == order && l.live_at(at),
                |l, n| l.cancelled += n,
            );
            let rest = member.take(rest, |l| l.live_at(at), |l, n| l.cancelled += n);
            // Points the decision expected on lines but the lines no longer hold (a raw
            // log) become debt, so the balance still equals the ledger's sum.
            member.debt += rest + e.debt_points;
            member.totals.cancelled += e.points + e.debt_points;
            member.totals.forgiven += e.forgiven_points;
            member.entry(
                env,
                EntryKind::Cancelled,
                -((e.points + e.debt_points) as i64),
                &e.order_id,
                Some(e.source_event_id),
            );
        }
        DomainEvent::PointsSpent(e) => {
            let rest = member.take(e.points, Member::spendable(at), |l, n| l.spent += n);
            member.debt += rest;
            member.totals.spent += e.points;
            member.totals.redemptions += 1;
            member.entry(
                env,
                EntryKind::Spent,
                -(e.points as i64),
                &e.reason,
                e.reward_id,
            );
        }
        DomainEvent::PointsExpired(e) => {
            let mut total = 0;
            for expired in &e.lines {
                if let Some(l) = member
                    .lines
                    .iter_mut()
                    .find(|l| l.line_id == expired.line_id)
                {
                    let n = l.remaining().min(expired.points);
                    l.expired += n;
                    total += n;
                }
            }
            member.totals.expired += total;
            member.entry(env, EntryKind::Expired, -(total as i64), "", None);
        }
        DomainEvent::PointsAdjusted(e) => {
            if e.points > 0 {
                let points = e.points as u64;
                member.credit(line(env, ADJUSTMENT_RULE, points, at, e.expires_at_us));
                member.totals.adjusted_in += points;
            } else {
                let points = e.points.unsigned_abs();
                let rest = member.take(points, Member::spendable(at), |l, n| l.spent += n);
                member.debt += rest;
                member.totals.adjusted_out += points;
            }
            member.entry(env, EntryKind::Adjusted, e.points, &e.reason, None);
        }
        DomainEvent::PointsTransferred(e) => {
            if e.to_customer_id == member.customer_id {
                member.credit(line(env, TRANSFER_RULE, e.points, at, e.expires_at_us));
                member.totals.transferred_in += e.points;
                member.entry(
                    env,
                    EntryKind::TransferredIn,
                    e.points as i64,
                    &e.from_customer_id.to_string(),
                    Some(e.transfer_id),
                );
            } else if e.from_customer_id == member.customer_id {
                let rest = member.take(e.points, Member::spendable(at), |l, n| l.spent += n);
                member.debt += rest;
                member.totals.transferred_out += e.points;
                member.entry(
                    env,
                    EntryKind::TransferredOut,
                    -(e.points as i64),
                    &e.to_customer_id.to_string(),
                    Some(e.transfer_id),
                );
            }
        }
        DomainEvent::LedgerMerged(e) => merge(member, env, e),
        _ => {}
    }
}

/// Folds a ledger move: out of the duplicate's ledger, or into the survivor's.
fn merge(member: &mut Member, env: &Envelope, e: &LedgerMerged) {
    let at = env.occurred_at_us;
    let points = e.points();
    if member.customer_id == e.duplicate_id {
        // One index of the ledger per part, not a scan per moved line: a part carries
        // up to `LOYALTY_MERGE_LINES_PER_EVENT` lines of a ledger of any length.
        let index: std::collections::HashMap<Uuid, usize> = member
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| (l.line_id, i))
            .collect();
        for moved in &e.lines {
            if let Some(&i) = index.get(&moved.line_id) {
                let l = &mut member.lines[i];
                l.moved += l.remaining().min(moved.remaining());
            }
        }
        let settled = e.debt_points + e.debt_forgiven_points;
        if e.part == 0 {
            member.debt = member.debt.saturating_sub(settled);
            member.totals.forgiven += e.debt_forgiven_points;
            member.merged_into = Some(e.survivor_id);
            member.left = Some((at, env.position));
        }
        member.totals.merged_out += points;
        member.entry(
            env,
            EntryKind::MergedOut,
            settled as i64 - points as i64,
            &e.survivor_id.to_string(),
            Some(e.merge_event_id),
        );
    } else if member.customer_id == e.survivor_id {
        for moved in &e.lines {
            if let Some(source) = moved.source_event_id {
                member.sources.insert(source);
            }
            member.lines.push(Line {
                line_id: moved.line_id,
                position: moved.position,
                rule: moved.rule.clone(),
                order_id: moved.order_id.clone(),
                source_event_id: moved.source_event_id,
                points: moved.points,
                spend_minor: moved.spend_minor,
                earned_at_us: moved.earned_at_us,
                available_at_us: moved.available_at_us,
                expires_at_us: moved.expires_at_us,
                spent: moved.spent,
                expired: moved.expired,
                cancelled: moved.cancelled,
                forfeited: moved.forfeited,
                recovered: moved.recovered,
                moved: 0,
                refunded_minor: moved.refunded_minor,
                refund_points: moved.refund_points,
            });
        }
        member
            .spend
            .extend(e.spend.iter().map(|s| (s.at_us, s.minor)));
        if e.part == 0 {
            member.debt += e.debt_points;
            if !member.is_active() {
                member.enrolment = Some(Enrolment {
                    at_us: e.enrolled_at_us,
                    position: env.position,
                    channel: e.channel,
                });
                member.left = None;
                if !e.tier.is_empty() {
                    member.tier = e.tier.clone();
                    member.tier_history.push((at, e.tier.clone()));
                }
            }
        }
        member.totals.merged_in += points;
        member.entry(
            env,
            EntryKind::MergedIn,
            points as i64 - e.debt_points as i64,
            &e.duplicate_id.to_string(),
            Some(e.merge_event_id),
        );
    }
}

/// A reward's state, folded from its stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reward {
    /// Its id.
    pub reward_id: Uuid,
    /// Its name ("" until defined).
    pub name: String,
    /// Cost, points.
    pub cost_points: u64,
    /// Stock, `None` for unlimited.
    pub stock: Option<u64>,
    /// Units claimed.
    pub claimed: u64,
    /// Defined.
    pub defined: bool,
    /// Retired.
    pub retired: bool,
}

/// Folds one event of a reward's stream.
pub fn apply_reward(reward: &mut Reward, event: &DomainEvent) {
    match event {
        DomainEvent::RewardDefined(d) => {
            reward.reward_id = d.reward_id;
            reward.name = d.name.clone();
            reward.cost_points = d.cost_points;
            reward.stock = d.stock;
            reward.defined = true;
        }
        DomainEvent::RewardRetired(_) => reward.retired = true,
        DomainEvent::RewardClaimed(_) => reward.claimed += 1,
        _ => {}
    }
}
