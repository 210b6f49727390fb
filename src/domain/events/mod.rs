//! Every typed event the log stores, and its versioned encoding.
//!
//! Adding an event type is one file here (the struct, its [`TypedEvent`] impl with
//! name, schema version, validation and upcasters) plus one line in the
//! `domain_events!` list below, a proto message and its conversion in `grpc/convert.rs`.
//! Payloads are bincode 2 (standard config) of the struct; golden fixtures under
//! `tests/fixtures/` pin the bytes of every type and version.

mod consent_given;
mod contact_details_changed;
mod custom;
mod custom_field_set;
mod customer_erased;
mod customer_registered;
mod customers_merged;
mod feedback_given;
mod identifier_claimed;
mod interaction_logged;
// Loyalty (issue 5).
mod ledger_merged;
mod loyalty_member;
mod loyalty_points;
mod loyalty_programme;
mod preference_set;
mod purchase_completed;
mod purchase_refunded;
mod segment_defined;
mod tag_added;
// Sales pipelines (issue 4).
mod account_created;
mod deal_opened;
mod lead_captured;
mod pipeline_defined;
mod task_created;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use consent_given::{ConsentGiven, ConsentWithdrawn};
pub use contact_details_changed::{ContactDetails, ContactDetailsChanged};
pub use custom::{CustomEvent, Value, is_valid_custom_type};
pub use custom_field_set::{CustomFieldSet, CustomFieldValue, FieldValue};
pub use customer_erased::CustomerErased;
pub use customer_registered::{CustomerIdentity, CustomerRegistered, validate_emails};
pub use customers_merged::CustomersMerged;
pub use feedback_given::{FeedbackGiven, FeedbackMetric};
pub use identifier_claimed::{IdentifierClaimed, IdentifierKind, IdentifierReleased};
pub use interaction_logged::{InteractionLogged, InteractionText};
// Loyalty (issue 5).
pub use ledger_merged::{LedgerMerged, MovedLine, MovedSpend};
pub use loyalty_member::{MemberEnrolled, MemberLeft, TierChanged};
pub use loyalty_points::{
    ExpiredLine, PointsAdjusted, PointsCancelled, PointsEarned, PointsExpired, PointsSpent,
    PointsTransferred,
};
pub use loyalty_programme::{
    ProgrammeChanged, ProgrammeDefined, RewardClaimed, RewardDefined, RewardRetired,
};
pub use preference_set::{PreferenceCleared, PreferenceSet, validate_key};
pub use purchase_completed::{PurchaseCompleted, PurchaseLine};
pub use purchase_refunded::{PurchaseRefunded, RefundLine};
pub use segment_defined::{
    CustomerEnteredSegment, CustomerLeftSegment, SegmentArchived, SegmentChanged, SegmentDefined,
};
pub use tag_added::{TagAdded, TagRemoved};
// Sales pipelines (issue 4).
pub use account_created::{
    AccountContactLinked, AccountContactUnlinked, AccountCreated, AccountOwnerAssigned,
    AccountProfile, AccountUpdated, ContactRole, SizeBand,
};
pub use deal_opened::{DealChanged, DealLost, DealOpened, DealReopened, DealStageMoved, DealWon};
pub use lead_captured::{LeadAssigned, LeadCaptured, LeadDisqualified, LeadQualified, LeadSource};
pub use pipeline_defined::{
    PipelineChanged, PipelineDefined, Stage, StageKind, validate_code, validate_definition,
};
pub use task_created::{TaskCancelled, TaskCompleted, TaskCreated, TaskKind};

use super::personal::{Opener, PersonalField, Sealer};
use super::violations::{FieldViolation, Violations};

/// A stored payload could not be turned back into a domain event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// This build does not know that schema version of the type.
    #[error("{event_type} schema version {version} is not known to this build")]
    UnknownVersion {
        /// Event type.
        event_type: String,
        /// Stored schema version.
        version: u16,
    },
    /// The bytes do not decode as the type.
    #[error("{event_type} v{version} payload does not decode: {reason}")]
    Malformed {
        /// Event type.
        event_type: String,
        /// Stored schema version.
        version: u16,
        /// Decoder's message.
        reason: String,
    },
}

/// A typed event: its stored name, current schema version, rules and decoding.
pub trait TypedEvent: Serialize + DeserializeOwned + Sized {
    /// The event type stored in the envelope (the proto message name).
    const EVENT_TYPE: &'static str;
    /// The schema version new events are written with.
    const SCHEMA_VERSION: u16;

    /// Checks the event's fields; every problem goes into `v`.
    fn validate(&self, v: &mut Violations);

    /// The customer whose data key seals this event's personal parts; `None` for an
    /// event without personal data.
    fn personal_owner(&self) -> Option<Uuid> {
        None
    }

    /// True when this event carries personal parts (by default: when it has an owner).
    fn has_personal(&self) -> bool {
        self.personal_owner().is_some()
    }

    /// Visits every personal part with its field name (the name is bound into the
    /// sealing, so parts cannot be swapped). Events without personal data visit none.
    fn personal_fields(&mut self, _visit: &mut dyn FnMut(&'static str, &mut dyn PersonalField)) {}

    /// Decodes a payload of schema `version`, upcasting older versions. The default
    /// knows only the current version; a type with history overrides it.
    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        if version != Self::SCHEMA_VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: Self::EVENT_TYPE.to_owned(),
                version,
            });
        }
        decode_exact(Self::EVENT_TYPE, version, bytes)
    }
}

/// bincode-decodes `bytes` as `T`, refusing trailing bytes.
pub fn decode_exact<T: DeserializeOwned>(
    event_type: &str,
    version: u16,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        version,
        reason,
    };
    let (value, read): (T, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(malformed(format!("{} trailing bytes", bytes.len() - read)));
    }
    Ok(value)
}

/// bincode-encodes a value that holds no personal part (plain payloads, and the clear
/// content of a personal part before it is sealed).
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding a value without personal parts into a Vec cannot fail")
}

/// An event could not be encoded for storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A personal part is still in clear (or erased): it must be sealed first.
    #[error("{event_type} has personal data that is not sealed: {reason}")]
    Unsealed {
        /// Event type.
        event_type: String,
        /// Encoder's message.
        reason: String,
    },
}

/// bincode-encodes a typed event; fails if a personal part is not sealed.
pub fn encode_event<T: TypedEvent>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| {
        EncodeError::Unsealed {
            event_type: T::EVENT_TYPE.to_owned(),
            reason: e.to_string(),
        }
    })
}

macro_rules! domain_events {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// Any event the log can hold: a built-in typed event or a custom one.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        pub enum DomainEvent {
            /// An integration's own event type.
            Custom(CustomEvent),
            $(
                #[doc = concat!("A `", stringify!($variant), "` event.")]
                $variant($ty),
            )*
        }

        /// Names of the built-in event types; custom events may not use them.
        pub const BUILT_IN_EVENT_TYPES: &[&str] = &[$(<$ty as TypedEvent>::EVENT_TYPE),*];

        impl DomainEvent {
            /// The stored event type name.
            pub fn event_type(&self) -> &str {
                match self {
                    Self::Custom(event) => &event.event_type,
                    $(Self::$variant(_) => <$ty as TypedEvent>::EVENT_TYPE,)*
                }
            }

            /// The schema version the payload is written with.
            pub fn schema_version(&self) -> u16 {
                match self {
                    Self::Custom(_) => CustomEvent::SCHEMA_VERSION,
                    $(Self::$variant(_) => <$ty as TypedEvent>::SCHEMA_VERSION,)*
                }
            }

            /// The payload bytes to store. Personal parts must be sealed first.
            pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
                match self {
                    Self::Custom(event) => Ok(event.encode_payload()),
                    $(Self::$variant(event) => encode_event(event),)*
                }
            }

            /// The customer whose key seals the personal parts, if the event has any.
            pub fn personal_owner(&self) -> Option<Uuid> {
                match self {
                    Self::Custom(_) => None,
                    $(Self::$variant(event) => event.personal_owner(),)*
                }
            }

            /// True when the event carries personal parts.
            pub fn has_personal_parts(&self) -> bool {
                match self {
                    Self::Custom(_) => false,
                    $(Self::$variant(event) => event.has_personal(),)*
                }
            }

            fn visit_personal(&mut self, visit: &mut dyn FnMut(&'static str, &mut dyn PersonalField)) {
                match self {
                    Self::Custom(_) => {}
                    $(Self::$variant(event) => event.personal_fields(visit),)*
                }
            }

            /// Seals every clear personal part with `sealer`.
            pub fn seal(&mut self, sealer: &mut Sealer<'_>) {
                self.visit_personal(&mut |name, field| field.seal(name, sealer));
            }

            /// Opens every sealed personal part with `opener`; parts it cannot open
            /// become erased.
            pub fn open(&mut self, opener: &mut Opener<'_>) {
                self.visit_personal(&mut |name, field| field.open(name, opener));
            }

            /// Decodes a stored payload by type and schema version.
            pub fn decode(event_type: &str, version: u16, payload: &[u8]) -> Result<Self, DecodeError> {
                $(
                    if event_type == <$ty as TypedEvent>::EVENT_TYPE {
                        return <$ty as TypedEvent>::decode_version(version, payload).map(Self::$variant);
                    }
                )*
                CustomEvent::decode_payload(event_type, version, payload).map(Self::Custom)
            }

            /// Checks the event's rules; `prefix` is the path of the event in the request.
            pub fn validate(&self, prefix: &str) -> Result<(), Vec<FieldViolation>> {
                let mut v = Violations::new(prefix);
                match self {
                    Self::Custom(event) => event.validate(&mut v),
                    $(Self::$variant(event) => event.validate(&mut v),)*
                }
                v.into_result()
            }
        }
    };
}

domain_events! {
    CustomerRegistered(CustomerRegistered),
    ContactDetailsChanged(ContactDetailsChanged),
    InteractionLogged(InteractionLogged),
    PurchaseCompleted(PurchaseCompleted),
    PreferenceSet(PreferenceSet),
    PreferenceCleared(PreferenceCleared),
    ConsentGiven(ConsentGiven),
    ConsentWithdrawn(ConsentWithdrawn),
    TagAdded(TagAdded),
    TagRemoved(TagRemoved),
    CustomFieldSet(CustomFieldSet),
    PurchaseRefunded(PurchaseRefunded),
    FeedbackGiven(FeedbackGiven),
    CustomersMerged(CustomersMerged),
    CustomerErased(CustomerErased),
    IdentifierClaimed(IdentifierClaimed),
    IdentifierReleased(IdentifierReleased),
    SegmentDefined(SegmentDefined),
    SegmentChanged(SegmentChanged),
    SegmentArchived(SegmentArchived),
    CustomerEnteredSegment(CustomerEnteredSegment),
    CustomerLeftSegment(CustomerLeftSegment),
    // Loyalty (issue 5).
    ProgrammeDefined(ProgrammeDefined),
    ProgrammeChanged(ProgrammeChanged),
    RewardDefined(RewardDefined),
    RewardRetired(RewardRetired),
    RewardClaimed(RewardClaimed),
    MemberEnrolled(MemberEnrolled),
    MemberLeft(MemberLeft),
    TierChanged(TierChanged),
    PointsEarned(PointsEarned),
    PointsCancelled(PointsCancelled),
    PointsSpent(PointsSpent),
    PointsExpired(PointsExpired),
    PointsAdjusted(PointsAdjusted),
    PointsTransferred(PointsTransferred),
    LedgerMerged(LedgerMerged),
    // Sales pipelines (issue 4).
    AccountCreated(AccountCreated),
    AccountUpdated(AccountUpdated),
    AccountContactLinked(AccountContactLinked),
    AccountContactUnlinked(AccountContactUnlinked),
    AccountOwnerAssigned(AccountOwnerAssigned),
    PipelineDefined(PipelineDefined),
    PipelineChanged(PipelineChanged),
    LeadCaptured(LeadCaptured),
    LeadAssigned(LeadAssigned),
    LeadQualified(LeadQualified),
    LeadDisqualified(LeadDisqualified),
    DealOpened(DealOpened),
    DealStageMoved(DealStageMoved),
    DealChanged(DealChanged),
    DealWon(DealWon),
    DealLost(DealLost),
    DealReopened(DealReopened),
    TaskCreated(TaskCreated),
    TaskCompleted(TaskCompleted),
    TaskCancelled(TaskCancelled),
}
