//! The `rapport.v1.Customers` service: the customer 360 over the log.
//!
//! Writes: convert and validate → load the customer's stream (following merges) →
//! a pure decision of [`crate::domain::customer`] → seal personal parts → one atomic
//! multi-stream append with the revisions read (the customer's stream plus the
//! `identity-*` reservations of emails, phones and external ids). A concurrent write
//! makes the append fail its expected revision; the whole command is then decided again
//! on the new state (bounded). Re-sending a command with the same `event_id` returns the
//! original position before anything is re-decided.
//!
//! Reads: profiles come from the `customers` projection (waiting for `min_position`),
//! timelines and as-of answers from the log itself, folded with the projection's code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{
    address_from, address_to, channel_from, channel_to, consent_purpose_from, consent_purpose_to,
    direction_from, direction_to, feedback_metric_from, field_value_from, field_value_to,
    kind_from, kind_to, purchase_lines_from, recorded_event, refund_lines_from, timestamp_from_us,
    timestamp_to_us, uuid_field,
};
use super::pb;
use super::status::{invalid_argument, invalid_field};
use crate::domain::common::{Channel, ConsentPurpose};
use crate::domain::customer::{self, Customer, Identifier, RuleError};
use crate::domain::events::{
    ConsentGiven, ConsentWithdrawn, ContactDetails, ContactDetailsChanged, CustomFieldSet,
    CustomFieldValue, CustomerErased, CustomerIdentity, CustomerRegistered, FeedbackGiven,
    FeedbackMetric, IdentifierClaimed, IdentifierReleased, InteractionLogged, InteractionText,
    PreferenceCleared, PreferenceSet, PurchaseCompleted, PurchaseRefunded, TagAdded, TagRemoved,
};
use crate::domain::personal::Personal;
use crate::domain::profile::{self, Profile, ProfileStatus, StoredField, customer_stream};
use crate::domain::{DomainEvent, Violations};
use crate::limits;
use crate::log::{
    AppendError, ExpectedRevision, Log, LoggedEvent, ProposedEvent, StreamAppend, StreamName,
};
use crate::privacy::{PersonalState, Privacy};
use crate::projections::Projections;
use crate::projections::customers::{self as read_model, HistoryError};

/// The Customers service.
#[derive(Clone)]
pub struct CustomersService {
    inner: Arc<Inner>,
}

struct Inner {
    log: Log,
    privacy: Privacy,
    projections: Projections,
}

impl CustomersService {
    /// A service over the log, the key store and the running projections.
    pub fn new(log: Log, privacy: Privacy, projections: Projections) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                privacy,
                projections,
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

// ---------------------------------------------------------------------------------------
// Loading state from the log
// ---------------------------------------------------------------------------------------

fn read_stream_all(log: &Log, stream: &str) -> Result<Vec<LoggedEvent>, Status> {
    read_model::read_stream_all(log, stream).map_err(history_status)
}

fn decode(logged: &LoggedEvent) -> Result<DomainEvent, Status> {
    read_model::decode_event(logged).map_err(history_status)
}

fn history_up_to(
    log: &Log,
    id: Uuid,
    include: &dyn Fn(&LoggedEvent) -> bool,
    every_merge: bool,
) -> Result<Vec<(LoggedEvent, DomainEvent)>, Status> {
    read_model::history(log, id, include, every_merge).map_err(history_status)
}

fn fold_as_of(
    log: &Log,
    id: Uuid,
    include: &dyn Fn(&LoggedEvent) -> bool,
) -> Result<Option<(Profile, u64)>, Status> {
    read_model::fold_as_of(log, id, include).map_err(history_status)
}

fn history_status(error: HistoryError) -> Status {
    match error {
        HistoryError::Read(error) => error.into(),
        HistoryError::TooLong(message) => Status::resource_exhausted(message),
        HistoryError::Decode(message) => internal(message),
    }
}

/// A customer's decision state with the revision it was read at.
struct Loaded {
    id: Uuid,
    state: Customer,
    revision: Option<u64>,
}

impl Inner {
    /// Folds `customer-<id>` (personal parts opened where the rules need them).
    fn load(&self, id: Uuid) -> Result<Loaded, Status> {
        let stream = customer_stream(id);
        let mut state = Customer::default();
        let mut revision = None;
        for logged in read_stream_all(&self.log, &stream)? {
            let mut event = decode(&logged)?;
            if matches!(
                event,
                DomainEvent::CustomerRegistered(_) | DomainEvent::ContactDetailsChanged(_)
            ) {
                self.privacy
                    .open_event(&stream, logged.event.id(), &mut event);
            }
            state.apply(id, &event);
            revision = Some(logged.event.revision);
        }
        Ok(Loaded {
            id,
            state,
            revision,
        })
    }

    /// Loads `id`, following merges to the live survivor.
    fn load_resolved(&self, id: Uuid) -> Result<Loaded, Status> {
        let mut loaded = self.load(id)?;
        for _ in 0..limits::MERGE_DEPTH_MAX {
            match loaded.state.merged_into {
                Some(into) => loaded = self.load(into)?,
                None => return Ok(loaded),
            }
        }
        Err(internal(format!("merge chain from {id} is too long")))
    }

    /// The live customer holding a reservation stream's identifier, and the stream's
    /// revision. Erased holders hold nothing; merged ones resolve to their survivor.
    fn holder(&self, stream: &str) -> Result<(Option<Uuid>, Option<u64>), Status> {
        self.holder_at(stream)
            .map(|(holder, revision, _)| (holder, revision))
    }

    /// [`Inner::holder`], with the log position of the stream's last event.
    fn holder_at(&self, stream: &str) -> Result<(Option<Uuid>, Option<u64>, u64), Status> {
        let name = StreamName::parse(stream).map_err(|e| internal(e.to_string()))?;
        let page = match self.log.read_stream(&name, 0, true, 1) {
            Ok(page) => page,
            Err(crate::log::ReadError::StreamNotFound(_)) => return Ok((None, None, 0)),
            Err(error) => return Err(error.into()),
        };
        let Some(last) = page.events.first() else {
            return Ok((None, None, 0));
        };
        let (revision, position) = (Some(last.event.revision), last.event.position);
        let DomainEvent::IdentifierClaimed(IdentifierClaimed { customer_id, .. }) = decode(last)?
        else {
            return Ok((None, revision, position));
        };
        let holder = self.load_resolved(customer_id)?;
        if holder.state.erased || self.privacy.keys().is_erased(holder.id) {
            return Ok((None, revision, position));
        }
        Ok((Some(holder.id), revision, position))
    }

    /// Plans the reservation appends for `me` claiming `claim` and releasing `release`,
    /// refusing an identifier held by another live customer.
    fn plan_identifiers(
        &self,
        me: &Loaded,
        claim: &[Identifier],
        release: &[Identifier],
    ) -> Result<Vec<Planned>, Status> {
        let mut planned = Vec::new();
        let mut holders = BTreeMap::new();
        let mut revisions = BTreeMap::new();
        for identifier in claim {
            let stream = self.privacy.identity_stream(identifier);
            let (holder, revision) = self.holder(&stream)?;
            if let Some(holder) = holder {
                holders.insert(identifier.clone(), holder);
            }
            revisions.insert(identifier.clone(), (stream, revision, holder));
        }
        customer::check_identifiers(me.id, claim, &holders, &me.state.merged_from)
            .map_err(Status::from)?;
        for identifier in claim {
            let (stream, revision, holder) = revisions.remove(identifier).expect("read above");
            if holder.is_some() {
                continue; // Already ours (or a duplicate's merged into us).
            }
            planned.push(Planned {
                stream,
                expected: revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
                events: vec![DomainEvent::IdentifierClaimed(IdentifierClaimed {
                    customer_id: me.id,
                    kind: identifier.kind,
                })],
            });
        }
        for identifier in release {
            let stream = self.privacy.identity_stream(identifier);
            let (holder, revision) = self.holder(&stream)?;
            if let (Some(holder), Some(revision)) = (holder, revision)
                && holder == me.id
            {
                planned.push(Planned {
                    stream,
                    expected: ExpectedRevision::Exact(revision),
                    events: vec![DomainEvent::IdentifierReleased(IdentifierReleased {
                        customer_id: me.id,
                        kind: identifier.kind,
                    })],
                });
            }
        }
        Ok(planned)
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

/// What a command decided: the customer written to and the appends (the answer is the
/// last position written and the customer stream's revision).
struct Plan {
    customer: Uuid,
    appends: Vec<Planned>,
}

impl Plan {
    fn one(loaded: &Loaded, events: Vec<DomainEvent>) -> Self {
        Self {
            customer: loaded.id,
            appends: vec![Planned {
                stream: customer_stream(loaded.id),
                expected: loaded
                    .revision
                    .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
                events,
            }],
        }
    }
}

/// The envelope fields of a write.
pub(crate) struct Context {
    pub(crate) event_id: Option<Uuid>,
    pub(crate) occurred_at_us: Option<i64>,
    pub(crate) actor: String,
    pub(crate) correlation_id: String,
    pub(crate) causation_id: String,
    pub(crate) source_channel: String,
}

pub(crate) fn context_from(context: Option<pb::WriteContext>, v: &mut Violations) -> Context {
    let pb::WriteContext {
        event_id,
        occurred_at,
        actor,
        correlation_id,
        causation_id,
        source_channel,
    } = context.unwrap_or_default();
    let event_id = if event_id.is_empty() {
        None
    } else {
        Some(uuid_field("context.event_id", &event_id, v)).filter(|id| !id.is_nil())
    };
    let occurred_at_us = occurred_at.and_then(|ts| timestamp_to_us("context.occurred_at", &ts, v));
    for (name, value) in [
        ("context.actor", &actor),
        ("context.correlation_id", &correlation_id),
        ("context.causation_id", &causation_id),
        ("context.source_channel", &source_channel),
    ] {
        v.max_len(name, value, limits::ENVELOPE_STRING_BYTES_MAX);
    }
    Context {
        event_id,
        occurred_at_us,
        actor,
        correlation_id,
        causation_id,
        source_channel,
    }
}

/// Event ids of a command's events after the first: derived from the first, so a
/// re-sent command makes the same ids (BLAKE3 of the first id and the index, as a
/// version-8 UUID).
pub(crate) fn derived_id(base: Uuid, index: usize) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(base.as_bytes());
    hasher.update(&(index as u64).to_be_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Strips the event-name prefix from a validation path so it names the request field
/// (`tag_added.tag` → `tag`).
fn request_violations(event: &DomainEvent, v: &mut Violations) {
    if let Err(found) = event.validate("") {
        for violation in found {
            let field = violation
                .field
                .split_once('.')
                .map_or(violation.field.as_str(), |(_, rest)| rest)
                .to_owned();
            v.add(&field, violation.description);
        }
    }
}

impl CustomersService {
    /// A fact about an existing customer (preference, consent, tag, custom field,
    /// interaction, feedback): `convert` turns the request's own fields into the event
    /// builder, reporting problems into the violations; the event is then validated and
    /// recorded on the customer the id resolves to.
    async fn record_fact<B>(
        &self,
        customer_id: &str,
        context: Option<pb::WriteContext>,
        convert: impl FnOnce(&mut Violations) -> B,
    ) -> Result<Response<pb::WriteResponse>, Status>
    where
        B: Fn(Uuid) -> DomainEvent + Send + Sync + 'static,
    {
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = customer_id_field("customer_id", customer_id, &mut v);
        let build = convert(&mut v);
        request_violations(&build(id), &mut v);
        finish(v)?;
        self.execute(context, fact(id, build)).await
    }

    /// Runs a command: idempotency by event id, decide (in a blocking task), seal,
    /// append; re-decides on a concurrency conflict.
    async fn execute<F>(
        &self,
        context: Context,
        decide: F,
    ) -> Result<Response<pb::WriteResponse>, Status>
    where
        F: Fn(&Inner) -> Result<Plan, Status> + Send + Sync + 'static,
    {
        let base_id = context.event_id.unwrap_or_else(Uuid::now_v7);
        let decide = Arc::new(decide);
        for _ in 0..limits::WRITE_RETRIES_MAX {
            let inner = self.inner.clone();
            if context.event_id.is_some() {
                let found =
                    blocking(move || inner.log.event_by_id(base_id).map_err(Status::from)).await?;
                if let Some(found) = found {
                    return Ok(Response::new(written(&found)));
                }
            }
            let inner = self.inner.clone();
            let decide = decide.clone();
            let fields = context_ref(&context);
            let (plan, appends) = blocking(move || {
                let plan = decide(&inner)?;
                let appends = seal_and_encode(&inner.privacy, &plan, base_id, &fields)?;
                Ok((plan, appends))
            })
            .await?;
            match self.inner.log.append_multi(appends).await {
                Ok(outcomes) => {
                    let own = customer_stream(plan.customer);
                    let revision = plan
                        .appends
                        .iter()
                        .zip(&outcomes)
                        .find(|(planned, _)| planned.stream == own)
                        .map_or(0, |(_, outcome)| outcome.last_revision);
                    let position = outcomes.iter().map(|o| o.last_position).max().unwrap_or(0);
                    return Ok(Response::new(pb::WriteResponse {
                        position,
                        customer_id: plan.customer.to_string(),
                        revision,
                    }));
                }
                Err(AppendError::WrongExpectedRevision { .. }) => continue,
                Err(AppendError::EventIdConflict { .. }) if context.event_id.is_some() => {
                    // Raced with our own re-sent command: answer from the log.
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(
            "the customer changed concurrently too many times; retry the command",
        ))
    }
}

/// The envelope fields, cloned for a blocking task.
#[derive(Clone)]
pub(crate) struct ContextFields {
    pub(crate) occurred_at_us: Option<i64>,
    pub(crate) actor: String,
    pub(crate) correlation_id: String,
    pub(crate) causation_id: String,
    pub(crate) source_channel: String,
}

/// The envelope fields of `context`, for a blocking task.
pub(crate) fn context_ref(context: &Context) -> ContextFields {
    ContextFields {
        occurred_at_us: context.occurred_at_us,
        actor: context.actor.clone(),
        correlation_id: context.correlation_id.clone(),
        causation_id: context.causation_id.clone(),
        source_channel: context.source_channel.clone(),
    }
}

fn written(found: &LoggedEvent) -> pb::WriteResponse {
    pb::WriteResponse {
        position: found.event.position,
        customer_id: profile::customer_of_stream(&found.event.stream)
            .map(|id| id.to_string())
            .unwrap_or_default(),
        revision: found.event.revision,
    }
}

/// One stream's events with their ids, before sealing.
type Staged = (String, ExpectedRevision, Vec<(Uuid, DomainEvent)>);

fn seal_and_encode(
    privacy: &Privacy,
    plan: &Plan,
    base_id: Uuid,
    context: &ContextFields,
) -> Result<Vec<StreamAppend>, Status> {
    seal_and_encode_streams(
        privacy,
        plan.appends
            .iter()
            .map(|p| (p.stream.as_str(), p.expected, p.events.as_slice())),
        base_id,
        context,
    )
}

/// A command's appends made ready for the log, for every service that writes customer
/// data: the events get their ids (the first the command's `base_id`, the others derived
/// from it, so a re-sent command makes the same ids), personal parts are sealed with
/// their owners' keys, and each event is encoded within the payload limit with the
/// command's envelope fields.
pub(crate) fn seal_and_encode_streams<'a>(
    privacy: &Privacy,
    appends: impl IntoIterator<Item = (&'a str, ExpectedRevision, &'a [DomainEvent])>,
    base_id: Uuid,
    context: &ContextFields,
) -> Result<Vec<StreamAppend>, Status> {
    let mut index = 0usize;
    let mut staged: Vec<Staged> = Vec::new();
    for (stream, expected, planned) in appends {
        let mut events = Vec::new();
        for event in planned {
            let id = if index == 0 {
                base_id
            } else {
                derived_id(base_id, index)
            };
            index += 1;
            events.push((id, event.clone()));
        }
        staged.push((stream.to_owned(), expected, events));
    }
    {
        let mut refs: Vec<(&str, Uuid, &mut DomainEvent)> = Vec::new();
        for (stream, _, events) in &mut staged {
            for (id, event) in events.iter_mut() {
                refs.push((stream.as_str(), *id, event));
            }
        }
        privacy.seal_events(&mut refs)?;
    }
    staged
        .into_iter()
        .map(|(stream, expected, events)| {
            let stream = StreamName::parse(&stream).map_err(|e| internal(e.to_string()))?;
            let events = events
                .into_iter()
                .map(|(id, event)| {
                    let payload = event.encode().map_err(internal)?;
                    if payload.len() > limits::PAYLOAD_BYTES_MAX {
                        return Err(invalid_field(
                            "",
                            format!(
                                "the event is {} bytes encoded; the limit is {}",
                                payload.len(),
                                limits::PAYLOAD_BYTES_MAX
                            ),
                        ));
                    }
                    Ok(ProposedEvent {
                        event_id: Some(id),
                        event_type: event.event_type().to_owned(),
                        schema_version: event.schema_version(),
                        payload,
                        occurred_at_us: context.occurred_at_us,
                        metadata: Vec::new(),
                        correlation_id: context.correlation_id.clone(),
                        causation_id: context.causation_id.clone(),
                        actor: context.actor.clone(),
                        source_channel: context.source_channel.clone(),
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            Ok(StreamAppend {
                stream,
                expected,
                events,
            })
        })
        .collect()
}

/// A command on one existing customer that records one event built from its resolved id.
fn fact(
    id: Uuid,
    build: impl Fn(Uuid) -> DomainEvent + Send + Sync + 'static,
) -> impl Fn(&Inner) -> Result<Plan, Status> + Send + Sync + 'static {
    move |inner: &Inner| {
        let loaded = inner.load_resolved(id)?;
        let events = customer::record(&loaded.state, loaded.id, build(loaded.id))?;
        Ok(Plan::one(&loaded, events))
    }
}

fn customer_id_field(field: &str, text: &str, v: &mut Violations) -> Uuid {
    uuid_field(field, text, v)
}

fn finish(v: Violations) -> Result<(), Status> {
    v.into_result().map_err(invalid_argument)
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

/// How long a read may wait for its `min_position` ([`super::deadline::wait_budget`]
/// with the read bound).
pub(crate) fn wait_bound<T>(request: &Request<T>) -> Duration {
    super::deadline::wait_budget(
        request.metadata(),
        Duration::from_millis(limits::READ_WAIT_MS_MAX),
    )
}

impl CustomersService {
    async fn view(
        &self,
        min_position: u64,
        wait: Duration,
    ) -> Result<crate::projections::ProjectionView, Status> {
        self.inner
            .projections
            .wait_for(read_model::NAME, min_position, wait)
            .await
            .map_err(Status::from)
    }
}

/// Opens a profile into the wire form. `as_of_position` is the position it reflects.
fn customer_to_proto(privacy: &Privacy, profile: &Profile, as_of_position: u64) -> pb::Customer {
    let mut out = pb::Customer {
        customer_id: profile.customer_id.to_string(),
        status: match profile.status {
            ProfileStatus::Erased => pb::CustomerStatus::Erased,
            _ => pb::CustomerStatus::Active,
        } as i32,
        locale: profile.locale.clone(),
        acquisition_channel: channel_to(profile.acquisition_channel),
        registered_at: profile.registered.map(|(at, _)| timestamp_from_us(at)),
        preferences: profile.preferences.clone().into_iter().collect(),
        tags: profile.tags.iter().cloned().collect(),
        merged_ids: profile.merged_ids.iter().map(Uuid::to_string).collect(),
        first_activity_at: profile.first_activity_us.map(timestamp_from_us),
        last_activity_at: profile.last_activity_us.map(timestamp_from_us),
        channels: profile.channels.iter().map(|c| channel_to(*c)).collect(),
        events: profile.events,
        last_position: profile.last_position,
        as_of_position,
        ..Default::default()
    };
    // Personal parts: opened when the key exists, else the erased marker.
    let mut state = PersonalState::None;
    let mut mark = |opened: bool| {
        state = match (state, opened) {
            (PersonalState::Erased, _) | (_, false) => PersonalState::Erased,
            _ => PersonalState::Clear,
        };
    };
    if profile.status == ProfileStatus::Erased {
        mark(false);
    }
    if let Some(sealed) = &profile.identity {
        match privacy.open_ref::<CustomerIdentity>(sealed) {
            Some(identity) => {
                mark(true);
                out.given_name = identity.given_name;
                out.family_name = identity.family_name;
                out.emails = identity.emails;
                out.phones = identity.phones;
                out.birth_date = identity
                    .birth_date
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                out.address = address_to(identity.address);
                out.external_ids = identity.external_ids.into_iter().collect();
            }
            None => mark(false),
        }
    }
    if let Some(sealed) = &profile.contact {
        match privacy.open_ref::<ContactDetails>(sealed) {
            Some(details) => {
                mark(true);
                out.emails = details.emails;
                out.phones = details.phones;
                out.address = address_to(details.address);
            }
            None => mark(false),
        }
    }
    out.consents = profile
        .consents
        .iter()
        .filter_map(|(purpose, history)| {
            let current = profile.consent(*purpose)?;
            Some(pb::Consent {
                purpose: consent_purpose_to(*purpose),
                granted: current.granted,
                source: current.source.clone(),
                changed_at: Some(timestamp_from_us(current.at_us)),
                history: history
                    .iter()
                    .map(|c| pb::ConsentChange {
                        granted: c.granted,
                        source: c.source.clone(),
                        occurred_at: Some(timestamp_from_us(c.at_us)),
                        position: c.position,
                    })
                    .collect(),
            })
        })
        .collect();
    for (key, field) in &profile.custom_fields {
        let value = match field {
            StoredField::Plain(value) => pb::CustomField {
                value: Some(field_value_to(value.clone())),
                personal: false,
                erased: false,
            },
            StoredField::Sealed(sealed) => match privacy.open_ref(sealed) {
                Some(value) => {
                    mark(true);
                    pb::CustomField {
                        value: Some(field_value_to(value)),
                        personal: true,
                        erased: false,
                    }
                }
                None => {
                    mark(false);
                    pb::CustomField {
                        value: None,
                        personal: true,
                        erased: true,
                    }
                }
            },
            StoredField::Erased => {
                mark(false);
                pb::CustomField {
                    value: None,
                    personal: true,
                    erased: true,
                }
            }
        };
        out.custom_fields.insert(key.clone(), value);
    }
    let p = &profile.purchases;
    let mut top: Vec<(&String, &u64)> = p.category_units.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    out.purchases = Some(pb::PurchaseSummary {
        orders: p.orders,
        units: p.units,
        totals: p
            .by_currency
            .iter()
            .map(|(currency, t)| pb::CurrencyTotals {
                currency: currency.clone(),
                orders: t.orders,
                spent_minor: t.spent_minor,
                refunded_minor: t.refunded_minor,
                net_minor: t.spent_minor - t.refunded_minor,
                average_order_minor: if t.orders == 0 {
                    0
                } else {
                    t.spent_minor.div_euclid(t.orders as i64)
                },
            })
            .collect(),
        first_purchase_at: p.first_at_us.map(timestamp_from_us),
        last_purchase_at: p.last_at_us.map(timestamp_from_us),
        top_categories: top
            .into_iter()
            .take(limits::TOP_CATEGORIES_MAX)
            .map(|(category, units)| pb::CategoryUnits {
                category: category.clone(),
                units: *units,
            })
            .collect(),
        refunds: p.refunds,
    });
    let i = &profile.interactions;
    let last = i.last.as_ref().map(|last| {
        let text = last
            .text
            .as_ref()
            .and_then(|sealed| privacy.open_ref::<InteractionText>(sealed));
        mark(text.is_some() || last.text.is_none() && profile.status != ProfileStatus::Erased);
        let text = text.unwrap_or_default();
        pb::LastInteraction {
            occurred_at: Some(timestamp_from_us(last.at_us)),
            channel: channel_to(last.channel),
            direction: direction_to(last.direction),
            kind: kind_to(last.kind),
            subject: text.subject,
            summary: text.summary,
            agent: last.agent.clone(),
            position: last.position,
        }
    });
    out.interactions = Some(pb::InteractionSummary {
        total: i.total,
        by_channel: i
            .by_channel
            .iter()
            .map(|(channel, count)| pb::ChannelCount {
                channel: channel_to(*channel),
                count: *count,
            })
            .collect(),
        last,
    });
    let score = |metric: FeedbackMetric| {
        profile.feedback.get(&metric).map(|s| pb::ScoreSummary {
            count: s.count,
            sum: s.sum,
            average_milli: (s.sum * 1000).checked_div(s.count).unwrap_or(0),
            latest: s.latest.map_or(0, |(score, _, _)| u32::from(score)),
            latest_at: s.latest.map(|(_, at, _)| timestamp_from_us(at)),
        })
    };
    out.nps = score(FeedbackMetric::Nps);
    out.csat = score(FeedbackMetric::Csat);
    out.personal_data = match state {
        PersonalState::None => pb::PersonalData::Unspecified,
        PersonalState::Clear => pb::PersonalData::Clear,
        PersonalState::Erased => pb::PersonalData::Erased,
    } as i32;
    if state == PersonalState::Erased {
        // Never show a half-opened profile: once anything is erased, nothing personal is.
        out.given_name.clear();
        out.family_name.clear();
        out.emails.clear();
        out.phones.clear();
        out.birth_date.clear();
        out.address = None;
        out.external_ids.clear();
        if let Some(interactions) = &mut out.interactions
            && let Some(last) = &mut interactions.last
        {
            last.subject.clear();
            last.summary.clear();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------

#[tonic::async_trait]
impl pb::customers_server::Customers for CustomersService {
    async fn register_customer(
        &self,
        request: Request<pb::RegisterCustomerRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::RegisterCustomerRequest {
            customer_id,
            given_name,
            family_name,
            emails,
            phones,
            birth_date,
            address,
            locale,
            external_ids,
            acquisition_channel,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = if customer_id.is_empty() {
            // A re-sent registration with an event id must land on the same customer.
            context
                .event_id
                .map_or_else(Uuid::now_v7, |e| derived_id(e, usize::MAX))
        } else {
            customer_id_field("customer_id", &customer_id, &mut v)
        };
        let birth_date = if birth_date.is_empty() {
            None
        } else {
            let parsed = crate::domain::common::CalendarDate::parse(&birth_date);
            if parsed.is_none() {
                v.add("birth_date", "must be a date YYYY-MM-DD");
            }
            parsed
        };
        let event = CustomerRegistered {
            customer_id: id,
            identity: Personal::Clear(CustomerIdentity {
                given_name,
                family_name,
                emails,
                phones,
                birth_date,
                address: address_from(address),
                external_ids: external_ids.into_iter().collect(),
            }),
            locale,
            acquisition_channel: channel_from("acquisition_channel", acquisition_channel, &mut v),
        };
        request_violations(&DomainEvent::CustomerRegistered(event.clone()), &mut v);
        finish(v)?;
        self.execute(context, move |inner| {
            let loaded = inner.load(id)?;
            let wanted = match &event.identity {
                Personal::Clear(identity) => customer::identity_identifiers(identity),
                _ => Vec::new(),
            };
            let events = customer::register(&loaded.state, event.clone())?;
            let mut plan = Plan::one(&loaded, events);
            plan.appends
                .extend(inner.plan_identifiers(&loaded, &wanted, &[])?);
            Ok(plan)
        })
        .await
    }

    async fn update_contact_details(
        &self,
        request: Request<pb::UpdateContactDetailsRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::UpdateContactDetailsRequest {
            customer_id,
            emails,
            phones,
            address,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        let details = ContactDetails {
            emails,
            phones,
            address: address_from(address),
        };
        request_violations(
            &DomainEvent::ContactDetailsChanged(ContactDetailsChanged {
                customer_id: id,
                details: Personal::Clear(details.clone()),
            }),
            &mut v,
        );
        finish(v)?;
        self.execute(context, move |inner| {
            let loaded = inner.load_resolved(id)?;
            let event = DomainEvent::ContactDetailsChanged(ContactDetailsChanged {
                customer_id: loaded.id,
                details: Personal::Clear(details.clone()),
            });
            let events = customer::record(&loaded.state, loaded.id, event)?;
            let wanted = customer::contact_identifiers(&details);
            let held: Vec<Identifier> = loaded
                .state
                .identifiers
                .iter()
                .filter(|i| i.kind != crate::domain::events::IdentifierKind::ExternalId)
                .cloned()
                .collect();
            let claim: Vec<Identifier> = wanted
                .iter()
                .filter(|i| !held.contains(i))
                .cloned()
                .collect();
            let release: Vec<Identifier> = held
                .iter()
                .filter(|i| !wanted.contains(i))
                .cloned()
                .collect();
            let mut plan = Plan::one(&loaded, events);
            plan.appends
                .extend(inner.plan_identifiers(&loaded, &claim, &release)?);
            Ok(plan)
        })
        .await
    }

    async fn set_preference(
        &self,
        request: Request<pb::SetPreferenceRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::SetPreferenceRequest {
            customer_id,
            key,
            value,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |_| {
            move |id| {
                DomainEvent::PreferenceSet(PreferenceSet {
                    customer_id: id,
                    key: key.clone(),
                    value: value.clone(),
                })
            }
        })
        .await
    }

    async fn clear_preference(
        &self,
        request: Request<pb::ClearPreferenceRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::ClearPreferenceRequest {
            customer_id,
            key,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |_| {
            move |id| {
                DomainEvent::PreferenceCleared(PreferenceCleared {
                    customer_id: id,
                    key: key.clone(),
                })
            }
        })
        .await
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::RecordConsentRequest {
            customer_id,
            purpose,
            granted,
            source,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |v| {
            let purpose = consent_purpose_from("purpose", purpose, v);
            move |id| {
                if granted {
                    DomainEvent::ConsentGiven(ConsentGiven {
                        customer_id: id,
                        purpose,
                        source: source.clone(),
                    })
                } else {
                    DomainEvent::ConsentWithdrawn(ConsentWithdrawn {
                        customer_id: id,
                        purpose,
                        source: source.clone(),
                    })
                }
            }
        })
        .await
    }

    async fn add_tag(
        &self,
        request: Request<pb::AddTagRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::AddTagRequest {
            customer_id,
            tag,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |_| {
            move |id| {
                DomainEvent::TagAdded(TagAdded {
                    customer_id: id,
                    tag: tag.clone(),
                })
            }
        })
        .await
    }

    async fn remove_tag(
        &self,
        request: Request<pb::RemoveTagRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::RemoveTagRequest {
            customer_id,
            tag,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |_| {
            move |id| {
                DomainEvent::TagRemoved(TagRemoved {
                    customer_id: id,
                    tag: tag.clone(),
                })
            }
        })
        .await
    }

    async fn set_custom_field(
        &self,
        request: Request<pb::SetCustomFieldRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::SetCustomFieldRequest {
            customer_id,
            key,
            value,
            personal,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |v| {
            let value = field_value_from("value", value, v);
            move |id| {
                DomainEvent::CustomFieldSet(CustomFieldSet {
                    customer_id: id,
                    key: key.clone(),
                    value: if personal {
                        CustomFieldValue::Personal(Personal::Clear(value.clone()))
                    } else {
                        CustomFieldValue::Plain(value.clone())
                    },
                })
            }
        })
        .await
    }

    async fn log_interaction(
        &self,
        request: Request<pb::LogInteractionRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::LogInteractionRequest {
            customer_id,
            channel,
            direction,
            kind,
            subject,
            summary,
            agent,
            duration_seconds,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |v| {
            let channel = channel_from("channel", channel, v);
            let direction = direction_from("direction", direction, v);
            let kind = kind_from("kind", kind, v);
            move |id| {
                DomainEvent::InteractionLogged(InteractionLogged {
                    customer_id: id,
                    channel,
                    direction,
                    kind,
                    text: Personal::Clear(InteractionText {
                        subject: subject.clone(),
                        summary: summary.clone(),
                    }),
                    agent: agent.clone(),
                    duration_seconds,
                })
            }
        })
        .await
    }

    async fn record_purchase(
        &self,
        request: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::RecordPurchaseRequest {
            customer_id,
            order_id,
            lines,
            total_minor,
            currency,
            channel,
            store_id,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        let channel = channel_from("channel", channel, &mut v);
        let purchase = PurchaseCompleted {
            customer_id: id,
            order_id,
            lines: purchase_lines_from(lines),
            total_minor,
            currency,
            channel,
            store_id,
        };
        request_violations(&DomainEvent::PurchaseCompleted(purchase.clone()), &mut v);
        finish(v)?;
        self.execute(context, move |inner| {
            let loaded = inner.load_resolved(id)?;
            let mut purchase = purchase.clone();
            purchase.customer_id = loaded.id;
            let events = customer::record_purchase(&loaded.state, loaded.id, purchase)?;
            Ok(Plan::one(&loaded, events))
        })
        .await
    }

    async fn record_refund(
        &self,
        request: Request<pb::RecordRefundRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::RecordRefundRequest {
            customer_id,
            order_id,
            refund_id,
            lines,
            amount_minor,
            currency,
            reason,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        let refund = PurchaseRefunded {
            customer_id: id,
            order_id,
            refund_id,
            lines: refund_lines_from(lines),
            amount_minor,
            currency,
            reason,
        };
        request_violations(&DomainEvent::PurchaseRefunded(refund.clone()), &mut v);
        finish(v)?;
        self.execute(context, move |inner| {
            // A refund follows its order: the order may sit in a merged duplicate's
            // stream, which the survivor's state does not hold, so look there too.
            let loaded = inner.load_resolved(id)?;
            let mut refund = refund.clone();
            refund.customer_id = loaded.id;
            let mut state = loaded.state.clone();
            for duplicate in loaded.state.merged_from.clone() {
                let dup = inner.load(duplicate)?;
                for (order_id, order) in dup.state.orders {
                    state.orders.entry(order_id).or_insert(order);
                }
            }
            let events = customer::record_refund(&state, loaded.id, refund)?;
            Ok(Plan::one(&loaded, events))
        })
        .await
    }

    async fn record_feedback(
        &self,
        request: Request<pb::RecordFeedbackRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::RecordFeedbackRequest {
            customer_id,
            metric,
            score,
            comment,
            channel,
            subject_ref,
            context,
        } = request.into_inner();
        self.record_fact(&customer_id, context, |v| {
            let metric = feedback_metric_from("metric", metric, v);
            let channel = channel_from("channel", channel, v);
            let score = u8::try_from(score).unwrap_or(u8::MAX);
            move |id| {
                DomainEvent::FeedbackGiven(FeedbackGiven {
                    customer_id: id,
                    metric,
                    score,
                    comment: Personal::Clear(comment.clone()),
                    channel,
                    subject_ref: subject_ref.clone(),
                })
            }
        })
        .await
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let pb::MergeCustomersRequest {
            survivor_id,
            duplicate_id,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let survivor_id = customer_id_field("survivor_id", &survivor_id, &mut v);
        let duplicate_id = customer_id_field("duplicate_id", &duplicate_id, &mut v);
        if survivor_id == duplicate_id && !survivor_id.is_nil() {
            return Err(RuleError::MergeIntoSelf.into());
        }
        finish(v)?;
        self.execute(context, move |inner| {
            let survivor = inner.load(survivor_id)?;
            let duplicate = inner.load(duplicate_id)?;
            let merged =
                customer::merge(&survivor.state, survivor_id, &duplicate.state, duplicate_id)?;
            // The duplicate's stream first: when the fold reaches the survivor's copy,
            // the duplicate's history is complete.
            let event = DomainEvent::CustomersMerged(merged);
            let expected = |l: &Loaded| {
                l.revision
                    .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
            };
            Ok(Plan {
                customer: survivor_id,
                appends: vec![
                    Planned {
                        stream: customer_stream(duplicate_id),
                        expected: expected(&duplicate),
                        events: vec![event.clone()],
                    },
                    Planned {
                        stream: customer_stream(survivor_id),
                        expected: expected(&survivor),
                        events: vec![event],
                    },
                ],
            })
        })
        .await
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let pb::EraseCustomerRequest {
            customer_id,
            reason,
            requested_by,
            context,
        } = request.into_inner();
        let mut v = Violations::new("");
        let context = context_from(context, &mut v);
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        v.max_len("reason", &reason, limits::FIELD_BYTES_MAX);
        v.max_len("requested_by", &requested_by, limits::FIELD_BYTES_MAX);
        finish(v)?;
        let inner = self.inner.clone();
        // Plan, then delete the keys durably, then append: a crash after the deletion
        // leaves the data unreadable already, and a retried erasure appends the event.
        // The other order could acknowledge nothing yet leave a readable key behind.
        let (loaded, ids, releases) = blocking(move || {
            let loaded = inner.load_resolved(id)?;
            if !loaded.state.registered {
                return Err(RuleError::NotFound(id).into());
            }
            let mut ids = vec![loaded.id];
            let mut identifiers: Vec<Identifier> =
                loaded.state.identifiers.iter().cloned().collect();
            let mut queue: Vec<Uuid> = loaded.state.merged_from.iter().copied().collect();
            while let Some(dup) = queue.pop() {
                if ids.contains(&dup) || ids.len() > limits::MERGED_STREAMS_MAX {
                    continue;
                }
                let state = inner.load(dup)?;
                ids.push(dup);
                identifiers.extend(state.state.identifiers.iter().cloned());
                queue.extend(state.state.merged_from.iter().copied());
            }
            let mut releases = Vec::new();
            for identifier in identifiers {
                let stream = inner.privacy.identity_stream(&identifier);
                let name = StreamName::parse(&stream).map_err(|e| internal(e.to_string()))?;
                if let Ok(page) = inner.log.read_stream(&name, 0, true, 1)
                    && let Some(last) = page.events.first()
                    && let DomainEvent::IdentifierClaimed(claim) = decode(last)?
                    && ids.contains(&claim.customer_id)
                {
                    releases.push(Planned {
                        stream,
                        expected: ExpectedRevision::Exact(last.event.revision),
                        events: vec![DomainEvent::IdentifierReleased(IdentifierReleased {
                            customer_id: claim.customer_id,
                            kind: identifier.kind,
                        })],
                    });
                }
            }
            ids.sort();
            inner
                .privacy
                .keys()
                .erase(&ids)
                .map_err(|e| internal(format!("deleting data keys: {e}")))?;
            Ok((loaded, ids, releases))
        })
        .await?;
        if loaded.state.erased {
            return Ok(Response::new(pb::EraseCustomerResponse {
                position: 0,
                erased_ids: ids.iter().map(Uuid::to_string).collect(),
                already_erased: true,
            }));
        }
        let erased_event = DomainEvent::CustomerErased(CustomerErased {
            customer_id: loaded.id,
            erased_ids: ids.clone(),
            reason,
            requested_by,
        });
        let releases = Arc::new(std::sync::Mutex::new(Some(releases)));
        let target = loaded.id;
        let written = self
            .execute(context, move |inner| {
                let loaded = inner.load(target)?;
                if loaded.state.erased {
                    return Err(Status::already_exists("erased concurrently"));
                }
                let mut plan = Plan::one(&loaded, vec![erased_event.clone()]);
                // Releases only on the first attempt: a retry re-reads the streams.
                if let Some(releases) = releases.lock().expect("releases lock").take() {
                    plan.appends.extend(releases);
                }
                Ok(plan)
            })
            .await;
        let position = match written {
            Ok(response) => response.into_inner().position,
            Err(status) if status.code() == tonic::Code::AlreadyExists => 0,
            Err(status) => return Err(status),
        };
        tracing::info!(customer = %target, erased = ids.len(), position, "customer erased");
        Ok(Response::new(pb::EraseCustomerResponse {
            position,
            erased_ids: ids.iter().map(Uuid::to_string).collect(),
            already_erased: position == 0,
        }))
    }

    async fn export_customer_data(
        &self,
        request: Request<pb::ExportCustomerDataRequest>,
    ) -> Result<Response<pb::ExportCustomerDataResponse>, Status> {
        let pb::ExportCustomerDataRequest { customer_id } = request.into_inner();
        let mut v = Violations::new("");
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        finish(v)?;
        let inner = self.inner.clone();
        let (json, position) = blocking(move || {
            let head = inner.log.head().position;
            let Some((profile, _)) = fold_as_of(&inner.log, id, &|e| e.event.position <= head)?
            else {
                return Err(RuleError::NotFound(id).into());
            };
            if profile.registered.is_none() {
                return Err(RuleError::NotFound(id).into());
            }
            let customer = customer_to_proto(&inner.privacy, &profile, head);
            let history = history_up_to(
                &inner.log,
                profile.customer_id,
                &|e| e.event.position <= head,
                true,
            )?;
            let mut events = Vec::with_capacity(history.len());
            for (logged, _) in history {
                let recorded = recorded_event(logged, Some(&inner.privacy))?;
                events.push(crate::cli::event_json(recorded));
            }
            let document = serde_json::json!({
                "format": "rapport.customer-export.v1",
                "customer_id": profile.customer_id.to_string(),
                "requested_id": id.to_string(),
                "exported_through_position": head,
                "profile": customer_json(&customer),
                "events": events,
            });
            Ok((
                serde_json::to_string_pretty(&document).map_err(internal)?,
                head,
            ))
        })
        .await?;
        Ok(Response::new(pb::ExportCustomerDataResponse {
            json,
            position,
        }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let wait = wait_bound(&request);
        let pb::GetCustomerRequest {
            customer_id,
            min_position,
        } = request.into_inner();
        let mut v = Violations::new("");
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        finish(v)?;
        let view = self.view(min_position, wait).await?;
        // A point read (one sled get, one profile decoded, its sealed parts opened: some
        // microseconds) runs on the async worker: handing it to the blocking pool cost
        // more in thread switches than the read itself (measured at 5k calls/s).
        let profile = read_model::read_resolved(&view.tree, id)
            .map_err(internal)?
            .filter(|p| p.registered.is_some())
            .ok_or(RuleError::NotFound(id))?;
        Ok(Response::new(customer_to_proto(
            &self.inner.privacy,
            &profile,
            view.applied,
        )))
    }

    async fn find_customer(
        &self,
        request: Request<pb::FindCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let wait = wait_bound(&request);
        let pb::FindCustomerRequest { by, min_position } = request.into_inner();
        use pb::find_customer_request::By;
        let identifier = match by {
            Some(By::Email(email)) => crate::keys::normalise_email(&email)
                .map(|value| Identifier {
                    kind: crate::domain::events::IdentifierKind::Email,
                    value,
                })
                .ok_or_else(|| invalid_field("email", "is not an email address"))?,
            Some(By::Phone(phone)) => crate::keys::normalise_phone(&phone)
                .map(|value| Identifier {
                    kind: crate::domain::events::IdentifierKind::Phone,
                    value,
                })
                .ok_or_else(|| invalid_field("phone", "is not a phone number"))?,
            Some(By::ExternalId(external)) => crate::keys::normalise_external_id(&external)
                .map(|value| Identifier {
                    kind: crate::domain::events::IdentifierKind::ExternalId,
                    value,
                })
                .ok_or_else(|| invalid_field("external_id", "must be system:value"))?,
            None => return Err(invalid_field("by", "set one of email, phone, external_id")),
        };
        // The reservation is read from the log (always current); the profile then comes
        // from the projection once it has applied at least the reservation and the
        // holder's own stream, so a customer that can be found can also be shown.
        // The profile must also include every event of the holder's own stream so far:
        // a customer found by its identifier is shown as current as its stream.
        let inner = self.inner.clone();
        let (holder, claimed_at) = blocking(move || {
            let stream = inner.privacy.identity_stream(&identifier);
            let (holder, _, position) = inner.holder_at(&stream)?;
            let own = match holder {
                Some(id) => {
                    let name = StreamName::parse(&customer_stream(id))
                        .map_err(|e| internal(e.to_string()))?;
                    inner.log.stream_head(&name)?.map_or(0, |h| h.position)
                }
                None => 0,
            };
            Ok((holder, position.max(own)))
        })
        .await?;
        let not_found = || Status::not_found("no live customer has this identifier");
        let holder = holder.ok_or_else(not_found)?;
        let view = self.view(min_position.max(claimed_at), wait).await?;
        let profile = read_model::read_resolved(&view.tree, holder)
            .map_err(internal)?
            .filter(|p| p.registered.is_some() && p.status != ProfileStatus::Erased)
            .ok_or_else(not_found)?;
        Ok(Response::new(customer_to_proto(
            &self.inner.privacy,
            &profile,
            view.applied,
        )))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let wait = wait_bound(&request);
        let pb::ListCustomersRequest {
            page_size,
            page_token,
            tag,
            consent,
            channel,
            last_activity_after,
            last_activity_before,
            spent_currency,
            spent_min_minor,
            spent_max_minor,
            min_position,
            include_erased,
        } = request.into_inner();
        let mut v = Violations::new("");
        let page_size = match page_size {
            0 => limits::LIST_PAGE_DEFAULT,
            n => (n as usize).min(limits::LIST_PAGE_MAX),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(uuid_field("page_token", &page_token, &mut v))
        };
        let consent = consent_purpose_from("consent", consent, &mut v);
        let channel = channel_from("channel", channel, &mut v);
        let after_us =
            last_activity_after.and_then(|t| timestamp_to_us("last_activity_after", &t, &mut v));
        let before_us =
            last_activity_before.and_then(|t| timestamp_to_us("last_activity_before", &t, &mut v));
        if (spent_min_minor.is_some() || spent_max_minor.is_some()) && spent_currency.is_empty() {
            v.add(
                "spent_currency",
                "is required with spent_min_minor or spent_max_minor",
            );
        }
        if !spent_currency.is_empty() {
            crate::domain::common::validate_currency("spent_currency", &spent_currency, &mut v);
        }
        v.max_len("tag", &tag, limits::KEY_BYTES_MAX);
        finish(v)?;
        let view = self.view(min_position, wait).await?;
        let privacy = self.inner.privacy.clone();
        let response = blocking(move || {
            let matches = |p: &Profile| {
                if p.registered.is_none() || matches!(p.status, ProfileStatus::Merged { .. }) {
                    return false;
                }
                if p.status == ProfileStatus::Erased && !include_erased {
                    return false;
                }
                if !tag.is_empty() && !p.tags.contains(&tag) {
                    return false;
                }
                if consent != ConsentPurpose::Unspecified
                    && !p.consent(consent).is_some_and(|c| c.granted)
                {
                    return false;
                }
                if channel != Channel::Unspecified && !p.channels.contains(&channel) {
                    return false;
                }
                if let Some(after) = after_us
                    && p.last_activity_us.is_none_or(|t| t < after)
                {
                    return false;
                }
                if let Some(before) = before_us
                    && p.last_activity_us.is_none_or(|t| t >= before)
                {
                    return false;
                }
                if !spent_currency.is_empty()
                    && (spent_min_minor.is_some() || spent_max_minor.is_some())
                {
                    let net = p.net_spent(&spent_currency);
                    if spent_min_minor.is_some_and(|min| net < min)
                        || spent_max_minor.is_some_and(|max| net > max)
                    {
                        return false;
                    }
                }
                true
            };
            let mut customers = Vec::new();
            let mut last_seen = None;
            let mut more = false;
            for (scanned, profile) in read_model::scan(&view.tree, after).enumerate() {
                let profile = profile.map_err(internal)?;
                if customers.len() == page_size || scanned == limits::LIST_SCAN_MAX {
                    more = true;
                    break;
                }
                last_seen = Some(profile.customer_id);
                if matches(&profile) {
                    customers.push(customer_to_proto(&privacy, &profile, view.applied));
                }
            }
            Ok(pb::ListCustomersResponse {
                customers,
                next_page_token: if more {
                    last_seen.map(|id| id.to_string()).unwrap_or_default()
                } else {
                    String::new()
                },
            })
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn get_timeline(
        &self,
        request: Request<pb::GetTimelineRequest>,
    ) -> Result<Response<pb::GetTimelineResponse>, Status> {
        let pb::GetTimelineRequest {
            customer_id,
            page_size,
            page_token,
            event_types,
            channel,
        } = request.into_inner();
        let mut v = Violations::new("");
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        let page_size = match page_size {
            0 => limits::LIST_PAGE_DEFAULT,
            n => (n as usize).min(limits::LIST_PAGE_MAX),
        };
        let before: Option<u64> = if page_token.is_empty() {
            None
        } else {
            match page_token.parse() {
                Ok(position) => Some(position),
                Err(_) => {
                    v.add("page_token", "is not a token this service returned");
                    None
                }
            }
        };
        v.max_items("event_types", event_types.len(), limits::FILTER_ITEMS_MAX);
        let channel = channel_from("channel", channel, &mut v);
        finish(v)?;
        let inner = self.inner.clone();
        let response = blocking(move || {
            let head = inner.log.head().position;
            let resolved = inner.load_resolved(id)?;
            if !resolved.state.registered {
                return Err(RuleError::NotFound(id).into());
            }
            let bound = before.unwrap_or(head + 1);
            let history =
                history_up_to(&inner.log, resolved.id, &|e| e.event.position < bound, true)?;
            let mut events = Vec::new();
            let mut next = String::new();
            for (logged, event) in history.into_iter().rev() {
                if !event_types.is_empty() && !event_types.contains(&logged.event.event_type) {
                    continue;
                }
                if channel != Channel::Unspecified && event_channel(&event) != Some(channel) {
                    continue;
                }
                if events.len() == page_size {
                    next =
                        (events.last().map_or(0, |e: &pb::RecordedEvent| e.position)).to_string();
                    break;
                }
                events.push(recorded_event(logged, Some(&inner.privacy))?);
            }
            Ok(pb::GetTimelineResponse {
                events,
                next_page_token: next,
            })
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn get_customer_as_of(
        &self,
        request: Request<pb::GetCustomerAsOfRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let pb::GetCustomerAsOfRequest { customer_id, as_of } = request.into_inner();
        let mut v = Violations::new("");
        let id = customer_id_field("customer_id", &customer_id, &mut v);
        use pb::get_customer_as_of_request::AsOf;
        #[derive(Clone, Copy)]
        enum Bound {
            Position(u64),
            RecordedAt(i64),
        }
        let bound = match as_of {
            Some(AsOf::Position(position)) => Some(Bound::Position(position)),
            Some(AsOf::RecordedAt(ts)) => {
                timestamp_to_us("recorded_at", &ts, &mut v).map(Bound::RecordedAt)
            }
            None => {
                v.add("as_of", "set position or recorded_at");
                None
            }
        };
        finish(v)?;
        let bound = bound.expect("checked above");
        let inner = self.inner.clone();
        let customer = blocking(move || {
            let head = inner.log.head().position;
            let include = move |e: &LoggedEvent| match bound {
                Bound::Position(p) => e.event.position <= p.min(head),
                Bound::RecordedAt(t) => e.event.recorded_at_us <= t && e.event.position <= head,
            };
            let (profile, last) = fold_as_of(&inner.log, id, &include)?
                .filter(|(p, _)| p.registered.is_some())
                .ok_or_else(|| {
                    Status::not_found(format!("customer {id} did not exist at that point"))
                })?;
            let reflects = match bound {
                Bound::Position(p) => p.min(head),
                Bound::RecordedAt(_) => last,
            };
            Ok(customer_to_proto(&inner.privacy, &profile, reflects))
        })
        .await?;
        Ok(Response::new(customer))
    }
}

/// The channel an event happened on, for timeline filters.
fn event_channel(event: &DomainEvent) -> Option<Channel> {
    match event {
        DomainEvent::InteractionLogged(e) => Some(e.channel),
        DomainEvent::PurchaseCompleted(e) => Some(e.channel),
        DomainEvent::FeedbackGiven(e) => Some(e.channel),
        DomainEvent::CustomerRegistered(e) => Some(e.acquisition_channel),
        _ => None,
    }
}

/// The profile part of an export, as JSON.
fn customer_json(c: &pb::Customer) -> serde_json::Value {
    let ts = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| crate::cli::rfc3339(t.seconds * 1_000_000 + i64::from(t.nanos / 1000)))
    };
    let erased = c.personal_data == pb::PersonalData::Erased as i32;
    serde_json::json!({
        "customer_id": c.customer_id,
        "status": if c.status == pb::CustomerStatus::Erased as i32 { "erased" } else { "active" },
        "personal_data": if erased { "erased" } else { "clear" },
        "given_name": c.given_name,
        "family_name": c.family_name,
        "emails": c.emails,
        "phones": c.phones,
        "birth_date": c.birth_date,
        "address": c.address.as_ref().map(|a| serde_json::json!({
            "lines": a.lines, "city": a.city, "region": a.region,
            "postal_code": a.postal_code, "country_code": a.country_code,
        })),
        "external_ids": c.external_ids.iter().collect::<BTreeMap<_, _>>(),
        "locale": c.locale,
        "registered_at": ts(&c.registered_at),
        "preferences": c.preferences.iter().collect::<BTreeMap<_, _>>(),
        "consents": c.consents.iter().map(|consent| serde_json::json!({
            "purpose": ConsentPurpose::ALL
                .iter()
                .find(|p| consent_purpose_to(**p) == consent.purpose)
                .map_or("unspecified", |p| p.as_str()),
            "granted": consent.granted,
            "source": consent.source,
            "changed_at": ts(&consent.changed_at),
            "history": consent.history.iter().map(|h| serde_json::json!({
                "granted": h.granted, "source": h.source,
                "occurred_at": ts(&h.occurred_at), "position": h.position,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "tags": c.tags,
        "custom_fields": c.custom_fields.iter().map(|(k, f)| (k.clone(), serde_json::json!({
            "value": f.value.as_ref().and_then(|v| v.value.as_ref()).map(|v| format!("{v:?}")),
            "personal": f.personal,
            "erased": f.erased,
        }))).collect::<BTreeMap<_, _>>(),
        "merged_ids": c.merged_ids,
        "purchases": c.purchases.as_ref().map(|p| serde_json::json!({
            "orders": p.orders,
            "units": p.units,
            "refunds": p.refunds,
            "totals": p.totals.iter().map(|t| serde_json::json!({
                "currency": t.currency, "orders": t.orders, "spent_minor": t.spent_minor,
                "refunded_minor": t.refunded_minor, "net_minor": t.net_minor,
            })).collect::<Vec<_>>(),
        })),
        "interactions": c.interactions.as_ref().map(|i| i.total),
    })
}
