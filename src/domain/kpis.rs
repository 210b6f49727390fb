//! CRM dashboard KPIs over customer profiles for a business-time period `[start, end)`.
//! Pure and deterministic: the period is given, never read from a clock.
//!
//! Definitions (retail is non-contractual: a customer "is a customer" in a period when
//! they order in it):
//! - `customers_total`: registered customers (merged duplicates count once, for their
//!   survivor) registered before `end`; `new_customers`: registered in the period;
//! - `active`: customers with at least one order in the period; `active_before`: in the
//!   previous period of the same length; `first_time`: whose first order ever is in the
//!   period;
//! - retention = (active − first_time) / active_before — the (E − N) / S formula with E, N,
//!   S counted in orders; churn = 1 − retention; both absent when `active_before` is 0;
//! - repeat purchase rate: of customers with an order before `end`, the share with two or
//!   more; purchase frequency: orders in the period / active customers;
//! - revenue and average order value per currency (orders minus refunds in the period;
//!   never summed across currencies);
//! - NPS: over each customer's latest NPS response given before `end` (profiles keep the
//!   latest response only): % promoters (9–10) − % detractors (0–6);
//! - cohorts: customers by the month of their first order (UTC), and per month since, how
//!   many of them ordered in it, up to the month of `end`.
//!
//! Rates are in basis points (1/100 of a percent) — no floats.

use std::collections::{BTreeMap, BTreeSet};

use super::events::FeedbackMetric;
use super::profile::{Profile, ProfileStatus};

/// Revenue and orders in one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurrencyKpis {
    /// Orders in the period.
    pub orders: u64,
    /// Order totals minus refunds in the period, minor units.
    pub revenue_minor: i64,
    /// Order totals / orders, rounded down.
    pub average_order_minor: i64,
}

/// One first-purchase cohort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cohort {
    /// `YYYY-MM` of the first order.
    pub month: String,
    /// Customers whose first order is in that month.
    pub customers: u64,
    /// For month 0, 1, 2, … after: how many of them ordered in that month.
    pub retained: Vec<u64>,
}

/// The KPIs of one period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kpis {
    /// Registered before the end.
    pub customers_total: u64,
    /// Registered in the period.
    pub new_customers: u64,
    /// Ordered in the period.
    pub active_customers: u64,
    /// Ordered in the previous period of the same length.
    pub active_previous: u64,
    /// First order ever in the period.
    pub first_time_customers: u64,
    /// (active − first-time) / active previous, basis points.
    pub retention_bp: Option<u64>,
    /// 10 000 − retention, basis points (0 when retention exceeds 100 %).
    pub churn_bp: Option<u64>,
    /// Customers with two or more orders / with one or more, before the end; basis points.
    pub repeat_purchase_bp: Option<u64>,
    /// Orders in the period per active customer, in hundredths.
    pub purchase_frequency_centi: Option<u64>,
    /// Per currency.
    pub by_currency: BTreeMap<String, CurrencyKpis>,
    /// NPS (−100..100) over latest responses before the end, and how many responses.
    pub nps: Option<(i64, u64)>,
    /// First-purchase cohorts, oldest first.
    pub cohorts: Vec<Cohort>,
}

/// Days since 1970-01-01 → (year, month) in the proleptic Gregorian calendar.
fn year_month(us: i64) -> (i64, u32) {
    // Howard Hinnant's civil_from_days.
    let z = us.div_euclid(86_400_000_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

fn month_index(us: i64) -> i64 {
    let (y, m) = year_month(us);
    y * 12 + i64::from(m) - 1
}

fn bp(numerator: u64, denominator: u64) -> Option<u64> {
    (denominator > 0).then(|| numerator * 10_000 / denominator)
}

/// Computes the KPIs of `[start_us, end_us)` over `profiles`; at most `cohorts_max`
/// cohorts (the latest ones).
pub fn kpis<'a>(
    profiles: impl IntoIterator<Item = &'a Profile>,
    start_us: i64,
    end_us: i64,
    cohorts_max: usize,
) -> Kpis {
    let length = end_us.saturating_sub(start_us);
    let previous_start = start_us.saturating_sub(length);
    let mut k = Kpis::default();
    let (mut with_orders, mut repeaters) = (0u64, 0u64);
    let mut orders_in_period = 0u64;
    let (mut promoters, mut detractors, mut responses) = (0u64, 0u64, 0u64);
    // cohort month → (customers, per month offset: customers who ordered)
    let mut cohorts: BTreeMap<i64, (u64, BTreeMap<i64, u64>)> = BTreeMap::new();
    let mut order_totals: BTreeMap<String, i64> = BTreeMap::new();
    for p in profiles {
        if p.registered.is_none() || matches!(p.status, ProfileStatus::Merged { .. }) {
            continue;
        }
        let registered = p.registered.map_or(i64::MAX, |(at, _)| at);
        if registered < end_us {
            k.customers_total += 1;
            if registered >= start_us {
                k.new_customers += 1;
            }
        }
        let orders: Vec<_> = p
            .purchases
            .money
            .iter()
            .filter(|f| f.order && f.at_us < end_us)
            .collect();
        let first = orders.iter().map(|f| f.at_us).min();
        let (mut active, mut active_before) = (false, false);
        for fact in &p.purchases.money {
            if fact.at_us >= start_us && fact.at_us < end_us {
                let c = k.by_currency.entry(fact.currency.clone()).or_default();
                c.revenue_minor = c.revenue_minor.saturating_add(fact.amount_minor);
                if fact.order {
                    c.orders += 1;
                    orders_in_period += 1;
                    active = true;
                    let total = order_totals.entry(fact.currency.clone()).or_default();
                    *total = total.saturating_add(fact.amount_minor);
                }
            } else if fact.order && fact.at_us >= previous_start && fact.at_us < start_us {
                active_before = true;
            }
        }
        k.active_customers += u64::from(active);
        k.active_previous += u64::from(active_before);
        if let Some(first) = first {
            with_orders += 1;
            repeaters += u64::from(orders.len() >= 2);
            if first >= start_us {
                k.first_time_customers += 1;
            }
            let cohort = month_index(first);
            let entry = cohorts.entry(cohort).or_default();
            entry.0 += 1;
            let months: BTreeSet<i64> = orders
                .iter()
                .map(|f| month_index(f.at_us) - cohort)
                .collect();
            for offset in months {
                *entry.1.entry(offset).or_default() += 1;
            }
        }
        if let Some(score) = p.feedback.get(&FeedbackMetric::Nps)
            && let Some((latest, at, _)) = score.latest
            && at < end_us
        {
            responses += 1;
            promoters += u64::from(latest >= 9);
            detractors += u64::from(latest <= 6);
        }
    }
    // The average order is over order totals (revenue nets refunds, it does not).
    for (currency, c) in k.by_currency.iter_mut() {
        let total = order_totals.get(currency).copied().unwrap_or(0);
        c.average_order_minor = total.checked_div(c.orders as i64).unwrap_or(0);
    }
    k.retention_bp = bp(
        k.active_customers.saturating_sub(k.first_time_customers),
        k.active_previous,
    );
    k.churn_bp = k.retention_bp.map(|r| 10_000u64.saturating_sub(r));
    k.repeat_purchase_bp = bp(repeaters, with_orders);
    k.purchase_frequency_centi =
        (k.active_customers > 0).then(|| orders_in_period * 100 / k.active_customers);
    k.nps = (responses > 0).then(|| {
        (
            (promoters as i64 - detractors as i64) * 100 / responses as i64,
            responses,
        )
    });
    let end_month = month_index(end_us.saturating_sub(1));
    let skip = cohorts.len().saturating_sub(cohorts_max);
    k.cohorts = cohorts
        .into_iter()
        .skip(skip)
        .map(|(month, (customers, retained))| {
            let span = (end_month - month).max(0) as usize + 1;
            let mut row = vec![0u64; span];
            for (offset, n) in retained {
                if let Some(slot) = usize::try_from(offset).ok().and_then(|o| row.get_mut(o)) {
                    *slot = n;
                }
            }
            Cohort {
                month: format!(
                    "{:04}-{:02}",
                    month.div_euclid(12),
                    month.rem_euclid(12) + 1
                ),
                customers,
                retained: row,
            }
        })
        .collect();
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::profile::{MoneyFact, ScoreSummary};
    use uuid::Uuid;

    const DAY: i64 = 86_400_000_000;
    /// 2024-01-01T00:00:00Z.
    const JAN: i64 = 1_704_067_200_000_000;

    fn customer(n: u128, registered: i64, orders: &[(i64, i64)], nps: Option<u8>) -> Profile {
        let mut p = Profile::new(Uuid::from_u128(n));
        p.status = ProfileStatus::Active;
        p.registered = Some((registered, 1));
        for &(at, amount) in orders {
            p.purchases.money.push(MoneyFact {
                at_us: at,
                currency: "EUR".into(),
                amount_minor: amount,
                order: true,
            });
        }
        if let Some(score) = nps {
            p.feedback.insert(
                FeedbackMetric::Nps,
                ScoreSummary {
                    count: 1,
                    sum: u64::from(score),
                    latest: Some((score, registered, 1)),
                },
            );
        }
        p
    }

    #[test]
    fn calendar_months() {
        assert_eq!(year_month(JAN), (2024, 1));
        assert_eq!(year_month(JAN + 59 * DAY), (2024, 2)); // 2024-02-29
        assert_eq!(year_month(JAN + 60 * DAY), (2024, 3));
        assert_eq!(year_month(JAN - 1), (2023, 12));
        assert_eq!(year_month(0), (1970, 1));
    }

    /// Period: February 2024 (29 days); previous period: the 29 days before.
    #[test]
    fn a_hand_computed_month() {
        let feb = JAN + 31 * DAY;
        let mar = feb + 29 * DAY;
        let profiles = vec![
            // Ordered in January and February: retained; promoter.
            customer(
                1,
                JAN,
                &[(JAN + 10 * DAY, 1000), (feb + DAY, 3000)],
                Some(10),
            ),
            // Ordered in January only: churned; detractor.
            customer(2, JAN, &[(JAN + 20 * DAY, 500)], Some(3)),
            // New in February, first order in February; passive.
            customer(3, feb + 2 * DAY, &[(feb + 3 * DAY, 2000)], Some(8)),
            // Registered in February, never ordered.
            customer(4, feb + 5 * DAY, &[], None),
            // Registered in March: not counted.
            customer(5, mar + DAY, &[(mar + DAY, 100)], None),
        ];
        let k = kpis(&profiles, feb, mar, 12);
        assert_eq!(k.customers_total, 4);
        assert_eq!(k.new_customers, 2);
        assert_eq!(k.active_customers, 2);
        assert_eq!(k.active_previous, 2);
        assert_eq!(k.first_time_customers, 1);
        // (E − N) / S = (2 − 1) / 2.
        assert_eq!(k.retention_bp, Some(5_000));
        assert_eq!(k.churn_bp, Some(5_000));
        // Of 3 customers with orders before March, 1 has two or more.
        assert_eq!(k.repeat_purchase_bp, Some(3_333));
        assert_eq!(k.purchase_frequency_centi, Some(100));
        assert_eq!(
            k.by_currency["EUR"],
            CurrencyKpis {
                orders: 2,
                revenue_minor: 5_000,
                average_order_minor: 2_500
            }
        );
        // 1 promoter, 1 detractor, 1 passive: 0.
        assert_eq!(k.nps, Some((0, 3)));
        assert_eq!(
            k.cohorts,
            vec![
                Cohort {
                    month: "2024-01".into(),
                    customers: 2,
                    retained: vec![2, 1],
                },
                Cohort {
                    month: "2024-02".into(),
                    customers: 1,
                    retained: vec![1],
                },
            ]
        );
    }
}
