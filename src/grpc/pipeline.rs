//! The `rapport.v1.Pipeline` service: B2B accounts, pipelines, leads, deals and tasks.
//!
//! Writes: convert and validate → load the record's stream (and what the rule needs from
//! others: the deal's pipeline, a customer's liveness, the stages that hold deals) → a
//! pure decision of [`crate::domain::pipeline`] → append with the revision read
//! (QualifyLead: the lead's and the new deal's streams in one atomic multi-stream
//! append). A request's `expected_revision` pins the record's revision: if the stream is
//! elsewhere, the answer is `ABORTED`. Without it, a concurrent change makes the append
//! fail its expected revision and the command is decided again on the new state — so it
//! is written only if it is still valid there (bounded retries). Re-sending a command
//! with the same `event_id` returns the original position before anything is re-decided.
//! Sales events carry no personal data (see [`crate::domain::events`]); the one personal
//! part a command may write is the registration of the customer a lead converts into
//! (QualifyLead with `new_customer`), sealed with that customer's key like the Customers
//! service does, its emails / phones reserved in the same atomic append.
//!
//! Reads: the live answer comes from a [`SalesModel`] loaded once from the `pipeline`
//! projection (after waiting for `min_position`) and then brought forward with the log's
//! new sales events; an `as_of` answer folds the log's sales streams up to the bound.
//! Both use the projection's own fold ([`read_model::fold_event`]), and every query is a
//! pure function of the model ([`queries`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{timestamp_to_us, uuid_field};
use super::convert_pipeline::{self as cv, Wire};
use super::customers::{
    Context, ContextFields, context_from, context_ref, derived_id, seal_and_encode_streams,
    wait_bound,
};
use super::pb;
use super::status::invalid_argument;
use crate::clock::Clock;
use crate::domain::common::{CalendarDate, Channel};
use crate::domain::customer::{self, Customer, Identifier};
use crate::domain::events::{
    AccountContactLinked, AccountContactUnlinked, AccountCreated, AccountOwnerAssigned,
    AccountUpdated, CustomerIdentity, CustomerRegistered, DealChanged, DealOpened,
    IdentifierClaimed, IdentifierKind, LeadAssigned, LeadCaptured, LeadDisqualified,
    PipelineChanged, PipelineDefined, TaskCreated, validate_code,
};
use crate::domain::personal::Personal;
use crate::domain::pipeline::{
    self as sales, AccountState, DealState, LeadState, PipelineState, TaskState, account_stream,
    deal_stream, lead_stream, pipeline_stream, task_stream,
};
use crate::domain::profile::customer_stream;
use crate::domain::{DomainEvent, Violations};
use crate::limits;
use crate::log::{AppendError, ExpectedRevision, Log, LoggedEvent, StreamAppend, StreamName};
use crate::privacy::Privacy;
use crate::projections::customers::{HistoryError, decode_event, read_stream_all};
use crate::projections::pipeline::{self as read_model, ModelError, SalesModel};
use crate::projections::pipeline_queries as queries;
use crate::projections::{ProjectionView, Projections};

/// The Pipeline service.
#[derive(Clone)]
pub struct PipelineService {
    inner: Arc<Inner>,
}

struct Inner {
    log: Log,
    privacy: Privacy,
    projections: Projections,
    clock: Arc<dyn Clock>,
    /// The live model of the last read and the projection tree it was loaded from.
    cache: Mutex<Option<(Vec<u8>, Arc<SalesModel>)>>,
}

impl PipelineService {
    /// A service over the log, the key store (for identity matching), the running
    /// projections and the clock (the default "now" of overdue tasks and durations).
    pub fn new(
        log: Log,
        privacy: Privacy,
        projections: Projections,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                privacy,
                projections,
                clock,
                cache: Mutex::new(None),
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

fn history_status(error: HistoryError) -> Status {
    match error {
        HistoryError::Read(error) => error.into(),
        HistoryError::TooLong(message) => Status::resource_exhausted(message),
        HistoryError::Decode(message) => internal(message),
    }
}

fn model_status(error: ModelError) -> Status {
    match error {
        ModelError::Log(error) => error.into(),
        ModelError::TooLarge(message) => Status::resource_exhausted(message),
        ModelError::Corrupt(message) => internal(message),
    }
}

fn finish(v: Violations) -> Result<(), Status> {
    v.into_result().map_err(invalid_argument)
}

// ---------------------------------------------------------------------------------------
// Loading state
// ---------------------------------------------------------------------------------------

impl Inner {
    /// Folds one stream into a decision state; returns it with the stream's revision.
    fn load<S: Default>(
        &self,
        stream: &str,
        apply: impl Fn(&mut S, &DomainEvent),
    ) -> Result<(S, Option<u64>), Status> {
        let mut state = S::default();
        let mut revision = None;
        for logged in read_stream_all(&self.log, stream).map_err(history_status)? {
            let event = decode_event(&logged).map_err(history_status)?;
            apply(&mut state, &event);
            revision = Some(logged.event.revision);
        }
        Ok((state, revision))
    }

    fn pipeline(&self, id: Uuid) -> Result<PipelineState, Status> {
        Ok(self.load(&pipeline_stream(id), PipelineState::apply)?.0)
    }

    fn deal(&self, id: Uuid) -> Result<(DealState, Option<u64>), Status> {
        self.load(&deal_stream(id), DealState::apply)
    }

    fn exists(&self, stream: &str) -> Result<bool, Status> {
        let name = StreamName::parse(stream).map_err(internal)?;
        Ok(self.log.stream_head(&name)?.is_some())
    }

    /// The live customer `id` is (following merges), `None` when it is not registered or
    /// was erased.
    fn live_customer(&self, id: Uuid) -> Result<Option<Uuid>, Status> {
        let mut id = id;
        for _ in 0..limits::MERGE_DEPTH_MAX {
            let (state, _) =
                self.load(&customer_stream(id), |s: &mut Customer, e| s.apply(id, e))?;
            if !state.registered || state.erased || self.privacy.keys().is_erased(id) {
                return Ok(None);
            }
            match state.merged_into {
                Some(into) => id = into,
                None => return Ok(Some(id)),
            }
        }
        Err(internal(format!("merge chain from {id} is too long")))
    }

    /// The live customer holding `identifier`, matched through its keyed-hash
    /// reservation stream (the value itself is never stored or compared in clear).
    fn holder(&self, identifier: &Identifier) -> Result<Option<Uuid>, Status> {
        Ok(self.holder_at(identifier)?.2)
    }

    /// The reservation stream of `identifier`, its revision and its live holder.
    fn holder_at(
        &self,
        identifier: &Identifier,
    ) -> Result<(String, Option<u64>, Option<Uuid>), Status> {
        let stream = self.privacy.identity_stream(identifier);
        let name = StreamName::parse(&stream).map_err(internal)?;
        let page = match self.log.read_stream(&name, 0, true, 1) {
            Ok(page) => page,
            Err(crate::log::ReadError::StreamNotFound(_)) => return Ok((stream, None, None)),
            Err(error) => return Err(error.into()),
        };
        let Some(last) = page.events.first() else {
            return Ok((stream, None, None));
        };
        let revision = Some(last.event.revision);
        let holder = match decode_event(last).map_err(history_status)? {
            DomainEvent::IdentifierClaimed(IdentifierClaimed { customer_id, .. }) => {
                self.live_customer(customer_id)?
            }
            _ => None,
        };
        Ok((stream, revision, holder))
    }

    /// The customer a qualified lead converts into: a live customer already holding one
    /// of `identity`'s emails / phones, or `new_id` registered now — its registration and
    /// the reservations of its identifiers (as the Customers service plans them) join the
    /// command's atomic append.
    fn convert_to_customer(
        &self,
        new_id: Uuid,
        identity: &CustomerIdentity,
        locale: &str,
    ) -> Result<(Uuid, Vec<Planned>), Status> {
        let wanted = customer::identity_identifiers(identity);
        let mut claims = Vec::new();
        for identifier in &wanted {
            let (stream, revision, holder) = self.holder_at(identifier)?;
            if let Some(holder) = holder {
                return Ok((holder, Vec::new()));
            }
            claims.push(Planned {
                stream,
                expected: expected_of(revision),
                events: vec![DomainEvent::IdentifierClaimed(IdentifierClaimed {
                    customer_id: new_id,
                    kind: identifier.kind,
                })],
            });
        }
        let (state, revision) = self.load(&customer_stream(new_id), |s: &mut Customer, e| {
            s.apply(new_id, e)
        })?;
        let registration = customer::register(
            &state,
            CustomerRegistered {
                customer_id: new_id,
                identity: Personal::Clear(identity.clone()),
                locale: locale.to_owned(),
                acquisition_channel: Channel::Unspecified,
            },
        )?;
        let mut appends = vec![Planned {
            stream: customer_stream(new_id),
            expected: expected_of(revision),
            events: registration,
        }];
        appends.extend(claims);
        Ok((new_id, appends))
    }

    /// The live model at (at least) the projection's view: loaded from the projection's
    /// tree once (again after a rebuild switched trees), then brought forward by folding
    /// the log's new sales events with the same fold, so a read after a write costs the
    /// events since the last read, not the whole model. The answer's position is the
    /// model's (never below `view.applied`).
    fn live_model(&self, view: &ProjectionView) -> Result<Arc<SalesModel>, Status> {
        let name = view.tree.name().to_vec();
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| internal("model cache poisoned"))?;
        let usable = cache.as_ref().is_some_and(|(cached, _)| *cached == name);
        if !usable {
            let model = match read_model::load_model(&view.tree).map_err(model_status)? {
                Some(model) => model,
                // The projection kept committing during every scan: the log is stable.
                None => read_model::fold_log(&self.log, view.applied, &|_| true)
                    .map_err(model_status)
                    .map(|mut m| {
                        m.position = view.applied;
                        m
                    })?,
            };
            *cache = Some((name, Arc::new(model)));
        }
        let (_, model) = cache.as_mut().expect("filled above");
        if model.position < view.applied {
            let model = Arc::make_mut(model);
            read_model::fold_into(&self.log, model, view.applied, &|_| true)
                .map_err(model_status)?;
            model.position = view.applied;
        }
        Ok(model.clone())
    }
}

// ---------------------------------------------------------------------------------------
// The write path
// ---------------------------------------------------------------------------------------

/// Events planned for one stream.
struct Planned {
    stream: String,
    expected: ExpectedRevision,
    events: Vec<DomainEvent>,
}

/// What a command decided: the record written to (its stream first) and the appends.
struct Plan {
    id: Uuid,
    deal_id: Option<Uuid>,
    appends: Vec<Planned>,
}

/// `ABORTED` when the request pinned a revision the stream is not at.
fn check_pinned(stream: &str, revision: Option<u64>, pinned: Option<u64>) -> Result<(), Status> {
    match pinned {
        Some(expected) if revision != Some(expected) => {
            Err(Status::from(AppendError::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected: ExpectedRevision::Exact(expected),
                actual: revision,
            }))
        }
        _ => Ok(()),
    }
}

fn expected_of(revision: Option<u64>) -> ExpectedRevision {
    revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
}

/// Gives the plan's events their ids (the first the command's, the others derived from
/// it), seals personal parts (only a customer registered by QualifyLead has any) and
/// encodes them, as the Customers service does.
fn encode_plan(
    privacy: &Privacy,
    plan: &Plan,
    base_id: Uuid,
    fields: &ContextFields,
) -> Result<Vec<StreamAppend>, Status> {
    seal_and_encode_streams(
        privacy,
        plan.appends
            .iter()
            .map(|p| (p.stream.as_str(), p.expected, p.events.as_slice())),
        base_id,
        fields,
    )
}

/// The answer to a re-sent command: from the event its `event_id` names.
fn written(found: &LoggedEvent) -> pb::PipelineWriteResponse {
    let id = found
        .event
        .stream
        .split_once('-')
        .map(|(_, id)| id.to_owned())
        .unwrap_or_default();
    let deal_id = match decode_event(found) {
        Ok(DomainEvent::LeadQualified(e)) => e.deal_id.to_string(),
        _ => String::new(),
    };
    pb::PipelineWriteResponse {
        position: found.event.position,
        id,
        revision: found.event.revision,
        deal_id,
    }
}

type Decide = dyn Fn(&Inner) -> Result<Plan, Status> + Send + Sync;

impl PipelineService {
    /// Runs a command: idempotency by event id, decide (in a blocking task), append;
    /// re-decides on a concurrency conflict (a pinned revision then answers `ABORTED`).
    async fn execute(
        &self,
        context: Context,
        decide: Arc<Decide>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let base_id = context.event_id.unwrap_or_else(Uuid::now_v7);
        let fields = context_ref(&context);
        for _ in 0..limits::WRITE_RETRIES_MAX {
            if context.event_id.is_some() {
                let inner = self.inner.clone();
                let found =
                    blocking(move || inner.log.event_by_id(base_id).map_err(Status::from)).await?;
                if let Some(found) = found {
                    return Ok(Response::new(written(&found)));
                }
            }
            let inner = self.inner.clone();
            let decide = decide.clone();
            let fields = fields.clone();
            let (plan, appends) = blocking(move || {
                let plan = decide(&inner)?;
                let appends = encode_plan(&inner.privacy, &plan, base_id, &fields)?;
                Ok((plan, appends))
            })
            .await?;
            match self.inner.log.append_multi(appends).await {
                Ok(outcomes) => {
                    let revision = outcomes.first().map_or(0, |o| o.last_revision);
                    let position = outcomes.iter().map(|o| o.last_position).max().unwrap_or(0);
                    return Ok(Response::new(pb::PipelineWriteResponse {
                        position,
                        id: plan.id.to_string(),
                        revision,
                        deal_id: plan.deal_id.map(|d| d.to_string()).unwrap_or_default(),
                    }));
                }
                Err(AppendError::WrongExpectedRevision { .. }) => continue,
                Err(AppendError::EventIdConflict { .. }) if context.event_id.is_some() => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(
            "the record changed concurrently too many times; retry the command",
        ))
    }

    /// A command on one record's stream: loads its state, checks a pinned revision,
    /// decides.
    #[allow(clippy::too_many_arguments)]
    async fn command<S, D>(
        &self,
        context: Context,
        id: Uuid,
        stream: String,
        pinned: Option<u64>,
        apply: fn(&mut S, &DomainEvent),
        decide: D,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status>
    where
        S: Default + 'static,
        D: Fn(&Inner, &S) -> Result<Vec<DomainEvent>, Status> + Send + Sync + 'static,
    {
        let decide: Arc<Decide> = Arc::new(move |inner: &Inner| {
            let (state, revision) = inner.load(&stream, apply)?;
            if revision.is_some() {
                check_pinned(&stream, revision, pinned)?;
            }
            let events = decide(inner, &state)?;
            Ok(Plan {
                id,
                deal_id: None,
                appends: vec![Planned {
                    stream: stream.clone(),
                    expected: expected_of(revision),
                    events,
                }],
            })
        });
        self.execute(context, decide).await
    }
}

/// Rewrites a conversion / validation path to the request's field: the event's own name
/// (`account_created.name`) becomes `field` (`account.name`).
fn request_path(field: &str, path: &str) -> String {
    match path.split_once('.') {
        Some((_, rest)) => format!("{field}.{rest}"),
        None => field.to_owned(),
    }
}

/// Converts a request's event message (absent: all defaults, which validation refuses).
fn convert<T: Wire>(field: &str, proto: Option<T::Proto>, v: &mut Violations) -> T
where
    T::Proto: Default,
{
    let mut found = Violations::new("");
    let value = T::from_wire(proto.unwrap_or_default(), &mut found);
    for violation in found.into_vec() {
        v.add(
            &request_path(field, &violation.field),
            violation.description,
        );
    }
    value
}

/// Validates an event built from a request, reporting under `field`.
fn validate(field: &str, event: &DomainEvent, v: &mut Violations) {
    if let Err(found) = event.validate("") {
        for violation in found {
            v.add(
                &request_path(field, &violation.field),
                violation.description,
            );
        }
    }
}

/// An id field a create request may leave empty: the server makes a UUIDv7.
fn fill_id(id: &mut String) {
    if id.is_empty() {
        *id = Uuid::now_v7().to_string();
    }
}

fn optional_code(field: &str, code: &str, v: &mut Violations) -> Option<String> {
    if code.is_empty() {
        return None;
    }
    validate_code(field, code, v);
    Some(code.to_owned())
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Bound {
    Position(u64),
    RecordedAt(i64),
}

fn as_of_from(as_of: Option<pb::SalesAsOf>, v: &mut Violations) -> Option<Bound> {
    use pb::sales_as_of::Bound as B;
    match as_of.and_then(|a| a.bound) {
        None => None,
        Some(B::Position(position)) => Some(Bound::Position(position)),
        Some(B::RecordedAt(ts)) => {
            timestamp_to_us("as_of.recorded_at", &ts, v).map(Bound::RecordedAt)
        }
    }
}

/// A model to answer from, the log position it reflects and the answer's "now".
struct Answer {
    model: Arc<SalesModel>,
    position: u64,
    now_us: i64,
}

fn page_size(raw: i32, v: &mut Violations) -> usize {
    match usize::try_from(raw) {
        Ok(0) => limits::PIPELINE_PAGE_DEFAULT,
        Ok(n) => n.min(limits::PIPELINE_PAGE_MAX),
        Err(_) => {
            v.add("page_size", "must not be negative");
            limits::PIPELINE_PAGE_DEFAULT
        }
    }
}

fn page_token(token: &str, v: &mut Violations) -> Option<Uuid> {
    if token.is_empty() {
        return None;
    }
    match Uuid::parse_str(token) {
        Ok(id) => Some(id),
        Err(_) => {
            v.add("page_token", "is not a token this server returned");
            None
        }
    }
}

fn optional_date(field: &str, text: &str, v: &mut Violations) -> Option<CalendarDate> {
    (!text.is_empty()).then(|| cv::date_from(field, text, v))
}

fn optional_id(field: &str, text: &str, v: &mut Violations) -> Option<Uuid> {
    cv::optional_uuid(field, text, v)
}

/// An optional filter string (empty: no filter), at most `max` bytes.
fn optional_text(field: &str, text: String, max: usize, v: &mut Violations) -> Option<String> {
    v.max_len(field, &text, max);
    (!text.is_empty()).then_some(text)
}

impl PipelineService {
    /// The model to answer from: the live projection (after `min_position`), or the log
    /// folded up to the `as_of` bound.
    async fn answer(
        &self,
        min_position: u64,
        bound: Option<Bound>,
        wait: Duration,
    ) -> Result<Answer, Status> {
        let inner = self.inner.clone();
        match bound {
            None => {
                let view = self
                    .inner
                    .projections
                    .wait_for(read_model::NAME, min_position, wait)
                    .await
                    .map_err(Status::from)?;
                let now_us = self.inner.clock.now_us();
                blocking(move || {
                    let model = inner.live_model(&view)?;
                    Ok(Answer {
                        position: model.position,
                        model,
                        now_us,
                    })
                })
                .await
            }
            Some(bound) => {
                blocking(move || {
                    let head = inner.log.head().position;
                    let (limit, recorded_by) = match bound {
                        Bound::Position(p) => (p.min(head), i64::MAX),
                        Bound::RecordedAt(t) => (head, t),
                    };
                    let model = read_model::fold_log(&inner.log, limit, &|e| {
                        e.recorded_at_us <= recorded_by
                    })
                    .map_err(model_status)?;
                    let (position, now_us) = match bound {
                        Bound::Position(_) => (
                            limit,
                            inner
                                .log
                                .event_at(limit)?
                                .map_or(0, |e| e.event.recorded_at_us),
                        ),
                        Bound::RecordedAt(t) => (model.position, t),
                    };
                    Ok(Answer {
                        model: Arc::new(model),
                        position,
                        now_us,
                    })
                })
                .await
            }
        }
    }
}

#[tonic::async_trait]
impl pb::pipeline_server::Pipeline for PipelineService {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::CreateAccountRequest { context, account } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let mut account = account.unwrap_or_default();
        fill_id(&mut account.account_id);
        let event: AccountCreated = convert("account", Some(account), &mut v);
        validate(
            "account",
            &DomainEvent::AccountCreated(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.account_id;
        self.command(
            context,
            id,
            account_stream(id),
            None,
            AccountState::apply,
            move |_, s| Ok(sales::create_account(s, event.clone())?),
        )
        .await
    }

    async fn update_account(
        &self,
        request: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::UpdateAccountRequest {
            context,
            account,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: AccountUpdated = convert("account", account, &mut v);
        validate(
            "account",
            &DomainEvent::AccountUpdated(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.account_id;
        self.command(
            context,
            id,
            account_stream(id),
            expected_revision,
            AccountState::apply,
            move |_, s| Ok(sales::update_account(s, event.clone())?),
        )
        .await
    }

    async fn link_contact(
        &self,
        request: Request<pb::LinkContactRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::LinkContactRequest {
            context,
            link,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: AccountContactLinked = convert("link", link, &mut v);
        validate(
            "link",
            &DomainEvent::AccountContactLinked(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.account_id;
        self.command(
            context,
            id,
            account_stream(id),
            expected_revision,
            AccountState::apply,
            move |inner, s| {
                let mut event = event.clone();
                let live = inner.live_customer(event.customer_id)?;
                if let Some(survivor) = live {
                    event.customer_id = survivor;
                }
                Ok(sales::link_contact(s, event, live.is_some())?)
            },
        )
        .await
    }

    async fn unlink_contact(
        &self,
        request: Request<pb::UnlinkContactRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::UnlinkContactRequest {
            context,
            unlink,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: AccountContactUnlinked = convert("unlink", unlink, &mut v);
        validate(
            "unlink",
            &DomainEvent::AccountContactUnlinked(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.account_id;
        self.command(
            context,
            id,
            account_stream(id),
            expected_revision,
            AccountState::apply,
            move |_, s| Ok(sales::unlink_contact(s, event.clone())?),
        )
        .await
    }

    async fn assign_account_owner(
        &self,
        request: Request<pb::AssignAccountOwnerRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::AssignAccountOwnerRequest {
            context,
            assignment,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: AccountOwnerAssigned = convert("assignment", assignment, &mut v);
        validate(
            "assignment",
            &DomainEvent::AccountOwnerAssigned(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.account_id;
        self.command(
            context,
            id,
            account_stream(id),
            expected_revision,
            AccountState::apply,
            move |_, s| Ok(sales::assign_account_owner(s, event.clone())?),
        )
        .await
    }

    async fn define_pipeline(
        &self,
        request: Request<pb::DefinePipelineRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::DefinePipelineRequest { context, pipeline } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let mut pipeline = pipeline.unwrap_or_default();
        fill_id(&mut pipeline.pipeline_id);
        let event: PipelineDefined = convert("pipeline", Some(pipeline), &mut v);
        validate(
            "pipeline",
            &DomainEvent::PipelineDefined(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.pipeline_id;
        self.command(
            context,
            id,
            pipeline_stream(id),
            None,
            PipelineState::apply,
            move |_, s| Ok(sales::define_pipeline(s, event.clone())?),
        )
        .await
    }

    async fn change_pipeline(
        &self,
        request: Request<pb::ChangePipelineRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::ChangePipelineRequest {
            context,
            pipeline,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: PipelineChanged = convert("pipeline", pipeline, &mut v);
        validate(
            "pipeline",
            &DomainEvent::PipelineChanged(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.pipeline_id;
        // Which stages hold deals comes from the read model, caught up with the log as it
        // is now. A deal opened into a removed stage between this read and the append is
        // the one race this leaves open; the board then shows it under a placeholder.
        let head = self.inner.log.head().position;
        let view = self
            .inner
            .projections
            .wait_for(read_model::NAME, head, wait)
            .await
            .map_err(Status::from)?;
        let view = Arc::new(view);
        self.command(
            context,
            id,
            pipeline_stream(id),
            expected_revision,
            PipelineState::apply,
            move |inner, s| {
                let model = inner.live_model(&view)?;
                let in_use = queries::stages_with_deals(&model, id);
                Ok(sales::change_pipeline(s, event.clone(), &in_use)?)
            },
        )
        .await
    }

    async fn capture_lead(
        &self,
        request: Request<pb::CaptureLeadRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::CaptureLeadRequest {
            context,
            lead,
            match_email,
            match_phone,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let mut lead = lead.unwrap_or_default();
        fill_id(&mut lead.lead_id);
        let event: LeadCaptured = convert("lead", Some(lead), &mut v);
        validate("lead", &DomainEvent::LeadCaptured(event.clone()), &mut v);
        let mut wanted = Vec::new();
        if !match_email.is_empty() {
            match crate::keys::normalise_email(&match_email) {
                Some(value) => wanted.push(Identifier {
                    kind: IdentifierKind::Email,
                    value,
                }),
                None => v.add("match_email", "is not an email address"),
            }
        }
        if !match_phone.is_empty() {
            match crate::keys::normalise_phone(&match_phone) {
                Some(value) => wanted.push(Identifier {
                    kind: IdentifierKind::Phone,
                    value,
                }),
                None => v.add(
                    "match_phone",
                    "is not a phone number (4 to 15 digits, optional leading +)",
                ),
            }
        }
        finish(v)?;
        let id = event.lead_id;
        self.command(
            context,
            id,
            lead_stream(id),
            None,
            LeadState::apply,
            move |inner, s| {
                let mut event = event.clone();
                match event.customer_id {
                    Some(customer) => {
                        let live = inner.live_customer(customer)?;
                        sales::require("customer", customer, live.is_some())?;
                        event.customer_id = live;
                    }
                    None => {
                        // Duplicate leads resolve to the customer who already holds the email
                        // or phone (email first).
                        for identifier in &wanted {
                            if let Some(holder) = inner.holder(identifier)? {
                                event.customer_id = Some(holder);
                                break;
                            }
                        }
                    }
                }
                if let Some(account) = event.account_id {
                    sales::require("account", account, inner.exists(&account_stream(account))?)?;
                }
                Ok(sales::capture_lead(s, event)?)
            },
        )
        .await
    }

    async fn assign_lead(
        &self,
        request: Request<pb::AssignLeadRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::AssignLeadRequest {
            context,
            assignment,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: LeadAssigned = convert("assignment", assignment, &mut v);
        validate(
            "assignment",
            &DomainEvent::LeadAssigned(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.lead_id;
        self.command(
            context,
            id,
            lead_stream(id),
            expected_revision,
            LeadState::apply,
            move |_, s| Ok(sales::assign_lead(s, event.clone())?),
        )
        .await
    }

    async fn qualify_lead(
        &self,
        request: Request<pb::QualifyLeadRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::QualifyLeadRequest {
            context,
            lead_id,
            customer_id,
            deal,
            expected_revision,
            new_customer,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let lead_id = uuid_field("lead_id", &lead_id, &mut v);
        let customer_id = optional_id("customer_id", &customer_id, &mut v);
        // A re-sent command (same event id) must register the same customer.
        let new_customer_id = context
            .event_id
            .map_or_else(Uuid::now_v7, |e| derived_id(e, usize::MAX));
        let new_customer = new_customer.map(|c| {
            let pb::NewCustomer {
                given_name,
                family_name,
                emails,
                phones,
                locale,
            } = c;
            let identity = CustomerIdentity {
                given_name,
                family_name,
                emails,
                phones,
                ..CustomerIdentity::default()
            };
            let registration = DomainEvent::CustomerRegistered(CustomerRegistered {
                customer_id: new_customer_id,
                identity: Personal::Clear(identity.clone()),
                locale: locale.clone(),
                acquisition_channel: Channel::Unspecified,
            });
            validate("new_customer", &registration, &mut v);
            if let Err(customer::RuleError::InvalidIdentifier { field, reason }) =
                customer::validate_identifiers("", &identity.emails, &identity.phones)
            {
                v.add(&format!("new_customer.{field}"), reason);
            }
            if identity.emails.is_empty() && identity.phones.is_empty() {
                v.add(
                    "new_customer",
                    "needs an email or a phone to match or register",
                );
            }
            (identity, locale)
        });
        let mut deal = deal.unwrap_or_default();
        fill_id(&mut deal.deal_id);
        let opened: DealOpened = convert("deal", Some(deal), &mut v);
        // The deal is validated as it will be written: customer / account / lead are the
        // server's to fill, so they are checked by the rule, not here.
        let mut probe = opened.clone();
        probe.customer_id = probe.customer_id.or(Some(Uuid::max()));
        validate("deal", &DomainEvent::DealOpened(probe), &mut v);
        finish(v)?;
        let deal_id = opened.deal_id;
        let decide: Arc<Decide> = Arc::new(move |inner: &Inner| {
            let stream = lead_stream(lead_id);
            let (lead, revision) = inner.load(&stream, LeadState::apply)?;
            if revision.is_some() {
                check_pinned(&stream, revision, expected_revision)?;
            }
            let mut registration = Vec::new();
            let customer = match (customer_id, &new_customer) {
                (Some(id), _) => {
                    let live = inner.live_customer(id)?;
                    sales::require("customer", id, live.is_some())?;
                    live
                }
                (None, Some((identity, locale))) if lead.customer_id.is_none() => {
                    let (id, appends) =
                        inner.convert_to_customer(new_customer_id, identity, locale)?;
                    registration = appends;
                    Some(id)
                }
                (None, _) => None,
            };
            let mut opened = opened.clone();
            opened.customer_id = None;
            opened.lead_id = None;
            if let Some(account) = opened.account_id {
                sales::require("account", account, inner.exists(&account_stream(account))?)?;
            }
            let (deal, deal_revision) = inner.deal(deal_id)?;
            let pipeline = inner.pipeline(opened.pipeline_id)?;
            let qualified =
                sales::qualify_lead(&lead, lead_id, customer, &deal, &pipeline, opened)?;
            Ok(Plan {
                id: lead_id,
                deal_id: Some(deal_id),
                appends: vec![
                    Planned {
                        stream,
                        expected: expected_of(revision),
                        events: qualified.lead,
                    },
                    Planned {
                        stream: deal_stream(deal_id),
                        expected: expected_of(deal_revision),
                        events: qualified.deal,
                    },
                ]
                .into_iter()
                .chain(registration)
                .collect(),
            })
        });
        self.execute(context, decide).await
    }

    async fn disqualify_lead(
        &self,
        request: Request<pb::DisqualifyLeadRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::DisqualifyLeadRequest {
            context,
            disqualification,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: LeadDisqualified = convert("disqualification", disqualification, &mut v);
        validate(
            "disqualification",
            &DomainEvent::LeadDisqualified(event.clone()),
            &mut v,
        );
        finish(v)?;
        let id = event.lead_id;
        self.command(
            context,
            id,
            lead_stream(id),
            expected_revision,
            LeadState::apply,
            move |_, s| Ok(sales::disqualify_lead(s, event.clone())?),
        )
        .await
    }

    async fn open_deal(
        &self,
        request: Request<pb::OpenDealRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::OpenDealRequest { context, deal } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let mut deal = deal.unwrap_or_default();
        fill_id(&mut deal.deal_id);
        let event: DealOpened = convert("deal", Some(deal), &mut v);
        validate("deal", &DomainEvent::DealOpened(event.clone()), &mut v);
        finish(v)?;
        let id = event.deal_id;
        self.command(
            context,
            id,
            deal_stream(id),
            None,
            DealState::apply,
            move |inner, s| {
                let mut event = event.clone();
                if let Some(customer) = event.customer_id {
                    let live = inner.live_customer(customer)?;
                    sales::require("customer", customer, live.is_some())?;
                    event.customer_id = live;
                }
                if let Some(account) = event.account_id {
                    sales::require("account", account, inner.exists(&account_stream(account))?)?;
                }
                if let Some(lead) = event.lead_id {
                    sales::require("lead", lead, inner.exists(&lead_stream(lead))?)?;
                }
                let pipeline = inner.pipeline(event.pipeline_id)?;
                Ok(sales::open_deal(s, &pipeline, event)?)
            },
        )
        .await
    }

    async fn move_deal_stage(
        &self,
        request: Request<pb::MoveDealStageRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::MoveDealStageRequest {
            context,
            deal_id,
            stage_id,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = uuid_field("deal_id", &deal_id, &mut v);
        validate_code("stage_id", &stage_id, &mut v);
        finish(v)?;
        self.command(
            context,
            id,
            deal_stream(id),
            expected_revision,
            DealState::apply,
            move |inner, s| {
                let pipeline = inner.pipeline(s.pipeline_id)?;
                Ok(sales::move_deal_stage(s, &pipeline, id, &stage_id)?)
            },
        )
        .await
    }

    async fn change_deal(
        &self,
        request: Request<pb::ChangeDealRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::ChangeDealRequest {
            context,
            change,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let event: DealChanged = convert("change", change, &mut v);
        validate("change", &DomainEvent::DealChanged(event.clone()), &mut v);
        finish(v)?;
        let id = event.deal_id;
        self.command(
            context,
            id,
            deal_stream(id),
            expected_revision,
            DealState::apply,
            move |_, s| Ok(sales::change_deal(s, event.clone())?),
        )
        .await
    }

    async fn win_deal(
        &self,
        request: Request<pb::WinDealRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::WinDealRequest {
            context,
            deal_id,
            stage_id,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = uuid_field("deal_id", &deal_id, &mut v);
        let stage = optional_code("stage_id", &stage_id, &mut v);
        finish(v)?;
        self.command(
            context,
            id,
            deal_stream(id),
            expected_revision,
            DealState::apply,
            move |inner, s| {
                let pipeline = inner.pipeline(s.pipeline_id)?;
                Ok(sales::win_deal(s, &pipeline, id, stage.as_deref())?)
            },
        )
        .await
    }

    async fn lose_deal(
        &self,
        request: Request<pb::LoseDealRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::LoseDealRequest {
            context,
            deal_id,
            stage_id,
            reason,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = uuid_field("deal_id", &deal_id, &mut v);
        let stage = optional_code("stage_id", &stage_id, &mut v);
        validate_code("reason", &reason, &mut v);
        finish(v)?;
        self.command(
            context,
            id,
            deal_stream(id),
            expected_revision,
            DealState::apply,
            move |inner, s| {
                let pipeline = inner.pipeline(s.pipeline_id)?;
                Ok(sales::lose_deal(
                    s,
                    &pipeline,
                    id,
                    stage.as_deref(),
                    reason.clone(),
                )?)
            },
        )
        .await
    }

    async fn reopen_deal(
        &self,
        request: Request<pb::ReopenDealRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::ReopenDealRequest {
            context,
            deal_id,
            stage_id,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = uuid_field("deal_id", &deal_id, &mut v);
        let stage = optional_code("stage_id", &stage_id, &mut v);
        finish(v)?;
        self.command(
            context,
            id,
            deal_stream(id),
            expected_revision,
            DealState::apply,
            move |inner, s| {
                let pipeline = inner.pipeline(s.pipeline_id)?;
                Ok(sales::reopen_deal(s, &pipeline, id, stage.as_deref())?)
            },
        )
        .await
    }

    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::CreateTaskRequest { context, task } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let mut task = task.unwrap_or_default();
        fill_id(&mut task.task_id);
        let event: TaskCreated = convert("task", Some(task), &mut v);
        validate("task", &DomainEvent::TaskCreated(event.clone()), &mut v);
        finish(v)?;
        let id = event.task_id;
        self.command(
            context,
            id,
            task_stream(id),
            None,
            TaskState::apply,
            move |inner, s| {
                if let Some(deal) = event.deal_id {
                    sales::require("deal", deal, inner.exists(&deal_stream(deal))?)?;
                }
                if let Some(account) = event.account_id {
                    sales::require("account", account, inner.exists(&account_stream(account))?)?;
                }
                Ok(sales::create_task(s, event.clone())?)
            },
        )
        .await
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::CompleteTaskRequest {
            context,
            task_id,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = uuid_field("task_id", &task_id, &mut v);
        finish(v)?;
        self.command(
            context,
            id,
            task_stream(id),
            expected_revision,
            TaskState::apply,
            move |_, s| Ok(sales::complete_task(s, id)?),
        )
        .await
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::PipelineWriteResponse>, Status> {
        let pb::CancelTaskRequest {
            context,
            task_id,
            expected_revision,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = uuid_field("task_id", &task_id, &mut v);
        finish(v)?;
        self.command(
            context,
            id,
            task_stream(id),
            expected_revision,
            TaskState::apply,
            move |_, s| Ok(sales::cancel_task(s, id)?),
        )
        .await
    }

    async fn get_deal(
        &self,
        request: Request<pb::GetDealRequest>,
    ) -> Result<Response<pb::Deal>, Status> {
        let wait = wait_bound(&request);
        let pb::GetDealRequest {
            deal_id,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let id = uuid_field("deal_id", &deal_id, &mut v);
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        let deal = answer
            .model
            .deals
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("deal {id} does not exist")))?;
        let def = answer
            .model
            .pipelines
            .get(&deal.pipeline_id)
            .map(|p| &p.def);
        Ok(Response::new(cv::deal_to_proto(
            deal,
            def,
            answer.now_us,
            answer.position,
        )))
    }

    async fn list_deals(
        &self,
        request: Request<pb::ListDealsRequest>,
    ) -> Result<Response<pb::ListDealsResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::ListDealsRequest {
            pipeline_id,
            stage_id,
            owner,
            status,
            account_id,
            close_from,
            close_to,
            page_size: size,
            page_token: token,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let filter = queries::DealFilter {
            pipeline_id: optional_id("pipeline_id", &pipeline_id, &mut v),
            stage_id: optional_text(
                "stage_id",
                stage_id,
                limits::PIPELINE_CODE_BYTES_MAX,
                &mut v,
            ),
            owner: optional_text("owner", owner, limits::OWNER_BYTES_MAX, &mut v),
            status: cv::deal_status_from("status", status, &mut v),
            account_id: optional_id("account_id", &account_id, &mut v),
            close_from: optional_date("close_from", &close_from, &mut v),
            close_to: optional_date("close_to", &close_to, &mut v),
        };
        let limit = page_size(size, &mut v);
        let after = page_token(&token, &mut v);
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        let model = &answer.model;
        let (deals, next) = queries::page(model.deals.iter(), after, limit, |d| filter.matches(d));
        Ok(Response::new(pb::ListDealsResponse {
            deals: deals
                .into_iter()
                .map(|d| {
                    let def = model.pipelines.get(&d.pipeline_id).map(|p| &p.def);
                    cv::deal_to_proto(d, def, answer.now_us, answer.position)
                })
                .collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
            as_of_position: answer.position,
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let wait = wait_bound(&request);
        let pb::GetAccountRequest {
            account_id,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let id = uuid_field("account_id", &account_id, &mut v);
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        let model = &answer.model;
        let summary = queries::account(model, id)
            .ok_or_else(|| Status::not_found(format!("account {id} does not exist")))?;
        let defs = |pipeline: Uuid| model.pipelines.get(&pipeline).map(|p| p.def.clone());
        Ok(Response::new(cv::account_to_proto(
            summary,
            &defs,
            answer.now_us,
            answer.position,
        )))
    }

    async fn list_leads(
        &self,
        request: Request<pb::ListLeadsRequest>,
    ) -> Result<Response<pb::ListLeadsResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::ListLeadsRequest {
            status,
            source,
            owner,
            campaign_id,
            page_size: size,
            page_token: token,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let filter = queries::LeadFilter {
            status: cv::lead_status_from("status", status, &mut v),
            source: cv::lead_source_filter("source", source, &mut v),
            owner: optional_text("owner", owner, limits::OWNER_BYTES_MAX, &mut v),
            campaign_id: optional_text("campaign_id", campaign_id, limits::FIELD_BYTES_MAX, &mut v),
        };
        let limit = page_size(size, &mut v);
        let after = page_token(&token, &mut v);
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        let (leads, next) = queries::page(answer.model.leads.iter(), after, limit, |l| {
            filter.matches(l)
        });
        Ok(Response::new(pb::ListLeadsResponse {
            leads: leads.into_iter().map(cv::lead_to_proto).collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
            as_of_position: answer.position,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::ListTasksRequest {
            assignee,
            status,
            overdue_only,
            overdue_at,
            deal_id,
            account_id,
            page_size: size,
            page_token: token,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let overdue_at = overdue_at.and_then(|ts| timestamp_to_us("overdue_at", &ts, &mut v));
        let mut filter = queries::TaskFilter {
            assignee: optional_text("assignee", assignee, limits::OWNER_BYTES_MAX, &mut v),
            status: cv::task_status_from("status", status, &mut v),
            overdue_at_us: None,
            deal_id: optional_id("deal_id", &deal_id, &mut v),
            account_id: optional_id("account_id", &account_id, &mut v),
        };
        let limit = page_size(size, &mut v);
        let after = page_token(&token, &mut v);
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        let cutoff = overdue_at.unwrap_or(answer.now_us);
        if overdue_only {
            filter.overdue_at_us = Some(cutoff);
        }
        let (tasks, next) = queries::page(answer.model.tasks.iter(), after, limit, |t| {
            filter.matches(t)
        });
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks
                .into_iter()
                .map(|t| cv::task_to_proto(t, cutoff))
                .collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
            as_of_position: answer.position,
        }))
    }

    async fn get_pipeline_board(
        &self,
        request: Request<pb::GetPipelineBoardRequest>,
    ) -> Result<Response<pb::PipelineBoard>, Status> {
        let wait = wait_bound(&request);
        let pb::GetPipelineBoardRequest {
            pipeline_id,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let id = uuid_field("pipeline_id", &pipeline_id, &mut v);
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        let board = queries::board(&answer.model, id)
            .ok_or_else(|| Status::not_found(format!("pipeline {id} does not exist")))?;
        Ok(Response::new(cv::board_to_proto(board, answer.position)))
    }

    async fn get_forecast(
        &self,
        request: Request<pb::GetForecastRequest>,
    ) -> Result<Response<pb::Forecast>, Status> {
        let wait = wait_bound(&request);
        let pb::GetForecastRequest {
            pipeline_id,
            close_from,
            close_to,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let query = queries::ForecastQuery {
            pipeline_id: optional_id("pipeline_id", &pipeline_id, &mut v),
            close_from: optional_date("close_from", &close_from, &mut v),
            close_to: optional_date("close_to", &close_to, &mut v),
        };
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        if let Some(pipeline) = query.pipeline_id
            && !answer.model.pipelines.contains_key(&pipeline)
        {
            return Err(Status::not_found(format!(
                "pipeline {pipeline} does not exist"
            )));
        }
        let (months, quarters) = queries::forecast(&answer.model, &query);
        Ok(Response::new(pb::Forecast {
            months: cv::forecast_rows_to(months),
            quarters: cv::forecast_rows_to(quarters),
            as_of_position: answer.position,
        }))
    }

    async fn get_pipeline_metrics(
        &self,
        request: Request<pb::GetPipelineMetricsRequest>,
    ) -> Result<Response<pb::PipelineMetrics>, Status> {
        let wait = wait_bound(&request);
        let pb::GetPipelineMetricsRequest {
            pipeline_id,
            period_start,
            period_end,
            min_position,
            as_of,
        } = request.into_inner();
        let mut v = Violations::new("");
        let pipeline_id = optional_id("pipeline_id", &pipeline_id, &mut v);
        let mut time = |field: &str, ts: Option<prost_types::Timestamp>| match ts {
            Some(ts) => timestamp_to_us(field, &ts, &mut v),
            None => {
                v.add(field, "is required");
                None
            }
        };
        let from = time("period_start", period_start);
        let to = time("period_end", period_end);
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            v.add("period_end", "must be after period_start");
        }
        let bound = as_of_from(as_of, &mut v);
        finish(v)?;
        let answer = self.answer(min_position, bound, wait).await?;
        if let Some(pipeline) = pipeline_id
            && !answer.model.pipelines.contains_key(&pipeline)
        {
            return Err(Status::not_found(format!(
                "pipeline {pipeline} does not exist"
            )));
        }
        let metrics = queries::metrics(
            &answer.model,
            &queries::MetricsQuery {
                pipeline_id,
                from_us: from.unwrap_or_default(),
                to_us: to.unwrap_or_default(),
            },
        );
        Ok(Response::new(cv::metrics_to_proto(
            metrics,
            answer.position,
        )))
    }
}
