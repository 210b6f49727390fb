//! Segment events, in `segment-<id>` streams: a segment defined, changed or archived
//! (through the Analytics service, which checks the rule parses), and customers entering
//! and leaving it (appended by the segment job as events and time arrive), so services
//! can follow membership with `EventStore.Subscribe` on the `segment-` prefix.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, SEGMENT_RULE_BYTES_MAX};

fn validate_definition(f: &str, id: &Uuid, name: &str, rule: &str, v: &mut Violations) {
    validate_id(&format!("{f}.segment_id"), id, v);
    v.required(&format!("{f}.name"), name, FIELD_BYTES_MAX);
    v.required(&format!("{f}.rule"), rule, SEGMENT_RULE_BYTES_MAX);
}

/// A segment was defined with a rule (see the README's "Segment rules").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentDefined {
    /// The segment's id.
    pub segment_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its rule, as written.
    pub rule: String,
}

impl TypedEvent for SegmentDefined {
    const EVENT_TYPE: &'static str = "SegmentDefined";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_definition(
            "segment_defined",
            &self.segment_id,
            &self.name,
            &self.rule,
            v,
        );
    }
}

/// A segment's name or rule changed; membership is re-evaluated under the new rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentChanged {
    /// The segment's id.
    pub segment_id: Uuid,
    /// Its new name.
    pub name: String,
    /// Its new rule.
    pub rule: String,
}

impl TypedEvent for SegmentChanged {
    const EVENT_TYPE: &'static str = "SegmentChanged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_definition(
            "segment_changed",
            &self.segment_id,
            &self.name,
            &self.rule,
            v,
        );
    }
}

/// A segment was archived: it is no longer evaluated and its members are released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentArchived {
    /// The segment's id.
    pub segment_id: Uuid,
}

impl TypedEvent for SegmentArchived {
    const EVENT_TYPE: &'static str = "SegmentArchived";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("segment_archived.segment_id", &self.segment_id, v);
    }
}

/// A customer entered a segment, evaluated as of `as_of_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerEnteredSegment {
    /// The segment.
    pub segment_id: Uuid,
    /// The customer.
    pub customer_id: Uuid,
    /// The time the rule was evaluated at (UTC microseconds).
    pub as_of_us: i64,
}

impl TypedEvent for CustomerEnteredSegment {
    const EVENT_TYPE: &'static str = "CustomerEnteredSegment";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("customer_entered_segment.segment_id", &self.segment_id, v);
        validate_id("customer_entered_segment.customer_id", &self.customer_id, v);
    }
}

/// A customer left a segment, evaluated as of `as_of_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerLeftSegment {
    /// The segment.
    pub segment_id: Uuid,
    /// The customer.
    pub customer_id: Uuid,
    /// The time the rule was evaluated at (UTC microseconds).
    pub as_of_us: i64,
}

impl TypedEvent for CustomerLeftSegment {
    const EVENT_TYPE: &'static str = "CustomerLeftSegment";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        validate_id("customer_left_segment.segment_id", &self.segment_id, v);
        validate_id("customer_left_segment.customer_id", &self.customer_id, v);
    }
}
