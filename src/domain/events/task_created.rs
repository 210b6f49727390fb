//! `TaskCreated`, `TaskCompleted`, `TaskCancelled`: work items on a deal or an account
//! (`task-<id>` streams). A task's title describes the work, not a person: it must not
//! carry personal data (which would have to be sealed with a customer's key).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, OWNER_BYTES_MAX};

/// What kind of work a task is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum TaskKind {
    /// Not given (refused by validation).
    #[default]
    Unspecified,
    /// A call.
    Call,
    /// An email.
    Email,
    /// A meeting.
    Meeting,
    /// Anything else to do.
    Todo,
}

/// A task was created on a deal or an account (at least one of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCreated {
    /// The task's id.
    pub task_id: Uuid,
    /// The deal it is about.
    pub deal_id: Option<Uuid>,
    /// The account it is about.
    pub account_id: Option<Uuid>,
    /// Call, email, meeting or to-do.
    pub kind: TaskKind,
    /// What to do (no personal data).
    pub title: String,
    /// When it is due, UTC microseconds (business time).
    pub due_at_us: i64,
    /// Who does it (a user id).
    pub assignee: String,
}

impl TypedEvent for TaskCreated {
    const EVENT_TYPE: &'static str = "TaskCreated";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "task_created";
        validate_id(&format!("{f}.task_id"), &self.task_id, v);
        if let Some(deal) = &self.deal_id {
            validate_id(&format!("{f}.deal_id"), deal, v);
        }
        if let Some(account) = &self.account_id {
            validate_id(&format!("{f}.account_id"), account, v);
        }
        if self.deal_id.is_none() && self.account_id.is_none() {
            v.add(
                &format!("{f}.deal_id"),
                "set deal_id or account_id (or both)",
            );
        }
        if self.kind == TaskKind::Unspecified {
            v.add(&format!("{f}.kind"), "is required");
        }
        v.required(&format!("{f}.title"), &self.title, FIELD_BYTES_MAX);
        v.max_len(&format!("{f}.assignee"), &self.assignee, OWNER_BYTES_MAX);
    }
}

/// A task was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCompleted {
    /// The task.
    pub task_id: Uuid,
}

impl TypedEvent for TaskCompleted {
    const EVENT_TYPE: &'static str = "TaskCompleted";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("task_completed.task_id", &self.task_id, v);
    }
}

/// A task was cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancelled {
    /// The task.
    pub task_id: Uuid,
}

impl TypedEvent for TaskCancelled {
    const EVENT_TYPE: &'static str = "TaskCancelled";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("task_cancelled.task_id", &self.task_id, v);
    }
}
