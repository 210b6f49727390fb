//! The sales part of `rapport seed` (issue 4): B2B accounts, two pipelines, leads, deals
//! moving through stages, and tasks, over the seeded customers — deterministic like the
//! rest of the seed (every choice from `(seed, unit)`; nothing reads the clock).
//!
//! Proportions, per unit of 20 customers: one account with 1-3 contacts, four leads
//! (web form 40 %, campaign 25 %, event 15 %, referral 10 %, outbound 10 %) of which ~30 %
//! are qualified into a new-business deal and ~20 % disqualified, one renewal deal, and
//! 0-3 tasks per deal (70 % completed, 10 % cancelled). A quarter of the leads come in
//! the last 90 days and renewals fall on the accounts' last anniversary, so the history
//! ends with deals in progress. Deals advance stage by stage
//! with 2-30 days in each; at every open stage ~15 % are lost, the rest of those that
//! reach the end are won 60 % of the time; deals still running when the history ends
//! stay open. A larger `--customers` extends a smaller seeding (units depend on
//! `(seed, unit)` only); re-seeding skips the units already in the log.
//!
//! Offline (`--data-dir`) one unit is one atomic multi-stream append, the events exactly
//! as the Pipeline service would write them; through a server (`--server`) every fact is
//! sent as the Pipeline command that records it (so the service's rules check the seeded
//! history), in business-time order, with the seeded event ids as idempotency keys.

use uuid::Uuid;

use crate::cli::CliError;
use crate::domain::DomainEvent;
use crate::domain::common::CalendarDate;
use crate::domain::events::{
    AccountContactLinked, AccountCreated, AccountOwnerAssigned, AccountProfile, ContactRole,
    DealChanged, DealLost, DealOpened, DealStageMoved, DealWon, LeadAssigned, LeadCaptured,
    LeadDisqualified, LeadQualified, LeadSource, PipelineDefined, SizeBand, Stage, StageKind,
    TaskCancelled, TaskCompleted, TaskCreated, TaskKind,
};
use crate::domain::pipeline::{
    account_stream, deal_stream, lead_stream, pipeline_stream, task_stream,
};
use crate::grpc::{convert, pb};
use crate::log::{ExpectedRevision, Log, ProposedEvent, StreamAppend, StreamName};
use crate::seed::{
    HISTORY_END_US, HISTORY_START_US, SEED_ACTOR, SeedReport, SeededEvent, SplitMix64, customer_id,
    duplicate_of,
};

/// Customers per unit of sales history.
pub const UNIT_CUSTOMERS: u64 = 20;

const DAY_US: i64 = 86_400_000_000;
/// Units whose appends are in flight at once.
const IN_FLIGHT: usize = 64;
/// Units sent concurrently through a server (each one's commands are sequential).
const SERVER_IN_FLIGHT: usize = 16;
const OWNERS: [&str; 6] = [
    "rep-ann", "rep-bob", "rep-cai", "rep-dan", "rep-eve", "rep-fay",
];
const LOST_REASONS: [&str; 5] = ["price", "competitor", "no_decision", "timing", "no_budget"];
const INDUSTRIES: [&str; 5] = ["retail", "manufacturing", "logistics", "software", "health"];

/// The events of one stream.
pub type SeededStream = (String, Vec<SeededEvent>);

fn uuid_of(tag: &str, words: &[u64]) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rapport-seed-sales/v1\0");
    hasher.update(tag.as_bytes());
    hasher.update(&[0]);
    for word in words {
        hasher.update(&word.to_be_bytes());
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn stage(id: &str, name: &str, probability: u8, kind: StageKind) -> Stage {
    Stage {
        stage_id: id.into(),
        name: name.into(),
        probability,
        kind,
    }
}

/// The new-business pipeline's id for `seed`.
pub fn new_business_id(seed: u64) -> Uuid {
    uuid_of("pipeline", &[seed, 0])
}

/// The renewals pipeline's id for `seed`.
pub fn renewals_id(seed: u64) -> Uuid {
    uuid_of("pipeline", &[seed, 1])
}

/// The two pipelines, defined at the start of the history.
pub fn pipelines(seed: u64) -> Vec<SeededStream> {
    let define = |id: Uuid, name: &str, stages: Vec<Stage>, n: u64| {
        (
            pipeline_stream(id),
            vec![SeededEvent {
                id: uuid_of("pipeline-event", &[seed, n]),
                occurred_at_us: HISTORY_START_US,
                event: DomainEvent::PipelineDefined(PipelineDefined {
                    pipeline_id: id,
                    name: name.into(),
                    currencies: vec!["EUR".into(), "SEK".into(), "USD".into()],
                    stages,
                }),
            }],
        )
    };
    vec![
        define(
            new_business_id(seed),
            "New business",
            vec![
                stage("qualify", "Qualify", 10, StageKind::Open),
                stage("discovery", "Discovery", 25, StageKind::Open),
                stage("proposal", "Proposal", 50, StageKind::Open),
                stage("negotiate", "Negotiate", 75, StageKind::Open),
                stage("won", "Won", 100, StageKind::Won),
                stage("lost", "Lost", 0, StageKind::Lost),
            ],
            0,
        ),
        define(
            renewals_id(seed),
            "Renewals",
            vec![
                stage("renewal_due", "Renewal due", 60, StageKind::Open),
                stage("renewal_committed", "Committed", 90, StageKind::Open),
                stage("renewed", "Renewed", 100, StageKind::Won),
                stage("churned", "Churned", 0, StageKind::Lost),
            ],
            1,
        ),
    ]
}

/// Builds one stream's events with ids derived from `(seed, unit, tag, n)`.
struct Builder {
    seed: u64,
    unit: u64,
    tag: &'static str,
    n: u64,
    events: Vec<SeededEvent>,
}

impl Builder {
    fn new(seed: u64, unit: u64, tag: &'static str, n: u64) -> Self {
        Self {
            seed,
            unit,
            tag,
            n,
            events: Vec::new(),
        }
    }

    fn push(&mut self, at: i64, event: DomainEvent) {
        let k = self.events.len() as u64;
        self.events.push(SeededEvent {
            id: uuid_of(self.tag, &[self.seed, self.unit, self.n, k]),
            occurred_at_us: at,
            event,
        });
    }
}

fn date_of(us: i64) -> CalendarDate {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = us.div_euclid(DAY_US);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    CalendarDate { year, month, day }
}

struct DealPlan<'a> {
    deal_id: Uuid,
    pipeline_id: Uuid,
    open_stages: &'a [&'a str],
    won: &'a str,
    lost: &'a str,
    opened_at: i64,
    customer_id: Option<Uuid>,
    account_id: Option<Uuid>,
    lead_id: Option<Uuid>,
}

/// A deal's stream: opened, moved stage by stage, maybe changed, won / lost / open.
fn deal_history(rng: &mut SplitMix64, b: &mut Builder, plan: DealPlan<'_>) -> i64 {
    let currency = ["EUR", "SEK", "USD"][rng.weighted(&[60, 25, 15])];
    let amount = rng.range(5, 500) as i64 * 100_000 / if currency == "SEK" { 1 } else { 10 };
    let mut at = plan.opened_at;
    let close = at + rng.range(20, 120) as i64 * DAY_US;
    b.push(
        at,
        DomainEvent::DealOpened(DealOpened {
            deal_id: plan.deal_id,
            pipeline_id: plan.pipeline_id,
            stage_id: plan.open_stages[0].into(),
            title: format!("Deal {}", &plan.deal_id.to_string()[..8]),
            amount_minor: amount,
            currency: currency.into(),
            expected_close: date_of(close),
            owner: (*rng.pick(&OWNERS)).into(),
            customer_id: plan.customer_id,
            account_id: plan.account_id,
            lead_id: plan.lead_id,
        }),
    );
    let mut current = plan.open_stages[0];
    for next in plan.open_stages.iter().skip(1).chain(std::iter::once(&"")) {
        at += rng.range(2, 30) as i64 * DAY_US;
        if at >= HISTORY_END_US {
            return at; // still open when the history ends
        }
        if rng.chance(200) {
            b.push(
                at,
                DomainEvent::DealChanged(DealChanged {
                    deal_id: plan.deal_id,
                    amount_minor: Some(amount * rng.range(80, 120) as i64 / 100),
                    expected_close: Some(date_of(close + rng.range(0, 30) as i64 * DAY_US)),
                    owner: None,
                }),
            );
        }
        let lose = if next.is_empty() {
            !rng.chance(600)
        } else {
            rng.chance(150)
        };
        if lose {
            b.push(
                at,
                DomainEvent::DealLost(DealLost {
                    deal_id: plan.deal_id,
                    from_stage_id: current.into(),
                    stage_id: plan.lost.into(),
                    reason: (*rng.pick(&LOST_REASONS)).into(),
                }),
            );
            return at;
        }
        if next.is_empty() {
            b.push(
                at,
                DomainEvent::DealWon(DealWon {
                    deal_id: plan.deal_id,
                    from_stage_id: current.into(),
                    stage_id: plan.won.into(),
                }),
            );
            return at;
        }
        b.push(
            at,
            DomainEvent::DealStageMoved(DealStageMoved {
                deal_id: plan.deal_id,
                from_stage_id: current.into(),
                to_stage_id: (*next).into(),
            }),
        );
        current = next;
    }
    at
}

/// The tasks of one deal.
fn tasks_of(
    rng: &mut SplitMix64,
    seed: u64,
    unit: u64,
    deal: Uuid,
    opened_at: i64,
    out: &mut Vec<SeededStream>,
) {
    for _ in 0..rng.below(4) {
        let n = out.len() as u64;
        let task_id = uuid_of("task", &[seed, unit, n]);
        let mut b = Builder::new(seed, unit, "task-event", n);
        let created = opened_at + rng.range(0, 20) as i64 * DAY_US;
        if created >= HISTORY_END_US {
            continue;
        }
        let due = created + rng.range(1, 14) as i64 * DAY_US;
        b.push(
            created,
            DomainEvent::TaskCreated(TaskCreated {
                task_id,
                deal_id: Some(deal),
                account_id: None,
                kind: [
                    TaskKind::Call,
                    TaskKind::Email,
                    TaskKind::Meeting,
                    TaskKind::Todo,
                ][rng.below(4) as usize],
                title: ["Follow up", "Send the offer", "Demo", "Check the contract"]
                    [rng.below(4) as usize]
                    .into(),
                due_at_us: due,
                assignee: (*rng.pick(&OWNERS)).into(),
            }),
        );
        let done = (due + rng.range(0, 3) as i64 * DAY_US).min(HISTORY_END_US - 1);
        match rng.below(10) {
            0..=6 => b.push(done, DomainEvent::TaskCompleted(TaskCompleted { task_id })),
            7 => b.push(done, DomainEvent::TaskCancelled(TaskCancelled { task_id })),
            _ => {}
        }
        out.push((task_stream(task_id), b.events));
    }
}

/// The sales history of unit `unit` (customers `20·unit .. 20·unit + 20`).
pub fn unit_history(seed: u64, unit: u64) -> Vec<SeededStream> {
    let mut rng = SplitMix64::derived("sales-unit", &[seed, unit]);
    let mut streams: Vec<SeededStream> = Vec::new();
    let mut tasks: Vec<SeededStream> = Vec::new();
    let first = unit * UNIT_CUSTOMERS;
    let customers: Vec<Uuid> = (first..first + UNIT_CUSTOMERS)
        .filter(|&i| duplicate_of(seed, i).is_none())
        .map(|i| customer_id(seed, i))
        .collect();
    let span = HISTORY_END_US - HISTORY_START_US;
    let created = rng.time_in(HISTORY_START_US, HISTORY_START_US + span * 2 / 3);

    let account_id = uuid_of("account", &[seed, unit]);
    let mut account = Builder::new(seed, unit, "account-event", 0);
    account.push(
        created,
        DomainEvent::AccountCreated(AccountCreated {
            account_id,
            profile: AccountProfile {
                name: format!("Company {unit}"),
                domain: format!("company-{unit}.example"),
                industry: (*rng.pick(&INDUSTRIES)).into(),
                size_band: [
                    SizeBand::Micro,
                    SizeBand::Small,
                    SizeBand::Medium,
                    SizeBand::Large,
                ][rng.weighted(&[30, 40, 20, 10])],
                external_ids: Default::default(),
            },
        }),
    );
    account.push(
        created,
        DomainEvent::AccountOwnerAssigned(AccountOwnerAssigned {
            account_id,
            owner: (*rng.pick(&OWNERS)).into(),
        }),
    );
    for k in 0..rng.range(1, 3) {
        if let Some(customer) = customers.get(k as usize) {
            account.push(
                created + (k as i64 + 1) * DAY_US,
                DomainEvent::AccountContactLinked(AccountContactLinked {
                    account_id,
                    customer_id: *customer,
                    role: [
                        ContactRole::Buyer,
                        ContactRole::DecisionMaker,
                        ContactRole::Billing,
                    ][k as usize],
                }),
            );
        }
    }
    streams.push((account_stream(account_id), account.events));

    let new_business = ["qualify", "discovery", "proposal", "negotiate"];
    for n in 0..4u64 {
        let lead_id = uuid_of("lead", &[seed, unit, n]);
        let mut lead = Builder::new(seed, unit, "lead-event", n);
        // A quarter of the leads arrive in the last 90 days, so the pipeline the history
        // ends with has work in progress.
        let captured = if rng.chance(250) {
            rng.time_in(HISTORY_END_US - 90 * DAY_US, HISTORY_END_US - 5 * DAY_US)
        } else {
            rng.time_in(created, HISTORY_END_US - 60 * DAY_US)
        }
        .max(created);
        let source = [
            LeadSource::WebForm,
            LeadSource::Campaign,
            LeadSource::Event,
            LeadSource::Referral,
            LeadSource::Outbound,
        ][rng.weighted(&[40, 25, 15, 10, 10])];
        let customer =
            (!customers.is_empty()).then(|| customers[rng.below(customers.len() as u64) as usize]);
        lead.push(
            captured,
            DomainEvent::LeadCaptured(LeadCaptured {
                lead_id,
                source,
                campaign_id: if source == LeadSource::Campaign {
                    format!("campaign-{}", rng.below(12))
                } else {
                    String::new()
                },
                customer_id: customer,
                account_id: rng.chance(500).then_some(account_id),
                company_name: format!("Company {unit}"),
            }),
        );
        let decided = captured + rng.range(1, 20) as i64 * DAY_US;
        if rng.chance(700) {
            lead.push(
                captured,
                DomainEvent::LeadAssigned(LeadAssigned {
                    lead_id,
                    owner: (*rng.pick(&OWNERS)).into(),
                }),
            );
        }
        match rng.below(10) {
            0..=2 if customer.is_some() => {
                let deal_id = uuid_of("deal", &[seed, unit, n]);
                lead.push(
                    decided,
                    DomainEvent::LeadQualified(LeadQualified {
                        lead_id,
                        customer_id: customer,
                        deal_id,
                    }),
                );
                let mut deal = Builder::new(seed, unit, "deal-event", n);
                deal_history(
                    &mut rng,
                    &mut deal,
                    DealPlan {
                        deal_id,
                        pipeline_id: new_business_id(seed),
                        open_stages: &new_business,
                        won: "won",
                        lost: "lost",
                        opened_at: decided,
                        customer_id: customer,
                        account_id: Some(account_id),
                        lead_id: Some(lead_id),
                    },
                );
                tasks_of(&mut rng, seed, unit, deal_id, decided, &mut tasks);
                streams.push((deal_stream(deal_id), deal.events));
            }
            3 | 4 => lead.push(
                decided,
                DomainEvent::LeadDisqualified(LeadDisqualified {
                    lead_id,
                    reason: (*rng.pick(&["no_budget", "no_fit", "spam", "duplicate"])).into(),
                }),
            ),
            _ => {}
        }
        streams.push((lead_stream(lead_id), lead.events));
    }

    // One renewal deal per account, at the last anniversary of its creation before the
    // history ends (an account younger than a year has none yet).
    let years = (HISTORY_END_US - 10 * DAY_US - created) / (365 * DAY_US);
    let renewal_at = created + years * 365 * DAY_US;
    if years >= 1 {
        let deal_id = uuid_of("deal", &[seed, unit, 99]);
        let mut deal = Builder::new(seed, unit, "deal-event", 99);
        deal_history(
            &mut rng,
            &mut deal,
            DealPlan {
                deal_id,
                pipeline_id: renewals_id(seed),
                open_stages: &["renewal_due", "renewal_committed"],
                won: "renewed",
                lost: "churned",
                opened_at: renewal_at,
                customer_id: None,
                account_id: Some(account_id),
                lead_id: None,
            },
        );
        tasks_of(&mut rng, seed, unit, deal_id, renewal_at, &mut tasks);
        streams.push((deal_stream(deal_id), deal.events));
    }
    streams.extend(tasks);
    streams
}

fn appends(streams: Vec<SeededStream>) -> Result<(Vec<StreamAppend>, u64), CliError> {
    let mut events = 0;
    let appends = streams
        .into_iter()
        .map(|(stream, seeded)| {
            events += seeded.len() as u64;
            Ok(StreamAppend {
                stream: StreamName::parse(&stream)?,
                expected: ExpectedRevision::NoStream,
                events: seeded
                    .iter()
                    .map(|e| {
                        Ok(ProposedEvent {
                            event_id: Some(e.id),
                            event_type: e.event.event_type().to_owned(),
                            schema_version: e.event.schema_version(),
                            payload: e.event.encode()?,
                            occurred_at_us: Some(e.occurred_at_us),
                            metadata: Vec::new(),
                            correlation_id: String::new(),
                            causation_id: String::new(),
                            actor: SEED_ACTOR.to_owned(),
                            source_channel: String::new(),
                        })
                    })
                    .collect::<Result<_, CliError>>()?,
            })
        })
        .collect::<Result<_, CliError>>()?;
    Ok((appends, events))
}

/// Appends the sales history of `customers` customers (one unit per 20) to `log`,
/// skipping the units already there; counts into `report`.
pub async fn seed_offline(
    log: &Log,
    customers: u64,
    seed: u64,
    report: &mut SeedReport,
) -> Result<(), CliError> {
    let mut work: Vec<Vec<SeededStream>> = vec![pipelines(seed)];
    work.extend((0..customers / UNIT_CUSTOMERS).map(|unit| unit_history(seed, unit)));
    let mut in_flight: tokio::task::JoinSet<Result<(), CliError>> = tokio::task::JoinSet::new();
    for streams in work {
        let (appends, events) = appends(streams)?;
        report.events += events;
        let first = appends[0].events[0].event_id.expect("seeded ids are set");
        if log.event_by_id(first)?.is_some() {
            continue; // one unit is one atomic append: it is all there
        }
        report.events_written += events;
        while in_flight.len() >= IN_FLIGHT {
            if let Some(done) = in_flight.join_next().await {
                done??;
            }
        }
        let log = log.clone();
        in_flight.spawn(async move {
            log.append_multi(appends).await?;
            Ok(())
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Through a server
// ---------------------------------------------------------------------------------------

type PipelineClient = crate::grpc::pb::pipeline_client::PipelineClient<tonic::transport::Channel>;

fn context(event: &SeededEvent) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        event_id: event.id.to_string(),
        occurred_at: Some(convert::timestamp_from_us(event.occurred_at_us)),
        actor: SEED_ACTOR.to_owned(),
        ..Default::default()
    })
}

/// The order facts of one unit are sent in: business time, then creations before what
/// follows them at the same instant.
fn rank(event: &DomainEvent) -> u8 {
    match event {
        DomainEvent::PipelineDefined(_) | DomainEvent::AccountCreated(_) => 0,
        DomainEvent::LeadCaptured(_) => 1,
        DomainEvent::LeadQualified(_) => 2,
        DomainEvent::DealOpened(_) => 3,
        DomainEvent::TaskCreated(_) => 5,
        DomainEvent::TaskCompleted(_) | DomainEvent::TaskCancelled(_) => 6,
        _ => 4,
    }
}

/// Sends one unit's facts through the Pipeline service. A deal born from a lead is
/// opened by QualifyLead (with the seeded deal's details), so its own `DealOpened` is not
/// sent again.
async fn send_unit(
    client: &mut PipelineClient,
    streams: Vec<SeededStream>,
) -> Result<(), CliError> {
    let mut events: Vec<SeededEvent> = streams.into_iter().flat_map(|(_, e)| e).collect();
    let opened: std::collections::BTreeMap<Uuid, DealOpened> = events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::DealOpened(d) => Some((d.deal_id, d.clone())),
            _ => None,
        })
        .collect();
    events.sort_by_key(|e| (e.occurred_at_us, rank(&e.event)));
    for event in events {
        let ctx = context(&event);
        use crate::grpc::convert_pipeline::Wire;
        let result = match event.event {
            DomainEvent::PipelineDefined(e) => client
                .define_pipeline(pb::DefinePipelineRequest {
                    context: ctx,
                    pipeline: Some(e.to_wire()),
                })
                .await
                .map(drop),
            DomainEvent::AccountCreated(e) => client
                .create_account(pb::CreateAccountRequest {
                    context: ctx,
                    account: Some(e.to_wire()),
                })
                .await
                .map(drop),
            DomainEvent::AccountOwnerAssigned(e) => client
                .assign_account_owner(pb::AssignAccountOwnerRequest {
                    context: ctx,
                    assignment: Some(e.to_wire()),
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::AccountContactLinked(e) => client
                .link_contact(pb::LinkContactRequest {
                    context: ctx,
                    link: Some(e.to_wire()),
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::LeadCaptured(e) => client
                .capture_lead(pb::CaptureLeadRequest {
                    context: ctx,
                    lead: Some(e.to_wire()),
                    ..Default::default()
                })
                .await
                .map(drop),
            DomainEvent::LeadAssigned(e) => client
                .assign_lead(pb::AssignLeadRequest {
                    context: ctx,
                    assignment: Some(e.to_wire()),
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::LeadDisqualified(e) => client
                .disqualify_lead(pb::DisqualifyLeadRequest {
                    context: ctx,
                    disqualification: Some(e.to_wire()),
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::LeadQualified(e) => {
                let deal = opened
                    .get(&e.deal_id)
                    .cloned()
                    .ok_or("a seeded qualified lead always has its deal")?;
                client
                    .qualify_lead(pb::QualifyLeadRequest {
                        context: ctx,
                        lead_id: e.lead_id.to_string(),
                        customer_id: e.customer_id.map(|c| c.to_string()).unwrap_or_default(),
                        deal: Some(deal.to_wire()),
                        expected_revision: None,
                        new_customer: None,
                    })
                    .await
                    .map(drop)
            }
            DomainEvent::DealOpened(e) if e.lead_id.is_some() => continue,
            DomainEvent::DealOpened(e) => client
                .open_deal(pb::OpenDealRequest {
                    context: ctx,
                    deal: Some(e.to_wire()),
                })
                .await
                .map(drop),
            DomainEvent::DealStageMoved(e) => client
                .move_deal_stage(pb::MoveDealStageRequest {
                    context: ctx,
                    deal_id: e.deal_id.to_string(),
                    stage_id: e.to_stage_id,
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::DealChanged(e) => client
                .change_deal(pb::ChangeDealRequest {
                    context: ctx,
                    change: Some(e.to_wire()),
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::DealWon(e) => client
                .win_deal(pb::WinDealRequest {
                    context: ctx,
                    deal_id: e.deal_id.to_string(),
                    stage_id: e.stage_id,
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::DealLost(e) => client
                .lose_deal(pb::LoseDealRequest {
                    context: ctx,
                    deal_id: e.deal_id.to_string(),
                    stage_id: e.stage_id,
                    reason: e.reason,
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::TaskCreated(e) => client
                .create_task(pb::CreateTaskRequest {
                    context: ctx,
                    task: Some(e.to_wire()),
                })
                .await
                .map(drop),
            DomainEvent::TaskCompleted(e) => client
                .complete_task(pb::CompleteTaskRequest {
                    context: ctx,
                    task_id: e.task_id.to_string(),
                    expected_revision: None,
                })
                .await
                .map(drop),
            DomainEvent::TaskCancelled(e) => client
                .cancel_task(pb::CancelTaskRequest {
                    context: ctx,
                    task_id: e.task_id.to_string(),
                    expected_revision: None,
                })
                .await
                .map(drop),
            other => return Err(format!("the sales seed has no {}", other.event_type()).into()),
        };
        result.map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    }
    Ok(())
}

/// Sends the sales history of `customers` customers through a server's Pipeline service
/// (after the customers exist); counts into `report`.
pub async fn seed_server(
    url: &str,
    customers: u64,
    seed: u64,
    report: &mut SeedReport,
) -> Result<(), CliError> {
    let client = PipelineClient::connect(url.to_owned())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let mut work: Vec<Vec<SeededStream>> = vec![pipelines(seed)];
    work.extend((0..customers / UNIT_CUSTOMERS).map(|unit| unit_history(seed, unit)));
    let mut in_flight: tokio::task::JoinSet<Result<(), CliError>> = tokio::task::JoinSet::new();
    for (i, streams) in work.into_iter().enumerate() {
        let events: u64 = streams.iter().map(|(_, e)| e.len() as u64).sum();
        report.events += events;
        report.events_written += events;
        let mut client = client.clone();
        if i == 0 {
            send_unit(&mut client, streams).await?; // the pipelines, before any deal
            continue;
        }
        while in_flight.len() >= SERVER_IN_FLIGHT {
            if let Some(done) = in_flight.join_next().await {
                done??;
            }
        }
        in_flight.spawn(async move { send_unit(&mut client, streams).await });
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_dates() {
        assert_eq!(date_of(0).to_string(), "1970-01-01");
        assert_eq!(date_of(HISTORY_END_US).to_string(), "2026-01-01");
        assert_eq!(date_of(951_782_400_000_000).to_string(), "2000-02-29");
    }

    #[test]
    fn units_are_deterministic_valid_and_proportioned() {
        let a = unit_history(7, 3);
        assert_eq!(a, unit_history(7, 3));
        let mut deals = 0;
        for unit in 0..50 {
            for (stream, events) in unit_history(7, unit) {
                if stream.starts_with("deal-") {
                    deals += 1;
                }
                for e in events {
                    assert_eq!(e.event.validate(""), Ok(()), "{stream}: {:?}", e.event);
                }
            }
        }
        // ~1.2 qualified leads + ~0.7 renewals per unit.
        assert!((50..150).contains(&deals), "{deals} deals in 50 units");
    }
}
