//! `IdentifierClaimed` / `IdentifierReleased`: the uniqueness reservations of emails,
//! phones and external ids. They live in `identity-<token>` streams, where the token is
//! a keyed hash of the normalised value (never the value): claiming appends to that
//! stream with an expected revision, so two registrations with one email race in the
//! log and exactly one wins.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;

/// Which kind of identifier a reservation is for.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum IdentifierKind {
    /// Not given.
    #[default]
    Unspecified,
    /// An email address (case-folded).
    Email,
    /// A phone number (E.164-style).
    Phone,
    /// An external id (`system:value`).
    ExternalId,
}

/// A customer now holds the identifier of this stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierClaimed {
    /// The holder.
    pub customer_id: Uuid,
    /// The kind of identifier.
    pub kind: IdentifierKind,
}

impl TypedEvent for IdentifierClaimed {
    const EVENT_TYPE: &'static str = "IdentifierClaimed";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("identifier_claimed.customer_id", &self.customer_id, v);
    }
}

/// The holder gave the identifier up (changed it, was merged or erased).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierReleased {
    /// The former holder.
    pub customer_id: Uuid,
    /// The kind of identifier.
    pub kind: IdentifierKind,
}

impl TypedEvent for IdentifierReleased {
    const EVENT_TYPE: &'static str = "IdentifierReleased";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("identifier_released.customer_id", &self.customer_id, v);
    }
}
