//! The `rapport.v1.Analytics` service: RFM and KPIs over the customer read model, as of a
//! business date. The computation is pure ([`crate::domain::rfm`]); this edge picks the profiles,
//! the currency and the page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{timestamp_from_us, timestamp_to_us, uuid_field};
use super::pb;
use super::status::invalid_argument;
use crate::clock::Clock;
use crate::domain::DomainEvent;
use crate::domain::Violations;
use crate::domain::clv;
use crate::domain::events::CustomerIdentity;
use crate::domain::events::{SegmentArchived, SegmentChanged, SegmentDefined};
use crate::domain::kpis;
use crate::domain::profile::Profile;
use crate::domain::rfm::{self, SegmentGrid};
use crate::domain::segment::{EvalContext, Rule};
use crate::limits;
use crate::log::{AppendError, ExpectedRevision, Log, ProposedEvent, StreamAppend, StreamName};
use crate::privacy::Privacy;
use crate::projections::Projections;
use crate::projections::customers as read_model;
use crate::projections::segments;

/// A fitted value model, cached per (as_of, currency, read-model position): fitting reads
/// every customer and iterates, the pages after the first reuse it.
type ValueCache = Arc<std::sync::Mutex<Option<((i64, String, u64), Arc<FittedValue>)>>>;

/// Customer summaries and the fits over them.
struct FittedValue {
    summaries: BTreeMap<Uuid, (clv::CustomerSummary, u64, i64)>,
    bg: Result<clv::BgNbdFit, String>,
    gg: Result<clv::GammaGammaFit, String>,
}

/// The Analytics service.
#[derive(Clone)]
pub struct AnalyticsService {
    values: ValueCache,
    log: Log,
    projections: Projections,
    privacy: Privacy,
    clock: Arc<dyn Clock>,
    grid: Arc<SegmentGrid>,
}

impl AnalyticsService {
    /// Over the running projections; `clock` gives the default `as_of` (the edge may read
    /// the clock, the computation never does).
    pub fn new(
        log: Log,
        projections: Projections,
        privacy: Privacy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            values: ValueCache::default(),
            log,
            projections,
            privacy,
            clock,
            grid: Arc::new(SegmentGrid::default()),
        }
    }
}

/// Every registered, non-merged profile of the customer read model.
fn live_profiles(tree: &sled::Tree) -> Result<Vec<Profile>, Status> {
    read_model::live_profiles(tree).map_err(Status::internal)
}

fn busiest_currency(profiles: &[Profile], as_of_us: i64) -> Option<String> {
    rfm::busiest_currency(profiles, as_of_us)
}

fn segment_to_proto(d: segments::SegmentDef) -> pb::Segment {
    pb::Segment {
        segment_id: d.segment_id.to_string(),
        name: d.name,
        rule: d.rule,
        archived: d.archived,
    }
}

impl AnalyticsService {
    /// A read model once it has applied `min_position`, waiting at most `wait` (the
    /// request's budget, [`super::customers::wait_bound`]).
    async fn view(
        &self,
        name: &str,
        min_position: u64,
        wait: Duration,
    ) -> Result<crate::projections::ProjectionView, Status> {
        Ok(self.projections.wait_for(name, min_position, wait).await?)
    }

    /// Appends one definition event to `segment-<id>` with `expected`.
    async fn write_segment(
        &self,
        segment: Uuid,
        expected: ExpectedRevision,
        event: DomainEvent,
    ) -> Result<Response<pb::SegmentWriteResponse>, Status> {
        let mut v = Violations::new("");
        if let Err(found) = event.validate("") {
            for f in found {
                let field = f
                    .field
                    .split_once('.')
                    .map_or(f.field.as_str(), |(_, r)| r)
                    .to_owned();
                v.add(&field, f.description);
            }
        }
        v.into_result().map_err(invalid_argument)?;
        let stream = StreamName::parse(&format!("segment-{segment}"))
            .map_err(|e| Status::internal(e.to_string()))?;
        let append = StreamAppend {
            stream,
            expected,
            events: vec![ProposedEvent {
                event_id: Some(Uuid::now_v7()),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload: event
                    .encode()
                    .map_err(|e| Status::internal(e.to_string()))?,
                ..Default::default()
            }],
        };
        match self.log.append(append).await {
            Ok(outcome) => Ok(Response::new(pb::SegmentWriteResponse {
                segment_id: segment.to_string(),
                position: outcome.last_position,
            })),
            Err(AppendError::WrongExpectedRevision { actual: None, .. }) => Err(Status::not_found(
                format!("segment {segment} does not exist"),
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// A live segment's definition and its stream revision, or the right status.
    async fn live_segment(&self, text: &str) -> Result<(Uuid, u64), Status> {
        let mut v = Violations::new("");
        let segment = uuid_field("segment_id", text, &mut v);
        v.into_result().map_err(invalid_argument)?;
        let head = self.log.head().position;
        let view = self
            .view(
                segments::NAME,
                head,
                Duration::from_millis(limits::READ_WAIT_MS_MAX),
            )
            .await?;
        let def = segments::definition(&view.tree, segment)
            .map_err(Status::internal)?
            .ok_or_else(|| Status::not_found(format!("segment {segment} does not exist")))?;
        if def.archived {
            return Err(Status::failed_precondition(format!(
                "segment {segment} is archived"
            )));
        }
        let log = self.log.clone();
        let revision = tokio::task::spawn_blocking(move || {
            let stream = StreamName::parse(&format!("segment-{segment}")).expect("valid name");
            log.stream_head(&stream)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)?
        .map_or(0, |h| h.revision);
        Ok((segment, revision))
    }
}

fn parse_rule(rule: &str, v: &mut Violations) {
    if let Err(error) = Rule::parse(rule) {
        v.add("rule", error.to_string());
    }
}

const DAY_US_F: f64 = 86_400_000_000.0;

fn fit_values(profiles: &[Profile], currency: &str, as_of_us: i64) -> FittedValue {
    let as_of_day = as_of_us as f64 / DAY_US_F;
    let mut summaries = BTreeMap::new();
    for p in profiles {
        let orders: Vec<(f64, f64)> = p
            .purchases
            .money
            .iter()
            .filter(|f| f.order && f.currency == currency && f.at_us <= as_of_us)
            .map(|f| (f.at_us as f64 / DAY_US_F, f.amount_minor as f64))
            .collect();
        let net: i64 = p
            .purchases
            .money
            .iter()
            .filter(|f| f.currency == currency && f.at_us <= as_of_us)
            .map(|f| f.amount_minor)
            .sum();
        if let Some(summary) = clv::summarize(&orders, as_of_day) {
            summaries.insert(p.customer_id, (summary, orders.len() as u64, net));
        }
    }
    let all: Vec<clv::CustomerSummary> = summaries.values().map(|(s, _, _)| *s).collect();
    FittedValue {
        bg: clv::fit_bg_nbd(&all).map_err(|e| e.to_string()),
        gg: clv::fit_gamma_gamma(&all).map_err(|e| e.to_string()),
        summaries,
    }
}

#[tonic::async_trait]
impl pb::analytics_server::Analytics for AnalyticsService {
    async fn list_customer_value(
        &self,
        request: Request<pb::ListCustomerValueRequest>,
    ) -> Result<Response<pb::ListCustomerValueResponse>, Status> {
        let wait = super::customers::wait_bound(&request);
        let pb::ListCustomerValueRequest {
            as_of,
            currency,
            horizon_days,
            annual_discount_bp,
            page_size,
            page_token,
            min_position,
        } = request.into_inner();
        let mut v = Violations::new("");
        let as_of_us = match as_of {
            Some(ts) => timestamp_to_us("as_of", &ts, &mut v),
            None => Some(self.clock.now_us()),
        };
        if !currency.is_empty() {
            crate::domain::common::validate_currency("currency", &currency, &mut v);
        }
        let after = (!page_token.is_empty()).then(|| uuid_field("page_token", &page_token, &mut v));
        if horizon_days > limits::CLV_HORIZON_DAYS_MAX {
            v.add(
                "horizon_days",
                format!("at most {} days", limits::CLV_HORIZON_DAYS_MAX),
            );
        }
        v.into_result().map_err(invalid_argument)?;
        let as_of_us = as_of_us.expect("checked above");
        let horizon = f64::from(if horizon_days == 0 { 365 } else { horizon_days });
        let discount = f64::from(annual_discount_bp) / 10_000.0;
        let page_size = match page_size {
            0 => limits::RFM_PAGE_DEFAULT,
            n => (n as usize).min(limits::RFM_PAGE_MAX),
        };
        let view = self.view(read_model::NAME, min_position, wait).await?;
        let cache = self.values.clone();
        let response = tokio::task::spawn_blocking(move || {
            let profiles = live_profiles(&view.tree)?;
            let currency = if currency.is_empty() {
                busiest_currency(&profiles, as_of_us).unwrap_or_else(|| "EUR".to_owned())
            } else {
                currency
            };
            let key = (as_of_us, currency.clone(), view.applied);
            let cached = cache
                .lock()
                .expect("value cache lock")
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, fit)| fit.clone());
            let fitted = match cached {
                Some(fit) => fit,
                None => {
                    let fit = Arc::new(fit_values(&profiles, &currency, as_of_us));
                    *cache.lock().expect("value cache lock") = Some((key, fit.clone()));
                    fit
                }
            };
            let mut model = pb::ValueModel {
                customers: fitted.summaries.len() as u64,
                ..Default::default()
            };
            let mut errors = Vec::new();
            match &fitted.bg {
                Ok(fit) => {
                    model.r = fit.params.r;
                    model.alpha = fit.params.alpha;
                    model.a = fit.params.a;
                    model.b = fit.params.b;
                    model.bg_nbd_log_likelihood = fit.log_likelihood;
                    model.bg_nbd_converged = fit.converged;
                }
                Err(e) => errors.push(format!("BG/NBD: {e}")),
            }
            match &fitted.gg {
                Ok(fit) => {
                    model.p = fit.params.p;
                    model.q = fit.params.q;
                    model.v = fit.params.v;
                    model.gamma_gamma_log_likelihood = fit.log_likelihood;
                    model.gamma_gamma_converged = fit.converged;
                }
                Err(e) => errors.push(format!("Gamma-Gamma: {e}")),
            }
            model.error = errors.join("; ");
            let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
            let rows: Vec<pb::CustomerValue> = fitted
                .summaries
                .iter()
                .filter(|(id, _)| after.is_none_or(|after| **id > after))
                .take(page_size + 1)
                .map(|(id, (summary, orders, net))| {
                    let (alive, purchases) = match &fitted.bg {
                        Ok(fit) => (
                            fit.params.probability_alive(summary),
                            fit.params.expected_purchases(summary, horizon),
                        ),
                        Err(_) => (0.0, 0.0),
                    };
                    let (average, clv_value) = match (&fitted.bg, &fitted.gg) {
                        (Ok(bg), Ok(gg)) => (
                            gg.params.expected_average_value(summary),
                            clv::predicted_clv(&bg.params, &gg.params, summary, horizon, discount),
                        ),
                        _ => (0.0, 0.0),
                    };
                    pb::CustomerValue {
                        customer_id: id.to_string(),
                        orders: *orders,
                        historical_minor: *net,
                        probability_alive: finite(alive),
                        expected_purchases: finite(purchases),
                        expected_average_order_minor: finite(average),
                        predicted_clv_minor: finite(clv_value),
                    }
                })
                .collect();
            let more = rows.len() > page_size;
            let mut rows = rows;
            rows.truncate(page_size);
            let next_page_token = if more {
                rows.last()
                    .map(|r| r.customer_id.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok::<_, Status>(pb::ListCustomerValueResponse {
                model: Some(model),
                customers: rows,
                next_page_token,
                currency,
                as_of: Some(timestamp_from_us(as_of_us)),
                as_of_position: view.applied,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("value task failed: {e}")))??;
        Ok(Response::new(response))
    }

    async fn define_segment(
        &self,
        request: Request<pb::DefineSegmentRequest>,
    ) -> Result<Response<pb::SegmentWriteResponse>, Status> {
        let pb::DefineSegmentRequest { name, rule } = request.into_inner();
        let mut v = Violations::new("");
        parse_rule(&rule, &mut v);
        v.into_result().map_err(invalid_argument)?;
        let segment = Uuid::now_v7();
        self.write_segment(
            segment,
            ExpectedRevision::NoStream,
            DomainEvent::SegmentDefined(SegmentDefined {
                segment_id: segment,
                name,
                rule,
            }),
        )
        .await
    }

    async fn change_segment(
        &self,
        request: Request<pb::ChangeSegmentRequest>,
    ) -> Result<Response<pb::SegmentWriteResponse>, Status> {
        let pb::ChangeSegmentRequest {
            segment_id,
            name,
            rule,
        } = request.into_inner();
        let mut v = Violations::new("");
        parse_rule(&rule, &mut v);
        v.into_result().map_err(invalid_argument)?;
        let (segment, revision) = self.live_segment(&segment_id).await?;
        self.write_segment(
            segment,
            ExpectedRevision::Exact(revision),
            DomainEvent::SegmentChanged(SegmentChanged {
                segment_id: segment,
                name,
                rule,
            }),
        )
        .await
    }

    async fn archive_segment(
        &self,
        request: Request<pb::ArchiveSegmentRequest>,
    ) -> Result<Response<pb::SegmentWriteResponse>, Status> {
        let pb::ArchiveSegmentRequest { segment_id } = request.into_inner();
        let (segment, revision) = self.live_segment(&segment_id).await?;
        self.write_segment(
            segment,
            ExpectedRevision::Exact(revision),
            DomainEvent::SegmentArchived(SegmentArchived {
                segment_id: segment,
            }),
        )
        .await
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let wait = super::customers::wait_bound(&request);
        let pb::ListSegmentsRequest {
            min_position,
            include_archived,
        } = request.into_inner();
        let view = self.view(segments::NAME, min_position, wait).await?;
        let segments = segments::definitions(&view.tree)
            .map_err(Status::internal)?
            .into_iter()
            .filter(|d| include_archived || !d.archived)
            .map(segment_to_proto)
            .collect();
        Ok(Response::new(pb::ListSegmentsResponse { segments }))
    }

    async fn list_segment_members(
        &self,
        request: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        let wait = super::customers::wait_bound(&request);
        let pb::ListSegmentMembersRequest {
            segment_id,
            page_size,
            page_token,
            min_position,
        } = request.into_inner();
        let mut v = Violations::new("");
        let segment = uuid_field("segment_id", &segment_id, &mut v);
        let after = (!page_token.is_empty()).then(|| uuid_field("page_token", &page_token, &mut v));
        v.into_result().map_err(invalid_argument)?;
        let page_size = match page_size {
            0 => limits::RFM_PAGE_DEFAULT,
            n => (n as usize).min(limits::RFM_PAGE_MAX),
        };
        let view = self.view(segments::NAME, min_position, wait).await?;
        if segments::definition(&view.tree, segment)
            .map_err(Status::internal)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "segment {segment} does not exist"
            )));
        }
        let mut page = segments::members(&view.tree, segment, after, page_size + 1)
            .map_err(Status::internal)?;
        let more = page.len() > page_size;
        page.truncate(page_size);
        let next_page_token = if more {
            page.last().map(|(c, _)| c.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSegmentMembersResponse {
            members: page
                .into_iter()
                .map(|(customer, m)| pb::SegmentMember {
                    customer_id: customer.to_string(),
                    entered_as_of: Some(timestamp_from_us(m.entered_as_of_us)),
                    position: m.position,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn get_customer_segments(
        &self,
        request: Request<pb::GetCustomerSegmentsRequest>,
    ) -> Result<Response<pb::GetCustomerSegmentsResponse>, Status> {
        let wait = super::customers::wait_bound(&request);
        let pb::GetCustomerSegmentsRequest {
            customer_id,
            min_position,
        } = request.into_inner();
        let mut v = Violations::new("");
        let customer = uuid_field("customer_id", &customer_id, &mut v);
        v.into_result().map_err(invalid_argument)?;
        let view = self.view(segments::NAME, min_position, wait).await?;
        let mut out = Vec::new();
        for (segment, _) in segments::of_customer(&view.tree, customer).map_err(Status::internal)? {
            if let Some(def) =
                segments::definition(&view.tree, segment).map_err(Status::internal)?
            {
                out.push(segment_to_proto(def));
            }
        }
        Ok(Response::new(pb::GetCustomerSegmentsResponse {
            segments: out,
        }))
    }

    async fn preview_segment(
        &self,
        request: Request<pb::PreviewSegmentRequest>,
    ) -> Result<Response<pb::PreviewSegmentResponse>, Status> {
        let wait = super::customers::wait_bound(&request);
        let pb::PreviewSegmentRequest {
            rule,
            as_of,
            sample_size,
            min_position,
        } = request.into_inner();
        let mut v = Violations::new("");
        let as_of_us = match as_of {
            Some(ts) => timestamp_to_us("as_of", &ts, &mut v),
            None => Some(self.clock.now_us()),
        };
        let parsed = match Rule::parse(&rule) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                v.add("rule", error.to_string());
                None
            }
        };
        v.into_result().map_err(invalid_argument)?;
        let (as_of_us, rule) = (as_of_us.expect("checked"), parsed.expect("checked"));
        let sample_size = match sample_size {
            0 => 20,
            n => (n as usize).min(limits::SEGMENT_SAMPLE_MAX),
        };
        let view = self.view(read_model::NAME, min_position, wait).await?;
        let grid = self.grid.clone();
        let response = tokio::task::spawn_blocking(move || {
            let profiles = live_profiles(&view.tree)?;
            // RFM segments are ranks over all customers: computed only when asked for, in
            // the currency with the most orders.
            let rfm_segments: Option<BTreeMap<Uuid, String>> = rule.uses_rfm().then(|| {
                let currency =
                    busiest_currency(&profiles, as_of_us).unwrap_or_else(|| "EUR".to_owned());
                rfm::rfm(&profiles, &currency, as_of_us, &grid)
                    .into_iter()
                    .map(|row| (row.customer_id, row.segment))
                    .collect()
            });
            let cx = EvalContext {
                as_of_us,
                rfm: rfm_segments.as_ref(),
            };
            let mut count = 0u64;
            let mut sample = Vec::new();
            for profile in &profiles {
                if rule.matches(profile, &cx) {
                    count += 1;
                    if sample.len() < sample_size {
                        sample.push(profile.customer_id.to_string());
                    }
                }
            }
            Ok::<_, Status>(pb::PreviewSegmentResponse {
                count,
                customers: profiles.len() as u64,
                sample,
                as_of: Some(timestamp_from_us(as_of_us)),
                as_of_position: view.applied,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("segment task failed: {e}")))??;
        Ok(Response::new(response))
    }

    async fn get_kpis(
        &self,
        request: Request<pb::GetKpisRequest>,
    ) -> Result<Response<pb::Kpis>, Status> {
        let wait = super::customers::wait_bound(&request);
        let pb::GetKpisRequest {
            period,
            as_of,
            period_start,
            min_position,
            cohorts_max,
        } = request.into_inner();
        let mut v = Violations::new("");
        let end_us = match as_of {
            Some(ts) => timestamp_to_us("as_of", &ts, &mut v),
            None => Some(self.clock.now_us()),
        };
        let start_us = period_start.and_then(|ts| timestamp_to_us("period_start", &ts, &mut v));
        let days = match pb::Period::try_from(period) {
            Ok(pb::Period::Day) => 1,
            Ok(pb::Period::Week) => 7,
            Ok(pb::Period::Quarter) => 91,
            Ok(pb::Period::Year) => 365,
            Ok(pb::Period::Month | pb::Period::Unspecified) => 30,
            Err(_) => {
                v.add("period", format!("{period} is not a Period"));
                30
            }
        };
        if let (Some(start), Some(end)) = (start_us, end_us)
            && start >= end
        {
            v.add("period_start", "must be before as_of");
        }
        v.into_result().map_err(invalid_argument)?;
        let end_us = end_us.expect("checked above");
        let start_us = start_us.unwrap_or(end_us - days * 86_400_000_000);
        let cohorts_max = match cohorts_max {
            0 => limits::KPI_COHORTS_DEFAULT,
            n => (n as usize).min(limits::KPI_COHORTS_MAX),
        };
        let view = self.view(read_model::NAME, min_position, wait).await?;
        let kpis = tokio::task::spawn_blocking(move || {
            let profiles = live_profiles(&view.tree)?;
            let k = kpis::kpis(&profiles, start_us, end_us, cohorts_max);
            Ok::<_, Status>(pb::Kpis {
                period_start: Some(timestamp_from_us(start_us)),
                period_end: Some(timestamp_from_us(end_us)),
                customers_total: k.customers_total,
                new_customers: k.new_customers,
                active_customers: k.active_customers,
                active_previous_period: k.active_previous,
                first_time_customers: k.first_time_customers,
                retention_bp: k.retention_bp,
                churn_bp: k.churn_bp,
                repeat_purchase_bp: k.repeat_purchase_bp,
                purchase_frequency_centi: k.purchase_frequency_centi,
                by_currency: k
                    .by_currency
                    .into_iter()
                    .map(|(currency, c)| pb::CurrencyKpis {
                        currency,
                        orders: c.orders,
                        revenue_minor: c.revenue_minor,
                        average_order_minor: c.average_order_minor,
                    })
                    .collect(),
                nps: k.nps.map(|(nps, _)| nps),
                nps_responses: k.nps.map_or(0, |(_, n)| n),
                cohorts: k
                    .cohorts
                    .into_iter()
                    .map(|c| pb::CohortRow {
                        month: c.month,
                        customers: c.customers,
                        retained: c.retained,
                    })
                    .collect(),
                as_of_position: view.applied,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("kpi task failed: {e}")))??;
        Ok(Response::new(kpis))
    }

    async fn list_customer_rfm(
        &self,
        request: Request<pb::ListCustomerRfmRequest>,
    ) -> Result<Response<pb::ListCustomerRfmResponse>, Status> {
        let wait = super::customers::wait_bound(&request);
        let pb::ListCustomerRfmRequest {
            as_of,
            page_size,
            page_token,
            currency,
            min_position,
            grid,
        } = request.into_inner();
        let mut v = Violations::new("");
        v.max_items("grid", grid.len(), limits::RFM_GRID_RULES_MAX);
        let custom_grid = (!grid.is_empty()).then(|| SegmentGrid {
            rules: grid
                .into_iter()
                .enumerate()
                .map(|(i, rule)| {
                    let pb::RfmGridRule {
                        name,
                        r_min,
                        r_max,
                        f_min,
                        f_max,
                    } = rule;
                    v.required(&format!("grid[{i}].name"), &name, limits::FIELD_BYTES_MAX);
                    let mut score = |field: &str, value: u32| {
                        if !(1..=5).contains(&value) {
                            v.add(&format!("grid[{i}].{field}"), "must be a score from 1 to 5");
                        }
                        value.clamp(1, 5) as u8
                    };
                    rfm::GridRule {
                        r: (score("r_min", r_min), score("r_max", r_max)),
                        f: (score("f_min", f_min), score("f_max", f_max)),
                        name,
                    }
                })
                .collect(),
        });
        let as_of_us = match as_of {
            Some(ts) => timestamp_to_us("as_of", &ts, &mut v),
            None => Some(self.clock.now_us()),
        };
        if !currency.is_empty() {
            crate::domain::common::validate_currency("currency", &currency, &mut v);
        }
        let after = if page_token.is_empty() {
            None
        } else {
            Some(uuid_field("page_token", &page_token, &mut v))
        };
        v.into_result().map_err(invalid_argument)?;
        let as_of_us = as_of_us.expect("checked above");
        let page_size = match page_size {
            0 => limits::RFM_PAGE_DEFAULT,
            n => (n as usize).min(limits::RFM_PAGE_MAX),
        };
        let view = self.view(read_model::NAME, min_position, wait).await?;
        let privacy = self.privacy.clone();
        let grid = custom_grid.map_or_else(|| self.grid.clone(), Arc::new);
        let response = tokio::task::spawn_blocking(move || {
            // Every profile is read: ranks are over all customers. Merged duplicates and
            // unregistered ids have no row (their history is their survivor's).
            let profiles = live_profiles(&view.tree)?;
            let currency = if currency.is_empty() {
                busiest_currency(&profiles, as_of_us).unwrap_or_else(|| "EUR".to_owned())
            } else {
                currency
            };
            let rows = rfm::rfm(&profiles, &currency, as_of_us, &grid);
            let by_id: BTreeMap<Uuid, &Profile> =
                profiles.iter().map(|p| (p.customer_id, p)).collect();
            let start = after.map_or(0, |after| rows.partition_point(|r| r.customer_id <= after));
            let page: Vec<pb::RfmRow> = rows[start..]
                .iter()
                .take(page_size)
                .map(|row| {
                    let external_ids = by_id
                        .get(&row.customer_id)
                        .and_then(|p| p.identity.as_ref())
                        .and_then(|sealed| privacy.open_ref::<CustomerIdentity>(sealed))
                        .map(|identity| identity.external_ids.into_iter().collect())
                        .unwrap_or_default();
                    pb::RfmRow {
                        customer_id: row.customer_id.to_string(),
                        external_ids,
                        recency_days: row.recency_days,
                        frequency: row.frequency,
                        monetary_minor: row.monetary_minor,
                        currency: currency.clone(),
                        r: u32::from(row.r),
                        f: u32::from(row.f),
                        m: u32::from(row.m),
                        segment: row.segment.clone(),
                    }
                })
                .collect();
            let next_page_token = if start + page.len() < rows.len() {
                page.last()
                    .map(|r| r.customer_id.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok::<_, Status>(pb::ListCustomerRfmResponse {
                rows: page,
                next_page_token,
                total_rows: rows.len() as u64,
                as_of: Some(timestamp_from_us(as_of_us)),
                currency,
                as_of_position: view.applied,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("rfm task failed: {e}")))??;
        Ok(Response::new(response))
    }
}
