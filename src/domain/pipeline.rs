//! The sales aggregates — accounts, pipelines, leads, deals, tasks — with the state their
//! rules need (folded from their own streams) and the pure decision functions of the
//! Pipeline service (`(state, command) -> events | rule error`).
//!
//! Streams: `account-<id>`, `pipeline-<id>`, `lead-<id>`, `deal-<id>`, `task-<id>`.
//! Cross-stream facts (does the customer exist, which stages hold deals, the deal's
//! pipeline) are plain inputs the edge read; qualifying a lead appends to the lead's and
//! the new deal's streams in one atomic multi-stream append.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::DomainEvent;
use super::events::{
    AccountContactLinked, AccountContactUnlinked, AccountCreated, AccountOwnerAssigned,
    AccountUpdated, ContactRole, DealChanged, DealLost, DealOpened, DealReopened, DealStageMoved,
    DealWon, LeadAssigned, LeadCaptured, LeadDisqualified, LeadQualified, PipelineChanged,
    PipelineDefined, Stage, StageKind, TaskCancelled, TaskCompleted, TaskCreated,
};

/// `account-<id>`.
pub fn account_stream(id: Uuid) -> String {
    format!("account-{id}")
}

/// `pipeline-<id>`.
pub fn pipeline_stream(id: Uuid) -> String {
    format!("pipeline-{id}")
}

/// `lead-<id>`.
pub fn lead_stream(id: Uuid) -> String {
    format!("lead-{id}")
}

/// `deal-<id>`.
pub fn deal_stream(id: Uuid) -> String {
    format!("deal-{id}")
}

/// `task-<id>`.
pub fn task_stream(id: Uuid) -> String {
    format!("task-{id}")
}

/// The stream prefixes of the sales model (what the pipeline read model folds).
pub const SALES_STREAM_PREFIXES: [&str; 5] = ["account-", "pipeline-", "lead-", "deal-", "task-"];

/// Why a sales command was refused. Nothing was appended in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SalesRuleError {
    /// The account, pipeline, lead, deal, task or customer does not exist (`NOT_FOUND`).
    #[error("{what} {id} does not exist")]
    NotFound {
        /// `account`, `pipeline`, `lead`, `deal`, `task` or `customer`.
        what: &'static str,
        /// Its id.
        id: Uuid,
    },
    /// Creating something whose id is taken (`ALREADY_EXISTS`).
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// What.
        what: &'static str,
        /// Its id.
        id: Uuid,
    },
    /// The customer is already a contact of the account with that role (`ALREADY_EXISTS`).
    #[error("customer {customer} is already linked to account {account} with that role")]
    ContactAlreadyLinked {
        /// The account.
        account: Uuid,
        /// The customer.
        customer: Uuid,
    },
    /// Unlinking a customer that is not a contact (`FAILED_PRECONDITION`).
    #[error("customer {customer} is not a contact of account {account}")]
    ContactNotLinked {
        /// The account.
        account: Uuid,
        /// The customer.
        customer: Uuid,
    },
    /// A pipeline change would remove a stage that has deals (`FAILED_PRECONDITION`).
    #[error("stage {0:?} has deals and cannot be removed; move its deals first")]
    StageInUse(String),
    /// A stage that is not in the deal's pipeline (`FAILED_PRECONDITION`).
    #[error("stage {0:?} is not a stage of the deal's pipeline")]
    UnknownStage(String),
    /// A stage of the wrong kind for the command (`FAILED_PRECONDITION`): deals are
    /// opened into and moved between open stages; won and lost stages are reached with
    /// WinDeal / LoseDeal.
    #[error("stage {stage:?} is a {actual:?} stage; this needs a {wanted:?} stage")]
    WrongStageKind {
        /// The stage.
        stage: String,
        /// The kind needed.
        wanted: StageKind,
        /// Its kind.
        actual: StageKind,
    },
    /// Moving a deal into the stage it is in (`FAILED_PRECONDITION`).
    #[error("the deal is already in stage {0:?}")]
    SameStage(String),
    /// The deal is won or lost: only ReopenDeal applies (`FAILED_PRECONDITION`).
    #[error("deal {0} is closed (won or lost); reopen it first")]
    DealClosed(Uuid),
    /// Reopening a deal that is open (`FAILED_PRECONDITION`).
    #[error("deal {0} is open")]
    DealNotClosed(Uuid),
    /// A deal currency the pipeline does not allow (`FAILED_PRECONDITION`).
    #[error("pipeline {pipeline} does not take deals in {currency}")]
    CurrencyNotAllowed {
        /// The pipeline.
        pipeline: Uuid,
        /// The currency.
        currency: String,
    },
    /// The lead was already qualified or disqualified (`FAILED_PRECONDITION`).
    #[error("lead {0} is already qualified or disqualified")]
    LeadClosed(Uuid),
    /// Qualifying a lead that has neither a customer nor an account, and none was given
    /// (`FAILED_PRECONDITION`): register the customer first (Customers service).
    #[error("lead {0} has no customer or account; register the customer and pass its id")]
    LeadWithoutCustomer(Uuid),
    /// The task was already completed or cancelled (`FAILED_PRECONDITION`).
    #[error("task {0} is already completed or cancelled")]
    TaskClosed(Uuid),
}

/// `Err(NotFound)` unless `exists`: for references to other aggregates.
pub fn require(what: &'static str, id: Uuid, exists: bool) -> Result<(), SalesRuleError> {
    if exists {
        Ok(())
    } else {
        Err(SalesRuleError::NotFound { what, id })
    }
}

// ---------------------------------------------------------------------------------------
// States
// ---------------------------------------------------------------------------------------

/// What the account rules need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Created.
    pub exists: bool,
    /// Contacts and their roles.
    pub contacts: BTreeMap<Uuid, ContactRole>,
}

impl AccountState {
    /// Folds one event of the account's stream.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::AccountCreated(_) => self.exists = true,
            DomainEvent::AccountContactLinked(e) => {
                self.contacts.insert(e.customer_id, e.role);
            }
            DomainEvent::AccountContactUnlinked(e) => {
                self.contacts.remove(&e.customer_id);
            }
            _ => {}
        }
    }
}

/// A pipeline's current definition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineDef {
    /// Name.
    pub name: String,
    /// Allowed currencies (empty: any).
    pub currencies: Vec<String>,
    /// Stages in board order.
    pub stages: Vec<Stage>,
}

impl PipelineDef {
    /// The stage with `stage_id`.
    pub fn stage(&self, stage_id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.stage_id == stage_id)
    }

    /// The first stage of `kind`.
    pub fn first_of(&self, kind: StageKind) -> Option<&Stage> {
        self.stages.iter().find(|s| s.kind == kind)
    }
}

/// What the pipeline rules need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineState {
    /// The definition, once defined.
    pub def: Option<PipelineDef>,
}

impl PipelineState {
    /// Folds one event of the pipeline's stream.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::PipelineDefined(e) => {
                self.def = Some(PipelineDef {
                    name: e.name.clone(),
                    currencies: e.currencies.clone(),
                    stages: e.stages.clone(),
                });
            }
            DomainEvent::PipelineChanged(e) => {
                self.def = Some(PipelineDef {
                    name: e.name.clone(),
                    currencies: e.currencies.clone(),
                    stages: e.stages.clone(),
                });
            }
            _ => {}
        }
    }
}

/// Where a lead stands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum LeadStatus {
    /// Captured, not decided yet.
    #[default]
    Open,
    /// Qualified into a deal.
    Qualified,
    /// Disqualified.
    Disqualified,
}

/// What the lead rules need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeadState {
    /// Captured.
    pub exists: bool,
    /// Status.
    pub status: LeadStatus,
    /// The customer it is.
    pub customer_id: Option<Uuid>,
    /// The account it belongs to.
    pub account_id: Option<Uuid>,
    /// The owner.
    pub owner: String,
}

impl LeadState {
    /// Folds one event of the lead's stream.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::LeadCaptured(e) => {
                self.exists = true;
                self.customer_id = e.customer_id;
                self.account_id = e.account_id;
            }
            DomainEvent::LeadAssigned(e) => self.owner = e.owner.clone(),
            DomainEvent::LeadQualified(e) => {
                self.status = LeadStatus::Qualified;
                self.customer_id = e.customer_id.or(self.customer_id);
            }
            DomainEvent::LeadDisqualified(_) => self.status = LeadStatus::Disqualified,
            _ => {}
        }
    }
}

/// Where a deal stands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum DealStatus {
    /// Being worked.
    #[default]
    Open,
    /// Won.
    Won,
    /// Lost.
    Lost,
}

/// What the deal rules need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DealState {
    /// Opened.
    pub exists: bool,
    /// Its pipeline.
    pub pipeline_id: Uuid,
    /// The stage it is in.
    pub stage_id: String,
    /// The open stage it was in before it was won or lost.
    pub last_open_stage_id: String,
    /// Status.
    pub status: DealStatus,
}

impl DealState {
    /// Folds one event of the deal's stream.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::DealOpened(e) => {
                self.exists = true;
                self.pipeline_id = e.pipeline_id;
                self.stage_id = e.stage_id.clone();
                self.last_open_stage_id = e.stage_id.clone();
            }
            DomainEvent::DealStageMoved(e) => {
                self.stage_id = e.to_stage_id.clone();
                self.last_open_stage_id = e.to_stage_id.clone();
            }
            DomainEvent::DealWon(e) => {
                self.stage_id = e.stage_id.clone();
                self.status = DealStatus::Won;
            }
            DomainEvent::DealLost(e) => {
                self.stage_id = e.stage_id.clone();
                self.status = DealStatus::Lost;
            }
            DomainEvent::DealReopened(e) => {
                self.stage_id = e.stage_id.clone();
                self.last_open_stage_id = e.stage_id.clone();
                self.status = DealStatus::Open;
            }
            _ => {}
        }
    }
}

/// Where a task stands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum TaskStatus {
    /// To do.
    #[default]
    Open,
    /// Done.
    Completed,
    /// Cancelled.
    Cancelled,
}

/// What the task rules need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    /// Created.
    pub exists: bool,
    /// Status.
    pub status: TaskStatus,
}

impl TaskState {
    /// Folds one event of the task's stream.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::TaskCreated(_) => self.exists = true,
            DomainEvent::TaskCompleted(_) => self.status = TaskStatus::Completed,
            DomainEvent::TaskCancelled(_) => self.status = TaskStatus::Cancelled,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------

type Decided = Result<Vec<DomainEvent>, SalesRuleError>;

/// CreateAccount: the id must be new.
pub fn create_account(state: &AccountState, e: AccountCreated) -> Decided {
    if state.exists {
        return Err(SalesRuleError::AlreadyExists {
            what: "account",
            id: e.account_id,
        });
    }
    Ok(vec![DomainEvent::AccountCreated(e)])
}

/// UpdateAccount: the account must exist.
pub fn update_account(state: &AccountState, e: AccountUpdated) -> Decided {
    require("account", e.account_id, state.exists)?;
    Ok(vec![DomainEvent::AccountUpdated(e)])
}

/// LinkContact: an existing account and customer; linking again with the same role is
/// a duplicate, with another role a role change.
pub fn link_contact(
    state: &AccountState,
    e: AccountContactLinked,
    customer_exists: bool,
) -> Decided {
    require("account", e.account_id, state.exists)?;
    require("customer", e.customer_id, customer_exists)?;
    if state.contacts.get(&e.customer_id) == Some(&e.role) {
        return Err(SalesRuleError::ContactAlreadyLinked {
            account: e.account_id,
            customer: e.customer_id,
        });
    }
    Ok(vec![DomainEvent::AccountContactLinked(e)])
}

/// UnlinkContact: the customer must be a contact.
pub fn unlink_contact(state: &AccountState, e: AccountContactUnlinked) -> Decided {
    require("account", e.account_id, state.exists)?;
    if !state.contacts.contains_key(&e.customer_id) {
        return Err(SalesRuleError::ContactNotLinked {
            account: e.account_id,
            customer: e.customer_id,
        });
    }
    Ok(vec![DomainEvent::AccountContactUnlinked(e)])
}

/// AssignAccountOwner: the account must exist.
pub fn assign_account_owner(state: &AccountState, e: AccountOwnerAssigned) -> Decided {
    require("account", e.account_id, state.exists)?;
    Ok(vec![DomainEvent::AccountOwnerAssigned(e)])
}

/// DefinePipeline: the id must be new.
pub fn define_pipeline(state: &PipelineState, e: PipelineDefined) -> Decided {
    if state.def.is_some() {
        return Err(SalesRuleError::AlreadyExists {
            what: "pipeline",
            id: e.pipeline_id,
        });
    }
    Ok(vec![DomainEvent::PipelineDefined(e)])
}

/// ChangePipeline: the pipeline exists and no stage that has deals (`stages_with_deals`,
/// from the read model) disappears.
pub fn change_pipeline(
    state: &PipelineState,
    e: PipelineChanged,
    stages_with_deals: &BTreeSet<String>,
) -> Decided {
    require("pipeline", e.pipeline_id, state.def.is_some())?;
    for stage in stages_with_deals {
        if !e.stages.iter().any(|s| &s.stage_id == stage) {
            return Err(SalesRuleError::StageInUse(stage.clone()));
        }
    }
    Ok(vec![DomainEvent::PipelineChanged(e)])
}

/// CaptureLead: the id must be new.
pub fn capture_lead(state: &LeadState, e: LeadCaptured) -> Decided {
    if state.exists {
        return Err(SalesRuleError::AlreadyExists {
            what: "lead",
            id: e.lead_id,
        });
    }
    Ok(vec![DomainEvent::LeadCaptured(e)])
}

/// AssignLead: an open lead.
pub fn assign_lead(state: &LeadState, e: LeadAssigned) -> Decided {
    require("lead", e.lead_id, state.exists)?;
    if state.status != LeadStatus::Open {
        return Err(SalesRuleError::LeadClosed(e.lead_id));
    }
    Ok(vec![DomainEvent::LeadAssigned(e)])
}

/// DisqualifyLead: an open lead.
pub fn disqualify_lead(state: &LeadState, e: LeadDisqualified) -> Decided {
    require("lead", e.lead_id, state.exists)?;
    if state.status != LeadStatus::Open {
        return Err(SalesRuleError::LeadClosed(e.lead_id));
    }
    Ok(vec![DomainEvent::LeadDisqualified(e)])
}

/// What qualifying a lead appends: the lead's event and the new deal's.
#[derive(Clone, Debug, PartialEq)]
pub struct Qualified {
    /// For `lead-<id>`.
    pub lead: Vec<DomainEvent>,
    /// For `deal-<id>`.
    pub deal: Vec<DomainEvent>,
}

/// QualifyLead: an open lead becomes a deal, linked both ways. The deal's customer is the
/// one given (an existing customer the edge checked), else the lead's; its account the
/// one in `deal`, else the lead's; the deal must have one of the two. The deal follows
/// the OpenDeal rules.
pub fn qualify_lead(
    lead: &LeadState,
    lead_id: Uuid,
    customer_id: Option<Uuid>,
    deal: &DealState,
    pipeline: &PipelineState,
    mut opened: DealOpened,
) -> Result<Qualified, SalesRuleError> {
    require("lead", lead_id, lead.exists)?;
    if lead.status != LeadStatus::Open {
        return Err(SalesRuleError::LeadClosed(lead_id));
    }
    let customer_id = customer_id.or(lead.customer_id);
    opened.customer_id = customer_id;
    opened.account_id = opened.account_id.or(lead.account_id);
    opened.lead_id = Some(lead_id);
    if opened.customer_id.is_none() && opened.account_id.is_none() {
        return Err(SalesRuleError::LeadWithoutCustomer(lead_id));
    }
    if opened.owner.is_empty() {
        opened.owner = lead.owner.clone();
    }
    let deal_id = opened.deal_id;
    let deal_events = open_deal(deal, pipeline, opened)?;
    Ok(Qualified {
        lead: vec![DomainEvent::LeadQualified(LeadQualified {
            lead_id,
            customer_id,
            deal_id,
        })],
        deal: deal_events,
    })
}

fn pipeline_def(pipeline: &PipelineState, id: Uuid) -> Result<&PipelineDef, SalesRuleError> {
    pipeline.def.as_ref().ok_or(SalesRuleError::NotFound {
        what: "pipeline",
        id,
    })
}

fn stage_of_kind<'a>(
    def: &'a PipelineDef,
    stage_id: &str,
    wanted: StageKind,
) -> Result<&'a Stage, SalesRuleError> {
    let stage = def
        .stage(stage_id)
        .ok_or_else(|| SalesRuleError::UnknownStage(stage_id.to_owned()))?;
    if stage.kind != wanted {
        return Err(SalesRuleError::WrongStageKind {
            stage: stage_id.to_owned(),
            wanted,
            actual: stage.kind,
        });
    }
    Ok(stage)
}

/// OpenDeal: a new id, an existing pipeline, an open stage of it, a currency it takes.
pub fn open_deal(deal: &DealState, pipeline: &PipelineState, e: DealOpened) -> Decided {
    if deal.exists {
        return Err(SalesRuleError::AlreadyExists {
            what: "deal",
            id: e.deal_id,
        });
    }
    let def = pipeline_def(pipeline, e.pipeline_id)?;
    stage_of_kind(def, &e.stage_id, StageKind::Open)?;
    if !def.currencies.is_empty() && !def.currencies.contains(&e.currency) {
        return Err(SalesRuleError::CurrencyNotAllowed {
            pipeline: e.pipeline_id,
            currency: e.currency,
        });
    }
    Ok(vec![DomainEvent::DealOpened(e)])
}

fn open_deal_def<'a>(
    deal: &DealState,
    pipeline: &'a PipelineState,
    deal_id: Uuid,
) -> Result<&'a PipelineDef, SalesRuleError> {
    require("deal", deal_id, deal.exists)?;
    if deal.status != DealStatus::Open {
        return Err(SalesRuleError::DealClosed(deal_id));
    }
    pipeline_def(pipeline, deal.pipeline_id)
}

/// MoveDealStage: an open deal, to another open stage of its pipeline.
pub fn move_deal_stage(
    deal: &DealState,
    pipeline: &PipelineState,
    deal_id: Uuid,
    to_stage_id: &str,
) -> Decided {
    let def = open_deal_def(deal, pipeline, deal_id)?;
    stage_of_kind(def, to_stage_id, StageKind::Open)?;
    if deal.stage_id == to_stage_id {
        return Err(SalesRuleError::SameStage(to_stage_id.to_owned()));
    }
    Ok(vec![DomainEvent::DealStageMoved(DealStageMoved {
        deal_id,
        from_stage_id: deal.stage_id.clone(),
        to_stage_id: to_stage_id.to_owned(),
    })])
}

/// ChangeDeal: an open deal.
pub fn change_deal(deal: &DealState, e: DealChanged) -> Decided {
    require("deal", e.deal_id, deal.exists)?;
    if deal.status != DealStatus::Open {
        return Err(SalesRuleError::DealClosed(e.deal_id));
    }
    Ok(vec![DomainEvent::DealChanged(e)])
}

fn target_stage(
    def: &PipelineDef,
    given: Option<&str>,
    kind: StageKind,
) -> Result<String, SalesRuleError> {
    match given {
        Some(stage) => stage_of_kind(def, stage, kind).map(|s| s.stage_id.clone()),
        None => def
            .first_of(kind)
            .map(|s| s.stage_id.clone())
            .ok_or_else(|| SalesRuleError::UnknownStage(format!("(any {kind:?} stage)"))),
    }
}

/// WinDeal: an open deal enters a won stage (the one given, else the pipeline's first).
pub fn win_deal(
    deal: &DealState,
    pipeline: &PipelineState,
    deal_id: Uuid,
    stage: Option<&str>,
) -> Decided {
    let def = open_deal_def(deal, pipeline, deal_id)?;
    let stage_id = target_stage(def, stage, StageKind::Won)?;
    Ok(vec![DomainEvent::DealWon(DealWon {
        deal_id,
        from_stage_id: deal.stage_id.clone(),
        stage_id,
    })])
}

/// LoseDeal: an open deal enters a lost stage, with the stage it was lost from.
pub fn lose_deal(
    deal: &DealState,
    pipeline: &PipelineState,
    deal_id: Uuid,
    stage: Option<&str>,
    reason: String,
) -> Decided {
    let def = open_deal_def(deal, pipeline, deal_id)?;
    let stage_id = target_stage(def, stage, StageKind::Lost)?;
    Ok(vec![DomainEvent::DealLost(DealLost {
        deal_id,
        from_stage_id: deal.stage_id.clone(),
        stage_id,
        reason,
    })])
}

/// ReopenDeal: a won or lost deal goes back into an open stage: the one given, else the
/// one it was closed from (if the pipeline still has it), else the first open stage.
pub fn reopen_deal(
    deal: &DealState,
    pipeline: &PipelineState,
    deal_id: Uuid,
    stage: Option<&str>,
) -> Decided {
    require("deal", deal_id, deal.exists)?;
    if deal.status == DealStatus::Open {
        return Err(SalesRuleError::DealNotClosed(deal_id));
    }
    let def = pipeline_def(pipeline, deal.pipeline_id)?;
    let stage_id = match stage {
        Some(stage) => stage_of_kind(def, stage, StageKind::Open)?.stage_id.clone(),
        None => match def.stage(&deal.last_open_stage_id) {
            Some(s) if s.kind == StageKind::Open => s.stage_id.clone(),
            _ => target_stage(def, None, StageKind::Open)?,
        },
    };
    Ok(vec![DomainEvent::DealReopened(DealReopened {
        deal_id,
        from_stage_id: deal.stage_id.clone(),
        stage_id,
    })])
}

/// CreateTask: the id must be new (the edge checked the deal / account exist).
pub fn create_task(state: &TaskState, e: TaskCreated) -> Decided {
    if state.exists {
        return Err(SalesRuleError::AlreadyExists {
            what: "task",
            id: e.task_id,
        });
    }
    Ok(vec![DomainEvent::TaskCreated(e)])
}

/// CompleteTask: an open task.
pub fn complete_task(state: &TaskState, task_id: Uuid) -> Decided {
    require("task", task_id, state.exists)?;
    if state.status != TaskStatus::Open {
        return Err(SalesRuleError::TaskClosed(task_id));
    }
    Ok(vec![DomainEvent::TaskCompleted(TaskCompleted { task_id })])
}

/// CancelTask: an open task.
pub fn cancel_task(state: &TaskState, task_id: Uuid) -> Decided {
    require("task", task_id, state.exists)?;
    if state.status != TaskStatus::Open {
        return Err(SalesRuleError::TaskClosed(task_id));
    }
    Ok(vec![DomainEvent::TaskCancelled(TaskCancelled { task_id })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::common::CalendarDate;

    const PIPE: Uuid = Uuid::from_u128(0x91);
    const DEAL: Uuid = Uuid::from_u128(0xd1);
    const LEAD: Uuid = Uuid::from_u128(0x1e);
    const ADA: Uuid = Uuid::from_u128(0xada);

    fn stage(id: &str, probability: u8, kind: StageKind) -> Stage {
        Stage {
            stage_id: id.into(),
            name: id.into(),
            probability,
            kind,
        }
    }

    fn defined() -> PipelineDefined {
        PipelineDefined {
            pipeline_id: PIPE,
            name: "New business".into(),
            currencies: vec!["EUR".into()],
            stages: vec![
                stage("qualify", 10, StageKind::Open),
                stage("proposal", 50, StageKind::Open),
                stage("won", 100, StageKind::Won),
                stage("lost", 0, StageKind::Lost),
            ],
        }
    }

    fn pipeline() -> PipelineState {
        let mut state = PipelineState::default();
        state.apply(&DomainEvent::PipelineDefined(defined()));
        state
    }

    fn opened(stage: &str) -> DealOpened {
        DealOpened {
            deal_id: DEAL,
            pipeline_id: PIPE,
            stage_id: stage.into(),
            title: "ACME".into(),
            amount_minor: 10_000,
            currency: "EUR".into(),
            expected_close: CalendarDate::parse("2026-03-31").unwrap(),
            owner: "rep-1".into(),
            customer_id: Some(ADA),
            account_id: None,
            lead_id: None,
        }
    }

    /// Given these events of the deal's stream.
    fn deal(events: Vec<DomainEvent>) -> DealState {
        let mut state = DealState::default();
        for event in &events {
            state.apply(event);
        }
        state
    }

    #[test]
    fn a_deal_opens_only_into_an_open_stage_of_an_existing_pipeline_in_its_currency() {
        let none = DealState::default();
        assert_eq!(
            open_deal(&none, &PipelineState::default(), opened("qualify")),
            Err(SalesRuleError::NotFound {
                what: "pipeline",
                id: PIPE
            })
        );
        assert!(matches!(
            open_deal(&none, &pipeline(), opened("won")),
            Err(SalesRuleError::WrongStageKind { .. })
        ));
        assert_eq!(
            open_deal(&none, &pipeline(), opened("nope")),
            Err(SalesRuleError::UnknownStage("nope".into()))
        );
        let mut usd = opened("qualify");
        usd.currency = "USD".into();
        assert!(matches!(
            open_deal(&none, &pipeline(), usd),
            Err(SalesRuleError::CurrencyNotAllowed { .. })
        ));
        let ok = opened("qualify");
        assert_eq!(
            open_deal(&none, &pipeline(), ok.clone()),
            Ok(vec![DomainEvent::DealOpened(ok.clone())])
        );
        let existing = deal(vec![DomainEvent::DealOpened(ok.clone())]);
        assert!(matches!(
            open_deal(&existing, &pipeline(), ok),
            Err(SalesRuleError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn stage_moves_stay_in_the_pipeline_and_stop_at_won_or_lost_until_reopened() {
        let open = deal(vec![DomainEvent::DealOpened(opened("qualify"))]);
        assert_eq!(
            move_deal_stage(&open, &pipeline(), DEAL, "proposal"),
            Ok(vec![DomainEvent::DealStageMoved(DealStageMoved {
                deal_id: DEAL,
                from_stage_id: "qualify".into(),
                to_stage_id: "proposal".into(),
            })])
        );
        assert_eq!(
            move_deal_stage(&open, &pipeline(), DEAL, "qualify"),
            Err(SalesRuleError::SameStage("qualify".into()))
        );
        assert_eq!(
            move_deal_stage(&open, &pipeline(), DEAL, "elsewhere"),
            Err(SalesRuleError::UnknownStage("elsewhere".into()))
        );
        assert!(matches!(
            move_deal_stage(&open, &pipeline(), DEAL, "won"),
            Err(SalesRuleError::WrongStageKind { .. })
        ));
        let lost = lose_deal(&open, &pipeline(), DEAL, None, "price".into()).unwrap();
        assert_eq!(
            lost,
            vec![DomainEvent::DealLost(DealLost {
                deal_id: DEAL,
                from_stage_id: "qualify".into(),
                stage_id: "lost".into(),
                reason: "price".into(),
            })]
        );
        let closed = deal(vec![
            DomainEvent::DealOpened(opened("qualify")),
            lost[0].clone(),
        ]);
        assert_eq!(
            move_deal_stage(&closed, &pipeline(), DEAL, "proposal"),
            Err(SalesRuleError::DealClosed(DEAL))
        );
        assert_eq!(
            win_deal(&closed, &pipeline(), DEAL, None),
            Err(SalesRuleError::DealClosed(DEAL))
        );
        assert_eq!(
            reopen_deal(&open, &pipeline(), DEAL, None),
            Err(SalesRuleError::DealNotClosed(DEAL))
        );
        let reopened = reopen_deal(&closed, &pipeline(), DEAL, None).unwrap();
        assert_eq!(
            reopened,
            vec![DomainEvent::DealReopened(DealReopened {
                deal_id: DEAL,
                from_stage_id: "lost".into(),
                stage_id: "qualify".into(),
            })]
        );
        let again = deal(vec![
            DomainEvent::DealOpened(opened("qualify")),
            lost[0].clone(),
            reopened[0].clone(),
        ]);
        assert!(win_deal(&again, &pipeline(), DEAL, Some("won")).is_ok());
        assert!(matches!(
            win_deal(&again, &pipeline(), DEAL, Some("lost")),
            Err(SalesRuleError::WrongStageKind { .. })
        ));
    }

    #[test]
    fn a_stage_with_deals_cannot_be_removed() {
        let mut change = PipelineChanged {
            pipeline_id: PIPE,
            name: "NB".into(),
            currencies: vec![],
            stages: defined().stages,
        };
        change.stages.retain(|s| s.stage_id != "proposal");
        let in_use = BTreeSet::from(["proposal".to_owned()]);
        assert_eq!(
            change_pipeline(&pipeline(), change.clone(), &in_use),
            Err(SalesRuleError::StageInUse("proposal".into()))
        );
        // Reordering keeps every stage: allowed.
        let mut reordered = change.clone();
        reordered.stages = defined().stages.into_iter().rev().collect();
        assert!(change_pipeline(&pipeline(), reordered, &in_use).is_ok());
        assert!(change_pipeline(&pipeline(), change, &BTreeSet::new()).is_ok());
    }

    #[test]
    fn qualifying_a_lead_opens_a_deal_linked_both_ways() {
        let mut lead = LeadState::default();
        lead.apply(&DomainEvent::LeadCaptured(LeadCaptured {
            lead_id: LEAD,
            source: crate::domain::events::LeadSource::WebForm,
            campaign_id: String::new(),
            customer_id: None,
            account_id: None,
            company_name: "ACME".into(),
        }));
        let mut request = opened("qualify");
        request.customer_id = None;
        assert_eq!(
            qualify_lead(
                &lead,
                LEAD,
                None,
                &DealState::default(),
                &pipeline(),
                request.clone()
            ),
            Err(SalesRuleError::LeadWithoutCustomer(LEAD))
        );
        let done = qualify_lead(
            &lead,
            LEAD,
            Some(ADA),
            &DealState::default(),
            &pipeline(),
            request,
        )
        .unwrap();
        assert_eq!(
            done.lead,
            vec![DomainEvent::LeadQualified(LeadQualified {
                lead_id: LEAD,
                customer_id: Some(ADA),
                deal_id: DEAL
            })]
        );
        let DomainEvent::DealOpened(deal) = &done.deal[0] else {
            panic!("a deal")
        };
        assert_eq!((deal.lead_id, deal.customer_id), (Some(LEAD), Some(ADA)));
        lead.apply(&done.lead[0]);
        assert_eq!(
            disqualify_lead(
                &lead,
                LeadDisqualified {
                    lead_id: LEAD,
                    reason: "spam".into()
                }
            ),
            Err(SalesRuleError::LeadClosed(LEAD))
        );
    }

    #[test]
    fn contacts_link_once_per_role_and_unlink_only_when_linked() {
        let mut account = AccountState::default();
        let link = AccountContactLinked {
            account_id: PIPE,
            customer_id: ADA,
            role: ContactRole::Buyer,
        };
        assert!(matches!(
            link_contact(&account, link.clone(), true),
            Err(SalesRuleError::NotFound {
                what: "account",
                ..
            })
        ));
        account.exists = true;
        assert!(matches!(
            link_contact(&account, link.clone(), false),
            Err(SalesRuleError::NotFound {
                what: "customer",
                ..
            })
        ));
        account.apply(&link_contact(&account, link.clone(), true).unwrap()[0]);
        assert!(matches!(
            link_contact(&account, link.clone(), true),
            Err(SalesRuleError::ContactAlreadyLinked { .. })
        ));
        let mut billing = link;
        billing.role = ContactRole::Billing;
        assert!(link_contact(&account, billing, true).is_ok());
        let unlink = AccountContactUnlinked {
            account_id: PIPE,
            customer_id: ADA,
        };
        account.apply(&unlink_contact(&account, unlink.clone()).unwrap()[0]);
        assert!(matches!(
            unlink_contact(&account, unlink),
            Err(SalesRuleError::ContactNotLinked { .. })
        ));
    }

    #[test]
    fn tasks_close_once() {
        let mut task = TaskState::default();
        assert!(matches!(
            complete_task(&task, DEAL),
            Err(SalesRuleError::NotFound { what: "task", .. })
        ));
        task.exists = true;
        task.apply(&complete_task(&task, DEAL).unwrap()[0]);
        assert_eq!(
            cancel_task(&task, DEAL),
            Err(SalesRuleError::TaskClosed(DEAL))
        );
    }
}
