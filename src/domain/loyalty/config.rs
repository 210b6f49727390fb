//! Programme configuration: earning rules, bonuses with caps, points lifetime, holding
//! period, redemption floor, tiers. Stored inside `ProgrammeDefined` / `ProgrammeChanged`
//! events (bincode: variants and fields may only be appended), so every decision uses
//! the version in force at its source event's business time.

use serde::{Deserialize, Serialize};

use super::time;
use crate::domain::common::{Channel, validate_currency};
use crate::domain::violations::Violations;
use crate::limits::{
    FIELD_BYTES_MAX, LOYALTY_DAYS_MAX, LOYALTY_POINTS_MAX, LOYALTY_RULES_MAX, LOYALTY_TIERS_MAX,
};

/// What an earning multiplier applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MultiplierScope {
    /// Order lines of a product category.
    Category(String),
    /// Order lines of one SKU.
    Sku(String),
    /// Whole orders placed on a channel.
    Channel(Channel),
}

/// Points × `percent` / 100 for what the scope matches (200 = double points). Line
/// multipliers (category, SKU) do not stack: a line takes the largest that matches. The
/// channel multiplier (largest matching) and the member's tier multiplier apply to the
/// whole order on top.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multiplier {
    /// What it applies to.
    pub scope: MultiplierScope,
    /// Percentage, 0..=10 000.
    pub percent: u32,
}

/// What triggers a fixed bonus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BonusTrigger {
    /// The member's first purchase earning points in the programme.
    FirstPurchase,
    /// Enrolment.
    SignUp,
    /// A custom event of this type in the customer's stream (`review.written`).
    CustomEvent(String),
    /// The member's birthday (from the birth date of their registration; 29 February is
    /// the 28th in other years), awarded by the time tick once the day has begun (UTC),
    /// for members enrolled by then; once per year (the cap may limit it further).
    Birthday,
}

/// The period a usage cap counts in (calendar periods, UTC, business time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapPeriod {
    /// One calendar day.
    Day,
    /// One calendar month.
    Month,
    /// One calendar year.
    Year,
    /// The membership's whole life.
    Lifetime,
}

/// At most `count` awards of a bonus per member per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    /// Awards allowed per period, at least 1.
    pub count: u32,
    /// The period.
    pub period: CapPeriod,
}

/// At most `points` base points (points on spend) per member per calendar period: a
/// purchase that would pass it earns only what is left (possibly 0; its spend still
/// counts for spend-based tiers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsCap {
    /// Base points allowed per period, at least 1.
    pub points: u64,
    /// The period.
    pub period: CapPeriod,
}

/// Rule names of ledger lines that are not bonuses: a bonus may not take them (its lines
/// would count as points on spend, or as manual credits).
const RESERVED_RULE_NAMES: &[&str] = &[
    super::ledger::BASE_RULE,
    super::ledger::ADJUSTMENT_RULE,
    super::ledger::TRANSFER_RULE,
];

/// A fixed bonus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bonus {
    /// Its name, unique in the programme: the rule name in the ledger and in derived ids.
    pub name: String,
    /// What awards it.
    pub trigger: BonusTrigger,
    /// Points awarded.
    pub points: u64,
    /// Usage cap, if any.
    pub cap: Option<Cap>,
}

/// When earned points expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PointsLifetime {
    /// Never.
    Never,
    /// N days after earning.
    Days(u32),
    /// At the end of the month in which N days after earning falls.
    EndOfMonthAfterDays(u32),
    /// At the end of the year in which N days after earning falls.
    EndOfYearAfterDays(u32),
}

impl PointsLifetime {
    /// The expiry instant of points earned at `earned_at_us` (`None`: never).
    pub fn expires_at(self, earned_at_us: i64) -> Option<i64> {
        match self {
            Self::Never => None,
            Self::Days(n) => Some(time::add_days(earned_at_us, n)),
            Self::EndOfMonthAfterDays(n) => {
                Some(time::start_of_next_month(time::add_days(earned_at_us, n)))
            }
            Self::EndOfYearAfterDays(n) => {
                Some(time::start_of_next_year(time::add_days(earned_at_us, n)))
            }
        }
    }
}

/// What a tier threshold measures over the rolling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierBasis {
    /// Points earned from purchases and bonuses (less their cancellations).
    PointsEarned,
    /// Net spend (orders less refunds) in the programme currency, minor units.
    Spend,
}

/// When a member drops to a lower tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DowngradePolicy {
    /// Never: a tier once reached is kept.
    Never,
    /// Only at the end of a calendar year, to the tier the window qualified for then.
    PeriodEnd,
    /// As soon as the rolling window drops below the tier's threshold.
    WindowDrop,
}

/// A tier. Tiers are listed from the lowest; the first has threshold 0 (everyone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Its name, unique.
    pub name: String,
    /// Qualifying amount over the window (points or minor units, per the basis).
    pub threshold: u64,
    /// Earning multiplier of members in this tier, percent (100 = none).
    pub multiplier_percent: u32,
}

/// One version of the programme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Programme {
    /// Display name.
    pub name: String,
    /// ISO 4217 code: purchases and refunds in other currencies earn nothing.
    pub currency: String,
    /// Points per currency unit spent.
    pub points_per_unit: u32,
    /// Minor units in one currency unit (100 for EUR), at least 1.
    pub minor_per_unit: u32,
    /// Earning multipliers.
    pub multipliers: Vec<Multiplier>,
    /// Fixed bonuses.
    pub bonuses: Vec<Bonus>,
    /// When points expire.
    pub lifetime: PointsLifetime,
    /// Days points stay pending (the return window) before they can be spent.
    pub holding_days: u32,
    /// Smallest spend or redemption, points.
    pub min_redemption_points: u64,
    /// How far a refund of already-spent points may take a balance below zero (the debt
    /// is recovered from future earnings). 0: never negative, the rest is forgiven.
    pub debt_max_points: u64,
    /// Tiers, lowest first; empty means no tiers.
    pub tiers: Vec<Tier>,
    /// What tier thresholds measure.
    pub tier_basis: TierBasis,
    /// Rolling window of tier qualification, months (at least 1 when there are tiers).
    pub tier_window_months: u32,
    /// When members drop a tier.
    pub downgrade: DowngradePolicy,
    /// Cap on base points per member per period (schema version 2 of the programme
    /// events); `None`: uncapped.
    pub base_cap: Option<PointsCap>,
}

/// A programme as stored by schema version 1 of `ProgrammeDefined` / `ProgrammeChanged`
/// (before base caps): frozen, so stored version-1 payloads stay readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammeV1 {
    /// As [`Programme::name`].
    pub name: String,
    /// As [`Programme::currency`].
    pub currency: String,
    /// As [`Programme::points_per_unit`].
    pub points_per_unit: u32,
    /// As [`Programme::minor_per_unit`].
    pub minor_per_unit: u32,
    /// As [`Programme::multipliers`].
    pub multipliers: Vec<Multiplier>,
    /// As [`Programme::bonuses`].
    pub bonuses: Vec<Bonus>,
    /// As [`Programme::lifetime`].
    pub lifetime: PointsLifetime,
    /// As [`Programme::holding_days`].
    pub holding_days: u32,
    /// As [`Programme::min_redemption_points`].
    pub min_redemption_points: u64,
    /// As [`Programme::debt_max_points`].
    pub debt_max_points: u64,
    /// As [`Programme::tiers`].
    pub tiers: Vec<Tier>,
    /// As [`Programme::tier_basis`].
    pub tier_basis: TierBasis,
    /// As [`Programme::tier_window_months`].
    pub tier_window_months: u32,
    /// As [`Programme::downgrade`].
    pub downgrade: DowngradePolicy,
}

impl From<ProgrammeV1> for Programme {
    /// The upcast: a version-1 programme has no base cap.
    fn from(p: ProgrammeV1) -> Self {
        let ProgrammeV1 {
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
            tiers,
            tier_basis,
            tier_window_months,
            downgrade,
        } = p;
        Self {
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
            tiers,
            tier_basis,
            tier_window_months,
            downgrade,
            base_cap: None,
        }
    }
}

impl Programme {
    /// Checks the programme's rules into `v` under `f` (e.g. `programme`).
    pub fn validate(&self, f: &str, v: &mut Violations) {
        v.required(&format!("{f}.name"), &self.name, FIELD_BYTES_MAX);
        validate_currency(&format!("{f}.currency"), &self.currency, v);
        if self.minor_per_unit == 0 {
            v.add(&format!("{f}.minor_per_unit"), "must be at least 1");
        }
        if self.points_per_unit > 1_000_000 {
            v.add(&format!("{f}.points_per_unit"), "must be at most 1000000");
        }
        v.max_items(
            &format!("{f}.multipliers"),
            self.multipliers.len() + self.bonuses.len(),
            LOYALTY_RULES_MAX,
        );
        for (i, m) in self.multipliers.iter().enumerate() {
            let at = format!("{f}.multipliers[{i}]");
            if m.percent > 10_000 {
                v.add(&format!("{at}.percent"), "must be at most 10000");
            }
            match &m.scope {
                MultiplierScope::Category(s) | MultiplierScope::Sku(s) => {
                    v.required(&format!("{at}.value"), s, FIELD_BYTES_MAX);
                }
                MultiplierScope::Channel(c) => {
                    if *c == Channel::Unspecified {
                        v.add(&format!("{at}.channel"), "must be set");
                    }
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.bonuses.iter().enumerate() {
            let at = format!("{f}.bonuses[{i}]");
            v.required(&format!("{at}.name"), &b.name, FIELD_BYTES_MAX);
            if !names.insert(b.name.as_str()) {
                v.add(&format!("{at}.name"), "is used by another bonus");
            }
            if RESERVED_RULE_NAMES.contains(&b.name.as_str()) {
                v.add(
                    &format!("{at}.name"),
                    "is the name of a built-in rule (base, adjustment, transfer)",
                );
            }
            if b.points == 0 || b.points > LOYALTY_POINTS_MAX {
                v.add(
                    &format!("{at}.points"),
                    format!("must be 1..={LOYALTY_POINTS_MAX}"),
                );
            }
            if let BonusTrigger::CustomEvent(t) = &b.trigger
                && !crate::domain::events::is_valid_custom_type(t)
            {
                v.add(
                    &format!("{at}.custom_event_type"),
                    "is not a valid custom event type",
                );
            }
            if let Some(cap) = b.cap
                && cap.count == 0
            {
                v.add(&format!("{at}.cap.count"), "must be at least 1");
            }
        }
        let days = |field: &str, n: u32, v: &mut Violations| {
            if n > LOYALTY_DAYS_MAX {
                v.add(
                    &format!("{f}.{field}"),
                    format!("must be at most {LOYALTY_DAYS_MAX}"),
                );
            }
        };
        match self.lifetime {
            PointsLifetime::Never => {}
            PointsLifetime::Days(n)
            | PointsLifetime::EndOfMonthAfterDays(n)
            | PointsLifetime::EndOfYearAfterDays(n) => days("lifetime_days", n, v),
        }
        days("holding_days", self.holding_days, v);
        if let Some(cap) = self.base_cap
            && (cap.points == 0 || cap.points > LOYALTY_POINTS_MAX)
        {
            v.add(
                &format!("{f}.base_cap_points"),
                format!("must be 1..={LOYALTY_POINTS_MAX}"),
            );
        }
        if self.min_redemption_points > LOYALTY_POINTS_MAX {
            v.add(&format!("{f}.min_redemption_points"), "is too large");
        }
        if self.debt_max_points > LOYALTY_POINTS_MAX {
            v.add(&format!("{f}.debt_max_points"), "is too large");
        }
        v.max_items(&format!("{f}.tiers"), self.tiers.len(), LOYALTY_TIERS_MAX);
        let mut tier_names = std::collections::BTreeSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            let at = format!("{f}.tiers[{i}]");
            v.required(&format!("{at}.name"), &t.name, FIELD_BYTES_MAX);
            if !tier_names.insert(t.name.as_str()) {
                v.add(&format!("{at}.name"), "is used by another tier");
            }
            if i == 0 && t.threshold != 0 {
                v.add(
                    &format!("{at}.threshold"),
                    "the first tier's threshold must be 0",
                );
            }
            if i > 0 && t.threshold <= self.tiers[i - 1].threshold {
                v.add(
                    &format!("{at}.threshold"),
                    "must be above the previous tier's",
                );
            }
            if t.multiplier_percent > 10_000 {
                v.add(&format!("{at}.multiplier_percent"), "must be at most 10000");
            }
        }
        if !self.tiers.is_empty() && (self.tier_window_months == 0 || self.tier_window_months > 120)
        {
            v.add(
                &format!("{f}.tier_window_months"),
                "must be 1..=120 when there are tiers",
            );
        }
    }

    /// The name of the lowest tier ("" without tiers).
    pub fn base_tier(&self) -> &str {
        self.tiers.first().map_or("", |t| t.name.as_str())
    }

    /// The tier called `name`, with its index.
    pub fn tier(&self, name: &str) -> Option<(usize, &Tier)> {
        self.tiers.iter().enumerate().find(|(_, t)| t.name == name)
    }

    /// The highest tier whose threshold `qualifying` reaches.
    pub fn tier_for(&self, qualifying: i64) -> Option<(usize, &Tier)> {
        self.tiers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, t)| i128::from(qualifying) >= i128::from(t.threshold))
    }
}

/// Every version of the programme: (effective from, business time; log position; version).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammeHistory {
    /// Versions in log order.
    pub versions: Vec<(i64, u64, Programme)>,
}

impl ProgrammeHistory {
    /// The version in force at business time `at_us`: the latest effective by then (by
    /// effective time, then log position), else `None`.
    pub fn at(&self, at_us: i64) -> Option<&Programme> {
        self.versions
            .iter()
            .filter(|(from, _, _)| *from <= at_us)
            .max_by_key(|(from, position, _)| (*from, *position))
            .map(|(_, _, p)| p)
    }

    /// The latest version by log position (the current configuration).
    pub fn current(&self) -> Option<&Programme> {
        self.versions.last().map(|(_, _, p)| p)
    }
}
