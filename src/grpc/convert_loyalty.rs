//! Proto ⇄ domain conversion of the loyalty events and the programme configuration
//! (issue 5), called from [`super::convert`]'s event arms and by the Loyalty service.

use uuid::Uuid;

use super::convert::{channel_from, channel_to, timestamp_from_us, timestamp_to_us, uuid_field};
use super::pb;
use crate::domain::Violations;
use crate::domain::common::Channel;
use crate::domain::events::{
    ExpiredLine, LedgerMerged, MemberEnrolled, MemberLeft, MovedLine, MovedSpend, PointsAdjusted,
    PointsCancelled, PointsEarned, PointsExpired, PointsSpent, PointsTransferred, ProgrammeChanged,
    ProgrammeDefined, RewardClaimed, RewardDefined, RewardRetired, TierChanged,
};
use crate::domain::loyalty::config::{
    Bonus, BonusTrigger, Cap, CapPeriod, DowngradePolicy, Multiplier, MultiplierScope, PointsCap,
    PointsLifetime, Programme, Tier, TierBasis,
};

fn time_from(field: &str, ts: Option<prost_types::Timestamp>, v: &mut Violations) -> i64 {
    ts.and_then(|ts| timestamp_to_us(field, &ts, v))
        .unwrap_or(0)
}

fn optional_time_from(
    field: &str,
    ts: Option<prost_types::Timestamp>,
    v: &mut Violations,
) -> Option<i64> {
    ts.and_then(|ts| timestamp_to_us(field, &ts, v))
}

fn optional_uuid(field: &str, text: &str, v: &mut Violations) -> Option<Uuid> {
    (!text.is_empty()).then(|| uuid_field(field, text, v))
}

/// Proto programme → domain, problems under `f`.
pub fn programme_from(f: &str, p: pb::LoyaltyProgramme, v: &mut Violations) -> Programme {
    let pb::LoyaltyProgramme {
        name,
        currency,
        points_per_unit,
        minor_per_unit,
        multipliers,
        bonuses,
        lifetime,
        lifetime_days,
        holding_days,
        min_redemption_points,
        debt_max_points,
        tiers,
        tier_basis,
        tier_window_months,
        downgrade,
        base_cap_points,
        base_cap_period,
    } = p;
    let multipliers = multipliers
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{f}.multipliers[{i}]");
            let pb::LoyaltyMultiplier {
                category,
                sku,
                channel,
                percent,
            } = m;
            let channel = channel_from(&format!("{at}.channel"), channel, v);
            let set = usize::from(!category.is_empty())
                + usize::from(!sku.is_empty())
                + usize::from(channel != Channel::Unspecified);
            if set != 1 {
                v.add(&at, "set exactly one of category, sku, channel");
            }
            let scope = if !category.is_empty() {
                MultiplierScope::Category(category)
            } else if !sku.is_empty() {
                MultiplierScope::Sku(sku)
            } else {
                MultiplierScope::Channel(channel)
            };
            Multiplier { scope, percent }
        })
        .collect();
    let bonuses = bonuses
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let at = format!("{f}.bonuses[{i}]");
            let pb::LoyaltyBonus {
                name,
                trigger,
                custom_event_type,
                points,
                cap_count,
                cap_period,
            } = b;
            let trigger = match pb::BonusTrigger::try_from(trigger) {
                Ok(pb::BonusTrigger::FirstPurchase) => BonusTrigger::FirstPurchase,
                Ok(pb::BonusTrigger::SignUp) => BonusTrigger::SignUp,
                Ok(pb::BonusTrigger::CustomEvent) => BonusTrigger::CustomEvent(custom_event_type),
                Ok(pb::BonusTrigger::Birthday) => BonusTrigger::Birthday,
                _ => {
                    v.add(&format!("{at}.trigger"), "must be set");
                    BonusTrigger::SignUp
                }
            };
            let cap = (cap_count > 0).then(|| Cap {
                count: cap_count,
                period: cap_period_from(&format!("{at}.cap_period"), "cap_count", cap_period, v),
            });
            Bonus {
                name,
                trigger,
                points,
                cap,
            }
        })
        .collect();
    let lifetime = match pb::PointsLifetimeKind::try_from(lifetime) {
        Ok(pb::PointsLifetimeKind::Days) => PointsLifetime::Days(lifetime_days),
        Ok(pb::PointsLifetimeKind::EndOfMonth) => {
            PointsLifetime::EndOfMonthAfterDays(lifetime_days)
        }
        Ok(pb::PointsLifetimeKind::EndOfYear) => PointsLifetime::EndOfYearAfterDays(lifetime_days),
        Ok(pb::PointsLifetimeKind::Never | pb::PointsLifetimeKind::Unspecified) => {
            PointsLifetime::Never
        }
        Err(_) => {
            v.add(
                &format!("{f}.lifetime"),
                format!("{lifetime} is not a PointsLifetimeKind"),
            );
            PointsLifetime::Never
        }
    };
    let tier_basis = match pb::TierBasis::try_from(tier_basis) {
        Ok(pb::TierBasis::Spend) => TierBasis::Spend,
        Ok(pb::TierBasis::PointsEarned | pb::TierBasis::Unspecified) => TierBasis::PointsEarned,
        Err(_) => {
            v.add(&format!("{f}.tier_basis"), "is not a TierBasis");
            TierBasis::PointsEarned
        }
    };
    let downgrade = match pb::DowngradePolicy::try_from(downgrade) {
        Ok(pb::DowngradePolicy::PeriodEnd) => DowngradePolicy::PeriodEnd,
        Ok(pb::DowngradePolicy::WindowDrop) => DowngradePolicy::WindowDrop,
        Ok(pb::DowngradePolicy::Never | pb::DowngradePolicy::Unspecified) => DowngradePolicy::Never,
        Err(_) => {
            v.add(&format!("{f}.downgrade"), "is not a DowngradePolicy");
            DowngradePolicy::Never
        }
    };
    Programme {
        name,
        currency,
        points_per_unit,
        minor_per_unit,
        multipliers,
        bonuses,
        lifetime,
        holding_days,
        min_redemption_points,
        debt_max_points,
        tiers: tiers
            .into_iter()
            .map(|t| Tier {
                name: t.name,
                threshold: t.threshold,
                multiplier_percent: t.multiplier_percent,
            })
            .collect(),
        tier_basis,
        tier_window_months,
        downgrade,
        base_cap: (base_cap_points > 0).then(|| PointsCap {
            points: base_cap_points,
            period: cap_period_from(
                &format!("{f}.base_cap_period"),
                "base_cap_points",
                base_cap_period,
                v,
            ),
        }),
    }
}

fn cap_period_from(field: &str, with: &str, period: i32, v: &mut Violations) -> CapPeriod {
    match pb::CapPeriod::try_from(period) {
        Ok(pb::CapPeriod::Day) => CapPeriod::Day,
        Ok(pb::CapPeriod::Month) => CapPeriod::Month,
        Ok(pb::CapPeriod::Year) => CapPeriod::Year,
        Ok(pb::CapPeriod::Lifetime) => CapPeriod::Lifetime,
        _ => {
            v.add(field, format!("must be set with {with}"));
            CapPeriod::Lifetime
        }
    }
}

fn cap_period_to(period: CapPeriod) -> pb::CapPeriod {
    match period {
        CapPeriod::Day => pb::CapPeriod::Day,
        CapPeriod::Month => pb::CapPeriod::Month,
        CapPeriod::Year => pb::CapPeriod::Year,
        CapPeriod::Lifetime => pb::CapPeriod::Lifetime,
    }
}

/// Domain programme → proto.
pub fn programme_to(p: Programme) -> pb::LoyaltyProgramme {
    let (lifetime, lifetime_days) = match p.lifetime {
        PointsLifetime::Never => (pb::PointsLifetimeKind::Never, 0),
        PointsLifetime::Days(n) => (pb::PointsLifetimeKind::Days, n),
        PointsLifetime::EndOfMonthAfterDays(n) => (pb::PointsLifetimeKind::EndOfMonth, n),
        PointsLifetime::EndOfYearAfterDays(n) => (pb::PointsLifetimeKind::EndOfYear, n),
    };
    pb::LoyaltyProgramme {
        name: p.name,
        currency: p.currency,
        points_per_unit: p.points_per_unit,
        minor_per_unit: p.minor_per_unit,
        multipliers: p
            .multipliers
            .into_iter()
            .map(|m| {
                let mut out = pb::LoyaltyMultiplier {
                    percent: m.percent,
                    ..Default::default()
                };
                match m.scope {
                    MultiplierScope::Category(c) => out.category = c,
                    MultiplierScope::Sku(s) => out.sku = s,
                    MultiplierScope::Channel(c) => out.channel = channel_to(c),
                }
                out
            })
            .collect(),
        bonuses: p
            .bonuses
            .into_iter()
            .map(|b| {
                let (trigger, custom_event_type) = match b.trigger {
                    BonusTrigger::FirstPurchase => (pb::BonusTrigger::FirstPurchase, String::new()),
                    BonusTrigger::SignUp => (pb::BonusTrigger::SignUp, String::new()),
                    BonusTrigger::CustomEvent(t) => (pb::BonusTrigger::CustomEvent, t),
                    BonusTrigger::Birthday => (pb::BonusTrigger::Birthday, String::new()),
                };
                pb::LoyaltyBonus {
                    name: b.name,
                    trigger: trigger as i32,
                    custom_event_type,
                    points: b.points,
                    cap_count: b.cap.map_or(0, |c| c.count),
                    cap_period: b
                        .cap
                        .map_or(pb::CapPeriod::Unspecified, |c| cap_period_to(c.period))
                        as i32,
                }
            })
            .collect(),
        lifetime: lifetime as i32,
        lifetime_days,
        holding_days: p.holding_days,
        min_redemption_points: p.min_redemption_points,
        debt_max_points: p.debt_max_points,
        tiers: p
            .tiers
            .into_iter()
            .map(|t| pb::LoyaltyTier {
                name: t.name,
                threshold: t.threshold,
                multiplier_percent: t.multiplier_percent,
            })
            .collect(),
        tier_basis: match p.tier_basis {
            TierBasis::PointsEarned => pb::TierBasis::PointsEarned,
            TierBasis::Spend => pb::TierBasis::Spend,
        } as i32,
        tier_window_months: p.tier_window_months,
        downgrade: match p.downgrade {
            DowngradePolicy::Never => pb::DowngradePolicy::Never,
            DowngradePolicy::PeriodEnd => pb::DowngradePolicy::PeriodEnd,
            DowngradePolicy::WindowDrop => pb::DowngradePolicy::WindowDrop,
        } as i32,
        base_cap_points: p.base_cap.map_or(0, |c| c.points),
        base_cap_period: p
            .base_cap
            .map_or(pb::CapPeriod::Unspecified, |c| cap_period_to(c.period))
            as i32,
    }
}

/// `ProgrammeDefined` from proto.
pub fn programme_defined_from(e: pb::ProgrammeDefined, v: &mut Violations) -> ProgrammeDefined {
    ProgrammeDefined {
        programme: programme_from(
            "programme_defined.programme",
            e.programme.unwrap_or_default(),
            v,
        ),
    }
}

/// `ProgrammeDefined` to proto.
pub fn programme_defined_to(e: ProgrammeDefined) -> pb::ProgrammeDefined {
    pb::ProgrammeDefined {
        programme: Some(programme_to(e.programme)),
    }
}

/// `ProgrammeChanged` from proto.
pub fn programme_changed_from(e: pb::ProgrammeChanged, v: &mut Violations) -> ProgrammeChanged {
    ProgrammeChanged {
        programme: programme_from(
            "programme_changed.programme",
            e.programme.unwrap_or_default(),
            v,
        ),
    }
}

/// `ProgrammeChanged` to proto.
pub fn programme_changed_to(e: ProgrammeChanged) -> pb::ProgrammeChanged {
    pb::ProgrammeChanged {
        programme: Some(programme_to(e.programme)),
    }
}

/// `RewardDefined` from proto.
pub fn reward_defined_from(e: pb::RewardDefined, v: &mut Violations) -> RewardDefined {
    let pb::RewardDefined {
        reward_id,
        name,
        cost_points,
        stock,
    } = e;
    RewardDefined {
        reward_id: uuid_field("reward_defined.reward_id", &reward_id, v),
        name,
        cost_points,
        stock,
    }
}

/// `RewardDefined` to proto.
pub fn reward_defined_to(e: RewardDefined) -> pb::RewardDefined {
    pb::RewardDefined {
        reward_id: e.reward_id.to_string(),
        name: e.name,
        cost_points: e.cost_points,
        stock: e.stock,
    }
}

/// `RewardRetired` from proto.
pub fn reward_retired_from(e: pb::RewardRetired, v: &mut Violations) -> RewardRetired {
    RewardRetired {
        reward_id: uuid_field("reward_retired.reward_id", &e.reward_id, v),
    }
}

/// `RewardRetired` to proto.
pub fn reward_retired_to(e: RewardRetired) -> pb::RewardRetired {
    pb::RewardRetired {
        reward_id: e.reward_id.to_string(),
    }
}

/// `RewardClaimed` from proto.
pub fn reward_claimed_from(e: pb::RewardClaimed, v: &mut Violations) -> RewardClaimed {
    let f = "reward_claimed";
    RewardClaimed {
        reward_id: uuid_field(&format!("{f}.reward_id"), &e.reward_id, v),
        customer_id: uuid_field(&format!("{f}.customer_id"), &e.customer_id, v),
        redemption_id: uuid_field(&format!("{f}.redemption_id"), &e.redemption_id, v),
    }
}

/// `RewardClaimed` to proto.
pub fn reward_claimed_to(e: RewardClaimed) -> pb::RewardClaimed {
    pb::RewardClaimed {
        reward_id: e.reward_id.to_string(),
        customer_id: e.customer_id.to_string(),
        redemption_id: e.redemption_id.to_string(),
    }
}

/// `MemberEnrolled` from proto.
pub fn member_enrolled_from(e: pb::MemberEnrolled, v: &mut Violations) -> MemberEnrolled {
    MemberEnrolled {
        customer_id: uuid_field("member_enrolled.customer_id", &e.customer_id, v),
        channel: channel_from("member_enrolled.channel", e.channel, v),
    }
}

/// `MemberEnrolled` to proto.
pub fn member_enrolled_to(e: MemberEnrolled) -> pb::MemberEnrolled {
    pb::MemberEnrolled {
        customer_id: e.customer_id.to_string(),
        channel: channel_to(e.channel),
    }
}

/// `MemberLeft` from proto.
pub fn member_left_from(e: pb::MemberLeft, v: &mut Violations) -> MemberLeft {
    MemberLeft {
        customer_id: uuid_field("member_left.customer_id", &e.customer_id, v),
        forfeited_points: e.forfeited_points,
        reason: e.reason,
    }
}

/// `MemberLeft` to proto.
pub fn member_left_to(e: MemberLeft) -> pb::MemberLeft {
    pb::MemberLeft {
        customer_id: e.customer_id.to_string(),
        forfeited_points: e.forfeited_points,
        reason: e.reason,
    }
}

/// `TierChanged` from proto.
pub fn tier_changed_from(e: pb::TierChanged, v: &mut Violations) -> TierChanged {
    TierChanged {
        customer_id: uuid_field("tier_changed.customer_id", &e.customer_id, v),
        from_tier: e.from_tier,
        to_tier: e.to_tier,
        qualifying: e.qualifying,
        as_of_us: time_from("tier_changed.as_of", e.as_of, v),
    }
}

/// `TierChanged` to proto.
pub fn tier_changed_to(e: TierChanged) -> pb::TierChanged {
    pb::TierChanged {
        customer_id: e.customer_id.to_string(),
        from_tier: e.from_tier,
        to_tier: e.to_tier,
        qualifying: e.qualifying,
        as_of: Some(timestamp_from_us(e.as_of_us)),
    }
}

/// `PointsEarned` from proto.
pub fn points_earned_from(e: pb::PointsEarned, v: &mut Violations) -> PointsEarned {
    let f = "points_earned";
    PointsEarned {
        customer_id: uuid_field(&format!("{f}.customer_id"), &e.customer_id, v),
        rule: e.rule,
        points: e.points,
        order_id: e.order_id,
        spend_minor: e.spend_minor,
        earned_at_us: time_from(&format!("{f}.earned_at"), e.earned_at, v),
        available_at_us: time_from(&format!("{f}.available_at"), e.available_at, v),
        expires_at_us: optional_time_from(&format!("{f}.expires_at"), e.expires_at, v),
        source_event_id: uuid_field(&format!("{f}.source_event_id"), &e.source_event_id, v),
    }
}

/// `PointsEarned` to proto.
pub fn points_earned_to(e: PointsEarned) -> pb::PointsEarned {
    pb::PointsEarned {
        customer_id: e.customer_id.to_string(),
        rule: e.rule,
        points: e.points,
        order_id: e.order_id,
        spend_minor: e.spend_minor,
        earned_at: Some(timestamp_from_us(e.earned_at_us)),
        available_at: Some(timestamp_from_us(e.available_at_us)),
        expires_at: e.expires_at_us.map(timestamp_from_us),
        source_event_id: e.source_event_id.to_string(),
    }
}

/// `PointsCancelled` from proto.
pub fn points_cancelled_from(e: pb::PointsCancelled, v: &mut Violations) -> PointsCancelled {
    let f = "points_cancelled";
    PointsCancelled {
        customer_id: uuid_field(&format!("{f}.customer_id"), &e.customer_id, v),
        order_id: e.order_id,
        points: e.points,
        debt_points: e.debt_points,
        forgiven_points: e.forgiven_points,
        refund_minor: e.refund_minor,
        source_event_id: uuid_field(&format!("{f}.source_event_id"), &e.source_event_id, v),
    }
}

/// `PointsCancelled` to proto.
pub fn points_cancelled_to(e: PointsCancelled) -> pb::PointsCancelled {
    pb::PointsCancelled {
        customer_id: e.customer_id.to_string(),
        order_id: e.order_id,
        points: e.points,
        debt_points: e.debt_points,
        forgiven_points: e.forgiven_points,
        refund_minor: e.refund_minor,
        source_event_id: e.source_event_id.to_string(),
    }
}

/// `PointsSpent` from proto.
pub fn points_spent_from(e: pb::PointsSpent, v: &mut Violations) -> PointsSpent {
    let f = "points_spent";
    PointsSpent {
        customer_id: uuid_field(&format!("{f}.customer_id"), &e.customer_id, v),
        points: e.points,
        reason: e.reason,
        reward_id: optional_uuid(&format!("{f}.reward_id"), &e.reward_id, v),
        redemption_id: uuid_field(&format!("{f}.redemption_id"), &e.redemption_id, v),
    }
}

/// `PointsSpent` to proto.
pub fn points_spent_to(e: PointsSpent) -> pb::PointsSpent {
    pb::PointsSpent {
        customer_id: e.customer_id.to_string(),
        points: e.points,
        reason: e.reason,
        reward_id: e.reward_id.map(|r| r.to_string()).unwrap_or_default(),
        redemption_id: e.redemption_id.to_string(),
    }
}

/// `PointsExpired` from proto.
pub fn points_expired_from(e: pb::PointsExpired, v: &mut Violations) -> PointsExpired {
    let f = "points_expired";
    PointsExpired {
        customer_id: uuid_field(&format!("{f}.customer_id"), &e.customer_id, v),
        lines: e
            .lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| ExpiredLine {
                line_id: uuid_field(&format!("{f}.lines[{i}].line_id"), &l.line_id, v),
                points: l.points,
            })
            .collect(),
        as_of_us: time_from(&format!("{f}.as_of"), e.as_of, v),
    }
}

/// `PointsExpired` to proto.
pub fn points_expired_to(e: PointsExpired) -> pb::PointsExpired {
    pb::PointsExpired {
        customer_id: e.customer_id.to_string(),
        lines: e
            .lines
            .into_iter()
            .map(|l| pb::ExpiredLine {
                line_id: l.line_id.to_string(),
                points: l.points,
            })
            .collect(),
        as_of: Some(timestamp_from_us(e.as_of_us)),
    }
}

/// `PointsAdjusted` from proto.
pub fn points_adjusted_from(e: pb::PointsAdjusted, v: &mut Violations) -> PointsAdjusted {
    PointsAdjusted {
        customer_id: uuid_field("points_adjusted.customer_id", &e.customer_id, v),
        points: e.points,
        reason: e.reason,
        expires_at_us: optional_time_from("points_adjusted.expires_at", e.expires_at, v),
    }
}

/// `PointsAdjusted` to proto.
pub fn points_adjusted_to(e: PointsAdjusted) -> pb::PointsAdjusted {
    pb::PointsAdjusted {
        customer_id: e.customer_id.to_string(),
        points: e.points,
        reason: e.reason,
        expires_at: e.expires_at_us.map(timestamp_from_us),
    }
}

/// `PointsTransferred` from proto.
pub fn points_transferred_from(e: pb::PointsTransferred, v: &mut Violations) -> PointsTransferred {
    let f = "points_transferred";
    PointsTransferred {
        from_customer_id: uuid_field(&format!("{f}.from_customer_id"), &e.from_customer_id, v),
        to_customer_id: uuid_field(&format!("{f}.to_customer_id"), &e.to_customer_id, v),
        points: e.points,
        transfer_id: uuid_field(&format!("{f}.transfer_id"), &e.transfer_id, v),
        expires_at_us: optional_time_from(&format!("{f}.expires_at"), e.expires_at, v),
    }
}

/// `PointsTransferred` to proto.
pub fn points_transferred_to(e: PointsTransferred) -> pb::PointsTransferred {
    pb::PointsTransferred {
        from_customer_id: e.from_customer_id.to_string(),
        to_customer_id: e.to_customer_id.to_string(),
        points: e.points,
        transfer_id: e.transfer_id.to_string(),
        expires_at: e.expires_at_us.map(timestamp_from_us),
    }
}

/// `LedgerMerged` from proto (destructured, so a new field fails to compile here).
pub fn ledger_merged_from(e: pb::LedgerMerged, v: &mut Violations) -> LedgerMerged {
    let f = "ledger_merged";
    let pb::LedgerMerged {
        duplicate_id,
        survivor_id,
        merge_event_id,
        part,
        parts,
        lines,
        spend,
        debt_points,
        debt_forgiven_points,
        enrolled_at,
        channel,
        tier,
    } = e;
    LedgerMerged {
        duplicate_id: uuid_field(&format!("{f}.duplicate_id"), &duplicate_id, v),
        survivor_id: uuid_field(&format!("{f}.survivor_id"), &survivor_id, v),
        merge_event_id: uuid_field(&format!("{f}.merge_event_id"), &merge_event_id, v),
        part,
        parts,
        lines: lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let at = format!("{f}.lines[{i}]");
                let pb::MovedLine {
                    line_id,
                    position,
                    rule,
                    order_id,
                    source_event_id,
                    points,
                    spent,
                    expired,
                    cancelled,
                    forfeited,
                    recovered,
                    spend_minor,
                    earned_at,
                    available_at,
                    expires_at,
                    refunded_minor,
                    refund_points,
                } = l;
                MovedLine {
                    line_id: uuid_field(&format!("{at}.line_id"), &line_id, v),
                    position,
                    rule,
                    order_id,
                    source_event_id: optional_uuid(
                        &format!("{at}.source_event_id"),
                        &source_event_id,
                        v,
                    ),
                    points,
                    spent,
                    expired,
                    cancelled,
                    forfeited,
                    recovered,
                    spend_minor,
                    earned_at_us: time_from(&format!("{at}.earned_at"), earned_at, v),
                    available_at_us: time_from(&format!("{at}.available_at"), available_at, v),
                    expires_at_us: optional_time_from(&format!("{at}.expires_at"), expires_at, v),
                    refunded_minor,
                    refund_points,
                }
            })
            .collect(),
        spend: spend
            .into_iter()
            .enumerate()
            .map(|(i, s)| MovedSpend {
                at_us: time_from(&format!("{f}.spend[{i}].at"), s.at, v),
                minor: s.minor,
            })
            .collect(),
        debt_points,
        debt_forgiven_points,
        enrolled_at_us: time_from(&format!("{f}.enrolled_at"), enrolled_at, v),
        channel: channel_from(&format!("{f}.channel"), channel, v),
        tier,
    }
}

/// `LedgerMerged` to proto.
pub fn ledger_merged_to(e: LedgerMerged) -> pb::LedgerMerged {
    pb::LedgerMerged {
        duplicate_id: e.duplicate_id.to_string(),
        survivor_id: e.survivor_id.to_string(),
        merge_event_id: e.merge_event_id.to_string(),
        part: e.part,
        parts: e.parts,
        lines: e
            .lines
            .into_iter()
            .map(|l| pb::MovedLine {
                line_id: l.line_id.to_string(),
                position: l.position,
                rule: l.rule,
                order_id: l.order_id,
                source_event_id: l.source_event_id.map(|s| s.to_string()).unwrap_or_default(),
                points: l.points,
                spent: l.spent,
                expired: l.expired,
                cancelled: l.cancelled,
                forfeited: l.forfeited,
                recovered: l.recovered,
                spend_minor: l.spend_minor,
                earned_at: Some(timestamp_from_us(l.earned_at_us)),
                available_at: Some(timestamp_from_us(l.available_at_us)),
                expires_at: l.expires_at_us.map(timestamp_from_us),
                refunded_minor: l.refunded_minor,
                refund_points: l.refund_points,
            })
            .collect(),
        spend: e
            .spend
            .into_iter()
            .map(|s| pb::MovedSpend {
                at: Some(timestamp_from_us(s.at_us)),
                minor: s.minor,
            })
            .collect(),
        debt_points: e.debt_points,
        debt_forgiven_points: e.debt_forgiven_points,
        enrolled_at: Some(timestamp_from_us(e.enrolled_at_us)),
        channel: channel_to(e.channel),
        tier: e.tier,
    }
}

#[cfg(test)]
mod tests {
    use super::super::convert::{event_from_proto, event_to_proto};
    use super::*;
    use crate::domain::DomainEvent;

    fn programme(
        lifetime: PointsLifetime,
        basis: TierBasis,
        downgrade: DowngradePolicy,
    ) -> Programme {
        Programme {
            name: "Club".into(),
            currency: "EUR".into(),
            points_per_unit: 2,
            minor_per_unit: 100,
            multipliers: vec![
                Multiplier {
                    scope: MultiplierScope::Category("shoes".into()),
                    percent: 300,
                },
                Multiplier {
                    scope: MultiplierScope::Sku("SKU-1".into()),
                    percent: 150,
                },
                Multiplier {
                    scope: MultiplierScope::Channel(Channel::Web),
                    percent: 120,
                },
            ],
            bonuses: vec![
                Bonus {
                    name: "first".into(),
                    trigger: BonusTrigger::FirstPurchase,
                    points: 50,
                    cap: None,
                },
                Bonus {
                    name: "welcome".into(),
                    trigger: BonusTrigger::SignUp,
                    points: 100,
                    cap: Some(Cap {
                        count: 1,
                        period: CapPeriod::Year,
                    }),
                },
                Bonus {
                    name: "review".into(),
                    trigger: BonusTrigger::CustomEvent("review.written".into()),
                    points: 20,
                    cap: Some(Cap {
                        count: 2,
                        period: CapPeriod::Day,
                    }),
                },
            ],
            lifetime,
            holding_days: 14,
            min_redemption_points: 100,
            debt_max_points: 500,
            tiers: vec![
                Tier {
                    name: "Base".into(),
                    threshold: 0,
                    multiplier_percent: 100,
                },
                Tier {
                    name: "Gold".into(),
                    threshold: 1_000,
                    multiplier_percent: 150,
                },
            ],
            tier_basis: basis,
            tier_window_months: 12,
            downgrade,
            base_cap: None,
        }
    }

    #[test]
    fn every_loyalty_event_round_trips_through_proto() {
        let id = |n: u128| Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_0000 | n);
        let events = vec![
            DomainEvent::ProgrammeDefined(ProgrammeDefined {
                programme: programme(
                    PointsLifetime::Days(365),
                    TierBasis::PointsEarned,
                    DowngradePolicy::PeriodEnd,
                ),
            }),
            DomainEvent::ProgrammeChanged(ProgrammeChanged {
                programme: programme(
                    PointsLifetime::EndOfMonthAfterDays(30),
                    TierBasis::Spend,
                    DowngradePolicy::WindowDrop,
                ),
            }),
            DomainEvent::ProgrammeChanged(ProgrammeChanged {
                programme: programme(
                    PointsLifetime::EndOfYearAfterDays(1),
                    TierBasis::Spend,
                    DowngradePolicy::Never,
                ),
            }),
            DomainEvent::ProgrammeChanged(ProgrammeChanged {
                programme: programme(
                    PointsLifetime::Never,
                    TierBasis::Spend,
                    DowngradePolicy::Never,
                ),
            }),
            DomainEvent::RewardDefined(RewardDefined {
                reward_id: id(1),
                name: "Mug".into(),
                cost_points: 500,
                stock: Some(3),
            }),
            DomainEvent::RewardDefined(RewardDefined {
                reward_id: id(1),
                name: "Voucher".into(),
                cost_points: 100,
                stock: None,
            }),
            DomainEvent::RewardRetired(RewardRetired { reward_id: id(1) }),
            DomainEvent::RewardClaimed(RewardClaimed {
                reward_id: id(1),
                customer_id: id(2),
                redemption_id: id(3),
            }),
            DomainEvent::MemberEnrolled(MemberEnrolled {
                customer_id: id(2),
                channel: Channel::Store,
            }),
            DomainEvent::MemberLeft(MemberLeft {
                customer_id: id(2),
                forfeited_points: 12,
                reason: "moved".into(),
            }),
            DomainEvent::TierChanged(TierChanged {
                customer_id: id(2),
                from_tier: "Base".into(),
                to_tier: "Gold".into(),
                qualifying: 1_200,
                as_of_us: 1_700_000_000_000_000,
            }),
            DomainEvent::PointsEarned(PointsEarned {
                customer_id: id(2),
                rule: "base".into(),
                points: 240,
                order_id: "o-1".into(),
                spend_minor: 12_000,
                earned_at_us: 1_700_000_000_000_000,
                available_at_us: 1_700_000_100_000_000,
                expires_at_us: Some(1_800_000_000_000_000),
                source_event_id: id(4),
            }),
            DomainEvent::PointsCancelled(PointsCancelled {
                customer_id: id(2),
                order_id: "o-1".into(),
                points: 100,
                debt_points: 40,
                forgiven_points: 7,
                refund_minor: 6_000,
                source_event_id: id(5),
            }),
            DomainEvent::PointsSpent(PointsSpent {
                customer_id: id(2),
                points: 500,
                reason: "Mug".into(),
                reward_id: Some(id(1)),
                redemption_id: id(3),
            }),
            DomainEvent::PointsSpent(PointsSpent {
                customer_id: id(2),
                points: 50,
                reason: String::new(),
                reward_id: None,
                redemption_id: id(6),
            }),
            DomainEvent::PointsExpired(PointsExpired {
                customer_id: id(2),
                lines: vec![ExpiredLine {
                    line_id: id(7),
                    points: 30,
                }],
                as_of_us: 1_800_000_000_000_000,
            }),
            DomainEvent::PointsAdjusted(PointsAdjusted {
                customer_id: id(2),
                points: -75,
                reason: "fix".into(),
                expires_at_us: None,
            }),
            DomainEvent::PointsTransferred(PointsTransferred {
                from_customer_id: id(2),
                to_customer_id: id(8),
                points: 300,
                transfer_id: id(9),
                expires_at_us: Some(1_800_000_000_000_000),
            }),
            DomainEvent::LedgerMerged(LedgerMerged {
                duplicate_id: id(2),
                survivor_id: id(8),
                merge_event_id: id(10),
                part: 0,
                parts: 2,
                lines: vec![
                    MovedLine {
                        line_id: id(7),
                        position: 12,
                        rule: "base".into(),
                        order_id: "o-1".into(),
                        source_event_id: Some(id(5)),
                        points: 120,
                        spent: 20,
                        expired: 1,
                        cancelled: 2,
                        forfeited: 0,
                        recovered: 3,
                        spend_minor: 6_000,
                        earned_at_us: 1_700_000_000_000_000,
                        available_at_us: 1_701_000_000_000_000,
                        expires_at_us: Some(1_800_000_000_000_000),
                        refunded_minor: 100,
                        refund_points: 2,
                    },
                    MovedLine {
                        line_id: id(11),
                        position: 14,
                        rule: "adjustment".into(),
                        order_id: String::new(),
                        source_event_id: None,
                        points: 5,
                        spent: 0,
                        expired: 0,
                        cancelled: 0,
                        forfeited: 0,
                        recovered: 0,
                        spend_minor: 0,
                        earned_at_us: 1_700_000_000_000_000,
                        available_at_us: 1_700_000_000_000_000,
                        expires_at_us: None,
                        refunded_minor: 0,
                        refund_points: 0,
                    },
                ],
                spend: vec![MovedSpend {
                    at_us: 1_700_000_000_000_000,
                    minor: -100,
                }],
                debt_points: 7,
                debt_forgiven_points: 3,
                enrolled_at_us: 1_690_000_000_000_000,
                channel: Channel::Web,
                tier: "Silver".into(),
            }),
        ];
        for event in events {
            let mut v = Violations::new("event");
            let back = event_from_proto(event_to_proto(event.clone()), &mut v);
            assert!(v.is_empty(), "{event:?}: {:?}", v.into_vec());
            assert_eq!(back.as_ref(), Some(&event));
            assert_eq!(event.validate(""), Ok(()), "{event:?}");
        }
    }
}
