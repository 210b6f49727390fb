//! RFM (recency, frequency, monetary) over customer profiles, as of a business date.
//! Pure and deterministic: the time is given, never read.
//!
//! Conventions (DESIGN §3, "Analytics fine print"):
//! - only orders and refunds with `occurred_at ≤ as_of` count, in one currency (money is
//!   never summed across currencies): a customer with no order in that currency by then
//!   has no row;
//! - recency = whole days from the last order to `as_of` (floor); frequency = number of
//!   orders; monetary = order totals minus refunds (net, not the average);
//! - scores 1–5 by rank quintiles over the customers that have a row: customers are
//!   ranked from worst to best (recency: most days first; frequency and monetary:
//!   smallest first) and the customer at rank `i` of `n` (from 0) scores
//!   `1 + ⌊5·i / n⌋`. **Ties** are broken by customer id, ascending: of two customers with
//!   equal values, the smaller id ranks lower, so equal values may straddle a quintile
//!   boundary but the scores are reproducible;
//! - the segment is read from (r, f) in a grid ([`SegmentGrid`]), first match wins.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::profile::{Profile, ProfileStatus};

const DAY_US: i64 = 86_400_000_000;

/// One customer's RFM row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RfmRow {
    /// The customer.
    pub customer_id: Uuid,
    /// Whole days from the last order to `as_of`.
    pub recency_days: i64,
    /// Orders.
    pub frequency: u64,
    /// Net spent, minor units.
    pub monetary_minor: i64,
    /// Recency score 1–5 (5: most recent).
    pub r: u8,
    /// Frequency score 1–5.
    pub f: u8,
    /// Monetary score 1–5.
    pub m: u8,
    /// The segment's name.
    pub segment: String,
}

/// One rule of a segment grid: recency and frequency score ranges (inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridRule {
    /// Segment name.
    pub name: String,
    /// Recency scores.
    pub r: (u8, u8),
    /// Frequency scores.
    pub f: (u8, u8),
}

/// An ordered list of rules from (r, f) to a segment name; the first match wins, and a
/// score pair no rule matches is `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentGrid {
    /// The rules, in order.
    pub rules: Vec<GridRule>,
}

impl Default for SegmentGrid {
    /// The common RFM grid over (r, f) with eleven segments.
    fn default() -> Self {
        let rule = |name: &str, r: (u8, u8), f: (u8, u8)| GridRule {
            name: name.to_owned(),
            r,
            f,
        };
        Self {
            rules: vec![
                rule("Champions", (5, 5), (4, 5)),
                rule("Loyal", (3, 4), (4, 5)),
                rule("Potential loyalists", (4, 5), (2, 3)),
                rule("New", (5, 5), (1, 1)),
                rule("Promising", (4, 4), (1, 1)),
                rule("Need attention", (3, 3), (3, 3)),
                rule("About to sleep", (3, 3), (1, 2)),
                rule("Can't lose", (1, 1), (5, 5)),
                rule("At risk", (1, 2), (3, 5)),
                rule("Lost", (1, 1), (1, 1)),
                rule("Hibernating", (1, 2), (1, 2)),
            ],
        }
    }
}

impl SegmentGrid {
    /// The segment of a score pair.
    pub fn segment(&self, r: u8, f: u8) -> &str {
        self.rules
            .iter()
            .find(|rule| (rule.r.0..=rule.r.1).contains(&r) && (rule.f.0..=rule.f.1).contains(&f))
            .map_or("Other", |rule| rule.name.as_str())
    }
}

/// The currency with the most orders by `as_of_us` over `profiles` (ties: alphabetical);
/// analytics default to it when no currency is asked for.
pub fn busiest_currency<'a>(
    profiles: impl IntoIterator<Item = &'a Profile>,
    as_of_us: i64,
) -> Option<String> {
    let mut orders: BTreeMap<&str, u64> = BTreeMap::new();
    for fact in profiles.into_iter().flat_map(|p| &p.purchases.money) {
        if fact.order && fact.at_us <= as_of_us {
            *orders.entry(fact.currency.as_str()).or_default() += 1;
        }
    }
    orders
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(currency, _)| currency.to_owned())
}

/// Recency, frequency and monetary of one profile in `currency` as of `as_of_us`; `None`
/// when it has no order in that currency by then.
pub fn measure(profile: &Profile, currency: &str, as_of_us: i64) -> Option<(i64, u64, i64)> {
    let mut last = None;
    let mut orders = 0u64;
    let mut net = 0i64;
    for fact in &profile.purchases.money {
        if fact.currency != currency || fact.at_us > as_of_us {
            continue;
        }
        net = net.saturating_add(fact.amount_minor);
        if fact.order {
            orders += 1;
            last = Some(last.map_or(fact.at_us, |l: i64| l.max(fact.at_us)));
        }
    }
    let last = last?;
    Some(((as_of_us - last).div_euclid(DAY_US), orders, net))
}

fn quintile_scores<K: Ord>(keys: &[(K, Uuid)]) -> BTreeMap<Uuid, u8> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    let n = keys.len().max(1);
    order
        .into_iter()
        .enumerate()
        .map(|(rank, index)| (keys[index].1, 1 + (5 * rank / n) as u8))
        .collect()
}

/// RFM rows of every live (or erased: their numbers stay) customer with an order in
/// `currency` by `as_of_us`, in customer id order. Merged duplicates have no row: their
/// history counts for their survivor.
pub fn rfm<'a>(
    profiles: impl IntoIterator<Item = &'a Profile>,
    currency: &str,
    as_of_us: i64,
    grid: &SegmentGrid,
) -> Vec<RfmRow> {
    let mut measured: Vec<(Uuid, i64, u64, i64)> = profiles
        .into_iter()
        .filter(|p| !matches!(p.status, ProfileStatus::Merged { .. }))
        .filter_map(|p| measure(p, currency, as_of_us).map(|(r, f, m)| (p.customer_id, r, f, m)))
        .collect();
    measured.sort_by_key(|row| row.0);
    // Worst first: most days since the last order, fewest orders, least spent.
    let recency: Vec<(std::cmp::Reverse<i64>, Uuid)> = measured
        .iter()
        .map(|&(id, days, _, _)| (std::cmp::Reverse(days), id))
        .collect();
    let frequency: Vec<(u64, Uuid)> = measured.iter().map(|&(id, _, f, _)| (f, id)).collect();
    let monetary: Vec<(i64, Uuid)> = measured.iter().map(|&(id, _, _, m)| (m, id)).collect();
    let (r, f, m) = (
        quintile_scores(&recency),
        quintile_scores(&frequency),
        quintile_scores(&monetary),
    );
    measured
        .into_iter()
        .map(|(id, recency_days, frequency, monetary_minor)| {
            let (r, f, m) = (r[&id], f[&id], m[&id]);
            RfmRow {
                customer_id: id,
                recency_days,
                frequency,
                monetary_minor,
                r,
                f,
                m,
                segment: grid.segment(r, f).to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::profile::MoneyFact;

    fn day(n: i64) -> i64 {
        n * DAY_US
    }

    fn customer(n: u128, orders: &[(i64, i64)], refunds: &[(i64, i64)]) -> Profile {
        let mut p = Profile::new(Uuid::from_u128(n));
        p.status = ProfileStatus::Active;
        for &(at, amount) in orders {
            p.purchases.money.push(MoneyFact {
                at_us: at,
                currency: "EUR".into(),
                amount_minor: amount,
                order: true,
            });
        }
        for &(at, amount) in refunds {
            p.purchases.money.push(MoneyFact {
                at_us: at,
                currency: "EUR".into(),
                amount_minor: -amount,
                order: false,
            });
        }
        p
    }

    /// Five customers, hand-computed as of day 100 (each metric ranks them differently).
    #[test]
    fn hand_computed_scores() {
        let profiles = vec![
            // last order day 99 (1 day ago), 1 order, 500 net
            customer(1, &[(day(99), 500)], &[]),
            // last day 50 (50 days), 3 orders, 3000 - 1000 refunded = 2000
            customer(
                2,
                &[(day(10), 1000), (day(30), 1000), (day(50), 1000)],
                &[(day(60), 1000)],
            ),
            // last day 90 (10 days), 2 orders, 10 000
            customer(3, &[(day(80), 5000), (day(90) + 5, 5000)], &[]),
            // last day 1 (99 days), 5 orders, 100
            customer(
                4,
                &[
                    (day(0), 20),
                    (day(0), 20),
                    (day(1), 20),
                    (day(1), 20),
                    (day(1), 20),
                ],
                &[],
            ),
            // last day 70 (30 days; the order of day 120 is after as_of), 1 order, 700
            customer(5, &[(day(70), 700), (day(120), 9999)], &[]),
        ];
        let rows = rfm(&profiles, "EUR", day(100), &SegmentGrid::default());
        let got: Vec<(u128, i64, u64, i64, u8, u8, u8)> = rows
            .iter()
            .map(|r| {
                (
                    r.customer_id.as_u128(),
                    r.recency_days,
                    r.frequency,
                    r.monetary_minor,
                    r.r,
                    r.f,
                    r.m,
                )
            })
            .collect();
        // recency ranks (worst first): 4 (99d), 2 (50d), 5 (30d), 3 (9d), 1 (1d) → 1..5
        // frequency ranks: 1 (1, id 1), 5 (1, id 5), 3 (2), 2 (3), 4 (5) → 1..5
        // monetary ranks: 4 (100), 1 (500), 5 (700), 2 (2000), 3 (10 000) → 1..5
        assert_eq!(
            got,
            vec![
                (1, 1, 1, 500, 5, 1, 2),
                (2, 50, 3, 2000, 2, 4, 4),
                (3, 9, 2, 10_000, 4, 3, 5),
                (4, 99, 5, 100, 1, 5, 1),
                (5, 30, 1, 700, 3, 2, 3),
            ]
        );
        let segments: Vec<&str> = rows.iter().map(|r| r.segment.as_str()).collect();
        assert_eq!(
            segments,
            [
                "New",
                "At risk",
                "Potential loyalists",
                "Can't lose",
                "About to sleep"
            ]
        );
    }

    #[test]
    fn no_order_by_then_no_row_and_other_currencies_do_not_count() {
        let mut usd = customer(7, &[], &[]);
        usd.purchases.money.push(MoneyFact {
            at_us: day(1),
            currency: "USD".into(),
            amount_minor: 100,
            order: true,
        });
        let later = customer(8, &[(day(200), 100)], &[]);
        let mut merged = customer(9, &[(day(1), 100)], &[]);
        merged.status = ProfileStatus::Merged {
            into: Uuid::from_u128(1),
        };
        assert!(
            rfm(
                &[usd, later, merged],
                "EUR",
                day(100),
                &SegmentGrid::default()
            )
            .is_empty()
        );
    }

    #[test]
    fn recency_is_whole_days_rounded_down() {
        let p = customer(1, &[(day(10) + 1, 5)], &[]);
        assert_eq!(measure(&p, "EUR", day(12)), Some((1, 1, 5)));
        assert_eq!(measure(&p, "EUR", day(10) + 1), Some((0, 1, 5)));
    }
}
