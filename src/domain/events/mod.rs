//! Every typed event the log stores, and its versioned encoding.
//!
//! Adding an event type is one file here (the struct, its [`TypedEvent`] impl with
//! name, schema version, validation and upcasters) plus one line in the
//! `domain_events!` list below, a proto message and its conversion in `grpc/convert.rs`.
//! Payloads are bincode 2 (standard config) of the struct; golden fixtures under
//! `tests/fixtures/` pin the bytes of every type and version.

mod contact_details_changed;
mod custom;
mod customer_registered;
mod interaction_logged;
mod purchase_completed;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use contact_details_changed::ContactDetailsChanged;
pub use custom::{CustomEvent, Value, is_valid_custom_type};
pub use customer_registered::CustomerRegistered;
pub use interaction_logged::InteractionLogged;
pub use purchase_completed::{PurchaseCompleted, PurchaseLine};

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

/// bincode-encodes a payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding into a Vec cannot fail")
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

            /// The payload bytes to store.
            pub fn encode(&self) -> Vec<u8> {
                match self {
                    Self::Custom(event) => event.encode_payload(),
                    $(Self::$variant(event) => encode(event),)*
                }
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
}
