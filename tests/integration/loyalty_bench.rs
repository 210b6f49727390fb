//! Loyalty throughput over the seeded history (figures in BENCHMARKS.md). Ignored by
//! default; run in release:
//!
//! ```sh
//! RAPPORT_LOYALTY_BENCH_CUSTOMERS=20000 cargo test --release --test integration loyalty_bench:: -- --ignored --nocapture
//! ```
//!
//! Every seeded customer is enrolled first (a programme with a tier multiplier, a
//! category multiplier, a first-purchase bonus, a holding period and a lifetime), then
//! `rapport seed` writes the history; the earning policy then follows the whole log
//! (timed), the `loyalty` projection is rebuilt offline (timed), and the tick runs at the
//! end of the history on two copies of the log (timed): one append per member, then in
//! batches.

use std::sync::Arc;
use std::time::Instant;

use rapport::domain::DomainEvent;
use rapport::domain::common::Channel;
use rapport::domain::events::{MemberEnrolled, ProgrammeDefined};
use rapport::domain::loyalty::config::{
    Bonus, BonusTrigger, DowngradePolicy, Multiplier, MultiplierScope, PointsLifetime, Programme,
    Tier, TierBasis,
};
use rapport::domain::loyalty::ledger::{PROGRAMME_STREAM, member_stream};
use rapport::log::{ExpectedRevision, Log, LogConfig, ProposedEvent, StreamAppend, StreamName};
use rapport::loyalty_job::{self, Policy};
use rapport::projections::loyalty::LoyaltyProjection;
use rapport::projections::rebuild_offline;
use rapport::seed::{self, HISTORY_END_US, HISTORY_START_US, SeedTarget};
use uuid::Uuid;

fn proposed(event: &DomainEvent, at_us: i64) -> ProposedEvent {
    ProposedEvent {
        event_id: Some(Uuid::now_v7()),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: event.encode().unwrap(),
        occurred_at_us: Some(at_us),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release with --ignored"]
async fn loyalty_policy_and_projection_throughput() {
    let customers: u64 = std::env::var("RAPPORT_LOYALTY_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let programme = Programme {
        name: "Bench".into(),
        currency: "EUR".into(),
        points_per_unit: 1,
        minor_per_unit: 100,
        multipliers: vec![Multiplier {
            scope: MultiplierScope::Category("shoes".into()),
            percent: 200,
        }],
        bonuses: vec![Bonus {
            name: "first_purchase".into(),
            trigger: BonusTrigger::FirstPurchase,
            points: 50,
            cap: None,
        }],
        lifetime: PointsLifetime::Days(365),
        holding_days: 30,
        min_redemption_points: 100,
        debt_max_points: 200,
        tiers: vec![
            Tier {
                name: "Base".into(),
                threshold: 0,
                multiplier_percent: 100,
            },
            Tier {
                name: "Gold".into(),
                threshold: 2_000,
                multiplier_percent: 150,
            },
        ],
        tier_basis: TierBasis::PointsEarned,
        tier_window_months: 12,
        downgrade: DowngradePolicy::WindowDrop,
        base_cap: None,
    };
    {
        let log = Log::open(LogConfig::new(&data)).unwrap();
        let start = HISTORY_START_US - 86_400_000_000;
        let p = DomainEvent::ProgrammeDefined(ProgrammeDefined { programme });
        log.append(StreamAppend {
            stream: StreamName::parse(PROGRAMME_STREAM).unwrap(),
            expected: ExpectedRevision::NoStream,
            events: vec![proposed(&p, start)],
        })
        .await
        .unwrap();
        let ids: Vec<Uuid> = (0..customers).map(|i| seed::customer_id(1, i)).collect();
        for chunk in ids.chunks(500) {
            let appends = chunk
                .iter()
                .map(|id| StreamAppend {
                    stream: StreamName::parse(&member_stream(*id)).unwrap(),
                    expected: ExpectedRevision::NoStream,
                    events: vec![proposed(
                        &DomainEvent::MemberEnrolled(MemberEnrolled {
                            customer_id: *id,
                            channel: Channel::Web,
                        }),
                        start,
                    )],
                })
                .collect();
            log.append_multi(appends).await.unwrap();
        }
        tokio::task::spawn_blocking(move || log.shutdown())
            .await
            .unwrap();
    }
    seed::run(
        SeedTarget::DataDir {
            dir: data.clone(),
            master_key_file: None,
        },
        customers,
        1,
    )
    .await
    .unwrap();

    let log = Log::open(LogConfig::new(&data)).unwrap();
    let head = log.head().position;
    let mut policy = Policy::open(&log).unwrap();
    let started = Instant::now();
    let followed = loyalty_job::follow(&log, &mut policy).await.unwrap();
    let policy_s = started.elapsed().as_secs_f64();
    println!(
        "policy over {head} events ({} customer/loyalty events scanned): {policy_s:.2} s = {:.0} log events/s; \
         {} sources ({:.0}/s), {} points events appended ({:.0}/s)",
        followed.scanned,
        head as f64 / policy_s,
        followed.sources,
        followed.sources as f64 / policy_s,
        followed.awards,
        followed.awards as f64 / policy_s,
    );
    let replay_started = Instant::now();
    let mut fresh = {
        log.db().drop_tree(loyalty_job::POLICY_TREE).unwrap();
        Policy::open(&log).unwrap()
    };
    let replayed = loyalty_job::follow(&log, &mut fresh).await.unwrap();
    println!(
        "policy replay from position 1: {:.2} s, {} awards (must be 0)",
        replay_started.elapsed().as_secs_f64(),
        replayed.awards
    );
    assert_eq!(replayed.awards, 0);

    let head = log.head().position;
    let log2 = log.clone();
    let rebuild_s = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        rebuild_offline(&log2, Arc::new(LoyaltyProjection), &mut |_| {}).unwrap();
        started.elapsed().as_secs_f64()
    })
    .await
    .unwrap();
    println!(
        "loyalty projection rebuild over {head} log events ({} loyalty events): {rebuild_s:.2} s = \
         {:.0} log events/s, {:.0} loyalty events/s",
        followed.awards + customers + 1,
        head as f64 / rebuild_s,
        (followed.awards + customers + 1) as f64 / rebuild_s,
    );

    let members = policy.members().clone();
    drop(policy);
    drop(fresh);
    tokio::task::spawn_blocking(move || log.shutdown())
        .await
        .unwrap();
    // The tick over copies of the same log: one append per member, then in batches.
    for batch in [1, rapport::limits::LOYALTY_TICK_BATCH_MEMBERS] {
        let copy = dir.path().join(format!("tick-{batch}"));
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(&data)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        let log = Log::open(LogConfig::new(&copy)).unwrap();
        let started = Instant::now();
        let ticked = loyalty_job::tick_batched(
            &log,
            members.clone(),
            HISTORY_END_US,
            &loyalty_job::no_birthdays(),
            batch,
        )
        .await
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "tick at the end of the history, batches of {batch}: {} members in {seconds:.2} s \
             = {:.0} members/s ({} points expired, {} tier changes)",
            ticked.members,
            ticked.members as f64 / seconds,
            ticked.expired_points,
            ticked.tier_changes
        );
        tokio::task::spawn_blocking(move || log.shutdown())
            .await
            .unwrap();
    }
}
