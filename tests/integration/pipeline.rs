//! The `rapport.v1.Pipeline` service over real gRPC: a worked example whose board,
//! forecast and metrics are computed by hand below, as-of answers, every command's
//! rules and status codes, concurrent stage moves, tasks, leads matched to customers.

use crate::common;

use common::TestServer;
use rapport::grpc::pb;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::grpc::pb::pipeline_client::PipelineClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = PipelineClient<Channel>;

/// 2026-01-05T00:00:00Z, the worked example's day 0 (business time).
const T0: i64 = 1_767_571_200;
const DAY: i64 = 86_400;

fn on_day(day: i64) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        occurred_at: Some(prost_types::Timestamp {
            seconds: T0 + day * DAY,
            nanos: 0,
        }),
        actor: "test".into(),
        ..Default::default()
    })
}

fn ts(day: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: T0 + day * DAY,
        nanos: 0,
    })
}

fn stage(id: &str, probability: u32, kind: pb::StageKind) -> pb::Stage {
    pb::Stage {
        stage_id: id.into(),
        name: id.to_uppercase(),
        probability,
        kind: kind as i32,
    }
}

fn stages() -> Vec<pb::Stage> {
    vec![
        stage("qualify", 10, pb::StageKind::Open),
        stage("proposal", 40, pb::StageKind::Open),
        stage("negotiate", 70, pb::StageKind::Open),
        stage("won", 100, pb::StageKind::Won),
        stage("lost", 0, pb::StageKind::Lost),
    ]
}

async fn define_pipeline(c: &mut Client, currencies: &[&str]) -> String {
    c.define_pipeline(pb::DefinePipelineRequest {
        context: on_day(0),
        pipeline: Some(pb::PipelineDefined {
            name: "New business".into(),
            currencies: currencies.iter().map(|c| (*c).to_owned()).collect(),
            stages: stages(),
            ..Default::default()
        }),
    })
    .await
    .expect("define pipeline")
    .into_inner()
    .id
}

async fn create_account(c: &mut Client, name: &str) -> String {
    c.create_account(pb::CreateAccountRequest {
        context: on_day(0),
        account: Some(pb::AccountCreated {
            profile: Some(pb::AccountProfile {
                name: name.into(),
                domain: "acme.example".into(),
                industry: "manufacturing".into(),
                size_band: pb::SizeBand::Medium as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
    .await
    .expect("create account")
    .into_inner()
    .id
}

struct DealSpec<'a> {
    amount: i64,
    currency: &'a str,
    owner: &'a str,
    close: &'a str,
}

fn deal_message(pipeline: &str, account: &str, spec: &DealSpec<'_>) -> pb::DealOpened {
    pb::DealOpened {
        pipeline_id: pipeline.into(),
        stage_id: "qualify".into(),
        title: format!("{} {}", spec.owner, spec.amount),
        amount_minor: spec.amount,
        currency: spec.currency.into(),
        expected_close: spec.close.into(),
        owner: spec.owner.into(),
        account_id: account.into(),
        ..Default::default()
    }
}

async fn open(
    c: &mut Client,
    day: i64,
    pipeline: &str,
    account: &str,
    spec: DealSpec<'_>,
) -> String {
    c.open_deal(pb::OpenDealRequest {
        context: on_day(day),
        deal: Some(deal_message(pipeline, account, &spec)),
    })
    .await
    .expect("open deal")
    .into_inner()
    .id
}

async fn move_to(c: &mut Client, day: i64, deal: &str, stage: &str) -> pb::PipelineWriteResponse {
    c.move_deal_stage(pb::MoveDealStageRequest {
        context: on_day(day),
        deal_id: deal.into(),
        stage_id: stage.into(),
        expected_revision: None,
    })
    .await
    .expect("move")
    .into_inner()
}

async fn lose(c: &mut Client, day: i64, deal: &str, reason: &str) -> pb::PipelineWriteResponse {
    c.lose_deal(pb::LoseDealRequest {
        context: on_day(day),
        deal_id: deal.into(),
        reason: reason.into(),
        ..Default::default()
    })
    .await
    .expect("lose")
    .into_inner()
}

async fn capture(c: &mut Client, source: pb::LeadSource, account: &str) -> String {
    c.capture_lead(pb::CaptureLeadRequest {
        context: on_day(0),
        lead: Some(pb::LeadCaptured {
            source: source as i32,
            account_id: account.into(),
            company_name: "ACME".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("capture")
    .into_inner()
    .id
}

fn cell(currency: &str, count: u64, amount: i64, weighted: i64) -> pb::BoardCell {
    pb::BoardCell {
        currency: currency.into(),
        count,
        amount_minor: amount,
        weighted_minor: weighted,
    }
}

fn cells(board: &pb::PipelineBoard) -> Vec<(String, Vec<pb::BoardCell>)> {
    board
        .stages
        .iter()
        .map(|s| (s.stage.as_ref().unwrap().stage_id.clone(), s.cells.clone()))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn row(
    period: &str,
    owner: &str,
    currency: &str,
    open: u64,
    won: u64,
    weighted: i64,
    best: i64,
    committed: i64,
) -> pb::ForecastRow {
    pb::ForecastRow {
        period: period.into(),
        owner: owner.into(),
        currency: currency.into(),
        open_count: open,
        won_count: won,
        weighted_minor: weighted,
        best_case_minor: best,
        committed_minor: committed,
    }
}

/// The worked example. Stages: qualify 10 %, proposal 40 %, negotiate 70 % (open), won,
/// lost. Amounts in minor units. Business days from 2026-01-05 (day 0):
///
/// | deal | amount    | owner | close      | history                                         |
/// |------|-----------|-------|------------|-------------------------------------------------|
/// | A    | 10000 EUR | ann   | 2026-02-15 | d0 qualify, d2 proposal, d5 negotiate, d10 won  |
/// | B    | 20000 EUR | bob   | 2026-02-28 | d1 qualify, d3 proposal, d6 lost (price)        |
/// | C    |  5000 EUR | ann   | 2026-03-10 | d2 qualify (lead L1, web form), d4 proposal     |
/// | D    |  7000 SEK | bob   | 2026-04-20 | d3 qualify (lead L4, referral)                  |
/// | E    | 30000 EUR | bob   | 2026-03-31 | d4 qualify, d5 proposal, d7 negotiate           |
/// | F    |  8000 EUR | ann   | 2026-02-10 | d0 qualify, d1 lost (no_decision)               |
/// | G    | 12000 EUR | ann   | 2026-01-31 | d1 qualify, d2 proposal, d8 lost (price)        |
///
/// Leads (captured d0): L1 web form → C, L2 web form disqualified, L3 event (open),
/// L4 referral → D.
#[tokio::test]
async fn worked_example_board_forecast_and_metrics_by_hand() {
    let server = TestServer::start().await;
    let mut c = PipelineClient::new(server.channel().await);
    let pipeline = define_pipeline(&mut c, &[]).await;
    let acme = create_account(&mut c, "ACME").await;
    let globex = create_account(&mut c, "Globex").await;
    let spec = |amount, currency, owner, close| DealSpec {
        amount,
        currency,
        owner,
        close,
    };
    let l1 = capture(&mut c, pb::LeadSource::WebForm, &acme).await;
    let l2 = capture(&mut c, pb::LeadSource::WebForm, &acme).await;
    let _l3 = capture(&mut c, pb::LeadSource::Event, &acme).await;
    let l4 = capture(&mut c, pb::LeadSource::Referral, &acme).await;

    let a = open(
        &mut c,
        0,
        &pipeline,
        &globex,
        spec(10_000, "EUR", "ann", "2026-02-15"),
    )
    .await;
    let f = open(
        &mut c,
        0,
        &pipeline,
        &globex,
        spec(8_000, "EUR", "ann", "2026-02-10"),
    )
    .await;
    let b = open(
        &mut c,
        1,
        &pipeline,
        &globex,
        spec(20_000, "EUR", "bob", "2026-02-28"),
    )
    .await;
    let g = open(
        &mut c,
        1,
        &pipeline,
        &globex,
        spec(12_000, "EUR", "ann", "2026-01-31"),
    )
    .await;
    lose(&mut c, 1, &f, "no_decision").await;
    c.disqualify_lead(pb::DisqualifyLeadRequest {
        context: on_day(1),
        disqualification: Some(pb::LeadDisqualified {
            lead_id: l2.clone(),
            reason: "no_budget".into(),
        }),
        expected_revision: None,
    })
    .await
    .unwrap();
    move_to(&mut c, 2, &a, "proposal").await;
    move_to(&mut c, 2, &g, "proposal").await;
    let qualified = |lead: &str, spec: DealSpec<'_>, day| pb::QualifyLeadRequest {
        context: on_day(day),
        lead_id: lead.to_owned(),
        deal: Some(deal_message(&pipeline, "", &spec)),
        ..Default::default()
    };
    let c_deal = c
        .qualify_lead(qualified(&l1, spec(5_000, "EUR", "ann", "2026-03-10"), 2))
        .await
        .unwrap()
        .into_inner()
        .deal_id;
    move_to(&mut c, 3, &b, "proposal").await;
    let d_deal = c
        .qualify_lead(qualified(&l4, spec(7_000, "SEK", "bob", "2026-04-20"), 3))
        .await
        .unwrap()
        .into_inner()
        .deal_id;
    move_to(&mut c, 4, &c_deal, "proposal").await;
    let e = open(
        &mut c,
        4,
        &pipeline,
        &acme,
        spec(30_000, "EUR", "bob", "2026-03-31"),
    )
    .await;
    move_to(&mut c, 5, &a, "negotiate").await;
    move_to(&mut c, 5, &e, "proposal").await;
    let p6 = lose(&mut c, 6, &b, "price").await.position;
    move_to(&mut c, 7, &e, "negotiate").await;
    lose(&mut c, 8, &g, "price").await;
    let last = c
        .win_deal(pb::WinDealRequest {
            context: on_day(10),
            deal_id: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .position;

    // Board now. qualify: D 7000 SEK × 10 % = 700. proposal: C 5000 × 40 % = 2000.
    // negotiate: E 30000 × 70 % = 21000. won: A 10000. lost: B + F + G = 40000, weight 0.
    let board = c
        .get_pipeline_board(pb::GetPipelineBoardRequest {
            pipeline_id: pipeline.clone(),
            min_position: last,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(board.as_of_position, last);
    assert_eq!(
        cells(&board),
        vec![
            ("qualify".into(), vec![cell("SEK", 1, 7_000, 700)]),
            ("proposal".into(), vec![cell("EUR", 1, 5_000, 2_000)]),
            ("negotiate".into(), vec![cell("EUR", 1, 30_000, 21_000)]),
            ("won".into(), vec![cell("EUR", 1, 10_000, 10_000)]),
            ("lost".into(), vec![cell("EUR", 3, 40_000, 0)]),
        ]
    );

    // Board as of day 6 (B just lost): proposal holds C 5000 + E 30000 + G 12000 = 47000
    // EUR, × 40 % = 18800; negotiate A 10000 × 70 % = 7000; lost B + F = 28000.
    let then = c
        .get_pipeline_board(pb::GetPipelineBoardRequest {
            pipeline_id: pipeline.clone(),
            min_position: 0,
            as_of: Some(pb::SalesAsOf {
                bound: Some(pb::sales_as_of::Bound::Position(p6)),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(then.as_of_position, p6);
    assert_eq!(
        cells(&then),
        vec![
            ("qualify".into(), vec![cell("SEK", 1, 7_000, 700)]),
            ("proposal".into(), vec![cell("EUR", 3, 47_000, 18_800)]),
            ("negotiate".into(), vec![cell("EUR", 1, 10_000, 7_000)]),
            ("won".into(), vec![]),
            ("lost".into(), vec![cell("EUR", 2, 28_000, 0)]),
        ]
    );
    // As of the head (by position or by a recorded time after everything) == live.
    for bound in [
        pb::sales_as_of::Bound::Position(last),
        pb::sales_as_of::Bound::RecordedAt(prost_types::Timestamp {
            seconds: 253_402_300_000,
            nanos: 0,
        }),
    ] {
        let mut at_head = c
            .get_pipeline_board(pb::GetPipelineBoardRequest {
                pipeline_id: pipeline.clone(),
                min_position: 0,
                as_of: Some(pb::SalesAsOf { bound: Some(bound) }),
            })
            .await
            .unwrap()
            .into_inner();
        at_head.as_of_position = board.as_of_position;
        assert_eq!(at_head, board);
    }

    // Forecast by expected close (lost deals out): Feb: A won 10000 (ann). Mar: C open
    // 5000 × 40 % = 2000 (ann), E open 30000 × 70 % = 21000 (bob): total weighted 23000,
    // best case 35000. Apr: D 7000 SEK × 10 % = 700 (bob). Q1 = Jan..Mar, Q2 = Apr..Jun.
    let forecast = c
        .get_forecast(pb::GetForecastRequest {
            pipeline_id: pipeline.clone(),
            min_position: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        forecast.months,
        vec![
            row("2026-02", "", "EUR", 0, 1, 0, 0, 10_000),
            row("2026-02", "ann", "EUR", 0, 1, 0, 0, 10_000),
            row("2026-03", "", "EUR", 2, 0, 23_000, 35_000, 0),
            row("2026-03", "ann", "EUR", 1, 0, 2_000, 5_000, 0),
            row("2026-03", "bob", "EUR", 1, 0, 21_000, 30_000, 0),
            row("2026-04", "", "SEK", 1, 0, 700, 7_000, 0),
            row("2026-04", "bob", "SEK", 1, 0, 700, 7_000, 0),
        ]
    );
    assert_eq!(
        forecast.quarters,
        vec![
            row("2026-Q1", "", "EUR", 2, 1, 23_000, 35_000, 10_000),
            row("2026-Q1", "ann", "EUR", 1, 1, 2_000, 5_000, 10_000),
            row("2026-Q1", "bob", "EUR", 1, 0, 21_000, 30_000, 0),
            row("2026-Q2", "", "SEK", 1, 0, 700, 7_000, 0),
            row("2026-Q2", "bob", "SEK", 1, 0, 700, 7_000, 0),
        ]
    );

    // The forecast as the system knew it when B was lost (an auditor's "quarter end"),
    // by the log's recorded time of that write. Then: A negotiate (Feb, 70 %), C and E in
    // proposal (Mar, 40 %), G in proposal (Jan, 40 %), D qualify (Apr SEK, 10 %).
    // Jan: 12000 × 40 % = 4800. Feb: 10000 × 70 % = 7000. Mar: (5000 + 30000) × 40 % =
    // 14000 (ann 2000, bob 12000). Apr: 700 SEK. Nothing won yet.
    let mut store = server.client().await;
    let recorded_at = store
        .read_all(pb::ReadAllRequest {
            from_position: p6,
            max_count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events[0]
        .recorded_at;
    let then = c
        .get_forecast(pb::GetForecastRequest {
            pipeline_id: pipeline.clone(),
            as_of: Some(pb::SalesAsOf {
                bound: Some(pb::sales_as_of::Bound::RecordedAt(recorded_at.unwrap())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(then.as_of_position, p6);
    assert_eq!(
        then.months,
        vec![
            row("2026-01", "", "EUR", 1, 0, 4_800, 12_000, 0),
            row("2026-01", "ann", "EUR", 1, 0, 4_800, 12_000, 0),
            row("2026-02", "", "EUR", 1, 0, 7_000, 10_000, 0),
            row("2026-02", "ann", "EUR", 1, 0, 7_000, 10_000, 0),
            row("2026-03", "", "EUR", 2, 0, 14_000, 35_000, 0),
            row("2026-03", "ann", "EUR", 1, 0, 2_000, 5_000, 0),
            row("2026-03", "bob", "EUR", 1, 0, 12_000, 30_000, 0),
            row("2026-04", "", "SEK", 1, 0, 700, 7_000, 0),
            row("2026-04", "bob", "SEK", 1, 0, 700, 7_000, 0),
        ]
    );

    // Metrics over days [0, 30) of business time.
    // qualify: entered by all 7; left by A B C E G (forward) and F (lost): 5 / 6.
    // proposal: entered by A G C B E; left by A E (to negotiate), B G (lost): 2 / 4.
    // negotiate: entered by A E; left by A (won): 1 / 1.
    // Won 1 (A), lost 3 (B F G): win rate 1 / 4. Cycle of A: day 0 → day 10 = 10 days.
    // EUR: average won 10000; open C and E: velocity 2 × 0.25 × 10000 / 10 = 500 / day.
    // SEK: nothing won: velocity 0. Lost reasons: price 2 (B G), no_decision 1 (F).
    // Leads: web form 2 captured, 1 qualified; event 1, 0; referral 1, 1.
    let metrics = c
        .get_pipeline_metrics(pb::GetPipelineMetricsRequest {
            pipeline_id: pipeline.clone(),
            period_start: ts(0),
            period_end: ts(30),
            min_position: last,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    let conv = |id: &str, entered, exited, advanced, rate| pb::StageConversion {
        stage_id: id.into(),
        entered,
        exited,
        advanced,
        conversion_rate: rate,
    };
    assert_eq!(
        metrics.stages,
        vec![
            conv("qualify", 7, 6, 5, 5.0 / 6.0),
            conv("proposal", 5, 4, 2, 0.5),
            conv("negotiate", 2, 1, 1, 1.0),
        ]
    );
    let transitions: Vec<(String, String, u64)> = metrics
        .transitions
        .iter()
        .map(|t| (t.from_stage_id.clone(), t.to_stage_id.clone(), t.count))
        .collect();
    assert_eq!(
        transitions,
        vec![
            ("negotiate".into(), "won".into(), 1),
            ("proposal".into(), "lost".into(), 2),
            ("proposal".into(), "negotiate".into(), 2),
            ("qualify".into(), "lost".into(), 1),
            ("qualify".into(), "proposal".into(), 5),
        ]
    );
    assert_eq!((metrics.won, metrics.lost), (1, 3));
    assert_eq!(metrics.win_rate, 0.25);
    assert_eq!(metrics.average_cycle_days, 10.0);
    assert_eq!(
        metrics.currencies,
        vec![
            pb::CurrencyMetrics {
                currency: "EUR".into(),
                won_count: 1,
                won_amount_minor: 10_000,
                average_won_minor: 10_000,
                open_count: 2,
                velocity_minor_per_day: 500.0,
            },
            pb::CurrencyMetrics {
                currency: "SEK".into(),
                won_count: 0,
                won_amount_minor: 0,
                average_won_minor: 0,
                open_count: 1,
                velocity_minor_per_day: 0.0,
            },
        ]
    );
    let reasons: Vec<(String, u64)> = metrics
        .lost_reasons
        .iter()
        .map(|r| (r.reason.clone(), r.count))
        .collect();
    assert_eq!(
        reasons,
        vec![("price".into(), 2), ("no_decision".into(), 1)]
    );
    let sources: Vec<(i32, u64, u64, f64)> = metrics
        .lead_sources
        .iter()
        .map(|s| (s.source, s.captured, s.qualified, s.conversion_rate))
        .collect();
    assert_eq!(
        sources,
        vec![
            (pb::LeadSource::WebForm as i32, 2, 1, 0.5),
            (pb::LeadSource::Event as i32, 1, 0, 0.0),
            (pb::LeadSource::Referral as i32, 1, 1, 1.0),
        ]
    );
    // A period after everything has no facts (but open deals stay open).
    let later = c
        .get_pipeline_metrics(pb::GetPipelineMetricsRequest {
            pipeline_id: pipeline.clone(),
            period_start: ts(30),
            period_end: ts(60),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((later.won, later.lost, later.win_rate), (0, 0, 0.0));

    // GetDeal: A's stage history with the time in each stage (business days).
    let deal = c
        .get_deal(pb::GetDealRequest {
            deal_id: a.clone(),
            min_position: last,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    let spans: Vec<(String, i64)> = deal
        .history
        .iter()
        .filter(|s| s.left_at.is_some())
        .map(|s| (s.stage_id.clone(), s.duration_seconds / DAY))
        .collect();
    assert_eq!(
        spans,
        vec![
            ("qualify".into(), 2),
            ("proposal".into(), 3),
            ("negotiate".into(), 5)
        ]
    );
    assert_eq!(deal.status, pb::DealStatus::Won as i32);
    assert_eq!(deal.history.last().unwrap().stage_id, "won");

    // The lead-born deals link back to their leads, and the leads to their deals.
    let c_view = c
        .get_deal(pb::GetDealRequest {
            deal_id: c_deal.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c_view.lead_id, l1);
    assert_eq!(c_view.account_id, acme, "the lead's account");
    let leads = c
        .list_leads(pb::ListLeadsRequest {
            status: pb::LeadStatus::Qualified as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leads;
    let mut linked: Vec<(String, String)> = leads
        .iter()
        .map(|l| (l.lead_id.clone(), l.deal_id.clone()))
        .collect();
    linked.sort();
    let mut expected = vec![(l1.clone(), c_deal.clone()), (l4.clone(), d_deal.clone())];
    expected.sort();
    assert_eq!(linked, expected);

    // GetAccount: ACME has C and D (from its leads) and E, all open; totals per currency.
    let account = c
        .get_account(pb::GetAccountRequest {
            account_id: acme.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.open_deals.len(), 3);
    assert!(account.closed_deals.is_empty());
    let totals: Vec<(String, u64, i64)> = account
        .totals
        .iter()
        .map(|t| (t.currency.clone(), t.open_count, t.open_minor))
        .collect();
    assert_eq!(
        totals,
        vec![("EUR".into(), 2, 35_000), ("SEK".into(), 1, 7_000)]
    );

    // ListDeals: filters and paging.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_deals(pb::ListDealsRequest {
                pipeline_id: pipeline.clone(),
                status: pb::DealStatus::Lost as i32,
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.deals.into_iter().map(|d| d.deal_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    let mut lost = vec![b.clone(), f.clone(), g.clone()];
    lost.sort();
    assert_eq!(seen, lost);
    let bobs_march = c
        .list_deals(pb::ListDealsRequest {
            owner: "bob".into(),
            close_from: "2026-03-01".into(),
            close_to: "2026-03-31".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deals;
    assert_eq!(
        bobs_march
            .iter()
            .map(|d| d.deal_id.clone())
            .collect::<Vec<_>>(),
        vec![e.clone()]
    );
    let in_negotiation = c
        .list_deals(pb::ListDealsRequest {
            stage_id: "negotiate".into(),
            account_id: acme.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deals;
    assert_eq!(in_negotiation.len(), 1);
}

fn code_of<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(answer) => panic!("expected an error, got {answer:?}"),
        Err(status) => status.code(),
    }
}

async fn register_customer(server: &TestServer, email: &str) -> String {
    let mut customers = CustomersClient::new(server.channel().await);
    customers
        .register_customer(pb::RegisterCustomerRequest {
            given_name: "Ada".into(),
            emails: vec![email.into()],
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .customer_id
}

#[tokio::test]
async fn commands_keep_their_rules_with_the_right_status_codes() {
    let server = TestServer::start().await;
    let mut c = PipelineClient::new(server.channel().await);
    let pipeline = define_pipeline(&mut c, &["EUR"]).await;
    let account = create_account(&mut c, "ACME").await;
    let ada = register_customer(&server, "ada@example.com").await;
    let missing = uuid::Uuid::now_v7().to_string();

    // INVALID_ARGUMENT: a pipeline without a won stage, a bad probability, a bad id.
    let mut bad = stages();
    bad.retain(|s| s.kind != pb::StageKind::Won as i32);
    bad[0].probability = 101;
    let refused = c
        .define_pipeline(pb::DefinePipelineRequest {
            context: None,
            pipeline: Some(pb::PipelineDefined {
                name: "x".into(),
                stages: bad,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("pipeline.stages[0].probability"),
        "{}",
        refused.message()
    );
    assert_eq!(
        code_of(
            c.move_deal_stage(pb::MoveDealStageRequest {
                deal_id: "nope".into(),
                stage_id: "Bad Stage".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    // ALREADY_EXISTS: the same pipeline id twice.
    assert_eq!(
        code_of(
            c.define_pipeline(pb::DefinePipelineRequest {
                context: None,
                pipeline: Some(pb::PipelineDefined {
                    pipeline_id: pipeline.clone(),
                    name: "again".into(),
                    stages: stages(),
                    ..Default::default()
                }),
            })
            .await
        ),
        Code::AlreadyExists
    );

    // Deals: NOT_FOUND pipeline / customer / account, FAILED_PRECONDITION for a won
    // stage, an unknown stage or a currency the pipeline does not take.
    let spec = DealSpec {
        amount: 100,
        currency: "EUR",
        owner: "ann",
        close: "2026-03-01",
    };
    let mut deal = deal_message(&pipeline, &account, &spec);
    deal.customer_id = ada.clone();
    for (change, code) in [
        (
            Box::new(|d: &mut pb::DealOpened| d.pipeline_id = uuid::Uuid::now_v7().to_string())
                as Box<dyn Fn(&mut pb::DealOpened)>,
            Code::NotFound,
        ),
        (
            Box::new(|d| d.customer_id = uuid::Uuid::now_v7().to_string()),
            Code::NotFound,
        ),
        (
            Box::new(|d| d.account_id = uuid::Uuid::now_v7().to_string()),
            Code::NotFound,
        ),
        (
            Box::new(|d| d.stage_id = "won".into()),
            Code::FailedPrecondition,
        ),
        (
            Box::new(|d| d.stage_id = "nowhere".into()),
            Code::FailedPrecondition,
        ),
        (
            Box::new(|d| d.currency = "USD".into()),
            Code::FailedPrecondition,
        ),
        (Box::new(|d| d.amount_minor = -1), Code::InvalidArgument),
        (
            Box::new(|d| d.expected_close = "2026-02-30".into()),
            Code::InvalidArgument,
        ),
    ] {
        let mut wrong = deal.clone();
        change(&mut wrong);
        assert_eq!(
            code_of(
                c.open_deal(pb::OpenDealRequest {
                    context: None,
                    deal: Some(wrong.clone()),
                })
                .await
            ),
            code,
            "{wrong:?}"
        );
    }
    let opened = c
        .open_deal(pb::OpenDealRequest {
            context: None,
            deal: Some(deal.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let id = opened.id.clone();
    assert_eq!(opened.revision, 0);
    let mut again = deal.clone();
    again.deal_id = id.clone();
    assert_eq!(
        code_of(
            c.open_deal(pb::OpenDealRequest {
                context: None,
                deal: Some(again)
            })
            .await
        ),
        Code::AlreadyExists
    );
    let mv = |stage: &str| pb::MoveDealStageRequest {
        deal_id: id.clone(),
        stage_id: stage.into(),
        ..Default::default()
    };
    assert_eq!(
        code_of(c.move_deal_stage(mv("won")).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code_of(c.move_deal_stage(mv("qualify")).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code_of(c.move_deal_stage(mv("elsewhere")).await),
        Code::FailedPrecondition
    );
    c.move_deal_stage(mv("proposal")).await.unwrap();
    assert_eq!(
        code_of(
            c.move_deal_stage(pb::MoveDealStageRequest {
                deal_id: missing.clone(),
                stage_id: "proposal".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    // ChangeDeal, then a stage that has deals cannot be removed.
    c.change_deal(pb::ChangeDealRequest {
        context: None,
        change: Some(pb::DealChanged {
            deal_id: id.clone(),
            amount_minor: Some(250),
            expected_close: "2026-04-01".into(),
            owner: Some("bob".into()),
        }),
        expected_revision: Some(1),
    })
    .await
    .unwrap();
    assert_eq!(
        code_of(
            c.change_deal(pb::ChangeDealRequest {
                context: None,
                change: Some(pb::DealChanged {
                    deal_id: id.clone(),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await
        ),
        Code::InvalidArgument
    );
    let mut fewer = stages();
    fewer.retain(|s| s.stage_id != "proposal");
    let change = |stages: Vec<pb::Stage>, expected| pb::ChangePipelineRequest {
        context: None,
        pipeline: Some(pb::PipelineChanged {
            pipeline_id: pipeline.clone(),
            name: "New business".into(),
            currencies: vec!["EUR".into()],
            stages,
        }),
        expected_revision: expected,
    };
    assert_eq!(
        code_of(c.change_pipeline(change(fewer, None)).await),
        Code::FailedPrecondition
    );
    // Reordering (and re-weighting) keeps every stage: allowed; a stale pin is ABORTED.
    let mut reordered = stages();
    reordered.swap(0, 1);
    reordered[0].probability = 45;
    assert_eq!(
        code_of(c.change_pipeline(change(reordered.clone(), Some(7))).await),
        Code::Aborted
    );
    c.change_pipeline(change(reordered, Some(0))).await.unwrap();

    // Win, then no moves until reopened; reopen goes back to where it was.
    c.win_deal(pb::WinDealRequest {
        deal_id: id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        code_of(c.move_deal_stage(mv("negotiate")).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code_of(
            c.lose_deal(pb::LoseDealRequest {
                deal_id: id.clone(),
                reason: "price".into(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    c.reopen_deal(pb::ReopenDealRequest {
        deal_id: id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        code_of(
            c.reopen_deal(pb::ReopenDealRequest {
                deal_id: id.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    let lost = c
        .lose_deal(pb::LoseDealRequest {
            deal_id: id.clone(),
            reason: "competitor".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let view = c
        .get_deal(pb::GetDealRequest {
            deal_id: id.clone(),
            min_position: lost.position,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            view.status,
            view.lost_reason.as_str(),
            view.lost_from_stage_id.as_str()
        ),
        (pb::DealStatus::Lost as i32, "competitor", "proposal")
    );
    assert_eq!((view.amount_minor, view.owner.as_str()), (250, "bob"));
    let stages_seen: Vec<&str> = view.history.iter().map(|s| s.stage_id.as_str()).collect();
    assert_eq!(
        stages_seen,
        ["qualify", "proposal", "won", "proposal", "lost"]
    );
    assert_eq!(
        code_of(
            c.get_deal(pb::GetDealRequest {
                deal_id: missing.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );

    // Accounts: contacts link once per role, unlink only when linked, owner assigned.
    let link = |role: pb::ContactRole, customer: &str| pb::LinkContactRequest {
        context: None,
        link: Some(pb::AccountContactLinked {
            account_id: account.clone(),
            customer_id: customer.into(),
            role: role as i32,
        }),
        expected_revision: None,
    };
    c.link_contact(link(pb::ContactRole::Buyer, &ada))
        .await
        .unwrap();
    assert_eq!(
        code_of(c.link_contact(link(pb::ContactRole::Buyer, &ada)).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code_of(c.link_contact(link(pb::ContactRole::Buyer, &missing)).await),
        Code::NotFound
    );
    assert_eq!(
        code_of(
            c.link_contact(link(pb::ContactRole::Unspecified, &ada))
                .await
        ),
        Code::InvalidArgument
    );
    c.link_contact(link(pb::ContactRole::DecisionMaker, &ada))
        .await
        .unwrap();
    c.assign_account_owner(pb::AssignAccountOwnerRequest {
        context: None,
        assignment: Some(pb::AccountOwnerAssigned {
            account_id: account.clone(),
            owner: "ann".into(),
        }),
        expected_revision: None,
    })
    .await
    .unwrap();
    let updated = c
        .update_account(pb::UpdateAccountRequest {
            context: None,
            account: Some(pb::AccountUpdated {
                account_id: account.clone(),
                profile: Some(pb::AccountProfile {
                    name: "ACME Holding".into(),
                    ..Default::default()
                }),
            }),
            expected_revision: None,
        })
        .await
        .unwrap()
        .into_inner();
    let view = c
        .get_account(pb::GetAccountRequest {
            account_id: account.clone(),
            min_position: updated.position,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.profile.as_ref().unwrap().name, "ACME Holding");
    assert_eq!(view.owner, "ann");
    assert_eq!(
        view.contacts,
        vec![pb::AccountContact {
            customer_id: ada.clone(),
            role: pb::ContactRole::DecisionMaker as i32,
        }]
    );
    assert_eq!(view.closed_deals.len(), 1);
    let unlink = || pb::UnlinkContactRequest {
        context: None,
        unlink: Some(pb::AccountContactUnlinked {
            account_id: account.clone(),
            customer_id: ada.clone(),
        }),
        expected_revision: None,
    };
    c.unlink_contact(unlink()).await.unwrap();
    assert_eq!(
        code_of(c.unlink_contact(unlink()).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code_of(
            c.update_account(pb::UpdateAccountRequest {
                context: None,
                account: Some(pb::AccountUpdated {
                    account_id: missing.clone(),
                    profile: Some(pb::AccountProfile {
                        name: "x".into(),
                        ..Default::default()
                    }),
                }),
                expected_revision: None,
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code_of(
            c.get_account(pb::GetAccountRequest {
                account_id: missing.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );

    // Sales events are the service's: a raw append is refused.
    let mut store = server.client().await;
    let raw = store
        .append(common::append(
            &format!("deal-{id}"),
            None,
            vec![pb::ProposedEvent {
                event: Some(pb::Event {
                    kind: Some(pb::event::Kind::DealWon(pb::DealWon {
                        deal_id: id.clone(),
                        from_stage_id: "proposal".into(),
                        stage_id: "won".into(),
                    })),
                }),
                ..Default::default()
            }],
        ))
        .await
        .unwrap_err();
    assert_eq!(raw.code(), Code::InvalidArgument);
    assert!(
        raw.message().contains("Pipeline service"),
        "{}",
        raw.message()
    );
}

#[tokio::test]
async fn concurrent_stage_moves_one_succeeds_the_other_is_aborted() {
    let server = TestServer::start().await;
    let mut c = PipelineClient::new(server.channel().await);
    let pipeline = define_pipeline(&mut c, &[]).await;
    let account = create_account(&mut c, "ACME").await;
    let spec = DealSpec {
        amount: 100,
        currency: "EUR",
        owner: "ann",
        close: "2026-03-01",
    };
    for round in 0..5 {
        let deal = open(&mut c, 0, &pipeline, &account, DealSpec { ..spec }).await;
        // Both saw revision 0 and move the deal somewhere else at the same time.
        let moves = ["proposal", "negotiate"].map(|stage| {
            let mut c = c.clone();
            let request = pb::MoveDealStageRequest {
                context: None,
                deal_id: deal.clone(),
                stage_id: stage.into(),
                expected_revision: Some(0),
            };
            tokio::spawn(async move { c.move_deal_stage(request).await })
        });
        let mut codes = Vec::new();
        let mut moved_at = 0;
        for handle in moves {
            codes.push(match handle.await.unwrap() {
                Ok(written) => {
                    moved_at = written.into_inner().position;
                    Code::Ok
                }
                Err(status) => status.code(),
            });
        }
        codes.sort_by_key(|c| *c as i32);
        assert_eq!(codes, vec![Code::Ok, Code::Aborted], "round {round}");
        // Without a pinned revision the service re-decides on the new state: moves to
        // the two other open stages are both still valid after either, so both are
        // written, one after the other.
        let current = c
            .get_deal(pb::GetDealRequest {
                deal_id: deal.clone(),
                min_position: moved_at,
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner();
        let others: Vec<&str> = ["qualify", "proposal", "negotiate"]
            .into_iter()
            .filter(|s| *s != current.stage_id)
            .collect();
        let moves = others.iter().map(|stage| {
            let mut c = c.clone();
            let request = pb::MoveDealStageRequest {
                context: None,
                deal_id: deal.clone(),
                stage_id: (*stage).into(),
                expected_revision: None,
            };
            tokio::spawn(async move { c.move_deal_stage(request).await })
        });
        let mut last = 0;
        for handle in moves.collect::<Vec<_>>() {
            last = last.max(
                handle
                    .await
                    .unwrap()
                    .expect("still valid")
                    .into_inner()
                    .position,
            );
        }
        let after = c
            .get_deal(pb::GetDealRequest {
                deal_id: deal.clone(),
                min_position: last,
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after.history.len(), 4, "round {round}");
    }
}

#[tokio::test]
async fn leads_match_customers_by_email_and_commands_are_idempotent() {
    let server = TestServer::start().await;
    let mut c = PipelineClient::new(server.channel().await);
    let pipeline = define_pipeline(&mut c, &[]).await;
    let ada = register_customer(&server, "ada@example.com").await;
    let event_id = uuid::Uuid::now_v7().to_string();
    let request = pb::CaptureLeadRequest {
        context: Some(pb::WriteContext {
            event_id: event_id.clone(),
            ..Default::default()
        }),
        lead: Some(pb::LeadCaptured {
            source: pb::LeadSource::Campaign as i32,
            campaign_id: "spring".into(),
            ..Default::default()
        }),
        match_email: "  ADA@Example.com".into(),
        match_phone: String::new(),
    };
    let first = c.capture_lead(request.clone()).await.unwrap().into_inner();
    let again = c.capture_lead(request).await.unwrap().into_inner();
    assert_eq!(
        first, again,
        "a re-sent capture answers with the original write"
    );
    let leads = c
        .list_leads(pb::ListLeadsRequest {
            campaign_id: "spring".into(),
            min_position: first.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leads;
    assert_eq!(leads.len(), 1);
    assert_eq!(
        leads[0].customer_id, ada,
        "matched by the keyed hash of the email"
    );
    // No contact detail of the lead is stored: the event carries the customer id only.
    let mut store = server.client().await;
    let read = store
        .read_stream(pb::ReadStreamRequest {
            stream: format!("lead-{}", first.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let text = format!("{read:?}");
    assert!(!text.to_lowercase().contains("ada@example.com"), "{text}");

    // An unknown email leaves the lead without a customer; qualifying it then needs one.
    let lone = c
        .capture_lead(pb::CaptureLeadRequest {
            lead: Some(pb::LeadCaptured {
                source: pb::LeadSource::WebForm as i32,
                ..Default::default()
            }),
            match_email: "nobody@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(
        code_of(
            c.capture_lead(pb::CaptureLeadRequest {
                lead: Some(pb::LeadCaptured {
                    source: pb::LeadSource::WebForm as i32,
                    ..Default::default()
                }),
                match_email: "not an email".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    let deal = pb::DealOpened {
        pipeline_id: pipeline.clone(),
        stage_id: "qualify".into(),
        title: "spring deal".into(),
        amount_minor: 1_000,
        currency: "EUR".into(),
        expected_close: "2026-05-01".into(),
        ..Default::default()
    };
    let qualify = |lead: &str, customer: &str| pb::QualifyLeadRequest {
        context: None,
        lead_id: lead.into(),
        customer_id: customer.into(),
        deal: Some(deal.clone()),
        expected_revision: None,
        new_customer: None,
    };
    assert_eq!(
        code_of(c.qualify_lead(qualify(&lone, "")).await),
        Code::FailedPrecondition
    );
    let done = c
        .qualify_lead(qualify(&lone, &ada))
        .await
        .unwrap()
        .into_inner();
    assert!(!done.deal_id.is_empty());
    assert_eq!(
        code_of(c.qualify_lead(qualify(&lone, &ada)).await),
        Code::FailedPrecondition,
        "a lead is qualified once"
    );
    let opened = c
        .get_deal(pb::GetDealRequest {
            deal_id: done.deal_id.clone(),
            min_position: done.position,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (opened.lead_id.as_str(), opened.customer_id.as_str()),
        (lone.as_str(), ada.as_str())
    );
    // Assign / disqualify: only open leads.
    let first_id = first.id.clone();
    c.assign_lead(pb::AssignLeadRequest {
        context: None,
        assignment: Some(pb::LeadAssigned {
            lead_id: first_id.clone(),
            owner: "ann".into(),
        }),
        expected_revision: Some(0),
    })
    .await
    .unwrap();
    assert_eq!(
        code_of(
            c.assign_lead(pb::AssignLeadRequest {
                context: None,
                assignment: Some(pb::LeadAssigned {
                    lead_id: lone.clone(),
                    owner: "ann".into(),
                }),
                expected_revision: None,
            })
            .await
        ),
        Code::FailedPrecondition
    );
    let disqualify = |reason: &str| pb::DisqualifyLeadRequest {
        context: None,
        disqualification: Some(pb::LeadDisqualified {
            lead_id: first_id.clone(),
            reason: reason.into(),
        }),
        expected_revision: None,
    };
    assert_eq!(
        code_of(c.disqualify_lead(disqualify("No Budget")).await),
        Code::InvalidArgument
    );
    c.disqualify_lead(disqualify("no_budget")).await.unwrap();
    assert_eq!(
        code_of(c.disqualify_lead(disqualify("spam")).await),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn tasks_on_deals_and_accounts_and_the_overdue_ones() {
    let server = TestServer::start().await;
    let mut c = PipelineClient::new(server.channel().await);
    let account = create_account(&mut c, "ACME").await;
    let task = |due_day: i64, assignee: &str, account_id: &str| pb::CreateTaskRequest {
        context: on_day(0),
        task: Some(pb::TaskCreated {
            account_id: account_id.into(),
            kind: pb::TaskKind::Call as i32,
            title: "Call back about the offer".into(),
            due_at: ts(due_day),
            assignee: assignee.into(),
            ..Default::default()
        }),
    };
    let early = c
        .create_task(task(1, "ann", &account))
        .await
        .unwrap()
        .into_inner()
        .id;
    let late = c
        .create_task(task(20, "ann", &account))
        .await
        .unwrap()
        .into_inner()
        .id;
    let bobs = c
        .create_task(task(2, "bob", &account))
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(
        code_of(
            c.create_task(task(1, "ann", &uuid::Uuid::now_v7().to_string()))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code_of(c.create_task(task(1, "ann", "")).await),
        Code::InvalidArgument
    );
    let done = c
        .complete_task(pb::CompleteTaskRequest {
            context: None,
            task_id: bobs.clone(),
            expected_revision: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code_of(
            c.cancel_task(pb::CancelTaskRequest {
                context: None,
                task_id: bobs.clone(),
                expected_revision: None,
            })
            .await
        ),
        Code::FailedPrecondition
    );
    // Overdue on day 10: ann's day-1 task (bob's is done, ann's day-20 one is not due).
    let overdue = c
        .list_tasks(pb::ListTasksRequest {
            overdue_only: true,
            overdue_at: ts(10),
            min_position: done.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(
        overdue
            .iter()
            .map(|t| t.task_id.clone())
            .collect::<Vec<_>>(),
        vec![early.clone()]
    );
    assert!(overdue[0].overdue);
    let anns = c
        .list_tasks(pb::ListTasksRequest {
            assignee: "ann".into(),
            overdue_at: ts(10),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let mut flags: Vec<(String, bool)> = anns
        .iter()
        .map(|t| (t.task_id.clone(), t.overdue))
        .collect();
    flags.sort();
    let mut expected = vec![(early.clone(), true), (late.clone(), false)];
    expected.sort();
    assert_eq!(flags, expected);
    let cancelled = c
        .cancel_task(pb::CancelTaskRequest {
            context: None,
            task_id: early.clone(),
            expected_revision: None,
        })
        .await
        .unwrap()
        .into_inner();
    let open = c
        .list_tasks(pb::ListTasksRequest {
            status: pb::TaskStatus::Open as i32,
            min_position: cancelled.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(
        open.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(),
        vec![late]
    );
    // Before the cancellation, as of its position minus one, it was still open.
    let before = c
        .list_tasks(pb::ListTasksRequest {
            status: pb::TaskStatus::Open as i32,
            as_of: Some(pb::SalesAsOf {
                bound: Some(pb::sales_as_of::Bound::Position(cancelled.position - 1)),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.tasks.len(), 2);
    assert_eq!(before.as_of_position, cancelled.position - 1);
    // Bad paging input.
    assert_eq!(
        code_of(
            c.list_tasks(pb::ListTasksRequest {
                page_size: -1,
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code_of(
            c.list_deals(pb::ListDealsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code_of(
            c.get_pipeline_metrics(pb::GetPipelineMetricsRequest {
                period_start: ts(5),
                period_end: ts(1),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code_of(
            c.get_pipeline_board(pb::GetPipelineBoardRequest {
                pipeline_id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn qualifying_a_lead_registers_its_customer_atomically_or_matches_one() {
    let server = TestServer::start().await;
    let mut c = PipelineClient::new(server.channel().await);
    let mut customers = CustomersClient::new(server.channel().await);
    let pipeline = define_pipeline(&mut c, &[]).await;
    let first_lead = capture(&mut c, pb::LeadSource::Event, "").await;
    let second_lead = capture(&mut c, pb::LeadSource::Event, "").await;
    let deal = pb::DealOpened {
        pipeline_id: pipeline.clone(),
        stage_id: "qualify".into(),
        title: "booth visitor".into(),
        amount_minor: 2_000,
        currency: "EUR".into(),
        expected_close: "2026-06-01".into(),
        ..Default::default()
    };
    let qualify = |lead: &str, email: &str| pb::QualifyLeadRequest {
        lead_id: lead.into(),
        deal: Some(deal.clone()),
        new_customer: Some(pb::NewCustomer {
            given_name: "Grace".into(),
            family_name: "Hopper".into(),
            emails: vec![email.into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        code_of(c.qualify_lead(qualify(&first_lead, "not-an-email")).await),
        Code::InvalidArgument
    );
    let done = c
        .qualify_lead(qualify(&first_lead, "grace@example.com"))
        .await
        .unwrap()
        .into_inner();
    let opened = c
        .get_deal(pb::GetDealRequest {
            deal_id: done.deal_id.clone(),
            min_position: done.position,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    let grace = opened.customer_id.clone();
    assert!(!grace.is_empty(), "the lead became a customer");
    let profile = customers
        .get_customer(pb::GetCustomerRequest {
            customer_id: grace.clone(),
            min_position: done.position,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.emails, vec!["grace@example.com".to_owned()]);
    assert_eq!(profile.given_name, "Grace");
    // The same person from another lead is matched, not registered twice.
    let again = c
        .qualify_lead(qualify(&second_lead, "  GRACE@example.com"))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .get_deal(pb::GetDealRequest {
            deal_id: again.deal_id.clone(),
            min_position: again.position,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.customer_id, grace);
    // The registration reserved the email: the Customers service sees it taken.
    let taken = customers
        .register_customer(pb::RegisterCustomerRequest {
            emails: vec!["grace@example.com".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    // The registration is a sealed personal event (the server opens it for the reader).
    let mut store = server.client().await;
    let raw = store
        .read_stream(pb::ReadStreamRequest {
            stream: format!("customer-{grace}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.events.len(), 1);
    assert_eq!(raw.events[0].personal_data, pb::PersonalData::Clear as i32);
}

/// `rapport seed --server` sends the sales history through the Pipeline service, so its
/// rules check every seeded fact; re-seeding writes nothing new. Offline and through a
/// server give the same deals.
#[tokio::test]
async fn the_seed_grows_a_pipeline_that_the_service_accepts() {
    let server = TestServer::start().await;
    let customers = 100;
    let report = rapport::seed::run(
        rapport::seed::SeedTarget::Server(server.server.url()),
        customers,
        5,
    )
    .await
    .expect("seed through the server");
    let mut store = server.client().await;
    let head = store
        .read_all(pb::ReadAllRequest {
            backwards: true,
            max_count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events[0]
        .position;
    let mut c = PipelineClient::new(server.channel().await);
    let expected_deals: usize = (0..customers / rapport::seed_sales::UNIT_CUSTOMERS)
        .flat_map(|unit| rapport::seed_sales::unit_history(5, unit))
        .filter(|(stream, _)| stream.starts_with("deal-"))
        .count();
    let deals = c
        .list_deals(pb::ListDealsRequest {
            page_size: 500,
            min_position: head,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deals;
    assert_eq!(deals.len(), expected_deals);
    assert!(expected_deals > 0);
    let board = c
        .get_pipeline_board(pb::GetPipelineBoardRequest {
            pipeline_id: rapport::seed_sales::new_business_id(5).to_string(),
            min_position: head,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(board.stages.len(), 6);
    // Seeding again is idempotent: the same commands answer with their first writes.
    rapport::seed::run(
        rapport::seed::SeedTarget::Server(server.server.url()),
        customers,
        5,
    )
    .await
    .expect("re-seed");
    let again = store
        .read_all(pb::ReadAllRequest {
            backwards: true,
            max_count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events[0]
        .position;
    assert_eq!(again, head, "re-seeding wrote nothing ({report:?})");
}
