//! `CustomEvent`: an integration's own event type with JSON-like data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BUILT_IN_EVENT_TYPES, DecodeError, decode_exact, encode};
use crate::domain::violations::Violations;
use crate::limits::{CUSTOM_DATA_DEPTH_MAX, EVENT_TYPE_BYTES_MAX};

/// JSON-like data (what `google.protobuf.Struct` carries). Objects are ordered maps so
/// the stored bytes are deterministic. Numbers are the client's doubles, kept as given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number (IEEE double, as in JSON and protobuf's `Value`).
    Number(f64),
    /// A string.
    String(String),
    /// A list.
    List(Vec<Value>),
    /// An object, keys sorted.
    Object(BTreeMap<String, Value>),
}

impl Value {
    /// Nesting depth (a scalar is 1).
    pub fn depth(&self) -> usize {
        match self {
            Self::List(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Self::Object(fields) => 1 + fields.values().map(Value::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// As a `serde_json` value (for JSON output such as `rapport tail`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Null => serde_json::Value::Null,
            Self::Bool(b) => serde_json::Value::Bool(*b),
            Self::Number(n) => serde_json::Number::from_f64(*n)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Self::String(s) => serde_json::Value::String(s.clone()),
            Self::List(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
            Self::Object(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// An integration's own event: its type name is the stored event type, its data the payload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CustomEvent {
    /// The sender's type name, e.g. `review.written`.
    pub event_type: String,
    /// The data; an object (a `Struct`).
    pub data: BTreeMap<String, Value>,
}

/// True when `name` may be a custom event type: letters, digits and `.` `_` `-` `:` `/`,
/// starting with a letter, at most [`EVENT_TYPE_BYTES_MAX`] bytes, not a built-in name.
pub fn is_valid_custom_type(name: &str) -> bool {
    name.len() <= EVENT_TYPE_BYTES_MAX
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
        && !BUILT_IN_EVENT_TYPES.contains(&name)
}

impl CustomEvent {
    /// Custom payloads are written with this version.
    pub const SCHEMA_VERSION: u16 = 1;

    /// Checks the type name and the data's depth.
    pub fn validate(&self, v: &mut Violations) {
        if BUILT_IN_EVENT_TYPES.contains(&self.event_type.as_str()) {
            v.add(
                "custom.type",
                format!(
                    "{} is a built-in event type; send it as its typed event",
                    self.event_type
                ),
            );
        } else if !is_valid_custom_type(&self.event_type) {
            v.add(
                "custom.type",
                format!(
                    "must be 1..={EVENT_TYPE_BYTES_MAX} bytes of letters, digits and . _ - : /, starting with a letter"
                ),
            );
        }
        let depth = 1 + self.data.values().map(Value::depth).max().unwrap_or(0);
        if depth > CUSTOM_DATA_DEPTH_MAX {
            v.add(
                "custom.data",
                format!("nests {depth} levels; the limit is {CUSTOM_DATA_DEPTH_MAX}"),
            );
        }
    }

    pub(super) fn encode_payload(&self) -> Vec<u8> {
        encode(&self.data)
    }

    /// True when a stored event of `event_type` is a custom event (no built-in type has
    /// that name): what [`super::DomainEvent::decode`] decides before decoding.
    pub fn is_custom_type(event_type: &str) -> bool {
        !BUILT_IN_EVENT_TYPES.contains(&event_type)
    }

    /// The data of a stored custom event decoded straight into `D`, a type with the serde
    /// shape of `BTreeMap<String, Value>`: the gRPC edge decodes it into protobuf's
    /// `Struct` without building the domain value in between (that detour was a fifth
    /// of the server's CPU when replaying custom events).
    pub fn decode_data_as<D: serde::de::DeserializeOwned>(
        event_type: &str,
        version: u16,
        payload: &[u8],
    ) -> Result<D, DecodeError> {
        if version != Self::SCHEMA_VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
            });
        }
        decode_exact(event_type, version, payload)
    }

    pub(super) fn decode_payload(
        event_type: &str,
        version: u16,
        payload: &[u8],
    ) -> Result<Self, DecodeError> {
        Ok(Self {
            event_type: event_type.to_owned(),
            data: Self::decode_data_as(event_type, version, payload)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_types() {
        assert!(is_valid_custom_type("review.written"));
        assert!(is_valid_custom_type("shop/referral:completed-v2"));
        assert!(!is_valid_custom_type("CustomerRegistered"));
        assert!(!is_valid_custom_type(""));
        assert!(!is_valid_custom_type("1abc"));
        assert!(!is_valid_custom_type("a b"));
    }

    #[test]
    fn too_deep_data_is_refused() {
        let mut value = Value::Null;
        for _ in 0..CUSTOM_DATA_DEPTH_MAX + 1 {
            value = Value::List(vec![value]);
        }
        let event = CustomEvent {
            event_type: "x.y".into(),
            data: BTreeMap::from([("k".to_owned(), value)]),
        };
        let mut v = Violations::new("event");
        event.validate(&mut v);
        assert_eq!(v.into_vec()[0].field, "event.custom.data");
    }
}
