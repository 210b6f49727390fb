//! The Loyalty service over a real server with a manual clock: the README's worked
//! example end to end (config change mid-history, refund after a partial spend, debt,
//! tier upgrade and downgrade, expiry boundary, as-of answers), exactly-once earning by
//! the policy, 32 concurrent redemptions that never overdraw, and the error codes.

use std::sync::Arc;
use std::time::Duration;

use rapport::clock::{Clock, ManualClock};
use rapport::domain::loyalty::time::midnight;
use rapport::grpc::pb;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::grpc::pb::event_store_client::EventStoreClient;
use rapport::grpc::pb::loyalty_client::LoyaltyClient;
use rapport::grpc::{RunningServer, ServerConfig, start_with};
use rapport::log::LogConfig;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

const HOUR_US: i64 = 3_600_000_000;

fn noon(y: i64, m: u32, d: u32) -> i64 {
    midnight(y, m, d) + 12 * HOUR_US
}

fn ts(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

fn at(us: i64) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        occurred_at: Some(ts(us)),
        ..Default::default()
    })
}

struct Env {
    server: RunningServer,
    _dir: tempfile::TempDir,
    clock: ManualClock,
    loyalty: LoyaltyClient<Channel>,
    customers: CustomersClient<Channel>,
}

impl Env {
    async fn start(now_us: i64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(now_us);
        let mut log = LogConfig::new(dir.path().join("data"));
        log.clock = Arc::new(clock.clone());
        let server = start_with(
            ServerConfig {
                log,
                master_key_file: None,
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let loyalty = LoyaltyClient::connect(server.url()).await.unwrap();
        let customers = CustomersClient::connect(server.url()).await.unwrap();
        Self {
            server,
            _dir: dir,
            clock,
            loyalty,
            customers,
        }
    }

    /// Moves the server's clock (the default business time and the scheduled tick's).
    fn set_clock(&self, us: i64) {
        self.clock.advance(us - self.clock.now_us());
    }

    async fn register(&mut self) -> String {
        self.customers
            .register_customer(pb::RegisterCustomerRequest {
                given_name: "Ada".into(),
                context: at(midnight(2023, 12, 1)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .customer_id
    }

    async fn enrol(&mut self, id: &str, when: i64) {
        self.loyalty
            .enrol(pb::EnrolRequest {
                customer_id: id.into(),
                channel: pb::Channel::Web as i32,
                context: at(when),
            })
            .await
            .unwrap();
    }

    async fn buy(
        &mut self,
        id: &str,
        order: &str,
        category: &str,
        quantity: u32,
        price: i64,
        when: i64,
    ) -> u64 {
        self.customers
            .record_purchase(pb::RecordPurchaseRequest {
                customer_id: id.into(),
                order_id: order.into(),
                lines: vec![pb::PurchaseLine {
                    sku: format!("{order}-sku"),
                    name: "thing".into(),
                    category: category.into(),
                    quantity,
                    unit_price_minor: price,
                }],
                total_minor: i64::from(quantity) * price,
                currency: "EUR".into(),
                channel: pb::Channel::Store as i32,
                context: at(when),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .position
    }

    async fn member(&mut self, id: &str, as_of: Option<i64>) -> pb::LoyaltyMember {
        let head = self.server.log.head().position;
        self.loyalty
            .get_member(pb::GetMemberRequest {
                customer_id: id.into(),
                min_position: head,
                as_of: as_of.map(ts),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls until the policy has caught up and `check` holds.
    async fn eventually(
        &mut self,
        id: &str,
        check: impl Fn(&pb::LoyaltyMember) -> bool,
    ) -> pb::LoyaltyMember {
        for _ in 0..400 {
            let m = self.member(id, None).await;
            if check(&m) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "member never reached the expected state: {:?}",
            self.member(id, None).await
        );
    }

    async fn tick(&mut self, when: i64) {
        self.set_clock(when);
        self.loyalty
            .run_tick(pb::RunTickRequest {
                as_of: Some(ts(when)),
            })
            .await
            .unwrap();
    }
}

fn programme(shoes_percent: Option<u32>, debt_max_points: u64) -> pb::LoyaltyProgramme {
    pb::LoyaltyProgramme {
        name: "Club".into(),
        currency: "EUR".into(),
        points_per_unit: 1,
        minor_per_unit: 100,
        multipliers: shoes_percent
            .map(|percent| pb::LoyaltyMultiplier {
                category: "shoes".into(),
                percent,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        bonuses: vec![pb::LoyaltyBonus {
            name: "first_purchase".into(),
            trigger: pb::BonusTrigger::FirstPurchase as i32,
            points: 50,
            ..Default::default()
        }],
        lifetime: pb::PointsLifetimeKind::Days as i32,
        lifetime_days: 365,
        holding_days: 14,
        min_redemption_points: 10,
        debt_max_points,
        tiers: vec![
            pb::LoyaltyTier {
                name: "Base".into(),
                threshold: 0,
                multiplier_percent: 100,
            },
            pb::LoyaltyTier {
                name: "Silver".into(),
                threshold: 300,
                multiplier_percent: 200,
            },
        ],
        tier_basis: pb::TierBasis::PointsEarned as i32,
        tier_window_months: 12,
        downgrade: pb::DowngradePolicy::WindowDrop as i32,
        base_cap_points: 0,
        base_cap_period: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worked_example_end_to_end() {
    let mut env = Env::start(midnight(2024, 1, 1)).await;
    let c = env.register().await;
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(programme(None, 0)),
            context: at(midnight(2024, 1, 1)),
        })
        .await
        .unwrap();
    env.enrol(&c, midnight(2024, 1, 1)).await;

    // O1: 2 × 100.00 EUR shoes → 200 + 50 first-purchase bonus, pending 14 days.
    env.set_clock(noon(2024, 1, 10));
    env.buy(&c, "O1", "shoes", 2, 10_000, noon(2024, 1, 10))
        .await;
    let m = env.eventually(&c, |m| m.lifetime_earned == 250).await;
    assert_eq!((m.available, m.pending, m.tier.as_str()), (0, 250, "Base"));
    env.set_clock(noon(2024, 1, 24));
    let m = env.member(&c, None).await;
    assert_eq!((m.available, m.pending), (250, 0));

    // v2 from 2024-02-01: shoes ×3, 100 points of debt allowed.
    env.set_clock(midnight(2024, 2, 1));
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(programme(Some(300), 100)),
            context: at(midnight(2024, 2, 1)),
        })
        .await
        .unwrap();
    env.tick(midnight(2024, 2, 1)).await;
    assert_eq!(env.member(&c, None).await.tier, "Base");
    // The version in force (and the versions known) depend on the business time asked about.
    for (when, versions, multipliers) in [(noon(2024, 1, 15), 1, 0), (noon(2024, 2, 15), 2, 1)] {
        let p = env
            .loyalty
            .get_programme(pb::GetProgrammeRequest {
                min_position: env.server.log.head().position,
                as_of: Some(ts(when)),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.versions.len(), versions);
        assert_eq!(p.in_force.unwrap().multipliers.len(), multipliers);
    }

    // O2: 50.00 EUR shoes under v2 → 150.
    env.set_clock(noon(2024, 2, 10));
    env.buy(&c, "O2", "shoes", 1, 5_000, noon(2024, 2, 10))
        .await;
    env.eventually(&c, |m| m.lifetime_earned == 400).await;
    env.tick(noon(2024, 2, 11)).await;
    let m = env.member(&c, None).await;
    assert_eq!((m.tier.as_str(), m.qualifying), ("Silver", 400));

    // Spend 300 of 400 on 2024-03-01.
    env.set_clock(noon(2024, 3, 1));
    env.loyalty
        .spend_points(pb::SpendPointsRequest {
            customer_id: c.clone(),
            points: 300,
            reason: "voucher".into(),
            context: at(noon(2024, 3, 1)),
        })
        .await
        .unwrap();

    // Full refund of O1 on 2024-03-05: 100 cancelled from O2's line, 100 of debt.
    env.set_clock(noon(2024, 3, 5));
    env.customers
        .record_refund(pb::RecordRefundRequest {
            customer_id: c.clone(),
            order_id: "O1".into(),
            refund_id: "R1".into(),
            amount_minor: 20_000,
            currency: "EUR".into(),
            context: at(noon(2024, 3, 5)),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = env.eventually(&c, |m| m.lifetime_cancelled == 200).await;
    assert_eq!((m.available, m.debt), (-100, 100));

    // O3: 100.00 EUR bags, Silver ×2 → 200: 100 repay the debt, 100 pending.
    env.set_clock(noon(2024, 3, 10));
    env.buy(&c, "O3", "bags", 1, 10_000, noon(2024, 3, 10))
        .await;
    env.eventually(&c, |m| m.lifetime_earned == 600).await;
    let m = env.member(&c, Some(noon(2024, 3, 20))).await;
    assert_eq!((m.available, m.pending, m.debt), (0, 100, 0));
    assert_eq!(env.member(&c, Some(noon(2024, 3, 24))).await.available, 100);

    // Tiers: Silver on 2025-01-15 (350 in the window), Base on 2025-02-15 (200).
    env.tick(noon(2025, 1, 15)).await;
    assert_eq!(env.member(&c, None).await.tier, "Silver");
    env.tick(noon(2025, 2, 15)).await;
    let m = env.member(&c, None).await;
    assert_eq!((m.tier.as_str(), m.qualifying), ("Base", 200));

    // Expiry boundary at 2025-03-10 12:00.
    let boundary = noon(2025, 3, 10);
    env.set_clock(boundary - 1);
    let m = env.member(&c, None).await;
    assert_eq!((m.available, m.expiring_30_days), (100, 100));
    env.tick(boundary).await;
    let m = env.member(&c, None).await;
    assert_eq!(
        (
            m.available,
            m.lifetime_earned,
            m.lifetime_spent,
            m.lifetime_cancelled,
            m.lifetime_expired
        ),
        (0, 600, 300, 200, 100)
    );

    // As of past dates, the balances come back exactly.
    assert_eq!(env.member(&c, Some(noon(2024, 3, 1))).await.available, 100);
    assert_eq!(env.member(&c, Some(noon(2024, 3, 6))).await.available, -100);
    assert_eq!(env.member(&c, Some(boundary - 1)).await.available, 100);

    // Every earned entry names its source purchase as cause, with the derived event id.
    let ledger = env
        .loyalty
        .get_ledger(pb::GetLedgerRequest {
            customer_id: c.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let earned: Vec<_> = ledger
        .entries
        .iter()
        .filter(|e| e.kind == "earned")
        .collect();
    assert_eq!(earned.len(), 4);
    for e in &earned {
        let cause = env
            .server
            .log
            .event_by_id(Uuid::parse_str(&e.cause_id).unwrap())
            .unwrap()
            .expect("the cause is in the log");
        assert_eq!(cause.event.event_type, "PurchaseCompleted");
        let own = env
            .server
            .log
            .event_by_id(Uuid::parse_str(&e.event_id).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(own.event.causation_id, e.cause_id);
        let line = e.line.as_ref().unwrap();
        assert!(
            ["spent", "cancelled", "expired"].contains(&line.state.as_str()),
            "{line:?}"
        );
    }
    let stats = env
        .loyalty
        .get_programme_stats(pb::GetProgrammeStatsRequest {
            as_of: Some(ts(noon(2024, 3, 31))),
            months: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let per_month: Vec<(u64, u64, u64)> = stats
        .periods
        .iter()
        .map(|p| (p.earned, p.spent, p.cancelled))
        .collect();
    assert_eq!(per_month, [(250, 0, 0), (150, 0, 0), (200, 300, 200)]);
    assert_eq!(
        (stats.members, stats.lifetime_earned, stats.lifetime_spent),
        (1, 600, 300)
    );
    env.server.stop().await.unwrap();
}

async fn member_with_points(env: &mut Env, points: i64) -> String {
    let c = env.register().await;
    let now = env.clock.now_us();
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(programme(None, 0)),
            context: at(midnight(2023, 1, 1)),
        })
        .await
        .ok();
    env.enrol(&c, now).await;
    env.loyalty
        .adjust_points(pb::AdjustPointsRequest {
            customer_id: c.clone(),
            points,
            reason: "goodwill".into(),
            context: Some(pb::WriteContext {
                actor: "staff:alice".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_redemptions_never_overdraw() {
    let mut env = Env::start(midnight(2024, 6, 1)).await;
    let c = member_with_points(&mut env, 1_000).await;
    let url = env.server.url();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (url, c) = (url.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = LoyaltyClient::connect(url).await.unwrap();
            client
                .spend_points(pb::SpendPointsRequest {
                    customer_id: c,
                    points: 100,
                    reason: "race".into(),
                    context: None,
                })
                .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => assert!(
                matches!(status.code(), Code::FailedPrecondition | Code::Aborted),
                "{status:?}"
            ),
        }
    }
    assert!(ok <= 10, "{ok} spends of 100 out of 1000");
    let m = env.member(&c, None).await;
    assert_eq!(m.available, 1_000 - 100 * ok);
    assert_eq!(m.lifetime_spent, 100 * ok as u64);
    assert!(m.available >= 0);

    // A reward with 3 units: 32 concurrent redemptions claim at most 3, each paid once.
    let d = member_with_points(&mut env, 10_000).await;
    let reward = env
        .loyalty
        .define_reward(pb::DefineRewardRequest {
            name: "Mug".into(),
            cost_points: 100,
            stock: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (url, d, reward) = (url.clone(), d.clone(), reward.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = LoyaltyClient::connect(url).await.unwrap();
            client
                .redeem_reward(pb::RedeemRewardRequest {
                    customer_id: d,
                    reward_id: reward,
                    context: None,
                })
                .await
        }));
    }
    let mut redeemed = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            redeemed += 1;
        }
    }
    assert!((1..=3).contains(&redeemed), "{redeemed}");
    let head = env.server.log.head().position;
    let rewards = env
        .loyalty
        .list_rewards(pb::ListRewardsRequest { min_position: head })
        .await
        .unwrap()
        .into_inner()
        .rewards;
    assert_eq!(rewards[0].claimed, redeemed);
    assert_eq!(
        env.member(&d, None).await.available,
        10_000 - 100 * redeemed as i64
    );
    env.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_idempotency_and_raw_appends() {
    let mut env = Env::start(midnight(2024, 6, 1)).await;
    let c = member_with_points(&mut env, 500).await;
    let stranger = Uuid::now_v7().to_string();

    let code =
        |r: Result<tonic::Response<pb::LoyaltyWriteResponse>, tonic::Status>| r.unwrap_err().code();
    let spend = |customer: &str, points: u64| pb::SpendPointsRequest {
        customer_id: customer.into(),
        points,
        reason: String::new(),
        context: None,
    };
    assert_eq!(
        code(env.loyalty.spend_points(spend(&stranger, 10)).await),
        Code::NotFound
    );
    assert_eq!(
        code(env.loyalty.spend_points(spend(&c, 0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(env.loyalty.spend_points(spend(&c, 5)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(env.loyalty.spend_points(spend(&c, 501)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            env.loyalty
                .enrol(pb::EnrolRequest {
                    customer_id: stranger.clone(),
                    ..Default::default()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            env.loyalty
                .enrol(pb::EnrolRequest {
                    customer_id: c.clone(),
                    ..Default::default()
                })
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            env.loyalty
                .adjust_points(pb::AdjustPointsRequest {
                    customer_id: c.clone(),
                    points: 10,
                    reason: "no actor".into(),
                    ..Default::default()
                })
                .await
        ),
        Code::InvalidArgument
    );
    let mut bad = programme(None, 0);
    bad.tiers[0].threshold = 5;
    bad.currency = "euros".into();
    let status = env
        .loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(bad),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("programme.currency"),
        "{}",
        status.message()
    );

    // Re-sending a spend with the same event id charges once.
    let id = Uuid::now_v7().to_string();
    let with_id = || pb::SpendPointsRequest {
        customer_id: c.clone(),
        points: 100,
        reason: "once".into(),
        context: Some(pb::WriteContext {
            event_id: id.clone(),
            ..Default::default()
        }),
    };
    let first = env
        .loyalty
        .spend_points(with_id())
        .await
        .unwrap()
        .into_inner();
    let again = env
        .loyalty
        .spend_points(with_id())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(env.member(&c, None).await.available, 400);

    // Ledger events are written by the service, the policy and the tick only.
    let mut store = EventStoreClient::connect(env.server.url()).await.unwrap();
    let status = store
        .append(pb::AppendRequest {
            stream: format!("loyalty-{c}"),
            expected: None,
            events: vec![pb::ProposedEvent {
                event: Some(pb::Event {
                    kind: Some(pb::event::Kind::PointsAdjusted(pb::PointsAdjusted {
                        customer_id: c.clone(),
                        points: 1_000_000,
                        reason: "free points".into(),
                        expires_at: None,
                    })),
                }),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    env.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_events_merges_transfers_leaving_and_lists() {
    let mut env = Env::start(midnight(2024, 6, 1)).await;
    let mut p = programme(None, 0);
    p.holding_days = 0;
    p.bonuses.push(pb::LoyaltyBonus {
        name: "review".into(),
        trigger: pb::BonusTrigger::CustomEvent as i32,
        custom_event_type: "review.written".into(),
        points: 20,
        cap_count: 1,
        cap_period: pb::CapPeriod::Day as i32,
    });
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(p),
            context: at(midnight(2024, 1, 1)),
        })
        .await
        .unwrap();
    let a = env.register().await;
    let b = env.register().await;
    env.enrol(&a, midnight(2024, 6, 1)).await;

    // Two reviews the same day: the cap allows one bonus.
    let mut store = EventStoreClient::connect(env.server.url()).await.unwrap();
    for n in 0..2 {
        store
            .append(pb::AppendRequest {
                stream: format!("customer-{a}"),
                expected: None,
                events: vec![pb::ProposedEvent {
                    event: Some(pb::Event {
                        kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
                            r#type: "review.written".into(),
                            data: None,
                        })),
                    }),
                    occurred_at: Some(ts(noon(2024, 6, 1) + n)),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
    }
    // B is merged into A; a purchase later logged on B's own stream earns for A.
    env.customers
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: a.clone(),
            duplicate_id: b.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .append(pb::AppendRequest {
            stream: format!("customer-{b}"),
            expected: None,
            events: vec![pb::ProposedEvent {
                event: Some(pb::Event {
                    kind: Some(pb::event::Kind::PurchaseCompleted(pb::PurchaseCompleted {
                        customer_id: b.clone(),
                        order_id: "B1".into(),
                        total_minor: 1_000,
                        currency: "EUR".into(),
                        ..Default::default()
                    })),
                }),
                occurred_at: Some(ts(noon(2024, 6, 1))),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    // 20 (one review) + 10 + 50 (first purchase), available at once (no holding).
    env.set_clock(noon(2024, 6, 2));
    let m = env.eventually(&a, |m| m.lifetime_earned == 80).await;
    assert_eq!(m.available, 80);

    // Transfer 30 to a household member, then the sender leaves and forfeits the rest.
    let h = env.register().await;
    env.enrol(&h, midnight(2024, 6, 1)).await;
    env.loyalty
        .transfer_points(pb::TransferPointsRequest {
            from_customer_id: a.clone(),
            to_customer_id: h.clone(),
            points: 30,
            context: None,
        })
        .await
        .unwrap();
    assert_eq!(env.member(&h, None).await.available, 30);
    env.loyalty
        .leave(pb::LeaveRequest {
            customer_id: a.clone(),
            reason: "moved".into(),
            context: None,
        })
        .await
        .unwrap();
    let m = env.member(&a, None).await;
    assert_eq!(
        (
            m.enrolled,
            m.available,
            m.lifetime_forfeited,
            m.transferred_out
        ),
        (false, 0, 50, 30)
    );

    // Lists: only active members, filtered by balance; paged ledger.
    let head = env.server.log.head().position;
    let listed = env
        .loyalty
        .list_members(pb::ListMembersRequest {
            min_available: Some(1),
            min_position: head,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.members.len(), 1);
    assert_eq!(listed.members[0].customer_id, h);
    let mut token = String::new();
    let mut entries = 0;
    loop {
        let page = env
            .loyalty
            .get_ledger(pb::GetLedgerRequest {
                customer_id: a.clone(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        entries += page.entries.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // enrolled, review, base, first purchase, transfer out, left.
    assert_eq!(entries, 6);
    env.server.stop().await.unwrap();
}

/// The birthday bonus: the tick reads the birth date from the customer's sealed
/// registration and awards once a year, from the day on (and only then).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn birthday_bonus_from_the_sealed_birth_date() {
    let mut env = Env::start(midnight(2024, 1, 1)).await;
    let mut with_birthday = programme(None, 0);
    with_birthday.bonuses.push(pb::LoyaltyBonus {
        name: "birthday".into(),
        trigger: pb::BonusTrigger::Birthday as i32,
        points: 250,
        ..Default::default()
    });
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(with_birthday),
            context: at(midnight(2024, 1, 1)),
        })
        .await
        .unwrap();
    let ada = env
        .customers
        .register_customer(pb::RegisterCustomerRequest {
            given_name: "Ada".into(),
            birth_date: "1815-12-10".into(),
            context: at(midnight(2023, 12, 1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    let no_date = env.register().await;
    env.enrol(&ada, midnight(2024, 1, 2)).await;
    env.enrol(&no_date, midnight(2024, 1, 2)).await;

    // The day before: nothing.
    env.tick(noon(2024, 12, 9)).await;
    assert_eq!(env.member(&ada, None).await.lifetime_earned, 0);
    // On the day: 250 points, available at once; a member without a birth date gets none.
    env.tick(noon(2024, 12, 10)).await;
    let member = env.member(&ada, None).await;
    assert_eq!(member.lifetime_earned, 250);
    assert_eq!(member.available, 250);
    assert_eq!(env.member(&no_date, None).await.lifetime_earned, 0);
    // Once a year.
    env.tick(noon(2024, 12, 11)).await;
    assert_eq!(env.member(&ada, None).await.lifetime_earned, 250);
    env.tick(noon(2025, 12, 10)).await;
    assert_eq!(env.member(&ada, None).await.lifetime_earned, 500);
    // The ledger line names the rule and its business time.
    let ledger = env
        .loyalty
        .get_ledger(pb::GetLedgerRequest {
            customer_id: ada.clone(),
            min_position: env.server.log.head().position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let birthdays: Vec<_> = ledger
        .entries
        .iter()
        .filter_map(|e| e.line.as_ref())
        .filter(|line| line.rule == "birthday")
        .map(|line| line.earned_at)
        .collect();
    assert_eq!(
        birthdays,
        [
            Some(ts(midnight(2024, 12, 10))),
            Some(ts(midnight(2025, 12, 10)))
        ]
    );
}

/// A merged duplicate's id stands for its survivor in loyalty commands and reads, as it
/// does everywhere else (when the duplicate has no loyalty ledger of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merged_duplicates_id_stands_for_the_survivor() {
    let mut env = Env::start(midnight(2024, 1, 1)).await;
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(programme(None, 0)),
            context: at(midnight(2024, 1, 1)),
        })
        .await
        .unwrap();
    let survivor = env.register().await;
    let duplicate = env.register().await;
    let merged = env
        .customers
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: survivor.clone(),
            duplicate_id: duplicate.clone(),
            context: at(midnight(2024, 1, 2)),
        })
        .await
        .unwrap()
        .into_inner()
        .position;
    // The customer read model has the merge before loyalty resolves through it.
    env.customers
        .get_customer(pb::GetCustomerRequest {
            customer_id: duplicate.clone(),
            min_position: merged,
        })
        .await
        .unwrap();
    // Enrolling the duplicate's id enrols the survivor.
    env.enrol(&duplicate, midnight(2024, 1, 3)).await;
    let by_survivor = env.member(&survivor, None).await;
    assert!(by_survivor.enrolled);
    let by_duplicate = env.member(&duplicate, None).await;
    assert_eq!(by_duplicate.customer_id, survivor);
    // A transfer between the two ids is a transfer to oneself.
    let status = env
        .loyalty
        .transfer_points(pb::TransferPointsRequest {
            from_customer_id: survivor.clone(),
            to_customer_id: duplicate.clone(),
            points: 1,
            context: at(midnight(2024, 1, 4)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// A merged duplicate that was a member: the policy moves its ledger to the survivor
/// (`LedgerMerged` in both member streams), pending points stay pending, the survivor
/// becomes a member, the duplicate's id then names the survivor, and a later refund of
/// the duplicate's order cancels the moved points.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merged_members_ledger_moves_to_the_survivor() {
    let mut env = Env::start(midnight(2024, 1, 1)).await;
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(programme(None, 0)),
            context: at(midnight(2024, 1, 1)),
        })
        .await
        .unwrap();
    let survivor = env.register().await;
    let duplicate = env.register().await;
    env.enrol(&duplicate, midnight(2024, 1, 1)).await;
    // 100 base + 50 first purchase, available from 01-16; 200 base pending to 02-02.
    env.buy(&duplicate, "D1", "x", 1, 10_000, noon(2024, 1, 2))
        .await;
    env.set_clock(noon(2024, 1, 18));
    env.eventually(&duplicate, |m| m.available == 150).await;
    env.loyalty
        .spend_points(pb::SpendPointsRequest {
            customer_id: duplicate.clone(),
            points: 40,
            reason: "coffee".into(),
            context: at(noon(2024, 1, 18)),
        })
        .await
        .unwrap();
    env.buy(&duplicate, "D2", "x", 1, 20_000, noon(2024, 1, 19))
        .await;
    env.eventually(&duplicate, |m| m.pending == 200).await;

    let merged = env
        .customers
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: survivor.clone(),
            duplicate_id: duplicate.clone(),
            context: at(noon(2024, 1, 20)),
        })
        .await
        .unwrap()
        .into_inner()
        .position;
    env.set_clock(noon(2024, 1, 21));
    // The survivor is no member until the policy has moved the ledger.
    let mut moved = Vec::new();
    for _ in 0..400 {
        moved = env
            .server
            .log
            .read_all(merged, false, 100, &Default::default())
            .unwrap()
            .events
            .into_iter()
            .filter(|e| e.event.event_type == "LedgerMerged")
            .collect::<Vec<_>>();
        if !moved.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(moved.len(), 2, "one event in each member stream");
    let streams: Vec<&str> = moved.iter().map(|e| e.event.stream.as_str()).collect();
    assert!(streams.contains(&format!("loyalty-{duplicate}").as_str()));
    assert!(streams.contains(&format!("loyalty-{survivor}").as_str()));
    let m = env.member(&survivor, None).await;
    assert_eq!(m.merged_in, 310);
    assert!(m.enrolled, "the survivor becomes a member");
    assert_eq!((m.available, m.pending), (110, 200));
    assert_eq!(
        m.lifetime_earned, 0,
        "earned in the duplicate's ledger, not here"
    );

    // The duplicate's id now stands for the survivor.
    let by_duplicate = env.member(&duplicate, None).await;
    assert_eq!(by_duplicate.customer_id, survivor);
    assert_eq!(by_duplicate.available, 110);
    // The survivor's ledger shows the move; the pending line is still pending.
    let ledger = env
        .loyalty
        .get_ledger(pb::GetLedgerRequest {
            customer_id: survivor.clone(),
            min_position: env.server.log.head().position,
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let entry = ledger
        .entries
        .iter()
        .find(|e| e.kind == "merged_in")
        .expect("a merged_in entry");
    assert_eq!(entry.points, 310);
    assert_eq!(entry.detail, duplicate);
    // After the holding period the moved points become available, in the survivor's
    // ledger, on the duplicate's own dates.
    env.set_clock(noon(2024, 2, 3));
    assert_eq!(env.member(&survivor, None).await.available, 310);

    // A refund of the duplicate's order D2 cancels the moved points.
    env.customers
        .record_refund(pb::RecordRefundRequest {
            customer_id: duplicate.clone(),
            order_id: "D2".into(),
            refund_id: "R2".into(),
            amount_minor: 20_000,
            currency: "EUR".into(),
            context: at(noon(2024, 2, 3)),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = env
        .eventually(&survivor, |m| m.lifetime_cancelled == 200)
        .await;
    assert_eq!(m.available, 110);
    // Its next purchase earns no second first-purchase bonus.
    env.buy(&survivor, "S1", "x", 1, 1_000, noon(2024, 2, 4))
        .await;
    env.set_clock(noon(2024, 2, 20));
    let m = env.eventually(&survivor, |m| m.available == 120).await;
    assert_eq!(m.lifetime_earned, 10);
    env.server.stop().await.unwrap();
}

/// A base-points cap per member per month, set over gRPC: purchases past it earn only
/// what is left; the next month earns again; `GetProgramme` returns the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn base_points_are_capped_per_member_per_period() {
    let mut env = Env::start(midnight(2024, 1, 1)).await;
    let mut p = programme(None, 0);
    p.holding_days = 0;
    p.bonuses.clear();
    p.base_cap_points = 150;
    p.base_cap_period = pb::CapPeriod::Month as i32;
    env.loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(p),
            context: at(midnight(2024, 1, 1)),
        })
        .await
        .unwrap();
    let c = env.register().await;
    env.enrol(&c, midnight(2024, 1, 1)).await;
    env.buy(&c, "C1", "x", 1, 10_000, noon(2024, 1, 5)).await;
    env.buy(&c, "C2", "x", 1, 10_000, noon(2024, 1, 6)).await;
    env.buy(&c, "C3", "x", 1, 10_000, noon(2024, 1, 7)).await;
    env.set_clock(noon(2024, 1, 20));
    // Wait for all three orders' lines (the third earns 0 but is recorded).
    let ledger_lines = |env: &mut Env| {
        let (mut loyalty, c, head) = (
            env.loyalty.clone(),
            c.clone(),
            env.server.log.head().position,
        );
        async move {
            loyalty
                .get_ledger(pb::GetLedgerRequest {
                    customer_id: c,
                    min_position: head,
                    page_size: 50,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries
                .into_iter()
                .filter(|e| e.kind == "earned")
                .map(|e| e.points)
                .collect::<Vec<_>>()
        }
    };
    let mut earned = Vec::new();
    for _ in 0..400 {
        earned = ledger_lines(&mut env).await;
        if earned.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(earned, vec![100, 50, 0]);
    let m = env.member(&c, None).await;
    assert_eq!((m.lifetime_earned, m.available), (150, 150));
    // February: the cap starts again.
    env.buy(&c, "C4", "x", 1, 10_000, noon(2024, 2, 1)).await;
    env.set_clock(noon(2024, 2, 2));
    let m = env.eventually(&c, |m| m.lifetime_earned == 250).await;
    assert_eq!(m.available, 250);
    let read = env
        .loyalty
        .get_programme(pb::GetProgrammeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let current = read.versions.last().unwrap().programme.as_ref().unwrap();
    assert_eq!(
        (current.base_cap_points, current.base_cap_period),
        (150, pb::CapPeriod::Month as i32)
    );
    // A cap without its period is refused with the field named.
    let mut bad = programme(None, 0);
    bad.base_cap_points = 10;
    let status = env
        .loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(bad),
            context: at(midnight(2024, 3, 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("base_cap_period"), "{status:?}");
    env.server.stop().await.unwrap();
}
