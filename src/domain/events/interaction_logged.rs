//! `InteractionLogged`: the customer and the business interacted on some channel.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{Channel, Direction, InteractionKind};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, TEXT_BYTES_MAX};

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
    /// Short subject line.
    pub subject: String,
    /// Free-text summary.
    pub summary: String,
    /// Who handled it for the business.
    pub agent: String,
    /// Duration in seconds (0 when not applicable).
    pub duration_seconds: u32,
}

impl TypedEvent for InteractionLogged {
    const EVENT_TYPE: &'static str = "InteractionLogged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "interaction_logged";
        if self.customer_id.is_nil() {
            v.add(&format!("{f}.customer_id"), "must not be the nil UUID");
        }
        if self.channel == Channel::Unspecified {
            v.add(&format!("{f}.channel"), "is required");
        }
        if self.kind == InteractionKind::Unspecified {
            v.add(&format!("{f}.kind"), "is required");
        }
        v.max_len(&format!("{f}.subject"), &self.subject, FIELD_BYTES_MAX);
        v.max_len(&format!("{f}.summary"), &self.summary, TEXT_BYTES_MAX);
        v.max_len(&format!("{f}.agent"), &self.agent, FIELD_BYTES_MAX);
    }
}
