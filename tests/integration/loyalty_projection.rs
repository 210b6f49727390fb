//! Invariants of the loyalty ledger, the policy and the read model, for random histories
//! of enrolments, purchases, refunds, spends, merges of customers (the duplicate's ledger
//! moves to the survivor), ticks and policy rounds, with and without a monthly cap on
//! base points (with a restart of
//! the projection runner and a replay of the policy from position 1):
//! - balance = Σ ledger: every member's entries add up to its lines' remaining points
//!   less its debt, and after a tick at time T to its available + pending at T;
//! - never below the configured floor: the debt never exceeds the programme's limit and
//!   no prefix of the ledger goes below −limit;
//! - the read model built incrementally equals a rebuild from scratch, byte for byte,
//!   and each member equals the fold of its stream (the as-of code);
//! - a replay of the policy from position 1 awards nothing new, and every source is
//!   accounted for at most once per rule.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rapport::domain::DomainEvent;
use rapport::domain::common::Channel;
use rapport::domain::events::{
    CustomersMerged, MemberEnrolled, ProgrammeDefined, PurchaseCompleted, PurchaseLine,
    PurchaseRefunded,
};
use rapport::domain::loyalty::config::{
    Bonus, BonusTrigger, CapPeriod, DowngradePolicy, PointsCap, PointsLifetime, Programme, Tier,
    TierBasis,
};
use rapport::domain::loyalty::decide;
use rapport::domain::loyalty::ledger::{EntryKind, PROGRAMME_STREAM, member_stream};
use rapport::domain::loyalty::time::{DAY_US, midnight};
use rapport::log::{ExpectedRevision, Log, LogConfig, ProposedEvent, StreamAppend, StreamName};
use rapport::loyalty_job::{self, POLICY_TREE, Policy};
use rapport::projections::loyalty::{self as read_model, LoyaltyProjection};
use rapport::projections::{Projection, Projections, rebuild_offline};
use uuid::Uuid;

#[derive(Clone, Debug)]
enum Op {
    Enrol(u8),
    Purchase(u8, u32),
    /// Refund of the customer's n-th order (mod orders), in percent of it.
    Refund(u8, u8, u8),
    Spend(u8, u16),
    /// The first customer is merged into the second (when neither is merged yet).
    Merge(u8, u8),
    Tick,
    Follow,
    /// Days pass.
    Wait(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3).prop_map(Op::Enrol),
        6 => (0u8..3, 1u32..40_000).prop_map(|(c, a)| Op::Purchase(c, a)),
        2 => (0u8..3, 0u8..8, 1u8..=100).prop_map(|(c, o, p)| Op::Refund(c, o, p)),
        3 => (0u8..3, 1u16..500).prop_map(|(c, p)| Op::Spend(c, p)),
        1 => (0u8..3, 0u8..3).prop_map(|(d, s)| Op::Merge(d, s)),
        1 => Just(Op::Tick),
        2 => Just(Op::Follow),
        3 => (1u8..40).prop_map(Op::Wait),
    ]
}

fn customer(n: u8) -> Uuid {
    Uuid::from_u128(0xc0 << 64 | u128::from(n))
}

fn programme(debt_max_points: u64, holding_days: u32, base_cap: Option<u64>) -> Programme {
    Programme {
        name: "prop".into(),
        currency: "EUR".into(),
        points_per_unit: 1,
        minor_per_unit: 100,
        multipliers: Vec::new(),
        bonuses: vec![Bonus {
            name: "first".into(),
            trigger: BonusTrigger::FirstPurchase,
            points: 25,
            cap: None,
        }],
        lifetime: PointsLifetime::Days(60),
        holding_days,
        min_redemption_points: 1,
        debt_max_points,
        tiers: vec![
            Tier {
                name: "Base".into(),
                threshold: 0,
                multiplier_percent: 100,
            },
            Tier {
                name: "Gold".into(),
                threshold: 500,
                multiplier_percent: 150,
            },
        ],
        tier_basis: TierBasis::PointsEarned,
        tier_window_months: 2,
        downgrade: DowngradePolicy::WindowDrop,
        base_cap: base_cap.map(|points| PointsCap {
            points,
            period: CapPeriod::Month,
        }),
    }
}

async fn append(
    log: &Log,
    stream: &str,
    event: DomainEvent,
    at_us: i64,
    expected: ExpectedRevision,
) -> bool {
    log.append(StreamAppend {
        stream: StreamName::parse(stream).unwrap(),
        expected,
        events: vec![ProposedEvent {
            event_id: Some(Uuid::now_v7()),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.encode().unwrap(),
            occurred_at_us: Some(at_us),
            ..Default::default()
        }],
    })
    .await
    .is_ok()
}

fn member(log: &Log, c: u8) -> (rapport::domain::loyalty::Member, Option<u64>) {
    read_model::fold_member_as_of(log, customer(c), &|_| true).unwrap()
}

fn run_case(
    ops: Vec<Op>,
    debt_max: u64,
    holding: u32,
    base_cap: Option<u64>,
    restart_at: usize,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(LogConfig::new(dir.path())).unwrap();
        let projection: Arc<dyn Projection> = Arc::new(LoyaltyProjection);
        let mut running = Projections::start(log.clone(), vec![projection.clone()]).unwrap();
        let mut policy = Policy::open(&log).unwrap();
        let mut now = midnight(2024, 1, 1);
        let p = programme(debt_max, holding, base_cap);
        append(
            &log,
            PROGRAMME_STREAM,
            DomainEvent::ProgrammeDefined(ProgrammeDefined {
                programme: p.clone(),
            }),
            now,
            ExpectedRevision::NoStream,
        )
        .await;
        let mut orders: Vec<Vec<(String, i64)>> = vec![Vec::new(); 3];
        // Customer → the customer it was merged into (no chains into merged ones).
        let mut merged_into: [Option<u8>; 3] = [None; 3];
        // Where the services send a command for customer c: its survivor, as they resolve.
        let resolve = |merged_into: &[Option<u8>; 3], mut c: u8| {
            while let Some(next) = merged_into[c as usize] {
                c = next;
            }
            c
        };
        for (i, op) in ops.iter().enumerate() {
            if i == restart_at {
                running.shutdown();
                running = Projections::start(log.clone(), vec![projection.clone()]).unwrap();
            }
            now += DAY_US / 4;
            match *op {
                Op::Enrol(c) => {
                    let c = resolve(&merged_into, c);
                    if !member(&log, c).0.is_active() {
                        let e = DomainEvent::MemberEnrolled(MemberEnrolled {
                            customer_id: customer(c),
                            channel: Channel::Web,
                        });
                        append(
                            &log,
                            &member_stream(customer(c)),
                            e,
                            now,
                            ExpectedRevision::Any,
                        )
                        .await;
                    }
                }
                Op::Purchase(c, amount) => {
                    let order = format!("o{i}");
                    orders[c as usize].push((order.clone(), i64::from(amount)));
                    let e = DomainEvent::PurchaseCompleted(PurchaseCompleted {
                        customer_id: customer(c),
                        order_id: order,
                        lines: vec![PurchaseLine {
                            sku: "s".into(),
                            name: String::new(),
                            category: "c".into(),
                            quantity: 1,
                            unit_price_minor: i64::from(amount),
                        }],
                        total_minor: i64::from(amount),
                        currency: "EUR".into(),
                        channel: Channel::Store,
                        store_id: String::new(),
                    });
                    append(
                        &log,
                        &format!("customer-{}", customer(c)),
                        e,
                        now,
                        ExpectedRevision::Any,
                    )
                    .await;
                }
                Op::Refund(c, n, percent) => {
                    let list = &orders[c as usize];
                    if !list.is_empty() {
                        let (order, total) = list[n as usize % list.len()].clone();
                        let amount = (total * i64::from(percent) / 100).max(1);
                        let e = DomainEvent::PurchaseRefunded(PurchaseRefunded {
                            customer_id: customer(c),
                            order_id: order,
                            refund_id: format!("r{i}"),
                            lines: Vec::new(),
                            amount_minor: amount,
                            currency: "EUR".into(),
                            reason: String::new(),
                        });
                        append(
                            &log,
                            &format!("customer-{}", customer(c)),
                            e,
                            now,
                            ExpectedRevision::Any,
                        )
                        .await;
                    }
                }
                Op::Spend(c, points) => {
                    // As the service does: decide on the stream at revision r, append expecting r.
                    let c = resolve(&merged_into, c);
                    let (m, revision) = member(&log, c);
                    if let Ok(events) =
                        decide::spend(&m, Some(&p), u64::from(points), "prop", Uuid::now_v7(), now)
                    {
                        let expected =
                            revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                        prop_assert!(
                            append(
                                &log,
                                &member_stream(customer(c)),
                                events[0].clone(),
                                now,
                                expected
                            )
                            .await
                        );
                    }
                }
                Op::Merge(d, survivor) => {
                    if d != survivor
                        && merged_into[d as usize].is_none()
                        && merged_into[survivor as usize].is_none()
                    {
                        merged_into[d as usize] = Some(survivor);
                        let e = DomainEvent::CustomersMerged(CustomersMerged {
                            survivor_id: customer(survivor),
                            duplicate_id: customer(d),
                        });
                        append(
                            &log,
                            &format!("customer-{}", customer(d)),
                            e,
                            now,
                            ExpectedRevision::Any,
                        )
                        .await;
                    }
                }
                Op::Tick => {
                    let members: Vec<Uuid> = (0..3).map(customer).collect();
                    loyalty_job::tick(&log, members, now, &loyalty_job::no_birthdays())
                        .await
                        .unwrap();
                }
                Op::Follow => {
                    loyalty_job::follow(&log, &mut policy).await.unwrap();
                }
                Op::Wait(days) => now += i64::from(days) * DAY_US,
            }
        }
        loyalty_job::follow(&log, &mut policy).await.unwrap();
        loyalty_job::tick(
            &log,
            (0..3).map(customer).collect::<Vec<_>>(),
            now,
            &loyalty_job::no_birthdays(),
        )
        .await
        .unwrap();

        // A replay of the policy from position 1 awards nothing new.
        let head = log.head().position;
        drop(policy);
        log.db().drop_tree(POLICY_TREE).unwrap();
        let mut replay = Policy::open(&log).unwrap();
        prop_assert_eq!(replay.checkpoint(), 0);
        let replayed = loyalty_job::follow(&log, &mut replay).await.unwrap();
        prop_assert_eq!(replayed.awards, 0);
        prop_assert_eq!(log.head().position, head);

        let view = running
            .wait_for(read_model::NAME, head, Duration::from_secs(20))
            .await
            .unwrap();
        for c in 0..3u8 {
            let (folded, _) = member(&log, c);
            let stored = read_model::read_member(&view.tree, customer(c)).unwrap();
            if folded.entries.is_empty() {
                prop_assert!(stored.is_none());
                continue;
            }
            prop_assert_eq!(
                stored.as_ref(),
                Some(&folded),
                "read model equals the stream's fold"
            );
            let m = folded;
            if let Some(s) = merged_into[c as usize]
                && m.merged_into.is_some()
            {
                // (A duplicate that was no member at the merge keeps what it had.)
                // A moved ledger: nothing left, its id names the survivor.
                prop_assert_eq!(m.merged_into, Some(customer(s)));
                prop_assert_eq!(m.remaining(), 0);
                prop_assert_eq!(m.debt, 0);
            }
            // Balance = Σ ledger.
            let sum: i64 = m.entries.iter().map(|e| e.points).sum();
            prop_assert_eq!(sum, m.remaining() as i64 - m.debt as i64);
            let b = m.balance(now);
            if m.is_active() {
                // The last tick ran at `now`: nothing lapsed is left unexpired.
                prop_assert_eq!(
                    sum,
                    b.available + b.pending as i64,
                    "balance = Σ ledger at {}",
                    now
                );
            }
            // Never below the floor.
            prop_assert!(m.debt <= debt_max);
            let mut running_sum = 0i64;
            for e in &m.entries {
                running_sum += e.points;
                prop_assert!(
                    running_sum >= -(debt_max as i64),
                    "prefix {} below -{}",
                    running_sum,
                    debt_max
                );
            }
            // Each (source, rule) earned at most once; each source cancelled at most once.
            let mut seen = BTreeSet::new();
            for e in m
                .entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::Earned | EntryKind::Cancelled))
            {
                prop_assert!(
                    seen.insert((e.cause, e.detail.clone(), e.kind == EntryKind::Earned)),
                    "twice: {:?}",
                    e
                );
            }
        }
        let incremental = read_model::digest(&view.tree).unwrap();
        drop(view);
        running.shutdown();
        rebuild_offline(&log, projection.clone(), &mut |_| {}).unwrap();
        let running = Projections::start(log.clone(), vec![projection]).unwrap();
        let rebuilt = read_model::digest(&running.reader(read_model::NAME).unwrap().tree).unwrap();
        prop_assert_eq!(incremental, rebuilt);
        running.shutdown();
        log.shutdown();
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn ledger_policy_and_read_model_invariants(
        ops in proptest::collection::vec(op(), 1..60),
        debt_max in prop_oneof![Just(0u64), Just(100u64), Just(1_000u64)],
        holding in prop_oneof![Just(0u32), Just(10u32)],
        base_cap in prop_oneof![Just(None), Just(Some(500u64))],
        restart_at in 0usize..60,
    ) {
        run_case(ops, debt_max, holding, base_cap, restart_at)?;
    }
}
