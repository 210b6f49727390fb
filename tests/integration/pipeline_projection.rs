//! The pipeline read model's invariants, for random histories of sales events (accounts,
//! pipelines, leads, deals, tasks — valid or not, in any order):
//! - the tree built incrementally (with a runner restart in the middle) equals a rebuild
//!   from scratch, byte for byte;
//! - the live model (the tree loaded) equals the as-of fold of the log at the head, and
//!   so every query answers the same live and as of the head.

use crate::common::tree_digest as digest;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rapport::domain::DomainEvent;
use rapport::domain::common::CalendarDate;
use rapport::domain::events::{
    AccountContactLinked, AccountContactUnlinked, AccountCreated, AccountOwnerAssigned,
    AccountProfile, ContactRole, DealChanged, DealLost, DealOpened, DealReopened, DealStageMoved,
    DealWon, LeadCaptured, LeadDisqualified, LeadQualified, LeadSource, PipelineChanged,
    PipelineDefined, Stage, StageKind, TaskCancelled, TaskCompleted, TaskCreated, TaskKind,
};
use rapport::log::{ExpectedRevision, Log, LogConfig, ProposedEvent, StreamAppend, StreamName};
use rapport::projections::pipeline::{self, PipelineProjection};
use rapport::projections::pipeline_queries as queries;
use rapport::projections::{Projection, Projections, rebuild_offline};
use uuid::Uuid;

#[derive(Clone, Debug)]
enum Op {
    Define(u8, bool),
    CreateAccount(u8),
    Link(u8, u8, u8),
    Unlink(u8, u8),
    Owner(u8, u8),
    Capture(u8, u8),
    Qualify(u8, u8),
    Disqualify(u8),
    Open(u8, u8, u8, i64),
    Move(u8, u8),
    Change(u8, i64),
    Win(u8),
    Lose(u8, u8),
    Reopen(u8),
    Task(u8, u8),
    Complete(u8),
    Cancel(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..2, any::<bool>()).prop_map(|(p, change)| Op::Define(p, change)),
        1 => (0u8..2).prop_map(Op::CreateAccount),
        1 => (0u8..2, 0u8..3, 0u8..3).prop_map(|(a, c, r)| Op::Link(a, c, r)),
        1 => (0u8..2, 0u8..3).prop_map(|(a, c)| Op::Unlink(a, c)),
        1 => (0u8..2, 0u8..3).prop_map(|(a, o)| Op::Owner(a, o)),
        1 => (0u8..3, 0u8..3).prop_map(|(l, s)| Op::Capture(l, s)),
        1 => (0u8..3, 0u8..4).prop_map(|(l, d)| Op::Qualify(l, d)),
        1 => (0u8..3).prop_map(Op::Disqualify),
        3 => (0u8..4, 0u8..2, 0u8..3, 0i64..100_000).prop_map(|(d, p, o, a)| Op::Open(d, p, o, a)),
        4 => (0u8..4, 0u8..3).prop_map(|(d, s)| Op::Move(d, s)),
        1 => (0u8..4, 0i64..100_000).prop_map(|(d, a)| Op::Change(d, a)),
        1 => (0u8..4).prop_map(Op::Win),
        1 => (0u8..4, 0u8..2).prop_map(|(d, r)| Op::Lose(d, r)),
        1 => (0u8..4).prop_map(Op::Reopen),
        1 => (0u8..3, 0u8..4).prop_map(|(t, d)| Op::Task(t, d)),
        1 => (0u8..3).prop_map(Op::Complete),
        1 => (0u8..3).prop_map(Op::Cancel),
    ]
}

fn id(kind: u128, n: u8) -> Uuid {
    Uuid::from_u128((kind << 64) | (u128::from(n) + 1))
}

const OPEN: [&str; 3] = ["qualify", "proposal", "negotiate"];

fn stages(changed: bool) -> Vec<Stage> {
    let stage = |id: &str, probability, kind| Stage {
        stage_id: id.into(),
        name: id.into(),
        probability,
        kind,
    };
    let mut stages = vec![
        stage("qualify", 10, StageKind::Open),
        stage("proposal", 40, StageKind::Open),
        stage("negotiate", 70, StageKind::Open),
        stage("won", 100, StageKind::Won),
        stage("lost", 0, StageKind::Lost),
    ];
    if changed {
        stages.swap(0, 1);
        stages[0].probability = 55;
    }
    stages
}

/// The stream and event of an op.
fn event(op: &Op) -> (String, DomainEvent) {
    let deal = |d| format!("deal-{}", id(0xd, d));
    match *op {
        Op::Define(p, changed) => (
            format!("pipeline-{}", id(0x9, p)),
            if changed {
                DomainEvent::PipelineChanged(PipelineChanged {
                    pipeline_id: id(0x9, p),
                    name: "changed".into(),
                    currencies: vec![],
                    stages: stages(true),
                })
            } else {
                DomainEvent::PipelineDefined(PipelineDefined {
                    pipeline_id: id(0x9, p),
                    name: "nb".into(),
                    currencies: vec![],
                    stages: stages(false),
                })
            },
        ),
        Op::CreateAccount(a) => (
            format!("account-{}", id(0xa, a)),
            DomainEvent::AccountCreated(AccountCreated {
                account_id: id(0xa, a),
                profile: AccountProfile {
                    name: format!("account {a}"),
                    ..Default::default()
                },
            }),
        ),
        Op::Link(a, c, r) => (
            format!("account-{}", id(0xa, a)),
            DomainEvent::AccountContactLinked(AccountContactLinked {
                account_id: id(0xa, a),
                customer_id: id(0xc, c),
                role: [
                    ContactRole::Buyer,
                    ContactRole::Billing,
                    ContactRole::DecisionMaker,
                ][usize::from(r)],
            }),
        ),
        Op::Unlink(a, c) => (
            format!("account-{}", id(0xa, a)),
            DomainEvent::AccountContactUnlinked(AccountContactUnlinked {
                account_id: id(0xa, a),
                customer_id: id(0xc, c),
            }),
        ),
        Op::Owner(a, o) => (
            format!("account-{}", id(0xa, a)),
            DomainEvent::AccountOwnerAssigned(AccountOwnerAssigned {
                account_id: id(0xa, a),
                owner: format!("rep-{o}"),
            }),
        ),
        Op::Capture(l, s) => (
            format!("lead-{}", id(0x1e, l)),
            DomainEvent::LeadCaptured(LeadCaptured {
                lead_id: id(0x1e, l),
                source: [LeadSource::WebForm, LeadSource::Event, LeadSource::Referral]
                    [usize::from(s)],
                campaign_id: String::new(),
                customer_id: Some(id(0xc, l)),
                account_id: None,
                company_name: String::new(),
            }),
        ),
        Op::Qualify(l, d) => (
            format!("lead-{}", id(0x1e, l)),
            DomainEvent::LeadQualified(LeadQualified {
                lead_id: id(0x1e, l),
                customer_id: None,
                deal_id: id(0xd, d),
            }),
        ),
        Op::Disqualify(l) => (
            format!("lead-{}", id(0x1e, l)),
            DomainEvent::LeadDisqualified(LeadDisqualified {
                lead_id: id(0x1e, l),
                reason: "spam".into(),
            }),
        ),
        Op::Open(d, p, o, amount) => (
            deal(d),
            DomainEvent::DealOpened(DealOpened {
                deal_id: id(0xd, d),
                pipeline_id: id(0x9, p),
                stage_id: "qualify".into(),
                title: format!("deal {d}"),
                amount_minor: amount,
                currency: ["EUR", "SEK"][usize::from(d % 2)].into(),
                expected_close: CalendarDate {
                    year: 2026,
                    month: 1 + o * 4,
                    day: 15,
                },
                owner: format!("rep-{o}"),
                customer_id: Some(id(0xc, o)),
                account_id: Some(id(0xa, o % 2)),
                lead_id: None,
            }),
        ),
        Op::Move(d, s) => (
            deal(d),
            DomainEvent::DealStageMoved(DealStageMoved {
                deal_id: id(0xd, d),
                from_stage_id: "qualify".into(),
                to_stage_id: OPEN[usize::from(s)].into(),
            }),
        ),
        Op::Change(d, amount) => (
            deal(d),
            DomainEvent::DealChanged(DealChanged {
                deal_id: id(0xd, d),
                amount_minor: Some(amount),
                expected_close: None,
                owner: Some("rep-9".into()),
            }),
        ),
        Op::Win(d) => (
            deal(d),
            DomainEvent::DealWon(DealWon {
                deal_id: id(0xd, d),
                from_stage_id: "qualify".into(),
                stage_id: "won".into(),
            }),
        ),
        Op::Lose(d, r) => (
            deal(d),
            DomainEvent::DealLost(DealLost {
                deal_id: id(0xd, d),
                from_stage_id: "proposal".into(),
                stage_id: "lost".into(),
                reason: ["price", "competitor"][usize::from(r)].into(),
            }),
        ),
        Op::Reopen(d) => (
            deal(d),
            DomainEvent::DealReopened(DealReopened {
                deal_id: id(0xd, d),
                from_stage_id: "lost".into(),
                stage_id: "proposal".into(),
            }),
        ),
        Op::Task(t, d) => (
            format!("task-{}", id(0x7, t)),
            DomainEvent::TaskCreated(TaskCreated {
                task_id: id(0x7, t),
                deal_id: Some(id(0xd, d)),
                account_id: None,
                kind: TaskKind::Todo,
                title: "do it".into(),
                due_at_us: i64::from(t) * 1_000_000,
                assignee: "rep-1".into(),
            }),
        ),
        Op::Complete(t) => (
            format!("task-{}", id(0x7, t)),
            DomainEvent::TaskCompleted(TaskCompleted {
                task_id: id(0x7, t),
            }),
        ),
        Op::Cancel(t) => (
            format!("task-{}", id(0x7, t)),
            DomainEvent::TaskCancelled(TaskCancelled {
                task_id: id(0x7, t),
            }),
        ),
    }
}

async fn write(log: &Log, ops: &[Op], range: std::ops::Range<usize>) {
    for i in range {
        let (stream, event) = event(&ops[i]);
        log.append(StreamAppend {
            stream: StreamName::parse(&stream).unwrap(),
            expected: ExpectedRevision::Any,
            events: vec![ProposedEvent {
                event_id: Some(Uuid::now_v7()),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload: event.encode().unwrap(),
                // Business time moves a day per op, from 2026-01-01.
                occurred_at_us: Some(1_767_225_600_000_000 + i as i64 * 86_400_000_000),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    }
}

fn run_case(ops: Vec<Op>, restart_at: usize) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(LogConfig::new(dir.path())).unwrap();
        let projection: Arc<dyn Projection> = Arc::new(PipelineProjection);
        let split = restart_at.min(ops.len());
        let running = Projections::start(log.clone(), vec![projection.clone()]).unwrap();
        write(&log, &ops, 0..split).await;
        running.shutdown();
        let running = Projections::start(log.clone(), vec![projection.clone()]).unwrap();
        write(&log, &ops, split..ops.len()).await;
        let head = log.head().position;
        let view = running
            .wait_for(pipeline::NAME, head, Duration::from_secs(10))
            .await
            .unwrap();
        let incremental = digest(&view.tree);

        // Live == as of the head, record for record, so every query agrees.
        let live = pipeline::load_model(&view.tree)
            .unwrap()
            .expect("no writes meanwhile");
        prop_assert_eq!(live.position, head);
        let as_of = pipeline::fold_log(&log, head, &|_| true).unwrap();
        prop_assert_eq!(&live, &as_of);
        // The live cache's path: a model at the restart point brought forward by folding
        // the rest equals both.
        let mut forward = pipeline::fold_log(&log, split as u64, &|_| true).unwrap();
        forward.position = split as u64;
        pipeline::fold_into(&log, &mut forward, head, &|_| true).unwrap();
        prop_assert_eq!(&forward, &as_of);
        for p in 0..2u8 {
            let pipeline_id = id(0x9, p);
            prop_assert_eq!(
                queries::board(&live, pipeline_id),
                queries::board(&as_of, pipeline_id)
            );
        }
        let query = queries::ForecastQuery::default();
        prop_assert_eq!(
            queries::forecast(&live, &query),
            queries::forecast(&as_of, &query)
        );
        // Every deal is on the board of its pipeline exactly once (when it exists).
        for p in 0..2u8 {
            if let Some(board) = queries::board(&live, id(0x9, p)) {
                let on_board: u64 = board
                    .stages
                    .iter()
                    .flat_map(|s| s.by_currency.values())
                    .map(|c| c.count)
                    .sum();
                let deals = live
                    .deals
                    .values()
                    .filter(|d| d.pipeline_id == id(0x9, p))
                    .count();
                prop_assert_eq!(on_board, deals as u64);
            }
        }
        drop(view);
        running.shutdown();
        rebuild_offline(&log, projection.clone(), &mut |_| {}).unwrap();
        let running = Projections::start(log.clone(), vec![projection]).unwrap();
        let rebuilt = digest(&running.reader(pipeline::NAME).unwrap().tree);
        prop_assert_eq!(incremental, rebuilt);
        running.shutdown();
        log.shutdown();
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_rebuild_and_as_of_head_equals_live(
        ops in proptest::collection::vec(op(), 1..60),
        restart_at in 0usize..60,
    ) {
        run_case(ops, restart_at)?;
    }
}
