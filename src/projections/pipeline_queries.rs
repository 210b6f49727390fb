//! The pipeline read queries: pure functions over a [`SalesModel`], the live one (loaded
//! from the projection) or one folded as of a past position or time. No clock: "now" is
//! what the caller passes (the overdue cut-off), the model's own bound otherwise.
//!
//! Money is summed per currency only, in `i128` and saturated to `i64` on output; a
//! weighted amount is `Σ(amount × probability) / 100`, floored once per sum.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::pipeline::{AccountView, DealView, LeadView, PipelineView, SalesModel, TaskView};
use crate::domain::common::CalendarDate;
use crate::domain::events::{LeadSource, Stage, StageKind};
use crate::domain::pipeline::{DealStatus, LeadStatus, TaskStatus};

/// Microseconds in a day.
const DAY_US: f64 = 86_400_000_000.0;

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// Count and sums of the deals in one board cell (one stage, one currency).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Deals.
    pub count: u64,
    /// Σ amount, minor units.
    pub amount_minor: i64,
    /// Σ amount × probability / 100, minor units (floored).
    pub weighted_minor: i64,
}

#[derive(Default)]
struct Sum {
    count: u64,
    amount: i128,
    weighted_x100: i128,
}

impl Sum {
    fn add(&mut self, amount: i64, probability: u8) {
        self.count += 1;
        self.amount += i128::from(amount);
        self.weighted_x100 += i128::from(amount) * i128::from(probability);
    }

    fn cell(&self) -> Cell {
        Cell {
            count: self.count,
            amount_minor: saturate(self.amount),
            weighted_minor: saturate(self.weighted_x100.div_euclid(100)),
        }
    }
}

/// One column of the board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardStage {
    /// The stage (a deal in a stage the pipeline no longer has shows under a placeholder).
    pub stage: Stage,
    /// Its cells by currency.
    pub by_currency: BTreeMap<String, Cell>,
}

/// The board of one pipeline: per stage, per currency, the deals in it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Board {
    /// The pipeline.
    pub pipeline: PipelineView,
    /// Its stages in board order.
    pub stages: Vec<BoardStage>,
}

/// The board of `pipeline_id`, or `None` when it does not exist in `model`. Open stages
/// hold the open deals, won / lost stages the deals closed there.
pub fn board(model: &SalesModel, pipeline_id: Uuid) -> Option<Board> {
    let pipeline = model.pipelines.get(&pipeline_id)?.clone();
    let mut sums: BTreeMap<&str, BTreeMap<&str, Sum>> = BTreeMap::new();
    let mut extra: Vec<Stage> = Vec::new();
    for deal in model
        .deals
        .values()
        .filter(|d| d.pipeline_id == pipeline_id)
    {
        let stage = super::pipeline::stage_or_placeholder(&pipeline.def, &deal.stage_id);
        if pipeline.def.stage(&deal.stage_id).is_none()
            && !extra.iter().any(|s| s.stage_id == stage.stage_id)
        {
            extra.push(stage.clone());
        }
        sums.entry(deal.stage_id.as_str())
            .or_default()
            .entry(deal.currency.as_str())
            .or_default()
            .add(deal.amount_minor, stage.probability);
    }
    let stages = pipeline
        .def
        .stages
        .iter()
        .chain(extra.iter())
        .map(|stage| BoardStage {
            stage: stage.clone(),
            by_currency: sums
                .get(stage.stage_id.as_str())
                .map(|cells| {
                    cells
                        .iter()
                        .map(|(currency, sum)| ((*currency).to_owned(), sum.cell()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Some(Board { pipeline, stages })
}

/// The stages of `pipeline_id` that have deals (open or closed) in `model`.
pub fn stages_with_deals(model: &SalesModel, pipeline_id: Uuid) -> BTreeSet<String> {
    model
        .deals
        .values()
        .filter(|d| d.pipeline_id == pipeline_id)
        .map(|d| d.stage_id.clone())
        .collect()
}

/// What a forecast covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForecastQuery {
    /// Only this pipeline.
    pub pipeline_id: Option<Uuid>,
    /// Only deals expected to close on or after this date.
    pub close_from: Option<CalendarDate>,
    /// Only deals expected to close on or before this date.
    pub close_to: Option<CalendarDate>,
}

/// One forecast row: one period, one owner (empty = all owners), one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForecastRow {
    /// `2026-03` (a month) or `2026-Q1` (a quarter), by expected close date.
    pub period: String,
    /// The owner; empty for the total over all owners.
    pub owner: String,
    /// Currency.
    pub currency: String,
    /// Open deals.
    pub open_count: u64,
    /// Won deals.
    pub won_count: u64,
    /// Σ open amount × stage probability / 100.
    pub weighted_minor: i64,
    /// Σ open amount (every open deal closes).
    pub best_case_minor: i64,
    /// Σ won amount.
    pub committed_minor: i64,
}

#[derive(Default)]
struct ForecastSum {
    open: Sum,
    won: Sum,
}

/// The forecast by expected close month and by quarter (business time: the deals'
/// expected close dates), per owner and in total, per currency. Lost deals are not in it.
/// Returns (months, quarters), each sorted by period, owner (total first), currency.
pub fn forecast(model: &SalesModel, query: &ForecastQuery) -> (Vec<ForecastRow>, Vec<ForecastRow>) {
    type Key = (String, String, String);
    let mut months: BTreeMap<Key, ForecastSum> = BTreeMap::new();
    let mut quarters: BTreeMap<Key, ForecastSum> = BTreeMap::new();
    for deal in model.deals.values() {
        if query.pipeline_id.is_some_and(|p| p != deal.pipeline_id)
            || query.close_from.is_some_and(|d| deal.expected_close < d)
            || query.close_to.is_some_and(|d| deal.expected_close > d)
            || deal.status == DealStatus::Lost
        {
            continue;
        }
        let probability = model
            .pipelines
            .get(&deal.pipeline_id)
            .and_then(|p| p.def.stage(&deal.stage_id))
            .map_or(0, |s| s.probability);
        let close = deal.expected_close;
        let month = format!("{:04}-{:02}", close.year, close.month);
        let quarter = format!("{:04}-Q{}", close.year, (close.month - 1) / 3 + 1);
        for (table, period) in [(&mut months, month), (&mut quarters, quarter)] {
            for owner in [String::new(), deal.owner.clone()] {
                let sum = table
                    .entry((period.clone(), owner, deal.currency.clone()))
                    .or_default();
                match deal.status {
                    DealStatus::Open => sum.open.add(deal.amount_minor, probability),
                    DealStatus::Won => sum.won.add(deal.amount_minor, 100),
                    DealStatus::Lost => {}
                }
                if deal.owner.is_empty() {
                    break; // the total row is the unowned deals' row
                }
            }
        }
    }
    let rows = |table: BTreeMap<Key, ForecastSum>| {
        table
            .into_iter()
            .map(|((period, owner, currency), sum)| {
                let open = sum.open.cell();
                let won = sum.won.cell();
                ForecastRow {
                    period,
                    owner,
                    currency,
                    open_count: open.count,
                    won_count: won.count,
                    weighted_minor: open.weighted_minor,
                    best_case_minor: open.amount_minor,
                    committed_minor: won.amount_minor,
                }
            })
            .collect()
    };
    (rows(months), rows(quarters))
}

/// What the metrics cover: facts whose business time (`occurred_at`) is in
/// `[from_us, to_us)`, of one pipeline or all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsQuery {
    /// Only this pipeline (stage conversion is in its stage order).
    pub pipeline_id: Option<Uuid>,
    /// Period start, inclusive, UTC microseconds (business time).
    pub from_us: i64,
    /// Period end, exclusive.
    pub to_us: i64,
}

/// How deals went on from one stage during the period.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageConversion {
    /// The stage.
    pub stage_id: String,
    /// Deals that entered it in the period.
    pub entered: u64,
    /// Deals that left it in the period.
    pub exited: u64,
    /// Of those, how many went forward (to a later open stage in board order, or won).
    pub advanced: u64,
    /// `advanced / exited` (0 when none exited).
    pub conversion_rate: f64,
}

/// Per-currency figures of the period.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CurrencyMetrics {
    /// Currency.
    pub currency: String,
    /// Deals won in the period.
    pub won_count: u64,
    /// Σ their amounts.
    pub won_amount_minor: i64,
    /// Σ / count, floored (0 when none).
    pub average_won_minor: i64,
    /// Open deals now (at the model's bound).
    pub open_count: u64,
    /// `open_count × win_rate × average_won_minor / average_cycle_days`: expected
    /// revenue per day, minor units (0 when no deal was won in the period).
    pub velocity_minor_per_day: f64,
}

/// How leads of one source did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceConversion {
    /// The source.
    pub source: LeadSource,
    /// Leads captured in the period.
    pub captured: u64,
    /// Of those, qualified by now.
    pub qualified: u64,
    /// `qualified / captured`.
    pub conversion_rate: f64,
}

/// Metrics over a period.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Per stage (board order of the pipeline, or by code over all pipelines).
    pub stages: Vec<StageConversion>,
    /// Stage-to-stage moves in the period: (from, to) → count.
    pub transitions: BTreeMap<(String, String), u64>,
    /// Deals won in the period (and still won).
    pub won: u64,
    /// Deals lost in the period (and still lost).
    pub lost: u64,
    /// `won / (won + lost)` (0 when neither).
    pub win_rate: f64,
    /// Mean days from opened to won, over the deals won in the period.
    pub average_cycle_days: f64,
    /// Per currency.
    pub currencies: Vec<CurrencyMetrics>,
    /// Lost reasons of the deals lost in the period, most frequent first.
    pub lost_reasons: Vec<(String, u64)>,
    /// Lead conversion by source, over the leads captured in the period.
    pub lead_sources: Vec<SourceConversion>,
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// The metrics of `query` over `model`.
pub fn metrics(model: &SalesModel, query: &MetricsQuery) -> Metrics {
    let in_period = |t: i64| t >= query.from_us && t < query.to_us;
    let mut out = Metrics::default();
    let mut stages: BTreeMap<String, StageConversion> = BTreeMap::new();
    let mut won_cycle_us: i128 = 0;
    let mut per_currency: BTreeMap<String, (Sum, u64)> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for deal in model.deals.values() {
        if query.pipeline_id.is_some_and(|p| p != deal.pipeline_id) {
            continue;
        }
        let def = model.pipelines.get(&deal.pipeline_id).map(|p| &p.def);
        let index =
            |stage: &str| def.and_then(|d| d.stages.iter().position(|s| s.stage_id == stage));
        let kind = |stage: &str| def.and_then(|d| d.stage(stage)).map(|s| s.kind);
        for (i, span) in deal.history.iter().enumerate() {
            if kind(&span.stage_id).is_some_and(|k| k != StageKind::Open) {
                continue; // conversion is about the open stages
            }
            let row = stages
                .entry(span.stage_id.clone())
                .or_insert_with(|| StageConversion {
                    stage_id: span.stage_id.clone(),
                    ..StageConversion::default()
                });
            if in_period(span.entered_at_us) {
                row.entered += 1;
            }
            if let (Some(left), Some(next)) = (span.left_at_us, deal.history.get(i + 1))
                && in_period(left)
            {
                row.exited += 1;
                let forward = match kind(&next.stage_id) {
                    Some(StageKind::Won) => true,
                    Some(StageKind::Open) => matches!(
                        (index(&span.stage_id), index(&next.stage_id)),
                        (Some(a), Some(b)) if b > a
                    ),
                    _ => false,
                };
                if forward {
                    row.advanced += 1;
                }
                *out.transitions
                    .entry((span.stage_id.clone(), next.stage_id.clone()))
                    .or_default() += 1;
            }
        }
        let entry = per_currency.entry(deal.currency.clone()).or_default();
        match (deal.status, deal.closed_at_us) {
            (DealStatus::Open, _) => entry.1 += 1,
            (DealStatus::Won, Some(closed)) if in_period(closed) => {
                out.won += 1;
                entry.0.add(deal.amount_minor, 100);
                won_cycle_us += i128::from(closed - deal.opened_at_us);
            }
            (DealStatus::Lost, Some(closed)) if in_period(closed) => {
                out.lost += 1;
                *reasons.entry(deal.lost_reason.clone()).or_default() += 1;
            }
            _ => {}
        }
    }
    out.win_rate = ratio(out.won, out.won + out.lost);
    out.average_cycle_days = if out.won == 0 {
        0.0
    } else {
        won_cycle_us as f64 / out.won as f64 / DAY_US
    };
    out.currencies = per_currency
        .into_iter()
        .map(|(currency, (won, open_count))| {
            let cell = won.cell();
            let average_won_minor = if cell.count == 0 {
                0
            } else {
                saturate(won.amount.div_euclid(i128::from(cell.count)))
            };
            let velocity_minor_per_day = if out.average_cycle_days > 0.0 {
                open_count as f64 * out.win_rate * average_won_minor as f64 / out.average_cycle_days
            } else {
                0.0
            };
            CurrencyMetrics {
                currency,
                won_count: cell.count,
                won_amount_minor: cell.amount_minor,
                average_won_minor,
                open_count,
                velocity_minor_per_day,
            }
        })
        .collect();
    for row in stages.values_mut() {
        row.conversion_rate = ratio(row.advanced, row.exited);
    }
    out.stages = match query.pipeline_id.and_then(|p| model.pipelines.get(&p)) {
        Some(pipeline) => {
            let mut ordered: Vec<StageConversion> = pipeline
                .def
                .stages
                .iter()
                .filter(|s| s.kind == StageKind::Open)
                .map(|s| {
                    stages
                        .remove(&s.stage_id)
                        .unwrap_or_else(|| StageConversion {
                            stage_id: s.stage_id.clone(),
                            ..StageConversion::default()
                        })
                })
                .collect();
            ordered.extend(stages.into_values());
            ordered
        }
        None => stages.into_values().collect(),
    };
    let mut reasons: Vec<(String, u64)> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.lost_reasons = reasons;
    let mut sources: BTreeMap<LeadSource, (u64, u64)> = BTreeMap::new();
    for lead in model.leads.values().filter(|l| in_period(l.captured_at_us)) {
        let entry = sources.entry(lead.source).or_default();
        entry.0 += 1;
        if lead.status == LeadStatus::Qualified {
            entry.1 += 1;
        }
    }
    out.lead_sources = sources
        .into_iter()
        .map(|(source, (captured, qualified))| SourceConversion {
            source,
            captured,
            qualified,
            conversion_rate: ratio(qualified, captured),
        })
        .collect();
    out
}

/// Filters of `ListDeals`; unset fields constrain nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DealFilter {
    /// Pipeline.
    pub pipeline_id: Option<Uuid>,
    /// Current stage.
    pub stage_id: Option<String>,
    /// Owner.
    pub owner: Option<String>,
    /// Status.
    pub status: Option<DealStatus>,
    /// Account.
    pub account_id: Option<Uuid>,
    /// Expected close on or after.
    pub close_from: Option<CalendarDate>,
    /// Expected close on or before.
    pub close_to: Option<CalendarDate>,
}

impl DealFilter {
    /// True when `deal` passes.
    pub fn matches(&self, deal: &DealView) -> bool {
        self.pipeline_id.is_none_or(|p| p == deal.pipeline_id)
            && self.stage_id.as_ref().is_none_or(|s| *s == deal.stage_id)
            && self.owner.as_ref().is_none_or(|o| *o == deal.owner)
            && self.status.is_none_or(|s| s == deal.status)
            && self.account_id.is_none_or(|a| Some(a) == deal.account_id)
            && self.close_from.is_none_or(|d| deal.expected_close >= d)
            && self.close_to.is_none_or(|d| deal.expected_close <= d)
    }
}

/// One page of `items` (in id order) after `after`, at most `limit`, with the id to pass
/// back for the next page when there is one.
pub fn page<'a, T: 'a>(
    items: impl Iterator<Item = (&'a Uuid, &'a T)>,
    after: Option<Uuid>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> (Vec<&'a T>, Option<Uuid>) {
    let mut out = Vec::new();
    let mut last = None;
    for (id, item) in items {
        if after.is_some_and(|a| *id <= a) || !keep(item) {
            continue;
        }
        if out.len() == limit {
            return (out, last);
        }
        out.push(item);
        last = Some(*id);
    }
    (out, None)
}

/// Deals of one account by currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountTotals {
    /// Open deals.
    pub open_count: u64,
    /// Σ open amounts.
    pub open_minor: i64,
    /// Won deals.
    pub won_count: u64,
    /// Σ won amounts.
    pub won_minor: i64,
    /// Lost deals.
    pub lost_count: u64,
}

/// An account with its deals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSummary {
    /// The account.
    pub account: AccountView,
    /// Its open deals.
    pub open_deals: Vec<DealView>,
    /// Its won and lost deals.
    pub closed_deals: Vec<DealView>,
    /// Totals by currency.
    pub totals: BTreeMap<String, AccountTotals>,
}

/// The account `id` with its deals, or `None`.
pub fn account(model: &SalesModel, id: Uuid) -> Option<AccountSummary> {
    let account = model.accounts.get(&id)?.clone();
    let mut summary = AccountSummary {
        account,
        open_deals: Vec::new(),
        closed_deals: Vec::new(),
        totals: BTreeMap::new(),
    };
    for deal in model.deals.values().filter(|d| d.account_id == Some(id)) {
        let totals = summary.totals.entry(deal.currency.clone()).or_default();
        match deal.status {
            DealStatus::Open => {
                totals.open_count += 1;
                totals.open_minor = totals.open_minor.saturating_add(deal.amount_minor);
                summary.open_deals.push(deal.clone());
            }
            DealStatus::Won => {
                totals.won_count += 1;
                totals.won_minor = totals.won_minor.saturating_add(deal.amount_minor);
                summary.closed_deals.push(deal.clone());
            }
            DealStatus::Lost => {
                totals.lost_count += 1;
                summary.closed_deals.push(deal.clone());
            }
        }
    }
    Some(summary)
}

/// Filters of `ListLeads`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeadFilter {
    /// Status.
    pub status: Option<LeadStatus>,
    /// Source.
    pub source: Option<LeadSource>,
    /// Owner.
    pub owner: Option<String>,
    /// Campaign.
    pub campaign_id: Option<String>,
}

impl LeadFilter {
    /// True when `lead` passes.
    pub fn matches(&self, lead: &LeadView) -> bool {
        self.status.is_none_or(|s| s == lead.status)
            && self.source.is_none_or(|s| s == lead.source)
            && self.owner.as_ref().is_none_or(|o| *o == lead.owner)
            && self
                .campaign_id
                .as_ref()
                .is_none_or(|c| *c == lead.campaign_id)
    }
}

/// Filters of `ListTasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Assignee.
    pub assignee: Option<String>,
    /// Status.
    pub status: Option<TaskStatus>,
    /// Only open tasks due before this time (UTC microseconds): the overdue ones.
    pub overdue_at_us: Option<i64>,
    /// Deal.
    pub deal_id: Option<Uuid>,
    /// Account.
    pub account_id: Option<Uuid>,
}

impl TaskFilter {
    /// True when `task` passes.
    pub fn matches(&self, task: &TaskView) -> bool {
        self.assignee.as_ref().is_none_or(|a| *a == task.assignee)
            && self.status.is_none_or(|s| s == task.status)
            && self
                .overdue_at_us
                .is_none_or(|t| task.status == TaskStatus::Open && task.due_at_us < t)
            && self.deal_id.is_none_or(|d| Some(d) == task.deal_id)
            && self.account_id.is_none_or(|a| Some(a) == task.account_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pipeline::PipelineDef;
    use crate::projections::pipeline::{DealView, PipelineView};

    fn deal(n: u128, amount: i64, currency: &str, stage: &str) -> DealView {
        DealView {
            deal_id: Uuid::from_u128(n),
            pipeline_id: Uuid::from_u128(1),
            title: String::new(),
            stage_id: stage.into(),
            status: DealStatus::Open,
            amount_minor: amount,
            currency: currency.into(),
            expected_close: CalendarDate::parse("2026-03-31").unwrap(),
            owner: String::new(),
            customer_id: None,
            account_id: Some(Uuid::from_u128(2)),
            lead_id: None,
            opened_at_us: 0,
            closed_at_us: None,
            lost_reason: String::new(),
            lost_from_stage_id: String::new(),
            history: Vec::new(),
            last_position: 1,
        }
    }

    #[test]
    fn weighted_amounts_floor_once_per_cell_and_never_mix_currencies() {
        let mut model = SalesModel::default();
        model.pipelines.insert(
            Uuid::from_u128(1),
            PipelineView {
                pipeline_id: Uuid::from_u128(1),
                def: PipelineDef {
                    name: "p".into(),
                    currencies: vec![],
                    stages: vec![Stage {
                        stage_id: "qualify".into(),
                        name: "Qualify".into(),
                        probability: 10,
                        kind: StageKind::Open,
                    }],
                },
                last_position: 1,
            },
        );
        // Five EUR deals of 15 at 10 %: Σ 75 × 10 / 100 = 7 (not 5 × ⌊1.5⌋ = 5).
        for n in 0..5 {
            let d = deal(10 + n, 15, "EUR", "qualify");
            model.deals.insert(d.deal_id, d);
        }
        let d = deal(20, 1_000, "SEK", "qualify");
        model.deals.insert(d.deal_id, d);
        let board = board(&model, Uuid::from_u128(1)).unwrap();
        let cells = &board.stages[0].by_currency;
        assert_eq!(
            cells["EUR"],
            Cell {
                count: 5,
                amount_minor: 75,
                weighted_minor: 7
            }
        );
        assert_eq!(
            cells["SEK"],
            Cell {
                count: 1,
                amount_minor: 1_000,
                weighted_minor: 100
            }
        );
        assert!(super::board(&model, Uuid::from_u128(9)).is_none());
    }

    #[test]
    fn pages_follow_ids_and_filters() {
        let ids: BTreeMap<Uuid, u32> = (1..=5).map(|n| (Uuid::from_u128(n), n as u32)).collect();
        let (first, next) = page(ids.iter(), None, 2, |n| n % 2 == 1);
        assert_eq!(first, vec![&1, &3]);
        assert_eq!(next, Some(Uuid::from_u128(3)));
        let (second, next) = page(ids.iter(), next, 2, |n| n % 2 == 1);
        assert_eq!(second, vec![&5]);
        assert_eq!(next, None);
    }
}
