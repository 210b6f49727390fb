//! Loyalty decisions: pure functions `(ledger state, programme, command or source event)
//! → events | rule error`. The policy's earning ([`earn`]), the tick's expiry and tier
//! re-evaluation ([`tick`]), and the service commands (enrol, leave, spend, redeem,
//! adjust, transfer). None reads the clock: the time of a decision is given.

use uuid::Uuid;

use super::config::{
    BonusTrigger, CapPeriod, DowngradePolicy, MultiplierScope, Programme, TierBasis,
};
use super::ledger::{BASE_RULE, Member, Reward};
use super::time;
use crate::domain::common::Channel;
use crate::domain::events::{
    DomainEvent, ExpiredLine, LedgerMerged, MemberEnrolled, MemberLeft, MovedLine, MovedSpend,
    PointsAdjusted, PointsCancelled, PointsEarned, PointsExpired, PointsSpent, PointsTransferred,
    PurchaseCompleted, PurchaseRefunded, RewardClaimed, TierChanged,
};
use crate::limits::{
    LOYALTY_MERGE_LINES_PER_EVENT, LOYALTY_MERGE_PART_BYTES, LOYALTY_MERGE_PARTS_MAX,
    LOYALTY_POINTS_MAX, REPEATED_ITEMS_MAX,
};

/// A loyalty rule refused a command. Each variant says how the edge answers it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// No programme is defined (yet) at that time: `FAILED_PRECONDITION`.
    #[error("no loyalty programme is defined")]
    NoProgramme,
    /// The customer is not an enrolled member: `NOT_FOUND`.
    #[error("customer {0} is not an enrolled member")]
    NotEnrolled(Uuid),
    /// The customer is already enrolled: `ALREADY_EXISTS`.
    #[error("customer {0} is already enrolled")]
    AlreadyEnrolled(Uuid),
    /// Not enough available points: `FAILED_PRECONDITION`.
    #[error("{requested} points requested but only {available} are available")]
    InsufficientPoints {
        /// Available points (less debt).
        available: i64,
        /// Points asked for.
        requested: u64,
    },
    /// Below the programme's minimum redemption: `FAILED_PRECONDITION`.
    #[error("{requested} points is below the minimum redemption of {minimum}")]
    BelowMinimum {
        /// The minimum.
        minimum: u64,
        /// Points asked for.
        requested: u64,
    },
    /// No such reward: `NOT_FOUND`.
    #[error("reward {0} is not in the catalogue")]
    UnknownReward(Uuid),
    /// The reward id is taken: `ALREADY_EXISTS`.
    #[error("reward {0} is already defined")]
    RewardExists(Uuid),
    /// The reward was retired: `FAILED_PRECONDITION`.
    #[error("reward {0} is retired")]
    RewardRetired(Uuid),
    /// The reward's stock is used up: `FAILED_PRECONDITION`.
    #[error("reward {0} is out of stock")]
    OutOfStock(Uuid),
}

/// A source event the policy considers.
#[derive(Clone, Copy, Debug)]
pub enum SourceKind<'a> {
    /// A purchase.
    Purchase(&'a PurchaseCompleted),
    /// A refund.
    Refund(&'a PurchaseRefunded),
    /// A custom event of this type.
    Custom(&'a str),
    /// The member's enrolment itself.
    Enrolment,
}

/// A source event with what the decision needs of its envelope.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// Its event id (the causation of what it earns).
    pub event_id: Uuid,
    /// Its log position.
    pub position: u64,
    /// Its business time.
    pub occurred_at_us: i64,
    /// What it is.
    pub kind: SourceKind<'a>,
}

/// Event id of what `source` earns under `rule`: BLAKE3 of both, as a version-8 UUID, so
/// a replayed or crashed policy proposes the same ids and the log's idempotency holds.
pub fn derived_event_id(source: Uuid, rule: &str) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rapport loyalty award");
    hasher.update(source.as_bytes());
    hasher.update(rule.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn clamp_points(value: i128) -> u64 {
    value.clamp(0, i128::from(LOYALTY_POINTS_MAX)) as u64
}

fn channel_matches(scope: &MultiplierScope, channel: Channel) -> bool {
    matches!(scope, MultiplierScope::Channel(c) if *c == channel)
}

/// The tier multiplier (percent) of a member at `at_us` under `programme`.
pub fn tier_percent(member: &Member, programme: &Programme, at_us: i64) -> u32 {
    let name = member.tier_at(at_us);
    programme
        .tier(name)
        .or_else(|| programme.tiers.first().map(|t| (0, t)))
        .map_or(100, |(_, t)| t.multiplier_percent)
}

/// Base points of a purchase (before the programme's base cap, which [`earn`] applies):
/// Σ line amount × line multiplier (largest matching
/// category / SKU multiplier), × the channel multiplier (largest matching) × the tier
/// multiplier, × points per unit ÷ minor units per unit, rounded down once for the
/// order. An order without lines earns on its total.
pub fn base_points(purchase: &PurchaseCompleted, programme: &Programme, tier_pct: u32) -> u64 {
    let line_pct = |category: &str, sku: &str| {
        programme
            .multipliers
            .iter()
            .filter(|m| match &m.scope {
                MultiplierScope::Category(c) => c == category,
                MultiplierScope::Sku(s) => s == sku,
                MultiplierScope::Channel(_) => false,
            })
            .map(|m| m.percent)
            .max()
            .unwrap_or(100)
    };
    let weighted: i128 = if purchase.lines.is_empty() {
        i128::from(purchase.total_minor) * 100
    } else {
        purchase
            .lines
            .iter()
            .map(|l| {
                i128::from(l.quantity)
                    * i128::from(l.unit_price_minor)
                    * i128::from(line_pct(&l.category, &l.sku))
            })
            .sum()
    };
    let channel_pct = programme
        .multipliers
        .iter()
        .filter(|m| channel_matches(&m.scope, purchase.channel))
        .map(|m| m.percent)
        .max()
        .unwrap_or(100);
    let numerator = weighted
        * i128::from(programme.points_per_unit)
        * i128::from(channel_pct)
        * i128::from(tier_pct);
    let denominator = i128::from(programme.minor_per_unit.max(1)) * 100 * 100 * 100;
    clamp_points(numerator / denominator)
}

fn same_period(a_us: i64, b_us: i64, period: CapPeriod) -> bool {
    let (ay, am, ad) = time::date_of(a_us);
    let (by, bm, bd) = time::date_of(b_us);
    match period {
        CapPeriod::Day => (ay, am, ad) == (by, bm, bd),
        CapPeriod::Month => (ay, am) == (by, bm),
        CapPeriod::Year => ay == by,
        CapPeriod::Lifetime => true,
    }
}

/// The points a source event earns (or cancels) for `member` under the programme in
/// force at its business time, each with the event id derived from (source, rule).
/// Nothing when the source was already accounted for, the member was not enrolled at
/// its position, or no programme was in force.
pub fn earn(
    member: &Member,
    programme: Option<&Programme>,
    source: &Source<'_>,
) -> Vec<(Uuid, DomainEvent)> {
    let Some(programme) = programme else {
        return Vec::new();
    };
    if member.sources.contains(&source.event_id) || !member.active_at_position(source.position) {
        return Vec::new();
    }
    let at = source.occurred_at_us;
    if member.enrolment.is_some_and(|e| e.at_us > at) {
        return Vec::new();
    }
    let customer_id = member.customer_id;
    let held_until = time::add_days(at, programme.holding_days);
    let expires = programme.lifetime.expires_at(at);
    let mut out = Vec::new();
    let bonus =
        |name: &str, points: u64, available_at_us: i64, out: &mut Vec<(Uuid, DomainEvent)>| {
            out.push((
                derived_event_id(source.event_id, name),
                DomainEvent::PointsEarned(PointsEarned {
                    customer_id,
                    rule: name.to_owned(),
                    points,
                    order_id: String::new(),
                    spend_minor: 0,
                    earned_at_us: at,
                    available_at_us,
                    expires_at_us: expires,
                    source_event_id: source.event_id,
                }),
            ));
        };
    let capped = |name: &str, cap: Option<super::config::Cap>| {
        cap.is_some_and(|cap| {
            let used = member
                .lines
                .iter()
                .filter(|l| l.rule == name && same_period(l.earned_at_us, at, cap.period))
                .count();
            used >= cap.count as usize
        })
    };
    match source.kind {
        SourceKind::Purchase(p) => {
            if !p.currency.eq_ignore_ascii_case(&programme.currency) {
                return Vec::new();
            }
            let first = !member
                .lines
                .iter()
                .any(|l| l.rule == BASE_RULE && !l.order_id.is_empty());
            let mut points = base_points(p, programme, tier_percent(member, programme, at));
            if let Some(cap) = programme.base_cap {
                // Base points of this period so far (less what refunds cancelled of them).
                let used: u64 = member
                    .lines
                    .iter()
                    .filter(|l| l.rule == BASE_RULE && same_period(l.earned_at_us, at, cap.period))
                    .map(|l| l.points.saturating_sub(l.refund_points))
                    .sum();
                points = points.min(cap.points.saturating_sub(used));
            }
            out.push((
                derived_event_id(source.event_id, BASE_RULE),
                DomainEvent::PointsEarned(PointsEarned {
                    customer_id,
                    rule: BASE_RULE.to_owned(),
                    points,
                    order_id: p.order_id.clone(),
                    spend_minor: p.total_minor,
                    earned_at_us: at,
                    available_at_us: held_until,
                    expires_at_us: expires,
                    source_event_id: source.event_id,
                }),
            ));
            for b in &programme.bonuses {
                if b.trigger == BonusTrigger::FirstPurchase && first && !capped(&b.name, b.cap) {
                    bonus(&b.name, b.points, held_until, &mut out);
                }
            }
        }
        SourceKind::Refund(r) => {
            if !r.currency.eq_ignore_ascii_case(&programme.currency) {
                return Vec::new();
            }
            if let Some(cancel) = cancellation(member, programme, r, at, source.event_id) {
                out.push((derived_event_id(source.event_id, "cancel"), cancel));
            }
        }
        SourceKind::Custom(event_type) => {
            for b in &programme.bonuses {
                if matches!(&b.trigger, BonusTrigger::CustomEvent(t) if t == event_type)
                    && !capped(&b.name, b.cap)
                {
                    bonus(&b.name, b.points, at, &mut out);
                }
            }
        }
        SourceKind::Enrolment => {
            for b in &programme.bonuses {
                if b.trigger == BonusTrigger::SignUp && !capped(&b.name, b.cap) {
                    bonus(&b.name, b.points, at, &mut out);
                }
            }
        }
    }
    out
}

/// The cancellation a refund causes: the order's points × (refunded so far ÷ order
/// total), less what earlier refunds of the order already accounted for; taken from the
/// order's remaining points, then the oldest other points, then owed as debt up to the
/// programme's limit, the rest forgiven.
fn cancellation(
    member: &Member,
    programme: &Programme,
    refund: &PurchaseRefunded,
    at: i64,
    source: Uuid,
) -> Option<DomainEvent> {
    let base = member
        .lines
        .iter()
        .find(|l| l.rule == BASE_RULE && l.order_id == refund.order_id)?;
    let before = base.refunded_minor;
    let total = (before.saturating_add(refund.amount_minor)).min(base.spend_minor);
    let refund_minor = (total - before).max(0);
    let target = if base.spend_minor > 0 {
        clamp_points(i128::from(base.points) * i128::from(total) / i128::from(base.spend_minor))
    } else {
        0
    };
    let cancel = target.saturating_sub(base.refund_points);
    if cancel == 0 && refund_minor == 0 {
        return None;
    }
    let on_order: u64 = member
        .lines
        .iter()
        .filter(|l| l.order_id == refund.order_id && l.live_at(at))
        .map(|l| l.remaining())
        .sum();
    let from_order = cancel.min(on_order);
    let short = cancel - from_order;
    let elsewhere: u64 = member
        .lines
        .iter()
        .filter(|l| l.order_id != refund.order_id && l.live_at(at))
        .map(|l| l.remaining())
        .sum();
    let from_other = short.min(elsewhere);
    let rest = short - from_other;
    let debt = rest.min(programme.debt_max_points.saturating_sub(member.debt));
    Some(DomainEvent::PointsCancelled(PointsCancelled {
        customer_id: member.customer_id,
        order_id: refund.order_id.clone(),
        points: from_order + from_other,
        debt_points: debt,
        forgiven_points: rest - debt,
        refund_minor,
        source_event_id: source,
    }))
}

/// The qualifying amount over the rolling window ending at `at_us`.
pub fn qualifying(member: &Member, programme: &Programme, at_us: i64) -> i64 {
    let start = time::months_before(at_us, programme.tier_window_months);
    let within = |t: i64| t > start && t <= at_us;
    match programme.tier_basis {
        TierBasis::PointsEarned => member
            .lines
            .iter()
            .filter(|l| l.source_event_id.is_some() && within(l.earned_at_us))
            .map(|l| l.points.saturating_sub(l.refund_points) as i64)
            .sum(),
        TierBasis::Spend => member
            .spend
            .iter()
            .filter(|(t, _)| within(*t))
            .map(|(_, m)| *m)
            .sum(),
    }
}

/// A member's birthday, (month, day): all the decisions see of their birth date, read by
/// the caller from the customer's sealed registration.
pub type Birthday = (u32, u32);

/// The source id of `customer`'s birthday bonus of `year` (what makes it once a year).
pub fn birthday_source(customer: Uuid, year: i64) -> Uuid {
    derived_event_id(customer, &format!("birthday {year}"))
}

/// The birthday bonuses due for `member` at `at_us`: this year's birthday has begun, the
/// member was enrolled by then, and this year's award (of each birthday bonus) is not in
/// the ledger yet. A year whose birthday passed while no tick ran is awarded late, within
/// the same year; earlier years are not.
fn birthday_awards(
    member: &Member,
    programme: &Programme,
    at_us: i64,
    birthday: Option<Birthday>,
) -> Vec<DomainEvent> {
    let Some((month, day)) = birthday else {
        return Vec::new();
    };
    let (year, _, _) = time::date_of(at_us);
    if !(1..=12).contains(&month) || day == 0 {
        return Vec::new();
    }
    let day = day.min(time::days_in_month(year, month));
    let begins = time::midnight(year, month, day);
    if at_us < begins || member.enrolment.is_none_or(|e| e.at_us > begins) {
        return Vec::new();
    }
    let source = birthday_source(member.customer_id, year);
    let mut out = Vec::new();
    for b in &programme.bonuses {
        if b.trigger != BonusTrigger::Birthday {
            continue;
        }
        let awarded = member
            .lines
            .iter()
            .any(|l| l.rule == b.name && l.source_event_id == Some(source));
        let capped = b.cap.is_some_and(|cap| {
            member
                .lines
                .iter()
                .filter(|l| l.rule == b.name && same_period(l.earned_at_us, begins, cap.period))
                .count()
                >= cap.count as usize
        });
        if awarded || capped {
            continue;
        }
        out.push(DomainEvent::PointsEarned(PointsEarned {
            customer_id: member.customer_id,
            rule: b.name.clone(),
            points: b.points,
            order_id: String::new(),
            spend_minor: 0,
            earned_at_us: begins,
            available_at_us: begins,
            expires_at_us: programme.lifetime.expires_at(begins),
            source_event_id: source,
        }));
    }
    out
}

/// What the time tick appends for `member` at `at_us`: expiry of every lapsed line
/// still holding points, the birthday bonus when `birthday` (month, day) has come, and a
/// tier change when the window says so (upgrades at once; downgrades per the programme's
/// policy).
pub fn tick(
    member: &Member,
    programme: Option<&Programme>,
    at_us: i64,
    birthday: Option<Birthday>,
) -> Vec<DomainEvent> {
    let mut out = Vec::new();
    if !member.is_active() {
        return out;
    }
    let lapsed: Vec<ExpiredLine> = member
        .lines
        .iter()
        .filter(|l| l.remaining() > 0 && !l.live_at(at_us))
        .map(|l| ExpiredLine {
            line_id: l.line_id,
            points: l.remaining(),
        })
        .collect();
    for chunk in lapsed.chunks(REPEATED_ITEMS_MAX) {
        out.push(DomainEvent::PointsExpired(PointsExpired {
            customer_id: member.customer_id,
            lines: chunk.to_vec(),
            as_of_us: at_us,
        }));
    }
    let Some(programme) = programme else {
        return out;
    };
    out.extend(birthday_awards(member, programme, at_us, birthday));
    if programme.tiers.is_empty() {
        return out;
    }
    let current_name = if member.tier.is_empty() {
        programme.base_tier()
    } else {
        member.tier.as_str()
    };
    let current = programme.tier(current_name).map(|(i, _)| i);
    let q = qualifying(member, programme, at_us);
    let Some((target, _)) = programme.tier_for(q) else {
        return out;
    };
    let decided = match current {
        // A tier the programme no longer has: re-placed by the window.
        None => Some((target, q)),
        Some(cur) if target > cur => Some((target, q)),
        Some(cur) if target < cur => match programme.downgrade {
            DowngradePolicy::Never => None,
            DowngradePolicy::WindowDrop => Some((target, q)),
            DowngradePolicy::PeriodEnd => {
                let period_start = time::start_of_year(at_us);
                let last_change = member
                    .tier_history
                    .last()
                    .map(|(t, _)| *t)
                    .or(member.enrolment.map(|e| e.at_us))
                    .unwrap_or(i64::MIN);
                if last_change < period_start {
                    let q_end = qualifying(member, programme, period_start);
                    programme
                        .tier_for(q_end)
                        .filter(|(i, _)| *i < cur)
                        .map(|(i, _)| (i, q_end))
                } else {
                    None
                }
            }
        },
        Some(_) => None,
    };
    if let Some((index, q)) = decided {
        let to = programme.tiers[index].name.clone();
        if to != member.tier {
            out.push(DomainEvent::TierChanged(TierChanged {
                customer_id: member.customer_id,
                from_tier: member.tier.clone(),
                to_tier: to,
                qualifying: q,
                as_of_us: at_us,
            }));
        }
    }
    out
}

/// Enrols a customer.
pub fn enrol(member: &Member, channel: Channel) -> Result<Vec<DomainEvent>, RuleError> {
    if member.is_active() {
        return Err(RuleError::AlreadyEnrolled(member.customer_id));
    }
    Ok(vec![DomainEvent::MemberEnrolled(MemberEnrolled {
        customer_id: member.customer_id,
        channel,
    })])
}

/// A member leaves; every remaining point is forfeited.
pub fn leave(member: &Member, reason: &str) -> Result<Vec<DomainEvent>, RuleError> {
    if !member.is_active() {
        return Err(RuleError::NotEnrolled(member.customer_id));
    }
    Ok(vec![DomainEvent::MemberLeft(MemberLeft {
        customer_id: member.customer_id,
        forfeited_points: member.remaining(),
        reason: reason.to_owned(),
    })])
}

fn check_spend(
    member: &Member,
    programme: &Programme,
    points: u64,
    at_us: i64,
) -> Result<(), RuleError> {
    if !member.is_active() {
        return Err(RuleError::NotEnrolled(member.customer_id));
    }
    if points < programme.min_redemption_points.max(1) {
        return Err(RuleError::BelowMinimum {
            minimum: programme.min_redemption_points.max(1),
            requested: points,
        });
    }
    let available = member.balance(at_us).available;
    if i128::from(available) < i128::from(points) {
        return Err(RuleError::InsufficientPoints {
            available,
            requested: points,
        });
    }
    Ok(())
}

/// Spends points at `at_us` (oldest available first).
pub fn spend(
    member: &Member,
    programme: Option<&Programme>,
    points: u64,
    reason: &str,
    redemption_id: Uuid,
    at_us: i64,
) -> Result<Vec<DomainEvent>, RuleError> {
    let programme = programme.ok_or(RuleError::NoProgramme)?;
    check_spend(member, programme, points, at_us)?;
    Ok(vec![DomainEvent::PointsSpent(PointsSpent {
        customer_id: member.customer_id,
        points,
        reason: reason.to_owned(),
        reward_id: None,
        redemption_id,
    })])
}

/// Redeems a reward: the member's `PointsSpent` and, for a reward with limited stock,
/// a `RewardClaimed` for the reward's stream (second element).
pub fn redeem(
    member: &Member,
    programme: Option<&Programme>,
    reward: &Reward,
    reward_id: Uuid,
    redemption_id: Uuid,
    at_us: i64,
) -> Result<(DomainEvent, Option<DomainEvent>), RuleError> {
    let programme = programme.ok_or(RuleError::NoProgramme)?;
    if !reward.defined {
        return Err(RuleError::UnknownReward(reward_id));
    }
    if reward.retired {
        return Err(RuleError::RewardRetired(reward_id));
    }
    if reward.stock.is_some_and(|s| reward.claimed >= s) {
        return Err(RuleError::OutOfStock(reward_id));
    }
    check_spend(member, programme, reward.cost_points, at_us)?;
    let spent = DomainEvent::PointsSpent(PointsSpent {
        customer_id: member.customer_id,
        points: reward.cost_points,
        reason: reward.name.clone(),
        reward_id: Some(reward_id),
        redemption_id,
    });
    let claim = reward.stock.map(|_| {
        DomainEvent::RewardClaimed(RewardClaimed {
            reward_id,
            customer_id: member.customer_id,
            redemption_id,
        })
    });
    Ok((spent, claim))
}

/// A manual adjustment: a removal may not take the balance below zero.
pub fn adjust(
    member: &Member,
    points: i64,
    reason: &str,
    expires_at_us: Option<i64>,
    at_us: i64,
) -> Result<Vec<DomainEvent>, RuleError> {
    if !member.is_active() {
        return Err(RuleError::NotEnrolled(member.customer_id));
    }
    if points < 0 {
        let available = member.balance(at_us).available;
        if i128::from(available) < i128::from(points.unsigned_abs()) {
            return Err(RuleError::InsufficientPoints {
                available,
                requested: points.unsigned_abs(),
            });
        }
    }
    Ok(vec![DomainEvent::PointsAdjusted(PointsAdjusted {
        customer_id: member.customer_id,
        points,
        reason: reason.to_owned(),
        expires_at_us,
    })])
}

/// A transfer between two members (the same event goes to both streams).
pub fn transfer(
    from: &Member,
    to: &Member,
    points: u64,
    transfer_id: Uuid,
    at_us: i64,
) -> Result<DomainEvent, RuleError> {
    if !from.is_active() {
        return Err(RuleError::NotEnrolled(from.customer_id));
    }
    if !to.is_active() {
        return Err(RuleError::NotEnrolled(to.customer_id));
    }
    let available = from.balance(at_us).available;
    if points == 0 || i128::from(available) < i128::from(points) {
        return Err(RuleError::InsufficientPoints {
            available,
            requested: points,
        });
    }
    Ok(DomainEvent::PointsTransferred(PointsTransferred {
        from_customer_id: from.customer_id,
        to_customer_id: to.customer_id,
        points,
        transfer_id,
        expires_at_us: from.earliest_expiry_of_spend(points, at_us),
    }))
}

/// A duplicate's ledger is too large to move in one atomic append (see
/// [`LOYALTY_MERGE_PARTS_MAX`]); the policy logs it and leaves the ledger in place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the ledger of {duplicate} has {lines} lines: too many to move in one append")]
pub struct MergeTooLarge {
    /// The duplicate.
    pub duplicate: Uuid,
    /// Its lines that would move.
    pub lines: usize,
}

/// The ledger move a merge of `duplicate` into `survivor` causes (the merge event is
/// `merge_event_id`, under `programme`, the version in force at the merge): nothing when
/// the duplicate is not an enrolled member (never enrolled, left, or already moved); else
/// the parts of one `LedgerMerged`, for both member streams. Every line with points left
/// moves, and every earned line (its order may still be refunded, its points count for
/// tiers); spent-out manual credits stay. The duplicate's debt moves as far as the
/// programme's debt limit allows on top of the survivor's; the rest is forgiven.
pub fn merge_ledger(
    duplicate: &Member,
    survivor: &Member,
    programme: Option<&Programme>,
    merge_event_id: Uuid,
) -> Result<Vec<LedgerMerged>, MergeTooLarge> {
    let survivor_id = survivor.customer_id;
    if duplicate.customer_id == survivor_id
        || duplicate.merged_into.is_some()
        || !duplicate.is_active()
    {
        return Ok(Vec::new());
    }
    let lines: Vec<MovedLine> = duplicate
        .lines
        .iter()
        .filter(|l| l.remaining() > 0 || l.source_event_id.is_some())
        .map(|l| MovedLine {
            line_id: l.line_id,
            position: l.position,
            rule: l.rule.clone(),
            order_id: l.order_id.clone(),
            source_event_id: l.source_event_id,
            points: l.points,
            spent: l.spent,
            expired: l.expired,
            cancelled: l.cancelled,
            forfeited: l.forfeited,
            recovered: l.recovered,
            spend_minor: l.spend_minor,
            earned_at_us: l.earned_at_us,
            available_at_us: l.available_at_us,
            expires_at_us: l.expires_at_us,
            refunded_minor: l.refunded_minor,
            refund_points: l.refund_points,
        })
        .collect();
    let line_count = lines.len();
    // Parts cut by count and by size: a line's fixed fields take at most ~160 bytes of
    // bincode (17-byte ids, 9-byte varints), so 192 plus its strings bounds it.
    let mut line_parts: Vec<Vec<MovedLine>> = vec![Vec::new()];
    let mut bytes = 0;
    for line in lines {
        let size = 192 + line.rule.len() + line.order_id.len();
        let current = line_parts.last_mut().expect("starts with one part");
        if !current.is_empty()
            && (current.len() >= LOYALTY_MERGE_LINES_PER_EVENT
                || bytes + size > LOYALTY_MERGE_PART_BYTES)
        {
            line_parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        line_parts.last_mut().expect("not empty").push(line);
    }
    let spend: Vec<MovedSpend> = duplicate
        .spend
        .iter()
        .map(|(at_us, minor)| MovedSpend {
            at_us: *at_us,
            minor: *minor,
        })
        .collect();
    let spend_parts: Vec<&[MovedSpend]> = spend.chunks(LOYALTY_MERGE_LINES_PER_EVENT).collect();
    let parts = line_parts.len().max(spend_parts.len());
    if parts > LOYALTY_MERGE_PARTS_MAX {
        return Err(MergeTooLarge {
            duplicate: duplicate.customer_id,
            lines: line_count,
        });
    }
    let Some(enrolment) = duplicate.enrolment else {
        return Ok(Vec::new());
    };
    let debt_room = programme
        .map_or(0, |p| p.debt_max_points)
        .saturating_sub(survivor.debt);
    let debt_moved = duplicate.debt.min(debt_room);
    let mut line_parts = line_parts.into_iter();
    Ok((0..parts)
        .map(|part| {
            let first = part == 0;
            LedgerMerged {
                duplicate_id: duplicate.customer_id,
                survivor_id,
                merge_event_id,
                part: part as u32,
                parts: parts as u32,
                lines: line_parts.next().unwrap_or_default(),
                spend: spend_parts.get(part).map_or_else(Vec::new, |s| s.to_vec()),
                debt_points: if first { debt_moved } else { 0 },
                debt_forgiven_points: if first {
                    duplicate.debt - debt_moved
                } else {
                    0
                },
                enrolled_at_us: enrolment.at_us,
                channel: enrolment.channel,
                tier: duplicate.tier.clone(),
            }
        })
        .collect())
}
