//! `pipeline`: the sales read model — accounts, pipelines, leads, deals (with their stage
//! history) and tasks — folded from the `account-`, `pipeline-`, `lead-`, `deal-` and
//! `task-` streams.
//!
//! One fold, two places: [`fold_event`] applies one event to the one record it concerns,
//! and is called both by the projection (records in its sled tree) and by
//! [`SalesModel::apply`] (records in memory), which serves as-of reads: the log is
//! replayed up to a position or a recorded time into a `SalesModel` ([`fold_log`]). Live
//! reads load the tree into the same `SalesModel` ([`load_model`]); every query (board,
//! forecast, metrics, lists) is a pure function over a `SalesModel` in
//! [`crate::projections::pipeline_queries`], so as-of at the head equals live by
//! construction, and the property test checks it.
//!
//! Keys: a tag byte (`a` account, `p` pipeline, `l` lead, `d` deal, `t` task) ‖ the
//! entity's UUID → bincode of its view.
//!
//! Clocks: records keep both the log position of their last change (what the system
//! knew when) and the business time (`occurred_at`) of their facts: stage entered / left,
//! opened, closed, captured. Board and lists are "now" (as of the fold's bound); the
//! forecast buckets by expected close date; metrics select facts by `occurred_at`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApplyError, Projection, StateBatch};
use crate::domain::DomainEvent;
use crate::domain::common::CalendarDate;
use crate::domain::events::{AccountProfile, ContactRole, LeadSource, Stage, StageKind, TaskKind};
use crate::domain::pipeline::{
    DealStatus, LeadStatus, PipelineDef, SALES_STREAM_PREFIXES, TaskStatus,
};
use crate::limits;
use crate::log::{Log, LogError, LoggedEvent, ReadFilter, StoredEvent};

/// The projection's name.
pub const NAME: &str = "pipeline";

/// The envelope facts the fold uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct At {
    /// Log position.
    pub position: u64,
    /// Business time, UTC microseconds.
    pub occurred_at_us: i64,
}

impl At {
    /// The facts of a stored event.
    pub fn of(event: &StoredEvent) -> Self {
        Self {
            position: event.position,
            occurred_at_us: event.occurred_at_us,
        }
    }
}

/// A B2B account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// Id.
    pub account_id: Uuid,
    /// Name, domain, industry, size, external ids.
    pub profile: AccountProfile,
    /// Owner's user id.
    pub owner: String,
    /// Contacts (customer ids) and their roles.
    pub contacts: BTreeMap<Uuid, ContactRole>,
    /// When it was created (business time).
    pub created_at_us: i64,
    /// Position of its last change.
    pub last_position: u64,
}

/// A pipeline's current definition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineView {
    /// Id.
    pub pipeline_id: Uuid,
    /// Name, currencies, stages.
    pub def: PipelineDef,
    /// Position of its last change.
    pub last_position: u64,
}

/// A lead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadView {
    /// Id.
    pub lead_id: Uuid,
    /// Where it came from.
    pub source: LeadSource,
    /// Campaign id.
    pub campaign_id: String,
    /// The customer it is.
    pub customer_id: Option<Uuid>,
    /// The account it belongs to.
    pub account_id: Option<Uuid>,
    /// Company name as captured.
    pub company_name: String,
    /// Owner's user id.
    pub owner: String,
    /// Open, qualified or disqualified.
    pub status: LeadStatus,
    /// The deal it was qualified into.
    pub deal_id: Option<Uuid>,
    /// Why it was disqualified.
    pub disqualify_reason: String,
    /// When it was captured (business time).
    pub captured_at_us: i64,
    /// When it was qualified or disqualified (business time).
    pub decided_at_us: Option<i64>,
    /// Position of its last change.
    pub last_position: u64,
}

/// A deal's stay in one stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpan {
    /// The stage.
    pub stage_id: String,
    /// Entered (business time).
    pub entered_at_us: i64,
    /// Left (business time); `None` while it is there.
    pub left_at_us: Option<i64>,
}

/// A deal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealView {
    /// Id.
    pub deal_id: Uuid,
    /// Its pipeline.
    pub pipeline_id: Uuid,
    /// Title.
    pub title: String,
    /// Current stage.
    pub stage_id: String,
    /// Open, won or lost.
    pub status: DealStatus,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: String,
    /// Expected close date (business time).
    pub expected_close: CalendarDate,
    /// Owner's user id.
    pub owner: String,
    /// The customer.
    pub customer_id: Option<Uuid>,
    /// The account.
    pub account_id: Option<Uuid>,
    /// The lead it came from.
    pub lead_id: Option<Uuid>,
    /// Opened (business time).
    pub opened_at_us: i64,
    /// Won or lost (business time), while closed.
    pub closed_at_us: Option<i64>,
    /// Why it was lost (while lost).
    pub lost_reason: String,
    /// The stage it was lost from (while lost).
    pub lost_from_stage_id: String,
    /// Stage history, oldest first (at most [`limits::DEAL_STAGE_HISTORY_MAX`] spans).
    pub history: Vec<StageSpan>,
    /// Position of its last change.
    pub last_position: u64,
}

/// A task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Id.
    pub task_id: Uuid,
    /// The deal it is on.
    pub deal_id: Option<Uuid>,
    /// The account it is on.
    pub account_id: Option<Uuid>,
    /// Kind.
    pub kind: TaskKind,
    /// Title.
    pub title: String,
    /// Due (business time).
    pub due_at_us: i64,
    /// Assignee's user id.
    pub assignee: String,
    /// Open, completed or cancelled.
    pub status: TaskStatus,
    /// Created (business time).
    pub created_at_us: i64,
    /// Completed or cancelled (business time).
    pub closed_at_us: Option<i64>,
    /// Position of its last change.
    pub last_position: u64,
}

/// Which record an event changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An account.
    Account(Uuid),
    /// A pipeline.
    Pipeline(Uuid),
    /// A lead.
    Lead(Uuid),
    /// A deal.
    Deal(Uuid),
    /// A task.
    Task(Uuid),
}

/// The record `event` changes; `None` for events outside the sales model.
pub fn target(event: &DomainEvent) -> Option<Target> {
    use DomainEvent as E;
    Some(match event {
        E::AccountCreated(e) => Target::Account(e.account_id),
        E::AccountUpdated(e) => Target::Account(e.account_id),
        E::AccountContactLinked(e) => Target::Account(e.account_id),
        E::AccountContactUnlinked(e) => Target::Account(e.account_id),
        E::AccountOwnerAssigned(e) => Target::Account(e.account_id),
        E::PipelineDefined(e) => Target::Pipeline(e.pipeline_id),
        E::PipelineChanged(e) => Target::Pipeline(e.pipeline_id),
        E::LeadCaptured(e) => Target::Lead(e.lead_id),
        E::LeadAssigned(e) => Target::Lead(e.lead_id),
        E::LeadQualified(e) => Target::Lead(e.lead_id),
        E::LeadDisqualified(e) => Target::Lead(e.lead_id),
        E::DealOpened(e) => Target::Deal(e.deal_id),
        E::DealStageMoved(e) => Target::Deal(e.deal_id),
        E::DealChanged(e) => Target::Deal(e.deal_id),
        E::DealWon(e) => Target::Deal(e.deal_id),
        E::DealLost(e) => Target::Deal(e.deal_id),
        E::DealReopened(e) => Target::Deal(e.deal_id),
        E::TaskCreated(e) => Target::Task(e.task_id),
        E::TaskCompleted(e) => Target::Task(e.task_id),
        E::TaskCancelled(e) => Target::Task(e.task_id),
        _ => return None,
    })
}

/// One of the five records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An account.
    Account(AccountView),
    /// A pipeline.
    Pipeline(PipelineView),
    /// A lead.
    Lead(LeadView),
    /// A deal.
    Deal(Box<DealView>),
    /// A task.
    Task(TaskView),
}

fn enter(history: &mut Vec<StageSpan>, stage_id: &str, at_us: i64) {
    if let Some(last) = history.last_mut()
        && last.left_at_us.is_none()
    {
        last.left_at_us = Some(at_us);
    }
    history.push(StageSpan {
        stage_id: stage_id.to_owned(),
        entered_at_us: at_us,
        left_at_us: None,
    });
    if history.len() > limits::DEAL_STAGE_HISTORY_MAX {
        let extra = history.len() - limits::DEAL_STAGE_HISTORY_MAX;
        history.drain(..extra);
    }
}

/// THE fold: applies `event` (of the record `current` is, or `None` for a record not seen
/// yet) and returns the record after it. An event for a record that does not exist
/// (other than its creation) changes nothing.
pub fn fold_event(current: Option<Record>, at: At, event: &DomainEvent) -> Option<Record> {
    use DomainEvent as E;
    let t = at.occurred_at_us;
    let p = at.position;
    match (current, event) {
        (None, E::AccountCreated(e)) => Some(Record::Account(AccountView {
            account_id: e.account_id,
            profile: e.profile.clone(),
            owner: String::new(),
            contacts: BTreeMap::new(),
            created_at_us: t,
            last_position: p,
        })),
        (Some(Record::Account(mut a)), event) => {
            match event {
                E::AccountUpdated(e) => a.profile = e.profile.clone(),
                E::AccountContactLinked(e) => {
                    a.contacts.insert(e.customer_id, e.role);
                }
                E::AccountContactUnlinked(e) => {
                    a.contacts.remove(&e.customer_id);
                }
                E::AccountOwnerAssigned(e) => a.owner = e.owner.clone(),
                _ => return Some(Record::Account(a)),
            }
            a.last_position = p;
            Some(Record::Account(a))
        }
        (None, E::PipelineDefined(e)) => Some(Record::Pipeline(PipelineView {
            pipeline_id: e.pipeline_id,
            def: PipelineDef {
                name: e.name.clone(),
                currencies: e.currencies.clone(),
                stages: e.stages.clone(),
            },
            last_position: p,
        })),
        (Some(Record::Pipeline(mut v)), E::PipelineChanged(e)) => {
            v.def = PipelineDef {
                name: e.name.clone(),
                currencies: e.currencies.clone(),
                stages: e.stages.clone(),
            };
            v.last_position = p;
            Some(Record::Pipeline(v))
        }
        (None, E::LeadCaptured(e)) => Some(Record::Lead(LeadView {
            lead_id: e.lead_id,
            source: e.source,
            campaign_id: e.campaign_id.clone(),
            customer_id: e.customer_id,
            account_id: e.account_id,
            company_name: e.company_name.clone(),
            captured_at_us: t,
            last_position: p,
            ..LeadView::default()
        })),
        (Some(Record::Lead(mut l)), event) => {
            match event {
                E::LeadAssigned(e) => l.owner = e.owner.clone(),
                E::LeadQualified(e) => {
                    l.status = LeadStatus::Qualified;
                    l.customer_id = e.customer_id.or(l.customer_id);
                    l.deal_id = Some(e.deal_id);
                    l.decided_at_us = Some(t);
                }
                E::LeadDisqualified(e) => {
                    l.status = LeadStatus::Disqualified;
                    l.disqualify_reason = e.reason.clone();
                    l.decided_at_us = Some(t);
                }
                _ => return Some(Record::Lead(l)),
            }
            l.last_position = p;
            Some(Record::Lead(l))
        }
        (None, E::DealOpened(e)) => Some(Record::Deal(Box::new(DealView {
            deal_id: e.deal_id,
            pipeline_id: e.pipeline_id,
            title: e.title.clone(),
            stage_id: e.stage_id.clone(),
            status: DealStatus::Open,
            amount_minor: e.amount_minor,
            currency: e.currency.clone(),
            expected_close: e.expected_close,
            owner: e.owner.clone(),
            customer_id: e.customer_id,
            account_id: e.account_id,
            lead_id: e.lead_id,
            opened_at_us: t,
            closed_at_us: None,
            lost_reason: String::new(),
            lost_from_stage_id: String::new(),
            history: vec![StageSpan {
                stage_id: e.stage_id.clone(),
                entered_at_us: t,
                left_at_us: None,
            }],
            last_position: p,
        }))),
        (Some(Record::Deal(mut d)), event) => {
            match event {
                E::DealStageMoved(e) => {
                    d.stage_id = e.to_stage_id.clone();
                    enter(&mut d.history, &e.to_stage_id, t);
                }
                E::DealChanged(e) => {
                    if let Some(amount) = e.amount_minor {
                        d.amount_minor = amount;
                    }
                    if let Some(close) = e.expected_close {
                        d.expected_close = close;
                    }
                    if let Some(owner) = &e.owner {
                        d.owner = owner.clone();
                    }
                }
                E::DealWon(e) => {
                    d.stage_id = e.stage_id.clone();
                    d.status = DealStatus::Won;
                    d.closed_at_us = Some(t);
                    enter(&mut d.history, &e.stage_id, t);
                }
                E::DealLost(e) => {
                    d.stage_id = e.stage_id.clone();
                    d.status = DealStatus::Lost;
                    d.closed_at_us = Some(t);
                    d.lost_reason = e.reason.clone();
                    d.lost_from_stage_id = e.from_stage_id.clone();
                    enter(&mut d.history, &e.stage_id, t);
                }
                E::DealReopened(e) => {
                    d.stage_id = e.stage_id.clone();
                    d.status = DealStatus::Open;
                    d.closed_at_us = None;
                    d.lost_reason.clear();
                    d.lost_from_stage_id.clear();
                    enter(&mut d.history, &e.stage_id, t);
                }
                _ => return Some(Record::Deal(d)),
            }
            d.last_position = p;
            Some(Record::Deal(d))
        }
        (None, E::TaskCreated(e)) => Some(Record::Task(TaskView {
            task_id: e.task_id,
            deal_id: e.deal_id,
            account_id: e.account_id,
            kind: e.kind,
            title: e.title.clone(),
            due_at_us: e.due_at_us,
            assignee: e.assignee.clone(),
            status: TaskStatus::Open,
            created_at_us: t,
            closed_at_us: None,
            last_position: p,
        })),
        (Some(Record::Task(mut k)), event) => {
            match event {
                E::TaskCompleted(_) => k.status = TaskStatus::Completed,
                E::TaskCancelled(_) => k.status = TaskStatus::Cancelled,
                _ => return Some(Record::Task(k)),
            }
            k.closed_at_us = Some(t);
            k.last_position = p;
            Some(Record::Task(k))
        }
        (current, _) => current,
    }
}

/// The whole sales model in memory: what every pipeline query reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SalesModel {
    /// Accounts by id.
    pub accounts: BTreeMap<Uuid, AccountView>,
    /// Pipelines by id.
    pub pipelines: BTreeMap<Uuid, PipelineView>,
    /// Leads by id.
    pub leads: BTreeMap<Uuid, LeadView>,
    /// Deals by id.
    pub deals: BTreeMap<Uuid, DealView>,
    /// Tasks by id.
    pub tasks: BTreeMap<Uuid, TaskView>,
    /// The log position the model reflects.
    pub position: u64,
}

impl SalesModel {
    /// Records held.
    pub fn len(&self) -> usize {
        self.accounts.len()
            + self.pipelines.len()
            + self.leads.len()
            + self.deals.len()
            + self.tasks.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record `target` names, taken out of the model.
    fn take(&mut self, target: Target) -> Option<Record> {
        match target {
            Target::Account(id) => self.accounts.remove(&id).map(Record::Account),
            Target::Pipeline(id) => self.pipelines.remove(&id).map(Record::Pipeline),
            Target::Lead(id) => self.leads.remove(&id).map(Record::Lead),
            Target::Deal(id) => self.deals.remove(&id).map(|d| Record::Deal(Box::new(d))),
            Target::Task(id) => self.tasks.remove(&id).map(Record::Task),
        }
    }

    /// Puts a record (back) in.
    pub fn put(&mut self, record: Record) {
        match record {
            Record::Account(v) => {
                self.accounts.insert(v.account_id, v);
            }
            Record::Pipeline(v) => {
                self.pipelines.insert(v.pipeline_id, v);
            }
            Record::Lead(v) => {
                self.leads.insert(v.lead_id, v);
            }
            Record::Deal(v) => {
                self.deals.insert(v.deal_id, *v);
            }
            Record::Task(v) => {
                self.tasks.insert(v.task_id, v);
            }
        }
    }

    /// Applies one event with [`fold_event`].
    pub fn apply(&mut self, at: At, event: &DomainEvent) {
        if let Some(target) = target(event) {
            let current = self.take(target);
            if let Some(record) = fold_event(current, at, event) {
                self.put(record);
            }
        }
        self.position = self.position.max(at.position);
    }
}

// ---------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------

fn key(target: Target) -> [u8; 17] {
    let (tag, id) = match target {
        Target::Account(id) => (b'a', id),
        Target::Pipeline(id) => (b'p', id),
        Target::Lead(id) => (b'l', id),
        Target::Deal(id) => (b'd', id),
        Target::Task(id) => (b't', id),
    };
    let mut key = [0u8; 17];
    key[0] = tag;
    key[1..].copy_from_slice(id.as_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("plain values encode into a Vec")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| format!("stored pipeline data does not decode: {e}"))
}

fn encode_record(record: &Record) -> Vec<u8> {
    match record {
        Record::Account(v) => encode(v),
        Record::Pipeline(v) => encode(v),
        Record::Lead(v) => encode(v),
        Record::Deal(v) => encode(v.as_ref()),
        Record::Task(v) => encode(v),
    }
}

fn decode_record(tag: u8, bytes: &[u8]) -> Result<Record, String> {
    Ok(match tag {
        b'a' => Record::Account(decode(bytes)?),
        b'p' => Record::Pipeline(decode(bytes)?),
        b'l' => Record::Lead(decode(bytes)?),
        b'd' => Record::Deal(Box::new(decode(bytes)?)),
        b't' => Record::Task(decode(bytes)?),
        other => return Err(format!("unknown pipeline record tag {other}")),
    })
}

/// The read filter of the sales streams.
pub fn sales_filter() -> ReadFilter {
    ReadFilter {
        stream_prefixes: SALES_STREAM_PREFIXES
            .iter()
            .map(|p| (*p).to_owned())
            .collect(),
        event_types: Vec::new(),
    }
}

/// The pipeline projection.
pub struct PipelineProjection;

impl Projection for PipelineProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn filter(&self) -> ReadFilter {
        sales_filter()
    }

    fn apply(&self, state: &mut StateBatch<'_>, events: &[LoggedEvent]) -> Result<(), ApplyError> {
        for logged in events {
            let e = &logged.event;
            let fail = |message: String| ApplyError::new(e.position, message);
            let event = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
                .map_err(|error| fail(error.to_string()))?;
            let Some(target) = target(&event) else {
                continue;
            };
            let key = key(target);
            let current = match state.get(&key).map_err(|e| fail(e.to_string()))? {
                Some(bytes) => Some(decode_record(key[0], &bytes).map_err(fail)?),
                None => None,
            };
            if let Some(record) = fold_event(current, At::of(e), &event) {
                state.insert(&key, encode_record(&record));
            }
        }
        Ok(())
    }
}

/// Why a pipeline read could not build its model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// More records or events than the limits allow (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    TooLarge(String),
    /// Stored bytes do not decode.
    #[error("{0}")]
    Corrupt(String),
}

/// Full scans of the tree [`load_model`] tries before it gives up on a projection that
/// keeps committing underneath it.
const LOAD_ATTEMPTS: usize = 4;

fn checkpoint_of(tree: &sled::Tree) -> Result<u64, ModelError> {
    match tree
        .get(super::CHECKPOINT_KEY)
        .map_err(|e| ModelError::Corrupt(e.to_string()))?
    {
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| ModelError::Corrupt("malformed projection checkpoint".into())),
        None => Ok(0),
    }
}

/// Loads the projection's tree (the live read model) into memory, at the checkpoint it
/// holds. A sled scan is not a snapshot, so the checkpoint is read before and after: the
/// engine commits state and checkpoint in one batch, so an unchanged checkpoint means no
/// batch landed during the scan. `None` when every attempt saw one land.
pub fn load_model(tree: &sled::Tree) -> Result<Option<SalesModel>, ModelError> {
    for _ in 0..LOAD_ATTEMPTS {
        let before = checkpoint_of(tree)?;
        let mut model = SalesModel::default();
        for item in tree.iter() {
            let (key, value) = item.map_err(|e| ModelError::Corrupt(e.to_string()))?;
            if key.first() == Some(&0) {
                continue; // the engine's checkpoint
            }
            if model.len() >= limits::PIPELINE_MODEL_ENTITIES_MAX {
                return Err(ModelError::TooLarge(format!(
                    "the sales model holds more than {} records",
                    limits::PIPELINE_MODEL_ENTITIES_MAX
                )));
            }
            model.put(decode_record(key[0], &value).map_err(ModelError::Corrupt)?);
        }
        if checkpoint_of(tree)? == before {
            model.position = before;
            return Ok(Some(model));
        }
    }
    Ok(None)
}

/// Folds the sales events after `model.position`, up to position `bound` (inclusive),
/// that `include` accepts into `model`, with [`fold_event`]. Bounded by
/// [`limits::PIPELINE_AS_OF_EVENTS_MAX`] events per call.
pub fn fold_into(
    log: &Log,
    model: &mut SalesModel,
    bound: u64,
    include: &dyn Fn(&StoredEvent) -> bool,
) -> Result<(), ModelError> {
    let filter = sales_filter();
    let mut from = model.position + 1;
    let mut folded = 0usize;
    while from <= bound {
        let page = log.read_all(from, false, limits::PROJECTION_READ_PAGE_EVENTS, &filter)?;
        for logged in &page.events {
            let e = &logged.event;
            if e.position > bound {
                return Ok(());
            }
            if !include(e) {
                continue;
            }
            folded += 1;
            if folded > limits::PIPELINE_AS_OF_EVENTS_MAX {
                return Err(ModelError::TooLarge(format!(
                    "one pipeline read folds at most {} events",
                    limits::PIPELINE_AS_OF_EVENTS_MAX
                )));
            }
            let event = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(
                |error| ModelError::Corrupt(format!("event at position {}: {error}", e.position)),
            )?;
            model.apply(At::of(e), &event);
        }
        if page.end_reached || page.next_cursor <= from {
            break;
        }
        from = page.next_cursor;
    }
    Ok(())
}

/// Replays the sales streams of the log into a new model, through the events `include`
/// accepts up to position `bound` (inclusive): the as-of read, with the projection's own
/// fold. The model's position is that of the last event folded.
pub fn fold_log(
    log: &Log,
    bound: u64,
    include: &dyn Fn(&StoredEvent) -> bool,
) -> Result<SalesModel, ModelError> {
    let mut model = SalesModel::default();
    fold_into(log, &mut model, bound, include)?;
    Ok(model)
}

/// The stage of a pipeline definition, or a placeholder for a stage it no longer has
/// (a deal can only be in a removed stage through a race with ChangePipeline).
pub fn stage_or_placeholder(def: &PipelineDef, stage_id: &str) -> Stage {
    def.stage(stage_id).cloned().unwrap_or_else(|| Stage {
        stage_id: stage_id.to_owned(),
        name: stage_id.to_owned(),
        probability: 0,
        kind: StageKind::Open,
    })
}
