//! `InteractionLogged`: the customer and the business interacted on some channel.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{Channel, Direction, InteractionKind, validate_id};
use crate::domain::personal::{Personal, PersonalField};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, TEXT_BYTES_MAX};

/// What was said: free text about or by the person, stored sealed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InteractionText {
    /// Short subject line.
    pub subject: String,
    /// Free-text summary.
    pub summary: String,
}

/// The customer and the business interacted on some channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InteractionLogged {
    /// The customer's id.
    pub customer_id: Uuid,
    /// The channel.
    pub channel: Channel,
    /// Who started it.
    pub direction: Direction,
    /// What it was.
    pub kind: InteractionKind,
    /// Subject and summary, sealed with the customer's key.
    pub text: Personal<InteractionText>,
    /// Who handled it for the business (an employee or system id).
    pub agent: String,
    /// Duration in seconds (0 when not applicable).
    pub duration_seconds: u32,
}

impl TypedEvent for InteractionLogged {
    const EVENT_TYPE: &'static str = "InteractionLogged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "interaction_logged";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        if self.channel == Channel::Unspecified {
            v.add(&format!("{f}.channel"), "is required");
        }
        if self.kind == InteractionKind::Unspecified {
            v.add(&format!("{f}.kind"), "is required");
        }
        if let Some(text) = self.text.clear() {
            v.max_len(&format!("{f}.subject"), &text.subject, FIELD_BYTES_MAX);
            v.max_len(&format!("{f}.summary"), &text.summary, TEXT_BYTES_MAX);
        }
        v.max_len(&format!("{f}.agent"), &self.agent, FIELD_BYTES_MAX);
    }

    fn personal_owner(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }

    fn personal_fields(&mut self, visit: &mut dyn FnMut(&'static str, &mut dyn PersonalField)) {
        visit("text", &mut self.text);
    }
}
