//! The `rapport.v1.Pipeline` service over real gRPC: a worked example whose board,
//! forecast and metrics are computed by hand below, as-of answers, every command's
//! rules and status codes, concurrent stage moves, tasks, leads matched to customers.

mod common;

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

async fn open(c: &mut Client, day: i64, pipeline: &str, account: &str, spec: DealSpec<'_>) -> String {
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

    let a = open(&mut c, 0, &pipeline, &globex, spec(10_000, "EUR", "ann", "2026-02-15")).await;
    let f = open(&mut c, 0, &pipeline, &globex, spec(8_000, "EUR", "ann", "2026-02-10")).await;
    let b = open(&mut c, 1, &pipeline, &globex, spec(20_000, "EUR", "bob", "2026-02-28")).await;
    let g = open(&mut c, 1, &pipeline, &globex, spec(12_000, "EUR", "ann", "2026-01-31")).await;
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
    let e = open(&mut c, 4, &pipeline, &acme, spec(30_000, "EUR", "bob", "2026-03-31")).await;
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
    assert_eq!(reasons, vec![("price".into(), 2), ("no_decision".into(), 1)]);
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
    let mut linked: Vec<(String, String)> =
        leads.iter().map(|l| (l.lead_id.clone(), l.deal_id.clone())).collect();
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
        bobs_march.iter().map(|d| d.deal_id.clone()).collect::<Vec<_>>(),
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
