//! Loyalty programme and rewards catalogue events. The programme lives in one stream,
//! `loyalty_programme-default`; a version is in force from its event's `occurred_at`
//! (business time), so history replays under the rules in force at the time. Each
//! reward has its own stream `loyalty_reward-<id>`, where limited stock is claimed by
//! redemptions (appended atomically with the member's `PointsSpent`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use super::{DecodeError, decode_exact};
use crate::domain::common::validate_id;
use crate::domain::loyalty::config::{Programme, ProgrammeV1};
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, LOYALTY_POINTS_MAX};

/// The programme was defined (its first version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammeDefined {
    /// The configuration.
    pub programme: Programme,
}

/// Version 1 of both programme events: the programme before base caps.
#[derive(Deserialize)]
struct ProgrammeEventV1 {
    programme: ProgrammeV1,
}

/// Decodes a programme event's payload of schema `version` (1 is upcast: no base cap).
fn decode_programme(
    event_type: &str,
    version: u16,
    bytes: &[u8],
) -> Result<Programme, DecodeError> {
    match version {
        1 => decode_exact::<ProgrammeEventV1>(event_type, version, bytes)
            .map(|e| Programme::from(e.programme)),
        2 => decode_exact::<ProgrammeDefined>(event_type, version, bytes).map(|e| e.programme),
        _ => Err(DecodeError::UnknownVersion {
            event_type: event_type.to_owned(),
            version,
        }),
    }
}

impl TypedEvent for ProgrammeDefined {
    const EVENT_TYPE: &'static str = "ProgrammeDefined";
    /// 2: the programme has `base_cap`.
    const SCHEMA_VERSION: u16 = 2;

    fn validate(&self, v: &mut Violations) {
        self.programme.validate("programme_defined.programme", v);
    }

    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_programme(Self::EVENT_TYPE, version, bytes).map(|programme| Self { programme })
    }
}

/// The programme changed: the new version is in force from this event's `occurred_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammeChanged {
    /// The new configuration, whole.
    pub programme: Programme,
}

impl TypedEvent for ProgrammeChanged {
    const EVENT_TYPE: &'static str = "ProgrammeChanged";
    /// 2: the programme has `base_cap`.
    const SCHEMA_VERSION: u16 = 2;

    fn validate(&self, v: &mut Violations) {
        self.programme.validate("programme_changed.programme", v);
    }

    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_programme(Self::EVENT_TYPE, version, bytes).map(|programme| Self { programme })
    }
}

/// A reward was added to the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardDefined {
    /// The reward's id.
    pub reward_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its cost, points.
    pub cost_points: u64,
    /// Units available, `None` for unlimited.
    pub stock: Option<u64>,
}

impl TypedEvent for RewardDefined {
    const EVENT_TYPE: &'static str = "RewardDefined";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("reward_defined.reward_id", &self.reward_id, v);
        v.required("reward_defined.name", &self.name, FIELD_BYTES_MAX);
        if self.cost_points == 0 || self.cost_points > LOYALTY_POINTS_MAX {
            v.add(
                "reward_defined.cost_points",
                format!("must be 1..={LOYALTY_POINTS_MAX}"),
            );
        }
        if self.stock.is_some_and(|s| s > LOYALTY_POINTS_MAX) {
            v.add("reward_defined.stock", "is too large");
        }
    }
}

/// A reward was retired: it can no longer be redeemed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardRetired {
    /// The reward's id.
    pub reward_id: Uuid,
}

impl TypedEvent for RewardRetired {
    const EVENT_TYPE: &'static str = "RewardRetired";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("reward_retired.reward_id", &self.reward_id, v);
    }
}

/// One unit of a limited reward was claimed by a redemption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardClaimed {
    /// The reward's id.
    pub reward_id: Uuid,
    /// The member who redeemed it.
    pub customer_id: Uuid,
    /// The redemption (the `PointsSpent` event's `redemption_id`).
    pub redemption_id: Uuid,
}

impl TypedEvent for RewardClaimed {
    const EVENT_TYPE: &'static str = "RewardClaimed";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("reward_claimed.reward_id", &self.reward_id, v);
        validate_id("reward_claimed.customer_id", &self.customer_id, v);
        validate_id("reward_claimed.redemption_id", &self.redemption_id, v);
    }
}
