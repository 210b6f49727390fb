//! Proto ⇄ domain conversion of the sales events (accounts, pipelines, leads, deals,
//! tasks). `convert.rs` calls [`Wire`] from its match arms, so every event still
//! converts in one place; messages are destructured field by field, so a new proto
//! field fails to compile until it is mapped.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::convert::{timestamp_from_us, timestamp_to_us, uuid_field};
use super::pb;
use crate::domain::Violations;
use crate::domain::common::CalendarDate;
use crate::domain::events::{
    AccountContactLinked, AccountContactUnlinked, AccountCreated, AccountOwnerAssigned,
    AccountProfile, AccountUpdated, ContactRole, DealChanged, DealLost, DealOpened, DealReopened,
    DealStageMoved, DealWon, LeadAssigned, LeadCaptured, LeadDisqualified, LeadQualified,
    LeadSource, PipelineChanged, PipelineDefined, SizeBand, Stage, StageKind, TaskCancelled,
    TaskCompleted, TaskCreated, TaskKind,
};
use crate::domain::pipeline::{DealStatus, LeadStatus, PipelineDef, TaskStatus};
use crate::projections::pipeline::{DealView, LeadView, TaskView};
use crate::projections::pipeline_queries::{AccountSummary, Board, ForecastRow, Metrics};

/// A domain event with a proto message of the same name.
pub trait Wire: Sized {
    /// The proto message.
    type Proto;
    /// Proto → domain; problems go into `v` (under the event's snake-case name).
    fn from_wire(proto: Self::Proto, v: &mut Violations) -> Self;
    /// Domain → proto.
    fn to_wire(self) -> Self::Proto;
}

fn enum_from<T: Copy>(field: &str, raw: i32, table: &[(i32, T)], v: &mut Violations) -> T {
    match table.iter().find(|(code, _)| *code == raw) {
        Some((_, value)) => *value,
        None => {
            v.add(field, format!("{raw} is not a known value"));
            table[0].1
        }
    }
}

fn enum_to<T: Copy + PartialEq>(value: T, table: &[(i32, T)]) -> i32 {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .map_or(0, |(code, _)| *code)
}

/// Proto ⇄ domain stage kinds.
pub const STAGE_KINDS: &[(i32, StageKind)] = &[
    (pb::StageKind::Unspecified as i32, StageKind::Unspecified),
    (pb::StageKind::Open as i32, StageKind::Open),
    (pb::StageKind::Won as i32, StageKind::Won),
    (pb::StageKind::Lost as i32, StageKind::Lost),
];

const SIZE_BANDS: &[(i32, SizeBand)] = &[
    (pb::SizeBand::Unspecified as i32, SizeBand::Unspecified),
    (pb::SizeBand::Micro as i32, SizeBand::Micro),
    (pb::SizeBand::Small as i32, SizeBand::Small),
    (pb::SizeBand::Medium as i32, SizeBand::Medium),
    (pb::SizeBand::Large as i32, SizeBand::Large),
    (pb::SizeBand::Enterprise as i32, SizeBand::Enterprise),
];

/// Proto ⇄ domain contact roles.
pub const CONTACT_ROLES: &[(i32, ContactRole)] = &[
    (
        pb::ContactRole::Unspecified as i32,
        ContactRole::Unspecified,
    ),
    (pb::ContactRole::Buyer as i32, ContactRole::Buyer),
    (
        pb::ContactRole::DecisionMaker as i32,
        ContactRole::DecisionMaker,
    ),
    (pb::ContactRole::Billing as i32, ContactRole::Billing),
    (pb::ContactRole::Technical as i32, ContactRole::Technical),
    (pb::ContactRole::Champion as i32, ContactRole::Champion),
    (pb::ContactRole::Other as i32, ContactRole::Other),
];

/// Proto ⇄ domain lead sources.
pub const LEAD_SOURCES: &[(i32, LeadSource)] = &[
    (pb::LeadSource::Unspecified as i32, LeadSource::Unspecified),
    (pb::LeadSource::WebForm as i32, LeadSource::WebForm),
    (pb::LeadSource::Event as i32, LeadSource::Event),
    (pb::LeadSource::Referral as i32, LeadSource::Referral),
    (pb::LeadSource::Campaign as i32, LeadSource::Campaign),
    (pb::LeadSource::Outbound as i32, LeadSource::Outbound),
    (pb::LeadSource::Other as i32, LeadSource::Other),
];

/// Proto ⇄ domain task kinds.
pub const TASK_KINDS: &[(i32, TaskKind)] = &[
    (pb::TaskKind::Unspecified as i32, TaskKind::Unspecified),
    (pb::TaskKind::Call as i32, TaskKind::Call),
    (pb::TaskKind::Email as i32, TaskKind::Email),
    (pb::TaskKind::Meeting as i32, TaskKind::Meeting),
    (pb::TaskKind::Todo as i32, TaskKind::Todo),
];

/// Proto enum value → domain, reporting unknown values on `field`.
pub fn lead_source_from(field: &str, raw: i32, v: &mut Violations) -> LeadSource {
    enum_from(field, raw, LEAD_SOURCES, v)
}

/// Domain lead source → proto.
pub fn lead_source_to(source: LeadSource) -> i32 {
    enum_to(source, LEAD_SOURCES)
}

/// Domain stage kind → proto.
pub fn stage_kind_to(kind: StageKind) -> i32 {
    enum_to(kind, STAGE_KINDS)
}

/// Domain contact role → proto.
pub fn contact_role_to(role: ContactRole) -> i32 {
    enum_to(role, CONTACT_ROLES)
}

/// Domain task kind → proto.
pub fn task_kind_to(kind: TaskKind) -> i32 {
    enum_to(kind, TASK_KINDS)
}

/// Domain size band → proto.
pub fn size_band_to(band: SizeBand) -> i32 {
    enum_to(band, SIZE_BANDS)
}

/// An optional UUID: empty is `None`.
pub fn optional_uuid(field: &str, text: &str, v: &mut Violations) -> Option<Uuid> {
    (!text.is_empty()).then(|| uuid_field(field, text, v))
}

fn optional_uuid_to(id: Option<Uuid>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

/// A required `YYYY-MM-DD` date (a placeholder 1970-01-01 when it is bad, reported).
pub fn date_from(field: &str, text: &str, v: &mut Violations) -> CalendarDate {
    match CalendarDate::parse(text) {
        Some(date) => date,
        None => {
            if text.is_empty() {
                v.add(field, "is required (a date YYYY-MM-DD)");
            } else {
                v.add(field, "must be a date YYYY-MM-DD");
            }
            CalendarDate {
                year: 1970,
                month: 1,
                day: 1,
            }
        }
    }
}

fn stages_from(f: &str, stages: Vec<pb::Stage>, v: &mut Violations) -> Vec<Stage> {
    stages
        .into_iter()
        .enumerate()
        .map(
            |(
                i,
                pb::Stage {
                    stage_id,
                    name,
                    probability,
                    kind,
                },
            )| Stage {
                stage_id,
                name,
                probability: u8::try_from(probability).unwrap_or_else(|_| {
                    v.add(
                        &format!("{f}.stages[{i}].probability"),
                        "must be 0..=100 (percent)",
                    );
                    0
                }),
                kind: enum_from(&format!("{f}.stages[{i}].kind"), kind, STAGE_KINDS, v),
            },
        )
        .collect()
}

/// Domain stages → proto.
pub fn stages_to(stages: Vec<Stage>) -> Vec<pb::Stage> {
    stages
        .into_iter()
        .map(|s| pb::Stage {
            stage_id: s.stage_id,
            name: s.name,
            probability: u32::from(s.probability),
            kind: stage_kind_to(s.kind),
        })
        .collect()
}

fn profile_from(
    f: &str,
    profile: Option<pb::AccountProfile>,
    v: &mut Violations,
) -> AccountProfile {
    let pb::AccountProfile {
        name,
        domain,
        industry,
        size_band,
        external_ids,
    } = profile.unwrap_or_default();
    AccountProfile {
        name,
        domain,
        industry,
        size_band: enum_from(&format!("{f}.size_band"), size_band, SIZE_BANDS, v),
        external_ids: external_ids.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

fn profile_to(profile: AccountProfile) -> Option<pb::AccountProfile> {
    let AccountProfile {
        name,
        domain,
        industry,
        size_band,
        external_ids,
    } = profile;
    Some(pb::AccountProfile {
        name,
        domain,
        industry,
        size_band: size_band_to(size_band),
        external_ids: external_ids.into_iter().collect(),
    })
}

impl Wire for AccountCreated {
    type Proto = pb::AccountCreated;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::AccountCreated {
            account_id,
            profile,
        } = p;
        let f = "account_created";
        Self {
            account_id: uuid_field(&format!("{f}.account_id"), &account_id, v),
            profile: profile_from(f, profile, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::AccountCreated {
            account_id: self.account_id.to_string(),
            profile: profile_to(self.profile),
        }
    }
}

impl Wire for AccountUpdated {
    type Proto = pb::AccountUpdated;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::AccountUpdated {
            account_id,
            profile,
        } = p;
        let f = "account_updated";
        Self {
            account_id: uuid_field(&format!("{f}.account_id"), &account_id, v),
            profile: profile_from(f, profile, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::AccountUpdated {
            account_id: self.account_id.to_string(),
            profile: profile_to(self.profile),
        }
    }
}

impl Wire for AccountContactLinked {
    type Proto = pb::AccountContactLinked;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::AccountContactLinked {
            account_id,
            customer_id,
            role,
        } = p;
        let f = "account_contact_linked";
        Self {
            account_id: uuid_field(&format!("{f}.account_id"), &account_id, v),
            customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
            role: enum_from(&format!("{f}.role"), role, CONTACT_ROLES, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::AccountContactLinked {
            account_id: self.account_id.to_string(),
            customer_id: self.customer_id.to_string(),
            role: contact_role_to(self.role),
        }
    }
}

impl Wire for AccountContactUnlinked {
    type Proto = pb::AccountContactUnlinked;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::AccountContactUnlinked {
            account_id,
            customer_id,
        } = p;
        let f = "account_contact_unlinked";
        Self {
            account_id: uuid_field(&format!("{f}.account_id"), &account_id, v),
            customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::AccountContactUnlinked {
            account_id: self.account_id.to_string(),
            customer_id: self.customer_id.to_string(),
        }
    }
}

impl Wire for AccountOwnerAssigned {
    type Proto = pb::AccountOwnerAssigned;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::AccountOwnerAssigned { account_id, owner } = p;
        Self {
            account_id: uuid_field("account_owner_assigned.account_id", &account_id, v),
            owner,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::AccountOwnerAssigned {
            account_id: self.account_id.to_string(),
            owner: self.owner,
        }
    }
}

impl Wire for PipelineDefined {
    type Proto = pb::PipelineDefined;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::PipelineDefined {
            pipeline_id,
            name,
            currencies,
            stages,
        } = p;
        let f = "pipeline_defined";
        Self {
            pipeline_id: uuid_field(&format!("{f}.pipeline_id"), &pipeline_id, v),
            name,
            currencies,
            stages: stages_from(f, stages, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::PipelineDefined {
            pipeline_id: self.pipeline_id.to_string(),
            name: self.name,
            currencies: self.currencies,
            stages: stages_to(self.stages),
        }
    }
}

impl Wire for PipelineChanged {
    type Proto = pb::PipelineChanged;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::PipelineChanged {
            pipeline_id,
            name,
            currencies,
            stages,
        } = p;
        let f = "pipeline_changed";
        Self {
            pipeline_id: uuid_field(&format!("{f}.pipeline_id"), &pipeline_id, v),
            name,
            currencies,
            stages: stages_from(f, stages, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::PipelineChanged {
            pipeline_id: self.pipeline_id.to_string(),
            name: self.name,
            currencies: self.currencies,
            stages: stages_to(self.stages),
        }
    }
}

impl Wire for LeadCaptured {
    type Proto = pb::LeadCaptured;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::LeadCaptured {
            lead_id,
            source,
            campaign_id,
            customer_id,
            account_id,
            company_name,
        } = p;
        let f = "lead_captured";
        Self {
            lead_id: uuid_field(&format!("{f}.lead_id"), &lead_id, v),
            source: lead_source_from(&format!("{f}.source"), source, v),
            campaign_id,
            customer_id: optional_uuid(&format!("{f}.customer_id"), &customer_id, v),
            account_id: optional_uuid(&format!("{f}.account_id"), &account_id, v),
            company_name,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::LeadCaptured {
            lead_id: self.lead_id.to_string(),
            source: lead_source_to(self.source),
            campaign_id: self.campaign_id,
            customer_id: optional_uuid_to(self.customer_id),
            account_id: optional_uuid_to(self.account_id),
            company_name: self.company_name,
        }
    }
}

impl Wire for LeadAssigned {
    type Proto = pb::LeadAssigned;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::LeadAssigned { lead_id, owner } = p;
        Self {
            lead_id: uuid_field("lead_assigned.lead_id", &lead_id, v),
            owner,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::LeadAssigned {
            lead_id: self.lead_id.to_string(),
            owner: self.owner,
        }
    }
}

impl Wire for LeadQualified {
    type Proto = pb::LeadQualified;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::LeadQualified {
            lead_id,
            customer_id,
            deal_id,
        } = p;
        let f = "lead_qualified";
        Self {
            lead_id: uuid_field(&format!("{f}.lead_id"), &lead_id, v),
            customer_id: optional_uuid(&format!("{f}.customer_id"), &customer_id, v),
            deal_id: uuid_field(&format!("{f}.deal_id"), &deal_id, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::LeadQualified {
            lead_id: self.lead_id.to_string(),
            customer_id: optional_uuid_to(self.customer_id),
            deal_id: self.deal_id.to_string(),
        }
    }
}

impl Wire for LeadDisqualified {
    type Proto = pb::LeadDisqualified;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::LeadDisqualified { lead_id, reason } = p;
        Self {
            lead_id: uuid_field("lead_disqualified.lead_id", &lead_id, v),
            reason,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::LeadDisqualified {
            lead_id: self.lead_id.to_string(),
            reason: self.reason,
        }
    }
}

impl Wire for DealOpened {
    type Proto = pb::DealOpened;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::DealOpened {
            deal_id,
            pipeline_id,
            stage_id,
            title,
            amount_minor,
            currency,
            expected_close,
            owner,
            customer_id,
            account_id,
            lead_id,
        } = p;
        let f = "deal_opened";
        Self {
            deal_id: uuid_field(&format!("{f}.deal_id"), &deal_id, v),
            pipeline_id: uuid_field(&format!("{f}.pipeline_id"), &pipeline_id, v),
            stage_id,
            title,
            amount_minor,
            currency,
            expected_close: date_from(&format!("{f}.expected_close"), &expected_close, v),
            owner,
            customer_id: optional_uuid(&format!("{f}.customer_id"), &customer_id, v),
            account_id: optional_uuid(&format!("{f}.account_id"), &account_id, v),
            lead_id: optional_uuid(&format!("{f}.lead_id"), &lead_id, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::DealOpened {
            deal_id: self.deal_id.to_string(),
            pipeline_id: self.pipeline_id.to_string(),
            stage_id: self.stage_id,
            title: self.title,
            amount_minor: self.amount_minor,
            currency: self.currency,
            expected_close: self.expected_close.to_string(),
            owner: self.owner,
            customer_id: optional_uuid_to(self.customer_id),
            account_id: optional_uuid_to(self.account_id),
            lead_id: optional_uuid_to(self.lead_id),
        }
    }
}

impl Wire for DealStageMoved {
    type Proto = pb::DealStageMoved;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::DealStageMoved {
            deal_id,
            from_stage_id,
            to_stage_id,
        } = p;
        Self {
            deal_id: uuid_field("deal_stage_moved.deal_id", &deal_id, v),
            from_stage_id,
            to_stage_id,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::DealStageMoved {
            deal_id: self.deal_id.to_string(),
            from_stage_id: self.from_stage_id,
            to_stage_id: self.to_stage_id,
        }
    }
}

impl Wire for DealChanged {
    type Proto = pb::DealChanged;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::DealChanged {
            deal_id,
            amount_minor,
            expected_close,
            owner,
        } = p;
        let f = "deal_changed";
        Self {
            deal_id: uuid_field(&format!("{f}.deal_id"), &deal_id, v),
            amount_minor,
            expected_close: (!expected_close.is_empty())
                .then(|| date_from(&format!("{f}.expected_close"), &expected_close, v)),
            owner,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::DealChanged {
            deal_id: self.deal_id.to_string(),
            amount_minor: self.amount_minor,
            expected_close: self
                .expected_close
                .map(|d| d.to_string())
                .unwrap_or_default(),
            owner: self.owner,
        }
    }
}

impl Wire for DealWon {
    type Proto = pb::DealWon;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::DealWon {
            deal_id,
            from_stage_id,
            stage_id,
        } = p;
        Self {
            deal_id: uuid_field("deal_won.deal_id", &deal_id, v),
            from_stage_id,
            stage_id,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::DealWon {
            deal_id: self.deal_id.to_string(),
            from_stage_id: self.from_stage_id,
            stage_id: self.stage_id,
        }
    }
}

impl Wire for DealLost {
    type Proto = pb::DealLost;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::DealLost {
            deal_id,
            from_stage_id,
            stage_id,
            reason,
        } = p;
        Self {
            deal_id: uuid_field("deal_lost.deal_id", &deal_id, v),
            from_stage_id,
            stage_id,
            reason,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::DealLost {
            deal_id: self.deal_id.to_string(),
            from_stage_id: self.from_stage_id,
            stage_id: self.stage_id,
            reason: self.reason,
        }
    }
}

impl Wire for DealReopened {
    type Proto = pb::DealReopened;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::DealReopened {
            deal_id,
            from_stage_id,
            stage_id,
        } = p;
        Self {
            deal_id: uuid_field("deal_reopened.deal_id", &deal_id, v),
            from_stage_id,
            stage_id,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::DealReopened {
            deal_id: self.deal_id.to_string(),
            from_stage_id: self.from_stage_id,
            stage_id: self.stage_id,
        }
    }
}

impl Wire for TaskCreated {
    type Proto = pb::TaskCreated;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::TaskCreated {
            task_id,
            deal_id,
            account_id,
            kind,
            title,
            due_at,
            assignee,
        } = p;
        let f = "task_created";
        let due_at_us = match due_at {
            Some(ts) => timestamp_to_us(&format!("{f}.due_at"), &ts, v).unwrap_or(0),
            None => {
                v.add(&format!("{f}.due_at"), "is required");
                0
            }
        };
        Self {
            task_id: uuid_field(&format!("{f}.task_id"), &task_id, v),
            deal_id: optional_uuid(&format!("{f}.deal_id"), &deal_id, v),
            account_id: optional_uuid(&format!("{f}.account_id"), &account_id, v),
            kind: enum_from(&format!("{f}.kind"), kind, TASK_KINDS, v),
            title,
            due_at_us,
            assignee,
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::TaskCreated {
            task_id: self.task_id.to_string(),
            deal_id: optional_uuid_to(self.deal_id),
            account_id: optional_uuid_to(self.account_id),
            kind: task_kind_to(self.kind),
            title: self.title,
            due_at: Some(timestamp_from_us(self.due_at_us)),
            assignee: self.assignee,
        }
    }
}

impl Wire for TaskCompleted {
    type Proto = pb::TaskCompleted;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::TaskCompleted { task_id } = p;
        Self {
            task_id: uuid_field("task_completed.task_id", &task_id, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::TaskCompleted {
            task_id: self.task_id.to_string(),
        }
    }
}

impl Wire for TaskCancelled {
    type Proto = pb::TaskCancelled;
    fn from_wire(p: Self::Proto, v: &mut Violations) -> Self {
        let pb::TaskCancelled { task_id } = p;
        Self {
            task_id: uuid_field("task_cancelled.task_id", &task_id, v),
        }
    }
    fn to_wire(self) -> Self::Proto {
        pb::TaskCancelled {
            task_id: self.task_id.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Read models → proto
// ---------------------------------------------------------------------------------------

/// Domain deal status → proto.
pub fn deal_status_to(status: DealStatus) -> i32 {
    let status = match status {
        DealStatus::Open => pb::DealStatus::Open,
        DealStatus::Won => pb::DealStatus::Won,
        DealStatus::Lost => pb::DealStatus::Lost,
    };
    status as i32
}

/// Proto deal status → domain filter (`UNSPECIFIED` = any).
pub fn deal_status_from(field: &str, raw: i32, v: &mut Violations) -> Option<DealStatus> {
    match pb::DealStatus::try_from(raw) {
        Ok(pb::DealStatus::Unspecified) => None,
        Ok(pb::DealStatus::Open) => Some(DealStatus::Open),
        Ok(pb::DealStatus::Won) => Some(DealStatus::Won),
        Ok(pb::DealStatus::Lost) => Some(DealStatus::Lost),
        Err(_) => {
            v.add(field, format!("{raw} is not a known value"));
            None
        }
    }
}

/// Proto lead status → domain filter (`UNSPECIFIED` = any).
pub fn lead_status_from(field: &str, raw: i32, v: &mut Violations) -> Option<LeadStatus> {
    match pb::LeadStatus::try_from(raw) {
        Ok(pb::LeadStatus::Unspecified) => None,
        Ok(pb::LeadStatus::Open) => Some(LeadStatus::Open),
        Ok(pb::LeadStatus::Qualified) => Some(LeadStatus::Qualified),
        Ok(pb::LeadStatus::Disqualified) => Some(LeadStatus::Disqualified),
        Err(_) => {
            v.add(field, format!("{raw} is not a known value"));
            None
        }
    }
}

/// Proto task status → domain filter (`UNSPECIFIED` = any).
pub fn task_status_from(field: &str, raw: i32, v: &mut Violations) -> Option<TaskStatus> {
    match pb::TaskStatus::try_from(raw) {
        Ok(pb::TaskStatus::Unspecified) => None,
        Ok(pb::TaskStatus::Open) => Some(TaskStatus::Open),
        Ok(pb::TaskStatus::Completed) => Some(TaskStatus::Completed),
        Ok(pb::TaskStatus::Cancelled) => Some(TaskStatus::Cancelled),
        Err(_) => {
            v.add(field, format!("{raw} is not a known value"));
            None
        }
    }
}

/// Proto lead source → domain filter (`UNSPECIFIED` = any).
pub fn lead_source_filter(field: &str, raw: i32, v: &mut Violations) -> Option<LeadSource> {
    Some(lead_source_from(field, raw, v)).filter(|s| *s != LeadSource::Unspecified)
}

/// A deal for the wire; `now_us` is the answer's time (for the current stage's duration).
pub fn deal_to_proto(
    deal: &DealView,
    def: Option<&PipelineDef>,
    now_us: i64,
    as_of_position: u64,
) -> pb::Deal {
    let probability = def
        .and_then(|d| d.stage(&deal.stage_id))
        .map_or(0, |s| u32::from(s.probability));
    pb::Deal {
        deal_id: deal.deal_id.to_string(),
        pipeline_id: deal.pipeline_id.to_string(),
        title: deal.title.clone(),
        stage_id: deal.stage_id.clone(),
        status: deal_status_to(deal.status),
        amount_minor: deal.amount_minor,
        currency: deal.currency.clone(),
        expected_close: deal.expected_close.to_string(),
        owner: deal.owner.clone(),
        customer_id: optional_uuid_to(deal.customer_id),
        account_id: optional_uuid_to(deal.account_id),
        lead_id: optional_uuid_to(deal.lead_id),
        opened_at: Some(timestamp_from_us(deal.opened_at_us)),
        closed_at: deal.closed_at_us.map(timestamp_from_us),
        lost_reason: deal.lost_reason.clone(),
        lost_from_stage_id: deal.lost_from_stage_id.clone(),
        history: deal
            .history
            .iter()
            .map(|span| {
                let end = span.left_at_us.unwrap_or(now_us);
                pb::StageSpan {
                    stage_id: span.stage_id.clone(),
                    entered_at: Some(timestamp_from_us(span.entered_at_us)),
                    left_at: span.left_at_us.map(timestamp_from_us),
                    duration_seconds: end.saturating_sub(span.entered_at_us).max(0) / 1_000_000,
                }
            })
            .collect(),
        probability,
        last_position: deal.last_position,
        as_of_position,
    }
}

/// An account with its deals for the wire.
pub fn account_to_proto(
    summary: AccountSummary,
    defs: &dyn Fn(Uuid) -> Option<PipelineDef>,
    now_us: i64,
    as_of_position: u64,
) -> pb::Account {
    let AccountSummary {
        account,
        open_deals,
        closed_deals,
        totals,
    } = summary;
    let deals = |deals: Vec<DealView>| {
        deals
            .iter()
            .map(|d| deal_to_proto(d, defs(d.pipeline_id).as_ref(), now_us, as_of_position))
            .collect()
    };
    pb::Account {
        account_id: account.account_id.to_string(),
        profile: profile_to(account.profile),
        owner: account.owner,
        contacts: account
            .contacts
            .into_iter()
            .map(|(customer, role)| pb::AccountContact {
                customer_id: customer.to_string(),
                role: contact_role_to(role),
            })
            .collect(),
        open_deals: deals(open_deals),
        closed_deals: deals(closed_deals),
        totals: totals
            .into_iter()
            .map(|(currency, t)| pb::AccountTotals {
                currency,
                open_count: t.open_count,
                open_minor: t.open_minor,
                won_count: t.won_count,
                won_minor: t.won_minor,
                lost_count: t.lost_count,
            })
            .collect(),
        created_at: Some(timestamp_from_us(account.created_at_us)),
        last_position: account.last_position,
        as_of_position,
    }
}

/// A lead for the wire.
pub fn lead_to_proto(lead: &LeadView) -> pb::Lead {
    pb::Lead {
        lead_id: lead.lead_id.to_string(),
        source: lead_source_to(lead.source),
        campaign_id: lead.campaign_id.clone(),
        customer_id: optional_uuid_to(lead.customer_id),
        account_id: optional_uuid_to(lead.account_id),
        company_name: lead.company_name.clone(),
        owner: lead.owner.clone(),
        status: match lead.status {
            LeadStatus::Open => pb::LeadStatus::Open,
            LeadStatus::Qualified => pb::LeadStatus::Qualified,
            LeadStatus::Disqualified => pb::LeadStatus::Disqualified,
        } as i32,
        deal_id: optional_uuid_to(lead.deal_id),
        disqualify_reason: lead.disqualify_reason.clone(),
        captured_at: Some(timestamp_from_us(lead.captured_at_us)),
        decided_at: lead.decided_at_us.map(timestamp_from_us),
        last_position: lead.last_position,
    }
}

/// A task for the wire; `overdue_at_us` is the cut-off of its `overdue` flag.
pub fn task_to_proto(task: &TaskView, overdue_at_us: i64) -> pb::Task {
    pb::Task {
        task_id: task.task_id.to_string(),
        deal_id: optional_uuid_to(task.deal_id),
        account_id: optional_uuid_to(task.account_id),
        kind: task_kind_to(task.kind),
        title: task.title.clone(),
        due_at: Some(timestamp_from_us(task.due_at_us)),
        assignee: task.assignee.clone(),
        status: match task.status {
            TaskStatus::Open => pb::TaskStatus::Open,
            TaskStatus::Completed => pb::TaskStatus::Completed,
            TaskStatus::Cancelled => pb::TaskStatus::Cancelled,
        } as i32,
        created_at: Some(timestamp_from_us(task.created_at_us)),
        closed_at: task.closed_at_us.map(timestamp_from_us),
        overdue: task.status == TaskStatus::Open && task.due_at_us < overdue_at_us,
        last_position: task.last_position,
    }
}

/// A board for the wire.
pub fn board_to_proto(board: Board, as_of_position: u64) -> pb::PipelineBoard {
    pb::PipelineBoard {
        pipeline_id: board.pipeline.pipeline_id.to_string(),
        name: board.pipeline.def.name,
        currencies: board.pipeline.def.currencies,
        stages: board
            .stages
            .into_iter()
            .map(|s| pb::BoardStage {
                stage: stages_to(vec![s.stage]).pop(),
                cells: s
                    .by_currency
                    .into_iter()
                    .map(|(currency, c)| pb::BoardCell {
                        currency,
                        count: c.count,
                        amount_minor: c.amount_minor,
                        weighted_minor: c.weighted_minor,
                    })
                    .collect(),
            })
            .collect(),
        as_of_position,
    }
}

/// Forecast rows for the wire.
pub fn forecast_rows_to(rows: Vec<ForecastRow>) -> Vec<pb::ForecastRow> {
    rows.into_iter()
        .map(|r| pb::ForecastRow {
            period: r.period,
            owner: r.owner,
            currency: r.currency,
            open_count: r.open_count,
            won_count: r.won_count,
            weighted_minor: r.weighted_minor,
            best_case_minor: r.best_case_minor,
            committed_minor: r.committed_minor,
        })
        .collect()
}

/// Metrics for the wire.
pub fn metrics_to_proto(m: Metrics, as_of_position: u64) -> pb::PipelineMetrics {
    pb::PipelineMetrics {
        stages: m
            .stages
            .into_iter()
            .map(|s| pb::StageConversion {
                stage_id: s.stage_id,
                entered: s.entered,
                exited: s.exited,
                advanced: s.advanced,
                conversion_rate: s.conversion_rate,
            })
            .collect(),
        transitions: m
            .transitions
            .into_iter()
            .map(|((from, to), count)| pb::StageTransition {
                from_stage_id: from,
                to_stage_id: to,
                count,
            })
            .collect(),
        won: m.won,
        lost: m.lost,
        win_rate: m.win_rate,
        average_cycle_days: m.average_cycle_days,
        currencies: m
            .currencies
            .into_iter()
            .map(|c| pb::CurrencyMetrics {
                currency: c.currency,
                won_count: c.won_count,
                won_amount_minor: c.won_amount_minor,
                average_won_minor: c.average_won_minor,
                open_count: c.open_count,
                velocity_minor_per_day: c.velocity_minor_per_day,
            })
            .collect(),
        lost_reasons: m
            .lost_reasons
            .into_iter()
            .map(|(reason, count)| pb::LostReason { reason, count })
            .collect(),
        lead_sources: m
            .lead_sources
            .into_iter()
            .map(|s| pb::LeadSourceConversion {
                source: lead_source_to(s.source),
                captured: s.captured,
                qualified: s.qualified,
                conversion_rate: s.conversion_rate,
            })
            .collect(),
        as_of_position,
    }
}
