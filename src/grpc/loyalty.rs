//! The `rapport.v1.Loyalty` service (issue 5).
//!
//! Writes: validate → fold the streams involved from the log (member, programme,
//! reward) → a pure decision of [`crate::domain::loyalty::decide`] at the command's
//! business time (`context.occurred_at`, default the server clock) → one atomic
//! multi-stream append expecting the revisions read. A concurrent write fails the
//! expectation and the command is decided again on the new state, so 32 concurrent
//! redemptions against one member cannot overdraw it. Re-sending a command with the
//! same `context.event_id` returns the original position.
//!
//! Reads: from the `loyalty` read model (waiting for `min_position`), balances at the
//! server's now; with `as_of`, from the log folded by the same code, keeping the events
//! whose business time is at or before it, balances at `as_of`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{channel_from, channel_to, timestamp_from_us, timestamp_to_us, uuid_field};
use super::convert_loyalty::{programme_from, programme_to};
use super::customers::{Context, context_from, derived_id, wait_bound};
use super::pb;
use super::status::invalid_argument;
use crate::clock::Clock;
use crate::domain::events::{ProgrammeChanged, ProgrammeDefined, RewardDefined, RewardRetired};
use crate::domain::loyalty::decide::{self, RuleError};
use crate::domain::loyalty::ledger::{
    EntryKind, Member, PROGRAMME_STREAM, member_stream, reward_stream,
};
use crate::domain::loyalty::time::start_of_month;
use crate::domain::loyalty::{Programme, ProgrammeHistory};
use crate::domain::profile::customer_stream;
use crate::domain::{DomainEvent, Violations};
use crate::limits;
use crate::log::{
    AppendError, ExpectedRevision, Log, LoggedEvent, ProposedEvent, StreamAppend, StreamName,
};
use crate::projections::Projections;
use crate::projections::loyalty as read_model;

/// The Loyalty service.
#[derive(Clone)]
pub struct LoyaltyService {
    inner: Arc<Inner>,
}

struct Inner {
    log: Log,
    projections: Projections,
    privacy: crate::privacy::Privacy,
    clock: Arc<dyn Clock>,
}

impl LoyaltyService {
    /// Over the log and the running projections; `clock` gives the default business time
    /// of commands and the default query time of reads (the domain never reads it);
    /// `privacy` opens the birth dates the tick's birthday bonuses need.
    pub fn new(
        log: Log,
        projections: Projections,
        privacy: crate::privacy::Privacy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                projections,
                privacy,
                clock,
            }),
        }
    }
}

fn internal(what: impl std::fmt::Display) -> Status {
    Status::internal(what.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("worker failed: {e}")))?
}

fn finish(v: Violations) -> Result<(), Status> {
    v.into_result().map_err(invalid_argument)
}

/// One stream's part of a command's append.
struct Planned {
    stream: String,
    expected: ExpectedRevision,
    events: Vec<DomainEvent>,
}

fn expect(revision: Option<u64>) -> ExpectedRevision {
    revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
}

fn member(log: &Log, id: Uuid) -> Result<(Member, Option<u64>), Status> {
    read_model::fold_member_as_of(log, id, &|_| true).map_err(internal)
}

fn load_programme(log: &Log) -> Result<(ProgrammeHistory, Option<u64>), Status> {
    read_model::fold_programme(log, &|_| true).map_err(internal)
}

/// What a decision hands to [`LoyaltyService::execute`].
type Decided = Result<Vec<Planned>, Status>;

impl LoyaltyService {
    /// Runs a command: idempotency by event id, decide (blocking, from the log), append
    /// expecting the revisions read; re-decides on a concurrency conflict. `id` is what
    /// the response names.
    async fn execute<F>(
        &self,
        context: Context,
        id: String,
        decide: F,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status>
    where
        F: Fn(&Log, i64, Uuid) -> Decided + Send + Sync + 'static,
    {
        let at = context
            .occurred_at_us
            .unwrap_or_else(|| self.inner.clock.now_us());
        let base_id = context.event_id.unwrap_or_else(Uuid::now_v7);
        let id = if id.is_empty() {
            base_id.to_string()
        } else {
            id
        };
        let decide = Arc::new(decide);
        for _ in 0..limits::WRITE_RETRIES_MAX {
            if context.event_id.is_some() {
                let log = self.inner.log.clone();
                let found =
                    blocking(move || log.event_by_id(base_id).map_err(Status::from)).await?;
                if let Some(found) = found {
                    return Ok(Response::new(pb::LoyaltyWriteResponse {
                        position: found.event.position,
                        id,
                    }));
                }
            }
            let (log, decide) = (self.inner.log.clone(), decide.clone());
            let plans = blocking(move || decide(&log, at, base_id)).await?;
            let mut index = 0;
            let mut appends = Vec::new();
            for plan in plans {
                let stream = StreamName::parse(&plan.stream).map_err(internal)?;
                let events = plan
                    .events
                    .iter()
                    .map(|event| {
                        let event_id = if index == 0 {
                            base_id
                        } else {
                            derived_id(base_id, index)
                        };
                        index += 1;
                        ProposedEvent {
                            event_id: Some(event_id),
                            event_type: event.event_type().to_owned(),
                            schema_version: event.schema_version(),
                            payload: event
                                .encode()
                                .expect("loyalty events have no personal parts"),
                            occurred_at_us: Some(at),
                            actor: context.actor.clone(),
                            correlation_id: context.correlation_id.clone(),
                            causation_id: context.causation_id.clone(),
                            source_channel: context.source_channel.clone(),
                            ..Default::default()
                        }
                    })
                    .collect();
                appends.push(StreamAppend {
                    stream,
                    expected: plan.expected,
                    events,
                });
            }
            match self.inner.log.append_multi(appends).await {
                Ok(outcomes) => {
                    let position = outcomes.iter().map(|o| o.last_position).max().unwrap_or(0);
                    return Ok(Response::new(pb::LoyaltyWriteResponse { position, id }));
                }
                Err(AppendError::WrongExpectedRevision { .. }) => continue,
                Err(AppendError::EventIdConflict { .. }) if context.event_id.is_some() => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(
            "the member changed concurrently too many times; retry the command",
        ))
    }

    /// The member a customer id stands for: a merged duplicate's survivor, as everywhere
    /// else (by the `customers` read model). A duplicate that was an enrolled member keeps
    /// its own ledger until the loyalty policy has moved it (`LedgerMerged`, right after
    /// the merge in log order); until then its id still names that ledger.
    async fn resolve_member(&self, id: Uuid) -> Result<Uuid, Status> {
        let log = self.inner.log.clone();
        // As current as the log was when the command came (a merge acknowledged before it
        // is seen), though the runner gathers appends before reading them.
        let view = self
            .inner
            .projections
            .wait_for(
                crate::projections::customers::NAME,
                0,
                std::time::Duration::from_millis(limits::PROJECTION_IMPLICIT_WAIT_MS),
            )
            .await;
        blocking(move || {
            let Ok(view) = view else {
                return Ok(id);
            };
            let survivor = crate::projections::customers::read_resolved(&view.tree, id)
                .map_err(internal)?
                .map_or(id, |profile| profile.customer_id);
            if survivor == id {
                return Ok(id);
            }
            let own = StreamName::parse(&member_stream(id)).map_err(internal)?;
            if log.stream_head(&own).map_err(Status::from)?.is_none() {
                return Ok(survivor);
            }
            let (ledger, _) = member(&log, id)?;
            Ok(if ledger.merged_into.is_some() || !ledger.is_active() {
                survivor
            } else {
                id
            })
        })
        .await
    }

    /// The member at a query time: from the read model (at the clock's now), or folded
    /// from the log up to `as_of` (business time). With the query time and the position.
    async fn member_at(
        &self,
        id: Uuid,
        min_position: u64,
        as_of_us: Option<i64>,
        wait: std::time::Duration,
    ) -> Result<(Member, ProgrammeHistory, i64, u64), Status> {
        match as_of_us {
            Some(at) => {
                let log = self.inner.log.clone();
                blocking(move || {
                    let include = |l: &LoggedEvent| l.event.occurred_at_us <= at;
                    let (member, _) =
                        read_model::fold_member_as_of(&log, id, &include).map_err(internal)?;
                    let (history, _) =
                        read_model::fold_programme(&log, &include).map_err(internal)?;
                    let position = member.last_position;
                    Ok((member, history, at, position))
                })
                .await
            }
            None => {
                let view = self
                    .inner
                    .projections
                    .wait_for(read_model::NAME, min_position, wait)
                    .await?;
                let now = self.inner.clock.now_us();
                let member = read_model::read_member(&view.tree, id)
                    .map_err(internal)?
                    .unwrap_or_else(|| Member::new(id));
                let history = read_model::read_programme(&view.tree).map_err(internal)?;
                Ok((member, history, now, view.applied))
            }
        }
    }

    /// Every member at a query time (read model, or folded from the log for `as_of`).
    async fn members_at(
        &self,
        min_position: u64,
        as_of_us: Option<i64>,
        wait: std::time::Duration,
    ) -> Result<(MembersSource, ProgrammeHistory, i64), Status> {
        match as_of_us {
            Some(at) => {
                let log = self.inner.log.clone();
                blocking(move || {
                    let include = |l: &LoggedEvent| l.event.occurred_at_us <= at;
                    let members = read_model::fold_all_as_of(&log, &include).map_err(internal)?;
                    let (history, _) =
                        read_model::fold_programme(&log, &include).map_err(internal)?;
                    Ok((MembersSource::Folded(members), history, at))
                })
                .await
            }
            None => {
                let view = self
                    .inner
                    .projections
                    .wait_for(read_model::NAME, min_position, wait)
                    .await?;
                let history = read_model::read_programme(&view.tree).map_err(internal)?;
                Ok((
                    MembersSource::Tree(view),
                    history,
                    self.inner.clock.now_us(),
                ))
            }
        }
    }
}

/// Members from the read model or from an as-of fold.
enum MembersSource {
    Tree(crate::projections::ProjectionView),
    Folded(BTreeMap<Uuid, Member>),
}

impl MembersSource {
    fn after(&self, after: Option<Uuid>) -> Box<dyn Iterator<Item = Result<Member, String>> + '_> {
        match self {
            Self::Tree(view) => Box::new(read_model::scan_members(&view.tree, after)),
            Self::Folded(map) => {
                let range = match after {
                    Some(id) => {
                        map.range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded))
                    }
                    None => map.range(..),
                };
                Box::new(range.map(|(_, m)| Ok(m.clone())))
            }
        }
    }
}

fn tier_name<'a>(member: &'a Member, programme: Option<&'a Programme>) -> &'a str {
    if member.tier.is_empty() {
        programme.map_or("", |p| p.base_tier())
    } else {
        &member.tier
    }
}

fn member_to_proto(
    member: &Member,
    programme: Option<&Programme>,
    at: i64,
    position: u64,
) -> pb::LoyaltyMember {
    let balance = member.balance(at);
    let t = &member.totals;
    let tier = tier_name(member, programme).to_owned();
    let (mut next_tier, mut qualifying, mut to_next) = (String::new(), 0, 0);
    if let Some(p) = programme
        && !p.tiers.is_empty()
    {
        qualifying = decide::qualifying(member, p, at);
        let index = p.tier(&tier).map_or(0, |(i, _)| i);
        if let Some(next) = p.tiers.get(index + 1) {
            next_tier = next.name.clone();
            to_next = (i128::from(next.threshold) - i128::from(qualifying))
                .clamp(0, i128::from(i64::MAX)) as i64;
        }
    }
    pb::LoyaltyMember {
        customer_id: member.customer_id.to_string(),
        enrolled: member.is_active(),
        enrolled_at: member.enrolment.map(|e| timestamp_from_us(e.at_us)),
        channel: member.enrolment.map_or(0, |e| channel_to(e.channel)),
        left: member.left.is_some(),
        available: balance.available,
        pending: balance.pending,
        debt: balance.debt,
        lifetime_earned: t.earned,
        lifetime_spent: t.spent,
        lifetime_expired: t.expired,
        lifetime_cancelled: t.cancelled,
        lifetime_forfeited: t.forfeited,
        lifetime_forgiven: t.forgiven,
        adjusted_in: t.adjusted_in,
        adjusted_out: t.adjusted_out,
        transferred_in: t.transferred_in,
        transferred_out: t.transferred_out,
        tier,
        next_tier,
        qualifying,
        to_next_tier: to_next,
        expiring_30_days: balance.expiring[0],
        expiring_60_days: balance.expiring[1],
        expiring_90_days: balance.expiring[2],
        as_of: Some(timestamp_from_us(at)),
        as_of_position: position,
        merged_in: t.merged_in,
        merged_out: t.merged_out,
        merged_into: member
            .merged_into
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }
}

fn page_size(raw: i32) -> usize {
    match usize::try_from(raw) {
        Ok(0) | Err(_) => limits::LOYALTY_PAGE_DEFAULT,
        Ok(n) => n.min(limits::LOYALTY_PAGE_MAX),
    }
}

fn as_of_field(as_of: Option<prost_types::Timestamp>, v: &mut Violations) -> Option<i64> {
    as_of.and_then(|ts| timestamp_to_us("as_of", &ts, v))
}

fn id_field(field: &str, text: &str, v: &mut Violations) -> Uuid {
    let id = uuid_field(field, text, v);
    if id.is_nil() && !text.is_empty() && Uuid::parse_str(text).is_ok() {
        v.add(field, "must not be the nil UUID");
    }
    id
}

fn points_field(field: &str, points: u64, v: &mut Violations) {
    if points == 0 || points > limits::LOYALTY_POINTS_MAX {
        v.add(field, format!("must be 1..={}", limits::LOYALTY_POINTS_MAX));
    }
}

#[tonic::async_trait]
impl pb::loyalty_server::Loyalty for LoyaltyService {
    async fn define_programme(
        &self,
        request: Request<pb::DefineProgrammeRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::DefineProgrammeRequest { programme, context } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let Some(programme) = programme else {
            v.add("programme", "is required");
            return Err(invalid_argument(v.into_vec()));
        };
        let programme = programme_from("programme", programme, &mut v);
        programme.validate("programme", &mut v);
        finish(v)?;
        self.execute(context, PROGRAMME_STREAM.to_owned(), move |log, _, _| {
            let (_, revision) = load_programme(log)?;
            let event = if revision.is_none() {
                DomainEvent::ProgrammeDefined(ProgrammeDefined {
                    programme: programme.clone(),
                })
            } else {
                DomainEvent::ProgrammeChanged(ProgrammeChanged {
                    programme: programme.clone(),
                })
            };
            Ok(vec![Planned {
                stream: PROGRAMME_STREAM.to_owned(),
                expected: expect(revision),
                events: vec![event],
            }])
        })
        .await
    }

    async fn get_programme(
        &self,
        request: Request<pb::GetProgrammeRequest>,
    ) -> Result<Response<pb::GetProgrammeResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::GetProgrammeRequest {
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let as_of_us = as_of_field(as_of, &mut v);
        finish(v)?;
        let (history, at) = match as_of_us {
            Some(at) => {
                let log = self.inner.log.clone();
                let include = move |l: &LoggedEvent| l.event.occurred_at_us <= at;
                let (history, _) =
                    blocking(move || read_model::fold_programme(&log, &include).map_err(internal))
                        .await?;
                (history, at)
            }
            None => {
                let view = self
                    .inner
                    .projections
                    .wait_for(read_model::NAME, min_position, wait)
                    .await?;
                let history = read_model::read_programme(&view.tree).map_err(internal)?;
                (history, self.inner.clock.now_us())
            }
        };
        Ok(Response::new(pb::GetProgrammeResponse {
            in_force: history.at(at).cloned().map(programme_to),
            versions: history
                .versions
                .into_iter()
                .map(|(from, position, p)| pb::ProgrammeVersion {
                    effective_from: Some(timestamp_from_us(from)),
                    position,
                    programme: Some(programme_to(p)),
                })
                .collect(),
        }))
    }

    async fn define_reward(
        &self,
        request: Request<pb::DefineRewardRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::DefineRewardRequest {
            reward_id,
            name,
            cost_points,
            stock,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let reward_id = if reward_id.is_empty() {
            context
                .event_id
                .map_or_else(Uuid::now_v7, |e| derived_id(e, usize::MAX))
        } else {
            id_field("reward_id", &reward_id, &mut v)
        };
        let event = RewardDefined {
            reward_id,
            name,
            cost_points,
            stock,
        };
        if let Err(found) = DomainEvent::RewardDefined(event.clone()).validate("") {
            for f in found {
                let field = f
                    .field
                    .split_once('.')
                    .map_or(f.field.as_str(), |(_, r)| r)
                    .to_owned();
                v.add(&field, f.description);
            }
        }
        finish(v)?;
        self.execute(context, reward_id.to_string(), move |log, _, _| {
            let stream = reward_stream(reward_id);
            let (_, revision) = read_model::fold_reward(log, reward_id).map_err(internal)?;
            if revision.is_some() {
                return Err(RuleError::RewardExists(reward_id).into());
            }
            Ok(vec![Planned {
                stream,
                expected: ExpectedRevision::NoStream,
                events: vec![DomainEvent::RewardDefined(event.clone())],
            }])
        })
        .await
    }

    async fn retire_reward(
        &self,
        request: Request<pb::RetireRewardRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::RetireRewardRequest { reward_id, context } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let reward_id = id_field("reward_id", &reward_id, &mut v);
        finish(v)?;
        self.execute(context, reward_id.to_string(), move |log, _, _| {
            let (reward, revision) = read_model::fold_reward(log, reward_id).map_err(internal)?;
            if !reward.defined {
                return Err(RuleError::UnknownReward(reward_id).into());
            }
            if reward.retired {
                return Err(RuleError::RewardRetired(reward_id).into());
            }
            Ok(vec![Planned {
                stream: reward_stream(reward_id),
                expected: expect(revision),
                events: vec![DomainEvent::RewardRetired(RewardRetired { reward_id })],
            }])
        })
        .await
    }

    async fn list_rewards(
        &self,
        request: Request<pb::ListRewardsRequest>,
    ) -> Result<Response<pb::ListRewardsResponse>, Status> {
        let wait = wait_bound(&request);
        let min_position = request.into_inner().min_position;
        let view = self
            .inner
            .projections
            .wait_for(read_model::NAME, min_position, wait)
            .await?;
        let rewards = read_model::read_rewards(&view.tree).map_err(internal)?;
        Ok(Response::new(pb::ListRewardsResponse {
            rewards: rewards
                .into_iter()
                .filter(|r| r.defined)
                .map(|r| pb::LoyaltyReward {
                    reward_id: r.reward_id.to_string(),
                    name: r.name,
                    cost_points: r.cost_points,
                    stock: r.stock,
                    claimed: r.claimed,
                    retired: r.retired,
                })
                .collect(),
        }))
    }

    async fn enrol(
        &self,
        request: Request<pb::EnrolRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::EnrolRequest {
            customer_id,
            channel,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = id_field("customer_id", &customer_id, &mut v);
        let channel = channel_from("channel", channel, &mut v);
        finish(v)?;
        let id = self.resolve_member(id).await?;
        self.execute(context, id.to_string(), move |log, _, _| {
            let customer = StreamName::parse(&customer_stream(id)).map_err(internal)?;
            if log.stream_head(&customer).map_err(Status::from)?.is_none() {
                return Err(Status::not_found(format!(
                    "customer {id} is not registered"
                )));
            }
            let (member, revision) = member(log, id)?;
            Ok(vec![Planned {
                stream: member_stream(id),
                expected: expect(revision),
                events: decide::enrol(&member, channel)?,
            }])
        })
        .await
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::LeaveRequest {
            customer_id,
            reason,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = id_field("customer_id", &customer_id, &mut v);
        v.max_len("reason", &reason, limits::FIELD_BYTES_MAX);
        finish(v)?;
        let id = self.resolve_member(id).await?;
        self.execute(context, id.to_string(), move |log, _, _| {
            let (member, revision) = member(log, id)?;
            Ok(vec![Planned {
                stream: member_stream(id),
                expected: expect(revision),
                events: decide::leave(&member, &reason)?,
            }])
        })
        .await
    }

    async fn spend_points(
        &self,
        request: Request<pb::SpendPointsRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::SpendPointsRequest {
            customer_id,
            points,
            reason,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = id_field("customer_id", &customer_id, &mut v);
        points_field("points", points, &mut v);
        v.max_len("reason", &reason, limits::FIELD_BYTES_MAX);
        finish(v)?;
        let id = self.resolve_member(id).await?;
        self.execute(context, String::new(), move |log, at, redemption| {
            let (history, _) = load_programme(log)?;
            let (member, revision) = member(log, id)?;
            Ok(vec![Planned {
                stream: member_stream(id),
                expected: expect(revision),
                events: decide::spend(&member, history.at(at), points, &reason, redemption, at)?,
            }])
        })
        .await
    }

    async fn redeem_reward(
        &self,
        request: Request<pb::RedeemRewardRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::RedeemRewardRequest {
            customer_id,
            reward_id,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = id_field("customer_id", &customer_id, &mut v);
        let reward_id = id_field("reward_id", &reward_id, &mut v);
        finish(v)?;
        let id = self.resolve_member(id).await?;
        self.execute(context, String::new(), move |log, at, redemption| {
            let (history, _) = load_programme(log)?;
            let (member, revision) = member(log, id)?;
            let (reward, reward_revision) =
                read_model::fold_reward(log, reward_id).map_err(internal)?;
            let (spent, claim) =
                decide::redeem(&member, history.at(at), &reward, reward_id, redemption, at)?;
            let mut plans = vec![Planned {
                stream: member_stream(id),
                expected: expect(revision),
                events: vec![spent],
            }];
            if let Some(claim) = claim {
                plans.push(Planned {
                    stream: reward_stream(reward_id),
                    expected: expect(reward_revision),
                    events: vec![claim],
                });
            }
            Ok(plans)
        })
        .await
    }

    async fn adjust_points(
        &self,
        request: Request<pb::AdjustPointsRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::AdjustPointsRequest {
            customer_id,
            points,
            reason,
            expires_at,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = id_field("customer_id", &customer_id, &mut v);
        if points == 0 || points.unsigned_abs() > limits::LOYALTY_POINTS_MAX {
            v.add(
                "points",
                format!(
                    "must be non-zero and at most {} in size",
                    limits::LOYALTY_POINTS_MAX
                ),
            );
        }
        v.required("reason", &reason, limits::FIELD_BYTES_MAX);
        if context.actor.is_empty() {
            v.add(
                "context.actor",
                "is required: adjustments name the staff member",
            );
        }
        let expires_at_us = expires_at.and_then(|ts| timestamp_to_us("expires_at", &ts, &mut v));
        finish(v)?;
        let id = self.resolve_member(id).await?;
        self.execute(context, id.to_string(), move |log, at, _| {
            let (member, revision) = member(log, id)?;
            Ok(vec![Planned {
                stream: member_stream(id),
                expected: expect(revision),
                events: decide::adjust(&member, points, &reason, expires_at_us, at)?,
            }])
        })
        .await
    }

    async fn transfer_points(
        &self,
        request: Request<pb::TransferPointsRequest>,
    ) -> Result<Response<pb::LoyaltyWriteResponse>, Status> {
        let pb::TransferPointsRequest {
            from_customer_id,
            to_customer_id,
            points,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let from = id_field("from_customer_id", &from_customer_id, &mut v);
        let to = id_field("to_customer_id", &to_customer_id, &mut v);
        if from == to && !from.is_nil() {
            v.add("to_customer_id", "must differ from from_customer_id");
        }
        points_field("points", points, &mut v);
        finish(v)?;
        let (from, to) = (
            self.resolve_member(from).await?,
            self.resolve_member(to).await?,
        );
        if from == to {
            return Err(invalid_argument(vec![
                crate::domain::violations::FieldViolation {
                    field: "to_customer_id".into(),
                    description: "is the same member as from_customer_id (merged)".into(),
                },
            ]));
        }
        self.execute(context, String::new(), move |log, at, transfer_id| {
            let (sender, from_revision) = member(log, from)?;
            let (receiver, to_revision) = member(log, to)?;
            let event = decide::transfer(&sender, &receiver, points, transfer_id, at)?;
            Ok(vec![
                Planned {
                    stream: member_stream(from),
                    expected: expect(from_revision),
                    events: vec![event.clone()],
                },
                Planned {
                    stream: member_stream(to),
                    expected: expect(to_revision),
                    events: vec![event],
                },
            ])
        })
        .await
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::LoyaltyMember>, Status> {
        let wait = wait_bound(&request);
        let pb::GetMemberRequest {
            customer_id,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let id = id_field("customer_id", &customer_id, &mut v);
        let as_of_us = as_of_field(as_of, &mut v);
        finish(v)?;
        let id = self.resolve_member(id).await?;
        let (member, history, at, position) =
            self.member_at(id, min_position, as_of_us, wait).await?;
        if member.enrolment.is_none() {
            return Err(RuleError::NotEnrolled(id).into());
        }
        Ok(Response::new(member_to_proto(
            &member,
            history.at(at),
            at,
            position,
        )))
    }

    async fn get_ledger(
        &self,
        request: Request<pb::GetLedgerRequest>,
    ) -> Result<Response<pb::GetLedgerResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::GetLedgerRequest {
            customer_id,
            min_position,
            as_of,
            page_size: size,
            page_token,
        } = request.into_inner();
        let mut v = Violations::new("");
        let id = id_field("customer_id", &customer_id, &mut v);
        let as_of_us = as_of_field(as_of, &mut v);
        let start: usize = if page_token.is_empty() {
            0
        } else {
            page_token.parse().unwrap_or_else(|_| {
                v.add("page_token", "is not a token this service returned");
                0
            })
        };
        finish(v)?;
        let id = self.resolve_member(id).await?;
        let (member, _, at, _) = self.member_at(id, min_position, as_of_us, wait).await?;
        if member.enrolment.is_none() && member.entries.is_empty() {
            return Err(RuleError::NotEnrolled(id).into());
        }
        let size = page_size(size);
        let entries: Vec<pb::LedgerEntry> = member
            .entries
            .iter()
            .skip(start)
            .take(size)
            .map(|e| {
                let line = member
                    .lines
                    .iter()
                    .find(|l| l.line_id == e.event_id)
                    .map(|l| pb::LedgerLine {
                        rule: l.rule.clone(),
                        order_id: l.order_id.clone(),
                        points: l.points,
                        remaining: l.remaining(),
                        spent: l.spent,
                        expired: l.expired,
                        cancelled: l.cancelled,
                        forfeited: l.forfeited,
                        recovered: l.recovered,
                        earned_at: Some(timestamp_from_us(l.earned_at_us)),
                        available_at: Some(timestamp_from_us(l.available_at_us)),
                        expires_at: l.expires_at_us.map(timestamp_from_us),
                        state: l.state_at(at).to_owned(),
                    });
                pb::LedgerEntry {
                    position: e.position,
                    event_id: e.event_id.to_string(),
                    occurred_at: Some(timestamp_from_us(e.at_us)),
                    kind: e.kind.as_str().to_owned(),
                    points: e.points,
                    detail: e.detail.clone(),
                    cause_id: e.cause.map(|c| c.to_string()).unwrap_or_default(),
                    line,
                }
            })
            .collect();
        let next = start + entries.len();
        Ok(Response::new(pb::GetLedgerResponse {
            entries,
            next_page_token: if next < member.entries.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::ListMembersRequest {
            tier,
            min_available,
            max_available,
            min_position,
            as_of,
            page_size: size,
            page_token,
        } = request.into_inner();
        let mut v = Violations::new("");
        let as_of_us = as_of_field(as_of, &mut v);
        v.max_len("tier", &tier, limits::FIELD_BYTES_MAX);
        let after = if page_token.is_empty() {
            None
        } else {
            Some(uuid_field("page_token", &page_token, &mut v))
        };
        finish(v)?;
        let size = page_size(size);
        let (source, history, at) = self.members_at(min_position, as_of_us, wait).await?;
        let programme = history.at(at);
        let mut members = Vec::new();
        let mut last = None;
        let mut more = false;
        for (scanned, member) in source.after(after).enumerate() {
            let member = member.map_err(internal)?;
            if members.len() == size || scanned == limits::LOYALTY_LIST_SCAN_MAX {
                more = true;
                break;
            }
            last = Some(member.customer_id);
            if !member.is_active() {
                continue;
            }
            if !tier.is_empty() && tier_name(&member, programme) != tier {
                continue;
            }
            let available = member.balance(at).available;
            if min_available.is_some_and(|m| available < m)
                || max_available.is_some_and(|m| available > m)
            {
                continue;
            }
            members.push(member_to_proto(
                &member,
                programme,
                at,
                member.last_position,
            ));
        }
        Ok(Response::new(pb::ListMembersResponse {
            members,
            next_page_token: if more {
                last.map(|id| id.to_string()).unwrap_or_default()
            } else {
                String::new()
            },
        }))
    }

    async fn get_programme_stats(
        &self,
        request: Request<pb::GetProgrammeStatsRequest>,
    ) -> Result<Response<pb::ProgrammeStats>, Status> {
        let wait = wait_bound(&request);
        let pb::GetProgrammeStatsRequest {
            min_position,
            as_of,
            months,
        } = request.into_inner();
        let mut v = Violations::new("");
        let as_of_us = as_of_field(as_of, &mut v);
        if months > limits::LOYALTY_STATS_MONTHS_MAX {
            v.add(
                "months",
                format!("must be at most {}", limits::LOYALTY_STATS_MONTHS_MAX),
            );
        }
        finish(v)?;
        let months = if months == 0 { 12 } else { months };
        let (source, history, at) = self.members_at(min_position, as_of_us, wait).await?;
        let programme = history.at(at);
        // Month starts, oldest first, ending with as_of's month.
        let mut starts = vec![start_of_month(at)];
        for _ in 1..months {
            let first = starts[0];
            starts.insert(0, start_of_month(first - 1));
        }
        let mut periods: Vec<pb::PeriodStats> = starts
            .iter()
            .map(|s| pb::PeriodStats {
                period_start: Some(timestamp_from_us(*s)),
                ..Default::default()
            })
            .collect();
        let mut stats = pb::ProgrammeStats {
            as_of: Some(timestamp_from_us(at)),
            ..Default::default()
        };
        let mut tiers: BTreeMap<String, u64> = BTreeMap::new();
        for member in source.after(None) {
            let member = member.map_err(internal)?;
            stats.members += 1;
            stats.lifetime_earned += member.totals.earned;
            stats.lifetime_spent += member.totals.spent;
            stats.lifetime_expired += member.totals.expired;
            for e in &member.entries {
                if e.at_us > at || e.at_us < starts[0] {
                    continue;
                }
                let index = starts.partition_point(|s| *s <= e.at_us) - 1;
                let p = &mut periods[index];
                let n = e.points.unsigned_abs();
                match e.kind {
                    EntryKind::Earned => p.earned += n,
                    EntryKind::Spent => p.spent += n,
                    EntryKind::Expired => p.expired += n,
                    EntryKind::Cancelled => p.cancelled += n,
                    _ => {}
                }
            }
            if !member.is_active() {
                continue;
            }
            stats.active_members += 1;
            *tiers
                .entry(tier_name(&member, programme).to_owned())
                .or_default() += 1;
            let b = member.balance(at);
            stats.outstanding_points += b.available.max(0) as u64 + b.pending;
            stats.pending_points += b.pending;
            stats.debt_points += b.debt;
        }
        stats.redemption_rate = if stats.lifetime_earned == 0 {
            0.0
        } else {
            stats.lifetime_spent as f64 / stats.lifetime_earned as f64
        };
        stats.tiers = tiers
            .into_iter()
            .map(|(tier, members)| pb::TierCount { tier, members })
            .collect();
        stats.periods = periods;
        Ok(Response::new(stats))
    }

    async fn run_tick(
        &self,
        request: Request<pb::RunTickRequest>,
    ) -> Result<Response<pb::RunTickResponse>, Status> {
        let wait = wait_bound(&request);
        let mut v = Violations::new("");
        let as_of_us = as_of_field(request.into_inner().as_of, &mut v);
        finish(v)?;
        let at = as_of_us.unwrap_or_else(|| self.inner.clock.now_us());
        // The members due at `at`, by the read model once it has caught up with the head.
        let head = self.inner.log.head().position;
        let view = self
            .inner
            .projections
            .wait_for(read_model::NAME, head, wait)
            .await?;
        let tree = view.tree.clone();
        // Birthdays come from the customers read model: it must have caught up too.
        self.inner
            .projections
            .wait_for(crate::projections::customers::NAME, head, wait)
            .await?;
        let birthdays = crate::loyalty_job::birthdays_from_profiles(
            self.inner.projections.clone(),
            self.inner.privacy.clone(),
        );
        let lookup = birthdays.clone();
        let members =
            blocking(move || crate::loyalty_job::due_members(&tree, at, &lookup).map_err(internal))
                .await?;
        drop(view);
        let done = crate::loyalty_job::tick(&self.inner.log, members, at, &birthdays)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::RunTickResponse {
            members: done.members,
            expired_points: done.expired_points,
            tier_changes: done.tier_changes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_defaulted_and_capped() {
        assert_eq!(page_size(0), limits::LOYALTY_PAGE_DEFAULT);
        assert_eq!(page_size(-3), limits::LOYALTY_PAGE_DEFAULT);
        assert_eq!(page_size(1_000_000), limits::LOYALTY_PAGE_MAX);
    }
}
