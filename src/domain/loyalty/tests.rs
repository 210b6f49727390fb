//! Given/when/then tests of the loyalty rules, and the worked example of the README
//! (config change mid-history, refund after a partial spend, debt, expiry boundary,
//! tier upgrade and downgrade) with every number computed by hand.

use uuid::Uuid;

mod merge;

use super::config::*;
use super::decide::{self, RuleError, Source, SourceKind};
use super::ledger::{self, Envelope, Member, Reward};
use super::time::midnight;
use super::{ProgrammeHistory, apply_programme};
use crate::domain::common::Channel;
use crate::domain::events::{
    DomainEvent, ProgrammeChanged, ProgrammeDefined, PurchaseCompleted, PurchaseLine,
    PurchaseRefunded, RewardDefined,
};

const HOUR_US: i64 = 3_600_000_000;

fn noon(y: i64, m: u32, d: u32) -> i64 {
    midnight(y, m, d) + 12 * HOUR_US
}

fn programme() -> Programme {
    Programme {
        name: "Club".into(),
        currency: "EUR".into(),
        points_per_unit: 1,
        minor_per_unit: 100,
        multipliers: Vec::new(),
        bonuses: vec![Bonus {
            name: "first_purchase".into(),
            trigger: BonusTrigger::FirstPurchase,
            points: 50,
            cap: None,
        }],
        lifetime: PointsLifetime::Days(365),
        holding_days: 14,
        min_redemption_points: 10,
        debt_max_points: 0,
        tiers: vec![
            Tier {
                name: "Base".into(),
                threshold: 0,
                multiplier_percent: 100,
            },
            Tier {
                name: "Silver".into(),
                threshold: 300,
                multiplier_percent: 200,
            },
        ],
        tier_basis: TierBasis::PointsEarned,
        tier_window_months: 12,
        downgrade: DowngradePolicy::WindowDrop,
        base_cap: None,
    }
}

/// A member's stream and the programme's, folded as the log would.
struct World {
    member: Member,
    programme: ProgrammeHistory,
    position: u64,
}

impl World {
    fn new() -> Self {
        Self {
            member: Member::new(Uuid::from_u128(7)),
            programme: ProgrammeHistory::default(),
            position: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.position += 1;
        self.position
    }

    fn define(&mut self, at_us: i64, programme: Programme) {
        let position = self.next();
        let event = if self.programme.versions.is_empty() {
            DomainEvent::ProgrammeDefined(ProgrammeDefined { programme })
        } else {
            DomainEvent::ProgrammeChanged(ProgrammeChanged { programme })
        };
        apply_programme(&mut self.programme, position, at_us, &event);
    }

    fn fold(&mut self, at_us: i64, events: Vec<(Uuid, DomainEvent)>) {
        for (id, event) in events {
            let env = Envelope {
                position: self.next(),
                event_id: id,
                occurred_at_us: at_us,
            };
            ledger::apply(&mut self.member, &env, &event);
        }
    }

    fn fold_plain(&mut self, at_us: i64, events: Vec<DomainEvent>) {
        let with_ids = events
            .into_iter()
            .map(|e| (Uuid::from_u128(u128::from(self.position) + 1_000_000), e))
            .collect();
        self.fold(at_us, with_ids);
    }

    fn enrol(&mut self, at_us: i64) {
        let events = decide::enrol(&self.member, Channel::Web).unwrap();
        self.fold_plain(at_us, events);
    }

    /// The policy on a source event: returns the points events it appends.
    fn source(&mut self, at_us: i64, kind: SourceKind<'_>) -> Vec<DomainEvent> {
        let position = self.next();
        let source = Source {
            event_id: Uuid::from_u128(u128::from(position) << 64),
            position,
            occurred_at_us: at_us,
            kind,
        };
        let awards = decide::earn(&self.member, self.programme.at(at_us), &source);
        let events: Vec<DomainEvent> = awards.iter().map(|(_, e)| e.clone()).collect();
        self.fold(at_us, awards);
        events
    }

    fn buy(&mut self, at_us: i64, order: &str, lines: &[(&str, u32, i64)]) -> Vec<DomainEvent> {
        let purchase = purchase(order, lines);
        self.source(at_us, SourceKind::Purchase(&purchase))
    }

    fn refund(&mut self, at_us: i64, order: &str, amount_minor: i64) -> Vec<DomainEvent> {
        let refund = PurchaseRefunded {
            customer_id: self.member.customer_id,
            order_id: order.into(),
            refund_id: format!("r-{order}-{amount_minor}"),
            lines: Vec::new(),
            amount_minor,
            currency: "EUR".into(),
            reason: String::new(),
        };
        self.source(at_us, SourceKind::Refund(&refund))
    }

    fn tick(&mut self, at_us: i64) -> Vec<DomainEvent> {
        self.tick_with_birthday(at_us, None)
    }

    fn tick_with_birthday(
        &mut self,
        at_us: i64,
        birthday: Option<decide::Birthday>,
    ) -> Vec<DomainEvent> {
        let events = decide::tick(&self.member, self.programme.at(at_us), at_us, birthday);
        self.fold_plain(at_us, events.clone());
        events
    }

    fn spend(&mut self, at_us: i64, points: u64) -> Result<(), RuleError> {
        let events = decide::spend(
            &self.member,
            self.programme.at(at_us),
            points,
            "test",
            Uuid::from_u128(99),
            at_us,
        )?;
        self.fold_plain(at_us, events);
        Ok(())
    }
}

fn purchase(order: &str, lines: &[(&str, u32, i64)]) -> PurchaseCompleted {
    PurchaseCompleted {
        customer_id: Uuid::from_u128(7),
        order_id: order.into(),
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, (category, quantity, price))| PurchaseLine {
                sku: format!("sku-{i}"),
                name: String::new(),
                category: (*category).into(),
                quantity: *quantity,
                unit_price_minor: *price,
            })
            .collect(),
        total_minor: lines.iter().map(|(_, q, p)| i64::from(*q) * p).sum(),
        currency: "EUR".into(),
        channel: Channel::Web,
        store_id: String::new(),
    }
}

fn earned(events: &[DomainEvent]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            DomainEvent::PointsEarned(p) => Some((p.rule.clone(), p.points)),
            _ => None,
        })
        .collect()
}

#[test]
fn worked_example() {
    let mut w = World::new();
    // Programme v1 from 2024-01-01: 1 point per euro, 50 points on the first purchase,
    // 14 days pending, 365 days lifetime, no debt; Silver (×2) from 300 points in 12 months.
    w.define(midnight(2024, 1, 1), programme());
    w.enrol(midnight(2024, 1, 1));

    // 2024-01-10: order O1, 2 × 100.00 EUR of shoes: 200 points + 50 first-purchase bonus.
    let o1 = w.buy(noon(2024, 1, 10), "O1", &[("shoes", 2, 10_000)]);
    assert_eq!(
        earned(&o1),
        [("base".into(), 200), ("first_purchase".into(), 50)]
    );
    let b = w.member.balance(noon(2024, 1, 20));
    assert_eq!(
        (b.available, b.pending),
        (0, 250),
        "pending during the 14-day return window"
    );
    let b = w.member.balance(noon(2024, 1, 24));
    assert_eq!((b.available, b.pending), (250, 0), "available on day 14");

    // 2024-02-01: v2 triples points on shoes and allows 100 points of debt.
    let mut v2 = programme();
    v2.multipliers.push(Multiplier {
        scope: MultiplierScope::Category("shoes".into()),
        percent: 300,
    });
    v2.debt_max_points = 100;
    w.define(midnight(2024, 2, 1), v2);
    // The tick on 2024-02-01: 250 qualifying points < 300, the member stays Base.
    assert_eq!(w.tick(midnight(2024, 2, 1)), []);

    // 2024-02-10: order O2, 50.00 EUR of shoes under v2: 50 × 3 = 150 points (under v1 it
    // would have been 50). No second first-purchase bonus.
    let o2 = w.buy(noon(2024, 2, 10), "O2", &[("shoes", 1, 5_000)]);
    assert_eq!(earned(&o2), [("base".into(), 150)]);

    // The tick on 2024-02-11: 200 + 50 + 150 = 400 ≥ 300 → Silver.
    let t = w.tick(noon(2024, 2, 11));
    assert!(
        matches!(&t[..], [DomainEvent::TierChanged(c)] if c.to_tier == "Silver" && c.qualifying == 400)
    );

    // 2024-03-01: spend 300 of the 400 available, oldest first: O1's 200, the bonus's 50,
    // 50 of O2's 150. 100 remain (on O2's line).
    w.spend(noon(2024, 3, 1), 300).unwrap();
    assert_eq!(w.member.balance(noon(2024, 3, 1)).available, 100);

    // 2024-03-05: O1 is refunded in full. Its 200 points were spent: the 100 left on O2
    // are cancelled, and the other 100 become debt (v2 allows 100).
    let r = w.refund(noon(2024, 3, 5), "O1", 20_000);
    assert!(matches!(&r[..], [DomainEvent::PointsCancelled(c)]
        if (c.points, c.debt_points, c.forgiven_points) == (100, 100, 0)));
    assert_eq!(w.member.balance(noon(2024, 3, 5)).available, -100);

    // 2024-03-10: order O3, 100.00 EUR of bags, Silver doubles it: 200 points; the first
    // 100 pay the debt, 100 stay pending until 2024-03-24.
    let o3 = w.buy(noon(2024, 3, 10), "O3", &[("bags", 1, 10_000)]);
    assert_eq!(earned(&o3), [("base".into(), 200)]);
    let b = w.member.balance(noon(2024, 3, 20));
    assert_eq!((b.available, b.pending, b.debt), (0, 100, 0));
    assert_eq!(w.member.balance(noon(2024, 3, 24)).available, 100);

    // 2025-01-15: window (2024-01-15, 2025-01-15] holds O2 150 + O3 200 = 350: Silver stays.
    assert_eq!(w.tick(noon(2025, 1, 15)), []);
    // 2025-02-15: only O3's 200 remain in the window → down to Base (window drop).
    let t = w.tick(noon(2025, 2, 15));
    assert!(
        matches!(&t[..], [DomainEvent::TierChanged(c)] if c.to_tier == "Base" && c.qualifying == 200)
    );

    // Expiry boundary: O3's points expire 365 days after 2024-03-10 12:00, at 2025-03-10 12:00.
    let boundary = noon(2025, 3, 10);
    assert_eq!(w.member.balance(boundary - 1).available, 100);
    assert_eq!(w.member.balance(boundary - 1).expiring[0], 100);
    assert_eq!(w.tick(boundary - 1), []);
    assert_eq!(w.member.balance(boundary).available, 0);
    let t = w.tick(boundary);
    assert!(
        matches!(&t[..], [DomainEvent::PointsExpired(e)] if e.lines.len() == 1 && e.lines[0].points == 100)
    );

    // The ledger adds up: 600 earned − 300 spent − 200 cancelled − 100 expired = 0.
    let totals = &w.member.totals;
    assert_eq!(
        (
            totals.earned,
            totals.spent,
            totals.cancelled,
            totals.expired
        ),
        (600, 300, 200, 100)
    );
    let sum: i64 = w.member.entries.iter().map(|e| e.points).sum();
    assert_eq!(sum, 0);
    assert_eq!(w.member.balance(boundary).available, 0);
}

#[test]
fn given_no_debt_allowed_when_spent_points_are_refunded_then_the_rest_is_forgiven() {
    let mut w = World::new();
    w.define(0, programme());
    w.enrol(0);
    w.buy(noon(2024, 1, 10), "O1", &[("x", 1, 10_000)]); // 100 + 50
    w.spend(noon(2024, 2, 1), 150).unwrap();
    let r = w.refund(noon(2024, 2, 2), "O1", 10_000);
    assert!(matches!(&r[..], [DomainEvent::PointsCancelled(c)]
        if (c.points, c.debt_points, c.forgiven_points) == (0, 0, 100)));
    assert_eq!(w.member.balance(noon(2024, 2, 2)).available, 0);
}

#[test]
fn given_a_partial_refund_then_points_are_cancelled_in_proportion_and_not_twice() {
    let mut w = World::new();
    w.define(0, programme());
    w.enrol(0);
    w.buy(noon(2024, 1, 10), "O1", &[("x", 3, 3_333)]); // 99.99 EUR → 99 points
    let r1 = w.refund(noon(2024, 1, 11), "O1", 3_333);
    assert!(matches!(&r1[..], [DomainEvent::PointsCancelled(c)] if c.points == 33));
    let r2 = w.refund(noon(2024, 1, 12), "O1", 6_666);
    assert!(matches!(&r2[..], [DomainEvent::PointsCancelled(c)] if c.points == 66));
    // Over-refunding the order cancels nothing more.
    assert_eq!(w.refund(noon(2024, 1, 13), "O1", 100), []);
    assert_eq!(w.member.balance(noon(2024, 2, 1)).available, 50);
}

#[test]
fn given_a_processed_source_when_the_policy_replays_it_then_nothing_new_is_awarded() {
    let mut w = World::new();
    w.define(0, programme());
    w.enrol(0);
    let p = purchase("O1", &[("x", 1, 1_000)]);
    let source = Source {
        event_id: Uuid::from_u128(42),
        position: 10,
        occurred_at_us: noon(2024, 1, 1),
        kind: SourceKind::Purchase(&p),
    };
    let first = decide::earn(&w.member, w.programme.at(source.occurred_at_us), &source);
    assert_eq!(first.len(), 2);
    // Same ids on a second decision (a crash before the append): the log dedups them.
    let again = decide::earn(&w.member, w.programme.at(source.occurred_at_us), &source);
    assert_eq!(
        first.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        again.iter().map(|(id, _)| *id).collect::<Vec<_>>()
    );
    w.fold(source.occurred_at_us, first);
    assert!(decide::earn(&w.member, w.programme.at(source.occurred_at_us), &source).is_empty());
}

#[test]
fn given_a_purchase_before_enrolment_or_before_the_programme_then_nothing_is_earned() {
    let mut w = World::new();
    assert!(
        w.buy(noon(2024, 1, 1), "O0", &[("x", 1, 1_000)]).is_empty(),
        "not enrolled"
    );
    w.define(midnight(2024, 6, 1), programme());
    w.enrol(midnight(2024, 6, 1));
    assert!(
        w.buy(noon(2024, 5, 1), "O1", &[("x", 1, 1_000)]).is_empty(),
        "before the programme"
    );
    let mut usd = purchase("O2", &[("x", 1, 1_000)]);
    usd.currency = "USD".into();
    assert!(
        w.source(noon(2024, 7, 1), SourceKind::Purchase(&usd))
            .is_empty(),
        "other currency"
    );
}

#[test]
fn multipliers_take_the_largest_line_match_then_channel_and_tier() {
    let mut p = programme();
    p.multipliers = vec![
        Multiplier {
            scope: MultiplierScope::Category("shoes".into()),
            percent: 200,
        },
        Multiplier {
            scope: MultiplierScope::Sku("sku-0".into()),
            percent: 300,
        },
        Multiplier {
            scope: MultiplierScope::Channel(Channel::Web),
            percent: 150,
        },
    ];
    // Line 0 (shoes, sku-0): 10.00 × 300%; line 1 (shoes): 10.00 × 200% → 50 weighted
    // euros; × 150% web × 200% tier = 150 points.
    let order = purchase("O", &[("shoes", 1, 1_000), ("shoes", 1, 1_000)]);
    assert_eq!(decide::base_points(&order, &p, 200), 150);
}

#[test]
fn bonuses_respect_their_caps() {
    let mut p = programme();
    p.bonuses.push(Bonus {
        name: "review".into(),
        trigger: BonusTrigger::CustomEvent("review.written".into()),
        points: 20,
        cap: Some(Cap {
            count: 2,
            period: CapPeriod::Month,
        }),
    });
    p.bonuses.push(Bonus {
        name: "welcome".into(),
        trigger: BonusTrigger::SignUp,
        points: 100,
        cap: None,
    });
    let mut w = World::new();
    w.define(0, p);
    w.enrol(noon(2024, 1, 1));
    // The policy sees the enrolment itself as a source.
    let position = w.member.enrolment.unwrap().position;
    let source = Source {
        event_id: Uuid::from_u128(5),
        position,
        occurred_at_us: noon(2024, 1, 1),
        kind: SourceKind::Enrolment,
    };
    let welcome = decide::earn(&w.member, w.programme.at(noon(2024, 1, 1)), &source);
    assert_eq!(welcome.len(), 1);
    w.fold(noon(2024, 1, 1), welcome);
    let mut awarded = 0;
    for day in 1..=4 {
        awarded += w
            .source(noon(2024, 1, day), SourceKind::Custom("review.written"))
            .len();
    }
    assert_eq!(awarded, 2, "two a month");
    assert_eq!(
        w.source(noon(2024, 2, 1), SourceKind::Custom("review.written"))
            .len(),
        1
    );
    assert_eq!(w.member.balance(noon(2024, 2, 1)).available, 100 + 3 * 20);
}

#[test]
fn spending_is_refused_below_the_minimum_and_above_the_balance() {
    let mut w = World::new();
    w.define(0, programme());
    w.enrol(0);
    w.buy(noon(2024, 1, 1), "O1", &[("x", 1, 1_000)]); // 10 + 50, pending until the 15th
    assert_eq!(
        w.spend(noon(2024, 1, 2), 20),
        Err(RuleError::InsufficientPoints {
            available: 0,
            requested: 20
        })
    );
    assert_eq!(
        w.spend(noon(2024, 1, 20), 5),
        Err(RuleError::BelowMinimum {
            minimum: 10,
            requested: 5
        })
    );
    assert!(w.spend(noon(2024, 1, 20), 60).is_ok());
    assert!(w.spend(noon(2024, 1, 20), 10).is_err());
}

#[test]
fn rewards_check_stock_and_retirement() {
    let mut w = World::new();
    w.define(0, programme());
    w.enrol(0);
    w.buy(noon(2024, 1, 1), "O1", &[("x", 1, 100_000)]);
    let mut reward = Reward::default();
    ledger::apply_reward(
        &mut reward,
        &DomainEvent::RewardDefined(RewardDefined {
            reward_id: Uuid::from_u128(1),
            name: "Mug".into(),
            cost_points: 100,
            stock: Some(1),
        }),
    );
    let at = noon(2024, 2, 1);
    let p = w.programme.at(at).cloned();
    let (spent, claim) = decide::redeem(
        &w.member,
        p.as_ref(),
        &reward,
        Uuid::from_u128(1),
        Uuid::from_u128(2),
        at,
    )
    .unwrap();
    assert!(matches!(spent, DomainEvent::PointsSpent(s) if s.points == 100));
    ledger::apply_reward(&mut reward, &claim.unwrap());
    assert_eq!(
        decide::redeem(
            &w.member,
            p.as_ref(),
            &reward,
            Uuid::from_u128(1),
            Uuid::from_u128(3),
            at
        ),
        Err(RuleError::OutOfStock(Uuid::from_u128(1)))
    );
    assert_eq!(
        decide::redeem(
            &w.member,
            p.as_ref(),
            &Reward::default(),
            Uuid::from_u128(9),
            Uuid::from_u128(3),
            at
        ),
        Err(RuleError::UnknownReward(Uuid::from_u128(9)))
    );
}

#[test]
fn tier_downgrade_policies() {
    // Points that never expire, so the ticks below only move tiers.
    let forever = || Programme {
        lifetime: PointsLifetime::Never,
        ..programme()
    };
    let base = {
        let mut w = World::new();
        w.define(0, forever());
        w.enrol(0);
        w.buy(noon(2024, 1, 10), "O1", &[("x", 1, 30_000)]); // 300 + 50
        w.tick(noon(2024, 1, 11));
        assert_eq!(w.member.tier, "Silver");
        w
    };
    // Window drop: 2025-01-11, the window no longer holds January 2024.
    let mut w = World {
        member: base.member.clone(),
        programme: base.programme.clone(),
        position: base.position,
    };
    assert_eq!(w.tick(noon(2025, 1, 11)).len(), 1);
    assert_eq!(w.member.tier, "Base");
    // Never: kept.
    let mut never = forever();
    never.downgrade = DowngradePolicy::Never;
    let mut w = World {
        member: base.member.clone(),
        programme: base.programme.clone(),
        position: base.position,
    };
    w.define(midnight(2024, 6, 1), never);
    assert_eq!(w.tick(noon(2025, 6, 1)), []);
    // Period end: not during 2024 even when the window would drop; at the turn of 2026
    // (the window ending 2026-01-01 is empty) it drops. On 2025-01-11 the window ending
    // 2025-01-01 still holds January 2024: kept.
    let mut period = forever();
    period.downgrade = DowngradePolicy::PeriodEnd;
    let mut w = World {
        member: base.member.clone(),
        programme: base.programme.clone(),
        position: base.position,
    };
    w.define(midnight(2024, 6, 1), period);
    assert_eq!(w.tick(noon(2025, 1, 11)), []);
    assert_eq!(w.tick(noon(2025, 12, 31)), []);
    let t = w.tick(noon(2026, 1, 2));
    assert!(matches!(&t[..], [DomainEvent::TierChanged(c)] if c.to_tier == "Base"));
}

#[test]
fn leaving_forfeits_every_remaining_point_and_transfers_move_points() {
    let mut w = World::new();
    w.define(0, programme());
    w.enrol(0);
    w.buy(noon(2024, 1, 1), "O1", &[("x", 1, 10_000)]);
    let mut other = Member::new(Uuid::from_u128(8));
    let enrolled = decide::enrol(&other, Channel::Store).unwrap();
    ledger::apply(
        &mut other,
        &Envelope {
            position: 1,
            event_id: Uuid::from_u128(1),
            occurred_at_us: 0,
        },
        &enrolled[0],
    );
    let at = noon(2024, 2, 1);
    let moved = decide::transfer(&w.member, &other, 100, Uuid::from_u128(77), at).unwrap();
    let env = Envelope {
        position: 100,
        event_id: Uuid::from_u128(78),
        occurred_at_us: at,
    };
    ledger::apply(&mut w.member, &env, &moved);
    ledger::apply(&mut other, &env, &moved);
    assert_eq!(w.member.balance(at).available, 50);
    assert_eq!(other.balance(at).available, 100);
    assert_eq!(
        other.balance(noon(2025, 1, 1)).available,
        0,
        "keeps the sender's expiry"
    );
    let left = decide::leave(&w.member, "moved away").unwrap();
    assert!(matches!(&left[0], DomainEvent::MemberLeft(l) if l.forfeited_points == 50));
    w.fold_plain(at, left);
    assert_eq!(w.member.balance(at).available, 0);
    assert_eq!(w.member.totals.forfeited, 50);
    assert!(w.spend(at, 10).is_err());
}

#[test]
fn lifetime_end_of_month_and_year() {
    let earned = noon(2024, 1, 20);
    assert_eq!(
        PointsLifetime::EndOfMonthAfterDays(30).expires_at(earned),
        Some(midnight(2024, 3, 1))
    );
    assert_eq!(
        PointsLifetime::EndOfYearAfterDays(365).expires_at(earned),
        Some(midnight(2026, 1, 1))
    );
    assert_eq!(PointsLifetime::Never.expires_at(earned), None);
}

fn birthday_programme(cap: Option<Cap>) -> Programme {
    let mut p = programme();
    p.tiers.clear();
    p.bonuses.push(Bonus {
        name: "birthday".into(),
        trigger: BonusTrigger::Birthday,
        points: 100,
        cap,
    });
    p
}

fn awarded(events: &[DomainEvent]) -> Vec<(String, u64, i64, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            DomainEvent::PointsEarned(p) => {
                Some((p.rule.clone(), p.points, p.earned_at_us, p.available_at_us))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn birthday_bonus_once_a_year_from_the_day_it_begins() {
    // Given a member enrolled in 2024 with a birthday on 10 December,
    let mut w = World::new();
    w.define(midnight(2024, 1, 1), birthday_programme(None));
    w.enrol(noon(2024, 3, 1));
    let birthday = Some((12, 10));
    // when the tick runs the day before, nothing is due;
    assert!(awarded(&w.tick_with_birthday(noon(2024, 12, 9), birthday)).is_empty());
    // from midnight of the day on, the bonus is awarded, earned and available that
    // midnight (no holding period: it is no purchase), expiring after the lifetime;
    let begins = midnight(2024, 12, 10);
    let events = w.tick_with_birthday(begins, birthday);
    assert_eq!(awarded(&events), [("birthday".into(), 100, begins, begins)]);
    let DomainEvent::PointsEarned(award) = &events[0] else {
        unreachable!()
    };
    assert_eq!(award.expires_at_us, Some(begins + 365 * 24 * HOUR_US));
    assert_eq!(
        award.source_event_id,
        decide::birthday_source(w.member.customer_id, 2024)
    );
    assert_eq!(w.member.balance(begins).available, 100);
    // then later ticks that year award nothing more,
    assert!(awarded(&w.tick_with_birthday(noon(2024, 12, 31), birthday)).is_empty());
    // and the next year's birthday awards again, late if no tick ran on the day.
    let next = w.tick_with_birthday(noon(2025, 12, 20), birthday);
    assert_eq!(
        awarded(&next),
        [(
            "birthday".into(),
            100,
            midnight(2025, 12, 10),
            midnight(2025, 12, 10)
        )]
    );
}

#[test]
fn birthday_bonus_rules() {
    // Enrolled after this year's birthday: not due until next year.
    let mut w = World::new();
    w.define(midnight(2024, 1, 1), birthday_programme(None));
    w.enrol(noon(2024, 6, 2));
    assert!(awarded(&w.tick_with_birthday(noon(2024, 6, 3), Some((6, 1)))).is_empty());
    // No birth date known (or erased): nothing.
    assert!(awarded(&w.tick_with_birthday(noon(2025, 6, 3), None)).is_empty());
    // 29 February is the 28th in a year without one.
    let mut w = World::new();
    w.define(midnight(2024, 1, 1), birthday_programme(None));
    w.enrol(noon(2024, 1, 2));
    let leap = Some((2, 29));
    assert!(awarded(&w.tick_with_birthday(noon(2025, 2, 27), leap)).is_empty());
    assert_eq!(
        awarded(&w.tick_with_birthday(midnight(2025, 2, 28), leap)),
        [(
            "birthday".into(),
            100,
            midnight(2025, 2, 28),
            midnight(2025, 2, 28)
        )]
    );
    // A lifetime cap of one award: the second year awards nothing.
    let mut w = World::new();
    w.define(
        midnight(2024, 1, 1),
        birthday_programme(Some(Cap {
            count: 1,
            period: CapPeriod::Lifetime,
        })),
    );
    w.enrol(noon(2024, 1, 2));
    assert_eq!(
        awarded(&w.tick_with_birthday(noon(2024, 5, 5), Some((5, 5)))).len(),
        1
    );
    assert!(awarded(&w.tick_with_birthday(noon(2025, 5, 5), Some((5, 5)))).is_empty());
    // A member who left gets nothing.
    let mut w = World::new();
    w.define(midnight(2024, 1, 1), birthday_programme(None));
    w.enrol(noon(2024, 1, 2));
    let left = decide::leave(&w.member, "moved away").unwrap();
    w.fold_plain(noon(2024, 2, 1), left);
    assert!(awarded(&w.tick_with_birthday(noon(2024, 5, 5), Some((5, 5)))).is_empty());
}

fn capped_programme(points: u64, period: CapPeriod) -> Programme {
    Programme {
        base_cap: Some(PointsCap { points, period }),
        ..programme()
    }
}

#[test]
fn given_a_monthly_base_cap_when_purchases_pass_it_then_only_what_is_left_is_earned() {
    let mut w = World::new();
    w.define(0, capped_programme(150, CapPeriod::Month));
    w.enrol(0);
    let first = w.buy(noon(2024, 1, 5), "O1", &[("x", 1, 10_000)]);
    assert_eq!(
        earned(&first),
        vec![("base".into(), 100), ("first_purchase".into(), 50)],
        "bonuses are not base points: the cap leaves them alone"
    );
    let second = w.buy(noon(2024, 1, 10), "O2", &[("x", 1, 10_000)]);
    assert_eq!(earned(&second), vec![("base".into(), 50)], "up to the cap");
    let third = w.buy(noon(2024, 1, 31), "O3", &[("x", 1, 10_000)]);
    assert_eq!(
        earned(&third),
        vec![("base".into(), 0)],
        "capped: a 0-point line still records the order and its spend"
    );
    let third_line = w.member.lines.iter().find(|l| l.order_id == "O3").unwrap();
    assert_eq!(third_line.spend_minor, 10_000);
    // A new calendar month earns again.
    let fourth = w.buy(noon(2024, 2, 1), "O4", &[("x", 1, 20_000)]);
    assert_eq!(earned(&fourth), vec![("base".into(), 150)]);
}

#[test]
fn given_a_capped_order_when_refunded_then_only_its_credited_points_are_cancelled_and_the_cap_frees_up()
 {
    let mut w = World::new();
    let mut p = capped_programme(150, CapPeriod::Month);
    p.bonuses.clear();
    w.define(0, p);
    w.enrol(0);
    w.buy(noon(2024, 1, 5), "O1", &[("x", 1, 10_000)]);
    w.buy(noon(2024, 1, 6), "O2", &[("x", 1, 10_000)]);
    // O2 was credited 50 of its 100: a full refund cancels those 50.
    let cancelled = w.refund(noon(2024, 1, 7), "O2", 10_000);
    assert!(
        matches!(&cancelled[..], [DomainEvent::PointsCancelled(c)] if c.points == 50),
        "{cancelled:?}"
    );
    // The refunded points no longer count against the month's cap.
    let again = w.buy(noon(2024, 1, 8), "O3", &[("x", 1, 10_000)]);
    assert_eq!(earned(&again), vec![("base".into(), 50)]);
    assert_eq!(w.member.balance(noon(2024, 2, 1)).available, 150);
}

#[test]
fn base_caps_per_day_year_and_lifetime_and_a_version_without_one() {
    for (period, second_day, next) in [
        (CapPeriod::Day, noon(2024, 1, 5) + HOUR_US, noon(2024, 1, 6)),
        (CapPeriod::Year, noon(2024, 12, 31), noon(2025, 1, 1)),
        (CapPeriod::Lifetime, noon(2030, 1, 1), noon(2031, 1, 1)),
    ] {
        let mut w = World::new();
        let mut p = capped_programme(60, period);
        p.bonuses.clear();
        p.lifetime = PointsLifetime::Never;
        w.define(0, p);
        w.enrol(0);
        assert_eq!(
            earned(&w.buy(noon(2024, 1, 5), "O1", &[("x", 1, 10_000)])),
            vec![("base".into(), 60)]
        );
        assert_eq!(
            earned(&w.buy(second_day, "O2", &[("x", 1, 10_000)])),
            vec![("base".into(), 0)],
            "{period:?}"
        );
        let later = earned(&w.buy(next, "O3", &[("x", 1, 10_000)]));
        let expected = if period == CapPeriod::Lifetime { 0 } else { 60 };
        assert_eq!(later, vec![("base".into(), expected)], "{period:?}");
    }
    // A later version without the cap earns in full again.
    let mut w = World::new();
    w.define(0, capped_programme(10, CapPeriod::Year));
    w.enrol(0);
    w.buy(noon(2024, 1, 5), "O1", &[("x", 1, 10_000)]);
    w.define(noon(2024, 2, 1), programme());
    let uncapped = w.buy(noon(2024, 2, 2), "O2", &[("x", 1, 10_000)]);
    assert_eq!(earned(&uncapped), vec![("base".into(), 100)]);
}

#[test]
fn given_a_spend_based_tier_then_capped_orders_still_count_their_spend() {
    let mut w = World::new();
    let mut p = capped_programme(100, CapPeriod::Month);
    p.tier_basis = TierBasis::Spend;
    p.tiers[1].threshold = 25_000;
    w.define(0, p);
    w.enrol(0);
    w.buy(noon(2024, 1, 5), "O1", &[("x", 1, 10_000)]);
    w.buy(noon(2024, 1, 6), "O2", &[("x", 1, 20_000)]);
    let programme = w.programme.at(noon(2024, 1, 7)).unwrap().clone();
    assert_eq!(
        decide::qualifying(&w.member, &programme, noon(2024, 1, 7)),
        30_000
    );
    let ticked = w.tick(noon(2024, 1, 7));
    assert!(
        ticked
            .iter()
            .any(|e| matches!(e, DomainEvent::TierChanged(t) if t.to_tier == "Silver")),
        "{ticked:?}"
    );
}

#[test]
fn a_base_cap_must_allow_at_least_one_point() {
    let p = capped_programme(0, CapPeriod::Month);
    let mut v = crate::domain::violations::Violations::new("");
    p.validate("programme", &mut v);
    let found = v.into_vec();
    assert!(
        found.iter().any(|f| f.field == "programme.base_cap_points"),
        "{found:?}"
    );
}

#[test]
fn a_bonus_may_not_take_a_built_in_rule_name() {
    let mut p = programme();
    p.bonuses[0].name = "base".into();
    let mut v = crate::domain::violations::Violations::new("");
    p.validate("programme", &mut v);
    let found = v.into_vec();
    assert!(
        found.iter().any(|f| f.field == "programme.bonuses[0].name"),
        "{found:?}"
    );
}
